"""How far an edit moves a matrix's output on ordinary text: the held-out keys and the output shift.

Locate-then-edit methods differ in *where* they let ΔW act: MEMIT weighs the change on stored keys by λC,
AlphaEdit projects it onto the eigen-directions of C with small eigenvalues. Whether either keeps ordinary text
untouched is measured directly here, on keys no statistics were computed from (e.g. WikiText-2 *test*).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prune_lit.models.arch import get_module


@torch.no_grad()
def held_out_keys(model: nn.Module, windows: Tensor, weight_names: list[str]) -> dict[str, Tensor]:
    """``{weight name: K [d_in, tokens]}`` (float64): the inputs of each named matrix's module on every token of
    ``windows`` ``[n, t]`` (one forward per window)."""
    keys: dict[str, list[Tensor]] = {n: [] for n in weight_names}
    handles = []
    for name in weight_names:
        module = get_module(model, name.removesuffix(".weight"))

        def grab(_m: nn.Module, inputs: tuple, _out: object, name: str = name) -> None:
            x = inputs[0]
            keys[name].append(x.reshape(-1, x.shape[-1]).double())

        handles.append(module.register_forward_hook(grab))
    try:
        for row in windows:
            model(input_ids=row[None].to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v).T.cpu() for n, v in keys.items()}


def output_shift(w0: Tensor, delta: Tensor, K: Tensor) -> float:
    """‖ΔW K‖_F / ‖W₀ K‖_F: the relative change of the matrix's outputs on the keys ``K`` ``[d_in, t]``
    (``w0``, ``delta`` ``[d_out, d_in]``, the layout of ``nn.Linear``)."""
    K = K.double()
    return float((delta.double() @ K).norm() / (w0.double() @ K).norm())


def expected_output_shift(w0: Tensor, delta: Tensor, c: Tensor) -> float:
    """(tr(ΔW C ΔWᵀ) / tr(W₀ C W₀ᵀ))^{1/2} = ‖ΔW C^{1/2}‖_F / ‖W₀ C^{1/2}‖_F: `output_shift` in expectation over keys
    with second moment ``c`` ``[d_in, d_in]`` (C = K Kᵀ / t gives `output_shift` on K). With an editor's own C it
    is the ratio key-aware PRUNE's energy rule compares with its scale (docs/restraints.md)."""
    c, d, w = c.double(), delta.double(), w0.double()
    return float(((d @ c) * d).sum().clamp_min(0).sqrt() / ((w @ c) * w).sum().sqrt())


def kept_energy(P: Tensor, K: Tensor) -> float:
    """‖P K‖²_F / ‖K‖²_F: the share of the keys' energy inside the space the projector ``P`` ``[d_in, d_in]``
    lets edits use (0 for a true null space of ``K``)."""
    K = K.double()
    return float((P.double() @ K).norm() ** 2 / K.norm() ** 2)
