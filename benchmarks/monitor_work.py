"""The Monitor's own work per counted training forward, in thread CPU time (noise-robust).

Step-time ratios (``monitor_overhead.py``, ``zoo_scan.py``) on a shared 2-core machine have
IQRs of 0.05-0.15, wider than the Monitor's cost. This script measures the Monitor's part
directly instead: a torchvision resnet18 (random init, ``nn.ReLU(inplace=True)``, one
module reused twice per block) in training mode, ``Monitor(model, every=1)``, one torch
thread; for each forward, the thread CPU time spent inside the Monitor's capture callbacks
(``Monitor._on_call`` and, where the library has them, ``_on_z`` / ``_on_out`` for
in-place modules) plus capture's copies of in-place ``z`` (``deadrelu.capture._copy``).
Prints one JSON object: the median and minimum over ``--reps`` forwards per detail level,
and the median forward time for scale (not a ratio: the rest of the forward is the same
with any library version).

Compare library versions by ``PYTHONPATH``, e.g.
``PYTHONPATH=/tmp/before/src python benchmarks/monitor_work.py`` (a ``git archive`` copy).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import deadrelu.capture as capture
from deadrelu.monitor import Monitor
from deadrelu.zoo import import_torchvision

_SPENT = [0.0]


def _timed(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _SPENT[0] += time.thread_time() - start

    return wrapper


def measure(detail: str, reps: int, batch: int, size: int) -> dict[str, Any]:
    """Per counted forward: Monitor callback + copy ms (median, min), forward ms (median)."""
    torchvision = import_torchvision()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).train()
    x = torch.randn(batch, 3, size, size)
    mon = Monitor(model, every=1, detail=False if detail == "counts" else detail).attach()
    work: list[float] = []
    forward: list[float] = []
    with torch.no_grad():  # z is detached by the capture anyway; the backward is not timed
        for i in range(reps + 2):  # two warm-up forwards (kernel choice, allocations)
            _SPENT[0] = 0.0
            start = time.thread_time()
            model(x)
            spent = time.thread_time() - start
            mon.step()
            if i >= 2:
                work.append(_SPENT[0] * 1e3)
                forward.append(spent * 1e3)
    mon.detach()
    return {
        "monitor_work_ms_median": round(statistics.median(work), 3),
        "monitor_work_ms_min": round(min(work), 3),
        "forward_ms_median": round(statistics.median(forward), 2),
        "sites": len(mon.sites),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--details", default="counts,range")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in ("_on_call", "_on_z", "_on_out"):
        if hasattr(Monitor, name):
            setattr(Monitor, name, _timed(getattr(Monitor, name)))
    capture._copy = _timed(capture._copy)  # type: ignore[assignment]
    results = {
        d: measure(d, args.reps, args.batch_size, args.size) for d in args.details.split(",")
    }
    print(
        json.dumps(
            {
                "benchmark": "monitor_work",
                "model": "resnet18",
                "input": [args.batch_size, 3, args.size, args.size],
                "metric": "thread CPU ms per counted forward in Monitor callbacks + z copies",
                "torch": torch.__version__,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
