"""PRUNE as a Lightning callback: after edit steps, restrain every edited matrix's accumulated ΔW.

It is a `prune_lit.contracts.Restraint` acting after each step (or every n) or once at the end: the editing loop
runs it right after each edit, before diagnostics and evaluations, wherever it sits in ``trainer.callbacks``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch

from prune_lit.callbacks.delta_buffers import DeltaBuffers
from prune_lit.contracts import EditState, Restraint, crossed
from prune_lit.models.arch import get_weight, set_weight
from prune_lit.reporting import log_scalars
from prune_lit.restraint import RestraintResult, WarmStarts, is_contraction, restrain_delta_with_stats, spectral_norm
from prune_lit.restraint.spectrum import check_restraint_args

log = logging.getLogger(__name__)


def short_name(param_name: str) -> str:
    """``model.layers.5.mlp.down_proj.weight`` -> ``layers.5.mlp.down_proj`` (for log tags)."""
    name = param_name.removesuffix(".weight")
    for prefix in ("model.", "transformer."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


class SpectralRestraint(Restraint):
    """Replace each edited W by W_0 + restrain(W − W_0) (PRUNE).

    Args:
        alpha: log base α: e (default), 1.2, 1.5 or 2 in the paper; ignored in linear mode.
        mode: ``"log"`` (PRUNE) or ``"linear"`` (the paper's ablation, σ/2 + σ_max/2).
        every_n_edits: restrain whenever the stream position (requests seen) crosses a multiple of this.
        at_end_only: restrain once, after the last edit, instead of during editing. This is what the
            reference code does (it restrains the saved weights after all N edits, then evaluates).
        evaluate_at_end_curve: with ``at_end_only``, also evaluate every evaluation point on a restrained copy
            of the edited matrices (the weights are restored bit-exactly afterwards), so one unrestrained run
            yields both the "no restraint" curve and the "restrained once at N" curve for every N.
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
        evaluate_at_end_curve: bool = False,
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
        if evaluate_at_end_curve and not at_end_only:
            raise ValueError("evaluate_at_end_curve needs at_end_only: true (per-edit restraint already evaluates restrained weights)")
        self.evaluate_at_end_curve = bool(evaluate_at_end_curve)
        self.enabled = bool(enabled)
        self.history: list[dict[str, Any]] = []
        self._sigma_max: dict[str, float] = {}
        self.warm = WarmStarts()  # what each matrix's last SVD tells the next one
        self.deltas = DeltaBuffers()  # ΔW of each matrix, formed in place pass after pass
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
    def restrain(self, state: EditState, trainer: L.Trainer | None = None, warm: WarmStarts | None = None, record: bool = True) -> dict[str, int]:
        """One restraint pass over every matrix in ``state.original_weights``; returns n_restrained per matrix.

        ``warm``: the warm-start memory to use (default: this callback's); ``record=False`` leaves the timing,
        history and logs untouched (the restrained-copy evaluations of `restrained_copy`).
        """
        start = time.perf_counter()
        model = state.model
        warm_starts = self.warm if warm is None else warm
        counts: dict[str, int] = {}
        for name, w0 in state.original_weights.items():
            w = get_weight(model, name)
            counts[name] = self._restrain_matrix(model, name, w, w0.to(w.device, torch.float32), warm_starts).n_restrained
        if record:
            self._record(state, trainer, counts, time.perf_counter() - start)
        return counts

    def _restrain_matrix(self, model: torch.nn.Module, name: str, w: torch.Tensor, w0: torch.Tensor, warm_starts: WarmStarts) -> RestraintResult:
        """Restrain one matrix (``w`` now, ``w0`` float32 on its device); subclasses with another map override this."""
        try:
            sigma_max = self.sigma_max_w0(name, w0)
        except ValueError as err:
            raise ValueError(f"restraint of {name}: {err}") from err
        return self._restrain_dense(model, name, w, self.deltas.delta(name, w, w0), sigma_max, warm_starts)

    def _restrain_dense(self, model: torch.nn.Module, name: str, w: torch.Tensor, delta: torch.Tensor, sigma_max: float,
                        warm_starts: WarmStarts) -> RestraintResult:
        """Restrain one matrix from its dense ΔW (warm-started), write the correction into ``w``; the result."""
        warm_kw = warm_starts.kwargs(name)
        try:
            res = restrain_delta_with_stats(delta, sigma_max, self.alpha, self.mode, init_basis=warm_kw["init"], max_rank=warm_kw["max_rank"])
        except ValueError as err:
            raise ValueError(f"restraint of {name}: {err}") from err
        # ΔW only grows by the next edit's few directions: start the next SVD from this one's basis.
        warm_starts.update(name, res.method, res.basis)
        self._write(model, name, w, res)
        return res

    @staticmethod
    def _write(model: torch.nn.Module, name: str, w: torch.Tensor, res: Any) -> None:
        """Add ``res``'s correction to the weight ``w`` of ``name``: W + U_r (s' − s) V_rᵀ rather than W_0 + ΔW', so what
        is not restrained keeps its exact bits; in place for float32 (``w`` is a view of the parameter)."""
        if not res.n_restrained:
            return
        if w.dtype == torch.float32:
            res.apply_(w)
        else:
            set_weight(model, name, res.apply_(w.float()))

    def _record(self, state: EditState, trainer: L.Trainer | None, counts: dict[str, int], seconds: float) -> None:
        """Count one restraint pass in the timing and history, and log it."""
        self.total_seconds += seconds
        num_edits = state.requests_seen
        self.history.append({"num_edits": num_edits, "seconds": seconds, "n_restrained": counts})
        if trainer is not None:
            metrics = {f"restraint/{short_name(k)}/n_restrained": float(v) for k, v in counts.items()}
            metrics["restraint/seconds"] = seconds
            log_scalars(trainer, metrics, step=num_edits)

    def on_edit_step(self, trainer: L.Trainer, state: EditState) -> None:
        if not self.enabled or self.at_end_only or not state.last_step_applied:
            return  # a rejected update left the weights as the previous pass did
        self._pending = True
        if crossed(state.previous_requests_seen, state.requests_seen, self.every_n_edits):
            self._pending = False
            self.restrain(state, trainer)

    def on_edits_end(self, trainer: L.Trainer, state: EditState) -> None:
        # With every_n_edits > 1 the edits after the last multiple would otherwise reach the final
        # evaluation unrestrained.
        if self.enabled and (self.at_end_only or self._pending):
            self._pending = False
            self.restrain(state, trainer)

    @property
    def restrained_copy_curve(self) -> bool:
        return self.evaluate_at_end_curve and self.enabled

    def fingerprint(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "mode": self.mode, "every_n_edits": self.every_n_edits, "at_end_only": self.at_end_only, "enabled": self.enabled}

    @contextlib.contextmanager
    def restrained_copy(self, state: EditState) -> Iterator[dict[str, int]]:
        """Within the block the edited matrices are restrained as if the run ended now; restored exactly after.

        Yields n_restrained per matrix: all zero means the copy *is* the current model (no σ of ΔW above σ_max(W₀)).
        """
        saved = {name: get_weight(state.model, name).detach().clone() for name in state.original_weights}
        try:
            yield self.restrain(state, None, warm=WarmStarts(), record=False)
        finally:
            for name, w in saved.items():
                set_weight(state.model, name, w)

    def state_dict(self) -> dict[str, Any]:
        # The warm bases too: a restraint started cold differs at float tolerance, and later edits (early stopping
        # decisions) can amplify that, so a resumed run would not repeat the uninterrupted one exactly.
        return {
            "total_seconds": self.total_seconds,
            "history": self.history,
            "pending": self._pending,
            "warm_basis": dict(self.warm.basis),
            "full_rank": sorted(self.warm.full_rank),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_seconds = float(state_dict.get("total_seconds", 0.0))
        self.history = list(state_dict.get("history", []))
        self._pending = bool(state_dict.get("pending", False))
        self.warm = WarmStarts(basis=dict(state_dict.get("warm_basis", {})), full_rank=set(state_dict.get("full_rank", [])))
