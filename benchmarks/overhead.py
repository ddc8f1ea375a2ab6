"""What HookedVLM costs over a raw HF forward, measured side by side in one run.

    python benchmarks/overhead.py            # timings, then peak memory at 1x and 2x sequence length

A mid-size random LLaVA (language hidden 512, 8 layers, 576 image tokens from a 336 px image
with patch 14). Variants run interleaved, round-robin, and each reports its median time as a
ratio to the raw HF forward's median. Peak memory is measured in a fresh subprocess per variant
(peak RSS growth during the forward), at one image (~600 tokens) and two
images (~1200 tokens): the attention-row capture should grow like the raw forward, eager
output_attentions quadratically. Memory uses Linux's /proc peak-RSS reset.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

from model_adapters.llava import tiny as tiny_llava
from vlm_lens import HookedVLM

TARGETS = {"no hooks": 1.02, "cache resid_post, every layer": 1.05, "full cache": 1.3, "image-attention rows": 1.1}


def build(n_images: int, with_eager: bool = True):
    hf, processor = tiny_llava(
        image_size=336,
        patch_size=14,
        text=dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8
        ),
        vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
    )
    model = HookedVLM.from_hf(hf, processor)
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (336, 336, 3), dtype=np.uint8)) for _ in range(n_images)]
    inputs = model.prepare(images=[images], prompts=["is there a red square in the image ?"])
    eager = None
    if with_eager:
        eager = copy.deepcopy(hf)
        eager.set_attn_implementation("eager")
    return model, inputs, eager


def variants(model, inputs, eager):
    resid = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    rows = lambda n: n.endswith("attn.hook_pattern_rows")  # noqa: E731
    return {
        "raw HF forward": lambda: model.hf_model(**inputs.tensors).logits,
        "no hooks": lambda: model(inputs),
        "cache resid_post, every layer": lambda: model.run_with_cache(inputs, names_filter=resid),
        "full cache": lambda: model.run_with_cache(inputs),
        "image-attention rows": lambda: model.run_with_cache(inputs, names_filter=rows),
        "eager output_attentions (baseline it replaces)": lambda: eager(**inputs.tensors, output_attentions=True),
    }


def time_all(repeats: int) -> None:
    model, inputs, eager = build(1)
    runs = variants(model, inputs, eager)
    times = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["raw HF forward"])
    print(
        f"sequence length {inputs.input_ids.shape[1]}, {repeats} interleaved repeats, torch threads {torch.get_num_threads()}"
    )
    print(f"{'variant':48s} {'median ms':>10s} {'ratio':>7s} {'target':>7s}")
    for name, ts in times.items():
        target = TARGETS.get(name)
        print(
            f"{name:48s} {1000 * statistics.median(ts):10.1f} {statistics.median(ts) / base:7.3f} "
            f"{'<=' + str(target) if target else '':>7s}"
        )


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory(variant: str, n_images: int) -> dict:
    """Peak RSS growth during one forward, in a process that has run nothing else (Linux)."""
    model, inputs, eager = build(n_images, with_eager=variant.startswith("eager"))
    run = variants(model, inputs, eager)[variant]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak-RSS mark (VmHWM)
        f.write("5")
    before = _status_kib("VmRSS")
    with torch.no_grad():
        run()
    return {"tokens": int(inputs.input_ids.shape[1]), "peak_mib": (_status_kib("VmHWM") - before) / 1024}


def memory_table() -> None:
    names = ["raw HF forward", "image-attention rows", "eager output_attentions (baseline it replaces)"]
    print("\npeak memory growth during one forward (MiB; fresh process each; 1 image vs 2 images)")
    print(f"{'variant':48s} {'1 image':>14s} {'2 images':>14s}")
    for name in names:
        cells = []
        for n in (1, 2):
            out = subprocess.run(
                [sys.executable, __file__, "--memory", name, "--images", str(n)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            cells.append(f"{result['peak_mib']:7.1f} @{result['tokens']}")
        print(f"{name:48s} {cells[0]:>14s} {cells[1]:>14s}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(peak_memory(args.memory, args.images)))
        return
    time_all(args.repeats)
    memory_table()


if __name__ == "__main__":
    main()
