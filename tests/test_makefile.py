"""The Makefile's entry points, read with ``make -n`` in an empty copy (nothing is installed):
``make demo`` installs only the bench extras, one announced stage at a time; ``make test``
installs the dev extras and announces a system install before running it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(tmp_path: Path, target: str) -> list[str]:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPOSITORY / name, tmp_path / name)
    # run from `make test` (as CI does), make's own variables would make this a sub-make that
    # prints "Entering/Leaving directory" lines: start it as a top-level make
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return done.stdout.splitlines()


def test_demo_installs_only_the_bench_extras(tmp_path):
    lines = _dry_run(tmp_path, "demo")
    installs = [line for line in lines if "pip install" in line]
    assert len(installs) == 2  # torch, then the package with its bench extras
    assert '-e ".[bench]"' in installs[1]
    assert not any("[dev]" in line for line in lines)
    assert all("-qq" in line for line in installs)  # pip prints errors only
    stages = [line for line in lines if line.startswith('echo "make: [')]
    assert [s.split("]")[0] for s in stages] == [
        'echo "make: [1/3',
        'echo "make: [2/3',
        'echo "make: [3/3',
    ]
    assert lines[-1].startswith("echo") and ".venv/bin/lrlab --help" in lines[-1]


def test_test_installs_the_dev_extras_and_runs_every_check(tmp_path):
    lines = _dry_run(tmp_path, "test")
    text = "\n".join(lines)
    assert '-e ".[dev]"' in text
    for check in ("ruff check", "ruff format --check", "mypy", "mkdocs build --strict", "pytest"):
        assert check in text, check


def test_system_install_is_announced_before_it_runs():
    recipe = (REPOSITORY / "Makefile").read_text().split("\nbrowser:", 1)[1].split("\n\n", 1)[0]
    announce = recipe.index("echo \"make test: installing Debian's chromium")
    assert announce < recipe.index("apt-get update")
