"""The lab's HTML report: one self-contained ``index.html``.

:func:`render_html` turns the experiments' result dicts (:meth:`ExperimentResult.to_dict`)
and their PNG figures into one page with no external resource: figures are embedded as
base64 ``data:`` URIs, the style sheet and a ten-line script are inline. The page holds, in
order:

1. the claims table (claim, short text, experiment, verdict badge, key number);
2. the live checks of C1, C2 and C14 (panels computed by the runner, see
   :func:`deadrelu.lab.runner.live_checks`);
3. one section per experiment: question, method, figures, numbers, verdict with its rule,
   caveats, and, apart, the wall-clock timings that are not reproducible;
4. the run's configuration and versions.

The inline script writes ``data-images-loaded="N/M"`` (images decoded / images on the page)
, ``data-claims-rows="K"`` and ``data-claims-visible="yes"`` (the table is in the first
screen) on ``<body>`` once the page has loaded, so a headless browser can check that every
figure decoded and the claims table is there. The page carries no
date, so the same results give the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CLAIM_TEXT", "render_html", "write_html"]

#: Short text of each claim of CLAIMS.md, for the claims table.
CLAIM_TEXT: dict[str, str] = {
    "C1": "A dead unit outputs 0 for any input",
    "C2": "Dead unit: dL/dw = 0 because da/dz = 0 for z < 0",
    "C3": "Cause I: a very high learning rate",
    "C4": "Cause II: a large negative bias",
    "C5": "A dead unit is not recoverable",
    "C6": "Remedy: use a low learning rate",
    "C7": "Remedy: initialise biases to a small positive value (0.01)",
    "C8": "Remedy: use a ReLU variant",
    "C9": "Leaky ReLU (slope 0.01): no dying; why 0.01?",
    "C10": "PReLU: like Leaky ReLU but learned slope, performs better",
    "C11": "ELU: zero-centred, faster, better generalisation; costs an exp",
    "C12": "SELU: self-normalising, mean 0 / sd 1 through the layers",
    "C13": "SELU drawback: new, less studied",
    "C14": "Every variant's derivative matches autograd, including at z = 0",
    "C15": "Deep narrow ReLU nets can be born dead; RAI lowers it",
    "C16": "Recycling dormant units (ReDo) cures a trained net",
}

_BADGE_CLASS = {
    "supported": "ok",
    "not supported": "no",
    "mixed": "mix",
    "n/a": "na",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 background:#fafafa;color:#1d1d1f;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.7em;margin:.2em 0 .1em}h2{margin-top:1.8em;border-bottom:2px solid #ddd;
 padding-bottom:.2em}h3{margin:1.1em 0 .4em}
.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.92em;background:#fff;
 max-width:100%}
th,td{border:1px solid #d5d5d5;padding:4px 8px;text-align:left;vertical-align:top;
 overflow-wrap:anywhere}
th{background:#f0f0f3}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
#claims-table th,#claims-table td:nth-child(1),#claims-table td:nth-child(3),
#claims-table td:nth-child(4){white-space:nowrap;overflow-wrap:normal}
table.nested{margin:0;font-size:.95em}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-weight:600;
 font-size:.85em;white-space:nowrap;color:#fff}
.ok{background:#1f8a3b}.no{background:#c0392b}.mix{background:#c77c02}.na{background:#7f8c8d}
section.exp,section.live{background:#fff;border:1px solid #e2e2e2;border-radius:8px;
 padding:6px 22px 14px;margin:22px 0}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:.85em}
.rule{background:#f6f6f9;border-left:4px solid #999;padding:6px 10px;font-size:.92em}
.caveats li{margin:.2em 0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
code{white-space:pre-wrap;overflow-wrap:anywhere}
pre{background:#f6f6f9;padding:8px;overflow-x:auto}
details summary{cursor:pointer;color:#333}
.missing{color:#c0392b;font-weight:600}
"""

#: Runs on load: counts decoded images and claims-table rows into <body> attributes.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  var rows = document.querySelectorAll('#claims-table tbody tr').length;
  document.body.setAttribute('data-claims-rows', String(rows));
  var t = document.getElementById('claims-table');
  var r = t ? t.getBoundingClientRect() : null;
  var seen = r !== null && r.height > 0 && r.top < window.innerHeight;
  document.body.setAttribute('data-claims-visible', seen ? 'yes' : 'no');
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any) -> str:
    """A scalar as short text: floats to 4 significant digits."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.4g}"
    return str(x)


def _is_scalar(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def _badge(verdict: str) -> str:
    cls = _BADGE_CLASS.get(verdict, "na")
    return f'<span class="badge {cls}">{_e(verdict)}</span>'


def _value(v: Any, depth: int = 0) -> str:
    """HTML for one value of a numbers dict (nested dicts/lists become nested tables)."""
    if _is_scalar(v):
        return _e(_fmt(v))
    if isinstance(v, Mapping):
        if depth >= 3:
            return f"<code>{_e(json.dumps(v, sort_keys=True, default=str))}</code>"
        return _dict_table(v, depth + 1, nested=True)
    if isinstance(v, Sequence):
        items = list(v)
        if all(_is_scalar(i) for i in items):
            shown = ", ".join(_fmt(i) for i in items[:16])
            more = f", … ({len(items)} items)" if len(items) > 16 else ""
            return f"<code>[{_e(shown)}{_e(more)}]</code>"
        if items and all(isinstance(i, Mapping) for i in items) and depth < 3:
            return _records_table(items)
        return f"<code>{_e(json.dumps(items, default=str)[:400])}</code>"
    return _e(v)


def _dict_table(d: Mapping[str, Any], depth: int = 0, nested: bool = False) -> str:
    cls = ' class="nested"' if nested else ""
    rows = []
    for k, v in d.items():
        td = ' class="num"' if _is_scalar(v) else ""
        rows.append(f"<tr><th>{_e(k)}</th><td{td}>{_value(v, depth)}</td></tr>")
    return f"<table{cls}>{''.join(rows)}</table>"


def _records_table(records: Sequence[Mapping[str, Any]]) -> str:
    cols: list[str] = []
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_value(r.get(c), 3)}</td>" for c in cols) + "</tr>" for r in records
    )
    return f'<table class="nested"><tr>{head}</tr>{body}</table>'


def _image(out_dir: Path, rel: str) -> str:
    path = out_dir / rel
    if not path.is_file():
        warnings.warn(
            f"figure {rel!r} not found under {out_dir}; the report shows a placeholder",
            stacklevel=3,
        )
        return f'<p class="missing">figure {_e(rel)} is missing</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_e(rel)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(Path(rel).name)}</figcaption></figure>"
    )


def claim_rows(
    results: Sequence[Mapping[str, Any]], live: Sequence[Mapping[str, Any]] = ()
) -> list[tuple[str, str, str, str]]:
    """(claim, where, verdict, key number) rows, sorted by claim number then experiment.

    ``results`` are experiment dicts (:meth:`ExperimentResult.to_dict`). An experiment that
    tests several claims may give each its own verdict and key number in
    ``numbers["claim_verdicts"]`` / ``numbers["claim_summaries"]``; otherwise every claim
    of it gets the experiment's verdict and summary.
    """
    rows: list[tuple[str, str, str, str]] = []
    for panel in live:
        for c in panel.get("claims", ()):
            rows.append(
                (
                    c,
                    str(panel.get("id", "live")),
                    str(panel.get("verdict", "n/a")),
                    str(panel.get("summary", "")),
                )
            )
    for r in results:
        numbers = r.get("numbers") or {}
        per_verdict = numbers.get("claim_verdicts") or {}
        per_summary = numbers.get("claim_summaries") or {}
        for c in r.get("claims", ()):
            verdict = per_verdict.get(c, r.get("verdict", "n/a"))
            summary = per_summary.get(c, r.get("summary", ""))
            rows.append((c, str(r["id"]), str(verdict), str(summary)))

    def key(row: tuple[str, str, str, str]) -> tuple[int, str, str]:
        num = int(row[0][1:]) if row[0][1:].isdigit() else 999
        return (num, row[0], row[1])

    return sorted(rows, key=key)


def _claims_table(results: Sequence[Mapping[str, Any]], live: Sequence[Mapping[str, Any]]) -> str:
    body = []
    for claim, where, verdict, summary in claim_rows(results, live):
        anchor = f"#{_e(where.lower())}"
        body.append(
            f"<tr><td>{_e(claim)}</td><td>{_e(CLAIM_TEXT.get(claim, ''))}</td>"
            f'<td><a href="{anchor}">{_e(where)}</a></td><td>{_badge(verdict)}</td>'
            f"<td>{_e(summary)}</td></tr>"
        )
    return (
        '<table id="claims-table"><thead><tr><th>claim</th><th>the notes say</th>'
        "<th>where</th><th>verdict</th><th>key number</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _live_section(panel: Mapping[str, Any]) -> str:
    pid = str(panel.get("id", "live"))
    parts = [
        f'<section class="live" id="{_e(pid.lower())}">',
        f"<h3>{_e(pid)} · {_e(panel.get('title', ''))} "
        f"({_e(', '.join(panel.get('claims', ())))})</h3>",
    ]
    if panel.get("text"):
        parts.append(f"<p>{_e(panel['text'])}</p>")
    cols = list(panel.get("columns", ()))
    rows = list(panel.get("rows", ()))
    if cols:
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{_e(_fmt(x))}</td>" for x in row) + "</tr>" for row in rows
        )
        parts.append(f"<table><tr>{head}</tr>{body}</table>")
    if panel.get("verdict"):
        parts.append(
            f'<p class="rule">{_badge(str(panel["verdict"]))} {_e(panel.get("rule", ""))}</p>'
        )
    parts.append("</section>")
    return "".join(parts)


def _experiment_section(r: Mapping[str, Any], out_dir: Path) -> str:
    rid = str(r["id"])
    parts = [
        f'<section class="exp" id="{_e(rid.lower())}">',
        f"<h2>{_e(rid)} · {_e(r.get('title', ''))} "
        f"<small>({_e(', '.join(r.get('claims', ())))})</small> "
        f"{_badge(str(r.get('verdict', 'n/a')))}</h2>",
        f"<h3>Question</h3><p>{_e(r.get('question', ''))}</p>",
        f"<h3>Method</h3><p>{_e(r.get('method', ''))}</p>",
    ]
    figures = list(r.get("figures", ()))
    if figures:
        parts.append("<h3>Figures</h3>")
        parts.extend(_image(out_dir, f) for f in figures)
    numbers = r.get("numbers") or {}
    if numbers:
        parts.append("<h3>Numbers</h3><details open><summary>all numbers (reproducible)</summary>")
        parts.append(_dict_table(numbers))
        parts.append("</details>")
    parts.append(
        f"<h3>Verdict</h3><p>{_badge(str(r.get('verdict', 'n/a')))} "
        f"{_e(r.get('summary', ''))}</p>"
        f'<p class="rule"><b>Rule:</b> {_e(r.get("verdict_rule", ""))}</p>'
    )
    caveats = list(r.get("caveats", ()))
    if caveats:
        items = "".join(f"<li>{_e(c)}</li>" for c in caveats)
        parts.append(f'<h3>Caveats</h3><ul class="caveats">{items}</ul>')
    timings = r.get("timings") or {}
    if timings:
        parts.append(
            "<h3>Timings</h3><p>Wall-clock measurements of this run: not reproducible, kept "
            "out of <code>results.json</code> (they are in <code>timings.json</code>).</p>"
        )
        parts.append(_dict_table(timings))
    parts.append("</section>")
    return "".join(parts)


def render_html(
    results: Sequence[Mapping[str, Any]],
    out_dir: Path | str,
    *,
    live: Sequence[Mapping[str, Any]] = (),
    meta: Mapping[str, Any] | None = None,
    title: str = "deadrelu lab: do the notes' claims hold?",
) -> str:
    """The report page as a string.

    Args:
        results: one dict per experiment, as :meth:`ExperimentResult.to_dict` gives it;
            figure paths are relative to ``out_dir``.
        out_dir: the directory the figure paths are relative to.
        live: panels for the live checks (C1, C2, C14): dicts with ``id``, ``claims``,
            ``title``, ``text``, ``columns``, ``rows``, ``verdict``, ``rule``, ``summary``.
        meta: run configuration and versions, shown at the end.
        title: page title.

    A figure file that is missing gives a warning and a visible placeholder (never a
    broken image).
    """
    out = Path(out_dir)
    live = list(live)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>",
        '<body data-images-loaded="pending"><main>',
        f"<h1>{_e(title)}</h1>",
        '<p class="sub">Each claim of the lecture notes on dying ReLUs, tested by a run of '
        "this lab with fixed seeds. Verdicts come from effect sizes with 95 % intervals over "
        "seeds, by the rule printed in each section.</p>",
        '<h2 id="claims">Claims</h2>',
        _claims_table(results, live),
    ]
    if live:
        parts.append('<h2 id="live">Live checks (C1, C2, C14) and notes (C13)</h2>')
        parts.extend(_live_section(p) for p in live)
    if results:
        parts.append('<h2 id="experiments">Experiments</h2>')
        parts.extend(_experiment_section(r, out) for r in results)
    if meta:
        parts.append('<h2 id="run">The run</h2>')
        parts.append(_dict_table(meta))
    parts.append(f"</main><script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def write_html(
    results: Sequence[Mapping[str, Any]],
    out_dir: Path | str,
    *,
    live: Sequence[Mapping[str, Any]] = (),
    meta: Mapping[str, Any] | None = None,
    filename: str = "index.html",
) -> Path:
    """Render the report into ``out_dir / filename`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(render_html(results, out, live=live, meta=meta), encoding="utf-8")
    return path
