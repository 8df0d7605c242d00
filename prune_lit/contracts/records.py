"""The typed records of one edit step: the request that goes in, the update an editor proposes, what the step did."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt`` (which contains ``subject``) should continue with ``target_new``.

    ``target_new`` / ``ground_truth`` are stored without a leading space; tokenization adds it.
    """

    case_id: int | str
    prompt: str
    subject: str
    target_new: str
    ground_truth: str = ""
    rephrase_prompts: tuple[str, ...] = ()
    locality_prompts: tuple[str, ...] = ()
    locality_answers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.subject or self.subject not in self.prompt:
            raise ValueError(f"case {self.case_id}: subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        if not self.target_new.strip():
            raise ValueError(f"case {self.case_id}: empty target_new")
        if len(self.locality_prompts) != len(self.locality_answers):
            raise ValueError(f"case {self.case_id}: {len(self.locality_prompts)} locality prompts but {len(self.locality_answers)} answers")


@dataclass
class EditStats:
    """What every editor reports about one step (NaN where a field does not apply to the method).

    ``loss``/``nll``: the editor's own objective and the target NLL at the end of its search (mean over
    requests); ``steps``: inner optimisation steps (mean over requests); ``delta_norm``: ‖ΔW‖_F over all
    matrices (0 for a rejected step); ``extras``: method-specific scalars (e.g. MEND's pre-edit loss).
    """

    loss: float = math.nan
    nll: float = math.nan
    delta_norm: float = 0.0
    n_requests: int = 0
    steps: float = math.nan
    seconds: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """The finite values as a flat ``{name: float}`` (extras under their own names), for loggers."""
        out = {k: float(getattr(self, k)) for k in ("loss", "nll", "delta_norm", "n_requests", "steps", "seconds")}
        out.update({k: float(v) for k, v in self.extras.items()})
        return {k: v for k, v in out.items() if math.isfinite(v)}


#: ``{param_name: (A [out, k], B [in, k])}`` with ΔW = A Bᵀ
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class ProposedUpdate:
    """An editor's update for one step, not yet applied: ``deltas`` ``{param_name: ΔW [out, in]}``, its stats, and
    (editors that build ΔW from thin factors, MEND) ``factors`` with ΔW = A Bᵀ per matrix."""

    deltas: dict[str, torch.Tensor]
    stats: EditStats
    factors: Factors = field(default_factory=dict)


@dataclass
class EditResult:
    """What one edit step did. ``deltas`` maps parameter name -> the ΔW added (``[out, in]``; zeros if rejected).

    ``factors``: editors that build ΔW from thin factors (MEND) also give ``{name: (A [out, k], B [in, k])}``
    with ΔW = A Bᵀ, so restraint can work from them (`prune_lit.callbacks.FactoredSpectralRestraint`); a matrix
    whose update an update-time restraint rewrote has no factors (its ΔW is no longer A Bᵀ).
    """

    deltas: dict[str, torch.Tensor]
    applied: bool = True
    stats: EditStats = field(default_factory=EditStats)
    factors: Factors = field(default_factory=dict)
