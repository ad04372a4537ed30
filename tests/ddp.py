"""Helpers for the tests that run 2 gloo processes (``torch.multiprocessing`` spawn)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: Seconds the workers of one test may take before they are killed and the test fails
#: (they take a few seconds; without a limit a hang would stall the whole suite).
TIMEOUT = 180.0


def finish_process_group() -> None:
    """End a worker's process group without the teardown deadlock seen here (torch 2.13,
    gloo): ``destroy_process_group`` holds the GIL while it joins gloo's worker thread,
    and that thread may still be freeing a finished collective whose tensors are Python
    objects, which needs the GIL. A barrier, then a short sleep (which releases the GIL)
    lets the thread finish first."""
    dist.barrier()
    time.sleep(0.2)
    dist.destroy_process_group()


def spawn(fn: Callable[..., Any], args: tuple[Any, ...], nprocs: int) -> None:
    """``mp.spawn(fn, args, nprocs)``, failing the test (workers killed) if they have not
    all finished after :data:`TIMEOUT` seconds; a worker's exception is raised as is."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    assert context is not None
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{nprocs} gloo workers still running after {TIMEOUT:.0f} s: killed")


def run_ranks(worker: Callable[..., Any], out_dir: Path, world: int) -> list[Any]:
    """Run ``worker(rank, world, init_file, out_dir)`` in ``world`` spawned processes
    (:func:`spawn`) with gloo on the loopback interface (``GLOO_SOCKET_IFNAME=lo`` unless
    already set; restored afterwards), and return what each rank saved to
    ``out_dir/rank{r}.pt``, by rank."""
    old = os.environ.get("GLOO_SOCKET_IFNAME")
    os.environ["GLOO_SOCKET_IFNAME"] = old or "lo"
    try:
        spawn(worker, (world, str(out_dir / "init"), str(out_dir)), world)
    finally:
        if old is None:
            del os.environ["GLOO_SOCKET_IFNAME"]
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]
