"""Benchmark: the lab's batched trainer against the sequential loop, and its FLOP rate.

64 MLPs 40-100-100-10 on MNIST-1D, batch 100, plain SGD. Both paths train the same members
for the same steps (evaluation only at the first and last step, on a 100-row probe, so the
timing is the training loop). Printed as one JSON object:

* ``speedup``: batched steps per second (all members) / sequential steps per second;
* ``achieved_gflops``: training FLOPs of the batched run / its wall time, counting the
  matmuls only (forward 2*B*in*out per layer; backward the weight gradient of every layer
  and the input gradient of every layer but the first);
* ``dense_matmul_gflops``: the machine's rate on one 1024 x 1024 x 1024 float32 matmul,
  measured in the same run (best of several);
* ``fraction_of_dense``: achieved / dense.

Usage: ``python benchmarks/lab_trainer.py [--steps 200] [--members 64] [--threads N]``.
Numbers are only meaningful on a quiet machine (the lab runner trains with one intra-op
thread; ``--threads 1`` measures that configuration).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time

import torch

from deadrelu.lab.data import Dataset, load
from deadrelu.lab.trainer import Member, TrainConfig, train_batched, train_sequential

WIDTHS = (40, 100, 100, 10)


def train_flops(widths: tuple[int, ...], batch: int) -> float:
    """Matmul FLOPs of one SGD step of one member."""
    pairs = list(itertools.pairwise(widths))
    fwd = sum(2.0 * batch * a * b for a, b in pairs)
    wgrad = fwd
    xgrad = sum(2.0 * batch * a * b for a, b in pairs[1:])
    return fwd + wgrad + xgrad


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_gflops(n: int = 1024, reps: int = 10, device: torch.device | None = None) -> float:
    """Best-of-``reps`` GFLOP/s of an ``n x n x n`` float32 matmul."""
    device = device or torch.device("cpu")
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (0: torch's default)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")

    full = load("mnist1d", 0)
    # evaluation (at the first and last step only) on 200 test rows: the timing is training
    data = Dataset(
        full.name,
        full.x_train.to(dev),
        full.y_train.to(dev),
        full.x_test[:200].to(dev),
        full.y_test[:200].to(dev),
        10,
    )
    members = [Member(seed=s, lr=0.05) for s in range(args.members)]
    cfg = TrainConfig(
        widths=WIDTHS,
        steps=args.steps,
        batch_size=args.batch,
        eval_every=args.steps,
        probe_limit=100,
    )
    warm = TrainConfig(widths=WIDTHS, steps=5, batch_size=args.batch, eval_every=5, probe_limit=100)
    train_batched(members[:4], warm, data)
    train_sequential(members[:2], warm, data)

    dense = dense_gflops(device=dev)
    _sync(dev)
    t = time.perf_counter()
    train_batched(members, cfg, data)
    _sync(dev)
    batched_s = time.perf_counter() - t
    t = time.perf_counter()
    train_sequential(members, cfg, data)
    _sync(dev)
    sequential_s = time.perf_counter() - t
    dense = max(dense, dense_gflops(device=dev))

    flops = train_flops(WIDTHS, args.batch) * args.members * args.steps
    achieved = flops / batched_s / 1e9
    print(
        json.dumps(
            {
                "benchmark": "lab_trainer",
                "members": args.members,
                "widths": list(WIDTHS),
                "batch": args.batch,
                "steps": args.steps,
                "batched_s": round(batched_s, 4),
                "sequential_s": round(sequential_s, 4),
                "batched_member_steps_per_s": round(args.members * args.steps / batched_s, 1),
                "sequential_member_steps_per_s": round(args.members * args.steps / sequential_s, 1),
                "speedup": round(sequential_s / batched_s, 2),
                "target_speedup": 3.0,
                "achieved_gflops": round(achieved, 2),
                "dense_matmul_gflops": round(dense, 2),
                "fraction_of_dense": round(achieved / dense, 3),
                "target_fraction_of_dense": 0.5,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": str(dev),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
