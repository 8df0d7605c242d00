"""Hyperparameters of the locate-then-edit editors (ROME, MEMIT), loaded from commented YAML presets.

Presets live in ``prune_lit/hparams/{rome,memit}/<model_name>.yaml``. The random test models
(``tiny-gpt2`` / ``tiny-llama``) get the small built-in defaults below, so tests need no YAML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml

HPARAMS_DIR = Path(__file__).resolve().parents[1] / "hparams"

T = TypeVar("T", bound="LocateEditHParams")


AUTOCAST_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_DECAY_FORMS = ("norm", "squared")
UPDATE_ANCHORS = ("prompt", "mean")
KEY_AVERAGING = ("plain_half", "uniform")
MOM2_DATASETS = ("wikitext-2",)


@dataclass
class LocateEditHParams:
    """Settings shared by ROME and MEMIT (names follow kmeng01/rome and kmeng01/memit)."""

    layers: list[int]  # transformer blocks whose MLP output projection is rewritten
    v_num_grad_steps: int = 20  # Adam steps when optimising the new value / residual delta
    v_lr: float = 0.5  # Adam learning rate for that delta
    v_weight_decay: float = 0.5  # lambda of the value search's weight decay (form: v_weight_decay_form)
    # "norm": lambda ||delta|| / ||v_init||^2 (kmeng01/rome compute_v, memit compute_z, PRUNE);
    # "squared": lambda ||delta||^2 / ||v_init||^2 (this project's earlier form, kept to reproduce older runs)
    v_weight_decay_form: str = "norm"
    clamp_norm_factor: float = 4.0  # ||delta|| is clamped to clamp_norm_factor * ||v_init||
    kl_factor: float = 0.0625  # weight of the KL term on "{subject} is a" prompts (essence drift)
    early_stop_loss: float = 5e-2  # stop optimising once the total loss is below this
    # most-probable early stopping (Gupta et al. 2025): also stop once every target token is the argmax
    # continuation on every context-template prompt (not in the reference code)
    v_mpes: bool = False
    v_autocast: str = "float32"  # compute dtype of the value search's forwards/backwards (bfloat16: autocast)
    v_cache_lower_layers: bool = True  # run the blocks below the edited one once per value search, not every step
    # forward only the tokens from the subject's last token on at each step, the rest from a KV cache (same
    # numbers up to float rounding; replaces v_cache_lower_layers when on)
    v_prefix_cache: bool = True
    # [[length_in_tokens, how_many], ...] of model-generated prefixes ("{}" is always included)
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10]])
    context_template_seed: int = 0  # seed of the prefix sampler (deterministic templates)
    mom2_adjustment: bool = True  # use C = E[k k^T]; False uses the identity (EasyEdit's llama3 ROME)
    mom2_dataset: str = "wikitext-2"  # text the key statistics are computed on (the validation split only)
    mom2_n_samples: int = 100_000  # tokens the statistics average over (more than the corpus holds: all of it)
    mom2_dtype: str = "float32"  # dtype the model runs in while collecting statistics
    mom2_seq_len: int = 256  # tokens per sequence when chunking the corpus

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        if "layers" not in data:
            raise ValueError(f"{source}: missing required key 'layers'")
        hp = cls(**data)
        hp.validate(source)
        return hp

    def validate(self, source: str = "<hparams>") -> None:
        if not self.layers or any(int(x) < 0 for x in self.layers):
            raise ValueError(f"{source}: 'layers' must be a non-empty list of non-negative ints, got {self.layers}")
        if self.v_num_grad_steps < 1 or self.v_lr <= 0 or self.mom2_n_samples < 1:
            raise ValueError(f"{source}: v_num_grad_steps, v_lr and mom2_n_samples must be positive")
        if self.v_weight_decay_form not in WEIGHT_DECAY_FORMS:
            raise ValueError(f"{source}: v_weight_decay_form must be one of {WEIGHT_DECAY_FORMS}, got {self.v_weight_decay_form!r}")
        if self.mom2_dataset not in MOM2_DATASETS:
            raise ValueError(f"{source}: mom2_dataset must be one of {MOM2_DATASETS}, got {self.mom2_dataset!r}")
        if self.v_autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"{source}: v_autocast must be one of {sorted(AUTOCAST_DTYPES)}, got {self.v_autocast!r}")

    def target_search_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `prune_lit.editors.locate.optimise_target` these settings stand for."""
        return dict(
            num_steps=self.v_num_grad_steps,
            lr=self.v_lr,
            weight_decay=self.v_weight_decay,
            weight_decay_form=self.v_weight_decay_form,
            mpes=self.v_mpes,
            clamp_norm_factor=self.clamp_norm_factor,
            kl_factor=self.kl_factor,
            early_stop_loss=self.early_stop_loss,
            autocast_dtype=AUTOCAST_DTYPES[self.v_autocast],
            cache_lower_layers=self.v_cache_lower_layers,
            prefix_cache=self.v_prefix_cache,
        )

    def replace(self: T, **overrides: Any) -> T:
        out = dataclasses.replace(self, **overrides)
        out.validate("overrides")
        return out


@dataclass
class ROMEHParams(LocateEditHParams):
    """ROME: one layer, rank-one update with C^-1 k* as the key direction."""

    # Where the rank-one update is solved: "prompt" (kmeng01/rome compute_v): the residual and the
    # denominator at the bare prompt's key, dW = (v* - W k_plain) u^T / (k_plain^T u); "mean" (the ROME
    # paper's formula, MEMIT's convention): at the template-averaged key k. Both use u = C^-1 k.
    update_anchor: str = "prompt"

    def validate(self, source: str = "<hparams>") -> None:
        super().validate(source)
        if len(self.layers) != 1:
            raise ValueError(f"{source}: ROME edits exactly one layer, got layers={self.layers}")
        if self.update_anchor not in UPDATE_ANCHORS:
            raise ValueError(f"{source}: update_anchor must be one of {UPDATE_ANCHORS}, got {self.update_anchor!r}")


@dataclass
class MEMITHParams(LocateEditHParams):
    """MEMIT: several consecutive layers; the target is set at the last one's residual stream."""

    mom2_update_weight: float = 20_000.0  # lambda in (lambda C + K K^T)^-1: how hard old keys are preserved
    # How a request's key averages its templates: "plain_half" (kmeng01/memit compute_ks): 1/2 the bare
    # prompt's key + 1/2 the mean over generated templates; "uniform": the mean over all templates.
    key_averaging: str = "plain_half"

    def validate(self, source: str = "<hparams>") -> None:
        super().validate(source)
        if self.key_averaging not in KEY_AVERAGING:
            raise ValueError(f"{source}: key_averaging must be one of {KEY_AVERAGING}, got {self.key_averaging!r}")


# Small defaults for the random 4-layer test models (d=64): fast and deterministic. Their values are small
# (||v_init|| well below 1), so the reference weight decay lambda*||delta||/||v_init||^2 needs a small lambda.
_TINY: dict[str, dict[str, Any]] = {
    "rome": dict(layers=[1], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=1e-5, clamp_norm_factor=10.0,
                 context_template_length_params=[[5, 3]], mom2_n_samples=4_000, mom2_seq_len=64),
    "memit": dict(layers=[1, 2], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=1e-5, clamp_norm_factor=10.0,
                  context_template_length_params=[[5, 3]], mom2_n_samples=4_000, mom2_seq_len=64,
                  mom2_update_weight=100.0),
    # relative threshold and small L2: the random models' keys (|k|² ~ 1e-2) are far smaller than real ones
    "alphaedit": dict(layers=[1, 2], v_num_grad_steps=20, v_lr=0.5, v_weight_decay=1e-3, clamp_norm_factor=10.0,
                      context_template_length_params=[[5, 3]], mom2_n_samples=4_000, mom2_seq_len=64,
                      nullspace_threshold=0.1, nullspace_threshold_mode="relative", L2=0.01),
}


def preset_path(algo: str, model_name: str) -> Path:
    """``prune_lit/hparams/<algo>/<basename of model_name>.yaml``."""
    return HPARAMS_DIR / algo / f"{Path(str(model_name)).name}.yaml"


def load_hparams(cls: type[T], algo: str, hparams: str | None, model_name: str, **overrides: Any) -> T:
    """Hyperparameters from a YAML path, else the preset for ``model_name``, then ``overrides`` on top."""
    if hparams is not None:
        path = Path(hparams)
        if not path.is_file():
            raise FileNotFoundError(f"{algo} hyperparameter file {path} does not exist")
    else:
        path = preset_path(algo, model_name)
        if not path.is_file():
            if model_name in ("tiny-gpt2", "tiny-llama"):
                return cls.from_dict({**_TINY[algo], **overrides}, source=f"built-in {algo} defaults for {model_name}")
            available = sorted(p.stem for p in (HPARAMS_DIR / algo).glob("*.yaml"))
            raise FileNotFoundError(
                f"no {algo} preset for model {model_name!r} (looked for {path}); available: {available}. "
                f"Pass hparams=<path to a YAML>."
            )
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameters, got {type(data).__name__}")
    return cls.from_dict({**data, **overrides}, source=str(path))
