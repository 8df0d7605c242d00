"""The Python API: load a model, pick an editor and a restraint, edit a list of facts; PRUNE any edited checkpoint.

`edit` builds the very objects ``python cli.py test --config ...`` builds from its configs — a
`SequentialEditingModule`, an `EditDataModule` and a Lightning ``Trainer`` with the CLI's trainer defaults —
and runs ``trainer.test``; only the model may come already loaded (`SequentialEditingModule.use_model`).
`restrain` / `inspect` are the ``restrain`` / ``inspect`` commands (`prune_lit.commands`): load two Hugging Face
checkpoints, then `prune_lit.restraint.posthoc.restrain_weights`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prune_lit.callbacks.diagnostics import SpectralDiagnostics
from prune_lit.contracts import EditState, EditStepCallback, Phase, Restraint
from prune_lit.callbacks.factored_restraint import FactoredSpectralRestraint
from prune_lit.callbacks.key_aware_restraint import KeyAwareSpectralRestraint
from prune_lit.callbacks.restraint import SpectralRestraint
from prune_lit.callbacks.sphere_restraint import SphereRestraint
from prune_lit.data.counterfact import is_fact_file, parse_fact_record
from prune_lit.data.edit_datamodule import EditDataModule
from prune_lit.data.edit_io import EditDataError
from prune_lit.data.requests import EditRequest
from prune_lit.editors.alphaedit import AlphaEditEditor
from prune_lit.editors.base import Editor
from prune_lit.editors.memit import MEMITEditor
from prune_lit.editors.mend import MENDEditor
from prune_lit.editors.rome import ROMEEditor
from prune_lit.models.export import check_export_path, export_model
from prune_lit.models.loader import PRESETS, LoadedModel, load_model
from prune_lit.modules.sequential_editing import TRAINER_DEFAULTS as EDIT_TRAINER_DEFAULTS
from prune_lit.modules.sequential_editing import SequentialEditingModule
from prune_lit.restraint.posthoc import CheckpointMismatchError, PosthocError, PosthocRestraint, restrain_weights
from prune_lit.restraint.spectrum import check_restraint_args

EDITORS: dict[str, type[Editor]] = {"rome": ROMEEditor, "memit": MEMITEditor, "alphaedit": AlphaEditEditor, "mend": MENDEditor}
RESTRAINTS = ("prune", "prune_at_end", "prune_factored", "prune_key_aware", "sphere", "none")
# What the CLI sets for every run (PruneLitCLI.add_arguments_to_parser, configs/base.yaml); a test keeps them equal.
# The CLI's Trainer defaults; an API run saves no Lightning checkpoints (its own run checkpoints are the module's).
TRAINER_DEFAULTS: dict[str, Any] = {**EDIT_TRAINER_DEFAULTS, "enable_checkpointing": False}
Fact = Mapping[str, Any] | EditRequest


# ---- building blocks ------------------------------------------------------------------------------
def load(
    model: str | os.PathLike | PreTrainedModel = "smollm2-135m",
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    name: str | None = None,
    dtype: str = "float32",
) -> LoadedModel:
    """A model to edit: a preset (``smollm2-135m``, ``tiny-llama``, ...), a local Hugging Face directory, or a
    model and tokenizer you already hold.

    ``name`` keys the editor's hyperparameter preset (``prune_lit/hparams/<editor>/<basename of name>.yaml``)
    and its key-statistics cache; it defaults to the preset / directory, or to the held model's
    ``config.name_or_path``. A held model is used as it is (not copied): editing changes it in place; it is put
    in eval mode with gradients off, and its tokenizer gets a pad token (EOS) if it has none and left padding, as
    every model the loader returns.
    """
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("load(model, tokenizer): a model you already hold needs its tokenizer too")
        model.eval().requires_grad_(False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        return LoadedModel(model=model, tokenizer=tokenizer, name=name or str(getattr(model.config, "name_or_path", "") or type(model).__name__))
    if tokenizer is not None:
        raise ValueError("load(): pass a tokenizer only together with a model object, not with a preset or directory")
    loaded = load_model(str(model), dtype=dtype)
    if name is not None:
        loaded.name = name
    return loaded


def get_editor(name: str, hparams: str | None = None, **overrides: Any) -> Editor:
    """An editor by name: ``rome``, ``memit``, ``alphaedit`` (hyperparameters: the model's preset, or the YAML
    ``hparams``, with single ``overrides`` on top, e.g. ``layers=[6]``; ``stats_dir=`` moves the statistics
    cache) or ``mend`` (``overrides`` are `MENDEditor`'s arguments, e.g. ``checkpoint=...``)."""
    key = name.lower()
    if key not in EDITORS:
        raise ValueError(f"unknown editor {name!r}; expected one of {sorted(EDITORS)}")
    if key == "mend":
        if hparams is not None:
            raise ValueError("mend takes no hparams file; pass its arguments (checkpoint=..., lr_scale=...) as keywords")
        return MENDEditor(**overrides)
    stats_dir = overrides.pop("stats_dir", None)
    return EDITORS[key](hparams=hparams, stats_dir=stats_dir, overrides=overrides)


def get_restraint(name: str | None = "prune", **options: Any) -> Restraint | None:
    """A restraint by name, as the configs in ``configs/restraint/`` set it: ``prune`` (after every edit),
    ``prune_at_end`` (once after the last edit, as the reference code), ``prune_factored`` (MEND's factored
    edits), ``prune_key_aware`` (PRUNE's map on ΔW C^{1/2}, docs/restraints.md), ``sphere`` (SPHERE on each
    step's update), ``none`` / None. ``options`` are the callback's arguments (``alpha=1.2``, ``mode="linear"``, ...)."""
    key = "none" if name is None else name.lower()
    if key == "prune":
        return SpectralRestraint(**options)
    if key == "prune_at_end":
        return SpectralRestraint(**{"at_end_only": True, **options})
    if key == "prune_factored":
        return FactoredSpectralRestraint(**options)
    if key == "prune_key_aware":
        return KeyAwareSpectralRestraint(**options)
    if key == "sphere":
        return SphereRestraint(**options)
    if key == "none":
        if options:
            raise ValueError(f"restraint 'none' takes no options, got {sorted(options)}")
        return None
    raise ValueError(f"unknown restraint {name!r}; expected one of {RESTRAINTS}")


def to_requests(facts: Iterable[Fact]) -> list[EditRequest]:
    """`EditRequest`s from records as in a fact file (``prompt``, ``subject``, ``target_new``; optional
    ``case_id``, ``ground_truth``, ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth``) or
    `EditRequest`s (kept as they are). A bad record or a repeated ``case_id`` raises `EditDataError` naming it."""
    out: list[EditRequest] = []
    for i, fact in enumerate(facts):
        if isinstance(fact, EditRequest):
            out.append(fact)
        elif isinstance(fact, Mapping):
            out.append(parse_fact_record(dict(fact), i, f"facts[{i}]"))
        else:
            raise EditDataError(f"facts[{i}]: expected a dict or an EditRequest, got {type(fact).__name__}")
    seen: dict[Any, int] = {}
    for i, r in enumerate(out):
        if r.case_id in seen:
            raise EditDataError(f"facts[{i}]: case_id {r.case_id!r} repeats facts[{seen[r.case_id]}]'s (case ids must be unique)")
        seen[r.case_id] = i
    if not out:
        raise EditDataError("no facts to edit")
    return out


class FactsDataModule(EditDataModule):
    """`EditDataModule` over facts held in memory (the API's lists) instead of a dataset name or file."""

    def __init__(self, requests: Sequence[EditRequest], batch_size: int = 1) -> None:
        super().__init__(dataset="counterfact", num_edits=None, batch_size=batch_size)  # dataset unused: requests are given
        self.dataset = self.hparams["dataset"] = f"<{len(requests)} facts in memory>"  # what the run's hparams.yaml records
        self._requests = list(requests)


class StepRecorder(EditStepCallback):
    """Keeps every edit step's numbers (the API's ``EditRun.steps``): a read-only ``MEASURE`` callback."""

    phase = Phase.MEASURE

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, Any]] = []

    def on_edit_step(self, trainer: L.Trainer, state: EditState) -> None:
        result = state.last_result
        assert result is not None
        row: dict[str, Any] = {
            "step": state.steps,
            "num_edits": state.requests_seen,
            "case_ids": [r.case_id for r in state.edited[len(state.edited) - state.last_batch_size :]],
            "applied": result.applied,
        }
        row.update(result.stats.scalars())
        self.steps.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict.get("steps", []))


# ---- one call that edits ------------------------------------------------------------------------------
@dataclass
class EditRun:
    """What `edit` returns: the edited model (the same object that was loaded, edited in place) and its numbers.

    ``steps``: one dict per edit step (``case_ids``, ``applied``, the editor's ``loss``, ``nll``,
    ``delta_norm``, ``seconds``, ...). ``results``: everything the run's ``results.json`` holds (``edits_after``
    always; ``edits_before`` and the ``history`` of ``eval_at`` points where asked; timings). ``spectra``: the
    spectral diagnostics per step and matrix (σ_max(ΔW), ‖ΔW‖_F, σ_max(W), κ(W)), empty without diagnostics.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    steps: list[dict[str, Any]]
    results: dict[str, Any]
    spectra: list[dict[str, Any]] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def edits_after(self) -> dict[str, float]:
        """Edit metrics (efficacy, generalization, locality, ...) of every edited fact after the last edit."""
        return self.results["edits_after"]

    @property
    def edits_before(self) -> dict[str, float] | None:
        """The same metrics on the unedited model (``evaluate=True``), else None."""
        return self.results.get("edits_before")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the edited model and tokenizer as a Hugging Face directory (must not exist or be empty)."""
        return export_model(self.model, self.tokenizer, path)


def build(
    model: LoadedModel,
    facts: Iterable[Fact] | str | os.PathLike,
    editor: str | Editor = "rome",
    restraint: str | Restraint | None = "prune",
    *,
    batch_size: int = 1,
    evaluate: bool = False,
    eval_at: Sequence[int] = (),
    diagnostics: bool = True,
    downstream: Any = None,
    export_dir: str | os.PathLike | None = None,
    log_dir: str | os.PathLike = "logs",
    run_name: str = "api",
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> tuple[L.Trainer, SequentialEditingModule, EditDataModule]:
    """The trainer, module and data module `edit` runs (arguments as there); nothing is loaded or edited yet."""
    if isinstance(facts, (str, os.PathLike)):
        if not is_fact_file(str(facts)):
            raise EditDataError(f"{facts}: a fact file must end in .json or .jsonl")
        datamodule: EditDataModule = EditDataModule(dataset=str(facts), num_edits=None, batch_size=batch_size)
    else:
        datamodule = FactsDataModule(to_requests(facts), batch_size=batch_size)
    dtype = str(next(model.model.parameters()).dtype).removeprefix("torch.")
    module = SequentialEditingModule(
        editor=get_editor(editor) if isinstance(editor, str) else editor,
        model_name=model.name,
        dtype=dtype,
        data_dir=data_dir,
        eval_at=list(eval_at),
        downstream=downstream,
        evaluate_before=evaluate,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
        run_name=run_name,
        restraint=get_restraint(restraint) if restraint is None or isinstance(restraint, str) else restraint,
        diagnostics=SpectralDiagnostics() if diagnostics else None,
        export_dir=None if export_dir is None else str(export_dir),
    ).use_model(model)
    trainer = L.Trainer(
        logger=TensorBoardLogger(str(log_dir), name=run_name),
        callbacks=[StepRecorder()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        **TRAINER_DEFAULTS,
    )
    return trainer, module, datamodule


def edit(
    model: LoadedModel | str | os.PathLike,
    facts: Iterable[Fact] | str | os.PathLike,
    editor: str | Editor = "rome",
    restraint: str | Restraint | None = "prune",
    *,
    batch_size: int = 1,
    evaluate: bool = False,
    eval_at: Sequence[int] = (),
    diagnostics: bool = True,
    downstream: Any = None,
    export_dir: str | os.PathLike | None = None,
    log_dir: str | os.PathLike | None = "logs",
    run_name: str = "api",
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    data_dir: str | None = None,
    seed: int = 0,
) -> EditRun:
    """Edit ``facts`` into ``model`` one step after another (``batch_size`` facts a step) and return the result.

    W₀ (what PRUNE and the diagnostics measure ΔW against) is the model as passed in: a second call on an edited
    model restrains only that call's edits; edit the whole list in one call to restrain them all.

    Args:
        model: from `load`, or a preset name / Hugging Face directory to load.
        facts: fact records (dicts as in a ``.jsonl`` fact file) or `EditRequest`s, or the path of a fact file.
        editor: ``rome`` | ``memit`` | ``alphaedit`` | ``mend`` (presets), or an editor from `get_editor`.
        restraint: ``prune`` | ``prune_at_end`` | ``prune_factored`` | ``none``/None, or one from `get_restraint`.
        evaluate: also score the facts on the unedited model (``edits_before``); they are always scored after
            the last edit (``edits_after``).
        eval_at: edit counts at which every fact edited so far is scored (``results["history"]``).
        diagnostics: record σ_max(ΔW), ‖ΔW‖_F, κ(W) of the edited matrices after every step (``spectra``).
        downstream: a `DownstreamEvaluator` run before and after editing (None: none).
        export_dir: also save the final model there as a Hugging Face directory (checked before editing).
        log_dir: TensorBoard scalars, ``results.json``, ``spectral.json`` go to ``<log_dir>/<run_name>/version_<n>/``
            (None: a temporary folder, removed afterwards).
        checkpoint_dir: resumable run checkpoints (None: none).
        progress: Lightning's progress bar over the edit steps.
        seed: seeds torch / numpy / random as the CLI's ``seed_everything: 0``.

    Raises `EditDataError` for a bad fact, ``FileExistsError`` for a used ``export_dir``, ``ValueError`` for bad settings.
    """
    if not isinstance(model, LoadedModel):
        model = load(model)
    if export_dir is not None:
        check_export_path(export_dir)
    L.seed_everything(seed, verbose=False)  # before anything is built, as LightningCLI does
    with tempfile.TemporaryDirectory(prefix="prune-lit-run-") as tmp:
        trainer, module, datamodule = build(
            model, facts, editor, restraint, batch_size=batch_size, evaluate=evaluate, eval_at=eval_at, diagnostics=diagnostics,
            downstream=downstream, export_dir=export_dir, log_dir=tmp if log_dir is None else log_dir, run_name=run_name,
            checkpoint_dir=checkpoint_dir, progress=progress, data_dir=data_dir,
        )  # fmt: skip
        trainer.test(module, datamodule=datamodule, verbose=False)
    recorder = next(cb for cb in trainer.callbacks if isinstance(cb, StepRecorder))
    spectra = module.diagnostics.records if isinstance(module.diagnostics, SpectralDiagnostics) else []
    run_dir = None if log_dir is None else Path(trainer.logger.log_dir) if trainer.logger is not None else None
    return EditRun(model=model.model, tokenizer=model.tokenizer, steps=recorder.steps, results=module.results, spectra=spectra, log_dir=run_dir)


# ---- PRUNE for any edited checkpoint ------------------------------------------------------------------
class CheckpointLoadError(PosthocError):
    """A checkpoint directory (or preset) that does not load as a causal language model."""


@dataclass
class Restrained:
    """What `restrain` returns: the restrained model (the edited one, changed in place), its tokenizer, the report."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    report: PosthocRestraint
    path: Path | None = None  # where it was written (None: not written)


Checkpoint = str | os.PathLike | LoadedModel | PreTrainedModel


def _load_checkpoint(source: Checkpoint, role: str, dtype: str) -> LoadedModel:
    """A model to compare: held (used as it is), a preset, or a Hugging Face directory (its tokenizer if it has one)."""
    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, nn.Module):
        return LoadedModel(model=source, tokenizer=None, name=role)  # type: ignore[arg-type]
    where = str(source)
    try:
        if where in PRESETS and not Path(where).is_dir():
            return load_model(where, dtype=dtype)
        if not Path(where).is_dir():
            raise FileNotFoundError("no such directory")
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype))
    except Exception as err:  # noqa: BLE001 - whatever stops it loading is the user's to fix; the message says what
        raise CheckpointLoadError(f"the {role} checkpoint {where!r} does not load: {type(err).__name__}: {err}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except Exception:  # noqa: BLE001 - a checkpoint saved without its tokenizer: the other one's is used
        tokenizer = None
    return LoadedModel(model=model.eval().requires_grad_(False), tokenizer=tokenizer, name=where)  # type: ignore[arg-type]


def _compare(original: Checkpoint, edited: Checkpoint, alpha: float, mode: str, matrices: Sequence[str] | None,
             dtype: str) -> tuple[LoadedModel, LoadedModel, PosthocRestraint]:
    try:  # bad settings fail before two models load
        check_restraint_args(1.0, alpha, mode)
    except ValueError as err:
        raise PosthocError(str(err)) from err
    orig = _load_checkpoint(original, "original", dtype)
    ed = _load_checkpoint(edited, "edited", dtype)
    kinds = [getattr(m.model.config, "model_type", type(m.model).__name__) for m in (orig, ed)]
    if kinds[0] != kinds[1]:
        raise CheckpointMismatchError(f"different architectures: the original is {kinds[0]!r}, the edited model {kinds[1]!r}")
    # named_parameters lists a tied weight once, so it is restrained (and written) once.
    report = restrain_weights(dict(orig.model.named_parameters()), dict(ed.model.named_parameters()), matrices, alpha, mode)  # type: ignore[arg-type]
    return orig, ed, report


def inspect(
    original: Checkpoint, edited: Checkpoint, *, alpha: float = math.e, mode: str = "log", matrices: Sequence[str] | None = None,
    dtype: str = "float32",
) -> PosthocRestraint:
    """The spectral report of `restrain` — per changed matrix σ_max(ΔW)/σ_max(W₀) before and after PRUNE — with
    nothing written and both models left as they were. ``report.table()`` is what ``cli.py inspect`` prints."""
    _, _, report = _compare(original, edited, alpha, mode, matrices, dtype)
    report.weights.clear()
    return report


def restrain(
    original: Checkpoint, edited: Checkpoint, out: str | os.PathLike | None = None, *, alpha: float = math.e, mode: str = "log",
    matrices: Sequence[str] | None = None, dtype: str = "float32",
) -> Restrained:
    """PRUNE an edited model against its original, whatever tool edited it.

    ``original`` / ``edited``: Hugging Face directories, presets, or models you hold (an ``edited`` model you hold
    is restrained in place). Every matrix that differs (or each of ``matrices``) gets W_edited + PRUNE's
    correction of ΔW = W_edited − W_original, exactly as the editing loop's once-at-the-end restraint.
    ``out``: write the restrained model there (with the edited checkpoint's tokenizer, else the original's);
    it must not exist or be empty, which is checked before anything loads. Models load in ``dtype`` (float32).

    Raises `CheckpointLoadError`, `CheckpointMismatchError` (architectures or shapes differ), `NothingChangedError`,
    ``FileExistsError`` (``out`` is taken).
    """
    if out is not None:
        check_export_path(out)
    orig, ed, report = _compare(original, edited, alpha, mode, matrices, dtype)
    params = dict(ed.model.named_parameters())
    with torch.no_grad():
        for name, w in report.weights.items():
            params[name].copy_(w.to(params[name].dtype))
    tokenizer = ed.tokenizer if ed.tokenizer is not None else orig.tokenizer
    path = None if out is None else export_model(ed.model, tokenizer, out)
    return Restrained(model=ed.model, tokenizer=tokenizer, report=report, path=path)
