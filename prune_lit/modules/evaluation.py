"""The evaluations of a sequential-editing run: edit metrics, general-ability probes, downstream tasks, and the
same on a restrained copy (the "restrained at N" curve of an at-end restraint).

`RunEvaluation` scores the unedited model (`before`), every evaluation point (`point`) and the end of the run
(`final`); each section's scalars go to the logger under its tag, the full scores into the history rows and
results of the run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from typing import Any

import lightning as L
import torch

from prune_lit.contracts import EditRequest, EditState, restraints
from prune_lit.contracts.results import RunCost
from prune_lit.metrics.editing_eval import LocalityReference, evaluate_edits, record_locality_reference
from prune_lit.metrics.probes import GeneralAbilityProbe
from prune_lit.models.arch import get_weight
from prune_lit.models.loader import cache_dir
from prune_lit.modules.distributed import broadcast_object, shard, world
from prune_lit.modules.downstream_eval import DownstreamEvaluator
from prune_lit.reporting import log_scalars, write_json_atomic

log = logging.getLogger(__name__)

SECTIONS = ("edits", "probes", "downstream")


class RunEvaluation:
    """Evaluates ``state.model`` for one run (sharded over the trainer's ranks where the metric allows).

    Args:
        trainer: the run's trainer (ranks, logger).
        state: the run's state (model, tokenizer, edited cases, history).
        downstream: the downstream-task evaluator (None = no downstream tasks).
        eval_batch_size: prompts per forward pass when scoring edits.
        downstream_cache: reuse the unedited model's downstream scores from an earlier identical evaluation.
        cost: the run's ledger; each evaluation's seconds go to the part named like its results key.
    """

    def __init__(self, trainer: L.Trainer, state: EditState, downstream: DownstreamEvaluator | None, eval_batch_size: int,
                 downstream_cache: bool, cost: RunCost | None = None) -> None:
        self.trainer, self.state, self.downstream = trainer, state, downstream
        self.cost = cost if cost is not None else RunCost()
        self.eval_batch_size, self.downstream_cache = eval_batch_size, downstream_cache
        self.locality_reference: LocalityReference | None = None
        self.probe: GeneralAbilityProbe | None = None
        self._restrained_copy_fp: tuple[int, list[float]] | None = None  # (edit count, weights) of the last restrained copy

    def record_references(self, requests: list[EditRequest], probe_tokens: int, probe_window: int, data_dir: str | None) -> None:
        """What the *unedited* model predicts: locality answers (this rank's share) and the probes' distributions."""
        state = self.state
        with self.cost.measure("references"):
            self.locality_reference = record_locality_reference(state.model, state.tokenizer, shard(requests, self.trainer), self.eval_batch_size)
            if probe_tokens:
                self.probe = GeneralAbilityProbe.record(state.model, state.tokenizer, probe_tokens, probe_window, data_dir=data_dir)

    def before(self, requests: list[EditRequest], evaluate_before: bool) -> dict[str, Any]:
        """The unedited model's ``edits_before``, ``probes_before`` and ``downstream_before`` (those that apply)."""
        results: dict[str, Any] = {}
        if evaluate_before and requests:
            with self.cost.measure("edits_before"):
                scores = self.score_edits(requests)
            results["edits_before"] = scores
            self._log_section("edits_before", scores, 0)
        if self.probe is not None:
            results["probes_before"] = self._run_probe("probes_before", step=0)
        if self.downstream is not None:
            results["downstream_before"] = self._downstream_before()
        return results

    def score_edits(self, requests: list[EditRequest]) -> dict[str, float]:
        """Edit metrics over ``requests``; each rank scores its share and the metrics reduce across ranks."""
        state = self.state
        scores = evaluate_edits(state.model, state.tokenizer, shard(requests, self.trainer), self.locality_reference, self.eval_batch_size)
        out = dataclasses.asdict(scores)
        out["n"] = len(requests)
        return out

    def point(self, with_edits: bool = True, with_downstream: bool = False) -> None:
        """Evaluate now into this point's history row (and, for a restraint with a restrained-copy curve, on the copy too)."""
        row = self.state.row()
        row.update(self._measure("", with_edits, with_downstream))
        for restraint in restraints(self.trainer):
            if restraint.restrained_copy_curve:
                # the copy's own seconds (restrain, put back) are "restrained_copy"; its evaluations count as theirs
                with self.cost.measure("restrained_copy"), restraint.restrained_copy(self.state) as counts:
                    if any(counts.values()):
                        row.update(self._measure("_restrained", with_edits, with_downstream))
                    else:  # nothing above the bound: the copy is this model, its scores are the ones just measured
                        row.update(self._copy_measured(row, "_restrained"))
                    self._restrained_copy_fp = (self.state.requests_seen, self._weights_fp())

    def final(self, end_restraint_changed_weights: bool) -> dict[str, Any]:
        """The run's ``edits_after`` / ``probes_after`` / ``downstream_after``, measured now unless this point has them.

        When an at-end restraint changed the weights after this point's evaluation, those scores move to
        ``<section>_before_end_restraint``; if this point's restrained copy had these very weights, its scores
        are the final ones.
        """
        state = self.state
        final = state.row()
        if end_restraint_changed_weights:
            for key in SECTIONS:
                if key in final:
                    final[f"{key}_before_end_restraint"] = final.pop(key)
            if self._restrained_copy_fp == (state.requests_seen, self._weights_fp()):
                for key in SECTIONS:
                    if f"{key}_restrained" in final:
                        final[key] = final[f"{key}_restrained"]
        if "edits" not in final:
            final.update(self._measure("", with_edits=True, with_downstream=False))
        results: dict[str, Any] = {"edits_after": final["edits"]}
        if "probes" in final:
            results["probes_after"] = final["probes"]
        if self.downstream is not None:
            if "downstream" not in final:
                final["downstream"] = self._downstream(step=state.requests_seen, tag="downstream")
            results["downstream_after"] = final["downstream"]
        return results

    # ---- sections ---------------------------------------------------------------------------------
    def _measure(self, suffix: str, with_edits: bool, with_downstream: bool) -> dict[str, Any]:
        """``{"edits<suffix>": ..., "probes<suffix>": ..., "downstream<suffix>": ...}`` of the current weights."""
        out: dict[str, Any] = {}
        if with_edits:
            out["edits" + suffix] = self._evaluate_edited("edits" + suffix)
            if self.probe is not None:
                out["probes" + suffix] = self._run_probe("probes" + suffix)
        if with_downstream and self.downstream is not None:
            out["downstream" + suffix] = self._downstream(self.state.requests_seen, "downstream" + suffix)
        return out

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
        step = self.state.requests_seen
        for key in SECTIONS:
            if key in row:
                out[key + suffix] = copy.deepcopy(row[key])
                self._log_section(key + suffix, row[key], step)
        log.info("restrained copy at %d edits: nothing above σ_max(W₀), scores are the unrestrained ones", step)
        return out

    def _weights_fp(self) -> list[float]:
        """A cheap fingerprint of the edited matrices (float64 sums of |W| and W²)."""
        ws = [get_weight(self.state.model, n).double() for n in self.state.original_weights]
        return [float(v) for w in ws for v in (w.abs().sum(), (w * w).sum())]

    def _evaluate_edited(self, tag: str) -> dict[str, float]:
        state = self.state
        with self.cost.measure(tag):
            scores = self.score_edits(state.edited)
        self._log_section(tag, scores, state.requests_seen)
        log.info("%s after %d edits: %s", tag, state.requests_seen, fmt_scores(scores))
        return scores

    def _run_probe(self, tag: str, step: int | None = None) -> dict[str, Any]:
        """Perplexity and KL from the unedited model on the probe windows (sharded over ranks, gathered in order)."""
        assert self.probe is not None
        rank, size = world(self.trainer)
        with self.cost.measure(tag):
            out = self.probe.probe(self.state.model, rank, size).as_dict(per_window=True)
        if size > 1:  # each rank holds its own windows (every size-th): interleave them back into file order
            parts: list[Any] = [None] * size
            torch.distributed.all_gather_object(parts, out["per_window"])
            n = sum(len(p["nll"]) for p in parts)
            out["per_window"] = {k: [parts[i % size][k][i // size] for i in range(n)] for k in ("nll", "kl")}
        step = self.state.requests_seen if step is None else step
        self._log_section(tag, out, step)
        log.info("%s at %d edits: perplexity %.3f, KL %.4g", tag, step, out["perplexity"], out["kl_from_unedited"])
        return out

    def _downstream_before(self) -> dict[str, Any]:
        """The unedited model's downstream scores: from the cache when this exact evaluation ran before."""
        assert self.downstream is not None
        if not self.downstream_cache:
            return self._downstream(step=0, tag="downstream_before")
        state = self.state
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
        state = self.state
        with self.cost.measure(tag):
            scores = self.downstream.evaluate(state.model, state.tokenizer) if world(self.trainer)[0] == 0 else None
            scores = broadcast_object(self.trainer, scores)
        self._log_section(tag, scores, step)
        log.info("%s at %d edits: %s", tag, step, fmt_scores(scores))
        return scores


def fmt_scores(scores: dict[str, Any]) -> str:
    # Scalars only: per-example lists (downstream results) go to results.json, not the log line.
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items() if not isinstance(v, (dict, list)))
