"""The sequential-editing experiment as a LightningModule: one test batch = one edit step.

Edit i is applied to the model that edits 1..i-1 produced. One step, in this order (docs/architecture.md):

1. the editor computes and applies the step's update (rank 0; broadcast to the other ranks);
2. ``RESTRAIN``-phase callbacks (PRUNE) may rewrite the edited matrices;
3. ``MEASURE``-phase callbacks (spectral diagnostics) read them;
4. at ``eval_at`` / ``downstream_at`` counts the module evaluates (sharded over ranks);
5. every ``checkpoint_every`` requests the run state is checkpointed (rank 0), so a killed run resumes.

Only the editor (1) and restraint callbacks (2) write weights. The callbacks' place in ``trainer.callbacks``
does not matter: the module calls them itself, in phase order.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from prune_lit.analysis.schema import RunResults
from prune_lit.callbacks.base import edit_step_callbacks
from prune_lit.data.requests import EditRequest
from prune_lit.editors.base import Editor, EditResult
from prune_lit.metrics.editing_eval import evaluate_edits, record_locality_reference
from prune_lit.metrics.probes import GeneralAbilityProbe
from prune_lit.models.arch import get_weight, set_weight
from prune_lit.models.export import check_export_path, export_model
from prune_lit.models.loader import LoadedModel, cache_dir, load_model
from prune_lit.modules.distributed import broadcast_object, broadcast_step, shard, world
from prune_lit.modules.downstream_eval import DownstreamEvaluator
from prune_lit.modules.edit_state import EditState, crossed, crossed_any
from prune_lit.modules.run_checkpoint import (
    RunCheckpoint,
    RunCheckpointError,
    check_fingerprint,
    latest_checkpoint,
    load_run_checkpoint,
    restore_rng,
    save_run_checkpoint,
)
from prune_lit.reporting import log_scalars, run_dir, write_json_atomic

log = logging.getLogger(__name__)


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
            model, editor setting or edit stream); False starts over and replaces the run's checkpoints.
        run_name: the checkpoint folder's name (None: the logger's name, e.g. ``rome_prune``).
        restraint: a restraint callback (e.g. `SpectralRestraint`) added to the trainer's callbacks, so a
            config can set it without replacing ``trainer.callbacks`` (None = none from the module).
        diagnostics: a diagnostics callback (e.g. `SpectralDiagnostics`) added the same way. Their order in
            the list never matters: the module runs restraint before diagnostics (`prune_lit.callbacks.base`).
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
        run_name: str | None = None,
        restraint: L.Callback | None = None,
        diagnostics: L.Callback | None = None,
        export_dir: str | None = None,
        probe_tokens: int = 0,
        probe_window: int = 256,
        downstream_cache: bool = True,
    ) -> None:
        super().__init__()
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: only at the end), got {checkpoint_every}")
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
        self._locality_reference: Any = None
        self._probe: GeneralAbilityProbe | None = None
        self._restrained_copy_fp: tuple[int, list[float]] | None = None  # (edit count, weights) of the last restrained copy
        self._resumed_steps = 0  # test batches already edited by the run this one resumes

    # ---- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.state is not None:
            return
        hp = self.hparams
        if hp.export_dir is not None:
            check_export_path(hp.export_dir)  # fail now, not after the edits
        loaded = getattr(self, "_given_model", None) or load_model(hp.model_name, dtype=hp.dtype)
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
        return [cb for cb in (self.restraint, self.diagnostics) if cb is not None]

    def _all_requests(self) -> list[EditRequest]:
        dm = getattr(self.trainer, "datamodule", None)
        requests = getattr(dm, "all_requests", None)
        if requests is None:
            raise RuntimeError("SequentialEditingModule needs a datamodule exposing `all_requests` (e.g. EditDataModule)")
        return list(requests)

    def on_test_start(self) -> None:
        state = self._state()
        state.original_weights = {n: w.to(self.device) for n, w in state.original_weights.items()}
        requests = self._all_requests()
        ckpt = self._checkpoint_to_resume(requests)
        # Locality compares against what the *unedited* model predicted, so record that first (this rank's share).
        self._locality_reference = record_locality_reference(state.model, state.tokenizer, shard(requests, self.trainer), self.hparams.eval_batch_size)
        if self.hparams.probe_tokens:
            self._probe = GeneralAbilityProbe.record(
                state.model, state.tokenizer, self.hparams.probe_tokens, self.hparams.probe_window, data_dir=self.hparams.data_dir
            )
        if ckpt is not None:
            self._restore(ckpt, requests)
            return
        if self.hparams.evaluate_before and requests:
            scores = self._score_edits(requests)
            self.results["edits_before"] = scores
            self._log_section("edits_before", scores, 0)
        if self._probe is not None:
            self.results["probes_before"] = self._run_probe("probes_before", step=0)
        if self.downstream is not None:
            self.results["downstream_before"] = self._downstream_before()

    # ---- one edit step ------------------------------------------------------------------------
    def test_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        if batch_idx < self._resumed_steps:
            return  # edited before the resume
        state = self._state()
        start = time.perf_counter()
        result: EditResult | None = None
        if world(self.trainer)[0] == 0:
            # The evaluation loop runs under no_grad; ROME's value optimisation and MEND's fine-tuning gradient
            # need autograd.
            with torch.enable_grad():
                result = self.editor.edit(state.model, state.tokenizer, batch)
        result = broadcast_step(self.trainer, state.model, result)
        state.record_step(batch, result, time.perf_counter() - start)
        if not result.applied:
            log.warning("edit step %d (cases %s) was rejected", state.steps, [r.case_id for r in batch])
        stats = {f"edit/{k}": v for k, v in result.stats.scalars().items()}
        stats.update({"edit/seconds": state.step_seconds[-1], "edit/applied": float(result.applied)})
        log_scalars(self.trainer, stats, state.requests_seen)

        for cb in edit_step_callbacks(self.trainer):
            cb.on_edit_step(self.trainer, state)

        previous, now = state.previous_requests_seen, state.requests_seen
        if crossed_any(previous, now, self.eval_at):
            self._evaluate_point(with_downstream=crossed_any(previous, now, self.downstream_at))
        elif crossed_any(previous, now, self.downstream_at):
            self._evaluate_point(with_edits=False, with_downstream=True)
        every = self.hparams.checkpoint_every
        if every and crossed(previous, now, every):
            self._save_checkpoint()

    # ---- evaluation ---------------------------------------------------------------------------
    def _score_edits(self, requests: list[EditRequest]) -> dict[str, float]:
        """Edit metrics over ``requests``; each rank scores its share and the metrics reduce across ranks."""
        state = self._state()
        scores = evaluate_edits(state.model, state.tokenizer, shard(requests, self.trainer), self._locality_reference, self.hparams.eval_batch_size)
        out = dataclasses.asdict(scores)
        out["n"] = len(requests)
        return out

    def _evaluate_point(self, with_edits: bool = True, with_downstream: bool = False) -> None:
        """Evaluate now (and, for at-end restraint with ``evaluate_at_end_curve``, on a restrained copy too)."""
        row = self._state().row()
        row.update(self._measure("", with_edits, with_downstream))
        for cb in edit_step_callbacks(self.trainer):
            if getattr(cb, "evaluate_at_end_curve", False) and getattr(cb, "enabled", True):
                with cb.restrained_copy(self._state()) as counts:
                    if any(counts.values()):
                        row.update(self._measure("_restrained", with_edits, with_downstream))
                    else:  # nothing above the bound: the copy is this model, its scores are the ones just measured
                        row.update(self._copy_measured(row, "_restrained"))
                    self._restrained_copy_fp = (self._state().requests_seen, self._weights_fp())

    def _log_section(self, tag: str, scores: dict[str, Any], step: int) -> None:
        """Log one evaluation section's scalars under ``tag/``: a probe's perplexity and KL (not its per-window
        lists), every other section's numbers but the case count ``n``."""
        if tag.startswith("probes"):
            scalars = {k: scores[k] for k in ("perplexity", "kl_from_unedited")}
        else:
            scalars = {k: v for k, v in scores.items() if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        log_scalars(self.trainer, {f"{tag}/{k}": v for k, v in scalars.items()}, step)

    def _copy_measured(self, row: dict[str, Any], suffix: str) -> dict[str, Any]:
        """This point's scores under ``<key><suffix>`` names, logged as such (for a copy with identical weights)."""
        out: dict[str, Any] = {}
        step = self._state().requests_seen
        for key in ("edits", "probes", "downstream"):
            if key in row:
                out[key + suffix] = copy.deepcopy(row[key])
                self._log_section(key + suffix, row[key], step)
        log.info("restrained copy at %d edits: nothing above σ_max(W₀), scores are the unrestrained ones", step)
        return out

    def _weights_fp(self) -> list[float]:
        """A cheap fingerprint of the edited matrices (float64 sums of |W| and W²)."""
        state = self._state()
        ws = [get_weight(state.model, n).double() for n in state.original_weights]
        return [float(v) for w in ws for v in (w.abs().sum(), (w * w).sum())]

    def _measure(self, suffix: str, with_edits: bool, with_downstream: bool) -> dict[str, Any]:
        """``{"edits<suffix>": ..., "probes<suffix>": ..., "downstream<suffix>": ...}`` of the current weights."""
        out: dict[str, Any] = {}
        if with_edits:
            out["edits" + suffix] = self._evaluate_edited("edits" + suffix)
            if self._probe is not None:
                out["probes" + suffix] = self._run_probe("probes" + suffix)
        if with_downstream and self.downstream is not None:
            out["downstream" + suffix] = self._downstream(self._state().requests_seen, "downstream" + suffix)
        return out

    def _evaluate_edited(self, tag: str) -> dict[str, float]:
        state = self._state()
        scores = self._score_edits(state.edited)
        self._log_section(tag, scores, state.requests_seen)
        log.info("%s after %d edits: %s", tag, state.requests_seen, _fmt(scores))
        return scores

    def _run_probe(self, tag: str, step: int | None = None) -> dict[str, Any]:
        """Perplexity and KL from the unedited model on the probe windows (sharded over ranks, gathered in order)."""
        assert self._probe is not None
        state = self._state()
        rank, size = world(self.trainer)
        result = self._probe.probe(state.model, rank, size)
        out = result.as_dict(per_window=True)
        if size > 1:  # each rank holds its own windows (every size-th): interleave them back into file order
            parts: list[Any] = [None] * size
            torch.distributed.all_gather_object(parts, out["per_window"])
            n = sum(len(p["nll"]) for p in parts)
            out["per_window"] = {k: [parts[i % size][k][i // size] for i in range(n)] for k in ("nll", "kl")}
        step = state.requests_seen if step is None else step
        self._log_section(tag, out, step)
        log.info("%s at %d edits: perplexity %.3f, KL %.4g", tag, step, out["perplexity"], out["kl_from_unedited"])
        return out

    def _downstream_before(self) -> dict[str, Any]:
        """The unedited model's downstream scores: from the cache when this exact evaluation ran before."""
        assert self.downstream is not None
        if not self.hparams.downstream_cache or not hasattr(self.downstream, "fingerprint"):
            return self._downstream(step=0, tag="downstream_before")
        state = self._state()
        path = cache_dir() / "downstream_before" / f"{self.downstream.fingerprint(state.model, state.tokenizer)}.json"
        if path.is_file():
            scores = json.loads(path.read_text())
            self._log_section("downstream_before", scores, 0)
            log.info("downstream_before: the unedited model's scores from %s (same weights, examples and settings)", path)
            return scores
        scores = self._downstream(step=0, tag="downstream_before")
        if world(self.trainer)[0] == 0:
            write_json_atomic(path, scores)
        return scores

    def _downstream(self, step: int, tag: str) -> dict[str, float]:
        assert self.downstream is not None
        state = self._state()
        scores = self.downstream.evaluate(state.model, state.tokenizer) if world(self.trainer)[0] == 0 else None
        scores = broadcast_object(self.trainer, scores)
        self._log_section(tag, scores, step)
        log.info("%s at %d edits: %s", tag, step, _fmt(scores))
        return scores

    def on_test_epoch_end(self) -> None:
        state = self._state()
        before_end = {n: get_weight(state.model, n).clone() for n in state.original_weights}
        for cb in edit_step_callbacks(self.trainer):
            cb.on_edits_end(self.trainer, state)
        changed = any(not torch.equal(w, get_weight(state.model, n)) for n, w in before_end.items())
        final = state.row()
        if changed:  # an at-end restraint ran after this point's evaluation: keep those numbers under their own names
            for key in ("edits", "probes", "downstream"):
                if key in final:
                    final[f"{key}_before_end_restraint"] = final.pop(key)
            if self._restrained_copy_fp == (state.requests_seen, self._weights_fp()):
                # this point's restrained copy was these very weights: its scores are the final ones
                for key in ("edits", "probes", "downstream"):
                    if f"{key}_restrained" in final:
                        final[key] = final[f"{key}_restrained"]
        if "edits" not in final:
            final.update(self._measure("", with_edits=True, with_downstream=False))
        self.results["edits_after"] = final["edits"]
        if "probes" in final:
            self.results["probes_after"] = final["probes"]
        if self.downstream is not None:
            if "downstream" not in final:
                final["downstream"] = self._downstream(step=state.requests_seen, tag="downstream")
            self.results["downstream_after"] = final["downstream"]
        self._save_checkpoint()
        if self.trainer.is_global_zero:
            self._write_results()
            if self.hparams.export_dir is not None:
                export_model(self.model, self.tokenizer, self.hparams.export_dir)

    def _write_results(self) -> None:
        state = self._state()
        restrainers = [cb for cb in edit_step_callbacks(self.trainer) if hasattr(cb, "total_seconds")]
        restraint_seconds = sum(float(cb.total_seconds) for cb in restrainers)
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
        )
        path = run_dir(self.trainer) / "results.json"
        RunResults.from_dict(self.results).write(path)  # typed and versioned: prune_lit.analysis.schema
        log.info("results written to %s", path)

    # ---- checkpoints ----------------------------------------------------------------------------
    def _checkpoint_folder(self) -> Path | None:
        if self.hparams.checkpoint_dir is None:
            return None
        name = self.hparams.run_name or getattr(self.trainer.logger, "name", None) or "edit_run"
        return Path(self.hparams.checkpoint_dir) / str(name)

    def _fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint to continue this run (the edit count may grow)."""
        state = self._state()
        editor: dict[str, Any] = {"class": f"{type(self.editor).__module__}.{type(self.editor).__qualname__}"}
        hp = getattr(self.editor, "hp", None)
        if dataclasses.is_dataclass(hp):
            editor["hparams"] = dataclasses.asdict(hp)
        if hasattr(self.editor, "checkpoint"):
            editor["checkpoint"] = str(self.editor.checkpoint)
        restraint = [
            {k: getattr(cb, k) for k in ("alpha", "mode", "every_n_edits", "at_end_only", "enabled") if hasattr(cb, k)}
            for cb in edit_step_callbacks(self.trainer)
            if hasattr(cb, "restrain")
        ]
        fp = {
            "model_name": self.hparams.model_name,
            "dtype": self.hparams.dtype,
            "editor": editor,
            "weights": {n: list(w.shape) for n, w in state.original_weights.items()},
            "w0_abs_sum": {n: float(w.double().abs().sum()) for n, w in state.original_weights.items()},
            "batch_size": getattr(getattr(self.trainer, "datamodule", None), "batch_size", None),
            "restraint": restraint,
        }
        return json.loads(json.dumps(fp, default=str))  # as it reads back from state.json

    def _checkpoint_to_resume(self, requests: list[EditRequest]) -> RunCheckpoint | None:
        folder = self._checkpoint_folder()
        if not self.hparams.resume:
            if folder is not None and latest_checkpoint(folder) is not None:
                log.warning("starting over: the checkpoints in %s will be replaced (resume: true continues them)", folder)
            return None
        if folder is None:
            raise RunCheckpointError("resume: true needs checkpoint_dir")
        latest = latest_checkpoint(folder)
        if latest is None:
            raise RunCheckpointError(f"resume: true, but {folder} holds no checkpoint (no {folder / 'latest'})")
        ckpt = load_run_checkpoint(latest)
        check_fingerprint(ckpt, self._fingerprint())
        ids = ckpt.state.get("edited_case_ids", [])
        stream = [r.case_id for r in requests[: len(ids)]]
        if json.loads(json.dumps(stream, default=str)) != ids:
            raise RunCheckpointError(
                f"{latest / 'state.json'}: its {len(ids)} edited cases are not the first {len(ids)} of this run's edit stream "
                f"(another dataset, split, seed or order?)"
            )
        return ckpt

    def _restore(self, ckpt: RunCheckpoint, requests: list[EditRequest]) -> None:
        state = self._state()
        missing = sorted(set(state.original_weights) ^ set(ckpt.weights))
        if missing:
            raise RunCheckpointError(f"{ckpt.path / 'weights.safetensors'}: edited matrices differ from this editor's: {missing}")
        for name, w in ckpt.weights.items():
            target = get_weight(state.model, name)
            set_weight(state.model, name, w.to(target.device, target.dtype))
        c = ckpt.state["counters"]
        state.requests_seen, state.edits_applied = int(c["requests_seen"]), int(c["edits_applied"])
        state.steps, state.rejected_steps = int(c["steps"]), int(c["rejected_steps"])
        state.edited = list(requests[: state.requests_seen])
        state.step_seconds = [float(s) for s in ckpt.state.get("step_seconds", [])]
        state.history = list(ckpt.state.get("history", []))
        self.results = dict(ckpt.state.get("results", {}))
        self.editor.load_state_dict(ckpt.state.get("editor_state", {}))
        saved_cbs = ckpt.state.get("callbacks", {})
        for key, cb in self._callback_keys().items():
            if key in saved_cbs:
                cb.load_state_dict(saved_cbs[key])
        restore_rng(ckpt)
        self._resumed_steps = state.steps
        log.info("resumed from %s: %d requests seen in %d steps", ckpt.path, state.requests_seen, state.steps)

    def _callback_keys(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        for cb in edit_step_callbacks(self.trainer):
            base = type(cb).__qualname__
            key, i = base, 1
            while key in keys:
                i += 1
                key = f"{base}#{i}"
            keys[key] = cb
        return keys

    def _save_checkpoint(self) -> None:
        folder = self._checkpoint_folder()
        if folder is None or not self.trainer.is_global_zero:
            return
        state = self._state()
        doc = {
            "fingerprint": self._fingerprint(),
            "counters": state.counters(),
            "edited_case_ids": [r.case_id for r in state.edited],
            "step_seconds": state.step_seconds,
            "history": state.history,
            "results": self.results,
            "callbacks": {k: cb.state_dict() for k, cb in self._callback_keys().items()},
        }
        weights = {n: get_weight(state.model, n) for n in state.original_weights}
        path = save_run_checkpoint(folder, weights, doc, self.editor.state_dict())
        log.info("checkpoint after %d edits: %s", state.requests_seen, path)

    def configure_optimizers(self) -> None:  # editing needs no optimiser; editors own their inner loops
        return None


def _fmt(scores: dict[str, Any]) -> str:
    # Scalars only: per-example lists (downstream results) go to results.json, not the log line.
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items() if not isinstance(v, (dict, list)))
