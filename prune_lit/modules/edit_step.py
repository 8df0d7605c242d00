"""One step of the sequential-editing loop: edit (with update-time restraint), count, log, run the step's callbacks.

The order within a step (docs/architecture.md):

1. the editor computes the step's update on the current weights (rank 0);
2. update-time restraints rewrite it (`Restraint.restrain_update`), then the editor applies it, all or nothing,
   and the result is broadcast to the other ranks;
3. ``RESTRAIN``-phase callbacks (PRUNE) may rewrite the edited matrices (`EditStepCallback.on_edit_step`);
4. ``MEASURE``-phase callbacks (spectral diagnostics) read them.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from prune_lit.contracts import (
    EditRequest,
    EditResult,
    EditState,
    MatrixContext,
    Restraint,
    SequentialEditor,
    UpdateHook,
    edit_step_callbacks,
    restraints,
)
from prune_lit.models.arch import get_weight
from prune_lit.modules.distributed import broadcast_step, world
from prune_lit.reporting import log_scalars

log = logging.getLogger(__name__)


def update_hook(update_restraints: list[Restraint], editor: SequentialEditor, state: EditState) -> UpdateHook | None:
    """The step's `UpdateHook`: every restraint's `restrain_update` in turn, each matrix with its `MatrixContext`
    (None without restraints)."""
    if not update_restraints:
        return None

    def restrain(deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context = {
            name: MatrixContext(get_weight(state.model, name), state.original_weights[name], editor.key_second_moment(name))
            for name in deltas
        }
        for restraint in update_restraints:
            deltas = restraint.restrain_update(deltas, context)
        return deltas

    return restrain


def run_edit_step(trainer: L.Trainer, editor: SequentialEditor, state: EditState, batch: list[EditRequest]) -> EditResult:
    """Edit ``batch`` into ``state.model`` (steps 1–4 of the module doc) and record it in ``state``."""
    start = time.perf_counter()
    result: EditResult | None = None
    if world(trainer)[0] == 0:
        # The evaluation loop runs under no_grad; ROME's value optimisation and MEND's fine-tuning gradient
        # need autograd.
        with torch.enable_grad():
            result = editor.edit(state.model, state.tokenizer, batch, update_hook(restraints(trainer), editor, state))
    result = broadcast_step(trainer, state.model, result)
    state.record_step(batch, result, time.perf_counter() - start)
    if not result.applied:
        log.warning("edit step %d (cases %s) was rejected", state.steps, [r.case_id for r in batch])
    stats = {f"edit/{k}": v for k, v in result.stats.scalars().items()}
    stats.update({"edit/seconds": state.step_seconds[-1], "edit/applied": float(result.applied)})
    log_scalars(trainer, stats, state.requests_seen)

    for cb in edit_step_callbacks(trainer):
        cb.on_edit_step(trainer, state)
    return result


def end_edits(trainer: L.Trainer, state: EditState) -> bool:
    """After the last step: every callback's `EditStepCallback.on_edits_end` in phase order (an at-end restraint
    acts here); True when that changed the edited weights."""
    before_end = {n: get_weight(state.model, n).clone() for n in state.original_weights}
    for cb in edit_step_callbacks(trainer):
        cb.on_edits_end(trainer, state)
    return any(not torch.equal(w, get_weight(state.model, n)) for n, w in before_end.items())
