"""scan on real zoo architectures, the Monitor training resnet18, and the peers' checks.

Prints one JSON object. Models (random init from their configs; nothing is downloaded):
torchvision ``resnet18`` and ``resnet50``, timm ``vit_tiny_patch16_224`` and
``convnext_atto``, and a tiny Hugging Face OPT (2 layers, d=64, ReLU FFN of 256).

Per model, every condition runs over the same fixed list of batches and is paired with a
plain-inference run right before or after it (alternating; conditions rotate between
rounds); each pair gives ``ratio = plain seconds / condition seconds`` (throughput of the
condition relative to plain inference: 1.0 costs nothing, 0.5 halves the throughput).
The JSON gives each condition's median ratio and its IQR over rounds:

* ``scan_default``: ``scan(model, batches)`` (detail "range", ``kernel="auto"``): target
  >= 0.9 (``meets_target``), aim 0.95;
* ``scan_eager``: the same statistics by eager torch ops (``kernel="eager"``);
* ``scan_counts``: ``detail="counts"`` (dead, dormant, rarely active only);
* ``scan_compiled`` (with ``--with-compiled``): ``kernel="compiled"`` (``torch.compile``;
  Triton on a GPU), compiled during the warm-up, before the default's trials;
* ``naive_hook``: what a user writes, a forward hook ``acc += (out > 0).sum(dims)`` per
  activation module (``nn.ReLU``, ``nn.GELU``... by class);
* ``torchdiag``: ``torchdiag.check_dead_neurons(model, batch)`` per batch (its own
  forward; its printing to stdout is discarded), where ``torchdiag`` is installed (the
  ``bench`` extra).

``kernels`` gives what ``scan_default``'s ``kernel="auto"`` chose per site kind
(``report.meta["kernels"]``). ``monitor``: the Monitor's overhead per training step of
resnet18 (SGD, cross-entropy), ``Monitor(model)`` (defaults, ``every=10``) and
``Monitor(model, every=1)``, each with its own model copy, steps interleaved with plain
steps in blocks; ratio = condition step time / plain step time (targets <= 1.02 and
<= 1.05).

``--device cuda`` runs everything on the GPU (synchronised around each timed block).
Timing on a shared machine is noisy: only the paired ratios compare; quote medians with
their IQRs. ``--clock cpu`` times with the process's CPU time (:func:`time.process_time`)
instead of the wall clock: on a CPU shared with other processes, time spent waiting for a
core is then not counted (use it with ``--threads 1``: idle OpenMP threads spin, and
their spinning would count). ``--quick``: small images, few batches and rounds (a smoke
pass, not numbers to quote). Unless ``--default-malloc``, re-executes itself with the
malloc settings of ``_stable_malloc.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
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
from _timing import timed
from deadrelu.scan import scan
from deadrelu.zoo import import_torchvision

TARGET = 0.9
ACTIVATION_CLASSES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
)

Batch = Tensor | dict[str, Tensor]


def _vision(name: str) -> Callable[[int, int], tuple[nn.Module, Callable[[], Batch]]]:
    def make(batch: int, size: int) -> tuple[nn.Module, Callable[[], Batch]]:
        if name.startswith("resnet"):
            torchvision = import_torchvision()  # before timm, which imports it too
            model: nn.Module = getattr(torchvision.models, name)(weights=None)
        else:
            import_torchvision()
            import timm

            kwargs: dict[str, Any] = {"img_size": size} if name.startswith("vit") else {}
            model = timm.create_model(name, pretrained=False, **kwargs)
        return model, lambda: torch.randn(batch, 3, size, size)

    return make


def _opt(batch: int, size: int) -> tuple[nn.Module, Callable[[], Batch]]:
    """A tiny OPT (random init) over ``batch`` sequences of ``size`` tokens."""
    import_torchvision()  # transformers imports torchvision, whose C ops need this on CPU
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        ffn_dim=256,
        num_attention_heads=4,
        max_position_embeddings=max(size, 16) + 2,
        word_embed_proj_dim=64,
    )
    model = OPTForCausalLM(config)
    return model, lambda: {"input_ids": torch.randint(0, 1000, (batch, size))}


MODELS: dict[str, Callable[[int, int], tuple[nn.Module, Callable[[], Batch]]]] = {
    "resnet18": _vision("resnet18"),
    "resnet50": _vision("resnet50"),
    "vit_tiny_patch16_224": _vision("vit_tiny_patch16_224"),
    "convnext_atto": _vision("convnext_atto"),
    "opt_tiny": _opt,
}


def _forward(model: nn.Module, batch: Batch) -> Any:
    return model(**batch) if isinstance(batch, dict) else model(batch)


def plain(model: nn.Module, batches: list[Batch]) -> None:
    model.eval()
    with torch.no_grad():
        for b in batches:
            _forward(model, b)


def naive_hook(model: nn.Module, batches: list[Batch]) -> dict[str, Tensor]:
    """Forward hooks counting ``out > 0`` per unit (dim 1 for maps, the last dim else)."""
    acc: dict[str, Tensor] = {}
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            unit = 1 if out.dim() == 4 else out.dim() - 1
            dims = tuple(i for i in range(out.dim()) if i != unit)
            count = (out > 0).sum(dims)
            key = f"{name}:{count.numel()}"  # a module reused at several widths (resnet50)
            acc[key] = acc[key] + count if key in acc else count

        return hook

    for name, m in model.named_modules():
        if isinstance(m, ACTIVATION_CLASSES):
            handles.append(m.register_forward_hook(hook_for(name)))
    try:
        plain(model, batches)
    finally:
        for h in handles:
            h.remove()
    return acc


def torchdiag_check(model: nn.Module, batches: list[Batch]) -> None:
    """``torchdiag.check_dead_neurons`` on every batch, its printing discarded."""
    import torchdiag

    model.eval()
    with contextlib.redirect_stdout(io.StringIO()):
        for b in batches:
            if isinstance(b, dict):  # it calls model(sample_input): positional only
                torchdiag.check_dead_neurons(_Kwargs(model), b)  # type: ignore[arg-type]
            else:
                torchdiag.check_dead_neurons(model, b)


class _Kwargs(nn.Module):
    """``model(**batch)`` as ``wrapper(batch)``, for peers that pass one positional input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor]) -> Any:
        return self.model(**batch)


def _has_torchdiag() -> bool:
    try:
        import torchdiag  # noqa: F401
    except ImportError:
        return False
    return True


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


#: The clock of every timed block (``--clock``).
CLOCK: list[Callable[[], float]] = [time.perf_counter]


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    return timed(fn, device, CLOCK[0])


def _to(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)


def bench_scan(
    name: str,
    rounds: int,
    n_batches: int,
    batch: int,
    size: int,
    device: torch.device,
    compiled: bool = False,
) -> dict[str, Any]:
    """Median (IQR) throughput ratios of every condition against plain inference."""
    torch.manual_seed(0)
    model, make = MODELS[name](batch, size)
    model = model.to(device).eval()
    batches = [_to(make(), device) for _ in range(n_batches)]
    conditions: dict[str, Callable[[], Any]] = {
        "scan_default": lambda: scan(model, batches),
        "scan_eager": lambda: scan(model, batches, kernel="eager"),
        "scan_counts": lambda: scan(model, batches, detail="counts"),
        "naive_hook": lambda: naive_hook(model, batches),
    }
    if compiled:
        conditions["scan_compiled"] = lambda: scan(model, batches, kernel="compiled")
    if _has_torchdiag():
        conditions["torchdiag"] = lambda: torchdiag_check(model, batches)
    run_plain = lambda: plain(model, batches)  # noqa: E731
    if compiled:  # compile first, so that auto's trials (next) let it compete
        conditions["scan_compiled"]()
    default = conditions["scan_default"]()  # warm-up: auto's trials, builds
    for key, fn in conditions.items():
        if key not in ("scan_default", "scan_compiled"):
            fn()
    run_plain()
    samples: dict[str, list[float]] = {k: [] for k in conditions}
    plain_s: list[float] = []
    keys = list(conditions)
    for r in range(rounds):
        for i, key in enumerate(keys[r % len(keys) :] + keys[: r % len(keys)]):
            if (r + i) % 2 == 0:
                p, t = _timed(run_plain, device), _timed(conditions[key], device)
            else:
                t, p = _timed(conditions[key], device), _timed(run_plain, device)
            samples[key].append(p / t)
            plain_s.append(p)
    ratios = {
        k: {"median": statistics.median(v), "iqr": _iqr(v), "samples": len(v)}
        for k, v in samples.items()
    }
    return {
        "batches": n_batches,
        "batch_size": batch,
        "input_size": size,
        "plain_s_per_batch_median": statistics.median(plain_s) / n_batches,
        "ratios": ratios,
        "kernels": default.meta["kernels"],
        "meets_target": ratios["scan_default"]["median"] >= TARGET,
    }


class _Trainer:
    """One condition: its own copy of the model, optimizer and optional Monitor."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, every: int | None) -> None:
        from deadrelu.monitor import Monitor

        self.model = model.train()
        self.x, self.y = x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.monitor = None if every is None else Monitor(model, every=every).attach()

    def steps(self, n: int) -> None:
        for _ in range(n):
            loss = F.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.monitor is not None:
                self.monitor.step()


def bench_monitor(
    rounds: int, steps: int, batch: int, size: int, device: torch.device
) -> dict[str, Any]:
    """Per-step time of resnet18 training with a Monitor / plain, interleaved in blocks."""
    torchvision = import_torchvision()
    torch.manual_seed(0)
    base = torchvision.models.resnet18(weights=None, num_classes=10).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    runners = {
        "plain": _Trainer(copy.deepcopy(base), x, y, None),
        "monitor": _Trainer(copy.deepcopy(base), x, y, 10),
        "monitor_every_1": _Trainer(copy.deepcopy(base), x, y, 1),
    }
    for r in runners.values():  # warm-up
        r.steps(2)
    samples: dict[str, list[float]] = {"monitor": [], "monitor_every_1": []}
    keys = list(samples)
    for rnd in range(rounds):
        for i, key in enumerate(keys[rnd % 2 :] + keys[: rnd % 2]):
            # blocks of `steps` (a multiple of 10: every=10 samples its share)
            if (rnd + i) % 2 == 0:
                p = _timed(lambda: runners["plain"].steps(steps), device)
                t = _timed(lambda k=key: runners[k].steps(steps), device)
            else:
                t = _timed(lambda k=key: runners[k].steps(steps), device)
                p = _timed(lambda: runners["plain"].steps(steps), device)
            samples[key].append(t / p)
    return {
        "model": "resnet18",
        "batch_size": batch,
        "input_size": size,
        "steps_per_block": steps,
        "ratio_step_time": {
            k: {"median": statistics.median(v), "iqr": _iqr(v), "samples": len(v)}
            for k, v in samples.items()
        },
        "targets": {"monitor": 1.02, "monitor_every_1": 1.05},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke pass")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="image side (tokens for OPT)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter; cpu: time.process_time (shared CPUs; with --threads 1)",
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS)
    )
    parser.add_argument("--no-monitor", action="store_true", help="skip the training part")
    parser.add_argument(
        "--with-compiled",
        action="store_true",
        help="also scan_compiled (kernel='compiled', torch.compile / Triton; compiled in the "
        "warm-up, so that the default's auto trials let it compete)",
    )
    stable_malloc.add_argument(parser)
    args = parser.parse_args()
    malloc = stable_malloc.ensure(args.default_malloc)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if device.type == "cuda":
            parser.error("--clock cpu times CPU work: not with --device cuda")
        CLOCK[0] = time.process_time
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    if args.quick:
        rounds, n_batches, batch, size = 2, 1, 2, 64
        mon_rounds, mon_steps, mon_batch, mon_size = 2, 10, 4, 32
    else:
        rounds, n_batches, batch, size = args.rounds, args.batches, args.batch_size, args.size
        mon_rounds, mon_steps, mon_batch, mon_size = args.rounds, 20, 16, 64
    results = {}
    for name in names:
        model_size = 224 if name.startswith("vit") and not args.quick else size
        if name == "opt_tiny":
            model_size = 32 if args.quick else 128
        results[name] = bench_scan(
            name, rounds, n_batches, batch, model_size, device, args.with_compiled
        )
    monitor = (
        None
        if args.no_monitor
        else bench_monitor(mon_rounds, mon_steps, mon_batch, mon_size, device)
    )
    print(
        json.dumps(
            {
                "benchmark": "zoo_scan",
                "metric": "throughput ratio condition / plain inference (median, IQR over rounds)",
                "target": TARGET,
                "quick": args.quick,
                "rounds": rounds,
                "device": str(device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "clock": args.clock,
                "machine": platform.machine(),
                "malloc": malloc,
                "results": results,
                "monitor": monitor,
                "all_meet_target": all(r["meets_target"] for r in results.values()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
