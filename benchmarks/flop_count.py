"""Shared helpers for the speed benchmarks: a matmul-FLOP counter over ``nn.Linear`` layers and a CPU matmul rate.

`LinearFlops` counts, while active, ``2 · rows · in_features · out_features`` for every ``nn.Linear`` call that
actually runs (rows = every row of its input, padding included; a forward stopped early by a hook only counts the
layers it ran; the output head only counts the positions it was applied to). For the backward pass it registers a
gradient hook on each output that requires grad, so only gradients that are really propagated are counted:
``2 · rows · in · out`` for the input gradient (when the input requires grad) plus the same again for the weight
gradient (when the weight requires grad — never in this project's editors, whose models are frozen).
Not counted: attention score/value products (4·L²·d per layer and sequence; < 2 % here at L ≲ 40 tokens),
norms, activations, softmax and any matmul outside an ``nn.Linear`` (e.g. MEND's hypernetwork, MEMIT's solve —
those are counted analytically by the caller where they matter).
"""

from __future__ import annotations

import time

import torch
from torch import nn


class LinearFlops:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward = 0
        self.backward = 0
        self._handles: list = []

    def reset(self) -> None:
        self.forward = 0
        self.backward = 0

    def __enter__(self) -> "LinearFlops":
        for _name, mod in self.model.named_modules():
            if isinstance(mod, nn.Linear):
                self._handles.append(mod.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, mod: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        rows = x.numel() // x.shape[-1]
        flops = 2 * rows * mod.in_features * mod.out_features
        self.forward += flops
        if isinstance(output, torch.Tensor) and output.requires_grad:
            per = (flops if x.requires_grad else 0) + (flops if mod.weight.requires_grad else 0)

            def on_grad(grad: torch.Tensor, per: int = per) -> None:
                self.backward += per

            output.register_hook(on_grad)


def matmul_gflops(n: int = 1024, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``repeats`` rate of ``torch.matmul`` of two n×n matrices (GFLOP/s, 2n³ FLOPs each)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def matmul_rate(n: int = 1024, repeats: int = 20) -> dict[str, float]:
    """float32 best-of and median GFLOP/s (the median is the fairer rate on a shared machine) and float64 best-of."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    times.sort()
    flops = 2 * n**3
    return {
        "n": n,
        "repeats": repeats,
        "float32_gflops_best": flops / times[0] / 1e9,
        "float32_gflops_median": flops / times[len(times) // 2] / 1e9,
        "float64_gflops_best": matmul_gflops(n, max(3, repeats // 4), torch.float64),
    }
