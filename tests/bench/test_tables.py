"""The one table helper of reports and study pages: every format escapes what it treats
specially."""

from __future__ import annotations

import csv
import io
import math

import pytest

from lrlab.bench.tables import (
    Table,
    format_number,
    html_table,
    latex_escape,
    markdown_escape,
    markdown_table,
)

NASTY = "a|b_c & <d> 50% $x$ #1 {y} ~z^2 \\w"


def _table(**kwargs) -> Table:
    return Table(
        "name_1",
        "A title",
        "A caption with 10 % and a_b.",
        ["method", "value"],
        [[NASTY, "1.5"], ["plain", "2"]],
        **kwargs,
    )


def test_markdown_escapes_pipes_and_keeps_the_row_shape() -> None:
    text = _table(emphasis=frozenset({(1, 1)})).markdown()
    lines = text.splitlines()
    assert lines[0] == "| method | value |" and lines[1] == "| --- | --- |"
    # the escaped pipe does not split the cell: every row still has three unescaped separators
    for line in lines:
        assert line.replace("\\|", "").count("|") == 3
    assert "a\\|b" in lines[2] and lines[3] == "| plain | **2** |"
    assert markdown_escape("x\ny") == "x y"


def test_html_escapes_and_emphasises() -> None:
    text = _table(emphasis=frozenset({(0, 1)})).html()
    assert "&lt;d&gt;" in text and "<d>" not in text and "&amp;" in text
    assert "<td><strong>1.5</strong></td>" in text and text.count("<tr>") == 3


def test_latex_escapes_every_special_character() -> None:
    assert latex_escape("a_b & 5% $ # { } ~ ^ \\") == (
        "a\\_b \\& 5\\% \\$ \\# \\{ \\} \\textasciitilde{} \\textasciicircum{} \\textbackslash{}"
    )
    text = _table(emphasis=frozenset({(1, 0)})).latex()
    assert "\\begin{tabular}{ll}" in text and "\\toprule" in text and "\\bottomrule" in text
    assert "\\label{tab:name\\_1}" in text and "\\textbf{plain} & 2 \\\\" in text
    assert latex_escape(NASTY) in text and "10 \\%" in text


def test_csv_round_trips_display_cells_or_long_form_numbers() -> None:
    rows = list(csv.reader(io.StringIO(_table().csv())))
    assert rows == [["method", "value"], [NASTY, "1.5"], ["plain", "2"]]
    data = [{"method": "a", "mean": 1.25, "rank": None}, {"method": "b", "mean": 2.0, "rank": 1}]
    long = list(csv.DictReader(io.StringIO(_table(data=data).csv())))
    assert long == [
        {"method": "a", "mean": "1.25", "rank": ""},
        {"method": "b", "mean": "2.0", "rank": "1"},
    ]


def test_text_for_a_terminal_aligns_columns() -> None:
    text = _table(emphasis=frozenset({(1, 1)})).text().splitlines()
    assert text[0].index("value") == text[1].index("1.5") == text[2].index("*2")


def test_a_row_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        Table("t", "T", "", ["a", "b"], [["only one"]])


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
