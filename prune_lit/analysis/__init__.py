"""Analysis of finished runs: the results.json schema (``schema``), two runs side by side (``compare_runs``) and the
study's tables, paired tests and figures (``study_report``). Reads results; imports nothing from ``modules/``."""

from prune_lit.analysis.schema import SCHEMA_VERSION, EvalPoint, ResultsSchemaError, RunResults, find_results

__all__ = ["SCHEMA_VERSION", "EvalPoint", "ResultsSchemaError", "RunResults", "find_results"]
