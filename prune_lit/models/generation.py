"""Batched greedy generation for causal LMs (Hugging Face models); choice scoring is `prune_lit.metrics.scoring.choice_logprobs`.

Both functions sort prompts by token length before batching (less left padding) and return results in
the caller's order. The tokenizer must pad on the left (``load_model`` sets this); it is enforced here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from prune_lit.models.batching import model_device

log = logging.getLogger(__name__)


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


def _count_new_tokens(new_ids: Tensor, eos_ids: set[int]) -> list[int]:
    """Per row, the generated tokens up to and including the first EOS (the rest is padding)."""
    counts = []
    for row in new_ids.tolist():
        n = len(row)
        for j, tok in enumerate(row):
            if tok in eos_ids:
                n = j + 1
                break
        counts.append(n)
    return counts


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    stop_strings: Sequence[str] | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Greedy continuations of ``prompts`` (batched, left-padded, KV cache) plus the generated-token count."""
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
        new_ids = out[:, prompt_len:]
        decoded = tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        for i, text, n in zip(idx, decoded, _count_new_tokens(new_ids, eos_ids)):
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
