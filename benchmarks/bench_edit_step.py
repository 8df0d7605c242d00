"""Time ROME / MEMIT / MEND edit steps on SmolLM2-135M against a FLOP floor, and PRUNE restraint's share of a step.

What is timed: ``editor.edit(model, tokenizer, requests)`` on CounterFact edit cases (file order), one step after
another on the same model (sequential editing), after ``editor.prepare`` (context templates, cached key
statistics, MEND checkpoint; timed separately, not part of a step). After every step the accumulated
ΔW = W − W_0 of each edited matrix is restrained with `SpectralRestraint.restrain` (an `EditState` holding the
model and the W_0 snapshot; warm SVD bases across steps, as in a run); σ_max(W_0) is computed once per matrix
beforehand and reported separately. Restraint share = restraint seconds / (edit seconds + restraint seconds).

FLOP floor — the FLOPs of the forward/backward passes the step's code actually runs, counted, not guessed:
every ``nn.Linear`` call during the step adds ``2 · rows · in · out`` (rows = tokens in its input, padding
included); a forward that the code stops early (keys / values are read at layer 4-7 with a hook that raises)
counts only the layers it ran, and the output head counts only the positions it is applied to (ROME/MEMIT's
value search projects only the target positions; MEND's fine-tuning NLL projects all positions). Backward: a
gradient hook on each Linear output that requires grad adds ``2 · rows · in · out`` for the input gradient when
the gradient really reaches it (the models are frozen, so no weight gradients: backward ≈ 1× forward, and only
over the layers between the loss and the injected δ / the MEND inner params; the textbook "2× forward" would
double this part, stored as ``floor_seconds_2x_backward``). Per step that is, for ROME (one request):
keys = 1 forward of the 6 context-template prompts up to layer 4's ``down_proj`` input; value search =
``v_num_grad_steps`` forwards of the 6 template prompts + the KL prompt through all 30 layers (head on the target
positions) with a backward down to layer 4 for each step taken (early stopping ends it sooner), plus one forward
for v_init and one for the KL reference. MEMIT (batch of n): the value search per request at layer 7, then for each
of the 5 edited layers one key forward (6·n prompts, to that layer) and one forward of the n plain prompts to
layer 7; plus the analytic FLOPs of its float64 solve per layer (``λC + KKᵀ``: 2·d_in²·n, ``K Rᵀ``: 2·d_in·n·d_out,
LU (2/3)·d_in³, two triangular solves 2·d_in²·d_out), timed on the float64 matmul rate. MEND: one forward of
prompt + target through all layers and head, a backward from the loss to layer 27's MLP outputs, plus the
hypernetwork counted analytically (two rank-r residual layers on 2112-dim rows: 2·2·rows·2112·r·2 per matrix,
and ΔW = ũᵀδ̃: 2·rows·d_in·d_out per matrix). Not counted: attention score products, norms, activations,
softmax (small at ≤ 40 tokens), Adam on a 576-vector, Python overhead.

Floor time = FLOPs / the best float32 rate of ``torch.matmul`` on 1024×1024 measured at the start of the same run
(float64 rate for MEMIT's solve), i.e. this CPU at its measured peak with the same thread count; the rate at the
end of the run is stored too, to show how the load changed. Ratio = measured step time / floor time.

    nice -n 5 python benchmarks/bench_edit_step.py --editors rome,memit,mend --n-edits 2 --threads 1

Results are merged (keyed by editor) into ``benchmarks/results/edit_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _common import add_output_args, merge_result, pin_threads  # benchmarks/ is on sys.path; loads no numpy/torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--editors", default="rome,memit,mend", help="comma-separated subset of rome,memit,mend")
    p.add_argument("--n-edits", type=int, default=3, help="edits per editor (ROME/MEND: one per step)")
    p.add_argument("--memit-batch", type=int, default=2, help="requests per MEMIT step")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mend-checkpoint", default="checkpoints/mend/best.ckpt")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--alpha", type=float, default=2.718281828459045)
    p.add_argument("--restrain-every", type=int, default=1, help="restrain when the edit count crosses a multiple of k (every_n_edits)")
    add_output_args(p, "edit_step.json")
    return p.parse_args(argv)


ARGS = parse_args()
pin_threads(ARGS.threads)  # before torch loads its BLAS

import torch  # noqa: E402

from flop_count import LinearFlops, matmul_rate  # noqa: E402
from prune_lit.contracts import EditState, crossed  # noqa: E402
from prune_lit.callbacks import restraint as restraint_mod  # noqa: E402
from prune_lit.callbacks.restraint import SpectralRestraint  # noqa: E402
from prune_lit.data import load_counterfact  # noqa: E402
from prune_lit.editors import memit as memit_mod  # noqa: E402
from prune_lit.editors import mend as mend_mod  # noqa: E402
from prune_lit.editors import rome as rome_mod  # noqa: E402
from prune_lit.models.arch import get_weight  # noqa: E402
from prune_lit.models.loader import load_model  # noqa: E402


class RestraintProbe:
    """Records, per matrix, the SVD method and the rank `restrain_delta_with_stats` found inside the callback."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._fn = restraint_mod.restrain_delta_with_stats

    def __enter__(self) -> "RestraintProbe":
        def probe(delta, *a, **kw):  # noqa: ANN001, ANN002, ANN003
            t = time.perf_counter()
            res = self._fn(delta, *a, **kw)
            self.calls.append({"method": res.method, "rank": res.rank, "seconds": time.perf_counter() - t,
                               "warm_start": kw.get("init_basis") is not None, "n_restrained": res.n_restrained})
            return res

        restraint_mod.restrain_delta_with_stats = probe
        return self

    def __exit__(self, *exc: object) -> None:
        restraint_mod.restrain_delta_with_stats = self._fn


class Components:
    """Wraps module-level functions an editor calls, to time them and attribute counted FLOPs to them."""

    def __init__(self, counter: LinearFlops) -> None:
        self.counter = counter
        self.seconds: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self.extra_flops: dict[str, int] = {}  # analytic, outside nn.Linear
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, attr: str, label: str, analytic=None) -> None:  # noqa: ANN001
        fn = getattr(owner, attr)

        def wrapped(*a, **kw):  # noqa: ANN002, ANN003
            f0 = self.counter.forward + self.counter.backward
            t = time.perf_counter()
            out = fn(*a, **kw)
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t
            self.flops[label] = self.flops.get(label, 0) + self.counter.forward + self.counter.backward - f0
            if analytic is not None:
                self.extra_flops[label] = self.extra_flops.get(label, 0) + int(analytic(a, kw, out))
            return out

        setattr(owner, attr, wrapped)
        self._undo.append((owner, attr, fn))

    def reset(self) -> None:
        self.seconds.clear()
        self.flops.clear()
        self.extra_flops.clear()

    def restore(self) -> None:
        for owner, attr, fn in reversed(self._undo):
            setattr(owner, attr, fn)
        self._undo.clear()


def memit_solve_flops(a: tuple, kw: dict, out: torch.Tensor) -> int:
    W, K = a[0], a[1]
    d_out, d_in = W.shape
    n = K.shape[1]
    return 2 * d_in * d_in * n + 2 * d_in * n * d_out + (2 * d_in**3) // 3 + 2 * d_in * d_in * d_out


def make_editor(name: str, args: argparse.Namespace):  # noqa: ANN201
    if name == "rome":
        return rome_mod.ROMEEditor()
    if name == "memit":
        return memit_mod.MEMITEditor()
    if name == "mend":
        return mend_mod.MENDEditor(checkpoint=args.mend_checkpoint)
    raise ValueError(f"unknown editor {name!r}")


def instrument(name: str, editor, comps: Components) -> None:  # noqa: ANN001
    if name == "rome":
        comps.wrap(rome_mod, "compute_keys", "keys")
        comps.wrap(rome_mod, "optimise_target", "value_search")
        comps.wrap(rome_mod, "rome_update", "closed_form_update")
        comps.wrap(rome_mod, "apply_deltas", "apply_deltas")
    elif name == "memit":
        comps.wrap(memit_mod, "optimise_target", "value_search")
        comps.wrap(memit_mod, "compute_keys", "keys")
        comps.wrap(memit_mod, "module_io_at", "z_now_forwards")
        comps.wrap(memit_mod, "memit_update", "float64_solve", memit_solve_flops)
        comps.wrap(memit_mod, "apply_deltas", "apply_deltas")
    elif name == "mend":
        rank = int(editor.meta["rank"])
        n_layers = int(editor.meta["n_hidden"]) + 1

        def hyper_flops(a: tuple, kw: dict, out: tuple) -> int:
            _loss, factors, _logits = out
            total = 0
            for u, d in factors.values():
                rows = int(((u.abs().sum(1) > 0) & (d.abs().sum(1) > 0)).sum())
                dim = u.shape[1] + d.shape[1]
                total += n_layers * 2 * 2 * rows * dim * rank + 2 * rows * u.shape[1] * d.shape[1]
            return total

        comps.wrap(mend_mod, "finetune_factors", "finetune_forward_backward", hyper_flops)
        hyper = editor.hypernet
        fwd = hyper.forward

        def timed_forward(*a, **kw):  # noqa: ANN002, ANN003
            t = time.perf_counter()
            out = fwd(*a, **kw)
            comps.seconds["hypernet"] = comps.seconds.get("hypernet", 0.0) + time.perf_counter() - t
            return out

        hyper.forward = timed_forward
        comps.wrap(mend_mod, "apply_deltas", "apply_deltas")


def merge_results(out: Path, rows: list[dict], meta: dict) -> None:
    """Add this run's editors (keyed by name and restraint period) and its meta to ``out``."""
    def update(data: dict) -> None:
        for r in rows:
            k = r.get("restrain_every_n_edits", 1)
            data["editors"][r["editor"] + (f"_restrain_every_{k}" if k > 1 else "")] = r
        data["runs"].append(meta)

    merge_result(out, {"editors": {}, "runs": []}, update)


def run_editor(name: str, args: argparse.Namespace, requests: list, rate32: float, rate64: float) -> dict | None:
    if name == "mend" and not Path(args.mend_checkpoint).is_file():
        print(f"mend: skipped, checkpoint {args.mend_checkpoint!r} not found (train one: python cli.py fit --config configs/mend.yaml)")
        return None
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    editor = make_editor(name, args)
    t = time.perf_counter()
    editor.prepare(model, tok, loaded.name, args.data_dir)
    prepare_s = time.perf_counter() - t
    names = editor.weight_names(model)
    w0 = {n: get_weight(model, n).detach().float().clone() for n in names}
    restraint = SpectralRestraint(alpha=args.alpha)
    fake = EditState(model=model, tokenizer=tok, original_weights=w0)
    t = time.perf_counter()
    sigma = {n: restraint.sigma_max_w0(n, w) for n, w in w0.items()}
    sigma_s = time.perf_counter() - t
    counter = LinearFlops(model)
    comps = Components(counter)
    instrument(name, editor, comps)
    batch = args.memit_batch if name == "memit" else 1
    steps = [requests[i : i + batch] for i in range(0, min(args.n_edits, len(requests)), batch)]
    rows = []
    try:
        with counter:
            for i, reqs in enumerate(steps):
                counter.reset()
                comps.reset()
                t = time.perf_counter()
                result = editor.edit(model, tok, reqs)
                step_s = time.perf_counter() - t
                fwd, bwd = counter.forward, counter.backward
                extra = sum(comps.extra_flops.values())
                solve = comps.extra_flops.get("float64_solve", 0)
                passes_s = (fwd + bwd) / (rate32 * 1e9)
                floor_s = passes_s + (extra - solve) / (rate32 * 1e9) + solve / (rate64 * 1e9)
                floor2_s = floor_s + bwd / (rate32 * 1e9)
                previous = fake.requests_seen
                fake.requests_seen += len(reqs)
                hist_before = len(restraint.history)
                due = crossed(previous, fake.requests_seen, args.restrain_every)
                with RestraintProbe() as probe:
                    if due:
                        restraint.restrain(fake)
                rs = restraint.history[hist_before]["seconds"] if due else 0.0
                n_restr = restraint.history[hist_before]["n_restrained"] if due else {}
                row = {
                    "step": i,
                    "n_requests": len(reqs),
                    "applied": bool(result.applied),
                    "edit_seconds": step_s,
                    "components_seconds": dict(comps.seconds),
                    "components_gflop": {k: v / 1e9 for k, v in comps.flops.items()},
                    "analytic_gflop": {k: v / 1e9 for k, v in comps.extra_flops.items()},
                    "linear_forward_gflop": fwd / 1e9,
                    "linear_backward_gflop": bwd / 1e9,
                    "floor_seconds": floor_s,
                    "floor_seconds_2x_backward": floor2_s,
                    "ratio_to_floor": step_s / floor_s if floor_s > 0 else None,
                    "restraint_seconds": rs,
                    "restraint_share": rs / (step_s + rs),
                    "n_restrained": n_restr,
                    "restraint_per_matrix": probe.calls,
                    "value_search_steps": result.stats.steps,
                    "edit_stats": result.stats.scalars(),
                }
                rows.append(row)
                comp_txt = ", ".join(f"{k} {v:.2f}s" for k, v in comps.seconds.items())
                print(
                    f"{name} step {i} ({len(reqs)} req): {step_s:7.2f} s  floor {floor_s:6.3f} s "
                    f"({(fwd + bwd + extra) / 1e9:.1f} GFLOP)  ratio {step_s / floor_s:6.1f}x  "
                    f"restraint {rs * 1e3:7.1f} ms ({100 * rs / (step_s + rs):.1f} %), restrained {sum(n_restr.values())}, "
                    f"ΔW ranks {[c['rank'] for c in probe.calls]}  "
                    f"[{comp_txt}]",
                    flush=True,
                )
    finally:
        comps.restore()
    edit_s = [r["edit_seconds"] for r in rows]
    rest_s = [r["restraint_seconds"] for r in rows]
    comp_tot: dict[str, float] = {}
    for r in rows:
        for k, v in r["components_seconds"].items():
            comp_tot[k] = comp_tot.get(k, 0.0) + v
    summary = {
        "editor": name,
        "model": loaded.name,
        "edited_matrices": {n: list(w.shape) for n, w in w0.items()},
        "sigma_max_w0": sigma,
        "sigma_max_w0_seconds_once": sigma_s,
        "prepare_seconds": prepare_s,
        "n_steps": len(rows),
        "requests_per_step": batch,
        "restrain_every_n_edits": args.restrain_every,
        "edit_seconds_median": statistics.median(edit_s),
        "edit_seconds_total": sum(edit_s),
        "floor_seconds_median": statistics.median(r["floor_seconds"] for r in rows),
        "ratio_to_floor_median": statistics.median(r["ratio_to_floor"] for r in rows),
        "restraint_seconds_median": statistics.median(rest_s),
        "restraint_seconds_total": sum(rest_s),
        "restraint_share_overall": sum(rest_s) / (sum(edit_s) + sum(rest_s)),
        "components_share_of_edit_time": {k: v / sum(edit_s) for k, v in comp_tot.items()},
        "steps": rows,
    }
    print(
        f"{name}: median step {summary['edit_seconds_median']:.2f} s, floor {summary['floor_seconds_median']:.3f} s, "
        f"ratio {summary['ratio_to_floor_median']:.1f}x, restraint share {100 * summary['restraint_share_overall']:.1f} % "
        f"(target <= 5 %), prepare {prepare_s:.1f} s, sigma_max(W_0) once {sigma_s:.2f} s",
        flush=True,
    )
    return summary


def main(args: argparse.Namespace) -> int:
    editors = [e.strip() for e in args.editors.split(",") if e.strip()]
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:],
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "loadavg_at_start": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    rate_start = matmul_rate()
    print(f"matmul 1024x1024 float32: best {rate_start['float32_gflops_best']:.1f} GFLOP/s, median "
          f"{rate_start['float32_gflops_median']:.1f}; float64 best {rate_start['float64_gflops_best']:.1f} GFLOP/s "
          f"({torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.2f})", flush=True)
    requests = load_counterfact("edit", data_dir=args.data_dir, limit=args.n_edits)
    rows = []
    for name in editors:
        r = run_editor(name, args, requests, rate_start["float32_gflops_best"], rate_start["float64_gflops_best"])
        if r is not None:
            r["matmul_rate_used"] = {"float32_gflops": rate_start["float32_gflops_best"], "float64_gflops": rate_start["float64_gflops_best"]}
            rows.append(r)
    rate_end = matmul_rate()
    print(f"matmul at the end: float32 best {rate_end['float32_gflops_best']:.1f} GFLOP/s, median {rate_end['float32_gflops_median']:.1f}", flush=True)
    meta.update(matmul_rate_start=rate_start, matmul_rate_end=rate_end, loadavg_at_end=os.getloadavg(),
                finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    for r in rows:
        r["run"] = meta
    if rows:
        merge_results(Path(args.out), rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
