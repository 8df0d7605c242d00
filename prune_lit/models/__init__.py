"""Model loading, per-architecture module paths, export as a Hugging Face directory."""

from prune_lit.models.arch import ArchSpec, arch_spec, get_module, get_weight, set_weight
from prune_lit.models.export import export_model
from prune_lit.models.loader import PRESETS, LoadedModel, load_model

__all__ = ["ArchSpec", "arch_spec", "get_module", "get_weight", "set_weight", "PRESETS", "LoadedModel", "load_model", "export_model"]
