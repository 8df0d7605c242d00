"""``python cli.py restrain|inspect``: PRUNE for a model edited by any tool, from the command line.

    python cli.py restrain --original DIR --edited DIR --out DIR [--alpha e] [--mode log] [--matrices NAME ...]
    python cli.py inspect  --original DIR --edited DIR [--alpha e] [--mode log] [--matrices NAME ...]

Both print the spectral report (`prune_lit.restraint.posthoc.PosthocRestraint.table`); ``restrain`` also writes
the restrained model as a Hugging Face directory. Input the commands refuse (checkpoints that do not load or differ
in architecture or shapes, nothing changed, ``--out`` not empty) ends with one line, ``error: ...``, and exit
status 2, as the LightningCLI commands do (`prune_lit.cli_main`); ``PRUNE_LIT_TRACEBACK=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence

from prune_lit.restraint.posthoc import PosthocError

COMMANDS = ("restrain", "inspect")
# A taken --out is refused by export_model's check (FileExistsError); the others are PosthocError.
REFUSALS: tuple[type[BaseException], ...] = (PosthocError, FileExistsError)


def parse_alpha(text: str) -> float:
    """``e`` or a number (the log base α of PRUNE's map)."""
    if text.strip().lower() == "e":
        return math.e
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'e' or a number, got {text!r}") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description="PRUNE for any edited Hugging Face checkpoint.")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "restrain": "restrain every changed matrix of --edited against --original and write the result to --out",
        "inspect": "print the spectral report of restrain (σ_max(ΔW)/σ_max(W₀) before and after), write nothing",
    }
    for name in COMMANDS:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        p.add_argument("--original", required=True, help="the unedited model: a Hugging Face directory or a preset (smollm2-135m, ...)")
        p.add_argument("--edited", required=True, help="the edited model: a Hugging Face directory (from any tool)")
        if name == "restrain":
            p.add_argument("--out", required=True, help="where the restrained model is written (must not exist or be empty)")
        p.add_argument("--alpha", type=parse_alpha, default=math.e, help="log base α of PRUNE's map (default e; the paper also uses 1.2, 1.5, 2)")
        p.add_argument("--mode", choices=("log", "linear"), default="log", help="log: PRUNE; linear: σ/2 + σ_max/2 (the paper's ablation)")
        p.add_argument("--matrices", nargs="+", metavar="NAME", default=None,
                       help="restrain only these matrices (e.g. model.layers.4.mlp.down_proj.weight or layers.4.mlp.down_proj); default: every changed one")
        p.add_argument("--dtype", default="float32", help="dtype the models are loaded (and the result written) in")
    return parser


def run(args: argparse.Namespace) -> str:
    """Run one parsed command; the text it prints."""
    from prune_lit.api import inspect, restrain  # lightning/transformers load only when a command runs

    if args.command == "inspect":
        report = inspect(args.original, args.edited, alpha=args.alpha, mode=args.mode, matrices=args.matrices, dtype=args.dtype)
        return report.table() + "\nnothing written (inspect); `restrain --out DIR` writes the restrained model"
    done = restrain(args.original, args.edited, args.out, alpha=args.alpha, mode=args.mode, matrices=args.matrices, dtype=args.dtype)
    return done.report.table() + f"\nrestrained model written to {done.path}"


def main(argv: Sequence[str] | None = None) -> int:
    """``restrain`` / ``inspect`` with ``argv`` (default ``sys.argv[1:]``); returns 0, or exits 2 on a refusal."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s: %(message)s")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        text = run(args)
    except REFUSALS as err:
        if os.environ.get("PRUNE_LIT_TRACEBACK"):
            raise
        sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
        raise SystemExit(2) from None
    sys.stdout.write(text + "\n")
    return 0
