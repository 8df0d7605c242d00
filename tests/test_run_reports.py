"""prune_lit.analysis.alphaedit_report and plot_curves on a synthetic run folder; the analysis package's imports."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from prune_lit.analysis import alphaedit_report, plot_curves
from prune_lit.analysis.schema import SCHEMA_VERSION

PACKAGE = Path(__file__).resolve().parents[1] / "prune_lit"
EDITS = {"efficacy": 1.0, "generalization": 0.5, "neighborhood": 0.8, "locality": 0.9, "rewrite_acc": 0.9,
         "rephrase_acc": 0.4, "locality_acc": 0.95, "n": 4}


def _run(folder: Path, spectral_as_list: bool = False) -> Path:
    run = folder / "version_0"
    run.mkdir(parents=True)
    results = {"schema_version": SCHEMA_VERSION, "editor": "AlphaEditEditor", "callbacks": ["SpectralDiagnostics"],
               "num_edits": 4, "num_steps": 2, "num_rejected_steps": 0, "seconds_editing": 10.0, "seconds_restraint": 0,
               "edits_before": {**EDITS, "efficacy": 0.0},
               "history": [{"num_edits": 2, "edits": {**EDITS, "n": 2}}, {"num_edits": 4, "edits": EDITS}]}
    (run / "results.json").write_text(json.dumps(results))
    records = [{"num_edits": n, "matrix": m, "sigma_max_delta": s, "sigma_max_w0": 10.0, "kappa_w": k, "final": False}
               for n, m, s, k in [(2, "a", 2.0, 50.0), (2, "b", 5.0, 60.0), (4, "a", 12.0, 70.0), (4, "b", 1.0, 80.0)]]
    (run / "spectral.json").write_text(json.dumps(records if spectral_as_list else {"records": records}))
    return run


def test_alphaedit_report_summarises_a_run(tmp_path):
    run = _run(tmp_path / "alphaedit")
    summary = alphaedit_report.summarise(tmp_path / "alphaedit")  # a run folder means its newest version
    assert summary["editor"] == "AlphaEditEditor" and summary["seconds_per_step"] == 5.0
    assert summary["before"]["efficacy"] == 0.0 and sorted(summary["at"]) == [2, 4]
    assert summary["at"][2]["sigma_ratio_max"] == 0.5 and summary["at"][4]["sigma_ratio_max"] == 1.2  # largest over matrices
    assert summary["at"][4]["kappa_max"] == 80.0 and summary["at"][4]["edits"]["n"] == 4
    assert alphaedit_report.summarise(run / "results.json") == summary | {"run": str(run / "results.json")}


def test_plot_curves_writes_a_figure(tmp_path, capsys):
    runs = [_run(tmp_path / "a"), _run(tmp_path / "b", spectral_as_list=True)]  # older runs wrote a bare list
    results, spectral = plot_curves.load_run(runs[1])
    assert results.num_edits == 4 and [r["matrix"] for r in spectral] == ["a", "b", "a", "b"]
    out = tmp_path / "curves.png"
    plot_curves.main([str(r) for r in runs] + ["--labels", "A", "B", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in capsys.readouterr().out


def test_analysis_imports_nothing_from_the_loop_or_its_collaborators():
    """The analysis reads files: it may build on metrics, models and the schema, never on modules/, callbacks/ or
    editors/ (the loop imports the schema, so the other way round would be a cycle)."""
    banned = ("prune_lit.modules", "prune_lit.callbacks", "prune_lit.editors", "prune_lit.cli_main")
    found = []
    for path in sorted((PACKAGE / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.startswith(banned)]
    assert not found, found
