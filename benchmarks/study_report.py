"""Tables and figures of the reproduction study (benchmarks/run_study.sh) for docs/results.md.

    python benchmarks/study_report.py --logs logs/study --figures docs/figures --out benchmarks/results/study.json

Reads the newest ``version_<n>`` of every run folder under ``--logs`` (results.json, spectral.json), prints
Markdown tables (edit metrics, downstream scores against the unedited model, σ_max(ΔW) and κ(W) at each
measured edit count, run times) and writes three PNGs: edit metrics, downstream scores, spectral diagnostics.
κ(W_0) of the edited matrices comes from the unedited model (loaded once, ``--no-w0`` skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["rome", "rome_prune", "memit", "memit_prune", "mend", "mend_prune", "mend_prune_a1.2"]
LABELS = {
    "rome": "ROME",
    "rome_prune": "ROME + PRUNE",
    "memit": "MEMIT",
    "memit_prune": "MEMIT + PRUNE",
    "mend": "MEND",
    "mend_prune": "MEND + PRUNE",
    "mend_prune_a1.2": "MEND + PRUNE (α=1.2)",
}
STYLE = {
    "rome": ("tab:blue", "--"), "rome_prune": ("tab:blue", "-"),
    "memit": ("tab:orange", "--"), "memit_prune": ("tab:orange", "-"),
    "mend": ("tab:green", "--"), "mend_prune": ("tab:green", "-"), "mend_prune_a1.2": ("tab:olive", "-."),
}
EDIT_KEYS = ["efficacy", "generalization", "neighborhood"]  # neighborhood: the papers' locality (P(true) > P(new))
DOWNSTREAM = [  # (results key, column title)
    ("reasoning/exact_match", "GSM8K EM"),
    ("summarization/rouge1", "SAMSum ROUGE-1"),
    ("qa/contains", "NQ contains"),
    ("nli/accuracy", "RTE acc"),
]


def newest_version(run: Path) -> Path | None:
    versions = [p for p in run.glob("version_*") if (p / "results.json").exists()]
    return max(versions, key=lambda p: int(re.sub(r"\D", "", p.name) or 0)) if versions else None


def load_runs(logs: Path) -> dict[str, dict]:
    runs = {}
    for name in ORDER + sorted(p.name for p in logs.iterdir() if p.is_dir() and p.name not in ORDER):
        folder = newest_version(logs / name) if (logs / name).is_dir() else None
        if folder is None:
            continue
        results = json.loads((folder / "results.json").read_text())
        spectral_path = folder / "spectral.json"
        spectral = json.loads(spectral_path.read_text())["records"] if spectral_path.exists() else []
        shown = Path(*folder.parts[-4:]) if len(folder.parts) >= 4 else folder  # e.g. logs/study/rome/version_0
        runs[name] = {"folder": str(shown), "results": results, "spectral": spectral}
    return runs


def spectral_by_edits(records: list[dict]) -> dict[int, dict[str, float]]:
    """Per edit count: the largest σ_max(ΔW)/σ_max(W_0) over matrices (and that matrix's σ values), the largest κ(W)."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for r in records:
        n, row = r["num_edits"], out[r["num_edits"]]
        if r.get("sigma_max_delta") is not None and r.get("sigma_max_w0"):
            ratio = r["sigma_max_delta"] / r["sigma_max_w0"]
            if ratio > row.get("ratio", -1.0):
                row.update(ratio=ratio, sigma_max_delta=r["sigma_max_delta"], sigma_max_w0=r["sigma_max_w0"], matrix=r["matrix"])
        if r.get("kappa_w") is not None:
            row["kappa_w"] = max(row.get("kappa_w", 0.0), r["kappa_w"])
        out[n] = row
    return dict(out)


def kappa_w0(runs: dict[str, dict]) -> dict[str, float]:
    """κ(W_0) of every matrix any run edited, from the unedited model."""
    import torch

    from prune_lit.models.arch import get_weight
    from prune_lit.models.loader import load_model

    names = sorted({r["matrix"] for run in runs.values() for r in run["spectral"]})
    model_names = {run["results"].get("model", "smollm2-135m") for run in runs.values()}
    if len(model_names) != 1:
        raise ValueError(f"runs of several models: {model_names}")
    model = load_model(model_names.pop()).model
    out = {}
    for n in names:
        s = torch.linalg.svdvals(get_weight(model, n).float())
        out[n] = float(s[0] / s[-1])
    return out


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def tables(runs: dict[str, dict], k0: dict[str, float]) -> str:
    lines = []
    lines.append("| run | edits | efficacy | generalization | neighborhood | " + " | ".join(t for _, t in DOWNSTREAM)
                 + " | max σ_max(ΔW) / σ_max(W₀) | max κ(W) |")
    lines.append("|---|---|---|---|---|" + "---|" * len(DOWNSTREAM) + "---|---|")
    for name, run in runs.items():
        res, spec = run["results"], spectral_by_edits(run["spectral"])
        label = LABELS.get(name, name)
        before_ds = res.get("downstream_before", {})
        eb = res.get("edits_before", {})
        k0_max = max((k0[m] for m in {r["matrix"] for r in run["spectral"]} if m in k0), default=None)
        lines.append(f"| {label} | 0 | " + " | ".join(fmt(eb.get(k)) for k in EDIT_KEYS) + " | "
                     + " | ".join(fmt(before_ds.get(k)) for k, _ in DOWNSTREAM) + f" | 0 | {fmt(k0_max, 1)} |")
        for h in res["history"]:
            n = h["num_edits"]
            e, d, s = h.get("edits", {}), h.get("downstream", {}), spec.get(n, {})
            lines.append(f"| {label} | {n} | " + " | ".join(fmt(e.get(k)) for k in EDIT_KEYS) + " | "
                         + " | ".join(fmt(d.get(k)) for k, _ in DOWNSTREAM)
                         + f" | {fmt(s.get('ratio'))} | {fmt(s.get('kappa_w'), 1)} |")
    lines.append("")
    lines.append("| run | edits | edit steps | rejected steps | editing (s) | s / edit | restraint (s) | restraint share |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        r = run["results"]
        lines.append(f"| {LABELS.get(name, name)} | {r['num_edits']} | {r['num_steps']} | {r['num_rejected_steps']} | "
                     f"{r['seconds_editing']:.0f} | {r['seconds_per_edit']:.2f} | {r['seconds_restraint']:.1f} | "
                     f"{100 * r['restraint_share_of_step']:.2f} % |")
    return "\n".join(lines)


def _style(name: str) -> dict:
    color, ls = STYLE.get(name, ("gray", "-"))
    return {"color": color, "linestyle": ls, "label": LABELS.get(name, name)}


def _plot_curves(runs: dict[str, dict], out: Path, before: str, after: str, panels: list[tuple[str, str]], title: str) -> None:
    """One panel per (key, title): the score at 0 edits (``results[before]``) and at each ``history[after]``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))
    for name, run in runs.items():
        res = run["results"]
        rows = [(0, res[before])] if before in res else []
        rows += [(h["num_edits"], h[after]) for h in res["history"] if after in h]
        for ax, (key, _) in zip(axes, panels):
            ax.plot([n for n, _ in rows], [d.get(key, math.nan) for _, d in rows], marker="o", **_style(name))
    for ax, (_, panel_title) in zip(axes, panels):
        ax.set_title(panel_title)
        ax.set_xlabel("edits")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_spectral(runs: dict[str, dict], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for name, run in runs.items():
        spec = spectral_by_edits(run["spectral"])
        xs = sorted(n for n in spec if "ratio" in spec[n])
        axes[0].plot(xs, [spec[n]["ratio"] for n in xs], **_style(name))
        xk = sorted(n for n in spec if "kappa_w" in spec[n])
        axes[1].plot(xk, [spec[n]["kappa_w"] for n in xk], marker=".", **_style(name))
    axes[0].axhline(1.0, color="red", linewidth=1, linestyle=":", label="σ_max(W₀)")
    axes[0].set_yscale("log")
    axes[0].set_title("largest σ_max(ΔW) / σ_max(W₀) over edited matrices")
    axes[1].set_yscale("log")
    axes[1].set_title("largest κ(W) over edited matrices")
    for ax in axes:
        ax.set_xlabel("edits")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", type=Path, default=Path("logs/study"))
    p.add_argument("--figures", type=Path, default=Path("docs/figures"))
    p.add_argument("--prefix", default="study", help="file name prefix of the figures")
    p.add_argument("--out", type=Path, default=None, help="also write a JSON summary here")
    p.add_argument("--no-w0", action="store_true", help="skip κ(W_0) (no model load)")
    args = p.parse_args()
    runs = load_runs(args.logs)
    if not runs:
        raise SystemExit(f"no finished runs (results.json) under {args.logs}")
    k0 = {} if args.no_w0 else kappa_w0(runs)
    print(tables(runs, k0))
    args.figures.mkdir(parents=True, exist_ok=True)
    _plot_curves(runs, args.figures / f"{args.prefix}_edits.png", "edits_before", "edits", [(k, k) for k in EDIT_KEYS],
                 "CounterFact edit metrics over all cases edited so far (SmolLM2-135M)")
    _plot_curves(runs, args.figures / f"{args.prefix}_downstream.png", "downstream_before", "downstream", DOWNSTREAM,
                 "Downstream scores (20 examples per task; 0 edits = the unedited model)")
    plot_spectral(runs, args.figures / f"{args.prefix}_spectral.png")
    if args.out:
        summary = {name: {"folder": r["folder"], "history": r["results"]["history"],
                          "downstream_before": r["results"].get("downstream_before"),
                          "edits_before": r["results"].get("edits_before"),
                          "spectral": {str(k): v for k, v in spectral_by_edits(r["spectral"]).items()},
                          "seconds_editing": r["results"]["seconds_editing"],
                          "seconds_restraint": r["results"]["seconds_restraint"]} for name, r in runs.items()}
        summary["kappa_w0"] = k0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nfigures: {args.figures}/{args.prefix}_{{edits,downstream,spectral}}.png")


if __name__ == "__main__":
    main()
