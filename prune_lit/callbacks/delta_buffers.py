"""ΔW = W − W₀ of each edited matrix, formed into one reused buffer per matrix."""

from __future__ import annotations

import torch


class DeltaBuffers:
    """``delta(name, w, w0)`` writes ``W − W₀`` (float32) into a buffer kept for ``name`` and returns it.

    Restraint and diagnostics form ΔW of every edited matrix after every edit. A fresh ``[m, n]`` tensor each time
    is handed back to the OS when freed and faulted in again on the next pass: ~2 ms of a ~13 ms PRUNE step at
    576×1536 (docs/benchmarks.md). The values are those of ``w.float() − w0``; the tensor returned is overwritten by
    the next call for the same name, so callers must not keep it. Not part of any checkpoint.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def delta(self, name: str, w: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
        """``[m, n]`` float32 ``w − w0`` (``w`` of any float dtype, ``w0`` float32 on ``w``'s device)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != w.shape or buf.device != w.device:
            buf = self._buffers[name] = torch.empty(w.shape, dtype=torch.float32, device=w.device)
        return torch.sub(w.float(), w0, out=buf)
