"""Why the native statistics kernel wins or loses on this CPU: A/B interleaved timings.

Prints one JSON object. For each activation shape (a conv map channels first and
channels last, an MLP layer, a transformer FFN: units last), the activation is produced
afresh by its layer before every timed call (so the statistics run *in situ*, right
after the producer, as in a scan), and each candidate reduces it at detail "range"
(ReLU mode: one read of z). Candidates rotate every round; the JSON gives each one's
median and IQR seconds per call and its ratio to eager's median.

Candidates:

* ``eager``: :meth:`UnitStats.update` with ``kernel="eager"`` (the reference);
* ``native``: the library's kernel as built (``-O3 -march=native``), threads as the
  library chooses (:func:`deadrelu.native.threads`);
* ``native_t1``: the same library, one thread;
* one per extra build (``--flags``): the same source compiled with other flags into the
  temp dir, e.g. ``-mprefer-vector-width=256`` (AVX-512 code as 256-bit ops) or
  ``-march=x86-64-v3`` (AVX2 + FMA only), each at torch's thread count.

``--wait-policy`` re-runs the script with ``OMP_WAIT_POLICY`` set (libgomp's spin-wait of
idle pool threads after a parallel region). Timing on a shared machine is noisy: only the
interleaved medians compare, and only within one run; on a loaded machine ``--threads 1
--clock thread`` (this thread's CPU time) excludes the time the process is preempted.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import _stable_malloc as stable_malloc
from deadrelu import native
from deadrelu.stats import UnitStats

DEFAULT_FLAGS = ["-march=native -mprefer-vector-width=256", "-march=x86-64-v3", "-march=native -O2"]


def producers() -> dict[str, tuple[Callable[[], Tensor], int]]:
    """name -> (a function producing a fresh activation, its unit dim)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(32, 64, 32, 32)
    conv_cl = nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    mlp = nn.Linear(1024, 1024).eval()
    xm = torch.randn(512, 1024)
    ffn = nn.Linear(256, 1024).eval()
    xt = torch.randn(16, 128, 256)
    return {
        "conv_channels_first (32,64,32,32)": (lambda: conv(x), 1),
        "conv_channels_last (32,64,32,32)": (lambda: conv_cl(x_cl), 1),
        "mlp_units_last (512,1024)": (lambda: mlp(xm), -1),
        "ffn_units_last (16,128,1024)": (lambda: ffn(xt), -1),
    }


def build(flags: str) -> ctypes.CDLL:
    """The kernel's source compiled with ``-O3`` (unless given) and ``flags``."""
    words = flags.split()
    if not any(w.startswith("-O") for w in words):
        words = ["-O3", *words]
    torch_lib = Path(torch.__file__).parent / "lib"
    out = Path(tempfile.gettempdir()) / f"deadrelu-bench-{abs(hash(flags))}.so"
    cmd = [
        "g++",
        *words,
        "-fopenmp",
        "-shared",
        "-fPIC",
        "-std=c++17",
        str(native.SOURCE),
        "-o",
        str(out),
        f"-L{torch_lib}",
        f"-Wl,-rpath,{torch_lib}",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(str(out))
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.deadrelu_stats_update.argtypes = [p, p, p, i64, i64, i64, c_int, c_int] + [p] * 8
    lib.deadrelu_stats_update.restype = ctypes.c_int
    return lib


def call(lib: ctypes.CDLL, s: UnitStats, z: Tensor, dim: int, threads: int) -> None:
    """What :func:`deadrelu.native.update` does for ReLU at "range", with ``lib``."""
    if dim == 1 and z.is_contiguous():
        z3 = z.reshape(z.shape[0], z.shape[1], -1)
    else:
        z3 = z.movedim(dim, -1).reshape(-1, z.shape[dim], 1)
    a, u, b = z3.shape
    accs = (s.positions, s.active, s.abs_sum, s.z_max, s.z_min, s.nonfinite)
    status = lib.deadrelu_stats_update(
        z3.data_ptr(), None, None, a, u, b, 1, threads, *(t.data_ptr() for t in accs), None, None
    )
    assert status == 0


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "process": time.process_time,
    "thread": time.thread_time,
}


def _candidates(
    lib: ctypes.CDLL, libs: dict[str, ctypes.CDLL], s: UnitStats, dim: int
) -> dict[str, Callable[[Tensor], Any]]:
    """name -> a function reducing one activation into ``s``."""
    threads = torch.get_num_threads()
    candidates: dict[str, Callable[[Tensor], Any]] = {
        "eager": lambda z: s.update(z, z, dim, kernel="eager", relu=True),
        "native": lambda z: call(lib, s, z, dim, native.threads(z.numel())),
        "native_t1": lambda z: call(lib, s, z, dim, 1),
    }
    for f, built in libs.items():
        candidates[f"native[{f}]"] = lambda z, built=built: call(built, s, z, dim, threads)
    return candidates


def measure(rounds: int, flags: list[str], clock: Callable[[], float]) -> dict[str, Any]:
    """Median/IQR seconds of every candidate on every producer, interleaved."""
    assert native.available(), "no C++ compiler: nothing to profile"
    lib = native._STATE["lib"]
    assert isinstance(lib, ctypes.CDLL)
    libs = {f: build(f) for f in flags}
    results: dict[str, Any] = {}
    for name, (make, dim) in producers().items():
        units = make().shape[dim]
        candidates = _candidates(lib, libs, UnitStats.empty(units, detail="range"), dim)
        times: dict[str, list[float]] = {k: [] for k in candidates}
        produce: list[float] = []
        keys = list(candidates)
        with torch.no_grad():
            for key in keys:  # warm-up
                candidates[key](make())
            for r in range(rounds):
                for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                    start = clock()
                    z = make()
                    mid = clock()
                    candidates[key](z)
                    times[key].append(clock() - mid)
                    produce.append(mid - start)
        eager_median = statistics.median(times["eager"])
        results[name] = {
            "producer_s_median": statistics.median(produce),
            "candidates": {
                k: {
                    "median_s": statistics.median(v),
                    "iqr_s": _iqr(v),
                    "vs_eager": statistics.median(v) / eager_median,
                }
                for k, v in times.items()
            },
        }
    return results


def _iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="short smoke pass")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--flags",
        action="append",
        help="extra build flags to compare (repeatable); default: " + "; ".join(DEFAULT_FLAGS),
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall time, this process's CPU time, or this thread's CPU time (with --threads "
        "1: immune to the other processes' preemption on a loaded machine)",
    )
    parser.add_argument("--wait-policy", choices=["active", "passive"], default=None)
    stable_malloc.add_argument(parser)
    args = parser.parse_args()
    if args.wait_policy and os.environ.get("OMP_WAIT_POLICY") != args.wait_policy:
        env = {**os.environ, "OMP_WAIT_POLICY": args.wait_policy}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    malloc = stable_malloc.ensure(args.default_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 5 if args.quick else args.rounds
    flags = DEFAULT_FLAGS if args.flags is None else args.flags
    print(
        json.dumps(
            {
                "benchmark": "native_profile",
                "metric": "seconds per statistics call right after its producer (median, IQR)",
                "rounds": rounds,
                "threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "cpu": platform.processor() or _cpu_model(),
                "malloc": malloc,
                "clock": args.clock,
                "results": measure(rounds, flags, CLOCKS[args.clock]),
            },
            indent=1,
        )
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
