"""The sequential-editing loop end to end on a tiny model: CLI, cumulative edits, restraint, results."""

import json
import math
import re

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from prune_lit.contracts.results import SCHEMA_VERSION, RunResults
from prune_lit.callbacks import SpectralDiagnostics, SpectralRestraint
from prune_lit.cli_main import main
from prune_lit.data.edit_datamodule import EditDataModule
from prune_lit.editors.base import Editor, EditStats
from prune_lit.models import arch_spec, get_weight
from prune_lit.modules.sequential_editing import SequentialEditingModule
from prune_lit.reporting import code_commit


def test_cli_runs_rome_with_prune_and_writes_results(tmp_path):
    main(
        [
            "test",
            "--config", "configs/rome_prune.yaml",
            "--model.init_args.model_name", "tiny-llama",
            "--model.init_args.downstream", "null",
            "--model.init_args.eval_at", "[2]",
            "--data.init_args.num_edits", "4",
            "--model.init_args.checkpoint_dir", str(tmp_path / "ckpt"),
            "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false",
        ]
    )
    run = next(tmp_path.glob("rome_prune/version_*"))
    results = json.loads((run / "results.json").read_text())
    assert results["num_edits"] == 4 and results["editor"] == "ROMEEditor"
    assert [row["num_edits"] for row in results["history"]] == [2, 4]
    # Edits were written: the edited facts are preferred far more often than before editing.
    assert results["edits_after"]["efficacy"] > results["edits_before"]["efficacy"]
    assert "SpectralRestraint" in results["callbacks"] and results["seconds_restraint"] > 0
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events written"
    assert (run / "spectral.json").exists()
    typed = RunResults.read(run / "results.json")  # strict for this version: a key the schema lacks is refused
    assert typed.schema_version == SCHEMA_VERSION and typed.to_dict() == results
    assert [p.num_edits for p in typed.history] == [2, 4] and typed.points()[0]["edits"] == results["edits_before"]
    # the code that ran, as git names it (this suite runs from a checkout; an installed package records none)
    assert results["code_commit"] == code_commit() and re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", results["code_commit"])


class _FlakyEditor(Editor):
    """Adds a fixed rank-one ΔW, except on step ``nan_step`` where the update is NaN.

    With ``full_rank`` it adds a fresh random full-rank ΔW (σ_max several times σ_max(W_0)) instead, seeded by
    the step number, as MEND's edits add up.
    """

    def __init__(self, nan_step: int | None = 2, full_rank: bool = False) -> None:
        self.nan_step = nan_step
        self.full_rank = full_rank

    def weight_names(self, model):
        return [arch_spec(model).mlp_out_name(1) + ".weight"]

    def compute_deltas(self, model, tokenizer, requests):
        self.calls = getattr(self, "calls", 0) + 1
        name = self.weight_names(model)[0]
        w = get_weight(model, name)
        delta = torch.outer(torch.ones(w.shape[0]), torch.ones(w.shape[1])) * 0.5
        if self.full_rank:
            delta = torch.randn(w.shape, generator=torch.Generator().manual_seed(self.calls)) * 0.3
        if self.calls == self.nan_step:
            delta[0, 0] = float("nan")
        return {name: delta}, EditStats()


def test_nan_update_is_rejected_and_the_run_goes_on(tmp_path):
    module = SequentialEditingModule(editor=_FlakyEditor(), model_name="tiny-llama", downstream=None, evaluate_before=False,
                                     checkpoint_dir=str(tmp_path / "ckpt"))
    restraint = SpectralRestraint()
    trainer = L.Trainer(
        logger=TensorBoardLogger(tmp_path, name="flaky"), callbacks=[restraint], inference_mode=False,
        enable_progress_bar=False, enable_checkpointing=False,
    )
    trainer.test(module, datamodule=EditDataModule(num_edits=3, batch_size=1))
    results = json.loads(next(tmp_path.glob("flaky/version_*/results.json")).read_text())
    assert results["num_rejected_steps"] == 1 and results["num_edits"] == 3
    name = _FlakyEditor().weight_names(module.model)[0]
    delta = get_weight(module.model, name) - module.original_weights[name]
    assert torch.isfinite(delta).all()
    # Steps 1 and 3 each added the same rank-one ΔW (σ = 0.5·sqrt(m·n)); PRUNE restrained after each.
    sigma0 = torch.linalg.matrix_norm(module.original_weights[name], ord=2).item()
    m, n = delta.shape
    step = 0.5 * math.sqrt(m * n)
    restrain = lambda s: math.log(s) - math.log(sigma0) + sigma0  # noqa: E731
    expected = restrain(restrain(step) + step)
    assert math.isclose(torch.linalg.matrix_norm(delta, ord=2).item(), expected, rel_tol=1e-4)


def _run_with_restraint(tmp_path, editor, restraint, num_edits):
    module = SequentialEditingModule(editor=editor, model_name="tiny-llama", downstream=None, evaluate_before=False,
                                     checkpoint_dir=str(tmp_path / "ckpt"))
    trainer = L.Trainer(
        logger=TensorBoardLogger(tmp_path, name="run"), callbacks=restraint if isinstance(restraint, list) else [restraint],
        inference_mode=False,
        enable_progress_bar=False, enable_checkpointing=False,
    )
    trainer.test(module, datamodule=EditDataModule(num_edits=num_edits, batch_size=1))
    return module


def test_edits_after_the_last_multiple_of_k_are_restrained_before_the_final_evaluation(tmp_path):
    editor = _FlakyEditor(nan_step=None)
    module = _run_with_restraint(tmp_path, editor, SpectralRestraint(every_n_edits=3), num_edits=4)
    name = editor.weight_names(module.model)[0]
    delta = get_weight(module.model, name) - module.original_weights[name]
    sigma0 = torch.linalg.matrix_norm(module.original_weights[name], ord=2).item()
    step = 0.5 * math.sqrt(delta.shape[0] * delta.shape[1])
    restrain = lambda s: math.log(s) - math.log(sigma0) + sigma0  # noqa: E731
    # Restrained after edit 3, then edit 4 is restrained at the end of the run.
    expected = restrain(restrain(3 * step) + step)
    assert math.isclose(torch.linalg.matrix_norm(delta, ord=2).item(), expected, rel_tol=1e-4)


def test_full_rank_delta_is_restrained_exactly_and_remembered_as_full_rank(tmp_path):
    editor, restraint, diagnostics = _FlakyEditor(nan_step=None, full_rank=True), SpectralRestraint(), SpectralDiagnostics()
    module = _run_with_restraint(tmp_path, editor, [restraint, diagnostics], num_edits=3)
    name = editor.weight_names(module.model)[0]
    w0 = module.original_weights[name].double()
    sigma0 = float(torch.linalg.matrix_norm(w0, ord=2))
    expected = torch.zeros_like(w0)
    for call in (1, 2, 3):  # the same three edits, each followed by a plain float64 SVD restraint
        expected += torch.randn(w0.shape, generator=torch.Generator().manual_seed(call)) * 0.3
        u, s, vh = torch.linalg.svd(expected, full_matrices=False)
        s = torch.where(s > sigma0, torch.log(s) - math.log(sigma0) + sigma0, s)
        expected = (u * s) @ vh
    got = get_weight(module.model, name).double() - w0
    assert name in restraint.warm.full_rank  # the 2nd and 3rd passes went straight to the thin SVD
    assert float((got - expected).norm() / expected.norm()) < 1e-4
    # the diagnostics, warm-started the same way, still report the exact σ_max(ΔW) of the restrained weights
    assert name in diagnostics.warm.full_rank
    last = [r for r in diagnostics.records if r["matrix"] == name][-1]
    assert math.isclose(last["sigma_max_delta"], float(torch.linalg.matrix_norm(got, ord=2)), rel_tol=1e-5)
