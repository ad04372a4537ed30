"""Tests of :mod:`deadrelu.monitor`: ground truth by construction (bias -1000 kills a unit)."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from deadrelu.capture import find_producers, producer_of
from deadrelu.monitor import Monitor, MonitorWarning
from deadrelu.report import Report
from models import (
    DEAD_BIAS,
    DeadChannelCNN,
    DeadMLP,
    FirstLayerNegativeWeights,
    InplaceReLUModel,
    ReusedReLUModel,
    TinyTransformerBlock,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread avoids pool wake-ups on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _as_lists(d: dict[str, list[int]]) -> dict[str, list[int]]:
    return {k: list(v) for k, v in d.items()}


def _train(
    model: nn.Module,
    mon: Monitor,
    steps: int,
    *,
    lr: float = 1e-3,
    extra_loss: Callable[[], Tensor] | None = None,
    hook: Callable[[int], None] | None = None,
) -> None:
    """``steps`` SGD steps on the model's own batches (cycled), ``mon.step()`` after each."""
    xs = model.make_batches(4)  # type: ignore[operator]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for t in range(steps):
        if hook is not None:
            hook(t)
        loss = model(xs[t % len(xs)]).pow(2).mean()
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.step()


def _hooks_left(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
    for p in model.parameters():
        n += len(p._backward_hooks or {})
    return n


# ------------------------------------------------------------------ exact dead units


@pytest.mark.parametrize(
    "make",
    [DeadMLP, FirstLayerNegativeWeights, DeadChannelCNN, TinyTransformerBlock, ReusedReLUModel],
)
def test_dead_units_exact_in_eval_passes(make: Callable[[], nn.Module]) -> None:
    model = make().eval()
    with Monitor(model, every=1, window=4, training_only=False) as mon:
        for x in model.make_batches(4):  # type: ignore[operator]
            model(x)
            mon.step()
    assert _as_lists(mon.all_units()) == model.expected_dead
    report = mon.report()
    assert {s: report.dead_units(s) for s in model.expected_dead} == model.expected_dead


def test_inplace_relu_exact() -> None:
    model = InplaceReLUModel().eval()
    with Monitor(model, every=1, window=4, training_only=False) as mon:
        for x in model.make_batches(3):
            model(x)
            mon.step()
    assert _as_lists(mon.all_units()) == model.expected_dead


def _inplace_cnn(inplace: bool) -> nn.Module:
    """conv -> BN -> ReLU -> conv -> ReLU -> pool -> linear -> ReLU, same weights for either
    ``inplace``; channel 1 of the BN and unit 0 of the linear are dead (bias -1000), the
    second conv and the other linear units are alive (bias +1000), the other BN channels are
    normalised over the batch (training mode), so positive somewhere."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 6),
        nn.ReLU(inplace=inplace),
        nn.Linear(6, 2),
    )
    with torch.no_grad():
        model[1].bias[1] = -1000.0
        model[3].bias.fill_(1000.0)
        model[7].bias.fill_(1000.0)
        model[7].bias[0] = -1000.0
    return model


@pytest.mark.parametrize("detail", [False, "range", "full"])
@pytest.mark.parametrize("track_grad", [False, True])
def test_inplace_relu_without_copy_counts_as_out_of_place(
    detail: bool | str, track_grad: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deadrelu.capture as capture

    copies = 0
    real_copy = capture._copy

    def counting_copy(z: Tensor) -> Tensor:
        nonlocal copies
        copies += 1
        return real_copy(z)

    monkeypatch.setattr(capture, "_copy", counting_copy)
    xs = [torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    stats = {}
    for inplace in (False, True):
        model = _inplace_cnn(inplace)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        copies = 0
        with Monitor(model, every=1, window=3, detail=detail, track_grad=track_grad) as mon:
            for x in xs:
                model(x).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                mon.step()
        # the copy of z is made only with track_grad (the producer probe needs it)
        assert copies == (3 * 3 if inplace and track_grad else 0)
        assert mon.all_units() == {"2": [1], "4": [], "8": [0]}
        stats[inplace] = mon.statistics()
    assert stats[True].keys() == stats[False].keys()
    for name, s in stats[False].items():
        t = stats[True][name]
        assert torch.equal(s.positions, t.positions) and torch.equal(s.active, t.active)
        assert torch.allclose(s.abs_sum, t.abs_sum, rtol=1e-6, atol=0)
        assert torch.equal(s.z_max, t.z_max) and torch.equal(s.z_min, t.z_min)
        assert torch.allclose(s.z_sum, t.z_sum, rtol=1e-6, atol=1e-9)
        assert torch.equal(s.nonfinite, t.nonfinite)
    assert int(stats[True]["2"].active[1]) == 0 and int(stats[True]["2"].positions) == 3 * 3 * 25


def test_inplace_relu_without_copy_under_torch_compile_counts_as_eager() -> None:
    xs = [torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    stats = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = _inplace_cnn(True).eval()
        mon = Monitor(model, every=1, window=3, training_only=False).attach()
        run = torch.compile(model, backend="eager") if compiled else model
        with torch.no_grad():
            for x in xs:
                run(x)
                mon.step()
        assert mon._hooks.compiled == compiled  # the hooks really ran inside dynamo
        stats[compiled] = mon.statistics()
        mon.detach()
    torch._dynamo.reset()
    assert stats[True].keys() == stats[False].keys() == {"2", "4", "8"}
    for name, s in stats[False].items():
        t = stats[True][name]
        assert torch.equal(s.positions, t.positions) and torch.equal(s.active, t.active)
        assert torch.allclose(s.abs_sum, t.abs_sum, rtol=1e-6, atol=0)
    assert int(stats[True]["2"].active[1]) == 0 and int(stats[True]["8"].active[0]) == 0


def test_dead_units_exact_while_training_with_default_sampling() -> None:
    torch.manual_seed(0)
    model = DeadMLP()
    mon = Monitor(model)  # every=10, window=100
    with mon:
        _train(model, mon, 120)
    assert mon.every == 10
    assert mon.history.steps == list(range(0, 120, 10))
    assert _as_lists(mon.all_units()) == model.expected_dead
    frac = mon.dead_fraction()
    assert frac == {"relu1": 2 / 16, "relu2": 1 / 12}
    rep = mon.report()
    assert rep.dead_units("relu1") == [1, 4]
    assert rep.dead_units("relu2") == [7]
    # 12 sampled steps x 32 positions, panes: [0, 100) full + [100, 120)
    assert int(rep.stats["relu1"].positions) == 12 * 32
    assert rep.meta["steps"] == [0, 110]


def test_training_only_ignores_eval_forwards() -> None:
    model = DeadMLP()
    x = model.make_batches(1)[0]
    with Monitor(model, every=1) as mon, pytest.warns(MonitorWarning, match="no activation"):
        model.eval()
        model(x)
        model.train()
        mon.step()
    assert mon.sites == []
    with Monitor(model, every=1, training_only=False) as mon:
        model.eval()
        model(x)
        mon.step()
    assert mon.sites == ["relu1", "relu2"]


# ------------------------------------------------------------------ sampling and hooks


def test_hooks_only_on_sampled_steps_and_none_after_exit() -> None:
    model = DeadMLP()
    registered = []
    mon = Monitor(model, every=3, window=9, track_grad=True)
    with mon:
        for t in range(7):
            registered.append(mon.hooks_registered)
            _train(model, mon, 1)
            assert mon.step_count == t + 1
    assert registered == [True, False, False, True, False, False, True]
    assert _hooks_left(model) == 0
    assert not mon.attached


def test_always_hooks_are_gated_and_removed() -> None:
    model = DeadMLP()
    with Monitor(model, every=4, window=8, hooks="always") as mon:
        assert _hooks_left(model) > 0
        _train(model, mon, 8)
        assert mon.hooks_registered
    assert _hooks_left(model) == 0
    # only steps 0 and 4 were counted: 2 x 32 positions
    assert int(mon.statistics()["relu1"].positions) == 2 * 32


def test_no_hooks_remain_after_exception() -> None:
    model = DeadMLP()
    with pytest.raises(RuntimeError, match="boom"), Monitor(model, track_grad=True) as mon:
        _train(model, mon, 2)
        raise RuntimeError("boom")
    assert _hooks_left(model) == 0


def test_state_size_is_the_same_after_10_and_1000_steps() -> None:
    model = DeadMLP().eval()
    x = model.make_batches(1)[0]
    sizes = {}
    for steps in (10, 1000):
        with Monitor(model, every=1, window=5, training_only=False, track_grad=True) as mon:
            for _ in range(steps):
                model(x)
                mon.step()
        state = mon.state_dict()
        tensor_bytes = sum(
            t.numel() * t.element_size()
            for site in state["sites"].values()
            for t in _flat_tensors(site)
        )
        sizes[steps] = (mon.state_nbytes(), tensor_bytes)
        assert len(mon.history.steps) == steps  # the history: one row per sampled step
    assert sizes[10] == sizes[1000]
    assert sizes[10][0] > 0


def _flat_tensors(obj: object) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _flat_tensors(v)]
    return []


# ------------------------------------------------------------------ window, died, revived


def test_died_and_revived_since() -> None:
    """Unit 0 of relu1 is killed at step 20 and revived at step 60 (every=1, window=5)."""
    model = DeadMLP(dead1=(1,), dead2=())
    b0 = model.fc1.bias.detach().clone()

    def surgery(t: int) -> None:
        with torch.no_grad():
            if t == 20:
                model.fc1.bias[0] = DEAD_BIAS
            if t == 60:
                model.fc1.bias[0] = b0[0]

    mon = Monitor(model, every=1, window=5)
    with mon:
        _train(model, mon, 40, lr=0.0, hook=surgery)
        assert _as_lists(mon.all_units())["relu1"] == [0, 1]
        assert _as_lists(mon.died_since(15))["relu1"] == [0]  # 1 was never active
        assert _as_lists(mon.died_since(25))["relu1"] == []
        since = mon.dead_since["relu1"]
        assert since[0] == 20 and since[1] == 0 and since[2] == -1
        _train(model, mon, 30, lr=0.0, hook=lambda t: surgery(t + 40))
    assert _as_lists(mon.all_units())["relu1"] == [1]
    assert _as_lists(mon.revived_since(55))["relu1"] == [0]
    assert _as_lists(mon.revived_since(61))["relu1"] == []
    frac = mon.history.fractions()[:, 0]
    steps = mon.history.steps
    # dead over the window of 5 from step 24 (last active 19) until the revival at 60
    dead2 = [t for t, f in zip(steps, frac.tolist(), strict=True) if f == 2 / 16]
    assert dead2 == list(range(24, 60))


def test_window_semantics_with_sampling() -> None:
    """every=10, window=30: a unit killed at step 35 (last sampled-active 30) is dead at
    the first sampled step t with 30 < t - 30 + 1, i.e. t = 60."""
    model = DeadMLP(dead1=(), dead2=())

    def kill(t: int) -> None:
        if t == 35:
            with torch.no_grad():
                model.fc1.bias[3] = DEAD_BIAS

    with Monitor(model, every=10, window=30) as mon:
        _train(model, mon, 51, lr=0.0, hook=kill)
        assert _as_lists(mon.all_units())["relu1"] == []
        _train(model, mon, 10, lr=0.0)
        assert _as_lists(mon.all_units())["relu1"] == [3]
    assert mon.dead_since["relu1"][3] == 31


# ------------------------------------------------------------------ warnings and export


def test_threshold_warning_once_per_crossing() -> None:
    model = DeadMLP(dead1=tuple(range(8)), dead2=())
    with Monitor(model, every=1, window=3, threshold=0.5) as mon:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _train(model, mon, 2)  # window not full yet: no warning
            assert not [w for w in caught if issubclass(w.category, MonitorWarning)]
            _train(model, mon, 5)
        hits = [w for w in caught if issubclass(w.category, MonitorWarning)]
        assert len(hits) == 1
        assert "'relu1'" in str(hits[0].message) and "8 of 16" in str(hits[0].message)
    quiet = Monitor(DeadMLP(), every=1, window=3, threshold=0.9)
    with quiet, warnings.catch_warnings():
        warnings.simplefilter("error", MonitorWarning)
        _train(quiet.model, quiet, 5)


def test_history_csv_json_and_plot(tmp_path) -> None:
    model = DeadMLP()
    with Monitor(model, every=2, window=4) as mon:
        _train(model, mon, 7)
    text = mon.to_csv(tmp_path / "h.csv")
    lines = text.strip().splitlines()
    assert lines[0] == "step,relu1,relu2"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "2", "4", "6"]
    assert float(lines[-1].split(",")[1]) == pytest.approx(2 / 16)
    assert (tmp_path / "h.csv").read_text() == text
    data = json.loads(mon.to_json())
    assert data["steps"] == [0, 2, 4, 6]
    assert data["dead"][-1] == [2, 1]
    assert data["dead_fraction"][-1] == pytest.approx([2 / 16, 1 / 12])
    png = mon.plot_history(tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ checkpoints


def test_state_dict_resume_equals_uninterrupted_run() -> None:
    torch.manual_seed(0)
    ref_model = DeadMLP()
    model = DeadMLP()
    model.load_state_dict(ref_model.state_dict())

    with Monitor(ref_model, every=2, window=6) as ref:
        _train(ref_model, ref, 30)

    with Monitor(model, every=2, window=6) as first:
        _train(model, first, 15)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)

    second = Monitor(model, every=2, window=6)
    second.load_state_dict(saved)
    assert second.step_count == 15
    with second:
        _train_from(model, second, 15, 15)

    assert second.history.as_dict() == ref.history.as_dict()
    assert _as_lists(second.all_units()) == _as_lists(ref.all_units())
    a, b = second.state_dict(), ref.state_dict()
    for name in a["sites"]:
        assert torch.equal(a["sites"][name]["last_active"], b["sites"][name]["last_active"])
        assert torch.equal(a["sites"][name]["pane"]["active"], b["sites"][name]["pane"]["active"])


def _train_from(model: DeadMLP, mon: Monitor, start: int, steps: int) -> None:
    xs = model.make_batches(4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for t in range(start, start + steps):
        model(xs[t % 4]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        mon.step()


def test_load_state_dict_rejects_other_settings() -> None:
    model = DeadMLP()
    with Monitor(model, every=2, window=6) as mon:
        _train(model, mon, 3)
    with pytest.raises(ValueError, match="every=2, window=6"):
        Monitor(model, every=5, window=10).load_state_dict(mon.state_dict())


def test_bad_arguments() -> None:
    model = DeadMLP()
    with pytest.raises(ValueError, match="every"):
        Monitor(model, every=0)
    with pytest.raises(ValueError, match="window"):
        Monitor(model, every=10, window=5)
    with pytest.raises(ValueError, match="hooks"):
        Monitor(model, hooks="never")


# ------------------------------------------------------------------ zero gradient (C2)


def test_dead_units_get_exactly_zero_gradient() -> None:
    torch.manual_seed(0)
    model = DeadMLP()
    with Monitor(model, every=2, window=10, track_grad=True) as mon:
        _train(model, mon, 20, lr=1e-2)
    assert mon.producers == {"relu1": "fc1", "relu2": "fc2"}
    checks = mon.check_zero_grad()
    assert checks["relu1"].dead.tolist() == [1, 4]
    assert checks["relu2"].dead.tolist() == [7]
    assert all(c.holds for c in checks.values())
    # not vacuous: every alive unit's incoming weights did get gradient in the window
    for name, last in mon._grad.grad_last.items():
        alive = torch.ones(last.shape[0], dtype=torch.bool)
        alive[checks[name].dead] = False
        assert bool((last[alive] >= 10).all())
    assert set(mon._grad.grad_last) == {"relu1", "relu2"}


def test_zero_grad_check_can_fail() -> None:
    """A weight-decay-like term in the loss gives dead units' weights gradient: reported."""
    model = DeadMLP()
    with Monitor(model, every=1, window=4, track_grad=True) as mon:
        _train(model, mon, 6, extra_loss=lambda: 1e-3 * model.fc1.weight.pow(2).sum())
    checks = mon.check_zero_grad()
    assert checks["relu1"].dead_with_grad.tolist() == [1, 4]
    assert not checks["relu1"].holds
    assert checks["relu2"].holds


def test_check_zero_grad_needs_track_grad() -> None:
    with pytest.raises(RuntimeError, match="track_grad=True"):
        Monitor(DeadMLP()).check_zero_grad()


def test_find_producers() -> None:
    cnn = DeadChannelCNN().eval()
    x = cnn.make_batches(1)[0]
    assert find_producers(cnn, x) == {"relu1": "bn1", "relu2": "bn2"}
    block = TinyTransformerBlock()
    prods = find_producers(block, block.make_batches(1)[0])
    assert prods["ffn:relu"] == "ffn.up"
    assert prods["ffn:gelu"] == "ffn.gate"
    mlp = DeadMLP()
    assert producer_of(mlp, "relu2", mlp.make_batches(1)[0]) is mlp.fc2
    assert _hooks_left(mlp) == 0


def test_paused_block_is_not_counted() -> None:
    model = DeadMLP()
    x = model.make_batches(1)[0]
    with Monitor(model, every=1, window=4) as mon:
        model(x)
        with mon.paused():
            model(x)
            model(x)
        mon.step()
    assert int(mon.statistics()["relu1"].positions) == 32


# ------------------------------------------------------------------ one answer (issue 11, 9-10)


def _kill_at(model: DeadMLP, unit: int, step: int) -> Callable[[int], None]:
    def hook(t: int) -> None:
        if t == step:
            with torch.no_grad():
                model.fc1.bias[unit] = DEAD_BIAS

    return hook


def test_report_agrees_with_dead_units_after_a_death_mid_pane() -> None:
    """Unit 0 of relu1 is killed before the forward of step 8 (every=1, window=16). After
    24 steps (0..23) it was last active at step 7: dead over the window [8, 23], while the
    report's panes ([0, 16) and [16, 24)) still hold its activity of steps 0-7."""
    model = DeadMLP(dead1=(), dead2=())
    with Monitor(model, every=1, window=16) as mon:
        _train(model, mon, 24, lr=0.0, hook=_kill_at(model, 0, 8))
    assert mon.dead_units("relu1") == [0]
    assert mon.dead_units("relu2") == []
    rep = mon.report()
    assert int(rep.stats["relu1"].active[0]) > 0  # the panes saw it active ...
    assert rep.dead_units("relu1") == [0]  # ... the report's dead is the window's
    assert rep.count("dead") == 1 and rep.summary()["dead"] == 1
    assert Report.from_json(rep.to_json()).dead_units("relu1") == [0]
    assert mon.all_units("dead") == {"relu1": [0], "relu2": []}


def test_died_since_is_dead_since_at_or_after() -> None:
    model = DeadMLP(dead1=(5,), dead2=())
    with Monitor(model, every=1, window=16) as mon:
        _train(model, mon, 24, lr=0.0, hook=_kill_at(model, 0, 8))
    since = mon.dead_since["relu1"].tolist()
    assert since[0] == 8 and since[5] == 0 and since[1] == -1
    assert mon.died_since(8)["relu1"] == [0]
    assert mon.died_since(9)["relu1"] == []
    assert mon.died_since(0)["relu1"] == [0, 5]
    for t in range(-2, 26):  # the definition, for every unit and step
        expected = [u for u, d in enumerate(since) if d != -1 and d >= t]
        assert mon.died_since(t)["relu1"] == expected, t


def test_nested_with_keeps_the_outer_block_attached() -> None:
    model = DeadMLP()
    mon = Monitor(model, every=1, window=4)
    with mon:
        with mon:
            _train(model, mon, 1)
        assert mon.attached and mon.hooks_registered
        _train(model, mon, 3)
    assert not mon.attached and _hooks_left(model) == 0
    assert int(mon.statistics()["relu1"].positions) == 4 * 32
    mon.attach()  # a block entered while attached does not detach on exit
    with mon:
        pass
    assert mon.attached
    mon.detach()


def test_two_monitors_on_one_model_are_independent() -> None:
    model = DeadMLP()
    a = Monitor(model, every=1, window=4)
    b = Monitor(model, every=2, window=4, track_grad=True)
    xs = model.make_batches(4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with a:
        with b:
            for t in range(4):
                model(xs[t]).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                a.step()
                b.step()
        assert _hooks_left(model) > 0 and a.hooks_registered  # b's exit left a attached
        model(xs[0])
        a.step()
    assert _hooks_left(model) == 0
    assert a.all_units() == b.all_units() == model.expected_dead
    assert int(a.statistics()["relu1"].positions) == 5 * 32  # steps 0..4
    assert int(b.statistics()["relu1"].positions) == 2 * 32  # steps 0 and 2
    assert all(c.holds for c in b.check_zero_grad().values())


def test_load_state_dict_checks_sites_and_units_up_front() -> None:
    model = DeadMLP()
    with Monitor(model, every=1, window=4) as mon:
        _train(model, mon, 3)
    state = mon.state_dict()
    other = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    with pytest.raises(ValueError, match=r"\['relu1', 'relu2'\].*another model"):
        Monitor(other, every=1, window=4).load_state_dict(state)
    wide = DeadMLP(hidden=(20, 12))
    seen = Monitor(wide, every=1, window=4)
    with seen:
        _train(wide, seen, 1)
    with pytest.raises(ValueError, match="'relu1': saved 16, model 20"):
        seen.load_state_dict(state)
    assert seen.step_count == 1 and seen.dead_units("relu1") == [1, 4]  # nothing changed


def test_restored_monitor_answers_before_the_next_forward() -> None:
    model = DeadMLP()
    with Monitor(model, every=1, window=4) as mon:
        _train(model, mon, 3)
    restored = Monitor(DeadMLP(), every=1, window=4)
    restored.load_state_dict(mon.state_dict())
    assert restored.sites == ["relu1", "relu2"]
    assert restored.dead_fraction() == mon.dead_fraction() == {"relu1": 2 / 16, "relu2": 1 / 12}
    assert restored.all_units() == model.expected_dead
    assert restored.report().dead_units("relu1") == [1, 4]
    with restored:  # and it goes on counting
        _train(restored.model, restored, 2)
    assert restored.dead_units("relu1") == [1, 4] and restored.step_count == 5


def test_dead_units_of_an_unknown_site() -> None:
    model = DeadMLP()
    with Monitor(model, every=1, window=4) as mon:
        _train(model, mon, 1)
    with pytest.raises(KeyError, match="relu1"):
        mon.dead_units("relu9")


def test_nan_units_are_said_to_count_as_dead() -> None:
    model = DeadMLP().eval()
    with torch.no_grad():
        model.fc1.weight[2] = float("nan")  # relu1 unit 2 is NaN, and so is all of relu2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Monitor(model, every=1, window=4, training_only=False) as mon:
            for x in model.make_batches(3):
                model(x)
                mon.step()
    msgs = [str(w.message) for w in caught if issubclass(w.category, MonitorWarning)]
    nan_msgs = [m for m in msgs if "NaN/inf" in m]
    assert len(nan_msgs) == 2  # once per site, not once per step
    assert "1 units of 'relu1'" in nan_msgs[0] and "count as dead" in nan_msgs[0]
    assert "12 units of 'relu2'" in nan_msgs[1]
    assert mon.dead_units("relu1") == [1, 2, 4]
    assert mon.report().nonfinite_units("relu1") == [2]


def test_report_twice_counts_each_position_once() -> None:
    """Monitor.report() merges the window's panes into a copy: reporting in the middle of
    training changes nothing, and the final report counts the rows seen on the sampled steps
    it covers once each."""
    net = DeadMLP()
    batches = net.make_batches(6)
    with Monitor(net, every=1, window=2) as mon:
        for i, x in enumerate(batches):
            net(x)
            mon.step()
            mon.report()  # every step: must not feed the panes
            if i == 2:
                mon.report()
    report = mon.report()
    covered = report.meta["sampled_steps"]  # the panes: one to two windows of steps
    assert 2 <= covered <= 4
    rows = sum(int(x.shape[0]) for x in batches[-covered:])
    for name in report.sites:
        assert int(report.stats[name].positions) == rows, name
