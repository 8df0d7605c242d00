"""Held-out keys and the output shift of an edit (prune_lit/metrics/disturbance.py), checked by hand."""

from __future__ import annotations

import pytest
import torch

from prune_lit.editors import null_space_projector
from prune_lit.metrics.disturbance import expected_output_shift, held_out_keys, kept_energy, output_shift
from prune_lit.models import get_module, get_weight, load_model


def test_output_shift_and_kept_energy_by_hand():
    w0 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    K = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # two keys, along e1 and 2·e2
    delta = torch.tensor([[0.0, 0.0], [0.0, 0.5]])  # moves only the e2 direction
    # ‖ΔW K‖ = ‖[[0,0],[0,1]]‖ = 1; ‖W₀ K‖ = ‖[[2,0],[0,2]]‖ = √8
    assert output_shift(w0, delta, K) == pytest.approx(1 / 8**0.5)
    P = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # edits may use e2 only
    assert kept_energy(P, K) == pytest.approx(4 / 5)
    # a projector from "statistics" whose small eigenvalue is along e1 keeps exactly that direction
    P2, n = null_space_projector(torch.diag(torch.tensor([1e-4, 1.0])).double(), 1e-2)
    assert n == 1 and kept_energy(P2, K) == pytest.approx(1 / 5)


def test_held_out_keys_are_the_inputs_of_the_matrix():
    lm = load_model("tiny-llama")
    name = "model.layers.1.mlp.down_proj.weight"
    windows = torch.randint(0, 200, (2, 7))
    keys = held_out_keys(lm.model, windows, [name])[name]
    assert keys.shape == (get_weight(lm.model, name).shape[1], 14)
    seen = []
    handle = get_module(lm.model, "model.layers.1.mlp.down_proj").register_forward_hook(lambda _m, i, _o: seen.append(i[0][0]))
    with torch.no_grad():
        lm.model(input_ids=windows[1:2])
    handle.remove()
    torch.testing.assert_close(keys[:, 7:], seen[0].T.double())
    # the shift of the matrix's own output on those keys, for ΔW = W₀, is 1
    w0 = get_weight(lm.model, name)
    assert output_shift(w0, w0, keys) == pytest.approx(1.0)


def test_expected_output_shift_is_the_output_shift_under_the_keys_second_moment():
    g = torch.Generator().manual_seed(0)
    w0, delta, K = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g), torch.randn(7, 40, generator=g)
    c = K.double() @ K.double().T / K.shape[1]
    assert expected_output_shift(w0, delta, c) == pytest.approx(output_shift(w0, delta, K), rel=1e-12)
    # keys that never excite the edited input directions see no change
    c_blind = torch.diag(torch.tensor([1.0, 1, 1, 0, 0, 0, 0]))
    edit_elsewhere = torch.zeros(5, 7)
    edit_elsewhere[:, 3:] = 1.0
    assert expected_output_shift(w0, edit_elsewhere, c_blind) == 0.0
