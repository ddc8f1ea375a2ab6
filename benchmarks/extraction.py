"""The study's extraction at LLaVA-1.5-7B geometry: throughput against the bare forwards, memory against batch size.

    python benchmarks/extraction.py                 # CPU: 32 layers, d_mlp 11008, 576 image tokens, d_model 128
    python benchmarks/extraction.py --save DIR      # also write that checkpoint (then: vlm-lens vrp --model DIR)
    python benchmarks/extraction.py --full --device cuda --dtype bfloat16   # the real 7B size, random init (GPU)

A random-init LLaVA with LLaVA-1.5-7B's geometry where it costs memory (32 language layers, MLP
width 11008, 576 image tokens from 336 px images with patch 14); on a CPU its width is 128 so the
weights fit (0.55 GB), ``--full`` uses the real width 4096 and CLIP-L tower.

1. Throughput, side by side: the same prepared batches run (a) through the bare HF forward the
   study needs (``logits_to_keep=1``) and (b) through the study's extraction forward (answer-
   position capture of every layer's residual stream, MLP neurons and attention rows, truth
   margins, image grids), interleaved; medians; questions/s and the ratio (target <= 1.3).
2. Peak memory of a whole extraction (self-consistency included, K=2) in a fresh process per
   setting, against batch size and n: flat in n means the memory is one batch's, not the run's.
3. With --device cuda: peak GPU memory and the model-FLOPs utilisation of the prefill.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from analyses.data import shapes
from analyses.data.examples import shapes_examples
from analyses.evaluation import batches
from analyses.study.config import VRPConfig
from analyses.study.extract import _extract_batch, extract
from model_adapters.llava import tiny
from vlm_lens import HookedVLM

TARGET = 1.3
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, per the vendors' data sheets


def build(full: bool, device: str | None, dtype: str | None) -> HookedVLM:
    width = (
        dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32)
        if full
        else dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=4)
    )
    vision = (
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
        if full
        else dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    )
    hf, processor = tiny(
        shapes.WORDS,
        image_size=336,
        patch_size=14,
        vision=vision,
        text=dict(intermediate_size=11008, num_hidden_layers=32, **width),
    )
    # A deep random network gives nearly the same answer to everything, so keep only "yes" and "no" in the
    # unembedding: whichever it says, it is right on about half the yes/no questions (the study needs both).
    answer_ids = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    with torch.no_grad():
        keep = torch.zeros(hf.lm_head.weight.shape[0], 1)
        keep[answer_ids] = 1.0
        hf.lm_head.weight.mul_(keep)
    if dtype:
        hf.to(getattr(torch, dtype))
    if device:
        hf.to(device)
    return HookedVLM.from_hf(hf, processor)


def prefill_flops(model: HookedVLM, tokens: int, seq: int) -> float:
    """2 x language-model parameters x tokens, plus attention's QK^T and AV (4 x layers x seq x d_model per token)."""
    layers = model.hf_model.get_submodule(model.adapter.modules["layers"])
    params = sum(p.numel() for p in layers.parameters())
    return 2 * params * tokens + 4 * model.cfg.n_layers * seq * model.cfg.d_model * tokens


def throughput(args) -> None:
    model = build(args.full, args.device, args.dtype)
    examples = shapes_examples(args.n, seed=9)
    cfg = VRPConfig("bench", n=args.n, batch_size=args.batch_size)
    prepared = list(batches(model, examples, args.batch_size))
    bare, study = [], []
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for chunk, inputs in prepared[:1]:  # warm-up
            model.hf_model(**inputs.tensors, logits_to_keep=1)
            _extract_batch(model, chunk, inputs, 0, cfg)
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.repeats):
            for start, (chunk, inputs) in enumerate(prepared):
                sync()
                t = time.perf_counter()
                model.hf_model(**inputs.tensors, logits_to_keep=1)
                sync()
                bare.append(time.perf_counter() - t)
                t = time.perf_counter()
                _extract_batch(model, chunk, inputs, start, cfg)
                sync()
                study.append(time.perf_counter() - t)
    seq = prepared[0][1].input_ids.shape[1]
    b, s = statistics.median(bare), statistics.median(study)
    print(
        f"LLaVA-1.5-7B geometry{' (full width)' if args.full else ' (d_model 128)'}: {model.cfg.n_layers} layers, "
        f"d_mlp {model.cfg.d_mlp}, d_model {model.cfg.d_model}, {seq} tokens per question, batch {args.batch_size}, "
        f"{model.device}, {model.dtype}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'':34s} {'median s/batch':>14s} {'questions/s':>12s} {'ratio':>6s}")
    print(f"{'bare HF forward (logits_to_keep=1)':34s} {b:14.3f} {args.batch_size / b:12.1f} {1.0:6.2f}")
    print(f"{'study extraction forward':34s} {s:14.3f} {args.batch_size / s:12.1f} {s / b:6.2f}   target <= {TARGET}")
    if model.device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        achieved = prefill_flops(model, args.batch_size * seq, seq) / b / 1e12
        print(
            f"GPU {name}: peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; prefill {achieved:.0f} TFLOP/s"
            + (f" = MFU {achieved / peak:.1%} of {peak:.0f}" if peak else "")
        )


def peak_rss(args) -> dict:
    """One whole extraction (K=2) in this process; the peak RSS (VmHWM) at the end."""
    model = build(args.full, args.device, args.dtype)
    examples = shapes_examples(args.n, seed=9)
    cfg = VRPConfig("bench", n=args.n, k=2, batch_size=args.batch_size, shard_size=16)
    with tempfile.TemporaryDirectory() as folder:
        extract(model, examples, folder, cfg, progress=False)
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return {"batch": args.batch_size, "n": args.n, "peak_mib": hwm / 1024}


def memory_table(args) -> None:
    print("\npeak RSS of a whole extraction (MiB; fresh process each; K=2 self-consistency included)")
    sizes, ns = (2, 4, 8), (16, 48)
    print(f"{'batch':>5s} " + " ".join(f"{'n=' + str(n):>9s}" for n in ns))
    for batch in sizes:
        cells = []
        for n in ns:
            out = subprocess.run(
                [sys.executable, __file__, "--peak", "--n", str(n), "--batch-size", str(batch)],
                capture_output=True,
                text=True,
                check=True,
            )
            cells.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])
        print(f"{batch:5d} " + " ".join(f"{c:9.0f}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="the real 7B width (needs a GPU)")
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--save", help="write the geometry checkpoint (weights, processor) to this folder and stop")
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.save:
        model = build(args.full, None, args.dtype)
        model.hf_model.save_pretrained(args.save)
        model.processor.save_pretrained(args.save)
        print(f"saved to {args.save}")
        return
    if args.peak:
        print(json.dumps(peak_rss(args)))
        return
    throughput(args)
    if args.device is None:
        memory_table(args)


if __name__ == "__main__":
    main()
