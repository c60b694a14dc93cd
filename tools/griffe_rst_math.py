"""A griffe extension for the API reference: the reStructuredText bits of lrlab's docstrings in
Markdown.

The docstrings are Google style with a few reST constructs (the math above all), which the
Markdown renderer of mkdocstrings would print verbatim. Before rendering, this turns

* ``:math:`x```  into ``\\(x\\)`` and a ``.. math::`` block into ``\\[ ... \\]`` (rendered by
  ``pymdownx.arithmatex`` and MathJax);
* ``.. note::`` / ``.. warning::`` blocks into admonitions;
* cross-reference roles (``:class:`~lrlab.optim.ClaraAdam```) into code spans of the name.

It is loaded by ``mkdocs.yml`` (``extensions: [tools/griffe_rst_math.py]``) and changes only what
the site shows, never the docstrings themselves.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_REFERENCE_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|ref):`(~?)([^`]+)`"
)
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. (?P<name>math|note|warning)::[ \t]*(?P<rest>.*)$")


def _reference(match: re.Match[str]) -> str:
    shorten, target = match.groups()
    target = target.split("<")[-1].rstrip(">") if "<" in target else target
    return f"`{target.rsplit('.', 1)[-1] if shorten else target}`"


def _convert_blocks(text: str) -> str:
    """``.. math::`` and ``.. note::`` blocks (an indented body after the directive line)."""
    lines = text.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index])
        if match is None:
            out.append(lines[index])
            index += 1
            continue
        indent = len(match["indent"].expandtabs())
        body: list[str] = [match["rest"]] if match["rest"].strip() else []
        index += 1
        while index < len(lines) and (
            not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
        ):
            body.append(lines[index])
            index += 1
        while body and not body[-1].strip():
            body.pop()
        content = textwrap.dedent("\n".join(body)).strip("\n")
        prefix = " " * indent
        if match["name"] == "math":
            out.extend(["", f"{prefix}\\[", *(prefix + line for line in content.splitlines())])
            out.extend([f"{prefix}\\]", ""])
        else:
            out.extend(["", f"{prefix}!!! {match['name']}"])
            out.extend(f"{prefix}    {line}" if line else "" for line in content.splitlines())
            out.append("")
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reST math, notes and roles in Markdown."""
    text = _convert_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
    return _REFERENCE_ROLE.sub(_reference, text)


class RstMath(griffe.Extension):
    """Rewrites every docstring with :func:`rst_to_markdown` once it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
