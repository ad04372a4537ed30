"""``kernel="auto"``: the statistics engine times the kernels that apply and keeps the fastest
per kind of batch, without changing any result.

Timings are injected (a fake clock that charges each kernel a given cost), so every
choice here is decided by the test, not by the machine.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from deadrelu import native
from deadrelu.scan import scan
from deadrelu.stats import TRIAL_REPEATS, UnitStats, set_timer

stats_module = importlib.import_module("deadrelu.stats")
needs_native = pytest.mark.skipif(not native.available(), reason="no C++ compiler")


class FakeClock:
    """A clock that advances by ``costs[kernel]`` when read at the end of a run of
    ``kernel`` (and at its start by the previous kernel's cost), so that every timed run
    of ``kernel`` lasts exactly ``costs[kernel]`` seconds."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.costs = costs
        self.now = 0.0
        self.current = "eager"
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.costs[self.current]
        return self.now


@pytest.fixture(autouse=True)
def _fresh_choices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no choice made and nothing compiled in this process."""
    monkeypatch.setattr(stats_module, "_CHOICES", {})
    monkeypatch.setattr(stats_module, "_FAST", {})
    monkeypatch.setattr(stats_module, "_COMPILED_READY", set())
    yield
    set_timer(None)


def _install(monkeypatch: pytest.MonkeyPatch, costs: dict[str, float]) -> FakeClock:
    """The fake clock as auto's timer, told by UnitStats._run which kernel runs."""
    clock = FakeClock(costs)
    original: Callable[..., bool] = UnitStats._run

    def run(self: UnitStats, name: str, batch: Any) -> bool:
        clock.current = name
        return original(self, name, batch)

    monkeypatch.setattr(UnitStats, "_run", run)
    set_timer(clock)
    return clock


def _batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 6, 9, 9, generator=g)
    return z, torch.relu(z)


@needs_native
@pytest.mark.parametrize("fastest", ["eager", "native"])
def test_auto_picks_the_fastest_by_injected_timings(
    fastest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel with the smaller injected time wins, its median times are reported, and
    the choice is kept for the kind of batch (the second batch is not timed)."""
    costs = {"eager": 2.0, "native": 1.0} if fastest == "native" else {"eager": 1.0, "native": 3.0}
    clock = _install(monkeypatch, costs)
    z, out = _batch()
    s = UnitStats.empty(6, detail="range")
    assert s.update(z, out, 1, relu=True) == fastest
    (trial,) = s.kernel_trials
    assert trial.kernel == fastest
    assert trial.candidates == ("eager", "native")  # not compiled: nothing compiled, not allowed
    assert dict(trial.times_s) == costs
    rounds = 2  # one kernel 2x faster or more: clear after two timed runs each
    assert clock.reads == 2 * rounds * 2
    assert s.update(z, out, 1, relu=True) == fastest
    assert clock.reads == 2 * rounds * 2  # decided: no timing
    # another kind of batch (units last) is timed on its own
    z2 = torch.randn(32, 6)
    assert s.update(z2, torch.relu(z2), -1, relu=True) == fastest
    assert len(stats_module.kernel_trials()) == 2


@needs_native
@pytest.mark.parametrize(
    ("costs", "chosen"),
    [
        ({"eager": 1.0, "native": 1.0}, "eager"),  # a tie: the simpler kernel
        ({"eager": 1.0, "native": 0.95}, "eager"),  # within TRIAL_MARGIN (10 %)
        ({"eager": 1.0, "native": 0.85}, "native"),
        ({"eager": 1.0, "native": 0.5, "compiled": 0.48}, "native"),
        ({"eager": 1.0, "native": 0.5, "compiled": 0.4}, "compiled"),
        ({"eager": 1.0, "native": 0.95, "compiled": 0.85}, "compiled"),
    ],
)
def test_auto_needs_a_margin_to_leave_the_simpler_kernel(
    costs: dict[str, float], chosen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidates in the order eager, native, compiled: a later one is chosen only when
    it is at least TRIAL_MARGIN faster than the choice so far."""
    _install(monkeypatch, {"compiled": 9.0, **costs})
    z, out = _batch()
    s = UnitStats.empty(6, detail="full")
    assert s.update(z, out, 1, allow_compile="compiled" in costs) == chosen


@needs_native
@pytest.mark.parametrize(("native_cost", "rounds"), [(0.6, TRIAL_REPEATS), (0.5, 2), (0.1, 2)])
def test_auto_stops_timing_once_the_choice_is_clear(
    native_cost: float, rounds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every candidate is timed TRIAL_REPEATS times unless, after two rounds, the others
    took TRIAL_CLEAR (2x) the fastest's time or more; the choice is the fastest either way."""
    assert stats_module.TRIAL_CLEAR == 2.0
    clock = _install(monkeypatch, {"eager": 1.0, "native": native_cost})
    z, out = _batch()
    s = UnitStats.empty(6, detail="range")
    assert s.update(z, out, 1, relu=True) == "native"
    assert clock.reads == 2 * rounds * 2


def test_auto_keeps_each_candidates_fastest_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preemption only adds time: a kernel's time is its fastest timed run, so one slow
    run of the faster kernel does not hand the choice to the slower one."""
    clock = _install(monkeypatch, {"eager": 1.0, "native": 0.2})
    original = clock.__call__
    native_reads = [0]

    def spiky() -> float:  # the first timed native run is preempted for 50 s
        t = original()
        if clock.current == "native":
            native_reads[0] += 1
            if native_reads[0] == 2:  # the end of its first timed run
                clock.now += 50.0
                return clock.now
        return t

    set_timer(spiky)
    if not native.available():
        pytest.skip("no C++ compiler for the native kernel")
    z, out = _batch()
    s = UnitStats.empty(6, detail="range")
    assert s.update(z, out, 1, relu=True) == "native"
    assert native_reads[0] == 2 * 2  # the spike happened (then clear after two rounds)
    assert s.kernel_trials[0].times_s["native"] == pytest.approx(0.2)


def test_a_failing_kernel_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A native kernel that raises, and a compiler that fails, are dropped however fast
    they would be; the batch is reduced by eager, with the eager statistics."""

    def broken(*args: object, **kwargs: object) -> None:
        raise MemoryError("no memory")

    def broken_compile(fn: object, **kwargs: object) -> object:
        def kernel(*args: object) -> object:
            raise RuntimeError("no C++ compiler")

        return kernel

    monkeypatch.setattr(native, "update", broken)
    monkeypatch.setattr(native, "applies", lambda *a, **k: True)
    monkeypatch.setattr(stats_module, "_FUSED", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    _install(monkeypatch, {"eager": 5.0, "native": 0.0, "compiled": 0.0})
    z, out = _batch()
    s = UnitStats.empty(6, detail="range")
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        assert s.update(z, out, 1, relu=True, allow_compile=True) == "eager"
    (trial,) = s.kernel_trials
    assert trial.candidates == ("eager", "native", "compiled")
    assert trial.kernel == "eager" and set(trial.times_s) <= {"eager"}
    want = UnitStats.empty(6, detail="range")
    want.update(z, out, 1, relu=True, kernel="eager")
    for name in UnitStats.REDUCE:
        assert torch.equal(getattr(s, name), getattr(want, name)), name


def test_kernels_that_do_not_apply_are_not_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 (the native kernel takes float32 only) has a single candidate: eager, untimed;
    the "counts" level has no compiled kernel, even where compiling is allowed."""
    clock = _install(monkeypatch, {"eager": 1.0, "native": 1.0, "compiled": 1.0})
    z, out = _batch()
    bf = UnitStats.empty(6, detail="range")
    assert bf.update(z.bfloat16(), out.bfloat16(), 1) == "eager"
    assert bf.kernel_trials[0].candidates == ("eager",) and not bf.kernel_trials[0].times_s
    assert clock.reads == 0
    counts = UnitStats.empty(6, detail="counts")
    counts.update(z, out, 1, allow_compile=True)
    expected = ("eager", "native") if native.available() else ("eager",)
    assert counts.kernel_trials[0].candidates == expected


@needs_native
@pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")
def test_compiled_competes_once_allowed_then_stays_a_candidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kind chosen without "compiled" is timed again when compiling is allowed; once
    compiled in the process it competes without being allowed."""
    _install(monkeypatch, {"eager": 3.0, "native": 2.0, "compiled": 1.0})
    z, out = _batch()
    s = UnitStats.empty(6, detail="range")
    assert s.update(z, out, 1, relu=True) == "native"
    assert s.update(z, out, 1, relu=True, allow_compile=True) == "compiled"
    assert s.kernel_trials[0].candidates == ("eager", "native", "compiled")
    stats_module.reset_kernel_choices()
    fresh = UnitStats.empty(6, detail="range")
    assert fresh.update(z, out, 1, relu=True) == "compiled"  # already compiled here


# ---------------------------------------------------------------- scans: auto == eager


def _mlp(dtype: torch.dtype) -> tuple[nn.Module, list[Tensor]]:
    """Units last: (N, L, D) through Linear + ReLU and Linear + GELU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 70), nn.ReLU(), nn.Linear(70, 33), nn.GELU())
    return model.to(dtype), [torch.randn(5, 13, 8, dtype=dtype) for _ in range(3)]


def _cnn(dtype: torch.dtype, channels_last: bool) -> tuple[nn.Module, list[Tensor]]:
    """Channels first (or last): Conv + BN + in-place ReLU, Conv + ELU."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(inplace=True),
        nn.Conv2d(12, 10, 3),
        nn.ELU(),
    ).to(dtype)
    xs = [torch.randn(4, 3, 11, 11, dtype=dtype) for _ in range(3)]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    return model, xs


LAYOUTS: dict[str, Callable[[torch.dtype], tuple[nn.Module, list[Tensor]]]] = {
    "units_last": _mlp,
    "channels_first": lambda dtype: _cnn(dtype, False),
    "channels_last": lambda dtype: _cnn(dtype, True),
}
COUNTS = ("positions", "active", "nonfinite")
EXTREMA = ("z_max", "z_min")
MOMENTS = ("abs_sum", "z_sum", "z_m2")


@pytest.mark.parametrize("detail", ["range", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("winner", ["eager", "native"])
def test_auto_scan_equals_eager_scan(
    winner: str, layout: str, dtype: torch.dtype, detail: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever kernel auto picks (forced by the injected timings), the scan's counts
    equal the eager scan's bit for bit, its extrema exactly, its sums within 1e-6
    relative (of the largest of each field)."""
    if winner == "native" and not native.available():
        pytest.skip("no C++ compiler for the native kernel")
    costs = {"eager": 1.0, "native": 2.0, "compiled": 3.0}
    costs[winner] = 0.5
    _install(monkeypatch, costs)
    model, xs = LAYOUTS[layout](dtype)
    eager = scan(model, xs, detail=detail, kernel="eager")
    auto = scan(model, xs, detail=detail)
    native_applies = dtype == torch.float32
    expected = winner if native_applies else "eager"
    assert auto.meta["kernels"]["ran"] == [expected]
    trials = auto.meta["kernels"]["trials"]
    assert trials and all(t["kernel"] == expected for t in trials)
    assert {t["layout"] for t in trials} == {layout}
    assert json.loads(json.dumps(auto.meta["kernels"])) == auto.meta["kernels"]  # JSON-ready
    assert sorted(site for t in trials for site in t["sites"]) == sorted(auto.stats)
    for site, want in eager.stats.items():
        got = auto.stats[site]
        for name in COUNTS:
            assert torch.equal(getattr(got, name), getattr(want, name)), (site, name)
        for name in EXTREMA:
            torch.testing.assert_close(
                getattr(got, name), getattr(want, name), rtol=0, atol=0, msg=name
            )
        for name in MOMENTS:
            w = getattr(want, name)
            scale = float(w.abs().max()) or 1.0
            torch.testing.assert_close(
                getattr(got, name), w, rtol=1e-6, atol=1e-6 * scale, msg=(site, name)
            )


def test_scan_kernel_argument_and_deprecated_fused() -> None:
    """An unknown kernel is refused naming the choices; fused=False still means eager,
    with a DeprecationWarning."""
    model, xs = _mlp(torch.float32)
    with pytest.raises(ValueError, match="kernel must be one of"):
        scan(model, xs, kernel="fast")  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning, match="kernel='eager'"):
        report = scan(model, xs, fused=False)
    assert report.meta["kernels"]["ran"] == ["eager"]
    with pytest.raises(ValueError, match="kernel must be one of"):
        UnitStats.empty(3).update(torch.ones(2, 3), torch.ones(2, 3), 1, kernel="x")  # type: ignore[arg-type]
