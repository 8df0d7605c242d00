"""benchmarks/restraint_table.py: the restraint comparison's rows, read from a study report summary."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("restraint_table", ROOT / "benchmarks" / "restraint_table.py")
restraint_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(restraint_table)


def _point(n: int, nll_change: float, efficacy: float) -> dict:
    iv = {"difference": nll_change, "low": nll_change - 0.01, "high": nll_change + 0.01}
    return {"num_edits": n, "probes": {"perplexity": {"estimate": 40.0}, "kl": {"estimate": 0.1}, "nll_change": iv},
            "edits": {k: {"estimate": efficacy} for k in ("efficacy", "generalization", "neighborhood")},
            "downstream": {"reasoning/exact_match": {"estimate": 0.5}}}


def test_rows_mark_unfinished_arms_and_give_cost_only_for_whole_runs():
    summary = {
        "arms": {"rome_prune": {"num_edits": 1000}, "alphaedit_sphere": {"num_edits": 500, "partial": 700}},
        "points": {"rome": {"per-edit": [_point(500, 0.1, 0.8), _point(1000, 0.2, 0.75)]},
                   "alphaedit": {"sphere": [_point(500, 0.05, 0.9)]}},
        "times": {"rome_prune": {"seconds_restraint": 64.5, "cost": {"parts": {"edit_steps": {"cpu": 2532.0}}}}},
    }
    lines = restraint_table.rows(summary, 1000)
    assert lines[0].endswith("| restraint (s, wall) | edit steps (CPU s) |") and len(lines) == 4
    prune, sphere = lines[2], lines[3]
    assert prune.startswith("| ROME, PRUNE per edit | 1000 | 40.00 | +22.1 % [+20.9 %, +23.4 %] |")
    assert prune.endswith("| 0.500 | – | – | – | 64.5 | 2532 |")
    assert sphere.startswith("| AlphaEdit, SPHERE per step | 500 (unfinished: at 700 when reported) |") and sphere.endswith("| – | – |")
    at_500 = restraint_table.rows(summary, 500)
    assert "restraint" not in at_500[0] and at_500[2].startswith("| ROME, PRUNE per edit | 500 |")
