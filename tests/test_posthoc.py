"""Post-hoc PRUNE (prune_lit/restraint/posthoc.py, `cli.py restrain|inspect`, prune_lit.restrain/inspect):
equal to the editing loop's once-at-the-end restraint, and one-line refusals of bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import prune_lit
from prune_lit.commands import main as command_main
from prune_lit.editors.base import Editor, EditStats
from prune_lit.models import arch_spec, get_weight
from prune_lit.models.export import export_model
from prune_lit.models.loader import load_model, load_tokenizer
from prune_lit.restraint import restrain_delta_with_stats, spectral_norm
from prune_lit.restraint.posthoc import CheckpointMismatchError, NothingChangedError, restrain_weights

ROOT = Path(__file__).resolve().parents[1]
FACTS = [json.loads(line) for line in (ROOT / "configs/data/example_facts.jsonl").read_text().splitlines()]
DOWN_PROJ = "model.layers.1.mlp.down_proj.weight"


class _BigEditor(Editor):
    """Adds a seeded rank-2 ΔW to layer 1's down_proj each step, with σ far above σ_max(W₀) (so PRUNE bites)."""

    def __init__(self) -> None:
        self.calls = 0

    def weight_names(self, model):
        return [arch_spec(model).mlp_out_name(1) + ".weight"]

    def compute_deltas(self, model, tokenizer, requests):
        self.calls += 1
        w = get_weight(model, self.weight_names(model)[0])
        g = torch.Generator().manual_seed(self.calls)
        delta = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)
        return {self.weight_names(model)[0]: delta}, EditStats()


def _params(path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(path).named_parameters())


def test_restrain_weights_is_prune_on_each_changed_matrix_and_leaves_the_rest():
    g = torch.Generator().manual_seed(0)
    w0 = {"a.weight": torch.randn(20, 30, generator=g), "b.weight": torch.randn(8, 8, generator=g), "norm.weight": torch.ones(8)}
    edited = {k: v.clone() for k, v in w0.items()}
    edited["a.weight"] += 5 * torch.randn(20, 2, generator=g) @ torch.randn(2, 30, generator=g)
    edited["norm.weight"] += 1  # not a matrix: kept as edited
    report = restrain_weights(w0, edited, alpha=1.5)
    assert [m.name for m in report.matrices] == ["a.weight"] and list(report.weights) == ["a.weight"]
    expected = restrain_delta_with_stats(edited["a.weight"] - w0["a.weight"], spectral_norm(w0["a.weight"]), 1.5)
    torch.testing.assert_close(report.weights["a.weight"], edited["a.weight"] + expected.correction, rtol=0, atol=1e-6)
    m = report.matrices[0]
    assert m.n_restrained == 2 and m.ratio_before > 1 and m.ratio_after < m.ratio_before
    assert m.ratio_after == pytest.approx(spectral_norm(report.weights["a.weight"] - w0["a.weight"]) / m.sigma_max_w0, rel=1e-4)
    assert "a.weight" in report.table() and f"{m.ratio_before:.4f}" in report.table()
    # named matrices by short name; an unchanged one alone is "nothing changed"
    assert [m.name for m in restrain_weights(w0, edited, names=["a"]).matrices] == ["a.weight"]
    with pytest.raises(NothingChangedError):
        restrain_weights(w0, edited, names=["b"])
    with pytest.raises(CheckpointMismatchError, match="different shapes"):
        restrain_weights(w0, {**edited, "b.weight": torch.zeros(8, 9)})
    with pytest.raises(CheckpointMismatchError, match="different architectures"):
        restrain_weights(w0, {"a.weight": edited["a.weight"]})


def test_post_hoc_restraint_equals_the_loops_restraint_at_the_end(tmp_path: Path):
    """One unrestrained run exported, restrained post hoc == the same run with PRUNE once at the end inside the loop."""
    kw = dict(evaluate=False, diagnostics=False, progress=False, log_dir=tmp_path / "logs")
    prune_lit.edit("tiny-llama", FACTS, editor=_BigEditor(), restraint=None, export_dir=tmp_path / "edited", **kw)
    prune_lit.edit("tiny-llama", FACTS, editor=_BigEditor(), restraint="prune_at_end", export_dir=tmp_path / "in_loop", **kw)
    done = prune_lit.restrain("tiny-llama", tmp_path / "edited", tmp_path / "post_hoc")
    assert done.path == tmp_path / "post_hoc" and [m.name for m in done.report.matrices] == [DOWN_PROJ]
    assert done.report.matrices[0].n_restrained == 6 and done.report.matrices[0].ratio_before > 10  # 3 steps of rank 2
    edited, in_loop, post_hoc = (_params(tmp_path / d) for d in ("edited", "in_loop", "post_hoc"))
    assert not torch.allclose(edited[DOWN_PROJ], in_loop[DOWN_PROJ], atol=1e-3)  # PRUNE changed it
    for name, w in in_loop.items():
        torch.testing.assert_close(post_hoc[name], w, rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Hugging Face directories: tiny-llama unedited, edited (layer 1 down_proj), tiny-gpt2, another shape, broken."""
    root = tmp_path_factory.mktemp("ckpts")
    loaded = load_model("tiny-llama", seed=0)
    export_model(loaded.model, loaded.tokenizer, root / "original")
    with torch.no_grad():
        get_weight(loaded.model, DOWN_PROJ).add_(torch.outer(torch.ones(64), torch.ones(128)))
    export_model(loaded.model, loaded.tokenizer, root / "edited")
    gpt2 = load_model("tiny-gpt2", seed=0)
    export_model(gpt2.model, gpt2.tokenizer, root / "gpt2")
    other = LlamaForCausalLM(LlamaConfig(**{**loaded.model.config.to_dict(), "intermediate_size": 96}))
    export_model(other, load_tokenizer(), root / "other_shape")
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{ not json")
    return {p.name: p for p in root.iterdir()}


@pytest.mark.parametrize(
    "case, needle",
    [
        ("architecture", "error: different architectures: the original is 'llama', the edited model 'gpt2'"),
        ("shape", "error: different shapes: "),
        ("nothing", "error: nothing changed: no matrix differs"),
        ("out_taken", "error: export path"),
        ("broken", "error: the edited checkpoint"),
        ("missing", "error: the original checkpoint"),
        ("unknown_matrix", "error: matrices: no parameter 'layers.9.mlp.down_proj'"),
        ("bad_alpha", "error: alpha (the log base) must be > 1, got 1.0"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(case, needle, checkpoints, tmp_path, capsys):
    c = checkpoints
    original, edited, extra = c["original"], c["edited"], []
    if case == "architecture":
        edited = c["gpt2"]
    elif case == "shape":
        edited = c["other_shape"]
    elif case == "nothing":
        edited = c["original"]
    elif case == "out_taken":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("x")
    elif case == "broken":
        edited = c["broken"]
    elif case == "missing":
        original = tmp_path / "no_such_dir"
    elif case == "unknown_matrix":
        extra = ["--matrices", "layers.9.mlp.down_proj"]
    elif case == "bad_alpha":
        extra = ["--alpha", "1"]
    with pytest.raises(SystemExit) as done:
        command_main(["restrain", "--original", str(original), "--edited", str(edited), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and err[-1].startswith(needle), err[-3:]
    assert sum(line.startswith("error:") for line in err) == 1 and not any("Traceback" in line for line in err)
    expected = ["keep.txt"] if case == "out_taken" else []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == expected if (tmp_path / "out").exists() else expected == []


def test_inspect_prints_the_report_and_writes_nothing(checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in checkpoints["edited"].iterdir()}
    assert command_main(["inspect", "--original", str(checkpoints["original"]), "--edited", str(checkpoints["edited"]), "--alpha", "e"]) == 0
    out = capsys.readouterr().out
    assert "PRUNE (log, α = e): 1 changed matrix of" in out and DOWN_PROJ in out and "nothing written" in out
    ratio = float(out.split(DOWN_PROJ)[1].split()[3])
    w0 = get_weight(load_model("tiny-llama", seed=0).model, DOWN_PROJ)
    assert ratio == pytest.approx(spectral_norm(torch.outer(torch.ones(64), torch.ones(128))) / spectral_norm(w0), rel=1e-3)
    assert list(tmp_path.iterdir()) == [] and {p: p.stat().st_mtime_ns for p in checkpoints["edited"].iterdir()} == before
    report = prune_lit.inspect(checkpoints["original"], checkpoints["edited"], alpha=1.2)  # the API: the same report
    assert report.matrices[0].ratio_before == pytest.approx(ratio, rel=1e-3) and report.weights == {}


def test_cli_restrain_writes_the_restrained_model(checkpoints, tmp_path):
    out = tmp_path / "restrained"
    proc = subprocess.run(
        [sys.executable, "cli.py", "restrain", "--original", str(checkpoints["original"]), "--edited", str(checkpoints["edited"]),
         "--out", str(out), "--matrices", "layers.1.mlp.down_proj", "--alpha", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"restrained model written to {out}" in proc.stdout and DOWN_PROJ in proc.stdout
    edited, restrained, original = (_params(d) for d in (checkpoints["edited"], out, checkpoints["original"]))
    expected = restrain_delta_with_stats(edited[DOWN_PROJ] - original[DOWN_PROJ], spectral_norm(original[DOWN_PROJ]), 2.0)
    assert expected.n_restrained == 1
    torch.testing.assert_close(restrained[DOWN_PROJ], edited[DOWN_PROJ] + expected.correction, rtol=0, atol=1e-6)
    assert all(torch.equal(restrained[n], w) for n, w in edited.items() if n != DOWN_PROJ)
    assert (out / "tokenizer.json").is_file()


@pytest.mark.slow
def test_smollm2_rome_restrained_post_hoc_equals_the_run_restrained_at_the_end(tmp_path: Path):
    """ROME on SmolLM2-135M without restraint → export_dir → `restrain` post hoc, against the same edits with
    configs/restraint/prune_at_end.yaml's restraint inside the loop. With its preset, ROME needs 20-30 edits before
    σ_max(ΔW) passes σ_max(W₀) in layer 4; an enlarged value step (v_lr 5, clamp 100, no decay / KL / early stop:
    σ_max(ΔW) ≈ 3.5 σ_max(W₀) after one edit, measured) gives PRUNE work after two."""
    overrides = dict(v_lr=5.0, clamp_norm_factor=100.0, v_weight_decay=0.0, kl_factor=0.0, v_mpes=False, early_stop_loss=0.0)
    facts = FACTS[:2]
    kw = dict(evaluate=False, diagnostics=False, progress=False, log_dir=tmp_path / "logs")
    prune_lit.edit("smollm2-135m", facts, editor=prune_lit.get_editor("rome", **overrides), restraint=None, export_dir=tmp_path / "edited", **kw)
    prune_lit.edit("smollm2-135m", facts, editor=prune_lit.get_editor("rome", **overrides), restraint="prune_at_end",
                   export_dir=tmp_path / "in_loop", **kw)  # fmt: skip
    done = prune_lit.restrain("smollm2-135m", tmp_path / "edited", tmp_path / "post_hoc")
    name = "model.layers.4.mlp.down_proj.weight"
    assert [m.name for m in done.report.matrices] == [name]
    in_loop, post_hoc = _params(tmp_path / "in_loop"), _params(tmp_path / "post_hoc")
    for n, w in in_loop.items():
        torch.testing.assert_close(post_hoc[n], w, rtol=0, atol=1e-5, msg=n)
    assert done.report.matrices[0].n_restrained >= 1, done.report.table()
    assert not torch.equal(_params(tmp_path / "edited")[name], in_loop[name])
    assert math.isfinite(done.report.matrices[0].ratio_after) and done.report.matrices[0].ratio_after < done.report.matrices[0].ratio_before
