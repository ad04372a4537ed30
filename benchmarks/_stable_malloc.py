"""glibc malloc settings for stable CPU timings, shared by the benchmarks.

With glibc's default settings every large tensor of a forward pass is mmap-ed afresh and
faulted in page by page; on this project's VMs the page faults were up to half of plain
CNN inference time and varied run to run with the heap's state (13k-21k faults per batch
measured), which swamps the few-percent ratios the benchmarks measure. With these
settings freed memory is kept and reused (0 faults per batch once warm).
"""

from __future__ import annotations

import argparse
import os
import sys

STABLE_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),
    "MALLOC_TRIM_THRESHOLD_": str(2**32),
    "MALLOC_TOP_PAD_": str(2**28),
}


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--default-malloc`` (keep glibc's defaults) to ``parser``."""
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's default malloc settings"
    )


def ensure(default_malloc: bool) -> dict[str, str] | str:
    """Re-execute this script with :data:`STABLE_MALLOC` in the environment unless it is
    already there or ``default_malloc``; returns what to record in the JSON."""
    if default_malloc:
        return "default"
    if any(os.environ.get(k) != v for k, v in STABLE_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STABLE_MALLOC})
    return STABLE_MALLOC
