"""Resumable checkpoints of a sequential-editing run: what is saved, what must match to resume, how a run resumes.

A checkpoint (`prune_lit.modules.run_checkpoint` writes and reads the files) holds the edited matrices, the
counters, the edited case ids, the history and results so far, the editor's and every edit-step callback's
state, and the RNG. It resumes only a run with the same fingerprint (model, editor settings, edited matrices,
batch size, restraints) whose edit stream starts with the checkpoint's edited cases.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L

from prune_lit.contracts import EditRequest, EditState, EditStepCallback, SequentialEditor, edit_step_callbacks, restraints
from prune_lit.models.arch import get_weight, set_weight
from prune_lit.modules.run_checkpoint import (
    RunCheckpoint,
    RunCheckpointError,
    check_fingerprint,
    latest_checkpoint,
    load_run_checkpoint,
    restore_rng,
    save_run_checkpoint,
)

log = logging.getLogger(__name__)


class RunCheckpoints:
    """The checkpoints of one run in ``<checkpoint_dir>/<run_name>/`` (``checkpoint_dir`` None: none are written).

    Args:
        trainer: the run's trainer (its callbacks, logger name and rank).
        editor: the run's editor (its fingerprint and state).
        state: the run's state.
        model_name, dtype: as the editing module was given them (part of the fingerprint).
        batch_size: requests per edit step (part of the fingerprint).
        checkpoint_dir, run_name: where (``run_name`` None: the logger's name, else ``edit_run``).
    """

    def __init__(self, trainer: L.Trainer, editor: SequentialEditor, state: EditState, model_name: str, dtype: str,
                 batch_size: int, checkpoint_dir: str | None, run_name: str | None) -> None:
        self.trainer, self.editor, self.state = trainer, editor, state
        self.model_name, self.dtype, self.batch_size = model_name, dtype, batch_size
        self.folder: Path | None = None
        if checkpoint_dir is not None:
            logger_name = trainer.logger.name if trainer.logger is not None else None
            self.folder = Path(checkpoint_dir) / str(run_name or logger_name or "edit_run")

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint to continue this run (the edit count may grow)."""
        weights = self.state.original_weights
        fp = {
            "model_name": self.model_name,
            "dtype": self.dtype,
            "editor": self.editor.fingerprint(),
            "weights": {n: list(w.shape) for n, w in weights.items()},
            "w0_abs_sum": {n: float(w.double().abs().sum()) for n, w in weights.items()},
            "batch_size": self.batch_size,
            "restraint": [r.fingerprint() for r in restraints(self.trainer)],
        }
        return json.loads(json.dumps(fp, default=str))  # as it reads back from state.json

    def to_resume(self, resume: bool, requests: list[EditRequest]) -> RunCheckpoint | None:
        """The checkpoint this run continues from (None: it starts over); an error if ``resume`` cannot be honoured."""
        folder = self.folder
        if not resume:
            if folder is not None and latest_checkpoint(folder) is not None:
                log.warning("starting over: the checkpoints in %s will be replaced (resume: true continues them)", folder)
            return None
        if folder is None:
            raise RunCheckpointError("resume: true needs checkpoint_dir")
        latest = latest_checkpoint(folder)
        if latest is None:
            raise RunCheckpointError(f"resume: true, but {folder} holds no checkpoint (no {folder / 'latest'})")
        ckpt = load_run_checkpoint(latest)
        check_fingerprint(ckpt, self.fingerprint())
        ids = ckpt.state.get("edited_case_ids", [])
        stream = [r.case_id for r in requests[: len(ids)]]
        if json.loads(json.dumps(stream, default=str)) != ids:
            raise RunCheckpointError(
                f"{latest / 'state.json'}: its {len(ids)} edited cases are not the first {len(ids)} of this run's edit stream "
                f"(another dataset, split, seed or order?)"
            )
        return ckpt

    def restore(self, ckpt: RunCheckpoint, requests: list[EditRequest]) -> dict[str, Any]:
        """Put ``ckpt``'s weights, counters, editor and callback state and RNG back; returns its results so far."""
        state = self.state
        missing = sorted(set(state.original_weights) ^ set(ckpt.weights))
        if missing:
            raise RunCheckpointError(f"{ckpt.path / 'weights.safetensors'}: edited matrices differ from this editor's: {missing}")
        for name, w in ckpt.weights.items():
            target = get_weight(state.model, name)
            set_weight(state.model, name, w.to(target.device, target.dtype))
        c = ckpt.state["counters"]
        state.requests_seen, state.edits_applied = int(c["requests_seen"]), int(c["edits_applied"])
        state.steps, state.rejected_steps = int(c["steps"]), int(c["rejected_steps"])
        state.edited = list(requests[: state.requests_seen])
        state.step_seconds = [float(s) for s in ckpt.state.get("step_seconds", [])]
        state.history = list(ckpt.state.get("history", []))
        self.editor.load_state_dict(ckpt.state.get("editor_state", {}))
        saved_cbs = ckpt.state.get("callbacks", {})
        for key, cb in self._callback_keys().items():
            if key in saved_cbs:
                cb.load_state_dict(saved_cbs[key])
        restore_rng(ckpt)
        log.info("resumed from %s: %d requests seen in %d steps", ckpt.path, state.requests_seen, state.steps)
        return dict(ckpt.state.get("results", {}))

    def save(self, results: dict[str, Any]) -> None:
        """Write a checkpoint of the run now (rank 0; nothing without a folder)."""
        if self.folder is None or not self.trainer.is_global_zero:
            return
        state = self.state
        doc = {
            "fingerprint": self.fingerprint(),
            "counters": state.counters(),
            "edited_case_ids": [r.case_id for r in state.edited],
            "step_seconds": state.step_seconds,
            "history": state.history,
            "results": results,
            "callbacks": {k: cb.state_dict() for k, cb in self._callback_keys().items()},
        }
        weights = {n: get_weight(state.model, n) for n in state.original_weights}
        path = save_run_checkpoint(self.folder, weights, doc, self.editor.state_dict())
        log.info("checkpoint after %d edits: %s", state.requests_seen, path)

    def _callback_keys(self) -> dict[str, EditStepCallback]:
        """Each edit-step callback under its class name (``#2``, ``#3`` for repeats), the key of its saved state."""
        keys: dict[str, EditStepCallback] = {}
        for cb in edit_step_callbacks(self.trainer):
            base = type(cb).__qualname__
            key, i = base, 1
            while key in keys:
                i += 1
                key = f"{base}#{i}"
            keys[key] = cb
        return keys
