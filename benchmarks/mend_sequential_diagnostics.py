"""Why MEND's updates grow in sequence: per-edit measurements of what enters and leaves the hypernetwork.

Sequential MEND edits (one CounterFact case per step, cases ``--offset`` … on the edit split, outside the
study's 0–999) on SmolLM2-135M with a trained hypernetwork. For every step and inner matrix it records:

* what the hypernetwork sees: the token rows' RMS of ``u`` (the matrix input) and ``δ`` (the output gradient), and
  the mean |z| of the rows after the training-time running statistics (``z = (x − μ)/σ``; a row drawn like the
  training rows has mean |z| ≈ 0.8) — the question "do the gradients of an edited model leave the range the
  statistics were fitted on";
* what it emits: ‖ΔW_step‖_F / ‖W₀‖_F and σ₁(ΔW_step) (from the thin factors, a k×k problem), and the learned
  edit lr of the matrix;
* the step's fine-tuning NLL before the edit;
* every ``--every`` steps: σ_max(W − W₀)/σ_max(W₀) per matrix and WikiText-2 perplexity on ``--ppl-tokens`` test
  tokens.

Every ``--every`` steps also the efficacy and generalization of the cases edited so far (`evaluate_edits`).

``--variants`` runs several arms on the same cases from a fresh model each, each a ``+``-joined list of parts:
``none`` (the trained update), ``prune`` (PRUNE after every edit on the accumulated ΔW, dense), ``zclip<c>`` (the
named `MENDEditor` option ``input_z_clip=c``: normalised inputs clipped to ±c before the hypernetwork), ``lr<s>``
(``lr_scale=s``: every update times s); e.g. ``zclip3+lr0.3``.

    OMP_NUM_THREADS=1 python benchmarks/mend_sequential_diagnostics.py --n-edits 100 --every 10 \\
        --variants none,prune --out benchmarks/results/mend_sequential_diagnostics.json
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
from _common import add_output_args, machine_meta, pin_threads, portable, write_result  # benchmarks/ is on sys.path

from prune_lit.data.edit_datamodule import load_edit_requests
from prune_lit.data.wikitext import wikitext_windows
from prune_lit.editors.mend import MENDEditor
from prune_lit.editors.mend_net import _key, finetune_factors, lm_batch, nonzero_rows
from prune_lit.models.arch import get_weight
from prune_lit.metrics.editing_eval import evaluate_edits
from prune_lit.metrics.probes import next_token_nll
from prune_lit.models.loader import load_model
from prune_lit.restraint.factored import spectral_norm_of_factors
from prune_lit.restraint.prune import restrain_delta


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor) -> float:
    nll = sum(float(next_token_nll(model(input_ids=ids).logits, ids).sum()) for ids in windows.split(4))
    return math.exp(nll / windows[:, 1:].numel())


def run_variant(args: argparse.Namespace, variant: str, requests: list, windows: torch.Tensor) -> dict[str, Any]:
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    parts = variant.split("+")
    unknown = [x for x in parts if x not in ("none", "prune") and not x.startswith(("zclip", "lr"))]
    if unknown:
        raise SystemExit(f"unknown variant part(s) {unknown} in {variant!r}")
    z_clip = next((float(x[5:]) for x in parts if x.startswith("zclip")), None)
    lr_scale = next((float(x[2:]) for x in parts if x.startswith("lr")), 1.0)
    editor = MENDEditor(args.checkpoint, input_z_clip=z_clip, lr_scale=lr_scale)
    editor.prepare(model, tok, args.model, None)
    hyper, names = editor.hypernet, editor.meta["inner_params"]
    w0 = {n: get_weight(model, n).detach().clone() for n in names}
    smax0 = {n: float(torch.linalg.matrix_norm(w, ord=2)) for n, w in w0.items()}
    fro0 = {n: float(torch.linalg.vector_norm(w)) for n, w in w0.items()}
    lrs = {n: float(hyper.edit_lrs[i]) for i, n in enumerate(hyper.names)}
    scores0 = evaluate_edits(model, tok, requests, None)
    steps, checkpoints = [], [{"edits": 0, "ppl": perplexity(model, windows), "sigma_ratio": {n: 0.0 for n in names},
                               "efficacy": scores0.efficacy, "generalization": scores0.generalization}]
    t0 = time.perf_counter()
    for i, req in enumerate(requests, 1):
        batch = lm_batch(tok, [req.prompt], [req.target_new], int(editor.meta.get("max_length", 64)))
        loss, factors, _ = finetune_factors(model, batch, names)
        row: dict[str, Any] = {"edit": i, "nll_before": float(loss), "matrices": {}}
        with torch.no_grad():
            thin = editor.transform_factors(factors)
            for n in names:
                u, d = nonzero_rows(*factors[n])
                t = hyper.transforms[_key(hyper.shapes[n])]
                zu, zd = t.norm_u(u), t.norm_delta(d)
                a, b = thin[n]
                row["matrices"][n] = {
                    "u_rms": float(u.pow(2).mean().sqrt()), "delta_rms": float(d.pow(2).mean().sqrt()),
                    "z_u": float(zu.abs().mean()), "z_delta": float(zd.abs().mean()),
                    "z_delta_max": float(zd.abs().max()) if zd.numel() else 0.0,
                    "step_fro_ratio": float(torch.linalg.vector_norm(a @ b.T)) / fro0[n], "step_sigma1": spectral_norm_of_factors(a, b),
                }
                get_weight(model, n).add_(a @ b.T)
            if "prune" in parts:
                for n in names:
                    w = get_weight(model, n)
                    w.copy_(w0[n] + restrain_delta(w - w0[n], smax0[n]))
        steps.append(row)
        if i % args.every == 0 or i == len(requests):
            with torch.no_grad():
                ratio = {n: float(torch.linalg.matrix_norm(get_weight(model, n) - w0[n], ord=2)) / smax0[n] for n in names}
            scores = evaluate_edits(model, tok, requests[:i], None)
            checkpoints.append({"edits": i, "ppl": perplexity(model, windows), "sigma_ratio": ratio,
                                "efficacy": scores.efficacy, "generalization": scores.generalization})
            print(f"{variant} {i}: ppl {checkpoints[-1]['ppl']:.4g}, max σ ratio {max(ratio.values()):.3g}, "
                  f"efficacy {scores.efficacy:.2f}, nll_before {row['nll_before']:.3g}", flush=True)
    return {"variant": variant, "edit_lrs": lrs, "sigma_max_w0": smax0, "steps": steps, "checkpoints": checkpoints,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--checkpoint", default="checkpoints/mend/best.ckpt")
    p.add_argument("--n-edits", type=int, default=100)
    p.add_argument("--offset", type=int, default=2000, help="first CounterFact edit-split case (the study uses 0–999)")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--ppl-tokens", type=int, default=2048)
    p.add_argument("--variants", default="none,prune")
    add_output_args(p, "mend_sequential_diagnostics.json")
    args = p.parse_args()
    pin_threads(args.threads)
    requests = load_edit_requests("counterfact", "edit", limit=args.offset + args.n_edits)[args.offset :]
    tok = load_model(args.model).tokenizer
    windows = wikitext_windows(tok, args.ppl_tokens, 256)
    out = {"command": "python benchmarks/mend_sequential_diagnostics.py " + " ".join(
               f"--{k.replace('_', '-')} {portable(v) if k in ('out', 'checkpoint') else v}" for k, v in vars(args).items()),
           "machine": machine_meta(), "cases": [args.offset, args.offset + args.n_edits - 1],
           "variants": [run_variant(args, v, requests, windows) for v in args.variants.split(",")]}
    write_result(args.out, out)


if __name__ == "__main__":
    main()
