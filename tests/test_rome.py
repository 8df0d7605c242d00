"""ROME: the rank-one closed form, edits on the tiny models, safety (NaN, hooks, grads), presets."""

from __future__ import annotations

import math
import re

import pytest
import torch

from prune_lit.data.requests import EditRequest
from prune_lit.editors import MEMITEditor, ROMEEditor, rome_update
from prune_lit.editors.hparams import HPARAMS_DIR, MEMITHParams, ROMEHParams, load_hparams
from prune_lit.editors.locate import subject_last_token, target_token_ids
from prune_lit.models import load_model
from prune_lit.models.arch import get_weight

# Tiny random models barely move information between positions, so the tiny-model prompts end with
# the subject: the edited MLP output then sits at the position that predicts the next token.
TINY_PROMPT = "The city that holds the Eiffel Tower"
TINY_SUBJECT = "Eiffel Tower"


def top1(model, tok, prompt: str) -> int:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return int(model(ids).logits[0, -1].argmax())


def pick_target(tok, current: int, candidates=("Rome", "London", "Berlin", "Tokyo")) -> str:
    for c in candidates:
        if target_token_ids(tok, c)[0] != current:
            return c
    raise AssertionError("every candidate is already the prediction")


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory) -> str:
    """One key-statistics cache for the module: each tiny model's C is computed once."""
    return str(tmp_path_factory.mktemp("stats"))


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_rome_update_writes_value_at_key_and_nothing_C_orthogonal():
    torch.manual_seed(0)
    d_out, d_in = 6, 9
    W = torch.randn(d_out, d_in, dtype=torch.float64)
    A = torch.randn(d_in, 50, dtype=torch.float64)
    C = A @ A.T / 50  # SPD second moment
    C_inv = torch.linalg.inv(C)
    k, v = torch.randn(d_in, dtype=torch.float64), torch.randn(d_out, dtype=torch.float64)
    dW = rome_update(W, C_inv, k, v)
    torch.testing.assert_close((W + dW) @ k, v)
    assert torch.linalg.matrix_rank(dW) == 1
    # Keys x with (C⁻¹k)ᵀ x = 0 are untouched.
    u = C_inv @ k
    x = torch.randn(d_in, dtype=torch.float64)
    x = x - (u @ x) / (u @ u) * u
    torch.testing.assert_close(dW @ x, torch.zeros(d_out, dtype=torch.float64), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="shapes"):
        rome_update(W, C_inv, v, k)


@pytest.mark.parametrize(("name", "v_autocast"), [("tiny-gpt2", "float32"), ("tiny-llama", "float32"), ("tiny-llama", "bfloat16")])
def test_rome_edit_flips_top1_and_leaves_model_clean(name, v_autocast, stats_dir):
    lm = load_model(name)
    model, tok = lm.model, lm.tokenizer
    target = pick_target(tok, top1(model, tok, TINY_PROMPT))
    editor = ROMEEditor(stats_dir=stats_dir, v_autocast=v_autocast)
    editor.prepare(model, tok, name, None)
    (wname,) = editor.weight_names(model)
    assert wname.endswith(".weight") and ".1." in wname  # tiny default: layer 1
    before = get_weight(model, wname).clone()
    request = EditRequest("t0", TINY_PROMPT, TINY_SUBJECT, target, "Paris")
    with torch.no_grad():  # Lightning's test loop runs under no_grad: the editor must cope
        result = editor.edit(model, tok, [request])
    assert result.applied
    assert top1(model, tok, TINY_PROMPT) == target_token_ids(tok, target)[0]
    torch.testing.assert_close(get_weight(model, wname) - before, result.deltas[wname], rtol=1e-5, atol=1e-6)
    assert set(result.deltas) == {wname}
    assert result.stats.seconds > 0 and result.stats.delta_norm > 0 and math.isfinite(result.stats.loss)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast never casts the weights themselves
    assert no_hooks(model)


def test_rome_anchor_formulas_by_hand_float64():
    """update_anchor: the reference solves at the bare prompt's key, the paper at the template mean."""
    torch.manual_seed(1)
    d_out, d_in, T = 5, 7, 4
    W = torch.randn(d_out, d_in, dtype=torch.float64)
    A = torch.randn(d_in, 30, dtype=torch.float64)
    C_inv = torch.linalg.inv(A @ A.T / 30)
    keys = torch.randn(T, d_in, dtype=torch.float64)  # keys[0]: the bare prompt "{}"
    k_plain, k_mean = keys[0], keys.mean(0)
    delta = torch.randn(d_out, dtype=torch.float64)
    u = C_inv @ k_mean
    # kmeng01/rome compute_v: right = (target − W k_plain) / (k_plainᵀ u) with target = W k_plain + δ
    prompt = rome_update(W, C_inv, k_mean, W @ k_plain + delta, k_anchor=k_plain)
    torch.testing.assert_close(prompt, torch.outer(delta, u) / (k_plain @ u))
    torch.testing.assert_close((W + prompt) @ k_plain, W @ k_plain + delta)  # all of δ lands on the edit prompt
    # the paper / MEMIT convention: v* = W k̄ + δ at k̄ (the default of rome_update without k_anchor)
    mean = rome_update(W, C_inv, k_mean, W @ k_mean + delta)
    torch.testing.assert_close(mean, torch.outer(delta, u) / (k_mean @ u))
    torch.testing.assert_close((W + mean) @ k_mean, W @ k_mean + delta)
    # same direction, scales differ by the ratio of the two denominators
    torch.testing.assert_close(prompt * (k_plain @ u), mean * (k_mean @ u))


@pytest.mark.parametrize("anchor", ["prompt", "mean"])
def test_rome_editor_puts_delta_at_its_anchor(anchor, stats_dir):
    """On the model: ΔW k_a equals the searched shift δ, with k_a the bare prompt's key or the template mean."""
    from prune_lit.editors.locate import compute_keys

    lm = load_model("tiny-llama")
    model, tok = lm.model, lm.tokenizer
    editor = ROMEEditor(stats_dir=stats_dir, v_num_grad_steps=5, update_anchor=anchor)
    editor.prepare(model, tok, "tiny-llama", None)
    assert editor.templates[0] == "{}"
    request = EditRequest(0, TINY_PROMPT, TINY_SUBJECT, "Rome")
    module = "model.layers.1.mlp.down_proj"
    keys = compute_keys(model, tok, module, [request], editor.templates, per_template=True)[0]
    W = get_weight(model, module + ".weight").clone()
    name, dW, res = editor._one_delta(model, tok, request)
    k_a = keys[0] if anchor == "prompt" else keys.mean(0)
    assert res.delta.norm() > 0
    torch.testing.assert_close(dW @ k_a, res.delta, rtol=1e-4, atol=1e-5)
    assert torch.linalg.matrix_rank(dW.double(), rtol=1e-6) == 1
    u = editor.C_inv[1] @ keys.mean(0)  # the direction is C⁻¹ k̄ either way
    torch.testing.assert_close(dW @ u / (u @ u), res.delta * (u @ u) / (k_a @ u) / (u @ u), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(get_weight(model, module + ".weight"), W)  # computing applies nothing


def test_nan_update_is_rejected_and_weights_unchanged(stats_dir):
    lm = load_model("tiny-gpt2")
    model, tok = lm.model, lm.tokenizer
    editor = ROMEEditor(stats_dir=stats_dir, v_num_grad_steps=3)
    editor.prepare(model, tok, "tiny-gpt2", None)
    layer = editor.hp.layers[0]
    editor.C_inv[layer] = torch.full_like(editor.C_inv[layer], float("nan"))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    result = editor.edit(model, tok, [EditRequest(0, TINY_PROMPT, TINY_SUBJECT, "Rome")])
    assert not result.applied
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    assert no_hooks(model)


def test_memit_nan_update_is_rejected(stats_dir):
    lm = load_model("tiny-llama")
    model, tok = lm.model, lm.tokenizer
    editor = MEMITEditor(stats_dir=stats_dir, v_num_grad_steps=3)
    editor.prepare(model, tok, "tiny-llama", None)
    editor.C[editor.hp.layers[-1]] = torch.full_like(editor.C[editor.hp.layers[-1]], float("nan"))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    result = editor.edit(model, tok, [EditRequest(0, TINY_PROMPT, TINY_SUBJECT, "Rome")])
    assert not result.applied
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_subject_not_in_prompt_gives_clear_error():
    with pytest.raises(ValueError, match=r"case 7: subject 'Louvre' does not occur"):
        EditRequest(7, TINY_PROMPT, "Louvre", "Rome")
    # A request mutated past validation is still caught where the editor locates the subject.
    req = EditRequest(8, TINY_PROMPT, TINY_SUBJECT, "Rome")
    object.__setattr__(req, "subject", "Louvre")
    tok = load_model("tiny-gpt2").tokenizer
    with pytest.raises(ValueError, match=r"case 8: subject 'Louvre' does not occur"):
        subject_last_token(tok, "{}", req)


def test_subject_last_token_uses_character_offsets():
    tok = load_model("tiny-gpt2").tokenizer
    req = EditRequest(0, "The Eiffel Tower is located in", "Eiffel Tower", "Rome")
    ids, pos = subject_last_token(tok, "Some prefix. {}", req)
    assert tok.decode(ids[: pos + 1]).endswith("Eiffel Tower")
    assert not tok.decode(ids[: pos]).endswith("Tower")


def test_edit_before_prepare_is_an_error():
    lm = load_model("tiny-gpt2")
    with pytest.raises(RuntimeError, match="prepare"):
        ROMEEditor().edit(lm.model, lm.tokenizer, [EditRequest(0, TINY_PROMPT, TINY_SUBJECT, "Rome")])


def test_presets_load_with_the_published_layers():
    assert load_hparams(ROMEHParams, "rome", None, "gpt2-xl").layers == [17]
    assert load_hparams(MEMITHParams, "memit", None, "gpt2-xl").layers == [13, 14, 15, 16, 17]
    assert load_hparams(MEMITHParams, "memit", None, "llama3-8b").layers == [4, 5, 6, 7, 8]
    hp = load_hparams(ROMEHParams, "rome", None, "smollm2-135m", v_lr=0.1)
    assert hp.v_lr == 0.1 and len(hp.layers) == 1
    assert load_hparams(MEMITHParams, "memit", None, "smollm2-135m").mom2_update_weight > 0
    with pytest.raises(ValueError, match="unknown ROMEHParams keys"):
        load_hparams(ROMEHParams, "rome", None, "gpt2-xl", not_a_key=1)
    with pytest.raises(ValueError, match="exactly one layer"):
        load_hparams(ROMEHParams, "rome", None, "gpt2-xl", layers=[1, 2])
    with pytest.raises(ValueError, match="v_autocast must be one of"):
        load_hparams(ROMEHParams, "rome", None, "gpt2-xl", v_autocast="int8")
    with pytest.raises(ValueError, match="update_anchor must be one of"):
        load_hparams(ROMEHParams, "rome", None, "gpt2-xl", update_anchor="subject")
    with pytest.raises(ValueError, match="v_weight_decay_form must be one of"):
        load_hparams(ROMEHParams, "rome", None, "gpt2-xl", v_weight_decay_form="l1")
    with pytest.raises(ValueError, match="key_averaging must be one of"):
        load_hparams(MEMITHParams, "memit", None, "gpt2-xl", key_averaging="median")
    # the reference's forms are the defaults of every preset
    for algo, cls in (("rome", ROMEHParams), ("memit", MEMITHParams)):
        for f in sorted((HPARAMS_DIR / algo).glob("*.yaml")):
            hp = load_hparams(cls, algo, str(f), f.stem)
            assert hp.v_weight_decay_form == "norm", f
            assert getattr(hp, "update_anchor", "prompt") == "prompt" and getattr(hp, "key_averaging", "plain_half") == "plain_half", f
    with pytest.raises(FileNotFoundError, match="no rome preset"):
        load_hparams(ROMEHParams, "rome", None, "no-such-model")


def test_every_preset_key_is_commented():
    files = sorted(HPARAMS_DIR.glob("rome/*.yaml")) + sorted(HPARAMS_DIR.glob("memit/*.yaml"))
    assert len(files) >= 6
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.match(r"^\s*[A-Za-z_]+\s*:", line):
                assert "#" in line, f"{f.name}:{i} has no comment: {line!r}"
