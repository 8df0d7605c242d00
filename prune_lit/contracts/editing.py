"""What the sequential-editing loop needs from an editor and from the data module that feeds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from prune_lit.contracts.records import EditRequest, EditResult

#: Rewrites a step's ``{param_name: ΔW [out, in]}`` before it is applied (update-time restraints); returns the
#: same dict object's tensors for matrices it leaves alone.
UpdateHook = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class SequentialEditor(Protocol):
    """An editing method as the loop drives it (`prune_lit.editors.Editor` implements it; subclass that).

    Lifecycle: `prepare` once, `weight_names` (snapshotted as W_0), then `edit` once per step on the weights the
    earlier steps left. `edit` computes the step's update, passes it through ``restrain_update`` (when given)
    and applies it all or nothing. `state_dict` / `load_state_dict` carry run state that is not in the weights
    (AlphaEdit's K_pK_pᵀ) through checkpoints; `fingerprint` is what must match for a checkpoint to resume.
    """

    def prepare(self, model: nn.Module, tokenizer: Any, model_name: str, data_dir: str | None) -> None:
        """Once, before the first edit: hyperparameters, key statistics, checkpoints."""

    def weight_names(self, model: nn.Module) -> list[str]:
        """Parameter names this editor may change."""

    def edit(self, model: nn.Module, tokenizer: Any, requests: list[EditRequest], restrain_update: UpdateHook | None = None) -> EditResult:
        """One step: compute the update on the current weights, restrain it (``restrain_update``), apply it."""

    def key_second_moment(self, name: str) -> torch.Tensor | None:
        """C = E[k kᵀ] ``[in, in]`` of the keys entering the matrix ``name`` (None: this editor has none)."""

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able settings that must match for a checkpoint of this run to be resumed."""

    def state_dict(self) -> dict[str, Any]:
        """Run state outside the weights (tensors and plain values)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


@runtime_checkable
class TrainValRequestSource(Protocol):
    """A data module MEND's training can cache hidden states for (`prune_lit.data.EditDataModule`): its train and
    val requests up front, and the dataset name that tags the cache."""

    dataset: str

    def train_val_requests(self) -> tuple[list[EditRequest], list[EditRequest]]: ...


@runtime_checkable
class EditRequestSource(Protocol):
    """The data module of an editing run (`prune_lit.data.EditDataModule`): the whole edit stream in order and the
    number of requests per edit step. Its ``test_dataloader`` yields the stream as ``list[EditRequest]`` batches."""

    @property
    def all_requests(self) -> list[EditRequest]: ...

    @property
    def batch_size(self) -> int: ...
