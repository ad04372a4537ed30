"""Throughput of :func:`deadrelu.scan.scan` against plain inference over the same data.

Prints one JSON object. For each model, ``plain`` runs the model in eval mode under
``torch.no_grad()`` over a fixed list of batches; each scan condition runs
``scan(model, batches, detail=..., kernel=...)`` over the same list. Every scan run is
paired with a plain run right before or after it (alternating; conditions rotate between
rounds), and each pair gives ``ratio = plain seconds / scan seconds``, i.e. scan
throughput / plain throughput, so machine noise hits both alike. The reported number is
the median ratio over rounds.

Conditions (``detail`` x kernel):

* ``default``: ``scan(model, batches)`` as a user calls it: the default statistics
  (``detail="range"``) by ``kernel="auto"`` (the fastest kernel measured in this process,
  per kind of activation; the compiled kernel competes because the warm-up compiled it):
  **target >= 0.9** (``meets_target``);
* ``range_native`` / ``range_compiled`` / ``range_eager``: the same statistics by one
  kernel (``kernel="native"``: the C++ one of ``deadrelu.native``, CPU float32 only;
  ``"compiled"``: ``torch.compile``-d; ``"eager"``: torch ops);
* ``full_auto`` / ``full_native`` / ``full_compiled`` / ``full_eager``: ``detail="full"``
  (adds the z mean and variance) by each;
* ``counts_eager``: ``detail="counts"`` (dead, dormant, rarely active only).

The kernels are compiled during the untimed warm-up. The JSON also gives the kernels each
condition ran and ``auto``'s trials (``report.meta["kernels"]``: candidates and their
best seconds per batch of each).

Models:

* ``mlp``: 4 x (Linear 1024 + ReLU) + head, batch 512.
* ``cnn``: a CIFAR-sized VGG/ResNet-like stack: Conv 3->64, 2 x Conv 64->64, Conv
  64->128 (stride 2), Conv 128->128, each with BatchNorm + ReLU, at 32 x 32; batch 32.
* ``transformer``: one pre-norm block (d=256, 4 heads, FFN 1024 with ``F.gelu``, a
  functional activation), batch 16 x 128 tokens.

Unless ``--default-malloc`` is given, the script re-executes itself with the glibc malloc
settings of ``benchmarks/_stable_malloc.py`` (freed memory reused: page faults were up to
half of plain inference time here and varied run to run), so that the ratios compare
computation, not the allocator's luck. Timing on a shared machine is still noisy: run on
a quiet machine for numbers to quote. ``--quick`` runs a short smoke pass.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import _stable_malloc as stable_malloc
from _blocks import Block
from _timing import timed
from deadrelu.scan import scan

TARGET = 0.9
TARGET_CONDITION = "default"
#: name -> scan keyword arguments
CONDITIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "range_native": {"detail": "range", "kernel": "native"},
    "range_compiled": {"detail": "range", "kernel": "compiled"},
    "range_eager": {"detail": "range", "kernel": "eager"},
    "full_auto": {"detail": "full"},
    "full_native": {"detail": "full", "kernel": "native"},
    "full_compiled": {"detail": "full", "kernel": "compiled"},
    "full_eager": {"detail": "full", "kernel": "eager"},
    "counts_eager": {"detail": "counts", "kernel": "eager"},
}


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
    "transformer": (functools.partial(Block, 256, 4, 1024, F.gelu), (16, 128, 256)),
}


def plain(model: nn.Module, batches: list[Tensor]) -> None:
    """Plain inference: eval, no_grad."""
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)


def bench(name: str, rounds: int, n_batches: int, device: torch.device) -> dict[str, Any]:
    """Median throughput ratios of every scan condition vs plain inference, one model."""
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().to(device)
    batches = [torch.randn(*shape, device=device) for _ in range(n_batches)]
    conditions: dict[str, Callable[[], Any]] = {"plain": lambda: plain(model, batches)}
    for key, kwargs in CONDITIONS.items():
        if device.type != "cpu" and kwargs.get("kernel") == "native":
            continue  # the native kernel is CPU-only
        conditions[key] = functools.partial(scan, model, batches, **kwargs)
    kernels = {}
    for key in ["range_compiled", "full_compiled", *conditions]:  # warm-up: compiles first
        if key in conditions and key not in kernels:
            result = conditions[key]()
            if key != "plain":
                kernels[key] = result.meta["kernels"]
    # Each scan run is paired with a plain run right before or after it (alternating), so
    # that both see the same machine state; the ratio of a pair is one sample.
    samples: dict[str, list[float]] = {k: [] for k in conditions if k != "plain"}
    plain_s: list[float] = []
    keys = list(samples)
    for r in range(rounds):
        for i, key in enumerate(keys[r % len(keys) :] + keys[: r % len(keys)]):
            if (r + i) % 2 == 0:
                p, t = timed(conditions["plain"], device), timed(conditions[key], device)
            else:
                t, p = timed(conditions[key], device), timed(conditions["plain"], device)
            samples[key].append(p / t)
            plain_s.append(p)
    ratios = {k: statistics.median(v) for k, v in samples.items()}
    iqrs = {
        k: (lambda q: q[2] - q[0])(statistics.quantiles(v, n=4, method="inclusive"))
        for k, v in samples.items()
        if len(v) >= 2
    }
    return {
        "batches": n_batches,
        "batch_shape": list(shape),
        "plain_s_median": statistics.median(plain_s),
        "ratios": ratios,
        "ratio_iqrs": iqrs,
        "kernels": kernels,
        "meets_target": ratios[TARGET_CONDITION] >= TARGET,
    }


def main() -> None:
    """Run every model and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke pass")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS)
    )
    stable_malloc.add_argument(parser)
    args = parser.parse_args()
    malloc = stable_malloc.ensure(args.default_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, n_batches = (2, 3) if args.quick else (args.rounds, args.batches)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    results = {name: bench(name, rounds, n_batches, device) for name in names}
    print(
        json.dumps(
            {
                "benchmark": "scan_throughput",
                "metric": "scan throughput / plain inference throughput (median over rounds)",
                "target_condition": f"{TARGET_CONDITION} (scan(model, batches))",
                "target": TARGET,
                "quick": args.quick,
                "rounds": rounds,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": str(device),
                "machine": platform.machine(),
                "malloc": malloc,
                "results": results,
                "all_meet_target": all(r["meets_target"] for r in results.values()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
