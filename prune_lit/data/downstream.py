"""The four general-ability tasks PRUNE tracks during sequential editing, and a DataModule serving them.

Prompt formats follow PRUNE's ``test_tasks.py`` (mjy1111/PRUNE):

- reasoning (GSM8K), style ``"prune"``: ``Q: {question} A:Let's think step by step. {rationale} Therefore, the
  answer (arabic numerals) is:`` -- PRUNE feeds the *reference* rationale and asks only for the final number,
  so the task measures whether the model can still read off an answer (a few new tokens suffice). Style
  ``"cot"`` drops the rationale (zero-shot chain of thought; needs ~256 new tokens).
- summarization (SAMSum): ``{dialogue}\\nTL;DR:``.
- qa (Natural Questions): ``Refer to the passage below and answer the following question. Passage: {passage}
  Question: {question}? Answer:`` (PRUNE writes ``{question}. Answer:`` after a question that already ends
  in ``?``; we normalise to a single ``?``).
- nli (RTE): ``{s1} entails the {s2}. True or False? answer:``; label True for ``entailment``.

Passages and dialogues longer than ``max_context_tokens`` tokens are cut to their first ``max_context_tokens``
tokens (default 384: covers ~95% of SAMSum dialogues and ~99% of the NQ passages with SmolLM2's tokenizer)
so CPU runs stay bounded.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from prune_lit.data.paths import resolve_data_file
from prune_lit.data.requests import TaskExample

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("reasoning", "summarization", "qa", "nli")
TASK_FILES: dict[str, str] = {
    "reasoning": "task-data/test-reasoning.jsonl",
    "summarization": "task-data/test-summarization.json",
    "qa": "task-data/test-OpenDomainQA.jsonl",
    "nli": "task-data/test-NLI.tsv",
}
REASONING_STYLES: tuple[str, ...] = ("prune", "cot")
DEFAULT_MAX_CONTEXT_TOKENS = 384


class MalformedRecordError(ValueError):
    """A task file holds a record that cannot be turned into a TaskExample (names file and record index)."""


# ---------------------------------------------------------------- prompt builders (pure string functions)


def reasoning_prompt(question: str, rationale: str | None = None) -> str:
    """GSM8K prompt; with ``rationale`` it is PRUNE's (reference reasoning given, model states the number)."""
    if rationale is None:
        return f"Q: {question.strip()} A: Let's think step by step."
    return f"Q: {question.strip()} A:Let's think step by step. {rationale.strip()} Therefore, the answer (arabic numerals) is:"


def summarization_prompt(dialogue: str) -> str:
    return f"{dialogue.strip()}\nTL;DR:"


def qa_prompt(passage: str, question: str) -> str:
    q = question.strip().rstrip("?").rstrip()
    return f"Refer to the passage below and answer the following question. Passage: {passage.strip()} Question: {q}? Answer:"


def nli_prompt(sentence1: str, sentence2: str) -> str:
    return f"{sentence1.strip()} entails the {sentence2.strip()}. True or False? answer:"


def gsm8k_final_answer(answer: str) -> str:
    """The number after ``####`` in a GSM8K answer, commas removed (``"... #### 1,000"`` -> ``"1000"``)."""
    if "####" not in answer:
        raise ValueError("no '####' in answer")
    num = answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "")
    if not num:
        raise ValueError("empty final answer after '####'")
    return num


# ---------------------------------------------------------------- raw readers (one per file format)


def _read_jsonl(path: Path) -> list[Any]:
    records = []
    with open(path, encoding="utf8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise MalformedRecordError(f"{path}: record {len(records)} (line {i + 1}) is not valid JSON: {err}") from err
    return records


def _read_json_list(path: Path) -> list[Any]:
    with open(path, encoding="utf8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise MalformedRecordError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise MalformedRecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _read_tsv(path: Path) -> list[Any]:
    with open(path, encoding="utf8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"sentence1", "sentence2", "label"} - set(reader.fieldnames or ())
        if missing:
            raise MalformedRecordError(f"{path}: header lacks column(s) {sorted(missing)}")
        return list(reader)


def _field(rec: Any, key: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    if key not in rec or rec[key] is None:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(rec[key], kind):
        raise ValueError(f"field {key!r} has type {type(rec[key]).__name__}")
    return rec[key]


# ---------------------------------------------------------------- loaders


def _truncate(text: str, tokenizer: PreTrainedTokenizerBase | None, max_tokens: int | None) -> str:
    if tokenizer is None or not max_tokens or max_tokens <= 0:
        return text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens]) + " ..."


def _select(n: int, limit: int | None, seed: int) -> list[int]:
    """A deterministic subset of ``range(n)``: ``limit`` indices drawn with ``seed``, in file order."""
    if limit is None or limit < 0 or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _build(task: str, rec: Any, tokenizer: PreTrainedTokenizerBase | None, max_ctx: int | None, reasoning_style: str) -> TaskExample:
    if task == "reasoning":
        question, answer = _field(rec, "question"), _field(rec, "answer")
        ref = gsm8k_final_answer(answer)
        rationale = answer.rsplit("####", 1)[0] if reasoning_style == "prune" else None
        return TaskExample(task, reasoning_prompt(question, rationale), (ref,))
    if task == "summarization":
        dialogue, summary = _field(rec, "dialogue"), _field(rec, "summary")
        dialogue = _truncate(dialogue.replace("\r\n", "\n"), tokenizer, max_ctx)
        return TaskExample(task, summarization_prompt(dialogue), (summary.strip(),))
    if task == "qa":
        question, answers, passages = _field(rec, "question"), _field(rec, "answer", list), _field(rec, "output", list)
        if not answers or not all(isinstance(a, str) for a in answers):
            raise ValueError("field 'answer' must be a non-empty list of strings")
        if not passages or not isinstance(passages[0], str):
            raise ValueError("field 'output' must be a non-empty list of passages")
        passage = _truncate(" ".join(passages[0].split()), tokenizer, max_ctx)
        return TaskExample(task, qa_prompt(passage, question), tuple(answers))
    if task == "nli":
        s1, s2, label = _field(rec, "sentence1"), _field(rec, "sentence2"), _field(rec, "label")
        if label not in ("entailment", "not_entailment"):
            raise ValueError(f"label {label!r} is neither 'entailment' nor 'not_entailment'")
        return TaskExample(task, nli_prompt(s1, s2), ("True" if label == "entailment" else "False",), label=label == "entailment")
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def load_task(
    task: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = 100,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_context_tokens: int | None = DEFAULT_MAX_CONTEXT_TOKENS,
    reasoning_style: str = "prune",
) -> list[TaskExample]:
    """Load ``limit`` examples of ``task`` (a seeded subset, in file order; ``None`` or -1 = all).

    ``tokenizer`` is used only to cut passages/dialogues to ``max_context_tokens`` (no cut when it is None).
    Raises MalformedRecordError naming the file and the record index for a bad record.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if reasoning_style not in REASONING_STYLES:
        raise ValueError(f"unknown reasoning_style {reasoning_style!r}; expected one of {REASONING_STYLES}")
    path = resolve_data_file(TASK_FILES[task], data_dir)
    reader: Callable[[Path], list[Any]] = {"reasoning": _read_jsonl, "qa": _read_jsonl, "summarization": _read_json_list, "nli": _read_tsv}[task]
    records = reader(path)
    examples = []
    for i in _select(len(records), limit, seed):
        try:
            examples.append(_build(task, records[i], tokenizer, max_context_tokens, reasoning_style))
        except (ValueError, TypeError) as err:
            raise MalformedRecordError(f"{path}: record {i} is malformed for task {task!r}: {err}") from err
    log.info("loaded %d %s examples from %s", len(examples), task, path)
    return examples


def load_tasks(
    tasks: Sequence[str] = TASKS,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = 100,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_context_tokens: int | None = DEFAULT_MAX_CONTEXT_TOKENS,
    reasoning_style: str = "prune",
    sort_by_length: bool = True,
) -> dict[str, list[TaskExample]]:
    """``load_task`` for each task; with ``sort_by_length`` each list is ordered by prompt length so that
    batches hold prompts of similar length (less left padding; metrics do not depend on the order)."""
    out = {}
    for task in tasks:
        examples = load_task(task, data_dir, limit, seed, tokenizer, max_context_tokens, reasoning_style)
        out[task] = sorted(examples, key=lambda e: len(e.prompt)) if sort_by_length else examples
    return out


def _collate(batch: list[TaskExample]) -> list[TaskExample]:
    return batch


class DownstreamDataModule(L.LightningDataModule):
    """The task sets: one test dataloader per task; each batch is a ``list[TaskExample]`` of a single task.

    `prune_lit.modules.downstream_eval.DownstreamEvaluator` holds one and scores a model on its batches, in
    editing runs and in the baseline alike. ``load(tokenizer)`` loads with the evaluated model's tokenizer
    (it counts the tokens of ``max_context_tokens``); ``setup`` alone uses SmolLM2's tokenizer unless
    ``tokenizer_name`` names a local HF dir.
    """

    def __init__(
        self,
        tasks: list[str] = list(TASKS),
        limit: int | None = 100,
        data_dir: str | None = None,
        seed: int = 0,
        batch_size: int = 8,
        max_context_tokens: int | None = DEFAULT_MAX_CONTEXT_TOKENS,
        reasoning_style: str = "prune",
        tokenizer_name: str | None = None,
    ) -> None:
        super().__init__()
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tasks = list(tasks)
        self.limit, self.data_dir, self.seed, self.batch_size = limit, data_dir, seed, batch_size
        self.max_context_tokens, self.reasoning_style, self.tokenizer_name = max_context_tokens, reasoning_style, tokenizer_name
        self.examples: dict[str, list[TaskExample]] = {}

    def _tokenizer(self) -> PreTrainedTokenizerBase | None:
        if not self.max_context_tokens:
            return None
        if self.tokenizer_name and Path(self.tokenizer_name).is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.tokenizer_name)
        from prune_lit.models.loader import load_tokenizer

        return load_tokenizer()

    def load(self, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, list[TaskExample]]:
        """The examples of every task, loaded on the first call (truncating with ``tokenizer``, else the
        module's own) and then reused, so that every evaluation sees identical prompts."""
        if not self.examples:
            tokenizer = tokenizer if tokenizer is not None or not self.max_context_tokens else self._tokenizer()
            self.examples = load_tasks(
                self.tasks, self.data_dir, self.limit, self.seed, tokenizer, self.max_context_tokens, self.reasoning_style
            )
        return self.examples

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        # Batches are lists of frozen TaskExample (strings only), which Lightning's default mover cannot
        # rebuild; the model tokenizes onto its own device.
        return batch

    def test_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(self.examples[t], batch_size=self.batch_size, shuffle=False, collate_fn=_collate, num_workers=0)
            for t in self.tasks
        ]
