"""The restraint contract: an update-time restraint rewrites each step's update before it is applied, for every
editor, and the loop wires it (tiny models)."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from prune_lit.contracts import EditRequest, EditState, EditStats, MatrixContext, ProposedUpdate, Restraint
from prune_lit.data.edit_datamodule import EditDataModule
from prune_lit.editors import AlphaEditEditor, Editor, MEMITEditor, ROMEEditor
from prune_lit.models import get_weight, load_model
from prune_lit.modules.edit_step import update_hook
from prune_lit.modules.sequential_editing import SequentialEditingModule

FACTS = [
    ("The city that holds the Eiffel Tower", "Eiffel Tower", "Rome"),
    ("The language spoken by Danielle Darrieux", "Danielle Darrieux", "English"),
]


class ScaleUpdates(Restraint):
    """Multiplies every update by ``factor`` and keeps what it was given (the contract's docstring example)."""

    def __init__(self, factor: float = 0.5) -> None:
        super().__init__()
        self.factor = factor
        self.seen: list[tuple[dict[str, torch.Tensor], dict[str, MatrixContext]]] = []

    def restrain_update(self, deltas, context):
        self.seen.append(({n: d.clone() for n, d in deltas.items()}, {n: MatrixContext(c.weight.clone(), c.original, c.key_second_moment) for n, c in context.items()}))
        return {n: self.factor * d for n, d in deltas.items()}

    def fingerprint(self):
        return {"factor": self.factor}


@pytest.mark.parametrize("editor_cls, n_requests", [(ROMEEditor, 1), (MEMITEditor, 2), (AlphaEditEditor, 2)])
def test_update_time_restraint_acts_between_compute_and_apply(editor_cls, n_requests):
    lm = load_model("tiny-llama")
    editor = editor_cls()
    editor.prepare(lm.model, lm.tokenizer, "tiny-llama", None)
    names = editor.weight_names(lm.model)
    state = EditState(lm.model, lm.tokenizer, {n: get_weight(lm.model, n).float().clone() for n in names})
    before = {n: get_weight(lm.model, n).clone() for n in names}
    restraint = ScaleUpdates(0.5)
    requests = [EditRequest(i, p, s, t) for i, (p, s, t) in enumerate(FACTS[:n_requests])]
    with torch.no_grad():
        result = editor.edit(lm.model, lm.tokenizer, requests, update_hook([restraint], editor, state))
    assert result.applied and len(restraint.seen) == 1
    proposed, context = restraint.seen[0]
    assert set(proposed) == set(context) and set(proposed) <= set(names)
    for n, d in proposed.items():
        assert torch.equal(context[n].weight, before[n])  # it saw the weights before this step's update
        assert torch.equal(context[n].original, state.original_weights[n])
        c = context[n].key_second_moment  # the editor's C of that layer (mom2_adjustment is on)
        assert c is not None and c.shape == (d.shape[1], d.shape[1])
        assert float(d.norm()) > 0
        torch.testing.assert_close(result.deltas[n], 0.5 * d)  # what was applied is the restrained update ...
        torch.testing.assert_close(get_weight(lm.model, n), before[n] + 0.5 * d, rtol=0, atol=1e-6)  # ... and only it
    for n in set(names) - set(proposed):
        assert torch.equal(get_weight(lm.model, n), before[n])


class _FactoredEditor(Editor):
    """Proposes ΔW = a bᵀ on two matrices with its factors, as MEND does."""

    def weight_names(self, model):
        return ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]

    def compute_deltas(self, model, tokenizer, requests):
        update = self.compute_update(model, tokenizer, requests)
        return update.deltas, update.stats

    def compute_update(self, model, tokenizer, requests):
        factors = {}
        for i, n in enumerate(self.weight_names(model)):
            out_dim, in_dim = get_weight(model, n).shape
            factors[n] = (torch.full((out_dim, 1), 0.01 * (i + 1)), torch.ones(in_dim, 1))
        return ProposedUpdate({n: a @ b.T for n, (a, b) in factors.items()}, EditStats(), factors)


def test_factors_survive_only_for_the_matrices_an_update_time_restraint_left_alone():
    lm = load_model("tiny-llama")
    editor = _FactoredEditor()
    first, second = editor.weight_names(lm.model)
    request = [EditRequest(0, *FACTS[0])]
    result = editor.edit(lm.model, lm.tokenizer, request)
    assert set(result.factors) == {first, second}  # no restraint: the factors travel to the result
    result = editor.edit(lm.model, lm.tokenizer, request, lambda deltas: {**deltas, second: 2 * deltas[second]})
    assert set(result.factors) == {first}  # a rewritten ΔW is no longer A Bᵀ
    with pytest.raises(ValueError, match="changed the edited matrices"):
        editor.edit(lm.model, lm.tokenizer, request, lambda deltas: {first: deltas[first]})


def test_the_loop_restrains_each_update_and_reports_the_restraint(tmp_path):
    restraint = ScaleUpdates(0.5)
    module = SequentialEditingModule(editor=ROMEEditor(), model_name="tiny-llama", downstream=None, evaluate_before=False,
                                     checkpoint_dir=str(tmp_path / "ckpt"), restraint=restraint)
    trainer = L.Trainer(logger=TensorBoardLogger(tmp_path, name="scaled"), inference_mode=False, enable_progress_bar=False,
                        enable_checkpointing=False)
    trainer.test(module, datamodule=EditDataModule(num_edits=2, batch_size=1))
    assert len(restraint.seen) == 2
    for name, w0 in module.original_weights.items():
        applied = sum(0.5 * deltas[name] for deltas, _ in restraint.seen)
        torch.testing.assert_close(get_weight(module.model, name) - w0, applied, rtol=0, atol=1e-5)
    ckpt_dirs = sorted((tmp_path / "ckpt" / "scaled").glob("step-*/state.json"))
    state = json.loads(ckpt_dirs[-1].read_text())
    assert state["fingerprint"]["restraint"] == [{"factor": 0.5}]
