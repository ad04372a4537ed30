"""The result of a scan: per-unit classes per call site, as a table, JSON and plots.

A :class:`Report` is built from ``{site name: UnitStats}`` and the matching
``{site name: Site}`` (what :func:`deadrelu.scan.scan` and the Monitor gather). It
classifies every unit with :mod:`deadrelu.classify` (the one place the words are defined):

* ``dead``: never z > 0 on any position seen (:func:`~deadrelu.classify.dead_mask`);
* ``dormant``: ReDo score <= ``tau`` (:func:`~deadrelu.classify.dormant_mask`), computed
  among the units whose mean |output| is finite; a unit with NaN/inf output is not dormant;
* ``rarely_active``: z > 0 on fewer than ``rarely_fraction`` of positions;
* ``saturated``: only for saturating activations (ELU, SELU, GELU, ...) and only when the
  statistics have the z range (detail "range" or "full");
* ``nonfinite``: at least one NaN or inf pre-activation, or a NaN/inf mean |output| (what
  detail "counts" can see). Such units can be dead too (NaN > 0 is false): the table's
  title says how many of the dead units are non-finite.

The classes, their thresholds and which statistics each needs are data
(:data:`deadrelu.classify.UNIT_CLASSES`): the masks, the table's columns, the summary and
the JSON iterate that registry.

A site that saw no position has every mask False. The statistics are copied to the CPU
once, at construction; the report never touches the model.

JSON (:meth:`Report.to_json`) is ``{"schema": "deadrelu.report/1", "settings": ...,
"meta": ..., "summary": ..., "sites": [...]}``; every site carries its raw statistics,
so :meth:`Report.from_json` rebuilds the same report (and can re-classify with another
``tau``). Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``.

Activation frequency (Voita et al. 2023, "Neurons in Large Language Models: Dead, N-gram,
Positional"): :meth:`Report.activation_frequency` is each unit's fraction of positions with
z > 0; :meth:`Report.frequencies` gives per site the dead and rarely-active fractions and
a histogram of those frequencies over the fixed log-spaced bins :data:`FREQUENCY_EDGES`
(an exact-zero bin for the never-active units, then decades up to 1);
:meth:`Report.frequency_table` prints it, compactly.

Plots: :meth:`Report.plot` draws the dead and dormant fraction per site;
:func:`plot_history` draws any per-site series over training steps (for the Monitor).
Both write a PNG with matplotlib's Agg canvas, imported lazily, without touching pyplot's
global state.
"""

from __future__ import annotations

import html
import io
import itertools
import json
import math
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from deadrelu import activations, classify
from deadrelu.capture import Site
from deadrelu.plots import figure_axes
from deadrelu.scan_html import write_html
from deadrelu.stats import UnitStats

__all__ = [
    "CLASSES",
    "FREQUENCY_EDGES",
    "SCHEMA",
    "LayerFrequency",
    "LayerSummary",
    "Report",
    "Result",
    "frequency_bin_labels",
    "frequency_histogram",
    "html_table",
    "plot_history",
    "tensor_from_json",
    "tensor_to_json",
]

SCHEMA = "deadrelu.report/1"
#: The unit classes a report knows, in display order (:data:`deadrelu.classify.UNIT_CLASSES`).
CLASSES = classify.CLASS_NAMES


#: Bin edges of the activation-frequency histogram (:meth:`Report.frequencies`): 0, then
#: decades from 1e-8 to 1. Bin 0 holds the units whose frequency is exactly 0 (never
#: z > 0); bin k >= 1 the units with ``edges[k-1] <= f < edges[k]`` (bin 1: ``0 < f <
#: 1e-8``; the last bin includes 1). Fixed, so histograms of different layers, models and
#: corpora compare bin by bin; 1e-2 is also the default rarely-active threshold.
FREQUENCY_EDGES: tuple[float, ...] = (0.0, *(10.0**k for k in range(-8, 1)))


def _check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(e) for e in edges)
    if (
        len(out) < 2
        or out[0] != 0.0
        or out[-1] != 1.0
        or any(b <= a for a, b in itertools.pairwise(out))
    ):
        raise ValueError(
            f"frequency histogram edges must increase strictly from 0 to 1, got {list(out)}; "
            f"e.g. deadrelu.report.FREQUENCY_EDGES"
        )
    return out


def frequency_histogram(
    frequency: Tensor, edges: Sequence[float] = FREQUENCY_EDGES
) -> tuple[int, ...]:
    """Count units per activation-frequency bin.

    Args:
        frequency: ``(U,)`` per-unit fractions in [0, 1] (NaN entries, units of a site that
            saw no position, are not counted); compared in float64 (give float64 for exact
            edges: float32 1e-8 is below 1e-8).
        edges: ``(K,)`` bin edges, strictly increasing from 0 to 1 (:data:`FREQUENCY_EDGES`).

    Returns:
        ``K`` counts: ``counts[0]`` the units with frequency exactly 0, ``counts[k]`` (k >= 1)
        those with ``edges[k-1] <= f < edges[k]``, except that bin 1 excludes 0 and the last
        bin includes 1.
    """
    e = _check_edges(edges)
    f = frequency.detach().to("cpu", torch.float64).reshape(-1)
    f = f[~torch.isnan(f)]
    counts = torch.zeros(len(e), dtype=torch.int64)
    counts[0] = int((f == 0).sum())
    positive = f[f > 0]
    if positive.numel():
        inner = torch.tensor(e[1:-1], dtype=torch.float64)
        idx = torch.bucketize(positive, inner, right=True) + 1  # [e[k-1], e[k]) -> k
        counts += torch.bincount(idx, minlength=len(e))
    return tuple(int(c) for c in counts)


def frequency_bin_labels(edges: Sequence[float] = FREQUENCY_EDGES) -> list[str]:
    """A short label per bin of :func:`frequency_histogram`: ``"0"``, ``"<1e-8"``, then
    each bin's lower edge (``"1e-8"``, ..., ``"1e-1"``; powers of ten as ``1eK``)."""
    e = _check_edges(edges)
    return ["0", f"<{_edge_label(e[1])}", *(_edge_label(x) for x in e[1:-1])]


def _edge_label(x: float) -> str:
    k = round(math.log10(x))
    return f"1e{k}" if 10.0**k == x and k < 0 else f"{x:g}"


@runtime_checkable
class Result(Protocol):
    """What every deadrelu answer shares: :class:`Report`, :class:`deadrelu.monitor.Monitor`,
    :class:`deadrelu.certify.Certificate` and :class:`deadrelu.explain.Explanation`.

    * ``sites``: the call-site names, in the order they ran (``list(result.sites)``; a
      Report and a Certificate map each name to its details, ``Site`` / ``SiteBounds``);
    * ``dead_units(site) -> list[int]``: the dead unit indices of one site, sorted
      (``KeyError`` naming the known sites for an unknown one);
    * ``to_dict()``: a JSON-ready dict; ``type(result).from_dict(d, ...)`` rebuilds it
      (a Monitor also needs the model: ``Monitor.from_dict(d, model)``);
    * ``repr(result)``: one short line; ``_repr_html_()``: a compact HTML table (Jupyter).
    """

    @property
    def sites(self) -> Collection[str]: ...

    def dead_units(self, site: str) -> list[int]: ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, *args: Any, **kwargs: Any) -> Any: ...

    def _repr_html_(self) -> str: ...


def html_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *, max_rows: int = 50
) -> str:
    """A compact HTML table (escaped) for notebooks; more than ``max_rows`` rows are cut
    with a last row saying how many were left out."""
    shown = list(rows[:max_rows])
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in shown
    )
    if len(rows) > max_rows:
        more = f"... {len(rows) - max_rows} more rows"
        body += f'<tr><td colspan="{len(header)}">{more}</td></tr>'
    return (
        f"<div><b>{html.escape(title)}</b><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def tensor_to_json(t: Tensor) -> dict[str, Any]:
    """A tensor as ``{"dtype", "shape", "data"}`` (flat; non-finite floats as strings)."""
    flat = t.detach().cpu().reshape(-1)
    return {
        "dtype": str(flat.dtype).removeprefix("torch."),
        "shape": list(t.shape),
        "data": _encode(flat),
    }


def tensor_from_json(value: Mapping[str, Any]) -> Tensor:
    """Inverse of :func:`tensor_to_json`."""
    dtype = getattr(torch, str(value["dtype"]))
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown tensor dtype {value['dtype']!r}")
    data = [float(x) if isinstance(x, str) else x for x in value["data"]]
    return torch.tensor(data, dtype=dtype).reshape(value["shape"])


@dataclass(frozen=True)
class LayerSummary:
    """One row of :attr:`Report.layers`: the counts of one call site."""

    name: str
    activation: str
    kind: str
    unit_dim: int
    units: int
    positions: int
    dead: int
    dormant: int
    rarely_active: int
    saturated: int
    nonfinite: int
    dead_fraction: float
    dormant_fraction: float
    mean_active_fraction: float
    mean_abs: float


@dataclass(frozen=True)
class LayerFrequency:
    """One row of :meth:`Report.frequencies`: how often the units of one site fire.

    Attributes:
        name: the site.
        units: U, its units.
        positions: positions each unit saw (tokens x batch for a token site).
        dead_fraction: dead units / U (the report's ``dead`` class).
        rarely_active_fraction: rarely active units / U (active on fewer than the report's
            ``rarely_fraction`` of positions; the dead ones included).
        edges: the histogram's ``K`` bin edges (:data:`FREQUENCY_EDGES`).
        counts: ``K`` units per bin (:func:`frequency_histogram`; all 0 when the site saw
            no position).
    """

    name: str
    units: int
    positions: int
    dead_fraction: float
    rarely_active_fraction: float
    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def labels(self) -> list[str]:
        """One short label per bin (:func:`frequency_bin_labels`)."""
        return frequency_bin_labels(self.edges)


class Report:
    """Dead, dormant, rarely-active, saturated and non-finite units per call site.

    Args:
        stats: ``{site name: UnitStats}``.
        sites: ``{site name: Site}``; must cover every key of ``stats``.
        tau: ReDo dormancy threshold.
        rarely_fraction: the rarely-active threshold (fraction of positions).
        saturation_threshold: |f'| below which a saturating unit counts as saturated.
        meta: free-form, JSON-serialisable information (batches seen, mode ...).
        given: ``{site: {class: (U,) bool}}`` masks decided by the source instead of
            computed from ``stats`` (the Monitor gives "dead" over its exact sliding
            window, which its pane statistics cannot show); kept in the JSON.
    """

    def __init__(
        self,
        stats: Mapping[str, UnitStats],
        sites: Mapping[str, Site],
        *,
        tau: float = classify.DORMANT_TAU,
        rarely_fraction: float = classify.RARELY_ACTIVE_FRACTION,
        saturation_threshold: float = classify.SATURATION_THRESHOLD,
        meta: Mapping[str, Any] | None = None,
        given: Mapping[str, Mapping[str, Tensor]] | None = None,
    ) -> None:
        missing = [name for name in stats if name not in sites]
        if missing:
            raise ValueError(f"no Site given for statistics of {missing}")
        classify.Thresholds(tau, rarely_fraction, saturation_threshold)  # validates them
        self.tau = float(tau)
        self.rarely_fraction = float(rarely_fraction)
        self.saturation_threshold = float(saturation_threshold)
        self.meta: dict[str, Any] = dict(meta or {})
        self.sites: dict[str, Site] = {name: sites[name] for name in stats}
        self.stats: dict[str, UnitStats] = {name: s.to("cpu") for name, s in stats.items()}
        self.given: dict[str, dict[str, Tensor]] = {}
        for name, masks in (given or {}).items():
            if name not in self.stats:
                raise ValueError(f"given masks for {name!r}, which has no statistics")
            for kind, mask in masks.items():
                classify.get_class(kind)
                if tuple(mask.shape) != (self.stats[name].units,):
                    raise ValueError(
                        f"given {kind!r} mask of {name!r} has shape {tuple(mask.shape)}, "
                        f"expected ({self.stats[name].units},)"
                    )
            self.given[name] = {k: m.to("cpu", torch.bool) for k, m in masks.items()}
        self._masks = {name: self._classify(name) for name in self.stats}

    # ------------------------------------------------------------------ classification

    @property
    def thresholds(self) -> classify.Thresholds:
        """The thresholds the classes were computed with."""
        return classify.Thresholds(self.tau, self.rarely_fraction, self.saturation_threshold)

    def _classify(self, name: str) -> dict[str, Tensor]:
        masks = classify.classify_units(
            self.stats[name], self.sites[name].activation, self.thresholds
        )
        masks.update({k: m.clone() for k, m in self.given.get(name, {}).items()})
        return masks

    def computable(self, kind: str, site: str) -> bool:
        """Whether the statistics of ``site`` can show class ``kind`` at all (e.g. no
        "saturated" without the z range, nor for a non-saturating activation)."""
        return classify.get_class(kind).computable(
            self.stats[self._site(site)], self.sites[site].activation
        )

    def _site(self, site: str) -> str:
        if site not in self._masks:
            raise KeyError(f"no call site {site!r} in this report; sites: {list(self._masks)}")
        return site

    def masks(self, site: str) -> dict[str, Tensor]:
        """``{class: (U,) bool mask}`` for one site (classes in :data:`CLASSES`)."""
        return {k: v.clone() for k, v in self._masks[self._site(site)].items()}

    def units(self, kind: str, site: str) -> list[int]:
        """Indices of the units of ``site`` in class ``kind`` (one of :data:`CLASSES`)."""
        classify.get_class(kind)
        return torch.nonzero(self._masks[self._site(site)][kind]).flatten().tolist()

    def dead_units(self, site: str) -> list[int]:
        """Indices of the dead units of ``site``, e.g. ``report.dead_units("features.3")``."""
        return self.units("dead", site)

    def dormant_units(self, site: str) -> list[int]:
        """Indices of the dormant units (ReDo score <= tau) of ``site``."""
        return self.units("dormant", site)

    def rarely_active_units(self, site: str) -> list[int]:
        """Indices of the rarely active units of ``site``."""
        return self.units("rarely_active", site)

    def saturated_units(self, site: str) -> list[int]:
        """Indices of the saturated units of ``site`` (saturating activations only)."""
        return self.units("saturated", site)

    def nonfinite_units(self, site: str) -> list[int]:
        """Indices of the units of ``site`` that saw a NaN or inf pre-activation."""
        return self.units("nonfinite", site)

    def all_units(self, kind: str = "dead") -> dict[str, list[int]]:
        """``{site: indices}`` of class ``kind``, sites with none included (empty list)."""
        return {name: self.units(kind, name) for name in self._masks}

    # ------------------------------------------------------------------ summaries

    @property
    def layers(self) -> list[LayerSummary]:
        """One :class:`LayerSummary` per site, in order of first call."""
        rows = []
        for name, s in self.stats.items():
            m = self._masks[name]
            site = self.sites[name]
            units = s.units
            rows.append(
                LayerSummary(
                    name=name,
                    activation=str(site.activation),
                    kind=site.kind,
                    unit_dim=site.unit_dim,
                    units=units,
                    positions=int(s.positions),
                    **{kind: int(m[kind].sum()) for kind in CLASSES},
                    dead_fraction=float(m["dead"].sum()) / units,
                    dormant_fraction=float(m["dormant"].sum()) / units,
                    mean_active_fraction=float(s.active_fraction.mean()),
                    mean_abs=float(s.mean_abs.mean()),
                )
            )
        return rows

    def activation_frequency(self, site: str) -> Tensor:
        """``(U,)`` float64: each unit's fraction of the positions of ``site`` with z > 0
        (``active / positions``; all NaN when the site saw no position)."""
        s = self.stats[self._site(site)]
        positions = float(s.positions)
        if positions == 0:
            return torch.full((s.units,), math.nan, dtype=torch.float64)
        return s.active.to(torch.float64) / positions

    def frequencies(self, edges: Sequence[float] = FREQUENCY_EDGES) -> list[LayerFrequency]:
        """Per site, in report order: units, dead and rarely-active fraction, and the
        histogram of the units' :meth:`activation_frequency` over ``edges`` (``(K,)``,
        increasing from 0 to 1; default :data:`FREQUENCY_EDGES`: an exact-zero bin, then
        decades from 1e-8 to 1), as in Voita et al. 2023 for LLM feed-forward neurons."""
        e = _check_edges(edges)
        out = []
        for name, s in self.stats.items():
            m = self._masks[name]
            units = s.units
            out.append(
                LayerFrequency(
                    name=name,
                    units=units,
                    positions=int(s.positions),
                    dead_fraction=float(m["dead"].sum()) / units if units else 0.0,
                    rarely_active_fraction=(
                        float(m["rarely_active"].sum()) / units if units else 0.0
                    ),
                    edges=e,
                    counts=frequency_histogram(self.activation_frequency(name), e),
                )
            )
        return out

    @property
    def total_units(self) -> int:
        """Units over all sites."""
        return sum(s.units for s in self.stats.values())

    def count(self, kind: str = "dead") -> int:
        """Units of class ``kind`` over all sites."""
        classify.get_class(kind)
        return sum(int(m[kind].sum()) for m in self._masks.values())

    def fraction(self, kind: str = "dead") -> float:
        """Fraction of all units (over all sites) in class ``kind``; 0 for no units."""
        total = self.total_units
        return self.count(kind) / total if total else 0.0

    @property
    def dead_fraction(self) -> float:
        """Dead units / all units, over every site."""
        return self.fraction("dead")

    @property
    def dormant_fraction(self) -> float:
        """Dormant units / all units, over every site."""
        return self.fraction("dormant")

    def summary(self) -> dict[str, Any]:
        """Totals: units, and count and fraction of every class."""
        out: dict[str, Any] = {"sites": len(self.stats), "units": self.total_units}
        for kind in CLASSES:
            out[kind] = self.count(kind)
            out[f"{kind}_fraction"] = self.fraction(kind)
        return out

    # ------------------------------------------------------------------ display

    def table(self, title: str | None = None, *, width: int | None = None) -> Any:
        """A ``rich.table.Table`` with one row per site, fitted to ``width`` columns.

        ``width`` (default: the terminal's, 120 when unknown): the table never gets
        wider. Site names are never cut: when the columns do not fit, the least
        important ones are left out first (active %, dead %, rarely active,
        non-finite, saturated, dormant, activation; the caption names them), and a
        site name longer than the space left wraps onto several lines.
        """
        from rich.table import Table

        width = width or shutil.get_terminal_size((120, 24)).columns
        th = self.thresholds
        rows = self.layers
        columns: list[tuple[str, str, list[str]]] = [
            ("site", "left", [r.name for r in rows]),
            ("activation", "left", [r.activation for r in rows]),
            ("units", "right", [str(r.units) for r in rows]),
        ]
        for c in classify.UNIT_CLASSES:
            cells = [
                str(getattr(r, c.name)) if self.computable(c.name, r.name) else "-" for r in rows
            ]
            columns.append((c.header(th), "right", cells))
        columns.append(("dead %", "right", [f"{100 * r.dead_fraction:.1f}" for r in rows]))
        columns.append(("active %", "right", [f"{100 * r.mean_active_fraction:.1f}" for r in rows]))
        drop_order = ["active %", "dead %", "rarely active", "non-finite", "saturated"]
        drop_order += [classify.get_class("dormant").header(th), "activation"]

        def needed(cols: list[tuple[str, str, list[str]]]) -> int:
            # rich's heavy-head box: 1 border + per column (2 padding + content + 1 border)
            return 1 + sum(3 + max([len(h), *map(len, cells)]) for h, _, cells in cols)

        dropped: list[str] = []
        for name in drop_order:
            if needed(columns) <= width:
                break
            columns = [c for c in columns if c[0] != name]
            dropped.append(name)
        table = Table(
            title=title or self._title(),
            caption=f"left out to fit {width} columns: {', '.join(dropped)}" if dropped else None,
        )
        for header, just, _ in columns:
            if header == "site":
                natural = max([4, *map(len, columns[0][2])])
                room = width - needed([c for c in columns if c[0] != "site"]) - 3
                table.add_column(
                    header, justify="left", overflow="fold", min_width=min(natural, max(4, room))
                )
            else:
                table.add_column(header, justify=just, no_wrap=True)  # type: ignore[arg-type]
        for i, r in enumerate(rows):
            table.add_row(*(cells[i] for _, _, cells in columns), style="red" if r.dead else None)
        return table

    def frequency_table(self, *, width: int | None = None) -> Any:
        """A compact ``rich.table.Table`` of :meth:`frequencies`, one row per site: units,
        dead %, rarely active %, and the activation-frequency histogram as a sparkline
        (one character per bin of :data:`FREQUENCY_EDGES`, height relative to the site's
        largest bin, ``·`` an empty bin; the caption names the bins). ``width`` (default:
        the terminal's): site names longer than the room left wrap, never cut."""
        from rich.table import Table

        width = width or shutil.get_terminal_size((120, 24)).columns
        rows = self.frequencies()
        labels = frequency_bin_labels()
        tokens = self.meta.get("tokens")
        seen = f" over {tokens} tokens" if isinstance(tokens, int) else ""
        cells = [
            [
                str(r.units),
                f"{100 * r.dead_fraction:.1f}",
                f"{100 * r.rarely_active_fraction:.1f}",
                _sparkline(r.counts),
            ]
            for r in rows
        ]
        headers = ["units", "dead %", "rarely active %", "histogram"]
        # rich's heavy-head box: 1 border + per column (2 padding + content + 1 border)
        others = 1 + sum(
            3 + max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)
        )
        table = Table(
            title=f"activation frequency per site{seen}",
            caption=f"histogram bins (z > 0 on this fraction of positions): {' '.join(labels)}"
            f"; rarely active: < {100 * self.rarely_fraction:g} %",
        )
        natural = max([4, *(len(r.name) for r in rows)])
        table.add_column(
            "site", overflow="fold", min_width=min(natural, max(4, width - others - 3))
        )
        for h in headers:
            table.add_column(h, justify="left" if h == "histogram" else "right", no_wrap=True)
        for r, c in zip(rows, cells, strict=True):
            table.add_row(r.name, *c, style="red" if r.dead_fraction else None)
        return table

    def __str__(self) -> str:
        """The table at the terminal's width (120 when unknown)."""
        from rich.console import Console

        width = shutil.get_terminal_size((120, 24)).columns
        buf = io.StringIO()
        console = Console(file=buf, width=width, no_color=True, color_system=None)
        console.print(self.table(width=width))
        return buf.getvalue().rstrip()

    def _title(self) -> str:
        s = self.summary()
        text = (
            f"deadrelu: {s['dead']}/{s['units']} units dead "
            f"({100 * s['dead_fraction']:.1f} %) in {s['sites']} sites"
        )
        if s["nonfinite"]:
            text += (
                f"; {s['nonfinite']} saw NaN/inf ({self._dead_nonfinite()} of them counted dead)"
            )
        return text

    def _dead_nonfinite(self) -> int:
        return sum(int((m["dead"] & m["nonfinite"]).sum()) for m in self._masks.values())

    def __repr__(self) -> str:
        s = self.summary()
        nonfinite = f", nonfinite={s['nonfinite']}" if s["nonfinite"] else ""
        return (
            f"Report(sites={s['sites']}, units={s['units']}, dead={s['dead']}, "
            f"dormant={s['dormant']}{nonfinite}, tau={self.tau:g})"
        )

    def _repr_html_(self) -> str:
        s = self.summary()
        header = ["site", "activation", "units", *CLASSES]
        rows = [
            [r.name, r.activation, r.units]
            + [getattr(r, c) if self.computable(c, r.name) else "-" for c in CLASSES]
            for r in self.layers
        ]
        title = f"deadrelu report: {s['dead']}/{s['units']} units dead in {s['sites']} sites"
        return html_table(title, header, rows)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dictionary (see the module docstring)."""
        sites = []
        for row, freq in zip(self.layers, self.frequencies(), strict=True):
            site = self.sites[row.name]
            stats = self.stats[row.name]
            entry: dict[str, Any] = {
                "name": row.name,
                "activation": str(site.activation),
                "kind": site.kind,
                "module": site.module,
                "unit_dim": site.unit_dim,
                "summary": {k: v for k, v in asdict(row).items() if k not in {"name"}},
                "units": {kind: self.units(kind, row.name) for kind in CLASSES},
                "given": sorted(self.given.get(row.name, {})),
                "frequency": {k: v for k, v in asdict(freq).items() if k != "name"},
                "stats": {k: _encode(v) for k, v in stats.state_dict().items()},
            }
            sites.append(entry)
        return _sanitize(
            {
                "schema": SCHEMA,
                "settings": {
                    "tau": self.tau,
                    "rarely_fraction": self.rarely_fraction,
                    "saturation_threshold": self.saturation_threshold,
                },
                "meta": self.meta,
                "summary": self.summary(),
                "sites": sites,
            }
        )

    def to_json(self, path: str | Path | None = None, *, indent: int | None = 1) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_html(self, path: str | Path, *, explanation: Any = None) -> Path:
        """Write the self-contained HTML scan report to ``path`` (see
        :mod:`deadrelu.scan_html`; ``explanation``: an Explanation to show the causes)."""
        return write_html(self, path, explanation=explanation)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, tau: float | None = None, source: str = "the data"
    ) -> Report:
        """Rebuild from :meth:`to_dict`; ``tau`` re-classifies with another threshold.

        Raises:
            ValueError: ``data`` is not a report dict, or a field is missing or malformed;
                the message names ``source`` (e.g. the file) and the field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{source}: a deadrelu report is a JSON object, got a "
                f"{type(data).__name__}; was it written by Report.to_json()?"
            )
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ValueError(
                f"{source}: not a deadrelu report: schema is {schema!r}, expected "
                f"{SCHEMA!r}; was this file written by Report.to_json()?"
            )
        settings = _get(data, "settings", Mapping, source, default={})
        entries = _get(data, "sites", list, source)
        stats: dict[str, UnitStats] = {}
        sites: dict[str, Site] = {}
        given: dict[str, dict[str, Tensor]] = {}
        for i, entry in enumerate(entries):
            where = f"sites[{i}]"
            if not isinstance(entry, Mapping):
                raise ValueError(
                    f"{source}: field {where} is a {type(entry).__name__}, not an object"
                )
            name = _get(entry, "name", str, source, where)
            where = f"sites[{i}] ({name!r})"
            act_name = _get(entry, "activation", str, source, where)
            try:
                act = activations.get(act_name)
                assert act is not None
                sites[name] = Site(
                    name,
                    act,
                    int(_get(entry, "unit_dim", int, source, where)),
                    _get(entry, "kind", str, source, where),
                    entry.get("module", ""),
                )
            except (KeyError, ValueError, AssertionError) as exc:
                if str(exc).startswith(source):
                    raise
                raise ValueError(f"{source}: field {where}.activation: {exc}") from exc
            raw = _get(entry, "stats", Mapping, source, where)
            try:
                stats[name] = UnitStats.from_state_dict({k: _decode(v) for k, v in raw.items()})
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise ValueError(f"{source}: field {where}.stats is malformed: {exc}") from exc
            units_by_class = entry.get("units", {})
            for kind in entry.get("given", []):
                mask = torch.zeros(stats[name].units, dtype=torch.bool)
                try:
                    mask[torch.as_tensor(units_by_class[kind], dtype=torch.int64)] = True
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    raise ValueError(f"{source}: field {where}.units.{kind}: {exc}") from exc
                given.setdefault(name, {})[kind] = mask
        try:
            return cls(
                stats,
                sites,
                tau=settings.get("tau", classify.DORMANT_TAU) if tau is None else tau,
                rarely_fraction=settings.get("rarely_fraction", classify.RARELY_ACTIVE_FRACTION),
                saturation_threshold=settings.get(
                    "saturation_threshold", classify.SATURATION_THRESHOLD
                ),
                meta=data.get("meta"),
                given=given,
            )
        except (TypeError, ValueError) as exc:
            if tau is not None and "tau" in str(exc):
                raise
            raise ValueError(f"{source}: field settings: {exc}") from exc

    @classmethod
    def from_json(cls, source: str | Path, *, tau: float | None = None) -> Report:
        """Rebuild from JSON text or a path to a ``.json`` file written by :meth:`to_json`.

        Raises:
            ValueError: the text is not valid JSON (truncated, corrupt) or not a report;
                the message names the file (or "the JSON text") and the field.
        """
        text = str(source)
        where = "the JSON text"
        if isinstance(source, Path) or not text.lstrip().startswith(("{", "[")):
            where = str(source)
            text = Path(source).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                f"{exc.colno}); the file may be truncated or corrupt: write it again with "
                f"Report.to_json()"
            ) from exc
        return cls.from_dict(data, tau=tau, source=where)

    # ------------------------------------------------------------------ plots

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write a PNG: dead and dormant fraction per site (horizontal bars). Returns path."""
        rows = self.layers
        names = [r.name for r in rows]
        fig, ax = figure_axes(width=7.0, height=max(2.0, 0.35 * len(rows) + 1.2))
        y = list(range(len(rows)))
        ax.barh(
            y,
            [r.dormant_fraction for r in rows],
            color="#f4a582",
            label=f"dormant (τ={self.tau:g})",
        )
        ax.barh(y, [r.dead_fraction for r in rows], color="#b2182b", label="dead")
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of units")
        ax.set_title(title or f"dead units per site ({100 * self.dead_fraction:.1f} % overall)")
        ax.legend(loc="lower right", fontsize="small")
        return _save(fig, path)


def plot_history(
    steps: Sequence[int],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    ylabel: str = "dead fraction",
    title: str | None = None,
    logx: bool = False,
) -> Path:
    """Write a PNG of per-site values over training steps (one line per site).

    Args:
        steps: the x values, length T.
        series: ``{site name: T values}``, e.g. the dead fraction of each site at each
            Monitor step; NaN leaves a gap (a site not yet seen).
        path: where to write the PNG.
        ylabel, title, logx: axis label, title, logarithmic step axis.
    """
    for name, values in series.items():
        if len(values) != len(steps):
            raise ValueError(
                f"series {name!r} has {len(values)} values for {len(steps)} steps; "
                f"give one value per step (NaN where missing)"
            )
    fig, ax = figure_axes(width=7.0, height=4.0)
    for name, values in series.items():
        ax.plot(list(steps), list(values), label=name, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title)
    if 0 < len(series) <= 12:
        ax.legend(fontsize="small")
    return _save(fig, path)


_SPARKS = "▁▂▃▄▅▆▇█"


def _sparkline(counts: Sequence[int]) -> str:
    """One character per count: ``·`` for 0, else a block whose height is the count
    relative to the largest (any non-zero count at least the lowest block)."""
    top = max(counts, default=0)
    out = []
    for c in counts:
        if c <= 0:
            out.append("·")
        else:
            out.append(_SPARKS[max(0, math.ceil(len(_SPARKS) * c / top) - 1)])
    return "".join(out)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _get(
    obj: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    source: str,
    where: str = "",
    default: Any = None,
) -> Any:
    """``obj[key]`` checked to be a ``kind``; ValueError naming ``source`` and the field."""
    field = f"{where}.{key}" if where else key
    if key not in obj:
        if default is not None:
            return default
        raise ValueError(f"{source}: field {field} is missing; was it written by Report.to_json()?")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(
            f"{source}: field {field} is a {type(value).__name__}, not the expected type"
        )
    return value


def _encode(t: Tensor) -> Any:
    """Tensor -> JSON value; non-finite floats as strings."""
    value = t.tolist()
    if t.is_floating_point():
        return _map_floats(value, lambda x: x if math.isfinite(x) else str(x))
    return value


def _decode(value: Any) -> Tensor:
    """Inverse of :func:`_encode` (ints stay int64, floats become float64)."""
    floats = _has_float(value)
    decoded = _map_floats(value, lambda x: float(x)) if floats else value
    if isinstance(decoded, bool):
        return torch.tensor(decoded)
    return torch.tensor(decoded, dtype=torch.float64 if floats else torch.int64)


def _sanitize(value: Any) -> Any:
    """Non-finite floats anywhere in dicts/lists -> ``"nan"``, ``"inf"``, ``"-inf"``."""
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _map_floats(value: Any, fn: Any) -> Any:
    if isinstance(value, list):
        return [_map_floats(v, fn) for v in value]
    if isinstance(value, (float, str)):
        return fn(value)
    return value


def _has_float(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return isinstance(value, (float, str))
