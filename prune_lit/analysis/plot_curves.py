"""Plot editing curves of several sequential-editing runs side by side.

    python -m prune_lit.analysis.plot_curves logs/rome_100/version_0 logs/rome_prune_100/version_0 \
        --labels ROME "ROME+PRUNE" --out docs/figures/rome_100.png

Reads each run's results.json (edit metrics at the eval_at counts) and spectral.json (σ_max(ΔW) and
κ(W) per edit step) and draws efficacy / generalization / neighborhood (the papers' locality) and the spectral diagnostics
against the number of edits.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prune_lit.analysis.schema import RunResults, find_results, read_spectral  # noqa: E402


def load_run(run: Path) -> tuple[RunResults, list[dict]]:
    path = find_results(run)
    return RunResults.read(path), read_spectral(path.parent)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding results.json / spectral.json")
    parser.add_argument("--labels", nargs="+", help="one legend label per run (default: folder names)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    labels = args.labels or [r.parent.name for r in args.runs]

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for run, label in zip(args.runs, labels):
        results, spectral = load_run(run)
        before = results.before.get("edits")
        rows = [(0, before)] if before else []
        rows += [(p.num_edits, p.get("edits")) for p in results.history if p.get("edits") is not None]
        xs = [n for n, _ in rows]
        for ax, key in zip(axes[:3], ("efficacy", "generalization", "neighborhood")):
            ax.plot(xs, [s[key] for _, s in rows], marker="o", label=label)
            ax.set_title(key)
        # One line per edited matrix would crowd the panel: plot the largest σ_max(ΔW) / σ_max(W_0) per step.
        ratio: dict[int, float] = defaultdict(float)
        for rec in spectral:
            if rec.get("sigma_max_delta") is not None and rec.get("sigma_max_w0"):
                ratio[rec["num_edits"]] = max(ratio[rec["num_edits"]], rec["sigma_max_delta"] / rec["sigma_max_w0"])
        steps = sorted(ratio)
        axes[3].plot(steps, [ratio[s] for s in steps], label=label)
    axes[3].axhline(1.0, color="red", linestyle="--", linewidth=1, label="σ_max(W₀)")
    axes[3].set_title("σ_max(ΔW) / σ_max(W₀), largest matrix")
    for ax in axes:
        ax.set_xlabel("edits")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[3].legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
