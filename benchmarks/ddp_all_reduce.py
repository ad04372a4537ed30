"""Cost of the Monitor's all-reduce under DDP: packed collectives vs one per field and site.

Prints one JSON object. Two processes (gloo, CPU, ``torch.multiprocessing`` spawn) each
hold the statistics of ``--sites`` call sites of ``--units`` units, as a Monitor does on a
sampled step, and reduce them across the group in two ways, interleaved in one run:

* ``packed``: :func:`deadrelu.stats.all_reduce_many` (what the Monitor calls): every
  site's tracked fields in one flat buffer per (reduction, dtype, device);
* ``per_field``: one ``all_reduce`` per field and site (9 per site), what the Monitor did
  before.

Reported: the median milliseconds per sampled step of each over ``--rounds`` rounds (rank
0's timing, after a barrier), and ``speedup = per_field / packed``, for the "counts"
statistics (the Monitor's default) and "full". Both give the same result (tested in
``tests/test_stats.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deadrelu.stats import UnitStats, all_reduce_many

OPS = {"sum": "SUM", "m2": "SUM", "max": "MAX", "min": "MIN"}


def per_field(stats: list[UnitStats]) -> None:
    """One collective per field and site (the reduction itself, without the M2 re-centring:
    a lower bound on the old cost)."""
    for s in stats:
        for name, how in UnitStats.REDUCE.items():
            dist.all_reduce(getattr(s, name), op=getattr(dist.ReduceOp, OPS[how]))


def worker(rank: int, world: int, init: str, args: dict[str, Any], out: str) -> None:
    """One process: time both ways for each level; rank 0 writes the medians."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        results: dict[str, dict[str, float]] = {}
        for level in ("counts", "full"):
            stats = [UnitStats.empty(args["units"], detail=level) for _ in range(args["sites"])]
            for s in stats:
                z = torch.randn(8, args["units"])
                s.update(z, torch.relu(z), 1)
            times: dict[str, list[float]] = {"packed": [], "per_field": []}
            for r in range(args["rounds"]):
                order = ["packed", "per_field"] if r % 2 == 0 else ["per_field", "packed"]
                for way in order:
                    dist.barrier()
                    start = time.perf_counter()
                    if way == "packed":
                        all_reduce_many(stats)
                    else:
                        per_field(stats)
                    times[way].append(time.perf_counter() - start)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            results[level] = {
                "packed_ms": med["packed"],
                "per_field_ms": med["per_field"],
                "speedup": med["per_field"] / med["packed"],
            }
        if rank == 0:
            Path(out).write_text(json.dumps(results))
        dist.barrier()
        # destroy_process_group holds the GIL while it joins gloo's worker thread, which may
        # still need it to free a finished collective's tensors: a deadlock seen with torch
        # 2.13. Sleeping releases the GIL and lets the thread finish first.
        time.sleep(0.2)
    finally:
        dist.destroy_process_group()


def main() -> None:
    """Spawn the two processes and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(
            worker,
            args=(2, f"file://{Path(tmp) / 'pg'}", vars(args), out),
            nprocs=2,
            join=True,
        )
        results = json.loads(Path(out).read_text())
    print(
        json.dumps(
            {
                "benchmark": "ddp_all_reduce",
                "metric": "ms per sampled Monitor step, median over rounds (2 gloo processes)",
                "sites": args.sites,
                "units": args.units,
                "rounds": args.rounds,
                "torch": torch.__version__,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
