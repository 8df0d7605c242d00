"""Lightning data module that feeds edit requests: one test batch = one edit step; train/val for MEND."""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from prune_lit.data.counterfact import is_fact_file, load_counterfact, load_fact_file
from prune_lit.data.edit_io import EditDataError
from prune_lit.data.requests import EditRequest
from prune_lit.data.zsre import load_zsre

DATASETS = ("counterfact", "zsre")
# zsRE ships no validation file: MEND validation uses the tail of its train file, held out from training.
ZSRE_VAL_FRACTION = 0.1


def collate_requests(batch: list[EditRequest]) -> list[EditRequest]:
    """Keep a batch as the list of requests it is (editors tokenize themselves)."""
    return list(batch)


class EditStream(IterableDataset):
    """The edit steps in order, each a ``list[EditRequest]`` of ``batch_size`` requests (the last may be shorter).

    An iterable dataset on purpose: Lightning never shards one over devices, so with DDP every rank sees the
    whole stream (sequential edits must not be split; the module splits the evaluation instead).
    """

    def __init__(self, requests: list[EditRequest], batch_size: int) -> None:
        self.requests, self.batch_size = requests, batch_size

    def __iter__(self):  # noqa: ANN204
        for i in range(0, len(self.requests), self.batch_size):
            yield self.requests[i : i + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.requests) // self.batch_size)


def with_borrowed_locality(requests: list[EditRequest], per_edit: int, seed: int = 0) -> list[EditRequest]:
    """Each request with ``per_edit`` locality prompts: its own, then those of ``per_edit − 1`` other requests.

    For MEND training (``train_locality_per_edit``): a CounterFact case has one neighbourhood prompt, so the KL
    term of an edit sees one prompt; borrowing others' prompts (fixed per request, drawn with ``seed``) gives it
    more of the inputs the edit must leave alone. A borrowed prompt comes with its own answer.
    """
    if per_edit < 1:
        raise ValueError(f"train_locality_per_edit must be >= 1, got {per_edit}")
    n = len(requests)
    if per_edit == 1 or n < 2:
        return list(requests)
    gen = torch.Generator().manual_seed(seed)
    # offsets in 1..n-1 never pick the request itself; distinct offsets never pick one lender twice
    offsets = (torch.randperm(n - 1, generator=gen)[: per_edit - 1] + 1).tolist()
    out = []
    for i, r in enumerate(requests):
        lenders = [requests[(i + o) % n] for o in offsets]
        out.append(dataclasses.replace(
            r,
            locality_prompts=r.locality_prompts + tuple(p for x in lenders for p in x.locality_prompts),
            locality_answers=r.locality_answers + tuple(a for x in lenders for a in x.locality_answers),
        ))  # fmt: skip
    return out


def load_edit_requests(
    dataset: str, split: str, data_dir: str | None = None, limit: int | None = None, seed: int = 0, shuffle: bool = False
) -> list[EditRequest]:
    """Requests of ``dataset`` ("counterfact" | "zsre" | a ``.json``/``.jsonl`` file of your own facts) and
    ``split``; ``"edit"`` and ``"eval"`` name the same split (the one edited and evaluated) for both
    benchmarks; a fact file has no splits (``split`` is ignored)."""
    if is_fact_file(dataset):
        return load_fact_file(dataset, limit, seed, shuffle)
    if dataset == "counterfact":
        return load_counterfact({"eval": "edit"}.get(split, split), data_dir, limit, seed, shuffle)  # type: ignore[arg-type]
    if dataset == "zsre":
        return load_zsre({"edit": "eval"}.get(split, split), data_dir, limit, seed, shuffle)  # type: ignore[arg-type]
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS} or a .json/.jsonl file")


class EditDataModule(L.LightningDataModule):
    """Edit requests for sequential editing, ``batch_size`` requests per edit step (1 for ROME, N for MEMIT).

    ``test_dataloader`` yields ``list[EditRequest]`` in the fixed order of `all_requests`: the first
    ``num_edits`` requests of ``split`` (a ``seed``-ed random subset when ``shuffle``). ``train_dataloader``
    / ``val_dataloader`` serve MEND training: the train split (reshuffled each epoch, seeded) and the val
    split (CounterFact's val file; for zsRE the last 10% of its train file, which training then leaves out),
    capped at ``val_limit``. ``train_locality_per_edit`` > 1 gives each training edit other cases' locality
    prompts besides its own (`with_borrowed_locality`); validation keeps one per case.

    ``dataset`` may name a ``.json``/``.jsonl`` file of your own facts (flat CounterFact records; see
    `prune_lit.data.counterfact.parse_fact_record`); it can be edited, not used for MEND training.
    ``num_edits`` larger than the split is an error (``None`` edits all of it).
    """

    def __init__(
        self,
        dataset: str = "counterfact",
        split: str = "edit",
        num_edits: int | None = 20,
        batch_size: int = 1,
        data_dir: str | None = None,
        seed: int = 0,
        shuffle: bool = False,
        train_batch_size: int = 1,
        val_limit: int | None = 200,
        val_start: int = 0,
        train_locality_per_edit: int = 1,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS and not is_fact_file(dataset):
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS} or a .json/.jsonl file of your own facts")
        if batch_size < 1 or train_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, train_batch_size={train_batch_size}")
        if val_start < 0:
            raise ValueError(f"val_start must be >= 0, got {val_start}")
        if train_locality_per_edit < 1:
            raise ValueError(f"train_locality_per_edit must be >= 1, got {train_locality_per_edit}")
        if num_edits is not None and num_edits < 1:
            raise ValueError(f"num_edits must be >= 1 or None (all), got {num_edits}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.split = split
        self.num_edits = num_edits
        self.batch_size = batch_size
        self.data_dir = data_dir
        self.seed = seed
        self.shuffle = shuffle
        self.train_batch_size = train_batch_size
        self.val_limit = val_limit
        self.val_start = val_start
        self.train_locality_per_edit = train_locality_per_edit
        self._requests: list[EditRequest] | None = None

    @property
    def all_requests(self) -> list[EditRequest]:
        """Every request that will be edited, in edit order (loaded on first use)."""
        if self._requests is None:
            requests = load_edit_requests(self.dataset, self.split, self.data_dir, self.num_edits, self.seed, self.shuffle)
            if self.num_edits is not None and len(requests) < self.num_edits:
                # Running fewer edits than asked would change the experiment without saying so.
                source = self.dataset if is_fact_file(self.dataset) else f"{self.dataset} split {self.split!r}"
                raise EditDataError(
                    f"num_edits={self.num_edits} but {source} has only {len(requests)} cases; "
                    f"set num_edits to at most {len(requests)}, or null to edit them all"
                )
            self._requests = requests
        return self._requests

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "test"):
            _ = self.all_requests

    def transfer_batch_to_device(self, batch: list[EditRequest], device: torch.device, dataloader_idx: int) -> list[EditRequest]:
        # Requests are frozen dataclasses of text, which Lightning's default mover cannot rebuild;
        # editors tokenize onto the model's device themselves.
        return batch

    def test_dataloader(self) -> DataLoader:
        return DataLoader(EditStream(self.all_requests, self.batch_size), batch_size=None, num_workers=0)

    def train_val_requests(self) -> tuple[list[EditRequest], list[EditRequest]]:
        """``(train, val)`` requests of MEND training: val is ``val_limit`` cases from case ``val_start`` of the val
        split (a later slice than the one checkpoints were chosen on scores a trained hypernetwork on unseen cases)."""
        if is_fact_file(self.dataset):
            raise EditDataError(f"{self.dataset}: a fact file can be edited (test), not used to train MEND (fit); use counterfact or zsre")
        train = load_edit_requests(self.dataset, "train", self.data_dir)
        if self.dataset == "counterfact":
            val = load_edit_requests(self.dataset, "val", self.data_dir)
        else:
            n_val = max(1, int(len(train) * ZSRE_VAL_FRACTION))
            train, val = train[:-n_val], train[-n_val:]
        if self.val_start >= len(val):
            raise EditDataError(f"val_start={self.val_start} but the val split has only {len(val)} cases")
        val = val[self.val_start :]
        return train, val if self.val_limit is None else val[: self.val_limit]

    def train_dataloader(self) -> DataLoader:
        train, _ = self.train_val_requests()
        # after train_val_requests, which MEND's hidden-state cache keys on: borrowed prompts are rows it already holds
        train = with_borrowed_locality(train, self.train_locality_per_edit, self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(train, batch_size=self.train_batch_size, shuffle=True, generator=gen, num_workers=0, collate_fn=collate_requests, drop_last=True)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader:
        _, val = self.train_val_requests()
        return DataLoader(val, batch_size=self.train_batch_size, shuffle=False, num_workers=0, collate_fn=collate_requests)  # type: ignore[arg-type]
