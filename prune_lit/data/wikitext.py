"""WikiText-2 (raw) as fixed-length token windows, for held-out perplexity probes.

``clean_wikitext`` is the one cleaning of the corpus, for these probes and the key statistics
(``prune_lit.editors.stats``) alike: WikiText's tokenisation artefacts (`` @-@ `` ...) undone, headings and
blank lines dropped. Which split a caller reads matters: the general-ability probes read ``test`` only, so they must not share text with anything
fitted on the corpus.
"""

from __future__ import annotations

import logging
import os
import re

import torch
from transformers import PreTrainedTokenizerBase

from prune_lit.data.paths import resolve_data_file

log = logging.getLogger(__name__)

WIKITEXT_SPLITS = {"test": "corpus/wiki.test.raw", "valid": "corpus/wiki.valid.raw"}
_HEADING = re.compile(r"^\s*=+ .* =+\s*$")


def clean_wikitext(raw: str) -> str:
    """Undo WikiText's tokenisation artefacts (`` @-@ ``, `` @,@ ``, `` @.@ ``) and drop headings/blank lines."""
    out = []
    for line in raw.splitlines():
        if not line.strip() or _HEADING.match(line):
            continue
        out.append(line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".").strip())
    return "\n".join(out)


def load_wikitext(split: str = "test", data_dir: str | os.PathLike | None = None) -> str:
    """The cleaned text of one WikiText-2 raw split (``"test"`` or ``"valid"``)."""
    if split not in WIKITEXT_SPLITS:
        raise ValueError(f"unknown WikiText-2 split {split!r}; expected one of {sorted(WIKITEXT_SPLITS)}")
    return clean_wikitext(resolve_data_file(WIKITEXT_SPLITS[split], data_dir).read_text(encoding="utf-8"))


def token_windows(tokenizer: PreTrainedTokenizerBase, text: str, num_tokens: int, window: int) -> torch.Tensor:
    """The first ``num_tokens`` tokens of ``text`` (no special tokens) as non-overlapping ``[n_windows, window]``.

    ``num_tokens`` is rounded down to whole windows (at least one); fewer tokens in the text give fewer
    windows, with a warning.
    """
    if window < 2:
        raise ValueError(f"window must hold at least 2 tokens, got {window}")
    need = max(num_tokens // window, 1) * window
    n_chars = need * 6  # tokenize a prefix that is long enough (grown if not): tokenizing all 1.3 MB is slow
    while True:
        ids = tokenizer(text[:n_chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= need or n_chars >= len(text):
            break
        n_chars *= 2
    if len(ids) < need:
        if len(ids) < window:
            raise ValueError(f"the text holds {len(ids)} tokens, fewer than one window of {window}")
        log.warning("the text holds %d tokens, fewer than the %d asked for; using %d", len(ids), need, len(ids) // window * window)
        need = len(ids) // window * window
    return torch.tensor(ids[:need], dtype=torch.long).view(-1, window)


def wikitext_windows(
    tokenizer: PreTrainedTokenizerBase,
    num_tokens: int,
    window: int = 256,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """The first ``num_tokens`` tokens of cleaned WikiText-2 ``split`` as ``[n_windows, window]`` token ids."""
    return token_windows(tokenizer, load_wikitext(split, data_dir), num_tokens, window)
