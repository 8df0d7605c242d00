"""The base of every editor (ROME, MEMIT, MEND, AlphaEdit), and the one safe way to write its update.

`Editor` implements the loop's `prune_lit.contracts.SequentialEditor`. An editor computes ``{param_name: ΔW}``
for a step's requests on the current weights without changing them (`Editor.compute_deltas`); `Editor.edit`
passes them through the update-time restraints, then applies them all-or-nothing. One rule for a rejected step, in
`apply_deltas`: a ΔW with NaN/Inf (or above ``max_norm_ratio``·‖W‖_F) rejects the whole step, the weights
stay bit-identical, and the result reports ``applied=False``, zero deltas and ``delta_norm = 0``.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.contracts import EditRequest, EditResult, EditStats, ProposedUpdate, UpdateHook
from prune_lit.models.arch import get_weight, set_weight

__all__ = ["Editor", "EditResult", "EditStats", "ProposedUpdate", "apply_deltas", "deltas_norm"]

log = logging.getLogger(__name__)


def deltas_norm(deltas: dict[str, torch.Tensor]) -> float:
    """‖ΔW‖_F over all matrices of a step."""
    return float(sum(float(d.float().norm()) ** 2 for d in deltas.values()) ** 0.5)


class Editor(ABC):
    """Edits a model in place, one step (1 request for ROME, a batch for MEMIT/AlphaEdit/MEND) at a time.

    Subclasses implement `weight_names` and `compute_deltas` (editors with thin factors of ΔW, MEND, override
    `compute_update` to hand them over); `prepare` loads what they need once. State
    that later steps depend on and that is not in the weights (AlphaEdit's K_pK_pᵀ) goes through
    `state_dict` / `load_state_dict`, so a resumed run continues exactly.
    """

    #: with a value, a step whose ‖ΔW‖_F exceeds this multiple of ‖W‖_F is rejected (see `apply_deltas`)
    max_update_norm_ratio: float | None = None

    def prepare(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str, data_dir: str | None) -> None:
        """Once, before the first edit: load hyperparameters for ``model_name``, key statistics, checkpoints."""

    @abstractmethod
    def weight_names(self, model: nn.Module) -> list[str]:
        """Parameter names this editor may change; snapshotted as W_0 before the first edit."""

    @abstractmethod
    def compute_deltas(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> tuple[dict[str, torch.Tensor], EditStats]:
        """``({param_name: ΔW [out, in]}, stats)`` for ``requests`` on the current weights; the model is left as it was."""

    def after_applied(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest], deltas: dict[str, torch.Tensor]) -> None:
        """Hook after a step was applied (e.g. to accumulate the keys of edits made so far). Default: nothing."""

    def compute_update(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> ProposedUpdate:
        """The step's update on the current weights (`compute_deltas`); editors that build ΔW from thin factors
        (MEND) override this to hand them over too."""
        deltas, stats = self.compute_deltas(model, tokenizer, requests)
        return ProposedUpdate(deltas, stats)

    def edit(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest],
             restrain_update: UpdateHook | None = None) -> EditResult:
        """Compute the step's update on the current model, pass it through ``restrain_update`` (update-time
        restraints, `prune_lit.contracts.Restraint.restrain_update`), and apply it, all or nothing."""
        if not requests:
            raise ValueError(f"{type(self).__name__}: an edit step needs at least one request")
        start = time.perf_counter()
        update = self.compute_update(model, tokenizer, requests)
        deltas, stats, factors = update.deltas, update.stats, update.factors
        if restrain_update is not None:
            restrained = restrain_update(deltas)
            if set(restrained) != set(deltas):
                raise ValueError(f"an update-time restraint changed the edited matrices: {sorted(deltas)} -> {sorted(restrained)}")
            # a rewritten ΔW is no longer A Bᵀ: keep the factors only of the matrices left alone
            factors = {n: f for n, f in factors.items() if restrained[n] is deltas[n]}
            deltas = restrained
        applied = apply_deltas(model, deltas, self.max_update_norm_ratio)
        if applied:
            self.after_applied(model, tokenizer, requests, deltas)
            stats.delta_norm = deltas_norm(deltas)
        else:
            deltas = {n: torch.zeros_like(d) for n, d in deltas.items()}
            factors = {n: (a[:, :0], b[:, :0]) for n, (a, b) in factors.items()}
            stats.delta_norm = 0.0
        stats.n_requests = len(requests)
        stats.seconds = time.perf_counter() - start
        return EditResult(deltas=deltas, applied=applied, stats=stats, factors=factors)

    def key_second_moment(self, name: str) -> torch.Tensor | None:
        """C = E[k kᵀ] ``[in, in]`` of the keys entering parameter ``name``, for update-time restraints; None here
        (editors that estimate it, `LocateEditEditor`, return theirs)."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint of this editor's run to be resumed: the class (subclasses add their
        hyperparameters or checkpoint)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}"}

    def state_dict(self) -> dict[str, Any]:
        """Run state that is not in the weights and must survive a resume (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; an editor without state accepts only an empty dict."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no run state, but the checkpoint has {sorted(state)}")


@torch.no_grad()
def apply_deltas(model: nn.Module, deltas: dict[str, torch.Tensor], max_norm_ratio: float | None = None) -> bool:
    """Add every ΔW to its weight, all or nothing.

    The whole update is rejected when any ΔW holds NaN/Inf or, with ``max_norm_ratio``, when any
    ‖ΔW‖_F exceeds ``max_norm_ratio``·‖W‖_F (an exploded but finite update, e.g. from a hypernetwork).
    Returns True when applied. A rejected update is logged and leaves the weights exactly as they were.
    """
    if max_norm_ratio is not None and max_norm_ratio <= 0:
        raise ValueError(f"max_norm_ratio must be positive or None, got {max_norm_ratio}")
    bad = [name for name, d in deltas.items() if not torch.isfinite(d).all()]
    if bad:
        log.warning("rejected an update with NaN/Inf in %s; weights unchanged", ", ".join(bad))
        return False
    if max_norm_ratio is not None:
        ratios = {name: float(d.float().norm() / get_weight(model, name).float().norm().clamp_min(1e-12)) for name, d in deltas.items()}
        big = {name: r for name, r in ratios.items() if r > max_norm_ratio}
        if big:
            shown = ", ".join(f"{name} ({r:.3g}x)" for name, r in big.items())
            log.warning("rejected an update with ||ΔW||_F > %g ||W||_F in %s; weights unchanged", max_norm_ratio, shown)
            return False
    for name, d in deltas.items():
        w = get_weight(model, name)
        set_weight(model, name, w.float() + d.to(w.device, torch.float32))
    return True
