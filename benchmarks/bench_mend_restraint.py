"""MEND's per-edit PRUNE restraint: dense `SpectralRestraint` vs `FactoredSpectralRestraint`, on real MEND edits.

1. Runs ``--n-edits`` sequential MEND edits (CounterFact edit split, one case per step) on SmolLM2-135M with a trained
   hypernetwork, timing each edit step and recording its thin factors (ΔW = A Bᵀ per inner matrix).
2. Replays the same updates from W_0 through each restraint callback (restraint after every edit), timing only
   the callback, once per ``--scales`` value s (every A multiplied by s: s > 1 emulates larger edits, so that
   σ_max(ΔW) exceeds σ_max(W_0) and restraint has work to do).
3. Reports restraint time / MEND step time (the share), the paths taken, and the largest relative difference of the
   final ΔW between the two callbacks.

    OMP_NUM_THREADS=1 python benchmarks/bench_mend_restraint.py --checkpoint checkpoints/mend/best.ckpt \\
        --n-edits 100 --scales 1,10 --out benchmarks/results/mend_restraint.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from _common import add_output_args, pin_threads, portable, write_result  # benchmarks/ is on sys.path

from prune_lit.callbacks import SpectralRestraint
from prune_lit.callbacks.factored_restraint import FactoredSpectralRestraint
from prune_lit.contracts import EditResult, EditState
from prune_lit.data.edit_datamodule import load_edit_requests
from prune_lit.editors.mend import MENDEditor
from prune_lit.models.arch import get_weight, set_weight
from prune_lit.models.loader import load_model


def record(args: argparse.Namespace, lm) -> tuple[list[float], list[dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
    """Sequential MEND edits: per-step seconds and thin factors (CPU float32)."""
    editor = MENDEditor(args.checkpoint, input_z_clip=args.input_z_clip)
    editor.prepare(lm.model, lm.tokenizer, args.model, None)
    requests = load_edit_requests("counterfact", "edit", limit=args.n_edits)
    seconds, factors = [], []
    for req in requests:
        t = time.perf_counter()
        with torch.enable_grad():
            res = editor.edit(lm.model, lm.tokenizer, [req])
        seconds.append(time.perf_counter() - t)
        factors.append({n: (a.detach().cpu().clone(), b.detach().cpu().clone()) for n, (a, b) in res.factors.items()} if res.applied else {})
    return seconds, factors


def replay(model, w0: dict[str, torch.Tensor], factors, scale: float, callback) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Apply the recorded updates (×``scale``) from W_0 as the loop does, timing only ``callback.on_edit_step``."""
    for n, w in w0.items():
        set_weight(model, n, w)
    state = EditState(model=model, tokenizer=None, original_weights=w0)
    for n in w0:  # one-off σ_max(W_0), outside the per-step times
        callback.sigma_max_w0(n, w0[n])
    times = []
    for f in factors:
        scaled = {n: (a * scale, b) for n, (a, b) in f.items()}
        deltas = {n: a @ b.T for n, (a, b) in scaled.items()}
        for n, d in deltas.items():
            set_weight(model, n, get_weight(model, n) + d)  # as apply_deltas: float32 ΔW added to W
        state.record_step([None], EditResult(deltas, applied=bool(f), factors=scaled), 0.0)
        t = time.perf_counter()
        callback.on_edit_step(None, state)
        times.append(time.perf_counter() - t)
    final = {n: get_weight(model, n).clone() for n in w0}
    return times, final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--checkpoint", default="checkpoints/mend/best.ckpt")
    p.add_argument("--n-edits", type=int, default=100)
    p.add_argument("--input-z-clip", type=float, default=None, help="MENDEditor's input_z_clip (None: as trained)")
    p.add_argument("--scales", default="1,10", help="comma-separated multipliers of every A factor in the replay")
    add_output_args(p, "mend_restraint.json")
    args = p.parse_args()
    pin_threads(args.threads)
    lm = load_model(args.model)
    editor_names = None
    t0 = time.time()
    seconds, factors = record(args, lm)
    editor_names = sorted({n for f in factors for n in f})
    model = lm.model
    # W_0: undo the recorded edits exactly is not possible in float32, so reload the weights
    fresh = load_model(args.model).model
    w0 = {n: get_weight(fresh, n).clone().float() for n in editor_names}
    del fresh
    step_median = statistics.median(seconds)
    out = {
        "command": "python benchmarks/bench_mend_restraint.py " + " ".join(
            f"--{k.replace('_', '-')} {portable(v) if k in ('checkpoint', 'out') else v}" for k, v in vars(args).items() if v is not None),
        "machine": {"platform": platform.platform(), "threads": args.threads, "load_avg": os.getloadavg()},
        "checkpoint": portable(args.checkpoint),
        "input_z_clip": args.input_z_clip,
        "n_edits": args.n_edits,
        "mend_step_s": {"median": step_median, "mean": statistics.mean(seconds), "total": sum(seconds)},
        "record_wall_s": time.time() - t0,
        "runs": [],
    }
    print(f"MEND: {len(seconds)} edits, median step {step_median:.3f} s, total {sum(seconds):.1f} s")
    for scale in [float(s) for s in args.scales.split(",")]:
        finals = {}
        for variant in ("dense", "factored"):
            cb = SpectralRestraint() if variant == "dense" else FactoredSpectralRestraint()
            times, finals[variant] = replay(model, w0, factors, scale, cb)
            restrained = sum(sum(h["n_restrained"].values()) for h in cb.history)
            row = {
                "scale": scale, "variant": variant, "restraint_total_s": sum(times), "restraint_median_s": statistics.median(times),
                "restraint_last10_mean_s": statistics.mean(times[-10:]), "share_of_mend_step": sum(times) / sum(seconds),
                "share_median": statistics.median(times) / step_median, "n_restrained_total": restrained,
                "method_counts": dict(cb.method_counts) if variant == "factored" else None,
            }  # fmt: skip
            out["runs"].append(row)
            print(
                f"scale {scale:g} {variant:8s}: restraint {sum(times):7.2f} s in all, median {1e3 * row['restraint_median_s']:7.1f} ms/edit, "
                f"last 10 {1e3 * row['restraint_last10_mean_s']:7.1f} ms/edit, share {100 * row['share_of_mend_step']:5.1f} % "
                f"(median {100 * row['share_median']:5.1f} %), σ restrained {restrained}, paths {row['method_counts']}"
            )
        diff = max(
            float((finals["factored"][n] - finals["dense"][n]).norm() / (finals["dense"][n] - w0[n]).norm().clamp_min(1e-30)) for n in w0
        )
        out["runs"][-1]["max_rel_diff_vs_dense"] = diff
        print(f"scale {scale:g}: max relative difference of the final ΔW, factored vs dense: {diff:.2e}")
        ratio = out["runs"][-2]["restraint_total_s"] / max(out["runs"][-1]["restraint_total_s"], 1e-9)
        out["runs"][-1]["speedup_vs_dense"] = ratio
        print(f"scale {scale:g}: factored is {ratio:.1f}x faster than dense")
    write_result(args.out, out)


if __name__ == "__main__":
    main()
