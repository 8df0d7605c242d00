"""SPHERE and key-aware PRUNE as restraints: on each editor's real updates (tiny models), in the loop, and on SmolLM2."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from prune_lit.callbacks import KeyAwareSpectralRestraint, SphereRestraint
from prune_lit.cli_main import main as cli_main
from prune_lit.contracts import EditRequest, EditState, MatrixContext
from prune_lit.data.edit_datamodule import EditDataModule
from prune_lit.editors import AlphaEditEditor, MEMITEditor, ROMEEditor
from prune_lit.models import get_weight, load_model
from prune_lit.modules.edit_step import update_hook
from prune_lit.modules.sequential_editing import SequentialEditingModule
from prune_lit.restraint import restrain_singular_values
from prune_lit.restraint.key_aware import sqrt_psd
from prune_lit.restraint.sphere import sphere_project

FACTS = [
    ("The city that holds the Eiffel Tower", "Eiffel Tower", "Rome"),
    ("The language spoken by Danielle Darrieux", "Danielle Darrieux", "English"),
]


class Recorder(SphereRestraint):
    """SPHERE that also keeps what it was given and what it returned."""

    def restrain_update(self, deltas, context):
        out = super().restrain_update(deltas, context)
        self.seen = ({n: d.clone() for n, d in deltas.items()}, {n: c.weight.clone() for n, c in context.items()}, out)
        return out


def edit_once(model_name: str, editor, restraint, n_requests: int = 1):
    lm = load_model(model_name)
    editor.prepare(lm.model, lm.tokenizer, model_name, None)
    names = editor.weight_names(lm.model)
    state = EditState(lm.model, lm.tokenizer, {n: get_weight(lm.model, n).float().clone() for n in names})
    if isinstance(restraint, SphereRestraint):
        restraint.bind(lm.model)
    requests = [EditRequest(i, p, s, t) for i, (p, s, t) in enumerate(FACTS[:n_requests])]
    before = {n: get_weight(lm.model, n).clone() for n in names}
    with torch.no_grad():
        result = editor.edit(lm.model, lm.tokenizer, requests, update_hook([restraint], editor, state))
    return lm, state, before, result


@pytest.mark.parametrize("editor_cls, n_requests", [(ROMEEditor, 1), (MEMITEditor, 2), (AlphaEditEditor, 2)])
def test_sphere_projects_each_editors_update_before_it_is_applied(editor_cls, n_requests):
    restraint = Recorder(beta_hse=0.5, alpha=0.5)
    lm, _, before, result = edit_once("tiny-llama", editor_cls(), restraint, n_requests)
    proposed, weights, out = restraint.seen
    assert result.applied
    for name, d in proposed.items():
        assert torch.equal(weights[name], before[name])  # directions from W before this step
        expected = sphere_project(before[name].float(), d.float(), 0.5, 0.5, side="input")  # nn.Linear: the input side
        torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(get_weight(lm.model, name), before[name] + expected, rtol=0, atol=1e-6)
        assert float((expected - d).norm()) > 1e-3 * float(d.norm())  # it did change the update
    assert restraint.total_seconds > 0 and len(restraint.history) == 1


def test_sphere_reference_side_on_gpt2_conv1d_is_the_output_side():
    restraint = Recorder(beta_hse=0.5, alpha=0.8)
    _, _, before, _ = edit_once("tiny-gpt2", ROMEEditor(), restraint)
    assert restraint.resolved_side() == "output"
    proposed, _, out = restraint.seen
    (name, d), = proposed.items()
    torch.testing.assert_close(out[name], sphere_project(before[name].float(), d.float(), 0.5, 0.8, side="output"), rtol=1e-5, atol=1e-6)


def test_sphere_original_directions_are_computed_once():
    restraint = SphereRestraint(directions="original", side="input")
    w = torch.randn(6, 10)
    ctx = {"w": MatrixContext(w, w.clone())}
    restraint.restrain_update({"w": torch.randn(6, 10)}, ctx)
    first = restraint.projector("w", ctx)
    ctx2 = {"w": MatrixContext(w + 5 * torch.randn(6, 10), w.clone())}
    assert restraint.projector("w", ctx2) is first  # W₀'s directions, not the moved weight's


def test_sphere_options_are_checked_and_reference_needs_the_layout():
    with pytest.raises(ValueError):
        SphereRestraint(side="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SphereRestraint(directions="latest")
    with pytest.raises(ValueError):
        SphereRestraint(beta_hse=0.0)
    unbound = SphereRestraint()
    w = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="bind"):
        unbound.restrain_update({"w": w}, {"w": MatrixContext(w, w)})


def test_key_aware_restraint_needs_the_editors_key_moment():
    restraint = KeyAwareSpectralRestraint()
    w = torch.randn(4, 5)
    with pytest.raises(ValueError, match="key second moment"):
        restraint.restrain_update({"w": w}, {"w": MatrixContext(w, w, None)})
    with pytest.raises(ValueError):
        KeyAwareSpectralRestraint(threshold="nuclear")
    with pytest.raises(ValueError):
        KeyAwareSpectralRestraint(threshold_scale=-1.0)


class PassRecorder(KeyAwareSpectralRestraint):
    """Key-aware PRUNE that keeps ΔW before and after its last pass on each matrix."""

    def _restrain_matrix(self, model, name, w, w0, warm_starts):
        before = w.float() - w0
        res = super()._restrain_matrix(model, name, w, w0, warm_starts)
        self.last = getattr(self, "last", {})
        self.last[name] = (before.clone(), get_weight(model, name).float() - w0, res.n_restrained)
        return res


@pytest.mark.parametrize("editor_cls", [ROMEEditor, AlphaEditEditor])
def test_key_aware_prune_in_the_loop_maps_the_key_space_spectrum(editor_cls, tmp_path):
    # a tight threshold (1 % of σ_max(W₀ C^1/2)) so that it acts on the tiny model's small edits
    restraint = PassRecorder(threshold_scale=0.01)
    module = SequentialEditingModule(editor=editor_cls(), model_name="tiny-llama", downstream=None, evaluate_before=False,
                                     checkpoint_dir=str(tmp_path / "ckpt"), restraint=restraint)
    trainer = L.Trainer(logger=TensorBoardLogger(tmp_path, name="ka"), inference_mode=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    trainer.test(module, datamodule=EditDataModule(num_edits=4, batch_size=1 if editor_cls is ROMEEditor else 2))
    assert len(restraint.history) == (4 if editor_cls is ROMEEditor else 2)
    for name in module.original_weights:
        c = module.editor.key_second_moment(name)
        assert c is not None and restraint._moments[name] is c  # the editor's own C
        root = sqrt_psd(c)
        tau = restraint.thresholds()[name]
        before, after, n = restraint.last[name]
        assert n > 0
        s_before = torch.linalg.svdvals(before.double() @ root)
        s_after = torch.linalg.svdvals(after.double() @ root)
        expected = restrain_singular_values(s_before, tau).sort(descending=True).values
        torch.testing.assert_close(s_after[:6], expected[:6], rtol=1e-3, atol=1e-6)
    assert restraint.fingerprint()["method"] == "key_aware"
    assert module.results["seconds_restraint"] == pytest.approx(restraint.total_seconds)


def test_sphere_in_the_loop_with_memit(tmp_path):
    restraint = SphereRestraint()
    module = SequentialEditingModule(editor=MEMITEditor(), model_name="tiny-llama", downstream=None, evaluate_before=False,
                                     checkpoint_dir=str(tmp_path / "ckpt"), restraint=restraint)
    trainer = L.Trainer(logger=TensorBoardLogger(tmp_path, name="sph"), inference_mode=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    trainer.test(module, datamodule=EditDataModule(num_edits=4, batch_size=2))
    assert len(restraint.history) == 2 and restraint.resolved_side() == "input"
    assert all(r > 0 for h in restraint.history for r in h["directions"].values())
    assert module.results["seconds_restraint"] == pytest.approx(restraint.total_seconds)


@pytest.mark.slow
def test_sphere_and_key_aware_prune_on_smollm2():
    """One ROME edit of SmolLM2 through SPHERE, then key-aware PRUNE with the editor's C (WikiText keys)."""
    sphere = Recorder()
    editor = ROMEEditor()
    lm, state, before, result = edit_once("smollm2-135m", editor, sphere)
    proposed, _, out = sphere.seen
    (name, d), = proposed.items()
    assert result.applied and d.shape == (576, 1536) and sphere.resolved_side() == "input"
    assert 1 <= sphere.history[0]["directions"][name] < 576  # β = 0.5 of the neurons' energy: some directions, not all
    assert float(out[name].norm()) < float(d.norm())  # the soft projection shrinks the update
    c = editor.key_second_moment(name)
    assert c is not None and c.shape == (1536, 1536)
    root = sqrt_psd(c)
    w0 = state.original_weights[name]
    s_before = torch.linalg.svdvals(out[name].double() @ root)  # the applied (projected) ΔW in key space, rank one
    scale = 0.5 * float(s_before[0]) / float(torch.linalg.matrix_norm(w0.double() @ root, ord=2))  # τ at half of it: acts
    # τ is far below 1/ln α here (one edit moves the layer's output by ~1.5 % of its RMS), where the log map would
    # enlarge; the linear map σ/2 + τ/2 shrinks at any τ
    key_aware = KeyAwareSpectralRestraint(mode="linear", threshold_scale=scale)
    key_aware.restrain_update({name: out[name]}, {name: MatrixContext(before[name], w0, c)})
    state.record_step([None], result, 0.0)
    key_aware.on_edit_step(SimpleNamespace(loggers=[]), state)
    tau = key_aware.thresholds()[name]
    s_after = torch.linalg.svdvals((get_weight(lm.model, name).double() - w0.double()) @ root)
    expected = float(restrain_singular_values(s_before[:1], tau, mode="linear")[0])
    assert float(s_after[0]) == pytest.approx(expected, rel=1e-4) and expected < float(s_before[0])


@pytest.mark.parametrize("editor", ["rome", "memit", "alphaedit"])
@pytest.mark.parametrize("fragment, cls", [("sphere.yaml", "SphereRestraint"), ("prune_key_aware.yaml", "KeyAwareSpectralRestraint")])
def test_restraint_configs_compose_with_each_editor(editor, fragment, cls):
    out = io.StringIO()
    args = ["test", "--config", "base.yaml", "--config", f"editor/{editor}.yaml", "--config", f"restraint/{fragment}", "--print_config"]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli_main(args)
    assert done.value.code in (0, None), out.getvalue()
    model = yaml.safe_load(out.getvalue())["model"]["init_args"]
    assert model["restraint"]["class_path"] == f"prune_lit.callbacks.{cls}"
    assert model["editor"]["class_path"].lower().endswith(f"{editor}editor")


def test_the_api_names_both_restraints():
    from prune_lit.api import get_restraint

    sphere = get_restraint("sphere", alpha=0.8)
    assert isinstance(sphere, SphereRestraint) and sphere.alpha == 0.8 and sphere.beta_hse == 0.5
    key_aware = get_restraint("prune_key_aware", threshold="energy", threshold_scale=0.1)
    assert isinstance(key_aware, KeyAwareSpectralRestraint) and key_aware.fingerprint()["threshold"] == "energy"
