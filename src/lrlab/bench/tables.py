"""Tables as text: the one table helper of reports and study pages.

:func:`markdown_table` and :func:`html_table` render a header and rows of strings (format
numbers first, e.g. with :func:`format_number`). A :class:`Table` adds a title, a caption and
emphasised cells, renders the same content as Markdown, HTML, LaTeX, CSV and plain text, and
carries the same numbers in long form (one dict per cell, unformatted) for its CSV file, so a
spreadsheet or pandas gets numbers, not strings like ``"0.967 [0.961, 0.972]"``. Every renderer
escapes what its format treats specially: Markdown cells by
:func:`lrlab.bench._markdown.escape_markdown`, HTML cells as HTML, LaTeX's ten special
characters; so a method label or problem name can never break the table around it.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lrlab.bench._markdown import escape_markdown

__all__ = [
    "Table",
    "format_number",
    "html_table",
    "latex_escape",
    "markdown_escape",
    "markdown_table",
]

markdown_escape = escape_markdown
"""A table cell's text as Markdown that renders as that text (the one Markdown escaping)."""

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``a_b`` -> ``a\\_b``)."""
    return "".join(_LATEX_SPECIAL.get(character, character) for character in text)


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


@dataclass(frozen=True, slots=True)
class Table:
    """A titled table: ``header`` and ``rows`` of display text, a caption, a file stem.

    Attributes:
        name: file stem of the CSV/LaTeX files and the HTML anchor (``leaderboard``).
        title: section heading.
        caption: what the table shows and how every number is defined.
        header: column names.
        rows: display cells, one sequence per row, as long as ``header``.
        emphasis: ``(row, column)`` cells to emphasise (the best result): bold in Markdown and
            LaTeX, ``<strong>`` in HTML.
        data: the numbers in long form for the CSV (one mapping per row, same keys in every
            mapping); empty: the CSV holds the display cells.
    """

    name: str
    title: str
    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    emphasis: frozenset[tuple[int, int]] = field(default_factory=frozenset)
    data: Sequence[Mapping[str, object]] = ()

    def __post_init__(self) -> None:
        for index, row in enumerate(self.rows):
            if len(row) != len(self.header):
                raise ValueError(
                    f"table {self.name!r}: row {index} has {len(row)} cells, the header "
                    f"{len(self.header)}"
                )

    def markdown(self) -> str:
        """A GitHub-flavoured pipe table (no title or caption); emphasis is added after the
        escaping, so that it stays markup."""
        lines = [
            "| " + " | ".join(_markdown_cell(h) for h in self.header) + " |",
            "|" + " --- |" * len(self.header),
        ]
        for r, row in enumerate(self.rows):
            cells = [
                f"**{_markdown_cell(c)}**" if (r, k) in self.emphasis and c else _markdown_cell(c)
                for k, c in enumerate(row)
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def html(self) -> str:
        """A ``<table>`` (no title or caption), every cell escaped."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = []
        for r, row in enumerate(self.rows):
            cells = []
            for k, cell in enumerate(row):
                text = html.escape(cell)
                cells.append(
                    f"<td><strong>{text}</strong></td>"
                    if (r, k) in self.emphasis
                    else f"<td>{text}</td>"
                )
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def csv(self) -> str:
        """CSV text: the long-form numbers when given, else the display cells."""
        buffer = io.StringIO()
        if self.data:
            keys = list(self.data[0])
            writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
            writer.writeheader()
            for row in self.data:
                writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
        else:
            writer_rows = csv.writer(buffer, lineterminator="\n")
            writer_rows.writerow(self.header)
            writer_rows.writerows(self.rows)
        return buffer.getvalue()

    def text(self) -> str:
        """Plain text for a terminal: aligned columns, emphasised cells starred."""
        rows = [
            [f"*{c}" if (r, k) in self.emphasis else c for k, c in enumerate(row)]
            for r, row in enumerate(self.rows)
        ]
        widths = [
            max(len(str(row[k])) for row in [list(self.header), *rows])
            for k in range(len(self.header))
        ]
        lines = ["  ".join(h.ljust(w) for h, w in zip(self.header, widths, strict=True)).rstrip()]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        return "\n".join(lines)

    def latex(self) -> str:
        """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)
        and the caption; ``\\label{tab:NAME}``."""
        columns = "l" * len(self.header)
        lines = [
            "% generated by lrlab from the store; needs \\usepackage{booktabs}",
            "\\begin{table}",
            "\\centering",
            f"\\caption{{{latex_escape(self.title)}. {latex_escape(self.caption)}}}",
            f"\\label{{tab:{latex_escape(self.name)}}}",
            f"\\begin{{tabular}}{{{columns}}}",
            "\\toprule",
            " & ".join(latex_escape(h) for h in self.header) + " \\\\",
            "\\midrule",
        ]
        for r, row in enumerate(self.rows):
            cells = [
                f"\\textbf{{{latex_escape(c)}}}" if (r, k) in self.emphasis else latex_escape(c)
                for k, c in enumerate(row)
            ]
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        return "\n".join(lines)
