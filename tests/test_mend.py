"""MEND: gradient factors, hypernetwork, training, checkpoints and the editor (tiny models only)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from prune_lit.data.edit_datamodule import EditDataModule, collate_requests, load_edit_requests, with_borrowed_locality
from prune_lit.data.requests import EditRequest
from prune_lit.editors.mend import MENDCheckpointError, MENDEditor
from prune_lit.editors.mend_net import (
    IDMLP,
    GradientTransform,
    LowRankLinear,
    NetForm,
    RunningMeanStd,
    low_rank_layer,
    finetune_factors,
    lm_batch,
    masked_nll,
    outer_gradient,
    sequence_logprob,
)
from prune_lit.models import arch_spec, get_weight, load_model
from prune_lit.modules.mend_training import MENDTraining

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def requests() -> list[EditRequest]:
    return load_edit_requests("counterfact", "train", limit=120)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_factors_reproduce_the_true_weight_gradient(name, requests):
    lm = load_model(name)
    names = arch_spec(lm.model).mlp_weight_names(2) + arch_spec(lm.model).mlp_weight_names(3)
    batch = lm_batch(lm.tokenizer, [r.prompt for r in requests[:3]], [r.target_new for r in requests[:3]])
    loss, factors, _ = finetune_factors(lm.model, batch, names)

    params = dict(lm.model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    logits = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    true_loss = masked_nll(logits, batch.labels)
    grads = torch.autograd.grad(true_loss, [params[n] for n in names])
    torch.testing.assert_close(loss, true_loss.detach())
    for n, g in zip(names, grads):
        g = g.T if arch_spec(lm.model).transposed else g  # math orientation [out, in]
        assert g.abs().max() > 0
        torch.testing.assert_close(outer_gradient(*factors[n]), g, rtol=1e-4, atol=1e-6)


def test_idmlp_is_the_identity_at_init_and_running_stats_match_torch():
    torch.manual_seed(0)
    x = torch.randn(7, 24)
    mlp = IDMLP(24, rank=8, n_hidden=1, n_modes=3)
    for mode in range(3):
        torch.testing.assert_close(mlp(x, mode), x)
    stats = RunningMeanStd(24)
    chunks = [torch.randn(n, 24) * 3 + 1 for n in (1, 5, 9)]
    for c in chunks:
        stats.update(c)
    full = torch.cat(chunks)
    torch.testing.assert_close(stats.mean, full.mean(0))
    torch.testing.assert_close(stats.std(), full.std(0), rtol=1e-5, atol=1e-5)


def _layer_case() -> dict[str, torch.Tensor]:
    # x = [1, -2], A = [1, 1] (rank 1), B = [2, -1]ᵀ, bias = 0.5, scale = [2, 3], shift = [-1, 1]
    return {
        "x": torch.tensor([[1.0, -2.0]]), "a": torch.tensor([[1.0, 1.0]]), "b": torch.tensor([[2.0], [-1.0]]),
        "bias": torch.tensor([0.5, 0.5]), "scale": torch.tensor([2.0, 3.0]), "shift": torch.tensor([-1.0, 1.0]),
    }  # fmt: skip


def test_low_rank_layer_forward_by_hand():
    c = _layer_case()
    args = (c["x"], c["a"], c["b"], c["bias"], c["scale"], c["shift"])
    # reference: A x = -1, B A x = [-2, 1], + bias = [-1.5, 1.5], * scale = [-3, 4.5], + shift = [-4, 5.5],
    # relu = [0, 5.5], x + relu = [1, 3.5]
    torch.testing.assert_close(low_rank_layer(*args), torch.tensor([[1.0, 3.5]]))
    torch.testing.assert_close(low_rank_layer(*args, relu=False), torch.tensor([[-3.0, 3.5]]))
    # first form: x' = s x + t = [1, -5], A x' = -4, B A x' + bias = [-7.5, 4.5], x' + relu = [1, -0.5]
    torch.testing.assert_close(low_rank_layer(*args, modulate="input"), torch.tensor([[1.0, -0.5]]))
    torch.testing.assert_close(low_rank_layer(*args, relu=False, modulate="input"), torch.tensor([[-6.5, -0.5]]))
    # the module computes the same with mode 1 holding (scale, shift)
    layer = LowRankLinear(2, 1, relu=True, n_modes=2)
    with torch.no_grad():
        layer.a.copy_(c["a"]), layer.b.copy_(c["b"]), layer.bias.copy_(c["bias"])
        layer.mode_scale[1].copy_(c["scale"]), layer.mode_shift[1].copy_(c["shift"])
    torch.testing.assert_close(layer(c["x"], 1), torch.tensor([[1.0, 3.5]]))


def test_reference_form_defaults_and_gradient_reaches_b_at_init():
    torch.manual_seed(0)
    mlp = IDMLP(512, rank=64, n_hidden=1)
    assert NetForm() == NetForm(modulate="pre", relu_last=True, a_init="normal")
    assert all(layer.relu and layer.modulate == "pre" for layer in mlp.layers)  # ReLU on the last layer too
    assert 0.9 < mlp.layers[0].a.std().item() < 1.1  # A ~ N(0, 1), as the reference
    legacy = IDMLP(512, rank=64, n_hidden=1, form=NetForm.legacy())
    assert not legacy.layers[-1].relu and legacy.layers[0].a.std().item() < 0.1  # N(0, 1/512)
    # at init every pre-activation is exactly 0; clamp (not a 0-gradient relu) still lets B learn
    x = torch.randn(5, 512)
    (mlp(x) ** 2).sum().backward()
    assert mlp.layers[-1].b.grad.abs().max() > 0 and mlp.layers[0].b.grad.abs().max() > 0


def test_gradient_transform_skips_zero_rows_and_refuses_to_run_untrained():
    gt = GradientTransform(d_in=6, d_out=4, rank=3)
    u, d = torch.randn(5, 6), torch.randn(5, 4)
    d[1] = 0  # a padded position: no gradient
    gt.eval()
    with pytest.raises(RuntimeError, match="train it"):
        gt(u, d)
    gt.train()
    ut, dt = gt(u, d)
    assert ut.shape == (4, 6) and dt.shape == (4, 4) and gt.norm_u.count == 4


def test_input_z_clip_bounds_the_normalised_inputs_and_is_off_by_default():
    torch.manual_seed(0)
    gt = GradientTransform(d_in=6, d_out=4, rank=3)
    gt.train()
    gt(torch.randn(50, 6), torch.randn(50, 4))  # fit the running statistics
    gt.eval()
    u, d = torch.randn(5, 6), torch.randn(5, 4)
    u[0] *= 100  # a row far outside what the statistics saw
    plain = gt.normalized(u, d)
    assert gt.z_clip is None and plain.abs().max() > 50
    gt.z_clip = 3.0
    clipped = gt.normalized(u, d)
    assert clipped.abs().max() <= 3.0
    inside = plain.abs() <= 3.0
    torch.testing.assert_close(clipped[inside], plain[inside])  # rows inside the range are untouched
    ut, _ = gt(u, d)
    gt.z_clip = None
    assert not torch.allclose(ut, gt(u, d)[0])


def _edit_loss(module: MENDTraining, batches: list[list[EditRequest]]) -> float:
    module.eval()
    with torch.no_grad():
        losses = [module.edit_step(b)["edit_loss"].item() for b in batches]
    module.train()
    return sum(losses) / len(losses)


# Random tiny models can only be pushed ~1 nat by any MLP edit (even exact gradient descent on these
# layers floors near 9.7 nats), so the required drop is a share of that, larger where more is possible.
@pytest.mark.parametrize("name, margin", [("tiny-llama", 0.3), ("tiny-gpt2", 0.1)])
def test_training_lowers_the_post_edit_loss(name, margin, requests):
    torch.manual_seed(0)
    module = MENDTraining(model_name=name, rank=32, lr=1e-4, lr_lr=1e-3)  # reference form: A ~ N(0, 1)
    module.train()
    opt = module.configure_optimizers()
    train = [requests[i : i + 4] for i in range(0, 100, 4)]  # 25 steps
    held_out = [requests[i : i + 2] for i in range(100, 120, 2)]
    with torch.no_grad():
        module.edit_step(train[0])  # running statistics need rows before any eval-mode edit
    before = _edit_loss(module, held_out)
    for batch in train:
        loss = module.edit_step(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _edit_loss(module, held_out)
    assert after < before - margin, (before, after)
    assert not any(p.requires_grad for p in module.model.parameters())


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, requests) -> str:
    """A tiny-llama hypernetwork trained 4 steps by the Lightning Trainer, saved as a checkpoint."""
    root = tmp_path_factory.mktemp("mend")
    L.seed_everything(0)
    module = MENDTraining(model_name="tiny-llama", rank=16)
    loader = DataLoader(requests[:8], batch_size=2, collate_fn=collate_requests)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, train_dataloaders=loader)
    path = root / "mend.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def test_checkpoint_holds_only_the_hypernetwork(tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("hypernet.") for k in keys)
    assert ckpt["mend_meta"]["model_name"] == "tiny-llama"
    spec = arch_spec(load_model("tiny-llama").model)
    assert ckpt["mend_meta"]["inner_params"] == [n for i in (1, 2, 3) for n in spec.mlp_weight_names(i)]  # the last 3 layers
    # a fresh module restores it strictly (the base model's weights are simply not part of it)
    fresh = MENDTraining(model_name="tiny-llama", rank=16)
    fresh.load_state_dict(ckpt["state_dict"])
    torch.testing.assert_close(fresh.hypernet.edit_lrs, ckpt["state_dict"]["hypernet.edit_lrs"])


def test_edit_changes_only_the_inner_params(tiny_checkpoint, requests):
    lm = load_model("tiny-llama")
    editor = MENDEditor(tiny_checkpoint)
    editor.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    inner = set(editor.weight_names(lm.model))
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    result = editor.edit(lm.model, lm.tokenizer, requests[:1])
    assert result.applied and set(result.deltas) == inner
    for n, (a, b) in result.factors.items():  # thin factors for the factored restraint: ΔW = A Bᵀ
        assert a.shape[1] == b.shape[1] < min(a.shape[0], b.shape[0])
        torch.testing.assert_close(a @ b.T, result.deltas[n])
    for n, p in lm.model.named_parameters():
        if n in inner:
            assert not torch.equal(p, before[n]), n
            torch.testing.assert_close(get_weight(lm.model, n), before[n] + result.deltas[n])
        else:
            assert torch.equal(p, before[n]), n


def test_non_finite_update_is_rejected(tiny_checkpoint, requests):
    lm = load_model("tiny-llama")
    editor = MENDEditor(tiny_checkpoint)
    editor.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    editor.hypernet.edit_lrs[0] = float("nan")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    result = editor.edit(lm.model, lm.tokenizer, requests[:1])
    assert not result.applied
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert all(not d.any() for d in result.deltas.values())  # nothing was added


def test_exploded_finite_update_is_rejected_by_the_norm_guard(tiny_checkpoint, requests):
    lm = load_model("tiny-llama")
    editor = MENDEditor(tiny_checkpoint, max_update_norm_ratio=1.0)
    editor.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    normal, _ = editor.compute_deltas(lm.model, lm.tokenizer, requests[:1])
    ratios = [float(d.norm() / get_weight(lm.model, n).norm()) for n, d in normal.items()]
    assert max(ratios) < 1.0  # a trained edit passes the guard ...
    editor.hypernet.edit_lrs.data.mul_(1e6)  # ... a finite but exploded one does not
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    result = editor.edit(lm.model, lm.tokenizer, requests[:1])
    assert not result.applied
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    with pytest.raises(ValueError, match="max_update_norm_ratio"):
        MENDEditor(tiny_checkpoint, max_update_norm_ratio=0.0)


def test_input_z_clip_reaches_every_transform_and_the_fingerprint(tiny_checkpoint, requests):
    lm = load_model("tiny-llama")
    plain = MENDEditor(tiny_checkpoint)
    plain.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    clipped = MENDEditor(tiny_checkpoint, input_z_clip=0.5)
    clipped.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    assert all(t.z_clip == 0.5 for t in clipped.hypernet.transforms.values())
    a, _ = plain.compute_deltas(lm.model, lm.tokenizer, requests[:1])
    b, _ = clipped.compute_deltas(lm.model, lm.tokenizer, requests[:1])
    assert any(not torch.allclose(a[n], b[n]) for n in a)
    assert "input_z_clip" not in plain.fingerprint() and clipped.fingerprint()["input_z_clip"] == 0.5
    with pytest.raises(ValueError, match="input_z_clip"):
        MENDEditor(tiny_checkpoint, input_z_clip=0.0)


def test_the_fingerprint_tells_a_hypernetwork_rewritten_under_the_same_path(tiny_checkpoint, tmp_path):
    """A training run keeps rewriting best.ckpt: an editing run must not resume on another hypernetwork that
    happens to have the same file name."""
    lm = load_model("tiny-llama")
    path = tmp_path / "best.ckpt"
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    torch.save(ckpt, path)
    first, again = MENDEditor(str(path)), MENDEditor(str(path))
    first.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    again.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    assert first.fingerprint() == again.fingerprint() and len(first.fingerprint()["hypernet_sha256"]) == 64
    ckpt["state_dict"]["hypernet.edit_lrs"] = ckpt["state_dict"]["hypernet.edit_lrs"] * 2
    torch.save(ckpt, path)
    rewritten = MENDEditor(str(path))
    rewritten.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    assert rewritten.fingerprint()["checkpoint"] == first.fingerprint()["checkpoint"]
    assert rewritten.fingerprint()["hypernet_sha256"] != first.fingerprint()["hypernet_sha256"]


def test_checkpoint_for_another_model_or_other_params_is_refused(tiny_checkpoint, tmp_path):
    gpt = load_model("tiny-gpt2")
    with pytest.raises(MENDCheckpointError, match="trained for model 'tiny-llama', not 'tiny-gpt2'"):
        MENDEditor(tiny_checkpoint).prepare(gpt.model, gpt.tokenizer, "tiny-gpt2", None)
    with pytest.raises(MENDCheckpointError, match="do not exist in this model"):
        MENDEditor(tiny_checkpoint, check_model_name=False).prepare(gpt.model, gpt.tokenizer, "tiny-gpt2", None)
    # same names, other shapes (e.g. trained on a wider model of the same family)
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    name = ckpt["mend_meta"]["inner_params"][0]
    ckpt["mend_meta"]["shapes"][name] = [256, 64]
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    llama = load_model("tiny-llama")
    with pytest.raises(MENDCheckpointError, match=f"{name} has shape"):
        MENDEditor(str(other)).prepare(llama.model, llama.tokenizer, "tiny-llama", None)


def test_missing_checkpoint_says_how_to_train(tmp_path):
    lm = load_model("tiny-llama")
    with pytest.raises(MENDCheckpointError, match="python cli.py fit --config configs/mend.yaml"):
        MENDEditor(str(tmp_path / "nope.ckpt")).prepare(lm.model, lm.tokenizer, "tiny-llama", None)


def test_validation_logs_edit_success_and_locality(requests):
    torch.manual_seed(0)
    module = MENDTraining(model_name="tiny-llama", rank=16)
    module.train()
    with torch.no_grad():
        module.edit_step(requests[:4])  # running statistics
    val = requests[100:108]
    loader = DataLoader(val, batch_size=4, collate_fn=collate_requests)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
    for key in ("val/edit_success", "val/edit_success_pre", "val/locality", "val/loss"):
        assert key in metrics, key
    assert 0.0 <= metrics["val/locality"] <= 1.0
    # edit_success_pre must be what the unedited model says: log P(target_new) > log P(ground_truth)
    b_new = lm_batch(module.tokenizer, [r.prompt for r in val], [r.target_new for r in val])
    b_true = lm_batch(module.tokenizer, [r.prompt for r in val], [r.ground_truth for r in val])
    with torch.no_grad():
        lp_new = sequence_logprob(module.model(input_ids=b_new.input_ids, attention_mask=b_new.attention_mask).logits, b_new.labels)
        lp_true = sequence_logprob(module.model(input_ids=b_true.input_ids, attention_mask=b_true.attention_mask).logits, b_true.labels)
    assert metrics["val/edit_success_pre"] == pytest.approx((lp_new > lp_true).float().mean().item())


def test_checkpoint_carries_the_network_form_and_old_formats_are_refused(tiny_checkpoint, tmp_path, requests):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["mend_meta"]["format"] == 2
    assert ckpt["mend_meta"]["form"] == {"modulate": "pre", "relu_last": True, "a_init": "normal"}
    lm = load_model("tiny-llama")
    reference = MENDEditor(tiny_checkpoint)
    reference.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    ref_deltas, _ = reference.compute_deltas(lm.model, lm.tokenizer, requests[:1])
    # the same weights read as the first form give another update: the editor builds the stored form
    ckpt["mend_meta"]["form"] = {"modulate": "input", "relu_last": False, "a_init": "scaled"}
    legacy_path = tmp_path / "legacy_form.ckpt"
    torch.save(ckpt, legacy_path)
    legacy = MENDEditor(str(legacy_path))
    legacy.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    assert legacy.hypernet.form == NetForm.legacy()
    legacy_deltas, _ = legacy.compute_deltas(lm.model, lm.tokenizer, requests[:1])
    assert any(not torch.allclose(ref_deltas[n], legacy_deltas[n]) for n in ref_deltas)
    # lr_scale multiplies the update (PRUNE's LLaMA preset: 0.5)
    half = MENDEditor(tiny_checkpoint, lr_scale=0.5)
    half.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    half_deltas, _ = half.compute_deltas(lm.model, lm.tokenizer, requests[:1])
    for n in ref_deltas:
        torch.testing.assert_close(half_deltas[n], 0.5 * ref_deltas[n])
    # a format-1 checkpoint (the first network form) fails with a message that says why
    ckpt["mend_meta"]["format"] = 1
    old = tmp_path / "format1.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(MENDCheckpointError, match="format 1 is the first hypernetwork form"):
        MENDEditor(str(old)).prepare(lm.model, lm.tokenizer, "tiny-llama", None)


def test_gpu_config_runs_a_reference_form_training_step_on_cpu(tmp_path, monkeypatch):
    """configs/mend_gpu.yaml parses and trains (tiny-llama, CPU, 2 optimizer steps of 10 batched single edits, hidden
    states of every train / val row cached first)."""
    from pathlib import Path

    from prune_lit.cli_main import main

    config = Path(__file__).resolve().parents[1] / "configs" / "mend_gpu.yaml"
    monkeypatch.chdir(tmp_path)  # the config's checkpoints/ and logs/ are relative
    main(
        args=[
            "fit", "--config", str(config),
            "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--model.init_args.model_name", "tiny-llama", "--model.init_args.rank", "8",
            "--model.init_args.hidden_cache_dir", str(tmp_path / "cache"),
        ]
    )  # fmt: skip
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    ckpt = torch.load(tmp_path / "checkpoints" / "mend" / "last.ckpt", map_location="cpu", weights_only=True)
    meta = ckpt["mend_meta"]
    assert ckpt["global_step"] == 2 and meta["format"] == 2 and meta["rank"] == 8
    assert meta["form"] == {"modulate": "pre", "relu_last": True, "a_init": "normal"}
    assert ckpt["hyper_parameters"]["lr"] == 1e-5


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_cached_hidden_states_give_the_uncached_losses_and_gradients(name, requests, tmp_path):
    """Training from cached states entering the first edited block, several single edits in one batch, equals the
    step as it was (full forwards, one request per batch, gradients accumulated) within float round-off."""
    torch.manual_seed(0)
    full = MENDTraining(model_name=name, rank=16, cache_hidden=False)
    full.hypernet.batch_modes = False  # and the hypernetwork matrix by matrix: the training step as it was
    full.train()
    with torch.no_grad():
        full.edit_step(requests[:4])  # running statistics, so that the hypernetwork is not the identity map
    cached = MENDTraining(model_name=name, rank=16, cache_hidden=True, hidden_cache_dir=str(tmp_path))
    cached.load_state_dict(full.state_dict())
    cached.train()
    assert cached.first_layer == 1  # tiny models: 4 blocks, MEND edits the last 3
    rows = cached.token_rows(requests[4:12], with_truth=True)
    cached.prefill_hidden_cache(rows, tag="test")
    written = list(tmp_path.rglob("*.safetensors"))
    assert len(written) == 1 and len(cached.hidden_cache) == len(set(rows))
    # a second module reads the file instead of computing (same model, rows, max length, version)
    again = MENDTraining(model_name=name, rank=16, hidden_cache_dir=str(tmp_path))
    again.prefill_hidden_cache(rows, tag="test")
    torch.testing.assert_close(again.hidden_cache.states[rows[0]], cached.hidden_cache.states[rows[0]], rtol=0, atol=0)
    for batch in (requests[4:5], requests[5:9]):  # one edit; four single edits in one batch (padding across them)
        full.zero_grad(), cached.zero_grad()
        losses = {}
        for r in batch:  # before: one request per batch, gradients accumulated as Lightning does
            out = full.edit_step([r])
            (out["loss"] / len(batch)).backward()
            for k in ("loss", "edit_loss", "loc_loss", "edit_loss_pre"):
                losses[k] = losses.get(k, 0.0) + out[k].detach() / len(batch)
        out = cached.edit_step(batch)
        out["loss"].backward()
        for k in ("loss", "edit_loss", "loc_loss", "edit_loss_pre"):
            torch.testing.assert_close(out[k].detach(), losses[k], rtol=1e-4, atol=1e-6, msg=k)
        assert losses["loc_loss"] > 0
        ga = {n: p.grad for n, p in full.hypernet.named_parameters() if p.grad is not None}
        gb = {n: p.grad for n, p in cached.hypernet.named_parameters() if p.grad is not None}
        assert set(ga) == set(gb) and "edit_lrs" in ga
        for n in ga:
            torch.testing.assert_close(gb[n], ga[n], rtol=1e-3, atol=1e-7, msg=n)
        for (na, sa), (_, sb) in zip(full.hypernet.named_buffers(), cached.hypernet.named_buffers()):  # running statistics
            torch.testing.assert_close(sb, sa, rtol=1e-4, atol=1e-6, msg=na)
    # the uncached path with several edits per batch, and validation's logits (edit success, locality)
    full.eval(), cached.eval()
    a, b = full.edit_step(requests[9:12], with_truth=True), cached.edit_step(requests[9:12], with_truth=True)
    torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b["post_logits"], a["post_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b["base_logits"], a["base_logits"], rtol=1e-4, atol=1e-4)
    one = full.edit_step(requests[10:11], with_truth=True)  # edit 1 of the batch alone: same update, same logits
    mine = a["read"].edit_id == 1
    torch.testing.assert_close(a["post_logits"][mine], one["post_logits"], rtol=1e-4, atol=1e-4)


def test_resume_from_last_ckpt_keeps_optimizer_and_running_statistics(tmp_path, requests):
    """4 steps straight = 2 steps, a checkpoint, and a resume for 2 more: Adam's moments, the running statistics
    and the step count come back (one epoch = 2 batches, so the resumed epoch sees the same batches)."""

    def fit(root, max_steps: int, ckpt_path: str | None = None) -> MENDTraining:
        L.seed_everything(0)
        module = MENDTraining(model_name="tiny-llama", rank=8, hidden_cache_dir=str(tmp_path / "cache"))
        loader = DataLoader(requests[:8], batch_size=4, collate_fn=collate_requests)
        last = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1)
        trainer = L.Trainer(max_steps=max_steps, logger=False, callbacks=[last], enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
        return module

    straight = fit(tmp_path / "a", 4)
    fit(tmp_path / "b", 2)
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"][0]["state"]  # Adam moments are in last.ckpt
    counts = [v for k, v in ckpt["state_dict"].items() if k.endswith("norm_u.count")]
    assert counts and all(c > 0 for c in counts)  # and the running statistics
    resumed = fit(tmp_path / "b", 4, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert resumed.trainer.global_step == 4
    for (name, a), (_, b) in zip(straight.hypernet.state_dict().items(), resumed.hypernet.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8, msg=name)  # weights, edit lrs and running statistics
    # without the optimizer state the same resume ends elsewhere: the comparison above can fail
    ckpt["optimizer_states"][0]["state"] = {}
    torch.save(ckpt, tmp_path / "b" / "no_adam.ckpt")
    cold = fit(tmp_path / "c", 4, ckpt_path=str(tmp_path / "b" / "no_adam.ckpt"))
    assert not torch.allclose(cold.hypernet.edit_lrs, straight.hypernet.edit_lrs)


def test_editing_without_a_trained_hypernetwork_stops_with_one_line(tmp_path, capsys):
    """configs/mend_prune.yaml with no checkpoint: exit status 2 and one line naming the training command."""
    from prune_lit.cli_main import main

    with pytest.raises(SystemExit) as done:
        main(["test", "--config", "mend_prune.yaml", "--model.init_args.model_name", "tiny-llama",
              "--model.init_args.editor.init_args.check_model_name", "false",
              "--model.init_args.editor.init_args.checkpoint", str(tmp_path / "none.ckpt"),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")])  # fmt: skip
    assert done.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not found" in errors[0] and errors[0].endswith("python cli.py fit --config configs/mend.yaml")


def test_trained_hypernetworks_stay_out_of_git():
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("checkpoints/mend/best.ckpt", "checkpoints/mend/last.ckpt", "checkpoints/mend/val/step250.ckpt"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path


def test_validate_caches_the_val_rows_alone(tmp_path):
    """``cli.py validate`` on a later val slice (``val_start``) computes the lower states of those rows only, not of the
    whole train split as fit does, so scoring a trained hypernetwork on unseen cases is cheap."""
    module = MENDTraining(model_name="tiny-llama", rank=16, hidden_cache_dir=str(tmp_path))
    dm = EditDataModule(val_limit=2, val_start=3, train_batch_size=2)
    module.train()
    with torch.no_grad():
        module.edit_step(dm.train_val_requests()[0][:4])  # running statistics, as a trained hypernetwork has
    module.hidden_cache = None  # what that step cached on the way
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        inference_mode=False, accelerator="cpu", devices=1)  # fmt: skip
    trainer.validate(module, datamodule=dm)
    val = dm.train_val_requests()[1]
    assert len(val) == 2 and len(module.hidden_cache) == len(set(module.token_rows(val, with_truth=True)))
    assert 0.0 <= trainer.callback_metrics["val/edit_success"] <= 1.0


def test_sequential_edits_apply_each_edit_on_the_model_the_earlier_ones_made(tiny_checkpoint, requests, tmp_path):
    """``sequential_edits``: edit 1's gradient is taken on W + ΔW_0 (checked against ΔW_0 added to the weights), one
    edit alone gives the independent step's losses, and validation is unchanged (single edits)."""
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    kwargs = dict(model_name="tiny-llama", rank=16, hidden_cache_dir=str(tmp_path))
    seq, ind = MENDTraining(**kwargs, sequential_edits=True), MENDTraining(**kwargs)
    for m in (seq, ind):
        m.load_state_dict(state)
        m.train()
        m.hypernet.eval()  # running statistics frozen, so both paths and the check below normalise alike
        m.hypernet.edit_lrs.data.mul_(30)  # edits large enough to move the next edit's loss clearly
    r0, r1 = requests[0], requests[1]
    one_seq, one_ind = seq.edit_step([r0]), ind.edit_step([r0])
    for key in ("loss", "edit_loss", "loc_loss", "edit_loss_pre"):
        torch.testing.assert_close(one_seq[key], one_ind[key], rtol=1e-4, atol=1e-6)
    # several locality prompts per edit (train_locality_per_edit): both paths average the KL over all of them
    borrowed = with_borrowed_locality(requests[:4], 3)[0]
    many_seq, many_ind = seq.edit_step([borrowed]), ind.edit_step([borrowed])
    torch.testing.assert_close(many_seq["loc_loss"], many_ind["loc_loss"], rtol=1e-4, atol=1e-7)
    assert len(borrowed.locality_prompts) == 3 and float(many_seq["loc_loss"]) != float(one_seq["loc_loss"])
    two = seq.edit_step([r0, r1])
    # by hand: ΔW_0 from r0 on the unedited model, added to the weights, then r1's fine-tuning NLL there
    model = ind.model
    batch1 = lm_batch(ind.tokenizer, [r1.prompt], [r1.target_new], 64)
    nll1_unedited = finetune_factors(model, batch1, ind.inner_params)[0]
    nll0, factors0, _ = finetune_factors(model, lm_batch(ind.tokenizer, [r0.prompt], [r0.target_new], 64), ind.inner_params)
    with torch.no_grad():
        for n, (a, b) in ind.hypernet.delta_factors(factors0).items():
            get_weight(model, n).add_(a @ b.T)
    nll1 = finetune_factors(model, batch1, ind.inner_params)[0]
    assert abs(float(nll1 - nll1_unedited)) > 0.05  # the check can tell the two apart
    torch.testing.assert_close(two["edit_loss_pre"], (nll0 + nll1) / 2, rtol=0, atol=2e-4)
    two["loss"].backward()  # the graph reaches the hypernetwork
    assert seq.hypernet.edit_lrs.grad is not None and seq.hypernet.edit_lrs.grad.abs().sum() > 0
    seq.eval()
    assert seq.edit_step([r0, r1], with_truth=True)["post_logits"] is not None  # validation: the independent path
