"""Checks of a run's settings and edit requests that need the loaded model or the edit stream's length.

Each raises `EditDataError` / `ValueError` with one line that names the setting or the record, before any edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from prune_lit.data.edit_io import EditDataError
from prune_lit.data.requests import EditRequest

# ROME/MEMIT prepend a context template of up to ~10 tokens and append the target: keep room for both.
CONTEXT_MARGIN = 32


def check_marks(num_requests: int, **marks: Sequence[int]) -> None:
    """Refuse edit counts (``eval_at=[...]`` etc.) outside 1..num_requests: they would never be reached."""
    for name, values in marks.items():
        bad = sorted(v for v in values if not 1 <= int(v) <= num_requests)
        if bad:
            raise ValueError(f"{name} {bad} outside 1..{num_requests} (the run edits {num_requests} requests); drop them or raise num_edits")


def context_length(model: nn.Module) -> int | None:
    """The model's maximum sequence length in tokens (None when its config does not say)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_request_lengths(requests: Sequence[EditRequest], tokenizer: Any, model: nn.Module, margin: int = CONTEXT_MARGIN) -> None:
    """Refuse a request whose prompt (or rephrase/locality prompt) plus its target does not fit the model's context.

    A byte-level tokenizer gives at most one token per UTF-8 byte, so only texts longer in bytes than the limit are
    tokenized (a 10 MB prompt costs one tokenization, not a 1.5 TB allocation later).
    """
    limit = context_length(model)
    if limit is None:
        return
    budget = limit - margin
    for req in requests:
        target = max(len(req.target_new.encode()), len(req.ground_truth.encode())) + 1
        texts = [("prompt", req.prompt), *(("rephrase_prompts", t) for t in req.rephrase_prompts),
                 *(("locality_prompts", t) for t in req.locality_prompts)]
        for field, text in texts:
            if len(text.encode()) + target <= budget:
                continue
            n = len(tokenizer(text)["input_ids"]) + len(tokenizer(" " + req.target_new)["input_ids"])
            if n > budget:
                raise EditDataError(
                    f"case {req.case_id}: {field} of {n} tokens (with the target) does not fit the model's context of "
                    f"{limit} tokens (less {margin} for templates); shorten or drop that record"
                )
