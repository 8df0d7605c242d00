"""The cost of one 1,000-edit ROME arm of the study protocol, with the hf and loop generation engines, from measured parts.

Reads ``benchmarks/results/eval_speed.json`` (``bench_eval_speed.py``: per-batch generation times of both engines,
healthy and collapsed, edit-metric seconds per case, probe seconds) and *multiplies out* the protocol of
``benchmarks/run_study.sh`` for the ``rome`` arm (no restraint, with its "PRUNE once at N" copy):

* before editing: the locality reference and the edit metrics of all N cases on the unedited model, the probe
  record and one probe, and the downstream tasks (0 s when cached from an earlier arm; counted once here);
* at every ``eval_every`` edits: the edit metrics of all cases edited so far and one probe, on the model and
  on its restrained copy;
* at N/4, N/2 and N: the downstream tasks on the model and on the restrained copy. The model is healthy at N/4
  and collapsed from N/2 on (docs/results.md: ROME collapses between 300 and 400 edits); the restrained copies
  are counted as healthy (``--copies-collapsed`` counts them as collapsed: the upper bound);
* the edits themselves: ``--edit-seconds`` per edit (the study's measured 4.34 s, results.json of the rome arm).

    python benchmarks/arm_breakdown.py            # prints a Markdown table, writes benchmarks/results/arm_breakdown.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def per_point(speed: dict, pooled: bool) -> dict[str, dict[str, float]]:
    """Seconds of one downstream evaluation per state and engine: per-batch means x batches per task. ``pooled``:
    both engines get the mean of their two prefill times (the same forward on the same inputs, bitwise equal
    logits), so that load noise in the prefill does not pass for a difference between the engines."""
    out: dict[str, dict[str, float]] = {}
    for key, g in speed["generation"].items():
        state, task = key.split("/")
        per_batch = {"hf": [], "loop": []}
        for r in g["timed"]:
            if task == "nli":
                for e in per_batch:
                    per_batch[e].append(r["same"]["seconds"])
                continue
            pre = (r["hf"]["prefill_seconds"] + r["loop"]["prefill_seconds"]) / 2
            for e in per_batch:
                rest = r[e]["seconds"] - r[e]["prefill_seconds"]
                per_batch[e].append((pre if pooled else r[e]["prefill_seconds"]) + rest)
        for e, secs in per_batch.items():
            out.setdefault(state, {}).setdefault(f"total/{e}_s", 0.0)
            out[state][f"total/{e}_s"] += sum(secs) / len(secs) * g["batches_per_evaluation"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speed", default=str(ROOT / "benchmarks" / "results" / "eval_speed.json"))
    p.add_argument("--edits", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--edit-seconds", type=float, default=4.34, help="seconds per ROME edit step (the study's rome arm)")
    p.add_argument("--restraint-seconds", type=float, default=0.08, help="restraint total of the rome arm (results.json)")
    p.add_argument("--copies-collapsed", action="store_true")
    p.add_argument("--raw", action="store_true", help="each engine's own prefill times (default: pooled, see per_point)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "arm_breakdown.json"))
    args = p.parse_args()
    speed = json.loads(Path(args.speed).read_text())
    pp = per_point(speed, pooled=not args.raw)
    em = speed["edit_metrics"]
    probe_s, record_s = speed["probes"]["probe_s"], speed["probes"]["record_s"]
    n, k = args.edits, args.eval_every
    points = list(range(k, n + 1, k))
    cases_scored = sum(points)
    copy_state = "collapsed" if args.copies_collapsed else "healthy"
    down_evals = {"healthy": 1 + 1 + (0 if args.copies_collapsed else 3), "collapsed": 2 + (3 if args.copies_collapsed else 0)}
    rows = {}
    for when, engine, edit_bs in (("before", "hf", 16), ("after", "loop", 16)):
        per_case = em[f"batch{edit_bs}_s_per_request"]
        parts = {
            "edits": n * args.edit_seconds,
            "restraint": args.restraint_seconds,
            "edit metrics": (n + 2 * cases_scored) * per_case + em["locality_reference_s"] / em["requests"] * n,
            "probes": record_s + probe_s * (1 + 2 * len(points)),
            "downstream": sum(cnt * pp[state][f"total/{engine}_s"] for state, cnt in down_evals.items()),
        }
        parts["evaluation (metrics + probes + downstream)"] = parts["edit metrics"] + parts["probes"] + parts["downstream"]
        parts["arm"] = parts["edits"] + parts["restraint"] + parts["evaluation (metrics + probes + downstream)"]
        rows[when] = parts
    print("| part | before (s) | after (s) | after / before |\n|---|---|---|---|")
    for key in rows["before"]:
        b, a = rows["before"][key], rows["after"][key]
        print(f"| {key} | {b:,.0f} | {a:,.0f} | {a / b:.2f} |")
    out = {"source": Path(args.speed).name, "protocol": {"edits": n, "eval_points": points, "cases_scored_at_points": cases_scored,
           "downstream_evaluations": down_evals, "restrained_copies_counted_as": copy_state, "edit_seconds": args.edit_seconds,
           "prefill": "raw" if args.raw else "pooled"}, "downstream_per_evaluation_s": pp,
           "seconds": rows, "measured_under_load": [speed.get("load_at_start"), speed.get("load_at_end")]}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
