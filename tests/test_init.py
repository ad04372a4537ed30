"""Initialisation helpers: gains against torch and the oracle, fans, deep signal propagation."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from deadrelu import reference
from deadrelu.activations import get, names
from deadrelu.init import gain, init_for, kaiming_init_, lecun_normal_, rai_init_, rai_sample


@pytest.mark.parametrize(
    ("activation", "torch_name", "param"),
    [
        ("relu", "relu", None),
        ("leaky_relu", "leaky_relu", 0.01),
        ("leaky_relu(0.2)", "leaky_relu", 0.2),
    ],
)
def test_gain_matches_torch(activation: str, torch_name: str, param: float | None) -> None:
    assert gain(activation) == pytest.approx(nn.init.calculate_gain(torch_name, param), rel=1e-15)


def test_gain_closed_forms() -> None:
    assert gain("prelu") == pytest.approx(math.sqrt(2 / (1 + 0.25**2)), rel=1e-15)
    assert gain(nn.PReLU(init=0.5)) == pytest.approx(math.sqrt(2 / 1.25), rel=1e-15)
    assert gain("rrelu(lower=0.1, upper=0.3)") == pytest.approx(math.sqrt(2 / 1.04), rel=1e-15)
    assert gain(nn.SELU) == 1.0  # LeCun, not torch's 3/4
    assert gain("relu6") == pytest.approx(math.sqrt(2), rel=1e-6)  # P(z > 6) ~ 1e-9


@pytest.mark.parametrize("name", names())
def test_gain_normalises_second_moment(name: str) -> None:
    """E[(gain f(z))^2] = 1 for z ~ N(0, 1), integrated with the NumPy oracle's f."""
    act = get(name)
    assert act is not None
    z = np.linspace(-14, 14, 560_001)
    density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    f = reference.forward(act.name, z, **act.params)
    second = np.trapezoid((gain(act) * f) ** 2 * density, z)
    assert second == pytest.approx(1.0, abs=1e-6)


def test_kaiming_linear_statistics(seed: int) -> None:
    layer = nn.Linear(1000, 500)
    kaiming_init_(layer, "relu", bias=0.01)
    std = layer.weight.std().item()
    # 500k samples: the std's standard error is std / sqrt(2n) ~ 0.1 %; 1 % is ~10 SE.
    assert std == pytest.approx(math.sqrt(2 / 1000), rel=0.01)
    assert layer.weight.mean().abs().item() < 5 * std / math.sqrt(500_000)
    assert torch.all(layer.bias == 0.01)
    kaiming_init_(layer, "relu", mode="fan_out", distribution="uniform")
    bound = math.sqrt(3) * math.sqrt(2 / 500)
    assert layer.weight.abs().max().item() <= bound
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.01)
    assert torch.all(layer.bias == 0)


def test_conv_fan_and_lecun(seed: int) -> None:
    conv = nn.Conv2d(16, 64, kernel_size=3)  # fan_in = 16 * 9 = 144
    lecun_normal_(conv)
    assert conv.weight.std().item() == pytest.approx(1 / 12, rel=0.02)
    kaiming_init_(conv, "leaky_relu(0.2)")
    expected = nn.init.calculate_gain("leaky_relu", 0.2) / 12
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    kaiming_init_(conv, "selu")  # SELU -> LeCun
    assert conv.weight.std().item() == pytest.approx(1 / 12, rel=0.02)


def _mlp(depth: int, width: int, act: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), get(act).module()]  # type: ignore[union-attr]
    return nn.Sequential(*layers)


def _preactivation_moments(model: nn.Sequential, x: torch.Tensor) -> list[tuple[float, float]]:
    out = []
    with torch.no_grad():
        for m in model:
            x = m(x)
            if isinstance(m, nn.Linear):
                out.append((x.mean().item(), (x * x).mean().item()))
    return out


def test_he_init_keeps_deep_relu_signal_and_gain_one_does_not(seed: int) -> None:
    """He init keeps E[z^2] through depth; gain 1 halves it at every layer.

    At finite width the kept moment fluctuates: log(M_L / M_1) has variance about
    5 * sum_l 1 / n_l (Hanin & Rolnick, "How to Start Training", NeurIPS 2018), so for 16
    layers of width 512 sigma ~ 0.4 and we allow 5 sigma. Gain 1 gives 2^-15 ~ 3e-5.
    """
    depth, width = 16, 512
    x = torch.randn(200, width)
    model = init_for(_mlp(depth, width, "relu"))
    moments = _preactivation_moments(model, x)
    # The first layer sees x itself, not relu(x): E[z_1^2] = gain^2 E[x^2] = 2; then kept.
    assert moments[0][1] == pytest.approx(2.0, rel=0.1)
    sigma = math.sqrt(5 * depth / width)
    assert math.exp(-5 * sigma) < moments[-1][1] / moments[0][1] < math.exp(5 * sigma)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1 / math.sqrt(width))
            nn.init.zeros_(m.bias)
    moments = _preactivation_moments(model, x)
    assert moments[-1][1] / moments[0][1] < 1e-3


def test_selu_with_lecun_self_normalises(seed: int) -> None:
    model = init_for(_mlp(32, 512, "selu"))
    x = torch.randn(500, 512)
    with torch.no_grad():
        y = model(x)
    assert abs(y.mean().item()) < 0.1
    assert 0.8 < y.var().item() < 1.2


def test_init_for_infers_or_asks(seed: int) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 2))
    init_for(model, bias=0.5)
    assert torch.all(model[0].bias == 0.5) and torch.all(model[2].bias == 0.5)
    mixed = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ELU())
    with pytest.raises(ValueError, match="found: elu, relu"):
        init_for(mixed)
    init_for(mixed, "relu")
    with pytest.raises(ValueError, match="no activation modules"):
        init_for(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        init_for(nn.Sequential(nn.ReLU()), "relu")


def test_bad_arguments() -> None:
    layer = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="no weight of shape"):
        kaiming_init_(nn.ReLU(), "relu")
    with pytest.raises(ValueError, match="mode must be"):
        kaiming_init_(layer, "relu", mode="fan_avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distribution must be"):
        kaiming_init_(layer, "relu", distribution="cauchy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bias must be finite"):
        kaiming_init_(layer, "relu", bias=math.nan)
    with pytest.raises(ValueError, match="unknown activation"):
        gain("tanhh")
    with pytest.raises(ValueError, match="activation is needed"):
        gain(None)


def test_rai_sample_has_one_positive_beta_entry_per_unit() -> None:
    g = torch.Generator().manual_seed(0)
    w, b = rai_sample(2000, 3, sigma=1e-6, generator=g)
    assert b is not None
    v = torch.cat([w, b[:, None]], dim=1)
    big = v.abs() > 1e-3  # the symmetric part is tiny, so the Beta(2, 1) entry stands out
    assert bool((big.sum(1) == 1).all())
    beta = v[big]
    assert bool((beta > 0).all() and (beta <= 1).all())
    assert float(beta.mean()) == pytest.approx(2 / 3, abs=0.02)  # mean of Beta(2, 1)
    # the chosen entry is uniform over the fan_in + 1 positions
    counts = big.sum(0).float() / 2000
    assert bool(((counts - 0.25).abs() < 0.05).all())


def test_rai_init_changes_only_layers_feeding_relu() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(8, 16),
            relu1=nn.ReLU(),
            fc2=nn.Linear(16, 12),
            relu2=nn.ReLU(),
            head=nn.Linear(12, 3),
        )
    )
    head = net.head.weight.detach().clone()
    summary = rai_init_(net, generator=torch.Generator().manual_seed(0))
    assert torch.equal(net.head.weight, head)
    assert len(summary.changed) == 2
    v = torch.cat([net.fc1.weight, net.fc1.bias[:, None]], dim=1)
    assert bool((v.max(dim=1).values > 0).all())
