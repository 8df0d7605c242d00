"""The sequential-editing experiment as a LightningModule: one test batch = one edit step.

Edit i is applied to the model that edits 1..i-1 produced. Callbacks (PRUNE restraint, spectral
diagnostics) run in ``on_test_batch_end`` before this module's own hook, so the evaluations at
``eval_at`` edit counts and at the end always see the restrained weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import lightning as L
import torch

from prune_lit.reporting import log_scalars, run_dir, write_json_atomic
from prune_lit.data.requests import EditRequest
from prune_lit.editors.base import Editor, EditResult
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference
from prune_lit.models.arch import get_weight
from prune_lit.models.export import check_export_path, export_model
from prune_lit.models.loader import load_model
from prune_lit.modules.downstream_eval import DownstreamEvaluator

log = logging.getLogger(__name__)


class SequentialEditingModule(L.LightningModule):
    """Applies ``editor`` to the batches of the test dataloader, one after another, and evaluates.

    Args:
        editor: the editing method (ROME, MEMIT, MEND), built from the config's ``class_path``.
        model_name: a preset of `prune_lit.models.load_model` or a local Hugging Face directory.
        dtype: weights dtype of the edited model.
        data_dir: data folder for the editor's statistics corpus (None = the usual resolution).
        eval_at: cumulative edit counts after which the edited cases so far are evaluated (the curve);
            the final count is always evaluated.
        downstream: downstream-task evaluator run before editing and after the last edit (None = skip).
        downstream_at: extra edit counts at which the downstream tasks are also evaluated.
        eval_batch_size: prompts per forward pass when scoring edits.
        evaluate_before: also score the edit cases on the unedited model (the 'before' column).
        restraint: a restraint callback (e.g. `SpectralRestraint`) added to the trainer's callbacks, so a
            config can set it without replacing ``trainer.callbacks`` (None = none from the module).
        diagnostics: a diagnostics callback (e.g. `SpectralDiagnostics`), added after ``restraint``.
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
        restraint: L.Callback | None = None,
        diagnostics: L.Callback | None = None,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["editor", "downstream", "restraint", "diagnostics"])
        self.editor = editor
        self.downstream = downstream
        self.restraint, self.diagnostics = restraint, diagnostics
        self.eval_at = sorted(set(eval_at or []))
        self.downstream_at = sorted(set(downstream_at or []))
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.original_weights: dict[str, torch.Tensor] = {}
        self.num_edits = 0
        self.num_rejected = 0
        self.last_result: EditResult | None = None
        self.edited: list[EditRequest] = []
        self.edit_seconds: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self._locality_reference: Any = None

    @property
    def num_steps(self) -> int:
        """Edit steps taken so far (one per test batch, applied or rejected)."""
        return len(self.edit_seconds)

    # ---- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        if hp.export_dir is not None:
            check_export_path(hp.export_dir)  # fail now, not after the edits
        loaded = load_model(hp.model_name, dtype=hp.dtype)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.editor.prepare(self.model, self.tokenizer, hp.model_name, hp.data_dir)
        # W_0 of every matrix the editor may touch: PRUNE and the diagnostics measure ΔW against it.
        self.original_weights = {
            name: get_weight(self.model, name).float().clone() for name in self.editor.weight_names(self.model)
        }

    def configure_callbacks(self) -> list[L.Callback]:
        # Lightning appends these after trainer.callbacks (replacing any of the same type there), restraint
        # first so the diagnostics see the restrained weights.
        return [cb for cb in (self.restraint, self.diagnostics) if cb is not None]

    def _all_requests(self) -> list[EditRequest]:
        dm = getattr(self.trainer, "datamodule", None)
        requests = getattr(dm, "all_requests", None)
        if requests is None:
            raise RuntimeError("SequentialEditingModule needs a datamodule exposing `all_requests` (e.g. EditDataModule)")
        return list(requests)

    def on_test_start(self) -> None:
        requests = self._all_requests()
        # Locality compares against what the *unedited* model predicted, so record that first.
        self._locality_reference = record_locality_reference(self.model, self.tokenizer, requests, self.hparams.eval_batch_size)
        if self.hparams.evaluate_before and requests:
            scores = evaluate_edits(self.model, self.tokenizer, requests, self._locality_reference, self.hparams.eval_batch_size)
            self.results["edits_before"] = asdict(scores)
            log_scalars(self.trainer, {f"edits_before/{k}": v for k, v in asdict(scores).items() if k != "n"}, 0)
        if self.downstream is not None:
            self.results["downstream_before"] = self._downstream(step=0, tag="downstream_before")

    # ---- one edit step ------------------------------------------------------------------------
    def test_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        start = time.perf_counter()
        # The evaluation loop runs under no_grad; ROME's value optimisation and MEND's fine-tuning
        # gradient need autograd.
        with torch.enable_grad():
            result = self.editor.edit(self.model, self.tokenizer, batch)
        seconds = time.perf_counter() - start
        self.last_result = result
        self.edited.extend(batch)
        self.num_edits += len(batch)
        self.edit_seconds.append(seconds)
        if not result.applied:
            self.num_rejected += 1
            log.warning("edit step %d (cases %s) was rejected", self.num_steps, [r.case_id for r in batch])
        stats = {f"edit/{k}": v for k, v in result.stats.scalars().items()}
        stats.update({"edit/seconds": seconds, "edit/applied": float(result.applied)})
        log_scalars(self.trainer, stats, self.num_edits)

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Evaluate when this step crossed one of the requested edit counts (a MEMIT batch may jump past it).
        previous = self.num_edits - len(batch)
        if any(previous < n <= self.num_edits for n in self.eval_at):
            self._evaluate_edited(tag="edits")
        if any(previous < n <= self.num_edits for n in self.downstream_at) and self.downstream is not None:
            row = self._downstream(step=self.num_edits, tag="downstream")
            self._row(self.num_edits)["downstream"] = row

    # ---- evaluation ---------------------------------------------------------------------------
    def _row(self, n: int) -> dict[str, Any]:
        if not self.history or self.history[-1]["num_edits"] != n:
            self.history.append({"num_edits": n})
        return self.history[-1]

    def _evaluate_edited(self, tag: str) -> dict[str, float]:
        scores = asdict(evaluate_edits(self.model, self.tokenizer, self.edited, self._locality_reference, self.hparams.eval_batch_size))
        log_scalars(self.trainer, {f"{tag}/{k}": v for k, v in scores.items() if k != "n"}, self.num_edits)
        self._row(self.num_edits)["edits"] = scores
        log.info("after %d edits: %s", self.num_edits, _fmt(scores))
        return scores

    def _downstream(self, step: int, tag: str) -> dict[str, float]:
        assert self.downstream is not None
        scores = self.downstream.evaluate(self.model, self.tokenizer)
        log_scalars(self.trainer, {f"{tag}/{k}": v for k, v in scores.items() if isinstance(v, (int, float))}, step)
        log.info("%s at %d edits: %s", tag, step, _fmt(scores))
        return scores

    def on_test_epoch_end(self) -> None:
        if not self.history or self.history[-1]["num_edits"] != self.num_edits or "edits" not in self.history[-1]:
            self._evaluate_edited(tag="edits")
        final = self.history[-1]
        self.results["edits_after"] = final["edits"]
        if self.downstream is not None:
            if "downstream" not in final:
                final["downstream"] = self._downstream(step=self.num_edits, tag="downstream")
            self.results["downstream_after"] = final["downstream"]
        self._write_results()
        if self.hparams.export_dir is not None and self.trainer.is_global_zero:
            export_model(self.model, self.tokenizer, self.hparams.export_dir)

    def _write_results(self) -> None:
        restraint_seconds = sum(getattr(cb, "total_seconds", 0.0) for cb in self.trainer.callbacks if hasattr(cb, "total_seconds"))
        edit_total = float(sum(self.edit_seconds))
        self.results.update(
            model=self.hparams.model_name,
            editor=type(self.editor).__name__,
            callbacks=[type(cb).__name__ for cb in self.trainer.callbacks],
            num_edits=self.num_edits,
            num_steps=self.num_steps,
            num_rejected_steps=self.num_rejected,
            seconds_editing=edit_total,
            seconds_per_edit=edit_total / max(self.num_edits, 1),
            seconds_restraint=restraint_seconds,
            restraint_share_of_step=restraint_seconds / max(edit_total + restraint_seconds, 1e-12),
            history=self.history,
            edited_case_ids=[r.case_id for r in self.edited],
        )
        path = run_dir(self.trainer) / "results.json"
        write_json_atomic(path, self.results, default=float)
        log.info("results written to %s", path)

    def configure_optimizers(self) -> None:  # editing needs no optimiser; editors own their inner loops
        return None


def _fmt(scores: dict[str, Any]) -> str:
    # Scalars only: per-example lists (downstream results) go to results.json, not the log line.
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items() if not isinstance(v, (dict, list)))
