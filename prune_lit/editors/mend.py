"""MEND as an `Editor`: a trained hypernetwork turns the fine-tuning gradient into the update.

Train the hypernetwork first: ``python cli.py fit --config configs/mend.yaml`` (writes
``checkpoints/mend/best.ckpt`` and ``last.ckpt``). Each `edit` then computes the fine-tuning gradient
factors of NLL(target_new | prompt) on the *current* (already edited) model, maps them through the
hypernetwork and adds ``ΔW = −lr·∇̃W`` to the inner MLP matrices with `apply_deltas`.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_lit.data.requests import EditRequest
from prune_lit.contracts import ProposedUpdate
from prune_lit.editors.base import Editor, EditStats
from prune_lit.editors.mend_net import CHECKPOINT_FORMAT, MENDHyperNet, NetForm, finetune_factors, lm_batch
from prune_lit.models.arch import get_weight
from prune_lit.models.batching import model_device

log = logging.getLogger(__name__)

TRAIN_HINT = "train one with: python cli.py fit --config configs/mend.yaml"


class MENDCheckpointError(ValueError):
    """The MEND checkpoint is missing, malformed, or was trained for another model / other inner params."""


def load_mend_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(meta, hypernet state)`` from a checkpoint written by `MENDTraining`, loaded with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise MENDCheckpointError(f"MEND checkpoint {str(path)!r} not found; {TRAIN_HINT}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt.get("mend_meta") if isinstance(ckpt, dict) else None
    if not meta or "state_dict" not in ckpt:
        raise MENDCheckpointError(f"{path} is not a MEND checkpoint (no 'mend_meta'/'state_dict'); {TRAIN_HINT}")
    if meta.get("format") != CHECKPOINT_FORMAT:
        why = " (format 1 is the first hypernetwork form, before the reference MEND form)" if meta.get("format") == 1 else ""
        raise MENDCheckpointError(
            f"{path} has MEND checkpoint format {meta.get('format')}, expected {CHECKPOINT_FORMAT}{why}; {TRAIN_HINT}"
        )
    state = {k[len("hypernet.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("hypernet.")}
    return meta, state


class MENDEditor(Editor):
    """Applies a trained MEND hypernetwork, one edit step per call.

    Args:
        checkpoint: a ``.ckpt`` written by ``cli.py fit --config configs/mend.yaml``.
        max_length: token cap per prompt + target row (None = the value used in training).
        check_model_name: refuse a checkpoint trained for another ``model_name`` (shapes are always checked).
        max_update_norm_ratio: reject an edit step whose ΔW has ‖ΔW‖_F > ratio·‖W‖_F for any inner matrix
            (None = only NaN/Inf are rejected). A hypernetwork can emit finite but exploded updates.
        lr_scale: multiplies every ΔW at edit time (training is unaffected), as ``lr_scale`` of the MEND
            hyperparameters of PRUNE / EasyEdit (their LLaMA preset: 0.5). 1.0 = the trained update.
        input_z_clip: clip the hypernetwork's normalised inputs ``(x − μ)/σ`` to ±this at edit time (None = as
            trained, the reference). Not in the reference: a named option against the sequential growth of
            updates (docs/mend.md, "Sequential MEND").
    """

    def __init__(
        self,
        checkpoint: str = "checkpoints/mend/best.ckpt",
        max_length: int | None = None,
        check_model_name: bool = True,
        max_update_norm_ratio: float | None = None,
        lr_scale: float = 1.0,
        input_z_clip: float | None = None,
    ) -> None:
        if input_z_clip is not None and input_z_clip <= 0:
            raise ValueError(f"input_z_clip must be positive or None, got {input_z_clip}")
        self.input_z_clip = input_z_clip
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be positive, got {lr_scale}")
        self.lr_scale = float(lr_scale)
        if max_update_norm_ratio is not None and max_update_norm_ratio <= 0:
            raise ValueError(f"max_update_norm_ratio must be positive or None, got {max_update_norm_ratio}")
        self.max_update_norm_ratio = max_update_norm_ratio
        self.checkpoint = checkpoint
        self.max_length = max_length
        self.check_model_name = check_model_name
        self.hypernet: MENDHyperNet | None = None
        self.meta: dict[str, Any] = {}
        self._weights_sha256: str | None = None  # of the loaded hypernetwork: a file rewritten under the same path differs

    def prepare(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_name: str, data_dir: str | None) -> None:
        meta, state = load_mend_checkpoint(self.checkpoint)
        where = f"MEND checkpoint {self.checkpoint!r}"
        if self.check_model_name and meta["model_name"] != model_name:
            raise MENDCheckpointError(f"{where} was trained for model {meta['model_name']!r}, not {model_name!r}; {TRAIN_HINT} --model.init_args.model_name {model_name}")
        params = dict(model.named_parameters())
        missing = [n for n in meta["inner_params"] if n not in params]
        if missing:
            raise MENDCheckpointError(f"{where}: inner params {missing} do not exist in this model; it was trained for {meta['model_name']!r}")
        for n in meta["inner_params"]:
            have, want = tuple(get_weight(model, n).shape), tuple(meta["shapes"][n])
            if have != want:
                raise MENDCheckpointError(f"{where}: {n} has shape {have} here but {want} in the checkpoint (trained for {meta['model_name']!r})")
        shapes = {n: tuple(meta["shapes"][n]) for n in meta["inner_params"]}
        hypernet = MENDHyperNet(shapes, rank=meta["rank"], n_hidden=meta["n_hidden"], form=NetForm(**meta["form"]))
        try:
            hypernet.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise MENDCheckpointError(f"{where}: hypernetwork weights do not match its metadata: {err}") from err
        device = model_device(model)
        self.hypernet = hypernet.to(device).eval().requires_grad_(False)
        for transform in self.hypernet.transforms.values():
            transform.z_clip = self.input_z_clip
        self.meta = meta
        self._weights_sha256 = _state_sha256(state)
        log.info("loaded MEND hypernetwork from %s (%d inner params)", self.checkpoint, len(shapes))

    def weight_names(self, model: nn.Module) -> list[str]:
        if not self.meta:
            raise RuntimeError("MENDEditor.prepare must run before weight_names (it reads the checkpoint)")
        return list(self.meta["inner_params"])

    def compute_factors(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]
    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
        """``({name: (A [out, k], B [in, k])}, fine-tuning NLL before the edit)``; ΔW = A Bᵀ (lr_scale included)."""
        if self.hypernet is None:
            raise RuntimeError("MENDEditor.prepare must run before edit")
        max_len = self.max_length or int(self.meta.get("max_length", 64))
        batch = lm_batch(tokenizer, [r.prompt for r in requests], [r.target_new for r in requests], max_len)
        device = model_device(model)
        loss, factors, _ = finetune_factors(model, batch.to(device), self.meta["inner_params"])
        return self.transform_factors(factors), float(loss)

    @torch.no_grad()
    def transform_factors(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Gradient factors ``{name: (u [n, in], δ [n, out])}`` -> update factors ``{name: (A [out, k], B [in, k])}``
        with ΔW = A Bᵀ (``lr_scale`` and ``input_z_clip`` applied)."""
        if self.hypernet is None:
            raise RuntimeError("MENDEditor.prepare must run before edit")
        return {n: (self.lr_scale * a.float(), b.float()) for n, (a, b) in self.hypernet.delta_factors(factors).items()}

    def compute_update(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> ProposedUpdate:
        """The step's ΔW per inner matrix with its thin factors (ΔW = A Bᵀ, for `FactoredSpectralRestraint`);
        ``stats.nll``: the fine-tuning NLL before the edit."""
        thin, loss = self.compute_factors(model, tokenizer, requests)
        return ProposedUpdate({n: a @ b.T for n, (a, b) in thin.items()}, EditStats(nll=loss), thin)

    def compute_deltas(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, requests: list[EditRequest]) -> tuple[dict[str, torch.Tensor], EditStats]:
        """``({name: ΔW [out, in]}, stats)`` for ``requests`` on the current model (see `compute_update`)."""
        update = self.compute_update(model, tokenizer, requests)
        return update.deltas, update.stats

    def fingerprint(self) -> dict[str, Any]:
        options = {"lr_scale": self.lr_scale} if self.lr_scale != 1.0 else {}
        if self.input_z_clip is not None:  # only when set: the fingerprints of earlier runs stay valid
            options["input_z_clip"] = self.input_z_clip
        if self._weights_sha256 is not None:  # a run resumes only with the very hypernetwork it started with
            options["hypernet_sha256"] = self._weights_sha256
        return {**super().fingerprint(), "checkpoint": str(self.checkpoint), **options}


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and bytes of a state dict's tensors (name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
