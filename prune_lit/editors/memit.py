"""MEMIT (Meng et al., 2023): a batch of facts spread over several MLP output projections."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.editors.base import EditStats
from prune_lit.editors.hparams import MEMITHParams
from prune_lit.editors.locate import compute_keys, module_io_at, optimise_target, subject_last_token
from prune_lit.editors.locate_edit import LocateEditEditor
from prune_lit.models.arch import arch_spec, get_weight, set_weight
from prune_lit.models.batching import pad_token_id

log = logging.getLogger(__name__)


def memit_update(W: torch.Tensor, K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """MEMIT's least-squares update ``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹`` ``[d_out, d_in]`` (solved, not inverted).

    It minimises ``‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ)``: W ``[d_out, d_in]`` (shape/dtype reference),
    K ``[d_in, n]`` keys, R ``[d_out, n]`` this layer's share of the residual, C ``[d_in, d_in]`` = E[k kᵀ].
    Computed in float64; returned in W's dtype.
    """
    d_out, d_in = W.shape
    if K.dim() != 2 or K.shape[0] != d_in or R.shape != (d_out, K.shape[1]) or C.shape != (d_in, d_in):
        raise ValueError(f"memit_update shapes: W {tuple(W.shape)}, K {tuple(K.shape)}, R {tuple(R.shape)}, C {tuple(C.shape)}")
    K64, R64 = K.double(), R.double()
    A = lam * C.double().to(K.device) + K64 @ K64.T  # [d_in, d_in], symmetric positive definite
    # ΔW A = R Kᵀ  <=>  A ΔWᵀ = K Rᵀ (A symmetric)
    return torch.linalg.solve(A, K64 @ R64.T).T.to(W.dtype)


class MEMITEditor(LocateEditEditor):
    """MEMIT as an `Editor`: one batched update of every layer in ``hparams.layers`` per step.

    Targets ``z`` are optimised at the last edit layer's residual stream; then, layer by layer from
    the first, the remaining residual is split evenly over the layers still to edit. Same
    constructor arguments as `LocateEditEditor`; presets live in ``prune_lit/hparams/memit/``.
    """

    algo = "memit"
    hparams_cls = MEMITHParams

    def __init__(self, hparams: str | None = None, stats_dir: str | None = None, overrides: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(hparams, stats_dir, overrides, **kwargs)
        self.C: dict[int, torch.Tensor] = {}

    def _set_statistics(self, model: nn.Module, moments: dict[int, torch.Tensor | None]) -> None:
        for layer, C in moments.items():
            d_in = get_weight(model, arch_spec(model).mlp_out_name(layer) + ".weight").shape[1]
            self.C[layer] = torch.eye(d_in, dtype=torch.float64) if C is None else C.double()

    def _layer_update(self, layer: int, W: torch.Tensor, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """ΔW ``[d_out, d_in]`` of one edited layer from its current weight W, the batch's keys K ``[d_in, n]``
        (computed with the earlier layers of this step already updated) and its residual share R ``[d_out, n]``.
        Subclasses with another per-layer solve (AlphaEdit) override this."""
        hp = self._require_prepared()
        return memit_update(W, K, R, self.C[layer].to(W.device), hp.mom2_update_weight)

    def compute_deltas(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> tuple[dict[str, torch.Tensor], EditStats]:
        """ΔW per edited layer for the whole batch, on the current weights; the model is left as it was."""
        hp = self._require_prepared()
        spec = arch_spec(model)
        z_layer = hp.layers[-1]
        z_module = spec.layer(z_layer)
        results = [
            optimise_target(model, tokenizer, z_module, r, self.templates, **hp.target_search_kwargs())
            for r in requests
        ]
        z_target = torch.stack([r.target for r in results], dim=1)  # [d_model, n]
        plain = [subject_last_token(tokenizer, "{}", r) for r in requests]
        names = [spec.mlp_out_name(layer) + ".weight" for layer in hp.layers]
        originals = {n: get_weight(model, n).clone() for n in names}
        deltas: dict[str, torch.Tensor] = {}
        try:
            for i, layer in enumerate(hp.layers):
                module = spec.mlp_out_name(layer)
                K = compute_keys(model, tokenizer, module, requests, self.templates, averaging=hp.key_averaging).T  # [d_in, n]
                z_now = module_io_at(model, z_module, [p[0] for p in plain], [p[1] for p in plain], pad_token_id(tokenizer), "output").T
                resid = (z_target.to(z_now.device) - z_now) / (len(hp.layers) - i)  # this layer's share
                W = get_weight(model, module + ".weight").float()
                delta_w = self._layer_update(layer, W, K.to(W.device), resid.to(W.device))
                deltas[module + ".weight"] = delta_w
                if not torch.isfinite(delta_w).all():
                    break  # apply_deltas will reject the whole step
                # Later layers' keys and residuals must see this layer's update.
                set_weight(model, module + ".weight", W + delta_w)
        finally:
            for n, w in originals.items():
                set_weight(model, n, w)
        stats = EditStats(
            loss=sum(r.loss for r in results) / len(results),
            nll=sum(r.nll for r in results) / len(results),
            steps=sum(r.steps for r in results) / len(results),
        )
        return deltas, stats
