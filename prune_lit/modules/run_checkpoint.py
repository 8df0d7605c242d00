"""Resumable checkpoints of a sequential-editing run (``checkpoints/<run>/``), written atomically.

A checkpoint is a folder ``step-<requests_seen>`` holding

* ``weights.safetensors``: the edited matrices as they are now (float32). ΔW = W − W_0 with W_0 from the model
  loader; the weights themselves are stored so that a resumed run continues bit-exactly;
* ``editor.safetensors``: the tensors of the editor's run state (AlphaEdit's K_pK_pᵀ) and of the callbacks'
  states (the restraint's warm SVD bases), referenced from ``state.json``;
* ``rng.safetensors``: torch's CPU RNG state;
* ``state.json``: counters, history, step times, results so far, callback states, the editor's non-tensor
  state, Python/numpy RNG states, and the run's fingerprint (model, editor settings, edit stream).

It is written into a temporary folder that is renamed into place; only then does ``latest`` (a one-line file
naming the folder) move to it and older folders go. A kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

FORMAT = 1
LATEST = "latest"


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


def save_run_checkpoint(
    run_dir: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    editor_state: dict[str, Any],
) -> Path:
    """Write one checkpoint of the run into ``run_dir`` atomically and point ``latest`` at it; returns its folder."""
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
    doc = {"format": FORMAT, **state, **plain, "rng": _rng_json()}
    (tmp / "state.json").write_text(json.dumps(doc, indent=1, default=float) + "\n", encoding="utf-8")
    final = run_dir / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    pointer = run_dir / f".{LATEST}.tmp{os.getpid()}"
    pointer.write_text(name + "\n", encoding="utf-8")
    pointer.replace(run_dir / LATEST)
    for old in run_dir.glob("step-*"):  # only once `latest` names the new one
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder ``latest`` names in ``run_dir``, or None when the run has no checkpoint."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(run_dir) / pointer.read_text(encoding="utf-8").strip()
    if not folder.is_dir():
        raise RunCheckpointError(f"{pointer} names {folder.name}, which does not exist; delete {pointer} to start over")
    return folder


def load_run_checkpoint(folder: str | os.PathLike) -> RunCheckpoint:
    """Read a checkpoint folder; every problem is a `RunCheckpointError` naming the file."""
    folder = Path(folder)
    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RunCheckpointError(f"checkpoint {folder} has no state.json") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunCheckpointError(f"{state_file} is corrupt ({err}); delete {folder.parent} to start over") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunCheckpointError(f"{state_file}: not a prune-lit run checkpoint of format {FORMAT}")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for part in ("weights", "editor", "rng"):
        path = folder / f"{part}.safetensors"
        try:
            parts[part] = load_file(str(path))
        except (FileNotFoundError, SafetensorError, OSError) as err:
            raise RunCheckpointError(f"{path} is missing or corrupt ({err}); delete {folder.parent} to start over") from err
    try:
        for key in ("editor_state", "callbacks"):
            state[key] = join_tensors(state.get(key, {}), parts["editor"])
    except KeyError as err:
        raise RunCheckpointError(f"{folder / 'editor.safetensors'} lacks tensor {err}; delete {folder.parent} to start over") from err
    return RunCheckpoint(folder, parts["weights"], state, parts["rng"].get("torch"))


def check_fingerprint(ckpt: RunCheckpoint, expected: dict[str, Any]) -> None:
    """Raise a `RunCheckpointError` naming the file and every differing key when the run is not the same."""
    got = ckpt.state.get("fingerprint", {})
    diff = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    if diff:
        shown = "; ".join(f"{k}: checkpoint {got.get(k)!r} vs this run {expected.get(k)!r}" for k in diff)
        raise RunCheckpointError(
            f"{ckpt.path / 'state.json'} is from another run ({shown}); use another checkpoint folder or resume: false"
        )
