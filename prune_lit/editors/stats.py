"""Second-moment statistics ``C = E[k kᵀ]`` of the keys (inputs) of a linear module, on WikiText-2.

ROME and MEMIT weigh their updates by ``C`` so that keys the model commonly sees are disturbed least.
``C`` is computed once per (model, module, corpus, token count, dtype) and cached as safetensors under
``cache_dir()/stats/<model_name>/<module>_<corpus>_<n_tokens>_<dtype>.safetensors``; the file's metadata
holds a fingerprint of the weights feeding that module so a different model (e.g. another random seed)
never reads a stale file.

The corpus is WikiText-2's *validation* split only (~250k SmolLM2 tokens): its test split is reserved for
the perplexity probe of the edited model, so it must never shape the edits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from prune_lit.data.paths import resolve_data_file
from prune_lit.data.wikitext import clean_wikitext
from prune_lit.models.arch import get_module
from prune_lit.models.batching import model_device
from prune_lit.models.layer_skip import StopForward
from prune_lit.models.loader import cache_dir

log = logging.getLogger(__name__)

WIKI_FILES = ("corpus/wiki.valid.raw",)  # never wiki.test.raw: reserved for the perplexity probe
HELD_OUT_FILES = frozenset({"corpus/wiki.test.raw"})
CORPUS_TAG = "wikitext-2-valid"  # part of the cache file name: statistics of another corpus are another file
_STAT_KEY = "mom2"


def wikitext_token_chunks(
    tok: PreTrainedTokenizerBase, n_tokens: int, seq_len: int, data_dir: str | None = None
) -> torch.Tensor:
    """The first ``n_tokens`` tokens of cleaned WikiText-2 (validation split) as ``[n_seq, seq_len]``.

    The count is ``n_tokens`` rounded up to whole sequences; more than the split holds gives all of it
    (whole sequences), with a warning.
    """
    if HELD_OUT_FILES & set(WIKI_FILES):
        raise RuntimeError(f"key statistics must not read {sorted(HELD_OUT_FILES & set(WIKI_FILES))}: reserved for the perplexity probe")
    need = -(-n_tokens // seq_len) * seq_len
    text = "\n".join(clean_wikitext(resolve_data_file(rel, data_dir).read_text(encoding="utf-8")) for rel in WIKI_FILES)
    # Tokenize only a prefix that holds enough tokens (grown if too short): the corpus is ~2.5 MB.
    n_chars = need * 6
    while True:
        ids = tok(text[:n_chars], add_special_tokens=False)["input_ids"]
        if len(ids) > need or n_chars >= len(text):
            break
        n_chars *= 2
    if len(ids) < seq_len:
        raise ValueError(f"WikiText gave only {len(ids)} tokens, fewer than one sequence of {seq_len}")
    if len(ids) < need:
        log.warning("WikiText has %d tokens, fewer than the %d asked for; using all of them", len(ids), need)
        need = len(ids) // seq_len * seq_len
    return torch.tensor(ids[:need], dtype=torch.long).view(-1, seq_len)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).name or str(name))


def stats_path(model_name: str, module_name: str, n_tokens: int, dtype: str, root: str | os.PathLike | None = None) -> Path:
    base = Path(root) if root is not None else cache_dir() / "stats"
    return base / _safe_name(model_name) / f"{module_name}_{CORPUS_TAG}_{n_tokens}_{dtype}.safetensors"


def weights_fingerprint(model: nn.Module, module_name: str) -> str:
    """A short hash of the first parameter values of the module's layer block and the embedding.

    Cheap (reads a few hundred values) and exact: any other seed or checkpoint changes it.
    """
    h = hashlib.sha1()
    prefix = module_name.rsplit(".", 2)[0]  # e.g. model.layers.3 for model.layers.3.mlp.down_proj
    for name, p in model.named_parameters():
        if name.startswith(prefix + ".") or "embed" in name or "wte" in name:
            h.update(name.encode())
            h.update(p.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _read_cached(path: Path, fingerprint: str) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("fingerprint") != fingerprint:
                log.warning("ignoring %s: it was computed for other weights", path)
                return None
            return fh.get_tensor(_STAT_KEY)
    except (OSError, ValueError, KeyError, SafetensorError) as err:  # a corrupt file is recomputed, not fatal
        log.warning("ignoring unreadable statistics file %s (%s)", path, err)
        return None


def _write_atomic(path: Path, mom2: torch.Tensor, meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({_STAT_KEY: mom2.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)


@torch.no_grad()
def collect_second_moments(
    model: nn.Module,
    token_chunks: torch.Tensor,
    module_names: Sequence[str],
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """``E[k kᵀ]`` ``[d_in, d_in]`` (float64) of each module's input over all tokens of ``token_chunks`` ``[n_seq, L]``.

    One pass for all modules; each forward stops after the last of them has run.
    """
    device = model_device(model)
    sums: dict[str, torch.Tensor] = {}
    remaining: set[str] = set()
    count = 0

    def make_hook(name: str):  # noqa: ANN202
        def hook(_mod: nn.Module, inputs: tuple, _out: object) -> None:
            k = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            # Each batch's k^T k in float32 (a few thousand terms), the running sum in float64.
            kk = (k.T @ k).double()
            sums[name] = sums[name] + kk if name in sums else kk
            remaining.discard(name)
            if not remaining:
                raise StopForward

        return hook

    handles = [get_module(model, n).register_forward_hook(make_hook(n)) for n in module_names]
    try:
        bar = tqdm(total=token_chunks.numel(), desc="key statistics", unit="tok", unit_scale=True, disable=not progress)
        for batch in token_chunks.split(batch_size):
            remaining.update(module_names)
            try:
                model(input_ids=batch.to(device))
            except StopForward:
                pass
            count += batch.numel()
            bar.update(batch.numel())
        bar.close()
    finally:
        for h in handles:
            h.remove()
    return {n: (s / count).cpu() for n, s in sums.items()}


def second_moments(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    model_name: str,
    module_names: Sequence[str],
    n_tokens: int,
    seq_len: int = 256,
    dtype: str = "float32",
    data_dir: str | None = None,
    root: str | os.PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """``C`` (float64, ``[d_in, d_in]``) for each module: read from the cache, computing the missing ones in one pass.

    ``dtype`` names the precision the model ran in (part of the cache key); the model is used as given.
    """
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    prints: dict[str, str] = {}
    for name in module_names:
        prints[name] = weights_fingerprint(model, name)
        cached = _read_cached(stats_path(model_name, name, n_tokens, dtype, root), prints[name])
        if cached is not None:
            log.info("loaded key statistics for %s from cache", name)
            out[name] = cached
        else:
            missing.append(name)
    if missing:
        chunks = wikitext_token_chunks(tok, n_tokens, seq_len, data_dir)
        log.info("computing key statistics for %s on %d WikiText tokens", ", ".join(missing), chunks.numel())
        computed = collect_second_moments(model, chunks, missing)
        for name, mom2 in computed.items():
            meta = {"fingerprint": prints[name], "n_tokens": str(chunks.numel()), "seq_len": str(seq_len),
                    "dataset": "wikitext-2-raw (valid)", "dtype": dtype, "model": str(model_name)}
            _write_atomic(stats_path(model_name, name, n_tokens, dtype, root), mom2, meta)
            out[name] = mom2
    return out
