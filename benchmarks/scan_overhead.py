"""Where a scan's time goes beyond plain inference, per zoo model, in thread CPU time.

Prints one JSON object. For each model of ``zoo_scan.py`` (random init), all in one
process, one torch thread, each quantity the median of ``--reps`` interleaved repetitions
of :func:`time.thread_time` (CPU time of this thread: time spent waiting for a core on a
loaded machine is not counted, unlike wall-clock):

* ``plain_ms``: one plain forward (``torch.no_grad``, eval) of a real-size batch;
* ``hooks_ms``: the same forward with :func:`deadrelu.capture.attach` hooked (attached
  before, removed after: not timed) and no-op callbacks, minus ``plain_ms``: the
  capture's per-batch cost (module hooks, the torch-function mode);
* ``stats_ms``: the statistics of one batch, scan's own calls of
  :meth:`~deadrelu.stats.UnitStats.update` / ``update_z`` / ``add_output`` as they happen
  inside the forward (each timed where it runs, summed), split into ``stats_kernel_ms``
  (the time inside the kernels' reductions, measured by re-running each call's reduction
  alone right after it on the same batch: what remains is Python per call) and
  ``stats_python_ms`` (``stats_ms - stats_kernel_ms``), with ``calls`` per batch;
* ``fixed_ms``: what one ``scan`` call costs besides its batches: ``scan`` over one tiny
  batch minus a hooked forward of it (attach and remove, eval flags, the statistics'
  creation, the report), of which ``attach_remove_ms`` attaching the capture and removing
  it;
* ``unexplained_ms``: ``scan_1_ms - plain_ms - hooks_ms - stats_ms - fixed_ms`` (e.g. the
  forward's own work slowed by the statistics' reads evicting its data from the caches);
* ``scan_1_ms``, ``scan_3_ms``: one ``scan(model, batches)`` over 1 and 3 real batches
  (the auto trials done before: they happen once per process), and
  ``ratio_3 = 3 * plain_ms / scan_3_ms``, the throughput ratio zoo_scan measures.

Usage: ``python benchmarks/scan_overhead.py [--models resnet18,...] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import _stable_malloc as stable_malloc
import zoo_scan
from deadrelu import stats as stats_module
from deadrelu.capture import attach
from deadrelu.scan import scan


def _cpu(fn: Callable[[], Any]) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


class _StatsTimer:
    """Wraps UnitStats.update / update_z / add_output: total CPU time of the calls, and of
    the same calls repeated on throwaway copies (the reduction alone, warm)."""

    def __init__(self) -> None:
        self.total = self.kernel = 0.0
        self.calls = 0
        self._orig: dict[str, Callable[..., Any]] = {}

    def __enter__(self) -> _StatsTimer:
        cls = stats_module.UnitStats
        for name in ("update", "update_z", "add_output"):
            orig = getattr(cls, name)
            self._orig[name] = orig

            def wrapped(s: Any, *args: Any, _orig: Any = orig, **kwargs: Any) -> Any:
                start = time.thread_time()
                result = _orig(s, *args, **kwargs)
                self.total += time.thread_time() - start
                self.calls += 1
                return result

            setattr(cls, name, wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, orig in self._orig.items():
            setattr(stats_module.UnitStats, name, orig)


def _kernel_only(batch: Any, model: torch.nn.Module) -> float:
    """CPU time of the reductions alone: each (z, out) a scan reduces, captured once, then
    reduced again with the kernel that scan chose, outside the forward."""
    captured: list[tuple[Tensor, Tensor, int, bool]] = []

    def keep(site: Any, z: Tensor, out: Tensor) -> None:
        relu = site.activation.spec.name == "relu"
        captured.append((z.clone(), out.clone(), site.unit_dim, relu))

    with attach(model, keep), torch.no_grad():
        zoo_scan._forward(model, batch)
    total = 0.0
    for z, out, dim, relu in captured:
        units = z.shape[dim] if z.dim() > 1 else z.numel()
        s = stats_module.UnitStats.empty(units, detail="range")
        s.update(z, out, dim, relu=relu)  # the choice is already made (warm-up)
        total += _cpu(lambda: s.update(z, out, dim, relu=relu))  # noqa: B023
    return total


def bench(name: str, reps: int, batch: int, size: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model, make = zoo_scan.MODELS[name](batch, size)
    model.eval()
    batches = [make() for _ in range(3)]
    first = batches[0]
    tiny: Any  # one small batch: the per-call costs without the work
    if isinstance(first, dict):
        tiny = {k: v[:1, :8] for k, v in first.items()}
    else:
        tiny = first[:1] if name.startswith("vit") else torch.randn(1, 3, 32, 32)
    noop = (lambda s, z, o: None, (lambda s, z: None, lambda s, o: None))

    def plain(b: Any) -> None:
        with torch.no_grad():
            zoo_scan._forward(model, b)

    def hooked(b: Any) -> None:  # attached once, outside: the per-batch cost
        with attach(model, noop[0], inplace=noop[1]):
            handle_time = _cpu(lambda: plain(b))
        extra.append(handle_time)

    extra: list[float] = []

    scan(model, batches)  # auto's trials, builds: once per process
    scan(model, [tiny])
    samples: dict[str, list[float]] = {
        k: []
        for k in (
            "plain",
            "hooked",
            "tiny_plain",
            "tiny_hooked",
            "tiny_scan",
            "attach",
            "scan_1",
            "scan_3",
        )
    }
    stats_total: list[float] = []
    stats_calls = 0
    for _ in range(reps):
        samples["plain"].append(_cpu(lambda: plain(batches[0])))
        hooked(batches[0])
        samples["hooked"].append(extra.pop())
        samples["tiny_plain"].append(_cpu(lambda: plain(tiny)))
        hooked(tiny)
        samples["tiny_hooked"].append(extra.pop())
        samples["attach"].append(_cpu(lambda: attach(model, noop[0], inplace=noop[1]).remove()))
        samples["tiny_scan"].append(_cpu(lambda: scan(model, [tiny])))
        with _StatsTimer() as timer:
            samples["scan_1"].append(_cpu(lambda: scan(model, batches[:1])))
        stats_total.append(timer.total)
        stats_calls = timer.calls
        samples["scan_3"].append(_cpu(lambda: scan(model, batches)))
    kernel = statistics.median(_kernel_only(batches[0], model) for _ in range(reps))
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    stats_ms = statistics.median(stats_total) * 1e3
    return {
        "batch_size": batch,
        "input_size": size,
        "plain_ms": med["plain"],
        "hooks_ms": med["hooked"] - med["plain"],
        "stats_ms": stats_ms,
        "stats_kernel_ms": kernel * 1e3,
        "stats_python_ms": stats_ms - kernel * 1e3,
        "calls": stats_calls,
        "fixed_ms": med["tiny_scan"] - med["tiny_hooked"],
        "attach_remove_ms": med["attach"],
        "unexplained_ms": med["scan_1"]
        - med["plain"]
        - (med["hooked"] - med["plain"])
        - stats_ms
        - (med["tiny_scan"] - med["tiny_hooked"]),
        "tiny_plain_ms": med["tiny_plain"],
        "tiny_hooks_ms": med["tiny_hooked"] - med["tiny_plain"],
        "scan_1_ms": med["scan_1"],
        "scan_3_ms": med["scan_3"],
        "ratio_1": med["plain"] / med["scan_1"],
        "ratio_3": 3 * med["plain"] / med["scan_3"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo_scan.MODELS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="image side (tokens for OPT: 128)")
    stable_malloc.add_argument(parser)
    args = parser.parse_args()
    malloc = stable_malloc.ensure(args.default_malloc)
    torch.set_num_threads(1)
    results = {
        name: bench(name, args.reps, args.batch_size, 128 if name == "opt_tiny" else args.size)
        for name in args.models.split(",")
        if name
    }
    print(
        json.dumps(
            {
                "benchmark": "scan_overhead",
                "metric": "thread CPU ms, medians over reps, one torch thread",
                "torch": torch.__version__,
                "malloc": malloc,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
