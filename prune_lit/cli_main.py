"""LightningCLI entry point: ``python cli.py {fit,validate,test} --config configs/<experiment>.yaml``."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.cli import LightningCLI


class PruneLitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "logs", "name": "default"},
                },
                # Editors take gradients inside test_step (ROME's value optimisation, MEND's fine-tuning
                # gradient); inference_mode would forbid that.
                "trainer.inference_mode": False,
                "trainer.accelerator": "auto",
                "trainer.devices": 1,
                "trainer.num_sanity_val_steps": 0,
            }
        )


def main(args: list[str] | None = None) -> PruneLitCLI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return PruneLitCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
