"""What the editing loop does differently on several devices (Lightning DDP; one process per device).

Sequential edits are never split: rank 0 computes each step's update and broadcasts it, and every rank
applies the same ΔW, so the model copies stay identical by construction (whatever a GPU kernel's
nondeterminism would do to a value search run on every rank). Evaluation work is split: each rank scores
every ``world_size``-th case and the metrics (torchmetrics, summed hit/total states) reduce across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from prune_lit.contracts import EditResult, EditStats
from prune_lit.editors.base import apply_deltas
from prune_lit.models.arch import get_weight

T = TypeVar("T")


def world(trainer: L.Trainer | None) -> tuple[int, int]:
    """``(global_rank, world_size)``; ``(0, 1)`` without a trainer or a process group."""
    if trainer is None or trainer.world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return trainer.global_rank, trainer.world_size


def shard(items: Sequence[T], trainer: L.Trainer | None) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th one, starting at its rank (stable as a list grows)."""
    rank, size = world(trainer)
    return list(items[rank::size])


def broadcast_object(trainer: L.Trainer | None, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    if world(trainer)[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_step(trainer: L.Trainer | None, model: nn.Module, result: EditResult | None) -> EditResult:
    """Rank 0's edit step, applied on every other rank; returns the step's result on every rank.

    On rank 0 ``result`` is what the editor returned (its update already applied); elsewhere it is None.
    """
    rank, size = world(trainer)
    if size == 1:
        assert result is not None
        return result
    # The thin factors (MEND) are small: they travel pickled, so every rank's factored restraint takes the same path.
    header = None if result is None else (result.applied, result.stats, {n: tuple(d.shape) for n, d in result.deltas.items()},
                                          {n: (a.cpu(), b.cpu()) for n, (a, b) in result.factors.items()})
    applied, stats, shapes, factors = broadcast_object(trainer, header)
    deltas: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        w = get_weight(model, name)
        t = result.deltas[name].to(w.device, torch.float32).contiguous() if rank == 0 else torch.empty(shape, dtype=torch.float32, device=w.device)
        dist.broadcast(t, src=0)
        deltas[name] = t
    if rank == 0:
        return result
    if applied and not apply_deltas(model, deltas):
        raise RuntimeError("rank 0 applied an update that this rank rejects; the model copies would diverge")
    return EditResult(deltas=deltas, applied=applied, stats=stats if isinstance(stats, EditStats) else EditStats(), factors=factors)
