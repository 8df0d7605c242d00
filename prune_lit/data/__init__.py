from prune_lit.data.downstream import TASKS, DownstreamDataModule, MalformedRecordError, load_task, load_tasks  # noqa: F401
from prune_lit.data.edit_datamodule import EditDataModule  # noqa: F401
from prune_lit.data.counterfact import load_counterfact, load_fact_file  # noqa: F401
from prune_lit.data.edit_io import EditDataError  # noqa: F401
from prune_lit.data.zsre import load_zsre  # noqa: F401
from prune_lit.data.wikitext import load_wikitext, wikitext_windows  # noqa: F401
