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
from prune_lit.editors.locate import average_template_keys, compute_keys, optimise_target
from prune_lit.editors.locate_edit import LocateEditEditor
from prune_lit.models.arch import arch_spec, get_weight, set_weight
from prune_lit.models.batching import model_device

log = logging.getLogger(__name__)


def rome_update(
    W: torch.Tensor, C_inv: torch.Tensor, k_star: torch.Tensor, v_star: torch.Tensor, *, k_anchor: torch.Tensor | None = None
) -> torch.Tensor:
    """The rank-one ΔW ``[d_out, d_in]`` with ``(W + ΔW) k_a = v*`` along the key direction ``u = C⁻¹ k*``.

    ``ΔW = (v* − W k_a) uᵀ / (k_aᵀ u)``, with W ``[d_out, d_in]``, C⁻¹ ``[d_in, d_in]``, k* ``[d_in]`` (the key
    whose direction the update takes), v* ``[d_out]`` and the anchor key k_a ``[d_in]`` (default k*, the ROME
    paper's formula). kmeng01/rome's code anchors at the bare prompt's key: ``k_a = k_plain`` with k* the
    template-averaged key. Keys x with ``uᵀ x = 0`` are untouched either way.
    """
    k_a = k_star if k_anchor is None else k_anchor
    if (
        W.dim() != 2
        or C_inv.shape != (W.shape[1], W.shape[1])
        or k_star.shape != (W.shape[1],)
        or k_a.shape != (W.shape[1],)
        or v_star.shape != (W.shape[0],)
    ):
        raise ValueError(
            f"rome_update shapes: W {tuple(W.shape)}, C_inv {tuple(C_inv.shape)}, k* {tuple(k_star.shape)}, "
            f"k_anchor {tuple(k_a.shape)}, v* {tuple(v_star.shape)}"
        )
    u = C_inv @ k_star  # [d_in] the update's key direction
    resid = v_star - W @ k_a  # [d_out]
    return torch.outer(resid, u) / (u @ k_a)


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
        keys = compute_keys(model, tokenizer, module, [request], self.templates, per_template=True)[0]  # [T, d_in]
        k_star = average_template_keys(keys[None], "uniform")[0]  # u = C⁻¹ k̄: the template mean (compute_u)
        # The anchor where (W + ΔW) k_a = v* holds: the bare prompt's key (templates[0] == "{}", compute_v's
        # cur_input) or the template mean (the paper's formula).
        k_anchor = keys[0] if hp.update_anchor == "prompt" else k_star
        res = optimise_target(model, tokenizer, module, request, self.templates, **hp.target_search_kwargs())
        W = get_weight(model, module + ".weight").float()
        # v* = W k_a + δ: with the prompt anchor, W k_plain is v_init, the value the search shifted by δ.
        v_star = W @ k_anchor.to(W.device) + res.delta.to(W.device)
        delta_w = rome_update(W, self.C_inv[layer].to(W.device), k_star.to(W.device), v_star, k_anchor=k_anchor.to(W.device))
        return module + ".weight", delta_w, res

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
