"""MEND's hypernetwork (Mitchell et al., ICLR 2022) and the pure pieces around it.

For a linear layer ``y = W x`` the fine-tuning gradient of a loss over tokens ``i`` is the sum of
rank-1 outer products ``∇W = Σ_i δ_i u_iᵀ`` with ``u_i`` the layer input and ``δ_i = ∂L/∂y_i``. MEND
never forms ``∇W`` from the raw factors: it normalises ``u`` and ``δ`` (running mean/std), passes
``[u; δ]`` through a low-rank, identity-initialised MLP and builds the pseudo-gradient
``∇̃W = Σ_i δ̃_i ũ_iᵀ`` from the outputs. The edited weight is ``W̃ = W − lr_l · ∇̃W`` with one learned
``lr_l`` per inner matrix. One `GradientTransform` is shared by all inner matrices of equal shape
("shared" mode); per-matrix scale/shift embeddings condition it on which matrix it is transforming.

Everything here works in the math orientation ``[out, in]``; GPT-2's Conv1D is handled by
`prune_lit.models.arch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from prune_lit.models.arch import arch_spec, num_layers
from prune_lit.models.batching import pad_batch, pad_token_id

# Version of the checkpoint layout; bump when the hypernetwork changes shape or form.
# 1: first form (scale/shift on the layer input, no ReLU on the last layer, A ~ N(0, 1/d)).
# 2: the reference MEND form by default; the form is stored in the checkpoint's ``mend_meta["form"]``.
CHECKPOINT_FORMAT = 2

# ---- pure tensor functions -------------------------------------------------------------------


def outer_gradient(u: Tensor, delta: Tensor) -> Tensor:
    """Σ_i δ_i u_iᵀ. ``u``: [n, d_in], ``delta``: [n, d_out] -> [d_out, d_in]."""
    return delta.T @ u


def nonzero_rows(u: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Drop token rows whose input or output gradient is all zero (padding, positions after the loss).

    ``u``: [n, d_in], ``delta``: [n, d_out] -> the kept rows of each. As in MEND, this keeps padded and
    loss-free positions out of the running statistics and out of the pseudo-gradient.
    """
    keep = (u != 0).any(-1) & (delta != 0).any(-1)
    return u[keep], delta[keep]


def masked_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token NLL over labelled positions. ``logits``: [b, T, V]; ``labels``: [b, T] (-100 = ignore).

    ``labels[:, t]`` is the token at position t; it is predicted by ``logits[:, t-1]``.
    """
    logp = logits[:, :-1].float().log_softmax(-1)
    tgt = labels[:, 1:]
    mask = tgt != -100
    picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum() / mask.sum().clamp(min=1)


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed log-prob of the labelled tokens of each row. ``logits``: [b, T, V], ``labels``: [b, T] -> [b]."""
    logp = logits[:, :-1].float().log_softmax(-1)
    tgt = labels[:, 1:]
    mask = tgt != -100
    picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def masked_kl(base_logits: Tensor, edited_logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over real positions of KL(p_base ‖ p_edited). logits: [b, T, V]; ``mask``: [b, T] bool."""
    base_logp = base_logits.float().log_softmax(-1)
    edited_logp = edited_logits.float().log_softmax(-1)
    kl = (base_logp.exp() * (base_logp - edited_logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """NLL of each target under its logits: ``logits`` [k, V], ``targets`` [k] -> [k] (`masked_nll` per position)."""
    return -logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_kl(base_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """KL(p_base ‖ p_edited) at each position; both [k, V] -> [k] (`masked_kl` per position)."""
    base_logp = base_logits.float().log_softmax(-1)
    return (base_logp.exp() * (base_logp - edited_logits.float().log_softmax(-1))).sum(-1)


def group_mean(values: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """Mean of ``values`` [k] per group (``groups`` [k] in 0..n_groups-1) -> [n_groups]; 0 for an empty group."""
    sums = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, groups, values)
    counts = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, groups, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def row_logprob(logits: Tensor, targets: Tensor, rows: Tensor, n_rows: int) -> Tensor:
    """Summed log-prob of ``targets`` per batch row: `sequence_logprob` on gathered positions.

    ``logits``: [k, V], ``targets``, ``rows``: [k] (row of each position, 0..n_rows-1) -> [n_rows].
    """
    picked = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(n_rows, device=logits.device).index_add(0, rows, picked)


# ---- tokenisation ------------------------------------------------------------------------------


@dataclass
class LMBatch:
    """Right-padded token batch. ``labels`` keep only the continuation tokens (-100 elsewhere)."""

    input_ids: Tensor  # [b, T]
    attention_mask: Tensor  # [b, T]
    labels: Tensor  # [b, T]

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def lm_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], continuations: Sequence[str], max_length: int = 64
) -> LMBatch:
    """Tokenise ``prompt + " " + continuation`` rows, labelling the continuation tokens only.

    Right padding keeps positions 0..n-1 for the real tokens without needing position ids; the prompt
    is cut from the left when a row would exceed ``max_length``.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    rows, labels = [], []
    for prompt, cont in zip(prompts, continuations):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(" " + cont.strip(), add_special_tokens=False)["input_ids"] if cont.strip() else []
        p = p[-max(1, max_length - len(c)) :]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    ids, att = pad_batch(rows, pad_token_id(tokenizer))
    lab, _ = pad_batch(labels, -100)  # padded positions carry no loss
    return LMBatch(ids, att, lab)


def cat_batches(a: LMBatch, b: LMBatch, pad_id: int) -> LMBatch:
    """Stack two right-padded batches row-wise, padding the narrower one on the right."""
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def widen(x: Tensor, fill: int) -> Tensor:
        return F.pad(x, (0, width - x.shape[1]), value=fill)

    return LMBatch(
        torch.cat([widen(a.input_ids, pad_id), widen(b.input_ids, pad_id)]),
        torch.cat([widen(a.attention_mask, 0), widen(b.attention_mask, 0)]),
        torch.cat([widen(a.labels, -100), widen(b.labels, -100)]),
    )


# ---- capturing u and δ ---------------------------------------------------------------------------


def default_inner_params(model: nn.Module, inner_layers: Sequence[int] | None = None) -> list[str]:
    """MEND's inner params: every MLP matrix of ``inner_layers`` (default: the last 3 layers)."""
    spec = arch_spec(model)
    n = num_layers(model)
    layers = list(inner_layers) if inner_layers is not None else list(range(n - 3, n))
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"inner_layers {bad} out of range for a {n}-layer model")
    return [name for i in layers for name in spec.mlp_weight_names(i)]


@contextmanager
def capture_io(model: nn.Module, param_names: Sequence[str]) -> Iterator[dict[str, list[Tensor]]]:
    """Record (input, output) of the modules owning ``param_names`` during forward passes.

    Yields ``{param_name: [input, output]}``, filled by the next forward. Outputs are made to require
    grad (the base model is frozen) so ``torch.autograd.grad(loss, output)`` gives δ.
    """
    store: dict[str, list[Tensor]] = {}
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not output.requires_grad:
                output.requires_grad_(True)  # a leaf here: nothing upstream needs grad
            store[name] = [args[0].detach(), output]

        return hook

    try:
        for name in param_names:
            module = model.get_submodule(name.rsplit(".", 1)[0])
            handles.append(module.register_forward_hook(hook_for(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def low_rank_update(model: nn.Module, updates: Sequence[tuple[Tensor | None, dict[str, tuple[Tensor, Tensor]]]]) -> Iterator[None]:
    """Inside the block, inner params act as ``W + A Bᵀ`` without forming it, each update on its own batch rows.

    ``updates``: ``[(rows, {name: (A [out, k], B [in, k])}), ...]`` in the math orientation; ``rows`` (a LongTensor
    of batch rows, or None for all) get ``(x B) Aᵀ`` added to the owning module's output, for ``nn.Linear`` and
    GPT-2's ``Conv1D`` alike (both compute ``x Wᵀ`` in math terms). Autograd flows into ``A`` and ``B``.
    Several updates in one batch = several independent edits in one forward.
    """
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            x = args[0]
            for rows, factors in updates:
                if name not in factors:
                    continue
                a, b = (t.to(output.dtype) for t in factors[name])
                if rows is None:
                    output = output + (x @ b) @ a.T
                else:
                    output = output.index_add(0, rows, (x[rows] @ b) @ a.T)
            return output

        return hook

    try:
        for name in dict.fromkeys(n for _, factors in updates for n in factors):
            module = model.get_submodule(name.rsplit(".", 1)[0])
            handles.append(module.register_forward_hook(hook_for(name)))
        yield
    finally:
        for h in handles:
            h.remove()


def gradient_factors(
    model: nn.Module, param_names: Sequence[str], forward_loss: Callable[[], tuple[Tensor, Tensor]]
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]], Tensor]:
    """Run ``forward_loss() -> (loss, logits)`` (a forward through ``model``) and take each inner param's gradient factors.

    Returns ``(loss, {name: (u [n, d_in], δ [n, d_out])}, logits detached)`` with ``n`` the token rows that passed
    through the param's module (zero rows included; `nonzero_rows` drops them). ∇W of the loss equals
    ``outer_gradient(u, δ)``.
    """
    names = list(param_names)
    with torch.enable_grad(), capture_io(model, names) as io:
        loss, logits = forward_loss()
        missing = [n for n in names if n not in io]
        if missing:
            raise RuntimeError(f"no forward pass through the modules of {missing}")
        outputs = [io[n][1] for n in names]
        grads = torch.autograd.grad(loss, outputs, allow_unused=True)
    factors = {}
    for name, out, g in zip(names, outputs, grads):
        u = io[name][0].reshape(-1, io[name][0].shape[-1]).float()
        d = torch.zeros_like(out) if g is None else g
        factors[name] = (u, d.reshape(-1, d.shape[-1]).float().detach())
    return loss.detach(), factors, logits.detach()


def finetune_factors(
    model: nn.Module, batch: LMBatch, param_names: Sequence[str]
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]], Tensor]:
    """NLL of ``batch`` on ``model`` and, for each inner param, its gradient factors.

    Returns ``(loss, {name: (u [n, d_in], δ [n, d_out])}, logits [b, T, V] detached)`` with ``n`` = b·T
    token rows (zero rows included; `nonzero_rows` drops them). ∇W of the loss equals
    ``outer_gradient(u, δ)``. Rows without labels contribute nothing to the loss, so their logits come
    for free (the locality reference).
    """

    def forward_loss() -> tuple[Tensor, Tensor]:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return masked_nll(logits, batch.labels), logits

    return gradient_factors(model, param_names, forward_loss)


# ---- the hypernetwork ------------------------------------------------------------------------------


class RunningMeanStd(nn.Module):
    """Per-feature running mean / std (Chan et al.'s parallel Welford update), saved as buffers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold rows of ``x`` [n, dim] into the statistics."""
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        total = self.count + n
        diff = mean_b - self.mean
        self.mean += diff * (n / total).float()
        self.m2 += m2_b + diff**2 * (self.count * n / total).float()
        self.count.copy_(total)

    def std(self) -> Tensor:
        return (self.m2 / (self.count - 1).clamp(min=1).float()).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        """``(x − mean) / (std + 1e-7)``; ``x``: [n, dim]."""
        return (x - self.mean) / (self.std() + 1e-7)


MODULATIONS = ("pre", "input")  # where the per-matrix scale/shift act: reference MEND ("pre") / legacy ("input")
A_INITS = ("normal", "scaled")  # A ~ N(0, 1) (reference MEND) / N(0, 1/d) (legacy)


def low_rank_layer(x: Tensor, a: Tensor, b: Tensor, bias: Tensor, scale: Tensor, shift: Tensor, relu: bool = True, modulate: str = "pre") -> Tensor:
    """One residual low-rank layer of MEND's hypernetwork, as a plain function.

    ``x``: [n, d]; ``a``: [r, d]; ``b``: [d, r]; ``bias``, ``scale``, ``shift``: [d] -> [n, d].

    * ``modulate="pre"`` (reference MEND, ``nn.py`` ``LRLinear``): ``pre = s ⊙ (B A x + bias) + t``,
      output ``x + relu(pre)``.
    * ``modulate="input"`` (this repo's first form): ``x' = s ⊙ x + t``, output ``x' + act(B A x' + bias)``.

    ``relu=False`` skips the activation (the first form's last layer); the reference clamps every layer.
    The ReLU is ``clamp(min=0)`` as in the reference: its gradient at exactly 0 is 1, not 0. At init
    (``b = 0``, ``bias = shift = 0``) every pre-activation is exactly 0, so with a 0-gradient ReLU no
    gradient would ever reach ``b``.
    """
    if modulate == "pre":
        pre = ((x @ a.T) @ b.T + bias) * scale + shift
        return x + (pre.clamp(min=0) if relu else pre)
    if modulate == "input":
        x = x * scale + shift
        h = (x @ a.T) @ b.T + bias
        return x + (h.clamp(min=0) if relu else h)
    raise ValueError(f"modulate must be one of {MODULATIONS}, got {modulate!r}")


class LowRankLinear(nn.Module):
    """Residual low-rank layer with per-matrix ("mode") scale / shift; see `low_rank_layer`.

    A: [rank, d], B: [d, rank] with B = 0, so the layer is the identity at init. ``a_init="normal"`` draws
    A from N(0, 1) as the reference; ``"scaled"`` from N(0, 1/d) (the outer lr then does not scale with d).
    """

    def __init__(self, dim: int, rank: int, relu: bool, n_modes: int, modulate: str = "pre", a_init: str = "normal") -> None:
        super().__init__()
        if modulate not in MODULATIONS:
            raise ValueError(f"modulate must be one of {MODULATIONS}, got {modulate!r}")
        if a_init not in A_INITS:
            raise ValueError(f"a_init must be one of {A_INITS}, got {a_init!r}")
        mid = min(rank, dim)
        a = torch.randn(mid, dim)
        self.a = nn.Parameter(a if a_init == "normal" else a / dim**0.5)
        self.b = nn.Parameter(torch.zeros(dim, mid))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu
        self.modulate = modulate

    def forward(self, x: Tensor, mode: int | Tensor) -> Tensor:
        """``x``: [n, dim] -> [n, dim]; ``mode``: one mode for all rows, or a LongTensor [n] with each row's."""
        if isinstance(mode, Tensor):  # rows of several matrices at once: their scale / shift per row, [n, dim]
            return low_rank_layer(x, self.a, self.b, self.bias, self.mode_scale[mode], self.mode_shift[mode], self.relu, self.modulate)
        return low_rank_layer(x, self.a, self.b, self.bias, self.mode_scale[mode], self.mode_shift[mode], self.relu, self.modulate)


@dataclass(frozen=True)
class NetForm:
    """Form of the hypernetwork's MLP. The defaults are the reference MEND (eric-mitchell/mend ``nn.py``).

    ``modulate``: where the per-matrix scale/shift act ("pre": on the pre-activation, reference;
    "input": on the layer input). ``relu_last``: ReLU on the last layer too (reference: every layer).
    ``a_init``: "normal" N(0, 1) (reference) or "scaled" N(0, 1/d).
    """

    modulate: str = "pre"
    relu_last: bool = True
    a_init: str = "normal"

    @classmethod
    def legacy(cls) -> NetForm:
        """The form of checkpoint format 1 (this repo's first hypernetwork)."""
        return cls(modulate="input", relu_last=False, a_init="scaled")


class IDMLP(nn.Module):
    """``n_hidden + 1`` residual low-rank layers: the identity at init (ReLU per ``form``)."""

    def __init__(self, dim: int, rank: int, n_hidden: int = 1, n_modes: int = 1, form: NetForm = NetForm()) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            LowRankLinear(dim, rank, relu=form.relu_last or i < n_hidden, n_modes=n_modes, modulate=form.modulate, a_init=form.a_init)
            for i in range(n_hidden + 1)
        )

    def forward(self, x: Tensor, mode: int | Tensor = 0) -> Tensor:
        for layer in self.layers:
            x = layer(x, mode)
        return x


class GradientTransform(nn.Module):
    """Maps gradient factors (u [n, d_in], δ [n, d_out]) to transformed factors (ũ, δ̃).

    The running statistics update only in training mode; in eval mode they must already exist.
    """

    def __init__(self, d_in: int, d_out: int, rank: int, n_hidden: int = 1, n_modes: int = 1, form: NetForm = NetForm()) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.norm_u = RunningMeanStd(d_in)
        self.norm_delta = RunningMeanStd(d_out)
        self.mlp = IDMLP(d_in + d_out, rank, n_hidden, n_modes, form)
        # Edit-time option (not trained, not saved): clip normalised inputs to ±z_clip (None = as trained).
        self.z_clip: float | None = None

    def normalized(self, u: Tensor, delta: Tensor) -> Tensor:
        """``[norm_u(u); norm_delta(δ)]`` [n', d_in + d_out] of the non-zero rows, the statistics first updated
        with them in training mode."""
        u, delta = nonzero_rows(u.float(), delta.float())
        if self.training:
            self.norm_u.update(u)
            self.norm_delta.update(delta)
        if self.norm_u.count < 2:
            raise RuntimeError("GradientTransform has seen fewer than 2 gradient rows: train it before editing")
        z = torch.cat([self.norm_u(u), self.norm_delta(delta)], -1)
        return z if self.z_clip is None else z.clamp(-self.z_clip, self.z_clip)

    def forward(self, u: Tensor, delta: Tensor, mode: int = 0) -> tuple[Tensor, Tensor]:
        out = self.mlp(self.normalized(u, delta), mode)
        return out.split([self.d_in, self.d_out], -1)

    def forward_many(self, items: Sequence[tuple[Tensor, Tensor, int]]) -> list[tuple[Tensor, Tensor]]:
        """`forward` of several ``(u, δ, mode)`` in one pass of the MLP: the same numbers (statistics update and
        normalise matrix by matrix, in order, as the one-by-one calls), but one weight gradient per layer
        instead of one per matrix — the dominant cost of a CPU training step."""
        xs = [self.normalized(u, delta) for u, delta, _ in items]
        modes = torch.cat([torch.full((len(x),), m, dtype=torch.long, device=x.device) for x, (_, _, m) in zip(xs, items)])
        out = self.mlp(torch.cat(xs), modes)
        return [(o[:, : self.d_in], o[:, self.d_in :]) for o in out.split([len(x) for x in xs])]


def _key(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


class MENDHyperNet(nn.Module):
    """One `GradientTransform` per distinct inner-matrix shape, plus a learned lr per inner matrix.

    Args:
        shapes: inner param name -> its ``(out, in)`` shape, in a fixed order (the checkpoint's).
        rank, n_hidden: size of each `IDMLP`.
        edit_lr: initial value of every per-matrix edit learning rate.
        form: the MLP's form (`NetForm`; default: the reference MEND).
    """

    def __init__(
        self, shapes: dict[str, tuple[int, int]], rank: int = 1920, n_hidden: int = 1, edit_lr: float = 1e-4, form: NetForm = NetForm()
    ) -> None:
        super().__init__()
        self.names = list(shapes)
        self.shapes = {n: (int(s[0]), int(s[1])) for n, s in shapes.items()}
        groups: dict[str, list[str]] = {}
        for n, s in self.shapes.items():
            groups.setdefault(_key(s), []).append(n)
        self.mode = {n: members.index(n) for members in groups.values() for n in members}
        self.transforms = nn.ModuleDict(
            {k: GradientTransform(self.shapes[m[0]][1], self.shapes[m[0]][0], rank, n_hidden, len(m), form) for k, m in groups.items()}
        )
        self.edit_lrs = nn.Parameter(torch.full((len(self.names),), float(edit_lr)))
        self.form = form
        # one MLP pass per transform for all its matrices (False: one per matrix; the same numbers, slower)
        self.batch_modes = True

    def pseudo_gradient(self, name: str, u: Tensor, delta: Tensor) -> Tensor:
        """∇̃W for one inner matrix. ``u``: [n, d_in], ``delta``: [n, d_out] -> [d_out, d_in]."""
        u_t, d_t = self.transforms[_key(self.shapes[name])](u, delta, self.mode[name])
        return outer_gradient(u_t, d_t)

    def delta_factors(self, factors: dict[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
        """``{name: (u [n, d_in], δ [n, d_out])}`` -> ``{name: (A [out, k], B [in, k])}`` with ΔW = A Bᵀ = −lr_name · ∇̃W.

        ``k`` is the number of non-zero token rows: the thin factors of the update, for a restraint that
        never forms ΔW (`prune_lit.restraint.factored`).
        """
        return self.delta_factors_many([factors])[0]

    def delta_factors_many(self, edits: list[dict[str, tuple[Tensor, Tensor]]]) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """`delta_factors` of several independent edits, in order: the running statistics see edit 0's rows, then
        edit 1's, ..., as one call per edit would; with ``batch_modes`` one MLP pass per transform for all."""
        for factors in edits:
            unknown = set(factors) - set(self.names)
            if unknown:
                raise KeyError(f"factors for params the hypernetwork was not built for: {sorted(unknown)}")
        transformed: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}
        for key, transform in self.transforms.items():
            members = [(j, n) for j, factors in enumerate(edits) for n in self.names if n in factors and _key(self.shapes[n]) == key]
            if self.batch_modes:
                items = [(*edits[j][n], self.mode[n]) for j, n in members]
                transformed.update(zip(members, transform.forward_many(items)))
            else:
                transformed.update(((j, n), transform(*edits[j][n], self.mode[n])) for j, n in members)
        out: list[dict[str, tuple[Tensor, Tensor]]] = []
        for j, factors in enumerate(edits):
            thin = {}
            for i, n in enumerate(self.names):
                if n in factors:
                    u_t, d_t = transformed[(j, n)]
                    thin[n] = (-self.edit_lrs[i] * d_t.T, u_t.T)
            out.append(thin)
        return out

    def forward(self, factors: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """``{name: (u, δ)}`` -> ``{name: ΔW = −lr_name · ∇̃W}`` (each [out, in])."""
        return {n: a @ b.T for n, (a, b) in self.delta_factors(factors).items()}
