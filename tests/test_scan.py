"""scan(): ground truth by construction, batch kinds, modes, errors, cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from deadrelu import native
from deadrelu.report import Report
from deadrelu.scan import scan
from models import (
    DeadChannelCNN,
    DeadMLP,
    DictInputModel,
    TinyTransformerBlock,
    all_models,
)
from test_capture import no_hooks_left


@pytest.mark.parametrize("model", all_models(), ids=lambda m: type(m).__name__)
def test_reported_units_are_exactly_the_killed_ones(model: nn.Module) -> None:
    report = scan(model, model.make_batches())  # type: ignore[operator]
    expected = model.expected_dead
    assert report.all_units("dead") == expected
    # alive units fire at every position by construction, so the other classes agree
    assert report.all_units("dormant") == expected
    assert report.all_units("rarely_active") == expected
    assert no_hooks_left(model)


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")
@pytest.mark.parametrize("kernel", ["native", "compiled"])
@pytest.mark.parametrize("model", all_models(), ids=lambda m: type(m).__name__)
def test_fused_scan_equals_eager_scan(model: nn.Module, kernel: Any) -> None:
    """The one-pass kernels (ReLU from z, in-place ReLU in the pre-hook, other activations
    from |out|), native or compiled, give the eager statistics: the same classes exactly,
    sums to float32 order; meta names the kernels that ran."""
    if kernel == "native" and not native.available():
        pytest.skip("no C++ compiler for the native kernel")
    batches = model.make_batches()  # type: ignore[operator]
    for detail in ("range", "full"):
        eager = scan(model, batches, detail=detail, kernel="eager")
        fused = scan(model, batches, detail=detail, kernel=kernel)
        assert eager.meta["kernels"]["ran"] == ["eager"]
        assert fused.meta["kernels"]["ran"] == [kernel]
        _assert_same_findings(fused, eager, model.expected_dead)


def _assert_same_findings(got: Report, eager: Report, expected_dead: object) -> None:
    """``got`` finds exactly the killed units and the eager scan's classes, with its
    statistics up to float32 summation order."""
    assert got.all_units("dead") == expected_dead
    for kind in ("dead", "dormant", "rarely_active", "saturated", "nonfinite"):
        assert got.all_units(kind) == eager.all_units(kind), kind
    for site, st in eager.stats.items():
        for name in st.REDUCE:
            torch.testing.assert_close(
                getattr(got.stats[site], name), getattr(st, name), rtol=1e-5, atol=1e-5
            )


def test_fused_falls_back_to_eager_when_compiling_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """No compiler: one RuntimeWarning, the eager statistics exactly, meta says not fused."""
    import importlib

    stats_module = importlib.import_module("deadrelu.stats")
    monkeypatch.setattr(stats_module, "_FUSED", {})
    monkeypatch.setitem(native._STATE, "enabled", False)  # the torch.compile path

    def broken_compile(fn: object, **kwargs: object) -> object:
        def kernel(*args: object) -> object:
            raise RuntimeError("no C++ compiler")

        return kernel

    monkeypatch.setattr(torch, "compile", broken_compile)
    m = DeadChannelCNN()
    batches = m.make_batches(2)
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        fused = scan(m, batches, kernel="compiled")
    eager = scan(m, batches, kernel="eager")
    assert fused.meta["fused_from_batch"] is None and fused.meta["kernels"]["ran"] == ["eager"]
    assert fused.all_units("dead") == m.expected_dead
    for site, st in eager.stats.items():
        for name in st.REDUCE:
            assert torch.equal(getattr(fused.stats[site], name), getattr(st, name)), name


@pytest.mark.parametrize("model", all_models(), ids=lambda m: type(m).__name__)
def test_default_scan_takes_the_native_kernel(model: nn.Module) -> None:
    """scan's defaults (detail "range", kernel "auto") reduce float32 CPU activations with
    the kernel it measures fastest here (native, eager, or compiled where an earlier test
    compiled it), compile nothing new, and find exactly the killed units, with the
    statistics of the eager scan."""
    batches = model.make_batches()  # type: ignore[operator]
    default = scan(model, batches)
    eager = scan(model, batches, kernel="eager")
    ran = set(default.meta["kernels"]["ran"])
    assert ran <= {"native", "eager", "compiled"} and ran == set(
        scan(model, batches).meta["kernels"]["ran"]
    )
    assert default.meta["fused_from_batch"] is None
    _assert_same_findings(default, eager, model.expected_dead)


def test_auto_fused_rule() -> None:
    """fused=None switches after the first batch when the rest is projected to take
    >= AUTO_FUSED_SECONDS, only with a known length and a device the kernel supports."""
    from deadrelu.scan import AUTO_FUSED_SECONDS, auto_fused

    cpu = torch.device("cpu")
    assert auto_fused(AUTO_FUSED_SECONDS / 100, 100, cpu)
    assert not auto_fused(AUTO_FUSED_SECONDS / 100, 99, cpu)
    assert not auto_fused(10.0, None, cpu)  # unknown length: never
    assert not auto_fused(10.0, 1000, torch.device("meta"))


def test_auto_fused_in_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the threshold at 0 every scan of known length switches at batch 2; a generator
    (unknown length) never does; the results equal the eager scan's."""
    import importlib

    scan_module = importlib.import_module("deadrelu.scan")  # the package exports scan()
    m = DeadMLP()
    batches = m.make_batches(3)
    eager = scan(m, batches, kernel="eager")
    monkeypatch.setattr(scan_module, "AUTO_FUSED_SECONDS", 0.0)
    auto = scan(m, batches)
    assert auto.meta["fused_from_batch"] == 2
    assert scan(m, batches, max_batches=1).meta["fused_from_batch"] is None  # nothing left
    assert scan(m, (b for b in batches)).meta["fused_from_batch"] is None
    assert auto.all_units("dead") == eager.all_units("dead") == m.expected_dead
    for site, st in eager.stats.items():
        torch.testing.assert_close(auto.stats[site].z_max, st.z_max)
        torch.testing.assert_close(auto.stats[site].abs_sum, st.abs_sum, rtol=1e-6, atol=1e-6)


def test_detail_levels_in_scan() -> None:
    """Default "range": extrema and the saturated class, no moments; "full" adds them;
    "counts" has neither; a bad level is refused before any forward."""
    t = TinyTransformerBlock()
    batches = t.make_batches(2)
    default = scan(t, batches)
    full = scan(t, batches, detail=True)
    counts = scan(t, batches, detail="counts")
    st = default.stats["ffn:gelu"]
    assert st.detail == "range" and not st.z_m2.any() and full.stats["ffn:gelu"].z_m2.all()
    torch.testing.assert_close(st.z_max, full.stats["ffn:gelu"].z_max)
    assert default.saturated_units("ffn:gelu") == full.saturated_units("ffn:gelu") == [2, 11]
    assert counts.saturated_units("ffn:gelu") == []  # unknown without the z range
    with pytest.raises(ValueError, match="detail must be one of"):
        scan(t, batches, detail="everything")  # type: ignore[arg-type]


def test_saturated_only_for_saturating_activation() -> None:
    t = TinyTransformerBlock()
    report = scan(t, t.make_batches(2))
    assert report.saturated_units("ffn:gelu") == [2, 11]
    assert report.saturated_units("ffn:relu") == []


class Recorder(nn.Module):
    """Records the training flag and grad mode seen in forward; has dropout and BN."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.act = nn.ReLU()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.act(self.bn(self.fc(x)))


def test_eval_and_no_grad_by_default_and_modes_restored() -> None:
    m = Recorder()
    m.train()
    m.bn.eval()  # mixed modes must come back exactly
    scan(m, [torch.randn(4, 3)])
    assert m.seen == [(False, False)]
    assert m.training and not m.bn.training and m.fc.training
    scan(m, [torch.randn(4, 3)], keep_mode=True)
    assert m.seen[-1] == (True, False)
    assert m.training and not m.bn.training


def test_batch_kinds() -> None:
    m = DeadMLP()
    xs = m.make_batches(3, batch=10)
    y = torch.zeros(10)
    ds = TensorDataset(torch.cat(xs), torch.zeros(30))
    kinds = {
        "list of tensors": xs,
        "tuples": [(x, y) for x in xs],
        "lists": [[x, y] for x in xs],
        "generator": (x for x in xs),
        "DataLoader": DataLoader(ds, batch_size=10),
        "callable -> iterable": lambda: iter(xs),
        "dict inputs in tuples": [({"input": x}, y) for x in xs],
    }
    for kind, data in kinds.items():
        if kind == "dict inputs in tuples":
            continue
        report = scan(m, data)
        assert int(report.stats["relu1"].positions) == 30, kind
        assert report.all_units("dead") == m.expected_dead, kind
    single = scan(m, xs[0])
    assert int(single.stats["relu1"].positions) == 10
    calls = iter(xs)
    factory = scan(m, lambda: next(calls), max_batches=3)
    assert int(factory.stats["relu1"].positions) == 30


def test_dict_batches_and_dict_in_tuple() -> None:
    m = DictInputModel()
    batches = m.make_batches(2)
    assert scan(m, batches).all_units("dead") == m.expected_dead
    report = scan(m, [(b, b["labels"]) for b in batches])
    assert report.all_units("dead") == m.expected_dead
    assert int(report.stats["encoder.act"].positions) == 32


def test_max_batches_and_meta() -> None:
    m = DeadMLP()
    report = scan(m, m.make_batches(5, batch=4), max_batches=2)
    assert int(report.stats["relu1"].positions) == 8
    assert report.meta["batches"] == 2 and report.meta["mode"] == "eval"


def test_zero_size_batch_skipped() -> None:
    m = DeadMLP()
    xs = m.make_batches(2, batch=4)
    report = scan(m, [xs[0], torch.empty(0, 8), xs[1], {"input": torch.empty(0, 8)}])
    assert int(report.stats["relu1"].positions) == 8
    assert report.meta["skipped_empty"] == 2


def test_bf16_counted_correctly() -> None:
    m = DeadMLP().to(torch.bfloat16)
    xs = [x.to(torch.bfloat16) for x in m.make_batches(3, batch=64)]
    reference = torch.zeros(16, dtype=torch.float64)

    def ref_hook(mod: nn.Module, args: tuple[Tensor], out: Tensor) -> None:
        nonlocal reference
        reference = reference + out.double().abs().sum(0)

    report = scan(m, xs)
    h = m.relu1.register_forward_hook(ref_hook)
    with torch.no_grad():
        for x in xs:
            m(x)
    h.remove()
    assert report.all_units("dead") == m.expected_dead
    s = report.stats["relu1"]
    assert int(s.positions) == 192
    torch.testing.assert_close(s.abs_sum, reference, rtol=1e-6, atol=1e-6)


def test_nan_and_inf_counted_not_crashing() -> None:
    m = DeadMLP()
    x = m.make_batches(1, batch=8)[0]
    x[3, 0] = float("nan")
    x[5, 1] = float("inf")
    with pytest.warns(RuntimeWarning, match=r"'relu1' \(16\), 'relu2' \(12\); 3 of them"):
        report = scan(m, [x])
    assert report.nonfinite_units("relu1") == list(range(16))
    assert int(report.stats["relu1"].nonfinite.min()) >= 1
    assert report.dead_units("relu1") == [1, 4]
    assert report.to_json()  # still serialisable


def test_state_size_constant_10_vs_1000_batches() -> None:
    m = DeadMLP(in_features=2, hidden=(3, 2), dead1=(0,), dead2=())
    x = torch.rand(1, 2)

    def size(n: int) -> int:
        report = scan(m, lambda: x, max_batches=n)
        return sum(
            t.numel() * t.element_size()
            for s in report.stats.values()
            for t in s.state_dict().values()
        )

    assert size(10) == size(1000)


def test_conv_unit_axis_and_override() -> None:
    m = DeadChannelCNN()
    report = scan(m, m.make_batches(1))
    assert [r.unit_dim for r in report.layers] == [1, 1]
    assert [r.units for r in report.layers] == [6, 5]
    over = scan(m, m.make_batches(1), unit_dim={"relu2": -1})
    assert over.layers[1].units == 8  # the W axis


def test_error_no_recognised_activation() -> None:
    m = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    with pytest.raises(ValueError, match=r"recognises.*relu, leaky_relu"):
        scan(m, [torch.randn(2, 3)])
    assert no_hooks_left(m)


def test_error_empty_data() -> None:
    with pytest.raises(ValueError, match="no batches"):
        scan(DeadMLP(), [])
    with pytest.raises(ValueError, match="all 2 batches were empty"):
        scan(DeadMLP(), [torch.empty(0, 8), torch.empty(0, 8)])


def test_error_unsupported_batch() -> None:
    with pytest.raises(TypeError, match="unsupported batch of type str"):
        scan(DeadMLP(), ["not a tensor"])
    with pytest.raises(TypeError, match="cannot iterate"):
        scan(DeadMLP(), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batches"):
        scan(DeadMLP(), lambda: torch.zeros(2, 8))
    with pytest.raises(ValueError, match="max_batches"):
        scan(DeadMLP(), [torch.zeros(2, 8)], max_batches=0)


def test_error_device_mismatch() -> None:
    with pytest.raises(ValueError, match="move the model"):
        scan(DeadMLP(), [torch.zeros(2, 8)], device="meta")


def test_hooks_removed_and_mode_restored_when_forward_raises() -> None:
    class Fails(DeadMLP):
        def forward(self, x: Tensor) -> Tensor:
            super().forward(x)
            raise RuntimeError("forward failed")

    m = Fails()
    m.train()
    with pytest.raises(RuntimeError, match="forward failed"):
        scan(m, m.make_batches(1))
    assert no_hooks_left(m)
    assert all(mod.training for mod in m.modules())


def test_error_in_data_iterator_cleans_up() -> None:
    m = DeadMLP()

    def broken() -> Iterator[Tensor]:
        yield torch.zeros(2, 8)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        scan(m, broken())
    assert no_hooks_left(m)


def test_progress_and_device() -> None:
    m = DeadMLP()
    report = scan(m, m.make_batches(2), progress=True, device="cpu")
    assert report.all_units("dead") == m.expected_dead


@pytest.mark.parametrize("detail", ["counts", "range", "full"])
def test_inplace_relu_scan_exact_and_equal_to_copy_path(detail: str) -> None:
    """scan reduces in-place ReLUs without a copy (abs_sum from relu(z) at every detail
    level): dead units by construction, and the same statistics as reducing a copy of z,
    NaN and inf included."""
    from deadrelu.capture import Site, attach
    from deadrelu.stats import UnitStats

    torch.manual_seed(3)
    conv = nn.Conv2d(3, 6, 3, padding=1)
    with torch.no_grad():
        conv.bias[[1, 4]] = -1000.0  # type: ignore[index]
    m = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Conv2d(6, 4, 1))
    xs = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    xs[1][0, 0, 2, 2] = float("nan")
    xs[2][1, 2, 5, 5] = float("inf")
    with pytest.warns(RuntimeWarning, match="NaN/inf"):
        report = scan(m, xs, detail=detail)
    got = report.stats["1"]
    ref: dict[str, UnitStats] = {}

    def cb(site: Site, z: Tensor, out: Tensor) -> None:
        ref.setdefault(site.name, UnitStats.empty(z.shape[1], detail=detail)).update(z, out, 1)

    with attach(m.eval(), cb), torch.no_grad():
        for x in xs:
            m(x)
    for name in UnitStats.REDUCE:
        torch.testing.assert_close(getattr(got, name), getattr(ref["1"], name), equal_nan=True)
    assert int(got.nonfinite.sum()) > 0 or detail == "counts"  # counts: seen via abs_sum
    with pytest.warns(RuntimeWarning, match="2 of them are also counted dead"):
        clean = scan(m, xs[:2]).stats["1"]  # NaN is not z > 0; an inf input: z = +inf
    assert torch.nonzero(clean.active == 0).flatten().tolist() == [1, 4]
    assert float(scan(m, xs[:1]).stats["1"].z_max[1]) < -900  # z before the overwrite
    assert no_hooks_left(m)


def test_channels_last_model_scans_like_contiguous() -> None:
    """A channels_last CNN (the layout fast conv kernels prefer): same units found, same
    statistics, for both kernels."""
    m = DeadChannelCNN()
    batches = m.make_batches(2)
    ref = scan(m, batches)
    m_cl = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    cl_batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]
    for kernel in ("eager", "native", "compiled", "auto"):
        got = scan(m_cl, cl_batches, kernel=kernel)  # type: ignore[arg-type]
        assert ref.all_units("dead") == m.expected_dead
        _assert_same_findings(got, ref, m.expected_dead)
