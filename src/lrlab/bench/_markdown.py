"""Text from a store, shown in a Markdown report as the text it is.

Labels, problem names and metric names come from stores and study files, which anyone can
write. Put unescaped into a Markdown table, a ``|`` splits a cell, a newline ends the table, a
backtick opens a code span and ``<script>`` or ``[x](javascript:...)`` is markup. One function,
:func:`escape_markdown`, is applied wherever the report and study writers put such text.
"""

from __future__ import annotations

import re

__all__ = ["escape_markdown"]

# CommonMark: any ASCII punctuation may be backslash-escaped and then renders as itself. These
# are the characters that start markup inside a table cell, a heading or an image's alt text.
# Left as they are, so that ordinary labels read the same in the raw file: an underscore
# between two letters or digits (synthetic_sphere), which cannot start emphasis, and brackets
# that cannot make a link (sgd[d0=lr]: a link needs "](" or "][").
_SPECIAL = re.compile(r"[\\`*|~]|\](?=[(\[])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def escape_markdown(text: object) -> str:
    """``text`` as Markdown that renders as that text, on one line: markup characters
    backslash-escaped, ``<``, ``>`` and ``&`` as HTML entities, line breaks (and other control
    characters) as spaces."""
    line = re.sub(r"[\x00-\x1f\x7f\u2028\u2029]+", " ", str(text))
    line = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(lambda match: "\\" + match.group(0), line)
