"""Mutation testing: would the tests notice if the code were wrong?

    python tests/mutate.py                 # the default sample: 40 mutants, seed 0
    python tests/mutate.py --n 100 --seed 3 --files analyses/stats.py

Each mutant changes one operator or constant in one of the core files (a comparison flipped or loosened,
``+`` for ``-``, ``and`` for ``or``, a 0 for a 1), runs the tests that cover that file, and counts as
*killed* if any of them fails and *survived* if all pass. The score is killed / mutants; survivors are
printed with the line they changed: each is a behaviour no test pins down. Mutants are drawn from the
AST with a fixed seed, so a score is reproducible; the source is restored after each (also on Ctrl-C or kill).
Not collected by pytest (no ``test_`` prefix): it runs the suite many times.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the core files, each with the tests that cover it
TARGETS = {
    "analyses/stats.py": ["tests/test_stats.py"],
    "analyses/data/scoring.py": ["tests/test_scoring.py"],
    "analyses/attention_structure.py": ["tests/test_attention_structure.py"],
    "analyses/interventions.py": ["tests/test_analyses_interventions.py"],
    "analyses/probes.py": ["tests/test_probes.py"],
    "vlm_lens/spans.py": ["tests/test_spans.py", "tests/test_views.py"],
    "analyses/study/config.py": ["tests/test_settings_contract.py"],
}
SWAPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.And: ast.Or,
    ast.Or: ast.And,
}


@dataclass(frozen=True)
class Mutant:
    file: str
    line: int
    what: str
    index: int  # which candidate node of the file (in ast.walk order)


def _candidates(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in SWAPS:
            out.append((node, f"{type(node.ops[0]).__name__} -> {SWAPS[type(node.ops[0])].__name__}"))
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAPS:
            out.append((node, f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.BoolOp) and type(node.op) in SWAPS:
            out.append((node, f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.Constant) and type(node.value) is int and node.value in (0, 1):
            out.append((node, f"{node.value} -> {1 - node.value}"))
    return [(n, w) for n, w in out if not _in_docstring_or_annotation(n)]


def _in_docstring_or_annotation(node: ast.AST) -> bool:
    return getattr(node, "lineno", None) is None


def _mutated_source(source: str, index: int) -> str:
    tree = ast.parse(source)
    node, _ = _candidates(tree)[index]
    if isinstance(node, ast.Compare):
        node.ops[0] = SWAPS[type(node.ops[0])]()
    elif isinstance(node, (ast.BinOp, ast.BoolOp)):
        node.op = SWAPS[type(node.op)]()
    else:
        node.value = 1 - node.value
    return ast.unparse(tree)


def sample(n: int, seed: int, files: list[str]) -> list[Mutant]:
    pool = []
    for file in files:
        for index, (node, what) in enumerate(_candidates(ast.parse((ROOT / file).read_text()))):
            pool.append(Mutant(file, node.lineno, what, index))
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))), key=lambda m: (m.file, m.line))


def killed(mutant: Mutant) -> bool:
    path = ROOT / mutant.file
    original = path.read_text()
    try:
        path.write_text(_mutated_source(original, mutant.index))
        # no bytecode written: a mutant's .pyc must never outlive it
        run = subprocess.run(
            [sys.executable, "-B", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TARGETS[mutant.file]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        return run.returncode != 0
    finally:
        path.write_text(original)


def _stop(signum, frame):  # SIGTERM as Ctrl-C: the finally clause puts the source back either way
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="mutants to draw")
    parser.add_argument("--seed", type=int, default=0, help="which mutants (the same seed, the same sample)")
    parser.add_argument("--files", nargs="*", default=list(TARGETS), help="core files to mutate")
    args = parser.parse_args()
    unknown = sorted(set(args.files) - set(TARGETS))
    if unknown:
        print(f"error: no tests are mapped for {unknown}; the mapped files are {sorted(TARGETS)}", file=sys.stderr)
        return 2
    mutants = sample(args.n, args.seed, args.files)
    survivors = []
    for i, mutant in enumerate(mutants, 1):
        dead = killed(mutant)
        print(
            f"[{i}/{len(mutants)}] {'killed  ' if dead else 'SURVIVED'} {mutant.file}:{mutant.line} {mutant.what}",
            flush=True,
        )
        if not dead:
            survivors.append(mutant)
    score = (len(mutants) - len(survivors)) / len(mutants)
    print(f"mutation score: {len(mutants) - len(survivors)} of {len(mutants)} killed ({score:.0%}), seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
