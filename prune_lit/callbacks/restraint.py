"""PRUNE as a Lightning callback: after edit steps, restrain every edited matrix's accumulated ΔW.

Place it *before* `SpectralDiagnostics` (and any evaluation callback) in ``trainer.callbacks``: callbacks'
``on_test_batch_end`` run in list order and before the module's own, so everything after it sees the
restrained weights.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch

from prune_lit.reporting import log_scalars
from prune_lit.models.arch import get_weight, set_weight
from prune_lit.restraint import WarmStarts, is_contraction, restrain_delta_with_stats, spectral_norm
from prune_lit.restraint.spectrum import check_restraint_args

log = logging.getLogger(__name__)


def short_name(param_name: str) -> str:
    """``model.layers.5.mlp.down_proj.weight`` -> ``layers.5.mlp.down_proj`` (for log tags)."""
    name = param_name.removesuffix(".weight")
    for prefix in ("model.", "transformer."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def original_weights_of(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The W_0 snapshot the module took before the first edit (``{param_name: [out, in] float32}``)."""
    weights = getattr(pl_module, "original_weights", None)
    if not isinstance(weights, dict) or not weights:
        raise RuntimeError(
            f"{type(pl_module).__name__} has no `original_weights` snapshot; the spectral callbacks need the "
            "module to store W_0 (dict param_name -> tensor) in setup, before the first edit"
        )
    return weights


def edits_so_far(pl_module: L.LightningModule, steps_seen: int) -> int:
    """Cumulative edits applied (``pl_module.num_edits``), or the number of edit steps when the module lacks it."""
    return int(getattr(pl_module, "num_edits", steps_seen))


class SpectralRestraint(L.Callback):
    """Replace each edited W by W_0 + restrain(W − W_0) (PRUNE).

    Args:
        alpha: log base α: e (default), 1.2, 1.5 or 2 in the paper; ignored in linear mode.
        mode: ``"log"`` (PRUNE) or ``"linear"`` (the paper's ablation, σ/2 + σ_max/2).
        every_n_edits: restrain whenever the cumulative edit count crosses a multiple of this.
        at_end_only: restrain once, at the end of the test epoch, instead of during editing. This is what the
            reference code does (it restrains the saved weights after all N edits, then evaluates).
        enabled: False turns the callback into a no-op (for configs that toggle PRUNE).

    Attributes:
        total_seconds: wall time spent in restraint so far (so a run can report its share of each step).
        history: one dict per restraint pass: ``num_edits``, ``seconds``, ``n_restrained`` per matrix.
    """

    def __init__(
        self,
        alpha: float = math.e,
        mode: str = "log",
        every_n_edits: int = 1,
        at_end_only: bool = False,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        check_restraint_args(1.0, alpha, mode)  # validates alpha and mode (σ_max is per matrix)
        if every_n_edits < 1:
            raise ValueError(f"every_n_edits must be >= 1, got {every_n_edits}")
        self.alpha = float(alpha)
        self.mode = mode
        self.every_n_edits = int(every_n_edits)
        self.at_end_only = bool(at_end_only)
        self.enabled = bool(enabled)
        self.total_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self._sigma_max: dict[str, float] = {}
        self.warm = WarmStarts()  # what each matrix's last SVD tells the next one
        self._steps_seen = 0
        self._last_edits = 0
        self._pending = False  # an applied edit has not been restrained yet

    def sigma_max_w0(self, name: str, w0: torch.Tensor) -> float:
        """σ_max(W_0) of ``name``, computed once (exact, via svdvals) and cached."""
        if name not in self._sigma_max:
            s = spectral_norm(w0)
            self._sigma_max[name] = s
            if not is_contraction(s, self.alpha, self.mode):
                log.warning(
                    "%s: σ_max(W_0) = %.3g < 1/ln(α) = %.3g, so the log map enlarges singular values just above σ_max "
                    "(the reference code behaves the same)",
                    name,
                    s,
                    1 / math.log(self.alpha),
                )
        return self._sigma_max[name]

    @torch.no_grad()
    def restrain(self, pl_module: L.LightningModule, trainer: L.Trainer | None = None) -> dict[str, int]:
        """One restraint pass over every matrix in ``pl_module.original_weights``; returns n_restrained per matrix."""
        start = time.perf_counter()
        model = pl_module.model
        counts: dict[str, int] = {}
        for name, w0 in original_weights_of(pl_module).items():
            w = get_weight(model, name)
            w0 = w0.to(w.device, torch.float32)
            delta = w.float() - w0
            warm = self.warm.kwargs(name)
            try:
                res = restrain_delta_with_stats(
                    delta, self.sigma_max_w0(name, w0), self.alpha, self.mode, init_basis=warm["init"], max_rank=warm["max_rank"]
                )
            except ValueError as err:
                raise ValueError(f"restraint of {name}: {err}") from err
            counts[name] = res.n_restrained
            # ΔW only grows by the next edit's few directions: start the next SVD from this one's basis.
            self.warm.update(name, res.method, res.basis)
            if res.n_restrained:
                # W + U_r (s' − s) V_rᵀ rather than W_0 + ΔW': what is not restrained keeps its exact bits.
                if w.dtype == torch.float32:
                    res.apply_(w)  # `w` is a view of the parameter: no m×n temporary
                else:
                    set_weight(model, name, res.apply_to(w.float()))
        seconds = time.perf_counter() - start
        self.total_seconds += seconds
        num_edits = edits_so_far(pl_module, self._steps_seen)
        self.history.append({"num_edits": num_edits, "seconds": seconds, "n_restrained": counts})
        if trainer is not None:
            metrics = {f"restraint/{short_name(k)}/n_restrained": float(v) for k, v in counts.items()}
            metrics["restraint/seconds"] = seconds
            log_scalars(trainer, metrics, step=num_edits)
        return counts

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._steps_seen += 1
        if not self.enabled or self.at_end_only:
            return
        last_result = getattr(pl_module, "last_result", None)
        if last_result is not None and not getattr(last_result, "applied", True):
            return  # the update was rejected: the weights are as the previous pass left them
        self._pending = True
        num_edits = edits_so_far(pl_module, self._steps_seen)
        due = num_edits // self.every_n_edits > self._last_edits // self.every_n_edits
        if due:
            self._last_edits = num_edits
            self._pending = False
            self.restrain(pl_module, trainer)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        # With every_n_edits > 1 the edits after the last multiple would otherwise reach the final
        # evaluation unrestrained.
        if self.at_end_only or self._pending:
            self._pending = False
            self.restrain(pl_module, trainer)
