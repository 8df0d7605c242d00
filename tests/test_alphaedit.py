"""AlphaEdit: the null-space projector, the projected solve, the editor's run state (K_pK_pᵀ) on tiny models."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from prune_lit.data.requests import EditRequest
from prune_lit.editors import AlphaEditEditor, AlphaEditHParams, alphaedit_update, memit_update, null_space_projector
from prune_lit.editors import alphaedit as alphaedit_module
from prune_lit.editors.hparams import HPARAMS_DIR, load_hparams
from prune_lit.editors.locate import compute_keys, target_token_ids
from prune_lit.models import load_model
from prune_lit.models.arch import arch_spec, get_weight

# Tiny random models barely move information between positions, so prompts end with the subject.
TINY = [
    ("The city that holds the Eiffel Tower", "Eiffel Tower", "Rome"),
    ("The language spoken by Danielle Darrieux", "Danielle Darrieux", "English"),
    ("The company that makes the iPhone", "iPhone", "Google"),
]


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("stats"))


def requests_(offset: int = 0) -> list[EditRequest]:
    return [EditRequest(offset + i, p, s, t) for i, (p, s, t) in enumerate(TINY)]


def top1(model, tok, prompt: str) -> int:
    with torch.no_grad():
        return int(model(tok(prompt, return_tensors="pt").input_ids).logits[0, -1].argmax())


def low_rank_moment(d: int, big: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """C ``[d, d]`` with ``big`` large eigenvalues (≥ 1) and the rest tiny (1e-4), and the big directions ``[d, big]``."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eig = torch.full((d,), 1e-4, dtype=torch.float64)
    eig[:big] = torch.linspace(1.0, 5.0, big, dtype=torch.float64)
    return Q @ torch.diag(eig) @ Q.T, Q[:, :big]


# --- pure math ---------------------------------------------------------------------------------
def test_null_space_projector_is_an_orthogonal_projector_onto_the_small_eigen_directions():
    C, big_dirs = low_rank_moment(12, 4)
    P, n_kept = null_space_projector(C, 1e-2)
    assert n_kept == 8 and P.dtype == torch.float64
    torch.testing.assert_close(P @ P, P)
    torch.testing.assert_close(P, P.T)
    assert abs(float(torch.trace(P)) - 8) < 1e-9
    assert (P @ big_dirs).norm() < 1e-10  # the stored (large-variance) directions are projected out
    # relative mode is scale-free; absolute is not
    P_rel, n_rel = null_space_projector(100 * C, 1e-2 / 5.0, relative=True)
    assert n_rel == 8 and torch.allclose(P_rel, P)
    assert null_space_projector(1000 * C, 1e-2)[1] == 0 and null_space_projector(1e-3 * C, 1e-2)[1] == 12
    with pytest.raises(ValueError, match="square"):
        null_space_projector(torch.zeros(3, 4), 1e-2)


def test_update_annihilates_the_preserved_keys_and_equals_its_formula():
    torch.manual_seed(0)
    d_out, d_in, n, lam = 6, 12, 3, 10.0
    C, big_dirs = low_rank_moment(d_in, 4)
    P, _ = null_space_projector(C, 1e-2)
    W = torch.randn(d_out, d_in, dtype=torch.float64)
    K = 3 * torch.randn(d_in, n, dtype=torch.float64)
    R = torch.randn(d_out, n, dtype=torch.float64)
    Kp = torch.randn(d_in, 5, dtype=torch.float64)
    dW = alphaedit_update(W, K, R, P, Kp @ Kp.T, lam)
    # ΔW = R Kᵀ P ((K_pK_pᵀ + KKᵀ) P + λI)⁻¹, and it already lies in P's row space (ΔW P = ΔW)
    expected = R @ K.T @ P @ torch.linalg.inv((Kp @ Kp.T + K @ K.T) @ P + lam * torch.eye(d_in, dtype=torch.float64))
    torch.testing.assert_close(dW, expected)
    torch.testing.assert_close(dW @ P, dW)
    # any key in the span P removes (what the model already stores) is left untouched
    k0 = big_dirs @ torch.randn(4, 7, dtype=torch.float64)  # [d_in, 7]
    assert dW.norm() > 1e-3
    assert ((dW @ k0).norm(dim=0) / (dW.norm() * k0.norm(dim=0))).max() < 1e-10
    # the earlier edits' keys are protected softly: more so than without K_p
    dW_free = alphaedit_update(W, K, R, P, torch.zeros(d_in, d_in, dtype=torch.float64), lam)
    assert (dW @ Kp).norm() < (dW_free @ Kp).norm()
    assert alphaedit_update(W.float(), K.float(), R.float(), P, Kp @ Kp.T, lam).dtype == torch.float32
    with pytest.raises(ValueError, match="alphaedit_update shapes"):
        alphaedit_update(W, K, R, P[:5, :5], Kp @ Kp.T, lam)


def test_with_identity_projector_and_no_history_it_is_memits_closed_form():
    torch.manual_seed(1)
    d_out, d_in, n, lam = 5, 8, 3, 10.0
    W = torch.randn(d_out, d_in, dtype=torch.float64)
    K = torch.randn(d_in, n, dtype=torch.float64)
    R = torch.randn(d_out, n, dtype=torch.float64)
    eye, zeros = torch.eye(d_in, dtype=torch.float64), torch.zeros(d_in, d_in, dtype=torch.float64)
    torch.testing.assert_close(alphaedit_update(W, K, R, eye, zeros, lam), memit_update(W, K, R, eye, lam))
    # and a different λ is a different update (the comparison above is not vacuous)
    assert not torch.allclose(alphaedit_update(W, K, R, eye, zeros, lam), memit_update(W, K, R, eye, 2 * lam))


# --- the editor on a tiny model ------------------------------------------------------------------
def prepared(stats_dir: str, **overrides):
    lm = load_model("tiny-llama")
    editor = AlphaEditEditor(stats_dir=stats_dir, **overrides)
    editor.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    return lm.model, lm.tokenizer, editor


def test_batch_edit_flips_answers_and_accumulates_the_applied_keys(stats_dir):
    model, tok, editor = prepared(stats_dir)
    layers = editor.hp.layers
    assert len(layers) >= 2 and all(0 < editor.n_kept[layer] < editor.P[layer].shape[0] for layer in layers)
    reqs = requests_()
    for r in reqs:
        assert top1(model, tok, r.prompt) != target_token_ids(tok, r.target_new)[0]
    names = editor.weight_names(model)
    before = {n: get_weight(model, n).clone() for n in names}
    with torch.no_grad():
        result = editor.edit(model, tok, reqs)
    assert result.applied and result.stats.n_requests == 3
    for r in reqs:
        assert top1(model, tok, r.prompt) == target_token_ids(tok, r.target_new)[0], r.prompt
    for n in names:
        d = result.deltas[n]
        assert torch.isfinite(d).all() and d.norm() > 0
        torch.testing.assert_close(get_weight(model, n) - before[n], d, rtol=1e-5, atol=1e-6)
        layer = int(n.split(".")[2])
        torch.testing.assert_close(d.double() @ editor.P[layer], d.double(), rtol=1e-4, atol=1e-6)  # ΔW acts only in the null space
    # K_pK_pᵀ now holds exactly the keys of this step, which equal the keys on the edited model
    assert editor.num_keys == 3
    spec = arch_spec(model)
    for layer in layers:
        K = compute_keys(model, tok, spec.mlp_out_name(layer), reqs, editor.templates, averaging=editor.hp.key_averaging).double().T  # [d_in, 3]
        torch.testing.assert_close(editor.KpKp[layer], K @ K.T, rtol=1e-4, atol=1e-6)


def test_rejected_step_leaves_weights_and_history_unchanged(stats_dir, monkeypatch):
    model, tok, editor = prepared(stats_dir, v_num_grad_steps=3)
    with torch.no_grad():
        assert editor.edit(model, tok, requests_()[:1]).applied
    history = {layer: m.clone() for layer, m in editor.KpKp.items()}
    grown = editor.KpKp[editor.hp.layers[0]].trace()
    assert grown > 0
    real = alphaedit_module.alphaedit_update
    monkeypatch.setattr(alphaedit_module, "alphaedit_update", lambda *a, **k: torch.full_like(real(*a, **k), float("nan")))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        result = editor.edit(model, tok, requests_(10)[1:])
    assert not result.applied and result.stats.delta_norm == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    assert editor.num_keys == 1
    for layer, m in editor.KpKp.items():
        assert torch.equal(m, history[layer])
    # the next good step starts from the same history (the rejected step's keys were dropped)
    monkeypatch.setattr(alphaedit_module, "alphaedit_update", real)
    with torch.no_grad():
        assert editor.edit(model, tok, requests_(20)[1:2]).applied
    assert editor.num_keys == 2 and editor.KpKp[editor.hp.layers[0]].trace() > grown


def test_state_dict_round_trip_and_validation(stats_dir):
    model, tok, editor = prepared(stats_dir, v_num_grad_steps=3)
    with torch.no_grad():
        editor.edit(model, tok, requests_()[:2])
    state = editor.state_dict()
    assert state["num_keys"] == 2 and sorted(state["kpkp"]) == editor.hp.layers
    state["kpkp"][editor.hp.layers[0]].zero_()  # a copy: the editor's own state is untouched
    assert editor.KpKp[editor.hp.layers[0]].abs().sum() > 0
    state = editor.state_dict()

    # into a prepared editor, and into one loaded before prepare (checked there)
    _, _, fresh = prepared(stats_dir, v_num_grad_steps=3)
    fresh.load_state_dict(state)
    late = AlphaEditEditor(stats_dir=stats_dir, v_num_grad_steps=3)
    late.load_state_dict(state)
    late.prepare(model, tok, "tiny-llama", None)
    for ed in (fresh, late):
        assert ed.num_keys == 2
        for layer in editor.hp.layers:
            assert torch.equal(ed.KpKp[layer], editor.KpKp[layer])
    # the restored editor computes the same next update as the original one
    nxt = requests_(30)[2:]
    with torch.enable_grad():
        d1, _ = editor.compute_deltas(model, tok, nxt)
        d2, _ = fresh.compute_deltas(model, tok, nxt)
    for n in d1:
        torch.testing.assert_close(d1[n], d2[n])

    layers = editor.hp.layers
    d = editor.P[layers[0]].shape[0]
    with pytest.raises(ValueError, match="must have keys"):
        fresh.load_state_dict({"kpkp": state["kpkp"]})
    with pytest.raises(ValueError, match="edits layers"):
        fresh.load_state_dict({"kpkp": {layers[0]: torch.zeros(d, d)}, "num_keys": 0})
    with pytest.raises(ValueError, match=r"expected \(%d, %d\)" % (d, d)):
        fresh.load_state_dict({"kpkp": {layer: torch.zeros(d + 1, d + 1) for layer in layers}, "num_keys": 0})
    with pytest.raises(ValueError, match="square"):
        fresh.load_state_dict({"kpkp": {layer: torch.zeros(d, 2) for layer in layers}, "num_keys": 0})
    with pytest.raises(ValueError, match="non-negative int"):
        fresh.load_state_dict({"kpkp": state["kpkp"], "num_keys": -1})
    wrong = AlphaEditEditor(stats_dir=stats_dir, layers=[layers[0]])
    wrong.load_state_dict(state)
    with pytest.raises(ValueError, match="edits layers"):
        wrong.prepare(model, tok, "tiny-llama", None)


# --- hyperparameters -----------------------------------------------------------------------------
def test_presets_and_validation():
    hp = load_hparams(AlphaEditHParams, "alphaedit", None, "llama3-8b")
    assert hp.layers == [4, 5, 6, 7, 8] and hp.nullspace_threshold == 2e-2 and hp.L2 == 10
    assert hp.nullspace_threshold_mode == "absolute"
    assert load_hparams(AlphaEditHParams, "alphaedit", None, "gpt2-xl").layers == [13, 14, 15, 16, 17]
    smol = load_hparams(AlphaEditHParams, "alphaedit", None, "smollm2-135m")
    memit = load_hparams(alphaedit_module.MEMITHParams, "memit", None, "smollm2-135m")
    # MEMIT vs AlphaEdit on SmolLM2 differ only in the solve: every field they share has MEMIT's value
    solve_only = {"mom2_update_weight"}  # MEMIT's λ on C; the AlphaEdit solve does not read it
    shared = {f.name for f in dataclasses.fields(alphaedit_module.MEMITHParams)} - solve_only
    assert {f: getattr(smol, f) for f in shared} == {f: getattr(memit, f) for f in shared}
    with pytest.raises(ValueError, match="nullspace_threshold_mode"):
        load_hparams(AlphaEditHParams, "alphaedit", None, "llama3-8b", nullspace_threshold_mode="fraction")
    with pytest.raises(ValueError, match="positive"):
        load_hparams(AlphaEditHParams, "alphaedit", None, "llama3-8b", L2=0)


def test_every_preset_key_is_commented():
    files = sorted(HPARAMS_DIR.glob("alphaedit/*.yaml"))
    assert len(files) >= 3
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.match(r"^\s*[A-Za-z_0-9]+\s*:", line):
                assert "#" in line, f"{f.name}:{i} has no comment: {line!r}"


def test_cli_runs_alphaedit_with_prune_on_a_tiny_model(tmp_path):
    import json

    from prune_lit.cli_main import main

    main([
        "test", "--config", "configs/alphaedit_prune.yaml",
        "--model.init_args.model_name", "tiny-llama",
        "--model.init_args.downstream", "null",
        "--model.init_args.eval_at", "[2]",
        "--model.init_args.editor.init_args.overrides", "{v_num_grad_steps: 5}",
        "--data.init_args.num_edits", "4",
        "--data.init_args.batch_size", "2",
        "--model.init_args.checkpoint_dir", str(tmp_path / "ckpt"),  # not the repo's checkpoints/ (a rerun would be refused)
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ])
    run = next(tmp_path.glob("alphaedit_prune/version_*"))
    results = json.loads((run / "results.json").read_text())
    assert results["editor"] == "AlphaEditEditor" and results["num_edits"] == 4 and results["num_steps"] == 2
    assert results["num_rejected_steps"] == 0
    assert "SpectralRestraint" in results["callbacks"] and (run / "spectral.json").exists()
    assert [row["num_edits"] for row in results["history"]] == [2, 4]
