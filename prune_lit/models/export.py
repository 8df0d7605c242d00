"""Saving an (edited) model as a Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` loads."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def check_export_path(path: str | os.PathLike) -> None:
    """Raise FileExistsError unless ``path`` is free (absent, or an empty directory): a run can check this
    before editing rather than fail at the end."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"export path {str(path)!r} exists and is not an empty directory; choose a new one or remove it")


def export_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, path: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors + config + generation config) and ``tokenizer`` (unless None) to the directory ``path``.

    Atomic: everything is written to a temporary sibling directory that is renamed to ``path`` only when
    complete, so ``path`` never holds a half-written model. Raises FileExistsError when ``path`` exists and is
    not an empty directory (nothing is overwritten). Returns ``path``.
    """
    path = Path(path)
    check_export_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            path.rmdir()  # the empty directory checked above
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("model exported to %s", path)
    return path
