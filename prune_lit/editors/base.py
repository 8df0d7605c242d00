"""The contract every editor (ROME, MEMIT, MEND) fulfils, and the one safe way to write its update."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.models.arch import get_weight, set_weight

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    """What one edit step did. ``deltas`` maps parameter name -> the ΔW added (``[out, in]``)."""

    deltas: dict[str, torch.Tensor]
    applied: bool = True  # False when the update was rejected (non-finite) and the weights are untouched
    stats: dict[str, float] = field(default_factory=dict)  # e.g. final loss, seconds


class Editor(ABC):
    """Edits a model in place. ``edit`` is called once per edit step with 1 (ROME) or more requests."""

    def prepare(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str, data_dir: str | None) -> None:
        """Once, before the first edit: load hyperparameters for ``model_name``, key statistics, checkpoints."""

    @abstractmethod
    def weight_names(self, model: nn.Module) -> list[str]:
        """Parameter names this editor may change; snapshotted as W_0 before the first edit."""

    @abstractmethod
    def edit(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> EditResult:
        """Compute the update for ``requests`` on the current model and apply it (via `apply_deltas`)."""


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
