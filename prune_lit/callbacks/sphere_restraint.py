"""SPHERE as an update-time restraint: each step's update is projected before it is applied.

The math is `prune_lit.restraint.sphere`; this is the glue. At every step, for every matrix the editor changes,
the principal directions of the weight's neurons (W before this step, as the reference; or W₀ once, an option)
give the soft projector I − α U Uᵀ, and the step's ΔW is multiplied by it on one side. Works with every editor
(ROME, MEMIT, AlphaEdit, MEND) through `prune_lit.contracts.Restraint.restrain_update`.

Difference from the reference loops (PlusLabNLP/SPHERE ``memit_main`` / ``AlphaEdit_main``): there, MEMIT and
AlphaEdit project layer l's update and write it before computing layer l+1's keys and residual; here the editor
computes every layer's update first (later layers see the unprojected earlier ones) and the projections follow.
ROME edits one matrix, where the two are the same.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from prune_lit.contracts import EditState, MatrixContext, Restraint
from prune_lit.models.arch import arch_spec
from prune_lit.reporting import log_scalars
from prune_lit.restraint.sphere import SIDES, Side, SphereProjector, check_sphere_args, reference_side

log = logging.getLogger(__name__)

SideOption = Literal["reference", "input", "output"]
DIRECTIONS = ("current", "original")


def _short(name: str) -> str:
    name = name.removesuffix(".weight")
    for prefix in ("model.", "transformer."):
        name = name.removeprefix(prefix)
    return name


class SphereRestraint(Restraint):
    """SPHERE (Liu et al., ICLR 2026): project each step's update away from the principal directions of W's neurons.

    Args:
        beta_hse: cumulative energy ratio: the top principal directions holding this share of the neurons' energy
            are suppressed (reference README example: 0.5).
        alpha: suppression strength of the soft projector I − α U Uᵀ (README example: 0.5; it advises 0.8 on MEMIT).
        side: ``"reference"`` (default: the stored tensor's second axis, as the reference: the input side of
            ``nn.Linear``, the output side of GPT-2's ``Conv1D``), or ``"input"`` / ``"output"`` explicitly.
        directions: ``"current"`` (default, the reference: from W before each step, so one eigendecomposition per
            matrix and step) or ``"original"`` (from W₀ once per matrix: a step is then only the projection).
        enabled: False turns the restraint into a no-op.

    Attributes:
        total_seconds: wall time spent projecting; history: per step, the number of suppressed directions per matrix.
    """

    def __init__(self, beta_hse: float = 0.5, alpha: float = 0.5, side: SideOption = "reference", directions: str = "current",
                 enabled: bool = True) -> None:
        super().__init__()
        if side not in ("reference", *SIDES):
            raise ValueError(f"side must be 'reference', 'input' or 'output', got {side!r}")
        if directions not in DIRECTIONS:
            raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")
        check_sphere_args(beta_hse, alpha)
        self.beta_hse, self.alpha, self.side, self.directions = float(beta_hse), float(alpha), side, directions
        self.enabled = bool(enabled)
        self.history: list[dict[str, Any]] = []
        self._transposed: bool | None = None
        self._fixed: dict[str, SphereProjector] = {}
        self._unlogged = False  # a projection since the last on_edit_step (its scalars are logged there)

    def bind(self, model: nn.Module) -> None:
        """Learn how ``model`` stores its weights (needed for ``side="reference"``); the loop does this at test start."""
        self._transposed = arch_spec(model).transposed

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model  # the edited model, loaded by SequentialEditingModule.setup
        if isinstance(model, nn.Module):
            self.bind(model)

    def resolved_side(self) -> Side:
        if self.side != "reference":
            return self.side  # type: ignore[return-value]
        if self._transposed is None:
            raise RuntimeError("SphereRestraint(side='reference') does not know the weight layout: call bind(model) first")
        return reference_side(self._transposed)

    def projector(self, name: str, context: MatrixContext) -> SphereProjector:
        """The projector for matrix ``name`` at this step (W₀'s is cached with ``directions="original"``)."""
        if self.directions == "original":
            if name not in self._fixed:
                self._fixed[name] = SphereProjector.from_weight(context.original.float(), self.beta_hse, self.alpha, self.resolved_side())
            return self._fixed[name]
        return SphereProjector.from_weight(context.weight.float(), self.beta_hse, self.alpha, self.resolved_side())

    @torch.no_grad()
    def restrain_update(self, deltas: dict[str, torch.Tensor], context: dict[str, MatrixContext]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return deltas
        start = time.perf_counter()
        out: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}
        for name, delta in deltas.items():
            try:
                proj = self.projector(name, context[name])
            except ValueError as err:
                raise ValueError(f"SPHERE on {name}: {err}") from err
            out[name] = proj(delta.float().to(proj.directions.device)).to(delta.device, delta.dtype)
            ranks[name] = proj.rank
        seconds = time.perf_counter() - start
        self.total_seconds += seconds
        self.history.append({"step": len(self.history) + 1, "seconds": seconds, "directions": ranks})
        self._unlogged = True
        return out

    def on_edit_step(self, trainer: L.Trainer, state: EditState) -> None:
        if self._unlogged:
            self._unlogged = False
            last = self.history[-1]
            metrics = {f"restraint/{_short(k)}/sphere_directions": float(v) for k, v in last["directions"].items()}
            metrics["restraint/seconds"] = float(last["seconds"])
            log_scalars(trainer, metrics, step=state.requests_seen)

    def fingerprint(self) -> dict[str, Any]:
        return {"method": "sphere", "beta_hse": self.beta_hse, "alpha": self.alpha, "side": self.side, "directions": self.directions,
                "enabled": self.enabled}

    def state_dict(self) -> dict[str, Any]:
        return {"total_seconds": self.total_seconds, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_seconds = float(state_dict.get("total_seconds", 0.0))
        self.history = list(state_dict.get("history", []))
