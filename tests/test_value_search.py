"""The value search's formulas (weight decay, most-probable early stopping) and key averaging, pinned by hand."""

from __future__ import annotations

import pytest
import torch

from prune_lit.data.requests import EditRequest
from prune_lit.editors import locate
from prune_lit.editors.locate import (
    average_template_keys,
    compute_keys,
    generate_context_templates,
    hooked,
    optimise_target,
    subject_last_token,
    target_token_ids,
    targets_are_top1,
    value_weight_decay,
)
from prune_lit.models import load_model
from prune_lit.models.arch import get_module
from prune_lit.models.batching import pad_batch, pad_token_id

PROMPT, SUBJECT = "The city that holds the Eiffel Tower", "Eiffel Tower"
MODULE = "model.layers.1.mlp.down_proj"
SEARCH = dict(lr=0.5, weight_decay=1e-3, clamp_norm_factor=10.0, kl_factor=0.0625, cache_lower_layers=False)


def test_weight_decay_forms_by_hand():
    delta = torch.tensor([3.0, 4.0], requires_grad=True)  # ‖δ‖ = 5
    v_norm = torch.tensor(2.0)
    # reference (kmeng01/rome compute_v): λ‖δ‖/‖v_init‖² = 0.5 · 5 / 4
    ref = value_weight_decay(delta, v_norm, 0.5, "norm")
    assert float(ref.detach()) == pytest.approx(0.625)
    ref.backward()  # gradient λ δ/‖δ‖ / ‖v‖²: constant length, whatever ‖δ‖
    torch.testing.assert_close(delta.grad, torch.tensor([0.075, 0.1]))
    assert float(value_weight_decay(delta.detach(), v_norm, 0.5, "squared")) == pytest.approx(0.5 * 25 / 4)
    assert value_weight_decay(delta, v_norm, 0.5) == ref  # "norm" is the default
    with pytest.raises(ValueError, match="weight decay form"):
        value_weight_decay(delta, v_norm, 0.5, "l1")


def test_targets_are_top1_needs_every_token_on_every_prompt():
    tgt = torch.tensor([2, 0])
    logits = torch.full((3, 2, 4), -1.0)
    logits[:, 0, 2] = 1.0
    logits[:, 1, 0] = 1.0
    assert targets_are_top1(logits, tgt)
    logits[1, 1, 3] = 2.0  # prompt 1's second token now prefers another token
    assert not targets_are_top1(logits, tgt)
    logits[1, 1, 3] = 0.5  # most probable again, though not by much
    assert targets_are_top1(logits.log_softmax(-1), tgt)
    with pytest.raises(ValueError, match="T=2"):
        targets_are_top1(logits[:, :1], tgt)


def test_key_averaging_by_hand():
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 4.0]), torch.tensor([8.0, 8.0])
    keys = torch.stack([a, b, c])[None]  # [1 request, 3 templates ("{}" first), d=2]
    # kmeng01/memit compute_ks: mean within each group ([{}], [generated...]), then over the groups
    torch.testing.assert_close(average_template_keys(keys, "plain_half")[0], 0.5 * a + 0.25 * b + 0.25 * c)
    torch.testing.assert_close(average_template_keys(keys, "uniform")[0], (a + b + c) / 3)
    with pytest.raises(ValueError, match="averaging"):
        average_template_keys(keys, "median")


@pytest.fixture(scope="module")
def tiny():
    lm = load_model("tiny-llama")
    return lm.model, lm.tokenizer, generate_context_templates(lm.model, lm.tokenizer, [[5, 3]])


def test_compute_keys_averaging_on_the_model(tiny):
    model, tok, templates = tiny
    reqs = [EditRequest(0, PROMPT, SUBJECT, "Rome"), EditRequest(1, "Where is the Louvre", "Louvre", "Rome")]
    per = compute_keys(model, tok, MODULE, reqs, templates, per_template=True)
    assert per.shape[:2] == (2, len(templates)) and per.dim() == 3
    torch.testing.assert_close(compute_keys(model, tok, MODULE, reqs, templates), per.mean(1))  # default: uniform
    half = compute_keys(model, tok, MODULE, reqs, templates, averaging="plain_half")
    torch.testing.assert_close(half, 0.5 * per[:, 0] + 0.5 * per[:, 1:].mean(1))
    with pytest.raises(ValueError, match="bare prompt"):
        compute_keys(model, tok, MODULE, reqs, templates[1:], averaging="plain_half")


def _targets_top1_with_delta(model, tok, templates, request, delta) -> bool:
    """Forward every template prompt + target[:-1] with δ added at the subject's last token; all targets top-1?"""
    tgt = target_token_ids(tok, request.target_new)
    seqs, pos, starts = [], [], []
    for t in templates:
        ids, p = subject_last_token(tok, t, request)
        seqs.append(ids + tgt[:-1])
        pos.append(p)
        starts.append(len(ids))
    ids, mask = pad_batch(seqs, pad_token_id(tok))

    def hook(_m, _i, out):
        out = out.clone()
        out[torch.arange(len(seqs)), torch.tensor(pos)] += delta
        return out

    with torch.no_grad(), hooked(get_module(model, MODULE), hook):
        logits = model(input_ids=ids, attention_mask=mask).logits
    preds = torch.stack([logits[i, s - 1 : s - 1 + len(tgt)].argmax(-1) for i, s in enumerate(starts)])
    return bool((preds == torch.tensor(tgt)).all())


def test_mpes_stops_at_the_first_step_where_every_template_prefers_the_target(tiny):
    model, tok, templates = tiny
    request = EditRequest(0, PROMPT, SUBJECT, "Rome")
    full = optimise_target(model, tok, MODULE, request, templates, num_steps=25, early_stop_loss=0.0, mpes=False, **SEARCH)
    mpes = optimise_target(model, tok, MODULE, request, templates, num_steps=25, early_stop_loss=0.0, mpes=True, **SEARCH)
    assert 0 < mpes.steps < full.steps == 24
    assert _targets_top1_with_delta(model, tok, templates, request, mpes.delta)
    # one step fewer (same deterministic search) has not reached it yet: it stopped at the first such step
    before = optimise_target(model, tok, MODULE, request, templates, num_steps=mpes.steps, early_stop_loss=0.0, mpes=False, **SEARCH)
    assert before.steps == mpes.steps - 1
    assert not _targets_top1_with_delta(model, tok, templates, request, before.delta)


def test_mpes_checks_every_template_prompt_and_is_off_by_default(tiny, monkeypatch):
    model, tok, templates = tiny
    request = EditRequest(0, PROMPT, SUBJECT, "New York City")  # a multi-token target
    calls: list[tuple[int, ...]] = []

    def fake(logits, target_ids):
        calls.append(tuple(logits.shape[:2]))
        return len(calls) == 3  # "reached" at the third check

    monkeypatch.setattr(locate, "targets_are_top1", fake)
    res = optimise_target(model, tok, MODULE, request, templates, num_steps=10, early_stop_loss=0.0, mpes=True, **SEARCH)
    n_tgt = len(target_token_ids(tok, "New York City"))
    assert n_tgt > 1 and calls == [(len(templates), n_tgt)] * 3 and res.steps == 2
    calls.clear()
    assert optimise_target(model, tok, MODULE, request, templates, num_steps=4, early_stop_loss=0.0, **SEARCH).steps == 3
    assert calls == []


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_prefix_cache_gives_the_same_search(name):
    """Forwarding only the tokens from the subject's last token on (the rest from a KV cache) changes nothing."""
    from prune_lit.models.arch import arch_spec

    lm = load_model(name)
    model, tok = lm.model, lm.tokenizer
    module = arch_spec(model).mlp_out_name(1)
    templates = generate_context_templates(model, tok, [[5, 3]])
    # subject at the end / at the start of the prompt (single-token subject: position 0 in the bare prompt)
    for request in (EditRequest(0, PROMPT, SUBJECT, "New York City"), EditRequest(1, "Paris is the capital of", "Paris", "Rome")):
        kw = dict(num_steps=6, early_stop_loss=0.0, **{**SEARCH, "cache_lower_layers": True})
        full = optimise_target(model, tok, module, request, templates, **kw)
        n_blocks = len(list(model.modules()))
        for lower in (False, True):  # the suffix's blocks below the edited one: every step / once
            cached = optimise_target(model, tok, module, request, templates, prefix_cache=True, **{**kw, "cache_lower_layers": lower})
            assert cached.steps == full.steps == 5 and full.delta.norm() > 0
            torch.testing.assert_close(cached.delta, full.delta, rtol=1e-4, atol=1e-5)
            assert cached.loss == pytest.approx(full.loss, rel=1e-5)
            assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
            assert len(list(model.modules())) == n_blocks  # the block list is whole again


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_v_init_is_the_unedited_output_at_the_subjects_last_token(tiny, prefix_cache):
    """v_init is read in the first search forward (δ = 0, as the reference compute_v does): it must equal the
    module's output for the bare prompt alone."""
    model, tok, templates = tiny
    request = EditRequest(0, PROMPT, SUBJECT, "Rome")
    res = optimise_target(model, tok, MODULE, request, templates, num_steps=3, prefix_cache=prefix_cache, **SEARCH)
    ids, p = subject_last_token(tok, "{}", request)
    seen = []
    with torch.no_grad(), hooked(get_module(model, MODULE), lambda _m, _i, out: seen.append(out[0, p].clone())):
        model(input_ids=torch.tensor([ids]))
    torch.testing.assert_close(res.v_init, seen[0], rtol=1e-5, atol=1e-6)
    assert res.delta.norm() > 0


def test_a_search_without_steps_is_refused(tiny):
    model, tok, templates = tiny
    with pytest.raises(ValueError, match="num_steps"):
        optimise_target(model, tok, MODULE, EditRequest(0, PROMPT, SUBJECT, "Rome"), templates, num_steps=0, **SEARCH)
