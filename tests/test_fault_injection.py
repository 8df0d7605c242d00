"""Fault injection: SIGKILL at random moments (inside edits, evaluations and checkpoint writes) and corrupt
checkpoint files. Every resume must end exactly where the uninterrupted run ends (tiny model, forked processes)."""

import json
import os
import random
import shutil
import signal
import traceback
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import prune_lit.modules.evaluation as evaluation
import prune_lit.modules.run_checkpoint as run_checkpoint
import prune_lit.modules.sequential_editing as sequential_editing
import prune_lit.callbacks.diagnostics as diagnostics
from prune_lit.callbacks import SpectralDiagnostics, SpectralRestraint
from prune_lit.contracts.results import RUN_DEPENDENT_KEYS
from prune_lit.data.edit_datamodule import EditDataModule
from prune_lit.editors import ROMEEditor
from prune_lit.models import get_weight
from prune_lit.modules.run_checkpoint import has_checkpoints

NUM_EDITS = 3
# Where a kill may land: (module, attribute) of functions wrapped so that the k-th call of any of them dies.
SITES = {
    "edit": (ROMEEditor, "edit"),  # after the editor wrote the update into the weights, before the step is counted
    "evaluation": (evaluation, "evaluate_edits"),  # in the middle of scoring
    "checkpoint file": (run_checkpoint, "save_file"),  # between the files of a checkpoint
    "checkpoint flush": (run_checkpoint, "_fsync"),  # between flushes, renames and the `latest` pointer
}


def _run(root, resume):
    module = sequential_editing.SequentialEditingModule(
        editor=ROMEEditor(), model_name="tiny-llama", downstream=None, eval_at=[2, 3], checkpoint_dir=str(root / "ckpt"),
        checkpoint_every=1, run_name="r", resume=resume, restraint=SpectralRestraint(every_n_edits=2), diagnostics=SpectralDiagnostics(),
    )
    trainer = L.Trainer(logger=TensorBoardLogger(root, name="logs"), inference_mode=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    L.seed_everything(0)
    # spectral.json is compared, its figure is not: an empty one keeps each run seconds shorter
    with mock.patch.object(diagnostics, "spectrum_figure", lambda *a, **k: diagnostics.Figure(figsize=(1, 1))):
        trainer.test(module, datamodule=EditDataModule(num_edits=NUM_EDITS, batch_size=1))
    torch.save({n: get_weight(module.model, n) for n in module.original_weights}, root / "final.pt")


def _forked(root, kill_at=None, counts_to=None):
    """Run (or resume, when the folder has a checkpoint) in a forked child; SIGKILL it at the ``kill_at``-th site call.
    Returns the child's wait status; ``counts_to`` gets the sites called, in order, by a run that was not killed."""
    resume = has_checkpoints(root / "ckpt" / "r")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            calls: list[str] = []

            def wrap(site, fn):
                def killing(*args, **kwargs):
                    calls.append(site)
                    if len(calls) == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*args, **kwargs)
                return killing

            for site, (owner, attr) in SITES.items():
                setattr(owner, attr, wrap(site, getattr(owner, attr)))
            _run(root, resume)
            if counts_to is not None:
                counts_to.write_text(json.dumps(calls))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def _outcome(root):
    version = max((root / "logs").glob("version_*/results.json"), key=lambda p: int(p.parent.name.split("_")[1])).parent
    results = json.loads((version / "results.json").read_text())
    results = {k: v for k, v in results.items() if k not in RUN_DEPENDENT_KEYS}
    return torch.load(root / "final.pt"), results, json.loads((version / "spectral.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    status = _forked(root, counts_to=root / "calls")
    assert status == 0
    return _outcome(root), json.loads((root / "calls").read_text()), root


def uninterrupted_root(fixture):
    return fixture[2]


def _assert_same(outcome, reference):
    weights, results, spectral = outcome
    ref_weights, ref_results, ref_spectral = reference
    for n in ref_weights:
        assert torch.equal(weights[n], ref_weights[n]), n
    assert results == ref_results and spectral == ref_spectral


def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    reference, calls, _ = uninterrupted
    rng = random.Random(0)
    # one kill at a random call of each site (the last trial is killed again while resuming); every resume must
    # end where the uninterrupted run ends, and no temporary folder may survive it
    trials = [[rng.choice([i + 1 for i, c in enumerate(calls) if c == site])] for site in SITES]
    trials[-1].append(3)
    for i, kills in enumerate(trials):
        root = tmp_path / f"trial{i}"
        for k in kills:
            assert _forked(root, kill_at=k) == signal.SIGKILL, (i, k)  # killed, not finished or failed
        assert _forked(root) == 0, i
        _assert_same(_outcome(root), reference)
        assert not list((root / "ckpt" / "r").glob(".tmp-*"))


@pytest.mark.parametrize("victim", ["weights.safetensors", "editor.safetensors", "rng.safetensors", "state.json", "latest"])
def test_a_corrupt_checkpoint_file_is_named_and_the_previous_checkpoint_used(tmp_path, uninterrupted, victim, caplog, one_thread):
    # one_thread: the reference ran in a one-thread child; a float sum's order, so its bits, depend on the thread count
    reference, _, _ = uninterrupted
    shutil.copytree(uninterrupted_root(uninterrupted), tmp_path, dirs_exist_ok=True)  # a finished run
    run_dir = tmp_path / "ckpt" / "r"
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-0000002", "step-0000003"]  # the last two are kept
    path = run_dir / victim if victim == "latest" else run_dir / "step-0000003" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55  # one flipped byte in the middle
    path.write_bytes(bytes(data))
    (tmp_path / "final.pt").unlink()
    with caplog.at_level("WARNING"):
        _run(tmp_path, resume=True)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert ("latest" if victim == "latest" else f"step-0000003/{victim}") in warned
    assert "instead, because" in warned
    _assert_same(_outcome(tmp_path), reference)
