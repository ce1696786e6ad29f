"""Self-contained HTML and Markdown reports (validation, model card, drift, loop summary...).

Every HTML page is one file with inline CSS and images as ``data:`` URIs: the Kubeflow UI shows it in a
sandboxed frame and clusters are often air-gapped, so a report never requests anything outside itself.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#1d2330;max-width:1100px}
h1{font-size:1.5em;border-bottom:2px solid #2b6cb0;padding-bottom:4px}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}th,td{border:1px solid #cbd2e0;padding:4px 8px;text-align:left}
th{background:#eef2f8}.pass{color:#1a7f37;font-weight:600}.fail{color:#c62828;font-weight:600}
.warn{color:#b26a00;font-weight:600}.muted{color:#667085}img{max-width:100%;height:auto}
.card{border:1px solid #cbd2e0;border-radius:6px;padding:8px 14px;margin:8px 0;background:#fafbfd}
code{background:#f1f3f7;padding:1px 4px;border-radius:3px}
"""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers rounded for people; everything else as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def figure_data_uri(fig, *, dpi: int = 100) -> str:
    """A matplotlib figure as an inline PNG ``data:`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def html_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str] | None = None,
    classes: dict[str, str] | None = None,
) -> str:
    """An HTML table from dict rows. ``classes`` maps a cell text (e.g. "fail") to a CSS class."""
    if not rows:
        return '<p class="muted">(none)</p>'
    columns = list(columns or rows[0].keys())
    classes = classes or {"pass": "pass", "fail": "fail", "True": "pass", "False": "fail"}
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = fmt(row.get(c, ""))
            css = classes.get(str(row.get(c, "")))
            cells.append(f'<td class="{css}">{escape(text)}</td>' if css else f"<td>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def html_page(title: str, sections: Iterable[tuple[str, str]], *, subtitle: str = "") -> str:
    """A complete HTML document: ``sections`` are (heading, inner HTML) pairs."""
    parts = [f"<h1>{escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="muted">{escape(subtitle)}</p>')
    for heading, body in sections:
        parts.append(f"<h2>{escape(heading)}</h2>\n{body}" if heading else body)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


#: A cell a spreadsheet would run as a formula (after any quotes we added): = + - @ tab CR.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralise_cell(value: Any) -> Any:
    """A CSV cell made safe for spreadsheets: text that starts with = + - @ (a formula: ``=cmd|...``) gets a
    leading ``'``; numbers such as ``-3`` stay. :func:`restore_cell` undoes it exactly (a value that already
    starts with quotes before such a character gets one more), so a file round-trips."""
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def restore_cell(value: Any) -> Any:
    """The inverse of :func:`neutralise_cell`."""
    if isinstance(value, str) and value.startswith("'") and _FORMULA.match(value):
        return value[1:]
    return value


def neutralise_frame(frame):
    """A copy of a pandas DataFrame with every text cell passed through :func:`neutralise_cell`."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(neutralise_cell)
    return out


def restore_frame(frame):
    """The inverse of :func:`neutralise_frame` (for CSVs this library wrote)."""
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(restore_cell)
    return frame


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a report file via temp file + rename (a reader never sees half a report)."""
    import os
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
