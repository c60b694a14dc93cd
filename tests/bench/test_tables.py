"""The one table helper of reports and study pages."""

from __future__ import annotations

import math

import pytest

from lrlab.bench.tables import format_number, html_table, markdown_table


def test_markdown_table_layout_and_escaping() -> None:
    text = markdown_table(["method", "a|b"], [["sgd", "0.5"], ["adam", "x|y"]])
    assert text.splitlines() == [
        "| method | a\\|b |",
        "| --- | --- |",
        "| sgd | 0.5 |",
        "| adam | x\\|y |",
    ]


def test_html_table_escapes_cells() -> None:
    text = html_table(["m"], [["<b>&"]])
    head = "<table><thead><tr><th>m</th></tr></thead>"
    assert text == head + "<tbody><tr><td>&lt;b&gt;&amp;</td></tr></tbody></table>"


def test_ragged_rows_are_an_error() -> None:
    for table in (markdown_table, html_table):
        with pytest.raises(ValueError, match=r"a table row has 1 cells, the header 2"):
            table(["a", "b"], [["only one"]])


def test_format_number() -> None:
    assert format_number(0.123456) == "0.123"
    assert format_number(2.0, "g") == "2"
    assert format_number(None) == "none" and format_number(None, missing="-") == "-"
    assert [format_number(v, ".2f") for v in (math.nan, math.inf, -math.inf)] == [
        "nan",
        "inf",
        "-inf",
    ]
