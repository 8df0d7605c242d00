"""The sequential-editing experiment as a LightningModule: one test batch = one edit step.

Edit i is applied to the model that edits 1..i-1 produced. One step, in this order (docs/architecture.md):

1. the editor computes the step's update; update-time restraints rewrite it; the editor applies it (rank 0;
   broadcast to the other ranks) — `prune_lit.modules.edit_step`;
2. ``RESTRAIN``-phase callbacks (PRUNE) may rewrite the edited matrices;
3. ``MEASURE``-phase callbacks (spectral diagnostics) read them;
4. at ``eval_at`` / ``downstream_at`` counts the module evaluates (sharded over ranks) — `prune_lit.modules.evaluation`;
5. every ``checkpoint_every`` requests the run state is checkpointed (rank 0), so a killed run resumes —
   `prune_lit.modules.run_resume`.

Only the editor (1) and restraints (1, 2) write weights. The callbacks' place in ``trainer.callbacks`` does not
matter: the module calls them itself, in phase order. What the module needs from its collaborators is written
down in `prune_lit.contracts`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import lightning as L
import torch

from prune_lit.contracts.results import PartCost, RunCost, RunResults
from prune_lit.contracts import EditRequest, EditRequestSource, EditState, Restraint, crossed, crossed_any, restraints
from prune_lit.editors.base import Editor
from prune_lit.models.arch import get_weight
from prune_lit.models.export import check_export_path, export_model
from prune_lit.models.loader import LoadedModel, load_model
from prune_lit.modules.distributed import world
from prune_lit.modules.downstream_eval import DownstreamEvaluator
from prune_lit.modules.edit_step import end_edits, run_edit_step
from prune_lit.modules.evaluation import RunEvaluation
from prune_lit.modules.run_checks import check_marks, check_request_lengths
from prune_lit.modules.run_resume import RunCheckpoints
from prune_lit.reporting import RemoveRunFolderOnFailure, code_commit, run_dir

log = logging.getLogger(__name__)


# The Trainer settings an editing run needs, shared by cli.py (as defaults) and the Python API. Editors take
# gradients inside test_step (ROME's value optimisation, MEND's fine-tuning gradient): inference_mode would forbid it.
TRAINER_DEFAULTS: dict[str, Any] = dict(inference_mode=False, accelerator="auto", devices=1, num_sanity_val_steps=0)


class SequentialEditingModule(L.LightningModule):
    """Applies ``editor`` to the batches of the test dataloader, one after another, and evaluates.

    Args:
        editor: the editing method (ROME, MEMIT, MEND, AlphaEdit), built from the config's ``class_path``.
        model_name: a preset of `prune_lit.models.load_model` or a local Hugging Face directory.
        dtype: weights dtype of the edited model.
        data_dir: data folder for the editor's statistics corpus (None = the usual resolution).
        eval_at: cumulative edit counts after which the edited cases so far are evaluated (the curve);
            the final count is always evaluated.
        downstream: downstream-task evaluator run before editing and after the last edit (None = skip).
        downstream_at: extra edit counts at which the downstream tasks are also evaluated.
        eval_batch_size: prompts per forward pass when scoring edits.
        evaluate_before: also score the edit cases on the unedited model (the 'before' column).
        checkpoint_dir: resumable checkpoints go to ``<checkpoint_dir>/<run_name>/`` (None: no checkpoints).
        checkpoint_every: write one every this many edit requests (and at the end); 0 = only at the end.
        resume: continue from the run's latest checkpoint (an error if there is none, or if it is from another
            model, editor setting or edit stream; a corrupt one falls back to the one before it, with a warning).
        overwrite: with resume False and checkpoints already under the run's name: move them aside to
            ``<run_name>.old-<time>`` and start over (False: refuse, naming both ways out). Nothing is deleted.
        keep_checkpoints: how many of the newest checkpoints to keep (>= 1; the older ones are the fallback
            when the newest is corrupt).
        run_name: the checkpoint folder's name (None: the logger's name, e.g. ``rome_prune``).
        restraint: a `prune_lit.contracts.Restraint` (e.g. `SpectralRestraint`) added to the trainer's callbacks, so a
            config can set it without replacing ``trainer.callbacks`` (None = none from the module).
        diagnostics: a diagnostics callback (e.g. `SpectralDiagnostics`) added the same way. Their order in
            the list never matters: the module runs restraint before diagnostics (`prune_lit.contracts.callbacks`).
        probe_tokens: WikiText-2 *test* tokens of the general-ability probes (perplexity and KL from the unedited
            model, `prune_lit.metrics.probes`) run before editing and at every ``eval_at`` point; 0 = no probes.
        probe_window: length of the probes' non-overlapping token windows.
        downstream_cache: reuse the unedited model's downstream scores from an earlier run with the very same
            weights, examples and generation settings (`DownstreamEvaluator.fingerprint`), stored under
            ``$PRUNE_LIT_CACHE/downstream_before/``; every arm of a study scores the same unedited model.
        export_dir: save the final (restrained) model and its tokenizer there as a Hugging Face directory
            (`prune_lit.models.export.export_model`; must not exist or be empty). None = not saved.
    """

    def __init__(
        self,
        editor: Editor,
        model_name: str = "smollm2-135m",
        dtype: str = "float32",
        data_dir: str | None = None,
        eval_at: list[int] | None = None,
        downstream: DownstreamEvaluator | None = None,
        downstream_at: list[int] | None = None,
        eval_batch_size: int = 16,
        evaluate_before: bool = True,
        checkpoint_dir: str | None = "checkpoints",
        checkpoint_every: int = 100,
        resume: bool = False,
        overwrite: bool = False,
        keep_checkpoints: int = 2,
        run_name: str | None = None,
        restraint: Restraint | None = None,
        diagnostics: L.Callback | None = None,
        export_dir: str | None = None,
        probe_tokens: int = 0,
        probe_window: int = 256,
        downstream_cache: bool = True,
    ) -> None:
        super().__init__()
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: only at the end), got {checkpoint_every}")
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
        if resume and overwrite:
            raise ValueError("resume: true and overwrite: true contradict each other; set one of them")
        if probe_tokens < 0 or probe_window < 2:
            raise ValueError(f"probe_tokens must be >= 0 and probe_window >= 2, got {probe_tokens}, {probe_window}")
        self.save_hyperparameters(ignore=["editor", "downstream", "restraint", "diagnostics"])
        self.editor = editor
        self.downstream = downstream
        self.restraint, self.diagnostics = restraint, diagnostics
        self.eval_at = sorted(set(eval_at or []))
        self.downstream_at = sorted(set(downstream_at or []))
        self.model: torch.nn.Module | None = None
        self.state: EditState | None = None
        self.results: dict[str, Any] = {}
        self.code_commit = code_commit()  # the code this process runs (HEAD may move while a long run goes on)
        self._evaluation: RunEvaluation | None = None  # built when the test loop starts (it needs the trainer)
        self._checkpoints: RunCheckpoints | None = None
        self._resumed_steps = 0  # test batches already edited by the run this one resumes
        self._given_model: LoadedModel | None = None  # set by `use_model` (the Python API's own model)
        self.cost = RunCost()  # where this run's seconds go (results.json "cost"), kept across resumes
        self._cost_before = PartCost()  # the total of the starts before this one (from the resumed checkpoint)
        self._started: tuple[float, float] | None = None  # wall and CPU clocks when this start's test loop began

    # ---- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.state is not None:
            return
        hp = self.hparams
        if hp.export_dir is not None:
            check_export_path(hp.export_dir)  # fail now, not after the edits
        loaded = self._given_model or load_model(hp.model_name, dtype=hp.dtype)
        self.editor.prepare(loaded.model, loaded.tokenizer, hp.model_name, hp.data_dir)
        # W_0 of every matrix the editor may touch: PRUNE and the diagnostics measure ΔW against it.
        w0 = {name: get_weight(loaded.model, name).float().clone() for name in self.editor.weight_names(loaded.model)}
        # A submodule, so that Lightning moves it to the run's device; the state refers to the same object.
        self.model = loaded.model
        self.state = EditState(model=loaded.model, tokenizer=loaded.tokenizer, original_weights=w0)

    def use_model(self, loaded: LoadedModel) -> SequentialEditingModule:
        """Edit this already-loaded model and tokenizer (edited in place) instead of loading ``model_name`` in
        `setup`: the Python API's path for a model the caller holds. ``model_name`` still names it (editor presets,
        statistics cache, checkpoint fingerprint). Returns ``self``."""
        self._given_model = loaded
        return self

    @property
    def edit_steps_done(self) -> int:
        """Edit steps this process has run (not counting those of a run it resumed)."""
        return 0 if self.state is None else self.state.steps - self._resumed_steps

    @property
    def tokenizer(self) -> Any:
        return None if self.state is None else self.state.tokenizer

    @property
    def original_weights(self) -> dict[str, torch.Tensor]:
        return {} if self.state is None else self.state.original_weights

    def _state(self) -> EditState:
        if self.state is None:
            raise RuntimeError("SequentialEditingModule.setup has not run")
        return self.state

    def configure_callbacks(self) -> list[L.Callback]:
        # Lightning appends these after trainer.callbacks (replacing any of the same type there); the phase
        # order, not this list, puts restraint before diagnostics.
        return [cb for cb in (self.restraint, self.diagnostics, RemoveRunFolderOnFailure()) if cb is not None]

    def _edit_data(self) -> EditRequestSource:
        dm = self.trainer.datamodule
        if not isinstance(dm, EditRequestSource):
            raise RuntimeError("SequentialEditingModule needs a datamodule with `all_requests` and `batch_size` (e.g. EditDataModule)")
        return dm

    def on_test_start(self) -> None:
        self._started = (time.perf_counter(), time.process_time())
        state = self._state()
        hp = self.hparams
        state.original_weights = {n: w.to(self.device) for n, w in state.original_weights.items()}
        data = self._edit_data()
        requests = list(data.all_requests)
        check_marks(len(requests), eval_at=self.eval_at, downstream_at=self.downstream_at)
        check_request_lengths(requests, state.tokenizer, state.model)
        self._checkpoints = RunCheckpoints(self.trainer, self.editor, state, hp.model_name, hp.dtype, data.batch_size,
                                           hp.checkpoint_dir, hp.run_name, keep=hp.keep_checkpoints)
        ckpt = self._checkpoints.to_resume(hp.resume, requests, overwrite=hp.overwrite)
        # Locality compares against what the *unedited* model predicted, so record that first.
        self._evaluation = RunEvaluation(self.trainer, state, self.downstream, hp.eval_batch_size, hp.downstream_cache, self.cost)
        self._evaluation.record_references(requests, hp.probe_tokens, hp.probe_window, hp.data_dir)
        if ckpt is not None:
            # An extended run (more edits than the checkpoint's) scores the 'before' column of all its cases, as a
            # fresh run of that length does; the model is still unedited here.
            before = ckpt.state.get("results", {}).get("edits_before")
            rescored = None
            if before is not None and before.get("n") != len(requests):
                with self.cost.measure("edits_before"):
                    rescored = self._evaluation.score_edits(requests)
            self.results = self._checkpoints.restore(ckpt, requests)
            if rescored is not None:
                self.results["edits_before"] = rescored
            self._restore_cost(self.results.pop("cost", None), state.requests_seen)
            self._resumed_steps = state.steps
            return
        self.results.update(self._evaluation.before(requests, hp.evaluate_before))

    def _run_parts(self) -> tuple[RunEvaluation, RunCheckpoints]:
        if self._evaluation is None or self._checkpoints is None:
            raise RuntimeError("SequentialEditingModule.on_test_start has not run")
        return self._evaluation, self._checkpoints

    # ---- one edit step ------------------------------------------------------------------------
    def test_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        if batch_idx < self._resumed_steps:
            return  # edited before the resume
        state = self._state()
        evaluation, _ = self._run_parts()
        with self.cost.measure("edit_steps"):
            run_edit_step(self.trainer, self.editor, state, batch)
        previous, now = state.previous_requests_seen, state.requests_seen
        if crossed_any(previous, now, self.eval_at):
            evaluation.point(with_downstream=crossed_any(previous, now, self.downstream_at))
        elif crossed_any(previous, now, self.downstream_at):
            evaluation.point(with_edits=False, with_downstream=True)
        every = self.hparams.checkpoint_every
        if every and crossed(previous, now, every):
            self._save_checkpoint()

    # ---- the end of the run -------------------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        evaluation, _ = self._run_parts()
        # Checkpoint *before* the end-of-run restraint and final evaluation: the checkpoint holds the unrestrained
        # state, so an extension continues from it and a resumed finished run repeats the end exactly once.
        self._save_checkpoint()
        with self.cost.measure("end_restraint"):
            changed = end_edits(self.trainer, self._state())
        self.results.update(evaluation.final(changed))
        self.results["end_restraint_changed_weights"] = changed
        if self.trainer.is_global_zero:
            self._write_results()
            if self.hparams.export_dir is not None:
                export_model(self.model, self.tokenizer, self.hparams.export_dir)

    def _write_results(self) -> None:
        state = self._state()
        restraint_seconds = sum(float(r.total_seconds) for r in restraints(self.trainer))
        edit_total = float(sum(state.step_seconds))
        self.results.update(
            model=self.hparams.model_name,
            editor=type(self.editor).__name__,
            callbacks=[type(cb).__name__ for cb in self.trainer.callbacks],
            num_edits=state.requests_seen,
            edits_applied=state.edits_applied,
            num_steps=state.steps,
            num_rejected_steps=state.rejected_steps,
            world_size=world(self.trainer)[1],
            seconds_editing=edit_total,
            seconds_per_edit=edit_total / max(state.requests_seen, 1),
            seconds_restraint=restraint_seconds,
            restraint_share_of_step=restraint_seconds / max(edit_total + restraint_seconds, 1e-12),
            history=state.history,
            edited_case_ids=[r.case_id for r in state.edited],
            code_commit=self.code_commit,
            cost=self._cost_so_far(),
        )
        path = run_dir(self.trainer) / "results.json"
        RunResults.from_dict(self.results).write(path)  # typed and versioned: prune_lit.contracts.results
        log.info("results written to %s", path)

    # ---- where the seconds went ---------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        _, checkpoints = self._run_parts()
        with self.cost.measure("checkpoints"):
            self.results["cost"] = self._cost_so_far()  # the checkpoint carries the ledger up to this save
            checkpoints.save(self.results)

    def _restore_cost(self, saved: dict[str, Any] | None, edits_seen: int) -> None:
        """Continue the resumed run's ledger (a checkpoint without one: the ledger starts at ``edits_seen``)."""
        base = RunCost.from_dict(saved) if saved is not None else RunCost(since_edits=edits_seen)
        base.absorb(self.cost)  # what this start measured before the checkpoint was read (its references)
        self.cost.since_edits, self.cost.parts, self._cost_before = base.since_edits, base.parts, base.total

    def _cost_so_far(self) -> dict[str, Any]:
        """The ledger as results.json holds it, ``total`` = earlier starts + this one until now."""
        wall0, cpu0 = self._started if self._started is not None else (time.perf_counter(), time.process_time())
        self.cost.total = dataclasses.replace(self._cost_before)
        self.cost.total.add(PartCost(time.perf_counter() - wall0, time.process_time() - cpu0, 1))
        return self.cost.to_dict()

    def configure_optimizers(self) -> None:  # editing needs no optimiser; editors own their inner loops
        return None
