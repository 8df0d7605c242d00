"""The state of one sequential-editing run, owned by the editing loop and read by its callbacks.

Counting: ``requests_seen`` is the position in the edit stream (every request of every step, applied or
rejected) and is the x-axis of every curve, log and ``eval_at``/``every_n_edits`` cadence; ``edits_applied``
counts only the requests of applied steps. A rejected step (non-finite update) consumes its requests without
changing the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prune_lit.contracts.records import EditRequest, EditResult


def crossed(previous: int, current: int, every: int) -> bool:
    """True when a count moving from ``previous`` to ``current`` passed a multiple of ``every`` (a batch may jump past it)."""
    if every < 1:
        raise ValueError(f"a cadence must be >= 1, got {every}")
    return current // every > previous // every


def crossed_any(previous: int, current: int, marks: list[int]) -> bool:
    """True when ``previous < m <= current`` for some mark (the explicit ``eval_at`` lists)."""
    return any(previous < m <= current for m in marks)


@dataclass
class EditState:
    """Everything a run knows between edit steps.

    ``original_weights``: W_0 of every matrix the editor may touch (``{param_name: [out, in] float32}``, CPU or the
    model's device), snapshotted before the first edit; restraint and diagnostics measure ΔW = W − W_0 against it.
    ``history``: one row per evaluation point (``{"num_edits": n, "edits": {...}, ...}``).
    """

    model: nn.Module
    tokenizer: Any
    original_weights: dict[str, torch.Tensor]
    requests_seen: int = 0
    edits_applied: int = 0
    steps: int = 0
    rejected_steps: int = 0
    last_result: EditResult | None = None
    last_batch_size: int = 0
    edited: list[EditRequest] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def previous_requests_seen(self) -> int:
        """The stream position before the last step (for "did this step cross a multiple of k")."""
        return self.requests_seen - self.last_batch_size

    @property
    def last_step_applied(self) -> bool:
        return self.last_result is not None and self.last_result.applied

    def record_step(self, batch: list[EditRequest], result: EditResult, seconds: float) -> None:
        """Count one edit step (applied or rejected)."""
        self.last_result = result
        self.last_batch_size = len(batch)
        self.edited.extend(batch)
        self.requests_seen += len(batch)
        self.steps += 1
        self.step_seconds.append(seconds)
        if result.applied:
            self.edits_applied += len(batch)
        else:
            self.rejected_steps += 1

    def row(self, n: int | None = None) -> dict[str, Any]:
        """The history row of evaluation point ``n`` (default: now), created on first use."""
        n = self.requests_seen if n is None else n
        if not self.history or self.history[-1]["num_edits"] != n:
            self.history.append({"num_edits": n})
        return self.history[-1]

    def counters(self) -> dict[str, Any]:
        """The plain counters (for checkpoints and results.json)."""
        return {
            "requests_seen": self.requests_seen,
            "edits_applied": self.edits_applied,
            "steps": self.steps,
            "rejected_steps": self.rejected_steps,
        }
