"""Short screen of restraints on sequential ROME edits of SmolLM2: PRUNE, key-aware PRUNE variants, SPHERE.

Cases come from the CounterFact edit split *outside* the study's 0–999 (default 1000–1049), so settings screened
here never touch the reported cases. Every arm starts from the same W_0, edits the same cases in order with ROME
(the layer-4 preset), and restrains as the arm says:

* ``none``: no restraint;
* ``prune``: PRUNE per edit (α = e, `restrain_delta_with_stats` on W − W_0, as `SpectralRestraint`);
* ``key_spectral[_x]``: key-aware PRUNE per edit, τ = x · σ_max(W_0 C^{1/2}) (x = 1 without suffix);
* ``key_energy_x``: key-aware PRUNE, energy rule, τ = x · ‖W_0 C^{1/2}‖_F;
* ``sphere[_b_a]``: SPHERE on each step's update before it is applied (β = b, α = a; 0.5 / 0.5 default),
  directions from the current W.

After the last edit: perplexity and KL on WikiText-2 test windows (the unedited model's perplexity recorded
once), and efficacy / generalization / neighborhood on the edited cases. Results go to
``benchmarks/results/restraint_screen.json``, one entry per (arm, cases) — finished arms are skipped on a rerun.

    nice -n 10 python benchmarks/screen_restraints.py --arms sphere,key_energy_0.1,key_spectral,prune --n-edits 50
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prune_lit.data.counterfact import load_counterfact
from prune_lit.editors.base import apply_deltas
from prune_lit.editors.rome import ROMEEditor
from prune_lit.editors.stats import second_moments
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference
from prune_lit.metrics.probes import GeneralAbilityProbe
from prune_lit.models.arch import arch_spec, get_weight, set_weight
from prune_lit.models.loader import load_model
from prune_lit.restraint import restrain_delta_with_stats, spectral_norm
from prune_lit.restraint.key_aware import key_threshold, restrain_delta_key_aware, sqrt_psd
from prune_lit.restraint.sphere import SphereProjector, reference_side

log = logging.getLogger("screen_restraints")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="sphere,key_energy_0.1,key_spectral,prune")
    p.add_argument("--first-case", type=int, default=1000, help="index in the CounterFact edit split (study: 0–999)")
    p.add_argument("--n-edits", type=int, default=50)
    p.add_argument("--probe-tokens", type=int, default=5000)
    p.add_argument("--probe-every", type=int, default=0, help="also probe perplexity every k edits (0: only at the end)")
    p.add_argument("--save-weights", default=None, help="folder to save each arm's final edited matrix in (<arm>_<cases>.pt)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "restraint_screen.json"))
    return p.parse_args(argv)


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"runs": []}


def save_results(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


class Arm:
    """One restraint setting: ``before_apply`` (SPHERE) and ``after_apply`` (PRUNE and key-aware) hooks."""

    def __init__(self, name: str, w0: torch.Tensor, c: torch.Tensor, transposed: bool) -> None:
        self.name, self.w0 = name, w0
        self.kind = name.split("_")[0]
        self.basis: torch.Tensor | None = None
        self.acted = 0
        self.info: dict = {}
        parts = name.split("_")
        if self.kind == "prune":
            self.sigma = spectral_norm(w0)
            self.info["sigma_max_w0"] = self.sigma
        elif self.kind == "key":
            rule = parts[1]
            scale = float(parts[2]) if len(parts) > 2 else 1.0
            root = sqrt_psd(c)
            self.rule = rule
            self.tau = key_threshold(w0, root, rule, scale)
            self.sqrt_c = root.float()
            self.sqrt_c_norm = float(torch.linalg.matrix_norm(root, ord=2))
            self.info.update(rule=rule, scale=scale, threshold=self.tau,
                             spectral_w0_c=key_threshold(w0, root, "spectral"), frobenius_w0_c=key_threshold(w0, root, "energy"))
        elif self.kind == "sphere":
            self.beta = float(parts[1]) if len(parts) > 1 else 0.5
            self.alpha = float(parts[2]) if len(parts) > 2 else 0.5
            self.side = reference_side(transposed)
            self.info.update(beta_hse=self.beta, alpha=self.alpha, side=self.side)
        elif self.kind != "none":
            raise ValueError(f"unknown arm {name!r}")

    def before_apply(self, w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if self.kind != "sphere":
            return delta
        proj = SphereProjector.from_weight(w, self.beta, self.alpha, self.side)
        self.info["directions_last"] = proj.rank
        self.acted += 1
        return proj(delta)

    def after_apply(self, w: torch.Tensor) -> torch.Tensor:
        if self.kind not in ("prune", "key"):
            return w
        delta = w - self.w0
        if self.kind == "prune":
            res = restrain_delta_with_stats(delta, self.sigma, init_basis=self.basis)
        else:
            res = restrain_delta_key_aware(delta, self.sqrt_c, self.tau, rule=self.rule, sqrt_c_norm=self.sqrt_c_norm, init_basis=self.basis)
        self.basis = res.basis if res.basis is not None else self.basis
        if res.n_restrained:
            self.acted += 1
        return res.apply_(w.clone())


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    data = load_results(out)
    cases_key = f"{args.first_case}-{args.first_case + args.n_edits - 1}"
    done = {(r["arm"], r["cases"]) for r in data["runs"]}
    arms = [a for a in args.arms.split(",") if a and (a, cases_key) not in done]
    if not arms:
        print("every arm already in", out)
        return 0
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    editor = ROMEEditor()
    editor.prepare(model, tok, args.model, None)
    name = editor.weight_names(model)[0]
    module = name.removesuffix(".weight")
    hp = editor.hp
    c = second_moments(model, tok, args.model, [module], hp.mom2_n_samples, hp.mom2_seq_len, hp.mom2_dtype)[module]
    w0 = get_weight(model, name).float().clone()
    requests = load_counterfact("edit", limit=args.first_case + args.n_edits)[args.first_case :]
    if len(requests) < args.n_edits:
        raise SystemExit(f"only {len(requests)} cases from {args.first_case}")
    probe = GeneralAbilityProbe.record(model, tok, args.probe_tokens)
    base = probe.probe(model)
    loc_ref = record_locality_reference(model, tok, requests)
    unedited = evaluate_edits(model, tok, requests, loc_ref)
    transposed = arch_spec(model).transposed
    for arm_name in arms:
        set_weight(model, name, w0)
        arm = Arm(arm_name, w0, c, transposed)
        t0 = time.perf_counter()
        restraint_seconds = 0.0
        curve: list[dict] = []
        for i, req in enumerate(tqdm(requests, desc=arm_name), start=1):
            deltas, _ = editor.compute_deltas(model, tok, [req])
            t = time.perf_counter()
            deltas = {n: arm.before_apply(get_weight(model, n).float(), d) for n, d in deltas.items()}
            restraint_seconds += time.perf_counter() - t
            if not apply_deltas(model, deltas):
                continue
            t = time.perf_counter()
            set_weight(model, name, arm.after_apply(get_weight(model, name).float()))
            restraint_seconds += time.perf_counter() - t
            if args.probe_every and i % args.probe_every == 0 and i < len(requests):
                mid = probe.probe(model)
                curve.append({"num_edits": i, "perplexity": mid.perplexity, "perplexity_change": mid.perplexity / base.perplexity - 1.0,
                              "kl_from_unedited": mid.kl_from_unedited})
        edit_seconds = time.perf_counter() - t0
        if args.save_weights:
            Path(args.save_weights).mkdir(parents=True, exist_ok=True)
            torch.save(get_weight(model, name).float().clone(), Path(args.save_weights) / f"{arm_name}_{cases_key}.pt")
        pr = probe.probe(model)
        scores = evaluate_edits(model, tok, requests, loc_ref)
        delta = get_weight(model, name).float() - w0
        row = {
            "arm": arm_name,
            "cases": cases_key,
            "n_edits": args.n_edits,
            "model": args.model,
            "edited": name,
            "perplexity_unedited": base.perplexity,
            "perplexity": pr.perplexity,
            "perplexity_change": pr.perplexity / base.perplexity - 1.0,
            "kl_from_unedited": pr.kl_from_unedited,
            "probe_tokens": pr.n_tokens,
            **scores.as_dict(),
            "unedited_scores": unedited.as_dict(),
            "delta_frobenius": float(delta.norm()),
            "delta_spectral": float(torch.linalg.matrix_norm(delta.double(), ord=2)),
            "delta_key_energy_rms": float(torch.sqrt(torch.einsum("ij,jk,ik->", delta.double(), c.double(), delta.double()))),
            "perplexity_curve": curve,
            "steps_restraint_acted": arm.acted,
            "arm_info": {k: v for k, v in arm.info.items()},
            "seconds_total": edit_seconds,
            "seconds_restraint": restraint_seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": os.getloadavg(),
        }
        data = load_results(out)
        data["runs"] = [r for r in data["runs"] if (r["arm"], r["cases"]) != (arm_name, cases_key)] + [row]
        save_results(out, data)
        print(
            f"{arm_name}: perplexity {base.perplexity:.2f} -> {pr.perplexity:.2f} ({100 * row['perplexity_change']:+.1f} %), "
            f"efficacy {scores.efficacy:.2f}, generalization {scores.generalization:.2f}, neighborhood {scores.neighborhood:.2f}, "
            f"acted {arm.acted}/{args.n_edits}, {edit_seconds / 60:.1f} min (restraint {restraint_seconds:.1f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
