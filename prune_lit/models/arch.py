"""Where each architecture keeps the modules that editors touch.

Every editor, statistic and diagnostic addresses weights by the templates here, so supporting a new
architecture means adding one `ArchSpec`. Weights are always exposed in the math orientation
``[out_features, in_features]``; GPT-2's ``Conv1D`` stores the transpose, and `get_weight` /
`set_weight` hide that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """Module-name templates (``{}`` = layer index) for one decoder architecture."""

    family: str
    layers: str  # the transformer block
    mlp_out: str  # the MLP output projection: the matrix ROME/MEMIT rewrite (keys = its input)
    mlp_in: tuple[str, ...]  # the MLP input projection(s)
    final_norm: str
    lm_head: str
    embed: str  # the token embedding
    pos_embed: str | None  # a learned absolute position embedding added to it (None: rotary, inside attention)
    n_layer_attr: str
    transposed: bool  # True when weights are stored [in, out] (GPT-2 Conv1D)

    def layer(self, i: int) -> str:
        return self.layers.format(i)

    def mlp_out_name(self, i: int) -> str:
        return self.mlp_out.format(i)

    def mlp_weight_names(self, i: int) -> list[str]:
        """Parameter names of every MLP matrix of layer ``i`` (MEND's inner params)."""
        return [t.format(i) + ".weight" for t in (*self.mlp_in, self.mlp_out)]


GPT2 = ArchSpec(
    family="gpt2",
    layers="transformer.h.{}",
    mlp_out="transformer.h.{}.mlp.c_proj",
    mlp_in=("transformer.h.{}.mlp.c_fc",),
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    n_layer_attr="n_layer",
    transposed=True,
)

LLAMA = ArchSpec(
    family="llama",
    layers="model.layers.{}",
    mlp_out="model.layers.{}.mlp.down_proj",
    mlp_in=("model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj"),
    final_norm="model.norm",
    lm_head="lm_head",
    embed="model.embed_tokens",
    pos_embed=None,
    n_layer_attr="num_hidden_layers",
    transposed=False,
)

_SPECS = {"gpt2": GPT2, "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA}


def arch_spec(model: nn.Module) -> ArchSpec:
    """The `ArchSpec` for a Hugging Face causal LM, by its ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _SPECS:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {sorted(_SPECS)}")
    return _SPECS[model_type]


def num_layers(model: nn.Module) -> int:
    return int(getattr(model.config, arch_spec(model).n_layer_attr))


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise KeyError(f"model has no module {name!r}") from err


def _param(model: nn.Module, name: str) -> nn.Parameter:
    # get_parameter walks the dotted path; building dict(named_parameters()) cost ~5 ms a call on a 30-layer model
    try:
        return model.get_parameter(name)
    except AttributeError as err:
        raise KeyError(f"model has no parameter {name!r}") from err


def get_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter ``name`` as a detached ``[out, in]`` *view* (transposed back for Conv1D).

    It aliases the live weight: ``.clone()`` it to keep a value across later edits.
    """
    w = _param(model, name).detach()
    return w.T if arch_spec(model).transposed and w.dim() == 2 else w


@torch.no_grad()
def set_weight(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Write ``value`` (``[out, in]``) into parameter ``name``, in place, keeping its dtype."""
    p = _param(model, name)
    v = value.T if arch_spec(model).transposed and value.dim() == 2 else value
    if v.shape != p.shape:
        raise ValueError(f"shape mismatch for {name}: got {tuple(value.shape)} for weight {tuple(p.shape)}")
    p.copy_(v.to(p.dtype))
