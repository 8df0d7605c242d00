"""One-line command-line errors: the parser's (unknown config file, misspelled key) and the run's input errors.

`OneLineErrorParser` replaces jsonargparse's usage dump with ``error: <what>`` (and the closest valid key where
there is one) and exit status 2; `link_data_dirs` makes ``model.init_args.data_dir`` and ``data.init_args.data_dir``
one setting. ``PRUNE_LIT_TRACEBACK=1`` restores the full output.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

_NOISE = ("Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>", "Does not validate against any of the Union subtypes")


def _class_options(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` (empty when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def _closest(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def one_line(message: str, option_strings: list[str]) -> str:
    """jsonargparse's multi-line error ``message`` as one line, with the closest valid key for a misspelled one."""
    m = re.search(r"class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message)
    if m:
        return f"{m.group(1)} has no setting {m.group(2)!r}{_closest(m.group(2), _class_options(m.group(1)))}"
    m = (re.search(r"[Uu]nrecognized arguments:\s*(--[\w.]+)", message) or re.search(r"does not accept option '([\w.]+)'", message)
         or re.search(r"[Kk]ey \"?'?([\w.]+)'?\"? is not expected", message))
    if m:
        key = m.group(1)
        return f"unknown setting {key!r}{_closest(key.lstrip('-'), [o.lstrip('-') for o in option_strings])}"
    lines = [ln.strip() for ln in message.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    text = " ".join(lines)
    return re.sub(r'^Parser key "config":\s*', "", text)


class OneLineErrorParser(LightningArgumentParser):
    """A `LightningArgumentParser` whose errors are one ``error: ...`` line (no usage dump), exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if os.environ.get("PRUNE_LIT_TRACEBACK") or not self.exit_on_error:
            super().error(message, ex)
        parsers = [getattr(ex, "subcommand_parser", None) or self]
        sub = getattr(self, "_subcommands_action", None)
        parsers += list(getattr(sub, "_name_parser_map", {}).values())
        options = [s for p in parsers for a in p._actions for s in a.option_strings]
        sys.stderr.write(f"error: {one_line(message, options)}\n")
        raise SystemExit(2)


def link_data_dirs(config: Any) -> None:
    """``model.init_args.data_dir`` and ``data.init_args.data_dir`` are one setting: one set, the other unset, copies
    it; both set differently is an error (Lightning would refuse to merge the two hparams later, with a traceback)."""
    model = (config.get("model") or {}).get("init_args") if hasattr(config, "get") else None
    data = (config.get("data") or {}).get("init_args") if hasattr(config, "get") else None
    if model is None or data is None or "data_dir" not in model or "data_dir" not in data:
        return
    a, b = model.get("data_dir"), data.get("data_dir")
    if a is not None and b is not None and str(a) != str(b):
        raise ValueError(f"model.init_args.data_dir {a!r} and data.init_args.data_dir {b!r} differ; set one of them (they are one setting)")
    model["data_dir"] = data["data_dir"] = a if a is not None else b
