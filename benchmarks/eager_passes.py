"""The cheapest torch formulation of each eager "range" statistic, per layout: A/B timings.

Prints one JSON object. For each layout (an ``(A, U, B)`` view of a conv map with units
before their positions, a ``channels_last`` map and an ``(N, L, D)`` activation with
units last), the activation is produced afresh by its layer before every timed call (the
statistics run right after their producer, as in a scan), and each formulation of one
statistic reduces it to ``(U,)``. Formulations of the same statistic rotate every round;
the JSON gives medians and IQRs (seconds per call) and each one's ratio to the first
(what ``deadrelu.stats`` used before this benchmark):

* active count: ``gt(z, 0, out=float buffer)`` then a float sum (exact below 2**24) /
  ``(z > 0).sum(dtype=int32)`` (a 1-byte bool tensor) / ``count_nonzero`` of the bools;
* extrema: ``amax`` and ``amin`` (two passes) / ``aminmax`` (one);
* the sum of |out| for ReLU: a plain sum (``out_nonnegative``).

``--threads 1 --clock thread`` (this thread's CPU time) is steadier on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import _stable_malloc as stable_malloc
from deadrelu.stats import _as_aub, _reduce, _units_last, scratch

CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "process": time.process_time,
    "thread": time.thread_time,
}


def layouts() -> dict[str, tuple[Callable[[], Tensor], int]]:
    """name -> (a function producing a fresh activation, its unit dim)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(32, 64, 32, 32)
    conv_cl = nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    ffn = nn.Linear(256, 1024).eval()
    xt = torch.randn(16, 128, 256)
    return {
        "channels_first (32,64,32,32)": (lambda: conv(x), 1),
        "channels_last (32,64,32,32)": (lambda: conv_cl(x_cl), 1),
        "units_last (16,128,1024)": (lambda: ffn(xt), -1),
    }


def _aminmax(z3: Tensor) -> tuple[Tensor, Tensor]:
    """Both extrema in one pass over the big dim, then over the small partials."""
    if z3.shape[2] == 1:
        lo, hi = torch.aminmax(z3[:, :, 0], dim=0)
        return hi, lo
    lo, hi = torch.aminmax(z3, dim=2)
    return hi.amax(0), lo.amin(0)


def formulations(z3: Tensor) -> dict[str, dict[str, Callable[[], Any]]]:
    """statistic -> formulation -> a call reducing ``z3``."""
    buf = scratch(z3.shape, torch.float32, z3.device)
    dims = (0, 2)
    return {
        "active": {
            "gt_float_sum": lambda: _reduce(torch.gt(z3, 0, out=buf), "sum"),
            "bool_sum_int32": lambda: (z3 > 0).sum(dims, dtype=torch.int32),
            "count_nonzero": lambda: torch.count_nonzero(z3 > 0, dims),
        },
        "extrema": {
            "amax_amin": lambda: (_reduce(z3, "amax"), _reduce(z3, "amin")),
            "aminmax": lambda: _aminmax(z3),
        },
        "abs_sum_relu": {
            "sum": lambda: _reduce(z3, "sum"),
        },
    }


def measure(rounds: int, clock: Callable[[], float]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with torch.no_grad():
        for name, (make, dim) in layouts().items():
            z = make()
            d = dim % z.dim()
            z3 = _as_aub(z, d, _units_last(z, d))
            per_stat: dict[str, Any] = {}
            for stat, forms in formulations(z3).items():
                keys = list(forms)
                times: dict[str, list[float]] = {k: [] for k in keys}
                for r in range(rounds):
                    for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                        fresh = make()  # the producer runs, then the statistic
                        z3.copy_(_as_aub(fresh, d, _units_last(fresh, d)))
                        start = clock()
                        forms[key]()
                        times[key].append(clock() - start)
                first = statistics.median(times[keys[0]])
                per_stat[stat] = {
                    k: {
                        "median_s": statistics.median(v),
                        "iqr_s": _iqr(v),
                        "vs_first": statistics.median(v) / first,
                    }
                    for k, v in times.items()
                }
            results[name] = per_stat
    return results


def _iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="short smoke pass")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    stable_malloc.add_argument(parser)
    args = parser.parse_args()
    malloc = stable_malloc.ensure(args.default_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 4 if args.quick else args.rounds
    out = {
        "benchmark": "eager_passes",
        "metric": "seconds per statistic call right after its producer (median, IQR)",
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "torch": torch.__version__,
        "malloc": malloc,
        "results": measure(rounds, CLOCKS[args.clock]),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
