"""prune_lit.analysis.study_report on a synthetic study folder: two arms (ROME with its at-end curve, ROME + PRUNE)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from prune_lit.analysis import study_report
from prune_lit.contracts.results import RunResults

Z95 = 1.959963984540054
RNG = np.random.default_rng(0)
BASE_NLL = RNG.uniform(2.5, 3.5, size=20)  # 20 probe windows
GSM_BEFORE = [1] * 30 + [0] * 70  # 100 examples, 30 right


def wilson_by_hand(p: float, n: int) -> tuple[float, float]:
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return centre - half, centre + half


def probes(nll: np.ndarray, kl: float) -> dict:
    return {"perplexity": float(math.exp(nll.mean())), "nll": float(nll.mean()), "kl_from_unedited": kl, "n_tokens": 20 * 255,
            "seconds": 1.0, "per_window": {"nll": nll.tolist(), "kl": [kl] * len(nll)}}


def downstream(gsm: list[int]) -> dict:
    return {"reasoning/exact_match": float(np.mean(gsm)), "reasoning/time_s": 3.0, "per_example": {"reasoning/exact_match": gsm}}


def edits(efficacy: float, n: int) -> dict:
    return {"efficacy": efficacy, "generalization": 0.5, "neighborhood": 0.8, "locality": 0.9, "rewrite_acc": 0.1, "n": n}


def noise() -> np.ndarray:
    return RNG.normal(0, 0.01, size=20)


def results(history: list[dict], name: str) -> dict:
    return {"edits_before": edits(0.1, 20), "probes_before": probes(BASE_NLL, 0.0), "downstream_before": downstream(GSM_BEFORE),
            "model": "tiny-llama", "editor": "ROMEEditor", "num_edits": 20, "num_steps": 20, "num_rejected_steps": 0,
            "seconds_editing": 40.0, "seconds_per_edit": 2.0, "seconds_restraint": 1.0 if name == "rome_prune" else 0.1,
            "history": history, "edited_case_ids": list(range(20))}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    # ROME without restraint: perplexity rises clearly at 20 edits; its at-end curve (restrained copies) does not.
    # After the last point the weights were restrained once (the *_before_end_restraint sections).
    rome = results([
        {"num_edits": 10, "edits": edits(0.9, 10), "probes": probes(BASE_NLL + noise(), 0.01), "downstream": downstream(GSM_BEFORE),
         "edits_restrained": edits(0.8, 10), "probes_restrained": probes(BASE_NLL + noise(), 0.005),
         "downstream_restrained": downstream(GSM_BEFORE)},
        {"num_edits": 20, "edits_restrained": edits(0.7, 20), "probes_restrained": probes(BASE_NLL + noise(), 0.006),
         "downstream_restrained": downstream(GSM_BEFORE),
         "edits_before_end_restraint": edits(0.85, 20), "probes_before_end_restraint": probes(BASE_NLL + 0.5 + noise(), 0.2),
         "edits": edits(0.7, 20), "probes": probes(BASE_NLL + noise(), 0.006), "downstream": downstream(GSM_BEFORE)},
    ], "rome")
    # ROME + PRUNE per edit: perplexity stays; GSM8K loses 20 of its 30 right answers at 20 edits (McNemar p = 2^-19).
    lost = [1] * 10 + [0] * 90
    rome_prune = results([
        {"num_edits": 10, "edits": edits(0.7, 10), "probes": probes(BASE_NLL + noise(), 0.004), "downstream": downstream(GSM_BEFORE)},
        {"num_edits": 20, "edits": edits(0.7, 20), "probes": probes(BASE_NLL + noise(), 0.005), "downstream": downstream(lost)},
    ], "rome_prune")
    rome_prune["cost"] = {"since_edits": 0, "total": {"wall": 130.0, "cpu": 120.0, "calls": 2}, "parts": {
        "edit_steps": {"wall": 45.0, "cpu": 40.0, "calls": 20}, "edits": {"wall": 6.0, "cpu": 5.0, "calls": 2},
        "edits_before": {"wall": 3.0, "cpu": 3.0, "calls": 1}, "probes": {"wall": 8.0, "cpu": 8.0, "calls": 2},
        "downstream": {"wall": 40.0, "cpu": 36.0, "calls": 1}, "downstream_before": {"wall": 0.0, "cpu": 0.0, "calls": 1},
        "references": {"wall": 4.0, "cpu": 4.0, "calls": 2}, "checkpoints": {"wall": 2.0, "cpu": 1.0, "calls": 2}}}
    matrix = "model.layers.1.mlp.down_proj.weight"
    spectral = {
        "rome": [{"num_edits": n, "matrix": matrix, "final": False, "sigma_max_w0": 2.0, "sigma_max_delta": float(n), "kappa_w": 10.0 + n}
                 for n in (10, 20)] + [{"num_edits": 20, "matrix": matrix, "final": True, "sigma_max_w0": 2.0, "sigma_max_delta": 3.0, "kappa_w": 12.0}],
        "rome_prune": [{"num_edits": n, "matrix": matrix, "final": False, "sigma_max_w0": 2.0, "sigma_max_delta": 2.5} for n in (10, 20)]
        + [{"num_edits": 20, "matrix": matrix, "final": True, "sigma_max_w0": 2.0, "sigma_max_delta": 2.5, "kappa_w": 11.0}],
    }
    for name, res in (("rome", rome), ("rome_prune", rome_prune)):
        folder = root / "logs" / name / "version_1"  # the newest version is read; version_0 is an older, broken try
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(res))
        (folder / "spectral.json").write_text(json.dumps({"records": spectral[name]}))
        (root / "logs" / name / "version_0").mkdir()
        (root / "logs" / name / "version_0" / "results.json").write_text("{}")
    (root / "timings.tsv").write_text(
        "rome\t2026-12-03T10:00:00Z\t100\trc=137\tresume=false\n"
        "rome\t2026-12-03T11:00:00Z\t50\trc=0\tresume=true\n"
        "rome_prune\t2026-12-03T09:00:00Z\t999\trc=0\tresume=false\n"  # an earlier run, replaced by a forced rerun
        "rome_prune\t2026-12-03T12:00:00Z\t70\trc=0\tresume=false\n"
        "alphaedit\t2026-12-03T12:01:00Z\t3\trc=2\tresume=false\n"
    )
    return root


@pytest.fixture(scope="module")
def report(study):
    return study_report.build_report(study, resamples=2000)


def _point(summary: dict, editor: str, variant: str, n: int) -> dict:
    (row,) = [r for r in summary["points"][editor][variant] if r["num_edits"] == n]
    return row


def test_edit_metrics_carry_wilson_intervals_over_cases(report):
    low, high = wilson_by_hand(0.7, 20)
    iv = _point(report.summary, "rome", "per-edit", 20)["edits"]["efficacy"]
    assert (iv["estimate"], iv["n"]) == (0.7, 20)
    assert iv["low"] == pytest.approx(low, abs=1e-12) and iv["high"] == pytest.approx(high, abs=1e-12)
    assert f"| ROME, PRUNE per edit | 20 | 20 | 0.700 [{low:.3f}, {high:.3f}] |" in report.markdown
    # Token accuracies are means of per-prompt shares, not proportions: a table of their own, without intervals.
    assert "| run | edits | rewrite_acc |" in report.markdown and "| ROME, PRUNE per edit | 20 | 0.100 |" in report.markdown
    assert _point(report.summary, "rome", "per-edit", 20)["token_accuracy"] == {"rewrite_acc": 0.1}


def test_variants_read_the_unrestrained_scores_before_the_end_restraint(report):
    none20 = _point(report.summary, "rome", "none", 20)
    at_end20 = _point(report.summary, "rome", "at-end", 20)
    assert none20["edits"]["efficacy"]["estimate"] == 0.85  # edits_before_end_restraint, not the restrained "edits"
    assert at_end20["edits"]["efficacy"]["estimate"] == 0.7
    assert none20["downstream"] is None  # the run kept no unrestrained downstream at its last point
    assert any("unrestrained downstream" in n for n in report.summary["notes"])
    # Every variant starts at the unedited model.
    assert _point(report.summary, "rome", "at-end", 0)["edits"]["efficacy"]["estimate"] == 0.1


def test_perplexity_interval_is_over_windows(report):
    iv = _point(report.summary, "rome", "none", 0)["probes"]["perplexity"]
    assert iv["estimate"] == pytest.approx(math.exp(BASE_NLL.mean()))
    assert iv["n"] == 20 and iv["low"] < iv["estimate"] < iv["high"]
    # The bootstrap interval of the mean NLL of 20 windows spread over [2.5, 3.5] is about ±0.13 nats.
    assert 0.05 < math.log(iv["high"]) - math.log(iv["estimate"]) < 0.3
    # The change from the unedited model is paired over the same windows: +0.5 nats, tightly.
    change = _point(report.summary, "rome", "none", 20)["probes"]["nll_change"]
    assert change["difference"] == pytest.approx(0.5, abs=0.02) and change["high"] - change["low"] < 0.03
    assert "nll_change" not in _point(report.summary, "rome", "none", 0)["probes"]


def test_downstream_intervals_from_per_example(report):
    low, high = wilson_by_hand(0.3, 100)
    iv = _point(report.summary, "rome", "none", 0)["downstream"]["reasoning/exact_match"]
    assert (iv["estimate"], iv["method"]) == (0.3, "wilson")
    assert iv["low"] == pytest.approx(low) and iv["high"] == pytest.approx(high)
    assert f"0.300 [{low:.3f}, {high:.3f}]" in report.markdown


def test_downstream_points_carry_their_paired_test_against_the_unedited_model(report):
    lost = _point(report.summary, "rome", "per-edit", 20)["downstream"]["reasoning/exact_match"]["change"]
    assert lost["method"] == "mcnemar_exact" and lost["difference"] == pytest.approx(-0.2)
    assert lost["p_value"] == pytest.approx(2 * 0.5**20)
    same = _point(report.summary, "rome", "per-edit", 10)["downstream"]["reasoning/exact_match"]["change"]
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    assert "change" not in _point(report.summary, "rome", "per-edit", 0)["downstream"]["reasoning/exact_match"]
    # The summary table shows each point's own test (not only the plain answer's first significant fall).
    table = study_report.summary_table(report.summary, edits=(10, 20))
    row = next(line for line in table.splitlines() if line.startswith("| ROME | CounterFact | PRUNE per edit | 20 |"))
    assert f"0.100 [{wilson_by_hand(0.1, 100)[0]:.3f}, {wilson_by_hand(0.1, 100)[1]:.3f}] · Δ -0.200, p=1.91e-06" in row
    row = next(line for line in table.splitlines() if line.startswith("| ROME | CounterFact | PRUNE per edit | 10 |"))
    assert "0.300 [" in row and "· Δ +0.000, p=1.000" in row


def test_plain_answer_finds_the_first_significant_decline(report):
    answers = {(a["editor"], a["variant"]): a for a in report.summary["plain_answer"]}
    ppl = answers[("rome", "none")]["perplexity"]
    assert ppl["num_edits"] == 20 and ppl["difference"] == pytest.approx(0.5, abs=0.02) and ppl["p_value"] < 0.01
    assert answers[("rome", "at-end")]["perplexity"]["num_edits"] is None
    assert answers[("rome", "per-edit")]["perplexity"] == {"num_edits": None, "tested": [10, 20], "untested": []}
    gsm = answers[("rome", "per-edit")]["downstream"]["reasoning/exact_match"]
    assert gsm["num_edits"] == 20 and gsm["test"] == "mcnemar_exact"
    assert gsm["p_value"] == pytest.approx(2 * 0.5**20)  # 20 discordant pairs, all one way
    assert answers[("rome", "none")]["downstream"]["reasoning/exact_match"] == {"num_edits": None, "tested": [10], "untested": []}


def test_prune_tests_pair_each_variant_with_no_restraint(report):
    tests = {(t["variant"], t["num_edits"], t["metric"]): t for t in report.summary["prune_tests"]}
    per_edit = tests[("per-edit", 20, "NLL / token (perplexity)")]
    assert per_edit["difference"] == pytest.approx(-0.5, abs=0.02) and per_edit["p_value"] < 0.01 and per_edit["n"] == 20
    at_end = tests[("at-end", 20, "NLL / token (perplexity)")]
    assert at_end["difference"] == pytest.approx(-0.5, abs=0.02)
    # No unrestrained downstream at 20 edits: no downstream test there, one at 10 (identical scores).
    assert ("per-edit", 20, "reasoning/exact_match") not in tests
    assert tests[("per-edit", 10, "reasoning/exact_match")]["p_value"] == 1.0
    row = next(line for line in report.markdown.splitlines() if line.startswith("| ROME | PRUNE per edit | 20 |"))
    assert "**p=" in row  # significant at 20 edits


def test_spectra_and_timings(report):
    spec = report.summary["spectral"]["rome"]
    assert spec["none"]["20"]["ratio"] == 10.0 and spec["none"]["20"]["kappa_w"] == 30.0
    assert spec["at-end"] == {"20": spec["at-end"]["20"]} and spec["at-end"]["20"]["ratio"] == 1.5
    # A per-edit arm's final measurement is its last point (fills κ, not measured during the run).
    assert report.summary["spectral"]["rome"]["per-edit"]["20"] == {
        "ratio": 1.25, "sigma_max_delta": 2.5, "sigma_max_w0": 2.0, "matrix": "model.layers.1.mlp.down_proj.weight", "kappa_w": 11.0}
    times = report.summary["times"]
    assert times["rome"]["wall_seconds"] == 150 and len(times["rome"]["tries"]) == 2  # a killed try and its resume
    assert times["rome_prune"]["wall_seconds"] == 70 and len(times["rome_prune"]["earlier_tries"]) == 1
    # Its ledger saw 130 s: a try that timings.tsv lacks (killed with its session) shows beside the sum.
    assert times["rome_prune"]["ledger_wall_seconds"] == 130.0 and times["rome"]["ledger_wall_seconds"] is None
    assert "| rome_prune | 20 | 20 | 0 | 70 (run ledger: 130) | 1 |" in report.markdown
    assert "| rome | 20 | 20 | 0 | 150 | 2 |" in report.markdown
    assert times["alphaedit"]["wall_seconds"] == 3 and times["alphaedit"]["tries"][0]["rc"] == 2
    assert "Arms with a timing but no results.json: alphaedit" in report.markdown
    # CPU seconds by part from the run's ledger: evaluation = 5 + 3 + 8 + 36 = 52 of 120; rest = 120 − 97
    assert "cost" not in times["rome"] and times["rome_prune"]["cost"]["total"]["cpu"] == 120.0
    assert "| rome_prune | 0 | 130 | 120 | 40 | 8 | 8 | 36 | 5 | 23 | 0.43 |" in report.markdown


def test_main_writes_markdown_json_and_figures(study, tmp_path):
    md, out, figs = tmp_path / "r.md", tmp_path / "s.json", tmp_path / "fig"
    study_report.main(["--study", str(study), "--md", str(md), "--out", str(out), "--figures", str(figs), "--no-w0", "--resamples", "500"])
    assert md.read_text().startswith(f"# Study report: {study.name}\n")  # no machine path
    saved = json.loads(out.read_text())
    assert set(saved["arms"]) == {"rome", "rome_prune"} and saved["arms"]["rome"]["folder"] == "logs/rome/version_1"
    assert str(tmp_path) not in out.read_text()
    assert sorted(p.name for p in figs.iterdir()) == [f"study_{n}.png" for n in ("downstream", "edits", "probes", "spectral")]


def test_figures_default_to_the_study_folder_not_docs(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a docs/figures/study1000 here would be what the old default overwrote
    study_report.main(["--study", str(study), "--no-w0", "--resamples", "200"])
    assert sorted(p.name for p in (study / "figures").iterdir())[0] == "study_downstream.png"
    assert not (tmp_path / "docs").exists()


def test_a_study_without_finished_arms_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        study_report.build_report(tmp_path)


def test_a_last_point_scored_only_after_the_end_restraint_belongs_to_the_at_end_curve():
    # N = 25 with evaluation every 10: the run scored its last point only after restraining once at the end.
    history = [{"num_edits": 10, "edits": edits(0.9, 10), "edits_restrained": edits(0.8, 10)},
               {"num_edits": 20, "edits": edits(0.85, 20), "edits_restrained": edits(0.75, 20)},
               {"num_edits": 25, "edits": edits(0.7, 25)}]
    arm = study_report.Arm("rome", Path("."), RunResults.from_dict(results(history, "rome")), [])
    none, at_end = study_report.curve(arm, "none"), study_report.curve(arm, "at-end")
    assert sorted(none) == [0, 10, 20] and none[20]["edits"]["efficacy"] == 0.85
    assert sorted(at_end) == [0, 10, 20, 25] and at_end[25]["edits"]["efficacy"] == 0.7 and at_end[10]["edits"]["efficacy"] == 0.8
    # Without an at-end restraint every row is the run's own.
    plain = study_report.Arm("rome", Path("."), RunResults.from_dict(results([{"num_edits": 10, "edits": edits(0.9, 10)}], "rome")), [])
    assert sorted(study_report.curve(plain, "none")) == [0, 10] and study_report.curve(plain, "at-end") == {}


def test_a_last_point_is_the_runs_own_when_the_end_restraint_had_nothing_to_do():
    # Both curves scored at 20, the restrained copy equal to the model: σ_max(ΔW) stayed below σ_max(W₀), so the end
    # restraint was the identity and the last plain row is the unrestrained model's (AlphaEdit at 1,000 edits).
    history = [{"num_edits": 10, "edits": edits(0.9, 10), "edits_restrained": edits(0.9, 10)},
               {"num_edits": 20, "edits": edits(0.85, 20), "edits_restrained": edits(0.85, 20)}]
    below = [{"num_edits": 20, "matrix": "m", "final": False, "sigma_max_w0": 2.0, "sigma_max_delta": 1.8}]
    arm = study_report.Arm("alphaedit", Path("."), RunResults.from_dict(results(history, "alphaedit")), below)
    assert sorted(study_report.curve(arm, "none")) == [0, 10, 20] and sorted(study_report.curve(arm, "at-end")) == [0, 10, 20]
    # Above the bound at the last point (and no *_before_end_restraint rows): the plain row came after the restraint.
    above = [dict(below[0], sigma_max_delta=2.5)]
    arm = study_report.Arm("alphaedit", Path("."), RunResults.from_dict(results(history, "alphaedit")), above)
    assert sorted(study_report.curve(arm, "none")) == [0, 10]
    # A run that recorded what its end restraint did is read, not inferred: the record wins over the spectra.
    for changed, last_is_own in ((False, True), (True, False)):
        recorded = RunResults.from_dict(results(history, "alphaedit") | {"end_restraint_changed_weights": changed})
        arm = study_report.Arm("alphaedit", Path("."), recorded, above if last_is_own else below)
        assert (20 in study_report.curve(arm, "none")) is last_is_own


def test_an_unfinished_arm_is_read_from_its_last_checkpoint(tmp_path):
    # alphaedit: started (a log folder without results.json), checkpointed at 20 edits, its at-end curve present
    (tmp_path / "logs" / "alphaedit" / "version_0").mkdir(parents=True)
    step = tmp_path / "checkpoints" / "alphaedit" / "step-0000020"
    step.mkdir(parents=True)
    (step.parent / "latest").write_text("step-0000020\n")
    before = results([], "alphaedit")
    history = [{"num_edits": 10, "edits": edits(0.9, 10), "edits_restrained": edits(0.8, 10)},
               {"num_edits": 20, "edits": edits(0.85, 20), "edits_restrained": edits(0.75, 20)}]
    records = [{"num_edits": 20, "matrix": "m", "final": False, "sigma_max_w0": 2.0, "sigma_max_delta": 1.0}]
    state = {"counters": {"requests_seen": 20}, "history": history, "edited_case_ids": list(range(20)),
             "fingerprint": {"model_name": "tiny-llama"},
             "results": {k: before[k] for k in ("edits_before", "probes_before", "downstream_before")},
             "callbacks": {"SpectralDiagnostics": {"records": records}}}
    (step / "state.json").write_text(json.dumps(state))
    arms, _ = study_report.load_study(tmp_path)
    arm = arms["alphaedit"]
    assert arm.partial == 20 and arm.spectral == records
    # no end restraint ran: the last point is the unrestrained run's, the restrained copies are the at-end curve
    assert study_report.curve(arm, "none")[20]["edits"]["efficacy"] == 0.85
    assert study_report.curve(arm, "at-end")[20]["edits"]["efficacy"] == 0.75
    report = study_report.build_report(tmp_path, resamples=200)
    assert "**Unfinished arms**, read from their last checkpoint: alphaedit (to 20 edits)." in report.markdown
    assert "**Unfinished arms**, read from their last checkpoint: alphaedit (to 20 edits)." in study_report.summary_table(report.summary)


def test_a_report_of_chosen_arms_leaves_the_others_out(study):
    only = study_report.build_report(study, resamples=200, only=["rome_prune"])
    assert set(only.summary["arms"]) == {"rome_prune"} and set(only.summary["times"]) == {"rome_prune"}
    with pytest.raises(FileNotFoundError, match="no_such_arm"):
        study_report.build_report(study, resamples=200, only=["rome", "no_such_arm"])


def test_restraint_comparison_arms_are_variants_of_their_editor(study, tmp_path):
    """rome_key_aware / rome_sphere (run_study.sh's names) are ROME with another restraint per step: variants of ROME,
    paired with ROME's unrestrained arm, and rows of the summary table only where they ran."""
    import shutil

    root = tmp_path / "study"
    shutil.copytree(study, root)
    for name in ("rome_key_aware", "rome_sphere"):
        shutil.copytree(root / "logs" / "rome_prune", root / "logs" / name)
    arms, _ = study_report.load_study(root)
    assert [(arms[n].editor, arms[n].variant) for n in ("rome", "rome_prune", "rome_key_aware", "rome_sphere")] == [
        ("rome", "none"), ("rome", "per-edit"), ("rome", "key-aware"), ("rome", "sphere")]
    assert sorted(arms, key=study_report.arm_order) == ["rome", "rome_prune", "rome_key_aware", "rome_sphere"]
    report = study_report.build_report(root, resamples=200)
    assert set(report.summary["points"]["rome"]) == {"none", "per-edit", "at-end", "key-aware", "sphere"}
    assert {t["variant"] for t in report.summary["prune_tests"] if t["editor"] == "rome"} == {"per-edit", "at-end", "key-aware", "sphere"}
    table = study_report.summary_table(report.summary, edits=(10, 20))
    assert "| ROME | CounterFact | key-aware PRUNE per edit | 20 |" in table and "| ROME | CounterFact | SPHERE per step |" in table
    assert "MEMIT | CounterFact | not run" in table and "MEMIT | CounterFact | key-aware" not in table
    # the other restraints are also paired with PRUNE per edit (here copies of it: no difference, p = 1)
    against_prune = report.summary["restraint_tests"]
    assert {(t["variant"], t["baseline"]) for t in against_prune} == {("key-aware", "per-edit"), ("sphere", "per-edit")}
    assert all(t["mean_a"] == t["mean_b"] and t["p_value"] == 1.0 for t in against_prune)
    assert {t["metric"] for t in against_prune} >= {"NLL / token (perplexity)", "reasoning/exact_match"}
    assert "## Other restraints against PRUNE per edit (paired)" in report.markdown
    assert all(t["baseline"] == "none" for t in report.summary["prune_tests"])


def test_every_arm_is_tested_against_a_reference_arm_of_another_editor(study, tmp_path):
    """--reference rome_prune: an AlphaEdit arm (another editor, same cases) is paired with ROME + PRUNE at the
    points both have; the reference is not tested against itself; an unknown reference is refused."""
    import shutil

    root = tmp_path / "study"
    shutil.copytree(study, root)
    alpha = json.loads((root / "logs" / "rome_prune" / "version_1" / "results.json").read_text())
    worse = [0] * 100  # every right GSM8K answer of the unedited model lost: McNemar p = 2^-29
    alpha["history"] = [{"num_edits": 20, "edits": edits(0.9, 20), "probes": probes(BASE_NLL + 0.3 + noise(), 0.1),
                         "downstream": downstream(worse)}]  # a batch editor: only the 20-edit point
    folder = root / "logs" / "alphaedit_sphere" / "version_0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(alpha))
    (folder / "spectral.json").write_text(json.dumps({"records": []}))
    report = study_report.build_report(root, resamples=500, reference="rome_prune")
    tests = {(t["editor"], t["variant"], t["num_edits"], t["metric"]): t for t in report.summary["reference_tests"]}
    assert {t["baseline"] for t in tests.values()} == {"rome_prune"}
    assert ("rome", "per-edit", 20, "NLL / token (perplexity)") not in tests
    nll = tests[("alphaedit", "sphere", 20, "NLL / token (perplexity)")]
    assert nll["difference"] == pytest.approx(0.3, abs=0.02) and nll["p_value"] < 0.01
    gsm = tests[("alphaedit", "sphere", 20, "reasoning/exact_match")]
    assert gsm["difference"] == pytest.approx(-0.1) and gsm["p_value"] < 0.01  # rome_prune kept 10 of 100, this arm 0
    assert ("alphaedit", "sphere", 10, "NLL / token (perplexity)") not in tests  # no 10-edit point in the AlphaEdit arm
    assert ("rome", "none", 10, "NLL / token (perplexity)") in tests
    assert "## Every arm against ROME, PRUNE per edit (`rome_prune`, paired)" in report.markdown
    with pytest.raises(ValueError, match="reference arm"):
        study_report.build_report(root, resamples=100, reference="memit_prune")


def test_the_goal_table_checks_each_arms_last_point(study):
    """--goal 0.05 0.9: ROME + PRUNE per edit ends at the unedited perplexity (within noise) but efficacy 0.7, so it
    misses; with efficacy ≥ 0.5 it meets by point estimates; without --goal there is no table."""
    strict = study_report.build_report(study, resamples=500, goal=study_report.Goal(0.05, 0.9))
    rows = {(g["editor"], g["variant"]): g for g in strict.summary["goal"]["rows"]}
    per_edit = rows[("rome", "per-edit")]
    assert per_edit["num_edits"] == 20 and per_edit["efficacy"] == 0.7
    assert abs(per_edit["rise"]) < 0.02 and per_edit["rise_low"] <= per_edit["rise"] <= per_edit["rise_high"]
    assert not per_edit["meets"] and not per_edit["meets_with_intervals"]
    assert "## The goal: perplexity within +5 % of the unedited model, efficacy ≥ 0.9" in strict.markdown
    loose = study_report.build_report(study, resamples=500, goal=study_report.Goal(0.05, 0.5))
    rows = {(g["editor"], g["variant"]): g for g in loose.summary["goal"]["rows"]}
    assert rows[("rome", "per-edit")]["meets"]
    assert study_report.build_report(study, resamples=100).summary["goal"] is None
