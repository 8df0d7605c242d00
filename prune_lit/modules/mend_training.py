"""Training MEND's hypernetwork with ``python cli.py fit --config configs/mend.yaml``.

One training step = one MEND edit of the batch's requests, evaluated functionally (no in-place change
to the frozen base model): the fine-tuning gradient factors of NLL(target_new | prompt) go through the
hypernetwork, the edited weights ``W − lr·∇̃W`` are swapped in with `torch.func.functional_call`, and
the outer loss ``c_edit · NLL_edited(target_new) + c_loc · KL(base ‖ edited)`` on the locality prompts
trains the hypernetwork and the per-matrix edit learning rates only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.func import functional_call

from prune_lit.data.requests import EditRequest
from prune_lit.editors.mend_net import (
    CHECKPOINT_FORMAT,
    LMBatch,
    MENDHyperNet,
    NetForm,
    cat_batches,
    default_inner_params,
    finetune_factors,
    lm_batch,
    masked_kl,
    masked_nll,
    sequence_logprob,
)
from prune_lit.models.arch import arch_spec, get_weight
from prune_lit.models.batching import pad_token_id
from prune_lit.models.loader import load_model

log = logging.getLogger(__name__)



@dataclass
class EditInputs:
    """All rows one MEND step needs, in one right-padded batch (one forward before, one after the edit).

    Rows: ``edit`` (prompt -> target_new), ``loc`` (locality prompt -> its answer), ``truth`` (prompt ->
    ground_truth, validation only). ``factor_batch`` labels only the edit rows: the fine-tuning loss.
    """

    batch: LMBatch  # labels on every row (for scoring)
    factor_batch: LMBatch  # labels on the edit rows only
    edit: slice
    loc: slice
    truth: slice


def edit_inputs(tokenizer, requests: list[EditRequest], max_length: int, with_truth: bool = False) -> EditInputs:
    prompts = [r.prompt for r in requests]
    rows = lm_batch(tokenizer, prompts, [r.target_new for r in requests], max_length)
    loc_prompts = [p for r in requests for p in r.locality_prompts]
    loc_answers = [a for r in requests for a in r.locality_answers]
    pad = pad_token_id(tokenizer)
    if loc_prompts:
        rows = cat_batches(rows, lm_batch(tokenizer, loc_prompts, loc_answers, max_length), pad)
    if with_truth:
        rows = cat_batches(rows, lm_batch(tokenizer, prompts, [r.ground_truth or r.target_new for r in requests], max_length), pad)
    ne, nl = len(requests), len(loc_prompts)
    factor_labels = rows.labels.clone()
    factor_labels[ne:] = -100
    return EditInputs(
        batch=rows,
        factor_batch=LMBatch(rows.input_ids, rows.attention_mask, factor_labels),
        edit=slice(0, ne),
        loc=slice(ne, ne + nl),
        truth=slice(ne + nl, ne + nl + (ne if with_truth else 0)),
    )


class MENDTraining(L.LightningModule):
    """Trains MEND's hypernetwork on a frozen base model.

    Args:
        model_name: preset of `prune_lit.models.load_model` (or a local HF directory) to train for.
        inner_layers: layers whose MLP matrices MEND edits (None = the last 3, as MEND).
        rank: rank of each low-rank layer of the hypernetwork's MLP (MEND: 1920).
        n_hidden: hidden layers of that MLP (MEND: 1, i.e. 2 residual low-rank layers).
        lr: Adam learning rate of the hypernetwork.
        lr_lr: Adam learning rate of the per-matrix edit learning rates.
        edit_lr: initial edit learning rate of every inner matrix (MEND: 1e-4).
        c_edit: weight of the post-edit NLL of target_new (MEND: 0.1).
        c_loc: weight of the locality KL (MEND: 1.0).
        max_length: token cap per prompt + continuation row.
        dtype: base model dtype.
        modulate, relu_last, a_init: the hypernetwork's form (`NetForm`); the defaults are the reference
            MEND ("pre", True, "normal"), the first form of this repo was ("input", False, "scaled").
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m",
        inner_layers: list[int] | None = None,
        rank: int = 1920,
        n_hidden: int = 1,
        lr: float = 1e-4,
        lr_lr: float = 1e-4,
        edit_lr: float = 1e-4,
        c_edit: float = 0.1,
        c_loc: float = 1.0,
        max_length: int = 64,
        dtype: str = "float32",
        modulate: str = "pre",
        relu_last: bool = True,
        a_init: str = "normal",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        loaded = load_model(model_name, dtype=dtype)
        self.model = loaded.model  # frozen; left out of checkpoints (see state_dict)
        self.tokenizer = loaded.tokenizer
        self.inner_params = default_inner_params(self.model, inner_layers)
        self.transposed = arch_spec(self.model).transposed
        shapes = {n: tuple(get_weight(self.model, n).shape) for n in self.inner_params}
        form = NetForm(modulate=modulate, relu_last=relu_last, a_init=a_init)
        self.hypernet = MENDHyperNet(shapes, rank=rank, n_hidden=n_hidden, edit_lr=edit_lr, form=form)

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
        return torch.optim.Adam(
            [{"params": hyper, "lr": self.hparams.lr}, {"params": [self.hypernet.edit_lrs], "lr": self.hparams.lr_lr}]
        )

    # ---- the edit --------------------------------------------------------------------------------
    def edit_step(self, requests: list[EditRequest], with_truth: bool = False) -> dict[str, Any]:
        """One functional MEND edit of ``requests`` and the logits before / after it on all rows."""
        inputs = edit_inputs(self.tokenizer, requests, self.hparams.max_length, with_truth)
        batch = inputs.batch.to(self.device)
        pre_loss, factors, base_logits = finetune_factors(self.model, inputs.factor_batch.to(self.device), self.inner_params)
        # outer graph only while training; validation needs autograd just for the factors above
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            deltas = self.hypernet(factors)
            params = dict(self.model.named_parameters())
            new = {n: params[n] + (d.T if self.transposed else d).to(params[n].dtype) for n, d in deltas.items()}
            kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            post_logits = functional_call(self.model, new, args=(), kwargs=kwargs).logits
        e, lo = inputs.edit, inputs.loc
        l_edit = masked_nll(post_logits[e], batch.labels[e])
        if lo.stop > lo.start:
            l_loc = masked_kl(base_logits[lo], post_logits[lo], batch.attention_mask[lo].bool())
        else:
            l_loc = torch.zeros((), device=self.device)
        loss = self.hparams.c_edit * l_edit + self.hparams.c_loc * l_loc
        return {
            "loss": loss, "edit_loss": l_edit, "loc_loss": l_loc, "edit_loss_pre": pre_loss,
            "inputs": inputs, "batch": batch, "base_logits": base_logits, "post_logits": post_logits, "deltas": deltas,
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
        out = self.edit_step(batch, with_truth=True)  # finetune_factors enables autograd itself
        inputs, rows, n = out["inputs"], out["batch"], len(batch)
        base, post = out["base_logits"], out["post_logits"].detach()
        e, t, lo = inputs.edit, inputs.truth, inputs.loc
        scored = torch.tensor([bool(r.ground_truth) for r in batch], device=self.device)
        if scored.any():
            # P(target_new) > P(ground_truth), after and before the edit
            for tag, logits in (("edit_success", post), ("edit_success_pre", base)):
                new_lp = sequence_logprob(logits[e], rows.labels[e])
                true_lp = sequence_logprob(logits[t], rows.labels[t])
                self.log(f"val/{tag}", (new_lp > true_lp)[scored].float().mean(), prog_bar=tag == "edit_success", batch_size=int(scored.sum()))
        if lo.stop > lo.start:
            # share of locality answer tokens whose top-1 prediction the edit leaves unchanged
            mask = rows.labels[lo, 1:] != -100
            same = base[lo, :-1].argmax(-1) == post[lo, :-1].argmax(-1)
            self.log("val/locality", (same & mask).sum() / mask.sum().clamp(min=1), prog_bar=True, batch_size=n)
        self.log("val/loss", out["loss"].detach(), batch_size=n)
        self.log("val/edit_loss", out["edit_loss"].detach(), batch_size=n)
        self.log("val/loc_loss", out["loc_loss"].detach(), batch_size=n)
