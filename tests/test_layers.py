"""Imports run down the layers only: contracts < models < data / metrics < editors / restraint < callbacks < modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prune_lit"
LAYER = {"contracts": 0, "reporting": 0, "models": 1, "data": 2, "metrics": 2, "editors": 3, "restraint": 3,
         "callbacks": 4, "modules": 5, "cli_main": 6}


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYER.get(parts[1]) if parts[0] == "prune_lit" and len(parts) > 1 else None


def upward_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer_of(".".join(("prune_lit", *path.relative_to(PACKAGE).with_suffix("").parts)))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for target in targets:
                layer = _layer_of(target)
                if layer is not None and layer > own:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}")
    return found


def test_every_package_is_in_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert subpackages | modules <= set(LAYER)


def test_no_import_runs_up_the_layers():
    assert upward_imports() == []


def test_the_editing_loop_uses_its_collaborators_through_the_contracts_only():
    loop = ["sequential_editing.py", "edit_step.py", "evaluation.py", "run_resume.py"]
    calls = [
        f"{name}:{node.lineno} {node.func.id}"
        for name in loop
        for node in ast.walk(ast.parse((PACKAGE / "modules" / name).read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
    ]
    assert calls == []
