"""Evaluation throughput on SmolLM2-135M: downstream tasks (prompt and generated tokens/s) and edit scoring (tokens/s).

Downstream: `DownstreamEvaluator` with ``--limit`` examples per task and its default batching (one batch of
``--batch-size``), exactly as a run evaluates before/after editing. Per task it reports
* prompt tokens (real, and as padded in the batches the evaluator builds: length-sorted, left-padded),
* generated tokens (the evaluator's own count, up to EOS / stop string; nli generates nothing),
* ``<task>/time_s`` from the evaluator (prefill + decode + stopping checks + decoding text),
* a separate prefill-only pass over the same batches (``logits_to_keep=1``, no cache), timed, and its counted
  ``nn.Linear`` FLOPs (see ``flop_count.py``), so
  prompt tokens/s = prompt tokens / prefill seconds and
  generated tokens/s = generated tokens / (task seconds − prefill seconds) (the decode part of the task time).
  Both are also given over the whole task time.
Edit scoring: `prune_lit.metrics.evaluate_edits` on ``--n-requests`` CounterFact edit cases (edit, rephrase and
locality prompts, each with 2 targets) after `record_locality_reference` (timed separately). Its scorer runs each
distinct prompt once and feeds the multi-token targets on the prompt's KV cache, so it reports prompt tokens run,
target tokens fed (len − 1 per target), and target tokens scored (every target token gets a log-prob).

The float32 ``torch.matmul`` rate (1024×1024) is measured in the same run, to put the achieved GFLOP/s in context.

    nice -n 5 python benchmarks/bench_eval_throughput.py --limit 8 --n-requests 16 --threads 1

Writes ``benchmarks/results/eval_throughput.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from _common import add_output_args, pin_threads, write_result  # benchmarks/ is on sys.path; loads no numpy/torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="reasoning,summarization,qa,nli")
    p.add_argument("--limit", type=int, default=8, help="examples per downstream task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-requests", type=int, default=16, help="CounterFact edit cases scored by evaluate_edits")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    add_output_args(p, "eval_throughput.json")
    return p.parse_args(argv)


ARGS = parse_args()
pin_threads(ARGS.threads)  # before torch loads its BLAS

import torch  # noqa: E402

from flop_count import LinearFlops, matmul_rate  # noqa: E402
from prune_lit.data import load_counterfact  # noqa: E402
from prune_lit.metrics import evaluate_edits, record_locality_reference  # noqa: E402
from prune_lit.metrics.editing_eval import _Pairs  # noqa: E402
from prune_lit.metrics.scoring import _encode  # noqa: E402
from prune_lit.models.loader import load_model  # noqa: E402
from prune_lit.modules.downstream_eval import NLI_CHOICES, DownstreamEvaluator  # noqa: E402
from prune_lit.models.generation import _forward, _length_order, _tokenize  # noqa: E402



@torch.no_grad()
def prefill_pass(model, tok, prompts: list[str], batch_size: int, counter: LinearFlops) -> tuple[float, int, int]:  # noqa: ANN001
    """One forward over ``prompts`` batched as the evaluator does; returns (seconds, real tokens, padded tokens)."""
    order = _length_order(tok, prompts)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    seconds, real, padded = 0.0, 0, 0
    for idx in batches:
        enc = _tokenize(tok, [prompts[i] for i in idx], next(model.parameters()).device)
        real += int(enc["attention_mask"].sum())
        padded += enc["input_ids"].numel()
        t = time.perf_counter()
        with counter:
            _forward(model, enc["input_ids"], enc["attention_mask"], last_only=True)
        seconds += time.perf_counter() - t
    return seconds, real, padded


def main(args: argparse.Namespace) -> int:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = os.getloadavg()
    rate = matmul_rate()
    print(f"matmul 1024x1024 float32: best {rate['float32_gflops_best']:.1f} GFLOP/s, median {rate['float32_gflops_median']:.1f} "
          f"({torch.get_num_threads()} thread(s), load {load_start[0]:.2f})", flush=True)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    # --- downstream tasks ---------------------------------------------------------------------------
    ev = DownstreamEvaluator(tasks=tasks, limit=args.limit, data_dir=args.data_dir, batch_size=args.batch_size, progress=False)
    examples = ev.load(tok)
    results = ev.evaluate(model, tok)
    downstream = {}
    for task in tasks:
        prompts = [e.prompt for e in examples[task]]
        counter = LinearFlops(model)
        pre_s, real, padded = prefill_pass(model, tok, prompts, args.batch_size, counter)
        task_s = results[f"{task}/time_s"]
        new = int(results.get(f"{task}/new_tokens", 0))
        decode_s = max(task_s - pre_s, 0.0)
        row = {
            "examples": len(prompts),
            "prompt_tokens": real,
            "prompt_tokens_padded": padded,
            "generated_tokens": new,
            "max_new_tokens": ev.max_new_tokens[task],
            "task_seconds": task_s,
            "prefill_only_seconds": pre_s,
            "prefill_gflop": counter.forward / 1e9,
            "prefill_gflops_achieved": counter.forward / pre_s / 1e9 if pre_s > 0 else None,
            "prompt_tokens_per_s_prefill": real / pre_s if pre_s > 0 else None,
            "prompt_tokens_per_s_over_task_time": real / task_s if task_s > 0 else None,
            "generated_tokens_per_s_decode": (new / decode_s) if (new and decode_s > 0) else None,
            "generated_tokens_per_s_over_task_time": new / task_s if (new and task_s > 0) else None,
            "decode_seconds_estimate": decode_s if task != "nli" else None,
            "score": {k: v for k, v in results.items() if k.startswith(task + "/") and not k.endswith(("time_s", "tokens_per_s", "examples", "examples_per_s", "new_tokens"))},
        }
        if task == "nli":
            row["note"] = f"scored as log p({NLI_CHOICES[0]!r}) vs log p({NLI_CHOICES[1]!r}) with one prefill; nothing generated"
        downstream[task] = row
        gen_txt = (
            f", generated {new} tok in ~{decode_s:.2f} s decode -> {row['generated_tokens_per_s_decode']:.1f} tok/s "
            f"({row['generated_tokens_per_s_over_task_time']:.1f} over the task time)"
            if new
            else ""
        )
        print(
            f"{task:13s} {len(prompts)} ex: task {task_s:6.2f} s; prompts {real} tok ({padded} padded), prefill {pre_s:.2f} s -> "
            f"{real / pre_s:7.0f} prompt tok/s ({counter.forward / pre_s / 1e9:.1f} GFLOP/s){gen_txt}",
            flush=True,
        )

    # --- edit scoring -------------------------------------------------------------------------------
    requests = load_counterfact("edit", data_dir=args.data_dir, limit=args.n_requests)
    t = time.perf_counter()
    ref = record_locality_reference(model, tok, requests)
    ref_s = time.perf_counter() - t
    counter = LinearFlops(model)
    t = time.perf_counter()
    with counter:
        scores = evaluate_edits(model, tok, requests, ref)
    score_s = time.perf_counter() - t
    pairs = _Pairs()
    for r in requests:
        pairs.add(r.prompt, r.target_new)
        if r.ground_truth:
            pairs.add(r.prompt, r.ground_truth)
        for p in r.rephrase_prompts:
            pairs.add(p, r.target_new)
            if r.ground_truth:
                pairs.add(p, r.ground_truth)
        for p, a in zip(r.locality_prompts, r.locality_answers):
            pairs.add(p, a)
            pairs.add(p, r.target_new)
    prompts, targets = pairs.lists()
    p_ids, t_ids = _encode(tok, prompts, targets)
    uniq: dict[str, int] = {}
    for p, ids in zip(prompts, p_ids):
        uniq[p] = len(ids)
    prompt_tok = sum(uniq.values())
    target_scored = sum(len(t) for t in t_ids)
    target_fed = sum(len(t) - 1 for t in t_ids)
    edit_scoring = {
        "requests": len(requests),
        "pairs": len(prompts),
        "distinct_prompts": len(uniq),
        "prompt_tokens_run": prompt_tok,
        "target_tokens_fed_on_cache": target_fed,
        "target_tokens_scored": target_scored,
        "seconds": score_s,
        "locality_reference_seconds": ref_s,
        "gflop": counter.forward / 1e9,
        "gflops_achieved": counter.forward / score_s / 1e9,
        "target_tokens_scored_per_s": target_scored / score_s,
        "tokens_processed_per_s": (prompt_tok + target_fed) / score_s,
        "pairs_per_s": len(prompts) / score_s,
        "scores": scores.as_dict(),
    }
    print(
        f"evaluate_edits {len(requests)} requests: {len(prompts)} (prompt, target) pairs, {len(uniq)} distinct prompts, "
        f"{prompt_tok} prompt tok + {target_fed} target tok fed; {score_s:.2f} s -> {target_scored / score_s:.0f} target tok "
        f"scored/s, {(prompt_tok + target_fed) / score_s:.0f} tok processed/s ({counter.forward / score_s / 1e9:.1f} GFLOP/s); "
        f"locality reference {ref_s:.2f} s",
        flush=True,
    )
    rate_end = matmul_rate()
    payload = {
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:],
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "loadavg_at_start": load_start,
        "loadavg_at_end": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": loaded.name,
        "matmul_rate_start": rate,
        "matmul_rate_end": rate_end,
        "downstream": downstream,
        "downstream_totals": {k: v for k, v in results.items() if k.startswith("total/")},
        "edit_scoring": edit_scoring,
    }
    print(f"matmul at the end: float32 best {rate_end['float32_gflops_best']:.1f} GFLOP/s", flush=True)
    write_result(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
