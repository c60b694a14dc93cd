"""Shared fixtures: deterministic tiny problems; no network, no global RNG."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_fixed_seed():
    # Tests are deterministic by construction (explicit generators); this only guards against
    # accidental use of the global RNG and keeps 2-core CI from oversubscribing.
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
