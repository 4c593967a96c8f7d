"""HTML building blocks of the report: escaped text, tables, embedded images, the page.

Why no template engine: the page is a handful of headings, tables and figures, and
every value passes through :func:`esc` here, which a reader can check in one sitting.
Everything the page needs is inside the one file - CSS in a ``<style>`` element and
figures as ``data:image/png;base64`` URIs, no scripts, fonts or links to fetch - so
it can be mailed, archived with the study, or opened on a machine without network.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CSS = """
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 0;
       color: #1d2330; background: #ffffff; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
header { background: #1f3b5c; color: #ffffff; padding: 22px 32px; }
header h1 { margin: 0 0 6px; font-size: 26px; }
header p { margin: 2px 0; color: #d6e2f0; font-size: 14px; }
h2 { border-bottom: 2px solid #1f3b5c; padding-bottom: 4px; margin-top: 40px; }
h3 { margin-top: 28px; }
nav ol { columns: 2; font-size: 14px; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 13px; }
th, td { border: 1px solid #c9d2de; padding: 4px 8px; text-align: right; }
th { background: #e9eef5; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #f6f8fb; }
figure { margin: 12px 0 22px; }
figure img { max-width: 100%; border: 1px solid #d7dde6; }
figcaption { font-size: 13px; color: #4a5568; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 8px 12px; margin: 10px 0; }
.ok { background: #e9f6ee; border-left: 4px solid #2f9e5b; padding: 8px 12px; margin: 10px 0; }
.muted { color: #5b6677; font-size: 13px; }
.row { display: flex; flex-wrap: wrap; gap: 18px; }
.row figure { flex: 1 1 420px; }
code { background: #eef1f6; padding: 1px 4px; border-radius: 3px; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text (None and NaN as an en dash)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return html.escape(str(value), quote=True)


def fmt_number(value: Any, digits: int = 4) -> str:
    """Compact numbers: integers with separators, large/small floats in e-notation."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return "–"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == int(x) and abs(x) < 1e7:
        return f"{int(x):,}"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    formats: Mapping[str, Callable[[Any], str]] | None = None,
    text_columns: Iterable[str] = (),
    raw_columns: Iterable[str] = (),
) -> str:
    """An HTML table of ``rows`` with ``columns`` = ``[(key, heading), ...]``.

    Values go through ``formats[key]`` when given, else :func:`fmt_number` for numbers
    and :func:`esc` for text; ``raw_columns`` hold HTML built by the caller.
    """
    formats = dict(formats or {})
    text = set(text_columns)
    raw = set(raw_columns)
    head = "".join(
        f'<th class="{"text" if key in text else "num"}">{esc(label)}</th>'
        for key, label in columns
    )
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if key in raw:
                shown = str(value) if value is not None else "–"
            elif key in formats:
                shown = esc(formats[key](value))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                shown = esc(fmt_number(value))
            else:
                shown = esc(value)
            cells.append(f'<td class="{"text" if key in text else "num"}">{shown}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_data_uri(data: bytes, *, source: str = "figure") -> str:
    """A ``data:`` URI of PNG bytes; refuses bytes that are not a PNG (names ``source``)."""
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"{source}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(data: bytes, caption: str, *, alt: str, source: str = "figure") -> str:
    """An embedded PNG with its caption."""
    uri = png_data_uri(data, source=source)
    return (
        f'<figure><img alt="{esc(alt)}" src="{uri}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def note(text: str, *, kind: str = "note") -> str:
    """A highlighted paragraph (``note``: something the reader must know; ``ok``: fine)."""
    return f'<p class="{kind}">{esc(text)}</p>'


def page(
    title: str, subtitle_lines: Sequence[str], toc: Sequence[tuple[str, str]], body: str
) -> str:
    """The whole document: header, table of contents and the sections' HTML."""
    subtitle = "".join(f"<p>{esc(line)}</p>" for line in subtitle_lines)
    items = "".join(f'<li><a href="#{esc(anchor)}">{esc(label)}</a></li>' for anchor, label in toc)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n"
        f"<body><header><h1>{esc(title)}</h1>{subtitle}</header>\n<main>"
        f"<nav><h2>Contents</h2><ol>{items}</ol></nav>\n{body}\n</main></body></html>\n"
    )


def section(anchor: str, heading: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>\n{body}\n</section>\n'
