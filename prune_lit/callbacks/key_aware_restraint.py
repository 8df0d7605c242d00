"""Key-aware PRUNE as a restraint: PRUNE's map on ΔW C^{1/2}, after each step (or every n, or once at the end).

The math is `prune_lit.restraint.key_aware`; the timing, cadence, at-end mode, restrained copy, warm starts and
checkpoint state are `SpectralRestraint`'s. C is the editor's own key second moment of each matrix: the loop hands
it to every restraint with each step's update (`prune_lit.contracts.MatrixContext.key_second_moment`), and this
restraint keeps it. This project's option, not PRUNE's default (docs/restraints.md derives it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from prune_lit.callbacks.restraint import SpectralRestraint
from prune_lit.contracts import MatrixContext
from prune_lit.restraint import RestraintResult, WarmStarts
from prune_lit.restraint.key_aware import RULES, check_key_aware_args, key_threshold, restrain_delta_key_aware, sqrt_psd
from prune_lit.restraint.spectrum import is_contraction

log = logging.getLogger(__name__)


@dataclass
class KeyMetric:
    """One matrix's C^{1/2} ``[in, in]`` (float32, on the weight's device), ‖C^{1/2}‖₂ and threshold τ."""

    sqrt_c: torch.Tensor
    sqrt_c_norm: float
    threshold: float


class KeyAwareSpectralRestraint(SpectralRestraint):
    """Key-aware PRUNE: bound what keys drawn like ordinary text see of the edit, E‖ΔW k‖² = ‖ΔW C^{1/2}‖²_F.

    Args:
        alpha, mode, every_n_edits, at_end_only, evaluate_at_end_curve, enabled: as `SpectralRestraint`.
        threshold: ``"spectral"`` (default: map each singular value of ΔW C^{1/2} above τ = scale · σ_max(W₀ C^{1/2}),
            PRUNE's rule in key space) or ``"energy"`` (map the total ‖ΔW C^{1/2}‖_F against τ = scale · ‖W₀ C^{1/2}‖_F
            and shrink every direction alike).
        threshold_scale: the factor on τ (1 = the rule as stated; < 1 is tighter).
    """

    def __init__(
        self,
        alpha: float = math.e,
        mode: str = "log",
        threshold: str = "spectral",
        threshold_scale: float = 1.0,
        every_n_edits: int = 1,
        at_end_only: bool = False,
        evaluate_at_end_curve: bool = False,
        enabled: bool = True,
    ) -> None:
        super().__init__(alpha, mode, every_n_edits, at_end_only, evaluate_at_end_curve, enabled)
        check_key_aware_args(threshold, threshold_scale)
        self.threshold, self.threshold_scale = threshold, float(threshold_scale)
        self._moments: dict[str, torch.Tensor] = {}
        self._metrics: dict[str, KeyMetric] = {}

    def restrain_update(self, deltas: dict[str, torch.Tensor], context: dict[str, MatrixContext]) -> dict[str, torch.Tensor]:
        """Leaves the update alone; keeps the editor's C of each matrix for the restraint after the step."""
        for name in deltas:
            c = context[name].key_second_moment
            if c is None:
                raise ValueError(
                    f"key-aware PRUNE on {name}: the editor has no key second moment C for it "
                    "(MEND, or mom2_adjustment: false); use SpectralRestraint instead"
                )
            self._moments.setdefault(name, c)
        return deltas

    def key_metric(self, name: str, w0: torch.Tensor) -> KeyMetric:
        """C^{1/2} and τ of ``name``, computed once (an ``eigh`` of C)."""
        if name not in self._metrics:
            if name not in self._moments:
                raise RuntimeError(f"key-aware PRUNE on {name}: no key second moment seen yet (it arrives with the first edit step)")
            root = sqrt_psd(self._moments[name].to(w0.device))
            tau = key_threshold(w0, root, self.threshold, self.threshold_scale)  # type: ignore[arg-type]
            norm = float(torch.linalg.matrix_norm(root, ord=2))
            self._metrics[name] = KeyMetric(root.float(), norm, tau)
            if self.mode == "log" and not is_contraction(tau, self.alpha, self.mode):
                log.warning("%s: key-space threshold τ = %.3g < 1/ln(α) = %.3g: the log map enlarges values just above τ",
                            name, tau, 1 / math.log(self.alpha))
        return self._metrics[name]

    def _restrain_matrix(self, model: torch.nn.Module, name: str, w: torch.Tensor, w0: torch.Tensor, warm_starts: WarmStarts) -> RestraintResult:
        metric = self.key_metric(name, w0)
        warm_kw = warm_starts.kwargs(name)
        try:
            res = restrain_delta_key_aware(self.deltas.delta(name, w, w0), metric.sqrt_c, metric.threshold, self.alpha, self.mode,  # type: ignore[arg-type]
                                           self.threshold, metric.sqrt_c_norm, init_basis=warm_kw["init"], max_rank=warm_kw["max_rank"])  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(f"key-aware restraint of {name}: {err}") from err
        warm_starts.update(name, res.method, res.basis)
        self._write(model, name, w, res)
        return res

    def thresholds(self) -> dict[str, float]:
        """τ per matrix (those computed so far)."""
        return {name: m.threshold for name, m in self._metrics.items()}

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "method": "key_aware", "threshold": self.threshold, "threshold_scale": self.threshold_scale}


__all__ = ["KeyAwareSpectralRestraint", "KeyMetric", "RULES"]
