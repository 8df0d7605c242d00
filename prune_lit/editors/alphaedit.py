"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's batched update, projected onto the null space of stored keys.

Per edited layer, with the batch's keys K₁ ``[d_in, n]``, the layer's residual share R ``[d_out, n]``
(both exactly as MEMIT computes them), the projector P ``[d_in, d_in]`` onto the eigenvectors of the
key second moment C = E[k kᵀ] whose eigenvalues are below a threshold, and K_pK_pᵀ ``[d_in, d_in]``
the summed outer products of the keys of all earlier (applied) edits of the run::

    ΔW = R K₁ᵀ P ((K_pK_pᵀ + K₁K₁ᵀ) P + λ I)⁻¹          [d_out, d_in],  λ = the reference's ``L2``

This is the reference's solve (jianghoucheng/AlphaEdit ``AlphaEdit_main.py``) written for ``[out, in]``
weights; the paper's final ``ΔW P`` is the same matrix because ΔW (I − P) = 0 exactly (see
`alphaedit_update`). Differences from the reference code are listed in docs/alphaedit.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.editors.base import EditStats
from prune_lit.editors.hparams import MEMITHParams
from prune_lit.editors.memit import MEMITEditor
from prune_lit.models.arch import arch_spec, get_weight

log = logging.getLogger(__name__)

THRESHOLD_MODES = ("absolute", "relative")


@dataclass
class AlphaEditHParams(MEMITHParams):
    """AlphaEdit: MEMIT's value search, keys and layer spreading; the null-space-projected solve per layer.

    ``mom2_update_weight`` (MEMIT's λ on C) is not used: C enters only through the projector P.
    """

    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space kept (reference: 2e-2)
    # absolute: eigenvalue < threshold (reference); relative: eigenvalue < threshold · λ_max(C) (scale-free)
    nullspace_threshold_mode: str = "absolute"
    L2: float = 10.0  # λ of the identity term in the solve (reference ``L2``: 10)

    def validate(self, source: str = "<hparams>") -> None:
        super().validate(source)
        if self.nullspace_threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"{source}: nullspace_threshold_mode must be one of {THRESHOLD_MODES}, got {self.nullspace_threshold_mode!r}")
        if self.nullspace_threshold <= 0 or self.L2 <= 0:
            raise ValueError(f"{source}: nullspace_threshold and L2 must be positive")


def null_space_projector(C: torch.Tensor, threshold: float, relative: bool = False) -> tuple[torch.Tensor, int]:
    """``(P [d, d] float64, n_kept)``: the orthogonal projector U₀U₀ᵀ onto the eigenvectors of C ``[d, d]``
    (symmetric PSD, e.g. E[k kᵀ]) whose eigenvalues are below ``threshold`` (``threshold · λ_max(C)`` when
    ``relative``); ``n_kept`` = rank of P = number of directions edits may use.
    """
    if C.dim() != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"null_space_projector needs a square matrix, got {tuple(C.shape)}")
    C64 = C.double()
    eigvals, U = torch.linalg.eigh((C64 + C64.T) / 2)
    cut = threshold * float(eigvals.max()) if relative else threshold
    U0 = U[:, eigvals < cut]  # [d, n_kept]
    return U0 @ U0.T, int(U0.shape[1])


def alphaedit_update(W: torch.Tensor, K: torch.Tensor, R: torch.Tensor, P: torch.Tensor, KpKp: torch.Tensor, lam: float) -> torch.Tensor:
    """AlphaEdit's update ``ΔW = R Kᵀ P ((K_pK_pᵀ + K Kᵀ) P + λ I)⁻¹`` ``[d_out, d_in]`` (solved in float64).

    W ``[d_out, d_in]`` (shape/dtype reference), K ``[d_in, n]`` the batch's keys, R ``[d_out, n]`` this
    layer's residual share, P ``[d_in, d_in]`` the null-space projector, KpKp ``[d_in, d_in]`` the summed
    k kᵀ of earlier edits (zeros for none), λ > 0. It minimises ‖ΔP K − R‖² + ‖ΔP K_p‖² + λ‖ΔP‖²
    over Δ and returns ΔW = ΔP: for x = (I − P) y, ((KpKp + KKᵀ) P + λI) x = λ x, so ΔW x = R Kᵀ P x / λ = 0,
    i.e. ΔW (I − P) = 0 and every key in the span removed by P is left untouched.
    Solved as the reference does: ΔWᵀ = (P (KKᵀ + KpKp) + λ I)⁻¹ P K Rᵀ. Returned in W's dtype.
    """
    d_out, d_in = W.shape
    if (K.dim() != 2 or K.shape[0] != d_in or R.shape != (d_out, K.shape[1])
            or P.shape != (d_in, d_in) or KpKp.shape != (d_in, d_in)):
        raise ValueError(f"alphaedit_update shapes: W {tuple(W.shape)}, K {tuple(K.shape)}, R {tuple(R.shape)}, "
                         f"P {tuple(P.shape)}, KpKp {tuple(KpKp.shape)}")
    dev = K.device
    K64, R64 = K.double(), R.double()
    P64, KpKp64 = P.double().to(dev), KpKp.double().to(dev)
    A = P64 @ (K64 @ K64.T + KpKp64) + lam * torch.eye(d_in, dtype=torch.float64, device=dev)  # [d_in, d_in]
    return torch.linalg.solve(A, P64 @ K64 @ R64.T).T.to(W.dtype)


class AlphaEditEditor(MEMITEditor):
    """AlphaEdit as an `Editor`: `MEMITEditor` with the per-layer solve replaced by `alphaedit_update`.

    Run state: K_pK_pᵀ per edited layer (float64 ``[d_in, d_in]``), grown by K₁K₁ᵀ after every *applied*
    step (a rejected step adds nothing), and the number of keys it holds; see `state_dict`. The keys
    added are the ones the step solved with: MEMIT computes layer ℓ's keys after the step's earlier
    layers were updated, and layer ℓ's own or later updates do not change them, so they equal the keys
    on the edited model (what the reference recomputes). Presets live in ``prune_lit/hparams/alphaedit/``.
    """

    algo = "alphaedit"
    hparams_cls = AlphaEditHParams

    def __init__(self, hparams: str | None = None, stats_dir: str | None = None, overrides: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(hparams, stats_dir, overrides, **kwargs)
        self.P: dict[int, torch.Tensor] = {}
        self.n_kept: dict[int, int] = {}
        self.KpKp: dict[int, torch.Tensor] = {}
        self.num_keys = 0  # keys summed into K_pK_pᵀ (edits applied so far)
        self._step_keys: dict[int, torch.Tensor] = {}  # this step's K per layer, until it is applied
        self._loaded_state: dict[str, Any] | None = None

    def _set_statistics(self, model: nn.Module, moments: dict[int, torch.Tensor | None]) -> None:
        hp = self._require_prepared()
        assert isinstance(hp, AlphaEditHParams)
        relative = hp.nullspace_threshold_mode == "relative"
        for layer, C in moments.items():
            d_in = get_weight(model, arch_spec(model).mlp_out_name(layer) + ".weight").shape[1]
            if C is None:
                log.warning("alphaedit layer %d: mom2_adjustment is off, so no null space: P = I (plain MEMIT-style solve with λI)", layer)
                self.P[layer], self.n_kept[layer] = torch.eye(d_in, dtype=torch.float64), d_in
            else:
                self.P[layer], self.n_kept[layer] = null_space_projector(C, hp.nullspace_threshold, relative)
            self.KpKp[layer] = torch.zeros(d_in, d_in, dtype=torch.float64)
        log.info("alphaedit null space (threshold %g, %s): %s directions kept of %s", hp.nullspace_threshold,
                 hp.nullspace_threshold_mode, {layer: n for layer, n in self.n_kept.items()},
                 {layer: p.shape[0] for layer, p in self.P.items()})
        self.num_keys = 0
        if self._loaded_state is not None:  # state loaded before prepare: check and install it now
            state, self._loaded_state = self._loaded_state, None
            self.load_state_dict(state)

    def _layer_update(self, layer: int, W: torch.Tensor, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        hp = self._require_prepared()
        assert isinstance(hp, AlphaEditHParams)
        self._step_keys[layer] = K.detach().double().cpu()
        return alphaedit_update(W, K, R, self.P[layer].to(W.device), self.KpKp[layer].to(W.device), hp.L2)

    def compute_deltas(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> tuple[dict[str, torch.Tensor], EditStats]:
        self._step_keys = {}
        deltas, stats = super().compute_deltas(model, tokenizer, requests)
        stats.extras["nullspace_dims_mean"] = sum(self.n_kept.values()) / max(len(self.n_kept), 1)
        return deltas, stats

    def after_applied(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest], deltas: dict[str, torch.Tensor]) -> None:
        hp = self._require_prepared()
        missing = [layer for layer in hp.layers if layer not in self._step_keys]
        if missing:
            raise RuntimeError(f"AlphaEdit: the applied step has no keys for layers {missing}; was compute_deltas run for it?")
        for layer in hp.layers:
            K = self._step_keys[layer]  # [d_in, n]
            self.KpKp[layer] += K @ K.T
        self.num_keys += len(requests)
        self._step_keys = {}

    # --- run state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"kpkp": {layer: [d_in, d_in] float64}, "num_keys": int}``: what later steps depend on."""
        return {"kpkp": {int(layer): m.clone() for layer, m in self.KpKp.items()}, "num_keys": int(self.num_keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict`; checked against the prepared layers and shapes (or at `prepare`, if not yet)."""
        if set(state) != {"kpkp", "num_keys"}:
            raise ValueError(f"AlphaEdit state must have keys ['kpkp', 'num_keys'], got {sorted(state)}")
        kpkp, num_keys = state["kpkp"], state["num_keys"]
        if not isinstance(kpkp, dict) or not isinstance(num_keys, int) or num_keys < 0:
            raise ValueError("AlphaEdit state: 'kpkp' must map layer -> tensor and 'num_keys' be a non-negative int")
        kpkp = {int(layer): m for layer, m in kpkp.items()}
        for layer, m in kpkp.items():
            if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] != m.shape[1]:
                raise ValueError(f"AlphaEdit state: K_pK_pᵀ of layer {layer} must be a square matrix, got {getattr(m, 'shape', type(m))}")
        if not self.P:  # not prepared yet: keep it until _set_statistics knows the layers and shapes
            self._loaded_state = {"kpkp": kpkp, "num_keys": num_keys}
            return
        layers = sorted(kpkp)
        if layers != sorted(self.P):
            raise ValueError(f"AlphaEdit state holds K_pK_pᵀ for layers {layers}, but this editor edits layers {sorted(self.P)}")
        for layer in layers:
            m, d = kpkp[layer], self.P[layer].shape[0]
            if tuple(m.shape) != (d, d):
                raise ValueError(f"AlphaEdit state: K_pK_pᵀ of layer {layer} is {tuple(m.shape)}, expected ({d}, {d})")
        self.KpKp = {layer: kpkp[layer].detach().double().cpu().clone() for layer in layers}
        self.num_keys = num_keys
