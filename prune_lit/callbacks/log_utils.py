"""Per-edit-step logging shared by the module and callbacks (``self.log`` aggregates per epoch in test)."""

from __future__ import annotations

from pathlib import Path

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
    """The folder of this run's logs (``logs/<name>/version_<n>``); results files go there."""
    d = Path(trainer.log_dir) if trainer.log_dir else Path("logs")
    d.mkdir(parents=True, exist_ok=True)
    return d
