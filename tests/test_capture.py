"""capture.attach: call sites, functional calls, in-place, reuse, unit axis, hook removal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deadrelu.capture import Site, attach
from deadrelu.stats import UnitStats
from models import (
    DeadChannelCNN,
    DeadMLP,
    InplaceReLUModel,
    ReusedReLUModel,
    TinyTransformerBlock,
    all_models,
)


def no_hooks_left(model: nn.Module) -> bool:
    """No module hook, no global hook and no torch-function mode is left behind."""
    from torch.nn.modules import module as m

    for mod in model.modules():
        if mod._forward_hooks or mod._forward_pre_hooks or mod._forward_hooks_always_called:
            return False
    global_hooks = (m._global_forward_hooks, m._global_forward_pre_hooks)
    return not any(global_hooks) and torch._C._len_torch_function_stack() == 0


def run(model: nn.Module, batches: list, **kw: object) -> tuple[dict[str, UnitStats], dict]:
    stats: dict[str, UnitStats] = {}

    def cb(site: Site, z: Tensor, out: Tensor) -> None:
        s = stats.get(site.name)
        if s is None:
            s = stats[site.name] = UnitStats.empty(z.shape[site.unit_dim], z.device)
        s.update(z, out, site.unit_dim)

    with attach(model, cb, **kw) as handle, torch.no_grad():  # type: ignore[arg-type]
        for b in batches:
            model(**b) if isinstance(b, dict) else model(b)
        sites = dict(handle.sites)
    assert no_hooks_left(model)
    return stats, sites


def collector() -> tuple[dict[str, UnitStats], Callable[[Site, Tensor, Tensor], None]]:
    """A dict of statistics and the callback that fills it."""
    stats: dict[str, UnitStats] = {}

    def cb(site: Site, z: Tensor, out: Tensor) -> None:
        s = stats.get(site.name)
        if s is None:
            s = stats[site.name] = UnitStats.empty(z.shape[site.unit_dim], z.device)
        s.update(z, out, site.unit_dim)

    return stats, cb


def dead(stats: dict[str, UnitStats]) -> dict[str, list[int]]:
    return {k: torch.nonzero(s.active == 0).flatten().tolist() for k, s in stats.items()}


@pytest.mark.parametrize("model", all_models(), ids=lambda m: type(m).__name__)
def test_dead_units_by_construction(model: nn.Module) -> None:
    stats, _ = run(model, model.make_batches())  # type: ignore[operator]
    assert dead(stats) == model.expected_dead


def test_unit_axis_conv_and_transformer() -> None:
    _, sites = run(DeadChannelCNN(), DeadChannelCNN().make_batches(1))
    assert {k: s.unit_dim for k, s in sites.items()} == {"relu1": 1, "relu2": 1}
    t = TinyTransformerBlock()
    _, sites = run(t, t.make_batches(1))
    assert {k: s.unit_dim for k, s in sites.items()} == {"ffn:relu": -1, "ffn:gelu": -1}
    assert sites["ffn:gelu"].kind == "functional" and sites["ffn:gelu"].module == "ffn"
    assert sites["ffn:relu"].activation.name == "relu"


def test_unit_axis_functional_conv_and_rank_fallback() -> None:
    class FConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x: Tensor) -> Tensor:
            y = F.relu(F.conv2d(x, self.w))  # functional producer -> dim 1
            return y.permute(0, 2, 3, 1).relu()  # still after conv2d: dim 1 by the rule

    _, sites = run(FConv(), [torch.randn(2, 3, 6, 6)])
    assert sites[":relu"].unit_dim == 1

    class NoProducer(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.relu(x)

    _, s4 = run(NoProducer(), [torch.randn(2, 3, 4, 4)])
    _, s3 = run(NoProducer(), [torch.randn(2, 3, 4)])
    assert s4[":relu"].unit_dim == 1 and s3[":relu"].unit_dim == -1


def test_unit_dim_override() -> None:
    m = DeadChannelCNN()
    _, sites = run(m, m.make_batches(1), unit_dim={"relu2": -1, "relu*": 2})
    assert sites["relu2"].unit_dim == -1 and sites["relu1"].unit_dim == 2
    _, sites = run(m, m.make_batches(1), unit_dim=3)
    assert {s.unit_dim for s in sites.values()} == {3}


def test_reused_instance_gets_numbered_sites_stable_over_batches() -> None:
    m = ReusedReLUModel()
    stats, sites = run(m, m.make_batches(5))
    assert list(sites) == ["act", "act#1"]
    assert stats["act"].units == 8 and stats["act#1"].units == 6
    assert int(stats["act"].positions) == 5 * 16


def test_inplace_relu_sees_preactivation() -> None:
    m = InplaceReLUModel()
    stats, _ = run(m, m.make_batches(2))
    assert float(stats["act"].z_min[2]) < -900  # z read before the in-place overwrite
    assert float(stats["act"].z_max[2]) < -900


def test_functional_calls_all_spellings() -> None:
    class Spellings(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.fc(x)
            a = F.relu(h) + torch.relu(h) + h.relu() + F.leaky_relu(h, 0.2)
            b = F.elu(h) + F.selu(h) + F.silu(h) + F.gelu(h, approximate="tanh")
            c = h.clone()
            F.relu_(c)  # in place: z must be read before
            return a + b + c

    stats, sites = run(Spellings(), [torch.randn(4, 3)])
    assert list(sites) == [
        ":relu",
        ":relu#1",
        ":relu#2",
        ":leaky_relu",
        ":elu",
        ":selu",
        ":silu",
        ":gelu",
        ":relu#3",
    ]
    assert sites[":leaky_relu"].activation.params["slope"] == 0.2
    assert sites[":gelu"].activation.params["approximate"] == "tanh"
    # every site saw the same z: the in-place one too
    for name in sites:
        torch.testing.assert_close(stats[name].z_min, stats[":relu"].z_min)
    assert all(int(s.positions) == 4 for s in stats.values())


def test_every_registered_function_is_captured() -> None:
    """Each torch function and tensor method of the registry, called in a forward (the mode's
    fast path passes calls through: none of these may be among them), gives one site."""
    from deadrelu import activations

    calls: list[tuple[str, Callable[[Tensor], object]]] = []
    for name in activations.names():
        spec = activations.get(name)
        assert spec is not None
        extra = (torch.tensor([0.25]),) if name == "prelu" else ()
        for fn in spec.spec.torch_functions:
            calls.append((name, lambda h, fn=fn, extra=extra: fn(h.clone(), *extra)))
        for meth in spec.spec.tensor_methods:
            calls.append((name, lambda h, m=meth, extra=extra: getattr(h.clone(), m)(*extra)))
    assert len(calls) > 20

    class Every(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> None:
            h = self.fc(x)
            for _, call in calls:
                call(h)

    seen: list[str] = []
    model = Every()
    with attach(model, lambda site, z, out: seen.append(site.activation.name)), torch.no_grad():
        model(torch.randn(4, 3))
    assert seen == [name for name, _ in calls]


def test_activation_module_not_counted_twice() -> None:
    calls: Counter[str] = Counter()
    m = DeadMLP()
    with attach(m, lambda site, z, out: calls.update([site.name])), torch.no_grad():
        m(torch.randn(2, 8))
        m(torch.randn(2, 8))
    assert calls == Counter({"relu1": 2, "relu2": 2})


def test_functional_false_ignores_functional_calls() -> None:
    t = TinyTransformerBlock()
    stats, sites = run(t, t.make_batches(1), functional=False)
    assert sites == {} and stats == {}
    m = DeadMLP()
    _, sites = run(m, m.make_batches(1), functional=False)
    assert list(sites) == ["relu1", "relu2"]


def test_direct_submodule_call_names_and_functional() -> None:
    t = TinyTransformerBlock()
    seen: list[str] = []
    with attach(t, lambda site, z, out: seen.append(site.name)), torch.no_grad():
        t.ffn(torch.randn(2, 3, 8))
        t.ffn(torch.randn(2, 3, 8))
    assert seen == ["ffn:relu", "ffn:gelu", "ffn:relu", "ffn:gelu"]


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.act(self.fc(x)))
        raise RuntimeError("boom")


def test_hooks_and_mode_removed_when_forward_raises() -> None:
    m = Boom()
    with pytest.raises(RuntimeError, match="boom"), attach(m, lambda *a: None):
        m(torch.randn(2, 3))
    assert no_hooks_left(m)


def test_state_consistent_after_exception_while_attached() -> None:
    m = Boom()
    seen: list[str] = []
    handle = attach(m, lambda site, z, out: seen.append(site.name))
    for _ in range(2):
        with pytest.raises(RuntimeError):
            m(torch.randn(2, 3))
        assert torch._C._len_torch_function_stack() == 0
    assert seen == ["act", ":relu", "act", ":relu"]
    handle.remove()
    assert no_hooks_left(m) and not handle.active


def test_callback_error_propagates_and_cleans_up() -> None:
    m = DeadMLP()

    def bad(site: Site, z: Tensor, out: Tensor) -> None:
        raise ValueError("callback failed")

    with pytest.raises(ValueError, match="callback failed"), attach(m, bad):
        m(torch.randn(2, 8))
    assert no_hooks_left(m)


def test_attach_rejects_non_module() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        attach(lambda x: x, lambda *a: None)  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")
def test_compiled_model_counts_each_call_once() -> None:
    """Under torch.compile a callback that breaks the graph must not make the functional
    call inside nn.ReLU look like a second, functional site."""
    torch._dynamo.reset()
    try:
        # positions per unit over 3 batches: (8, C, 8, 8) images; (4, 5, D) token batches
        for model, positions in ((DeadChannelCNN(), 3 * 8 * 64), (TinyTransformerBlock(), 3 * 20)):
            compiled = torch.compile(model, backend="eager")
            stats, cb = collector()
            batches = model.make_batches(3)
            with attach(model, cb), torch.no_grad():
                for b in batches:
                    compiled(b)
            assert dead(stats) == model.expected_dead
            assert {int(s.positions) for s in stats.values()} == {positions}
            assert no_hooks_left(model)
    finally:
        torch._dynamo.reset()


def test_callback_gets_detached_tensors_and_no_reference_survives() -> None:
    import gc
    import weakref

    m = TinyTransformerBlock()
    inplace = InplaceReLUModel()
    refs: list[weakref.ref[Tensor]] = []
    grads: list[bool] = []

    def cb(site: Site, z: Tensor, out: Tensor) -> None:
        grads.append(z.requires_grad or out.requires_grad)
        refs.extend([weakref.ref(z), weakref.ref(out)])

    for model in (m, inplace):
        with attach(model, cb):
            model(model.make_batches(1)[0]).sum().backward()  # training forward with autograd
    gc.collect()
    assert grads and not any(grads)
    assert refs and all(r() is None for r in refs)


class ReluLinear(nn.Linear):
    """A Linear subclass whose forward calls F.relu: not a quiet torch module."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


class QuietMix(nn.Module):
    """Quiet torch modules (Linear, LayerNorm, attention) around functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.sub = ReluLinear(6, 6)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.norm(self.fc(x)))
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.sub(h).relu()


def test_quiet_modules_keep_functional_sites_and_restore_the_mode() -> None:
    """The mode is popped inside plain torch modules only; subclasses are still watched."""
    m = QuietMix()
    seen: list[str] = []
    with attach(m, lambda site, z, out: seen.append(site.name)), torch.no_grad():
        for _ in range(2):
            m(torch.randn(2, 5, 6))
            assert torch._C._len_torch_function_stack() == 0
        with pytest.raises(RuntimeError):
            m(torch.randn(2, 5, 7))  # fc raises while the mode is suspended
        assert torch._C._len_torch_function_stack() == 0
        m(torch.randn(2, 5, 6))
    assert seen == [":gelu", "sub:relu", ":relu"] * 3
    assert no_hooks_left(m)


def test_remove_while_suspended_leaves_no_mode() -> None:
    """remove() from inside a quiet module's forward does not pop a foreign mode."""
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    handle = attach(m, lambda *a: None)
    m[0].register_forward_pre_hook(lambda *a: handle.remove())  # runs after attach's
    m(torch.randn(2, 3))
    assert torch._C._len_torch_function_stack() == 0
    assert not handle.active


def test_inplace_callbacks_see_z_before_overwrite_without_copy() -> None:
    """attach(inplace=...) hands z over before an in-place module runs and out after it."""
    m = InplaceReLUModel()
    batches = m.make_batches(3)
    ref, _ = run(m, batches)
    split: dict[str, UnitStats] = {}
    calls: list[str] = []

    def before(site: Site, z: Tensor) -> None:
        calls.append("z")
        split.setdefault(site.name, UnitStats.empty(z.shape[site.unit_dim])).update_z(
            z, site.unit_dim
        )

    def after(site: Site, out: Tensor) -> None:
        calls.append("out")
        assert float(out.min()) >= 0.0
        split[site.name].add_output(out, site.unit_dim)

    never: Callable[[Site, Tensor, Tensor], None] = lambda *a: pytest.fail("no copy path")  # noqa: E731
    with attach(m, never, inplace=(before, after)), torch.no_grad():
        for b in batches:
            m(b)
    assert no_hooks_left(m)
    assert calls == ["z", "out"] * 3
    assert dead(split) == m.expected_dead
    assert float(split["act"].z_max[2]) < -900  # z read before the in-place overwrite
    for name in UnitStats.REDUCE:
        torch.testing.assert_close(getattr(split["act"], name), getattr(ref["act"], name))


# ------------------------------------------------------------------ nothing skipped silently


class _TanhGELUActivation(nn.Module):
    """An activation deadrelu cannot see: written with tanh and pow (GPT-2's gelu_new)."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


class _Squash(nn.Module):
    """Parameter-free, unknown name, elementwise: between two layers it is an activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class _PassThrough(nn.Module):
    """Parameter-free and unknown, but returns its input (DropPath in eval): not listed."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class _ClippedGELUActivation(nn.Module):
    """Looks like an activation by name, but its F.gelu is measured: not listed."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.clip(F.gelu(x), -10, 10)


class _NormAct(nn.Module):
    """Named *Act* but a container (timm's BatchNormAct2d): its child is what counts."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(6)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class _Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(4, 6), _TanhGELUActivation()
        self.fc2, self.squash = nn.Linear(6, 6), _Squash()
        self.fc3, self.skip = nn.Linear(6, 6), _PassThrough()
        self.fc4, self.clipped = nn.Linear(6, 6), _ClippedGELUActivation()
        self.fc5, self.norm_act = nn.Linear(6, 6), _NormAct()
        self.squash2 = _Squash()
        self.unused = _TanhGELUActivation()  # never called: nothing was skipped

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.fc1(x))
        x = self.squash(self.fc2(x))
        x = self.skip(self.fc3(x))
        x = self.clipped(self.fc4(x))
        x = self.squash2(x)  # fed by an activation, not a layer: not listed
        return self.norm_act(self.fc5(x))


def test_unrecognised_modules_are_listed() -> None:
    model = _Zoo()
    with attach(model, lambda site, z, out: None) as handle:
        model(torch.randn(5, 4))
    assert handle.unrecognised == {"act1": "_TanhGELUActivation", "squash": "_Squash"}
    assert set(handle.sites) == {"clipped:gelu", "norm_act.act"}


def test_scan_warns_once_and_records_unrecognised() -> None:
    import warnings

    import deadrelu as dr
    from deadrelu.capture import UnrecognisedActivationWarning

    model = _Zoo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = dr.scan(model, [torch.randn(5, 4), torch.randn(5, 4)])
    ours = [w for w in caught if issubclass(w.category, UnrecognisedActivationWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "'act1' (_TanhGELUActivation)" in text and "'squash' (_Squash)" in text
    assert "deadrelu.register_module(_TanhGELUActivation, like='gelu_tanh')" in text
    assert report.meta["unrecognised"] == {"act1": "_TanhGELUActivation", "squash": "_Squash"}

    # the one-line fix: the class becomes a site, and the warning goes
    from deadrelu import activations

    try:
        dr.register_module(_TanhGELUActivation, like="gelu_tanh")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnrecognisedActivationWarning)
            with pytest.warns(UnrecognisedActivationWarning, match="'squash'"):
                report = dr.scan(model, torch.randn(5, 4))
        assert report.meta["unrecognised"] == {"squash": "_Squash"}
        assert "act1" in report.sites
        assert str(report.sites["act1"].activation) == "gelu(approximate='tanh')"
    finally:
        activations._USER_MODULES.pop(_TanhGELUActivation, None)


def test_scan_of_only_unknown_activations_names_them() -> None:
    import deadrelu as dr

    model = nn.Sequential(nn.Linear(3, 4), _TanhGELUActivation(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"'1' \(_TanhGELUActivation\).*register_module"):
        dr.scan(model, torch.randn(2, 3))


# ------------------------------------------------------------------ unit axis through transposes


class _ConvLayerNorm(nn.Module):
    """wav2vec2's ``feat_extract_norm="layer"`` block: Conv1d, LayerNorm over channels
    (transposed to channels-last and back), GELU. Channel 2 is dead by construction."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, channels, 3)
        self.norm = nn.LayerNorm(channels)
        self.act = nn.GELU()
        with torch.no_grad():
            self.norm.bias[2] = -100.0  # |LN output| <= sqrt(C - 1) < 100

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.act(x)


class _LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over the channels of an ``(N, C, H, W)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _ConvNormAct2d(nn.Module):
    """ViTamin / ConvNeXt stem: Conv2d, LayerNorm2d, ReLU; optionally an elementwise op
    between the norm and the activation (the norm's output is then not z itself)."""

    def __init__(self, channels: int = 6, shift: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3)
        self.norm = _LayerNorm2d(channels)
        self.act = nn.ReLU()
        self.shift = shift
        with torch.no_grad():
            self.norm.bias[4] = -100.0

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        return self.act(x * 1.0 if self.shift else x)


def _dead(model: nn.Module, x: Tensor, **kw: object) -> tuple[int, list[int]]:
    import deadrelu as dr

    report = dr.scan(model, x, **kw)  # type: ignore[arg-type]
    (site,) = report.sites.values()
    return site.unit_dim, report.dead_units(site.name)


def test_unit_axis_follows_transposes_wav2vec2_layer_norm() -> None:
    # (N, C=8, T=11): the LayerNorm is the last layer before the GELU, but its units are
    # the conv's channels, moved back to dim 1
    unit_dim, dead = _dead(_ConvLayerNorm(), torch.randn(4, 3, 13))
    assert unit_dim == 1 and dead == [2]


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("functional", [True, False])
def test_unit_axis_of_layer_norm_2d(shift: bool, functional: bool) -> None:
    # followed through the permutes (functional), or found by the norm's size (6 channels
    # in a (N, 6, 5, 5) map), also after an elementwise op
    unit_dim, dead = _dead(
        _ConvNormAct2d(shift=shift), torch.randn(3, 3, 7, 7), functional=functional
    )
    assert unit_dim == 1 and dead == [4]


class _TLinear(nn.Linear):
    """A Linear whose output is permuted to ``(N, D, *, L)``: its units are in dim 1 or 2,
    which cannot be told apart by size when both have D elements."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).permute(0, 3, 1, 2)


def test_ambiguous_unit_axis_warns_with_the_fix() -> None:
    from deadrelu.capture import UnitAxisWarning

    model = nn.Sequential(_TLinear(5, 6), nn.ReLU())
    x = torch.randn(2, 6, 4, 5)  # -> (2, 6, 6, 4): two axes of size 6
    with pytest.warns(UnitAxisWarning, match=r"site '1' is ambiguous.*unit_dim=\{'1': d\}"):
        run(model, [x], functional=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnitAxisWarning)
        stats, sites = run(model, [x], functional=False, unit_dim={"1": 2})
    assert sites["1"].unit_dim == 2 and stats["1"].units == 6


@pytest.mark.parametrize("bad", [9, -9, {"1": 9}, {"*": -3}])
def test_unit_dim_out_of_range_names_the_site(bad: object) -> None:
    import deadrelu as dr

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with pytest.raises(ValueError, match=r"unit_dim=-?\d is out of range for site '1'.*-2\.\.1"):
        dr.scan(model, torch.randn(2, 3), unit_dim=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [{"nope": 1}, {"2:gelu#1": 1}, {"blocks.*": 1}, {"1": "x"}, 1.5])
def test_unit_dim_naming_no_site_is_an_error(bad: object) -> None:
    import deadrelu as dr

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with pytest.raises(ValueError, match="unit_dim"):
        dr.scan(model, torch.randn(2, 3), unit_dim=bad)  # type: ignore[arg-type]
    # names and patterns that can be sites are accepted
    for good in ({"1": -1}, {"1#1": -1}, {"*": -1}, {"0:relu": -1}, {":relu": -1}):
        dr.scan(model, torch.randn(2, 3), unit_dim=good)


def test_monitor_warns_once_and_reports_unrecognised() -> None:
    import warnings

    import deadrelu as dr
    from deadrelu.capture import UnrecognisedActivationWarning

    model = _Zoo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dr.Monitor(model, every=1, window=4, training_only=False) as mon:
            for _ in range(3):
                model(torch.randn(5, 4))
                mon.step()
    ours = [w for w in caught if issubclass(w.category, UnrecognisedActivationWarning)]
    assert len(ours) == 1 and "'act1' (_TanhGELUActivation)" in str(ours[0].message)
    expected = {"act1": "_TanhGELUActivation", "squash": "_Squash"}
    assert mon.report().meta["unrecognised"] == expected


class _FunctionalTanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc1(x))  # an activation outside the registry: listed
        h = torch.sigmoid(2 * self.fc2(h)) * h  # not on a layer's output itself: not listed
        return F.relu(self.fc3(h))


def test_unknown_functions_on_layer_outputs_are_listed() -> None:
    model = _FunctionalTanh()
    with attach(model, lambda site, z, out: None) as handle:
        model(torch.randn(3, 4))
    assert handle.unrecognised == {":tanh": "tanh()"}
    assert set(handle.sites) == {":relu"}
    with attach(model, lambda site, z, out: None, functional=False) as handle:
        model(torch.randn(3, 4))
    assert handle.unrecognised == {}  # functions are seen by the torch-function mode only
    from deadrelu.capture import unrecognised_message

    assert "Only these are measured: relu, leaky_relu" in unrecognised_message(
        handle.unrecognised or {":tanh": "tanh()"}
    )
