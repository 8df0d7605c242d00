"""Callbacks that take part in an edit step, and the fixed order in which they do.

Lightning runs callbacks' hooks in list order, so "restraint before diagnostics" would depend on how a config
listed them. Instead the editing loop calls `EditStepCallback.on_edit_step` itself, right after each edit,
sorted by `phase`: every ``RESTRAIN`` callback (they may write the edited weights), then every ``MEASURE``
callback (read-only), then the loop's own evaluation and checkpoint. The same order holds at the end of the
stream (`on_edits_end`), before the final evaluation. Position in ``trainer.callbacks`` never matters.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import lightning as L

from prune_lit.contracts.state import EditState


class Phase(IntEnum):
    RESTRAIN = 0  # may write the edited matrices
    MEASURE = 1  # reads only


class EditStepCallback(L.Callback):
    """A callback of the sequential-editing loop. Subclasses set `phase` and override the two hooks.

    `state_dict` / `load_state_dict` (Lightning's callback API) return / take JSON-serialisable values and tensors:
    the loop stores them in its resumable checkpoints.
    """

    phase: Phase = Phase.MEASURE

    def on_edit_step(self, trainer: L.Trainer, state: EditState) -> None:
        """After every edit step (applied or rejected), in phase order."""

    def on_edits_end(self, trainer: L.Trainer, state: EditState) -> None:
        """After the last edit step, before the final evaluation, in phase order."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def edit_step_callbacks(trainer: L.Trainer) -> list[EditStepCallback]:
    """The trainer's `EditStepCallback`s in phase order (stable within a phase)."""
    cbs = [cb for cb in trainer.callbacks if isinstance(cb, EditStepCallback)]
    return sorted(cbs, key=lambda cb: int(cb.phase))
