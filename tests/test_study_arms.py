"""benchmarks/run_study.sh: every arm's command (STUDY_DRY_RUN) resolves to the editor, restraint and data it names."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from cli_config import print_config

ROOT = Path(__file__).resolve().parents[1]
EDITORS = {"rome": "ROMEEditor", "memit": "MEMITEditor", "alphaedit": "AlphaEditEditor", "mend": "MENDEditor", "mend_seq": "MENDEditor"}
RESTRAINTS = {  # arm name suffix -> restraint callback (None: no restraint at all)
    "_prune": "SpectralRestraint", "_key_aware": "KeyAwareSpectralRestraint", "_sphere": "SphereRestraint",
}


def arm_commands(tmp_path: Path, **env: str) -> dict[str, list[str]]:
    """``{arm: cli.py arguments}`` of every arm, as run_study.sh would run them (nothing is run or written)."""
    out = subprocess.run(
        ["bash", "benchmarks/run_study.sh"], cwd=ROOT, check=True, capture_output=True, text=True,
        env={**os.environ, "STUDY_DRY_RUN": "1", "STUDY_DIR": str(tmp_path / "study"), **env},
    ).stdout
    commands = [shlex.split(line) for line in out.splitlines() if line.strip()]
    assert all(c[1:3] == ["cli.py", "test"] for c in commands)
    assert not (tmp_path / "study").exists()  # a dry run writes nothing
    return {c[c.index("--model.init_args.run_name") + 1]: c[3:] for c in commands}


def test_every_arm_resolves_to_what_its_name_says(tmp_path):
    arms = arm_commands(tmp_path, STUDY_BATCH="100", STUDY_KEY_SCALE="0.3")
    assert {"rome", "rome_prune", "memit_prune", "alphaedit_sphere", "rome_key_aware", "zsre_rome", "mend_prune", "mend_seq"} <= set(arms)
    for arm, args in arms.items():
        cfg = print_config(*args)
        model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
        base = arm.removeprefix("zsre_")
        editor = max((e for e in EDITORS if base == e or base.startswith(e + "_")), key=len)  # mend_seq before mend
        assert model["editor"]["class_path"].endswith(EDITORS[editor]), arm
        assert data["dataset"] == ("zsre" if arm.startswith("zsre_") else "counterfact"), arm
        suffix = base[len(editor):]
        restraint = model["restraint"]
        if editor.startswith("mend"):  # which hypernetwork: the independent run's, or the sequentially trained one
            expected_ckpt = "checkpoints/mend_seq_cloc10/val/step1750.ckpt" if editor == "mend_seq" else "checkpoints/mend/best.ckpt"
            assert model["editor"]["init_args"]["checkpoint"] == expected_ckpt, arm
            assert model["editor"]["init_args"]["input_z_clip"] == (3 if editor == "mend_seq" else None), arm
        if suffix:
            expected = "FactoredSpectralRestraint" if editor.startswith("mend") else RESTRAINTS[suffix]
            assert restraint["class_path"].endswith("." + expected), arm
            assert not restraint["init_args"].get("at_end_only", False), arm
        elif editor != "mend":  # the unrestrained arms carry the "PRUNE once at N" curve of the same run
            assert restraint["class_path"].endswith(".SpectralRestraint") and restraint["init_args"]["at_end_only"], arm
            assert restraint["init_args"]["evaluate_at_end_curve"], arm
        if suffix == "_key_aware":
            assert restraint["init_args"]["threshold"] == "energy" and restraint["init_args"]["threshold_scale"] == 0.3
        if editor in ("memit", "alphaedit"):
            assert data["batch_size"] == 100, arm
        assert model["downstream_at"] == [250, 500, 1000] and data["num_edits"] == 1000, arm


def test_the_defaults_are_the_reported_protocol(tmp_path):
    """Without settings, the arms run as docs/results.md reports them: edit metrics and probes every 250 edits,
    MEMIT one fact per step (PRUNE's reference loop), AlphaEdit in batches of 100 (its paper)."""
    arms = arm_commands(tmp_path)
    for arm, args in arms.items():
        cfg = print_config(*args)
        model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert model["eval_at"] == [250, 500, 750, 1000] and model["downstream_at"] == [250, 500, 1000], arm
        expected = 1 if arm.startswith("memit") else 100 if arm.startswith("alphaedit") else 1
        assert data["batch_size"] == expected, arm
