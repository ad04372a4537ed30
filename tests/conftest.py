"""Shared test settings: a small hypothesis profile and a torch seed fixture.

Profiles: ``ci`` (default: 50 examples, no deadline, since the CPU is shared and timings
vary) and ``thorough`` (500 examples); choose with ``HYPOTHESIS_PROFILE=thorough``. Under
CI (``CI=true``) or with ``HYPOTHESIS_DERANDOMIZE=1`` the examples are a fixed set, so a CI
run is reproducible; elsewhere they are random, to keep finding new cases. A failing
example is printed and kept in ``.hypothesis/``, which replays it first on the next run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

_derandomize = (
    os.environ.get("HYPOTHESIS_DERANDOMIZE", "") == "1" or os.environ.get("CI", "") == "true"
)
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=_derandomize)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def seed() -> Iterator[int]:
    """Seed torch's global generator with 0 for the test; restore the previous state after."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield 0
    torch.random.set_rng_state(state)
