"""Time `record_locality_reference` + `evaluate_edits` on real edit cases (unedited model).

    python -m benchmarks.bench_edit_eval --dataset counterfact --n 100 --threads 1 --out bench_edit_eval.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from prune_lit.reporting import write_json_atomic
from prune_lit.data.edit_datamodule import load_edit_requests
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference
from prune_lit.models.loader import load_model

log = logging.getLogger(__name__)


def run(model_name: str, dataset: str, n: int, batch_size: int, repeats: int, data_dir: str | None = None) -> dict:
    """Seconds for the locality reference and for `evaluate_edits` (each of ``repeats`` runs), plus the scores."""
    lm = load_model(model_name)
    requests = load_edit_requests(dataset, "edit", data_dir, limit=n)
    t = time.perf_counter()
    ref = record_locality_reference(lm.model, lm.tokenizer, requests, batch_size)
    ref_s = time.perf_counter() - t
    times, scores = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        scores = evaluate_edits(lm.model, lm.tokenizer, requests, ref, batch_size)
        times.append(time.perf_counter() - t)
    pairs = sum(2 + 2 * len(r.rephrase_prompts) + 2 * len(r.locality_prompts) for r in requests)
    return {
        "model": model_name,
        "dataset": dataset,
        "n": len(requests),
        "scored_pairs": pairs,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "machine": platform.processor() or platform.machine(),
        "locality_reference_s": round(ref_s, 2),
        "evaluate_edits_s": [round(x, 2) for x in times],
        "evaluate_edits_median_s": round(statistics.median(times), 2),
        "scores": asdict(scores) if scores else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="counterfact", choices=["counterfact", "zsre"])
    ap.add_argument("--n", type=int, default=100, help="edit cases (the first n of the edit split)")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=None, help="also write the result JSON here (atomically)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.model, args.dataset, args.n, args.batch_size, args.repeats, args.data_dir)
    if args.out:
        write_json_atomic(args.out, result)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
