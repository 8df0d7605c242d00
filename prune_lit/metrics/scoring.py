"""Teacher-forced scoring of target continuations: log-probs and top-1 agreement of `" " + target` after a prompt.

The prompt and `" " + target` are tokenized separately and concatenated, so the scored tokens are exactly
the target's. Prompts are left-padded into batches with explicit position ids (each row counts positions
from its first real token), so a padded row scores the same as the row alone; a prompt shared by several
targets runs once, and the targets' remaining tokens run on its KV cache.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from prune_lit.models.batching import model_device, pad_batch, pad_token_id


@dataclass
class TargetScores:
    """Per example i: ``target_ids[i]``, ``token_logprobs[i]`` and ``predictions[i]`` (top-1 ids), each ``[t_i]``."""

    target_ids: list[Tensor]
    token_logprobs: list[Tensor]
    predictions: list[Tensor]

    def __len__(self) -> int:
        return len(self.target_ids)

    def logprob(self, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
        """``[n]`` log P(target | prompt) (``"sum"``) or its per-token mean (``"mean"``, as ROME's code compares)."""
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        fn = torch.sum if reduction == "sum" else torch.mean
        return torch.stack([fn(lp) for lp in self.token_logprobs]) if self.token_logprobs else torch.zeros(0)

    def accuracy(self) -> Tensor:
        """``[n]`` share of target tokens that are the top-1 prediction under teacher forcing (EasyEdit's acc)."""
        return torch.stack([(p == t).float().mean() for p, t in zip(self.predictions, self.target_ids)]) if self.target_ids else torch.zeros(0)

    def exact(self) -> Tensor:
        """``[n]`` bool: every target token is top-1, i.e. greedy decoding from the prompt starts with the target."""
        return torch.stack([(p == t).all() for p, t in zip(self.predictions, self.target_ids)]) if self.target_ids else torch.zeros(0, dtype=torch.bool)


@functools.lru_cache(maxsize=16)
def _forward_args(model_cls: type) -> tuple[bool, str]:
    """(accepts ``logits_to_keep``, name of the KV-cache argument): transformers 5 renamed ``past_key_values``."""
    params = inspect.signature(model_cls.forward).parameters
    return "logits_to_keep" in params, "cache" if "cache" in params else "past_key_values"


def _encode(tokenizer: PreTrainedTokenizerBase, prompts: list[str], targets: list[str], target_prefix: str = " ") -> tuple[list[list[int]], list[list[int]]]:
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    t_ids = tokenizer([target_prefix + t for t in targets], add_special_tokens=False)["input_ids"]
    for i, (p, t) in enumerate(zip(p_ids, t_ids)):
        if not p:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) tokenizes to nothing; a target needs a prompt to follow")
        if not t:
            raise ValueError(f"target {i} ({targets[i]!r}) tokenizes to nothing")
    return p_ids, t_ids


def _continue(
    model: nn.Module, cache, cache_arg: str, mask: Tensor, targets: list[list[int]], rows: list[int], pad_id: int, device: torch.device
) -> Tensor:
    """``[R, C, V]`` log-probs after feeding ``targets[k][:-1]`` (right-padded) on prompt row ``rows[k]`` of
    ``cache`` (consumed); position j predicts target token j + 1. ``mask`` is the prompts' ``[B, L]`` mask."""
    sel = torch.tensor(rows)
    cache.reorder_cache(sel.to(device))
    cont, cmask = pad_batch([t[:-1] for t in targets], pad_id)  # right-padded: row k continues its own prompt
    C = cont.shape[1]
    full_mask = torch.cat([mask[sel], cmask], dim=1)
    pos = mask[sel].sum(-1, keepdim=True) + torch.arange(C)[None, :]  # continue each row's own count
    out = model(input_ids=cont.to(device), attention_mask=full_mask.to(device), position_ids=pos.to(device), use_cache=True, **{cache_arg: cache})
    return out.logits.float().log_softmax(-1)


@torch.no_grad()
def score_targets(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    targets: list[str],
    batch_size: int = 16,
    progress: bool = False,
    target_prefix: str = " ",
) -> TargetScores:
    """Teacher-forced scores of ``target_prefix + targets[i]`` after ``prompts[i]`` for all i, in the input order.

    Each distinct prompt runs once (``batch_size`` prompts per forward pass, left-padded); its last position
    scores the first token of all its targets, and only the remaining target tokens of multi-token targets
    run on top of the prompt's KV cache. Evaluation pairs every prompt with 2 targets, so this halves the work.
    """
    if not prompts and not targets:
        return TargetScores([], [], [])
    p_ids, t_ids = _encode(tokenizer, prompts, targets, target_prefix)
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    uniq = sorted(groups, key=lambda p: len(p_ids[groups[p][0]]), reverse=True)  # similar lengths share a batch
    logprobs: list[Tensor | None] = [None] * len(prompts)
    preds: list[Tensor | None] = [None] * len(prompts)
    starts = range(0, len(uniq), batch_size)
    for s in tqdm(starts, desc="scoring", disable=not progress or len(starts) < 2, leave=False):
        batch = uniq[s : s + batch_size]
        ids, mask = pad_batch([p_ids[groups[p][0]] for p in batch], pad_id, side="left")
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every row's real tokens start at position 0
        keep_ok, cache_arg = _forward_args(type(model))
        kw = {"logits_to_keep": 1} if keep_ok else {}
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device), use_cache=True, **kw)
        first = out.logits[:, -1, :].float().log_softmax(-1)  # [B, V]: predicts every target's first token
        rows = [(r, i) for r, p in enumerate(batch) for i in groups[p]]
        steps: dict[int, Tensor] = {i: first[r : r + 1] for r, i in rows}  # i -> [t_i, V] log-probs
        # Multi-token targets: feed t[:-1] on the prompt's cache, bucketed by length so that a long
        # answer does not pad every row of the batch to its length.
        buckets: dict[int, list[tuple[int, int]]] = {}
        for r, i in rows:
            if len(t_ids[i]) > 1:
                buckets.setdefault((len(t_ids[i]) - 2).bit_length(), []).append((r, i))
        cache = out[cache_arg]
        for b, (_, longer) in enumerate(sorted(buckets.items())):
            last = b == len(buckets) - 1
            rest = _continue(model, cache if last else copy.deepcopy(cache), cache_arg, mask, [t_ids[i] for _, i in longer], [r for r, _ in longer], pad_id, device)
            for k, (_, i) in enumerate(longer):
                steps[i] = torch.cat([steps[i], rest[k, : len(t_ids[i]) - 1]], dim=0)
        for _, i in rows:
            tgt = torch.tensor(t_ids[i], device=device)
            logprobs[i] = steps[i].gather(-1, tgt[:, None])[:, 0].cpu()
            preds[i] = steps[i].argmax(-1).cpu()
    return TargetScores(
        target_ids=[torch.tensor(t) for t in t_ids],
        token_logprobs=[lp for lp in logprobs if lp is not None],
        predictions=[p for p in preds if p is not None],
    )


def target_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    targets: list[str],
    batch_size: int = 16,
    reduction: Literal["sum", "mean"] = "sum",
) -> Tensor:
    """``[n]`` log P(" " + targets[i] | prompts[i]): summed over target tokens, or per-token mean."""
    return score_targets(model, tokenizer, prompts, targets, batch_size).logprob(reduction)


def target_token_accuracy(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], targets: list[str], batch_size: int = 16
) -> Tensor:
    """``[n]`` share of target tokens predicted top-1 under teacher forcing (EasyEdit's rewrite/rephrase acc)."""
    return score_targets(model, tokenizer, prompts, targets, batch_size).accuracy()


def greedy_prefix_match(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], targets: list[str], batch_size: int = 16
) -> Tensor:
    """``[n]`` bool: greedy decoding after ``prompts[i]`` begins with the tokens of ``" " + targets[i]``."""
    return score_targets(model, tokenizer, prompts, targets, batch_size).exact()


@torch.no_grad()
def choice_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    choices: Sequence[str] = (" True", " False"),
    batch_size: int = 8,
    progress: bool = True,
) -> Tensor:
    """log p(choice | prompt), summed over the choice's tokens: float32 [n_prompts, n_choices].

    Choices are tokenized on their own (no special tokens) and appended to the prompt's ids, and scored by
    `score_targets` (one forward per batch of prompts; single-token choices such as SmolLM2's " True" / " False"
    need nothing more).
    """
    if not choices:
        raise ValueError("choices must not be empty")
    if not prompts:
        return torch.empty(0, len(choices))
    pairs_p = [p for p in prompts for _ in choices]
    pairs_c = [c for _ in prompts for c in choices]
    scores = score_targets(model, tokenizer, pairs_p, pairs_c, batch_size, progress, target_prefix="")
    return scores.logprob("sum").view(len(prompts), len(choices)).float()
