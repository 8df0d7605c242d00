"""docs/results.md's summary table is generated from benchmarks/results/study1000*.json and kept equal to them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prune_lit.analysis import study_report

ROOT = Path(__file__).resolve().parents[1]
STUDY_JSONS = sorted((ROOT / "benchmarks" / "results").glob("study1000*.json"))  # the shell's glob order
RESULTS_PAGE = ROOT / "docs" / "results.md"


def between_markers(text: str) -> str:
    return text.split(study_report.SUMMARY_BEGIN)[1].split(study_report.SUMMARY_END)[0].strip()


def test_results_page_holds_the_table_generated_from_the_committed_study_json():
    assert STUDY_JSONS and STUDY_JSONS[0].name == "study1000.json"
    expected = study_report.summary_table(study_report.merge_summaries([json.loads(p.read_text()) for p in STUDY_JSONS]))
    assert between_markers(RESULTS_PAGE.read_text()) == expected.strip(), (
        "docs/results.md drifted from benchmarks/results/study1000*.json: run python -m prune_lit.analysis.study_report "
        "--summary-from benchmarks/results/study1000*.json --write-summary docs/results.md")


def test_merged_summaries_take_later_editors_and_variants_and_refuse_other_bootstrap_settings():
    a = {"resamples": 10, "seed": 0, "alpha": 0.05, "points": {"rome": {"none": [1], "per-edit": [2]}},
         "arms": {"rome": {"x": 1}}, "plain_answer": [{"editor": "rome", "variant": "none", "v": "old"}], "notes": ["n1"]}
    b = {"resamples": 10, "seed": 0, "alpha": 0.05, "points": {"rome": {"none": [3]}, "memit": {"none": [4]}},
         "arms": {"memit": {"x": 2}}, "plain_answer": [{"editor": "rome", "variant": "none", "v": "new"}], "notes": ["n1", "n2"]}
    m = study_report.merge_summaries([a, b])
    assert m["points"] == {"rome": {"none": [3], "per-edit": [2]}, "memit": {"none": [4]}}
    assert m["arms"] == {"rome": {"x": 1}, "memit": {"x": 2}}
    assert m["plain_answer"] == [{"editor": "rome", "variant": "none", "v": "new"}]
    assert m["notes"] == ["n1", "n2"]
    assert a["points"]["rome"]["none"] == [1]  # inputs untouched
    with pytest.raises(ValueError, match="resamples"):
        study_report.merge_summaries([a, {**b, "resamples": 20}])


def iv(estimate: float, low: float, high: float) -> dict:
    return {"estimate": estimate, "low": low, "high": high, "n": 100, "method": "wilson"}


def point(n: int, gsm: dict | None = None, ppl: float | None = 40.0) -> dict:
    probes = None if ppl is None else {
        "perplexity": iv(ppl, ppl - 5, ppl + 5), "kl": iv(0.1, 0.05, 0.15),
        **({"nll_change": {"difference": 0.05, "low": 0.04, "high": 0.06, "p_value": 0.0001}} if n else {})}
    return {"num_edits": n, "edits": {"efficacy": iv(0.9, 0.8, 0.95)} if n else {"efficacy": iv(0.3, 0.2, 0.4)},
            "probes": probes, "downstream": {"reasoning/exact_match": gsm} if gsm else None}


@pytest.fixture
def summary() -> dict:
    """ROME without restraint (250 / 500 / 1,000; GSM8K falls at 500) and ROME + PRUNE per edit stopped at 500;
    no at-end curve, no MEMIT, a MEND arm that stopped at 100."""
    gsm0, gsm = iv(0.6, 0.5, 0.7), iv(0.55, 0.45, 0.65)
    return {
        "resamples": 1000,
        "points": {
            "rome": {
                "none": [point(0, gsm0), point(250, gsm), point(500, iv(0.1, 0.05, 0.2)), point(1000, iv(0.0, 0.0, 0.04))],
                "per-edit": [point(0, gsm0), point(250, gsm | {"change": {"difference": -0.05, "p_value": 0.3}}),
                             point(500, None)],
            },
            "mend": {"none": [point(0), point(100)]},
        },
        "plain_answer": [{"editor": "rome", "variant": "none", "downstream": {"reasoning/exact_match": {
            "num_edits": 500, "tested": [250, 500], "untested": [], "difference": -0.5, "p_value": 1e-20}}}],
    }


def rows(table: str) -> dict[tuple[str, ...], list[str]]:
    out = {}
    for line in table.splitlines()[4:]:  # legend, blank line, header, rule
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[tuple(cells[:4])] = cells[4:]
    return out


def test_summary_table_shows_what_was_measured_and_dashes_the_rest(summary):
    table = study_report.summary_table(summary)
    header = table.splitlines()[2]
    assert header.startswith("| editor | dataset | PRUNE | edits | perplexity (Δ NLL vs unedited) | KL | GSM8K EM |")
    assert header.endswith("| efficacy | generalization | neighborhood |")
    r = rows(table)
    blank = ["—"] * 9
    # The unedited model: values with intervals, no test.
    assert r[("ROME", "CounterFact", "unedited", "0")][:3] == ["40.00 [35.00, 45.00]", "0.1000 [0.0500, 0.1500]", "0.600 [0.500, 0.700]"]
    # Perplexity with its paired change; GSM8K: tested but not falling at 250, the first significant fall at 500,
    # no test kept after it.
    none = {n: r[("ROME", "CounterFact", "no restraint", n)] for n in ("250", "500", "1000")}
    assert none["250"][0] == "40.00 [35.00, 45.00] · Δ +0.050, p=1.00e-04"
    assert none["250"][2] == "0.550 [0.450, 0.650] · no sig. fall"
    assert none["500"][2] == "0.100 [0.050, 0.200] · Δ -0.500, p=1.00e-20"
    assert none["1000"][2] == "0.000 [0.000, 0.040]"
    assert none["250"][6] == "0.900 [0.800, 0.950]" and none["250"][7:] == ["—", "—"]  # no generalization measured
    # A point's own test wins over the plain answer; a point without downstream; a target not reached.
    assert r[("ROME", "CounterFact", "PRUNE per edit", "250")][2] == "0.550 [0.450, 0.650] · Δ -0.050, p=0.300"
    assert r[("ROME", "CounterFact", "PRUNE per edit", "500")][2:6] == ["—"] * 4
    assert r[("ROME", "CounterFact", "PRUNE per edit", "1000")] == blank
    # A missing arm shows "—": an at-end curve not there, MEMIT and ROME on ZsRE not run, MEND stopped before 250.
    assert r[("ROME", "CounterFact", "PRUNE once at N", "—")] == blank
    assert r[("MEMIT", "CounterFact", "not run", "—")] == blank
    assert r[("ROME", "ZsRE", "not run", "—")] == blank
    assert r[("MEND", "CounterFact", "no restraint", "—")] == blank
    assert list(r).index(("MEMIT", "CounterFact", "not run", "—")) < list(r).index(("MEND", "CounterFact", "unedited", "0"))


def test_a_batch_editor_row_is_its_first_point_with_downstream_past_the_target():
    rows_ = [point(0, iv(0.6, 0.5, 0.7)), point(200), point(300, iv(0.65, 0.55, 0.75)), point(400), point(500, iv(0.6, 0.5, 0.7))]
    assert study_report.summary_point(rows_, 250, 500)["num_edits"] == 300
    assert study_report.summary_point(rows_, 500, 1000)["num_edits"] == 500
    assert study_report.summary_point(rows_[:2], 200, 500)["num_edits"] == 200  # no downstream: the exact point
    assert study_report.summary_point(rows_, 1000, None) is None


def test_write_summary_replaces_only_the_text_between_the_markers(summary, tmp_path):
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nintro\n\n{study_report.SUMMARY_BEGIN}\nold table\n{study_report.SUMMARY_END}\n\n## After\n")
    study_report.main(["--summary-from", str(_dump(summary, tmp_path)), "--write-summary", str(page)])
    text = page.read_text()
    assert text.startswith("# Results\n\nintro\n\n" + study_report.SUMMARY_BEGIN + "\nGenerated by")
    assert text.endswith(study_report.SUMMARY_END + "\n\n## After\n") and "old table" not in text
    assert between_markers(text) == study_report.summary_table(summary)
    before = text
    study_report.main(["--summary-from", str(_dump(summary, tmp_path)), "--write-summary", str(page)])
    assert page.read_text() == before  # idempotent


@pytest.mark.parametrize("body", ["no markers\n", f"{study_report.SUMMARY_END}\nx\n{study_report.SUMMARY_BEGIN}\n",
                                  f"{study_report.SUMMARY_BEGIN}\n{study_report.SUMMARY_BEGIN}\n{study_report.SUMMARY_END}\n"])
def test_a_page_without_one_pair_of_markers_in_order_is_refused_untouched(summary, tmp_path, body):
    page = tmp_path / "results.md"
    page.write_text(body)
    with pytest.raises(ValueError):
        study_report.write_summary(page, summary)
    assert page.read_text() == body


def _dump(summary: dict, folder: Path) -> Path:
    path = folder / "study.json"
    path.write_text(json.dumps(summary))
    return path
