"""Hidden states entering MEND's first edited block, computed once per token row and cached on disk.

MEND edits only the MLP matrices of the last blocks; every block below the first edited one is frozen and
never sees the hypernetwork, so for a given token row its output is the same at every training step. The
training step then runs only the edited blocks and the head from these states (`skip_layers_below`).

A row's states depend only on its token ids (right padding, causal attention: positions 0..n-1 of a row never
see the padding), so the cache is a map ``token ids -> [n, d]`` that any batch is assembled from. On disk it
is one safetensors file per (model and weights, data rows, max length, first edited block, dtype, code
version): ``cache_dir()/mend_hidden/<model>/<tag>_L<layer>_len<max_length>_<key>.safetensors``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from prune_lit.models.arch import arch_spec
from prune_lit.models.layer_skip import hidden_into_layer

log = logging.getLogger(__name__)

# Bump when what is cached changes meaning (tokenisation of the rows, where the states are taken).
CACHE_VERSION = 1

Row = tuple[int, ...]


def lower_weights_fingerprint(model: nn.Module, layer: int) -> str:
    """Short hash of every parameter the cached states depend on: the embeddings and the blocks below ``layer``.

    Reads the first 256 values of each such tensor (cheap; any other seed or checkpoint changes them).
    """
    spec = arch_spec(model)
    lower = tuple(spec.layer(i) + "." for i in range(layer))
    embeds = tuple(e + "." for e in (spec.embed, spec.pos_embed) if e)
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        if name.startswith(lower) or name.startswith(embeds):
            h.update(name.encode())
            h.update(p.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def rows_fingerprint(rows: Iterable[Row]) -> str:
    """Order-free hash of a set of token rows (the data part of the cache key)."""
    h = hashlib.sha1()
    for row in sorted(set(rows)):
        h.update(len(row).to_bytes(4, "little"))
        h.update(torch.tensor(row, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def batch_rows(input_ids: Tensor, attention_mask: Tensor) -> list[Row]:
    """The real tokens of each right-padded row. ``input_ids``, ``attention_mask``: [b, T] -> b tuples."""
    lengths = attention_mask.sum(1).tolist()
    return [tuple(ids[:n]) for ids, n in zip(input_ids.tolist(), lengths)]


class LowerHiddenCache:
    """``token row -> hidden states [n, d] entering block `layer```, filled in batches, stored on disk.

    Args:
        model: the frozen base model (its blocks below ``layer`` must not change while the cache is used).
        layer: the first edited block.
        pad_id: pad token id used to batch rows when computing them.
        batch_size: rows per forward when filling.
    """

    def __init__(self, model: nn.Module, layer: int, pad_id: int, batch_size: int = 32) -> None:
        self.model, self.layer, self.pad_id, self.batch_size = model, layer, pad_id, batch_size
        self.states: dict[Row, Tensor] = {}

    def __len__(self) -> int:
        return len(self.states)

    @torch.inference_mode(False)
    @torch.no_grad()
    def fill(self, rows: Iterable[Row], progress: bool = False) -> int:
        """Compute the rows not cached yet; returns how many were computed. Rows of similar length share a batch."""
        todo = sorted({r for r in rows if r not in self.states}, key=len)
        device = next(self.model.parameters()).device
        bar = tqdm(total=len(todo), desc=f"MEND hidden states (block {self.layer})", unit="row", disable=not progress)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, r in enumerate(chunk):
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            hidden = hidden_into_layer(self.model, self.layer, ids.to(device), mask.to(device))
            for j, r in enumerate(chunk):
                self.states[r] = hidden[j, : len(r)].clone()
            bar.update(len(chunk))
        bar.close()
        return len(todo)

    def batch(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """States ``[b, T, d]`` for a right-padded batch (zeros at padding), computing any row not cached yet.

        Padding positions never reach a real position (causal attention), so their value does not matter.
        """
        rows = batch_rows(input_ids.cpu(), attention_mask.cpu())
        self.fill(rows)
        first = self.states[rows[0]]
        out = torch.zeros((len(rows), input_ids.shape[1], first.shape[-1]), dtype=first.dtype, device=first.device)
        for j, r in enumerate(rows):
            out[j, : len(r)] = self.states[r]
        return out.to(input_ids.device)

    # ---- disk ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, meta: dict[str, str]) -> None:
        """One safetensors file: all states concatenated, the token ids and row lengths; written atomically."""
        path = Path(path)
        rows = list(self.states)
        tensors = {
            "hidden": torch.cat([self.states[r] for r in rows]).contiguous(),
            "ids": torch.tensor([t for r in rows for t in r], dtype=torch.int64),
            "lengths": torch.tensor([len(r) for r in rows], dtype=torch.int64),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    def load(self, path: str | os.PathLike, meta: dict[str, str]) -> bool:
        """Add the rows of ``path`` when its metadata equals ``meta``; False (and nothing added) otherwise."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}) != meta:
                    log.warning("ignoring %s: written for other settings", path)
                    return False
                hidden, ids, lengths = fh.get_tensor("hidden"), fh.get_tensor("ids"), fh.get_tensor("lengths")
        except (OSError, ValueError, KeyError, SafetensorError) as err:  # a corrupt file is recomputed, not fatal
            log.warning("ignoring unreadable MEND hidden-state cache %s (%s)", path, err)
            return False
        device = next(self.model.parameters()).device
        hidden = hidden.to(device)
        offsets = [0, *torch.cumsum(lengths, 0).tolist()]
        flat = ids.tolist()
        for k in range(len(lengths)):
            a, b = offsets[k], offsets[k + 1]
            self.states[tuple(flat[a:b])] = hidden[a:b]
        return True


def cache_meta(model: nn.Module, model_name: str, layer: int, max_length: int, dtype: str, rows: Sequence[Row]) -> dict[str, str]:
    """Everything a cache file depends on, as its safetensors metadata."""
    return {
        "version": str(CACHE_VERSION),
        "model_name": str(model_name),
        "weights": lower_weights_fingerprint(model, layer),
        "layer": str(layer),
        "max_length": str(max_length),
        "dtype": str(dtype),
        "rows": rows_fingerprint(rows),
    }


def cache_path(root: Path, meta: dict[str, str], tag: str) -> Path:
    """``root/<model>/<tag>_L<layer>_len<max_length>_<hash of meta>.safetensors``."""
    key = hashlib.sha1(repr(sorted(meta.items())).encode()).hexdigest()[:16]
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(meta["model_name"]).name or meta["model_name"])
    return root / model / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', tag)}_L{meta['layer']}_len{meta['max_length']}_{key}.safetensors"
