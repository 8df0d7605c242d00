"""prune-lit: sequential knowledge editing with PRUNE spectral restraint, on PyTorch Lightning.

The Python API (`prune_lit.api`; loaded on first use, so ``import prune_lit`` stays cheap):

- `load` — a preset, a local Hugging Face directory, or a model + tokenizer you hold;
- `get_editor` / `get_restraint` — an editor (``rome``, ``memit``, ``alphaedit``, ``mend``) or a restraint
  (``prune``, ``prune_at_end``, ``prune_factored``, ``none``) by name, with overrides;
- `edit` — edit a list of facts sequentially; returns an `EditRun` (the edited model, per-step stats, edit
  metrics, spectra);
- `restrain` / `inspect` — PRUNE for a model edited by any tool, or only its spectral report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("load", "get_editor", "get_restraint", "edit", "restrain", "inspect", "EditRun", "Restrained")
__all__ = [*_API, "EditRequest"]

if TYPE_CHECKING:
    from prune_lit.api import EditRun, Restrained, edit, get_editor, get_restraint, inspect, load, restrain
    from prune_lit.data.requests import EditRequest


def __getattr__(name: str) -> Any:
    if name in _API:
        from prune_lit import api

        return getattr(api, name)
    if name == "EditRequest":
        from prune_lit.data.requests import EditRequest

        return EditRequest
    raise AttributeError(f"module 'prune_lit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
