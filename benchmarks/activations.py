"""Forward + backward time of each deadrelu activation module against torch's built-in.

Claim (issue 2): our forward passes use torch's fused kernels, so each module costs what
the torch module costs: every ratio ours / torch <= 1.05.

Method: one tensor of ``--elements`` values (float32, N(0, 1)), the same for both; one
timed step is ``y = m(x); y.backward(g)`` with a fixed upstream gradient ``g``. Our module
and torch's alternate within each repeat (the order flips every repeat), after warm-up;
one repeat times ``--inner`` back-to-back steps; the ratio is of the medians, measured
side by side in this one run. RReLU runs in training
mode (random slopes) for both; PReLU is compared with ``nn.PReLU`` (its weight gradient is
computed too). A second instance of the torch module is timed in the same rotation as an
A/A control: ``control_ratio`` (torch / torch) shows how noisy the run was.

Prints one JSON object. Usage: ``python benchmarks/activations.py [--elements N]
[--repeats R] [--inner K] [--threads T] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deadrelu.activations import get, names

TARGET = 1.05

#: The torch built-in for each registry name, built from our parameters.
TORCH_BUILTIN: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "relu": lambda p: nn.ReLU(),
    "leaky_relu": lambda p: nn.LeakyReLU(negative_slope=p["slope"]),
    "prelu": lambda p: nn.PReLU(num_parameters=p["num_parameters"], init=p["init"]),
    "rrelu": lambda p: nn.RReLU(lower=p["lower"], upper=p["upper"]),
    "elu": lambda p: nn.ELU(alpha=p["alpha"]),
    "selu": lambda p: nn.SELU(),
    "celu": lambda p: nn.CELU(alpha=p["alpha"]),
    "gelu": lambda p: nn.GELU(approximate=p["approximate"]),
    "silu": lambda p: nn.SiLU(),
    "mish": lambda p: nn.Mish(),
    "relu6": lambda p: nn.ReLU6(),
    "softplus": lambda p: nn.Softplus(beta=p["beta"], threshold=p["threshold"]),
    "hardswish": lambda p: nn.Hardswish(),
    "hardsigmoid": lambda p: nn.Hardsigmoid(),
    "hardtanh": lambda p: nn.Hardtanh(min_val=p["min_val"], max_val=p["max_val"]),
    "relu_squared": lambda p: _Written(lambda x: torch.relu(x) ** 2),
    "quick_gelu": lambda p: _Written(lambda x: x * torch.sigmoid(1.702 * x)),
}


class _Written(nn.Module):
    """torch has no module for ReLU² and QuickGELU: compare with the one-liner users write
    (Hugging Face's ReLUSquaredActivation, QuickGELUActivation)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


CASES = [*names(), "leaky_relu(0.2)", "elu(alpha=0.3)", "gelu(approximate=tanh)"]


def _step(
    module: nn.Module, x: torch.Tensor, g: torch.Tensor, sync: Callable[[], None], inner: int
) -> float:
    """Seconds per forward+backward, averaged over ``inner`` back-to-back steps."""
    sync()
    start = time.perf_counter()
    for _ in range(inner):
        x.grad = None
        for p in module.parameters():
            p.grad = None
        module(x).backward(g)
    sync()
    return (time.perf_counter() - start) / inner


def bench(elements: int, repeats: int, warmup: int, inner: int, device: str) -> dict[str, Any]:
    """Median forward+backward seconds of ours and torch's, per case, and their ratio."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(elements, generator=gen).to(device).requires_grad_(True)
    g = torch.randn(elements, generator=gen).to(device)
    sync: Callable[[], None] = (
        torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    )
    results: dict[str, Any] = {}
    for case in CASES:
        act = get(case)
        assert act is not None
        ours = act.module().to(device)
        theirs = TORCH_BUILTIN[act.name](dict(act.params)).to(device)
        control = TORCH_BUILTIN[act.name](dict(act.params)).to(device)
        modules = [ours, theirs, control]
        for _ in range(warmup):
            for module in modules:
                _step(module, x, g, sync, inner)
        times: list[list[float]] = [[], [], []]
        for r in range(repeats):
            order = [(r + k) % 3 for k in range(3)]  # rotate who goes first
            for i in order:
                times[i].append(_step(modules[i], x, g, sync, inner))
        m_ours, m_torch, m_control = (statistics.median(t) for t in times)
        results[str(act)] = {
            "ours_ms": round(m_ours * 1e3, 4),
            "torch_ms": round(m_torch * 1e3, 4),
            "ratio": round(m_ours / m_torch, 4),
            # A/A control: a second torch module against the first, timed the same way.
            # Its distance from 1 is the noise of this run.
            "control_ratio": round(m_control / m_torch, 4),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1_000_000, help="tensor size")
    parser.add_argument("--repeats", type=int, default=51, help="timed repeats per module")
    parser.add_argument("--inner", type=int, default=3, help="steps averaged in one repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repeats first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = bench(args.elements, args.repeats, args.warmup, args.inner, args.device)
    ratios = [r["ratio"] for r in results.values()]
    noise = max(abs(r["control_ratio"] - 1.0) for r in results.values())
    doc = {
        "benchmark": "activations_forward_backward",
        "claim": f"every ratio ours/torch <= {TARGET}",
        "elements": args.elements,
        "dtype": "float32",
        "repeats": args.repeats,
        "inner": args.inner,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "results": results,
        "max_ratio": max(ratios),
        "target": TARGET,
        "all_within_target": all(r <= TARGET for r in ratios),
        "max_control_deviation": round(noise, 4),
        "note": "ratios are meaningful only when max_control_deviation is well under 0.05",
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
