"""Evaluate edited requests in one batched scoring pass: ROME-style probability scores + EasyEdit token accuracies."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.metrics.editing import EditEfficacy, EditGeneralization, EditLocality, EditNeighborhood, EditTokenAccuracy
from prune_lit.metrics.scoring import score_targets

CaseId = int | str


@dataclass
class EditScores:
    """Editing scores over ``n`` requests, each in [0, 1] (NaN when nothing was measurable).

    Probabilities are compared as ROME's/PRUNE's CounterFact code does, by the mean per-token NLL of each
    target (``reduction`` of `evaluate_edits`):
    efficacy / generalization: share of edit / rephrase prompts with P(target_new) > P(ground_truth);
    neighborhood: share of neighborhood (locality) prompts with P(their true answer) > P(target_new), the
    papers' specificity / "locality" score;
    locality_top1: share of neighborhood prompts whose top-1 answer-token predictions are all as before editing;
    rewrite_acc / rephrase_acc / locality_acc: EasyEdit's teacher-forced top-1 token accuracies (locality_acc
    against the unedited model's predictions).
    """

    efficacy: float
    generalization: float
    neighborhood: float
    locality_top1: float
    rewrite_acc: float
    rephrase_acc: float
    locality_acc: float
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{prefix + name: value}`` for loggers (``n`` included as a float)."""
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class LocalityReference:
    """The unedited model's teacher-forced top-1 predictions over each locality answer.

    ``predictions[case_id][j]`` is ``[t]`` token ids for the j-th locality prompt of that request.
    """

    predictions: dict[CaseId, tuple[Tensor, ...]] = field(default_factory=dict)

    def for_request(self, req: EditRequest) -> tuple[Tensor, ...]:
        if req.case_id not in self.predictions:
            raise KeyError(f"no locality reference for case {req.case_id!r}: record it before editing, for every request evaluated")
        preds = self.predictions[req.case_id]
        if len(preds) != len(req.locality_prompts):
            raise ValueError(f"case {req.case_id!r}: reference has {len(preds)} locality predictions, request has {len(req.locality_prompts)} prompts")
        return preds


def record_locality_reference(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: Sequence[EditRequest], batch_size: int = 16, progress: bool = False
) -> LocalityReference:
    """Call on the unedited model: its top-1 predictions along every locality answer, for `evaluate_edits`."""
    prompts = [p for r in requests for p in r.locality_prompts]
    answers = [a for r in requests for a in r.locality_answers]
    scores = score_targets(model, tokenizer, prompts, answers, batch_size, progress)
    out: dict[CaseId, tuple[Tensor, ...]] = {}
    k = 0
    for r in requests:
        out[r.case_id] = tuple(scores.predictions[k : k + len(r.locality_prompts)])
        k += len(r.locality_prompts)
    return LocalityReference(out)


class _Pairs:
    """Deduplicated (prompt, target) pairs, so one scoring pass serves every metric."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}

    def add(self, prompt: str, target: str) -> int:
        return self.index.setdefault((prompt, target), len(self.index))

    def lists(self) -> tuple[list[str], list[str]]:
        return [p for p, _ in self.index], [t for _, t in self.index]


def evaluate_edits(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    locality_reference: LocalityReference | None,
    batch_size: int = 16,
    reduction: Literal["sum", "mean"] = "mean",
    progress: bool = False,
) -> EditScores:
    """Score the current model on ``requests`` (all edited so far, typically).

    ``reduction`` picks how target log-probs are compared: ``"mean"`` per token (the default: what
    kmeng01/rome's and PRUNE's CounterFact code compare, ``test_batch_prediction``) or ``"sum"`` (the
    full-sequence probability). Requests without a ground truth skip efficacy and generalization; without
    ``locality_reference`` locality_top1 and locality_acc are NaN.
    """
    pairs = _Pairs()
    edit_pairs: list[tuple[int, int]] = []  # (new, true) on edit prompts
    reph_pairs: list[tuple[int, int]] = []
    edit_new: list[int] = []
    reph_new: list[int] = []
    loc_pairs: list[tuple[int, int]] = []  # (answer, new) on locality prompts
    loc_refs: list[Tensor] = []
    for r in requests:
        edit_new.append(pairs.add(r.prompt, r.target_new))
        if r.ground_truth:
            edit_pairs.append((edit_new[-1], pairs.add(r.prompt, r.ground_truth)))
        for p in r.rephrase_prompts:
            reph_new.append(pairs.add(p, r.target_new))
            if r.ground_truth:
                reph_pairs.append((reph_new[-1], pairs.add(p, r.ground_truth)))
        for p, a in zip(r.locality_prompts, r.locality_answers):
            loc_pairs.append((pairs.add(p, a), pairs.add(p, r.target_new)))
        if locality_reference is not None:
            loc_refs.extend(locality_reference.for_request(r))

    prompts, targets = pairs.lists()
    s = score_targets(model, tokenizer, prompts, targets, batch_size, progress)
    lp = s.logprob(reduction)

    def prob_metric(metric: EditEfficacy | EditNeighborhood, idx: list[tuple[int, int]]) -> float:
        if idx:
            metric.update(lp[[a for a, _ in idx]], lp[[b for _, b in idx]])
        return _value(metric)

    def acc_metric(idx: list[int], refs: Sequence[Tensor] | None = None) -> float:
        m = EditTokenAccuracy()
        m.update([s.predictions[i] for i in idx], list(refs) if refs is not None else [s.target_ids[i] for i in idx])
        return _value(m)

    loc_ans = [a for a, _ in loc_pairs]
    locality_top1 = locality_acc = math.nan
    if locality_reference is not None:
        m_loc = EditLocality()
        m_loc.update([s.predictions[i] for i in loc_ans], loc_refs)
        locality_top1 = _value(m_loc)
        locality_acc = acc_metric(loc_ans, loc_refs)
    return EditScores(
        efficacy=prob_metric(EditEfficacy(), edit_pairs),
        generalization=prob_metric(EditGeneralization(), reph_pairs),
        neighborhood=prob_metric(EditNeighborhood(), loc_pairs),
        locality_top1=locality_top1,
        rewrite_acc=acc_metric(edit_new),
        rephrase_acc=acc_metric(reph_new),
        locality_acc=locality_acc,
        n=len(requests),
    )


def _value(metric: EditEfficacy | EditNeighborhood | EditLocality | EditTokenAccuracy) -> float:
    # Under a process group every rank must reach compute() (it sums the states across ranks), even one whose
    # share of the cases had nothing to update.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "compute called before update" on an empty share
            return float(metric.compute())
    return float(metric.compute()) if metric.update_count else math.nan
