"""Output paths stay in their output directory; names from stores and studies never escape;
bad paths and numbers on the command line are one clear line, never a traceback."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from lrlab.bench._markdown import escape_markdown
from lrlab.bench._paths import (
    OutputPathError,
    check_output_dir,
    check_output_file,
    check_study_name,
    confined,
    safe_file_stem,
)
from lrlab.bench.store import Store
from tests.reliability._lab import clean_failure, cli, make_store, record, sweep_args

HOSTILE = [
    "../../escaped",
    "/tmp/absolute",
    "a/../../b",
    "..",
    ".",
    ".hidden",
    "-rf",
    "nul\x00byte",
    "new\nline",
    "back\\slash",
    "pipe|cell",
    "`code`",
    "<script>alert(1)</script>",
    "[link](javascript:alert(1))",
    "x" * 300,
    "ünïcødé",
    "",
]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs (results/, docs/) stay in the test directory


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# -- the helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smoke", "lrfree", "my-study.v2", "A_1", "9lives"])
def test_good_study_names(name):
    assert check_study_name(name) == name


@pytest.mark.parametrize("name", [*HOSTILE[:10], "a b", "x" * 101, None, 3])
def test_bad_study_names(name):
    with pytest.raises(OutputPathError, match="bad study name"):
        check_study_name(name)


def test_safe_file_stems_are_plain_names_and_distinct():
    stems = [safe_file_stem(name) for name in HOSTILE]
    assert len(set(stems)) == len(stems)
    for stem in stems:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=,()\[\]-]*", stem), stem
        assert ".." not in stem and len(stem) < 160
    assert safe_file_stem("synthetic_sphere-sensitivity") == "synthetic_sphere-sensitivity"


def test_confined_refuses_every_way_out(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    assert confined(root, "a.png") == root / "a.png"
    assert confined(root, "sub", "a.png") == root / "sub" / "a.png"
    for parts in (("../x.png",), ("/etc/passwd",), ("a", "../../x"), ("link", "x"), ("..",)):
        with pytest.raises(OutputPathError):
            confined(root, *parts)
    with pytest.raises(OutputPathError):
        confined(root, "a\x00b")


def test_output_checks_name_the_path_and_the_reason(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert check_output_file(tmp_path / "new" / "deeper" / "x.csv") == tmp_path / "new/deeper/x.csv"
    assert check_output_dir(tmp_path / "d") == tmp_path / "d"
    with pytest.raises(OutputPathError, match="is a directory, not a file"):
        check_output_file(tmp_path / "d")
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        check_output_file(tmp_path / "f" / "x.csv")
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        check_output_dir(tmp_path / "f")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_read_only_locations(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_file(locked / "x.sqlite")
        code, _, err = cli(*sweep_args(locked / "x.sqlite"))
        assert clean_failure(code, err, "sweep") and "not writable" in err
    finally:
        locked.chmod(0o755)


def test_markdown_escape():
    for text in HOSTILE:
        escaped = escape_markdown(text)
        assert "\n" not in escaped and "\x00" not in escaped and "<" not in escaped
        assert re.search(r"(?<!\\)[|`]|(?<!\\)\]\(", escaped) is None, escaped
    for plain in ("synthetic_sphere", "clara-sgd(d=0.02)", "dadapt-adam[d0=lr]", "lr 1e-3"):
        assert escape_markdown(plain) == plain


# -- names from a store -------------------------------------------------------------------------


def _hostile_store(path: Path) -> Path:
    """A store whose problem names and labels are hostile (anyone can write a store)."""
    base = record(seed=0)
    with Store(path) as store:
        names = ["../../escaped", "/tmp/absolute|cell\n<script>x</script>`[a](b)`"]
        for index, name in enumerate(names):
            config = dataclasses.replace(
                base.config, problem=name, seed=index, tags={"label": f"m{name}"}
            )
            store.write(dataclasses.replace(base, config=config, run_id=config.run_id))
    return path


@pytest.mark.slow
def test_names_from_a_store_never_leave_the_report_directory(tmp_path):
    store = _hostile_store(tmp_path / "hostile.sqlite")
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "report"
    before = _files(tmp_path)
    code, _, err = cli("report", "--store", str(store), "--report-dir", str(out))
    new = {p for p in _files(tmp_path) - before if not p.name.startswith("hostile.sqlite")}
    assert all(p.is_relative_to(out) for p in new), sorted(new)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute.png").exists()
    if code != 0:  # refusing such a store is fine too, cleanly
        assert clean_failure(code, err, "report"), err
        return
    markdown = (out / "report.md").read_text()
    assert "<script>" not in markdown and "absolute\\|cell" in markdown
    tables: list[list[str]] = [[]]
    for line in markdown.splitlines():
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    for rows in filter(None, tables):  # every row of a table keeps the header's column count
        columns = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
        assert len(columns) == 1, rows


# -- study names --------------------------------------------------------------------------------


def test_a_study_name_cannot_escape(tmp_path):
    code, _, err = cli(*sweep_args(tmp_path / "s.sqlite", "--name", "../evil", "--dry-run"))
    assert clean_failure(code, err, "sweep") and "bad study name '../evil'" in err
    study = tmp_path / "evil.toml"
    for name in ("../../evil", "/tmp/evil", "a/b", "..", ".x"):
        study.write_text(
            f'name = "{name}"\nproblems = ["synthetic_sphere"]\nmethods = ["sgd"]\n'
            'lrs = "0.1"\nseeds = 1\nsteps = 2\n'
        )
        before = _files(tmp_path)
        code, _, err = cli("study", str(study), "--quiet")
        assert clean_failure(code, err, "study") and "bad study name" in err, err
        assert _files(tmp_path) == before
        code, _, err = cli("sweep", "--study", str(study), "--dry-run")
        assert clean_failure(code, err, "sweep") and "bad study name" in err, err


def test_a_part_name_cannot_escape(tmp_path):
    study = tmp_path / "parts.toml"
    study.write_text(
        'name = "ok"\nlrs = "0.1"\nseeds = 1\nsteps = 2\n'
        '[[parts]]\nname = ".."\nproblems = ["synthetic_sphere"]\nmethods = ["sgd"]\n'
    )
    code, _, err = cli("sweep", "--study", str(study), "--dry-run")
    assert clean_failure(code, err, "sweep") and "part name" in err, err


# -- the command line: bad paths and numbers ----------------------------------------------------

RUN = ("run", "--problem", "synthetic_sphere", "--method", "sgd", "--steps", "2")


def _bad_cli_cases(tmp: Path, good: Path) -> dict[str, tuple[tuple[str, ...], str]]:
    """name -> (argv, a fragment of the expected message): every subcommand, every path and
    number flag, each a case that gave a traceback or was silently accepted."""
    adir, afile = str(tmp / "adir"), str(tmp / "afile")
    return {
        "sweep --store DIR": ((*sweep_args(adir),), "is a directory"),
        "sweep --store FILE/x": ((*sweep_args(f"{afile}/x.sqlite"),), "is a file, not a dir"),
        "sweep --lrs huge": (
            (
                "sweep",
                "--problems",
                "synthetic_sphere",
                "--methods",
                "sgd",
                "--lrs",
                "1e-6:1:1000000000",
            ),
            "--lrs",
        ),
        "sweep --seeds huge": (
            (
                "sweep",
                "--problems",
                "synthetic_sphere",
                "--methods",
                "sgd",
                "--seeds",
                "1000000000",
            ),
            "--seeds",
        ),
        "run --store DIR": ((*RUN, "--store", adir), "is a directory"),
        "run --store FILE/x": ((*RUN, "--store", f"{afile}/x.sqlite"), "is a file, not a dir"),
        "run --divergence-threshold nan": (
            (*RUN, "--divergence-threshold", "nan"),
            "argument --divergence-threshold: expected a finite number > 0, got 'nan'",
        ),
        "run --divergence-threshold -1": ((*RUN, "--divergence-threshold", "-1"), "got '-1'"),
        "report --store DIR": (("report", "--store", adir), "is a directory"),
        "report --report-dir FILE": (
            ("report", "--store", str(good), "--report-dir", afile),
            "is a file",
        ),
        "report --report-dir FILE/sub": (
            ("report", "--store", str(good), "--report-dir", f"{afile}/sub"),
            "is a file, not a directory",
        ),
        "export --out DIR": (("export", "--store", str(good), "--out", adir), "is a directory"),
        "export --out FILE/x": (
            ("export", "--store", str(good), "--out", f"{afile}/x.csv"),
            "is a file, not a directory",
        ),
        "export --store DIR": (("export", "--store", adir, "--out", "x.csv"), "is a directory"),
        "refine --store DIR": (("refine", "--store", adir, "--run-id", "ab"), "is a directory"),
        "refine --out DIR": (
            ("refine", "--store", str(good), "--run-id", "0", "--out", adir),
            "is a directory",
        ),
        "refine --smoothing nan": (
            ("refine", "--store", str(good), "--run-id", "0", "--smoothing", "nan"),
            "argument --smoothing: expected a number in [0, 1)",
        ),
        "study --store DIR": (("study", "smoke", "--no-run", "--store", adir), "is a directory"),
        "study --docs FILE": (("study", "smoke", "--no-run", "--docs", afile), "is a file"),
        "study --report-dir FILE": (
            ("study", "smoke", "--no-run", "--report-dir", afile),
            "is a file, not a directory",
        ),
        "demo --lr nan": (("demo", "--lr", "nan"), "argument --lr: expected a finite number > 0"),
        "demo --lr -1": (("demo", "--lr", "-1"), "argument --lr: expected a finite number > 0"),
        "demo --lr inf": (("demo", "--lr", "inf"), "argument --lr: expected a finite number > 0"),
        "demo --steps 0": (("demo", "--steps", "0"), "argument --steps: expected an integer >= 1"),
        "demo --steps -5": (("demo", "--steps", "-5"), "argument --steps: expected an integer"),
    }


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "adir").mkdir()
    (tmp / "afile").write_text("x")
    return tmp, make_store(tmp / "good.sqlite", runs=1)


@pytest.mark.parametrize("case", list(_bad_cli_cases(Path("/x"), Path("/x/good"))))
def test_bad_paths_and_numbers_are_one_clear_line(cli_world, case):
    tmp, good = cli_world
    argv, message = _bad_cli_cases(tmp, good)[case]
    code, out, err = cli(*argv)
    command = argv[0]
    assert clean_failure(code, err, command), err
    assert message in err, err
    assert out == ""
