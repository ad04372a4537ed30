"""A native CPU kernel for the "range" and "full" statistics of a float32 batch
(``_stats.cpp``).

:meth:`deadrelu.stats.UnitStats.update` uses it, where it applies (:func:`applies`), in
place of the torch ops or the ``torch.compile``-d kernels: one pass over ``z`` (and ``out``
for activations other than ReLU) that counts, sums (and for "full" takes the moments about
a per-unit shift) and takes the extrema per unit and merges them into the accumulators,
with the same results up to float summation order.

Why a hand-written kernel. On a 2-core CPU, in a scan of a conv net, the statistics cost
far more than one read of each activation:

* the code ``torch.compile`` generates keeps one accumulator per reduction, a chain of
  dependent instructions (NaN-propagating max/min the longest); this kernel keeps 64
  lanes of independent vector accumulators per reduction (units last: per-unit partials
  in L1, updated a vector of units and 8 positions at a time, memory read in order),
  in vectors of the CPU's width
  (AVX-512, AVX2 or SSE: wider generic vectors compiled for AVX2 became scalar code, 10x
  slower), and recounts, with torch's NaN semantics, only the units whose batch holds a
  NaN or an infinity (a second pass);
* right after a convolution (which evicts the caches), calling a compiled function cost
  about 200 us per call (guards, wrappers, allocations), a ctypes call about 10 us.

Measured in situ, one thread, CPU time (``benchmarks/native_profile.py``, AMD EPYC Zen 4):
0.2-0.25x eager's time on a conv map, 0.25x on units-last activations; built for AVX2
only, 0.25-0.3x. Whether it wins in a scan on a given machine is measured there:
:meth:`deadrelu.stats.UnitStats.update` ``kernel="auto"`` times it against the others. It
uses at most one thread per :data:`GRAIN` values of the batch.

How. The C++ source is compiled at first use with ``$CXX`` (else ``g++``, ``c++`` or
``clang++``), ``-O3 -march=native -fopenmp``, linked against torch's own OpenMP runtime
(one thread pool in the process), into ``<tempdir>/deadrelu-<uid>/`` under a name hashed
from the source, the flags, the compiler and the CPU: about 0.7 s the first time on a
machine, then only a load. Where that fails (no compiler, no OpenMP: e.g. stock macOS)
:func:`available` is False, an INFO log says why, and the callers take their other paths.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "accumulators_apply",
    "applies",
    "available",
    "inputs_apply",
    "set_enabled",
    "threads",
    "update",
]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_stats.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
#: ``mode`` of the kernel: no |out| sum, the sum of relu(z), the sum of |out|.
MODE_NONE, MODE_RELU, MODE_OUT = 0, 1, 2
#: Values of ``z`` per thread below which fewer threads are used (one for a small batch),
#: torch's own ``at::internal::GRAIN_SIZE``: a parallel region costs a wake-up of the
#: pool's threads, and on a loaded machine a wait for a descheduled one (measured: 2
#: threads took 30-40 ms wall where 1 took 0.45 ms, with 7 other processes on 2 cores).
GRAIN = 32768

_LOCK = threading.Lock()
_STATE: dict[str, object] = {"enabled": True}


def set_enabled(enabled: bool) -> bool:
    """Allow (default) or forbid the native kernel in this process; returns the previous
    setting. Forbidding it makes :meth:`UnitStats.update` take its torch paths, e.g. to
    compare them."""
    previous = bool(_STATE["enabled"])
    _STATE["enabled"] = bool(enabled)
    return previous


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    try:  # -march=native: the binary is only good for this CPU's instruction set
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    """``<tempdir>/deadrelu-<uid>``, created private; a fresh private directory instead if
    that one belongs to someone else or others may write to it (a library loaded from it
    runs in this process)."""
    uid = getattr(os, "getuid", lambda: 0)()
    cache = Path(tempfile.gettempdir()) / f"deadrelu-{uid}"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = cache.stat()
    if (hasattr(os, "getuid") and info.st_uid != uid) or info.st_mode & 0o022:
        return Path(tempfile.mkdtemp(prefix="deadrelu-"))
    return cache


def _build() -> ctypes.CDLL:
    """Compile (or find in the cache) and load the kernel; raises on any failure."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, g++, c++, clang++)")
    torch_lib = Path(torch.__file__).parent / "lib"
    link = (f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}") if torch_lib.is_dir() else ()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, " ".join((cxx, *FLAGS, *link)).encode(), _cpu_signature().encode()])
    ).hexdigest()[:16]
    cache = _cache_dir()
    target = cache / f"stats-{key}.so"
    if not target.exists():
        tmp = cache / f"stats-{key}.{os.getpid()}.tmp.so"
        cmd = [cxx, *FLAGS, str(SOURCE), "-o", str(tmp), *link]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: concurrent builders leave one good file
        log.info("deadrelu: built %s in %.1f s", target, time.perf_counter() - start)
    lib = ctypes.CDLL(str(target))
    fn = lib.deadrelu_stats_update
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    fn.argtypes = [p, p, p, i64, i64, i64, c_int, c_int, p, p, p, p, p, p, p, p]
    fn.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the kernel is enabled and built (building it on the first call)."""
    if not _STATE["enabled"]:
        return False
    if "lib" not in _STATE:
        with _LOCK:
            if "lib" not in _STATE:
                try:
                    _STATE["lib"] = _build()
                except Exception as exc:  # no compiler, no OpenMP, unwritable tempdir...
                    log.info("deadrelu: native statistics kernel unavailable (%s)", exc)
                    _STATE["lib"] = None
    return _STATE["lib"] is not None


def applies(
    z3: Tensor,
    out3: Tensor | None,
    accumulators: tuple[Tensor, ...],
    shift: Tensor | None = None,
) -> bool:
    """Whether :func:`update` can take this batch: ``z3`` (and ``out3``) contiguous float32
    ``(A, U, B)`` CPU tensors (plain strided ``Tensor`` s), accumulators (``positions,
    active, abs_sum, z_max, z_min, nonfinite``, and with a ``shift`` ``z_sum, z_m2``)
    contiguous CPU int64/float64 ones, a ``(U,)`` float32 ``shift``, and the kernel
    available. (:func:`inputs_apply` and :func:`accumulators_apply`, for callers that check
    the accumulators once.)"""
    return (
        inputs_apply(z3, out3, shift)
        and accumulators_apply(accumulators, z3.shape[1], shift is not None)
        and available()
    )


def inputs_apply(z3: Tensor, out3: Tensor | None, shift: Tensor | None = None) -> bool:
    """The batch's part of :func:`applies`: ``z3`` (and ``out3``, ``shift``) contiguous
    float32 plain CPU tensors with storage, ``shift`` of shape ``(U,)``."""
    inputs = [z3] + ([] if out3 is None else [out3]) + ([] if shift is None else [shift])
    for x in inputs:
        if type(x) is not Tensor or x.layout != torch.strided or x.device.type != "cpu":
            return False  # subclasses (DTensor...), sparse, other devices
        if x.dtype != torch.float32 or not x.is_contiguous():
            return False
        try:
            x.data_ptr()
        except RuntimeError:  # no storage: functorch (vmap, grad) wrappers, fake tensors
            return False
    return shift is None or shift.shape == (z3.shape[1],)


def accumulators_apply(accumulators: tuple[Tensor, ...], units: int, moments: bool) -> bool:
    """The accumulators' part of :func:`applies`: ``positions, active, abs_sum, z_max,
    z_min, nonfinite`` (and with ``moments`` ``z_sum, z_m2``), contiguous CPU int64/float64
    tensors of ``units`` elements (``positions`` 0-d)."""
    i64, f64 = torch.int64, torch.float64
    dtypes = [i64, i64, f64, f64, f64, i64] + ([f64, f64] if moments else [])
    if len(accumulators) != len(dtypes):
        return False
    for t, dtype in zip(accumulators, dtypes, strict=True):
        if type(t) is not Tensor or t.device.type != "cpu" or t.dtype != dtype:
            return False
        if not t.is_contiguous() or (t.dim() and t.numel() != units):
            return False
    return True


def threads(numel: int) -> int:
    """Threads for a batch of ``numel`` values: torch's count, at most one per
    :data:`GRAIN` values."""
    return max(1, min(torch.get_num_threads(), numel // GRAIN))


def update(
    z3: Tensor,
    out3: Tensor | None,
    mode: int,
    accumulators: tuple[Tensor, ...],
    shift: Tensor | None = None,
) -> None:
    """Reduce one batch and merge it into ``accumulators``, in place.

    Args:
        z3: ``(A, U, B)`` float32 pre-activation (B == 1 when units are last).
        out3: ``(A, U, B)`` activation output for ``mode`` :data:`MODE_OUT`, else None.
        mode: :data:`MODE_NONE` (``abs_sum`` untouched), :data:`MODE_RELU` (``abs_sum`` +=
            sum of relu(z)) or :data:`MODE_OUT` (+= sum of |out|).
        accumulators: ``positions`` (0-d), ``active``, ``abs_sum``, ``z_max``, ``z_min``,
            ``nonfinite`` (``(U,)``) of a :class:`~deadrelu.stats.UnitStats`, and with a
            ``shift`` its ``z_sum``, ``z_m2``, as checked by :func:`applies`.
        shift: ``(U,)`` finite float32 per-unit shift K of detail "full": the batch's sums
            of ``z - K`` and ``(z - K)**2`` are merged into ``z_sum`` and ``z_m2`` by
            Chan's formula (see :func:`deadrelu.stats._merge_full`). None for "range".
    """
    lib = _STATE["lib"]
    assert isinstance(lib, ctypes.CDLL), "call applies() first"
    assert mode != MODE_OUT or out3 is not None, "MODE_OUT needs out3"
    a_len, units, b_len = z3.shape
    moments = accumulators[6:] if shift is not None else (None, None)
    status = lib.deadrelu_stats_update(
        z3.data_ptr(),
        out3.data_ptr() if out3 is not None and mode == MODE_OUT else None,
        shift.data_ptr() if shift is not None else None,
        a_len,
        units,
        b_len,
        mode,
        threads(z3.numel()),
        *(t.data_ptr() for t in accumulators[:6]),
        *(t.data_ptr() if t is not None else None for t in moments),
    )
    if status != 0:
        raise MemoryError("deadrelu: the native statistics kernel could not allocate")
