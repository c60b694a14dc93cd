"""Seeded fuzzing of the lab as a careless or hostile user would: damaged stores, foreign
SQLite files, hostile names, a killed sweep driver.

Every case must *hold*: the command works, or it fails with one clean line (non-zero exit, no
traceback, no "internal error"), and nothing outside the output directory, and no foreign file,
changes. Each test prints ``fuzz <what>: tried N, held M`` (``pytest -s``) and fails unless all
held. The tests import only what older lrlab versions had, so they also measure them.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lrlab.bench.sweep
from tests.reliability._lab import child_env, clean_failure, cli, make_store, sweep_args

SEED = 20261207


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs (results/, docs/) stay in the test directory
    # sweeps run in this process: the fuzz is about the store, not about starting workers
    monkeypatch.setattr(
        lrlab.bench.sweep,
        "make_executor",
        lambda *args, **kwargs: concurrent.futures.ThreadPoolExecutor(1),
    )


def _held(argv) -> tuple[bool, str]:
    """Run ``lrlab ARGV``; (whether it held, what it said)."""
    try:
        code, _, err = cli(*argv)
    except BaseException as error:  # what a user sees as a traceback
        return False, f"traceback: {type(error).__name__}: {error}"
    return code == 0 or clean_failure(code, err, argv[0]), err.strip()[-300:]


def _commands(store: Path, out: Path) -> list[tuple[str, ...]]:
    """Every subcommand that reads or writes a store, on ``store``."""
    out_dirs = ("--docs", str(out / "docs"), "--report-dir", str(out / "rep"))
    return [
        ("report", "--store", str(store)),
        ("export", "--store", str(store), "--out", str(out / "runs.csv")),
        ("refine", "--store", str(store), "--run-id", "0"),
        ("run", "--problem", "synthetic_sphere", "--method", "sgd", "--store", str(store)),
        tuple(sweep_args(store)),
        ("study", "smoke", "--no-run", "--quiet", "--store", str(store), *out_dirs),
    ]


def _summary(what: str, results: list[tuple[bool, str, str]]) -> None:
    held = sum(ok for ok, _, _ in results)
    print(f"\nfuzz {what}: tried {len(results)}, held {held}")
    failures = [f"{case}: {said}" for ok, case, said in results if not ok]
    assert not failures, "\n".join(failures[:10])


# -- damaged stores -----------------------------------------------------------------------------


def _damaged_copies(good: Path, directory: Path) -> list[tuple[str, Path]]:
    """Seeded damage to a real store: truncations, overwritten pages, overwritten headers."""
    data = good.read_bytes()
    page = int.from_bytes(data[16:18], "big") or 65536
    pages = len(data) // page
    rng = random.Random(SEED)
    cases: list[tuple[str, bytes]] = []
    for cut in (
        20,
        99,
        100,
        512,
        page,
        page + 100,
        len(data) // 2,
        len(data) - page,
        len(data) - 1,
    ):
        cases.append((f"truncated at {cut}", data[:cut]))
    for index in range(40):
        damaged = bytearray(data)
        number = rng.randrange(pages)
        if index % 2:  # a whole page of noise
            damaged[number * page : (number + 1) * page] = rng.randbytes(page)
        else:  # a few bytes somewhere in a page
            start = number * page + rng.randrange(page - 16)
            damaged[start : start + rng.randrange(1, 16)] = rng.randbytes(16)[
                : rng.randrange(1, 16)
            ]
            damaged = damaged[: len(data)].ljust(len(data), b"\0")
        cases.append((f"page {number} of {pages} overwritten (case {index})", bytes(damaged)))
    for _ in range(6):
        damaged = bytearray(data)
        start = rng.randrange(100)
        damaged[start : start + 4] = rng.randbytes(4)
        cases.append((f"header bytes {start}..{start + 3} overwritten", bytes(damaged)))
    copies = []
    for index, (name, content) in enumerate(cases):
        path = directory / f"damaged-{index}.sqlite"
        path.write_bytes(content)
        copies.append((name, path))
    return copies


@pytest.mark.slow
def test_fuzz_damaged_stores(tmp_path):
    good = make_store(tmp_path / "good.sqlite", runs=6)
    damaged_dir = tmp_path / "damaged"
    damaged_dir.mkdir()
    results = []
    for name, path in _damaged_copies(good, damaged_dir):
        for argv in _commands(path, tmp_path / "out"):
            pristine = path.read_bytes()
            ok, said = _held(argv)
            results.append((ok, f"{name} / lrlab {argv[0]}", said))
            path.write_bytes(pristine)  # each command sees the same damage
            for side in (".sqlite-wal", ".sqlite-shm"):
                Path(str(path).replace(".sqlite", side)).unlink(missing_ok=True)
    _summary("damaged stores (cases x commands)", results)


# -- foreign SQLite files -----------------------------------------------------------------------


def _foreign_files(directory: Path) -> list[tuple[str, Path]]:
    files = []

    def make(name: str, statements: list[str], pragmas: list[str] = ()) -> None:
        path = directory / f"{name}.db"
        db = sqlite3.connect(path)
        for pragma in pragmas:
            db.execute(pragma)
        for statement in statements:
            db.execute(statement)
        db.commit()
        db.close()
        files.append((name, path))

    make("users", ["CREATE TABLE users (name TEXT)", "INSERT INTO users VALUES ('ada')"])
    make("users-wal", ["CREATE TABLE users (name TEXT)"], ["PRAGMA journal_mode=WAL"])
    make("app-id", ["CREATE TABLE t (x)"], ["PRAGMA application_id = 1234"])
    make("app-id-empty", [], ["PRAGMA application_id = 99"])
    make("runs-only", ["CREATE TABLE runs (run_id TEXT PRIMARY KEY, payload BLOB)"])
    make(
        "meta-lookalike",
        ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)", "CREATE TABLE orders (id)"],
    )
    make(
        "lrlab-tables-plus-more",
        [
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO meta VALUES ('schema_version', '1')",
            "CREATE TABLE runs (run_id TEXT)",
            "CREATE TABLE steps (run_id TEXT)",
            "CREATE TABLE evals (run_id TEXT)",
            "CREATE TABLE invoices (id INTEGER)",
        ],
    )
    for name, content in (
        ("text", b"name,email\nada,ada@example.org\n"),
        ("zeros", b"\0" * 8192),
        ("png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200),
    ):
        path = directory / f"{name}.db"
        path.write_bytes(content)
        files.append((name, path))
    return files


def test_fuzz_foreign_files_are_refused_untouched(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    results = []
    for name, path in _foreign_files(foreign):
        for argv in _commands(path, tmp_path / "out"):
            before = {p.name: p.read_bytes() for p in foreign.iterdir()}
            ok, said = _held(argv)
            after = {p.name: p.read_bytes() for p in foreign.iterdir()}
            refused = ok and "error" in said and after == before
            results.append((refused, f"{name} / lrlab {argv[0]}", said or "accepted"))
    _summary("foreign files (files x commands), refused untouched", results)


# -- hostile names ------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../evil",
    "../../evil",
    "ABSOLUTE",  # replaced by an absolute path outside the working directory
    "a/b",
    "..",
    ".",
    "",
    ".hidden",
    "-flag",
    "nul\x00byte",
    "new\nline",
    "x" * 300,
    "back\\slash",
    "semi;colon",
    "$(touch pwned)",
]


def test_fuzz_hostile_names_never_escape(tmp_path):
    results = []
    work = tmp_path / "work"
    work.mkdir()
    os.chdir(work)
    outside_before = set(tmp_path.iterdir())
    for name in HOSTILE_NAMES:
        name = str(tmp_path / "absolute-evil") if name == "ABSOLUTE" else name
        cases = [tuple(sweep_args(work / "s.sqlite", "--name", name, "--dry-run"))]
        study = work / "study.toml"
        escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        escaped = escaped.replace("\x00", "\\u0000")
        study.write_text(
            f'name = "{escaped}"\nproblems = ["synthetic_sphere"]\nmethods = ["sgd"]\n'
            'lrs = "0.1"\nseeds = 1\nsteps = 2\n'
        )
        cases += [("sweep", "--study", str(study), "--dry-run"), ("study", str(study), "--quiet")]
        for argv in cases:
            ok, said = _held(argv)
            escaped_files = set(tmp_path.iterdir()) - outside_before - {work}
            ok = ok and not escaped_files
            results.append((ok, f"{name!r} / lrlab {' '.join(argv[:2])}", said))
    for path in ("", ".", "/", "/dev/null", str(tmp_path), "nul\x00byte.sqlite"):
        for argv in _commands(Path(path), work / "out"):
            ok, said = _held(argv)
            results.append((ok, f"--store {path!r} / lrlab {argv[0]}", said))
    _summary("hostile names and store paths", results)


# -- a killed sweep driver ----------------------------------------------------------------------


def _descendants(root: int) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    found[pid] = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            todo.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_fuzz_killed_driver_leaves_nothing(tmp_path):
    # long runs and a fresh store for every kill: a driver that finished (or found every run
    # already stored) before the kill would leave nothing to check
    code = textwrap.dedent(
        """
        import sys
        from lrlab.bench.cli import main
        if __name__ == "__main__":
            sys.exit(main(["sweep", "--problems", "synthetic_sphere", "--methods", "sgd", "adam",
                "--lrs", "1e-3:1:4", "--steps", "100000", "--workers", "2", "--quiet",
                "--store", sys.argv[1]]))
        """
    )
    rng = random.Random(SEED)
    results = []
    for kill in range(3):
        store = str(tmp_path / f"s{kill}.sqlite")
        driver = subprocess.Popen([sys.executable, "-c", code, store], env=child_env())
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            seen = _descendants(driver.pid)
            if sum("spawn_main" in c for c in seen.values()) == 2:
                break
            time.sleep(0.2)
        time.sleep(rng.uniform(0.5, 4.0))  # a random moment of the sweep
        seen.update(_descendants(driver.pid))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in seen):
            time.sleep(0.2)
        left = [c[:80] for p, c in seen.items() if _alive(p)]
        for pid in seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        results.append((not left and bool(seen), f"kill {kill}", f"left alive: {left}"))
    shutil.rmtree(tmp_path, ignore_errors=True)
    _summary("killed sweep drivers (no process left 10 s later)", results)
