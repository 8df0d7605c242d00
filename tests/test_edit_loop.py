"""The editing loop's contract: cadence, callback order, resume after a kill, several processes (CPU, tiny models)."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from prune_lit.callbacks import SpectralDiagnostics, SpectralRestraint
from prune_lit.data.edit_datamodule import EditDataModule
from prune_lit.editors import ROMEEditor
from prune_lit.models import get_weight
from prune_lit.contracts import crossed, crossed_any
from prune_lit.contracts.results import RUN_DEPENDENT_KEYS
from prune_lit.modules.evaluation import RunEvaluation
from prune_lit.modules.run_checkpoint import RunCheckpointError
from prune_lit.modules.sequential_editing import SequentialEditingModule

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = RUN_DEPENDENT_KEYS | {"world_size"}  # and the process count: DDP against one process


def test_cadence_counts_crossings_of_multiples_and_marks():
    assert crossed(0, 1, 1) and crossed(9, 10, 10) and crossed(5, 15, 10)
    assert not crossed(10, 19, 10) and not crossed(0, 9, 10)
    assert crossed_any(90, 100, [50, 100]) and crossed_any(40, 60, [50]) and not crossed_any(50, 60, [50])
    with pytest.raises(ValueError):
        crossed(0, 1, 0)


def _run(tmp_path, callbacks, name, num_edits=3, **module_kw):
    module = SequentialEditingModule(
        editor=ROMEEditor(), model_name="tiny-llama", downstream=None, evaluate_before=False,
        checkpoint_dir=str(tmp_path / "ckpt"), eval_at=[2], **module_kw,
    )
    trainer = L.Trainer(
        logger=TensorBoardLogger(tmp_path, name=name), callbacks=callbacks, inference_mode=False,
        enable_progress_bar=False, enable_checkpointing=False,
    )
    trainer.test(module, datamodule=EditDataModule(num_edits=num_edits, batch_size=1))
    return module, json.loads(next((tmp_path / name).glob("version_*/results.json")).read_text())


def test_restraint_runs_before_diagnostics_whatever_the_callback_order(tmp_path):
    runs = {}
    for order in ("restraint_first", "diagnostics_first"):
        restraint, diagnostics = SpectralRestraint(), SpectralDiagnostics()
        cbs = [restraint, diagnostics] if order == "restraint_first" else [diagnostics, restraint]
        module, results = _run(tmp_path / order, cbs, order)
        runs[order] = (module, diagnostics, results)
    (m1, d1, r1), (m2, d2, r2) = runs["restraint_first"], runs["diagnostics_first"]
    name = next(iter(m1.original_weights))
    assert torch.equal(get_weight(m1.model, name), get_weight(m2.model, name))
    assert [r["sigma_max_delta"] for r in d1.records] == [r["sigma_max_delta"] for r in d2.records]
    # the diagnostics saw the restrained weights: σ_max(ΔW) stays at or below the log-restrained bound
    sigma0 = d1.records[0]["sigma_max_w0"]
    restrained = [r for r in d1.records if r["sigma_max_delta"] > 0]
    assert restrained and all(r["sigma_max_delta"] <= sigma0 + 5.0 for r in restrained)
    assert r1["history"] == r2["history"]


def test_at_end_curve_evaluates_a_restrained_copy_and_leaves_the_weights_alone(tmp_path):
    restraint = SpectralRestraint(at_end_only=True, evaluate_at_end_curve=True)
    plain, plain_results = _run(tmp_path / "plain", [], "plain", num_edits=2)
    module, results = _run(tmp_path / "curve", [restraint], "curve", num_edits=2, probe_tokens=200, probe_window=40)
    row = results["history"][0]
    assert row["num_edits"] == 2 and "edits_restrained" in row
    assert results["probes_before"]["kl_from_unedited"] == 0.0
    # the restrained copy is another model than the unrestrained one at the same point
    assert row["probes_restrained"]["kl_from_unedited"] != row["probes_before_end_restraint"]["kl_from_unedited"]
    assert row["probes"] == row["probes_restrained"] | {k: row["probes"][k] for k in ("seconds", "tokens_per_s")}
    # at the end the run is restrained for real, so its final scores are the restrained copy's
    assert row["edits"] == row["edits_restrained"]
    assert "edits_before_end_restraint" in row and results["end_restraint_changed_weights"] is True
    assert plain_results["end_restraint_changed_weights"] is False
    name = next(iter(module.original_weights))
    # before the end, the copy's restraint was undone: the unrestrained run reached the same evaluation
    assert row["edits_before_end_restraint"] == _run_history_edits(plain)
    sigma0 = float(torch.linalg.matrix_norm(module.original_weights[name], ord=2))
    s_plain = float(torch.linalg.matrix_norm(get_weight(plain.model, name) - plain.original_weights[name], ord=2))
    s_end = float(torch.linalg.matrix_norm(get_weight(module.model, name) - module.original_weights[name], ord=2))
    assert s_plain > sigma0 and s_end == pytest.approx(math.log(s_plain) - math.log(sigma0) + sigma0, rel=1e-4)


def test_at_end_curve_reuses_the_scores_when_the_copy_restrains_nothing(tmp_path, monkeypatch):
    class NeverAbove(SpectralRestraint):  # a bound no σ of ΔW reaches: the restrained copy is the model itself
        def sigma_max_w0(self, name, w0):
            return 1e9

    measured = []
    original = RunEvaluation._measure
    monkeypatch.setattr(RunEvaluation, "_measure", lambda self, suffix, *a: measured.append(suffix) or original(self, suffix, *a))
    _, results = _run(tmp_path, [NeverAbove(at_end_only=True, evaluate_at_end_curve=True)], "same", num_edits=2,
                      probe_tokens=200, probe_window=40)
    row = results["history"][0]
    assert measured == [""]  # the copy was not evaluated a second time
    assert row["edits_restrained"] == row["edits"] and row["probes_restrained"] == row["probes"]
    assert results["end_restraint_changed_weights"] is False  # the end restraint was the identity


def _run_history_edits(module):
    return module.state.history[-1]["edits"]


def test_invalid_at_end_curve_without_at_end_only():
    with pytest.raises(ValueError, match="at_end_only"):
        SpectralRestraint(evaluate_at_end_curve=True)


# ---- resume ---------------------------------------------------------------------------------------
_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import lightning as L, torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from prune_lit.callbacks import EditStepCallback, Phase, SpectralDiagnostics, SpectralRestraint
    from prune_lit.data.edit_datamodule import EditDataModule
    from prune_lit.editors import ROMEEditor
    from prune_lit.modules.sequential_editing import SequentialEditingModule

    logging.basicConfig(level=logging.INFO)
    out, kill_after, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"

    class KillAfter(EditStepCallback):
        def on_edit_step(self, trainer, state):
            if state.requests_seen == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    L.seed_everything(0)
    module = SequentialEditingModule(editor=ROMEEditor(), model_name="tiny-llama", downstream=None, eval_at=[2, 4],
                                     checkpoint_dir=os.path.join(out, "ckpt"), checkpoint_every=2, resume=resume, run_name="r")
    trainer = L.Trainer(logger=TensorBoardLogger(out, name="logs"), inference_mode=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[SpectralRestraint(every_n_edits=2), SpectralDiagnostics(), KillAfter()])
    trainer.test(module, datamodule=EditDataModule(num_edits=6, batch_size=1))
    torch.save({n: p.detach() for n, p in module.model.named_parameters()}, os.path.join(out, "final.pt"))
    """
)


def _script(tmp_path, out, kill_after, resume):
    script = tmp_path / "run_edits.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), str(out), str(kill_after), "1" if resume else "0"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _comparable(results):
    return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def test_a_killed_run_resumes_to_the_same_weights_and_results(tmp_path):
    full = _script(tmp_path, tmp_path / "full", kill_after=-1, resume=False)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _script(tmp_path, tmp_path / "killed", kill_after=3, resume=False)
    assert killed.returncode == -signal.SIGKILL
    # edit 3 was applied in memory, but only the checkpoint after edit 2 exists
    assert (tmp_path / "killed/ckpt/r/latest").read_text().strip() == "step-0000002"
    resumed = _script(tmp_path, tmp_path / "killed", kill_after=-1, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = torch.load(tmp_path / "full/final.pt")
    b = torch.load(tmp_path / "killed/final.pt")
    for name in a:
        assert torch.equal(b[name], a[name]), name  # bit-exact: weights, warm SVD bases and RNG states are restored
    ra = json.loads(next((tmp_path / "full/logs").glob("version_*/results.json")).read_text())
    rb = json.loads(max((tmp_path / "killed/logs").glob("version_*/results.json")).read_text())
    assert rb["edited_case_ids"] == ra["edited_case_ids"]  # no edit lost or applied twice
    assert rb["num_edits"] == 6 and rb["num_steps"] == 6
    _close(_comparable(rb), _comparable(ra), tol=1e-9)


def _close(a, b, tol=1e-5):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (a.keys(), b.keys())
        for k in a:
            _close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, tol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=tol, abs=tol, nan_ok=True)
    else:
        assert a == b
    return True


def test_resume_errors_name_the_file(tmp_path):
    with pytest.raises(RunCheckpointError, match="holds no checkpoint"):
        _run(tmp_path / "none", [], "none", resume=True)
    _run(tmp_path / "a", [], "a", num_edits=2, run_name="same")
    ckpt_dir = tmp_path / "a" / "ckpt" / "same"
    # another restraint setting is another run
    with pytest.raises(RunCheckpointError, match="state.json is from another run.*restraint"):
        module = SequentialEditingModule(editor=ROMEEditor(), model_name="tiny-llama", downstream=None, evaluate_before=False,
                                         checkpoint_dir=str(tmp_path / "a" / "ckpt"), run_name="same", resume=True)
        L.Trainer(logger=False, default_root_dir=str(tmp_path), callbacks=[SpectralRestraint()], inference_mode=False, enable_progress_bar=False,
                  enable_checkpointing=False).test(module, datamodule=EditDataModule(num_edits=3, batch_size=1))
    folder = ckpt_dir / (ckpt_dir / "latest").read_text().strip()
    (folder / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunCheckpointError, match="no usable checkpoint.*weights.safetensors is corrupt"):
        _run(tmp_path / "a", [], "a", num_edits=3, run_name="same", resume=True)


# ---- several processes --------------------------------------------------------------------------
def _cli(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "cli.py", *args, "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("devices", [1, 2])
def test_ddp_applies_every_edit_on_every_rank_and_matches_one_process(tmp_path, devices):
    common = ["test", "--config", "configs/rome_prune.yaml", "--model.init_args.model_name", "tiny-llama",
              "--model.init_args.downstream", "null", "--model.init_args.eval_at", "[1, 4]", "--data.init_args.num_edits", "5",
              "--model.init_args.checkpoint_dir", str(tmp_path / "ckpt"), "--trainer.accelerator", "cpu",
              "--model.init_args.probe_tokens", "400", "--model.init_args.probe_window", "40"]
    one = _cli(tmp_path / "one", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    if devices == 1:
        return
    many = _cli(tmp_path / "two", *common, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                "--model.init_args.checkpoint_dir", str(tmp_path / "ckpt_two"))  # another run: not over the first one's checkpoints
    assert many.returncode == 0, many.stderr[-3000:]
    files = list((tmp_path / "two").rglob("results.json"))
    assert len(files) == 1  # only rank 0 writes
    assert many.stderr.count("edits after 4 edits") == 1  # and only rank 0 prints INFO lines (every rank evaluates)
    r2 = json.loads(files[0].read_text())
    r1 = json.loads(next((tmp_path / "one").rglob("results.json")).read_text())
    assert r2["world_size"] == 2 and r2["num_edits"] == 5 and r2["edited_case_ids"] == r1["edited_case_ids"]
    assert len(r2["probes_after"]["per_window"]["nll"]) == 10  # every window, gathered from both ranks in order
    for r in (r1, r2):  # probes are timed: compare their numbers only
        for block in [r["probes_before"], r["probes_after"]] + [row["probes"] for row in r["history"]]:
            for k in ("seconds", "tokens_per_s"):
                block.pop(k)
    _close(_comparable(r2), _comparable(r1), tol=1e-4)


def test_mend_training_runs_a_few_steps_on_two_processes(tmp_path):
    res = _cli(tmp_path, "fit", "--config", "configs/mend.yaml", "--model.init_args.model_name", "tiny-llama",
               "--model.init_args.rank", "8", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
               "--data.init_args.val_limit", "4", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "max_steps=2` reached" in res.stderr + res.stdout


def test_an_extended_alphaedit_run_continues_its_preserved_keys(tmp_path, monkeypatch):
    """AlphaEdit's K_pK_pᵀ is run state: a run of 4 edits extended to 6 by resuming equals a run of 6."""
    from prune_lit.editors import AlphaEditEditor

    def run(num_edits, resume, folder):
        module = SequentialEditingModule(editor=AlphaEditEditor(), model_name="tiny-llama", downstream=None, evaluate_before=False,
                                         checkpoint_dir=str(tmp_path / folder), run_name="a", resume=resume)
        trainer = L.Trainer(logger=False, default_root_dir=str(tmp_path), inference_mode=False, enable_progress_bar=False, enable_checkpointing=False)
        trainer.test(module, datamodule=EditDataModule(num_edits=num_edits, batch_size=2))
        return module

    def same(a, b):
        return all(torch.equal(get_weight(a.model, n), get_weight(b.model, n)) for n in a.original_weights)

    straight = run(6, False, "straight")
    run(4, False, "extended")
    extended = run(6, True, "extended")
    assert extended.editor.state_dict()["num_keys"] == straight.editor.state_dict()["num_keys"] > 0
    assert same(extended, straight)
    # the state matters: a resume that forgot the preserved keys solves the third step differently
    run(4, False, "forgetful")
    monkeypatch.setattr(AlphaEditEditor, "load_state_dict", lambda self, state: None)
    assert not same(run(6, True, "forgetful"), straight)


def test_downstream_runs_at_its_own_counts_between_edit_evaluations(tmp_path):
    class CountingDownstream:
        calls = 0

        def evaluate(self, model, tokenizer):
            CountingDownstream.calls += 1
            return {"task/score": 0.5}

    module = SequentialEditingModule(editor=ROMEEditor(), model_name="tiny-llama", downstream=CountingDownstream(), evaluate_before=False, downstream_cache=False,
                                     checkpoint_dir=str(tmp_path / "ckpt"), eval_at=[2], downstream_at=[1])
    trainer = L.Trainer(logger=False, default_root_dir=str(tmp_path), inference_mode=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.test(module, datamodule=EditDataModule(num_edits=2, batch_size=1))
    rows = {row["num_edits"]: row for row in module.state.history}
    assert rows[1]["downstream"] == {"task/score": 0.5} and "edits" not in rows[1]  # downstream_at 1, not in eval_at
    assert CountingDownstream.calls == 3  # before, at 1, after the last edit
