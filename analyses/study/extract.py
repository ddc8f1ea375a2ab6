"""Per-question extraction over a benchmark, in shards, resumable after any interruption.

For each question: the greedy answer and whether it is right (``analyses.answers``), output
confidence and logit entropy, the truth margin at every layer, the answer position's residual
stream and MLP neurons at the configured layers, its attention to the image per layer (the
patch grid, flattened) and K self-consistency samples.

A run folder holds ``manifest.json`` and, per shard, ``shard-00007.json`` (scalars) and
``shard-00007.safetensors`` (arrays). Each file is written to a temporary name and renamed, and
the manifest lists a shard only after both files exist: a run killed at any point (kill -9
included) resumes at the first shard the manifest lacks, with nothing lost or counted twice.
Shards run in forward batches of ``cfg.batch_size`` questions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from analyses import answers
from analyses.attention_structure import image_grids
from analyses.consistency import majority_support, sample_answers
from analyses.data.examples import Example
from analyses.evaluation import batches
from analyses.logit_lens import logit_lens, truth_margin
from analyses.study.config import VRPConfig
from vlm_lens import HookedVLM


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


@torch.no_grad()
def _extract_batch(model: HookedVLM, examples: list[Example], inputs, start: int, cfg: VRPConfig) -> tuple[list[dict], dict]:
    n_layers = model.cfg.n_layers
    hidden_layers = list(cfg.hidden_layers or range(n_layers))
    neuron_layers = list(cfg.neuron_layers or range(n_layers))
    wanted = {f"blocks.{l}.hook_resid_post" for l in range(n_layers)}
    wanted |= {f"blocks.{l}.mlp.hook_post" for l in neuron_layers}
    wanted |= {f"blocks.{l}.attn.hook_pattern_rows" for l in range(n_layers)}
    logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n in wanted)
    positions = answers.answer_positions(inputs)
    probs = torch.softmax(answers.at_answer(logits, positions).float(), -1)
    _, predictions = answers.greedy_answers(model, logits, inputs)
    refs = [answers.reference_token_ids(model.tokenizer, [e.label]) for e in examples]
    margins = truth_margin(logit_lens(model, cache, positions), refs)  # layer batch
    hidden = answers.stack_at_answer(cache, "resid_post", hidden_layers, positions).float()
    neurons = answers.stack_at_answer(cache, "post", neuron_layers, positions).float()
    grids = image_grids(cache)
    rows, arrays = [], {}
    for i, example in enumerate(examples):
        index = start + i
        single = model.prepare(images=[example.load_image()], prompts=[example.text])
        samples = sample_answers(model, single, k=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed + index)
        majority, support = majority_support(samples)
        rows.append({
            "index": index, "type": example.type, "label": example.label, "golds": list(example.golds),
            "metric": example.metric, "prediction": predictions[i],
            "correct": answers.is_correct(predictions[i], example.golds, example.metric, cfg.correct_threshold),
            "confidence": float(probs[i].max()),
            "entropy": float(-(probs[i] * torch.log(probs[i].clamp_min(1e-30))).sum()),
            "margins": margins[:, i].tolist(), "samples": samples, "majority": majority, "consistency": support,
            "grid": list(grids[i].shape[1:]),
        })
        arrays[f"hidden/{index}"] = np.ascontiguousarray(hidden[:, i].numpy())
        arrays[f"neurons/{index}"] = np.ascontiguousarray(neurons[:, i].numpy())
        arrays[f"attention/{index}"] = grids[i].reshape(n_layers, -1)
    return rows, arrays


def extract(model: HookedVLM, examples: list[Example], folder: str | Path, cfg: VRPConfig, progress: bool = True) -> Path:
    """Run (or resume) extraction into ``folder``. Refuses a folder holding a run of another configuration."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(examples) != cfg.n:
        raise ValueError(f"the config says n={cfg.n} but {len(examples)} examples were given")
    manifest = _manifest(folder)
    if manifest and manifest.get("fingerprint") != cfg.fingerprint():
        raise ValueError(f"{folder} holds a run with another configuration ({manifest.get('config')}); use a new --out")
    manifest = manifest or {"fingerprint": cfg.fingerprint(), "config": cfg.extraction(), "shards": []}
    done = {s["start"] for s in manifest["shards"]}
    bar = tqdm(total=cfg.n, initial=sum(min(cfg.shard_size, cfg.n - s) for s in done), desc="extract", unit="q",
               disable=not progress)
    for start in range(0, cfg.n, cfg.shard_size):
        if start in done:
            continue
        chunk = examples[start : start + cfg.shard_size]
        rows, arrays = [], {}
        for offset, (part, inputs) in zip(range(0, len(chunk), cfg.batch_size), batches(model, chunk, cfg.batch_size)):
            part_rows, part_arrays = _extract_batch(model, part, inputs, start + offset, cfg)
            rows += part_rows
            arrays.update(part_arrays)
        name = f"shard-{start // cfg.shard_size:05d}"
        _write_atomic(folder / f"{name}.safetensors", lambda p, arrays=arrays: save_file(arrays, str(p)))
        _write_atomic(folder / f"{name}.json", lambda p, rows=rows: p.write_text(json.dumps(rows)))
        manifest["shards"].append({"start": start, "end": start + len(chunk), "name": name})
        manifest["shards"].sort(key=lambda s: s["start"])
        _write_atomic(folder / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=1)))
        bar.update(len(chunk))
    bar.close()
    return folder


@dataclass
class Extraction:
    rows: list[dict]
    hidden: np.ndarray  # [layer, n, d_model] at the answer position
    neurons: np.ndarray  # [layer, n, d_mlp]
    attention: list[np.ndarray]  # per sample [layer, patches]
    config: dict

    @property
    def correct(self) -> np.ndarray:
        return np.array([r["correct"] for r in self.rows])

    @property
    def margins(self) -> np.ndarray:
        return np.array([r["margins"] for r in self.rows]).T  # layer n


def load(folder: str | Path) -> Extraction:
    """Read a complete extraction back (every shard the manifest lists, in order)."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if not manifest:
        raise FileNotFoundError(f"no manifest.json in {folder}: not an extraction folder")
    n = manifest["config"]["n"]
    covered = sum(s["end"] - s["start"] for s in manifest["shards"])
    if covered != n:
        raise ValueError(f"{folder} is incomplete: {covered} of {n} samples extracted; run again to resume")
    rows, hidden, neurons, attention = [], [], [], []
    for shard in manifest["shards"]:
        rows += json.loads((folder / f"{shard['name']}.json").read_text())
        arrays = load_file(str(folder / f"{shard['name']}.safetensors"))
        for index in range(shard["start"], shard["end"]):
            hidden.append(arrays[f"hidden/{index}"])
            neurons.append(arrays[f"neurons/{index}"])
            attention.append(arrays[f"attention/{index}"])
    if [r["index"] for r in rows] != list(range(n)):
        raise ValueError(f"{folder}: samples are missing or duplicated")
    return Extraction(rows, np.stack(hidden, 1), np.stack(neurons, 1), attention, manifest["config"])
