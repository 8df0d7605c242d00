"""Time one PRUNE restraint step: the reference recipe (full numpy SVDs) against ours (cached σ_max, low-rank SVD).

The reference recipe is what mjy1111/PRUNE's ``read_weights`` does for each edited matrix:
``np.linalg.svd(W_0)`` and ``np.linalg.svd(ΔW)`` with ``full_matrices=True``, ``np.linalg.matrix_rank(ΔW)``,
map the singular values, rebuild ΔW' from the first ``rank`` components and write W_0 + ΔW'. Ours computes
σ_max(W_0) once per matrix (timed separately, not per step) and restrains with `restrain_delta_with_stats`.
Both sides include forming ΔW = W − W_0 and writing the new W. ``svd(W_0)`` does not depend on ΔW's rank, so the
reference times it once per shape and adds that time to every rank's row (marked in the JSON).
"ours" is a cold step (no prior basis); "warm" is the next step of a sequential run — one more rank-one edit on
top of the restrained W, SVD seeded with the previous basis, as `SpectralRestraint` does. Every result is also
checked against an exact float64 restraint built from the known factors of ΔW (cheap at any size).

    python benchmarks/bench_restraint.py --shapes 576x1536,1600x6400 --ranks 1,10,100 --repeats 7 --threads 1
    python benchmarks/bench_restraint.py --shapes 4096x14336 --ranks 1 --repeats 1   # ~tens of minutes per full SVD
    python benchmarks/bench_restraint.py --shapes 4096x14336 --no-reference         # ours only, seconds

Results are merged (keyed by shape and rank) into ``benchmarks/results/restraint.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from _common import add_output_args, merge_result, pin_threads  # benchmarks/ is on sys.path; loads no numpy/torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="576x1536,1600x6400,4096x14336", help="comma-separated MxN weight shapes")
    p.add_argument("--ranks", default="1,10,100", help="comma-separated ranks of ΔW")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of our restraint step (median reported)")
    p.add_argument("--baseline-repeats", type=int, default=1, help="timed repeats of the reference recipe")
    p.add_argument("--no-reference", action="store_true", help="skip the full-SVD reference (e.g. 4096x14336 on a small CPU)")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p, "restraint.json", threads=0)  # threads: both sides (numpy's BLAS and torch)
    return p.parse_args(argv)


ARGS = parse_args()
pin_threads(ARGS.threads)  # before numpy loads its BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

from prune_lit.restraint import restrain_delta_with_stats, restrain_singular_values, spectral_norm  # noqa: E402


def make_w0(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """``[m, n]`` float32 with a trained-weight-like spectrum: a Marchenko-Pastur bulk plus a few decaying spikes."""
    w = torch.randn(m, n, generator=gen) * 0.02
    for j in range(8):
        u = torch.randn(m, 1, generator=gen)
        v = torch.randn(1, n, generator=gen)
        w += (u / u.norm()) @ (v / v.norm()) * (2.0 / (j + 1))
    return w


def make_delta(m: int, n: int, r: int, sigma0: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``r`` rank-one edits sized from 3 down to 0.2 σ_max(W_0) (r = 1: one 3 σ_max edit), as in long sequential editing.

    Returns the factors ``A [m, r]`` and ``B [r, n]`` (ΔW = A B), so an exact float64 reference is cheap.
    """
    u = torch.randn(m, r, generator=gen)
    v = torch.randn(r, n, generator=gen)
    scale = torch.linspace(3.0, 0.2, r) * sigma0
    return (u / u.norm(dim=0)) * scale, v / v.norm(dim=1, keepdim=True)


def factor_reference(a: torch.Tensor, b: torch.Tensor, sigma0: float, alpha: float) -> torch.Tensor:
    """Exact restrained ΔW' in float64 from the factors of ΔW = A B (QR of each factor, SVD of an r×r core)."""
    qa, ra = torch.linalg.qr(a.double())
    qb, rb = torch.linalg.qr(b.double().T)
    um, s, vmh = torch.linalg.svd(ra @ rb.T)
    s2 = restrain_singular_values(s, sigma0, alpha, "log")
    return ((qa @ um) * s2) @ (qb @ vmh.T).T


def reference_step(w_np: np.ndarray, w0_np: np.ndarray, alpha: float, timings: dict[str, float], svd_w0: bool) -> np.ndarray:
    """The reference recipe on numpy float32; returns the new W. Adds per-part seconds to ``timings``."""
    t = time.perf_counter()
    delta = w_np - w0_np
    if svd_w0:
        _, s0, _ = np.linalg.svd(w0_np, full_matrices=True)
        timings["svd_w0"] = time.perf_counter() - t
        t = time.perf_counter()
    u, s, v = np.linalg.svd(delta, full_matrices=True)
    timings["svd_delta"] = time.perf_counter() - t
    t = time.perf_counter()
    rank = np.linalg.matrix_rank(delta)
    timings["matrix_rank"] = time.perf_counter() - t
    t = time.perf_counter()
    s_max = timings["_sigma0"] if not svd_w0 else float(s0[0])
    timings["_sigma0"] = s_max
    s2 = s.copy()
    hit = s2 >= s_max
    s2[hit] = np.log(s2[hit]) / np.log(alpha) + s_max - np.log(s_max) / np.log(alpha)
    delta1 = (u[:, :rank] * s2[:rank]) @ v[:rank]
    w_new = w0_np + delta1
    timings["restrain_rebuild"] = time.perf_counter() - t
    return w_new


def ours_step(w: torch.Tensor, w0: torch.Tensor, sigma0: float, alpha: float, init: torch.Tensor | None = None):
    """Restrain ``w`` in place (as `SpectralRestraint` writes a float32 weight); returns it and the result."""
    delta = w - w0
    res = restrain_delta_with_stats(delta, sigma0, alpha, "log", init_basis=init)
    return res.apply_(w), res


def timed_steps(w: torch.Tensor, repeats: int, **kw) -> tuple[list[float], torch.Tensor, object]:
    """``repeats`` timed `ours_step` calls, each on a fresh copy of ``w`` (copied outside the timer)."""
    times = []
    for _ in range(repeats):
        wc = w.clone()
        t = time.perf_counter()
        out, res = ours_step(wc, **kw)
        times.append(time.perf_counter() - t)
    return times, out, res


def merge_results(out: Path, rows: list[dict], meta: dict) -> None:
    """Replace the rows of the same shape and rank in ``out`` by these, and add the run's meta."""
    def update(data: dict) -> None:
        keys = {(r["shape"], r["rank"]) for r in rows}
        data["rows"] = [r for r in data["rows"] if (r["shape"], r["rank"]) not in keys] + rows
        data["rows"].sort(key=lambda r: (r["m"] * r["n"], r["rank"]))
        data["runs"].append(meta)

    merge_result(out, {"rows": [], "runs": []}, update)


def main(args: argparse.Namespace) -> int:
    alpha = float(np.e)
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",") if s]
    ranks = [int(r) for r in args.ranks.split(",") if r]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {
        "started": started,
        "argv": sys.argv[1:],
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "loadavg_at_start": os.getloadavg(),
        "threads": args.threads or "default",
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    rows: list[dict] = []
    worst = 0.0
    for m, n in shapes:
        gen = torch.Generator().manual_seed(args.seed)
        w0 = make_w0(m, n, gen)
        t = time.perf_counter()
        sigma0 = spectral_norm(w0)  # once per matrix, cached by the callback
        sigma_seconds = time.perf_counter() - t
        w0_np = w0.numpy()
        shared: dict[str, float] = {}
        for i, r in enumerate(ranks):
            fa, fb = make_delta(m, n, r, sigma0, gen)
            w = w0 + fa @ fb
            w_np = w.numpy()
            base_times: list[dict[str, float]] = []
            for rep in range(0 if args.no_reference else args.baseline_repeats):
                tm: dict[str, float] = dict(shared)
                first = i == 0 and rep == 0
                w_ref = reference_step(w_np, w0_np, alpha, tm, svd_w0=first)
                if first:
                    shared = {"svd_w0": tm["svd_w0"], "_sigma0": tm["_sigma0"]}
                base_times.append(tm)
            ours_times, w_ours, res = timed_steps(w, args.repeats, w0=w0, sigma0=sigma0, alpha=alpha)
            # Warm step, as inside sequential editing: one more rank-one edit on top of the restrained W, and the
            # SVD seeded with the previous step's basis (what SpectralRestraint does between steps).
            da, db = make_delta(m, n, 1, 0.5 * sigma0, gen)
            w_next = w_ours + da @ db
            warm_times, w_warm, res_warm = timed_steps(w_next, args.repeats, w0=w0, sigma0=sigma0, alpha=alpha, init=res.basis)
            warm_exact = factor_reference(
                torch.cat([fa, res.left, da], 1), torch.cat([fb, res.right, db], 0), sigma0, alpha
            )
            rel_warm = float(((w_warm.double() - w0.double()) - warm_exact).norm() / warm_exact.norm())
            del warm_exact, w_next, w_warm
            our_delta = w_ours.double() - w0.double()
            exact = factor_reference(fa, fb, sigma0, alpha)
            rel_exact = float((our_delta - exact).norm() / exact.norm())
            del exact
            rel = None
            if base_times:
                ref_delta = torch.from_numpy(w_ref).double() - w0.double()
                rel = float((our_delta - ref_delta).norm() / ref_delta.norm())
                del w_ref, ref_delta
            worst = max(worst, rel_exact, rel_warm, rel or 0.0)
            del our_delta
            keys = ("svd_w0", "svd_delta", "matrix_rank", "restrain_rebuild")
            parts = {k: float(np.median([b[k] for b in base_times])) for k in keys} if base_times else None
            base_total = sum(parts.values()) if parts else None
            ours = float(np.median(ours_times))
            warm = float(np.median(warm_times))
            row = {
                "shape": f"{m}x{n}",
                "m": m,
                "n": n,
                "rank": r,
                "reference_seconds": base_total,
                "reference_parts_seconds": parts,
                "reference_svd_w0_timed_once_per_shape": True,
                "reference_repeats": 0 if args.no_reference else args.baseline_repeats,
                "ours_seconds_median": ours,
                "ours_seconds_min": min(ours_times),
                "ours_seconds_all": ours_times,
                "ours_repeats": args.repeats,
                "ours_warm_seconds_median": warm,
                "ours_warm_seconds_min": min(warm_times),
                "ours_warm_rank_found": res_warm.rank,
                "ours_warm_method": res_warm.method,
                "speedup_warm": base_total / warm if parts else None,
                "rel_diff_warm_vs_exact_float64": rel_warm,
                "sigma_max_w0_seconds_once": sigma_seconds,
                "speedup": base_total / ours if parts else None,
                "speedup_vs_svd_delta_only": parts["svd_delta"] / ours if parts else None,
                "speedup_warm_vs_svd_delta_only": parts["svd_delta"] / warm if parts else None,
                "rel_diff_vs_reference_recipe": rel,
                "rel_diff_vs_exact_float64": rel_exact,
                "n_restrained": res.n_restrained,
                "ours_method": res.method,
                "ours_rank_found": res.rank,
                "sigma_max_w0": sigma0,
                "sigma_max_delta_before": res.sigma_max_before,
                "sigma_max_delta_after": res.sigma_max_after,
                "reference_sigma_max_w0": shared.get("_sigma0"),
            }
            rows.append(row)
            ref_txt = (
                f"reference {base_total:9.3f} s (svd W0 {parts['svd_w0']:.2f}, svd ΔW {parts['svd_delta']:.2f}, "
                f"rank {parts['matrix_rank']:.2f})  speedup {base_total / ours:9.1f}x  rel diff vs reference {rel:.1e}"
                if parts
                else "reference not run"
            )
            print(
                f"{m}x{n} r={r:<4d} ours {ours * 1e3:9.2f} ms (warm {warm * 1e3:8.2f} ms)  {ref_txt}  "
                f"rel diff vs exact {rel_exact:.1e} (warm {rel_warm:.1e})  restrained {res.n_restrained}",
                flush=True,
            )
        merge_results(Path(args.out), rows, {**meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        rows = []
    ok = worst <= 1e-4
    print(f"worst relative difference {worst:.2e} ({'OK' if ok else 'ABOVE'} the 1e-4 tolerance)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(ARGS))
