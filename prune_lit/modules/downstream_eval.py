"""General-ability evaluation on the four downstream tasks: one path for editing runs and the baseline.

``DownstreamEvaluator`` holds the task sets (a ``DownstreamDataModule``) and the generation settings, and
scores a model batch by batch (``start`` / ``step`` / ``finish``, built on ``run_task_batch`` and
``TaskScorer``). The sequential-editing module calls its ``evaluate`` before and after editing; the
Lightning ``BaselineEvaluation`` module (``configs/baseline.yaml``) feeds it the same data module's batches
through a test loop. Results keep every example's score (``per_example``) for intervals and paired tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import transformers
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prune_lit.reporting import log_scalars, run_dir, write_json_atomic
from prune_lit.data.downstream import DEFAULT_MAX_CONTEXT_TOKENS, TASKS, DownstreamDataModule
from prune_lit.data.requests import TaskExample
from prune_lit.metrics.downstream import (
    GSM8KExactMatch,
    NLIAccuracy,
    QAContainsMatch,
    QAExactMatch,
    QATokenF1,
    SummarizationRouge,
)
from prune_lit.metrics.scoring import choice_logprobs
from prune_lit.models.generation import GENERATION_ENGINES, apply_chat_template, generate_texts

log = logging.getLogger(__name__)

# Generation budget per task. reasoning: PRUNE's prompt already holds the rationale, so only the final number
# is generated (SmolLM2 writes one digit per token, hence 10 rather than PRUNE's 5); zero-shot CoT
# (reasoning_style="cot") needs ~256. summarization 25 and qa 20 are PRUNE's values. nli scores " True" vs
# " False" with one forward pass and generates nothing.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {"reasoning": 10, "summarization": 25, "qa": 20, "nli": 1}
COT_MAX_NEW_TOKENS = 256
# Where a continuation ends: each task's answer fits on one line (leading whitespace is skipped first).
DEFAULT_STOP_STRINGS: dict[str, tuple[str, ...]] = {"reasoning": ("\n",), "summarization": ("\n",), "qa": ("\n",), "nli": ()}
COT_STOP_STRINGS: tuple[str, ...] = ("\nQ:", "\n\n\n")
NLI_CHOICES = (" True", " False")  # after "answer:"; single tokens for SmolLM2 (3635, 4178)
NLI_CHAT_CHOICES = ("True", "False")  # the assistant turn starts without a space


def task_settings(
    max_new_tokens: Mapping[str, int] | None = None,
    stop_strings: Mapping[str, Sequence[str]] | None = None,
    reasoning_style: str = "prune",
) -> tuple[dict[str, int], dict[str, tuple[str, ...]]]:
    """Per-task generation budgets and stop strings: the defaults, adjusted for ``reasoning_style``, then overrides."""
    budgets, stops = dict(DEFAULT_MAX_NEW_TOKENS), dict(DEFAULT_STOP_STRINGS)
    if reasoning_style == "cot":
        budgets["reasoning"], stops["reasoning"] = COT_MAX_NEW_TOKENS, COT_STOP_STRINGS
    for task, n in (max_new_tokens or {}).items():
        if task not in TASKS:
            raise ValueError(f"max_new_tokens names unknown task {task!r}; expected one of {TASKS}")
        budgets[task] = int(n)
    for task, s in (stop_strings or {}).items():
        if task not in TASKS:
            raise ValueError(f"stop_strings names unknown task {task!r}; expected one of {TASKS}")
        stops[task] = tuple(s)
    return budgets, stops


@dataclass
class TaskBatchOutput:
    predictions: list[Any]  # generated text per example; for nli the predicted label (True = entailment)
    new_tokens: int  # generated tokens (0 for nli)
    seconds: float


def run_task_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TaskExample],
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    batch_size: int | None = None,
    chat_template: bool = False,
    engine: str = "loop",
) -> TaskBatchOutput:
    """Model outputs for ``examples`` (all of one task): greedy generation, or True/False scoring for nli.

    ``chat_template``: wrap each prompt as a user turn of the tokenizer's chat template (instruct models);
    the default feeds PRUNE's raw prompts, as the paper does with base models. ``engine``: the generation
    engine of `prune_lit.models.generation.generate_texts` (``"loop"`` or ``"hf"``; same outputs).
    """
    if not examples:
        return TaskBatchOutput([], 0, 0.0)
    tasks = {e.task for e in examples}
    if len(tasks) != 1:
        raise ValueError(f"a batch must hold one task, got {sorted(tasks)}")
    task = tasks.pop()
    prompts = [e.prompt for e in examples]
    bs = batch_size or len(prompts)
    start = time.perf_counter()
    if chat_template:
        prompts = apply_chat_template(tokenizer, prompts)
    if task == "nli":
        choices = NLI_CHAT_CHOICES if chat_template else NLI_CHOICES
        scores = choice_logprobs(model, tokenizer, prompts, choices, batch_size=bs, progress=False)
        preds: list[Any] = (scores[:, 0] > scores[:, 1]).tolist()
        n_new = 0
    else:
        res = generate_texts(model, tokenizer, prompts, max_new_tokens, bs, stop_strings or None, progress=False, engine=engine)
        preds, n_new = res.texts, res.new_tokens
    return TaskBatchOutput(preds, n_new, time.perf_counter() - start)


class TaskScorer(nn.Module):
    """The metrics of one task plus its timing; ``compute`` gives ``{"<task>/<metric>": value, ...}``."""

    def __init__(self, task: str, keep_samples: int = 5) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        self.task, self.keep_samples = task, keep_samples
        metrics: dict[str, nn.Module] = {
            "reasoning": {"exact_match": GSM8KExactMatch()},
            "summarization": {"rouge": SummarizationRouge()},
            "qa": {"exact_match": QAExactMatch(), "f1": QATokenF1(), "contains": QAContainsMatch()},
            "nli": {"accuracy": NLIAccuracy()},
        }[task]
        self.metrics = nn.ModuleDict(metrics)
        self.reset()

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()
        self.seconds, self.new_tokens, self.count = 0.0, 0, 0
        self.samples: list[dict[str, Any]] = []
        self.per_example: dict[str, list[float]] = {}

    def update(self, examples: Sequence[TaskExample], output: TaskBatchOutput) -> None:
        preds = output.predictions
        for name, m in self.metrics.items():
            if self.task == "nli":
                target: Any = [bool(e.label) for e in examples]
            elif self.task == "qa":
                target = [e.references for e in examples]
            else:
                target = [e.references[0] for e in examples]
            m.update(preds, target)
            scores = m.last_scores
            for key, values in (scores.items() if isinstance(scores, dict) else [(name, scores)]):
                self.per_example.setdefault(f"{self.task}/{key}", []).extend(float(v) for v in values)
        self.seconds += output.seconds
        self.new_tokens += output.new_tokens
        self.count += len(examples)
        for e, p in zip(examples, preds):
            if len(self.samples) >= self.keep_samples:
                break
            self.samples.append({"prompt_tail": e.prompt[-200:], "prediction": p, "references": list(e.references)})

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, m in self.metrics.items():
            value = m.compute()
            if isinstance(value, dict):
                out.update({f"{self.task}/{k}": float(v) for k, v in value.items()})
            else:
                out[f"{self.task}/{name}"] = float(value)
        out[f"{self.task}/time_s"] = self.seconds
        out[f"{self.task}/examples"] = float(self.count)
        out[f"{self.task}/examples_per_s"] = self.count / self.seconds if self.seconds > 0 else 0.0
        if self.task != "nli":
            out[f"{self.task}/new_tokens"] = float(self.new_tokens)
            out[f"{self.task}/tokens_per_s"] = self.new_tokens / self.seconds if self.seconds > 0 else 0.0
        return out


def add_totals(results: dict[str, float], tasks: Sequence[str]) -> dict[str, float]:
    """Adds ``total/time_s`` and ``total/tokens_per_s`` (generated tokens over the generation tasks' time)."""
    total_time = sum(results.get(f"{t}/time_s", 0.0) for t in tasks)
    gen_time = sum(results.get(f"{t}/time_s", 0.0) for t in tasks if t != "nli")
    gen_tokens = sum(results.get(f"{t}/new_tokens", 0.0) for t in tasks)
    results["total/time_s"] = total_time
    results["total/tokens_per_s"] = gen_tokens / gen_time if gen_time > 0 else 0.0
    return results


class DownstreamEvaluator:
    """Scores a model on the downstream tasks; build once from config, evaluate as often as needed.

    The tasks' examples come from ``self.data``, a `DownstreamDataModule` built from ``tasks``, ``limit``,
    ``data_dir``, ``seed``, ``batch_size``, ``max_context_tokens``, ``reasoning_style``; they are loaded on
    the first use (with that call's tokenizer, for truncation) and reused, so evaluations before and after
    editing see identical prompts. ``chat_template``: wrap prompts in the tokenizer's chat template
    (instruct models); ``keep_samples`` example predictions per task go to ``last_samples``.
    ``generation_engine``: ``"loop"`` (finished rows leave the batch) or ``"hf"`` (``model.generate``, the
    engine before the KV-cache loop); both give the same greedy outputs (tests/test_generation_smollm2.py).
    """

    def __init__(
        self,
        tasks: list[str] = list(TASKS),
        limit: int = 100,
        data_dir: str | None = None,
        batch_size: int = 8,
        max_new_tokens: dict[str, int] | None = None,
        seed: int = 0,
        stop_strings: dict[str, list[str]] | None = None,
        max_context_tokens: int | None = DEFAULT_MAX_CONTEXT_TOKENS,
        reasoning_style: str = "prune",
        chat_template: bool = False,
        keep_samples: int = 5,
        progress: bool = True,
        generation_engine: str = "loop",
    ) -> None:
        if generation_engine not in GENERATION_ENGINES:
            raise ValueError(f"unknown generation_engine {generation_engine!r}; expected one of {GENERATION_ENGINES}")
        self.generation_engine = generation_engine
        self.data = DownstreamDataModule(tasks, limit, data_dir, seed, batch_size, max_context_tokens, reasoning_style)
        self.tasks, self.batch_size = self.data.tasks, batch_size
        self.chat_template, self.keep_samples, self.progress = chat_template, keep_samples, progress
        self.max_new_tokens, self.stop_strings = task_settings(max_new_tokens, stop_strings, reasoning_style)
        self.scorers: dict[str, TaskScorer] = {}
        self.last_samples: dict[str, list[dict[str, Any]]] = {}

    @property
    def examples(self) -> dict[str, list[TaskExample]]:
        return self.data.examples

    def load(self, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, list[TaskExample]]:
        """The examples of every task (loaded on the first call; ``tokenizer`` cuts long contexts)."""
        return self.data.load(tokenizer)

    def fingerprint(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
        """A digest of everything ``evaluate`` depends on: the examples (after truncation with ``tokenizer``),
        the generation settings, the batch size (padding), the library versions and the model's weights (per
        parameter: name, shape, dtype, float64 sums of |w| and w²). Equal digests give equal scores."""
        examples = self.load(tokenizer)
        digest = hashlib.sha256()
        settings = {
            "examples": {t: [dataclasses.asdict(e) for e in examples[t]] for t in self.tasks},
            "max_new_tokens": self.max_new_tokens, "stop_strings": self.stop_strings, "chat_template": self.chat_template,
            "batch_size": self.batch_size, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.padding_side],
        }
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        with torch.no_grad():
            for name, p in model.state_dict().items():
                w = p.detach().double()
                digest.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{float(w.abs().sum())!r}|{float((w * w).sum())!r}".encode())
        return digest.hexdigest()[:32]

    # ---- batch by batch (the baseline's test loop), or all at once (``evaluate``) ----------------
    def start(self) -> None:
        """Fresh scores for a new evaluation."""
        self.scorers = {t: TaskScorer(t, self.keep_samples) for t in self.tasks}

    def step(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: Sequence[TaskExample]) -> TaskBatchOutput:
        """Run the model on one batch (all of one task) and add it to that task's scores."""
        task = batch[0].task
        out = run_task_batch(
            model, tokenizer, batch, self.max_new_tokens[task], self.stop_strings[task], chat_template=self.chat_template, engine=self.generation_engine
        )
        self.scorers[task].update(batch, out)
        return out

    def finish(self) -> dict[str, Any]:
        """``{"<task>/<metric>": float, ..., "total/...": float, "per_example": {"<task>/<metric>": [score per
        example, in evaluation order]}}``; each metric is the mean of its per-example scores."""
        results: dict[str, Any] = {}
        for task, scorer in self.scorers.items():
            results.update(scorer.compute())
            self.last_samples[task] = scorer.samples
        results = add_totals(results, list(self.scorers))
        results["per_example"] = {k: v for scorer in self.scorers.values() for k, v in scorer.per_example.items()}
        return results

    def evaluate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """``{"reasoning/exact_match", "summarization/rouge1|2|L", "qa/exact_match|f1|contains", "nli/accuracy",
        "<task>/time_s", "<task>/tokens_per_s", ..., "total/time_s", "total/tokens_per_s", "per_example"}``."""
        self.load(tokenizer)
        was_training = model.training
        model.eval()
        self.start()
        try:
            for task, loader in zip(self.tasks, self.data.test_dataloader()):
                for batch in tqdm(loader, desc=f"eval {task}", disable=not self.progress, leave=False):
                    self.step(model, tokenizer, batch)
        finally:
            model.train(was_training)
        return self.finish()


class BaselineEvaluation(L.LightningModule):
    """Scores an unedited model with ``downstream`` (the evaluator of the editing configs) and writes
    ``results.json``: the test loop runs over the evaluator's own data module, batch by batch.

    Run without a ``data`` section (``configs/baseline.yaml``): the tasks and their settings are
    ``downstream``'s.
    """

    def __init__(
        self,
        model_name: str = "smollm2-135m",
        dtype: str = "float32",
        downstream: DownstreamEvaluator | None = None,
        results_file: str = "results.json",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["downstream"])
        self.model_name, self.dtype_name, self.results_file = model_name, dtype, results_file
        self.downstream = downstream if downstream is not None else DownstreamEvaluator()
        self.model: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.results: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        if self.trainer.datamodule is not None:
            raise ValueError(
                "BaselineEvaluation takes its tasks from model.init_args.downstream; drop the config's data section"
            )
        if self.model is None:
            from prune_lit.models.loader import load_model

            loaded = load_model(self.model_name, dtype=self.dtype_name)
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.downstream.load(self.tokenizer)

    def test_dataloader(self) -> list[Any]:
        return self.downstream.data.test_dataloader()

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # lists of TaskExample (text); the model tokenizes onto its own device

    def on_test_epoch_start(self) -> None:
        self._wall_start = time.perf_counter()
        self.downstream.start()

    def test_step(self, batch: list[TaskExample], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not batch:
            return
        out = self.downstream.step(self.model, self.tokenizer, batch)
        log.info("%s batch %d: %d examples, %d new tokens, %.1f s", batch[0].task, batch_idx, len(batch), out.new_tokens, out.seconds)

    def on_test_epoch_end(self) -> None:
        ev = self.downstream
        results = ev.finish()
        results["total/wall_s"] = time.perf_counter() - self._wall_start
        self.results = results
        log_scalars(self.trainer, {k: v for k, v in results.items() if isinstance(v, float)}, step=0)
        tasks = ev.tasks
        payload = {
            "model": self.model_name,
            "dtype": self.dtype_name,
            "tasks": tasks,
            "examples_per_task": {t: ev.scorers[t].count for t in tasks},
            "max_new_tokens": {t: ev.max_new_tokens[t] for t in tasks},
            "stop_strings": {t: list(ev.stop_strings[t]) for t in tasks},
            "chat_template": ev.chat_template,
            "torch_threads": torch.get_num_threads(),
            "metrics": {k: v for k, v in results.items() if k != "per_example"},
            "per_example": results["per_example"],
            "samples": ev.last_samples,
        }
        path = run_dir(self.trainer) / self.results_file
        write_json_atomic(path, payload)
        log.info("baseline results written to %s", path)
        for k in sorted(payload["metrics"]):
            log.info("%s = %.4f", k, results[k])

    def configure_optimizers(self) -> None:
        return None
