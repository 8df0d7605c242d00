"""Typed records that flow from the data modules to editors, metrics and evaluation.

`EditRequest` is defined with the loop's contracts (`prune_lit.contracts`) and importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prune_lit.contracts.records import EditRequest

__all__ = ["EditRequest", "TaskExample"]


@dataclass(frozen=True)
class TaskExample:
    """One downstream-task example.

    ``prompt`` is the full text fed to the model; ``references`` the accepted answers (several for NQ);
    for NLI ``label`` is True (entailment) or False.
    """

    task: str  # "reasoning" | "summarization" | "qa" | "nli"
    prompt: str
    references: tuple[str, ...] = field(default_factory=tuple)
    label: bool | None = None
