"""Prefill positions wasted on left padding by the downstream evaluator's batching (tokenizer only, no model).

Compares, per task, the token positions a batched prefill runs when batches of ``--batch-size`` are cut
(a) in the order `DownstreamEvaluator` gets its examples (``load_tasks`` sorts them by prompt length) and
(b) after sorting by prompt length again here, to check whether re-ordering leaves anything to gain.
Prefill is compute-bound on this CPU (docs/benchmarks.md), so the share of padded positions is the share
of prefill time spent on padding.

    python benchmarks/bench_padding.py --limit 20 100 --chat-template
"""

from __future__ import annotations

import argparse

from _common import add_output_args, write_result  # benchmarks/ is on sys.path

from prune_lit.models.loader import load_model
from prune_lit.modules.downstream_eval import DownstreamEvaluator
from prune_lit.models.generation import apply_chat_template


def padded_positions(lengths: list[int], batch_size: int) -> int:
    """Positions run when ``lengths`` are cut into consecutive batches, each padded to its longest row."""
    return sum(max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, nargs="+", default=[20, 100], help="examples per task (one row per value)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chat-template", action="store_true", help="wrap prompts as the editing configs do")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-dir", default=None)
    add_output_args(p, "padding.json", threads=None)
    args = p.parse_args()
    tok = load_model(args.model).tokenizer
    rows = []
    for limit in args.limit:
        ev = DownstreamEvaluator(limit=limit, data_dir=args.data_dir, batch_size=args.batch_size, progress=False)
        for task, examples in ev.load(tok).items():
            prompts = [e.prompt for e in examples]
            fed = apply_chat_template(tok, prompts) if args.chat_template else prompts
            lengths = [len(tok(t)["input_ids"]) for t in fed]
            sorted_lengths = [lengths[i] for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i]))]
            real = sum(lengths)
            before, after = padded_positions(lengths, args.batch_size), padded_positions(sorted_lengths, args.batch_size)
            row = {"limit": limit, "task": task, "examples": len(prompts), "real_tokens": real,
                   "positions_evaluator_order": before, "positions_length_sorted": after,
                   "padding_share_before": 1 - real / before, "padding_share_after": 1 - real / after,
                   "prefill_positions_ratio": after / before}
            rows.append(row)
            print(f"limit {limit:4d} {task:14s} real {real:6d}  evaluator order {before:6d} ({100 * row['padding_share_before']:4.1f} % pad)  "
                  f"length-sorted {after:6d} ({100 * row['padding_share_after']:4.1f} % pad)  -> {after / before:.2f}x positions", flush=True)
    write_result(args.out, {"batch_size": args.batch_size, "chat_template": args.chat_template, "rows": rows})


if __name__ == "__main__":
    main()
