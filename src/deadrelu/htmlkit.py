"""Pieces every deadrelu HTML page shares: one style, embedded figures, a self-check script.

A page built with :func:`page` is one self-contained file: the style sheet and script are
inline, figures are PNG bytes embedded as base64 ``data:`` URIs (:func:`figure`), and
every table sits in its own horizontally scrolling box (:func:`scroll`), so a wide table
never widens the page.

The inline script (:data:`CHECK_SCRIPT`) writes on ``<body>`` once the page has loaded,
for a headless browser to read from the DOM: ``data-images-loaded="N/M"`` (images decoded
/ images), ``data-tables-visible="N/M"`` (tables with a non-zero box / tables),
``data-too-wide`` (elements wider than the viewport outside a scroll box, plus 1 when the
page scrolls sideways; 0 is right), ``data-too-wide-list`` (the first few),
``data-squeezed-cells`` (table cells whose text breaks inside a word: more lines than
words, a label column squeezed to a letter per line) and ``data-page-height``. Opened as
``page.html#all`` the page first expands every collapsed ``<details>`` section.

The lab report (:mod:`deadrelu.lab.html`) and the scan report (:mod:`deadrelu.scan_html`)
both build on it, each adding a few rules of its own (``page(css=..., script=...)``).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BASE_CSS",
    "CHECK_SCRIPT",
    "collapsed",
    "esc",
    "figure",
    "fmt",
    "grid",
    "page",
    "scroll",
]

BASE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 background:#fafafa;color:#1d1d1f;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;box-sizing:border-box}
h1{font-size:1.7em;margin:.2em 0 .1em;overflow-wrap:anywhere}
h2{margin-top:1.8em;border-bottom:2px solid #ddd;padding-bottom:.2em}h3{margin:1.1em 0 .4em}
.sub{color:#555;margin-top:0}
p,li,h2,h3,summary,figcaption{overflow-wrap:anywhere}
.scroll{max-width:100%;overflow-x:auto;margin:.4em 0 1em}
table{border-collapse:collapse;font-size:.92em;background:#fff}
th,td{border:1px solid #d5d5d5;padding:4px 8px;text-align:left;vertical-align:top}
td{overflow-wrap:break-word;max-width:46em}
th{background:#f0f0f3;white-space:nowrap}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap;text-align:right}
td.name{white-space:nowrap;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
 font-size:.9em}
tr.bad td{background:#fdecea}
figure{margin:10px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#666;font-size:.85em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
code{white-space:pre-wrap;overflow-wrap:anywhere}
details{margin:.5em 0}
details summary{cursor:pointer;color:#333;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:.8em 0}
.card{background:#fff;border:1px solid #e2e2e2;border-radius:8px;padding:8px 16px;
 min-width:8em}
.card b{display:block;font-size:1.5em}
.note{color:#666;font-size:.9em}
"""

CHECK_SCRIPT = r"""
window.addEventListener('load', function () {
  var b = document.body;
  if (location.hash === '#all') {
    Array.prototype.forEach.call(document.querySelectorAll('details'), function (d) {
      d.open = true;
    });
  }
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  b.setAttribute('data-images-loaded', ok + '/' + imgs.length);
  var tables = Array.prototype.slice.call(document.querySelectorAll('table'));
  var shown = tables.filter(function (t) {
    if (t.closest('details') && !t.closest('details').open) { return true; }
    var r = t.getBoundingClientRect(); return r.width > 0 && r.height > 0;
  }).length;
  b.setAttribute('data-tables-visible', shown + '/' + tables.length);
  b.setAttribute('data-page-height', String(document.documentElement.scrollHeight));
  var vw = document.documentElement.clientWidth, wide = [];
  Array.prototype.forEach.call(document.querySelectorAll('body *'), function (e) {
    if (e.closest('.scroll') && !e.classList.contains('scroll')) { return; }
    var q = e.getBoundingClientRect();
    if (q.width > 0 && (q.right > vw + 1 || q.width > vw + 1)) {
      wide.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : ''));
    }
  });
  var sw = document.documentElement.scrollWidth > vw + 1 ? 1 : 0;
  b.setAttribute('data-too-wide', String(wide.length + sw));
  b.setAttribute('data-too-wide-list', wide.slice(0, 5).join(' '));
  var squeezed = [];
  Array.prototype.forEach.call(document.querySelectorAll('th, td'), function (c) {
    Array.prototype.forEach.call(c.childNodes, function (n) {
      var text = n.nodeType === 3 ? n.textContent.trim() : '';
      if (text.length < 4) { return; }
      var range = document.createRange();
      range.selectNodeContents(n);
      var tops = {};
      Array.prototype.forEach.call(range.getClientRects(), function (q) {
        if (q.width > 0) { tops[Math.round(q.top)] = 1; }
      });
      var lines = Object.keys(tops).length, words = text.split(/\s+/).length;
      if (lines > words) { squeezed.push(text.slice(0, 20)); }
    });
  });
  b.setAttribute('data-squeezed-cells', String(squeezed.length));
  b.setAttribute('data-squeezed-list', squeezed.slice(0, 5).join(' | '));
});
"""


def esc(x: Any) -> str:
    """HTML-escape ``str(x)`` (quotes too)."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table cell: ints as is, floats to ``digits`` significant digits,
    non-finite as ``nan``/``inf``/``-inf``, None as ``-``, booleans as yes/no."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        return f"{x:.{digits}g}"
    return str(x)


def scroll(inner: str) -> str:
    """Wrap a wide element (a table) in a horizontally scrolling box."""
    return f'<div class="scroll">{inner}</div>'


def grid(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    table_id: str | None = None,
    numeric: Sequence[bool] | None = None,
    row_classes: Sequence[str | None] | None = None,
) -> str:
    """A table in a scroll box. ``numeric[i]`` right-aligns column ``i`` (default: the
    columns whose cells are all numbers); the first column is a name (monospace, no wrap)."""
    if numeric is None:
        numeric = [
            bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
            for i in range(len(columns))
        ]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for k, row in enumerate(rows):
        cells = []
        for i, x in enumerate(row):
            cls = "num" if numeric[i] else ("name" if i == 0 else "")
            cells.append(
                f'<td class="{cls}">{esc(fmt(x))}</td>' if cls else f"<td>{esc(fmt(x))}</td>"
            )
        rc = row_classes[k] if row_classes else None
        body.append((f'<tr class="{rc}">' if rc else "<tr>") + "".join(cells) + "</tr>")
    tid = f' id="{esc(table_id)}"' if table_id else ""
    return scroll(
        f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def figure(png: bytes, alt: str, caption: str | None = None) -> str:
    """An ``<figure>`` with the PNG embedded as a base64 ``data:`` URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def collapsed(title: str, inner: str, *, open_: bool = False) -> str:
    """A ``<details>`` section (collapsed unless ``open_``)."""
    return f"<details{' open' if open_ else ''}><summary>{esc(title)}</summary>{inner}</details>"


def page(title: str, body: str, *, css: str = "", script: str = "") -> str:
    """The whole document: head with the shared style (plus ``css``), ``body`` inside
    ``<main>``, the check script (plus ``script``) at the end. Deterministic: no date, no
    random ids."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title><style>{BASE_CSS}{css}</style></head>\n"
        '<body data-images-loaded="pending"><main>\n'
        f"{body}\n"
        f"</main><script>{CHECK_SCRIPT}{script}</script></body></html>\n"
    )
