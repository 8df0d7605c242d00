"""Which null-space threshold should AlphaEdit use on a model? Directions kept, and one batch edit per threshold.

1. For each threshold: how many eigen-directions of C = E[k kᵀ] each edited layer keeps (the null space).
2. One batch of ``--n-cases`` CounterFact edit-split cases from ``--start`` (file order; choose cases you do
   not report) is edited on the unedited model with MEMIT and with AlphaEdit at every threshold. The value
   search (the expensive part, identical for all) runs once; its targets are reused. Each edit is scored with
   the project's `evaluate_edits` (efficacy, generalization, neighborhood) and the weights restored.

  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/tune_alphaedit_threshold.py --model smollm2-135m \
      --start 1000 --n-cases 100 --out benchmarks/results/alphaedit_threshold.json
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from _common import RESULTS, write_result  # benchmarks/ is on sys.path

import prune_lit.editors.memit as memit_module
from prune_lit.data.counterfact import load_counterfact
from prune_lit.editors import AlphaEditEditor, MEMITEditor, apply_deltas, null_space_projector
from prune_lit.data.wikitext import wikitext_windows
from prune_lit.metrics.disturbance import held_out_keys, kept_energy, output_shift
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference
from prune_lit.models.arch import arch_spec, get_weight, set_weight
from prune_lit.models.loader import load_model

log = logging.getLogger("tune_alphaedit_threshold")


def memoise_value_search() -> dict:
    """Make MEMIT's value search reuse its result per case (the model is unedited whenever it runs here)."""
    cache: dict = {}
    search = memit_module.optimise_target

    def cached(model, tok, module, request, templates, **kw):
        if request.case_id not in cache:
            cache[request.case_id] = search(model, tok, module, request, templates, **kw)
        return cache[request.case_id]

    memit_module.optimise_target = cached
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--start", type=int, default=1000, help="first edit-split case (file order)")
    ap.add_argument("--n-cases", type=int, default=100)
    ap.add_argument("--absolute", type=float, nargs="*", default=[2e-2, 1e-2, 5e-3, 3e-3, 2e-3])
    ap.add_argument("--relative", type=float, nargs="*", default=[1e-2, 5e-3, 2e-3])
    ap.add_argument("--held-out-tokens", type=int, default=0,
                    help="also the output shift ‖ΔW K‖/‖W₀ K‖ of every solve on this many WikiText-2 test tokens' keys, "
                         "their energy share in each null space, and locality (top-1 of the locality prompts)")
    ap.add_argument("--out", type=Path, default=RESULTS / "alphaedit_threshold.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    torch.manual_seed(0)

    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    requests = load_counterfact("edit", args.data_dir, limit=args.start + args.n_cases)[args.start:]
    cache = memoise_value_search()

    reference = record_locality_reference(model, tok, requests, 16) if args.held_out_tokens else None
    before = asdict(evaluate_edits(model, tok, requests, reference))
    log.info("unedited: %s", before)
    rows: list[dict] = []
    keys: dict[str, torch.Tensor] = {}
    if args.held_out_tokens:
        probe_editor = MEMITEditor()
        probe_editor.prepare(model, tok, args.model, args.data_dir)
        keys = held_out_keys(model, wikitext_windows(tok, args.held_out_tokens, 256, "test", args.data_dir), probe_editor.weight_names(model))

    def run(name: str, editor, **info) -> None:
        editor.prepare(model, tok, args.model, args.data_dir)
        names = editor.weight_names(model)
        originals = {n: get_weight(model, n).clone() for n in names}
        t0 = time.perf_counter()
        with torch.enable_grad():
            deltas, _ = editor.compute_deltas(model, tok, requests)
        seconds = time.perf_counter() - t0
        applied = apply_deltas(model, deltas)
        scores = asdict(evaluate_edits(model, tok, requests, reference)) if applied else {}
        for n, w in originals.items():
            set_weight(model, n, w)
        kept = getattr(editor, "n_kept", {})
        shift = {n.split(".")[2]: output_shift(originals[n], deltas[n], keys[n]) for n in deltas if n in keys}
        spec = arch_spec(model)
        energy = {layer: kept_energy(P, keys[spec.mlp_out_name(layer) + ".weight"])
                  for layer, P in getattr(editor, "P", {}).items() if keys}
        row = dict(name=name, **info, applied=applied, seconds_compute=seconds, kept=kept,
                   delta_norm=float(sum(float(d.norm()) ** 2 for d in deltas.values()) ** 0.5), **scores,
                   held_out_shift=shift, held_out_kept_energy=energy)
        log.info("%s", row)
        rows.append(row)

    run("memit", MEMITEditor())  # runs the value search once for all
    for t in args.absolute:
        run(f"alphaedit abs {t:g}", AlphaEditEditor(nullspace_threshold=t, nullspace_threshold_mode="absolute"),
            threshold=t, mode="absolute")
    for t in args.relative:
        run(f"alphaedit rel {t:g}", AlphaEditEditor(nullspace_threshold=t, nullspace_threshold_mode="relative"),
            threshold=t, mode="relative")

    # directions kept per layer on a finer grid (no editing)
    ed = AlphaEditEditor()
    ed.prepare(model, tok, args.model, args.data_dir)
    from prune_lit.editors.stats import second_moments
    hp = ed.hp
    mods = [arch_spec(model).mlp_out_name(layer) for layer in hp.layers]
    moments = second_moments(model, tok, args.model, mods, hp.mom2_n_samples, hp.mom2_seq_len, hp.mom2_dtype, args.data_dir, None)
    spectrum = {}
    for layer, mod in zip(hp.layers, mods):
        eig = torch.linalg.eigvalsh(moments[mod].double())
        spectrum[layer] = dict(
            d=int(eig.numel()), eig_max=float(eig.max()), eig_min=float(eig.min()),
            kept_absolute={f"{t:g}": null_space_projector(moments[mod], t)[1] for t in [5e-2, 2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1e-3]},
            kept_relative={f"{t:g}": null_space_projector(moments[mod], t, relative=True)[1] for t in [2e-2, 1e-2, 5e-3, 2e-3, 1e-3]},
        )
    out = dict(model=args.model, cases=f"CounterFact edit split, cases {args.start}..{args.start + args.n_cases - 1} (file order), one batch",
               value_searches=len(cache), unedited=before, rows=rows, spectrum=spectrum,
               host=platform.node(), torch=torch.__version__)
    write_result(args.out, out)
    for r in rows:
        print(f"{r['name']:<22} kept {r['kept']}  eff {r.get('efficacy', float('nan')):.3f} gen {r.get('generalization', float('nan')):.3f} "
              f"nbh {r.get('neighborhood', float('nan')):.3f} loc_top1 {r.get('locality_top1', float('nan')):.3f}  |dW| {r['delta_norm']:.3g}"
              + (f"  shift {max(r['held_out_shift'].values()):.4f} (max over layers)" if r["held_out_shift"] else "")
              + (f"  kept energy {r['held_out_kept_energy']}" if r["held_out_kept_energy"] else ""))
    print(f"unedited: eff {before['efficacy']:.3f} gen {before['generalization']:.3f} nbh {before['neighborhood']:.3f}")


if __name__ == "__main__":
    main()
