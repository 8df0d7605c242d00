"""export_model: a Hugging Face directory that AutoModelForCausalLM reloads with the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prune_lit.models.export import export_model
from prune_lit.models.loader import load_model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_export_reloads_with_same_logits(tmp_path: Path, name: str) -> None:
    loaded = load_model(name, seed=0)
    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():  # an edit: the export must carry the changed weights, not the seeded ones
        next(p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "wte" not in n).add_(0.5)
    out = export_model(model, tok, tmp_path / "edited")
    assert out == tmp_path / "edited" and (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert [p.name for p in tmp_path.iterdir()] == ["edited"]  # no temporary directory left behind
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tok2 = AutoTokenizer.from_pretrained(out)
    ids = tok("The capital of France is Paris", return_tensors="pt").input_ids
    assert torch.equal(ids, tok2("The capital of France is Paris", return_tensors="pt").input_ids)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_export_refuses_a_non_empty_path(tmp_path: Path) -> None:
    loaded = load_model("tiny-llama", seed=0)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_model(loaded.model, loaded.tokenizer, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()  # an empty directory is fine
    assert (export_model(loaded.model, loaded.tokenizer, tmp_path / "empty") / "config.json").is_file()


def test_edit_your_own_facts_and_export(tmp_path: Path) -> None:
    """The README's example on a tiny model: own fact file, ROME + PRUNE at the end, the edited model exported."""
    import json

    from prune_lit.cli_main import main

    cli = main(
        [
            "test",
            "--config", "base.yaml", "--config", "editor/rome.yaml", "--config", "restraint/prune_at_end.yaml",
            "--config", "data/own_facts.yaml",
            "--model.init_args.model_name", "tiny-llama",
            "--model.init_args.downstream", "null",
            "--model.init_args.export_dir", str(tmp_path / "edited"),
            "--model.init_args.checkpoint_dir", str(tmp_path / "ckpt"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    results = json.loads(next((tmp_path / "logs").glob("rome/version_*/results.json")).read_text())
    assert results["edited_case_ids"] == [0, 1, 2] and "SpectralRestraint" in results["callbacks"]
    edited = cli.model.model
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "edited").eval()
    unedited = load_model("tiny-llama", seed=0).model
    ids = cli.model.tokenizer("The Eiffel Tower is located in the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, edited(ids).logits, rtol=0, atol=1e-6)
        assert not torch.allclose(reloaded(ids).logits, unedited(ids).logits, atol=1e-4)  # the edits are in it


def test_bad_input_is_one_line_at_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    from prune_lit.cli_main import main

    bad = tmp_path / "facts.jsonl"
    bad.write_text('{"prompt": "P is", "subject": "P", "target_new": "x"}\n{"prompt": "Q is", "target_new": "y"}\n')
    (tmp_path / "counterfact").mkdir()
    record = {"case_id": 0, "prompt": "P is", "subject": "P", "target_new": "x", "ground_truth": "y", "rephrase_prompt": "P:", "locality_prompt": "Q is", "locality_ground_truth": "z"}
    (tmp_path / "counterfact" / "counterfact-edit.json").write_text(json.dumps([record]))
    for extra, needle in (
        (["--data.init_args.dataset", str(bad)], f"error: {bad}: record 1 (line 2): missing field 'subject'"),
        (["--data.init_args.dataset", "facts.csv"], "error: unknown dataset 'facts.csv'"),
        (["--data.init_args.num_edits", "5", "--data.init_args.data_dir", str(tmp_path)], "error: num_edits=5 but counterfact split 'edit' has only 1 cases"),
    ):
        with pytest.raises(SystemExit) as done:
            main(["test", "--config", "rome.yaml", "--model.init_args.model_name", "tiny-llama", "--trainer.logger", "false", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2 and err[-1].startswith(needle), err[-3:]
        assert not any("Traceback" in line for line in err)
