"""The lab's HTML report: one self-contained ``index.html``.

:func:`render_html` turns the experiments' result dicts (:meth:`ExperimentResult.to_dict`)
and their PNG figures into one page with no external resource: figures are embedded as
base64 ``data:`` URIs, the style sheet and a short script are inline. The page holds, in
order:

1. the claims table, one row per claim (:func:`deadrelu.lab.claims.claim_rows`): the
   notes' text, the verdict (fragile ones marked, with why), the key number(s), and where
   they came from (experiment, preset, seeds, timing-based);
2. one section per live check and experiment: question, method, figures, the verdict on
   each claim with its rule, stability and source, caveats; the raw numbers, derived
   numbers and timings in sections that start collapsed (``<details>``);
3. the run's configuration and versions (collapsed).

Layout for a reader: every table sits in its own horizontally scrolling box, so a wide
table never widens the page; label columns never wrap inside a word.

Style, figure checks and the self-check script come from :mod:`deadrelu.htmlkit` (shared
with the scan report): once the page has loaded it writes on ``<body>`` the attributes a
headless browser checks (images decoded, page height, elements too wide, squeezed cells),
and this module's script adds ``data-claims-rows`` (rows of the claims table) and
``data-claims-visible="yes"`` (the table is in the first screen). Opened as
``index.html#all`` the page expands every collapsed section first. The page carries no
date: the same results give the same bytes.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deadrelu.htmlkit import collapsed, esc, fmt, page, scroll
from deadrelu.lab.claims import CLAIMS, ClaimRow, claim_rows

__all__ = ["render_html", "write_html"]

_BADGE_CLASS = {
    "supported": "ok",
    "not supported": "no",
    "mixed": "mix",
    "n/a": "na",
}

#: The lab's own rules, on top of :data:`deadrelu.htmlkit.BASE_CSS`.
_CSS = """
td.num{text-align:left}
#claims-table td{max-width:34em}
#claims-table td.claim,#claims-table td.verdict{white-space:nowrap}
#claims-table .note{display:block;color:#666;font-size:.85em;margin-top:2px}
table.nested{margin:0;font-size:.95em}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-weight:600;
 font-size:.85em;white-space:nowrap;color:#fff}
.ok{background:#1f8a3b}.no{background:#c0392b}.mix{background:#c77c02}.na{background:#7f8c8d}
.fragile{background:#fff3cd;color:#7a5200;border:1px solid #c77c02}
.timing{background:#e8eef7;color:#234;border:1px solid #7a94b8}
section.exp{background:#fff;border:1px solid #e2e2e2;border-radius:8px;
 padding:2px 22px 10px;margin:18px 0}
section.exp h2{margin-top:.6em}p.q{margin:.4em 0}
.rule{background:#f6f6f9;border-left:4px solid #999;padding:4px 10px;font-size:.86em;
 margin:.3em 0;overflow-wrap:anywhere}
.claimv{margin:.4em 0 .8em}.claimv p{margin:.3em 0}
.caveats{font-size:.92em;margin:.3em 0}.caveats li{margin:.15em 0}
.missing{color:#c0392b;font-weight:600}
"""

#: Runs on load, after :data:`deadrelu.htmlkit.CHECK_SCRIPT`: counts the claims table's
#: rows and whether it is in the first screen.
_SCRIPT = r"""
window.addEventListener('load', function () {
  var b = document.body;
  var rows = document.querySelectorAll('#claims-table tbody tr').length;
  b.setAttribute('data-claims-rows', String(rows));
  var t = document.getElementById('claims-table');
  var r = t ? t.getBoundingClientRect() : null;
  var seen = r !== null && r.height > 0 && r.top < window.innerHeight;
  b.setAttribute('data-claims-visible', seen ? 'yes' : 'no');
});
"""


def _is_scalar(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def _badge(verdict: str, extra: str = "") -> str:
    cls = _BADGE_CLASS.get(verdict, "na")
    return f'<span class="badge {cls}"{extra}>{esc(verdict)}</span>'


def _value(v: Any, depth: int = 0) -> str:
    """HTML for one value of a numbers dict (nested dicts/lists become nested tables)."""
    if _is_scalar(v):
        return esc(fmt(v))
    if isinstance(v, Mapping):
        if depth >= 3:
            return f"<code>{esc(json.dumps(v, sort_keys=True, default=str)[:600])}</code>"
        return _dict_table(v, depth + 1, nested=True)
    if isinstance(v, Sequence):
        items = list(v)
        if all(_is_scalar(i) for i in items):
            shown = ", ".join(fmt(i) for i in items[:16])
            more = f", … ({len(items)} items)" if len(items) > 16 else ""
            return f"<code>[{esc(shown)}{esc(more)}]</code>"
        if items and all(isinstance(i, Mapping) for i in items) and depth < 3:
            return _records_table(items)
        text = json.dumps(items, default=str)
        more = f" … ({len(text)} characters)" if len(text) > 400 else ""
        return f"<code>{esc(text[:400])}{esc(more)}</code>"
    return esc(v)


def _dict_table(d: Mapping[str, Any], depth: int = 0, nested: bool = False) -> str:
    cls = ' class="nested"' if nested else ""
    rows = []
    for k, v in d.items():
        td = ' class="num"' if _is_scalar(v) else ""
        rows.append(f"<tr><th>{esc(k)}</th><td{td}>{_value(v, depth)}</td></tr>")
    table = f"<table{cls}>{''.join(rows)}</table>"
    return table if nested else scroll(table)


def _records_table(records: Sequence[Mapping[str, Any]]) -> str:
    cols: list[str] = []
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)

    def cell(v: Any) -> str:
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f'<td class="num">{_value(v, 3)}</td>' if num else f"<td>{_value(v, 3)}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in cols) + "</tr>" for r in records)
    return f'<table class="nested"><tr>{head}</tr>{body}</table>'


def _grid(columns: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)

    def cell(x: Any) -> str:
        num = isinstance(x, (int, float)) and not isinstance(x, bool)
        return f'<td class="num">{esc(fmt(x))}</td>' if num else f"<td>{esc(fmt(x))}</td>"

    body = "".join("<tr>" + "".join(cell(x) for x in row) + "</tr>" for row in rows)
    return scroll(f"<table><tr>{head}</tr>{body}</table>")


def _image(out_dir: Path, rel: str) -> str:
    path = out_dir / rel
    if not path.is_file():
        warnings.warn(
            f"figure {rel!r} not found under {out_dir}; the report shows a placeholder",
            stacklevel=3,
        )
        return f'<p class="missing">figure {esc(rel)} is missing</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{esc(rel)}" title="{esc(Path(rel).name)}" '
        f'src="data:image/png;base64,{data}"></figure>'
    )


def _stability_text(stab: Mapping[str, Any] | None) -> str:
    if not stab or not stab.get("resamples"):
        return "not resampled (deterministic, one seed, or an old-style experiment)"
    return str(stab.get("why", ""))


def _claims_table(rows: Sequence[ClaimRow]) -> str:
    body = []
    for row in rows:
        full = CLAIMS[row.claim].text if row.claim in CLAIMS else row.text
        badge = _badge(row.verdict)
        notes = []
        if row.fragile and row.stability is not None:
            badge += f' <span class="badge fragile">fragile {row.stability:.0%}</span>'
            notes.append(f"fragile: {row.why}")
        if any(p.source == "timings" for p in row.parts):
            badge += ' <span class="badge timing">timing-based</span>'
        if row.rule:
            notes.append(f"combined: {row.rule}")
        note = "".join(f'<span class="note">{esc(n)}</span>' for n in notes)
        links = ", ".join(
            f'<a href="#{esc(p.experiment.lower())}">{esc(p.provenance)}</a>' for p in row.parts
        )
        summaries = (
            esc(row.parts[0].summary)
            if len(row.parts) == 1
            else "<br>".join(f"<b>{esc(p.experiment)}</b>: {esc(p.summary)}" for p in row.parts)
        )
        body.append(
            f'<tr><td class="claim">{esc(row.claim)}</td>'
            f'<td title="{esc(full)}">{esc(row.text)}</td>'
            f'<td class="verdict">{badge}</td><td>{summaries}{note}</td><td>{links}</td></tr>'
        )
    return scroll(
        '<table id="claims-table"><thead><tr><th>claim</th><th>the notes say</th>'
        "<th>verdict</th><th>key number</th><th>from</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _claim_verdicts(r: Mapping[str, Any]) -> str:
    records = r.get("claim_verdicts") or {}
    if not records:
        return (
            f"<p>{_badge(str(r.get('verdict', 'n/a')))} {esc(r.get('summary', ''))}</p>"
            f'<p class="rule"><b>Rule:</b> {esc(r.get("verdict_rule", ""))}</p>'
        )
    parts = []
    for cid, rec in records.items():
        extra = ""
        stab = rec.get("stability") or {}
        if stab.get("fragile"):
            extra += f' <span class="badge fragile">fragile {stab.get("share", 0):.0%}</span>'
        if rec.get("source") == "timings":
            extra += ' <span class="badge timing">timing-based</span>'
        n = rec.get("n_seeds")
        seeds = "" if not n else (", 1 run" if n == 1 else f", {n} {rec.get('axis') or 'seeds'}")
        parts.append(
            f'<div class="claimv"><p><b>{esc(cid)}</b> {_badge(str(rec.get("verdict", "n/a")))}'
            f"{extra} {esc(rec.get('summary', ''))}</p>"
            f'<p class="rule"><b>Rule:</b> {esc(rec.get("rule", ""))}<br><b>Stability:</b> '
            f"{esc(_stability_text(stab))}<br><b>From:</b> preset {esc(rec.get('preset', ''))}"
            f"{esc(seeds)}"
            + (
                "; measured from wall-clock timings, not in results.json (see timings.json)"
                if rec.get("source") == "timings"
                else ""
            )
            + "</p></div>"
        )
    return "".join(parts)


def _experiment_section(r: Mapping[str, Any], out_dir: Path) -> str:
    rid = str(r["id"])
    parts = [
        f'<section class="exp" id="{esc(rid.lower())}">',
        f"<h2>{esc(rid)} · {esc(r.get('title', ''))} "
        f"<small>({esc(', '.join(r.get('claims', ())))})</small> "
        f"{_badge(str(r.get('verdict', 'n/a')))}</h2>",
    ]
    if r.get("question"):
        parts.append(f'<p class="q"><b>Question.</b> {esc(r["question"])}</p>')
    if r.get("method"):
        parts.append(f'<p class="q"><b>Method.</b> {esc(r["method"])}</p>')
    numbers = dict(r.get("numbers") or {})
    table = numbers.get("table")
    if isinstance(table, Mapping) and "columns" in table:  # shown as it is, not repeated
        del numbers["table"]
        parts.append(_grid(table["columns"], table.get("rows", ())))
    figures = list(r.get("figures", ()))
    parts.extend(_image(out_dir, f) for f in figures)
    parts.append("<h3>Verdict</h3>")
    parts.append(_claim_verdicts(r))
    caveats = list(r.get("caveats", ()))
    if caveats:
        items = "".join(f"<li>{esc(c)}</li>" for c in caveats)
        parts.append(f'<h3>Caveats</h3><ul class="caveats">{items}</ul>')
    derived = r.get("derived") or {}
    if derived:
        parts.append(collapsed("derived numbers (intervals, summaries)", _dict_table(derived)))
    if numbers:
        parts.append(collapsed("all raw numbers (reproducible)", _dict_table(numbers)))
    timings = r.get("timings") or {}
    if timings:
        parts.append(
            collapsed(
                "timings (wall clock: not reproducible, kept out of results.json)",
                _dict_table(timings),
            )
        )
    parts.append("</section>")
    return "".join(parts)


def render_html(
    results: Sequence[Mapping[str, Any]],
    out_dir: Path | str,
    *,
    meta: Mapping[str, Any] | None = None,
    title: str = "deadrelu lab: do the notes' claims hold?",
) -> str:
    """The report page as a string.

    Args:
        results: one dict per experiment and live check, as
            :meth:`ExperimentResult.to_dict` gives it (with timings), in run order;
            figure paths are relative to ``out_dir``.
        out_dir: the directory the figure paths are relative to.
        meta: run configuration and versions, shown at the end.
        title: page title.

    A figure file that is missing gives a warning and a visible placeholder (never a
    broken image).
    """
    out = Path(out_dir)
    presets = sorted({str(r.get("preset")) for r in results if r.get("preset")})
    parts = [
        f"<h1>{esc(title)}</h1>",
        '<p class="sub">Each claim of the lecture notes on dying ReLUs, tested by a run of '
        "this lab with fixed seeds"
        + (f" (preset {esc(', '.join(presets))})" if presets else "")
        + ". Verdicts come from effect sizes with 95 % intervals by the rule printed in each "
        "section; a verdict that fewer than 90 % of bootstrap resamples of the seeds "
        "reproduce is marked <i>fragile</i>.</p>",
        '<h2 id="claims">Claims</h2>',
        _claims_table(claim_rows(results)),
    ]
    live = [r for r in results if str(r.get("id", "")).startswith("L")]
    exps = [r for r in results if not str(r.get("id", "")).startswith("L")]
    if live:
        parts.append('<h2 id="live">Live checks</h2>')
        parts.extend(_experiment_section(r, out) for r in live)
    if exps:
        parts.append('<h2 id="experiments">Experiments</h2>')
        parts.extend(_experiment_section(r, out) for r in exps)
    if meta:
        parts.append('<h2 id="run">The run</h2>')
        parts.append(collapsed("configuration and versions", _dict_table(meta)))
    return page(title, "\n".join(parts), css=_CSS, script=_SCRIPT)


def write_html(
    results: Sequence[Mapping[str, Any]],
    out_dir: Path | str,
    *,
    meta: Mapping[str, Any] | None = None,
    filename: str = "index.html",
) -> Path:
    """Render the report into ``out_dir / filename`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(render_html(results, out, meta=meta), encoding="utf-8")
    return path
