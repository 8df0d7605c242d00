"""Training MEND's hypernetwork with ``python cli.py fit --config configs/mend.yaml``.

One training step = one MEND edit of the batch's requests, evaluated functionally (no in-place change
to the frozen base model): the fine-tuning gradient factors of NLL(target_new | prompt) go through the
hypernetwork, the edited weights ``W − lr·∇̃W`` are swapped in with `torch.func.functional_call`, and
the outer loss ``c_edit · NLL_edited(target_new) + c_loc · KL(base ‖ edited)`` on the locality prompts
trains the hypernetwork and the per-matrix edit learning rates only.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.func import functional_call

from prune_lit.data.requests import EditRequest
from prune_lit.editors.mend_net import (
    LMBatch,
    MENDHyperNet,
    default_inner_params,
    finetune_factors,
    lm_batch,
    masked_kl,
    masked_nll,
    sequence_logprob,
)
from prune_lit.models.arch import arch_spec, get_weight
from prune_lit.models.loader import load_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1  # bump when the hypernetwork layout changes; the editor refuses other versions


def edit_batch(tokenizer, requests: list[EditRequest], max_length: int) -> LMBatch:
    """prompt -> " " + target_new, for the fine-tuning loss and the post-edit loss."""
    return lm_batch(tokenizer, [r.prompt for r in requests], [r.target_new for r in requests], max_length)


def locality_batch(tokenizer, requests: list[EditRequest], max_length: int) -> LMBatch | None:
    """Every locality prompt (with its answer) of the batch; None when the batch has none."""
    prompts = [p for r in requests for p in r.locality_prompts]
    answers = [a for r in requests for a in r.locality_answers]
    return lm_batch(tokenizer, prompts, answers, max_length) if prompts else None


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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        loaded = load_model(model_name, dtype=dtype)
        self.model = loaded.model  # frozen; left out of checkpoints (see state_dict)
        self.tokenizer = loaded.tokenizer
        self.inner_params = default_inner_params(self.model, inner_layers)
        self.transposed = arch_spec(self.model).transposed
        shapes = {n: tuple(get_weight(self.model, n).shape) for n in self.inner_params}
        self.hypernet = MENDHyperNet(shapes, rank=rank, n_hidden=n_hidden, edit_lr=edit_lr)

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
        }

    def train(self, mode: bool = True) -> MENDTraining:
        super().train(mode)
        self.model.eval()  # the base model never trains: no dropout in its forward passes
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hyper = [p for n, p in self.hypernet.named_parameters() if n != "edit_lrs"]
        return torch.optim.Adam(
            [{"params": hyper, "lr": self.hparams.lr}, {"params": [self.hypernet.edit_lrs], "lr": self.hparams.lr_lr}]
        )

    # ---- the edit --------------------------------------------------------------------------------
    def edited_params(self, requests: list[EditRequest]) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """MEND edit of ``requests`` as replacement parameters for `functional_call`.

        Returns ``(params in storage orientation, ΔW [out, in] per inner param, pre-edit NLL)``.
        """
        batch = edit_batch(self.tokenizer, requests, self.hparams.max_length).to(self.device)
        pre_loss, factors = finetune_factors(self.model, batch, self.inner_params)
        deltas = self.hypernet(factors)
        params = dict(self.model.named_parameters())
        new = {n: params[n] + (d.T if self.transposed else d).to(params[n].dtype) for n, d in deltas.items()}
        return new, deltas, pre_loss

    def _forward(self, batch: LMBatch, params: dict[str, Tensor] | None = None) -> Tensor:
        kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if params is None:
            return self.model(**kwargs).logits
        return functional_call(self.model, params, args=(), kwargs=kwargs).logits

    def _losses(self, requests: list[EditRequest]) -> dict[str, Tensor]:
        max_len = self.hparams.max_length
        params, deltas, pre = self.edited_params(requests)
        batch = edit_batch(self.tokenizer, requests, max_len).to(self.device)
        l_edit = masked_nll(self._forward(batch, params), batch.labels)
        loc = locality_batch(self.tokenizer, requests, max_len)
        if loc is not None:
            loc = loc.to(self.device)
            with torch.no_grad():
                base_logits = self._forward(loc)
            l_loc = masked_kl(base_logits, self._forward(loc, params), loc.attention_mask.bool())
        else:
            l_loc = torch.zeros((), device=self.device)
        loss = self.hparams.c_edit * l_edit + self.hparams.c_loc * l_loc
        return {"loss": loss, "edit_loss": l_edit, "loc_loss": l_loc, "edit_loss_pre": pre, "params": params, "deltas": deltas}

    def training_step(self, batch: list[EditRequest], batch_idx: int) -> Tensor:
        out = self._losses(batch)
        n = len(batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        self.log("train/edit_loss", out["edit_loss"], prog_bar=True, batch_size=n)
        self.log("train/edit_loss_pre", out["edit_loss_pre"], batch_size=n)
        self.log("train/loc_loss", out["loc_loss"], batch_size=n)
        self.log("train/edit_lr_mean", self.hypernet.edit_lrs.detach().mean(), batch_size=n)
        return out["loss"]

    def validation_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        with torch.enable_grad():  # the fine-tuning gradient needs autograd inside validation
            out = self._losses(batch)
        params = {k: v.detach() for k, v in out["params"].items()}
        n = len(batch)
        with torch.no_grad():
            success, success_pre = self._edit_success(batch, params)
            locality = self._locality(batch, params)
        self.log("val/loss", out["loss"].detach(), batch_size=n)
        self.log("val/edit_loss", out["edit_loss"].detach(), batch_size=n)
        self.log("val/loc_loss", out["loc_loss"].detach(), batch_size=n)
        self.log("val/edit_success", success, prog_bar=True, batch_size=n)
        self.log("val/edit_success_pre", success_pre, batch_size=n)
        if locality is not None:
            self.log("val/locality", locality, prog_bar=True, batch_size=n)

    def _edit_success(self, requests: list[EditRequest], params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Share of requests with log P(target_new) > log P(ground_truth), after and before the edit."""
        scored = [r for r in requests if r.ground_truth]
        if not scored:
            z = torch.zeros((), device=self.device)
            return z, z
        prompts = [r.prompt for r in scored] * 2
        conts = [r.target_new for r in scored] + [r.ground_truth for r in scored]
        b = lm_batch(self.tokenizer, prompts, conts, self.hparams.max_length).to(self.device)
        post = sequence_logprob(self._forward(b, params), b.labels).view(2, -1)
        pre = sequence_logprob(self._forward(b), b.labels).view(2, -1)
        return (post[0] > post[1]).float().mean(), (pre[0] > pre[1]).float().mean()

    def _locality(self, requests: list[EditRequest], params: dict[str, Tensor]) -> Tensor | None:
        """Share of locality answer tokens whose top-1 prediction the edit leaves unchanged."""
        loc = locality_batch(self.tokenizer, requests, self.hparams.max_length)
        if loc is None:
            return None
        loc = loc.to(self.device)
        mask = loc.labels[:, 1:] != -100
        before = self._forward(loc)[:, :-1].argmax(-1)
        after = self._forward(loc, params)[:, :-1].argmax(-1)
        return ((before == after) & mask).sum() / mask.sum().clamp(min=1)
