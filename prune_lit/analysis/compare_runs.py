"""Compare two runs' results.json at the same edit count: differences with 95 % intervals and paired tests.

    python -m prune_lit.analysis.compare_runs RUN_A RUN_B [--at N ...] [--out FILE]

RUN_A / RUN_B: a results.json, or a run folder holding one (its newest ``version_<n>`` when it has several).
The points compared are edit counts (``RunResults.points``): 0 (the unedited model's ``*_before`` sections) and
every ``history`` point; the ``*_after`` sections fill the last count when no history point holds it. Default:
the largest count both runs have.

Per section (edits, downstream, probes, ...) and point:
* every numeric key both runs have: A, B and B − A (no interval: an aggregate alone carries none);
* every list of per-example scores both have (``per_example: {task: [...]}`` from downstream,
  ``per_window: {nll: [...], kl: [...]}`` from the probes): each run's interval (Wilson for 0/1 scores,
  percentile bootstrap otherwise) and a paired test of B − A on the same examples (exact McNemar for 0/1,
  paired bootstrap otherwise). Lists of different lengths get unpaired intervals only.
``--pair edits:edits_restrained`` compares named sections instead (give the same run twice to set its
unrestrained scores against its at-end-restrained ones). Anything missing is skipped with a one-line note. Prints a Markdown table; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prune_lit.analysis.schema import RunResults, find_results
from prune_lit.metrics.intervals import compare_paired, score_interval

PER_EXAMPLE_KEYS = ("per_example", "per_window")  # section keys holding {name: [score per example]}
SKIPPED_SUFFIXES = ("time_s", "tokens_per_s", "seconds")  # timings are not outcomes


def _as_results(results: RunResults | dict[str, Any]) -> RunResults:
    return results if isinstance(results, RunResults) else RunResults.from_dict(results)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"


def _ci(low: float | None, high: float | None) -> str:
    return "" if low is None else f" [{_fmt(low)}, {_fmt(high)}]"


@dataclass
class Comparison:
    run_a: str
    run_b: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"run_a": self.run_a, "run_b": self.run_b, "rows": self.rows, "notes": self.notes}

    def table(self) -> str:
        lines = ["| edits | section | metric | n | A | B | B − A | p | test |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            a = _fmt(r["a"]) + _ci(r.get("a_low"), r.get("a_high"))
            b = _fmt(r["b"]) + _ci(r.get("b_low"), r.get("b_high"))
            d = _fmt(r["difference"]) + _ci(r.get("diff_low"), r.get("diff_high"))
            lines.append(f"| {r['num_edits']} | {r['section']} | {r['metric']} | {r.get('n') or ''} | {a} | {b} | {d} | "
                         f"{_fmt(r.get('p_value'), 3) if r.get('p_value') is not None else ''} | {r.get('test', '')} |")
        return "\n".join(lines)


def _compare_lists(cmp: Comparison, n_edits: int, section: str, name: str, a: list, b: list,
                   confidence: float, resamples: int, seed: int) -> None:
    row: dict[str, Any] = {"num_edits": n_edits, "section": section, "metric": name}
    try:
        ia, ib = score_interval(a, confidence, resamples, seed), score_interval(b, confidence, resamples, seed)
    except ValueError as err:
        cmp.note(f"{n_edits} edits, {section}/{name}: {err}; skipped")
        return
    row.update(a=ia.estimate, a_low=ia.low, a_high=ia.high, b=ib.estimate, b_low=ib.low, b_high=ib.high,
               difference=ib.estimate - ia.estimate, interval=ia.method)
    if len(a) == len(b):
        c = compare_paired(a, b, confidence, resamples, seed)
        row.update(n=c.n, diff_low=c.low, diff_high=c.high, p_value=c.p_value, test=c.method,
                   a_only=c.a_only, b_only=c.b_only)
    else:
        row.update(n=f"{len(a)}/{len(b)}", test="unpaired (different example counts)")
        cmp.note(f"{n_edits} edits, {section}/{name}: {len(a)} vs {len(b)} examples; no paired test")
    cmp.rows.append(row)


def compare_results(a: RunResults | dict[str, Any], b: RunResults | dict[str, Any], at: list[int] | None = None, confidence: float = 0.95,
                    resamples: int = 10_000, seed: int = 0, names: tuple[str, str] = ("A", "B"),
                    pairs: list[tuple[str, str]] | None = None) -> Comparison:
    """Compare runs ``a`` and ``b`` (results or results.json dicts) at edit counts ``at`` (default: the largest both have).

    ``pairs``: compare only these (section of A, section of B), e.g. ``[("edits", "edits_restrained")]`` to set
    one run's unrestrained scores against its at-end-restrained ones; default: every section, by name.
    """
    cmp = Comparison(*names)
    a, b = _as_results(a), _as_results(b)
    pa, pb = a.points(), b.points()
    common = sorted(set(pa) & set(pb))
    if not common:
        cmp.note(f"no edit count in common (A: {sorted(pa)}, B: {sorted(pb)}); nothing compared")
        return cmp
    wanted = at if at else [common[-1]]
    ids_a, ids_b = a.edited_case_ids, b.edited_case_ids
    if ids_a is not None and ids_b is not None and ids_a[: min(len(ids_a), len(ids_b))] != ids_b[: min(len(ids_a), len(ids_b))]:
        cmp.note("the runs edited different cases (edited_case_ids differ); edit metrics are not on the same requests")
    for n in wanted:
        if n not in common:
            cmp.note(f"{n} edits: not in both runs (A: {sorted(pa)}, B: {sorted(pb)}); skipped")
            continue
        section_pairs = pairs or [(s, s) for s in sorted(set(pa[n]) | set(pb[n]))]
        for sec_a, sec_b in section_pairs:
            section = sec_a if sec_a == sec_b else f"{sec_a} vs {sec_b}"
            if sec_a not in pa[n] or sec_b not in pb[n]:
                missing = [f"{s!r} in run {r}" for s, r, pts in ((sec_a, "A", pa[n]), (sec_b, "B", pb[n])) if s not in pts]
                cmp.note(f"{n} edits: no {' nor '.join(missing)}; skipped")
                continue
            sa, sb = pa[n][sec_a], pb[n][sec_b]
            for key in sorted(k for k in set(sa) & set(sb) if _number(sa[k]) and _number(sb[k])):
                if key == "n" or key.endswith(SKIPPED_SUFFIXES):
                    continue
                cmp.rows.append({"num_edits": n, "section": section, "metric": key, "a": float(sa[key]), "b": float(sb[key]),
                                 "difference": float(sb[key]) - float(sa[key]), "n": sa.get("n") if sa.get("n") == sb.get("n") else None,
                                 "test": "aggregate only"})
            lists_found = False
            for key in PER_EXAMPLE_KEYS:
                la, lb = sa.get(key), sb.get(key)
                if not isinstance(la, dict) or not isinstance(lb, dict):
                    if isinstance(la, dict) != isinstance(lb, dict):
                        cmp.note(f"{n} edits, {section}: {key!r} only in run {'A' if isinstance(la, dict) else 'B'}; no paired test")
                    continue
                lists_found = True
                for name in sorted(set(la) | set(lb)):
                    if name not in la or name not in lb:
                        cmp.note(f"{n} edits, {section}/{key}: {name!r} only in run {'A' if name in la else 'B'}; skipped")
                        continue
                    _compare_lists(cmp, n, section, f"{key}/{name}", la[name], lb[name], confidence, resamples, seed)
            if not lists_found:
                cmp.note(f"{n} edits, {section}: no per-example scores in both runs; differences without intervals")
    return cmp


def main(argv: list[str] | None = None) -> Comparison:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", type=Path, help="results.json or run folder (the baseline, A)")
    p.add_argument("run_b", type=Path, help="results.json or run folder (B; differences are B − A)")
    p.add_argument("--at", type=int, nargs="+", default=None, help="edit counts to compare (default: the largest in both)")
    p.add_argument("--all", action="store_true", help="compare at every edit count both runs have")
    p.add_argument("--pair", nargs="+", default=None, metavar="SEC_A:SEC_B",
                   help="compare section SEC_A of A with SEC_B of B only (e.g. edits:edits_restrained, with A = B)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_runs.json"))
    args = p.parse_args(argv)
    fa, fb = find_results(args.run_a), find_results(args.run_b)
    a, b = RunResults.read(fa), RunResults.read(fb)
    at = sorted(set(a.points()) & set(b.points())) if args.all else args.at
    pairs = [tuple(x.split(":", 1)) if ":" in x else (x, x) for x in args.pair] if args.pair else None
    cmp = compare_results(a, b, at, args.confidence, args.resamples, args.seed, (str(fa), str(fb)), pairs)
    print(f"A: {fa}\nB: {fb}\n")
    print(cmp.table())
    for line in cmp.notes:
        print(f"note: {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = cmp.as_dict() | {"confidence": args.confidence, "resamples": args.resamples, "seed": args.seed}
    args.out.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"\nwrote {args.out}")
    return cmp


if __name__ == "__main__":
    main()
