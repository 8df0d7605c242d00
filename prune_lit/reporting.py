"""Per-edit-step logging shared by the module and callbacks (``self.log`` aggregates per epoch in test)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L


def log_scalars(trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
    """Write scalars at x = ``step`` (the cumulative edit count) to every logger the trainer has."""
    for logger in trainer.loggers:
        logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_figure(trainer: L.Trainer, tag: str, figure, step: int) -> None:
    """Add a matplotlib figure to TensorBoard loggers (others are skipped)."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure(tag, figure, global_step=step)


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run's logs (``logs/<name>/version_<n>``); results files go there.

    Read from the logger itself: ``trainer.log_dir`` is a collective under DDP, and files are written by rank 0 alone.
    """
    logger = trainer.logger
    where = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) if logger is not None else None
    d = Path(where) if where else Path(trainer.default_root_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json_atomic(path: Path, data: Any, indent: int = 2, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``data`` as UTF-8 JSON to ``path`` via a temporary file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=indent, ensure_ascii=False, default=default) + "\n", encoding="utf-8")
    tmp.replace(path)
