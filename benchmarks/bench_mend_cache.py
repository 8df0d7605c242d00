"""MEND training: CPU seconds per optimizer step before and after the cached lower-block hidden states.

"before": every forward through the whole model, the hypernetwork applied matrix by matrix, Adam's per-op
update (the training step as it was). "after": forwards from the cached states entering the first edited block
with logits only where read, the accumulated single edits of a step in one batch (one forward for all, each
edit's update applied to its own rows as low-rank hooks), one hypernetwork pass per transform, fused Adam
(`MENDTraining` defaults; configs/mend.yaml: train_batch_size 4, requests_per_edit 1).

Both arms start from the same hypernetwork, see the same CounterFact train requests and take the same
optimizer steps (``--accumulate`` single edits, gradient clipping at 100, Adam), interleaved round by round
(the order alternates) so that the shared machine's load hits both alike. Per step: process CPU seconds
(``time.process_time``) and wall seconds; the cache fill is timed apart (once per training run). The losses
of the two arms are compared step by step (they must agree within float round-off).

    python benchmarks/bench_mend_cache.py --steps 12          # -> benchmarks/results/mend_cache.json, one thread
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from _common import add_output_args, machine_meta, pin_threads, portable, write_result  # benchmarks/ is on sys.path

from prune_lit.data.edit_datamodule import load_edit_requests
from prune_lit.modules.mend_training import MENDTraining


def optimizer_step(module: MENDTraining, opt: torch.optim.Optimizer, batches: list) -> tuple[float, float, float]:
    """One optimizer step of accumulated single edits, as Lightning runs it: ``(cpu s, wall s, mean loss)``."""
    c0, w0 = time.process_time(), time.perf_counter()
    total = 0.0
    for batch in batches:
        loss = module.edit_step(batch)["loss"] / len(batches)
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(module.hypernet.parameters(), 100.0)
    opt.step()
    opt.zero_grad()
    return time.process_time() - c0, time.perf_counter() - w0, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rank", type=int, default=512, help="configs/mend.yaml: 512")
    p.add_argument("--accumulate", type=int, default=4, help="single edits per optimizer step (configs/mend.yaml: 4)")
    p.add_argument("--steps", type=int, default=12, help="measured optimizer steps per arm (after one warm-up step)")
    add_output_args(p, "mend_cache.json")
    args = p.parse_args()
    pin_threads(args.threads)
    meta = machine_meta()
    torch.manual_seed(0)
    hp = dict(model_name=args.model, rank=args.rank, lr=1e-5, c_loc=3.0, max_length=64)
    uncached = MENDTraining(**hp, cache_hidden=False)
    # the cached arm shares the frozen base model and starts from the same hypernetwork
    cached = copy.deepcopy(uncached, memo={id(uncached.model): uncached.model})
    cached.hparams.cache_hidden = True
    cached.hparams.hidden_cache_dir = tempfile.mkdtemp(prefix="mend_hidden_bench_")
    requests = load_edit_requests("counterfact", "train", limit=(args.steps + 1) * args.accumulate)
    c0, w0 = time.process_time(), time.perf_counter()
    cached.prefill_hidden_cache(cached.token_rows(requests, with_truth=False), tag="bench")
    fill_cpu, fill_wall = time.process_time() - c0, time.perf_counter() - w0
    arms = {"uncached": uncached, "cached": cached}
    # before = the code as it was: full forwards, the hypernetwork matrix by matrix, Adam's per-op update
    uncached.hypernet.batch_modes = False
    opts = {"uncached": torch.optim.Adam(uncached.hypernet.parameters(), lr=hp["lr"]), "cached": cached.configure_optimizers()}
    for m in arms.values():
        m.train()
    rows: list[dict] = []
    for step in range(args.steps + 1):
        step_requests = requests[step * args.accumulate : (step + 1) * args.accumulate]
        # before: one request per batch, accumulated; after: one batch of independent single edits (requests_per_edit 1)
        batches = {"uncached": [[r] for r in step_requests], "cached": [step_requests]}
        order = list(arms) if step % 2 == 0 else list(reversed(arms))
        row = {"step": step}
        for k in order:
            cpu, wall, loss = optimizer_step(arms[k], opts[k], batches[k])
            row.update({f"{k}_cpu_s": cpu, f"{k}_wall_s": wall, f"{k}_loss": loss})
        rows.append(row)
        print(f"step {step}: uncached {row['uncached_cpu_s']:.2f} cpu-s, cached {row['cached_cpu_s']:.2f} cpu-s, "
              f"ratio {row['uncached_cpu_s'] / row['cached_cpu_s']:.2f}; loss {row['uncached_loss']:.5f} / {row['cached_loss']:.5f}", flush=True)
    measured = rows[1:]  # step 0 is warm-up
    ratios = [r["uncached_cpu_s"] / r["cached_cpu_s"] for r in measured]
    summary = {
        "uncached_cpu_s_per_step_median": statistics.median(r["uncached_cpu_s"] for r in measured),
        "cached_cpu_s_per_step_median": statistics.median(r["cached_cpu_s"] for r in measured),
        "uncached_wall_s_per_step_median": statistics.median(r["uncached_wall_s"] for r in measured),
        "cached_wall_s_per_step_median": statistics.median(r["cached_wall_s"] for r in measured),
        "cpu_ratio_median": statistics.median(ratios),
        "cpu_ratio_of_totals": sum(r["uncached_cpu_s"] for r in measured) / sum(r["cached_cpu_s"] for r in measured),
        "max_rel_loss_diff": max(abs(r["cached_loss"] - r["uncached_loss"]) / abs(r["uncached_loss"]) for r in rows),
        "cache_fill_cpu_s": fill_cpu,
        "cache_fill_wall_s": fill_wall,
        "cache_rows": len(cached.hidden_cache),
    }
    print(
        f"CPU s per optimizer step (median of {len(measured)}): uncached {summary['uncached_cpu_s_per_step_median']:.2f}, "
        f"cached {summary['cached_cpu_s_per_step_median']:.2f}; ratio {summary['cpu_ratio_median']:.2f}x "
        f"(of totals {summary['cpu_ratio_of_totals']:.2f}x); max relative loss difference {summary['max_rel_loss_diff']:.1e}; "
        f"cache fill {fill_cpu:.1f} cpu-s for {summary['cache_rows']} rows"
    )
    settings = {**vars(args), "out": portable(args.out), **hp}
    write_result(args.out, {"machine": meta, "settings": settings, "summary": summary, "steps": rows})


if __name__ == "__main__":
    main()
