"""How much do accumulated edits move each edited matrix's output on ordinary text? (from run checkpoints)

For every run checkpoint given (``checkpoints/<run>/step-N``, as the editing loop writes them), the edited
matrices W_N are compared with the unedited W₀ on **held-out keys**: the inputs of each edited matrix on the
first ``--tokens`` tokens of WikiText-2 *test* in the unedited model (text no key statistics were computed
from). Per matrix:

* ``out_shift``   ‖ΔW K‖_F / ‖W₀ K‖_F — the relative change of the matrix's output on that text (what
                  MEMIT's λC term and AlphaEdit's null-space projection are both meant to keep small);
* ``delta_fro``   ‖ΔW‖_F, and ``sigma_ratio`` σ_max(ΔW)/σ_max(W₀) (what PRUNE bounds);
* ``stats_shift`` (``--stats-shift``) ‖ΔW C^{1/2}‖_F / ‖W₀ C^{1/2}‖_F with C the cached key statistics the editors
                  use (WikiText-2 *validation*, ``--stats-tokens``): the same shift in expectation over the keys
                  the statistics saw, which key-aware PRUNE's energy rule compares with its scale;
* ``kept_energy`` (``--alphaedit-threshold``) the share ‖P K‖²/‖K‖² of the held-out keys' energy inside the
                  space AlphaEdit's projector P lets edits use (P from the cached key statistics, as the editor
                  builds it): 0 would be a true null space.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/edit_disturbance.py \\
        --runs $STUDY_DIR/checkpoints/alphaedit/step-0000500 $STUDY_DIR/checkpoints/memit/step-0000500 \\
        --alphaedit-threshold 0.02 --out benchmarks/results/edit_disturbance.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import add_output_args, write_result  # benchmarks/ is on sys.path
from safetensors.torch import load_file

from prune_lit.data.wikitext import wikitext_windows
from prune_lit.editors import null_space_projector
from prune_lit.editors.stats import second_moments
from prune_lit.metrics.disturbance import expected_output_shift, held_out_keys, kept_energy, output_shift
from prune_lit.models.arch import get_weight
from prune_lit.models.loader import load_model


def matrix_report(w0: torch.Tensor, w: torch.Tensor, K: torch.Tensor, c: torch.Tensor | None = None) -> dict[str, float]:
    """``w0``, ``w`` ``[d_out, d_in]``, ``K`` ``[d_in, t]`` -> out_shift, delta_fro, sigma_ratio (and stats_shift
    under the key second moment ``c`` ``[d_in, d_in]`` when given)."""
    delta = w.double() - w0.double()
    report = {
        "out_shift": output_shift(w0, delta, K),
        "delta_fro": float(delta.norm()),
        "sigma_ratio": float(torch.linalg.matrix_norm(delta, ord=2) / torch.linalg.matrix_norm(w0.double(), ord=2)),
    }
    if c is not None:
        report["stats_shift"] = expected_output_shift(w0, delta, c)
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="run checkpoint folders (step-N)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=5000, help="held-out WikiText-2 test tokens")
    p.add_argument("--alphaedit-threshold", type=float, default=None, help="also the kept-space energy of the keys (absolute threshold)")
    p.add_argument("--stats-tokens", type=int, default=10000, help="token count of the cached key statistics (P, --stats-shift)")
    p.add_argument("--stats-shift", action="store_true", help="also the shift in expectation under those statistics' C")
    p.add_argument("--data-dir", default=None)
    add_output_args(p, None, threads=None)
    args = p.parse_args(argv)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    checkpoints = {run: load_file(str(run / "weights.safetensors")) for run in args.runs}
    names = sorted({n for ws in checkpoints.values() for n in ws})
    windows = wikitext_windows(tok, args.tokens, 256, "test", args.data_dir)
    keys = held_out_keys(model, windows, names)
    out: dict[str, object] = {"model": args.model, "held_out_tokens": int(windows.numel()), "runs": {}}
    modules = [n.removesuffix(".weight") for n in names]
    moments = {}
    if args.alphaedit_threshold is not None or args.stats_shift:
        moments = second_moments(model, tok, loaded.name, modules, args.stats_tokens, 256, "float32", args.data_dir, None)
    if args.alphaedit_threshold is not None:
        kept = {}
        for n, m in zip(names, modules):
            P, n_kept = null_space_projector(moments[m], args.alphaedit_threshold)
            kept[n] = {"n_kept": n_kept, "kept_energy": kept_energy(P, keys[n])}
        out["alphaedit_kept_space"] = {"threshold": args.alphaedit_threshold, "matrices": kept}
    for run, weights in checkpoints.items():
        rows = {n: matrix_report(get_weight(model, n), w, keys[n], moments[n.removesuffix(".weight")] if args.stats_shift else None)
                for n, w in weights.items()}
        state = json.loads((run / "state.json").read_text())
        out["runs"][str(run)] = {"requests_seen": state["counters"]["requests_seen"], "matrices": rows,
                                 "max_out_shift": max(r["out_shift"] for r in rows.values())}
        print(f"{run}: " + ", ".join(f"{n.split('.')[2]}: shift {r['out_shift']:.4f}" + (f" (stats {r['stats_shift']:.4f})" if "stats_shift" in r else "")
                                     + f" ‖ΔW‖ {r['delta_fro']:.2f} σ {r['sigma_ratio']:.3f}"
                                     for n, r in rows.items()), flush=True)
    if "alphaedit_kept_space" in out:
        print("kept-space energy of held-out keys: " + ", ".join(f"{n.split('.')[2]}: {v['kept_energy']:.3f} ({v['n_kept']} dirs)"
                                                               for n, v in out["alphaedit_kept_space"]["matrices"].items()))
    write_result(args.out, out)


if __name__ == "__main__":
    main()
