"""What ``cli.py`` resolves a config to, for tests that check configs without building anything."""

from __future__ import annotations

import contextlib
import io

import pytest
import yaml

from prune_lit.cli_main import main


def print_config(*args: str, subcommand: str = "test") -> dict:
    """The fully resolved config of ``cli.py <subcommand> <args>``, as LightningCLI prints it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([subcommand, *args, "--print_config"])
    assert done.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())
