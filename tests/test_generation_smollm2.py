"""Greedy generation on the real SmolLM2-135M: the KV-cache loop (finished rows leave the batch) gives exactly
the texts that Hugging Face's ``generate`` gave, on a healthy and on a collapsed model.

The expected texts in ``tests/data/generation_smollm2.json`` were written by ``engine="hf"`` (the evaluator's
engine before the loop existed) from the study's prompts (chat template, 200 examples per task, length-sorted;
two batches of 8 per task). Regenerate them (a few minutes of CPU) with

    python tests/test_generation_smollm2.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from prune_lit.models.generation import MIN_DECODE_ROWS, _greedy_rows, _tokenize, decode_floor, generate_texts

DATA = Path(__file__).parent / "data" / "generation_smollm2.json"
BATCH_STARTS = (0, 96)  # the shortest prompts and the median ones, in the evaluator's length order
COLLAPSE_SCALE = 400.0  # σ of the rank-one ΔW added to layer 4's down_proj, in units of σ_max(W₀) (ROME at ~700 edits)


def collapse(model: torch.nn.Module, layer: int = 4, scale: float = COLLAPSE_SCALE, seed: int = 0) -> None:
    """Adds a seeded rank-one ΔW with σ = ``scale``·σ_max(W₀) to ``model.model.layers[layer].mlp.down_proj``
    (in place): the shape of ROME's collapse, whose continuations stop at no stop rule."""
    w = model.model.layers[layer].mlp.down_proj.weight
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)
    sigma = torch.linalg.matrix_norm(w.detach().float(), ord=2)
    with torch.no_grad():
        w += (scale * sigma * torch.outer(u / u.norm(), v / v.norm())).to(w.dtype)


def _write() -> None:
    from prune_lit.models.loader import load_model
    from prune_lit.modules.downstream_eval import DownstreamEvaluator
    from prune_lit.models.generation import apply_chat_template

    lm = load_model("smollm2-135m")
    ev = DownstreamEvaluator(limit=200, chat_template=True, progress=False)
    examples = ev.load(lm.tokenizer)
    cases = []
    for state in ("healthy", "collapsed"):
        if state == "collapsed":
            collapse(lm.model)
        for task in ("reasoning", "summarization", "qa"):
            starts = BATCH_STARTS if state == "healthy" else BATCH_STARTS[:1]
            for s in starts:
                prompts = apply_chat_template(lm.tokenizer, [e.prompt for e in examples[task][s : s + 8]])
                res = generate_texts(lm.model, lm.tokenizer, prompts, ev.max_new_tokens[task], 8, ev.stop_strings[task], progress=False, engine="hf")
                cases.append({"model": state, "task": task, "start": s, "max_new_tokens": ev.max_new_tokens[task],
                              "stop_strings": list(ev.stop_strings[task]), "prompts": prompts, "texts": res.texts})
                print(state, task, s, res.texts[:2], flush=True)
    DATA.write_text(json.dumps({"model": "smollm2-135m", "engine": "hf", "batch_size": 8, "cases": cases}, indent=1) + "\n")


@pytest.fixture(scope="module")
def smollm2():
    from prune_lit.models.loader import load_model

    return load_model("smollm2-135m")


@pytest.mark.slow
@pytest.mark.parametrize("state", ["healthy", "collapsed"])
def test_loop_reproduces_hf_generate_texts(smollm2, state: str) -> None:
    model, tok = smollm2.model, smollm2.tokenizer
    cases = [c for c in json.loads(DATA.read_text())["cases"] if c["model"] == state]
    assert cases
    original = model.model.layers[4].mlp.down_proj.weight.detach().clone()
    try:
        if state == "collapsed":
            collapse(model)
        at_limit = 0
        for case in cases:
            res = generate_texts(model, tok, case["prompts"], case["max_new_tokens"], 8, case["stop_strings"], progress=False, engine="loop")
            assert res.texts == case["texts"], (state, case["task"], case["start"])
            at_limit += res.new_tokens == 8 * case["max_new_tokens"]
    finally:
        with torch.no_grad():
            model.model.layers[4].mlp.down_proj.weight.copy_(original)
    if state == "collapsed":  # some batch must really run every row to the limit, or the case tests nothing new
        assert at_limit >= 1


def test_gemm_rows_do_not_depend_on_the_row_count_from_min_decode_rows_up(one_thread) -> None:
    """Why a decode batch may shrink to MIN_DECODE_ROWS rows without changing any row's logits (SmolLM2's shapes),
    with one thread: the only case in which `decode_floor` lets rows leave."""
    assert decode_floor(8) == MIN_DECODE_ROWS
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 576, generator=g)
    for out_features in (576, 1536, 49152):
        w = torch.randn(out_features, 576, generator=g)
        full = torch.nn.functional.linear(x, w)
        for m in range(MIN_DECODE_ROWS, 8):
            assert torch.equal(torch.nn.functional.linear(x[:m], w), full[:m]), (out_features, m)


@pytest.mark.slow
def test_loop_logits_equal_hf_generate_bit_for_bit(smollm2) -> None:
    """At every step, every unfinished row's logits in the loop equal ``model.generate``'s raw logits exactly
    (8 study prompts, up to 12 steps; the loop keeps all 8 rows here, as generate does)."""
    model, tok = smollm2.model, smollm2.tokenizer
    case = next(c for c in json.loads(DATA.read_text())["cases"] if c["model"] == "healthy" and c["task"] == "qa" and c["start"] == 96)
    enc = _tokenize(tok, case["prompts"], torch.device("cpu"))
    eos = {int(model.generation_config.eos_token_id)} if isinstance(model.generation_config.eos_token_id, int) else set(model.generation_config.eos_token_id)
    with torch.no_grad():
        hf = model.generate(**enc, max_new_tokens=12, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos),
                            output_logits=True, return_dict_in_generate=True, temperature=None, top_p=None, top_k=None)
        caught: list[torch.Tensor] = []
        hook = model.register_forward_hook(lambda m, a, o: caught.append(o.logits[:, -1].float().clone()))
        try:
            rows = _greedy_rows(model, tok, enc, 12, eos, None, min_rows=8)
        finally:
            hook.remove()
    new = hf.sequences[:, enc["input_ids"].shape[1] :].tolist()
    assert [r == n[: len(r)] for r, n in zip(rows, new)] == [True] * 8
    assert len(caught) == len(hf.logits) >= 3
    for step, (ours, theirs) in enumerate(zip(caught, hf.logits)):
        alive = [i for i in range(8) if not any(t in eos for t in new[i][:step])]
        assert alive and torch.equal(ours[alive], theirs.float()[alive]), step


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    _write()


def test_no_row_leaves_a_batch_decoded_on_several_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert decode_floor(8) == 8 and decode_floor(3) == 3
    finally:
        torch.set_num_threads(before)
