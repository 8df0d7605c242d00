"""Shared plumbing of the edit-dataset loaders: cached parsing, field checks that name the culprit, subsets."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prune_lit.data.paths import resolve_data_file
from prune_lit.data.requests import EditRequest

log = logging.getLogger(__name__)

# (record, index, "file: record i") -> EditRequest, or None to skip the record (the parser logs why).
RecordParser = Callable[[dict[str, Any], int, str], "EditRequest | None"]


class EditDataError(ValueError):
    """A malformed edit-dataset file or record; the message names the file and the record index."""


def require(record: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    """``record[key]``, checked to exist and be of ``types``; ``where`` prefixes the error (file + index)."""
    if key not in record:
        raise EditDataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, types):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise EditDataError(f"{where}: field {key!r} should be {names}, got {type(value).__name__}")
    return value


def str_or_list(record: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    """A field that may be one string or a list of strings, as a tuple."""
    value = require(record, key, (str, list), where)
    if isinstance(value, str):
        return (value,)
    if not all(isinstance(v, str) for v in value):
        raise EditDataError(f"{where}: field {key!r} should hold only strings")
    return tuple(value)


def make_request(where: str, **fields: Any) -> EditRequest:
    """Build an `EditRequest`, turning its own validation errors into `EditDataError` that name the record."""
    if fields["subject"] not in fields["prompt"]:
        raise EditDataError(f"{where}: subject {fields['subject']!r} does not occur in prompt {fields['prompt']!r}")
    try:
        return EditRequest(**fields)
    except ValueError as err:
        raise EditDataError(f"{where}: {err}") from err


def read_records(path: str | os.PathLike) -> list[tuple[Any, str]]:
    """``(record, "file: record i")`` for every record of a JSON list file, or of a ``.jsonl`` file (one
    object per line; blank lines skipped, the location then also names the line)."""
    try:
        with open(path, encoding="utf-8") as f:
            if str(path).endswith(".jsonl"):
                out = []
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}: record {len(out)} (line {line_no})"
                    try:
                        out.append((json.loads(line), where))
                    except json.JSONDecodeError as err:
                        raise EditDataError(f"{where}: not valid JSON ({err})") from err
                return out
            raw = json.load(f)
    except UnicodeDecodeError as err:
        raise EditDataError(f"{path}: not UTF-8 text ({err})") from err
    except json.JSONDecodeError as err:
        raise EditDataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, list):
        raise EditDataError(f"{path}: expected a JSON list of records, got {type(raw).__name__}")
    return [(record, f"{path}: record {i}") for i, record in enumerate(raw)]


@functools.lru_cache(maxsize=8)
def _parse_cached(path: str, mtime_ns: int, size: int, parser: RecordParser) -> tuple[EditRequest, ...]:
    # mtime/size are part of the key so an edited file is re-read, never served stale.
    records = read_records(path)
    out = []
    for i, (record, where) in enumerate(records):
        if not isinstance(record, dict):
            raise EditDataError(f"{where}: expected an object, got {type(record).__name__}")
        req = parser(record, i, where)
        if req is not None:
            out.append(req)
    if len(out) < len(records):
        log.info("%s: skipped %d of %d records", path, len(records) - len(out), len(records))
    return tuple(out)


def parse_file(path: Path, parser: RecordParser) -> tuple[EditRequest, ...]:
    """All requests of a JSON list (or ``.jsonl``) file, parsed once per (file version, parser) and cached."""
    try:
        st = path.stat()
    except FileNotFoundError as err:
        raise EditDataError(f"{path}: no such file") from err
    return _parse_cached(str(path), st.st_mtime_ns, st.st_size, parser)


def select(requests: Sequence[EditRequest], limit: int | None, seed: int, shuffle: bool) -> list[EditRequest]:
    """The first ``limit`` requests, after a ``seed``-ed shuffle when ``shuffle``: the same call, the same list."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    items = list(requests)
    if shuffle:
        random.Random(seed).shuffle(items)
    return items if limit is None else items[:limit]


def load_split(
    files: dict[str, str],
    dataset: str,
    split: str,
    parser: RecordParser,
    data_dir: str | os.PathLike | None,
    limit: int | None,
    seed: int,
    shuffle: bool,
) -> list[EditRequest]:
    """The requests of ``files[split]`` (a data-dir relative path) via `parse_file` and `select`."""
    if split not in files:
        raise ValueError(f"unknown {dataset} split {split!r}; expected one of {sorted(files)}")
    return select(parse_file(resolve_data_file(files[split], data_dir), parser), limit, seed, shuffle)
