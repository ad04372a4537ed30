"""Tests of deadrelu.advice: advice never harms a trained model; Advice lines apply as said.

Three nets are trained here (seconds) with dead units: two with units killed by
construction before training (a large negative bias: zero gradient, so they stay dead),
one whose units die from a too large learning rate. Every suggestion is then applied
literally, each on a fresh copy of the trained net: accuracy on held-out data may not drop
by more than one point and the number of dead units may not grow.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deadrelu.advice import Advice, suggest
from deadrelu.monitor import Monitor
from deadrelu.scan import scan


def _blobs(n: int, d: int, seed: int) -> tuple[Tensor, Tensor]:
    """3 Gaussian classes in ``d`` dims, centres fixed by the class."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, d, generator=torch.Generator().manual_seed(99)) * 0.6
    y = torch.randint(0, 3, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


def _images(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """(n, 1, 8, 8) images; the class is the brightest of three horizontal bands."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g)
    for c in range(3):
        x[y == c, :, 2 * c + 1 : 2 * c + 3, :] += 0.3
    return x, y


def _train(net: nn.Module, x: Tensor, y: Tensor, steps: int, opt: torch.optim.Optimizer) -> None:
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()


def _accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def _mlp_killed() -> tuple[nn.Module, torch.optim.Optimizer, Tensor, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    with torch.no_grad():
        net[0].bias[:6] = -100.0  # dead from the start, and forever (zero gradient)
    x, y = _blobs(512, 10, 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    _train(net, x, y, 80, opt)
    return net, opt, x, y, *_blobs(512, 10, 1)


def _cnn_killed() -> tuple[nn.Module, torch.optim.Optimizer, Tensor, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    )  # fmt: skip
    with torch.no_grad():
        net[1].bias[[1, 5]] = -100.0  # BN output ~ N(0, 1) - 100: dead channels
    x, y = _images(256, 0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    _train(net, x, y, 40, opt)
    return net, opt, x, y, *_images(256, 1)


def _mlp_lr_spike() -> tuple[nn.Module, torch.optim.Optimizer, Tensor, Tensor, Tensor, Tensor]:
    """Units killed by training itself: one step at a learning rate 500x too large."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
    )
    x, y = _blobs(512, 10, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    _train(net, x, y, 20, opt)
    opt.param_groups[0]["lr"] = 50.0
    _train(net, x, y, 1, opt)
    opt.param_groups[0]["lr"] = 0.1
    _train(net, x, y, 60, opt)
    return net, opt, x, y, *_blobs(512, 10, 3)


NETS: dict[
    str, Callable[[], tuple[nn.Module, torch.optim.Optimizer, Tensor, Tensor, Tensor, Tensor]]
] = {
    "mlp_killed": _mlp_killed,
    "cnn_bn_killed": _cnn_killed,
    "mlp_lr_spike": _mlp_lr_spike,
}


@pytest.mark.parametrize("name", list(NETS))
def test_applying_every_suggestion_never_harms_a_trained_net(name: str) -> None:
    net, opt, x, _, x_test, y_test = NETS[name]()
    report = scan(net, x)
    dead = report.count("dead")
    acc = _accuracy(net, x_test, y_test)
    assert dead > 0 and acc > 0.5, (dead, acc)  # the setting: trained, with dead units
    advice = suggest(report, model=net, data=x)
    assert all(isinstance(a, Advice) for a in advice)
    now = [a for a in advice if a.when == "now"]
    assert [a.remedy for a in now] == ["recycle"]  # the only cure advised on a trained net
    assert now[0].units == {s: report.dead_units(s) for s in report.sites if report.dead_units(s)}
    for a in advice:
        trial, trial_opt = copy.deepcopy(net), copy.deepcopy(opt)
        trial_opt.param_groups[0]["params"] = list(trial.parameters())  # the copy's params
        trial_opt.state.clear()
        a.apply(trial, trial_opt, data=x)
        assert _accuracy(trial, x_test, y_test) >= acc - 0.01, a
        assert scan(trial, x).count("dead") <= dead, a


def test_whole_model_initialisers_only_before_training() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].bias[:3] = -100.0
    x = torch.randn(64, 4)
    with Monitor(net, every=1, threshold=None, training_only=False) as mon:
        for _ in range(2):
            net(x)
            mon.step()
        trained = suggest(mon, model=net, data=x)  # a Monitor past step 0: trained
    assert [a.remedy for a in trained if a.when == "now"] == ["recycle"]
    assert any("next run" in a for a in trained if a.when == "next run")
    explicit = suggest(scan(net, x), model=net, data=x, trained=False)
    assert "init_bias_" in {a.remedy for a in explicit if a.when == "now"}
    before = next(a for a in explicit if a.remedy == "init_bias_")
    summary = before.apply(net)
    assert summary is not None and "0.bias" in summary.changed[0]
    assert float(net[0].bias.detach().min()) == pytest.approx(0.01)
    info = [a for a in trained if a.when != "now"]
    assert info and all(a.apply(net) is None for a in info)
