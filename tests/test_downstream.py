"""Downstream tasks: loaders, metrics, generation, the evaluator and the baseline CLI run (tiny models)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from prune_lit.data.downstream import (
    DownstreamDataModule,
    MalformedRecordError,
    load_task,
    nli_prompt,
    qa_prompt,
)
from prune_lit.metrics.downstream import (
    GSM8KExactMatch,
    NLIAccuracy,
    QAContainsMatch,
    QAExactMatch,
    QATokenF1,
    SummarizationRouge,
    extract_number,
)
from prune_lit.modules.downstream_eval import DownstreamEvaluator, run_task_batch
from prune_lit.metrics.scoring import choice_logprobs
from prune_lit.models.generation import cut_at_stop, generate, generate_texts

# ---------------------------------------------------------------- fixtures: small task files


def _write_tasks(root: Path, n: int = 6) -> Path:
    d = root / "task-data"
    d.mkdir(parents=True)
    with open(d / "test-reasoning.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"Tom has {i} apples and buys 1,000 more. How many?", "answer": f"He has {i}+1000.\n#### {i + 1000:,}"}) + "\n")
    summaries = [{"id": str(i), "dialogue": f"A: hi {i}\r\nB: hello there friend number {i}", "summary": f"A greets B {i}."} for i in range(n)]
    (d / "test-summarization.json").write_text(json.dumps(summaries))
    with open(d / "test-OpenDomainQA.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"who is person {i}?", "answer": [f"Person {i}", "P"], "output": [f"\n\nPerson {i} is   a famous person."]}) + "\n")
    with open(d / "test-NLI.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "sentence1", "sentence2", "label"])
        for i in range(n):
            w.writerow([i, f"The cat {i} sat.", f"A cat {i} sat.", "entailment" if i % 2 == 0 else "not_entailment"])
    return root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return _write_tasks(tmp_path / "data")


@pytest.fixture(scope="module")
def tiny():
    from prune_lit.models.loader import load_model

    return load_model("tiny-llama", seed=0)


# ---------------------------------------------------------------- loaders


def test_loaders_build_prune_prompts(data_dir: Path) -> None:
    r = load_task("reasoning", data_dir, limit=None)
    assert len(r) == 6 and r[2].references == ("1002",)
    assert r[2].prompt == "Q: Tom has 2 apples and buys 1,000 more. How many? A:Let's think step by step. He has 2+1000. Therefore, the answer (arabic numerals) is:"
    cot = load_task("reasoning", data_dir, limit=None, reasoning_style="cot")
    assert "He has" not in cot[0].prompt and cot[0].prompt.endswith("Let's think step by step.")

    s = load_task("summarization", data_dir, limit=None)
    assert s[1].prompt == "A: hi 1\nB: hello there friend number 1\nTL;DR:" and s[1].references == ("A greets B 1.",)

    q = load_task("qa", data_dir, limit=None)
    assert q[3].prompt == qa_prompt("Person 3 is a famous person.", "who is person 3?")
    assert q[3].prompt == "Refer to the passage below and answer the following question. Passage: Person 3 is a famous person. Question: who is person 3? Answer:"
    assert q[3].references == ("Person 3", "P")

    n = load_task("nli", data_dir, limit=None)
    assert [e.label for e in n] == [True, False, True, False, True, False]
    assert n[0].prompt == nli_prompt("The cat 0 sat.", "A cat 0 sat.") == "The cat 0 sat. entails the A cat 0 sat.. True or False? answer:"


def test_subset_is_deterministic_and_seeded(data_dir: Path) -> None:
    a = load_task("qa", data_dir, limit=3, seed=0)
    b = load_task("qa", data_dir, limit=3, seed=0)
    c = load_task("qa", data_dir, limit=3, seed=1)
    assert a == b and len(a) == 3
    idx = [int(e.references[0].split()[-1]) for e in a]
    assert idx == sorted(idx)  # file order kept
    assert [e.prompt for e in a] != [e.prompt for e in c]
    assert len(load_task("qa", data_dir, limit=100)) == 6


def test_truncation_to_token_budget(data_dir: Path, tiny) -> None:
    tok = tiny.tokenizer
    full = load_task("qa", data_dir, limit=1, tokenizer=None)[0]
    cut = load_task("qa", data_dir, limit=1, tokenizer=tok, max_context_tokens=3)[0]
    passage = cut.prompt.split("Passage: ")[1].split(" Question:")[0]
    assert passage.endswith(" ...") and len(tok(passage[: -len(" ...")], add_special_tokens=False).input_ids) <= 3
    assert len(cut.prompt) < len(full.prompt)


@pytest.mark.parametrize(
    "task, fname, content, needle",
    [
        ("reasoning", "test-reasoning.jsonl", '{"question": "q", "answer": "a\\n#### 1"}\n{"question": "q", "answer": "no marker"}\n', "record 1"),
        ("reasoning", "test-reasoning.jsonl", '{"question": "q", "answer": "#### 1"}\n{not json\n', "record 1"),
        ("qa", "test-OpenDomainQA.jsonl", '{"question": "q", "answer": [], "output": ["p"]}\n', "record 0"),
        ("summarization", "test-summarization.json", '[{"dialogue": "d", "summary": "s"}, {"dialogue": "d"}]', "record 1"),
        ("nli", "test-NLI.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n", "record 1"),
    ],
)
def test_malformed_record_names_file_and_index(tmp_path: Path, task: str, fname: str, content: str, needle: str) -> None:
    (tmp_path / "task-data").mkdir()
    (tmp_path / "task-data" / fname).write_text(content)
    with pytest.raises(MalformedRecordError, match=needle) as err:
        load_task(task, tmp_path, limit=None)
    assert fname in str(err.value)


def test_unknown_task_rejected(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        load_task("translation", data_dir)


# ---------------------------------------------------------------- metrics


def test_extract_number() -> None:
    assert extract_number("so 3 + 4 = 7. #### 1,000") == "1000"
    assert extract_number("We get 5 then 6. The answer is $12.50 dollars, not 3") == "12.50"
    assert extract_number(" 18.\n") == "18"
    assert extract_number("no digits") is None
    assert extract_number("it is -4") == "-4"
    assert extract_number("3 apples, 4 pears: 7 in all") == "7"  # no marker: the last number


def test_gsm8k_exact_match() -> None:
    m = GSM8KExactMatch()
    m.update([" 18.", "The answer is 1,000.", "#### 7 and then 8", "no idea", "3.0"], ["18", "1000", "8", "5", "3"])
    # "#### 7 and then 8": the number right after the marker (7) is the answer, so it is wrong
    assert m.compute().item() == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        m.update(["1"], ["1", "2"])


def test_summarization_rouge() -> None:
    m = SummarizationRouge()
    m.update(["the cat sat on the mat", "completely unrelated words"], ["the cat sat on the mat", "a dog barked loudly"])
    out = m.compute()
    assert set(out) == {"rouge1", "rouge2", "rougeL"}
    assert out["rouge1"].item() == pytest.approx(0.5) and out["rouge2"].item() == pytest.approx(0.5)
    m.reset()
    m.update(["the cat"], ["the cat sat"])  # P=1, R=2/3 -> F1 = 0.8
    assert m.compute()["rouge1"].item() == pytest.approx(0.8)


def test_qa_metrics() -> None:
    preds = ["The Eiffel Tower!\nmore text", "Paris, France", "London"]
    refs = [("Eiffel tower",), ("Paris", "Lyon"), ("Berlin",)]
    em, f1, contains = QAExactMatch(), QATokenF1(), QAContainsMatch()
    for m in (em, f1, contains):
        m.update(preds, refs)
    assert em.compute().item() == pytest.approx(1 / 3)  # articles/punctuation/case normalised; only the first line counts
    assert f1.compute().item() == pytest.approx((1 + 2 / 3 + 0) / 3)  # "paris france" vs "paris": P=1/2, R=1
    assert contains.compute().item() == pytest.approx(2 / 3)


def test_nli_accuracy() -> None:
    m = NLIAccuracy()
    m.update(torch.tensor([True, False, True]), [True, True, True])
    m.update([False], [False])
    assert m.compute().item() == pytest.approx(3 / 4)


# ---------------------------------------------------------------- generation


PROMPTS = ["Hello", "The capital of France is a city called", "One two", "A much longer prompt with many more words in it than the others"]


def test_batched_generation_equals_one_by_one(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)
    res = generate_texts(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, progress=False)
    assert res.texts == batched and 0 < res.new_tokens <= 6 * len(PROMPTS)


def test_loop_engine_gives_hf_generate_texts_and_drops_finished_rows(tiny, one_thread) -> None:
    """The KV-cache loop returns model.generate's texts, while finished rows leave the batch (down to 4 rows; with
    one thread, the only case in which they may)."""
    model, tok = tiny.model, tiny.tokenizer
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]
    full = generate_texts(model, tok, prompts, max_new_tokens=10, batch_size=8, progress=False, engine="hf").texts
    # stop strings that end rows at different steps: a piece of several rows' continuations
    stops = sorted({t[3:5] for t in full if len(t) > 5})[:3]
    assert stops
    rows_fed: list[int] = []
    hook = model.register_forward_hook(lambda m, a, kw, o: rows_fed.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] == 1 else None, with_kwargs=True)
    try:
        loop = generate_texts(model, tok, prompts, max_new_tokens=10, batch_size=8, stop_strings=stops, progress=False, engine="loop")
    finally:
        hook.remove()
    hf = generate_texts(model, tok, prompts, max_new_tokens=10, batch_size=8, stop_strings=stops, progress=False, engine="hf")
    assert loop.texts == hf.texts
    assert loop.texts != full  # the stop strings did cut
    assert rows_fed[0] == 8 and min(rows_fed) >= 4 and min(rows_fed) < 8  # rows left, never below 4
    assert loop.new_tokens <= hf.new_tokens  # hf also counts a pad after a row's stop string while others ran on
    with pytest.raises(ValueError, match="engine"):
        generate_texts(model, tok, prompts, max_new_tokens=2, engine="beam")


def test_stop_strings_cut_output(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    full = generate(model, tok, PROMPTS[:2], max_new_tokens=8, batch_size=2)
    stop = full[0][len(full[0]) // 2 :][:2]  # a piece of the first continuation
    cut = generate(model, tok, PROMPTS[:2], max_new_tokens=8, batch_size=2, stop_strings=[stop])
    assert stop not in cut[0] and full[0].startswith(cut[0])
    assert cut_at_stop("  \nanswer\nmore", ["\n"]) == "answer"
    assert cut_at_stop("abcXdefYg", ["Y", "X"]) == "abc"


def test_choice_logprobs_matches_unpadded_forward(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    prompts = ["Is this true? answer:", "A longer statement that is here. True or False? answer:"]
    assert tok(" True", add_special_tokens=False).input_ids == [3635] and tok(" False", add_special_tokens=False).input_ids == [4178]
    scores = choice_logprobs(model, tok, prompts, (" True", " False"), batch_size=2)
    assert scores.shape == (2, 2) and (scores <= 0).all()
    for i, p in enumerate(prompts):
        ids = tok(p, return_tensors="pt").input_ids
        ref = model(ids).logits[0, -1].log_softmax(-1)
        assert torch.allclose(scores[i], ref[[3635, 4178]], atol=1e-4)
    # multi-token choices take the general path: sum of the continuation's token log-probs
    multi = choice_logprobs(model, tok, prompts, (" True story", " False"), batch_size=2)
    cont = tok(" True story", add_special_tokens=False).input_ids
    assert len(cont) > 1 and torch.allclose(multi[:, 1], scores[:, 1], atol=1e-4)
    ids = torch.tensor([tok(prompts[0]).input_ids + cont])
    logp = model(ids).logits[0].log_softmax(-1)
    expect = sum(logp[ids.shape[1] - len(cont) - 1 + k, t] for k, t in enumerate(cont))
    assert multi[0, 0].item() == pytest.approx(expect.item(), abs=1e-4)


# ---------------------------------------------------------------- evaluator and baseline run


def test_run_task_batch_rejects_mixed_tasks(data_dir: Path, tiny) -> None:
    mixed = load_task("qa", data_dir, limit=1) + load_task("nli", data_dir, limit=1)
    with pytest.raises(ValueError, match="one task"):
        run_task_batch(tiny.model, tiny.tokenizer, mixed, 2)


def test_evaluator_reports_all_metrics(data_dir: Path, tiny) -> None:
    ev = DownstreamEvaluator(limit=3, data_dir=str(data_dir), batch_size=2, max_new_tokens={"reasoning": 2, "summarization": 2, "qa": 2}, progress=False)
    out = ev.evaluate(tiny.model, tiny.tokenizer)
    for key in ("reasoning/exact_match", "summarization/rouge1", "summarization/rouge2", "summarization/rougeL", "qa/exact_match", "nli/accuracy"):
        assert 0.0 <= out[key] <= 1.0
    assert out["reasoning/examples"] == 3 and out["qa/new_tokens"] > 0 and out["total/tokens_per_s"] > 0
    nli = ev.examples["nli"]
    scores = choice_logprobs(tiny.model, tiny.tokenizer, [e.prompt for e in nli])
    expect = sum((bool(s[0] > s[1]) == e.label) for s, e in zip(scores, nli)) / len(nli)
    assert out["nli/accuracy"] == pytest.approx(expect)
    again = ev.evaluate(tiny.model, tiny.tokenizer)  # same prompts, deterministic model -> same scores
    assert {k: v for k, v in again.items() if "/time" not in k and "per_s" not in k} == {
        k: v for k, v in out.items() if "/time" not in k and "per_s" not in k
    }
    with pytest.raises(ValueError):
        DownstreamEvaluator(tasks=["bogus"])


def test_datamodule_batches_one_task_each(data_dir: Path) -> None:
    dm = DownstreamDataModule(tasks=["qa", "nli"], limit=5, data_dir=str(data_dir), batch_size=2, max_context_tokens=None)
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == 2
    batches = list(loaders[1])
    assert [len(b) for b in batches] == [2, 2, 1] and all(e.task == "nli" for b in batches for e in b)


def test_baseline_cli_writes_results(data_dir: Path, tmp_path: Path) -> None:
    from prune_lit.cli_main import main

    save_dir = tmp_path / "logs"
    cli = main(
        args=[
            "test",
            "--config", "baseline.yaml",
            "--model.init_args.model_name", "tiny-llama",
            "--model.init_args.downstream.init_args.max_new_tokens", "{reasoning: 2, summarization: 2, qa: 2}",
            "--model.init_args.downstream.init_args.limit", "2",
            "--model.init_args.downstream.init_args.data_dir", str(data_dir),
            "--model.init_args.downstream.init_args.max_context_tokens", "16",
            "--trainer.logger.init_args.save_dir", str(save_dir),
            "--trainer.enable_progress_bar", "false",
        ]
    )  # fmt: skip
    results = list(save_dir.glob("baseline/version_*/results.json"))
    assert len(results) == 1
    payload = json.loads(results[0].read_text())
    assert payload["model"] == "tiny-llama" and payload["examples_per_task"] == {"reasoning": 2, "summarization": 2, "qa": 2, "nli": 2}
    assert payload["chat_template"] is True  # the editing configs' prompt format
    assert {"reasoning/exact_match", "summarization/rougeL", "qa/exact_match", "nli/accuracy", "total/tokens_per_s"} <= set(payload["metrics"])
    assert len(payload["per_example"]["nli/accuracy"]) == 2
    assert list(results[0].parent.glob("events.out.tfevents.*"))
    # The baseline's test loop and the editing runs' evaluate() are one path: the same scores.
    ev = cli.model.downstream
    again = ev.evaluate(cli.model.model, cli.model.tokenizer)
    assert _scores(again) == _scores(payload["metrics"]) and again["per_example"] == payload["per_example"]


def _scores(results: dict) -> dict:
    return {k: v for k, v in results.items() if not any(s in k for s in ("time", "per_s", "wall", "per_example"))}


@pytest.mark.parametrize("chat_template", [False, True])
def test_one_path_gives_the_scores_of_before(tmp_path: Path, tiny, chat_template: bool) -> None:
    """Predictions and scores equal those of the evaluator before the single-path refactor (golden file from
    that code: tiny-llama, these fixture tasks, the same settings)."""
    golden = json.loads((Path(__file__).parent / "data" / "downstream_golden.json").read_text())[f"chat_template={str(chat_template).lower()}"]
    data = _write_tasks(tmp_path / "data", n=6)
    ev = DownstreamEvaluator(limit=5, data_dir=str(data), batch_size=2, max_new_tokens={"reasoning": 3, "summarization": 4, "qa": 4},
                             max_context_tokens=16, chat_template=chat_template, progress=False, keep_samples=5)  # fmt: skip
    out = ev.evaluate(tiny.model, tiny.tokenizer)
    assert _scores(out) == pytest.approx(golden["metrics"], abs=1e-7)
    for task, pairs in golden["predictions"].items():
        assert [e.prompt for e in ev.examples[task]] == [p for p, _ in pairs]
        assert [s["prediction"] for s in ev.last_samples[task]] == [pred for _, pred in pairs]
    # each metric is the mean of its per-example scores, one score per example
    for key, values in out["per_example"].items():
        assert len(values) == 5 and sum(values) / 5 == pytest.approx(out[key], abs=1e-6)


def test_baseline_refuses_a_data_section(data_dir: Path) -> None:
    import lightning as L

    from prune_lit.modules.downstream_eval import BaselineEvaluation

    module = BaselineEvaluation(model_name="tiny-llama", downstream=DownstreamEvaluator(limit=1, data_dir=str(data_dir), progress=False))
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="drop the config's data section"):
        trainer.test(module, datamodule=DownstreamDataModule(limit=1, data_dir=str(data_dir)))


def test_unedited_scores_are_reused_only_for_the_same_evaluation(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """downstream_cache: a second run with the same model, examples and settings reuses the unedited model's
    scores; other settings or other weights are evaluated afresh."""
    import lightning as L

    from prune_lit.data.edit_datamodule import EditDataModule
    from prune_lit.editors import ROMEEditor
    from prune_lit.modules.sequential_editing import SequentialEditingModule

    monkeypatch.setenv("PRUNE_LIT_CACHE", str(tmp_path / "cache"))
    calls: list[int] = []
    evaluate = DownstreamEvaluator.evaluate
    monkeypatch.setattr(DownstreamEvaluator, "evaluate", lambda self, m, t: calls.append(1) or evaluate(self, m, t))

    def run(name: str, limit: int = 2, model: str = "tiny-llama") -> dict:
        ev = DownstreamEvaluator(tasks=["nli"], limit=limit, data_dir=str(data_dir), batch_size=2, progress=False)
        module = SequentialEditingModule(editor=ROMEEditor(), model_name=model, downstream=ev, evaluate_before=False,
                                         checkpoint_dir=str(tmp_path / name), eval_at=[1])
        trainer = L.Trainer(logger=False, default_root_dir=str(tmp_path / name), inference_mode=False, enable_progress_bar=False,
                            enable_checkpointing=False)
        trainer.test(module, datamodule=EditDataModule(num_edits=1, batch_size=1))
        return module.results["downstream_before"]

    first = run("a")
    assert len(calls) == 2  # before, and after the edit
    assert run("b") == first and len(calls) == 3  # the unedited scores came from the cache
    run("c", limit=1)
    assert len(calls) == 5  # other examples: scored again
    run("d", model="tiny-gpt2")
    assert len(calls) == 7  # other weights: scored again
    assert len(list((tmp_path / "cache" / "downstream_before").glob("*.json"))) == 3
