"""Command-line conventions: --version, closed pipes, list syntax, one flag name per concept,
no ``lr=None``, shell completion, the missing-extra message, and a useful first ETA."""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lrlab
from lrlab.__main__ import BROKEN_PIPE_EXIT, EXTRA_MODULES
from lrlab.bench.cli import build_parser, main
from lrlab.bench.spec import RunStatus
from lrlab.bench.sweep import Progress

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default stores go to ./results: keep them out of the checkout


def _child_env() -> dict[str, str]:
    """The environment of a child ``python``: this checkout's ``lrlab`` first on its path."""
    source = str(Path(lrlab.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _python(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_child_env(),
        **kwargs,
    )


# -- version ------------------------------------------------------------------------------------


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"lrlab {lrlab.__version__}\n"
    done = _python("-m", "lrlab", "--version")
    assert done.returncode == 0 and done.stdout == f"lrlab {lrlab.__version__}\n", done.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+(\w+\d*)?", lrlab.__version__)


def test_version_has_one_source():
    """pyproject reads the version from ``lrlab.__version__`` instead of repeating it."""
    import tomllib

    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "lrlab.__version__"
    assert project["project"]["license"] == "MIT" and (REPOSITORY / "LICENSE").is_file()
    assert re.search(
        rf"^## {re.escape(lrlab.__version__)}\b", (REPOSITORY / "CHANGELOG.md").read_text(), re.M
    )


# -- closed pipe --------------------------------------------------------------------------------


def test_closed_pipe_ends_quietly():
    """``lrlab list methods | head -0``: the reader is gone before lrlab writes; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child starts: its first write must fail
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lrlab", "list", "methods", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
            env=_child_env(),
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == BROKEN_PIPE_EXIT


# -- list syntax --------------------------------------------------------------------------------


def test_lists_take_commas_and_spaces(capsys):
    argv = [
        "sweep", "--problems", "synthetic_sphere,iris_logreg",
        "--methods", "sgd", "adam,clara-adam",
        "--lrs", "0.1", "0.01", "--seeds", "0", "3", "--dry-run",
    ]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == "sweep: 24 runs -> results/sweep.sqlite"
    args = build_parser().parse_args(["report", "--store", "s", "--problems", "a,b", "c"])
    assert args.problems == ["a", "b", "c"]
    # a count of seeds still reads as a count; a comma list as a list
    assert build_parser().parse_args(["sweep", "--seeds", "3"]).seeds == (0, 1, 2)
    assert build_parser().parse_args(["sweep", "--seeds", "4,7"]).seeds == (4, 7)
    assert build_parser().parse_args(["sweep", "--lrs", "0.1,0.01"]).lrs == (0.1, 0.01)


def test_a_bad_list_item_still_names_the_argument(capsys):
    code = main(["sweep", "--preset", "smoke", "--lrs", "0.1", "fast"])
    assert code == 2
    assert "argument --lrs:" in capsys.readouterr().err
    code = main(["sweep", "--problems", ",", "--methods", "sgd"])
    assert code == 2
    assert "argument --problems: expected at least one name" in capsys.readouterr().err


# -- one flag name per concept --------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_one_flag_name_per_concept():
    """Every destination is spelled the same in every subcommand that has it (hidden aliases
    aside), and the report directory is ``--report-dir`` in both ``report`` and ``study``."""
    spellings: dict[str, set[tuple[str, ...]]] = {}
    for command, sub in _subparsers(build_parser()).items():
        if command == "completion":
            continue
        for action in sub._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                spellings.setdefault(action.dest, set()).add(tuple(action.option_strings))
    different = {dest: names for dest, names in spellings.items() if len(names) > 1}
    assert different == {}
    commands = _subparsers(build_parser())
    for command in ("report", "study"):
        flags = {s for a in commands[command]._actions for s in a.option_strings}
        assert "--report-dir" in flags, command


def test_renamed_flag_keeps_its_old_spelling_hidden():
    parser = build_parser()
    args = parser.parse_args(["report", "--store", "s.sqlite", "--out", "somewhere"])
    assert args.report_dir == "somewhere"
    report_help = _subparsers(parser)["report"].format_help()
    assert "--report-dir" in report_help and "--out" not in report_help


# -- no lr=None ---------------------------------------------------------------------------------


def test_summary_never_prints_lr_none(capsys):
    argv = ["run", "--problem", "synthetic_sphere", "--steps", "3"]
    assert main([*argv, "--method", "l4-mom"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "synthetic_sphere / l4-mom / no LR argument / seed=0" in out
    assert main([*argv, "--method", "adam"]) == 0
    assert "adam / lr=default (0.001) / seed=0" in capsys.readouterr().out


def test_lr_for_a_method_without_one_is_a_usage_error(capsys):
    argv = ["run", "--problem", "synthetic_sphere", "--method", "sps", "--lr", "0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "argument --lr: method 'sps' has no learning-rate argument" in err


# -- completion ---------------------------------------------------------------------------------


def _complete(script: Path, *words: str) -> list[str]:
    quoted = " ".join(shlex.quote(w) for w in words)
    program = textwrap.dedent(f"""\
        source {shlex.quote(str(script))}
        COMP_WORDS=({quoted}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=()
        _lrlab
        printf '%s\\n' "${{COMPREPLY[@]}}"
        """)
    done = subprocess.run(
        ["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completion(capsys, tmp_path):
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "lrlab.bash"
    script.write_text(capsys.readouterr().out)
    assert _complete(script, "lrlab", "rep") == ["report"]
    assert _complete(script, "lrlab", "--ve") == ["--version"]
    assert _complete(script, "lrlab", "sweep", "--meth") == ["--methods"]
    assert _complete(script, "lrlab", "sweep", "--methods", "clara-ad") == ["clara-adam"]
    # a multi-valued flag keeps completing its values, also after a comma
    assert _complete(script, "lrlab", "sweep", "--methods", "sgd", "clara-s") == ["clara-sgd"]
    assert _complete(script, "lrlab", "sweep", "--methods", "sgd,clara-s") == ["sgd,clara-sgd"]
    assert _complete(script, "lrlab", "run", "--problem", "iris_l") == ["iris_logreg"]
    assert set(_complete(script, "lrlab", "sweep", "--backend", "")) == {"local", "ray"}
    assert "smoke" in _complete(script, "lrlab", "study", "sm")
    assert "--out" not in _complete(script, "lrlab", "report", "--")  # hidden alias


def test_zsh_completion_wraps_the_bash_script(capsys, tmp_path):
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef lrlab\n") and "bashcompinit" in script
    assert "complete -o default -F _lrlab lrlab" in script
    if shutil.which("zsh") is None:
        return  # the text checks above still ran; zsh itself is optional here
    path = tmp_path / "_lrlab.zsh"
    path.write_text(script)
    done = subprocess.run(
        ["zsh", "-f", "-c", f"source {shlex.quote(str(path))} && whence -w _lrlab"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "_lrlab: function"


# -- missing extras -----------------------------------------------------------------------------

_HIDE_BENCH = textwrap.dedent("""\
    import sys
    HIDDEN = set(sys.argv[1].split(","))

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    from lrlab.__main__ import main
    sys.exit(main(sys.argv[2:]))
    """)


@pytest.mark.parametrize(
    "argv", [["list", "problems"], ["run", "--problem", "iris_logreg", "--method", "sgd"]]
)
def test_missing_bench_extra_is_named(argv, tmp_path):
    """A plain ``pip install lrlab`` (no extras) gets the install line, not a traceback."""
    hider = tmp_path / "hide.py"
    hider.write_text(_HIDE_BENCH)
    done = _python(str(hider), ",".join(EXTRA_MODULES["bench"]), *argv)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("lrlab: error: this command needs the")
    assert "pip install 'lrlab[bench]'" in done.stderr
    # the optimizers need torch only: listing methods still works without the extras
    done = _python(str(hider), ",".join(EXTRA_MODULES["bench"]), "list", "methods")
    assert done.returncode == 0 and "clara-adam" in done.stdout, done.stderr


def test_extra_modules_match_pyproject():
    import tomllib

    extras = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    distributions = {"sklearn": "scikit-learn"}
    for extra, modules in EXTRA_MODULES.items():
        declared = {re.split(r"[<>=\[; ]", d, maxsplit=1)[0].lower() for d in extras[extra]}
        for module in modules:
            assert distributions.get(module, module) in declared, (extra, module)


# -- ETA ----------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_leaves_out_start_up_and_counts_workers():
    """120 runs of 0.8 s on 2 workers after 10 s of start-up: after the second round 46.4 s
    remain, not 116 x 11.6 / 4 s (the old estimate said "22m" for a 47 s sweep)."""
    clock = _Clock()
    bar = Progress(120, stream=io.StringIO(), workers=2, clock=clock)
    clock.now = 10.8
    bar.update(RunStatus.FINISHED)
    bar.update(RunStatus.FINISHED)
    assert "ETA ?" in bar.line()  # one round says nothing about the rate yet
    for round_ in range(1, 10):
        clock.now = 10.8 + 0.8 * round_
        bar.update(RunStatus.FINISHED)
        bar.update(RunStatus.DIVERGED)
        assert bar.eta() == pytest.approx((120 - 2 * (round_ + 1)) * 0.4)
    for _ in range(100):
        bar.update(None)
    assert bar.eta() == 0.0 and "ETA 0m00s" in bar.line()


def test_progress_off_a_terminal_waits_for_the_interval():
    clock = _Clock()
    stream = io.StringIO()
    bar = Progress(4, stream=stream, workers=1, interval=10.0, clock=clock)
    clock.now = 1.0
    bar.update(RunStatus.FINISHED)
    assert stream.getvalue() == ""
    clock.now = 11.0
    bar.update(RunStatus.FINISHED)
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("[############............] 2/4 (50%)") and "ETA 0m20s" in line
