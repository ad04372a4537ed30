"""Tests of deadrelu.explain (causes, margins, step of death) and advice.suggest."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deadrelu.advice import suggest
from deadrelu.certify import Box
from deadrelu.explain import UpdateTracker, cause_of, explain
from deadrelu.monitor import Monitor
from deadrelu.scan import scan
from models import DeadChannelCNN, DeadMLP, FirstLayerNegativeWeights, bn_dead_in_train_mode

SPIKE_STEP, SPIKE_LR, BASE_LR = 5, 0.3, 0.01


def test_cause_rule() -> None:
    assert cause_of(-1.0, -2.0) == "bias"  # max w.x = 1 > 0, b < 0
    assert cause_of(-1.0, 0.0) == "weights"  # b >= 0
    assert cause_of(-0.5, 0.5) == "weights"
    assert cause_of(-3.0, -1.0) == "both"  # max w.x = -2 <= 0, b < 0
    assert cause_of(-1.0, -1.0) == "both"  # max w.x = 0: w.x <= 0 on all data
    assert cause_of(-math.inf, 0.0) == "unknown"


def test_bias_killed_units_are_labelled_bias() -> None:
    model = DeadMLP()
    data = model.make_batches()
    expl = explain(model, scan(model, data))
    assert expl.causes("relu1") == {1: "bias", 4: "bias"}
    assert expl.causes("relu2") == {7: "bias"}
    u = expl.unit("relu1", 4)
    assert u.bias == -1000.0 and u.producer == "fc1"
    assert u.wx_max is not None and 0 < u.wx_max <= 1.0  # |w.x| <= 1 by construction
    assert u.z_max == pytest.approx(-1000.0 + u.wx_max)
    assert u.margin == -u.z_max
    assert expl.by_cause() == {
        "bias": 3,
        "weights": 0,
        "both": 0,
        "unknown": 0,
        "active_in_eval": 0,
    }


def test_weights_and_both_by_construction() -> None:
    model = FirstLayerNegativeWeights()
    data = model.make_batches()
    expl = explain(model, scan(model, data))
    assert expl.causes("act") == {3: "weights"}
    assert expl.unit("act", 3).bias == 0.0
    with torch.no_grad():
        model.fc.bias[3] = -0.5  # negative weights and a negative bias: either kills it
    expl = explain(model, scan(model, data))
    assert expl.causes("act") == {3: "both"}
    u = expl.unit("act", 3)
    assert u.wx_max is not None and u.wx_max <= 0


def test_bias_through_batchnorm() -> None:
    torch.manual_seed(0)
    model = DeadChannelCNN()
    expl = explain(model, scan(model, model.make_batches()))
    # relu1 sees inputs symmetric about 0, so its weights alone reach w.x > 0: "bias"
    assert expl.causes("relu1") == {2: "bias"}
    assert expl.unit("relu1", 2).bias == pytest.approx(-1000.0, abs=1.0)
    # relu2's channels read relu1's non-negative output through random weights: the
    # weight part may or may not reach w.x > 0, and the label must follow the rule
    assert set(expl.causes("relu2")) == {0, 4}
    for u in (expl.unit("relu2", 0), expl.unit("relu2", 4)):
        assert u.bias is not None and u.bias < -900 and u.wx_max is not None
        assert u.cause == ("bias" if u.wx_max > 0 else "both")


def test_certified_flag_and_lines() -> None:
    model = DeadMLP()
    expl = explain(model, scan(model, model.make_batches()), box=Box.from_bounds((8,), -1, 1))
    assert all(u.certified for u in expl.units)
    text = str(expl)
    assert "relu1[1]" in text and "cause: bias" in text and "certified dead" in text


def test_unknown_cause_is_explained() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.act(self.fc(x) + x - 100.0)

    model = Res()
    expl = explain(model, scan(model, torch.rand(8, 3)))
    assert expl.by_cause()["unknown"] == 3
    assert "sub()" in expl.units[0].note


def _spike_run() -> tuple[nn.Module, Monitor, UpdateTracker, Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = x.sum(1, keepdim=True) * 3
    opt = torch.optim.SGD(net.parameters(), lr=BASE_LR)
    tracker = UpdateTracker(net, opt)
    with Monitor(net, every=1, window=2, threshold=None) as mon:
        for t in range(12):
            for group in opt.param_groups:
                group["lr"] = SPIKE_LR if t == SPIKE_STEP else BASE_LR
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step()
    return net, mon, tracker, x


def test_one_huge_step_is_blamed_with_its_size_and_lr() -> None:
    net, mon, tracker, x = _spike_run()
    expl = explain(net, mon, x, tracker=tracker)
    killed = [u for u in expl.units if u.died_at == SPIKE_STEP + 1]
    assert killed, str(expl)
    for u in killed:
        assert u.update_step == SPIKE_STEP
        assert u.lr == pytest.approx(SPIKE_LR)
        assert u.update_ratio is not None
        # the spike's update dwarfs the same unit's updates at the base learning rate
        calm = max(float(tracker.ratios[u.site][s][u.unit]) for s in range(SPIKE_STEP))
        assert u.update_ratio > 10 * calm
        assert u.cause in ("bias", "weights", "both")
    assert "after an update" in killed[0].line() and "lr 0.3" in killed[0].line()
    advice = suggest(expl)
    assert any("lower the learning rate" in line for line in advice)


def test_revived_units_are_listed() -> None:
    model = DeadMLP()
    data = model.make_batches()
    with Monitor(model, every=1, window=1, threshold=None, training_only=False) as mon:
        for t in range(6):
            if t == 3:
                with torch.no_grad():
                    model.fc1.bias[4] = 1.5  # unit 4 comes back
            model(data[t % len(data)])
            mon.step()
    expl = explain(model, mon, data)
    assert expl.revived["relu1"] == [4]
    assert expl.causes("relu1") == {1: "bias"}
    assert any("came back" in line for line in expl.lines())
    assert any("came back" in line for line in suggest(expl))


def test_suggest_from_a_report() -> None:
    model = DeadMLP()
    report = scan(model, model.make_batches())
    lines = suggest(report, model=model)
    assert lines[0].startswith("3 of 28 units are dead")
    # a Report says nothing of training: assumed trained, so the cure is recycle on the
    # three dead units, never a whole-model initialiser now
    cure = [a for a in lines if a.when == "now"]
    assert [a.remedy for a in cure] == ["recycle"] and "-1e+03" in cure[0]
    assert cure[0].units == {"relu1": [1, 4], "relu2": [7]}
    before = suggest(report, model=model, trained=False)
    assert [a.remedy for a in before if a.when == "now"] == ["swap_activations", "init_bias_"]
    healthy = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with torch.no_grad():
        healthy[0].bias.fill_(5.0)
    assert suggest(scan(healthy, torch.rand(4, 2))) == ["no dead units among 3: nothing to cure"]


def test_untraceable_model_uses_a_probe_forward() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)
            with torch.no_grad():
                self.fc.bias[2] = -1000.0
            self.head = nn.Linear(4, 1)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it
                x = F.relu(self.fc(x))
            return self.head(x)

    torch.manual_seed(0)
    model = Branchy()
    x = torch.rand(16, 3)
    expl = explain(model, scan(model, x), x)
    assert expl.causes(":relu")[2] == "bias"
    assert expl.unit(":relu", 2).producer == "fc"


def test_tracker_reads_the_lr_of_the_units_param_group() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    rest = [p for m in (net[2], net[4]) for p in m.parameters()]
    opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.01}, {"params": rest}], lr=0.5)
    tracker = UpdateTracker(net, opt)
    net(torch.randn(8, 3)).sum().backward()
    old = torch.cat([net[0].weight[0], net[0].bias[:1]]).detach().clone()
    opt.step()
    new = torch.cat([net[0].weight[0], net[0].bias[:1]]).detach()
    hit1, hit3 = tracker.blame("1", 0, 0, 0), tracker.blame("3", 0, 0, 0)
    assert hit1 is not None and hit3 is not None
    assert (hit1[0], hit1[2], hit3[2]) == (0, 0.01, 0.5)
    # the ratio is ||delta theta|| / ||theta|| of the unit's incoming weights and bias
    assert hit1[1] == pytest.approx(float((new - old).norm() / old.norm()), rel=1e-5)
    assert tracker.blame("1", 0, 1, 5) is None
    tracker.remove()


def test_suggest_from_a_monitor() -> None:
    net, mon, _tracker, x = _spike_run()
    lines = suggest(mon, model=net, data=x)
    n_dead = sum(len(idx) for idx in mon.all_units().values())
    assert lines[0].startswith(f"{n_dead} of 64 units are dead")


class _DictModel(nn.Module):
    """Hugging Face style: ``model(**{"input_ids": ..., "attention_mask": ...})``, and not
    traceable by torch.fx (data-dependent control flow)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)
        with torch.no_grad():
            self.fc1.weight[[0, 3]] = self.fc1.weight[[0, 3]].abs()  # w.x > 0 for x > 0
            self.fc1.bias[[0, 3]] = -1000.0  # dead by construction, cause "bias"
            self.fc1.weight[5] = -self.fc1.weight[5].abs()  # w.x <= 0 for x >= 0
            self.fc1.bias[5] = 0.0  # cause "weights"

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if bool(attention_mask.any()):
            input_ids = input_ids * attention_mask
        return self.fc2(self.act(self.fc1(input_ids)))


def test_dict_batches_of_an_untraceable_model_get_causes() -> None:
    torch.manual_seed(0)
    model = _DictModel()
    g = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.rand(16, 4, generator=g), "attention_mask": torch.ones(16, 4)}
        for _ in range(2)
    ]
    report = scan(model, data)
    assert report.dead_units("act") == [0, 3, 5]
    expl = explain(model, report, data)
    assert expl.causes("act") == {0: "bias", 3: "bias", 5: "weights"}
    assert {expl.unit("act", u).producer for u in (0, 3, 5)} == {"fc1"}
    # without data the model cannot be linked: the causes are unknown, and the note says why
    blind = explain(model, report)
    assert set(blind.causes("act").values()) == {"unknown"}
    assert "pass data=" in blind.notes[0]


def test_units_dead_only_in_train_mode_batchnorm_are_active_in_eval() -> None:
    net, x = bn_dead_in_train_mode()
    with Monitor(net, every=1, window=2, threshold=None, training_only=False) as mon:
        for _ in range(3):
            net(x)
            mon.step()
    assert mon.dead_units("2") == [1, 2]
    # eval mode: running mean 0, var 1 (momentum 0): z = W x + b - 10 > 0 somewhere
    z_eval = (net[0](x) + net[1].bias - net[1].running_mean).detach()[:, 1]
    assert float(z_eval.max()) > 0
    expl = explain(net, mon, x)
    assert expl.causes("2") == {1: "active_in_eval", 2: "bias"}
    assert "active in eval mode" in expl.unit("2", 1).note
    assert expl.dead_units("2") == [2]  # the unit active in eval mode is not dead
