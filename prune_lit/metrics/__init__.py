from prune_lit.metrics.downstream import (  # noqa: F401
    GSM8KExactMatch,
    NLIAccuracy,
    QAContainsMatch,
    QAExactMatch,
    QATokenF1,
    SummarizationRouge,
)
from prune_lit.metrics.editing import (  # noqa: F401
    EditEfficacy,
    EditGeneralization,
    EditLocality,
    EditNeighborhood,
    EditTokenAccuracy,
)
from prune_lit.metrics.editing_eval import EditScores, LocalityReference, evaluate_edits, record_locality_reference  # noqa: F401
from prune_lit.metrics.intervals import (  # noqa: F401
    Interval,
    PairedComparison,
    bootstrap_interval,
    compare_paired,
    mcnemar_exact,
    paired_bootstrap,
    per_example_intervals,
    score_interval,
    wilson_interval,
)
from prune_lit.metrics.probes import GeneralAbilityProbe, PerplexityKL, ProbeResult  # noqa: F401
