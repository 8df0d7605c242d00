"""CounterFact (Meng et al., 2022) in the flat EasyEdit/MEND format, as `EditRequest`s."""

from __future__ import annotations

import os
from typing import Any, Literal

from prune_lit.data.edit_io import EditDataError, load_split, make_request, require, str_or_list
from prune_lit.data.requests import EditRequest

COUNTERFACT_FILES: dict[str, str] = {
    "edit": "counterfact/counterfact-edit.json",
    "train": "counterfact/counterfact-train.json",
    "val": "counterfact/counterfact-val.json",
}


def parse_counterfact_record(record: dict[str, Any], index: int, where: str) -> EditRequest:
    """One flat record -> `EditRequest`. ``rephrase_prompt`` / ``locality_*`` may be a string or a list.

    A single locality answer is shared by every locality prompt (CounterFact neighbours share the true object).
    """
    case_id = require(record, "case_id", (int, str), where)
    if isinstance(case_id, bool):
        raise EditDataError(f"{where}: field 'case_id' should be int/str, got bool")
    prompt = require(record, "prompt", str, where)
    subject = require(record, "subject", str, where)
    target_new = require(record, "target_new", str, where).strip()
    ground_truth = require(record, "ground_truth", str, where).strip()
    rephrase = str_or_list(record, "rephrase_prompt", where)
    loc_prompts = str_or_list(record, "locality_prompt", where)
    loc_answers = tuple(a.strip() for a in str_or_list(record, "locality_ground_truth", where))
    if len(loc_answers) == 1 and len(loc_prompts) > 1:
        loc_answers = loc_answers * len(loc_prompts)
    if len(loc_answers) != len(loc_prompts):
        raise EditDataError(f"{where}: {len(loc_prompts)} locality prompts but {len(loc_answers)} locality answers")
    return make_request(
        where,
        case_id=case_id,
        prompt=prompt,
        subject=subject,
        target_new=target_new,
        ground_truth=ground_truth,
        rephrase_prompts=rephrase,
        locality_prompts=loc_prompts,
        locality_answers=loc_answers,
    )


def load_counterfact(
    split: Literal["edit", "train", "val"] = "edit",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
) -> list[EditRequest]:
    """CounterFact requests of ``split`` in file order, or ``seed``-shuffled; at most ``limit`` of them.

    Raises `EditDataError` naming the file and record index on a malformed record.
    """
    return load_split(COUNTERFACT_FILES, "CounterFact", split, parse_counterfact_record, data_dir, limit, seed, shuffle)
