"""Resumable checkpoints of a sequential-editing run (``checkpoints/<run>/``), written atomically and verified.

A checkpoint is a folder ``step-<requests_seen>`` holding

* ``weights.safetensors``: the edited matrices as they are now (float32). ΔW = W − W_0 with W_0 from the model
  loader; the weights themselves are stored so that a resumed run continues bit-exactly;
* ``editor.safetensors``: the tensors of the editor's run state (AlphaEdit's K_pK_pᵀ) and of the callbacks'
  states (the restraint's warm SVD bases, MEND's ΔW factors), referenced from ``state.json``;
* ``rng.safetensors``: torch's CPU RNG state;
* ``state.json``: counters, history, step times, results so far, callback states, the editor's non-tensor
  state, Python/numpy RNG states, the run's fingerprint (model, editor settings, edit stream), the SHA-256 of
  each ``.safetensors`` file, and a SHA-256 of its own content (``checksum``).

It is written into a temporary folder whose files and the folder itself are flushed to disk (fsync), then
renamed into place; only then does ``latest`` (a one-line file naming the folder) move to it, and folders
older than the last ``keep`` go. A kill at any moment leaves the previous checkpoint usable; a checkpoint whose
file fails its checksum is reported and the one before it is used (`find_run_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from prune_lit.reporting import strict_json

log = logging.getLogger(__name__)

FORMAT = 2
LEGACY_FORMAT = 1  # before checksums, and with the final checkpoint written after the end-of-run restraint
LATEST = "latest"
PARTS = ("weights", "editor", "rng")


class RunCheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed here (missing, corrupt, or from another model/config)."""


@dataclass
class RunCheckpoint:
    """What `load_run_checkpoint` returns: the folder it came from and its parts."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]  # as saved, with the editor's and callbacks' tensors back in place
    torch_rng: torch.Tensor | None


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """``obj`` with every tensor (at any depth of dicts/lists) moved into ``tensors`` and replaced by a reference."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {k: split_tensors(v, tensors, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def _rng_json() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def restore_rng(ckpt: RunCheckpoint) -> None:
    """Put Python's, numpy's and torch's RNGs back where the checkpointed run had them."""
    rng = ckpt.state.get("rng", {})
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if ckpt.torch_rng is not None:
        torch.set_rng_state(ckpt.torch_rng)


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, allow_nan=False, separators=(",", ":"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk; folders cannot be opened on every OS, so best effort there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _step_folders(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest (most requests seen) first."""
    def steps(p: Path) -> int:
        try:
            return int(p.name.split("-", 1)[1])
        except (IndexError, ValueError):
            return -1
    return sorted((p for p in run_dir.glob("step-*") if p.is_dir() and steps(p) >= 0), key=steps, reverse=True)


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete what a killed checkpoint write left behind (``.tmp-*`` folders, ``.latest.tmp*`` files); returns them."""
    run_dir = Path(run_dir)
    for old in run_dir.glob(".replaced-step-*"):  # killed between moving a checkpoint aside and its successor in
        original = run_dir / old.name.removeprefix(".replaced-").rsplit("-", 1)[0]
        if not original.exists():
            old.rename(original)
    stale = [*run_dir.glob(".tmp-*"), *run_dir.glob(f".{LATEST}.tmp*"), *run_dir.glob(".replaced-*")]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d leftover(s) of an interrupted checkpoint write in %s", len(stale), run_dir)
    return stale


def has_checkpoints(run_dir: str | os.PathLike) -> bool:
    """True when ``run_dir`` holds a checkpoint folder or a ``latest`` pointer."""
    run_dir = Path(run_dir)
    return (run_dir / LATEST).is_file() or bool(_step_folders(run_dir))


def prepare_run_folder(run_dir: str | os.PathLike, resume: bool, overwrite: bool, write: bool = True) -> None:
    """Before a run: clear leftovers of a killed write, and refuse to start over on a run's checkpoints unless
    ``overwrite`` (then the old run is moved aside to ``<run_dir>.old-<time>``, never deleted).

    ``write=False`` (the other ranks of a multi-process run) only checks: rank 0 does the clearing and moving.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    if write:
        remove_stale_temporaries(run_dir)
    if resume or not has_checkpoints(run_dir):
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    if not overwrite:
        raise RunCheckpointError(
            f"{run_dir} already holds checkpoints of run {run_dir.name!r}: continue it with resume: true, or start over "
            f"with overwrite: true (moves it to {aside.name}), or choose another run_name"
        )
    if not write:
        return
    n = 1
    while aside.exists():
        n += 1
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    run_dir.rename(aside)
    log.warning("overwrite: the earlier checkpoints of %s were moved to %s", run_dir, aside)


def save_run_checkpoint(
    run_dir: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    editor_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write one checkpoint of the run into ``run_dir`` atomically, point ``latest`` at it and keep the newest
    ``keep`` checkpoint folders; returns its folder."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(state['counters']['requests_seen']):07d}"
    tmp = run_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: w.detach().float().contiguous().cpu() for n, w in weights.items()}, str(tmp / "weights.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    plain = split_tensors({"editor_state": editor_state, "callbacks": state.get("callbacks", {})}, tensors)
    save_file(tensors, str(tmp / "editor.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    checksums = {f"{part}.safetensors": _sha256(tmp / f"{part}.safetensors") for part in PARTS}
    doc = strict_json(json.loads(json.dumps({"format": FORMAT, **state, **plain, "rng": _rng_json(), "sha256": checksums}, default=float)))
    doc["checksum"] = hashlib.sha256(_canonical(doc).encode()).hexdigest()
    (tmp / "state.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    final = run_dir / name
    replaced = None
    if final.exists():  # the same count saved again: move the old one aside first, so a kill never leaves neither
        replaced = run_dir / f".replaced-{name}-{os.getpid()}"
        final.rename(replaced)
    tmp.rename(final)
    _fsync(run_dir)
    pointer = run_dir / f".{LATEST}.tmp{os.getpid()}"
    pointer.write_text(name + "\n", encoding="utf-8")
    _fsync(pointer)
    pointer.replace(run_dir / LATEST)
    _fsync(run_dir)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    for old in _step_folders(run_dir)[keep:]:  # only once `latest` names the new one
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder ``latest`` names in ``run_dir``, or None when the run has no checkpoint."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(run_dir) / pointer.read_text(encoding="utf-8", errors="replace").strip()
    if not folder.is_dir():
        raise RunCheckpointError(f"{pointer} names {folder.name}, which does not exist")
    return folder


def find_run_checkpoint(run_dir: str | os.PathLike) -> RunCheckpoint | None:
    """The newest checkpoint of ``run_dir`` that loads and passes its checksums: the one ``latest`` names, else
    (with a warning naming what is corrupt) the next older one. None when the run has none; a
    `RunCheckpointError` listing every problem when none is usable."""
    run_dir = Path(run_dir)
    candidates = _step_folders(run_dir)
    problems: list[str] = []
    try:
        named = latest_checkpoint(run_dir)
    except RunCheckpointError as err:
        named = None
        problems.append(str(err))
    if named is not None:
        candidates = [named] + [c for c in candidates if c != named]
    if not candidates and not problems:
        return None
    for folder in candidates:
        try:
            ckpt = load_run_checkpoint(folder)
        except RunCheckpointError as err:
            problems.append(str(err))
            log.warning("%s; trying the checkpoint before it", err)
            continue
        if problems:
            log.warning("resuming from the checkpoint %s instead, because: %s", folder, "; ".join(problems))
        return ckpt
    raise RunCheckpointError(f"no usable checkpoint in {run_dir}: " + "; ".join(problems))


def load_run_checkpoint(folder: str | os.PathLike) -> RunCheckpoint:
    """Read a checkpoint folder and verify its checksums; every problem is a `RunCheckpointError` naming the file."""
    folder = Path(folder)
    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RunCheckpointError(f"checkpoint {folder} has no state.json") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunCheckpointError(f"{state_file} is corrupt (not JSON: {err})") from err
    if not isinstance(state, dict) or state.get("format") not in (LEGACY_FORMAT, FORMAT):
        raise RunCheckpointError(f"{state_file}: not a prune-lit run checkpoint of format {FORMAT}")
    legacy = state["format"] == LEGACY_FORMAT
    if legacy:
        _check_legacy(state, state_file)
    else:
        claimed = state.pop("checksum", None)
        try:
            actual = hashlib.sha256(_canonical(state).encode()).hexdigest()
        except ValueError:  # a damaged number that reads as inf (e.g. 1e999) cannot be written back
            actual = None
        if claimed != actual:
            raise RunCheckpointError(f"{state_file} is corrupt (its content does not match its checksum)")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for part in PARTS:
        path = folder / f"{part}.safetensors"
        if not path.is_file():
            raise RunCheckpointError(f"{path} is missing")
        if not legacy and _sha256(path) != state.get("sha256", {}).get(path.name):
            raise RunCheckpointError(f"{path} is corrupt (its SHA-256 differs from the one in state.json)")
        try:
            parts[part] = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise RunCheckpointError(f"{path} is corrupt ({err})") from err
    try:
        for key in ("editor_state", "callbacks"):
            state[key] = join_tensors(state.get(key, {}), parts["editor"])
    except KeyError as err:
        raise RunCheckpointError(f"{folder / 'editor.safetensors'} lacks tensor {err}") from err
    return RunCheckpoint(folder, parts["weights"], state, parts["rng"].get("torch"))


def _check_legacy(state: dict[str, Any], state_file: Path) -> None:
    """Accept a format-1 checkpoint (no checksums) unless an at-end restraint already ran on its weights."""
    at_end = any(r.get("at_end_only") and r.get("enabled", True) for r in state.get("fingerprint", {}).get("restraint", []))
    restrained = any(isinstance(cb, dict) and cb.get("history") for cb in state.get("callbacks", {}).values())
    if at_end and restrained:
        raise RunCheckpointError(
            f"{state_file} (written by an older prune-lit) holds weights after the end-of-run restraint; it cannot be "
            f"resumed or extended exactly: start over (overwrite: true)"
        )
    log.warning("%s is of the older format %d (no checksums): resumed unverified", state_file, LEGACY_FORMAT)


def check_fingerprint(ckpt: RunCheckpoint, expected: dict[str, Any]) -> None:
    """Raise a `RunCheckpointError` naming the file and every differing key when the run is not the same."""
    got = ckpt.state.get("fingerprint", {})
    expected = strict_json(expected)  # as it reads back from state.json
    diff = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    if diff:
        shown = "; ".join(f"{k}: checkpoint {got.get(k)!r} vs this run {expected.get(k)!r}" for k in diff)
        raise RunCheckpointError(
            f"{ckpt.path / 'state.json'} is from another run ({shown}); use another checkpoint folder or resume: false"
        )
