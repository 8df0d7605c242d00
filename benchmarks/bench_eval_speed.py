"""Today's evaluation against the new one, in the same run, interleaved.

What it times, on SmolLM2-135M-Instruct, float32, one thread, with the study's evaluator (200 examples per task,
chat template, batches of 8 of the length-sorted examples):

* **Generation** (reasoning, summarization, qa): ``--batches`` batches per task spread over the length order
  (shortest, …, longest), on the unedited ("healthy") model and on a collapsed copy (a rank-one ΔW with
  σ = 400·σ_max(W₀) in layer 4's down_proj, ROME's collapse; its continuations meet no stop rule). Each batch
  runs with ``engine="hf"`` (``model.generate``, the evaluator's engine until now) and ``engine="loop"`` (the
  KV-cache loop whose finished rows leave the batch), alternating which goes first, and the texts must be
  identical. Every forward pass is timed by hooks: prefill (the prompt forward), decode steps (count, rows fed,
  seconds), the rest (stop checks, bookkeeping, decoding text) = batch time − forwards.
* **nli**: ``--batches`` batches of ``choice_logprobs`` (one prefill, unchanged by this issue).
* **Per evaluation point**: the per-batch means × the task's number of batches (25 at 200 examples): *multiplied
  out*, not a full evaluation run.
* **Bandwidth floor of batch-1 decoding**: the bytes of the weights one decode step must read (every Linear, the
  tied output head included; the input embedding reads one row) over this CPU's single-thread read bandwidth
  (``sum`` of a 512 MiB float32 tensor, best of 5), beside a measured batch-1 decode step.
* **Probes**: one ``GeneralAbilityProbe`` record and one probe of ``--probe-tokens`` WikiText-2 tokens (unchanged).
* **Edit metrics**: ``evaluate_edits`` on ``--n-requests`` CounterFact cases with ``eval_batch_size`` 16 (the
  config's) and ``--edit-batch``, interleaved, after ``record_locality_reference`` (timed apart); whether the
  scores are identical.

The load average is recorded before and after every timed item (the machine is shared).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_eval_speed.py --batches 3 --n-requests 50

Writes ``benchmarks/results/eval_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import add_output_args, pin_threads, write_result  # benchmarks/ is on sys.path; loads no numpy/torch

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=200, help="examples per task (the study's 200)")
    p.add_argument("--batches", type=int, default=3, help="batches timed per task, spread over the length order")
    p.add_argument("--states", default="healthy,collapsed")
    p.add_argument("--n-requests", type=int, default=50, help="CounterFact cases for the edit metrics (0 = skip)")
    p.add_argument("--edit-batch", type=int, default=64, help="eval_batch_size compared with the config's 16")
    p.add_argument("--probe-tokens", type=int, default=5000, help="WikiText-2 tokens of the probes (0 = skip)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    add_output_args(p, "eval_speed.json")
    return p.parse_args(argv)


ARGS = parse_args()
pin_threads(ARGS.threads)  # before torch loads its BLAS

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from prune_lit.data import load_counterfact  # noqa: E402
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference  # noqa: E402
from prune_lit.metrics.probes import GeneralAbilityProbe  # noqa: E402
from prune_lit.metrics.scoring import choice_logprobs  # noqa: E402
from prune_lit.models.generation import apply_chat_template, generate_texts  # noqa: E402
from prune_lit.models.loader import load_model  # noqa: E402
from prune_lit.modules.downstream_eval import NLI_CHAT_CHOICES, DownstreamEvaluator  # noqa: E402
from test_generation_smollm2 import collapse  # noqa: E402



def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class ForwardTimer:
    """Times every call of ``model``'s forward: (input length, rows, seconds)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[int, int, float]] = []
        self._t = 0.0
        self._shape = (0, 0)
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module, args, kwargs):  # noqa: ANN001
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._shape = tuple(ids.shape)
        self._t = time.perf_counter()

    def _post(self, module, args, kwargs, out):  # noqa: ANN001
        self.calls.append((self._shape[1], self._shape[0], time.perf_counter() - self._t))

    def take(self) -> list[tuple[int, int, float]]:
        calls, self.calls = self.calls, []
        return calls


def timed_generation(timer: ForwardTimer, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    timer.take()
    t = time.perf_counter()
    res = fn()
    total = time.perf_counter() - t
    calls = timer.take()
    prefill = [c for c in calls if c[0] > 1]
    steps = [c for c in calls if c[0] == 1]
    fwd = sum(c[2] for c in calls)
    return res, {
        "seconds": total,
        "prefill_seconds": sum(c[2] for c in prefill),
        "prefill_positions": sum(c[0] * c[1] for c in prefill),
        "decode_steps": len(steps),
        "decode_rows": sum(c[1] for c in steps),
        "decode_seconds": sum(c[2] for c in steps),
        "other_seconds": total - fwd,
    }


def read_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    x = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def decode_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every Linear (the tied output head included), norms."""
    seen, total = set(), 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            total += mod.weight.numel() * mod.weight.element_size()
    return total


def main(args: argparse.Namespace) -> int:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    model.eval()
    timer = ForwardTimer(model)
    ev = DownstreamEvaluator(limit=args.limit, data_dir=args.data_dir, chat_template=True, progress=False)
    examples = ev.load(tok)
    out: dict[str, Any] = {"started": started, "argv": sys.argv[1:], "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                           "threads": torch.get_num_threads(), "torch": torch.__version__, "model": lm.name, "load_at_start": load()}

    # ---- bandwidth floor of batch-1 decoding ----------------------------------------------------------
    bw = read_bandwidth_gbs()
    nbytes = decode_bytes(model)
    prompt = apply_chat_template(tok, [examples["qa"][0].prompt])
    _, b1 = timed_generation(timer, lambda: generate_texts(model, tok, prompt, 20, 1, None, progress=False, engine="loop"))
    step_s = b1["decode_seconds"] / max(b1["decode_steps"], 1)
    out["batch1_floor"] = {"read_bandwidth_gb_s": bw, "weight_bytes_per_step": nbytes, "floor_step_s": nbytes / bw / 1e9,
                           "floor_tokens_per_s": bw * 1e9 / nbytes, "measured_step_s": step_s, "measured_tokens_per_s": 1 / step_s,
                           "measured_over_floor": step_s / (nbytes / bw / 1e9), "load": load()}
    print(f"batch-1 decode: floor {nbytes / bw / 1e6:.1f} ms/step ({nbytes / 1e6:.0f} MB at {bw:.1f} GB/s), measured {step_s * 1e3:.1f} ms/step", flush=True)

    # ---- generation, interleaved --------------------------------------------------------------------
    gen: dict[str, Any] = {}
    original = model.model.layers[4].mlp.down_proj.weight.detach().clone()
    for state in args.states.split(","):
        if state == "collapsed":
            collapse(model)
        for task in ("reasoning", "summarization", "qa", "nli"):
            exs = examples[task]
            n_batches = (len(exs) + 7) // 8
            picks = sorted({round(k * (n_batches - 1) / max(args.batches - 1, 1)) for k in range(args.batches)})
            rows = []
            for j, b in enumerate(picks):
                prompts = apply_chat_template(tok, [e.prompt for e in exs[8 * b : 8 * b + 8]])
                if task == "nli":
                    _, r = timed_generation(timer, lambda: choice_logprobs(model, tok, prompts, NLI_CHAT_CHOICES, 8, progress=False))
                    rows.append({"batch": b, "same": r, "load": load()})
                    continue
                runs, texts = {}, {}
                for engine in (("hf", "loop") if j % 2 == 0 else ("loop", "hf")):
                    res, r = timed_generation(timer, lambda: generate_texts(
                        model, tok, prompts, ev.max_new_tokens[task], 8, ev.stop_strings[task], progress=False, engine=engine))
                    r["new_tokens"] = res.new_tokens
                    runs[engine], texts[engine] = r, res.texts
                rows.append({"batch": b, "identical": texts["hf"] == texts["loop"], "load": load(), **runs})
                print(f"{state:9s} {task:13s} batch {b:2d}: hf {runs['hf']['seconds']:6.2f} s (prefill {runs['hf']['prefill_seconds']:.2f}, "
                      f"{runs['hf']['decode_rows']} rows in {runs['hf']['decode_steps']} steps {runs['hf']['decode_seconds']:.2f} s) | loop "
                      f"{runs['loop']['seconds']:6.2f} s (prefill {runs['loop']['prefill_seconds']:.2f}, {runs['loop']['decode_rows']} rows in "
                      f"{runs['loop']['decode_steps']} steps {runs['loop']['decode_seconds']:.2f} s) identical={texts['hf'] == texts['loop']} load {load()[0]}",
                      flush=True)
            gen[f"{state}/{task}"] = {"batches_per_evaluation": n_batches, "timed": rows}
        with torch.no_grad():
            model.model.layers[4].mlp.down_proj.weight.copy_(original)
    out["generation"] = gen

    # per evaluation point, multiplied out: mean per batch x batches per task
    per_point: dict[str, Any] = {}
    for state in args.states.split(","):
        tot = {"hf": 0.0, "loop": 0.0}
        for task in ("reasoning", "summarization", "qa", "nli"):
            g = gen[f"{state}/{task}"]
            for engine in tot:
                key = "same" if task == "nli" else engine
                secs = statistics.mean(r[key]["seconds"] for r in g["timed"]) * g["batches_per_evaluation"]
                per_point.setdefault(state, {})[f"{task}/{engine}_s"] = secs
                tot[engine] += secs
        per_point[state]["total/hf_s"], per_point[state]["total/loop_s"] = tot["hf"], tot["loop"]
        per_point[state]["total/loop_over_hf"] = tot["loop"] / tot["hf"]
        print(f"{state}: one evaluation point, multiplied out: hf {tot['hf']:.0f} s, loop {tot['loop']:.0f} s ({tot['loop'] / tot['hf']:.2f}x)", flush=True)
    out["per_evaluation_point_multiplied_out"] = per_point

    # ---- edit metrics ---------------------------------------------------------------------------------
    if args.n_requests:
        requests = load_counterfact("edit", data_dir=args.data_dir, limit=args.n_requests)
        t = time.perf_counter()
        ref = record_locality_reference(model, tok, requests, 16)
        ref_s = time.perf_counter() - t
        edit: dict[str, Any] = {"requests": len(requests), "locality_reference_s": ref_s, "runs": []}
        scores = {}
        for rep in range(2):
            for bs in ((16, args.edit_batch) if rep == 0 else (args.edit_batch, 16)):
                t = time.perf_counter()
                s = evaluate_edits(model, tok, requests, ref, bs)
                edit["runs"].append({"batch_size": bs, "seconds": time.perf_counter() - t, "load": load()})
                scores[bs] = s.as_dict()
        for bs in (16, args.edit_batch):
            edit[f"batch{bs}_s"] = statistics.mean(r["seconds"] for r in edit["runs"] if r["batch_size"] == bs)
            edit[f"batch{bs}_s_per_request"] = edit[f"batch{bs}_s"] / len(requests)
        edit["scores_identical"] = scores[16] == scores[args.edit_batch]
        edit["scores"] = scores
        out["edit_metrics"] = edit
        print(f"evaluate_edits {len(requests)} cases: batch 16 {edit['batch16_s']:.1f} s, batch {args.edit_batch} "
              f"{edit[f'batch{args.edit_batch}_s']:.1f} s, identical scores {edit['scores_identical']}; locality ref {ref_s:.1f} s", flush=True)

    # ---- probes (unchanged by this issue; their share of an arm) ---------------------------------------
    if args.probe_tokens:
        t = time.perf_counter()
        probe = GeneralAbilityProbe.record(model, tok, args.probe_tokens, 256, data_dir=args.data_dir)
        record_s = time.perf_counter() - t
        t = time.perf_counter()
        probe.probe(model)
        out["probes"] = {"tokens": args.probe_tokens, "record_s": record_s, "probe_s": time.perf_counter() - t, "load": load()}
        print(f"probe {args.probe_tokens} tokens: record {record_s:.1f} s, probe {out['probes']['probe_s']:.1f} s", flush=True)

    out["load_at_end"] = load()
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_result(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
