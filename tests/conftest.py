"""Shared test settings: a small, deterministic hypothesis profile and a torch seed fixture.

Profiles: ``ci`` (default: 50 examples, no deadline, derandomised so a failure reproduces)
and ``thorough`` (500 examples); choose with ``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def seed() -> Iterator[int]:
    """Seed torch's global generator with 0 for the test; restore the previous state after."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield 0
    torch.random.set_rng_state(state)
