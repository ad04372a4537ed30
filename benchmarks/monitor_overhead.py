"""Overhead of :class:`deadrelu.monitor.Monitor` on a training step, side by side.

Prints one JSON object. For each model, every condition trains its own copy of the same
initial model on the same batch; the conditions are timed in interleaved blocks (order
rotated every round) and each round gives the ratio condition / plain, so machine noise
hits all conditions alike. The reported number is the median ratio over rounds.

Models (issue 3):

* ``mlp``: 4 x (Linear 512 + ReLU) + head, batch 256.
* ``cnn``: 2 x (Conv 3x3 + BatchNorm + ReLU) at 32 x 32, avg-pool, head; batch 64.
* ``transformer``: one pre-norm block (d=128, 4 heads, FFN 512 with ``F.relu``, a
  functional activation); batch 32 x 64 tokens.

Conditions:

* ``plain``: no hooks.
* ``monitor``: ``Monitor(model)`` with default settings (``every=10``: counts on 1 step
  in 10, hooks registered only on those steps).
* ``monitor_always``: the same with ``hooks="always"`` (hooks stay registered, gated by
  a flag; the setting ``torch.compile`` needs). Diagnostic, not a target.
* ``naive``: the hook a user would write, ``acc += (out > 0).sum(dims)`` on every call
  of every activation (for the functional ReLU of the transformer, on the Linear that
  feeds it, the closest a module hook gets).

Target: ``monitor`` median ratio <= 1.05 for each model. Timing on a shared machine is
noisy: run on a quiet machine for numbers to quote (``--clock cpu --threads 1`` measures
this process's CPU time instead of wall time, steadier when other processes compete for
the cores). ``--quick`` runs a short smoke pass. Unless ``--default-malloc`` is given, the
script re-executes itself with the glibc malloc settings of ``benchmarks/_stable_malloc.py``
(freed memory reused: page faults otherwise swing the timings by several percent).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import _stable_malloc as stable_malloc
from _blocks import Block
from deadrelu.monitor import Monitor

TARGET = 1.05


def make_mlp() -> tuple[nn.Module, Tensor, Tensor]:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 10))
    return model, torch.randn(256, 512), torch.randint(0, 10, (256,))


def make_cnn() -> tuple[nn.Module, Tensor, Tensor]:
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


def make_transformer() -> tuple[nn.Module, Tensor, Tensor]:
    return (
        Block(128, 4, 512, F.relu, classes=10),
        torch.randn(32, 64, 128),
        torch.randint(0, 10, (32,)),
    )


MODELS: dict[str, Callable[[], tuple[nn.Module, Tensor, Tensor]]] = {
    "mlp": make_mlp,
    "cnn": make_cnn,
    "transformer": make_transformer,
}


def naive_hooks(model: nn.Module) -> list[Any]:
    """What a user writes: count ``out > 0`` per unit on every call (no sampling)."""
    handles = []
    acc: dict[int, Tensor] = {}

    def hook(module: nn.Module, args: Any, out: Tensor) -> None:
        dims = tuple(i for i in range(out.dim()) if i != (1 if out.dim() == 4 else out.dim() - 1))
        count = (out > 0).sum(dims)
        key = id(module)
        acc[key] = acc[key] + count if key in acc else count

    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU) or name == "fc1":
            handles.append(m.register_forward_hook(hook))
    return handles


class Runner:
    """One condition: its own model copy, optimizer, and optional Monitor."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, condition: str) -> None:
        self.model = model
        self.x, self.y = x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.monitor: Monitor | None = None
        if condition == "monitor":
            self.monitor = Monitor(model).attach()
        elif condition == "monitor_always":
            self.monitor = Monitor(model, hooks="always").attach()
        elif condition == "naive":
            naive_hooks(model)

    def run(self, steps: int, clock: Callable[[], float] = time.perf_counter) -> float:
        """Seconds for ``steps`` training steps, on ``clock`` (a GPU synchronised)."""
        cuda = self.x.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.x.device)
        start = clock()
        for _ in range(steps):
            loss = F.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.monitor is not None:
                self.monitor.step()
        if cuda:
            torch.cuda.synchronize(self.x.device)
        return clock() - start


def bench_model(
    name: str,
    conditions: list[str],
    rounds: int,
    steps: int,
    clock: Callable[[], float] = time.perf_counter,
    device: torch.device | None = None,
) -> dict[str, Any]:
    torch.manual_seed(0)
    base, x, y = MODELS[name]()
    device = device or torch.device("cpu")
    base, x, y = base.to(device), x.to(device), y.to(device)
    runners = {c: Runner(copy.deepcopy(base), x, y, c) for c in conditions}
    for r in runners.values():  # warm-up: allocator, first sampled step, lazy site state
        r.run(steps)
    times: dict[str, list[float]] = {c: [] for c in conditions}
    ratios: dict[str, list[float]] = {c: [] for c in conditions if c != "plain"}
    for i in range(rounds):
        order = conditions[i % len(conditions) :] + conditions[: i % len(conditions)]
        t = {c: runners[c].run(steps, clock) for c in order}
        for c in conditions:
            times[c].append(t[c])
        for c in ratios:
            ratios[c].append(t[c] / t["plain"])
    out: dict[str, Any] = {
        "plain_ms_per_step": round(1e3 * statistics.median(times["plain"]) / steps, 3),
    }
    for c, rs in ratios.items():
        out[f"{c}_ratio_median"] = round(statistics.median(rs), 4)
        out[f"{c}_ratio_iqr"] = (
            [round(q, 4) for q in statistics.quantiles(rs, n=4)[::2]] if len(rs) >= 2 else None
        )
    out["target"] = TARGET
    out["monitor_meets_target"] = out["monitor_ratio_median"] <= TARGET
    mon = runners["monitor"].monitor
    assert mon is not None
    out["monitor_sites"] = mon.sites
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=20, help="training steps per block")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds x 10 steps")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: time.perf_counter (default); cpu: this process's CPU time "
        "(time.process_time), steadier on a shared machine, best with --threads 1",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    stable_malloc.add_argument(parser)
    args = parser.parse_args()
    malloc = stable_malloc.ensure(args.default_malloc)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.quick:
        args.rounds, args.steps = 3, 10
    if args.threads:
        torch.set_num_threads(args.threads)
    conditions = ["plain", "monitor", "monitor_always", "naive"]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    results = {
        name: bench_model(name, conditions, args.rounds, args.steps, clock, device)
        for name in args.models.split(",")
    }
    print(
        json.dumps(
            {
                "benchmark": "monitor_overhead",
                "torch": torch.__version__,
                "machine": platform.machine(),
                "threads": torch.get_num_threads(),
                "device": str(device),
                "rounds": args.rounds,
                "steps_per_block": args.steps,
                "clock": args.clock,
                "malloc": malloc,
                "monitor_defaults": {"every": 10, "window": 100, "detail": False},
                "results": results,
                "all_meet_target": all(r["monitor_meets_target"] for r in results.values()),
                "note": "median ratio condition/plain over interleaved rounds; noisy on a "
                "shared machine, quote numbers from a quiet one",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
