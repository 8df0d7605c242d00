"""results.json, the record a sequential-editing run leaves: one typed, versioned schema.

The loop (``modules/``) writes it, the analysis (``study_report``, ``compare_runs``) reads it; every key name and
suffix of the file is spelled here and nowhere else. This module imports nothing from ``modules/``, so both may
import it.

Layout (version 1; version 0 = the same keys without ``schema_version``, written before the schema existed)::

    {"schema_version": 1, "model": ..., "editor": ..., "callbacks": [...],
     "num_edits": ..., "edits_applied": ..., "num_steps": ..., "num_rejected_steps": ..., "world_size": ...,
     "seconds_editing": ..., "seconds_per_edit": ..., "seconds_restraint": ..., "restraint_share_of_step": ...,
     "code_commit": ..., "end_restraint_changed_weights": true | false,           # both optional (added later)
     "edits_before": {...}, "probes_before": {...}, "downstream_before": {...},   # the unedited model
     "edits_after": {...}, "probes_after": {...}, "downstream_after": {...},      # the final model
     "history": [{"num_edits": n, "edits": {...}, "probes_restrained": {...}, ...}, ...],
     "edited_case_ids": [...],
     "cost": {"since_edits": 0, "total": {"wall": s, "cpu": s, "calls": 1}, "parts": {"edit_steps": {...}, ...}}}

``cost`` (optional, added within version 1) is `RunCost`: where the run's wall-clock and CPU seconds went.

A section (``edits``, ``probes``, ``downstream``) is a dict of scores whose keys depend on the evaluator (edit
metrics and ``n``; perplexity, KL and ``per_window`` lists; task scores and ``per_example`` lists). A history point
holds each section under a variant name: plain (the run's weights), ``<section>_restrained`` (a copy restrained
as if the run ended there) and ``<section>_before_end_restraint`` (the last point's scores before an at-end
restraint changed the weights).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prune_lit.reporting import write_json_atomic

SCHEMA_VERSION = 1
SECTIONS = ("edits", "probes", "downstream")
RESTRAINED = "_restrained"  # a history point's scores of a restrained copy of the weights
BEFORE_END_RESTRAINT = "_before_end_restraint"  # the last point's scores before an at-end restraint ran
BEFORE, AFTER = "_before", "_after"  # top-level sections: the unedited and the final model

Section = dict[str, Any]


class ResultsSchemaError(ValueError):
    """A results.json this schema cannot read (a newer version, a wrong type, an unknown key)."""


def variant_key(section: str, variant: str = "") -> str:
    """The history key of ``section`` in ``variant`` (``""``, :data:`RESTRAINED` or :data:`BEFORE_END_RESTRAINT`)."""
    return section + variant


@dataclass
class EvalPoint:
    """One evaluation point of the history: the scores after ``num_edits`` requests, by variant key."""

    num_edits: int
    sections: dict[str, Section] = field(default_factory=dict)

    def get(self, section: str, variant: str = "") -> Section | None:
        """The ``section`` scores of ``variant`` at this point, or None where it was not measured."""
        value = self.sections.get(variant_key(section, variant))
        return value if isinstance(value, dict) else None

    def has(self, section: str, variant: str = "") -> bool:
        """Whether this point holds the key of ``section`` in ``variant`` (whatever its value)."""
        return variant_key(section, variant) in self.sections

    def has_variant(self, variant: str) -> bool:
        return any(self.has(s, variant) for s in SECTIONS)

    def to_dict(self) -> dict[str, Any]:
        return {"num_edits": self.num_edits, **self.sections}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> EvalPoint:
        if not isinstance(row, dict) or "num_edits" not in row:
            raise ResultsSchemaError(f"a history point needs num_edits: {str(row)[:80]}")
        return cls(int(row["num_edits"]), {k: v for k, v in row.items() if k != "num_edits"})


@dataclass
class PartCost:
    """Seconds spent in one part of a run: wall clock, this process's CPU time (all its threads), and how often."""

    wall: float = 0.0
    cpu: float = 0.0
    calls: int = 0

    def add(self, other: PartCost) -> None:
        self.wall += other.wall
        self.cpu += other.cpu
        self.calls += other.calls

    def to_dict(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu, "calls": self.calls}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartCost:
        try:
            return cls(float(data["wall"]), float(data["cpu"]), int(data.get("calls", 0)))
        except (KeyError, TypeError, ValueError) as err:
            raise ResultsSchemaError(f"cost part needs wall and cpu seconds, got {data!r}") from err


@dataclass
class RunCost:
    """Where a run's time went, accumulated over all its starts (a resume adds to what its checkpoint held).

    ``parts``: *exclusive* seconds by part name — a part measured inside another (`measure` nests) is not counted
    in the outer one, so the parts add up to at most ``total``; the rest (model loading, data, Lightning) is
    ``total`` − Σ parts. Part names are the run's own: ``edit_steps`` (editor + restraint + diagnostics),
    ``checkpoints``, ``references`` (the unedited model's locality answers and probe distributions), and each
    evaluation section under its results key (``edits``, ``probes_restrained``, ``downstream_before``, ...).
    ``since_edits``: the ledger covers the run from this many edits on — 0 unless the run resumed from a checkpoint
    written before runs kept one, whose earlier seconds are unknown.
    """

    since_edits: int = 0
    total: PartCost = field(default_factory=PartCost)
    parts: dict[str, PartCost] = field(default_factory=dict)
    _open: list[list[float]] = field(default_factory=list, repr=False, compare=False)  # child seconds of open parts

    @contextmanager
    def measure(self, part: str) -> Iterator[None]:
        """Add the wall and CPU seconds of the ``with`` body to ``part``, minus those of parts measured inside it."""
        self._open.append([0.0, 0.0])
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            child_wall, child_cpu = self._open.pop()
            if self._open:
                self._open[-1][0] += wall
                self._open[-1][1] += cpu
            self.parts.setdefault(part, PartCost()).add(PartCost(wall - child_wall, cpu - child_cpu, 1))

    def absorb(self, other: RunCost) -> None:
        """Add ``other``'s parts (e.g. what this start measured before its checkpoint's ledger was restored)."""
        for name, cost in other.parts.items():
            self.parts.setdefault(name, PartCost()).add(cost)

    def to_dict(self) -> dict[str, Any]:
        return {"since_edits": self.since_edits, "total": self.total.to_dict(),
                "parts": {name: cost.to_dict() for name, cost in self.parts.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunCost:
        if not isinstance(data, dict) or not isinstance(data.get("parts", {}), dict):
            raise ResultsSchemaError(f"cost must be an object with parts, got {str(data)[:80]}")
        return cls(int(data.get("since_edits", 0)), PartCost.from_dict(data.get("total", {"wall": 0, "cpu": 0})),
                   {str(k): PartCost.from_dict(v) for k, v in data.get("parts", {}).items()})


# Top-level scalar fields, in file order, and their types (None: not recorded, e.g. an unfinished run).
_SCALARS: dict[str, type] = {
    "model": str, "editor": str, "num_edits": int, "edits_applied": int, "num_steps": int, "num_rejected_steps": int,
    "world_size": int, "seconds_editing": float, "seconds_per_edit": float, "seconds_restraint": float,
    "restraint_share_of_step": float, "code_commit": str, "end_restraint_changed_weights": bool,
}

# Keys of results.json that differ between two runs of the same edits (wall clock, the cost ledger, and the
# callbacks' list, which carries profiling callbacks when timed): everything else is identical across resume,
# replay and process count, which the tests compare.
RUN_DEPENDENT_KEYS: frozenset[str] = frozenset(
    {"seconds_editing", "seconds_per_edit", "seconds_restraint", "restraint_share_of_step", "callbacks", "cost"}
)

# added within version 1: written only when known, so older files round-trip unchanged
_OPTIONAL = {"code_commit", "end_restraint_changed_weights"}


@dataclass
class RunResults:
    """A run's results.json as typed fields. ``before`` / ``after``: ``{section: scores}`` of the unedited and the
    final model; ``extra``: keys of an unversioned (version 0) file this version does not know, kept as they were."""

    model: str | None = None
    editor: str | None = None
    callbacks: list[str] = field(default_factory=list)
    num_edits: int | None = None
    edits_applied: int | None = None
    num_steps: int | None = None
    num_rejected_steps: int | None = None
    world_size: int | None = None
    seconds_editing: float | None = None
    seconds_per_edit: float | None = None
    seconds_restraint: float | None = None
    restraint_share_of_step: float | None = None
    code_commit: str | None = None  # git commit of the code that wrote the file ("+dirty": with local changes)
    # whether the end-of-run hooks (an at-end restraint) changed the final weights (None: a file written before runs
    # recorded it); True: the last point's plain sections moved to ``<section>_before_end_restraint``
    end_restraint_changed_weights: bool | None = None
    before: dict[str, Section] = field(default_factory=dict)
    after: dict[str, Section] = field(default_factory=dict)
    history: list[EvalPoint] = field(default_factory=list)
    edited_case_ids: list[Any] | None = None
    cost: RunCost | None = None  # where the run's seconds went (None: written before runs kept a ledger)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # ---- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        """Parse a results dict of any known version (no ``schema_version``: version 0, read leniently)."""
        if not isinstance(data, dict):
            raise ResultsSchemaError(f"results must be a JSON object, not {type(data).__name__}")
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or not 0 <= version <= SCHEMA_VERSION:
            raise ResultsSchemaError(f"results schema_version {version!r}: this code reads 0 to {SCHEMA_VERSION}")
        out = cls(schema_version=version)
        for key, value in data.items():
            if key == "schema_version":
                continue
            if key in _SCALARS:
                setattr(out, key, _typed(key, value, _SCALARS[key]))
            elif key == "callbacks":
                out.callbacks = [str(c) for c in value or []]
            elif key == "history":
                out.history = [EvalPoint.from_dict(r) for r in value or []]
            elif key == "edited_case_ids":
                out.edited_case_ids = None if value is None else list(value)
            elif key == "cost":
                out.cost = None if value is None else RunCost.from_dict(value)
            elif key.endswith(BEFORE) and isinstance(value, dict):
                out.before[key[: -len(BEFORE)]] = value
            elif key.endswith(AFTER) and isinstance(value, dict):
                out.after[key[: -len(AFTER)]] = value
            elif version == 0:
                out.extra[key] = value
            else:
                raise ResultsSchemaError(f"results schema_version {version}: unknown key {key!r}")
        return out

    @classmethod
    def read(cls, path: Path) -> RunResults:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ResultsSchemaError(f"{path}: not JSON ({err})") from err
        try:
            return cls.from_dict(data)
        except ResultsSchemaError as err:
            raise ResultsSchemaError(f"{path}: {err}") from err

    # ---- writing ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The results.json layout (this version's; a version-0 record read in is written back as version 1)."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for key in ("model", "editor"):
            out[key] = getattr(self, key)
        out["callbacks"] = list(self.callbacks)
        for key in list(_SCALARS)[2:]:
            if key not in _OPTIONAL or getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({section + BEFORE: scores for section, scores in self.before.items()})
        out.update({section + AFTER: scores for section, scores in self.after.items()})
        out["history"] = [p.to_dict() for p in self.history]
        out["edited_case_ids"] = self.edited_case_ids
        if self.cost is not None:
            out["cost"] = self.cost.to_dict()
        return out | self.extra

    def write(self, path: Path) -> None:
        """Write atomically (never a half-written file); numbers the JSON module does not know become floats."""
        write_json_atomic(Path(path), self.to_dict(), default=float)

    # ---- views for analysis ----------------------------------------------------------------------
    def points(self) -> dict[int, dict[str, Section]]:
        """``{num_edits: {variant key: scores}}``: 0 = the ``before`` sections, then every history point; the
        ``after`` sections fill the final count (``num_edits``) where no history point holds them."""
        out: dict[int, dict[str, Section]] = {}
        if self.before:
            out[0] = dict(self.before)
        for p in self.history:
            out.setdefault(p.num_edits, {}).update({k: v for k, v in p.sections.items() if isinstance(v, dict)})
        if self.num_edits is not None:
            for section, scores in self.after.items():
                out.setdefault(self.num_edits, {}).setdefault(section, scores)
        return out


def _typed(key: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # an int stays one (a sum over no restraint is 0): written back as it was read
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is str:
        return str(value)
    if kind is bool and isinstance(value, bool):
        return value
    raise ResultsSchemaError(f"{key}: expected {kind.__name__}, got {value!r}")


def find_results(path: Path) -> Path:
    """``path`` itself, ``path/results.json``, or the newest ``path/version_<n>/results.json``."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "results.json").is_file():
        return path / "results.json"
    newest = newest_version(path)
    if newest is None:
        raise FileNotFoundError(f"no results.json in {path} (nor in a version_* folder under it)")
    return newest / "results.json"


def newest_version(run: Path) -> Path | None:
    """The ``version_<n>`` folder of ``run`` with the largest n that holds a results.json, or None."""
    versions = [p for p in Path(run).glob("version_*") if (p / "results.json").is_file()]
    return max(versions, key=lambda p: int("".join(c for c in p.name if c.isdigit()) or 0)) if versions else None


def read_spectral(run: Path) -> list[dict[str, Any]]:
    """The SpectralDiagnostics records in ``run/spectral.json`` (``{"records": [...]}``, or the bare list older runs
    wrote); [] where the run has none."""
    path = Path(run) / "spectral.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else data.get("records", [])
