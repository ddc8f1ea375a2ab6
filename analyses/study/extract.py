"""Per-question extraction over a benchmark, in shards, resumable after any interruption.

For each question: the greedy answer generated to a stop token and whether it is right
(``analyses.data.scoring``: the benchmark's own rule), its output confidence (``answers.output_confidence``:
by question form) and each answer token's probability, the first token's logit entropy, the truth margin
(maximised over every gold and its accepted spellings) at every layer, the answer position's residual
stream and MLP neurons at the configured layers, its attention to the image per layer (the patch
grid averaged over the T answer tokens, flattened, and H_s of that averaged map, Eq. 1) and K
self-consistency samples of up to ``max_new_tokens`` tokens, voted by the benchmark's reading.

**Memory is one batch.** Activations are cut to the answer position inside their hooks
(``answers.capture_at_answer``) and only the last position's logits are computed, so a forward
holds the model plus one batch's activations, whatever the sequence length, layer count or MLP
width; self-consistency decodes ``sample_rows`` rows of KV cache at a time. Reading an
extraction back memory-maps its arrays and loads one layer at a time (``Extraction.hidden[l]``).

**Storage.** A run folder holds ``manifest.json`` and, per shard, ``shard-00007.json`` (scalars)
and ``shard-00007.safetensors`` (``hidden`` [n, layer, d_model], ``neurons`` [n, layer, d_mlp]
in ``cfg.storage_dtype``, and each question's attention grids, one per layer where attention reads the image: every layer, or a
cross-attention model's cross layers, listed in each row's ``attention_layers``). Per question that is
``2 x layers x (d_model + d_mlp)`` bytes in float16/bfloat16 (LLaVA-1.5-7B, all 32 layers:
0.97 MB; 3,000 questions: 2.9 GB), twice that in float32; ``hidden_layers`` / ``neuron_layers``
store fewer layers. Files are written to a temporary name and renamed, and the manifest lists a
shard only after both files exist: a run killed at any point (kill -9 included) resumes at the
first shard the manifest lacks. Several processes (ranks of a ``torchrun``) may extract into one
folder: the manifest is updated under a file lock and records which rank extracted each shard.

**Integrity.** The manifest records each shard's sha256 (both files) and a digest of every question
and image; a resume refuses data that changed (naming what), and a shard whose files went missing
or changed is reported and extracted again. ``load`` verifies every shard before reading it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from analyses import answers
from analyses.attention_structure import answer_token_attention, first_token_head_entropy, image_layers
from analyses.consistency import majority_support, sample_answers, sample_batches
from analyses.data.benchmarks import shown
from analyses.data.examples import Example
from analyses.data.scoring import OPEN_ENDED, is_correct
from analyses.evaluation import batches
from analyses.files import sha256, write_atomic
from analyses.logit_lens import read_out, truth_margin
from analyses.progress import Progress
from analyses.study.config import EXTRACTION_FORMAT, VRPConfig
from analyses.study.distributed import Ranks
from analyses.study.files import manifest_lock
from analyses.study.validate import digests
from vlm_lens import HookedVLM
from vlm_lens.errors import DataError, InputError, InputIndexError, VLMLensWarning
from vlm_lens.loading import parse_dtype


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is damaged (not valid JSON): this folder cannot be resumed; use a new --out") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(
            f"{path} is not a vlm-lens extraction manifest ({problem}): this folder cannot be resumed; use a new --out"
        )
    return manifest


def _manifest_problem(manifest) -> str | None:
    """What is missing from a manifest's shape, or None: a JSON object with its config and fingerprint, the data's
    digests and the list of complete shards (start, end, name)."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, kind in (("fingerprint", str), ("config", dict), ("data", dict), ("shards", list)):
        if not isinstance(manifest.get(key), kind):
            return f"no {key!r} {kind.__name__}"
    if not isinstance(manifest["data"].get("examples"), list):
        return "no data.examples list"
    for shard in manifest["shards"]:
        if not (
            isinstance(shard, dict)
            and isinstance(shard.get("start"), int)
            and isinstance(shard.get("end"), int)
            and isinstance(shard.get("name"), str)
        ):
            return f"a shard entry {shard!r} without start, end and name"
    return None


def _write_manifest(folder: Path, manifest: dict) -> None:
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=1))


def _check_same_run(folder: Path, manifest: dict, cfg: VRPConfig, data: list[list[str]]) -> None:
    """Refuse to resume a folder made with other settings or other data, saying what changed."""
    stored = manifest.get("config", {})
    if stored.get("extraction_format") != EXTRACTION_FORMAT:
        raise DataError(
            f"{folder} holds an extraction in format {stored.get('extraction_format')}, from another "
            f"vlm-lens version (this one writes format {EXTRACTION_FORMAT}): use a new --out"
        )
    if manifest.get("fingerprint") != cfg.fingerprint():
        changes = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in cfg.changed_from(stored).items())
        raise DataError(
            f"{folder} holds a run with another configuration ({changes}); use a new --out, or the "
            "settings it was made with to resume it"
        )
    old = manifest["data"]["examples"]
    questions = [i for i, (a, b) in enumerate(zip(old, data)) if a[0] != b[0]]
    images = [b[2] for a, b in zip(old, data) if a[1] != b[1]]
    if questions or images:
        what = []
        if questions:
            what.append(
                f"{len(questions)} of {len(data)} questions (text, answers or id) differ, at positions "
                f"{shown(questions)}"
            )
        if images:
            what.append(f"{len(images)} image(s) differ: {shown(images)}")
        raise DataError(
            f"the data changed since {folder} was extracted: {'; '.join(what)}. Resuming would mix "
            "two datasets: use a new --out, or restore the data the run began with"
        )


def check_resumable(folder: str | Path, cfg: VRPConfig, data: list[list[str]]) -> None:
    """Refuse, before any model work, an extraction folder made with other settings or data (nothing to do for a new
    folder)."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if manifest:
        _check_same_run(folder, manifest, cfg, data)


def _verified(folder: Path, shard: dict) -> str | None:
    """Why a listed shard cannot be used (a file missing, or bytes other than those written), or None."""
    for kind, digest in shard["sha256"].items():
        path = folder / f"{shard['name']}.{kind}"
        if not path.is_file():
            return f"{path.name} is missing"
        if sha256(path) != digest:
            return f"{path.name} does not match the sha256 recorded when it was written"
    return None


def _repair(folder: Path, manifest: dict) -> dict:
    """Drop (and report) every listed shard whose files are missing or changed: extraction redoes them."""
    kept = []
    for shard in manifest["shards"]:
        why = _verified(folder, shard)
        if why is None:
            kept.append(shard)
            continue
        warnings.warn(
            f"{folder}: {why} (changed or damaged since); re-extracting questions {shard['start']}..{shard['end'] - 1}",
            VLMLensWarning,
            stacklevel=3,
        )
        for kind in shard["sha256"]:
            (folder / f"{shard['name']}.{kind}").unlink(missing_ok=True)
    if len(kept) != len(manifest["shards"]):
        manifest = {**manifest, "shards": kept}
        _write_manifest(folder, manifest)
    return manifest


def _layers(chosen: Sequence[int] | None, n_layers: int) -> list[int]:
    layers = list(range(n_layers)) if chosen is None else [int(l) for l in chosen]
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise DataError(f"layers {bad} are outside the model's {n_layers} layers (0..{n_layers - 1})")
    return layers


def _correct(prediction: str, example: Example, cfg: VRPConfig) -> bool | None:
    """Whether the answer is right; None for an open-ended question (no judge model)."""
    if example.metric == OPEN_ENDED:
        return None
    return is_correct(prediction, example.golds, example.metric, cfg.correct_threshold)


@torch.no_grad()
def _extract_batch(
    model: HookedVLM, examples: list[Example], inputs, start: int, cfg: VRPConfig
) -> tuple[list[dict], dict]:
    n_layers = model.cfg.n_layers
    hidden_layers = _layers(cfg.hidden_layers, n_layers)
    neuron_layers = _layers(cfg.neuron_layers, n_layers)
    names = [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
    names += [f"blocks.{l}.mlp.hook_post" for l in neuron_layers]
    attention_layers = image_layers(model)  # a cross-attention model's image is read at its cross layers only
    names += [f"blocks.{l}.attn.hook_pattern_rows" for l in attention_layers]
    generated = answers.generate_answers(model, inputs, names, cfg.max_new_tokens)
    captured = generated.at_answer
    probs = torch.softmax(captured.logits.float(), -1)
    refs = [answers.reference_token_ids(model.tokenizer, e.golds, e.metric) for e in examples]
    resid = captured.stack("resid_post", range(n_layers))  # layer batch d_model
    margins = truth_margin(read_out(model, resid), refs)  # layer batch
    attention = answer_token_attention(generated, view=cfg.attention_view)
    head_entropy = first_token_head_entropy(generated, view=cfg.attention_view)
    storage = parse_dtype(cfg.storage_dtype)
    rows = []
    for i, example in enumerate(examples):
        prediction = generated.texts[i]
        rows.append(
            {
                "index": start + i,
                "type": example.type,
                "label": example.label,
                "golds": list(example.golds),
                "metric": example.metric,
                "prediction": prediction,
                "answer_tokens": len(generated.tokens[i]),
                "correct": _correct(prediction, example, cfg),
                "confidence": answers.output_confidence(
                    model.tokenizer, generated.tokens[i], generated.probs[i], example.metric, example.closed_form
                ),
                "closed_form": example.closed_form,
                "token_probs": generated.probs[i],
                "entropy": float(-(probs[i] * torch.log(probs[i].clamp_min(1e-30))).sum()),  # of the first token
                "margins": margins[:, i].tolist(),
                "grid": list(attention[i][0].shape[1:]),
                "attention_layers": attention_layers,  # the model layers behind the attention rows below
                "attention_entropy": attention[i][1].tolist(),  # H_s per layer of the answer tokens' mean map
                # [layer][head]: H_s of each head, first answer token (None: no attention to the image)
                "head_entropy": [
                    [None if np.isnan(v) else round(float(v), 5) for v in layer] for layer in head_entropy[i]
                ],
            }
        )
    arrays = {
        "hidden": resid[hidden_layers].transpose(0, 1).to("cpu", storage).contiguous(),
        "neurons": captured.stack("post", neuron_layers).transpose(0, 1).to("cpu", storage).contiguous(),
    }
    for i, (grid, _) in enumerate(attention):
        arrays[f"attention/{start + i}"] = torch.from_numpy(grid.reshape(len(attention_layers), -1)).contiguous()
    return rows, arrays


@torch.no_grad()
def _self_consistency(model: HookedVLM, examples: list[Example], start: int, cfg: VRPConfig) -> list[list[str]]:
    """K samples per question, ``cfg.sample_rows`` rows of KV cache at a time; seeds by question index."""
    samples = []
    for part in sample_batches(len(examples), cfg.k, cfg.sample_rows, most=cfg.batch_size):
        chunk = [examples[i] for i in part]
        inputs = model.prepare(images=[e.load_image() for e in chunk], prompts=[e.text for e in chunk])
        samples += sample_answers(
            model,
            inputs,
            cfg.k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=[cfg.seed + start + i for i in part],
        )
    return samples


def _extract_shard(model: HookedVLM, chunk: list[Example], start: int, cfg: VRPConfig) -> tuple[list[dict], dict]:
    rows, parts = [], []
    for offset, (part, inputs) in zip(range(0, len(chunk), cfg.batch_size), batches(model, chunk, cfg.batch_size)):
        part_rows, part_arrays = _extract_batch(model, part, inputs, start + offset, cfg)
        rows += part_rows
        parts.append(part_arrays)
    for row, example, samples in zip(rows, chunk, _self_consistency(model, chunk, start, cfg)):
        majority, support = majority_support(samples, "exact" if example.metric == OPEN_ENDED else example.metric)
        row.update(samples=samples, majority=majority, consistency=support)
    arrays = {key: torch.cat([p[key] for p in parts]) for key in ("hidden", "neurons")}
    for part in parts:
        arrays.update({k: v for k, v in part.items() if k.startswith("attention/")})
    return rows, arrays


def extract(
    model: HookedVLM,
    examples: list[Example],
    folder: str | Path,
    cfg: VRPConfig,
    progress: bool | Progress = True,
    ranks: Ranks | None = None,
    data: list[list[str]] | None = None,
    files: dict | None = None,
) -> Path:
    """Run (or resume) extraction into ``folder``. Refuses a folder holding a run of another configuration, or
    of other data: ``data`` are the examples' digests (``validate.digests``, computed here when not given),
    ``files`` the benchmark files' sha256 (kept for the record). Shards whose files went missing or changed since
    they were written are reported and extracted again.

    With ``ranks`` (a ``torchrun`` world), the shards not yet in the manifest are dealt round-robin
    to the ranks; each rank extracts its own, and all ranks return once every shard is listed."""
    ranks = ranks or Ranks.single()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(examples) != cfg.n:
        raise InputError(f"the config says n={cfg.n} but {len(examples)} examples were given")
    data = digests(examples) if data is None else data
    with manifest_lock(folder):
        manifest = _manifest(folder)
        if manifest:
            _check_same_run(folder, manifest, cfg, data)
        else:
            manifest = {
                "fingerprint": cfg.fingerprint(),
                "config": cfg.extraction(),
                "data": {"examples": data, "files": files or {}},
                "shards": [],
            }
            _write_manifest(folder, manifest)
        if ranks.is_main:
            _repair(folder, manifest)
    ranks.barrier()  # the main rank has dropped damaged shards
    with manifest_lock(folder):
        done = {s["start"] for s in _manifest(folder)["shards"]}
    ranks.barrier()  # every rank has read the same manifest before any rank adds to it
    remaining = [s for s in range(0, cfg.n, cfg.shard_size) if s not in done]
    mine = remaining[ranks.rank :: ranks.world_size]
    progress = Progress.of(progress)
    stored = cfg.n - sum(min(cfg.shard_size, cfg.n - s) for s in remaining)
    if done and ranks.is_main:
        progress.note(
            f"resuming: {stored} of {cfg.n} questions stored in {folder}"
            + (", extracting the rest" if remaining else ", extraction complete")
        )
    with progress.stage(
        f"extract{ranks.label}", total=sum(min(cfg.shard_size, cfg.n - s) for s in mine), unit="q"
    ) as bar:
        for start in mine:
            chunk = examples[start : start + cfg.shard_size]
            rows, arrays = _extract_shard(model, chunk, start, cfg)
            name = f"shard-{start // cfg.shard_size:05d}"
            blobs = {"safetensors": save(arrays), "json": json.dumps(rows).encode()}  # hashed as written, not read back
            for kind, data in blobs.items():
                write_atomic(folder / f"{name}.{kind}", data)
            with manifest_lock(folder):
                manifest = _manifest(folder)
                manifest["shards"].append(
                    {
                        "start": start,
                        "end": start + len(chunk),
                        "name": name,
                        "rank": ranks.rank,
                        "world_size": ranks.world_size,
                        "sha256": {kind: hashlib.sha256(data).hexdigest() for kind, data in blobs.items()},
                    }
                )
                manifest["shards"].sort(key=lambda s: s["start"])
                _write_manifest(folder, manifest)
            bar.advance(len(chunk))
    ranks.barrier()  # all shards listed
    return folder


class LayerStack:
    """One kind of stored activation, [layer, n, width], read a layer at a time from memory-mapped shards."""

    def __init__(self, files: list[Path], key: str):
        self._files = files
        self._key = key
        with safe_open(str(files[0]), "pt") as f:
            _, self._layers, self._width = f.get_slice(key).get_shape()
        self._n = 0
        for path in files:
            with safe_open(str(path), "pt") as f:
                self._n += f.get_slice(key).get_shape()[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self._layers, self._n, self._width)

    def __len__(self) -> int:
        return self._layers

    def __getitem__(self, layer: int) -> np.ndarray:
        """[n, width] float32 for one stored layer (its position among the stored layers)."""
        if not -self._layers <= layer < self._layers:
            raise InputIndexError(f"{self._key} holds {self._layers} layers, not {layer}")
        parts = []
        for path in self._files:
            with safe_open(str(path), "pt") as f:
                parts.append(f.get_slice(self._key)[:, layer, :].float().numpy())
        return np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        stacked = np.stack([self[l] for l in range(self._layers)])
        return stacked if dtype is None else stacked.astype(dtype)


@dataclass
class Extraction:
    rows: list[dict]
    hidden: LayerStack  # [layer, n, d_model] at the answer position
    neurons: LayerStack  # [layer, n, d_mlp]
    attention: list[np.ndarray]  # per sample [attention layer, patches]: at ``attention_layers``
    config: dict

    @property
    def attention_layers(self) -> list[int]:
        """The model layers behind ``attention[i]``'s rows (and ``attention_entropy``, ``head_entropy``): every
        layer, or a cross-attention model's cross layers."""
        stored = self.rows[0].get("attention_layers") if self.rows else None
        return list(range(self.attention[0].shape[0] if self.attention else 0)) if stored is None else list(stored)

    @property
    def correct(self) -> np.ndarray:
        return np.array([r["correct"] for r in self.rows])

    def stored_layers(self, kind: str = "hidden") -> list[int]:
        """The model layers behind ``hidden[i]`` (kind "hidden") or ``neurons[i]`` (kind "neurons")."""
        chosen = self.config.get(f"{kind}_layers")
        return list(range(len(getattr(self, kind)))) if chosen is None else [int(l) for l in chosen]

    @property
    def margins(self) -> np.ndarray:
        return np.array([r["margins"] for r in self.rows]).T  # layer n


def load(folder: str | Path, verify: bool = True) -> Extraction:
    """Read a complete extraction back: scalars and attention now, residual and neuron arrays on demand.

    ``verify`` checks every shard's files against the sha256 recorded when they were written (one read of the
    extraction, ~1 GB/s) and refuses a changed or missing one."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if not manifest:
        raise DataError(f"no manifest.json in {folder}: not an extraction folder (or its run never started)")
    if manifest.get("config", {}).get("extraction_format") != EXTRACTION_FORMAT:
        raise DataError(
            f"{folder} is an extraction in another format ({manifest.get('config', {}).get('extraction_format')}; "
            f"this vlm-lens reads {EXTRACTION_FORMAT}): run the study again into a new --out"
        )
    n = manifest["config"]["n"]
    covered = sum(s["end"] - s["start"] for s in manifest["shards"])
    if covered != n:
        raise DataError(f"{folder} is incomplete: {covered} of {n} samples extracted; run again to resume")
    rows, attention, files = [], [], []
    for shard in manifest["shards"]:
        why = _verified(folder, shard) if verify else None
        if why:
            raise DataError(
                f"{folder}: {why} (changed or damaged since); run the study again with the same --out to re-extract it"
            )
        rows += json.loads((folder / f"{shard['name']}.json").read_text())
        path = folder / f"{shard['name']}.safetensors"
        files.append(path)
        with safe_open(str(path), "pt") as f:
            attention += [f.get_tensor(f"attention/{i}").numpy() for i in range(shard["start"], shard["end"])]
    if [r["index"] for r in rows] != list(range(n)):
        raise DataError(f"{folder}: samples are missing or duplicated")
    return Extraction(rows, LayerStack(files, "hidden"), LayerStack(files, "neurons"), attention, manifest["config"])
