"""The study's questions answered in sentences generated from this run's numbers, with CIs and n.

Each ``Finding`` is one of the study's questions, the answer for this run and the numbers behind
it; ``warnings`` says where n is too small for a CI to mean much. The report opens with both.
"""

from __future__ import annotations

from dataclasses import dataclass

from analyses.stats import Estimate
from analyses.study.config import MIN_TEST, smallest_n
from analyses.study.results import StudyResults

WIDE_CI = 0.3  # an AUROC CI wider than this decides nothing


@dataclass(frozen=True)
class Finding:
    question: str
    answer: str


def _ci(estimate: Estimate) -> str:
    return f"{estimate.value:.3f} [95% CI {estimate.ci[0]:.3f}, {estimate.ci[1]:.3f}], n = {estimate.n}"


def _excludes_chance(estimate: Estimate) -> bool:
    return estimate.ci[0] > 0.5 or estimate.ci[1] < 0.5


def strength(estimate: Estimate) -> str:
    """How well a score predicts correctness, in words: by |AUROC - 0.5| and whether the CI leaves chance; a CI
    wider than ``WIDE_CI`` decides nothing (the warnings say so), and the words claim nothing either."""
    if estimate.ci[1] - estimate.ci[0] > WIDE_CI:
        return "is not shown (the CI is too wide) to predict"
    if not _excludes_chance(estimate) or abs(estimate.value - 0.5) < 0.1:
        return "barely predicts"
    word = "weakly predicts" if abs(estimate.value - 0.5) < 0.2 else "predicts"
    return word if estimate.value > 0.5 else f"{word}, inversely,"


def _probe_and_controls(results: StudyResults):
    """The largest tested top-k probe ablation and its random controls (same k), or (None, [])."""
    tested = [r for r in results.ablations.group("probe units") if r.k]
    if not tested:
        return None, []
    probe = max(tested, key=lambda r: r.k)
    controls = [r for r in results.ablations.group("random units") if r.k_requested == probe.k_requested]
    return probe, controls


def concentration(results: StudyResults) -> str:
    """'concentrated' when zeroing the probe's top-k units (the largest k tested) lowers accuracy (CI below 0)
    by more than every random control of the same size (probe CI entirely below each control's); 'no
    evidence' otherwise; 'untested' without probe units."""
    probe, controls = _probe_and_controls(results)
    if probe is None:
        return "untested"
    change = probe.change
    if change.ci[1] < 0 and all(change.ci[1] < c.change.ci[0] for c in controls):
        return "concentrated"
    return "no evidence"


def masking(results: StudyResults) -> Finding:
    """Read from the paired difference (top minus random, on the same questions), never from two marginal CIs."""
    rows = {r.condition: r for r in results.ablations.group("patch masking")}
    parts = []
    for level in ("token", "pixel"):
        top = next((r for c, r in rows.items() if c.startswith("mask top") and c.endswith(f"({level})")), None)
        rand = next((r for c, r in rows.items() if c.startswith("mask random") and c.endswith(f"({level})")), None)
        paired = rows.get(f"top minus random ({level})")
        if top is None or rand is None or paired is None:
            continue
        low, high = paired.change.ci
        if high < 0:
            verdict = "masking the attended patches hurts more (the paired difference's CI lies below 0)."
        elif low > 0:
            verdict = "masking random patches hurts more (the paired difference's CI lies above 0)."
        else:
            verdict = "no clear difference (the paired difference's CI holds 0)."
        parts.append(
            f"At {level} level, masking the most-attended {results.config.mask_fraction:.0%} of patches changes test "
            f"accuracy by {_change(top.change)}, random patches by {_change(rand.change)}; top minus random, "
            f"paired on the same questions, is {_change(paired.change)}: {verdict}"
        )
    return Finding(
        "Does masking the most-attended patches hurt more than masking random ones?",
        " ".join(parts) or "Not measured: no patch-masking condition ran.",
    )


def _change(e: Estimate) -> str:
    return f"{e.value:+.3f} [{e.ci[0]:+.3f}, {e.ci[1]:+.3f}] (n = {e.n})"


def findings(results: StudyResults) -> list[Finding]:
    p, m, a = results.predictors, results.margins, results.ablations
    rpb = results.attention.frame()
    entropy = rpb[rpb.measure == "H_s"].dropna()
    strongest = entropy.loc[entropy.r_pb.abs().idxmax()] if len(entropy) else None
    attention = p["attention_entropy"].estimate
    out = [
        Finding(
            "Does attention sharpness predict correctness?",
            f"Attention sharpness {strength(attention).replace(', inversely,', '')} correctness here"
            + (
                " (inversely: sharper attention goes with wrong answers)"
                if strength(attention).endswith("inversely,")
                else ""
            )
            + f": the attention-entropy predictor's test AUROC (sharper attention scoring higher) is {_ci(attention)}"
            + (
                f"; the point-biserial R between H_s and correctness is largest in magnitude at layer {int(strongest.layer)}, "
                f"R = {strongest.r_pb:.3f} [{strongest.ci_low:.3f}, {strongest.ci_high:.3f}] (n = {results.accounting.extracted})."
                if strongest is not None
                else "."
            ),
        )
    ]
    ranked = sorted((r for r in p.rows if r.key not in ("truth_margin", "random")), key=lambda r: -r.estimate.value)
    best = [r for r in ranked if r.estimate.ci[0] > 0.5 and r.estimate.ci[1] - r.estimate.ci[0] <= WIDE_CI][:3]
    out.append(
        Finding(
            "Which signals predict correctness?",
            (
                "The strongest monitors are " + "; ".join(f"{r.method}, AUROC {_ci(r.estimate)}" for r in best) + ". "
                if best
                else f"No predictor's test AUROC CI lies above chance and is narrower than {WIDE_CI}. "
            )
            + f"The truth margin at layer {p.margin_layer} reaches {_ci(p['truth_margin'].estimate)}, but it needs the gold "
            "answer: a diagnostic, not a monitor.",
        )
    )
    separation = "never" if m.separation_layer is None else f"from layer {m.separation_layer}"
    out.append(
        Finding(
            "Where does the margin form, and who builds it?",
            f"Right and wrong answers' truth margins separate most at layer l* = {m.peak_layer} (mean gap "
            f"{m.gap_at_peak:.2f} logits; their CIs stop overlapping {separation}); at l* the MLP writes "
            f"{m.mlp_update_share_at_peak:.0%} of the residual update's magnitude at the answer position "
            f"(n = {m.n_items} questions decomposed).",
        )
    )
    verdict = concentration(results)
    if verdict == "untested":
        text = "Untested: the sparse probe kept no units to ablate."
    else:
        probe, controls = _probe_and_controls(results)
        text = (
            f"Zeroing the sparse probe's {probe.k} strongest residual units at layer {a.layer} changes test accuracy by "
            f"{_change(probe.change)}; {len(controls)} random sets of the same size change it by "
            + ", ".join(f"{c.change.value:+.3f}" for c in controls)
            + ". "
            + (
                "Reliability looks concentrated in those units."
                if verdict == "concentrated"
                else "No sign that reliability is concentrated in a few units: it looks distributed."
            )
        )
    out.append(Finding("Is reliability concentrated or distributed?", text))
    out.append(masking(results))
    return out


def warnings(results: StudyResults) -> list[str]:
    cfg, n_test = results.config, results.accounting.test
    out = [f"{r.condition}: {r.note}." for r in results.ablations.rows if r.note]
    if n_test < MIN_TEST:
        smallest = smallest_n(cfg.test_fraction)
        out.append(
            f"The test split has only {n_test} questions: every AUROC's CI is wide. n = {smallest} gives a test "
            f"split of at least {MIN_TEST} (test fraction {cfg.test_fraction})."
        )
    wide = [r.method for r in results.predictors.rows if r.estimate.ci[1] - r.estimate.ci[0] > WIDE_CI]
    if wide:
        out.append(f"CIs wider than {WIDE_CI} (they decide nothing): " + ", ".join(wide) + ".")
    perfect = [r.method for r in results.predictors.rows if r.estimate.value in (0.0, 1.0)]
    if perfect and n_test < MIN_TEST:
        out.append("AUROC of exactly 0 or 1 on so small a test split (" + ", ".join(perfect) + ") says little.")
    return out
