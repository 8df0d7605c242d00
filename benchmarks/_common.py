"""What the measurement scripts share: the results folder, the ``--out`` / ``--threads`` arguments, thread pinning,
the machine a number was measured on, ``key=value`` override sets, and writing (or merging into) a result file.

The scripts run as ``python benchmarks/<name>.py``: this folder is then on ``sys.path`` (``from _common import ...``).
Importing this module loads no numerical library (numpy, torch, lightning), so that ``pin_threads`` still reaches
their thread pools when a script calls it first.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
REPO = RESULTS.parent.parent


def portable(path: str | os.PathLike) -> str:
    """``path`` as a committed result file may name it: relative to the repository (or to the working folder), else
    its last three parts; never the machine's absolute path."""
    p = Path(path)
    for root in (REPO, Path.cwd()):
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(Path(*p.parts[-3:])) if p.is_absolute() else str(p)


def add_output_args(p: argparse.ArgumentParser, out: str | None, threads: int | None = 1) -> None:
    """``--out`` (default ``benchmarks/results/<out>``; required where ``out`` is None) and, unless ``threads`` is
    None, ``--threads`` with that default (0: the libraries' own default)."""
    if out is None:
        p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    else:
        p.add_argument("--out", type=Path, default=RESULTS / out, help="JSON file to write (default: %(default)s)")
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help="torch/BLAS threads (0 = library default)")


def pin_threads(threads: int | None) -> None:
    """Use ``threads`` BLAS and torch threads (0 or None: leave the defaults).

    The BLAS variables only reach libraries loaded afterwards: scripts timing numpy call this before importing it.
    """
    if not threads:
        return
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def machine_meta() -> dict[str, Any]:
    """Where and when a measurement ran: CPU, core count, torch version and threads, start time, load average."""
    import torch

    return {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m_start": os.getloadavg()[0],
    }


def parse_overrides(text: str) -> dict[str, object]:
    """``"v_autocast=bfloat16,v_cache_lower_layers=false"`` -> hyperparameter overrides (values parsed as YAML)."""
    import yaml

    out: dict[str, object] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"bad override {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def write_result(path: Path | str, data: Any) -> None:
    """Write ``data`` as JSON atomically (never a half-written file) and say where."""
    from prune_lit.reporting import write_json_atomic

    write_json_atomic(Path(path), data, indent=1, default=float)
    print(f"wrote {path}", flush=True)


def merge_result(path: Path | str, empty: dict[str, Any], update: Callable[[dict[str, Any]], None]) -> None:
    """Read ``path`` (``empty`` where it does not exist), let ``update`` change it in place, write it back: under a
    lock, so that runs in parallel (one per editor or shape) all land in the one file."""
    from prune_lit.reporting import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else empty
        update(data)
        write_json_atomic(path, data, indent=1)
    lock_path.unlink(missing_ok=True)
    print(f"wrote {path}", flush=True)
