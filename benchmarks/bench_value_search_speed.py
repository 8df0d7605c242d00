"""Seconds per sequential ROME edit / MEMIT step: the earlier defaults vs the current default, interleaved.

Copies of SmolLM2-135M are edited sequentially on the same CounterFact cases, one copy per variant; the steps
alternate (step i on copy A, then step i on copy B, ...), so every variant sees the same machine load at the
same time and the ratios are fair on a shared CPU. Timed: ``editor.edit`` (value searches + closed-form
update), in CPU seconds of this process (one torch thread) and wall seconds. Variants:

* ``before``   the earlier defaults (ROME: paper anchor; MEMIT: uniform key averaging; both: squared
               weight decay, no MPES, no prefix cache);
* ``no_mpes``  the current default without most-probable early stopping (MPES's share of the speed-up);
* ``default``  the current default.

All run the current code. The earlier code also ran two forwards per value search that the current
search takes from its first step (v_init up to the searched module, and the KL prompt's reference distribution);
they are timed here on the same model after each ``before`` step (``old_extra_cpu_s``) and reported as a second
ratio, "incl. the old code's forwards".

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_value_search_speed.py --editor rome --offset 5000 --n 50 \
        --out benchmarks/results/rome_speed.json
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_value_search_speed.py --editor memit --batch 10 --offset 5000 --n 50 \
        --out benchmarks/results/memit_speed.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from _common import add_output_args, pin_threads, write_result  # benchmarks/ is on sys.path

from prune_lit.data.counterfact import load_counterfact
from prune_lit.data.requests import EditRequest
from prune_lit.editors import MEMITEditor, ROMEEditor
from prune_lit.editors.locate import logits_at, module_io_at, subject_last_token, target_token_ids
from prune_lit.models.arch import arch_spec
from prune_lit.models.batching import pad_batch, pad_token_id
from prune_lit.models.loader import load_model

VARIANTS = {
    "rome": {
        "before": dict(update_anchor="mean", v_weight_decay_form="squared", v_mpes=False, v_prefix_cache=False),
        "no_mpes": dict(v_mpes=False),
        "default": {},
    },
    "memit": {
        "before": dict(key_averaging="uniform", v_weight_decay_form="squared", v_mpes=False, v_prefix_cache=False),
        "no_mpes": dict(v_mpes=False),
        "default": {},
    },
}
EDITORS = {"rome": ROMEEditor, "memit": MEMITEditor}


@torch.no_grad()
def old_extra_forwards(model: torch.nn.Module, tok, module_name: str, request: EditRequest) -> float:
    """CPU seconds of the two forwards the earlier value search ran before its first step."""
    c = time.process_time()
    pad = pad_token_id(tok)
    ids, p = subject_last_token(tok, "{}", request)
    module_io_at(model, module_name, [ids + target_token_ids(tok, request.target_new)[:-1]], [p], pad, "output")
    kl_req = EditRequest(case_id=request.case_id, prompt=f"{request.subject} is a", subject=request.subject, target_new=request.target_new)
    kl_ids, kl_pos = subject_last_token(tok, "{}", kl_req)
    kl_ids_t, kl_mask = pad_batch([kl_ids], pad)
    zero = torch.zeros(1, dtype=torch.long)
    logits_at(model, kl_ids_t, kl_mask, zero, zero + kl_pos)
    return time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--editor", default="rome", choices=sorted(EDITORS))
    p.add_argument("--batch", type=int, default=1, help="requests per edit step (MEMIT: e.g. 10)")
    p.add_argument("--variants", default="before,no_mpes,default", help="comma-separated subset of before, no_mpes, default")
    p.add_argument("--split", default="edit", choices=["edit", "train", "val"])
    p.add_argument("--offset", type=int, default=5000, help="first case (file order) of the split")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--data-dir", default=None)
    add_output_args(p, None)
    args = p.parse_args()
    pin_threads(args.threads)
    requests = load_counterfact(args.split, data_dir=args.data_dir, limit=args.offset + args.n)[args.offset :]
    variants = {name: VARIANTS[args.editor][name] for name in args.variants.split(",")}
    if not {"before", "default"} <= set(variants):
        raise SystemExit("--variants must include before and default (the ratios are between them)")
    runs = {}
    for name, overrides in variants.items():
        loaded = load_model("smollm2-135m")
        editor = EDITORS[args.editor](**overrides)
        editor.prepare(loaded.model, loaded.tokenizer, loaded.name, args.data_dir)
        runs[name] = {"model": loaded.model, "tok": loaded.tokenizer, "editor": editor, "cpu": [], "wall": [], "steps": [], "extra": []}
    load_start = os.getloadavg()[0]
    batches = [requests[i : i + args.batch] for i in range(0, len(requests), args.batch)]
    for i, batch in enumerate(batches):
        for name, run in runs.items():
            t, c = time.perf_counter(), time.process_time()
            result = run["editor"].edit(run["model"], run["tok"], batch)
            run["cpu"].append(time.process_time() - c)
            run["wall"].append(time.perf_counter() - t)
            run["steps"].append(result.stats.steps)  # mean over the step's requests
            if name == "before":
                hp, spec = run["editor"].hp, arch_spec(run["model"])
                # the searched module: ROME's edited MLP output, MEMIT's last edited block
                module = spec.mlp_out_name(hp.layers[0]) if args.editor == "rome" else spec.layer(hp.layers[-1])
                run["extra"].append(sum(old_extra_forwards(run["model"], run["tok"], module, r) for r in batch))
        print(f"step {i + 1}/{len(batches)}: " + ", ".join(f"{n} {r['cpu'][-1]:.2f} CPU s" for n, r in runs.items()), flush=True)
    rows = {
        name: {
            "overrides": variants[name],
            "mean_cpu_s": statistics.fmean(r["cpu"]),
            "mean_wall_s": statistics.fmean(r["wall"]),
            "median_cpu_s": statistics.median(r["cpu"]),
            "value_steps_mean": statistics.fmean(r["steps"]),  # per request
            "cpu_s": [round(x, 3) for x in r["cpu"]],
            **({"old_extra_cpu_s": statistics.fmean(r["extra"])} if r["extra"] else {}),
        }
        for name, r in runs.items()
    }
    ratio_cpu = rows["before"]["mean_cpu_s"] / rows["default"]["mean_cpu_s"]
    ratio_wall = rows["before"]["mean_wall_s"] / rows["default"]["mean_wall_s"]
    ratio_with_extra = (rows["before"]["mean_cpu_s"] + rows["before"]["old_extra_cpu_s"]) / rows["default"]["mean_cpu_s"]
    out = {
        "meta": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
                 "editor": args.editor, "batch": args.batch, "split": args.split, "cases": [args.offset, args.offset + args.n], "load_average_1m": [load_start, os.getloadavg()[0]]},
        "variants": rows,
        "speedup_cpu": ratio_cpu,
        "speedup_wall": ratio_wall,
        "speedup_cpu_incl_old_forwards": ratio_with_extra,
    }
    write_result(args.out, out)
    for name, row in rows.items():
        print(f"{name:8s} {row['mean_cpu_s']:.3f} CPU s/step ({row['mean_wall_s']:.3f} wall), {row['value_steps_mean']:.2f} value steps per request")
    print(f"speed-up of the default: {ratio_cpu:.2f}x CPU ({ratio_with_extra:.2f}x incl. the old code's two forwards, "
          f"{rows['before']['old_extra_cpu_s']:.3f} CPU s), {ratio_wall:.2f}x wall -> {args.out}")


if __name__ == "__main__":
    main()
