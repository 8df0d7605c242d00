"""Locate-then-edit building blocks shared by ROME and MEMIT: prompts, keys and target values.

* context templates: short model-generated prefixes (``"<prefix>. {}"``) so keys and values do not
  overfit one phrasing;
* keys ``k``: the input of a module (the MLP output projection) at the subject's last token,
  averaged over templates;
* targets: a vector ``delta`` added to a module's output at the subject's last token, optimised so
  the model continues the prompt with ``target_new`` (NLL), keeps what the subject "is" (KL) and
  stays small (weight decay + norm clamp), following ROME's ``compute_v`` / MEMIT's ``compute_z``.

All forwards use right padding built here (causal models: padding on the right never changes the
real tokens' activations) and forward hooks that are always removed (``try``/``finally``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.models.arch import get_module
from prune_lit.models.batching import model_device, pad_batch, pad_token_id
from prune_lit.models.layer_skip import StopForward, hidden_into_layer, layer_of, skip_layers_below

log = logging.getLogger(__name__)

_SEED_WORDS = ("The", "Therefore", "Because", "I", "You")  # MEMIT's prefix seeds


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index]


def _replace_first(output: object, new: torch.Tensor) -> object:
    return (new, *output[1:]) if isinstance(output, tuple) else new  # type: ignore[index]


def logits_at(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[*rows.shape, vocab]`` at ``(rows, cols)`` only (float32).

    Runs the trunk (``model.base_model``, final norm included) and applies the output head to the
    selected positions: with a 49k vocabulary the head over every position would dominate the cost.
    """
    hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden[rows, cols]).float()


def subject_last_token(tok: PreTrainedTokenizerBase, template: str, request: EditRequest) -> tuple[list[int], int]:
    """Token ids of ``template.format(request.prompt)`` and the index of the subject's last token.

    The subject is located by characters (its first occurrence in the prompt) and mapped to tokens
    with the tokenizer's offsets, so it is exact whatever the tokenizer merges across the boundary.
    """
    if request.subject not in request.prompt:
        raise ValueError(f"case {request.case_id}: subject {request.subject!r} does not occur in prompt {request.prompt!r}")
    text = template.format(request.prompt)
    start = template.index("{}") + request.prompt.index(request.subject)
    end = start + len(request.subject)  # exclusive char index
    enc = tok(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    hits = [i for i, (a, b) in enumerate(offsets) if a <= end - 1 < b]  # the token holding the subject's last char
    if not hits:
        raise ValueError(f"case {request.case_id}: could not map subject {request.subject!r} to tokens of {text!r}")
    return ids, hits[0]


def target_token_ids(tok: PreTrainedTokenizerBase, target: str) -> list[int]:
    """Ids of ``" " + target`` (targets are stored without the leading space)."""
    ids = list(tok(" " + target.strip(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return ids


@torch.no_grad()
def generate_context_templates(
    model: nn.Module, tok: PreTrainedTokenizerBase, length_params: Sequence[Sequence[int]], seed: int = 0
) -> list[str]:
    """``["{}"]`` plus model-sampled prefixes (top-5 sampling, seeded) as ``"<prefix>. {}"``.

    ``length_params`` is ``[[n_tokens, how_many], ...]``; prefixes start from MEMIT's seed words.
    """
    gen = torch.Generator().manual_seed(seed)
    device = model_device(model)
    templates = ["{}"]
    for length, count in length_params:
        seeds = [_SEED_WORDS[i % len(_SEED_WORDS)] for i in range(int(count))]
        seqs = [list(tok(s)["input_ids"]) for s in seeds]
        for _ in range(int(length)):
            ids, mask = pad_batch(seqs, pad_token_id(tok), device=device)
            last = logits_at(model, ids, mask, torch.arange(len(seqs), device=device), mask.sum(1) - 1)
            top = last.topk(5, dim=-1)
            probs = top.values.softmax(-1).cpu()
            choice = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            nxt = top.indices.cpu()[torch.arange(len(seqs)), choice]
            seqs = [s + [int(t)] for s, t in zip(seqs, nxt)]
        for s in seqs:
            text = tok.decode(s, skip_special_tokens=True)
            templates.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return templates


@contextlib.contextmanager
def hooked(module: nn.Module, hook) -> Iterator[None]:  # noqa: ANN001
    """Register a forward hook for the duration of the block; always removed."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def module_io_at(
    model: nn.Module,
    module_name: str,
    seqs: Sequence[Sequence[int]],
    positions: Sequence[int],
    pad_id: int,
    which: str = "input",
) -> torch.Tensor:
    """The input (``which="input"``) or output of ``module_name`` at one position per sequence: ``[n, d]``.

    The forward stops right after that module runs.
    """
    if which not in ("input", "output"):
        raise ValueError(f"which must be 'input' or 'output', got {which!r}")
    module = get_module(model, module_name)
    captured: list[torch.Tensor] = []
    rows = torch.arange(len(seqs))

    def hook(_mod: nn.Module, inputs: tuple, output: object) -> None:
        x = inputs[0] if which == "input" else _first(output)
        captured.append(x[rows, torch.as_tensor(list(positions))].detach().float())
        raise StopForward

    ids, mask = pad_batch(seqs, pad_id, device=model_device(model))
    with hooked(module, hook):
        try:
            model(input_ids=ids, attention_mask=mask)
        except StopForward:
            pass
    if not captured:
        raise RuntimeError(f"module {module_name} did not run during the forward")
    return captured[0]


def average_template_keys(keys: torch.Tensor, averaging: str = "uniform") -> torch.Tensor:
    """One key per request from its per-template keys ``[n, T, d]`` -> ``[n, d]``.

    ``"uniform"``: the mean over all T templates (kmeng01/rome compute_u). ``"plain_half"``: ½ · the first
    template's key (the bare prompt, ``"{}"``) + ½ · the mean of the other T − 1 (kmeng01/memit compute_ks,
    which averages within each template group, then over the groups).
    """
    if keys.dim() != 3:
        raise ValueError(f"keys must be [n, T, d], got {tuple(keys.shape)}")
    if averaging == "uniform":
        return keys.mean(1)
    if averaging == "plain_half":
        if keys.shape[1] < 2:
            return keys[:, 0]
        return 0.5 * keys[:, 0] + 0.5 * keys[:, 1:].mean(1)
    raise ValueError(f"averaging must be 'uniform' or 'plain_half', got {averaging!r}")


def compute_keys(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    module_name: str,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    *,
    averaging: str = "uniform",
    per_template: bool = False,
) -> torch.Tensor:
    """Keys ``[n_requests, d_in]``: ``module_name``'s input at the subject's last token, averaged over templates.

    ``averaging`` as `average_template_keys` (``"plain_half"`` needs ``templates[0] == "{}"``). With
    ``per_template`` the keys are returned unaveraged, ``[n_requests, n_templates, d_in]``.
    """
    if averaging == "plain_half" and templates[0] != "{}":
        raise ValueError(f"plain_half averaging needs the bare prompt '{{}}' as the first template, got {templates[0]!r}")
    seqs, pos = [], []
    for r in requests:
        for t in templates:
            ids, p = subject_last_token(tok, t, r)
            seqs.append(ids)
            pos.append(p)
    k = module_io_at(model, module_name, seqs, pos, pad_token_id(tok), "input").view(len(requests), len(templates), -1)
    return k if per_template else average_template_keys(k, averaging)


def value_weight_decay(delta: torch.Tensor, v_init_norm: torch.Tensor, weight: float, form: str = "norm") -> torch.Tensor:
    """The value search's weight decay: ``weight · ‖δ‖ / ‖v_init‖²`` (``"norm"``, kmeng01/rome compute_v,
    memit compute_z, PRUNE) or ``weight · ‖δ‖² / ‖v_init‖²`` (``"squared"``). ``delta`` ``[d]``, norm a scalar."""
    if form == "norm":
        return weight * delta.norm() / v_init_norm**2
    if form == "squared":
        return weight * delta.norm() ** 2 / v_init_norm**2
    raise ValueError(f"weight decay form must be 'norm' or 'squared', got {form!r}")


def targets_are_top1(logits: torch.Tensor, target_ids: torch.Tensor) -> bool:
    """Most-probable early stopping's rule: every target token is the argmax on every prompt.

    ``logits`` ``[n_prompts, T, V]`` (or log-probs) at the positions predicting each of the T target tokens
    under teacher forcing, ``target_ids`` ``[T]``. Ties count as not yet most probable only when another
    token wins ``argmax``.
    """
    if logits.dim() != 3 or logits.shape[1] != target_ids.numel():
        raise ValueError(f"logits must be [n, T={target_ids.numel()}, V], got {tuple(logits.shape)}")
    return bool((logits.argmax(-1) == target_ids.to(logits.device)[None, :]).all())


def _cache_argument(model: nn.Module) -> str:
    """Name of the KV-cache argument of the model's trunk (transformers 5 renamed ``past_key_values`` in places)."""
    params = inspect.signature(type(model.base_model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _suffix_search(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    pos: Sequence[int],
    pad: int,
    P: int,
    sel_rows: torch.Tensor,
    sel_cols: torch.Tensor,
    autocast: contextlib.AbstractContextManager,
    layer: int | None = None,
) -> tuple:
    """The value search's forward on the tokens from the subject's last token on, the rest from a KV cache.

    Row i is left-padded by ``P − pos[i]`` so every subject's last token sits at column P; the keys/values of
    columns ``[0, P)`` (which δ, added at column P, cannot change) are computed once. With ``layer`` (the block
    δ is added in) the suffix's hidden states entering that block are computed once too, and every step runs
    only the blocks from ``layer`` on. Returns (a function giving the logits at ``(sel_rows, sel_cols)`` of the
    unaligned batch, the column δ goes to in the suffix (zeros), a context manager for the search).
    """
    device = model_device(model)
    left = torch.tensor([P - p for p in pos], device=device)
    aligned, mask = pad_batch([[pad] * (P - p) + list(s) for s, p in zip(seqs, pos)], pad, device=device)
    mask[torch.arange(aligned.shape[1], device=device)[None, :] < left[:, None]] = 0  # the left padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
    cache_arg = _cache_argument(model)
    with torch.no_grad(), autocast:
        out = model.base_model(input_ids=aligned[:, :P], attention_mask=mask[:, :P], position_ids=positions[:, :P], use_cache=True)
    cache = out[cache_arg] if cache_arg in out else out.past_key_values
    cols = sel_cols + left[sel_rows] - P  # columns of the selected logits inside the suffix
    head = model.get_output_embeddings()
    suffix_kw = dict(position_ids=positions[:, P:], use_cache=True, **{cache_arg: cache})

    def back_to_prefix() -> None:
        """Drop what a forward appended to each layer's cache (per layer: skipped blocks append nothing); the
        kept prefix may be a view of a step's graph, so cut it loose."""
        for layer_cache in cache.layers:
            if getattr(layer_cache, "keys", None) is not None:
                layer_cache.keys, layer_cache.values = layer_cache.keys[..., :P, :].detach(), layer_cache.values[..., :P, :].detach()

    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    if layer:
        with torch.no_grad(), autocast:
            lower = hidden_into_layer(model, layer, aligned[:, P:], mask, **suffix_kw)
        back_to_prefix()
        context = skip_layers_below(model, layer, lower)

    def search_logits() -> torch.Tensor:
        try:
            hidden = model.base_model(input_ids=aligned[:, P:], attention_mask=mask, **suffix_kw).last_hidden_state
        finally:
            back_to_prefix()  # the next step starts from the prefix again
        return head(hidden[sel_rows, cols]).float()

    return search_logits, torch.zeros(len(seqs), dtype=torch.long, device=device), context


@dataclass
class TargetResult:
    """The optimised output shift for one request at one module."""

    v_init: torch.Tensor  # [d] the module's output at the subject's last token (plain prompt), before editing
    delta: torch.Tensor  # [d] the shift to add there; target = v_init + delta
    loss: float  # final total loss (nll + kl + weight decay)
    nll: float  # final mean NLL of target_new over the templates
    steps: int  # optimisation steps taken

    @property
    def target(self) -> torch.Tensor:
        return self.v_init + self.delta


def optimise_target(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    module_name: str,
    request: EditRequest,
    templates: Sequence[str],
    *,
    num_steps: int,
    lr: float,
    weight_decay: float,
    clamp_norm_factor: float,
    kl_factor: float,
    early_stop_loss: float = 5e-2,
    weight_decay_form: str = "norm",
    mpes: bool = False,
    autocast_dtype: torch.dtype = torch.float32,
    cache_lower_layers: bool = True,
    prefix_cache: bool = False,
) -> TargetResult:
    """ROME's value search: Adam on ``delta`` added to ``module_name``'s output at the subject's last token.

    Loss = mean NLL of ``target_new`` after every ``template.format(prompt)``
    + ``kl_factor`` · KL(next-token dist. at the subject of "{subject} is a", vs. unedited)
    + `value_weight_decay` (``weight_decay`` · ‖δ‖ / ‖v_init‖², or its square with ``weight_decay_form``);
    after each step ‖δ‖ is clamped to ``clamp_norm_factor`` · ‖v_init‖. The search stops before a step when
    the loss is below ``early_stop_loss`` (reference) or, with ``mpes``, when `targets_are_top1` holds on
    every template prompt (most-probable early stopping, Gupta et al. 2025); it runs at most
    ``num_steps`` − 1 Adam steps, as the reference does.
    Model weights are never touched; gradients flow only into ``delta``. With ``autocast_dtype``
    bfloat16/float16 the search's forwards and backwards run under autocast (the loss and δ stay
    float32); ``v_init`` and the keys are always computed in the model's own dtype. With ``cache_lower_layers``
    the blocks below ``module_name``'s run once and the search's passes start at its block (same numbers).
    With ``prefix_cache`` the prompts are aligned at the subject's last token (left padding, explicit
    positions); everything before it does not depend on δ, so its keys/values run once and every step
    forwards only the tokens from the subject's last token on (same numbers up to float rounding); with
    ``cache_lower_layers`` as well, those tokens' blocks below ``module_name``'s run once too.
    """
    if num_steps < 1:  # v_init and the KL reference are read in the first step's forward
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    device = model_device(model)
    pad = pad_token_id(tok)
    tgt = target_token_ids(tok, request.target_new)
    seqs, pos, starts = [], [], []
    for t in templates:
        ids, p = subject_last_token(tok, t, request)
        starts.append(len(ids))
        seqs.append(ids + tgt[:-1])
        pos.append(p)
    n_rw = len(seqs)
    kl_req = EditRequest(case_id=request.case_id, prompt=f"{request.subject} is a", subject=request.subject, target_new=request.target_new)
    kl_ids, kl_pos = subject_last_token(tok, "{}", kl_req)
    seqs.append(kl_ids)
    pos.append(kl_pos)

    ids, mask = pad_batch(seqs, pad, device=device)
    rows = torch.arange(len(seqs), device=device)
    pos_t = torch.tensor(pos, device=device)
    # Positions whose logits predict target token j: start-1+j.
    tgt_t = torch.tensor(tgt, device=device)
    pred_pos = torch.tensor([[s - 1 + j for j in range(len(tgt))] for s in starts], device=device)  # [n_rw, T]

    module = get_module(model, module_name)
    autocast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32)
    # v_init and the KL reference come from the first search forward (δ = 0 there), as in the reference
    # compute_v; under autocast v_init is computed apart, in the model's own dtype.
    v_init = module_io_at(model, module_name, seqs[:1], pos[:1], pad, "output")[0].to(device) if autocast_dtype != torch.float32 else None
    rw_rows = torch.arange(n_rw, device=device)[:, None].expand_as(pred_pos)
    sel_rows = torch.cat([rw_rows.reshape(-1), torch.tensor([n_rw], device=device)])
    sel_cols = torch.cat([pred_pos.reshape(-1), torch.tensor([kl_pos], device=device)])
    # every module searched here (an MLP output, a block) writes into the residual stream
    delta = torch.zeros(model.config.hidden_size, dtype=next(module.parameters()).dtype, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)

    P = max(pos)
    layer = layer_of(model, module_name) if cache_lower_layers else None
    if prefix_cache and P > 0:
        search_logits, add_cols, context = _suffix_search(model, seqs, pos, pad, P, sel_rows, sel_cols, autocast, layer)
    else:
        if layer:
            with autocast:  # the blocks below see the same batch at every step: run them once
                lower = hidden_into_layer(model, layer, ids, mask)
            context = skip_layers_below(model, layer, lower)
        else:
            context = contextlib.nullcontext()
        add_cols = pos_t

        def search_logits() -> torch.Tensor:
            return logits_at(model, ids, mask, sel_rows, sel_cols)

    def hook(_mod: nn.Module, _inp: tuple, output: object) -> object:
        nonlocal v_init
        out = _first(output)
        if v_init is None:
            v_init = out[0, add_cols[0]].detach().clone()
        add = torch.zeros_like(out)
        add[rows, add_cols] = delta.to(out.dtype)
        return _replace_first(output, out + add)

    loss_v = nll_v = float("nan")
    steps = 0
    kl_init: torch.Tensor | None = None
    with torch.inference_mode(False), torch.enable_grad(), autocast, hooked(module, hook), context:
        for it in range(num_steps):
            logp = F.log_softmax(search_logits(), dim=-1)  # [n_rw*T + 1, V]
            if kl_init is None:  # δ = 0: the unedited next-token distribution of "{subject} is a"
                kl_init = logp[-1].detach().clone()
                max_norm = clamp_norm_factor * v_init.norm()
            tok_logp = logp[:-1].gather(1, tgt_t.repeat(n_rw)[:, None]).view(n_rw, len(tgt))  # [n_rw, T]
            nll = -tok_logp.mean(1).mean()
            kl_cur = logp[-1]
            kl = kl_factor * F.kl_div(kl_init, kl_cur, log_target=True, reduction="sum")
            wd = value_weight_decay(delta, v_init.norm(), weight_decay, weight_decay_form)
            loss = nll + kl + wd
            loss_v, nll_v = float(loss.detach()), float(nll.detach())
            log.debug("case %s step %d: loss %.4f nll %.4f kl %.4f wd %.4f", request.case_id, it, loss_v, nll_v, float(kl.detach()), float(wd.detach()))
            if loss_v < early_stop_loss or it == num_steps - 1:
                break
            if mpes and targets_are_top1(logp[:-1].detach().view(n_rw, len(tgt), -1), tgt_t):
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    return TargetResult(v_init=v_init.detach(), delta=delta.detach().clone(), loss=loss_v, nll=nll_v, steps=steps)
