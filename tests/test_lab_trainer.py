"""The batched trainer: agrees with the sequential reference, counts dead units exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deadrelu.lab.data import Dataset, load
from deadrelu.lab.trainer import (
    MLP,
    Member,
    TrainConfig,
    TrainResult,
    build_member,
    train_batched,
    train_sequential,
)

WIDTHS = (40, 32, 24, 10)


@pytest.fixture(scope="module")
def data() -> Dataset:
    d = load("synthetic", 0)
    # a smaller training set keeps the suite fast; the probe is the training set
    return Dataset(d.name, d.x_train[:600], d.y_train[:600], d.x_test[:300], d.y_test[:300], 10)


def _cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "widths": WIDTHS,
        "steps": 24,
        "batch_size": 50,
        "eval_every": 8,
        "record_masks": True,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _assert_agree(a: TrainResult, b: TrainResult) -> None:
    assert a.steps == b.steps
    torch.testing.assert_close(a.test_acc, b.test_acc, atol=0.004, rtol=0)
    torch.testing.assert_close(a.test_loss, b.test_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.train_loss, b.train_loss, atol=1e-4, rtol=1e-4, equal_nan=True)
    for name in ("dead_frac", "frozen_frac", "saturated_frac"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0.02, rtol=0)
    torch.testing.assert_close(a.mean_act, b.mean_act, atol=1e-4, rtol=1e-4)
    assert a.state.keys() == b.state.keys()
    for k in a.state:
        torch.testing.assert_close(a.state[k], b.state[k], atol=1e-4, rtol=1e-4)


def test_batched_agrees_with_sequential_relu(data: Dataset) -> None:
    members = [
        Member(seed=0, lr=0.05),
        Member(seed=1, lr=0.5),
        Member(seed=2, lr=0.1, bias_init=0.01),
        Member(seed=3, lr=0.1, bias_init=-0.3, bias_kick=-2.0, kick_step=8),
    ]
    a, b = train_batched(members, _cfg(), data), train_sequential(members, _cfg(), data)
    _assert_agree(a, b)
    assert a.dead_frac[3, 1:].sum() > 0  # the kick killed units: the test sees dead units
    for ma, mb in zip(a.dead_masks, b.dead_masks, strict=True):
        assert (ma != mb).float().mean() < 0.01


def test_batched_agrees_with_sequential_mixed_slopes_in_one_call(data: Dataset) -> None:
    # interleaved parameter sets: groups are trained apart and put back in member order
    members = [
        Member(seed=0, lr=0.1, activation="leaky_relu(0.01)"),
        Member(seed=1, lr=0.1, activation="leaky_relu(0.3)"),
        Member(seed=2, lr=0.1, activation="leaky_relu(0.01)"),
    ]
    a = train_batched(members, _cfg(), data)
    _assert_agree(a, train_sequential(members, _cfg(), data))
    alone = train_batched([members[1]], _cfg(), data)
    torch.testing.assert_close(a.test_acc[1:2], alone.test_acc, atol=0.004, rtol=0)


def test_batched_agrees_with_sequential_learnable_prelu(data: Dataset) -> None:
    members = [Member(seed=s, lr=0.2, activation="prelu") for s in range(2)]
    a = train_batched(members, _cfg(), data)
    _assert_agree(a, train_sequential(members, _cfg(), data))
    one = [Member(seed=2, lr=0.2, activation="prelu", slopes="shared")]
    b = train_batched(one, _cfg(), data)
    _assert_agree(b, train_sequential(one, _cfg(), data))
    per_unit, shared = a.slopes(0), b.slopes(0)
    assert per_unit.shape == (2, WIDTHS[1]) and shared.shape == (1, 1)
    assert not torch.allclose(shared, torch.full_like(shared, 0.25))
    with pytest.raises(ValueError, match=r"share Member\.slopes"):
        train_batched(members + one, _cfg(), data)
    assert not torch.allclose(per_unit, torch.full_like(per_unit, 0.25))  # the slopes learned
    # per unit: each unit's slope got its own gradient, so they differ
    assert per_unit[0].unique().numel() > WIDTHS[1] // 2


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_prelu_has_one_slope_per_unit_and_no_weight_decay(data: Dataset, arch: str) -> None:
    widths = WIDTHS if arch == "mlp" else (40, 6, 5, 10)
    cfg = TrainConfig(widths=widths, steps=0, arch=arch)
    net = build_member(Member(seed=0, lr=0.1, activation="prelu"), cfg)
    slopes = {n: p for n, p in net.named_parameters() if n.startswith("acts.")}
    # one slope per hidden unit (per channel in the CNN), initial 0.25 (He et al. 2015)
    assert sum(p.numel() for p in slopes.values()) == sum(widths[1:-1])
    assert all(torch.equal(p, torch.full_like(p, 0.25)) for p in slopes.values())
    shared = build_member(Member(seed=0, lr=0.1, activation="prelu", slopes="shared"), cfg)
    assert sum(p.numel() for n, p in shared.named_parameters() if n.startswith("acts.")) == (
        len(widths) - 2
    )
    # lr 0 and a huge weight decay: with SGD every decayed parameter moves by -lr*wd*p = 0,
    # so use lr > 0 and compare against the oracle "slopes move only by their loss gradient"
    member = Member(seed=0, lr=0.05, activation="prelu")
    train = TrainConfig(widths=widths, steps=1, batch_size=50, eval_every=1, arch=arch)
    decayed = TrainConfig(**{**train.__dict__, "weight_decay": 10.0})
    plain, wd = train_batched([member], train, data), train_batched([member], decayed, data)
    for name in plain.state:
        if name.startswith("acts."):
            torch.testing.assert_close(plain.state[name], wd.state[name])  # not decayed
    weight = "linears.0.weight" if arch == "mlp" else "convs.0.weight"
    w0 = build_member(member, train).state_dict()[weight]
    # decayed: w1 = w0 - lr * (grad + wd * w0) = plain's w1 - lr * wd * w0
    expect = plain.state[weight][0] - 0.05 * 10.0 * w0
    torch.testing.assert_close(wd.state[weight][0], expect, atol=1e-5, rtol=1e-5)
    seq = train_sequential([member], decayed, data)
    torch.testing.assert_close(seq.state[weight], wd.state[weight], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_batched_optimizers_agree_with_torch_optim(data: Dataset, optimizer: str) -> None:
    lr = 0.05 if optimizer == "momentum" else 0.003
    members = [
        Member(seed=0, lr=lr),
        Member(seed=1, lr=2 * lr, bias_init=-0.3, bias_kick=-2.0, kick_step=8),
    ]
    cfg = _cfg(optimizer=optimizer, weight_decay=1e-3)
    a, b = train_batched(members, cfg, data), train_sequential(members, cfg, data)
    _assert_agree(a, b)
    plain = train_batched(members, _cfg(weight_decay=1e-3), data)
    assert not torch.allclose(a.state["linears.0.weight"], plain.state["linears.0.weight"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cnn_batched_agrees_with_sequential(data: Dataset, optimizer: str) -> None:
    lr = 0.1 if optimizer == "sgd" else 0.01
    members = [
        Member(seed=0, lr=lr),
        Member(seed=1, lr=lr, activation="relu", bias_kick=-3.0, kick_step=8),
    ]
    cfg = _cfg(widths=(40, 6, 8, 10), arch="cnn", optimizer=optimizer)
    a, b = train_batched(members, cfg, data), train_sequential(members, cfg, data)
    _assert_agree(a, b)
    assert "norms.0.running_mean" in a.state  # BatchNorm statistics are part of the state
    prelu = [Member(seed=s, lr=lr, activation="prelu") for s in range(2)]
    _assert_agree(train_batched(prelu, cfg, data), train_sequential(prelu, cfg, data))


def test_cnn_dead_channels_are_counted_per_channel(data: Dataset) -> None:
    # BatchNorm beta is the channel's bias: -1000 on channels 1 and 4 of block 2 kills
    # exactly those channels at every position (running stats at init: mean 0, var 1)
    def kill(model: nn.Module) -> None:
        with torch.no_grad():
            model.norms[1].bias[[1, 4]] = -1000.0  # type: ignore[index]

    cfg = _cfg(widths=(40, 6, 8, 10), arch="cnn", steps=2, eval_every=2)
    res = train_batched([Member(seed=0, lr=0.0, init_fn=kill)], cfg, data)
    assert torch.nonzero(res.dead_masks[1][0, 0]).flatten().tolist() == [1, 4]
    assert not res.dead_masks[0][0, 0].any()
    assert res.dead_frac[0, 0].tolist() == [0.0, 2 / 8]
    # an oracle from the plain module: channel-wise max over rows and positions
    net = res.module(0)
    _, pre, _ = net(data.x_train)
    never = (pre[1] <= 0).all(dim=2).all(dim=0)
    assert torch.equal(never, res.dead_masks[1][-1, 0])


def test_cnn_module_returns_the_trained_member(data: Dataset) -> None:
    cfg = _cfg(widths=(40, 6, 8, 10), arch="cnn")
    res = train_batched([Member(seed=0, lr=0.1), Member(seed=1, lr=0.1)], cfg, data)
    logits, _, _ = res.module(1)(data.x_test)
    acc = (logits.argmax(1) == data.y_test).double().mean()
    assert acc.item() == pytest.approx(res.test_acc[1, -1].item(), abs=1e-9)


def test_eval_at_adds_evaluation_steps(data: Dataset) -> None:
    cfg = _cfg(steps=10, eval_every=5, eval_at=(3, 99))
    assert cfg.eval_steps() == [0, 3, 5, 10]
    member = Member(seed=0, lr=0.1, bias_kick=-1000.0, kick_step=4)
    res = train_batched([member], cfg, data)
    # the kick at step 4 kills every unit: alive at step 3 (before), dead at 5 (after)
    assert res.dead_frac[0, 1].max() < 1.0 and (res.dead_frac[0, 2] == 1.0).all()


def test_unknown_optimizer_and_arch_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(widths=WIDTHS, steps=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown arch"):
        TrainConfig(widths=WIDTHS, steps=1, arch="rnn")


def test_units_killed_by_construction_are_found_exactly(data: Dataset) -> None:
    def kill(model: nn.Module) -> None:
        assert isinstance(model, MLP)
        with torch.no_grad():
            model.linear_layers()[0].bias[[3, 7]] = -1000.0

    members = [Member(seed=0, lr=0.1, init_fn=kill), Member(seed=1, lr=0.1)]
    res = train_batched(members, _cfg(), data)
    first = res.dead_masks[0]  # (T, M, H)
    # member 0: exactly units 3 and 7 of layer 1 are dead at init, and stay dead
    assert torch.nonzero(first[0, 0]).flatten().tolist() == [3, 7]
    assert first[:, 0, [3, 7]].all()
    assert not first[0, 1].any()
    assert res.dead_frac[0, 0, 0].item() == pytest.approx(2 / WIDTHS[1])
    # a dead ReLU unit gets no gradient: its incoming weights never moved
    init = build_member(members[0], WIDTHS).linear_layers()[0]
    torch.testing.assert_close(res.state["linears.0.weight"][0, [3, 7]], init.weight[[3, 7]])
    # for ReLU, frozen (zero gradient on every probe row) is the same as dead
    torch.testing.assert_close(res.frozen_frac, res.dead_frac)


def test_large_negative_bias_kills_every_layer(data: Dataset) -> None:
    res = train_batched([Member(seed=0, lr=0.1, bias_init=-1000.0)], _cfg(steps=8), data)
    assert (res.dead_frac == 1.0).all()
    assert res.test_acc.max() < 0.3  # a constant classifier


def test_leaky_units_never_active_are_dead_but_not_frozen(data: Dataset) -> None:
    member = Member(seed=0, lr=0.1, activation="leaky_relu", bias_init=-1000.0)
    res = train_batched([member], _cfg(steps=8), data)
    assert res.dead_frac[0, 0, 0] == 1.0
    assert (res.frozen_frac == 0).all()


def test_saturated_units_of_elu_are_counted(data: Dataset) -> None:
    member = Member(seed=0, lr=0.0, activation="elu", bias_init=-1000.0)
    res = train_batched([member], _cfg(steps=2, eval_every=2), data)
    assert (res.saturated_frac[0, :, 0] == 1.0).all()


def test_same_members_same_numbers(data: Dataset) -> None:
    members = [Member(seed=4, lr=0.3), Member(seed=5, lr=0.03)]
    a, b = train_batched(members, _cfg(), data), train_batched(members, _cfg(), data)
    assert torch.equal(a.test_acc, b.test_acc) and torch.equal(a.dead_frac, b.dead_frac)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_module_returns_the_trained_member(data: Dataset) -> None:
    members = [Member(seed=0, lr=0.1), Member(seed=1, lr=0.1)]
    res = train_batched(members, _cfg(), data)
    logits, _, _ = res.module(1)(data.x_test)
    acc = (logits.argmax(1) == data.y_test).double().mean()
    assert acc.item() == pytest.approx(res.test_acc[1, -1].item(), abs=1e-9)


def test_mixed_activation_names_are_refused(data: Dataset) -> None:
    members = [Member(seed=0, lr=0.1), Member(seed=1, lr=0.1, activation="elu")]
    with pytest.raises(ValueError, match="share the activation name"):
        train_batched(members, _cfg(), data)


def test_widths_must_fit_the_data(data: Dataset) -> None:
    with pytest.raises(ValueError, match="do not fit the dataset"):
        train_batched([Member(seed=0, lr=0.1)], _cfg(widths=(64, 10, 10)), data)


def test_members_split_into_stacks_agree(data: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    from deadrelu.lab import trainer

    members = [Member(seed=s, lr=0.1 * (s + 1)) for s in range(5)]
    whole = train_batched(members, _cfg(), data)
    monkeypatch.setattr(trainer, "MEMBER_CHUNK", 2)  # stacks of 2, 2 and 1
    split = train_batched(members, _cfg(), data)
    _assert_agree(whole, split)
    _assert_agree(split, train_sequential(members, _cfg(), data))
