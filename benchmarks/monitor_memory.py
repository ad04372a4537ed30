"""Memory of the Monitor's state per unit, and that it does not grow with the batches.

Prints one JSON object. An MLP of 4 x 512 ReLU units (2048 units) is trained with a
:class:`deadrelu.monitor.Monitor` for 10, 100 and 1000 steps; after every step the bytes of
every tensor the Monitor keeps (:meth:`Monitor.state_nbytes`) are read, and the peak is
reported per unit. The history (one row of S integers per sampled step) is the one part
that grows, by design; it is reported apart, in bytes per sampled step.

Settings measured: the defaults (``every=10``, ``detail=False``), ``detail=True`` (z
moments and extrema), and ``track_grad=True``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deadrelu.monitor import Monitor

UNITS_PER_LAYER = 512
LAYERS = 4


def make_mlp() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(LAYERS):
        layers += [nn.Linear(UNITS_PER_LAYER, UNITS_PER_LAYER), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(UNITS_PER_LAYER, 10))


def history_bytes(mon: Monitor) -> int:
    """Python-object size of the history rows (ints in lists), approximately."""
    h = mon.history
    total = sys.getsizeof(h.steps) + sum(sys.getsizeof(s) for s in h.steps)
    for row in h.dead:
        total += sys.getsizeof(row) + sum(sys.getsizeof(v) for v in row)
    return total


def measure(steps: int, batch: int, **kwargs: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, UNITS_PER_LAYER)
    y = torch.randint(0, 10, (batch,))
    peak = 0
    with Monitor(model, **kwargs) as mon:
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            mon.step()
            peak = max(peak, mon.state_nbytes())
    units = sum(mon._sites[s].units for s in mon.sites)
    return {
        "steps": steps,
        "units": units,
        "state_bytes_peak": peak,
        "state_bytes_per_unit": peak / units,
        "history_rows": len(mon.history.steps),
        "history_bytes": history_bytes(mon),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="10 and 100 steps only")
    args = parser.parse_args()
    torch.set_num_threads(1)  # memory, not speed: avoid thread-pool contention
    step_counts = [10, 100] if args.quick else [10, 100, 1000]
    settings = {
        "default": {},
        "detail": {"detail": True},
        "track_grad": {"track_grad": True},
    }
    results: dict[str, Any] = {}
    for name, kwargs in settings.items():
        runs = [measure(n, args.batch, **kwargs) for n in step_counts]
        per_unit = {r["steps"]: r["state_bytes_per_unit"] for r in runs}
        rows = [r for r in runs if r["history_rows"]]
        results[name] = {
            "settings": kwargs,
            "state_bytes_per_unit": per_unit,
            "independent_of_batches": len(set(per_unit.values())) == 1,
            "history_bytes_per_sampled_step": (
                (rows[-1]["history_bytes"] - rows[0]["history_bytes"])
                / max(rows[-1]["history_rows"] - rows[0]["history_rows"], 1)
            ),
            "runs": runs,
        }
    print(
        json.dumps(
            {
                "benchmark": "monitor_memory",
                "torch": torch.__version__,
                "model": f"MLP {LAYERS} x {UNITS_PER_LAYER} ReLU, batch {args.batch}",
                "results": results,
                "all_independent_of_batches": all(
                    r["independent_of_batches"] for r in results.values()
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
