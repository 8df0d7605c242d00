"""Low-noise general-ability probes: held-out perplexity and KL(unedited ‖ edited) on fixed text.

`GeneralAbilityProbe.record` is called once on the unedited model: it cuts the first ``num_tokens``
tokens of WikiText-2 *test* into non-overlapping windows and keeps, as the reference, the unedited model's
**final hidden states** (the inputs of its output layer), ``[n_windows, window - 1, d]`` float32 on the CPU.
`GeneralAbilityProbe.probe` runs the (edited) model on the same windows and recomputes the unedited
next-token distributions by passing those hidden states through the output layer.

Why hidden states: the full reference distributions would cost ``n_tokens × vocab`` floats (SmolLM2,
20k tokens: ~4 GB in float32), and top-k summaries only bound the KL from below. The hidden states cost
``n_tokens × d`` (20k tokens × 576: 46 MB) and give the unedited logits exactly, up to float rounding, for
~1/5 of a forward pass more per probe. The one assumption is that the output layer is not edited (every
editor here edits MLP matrices); `probe` checks it against a fingerprint and refuses otherwise.

Each window predicts ``window - 1`` tokens (its first token has no context), so ``n_tokens`` in the result
counts predicted tokens. Perplexity is ``exp(mean NLL)`` over them; KL is the mean per-token
``KL(p_unedited ‖ p_edited)`` in nats.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from transformers import PreTrainedTokenizerBase

from prune_lit.data.wikitext import wikitext_windows
from prune_lit.models.batching import model_device

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- math on tensors


def next_token_nll(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Per-position NLL of each next token: ``logits [b, t, V]`` (at positions 0..t-1), ``input_ids [b, t]``
    -> ``[b, t-1]`` where entry ``i`` is ``-log p(input_ids[:, i+1] | input_ids[:, :i+1])``."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def kl_from_logits(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """Per-position ``KL(softmax(ref_logits) ‖ softmax(logits))`` in nats: ``[..., V]`` x2 -> ``[...]``."""
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def nll_and_kl(ref_logits: Tensor, logits: Tensor, labels: Tensor, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """`next_token_nll` and `kl_from_logits` fused for the probe: ``ref_logits [b, t, V]`` (unedited),
    ``logits [b, t, V]`` (edited, at the predicting positions), ``labels [b, t]`` (the next tokens) ->
    ``(nll [b, t], kl [b, t])``.

    Works on ``chunk`` positions at a time with in-place temporaries: the full-vocabulary tensors are the
    probe's main cost after the forward pass, and fewer fresh allocations make them markedly cheaper on a CPU.
    """
    nll = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    kl = torch.empty_like(nll)
    flat_ref, flat_z, flat_y = ref_logits.reshape(-1, ref_logits.shape[-1]), logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    nll_flat, kl_flat = nll.view(-1), kl.view(-1)
    for i in range(0, flat_y.shape[0], chunk):
        ref_logp = F.log_softmax(flat_ref[i : i + chunk].float(), dim=-1)
        logp = F.log_softmax(flat_z[i : i + chunk].float(), dim=-1)
        nll_flat[i : i + chunk] = -logp.gather(-1, flat_y[i : i + chunk, None]).squeeze(-1)
        logp.sub_(ref_logp).neg_()  # log p_ref - log p
        kl_flat[i : i + chunk] = torch.linalg.vecdot(ref_logp.exp_(), logp)
    return nll, kl


class PerplexityKL(Metric):
    """Sums of per-token NLL and KL and the token count (they add across batches and processes).

    ``update(nll [...], kl [...])`` with matching shapes; ``compute()`` ->
    ``{"perplexity", "nll", "kl_from_unedited", "n_tokens"}`` (NaN before any update).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kl_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: Tensor, kl: Tensor) -> None:
        if nll.shape != kl.shape:
            raise ValueError(f"nll and kl must have the same shape, got {tuple(nll.shape)} and {tuple(kl.shape)}")
        self.nll_sum += nll.double().sum().to(self.nll_sum)
        self.kl_sum += kl.double().sum().to(self.kl_sum)
        self.count += nll.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count
        nll = self.nll_sum / n if n > 0 else torch.tensor(math.nan, dtype=torch.float64)
        kl = self.kl_sum / n if n > 0 else torch.tensor(math.nan, dtype=torch.float64)
        return {"perplexity": nll.exp(), "nll": nll, "kl_from_unedited": kl, "n_tokens": n}


# ---------------------------------------------------------------- the probe


@dataclass
class ProbeResult:
    """One probe of a model. ``window_nll`` / ``window_kl``: per-window means (for paired comparisons)."""

    perplexity: float
    nll: float
    kl_from_unedited: float
    n_tokens: int
    seconds: float
    window_nll: list[float] = field(default_factory=list)
    window_kl: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else math.nan

    def as_dict(self, per_window: bool = False) -> dict[str, Any]:
        """Flat scalars for loggers and results.json; with ``per_window`` also ``per_window: {nll, kl}`` lists."""
        out: dict[str, Any] = {k: v for k, v in asdict(self).items() if not k.startswith("window_")}
        out["tokens_per_s"] = self.tokens_per_s
        if per_window:
            out["per_window"] = {"nll": list(self.window_nll), "kl": list(self.window_kl)}
        return out


def _output_layer(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None)")
    return head


def _fingerprint(head: nn.Module) -> tuple[Tensor, ...]:
    """A cheap exact fingerprint of the output layer: every parameter's float64 sum and a strided sample."""
    out = []
    for p in head.parameters():
        flat = p.detach().reshape(-1)
        out += [flat.sum(dtype=torch.float64).cpu(), flat[:: max(flat.numel() // 4096, 1)].float().cpu().clone()]
    return tuple(out)


def _softcap(model: nn.Module, logits: Tensor) -> Tensor:
    """Apply the final-logit soft-capping some architectures (Gemma 2) do after the output layer."""
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


class GeneralAbilityProbe:
    """Perplexity and KL from the unedited model on fixed held-out token windows.

    Build with `record` (on the unedited model); call `probe` on the edited model as often as needed.
    ``windows``: ``[n, w]`` token ids; ``reference_hidden``: ``[n, w-1, d]`` the unedited model's inputs to its
    output layer at the predicting positions. ``batch_size``: windows per forward pass (1 is fastest on a
    CPU; larger on a GPU).
    """

    def __init__(
        self, windows: Tensor, reference_hidden: Tensor, head_fingerprint: tuple[Tensor, ...], batch_size: int = 1
    ) -> None:
        if reference_hidden.shape[:2] != (windows.shape[0], windows.shape[1] - 1):
            raise ValueError(f"reference_hidden {tuple(reference_hidden.shape)} does not match windows {tuple(windows.shape)}")
        self.windows = windows
        self.reference_hidden = reference_hidden
        self.head_fingerprint = head_fingerprint
        self.batch_size = batch_size

    @property
    def n_tokens(self) -> int:
        """Predicted tokens per probe."""
        return self.windows.shape[0] * (self.windows.shape[1] - 1)

    @classmethod
    def record(
        cls,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        num_tokens: int = 5000,
        window: int = 256,
        split: str = "test",
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 1,
        windows: Tensor | None = None,
    ) -> GeneralAbilityProbe:
        """Record the unedited reference on the first ``num_tokens`` tokens of WikiText-2 ``split`` (or on the
        given ``windows [n, w]``)."""
        if windows is None:
            windows = wikitext_windows(tokenizer, num_tokens, window, split, data_dir)
        head = _output_layer(model)
        captured: list[Tensor] = []
        hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0][:, :-1].detach().float().cpu()))
        device = model_device(model)
        was_training = model.training
        model.eval()  # dropout would make the reference random
        try:
            with torch.inference_mode():
                for i in range(0, windows.shape[0], batch_size):
                    model(input_ids=windows[i : i + batch_size].to(device))
        finally:
            hook.remove()
            model.train(was_training)
        hidden = torch.cat(captured)
        log.info("probe reference: %d windows x %d tokens, hidden states %.1f MB", *windows.shape, hidden.numel() * 4 / 2**20)
        return cls(windows, hidden, _fingerprint(head), batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Everything the probe holds (CPU tensors), e.g. for a checkpoint: an edited model cannot re-record it."""
        return {"windows": self.windows, "reference_hidden": self.reference_hidden,
                "head_fingerprint": list(self.head_fingerprint), "batch_size": self.batch_size}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> GeneralAbilityProbe:
        return cls(state["windows"], state["reference_hidden"], tuple(state["head_fingerprint"]), int(state["batch_size"]))

    def probe(self, model: nn.Module, rank: int = 0, world_size: int = 1) -> ProbeResult:
        """Perplexity of ``model`` on the windows and its mean KL from the unedited model.

        On several processes each rank passes its ``rank`` / ``world_size`` and runs every ``world_size``-th
        window; the totals (perplexity, KL, n_tokens) reduce across ranks when a process group is initialised
        (every rank must call), while ``window_nll`` / ``window_kl`` hold this rank's windows only.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        head = _output_layer(model)
        now = _fingerprint(head)
        if len(now) != len(self.head_fingerprint) or not all(torch.equal(a, b) for a, b in zip(now, self.head_fingerprint)):
            raise RuntimeError("the output layer changed since the probe reference was recorded; the stored reference needs it unedited")
        device = model_device(model)
        dtype = next(head.parameters()).dtype
        metric = PerplexityKL().to(device)  # states beside the model: NCCL reduces device tensors only
        window_nll: list[Tensor] = []
        window_kl: list[Tensor] = []
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                mine = torch.arange(rank, self.windows.shape[0], world_size)
                for chunk in mine.split(self.batch_size):
                    ids = self.windows[chunk].to(device)
                    logits = model(input_ids=ids).logits
                    ref_logits = _softcap(model, head(self.reference_hidden[chunk].to(device, dtype)))
                    nll, kl = nll_and_kl(ref_logits, logits[:, :-1], ids[:, 1:])
                    metric.update(nll, kl)
                    window_nll.append(nll.mean(-1).cpu())
                    window_kl.append(kl.mean(-1).cpu())
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        m = metric.compute()
        return ProbeResult(
            perplexity=float(m["perplexity"]),
            nll=float(m["nll"]),
            kl_from_unedited=float(m["kl_from_unedited"]),
            n_tokens=int(m["n_tokens"]),
            seconds=seconds,
            window_nll=torch.cat(window_nll).tolist() if window_nll else [],
            window_kl=torch.cat(window_kl).tolist() if window_kl else [],
        )
