"""MEND hypernetwork training curve from TensorBoard logs: a PNG, a markdown table and a JSON of the val scalars.

    python benchmarks/mend_training_curve.py logs/mend/version_0 [more version dirs, e.g. resumed runs] \\
        --png docs/figures/mend_training.png --out benchmarks/results/mend_training.json

Several run folders (a run and its resumes) are merged by step; a later folder wins on equal steps.

Settings side by side (val/edit_success and val/locality per setting, each a run and its resumes):

    python benchmarks/mend_training_curve.py --compare "c_loc 3=logs/mend_seq/version_0,logs/mend_seq/version_1" \\
        --compare "c_loc 10=logs/mend_seq_cloc10/version_0" --png docs/figures/mend_settings.png \\
        --out benchmarks/results/mend_settings.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import RESULTS, portable, write_result  # benchmarks/ is on sys.path

VAL_TAGS = ["val/edit_success", "val/locality", "val/loss", "val/edit_loss", "val/loc_loss"]
TRAIN_TAGS = ["train/loss", "train/edit_loss", "train/loc_loss", "train/edit_lr_mean"]


def read_scalars(run_dirs: list[str], tags: list[str]) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {t: {} for t in tags}
    for d in run_dirs:
        ea = EventAccumulator(d, size_guidance={"scalars": 0})
        ea.Reload()
        have = set(ea.Tags()["scalars"])
        for t in tags:
            if t in have:
                out[t].update({int(e.step): float(e.value) for e in ea.Scalars(t)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="TensorBoard run folders (logs/mend/version_<n>)")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=DIR[,DIR...]",
                   help="instead of runs: one setting's run folders; repeat per setting")
    p.add_argument("--png", default="docs/figures/mend_training.png")
    p.add_argument("--out", type=Path, default=RESULTS / "mend_training.json")
    p.add_argument("--smooth", type=int, default=20, help="moving-average window (logged points) for train/* curves")
    p.add_argument("--mark", action="append", default=[], help="STEP:LABEL, a vertical line (e.g. a change of c_loc)")
    args = p.parse_args()
    if args.compare:
        compare(args)
        return
    if not args.runs:
        p.error("give run folders, or --compare LABEL=DIR[,DIR...]")
    val = read_scalars(args.runs, VAL_TAGS)
    train = read_scalars(args.runs, TRAIN_TAGS)
    steps = sorted(val["val/loss"])
    rows = [{"step": s, **{t.split("/", 1)[1]: val[t].get(s) for t in VAL_TAGS}} for s in steps]
    write_result(args.out, {"runs": [portable(r) for r in args.runs], "val": rows})

    print("| step | edit_success | locality | loss | edit_loss | loc_loss |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['step'] + 1} | {r['edit_success']:.3f} | {r['locality']:.3f} | {r['loss']:.4f} | {r['edit_loss']:.3f} | {r['loc_loss']:.4f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    x = [s + 1 for s in steps]
    axes[0].plot(x, [val["val/edit_success"][s] for s in steps], "o-", label="val/edit_success")
    axes[0].plot(x, [val["val/locality"][s] for s in steps], "s-", label="val/locality")
    axes[0].axhline(0.95, color="C0", ls=":", lw=1, label="target edit success 0.95")
    axes[0].axhline(0.90, color="C1", ls=":", lw=1, label="target locality 0.90")
    axes[0].set_ylim(0, 1.02)
    axes[0].set_title("validation (single edits)")
    axes[1].plot(x, [val["val/loss"][s] for s in steps], "o-", label="val/loss")
    axes[1].plot(x, [0.1 * val["val/edit_loss"][s] for s in steps], "^-", label="0.1·val/edit_loss")
    axes[1].plot(x, [val["val/loc_loss"][s] for s in steps], "s-", label="val/loc_loss (KL)")
    axes[1].set_title("validation losses")
    tl = train["train/loss"]
    ts = sorted(tl)
    w = max(1, args.smooth)
    smooth = [sum(tl[t] for t in ts[max(0, i - w + 1) : i + 1]) / len(ts[max(0, i - w + 1) : i + 1]) for i in range(len(ts))]
    axes[2].plot([t + 1 for t in ts], smooth, label=f"train/loss (mean of {w} logged points)")
    axes[2].set_title("training loss")
    for mark in args.mark:
        step, label = mark.split(":", 1)
        for ax in axes:
            ax.axvline(int(step), color="grey", ls="--", lw=1)
        axes[0].text(int(step), 0.03, " " + label, fontsize=8, color="grey")
    finish(fig, axes, args.png)


def compare(args: argparse.Namespace) -> None:
    """val/edit_success and val/locality of several settings against the optimizer step: a table, a JSON, a PNG."""
    settings: dict[str, dict[str, dict[int, float]]] = {}
    runs: dict[str, list[str]] = {}
    for spec in args.compare:
        label, _, dirs = spec.partition("=")
        runs[label] = [d for d in dirs.split(",") if d]
        settings[label] = read_scalars(runs[label], ["val/edit_success", "val/locality"])
    steps = sorted(set().union(*(s["val/locality"] for s in settings.values())))
    rows = [{"step": s + 1, **{lab: {k.split("/")[1]: v[k].get(s) for k in v} for lab, v in settings.items()}} for s in steps]
    write_result(args.out, {"runs": {lab: [portable(d) for d in ds] for lab, ds in runs.items()}, "val": rows})
    print("| optimizer step | " + " | ".join(settings) + " |  (val/edit_success / val/locality)")
    print("| --- |" + " --- |" * len(settings))
    for s in steps:
        cells = [f"{v['val/edit_success'][s]:.3f} / {v['val/locality'][s]:.3f}" if s in v["val/locality"] else "—" for v in settings.values()]
        print(f"| {s + 1:,} | " + " | ".join(cells) + " |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, (label, v) in enumerate(settings.items()):
        for ax, tag in zip(axes, ("val/locality", "val/edit_success")):
            xs = sorted(v[tag])
            ax.plot([s + 1 for s in xs], [v[tag][s] for s in xs], "o-", color=f"C{i}", label=label)
    for ax, tag, target in zip(axes, ("val/locality", "val/edit_success"), (0.90, 0.95)):
        ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:.2f}")
        ax.set_title(f"{tag} (single edits, val cases)")
    finish(fig, axes, args.png)


def finish(fig, axes, png: str) -> None:
    """Step axis, legend and grid on every panel; write the PNG."""
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
