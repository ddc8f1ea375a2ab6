"""``VRPConfig``: every number the study uses, in one frozen object.

The fields that decide what extraction stores make its fingerprint: a folder extracted under
one fingerprint is never resumed under another. The rest (batch size, probe strengths,
resamples, ...) only change the analysis, which reruns from the stored extraction.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, no_type_check

from analyses import lenses
from analyses.data.scoring import CORRECT_AT
from vlm_lens import zoo
from vlm_lens.errors import DataError, InputError

EXTRACTION_FORMAT = 4  # 2: generated answers, H_s over the answer tokens; 3: data digests and shard sha256s;
# 4: each benchmark's own scoring rule, H_s of the mean map, confidence by question form, margins over every gold.
# A folder of another format is not resumed.
MIN_TEST = 100  # a test split below this many questions gives AUROC CIs too wide to compare predictors
ANSWER_TOKENS = 16  # enough for the short answers the benchmarks ask for ("Yes", "two", "the red one")


def size_of_test_split(n: int, test_fraction: float) -> int:
    """Questions in the test split of ``n``: sklearn's ``train_test_split`` takes ceil(fraction x n)."""
    return math.ceil(test_fraction * n)


# analyses.study.validate.BUILT_IN's names (a test holds them equal)
BUILT_IN_BENCHMARKS = ("shapes", "shapes-words")
# vlm_lens.loading.DTYPES's names (a test holds them equal), here so a wrong --dtype is told before torch loads
DEVICE_TYPES = ("cpu", "cuda", "mps", "meta", "xpu")  # vlm_lens.loading.DEVICE_TYPES
DTYPE_NAMES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16", "float", "half")


def smallest_n(test_fraction: float, minimum: int = MIN_TEST) -> int:
    """The smallest n whose test split holds at least ``minimum`` questions."""
    n = max(1, math.floor((minimum - 1) / test_fraction) - 1)  # just below the answer: f x n must pass minimum - 1
    while size_of_test_split(n, test_fraction) < minimum:
        n += 1
    return n


def default_answer_tokens(model: str) -> int:
    """The longest answer to generate for ``model``: a zoo toy's card says (its training answers), else 16."""
    return int(zoo.get(model).card.get("answer_tokens", ANSWER_TOKENS)) if model in zoo.names() else ANSWER_TOKENS


@dataclass(frozen=True)
class Rule:
    """What a numeric setting accepts: ``holds(value)``, said in words, and values that break it (the tests walk
    them: every numeric setting has a rule, so a new one cannot go unchecked)."""

    holds: Callable[[float], bool]
    says: str
    breaks: tuple


def at_least(low: int) -> Rule:
    return Rule(lambda v: v >= low, f"at least {low}", (low - 1, low - 5))


POSITIVE = Rule(lambda v: v > 0 and math.isfinite(v), "positive and finite", (0, -1.0, float("inf")))
SHARE = Rule(lambda v: 0 < v <= 1, "in (0, 1]", (0, 1.5, -0.1))
OPEN_SHARE = Rule(lambda v: 0 < v < 1, "in (0, 1)", (0, 1, 2.0))
ANY_OFFSET = Rule(lambda v: v != 0, "a non-zero layer offset", (0,))

# one validation for the command line, config files and the Python API (layers are checked against the model
# once it loads: ``check_against``)
RULES: dict[str, Rule] = {
    "n": at_least(1),
    "seed": at_least(0),
    "k": at_least(1),
    "top_p": SHARE,
    "temperature": POSITIVE,
    "max_new_tokens": at_least(1),
    "shard_size": at_least(1),
    "batch_size": at_least(1),
    "sample_rows": at_least(1),
    "hidden_layers": at_least(0),
    "neuron_layers": at_least(0),
    "correct_threshold": SHARE,
    "val_fraction": OPEN_SHARE,
    "test_fraction": OPEN_SHARE,
    "dense_C": POSITIVE,
    "sparse_C": POSITIVE,
    "stacked_layers": at_least(1),
    "top_mass": SHARE,
    "attention_grid": at_least(1),
    "dbscan_eps": POSITIVE,
    "dbscan_min_samples": at_least(1),
    "probe_seeds": at_least(1),
    "margin_items": at_least(1),
    "lens_steps": at_least(1),
    "top_heads": at_least(1),
    "ablation_ks": at_least(1),
    "random_controls": at_least(0),
    "random_sizes": at_least(1),
    "extreme_clamp": POSITIVE,
    "replicate_layers": ANY_OFFSET,
    "bypass_layers": at_least(0),
    "mask_fraction": SHARE,
    "flag_tau": OPEN_SHARE,
    "n_resamples": at_least(1),
}


# The settings ``vlm-lens vrp`` takes as options, each with its help: the one definition (``analyses.cli`` builds
# the options from it, with VRPConfig's types and defaults, and VRPConfig checks the values), so the command line,
# config files and the Python API cannot drift apart. Every other setting is reached through ``--config``.
OPTIONS: dict[str, str] = {
    "n": "number of questions",
    "k": "self-consistency samples per question",
    "seed": "seed of splits, sampling and bootstraps",
    "device": "cpu, cuda, cuda:1 (under torchrun, cuda means each rank's own GPU)",
    "dtype": "bfloat16, float16 or float32 (default: the checkpoint's own)",
    "device_map": "'auto': shard a model too large for one GPU across all visible GPUs",
    "batch_size": "questions per forward pass; peak memory grows with it",
    "shard_size": "questions per resumable shard",
    "sample_rows": "rows of KV cache per self-consistency decode (questions x k)",
    "max_new_tokens": "longest answer, greedy and sampled (each stops at end of sequence); default: the model's own "
    "(a toy's card says, else 16)",
    "temperature": "sampling temperature of the self-consistency samples",
    "top_p": "nucleus of the self-consistency samples",
    "storage_dtype": "stored activations: float16 or bfloat16 halve the extraction",
    "attention_view": "a multi-crop image's attention map: base (its global view) or stitched (its crops laid out "
    "where they sit in the picture)",
    "lens": "the lens every margin is read through: logit (the model's own read-out) or tuned (per-layer "
    "translators: --tuned-lens, or trained on the training split and saved in OUT/tuned_lens)",
    "tuned_lens": "with --lens tuned: a tuned lens folder (vlm-lens lens train) instead of training one",
    "mask_fraction": "patch masking: the share of most-attended (and of random) patches hidden",
    "flag_tau": "the monitor flags an answer when the dense probe's p(right) falls below this",
    "n_resamples": "bootstrap resamples for every confidence interval",
}


@no_type_check  # checks its own settings (the error contract): the tests' run-time type checker stays out
@dataclass(frozen=True)
class VRPConfig:
    # what to run
    model: str = "toy-llava"
    benchmark: str = (
        "shapes"  # "shapes", "shapes-words", or a questions file of any supported format (analyses.data.benchmarks)
    )
    annotations: str | None = None  # VQAv2's annotations / LLaVA-Bench's reference answers
    format: str | None = None  # force a format (pope, counting, vqav2, textvqa, llava_bench); None: detected
    images: str | None = None  # image folder for a benchmark file
    n: int = 600
    seed: int = 0  # splits, sampling, bootstraps, random controls
    # where the model runs
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: where from_pretrained puts it (the CPU)
    dtype: str | None = None  # "bfloat16", "float16", "float32"; None: the checkpoint's own
    device_map: str | None = None  # "auto": shard a model too large for one GPU across the visible GPUs
    # extraction
    k: int = 10  # self-consistency samples per question
    top_p: float = 0.9
    temperature: float = 1.0
    # answer length: the greedy answer and each self-consistency sample stop at end of sequence or after this
    # many tokens; None: the model's own (a toy's card says 1, its training answers; otherwise 16)
    max_new_tokens: int | None = None
    shard_size: int = 50  # questions per resumable shard
    batch_size: int = 16  # questions per forward pass (independent of the shard size): peak memory scales with it
    sample_rows: int = 64  # rows of KV cache one self-consistency decode holds (questions x k)
    hidden_layers: tuple[int, ...] | None = None  # residual stream stored at these layers (None: all)
    neuron_layers: tuple[int, ...] | None = None  # MLP neurons stored at these layers (None: all)
    storage_dtype: str = "float32"  # stored activations: "float16" / "bfloat16" halve the extraction's size
    correct_threshold: float = CORRECT_AT  # scoring.is_correct: credit needed to count as correct
    # a multi-crop image's attention map: "base" (its global view) or "stitched" (its crops where they sit in the
    # picture); one-view images have one grid either way
    attention_view: str = "base"
    # predictors
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    dense_C: float = 1.0  # inverse L2 strength of the dense probes
    sparse_C: float = 0.1  # inverse L1 strength of the sparse probes
    stacked_layers: int = 5  # the stacked probe reads this many last layers
    top_mass: float = 0.5  # C_k: components of the patches holding this share of attention
    # the DBSCAN re-run of C_k on the top-mass patches' grid coordinates: eps 1.5 joins diagonal neighbours (C_k
    # joins only the four sides) and min_samples 2 leaves lone patches as noise, so the two counts can disagree
    dbscan_eps: float = 1.5
    dbscan_min_samples: int = 2
    probe_seeds: int = 5  # the dense and sparse probes refitted on this many splits: their AUROCs' standard error
    attention_grid: tuple[int, int] | None = None  # common grid for attention features; None: the smallest grid
    # causal checks
    margin_items: int = 100  # questions whose margin is decomposed for Table 3 (and the top heads)
    # the lens margins are read through (analyses.study.lenses): "logit", or "tuned" (``tuned_lens``, a folder saved
    # by ``vlm-lens lens train``, or one trained for ``lens_steps`` steps on the training split's prompts); read from
    # the stored residual streams, so it changes the analysis, never the extraction
    lens: str = "logit"
    tuned_lens: str | None = None
    lens_steps: int = 300
    top_heads: int = 10  # heads listed by direct logit contribution
    ablation_ks: tuple[int, ...] = (5, 10)  # the sparse probe's top-k residual units zeroed in Tables 4-5
    random_controls: int = 3  # random-unit controls of each size
    random_sizes: tuple[int, ...] = (500, 1000, 2000)  # escalating random ablations (sizes >= d_model are skipped)
    clamp_unit: bool = True  # clamp the probe's strongest unit to its mean over wrong (and right) answers
    # ... and to this many standard deviations (over the training split) beyond its mean, on the side of wrong (and
    # of right) answers: the extreme clamp
    extreme_clamp: float = 10.0
    single_units: bool = True  # zero each of the top-k probe units alone (the largest k)
    # the top-k probe-unit ablation replicated at these other stored layers, each with its own sparse probe's units
    # (relative to the probe's layer: -1 the layer before); () skips it
    replicate_layers: tuple[int, ...] = (-1, 1)
    bypass_layers: tuple[int, ...] | None = None  # MLP bypass at these layers (None: every layer)
    mask_fraction: float = 0.3  # patch masking: the most-attended (and as many random) patches hidden
    flag_tau: float = 0.5  # the monitor flags an answer when the dense probe's p(right) falls below this (Table 8)
    n_resamples: int = 10_000  # bootstrap resamples for every CI (the study's 10,000)

    EXTRACTION_FIELDS: ClassVar[tuple[str, ...]] = (
        "model",
        "benchmark",
        "annotations",
        "format",
        "images",
        "n",
        "seed",
        "dtype",
        "k",
        "top_p",
        "temperature",
        "max_new_tokens",
        "shard_size",
        "hidden_layers",
        "neuron_layers",
        "storage_dtype",
        "correct_threshold",
        "attention_view",
    )

    def __post_init__(self):
        self._check_types()
        if self.max_new_tokens is None:
            object.__setattr__(self, "max_new_tokens", default_answer_tokens(self.model))
        for name, rule in RULES.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if value is not None and not all(rule.holds(v) for v in values):
                raise DataError(
                    f"{name} must be {rule.says}{' (each)' if isinstance(value, tuple) else ''}, got {value!r}"
                )
        if self.val_fraction + self.test_fraction >= 1:
            raise DataError(
                f"val_fraction and test_fraction must leave a training split (sum below 1), "
                f"got {self.val_fraction} and {self.test_fraction}"
            )
        if self.device is not None and self.device_map is not None:
            raise DataError("give device (one device) or device_map (sharded across GPUs), not both")
        if self.dtype not in (None, "auto", *DTYPE_NAMES):  # before torch is imported: the command line answers at once
            raise DataError(
                f"unknown dtype {self.dtype!r}; use one of {sorted(DTYPE_NAMES)} or 'auto' (the checkpoint's)"
            )
        if self.device is not None and str(self.device).split(":")[0] not in DEVICE_TYPES:  # (before torch, too)
            raise DataError(
                f"unknown device {self.device!r}; use one of {list(DEVICE_TYPES)}, with an index where it has several "
                "('cuda:1')"
            )
        if self.device is not None:
            from vlm_lens.loading import check_device

            try:
                check_device(self.device)
            except InputError as e:
                raise DataError(str(e)) from None
        if self.device_map not in (None, "auto", "balanced", "balanced_low_0", "sequential"):
            raise DataError(f"device_map must be auto, balanced, balanced_low_0 or sequential, got {self.device_map!r}")
        if self.storage_dtype not in ("float32", "float16", "bfloat16"):
            raise DataError(f"storage_dtype must be float32, float16 or bfloat16, got {self.storage_dtype!r}")
        if self.attention_view not in ("base", "stitched"):
            raise DataError(f"attention_view must be base or stitched, got {self.attention_view!r}")
        if self.lens not in ("logit", "tuned"):
            raise DataError(f"lens must be logit or tuned, got {self.lens!r}")
        if self.tuned_lens is not None and self.lens != "tuned":
            raise DataError(
                f"tuned_lens {self.tuned_lens!r} is read only with lens tuned (--lens tuned --tuned-lens FOLDER)"
            )
        if self.lens == "tuned" and self.hidden_layers is not None:
            raise DataError(
                f"lens tuned reads the residual stream at every layer, but hidden_layers stores only "
                f"{list(self.hidden_layers)}: leave hidden_layers unset"
            )

    def check_against(self, n_layers: int) -> None:
        """The layer settings against the loaded model's language layers (before any extraction)."""
        for name in ("hidden_layers", "neuron_layers", "bypass_layers"):
            outside = [l for l in getattr(self, name) or () if l >= n_layers]
            if outside:
                raise DataError(
                    f"{name} {outside} outside the model's {n_layers} language layers: give layers "
                    f"0..{n_layers - 1} (or leave {name} unset for all)"
                )

    def _check_types(self) -> None:
        """Each setting of its declared type (a config file may hold "n": "600" or "k": true)."""
        kinds = {
            "int": (int,),
            "float": (int, float),
            "str": (str,),
            "bool": (bool,),
            "None": (type(None),),
            "tuple[int, ...]": (tuple,),
            "tuple[int, int]": (tuple,),
        }
        for spec in dataclasses.fields(self):
            name = spec.name
            if isinstance(getattr(self, name), list) and "tuple" in str(spec.type):  # JSON and Python lists
                object.__setattr__(self, name, tuple(getattr(self, name)))
            allowed = tuple(t for part in str(spec.type).split(" | ") for t in kinds[part])
            value = getattr(self, name)
            wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
            if isinstance(value, tuple) and not wrong:
                wrong = not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if wrong:
                raise DataError(f"{name} must be {str(spec.type).replace(' | None', ' or null')}, got {value!r}")

    # settings added since format 3, left out of extraction() at these defaults, so earlier extractions still resume
    LATER_DEFAULTS: ClassVar[dict] = {"attention_view": "base"}

    def extraction(self) -> dict:
        """The settings that decide what extraction stores, and the version of what it stores."""
        fields = {name: getattr(self, name) for name in self.EXTRACTION_FIELDS}
        fields = {k: v for k, v in fields.items() if k not in self.LATER_DEFAULTS or v != self.LATER_DEFAULTS[k]}
        return {"extraction_format": EXTRACTION_FORMAT, **fields}

    # where the data lives, not what it is: the data's own digests guard a resume (analyses.study.extract), so a
    # moved image folder or a relative path from another directory resumes, and changed contents do not
    LOCATION_FIELDS: ClassVar[tuple[str, ...]] = ("benchmark", "annotations", "images")

    def fingerprint(self) -> str:
        kept = {k: v for k, v in self.extraction().items() if k not in self.LOCATION_FIELDS}
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]

    def changed_from(self, stored: dict) -> dict[str, tuple]:
        """The fingerprinted settings that differ from a stored ``extraction()``: name -> (stored, now)."""
        now = json.loads(json.dumps(self.extraction()))  # tuples as lists, as the manifest holds them
        return {k: (stored.get(k), v) for k, v in now.items() if k not in self.LOCATION_FIELDS and stored.get(k) != v}

    def check_files(self) -> None:
        """The benchmark, annotations and image folder exist (a ``DataError`` naming the one that does not), checked
        before anything heavy loads; their contents are ``analyses.study.validate``'s."""
        if self.benchmark not in BUILT_IN_BENCHMARKS and not Path(self.benchmark).is_file():
            close = difflib.get_close_matches(self.benchmark, BUILT_IN_BENCHMARKS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            what = "is a folder, not a questions file" if Path(self.benchmark).is_dir() else "does not exist"
            raise DataError(
                f"--benchmark {self.benchmark}: the file {what}; {hint}give {' or '.join(BUILT_IN_BENCHMARKS)} "
                "(built in) or a questions file (POPE, VQAv2, TextVQA, LLaVA-Bench, counting/spatial, Shapes)"
            )
        if self.annotations is not None and not Path(self.annotations).is_file():
            raise DataError(f"--annotations {self.annotations}: no such file; give the benchmark's annotations file")
        if self.images is not None and not Path(self.images).is_dir():
            what = "is a file" if Path(self.images).exists() else "does not exist"
            raise DataError(
                f"--images {self.images}: the folder {what}; give the folder holding the benchmark's images"
            )
        if self.tuned_lens is not None and not (lenses.folder(self.tuned_lens) / "card.json").is_file():
            what = "does not exist" if not Path(self.tuned_lens).exists() else "holds no card.json"
            raise DataError(
                f"--tuned-lens {self.tuned_lens}: the folder {what}; give a folder saved by vlm-lens lens train, "
                f"or a toy's shipped lens ({', '.join(lenses.names())})"
            )

    def size_warnings(self) -> list[str]:
        """What ``n`` is too small for, said before any model work."""
        test = size_of_test_split(self.n, self.test_fraction)
        if test >= MIN_TEST:
            return []
        return [
            f"n={self.n} gives a test split of {test} question{'s' if test != 1 else ''} (test fraction {self.test_fraction}): every AUROC "
            f"and probe CI will be wide; --n {smallest_n(self.test_fraction)} or more gives a test split of at "
            f"least {MIN_TEST}"
        ]

    def as_dict(self) -> dict:
        """Every setting, JSON-ready (tuples as lists): what tables.json records and ``from_file`` reads back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> VRPConfig:
        """A config from a JSON file of field: value pairs (any subset), then ``overrides``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the study settings file {path}: {e}") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object of setting: value pairs, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise DataError(
                f"{path}: unknown study settings {unknown}; the settings are {sorted(cls.__dataclass_fields__)}"
            )
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in {**data, **overrides}.items()}
        return cls(**data)
