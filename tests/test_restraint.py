"""PRUNE restraint: the math against the formula and a float64 reference, and the Lightning callbacks."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from prune_lit.callbacks import SpectralDiagnostics, SpectralRestraint, edit_step_callbacks
from prune_lit.editors.base import EditResult
from prune_lit.contracts import EditState
from prune_lit.callbacks.restraint import short_name
from prune_lit.models.arch import arch_spec, get_weight, set_weight
from prune_lit.models.loader import load_model
from prune_lit.restraint import (
    condition_number,
    is_contraction,
    lowrank_svd,
    restrain_delta,
    restrain_delta_with_stats,
    restrain_singular_values,
    spectral_norm,
)

ALPHAS = [math.e, 1.2, 1.5, 2.0]


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def constructed(s: list[float], m: int = 60, n: int = 90) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ΔW = U diag(s) Vᵀ with known orthonormal U [m, k], V [n, k]."""
    u, v = orthonormal(m, len(s), 1), orthonormal(n, len(s), 2)
    return u, v, (u * torch.tensor(s, dtype=torch.float64)) @ v.T


def expected_map(s: float, sigma_max: float, alpha: float, mode: str) -> float:
    if s <= sigma_max:
        return s
    if mode == "linear":
        return s / 2 + sigma_max / 2
    return math.log(s, alpha) - math.log(sigma_max, alpha) + sigma_max


def reference_restrain(delta: torch.Tensor, sigma_max: float, alpha: float = math.e, mode: str = "log") -> torch.Tensor:
    """Float64 full-SVD reference: rebuild ΔW from all components with the mapped singular values."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u * restrain_singular_values(s, sigma_max, alpha, mode)) @ vh


@pytest.mark.parametrize("mode,alpha", [("log", a) for a in ALPHAS] + [("linear", math.e)])
def test_restrained_spectrum_matches_formula(mode: str, alpha: float) -> None:
    s = [40.0, 12.0, 5.5, 4.0, 1.0, 0.3]
    sigma_max = 5.0
    u, v, delta = constructed(s)
    out = restrain_delta(delta.float(), sigma_max, alpha=alpha, mode=mode).double()
    got = torch.diagonal(u.T @ out @ v)
    want = torch.tensor([expected_map(x, sigma_max, alpha, mode) for x in s], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # nothing leaks outside the edit's own singular directions
    rebuilt = (u * want) @ v.T
    assert float((out - rebuilt).norm() / rebuilt.norm()) < 1e-5
    # and the reported stats agree
    res = restrain_delta_with_stats(delta.float(), sigma_max, alpha=alpha, mode=mode)
    assert res.n_restrained == 3
    assert res.sigma_max_before == pytest.approx(40.0, rel=1e-5)
    assert res.sigma_max_after == pytest.approx(max(want.tolist()), rel=1e-5)


def test_singular_value_map_leaves_small_values_alone() -> None:
    s = torch.tensor([0.0, 0.5, 2.0, 2.0000001, 3.0, 100.0], dtype=torch.float64)
    for mode in ("log", "linear"):
        out = restrain_singular_values(s, 2.0, mode=mode)
        assert torch.equal(out[:3], s[:3])  # σ ≤ σ_max: bit-for-bit
        assert (out[3:] < s[3:]).all() and (out[3:] > 2.0).all()
        assert (out.diff() >= 0).all()  # monotone, so the order of components is kept
    # at σ = σ_max the log map is continuous (the reference's `>=` and our `>` agree)
    assert float(restrain_singular_values(torch.tensor([2.0 + 1e-12], dtype=torch.float64), 2.0)[0]) == pytest.approx(2.0)


def test_components_below_sigma_max_are_untouched() -> None:
    s = [30.0, 9.0, 2.0, 1.0, 0.1]
    u, v, delta = constructed(s)
    d32 = delta.float()
    res = restrain_delta_with_stats(d32, 5.0)
    assert res.n_restrained == 2
    # the correction lies entirely in the span of the two restrained components
    corr = res.correction.double()
    outside = corr - u[:, :2] @ (u[:, :2].T @ corr)
    assert float(outside.norm()) < 1e-6 * float(corr.norm())
    kept = torch.diagonal(u.T @ res.delta.double() @ v)[2:]
    torch.testing.assert_close(kept, torch.tensor(s[2:], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    # nothing above σ_max: the very same tensor comes back, without an SVD
    same = restrain_delta_with_stats(d32, 100.0)
    assert same.delta is d32 and same.correction is None and same.method == "skipped"
    # ‖ΔW‖_F > σ_max but σ_max(ΔW) < σ_max: SVD taken, still the same tensor
    same = restrain_delta_with_stats(d32, 31.0)
    assert same.delta is d32 and same.n_restrained == 0 and same.method == "lowrank"


@pytest.mark.parametrize("rank", [1, 7, 40])
def test_lowrank_path_matches_float64_reference(rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    m, n = 200, 500
    w0 = torch.randn(m, n, generator=g) * 0.05
    sigma_max = spectral_norm(w0)
    sizes = torch.linspace(4.0, 0.3, rank) * sigma_max
    a, b = torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)
    delta = ((a / a.norm(dim=0)) * sizes) @ (b / b.norm(dim=1, keepdim=True))
    delta = (w0 + delta) - w0  # float32 round-off as in W − W_0
    res = restrain_delta_with_stats(delta, sigma_max)
    assert res.method == "lowrank" and res.rank == rank and res.n_restrained > 0
    ref = reference_restrain(delta, sigma_max)
    assert float((res.delta.double() - ref).norm() / ref.norm()) < 1e-4


def test_warm_start_from_previous_basis_is_exact() -> None:
    g = torch.Generator().manual_seed(6)
    m, n = 150, 400
    sigma_max = 1.0
    delta = torch.randn(m, 20, generator=g) @ torch.randn(20, n, generator=g) * 0.1
    first = restrain_delta_with_stats(delta, sigma_max)
    assert first.n_restrained > 0 and first.basis is not None and first.basis.shape == (m, 20)
    nxt = first.delta + torch.randn(m, 1, generator=g) @ torch.randn(1, n, generator=g)  # one more edit
    warm = restrain_delta_with_stats(nxt, sigma_max, init_basis=first.basis)
    assert warm.method == "lowrank" and warm.rank == 21
    ref = reference_restrain(nxt, sigma_max)
    assert float((warm.delta.double() - ref).norm() / ref.norm()) < 1e-4
    # a stale basis (directions no longer in ΔW) costs nothing in accuracy either
    stale = restrain_delta_with_stats(nxt, sigma_max, init_basis=orthonormal(m, 10, 7).float())
    assert stale.rank == 21
    assert float((stale.delta.double() - ref).norm() / ref.norm()) < 1e-4
    # so does a float64 init that is not orthonormal (it is detected and orthonormalised, not trusted)
    skewed = first.basis @ torch.triu(torch.ones(20, 20, dtype=torch.float64))
    assert restrain_delta_with_stats(nxt, sigma_max, init_basis=skewed).rank == 21
    assert float((restrain_delta_with_stats(nxt, sigma_max, init_basis=skewed).delta.double() - ref).norm() / ref.norm()) < 1e-4
    with pytest.raises(ValueError, match="init basis"):
        lowrank_svd(nxt, init=torch.zeros(m + 1, 3))


def test_range_finder_basis_stays_orthonormal_over_many_blocks() -> None:
    # rank 90 from blocks of 8, 16, 32, 64: no QR of the whole basis is taken, so each block must keep it orthonormal
    sizes = torch.logspace(2, -1, 90, dtype=torch.float64)  # 3 decades, as an exploded edit over small ones
    a = ((orthonormal(400, 90, 1) * sizes) @ orthonormal(900, 90, 2).T).float()
    svd = lowrank_svd(a, atol=1e-2)
    assert svd.method == "lowrank" and svd.rank == 90
    assert float((svd.U.T @ svd.U - torch.eye(90, dtype=torch.float64)).abs().max()) < 1e-12
    torch.testing.assert_close(svd.S, torch.linalg.svdvals(a.double())[:90], rtol=1e-5, atol=0)


def test_apply_in_place_equals_apply_to() -> None:
    g = torch.Generator().manual_seed(9)
    delta = torch.randn(40, 4, generator=g) @ torch.randn(4, 60, generator=g)
    res = restrain_delta_with_stats(delta, 1.0)
    w = torch.randn(40, 60, generator=g)
    expected = res.apply_to(w)
    out = res.apply_(w)
    assert out is w and res.n_restrained > 0
    torch.testing.assert_close(w, expected)


def test_full_rank_input_falls_back_to_thin_svd() -> None:
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(120, 300, generator=g)
    sigma_max = 0.5 * float(torch.linalg.svdvals(delta)[0])
    res = restrain_delta_with_stats(delta, sigma_max, alpha=1.5)
    assert res.method == "full" and res.n_restrained > 0
    values_only = lowrank_svd(delta, vectors=False)  # what diagnostics ask for: σ's without the eigenvectors
    assert values_only.method == "full"
    torch.testing.assert_close(values_only.S, torch.linalg.svdvals(delta.double()), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="vectors=False"):
        values_only.left(1)
    ref = reference_restrain(delta, sigma_max, alpha=1.5)
    assert float((res.delta.double() - ref).norm() / ref.norm()) < 1e-4


def test_lowrank_svd_finds_exact_rank_and_zero() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(150, 11, generator=g) @ torch.randn(11, 400, generator=g)
    svd = lowrank_svd(a)
    assert svd.method == "lowrank" and svd.rank == 11
    torch.testing.assert_close(svd.S, torch.linalg.svdvals(a.double())[:11], rtol=1e-5, atol=0)
    zero = lowrank_svd(torch.zeros(30, 40))
    assert zero.rank == 0 and zero.method == "zero"


def test_cached_default_sketch_gives_the_draws_of_a_fresh_seed0_generator(monkeypatch) -> None:
    import prune_lit.restraint.lowrank as lowrank

    g = torch.Generator().manual_seed(5)
    a = torch.randn(200, 40, generator=g) @ torch.randn(40, 300, generator=g)  # rank 40: blocks 16, 32
    fresh = lowrank_svd(a, generator=torch.Generator().manual_seed(0))
    assert fresh.method == "lowrank"
    for _ in range(2):  # the second call reads the cache
        cached = lowrank_svd(a)
        assert torch.equal(cached.S, fresh.S) and torch.equal(cached.U, fresh.U)
    monkeypatch.setattr(lowrank, "_SKETCH_CACHE_MAX_ELEMENTS", 0)  # blocks too large to cache: drawn afresh, same values
    assert torch.equal(lowrank_svd(a).S, fresh.S)
    assert not torch.equal(lowrank_svd(a, generator=torch.Generator().manual_seed(1)).U, fresh.U)


def test_delta_buffers_form_w_minus_w0_in_one_reused_buffer() -> None:
    from prune_lit.callbacks.delta_buffers import DeltaBuffers

    g = torch.Generator().manual_seed(6)
    w0, w = torch.randn(7, 9, generator=g), torch.randn(7, 9, generator=g)
    buffers = DeltaBuffers()
    first = buffers.delta("m", w, w0)
    assert torch.equal(first, w - w0)
    second = buffers.delta("m", w.to(torch.bfloat16), w0)
    assert second.data_ptr() == first.data_ptr() and torch.equal(second, w.to(torch.bfloat16).float() - w0)
    assert buffers.delta("other", w, w0).data_ptr() != first.data_ptr()
    assert buffers.delta("m", w[:3], w0[:3]).shape == (3, 9)  # another shape: a new buffer


def test_bad_inputs_raise_clear_errors() -> None:
    delta = torch.ones(4, 5)
    delta[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        restrain_delta(delta, 1.0)
    delta[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        restrain_delta(delta, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        restrain_delta(torch.ones(3, 3), 1.0, alpha=1.0)
    with pytest.raises(ValueError, match="mode"):
        restrain_delta(torch.ones(3, 3), 1.0, mode="sqrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma_max"):
        restrain_delta(torch.ones(3, 3), 0.0)
    with pytest.raises(ValueError, match="2-D"):
        restrain_delta(torch.ones(3), 1.0)


def test_norm_helpers() -> None:
    w = torch.diag(torch.tensor([4.0, 2.0, 0.5]))
    assert spectral_norm(w) == pytest.approx(4.0)
    assert condition_number(w) == pytest.approx(8.0)
    assert condition_number(torch.diag(torch.tensor([1.0, 0.0]))) == math.inf
    assert is_contraction(2.0) and not is_contraction(0.5) and not is_contraction(2.0, alpha=1.2)
    assert is_contraction(0.1, mode="linear")


# ---------------------------------------------------------------- callbacks on a tiny model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=0)


def fake_state(model, names: list[str]) -> EditState:
    """The run state the callbacks read, with W_0 snapshotted now."""
    return EditState(model=model, tokenizer=None, original_weights={n: get_weight(model, n).clone().float() for n in names})


def applied_step(state: EditState) -> None:
    """Count one applied single-request edit step (the weights were changed by the caller)."""
    state.record_step([None], EditResult(deltas={}, applied=True), 0.0)


def scaled_matrix(model, name: str, sigma: float) -> None:
    """Rescale ``name`` so σ_max(W_0) = sigma (≥ 1, where the log map contracts)."""
    w = get_weight(model, name).float()
    set_weight(model, name, w * (sigma / spectral_norm(w)))


def rank_one(shape: tuple[int, int], size: float, g: torch.Generator) -> torch.Tensor:
    u, v = torch.randn(shape[0], 1, generator=g), torch.randn(1, shape[1], generator=g)
    return (u / u.norm()) @ (v / v.norm()) * size


def test_restraint_callback_keeps_sigma_max_bounded(tiny) -> None:
    model = tiny.model
    spec = arch_spec(model)
    name, untouched = spec.mlp_out_name(1) + ".weight", spec.mlp_out_name(2) + ".weight"
    scaled_matrix(model, name, 1.5)
    state = fake_state(model, [name, untouched])
    w0, w_untouched = state.original_weights[name], get_weight(model, untouched).clone()
    cb = SpectralRestraint(alpha=math.e)
    trainer = SimpleNamespace(loggers=[])
    g = torch.Generator().manual_seed(0)
    sigma0 = spectral_norm(w0)
    assert is_contraction(sigma0)
    unrestrained = torch.zeros_like(w0)
    total = 0.0
    for step in range(20):
        size = sigma0 * (0.5 + 0.5 * step)  # growing edits, as in long sequential editing
        d = rank_one(tuple(w0.shape), size, g)
        unrestrained += d
        total += size
        set_weight(model, name, get_weight(model, name) + d)
        applied_step(state)
        cb.on_edit_step(trainer, state)
        restrained_max = spectral_norm(get_weight(model, name) - w0)
        # by induction σ_max(ΔW'_t) ≤ f(σ_max(ΔW'_{t-1}) + ‖δ_t‖) ≤ f(Σ ‖δ_i‖) since f is monotone and contracts
        bound = max(sigma0, math.log(total) - math.log(sigma0) + sigma0)
        assert restrained_max <= bound * (1 + 1e-5), (step, restrained_max, bound)
    assert spectral_norm(unrestrained) > bound  # without PRUNE it grows past the bound
    assert len(cb.history) == 20 and cb.total_seconds > 0
    assert cb.history[-1]["n_restrained"][untouched] == 0
    assert torch.equal(get_weight(model, untouched), w_untouched)  # never written


def test_restraint_callback_schedule_and_at_end_only(tiny) -> None:
    model = tiny.model
    name = arch_spec(model).mlp_out_name(3) + ".weight"
    scaled_matrix(model, name, 2.0)
    g = torch.Generator().manual_seed(1)
    for at_end, every, expect_passes in [(False, 5, 4), (True, 1, 1)]:
        state = fake_state(model, [name])
        w0 = state.original_weights[name]
        cb = SpectralRestraint(every_n_edits=every, at_end_only=at_end)
        for step in range(20):
            set_weight(model, name, get_weight(model, name) + rank_one(tuple(w0.shape), 3.0, g))
            applied_step(state)
            before = get_weight(model, name).clone()
            cb.on_edit_step(None, state)
            touched = not torch.equal(before, get_weight(model, name))
            assert touched == ((not at_end) and state.requests_seen % every == 0)
        grown = spectral_norm(get_weight(model, name) - w0)
        cb.on_edits_end(None, state)
        assert len(cb.history) == expect_passes
        if at_end:
            assert spectral_norm(get_weight(model, name) - w0) < grown
        set_weight(model, name, w0)
    # a disabled callback never touches the weights
    state = fake_state(model, [name])
    set_weight(model, name, state.original_weights[name] + rank_one(tuple(w0.shape), 50.0, g))
    before = get_weight(model, name).clone()
    off = SpectralRestraint(enabled=False)
    applied_step(state)
    off.on_edit_step(None, state)
    off.on_edits_end(None, state)
    assert torch.equal(before, get_weight(model, name)) and off.history == []


def test_callback_errors_name_the_problem(tiny) -> None:
    with pytest.raises(ValueError, match="alpha"):
        SpectralRestraint(alpha=0.5)
    with pytest.raises(ValueError, match="every_n_edits"):
        SpectralRestraint(every_n_edits=0)
    name = arch_spec(tiny.model).mlp_out_name(0) + ".weight"
    state = fake_state(tiny.model, [name])
    state.original_weights[name][0, 0] = float("nan")
    with pytest.raises(ValueError, match=name):
        SpectralRestraint().restrain(state, None)
    assert short_name(name) == "layers.0.mlp.down_proj"


class ToyEditing(L.LightningModule):
    """Stand-in for the sequential-editing module: each test batch adds one growing rank-one edit, then the
    module drives the edit-step callbacks in phase order, as `SequentialEditingModule` does."""

    def __init__(self, model, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.state = fake_state(model, [name])
        self.gen = torch.Generator().manual_seed(5)

    def test_step(self, batch, batch_idx):
        w = get_weight(self.model, self.name)
        set_weight(self.model, self.name, w + rank_one(tuple(w.shape), 2.0 * (batch_idx + 1), self.gen))
        applied_step(self.state)
        for cb in edit_step_callbacks(self.trainer):
            cb.on_edit_step(self.trainer, self.state)

    def on_test_epoch_end(self):
        for cb in edit_step_callbacks(self.trainer):
            cb.on_edits_end(self.trainer, self.state)


def test_callbacks_in_a_lightning_run(tiny, tmp_path) -> None:
    model = tiny.model
    name = arch_spec(model).mlp_out_name(0) + ".weight"
    scaled_matrix(model, name, 1.5)
    module = ToyEditing(model, name)
    restraint, diagnostics = SpectralRestraint(), SpectralDiagnostics(kappa_every_n_edits=2, top_k=8)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=TensorBoardLogger(save_dir=str(tmp_path), name="run"),
        callbacks=[diagnostics, restraint],  # the list order does not matter
        inference_mode=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module, dataloaders=DataLoader(list(range(6)), batch_size=1))
    run = tmp_path / "run" / "version_0"
    data = json.loads((run / "spectral.json").read_text())
    recs = data["records"]
    assert [r["num_edits"] for r in recs] == [1, 2, 3, 4, 5, 6, 6] and recs[-1]["final"]
    assert sum("kappa_w" in r for r in recs) == 4  # at 2, 4, 6 edits and the final record
    # diagnostics ran after restraint: what they saw is the restrained ΔW, bounded by the log map of the edits' sum
    sigma0 = recs[0]["sigma_max_w0"]
    bound = math.log(2.0 * sum(range(1, 7))) - math.log(sigma0) + sigma0
    assert all(r["sigma_max_delta"] <= bound * (1 + 1e-5) for r in recs)
    exact = spectral_norm(get_weight(model, name) - module.state.original_weights[name])
    assert recs[-1]["sigma_max_delta"] == pytest.approx(exact, rel=1e-4)
    assert (run / "spectral.png").stat().st_size > 1000
    assert list(run.glob("events.out.tfevents.*"))
    assert restraint.total_seconds > 0 and len(restraint.history) == 6


def test_an_exploded_component_does_not_hide_one_just_above_sigma_max():
    # Seen with MEND: σ_1 = 5.5e6 made σ_2 = 26.2 (> σ_max(W_0) = 25.44) fall under the relative cut-off.
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(576, 2, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(1536, 2, generator=g, dtype=torch.float64))
    delta = (u * torch.tensor([5.5e6, 26.2], dtype=torch.float64)) @ v.T
    sigma_max = 25.44
    result = restrain_delta_with_stats(delta, sigma_max)  # float64: float32 cannot hold 5.5e6 - 5.5e6 + 37
    assert result.n_restrained == 2
    s = torch.linalg.svdvals(result.delta.double())
    expected = [math.log(x) - math.log(sigma_max) + sigma_max for x in (5.5e6, 26.2)]
    torch.testing.assert_close(s[:2], torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("warm", [True, False])
def test_an_exploded_edit_inside_the_warm_basis_is_restrained_exactly(warm):
    # Seen with MEND + PRUNE (α = 1.2): an edit of σ ≈ 1.25e4 along a direction the previous step's basis
    # already held left σ_max(ΔW') = 595 instead of 51.6, because the new range-finder block was orthogonalised
    # against the warm basis in float32 and the basis lost orthogonality (‖QᵀQ − I‖ = 0.07).
    g = torch.Generator().manual_seed(0)
    m, n, sigma_max, alpha = 576, 1536, 14.49, 1.2
    U = torch.linalg.qr(torch.randn(m, 80, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, 80, generator=g, dtype=torch.float64))[0]
    s = torch.cat([torch.tensor([18312.0], dtype=torch.float64), torch.linspace(14.0, 1.0, 79, dtype=torch.float64)])
    first = restrain_delta_with_stats(((U * s) @ V.T).float(), sigma_max, alpha)
    u2 = U[:, 0] + 0.05 * U[:, 1] + 0.02 * torch.randn(m, generator=g, dtype=torch.float64) / math.sqrt(m)
    v2 = V[:, 0] + 0.05 * V[:, 2]
    delta = (first.delta.double() + 12500 * torch.outer(u2 / u2.norm(), v2 / v2.norm())).float()
    result = restrain_delta_with_stats(delta, sigma_max, alpha, init_basis=first.basis if warm else None)
    U2, S2, Vh2 = torch.linalg.svd(delta.double(), full_matrices=False)
    exact = (U2 * restrain_singular_values(S2, sigma_max, alpha)) @ Vh2
    assert float((result.delta.double() - exact).norm() / exact.norm()) < 1e-4
    assert float(torch.linalg.svdvals(result.delta.double())[0]) == pytest.approx(float(restrain_singular_values(S2, sigma_max, alpha)[0]), rel=1e-4)
