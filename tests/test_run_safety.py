"""Runs that survive resume, extension, refusal and corrupt checkpoints (issue: runs you can trust with days of work)."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from prune_lit.callbacks import FactoredSpectralRestraint, SpectralDiagnostics, SpectralRestraint
from prune_lit.data.edit_datamodule import EditDataModule
from prune_lit.editors import ROMEEditor
from prune_lit.models import get_weight
from prune_lit.contracts.results import RUN_DEPENDENT_KEYS
from prune_lit.modules.run_checkpoint import RunCheckpointError, find_run_checkpoint, save_run_checkpoint
from prune_lit.modules.sequential_editing import SequentialEditingModule



def _strict_load(path):
    def refuse(token):
        raise ValueError(f"{path}: non-standard JSON constant {token}")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _run(root, num_edits, resume=False, restraint_kw=None, name="r", **module_kw):
    restraint = SpectralRestraint(**(restraint_kw or {"at_end_only": True}))
    module = SequentialEditingModule(
        editor=ROMEEditor(), model_name="tiny-llama", downstream=None, eval_at=[2], checkpoint_dir=str(root / "ckpt"),
        run_name=name, resume=resume, restraint=restraint, diagnostics=SpectralDiagnostics(), **module_kw,
    )
    trainer = L.Trainer(logger=TensorBoardLogger(root, name="logs"), inference_mode=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    L.seed_everything(0)
    trainer.test(module, datamodule=EditDataModule(num_edits=num_edits, batch_size=1))
    folder = max((root / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    weights = {n: get_weight(module.model, n).clone() for n in module.original_weights}
    return weights, _strict_load(folder / "results.json"), _strict_load(folder / "spectral.json")


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), (n, float((a[n] - b[n]).abs().max()))


def _results(r):
    out = {k: v for k, v in r.items() if k not in RUN_DEPENDENT_KEYS}
    for row in out.get("history", []):
        row.pop("seconds", None)
    return out


@pytest.mark.parametrize("restraint_kw", [{"at_end_only": True}, {"every_n_edits": 4}], ids=["at_end", "every_4"])
def test_extension_and_resume_of_a_finished_run_restrain_exactly_once(tmp_path, restraint_kw):
    fresh_w, fresh_r, fresh_s = _run(tmp_path / "fresh", 6, restraint_kw=restraint_kw)
    _run(tmp_path / "ext", 3, restraint_kw=restraint_kw)
    ext_w, ext_r, ext_s = _run(tmp_path / "ext", 6, resume=True, restraint_kw=restraint_kw)
    _same_weights(ext_w, fresh_w)  # 3 -> 6 continues from the unrestrained state: the fresh 6-edit run, bit for bit
    assert _results(ext_r) == _results(fresh_r)
    assert ext_s == fresh_s  # spectral.json too, exactly (warm SVD bases are checkpointed)
    again_w, again_r, again_s = _run(tmp_path / "ext", 6, resume=True, restraint_kw=restraint_kw)
    _same_weights(again_w, fresh_w)  # resuming a finished run restrains nothing twice
    assert _results(again_r) == _results(fresh_r) and again_s == fresh_s
    # the cost ledger continues over resumes: 6 edit steps in all, one reference recording and total per start
    calls = lambda r, part: r["cost"]["parts"][part]["calls"]  # noqa: E731
    assert calls(fresh_r, "edit_steps") == calls(ext_r, "edit_steps") == calls(again_r, "edit_steps") == 6
    assert [r["cost"]["total"]["calls"] for r in (fresh_r, ext_r, again_r)] == [1, 2, 3]
    assert [calls(r, "references") for r in (fresh_r, ext_r, again_r)] == [1, 2, 3]
    assert fresh_r["cost"]["since_edits"] == ext_r["cost"]["since_edits"] == 0
    for r in (fresh_r, ext_r, again_r):
        parts = r["cost"]["parts"].values()
        assert {"edits_before", "edits", "checkpoints", "end_restraint"} <= r["cost"]["parts"].keys()
        assert sum(p["wall"] for p in parts) <= r["cost"]["total"]["wall"] and sum(p["cpu"] for p in parts) <= r["cost"]["total"]["cpu"]
    # the checkpoint holds the state before the end restraint, which did change the weights (so the test can fail)
    saved = find_run_checkpoint(tmp_path / "ext" / "ckpt" / "r")
    assert saved.state["counters"]["requests_seen"] == 6
    assert any(not torch.equal(saved.weights[n], fresh_w[n]) for n in fresh_w)


def test_factored_restraint_state_survives_a_checkpoint_bit_for_bit(tmp_path):
    """MEND's factored at-end restraint: ΔW's factors go into the checkpoint, so 6 edits, checkpoint, 6 more and the
    end restraint equal 12 straight edits bit for bit (a checkpoint without them would take the dense path)."""
    from test_restraint_factored import _replay  # the factor-stream harness of the factored restraint's tests
    from prune_lit.models import arch_spec, load_model, set_weight

    model = load_model("tiny-llama", seed=0).model
    spec = arch_spec(model)
    names = [spec.mlp_out_name(1) + ".weight"]
    w0 = {n: get_weight(model, n).clone().float() for n in names}
    g = torch.Generator().manual_seed(0)
    edits = [{n: (torch.randn(w0[n].shape[0], 3, generator=g) * 0.3 * (s + 1), torch.randn(w0[n].shape[1], 3, generator=g) * 0.1)
              for n in names} for s in range(12)]
    straight_cb = FactoredSpectralRestraint(at_end_only=True, max_factored_rank_ratio=1.0)
    straight = _replay(model, names, edits, straight_cb)
    assert sum(sum(h["n_restrained"].values()) for h in straight_cb.history) > 0

    from types import SimpleNamespace
    from prune_lit.editors.base import EditResult
    from prune_lit.contracts import EditState

    first = FactoredSpectralRestraint(at_end_only=True, max_factored_rank_ratio=1.0)
    state = EditState(model=model, tokenizer=None, original_weights=w0)
    for factors in edits[:6]:
        for n, (a, b) in factors.items():
            set_weight(model, n, get_weight(model, n) + (a @ b.T).float())
        state.record_step([None], EditResult(deltas={}, applied=True, factors=factors), 0.0)
        first.on_edit_step(SimpleNamespace(loggers=[]), state)
    mid = {n: get_weight(model, n).clone() for n in names}
    save_run_checkpoint(tmp_path, mid, {"counters": {"requests_seen": 6}, "callbacks": {"r": first.state_dict()}}, {})
    ckpt = find_run_checkpoint(tmp_path)
    second = FactoredSpectralRestraint(at_end_only=True, max_factored_rank_ratio=1.0)
    second.load_state_dict(ckpt.state["callbacks"]["r"])
    for n in names:
        set_weight(model, n, ckpt.weights[n])
    for factors in edits[6:]:
        for n, (a, b) in factors.items():
            set_weight(model, n, get_weight(model, n) + (a @ b.T).float())
        state.record_step([None], EditResult(deltas={}, applied=True, factors=factors), 0.0)
        second.on_edit_step(SimpleNamespace(loggers=[]), state)
    second.on_edits_end(SimpleNamespace(loggers=[]), state)
    for n in names:
        assert torch.equal(get_weight(model, n), straight[n]), n
        set_weight(model, n, w0[n])
    assert second.method_counts["factored"] == straight_cb.method_counts["factored"] > 0


def test_starting_over_on_a_runs_checkpoints_is_refused_and_overwrite_moves_them_aside(tmp_path):
    _run(tmp_path, 2)
    with pytest.raises(RunCheckpointError, match="resume: true.*overwrite: true"):
        _run(tmp_path, 2)
    assert len(list((tmp_path / "logs").glob("version_*"))) == 1  # the refused run left no empty log folder
    assert (tmp_path / "ckpt" / "r" / "latest").is_file()  # and nothing was deleted
    _run(tmp_path, 2, overwrite=True)
    aside = list((tmp_path / "ckpt").glob("r.old-*"))
    assert len(aside) == 1 and (aside[0] / "latest").is_file()


def test_results_and_checkpoints_are_strict_json_with_null_for_metrics_without_cases(tmp_path):
    facts = tmp_path / "facts.jsonl"  # own facts without locality prompts: neighborhood scores have no cases
    facts.write_text("\n".join(json.dumps({"case_id": i, "prompt": f"{s} is a citizen of", "subject": s, "target_new": t})
                               for i, (s, t) in enumerate([("Danielle Darrieux", "Japan"), ("Edwin of Northumbria", "Rome")])) + "\n")
    module = SequentialEditingModule(editor=ROMEEditor(), model_name="tiny-llama", downstream=None, eval_at=[1],
                                     checkpoint_dir=str(tmp_path / "ckpt"), run_name="own", diagnostics=SpectralDiagnostics())
    trainer = L.Trainer(logger=TensorBoardLogger(tmp_path, name="logs"), inference_mode=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.test(module, datamodule=EditDataModule(dataset=str(facts), num_edits=None, batch_size=1))
    written = [*tmp_path.rglob("*.json")]
    assert {p.name for p in written} >= {"results.json", "spectral.json", "state.json"}
    for path in written:
        _strict_load(path)  # raises on NaN / Infinity
    results = _strict_load(next(tmp_path.rglob("results.json")))
    assert any(v is None for v in results["edits_after"].values())  # a metric without cases is null, not NaN


def test_user_mistakes_are_one_line_errors_with_exit_status_2(tmp_path, capsys):
    from prune_lit.cli_main import main

    (tmp_path / "not_a_model").mkdir()
    long_prompt = tmp_path / "long.jsonl"  # far past the tiny model's context: refused at load, naming the record
    long_prompt.write_text(json.dumps({"case_id": "huge", "prompt": "word " * 50_000 + "Paris is in", "subject": "Paris", "target_new": "Rome"}) + "\n")
    common = ["test", "--config", "rome.yaml", "--model.init_args.model_name", "tiny-llama", "--model.init_args.downstream", "null",
              "--data.init_args.num_edits", "2", "--model.init_args.eval_at", "[1]", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
              "--model.init_args.checkpoint_dir", str(tmp_path / "ckpt"), "--trainer.enable_progress_bar", "false"]
    for extra, needle in (
        (["--config", str(tmp_path / "missing.yaml")], "error: File does not exist"),
        (["--model.init_args.evall_at", "[1]"], "error: prune_lit.modules.SequentialEditingModule has no setting 'evall_at'; did you mean 'eval_at'?"),
        (["--trainer.max_stepz", "3"], "error: unknown setting '--trainer.max_stepz'; did you mean 'trainer.max_steps'?"),
        (["--data.init_args.data_dir", str(tmp_path / "nope")], f"error: data_dir '{tmp_path / 'nope'}' does not exist"),
        (["--model.init_args.data_dir", str(tmp_path / "nope")], f"error: data_dir '{tmp_path / 'nope'}' does not exist"),
        (["--model.init_args.data_dir", str(tmp_path), "--data.init_args.data_dir", str(tmp_path / "x")], "error: model.init_args.data_dir"),
        (["--model.init_args.model_name", str(tmp_path / "not_a_model")], "error: model_name"),
        (["--model.init_args.eval_at", "[0, 3]"], "error: eval_at [0, 3] outside 1..2"),
        (["--model.init_args.resume", "true"], "error: resume: true, but"),
        (["--data.init_args.dataset", str(long_prompt), "--data.init_args.num_edits", "null"], "error: case huge: prompt of"),
    ):
        with pytest.raises(SystemExit) as done:
            main([*common, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2 and err[-1].startswith(needle), (extra, err[-3:])
        assert not any("Traceback" in line or line.startswith("usage:") for line in err), (extra, err)
    assert not list((tmp_path / "logs").rglob("version_*"))  # no failed start left a log folder


def test_checkpoints_of_the_older_format_resume_unverified_unless_restrained_at_the_end(tmp_path):
    from prune_lit.modules.run_checkpoint import load_run_checkpoint

    def legacy(restraint, history):
        folder = save_run_checkpoint(tmp_path / str(len(list(tmp_path.iterdir()))), {"w": torch.ones(2, 2)},
                                     {"counters": {"requests_seen": 3}, "fingerprint": {"restraint": [restraint]},
                                      "callbacks": {"SpectralRestraint": {"history": history, "pending": False}}}, {})
        doc = json.loads((folder / "state.json").read_text())
        doc["format"] = 1
        for key in ("checksum", "sha256"):
            doc.pop(key)
        (folder / "state.json").write_text(json.dumps(doc))
        return folder

    assert torch.equal(load_run_checkpoint(legacy({"at_end_only": True}, [])).weights["w"], torch.ones(2, 2))
    assert load_run_checkpoint(legacy({"at_end_only": False}, [{"num_edits": 3}])).state["counters"]["requests_seen"] == 3
    with pytest.raises(RunCheckpointError, match="after the end-of-run restraint"):
        load_run_checkpoint(legacy({"at_end_only": True}, [{"num_edits": 3}]))


def test_leftovers_of_a_killed_checkpoint_write_are_cleared_and_a_moved_aside_checkpoint_put_back(tmp_path):
    from prune_lit.modules.run_checkpoint import remove_stale_temporaries

    save_run_checkpoint(tmp_path, {"w": torch.ones(1)}, {"counters": {"requests_seen": 4}}, {})
    save_run_checkpoint(tmp_path, {"w": torch.full((1,), 2.0)}, {"counters": {"requests_seen": 5}}, {})
    # killed while re-saving step 5: the old one moved aside, the new one still a temporary folder
    (tmp_path / "step-0000005").rename(tmp_path / ".replaced-step-0000005-99")
    (tmp_path / ".tmp-step-0000005-99").mkdir()
    (tmp_path / ".latest.tmp99").write_text("step-0000005\n")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-0000004", "step-0000005"]
    assert float(find_run_checkpoint(tmp_path).weights["w"]) == 2.0
    save_run_checkpoint(tmp_path, {"w": torch.ones(1)}, {"counters": {"requests_seen": 6}}, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000005", "step-0000006"]  # the newest two


def test_a_state_json_damaged_into_other_valid_json_is_caught_by_its_checksum(tmp_path):
    from prune_lit.modules.run_checkpoint import load_run_checkpoint

    folder = save_run_checkpoint(tmp_path, {"w": torch.ones(1)}, {"counters": {"requests_seen": 5}, "seconds": 1.5}, {})
    text = (folder / "state.json").read_text()
    for damaged in (text.replace("1.5", "1e999"), text.replace("1.5", "2.5")):  # a number read as inf; another value
        (folder / "state.json").write_text(damaged)
        with pytest.raises(RunCheckpointError, match="state.json is corrupt"):
            load_run_checkpoint(folder)


def test_a_checkpoint_without_a_cost_ledger_starts_the_ledger_at_its_edit_count():
    """Checkpoints written before runs kept a ledger: the resumed run's ledger says from which edit it counts."""
    module = SequentialEditingModule(editor=ROMEEditor(), model_name="tiny-llama", downstream=None, checkpoint_dir=None)
    with module.cost.measure("references"):
        pass
    module._restore_cost(None, 300)
    assert module.cost.since_edits == 300 and module.cost.parts["references"].calls == 1
    saved = {"since_edits": 0, "total": {"wall": 10.0, "cpu": 9.0, "calls": 1}, "parts": {"references": {"wall": 1.0, "cpu": 1.0, "calls": 1}}}
    module._restore_cost(saved, 300)
    assert module.cost.since_edits == 0 and module.cost.parts["references"].calls == 2
    assert module._cost_so_far()["total"]["calls"] == 2 and module._cost_so_far()["total"]["wall"] >= 10.0
