"""Every config parses (``--print_config``: nothing is built, no model is loaded), the documented
compositions mean what they say, and no complete config is a hand-kept copy: the editing ones equal their
compositions; mend_gpu.yaml differs from mend.yaml and baseline.yaml from base.yaml only where they say so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_config import print_config
from prune_lit.cli_main import CONFIG_DIR, resolve_config_paths

# Overlays: a top-level YAML used on top of others (name -> the configs it goes on), listed with what it changes.
OVERLAYS = {
    "mend_sequential.yaml": ("mend.yaml",),
    "mend_sequential_cloc10.yaml": ("mend.yaml", "mend_sequential.yaml"),  # tried settings (docs/mend.md)
    "mend_sequential_loc4.yaml": ("mend.yaml", "mend_sequential.yaml"),
    "mend_sequential_rank1920.yaml": ("mend.yaml", "mend_sequential.yaml"),
}
OVERLAY_DIFFERENCES = {
    "mend_sequential.yaml": {"model.init_args.sequential_edits", "trainer.logger.init_args.name", "trainer.callbacks"},
    "mend_sequential_cloc10.yaml": {"model.init_args.c_loc", "trainer.logger.init_args.name", "trainer.callbacks"},
    "mend_sequential_loc4.yaml": {"data.init_args.train_locality_per_edit", "trainer.logger.init_args.name", "trainer.callbacks"},
    "mend_sequential_rank1920.yaml": {"model.init_args.rank", "trainer.logger.init_args.name", "trainer.callbacks"},
}
# Complete configs: every top-level YAML but the base and the overlays; MEND training ones run with fit.
COMPLETE = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if p.name != "base.yaml" and p.name not in OVERLAYS)
# Complete editing configs = a composition (+ the run name): keep these in step when adding an editor.
COMPOSITIONS = {
    "rome.yaml": (["base.yaml", "editor/rome.yaml"], []),
    "rome_prune.yaml": (["base.yaml", "editor/rome.yaml", "restraint/prune.yaml"], ["--trainer.logger.init_args.name", "rome_prune"]),
    "memit.yaml": (["base.yaml", "editor/memit.yaml"], []),
    "memit_prune.yaml": (["base.yaml", "editor/memit.yaml", "restraint/prune.yaml"], ["--trainer.logger.init_args.name", "memit_prune"]),
    "mend_edit.yaml": (["base.yaml", "editor/mend.yaml"], []),
    "mend_prune.yaml": (["base.yaml", "editor/mend.yaml", "restraint/prune_factored.yaml"], ["--trainer.logger.init_args.name", "mend_prune"]),
    "mend_prune_end.yaml": (["base.yaml", "editor/mend.yaml", "restraint/prune_at_end.yaml"], ["--trainer.logger.init_args.name", "mend_prune_end"]),
    "alphaedit.yaml": (["base.yaml", "editor/alphaedit.yaml"], []),
    "alphaedit_prune.yaml": (["base.yaml", "editor/alphaedit.yaml", "restraint/prune.yaml"], ["--trainer.logger.init_args.name", "alphaedit_prune"]),
}
FRAGMENT_DIRS = ("editor", "restraint", "data")


# Each complete config is one of these: a composition of fragments, or a copy whose differences are listed.
MEND_GPU_DIFFERENCES = {  # mend_gpu.yaml against mend.yaml: the reference MEND shape on one GPU (its header)
    "trainer.accelerator", "trainer.precision", "data.init_args.train_batch_size", "trainer.val_check_interval",
    "trainer.log_every_n_steps", "trainer.callbacks", "trainer.logger.init_args.name", "model.init_args.rank",
    "data.init_args.val_limit",
}
BASELINE_DIFFERENCES = {  # baseline.yaml against base.yaml + an editor: the unedited model's evaluation alone
    "data", "model.class_path", "model.init_args.downstream.init_args.limit", "trainer.accelerator",
    "trainer.enable_checkpointing", "trainer.enable_progress_bar", "trainer.logger.init_args.name",
}


def configs(*args: str) -> list[str]:
    return [a for name in args for a in ("--config", name)]


def checkpoint_dirs(cfg: dict) -> list[str]:
    """The ``dirpath`` of every trainer callback that has one (the checkpoint folders of a printed config)."""
    return [cb["init_args"]["dirpath"] for cb in cfg["trainer"]["callbacks"] if "dirpath" in cb.get("init_args", {})]


def differences(a: dict, b: dict, path: str = "") -> set[str]:
    """Dotted paths where ``a`` and ``b`` differ, as far down as both are dicts (a key only one has: its path)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return {path} if a != b else set()
    out: set[str] = set()
    for key in set(a) | set(b):
        sub = f"{path}.{key}" if path else key
        if key not in a or key not in b:
            out.add(sub)
        else:
            out |= differences(a[key], b[key], sub)
    return out


@pytest.mark.parametrize("name", COMPLETE)
def test_complete_config_parses(name: str) -> None:
    subcommand = "fit" if "MENDTraining" in (CONFIG_DIR / name).read_text() else "test"
    cfg = print_config(*configs(name), subcommand=subcommand)
    assert cfg["model"]["class_path"]


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_changes_only_what_it_says(name: str) -> None:
    under = print_config(*configs(*OVERLAYS[name]), subcommand="fit")
    over = print_config(*configs(*OVERLAYS[name], name), subcommand="fit")
    assert differences(under, over) == OVERLAY_DIFFERENCES[name]
    dirs = checkpoint_dirs(over)
    assert dirs and not any(d == "checkpoints/mend" or d.startswith("checkpoints/mend/") for d in dirs)  # keeps the independent run's
    under_dirs = checkpoint_dirs(under)
    assert not set(dirs) & set(under_dirs)  # never overwrites the checkpoints of the run it is compared with
    assert over["model"]["init_args"]["sequential_edits"] is True


def test_overlays_never_share_a_run_or_checkpoint_folder() -> None:
    """Two tried settings in one folder would overwrite each other's best.ckpt / last.ckpt."""
    seen: dict[str, str] = {}
    for name, bases in OVERLAYS.items():
        cfg = print_config(*configs(*bases, name), subcommand="fit")
        places = [cfg["trainer"]["logger"]["init_args"]["name"]]
        places += checkpoint_dirs(cfg)
        for place in set(places):
            assert place not in seen, f"{name} and {seen.get(place)} both use {place}"
            seen[place] = name


@pytest.mark.parametrize("fragment", sorted(str(p.relative_to(CONFIG_DIR)) for d in FRAGMENT_DIRS for p in (CONFIG_DIR / d).glob("*.yaml")))
def test_fragment_composes_with_base(fragment: str) -> None:
    editor = [] if fragment.startswith("editor/") else ["editor/rome.yaml"]
    cfg = print_config(*configs("base.yaml", *editor, fragment))
    assert cfg["model"]["class_path"] == "prune_lit.modules.SequentialEditingModule"
    assert cfg["model"]["init_args"]["editor"]["class_path"].startswith("prune_lit.editors.")


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_complete_config_equals_its_composition(name: str) -> None:
    parts, extra = COMPOSITIONS[name]
    assert print_config(*configs(name)) == print_config(*configs(*parts), *extra)


def test_rome_prune_alpha_at_the_end_is_a_command_line() -> None:
    """The README's "ROME + PRUNE α = 1.2, restrained once at the end"."""
    cfg = print_config(*configs("base.yaml", "editor/rome.yaml", "restraint/prune_at_end.yaml"), "--model.init_args.restraint.init_args.alpha", "1.2")
    model = cfg["model"]["init_args"]
    assert model["editor"]["class_path"] == "prune_lit.editors.ROMEEditor"
    assert model["restraint"]["class_path"] == "prune_lit.callbacks.SpectralRestraint"
    assert model["restraint"]["init_args"]["alpha"] == 1.2 and model["restraint"]["init_args"]["at_end_only"] is True
    assert model["diagnostics"]["class_path"] == "prune_lit.callbacks.SpectralDiagnostics"  # restraint does not drop it
    plain = print_config(*configs("base.yaml", "editor/rome.yaml"))["model"]["init_args"]
    assert plain["restraint"] is None and plain["diagnostics"] == model["diagnostics"]


def test_documented_data_combinations() -> None:
    zsre = print_config(*configs("rome_prune.yaml", "data/zsre.yaml"))["data"]["init_args"]
    assert zsre["dataset"] == "zsre" and zsre["batch_size"] == 1
    memit = print_config(*configs("base.yaml", "editor/memit.yaml", "data/zsre.yaml"))["data"]["init_args"]
    assert memit["dataset"] == "zsre" and memit["batch_size"] == 10  # the data config keeps the editor's batch size
    own = print_config(*configs("base.yaml", "editor/rome.yaml", "data/own_facts.yaml"), "--data.init_args.dataset", "my.jsonl",
                       "--model.init_args.export_dir", "edited")  # fmt: skip
    assert own["data"]["init_args"]["dataset"] == "my.jsonl" and own["data"]["init_args"]["num_edits"] is None
    assert own["model"]["init_args"]["export_dir"] == "edited"


def test_mend_gpu_differs_from_mend_only_as_listed() -> None:
    cpu, gpu = print_config(*configs("mend.yaml"), subcommand="fit"), print_config(*configs("mend_gpu.yaml"), subcommand="fit")
    assert differences(cpu, gpu) == MEND_GPU_DIFFERENCES


def test_baseline_differs_from_base_only_as_listed() -> None:
    base, baseline = print_config(*configs("base.yaml", "editor/rome.yaml")), print_config(*configs("baseline.yaml"))
    found = differences(base, baseline)
    # arguments of one module only (the editor, restraint ...; the baseline's results_file) are no copy
    own = set(base["model"]["init_args"]) ^ set(baseline["model"]["init_args"])
    found -= {f"model.init_args.{k}" for k in own}
    assert found == BASELINE_DIFFERENCES


def test_baseline_uses_the_editing_runs_evaluator() -> None:
    """One downstream path: baseline.yaml's evaluator is base.yaml's (chat template included), limit aside."""
    base = print_config(*configs("base.yaml", "editor/rome.yaml"))["model"]["init_args"]["downstream"]
    baseline = print_config(*configs("baseline.yaml"))["model"]["init_args"]["downstream"]
    assert baseline["init_args"]["limit"] == 100 and base["init_args"]["limit"] == 20
    assert {**baseline["init_args"], "limit": 20} == base["init_args"] and baseline["class_path"] == base["class_path"]
    assert baseline["init_args"]["chat_template"] is True


def test_bare_names_resolve_to_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_paths(["test", "--config", "rome_prune.yaml", "--config=editor/rome.yaml", "--x", "rome.yaml"]) == [
        "test", "--config", str(CONFIG_DIR / "rome_prune.yaml"), f"--config={CONFIG_DIR / 'editor/rome.yaml'}", "--x", "rome.yaml"
    ]  # fmt: skip
    (tmp_path / "rome.yaml").write_text("{}")  # a file where the user runs wins over configs/
    assert resolve_config_paths(["--config", "rome.yaml", "--config", "nope.yaml"]) == ["--config", "rome.yaml", "--config", "nope.yaml"]


def test_every_config_value_is_commented() -> None:
    """Lines that set a scalar (not a class_path, not the opening of a block) carry a comment."""
    bare = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r"^\s*(?:- )?([A-Za-z_]\w*):\s*(\S.*)?$", line)
            if m and m.group(2) and not m.group(2).startswith("#") and m.group(1) != "class_path" and "#" not in line:
                bare.append(f"{path.relative_to(CONFIG_DIR)}:{i}: {line.strip()}")
    assert not bare, "\n".join(bare)
