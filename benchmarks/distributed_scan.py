"""A scan split over 2 processes vs one process on the same data, and its all-reduce.

Prints one JSON object. Two processes (gloo, CPU, ``torch.multiprocessing`` spawn, each
with ``--threads`` torch threads) and a fixed list of ``--batches`` batches; each round,
after a barrier:

* ``one_process``: rank 0 alone runs ``scan(model, batches, group=False)`` over all the
  batches (rank 1 waits at the next barrier);
* ``two_processes``: each rank runs ``scan(model, batches[rank::2])``, which all-reduces
  the statistics at the end (sites agreed with one ``all_gather_object``, then
  :func:`deadrelu.stats.all_reduce_many`): the time until the slower rank has its report.

The order of the two alternates between rounds; one untimed round of each first (kernel
choice, allocator warm-up). ``throughput_ratio = one_process / two_processes`` seconds
(ideal 2 on 2 idle cores; both scans read the same data and return the same report,
``tests/test_distributed_scan.py``). ``all_reduce_ms``: the median time of
``all_reduce_many`` on the statistics of one report (every site, the scan's default
``detail``), i.e. the collective part of a report, over ``--rounds`` x 5 calls.

Models: ``mlp`` (4 x (Linear ``--width`` + ReLU) + head, batch ``--batch`` rows) or
``transformer`` (the FFN block of ``_blocks.py``, d=256, FFN 1024 with ``F.gelu``,
``--batch`` sequences of 128 tokens). Timing on a shared machine is noisy: run on a quiet
one for numbers to quote. ``--quick`` runs a short smoke pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from _blocks import Block
from deadrelu.scan import scan
from deadrelu.stats import all_reduce_many

WORLD = 2


def make_model(name: str, width: int) -> nn.Module:
    """The model, the same in every process (seed 0)."""
    torch.manual_seed(0)
    if name == "mlp":
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, 10)).eval()
    return Block(256, 4, 1024, F.gelu, classes=10).eval()


def make_batches(name: str, n: int, batch: int, width: int) -> list[Tensor]:
    """``n`` input batches, the same in every process."""
    g = torch.Generator().manual_seed(1)
    shape = (batch, width) if name == "mlp" else (batch, 128, 256)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _timed_scan(model: nn.Module, batches: list[Tensor], group: Any) -> float:
    start = time.perf_counter()
    scan(model, batches, group=group)
    return time.perf_counter() - start


def worker(rank: int, world: int, init: str, args: dict[str, Any], out: str) -> None:
    """One process: the rounds of both conditions; rank 0 writes the medians."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(args["threads"])
        model = make_model(args["model"], args["width"])
        batches = make_batches(args["model"], args["batches"], args["batch"], args["width"])
        times: dict[str, list[float]] = {"one_process": [], "two_processes": []}
        for r in range(args["rounds"] + 1):  # round 0: warm-up, not kept
            order = ["one_process", "two_processes"]
            for way in order if r % 2 == 0 else order[::-1]:
                dist.barrier()
                if way == "one_process":
                    took = _timed_scan(model, batches, False) if rank == 0 else 0.0
                else:
                    took = _timed_scan(model, batches[rank::world], None)
                slowest = torch.tensor([took], dtype=torch.float64)
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                if r > 0:
                    times[way].append(float(slowest))
        report = scan(model, batches[rank::world])
        stats = list(report.stats.values())
        reduce_s = []
        for _ in range(5 * args["rounds"]):
            dist.barrier()
            start = time.perf_counter()
            all_reduce_many(stats)
            reduce_s.append(time.perf_counter() - start)
        if rank == 0:
            one = statistics.median(times["one_process"])
            two = statistics.median(times["two_processes"])
            result = {
                "one_process_s": one,
                "two_processes_s": two,
                "throughput_ratio": one / two,
                "all_reduce_ms": statistics.median(reduce_s) * 1e3,
                "sites": len(stats),
                "units": sum(s.units for s in stats),
                "detail": stats[0].detail,
            }
            Path(out).write_text(json.dumps(result))
        dist.barrier()
        time.sleep(0.2)  # the gloo teardown deadlock (see ddp_all_reduce.py)
    finally:
        dist.destroy_process_group()


def main() -> None:
    """Spawn the two processes and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "transformer"], default="mlp")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4 batches, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds = 4, 2
    if args.model == "transformer" and args.batch == 256:
        args.batch = 16
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(
            worker,
            args=(WORLD, f"file://{Path(tmp) / 'pg'}", vars(args), out),
            nprocs=WORLD,
            join=True,
        )
        results = json.loads(Path(out).read_text())
    print(
        json.dumps(
            {
                "benchmark": "distributed_scan",
                "metric": (
                    "seconds per scan of all batches, median over rounds: rank 0 alone vs "
                    "2 gloo processes on halves (ratio: throughput 2-process / 1-process); "
                    "ms per all_reduce_many of one report's statistics"
                ),
                "model": args.model,
                "batches": args.batches,
                "batch": args.batch,
                "width": args.width if args.model == "mlp" else None,
                "threads_per_process": args.threads,
                "rounds": args.rounds,
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
