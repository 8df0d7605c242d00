"""Batched greedy generation for causal LMs (Hugging Face models); choice scoring is `prune_lit.metrics.scoring.choice_logprobs`.

Both functions sort prompts by token length before batching (less left padding) and return results in
the caller's order. The tokenizer must pad on the left (``load_model`` sets this); it is enforced here.

Generation has two engines with bit-identical logits, hence the same greedy outputs: ``"loop"`` (default), a plain
KV-cache loop in a preallocated cache, in which a row leaves the batch (down to 4 rows) as soon as it meets its stop
rule (EOS or a stop string, checked on that row's new tokens only); and ``"hf"``, Hugging Face's ``generate``,
which keeps finished rows in the batch until every row is done, concatenates its cache at every step and decodes
every row's text at every step for the stop strings. Both prefill with logits at the last position only, and feed
the same ids, mask and positions. Prefill dominates either way (docs/benchmarks.md, "Evaluation cost of a study arm").
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

try:  # transformers whose caches are built from layer objects; with older ones the cache concatenates as before
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover
    DynamicLayer = None

from prune_lit.models.batching import model_device

log = logging.getLogger(__name__)

GENERATION_ENGINES: tuple[str, ...] = ("loop", "hf")
# Fewest rows a decode batch shrinks to: from 4 rows up, a float32 GEMM row does not depend on the row count here,
# with one intra-op thread. With several threads the split of the work depends on the row count, so the batch keeps
# all its rows (`decode_floor`): shrinking is exact only where it was measured to be.
MIN_DECODE_ROWS = 4


def decode_floor(n_rows: int, min_rows: int = MIN_DECODE_ROWS) -> int:
    """How many rows a greedy decode batch of ``n_rows`` keeps at least: ``min_rows`` with one torch thread,
    all of them otherwise (tests/test_generation_smollm2.py shows rows changing with the row count at 2 threads)."""
    return min(min_rows, n_rows) if torch.get_num_threads() == 1 else n_rows


def apply_chat_template(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[str]:
    """Each prompt as the user turn of the tokenizer's chat template, ready for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]


@dataclass
class GenerationResult:
    texts: list[str]  # the continuations, cut at the first stop string, in the prompts' order
    new_tokens: int  # tokens actually generated (up to EOS or the stop string), summed over prompts


class _StopOnStrings(StoppingCriteria):
    """Marks a row finished once its continuation contains a stop string (so a batch can end early)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, stop_strings: Sequence[str]) -> None:
        self.tokenizer, self.prompt_len, self.stop_strings = tokenizer, prompt_len, tuple(stop_strings)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(s in t.lstrip() for s in self.stop_strings) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop_strings: Sequence[str] | None) -> str:
    """``text`` without leading whitespace, up to (not including) the earliest stop string.

    Leading whitespace is dropped first so that a continuation starting with a line break is not cut to nothing.
    """
    text = text.lstrip()
    if not stop_strings:
        return text
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def _tokenize(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], device: torch.device) -> dict[str, Tensor]:
    if tokenizer.padding_side != "left":
        raise ValueError("batched generation needs a left-padding tokenizer (tokenizer.padding_side = 'left')")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token (set tokenizer.pad_token = tokenizer.eos_token)")
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return {k: v.to(device) for k, v in enc.items()}


def _length_order(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[int]:
    lengths = [len(ids) for ids in tokenizer(list(prompts)).input_ids]
    return sorted(range(len(prompts)), key=lambda i: lengths[i])


def _count_new_tokens(new_ids: Sequence[Sequence[int]], eos_ids: set[int]) -> list[int]:
    """Per row, the generated tokens up to and including the first EOS (the rest is padding)."""
    counts = []
    for row in new_ids:
        n = len(row)
        for j, tok in enumerate(row):
            if tok in eos_ids:
                n = j + 1
                break
        counts.append(n)
    return counts


@functools.lru_cache(maxsize=16)
def forward_kwargs(model_cls: type) -> tuple[bool, str]:
    """(forward accepts ``logits_to_keep``, name of its KV-cache argument: transformers 5 calls it ``cache``)."""
    params = inspect.signature(model_cls.forward).parameters
    return "logits_to_keep" in params, "cache" if "cache" in params else "past_key_values"


class _PreallocatedLayer(DynamicLayer or object):
    """A full-attention KV-cache layer with room for ``extra`` more positions: a step writes its keys and values
    in place instead of concatenating (``DynamicLayer`` copies the whole layer's cache at every step, ~25 % of a
    batch-8 decode step on SmolLM2). Attention sees views of exactly the filled positions, the same values and
    shapes as ``DynamicLayer`` gives, so the logits do not change."""

    def __init__(self, layer: DynamicLayer, extra: int) -> None:
        super().__init__()
        b, h, n, d = layer.keys.shape
        self.device, self.is_initialized, self.length = layer.keys.device, True, n
        self.key_buffer = layer.keys.new_empty((b, h, n + extra, d))
        self.value_buffer = layer.values.new_empty((b, h, n + extra, layer.values.shape[-1]))
        self.key_buffer[:, :, :n], self.value_buffer[:, :, :n] = layer.keys, layer.values
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        n = key_states.shape[-2]
        if self.length + n > self.key_buffer.shape[-2]:  # out of room: grow like DynamicLayer
            self.key_buffer = torch.cat([self.keys, key_states], dim=-2)
            self.value_buffer = torch.cat([self.values, value_states], dim=-2)
        else:
            self.key_buffer[:, :, self.length : self.length + n] = key_states
            self.value_buffer[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def _preallocate(cache, extra: int) -> None:
    """Swaps the plain ``DynamicLayer``s of ``cache`` for `_PreallocatedLayer`s (other cache kinds stay as they are)."""
    layers = getattr(cache, "layers", None)
    if DynamicLayer is None or not isinstance(layers, list):
        return
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            layers[i] = _PreallocatedLayer(layer, extra)


def _hf_generate_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    enc: dict[str, Tensor],
    max_new_tokens: int,
    eos_ids: set[int],
    stop_strings: Sequence[str] | None,
) -> list[list[int]]:
    """Per row, the new token ids from ``model.generate`` (finished rows padded to the batch's longest)."""
    prompt_len = enc["input_ids"].shape[1]
    stopping = StoppingCriteriaList([_StopOnStrings(tokenizer, prompt_len, stop_strings)]) if stop_strings else None
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos_ids) or None,
        stopping_criteria=stopping,
        # instruct models ship sampling defaults; unset them so greedy decoding does not warn
        temperature=None,
        top_p=None,
        top_k=None,
    )
    return out[:, prompt_len:].tolist()


def _greedy_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    enc: dict[str, Tensor],
    max_new_tokens: int,
    eos_ids: set[int],
    stop_strings: Sequence[str] | None,
    min_rows: int = MIN_DECODE_ROWS,
) -> list[list[int]]:
    """Per row, the greedy new token ids up to and including the token that meets the row's stop rule (EOS, a
    stop string in its continuation after leading whitespace, or ``max_new_tokens``).

    Feeds what ``model.generate`` feeds (positions counted over real tokens, the mask grown by one column per
    step, logits at the last position only), so every row gets the same logits, bit for bit. A finished row
    leaves the batch and its KV cache, except that the batch keeps ``min_rows`` rows (finished ones ride along,
    their tokens dropped) while it started with that many: a float32 GEMM row's result depends on the row count
    below 4 on this CPU (small-M kernels), not from 4 up, with one thread; with several threads no row leaves
    (`decode_floor`; tests/test_generation_smollm2.py checks both).
    """
    keep_ok, cache_arg = forward_kwargs(type(model))
    keep = {"logits_to_keep": 1} if keep_ok else {}
    input_ids, mask = enc["input_ids"], enc["attention_mask"]
    position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=True, **keep)
    cache = out[cache_arg]
    _preallocate(cache, max_new_tokens)
    position = position[:, -1:]
    n = input_ids.shape[0]
    rows: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    batch_rows = list(range(n))  # the caller's row of each row in the batch
    floor = decode_floor(n, min_rows)
    stops = tuple(stop_strings or ())
    for step in range(max_new_tokens):
        next_ids = out.logits[:, -1, :].float().argmax(-1)
        for r, tok in zip(batch_rows, next_ids.tolist()):
            if done[r]:
                continue
            rows[r].append(tok)
            text = tokenizer.decode(rows[r], skip_special_tokens=True).lstrip() if stops else ""
            done[r] = tok in eos_ids or any(s in text for s in stops)
        live = [b for b, r in enumerate(batch_rows) if not done[r]]
        if step == max_new_tokens - 1 or not live:
            break
        if len(live) < len(batch_rows) and len(batch_rows) > floor:
            riders = [b for b, r in enumerate(batch_rows) if done[r]][: max(floor - len(live), 0)]
            sel_rows = sorted(live + riders)
            sel = torch.tensor(sel_rows, device=mask.device)
            cache.batch_select_indices(sel)
            mask, position, next_ids = mask[sel], position[sel], next_ids[sel]
            batch_rows = [batch_rows[b] for b in sel_rows]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        position = position + 1
        out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=position, use_cache=True, **{cache_arg: cache}, **keep)
    return rows


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    stop_strings: Sequence[str] | None = None,
    progress: bool = True,
    engine: str = "loop",
) -> GenerationResult:
    """Greedy continuations of ``prompts`` (batched, left-padded, KV cache) plus the generated-token count.

    ``engine``: ``"loop"`` (finished rows leave the batch) or ``"hf"`` (``model.generate``); same outputs.
    """
    if engine not in GENERATION_ENGINES:
        raise ValueError(f"unknown generation engine {engine!r}; expected one of {GENERATION_ENGINES}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return GenerationResult([], 0)
    device = model_device(model)
    order = _length_order(tokenizer, prompts)
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = {e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
    texts: list[str] = [""] * len(prompts)
    total_new = 0
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc="generate", disable=not progress or len(batches) < 2, leave=False):
        enc = _tokenize(tokenizer, [prompts[i] for i in idx], device)
        if engine == "loop":
            rows = _greedy_rows(model, tokenizer, enc, max_new_tokens, eos_ids, stop_strings)
        else:
            rows = _hf_generate_rows(model, tokenizer, enc, max_new_tokens, eos_ids, stop_strings)
        decoded = tokenizer.batch_decode(rows, skip_special_tokens=True)
        for i, text, n in zip(idx, decoded, _count_new_tokens(rows, eos_ids)):
            texts[i] = cut_at_stop(text, stop_strings)
            total_new += n
    return GenerationResult(texts, total_new)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    stop_strings: Sequence[str] | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` (without the prompt), cut at the first stop string."""
    return generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings).texts


def _forward(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, last_only: bool = False):
    # Positions count real tokens only, as generate() does, so a left-padded row scores like an unpadded one.
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if last_only else {}  # skips the vocab projection of all other positions
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra)
