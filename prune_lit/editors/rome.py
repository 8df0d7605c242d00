"""ROME (Meng et al., 2022): a rank-one rewrite of one MLP output projection per fact."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.editors.base import Editor, EditResult, apply_deltas
from prune_lit.editors.hparams import LocateEditHParams, ROMEHParams, load_hparams
from prune_lit.editors.locate import compute_keys, generate_context_templates, optimise_target
from prune_lit.editors.stats import second_moments
from prune_lit.models.arch import arch_spec, get_weight, num_layers, set_weight
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


class LocateEditEditor(Editor):
    """What ROME and MEMIT share: hyperparameters, context templates and key statistics.

    ``hparams`` is a YAML path, or None for the preset of the model name given to `prepare`
    (``prune_lit/hparams/<algo>/<model>.yaml``; the tiny test models have built-in defaults).
    ``overrides`` (or keyword arguments) replace single hyperparameters, e.g. ``layers=[4]``.
    ``stats_dir`` overrides where key statistics are cached (default ``cache_dir()/stats``).
    """

    algo = ""
    hparams_cls: type[LocateEditHParams] = LocateEditHParams

    def __init__(self, hparams: str | None = None, stats_dir: str | None = None, overrides: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.hparams_path = hparams
        self.stats_dir = stats_dir
        self.overrides = {**(overrides or {}), **kwargs}
        self.hp: LocateEditHParams | None = None
        self.templates: list[str] = []
        self.prepare_seconds = 0.0

    # --- setup -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str, data_dir: str | None) -> None:
        self.hp = load_hparams(self.hparams_cls, self.algo, self.hparams_path, model_name, **self.overrides)
        n = num_layers(model)
        if any(layer >= n for layer in self.hp.layers):
            raise ValueError(f"{self.algo} layers {self.hp.layers} out of range for a {n}-layer model")
        t0 = time.perf_counter()
        self.templates = generate_context_templates(model, tokenizer, self.hp.context_template_length_params, self.hp.context_template_seed)
        log.info("%d context templates: %s", len(self.templates), self.templates)
        names = [arch_spec(model).mlp_out_name(layer) for layer in self.hp.layers]
        if self.hp.mom2_adjustment:
            moments = second_moments(model, tokenizer, model_name, names, self.hp.mom2_n_samples, self.hp.mom2_seq_len,
                                     self.hp.mom2_dtype, data_dir, self.stats_dir)
        else:
            moments = {}
        self._set_statistics(model, {layer: moments.get(name) for layer, name in zip(self.hp.layers, names)})
        self.prepare_seconds = time.perf_counter() - t0

    def _set_statistics(self, model: nn.Module, moments: dict[int, torch.Tensor | None]) -> None:
        """Keep what the update needs from C per layer (None: mom2_adjustment is off, use C = I)."""
        raise NotImplementedError

    def _require_prepared(self) -> LocateEditHParams:
        if self.hp is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(model, tokenizer, model_name, data_dir) must run before editing")
        return self.hp

    def weight_names(self, model: nn.Module) -> list[str]:
        hp = self._require_prepared()
        return [arch_spec(model).mlp_out_name(layer) + ".weight" for layer in hp.layers]


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

    def compute_delta(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, request: EditRequest) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """ΔW for one request on the current weights (nothing is applied)."""
        hp = self._require_prepared()
        layer = hp.layers[0]
        module = arch_spec(model).mlp_out_name(layer)
        k_star = compute_keys(model, tokenizer, module, [request], self.templates)[0]
        res = optimise_target(model, tokenizer, module, request, self.templates, **hp.target_search_kwargs())
        W = get_weight(model, module + ".weight").float()
        # The optimised shift δ should appear at the (template-averaged) key: v* = W k* + δ.
        v_star = W @ k_star + res.delta.to(W.device)
        delta_w = rome_update(W, self.C_inv[layer].to(W.device), k_star.to(W.device), v_star)
        stats = {"loss": res.loss, "nll": res.nll, "steps": float(res.steps), "delta_norm": float(delta_w.norm())}
        return {module + ".weight": delta_w}, stats

    def edit(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> EditResult:
        """Apply the requests one after another (each sees the previous); all-or-nothing for the step."""
        self._require_prepared()
        t0 = time.perf_counter()
        names = self.weight_names(model)
        before = {n: get_weight(model, n).clone() for n in names}
        total = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in before.items()}
        losses, nlls = [], []
        applied = True
        for request in requests:
            deltas, stats = self.compute_delta(model, tokenizer, request)
            if not apply_deltas(model, deltas):
                applied = False
                break
            for n, d in deltas.items():
                total[n] += d.float()
            losses.append(stats["loss"])
            nlls.append(stats["nll"])
        if not applied:  # undo this step's earlier requests too: the step is all-or-nothing
            for n, w in before.items():
                set_weight(model, n, w)
            total = {n: torch.zeros_like(t) for n, t in total.items()}
        out_stats = {
            "loss": float(sum(losses) / len(losses)) if losses else float("nan"),
            "nll": float(sum(nlls) / len(nlls)) if nlls else float("nan"),
            "seconds": time.perf_counter() - t0,
            "delta_norm": float(sum(t.norm() ** 2 for t in total.values()) ** 0.5),
            "n_requests": float(len(requests)),
        }
        return EditResult(deltas=total, applied=applied, stats=out_stats)
