"""ROME (Meng et al., 2022): a rank-one rewrite of one MLP output projection per fact."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.editors.base import EditStats
from prune_lit.editors.hparams import ROMEHParams
from prune_lit.editors.locate import compute_keys, optimise_target
from prune_lit.editors.locate_edit import LocateEditEditor
from prune_lit.models.arch import arch_spec, get_weight, set_weight
from prune_lit.models.batching import model_device

log = logging.getLogger(__name__)


def rome_update(W: torch.Tensor, C_inv: torch.Tensor, k_star: torch.Tensor, v_star: torch.Tensor) -> torch.Tensor:
    """The rank-one ΔW ``[d_out, d_in]`` with ``(W + ΔW) k* = v*`` that least disturbs keys distributed as C.

    ``ΔW = (v* − W k*) (C⁻¹ k*)ᵀ / ((C⁻¹ k*)ᵀ k*)``, with W ``[d_out, d_in]``, C⁻¹ ``[d_in, d_in]``,
    k* ``[d_in]``, v* ``[d_out]``.
    """
    if W.dim() != 2 or C_inv.shape != (W.shape[1], W.shape[1]) or k_star.shape != (W.shape[1],) or v_star.shape != (W.shape[0],):
        raise ValueError(
            f"rome_update shapes: W {tuple(W.shape)}, C_inv {tuple(C_inv.shape)}, k* {tuple(k_star.shape)}, v* {tuple(v_star.shape)}"
        )
    u = C_inv @ k_star  # [d_in] the update's key direction
    resid = v_star - W @ k_star  # [d_out]
    return torch.outer(resid, u) / (u @ k_star)


class ROMEEditor(LocateEditEditor):
    """ROME as an `Editor`: one rank-one update of ``spec.mlp_out_name(layer)`` per request.

    Constructor arguments as `LocateEditEditor`; presets in ``prune_lit/hparams/rome/``.
    """

    algo = "rome"
    hparams_cls = ROMEHParams

    def __init__(self, hparams: str | None = None, stats_dir: str | None = None, overrides: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(hparams, stats_dir, overrides, **kwargs)
        self.C_inv: dict[int, torch.Tensor] = {}

    def _set_statistics(self, model: nn.Module, moments: dict[int, torch.Tensor | None]) -> None:
        device = model_device(model)
        for layer, C in moments.items():
            d_in = get_weight(model, arch_spec(model).mlp_out_name(layer) + ".weight").shape[1]
            if C is None:
                self.C_inv[layer] = torch.eye(d_in, device=device)
            else:
                self.C_inv[layer] = torch.linalg.inv(C.double()).float().to(device)

    def _one_delta(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, request: EditRequest) -> tuple[str, torch.Tensor, Any]:
        """(param name, rank-one ΔW, value-search result) for one request on the current weights."""
        hp = self._require_prepared()
        layer = hp.layers[0]
        module = arch_spec(model).mlp_out_name(layer)
        k_star = compute_keys(model, tokenizer, module, [request], self.templates)[0]
        res = optimise_target(model, tokenizer, module, request, self.templates, **hp.target_search_kwargs())
        W = get_weight(model, module + ".weight").float()
        # The optimised shift δ should appear at the (template-averaged) key: v* = W k* + δ.
        v_star = W @ k_star + res.delta.to(W.device)
        return module + ".weight", rome_update(W, self.C_inv[layer].to(W.device), k_star.to(W.device), v_star), res

    def compute_deltas(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> tuple[dict[str, torch.Tensor], EditStats]:
        """The summed ΔW of ``requests`` edited one after another (each sees the previous); the model is left as it was."""
        self._require_prepared()
        name = self.weight_names(model)[0]
        original = get_weight(model, name).clone()
        total = torch.zeros_like(original, dtype=torch.float32)
        results = []
        try:
            for i, request in enumerate(requests):
                _, delta_w, res = self._one_delta(model, tokenizer, request)
                total += delta_w
                results.append(res)
                if not torch.isfinite(delta_w).all():
                    break  # apply_deltas rejects the whole step
                if i < len(requests) - 1:
                    set_weight(model, name, original.float() + total)
        finally:
            set_weight(model, name, original)
        stats = EditStats(
            loss=sum(r.loss for r in results) / len(results),
            nll=sum(r.nll for r in results) / len(results),
            steps=sum(r.steps for r in results) / len(results),
        )
        return {name: total}, stats
