"""The contracts of the sequential-editing loop, below everything that implements them.

Layers (imports only run downwards): ``contracts`` < ``models`` < ``data`` / ``metrics`` < ``editors`` /
``restraint`` < ``callbacks`` < ``modules``. docs/architecture.md describes each contract and how to add an
editor or a restraint.

- `EditRequest`, `ProposedUpdate`, `EditResult`, `EditStats` (records.py): what flows through a step.
- `EditState`, `crossed`, `crossed_any` (state.py): the run's state between steps, the cadence rule.
- `SequentialEditor`, `EditRequestSource`, `TrainValRequestSource`, `UpdateHook` (editing.py): what the loop needs from an editor and a data module.
- `EditStepCallback`, `Phase`, `edit_step_callbacks` (callbacks.py): callbacks the loop calls in phase order.
- `Restraint`, `MatrixContext`, `restraints` (restraint.py): when a restraint acts and what it reports.
"""

from prune_lit.contracts.callbacks import EditStepCallback, Phase, edit_step_callbacks
from prune_lit.contracts.editing import EditRequestSource, SequentialEditor, TrainValRequestSource, UpdateHook
from prune_lit.contracts.records import EditRequest, EditResult, EditStats, Factors, ProposedUpdate
from prune_lit.contracts.restraint import MatrixContext, Restraint, restraints
from prune_lit.contracts.state import EditState, crossed, crossed_any

__all__ = [
    "EditRequest", "EditResult", "EditStats", "Factors", "ProposedUpdate", "EditState", "crossed", "crossed_any",
    "SequentialEditor", "EditRequestSource", "TrainValRequestSource", "UpdateHook", "EditStepCallback", "Phase", "edit_step_callbacks",
    "MatrixContext", "Restraint", "restraints",
]
