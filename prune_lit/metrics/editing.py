"""Editing metrics as torchmetrics classes; each ``update`` takes scores the caller computed
(see `prune_lit.metrics.scoring` and `prune_lit.metrics.editing_eval.evaluate_edits`).

Probability metrics follow ROME's CounterFact evaluation (efficacy, paraphrase and neighborhood scores; the
caller picks the comparison, by default the mean per-token NLL as ROME's code); token metrics follow EasyEdit
(rewrite/rephrase acc: top-1 agreement with the target under teacher forcing; locality acc: top-1 agreement
with the unedited model's predictions). `EditLocality` is reported as ``locality_top1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _rate(hits: Tensor, total: Tensor) -> Tensor:
    return hits / total if total > 0 else torch.tensor(float("nan"))


class _RateMetric(Metric):
    """``hits / total`` over every update; NaN before any update."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, hits: Tensor) -> None:
        self.hits += hits.sum().to(self.hits)
        self.total += hits.numel()

    def compute(self) -> Tensor:
        return _rate(self.hits, self.total)


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"{names} must be 1-D tensors of the same length, got {tuple(a.shape)} and {tuple(b.shape)}")


class EditEfficacy(_RateMetric):
    """Share of edit prompts where P(target_new) > P(ground_truth) (CounterFact efficacy score).

    ``update(logp_new [n], logp_true [n])``: log-probs of the two targets after each edit prompt (per-token
    means as ROME's code, or sums: the caller's choice).
    """

    def update(self, logp_new: Tensor, logp_true: Tensor) -> None:
        _check_pair(logp_new, logp_true, "logp_new and logp_true")
        self._add(logp_new > logp_true)


class EditGeneralization(EditEfficacy):
    """`EditEfficacy` on rephrased prompts (CounterFact paraphrase score); same ``update`` signature."""


class EditNeighborhood(_RateMetric):
    """Share of locality prompts where P(true answer) > P(target_new) (CounterFact neighborhood score).

    ``update(logp_true [n], logp_new [n])``: log-probs after each locality prompt of its answer and of the
    edit's new target.
    """

    def update(self, logp_true: Tensor, logp_new: Tensor) -> None:
        _check_pair(logp_true, logp_new, "logp_true and logp_new")
        self._add(logp_true > logp_new)


def _check_lists(a: Sequence[Tensor], b: Sequence[Tensor], names: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{names}: {len(a)} vs {len(b)} examples")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(f"{names}: example {i} has shapes {tuple(x.shape)} and {tuple(y.shape)}")


class EditLocality(_RateMetric):
    """Share of locality prompts whose top-1 predictions over the answer tokens are all unchanged (``locality_top1``).

    ``update(predictions, reference)``: per prompt, ``[t]`` top-1 token ids under teacher forcing of the
    locality answer, after the edits and before them (`record_locality_reference`).
    """

    def update(self, predictions: Sequence[Tensor], reference: Sequence[Tensor]) -> None:
        _check_lists(predictions, reference, "predictions and reference")
        if predictions:
            self._add(torch.tensor([torch.equal(p.cpu(), r.cpu()) for p, r in zip(predictions, reference)]))


class EditTokenAccuracy(Metric):
    """Mean over examples of the share of positions where ``predictions`` equal ``targets`` (EasyEdit's acc).

    ``update(predictions, targets)``: per example ``[t]`` token ids. With targets = the target tokens this is
    rewrite_acc / rephrase_acc; with targets = the unedited model's predictions it is locality_acc.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("acc_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[Tensor], targets: Sequence[Tensor]) -> None:
        _check_lists(predictions, targets, "predictions and targets")
        for p, t in zip(predictions, targets):
            if t.numel() == 0:
                raise ValueError("an example has no target tokens")
            self.acc_sum += (p.cpu() == t.cpu()).double().mean()
            self.count += 1

    def compute(self) -> Tensor:
        return _rate(self.acc_sum, self.count)
