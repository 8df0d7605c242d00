'''The restraint contract: a plug-in that keeps an editor's changes in check, at one or more of three moments.

A `Restraint` is an `EditStepCallback` of phase ``RESTRAIN``. The loop calls it at these moments, and a
restraint overrides the hooks of the moments it acts at (the others do nothing):

(a) **update time** — `restrain_update`: each step's per-matrix ΔW, after the editor computed it and before it
    is applied (as SPHERE does), with a `MatrixContext` per matrix (W now, W₀, the editor's key second moment C).
    Works with every editor (`prune_lit.editors.Editor.edit` calls it between ``compute_update`` and the apply).
(b) **after each step** — `on_edit_step`: the accumulated ΔW = W − W₀ after every step (or every n steps), by
    rewriting the weights in ``state.model`` (PRUNE per edit).
(c) **at the end** — `on_edits_end`: once, after the last step, before the final evaluation (PRUNE at N).

Besides: `restrained_copy` (the "restrained at N" curve from one unrestrained run, used when
`restrained_copy_curve` is True), `state_dict` / `load_state_dict` (resumable checkpoints), `fingerprint`
(what must match to resume), and `total_seconds` (wall time spent restraining, reported in results.json).

A minimal update-time restraint, shrinking every update by a constant factor::

    class ScaleUpdates(Restraint):
        def __init__(self, factor: float = 0.5) -> None:
            super().__init__()
            self.factor = factor

        def restrain_update(self, deltas, context):
            start = time.perf_counter()
            out = {name: self.factor * d for name, d in deltas.items()}
            self.total_seconds += time.perf_counter() - start
            return out

        def fingerprint(self):
            return {"factor": self.factor}

Put it in a config as ``model.init_args.restraint: {class_path: my_module.ScaleUpdates}``.
'''

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from prune_lit.contracts.callbacks import EditStepCallback, Phase, edit_step_callbacks
from prune_lit.contracts.state import EditState


@dataclass(frozen=True)
class MatrixContext:
    """What an update-time restraint may know about one edited matrix (read-only; do not write these tensors).

    ``weight``: W before this step's update ``[out, in]`` (the model's dtype and device); ``original``: W₀
    ``[out, in]`` float32; ``key_second_moment``: C = E[k kᵀ] ``[in, in]`` of the keys entering this matrix as the
    editor estimated it (ROME, MEMIT and AlphaEdit with ``mom2_adjustment``: float64 on the CPU, as
    `prune_lit.editors.stats.second_moments` returns it), None when the editor has none (MEND). For GPT-2's Conv1D
    layers too, ``weight`` and ΔW are ``[out, in]``: a key k maps as W k.
    """

    weight: torch.Tensor
    original: torch.Tensor
    key_second_moment: torch.Tensor | None = None


class Restraint(EditStepCallback):
    """Base of every restraint; see the module docstring for when each hook runs and a short example.

    Subclasses override the hooks of the moments they act at and `fingerprint`. Every hook that spends time
    adds it to `total_seconds`.
    """

    phase = Phase.RESTRAIN

    def __init__(self) -> None:
        super().__init__()
        self.total_seconds = 0.0

    def restrain_update(self, deltas: dict[str, torch.Tensor], context: dict[str, MatrixContext]) -> dict[str, torch.Tensor]:
        """(a) The step's ``{param_name: ΔW [out, in]}`` → the ΔW to apply, same keys and shapes.

        Called on the process that edits, inside the step, before the update is applied; ``context`` has an entry
        for every key of ``deltas``. Return the input tensor itself for a matrix left alone (that keeps MEND's
        thin factors valid for it). Default: no change.
        """
        return deltas

    @property
    def restrained_copy_curve(self) -> bool:
        """True: the loop also evaluates every evaluation point on `restrained_copy` (an at-end restraint's curve)."""
        return False

    @contextlib.contextmanager
    def restrained_copy(self, state: EditState) -> Iterator[dict[str, int]]:
        """Within the block the edited matrices are restrained as if the run ended now; restored exactly after.

        Yields the number of restrained directions per matrix: all zero means the copy *is* the current model.
        Needed only when `restrained_copy_curve` is True.
        """
        raise NotImplementedError(f"{type(self).__name__} has no restrained copy (restrained_copy_curve must be False)")
        yield {}  # pragma: no cover

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able settings that must match for a checkpoint of a run with this restraint to be resumed."""
        raise NotImplementedError(f"{type(self).__name__} must define fingerprint()")


def restraints(trainer: L.Trainer) -> list[Restraint]:
    """The trainer's restraints, in the order the loop runs them."""
    return [cb for cb in edit_step_callbacks(trainer) if isinstance(cb, Restraint)]
