"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch

from prune_lit.models.loader import load_model


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small forward
    passes run several times faster that way when the 2 CPU cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def tiny(request):
    """A tiny random LLaMA, then a tiny random GPT-2 (seed 0), once per module; a module may define its own ``tiny``."""
    return load_model(request.param, seed=0)
