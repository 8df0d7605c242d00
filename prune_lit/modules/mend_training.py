"""Training MEND's hypernetwork with ``python cli.py fit --config configs/mend.yaml``.

One training step = one MEND edit of the batch's requests, evaluated functionally (no in-place change
to the frozen base model): the fine-tuning gradient factors of NLL(target_new | prompt) go through the
hypernetwork, the edited weights ``W − lr·∇̃W`` are swapped in with `torch.func.functional_call`, and
the outer loss ``c_edit · NLL_edited(target_new) + c_loc · KL(base ‖ edited)`` on the locality prompts
trains the hypernetwork and the per-matrix edit learning rates only.

With ``cache_hidden`` (default) the blocks below the first edited one never run during training: their
output for every training and validation row is computed once (`LowerHiddenCache`, on disk) and each
forward starts there. Logits are only computed where a loss or metric reads them (`ReadPositions`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from prune_lit.contracts import TrainValRequestSource
from prune_lit.data.requests import EditRequest
from prune_lit.editors.mend_net import (
    CHECKPOINT_FORMAT,
    LMBatch,
    MENDHyperNet,
    NetForm,
    cat_batches,
    default_inner_params,
    gradient_factors,
    group_mean,
    lm_batch,
    low_rank_update,
    row_logprob,
    token_kl,
    token_nll,
)
from prune_lit.models.arch import arch_spec, get_weight
from prune_lit.models.batching import pad_token_id
from prune_lit.models.layer_skip import layer_of, skip_layers_below
from prune_lit.models.loader import cache_dir, load_model
from prune_lit.modules.mend_hidden_cache import LowerHiddenCache, batch_rows, cache_meta, cache_path

log = logging.getLogger(__name__)

EDIT_LRS_LR = ("lr", "lr_lr")  # which Adam lr the learned edit lrs train at: reference trainer / own group


@dataclass
class EditInputs:
    """All rows the MEND edits of one batch need, in one right-padded batch (one forward before, one after).

    Rows: ``edit`` (prompt -> target_new), ``loc`` (locality prompt -> its answer), ``truth`` (prompt ->
    ground_truth, validation only). The batch's requests form ``n_edits`` independent edits of
    ``requests_per_edit`` requests each; ``edit_of_row`` [b] says which edit each row belongs to.
    """

    batch: LMBatch  # labels on every row (for scoring)
    edit: slice
    loc: slice
    truth: slice
    edit_of_row: Tensor  # [b]
    n_edits: int


def edit_inputs(
    tokenizer, requests: list[EditRequest], max_length: int, with_truth: bool = False, requests_per_edit: int | None = None
) -> EditInputs:
    """The rows of ``requests``; ``requests_per_edit`` None = all of them in one edit."""
    per = requests_per_edit or len(requests)
    prompts = [r.prompt for r in requests]
    rows = lm_batch(tokenizer, prompts, [r.target_new for r in requests], max_length)
    loc_prompts = [p for r in requests for p in r.locality_prompts]
    loc_answers = [a for r in requests for a in r.locality_answers]
    owner = list(range(len(requests)))  # request of each row
    owner += [i for i, r in enumerate(requests) for _ in r.locality_prompts]
    pad = pad_token_id(tokenizer)
    if loc_prompts:
        rows = cat_batches(rows, lm_batch(tokenizer, loc_prompts, loc_answers, max_length), pad)
    if with_truth:
        rows = cat_batches(rows, lm_batch(tokenizer, prompts, [r.ground_truth or r.target_new for r in requests], max_length), pad)
        owner += list(range(len(requests)))
    ne, nl = len(requests), len(loc_prompts)
    return EditInputs(
        batch=rows,
        edit=slice(0, ne),
        loc=slice(ne, ne + nl),
        truth=slice(ne + nl, ne + nl + (ne if with_truth else 0)),
        edit_of_row=torch.tensor(owner, dtype=torch.long) // per,
        n_edits=-(-len(requests) // per),
    )


@dataclass
class ReadPositions:
    """The positions of a batch whose logits a MEND step reads, flattened to ``k`` entries.

    ``edit`` / ``truth``: the positions that predict a labelled token of those rows (the NLL and edit success);
    ``loc``: every real position of the locality rows (the KL), ``targets`` set where they predict the answer.
    Logits at position ``cols`` predict the token at ``cols + 1``.
    """

    rows: Tensor  # [k] batch row
    cols: Tensor  # [k] position
    targets: Tensor  # [k] the token at cols + 1 when it is labelled, else -100
    edit_id: Tensor  # [k] the edit the row belongs to
    edit: slice  # parts of the k entries
    loc: slice
    truth: slice

    @classmethod
    def of(cls, inputs: EditInputs) -> ReadPositions:
        labels, mask = inputs.batch.labels, inputs.batch.attention_mask.bool()
        next_label = F.pad(labels[:, 1:], (0, 1), value=-100)  # [b, T]: the token each position predicts
        parts = {"edit": next_label != -100, "loc": mask, "truth": next_label != -100}
        rows, cols, bounds, k = [], [], {}, 0
        for name, where in parts.items():
            part = getattr(inputs, name)
            r, c = where[part].nonzero(as_tuple=True)
            rows.append(r + part.start)
            cols.append(c)
            bounds[name] = slice(k, k + len(r))
            k += len(r)
        rows_t, cols_t = torch.cat(rows), torch.cat(cols)
        return cls(rows_t, cols_t, next_label[rows_t, cols_t], inputs.edit_of_row[rows_t], **bounds)

    def to(self, device: torch.device | str) -> ReadPositions:
        moved = (t.to(device) for t in (self.rows, self.cols, self.targets, self.edit_id))
        return ReadPositions(*moved, self.edit, self.loc, self.truth)


class MENDTraining(L.LightningModule):
    """Trains MEND's hypernetwork on a frozen base model.

    Args:
        model_name: preset of `prune_lit.models.load_model` (or a local HF directory) to train for.
        inner_layers: layers whose MLP matrices MEND edits (None = the last 3, as MEND).
        rank: rank of each low-rank layer of the hypernetwork's MLP (MEND: 1920).
        n_hidden: hidden layers of that MLP (MEND: 1, i.e. 2 residual low-rank layers).
        lr: Adam learning rate of the hypernetwork.
        lr_lr: Adam learning rate of the per-matrix edit learning rates when ``edit_lrs_lr="lr_lr"``.
        edit_lrs_lr: ``"lr"`` (reference trainer): the edit learning rates sit in the outer Adam and learn at
            ``lr``; the reference also builds an Adam at ``lr_lr`` for them, but it steps right after
            ``opt.zero_grad()`` has cleared their gradients, so it never moves them. ``"lr_lr"``: their own
            Adam group at ``lr_lr`` (the reading of the reference config, this project's first runs).
        edit_lr: initial edit learning rate of every inner matrix (MEND: 1e-4).
        c_edit: weight of the post-edit NLL of target_new (MEND: 0.1).
        c_loc: weight of the locality KL (MEND: 1.0).
        max_length: token cap per prompt + continuation row.
        dtype: base model dtype.
        modulate, relu_last, a_init: the hypernetwork's form (`NetForm`); the defaults are the reference
            MEND ("pre", True, "normal"), the first form of this repo was ("input", False, "scaled").
        cache_hidden: run the blocks below the first edited one once per row (cached on disk) instead of at
            every step; the same numbers within float round-off.
        hidden_cache_dir: folder of those caches (None: ``cache_dir()/mend_hidden``).
        requests_per_edit: requests edited together in one MEND edit (MEND's ``edit_bs``: 1); a training batch of
            ``train_batch_size`` requests is that many independent edits, their losses averaged — the same
            optimizer step as accumulating them one batch each, with one forward for all of them (None: the
            whole batch is one edit).
        sequential_edits: training only (not in the reference; docs/mend.md "Sequential MEND"): the edits of a
            training batch are applied one after another instead of each to the unedited model — edit j's
            gradient is taken on the model carrying edits 0..j−1 (their updates detached), and its edit and
            locality losses on the model carrying 0..j, the locality KL still against the unedited model, so the
            loss sees the accumulated update. Validation stays single edits of the unedited model.
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m",
        inner_layers: list[int] | None = None,
        rank: int = 1920,
        n_hidden: int = 1,
        lr: float = 1e-4,
        lr_lr: float = 1e-4,
        edit_lrs_lr: str = "lr",
        edit_lr: float = 1e-4,
        c_edit: float = 0.1,
        c_loc: float = 1.0,
        max_length: int = 64,
        dtype: str = "float32",
        modulate: str = "pre",
        relu_last: bool = True,
        a_init: str = "normal",
        cache_hidden: bool = True,
        hidden_cache_dir: str | None = None,
        requests_per_edit: int | None = 1,
        sequential_edits: bool = False,
    ) -> None:
        super().__init__()
        if requests_per_edit is not None and requests_per_edit < 1:
            raise ValueError(f"requests_per_edit must be >= 1 or None, got {requests_per_edit}")
        if edit_lrs_lr not in EDIT_LRS_LR:
            raise ValueError(f"edit_lrs_lr must be one of {EDIT_LRS_LR}, got {edit_lrs_lr!r}")
        self.save_hyperparameters()
        loaded = load_model(model_name, dtype=dtype)
        self.model = loaded.model  # frozen; left out of checkpoints (see state_dict)
        self.tokenizer = loaded.tokenizer
        self.inner_params = default_inner_params(self.model, inner_layers)
        self.transposed = arch_spec(self.model).transposed
        shapes = {n: tuple(get_weight(self.model, n).shape) for n in self.inner_params}
        form = NetForm(modulate=modulate, relu_last=relu_last, a_init=a_init)
        self.hypernet = MENDHyperNet(shapes, rank=rank, n_hidden=n_hidden, edit_lr=edit_lr, form=form)
        self.first_layer = min(layer_of(self.model, n) for n in self.inner_params)
        # built in `setup` (filled from disk for the datamodule's rows) or on first use
        self.hidden_cache: LowerHiddenCache | None = None

    # ---- checkpoints hold the hypernetwork only ------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        full = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        return {k: v for k, v in full.items() if not k.startswith(prefix + "model.")}

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("model.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"MEND checkpoint mismatch: missing {missing}, unexpected {result.unexpected_keys}")
        return result

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mend_meta"] = {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.hparams.model_name,
            "inner_params": list(self.inner_params),
            "shapes": {n: list(s) for n, s in self.hypernet.shapes.items()},
            "rank": self.hparams.rank,
            "n_hidden": self.hparams.n_hidden,
            "max_length": self.hparams.max_length,
            "form": {"modulate": self.hypernet.form.modulate, "relu_last": self.hypernet.form.relu_last, "a_init": self.hypernet.form.a_init},
        }

    def train(self, mode: bool = True) -> MENDTraining:
        super().train(mode)
        self.model.eval()  # the base model never trains: no dropout in its forward passes
        return self

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # list[EditRequest]: text, tokenised (and moved) inside the step

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hyper = [p for n, p in self.hypernet.named_parameters() if n != "edit_lrs"]
        if self.hparams.edit_lrs_lr == "lr":  # the reference trainer: one Adam over hypernetwork and edit lrs
            groups = [{"params": [*hyper, self.hypernet.edit_lrs], "lr": self.hparams.lr}]
        else:
            groups = [{"params": hyper, "lr": self.hparams.lr}, {"params": [self.hypernet.edit_lrs], "lr": self.hparams.lr_lr}]
        # fused: Adam's update in one kernel per tensor (the same update; the per-op loop is memory-bound on a CPU)
        return torch.optim.Adam(groups, fused=True)

    # ---- the hidden-state cache -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Before fit: load (or compute once and store) the cached states of every train and val row; before
        validate, of the val rows alone (scoring a checkpoint on other val cases costs only those)."""
        if not self.hparams.cache_hidden or stage not in ("fit", "validate"):
            return
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if not isinstance(datamodule, TrainValRequestSource):
            return  # plain dataloaders: rows are computed on first use
        train, val = datamodule.train_val_requests()
        rows = self.token_rows(val, with_truth=True)
        if stage == "fit":
            rows = self.token_rows(train, with_truth=False) + rows
        self.prefill_hidden_cache(rows, tag=str(datamodule.dataset))

    def token_rows(self, requests: list[EditRequest], with_truth: bool) -> list[tuple[int, ...]]:
        """Every token row the MEND steps of ``requests`` (one by one) run through the model."""
        out: list[tuple[int, ...]] = []
        for r in requests:
            inputs = edit_inputs(self.tokenizer, [r], self.hparams.max_length, with_truth)  # padding does not matter
            out += batch_rows(inputs.batch.input_ids, inputs.batch.attention_mask)
        return out

    def _new_hidden_cache(self) -> LowerHiddenCache:
        return LowerHiddenCache(self.model, self.first_layer, pad_token_id(self.tokenizer))

    def prefill_hidden_cache(self, rows: list[tuple[int, ...]], tag: str = "data") -> None:
        """Read the cache file for exactly these rows, or compute them (progress bar) and write it."""
        hp = self.hparams
        meta = cache_meta(self.model, hp.model_name, self.first_layer, hp.max_length, hp.dtype, rows)
        root = cache_dir() / "mend_hidden" if hp.hidden_cache_dir is None else hp.hidden_cache_dir
        path = cache_path(Path(root), meta, tag)
        cache = self.hidden_cache or self._new_hidden_cache()
        if cache.load(path, meta):
            log.info("MEND hidden states of %d rows read from %s", len(set(rows)), path)
        else:
            fresh = self._new_hidden_cache()
            fresh.fill(rows, progress=True)
            fresh.save(path, meta)
            cache.states.update(fresh.states)
            log.info("MEND hidden states of %d rows computed and written to %s", len(fresh), path)
        self.hidden_cache = cache

    # ---- forwards -------------------------------------------------------------------------------
    def _logits(self, ids: Tensor, mask: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Logits ``[k, V]`` at (rows, cols) of the batch. Cached: the trunk from the first edited block on the cached
        states and the head only where read (the head is the largest matrix of a small model: most of a step's
        memory traffic). Uncached: the whole model on every position."""
        if self.hidden_cache is None:
            return self.model(input_ids=ids, attention_mask=mask).logits[rows, cols]
        with skip_layers_below(self.model, self.first_layer, self.hidden_cache.batch(ids, mask)):
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return self.model.get_output_embeddings()(hidden[rows, cols])

    def _base_pass(self, inputs: EditInputs, batch: LMBatch, read: ReadPositions) -> tuple[Tensor, list[dict[str, tuple[Tensor, Tensor]]], Tensor]:
        """``(mean fine-tuning NLL, gradient factors of each edit, unedited logits at every read position)``.

        One forward for all rows of all edits; each edit's NLL is a mean over its own target tokens, so the
        gradient at its rows is that of its own loss (rows never interact).
        """
        e = read.edit

        def forward_loss() -> tuple[Tensor, Tensor]:
            logits = self._logits(batch.input_ids, batch.attention_mask, read.rows, read.cols)
            return group_mean(token_nll(logits[e], read.targets[e]), read.edit_id[e], inputs.n_edits).sum(), logits

        loss, flat, logits = gradient_factors(self.model, self.inner_params, forward_loss)
        b, width = batch.input_ids.shape
        edit_of_row = inputs.edit_of_row.to(self.device)
        factors = []
        for j in range(inputs.n_edits):
            rows = (edit_of_row == j).nonzero().squeeze(1)
            factors.append({n: tuple(t.view(b, width, -1)[rows].reshape(-1, t.shape[-1]) for t in f) for n, f in flat.items()})
        return loss / inputs.n_edits, factors, logits

    def _edited_logits(self, inputs: EditInputs, batch: LMBatch, read: ReadPositions, factors: list[dict[str, tuple[Tensor, Tensor]]]) -> Tensor:
        """Logits at the read positions, each edit's rows with its own MEND update applied."""
        thin = self.hypernet.delta_factors_many(factors)  # ΔW = A Bᵀ per edit and inner param
        edit_of_row = inputs.edit_of_row.to(self.device)
        if self.hidden_cache is not None:  # one forward for all edits, the updates as low-rank hooks
            updates = [((edit_of_row == j).nonzero().squeeze(1) if inputs.n_edits > 1 else None, t) for j, t in enumerate(thin)]
            with low_rank_update(self.model, updates):
                return self._logits(batch.input_ids, batch.attention_mask, read.rows, read.cols)
        params = dict(self.model.named_parameters())

        def edited(name: str, a: Tensor, b: Tensor) -> Tensor:
            delta = a @ b.T
            return params[name] + (delta.T if self.transposed else delta).to(params[name].dtype)

        parts, where = [], []
        for j, t in enumerate(thin):  # the edited weights formed and swapped in, one forward per edit
            rows = (edit_of_row == j).nonzero().squeeze(1)
            new = {n: edited(n, a, b) for n, (a, b) in t.items()}
            kwargs = {"input_ids": batch.input_ids[rows], "attention_mask": batch.attention_mask[rows]}
            logits = functional_call(self.model, new, args=(), kwargs=kwargs).logits
            sub = torch.full((len(batch.input_ids),), -1, dtype=torch.long, device=self.device)
            sub[rows] = torch.arange(len(rows), device=self.device)
            mine = (read.edit_id == j).nonzero().squeeze(1)
            parts.append(logits[sub[read.rows[mine]], read.cols[mine]])
            where.append(mine)
        return torch.cat(parts)[torch.cat(where).argsort()]

    def _sequential_step(self, inputs: EditInputs, batch: LMBatch, read: ReadPositions) -> dict[str, Any]:
        """`edit_step`'s losses with the batch's edits applied in turn (``sequential_edits``)."""
        with torch.no_grad():  # the unedited model's logits: the locality reference of every edit
            base = self._logits(batch.input_ids, batch.attention_mask, read.rows, read.cols)
        edit_of_row = inputs.edit_of_row.to(self.device)
        applied: list[tuple[None, dict[str, tuple[Tensor, Tensor]]]] = []  # earlier edits' updates, detached
        pre, l_edit, l_loc = [], [], []
        for j in range(inputs.n_edits):
            rows = (edit_of_row == j).nonzero().squeeze(1)
            local = torch.full((len(batch.input_ids),), -1, dtype=torch.long, device=self.device)
            local[rows] = torch.arange(len(rows), device=self.device)
            mine = (read.edit_id == j).nonzero().squeeze(1)
            sub_rows, sub_cols = local[read.rows[mine]], read.cols[mine]
            is_edit = (mine >= read.edit.start) & (mine < read.edit.stop)
            is_loc = (mine >= read.loc.start) & (mine < read.loc.stop)
            ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
            targets = read.targets[mine]

            def forward_loss() -> tuple[Tensor, Tensor]:
                logits = self._logits(ids, mask, sub_rows, sub_cols)
                return token_nll(logits[is_edit], targets[is_edit]).mean(), logits

            with low_rank_update(self.model, applied):
                loss_j, factors, _ = gradient_factors(self.model, self.inner_params, forward_loss)
                thin = self.hypernet.delta_factors(factors)
                with low_rank_update(self.model, [(None, thin)]):
                    post = self._logits(ids, mask, sub_rows, sub_cols)
            pre.append(loss_j)
            l_edit.append(token_nll(post[is_edit], targets[is_edit]).mean())
            l_loc.append(token_kl(base[mine][is_loc], post[is_loc]).mean())
            applied.append((None, {n: (a.detach(), b.detach()) for n, (a, b) in thin.items()}))
        l_edit_t, l_loc_t = torch.stack(l_edit), torch.stack(l_loc)
        loss = (self.hparams.c_edit * l_edit_t + self.hparams.c_loc * l_loc_t).mean()
        return {"loss": loss, "edit_loss": l_edit_t.mean(), "loc_loss": l_loc_t.mean(), "edit_loss_pre": torch.stack(pre).mean(),
                "inputs": inputs, "read": read, "base_logits": base, "post_logits": None}  # fmt: skip

    # ---- the edit --------------------------------------------------------------------------------
    def edit_step(self, requests: list[EditRequest], with_truth: bool = False) -> dict[str, Any]:
        """The MEND edits of ``requests`` (``requests_per_edit`` each, independent), evaluated functionally, and
        the logits before / after at the read positions. Losses are means over the edits."""
        if self.hparams.cache_hidden and self.hidden_cache is None:
            self.hidden_cache = self._new_hidden_cache()  # no prefill (no datamodule): rows computed on first use
        inputs = edit_inputs(self.tokenizer, requests, self.hparams.max_length, with_truth, self.hparams.requests_per_edit)
        batch = inputs.batch.to(self.device)
        read = ReadPositions.of(inputs).to(self.device)
        if self.hparams.sequential_edits and self.training:
            return self._sequential_step(inputs, batch, read)
        pre_loss, factors, base = self._base_pass(inputs, batch, read)
        # outer graph only while training; validation needs autograd just for the factors above
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            post = self._edited_logits(inputs, batch, read, factors)
        e, lo = read.edit, read.loc
        l_edit = group_mean(token_nll(post[e], read.targets[e]), read.edit_id[e], inputs.n_edits)
        l_loc = group_mean(token_kl(base[lo], post[lo]), read.edit_id[lo], inputs.n_edits)
        loss = (self.hparams.c_edit * l_edit + self.hparams.c_loc * l_loc).mean()
        return {
            "loss": loss, "edit_loss": l_edit.mean(), "loc_loss": l_loc.mean(), "edit_loss_pre": pre_loss,
            "inputs": inputs, "read": read, "base_logits": base, "post_logits": post,
        }  # fmt: skip

    def training_step(self, batch: list[EditRequest], batch_idx: int) -> Tensor:
        out = self.edit_step(batch)
        n = len(batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        self.log("train/edit_loss", out["edit_loss"], prog_bar=True, batch_size=n)
        self.log("train/edit_loss_pre", out["edit_loss_pre"], batch_size=n)
        self.log("train/loc_loss", out["loc_loss"], batch_size=n)
        self.log("train/edit_lr_mean", self.hypernet.edit_lrs.detach().mean(), batch_size=n)
        return out["loss"]

    def validation_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        out = self.edit_step(batch, with_truth=True)  # the factors enable autograd themselves
        read, n = out["read"], len(batch)
        base, post = out["base_logits"], out["post_logits"].detach()
        e, t, lo = read.edit, read.truth, read.loc
        scored = torch.tensor([bool(r.ground_truth) for r in batch], device=self.device)
        if scored.any():
            # P(target_new) > P(ground_truth), after and before the edit (truth rows follow the edit and loc rows)
            truth_start = out["inputs"].truth.start
            for tag, logits in (("edit_success", post), ("edit_success_pre", base)):
                new_lp = row_logprob(logits[e], read.targets[e], read.rows[e], n)
                true_lp = row_logprob(logits[t], read.targets[t], read.rows[t] - truth_start, n)
                self.log(f"val/{tag}", (new_lp > true_lp)[scored].float().mean(), prog_bar=tag == "edit_success", batch_size=int(scored.sum()))
        answer = read.targets[lo] != -100
        if answer.any():
            # share of locality answer tokens whose top-1 prediction the edit leaves unchanged
            same = base[lo].argmax(-1) == post[lo].argmax(-1)
            self.log("val/locality", same[answer].float().mean(), prog_bar=True, batch_size=n)
        self.log("val/loss", out["loss"].detach(), batch_size=n)
        self.log("val/edit_loss", out["edit_loss"].detach(), batch_size=n)
        self.log("val/loc_loss", out["loc_loss"].detach(), batch_size=n)
