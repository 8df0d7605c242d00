from prune_lit.metrics.downstream import (  # noqa: F401
    GSM8KExactMatch,
    NLIAccuracy,
    QAContainsMatch,
    QAExactMatch,
    QATokenF1,
    SummarizationRouge,
)
