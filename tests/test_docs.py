"""The docs stay true to the code: the README's method table and the method pages against the
registry, no references outside the repository, and the docstring converter of the API reference.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import lrlab.optim as lo

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"


def _readme_method_rows() -> list[tuple[list[str], str]]:
    """(names, paper column) of every row of the README's "Methods" table."""
    text = README.read_text()
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        rows.append((re.findall(r"`([a-z0-9-]+)`", cells[0]), cells[-1]))
    return rows


def test_readme_method_table_lists_every_registered_method_once():
    listed = [name for names, _ in _readme_method_rows() for name in names]
    assert sorted(listed) == sorted(lo.names())
    assert len(listed) == len(set(listed))


def test_readme_method_table_cites_each_methods_paper():
    """A row cites exactly the arXiv papers its methods' specs declare."""
    for names, paper in _readme_method_rows():
        cited = set(re.findall(r"arXiv:(\d{4}\.\d{4,5})", paper))
        declared: set[str] = set()
        for name in names:
            own = set(re.findall(r"arXiv:(\d{4}\.\d{4,5})", lo.spec(name).paper))
            assert own <= cited, f"{name}: the row does not cite {own - cited}"
            declared |= own
        assert cited <= declared, f"{names}: the row cites {cited - declared}, no spec does"


def test_every_family_has_a_method_page_naming_its_methods():
    pages = REPOSITORY / "docs" / "methods"
    overview = (pages / "index.md").read_text()
    for name in lo.names():
        spec = lo.spec(name)
        page = pages / f"{spec.family}.md"
        assert page.is_file(), f"{name}: no page docs/methods/{spec.family}.md"
        assert f"`{name}`" in page.read_text(), f"{name} is not described on {page.name}"
        assert f"`{name}`" in overview, f"{name} is missing from docs/methods/index.md"
        module = spec.cls.__module__
        assert f"::: {module}.{spec.cls.__name__}" in page.read_text(), name


def test_method_pages_are_in_the_site_navigation():
    navigation = (REPOSITORY / "mkdocs.yml").read_text()
    for page in (REPOSITORY / "docs" / "methods").glob("*.md"):
        assert f"methods/{page.name}" in navigation, page.name


def test_no_reference_points_outside_the_repository():
    """The specs the code was written from are not in a clone; the docs must not send readers
    there (``../shared/specs``)."""
    roots = [REPOSITORY / "src", REPOSITORY / "tests", REPOSITORY / "docs", README]
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()]
    offenders = [
        str(p.relative_to(REPOSITORY))
        for p in files
        if p.suffix in {".py", ".md", ".toml"}
        and "shared/specs" in p.read_text(errors="ignore")
        and p != Path(__file__).resolve()
    ]
    assert offenders == []


def test_docstrings_point_to_existing_method_pages():
    pages = set()
    for path in (REPOSITORY / "src").rglob("*.py"):
        pages.update(re.findall(r"docs/methods/([a-z-]+\.md)", path.read_text()))
    assert pages
    for page in pages:
        assert (REPOSITORY / "docs" / "methods" / page).is_file(), page


# -- the API reference's docstring converter --------------------------------------------------


@pytest.fixture(scope="module")
def converter():
    import griffe  # noqa: F401  (a docs dependency the dev extra installs: missing, this fails)

    spec = importlib.util.spec_from_file_location(
        "griffe_rst_math", REPOSITORY / "tools" / "griffe_rst_math.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rst_to_markdown


def test_math_roles_and_blocks_become_arithmatex(converter):
    text = "Step :math:`\\eta_t` here.\n\n.. math::\n    a = b\n    c = d\n\nAfter."
    assert converter(text) == "Step \\(\\eta_t\\) here.\n\n\n\\[\na = b\nc = d\n\\]\n\nAfter."


def test_indented_blocks_keep_their_indentation(converter):
    text = "Args:\n    x: see\n\n    .. math::\n        x^2\n\n    more"
    out = converter(text)
    assert "    \\[\n    x^2\n    \\]" in out and out.endswith("\n    more")


def test_notes_become_admonitions_and_roles_code(converter):
    text = (
        ".. note::\n    Be careful: :class:`~lrlab.optim.ClaraAdam` and :func:`lrlab.optim.create`."
    )
    assert converter(text) == (
        "\n!!! note\n    Be careful: `ClaraAdam` and `lrlab.optim.create`.\n"
    )
