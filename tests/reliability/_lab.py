"""Shared helpers of the lab reliability tests: real records, a real store, CLI calls."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import lrlab
from lrlab.bench.cli import main
from lrlab.bench.runner import run
from lrlab.bench.spec import RunConfig, RunRecord
from lrlab.bench.store import Store

REPO_SRC = str(Path(lrlab.__file__).resolve().parents[1])


def child_env() -> dict[str, str]:
    """The environment of a child ``python -m lrlab``: this process's ``lrlab`` first on the
    path (the worktree here, the editable install in CI)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_SRC, *sys.path[1:]])
    env.pop("LRLAB_TRACEBACK", None)
    return env


def record(seed: int = 0, steps: int = 4, label: str | None = None) -> RunRecord:
    """One real run of a bundled problem (a few milliseconds)."""
    tags = {"label": label} if label is not None else {}
    config = RunConfig(
        problem="synthetic_sphere", method="sgd", lr=0.1, seed=seed, steps=steps, tags=tags
    )
    return run(config)


def make_store(path: Path, runs: int = 3) -> Path:
    """A real store at ``path`` holding ``runs`` runs."""
    with Store(path) as store:
        for seed in range(runs):
            store.write(record(seed))
    return path


def cli(*argv: str) -> tuple[int, str, str]:
    """``lrlab ARGV`` in this process: (exit code, stdout, stderr). An exception escaping
    :func:`main` is what a user would see as a traceback, so it is let through."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def clean_failure(code: int, err: str, command: str) -> bool:
    """A failure as the CLI promises it: non-zero exit, one line ``lrlab COMMAND: error: ...``
    (after argparse's usage lines), no traceback, no internal error."""
    lines = [line for line in err.splitlines() if line.strip()]
    return (
        code != 0
        and "Traceback" not in err
        and "internal error" not in err
        and bool(lines)
        and lines[-1].startswith(f"lrlab {command}: error: ")
    )


def sweep_args(store: Path | str, *extra: str) -> Sequence[str]:
    return (
        "sweep",
        "--problems",
        "synthetic_sphere",
        "--methods",
        "sgd",
        "--lrs",
        "0.1",
        "--steps",
        "3",
        "--workers",
        "1",
        "--quiet",
        "--store",
        str(store),
        *extra,
    )
