"""Analysis of finished runs: two runs side by side (``compare_runs``) and the
study's tables, paired tests and figures (``study_report``). Reads results; imports nothing from ``modules/``."""

from prune_lit.contracts.results import SCHEMA_VERSION, EvalPoint, ResultsSchemaError, RunResults, find_results

__all__ = ["SCHEMA_VERSION", "EvalPoint", "ResultsSchemaError", "RunResults", "find_results"]
