"""LightningCLI entry point: ``python cli.py {fit,validate,test} --config <experiment>.yaml [--config ...]``.

``--config`` may be given several times (later files and flags win) and may name a file in ``configs/`` by
its bare name (``--config rome_prune.yaml``, ``--config editor/rome.yaml``). Bad input (a malformed data
record, a missing data file, a bad setting caught by prune-lit's own checks) ends the run with one line,
``error: ...``, and exit status 2; set ``PRUNE_LIT_TRACEBACK=1`` for the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

import prune_lit
from prune_lit.cli_errors import OneLineErrorParser, link_data_dirs
from prune_lit.data.downstream import MalformedRecordError
from prune_lit.data.edit_io import EditDataError
from prune_lit.data.paths import DataNotFoundError
from prune_lit.modules.run_checkpoint import RunCheckpointError
from prune_lit.modules.sequential_editing import TRAINER_DEFAULTS


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Errors that describe the user's input, not a defect: reported as one line.
USER_ERRORS: tuple[type[BaseException], ...] = (EditDataError, MalformedRecordError, DataNotFoundError, FileExistsError, RunCheckpointError)
_PACKAGE_DIR = str(Path(prune_lit.__file__).resolve().parent)


class PruneLitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "logs", "name": "default"},
                },
                **{f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()},
            }
        )

    def before_instantiate_classes(self) -> None:
        link_data_dirs(self.config.get(self.subcommand) if self.subcommand else self.config)


def resolve_config_paths(args: Sequence[str], config_dir: Path = CONFIG_DIR) -> list[str]:
    """``--config NAME`` / ``--config=NAME`` with a NAME that is not a file here but is one in ``config_dir``
    become that file's path; everything else is passed through unchanged."""

    def resolve(name: str) -> str:
        if Path(name).exists() or not (config_dir / name).is_file():
            return name
        return str(config_dir / name)

    out, args = [], list(args)
    for i, arg in enumerate(args):
        if i > 0 and args[i - 1] == "--config":
            out.append(resolve(arg))
        elif arg.startswith("--config="):
            out.append("--config=" + resolve(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def is_user_error(err: BaseException) -> bool:
    """A known input error, or a ValueError that prune-lit's own validation raised (its innermost frame is in
    the package), as opposed to one from deep inside torch or a bug elsewhere."""
    if isinstance(err, USER_ERRORS):
        return True
    if isinstance(err, ValueError) and err.__traceback__ is not None:
        return traceback.extract_tb(err.__traceback__)[-1].filename.startswith(_PACKAGE_DIR)
    return False


def find_user_error(err: BaseException | None) -> BaseException | None:
    """``err`` or the first exception it was raised from (jsonargparse wraps errors raised while it builds a
    class from the config) that `is_user_error`; None when there is none."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if is_user_error(err):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: list[str] | None = None) -> PruneLitCLI:
    # Under DDP the other ranks are started with LOCAL_RANK/NODE_RANK set: they log warnings and errors only.
    rank0 = int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args is None:  # from the command line: LightningCLI reads sys.argv (and warns when given both)
        sys.argv[1:] = resolve_config_paths(sys.argv[1:])
    else:
        args = resolve_config_paths(args)
    try:
        return PruneLitCLI(
            L.LightningModule,
            None,  # any LightningDataModule, and optional: configs/baseline.yaml feeds its module's own dataloaders
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_class=OneLineErrorParser,
            args=args,
        )
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("PRUNE_LIT_TRACEBACK"):
            raise
        sys.stderr.write(f"error: {' '.join(str(user_error).split())}\n")
        raise SystemExit(2) from None
