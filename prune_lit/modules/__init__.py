from prune_lit.modules.downstream_eval import BaselineEvaluation, DownstreamEvaluator  # noqa: F401
from prune_lit.metrics.scoring import choice_logprobs  # noqa: F401
from prune_lit.models.generation import generate  # noqa: F401
from prune_lit.modules.mend_training import MENDTraining  # noqa: F401
from prune_lit.modules.sequential_editing import SequentialEditingModule  # noqa: F401
