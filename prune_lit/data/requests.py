"""Typed records that flow from the data modules to editors, metrics and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt`` (which contains ``subject``) should continue with ``target_new``.

    ``target_new`` / ``ground_truth`` are stored without a leading space; tokenization adds it.
    """

    case_id: int | str
    prompt: str
    subject: str
    target_new: str
    ground_truth: str = ""
    rephrase_prompts: tuple[str, ...] = ()
    locality_prompts: tuple[str, ...] = ()
    locality_answers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.subject or self.subject not in self.prompt:
            raise ValueError(f"case {self.case_id}: subject {self.subject!r} does not occur in prompt {self.prompt!r}")
        if not self.target_new.strip():
            raise ValueError(f"case {self.case_id}: empty target_new")
        if len(self.locality_prompts) != len(self.locality_answers):
            raise ValueError(f"case {self.case_id}: {len(self.locality_prompts)} locality prompts but {len(self.locality_answers)} answers")


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
