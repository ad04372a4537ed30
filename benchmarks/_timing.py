"""Timing one block of work, shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def timed(
    fn: Callable[[], Any], device: torch.device, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds of ``clock`` (default: the wall clock) that one call of ``fn`` takes, the
    device synchronised before and after on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start
