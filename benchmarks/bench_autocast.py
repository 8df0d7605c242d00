"""Value-search settings of ROME/MEMIT (bf16 autocast, cached lower layers): time per edit step and edit metrics.

For each editor and each variant, a fresh SmolLM2-135M is edited with the same first ``--n-edits``
CounterFact cases, one step after another (MEMIT: ``--memit-batch`` cases per step); then
`evaluate_edits` scores all of them on the float32 model. A speed-up is only safe as a default when
it reaches the same edit metrics. Variants are ``v_autocast`` dtypes (``--dtypes``) or, with
``--variants``, sets of hyperparameter overrides separated by ``;`` (``key=value,key=value``).

    python benchmarks/bench_autocast.py --editors rome --n-edits 20 --threads 1
    python benchmarks/bench_autocast.py --editors rome,memit --n-edits 20 --threads 1 \
        --variants "v_cache_lower_layers=false;v_cache_lower_layers=true" --out benchmarks/results/layer_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict

import torch
from _common import add_output_args, machine_meta, parse_overrides, pin_threads, write_result  # benchmarks/ is on sys.path
from flop_count import matmul_gflops

from prune_lit.data.counterfact import load_counterfact
from prune_lit.editors import MEMITEditor, ROMEEditor
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference
from prune_lit.models.loader import load_model


def pass_seconds(model_name: str, repeats: int = 4) -> dict[str, float]:
    """Seconds of one value-search-shaped pass (7 rows × 25 tokens forward, head on 21 positions, backward
    to the input embeddings) in float32, under bf16 autocast, and with a bf16 copy of the weights."""
    import copy

    model = load_model(model_name).model
    ids = torch.randint(100, 20000, (7, 25))
    mask = torch.ones_like(ids)
    rows, cols = torch.arange(7).repeat_interleave(3), torch.tensor([20, 21, 22] * 7)

    def one(m: torch.nn.Module, autocast: bool) -> None:
        emb = m.get_input_embeddings()(ids).detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            hidden = m.base_model(inputs_embeds=emb, attention_mask=mask).last_hidden_state
            logits = m.get_output_embeddings()(hidden[rows, cols]).float()
        logits.logsumexp(-1).sum().backward()

    def timed(m: torch.nn.Module, autocast: bool) -> float:
        one(m, autocast)
        t = time.perf_counter()
        for _ in range(repeats):
            one(m, autocast)
        return (time.perf_counter() - t) / repeats

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    out = {"float32": timed(model, False), "autocast_bfloat16": timed(model, True), "bfloat16_weights": timed(bf16, False)}
    out["float32_again"] = timed(model, False)  # the load drifts: bracket the others
    return {k: round(v, 3) for k, v in out.items()}


def run(editor_name: str, overrides: dict[str, object], args: argparse.Namespace, requests: list) -> dict:
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    cls = {"rome": ROMEEditor, "memit": MEMITEditor}[editor_name]
    editor = cls(**overrides)
    editor.prepare(model, tok, loaded.name, args.data_dir)
    reference = record_locality_reference(model, tok, requests, 16)
    batch = args.memit_batch if editor_name == "memit" else 1
    seconds, nll = [], []
    for i in range(0, len(requests), batch):
        t = time.perf_counter()
        result = editor.edit(model, tok, requests[i : i + batch])
        seconds.append(time.perf_counter() - t)
        nll.append(result.stats.nll)
    scores = evaluate_edits(model, tok, requests, reference, 16)
    return {
        "editor": editor_name,
        "overrides": overrides,
        "v_autocast": overrides.get("v_autocast", "float32"),
        "n_edits": len(requests),
        "steps": len(seconds),
        "step_seconds": [round(s, 3) for s in seconds],
        "median_step_s": round(statistics.median(seconds), 3),
        "total_edit_s": round(sum(seconds), 2),
        "mean_final_nll": sum(nll) / len(nll),
        "scores": asdict(scores),
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--editors", default="rome,memit")
    p.add_argument("--dtypes", default="float32,bfloat16", help="v_autocast values to compare")
    p.add_argument("--variants", default=None, help="';'-separated override sets to compare instead of --dtypes")
    p.add_argument("--n-edits", type=int, default=20)
    p.add_argument("--memit-batch", type=int, default=10)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--passes", action="store_true", help="also time one forward+backward pass per precision")
    add_output_args(p, "autocast.json")
    args = p.parse_args()
    pin_threads(args.threads)
    requests = load_counterfact("edit", data_dir=args.data_dir, limit=args.n_edits)
    meta = machine_meta() | {
        "matmul_gflops_float32": round(matmul_gflops(dtype=torch.float32), 1),
        "matmul_gflops_bfloat16": round(matmul_gflops(dtype=torch.bfloat16), 1),
    }
    if args.passes:
        meta["pass_seconds"] = pass_seconds(args.model)
    print(json.dumps(meta))
    rows = []
    if args.variants:
        variants = [parse_overrides(v) for v in args.variants.split(";") if v.strip()]
    else:
        variants = [{"v_autocast": d.strip()} for d in args.dtypes.split(",") if d.strip()]
    for name in [e.strip() for e in args.editors.split(",") if e.strip()]:
        for overrides in variants:
            row = run(name, overrides, args, requests)
            rows.append(row)
            s = row["scores"]
            label = ",".join(f"{k}={v}" for k, v in overrides.items())
            print(
                f"{name:6s} {label} median step {row['median_step_s']:.2f} s, total {row['total_edit_s']:.1f} s | "
                f"efficacy {s['efficacy']:.3f} generalization {s['generalization']:.3f} neighborhood {s['neighborhood']:.3f} "
                f"| mean final NLL {row['mean_final_nll']:.3f}",
                flush=True,
            )
    write_result(args.out, {"meta": meta, "runs": rows})


if __name__ == "__main__":
    main()
