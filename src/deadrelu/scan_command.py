"""``deadrelu scan``, ``deadrelu explain`` and ``deadrelu certify``: a model named by a spec.

``deadrelu scan MODEL [--data DATA] [--batches N] [--batch-size B] [--json PATH]
[--html PATH] [--fail-on EXPR] ...`` builds the model and its data with
:mod:`deadrelu.sources`, runs :func:`deadrelu.scan.scan`, prints the per-site table and
writes the report's JSON / HTML. ``--fail-on`` gates CI: the exit status is 1 when a
condition holds, e.g. ``dead>5%`` (over all units), ``dormant>0`` (count),
``layer4.1.relu:dead>10%`` (one site; ``fnmatch`` patterns such as ``layer4.*:dead>0``
match several), several joined by commas. Exit status: 0 fine, 1 a ``--fail-on``
condition holds, 2 a bad spec, option or file.

Token streams: ``--dtype bfloat16`` (or float16) casts the model and the floating inputs
(the statistics stay float32 or wider), ``--max-tokens N`` stops after the batch at which N
tokens (padding excluded) were scanned, ``--checkpoint PATH`` keeps the scan resumable
(:func:`deadrelu.scan.scan`'s ``checkpoint``). Besides the per-site table the command prints
the activation frequency per site (:meth:`deadrelu.report.Report.frequency_table`).

Under ``torchrun --nproc_per_node W -m deadrelu scan ...`` (``WORLD_SIZE`` > 1 in the
environment) the command initialises ``torch.distributed`` if nothing did (gloo on the
CPU, nccl on CUDA with ``--device cuda`` meaning ``cuda:LOCAL_RANK``), rank r scans the
batches i with ``i % W == r`` (round robin by batch index, every rank reading the same
data), the scan all-reduces the statistics, and only rank 0 prints and writes outputs
(errors: see below); every rank gets rank 0's parameters and buffers (a
random-init model differs per process), and the report equals a one-process run of that
model on the same data (counts exactly). ``--max-tokens`` counts the tokens of every batch
on every rank, so the batches scanned are those of a one-process run. The process group
is destroyed at the end when the command created it. A streamed text corpus is read by
every rank and sharded as it goes (nothing is materialised): each rank tokenises the whole
stream and keeps its batches.

Errors under torchrun: rank 0 prints every error; another rank prints only an ``OSError``
(its own file or device: a checkpoint ``PATH.rank{r}``, a file missing on its node),
prefixed ``rank r:``, and a failure to join the process group. Other errors (a bad spec,
option, model, data, a missing package) arise alike on every rank from what they all read,
so rank 0's line says it once; every rank still exits with status 2.

The sub-commands are wired into :mod:`deadrelu.cli` by :func:`add_scan_parser`,
:func:`add_explain_parser` and :func:`add_certify_parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import math
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FailOn",
    "add_certify_parser",
    "add_explain_parser",
    "add_scan_parser",
    "parse_fail_on",
    "run_certify",
    "run_explain",
    "run_scan",
]

_FAIL_ON = re.compile(
    r"^\s*(?:(?P<site>.+):)?(?P<kind>[a-z_]+)\s*(?P<op>>=|>)\s*(?P<num>\d+(?:\.\d+)?)\s*"
    r"(?P<pct>%)?\s*$"
)
_FAIL_ON_FORMS = (
    "KIND>N (a count of units), KIND>N% (a percentage), optionally SITE: in front (one site or "
    "an fnmatch pattern), >= also accepted, several joined by commas; KIND is one of "
)


@dataclass(frozen=True)
class FailOn:
    """One ``--fail-on`` condition: ``[site:]kind (>|>=) value[%]``."""

    text: str
    kind: str
    op: str
    value: float
    percent: bool
    site: str | None = None

    def check(self, report: Any) -> list[str]:
        """The messages of the places where the condition holds (empty: it does not).

        Raises:
            ValueError: the site names no site of ``report``.
        """
        if self.site is None:
            places = [("all sites", report.count(self.kind), report.total_units)]
        else:
            names = [n for n in report.stats if n == self.site] or [
                n for n in report.stats if fnmatch.fnmatchcase(n, self.site)
            ]
            if not names:
                raise ValueError(
                    f"--fail-on {self.text!r}: no site {self.site!r} in the report; sites: "
                    f"{', '.join(report.stats)}"
                )
            places = [(n, len(report.units(self.kind, n)), report.stats[n].units) for n in names]
        out = []
        for where, count, units in places:
            measured = 100.0 * count / units if self.percent and units else float(count)
            hit = measured >= self.value if self.op == ">=" else measured > self.value
            if hit:
                unit = "%" if self.percent else ""
                out.append(
                    f"{self.text}: {where} has {count}/{units} {self.kind} units "
                    f"({100.0 * count / max(units, 1):.2f} %), {measured:g}{unit} "
                    f"{self.op} {self.value:g}{unit}"
                )
        return out


def parse_fail_on(text: str) -> list[FailOn]:
    """Parse ``--fail-on`` text (comma-separated conditions).

    Raises:
        ValueError: a condition is malformed or names an unknown class (the message gives
            the accepted forms).
    """
    from deadrelu.classify import CLASS_NAMES

    out = []
    for part in (p.strip() for p in text.split(",")):
        m = _FAIL_ON.match(part)
        if not m or m["kind"] not in CLASS_NAMES:
            raise ValueError(
                f"--fail-on {part!r} is not a condition; accepted: {_FAIL_ON_FORMS}"
                f"{', '.join(CLASS_NAMES)} (e.g. 'dead>5%', 'dormant>0', 'layer4.*:dead>=10%')"
            )
        value = float(m["num"])
        if m["pct"] and value > 100:
            raise ValueError(f"--fail-on {part!r}: a percentage is at most 100")
        out.append(FailOn(part, m["kind"], m["op"], value, bool(m["pct"]), m["site"]))
    return out


# ------------------------------------------------------------------ shared options

_DTYPES = ("float32", "bfloat16", "float16")
#: ``--batches`` when not given (and no ``--max-tokens``).
DEFAULT_BATCHES = 8


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from deadrelu.sources import MODEL_FORMS

    p.add_argument("model", metavar="MODEL", help=f"the model: {MODEL_FORMS}")
    p.add_argument(
        "--weights",
        metavar="PATH",
        default=None,
        help="a state dict (.pt/.pth/.bin/.ckpt read weights-only, or .safetensors) to load "
        "into MODEL (zoo models are random init without it)",
    )
    p.add_argument(
        "--arch",
        metavar="SPEC",
        default=None,
        help="the architecture a checkpoint file's weights go into, e.g. torchvision:resnet18",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a checkpoint that holds a pickled model (unpickling runs code from the "
        "file: only for files you trust)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="float32",
        help="cast the model and the floating tensors of the batches to this dtype; the "
        "statistics are accumulated in float32 or wider (default: float32)",
    )


def _add_data_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    from deadrelu.sources import DATA_FORMS

    p.add_argument(
        "--data",
        metavar="DATA",
        default=None,
        required=required,
        help=f"the inputs: {DATA_FORMS} (default: random, the model's expected input). "
        "Text is streamed (read and tokenised as the scan goes, memory independent of the "
        "corpus size): each .txt file and each .jsonl record is a document, tokenised as "
        "the tokenizer does (with its BOS/EOS), documents separated by the tokenizer's eos "
        "token where it has one, cut into --seq-len windows",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        metavar="N",
        help=f"batches to run (default: {DEFAULT_BATCHES}; with --max-tokens: until the "
        "tokens are reached or the data ends)",
    )
    p.add_argument(
        "--batch-size", type=int, default=16, metavar="B", help="samples per batch (default: 16)"
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=128,
        metavar="N",
        help="tokens per sequence for text and random token ids (default: 128)",
    )


def _add_scan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unit-dim",
        action="append",
        default=None,
        metavar="DIM|SITE=DIM",
        help="the unit axis: one int for every site, or SITE=DIM (fnmatch pattern allowed), "
        "repeatable (default: channels for convolutions, last dim otherwise)",
    )
    p.add_argument(
        "--detail",
        choices=("counts", "range", "full"),
        default="range",
        help="statistics to gather: counts (dead, dormant, rarely active), range (also z "
        "min/max; default), full (also mean and variance)",
    )
    p.add_argument(
        "--tau",
        type=float,
        default=None,
        help="ReDo dormancy threshold (default: deadrelu.classify.DORMANT_TAU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _unit_dim(values: Sequence[str] | None) -> Any:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return int(values[0])
    out: dict[str, int] = {}
    for v in values:
        site, sep, dim = v.rpartition("=")
        if not sep or not site:
            raise ValueError(f"--unit-dim {v!r}: give one int, or SITE=DIM (repeatable)")
        out[site] = int(dim)
    return out


def _err(command: str, message: Any) -> int:
    from rich.console import Console

    text = " ".join(str(message).split())
    Console(stderr=True, soft_wrap=True).print(
        f"deadrelu {command}: {text}", style="red", markup=False, highlight=False
    )
    return 2


def _load(args: argparse.Namespace) -> tuple[Any, Iterable[Any]]:
    import torch

    from deadrelu.sources import load_data, load_model

    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    if args.model.startswith("hf:") and (not sys.stderr.isatty() or _ranks().rank):
        _quiet_transformers()
    loaded = load_model(
        args.model,
        weights=args.weights,
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        device=args.device,
        dtype=dtype,
    )
    if _ranks().world > 1:
        _broadcast_model(loaded.model)
    data = load_data(
        args.data,
        loaded,
        batches=_batches(args, loaded),
        batch_size=args.batch_size,
        seq_len=args.seq_len,
    )
    return loaded, data


def _batches(args: argparse.Namespace, loaded: Any = None) -> int:
    """``--batches``, else :data:`DEFAULT_BATCHES`, else (with ``--max-tokens``) enough:
    random token ids need ceil(N / (batch size x sequence length)) batches, other data
    runs until its end (the scan stops at the tokens). Text corpora too: their batches
    are full windows of batch size x sequence length tokens (but the last)."""
    if args.batches is not None:
        return int(args.batches)
    max_tokens = getattr(args, "max_tokens", None)
    if max_tokens is None or max_tokens < 1:
        return DEFAULT_BATCHES
    spec = args.data or "random"
    if loaded is not None and loaded.source == "hf" and _token_windows(spec, loaded):
        return max(1, math.ceil(max_tokens / (args.batch_size * args.seq_len)))
    if spec == "random" or spec.startswith("random:"):
        return DEFAULT_BATCHES  # no tokens: the scan says --max-tokens needs them
    return sys.maxsize


def _token_windows(spec: str, loaded: Any) -> bool:
    """Whether ``spec`` gives ``loaded`` (an ``hf:`` model) batches of full token windows:
    random token ids or a text corpus."""
    from deadrelu.sources import text_corpus

    return spec == "random" or text_corpus(spec, loaded) is not None


def _quiet_transformers() -> None:
    """No "Loading weights" progress bar in logs (a terminal still shows it)."""
    from deadrelu.sources import _torchvision_if_installed

    _torchvision_if_installed()
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


_USER_ERRORS = (ValueError, ImportError, OSError, KeyError, TypeError)


def _scan(
    args: argparse.Namespace, loaded: Any, data: Iterable[Any], detail: str, *, shard: bool = True
) -> Any:
    """Scan ``data`` (under torchrun: this rank's shard of it, unless ``shard`` is False:
    ``data`` is the shard already)."""
    from deadrelu import classify
    from deadrelu.scan import scan

    ranks = _ranks()
    progress = not args.no_progress and sys.stderr.isatty() and ranks.rank == 0
    max_tokens = getattr(args, "max_tokens", None)
    checkpoint = getattr(args, "checkpoint", None)
    options: dict[str, Any] = {}
    if checkpoint is not None:
        options = {"checkpoint": checkpoint, "checkpoint_every": args.checkpoint_every}
    # the batches load_data gives at most: a length for a streamed source (progress bar,
    # the kernel choice), never a stop before the data's or --max-tokens' own
    bound = _batches(args, loaded)
    limit: int | None = None if bound == sys.maxsize else bound
    if ranks.world > 1:  # this rank's shard; --max-tokens counted over every rank's batches
        if shard:
            data = _shard(data, ranks.rank, ranks.world, max_tokens)
        max_tokens = None
        limit = None if limit is None else len(range(ranks.rank, limit, ranks.world)) or None
    report = scan(
        loaded.model,
        data,
        max_batches=limit,
        unit_dim=_unit_dim(args.unit_dim),
        tau=classify.DORMANT_TAU if args.tau is None else args.tau,
        progress=progress,
        detail=detail,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        **options,
    )
    report.meta["dtype"] = args.dtype
    return report


@dataclass(frozen=True)
class _Ranks:
    """This process's place under torchrun: rank, world size, whether the command created
    the process group (and destroys it)."""

    rank: int = 0
    world: int = 1
    owned: bool = False


def _ranks() -> _Ranks:
    """The rank and world size of the initialised default process group, else one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Ranks(dist.get_rank(), dist.get_world_size())
    return _Ranks()


def _init_distributed(args: argparse.Namespace) -> _Ranks:
    """Under torchrun (``WORLD_SIZE`` > 1): initialise the default process group if no one
    did (nccl for a CUDA ``--device``, gloo otherwise; ``--device cuda`` becomes
    ``cuda:LOCAL_RANK``). Returns this process's :class:`_Ranks`."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        return _ranks()
    import torch
    import torch.distributed as dist

    if args.device == "cuda":
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if dist.is_initialized():
        return _ranks()
    cuda = str(args.device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(args.device))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return _Ranks(dist.get_rank(), dist.get_world_size(), owned=True)


def _broadcast_model(model: Any) -> None:
    """Rank 0's parameters and buffers on every rank: a model built with random init (a
    zoo name or a factory without weights) differs per process, and one scan must measure
    one model. One broadcast per tensor, once."""
    import itertools

    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            buf = t.data if t.data.is_contiguous() else t.data.contiguous()
            dist.broadcast(buf, src=0)
            if buf is not t.data:
                t.data.copy_(buf)


def _shard(data: Iterable[Any], rank: int, world: int, max_tokens: int | None) -> Iterator[Any]:
    """Rank ``rank``'s batches of ``data``: those with index ``i % world == rank``. With
    ``max_tokens``, stop after the batch (of any rank) at which the tokens of all batches
    so far reach it, as a one-process scan does (:mod:`deadrelu.tokens`)."""
    from deadrelu.batches import iter_batches, split_batch
    from deadrelu.tokens import batch_mask, batch_tokens, mask_key

    key, required = mask_key("auto")
    total = 0
    for i, batch in enumerate(iter_batches(data)):
        if i % world == rank:
            yield batch
        if max_tokens is None:
            continue
        args, kwargs, _ = split_batch(batch)
        tokens = batch_tokens(args, kwargs, batch_mask(kwargs, key, required))
        if tokens is None:
            raise ValueError(
                f"--max-tokens {max_tokens}: batch {i} carries no tokens (input_ids or a 2-d "
                "integer tensor, with an attention_mask for padded batches); give token data "
                "or drop --max-tokens"
            )
        total += tokens
        if total >= max_tokens:
            return


def _print_table(report: Any) -> None:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(report.table(width=console.width))  # full site names (wrapped if long)
    console.print(report.frequency_table(width=console.width))


# ------------------------------------------------------------------ deadrelu scan


def add_scan_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``deadrelu scan``: dead units of a model named by a spec, with a CI gate."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "scan",
        help="find the dead, dormant, rarely active units of a model (zoo name, HF "
        "directory, factory or checkpoint); JSON, HTML and a CI gate",
        description=textwrap.fill(
            "Build MODEL, run it over DATA in eval mode and print one row per activation "
            "site: units, dead, dormant, rarely active, saturated, non-finite. --json and "
            "--html write the report; --fail-on sets exit status 1 when a condition holds "
            "(for CI). Exit status 2: a bad spec, option or file.",
            width=80,
        ),
        epilog=(
            "examples:  deadrelu scan torchvision:resnet18 --data random:3x64x64\n"
            "           deadrelu scan ckpt.pt --arch torchvision:resnet18 --fail-on 'dead>5%'\n"
            "           deadrelu scan hf:./my-model --data corpus.txt --seq-len 64 --json r.json\n"
            "           deadrelu scan mypkg.models:build --data val_images/ --html scan.html\n"
            "           deadrelu scan hf:./llm --data corpus.txt --dtype bfloat16 \\\n"
            "               --max-tokens 100000000 --checkpoint scan.ckpt --json r.json\n"
            "\n"
            "torchrun: torchrun --nproc_per_node 2 -m deadrelu scan ... runs one scan over\n"
            "all ranks: rank r reads the batches i with i % WORLD_SIZE == r (round robin by\n"
            "batch index), every rank takes rank 0's weights, the statistics are\n"
            "all-reduced (the report equals one process's on the same data) and rank 0\n"
            "alone prints and writes the outputs. gloo on the CPU, nccl with --device cuda\n"
            "(rank r on cuda:LOCAL_RANK). Errors: rank 0 prints them; other ranks only\n"
            "their own file/device errors (OSError), prefixed 'rank r:'.\n"
            "\n"
            'text data: a .txt file, a .jsonl file ({"text": ...} per line), .gz, or a\n'
            "folder of them (sorted), streamed; each file/record is a document, documents\n"
            "separated by the tokenizer's eos token where it has one."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(p)
    _add_data_args(p)
    _add_scan_args(p)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the JSON")
    p.add_argument(
        "--html", type=Path, default=None, metavar="PATH", help="write the HTML scan report"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="also explain each dead unit (causes in the output and the HTML report)",
    )
    p.add_argument(
        "--fail-on",
        default=None,
        metavar="EXPR",
        help="exit 1 when a condition holds: 'dead>5%%', 'dormant>0', "
        "'layer4.*:dead>=10%%', several joined by commas",
    )
    p.add_argument("--quiet", action="store_true", help="no table, only failures and errors")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="stop after the batch at which N tokens were scanned (padding, attention_mask "
        "0, excluded); token data only",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep the scan's accumulators in PATH (every --checkpoint-every batches and at "
        "the end); if PATH exists the scan resumes from it, giving the uninterrupted "
        "scan's report (same model, options and data order); under torchrun each rank "
        "keeps PATH.rank{r}",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="N",
        help="batches between two checkpoint writes (default: 100)",
    )
    p.set_defaults(func=run_scan)
    return p


def run_scan(args: argparse.Namespace) -> int:
    """Handler of ``deadrelu scan``; returns the exit status (0, 1: --fail-on, 2: error).
    Under torchrun: one scan over every rank's shard, outputs from rank 0 only."""
    try:
        ranks = _init_distributed(args)
    except (ValueError, RuntimeError) as exc:  # every rank says so: no rank 0 to rely on
        rank = os.environ.get("RANK", "?")
        return _err("scan", f"rank {rank}: could not join the torchrun process group: {exc}")
    try:
        with contextlib.ExitStack() as stack:
            if ranks.rank:  # only rank 0 speaks (rank-specific errors excepted)
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
            return _run_scan(args, ranks)
    finally:
        if ranks.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _rank_error(ranks: _Ranks, exc: BaseException) -> int:
    """Exit status 2, with the error printed by the ranks that should say it.

    Rule: rank 0 prints every error. Another rank prints only an :class:`OSError` (a file
    or device of its own: a checkpoint ``PATH.rank{r}``, a data file missing on its
    node), prefixed by its rank; the other errors (a bad spec, option, model, data or a
    missing package) come from what every rank reads alike, so they would be W copies of
    rank 0's. Errors before the process group is joined are printed by every rank
    (:func:`run_scan`); unexpected ones are tracebacks, from every rank.
    """
    if ranks.rank == 0:
        return _err("scan", exc)
    if isinstance(exc, OSError):
        return _err("scan", f"rank {ranks.rank}: {exc}")
    return 2


def _run_scan(args: argparse.Namespace, ranks: _Ranks) -> int:
    main_rank = ranks.rank == 0
    try:
        gates = parse_fail_on(args.fail_on) if args.fail_on else []
        if args.max_tokens is not None and args.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        loaded, data = _load(args)
        if args.explain:  # explain re-scans the data: every rank its shard (collective)
            ranks = _ranks()
            if ranks.world > 1:
                data = _shard(data, ranks.rank, ranks.world, args.max_tokens)
            data = list(data)
        report = _scan(args, loaded, data, args.detail, shard=not args.explain)
        report.meta["model_spec"] = args.model
        report.meta["data_spec"] = args.data or "random"
        failures = [msg for g in gates for msg in g.check(report)]
        explanation = None
        if args.explain:
            from deadrelu.explain import explain

            explanation = explain(loaded.model, report, data=data)
    except _USER_ERRORS as exc:
        return _rank_error(ranks, exc)
    if not main_rank:
        return 1 if failures else 0
    from rich.console import Console

    if not args.quiet:
        _print_table(report)
        if explanation is not None:
            print(str(explanation))
    try:
        if args.json is not None:
            report.to_json(args.json)
        if args.html is not None:
            from deadrelu.scan_html import write_html

            write_html(
                report, args.html, explanation=explanation, title=f"deadrelu scan: {args.model}"
            )
    except OSError as exc:
        return _err("scan", exc)
    err = Console(stderr=True, soft_wrap=True)
    for msg in failures:
        err.print(f"deadrelu scan: fail-on {msg}", style="red", markup=False, highlight=False)
    return 1 if failures else 0


# ------------------------------------------------------------------ deadrelu explain


def add_explain_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``deadrelu explain``: the cause of each dead unit of a model named by a spec."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "explain",
        help="scan a model and give the cause of each dead unit (bias, weights, input range)",
        description=textwrap.fill(
            "Scan MODEL over DATA (as deadrelu scan does) and explain every dead unit: its "
            "largest pre-activation z_max, its effective bias, and the cause label.",
            width=80,
        ),
        epilog="example:  deadrelu explain ckpt.pt --arch torchvision:resnet18 --data random",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(p)
    _add_data_args(p)
    _add_scan_args(p)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the JSON")
    p.set_defaults(func=run_explain)
    return p


def run_explain(args: argparse.Namespace) -> int:
    """Handler of ``deadrelu explain``; returns the exit status (0, 2: error)."""
    from deadrelu.explain import explain

    try:
        loaded, data = _load(args)
        data = list(data)
        detail = "full" if args.detail == "full" else "range"
        report = _scan(args, loaded, data, detail)
        expl = explain(loaded.model, report, data=data)
    except _USER_ERRORS as exc:
        return _err("explain", exc)
    print(str(expl))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(expl.to_dict(), indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            return _err("explain", exc)
    return 0


# ------------------------------------------------------------------ deadrelu certify


def add_certify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``deadrelu certify``: units dead for every input in a box."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "certify",
        help="prove units dead for every input in a box (interval / symbolic bounds)",
        description=textwrap.fill(
            "Bound every pre-activation of MODEL over an input box and list the units whose "
            "upper bound is below 0: dead for any input in the box, not only on data. "
            "--box data takes the per-feature min and max of DATA; --box LO,HI a constant "
            "box of the model's input shape (or --input-shape).",
            width=80,
        ),
        epilog=(
            "examples:  deadrelu certify mypkg.models:mlp --box=-1,1 --input-shape 784\n"
            "           deadrelu certify ckpt.pt --arch mypkg.models:mlp --box data --data x.pt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument(
        "--box",
        required=True,
        metavar="data|LO,HI",
        help="the input domain: 'data' (per-feature range of --data) or LO,HI (constant; "
        "write --box=-1,1 when LO is negative)",
    )
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="CxHxW",
        help="one sample's shape for --box LO,HI when the model does not declare it",
    )
    p.add_argument(
        "--method",
        choices=("symbolic", "ibp"),
        default="symbolic",
        help="bounds: symbolic (tighter; default) or ibp (interval, cheaper)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the JSON")
    p.set_defaults(func=run_certify)
    return p


def _box(args: argparse.Namespace, loaded: Any) -> Any:
    from deadrelu.certify import Box
    from deadrelu.sources import SpecError, input_tensors, load_data

    if args.box == "data":
        data = load_data(
            args.data, loaded, batches=_batches(args), batch_size=args.batch_size, seq_len=1
        )
        return Box.from_data(list(input_tensors(data)))
    lo_text, sep, hi_text = args.box.partition(",")
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        lo = hi = float("nan")
    if not sep or lo != lo or hi != hi:
        raise SpecError(f"--box {args.box!r}: give 'data' or 'LO,HI' (two numbers, e.g. -1,1)")
    if args.input_shape:
        shape = tuple(int(s) for s in args.input_shape.lower().split("x"))
    elif loaded.input_shape:
        shape = tuple(loaded.input_shape)
    else:
        raise SpecError(
            f"--box {args.box!r}: the input shape of {args.model!r} is not known; pass "
            "--input-shape (e.g. 3x32x32 or 784)"
        )
    return Box.from_bounds(shape, lo, hi)


def run_certify(args: argparse.Namespace) -> int:
    """Handler of ``deadrelu certify``; returns the exit status (0, 2: error)."""
    from deadrelu.certify import certify
    from deadrelu.sources import load_model

    try:
        loaded = load_model(
            args.model,
            weights=args.weights,
            arch=args.arch,
            trust_pickle=args.trust_pickle,
            device=args.device,
        )
        box = _box(args, loaded)
        cert = certify(loaded.model, box, method=args.method)
    except _USER_ERRORS as exc:
        return _err("certify", exc)
    print(cert.summary())
    for note in cert.notes:
        print(f"note: {note}")
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(cert.to_dict(), indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            return _err("certify", exc)
    return 0
