"""Tests of deadrelu.certify: sound (never certifies an activated unit) and finds dead units."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from deadrelu.activations import get, make_module, names
from deadrelu.certify import Box, Interval, _activation_bounds, certify


def _preacts(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Max over the batch and positions of each activation module's input: ``(U,)``."""
    out: dict[str, Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if get_or_none(m) is None:
            continue

        def hook(_m: nn.Module, inp: tuple[Tensor, ...], _o: Tensor, name: str = name) -> None:
            z = inp[0].detach().movedim(1, 0).reshape(inp[0].shape[1], -1).amax(1)
            out[name] = z if name not in out else torch.maximum(out[name], z)

        hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def get_or_none(m: nn.Module) -> object | None:
    from deadrelu.activations import spec_for_module

    return spec_for_module(m)


def _corners_and_samples(box: Box, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = box.sample(n, g)
    flat_lo, flat_hi = box.lower.flatten(), box.upper.flatten()
    # random corners: each feature at one of its bounds (where maxima of affine maps lie)
    pick = torch.rand((n, flat_lo.numel()), generator=g, dtype=torch.float64) < 0.5
    corners = torch.where(pick, flat_hi, flat_lo).reshape(n, *box.shape).float()
    return torch.cat([x, corners])


def test_bias_killed_units_found_exactly() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 2))
    with torch.no_grad():
        net[0].bias[[2, 9]] = -1000.0
        net[2].bias[[0, 6]] = -1000.0
    box = Box.from_bounds((5,), 0.0, 1.0)
    cert = certify(net, box)
    # first layer: IBP is exact; max over the box of w.x + b = b + sum(max(w, 0))
    w, b = net[0].weight.detach(), net[0].bias.detach()
    truth = torch.nonzero(b + w.clamp(min=0).sum(1) < 0).flatten().tolist()
    assert {2, 9} <= set(truth)
    assert cert.dead_units("1") == truth
    assert {0, 6} <= set(cert.dead_units("3"))
    assert cert.sites["1"].activation == "relu"
    assert cert.n_certified >= 4
    as_json = json.loads(json.dumps(cert.to_dict()))
    assert as_json["sites"]["1"]["certified_dead"] == truth


def test_conv_channel_killed_and_functional_sites() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 5, 3, padding=1)
            self.bn = nn.BatchNorm2d(5)
            self.conv2 = nn.Conv2d(5, 5, 3, padding=1)
            self.fc = nn.Linear(5 * 2 * 2, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.bn(self.conv(x)))
            h = h + torch.relu(self.conv2(h))  # residual addition
            h = F.max_pool2d(h, 2)
            h = h.view(h.size(0), -1)
            return self.fc(h)

    torch.manual_seed(1)
    net = Net().eval()
    with torch.no_grad():
        net.bn.bias[3] = -1000.0
        net.conv2.bias[1] = -1000.0
    cert = certify(net, Box.from_bounds((2, 4, 4), -1.0, 1.0))
    assert list(cert.sites) == [":relu", ":relu#1"]
    assert 3 in cert.dead_units(":relu")
    assert 1 in cert.dead_units(":relu#1")


def test_box_from_data() -> None:
    data = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.0]])
    box = Box.from_data([data[:2], data[2:]])
    assert box.lower.tolist() == [0.0, -1.0]
    assert box.upper.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="lower > upper"):
        Box(torch.ones(2), torch.zeros(2))


@pytest.mark.parametrize("name", names())
def test_activation_bounds_contain_every_value(name: str) -> None:
    act = get(name)
    assert act is not None
    module = act.module().double().eval()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, 200, generator=g, dtype=torch.float64) * 3
    b = a + torch.rand(1, 200, generator=g, dtype=torch.float64) * 4
    with torch.no_grad():
        iv = _activation_bounds(module, act, Interval(a, b))
    t = torch.linspace(0, 1, 501, dtype=torch.float64)[:, None]
    with torch.no_grad():
        values = module(a + t * (b - a))
    assert bool((values >= iv.lo - 1e-12).all()) and bool((values <= iv.hi + 1e-12).all())
    # and tight: the bounds are attained (within the grid step)
    assert float((values.amin(0) - iv.lo[0]).max()) < 1e-3
    assert float((iv.hi[0] - values.amax(0)).max()) < 1e-9


def test_gelu_minimum_is_inside_the_bounds() -> None:
    act = get("gelu")
    assert act is not None
    iv = _activation_bounds(
        act.module().double(),
        act,
        Interval.from_mid_rad(
            torch.tensor([[-0.5]], dtype=torch.float64), torch.tensor([[1.5]], dtype=torch.float64)
        ),
    )
    # GELU's minimum is about -0.16997 at z = -0.7518; the endpoints give more
    assert float(iv.lo) == pytest.approx(-0.16997, abs=1e-4)


_ACTS = ["relu", "leaky_relu(0.1)", "elu", "gelu", "silu", "relu6", "softplus", "prelu"]


@st.composite
def _mlp(draw: st.DrawFn) -> tuple[nn.Module, Box]:
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    depth = draw(st.integers(1, 4))
    width = draw(st.integers(2, 8))
    d_in = draw(st.integers(1, 4))
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        lin = nn.Linear(d, width)
        with torch.no_grad():
            lin.bias.add_(torch.randn(width) * draw(st.sampled_from([0.1, 1.0, 3.0])))
        layers.append(lin)
        if draw(st.booleans()):
            bn = nn.BatchNorm1d(width)
            with torch.no_grad():
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.2, 2.0)
                bn.weight.normal_()
                bn.bias.normal_()
            layers.append(bn)
        layers.append(make_module(draw(st.sampled_from(_ACTS))))
        d = width
    layers.append(nn.Linear(d, 2))
    lo = torch.randn(d_in, dtype=torch.float64)
    hi = lo + torch.rand(d_in, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 4.0]))
    return nn.Sequential(*layers).eval(), Box(lo, hi)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mlp())
def test_never_certifies_an_activated_unit(case: tuple[nn.Module, Box]) -> None:
    net, box = case
    seen = _preacts(net, _corners_and_samples(box, 500, 0))
    ibp = certify(net, box, method="ibp")
    sym = certify(net, box, method="symbolic")
    for cert in (ibp, sym):
        for site, bounds in cert.sites.items():
            z = seen[site].double()
            assert bool((z <= bounds.upper + 1e-5).all()), (cert.method, site)
            assert not bool((z[bounds.certified_dead] > 0).any()), (cert.method, site)
    for site in ibp.sites:  # symbolic bounds are never looser than IBP's
        assert bool((sym.sites[site].upper <= ibp.sites[site].upper + 1e-9).all())
        assert set(ibp.dead_units(site)) <= set(sym.dead_units(site))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**16), st.sampled_from([0.0, -0.5, -2.0]))
def test_never_certifies_in_conv_nets(seed: int, shift: float) -> None:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 3, 3),
        nn.LeakyReLU(0.05),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 4),
        nn.ReLU(),
    )
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[4].bias.add_(shift)
        net[7].bias.add_(shift)
    net.eval()
    box = Box.from_bounds((2, 8, 8), -0.5, 0.5)
    seen = _preacts(net, _corners_and_samples(box, 300, seed))
    for method in ("ibp", "symbolic"):
        cert = certify(net, box, method=method)
        for site, bounds in cert.sites.items():
            assert bool((seen[site].double() <= bounds.upper + 1e-5).all()), (method, site)
            assert not bool((seen[site][bounds.certified_dead] > 0).any()), (method, site)


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.leaky_relu(self.fc1(x), 0.1)) * 0.5


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**16), st.integers(1, 3), st.sampled_from([0.0, -0.5, -1.5]))
def test_never_certifies_in_residual_nets(seed: int, blocks: int, shift: float) -> None:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(3, 6)]
    for _ in range(blocks):
        layers += [_ResBlock(6), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(6, 1))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.bias.add_(shift)
    box = Box.from_bounds((3,), -1.0, 1.0)
    x = _corners_and_samples(box, 400, seed)
    with torch.no_grad():
        zs: dict[str, Tensor] = {}
        h = net[0](x)
        for i, m in enumerate(net[1:-1], start=1):
            if isinstance(m, nn.ReLU):
                zs[str(i)] = h.amax(0)
            h = m(h)
    for method in ("ibp", "symbolic"):
        cert = certify(net, box, method=method)
        for site, z in zs.items():
            assert bool((z.double() <= cert.sites[site].upper + 1e-5).all()), (method, site)
            assert not bool((z[cert.sites[site].certified_dead] > 0).any()), (method, site)


def test_symbolic_bounds_see_cancellation_ibp_cannot() -> None:
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU())
    with torch.no_grad():
        net[0].weight[:] = torch.tensor([[1.0], [1.0]])
        net[0].bias.zero_()
        net[2].weight[:] = torch.tensor([[1.0, -1.0]])
        net[2].bias.fill_(-0.1)  # z = relu(x) - relu(x) - 0.1 = -0.1 for every x
    box = Box.from_bounds((1,), 0.5, 1.0)
    assert certify(net, box, method="ibp").dead_units("3") == []
    sym = certify(net, box, method="symbolic")
    assert sym.dead_units("3") == [0]
    assert float(sym.sites["3"].upper[0]) == pytest.approx(-0.1)


def test_symbolic_falls_back_to_ibp_when_too_large() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU())
    box = Box.from_bounds((4,), -1.0, 1.0)
    small = certify(net, box, max_coefficients=10)
    ibp = certify(net, box, method="ibp")
    for site in ibp.sites:
        assert torch.allclose(small.sites[site].upper, ibp.sites[site].upper)
    with pytest.raises(ValueError, match="unknown certification method"):
        certify(net, box, method="crown")


def test_unsupported_layers_are_named() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.ReLU())
    with pytest.raises(ValueError, match=r"'1'.*LayerNorm"):
        certify(net, Box.from_bounds((3,), 0.0, 1.0))
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ReLU())
    with pytest.raises(ValueError, match="running statistics"):
        certify(bn, Box.from_bounds((3,), 0.0, 1.0))


def test_untraceable_model_gets_advice() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:
                return torch.relu(self.fc(x))
            return x

    with pytest.raises(ValueError, match="cannot trace"):
        certify(Branchy(), Box.from_bounds((2,), 0.0, 1.0))


def test_reused_module_gives_one_site_per_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 3)
            self.b = nn.Linear(3, 3)
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.act(self.b(self.act(self.a(x))))

    net = Twice()
    with torch.no_grad():
        net.a.bias[:] = -100.0  # first call: all dead; second call: b's bias decides
        net.b.bias[:] = torch.tensor([-100.0, 5.0, 5.0])
    cert = certify(net, Box.from_bounds((2,), 0.0, 1.0))
    assert cert.dead_units("act") == [0, 1, 2]
    assert cert.dead_units("act#1") == [0]


def test_models_with_dead_units_by_construction() -> None:
    from models import (
        DeadChannelCNN,
        DeadMLP,
        DictInputModel,
        FirstLayerNegativeWeights,
        InplaceReLUModel,
        ReusedReLUModel,
        TinyTransformerBlock,
    )

    cases: list[tuple[nn.Module, Box]] = [
        (DeadMLP(), Box.from_bounds((8,), -1.0, 1.0)),
        (DeadChannelCNN(), Box.from_bounds((3, 8, 8), -1.0, 1.0)),
        (ReusedReLUModel(), Box.from_bounds((4,), -1.0, 1.0)),
        (InplaceReLUModel(), Box.from_bounds((5,), -1.0, 1.0)),
        (DictInputModel(), Box.from_bounds((6,), -1.0, 1.0)),
        # all-negative weights, bias 0: z < 0 once every input is >= 0.01 (z = 0 at x = 0)
        (FirstLayerNegativeWeights(), Box.from_bounds((6,), 0.01, 1.0)),
    ]
    for model, box in cases:
        cert = certify(model, box)
        expected: dict[str, list[int]] = model.expected_dead  # type: ignore[assignment]
        got = {site: cert.dead_units(site) for site in expected}
        assert got == expected, type(model).__name__
    # at x = 0 the unit's z is exactly 0: not certified (the margin), and nothing wrong is
    at_zero = certify(FirstLayerNegativeWeights(), Box.from_bounds((6,), 0.0, 1.0))
    assert at_zero.dead_units("act") == []
    with pytest.raises(ValueError, match=r"'norm1'.*LayerNorm"):
        certify(TinyTransformerBlock(), Box.from_bounds((5, 8), -1.0, 1.0))


def test_site_names_and_units_match_scan() -> None:
    from deadrelu.scan import scan
    from models import DeadChannelCNN, DeadMLP, DictInputModel, InplaceReLUModel, ReusedReLUModel

    for model in (
        DeadMLP(),
        DeadChannelCNN(),
        ReusedReLUModel(),
        InplaceReLUModel(),
        DictInputModel(),
    ):
        data = model.make_batches()
        report = scan(model, data)
        inputs = [d["features"] if isinstance(d, dict) else d for d in data]
        cert = certify(model, Box.from_data(inputs))
        assert list(cert.sites) == list(report.stats), type(model).__name__
        for site, bounds in cert.sites.items():
            assert bounds.upper.numel() == report.stats[site].units
            assert bounds.unit_dim == report.sites[site].unit_dim
            # the data lie in the box: a unit certified on it is dead on the data
            assert set(bounds.dead_units()) <= set(report.dead_units(site))


def test_arithmetic_with_extra_arguments_is_refused_and_clamp_is_sound() -> None:
    class Alpha(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(torch.add(self.fc(x), x, alpha=-3.0))

    with pytest.raises(ValueError, match="extra arguments"):
        certify(Alpha(), Box.from_bounds((2,), 0.0, 1.0))

    class Clamp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 3)

        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(self.fc(x.clamp(min=0.5)) - 2.0)

    torch.manual_seed(0)
    model = Clamp()
    box = Box.from_bounds((2,), -1.0, 1.0)
    x = _corners_and_samples(box, 300, 0)
    with torch.no_grad():
        z = (model.fc(x.clamp(min=0.5)) - 2.0).amax(0)
    for method in ("ibp", "symbolic"):
        bounds = certify(model, box, method=method).sites[":relu"]
        assert bool((z.double() <= bounds.upper + 1e-6).all())


def test_refusals_name_the_module_path_not_the_fx_node() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(self.fc(x)).cumsum(dim=1)  # cumsum: no interval rule

    model = nn.Sequential(nn.Linear(3, 3), Inner()).eval()
    with pytest.raises(ValueError, match=r"in the forward of module '1'.*cumsum") as info:
        certify(model, Box.from_bounds((3,), -1.0, 1.0))
    assert "node" not in str(info.value)


def test_a_box_of_the_wrong_shape_names_both_shapes() -> None:
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).eval()
    with pytest.raises(
        ValueError, match=r"box has shape \(5,\).*'0' \(Linear\) takes \(N, \.\.\., 4\)"
    ):
        certify(mlp, Box.from_bounds((5,), -1.0, 1.0))
    cnn = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    with pytest.raises(
        ValueError, match=r"box has shape \(1, 8, 8\).*Conv2d\) takes \(N, 3, \*, \*\)"
    ):
        certify(cnn, Box.from_bounds((1, 8, 8), 0.0, 1.0))
    assert certify(mlp, Box.from_bounds((4,), -1.0, 1.0)).sites  # the right shape still works
