from prune_lit.modules.downstream_eval import BaselineEvaluation, DownstreamEvaluator  # noqa: F401
from prune_lit.models.generation import choice_logprobs, generate  # noqa: F401
from prune_lit.modules.mend_training import MENDTraining  # noqa: F401
from prune_lit.modules.sequential_editing import SequentialEditingModule  # noqa: F401
