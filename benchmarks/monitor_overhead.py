"""What a reliability monitor costs over plain generation, measured side by side in one run.

    python benchmarks/monitor_overhead.py                 # CPU: a mid-size random LLaVA, 589-token prompts
    python benchmarks/monitor_overhead.py --device cuda   # the same on a GPU

``model.generate`` (greedy, 8 new tokens, a batch of 4 questions) against ``monitor.generate`` on the same
inputs: the answers and, from the prefill of the same pass, each one's risk (a dense monitor reading the answer
position's residual stream at the middle layer). The two run interleaved, round-robin; the ratio is of their
medians. Target: <= 1.02. The monitor is fitted on random features here: its cost does not depend on its weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from analyses.monitor.card import fingerprint
from analyses.monitor.monitor import fit
from analyses.probes import stratified_split
from model_adapters.llava import tiny as tiny_llava
from vlm_lens import HookedVLM

TARGET = 1.02


def build(device: str, batch: int):
    hf, processor = tiny_llava(
        image_size=336,
        patch_size=14,
        text=dict(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            max_position_embeddings=2048,
        ),
        vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
    )
    model = HookedVLM.from_hf(hf.to(device), processor)
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (336, 336, 3), dtype=np.uint8)) for _ in range(batch)]
    inputs = model.prepare(images=images, prompts=["is there a red square in the image ?"] * batch)
    layer = model.cfg.n_layers // 2
    x = rng.randn(200, model.cfg.d_model)
    correct = (x[:, 0] + rng.randn(200) > 0).astype(int)
    monitor = fit({layer: x}, correct, stratified_split(correct), fingerprint(model), "dense", n_resamples=0)
    return model, inputs, monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, inputs, monitor = build(args.device, args.batch)
    stop = [model.tokenizer.eos_token_id]
    runs = {
        "model.generate": lambda: model.generate(
            inputs, max_new_tokens=args.new_tokens, eos_token_id=stop, pad_token_id=stop[0]
        ),
        "monitor.generate (answers + risk)": lambda: monitor.generate(
            model, inputs, max_new_tokens=args.new_tokens, stop_ids=stop
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["model.generate"])
    print(f"device {args.device}, batch {args.batch}, {inputs.input_ids.shape[1]} prompt tokens, {args.new_tokens} new")
    print(f"{'variant':<36} {'median s':>9} {'ratio':>6}  target")
    for name, values in times.items():
        ratio = statistics.median(values) / base
        target = f"<= {TARGET}" if name != "model.generate" else ""
        print(f"{name:<36} {statistics.median(values):>9.4f} {ratio:>6.3f}  {target}")


if __name__ == "__main__":
    main()
