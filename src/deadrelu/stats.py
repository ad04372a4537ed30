"""Per-unit statistics of one activation call site, accumulated as tensors.

A *unit* is one channel of a conv-like layer or one feature of a linear layer: the
activation's output ``(N, U, *)`` or ``(N, *, U)`` is reduced over every dim but the unit
dim, and the reductions are added into ``(U,)`` accumulators that live on the activation's
device. Memory is O(U) whatever the number of batches; :meth:`UnitStats.update` makes no
host synchronisation (no ``.item()``, no ``.cpu()``, no Python branch on tensor values), so
it can run inside a training step. (One exception, on CPU only, where reading a value
synchronises nothing: the non-finite count is skipped when the batch's extrema are finite.)

Fields (all tensors; ``U`` units):

================  ===========  =========  ==========================================
field             shape        dtype      reduces (merge / ``all_reduce``) by
================  ===========  =========  ==========================================
``positions``     ``()``       int64      ``sum``: positions seen per unit
                                          (batch x every other dim)
``active``        ``(U,)``     int64      ``sum``: positions with z > 0
``abs_sum``       ``(U,)``     acc        ``sum``: sum of |output|
``z_sum``         ``(U,)``     acc        ``sum``: sum of the pre-activation z
``z_m2``          ``(U,)``     acc        ``m2``: sum of squared deviations of z from its
                                          mean (Chan et al. parallel merge)
``z_max``         ``(U,)``     acc        ``max``: largest z seen (-inf before any)
``z_min``         ``(U,)``     acc        ``min``: smallest z seen (+inf before any)
``nonfinite``     ``(U,)``     int64      ``sum``: positions where z is NaN or +-inf
================  ===========  =========  ==========================================

``acc`` is float64 (float32 on Apple ``mps``, which has no float64). Each batch is first
reduced in float32 (float64 for float64 activations; bf16/fp16 activations are upcast, so
they are counted exactly), which is exact enough within one batch because torch reduces
pairwise; the ``(U,)`` batch results are then added into the float64 accumulators, which
keeps full precision over millions of batches at a cost of O(U) per batch. Counts of one
batch are float sums of 0/1 values, exact below 2**24 positions per unit and batch (int32
or int64 sums of bools above that, decided from the shape).

The variance is not kept as a sum of squares (``z_sqsum - z_sum**2 / n`` cancels
catastrophically when |mean| >> std): each batch's sums are taken about a per-unit shift
K, the batch's first position (|mean - K| is of the order of the spread, so
``s2 - s1**2 / n`` keeps its digits), and the batch's (n, mean, M2) is merged into the
running one with Chan's formula. ``z_sqsum`` is still available as a derived property.

**Detail levels** (:data:`DETAIL_LEVELS`, ``UnitStats.empty(units, detail=...)``): which
fields a batch updates; the others keep their initial values.

* ``"counts"`` (or ``False``): ``positions``, ``active``, ``abs_sum``: all that dead,
  dormant and rarely active need.
* ``"range"``: also ``z_max``, ``z_min``, ``nonfinite``: saturated, non-finite, and how far
  from life a dead unit is (:func:`deadrelu.explain.explain`). :func:`deadrelu.scan.scan`'s
  default.
* ``"full"`` (or ``True``): also ``z_sum``, ``z_m2``: the mean and variance of the
  pre-activation.

**Kernels** (``update(..., kernel=...)``, :data:`KERNEL_CHOICES`; the same statistics up
to float summation order, counts and extrema exactly):

* ``"eager"``, the reference: each batch is viewed as ``(A, U, B)`` (A the dims before the
  unit dim, B those after it) and every reduction runs over B first, into small ``(A, U)``
  partials, then over A: contiguous passes that torch vectorises. About 3 passes over the
  activation for "counts" (one of them writing), 5 for "range", 8 for "full" (two
  writing), one fewer each when ``out`` is known to be non-negative (ReLU:
  ``update(..., out_nonnegative=True)``), in one scratch tensor of the activation's size
  (:func:`scratch`: on CPU one buffer per thread, kept between calls and freed by
  :func:`release_scratch`). Measured per layout (``benchmarks/eager_passes.py``): the
  active count as ``gt`` into a float buffer plus a sum beats a sum of bools (1.25-1.7x)
  and ``count_nonzero`` (2-3x); ``amax`` plus ``amin`` beat ``aminmax`` (6-11x, torch
  2.13 CPU); the non-finite pass is skipped on CPU when the extrema are finite.
* ``"native"`` (every level, float32 on CPU): :mod:`deadrelu.native`'s C++ kernel reads
  ``z`` once (and ``out``, unless ``relu=True``: it sums ``relu(z)`` from ``z``) and
  merges the batch, in one ctypes call (at "counts" its extrema go to throwaway tensors).
* ``"compiled"`` ("range" and "full"): one ``torch.compile``-d kernel reads ``z`` once
  (and ``out`` unless ``relu``) and, for "range", also merges the batch into the
  accumulators; for "full" a second compiled kernel does the ``(U,)`` merge. Compiling
  takes about 2.5 s once per process (10 s the first time on a machine:
  :func:`fused_available`; falls back to eager with one warning where compiling fails).
* ``"auto"`` (the default): the fastest of those that apply, measured where it runs
  (:func:`choose_kernel`): on the first batch of each kind (units, position class, dtype,
  device, layout, level, mode) every candidate is timed into throwaway accumulators and
  the fastest is kept for the process (:func:`kernel_trials`; the timer is
  :func:`set_timer`'s). "compiled" is a candidate only where it already ran in this
  process or the caller allows compiling (``allow_compile``; :func:`deadrelu.scan.scan`
  does for scans projected to take long). Which kernel wins depends on the machine: in
  situ on a 2-core AMD EPYC (Zen 4), one thread, the native kernel took 0.2-0.25x the
  eager time (``benchmarks/native_profile.py``).

Non-finite pre-activations are counted in ``nonfinite`` and otherwise propagate: they make
``z_sum``/``z_m2``/extrema (and ``abs_sum`` for the output) NaN or inf for that unit, which
the report flags instead of hiding. ``z > 0`` is False for NaN, so NaN counts as inactive.
(A finite z with |z - K| > 1.8e19 in a float32 batch overflows when squared: ``z_m2``
becomes inf for that unit, but the position is not counted as non-finite.)

``REDUCE`` declares how every field combines (like torchmetrics' ``dist_reduce_fx``);
:meth:`merge`, :meth:`all_reduce`, :meth:`state_dict` are generic over it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

from deadrelu import native

log = logging.getLogger(__name__)

__all__ = [
    "DETAIL_LEVELS",
    "KERNEL_CHOICES",
    "Detail",
    "Kernel",
    "KernelChoice",
    "KernelTrial",
    "Level",
    "UnitStats",
    "accumulator_dtype",
    "all_reduce_many",
    "choose_kernel",
    "default_group",
    "detail_level",
    "fused_available",
    "kernel_trials",
    "release_scratch",
    "reset_kernel_choices",
    "scratch",
    "set_timer",
]

#: What a :class:`UnitStats` updates, cheapest first: "counts" (positions, active,
#: abs_sum: dead, dormant, rarely active), "range" (+ z_max, z_min, nonfinite: saturated,
#: non-finite, how far from life a dead unit is), "full" (+ z_sum, z_m2: mean and variance
#: of the pre-activation).
DETAIL_LEVELS: tuple[str, ...] = ("counts", "range", "full")

Level = Literal["counts", "range", "full"]
Detail = Level | bool
#: What reduced a batch (:meth:`UnitStats.update`'s return value): the native CPU kernel,
#: a ``torch.compile``-d one, or eager torch ops.
Kernel = Literal["native", "compiled", "eager"]


def detail_level(detail: Detail | str) -> Level:
    """The level of :data:`DETAIL_LEVELS` that ``detail`` names (True: "full", False:
    "counts")."""
    if detail is True:
        return "full"
    if detail is False:
        return "counts"
    if detail not in DETAIL_LEVELS:
        raise ValueError(f"detail must be one of {DETAIL_LEVELS} (or True/False), got {detail!r}")
    return detail  # type: ignore[return-value]


def accumulator_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype of the float accumulators on ``device``: float64, or float32 on ``mps``."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


#: Below this many positions per unit and batch, float32 sums of 0/1 values are exact.
_FLOAT_COUNT_EXACT = 2**24
_INT32_MAX = 2**31 - 1


def _count_dtype(n: int) -> torch.dtype:
    """int32 sums of bools are 4x faster than int64 on CPU; exact below 2**31."""
    return torch.int32 if n <= _INT32_MAX else torch.int64


_LOCAL = threading.local()


def scratch(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, slot: str = "stats"
) -> Tensor:
    """An uninitialised tensor of ``shape`` for temporary use, reused between calls on CPU.

    On CPU a fresh multi-megabyte tensor costs page faults worth about one pass over it,
    so each thread keeps one flat buffer per ``(slot, dtype)``, as large as the largest
    request so far, and returns a view of it: the caller must be done with the view before
    the next request of the same slot. Other devices get ``torch.empty`` (their caching
    allocators already reuse memory). :func:`release_scratch` frees the buffers.
    """
    if device.type != "cpu":
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    numel = math.prod(shape)
    buffers: dict[tuple[str, torch.dtype], Tensor] = _LOCAL.__dict__.setdefault("buffers", {})
    buf = buffers.get((slot, dtype))
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype)
        buffers[(slot, dtype)] = buf
    return buf[:numel].view(tuple(shape))


def release_scratch() -> None:
    """Free this thread's CPU scratch buffers (:func:`scan` calls it when it is done)."""
    _LOCAL.__dict__.get("buffers", {}).clear()


def _units_last(x: Tensor, d: int) -> bool:
    """Whether ``x`` is laid out with unit dim ``d`` last in memory but is not contiguous
    as it stands (``channels_last`` conv maps ``(N, C, H, W)``)."""
    return not x.is_contiguous() and d != x.dim() - 1 and x.movedim(d, -1).is_contiguous()


def _as_aub(x: Tensor, d: int, units_last: bool = False) -> Tensor:
    """``x`` as ``(A, U, B)``: A the positions before unit dim ``d``, U the units, B those
    after, a view when ``x`` is contiguous; with ``units_last`` (see :func:`_units_last`)
    ``(positions, U, 1)`` instead, a view for a ``channels_last`` map, not a copy. Only the
    order of positions differs, which no per-unit statistic sees; ``z`` and ``out`` of one
    call must be viewed alike."""
    units = x.shape[d]
    if units_last:
        return x.movedim(d, -1).reshape(-1, units, 1)
    lead = math.prod(x.shape[:d])
    return x.reshape(lead, units, x.numel() // (units * lead))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for one batch's reductions: float64 stays, everything else goes to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


#: Below this many positions after the unit dim, reductions run over dims (0, 2) at once.
_INNER_MIN = 64


def _reduce(x3: Tensor, op: str) -> Tensor:
    """Reduce an ``(A, U, B)`` tensor over dims 0 and 2 to ``(U,)`` by ``sum``, ``amax`` or
    ``amin``.

    With B >= 64 the inner dim is reduced first into ``(A, U)`` partials, a contiguous,
    vectorised pass (on CPU about twice as fast as reducing dims (0, 2) at once), and the
    small partials are then reduced over A. With B == 1 (units last, ``(N, L, D)``) and A
    a multiple of 64 and at least 1024, A is split into ``(A / 64, 64)`` and reduced in two
    steps likewise (the ``(A / 64, U)`` partials stay in cache: about 1.3x faster; no gain
    for smaller A). Otherwise both dims are reduced at once.
    """
    a_len, units, b_len = x3.shape
    if b_len >= _INNER_MIN:
        return getattr(getattr(x3, op)(2), op)(0)
    if b_len == 1 and a_len % _INNER_MIN == 0 and a_len >= 16 * _INNER_MIN:
        x = x3.reshape(a_len // _INNER_MIN, _INNER_MIN, units)
        return getattr(getattr(x, op)(1), op)(0)
    return getattr(x3, op)((0, 2))


def _square_sum(buf: Tensor) -> Tensor:
    """``(U,)`` sum of squares of an ``(A, U, B)`` tensor; may overwrite ``buf``.

    With B >= 64 from per-row L2 norms over B (a read-only pass; ``vector_norm`` is fast
    over the inner dim only), squared and summed over A; else squared in place
    (``mul_``: ``square_`` is a slower ``pow``) and summed.
    """
    if buf.shape[2] >= _INNER_MIN:
        return torch.linalg.vector_norm(buf, 2, dim=2).square().sum(0)
    return _reduce(buf.mul_(buf), "sum")


def _eager_reductions(
    z3: Tensor,
    out3: Tensor | None,
    shift: Tensor | None,
    work: torch.dtype,
    level: Level,
    out_nonnegative: bool = False,
    relu: bool = False,
) -> tuple[Tensor, ...]:
    """One batch's ``(U,)`` reductions of ``(A, U, B)`` views, op by op in one scratch tensor.

    Returns (active, abs_sum), with ``level`` "range" also (max, min), with "full"
    (s1, s2, max, min), where s1, s2 are the sums of ``z - shift`` and its square (``shift``
    is needed for "full" only). Counts come as float sums of 0/1 values below 2**24
    positions per unit, as int32/int64 sums of bools above. With ``out_nonnegative`` (the
    caller guarantees ``out >= 0`` or NaN, as for ReLU) |out| is ``out`` itself and its
    pass is skipped. ``out3=None`` gives an ``abs_sum`` of zeros (see
    :meth:`UnitStats.update_z`), or with ``relu`` the sum of ``relu(z)``. Passes over the
    batch: 3 for "counts" (one writing), 5 for "range", 8 for "full" (two writing).
    """
    dims = (0, 2)
    units = z3.shape[1]
    n_b = z3.numel() // units
    buf = scratch(z3.shape, work, z3.device)
    if n_b < _FLOAT_COUNT_EXACT:
        # z > 0 written as 0.0/1.0 (NaN > 0 is False), summed exactly in float
        active = _reduce(torch.gt(z3, 0, out=buf), "sum")
    else:
        active = torch.gt(z3, 0).sum(dims, dtype=_count_dtype(n_b))
    if out3 is None and relu:
        out3 = torch.clamp_min(z3, 0, out=buf) if z3.dtype == work else z3.clamp_min(0)
        out_nonnegative = True
    if out3 is None:
        abs_sum = torch.zeros(units, dtype=work, device=z3.device)
    else:
        abs_sum = _abs_sum(out3, work, out_nonnegative, buf)
    if level == "counts":
        return active, abs_sum
    extrema = _reduce(z3, "amax").to(work), _reduce(z3, "amin").to(work)
    if level == "range":
        return active, abs_sum, *extrema
    assert shift is not None
    torch.sub(z3, shift[None, :, None], out=buf)
    s1 = _reduce(buf, "sum")
    s2 = _square_sum(buf)
    return active, abs_sum, s1, s2, *extrema


def _abs_sum(out3: Tensor, work: torch.dtype, out_nonnegative: bool, buf: Tensor) -> Tensor:
    """``(U,)`` sum of ``|out|`` over an ``(A, U, B)`` view, in ``work`` dtype; ``buf`` is
    scratch of that shape and dtype for the ``abs`` (skipped with ``out_nonnegative``)."""
    if out3.dtype == work:
        return _reduce(out3 if out_nonnegative else torch.abs(out3, out=buf), "sum")
    # bf16 / fp16: abs is exact in the input dtype, the sum runs in float32
    return out3.abs().sum((0, 2), dtype=work)


def _nonfinite(z3: Tensor, probe: Tensor) -> Tensor | None:
    """``(U,)`` count of NaN/inf positions of an ``(A, U, B)`` batch, or None when there
    are none; ``probe`` is ``max_b - min_b`` of the batch's per-unit extrema, or its sum.

    On CPU reading a value costs no device synchronisation: a finite sum of the probe means
    no NaN (which both extrema propagate), +inf (in ``max_b``) or -inf (in ``min_b``) in the
    batch, so the counting pass is skipped. (A sum that overflows only sends a finite batch
    down the exact counting path.) Elsewhere the positions are counted.
    """
    if (
        z3.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and math.isfinite(float(probe if probe.dim() == 0 else probe.sum()))
    ):
        return None
    n_b = z3.numel() // z3.shape[1]
    return n_b - torch.isfinite(z3).sum((0, 2), dtype=_count_dtype(n_b))


def _merge_counts(
    n_b: int,
    active_b: Tensor,
    abs_b: Tensor,
    positions: Tensor,
    active: Tensor,
    abs_sum: Tensor,
) -> None:
    """Add one batch's counts and ``abs_sum`` (``(U,)`` each, ``n_b`` positions per unit)
    into the accumulators, in place."""
    positions.add_(n_b)
    active.add_(active_b.to(torch.int64))
    abs_sum.add_(abs_b.to(abs_sum.dtype))


def _merge_range(
    n_b: int,
    active_b: Tensor,
    abs_b: Tensor,
    max_b: Tensor,
    min_b: Tensor,
    positions: Tensor,
    active: Tensor,
    abs_sum: Tensor,
    z_max: Tensor,
    z_min: Tensor,
) -> None:
    """:func:`_merge_counts`, and the batch's extrema into ``z_max``, ``z_min`` (eager, or
    inside :func:`_update_range`)."""
    acc = abs_sum.dtype
    _merge_counts(n_b, active_b, abs_b, positions, active, abs_sum)
    torch.maximum(z_max, max_b.to(acc), out=z_max)
    torch.minimum(z_min, min_b.to(acc), out=z_min)


def _merge_full(
    n_b: int,
    shift: Tensor,
    active_b: Tensor,
    abs_b: Tensor,
    s1: Tensor,
    s2: Tensor,
    max_b: Tensor,
    min_b: Tensor,
    positions: Tensor,
    active: Tensor,
    abs_sum: Tensor,
    z_sum: Tensor,
    z_m2: Tensor,
    z_max: Tensor,
    z_min: Tensor,
) -> None:
    """:func:`_merge_range`, and the batch's moments about ``shift`` into ``z_sum`` and
    ``z_m2``.

    The moments merge by Chan et al.: (n_a, mean_a, M2_a) and the batch's
    (n_b, mean_b = shift + s1 / n_b, M2_b = s2 - s1**2 / n_b) give
    M2 = M2_a + M2_b + delta**2 n_a n_b / (n_a + n_b). About 20 small ops: eager, or one
    compiled kernel on the fused path.
    """
    acc = z_sum.dtype
    n_a = positions.to(acc)  # positions before this batch
    s1, s2 = s1.to(acc), s2.to(acc)
    mean_b = shift.to(acc) + s1 / n_b
    m2_b = s2 - s1 * s1 / n_b
    delta = mean_b - z_sum / n_a.clamp_min(1)
    z_m2.add_(m2_b + delta * delta * (n_a * n_b / (n_a + n_b)))
    z_sum.add_(mean_b * n_b)
    _merge_range(n_b, active_b, abs_b, max_b, min_b, positions, active, abs_sum, z_max, z_min)


_PAIR: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sum": torch.add,
    "amax": torch.maximum,
    "amin": torch.minimum,
}


def _rows(x: Tensor, op: str) -> Tensor:
    """Reduce an ``(A, U, B)`` tensor to ``(U,)`` by ``op`` inside a compiled kernel: with
    B == 1 (units last) over A, vectorised over the contiguous units; otherwise over each
    row's contiguous B positions first, then over A."""
    if x.shape[2] == 1:
        return getattr(x[:, :, 0], op)(0)
    return getattr(getattr(x, op)(2), op)(0)


def _fold(x: Tensor, op: str) -> Tensor:
    """:func:`_rows` with the two halves of A combined element-wise first (an odd last row
    is reduced on its own), so that each step of the kernel's loop folds two loads into its
    accumulator. Inductor keeps one accumulator per reduction, a chain of dependent
    instructions (NaN-propagating max/min are the longest): halving its length made the
    four "range" reductions of a conv map about 1.5x faster on a 2-core CPU (units last
    about 1.05x); folding four rows was no faster than two."""
    a_len = x.shape[0]
    if a_len < 2:
        return _rows(x, op)
    half, pair = a_len // 2, _PAIR[op]
    folded = _rows(pair(x[:half], x[half : 2 * half]), op)
    if a_len % 2:
        folded = pair(folded, _rows(x[2 * half :], op))
    return folded


def _fused_body(
    z3: Tensor, abs_out: Tensor, shift: Tensor | None, work: torch.dtype
) -> tuple[Tensor, ...]:
    """The batch's ``(U,)`` reductions of ``(A, U, B)`` tensors, written for one kernel.

    Returns (active, abs_sum, max, min), with a ``shift`` (s1, s2) between them, as
    :func:`_eager_reductions` for "range" and "full", each by :func:`_fold`: inductor turns
    them into a single read of ``z`` (and of ``abs_out``'s input).
    """
    z = z3.to(work)
    parts = [(z > 0).to(work), abs_out.to(work)]
    if shift is not None:
        dev = z - shift[None, :, None]
        parts += [dev, dev * dev]
    return (*(_fold(p, "sum") for p in parts), _fold(z, "amax"), _fold(z, "amin"))


def _fused_out(z3: Tensor, out3: Tensor, shift: Tensor) -> tuple[Tensor, ...]:
    """Full :func:`_fused_body` with ``abs_sum`` the sum of ``|out|``."""
    return _fused_body(z3, out3.abs(), shift, shift.dtype)


def _fused_relu(z3: Tensor, shift: Tensor) -> tuple[Tensor, ...]:
    """Full :func:`_fused_body` for ReLU: ``abs_sum`` sums ``relu(z)``; ``out`` is not read."""
    return _fused_body(z3, z3.clamp_min(0), shift, shift.dtype)


def _update_range(
    z3: Tensor,
    abs_out: Tensor,
    positions: Tensor,
    active: Tensor,
    abs_sum: Tensor,
    z_max: Tensor,
    z_min: Tensor,
) -> Tensor:
    """Detail "range" in one kernel: :func:`_fused_body` of the batch merged in place into
    the accumulators (:func:`_merge_range`). Returns the 0-d non-finite probe of
    :func:`_nonfinite`, the sum of ``max - min`` over units."""
    active_b, abs_b, max_b, min_b = _fused_body(z3, abs_out, None, _work_dtype(z3.dtype))
    n_b = z3.shape[0] * z3.shape[2]
    _merge_range(n_b, active_b, abs_b, max_b, min_b, positions, active, abs_sum, z_max, z_min)
    return (max_b - min_b).sum()


def _fused_out_range(z3: Tensor, out3: Tensor, *accumulators: Tensor) -> Tensor:
    """:func:`_update_range` with ``abs_sum`` from ``|out|``."""
    return _update_range(z3, out3.abs(), *accumulators)


def _fused_relu_range(z3: Tensor, *accumulators: Tensor) -> Tensor:
    """:func:`_update_range` for ReLU: ``abs_sum`` from ``relu(z)``; ``out`` is not read."""
    return _update_range(z3, z3.clamp_min(0), *accumulators)


_FUSED: dict[str, Any] = {}
#: What :func:`_fused_kernel` compiles, by name: a separate code object each, so that each
#: has its own dynamo cache (an entry per layout and dtype).
_COMPILED: dict[str, Callable[..., Any]] = {
    "relu_full": _fused_relu,
    "out_full": _fused_out,
    "merge_full": _merge_full,
    "relu_range": _fused_relu_range,
    "out_range": _fused_out_range,
}


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused statistics kernel may be used on ``device`` (CPU or CUDA, with
    ``torch.compile``, and no earlier compile failure in this process).

    It is compiled at its first use, which can still fail (no C++ compiler, no Triton):
    :meth:`UnitStats.update` then warns once and takes the eager path.
    """
    return (
        torch.device(device).type in ("cpu", "cuda")
        and hasattr(torch, "compile")
        and not _FUSED.get("disabled", False)
    )


def _fused_kernel(name: str) -> Callable[..., Any] | None:
    """The compiled function ``_COMPILED[name]`` (compiled lazily, dynamic shapes), or None
    if unavailable."""
    if _FUSED.get("disabled"):
        return None
    kernel = _FUSED.get(name)
    if kernel is None:
        fn = _COMPILED[name]
        try:
            kernel = torch.compile(fn, dynamic=True)
        except Exception as exc:
            _disable_fused(exc)
            return None
        _FUSED[name] = kernel
    return kernel


def _disable_fused(exc: BaseException) -> None:
    import warnings

    _FUSED["disabled"] = True
    warnings.warn(
        f"deadrelu: the fused statistics kernel could not be compiled ({exc!r}); using "
        f"the eager path (same results, slower)",
        RuntimeWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------- kernel choice

#: What :meth:`UnitStats.update` may be asked to run (``kernel=``): "auto" measures.
KERNEL_CHOICES: tuple[str, ...] = ("auto", "eager", "native", "compiled")
KernelChoice = Literal["auto", "eager", "native", "compiled"]
#: Timed runs of each candidate after its warm-up run, when "auto" chooses (the fastest
#: run kept: other processes and preemption only ever add time).
TRIAL_REPEATS = 3
#: A kernel later in the order eager, native, compiled is chosen only when it is this much
#: faster (relative) than the best earlier one: the trials run on a warm batch, where the
#: compiled kernel's per-call overhead right after a convolution (~0.2 ms on a 2-core CPU)
#: does not show; at a near tie (0.210 vs 0.211 ms) it then lost 10 % of scan throughput.
TRIAL_MARGIN = 0.1
#: After two timed runs each, a trial stops when every other candidate's best run took at
#: least this many times the fastest's (a third run could change such a choice only if
#: both runs of another candidate had been slowed 2x or more). A trial costs one kernel
#: run per candidate and round, on a batch that the winner then reduces once more.
TRIAL_CLEAR = 2.0

_ORDERS: dict[str, tuple[str, ...]] = {
    "auto": ("auto",),
    "eager": ("eager",),
    "native": ("native", "eager"),
    "compiled": ("compiled", "eager"),
}


def _kernel_order(kernel: str, fused: bool | None) -> tuple[str, ...]:
    """The kernels :meth:`UnitStats._update` tries in turn for ``kernel`` (or the
    deprecated ``fused``: False eager, True native else compiled)."""
    if fused is not None:
        warnings.warn(
            "UnitStats.update(fused=...) is deprecated: pass kernel='eager' (fused=False) "
            "or kernel='native' / 'compiled' / 'auto'",
            DeprecationWarning,
            stacklevel=3,
        )
        return ("native", "compiled", "eager") if fused else ("eager",)
    order = _ORDERS.get(kernel)
    if order is None:
        raise ValueError(f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")
    return order


class _Batch(NamedTuple):
    """One batch as the kernels take it: ``(A, U, B)`` views, the "full" shift, flags."""

    z3: Tensor
    out3: Tensor | None
    shift: Tensor | None
    out_nonnegative: bool
    relu: bool


_TIMER: list[Callable[[], float]] = [time.perf_counter]


def set_timer(timer: Callable[[], float] | None) -> Callable[[], float]:
    """Use ``timer`` (a clock in seconds, like :func:`time.perf_counter`, the default;
    None restores it) for the trials of ``kernel="auto"``; returns the previous one.
    For tests: a fake clock makes the choice deterministic."""
    previous = _TIMER[0]
    _TIMER[0] = timer or time.perf_counter
    return previous


@dataclass(frozen=True)
class KernelTrial:
    """What ``kernel="auto"`` chose for one kind of batch, and why.

    ``kind``: the batch's units, position class (``positions <= 2**k`` per unit), dtype,
    device, layout ("channels_first": units before contiguous positions, ``(N, C, H, W)``;
    "units_last": ``(N, L, U)``; "channels_last": a ``channels_last`` map, reduced as
    units last; "strided": other strides, copied first), level, mode ("relu": the sum of
    relu(z); "out": of |out|; "z": none), ``out_nonnegative``. ``candidates``: the kernels
    that applied; ``times_s``: the best seconds per batch of each that ran (empty when
    only one applied: nothing was timed); ``kernel``: the fastest.
    """

    kind: tuple[Any, ...]
    kernel: str
    candidates: tuple[str, ...]
    times_s: Mapping[str, float]
    compiled_considered: bool

    _KIND_NAMES: ClassVar[tuple[str, ...]] = (
        "units",
        "positions_class",
        "dtype",
        "device",
        "layout",
        "level",
        "mode",
        "out_nonnegative",
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``kind`` fields by name, ``kernel``, ``candidates``, ``times_s``."""
        return {
            **dict(zip(self._KIND_NAMES, self.kind, strict=True)),
            "kernel": self.kernel,
            "candidates": list(self.candidates),
            "times_s": dict(self.times_s),
        }


#: ``kernel="auto"``'s choices in this process, by kind of batch.
_CHOICES: dict[tuple[Any, ...], KernelTrial] = {}
#: (level, mode, dtype, device type, units last) the compiled kernel already ran for.
_COMPILED_READY: set[tuple[Any, ...]] = set()
#: :func:`choose_kernel`'s answers by the batch's raw key (shape, dtype and device objects,
#: flags), so that a batch of a kind already chosen costs one dict lookup: emptied whenever
#: a choice is made or forgotten or the compiled kernel becomes ready for another kind.
_FAST: dict[tuple[Any, ...], KernelTrial] = {}
#: Entries of :data:`_FAST` kept at most (shapes that vary batch to batch, e.g. sequence
#: lengths, add one each).
_FAST_MAX = 4096


def kernel_trials() -> list[KernelTrial]:
    """Every choice ``kernel="auto"`` made in this process, oldest first."""
    return list(_CHOICES.values())


def reset_kernel_choices() -> None:
    """Forget ``kernel="auto"``'s choices (the next batch of each kind is timed again)."""
    _CHOICES.clear()
    _FAST.clear()


def _compiled_ready(key: tuple[Any, ...]) -> None:
    """Record that the compiled kernel ran for ``key`` (:func:`_compiled_key`)."""
    if key not in _COMPILED_READY:
        _COMPILED_READY.add(key)
        _FAST.clear()  # a kind chosen without it may now be timed again


def _mode(batch: _Batch) -> str:
    return "relu" if batch.relu else "out" if batch.out3 is not None else "z"


def _compiled_key(level: str, batch: _Batch) -> tuple[Any, ...]:
    """What the compiled kernel's guards tell apart (shapes are dynamic)."""
    z3 = batch.z3
    return (level, _mode(batch), z3.dtype, z3.device.type, z3.shape[2] == 1)


def _applies(stats: UnitStats, name: str, batch: _Batch, compile_ok: bool) -> bool:
    """Whether kernel ``name`` may take ``batch`` (static checks; a run can still fail)."""
    z3 = batch.z3
    if name == "eager":
        return True
    if name == "native":
        return stats._native_applies(z3, batch.out3, batch.shift, batch.relu)
    if stats.detail == "counts":
        return False
    return (
        compile_ok and fused_available(z3.device) and z3.numel() // z3.shape[1] < _FLOAT_COUNT_EXACT
    )


def choose_kernel(stats: UnitStats, batch: _Batch, layout: str, allow_compile: bool) -> str:
    """The kernel ``kernel="auto"`` runs ``batch`` with: the fastest, by measurement, of
    those that apply, chosen once per kind of batch in this process (:class:`KernelTrial`).

    Rule: "eager" always applies; "native" where :mod:`deadrelu.native` takes the batch
    (float32 CPU, a C++ compiler); "compiled" (detail "range"/
    "full", fewer than 2**24 positions per unit) only where it already ran in this
    process for this level, mode, dtype, device and layout class, or ``allow_compile``
    (compiling costs seconds). A kind chosen without "compiled" is timed again once
    "compiled" becomes allowed. With one candidate nothing is timed. Otherwise "compiled"
    runs once untimed (it compiles), then up to :data:`TRIAL_REPEATS` timed runs each,
    interleaved in rotating order, all into throwaway accumulators, stopping after two when
    the choice is clear (:data:`TRIAL_CLEAR`); a kernel that raises or does not apply in
    any run is dropped. Each candidate's fastest run is its time; going through them in
    the order eager, native, compiled, a candidate replaces
    the choice so far only when it is at least :data:`TRIAL_MARGIN` faster (ties and near
    ties go to the simpler kernel). ``batch`` itself is then reduced once,
    by the winner, into ``stats``. Inside ``torch.compile`` tracing: "eager", untimed.
    """
    if torch.compiler.is_compiling():
        return "eager"
    z3 = batch.z3
    fast_key = (
        z3.shape,
        z3.dtype,
        z3.device,
        layout,
        stats.detail,
        batch.relu,
        batch.out3 is None,
        batch.out_nonnegative,
        allow_compile,
    )
    known = _FAST.get(fast_key)
    if known is not None:
        stats._trials[known.kind] = known
        return known.kernel
    n_b = z3.numel() // z3.shape[1]
    kind = (
        z3.shape[1],
        n_b.bit_length(),
        str(z3.dtype).removeprefix("torch."),
        str(z3.device),
        layout,
        stats.detail,
        _mode(batch),
        batch.out_nonnegative,
    )
    compile_ok = allow_compile or _compiled_key(stats.detail, batch) in _COMPILED_READY
    choice = _CHOICES.get(kind)
    if choice is None or (compile_ok and not choice.compiled_considered):
        candidates = [
            n for n in ("eager", "native", "compiled") if _applies(stats, n, batch, compile_ok)
        ]
        choice = _trial(stats, batch, kind, candidates, compile_ok)
        _CHOICES[kind] = choice
        _FAST.clear()
    if len(_FAST) >= _FAST_MAX:
        _FAST.clear()
    _FAST[fast_key] = choice
    stats._trials[kind] = choice
    return choice.kernel


def _trial(
    stats: UnitStats,
    batch: _Batch,
    kind: tuple[Any, ...],
    candidates: list[str],
    compile_ok: bool,
) -> KernelTrial:
    """Time ``candidates`` on ``batch`` into throwaway accumulators (:func:`choose_kernel`)."""
    # (at "counts" there is no compiled kernel: nothing more to consider later)
    considered = (compile_ok and "compiled" in candidates) or stats.detail == "counts"
    if len(candidates) == 1:
        return KernelTrial(kind, candidates[0], tuple(candidates), {}, considered)
    device = batch.z3.device
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    scratch_stats = {
        name: UnitStats.empty(stats.units, device, detail=stats.detail, dtype=stats.abs_sum.dtype)
        for name in candidates
    }
    alive: list[str] = []
    for name in candidates:  # only compiling needs a run before the timed ones
        if name != "compiled" or _attempt(scratch_stats[name], name, batch, kind):
            alive.append(name)
    timer = _TIMER[0]
    times: dict[str, list[float]] = {name: [] for name in alive}
    for r in range(TRIAL_REPEATS if len(alive) > 1 else 0):
        k = r % len(alive)
        for name in alive[k:] + alive[:k]:
            if name not in times:
                continue  # failed in an earlier round
            if sync is not None:
                sync(device)
            start = timer()
            ran = _attempt(scratch_stats[name], name, batch, kind)
            if sync is not None:
                sync(device)
            if ran:
                times[name].append(timer() - start)
            else:
                del times[name]
        if len(times) < 2 or (r >= 1 and _decided(times)):
            break
    alive = [name for name in alive if name in times]
    best = {name: min(v) for name, v in times.items() if v}
    winner = alive[0] if alive else "eager"
    for name in alive[1:]:  # in the order eager, native, compiled
        if best[name] < best[winner] * (1.0 - TRIAL_MARGIN):
            winner = name
    log.info("deadrelu: kernel %r for %s (best s per batch: %s)", winner, kind, best)
    return KernelTrial(kind, winner, tuple(candidates), best, considered)


def _attempt(stats: UnitStats, name: str, batch: _Batch, kind: tuple[Any, ...]) -> bool:
    """One run of kernel ``name`` in a trial; False where it does not apply or raises (a
    kernel that fails is never chosen)."""
    try:
        return stats._run(name, batch)
    except Exception as exc:
        log.info("deadrelu: kernel %r failed on a %s batch (%r); not used", name, kind, exc)
        return False


def _decided(times: Mapping[str, list[float]]) -> bool:
    """Whether the trial may stop: every candidate but the fastest took at least
    :data:`TRIAL_CLEAR` times the fastest's best run (more runs only ever lower a best run,
    and the fastest's is as low as it will matter)."""
    best = sorted(min(v) for v in times.values())
    return best[0] * TRIAL_CLEAR <= best[1]


@dataclass(eq=False)
class UnitStats:
    """Per-unit accumulators for one call site; see the module docstring for the fields.

    Build with :meth:`empty`, feed with :meth:`update`, combine with :meth:`merge` or
    :meth:`all_reduce`. ``detail`` (a level of :data:`DETAIL_LEVELS`; ``True`` and
    ``False`` are read as "full" and "counts") says which fields are updated.
    """

    positions: Tensor
    active: Tensor
    abs_sum: Tensor
    z_sum: Tensor
    z_m2: Tensor
    z_max: Tensor
    z_min: Tensor
    nonfinite: Tensor
    detail: Level = "full"

    #: How each tensor field reduces across merges and processes.
    REDUCE: ClassVar[dict[str, str]] = {
        "positions": "sum",
        "active": "sum",
        "abs_sum": "sum",
        "z_sum": "sum",
        "z_m2": "m2",
        "z_max": "max",
        "z_min": "min",
        "nonfinite": "sum",
    }

    # ------------------------------------------------------------------ construction

    def __post_init__(self) -> None:
        self.detail = detail_level(self.detail)
        self._compact()
        #: ``kernel="auto"``'s choices for the kinds of batch these statistics saw.
        self._trials: dict[tuple[Any, ...], KernelTrial] = {}
        #: The accumulators last checked for the native kernel, and whether they fit it
        #: (:meth:`_native_fits`).
        self._native_checked: tuple[tuple[Tensor, ...], bool] | None = None
        #: Throwaway extrema and non-finite counts for the native kernel at "counts".
        self._native_spare: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def kernel_trials(self) -> list[KernelTrial]:
        """:class:`KernelTrial` s of the kinds of batch that ``kernel="auto"`` reduced into
        these statistics (empty for other kernels)."""
        return list(self._trials.values())

    def _compact(self) -> None:
        """Hold the fields this level does not update as zero-stride views of their initial
        value (one element of memory each, shape ``(U,)`` all the same)."""
        tracked = _LEVEL_FIELDS[self.detail]
        for name, how in self.REDUCE.items():
            t = getattr(self, name)
            if name not in tracked and (t.dim() == 0 or t.stride(0) != 0):
                setattr(self, name, _initial(how, t.shape, t.dtype, t.device))

    @classmethod
    def empty(
        cls,
        units: int,
        device: torch.device | str = "cpu",
        *,
        detail: Detail = "full",
        dtype: torch.dtype | None = None,
    ) -> UnitStats:
        """Zeroed accumulators for ``units`` units on ``device``.

        Args:
            units: number of units U (channels or features), >= 1.
            device: where the accumulators live: the activation's device.
            detail: which fields to update: "counts" (or False), "range" or "full" (or
                True); see :data:`DETAIL_LEVELS`.
            dtype: float accumulator dtype; default :func:`accumulator_dtype`.
        """
        if units < 1:
            raise ValueError(f"UnitStats needs at least one unit, got {units}")
        device = torch.device(device)
        acc = dtype or accumulator_dtype(device)
        i64 = torch.int64
        level = detail_level(detail)
        tracked = _LEVEL_FIELDS[level]
        dtypes = {"positions": i64, "active": i64, "nonfinite": i64}
        fields_ = {
            name: _initial(
                how,
                (() if name == "positions" else (units,)),
                dtypes.get(name, acc),
                device,
                dense=name in tracked,
            )
            for name, how in cls.REDUCE.items()
        }
        return cls(**fields_, detail=level)

    @property
    def has_range(self) -> bool:
        """Whether ``z_max``, ``z_min`` and ``nonfinite`` are tracked (detail "range"/"full")."""
        return self.detail != "counts"

    @property
    def has_moments(self) -> bool:
        """Whether ``z_sum`` and ``z_m2`` are tracked (detail "full")."""
        return self.detail == "full"

    @property
    def nbytes(self) -> int:
        """Bytes the accumulators hold (untracked fields: one element each)."""
        return sum(t.untyped_storage().nbytes() for t in self._tensors().values())

    @property
    def units(self) -> int:
        """Number of units U."""
        return int(self.active.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the accumulators."""
        return self.active.device

    def _tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.REDUCE}

    # ------------------------------------------------------------------ hot path

    def update(
        self,
        z: Tensor,
        out: Tensor,
        unit_dim: int,
        *,
        kernel: KernelChoice = "auto",
        allow_compile: bool = False,
        fused: bool | None = None,
        out_nonnegative: bool = False,
        relu: bool = False,
    ) -> Kernel | None:
        """Add one batch; returns the :data:`Kernel` that reduced it (None for a batch with
        no elements).

        Args:
            z: pre-activation, any shape with ``z.shape[unit_dim] == U``, e.g.
                ``(N, C, H, W)`` with ``unit_dim=1`` or ``(N, L, D)`` with ``unit_dim=-1``;
                a 0-d tensor is one unit seen once, a 1-d ``(U,)`` tensor one position.
            out: activation output, same shape as ``z``.
            unit_dim: the unit axis of ``z`` (negative counts from the end).
            kernel: which code reduces the batch (:data:`KERNEL_CHOICES`; all give the
                same statistics up to float summation order: counts and extrema exactly):

                * ``"auto"`` (default): the fastest kernel that applies, measured in this
                  process on the first batch of each kind (:func:`choose_kernel`);
                * ``"eager"``: torch ops only (the reference);
                * ``"native"``: the C++ kernel (:mod:`deadrelu.native`: float32 on CPU;
                  one pass) where it applies, else eager;
                * ``"compiled"``: one ``torch.compile``-d kernel (a single read of ``z``,
                  and of ``out`` unless ``relu``; the first call in a process compiles
                  for seconds; falls back to eager with one warning where compiling fails;
                  not used inside a model that is itself being compiled, for batches of
                  2**24 or more positions per unit, or at the "counts" level) where it
                  applies, else eager.
            allow_compile: with ``kernel="auto"``, let the compiled kernel be a candidate
                even where it is not yet compiled for this kind of batch in this process
                (compiling costs seconds; :func:`deadrelu.scan.scan` allows it for scans
                projected to take long).
            fused: deprecated alias of ``kernel``: ``False`` is "eager", ``True`` the
                native kernel where it applies else the compiled one (its old meaning),
                ``None`` leaves ``kernel`` as given.
            out_nonnegative: the caller guarantees ``out >= 0`` (or NaN) everywhere, as for
                ReLU and ReLU6: ``abs_sum`` is then summed from ``out`` without an ``abs``
                pass (same result). Ignored by the native and compiled kernels.
            relu: the caller guarantees ``out == relu(z)`` (implies ``out_nonnegative``):
                the one-pass kernels then sum ``relu(z)`` from ``z`` and do not read
                ``out``.

        Reduces over every dim but ``unit_dim``. No host synchronisation, except on the
        batches ``"auto"`` times on a GPU (the first of each kind, per process). A tensor
        with no elements is ignored (decided from its shape only).
        """
        if z.shape != out.shape:
            raise ValueError(
                f"z and out must have the same shape, got {tuple(z.shape)} and "
                f"{tuple(out.shape)}; pass the activation's input and output"
            )
        order = _kernel_order(kernel, fused)
        return self._update(z, out, unit_dim, order, allow_compile, out_nonnegative or relu, relu)

    def update_z(
        self,
        z: Tensor,
        unit_dim: int,
        *,
        kernel: KernelChoice = "auto",
        allow_compile: bool = False,
        fused: bool | None = None,
        relu: bool = False,
    ) -> Kernel | None:
        """Add one batch's pre-activation only: everything :meth:`update` adds but
        ``abs_sum``, which :meth:`add_output` adds from the output of the same call.

        For an in-place activation, whose ``z`` is overwritten by its output: reduce ``z``
        before the call (``(N, C, H, W)`` or any shape, as in :meth:`update`) and the
        output after it, instead of copying ``z``. ``update_z(z) + add_output(out)`` is
        :meth:`update` ``(z, out)``. With ``relu=True`` (the activation is ReLU) the
        ``abs_sum`` of ``relu(z)`` is added too, so that ``update_z(z, relu=True)`` alone is
        :meth:`update` ``(z, relu(z))``: in the one-pass kernels at no extra pass, eagerly
        at about one pass more than :meth:`add_output` would take. ``kernel``,
        ``allow_compile``, ``fused`` and the return value as in :meth:`update`.
        """
        order = _kernel_order(kernel, fused)
        return self._update(z, None, unit_dim, order, allow_compile, False, relu)

    def add_output(self, out: Tensor, unit_dim: int, *, out_nonnegative: bool = False) -> None:
        """Add the ``abs_sum`` of one call's output, whose ``z`` went to :meth:`update_z`.

        ``out``: same shape as that ``z``; ``out_nonnegative`` as in :meth:`update`.
        """
        out, d = self._unit_axis(out, unit_dim, "out")
        if out.numel() == 0:
            return
        out = out.detach()
        out3 = _as_aub(out, d, _units_last(out, d))
        work = _work_dtype(out.dtype)
        abs_b = _abs_sum(out3, work, out_nonnegative, scratch(out3.shape, work, out.device))
        self.abs_sum.add_(abs_b.to(self.abs_sum.dtype))

    def _unit_axis(self, x: Tensor, unit_dim: int, what: str) -> tuple[Tensor, int]:
        """``x`` with 0-d/1-d tensors viewed as one position ``(1, U)``, and its unit dim as
        a non-negative index; raises if it does not hold :attr:`units` units."""
        if x.dim() <= 1:
            x, unit_dim = x.reshape(1, -1), 1
        d = unit_dim % x.dim()
        if x.shape[d] != self.units:
            raise ValueError(
                f"{what} has {x.shape[d]} units along dim {unit_dim} (shape {tuple(x.shape)}) "
                f"but these statistics hold {self.units}; check the unit axis"
            )
        return x, d

    def _update(
        self,
        z: Tensor,
        out: Tensor | None,
        unit_dim: int,
        order: tuple[str, ...],
        allow_compile: bool,
        out_nonnegative: bool,
        relu: bool,
    ) -> Kernel | None:
        """:meth:`update`; without ``out`` (:meth:`update_z`) ``abs_sum`` is skipped, or with
        ``relu`` taken from ``relu(z)``. ``order``: the kernels to try, the first that
        applies reduces the batch (``("auto",)``: :func:`choose_kernel`'s, then eager).
        None for a batch with no elements."""
        if out is not None and z.dim() <= 1:
            out = out.reshape(1, -1)
        z, d = self._unit_axis(z, unit_dim, "z")
        if z.numel() == 0:
            return None
        z = z.detach()
        out = out.detach() if out is not None else None
        units_last = _units_last(z, d)
        z3 = _as_aub(z, d, units_last)
        out3 = _as_aub(out, d, units_last) if out is not None else None
        shift: Tensor | None = None
        if self.detail == "full":
            # Moments are taken about a per-unit shift K (this batch's first position), so
            # that s2 - s1**2 / n does not cancel: |mean - K| is of the order of the spread.
            index = tuple(slice(None) if i == d else 0 for i in range(z.dim()))
            shift = z[index].to(_work_dtype(z.dtype)).nan_to_num(0.0, 0.0, 0.0)  # (U,)
        batch = _Batch(z3, out3, shift, out_nonnegative, relu)
        if order == ("auto",):
            layout = (
                "channels_last"
                if units_last
                else "units_last"
                if z3.shape[2] == 1
                else "channels_first"
                if z.is_contiguous()
                else "strided"
            )
            order = (choose_kernel(self, batch, layout, allow_compile), "eager")
        for name in order:
            if self._run(name, batch):
                return name  # type: ignore[return-value]
        raise AssertionError(f"no kernel reduced the batch (order {order})")  # pragma: no cover

    def _run(self, name: str, batch: _Batch) -> bool:
        """Reduce ``batch`` into these accumulators with kernel ``name``; False (and nothing
        changed) where that kernel does not apply or is unavailable. "eager" always runs."""
        z3, out3, shift, out_nonnegative, relu = batch
        level = self.detail
        n_b = z3.numel() // self.units
        if name != "eager":
            if torch.compiler.is_compiling():
                return False
            if name == "native":
                return self._native(z3, out3, shift, relu)
            if level == "counts" or n_b >= _FLOAT_COUNT_EXACT or not fused_available(z3.device):
                return False
            if level == "range":
                ran = self._fused_range(z3, out3, relu)
                if ran:
                    _compiled_ready(_compiled_key(level, batch))
                return ran
            parts, merge = self._fused_full(z3, out3, shift, relu)
            if parts is None:
                return False
            _compiled_ready(_compiled_key(level, batch))
        else:
            work = _work_dtype(z3.dtype)
            parts = _eager_reductions(z3, out3, shift, work, level, out_nonnegative, relu)
            merge = None
        if level == "counts":
            _merge_counts(n_b, parts[0], parts[1], self.positions, self.active, self.abs_sum)
            return True
        nonfinite = _nonfinite(z3, parts[-2] - parts[-1])
        if nonfinite is not None:
            self.nonfinite.add_(nonfinite.to(torch.int64))
        counts = (self.positions, self.active, self.abs_sum)
        extrema = (self.z_max, self.z_min)
        if level == "range":
            args: tuple[Any, ...] = (n_b, *parts)
            accumulators: tuple[Tensor, ...] = (*counts, *extrema)
        else:
            args = (n_b, shift, *parts)
            accumulators = (*counts, self.z_sum, self.z_m2, *extrema)
        eager_merge = _merge_range if level == "range" else _merge_full
        try:
            (merge or eager_merge)(*args, *accumulators)
        except Exception as exc:
            if merge is None:
                raise
            _disable_fused(exc)  # the compiled merge mutates nothing when it fails
            eager_merge(*args, *accumulators)
        return True

    def _native_accumulators(self, shift: Tensor | None) -> tuple[Tensor, ...]:
        """What :func:`native.update` merges into: at detail "counts" the extrema and
        non-finite counts go to throwaway tensors (the kernel computes them at no extra
        pass; this level does not keep them)."""
        extra: tuple[Tensor, ...] = (self.z_max, self.z_min, self.nonfinite)
        if self.detail == "counts":
            if self._native_spare is None or self._native_spare[0].device != self.device:
                f64, units = self.z_max.dtype, self.units
                self._native_spare = (
                    torch.zeros(units, dtype=f64, device=self.device),
                    torch.zeros(units, dtype=f64, device=self.device),
                    torch.zeros(units, dtype=torch.int64, device=self.device),
                )
            extra = self._native_spare
        accumulators = (self.positions, self.active, self.abs_sum, *extra)
        return accumulators + ((self.z_sum, self.z_m2) if shift is not None else ())

    def _native_fits(self, shift: Tensor | None) -> tuple[Tensor, ...] | None:
        """The accumulators :func:`native.update` takes (with a ``shift`` also the moments),
        or None where they do not fit it; checked once per set of accumulator tensors (the
        same objects batch after batch: they are updated in place)."""
        accumulators = self._native_accumulators(shift)
        checked = self._native_checked
        if (
            checked is None
            or len(checked[0]) != len(accumulators)
            or any(a is not b for a, b in zip(checked[0], accumulators, strict=True))
        ):
            fits = native.accumulators_apply(accumulators, self.units, shift is not None)
            checked = self._native_checked = (accumulators, fits)
        return accumulators if checked[1] else None

    def _native_applies(
        self, z3: Tensor, out3: Tensor | None, shift: Tensor | None, relu: bool
    ) -> bool:
        """Whether :mod:`deadrelu.native` takes this batch (see :func:`native.applies`)."""
        out3 = out3 if out3 is not None and not relu else None
        shift = shift.contiguous() if shift is not None else None
        return (
            self._native_fits(shift) is not None
            and native.inputs_apply(z3, out3, shift)
            and native.available()
        )

    def _native(self, z3: Tensor, out3: Tensor | None, shift: Tensor | None, relu: bool) -> bool:
        """The batch by the native CPU kernel (:mod:`deadrelu.native`; detail "full" with
        ``shift``); False (and nothing changed) where it does not apply."""
        mode = (
            native.MODE_RELU if relu else native.MODE_OUT if out3 is not None else native.MODE_NONE
        )
        shift = shift.contiguous() if shift is not None else None
        out3 = out3 if mode == native.MODE_OUT else None
        accumulators = self._native_fits(shift)
        if accumulators is None or not native.inputs_apply(z3, out3, shift):
            return False
        if not native.available():
            return False
        native.update(z3, out3, mode, accumulators, shift)
        return True

    def _fused_range(self, z3: Tensor, out3: Tensor | None, relu: bool) -> bool:
        """Detail "range": the batch reduced and merged by one compiled kernel; False (and
        nothing changed) where compiling is unavailable or fails, then eager."""
        kernel = _fused_kernel("relu_range" if relu else "out_range")
        if kernel is None:
            return False
        # without out (update_z), z stands in for it and its abs_sum goes to a throwaway
        abs_sum = self.abs_sum if relu or out3 is not None else torch.zeros_like(self.abs_sum)
        args: tuple[Tensor, ...] = (z3,) if relu else (z3, z3 if out3 is None else out3)
        try:
            probe = kernel(*args, self.positions, self.active, abs_sum, self.z_max, self.z_min)
        except Exception as exc:  # compiler missing or broken (before any change): eager
            _disable_fused(exc)
            return False
        nonfinite = _nonfinite(z3, probe)
        if nonfinite is not None:
            self.nonfinite.add_(nonfinite.to(torch.int64))
        return True

    def _fused_full(
        self, z3: Tensor, out3: Tensor | None, shift: Tensor | None, relu: bool
    ) -> tuple[tuple[Tensor, ...] | None, Callable[..., Any] | None]:
        """Detail "full": the batch's reductions by the compiled kernel and the compiled
        merge, or (None, None) where compiling is unavailable or fails (then eager). (One
        kernel for both, as for "range", is slower here when units are last.)"""
        kernel = _fused_kernel("relu_full" if relu else "out_full")
        merge = _fused_kernel("merge_full")
        if kernel is None or merge is None:
            return None, None
        args: tuple[Tensor, ...] = (z3,) if relu else (z3, z3 if out3 is None else out3)
        try:  # without out (update_z), z stands in for it; its abs_sum is dropped
            parts = kernel(*args, shift)
        except Exception as exc:  # compiler missing or broken: eager from now on
            _disable_fused(exc)
            return None, None
        if out3 is None and not relu:
            parts = (parts[0], torch.zeros_like(parts[1]), *parts[2:])
        return parts, merge

    # ------------------------------------------------------------------ combining

    def _check_compatible(self, other: UnitStats) -> None:
        if other.units != self.units:
            raise ValueError(f"cannot merge statistics of {other.units} and {self.units} units")
        if other.detail != self.detail:
            raise ValueError(
                f"cannot merge statistics with detail={other.detail!r} into detail={self.detail!r}"
            )

    def merge(self, other: UnitStats) -> UnitStats:
        """Add ``other`` (same units, any device) into ``self``; return ``self``.

        Follows :attr:`REDUCE`; the ``m2`` field uses Chan's parallel formula, so the
        result equals having seen both streams of batches.
        """
        self._check_compatible(other)
        tracked = _LEVEL_FIELDS[self.detail]
        o = {k: getattr(other, k).to(self.device) for k in tracked}
        if self.has_moments:
            acc = self.z_sum.dtype
            n_a = self.positions.to(acc)
            n_b = o["positions"].to(acc)
            n = (n_a + n_b).clamp_min(1)
            delta = o["z_sum"].to(acc) / n_b.clamp_min(1) - self.z_sum / n_a.clamp_min(1)
            m2 = self.z_m2 + o["z_m2"].to(acc) + delta * delta * (n_a * n_b / n)
        for name in tracked:
            how = self.REDUCE[name]
            mine = getattr(self, name)
            theirs = o[name].to(mine.dtype)
            if how == "sum":
                mine.add_(theirs)
            elif how == "max":
                torch.maximum(mine, theirs, out=mine)
            elif how == "min":
                torch.minimum(mine, theirs, out=mine)
            elif how == "m2":
                mine.copy_(m2)
            else:  # pragma: no cover - guarded by the REDUCE table
                raise AssertionError(how)
        return self

    def all_reduce(self, group: object | None = None) -> UnitStats:
        """Reduce across the processes of ``group`` (torch.distributed) in place; returns
        ``self``. :func:`all_reduce_many` for one statistics object."""
        all_reduce_many([self], group)
        return self

    def reset(self) -> None:
        """Back to the empty state, in place (tensors keep their storage)."""
        for name in _LEVEL_FIELDS[self.detail]:
            getattr(self, name).fill_(_initial_value(self.REDUCE[name]))

    def clone(self) -> UnitStats:
        """A deep copy."""
        return UnitStats(**{k: v.clone() for k, v in self._tensors().items()}, detail=self.detail)

    def to(self, device: torch.device | str) -> UnitStats:
        """A copy on ``device`` (float accumulators keep their dtype)."""
        return UnitStats(
            **{k: v.to(device, copy=True) for k, v in self._tensors().items()}, detail=self.detail
        )

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Tensor]:
        """The accumulators by field name (detached clones), for checkpoints."""
        state = {k: v.detach().clone() for k, v in self._tensors().items()}
        state["detail"] = torch.tensor(DETAIL_LEVELS.index(self.detail))
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Copy ``state`` (from :meth:`state_dict`) into these accumulators, in place."""
        missing = [k for k in self.REDUCE if k not in state]
        if missing:
            raise KeyError(f"state_dict lacks {missing}; was it made by UnitStats.state_dict()?")
        for name in self.REDUCE:
            mine, theirs = getattr(self, name), state[name]
            if theirs.shape != mine.shape:
                raise ValueError(
                    f"{name}: state has shape {tuple(theirs.shape)}, expected "
                    f"{tuple(mine.shape)} ({self.units} units)"
                )
        if "detail" in state:
            self.detail = _level_from_state(state["detail"])
        for name in _LEVEL_FIELDS[self.detail]:
            mine = getattr(self, name)
            if mine.dim() and mine.stride(0) == 0:  # was not tracked: give it memory
                mine = mine.contiguous().clone()
                setattr(self, name, mine)
            mine.copy_(state[name])
        self._compact()

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], device: torch.device | str = "cpu"
    ) -> UnitStats:
        """New statistics on ``device`` from a :meth:`state_dict`."""
        detail = _level_from_state(state["detail"]) if "detail" in state else "full"
        return cls(**{k: state[k].to(device).clone() for k in cls.REDUCE}, detail=detail)

    # ------------------------------------------------------------------ derived

    @property
    def mean_abs(self) -> Tensor:
        """``(U,)`` mean |output| per position (0 before any batch)."""
        return self.abs_sum / self.positions.to(self.abs_sum.dtype).clamp_min(1)

    @property
    def active_fraction(self) -> Tensor:
        """``(U,)`` fraction of positions with z > 0 (0 before any batch)."""
        return self.active.to(self.abs_sum.dtype) / self.positions.to(self.abs_sum.dtype).clamp_min(
            1
        )

    @property
    def z_mean(self) -> Tensor:
        """``(U,)`` mean pre-activation (0 before any batch; needs detail "full")."""
        return self.z_sum / self.positions.to(self.z_sum.dtype).clamp_min(1)

    @property
    def z_var(self) -> Tensor:
        """``(U,)`` population variance of the pre-activation (needs detail "full")."""
        return self.z_m2 / self.positions.to(self.z_m2.dtype).clamp_min(1)

    @property
    def z_sqsum(self) -> Tensor:
        """``(U,)`` sum of z**2, derived as M2 + sum**2 / n (needs detail "full")."""
        n = self.positions.to(self.z_sum.dtype).clamp_min(1)
        return self.z_m2 + self.z_sum * self.z_sum / n

    def __repr__(self) -> str:
        return (
            f"UnitStats(units={self.units}, device={self.device}, detail={self.detail}, "
            f"dtype={self.abs_sum.dtype})"
        )


def _initial_value(how: str) -> float:
    """The value a field starts from, by its reduction: -inf for "max", +inf for "min",
    else 0."""
    return float("-inf") if how == "max" else float("inf") if how == "min" else 0.0


def _initial(
    how: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    *,
    dense: bool = False,
) -> Tensor:
    """A field's initial value (:func:`_initial_value`): a fresh tensor with ``dense``, else
    one element expanded to ``shape`` (zero stride, no memory)."""
    value = _initial_value(how)
    if dense or not shape:
        return torch.full(shape, value, dtype=dtype, device=device)
    return torch.full((), value, dtype=dtype, device=device).expand(shape)


#: The fields each level updates (the others keep their initial values on every process).
_LEVEL_FIELDS: dict[str, tuple[str, ...]] = {
    "counts": ("positions", "active", "abs_sum"),
    "range": ("positions", "active", "abs_sum", "z_max", "z_min", "nonfinite"),
    "full": tuple(UnitStats.REDUCE),
}


def default_group() -> Any:
    """The world process group when ``torch.distributed`` is initialised, else None (what
    the Monitor and ``scan`` reduce over by default)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


def all_reduce_many(stats: Sequence[UnitStats], group: object | None = None) -> None:
    """Reduce every statistics object in ``stats`` across the processes of ``group``
    (torch.distributed), in place, in a few packed collectives.

    Sums for counts and sums, max/min for extrema, and the exact Chan merge for ``z_m2``
    (the global mean first, then each process's M2 re-centred on it and summed). The
    fields a level updates are packed into one flat buffer per (reduction, dtype,
    device): about 4 collectives in all (5 with "full" statistics) instead of 9 per call
    site. A no-op when torch.distributed is not initialised. Collective: every process
    must call it with the same sequence (units and levels alike).
    """
    import torch.distributed as dist

    if not stats or not (dist.is_available() and dist.is_initialized()):
        return
    full = [s for s in stats if s.has_moments]
    # each process's own (n, mean), needed to re-centre its M2 on the global mean
    local = [(s.positions.to(s.z_sum.dtype), s.z_sum / s.positions.clamp_min(1)) for s in full]
    packs: dict[tuple[str, torch.dtype, torch.device], list[Tensor]] = {}
    for s in stats:
        for name in _LEVEL_FIELDS[s.detail]:
            how = UnitStats.REDUCE[name]
            if how != "m2":
                t = getattr(s, name)
                packs.setdefault((how, t.dtype, t.device), []).append(t)
    _all_reduce_packed(packs, group)
    m2: dict[tuple[str, torch.dtype, torch.device], list[Tensor]] = {}
    for s, (n_local, mean_local) in zip(full, local, strict=True):
        shift = mean_local - s.z_sum / s.positions.clamp_min(1)
        s.z_m2.add_(n_local * shift * shift)
        m2.setdefault(("sum", s.z_m2.dtype, s.z_m2.device), []).append(s.z_m2)
    _all_reduce_packed(m2, group)


def _all_reduce_packed(
    packs: Mapping[tuple[str, torch.dtype, torch.device], Sequence[Tensor]],
    group: object | None,
) -> None:
    """One ``all_reduce`` per key ``(reduction, dtype, device)`` over the concatenation of
    its tensors, copied back into them."""
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    for (how, _, _), tensors in packs.items():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=ops[how], group=group)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _level_from_state(value: Tensor) -> Level:
    """The detail level stored in a state dict: an index into :data:`DETAIL_LEVELS`, or a
    bool (state dicts written before "range" existed)."""
    if value.dtype == torch.bool:
        return detail_level(bool(value))
    return detail_level(DETAIL_LEVELS[int(value)])


assert {f.name for f in fields(UnitStats)} - {"detail"} == set(UnitStats.REDUCE)
