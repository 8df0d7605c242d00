from prune_lit.data.downstream import TASKS, DownstreamDataModule, MalformedRecordError, load_task, load_tasks  # noqa: F401
from prune_lit.data.edit_datamodule import EditDataModule  # noqa: F401
