"""Factored PRUNE restraint (ΔW = A Bᵀ): equal to the dense restraint, in one pass and over a sequence of edits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from prune_lit.editors.base import EditResult
from prune_lit.contracts import EditState
from prune_lit.callbacks import SpectralRestraint
from prune_lit.callbacks.factored_restraint import FactoredSpectralRestraint
from prune_lit.models import arch_spec, get_weight, load_model, set_weight
from prune_lit.restraint import restrain_delta_with_stats, spectral_norm
from prune_lit.restraint.factored import factored_svd, restrain_factored, spectral_norm_of_factors


def random_factors(m: int, n: int, r: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # decaying column sizes: a spread of singular values, some above and some below the threshold
    sizes = scale * torch.logspace(0, -2, r, dtype=torch.float64)
    return torch.randn(m, r, generator=g, dtype=torch.float64) * sizes, torch.randn(n, r, generator=g, dtype=torch.float64) / n**0.5


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("m, n, r, mode", [(60, 90, 7, "log"), (90, 60, 25, "log"), (40, 30, 50, "linear"), (64, 64, 64, "log")])
def test_factored_restraint_equals_the_dense_restraint(m, n, r, mode):
    a, b = random_factors(m, n, r, scale=3.0, seed=r)
    delta = a @ b.T
    sigma_max = 0.4 * float(torch.linalg.matrix_norm(delta, ord=2))  # several σ above it
    dense = restrain_delta_with_stats(delta, sigma_max, math.e, mode)
    fact = restrain_factored(a, b, sigma_max, math.e, mode)
    assert fact.n_restrained == dense.n_restrained >= 1
    assert rel(fact.left @ fact.right.T, dense.delta) < 1e-4  # the restrained ΔW'
    correction = fact.corr_left @ fact.corr_right.T
    assert rel(correction, dense.correction) < 1e-4  # what is written into W
    assert fact.sigma_max_after == pytest.approx(dense.sigma_max_after, rel=1e-6)
    assert fact.rank <= min(m, n, r)
    w = torch.randn(m, n, dtype=torch.float64)
    assert rel(fact.apply_(w.clone()), dense.apply_to(w.clone())) < 1e-12 + 1e-4 * float(correction.norm() / w.norm())


def test_factored_svd_reconstructs_and_bounds_rank():
    a, b = random_factors(50, 20, 35, scale=1.0, seed=0)  # more columns than min(m, n)
    svd = factored_svd(a, b)
    assert svd.S.numel() == 20 and bool((svd.S[:-1] >= svd.S[1:]).all())
    torch.testing.assert_close(svd.U * svd.S @ svd.V.T, a @ b.T)
    torch.testing.assert_close(svd.U.T @ svd.U, torch.eye(20, dtype=torch.float64))
    assert spectral_norm_of_factors(a, b) == pytest.approx(float(torch.linalg.matrix_norm(a @ b.T, ord=2)), rel=1e-10)
    # continuing from an SVD: only the new columns are orthogonalised; here V already spans all 20 dims of the
    # short side, so the new right factor lies inside span(V) (its new directions are numerical zeros)
    a2, b2 = random_factors(50, 20, 6, scale=5.0, seed=1)
    cont = factored_svd(a2, b2, basis=svd)
    torch.testing.assert_close(cont.U * cont.S @ cont.V.T, a @ b.T + a2 @ b2.T)
    assert cont.S.numel() == 20
    torch.testing.assert_close(cont.U.T @ cont.U, torch.eye(20, dtype=torch.float64))
    torch.testing.assert_close(cont.V.T @ cont.V, torch.eye(20, dtype=torch.float64))
    torch.testing.assert_close(cont.S, torch.linalg.svdvals(a @ b.T + a2 @ b2.T))
    # nothing above the threshold: the same ΔW comes back as factors, no correction
    res = restrain_factored(a, b, sigma_max=2 * float(svd.S[0]))
    assert res.n_restrained == 0 and res.corr_left is None
    torch.testing.assert_close(res.left @ res.right.T, a @ b.T)
    with pytest.raises(ValueError, match="NaN"):
        restrain_factored(a * float("nan"), b, 1.0)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=0)


def _replay(model, names, edits, callback) -> dict[str, torch.Tensor]:
    """Apply ``edits`` (list of {name: (A, B)}) one by one with ``callback`` after each; returns the final weights."""
    originals = {n: get_weight(model, n).clone().float() for n in names}
    state = EditState(model=model, tokenizer=None, original_weights=originals)
    trainer = SimpleNamespace(loggers=[])
    for factors in edits:
        for n, (a, b) in factors.items():
            set_weight(model, n, get_weight(model, n) + (a @ b.T).float())
        state.record_step([None], EditResult(deltas={}, applied=True, factors=factors), 0.0)
        callback.on_edit_step(trainer, state)
    callback.on_edits_end(trainer, state)
    final = {n: get_weight(model, n).clone() for n in names}
    for n in names:
        set_weight(model, n, originals[n])
    return final


@pytest.mark.parametrize("at_end_only", [False, True])
def test_factored_callback_equals_the_dense_callback_over_sequential_edits(tiny, at_end_only):
    model = tiny.model
    spec = arch_spec(model)
    names = [spec.mlp_out_name(1) + ".weight", spec.mlp_out_name(2) + ".weight"]
    originals = {n: get_weight(model, n).clone().float() for n in names}
    sigma0 = {n: spectral_norm(originals[n]) for n in names}
    g = torch.Generator().manual_seed(0)
    edits = []
    for step in range(12):  # rank 3 per edit; small at first (bound skips), later past σ_max(W_0)
        size = 0.05 * (step + 1) ** 1.5
        edits.append({
            n: (torch.randn(originals[n].shape[0], 3, generator=g) * size * sigma0[n] / originals[n].shape[0] ** 0.5,
                torch.randn(originals[n].shape[1], 3, generator=g) / originals[n].shape[1] ** 0.5)
            for n in names
        })  # fmt: skip
    dense_cb = SpectralRestraint(at_end_only=at_end_only)
    fact_cb = FactoredSpectralRestraint(at_end_only=at_end_only, max_factored_rank_ratio=1.0)
    dense = _replay(model, names, edits, dense_cb)
    fact = _replay(model, names, edits, fact_cb)
    restrained = sum(sum(h["n_restrained"].values()) for h in dense_cb.history)
    assert restrained > 0  # the sequence does cross σ_max(W_0)
    for n in names:
        d_ref = dense[n] - originals[n]
        assert rel(fact[n] - originals[n], d_ref) < 1e-4, n
    assert [h["n_restrained"] for h in fact_cb.history] == [h["n_restrained"] for h in dense_cb.history]
    assert fact_cb.method_counts["factored"] > 0 and fact_cb.method_counts["dense"] == 0
    if not at_end_only:
        assert fact_cb.method_counts["bound"] > 0  # the early, small edits were certified without an SVD


def test_factored_callback_falls_back_to_dense_without_factors_or_past_the_rank_threshold(tiny):
    model = tiny.model
    name = arch_spec(model).mlp_out_name(1) + ".weight"
    w0 = get_weight(model, name).clone().float()
    sigma0 = spectral_norm(w0)
    g = torch.Generator().manual_seed(1)
    edits = [{name: (torch.randn(w0.shape[0], 4, generator=g) * sigma0, torch.randn(w0.shape[1], 4, generator=g) / w0.shape[1] ** 0.5)} for _ in range(4)]
    dense = _replay(model, [name], edits, SpectralRestraint())
    low = FactoredSpectralRestraint(max_factored_rank_ratio=0.0)  # never factored: the float32-Gram + Ritz path
    assert rel(_replay(model, [name], edits, low)[name] - w0, dense[name] - w0) < 1e-4
    assert low.method_counts["gram"] == 4 and low.method_counts["factored"] == 0
    no_factors = [{} for _ in edits]  # an editor that gives no factors: ΔW unknown, dense every time
    cb = FactoredSpectralRestraint()
    originals = {name: w0}
    state = EditState(model=model, tokenizer=None, original_weights=originals)
    for e, f in zip(edits, no_factors):
        a, b = e[name]
        set_weight(model, name, get_weight(model, name) + (a @ b.T).float())
        state.record_step([None], EditResult(deltas={}, applied=True, factors=f), 0.0)
        cb.on_edit_step(SimpleNamespace(loggers=[]), state)
    assert cb.method_counts["dense"] == 4 and cb.method_counts["bound"] == 0
    assert rel(get_weight(model, name) - w0, dense[name] - w0) < 1e-4
    set_weight(model, name, w0)


@pytest.mark.parametrize("m, n, mode", [(300, 120, "log"), (120, 300, "log"), (200, 200, "linear")])
def test_high_rank_mixed_precision_restraint_equals_the_dense_restraint(m, n, mode):
    from prune_lit.restraint.factored import restrain_high_rank

    g = torch.Generator().manual_seed(m + n)
    # full rank, with a cluster of singular values straddling the threshold
    u = torch.linalg.qr(torch.randn(m, min(m, n), generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, min(m, n), generator=g, dtype=torch.float64))[0]
    s = torch.logspace(1.3, -1, min(m, n), dtype=torch.float64)
    s[5:9] = torch.tensor([3.01, 3.0005, 2.9995, 2.99], dtype=torch.float64)  # ±5e-4 of σ_max = 3: resolvable in float32
    delta = ((u * s) @ v.T).float()
    for sigma_max in (3.0, 1.0, 25.0):
        dense = restrain_delta_with_stats(delta, sigma_max, math.e, mode)
        fast = restrain_high_rank(delta, sigma_max, math.e, mode)
        assert fast.n_restrained == dense.n_restrained
        w = torch.zeros(m, n, dtype=torch.float64)
        if dense.n_restrained:
            assert rel(fast.apply_(w.clone()) + delta.double(), dense.delta.double()) < 1e-4
            assert rel(fast.corr_left @ fast.corr_right.T, dense.correction.double()) < 1e-4
            assert fast.sigma_max_after == pytest.approx(dense.sigma_max_after, rel=1e-5)
        else:
            assert fast.corr_left is None and fast.sigma_max_after <= sigma_max


@pytest.mark.parametrize("top", [1e4, 1e6])
def test_high_rank_restraint_next_to_an_exploded_component_equals_the_dense_restraint(top):
    """σ_1 = top·σ_max (a broken MEND model's ΔW) beside a cluster just above σ_max: float32 cannot place σ_max next
    to σ_1, so `restrain_high_rank` must not decide from its float32 Gram matrix; it equals the float64 dense path."""
    from prune_lit.restraint.factored import restrain_high_rank

    g = torch.Generator().manual_seed(7)
    m, n, sigma_max = 240, 96, 3.0
    u = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    s = torch.cat([torch.tensor([top * sigma_max]), sigma_max * (1 + 0.2 * torch.rand(40, generator=g, dtype=torch.float64)),
                   sigma_max * torch.rand(n - 41, generator=g, dtype=torch.float64)]).sort(descending=True).values
    delta = ((u * s) @ v.T).float()
    dense = restrain_delta_with_stats(delta, sigma_max)
    fast = restrain_high_rank(delta, sigma_max)
    assert fast.n_restrained == dense.n_restrained
    # compare the cluster's corrections: the exploded component's own correction (~top·σ_max) would hide their errors
    top_dir = u[:, :1]
    outside = lambda c: c - top_dir @ (top_dir.T @ c)  # noqa: E731
    assert rel(outside((fast.corr_left @ fast.corr_right.T).double()), outside(dense.correction.double())) < 1e-4


def test_rayleigh_lower_bound_never_exceeds_the_top_eigenvalue():
    """The power-step bound that lets `restrain_high_rank` skip its float32 eigh on an exploded ΔW must be a lower
    bound (else a healthy ΔW would take the float64 path for nothing, or worse, an estimate above λ_max would be
    trusted), at least the largest diagonal entry, and close to λ_max when one component dominates."""
    from prune_lit.restraint.factored import _rayleigh_lower_bound

    g = torch.Generator().manual_seed(3)
    for k, spike in [(50, 0.0), (80, 1e3), (120, 1e6)]:
        x = torch.randn(200, k, generator=g, dtype=torch.float64)
        if spike:
            x += spike * torch.randn(200, 1, generator=g, dtype=torch.float64) @ torch.randn(1, k, generator=g, dtype=torch.float64) / k
        gram = x.T @ x
        lam_max = float(torch.linalg.eigvalsh(gram)[-1])
        bound = _rayleigh_lower_bound(gram)
        assert float(gram.diagonal().max()) * (1 - 1e-12) <= bound <= lam_max * (1 + 1e-12)
        if spike:
            assert bound > 0.999 * lam_max
    assert _rayleigh_lower_bound(torch.zeros(4, 4)) == 0.0


def test_high_rank_restraint_skips_the_eigendecomposition_when_the_gram_norms_prove_nothing_exceeds():
    """A full-rank ΔW of many moderate components: ‖ΔW‖_F is far above σ_max(W₀) (no Frobenius skip) but ‖G‖_F
    is not, so nothing is decomposed and ΔW stays; one component above σ_max must still be found."""
    from prune_lit.restraint.factored import restrain_high_rank

    g = torch.Generator().manual_seed(11)
    m, n, sigma_max = 300, 120, 1.0
    u = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    s = torch.full((n,), 0.2, dtype=torch.float64)
    delta = ((u * s) @ v.T).float()
    assert float(delta.norm()) > sigma_max  # the caller's Frobenius bound cannot skip it
    res = restrain_high_rank(delta, sigma_max)
    assert res.subspace == 0 and res.corr_left is None and 0.2 <= res.sigma_max_before <= sigma_max
    s[0] = 1.5 * sigma_max  # now one σ exceeds: restrained as the dense path does
    delta = ((u * s) @ v.T).float()
    res = restrain_high_rank(delta, sigma_max)
    dense = restrain_delta_with_stats(delta, sigma_max)
    assert res.n_restrained == dense.n_restrained == 1
    assert rel((res.corr_left @ res.corr_right.T).double(), dense.correction.double()) < 1e-4


def test_high_rank_restraint_builds_no_autograd_graph():
    """A ΔW taken from weights that require grad (a direct call, outside the callbacks' no_grad) must not drag an
    autograd graph through the Gram matrix and its eigendecomposition."""
    from prune_lit.restraint.factored import restrain_high_rank

    g = torch.Generator().manual_seed(5)
    w = torch.randn(60, 30, generator=g, requires_grad=True)
    res = restrain_high_rank(w * 1.0, sigma_max=0.5)
    assert res.n_restrained > 0 and not res.corr_left.requires_grad and not res.corr_right.requires_grad
