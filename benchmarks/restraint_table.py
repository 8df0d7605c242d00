"""The restraint comparison's tables in docs/restraints.md, from the study report's JSON summary.

    python benchmarks/restraint_table.py benchmarks/results/study1000_restraints.json          # at 1,000 edits, with cost
    python benchmarks/restraint_table.py benchmarks/results/study1000_restraints.json --edits 500

One row per arm at ``--edits`` (an arm without that point: its last point with probes and edit metrics, marked, as
an unfinished arm read from its checkpoint is): perplexity, its rise over the unedited model with the paired interval,
KL, the edit metrics, the four tasks; at the arms' full length also the restraint's wall seconds and the edit steps'
CPU seconds (whole-run numbers, so only where the row is the run's end).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prune_lit.analysis.study_report import (DOWNSTREAM, EDITOR_LABELS, VARIANT_LABELS, arm_variant, fmt, perplexity_rise,
                                             rise_interval_text, split_arm)

ARM_ORDER = ["rome", "rome_prune", "rome_key_aware", "rome_sphere", "alphaedit", "alphaedit_key_aware", "alphaedit_sphere"]


def rows(summary: dict[str, Any], edits: int) -> list[str]:
    """Markdown lines (header, rule, one row per arm of ``summary`` in ARM_ORDER, then any others)."""
    cost = edits == max((a.get("num_edits") or 0) for a in summary["arms"].values())
    head = ["arm", "edits", "perplexity", "rise over unedited [95 %]", "KL", "efficacy", "generalization", "neighborhood",
            "GSM8K", "SAMSum R-1", "NQ", "RTE"] + (["restraint (s, wall)", "edit steps (CPU s)"] if cost else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = [a for a in ARM_ORDER if a in summary["arms"]] + [a for a in summary["arms"] if a not in ARM_ORDER]
    for arm in names:
        editor, variant = split_arm(arm)[0], arm_variant(arm)
        points = [p for p in summary["points"].get(editor, {}).get(variant, []) if p.get("probes") and p.get("edits")]
        point = next((p for p in points if p["num_edits"] == edits), None)
        partial = summary["arms"][arm].get("partial")
        if point is None:
            if not points:
                continue
            point = max(points, key=lambda p: p["num_edits"])
        n = point["num_edits"]
        probes, scores, tasks = point["probes"], point["edits"], point.get("downstream") or {}
        rise = rise_interval_text(**perplexity_rise(probes["nll_change"]))
        cells = [f"{EDITOR_LABELS.get(editor, editor)}, {VARIANT_LABELS[variant]}",
                 str(n) if n == edits else f"{n} (unfinished: at {partial} when reported)" if partial else str(n),
                 fmt(probes["perplexity"]["estimate"], 2), rise, f"{probes['kl']['estimate']:.3f}",
                 *(f"{scores[k]['estimate']:.3f}" for k in ("efficacy", "generalization", "neighborhood")),
                 *(f"{tasks[k]['estimate']:.3f}" if k in tasks else "–" for k in DOWNSTREAM)]
        if cost:
            times = summary.get("times", {}).get(arm, {})
            whole = partial is None and n == edits
            cpu = (times.get("cost") or {}).get("parts", {}).get("edit_steps", {}).get("cpu")
            cells += [f"{times.get('seconds_restraint') or 0:.1f}" if whole and variant != "none" else "–",
                      f"{cpu:.0f}" if whole and cpu is not None else "–"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summary", type=Path, help="a study report's --out JSON")
    p.add_argument("--edits", type=int, default=1000)
    args = p.parse_args(argv)
    print("\n".join(rows(json.loads(args.summary.read_text()), args.edits)))


if __name__ == "__main__":
    main()
