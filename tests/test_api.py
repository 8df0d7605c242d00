"""The Python API (prune_lit.load / get_editor / get_restraint / edit): the CLI's objects, a held model edited in
place, per-step stats, and the README's example run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

import prune_lit
from prune_lit.api import TRAINER_DEFAULTS, FactsDataModule, StepRecorder, build
from prune_lit.callbacks import FactoredSpectralRestraint, SpectralDiagnostics, SpectralRestraint
from prune_lit.cli_main import PruneLitCLI
from prune_lit.data.edit_io import EditDataError
from prune_lit.editors import MEMITEditor, MENDEditor, ROMEEditor
from prune_lit.models import get_weight
from prune_lit.models.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
FACTS = [json.loads(line) for line in (ROOT / "configs/data/example_facts.jsonl").read_text().splitlines()]
ROME_MATRIX = "model.layers.1.mlp.down_proj.weight"  # ROME's tiny-model default layer


def readme_example() -> str:
    """The first python code block under the README's "Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README: no python block under '## Python API'"
    return match.group(1)


def test_readme_example_is_short_and_runs_on_a_tiny_model(tmp_path, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12 and '"smollm2-135m"' in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace('"smollm2-135m"', '"tiny-llama"'), "README.md", "exec"), scope)
    run = scope["run"]
    assert [s["case_ids"] for s in run.steps] == [[0], [1], [2]] and all(s["applied"] for s in run.steps)
    assert run.edits_after["efficacy"] > 0.5
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "edited_model")
    torch.testing.assert_close(get_weight(reloaded, ROME_MATRIX), get_weight(run.model, ROME_MATRIX), rtol=0, atol=0)


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The README's example verbatim: three ROME + PRUNE edits of SmolLM2-135M, saved as a Hugging Face directory."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    run = scope["run"]
    assert len(run.steps) == 3 and run.edits_after["efficacy"] == 1.0
    assert (tmp_path / "edited_model" / "config.json").is_file() and (tmp_path / "edited_model" / "tokenizer.json").is_file()


def test_the_api_builds_what_the_cli_builds(tmp_path):
    args = ["--config", "configs/rome_prune.yaml", "--model.init_args.model_name", "tiny-llama", "--model.init_args.downstream", "null",
            "--trainer.logger", "false"]  # fmt: skip
    cli = PruneLitCLI(L.LightningModule, None, subclass_mode_model=True, subclass_mode_data=True, seed_everything_default=0, run=False, args=args)
    trainer, module, datamodule = build(load_model("tiny-llama"), FACTS, "rome", "prune", log_dir=tmp_path)
    assert type(module) is type(cli.model) and type(module.editor) is type(cli.model.editor)
    for attr in ("alpha", "mode", "every_n_edits", "at_end_only", "enabled"):
        assert getattr(module.restraint, attr) == getattr(cli.model.restraint, attr), attr
    assert type(module.restraint) is type(cli.model.restraint) and type(module.diagnostics) is type(cli.model.diagnostics)
    assert isinstance(datamodule, type(cli.datamodule)) and datamodule.batch_size == cli.datamodule.batch_size
    for key in ("model_name", "dtype", "eval_batch_size", "probe_tokens", "checkpoint_every"):
        assert module.hparams[key] == cli.model.hparams[key], key
    # The trainer: the CLI's defaults (PruneLitCLI.add_arguments_to_parser + configs/base.yaml) are the API's.
    assert TRAINER_DEFAULTS["inference_mode"] is False and cli.trainer.test_loop.inference_mode is trainer.test_loop.inference_mode
    assert cli.trainer.num_sanity_val_steps == trainer.num_sanity_val_steps and cli.trainer.num_devices == trainer.num_devices
    assert type(cli.trainer.accelerator) is type(trainer.accelerator) and cli.trainer.checkpoint_callback is trainer.checkpoint_callback is None


def test_edit_a_model_you_hold_in_place_with_per_step_stats(tmp_path):
    held = load_model("tiny-llama", seed=0)
    w0 = get_weight(held.model, ROME_MATRIX).clone()
    model = prune_lit.load(held.model, held.tokenizer, name="tiny-llama")
    keys = ("prompt", "subject", "target_new")
    requests = [prune_lit.EditRequest(case_id=f"c{i}", ground_truth="Paris", **{k: f[k] for k in keys}) for i, f in enumerate(FACTS)]
    run = prune_lit.edit(model, requests, "rome", prune_lit.get_restraint("prune", alpha=1.5), evaluate=True, eval_at=[2],
                         progress=False, log_dir=tmp_path)  # fmt: skip
    assert run.model is held.model and not torch.equal(get_weight(held.model, ROME_MATRIX), w0)  # edited in place
    assert [s["case_ids"] for s in run.steps] == [["c0"], ["c1"], ["c2"]]
    assert all(s["delta_norm"] > 0 and s["steps"] >= 1 and "loss" in s for s in run.steps)
    assert run.edits_before is not None and run.edits_after["efficacy"] > run.edits_before["efficacy"]
    assert [row["num_edits"] for row in run.results["history"]] == [2, 3]
    assert {r["matrix"] for r in run.spectra} == {ROME_MATRIX} and [r["num_edits"] for r in run.spectra if not r["final"]] == [1, 2, 3]
    assert (run.log_dir / "results.json").is_file() and json.loads((run.log_dir / "results.json").read_text())["num_edits"] == 3
    out = run.save(tmp_path / "saved")
    torch.testing.assert_close(get_weight(AutoModelForCausalLM.from_pretrained(out), ROME_MATRIX), get_weight(held.model, ROME_MATRIX), rtol=0, atol=0)


def test_a_fact_file_and_no_log_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = prune_lit.edit("tiny-llama", ROOT / "configs/data/example_facts.jsonl", "memit", None, batch_size=2, diagnostics=False,
                         progress=False, log_dir=None)  # fmt: skip
    assert [s["case_ids"] for s in run.steps] == [[0, 1], [2]] and run.spectra == [] and run.log_dir is None
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_names_and_bad_input():
    assert isinstance(prune_lit.get_editor("ROME", layers=[2]), ROMEEditor) and prune_lit.get_editor("rome", layers=[2]).overrides == {"layers": [2]}
    assert isinstance(prune_lit.get_editor("memit"), MEMITEditor) and isinstance(prune_lit.get_editor("mend", lr_scale=0.5), MENDEditor)
    at_end = prune_lit.get_restraint("prune_at_end", alpha=1.2)
    assert isinstance(at_end, SpectralRestraint) and at_end.at_end_only and at_end.alpha == 1.2
    assert isinstance(prune_lit.get_restraint("prune_factored"), FactoredSpectralRestraint) and prune_lit.get_restraint(None) is None
    with pytest.raises(ValueError, match="unknown editor 'rom'"):
        prune_lit.get_editor("rom")
    with pytest.raises(ValueError, match="unknown restraint"):
        prune_lit.get_restraint("prun")
    with pytest.raises(EditDataError, match=r"facts\[1\]: missing field 'subject'"):
        prune_lit.api.to_requests([FACTS[0], {"prompt": "x", "target_new": "y"}])
    with pytest.raises(EditDataError, match="case_id 0 repeats"):
        prune_lit.api.to_requests([FACTS[0], prune_lit.EditRequest(case_id=0, prompt="A is", subject="A", target_new="b")])
    with pytest.raises(FileExistsError):
        prune_lit.edit("tiny-llama", FACTS, export_dir=ROOT / "configs")  # refused before anything is edited
    assert isinstance(FactsDataModule(prune_lit.api.to_requests(FACTS)).all_requests[0], prune_lit.EditRequest)
    assert StepRecorder().state_dict() == {"steps": []} and isinstance(SpectralDiagnostics(), SpectralDiagnostics)
