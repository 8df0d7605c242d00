"""Starting a forward at block L on cached hidden states gives the full forward's numbers."""

from __future__ import annotations

import pytest
import torch

from prune_lit.data.requests import EditRequest
from prune_lit.editors.locate import logits_at, optimise_target
from prune_lit.models import load_model
from prune_lit.models.arch import arch_spec
from prune_lit.models.batching import pad_batch, pad_token_id
from prune_lit.models.layer_skip import hidden_into_layer, layer_of, skip_layers_below


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_forward_from_cached_layer_matches_full_forward(name):
    lm = load_model(name)
    model, tok = lm.model, lm.tokenizer
    ids, mask = pad_batch([tok("The Eiffel Tower is in")["input_ids"], tok("Paris")["input_ids"]], pad_token_id(tok))
    rows, cols = torch.tensor([0, 1]), mask.sum(1) - 1
    with torch.no_grad():
        full = logits_at(model, ids, mask, rows, cols)
        hidden = hidden_into_layer(model, 2, ids, mask)
        n_blocks = len(model.get_submodule(arch_spec(model).layers.removesuffix(".{}")))
        ran: list[int] = []
        hooks = [model.get_submodule(arch_spec(model).layer(i)).register_forward_hook(lambda *_a, i=i: ran.append(i)) for i in range(n_blocks)]
        with skip_layers_below(model, 2, hidden):
            skipped = logits_at(model, ids, mask, rows, cols)
        for h in hooks:
            h.remove()
        after = logits_at(model, ids, mask, rows, cols)
    assert ran == list(range(2, n_blocks))  # blocks 0 and 1 did not run
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, full, rtol=0, atol=0)  # the block list is back
    assert no_hooks(model)
    with pytest.raises(ValueError, match="cached hidden states"), skip_layers_below(model, 2, hidden[:1]):
        logits_at(model, ids, mask, rows, cols)
    assert len(model.get_submodule(arch_spec(model).layers.removesuffix(".{}"))) == n_blocks and no_hooks(model)


def test_layer_of_finds_the_block():
    model = load_model("tiny-llama").model
    assert layer_of(model, "model.layers.3.mlp.down_proj") == 3
    assert layer_of(model, "model.layers.1") == 1
    assert layer_of(model, "model.norm") is None


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_value_search_with_cached_lower_layers_is_unchanged(name):
    lm = load_model(name)
    model, tok = lm.model, lm.tokenizer
    spec = arch_spec(model)
    req = EditRequest(case_id=0, prompt="The city that holds the Eiffel Tower", subject="Eiffel Tower", target_new="Rome")
    kw = dict(num_steps=6, lr=0.5, weight_decay=1e-3, clamp_norm_factor=10.0, kl_factor=0.0625, early_stop_loss=0.0)
    templates = ["{}", "Hello. {}"]
    plain = optimise_target(model, tok, spec.mlp_out_name(2), req, templates, cache_lower_layers=False, **kw)
    cached = optimise_target(model, tok, spec.mlp_out_name(2), req, templates, cache_lower_layers=True, **kw)
    assert cached.steps == plain.steps == 5
    torch.testing.assert_close(cached.delta, plain.delta, rtol=1e-5, atol=1e-6)
    assert cached.nll == pytest.approx(plain.nll, rel=1e-5)
    assert plain.nll < optimise_target(model, tok, spec.mlp_out_name(2), req, templates, **{**kw, "num_steps": 1}).nll
    assert no_hooks(model)


def test_per_layer_attention_types_follow_the_cut():
    # Qwen2 picks each block's mask (full or sliding window) by its position in the loop, from config.layer_types.
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=3, max_window_layers=2,
    )
    model = Qwen2ForCausalLM(config).eval()
    assert config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    rows, cols = torch.tensor([0, 1]), torch.tensor([8, 8])
    with torch.no_grad():
        full = logits_at(model, ids, mask, rows, cols)
        with skip_layers_below(model, 1, hidden_into_layer(model, 1, ids, mask)):
            skipped = logits_at(model, ids, mask, rows, cols)
    torch.testing.assert_close(skipped, full, rtol=0, atol=1e-5)
    assert len(config.layer_types) == 4 and no_hooks(model)
