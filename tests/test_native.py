"""The native CPU kernel (deadrelu.native) against the eager torch ops, at every detail
level ("counts" keeps only positions, active and abs_sum of what it computes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from deadrelu import native
from deadrelu.stats import UnitStats

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler")


DETAILS = ["counts", "range", "full"]


def _pair(units: int, detail: str = "range") -> tuple[UnitStats, UnitStats]:
    return (
        UnitStats.empty(units, detail=detail),  # type: ignore[arg-type]
        UnitStats.empty(units, detail=detail),  # type: ignore[arg-type]
    )


def _assert_same(got: UnitStats, want: UnitStats) -> None:
    for name in ("positions", "active", "nonfinite"):  # counts: exact
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for name in ("z_max", "z_min"):  # extrema: exact, NaN where torch gives NaN
        torch.testing.assert_close(
            getattr(got, name), getattr(want, name), rtol=0, atol=0, equal_nan=True
        )
    # sums: float32 batch sums in another order (the kernel sums each row in float64); the
    # moments ("full"; zeros at "range")
    for name in ("abs_sum", "z_sum", "z_m2"):
        torch.testing.assert_close(
            getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-4, equal_nan=True
        )


def _layouts() -> list[tuple[str, Tensor, int]]:
    """Rows of 64+ positions with a tail, rows shorter than one vector, units last with
    fewer than 64 units and with blocks of 64 plus a tail, a single row, a single unit,
    a 1-d batch."""
    g = torch.Generator().manual_seed(11)
    return [
        ("rows", torch.randn(5, 7, 131, generator=g) * 2 + 0.3, 1),
        ("short rows", torch.randn(9, 17, 3, generator=g) - 0.5, 1),
        ("units last", torch.randn(600, 37, generator=g) * 3 - 1, -1),
        ("units last, blocks of 64 and a tail", torch.randn(300, 150, generator=g) - 0.2, -1),
        ("one row", torch.randn(1, 3, 200, generator=g), 1),
        ("one unit", torch.randn(6, 1, 90, generator=g), 1),
        ("one position", torch.randn(1, 5, generator=g), -1),
        ("1-d", torch.randn(23, generator=g), 0),
    ]


@pytest.mark.parametrize("detail", DETAILS)
@pytest.mark.parametrize("how", ["relu", "out", "relu_z", "z_only"])
def test_native_equals_eager_on_every_layout(how: str, detail: str) -> None:
    """Each mode of the kernel (sum of relu(z), of |out|, none) on every layout, over two
    batches: the eager statistics; update() says the native kernel reduced each batch."""
    for name, z, dim in _layouts():
        units = z.shape[dim]
        got, want = _pair(units, detail)
        out = torch.nn.functional.elu(z)
        for _ in range(2):
            for s, asked in ((got, "native"), (want, "eager")):
                if how == "relu":
                    ran = s.update(z, torch.relu(z), dim, kernel=asked, relu=True)
                elif how == "out":
                    ran = s.update(z, out, dim, kernel=asked)
                else:
                    ran = s.update_z(z, dim, kernel=asked, relu=how == "relu_z")
                assert ran == asked, name
        _assert_same(got, want)
        if how == "z_only":
            assert not got.abs_sum.any(), name


@pytest.mark.parametrize("detail", DETAILS)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "mixed", "out_nan", "all_nan"])
def test_nonfinite_values_follow_torch(bad: str, detail: str) -> None:
    """NaN makes the unit's extrema (and its relu sum) NaN, +-inf shows in the extrema,
    each is counted exactly in ``nonfinite``; other units are untouched. Rows and units
    last, a batch of NaN only, and a later finite batch keeps a NaN maximum NaN
    (torch.maximum propagates)."""
    g = torch.Generator().manual_seed(12)
    cases = [
        (torch.randn(3, 6, 70, generator=g), 1),
        (torch.randn(300, 6, generator=g), -1),
        (torch.randn(300, 70, generator=g), -1),  # units 0-63 in a block of 64 lanes
    ]
    for z, dim in cases:
        units = z.shape[dim]
        out = torch.nn.functional.gelu(z)

        def put(t: Tensor, position: int, unit: int, value: float, dim: int = dim) -> None:
            flat = t.movedim(dim, -1)  # a view: (..., U)
            index = torch.unravel_index(torch.tensor(position), flat.shape[:-1])
            flat[(*index, unit)] = value

        if bad in ("nan", "mixed"):
            put(z, 1, 2, float("nan"))
        if bad in ("inf", "mixed"):
            put(z, 2, 4, float("inf"))
            put(z, 0, 4, float("inf"))
        if bad in ("-inf", "mixed"):
            put(z, 0, 0, float("-inf"))
        if bad == "out_nan":
            put(out, 1, 3, float("nan"))
        if bad == "all_nan":
            z.fill_(float("nan"))
        finite = torch.randn(z.shape, generator=g)
        for relu in (True, False):
            got, want = _pair(units, detail)
            for s, asked in ((got, "native"), (want, "eager")):
                o = torch.relu(z) if relu else out
                assert s.update(z, o, dim, kernel=asked, relu=relu) == (asked)
                o = torch.relu(finite) if relu else torch.nn.functional.gelu(finite)
                s.update(finite, o, dim, kernel=asked, relu=relu)
            _assert_same(got, want)
            counts = {"nan": 1, "inf": 2, "-inf": 1, "mixed": 4, "out_nan": 0}
            expected_bad = counts.get(bad, z.numel()) if detail != "counts" else 0
            assert int(got.nonfinite.sum()) == expected_bad  # "counts": not kept


@pytest.mark.parametrize("detail", DETAILS)
def test_threads_do_not_change_the_counts(detail: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The split between threads (positions, or units when the per-thread partials would
    exceed 2**16: the wide cases with 2 and 3 threads) changes no count or extremum."""
    monkeypatch.setattr(native, "GRAIN", 1)  # split even the small batches
    assert native.threads(10) == torch.get_num_threads()
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(13)
    try:
        for z, dim in [
            (torch.randn(3, 5, 100, generator=g), 1),
            (torch.randn(4, 2, 100, generator=g), 1),
            (torch.randn(333, 19, generator=g), -1),
            (torch.randn(99, 200, generator=g), -1),
            (torch.randn(3, 33_000, 2, generator=g), 1),
            (torch.randn(5, 33_000 + 70, generator=g), -1),
        ]:
            results = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                s = UnitStats.empty(z.shape[dim], detail=detail)  # type: ignore[arg-type]
                assert s.update_z(z, dim, kernel="native", relu=True) == "native"
                results.append(s)
            for s in results[1:]:
                _assert_same(s, results[0])
    finally:
        torch.set_num_threads(threads)


def test_dead_units_by_construction() -> None:
    """Units whose pre-activation is shifted by -1000 are never active, and their z_max
    says how far they are from life; the others are active on about half the positions."""
    z = torch.randn(8, 6, 50)
    z[:, [1, 4]] -= 1000.0
    s = UnitStats.empty(6, detail="range")
    assert s.update_z(z, 1, kernel="native", relu=True) == "native"
    assert (s.active == 0).nonzero().flatten().tolist() == [1, 4]
    assert (s.z_max[[1, 4]] < -990).all() and (s.abs_sum[[1, 4]] == 0).all()
    assert ((s.active[[0, 2, 3, 5]] > 100) & (s.active[[0, 2, 3, 5]] < 300)).all()


def test_what_the_kernel_does_not_take() -> None:
    """bf16, float64, float32 accumulators, a non-float32 shift and a disabled kernel go to
    the torch paths; every level, "counts" included, takes it."""
    z = torch.randn(4, 3, 8)
    assert (
        UnitStats.empty(3, detail="range").update_z(z.bfloat16(), 1, kernel="native", relu=True)
        == "eager"
    )
    assert (
        UnitStats.empty(3, detail="range").update_z(z.double(), 1, kernel="native", relu=True)
        == "eager"
    )
    assert UnitStats.empty(3, detail="full").update_z(z, 1, kernel="native", relu=True) == "native"
    counts = UnitStats.empty(3, detail="counts")
    assert counts.update_z(z, 1, kernel="native", relu=True) == "native"
    assert counts.z_max.stride(0) == 0 and counts.nonfinite.stride(0) == 0  # still not kept
    previous = native.set_enabled(False)
    try:
        assert (
            UnitStats.empty(3, detail="range").update_z(z, 1, kernel="native", relu=True) == "eager"
        )
    finally:
        native.set_enabled(previous)
    assert UnitStats.empty(3, detail="range").update_z(z, 1, kernel="native", relu=True) == "native"
    st = UnitStats.empty(3, detail="range")
    good = (st.positions, st.active, st.abs_sum, st.z_max, st.z_min, st.nonfinite)
    assert native.applies(z, None, good) and native.applies(z, z, good)
    assert not native.applies(z, None, tuple(t.float() for t in good))  # float32 accumulators
    assert not native.applies(z.transpose(0, 2).contiguous().transpose(0, 2), None, good)
    assert not native.applies(z, z.double(), good)
    assert not native.applies(z.to_sparse(), None, good)
    seen = []

    def record(x: Tensor) -> Tensor:  # x: a vmap wrapper without storage
        seen.append(native.applies(x, None, good))
        return x.sum()

    torch.func.vmap(record)(z.expand(2, 4, 3, 8).contiguous())
    assert seen == [False]
    full = UnitStats.empty(3, detail="full")
    moments = (*good, full.z_sum, full.z_m2)
    shift = torch.zeros(3)
    assert native.applies(z, None, moments, shift)
    assert not native.applies(z, None, good, shift)  # no moment accumulators
    assert not native.applies(z, None, moments, shift.double())
    assert not native.applies(z, None, moments, torch.zeros(4))


def test_full_moments_of_a_far_mean() -> None:
    """Detail "full" over three batches whose per-unit mean (1e4) is far larger than the
    spread (1e-2 to 1, by unit): the mean and variance of all positions, as float64 torch
    computes them from the data at once."""
    g = torch.Generator().manual_seed(14)
    scale = torch.tensor([1e-2, 1e-1, 1.0])
    batches = [1e4 + torch.randn(40, 3, 77, generator=g) * scale[:, None] for _ in range(3)]
    s = UnitStats.empty(3, detail="full")
    for z in batches:
        assert s.update_z(z, 1, kernel="native") == "native"
    data = torch.cat(batches).double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(s.z_mean, data.mean(1), rtol=1e-9, atol=0)
    torch.testing.assert_close(s.z_var, data.var(1, correction=0), rtol=1e-3, atol=0)


def test_a_failing_compiler_leaves_the_torch_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A compiler that fails: available() is False (no exception, nothing cached) and
    update() reduces with torch ops, the same statistics."""
    monkeypatch.delitem(native._STATE, "lib")
    monkeypatch.setattr(native, "_compiler", lambda: "false")  # exits 1
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    assert not native.available()
    assert not list(tmp_path.rglob("*.so"))
    z = torch.randn(4, 3, 70)
    got, want = _pair(3)
    assert got.update_z(z, 1, kernel="native", relu=True) == "eager"
    want.update_z(z, 1, relu=True, kernel="eager")
    _assert_same(got, want)


def test_the_cache_is_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The compiled library is cached in <tempdir>/deadrelu-<uid>, created 0700; if that
    directory is writable by others, a fresh private one is used instead."""
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    cache = native._cache_dir()
    assert cache.parent == tmp_path and cache.name.startswith("deadrelu-")
    assert cache.stat().st_mode & 0o777 == 0o700
    cache.chmod(0o777)
    other = native._cache_dir()
    assert other != cache and other.stat().st_mode & 0o077 == 0


def test_small_batches_run_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer than GRAIN values per thread: fewer threads (never 0); never more than torch's."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert native.threads(0) == 1
    assert native.threads(native.GRAIN - 1) == 1
    assert native.threads(2 * native.GRAIN) == 2
    assert native.threads(100 * native.GRAIN) == 4
