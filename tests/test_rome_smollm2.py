"""ROME on the real SmolLM2-135M: one CounterFact fact, efficacy and a locality spot check."""

from __future__ import annotations

import pytest
import torch

from prune_lit.data.requests import EditRequest
from prune_lit.editors import ROMEEditor
from prune_lit.editors.locate import target_token_ids
from prune_lit.models import load_model


@torch.no_grad()
def first_token_logprobs(model, tok, prompt: str, words: list[str]) -> list[float]:
    logp = model(tok(prompt, return_tensors="pt").input_ids).logits[0, -1].log_softmax(-1)
    return [float(logp[target_token_ids(tok, w)[0]]) for w in words]


@pytest.mark.slow
def test_rome_rewrites_one_fact_in_smollm2(tmp_path):
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    request = EditRequest(0, "The Eiffel Tower is located in the city of", "Eiffel Tower", "Rome", "Paris")
    new, old = first_token_logprobs(model, tok, request.prompt, ["Rome", "Paris"])
    assert old > new  # the model knows the true fact before editing
    # The preset's layer, with a cheaper value search and statistics so the test stays short on a CPU.
    editor = ROMEEditor(
        stats_dir=str(tmp_path),
        overrides=dict(mom2_n_samples=2048, mom2_seq_len=128, context_template_length_params=[[5, 2]], v_num_grad_steps=8),
    )
    editor.prepare(model, tok, "smollm2-135m", None)
    result = editor.edit(model, tok, [request])
    assert result.applied
    new, old = first_token_logprobs(model, tok, request.prompt, ["Rome", "Paris"])
    assert new > old, f"efficacy failed: log P(Rome)={new:.3f}, log P(Paris)={old:.3f}"
    with torch.no_grad():
        logits = model(tok("The capital of France is", return_tensors="pt").input_ids).logits[0, -1]
    assert tok.decode(int(logits.argmax())) == " Paris"
