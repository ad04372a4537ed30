"""UnitStats: exact per-unit reductions, precision, merge, persistence, no host sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from ddp import finish_process_group, spawn
from deadrelu import native
from deadrelu.stats import UnitStats


def _reference(zs: list[Tensor], outs: list[Tensor], unit_dim: int) -> dict[str, Tensor]:
    """float64 ground truth over the concatenation of batches, units last."""
    z = torch.cat([x.double().movedim(unit_dim, -1).reshape(-1, x.shape[unit_dim]) for x in zs])
    o = torch.cat([x.double().movedim(unit_dim, -1).reshape(-1, x.shape[unit_dim]) for x in outs])
    return {
        "positions": torch.tensor(z.shape[0]),
        "active": (z > 0).sum(0),
        "abs_sum": o.abs().sum(0),
        "z_mean": z.mean(0),
        "z_var": z.var(0, correction=0),
        "z_max": z.amax(0),
        "z_min": z.amin(0),
    }


def _feed(shape: tuple[int, ...], unit_dim: int, n: int = 3, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    zs = [torch.randn(*shape, generator=g) * 2 + 0.5 for _ in range(n)]
    outs = [torch.relu(z) for z in zs]
    s = UnitStats.empty(shape[unit_dim])
    for z, o in zip(zs, outs, strict=True):
        s.update(z, o, unit_dim)
    return s, _reference(zs, outs, unit_dim)


@pytest.mark.parametrize(
    ("shape", "unit_dim"),
    [
        ((4, 3, 5, 6), 1),
        ((2, 7, 5), -1),
        ((9, 4), 1),
        ((9, 4), -1),
        ((3, 2, 4, 2, 2), 1),
        ((2, 3, 8, 9), 1),
        ((70, 3, 2), 1),
        ((4, 32, 5), -1),
        ((8, 128, 3), -1),
    ],
)
def test_update_matches_float64_reference(shape: tuple[int, ...], unit_dim: int) -> None:
    s, ref = _feed(shape, unit_dim)
    assert int(s.positions) == int(ref["positions"])
    assert torch.equal(s.active, ref["active"])
    torch.testing.assert_close(s.abs_sum, ref["abs_sum"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.z_mean, ref["z_mean"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.z_var, ref["z_var"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.z_max, ref["z_max"])
    torch.testing.assert_close(s.z_min, ref["z_min"])
    assert torch.equal(s.nonfinite, torch.zeros_like(s.nonfinite))
    torch.testing.assert_close(s.mean_abs, ref["abs_sum"] / ref["positions"])
    torch.testing.assert_close(
        s.active_fraction, ref["active"].double() / ref["positions"].double()
    )
    z_sqsum = ref["z_var"] * ref["positions"] + ref["z_mean"] ** 2 * ref["positions"]
    torch.testing.assert_close(s.z_sqsum, z_sqsum, rtol=1e-6, atol=1e-4)


def test_variance_precise_when_mean_dwarfs_std() -> None:
    """mean 1e4, std 1e-2: a float32 sum of squares would lose every digit of the variance."""
    g = torch.Generator().manual_seed(1)
    zs = [1e4 + 1e-2 * torch.randn(256, 3, generator=g, dtype=torch.float64) for _ in range(20)]
    s = UnitStats.empty(3)
    for z in zs:
        s.update(z.float(), z.float(), 1)
    ref = torch.cat([z.float().double() for z in zs]).var(0, correction=0)
    torch.testing.assert_close(s.z_var, ref, rtol=2e-2, atol=0)
    naive = torch.cat(zs).float().pow(2).sum(0) / 5120 - torch.cat(zs).float().mean(0) ** 2
    assert not torch.allclose(naive.double(), ref, rtol=0.5)  # the failure this design avoids


def test_bf16_counted_exactly() -> None:
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(64, 16, 5, generator=g) * 3).to(torch.bfloat16)
    out = torch.relu(z)
    s = UnitStats.empty(16)
    s.update(z, out, 1)
    ref = _reference([z], [out], 1)
    assert torch.equal(s.active, ref["active"])
    torch.testing.assert_close(s.abs_sum, ref["abs_sum"], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(s.z_max, ref["z_max"])
    torch.testing.assert_close(s.z_mean, ref["z_mean"], rtol=1e-5, atol=1e-5)


def test_nonfinite_counted_not_crashing() -> None:
    z = torch.tensor([[1.0, -1.0, 2.0], [float("nan"), float("inf"), float("-inf")]])
    s = UnitStats.empty(3)
    s.update(z, torch.relu(z), 1)
    assert s.nonfinite.tolist() == [1, 1, 1]
    assert s.active.tolist() == [1, 1, 1]  # NaN is not > 0; +inf is; 2.0 is
    assert int(s.positions) == 2
    assert torch.isnan(s.z_sum[0])


def test_large_batch_count_path_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above 2**24 positions per unit the counts switch to integer sums: same results."""
    import deadrelu.stats as stats_module

    z = torch.tensor([[1.0, -1.0], [float("nan"), 2.0], [float("inf"), 0.0]])
    fast = UnitStats.empty(2)
    fast.update(z, torch.relu(z), 1)
    monkeypatch.setattr(stats_module, "_FLOAT_COUNT_EXACT", 2)
    slow = UnitStats.empty(2)
    slow.update(z, torch.relu(z), 1)
    assert slow.active.tolist() == fast.active.tolist() == [2, 1]
    assert slow.nonfinite.tolist() == fast.nonfinite.tolist() == [2, 0]


def test_zero_size_batch_is_ignored() -> None:
    s = UnitStats.empty(4)
    s.update(torch.empty(0, 4), torch.empty(0, 4), 1)
    s.update(torch.empty(0, 4, 3, 3), torch.empty(0, 4, 3, 3), 1)
    assert int(s.positions) == 0
    assert torch.equal(s.z_max, torch.full((4,), float("-inf"), dtype=torch.float64))


def test_wrong_units_and_shapes_raise() -> None:
    s = UnitStats.empty(4)
    with pytest.raises(ValueError, match="units"):
        s.update(torch.randn(2, 5), torch.randn(2, 5), 1)
    with pytest.raises(ValueError, match="same shape"):
        s.update(torch.randn(2, 4), torch.randn(2, 4, 1), 1)
    with pytest.raises(ValueError, match="at least one unit"):
        UnitStats.empty(0)


def test_scalar_and_vector_inputs() -> None:
    s = UnitStats.empty(1)
    s.update(torch.tensor(2.0), torch.tensor(2.0), 0)
    assert int(s.positions) == 1 and s.active.tolist() == [1]
    v = UnitStats.empty(3)
    v.update(torch.tensor([1.0, -1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), 0)
    assert int(v.positions) == 1 and v.active.tolist() == [1, 0, 0]


def test_merge_equals_single_stream() -> None:
    g = torch.Generator().manual_seed(3)
    zs = [torch.randn(8, 5, generator=g) * (i + 1) + i for i in range(6)]
    whole = UnitStats.empty(5)
    a, b = UnitStats.empty(5), UnitStats.empty(5)
    for i, z in enumerate(zs):
        whole.update(z, z.abs(), 1)
        (a if i % 3 == 0 else b).update(z, z.abs(), 1)
    merged = a.clone().merge(b)
    for name in UnitStats.REDUCE:
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), msg=name)
    empty_merge = UnitStats.empty(5).merge(whole)
    torch.testing.assert_close(empty_merge.z_var, whole.z_var)
    with pytest.raises(ValueError, match="merge"):
        a.merge(UnitStats.empty(4))


def test_reset_state_dict_roundtrip() -> None:
    s, _ = _feed((4, 6), 1)
    sd = s.state_dict()
    fresh = UnitStats.empty(6)
    fresh.load_state_dict(sd)
    for name in UnitStats.REDUCE:
        assert torch.equal(getattr(fresh, name), getattr(s, name)), name
    again = UnitStats.from_state_dict(sd)
    assert torch.equal(again.active, s.active)
    s.reset()
    assert int(s.positions) == 0 and int(s.active.sum()) == 0
    assert torch.isinf(s.z_min).all() and (s.z_min > 0).all()
    with pytest.raises(ValueError, match="shape"):
        UnitStats.empty(5).load_state_dict(sd)
    with pytest.raises(KeyError, match="state_dict"):
        fresh.load_state_dict({"active": sd["active"]})


def test_memory_constant_over_batches() -> None:
    def nbytes(s: UnitStats) -> int:
        return sum(t.numel() * t.element_size() for t in s.state_dict().values())

    s = UnitStats.empty(3)
    z = torch.randn(2, 3)
    for _ in range(10):
        s.update(z, z, 1)
    after_10 = nbytes(s)
    for _ in range(990):
        s.update(z, z, 1)
    assert nbytes(s) == after_10
    assert int(s.positions) == 2000


def test_detail_false_updates_only_counts() -> None:
    s = UnitStats.empty(3, detail=False)
    z = torch.tensor([[1.0, -2.0, 3.0]])
    s.update(z, torch.relu(z), 1)
    assert s.active.tolist() == [1, 0, 1]
    assert s.abs_sum.tolist() == [1.0, 0.0, 3.0]
    assert torch.equal(s.z_sum, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="detail"):
        s.merge(UnitStats.empty(3))


def test_update_makes_no_host_sync() -> None:
    """On the meta device any .item(), .cpu() or branch on a value raises."""
    s = UnitStats.empty(4, "meta")
    z = torch.empty(8, 4, 3, 3, device="meta", dtype=torch.bfloat16)
    s.update(z, z, 1)
    s.merge(UnitStats.empty(4, "meta"))
    assert s.device.type == "meta"


def test_all_reduce_is_noop_without_process_group() -> None:
    s, _ = _feed((4, 6), 1)
    before = s.clone()
    assert s.all_reduce() is s
    assert torch.equal(s.active, before.active)


def _rank_batches(rank: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(10 + rank)
    return [torch.randn(6 + rank, 3, 2, generator=g) * (rank + 1) + 3 * rank for _ in range(2)]


def _all_reduce_worker(rank: int, world: int, init: str, out_path: str) -> None:
    import torch.distributed as dist

    from deadrelu.stats import all_reduce_many

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        s = UnitStats.empty(3)
        for z in _rank_batches(rank):
            s.update(z, torch.relu(z), 1)
        s.all_reduce()
        torch.save(s.state_dict(), f"{out_path}.{rank}")
        many = _levels_stats()
        for z in _rank_batches(rank):
            for st in many:
                st.update(z, torch.relu(z), 1)
        all_reduce_many(many)  # several sites and levels, packed
        torch.save([st.state_dict() for st in many], f"{out_path}.many.{rank}")
    finally:
        finish_process_group()


def _levels_stats() -> list[UnitStats]:
    return [UnitStats.empty(3, detail=lvl) for lvl in ("full", "counts", "range", "full")]


def test_all_reduce_two_processes_equals_merge(tmp_path: Path) -> None:
    world = 2
    init = f"file://{tmp_path / 'pg'}"
    out = str(tmp_path / "stats")
    spawn(_all_reduce_worker, (world, init, out), world)
    expected = UnitStats.empty(3)
    for rank in range(world):
        for z in _rank_batches(rank):
            expected.update(z, torch.relu(z), 1)
    for rank in range(world):
        got = UnitStats.from_state_dict(torch.load(f"{out}.{rank}"))
        for name in UnitStats.REDUCE:
            torch.testing.assert_close(getattr(got, name), getattr(expected, name), msg=name)
    # all_reduce_many over sites of every level == merging the streams, per site
    merged = _levels_stats()
    for rank in range(world):
        for z in _rank_batches(rank):
            for st in merged:
                st.update(z, torch.relu(z), 1)
    for rank in range(world):
        states = torch.load(f"{out}.many.{rank}")
        for st, want in zip(states, merged, strict=True):
            _assert_stats_close(UnitStats.from_state_dict(st), want)


def _fused_cases() -> list[tuple[Tensor, int]]:
    """Every layout the kernels handle: B > 64, 1 < B < 64, units last (B == 1), bf16,
    NaN / +inf / -inf."""
    g = torch.Generator().manual_seed(4)
    cases = [
        (torch.randn(4, 3, 9, 9, generator=g) * 2 + 1, 1),
        (torch.randn(4, 3, 5, 6, generator=g) * 2 + 1, 1),
        (torch.randn(3, 7, 5, generator=g), -1),
        ((torch.randn(16, 6, generator=g) * 3).to(torch.bfloat16), 1),
    ]
    nan_case = torch.randn(5, 4, generator=g)
    nan_case[1, 2], nan_case[3, 0], nan_case[0, 1] = float("nan"), float("inf"), float("-inf")
    cases.append((nan_case, 1))
    return cases


def _assert_stats_close(got: UnitStats, want: UnitStats) -> None:
    for name in UnitStats.REDUCE:
        # both sum each batch in float32, in different orders
        torch.testing.assert_close(
            getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, equal_nan=True, msg=name
        )


def _feed_by(s: UnitStats, how: str, z: Tensor, dim: int, *, kernel: str) -> str | None:
    """One batch into ``s`` by one of the hot paths; the kernel that reduced it."""
    k: Any = kernel
    if how == "relu":
        return s.update(z, torch.relu(z), dim, kernel=k, relu=True)
    if how == "out":
        return s.update(z, torch.nn.functional.leaky_relu(z, 0.2), dim, kernel=k)
    return s.update_z(z, dim, kernel=k, relu=how == "relu_z")


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")
@pytest.mark.parametrize("detail", ["counts", "range", "full"])
@pytest.mark.parametrize("kernel", ["native", "compiled"])
def test_fused_kernel_equals_eager(detail: str, kernel: str) -> None:
    """Every one-pass path (ReLU from z, |out| of another activation, the in-place split
    with and without ReLU) gives the eager statistics, at every detail level: the native
    kernel where it applies (float32, every level), the compiled one at "range"/"full",
    eager where the asked kernel does not apply (and update() says so)."""
    if kernel == "native" and not native.available():
        pytest.skip("no C++ compiler for the native kernel")
    for z, dim in _fused_cases():
        units = z.shape[dim]
        if detail == "counts" and kernel == "compiled":
            expected = "eager"  # no compiled kernel at "counts"
        elif kernel == "native" and z.dtype != torch.float32:
            expected = "eager"
        else:
            expected = kernel
        for how in ("relu", "out", "relu_z", "z_only"):
            eager = UnitStats.empty(units, detail=detail)  # type: ignore[arg-type]
            fused = UnitStats.empty(units, detail=detail)  # type: ignore[arg-type]
            for _ in range(2):
                assert _feed_by(eager, how, z, dim, kernel="eager") == "eager"
                assert _feed_by(fused, how, z, dim, kernel=kernel) == expected
            _assert_stats_close(fused, eager)
            if how == "z_only":  # no output given: abs_sum is left alone
                assert not fused.abs_sum.any() and not eager.abs_sum.any()
            if how == "relu_z":  # update_z(relu=True) is update(z, relu(z))
                ref = UnitStats.empty(units, detail=detail)  # type: ignore[arg-type]
                for _ in range(2):
                    ref.update(z, torch.relu(z), dim)
                _assert_stats_close(fused, ref)


def test_detail_levels_update_only_their_fields() -> None:
    """counts < range < full: each level updates its fields exactly as the full level does
    and leaves the others at their initial values; non-finite values are counted from the
    extrema probe at "range" (NaN, +inf and -inf alone)."""
    batches = [torch.randn(6, 4) * 2 - 1 for _ in range(2)]
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = torch.randn(3, 4)
        bad[1, 2] = value
        batches.append(bad)
    stats = {lvl: UnitStats.empty(4, detail=lvl) for lvl in ("counts", "range", "full")}
    for z in batches:
        for s in stats.values():
            s.update(z, torch.relu(z), 1)
    full, rng, counts = stats["full"], stats["range"], stats["counts"]
    assert full.nonfinite.tolist() == [0, 0, 3, 0]
    for name in ("positions", "active", "abs_sum"):
        for s in (rng, counts):
            torch.testing.assert_close(getattr(s, name), getattr(full, name), equal_nan=True)
    for name in ("z_max", "z_min", "nonfinite"):
        torch.testing.assert_close(getattr(rng, name), getattr(full, name), equal_nan=True)
    assert rng.has_range and not rng.has_moments and full.has_moments and not counts.has_range
    assert not rng.z_sum.any() and not rng.z_m2.any()
    assert not counts.nonfinite.any() and torch.isinf(counts.z_max).all()


def test_detail_level_names_state_and_merge() -> None:
    assert UnitStats.empty(2, detail=True).detail == "full"
    assert UnitStats.empty(2, detail=False).detail == "counts"
    with pytest.raises(ValueError, match="detail must be one of"):
        UnitStats.empty(2, detail="moments")  # type: ignore[arg-type]
    for level in ("counts", "range", "full"):
        s = UnitStats.empty(3, detail=level)  # type: ignore[arg-type]
        z = torch.randn(5, 3)
        s.update(z, torch.relu(z), 1)
        back = UnitStats.from_state_dict(s.state_dict())
        assert back.detail == level
        _assert_stats_close(back, s)
    legacy = UnitStats.empty(3, detail="full").state_dict()
    legacy["detail"] = torch.tensor(False)  # written before "range" existed
    assert UnitStats.from_state_dict(legacy).detail == "counts"
    with pytest.raises(ValueError, match="detail='range' into detail='full'"):
        UnitStats.empty(3).merge(UnitStats.empty(3, detail="range"))


@pytest.mark.parametrize(
    ("shape", "unit_dim"),
    [((6, 5, 4, 7), 1), ((3, 4, 8, 9), 1), ((3, 8, 5), -1), ((40, 3), 1), ((8, 128, 3), -1)],
)
def test_out_nonnegative_equals_abs_path_with_nonfinite(
    shape: tuple[int, ...], unit_dim: int
) -> None:
    """Skipping the abs pass for ReLU outputs gives the same statistics, NaN/inf included."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(*shape, generator=g) * 3
    flat = z.view(-1)
    flat[::17] = float("nan")
    flat[5::23] = float("inf")
    flat[7::29] = float("-inf")
    out = torch.relu(z)
    fast, ref = UnitStats.empty(shape[unit_dim]), UnitStats.empty(shape[unit_dim])
    fast.update(z, out, unit_dim, out_nonnegative=True)
    ref.update(z, out, unit_dim)
    for name in UnitStats.REDUCE:
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), equal_nan=True)
    truth = _reference([z], [out], unit_dim)
    assert torch.equal(fast.active, truth["active"])
    nonfinite = (~torch.isfinite(z)).movedim(unit_dim, -1).reshape(-1, shape[unit_dim]).sum(0)
    assert torch.equal(fast.nonfinite, nonfinite)
    torch.testing.assert_close(fast.abs_sum, truth["abs_sum"], equal_nan=True)
    torch.testing.assert_close(fast.z_max, truth["z_max"], equal_nan=True)
    torch.testing.assert_close(fast.z_min, truth["z_min"], equal_nan=True)


@pytest.mark.parametrize("detail", [True, False])
def test_update_z_then_add_output_equals_update(detail: bool) -> None:
    """The in-place split (z before the call, output after) gives update's statistics."""
    g = torch.Generator().manual_seed(6)
    ref, split = UnitStats.empty(5, detail=detail), UnitStats.empty(5, detail=detail)
    for shape in [(3, 5, 9, 8), (4, 5, 2, 3)]:
        z = torch.randn(*shape, generator=g) * 2 - 0.5
        z.view(-1)[::13] = float("nan")
        z.view(-1)[3::31] = float("-inf")
        out = torch.nn.functional.leaky_relu(z, 0.1)
        ref.update(z, out, 1)
        split.update_z(z, 1)
        split.add_output(out, 1)
    for name in UnitStats.REDUCE:
        torch.testing.assert_close(getattr(split, name), getattr(ref, name), equal_nan=True)


@pytest.mark.parametrize("kernel", ["eager", "native", "compiled", "auto"])
def test_channels_last_maps_equal_contiguous(kernel: Any) -> None:
    """A channels_last (N, C, H, W) map is reduced as a units-last view, not copied: the
    same statistics as the contiguous map, also when z and out differ in layout and for
    the in-place split."""
    if kernel == "compiled" and not hasattr(torch, "compile"):
        pytest.skip("needs torch.compile")
    g = torch.Generator().manual_seed(8)
    z = torch.randn(3, 5, 6, 7, generator=g) * 2 - 0.3
    z.view(-1)[::11] = float("nan")
    cl = z.contiguous(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    for detail in ("counts", "range", "full"):
        ref = UnitStats.empty(5, detail=detail)  # type: ignore[arg-type]
        ref.update(z, torch.nn.functional.elu(z), 1)
        for zz, oo in [
            (cl, torch.nn.functional.elu(cl)),
            (cl, torch.nn.functional.elu(z)),
            (z, torch.nn.functional.elu(cl)),
        ]:
            got = UnitStats.empty(5, detail=detail)  # type: ignore[arg-type]
            got.update(zz, oo, 1, kernel=kernel)
            _assert_stats_close(got, ref)
        split = UnitStats.empty(5, detail=detail)  # type: ignore[arg-type]
        split.update_z(cl, 1, kernel=kernel)
        split.add_output(torch.nn.functional.elu(cl), 1)
        _assert_stats_close(split, ref)


def test_untracked_fields_take_no_memory_and_stay_initial() -> None:
    """A level's untracked fields are one-element views (shape (U,) all the same) that keep
    their initial values through update, merge, reset, clone and state dicts; loading a
    state of another level gives the fields that level tracks real memory."""
    units = 1000
    sizes = {lvl: UnitStats.empty(units, detail=lvl).nbytes for lvl in ("counts", "range", "full")}
    assert sizes["counts"] == 8 + units * 16 + 5 * 8  # positions, active, abs_sum; 5 views
    assert sizes["range"] == 8 + units * 40 + 2 * 8
    assert sizes["full"] == 8 + units * 56
    z = torch.randn(4, units) - 0.5
    counts = UnitStats.empty(units, detail="counts")
    counts.update(z, torch.relu(z), 1)
    counts.merge(counts.clone())
    for s in (counts, counts.clone(), UnitStats.from_state_dict(counts.state_dict())):
        assert s.nbytes == sizes["counts"] and s.z_max.shape == (units,)
        assert torch.isinf(s.z_max).all() and not s.z_sum.any() and not s.nonfinite.any()
        assert int(s.positions) == 8
    full = UnitStats.empty(units)
    full.update(z, torch.relu(z), 1)
    counts.load_state_dict(full.state_dict())  # counts -> full: fields get memory
    assert counts.detail == "full" and counts.nbytes == sizes["full"]
    _assert_stats_close(counts, full)
    counts.update(z, torch.relu(z), 1)
    counts.reset()
    assert torch.isinf(counts.z_min).all() and counts.nbytes == sizes["full"]
    full.load_state_dict(UnitStats.empty(units, detail="range").state_dict())  # full -> range
    assert full.detail == "range" and full.nbytes == sizes["range"]


def test_to_same_device_is_a_copy() -> None:
    """``to`` promises a copy: merging into it must not change the original (a shared
    tensor made every Monitor.report() on CPU add the previous pane into the live one)."""
    s = UnitStats.empty(3, "cpu", detail="range")
    s.update(torch.tensor([[1.0, -1.0, 2.0]]), torch.tensor([[1.0, 0.0, 2.0]]), 1)
    t = s.to("cpu")
    t.merge(s)
    assert int(s.positions) == 1 and s.active.tolist() == [1, 0, 1]
    assert int(t.positions) == 2 and t.active.tolist() == [2, 0, 2]
