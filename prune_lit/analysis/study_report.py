"""Tables, paired tests and figures of the 1,000-edit study (benchmarks/run_study.sh) for docs/results.md.

    python -m prune_lit.analysis.study_report --study logs/study --md benchmarks/results/study1000.md \\
        --out benchmarks/results/study1000.json --figures docs/figures/study1000

Reads ``<study>/logs/<arm>/version_<n>/`` (the newest version holding a results.json; spectral.json beside
it) for every arm present — any subset of rome, rome_prune, memit[_prune], alphaedit[_prune], mend[_prune],
zsre_rome[_prune] and any other folder — and ``<study>/timings.tsv``. An arm ``X_prune`` is editor ``X``
with PRUNE after every edit (``X_key_aware`` / ``X_sphere``: key-aware PRUNE / SPHERE after every step, the variants
``key-aware`` / ``sphere``, paired with ``none`` like ``per-edit`` and in the summary table only where they ran); an arm whose history holds ``*_restrained`` sections (``rome``) also gives the
"PRUNE once at N" curve of the same run. Three variants per editor, where present:

* ``none``     the unrestrained run (at an at-end-restrained run's last point its ``*_before_end_restraint``
               sections; the restrained ones are PRUNE's);
* ``per-edit`` the ``X_prune`` arm;
* ``at-end``   the ``*_restrained`` sections of the unrestrained run (its weights restrained as if it ended at N).

Tables (Markdown, printed and written to ``--md``): edit metrics with 95 % Wilson intervals, probes
(perplexity with a bootstrap interval over probe windows and its paired change from the unedited model, KL),
downstream scores with intervals from their per-example scores (Wilson for 0/1 scores, percentile bootstrap for ROUGE), σ_max(ΔW)/σ_max(W₀) and κ(W),
wall times; a "plain answer" table (the first point where perplexity rises / a downstream score falls
significantly against the unedited model, paired over the same windows / examples) and PRUNE's paired tests
(per-edit arm vs the unrestrained arm, at-end curve vs the unrestrained curve) at every point.
docs/results.md's summary table (``summary_table``: editor × dataset × variant at 250 / 500 / 1,000 edits) comes
from a committed JSON summary alone, without the run folders, and replaces the text between the page's
``<!-- summary:begin -->`` / ``<!-- summary:end -->`` markers:

    python -m prune_lit.analysis.study_report --summary-from benchmarks/results/study1000*.json --write-summary docs/results.md

(several reports — arms run in different studies — merge in name order, later ones winning per editor and variant).

Figures (``--figures``): study_probes.png (perplexity and KL vs edits, one panel per editor), study_edits.png,
study_downstream.png, study_spectral.png. ``--out`` writes every number as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prune_lit.contracts.results import (  # noqa: E402
    BEFORE_END_RESTRAINT,
    RESTRAINED,
    SECTIONS,
    RunCost,
    RunResults,
    newest_version,
    read_spectral,
)
from prune_lit.metrics.intervals import (  # noqa: E402
    bootstrap_interval,
    compare_paired,
    is_binary,
    paired_bootstrap,
    score_interval,
    wilson_interval,
)

EDITORS = ["rome", "memit", "alphaedit", "mend", "mend_seq", "zsre_rome"]  # display order; other arms follow by name
EDITOR_LABELS = {"rome": "ROME", "memit": "MEMIT", "alphaedit": "AlphaEdit", "mend": "MEND", "mend_seq": "MEND (trained on sequences)",
                 "zsre_rome": "ROME (ZsRE)"}
EDITOR_COLORS = {"rome": "tab:blue", "memit": "tab:orange", "alphaedit": "tab:purple", "mend": "tab:green", "mend_seq": "tab:olive",
                 "zsre_rome": "tab:brown"}
VARIANTS = ["none", "per-edit", "at-end", "key-aware", "sphere"]
CORE_VARIANTS = VARIANTS[:3]  # the summary table always has these rows; the others only where an arm ran them
VARIANT_LABELS = {"none": "no restraint", "per-edit": "PRUNE per edit", "at-end": "PRUNE once at N",
                  "key-aware": "key-aware PRUNE per edit", "sphere": "SPHERE per step"}
VARIANT_STYLES = {"none": "--", "per-edit": "-", "at-end": ":", "key-aware": "-.", "sphere": (0, (3, 1, 1, 1, 1, 1))}
# An arm named <editor><suffix> runs that editor with a restraint after every step (run_study.sh's arm names).
RESTRAINT_SUFFIXES = {"_prune": "per-edit", "_key_aware": "key-aware", "_sphere": "sphere"}
# Edit metrics shown when results.json has them (proportions of prompts; the *_acc token accuracies are not).
EDIT_METRICS = ["efficacy", "generalization", "neighborhood", "locality", "locality_top1"]
# EasyEdit's teacher-forced token accuracies (means of per-prompt shares: no interval without per-case values);
# ZsRE has no ground truth, so these are its edit scores.
TOKEN_ACCURACIES = ["rewrite_acc", "rephrase_acc", "locality_acc"]
DOWNSTREAM = {  # main score per task -> column title; other per-example keys go to the JSON only
    "reasoning/exact_match": "GSM8K EM",
    "summarization/rouge1": "SAMSum ROUGE-1",
    "qa/contains": "NQ contains",
    "nli/accuracy": "RTE acc",
}
ALPHA = 0.05
# Fewest windows / examples for a bootstrap interval or test: with fewer, the resamples barely vary and a
# paired bootstrap reports p ≈ 1/(resamples + 1) for any consistent shift (one window: always). Wilson
# intervals and exact McNemar tests hold at any n.
MIN_BOOTSTRAP_N = 10


# ---------------------------------------------------------------- loading


@dataclass
class Arm:
    """One arm's newest finished run."""

    name: str
    folder: Path
    results: RunResults
    spectral: list[dict[str, Any]]
    timings: list[dict[str, Any]] = field(default_factory=list)
    partial: int | None = None  # an unfinished arm read from its last checkpoint: the edits it had reached

    @property
    def editor(self) -> str:
        return split_arm(self.name)[0]

    @property
    def variant(self) -> str:
        """``none`` (with its ``at-end`` curve, if any), or the restraint the arm applied after every step."""
        return arm_variant(self.name)


def split_arm(name: str) -> tuple[str, str]:
    """``(editor, restraint suffix)`` of an arm name: ``rome_key_aware`` -> ``("rome", "_key_aware")``; ``""`` when none."""
    suffix = next((s for s in RESTRAINT_SUFFIXES if name.endswith(s)), "")
    return name[: len(name) - len(suffix)], suffix


def arm_variant(name: str) -> str:
    """``none``, or the restraint an arm named ``<editor><suffix>`` applies after every step (`RESTRAINT_SUFFIXES`)."""
    suffix = split_arm(name)[1]
    return RESTRAINT_SUFFIXES[suffix] if suffix else "none"


def read_timings(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``{arm: [{"finished", "seconds", "rc", "resume"}, ...]}`` from run_study.sh's timings.tsv (one row per try)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if not path.is_file():
        return out
    with path.open() as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) < 3 or not row[2].strip().isdigit():
                continue
            extra = dict(part.split("=", 1) for part in row[3:] if "=" in part)
            out.setdefault(row[0], []).append({
                "finished": row[1], "seconds": int(row[2]),
                "rc": int(extra["rc"]) if extra.get("rc", "").lstrip("-").isdigit() else None,
                "resume": extra.get("resume") == "true",
            })
    return out


COST_GROUPS = ("edit steps", "edit metrics", "probes", "downstream", "other", "rest")


def cost_groups(cost: RunCost) -> dict[str, float]:
    """CPU seconds of a run's ledger in `COST_GROUPS` (evaluation parts are named by their results key)."""
    out = dict.fromkeys(COST_GROUPS, 0.0)
    for part, seconds in cost.parts.items():
        group = ("edit steps" if part == "edit_steps" else "edit metrics" if part.startswith("edits")
                 else "probes" if part.startswith("probes") else "downstream" if part.startswith("downstream") else "other")
        out[group] += seconds.cpu
    out["rest"] = max(cost.total.cpu - sum(out.values()), 0.0)
    return out


def arm_order(name: str) -> tuple[int, int, str]:
    editor, suffix = split_arm(name)
    rank = 1 + list(RESTRAINT_SUFFIXES).index(suffix) if suffix else 0
    return (EDITORS.index(editor) if editor in EDITORS else len(EDITORS), rank, name)


def load_checkpointed(study: Path, name: str, timings: list[dict[str, Any]]) -> Arm | None:
    """An unfinished arm from its last run checkpoint (``<study>/checkpoints/<name>/latest``), or None.

    The checkpoint's state.json holds the same history rows, unedited-model scores and spectral records a
    results.json would; only what the end of a run adds (an at-end restraint, timings) is missing.
    """
    pointer = study / "checkpoints" / name / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    state = json.loads((folder / "state.json").read_text())
    seen = int(state["counters"]["requests_seen"])
    results = RunResults.from_dict({**state.get("results", {}), "history": state.get("history", []), "num_edits": seen,
                                    "edited_case_ids": state.get("edited_case_ids"),
                                    "model": state.get("fingerprint", {}).get("model_name")})
    spectral = state.get("callbacks", {}).get("SpectralDiagnostics", {}).get("records", [])
    return Arm(name, folder, results, spectral, timings, partial=seen)


def load_study(study: Path, only: Sequence[str] | None = None) -> tuple[dict[str, Arm], dict[str, list[dict[str, Any]]]]:
    """The arms under ``study/logs`` (in display order; ``only``: just these) and every arm's timings (finished or
    not). An arm without a finished run is read from its last checkpoint, when it has one (``Arm.partial``)."""
    logs = study / "logs"
    timings = read_timings(study / "timings.tsv")
    arms: dict[str, Arm] = {}
    names = sorted((p.name for p in logs.iterdir() if p.is_dir()), key=arm_order) if logs.is_dir() else []
    if only is not None:
        wanted = set(only)
        missing = sorted(wanted - set(names))
        if missing:
            raise FileNotFoundError(f"no arm folder {missing} under {logs}")
        names = [n for n in names if n in wanted]
        timings = {k: v for k, v in timings.items() if k in wanted}
    for name in names:
        folder = newest_version(logs / name)
        if folder is None:
            arm = load_checkpointed(study, name, timings.get(name, []))
            if arm is not None:
                arms[name] = arm
            continue
        arms[name] = Arm(name, folder, RunResults.read(folder / "results.json"), read_spectral(folder), timings.get(name, []))
    return arms, timings


# ---------------------------------------------------------------- curves


def curve(arm: Arm, variant: str) -> dict[int, dict[str, dict]]:
    """``{num_edits: {section: dict}}`` of one variant of an arm (0 = the unedited model's ``*_before``).

    ``none`` / ``per-edit``: the arm's own sections, except at the last point of a run restrained once at the
    end: there the plain sections were scored after that restraint, and only its ``*_before_end_restraint``
    sections (where the run kept them) are unrestrained. ``at-end``: the ``*_restrained`` sections, and at the
    last point the plain sections where no ``*_restrained`` one exists (empty when the run has no at-end curve).
    """
    history = arm.results.history
    before = {s: v for s, v in arm.results.before.items() if s in SECTIONS and isinstance(v, dict)}
    end_restrained = end_restraint_rewrote_last_point(arm)
    last = max((p.num_edits for p in history), default=None)
    out: dict[int, dict[str, dict]] = {}

    def sections_of(point: Any, variant_: str) -> dict[str, dict]:
        return {s: v for s in SECTIONS if (v := point.get(s, variant_)) is not None}

    for point in history:
        n = point.num_edits
        restrained, plain = sections_of(point, RESTRAINED), sections_of(point, "")
        after_end = end_restrained and n == last  # plain sections scored after the end restraint
        if variant == "at-end":
            sections = ({**plain, **restrained} if after_end else restrained) if restrained or after_end else {}
        elif after_end:
            sections = sections_of(point, BEFORE_END_RESTRAINT)
        else:
            sections = plain
        if sections:
            out.setdefault(n, {}).update(sections)
    if variant == "at-end" and not any(p.has_variant(RESTRAINED) for p in history):
        return {}
    if before:
        out[0] = before  # restraining ΔW = 0 changes nothing: every variant starts at the unedited model
    return dict(sorted(out.items()))


def has_end_restraint(arm: Arm) -> bool:
    """Whether the run restrained its weights once after its last point: its last history row kept
    ``*_before_end_restraint`` sections, or it has an at-end curve (``*_restrained``: PRUNE at the end)."""
    if arm.partial is not None:
        return False  # an unfinished run never reached its end restraint
    return any(p.has_variant(BEFORE_END_RESTRAINT) or p.has_variant(RESTRAINED) for p in arm.results.history)


def end_restraint_rewrote_last_point(arm: Arm) -> bool:
    """Whether the last history row's plain sections were scored after an at-end restraint changed the weights.

    A run keeps ``*_before_end_restraint`` sections when its end restraint changed the weights. A run with an at-end
    curve but without them either wrote results.json before those sections existed (its plain sections are the
    restrained ones) or had nothing above σ_max(W₀) at the end (the restraint was the identity, its plain sections
    are the unrestrained ones). A run records which (``end_restraint_changed_weights``); for a file written before
    that, the spectral record of the last point tells; without one, the former.
    """
    if not has_end_restraint(arm):
        return False
    if arm.results.end_restraint_changed_weights is not None:
        return arm.results.end_restraint_changed_weights
    if any(p.has_variant(BEFORE_END_RESTRAINT) for p in arm.results.history):
        return True
    points, _ = spectral_points(arm.spectral)
    last = max(p.num_edits for p in arm.results.history)
    ratio = points.get(last, {}).get("ratio")
    return ratio is None or ratio > 1.0


def variants_of(arms: dict[str, Arm]) -> dict[str, dict[str, tuple[Arm, dict[int, dict[str, dict]]]]]:
    """``{editor: {variant: (arm, curve)}}`` for every variant present."""
    out: dict[str, dict[str, tuple[Arm, dict]]] = {}
    for arm in arms.values():
        slot = out.setdefault(arm.editor, {})
        if arm.variant != "none":
            slot[arm.variant] = (arm, curve(arm, arm.variant))
        else:
            slot["none"] = (arm, curve(arm, "none"))
            at_end = curve(arm, "at-end")
            if at_end:
                slot["at-end"] = (arm, at_end)
    return {e: {v: out[e][v] for v in VARIANTS if v in out[e]} for e in sorted(out, key=arm_order)}


# ---------------------------------------------------------------- intervals


def edit_intervals(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Wilson intervals of the edit metrics present, over the ``n`` edited cases (``score · n`` "successes").

    results.json holds each metric's share of prompts and the number of cases, not the prompt counts;
    efficacy has one prompt per CounterFact case (exact), generalization / neighborhood / locality several
    per case (correlated), so the interval treats the case, not the prompt, as the unit.
    """
    n = scores.get("n")
    out = {}
    for key in EDIT_METRICS:
        v = scores.get(key)
        if not isinstance(v, (int, float)) or math.isnan(v):
            continue
        if isinstance(n, int) and n > 0:
            iv = wilson_interval(min(max(v, 0.0), 1.0) * n, n)
            out[key] = {"estimate": float(v), "low": iv.low, "high": iv.high, "n": n, "method": "wilson over cases"}
        else:
            out[key] = {"estimate": float(v), "low": None, "high": None, "n": None, "method": "no count"}
    return out


def probe_intervals(probes: dict[str, Any], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Perplexity (exp of a bootstrap interval of the mean per-window NLL) and KL (bootstrap over windows)."""
    windows = probes.get("per_window") or {}
    out: dict[str, dict[str, Any]] = {}
    nll, kl = windows.get("nll"), windows.get("kl")
    if nll and len(nll) < MIN_BOOTSTRAP_N:
        nll = kl = None  # too few windows for an interval: the aggregates alone
    if nll:
        iv = bootstrap_interval(nll, n_resamples=resamples, seed=seed)
        out["perplexity"] = {"estimate": float(probes.get("perplexity", math.exp(iv.estimate))), "low": math.exp(iv.low),
                             "high": math.exp(iv.high), "n": iv.n, "method": "bootstrap over windows"}
    elif "perplexity" in probes:
        n = len(windows.get("nll") or [])
        out["perplexity"] = {"estimate": float(probes["perplexity"]), "low": None, "high": None, "n": n or None,
                             "method": f"no interval ({n} windows < {MIN_BOOTSTRAP_N})" if n else "no windows"}
    if kl:
        iv = bootstrap_interval(kl, n_resamples=resamples, seed=seed)
        out["kl"] = {"estimate": float(probes.get("kl_from_unedited", iv.estimate)), "low": iv.low, "high": iv.high, "n": iv.n,
                     "method": "bootstrap over windows"}
    elif "kl_from_unedited" in probes:
        n = len(windows.get("kl") or [])
        out["kl"] = {"estimate": float(probes["kl_from_unedited"]), "low": None, "high": None, "n": n or None,
                     "method": f"no interval ({n} windows < {MIN_BOOTSTRAP_N})" if n else "no windows"}
    if "n_tokens" in probes:
        out["n_tokens"] = int(probes["n_tokens"])
    return out


def downstream_intervals(downstream: dict[str, Any], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Every per-example score list's interval (Wilson for 0/1 scores, bootstrap otherwise)."""
    out = {}
    for key, scores in (downstream.get("per_example") or {}).items():
        if not scores:
            continue
        if is_binary(scores) or len(scores) >= MIN_BOOTSTRAP_N:
            iv = score_interval(scores, n_resamples=resamples, seed=seed)
            out[key] = {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n, "method": iv.method}
        else:
            out[key] = {"estimate": sum(scores) / len(scores), "low": None, "high": None, "n": len(scores),
                        "method": f"no interval ({len(scores)} examples < {MIN_BOOTSTRAP_N})"}
    for key in DOWNSTREAM:  # an aggregate without per-example scores: the number alone
        if key not in out and isinstance(downstream.get(key), (int, float)):
            out[key] = {"estimate": float(downstream[key]), "low": None, "high": None, "n": None, "method": "no per-example scores"}
    return out


def spectral_points(records: list[dict[str, Any]]) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
    """Per edit count (during the run): the largest σ_max(ΔW)/σ_max(W₀) over matrices and the largest κ(W)
    measured there; and the ``final`` measurement (after any at-end restraint), or None."""
    def reduce(recs: list[dict[str, Any]]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for r in recs:
            if r.get("sigma_max_delta") is not None and r.get("sigma_max_w0"):
                ratio = r["sigma_max_delta"] / r["sigma_max_w0"]
                if ratio > row.get("ratio", -1.0):
                    row.update(ratio=ratio, sigma_max_delta=r["sigma_max_delta"], sigma_max_w0=r["sigma_max_w0"], matrix=r["matrix"])
            if r.get("kappa_w") is not None:
                row["kappa_w"] = max(row.get("kappa_w", 0.0), float(r["kappa_w"]))
        return row

    by_n: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        if not r.get("final"):
            by_n.setdefault(int(r["num_edits"]), []).append(r)
    final = [r for r in records if r.get("final")]
    return {n: reduce(rs) for n, rs in sorted(by_n.items())}, (reduce(final) | {"num_edits": int(final[0]["num_edits"])}) if final else None


def spectral_curve(arm: Arm, variant: str) -> dict[int, dict[str, Any]]:
    """The spectral curve of one variant: the run's own measurements; the final one joins the last point of
    ``none`` / ``per-edit`` unless an at-end restraint ran (then it is ``at-end``'s only point)."""
    points, final = spectral_points(arm.spectral)
    end_restrained = has_end_restraint(arm)
    if variant == "at-end":
        return {final["num_edits"]: final} if final and end_restrained else {}
    if final and not end_restrained:
        points.setdefault(final["num_edits"], {})
        for k, v in final.items():
            if k != "num_edits":
                points[final["num_edits"]].setdefault(k, v)
    return points


# ---------------------------------------------------------------- paired tests


def paired_probe(a: dict[str, Any], b: dict[str, Any], key: str, resamples: int, seed: int) -> dict[str, Any] | None:
    """B − A of the mean per-window ``key`` (nll / kl), paired bootstrap over the same windows."""
    la, lb = (a.get("per_window") or {}).get(key), (b.get("per_window") or {}).get(key)
    if not la or not lb or len(la) != len(lb) or len(la) < MIN_BOOTSTRAP_N:
        return None
    return paired_bootstrap(la, lb, n_resamples=resamples, seed=seed).as_dict()


def paired_scores(a: dict[str, Any], b: dict[str, Any], key: str, resamples: int, seed: int) -> dict[str, Any] | None:
    """B − A of a downstream per-example score (exact McNemar for 0/1, paired bootstrap otherwise)."""
    la, lb = (a.get("per_example") or {}).get(key), (b.get("per_example") or {}).get(key)
    if not la or not lb or len(la) != len(lb):
        return None
    if not (is_binary(la) and is_binary(lb)) and len(la) < MIN_BOOTSTRAP_N:
        return None
    return compare_paired(la, lb, n_resamples=resamples, seed=seed).as_dict()


def task_keys(curves: list[dict[int, dict[str, dict]]]) -> list[str]:
    """The main downstream scores any curve has per-example scores for (all per-example keys when none is main)."""
    present = {k for c in curves for p in c.values() for k in (p.get("downstream", {}).get("per_example") or {})}
    main = [k for k in DOWNSTREAM if k in present]
    return main or sorted(present)


def first_significant(curve_: dict[int, dict[str, dict]], section: str, test: Any, worse: int) -> dict[str, Any]:
    """The first point > 0 where ``test(before, now)`` finds a difference of sign ``worse`` with p < ALPHA.

    Returns ``{"num_edits": n or None, "tested": [points tested up to n], "untested": [points measured but
    not testable]}`` plus ``difference``, ``p_value`` and ``test`` of the point found."""
    before = curve_.get(0, {}).get(section)
    out: dict[str, Any] = {"num_edits": None, "tested": [], "untested": []}
    if before is None:
        return out
    for n, sections in curve_.items():
        if n == 0 or section not in sections:
            continue
        c = test(before, sections[section])
        if c is None:
            out["untested"].append(n)
            continue
        out["tested"].append(n)
        if c["p_value"] < ALPHA and c["difference"] * worse > 0:
            return out | {"num_edits": n, "difference": c["difference"], "p_value": c["p_value"], "test": c["method"]}
    return out


@dataclass
class Report:
    markdown: str
    summary: dict[str, Any]


def plain_answer(variants: dict[str, dict[str, tuple[Arm, dict]]], resamples: int, seed: int) -> list[dict[str, Any]]:
    """Per editor and variant: the first point where perplexity rises / each downstream score falls
    significantly against the unedited model (paired over the same windows / examples)."""
    rows = []
    tasks = task_keys([c for vs in variants.values() for _, c in vs.values()])
    for editor, vs in variants.items():
        for variant, (arm, c) in vs.items():
            row: dict[str, Any] = {"editor": editor, "variant": variant, "arm": arm.name,
                                   "last_point": max(c) if c else None}
            row["perplexity"] = first_significant(c, "probes", lambda a, b: paired_probe(a, b, "nll", resamples, seed), +1)
            row["downstream"] = {k: first_significant(c, "downstream", lambda a, b, k=k: paired_scores(a, b, k, resamples, seed), -1)
                                 for k in tasks}
            rows.append(row)
    return rows


def _point_tests(base: dict[int, dict[str, dict]], other: dict[int, dict[str, dict]], tasks: list[str], resamples: int,
                 seed: int) -> Iterator[tuple[int, str, dict[str, Any] | None]]:
    """``(edits, metric, test or None)`` at every point (past 0) both curves have: perplexity (as mean NLL per
    window), KL and the downstream scores, ``other`` − ``base`` paired over the same windows / examples."""
    for n in sorted(set(base) & set(other)):
        if n == 0:
            continue
        a, b = base[n], other[n]
        if "probes" in a and "probes" in b:
            yield n, "NLL / token (perplexity)", paired_probe(a["probes"], b["probes"], "nll", resamples, seed)
            yield n, "KL from unedited", paired_probe(a["probes"], b["probes"], "kl", resamples, seed)
        if "downstream" in a and "downstream" in b:
            for k in tasks:
                yield n, k, paired_scores(a["downstream"], b["downstream"], k, resamples, seed)


def _same_cases_note(a: Arm, b: Arm) -> str | None:
    ids_a, ids_b = a.results.edited_case_ids, b.results.edited_case_ids
    if ids_a is not None and ids_b is not None:
        m = min(len(ids_a), len(ids_b))
        if ids_a[:m] != ids_b[:m]:
            return f"{a.name} and {b.name} edited different cases"
    return None


def _untested_note(who: str, metric: str, ns: list[int]) -> str:
    return (f"{who}, {DOWNSTREAM.get(metric, metric)} at {', '.join(map(str, ns))} edits: no paired test (per-window / "
            f"per-example scores missing, of different lengths, or fewer than {MIN_BOOTSTRAP_N} for a bootstrap)")


def prune_tests(variants: dict[str, dict[str, tuple[Arm, dict]]], resamples: int, seed: int, baseline: str = "none",
                compared: tuple[str, ...] = tuple(VARIANTS[1:])) -> tuple[list[dict[str, Any]], list[str]]:
    """Each ``compared`` variant against ``baseline`` (no restraint, or e.g. PRUNE per edit) of the same editor at
    every point both have (`_point_tests`). Differences are variant − baseline; each row names its ``baseline``."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    untested: dict[tuple[str, str, str], list[int]] = {}
    tasks = task_keys([c for vs in variants.values() for _, c in vs.values()])
    for editor, vs in variants.items():
        if baseline not in vs:
            continue
        base_arm, base = vs[baseline]
        for variant in compared:
            if variant not in vs or variant == baseline:
                continue
            arm, other = vs[variant]
            if note := _same_cases_note(base_arm, arm):
                notes.append(f"{editor}: {note}")
            for n, metric, c in _point_tests(base, other, tasks, resamples, seed):
                if c is None:
                    untested.setdefault((editor, variant, metric), []).append(n)
                    continue
                rows.append({"editor": editor, "variant": variant, "baseline": baseline, "num_edits": n, "metric": metric} | c)
    for (editor, variant, metric), ns in untested.items():
        notes.append(_untested_note(f"{EDITOR_LABELS.get(editor, editor)}, {VARIANT_LABELS[variant]} vs "
                                    f"{VARIANT_LABELS[baseline]}", metric, ns))
    return rows, notes


def reference_tests(variants: dict[str, dict[str, tuple[Arm, dict]]], reference: Arm, resamples: int,
                    seed: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Every other arm (any editor, its own restraint) against one ``reference`` arm, e.g. ROME + PRUNE per edit,
    at every point both have (`_point_tests`; a batch editor meets a one-edit-per-step arm at the shared multiples).
    Restraint arms and unrestrained runs only: an ``at-end`` curve is PRUNE's own comparison (`prune_tests`).
    Fair because every arm of a study edits the same cases in the same order and is scored on the same windows and
    examples. Differences are arm − reference; rows carry ``baseline`` = the reference arm's name."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    untested: dict[tuple[str, str, str], list[int]] = {}
    tasks = task_keys([c for vs in variants.values() for _, c in vs.values()])
    base = curve(reference, reference.variant)
    for editor, vs in variants.items():
        for variant, (arm, other) in vs.items():
            if (arm.name == reference.name and variant == reference.variant) or variant == "at-end":
                continue
            if note := _same_cases_note(reference, arm):
                notes.append(note)
            for n, metric, c in _point_tests(base, other, tasks, resamples, seed):
                if c is None:
                    untested.setdefault((editor, variant, metric), []).append(n)
                    continue
                rows.append({"editor": editor, "variant": variant, "baseline": reference.name, "num_edits": n,
                             "metric": metric} | c)
    for (editor, variant, metric), ns in untested.items():
        notes.append(_untested_note(f"{label(editor, variant)} vs {reference.name}", metric, ns))
    return rows, notes


@dataclass(frozen=True)
class Goal:
    """A target for the last evaluation point of every arm: perplexity at most ``max_rise`` above the unedited
    model's (0.05 = +5 %) with efficacy at least ``min_efficacy``."""

    max_rise: float
    min_efficacy: float


def goal_rows(points: dict[str, dict[str, list[dict[str, Any]]]], goal: Goal) -> list[dict[str, Any]]:
    """Per editor and variant, its last point with both a paired perplexity change and efficacy: the rise
    ``exp(Δ NLL) − 1`` with its paired interval, efficacy with its Wilson interval, and whether the point estimates
    meet ``goal`` (``meets``) and whether the intervals do too (``meets_with_intervals``: upper end of the rise and
    lower end of efficacy)."""
    rows = []
    for editor, vs in points.items():
        for variant, pts in vs.items():
            scored = [r for r in pts if (r.get("probes") or {}).get("nll_change") and "efficacy" in (r.get("edits") or {})]
            if not scored:
                continue
            r = max(scored, key=lambda x: x["num_edits"])
            rise, eff = perplexity_rise(r["probes"]["nll_change"]), r["edits"]["efficacy"]
            rows.append({"editor": editor, "variant": variant, "num_edits": r["num_edits"],
                         "perplexity": r["probes"]["perplexity"]["estimate"], "rise": rise["difference"],
                         "rise_low": rise["low"], "rise_high": rise["high"], "efficacy": eff["estimate"],
                         "efficacy_low": eff.get("low"), "efficacy_high": eff.get("high"),
                         "meets": rise["difference"] <= goal.max_rise and eff["estimate"] >= goal.min_efficacy,
                         "meets_with_intervals": rise["high"] <= goal.max_rise and (eff.get("low") or 0.0) >= goal.min_efficacy})
    return rows


# ---------------------------------------------------------------- tables


def rise_text(x: float) -> str:
    """A relative change as ``+1.9 %``; beyond +1,000 % as the ratio (``×10833.800``, `fmt`)."""
    return f"{100 * x:+.1f} %" if x < 10 else f"×{fmt(1 + x, 3)}"


def perplexity_rise(nll_change: dict[str, float]) -> dict[str, float]:
    """A paired Δ NLL test's ``difference`` / ``low`` / ``high`` as relative perplexity changes, exp(Δ) − 1."""
    return {k: math.expm1(nll_change[k]) for k in ("difference", "low", "high")}


def rise_interval_text(difference: float, low: float, high: float) -> str:
    """``+1.9 % [+0.9 %, +3.0 %]`` (`rise_text` of each)."""
    return f"{rise_text(difference)} [{rise_text(low)}, {rise_text(high)}]"


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x))):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** -digits):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}f}"


def fmt_iv(iv: dict[str, Any] | None, digits: int = 3) -> str:
    if iv is None:
        return "—"
    text = fmt(iv["estimate"], digits)
    if iv.get("low") is not None and not math.isnan(iv["low"]):
        text += f" [{fmt(iv['low'], digits)}, {fmt(iv['high'], digits)}]"
    return text


def label(editor: str, variant: str) -> str:
    return f"{EDITOR_LABELS.get(editor, editor)}, {VARIANT_LABELS[variant]}"


def each_point(points: dict[str, dict[str, list[dict[str, Any]]]]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(editor, variant, row)`` for every evaluation point of every curve, in table order."""
    for editor, vs in points.items():
        for variant, rs in vs.items():
            for r in rs:
                yield editor, variant, r


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def build_report(study: Path, resamples: int = 10_000, seed: int = 0, kappa_w0: dict[str, float] | None = None,
                 only: Sequence[str] | None = None, reference: str | None = None, goal: Goal | None = None) -> Report:
    """Every table (Markdown) and number (JSON-able summary) of the study under ``study`` (``only``: these arms;
    ``reference``: one of them that every other arm is also tested against, `reference_tests`; ``goal``: a table of
    which arms meet it at their last point, `goal_rows`)."""
    arms, timings = load_study(study, only)
    if not arms:
        raise FileNotFoundError(f"no arm (logs/<arm>/version_<n>/results.json or checkpoints/<arm>/latest) under {study}")
    if reference is not None and reference not in arms:
        raise ValueError(f"reference arm {reference!r} is not among the arms found: {', '.join(arms)}")
    variants = variants_of(arms)
    notes: list[str] = []
    md: list[str] = [f"# Study report: {Path(study).name}", ""]
    models = sorted({str(a.results.model) for a in arms.values()})
    md.append(f"Arms found: {', '.join(arms)} (model: {', '.join(models)}). "
              f"Arms with a timing but no results.json: {', '.join(sorted(set(timings) - set(arms))) or 'none'}.")
    unfinished = [f"{a.name} (to {a.partial} edits)" for a in arms.values() if a.partial is not None]
    if unfinished:
        md.append(f"**Unfinished arms**, read from their last checkpoint: {', '.join(unfinished)}.")
    md.append("")

    points: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for editor, vs in variants.items():
        for variant, (arm, c) in vs.items():
            rows = []
            before_probes = c.get(0, {}).get("probes")
            before_downstream = c.get(0, {}).get("downstream")
            for n, sections in c.items():
                probes = probe_intervals(sections["probes"], resamples, seed) if "probes" in sections else None
                if probes is not None and before_probes is not None and n > 0:
                    # The change from the unedited model, paired over the same windows: far tighter than the
                    # perplexity's own interval, which mostly measures how the windows differ from each other.
                    change = paired_probe(before_probes, sections["probes"], "nll", resamples, seed)
                    if change is not None:
                        probes["nll_change"] = change
                token_acc = {k: float(v) for k, v in sections.get("edits", {}).items()
                             if k in TOKEN_ACCURACIES and isinstance(v, (int, float)) and math.isfinite(v)}
                scores = downstream_intervals(sections["downstream"], resamples, seed) if "downstream" in sections else None
                if scores is not None and before_downstream is not None and n > 0:
                    for key, iv in scores.items():  # each score's change from the unedited model, same examples
                        change = paired_scores(before_downstream, sections["downstream"], key, resamples, seed)
                        if change is not None:
                            iv["change"] = change
                rows.append({"num_edits": n,
                             "edits": edit_intervals(sections["edits"]) if "edits" in sections else None,
                             "token_accuracy": token_acc or None,
                             "probes": probes,
                             "downstream": scores})
            points.setdefault(editor, {})[variant] = rows

    # Edit metrics
    present = [k for k in EDIT_METRICS if any(r["edits"] and k in r["edits"] for _, _, r in each_point(points))]
    md += ["## Edit metrics", "",
           "Share of prompts over all cases edited so far (0 edits: every case of the run scored on the unedited "
           "model). 95 % Wilson intervals over the **n edited cases** (results.json has each "
           "metric's share and n, not the per-metric prompt counts; efficacy has one prompt per CounterFact case, the "
           "others several correlated ones per case).", ""]
    rows = []
    for editor, variant, r in each_point(points):
        if r["edits"] is not None:
            n = next((iv["n"] for iv in r["edits"].values() if iv.get("n")), None)
            rows.append([label(editor, variant), str(r["num_edits"]), str(n or "—")] + [fmt_iv(r["edits"].get(k)) for k in present])
    md += [table(["run", "edits", "n", *present], rows), ""]
    acc_keys = [k for k in TOKEN_ACCURACIES if any(r["token_accuracy"] and k in r["token_accuracy"] for _, _, r in each_point(points))]
    if acc_keys:
        md += ["Token accuracies (EasyEdit's teacher-forced top-1 accuracy over the target tokens, mean over prompts; "
               "locality_acc against the unedited model's predictions). No intervals: results.json holds the means only.", ""]
        rows = [[label(editor, variant), str(r["num_edits"])] + [fmt((r["token_accuracy"] or {}).get(k)) for k in acc_keys]
                for editor, variant, r in each_point(points) if r["token_accuracy"]]
        md += [table(["run", "edits", *acc_keys], rows), ""]

    # Probes
    md += ["## Probes: perplexity and KL from the unedited model", "",
           "WikiText-2 test windows; perplexity = exp(mean NLL per token) with a 95 % percentile bootstrap interval "
           "over windows (exp of the interval of the mean window NLL; windows are of equal length); KL(unedited ‖ edited) "
           "in nats per token, bootstrap over windows. Δ NLL: mean NLL per token minus the unedited model's, with the 95 % "
           "interval and p of a paired bootstrap over the same windows (perplexity ratio to the unedited model = exp Δ).", ""]
    rows = []
    for editor, variant, r in each_point(points):
        p = r["probes"]
        if p:
            windows = (p.get("perplexity") or {}).get("n")
            ch = p.get("nll_change")
            change = f"{fmt(ch['difference'], 4)} [{fmt(ch['low'], 4)}, {fmt(ch['high'], 4)}], p={fmt(ch['p_value'], 3)}" if ch else "—"
            rows.append([label(editor, variant), str(r["num_edits"]), f"{windows or '—'} / {p.get('n_tokens', '—')}",
                         fmt_iv(p.get("perplexity"), 2), change, fmt_iv(p.get("kl"), 4)])
    md += [table(["run", "edits", "windows / tokens", "perplexity", "Δ NLL vs unedited (paired)", "KL"], rows)
           if rows else "No probes in any arm.", ""]

    # Downstream
    tasks = task_keys([c for vs in variants.values() for _, c in vs.values()])
    md += ["## Downstream", "",
           "95 % intervals from the per-example scores: Wilson for 0/1 scores, percentile bootstrap for ROUGE; n examples per task.", ""]
    rows = []
    for editor, variant, r in each_point(points):
        d = r["downstream"]
        if d:
            ns = sorted({d[k]["n"] for k in tasks if k in d and d[k].get("n")})
            rows.append([label(editor, variant), str(r["num_edits"]), "/".join(map(str, ns)) or "—"] + [fmt_iv(d.get(k)) for k in tasks])
    md += [table(["run", "edits", "n", *[DOWNSTREAM.get(k, k) for k in tasks]], rows) if rows else "No downstream scores in any arm.", ""]

    # Spectra
    md += ["## Spectra", "",
           "Largest σ_max(ΔW)/σ_max(W₀) and largest κ(W) over the edited matrices, at the evaluation points "
           "(κ only where it was measured; `at-end`: after the final restraint of the unrestrained run)."
           + (" κ(W₀) of the unedited model in the 0-edit row." if kappa_w0 else ""), ""]
    rows = []
    spectral_summary: dict[str, dict[str, Any]] = {}
    for editor, vs in variants.items():
        for variant, (arm, c) in vs.items():
            sc = spectral_curve(arm, variant)
            spectral_summary.setdefault(editor, {})[variant] = {str(n): v for n, v in sc.items()}
            if not sc:
                continue
            matrices = {r["matrix"] for r in arm.spectral}
            if kappa_w0 and variant != "at-end":
                k0 = max((kappa_w0[m] for m in matrices if m in kappa_w0), default=None)
                rows.append([label(editor, variant), "0", fmt(0.0), fmt(k0, 1)])
            shown = [n for n in sc if n in c or n == max(sc)] if variant != "at-end" else list(sc)
            for n in shown:
                rows.append([label(editor, variant), str(n), fmt(sc[n].get("ratio")), fmt(sc[n].get("kappa_w"), 1)])
    md += [table(["run", "edits", "max σ_max(ΔW)/σ_max(W₀)", "max κ(W)"], rows) if rows else "No spectral.json in any arm.", ""]

    # Wall times
    md += ["## Wall times", "",
           "wall: run_study.sh's timings.tsv, summed over the tries of an arm's current run (its last fresh start and "
           "the resumes after it); \"run ledger\": the run's own wall clock (results.json `cost`), shown where it is "
           "more than 5 % above that sum — a try killed with its session writes no timings row; editing / restraint: "
           "results.json (edit steps and PRUNE alone, without evaluation).", ""]
    rows = []
    times_summary = {}
    for name in sorted(set(arms) | set(timings), key=arm_order):
        all_tries = timings.get(name, [])
        # The current run: its last fresh start (resume=false; an earlier one was replaced) and the resumes after it.
        fresh = max((i for i, t in enumerate(all_tries) if not t["resume"]), default=0)
        tries = all_tries[fresh:]
        wall = sum(t["seconds"] for t in tries) if tries else None
        r = arms[name].results if name in arms else RunResults()
        ledger = r.cost.total.wall if r.cost is not None and r.cost.since_edits == 0 else None
        wall_text = f"{wall}" if wall is not None else "—"
        if ledger is not None and (wall is None or ledger > 1.05 * wall):
            wall_text += f" (run ledger: {ledger:.0f})"
        times_summary[name] = {"tries": tries, "earlier_tries": all_tries[:fresh], "wall_seconds": wall, "ledger_wall_seconds": ledger} | {
            k: getattr(r, k) for k in ("num_edits", "num_steps", "num_rejected_steps", "seconds_editing", "seconds_per_edit", "seconds_restraint",
                                       "code_commit")}
        last_rc = tries[-1]["rc"] if tries else None
        counts = [r.num_edits, r.num_steps, r.num_rejected_steps]
        rows.append([name, *("—" if c is None else str(c) for c in counts),
                     wall_text, f"{len(tries)}" + (f" (last rc={last_rc})" if last_rc else ""),
                     fmt(r.seconds_editing, 0), fmt(r.seconds_per_edit, 2), fmt(r.seconds_restraint, 1)])
    md += [table(["arm", "edits", "steps", "rejected steps", "wall (s)", "tries", "editing (s)", "s / edit", "restraint (s)"], rows), ""]

    # CPU seconds by part, from the runs' own ledgers (results.json "cost"; runs started before it have none)
    rows = []
    for name in sorted(arms, key=arm_order):
        cost = arms[name].results.cost
        if cost is None:
            continue
        groups = cost_groups(cost)
        times_summary[name]["cost"] = cost.to_dict()
        evaluation = sum(groups[g] for g in ("edit metrics", "probes", "downstream"))
        rows.append([name, str(cost.since_edits), fmt(cost.total.wall, 0), fmt(cost.total.cpu, 0),
                     *(fmt(groups[g], 0) for g in COST_GROUPS), fmt(evaluation / cost.total.cpu if cost.total.cpu else None, 2)])
    if rows:
        md += ["## Where the CPU seconds went", "",
               "From each run's own ledger (results.json `cost`, summed over its starts): process CPU seconds (all "
               "threads; with one torch thread, seconds of one core) by part. edit steps: editor, restraint and "
               "diagnostics; edit metrics / probes / downstream: every evaluation of the run's weights, of restrained "
               "copies and of the unedited model; other: reference recording, checkpoints, restrained copies, the "
               "end restraint; rest: the total minus the parts (model loading, data, Lightning). \"from edit\": the "
               "ledger counts from this edit on (0: the whole run).", "",
               table(["arm", "from edit", "wall (s)", "CPU (s)", *(f"{g} (CPU s)" for g in COST_GROUPS), "evaluation share of CPU"], rows), ""]

    goals: list[dict[str, Any]] = []
    if goal is not None:
        goals = goal_rows(points, goal)
        md += [f"## The goal: perplexity within +{100 * goal.max_rise:g} % of the unedited model, efficacy ≥ "
               f"{goal.min_efficacy:g}", "",
               "Each arm's last point with probes and edit metrics. Rise: exp(Δ NLL) − 1 with the paired bootstrap "
               "interval over windows; efficacy with its Wilson interval over the edited cases. \"meets\": both point "
               "estimates on the right side; \"with intervals\": the rise's upper and efficacy's lower end too.", "",
               table(["arm", "edits", "perplexity", "rise", "efficacy", "meets", "with intervals"],
                     [[label(g["editor"], g["variant"]), str(g["num_edits"]), fmt(g["perplexity"], 2),
                       rise_interval_text(g["rise"], g["rise_low"], g["rise_high"]),
                       fmt_iv({"estimate": g["efficacy"], "low": g["efficacy_low"], "high": g["efficacy_high"]}),
                       "yes" if g["meets"] else "no", "yes" if g["meets_with_intervals"] else "no"] for g in goals]), ""]

    # Plain answer
    answers = plain_answer(variants, resamples, seed)
    md += ["## Plain answer: when does general ability decline?", "",
           f"First evaluation point where perplexity rises (paired bootstrap over the same windows, mean NLL) or a "
           f"downstream score falls (exact McNemar for 0/1 scores, paired bootstrap for ROUGE, same examples) against "
           f"the unedited model with p < {ALPHA}; \"none ≤ N\": no such point among the points tested, the last being N. "
           "Each point is tested on its own (no correction for testing several points).", ""]
    rows = []
    for a in answers:
        def cell(f: dict[str, Any]) -> str:
            if f["num_edits"] is not None:
                return f"**{f['num_edits']}** (Δ {fmt(f['difference'], 3)}, p={fmt(f['p_value'], 4)})"
            if f["tested"]:
                return f"none ≤ {max(f['tested'])}"
            return "no test (too few windows / examples)" if f["untested"] else "not measured"
        rows.append([label(a["editor"], a["variant"]), cell(a["perplexity"])] + [cell(a["downstream"][k]) for k in tasks])
    md += [table(["run", "perplexity rises", *[f"{DOWNSTREAM.get(k, k)} falls" for k in tasks]], rows), ""]

    # PRUNE tests
    tests, test_notes = prune_tests(variants, resamples, seed)
    notes += test_notes
    md += ["## PRUNE against no restraint (paired)", "",
           "Each cell: no restraint → PRUNE and the p-value of the difference on the same windows / examples (bold: "
           f"p < {ALPHA}). Per edit = the `_prune` arm against the unrestrained arm (same cases, same order); once at N = "
           "the unrestrained run's weights restrained at N against the same run unrestrained. Perplexity: paired "
           "bootstrap of the mean NLL per window (shown as exp of it); KL: paired bootstrap over windows; downstream: exact "
           "McNemar for 0/1 scores, paired bootstrap for ROUGE. Intervals of every difference: the JSON summary (`prune_tests`).", ""]
    metrics = ["NLL / token (perplexity)", "KL from unedited", *tasks]
    titles = {"NLL / token (perplexity)": "perplexity", "KL from unedited": "KL"} | DOWNSTREAM

    def test_cell(t: dict[str, Any] | None, metric: str) -> str:
        if t is None:
            return "—"
        a, b = (math.exp(t["mean_a"]), math.exp(t["mean_b"])) if metric.startswith("NLL") else (t["mean_a"], t["mean_b"])
        digits = 2 if metric.startswith("NLL") else 4 if metric.startswith("KL") else 3
        p_text = f"p={fmt(t['p_value'], 3)}"
        return f"{fmt(a, digits)} → {fmt(b, digits)} (" + (f"**{p_text}**" if t["p_value"] < ALPHA else p_text) + ")"

    def test_rows(tests: list[dict[str, Any]]) -> list[list[str]]:
        by_point: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
        for t in tests:
            by_point.setdefault((t["editor"], t["variant"], t["num_edits"]), {})[t["metric"]] = t
        return [[EDITOR_LABELS.get(e, e), VARIANT_LABELS[v], str(n)] + [test_cell(cells.get(m), m) for m in metrics]
                for (e, v, n), cells in by_point.items()]

    rows = test_rows(tests)
    md += [table(["editor", "PRUNE", "edits", *[titles.get(m, m) for m in metrics]], rows)
           if rows else "No editor has both an unrestrained and a PRUNE variant.", ""]

    # The newer restraints against PRUNE per edit, where an editor has both (issue: restraints side by side)
    restraint_tests, restraint_notes = prune_tests(variants, resamples, seed, baseline="per-edit", compared=("key-aware", "sphere"))
    notes += restraint_notes
    rows = test_rows(restraint_tests)
    if rows:
        md += ["## Other restraints against PRUNE per edit (paired)", "",
               "As above, with PRUNE per edit in place of no restraint: each cell is PRUNE per edit → the other restraint "
               "(same cases, windows and examples). Intervals: the JSON summary (`restraint_tests`).", "",
               table(["editor", "restraint", "edits", *[titles.get(m, m) for m in metrics]], rows), ""]

    ref_tests: list[dict[str, Any]] = []
    if reference is not None:
        ref_tests, ref_notes = reference_tests(variants, arms[reference], resamples, seed)
        notes += ref_notes
        rows = test_rows(ref_tests)
        md += [f"## Every arm against {label(arms[reference].editor, arms[reference].variant)} (`{reference}`, paired)", "",
               f"Each cell: `{reference}` → the row's arm at the same number of edits, on the same windows / examples "
               "(every arm edits the same cases in the same order). Tests as above; intervals: the JSON summary "
               "(`reference_tests`).", "",
               table(["editor", "restraint", "edits", *[titles.get(m, m) for m in metrics]], rows)
               if rows else "No arm shares an evaluation point with the reference.", ""]

    missing_prune = [e for e, vs in variants.items() if "none" in vs and "per-edit" not in vs]
    missing_none = [e for e, vs in variants.items() if "none" not in vs]
    if missing_prune:
        notes.append(f"no per-edit PRUNE arm for: {', '.join(missing_prune)}")
    if missing_none:
        notes.append(f"no unrestrained arm for: {', '.join(missing_none)}")
    for arm in arms.values():
        if end_restraint_rewrote_last_point(arm):
            last = max(p.num_edits for p in arm.results.history)
            point = next(p for p in arm.results.history if p.num_edits == last)
            lost = [s for s in SECTIONS if not point.has(s, BEFORE_END_RESTRAINT) and (point.has(s) or point.has(s, RESTRAINED))]
            if lost:
                notes.append(f"{arm.name}: at {last} edits (the last point, after which PRUNE restrained the weights) the "
                             f"unrestrained {', '.join(lost)} scores are not in results.json (only the restrained ones); "
                             "the no-restraint curve stops at the point before for them")
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]

    summary = {
        "study": Path(study).name, "resamples": resamples, "seed": seed, "alpha": ALPHA,
        "arms": {name: {"folder": _under(a.folder, study), "editor": a.editor, "model": a.results.model,
                        "num_edits": a.results.num_edits, "partial": a.partial} for name, a in arms.items()},
        "points": points, "spectral": spectral_summary, "times": times_summary,
        "plain_answer": answers, "prune_tests": tests, "restraint_tests": restraint_tests,
        "reference_tests": ref_tests, "goal": (goal.__dict__ | {"rows": goals}) if goal else None, "notes": list(dict.fromkeys(notes)),
        "kappa_w0": kappa_w0 or {},
    }
    return Report("\n".join(md), summary)


# ---------------------------------------------------------------- summary table (docs/results.md)


SUMMARY_EDITS = (250, 500, 1000)
# The matrix issue 19 asks for (editor keys as the study names its arms); editors the JSON also has follow.
SUMMARY_EDITORS = ["rome", "memit", "alphaedit", "zsre_rome"]
DATASET_PREFIXES = {"zsre_": "ZsRE"}  # an arm named <prefix><editor> edits that dataset; every other arm CounterFact
SUMMARY_BEGIN, SUMMARY_END = "<!-- summary:begin -->", "<!-- summary:end -->"


def editor_and_dataset(editor: str) -> tuple[str, str]:
    """``("ROME", "ZsRE")`` for the study's editor key ``zsre_rome``; CounterFact when no dataset prefix."""
    for prefix, dataset in DATASET_PREFIXES.items():
        if editor.startswith(prefix):
            rest = editor[len(prefix):]
            return EDITOR_LABELS.get(rest, rest), dataset
    return EDITOR_LABELS.get(editor, editor), "CounterFact"


def summary_point(rows: list[dict[str, Any]], target: int, following: int | None) -> dict[str, Any] | None:
    """The evaluation point shown for ``target`` edits: the first one in [target, following) with downstream
    scores (a batch editor reaches 250 at 300), else the point at exactly ``target``, else None."""
    late = [r for r in rows if target <= r["num_edits"] < (following or math.inf) and r.get("downstream")]
    if late:
        return min(late, key=lambda r: r["num_edits"])
    return next((r for r in rows if r["num_edits"] == target), None)


def _test_text(change: dict[str, Any], digits: int) -> str:
    return f"Δ {change['difference']:+.{digits}f}, p={fmt(change['p_value'], 3)}"


def _downstream_test(summary: dict[str, Any], editor: str, variant: str, key: str, point: dict[str, Any]) -> str:
    """The paired test of a downstream score against the unedited model at ``point``: the point's own ``change``
    (reports since it was added), else what the plain answer kept — Δ and p at the first significant fall,
    "no sig. fall" at the points tested before it — else nothing."""
    change = (point["downstream"].get(key) or {}).get("change")
    if change is not None:
        return _test_text(change, 3)
    answer = next((a for a in summary.get("plain_answer", []) if a["editor"] == editor and a["variant"] == variant), None)
    first = (answer or {}).get("downstream", {}).get(key)
    if not first:
        return ""
    if first.get("num_edits") == point["num_edits"]:
        return _test_text(first, 3)
    if point["num_edits"] in first.get("tested", []):
        return "no sig. fall"
    return ""


def summary_table(summary: dict[str, Any], edits: tuple[int, ...] = SUMMARY_EDITS) -> str:
    """docs/results.md's summary table from a study report's JSON summary (``--out``), as Markdown.

    Rows: editor × dataset × {unedited, no restraint, PRUNE per edit, PRUNE once at N} × ``edits``; columns:
    perplexity with its paired change from the unedited model, KL, the four tasks with their paired tests, and
    efficacy / generalization / neighborhood, each with its 95 % interval. "—": not measured. Needs only the
    JSON (no run folders).
    """
    points = summary.get("points", {})
    editors = sorted(set(SUMMARY_EDITORS) | set(points), key=arm_order)
    tasks = list(DOWNSTREAM)
    header = ["editor", "dataset", "PRUNE", "edits", "perplexity (Δ NLL vs unedited)", "KL",
              *[DOWNSTREAM[k] for k in tasks], "efficacy", "generalization", "neighborhood"]
    blank = ["—"] * (len(header) - 4)

    def cells(editor: str, variant: str | None, r: dict[str, Any] | None) -> list[str]:
        if r is None:
            return blank
        probes, downstream, edit = r.get("probes") or {}, r.get("downstream") or {}, r.get("edits") or {}
        perplexity = fmt_iv(probes.get("perplexity"), 2)
        if probes.get("nll_change"):
            perplexity += f" · {_test_text(probes['nll_change'], 3)}"
        out = [perplexity, fmt_iv(probes.get("kl"), 4)]
        for key in tasks:
            text = fmt_iv(downstream.get(key))
            test = _downstream_test(summary, editor, variant, key, r) if variant and key in downstream else ""
            out.append(f"{text} · {test}" if test else text)
        return out + [fmt_iv(edit.get(k)) for k in ("efficacy", "generalization", "neighborhood")]

    rows = []
    for editor in editors:
        name, dataset = editor_and_dataset(editor)
        curves = points.get(editor, {})
        if not curves:
            rows.append([name, dataset, "not run", "—", *blank])
            continue
        unedited = next((r for rs in curves.values() for r in rs if r["num_edits"] == 0), None)
        rows.append([name, dataset, "unedited", "0", *cells(editor, None, unedited)])
        for variant in [v for v in VARIANTS if v in CORE_VARIANTS or v in curves]:
            shown = [(target, summary_point(curves.get(variant, []), target, following))
                     for target, following in zip(edits, [*edits[1:], None])]
            if not any(r for _, r in shown):  # a variant not run, or stopped before the first target: one row
                rows.append([name, dataset, VARIANT_LABELS[variant], "—", *blank])
                continue
            rows += [[name, dataset, VARIANT_LABELS[variant], str(r["num_edits"] if r else target), *cells(editor, variant, r)]
                     for target, r in shown]
    legend = (
        "Generated by `python -m prune_lit.analysis.study_report --summary-from benchmarks/results/study1000*.json "
        "--write-summary docs/results.md` (the study reports merged in name order, later ones winning per editor and variant). "
        "Each value with its 95 % interval (perplexity: bootstrap over probe windows; KL: bootstrap over windows; tasks: "
        "Wilson for 0/1 scores, percentile bootstrap for ROUGE; edit metrics: Wilson over the edited cases). After `·`, the "
        "paired test against the unedited model on the same windows / examples: Δ NLL in nats per token (paired "
        f"bootstrap with {summary.get('resamples', 0):,} resamples, whose smallest p is 1/(resamples + 1)), task score change "
        "(exact McNemar for 0/1 scores, paired bootstrap for ROUGE). \"no sig. fall\": tested, "
        "no fall with p < 0.05; no test shown: the JSON keeps none for that point (reports before per-point tests kept "
        "only each curve's first significant fall). \"—\": not measured. The unedited edit metrics are over every case "
        "of the run, the edited rows' over the cases edited so far. A batch editor's row is its first evaluation point "
        f"with downstream scores at or past the target (edits column). Targets: {', '.join(map(str, edits))} edits; a "
        "variant with no point at any of them has one row, edits \"—\"."
    )
    commits = {arm: t.get("code_commit") for arm, t in summary.get("times", {}).items()}
    if commits:
        legend += " Code of each arm (results.json's `code_commit`): " + ", ".join(
            f"{arm} {c or 'not recorded'}" for arm, c in sorted(commits.items(), key=lambda kv: arm_order(kv[0]))) + "."
    unfinished = {arm: a["partial"] for arm, a in summary.get("arms", {}).items() if a.get("partial") is not None}
    if unfinished:
        legend += " **Unfinished arms**, read from their last checkpoint: " + ", ".join(
            f"{arm} (to {n} edits)" for arm, n in sorted(unfinished.items(), key=lambda kv: arm_order(kv[0]))) + "."
    return legend + "\n\n" + table(header, rows)


def replace_between_markers(text: str, content: str, begin: str = SUMMARY_BEGIN, end: str = SUMMARY_END) -> str:
    """``text`` with what lies between the ``begin`` and ``end`` marker lines replaced by ``content``."""
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"need exactly one {begin!r} and one {end!r}, found {text.count(begin)} and {text.count(end)}")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    if end in head:
        raise ValueError(f"{end!r} comes before {begin!r}")
    return f"{head}{begin}\n{content.strip()}\n{end}{tail}"


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from several study reports' JSON summaries (arms run in different studies, e.g. the first
    study's ROME arms and a later study's MEMIT arms), later ones winning: per editor and variant for ``points``
    and ``spectral``, per arm for ``arms`` and ``times``, per matrix for ``kappa_w0``; list items (``plain_answer``,
    ``prune_tests``, ``restraint_tests``, ``reference_tests``) of an (editor, variant) a later summary holds replace the earlier ones; ``notes`` are joined.

    Raises ValueError when the summaries used different bootstrap settings (their intervals would not compare).
    """
    if not summaries:
        raise ValueError("no summaries to merge")
    settings = {(s.get("resamples"), s.get("seed"), s.get("alpha")) for s in summaries}
    if len(settings) > 1:
        raise ValueError(f"summaries with different (resamples, seed, alpha): {sorted(settings, key=str)}")
    merged: dict[str, Any] = {k: v for k, v in summaries[0].items()}
    for later in summaries[1:]:
        for section in ("points", "spectral"):
            into = {e: dict(v) for e, v in merged.get(section, {}).items()}
            for editor, variants in later.get(section, {}).items():
                into.setdefault(editor, {}).update(variants)
            merged[section] = into
        for section in ("arms", "times", "kappa_w0"):
            merged[section] = {**merged.get(section, {}), **later.get(section, {})}
        for section in ("plain_answer", "prune_tests", "restraint_tests", "reference_tests"):
            replaced = {(i.get("editor"), i.get("variant")) for i in later.get(section, [])}
            kept = [i for i in merged.get(section, []) if (i.get("editor"), i.get("variant")) not in replaced]
            merged[section] = kept + list(later.get(section, []))
        merged["notes"] = list(merged.get("notes", [])) + [n for n in later.get("notes", []) if n not in merged.get("notes", [])]
    return merged


def write_summary(page: Path, summary: dict[str, Any]) -> None:
    """Regenerate the summary table between the markers of ``page`` (the page is only written when it has them)."""
    page.write_text(replace_between_markers(page.read_text(), summary_table(summary)))


# ---------------------------------------------------------------- figures


def _series(rows: list[dict[str, Any]], section: str, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    xs, ys, lo, hi = [], [], [], []
    for r in rows:
        iv = (r.get(section) or {}).get(key)
        if iv is None:
            continue
        xs.append(r["num_edits"])
        ys.append(iv["estimate"])
        lo.append(iv["low"] if iv.get("low") is not None else math.nan)
        hi.append(iv["high"] if iv.get("high") is not None else math.nan)
    return xs, ys, lo, hi


def _change_band(rows: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]] | None:
    """Perplexity band from the paired interval of the NLL change: ``exp(NLL_0 + [low, high])`` (0 at 0 edits)."""
    before = next((r for r in rows if r["num_edits"] == 0 and r.get("probes")), None)
    if before is None or "perplexity" not in before["probes"]:
        return None
    nll0 = math.log(before["probes"]["perplexity"]["estimate"])
    xs, lo, hi = [0], [math.exp(nll0)], [math.exp(nll0)]
    for r in rows:
        ch = (r.get("probes") or {}).get("nll_change")
        if ch is not None:
            # exp(mean of the window NLLs): the perplexity when windows are of equal length.
            xs.append(r["num_edits"])
            lo.append(math.exp(ch["mean_a"] + ch["low"]))
            hi.append(math.exp(ch["mean_a"] + ch["high"]))
    return (xs, lo, hi) if len(xs) > 1 else None


def _style(editor: str, variant: str, with_editor: bool = True) -> dict[str, Any]:
    name = label(editor, variant) if with_editor else VARIANT_LABELS[variant]
    return {"color": EDITOR_COLORS.get(editor, "gray"), "linestyle": VARIANT_STYLES[variant], "label": name}


def _model(summary: dict[str, Any]) -> str:
    models = sorted({str(a["model"]) for a in summary["arms"].values()})
    return ", ".join(models)


def plot_probes(summary: dict[str, Any], out: Path) -> bool:
    """The figure a user wants first: per editor, perplexity (top) and KL (bottom) vs edits, ± PRUNE."""
    editors = [e for e, vs in summary["points"].items() if any(r["probes"] for rs in vs.values() for r in rs)]
    if not editors:
        return False
    fig, axes = plt.subplots(2, len(editors), figsize=(4.2 * len(editors) + 0.6, 6.6), squeeze=False, sharex="col")
    for j, editor in enumerate(editors):
        top, bottom = axes[0, j], axes[1, j]
        for variant, rows in summary["points"][editor].items():
            style = _style(editor, variant, with_editor=False)
            xs, ys, _, _ = _series(rows, "probes", "perplexity")
            if xs:
                top.plot(xs, ys, marker="o", markersize=3, **style)
                band = _change_band(rows)
                if band:
                    top.fill_between(*band, color=style["color"], alpha=0.15, linewidth=0)
            xs, ys, lo, hi = _series(rows, "probes", "kl")
            if xs:
                bottom.plot(xs, ys, marker="o", markersize=3, **style)
                bottom.fill_between(xs, lo, hi, color=style["color"], alpha=0.12, linewidth=0)
        top.set_title(EDITOR_LABELS.get(editor, editor))
        lows = [v for line in top.get_lines() for v in line.get_ydata() if v > 0]
        if lows and max(lows) / min(lows) > 10:
            top.set_yscale("log")
        bottom.set_xlabel("edits")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    axes[0, 0].set_ylabel("perplexity (WikiText-2 test)")
    axes[1, 0].set_ylabel("KL(unedited ‖ edited), nats/token")
    fig.suptitle(f"General ability vs sequential edits ({_model(summary)})\nbands: 95 % bootstrap over probe windows,\n"
                 "paired with the unedited model (perplexity), of the mean (KL)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def _offsets(count: int, span: float) -> list[float]:
    return [span * (i - (count - 1) / 2) for i in range(count)]


def _panels(count: int) -> tuple[Any, list[Any]]:
    """A figure of ``count`` panels, two per row from three on (wide enough to read), unused ones hidden."""
    cols = count if count <= 2 else 2
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.6 * rows + 0.9), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _finish(fig: Any, axes: list[Any], title: str, out: Path) -> None:
    """Suptitle, one legend under the panels (one entry per run), save."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_edits(summary: dict[str, Any], out: Path) -> bool:
    keys = [k for k in EDIT_METRICS if any(r["edits"] and k in r["edits"] for vs in summary["points"].values() for rs in vs.values() for r in rs)]
    if not keys:
        return False
    fig, axes = _panels(len(keys))
    for ax, key in zip(axes, keys):
        for editor, vs in summary["points"].items():
            for variant, rows in vs.items():
                xs, ys, _, _ = _series(rows, "edits", key)
                if xs:
                    ax.plot(xs, ys, marker="o", markersize=3, **_style(editor, variant))
        ax.set_title(key)
        ax.set_xlabel("edits")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    _finish(fig, axes, f"Edit metrics over all cases edited so far ({_model(summary)})", out)
    return True


def plot_downstream(summary: dict[str, Any], out: Path) -> bool:
    keys = [k for k in DOWNSTREAM if any(r["downstream"] and k in r["downstream"] for vs in summary["points"].values() for rs in vs.values() for r in rs)]
    if not keys:
        return False
    lines = [(e, v, rows) for e, vs in summary["points"].items() for v, rows in vs.items() if any(r["downstream"] for r in rows)]
    xmax = max(r["num_edits"] for _, _, rows in lines for r in rows)
    shifts = _offsets(len(lines), 0.012 * max(xmax, 1))  # side by side, so the interval bars do not hide each other
    fig, axes = _panels(len(keys))
    for ax, key in zip(axes, keys):
        for (editor, variant, rows), dx in zip(lines, shifts):
            xs, ys, lo, hi = _series(rows, "downstream", key)
            if not xs:
                continue
            err = [[max(y - l, 0) if not math.isnan(l) else 0 for y, l in zip(ys, lo)],
                   [max(h - y, 0) if not math.isnan(h) else 0 for y, h in zip(ys, hi)]]
            ax.errorbar([x + dx for x in xs], ys, yerr=err, marker="o", markersize=3, capsize=2, elinewidth=0.8, **_style(editor, variant))
        ns = sorted({r["downstream"][key]["n"] for _, _, rows in lines for r in rows if r["downstream"] and key in r["downstream"] and r["downstream"][key].get("n")})
        ax.set_title(f"{DOWNSTREAM[key]} (n={'/'.join(map(str, ns))})")
        ax.set_xlabel("edits")
        ax.grid(alpha=0.3)
    _finish(fig, axes, f"Downstream scores with 95 % intervals ({_model(summary)}; 0 edits = the unedited model; "
            "runs side by side)", out)
    return True


def plot_spectral(summary: dict[str, Any], out: Path) -> bool:
    if not any(sc for vs in summary["spectral"].values() for sc in vs.values()):
        return False
    fig, axes = _panels(2)
    axes[1].sharex(axes[0])
    k0 = summary.get("kappa_w0") or {}
    if k0:
        axes[1].axhline(max(k0.values()), color="gray", linewidth=1, linestyle=":", label="largest κ(W₀), unedited")
    for editor, vs in summary["spectral"].items():
        for variant, sc in vs.items():
            pts = sorted((int(n), v) for n, v in sc.items())
            style = _style(editor, variant)
            if variant == "at-end":  # one point: the final restraint of the unrestrained run
                style = style | {"linestyle": "none", "marker": "*", "markersize": 10}
            xr = [(n, v["ratio"]) for n, v in pts if v.get("ratio") is not None]
            xk = [(n, v["kappa_w"]) for n, v in pts if v.get("kappa_w") is not None]
            if xr:
                axes[0].plot(*zip(*xr), **style)
            if xk:
                axes[1].plot(*zip(*xk), **({"marker": "."} | style))
    axes[0].axhline(1.0, color="red", linewidth=1, linestyle=":", label="σ_max(ΔW) = σ_max(W₀)")
    axes[0].set_title("largest σ_max(ΔW) / σ_max(W₀) over edited matrices")
    axes[1].set_title("largest κ(W) over edited matrices")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("edits")
        ax.grid(alpha=0.3)
    _finish(fig, axes, f"Spectra of the edited matrices ({_model(summary)}; ★ restrained once at the end)", out)
    return True


def _under(folder: Path, study: Path) -> str:
    """An arm's folder as the committed summary names it: relative to the study folder (no machine paths)."""
    try:
        return str(Path(folder).resolve().relative_to(Path(study).resolve()))
    except ValueError:
        return Path(folder).name


def write_figures(summary: dict[str, Any], folder: Path, prefix: str = "study") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in (("probes", plot_probes), ("edits", plot_edits), ("downstream", plot_downstream), ("spectral", plot_spectral)):
        path = folder / f"{prefix}_{name}.png"
        if plot(summary, path):
            written.append(path)
    return written


# ---------------------------------------------------------------- κ(W₀)


def kappa_w0(study: Path, only: Sequence[str] | None = None) -> dict[str, float]:
    """κ(W₀) of every matrix any arm edited, from the unedited model (loads it once)."""
    import torch

    from prune_lit.models.arch import get_weight
    from prune_lit.models.loader import load_model

    arms, _ = load_study(study, only)
    names = sorted({r["matrix"] for a in arms.values() for r in a.spectral})
    models = {a.results.model or "smollm2-135m" for a in arms.values()}
    if len(models) != 1:
        raise ValueError(f"arms of several models: {models}")
    model = load_model(models.pop()).model
    out = {}
    for n in names:
        s = torch.linalg.svdvals(get_weight(model, n).float())
        out[n] = float(s[0] / s[-1])
    return out


def finite(x: Any) -> Any:
    """``x`` with NaN / ±inf floats as None (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> Report | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=Path, default=Path("logs/study"), help="run_study.sh's STUDY_DIR (logs/<arm>/, timings.tsv)")
    p.add_argument("--figures", type=Path, default=None,
                   help="folder of the study_*.png figures (default: <study>/figures, beside the runs, so that a report of a "
                        "few arms never overwrites the figures docs/ shows)")
    p.add_argument("--prefix", default="study", help="file name prefix of the figures")
    p.add_argument("--md", type=Path, default=None, help="also write the Markdown tables here")
    p.add_argument("--out", type=Path, default=None, help="also write a JSON summary here")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples per interval / test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", nargs="+", default=None, help="report only these arms (default: every arm folder)")
    p.add_argument("--reference", default=None,
                   help="also test every other arm against this one (e.g. rome_prune), paired on the same windows / examples")
    p.add_argument("--goal", type=float, nargs=2, metavar=("MAX_RISE", "MIN_EFFICACY"), default=None,
                   help="add a table of which arms meet it at their last point, e.g. 0.05 0.90 (+5 %% perplexity, "
                        "efficacy ≥ 0.90)")
    p.add_argument("--no-w0", action="store_true", help="skip κ(W₀) of the unedited model (no model load)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--summary-from", type=Path, nargs="+", default=None,
                   help="only make the summary table, from these JSON summaries (committed --out files, merged in "
                        "order, later ones winning per editor and variant; no run folders)")
    p.add_argument("--write-summary", type=Path, default=None,
                   help=f"with --summary-from: write the table between {SUMMARY_BEGIN} and {SUMMARY_END} of this page")
    args = p.parse_args(argv)
    if args.write_summary and not args.summary_from:
        p.error("--write-summary needs --summary-from")
    if args.summary_from:
        summary = merge_summaries([json.loads(path.read_text()) for path in args.summary_from])
        if args.write_summary:
            write_summary(args.write_summary, summary)
        else:
            print(summary_table(summary))
        return None
    k0 = None if args.no_w0 else kappa_w0(args.study, args.arms)
    report = build_report(args.study, args.resamples, args.seed, k0, args.arms, args.reference,
                          Goal(*args.goal) if args.goal else None)
    print(report.markdown)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(report.markdown + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(finite(report.summary), indent=1, default=float, allow_nan=False) + "\n")
    if not args.no_figures:
        written = write_figures(report.summary, args.figures or args.study / "figures", args.prefix)
        print("\nfigures: " + ", ".join(str(w) for w in written))
    return report


if __name__ == "__main__":
    main()
