"""Reference defaults vs earlier forms, and most-probable early stopping: edit metrics and seconds per edit.

For each variant (a set of hyperparameter overrides), a fresh SmolLM2-135M is edited sequentially with the
editor directly (ROME: one case per step; MEMIT: ``--memit-batch`` cases per step) on CounterFact cases
``[offset, offset + n)`` of ``--split``; then every case is scored with `evaluate_edits`, comparing mean
per-token NLLs (ROME's/PRUNE's CounterFact code) and, for reference, summed log-probs. Also reported:
the rewrite prompt's P(target_new) (full-sequence probability, mean over cases), ‖ΔW‖_F (all edited
matrices, W − W₀), the value-search steps per case, seconds per edit step, and with ``--ppl-tokens`` the
perplexity of the edited model on the first tokens of WikiText-2 *test* (the split the key statistics
never read). Ratios are against the first variant; on a shared machine compare the CPU seconds of this
process (``mean_step_cpu_s``, one torch thread), which other jobs do not inflate as they do wall time.

    python benchmarks/faithful_compare.py --editor rome --split val --n 100 \\
        --variants "n10k:mom2_n_samples=10000;n100k:mom2_n_samples=100000" --ppl-tokens 20000 \\
        --out benchmarks/results/faithful_stats_choice.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict

import torch
from _common import add_output_args, machine_meta, parse_overrides, pin_threads, write_result  # benchmarks/ is on sys.path

from prune_lit.data.counterfact import load_counterfact
from prune_lit.data.paths import resolve_data_file
from prune_lit.editors import MEMITEditor, ROMEEditor
from prune_lit.data.wikitext import clean_wikitext
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference
from prune_lit.metrics.scoring import score_targets
from prune_lit.models.arch import get_weight
from prune_lit.models.loader import load_model

def parse_variants(text: str) -> list[tuple[str, dict[str, object]]]:
    """``"name:key=value,key=value;name2:..."`` -> [(name, overrides)] (values parsed as YAML)."""
    out = []
    for part in filter(None, (x.strip() for x in text.split(";"))):
        name, _, body = part.partition(":")
        out.append((name.strip(), parse_overrides(body)))
    return out


@torch.no_grad()
def wikitext_test_perplexity(model: torch.nn.Module, tok, n_tokens: int, seq_len: int = 512, data_dir: str | None = None) -> float:
    """exp(mean next-token NLL) over the first ``n_tokens`` tokens of cleaned WikiText-2 test, in ``seq_len`` windows."""
    text = clean_wikitext(resolve_data_file("corpus/wiki.test.raw", data_dir).read_text(encoding="utf-8"))
    ids = torch.tensor(tok(text[: n_tokens * 8], add_special_tokens=False)["input_ids"][:n_tokens])
    nll, count = 0.0, 0
    for chunk in ids.split(seq_len):
        if chunk.numel() < 2:
            continue
        logits = model(input_ids=chunk[None]).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
        count += chunk.numel() - 1
    return math.exp(nll / count)


def run(editor_name: str, name: str, overrides: dict[str, object], args: argparse.Namespace, requests: list) -> dict:
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    cls = {"rome": ROMEEditor, "memit": MEMITEditor}[editor_name]
    editor = cls(**overrides)
    t0 = time.perf_counter()
    editor.prepare(model, tok, loaded.name, args.data_dir)
    prepare_s = time.perf_counter() - t0
    names = editor.weight_names(model)
    w0 = {n: get_weight(model, n).clone() for n in names}
    reference = record_locality_reference(model, tok, requests, 16)
    batch = args.memit_batch if editor_name == "memit" else 1
    seconds, cpu_seconds, steps, applied = [], [], [], 0
    for i in range(0, len(requests), batch):
        t, c = time.perf_counter(), time.process_time()
        result = editor.edit(model, tok, requests[i : i + batch])
        seconds.append(time.perf_counter() - t)
        cpu_seconds.append(time.process_time() - c)
        steps.append(result.stats.steps)
        applied += int(result.applied)
    edit_s = sum(seconds)
    t, c = time.perf_counter(), time.process_time()
    mean_scores = evaluate_edits(model, tok, requests, reference, 16, reduction="mean")
    eval_s, eval_cpu_s = time.perf_counter() - t, time.process_time() - c
    sum_scores = evaluate_edits(model, tok, requests, reference, 16, reduction="sum")
    rewrite = score_targets(model, tok, [r.prompt for r in requests], [r.target_new for r in requests])
    p_new = rewrite.logprob("sum").exp()
    delta_norm = math.sqrt(sum(float((get_weight(model, n).float() - w0[n].float()).norm()) ** 2 for n in names))
    row = {
        "variant": name,
        "editor": editor_name,
        "overrides": overrides,
        "hparams": asdict(editor.hp),
        "n_cases": len(requests),
        "edit_steps": len(seconds),
        "applied_steps": applied,
        "prepare_s": round(prepare_s, 2),
        "step_seconds": [round(s, 3) for s in seconds],
        "mean_step_s": round(edit_s / len(seconds), 3),
        # CPU seconds of this process (one torch thread): what a step costs, whatever else the machine runs
        "mean_step_cpu_s": round(sum(cpu_seconds) / len(cpu_seconds), 3),
        "step_cpu_seconds": [round(s, 3) for s in cpu_seconds],
        "median_step_s": round(statistics.median(seconds), 3),
        "total_edit_s": round(edit_s, 2),
        "eval_s": round(eval_s, 2),
        "eval_cpu_s": round(eval_cpu_s, 2),
        "value_search_steps_mean": sum(steps) / len(steps),
        "value_search_steps": steps,
        "scores_mean_nll": asdict(mean_scores),
        "scores_sum_logprob": asdict(sum_scores),
        "rewrite_p_new_mean": float(p_new.mean()),
        "rewrite_p_new_median": float(p_new.median()),
        "delta_w_fro": delta_norm,
        "load_average_1m": os.getloadavg()[0],
    }
    if args.ppl_tokens:
        row["ppl_wikitext_test"] = wikitext_test_perplexity(model, tok, args.ppl_tokens, data_dir=args.data_dir)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--editor", default="rome", choices=["rome", "memit"])
    p.add_argument("--variants", required=True, help="';'-separated 'name:key=value,...' override sets; the first is the baseline")
    p.add_argument("--split", default="edit", choices=["edit", "train", "val"])
    p.add_argument("--offset", type=int, default=0, help="first case (file order) of the split")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--memit-batch", type=int, default=10)
    p.add_argument("--ppl-tokens", type=int, default=0, help="perplexity on this many WikiText-2 test tokens (0: skip)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    add_output_args(p, None)
    args = p.parse_args()
    pin_threads(args.threads)
    requests = load_counterfact(args.split, data_dir=args.data_dir, limit=args.offset + args.n)[args.offset :]
    meta = machine_meta() | {
        "split": args.split,
        "cases": [args.offset, args.offset + len(requests)],
        "case_ids": [r.case_id for r in requests],
    }
    if args.ppl_tokens:
        base = load_model(args.model)
        meta["ppl_wikitext_test_unedited"] = wikitext_test_perplexity(base.model, base.tokenizer, args.ppl_tokens, data_dir=args.data_dir)
        meta["ppl_tokens"] = args.ppl_tokens
    print(json.dumps(meta), flush=True)
    rows = []
    for name, overrides in parse_variants(args.variants):
        row = run(args.editor, name, overrides, args, requests)
        rows.append(row)
        base = rows[0]
        s = row["scores_mean_nll"]
        print(
            f"{name:14s} step {row['mean_step_s']:.2f} s, {row['mean_step_cpu_s']:.2f} CPU s "
            f"({base['mean_step_cpu_s'] / row['mean_step_cpu_s']:.2f}x less CPU than {base['variant']}), "
            f"search steps {row['value_search_steps_mean']:.2f} | efficacy {s['efficacy']:.3f} generalization {s['generalization']:.3f} "
            f"neighborhood {s['neighborhood']:.3f} locality_top1 {s['locality_top1']:.3f} | P(new) {row['rewrite_p_new_mean']:.3f} "
            f"||dW|| {row['delta_w_fro']:.2f}" + (f" | ppl {row['ppl_wikitext_test']:.2f}" if "ppl_wikitext_test" in row else ""),
            flush=True,
        )
        write_result(args.out, {"meta": meta, "runs": rows})  # after every variant: a long run keeps what it has


if __name__ == "__main__":
    main()
