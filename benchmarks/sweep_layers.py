"""Which layer should ROME (or MEMIT) edit in a given model? Edit N CounterFact cases at each candidate.

Each case is edited alone, on the unedited model (weights restored after every case), and scored
CounterFact-style with the mean log-probability of the target tokens:
  efficacy        P(new | prompt)       > P(true | prompt)
  generalization  P(new | rephrase)     > P(true | rephrase)
  specificity     P(true_loc | neighbour) > P(new | neighbour)   (neighbours: other subjects, same relation)
plus the mean |Δ log P(true_loc | neighbour)| the edit causes, and seconds per edit.

  nice -n 10 .venv/bin/python benchmarks/sweep_layers.py --algo rome --layers 2 4 6 8 10 --n-cases 20 \
      --out docs/layer_sweep_rome.json

For MEMIT, ``--layers`` are the *last* layers of windows of ``--window`` consecutive layers.
The key statistics of all candidate layers are computed in one pass first (and cached).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time

import torch
import yaml
from _common import add_output_args, pin_threads, write_result  # benchmarks/ is on sys.path

from prune_lit.data.counterfact import load_counterfact
from prune_lit.data.requests import EditRequest
from prune_lit.editors import MEMITEditor, ROMEEditor
from prune_lit.editors.hparams import MEMITHParams, ROMEHParams, load_hparams
from prune_lit.editors.locate import target_token_ids
from prune_lit.models.batching import pad_batch
from prune_lit.editors.stats import second_moments
from prune_lit.models.arch import arch_spec, get_weight, set_weight
from prune_lit.models.loader import load_model

log = logging.getLogger("sweep_layers")


@torch.no_grad()
def mean_target_logprob(model, tok, prompts: list[str], targets: list[str]) -> torch.Tensor:
    """Mean log P(target tokens | prompt) for each pair: ``[n]``."""
    seqs, spans = [], []
    for p, t in zip(prompts, targets):
        p_ids, t_ids = list(tok(p)["input_ids"]), target_token_ids(tok, t)
        seqs.append(p_ids + t_ids)
        spans.append((len(p_ids), t_ids))
    ids, mask = pad_batch(seqs, tok.pad_token_id or 0)
    logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for i, (start, t_ids) in enumerate(spans):
        pos = torch.arange(start - 1, start - 1 + len(t_ids))
        out.append(logp[i, pos, torch.tensor(t_ids)].mean())
    return torch.stack(out)


def score_case(model, tok, r: EditRequest) -> dict[str, float]:
    """CounterFact-style indicators for one request on the current weights."""
    res: dict[str, float] = {}
    new, true = mean_target_logprob(model, tok, [r.prompt] * 2, [r.target_new, r.ground_truth])
    res["efficacy"] = float(new > true)
    if r.rephrase_prompts:
        n = len(r.rephrase_prompts)
        lp = mean_target_logprob(model, tok, list(r.rephrase_prompts) * 2, [r.target_new] * n + [r.ground_truth] * n)
        res["generalization"] = float((lp[:n] > lp[n:]).float().mean())
    if r.locality_prompts:
        n = len(r.locality_prompts)
        lp = mean_target_logprob(model, tok, list(r.locality_prompts) * 2, list(r.locality_answers) + [r.target_new] * n)
        res["specificity"] = float((lp[:n] > lp[n:]).float().mean())
        res["loc_logp"] = float(lp[:n].mean())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--algo", choices=["rome", "memit"], default="rome")
    ap.add_argument("--layers", type=int, nargs="+", required=True, help="candidate layers (MEMIT: last layer of each window)")
    ap.add_argument("--window", type=int, default=5, help="MEMIT: consecutive layers per candidate")
    ap.add_argument("--n-cases", type=int, default=20)
    ap.add_argument("--mom2-n-samples", type=int, default=None, help="tokens for C (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None, help="value-search steps (default: the preset's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML", help="any other hyperparameter, e.g. context_template_length_params=[[5,5]]")
    add_output_args(ap, None, threads=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pin_threads(args.threads)

    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    spec = arch_spec(model)
    cases = load_counterfact("edit", limit=args.n_cases)
    overrides: dict = {}
    if args.mom2_n_samples:
        overrides["mom2_n_samples"] = args.mom2_n_samples
    if args.steps:
        overrides["v_num_grad_steps"] = args.steps
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    windows = [[args.layers[i]] if args.algo == "rome" else list(range(l - args.window + 1, l + 1)) for i, l in enumerate(args.layers)]

    # All statistics in one pass (cached for the editors' prepare below).
    hp = load_hparams(ROMEHParams if args.algo == "rome" else MEMITHParams, args.algo, None, args.model, **{**overrides, "layers": windows[0]})
    all_layers = sorted({l for w in windows for l in w})
    t0 = time.perf_counter()
    second_moments(model, tok, args.model, [spec.mlp_out_name(l) for l in all_layers], hp.mom2_n_samples, hp.mom2_seq_len, hp.mom2_dtype)
    stats_seconds = time.perf_counter() - t0

    baseline = [score_case(model, tok, r) for r in cases]
    base_agg = {k: sum(c[k] for c in baseline if k in c) / len(baseline) for k in ("efficacy", "generalization", "specificity")}
    report = {
        "model": args.model, "algo": args.algo, "n_cases": len(cases), "hparams": {**vars(hp), "layers": "per row"},
        "unedited": base_agg, "rows": [], "stats_seconds": stats_seconds,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    }
    for w in windows:
        editor = (ROMEEditor if args.algo == "rome" else MEMITEditor)(overrides={**overrides, "layers": w})
        editor.prepare(model, tok, args.model, None)
        names = editor.weight_names(model)
        saved = {n: get_weight(model, n).clone() for n in names}
        per_case, seconds = [], []
        for r, base in zip(cases, baseline):
            with torch.no_grad():
                result = editor.edit(model, tok, [r])
            seconds.append(result.stats.seconds)
            s = score_case(model, tok, r)
            if "loc_logp" in s:
                s["loc_drift"] = abs(s.pop("loc_logp") - base["loc_logp"])
            s["applied"] = float(result.applied)
            per_case.append(s)
            log.info("layers %s case %s: %s, %.1f s, loss %.3f", w, r.case_id, s, result.stats.seconds, result.stats.loss)
            for n, v in saved.items():
                set_weight(model, n, v)
        agg = {k: sum(c[k] for c in per_case if k in c) / max(1, sum(k in c for c in per_case)) for k in per_case[0]}
        agg.update(layers=w, seconds_per_edit=sum(seconds) / len(seconds))
        report["rows"].append(agg)
        log.info("layers %s: %s", w, {k: round(v, 3) if isinstance(v, float) else v for k, v in agg.items()})
        write_result(args.out, report)  # after every candidate: an interrupted sweep keeps what it measured


if __name__ == "__main__":
    main()
