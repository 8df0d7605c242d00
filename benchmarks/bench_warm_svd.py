"""Warm-started SVDs in the spectral callbacks: restraint and diagnostics time per step, warm vs cold.

MEND's accumulated ΔW gains ~10 rank per edit in each of its 9 inner matrices (docs/benchmarks.md). This script
replays that growth on the real SmolLM2-135M matrices MEND edits (gate/up/down of layers 27–29): each step adds a
random rank-``--rank-per-step`` update of spectral size ``--scale``·σ_max(W_0) to every matrix, then runs
`SpectralRestraint.restrain` and `SpectralDiagnostics.measure` (without κ). Two variants see the same updates:
``warm`` (the callbacks keep their `WarmStarts`: last basis, full-rank memory) and ``cold`` (reset before every
step, i.e. the behaviour before warm starts). Both must give the same weights (checked).

    python benchmarks/bench_warm_svd.py --steps 40 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import add_output_args, machine_meta, pin_threads, portable, write_result  # benchmarks/ is on sys.path

from prune_lit.contracts import EditState
from prune_lit.callbacks import SpectralDiagnostics, SpectralRestraint
from prune_lit.editors.mend_net import default_inner_params
from prune_lit.models.arch import get_weight, set_weight
from prune_lit.models.loader import load_model
from prune_lit.restraint import WarmStarts, spectral_norm


def run(variant: str, args: argparse.Namespace) -> dict:
    model = load_model(args.model).model
    names = default_inner_params(model, args.layers)  # the matrices MEND edits
    w0 = {n: get_weight(model, n).clone().float() for n in names}
    sigma0 = {n: spectral_norm(w) for n, w in w0.items()}
    module = EditState(model=model, tokenizer=None, original_weights=w0)
    restraint, diagnostics = SpectralRestraint(), SpectralDiagnostics()
    for n in names:  # one-off σ(W_0), outside the per-step times
        restraint.sigma_max_w0(n, w0[n])
        diagnostics.w0_spectrum(n, w0[n])
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for step in range(1, args.steps + 1):
        for n in names:
            w = get_weight(model, n)
            m, k = w.shape
            a = torch.linalg.qr(torch.randn(m, args.rank_per_step, generator=gen))[0]
            b = torch.linalg.qr(torch.randn(k, args.rank_per_step, generator=gen))[0]
            sizes = torch.linspace(args.scale, 0.1 * args.scale, args.rank_per_step) * sigma0[n]
            set_weight(model, n, w + (a * sizes) @ b.T)
        module.requests_seen = step
        if variant == "cold":
            restraint.warm, diagnostics.warm = WarmStarts(), WarmStarts()
        t = time.perf_counter()
        restraint.restrain(module)
        t_restraint = time.perf_counter() - t
        t = time.perf_counter()
        diagnostics.measure(module, None, with_kappa=False)
        rows.append({"step": step, "restraint_s": t_restraint, "diagnostics_s": time.perf_counter() - t})
    final = {n: get_weight(model, n).clone() for n in names}
    return {"rows": rows, "final": final, "full_rank": sorted(restraint.warm.full_rank)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rank-per-step", type=int, default=10)
    p.add_argument("--scale", type=float, default=0.5, help="largest σ of each step's update, in σ_max(W_0)")
    p.add_argument("--layers", type=int, nargs="+", default=[27, 28, 29])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seed", type=int, default=0)
    add_output_args(p, "warm_svd.json")
    args = p.parse_args()
    pin_threads(args.threads)
    meta = {"argv": vars(args) | {"out": portable(args.out)}} | machine_meta()
    out = {}
    for variant in ("cold", "warm"):
        out[variant] = run(variant, args)
        r = out[variant]["rows"]
        print(
            f"{variant}: restraint {sum(x['restraint_s'] for x in r):.2f} s, diagnostics {sum(x['diagnostics_s'] for x in r):.2f} s "
            f"over {len(r)} steps; last step {r[-1]['restraint_s'] * 1e3:.0f} / {r[-1]['diagnostics_s'] * 1e3:.0f} ms; "
            f"full rank at the end: {len(out[variant]['full_rank'])} of 9",
            flush=True,
        )
    worst = max(
        float((out["warm"]["final"][n].double() - out["cold"]["final"][n].double()).norm() / out["cold"]["final"][n].double().norm())
        for n in out["cold"]["final"]
    )
    totals = {
        v: {k: sum(x[k] for x in out[v]["rows"]) for k in ("restraint_s", "diagnostics_s")} for v in ("cold", "warm")
    }
    speedup = {k: totals["cold"][k] / totals["warm"][k] for k in ("restraint_s", "diagnostics_s")}
    print(f"warm vs cold: restraint {speedup['restraint_s']:.2f}x, diagnostics {speedup['diagnostics_s']:.2f}x; "
          f"weights differ by {worst:.1e} (relative Frobenius, worst matrix)")
    write_result(
        args.out,
        {
            "meta": meta | {"finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "totals": totals,
            "speedup_warm_over_cold": speedup,
            "max_rel_weight_difference": worst,
            "rows": {v: out[v]["rows"] for v in ("cold", "warm")},
            "full_rank_at_end": {v: out[v]["full_rank"] for v in ("cold", "warm")},
        },
    )


if __name__ == "__main__":
    main()
