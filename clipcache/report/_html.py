"""Small HTML building blocks of the report pages: escaping, tables, cells and the page frame.

Everything here returns strings. Numbers that tests and readers may want at full
precision are written twice: formatted in the cell text, and exactly (``repr`` of
the float) in a ``data-value`` attribute.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import numpy as np

from clipcache._io import OutputKind

#: Marks every page clipcache writes, so that a rerun may replace it without --overwrite.
_GENERATOR = '<meta name="generator" content="clipcache">'

__all__ = ["CSS", "HTML_PAGE", "Cell", "esc", "notes", "num_cell", "page", "pct", "section", "table", "text_cell"]

#: The stylesheet of every page: plain, readable on a laptop screen, and printable.
CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --soft: #f4f6fa; --accent: #2358c4;
        --good: #1a7f37; --bad: #c62828; --best: #fff3c4; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "DejaVu Sans", sans-serif; }
header.top { background: #1f2a44; color: #fff; padding: 18px 28px 14px; }
header.top h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header.top p { margin: 0; color: #c9d3ea; font-size: 13px; }
nav.toc { background: var(--soft); border-bottom: 1px solid var(--line); padding: 8px 28px; font-size: 13px; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 18px; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 28px 40px; }
section { margin-top: 26px; }
h2 { font-size: 19px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
p.lead, p.note { color: var(--muted); margin: 4px 0 10px; }
ul.notes { color: var(--muted); margin: 6px 0; padding-left: 20px; font-size: 13px; }
code { font: 12.5px ui-monospace, "DejaVu Sans Mono", monospace; background: var(--soft); padding: 0 3px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 10px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: var(--best); font-weight: 600; }
td.best::after { content: " \\2605"; color: #b58900; }
.row { display: flex; flex-wrap: wrap; gap: 22px; align-items: flex-start; }
.row > div { flex: 0 1 auto; min-width: 0; max-width: 100%; }
.row p.note, .row ul.notes { max-width: 560px; }
.plot svg, .plot img { max-width: 100%; height: auto; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid var(--line); }
.scroll table { margin: 0; }
table.confusion td { text-align: right; padding: 2px 5px; min-width: 30px; font-variant-numeric: tabular-nums; }
table.confusion th { font-weight: 500; font-size: 12px; }
table.confusion th.col { writing-mode: vertical-rl; transform: rotate(180deg); padding: 6px 2px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px; display: flex; gap: 10px;
        break-inside: avoid; background: #fff; }
.card .main { flex: none; text-align: center; font-size: 12px; }
.card .facts { font-size: 12px; line-height: 1.35; min-width: 0; }
.card .facts .path { color: var(--muted); overflow-wrap: anywhere; font-size: 11px; }
.thumb, .ph { display: block; object-fit: contain; background: #eef1f6; border-radius: 3px; }
.ph { display: flex; align-items: center; justify-content: center; text-align: center; color: var(--muted);
      font-size: 10px; border: 1px dashed #b9c1d0; }
.neigh { display: flex; gap: 5px; margin-top: 5px; }
.neigh figure { margin: 0; text-align: center; font-size: 10.5px; line-height: 1.2; }
.ok { color: var(--good); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.query { border: 1px solid var(--line); border-radius: 6px; padding: 10px; margin: 10px 0; break-inside: avoid;
         display: flex; gap: 18px; align-items: flex-start; }
.query .qhead { flex: none; font-size: 12px; overflow-wrap: anywhere; }
.query .qhead h3 { margin: 0 0 6px; }
.query .path { color: var(--muted); font-size: 11px; }
.query .hits { display: flex; flex-wrap: wrap; gap: 10px; }
.query figure { margin: 0; font-size: 11px; width: min-content; }
.query figcaption { width: 100%; overflow-wrap: anywhere; }
.querytext { font-size: 15px; font-weight: 600; padding: 4px 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; border-top: 1px solid var(--line); padding-top: 8px; }
@media print {
  @page { margin: 14mm; }
  body { font-size: 11px; }
  header.top { background: none; color: #000; padding: 0 0 6px; border-bottom: 2px solid #000; }
  header.top p { color: #333; }
  nav.toc { display: none; }
  main { max-width: none; padding: 0; }
  section { break-before: page; }
  section:first-of-type { break-before: auto; }
  .scroll { max-height: none; overflow: visible; border: none; }
  .card, .query, table, .plot { break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def esc(value) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals; "n/a" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * value:.{digits}f}"


class Cell(str):
    """A finished ``<td>``/``<th>``: :func:`table` inserts it as it is."""


def num_cell(value: float | None, text: str | None = None, *, best: bool = False, extra: str = "") -> Cell:
    """A right-aligned number cell, the exact value in ``data-value`` (absent for None)."""
    classes = "num best" if best else "num"
    if value is None:
        data = ""
    elif isinstance(value, int | np.integer) and not isinstance(value, bool):
        data = f' data-value="{int(value)}"'
    else:
        data = f' data-value="{float(value)!r}"'
    shown = text if text is not None else ("n/a" if value is None else f"{value:.4g}")
    return Cell(f'<td class="{classes}"{data}{extra}>{esc(shown)}</td>')


def text_cell(value, *, css: str = "") -> Cell:
    """A left-aligned text cell (escaped)."""
    cls = f' class="{css}"' if css else ""
    return Cell(f"<td{cls}>{esc(value)}</td>")


def table(head: Sequence[str], rows: Iterable[Sequence], *, css: str = "", num_cols: Sequence[int] = ()) -> str:
    """An HTML table: ``head`` names, then rows of cells (a :class:`Cell` is kept, anything else is escaped)."""
    heads = "".join(f'<th class="num">{esc(h)}</th>' if i in num_cols else f"<th>{esc(h)}</th>" for i, h in enumerate(head))
    body = []
    for row in rows:
        cells = "".join(c if isinstance(c, Cell) else f"<td>{esc(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{heads}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def notes(items: Sequence[str]) -> str:
    """A muted bullet list, or nothing when there are no items."""
    if not items:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in items) + "</ul>"


def section(key: str, title: str, body: str) -> str:
    """``<section id=key>`` with an ``<h2>`` title."""
    return f'<section id="{esc(key)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], footer: str) -> str:
    """A complete HTML document: header, table of contents, the sections ``(key, title, body)``, footer."""
    toc = "".join(f'<a href="#{esc(k)}">{esc(t)}</a>' for k, t, _ in sections)
    body = "".join(section(k, t, b) for k, t, b in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">' + _GENERATOR +
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>'
        f'<nav class="toc">{toc}</nav><main>{body}<footer>{esc(footer)}</footer></main></body></html>\n'
    )


def _is_clipcache_page(path) -> bool:
    with open(path, "rb") as fh:
        return _GENERATOR.encode() in fh.read(1024)


#: The kind of file ``clipcache report`` and ``search --html`` write (see :func:`clipcache._io.check_output`).
HTML_PAGE = OutputKind("a clipcache HTML page", _is_clipcache_page)
