"""Summarise sequential-editing runs (results.json + spectral.json) as the table in docs/alphaedit.md.

  python -m prune_lit.analysis.alphaedit_report RUNS/memit_b100/version_0 RUNS/alphaedit_b100/version_0 ... [--json FILE]

Per run: edit metrics before editing and at every evaluated edit count; per evaluated count the largest
σ_max(ΔW)/σ_max(W₀) and κ(W) over the edited matrices (SpectralDiagnostics records); seconds per step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prune_lit.analysis.schema import RunResults, find_results, read_spectral
from prune_lit.reporting import write_json_atomic

METRICS = ("efficacy", "generalization", "neighborhood", "locality", "rewrite_acc", "rephrase_acc", "locality_acc")


def summarise(run: Path) -> dict:
    """One run folder (or its results.json): its counts, times and, per evaluated edit count, edits and spectra."""
    path = find_results(run)
    res = RunResults.read(path)
    spec = read_spectral(path.parent)
    out = {"run": str(run), "editor": res.editor, "callbacks": res.callbacks, "num_steps": res.num_steps,
           "rejected": res.num_rejected_steps, "seconds_editing": res.seconds_editing,
           "seconds_per_step": res.seconds_editing / max(res.num_steps, 1),
           "seconds_restraint": res.seconds_restraint if res.seconds_restraint is not None else 0.0,
           "before": res.before.get("edits"), "at": {}}
    for point in res.history:
        n = point.num_edits
        if point.get("edits") is None:
            continue
        recs = [r for r in spec if r["num_edits"] == n and not r["final"]] or [r for r in spec if r["num_edits"] == n]
        out["at"][n] = dict(
            edits=point.get("edits"),
            sigma_ratio_max=max(r["sigma_max_delta"] / r["sigma_max_w0"] for r in recs) if recs else float("nan"),
            kappa_max=max(r.get("kappa_w", float("nan")) for r in recs) if recs else float("nan"),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [summarise(r) for r in args.runs]
    for s in rows:
        print(f"\n{s['run']}  {s['editor']} {s['callbacks']}  steps {s['num_steps']} rejected {s['rejected']}  "
              f"s/step {s['seconds_per_step']:.0f}  restraint s {s['seconds_restraint']:.1f}")
        if s["before"]:
            print("  before: " + " ".join(f"{m} {s['before'][m]:.3f}" for m in METRICS))
        for n, a in s["at"].items():
            print(f"  {n}: " + " ".join(f"{m} {a['edits'][m]:.3f}" for m in METRICS)
                  + f"  σmax(ΔW)/σmax(W0) {a['sigma_ratio_max']:.3f}  κ(W) {a['kappa_max']:.1f}")
    if args.json:
        write_json_atomic(args.json, rows, indent=1, default=float)


if __name__ == "__main__":
    main()
