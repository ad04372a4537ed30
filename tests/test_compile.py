"""The Monitor and ``torch.compile``: exact counts when attached before, a warning after.

The tests compile with ``backend="aot_eager"``: dynamo traces the hooks and AOT autograd
builds the joint graph exactly as for inductor, without inductor's C++ code generation
(15 s per graph on this 2-core machine; the result of the Monitor is the same, checked
by hand with ``backend="inductor"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from deadrelu.monitor import Monitor, MonitorWarning
from models import DeadMLP

BACKEND = "aot_eager"

pytestmark = pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(n)


def _train(model: DeadMLP, run: nn.Module, mon: Monitor, steps: int) -> None:
    xs = model.make_batches(4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for t in range(steps):
        run(xs[t % len(xs)]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        mon.step()


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("functional", [False, True])
def test_attached_before_compile_counts_exactly(functional: bool) -> None:
    torch.manual_seed(0)
    eager_model = DeadMLP()
    model = DeadMLP()
    model.load_state_dict(eager_model.state_dict())

    with Monitor(eager_model, every=2, window=4, functional=functional) as ref:
        _train(eager_model, eager_model, ref, 6)

    mon = Monitor(model, every=2, window=4, functional=functional)
    with mon:
        compiled = torch.compile(model, backend=BACKEND)
        _train(model, compiled, mon, 6)
        assert mon.hooks_registered  # kept registered once seen running compiled
    assert _hooks_left(model) == 0

    assert mon.all_units() == model.expected_dead
    stats, ref_stats = mon.statistics(), ref.statistics()
    for site in ("relu1", "relu2"):
        # sampled steps 0, 2, 4 of 32 positions, and the same counts as eager
        assert int(stats[site].positions) == 3 * 32
        assert torch.equal(stats[site].active, ref_stats[site].active)
        assert torch.allclose(stats[site].abs_sum, ref_stats[site].abs_sum, rtol=1e-5)
    assert mon.history.as_dict() == ref.history.as_dict()


def test_attached_after_compile_warns_and_judges_nothing() -> None:
    model = DeadMLP()
    compiled = torch.compile(model, backend=BACKEND)
    compiled(model.make_batches(1)[0])  # compiled without hooks

    mon = Monitor(model, every=2, window=4)
    with mon, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(model, compiled, mon, 4)
    hits = [str(w.message) for w in caught if issubclass(w.category, MonitorWarning)]
    assert len(hits) == 1 and "before torch.compile" in hits[0]
    assert mon.sites == []
    assert mon.all_units() == {}

    # the documented fix: make dynamo retrace with the hooks
    with mon:
        torch._dynamo.reset()
        _train(model, compiled, mon, 4)
    assert mon.all_units() == model.expected_dead


def test_attached_on_an_unsampled_step_then_compiled() -> None:
    """Resuming at a step that is not sampled: the hooks must still be traced."""
    model = DeadMLP()
    mon = Monitor(model, every=2, window=4)
    mon.step()  # not attached: only advances the counter, to step 1 (not sampled)
    assert not mon.sampling
    with mon:
        compiled = torch.compile(model, backend=BACKEND)
        _train(model, compiled, mon, 6)  # steps 1..6, sampled 2, 4, 6
    assert mon.history.steps == [2, 4, 6]
    assert mon.all_units() == model.expected_dead
    assert int(mon.statistics()["relu1"].positions) == 3 * 32
