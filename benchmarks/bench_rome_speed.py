"""Seconds per sequential ROME edit: this project's pre-issue-10 settings vs the current default, interleaved.

Two copies of SmolLM2-135M are edited sequentially on the same CounterFact cases, one per variant; the edits
alternate (case i on copy A, then case i on copy B, ...), so both variants see the same machine load at the
same time and their ratio is fair on a shared CPU. Timed: ``editor.edit`` (value search + closed-form
update), in CPU seconds of this process (one torch thread) and wall seconds. Both variants run the current
code: "before" only switches the settings back (paper anchor, squared weight decay, no MPES, no prefix cache),
so the extra forwards the code of that time ran for v_init and the KL reference are not in its time, and the
ratio is a lower bound of the real speed-up.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_rome_speed.py --offset 5000 --n 30 \\
        --out benchmarks/results/rome_speed.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from prune_lit.data.counterfact import load_counterfact
from prune_lit.editors import ROMEEditor
from prune_lit.models.loader import load_model
from prune_lit.reporting import write_json_atomic

VARIANTS = {
    "before": dict(update_anchor="mean", v_weight_decay_form="squared", v_mpes=False, v_prefix_cache=False),
    "default": {},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="edit", choices=["edit", "train", "val"])
    p.add_argument("--offset", type=int, default=5000, help="first case (file order) of the split")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    requests = load_counterfact(args.split, data_dir=args.data_dir, limit=args.offset + args.n)[args.offset :]
    runs = {}
    for name, overrides in VARIANTS.items():
        loaded = load_model("smollm2-135m")
        editor = ROMEEditor(**overrides)
        editor.prepare(loaded.model, loaded.tokenizer, loaded.name, args.data_dir)
        runs[name] = {"model": loaded.model, "tok": loaded.tokenizer, "editor": editor, "cpu": [], "wall": [], "steps": []}
    load_start = os.getloadavg()[0]
    for i, request in enumerate(requests):
        for name, run in runs.items():
            t, c = time.perf_counter(), time.process_time()
            result = run["editor"].edit(run["model"], run["tok"], [request])
            run["cpu"].append(time.process_time() - c)
            run["wall"].append(time.perf_counter() - t)
            run["steps"].append(result.stats.steps)
        print(f"case {i + 1}/{len(requests)}: " + ", ".join(f"{n} {r['cpu'][-1]:.2f} CPU s" for n, r in runs.items()), flush=True)
    rows = {
        name: {
            "overrides": VARIANTS[name],
            "mean_cpu_s": statistics.fmean(r["cpu"]),
            "mean_wall_s": statistics.fmean(r["wall"]),
            "median_cpu_s": statistics.median(r["cpu"]),
            "value_steps_mean": statistics.fmean(r["steps"]),
            "cpu_s": [round(x, 3) for x in r["cpu"]],
        }
        for name, r in runs.items()
    }
    ratio_cpu = rows["before"]["mean_cpu_s"] / rows["default"]["mean_cpu_s"]
    ratio_wall = rows["before"]["mean_wall_s"] / rows["default"]["mean_wall_s"]
    out = {
        "meta": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
                 "split": args.split, "cases": [args.offset, args.offset + args.n], "load_average_1m": [load_start, os.getloadavg()[0]]},
        "variants": rows,
        "speedup_cpu": ratio_cpu,
        "speedup_wall": ratio_wall,
    }
    write_json_atomic(args.out, out)
    for name, row in rows.items():
        print(f"{name:8s} {row['mean_cpu_s']:.3f} CPU s/edit ({row['mean_wall_s']:.3f} wall), {row['value_steps_mean']:.2f} value steps")
    print(f"speed-up of the default: {ratio_cpu:.2f}x CPU, {ratio_wall:.2f}x wall -> {args.out}")


if __name__ == "__main__":
    main()
