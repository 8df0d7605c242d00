"""Model presets, architecture paths and weight orientation."""

import pytest
import torch

from prune_lit.models import PRESETS, arch_spec, get_weight, load_model, set_weight
from prune_lit.models.arch import num_layers


@pytest.mark.parametrize("name, family, out_dim, in_dim", [("tiny-gpt2", "gpt2", 64, 256), ("tiny-llama", "llama", 64, 128)])
def test_tiny_presets_expose_mlp_out_in_math_orientation(name, family, out_dim, in_dim):
    lm = load_model(name)
    spec = arch_spec(lm.model)
    assert spec.family == family and num_layers(lm.model) == 4
    w = get_weight(lm.model, spec.mlp_out_name(1) + ".weight")
    assert w.shape == (out_dim, in_dim)
    # [out, in] means W @ key gives the module's output: check against the module itself (bias aside).
    module = lm.model.get_submodule(spec.mlp_out_name(1))
    key = torch.randn(3, in_dim)
    bias = getattr(module, "bias", None)
    expected = module(key) - (bias if bias is not None else 0)
    torch.testing.assert_close(key @ w.T, expected, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token is not None


def test_set_weight_round_trips_and_rejects_wrong_shape():
    lm = load_model("tiny-gpt2")
    name = arch_spec(lm.model).mlp_out_name(0) + ".weight"
    w = get_weight(lm.model, name).clone()
    set_weight(lm.model, name, w + 1.0)
    torch.testing.assert_close(get_weight(lm.model, name), w + 1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        set_weight(lm.model, name, w.T)


def test_tiny_models_are_seeded():
    a = get_weight(load_model("tiny-llama", seed=3).model, "model.layers.0.mlp.down_proj.weight")
    b = get_weight(load_model("tiny-llama", seed=3).model, "model.layers.0.mlp.down_proj.weight")
    assert torch.equal(a, b)


def test_unknown_model_lists_presets():
    with pytest.raises(ValueError) as err:
        load_model("no-such-model")
    for preset in PRESETS:
        assert preset in str(err.value)


@pytest.mark.slow
def test_real_smollm2_knows_the_capital_of_france():
    lm = load_model("smollm2-135m")
    assert arch_spec(lm.model).family == "llama" and num_layers(lm.model) == 30
    inputs = lm.tokenizer("The capital of France is", return_tensors="pt")
    out = lm.model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    completion = lm.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
    assert "Paris" in completion


def test_pad_batch_right_and_left():
    from prune_lit.models.batching import pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")
