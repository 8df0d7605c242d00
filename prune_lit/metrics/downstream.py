"""Scores for the four downstream tasks, one torchmetrics class per metric (states are sums, so they
sync across processes by addition).

Every metric also gives its per-example scores: ``per_example(preds, target)`` computes them, and ``update``
keeps those of its batch in ``last_scores`` before adding them up, so that intervals and paired tests can be
computed from a run's results without scoring twice.

The answer extraction is written as small pure functions so they can be tested on their own.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ANSWER_MARKERS = ("####", "the answer is")


# ---------------------------------------------------------------- GSM8K


def extract_number(text: str) -> str | None:
    """The number a GSM8K generation answers with, or None.

    After the last ``####`` or "The answer is" (when a number follows it) the first number there; otherwise
    the last number in the text. Commas and ``$`` are stripped: ``"$1,000.50"`` -> ``"1000.50"``.
    """
    clean = text.replace(",", "").replace("$", "")
    lowered = clean.lower()
    for marker in _ANSWER_MARKERS:
        pos = lowered.rfind(marker)
        if pos >= 0:
            found = _NUMBER.search(clean[pos + len(marker) :])
            if found:
                return found.group()
    found_all = _NUMBER.findall(clean)
    return found_all[-1] if found_all else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


class _CountAccuracy(Metric):
    """Share of correct items: states ``correct`` and ``total`` summed over updates (and processes)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def add_scores(self, scores: Sequence[float]) -> None:
        """Accumulate per-example 0/1 scores (from ``per_example``)."""
        self.correct += float(sum(scores))
        self.total += len(scores)

    def compute(self) -> Tensor:
        return self.correct / self.total if self.total > 0 else torch.tensor(0.0)


class GSM8KExactMatch(_CountAccuracy):
    """Fraction of generations whose extracted number equals the reference number (numeric compare)."""

    def per_example(self, preds: Sequence[str], target: Sequence[str]) -> list[float]:
        """``preds``: generated texts; ``target``: reference numbers as strings (e.g. ``"1000"``); 1.0 = match."""
        _check_lengths(preds, target)
        return [float(numbers_equal(extract_number(p), extract_number(t))) for p, t in zip(preds, target)]

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        self.last_scores = self.per_example(preds, target)
        self.add_scores(self.last_scores)


# ---------------------------------------------------------------- SAMSum


class SummarizationRouge(Metric):
    """Mean per-example ROUGE-1/2/L F1 (``rouge-score`` package, Porter stemming) over generated summaries.

    ``compute`` returns ``{"rouge1", "rouge2", "rougeL"}``.
    """

    higher_is_better = True
    full_state_update = False
    KEYS = ("rouge1", "rouge2", "rougeL")

    def __init__(self, use_stemmer: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(list(self.KEYS), use_stemmer=use_stemmer)
        for k in self.KEYS:
            self.add_state(k, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def per_example(self, preds: Sequence[str], target: Sequence[str]) -> dict[str, list[float]]:
        """``{"rouge1" | "rouge2" | "rougeL": [F1 per example]}``."""
        _check_lengths(preds, target)
        scores = [self._scorer.score(t, p) for p, t in zip(preds, target)]  # (target, prediction) order
        return {k: [s[k].fmeasure for s in scores] for k in self.KEYS}

    def add_scores(self, scores: dict[str, Sequence[float]]) -> None:
        for k in self.KEYS:
            for v in scores[k]:  # one addition per example, in order: the same sums as before per_example existed
                setattr(self, k, getattr(self, k) + v)
        self.total += len(scores[self.KEYS[0]])

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        self.last_scores = self.per_example(preds, target)
        self.add_scores(self.last_scores)

    def compute(self) -> dict[str, Tensor]:
        n = self.total if self.total > 0 else torch.tensor(1.0)
        return {k: (getattr(self, k) / n).float() for k in self.KEYS}


# ---------------------------------------------------------------- Natural Questions


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def qa_prediction(generated: str) -> str:
    """The answer part of a QA generation: up to the first line break (the model often rambles on)."""
    return generated.strip().split("\n", 1)[0].strip()


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r:
        return float(p == r)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def contains_answer(pred: str, ref: str) -> bool:
    """PRUNE's lenient criterion: the normalised reference is a contiguous word span of the normalised prediction."""
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not r:
        return False
    return any(p[i : i + len(r)] == r for i in range(len(p) - len(r) + 1))


class _QAMetric(Metric):
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def _one(self, pred: str, ref: str) -> float:
        raise NotImplementedError

    def per_example(self, preds: Sequence[str], target: Sequence[Sequence[str]]) -> list[float]:
        """``preds``: generated texts (cut at the first line break); ``target``: accepted answers per example;
        the best score over each example's answers."""
        _check_lengths(preds, target)
        out = []
        for p, refs in zip(preds, target):
            if isinstance(refs, str):
                refs = (refs,)
            p = qa_prediction(p)
            out.append(max((self._one(p, r) for r in refs), default=0.0))
        return out

    def add_scores(self, scores: Sequence[float]) -> None:
        for v in scores:
            self.score += v
        self.total += len(scores)

    def update(self, preds: Sequence[str], target: Sequence[Sequence[str]]) -> None:
        self.last_scores = self.per_example(preds, target)
        self.add_scores(self.last_scores)

    def compute(self) -> Tensor:
        return (self.score / self.total).float() if self.total > 0 else torch.tensor(0.0)


class QAExactMatch(_QAMetric):
    """SQuAD-style exact match: normalised prediction equals any normalised reference."""

    def _one(self, pred: str, ref: str) -> float:
        return float(normalize_answer(pred) == normalize_answer(ref))


class QATokenF1(_QAMetric):
    """SQuAD-style token F1, best over the references."""

    def _one(self, pred: str, ref: str) -> float:
        return token_f1(pred, ref)


class QAContainsMatch(_QAMetric):
    """PRUNE's QA score: a reference appears as a word span of the prediction."""

    def _one(self, pred: str, ref: str) -> float:
        return float(contains_answer(pred, ref))


# ---------------------------------------------------------------- RTE


class NLIAccuracy(_CountAccuracy):
    """Accuracy of boolean entailment predictions (True = entailment)."""

    def per_example(self, preds: Tensor | Sequence[bool], target: Tensor | Sequence[bool]) -> list[float]:
        """``preds``, ``target``: bool [n]; 1.0 where they agree."""
        preds = torch.as_tensor(preds, dtype=torch.bool).reshape(-1).cpu()
        target = torch.as_tensor(target, dtype=torch.bool).reshape(-1).cpu()
        _check_lengths(preds, target)
        return (preds == target).float().tolist()

    def update(self, preds: Tensor | Sequence[bool], target: Tensor | Sequence[bool]) -> None:
        self.last_scores = self.per_example(preds, target)
        self.add_scores(self.last_scores)


def _check_lengths(preds: Sequence | Tensor, target: Sequence | Tensor) -> None:
    if len(preds) != len(target):
        raise ValueError(f"{len(preds)} predictions but {len(target)} targets")
