"""SPHERE's projector and the key-aware PRUNE map: the math by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from prune_lit.restraint import restrain_delta_with_stats, restrain_singular_values
from prune_lit.restraint.key_aware import key_threshold, restrain_delta_key_aware, sqrt_psd
from prune_lit.restraint.sphere import (
    SphereProjector,
    energy_rank,
    principal_directions,
    reference_side,
    row_normalise,
    soft_project,
    sphere_project,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_projection(a_stored: torch.Tensor, b_stored: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """The reference recipe written out literally (long-side Gram, explicit projector), in float64."""
    a = a_stored.double()
    a_hat = a / (a.norm(dim=1, keepdim=True) + 1e-8)
    evals, evecs = torch.linalg.eigh(a_hat.T @ a_hat / a_hat.shape[0])
    cumsum = torch.cumsum(evals.flip(0), 0)
    r = int((cumsum / evals.sum() <= beta).sum()) + 1
    u = evecs[:, -r:]
    p = torch.eye(a.shape[1], dtype=torch.float64) - alpha * (u @ u.T)
    return b_stored.double() @ p.T


# --- SPHERE ---------------------------------------------------------------------------------------------------


def test_energy_rank_counts_by_hand():
    lam = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative shares 0.4, 0.7, 0.9, 1.0
    assert energy_rank(lam, 0.39) == 1  # no prefix within 0.39, plus one
    assert energy_rank(lam, 0.4) == 2
    assert energy_rank(lam, 0.5) == 2
    assert energy_rank(lam, 0.7) == 3
    assert energy_rank(lam, 0.95) == 4
    assert energy_rank(lam, 1.0) == 4  # never more than there are


def test_row_normalise_puts_rows_on_the_sphere():
    a = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    out = row_normalise(a)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 1.0]]), atol=1e-7)


def test_principal_directions_by_hand():
    # rows: three neurons along e1, one along e2 (after normalisation, sizes do not matter)
    a = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 7.0, 0.0]])
    u = principal_directions(a, 0.5)  # energies 3, 1, 0 -> shares 0.75, 1.0 -> r = 0 + 1
    assert u.shape == (3, 1)
    assert torch.allclose(u.abs().squeeze(), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    u2 = principal_directions(a, 0.8)  # 0.75 <= 0.8 -> r = 2: e1 and e2
    assert u2.shape == (3, 2)
    assert torch.allclose((u2 @ u2.T).diagonal(), torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)


def test_soft_projector_by_hand():
    u = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 3.0], [-1.0, 1.0]])
    out = soft_project(b, u, 0.5)  # the e1 (input) component halves, e2 untouched
    assert torch.allclose(out, torch.tensor([[1.0, 3.0], [-0.5, 1.0]]))
    assert torch.equal(soft_project(b, u, 0.0), b)
    full = soft_project(b, u, 1.0)
    assert torch.allclose(full[:, 0], torch.zeros(2))


@pytest.mark.parametrize("rows,cols", [(40, 24), (24, 40)])  # long and short side of the Gram matrix
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_sphere_matches_the_reference_recipe(rows, cols, beta):
    g = gen(rows + cols)
    a = torch.randn(rows, cols, generator=g) + 3 * torch.randn(rows, 1, generator=g) @ torch.randn(1, cols, generator=g)
    b = torch.randn(rows, 1, generator=g) @ torch.randn(1, cols, generator=g)
    ours = sphere_project(a, b, beta, 0.5, side="input").double()
    ref = reference_projection(a, b, beta, 0.5)
    assert torch.allclose(ours, ref, atol=1e-5 * float(ref.norm()))
    proj = SphereProjector.from_weight(a, beta, 0.5)
    u = proj.directions.double()
    assert torch.allclose(u.T @ u, torch.eye(proj.rank, dtype=torch.float64), atol=1e-5)


def test_rank_deficient_short_side_matches_the_reference():
    """Rows < cols with repeated neurons: the short-side Gram is singular and the cut can reach its null space."""
    g = gen(3)
    a = torch.randn(3, 10, generator=g).repeat(2, 1)  # 6 rows, rank 3
    b = torch.randn(6, 10, generator=g)
    out = sphere_project(a, b, 0.999, 0.5).double()
    ref = reference_projection(a, b, 0.999, 0.5)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=1e-5)


def test_conv1d_orientation_follows_the_stored_tensor():
    """GPT-2 stores [in, out]: the reference projects that tensor's second axis, i.e. the output side."""
    assert reference_side(transposed=True) == "output"
    assert reference_side(transposed=False) == "input"
    g = gen(5)
    w = torch.randn(12, 20, generator=g)  # [out, in] as get_weight returns it
    upd = torch.randn(12, 1, generator=g) @ torch.randn(1, 20, generator=g)
    stored_w, stored_upd = w.T, upd.T  # Conv1D layout [in, out]
    ref_stored = reference_projection(stored_w, stored_upd, 0.5, 0.5)
    ours = sphere_project(w, upd, 0.5, 0.5, side="output")
    assert torch.allclose(ours.double(), ref_stored.T, atol=1e-5)
    # and the two sides really differ (the test would catch a swapped orientation)
    other = sphere_project(w, upd, 0.5, 0.5, side="input")
    assert not torch.allclose(other, ours, atol=1e-3)


def test_sphere_rejects_bad_input():
    w = torch.randn(4, 5)
    with pytest.raises(ValueError):
        sphere_project(w, torch.randn(5, 4))
    with pytest.raises(ValueError):
        sphere_project(w, w, beta_hse=0.0)
    with pytest.raises(ValueError):
        sphere_project(w, w, alpha=1.5)
    with pytest.raises(ValueError):
        sphere_project(w, w, side="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        principal_directions(torch.full((3, 3), float("nan")), 0.5)


# --- key-aware PRUNE ---------------------------------------------------------------------------------------------


def random_psd(n: int, g: torch.Generator, rank: int | None = None) -> torch.Tensor:
    x = torch.randn(n, rank or 2 * n, generator=g, dtype=torch.float64)
    return x @ x.T / x.shape[1]


def low_rank_delta(m: int, n: int, scales: list[float], g: torch.Generator) -> torch.Tensor:
    a = torch.randn(m, len(scales), generator=g)
    b = torch.randn(len(scales), n, generator=g)
    return (a / a.norm(dim=0)) * torch.tensor(scales) @ (b / b.norm(dim=1, keepdim=True))


def test_sqrt_psd_squares_back_and_tolerates_singular_c():
    g = gen(0)
    c = random_psd(8, g, rank=3)  # singular
    r = sqrt_psd(c)
    assert torch.allclose(r @ r, c, atol=1e-10)
    assert torch.allclose(r, r.T)


def test_key_aware_equals_prune_when_c_is_identity():
    g = gen(1)
    w0 = torch.randn(30, 50, generator=g)
    sigma0 = float(torch.linalg.matrix_norm(w0.double(), ord=2))
    delta = low_rank_delta(30, 50, [4 * sigma0, 2 * sigma0, 0.5 * sigma0], g)
    eye = torch.eye(50, dtype=torch.float64)
    tau = key_threshold(w0, eye)
    assert tau == pytest.approx(sigma0, rel=1e-6)
    ours = restrain_delta_key_aware(delta, eye, tau).delta
    prune = restrain_delta_with_stats(delta, tau).delta
    assert torch.allclose(ours, prune, atol=1e-5 * float(prune.norm()))
    assert restrain_delta_key_aware(delta, eye, tau).n_restrained == 2


@pytest.mark.parametrize("alpha", [math.e, 1.5])
def test_key_aware_bound_holds_in_key_space(alpha):
    g = gen(2)
    m, n = 24, 40
    c = random_psd(n, g) * 9.0  # keys larger than unit: σ(W C^{1/2}) and σ(W) differ
    root = sqrt_psd(c)
    w0 = torch.randn(m, n, generator=g) * 0.5
    tau = key_threshold(w0, root)
    delta = low_rank_delta(m, n, [30.0, 20.0, 5.0, 0.1], g)
    s_before = torch.linalg.svdvals(delta.double() @ root)
    assert float(s_before[0]) > tau  # the test acts
    res = restrain_delta_key_aware(delta, root, tau, alpha=alpha)
    s_after = torch.linalg.svdvals(res.delta.double() @ root)
    expected = restrain_singular_values(s_before, tau, alpha).sort(descending=True).values
    # the key-space spectrum is exactly PRUNE's map of the old one (the mapped values, not just a bound)
    assert torch.allclose(s_after[: len(expected)], expected, rtol=1e-4, atol=1e-6)
    assert float(s_after[0]) <= max(tau, float(restrain_singular_values(s_before[:1], tau, alpha)[0])) * (1 + 1e-5)
    # ... and it differs from plain PRUNE on ΔW (the metric matters)
    plain = restrain_delta_with_stats(delta, tau, alpha).delta
    assert not torch.allclose(plain, res.delta, atol=1e-3)


def test_key_aware_leaves_directions_ordinary_keys_never_reach():
    """An edit whose input direction C does not see (C v = 0) has zero key-space energy: left as it is."""
    g = gen(3)
    n = 10
    basis = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    c = basis[:, :6] @ basis[:, :6].T  # keys live in a 6-d subspace
    w0 = torch.randn(8, n, generator=g)
    root = sqrt_psd(c)
    tau = key_threshold(w0, root)
    v = basis[:, 7].float()
    delta = 1e3 * torch.randn(8, 1, generator=g) @ v[None]
    res = restrain_delta_key_aware(delta, root, tau)
    assert res.n_restrained == 0
    assert torch.equal(res.delta, delta)


def test_energy_rule_bounds_expected_output_change():
    g = gen(4)
    m, n = 20, 30
    c = random_psd(n, g) * 4
    root = sqrt_psd(c)
    w0 = torch.randn(m, n, generator=g)
    tau = key_threshold(w0, root, "energy", scale=0.1)
    delta = low_rank_delta(m, n, [10.0, 6.0, 3.0], g)
    f = float((delta.double() @ root).norm())
    assert f > tau
    res = restrain_delta_key_aware(delta, root, tau, rule="energy")
    f_after = float((res.delta.double() @ root).norm())  # = sqrt(E‖ΔW' k‖²)
    f_map = float(restrain_singular_values(torch.tensor([f], dtype=torch.float64), tau)[0])
    assert f_after == pytest.approx(f_map, rel=1e-4)
    assert res.n_restrained == 3  # every component shrinks by the same factor
    ratio = res.delta.double().norm() / delta.double().norm()
    assert float(ratio) == pytest.approx(f_map / f, rel=1e-4)


def test_key_threshold_rules_and_scale():
    g = gen(6)
    w0 = torch.randn(5, 7, generator=g)
    root = sqrt_psd(random_psd(7, g))
    m = w0.double() @ root
    assert key_threshold(w0, root) == pytest.approx(float(torch.linalg.matrix_norm(m, ord=2)), rel=1e-9)
    assert key_threshold(w0, root, "energy", 0.5) == pytest.approx(0.5 * float(m.norm()), rel=1e-9)
    with pytest.raises(ValueError):
        key_threshold(w0, root, "nuclear")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        key_threshold(w0, root, scale=0.0)


def test_key_aware_skips_below_the_cheap_bound_and_rejects_bad_input():
    g = gen(7)
    root = sqrt_psd(random_psd(6, g))
    delta = torch.randn(4, 6, generator=g) * 1e-3
    norm = float(torch.linalg.matrix_norm(root, ord=2))
    res = restrain_delta_key_aware(delta, root, 10.0, sqrt_c_norm=norm)
    assert res.method == "skipped" and res.delta is delta
    with pytest.raises(ValueError):
        restrain_delta_key_aware(delta, root[:5, :5], 1.0)
    with pytest.raises(ValueError):
        restrain_delta_key_aware(torch.full((4, 6), float("inf")), root, 1.0)
