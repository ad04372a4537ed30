"""The dead class for activations that die only below a negative kink (hardswish,
hardsigmoid): dead means every output exactly 0, not merely "never z > 0"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deadrelu.monitor import Monitor
from deadrelu.scan import scan


def _net(act: nn.Module) -> nn.Sequential:
    """Three hidden units by construction: 0 has z = -1000 (output 0: dead), 1 has z = -1
    (between the kink at -3 and 0: non-zero output and gradient, not dead), 2 has z = x0
    (positive on half the inputs)."""
    net = nn.Sequential(nn.Linear(4, 3), act, nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[2, 0] = 1.0
        net[0].bias.copy_(torch.tensor([-1000.0, -1.0, 0.0]))
    return net


@pytest.mark.parametrize("act", [nn.Hardswish(), nn.Hardsigmoid()])
def test_hard_activations_dead_only_where_every_output_is_zero(act: nn.Module) -> None:
    net = _net(act)
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    assert scan(net, [x]).dead_units("1") == [0]
    for detail in ("counts", "range"):
        assert scan(net, [x], detail=detail).dead_units("1") == [0]
    with Monitor(net, every=1, window=2) as mon:
        for _ in range(3):
            net(x)
            mon.step()
    assert mon.dead_units("1") == [0]
    assert mon.report().dead_units("1") == [0]


def test_relu_dead_is_never_positive() -> None:
    """For ReLU a unit with z = -1 everywhere is dead (output 0 everywhere)."""
    net = _net(nn.ReLU())
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    assert scan(net, [x]).dead_units("1") == [0, 1]
