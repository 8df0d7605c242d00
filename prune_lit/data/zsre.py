"""zsRE in the MEND format (as EasyEdit uses it), as `EditRequest`s."""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from prune_lit.data.edit_io import EditDataError, load_split, make_request, require
from prune_lit.data.requests import EditRequest

log = logging.getLogger(__name__)

ZSRE_FILES: dict[str, str] = {
    "eval": "zsre/zsre_mend_eval_portability_gpt4.json",
    "train": "zsre/zsre_mend_train-1k.json",
}


def parse_zsre_record(record: dict[str, Any], index: int, where: str) -> EditRequest | None:
    """One MEND zsRE record -> `EditRequest` (``case_id`` = record index); None for an empty ``alt``.

    ``src`` is the prompt, ``alt`` the new target, ``answers[0]`` the ground truth, ``rephrase`` the one
    paraphrase; ``loc`` keeps its ``"nq question: "`` prefix and is fed verbatim, as EasyEdit does.
    Records with an empty ``alt`` (two in the 1k train file) are skipped, also as EasyEdit does.
    """
    prompt = require(record, "src", str, where)
    subject = require(record, "subject", str, where)
    target_new = require(record, "alt", str, where).strip()
    answers = require(record, "answers", list, where)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise EditDataError(f"{where}: field 'answers' should be a non-empty list of strings")
    rephrase = require(record, "rephrase", str, where)
    loc = require(record, "loc", str, where)
    loc_ans = require(record, "loc_ans", str, where).strip()
    if not target_new:
        log.debug("%s: empty 'alt', skipped", where)
        return None
    return make_request(
        where,
        case_id=index,
        prompt=prompt,
        subject=subject,
        target_new=target_new,
        ground_truth=answers[0].strip(),
        rephrase_prompts=(rephrase,),
        locality_prompts=(loc,),
        locality_answers=(loc_ans,),
    )


def load_zsre(
    split: Literal["eval", "train"] = "eval",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> list[EditRequest]:
    """zsRE requests of ``split`` in file order, or ``seed``-shuffled; at most ``limit`` of them.

    Raises `EditDataError` naming the file and record index on a malformed record.
    """
    return load_split(ZSRE_FILES, "zsRE", split, parse_zsre_record, data_dir, limit, seed, shuffle)
