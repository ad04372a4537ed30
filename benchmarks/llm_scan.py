"""Tokens/s of :func:`deadrelu.scan.scan` over a token stream of a tiny random LLM, against
its plain forward, and the memory of the statistics for 10^6 units.

Prints one JSON object.

Throughput: a random-init OPT (ReLU FFN; by default 4 layers, hidden 256, FFN 1024,
vocab 1000) over dict batches in the Hugging Face convention (``input_ids``,
``attention_mask``, ``use_cache=False``), right-padded sequences of random length (half to
all of ``--tokens``): ``plain`` runs ``model(**batch)`` in eval mode under
``torch.no_grad()``; ``scan`` runs ``scan(model, batches)`` as a user calls it (detail
"range", kernel "auto", padding excluded via the mask). Each scan run is paired with a
plain run right before or after it (alternating), each pair gives ``ratio = plain
seconds / scan seconds`` (scan throughput / plain throughput), and the median over
rounds is reported with tokens/s of both. float32 has the **target ratio >= 0.9**
(``meets_target``); bfloat16 (slow on many CPUs) is reported, not targeted. The kernels
are warmed up (compiled) before timing.

``--device cuda`` runs the model and the scan on the GPU (the memory part stays on CPU).

Memory: ``UnitStats.empty(10**6, detail=...).nbytes`` for each detail level (the
accumulators a scan keeps), and the peak growth of the process's resident memory
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``; Linux; each level in a
fresh process) while 10^6-unit statistics are created and fed one ``(8, 10^6)`` float32
batch by the eager and the native kernel ("counts" runs eager in both): the accumulators
plus the batch's scratch (32 MB here) and the eager kernel's ``(U,)`` temporaries.

Unless ``--default-malloc`` is given, the script re-executes itself with the glibc malloc
settings of ``benchmarks/_stable_malloc.py``. Timing on a shared machine is noisy: run on
a quiet machine for numbers to quote. ``--quick`` runs a short smoke pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

import _stable_malloc as stable_malloc
from _timing import timed
from deadrelu.scan import scan
from deadrelu.stats import DETAIL_LEVELS, UnitStats
from deadrelu.zoo import import_torchvision

TARGET = 0.9
MILLION = 10**6


def tiny_opt(layers: int, hidden: int, ffn: int, vocab: int) -> nn.Module:
    """A random-init OPT causal LM with a ReLU FFN (no dropout)."""
    import_torchvision()  # before transformers, which imports it
    import transformers

    torch.manual_seed(0)
    cfg = transformers.OPTConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        ffn_dim=ffn,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        word_embed_proj_dim=hidden,
        dropout=0.0,
        attention_dropout=0.0,
        activation_function="relu",
    )
    return transformers.OPTForCausalLM(cfg).eval()


def token_batches(
    n: int, batch: int, tokens: int, vocab: int, device: torch.device
) -> list[dict[str, Any]]:
    """``n`` right-padded batches of ``batch`` sequences of tokens/2..tokens tokens, on
    ``device``."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        lengths = torch.randint(tokens // 2, tokens + 1, (batch,), generator=g)
        mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
        ids = torch.randint(1, vocab, (batch, tokens), generator=g) * mask
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
        out[-1]["use_cache"] = False
    return out


def plain(model: nn.Module, batches: list[dict[str, Any]]) -> None:
    """Plain inference: eval, no_grad."""
    model.eval()
    with torch.no_grad():
        for b in batches:
            model(**b)


def throughput(
    model: nn.Module, batches: list[dict[str, Any]], rounds: int, dtype: torch.dtype
) -> dict[str, Any]:
    """Median scan/plain ratio and tokens/s of both for ``model`` in ``dtype``."""
    model = model.to(dtype)
    device = next(model.parameters()).device
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    report = scan(model, batches)  # warm-up (kernel trials, compiling where it applies)
    plain(model, batches)
    ratios, plain_s, scan_s = [], [], []
    for r in range(rounds):
        run_plain, run_scan = lambda: plain(model, batches), lambda: scan(model, batches)
        if r % 2 == 0:
            p, s = timed(run_plain, device), timed(run_scan, device)
        else:
            s, p = timed(run_scan, device), timed(run_plain, device)
        ratios.append(p / s)
        plain_s.append(p)
        scan_s.append(s)
    ratio = statistics.median(ratios)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "tokens_per_pass": tokens,
        "plain_tokens_per_s": tokens / statistics.median(plain_s),
        "scan_tokens_per_s": tokens / statistics.median(scan_s),
        "ratio": ratio,
        "ratios": ratios,
        "kernels": report.meta["kernels"]["ran"],
        "masked_sites": len(report.meta["masked_sites"]),
        "meta_tokens": report.meta["tokens"],
    }


def _vm(field: str) -> int | None:
    """``field`` (kB) of /proc/self/status, in bytes; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _peak_growth(case: tuple[str, str]) -> int | None:
    """In a fresh process: the growth of the resident memory's peak while 10^6-unit
    statistics at ``detail`` are created and fed one ``(8, 10^6)`` float32 batch by
    ``kernel`` (``case = (detail, kernel)``; the batch itself allocated before); None
    where /proc is unavailable."""
    detail, kernel = case
    torch.set_num_threads(1)  # no thread pools started during the measurement
    warm = torch.randn(8, 1000)  # the kernels' one-time set-up, before measuring
    UnitStats.empty(1000, detail=detail).update(warm, warm.relu(), -1, kernel=kernel)  # type: ignore[arg-type]
    z = torch.randn(8, MILLION)
    out = z.relu()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
    except OSError:
        return None
    base = _vm("VmRSS")
    stats = UnitStats.empty(MILLION, detail=detail)  # type: ignore[arg-type]
    stats.update(z, out, -1, kernel=kernel)  # type: ignore[arg-type]
    hwm = _vm("VmHWM")
    return None if base is None or hwm is None else hwm - base


def memory() -> dict[str, Any]:
    """Bytes of the statistics for 10^6 units, per level, and the measured peak growth
    (each level in a fresh process, so that no freed memory is reused)."""
    import multiprocessing

    nbytes = {d: UnitStats.empty(MILLION, detail=d).nbytes for d in DETAIL_LEVELS}  # type: ignore[arg-type]
    cases = [(d, k) for k in ("eager", "native") for d in DETAIL_LEVELS]
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        grown = pool.map(_peak_growth, cases, chunksize=1)  # one fresh process each
    peak = {f"{d}_{k}": g for (d, k), g in zip(cases, grown, strict=True)}
    return {
        "units": MILLION,
        "accumulator_bytes": nbytes,
        "peak_rss_growth_bytes": peak,
        "limit_bytes": 100 * 2**20,
        "meets_limit": all(v <= 100 * 2**20 for v in nbytes.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke pass")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch")
    parser.add_argument("--tokens", type=int, default=128, help="longest sequence")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    stable_malloc.add_argument(parser)
    args = parser.parse_args()
    malloc = stable_malloc.ensure(args.default_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, n = (2, 3) if args.quick else (args.rounds, args.batches)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    model = tiny_opt(args.layers, args.hidden, args.ffn, args.vocab).to(device)
    batches = token_batches(n, args.batch, args.tokens, args.vocab, device)
    f32 = throughput(model, batches, rounds, torch.float32)
    b16 = throughput(model, batches, rounds, torch.bfloat16)
    print(
        json.dumps(
            {
                "benchmark": "llm_scan",
                "metric": "scan tokens/s / plain forward tokens/s (median over rounds)",
                "target": TARGET,
                "model": {k: getattr(args, k) for k in ("layers", "hidden", "ffn", "vocab")},
                "batches": n,
                "batch_shape": [args.batch, args.tokens],
                "quick": args.quick,
                "rounds": rounds,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": str(device),
                "machine": platform.machine(),
                "malloc": malloc,
                "float32": {**f32, "meets_target": f32["ratio"] >= TARGET},
                "bfloat16": {**b16, "note": "reported only (bf16 on CPU may be slow)"},
                "memory": memory(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
