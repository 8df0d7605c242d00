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
