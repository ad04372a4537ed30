"""``deadrelu lab``: run the lab from the command line.

``deadrelu lab [--preset quick|full] [--only E1,E7] [--seeds N] [--out DIR]
[--device cpu|cuda] [--dataset mnist1d|digits|synthetic] [--no-progress]
[--executor local|ray [--address ADDR | --num-cpus N]]``

``--executor ray`` runs the experiments as Ray tasks (:mod:`deadrelu.lab.executors`): on a
local Ray instance started for the run (``--num-cpus``: its size, default every CPU), or on
the cluster at ``--address`` (``auto``, ``ray://head:10001``); ``results.json`` is the same
bytes as a local run's. Ray is the optional extra ``pip install 'deadrelu[ray]'``.

``deadrelu lab --markdown [RESULTS_JSON]`` runs nothing: it prints the claims table of a
finished run as Markdown (default: ``DIR/results.json`` of ``--out``), the form the README
holds between its ``claims-table`` markers.

Wiring into the main parser (``deadrelu.cli``)::

    from deadrelu.lab.command import add_lab_parser
    add_lab_parser(subparsers)          # subparsers = parser.add_subparsers(dest="command")
    ...
    if args.command == "lab":
        return args.func(args)          # or: return run_lab_command(args)

``add_lab_parser`` sets ``func=run_lab_command`` on the sub-parser, so a CLI that
dispatches with ``args.func(args)`` needs nothing else.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deadrelu.lab.executors import EXECUTORS

__all__ = ["add_lab_parser", "run_lab_command"]


def add_lab_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``lab`` sub-command to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "lab",
        help="run the experiments that test the notes' claims and write the HTML report",
        description=(
            "Run the lab's live checks (L1, L13, L14) and experiments (E1, E2, ...) and write "
            "DIR/index.html (self-contained report), DIR/results.json (reproducible numbers), "
            "DIR/timings.json and DIR/figures/*.png; print the claims table at the end, one "
            "row per claim, with each verdict's preset and bootstrap stability."
        ),
    )
    p.add_argument(
        "--preset",
        choices=("quick", "full", "tiny"),
        default="quick",
        help="size of the runs: quick (~3 min), full (~30 min), tiny (seconds, for tests)",
    )
    p.add_argument(
        "--only",
        metavar="IDS",
        default=None,
        help="comma-separated experiment ids to run, e.g. E1,E7 (default: all)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="seeds per setting (default: the preset's)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("report"),
        metavar="DIR",
        help="output directory (default: report)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--dataset",
        default="mnist1d",
        choices=("mnist1d", "digits", "synthetic"),
        help="dataset of the training experiments (default: mnist1d)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help=(
            "where the experiments run: local (this process, one after the other; default) "
            "or ray (one Ray task per experiment or arm; needs pip install 'deadrelu[ray]'); "
            "results.json is the same bytes either way"
        ),
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help=(
            "with --executor ray: the Ray cluster to connect to (auto, ray://head:10001, "
            "head:6379); every node needs deadrelu installed. Default: start a local Ray "
            "instance for the run"
        ),
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        metavar="N",
        help="with --executor ray and no --address: CPUs of the local Ray instance "
        "(default: every CPU)",
    )
    p.add_argument(
        "--markdown",
        nargs="?",
        const="",
        default=None,
        metavar="RESULTS_JSON",
        help=(
            "run nothing: print the claims table of a finished run as Markdown, from "
            "RESULTS_JSON (default: DIR/results.json; timing-based verdicts from the "
            "timings.json beside it)"
        ),
    )
    p.set_defaults(func=run_lab_command)
    return p


def run_lab_command(args: argparse.Namespace) -> int:
    """Run the lab for parsed ``args``; print the claims table; return the exit status.

    0 when every experiment ran, 1 when one failed (its error is in the report), 2 for a
    bad argument (unknown experiment id, CUDA not available, seeds < 1, a results file
    that is missing or not a lab results file, ``--executor ray`` without Ray installed or
    with a cluster that cannot be reached, ``--address`` / ``--num-cpus`` without it).
    """
    from rich.console import Console
    from rich.markup import escape

    from deadrelu.lab.core import LabConfig
    from deadrelu.lab.executors import ExecutorError, import_ray, make_executor
    from deadrelu.lab.runner import (
        check_device,
        claims_table,
        failed,
        markdown_from_results,
        resolve_only,
        run_lab,
    )

    console = Console()
    err = Console(stderr=True)
    if getattr(args, "markdown", None) is not None:
        path = Path(args.markdown) if args.markdown else Path(args.out) / "results.json"
        try:
            text = markdown_from_results(path)
        except (OSError, ValueError, KeyError) as exc:
            err.print(
                f"[red]deadrelu lab --markdown: cannot read "
                f"{escape(str(path))}: {escape(str(exc))}[/red]",
                soft_wrap=True,
            )
            return 2
        print(text, end="")
        return 0
    try:
        cfg = LabConfig(
            preset=args.preset,
            seeds=args.seeds,
            device=args.device,
            out=Path(args.out),
            dataset=args.dataset,
        )
        only = resolve_only(args.only) if args.only is not None else None
        check_device(cfg.device)
        name = getattr(args, "executor", "local")
        executor = make_executor(
            name, address=getattr(args, "address", None), num_cpus=getattr(args, "num_cpus", None)
        )
        if name == "ray":
            import_ray()  # before anything runs: say how to install it
        results = run_lab(cfg, only=only, progress=not args.no_progress, executor=executor)
    except (ValueError, ExecutorError) as exc:
        err.print(f"[red]deadrelu lab: {escape(str(exc))}[/red]", soft_wrap=True)
        return 2
    console.print(claims_table(results, show_text=console.width >= 120))
    console.print(
        f"preset {cfg.preset}, {cfg.n_seeds} seeds per setting by default; 'fragile': the "
        "verdict holds in fewer than 90 % of bootstrap resamples of the seeds",
        soft_wrap=True,
    )
    console.print(
        f"report: {cfg.out / 'index.html'}   numbers: {cfg.out / 'results.json'}   "
        f"ran on: {executor.describe()}",
        soft_wrap=True,
    )
    bad = failed(results)
    if bad:
        ids = ", ".join(r.id for r in bad)
        err.print(f"[red]{len(bad)} experiment(s) failed: {ids}[/red]", soft_wrap=True)
        return 1
    return 0
