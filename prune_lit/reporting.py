"""Per-edit-step logging shared by the module and callbacks (``self.log`` aggregates per epoch in test)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L


def code_commit() -> str | None:
    """The git commit of the code running (12 hex digits, ``+dirty`` when tracked files differ from it), or None
    outside a git checkout (an installed package) or without git."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


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


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN: a metric without cases; ±inf) replaced by None, so that it is
    strict JSON (``null``) that every parser accepts."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json_atomic(path: Path, data: Any, indent: int = 2, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``data`` as strict UTF-8 JSON (non-finite floats as ``null``) to ``path`` via a temporary file and a
    rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if default is not None:  # objects the encoder does not know become numbers/strings first, then non-finite ones null
        data = json.loads(json.dumps(data, default=default))
    text = json.dumps(strict_json(data), indent=indent, ensure_ascii=False, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)


# What a run's log folder holds before it has measured anything: the saved config, hparams, TensorBoard's header.
_SETUP_ONLY = ("config.yaml", "hparams.yaml", "events.out.tfevents")


class RemoveRunFolderOnFailure(L.Callback):
    """When a run fails before its module did any edit step (a refused resume, a bad setting, a missing file),
    remove the ``logs/<name>/version_<n>/`` folder it created, if that holds only set-up files: a failed start
    leaves no empty run folder behind. The module reports progress through ``edit_steps_done``."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero or getattr(pl_module, "edit_steps_done", 0):
            return
        logger = trainer.logger
        where = getattr(logger, "log_dir", None) if logger is not None else None
        folder = Path(where) if where else None
        if folder is None or not folder.is_dir():
            return
        if all(p.is_file() and p.name.startswith(_SETUP_ONLY) for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # logs/<name>/ too, when this was its only run
