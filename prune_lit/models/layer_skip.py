"""Run a decoder from block L on cached hidden states.

ROME's and MEMIT's value search runs the same batch ~20 times while only adding a shift at block L; the
blocks below L see the same input every time. `hidden_into_layer` computes their output once and
`skip_layers_below` makes the next forwards start at block L from it: the same numbers, fewer FLOPs.

The model is still called with ``input_ids`` and ``attention_mask`` (so masks and positions are built by
the model's own code); a hook makes the token embedding return the cached hidden states, GPT-2's
position embedding returns zeros (it is already inside them), and the block list is cut to ``L:``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from prune_lit.models.arch import arch_spec, get_module, num_layers


class StopForward(Exception):
    """Raised by a hook once everything needed was captured, to skip the rest of the forward."""


def layer_of(model: nn.Module, module_name: str) -> int | None:
    """Index of the transformer block that contains ``module_name`` (None when it is outside the blocks)."""
    spec = arch_spec(model)
    for i in range(num_layers(model)):
        block = spec.layer(i)
        if module_name == block or module_name.startswith(block + "."):
            return i
    return None


def _block_list(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that owns the block ``ModuleList`` and that list's attribute name."""
    parent, attr = arch_spec(model).layers.removesuffix(".{}").rsplit(".", 1)
    return get_module(model, parent), attr


@torch.no_grad()
def hidden_into_layer(model: nn.Module, layer: int, ids: torch.Tensor, mask: torch.Tensor, **forward_kw: object) -> torch.Tensor:
    """The hidden states ``[batch, seq, d]`` that enter block ``layer`` for ``ids``/``mask``; the forward stops there.

    ``forward_kw`` go to the trunk's forward (e.g. ``position_ids`` and a KV cache of a prefix: the blocks below
    ``layer`` then append to that cache, the others do not).
    """
    parent, attr = _block_list(model)
    blocks = getattr(parent, attr)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is outside 0..{len(blocks) - 1}")
    captured: list[torch.Tensor] = []

    def grab(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise StopForward

    handle = blocks[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.base_model(input_ids=ids, attention_mask=mask, **({"use_cache": False} | forward_kw))
    except StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"block {layer} did not run during the forward")
    return captured[0]


@contextlib.contextmanager
def skip_layers_below(model: nn.Module, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Inside the block, forwards start at block ``layer`` with ``hidden`` [batch, seq, d] as its input.

    ``hidden`` must come from `hidden_into_layer` on the very ids and mask the forwards use (checked by shape
    only). Weights below ``layer`` must not change meanwhile. Block list and hooks are restored on exit.
    """
    if layer == 0:
        yield
        return
    spec = arch_spec(model)
    parent, attr = _block_list(model)
    blocks = getattr(parent, attr)

    def cached(_mod: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        if out.shape[:2] != hidden.shape[:2]:
            raise ValueError(f"cached hidden states are {tuple(hidden.shape[:2])}, the forward's ids {tuple(out.shape[:2])}")
        return hidden

    handles = [get_module(model, spec.embed).register_forward_hook(cached)]
    if spec.pos_embed is not None:
        handles.append(get_module(model, spec.pos_embed).register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)))
    # Per-layer settings the model indexes by position in the loop (Qwen2's sliding/full attention) move with the cut.
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    setattr(parent, attr, nn.ModuleList(list(blocks)[layer:]))
    if isinstance(layer_types, list) and len(layer_types) == len(blocks):
        config.layer_types = layer_types[layer:]
    try:
        yield
    finally:
        setattr(parent, attr, blocks)
        if isinstance(layer_types, list):
            config.layer_types = layer_types
        for h in handles:
            h.remove()
