"""Tables as text: one place for the Markdown and HTML tables of reports and study pages.

Cells are strings (format numbers first, e.g. with :func:`format_number`). Markdown cells are
escaped by :func:`lrlab.bench._markdown.escape_markdown`; HTML cells are escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from lrlab.bench._markdown import escape_markdown

__all__ = ["format_number", "html_table", "markdown_table"]


def _markdown_cell(text: str) -> str:
    return escape_markdown(text)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (header row, ``---`` rule, one line per row).

    Raises:
        ValueError: a row has another number of cells than the header.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells, the header {len(header)}")
    lines = ["| " + " | ".join(_markdown_cell(h) for h in header) + " |"]
    lines.append("|" + " --- |" * len(header))
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as HTML (``<table>`` with ``<thead>`` and ``<tbody>``), cells escaped."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells, the header {len(header)}")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def format_number(value: float | None, spec: str = ".3g", *, missing: str = "none") -> str:
    """``format(value, spec)``, with ``missing`` for None and ``nan`` / ``inf`` / ``-inf`` for
    non-finite values (whatever the spec)."""
    if value is None:
        return missing
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return format(value, spec)
