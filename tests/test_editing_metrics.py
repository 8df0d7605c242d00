"""Scoring helpers and editing metrics: hand-made scores, padding invariance on tiny models, one real-model check."""

from __future__ import annotations

import math

import pytest
import torch

from prune_lit.data.requests import EditRequest
from prune_lit.metrics.editing import EditEfficacy, EditGeneralization, EditLocality, EditNeighborhood, EditTokenAccuracy
from prune_lit.metrics.editing_eval import EditScores, LocalityReference, evaluate_edits, record_locality_reference
from prune_lit.metrics.scoring import TargetScores, greedy_prefix_match, score_targets, target_logprobs, target_token_accuracy
from prune_lit.models.loader import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Different lengths (so batches are padded) and shared prompts with 1- and multi-token targets (KV-cache reuse).
PROMPTS = ["The capital of France is", "Hi", "Danielle Darrieux's mother tongue is", "a b c d e f g h i j k l m n", "Hi", "The capital of France is"]
TARGETS = ["Paris", "Rome is a city in Italy", "French", "x", "there", "Rome, Italy"]


# ---- metric classes on hand-made scores -------------------------------------------------------------


def test_efficacy_and_generalization_counts() -> None:
    m = EditEfficacy()
    m.update(torch.tensor([-1.0, -5.0, -2.0]), torch.tensor([-2.0, -1.0, -2.0]))  # win, loss, tie (no win)
    m.update(torch.tensor([-0.1]), torch.tensor([-3.0]))
    assert m.compute().item() == pytest.approx(2 / 4)
    g = EditGeneralization()
    g.update(torch.tensor([-1.0, -1.0]), torch.tensor([-0.5, -3.0]))
    assert g.compute().item() == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(EditEfficacy().compute().item())
    with pytest.raises(ValueError, match="same length"):
        m.update(torch.zeros(2), torch.zeros(3))


def test_neighborhood_prefers_true_answer() -> None:
    m = EditNeighborhood()
    m.update(logp_true=torch.tensor([-1.0, -4.0, -2.0]), logp_new=torch.tensor([-3.0, -1.0, -2.5]))
    assert m.compute().item() == pytest.approx(2 / 3)


def test_locality_all_tokens_must_match() -> None:
    m = EditLocality()
    pre = [torch.tensor([5, 6, 7]), torch.tensor([1]), torch.tensor([2, 3])]
    post = [torch.tensor([5, 6, 7]), torch.tensor([9]), torch.tensor([2, 4])]
    m.update(post, pre)
    assert m.compute().item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="example 0"):
        m.update([torch.tensor([1, 2])], [torch.tensor([1])])


def test_token_accuracy_is_mean_of_per_example_shares() -> None:
    m = EditTokenAccuracy()
    m.update([torch.tensor([1, 2, 3, 4]), torch.tensor([7])], [torch.tensor([1, 2, 0, 0]), torch.tensor([7])])
    assert m.compute().item() == pytest.approx((0.5 + 1.0) / 2)
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(m.compute().item())


def test_target_scores_reductions() -> None:
    s = TargetScores(
        target_ids=[torch.tensor([1, 2]), torch.tensor([3])],
        token_logprobs=[torch.tensor([-1.0, -3.0]), torch.tensor([-0.5])],
        predictions=[torch.tensor([1, 9]), torch.tensor([3])],
    )
    assert torch.allclose(s.logprob("sum"), torch.tensor([-4.0, -0.5]))
    assert torch.allclose(s.logprob("mean"), torch.tensor([-2.0, -0.5]))
    assert torch.allclose(s.accuracy(), torch.tensor([0.5, 1.0]))
    assert s.exact().tolist() == [False, True]


# ---- scoring on tiny random models -------------------------------------------------------------------


def _reference_scores(model, tok, prompt: str, target: str) -> tuple[float, list[int]]:
    """Unpadded, single-sequence, full-logits scoring written independently of score_targets."""
    p = tok(prompt)["input_ids"]
    t = tok(" " + target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([p + t])).logits[0].float().log_softmax(-1)
    rows = logp[len(p) - 1 : len(p) + len(t) - 1]
    return rows.gather(-1, torch.tensor(t)[:, None]).sum().item(), rows.argmax(-1).tolist()


def test_padded_batch_equals_single_example(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    batched = score_targets(model, tok, PROMPTS, TARGETS, batch_size=len(PROMPTS))
    lens = {len(tok(p)["input_ids"]) + len(tok(" " + t, add_special_tokens=False)["input_ids"]) for p, t in zip(PROMPTS, TARGETS)}
    assert len(lens) > 1  # the batch really is padded
    for i, (p, t) in enumerate(zip(PROMPTS, TARGETS)):
        ref_lp, ref_pred = _reference_scores(model, tok, p, t)
        single = target_logprobs(model, tok, [p], [t])
        assert single.item() == pytest.approx(ref_lp, abs=1e-4)
        assert batched.token_logprobs[i].sum().item() == pytest.approx(ref_lp, abs=1e-4)
        assert batched.predictions[i].tolist() == ref_pred
    # batch size does not change anything, and order is preserved
    small = target_logprobs(model, tok, PROMPTS, TARGETS, batch_size=1)
    assert torch.allclose(small, batched.logprob(), atol=1e-4)
    assert torch.allclose(target_logprobs(model, tok, PROMPTS, TARGETS, reduction="mean"), batched.logprob("mean"), atol=1e-4)


def test_accuracy_and_greedy_match_against_reference(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    acc = target_token_accuracy(model, tok, PROMPTS, TARGETS, batch_size=2)
    for i, (p, t) in enumerate(zip(PROMPTS, TARGETS)):
        _, ref_pred = _reference_scores(model, tok, p, t)
        t_ids = tok(" " + t, add_special_tokens=False)["input_ids"]
        assert acc[i].item() == pytest.approx(sum(a == b for a, b in zip(ref_pred, t_ids)) / len(t_ids))
    # greedy_prefix_match agrees with generate(): True for the model's own greedy word, False for another
    for prompt in ["The capital of France is", "Hello", "My name is", "One two three", "The cat sat on the", "I like", "We went to"]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False, pad_token_id=tok.pad_token_id)
        greedy = tok.decode(out[0, -1:])
        if greedy.startswith(" ") and len(greedy) > 1 and tok(greedy, add_special_tokens=False)["input_ids"] == out[0, -1:].tolist():
            break  # a word the tokenizer maps back to the same single token
    else:
        pytest.fail("no prompt whose greedy token round-trips through the tokenizer")
    other = "Paris" if greedy.strip() != "Paris" else "Rome"
    match = greedy_prefix_match(model, tok, [prompt, prompt], [greedy[1:], other])
    assert match.tolist() == [True, False]
    assert target_token_accuracy(model, tok, [prompt], [greedy[1:]]).item() == 1.0


def test_empty_inputs(tiny) -> None:
    s = score_targets(tiny.model, tiny.tokenizer, [], [])
    assert len(s) == 0 and s.logprob().shape == (0,)
    scores = evaluate_edits(tiny.model, tiny.tokenizer, [], LocalityReference())
    assert scores.n == 0 and math.isnan(scores.efficacy) and math.isnan(scores.locality_top1)


def test_bad_inputs(tiny) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        score_targets(tiny.model, tiny.tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        score_targets(tiny.model, tiny.tokenizer, [""], ["c"])


# ---- evaluate_edits ------------------------------------------------------------------------------------


def _requests() -> list[EditRequest]:
    return [
        EditRequest(0, "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French",
                    ("Danielle Darrieux speaks",), ("Michel Rocard is a native speaker of", "Jean Gabin speaks"), ("French", "French")),
        EditRequest(1, "Toko Yasuda plays the", "Toko Yasuda", "piano", "guitar", ("Toko Yasuda is incredible at",),
                    ("John Lennon performs on the",), ("guitar",)),
        EditRequest("z2", "What is made by UniFirst?", "UniFirst", "unmanned aircraft", "", ("What does UniFirst make?",),
                    ("nq question: who sang in the end",), ("Linkin Park",)),
    ]


def test_evaluate_edits_matches_metric_definitions(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    reqs = _requests()
    ref = record_locality_reference(model, tok, reqs)
    assert set(ref.predictions) == {0, 1, "z2"} and len(ref.predictions[0]) == 2
    scores = evaluate_edits(model, tok, reqs, ref, batch_size=4)
    assert isinstance(scores, EditScores) and scores.n == 3
    # unchanged model: top-1 locality is perfect by definition
    assert scores.locality_top1 == 1.0 and scores.locality_acc == 1.0
    # recompute efficacy / neighborhood / rewrite_acc by hand (request z2 has no ground truth: no efficacy),
    # comparing mean per-token log-probs as ROME's test_batch_prediction does (the default)
    lp = lambda p, t: target_logprobs(model, tok, [p], [t], reduction="mean").item()  # noqa: E731
    eff = [lp(r.prompt, r.target_new) > lp(r.prompt, r.ground_truth) for r in reqs[:2]]
    gen = [lp(r.rephrase_prompts[0], r.target_new) > lp(r.rephrase_prompts[0], r.ground_truth) for r in reqs[:2]]
    nb = [lp(p, a) > lp(p, r.target_new) for r in reqs for p, a in zip(r.locality_prompts, r.locality_answers)]
    acc = [target_token_accuracy(model, tok, [r.prompt], [r.target_new]).item() for r in reqs]
    assert scores.efficacy == pytest.approx(sum(eff) / 2)
    assert scores.generalization == pytest.approx(sum(gen) / 2)
    assert scores.neighborhood == pytest.approx(sum(nb) / 4)
    assert scores.rewrite_acc == pytest.approx(sum(acc) / 3)
    d = scores.as_dict("edit/")
    assert d["edit/n"] == 3.0 and set(d) >= {"edit/efficacy", "edit/neighborhood", "edit/locality_top1", "edit/locality_acc"}
    assert "edit/locality" not in d  # one name per meaning: neighborhood (the papers') or locality_top1


def test_mean_and_sum_comparisons_differ_where_lengths_differ() -> None:
    """A 1-token target at log-prob −1.5 against a 3-token target at −1 per token: the per-token mean
    (ROME's comparison) prefers the 3-token target, the full-sequence sum prefers the 1-token one."""
    one = TargetScores([torch.tensor([5])], [torch.tensor([-1.5])], [torch.tensor([5])])
    three = TargetScores([torch.tensor([1, 2, 3])], [torch.tensor([-1.0, -1.0, -1.0])], [torch.tensor([1, 2, 3])])
    assert three.logprob("mean") > one.logprob("mean") and three.logprob("sum") < one.logprob("sum")
    for reduction, expected in (("mean", 1.0), ("sum", 0.0)):  # efficacy of new = 3-token target vs true = 1-token
        m = EditEfficacy()
        m.update(three.logprob(reduction), one.logprob(reduction))
        assert float(m.compute()) == expected


def test_evaluate_edits_default_is_the_mean_per_token_comparison(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    reqs = _requests()
    default = evaluate_edits(model, tok, reqs, None)
    assert default == evaluate_edits(model, tok, reqs, None, reduction="mean")
    # the multi-token targets make the two comparisons disagree somewhere on this random model
    summed = evaluate_edits(model, tok, reqs, None, reduction="sum")
    lp = lambda p, t, red: target_logprobs(model, tok, [p], [t], reduction=red).item()  # noqa: E731
    for red, scores in (("mean", default), ("sum", summed)):
        nb = [lp(p, a, red) > lp(p, r.target_new, red) for r in reqs for p, a in zip(r.locality_prompts, r.locality_answers)]
        assert scores.neighborhood == pytest.approx(sum(nb) / 4)


def test_evaluate_edits_sees_changed_predictions(tiny) -> None:
    model, tok = tiny.model, tiny.tokenizer
    reqs = _requests()
    # a reference that disagrees everywhere must give locality 0
    ref = record_locality_reference(model, tok, reqs)
    flipped = LocalityReference({k: tuple(p + 1 for p in v) for k, v in ref.predictions.items()})
    scores = evaluate_edits(model, tok, reqs, flipped)
    assert scores.locality_top1 == 0.0 and scores.locality_acc == 0.0
    assert math.isnan(evaluate_edits(model, tok, reqs, None).locality_top1)
    with pytest.raises(KeyError, match="case 1"):
        evaluate_edits(model, tok, reqs, LocalityReference({0: ref.predictions[0]}))


# ---- the real model --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm_prefers_paris() -> None:
    lm = load_model("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    lp = target_logprobs(model, tok, ["The capital of France is"] * 2, ["Paris", "Rome"])
    assert lp[0] > lp[1]
    req = EditRequest(0, "The capital of France is", "France", "Rome", "Paris", ("France's capital city is",),
                      ("The capital of Germany is",), ("Berlin",))
    ref = record_locality_reference(model, tok, [req])
    scores = evaluate_edits(model, tok, [req], ref)
    assert scores.efficacy == 0.0 and scores.locality_top1 == 1.0
    # padded batch on the real model agrees with one-by-one scoring
    prompts = ["The capital of France is", "The mother tongue of Danielle Darrieux is", "Hi"]
    targets = ["Paris", "French", "there, how are you"]
    batched = target_logprobs(model, tok, prompts, targets, batch_size=3)
    single = torch.cat([target_logprobs(model, tok, [p], [t]) for p, t in zip(prompts, targets)])
    assert torch.allclose(batched, single, atol=1e-3)
