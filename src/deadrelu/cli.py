"""The ``deadrelu`` command line: thin over the library.

Adding a sub-command: write ``add_<name>_parser(subparsers) -> argparse.ArgumentParser``
that adds the parser, its options (each with ``help``) and ``set_defaults(func=handler)``,
where ``handler(args) -> int`` returns the exit status; then list the function in
:func:`_subcommands`. :func:`main` dispatches through ``args.func`` and knows no names.
Handlers import what they need lazily, so ``deadrelu --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deadrelu.activations import Activation

__all__ = ["add_activations_parser", "build_parser", "main", "run_activations"]

#: Default folder of ``deadrelu activations`` (the same as ``deadrelu lab``'s).
DEFAULT_OUT = Path("report")


def _subcommands() -> list[Callable[[Any], argparse.ArgumentParser]]:
    """The ``add_<name>_parser`` functions, in the order ``--help`` lists them."""
    from deadrelu.lab.command import add_lab_parser
    from deadrelu.scan_command import add_certify_parser, add_explain_parser, add_scan_parser

    return [
        add_scan_parser,
        add_explain_parser,
        add_certify_parser,
        add_activations_parser,
        add_lab_parser,
    ]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="deadrelu", description="Find, explain and cure dead ReLU units."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _subcommands():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deadrelu`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from deadrelu import __version__

        print(__version__)
        return 0
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    return int(func(args))


# ------------------------------------------------------------------ deadrelu activations


def add_activations_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``deadrelu activations``: the table of the ReLU family and the PNG grid."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "activations",
        help="table of the ReLU family (formula, defaults, f'(0), zero-gradient region) "
        "and a PNG of each function and its derivative",
        description=textwrap.fill(
            "Print a table of the activations deadrelu knows: name, formula, default "
            "parameters, f'(0) (PyTorch's convention at the kink), the region where the "
            "gradient is exactly zero and whether f' saturates to 0 as z -> -inf. Write a "
            "PNG grid with f (solid) and its analytic derivative f' (dashed) for each, the "
            "zero-gradient region shaded.",
            width=80,
        ),
        epilog=(
            "examples:  deadrelu activations --out report\n"
            "           deadrelu activations relu 'leaky_relu(0.2)' 'elu(alpha=0.3)' "
            "--png elu.png\n"
            "           deadrelu activations --json --no-png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="ACTIVATION",
        help="activations to show, as registry strings with optional parameters, e.g. relu "
        "'leaky_relu(0.2)' 'elu(alpha=0.3)' (default: every registered one, at its defaults)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for the PNG, written as DIR/activations.png (default: {DEFAULT_OUT})",
    )
    p.add_argument(
        "--png",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the PNG to PATH instead of DIR/activations.png",
    )
    p.add_argument("--no-png", action="store_true", help="only print the table")
    p.add_argument(
        "--range",
        type=float,
        nargs=2,
        default=(-5.0, 7.0),
        metavar=("LOW", "HIGH"),
        dest="z_range",
        help="z axis of the plots (default: -5 7)",
    )
    p.add_argument("--columns", type=int, default=4, metavar="N", help="plots per row (default: 4)")
    p.add_argument(
        "--dpi", type=int, default=100, help="resolution of the PNG in dots per inch (default: 100)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the table as one JSON object (key 'activations') instead of a rich table",
    )
    p.set_defaults(func=run_activations)
    return p


def _rows(acts: Sequence[Activation]) -> list[dict[str, Any]]:
    import torch

    rows = []
    for act in acts:
        spec = act.spec
        at_zero = act.derivative(torch.zeros(1, dtype=torch.float64)).item()
        rows.append(
            {
                "name": str(act),
                "formula": spec.formula,
                "derivative": spec.derivative_formula,
                "defaults": dict(spec.defaults),
                "params": dict(act.params),
                "f_prime_at_0": at_zero,
                "zero_grad_region": spec.zero_grad_region,
                "saturates": spec.saturates,
                "torch_modules": [f"nn.{m.__name__}" for m in spec.torch_modules],
            }
        )
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def run_activations(args: argparse.Namespace) -> int:
    """Handler of ``deadrelu activations``: print the table, write the PNG; exit status."""
    from rich.console import Console
    from rich.table import Table

    from deadrelu.activations import get, names

    err = Console(stderr=True)
    acts: list[Activation] = []
    try:
        for text in args.names or names():
            act = get(text)
            assert act is not None  # a string never resolves to None
            acts.append(act)
    except ValueError as exc:
        err.print(f"deadrelu activations: {exc}", style="red", markup=False)
        return 2
    rows = _rows(acts)

    png: Path | None = None
    if not args.no_png:
        from deadrelu.plots import plot_activations

        target = args.png if args.png is not None else args.out / "activations.png"
        try:
            png = plot_activations(
                acts,
                target,
                z_range=tuple(args.z_range),
                columns=args.columns,
                dpi=args.dpi,
            )
        except (ValueError, OSError) as exc:
            err.print(f"deadrelu activations: {exc}", style="red", markup=False)
            return 2

    if args.json:
        print(json.dumps({"activations": rows, "png": str(png) if png else None}, indent=2))
        return 0
    table = Table(title="The ReLU family", show_lines=False)
    widest = max((len(row["name"]) for row in rows), default=4)
    table.add_column("name", no_wrap=True, min_width=widest)  # names are never cut
    for column in ("formula", "defaults", "f'(0)", "zero gradient", "saturates"):
        table.add_column(column, overflow="fold")
    for row in rows:
        defaults = ", ".join(f"{k}={_fmt(v)}" for k, v in row["defaults"].items()) or "-"
        table.add_row(
            row["name"],
            row["formula"],
            defaults,
            f"{row['f_prime_at_0']:.6g}",
            row["zero_grad_region"],
            "yes" if row["saturates"] else "no",
        )
    console = Console()
    console.print(table)
    if png is not None:
        console.print(f"plot: {png}", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
