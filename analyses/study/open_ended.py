"""Open-ended benchmarks (LLaVA-Bench): answers and the metrics that need no judge model.

LLaVA-Bench scores answers with a judge model (GPT-4 rates each answer against a reference);
vlm-lens runs no judge, so no answer is called right or wrong and no table that needs
correctness (AUROC, R_pb, ablations) is made. What is reported: every answer beside its
reference, and per category the answer length, the output confidence (free form: the geometric
mean of the answer tokens' probabilities up to the first newline), self-consistency over K samples and the token-level F1 overlap
with the reference (lexical, as SQuAD computes it: a judge-free proxy, not the judge's score).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from analyses.data.scoring import vqa_normalise
from analyses.study.extract import Extraction
from analyses.study.results import Setup

NOT_SCORED = (
    "Open-ended answers are not scored: LLaVA-Bench's score comes from a judge model (GPT-4 rating each answer "
    "against the reference), which vlm-lens does not run. Accuracy, AUROC, point-biserial R and the ablations "
    "all need right/wrong labels, so they are not computed for this benchmark."
)


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 between two texts after VQA normalisation (SQuAD's F1)."""
    pred, ref = vqa_normalise(prediction).split(), vqa_normalise(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass
class OpenEndedResults:
    answers: pd.DataFrame  # question, category, answer, reference, answer_tokens, confidence, consistency, token_f1
    summary: pd.DataFrame  # per category and overall: n and the means
    setup: Setup

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "table1_models": self.setup.models(),
            "table7_benchmarks": self.setup.benchmarks(),
            "open_ended_summary": self.summary,
            "open_ended_answers": self.answers,
        }


def open_ended(ex: Extraction, questions: list[str], setup: Setup) -> OpenEndedResults:
    answers = pd.DataFrame(
        [
            {
                "question": q,
                "category": r["type"],
                "answer": r["prediction"],
                "reference": r["label"],
                "answer_tokens": r["answer_tokens"],
                "confidence": r["confidence"],
                "consistency": r["consistency"],
                "token_f1": token_f1(r["prediction"], r["label"]),
            }
            for q, r in zip(questions, ex.rows)
        ]
    )
    numbers = ["answer_tokens", "confidence", "consistency", "token_f1"]
    summary = [{"category": "all", "n": len(answers), **answers[numbers].mean().to_dict()}]
    summary += [{"category": c, "n": len(p), **p[numbers].mean().to_dict()} for c, p in answers.groupby("category")]
    return OpenEndedResults(answers, pd.DataFrame(summary), setup)
