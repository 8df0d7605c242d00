"""What the locate-then-edit editors (ROME, MEMIT, AlphaEdit) share: hyperparameters, context templates, key statistics."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.editors.base import Editor
from prune_lit.editors.hparams import LocateEditHParams, load_hparams
from prune_lit.editors.locate import generate_context_templates
from prune_lit.editors.stats import second_moments
from prune_lit.models.arch import arch_spec, num_layers

log = logging.getLogger(__name__)


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
        self.key_moments: dict[str, torch.Tensor] = {}  # {param name: C} of the edited layers (mom2_adjustment)

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
        self.key_moments = {name + ".weight": C for name, C in moments.items()}
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

    def key_second_moment(self, name: str) -> torch.Tensor | None:
        """C of the keys entering ``name`` as `second_moments` estimated it (None with ``mom2_adjustment: false``)."""
        return self.key_moments.get(name)

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        if self.hp is not None:
            fp["hparams"] = dataclasses.asdict(self.hp)
        return fp
