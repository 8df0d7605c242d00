"""prune_lit.analysis.compare_runs on two synthetic results.json files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prune_lit.analysis import compare_runs

RNG = np.random.default_rng(0)
GSM_A = [1] * 30 + [0] * 170  # 200 examples
GSM_B = [1] * 20 + [0] * 10 + [0] * 170  # B lost 10 of A's 30 and gained none
ROUGE_A = RNG.uniform(0.1, 0.5, size=200).tolist()
ROUGE_B = ROUGE_A  # identical


def _results(gsm: list[int], rouge: list[float], ppl: float, windows: list[float], efficacy: float, probes: bool = True) -> dict:
    down = {"reasoning/exact_match": float(np.mean(gsm)), "summarization/rouge1": float(np.mean(rouge)), "total/time_s": 12.0,
            "per_example": {"reasoning": gsm, "summarization": rouge}}
    entry = {"num_edits": 100, "edits": {"efficacy": efficacy, "locality": 0.9, "n": 100}, "downstream": down}
    if probes:
        entry["probes"] = {"perplexity": ppl, "kl_from_unedited": 0.01, "n_tokens": 5100, "seconds": 20.0,
                           "per_window": {"nll": windows, "kl": [0.01] * len(windows)}}
    return {"edits_before": {"efficacy": 0.1, "n": 100}, "downstream_before": down, "num_edits": 100,
            "history": [{"num_edits": 50, "edits": {"efficacy": 0.5, "n": 50}}, entry], "edited_case_ids": list(range(100))}


@pytest.fixture()
def runs(tmp_path):
    nll = RNG.uniform(2.5, 3.5, size=20)
    a = _results(GSM_A, ROUGE_A, 20.0, nll.tolist(), 1.0)
    b = _results(GSM_B, ROUGE_B, 21.0, (nll + 0.05).tolist(), 0.98)
    (tmp_path / "a" / "version_0").mkdir(parents=True)
    (tmp_path / "a" / "version_0" / "results.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    return tmp_path, a, b


def _row(cmp, section: str, metric: str, n_edits: int = 100) -> dict:
    (row,) = [r for r in cmp.rows if r["section"] == section and r["metric"] == metric and r["num_edits"] == n_edits]
    return row


def test_script_compares_the_last_common_point_and_writes_json(runs, capsys):
    tmp, _, _ = runs
    out = tmp / "cmp.json"
    cmp = compare_runs.main([str(tmp / "a"), str(tmp / "b.json"), "--out", str(out), "--resamples", "2000"])
    printed = capsys.readouterr().out
    assert "| 100 | downstream | per_example/reasoning |" in printed and f"wrote {out}" in printed
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(cmp.rows))

    gsm = _row(cmp, "downstream", "per_example/reasoning")
    assert gsm["test"] == "mcnemar_exact" and (gsm["a_only"], gsm["b_only"]) == (10, 0)
    assert gsm["p_value"] == pytest.approx(2 / 2**10)  # 10 discordant, all one way
    assert gsm["difference"] == pytest.approx(-0.05) and gsm["diff_high"] < 0
    assert gsm["a_low"] < 0.15 < gsm["a_high"]  # Wilson around 30/200

    rouge = _row(cmp, "downstream", "per_example/summarization")
    assert rouge["test"] == "paired_bootstrap" and rouge["difference"] == 0 and rouge["p_value"] == 1.0

    nll = _row(cmp, "probes", "per_window/nll")
    assert nll["difference"] == pytest.approx(0.05) and 0.04 < nll["diff_low"] <= nll["diff_high"] < 0.06
    ppl = _row(cmp, "probes", "perplexity")
    assert ppl["difference"] == pytest.approx(1.0) and ppl["test"] == "aggregate only"

    eff = _row(cmp, "edits", "efficacy")
    assert eff["difference"] == pytest.approx(-0.02) and eff["n"] == 100
    assert not any(r["metric"].endswith(("time_s", "seconds")) or r["metric"] == "n" for r in cmp.rows)
    assert any("edits: no per-example scores" in n for n in cmp.notes)


def test_other_points_and_missing_sections_give_notes(runs):
    _, a, b = runs
    del b["history"][1]["probes"]
    cmp = compare_runs.compare_results(a, b, at=[0, 50, 77], resamples=500)
    assert _row(cmp, "edits", "efficacy", 0)["difference"] == 0
    assert _row(cmp, "edits", "efficacy", 50)["a"] == 0.5
    assert any("77 edits: not in both runs" in n for n in cmp.notes)
    cmp = compare_runs.compare_results(a, b, resamples=500)
    assert any("no 'probes' in run B" in n for n in cmp.notes)
    assert not [r for r in cmp.rows if r["section"] == "probes"]


def test_different_example_counts_are_not_paired(runs):
    _, a, b = runs
    b["history"][1]["downstream"]["per_example"]["summarization"] = ROUGE_B[:150]
    cmp = compare_runs.compare_results(a, b, resamples=500)
    row = _row(cmp, "downstream", "per_example/summarization")
    assert row["n"] == "200/150" and "p_value" not in row
    assert any("200 vs 150 examples" in n for n in cmp.notes)


def test_runs_without_common_points_or_files(tmp_path):
    cmp = compare_runs.compare_results({"history": [{"num_edits": 1, "edits": {}}]}, {"history": [{"num_edits": 2, "edits": {}}]})
    assert cmp.rows == [] and "no edit count in common" in cmp.notes[0]
    with pytest.raises(FileNotFoundError, match="no results.json"):
        compare_runs.find_results(tmp_path)


def test_sections_of_one_run_can_be_paired(runs):
    _, a, _ = runs
    entry = a["history"][1]
    entry["downstream_restrained"] = dict(entry["downstream"], per_example={"reasoning": GSM_B})
    cmp = compare_runs.compare_results(a, a, pairs=[("downstream", "downstream_restrained"), ("probes", "absent")], resamples=500)
    row = _row(cmp, "downstream vs downstream_restrained", "per_example/reasoning")
    assert (row["a_only"], row["b_only"]) == (10, 0)
    assert any("no 'absent' in run B" in n for n in cmp.notes)
    assert not [r for r in cmp.rows if r["section"].startswith("probes")]
