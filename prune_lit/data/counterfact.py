"""CounterFact (Meng et al., 2022) in the flat EasyEdit/MEND format, as `EditRequest`s; also a user's own
facts in the same format (``.json`` list or ``.jsonl``), where only ``prompt``, ``subject``, ``target_new``
are required."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from prune_lit.data.edit_io import EditDataError, load_split, make_request, parse_file, read_records, require, select, str_or_list
from prune_lit.data.requests import EditRequest

log = logging.getLogger(__name__)

FACT_FILE_SUFFIXES = (".json", ".jsonl")
REQUIRED_FACT_FIELDS = ("prompt", "subject", "target_new")
OPTIONAL_FACT_FIELDS = ("case_id", "ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth")

COUNTERFACT_FILES: dict[str, str] = {
    "edit": "counterfact/counterfact-edit.json",
    "train": "counterfact/counterfact-train.json",
    "val": "counterfact/counterfact-val.json",
}


def parse_counterfact_record(record: dict[str, Any], index: int, where: str) -> EditRequest:
    """One flat record -> `EditRequest`. ``rephrase_prompt`` / ``locality_*`` may be a string or a list.

    A single locality answer is shared by every locality prompt (CounterFact neighbours share the true object).
    """
    return _parse_flat(record, index, where, optional=False)


def parse_fact_record(record: dict[str, Any], index: int, where: str) -> EditRequest:
    """A user's fact: a flat CounterFact record whose only required fields are ``prompt``, ``subject`` and
    ``target_new``. Without ``case_id`` the record index is used; without ``ground_truth`` efficacy and
    generalization are not scored; a ``locality_prompt`` needs its ``locality_ground_truth``."""
    return _parse_flat(record, index, where, optional=True)


def _parse_flat(record: dict[str, Any], index: int, where: str, optional: bool) -> EditRequest:
    def has(key: str) -> bool:
        return not optional or record.get(key) is not None

    case_id = require(record, "case_id", (int, str), where) if has("case_id") else index
    if isinstance(case_id, bool):
        raise EditDataError(f"{where}: field 'case_id' should be int/str, got bool")
    prompt = require(record, "prompt", str, where)
    subject = require(record, "subject", str, where)
    target_new = require(record, "target_new", str, where).strip()
    ground_truth = require(record, "ground_truth", str, where).strip() if has("ground_truth") else ""
    rephrase = str_or_list(record, "rephrase_prompt", where) if has("rephrase_prompt") else ()
    loc_prompts = str_or_list(record, "locality_prompt", where) if has("locality_prompt") else ()
    if loc_prompts and not has("locality_ground_truth"):
        raise EditDataError(f"{where}: field 'locality_prompt' needs 'locality_ground_truth' (the answer the model should keep)")
    loc_answers = tuple(a.strip() for a in str_or_list(record, "locality_ground_truth", where)) if has("locality_ground_truth") else ()
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


def is_fact_file(dataset: str) -> bool:
    """Whether ``dataset`` names a user's fact file (``.json`` / ``.jsonl``) rather than a benchmark."""
    return str(dataset).lower().endswith(FACT_FILE_SUFFIXES)


def load_fact_file(path: str | os.PathLike, limit: int | None = None, seed: int = 0, shuffle: bool = False) -> list[EditRequest]:
    """A user's facts from a ``.json`` list or ``.jsonl`` file of flat CounterFact records (see
    `parse_fact_record`), in file order or ``seed``-shuffled; at most ``limit`` of them.

    Raises `EditDataError` naming the file and record on a malformed record, a repeated ``case_id``, or a
    missing or empty file; unknown fields are logged once and ignored.
    """
    path = Path(path)
    if not is_fact_file(str(path)):
        raise EditDataError(f"{path}: a fact file must end in .json or .jsonl")
    requests = parse_file(path, parse_fact_record)
    if not requests:
        raise EditDataError(f"{path}: holds no records")
    first_seen: dict[int | str, int] = {}
    for i, r in enumerate(requests):
        if r.case_id in first_seen:
            raise EditDataError(f"{path}: record {i}: case_id {r.case_id!r} repeats record {first_seen[r.case_id]}'s (case ids must be unique)")
        first_seen[r.case_id] = i
    _warn_unknown_fields(path)
    return select(requests, limit, seed, shuffle)


def _warn_unknown_fields(path: Path) -> None:
    known = set(REQUIRED_FACT_FIELDS) | set(OPTIONAL_FACT_FIELDS)
    unknown = sorted({k for record, _ in read_records(path) if isinstance(record, dict) for k in record} - known)
    if unknown:
        log.warning("%s: ignoring unknown field(s) %s (known: %s)", path, unknown, sorted(known))
