"""Throughput of :func:`deadrelu.scan.scan` against plain inference over the same data.

Prints one JSON object. For each model, ``plain`` runs the model in eval mode under
``torch.no_grad()`` over a fixed list of batches; ``scan`` runs ``scan(model, batches)``
(default settings: eval, functional capture, full statistics) over the same list. The two
are timed in interleaved rounds (order alternating), and each round gives
``ratio = plain seconds / scan seconds``, i.e. scan throughput / plain throughput, so
machine noise hits both alike. The reported number is the median ratio over rounds;
``counts_only`` repeats the scan with ``detail=False`` and ``fused`` with ``fused=True``
(one compiled kernel per activation; compiled during the untimed warm-up).

Models:

* ``mlp``: 4 x (Linear 1024 + ReLU) + head, batch 512.
* ``cnn``: a CIFAR-sized VGG/ResNet-like stack: Conv 3->64, 2 x Conv 64->64, Conv
  64->128 (stride 2), Conv 128->128, each with BatchNorm + ReLU, at 32 x 32; batch 32.
* ``transformer``: one pre-norm block (d=256, 4 heads, FFN 1024 with ``F.gelu``, a
  functional activation), batch 16 x 128 tokens.

Target: ``scan`` median ratio >= 0.9 for each model (``ratio_scan``; ``ratio_fused`` is
what long scans get with ``fused=True``). Timing on a shared machine is
noisy: run on a quiet machine for numbers to quote. ``--quick`` runs a short smoke pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deadrelu.scan import scan

TARGET = 0.9


class Block(nn.Module):
    """Pre-norm transformer block with a functional GELU in the FFN; ``(N, L, d)``."""

    def __init__(self, d: int = 256, heads: int = 4, ffn: int = 1024) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, L, d)``."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def mlp() -> nn.Module:
    """4 hidden layers of 1024 with ReLU modules."""
    layers: list[nn.Module] = []
    width = 256
    for _ in range(4):
        layers += [nn.Linear(width, 1024), nn.ReLU()]
        width = 1024
    return nn.Sequential(*layers, nn.Linear(1024, 10))


def cnn() -> nn.Module:
    """Conv-BN-ReLU stack: 3->64, 64->64, 64->64, 64->128 (stride 2), 128->128."""
    spec = [(3, 64, 1), (64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1)]
    layers: list[nn.Module] = []
    for cin, cout, stride in spec:
        layers += [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (512, 256)),
    "cnn": (cnn, (32, 3, 32, 32)),
    "transformer": (Block, (16, 128, 256)),
}


def plain(model: nn.Module, batches: list[Tensor]) -> None:
    """Plain inference: eval, no_grad."""
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, rounds: int, n_batches: int) -> dict[str, Any]:
    """Median ratios of scan (and counts-only scan) vs plain inference for one model."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    batches = [torch.randn(*shape) for _ in range(n_batches)]
    conditions: dict[str, Callable[[], Any]] = {
        "plain": lambda: plain(model, batches),
        "scan": lambda: scan(model, batches),
        "counts_only": lambda: scan(model, batches, detail=False),
        "fused": lambda: scan(model, batches, fused=True),
    }
    for fn in conditions.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in conditions}
    order = list(conditions)
    for r in range(rounds):
        for key in order if r % 2 == 0 else reversed(order):
            times[key].append(timed(conditions[key]))
    ratios = {
        k: statistics.median(p / t for p, t in zip(times["plain"], times[k], strict=True))
        for k in ("scan", "counts_only", "fused")
    }
    return {
        "batches": n_batches,
        "batch_shape": list(shape),
        "plain_s_median": statistics.median(times["plain"]),
        "scan_s_median": statistics.median(times["scan"]),
        "ratio_scan": ratios["scan"],
        "ratio_counts_only": ratios["counts_only"],
        "ratio_fused": ratios["fused"],
        "meets_target": ratios["scan"] >= TARGET,
    }


def main() -> None:
    """Run every model and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke pass")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, n_batches = (2, 3) if args.quick else (args.rounds, args.batches)
    results = {name: bench(name, rounds, n_batches) for name in MODELS}
    print(
        json.dumps(
            {
                "benchmark": "scan_throughput",
                "metric": "scan throughput / plain inference throughput (median over rounds)",
                "target": TARGET,
                "quick": args.quick,
                "rounds": rounds,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
                "all_meet_target": all(r["meets_target"] for r in results.values()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
