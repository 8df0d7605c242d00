"""Second-moment key statistics: WikiText cleaning, correctness, and the on-disk cache."""

from __future__ import annotations

import pytest
import torch

from prune_lit.editors import stats as stats_mod
from prune_lit.editors.stats import clean_wikitext, collect_second_moments, second_moments, stats_path, wikitext_token_chunks
from prune_lit.models import load_model
from prune_lit.models.arch import arch_spec


def test_clean_wikitext_removes_artefacts_and_headings():
    raw = " \n = Robert Boulter = \n \n He had a guest @-@ starring role in 2 @,@ 000 films , 1 @.@ 5 each .\n = = Career = = \n"
    assert clean_wikitext(raw) == "He had a guest-starring role in 2,000 films , 1.5 each ."


def test_second_moment_matches_direct_computation():
    lm = load_model("tiny-gpt2")
    module = arch_spec(lm.model).mlp_out_name(1)
    chunks = torch.randint(0, 1000, (3, 16))
    C = collect_second_moments(lm.model, chunks, [module], batch_size=2, progress=False)[module]
    keys = []
    handle = lm.model.get_submodule(module).register_forward_hook(lambda m, i, o: keys.append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        lm.model(input_ids=chunks)
    handle.remove()
    k = torch.cat(keys).double()
    assert C.dtype == torch.float64 and C.shape == (256, 256)
    torch.testing.assert_close(C, k.T @ k / k.shape[0])


def test_cache_round_trip_reads_the_file_instead_of_recomputing(tmp_path, monkeypatch):
    lm = load_model("tiny-llama")
    module = arch_spec(lm.model).mlp_out_name(2)
    first = second_moments(lm.model, lm.tokenizer, "tiny-llama", [module], n_tokens=512, seq_len=64, root=tmp_path)[module]
    path = stats_path("tiny-llama", module, 512, "float32", tmp_path)
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))
    assert path.name == f"{module}_wikitext-2-valid_512_float32.safetensors"
    # Symmetric PSD with a positive diagonal.
    torch.testing.assert_close(first, first.T)
    assert torch.linalg.eigvalsh(first).min() > -1e-8 and (first.diagonal() > 0).all()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(stats_mod, "collect_second_moments", boom)
    second = second_moments(lm.model, lm.tokenizer, "tiny-llama", [module], n_tokens=512, seq_len=64, root=tmp_path)[module]
    assert torch.equal(first, second)
    # Other weights under the same name (another seed) must not read the stale file.
    other = load_model("tiny-llama", seed=1)
    with pytest.raises(AssertionError, match="recomputed"):
        second_moments(other.model, other.tokenizer, "tiny-llama", [module], n_tokens=512, seq_len=64, root=tmp_path)


def test_a_corrupt_cache_file_is_recomputed_not_fatal(tmp_path):
    lm = load_model("tiny-gpt2")
    module = arch_spec(lm.model).mlp_out_name(1)
    path = stats_path("tiny-gpt2", module, 256, "float32", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file at all")
    C = second_moments(lm.model, lm.tokenizer, "tiny-gpt2", [module], n_tokens=256, seq_len=64, root=tmp_path)[module]
    assert C.shape == (256, 256) and torch.isfinite(C).all()
    assert stats_mod._read_cached(path, stats_mod.weights_fingerprint(lm.model, module)) is not None  # rewritten


def test_token_chunks_have_the_requested_shape():
    tok = load_model("tiny-gpt2").tokenizer
    chunks = wikitext_token_chunks(tok, n_tokens=300, seq_len=128)
    assert chunks.shape == (3, 128) and chunks.dtype == torch.long


def test_statistics_never_read_the_wikitext_test_split(monkeypatch):
    """wiki.test.raw is reserved for the perplexity probe: the statistics read the validation split only."""
    read: list[str] = []
    real = stats_mod.resolve_data_file

    def spy(rel, data_dir=None, *args, **kwargs):
        read.append(rel)
        return real(rel, data_dir, *args, **kwargs)

    monkeypatch.setattr(stats_mod, "resolve_data_file", spy)
    tok = load_model("tiny-gpt2").tokenizer
    chunks = wikitext_token_chunks(tok, n_tokens=200, seq_len=50)
    assert read == ["corpus/wiki.valid.raw"]
    valid = stats_mod.clean_wikitext(real("corpus/wiki.valid.raw").read_text(encoding="utf-8"))
    assert chunks.reshape(-1).tolist() == tok(valid[:5000], add_special_tokens=False)["input_ids"][:200]
    monkeypatch.setattr(stats_mod, "WIKI_FILES", ("corpus/wiki.valid.raw", "corpus/wiki.test.raw"))
    with pytest.raises(RuntimeError, match="perplexity probe"):
        wikitext_token_chunks(tok, n_tokens=200, seq_len=50)


def test_more_tokens_than_the_corpus_holds_gives_all_of_it():
    tok = load_model("tiny-gpt2").tokenizer
    seq_len = 4096
    everything = wikitext_token_chunks(tok, n_tokens=10**9, seq_len=seq_len)
    valid = stats_mod.clean_wikitext(stats_mod.resolve_data_file("corpus/wiki.valid.raw").read_text(encoding="utf-8"))
    n_all = len(tok(valid, add_special_tokens=False)["input_ids"])
    assert everything.numel() == n_all // seq_len * seq_len


def test_the_editor_honours_mom2_n_samples_and_caches_by_it(tmp_path):
    from prune_lit.editors import ROMEEditor

    lm = load_model("tiny-llama")
    for n in (256, 512):
        editor = ROMEEditor(stats_dir=str(tmp_path), mom2_n_samples=n, mom2_seq_len=64, v_num_grad_steps=2)
        editor.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
        path = stats_path("tiny-llama", arch_spec(lm.model).mlp_out_name(1), n, "float32", tmp_path)
        assert path.is_file() and f"_{stats_mod.CORPUS_TAG}_{n}_" in path.name
        with stats_mod.safe_open(str(path), framework="pt") as fh:
            assert fh.metadata()["n_tokens"] == str(n) and "valid" in fh.metadata()["dataset"]
