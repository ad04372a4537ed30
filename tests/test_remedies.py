"""Tests of deadrelu.remedies and deadrelu.born_dead, with dead units by construction."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from deadrelu.born_dead import born_dead_rate
from deadrelu.explain import explain
from deadrelu.graph import link_sites
from deadrelu.remedies import init_bias_, links_of, recycle, swap_activations
from deadrelu.scan import scan
from models import TinyTransformerBlock, all_models, bn_dead_in_train_mode

KILLED = [1, 4]


def _bias_killed_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(8, 16),
            relu1=nn.ReLU(),
            fc2=nn.Linear(16, 12),
            relu2=nn.ReLU(),
            head=nn.Linear(12, 3),
        )
    )
    with torch.no_grad():
        net.fc1.bias[KILLED] = -1000.0
    return net


def _data(seed: int = 0, n: int = 256) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _step_lowers_loss(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    before = F.cross_entropy(net(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(net(x), y)
    assert float(after) < float(before.detach())


pytestmark = pytest.mark.filterwarnings("error::UserWarning")


def test_links_of_an_mlp_and_a_cnn() -> None:
    links = link_sites(_bias_killed_mlp())
    assert links["relu1"].producer == "fc1"
    assert links["relu1"].consumers == [("fc2", "linear")]
    assert links["relu2"].consumers == [("head", "linear")]
    cnn = _cnn()
    lk = link_sites(cnn)
    assert (lk["relu1"].producer, lk["relu1"].norm) == ("conv1", "bn1")
    assert lk["relu1"].consumers == [("conv2", "conv")]
    assert lk["relu2"].consumers == [("fc", "flatten_linear")]


def test_bias_killed_units_init_bias_then_scan_finds_none() -> None:
    net = _bias_killed_mlp()
    x, y = _data()
    report = scan(net, x)
    assert report.dead_units("relu1") == KILLED
    assert explain(net, report).causes("relu1") == dict.fromkeys(KILLED, "bias")
    summary = init_bias_(net, 0.01)
    assert float(net.fc1.bias.detach().min()) == pytest.approx(0.01)
    assert float(net.head.bias.detach().abs().max()) != 0.01  # the output layer is left alone
    assert any("fc1.bias" in c for c in summary.changed)
    report = scan(net, x)
    assert report.count("dead") == 0
    _step_lowers_loss(net, torch.optim.SGD(net.parameters(), lr=0.1), x, y)


def test_bias_killed_units_recycle_keeps_outputs_then_revives() -> None:
    net = _bias_killed_mlp()
    x, y = _data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    # populate Adam's moments
    F.cross_entropy(net(x), y).backward()
    opt.step()
    opt.zero_grad()
    report = scan(net, x)
    assert report.dead_units("relu1") == KILLED
    with torch.no_grad():
        before = net(x)
    summary = recycle(net, report, opt)
    with torch.no_grad():
        after = net(x)
    assert float((after - before).abs().max()) <= 1e-6
    assert set(KILLED) <= set(summary.units["relu1"])
    rows = summary.units["relu1"]
    assert float(net.fc1.bias.detach()[rows].abs().max()) == 0.0
    assert float(net.fc2.weight.detach()[:, rows].abs().max()) == 0.0
    # Adam's moments are zero exactly at the touched rows / columns, not elsewhere
    for p, dim in ((net.fc1.weight, 0), (net.fc2.weight, 1)):
        for key in ("exp_avg", "exp_avg_sq"):
            state = opt.state[p][key]
            touched = state.index_select(dim, torch.tensor(rows))
            assert float(touched.abs().max()) == 0.0
    assert float(opt.state[net.fc2.weight]["exp_avg_sq"].abs().sum()) > 0
    assert scan(net, x).count("dead") == 0
    _step_lowers_loss(net, opt, x, y)


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.pool(self.relu2(self.conv2(h)))
        return self.fc(torch.flatten(h, 1))


def _cnn() -> _CNN:
    torch.manual_seed(1)
    net = _CNN()
    with torch.no_grad():
        net.bn1.bias[2] = -1000.0
        net.conv2.bias[[0, 3]] = -1000.0
    return net.eval()


def test_recycle_conv_bn_and_conv_flatten_linear() -> None:
    net = _cnn()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    report = scan(net, x)
    assert report.dead_units("relu1") == [2]
    assert report.dead_units("relu2") == [0, 3]
    masks = {
        "relu1": torch.tensor([False, False, True, False, False, False]),
        "relu2": torch.tensor([True, False, False, True, False]),
    }
    with torch.no_grad():
        before = net(x)
    summary = recycle(net, masks)
    with torch.no_grad():
        after = net(x)
    assert float((after - before).abs().max()) <= 1e-6
    assert summary.units == {"relu1": [2], "relu2": [0, 3]}
    assert float(net.bn1.bias.detach()[2]) == 0.0 and float(net.bn1.running_var.detach()[2]) == 1.0
    # channel 2's outgoing weights are zero, except in conv2's own recycled rows 0 and 3
    assert float(net.conv2.weight.detach()[[1, 2, 4], 2].abs().max()) == 0.0
    cols = torch.cat([torch.arange(0, 16), torch.arange(48, 64)])
    assert float(net.fc.weight.detach()[:, cols].abs().max()) == 0.0
    assert float(net.fc.weight.detach()[:, 16:48].abs().min()) > 0.0
    assert scan(net, x).count("dead") == 0


def test_recycle_never_touches_the_output_layer_or_residuals() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU())
    w_before = [p.detach().clone() for p in net.parameters()]
    summary = recycle(net, {"3": torch.ones(3, dtype=torch.bool)})
    assert summary.units == {}
    assert "output" in summary.skipped[0]
    assert all(torch.equal(a, b) for a, b in zip(w_before, net.parameters(), strict=True))

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.out = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(x + self.act(self.fc(x)))

    summary = recycle(Res(), {"act": torch.ones(4, dtype=torch.bool)})
    assert summary.units == {} and "add" in summary.skipped[0]


def test_swap_to_leaky_gives_dead_units_gradient() -> None:
    net = _bias_killed_mlp()
    x, y = _data()
    F.cross_entropy(net(x), y).backward()
    assert net.fc1.weight.grad is not None
    assert float(net.fc1.weight.grad[KILLED].abs().max()) == 0.0  # C2: dead, no gradient
    net.zero_grad()
    summary = swap_activations(net, "leaky_relu(0.01)")
    assert isinstance(net.relu1, nn.LeakyReLU) and net.relu1.negative_slope == 0.01
    assert len(summary.changed) == 2 and summary.model is net
    F.cross_entropy(net(x), y).backward()
    grad = net.fc1.weight.grad
    assert grad is not None
    assert bool((grad[KILLED].abs().sum(dim=1) > 0).all())
    assert net.fc1.bias.grad is not None and bool((net.fc1.bias.grad[KILLED] != 0).all())


def test_swap_keeps_dtype_device_and_sharing() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.act = nn.ReLU()
            self.seq = nn.Sequential(nn.Linear(3, 3), self.act)

        def forward(self, x: Tensor) -> Tensor:
            return self.seq(self.b(self.act(self.a(x))))

    net = Shared().double()
    summary = swap_activations(net, "prelu")
    assert net.act is net.seq[1]
    assert net.act.weight.dtype == torch.float64
    assert len(summary.changed) == 2
    net(torch.randn(2, 3, dtype=torch.float64)).sum().backward()


def test_swap_only_where_asked() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ELU(), nn.ReLU())
    swap_activations(net, "leaky_relu(0.1)", where="1")
    assert isinstance(net[1], nn.LeakyReLU) and isinstance(net[4], nn.ReLU)
    assert isinstance(net[3], nn.ELU)
    swap_activations(net, "gelu", where="elu")
    assert isinstance(net[3], nn.GELU) and isinstance(net[4], nn.ReLU)


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def test_swap_functional_calls_by_tracing() -> None:
    torch.manual_seed(0)
    net = _Functional()
    x = torch.randn(5, 4)
    summary = swap_activations(net, "leaky_relu(0.2)")
    gm = summary.model
    assert isinstance(gm, fx.GraphModule)
    expected = net.fc2(F.leaky_relu(net.fc1(x), 0.2))
    assert torch.allclose(gm(x), expected)
    assert gm.fc1 is net.fc1  # parameters are shared


def test_swap_lists_untraceable_functional_calls() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:
                return F.relu(self.fc(x))
            return x

    summary = swap_activations(Branchy(), "elu")
    assert len(summary.manual) == 1
    assert "test_remedies.py:" in summary.manual[0] and "F.relu(self.fc(x))" in summary.manual[0]


def test_init_bias_targets_batchnorm_when_present() -> None:
    net = _cnn()
    conv_bias = net.conv1.bias.detach().clone()
    summary = init_bias_(net, 0.05)
    assert torch.equal(net.conv1.bias, conv_bias)  # BN removes it: left alone
    assert torch.allclose(net.bn1.bias, torch.full((6,), 0.05))
    assert torch.allclose(net.conv2.bias, torch.full((5,), 0.05))
    assert float(net.fc.bias.detach().abs().max()) != 0.05
    assert len(summary.changed) == 2


def test_rai_lowers_born_dead_rate() -> None:
    rates = {}
    for width, depth in ((2, 10), (3, 20), (4, 30)):
        he = born_dead_rate(depth, width, "he", trials=300, seed=0, n_inputs=64)
        rai = born_dead_rate(depth, width, "rai", trials=300, seed=0, n_inputs=64)
        rates[(width, depth)] = (he.rate, rai.rate)
        assert rai.rate < he.rate
    # the known value: width 2, depth 10 symmetric init is dead > 80 % of the time
    assert rates[(2, 10)][0] > 0.8


def test_born_dead_counts_a_network_with_a_dead_layer() -> None:
    r = born_dead_rate(1, 1, "he", trials=50, seed=0)
    # one unit, d_in = 1, zero bias: relu(w x) is active for x of the sign of w: never dead
    assert r.dead == 0
    with pytest.raises(ValueError, match="unknown init"):
        born_dead_rate(3, 3, "xavier")


def test_recycle_gated_ffn_of_a_transformer_block() -> None:

    torch.manual_seed(0)
    model = TinyTransformerBlock().eval()
    data = model.make_batches()
    report = scan(model, data)
    with torch.no_grad():
        before = model(data[0])
    summary = recycle(model, report)
    with torch.no_grad():
        after = model(data[0])
    assert summary.units == {"ffn:relu": [5], "ffn:gelu": [2, 11]}
    assert float((after - before).abs().max()) <= 1e-6
    assert scan(model, data).dead_units("ffn:relu") == []


def test_recycle_from_a_monitor() -> None:
    from deadrelu.monitor import Monitor

    net = _bias_killed_mlp()
    x, _ = _data()
    with Monitor(net, every=1, window=2, threshold=None, training_only=False) as mon:
        for _ in range(3):
            net(x)
            mon.step()
    summary = recycle(net, mon)
    assert set(KILLED) <= set(summary.units["relu1"])
    assert scan(net, x).count("dead") == 0


def test_recycle_refuses_mismatched_unit_axes() -> None:
    class ConvThenLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 2)  # acts on the last (width) dim, not on channels

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.act(self.conv(x))).sum(dim=(1, 2))

    model = ConvThenLinear()
    summary = recycle(model, {"act": torch.tensor([True, False, False])})
    assert summary.units == {} and "last dim" in summary.skipped[0]


# --------------------------------------------------------------------------------------
# Links by one probe forward (models torch.fx cannot trace)
# --------------------------------------------------------------------------------------


def _same_links(model: nn.Module, batch: object) -> None:
    """The probe forward's links equal torch.fx's on a traceable model (site by site)."""
    traced, probed = links_of(model), links_of(model, batch)
    assert list(traced) == list(probed)
    for site, a in traced.items():
        b = probed[site]
        assert (a.producer, a.norm, sorted(a.consumers)) == (
            b.producer,
            b.norm,
            sorted(b.consumers),
        )
        assert (a.producer_problem is None) == (b.producer_problem is None), site
        assert (a.consumer_problem is None) == (b.consumer_problem is None), site


def test_probe_links_equal_traced_links() -> None:

    _same_links(_bias_killed_mlp(), _data()[0])
    _same_links(_cnn(), torch.randn(2, 3, 8, 8))
    for model in all_models():
        _same_links(model, model.make_batches(n=1)[0])


class _Untraceable(nn.Module):
    """fc1 -> relu -> dropout -> fc2, behind data-dependent control flow; dict input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 2)

    def forward(self, input_ids: Tensor, scale: Tensor) -> Tensor:
        if float(scale.sum()) > -1e9:  # torch.fx cannot trace this
            input_ids = input_ids * scale
        return self.fc2(self.drop(F.relu(self.fc1(input_ids))))


def test_remedies_on_an_untraceable_model_with_dict_batches() -> None:
    torch.manual_seed(0)
    net = _Untraceable()
    with torch.no_grad():
        net.fc1.bias[[1, 4]] = -1000.0
    batch = {"input_ids": torch.randn(32, 4), "scale": torch.ones(1)}
    report = scan(net, [batch])
    assert report.dead_units(":relu") == [1, 4]
    with pytest.raises(ValueError, match="example_inputs="):
        recycle(net, report)
    with pytest.raises(ValueError, match="example_inputs="):
        init_bias_(net, 0.01)
    links = links_of(net, batch)
    assert (links[":relu"].producer, links[":relu"].consumers) == ("fc1", [("fc2", "linear")])
    net.eval()
    before = net(**batch).detach()
    summary = recycle(net, report, data=[batch])
    assert summary.units == {":relu": [1, 4]}
    assert summary.max_output_change == 0.0
    assert float((net(**batch).detach() - before).abs().max()) <= 1e-6
    assert scan(net, [batch]).dead_units(":relu") == []
    summary = init_bias_(net, 0.5, units={":relu": [2]}, example_inputs=batch)
    assert summary.changed == ["fc1.bias: 1 of 6 values set to 0.5"]
    assert float(net.fc1.bias.detach()[2]) == 0.5


def test_probe_sees_a_residual_and_the_output() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.out = nn.Linear(4, 2)
            self.last = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.last(self.out(x + self.act(self.fc(x))))

    links = links_of(Res(), torch.randn(3, 4))
    assert "add()" in str(links["act"].consumer_problem)
    assert "model's output" in str(links["last"].consumer_problem)
    assert links["last"].producer == "out" and links["last"].producer_problem is None


# --------------------------------------------------------------------------------------
# recycle: dead units only by default, outputs exact; dormant with tau=; validation
# --------------------------------------------------------------------------------------


def _mlp_dead_and_dormant() -> nn.Sequential:
    """relu1: units 1, 4 dead (bias -1000); unit 6 alive but dormant (weights * 1e-3)."""
    net = _bias_killed_mlp()
    with torch.no_grad():
        net.fc1.weight[6] *= 1e-3
        net.fc1.bias[6] = 1e-3
    return net


def test_recycle_default_is_dead_units_only_outputs_exact() -> None:
    net = _mlp_dead_and_dormant()
    x, _ = _data()
    report = scan(net, x)
    assert report.dead_units("relu1") == KILLED and 6 in report.dormant_units("relu1")
    before = net(x).detach()
    summary = recycle(net, report, data=x)
    assert summary.units == {"relu1": KILLED}
    assert float((net(x).detach() - before).abs().max()) <= 1e-6
    assert summary.max_output_change is not None and summary.max_output_change <= 1e-6
    assert summary.still_dead == {}


def test_recycle_tau_recycles_dormant_units_and_measures_the_change() -> None:
    net = _mlp_dead_and_dormant()
    x, _ = _data()
    report = scan(net, x)
    before = net(x).detach()
    summary = recycle(net, report, tau=0.1, data=x)
    assert 6 in summary.units["relu1"] and set(KILLED) <= set(summary.units["relu1"])
    change = float((net(x).detach() - before).abs().max())
    assert change > 0  # unit 6 was active: its contribution is gone
    assert summary.max_output_change == pytest.approx(change, rel=1e-6)
    with pytest.raises(ValueError, match="tau"):
        recycle(net, report, tau=float("nan"))


def test_recycle_lists_units_still_dead_in_a_fresh_scan() -> None:
    net = _bias_killed_mlp()
    x = torch.zeros(8, 8)  # z = b: a recycled unit (b = 0) stays at z = 0, dead
    with torch.no_grad():
        net.fc1.bias.fill_(1.0)
        net.fc1.bias[KILLED] = -1000.0
    report = scan(net, x)
    assert report.dead_units("relu1") == KILLED
    summary = recycle(net, report, data=x)
    assert summary.still_dead["relu1"] == KILLED
    fresh = scan(net, x)
    for site, idx in summary.units.items():
        expected = sorted(set(idx) & set(fresh.dead_units(site)))
        assert summary.still_dead.get(site, []) == expected
    assert "still dead in a fresh scan: relu1: [1, 4]" in str(summary)


def test_recycle_refuses_a_foreign_optimizer_or_report() -> None:
    net = _bias_killed_mlp()
    x, _ = _data()
    report = scan(net, x)
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="holds none of the model's parameters"):
        recycle(net, report, torch.optim.SGD(other.parameters(), lr=0.1))
    cnn_report = scan(_cnn(), torch.randn(4, 3, 8, 8))
    with pytest.raises(ValueError, match="another model"):
        recycle(net, {"conv_site": torch.ones(3, dtype=torch.bool)})
    wide = _bias_killed_mlp()
    wide.fc1, wide.fc2 = nn.Linear(8, 20), nn.Linear(20, 12)
    with torch.no_grad():
        wide.fc1.bias[:] = -1000.0
    with pytest.raises(ValueError, match=r"20 units at 'relu1' but 'fc1' has 16"):
        recycle(net, scan(wide, x))
    with pytest.raises(ValueError, match="another model"):
        recycle(net, cnn_report)
    with pytest.raises(ValueError, match=r"unit 16 of 'relu1' is out of range"):
        recycle(net, {"relu1": [16]})


# --------------------------------------------------------------------------------------
# init_bias_: only the given units; bad values
# --------------------------------------------------------------------------------------


def test_init_bias_units_touches_only_those() -> None:
    net = _bias_killed_mlp()
    x, _ = _data()
    bias = net.fc1.bias.detach().clone()
    summary = init_bias_(net, 0.01, units=scan(net, x))
    changed = (net.fc1.bias.detach() != bias).nonzero().flatten().tolist()
    assert changed == KILLED and summary.units == {"relu1": KILLED}
    assert torch.allclose(net.fc1.bias[KILLED], torch.full((2,), 0.01))
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            init_bias_(net, bad)


# --------------------------------------------------------------------------------------
# swap_activations: function attributes, what is left is reported
# --------------------------------------------------------------------------------------


def test_swap_in_a_transformer_encoder_layer() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)

    def layer(act: object) -> nn.TransformerEncoderLayer:
        torch.manual_seed(1)
        return nn.TransformerEncoderLayer(
            16, 2, dim_feedforward=32, activation=act, batch_first=True, dropout=0.0
        ).eval()

    model = layer("relu")
    summary = swap_activations(model, "leaky_relu(0.2)", example_inputs=x)
    assert summary.changed == ["activation: function relu() -> module (leaky_relu(slope=0.2))"]
    assert [s for s in summary.skipped if "still" in s] == []
    oracle = layer(nn.LeakyReLU(0.2))  # same weights (same seed), the activation given
    with torch.no_grad():
        assert torch.allclose(model(x), oracle(x), atol=1e-6)
    same = layer("relu")
    with torch.no_grad():
        y = same(x)
        swap_activations(same, "relu")
        assert torch.allclose(same(x), y, atol=1e-6)


def test_swap_reports_calls_it_could_not_change() -> None:
    class Hidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.fns = [torch.relu]  # out of reach of every rule

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > -1e9:  # untraceable
                x = self.fns[0](self.fc(x))
            return x

    summary = swap_activations(Hidden(), "elu", example_inputs=torch.randn(2, 3))
    assert summary.changed == []
    assert any(s.startswith(":relu: relu is still called") for s in summary.skipped)


def test_recycle_skips_units_dead_only_under_train_mode_batchnorm() -> None:
    from deadrelu.monitor import Monitor

    net, x = bn_dead_in_train_mode()
    with Monitor(net, every=1, window=2, threshold=None, training_only=False) as mon:
        for _ in range(3):
            net(x)
            mon.step()
    assert mon.dead_units("2") == [1, 2]
    net.eval()
    before = net(x).detach()
    summary = recycle(net, mon, data=x)
    assert summary.units == {"2": [2]}
    assert any(
        s.startswith("2: unit(s) [1] dead in the source but active") for s in summary.skipped
    )
    assert float((net(x).detach() - before).abs().max()) <= 1e-6
