"""prune_lit.contracts.results: the results.json a run writes and the analysis reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prune_lit.contracts.results import SCHEMA_VERSION, EvalPoint, PartCost, ResultsSchemaError, RunCost, RunResults, find_results

REPO = Path(__file__).resolve().parents[1]


def _results_v1() -> dict:
    probes = {"perplexity": 20.5, "kl_from_unedited": 0.01, "per_window": {"nll": [3.0, 3.1], "kl": [0.01, 0.02]}}
    return {
        "schema_version": SCHEMA_VERSION, "model": "tiny-llama", "editor": "ROMEEditor", "callbacks": ["SpectralRestraint"],
        "num_edits": 4, "edits_applied": 4, "num_steps": 4, "num_rejected_steps": 0, "world_size": 1,
        "seconds_editing": 2.5, "seconds_per_edit": 0.625, "seconds_restraint": 0, "restraint_share_of_step": 0.0,
        "edits_before": {"efficacy": 0.25, "n": 4}, "probes_before": probes,
        "edits_after": {"efficacy": 1.0, "n": 4}, "probes_after": probes,
        "history": [{"num_edits": 2, "edits": {"efficacy": 1.0, "n": 2}, "edits_restrained": {"efficacy": 0.5, "n": 2}},
                    {"num_edits": 4, "edits": {"efficacy": 1.0, "n": 4}, "edits_before_end_restraint": {"efficacy": 0.75, "n": 4}}],
        "edited_case_ids": [3, 1, 4, 1],
    }


def test_round_trip_through_the_file(tmp_path):
    data = _results_v1()
    results = RunResults.from_dict(data)
    assert results.num_edits == 4 and results.before["edits"]["efficacy"] == 0.25 and results.after["probes"]["perplexity"] == 20.5
    assert results.history[0] == EvalPoint(2, {"edits": {"efficacy": 1.0, "n": 2}, "edits_restrained": {"efficacy": 0.5, "n": 2}})
    assert results.history[0].get("edits", "_restrained") == {"efficacy": 0.5, "n": 2}
    assert results.history[1].get("probes") is None and results.history[1].has_variant("_before_end_restraint")
    results.write(tmp_path / "results.json")
    text = (tmp_path / "results.json").read_text()
    assert json.loads(text) == data  # every key and value as written, nothing added
    assert '"seconds_restraint": 0,' in text  # an int stays an int (the study's tables print what the run wrote)
    assert RunResults.read(tmp_path / "results.json") == results


def test_points_by_edit_count():
    results = RunResults.from_dict(_results_v1() | {"downstream_after": {"qa/contains": 0.5}})
    points = results.points()
    assert sorted(points) == [0, 2, 4]
    assert points[0]["edits"]["efficacy"] == 0.25 and points[2]["edits_restrained"]["efficacy"] == 0.5
    assert points[4]["edits"]["efficacy"] == 1.0  # the history's point, not edits_after
    assert points[4]["downstream"] == {"qa/contains": 0.5}  # an *_after section no point holds fills the last count


def test_unversioned_files_still_read():
    """Version 0 (before the schema): same keys, no schema_version; keys it does not know are kept, not refused."""
    study = json.loads((REPO / "benchmarks/results/study.json").read_text())  # the 200-edit study's per-arm results
    arms = {name: v for name, v in study.items() if isinstance(v, dict) and "history" in v}
    assert len(arms) >= 2
    for name, arm in arms.items():
        results = RunResults.from_dict(arm)
        assert results.schema_version == 0 and results.before["edits"] == arm["edits_before"], name
        assert [p.num_edits for p in results.history] == [r["num_edits"] for r in arm["history"]], name
        assert results.extra["folder"] == arm["folder"]
        assert {k: v for k, v in results.to_dict().items() if k in arm} == arm  # written back unchanged (as version 1)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schema_version": SCHEMA_VERSION + 1}, "reads 0 to"),
        ({"surprise": 1}, "unknown key 'surprise'"),
        ({"num_edits": "four"}, "num_edits: expected int"),
        ({"history": [{"edits": {}}]}, "needs num_edits"),
    ],
)
def test_bad_results_are_refused(tmp_path, change, message):
    with pytest.raises(ResultsSchemaError, match=message):
        RunResults.from_dict(_results_v1() | change)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results_v1() | change))
    with pytest.raises(ResultsSchemaError, match=str(path)):
        RunResults.read(path)


def test_find_results_takes_the_newest_version(tmp_path):
    for n in (2, 10):
        (tmp_path / f"version_{n}").mkdir()
        (tmp_path / f"version_{n}" / "results.json").write_text("{}")
    (tmp_path / "version_11").mkdir()  # no results.json: not a finished run
    assert find_results(tmp_path) == tmp_path / "version_10" / "results.json"
    with pytest.raises(FileNotFoundError):
        find_results(tmp_path / "version_11")


def test_cost_ledger_counts_nested_parts_once_and_round_trips(tmp_path):
    import time

    cost = RunCost()
    with cost.measure("outer"):
        time.sleep(0.02)
        with cost.measure("inner"):
            time.sleep(0.03)
    with cost.measure("inner"):
        pass
    outer, inner = cost.parts["outer"], cost.parts["inner"]
    assert (outer.calls, inner.calls) == (1, 2)
    assert 0.015 < outer.wall < 0.03 + 0.02 and inner.wall >= 0.03  # the inner sleep is inner's only
    other = RunCost(parts={"inner": PartCost(1.0, 0.5, 1), "new": PartCost(2.0, 2.0, 1)})
    cost.absorb(other)
    assert cost.parts["inner"].calls == 3 and cost.parts["new"].wall == 2.0
    data = _results_v1() | {"cost": cost.to_dict()}
    RunResults.from_dict(data).write(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == data
    assert RunResults.read(tmp_path / "results.json").cost == cost
    with pytest.raises(ResultsSchemaError, match="cost part"):
        RunResults.from_dict(_results_v1() | {"cost": {"parts": {"x": {"wall": 1.0}}}})
