"""How long the command line takes to answer what needs no model, against importing torch alone.

    python benchmarks/cli_startup.py            # 5 runs each, fresh processes; medians in seconds

Side by side, each in a fresh Python process: ``import torch`` (the floor a command that loads a model pays), then
``vlm-lens --help``, a misspelled option, a wrong ``--dtype``, a near-miss toy name and a benchmark file that does
not exist. The command line defers torch, transformers and the analyses until a command runs, so each of these
prints in a fraction of ``import torch``'s time (target: the ratio below 0.5; under a second on an idle machine).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c 'import torch' (baseline)": [sys.executable, "-c", "import torch"],
    "vlm-lens --help": [sys.executable, "-m", "analyses.cli", "--help"],
    "vlm-lens vrp --nn 3": [sys.executable, "-m", "analyses.cli", "vrp", "--nn", "3"],
    "vlm-lens vrp --dtype bf17": [sys.executable, "-m", "analyses.cli", "vrp", "--dtype", "bf17"],
    "vlm-lens vrp --model toy-lava": [sys.executable, "-m", "analyses.cli", "vrp", "--model", "toy-lava"],
    "vlm-lens vrp --benchmark missing.jsonl": [
        sys.executable,
        "-m",
        "analyses.cli",
        "vrp",
        "--benchmark",
        "missing.jsonl",
    ],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    medians = {name: statistics.median(seconds(cmd) for _ in range(args.runs)) for name, cmd in CASES.items()}
    base = next(iter(medians.values()))
    print(f"{'command':<42} {'median s':>9} {'vs import torch':>16}")
    for name, value in medians.items():
        print(f"{name:<42} {value:>9.3f} {value / base:>15.2f}x")


if __name__ == "__main__":
    main()
