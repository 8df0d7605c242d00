"""Spectral diagnostics of sequential editing: how large ΔW grows and how ill-conditioned W becomes.

Per edit step (every ``every_n_edits``) and per edited matrix it logs, under ``spectral/<short_name>/``:
``sigma_max_delta`` (σ_max(ΔW), low-rank SVD), ``fro_delta`` (‖ΔW‖_F), ``rank_delta`` and, every
``kappa_every_n_edits``, ``sigma_max_w`` and ``kappa_w`` (exact svdvals of the current W, ≈50 ms for 576×1536).
At the end it writes every record to ``<run_dir>/spectral.json`` and a figure of the spectra
(``spectral.png``; also sent to TensorBoard).

It is an `EditStepCallback` of phase ``MEASURE``: the editing module runs it after any restraint of the same
step, so it always measures the weights the evaluations see, wherever it sits in ``trainer.callbacks``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from matplotlib.figure import Figure

from prune_lit.callbacks.delta_buffers import DeltaBuffers
from prune_lit.callbacks.restraint import short_name
from prune_lit.contracts import EditState, EditStepCallback, Phase, crossed
from prune_lit.reporting import log_figure, log_scalars, run_dir, write_json_atomic
from prune_lit.models.arch import get_weight
from prune_lit.restraint import WarmStarts, lowrank_svd, singular_values

log = logging.getLogger(__name__)


def spectrum_figure(spectra: dict[str, dict[str, Any]], top_k: int) -> Figure:
    """One row per matrix: top-k singular values of ΔW (left) and of W vs W_0 (right), log scale."""
    rows = max(1, len(spectra))
    fig = Figure(figsize=(10, 2.8 * rows))
    axes = fig.subplots(rows, 2, squeeze=False)
    for (name, sp), (ax_d, ax_w) in zip(spectra.items(), axes):
        s_d = sp["delta"][:top_k]
        if len(s_d):
            ax_d.semilogy(range(1, len(s_d) + 1), s_d, "o-", ms=3, label="σ_i(ΔW)")
        ax_d.axhline(sp["sigma_max_w0"], color="r", ls="--", lw=1, label="σ_max(W_0)")
        ax_d.set_title(f"{name}: ΔW, top {top_k}", fontsize=9)
        ax_d.set_xlabel("index")
        ax_d.legend(fontsize=7)
        ax_w.semilogy(sp["w0"], label="W_0", lw=1)
        ax_w.semilogy(sp["w"], label="W (edited)", lw=1, ls="--")
        ax_w.set_title(f"{name}: singular values of W", fontsize=9)
        ax_w.set_xlabel("index")
        ax_w.legend(fontsize=7)
    fig.tight_layout()
    return fig


class SpectralDiagnostics(EditStepCallback):
    """Track σ_max(ΔW), ‖ΔW‖_F, σ_max(W) and κ(W) of every edited matrix during sequential editing.

    Args:
        every_n_edits: measure whenever the cumulative edit count crosses a multiple of this.
        kappa_every_n_edits: measure σ_max(W) and κ(W) (a full svdvals of W) only this often.
        top_k: how many singular values of ΔW the final figure shows.
        max_figure_matrices: at most this many matrices (rows) in the figure.
        filename: name of the JSON file written in the run directory.

    Attributes:
        records: one dict per (measurement, matrix); ``final`` is True for the one taken at test end.
    """

    phase = Phase.MEASURE

    def __init__(
        self,
        every_n_edits: int = 1,
        kappa_every_n_edits: int = 1,
        top_k: int = 32,
        max_figure_matrices: int = 8,
        filename: str = "spectral.json",
    ) -> None:
        super().__init__()
        if every_n_edits < 1 or kappa_every_n_edits < 1 or top_k < 1:
            raise ValueError("every_n_edits, kappa_every_n_edits and top_k must be >= 1")
        self.every_n_edits = int(every_n_edits)
        self.kappa_every_n_edits = int(kappa_every_n_edits)
        self.top_k = int(top_k)
        self.max_figure_matrices = int(max_figure_matrices)
        self.filename = filename
        self.records: list[dict[str, Any]] = []
        self._w0_spectra: dict[str, torch.Tensor] = {}  # σ(W_0) per matrix, computed once
        self.warm = WarmStarts()  # ΔW grows step by step: each SVD starts from the last one
        self.deltas = DeltaBuffers()  # ΔW of each matrix, formed in place measure after measure

    def w0_spectrum(self, name: str, w0: torch.Tensor) -> torch.Tensor:
        """Singular values of ``name``'s W_0 (descending), computed once and cached."""
        if name not in self._w0_spectra:
            self._w0_spectra[name] = singular_values(w0).cpu()
        return self._w0_spectra[name]

    @torch.no_grad()
    def measure(self, state: EditState, trainer: L.Trainer | None, with_kappa: bool, final: bool = False) -> list[dict[str, Any]]:
        """Measure every edited matrix now; log, store and return the records."""
        num_edits = state.requests_seen
        new: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        for name, w0 in state.original_weights.items():
            w = get_weight(state.model, name).float()
            w0 = w0.to(w.device, torch.float32)
            delta = self.deltas.delta(name, w, w0)
            if not torch.isfinite(delta).all():
                raise ValueError(f"spectral diagnostics: {name} holds NaN/Inf after {num_edits} edits")
            svd = lowrank_svd(delta, vectors=False, **self.warm.kwargs(name))
            self.warm.update(name, svd.method, svd.warm_basis)
            rec: dict[str, Any] = {
                "num_edits": num_edits,
                "step": state.steps,
                "matrix": name,
                "final": final,
                "sigma_max_w0": float(self.w0_spectrum(name, w0)[0]),
                "sigma_max_delta": float(svd.S[0]) if svd.rank else 0.0,
                "fro_delta": float(torch.linalg.vector_norm(delta)),
                "rank_delta": svd.rank if svd.method != "full" else int((svd.S > svd.S[0] * 1e-6).sum()),
            }
            if with_kappa:
                s = singular_values(w)
                rec["sigma_max_w"] = float(s[0])
                rec["kappa_w"] = float(s[0] / s[-1]) if float(s[-1]) > 0 else float("inf")
            tag = f"spectral/{short_name(name)}"
            for key in ("sigma_max_delta", "fro_delta", "rank_delta", "sigma_max_w", "kappa_w"):
                if key in rec:
                    metrics[f"{tag}/{key}"] = float(rec[key])
            new.append(rec)
        if trainer is not None and not final:
            log_scalars(trainer, metrics, step=num_edits)
        self.records.extend(new)
        return new

    def on_edit_step(self, trainer: L.Trainer, state: EditState) -> None:
        previous, now = state.previous_requests_seen, state.requests_seen
        if crossed(previous, now, self.every_n_edits):
            self.measure(state, trainer, with_kappa=crossed(previous, now, self.kappa_every_n_edits))

    def on_edits_end(self, trainer: L.Trainer, state: EditState) -> None:
        self.measure(state, None, with_kappa=True, final=True)  # after any at-end restraint
        if not trainer.is_global_zero:
            return
        out = run_dir(trainer)
        write_json_atomic(out / self.filename, {"records": self.records}, indent=1)
        spectra = self.final_spectra(state)
        fig = spectrum_figure(spectra, self.top_k)
        png = out / (Path(self.filename).stem + ".png")
        tmp = png.with_name(f".{png.name}.tmp{os.getpid()}.png")
        fig.savefig(tmp, dpi=100)
        tmp.replace(png)
        log_figure(trainer, "spectral/spectrum", fig, step=state.requests_seen)
        log.info("spectral diagnostics written to %s and %s", out / self.filename, png)

    def state_dict(self) -> dict[str, Any]:
        # The warm bases too: SVDs started cold after a resume differ from the uninterrupted run's at ~1e-8.
        return {"records": self.records, "warm_basis": dict(self.warm.basis), "full_rank": sorted(self.warm.full_rank)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))
        self.warm = WarmStarts(basis=dict(state_dict.get("warm_basis", {})), full_rank=set(state_dict.get("full_rank", [])))

    @torch.no_grad()
    def final_spectra(self, state: EditState) -> dict[str, dict[str, Any]]:
        """``{short_name: {"delta": top-k σ(ΔW), "w": σ(W), "w0": σ(W_0), "sigma_max_w0"}}`` for the figure."""
        spectra: dict[str, dict[str, Any]] = {}
        for name, w0 in list(state.original_weights.items())[: self.max_figure_matrices]:
            w = get_weight(state.model, name).float()
            w0 = w0.to(w.device, torch.float32)
            s0 = self.w0_spectrum(name, w0)
            spectra[short_name(name)] = {
                "delta": lowrank_svd(self.deltas.delta(name, w, w0), vectors=False).S[: self.top_k].tolist(),
                "w": singular_values(w).tolist(),
                "w0": s0.tolist(),
                "sigma_max_w0": float(s0[0]),
            }
        return spectra
