"""General-ability probes: perplexity against a direct computation, KL against an unedited copy, the loader."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from prune_lit.data.wikitext import load_wikitext, token_windows, wikitext_windows
from prune_lit.metrics.probes import GeneralAbilityProbe, PerplexityKL, kl_from_logits, next_token_nll, nll_and_kl
from prune_lit.models.arch import get_weight, set_weight
from prune_lit.models.loader import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_TOKENS, WINDOW = 192, 48  # 4 windows: small enough for a 49k-vocab forward on one thread


def _mlp_weight_name(model) -> str:
    return "model.layers.1.mlp.down_proj.weight" if hasattr(model, "model") else "transformer.h.1.mlp.c_proj.weight"


@pytest.fixture()
def edited(tiny):
    """The tiny model with one MLP matrix perturbed (restored afterwards), plus an untouched copy."""
    model = tiny.model
    unedited = copy.deepcopy(model)
    name = _mlp_weight_name(model)
    w0 = get_weight(model, name).clone()
    set_weight(model, name, w0 + 0.5 * torch.randn(w0.shape, generator=torch.Generator().manual_seed(0)))
    yield model, unedited
    set_weight(model, name, w0)


# ---------------------------------------------------------------- the math


def test_next_token_nll_and_kl_on_hand_values():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]]])  # [1, 3, 2]
    ids = torch.tensor([[0, 1, 0]])
    nll = next_token_nll(logits, ids)
    assert nll.shape == (1, 2)
    assert nll[0, 0] == pytest.approx(torch.log(torch.tensor(2.0)).item())  # uniform over 2
    assert nll[0, 1] == pytest.approx(-F.log_softmax(torch.tensor([2.0, 0.0]), -1)[0].item())
    p, q = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    expected = float((p * (p / q).log()).sum())
    assert kl_from_logits(p.log(), q.log()).item() == pytest.approx(expected)
    assert kl_from_logits(p.log() + 3.0, p.log()).item() == pytest.approx(0.0, abs=1e-7)  # logits are shift-invariant


def test_fused_nll_and_kl_equal_the_definitions():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 9, 50, generator=g)
    ref = logits[:, :-1] + 0.3 * torch.randn(2, 8, 50, generator=g)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    ref_before = ref.clone()
    nll, kl = nll_and_kl(ref, logits[:, :-1], ids[:, 1:], chunk=5)  # chunks straddle the windows
    torch.testing.assert_close(nll, next_token_nll(logits, ids))
    torch.testing.assert_close(kl, kl_from_logits(ref, logits[:, :-1]))
    assert torch.equal(ref, ref_before)  # inputs are not modified
    assert (kl > 0).all()


def test_perplexity_kl_metric_accumulates_sums():
    m = PerplexityKL()
    m.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.2]))
    m.update(torch.tensor([[3.0]]), torch.tensor([[0.4]]))
    out = m.compute()
    assert out["nll"].item() == pytest.approx(2.0) and out["perplexity"].item() == pytest.approx(torch.e**2)
    assert out["kl_from_unedited"].item() == pytest.approx(0.2) and out["n_tokens"].item() == 3
    with pytest.raises(ValueError):
        m.update(torch.ones(2), torch.ones(3))


# ---------------------------------------------------------------- the probe on tiny models


def test_perplexity_equals_a_direct_computation(tiny):
    tiny.model.train()  # record and probe switch dropout off themselves and restore the mode
    probe = GeneralAbilityProbe.record(tiny.model, tiny.tokenizer, NUM_TOKENS, WINDOW, batch_size=3)
    assert probe.windows.shape == (NUM_TOKENS // WINDOW, WINDOW)
    result = probe.probe(tiny.model)
    assert tiny.model.training
    tiny.model.eval()
    with torch.inference_mode():  # one plain forward over all windows, the loss HF computes from labels
        loss = tiny.model(input_ids=probe.windows, labels=probe.windows).loss
    assert result.n_tokens == probe.windows.shape[0] * (WINDOW - 1)
    assert result.perplexity == pytest.approx(loss.exp().item(), rel=1e-5)
    assert result.nll == pytest.approx(sum(result.window_nll) / len(result.window_nll), rel=1e-6)  # equal-size windows
    assert result.perplexity > 1000  # a random model over a 49k vocabulary is close to uniform


def test_kl_is_zero_unedited_and_positive_after_a_weight_change(tiny, edited):
    model, unedited = edited
    probe = GeneralAbilityProbe.record(unedited, tiny.tokenizer, NUM_TOKENS, WINDOW)
    assert abs(probe.probe(unedited).kl_from_unedited) < 1e-6
    after = probe.probe(model)
    assert after.kl_from_unedited > 1e-3
    assert all(k > 0 for k in after.window_kl)


def test_stored_reference_matches_kl_from_a_full_unedited_copy(tiny, edited):
    """The reference keeps hidden states, not distributions: its KL must equal the one from full logits."""
    model, unedited = edited
    probe = GeneralAbilityProbe.record(unedited, tiny.tokenizer, NUM_TOKENS, WINDOW, batch_size=4)
    got = probe.probe(model).kl_from_unedited
    with torch.inference_mode():
        ref_logits = unedited(input_ids=probe.windows).logits[:, :-1]
        logits = model(input_ids=probe.windows).logits[:, :-1]
    direct = kl_from_logits(ref_logits, logits).mean().item()
    assert got == pytest.approx(direct, rel=1e-4, abs=1e-7)


def test_batch_size_does_not_change_the_result(tiny, edited):
    model, unedited = edited
    a = GeneralAbilityProbe.record(unedited, tiny.tokenizer, NUM_TOKENS, WINDOW, batch_size=1).probe(model)
    b = GeneralAbilityProbe.record(unedited, tiny.tokenizer, NUM_TOKENS, WINDOW, batch_size=4).probe(model)
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-5)
    assert a.kl_from_unedited == pytest.approx(b.kl_from_unedited, rel=1e-4)


def test_state_dict_round_trip_reproduces_the_probe(tiny, edited, tmp_path):
    """A resumed run cannot re-record from an edited model: the saved probe must give the same numbers."""
    model, unedited = edited
    probe = GeneralAbilityProbe.record(unedited, tiny.tokenizer, 96, 32)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    loaded = GeneralAbilityProbe.from_state_dict(torch.load(tmp_path / "probe.pt"))
    a, b = probe.probe(model), loaded.probe(model)
    assert (a.perplexity, a.kl_from_unedited, a.n_tokens) == (b.perplexity, b.kl_from_unedited, b.n_tokens)
    assert a.kl_from_unedited > 0


def test_shards_of_the_windows_add_up_to_the_whole(tiny, edited):
    """Without a process group each rank's result is its own share; token-weighted they give the full probe."""
    model, unedited = edited
    probe = GeneralAbilityProbe.record(unedited, tiny.tokenizer, 160, 32)  # 5 windows over 2 ranks: 3 + 2
    full = probe.probe(model)
    parts = [probe.probe(model, rank=r, world_size=2) for r in range(2)]
    assert [len(p.window_kl) for p in parts] == [3, 2] and sum(p.n_tokens for p in parts) == full.n_tokens
    assert parts[0].window_kl + parts[1].window_kl != full.window_kl  # interleaved, not split in halves
    assert sorted(parts[0].window_kl + parts[1].window_kl) == pytest.approx(sorted(full.window_kl))
    kl = sum(p.kl_from_unedited * p.n_tokens for p in parts) / full.n_tokens
    assert kl == pytest.approx(full.kl_from_unedited, rel=1e-6)
    with pytest.raises(ValueError, match="rank"):
        probe.probe(model, rank=2, world_size=2)


def _probe_on_rank(rank: int, world_size: int, init_file: str, state_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = load_model("tiny-llama", seed=0).model
        probe = GeneralAbilityProbe.from_state_dict(torch.load(state_file))
        r = probe.probe(model, rank=rank, world_size=world_size)
        if rank == 0:
            torch.save({"perplexity": r.perplexity, "kl": r.kl_from_unedited, "n_tokens": r.n_tokens}, out_file)
    finally:
        dist.destroy_process_group()


def test_totals_reduce_across_processes(tmp_path):
    """Two gloo processes, each probing its share: rank 0 reports the totals of the single-process probe."""
    import torch.multiprocessing as mp

    tiny = load_model("tiny-llama", seed=0)
    probe = GeneralAbilityProbe.record(tiny.model, tiny.tokenizer, 160, 32)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    full = probe.probe(tiny.model)
    mp.spawn(_probe_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "probe.pt"), str(tmp_path / "out.pt")), nprocs=2)
    got = torch.load(tmp_path / "out.pt")
    assert got["n_tokens"] == full.n_tokens
    assert got["perplexity"] == pytest.approx(full.perplexity, rel=1e-6)
    assert got["kl"] == pytest.approx(full.kl_from_unedited, abs=1e-7)


def test_an_edited_output_layer_is_refused(tiny):
    model = copy.deepcopy(tiny.model)
    probe = GeneralAbilityProbe.record(model, tiny.tokenizer, 64, 32)
    with torch.no_grad():
        model.get_output_embeddings().weight[5, 3] += 1.0
    with pytest.raises(RuntimeError, match="output layer changed"):
        probe.probe(model)


def test_result_dict_for_logs_and_results_json(tiny):
    r = GeneralAbilityProbe.record(tiny.model, tiny.tokenizer, 64, 32).probe(tiny.model)
    flat = r.as_dict()
    assert {"perplexity", "nll", "kl_from_unedited", "n_tokens", "seconds", "tokens_per_s"} <= set(flat)
    assert all(isinstance(v, (int, float)) for v in flat.values())
    assert len(r.as_dict(per_window=True)["per_window"]["kl"]) == 2


# ---------------------------------------------------------------- the WikiText-2 loader


def test_wikitext_windows_are_the_start_of_the_cleaned_test_split(tiny):
    text = load_wikitext("test")
    assert " @-@ " not in text and not any(line.startswith(" =") for line in text.splitlines()[:50])
    w = wikitext_windows(tiny.tokenizer, 100, 32)
    assert w.shape == (3, 32)  # rounded down to whole windows
    head = tiny.tokenizer(text[:2000], add_special_tokens=False)["input_ids"][:96]
    assert w.reshape(-1).tolist() == head
    assert not torch.equal(w, wikitext_windows(tiny.tokenizer, 100, 32, split="valid"))
    with pytest.raises(ValueError, match="split"):
        load_wikitext("train")


def test_short_text_gives_fewer_windows_with_a_warning(tiny, caplog):
    with caplog.at_level(logging.WARNING):
        w = token_windows(tiny.tokenizer, "one two three four five six seven eight nine ten " * 3, 64, 8)
    assert w.shape[1] == 8 and 1 <= w.shape[0] < 8 and "fewer than" in caplog.text
    with pytest.raises(ValueError, match="fewer than one window"):
        token_windows(tiny.tokenizer, "too short", 64, 32)
