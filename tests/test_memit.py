"""MEMIT: the normal-equation solve and a batched edit on a tiny model."""

from __future__ import annotations

import torch

from prune_lit.data.requests import EditRequest
from prune_lit.editors import MEMITEditor, memit_update
from prune_lit.editors.locate import target_token_ids
from prune_lit.models import load_model
from prune_lit.models.arch import get_weight


def test_memit_update_is_the_regularised_least_squares_solution():
    torch.manual_seed(0)
    d_out, d_in, n, lam = 5, 8, 3, 0.7
    W = torch.randn(d_out, d_in, dtype=torch.float64)
    K = torch.randn(d_in, n, dtype=torch.float64)
    R = torch.randn(d_out, n, dtype=torch.float64)
    A = torch.randn(d_in, 40, dtype=torch.float64)
    C = A @ A.T / 40
    dW = memit_update(W, K, R, C, lam)
    # Definition: argmin_X ‖X K − R‖² + λ tr(X C Xᵀ). With C = L Lᵀ this is ordinary least squares on
    # the stacked system X [K, √λ L] ≈ [R, 0].
    L = torch.linalg.cholesky(C)
    lhs = torch.cat([K, lam**0.5 * L], dim=1)  # [d_in, n + d_in]
    rhs = torch.cat([R, torch.zeros(d_out, d_in, dtype=torch.float64)], dim=1)
    expected = torch.linalg.lstsq(lhs.T, rhs.T).solution.T
    torch.testing.assert_close(dW, expected)
    # Normal equations: ΔW (λC + K Kᵀ) = R Kᵀ.
    torch.testing.assert_close(dW @ (lam * C + K @ K.T), R @ K.T)
    # λ → 0 with n ≥ d_in would interpolate; with λ → ∞ the update vanishes.
    assert memit_update(W, K, R, C, 1e9).abs().max() < 1e-6
    assert memit_update(W.float(), K.float(), R.float(), C, lam).dtype == torch.float32


def test_memit_edits_a_batch_of_three_and_each_flips(tmp_path):
    lm = load_model("tiny-llama")
    model, tok = lm.model, lm.tokenizer
    prompts = [
        ("The city that holds the Eiffel Tower", "Eiffel Tower", "Rome"),
        ("The language spoken by Danielle Darrieux", "Danielle Darrieux", "English"),
        ("The company that makes the iPhone", "iPhone", "Google"),
    ]
    requests = [EditRequest(i, p, s, t) for i, (p, s, t) in enumerate(prompts)]

    def top1(prompt: str) -> int:
        with torch.no_grad():
            return int(model(tok(prompt, return_tensors="pt").input_ids).logits[0, -1].argmax())

    for r in requests:  # the targets are not what the random model already says
        assert top1(r.prompt) != target_token_ids(tok, r.target_new)[0]
    editor = MEMITEditor(stats_dir=str(tmp_path))
    editor.prepare(model, tok, "tiny-llama", None)
    names = editor.weight_names(model)
    assert names == [f"model.layers.{i}.mlp.down_proj.weight" for i in editor.hp.layers] and len(names) >= 2
    before = {n: get_weight(model, n).clone() for n in names}
    with torch.no_grad():
        result = editor.edit(model, tok, requests)
    assert result.applied and result.stats.n_requests == 3
    for r in requests:
        assert top1(r.prompt) == target_token_ids(tok, r.target_new)[0], r.prompt
    for n in names:  # every layer got its share, and the returned deltas are what was added
        assert result.deltas[n].norm() > 0
        torch.testing.assert_close(get_weight(model, n) - before[n], result.deltas[n], rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_memit_averages_keys_as_configured(tmp_path, monkeypatch):
    """The editor's keys: MEMIT's ½ bare prompt + ½ generated templates by default, uniform as an option."""
    from prune_lit.editors import memit as memit_mod

    lm = load_model("tiny-llama")
    model, tok = lm.model, lm.tokenizer
    seen: list[str] = []
    real = memit_mod.compute_keys

    def spy(*args, **kwargs):
        seen.append(kwargs.get("averaging", "uniform"))
        return real(*args, **kwargs)

    monkeypatch.setattr(memit_mod, "compute_keys", spy)
    request = EditRequest(0, "The city that holds the Eiffel Tower", "Eiffel Tower", "Rome")
    for averaging in ("plain_half", "uniform"):
        overrides = {} if averaging == "plain_half" else {"key_averaging": "uniform"}
        editor = MEMITEditor(stats_dir=str(tmp_path), v_num_grad_steps=2, **overrides)
        editor.prepare(model, tok, "tiny-llama", None)
        seen.clear()
        editor.compute_deltas(model, tok, [request])
        assert seen == [averaging] * len(editor.hp.layers)
