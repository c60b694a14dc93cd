"""The store is recognised as lrlab's; other files are refused untouched; full and unusable
stores give one clear error and never cost a computed run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

import lrlab.bench.runner
from lrlab.bench.store import APPLICATION_ID, SCHEMA_VERSION, Store, StoreError
from tests.reliability._lab import (
    child_env,
    clean_failure,
    cli,
    make_store,
    record,
    sweep_args,
)

# the tables of a store written by lrlab before it stamped an application id
_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, problem TEXT NOT NULL, method TEXT NOT NULL, label TEXT NOT NULL,
    lr REAL, seed INTEGER NOT NULL, steps INTEGER NOT NULL, status TEXT NOT NULL,
    diverged_at_step INTEGER, error TEXT, wall_time_s REAL NOT NULL, stored_at TEXT NOT NULL,
    config TEXT NOT NULL, final TEXT NOT NULL, versions TEXT NOT NULL
);
CREATE TABLE steps (run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)) WITHOUT ROWID;
CREATE TABLE evals (run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)) WITHOUT ROWID;
"""


def _foreign(path, *, application_id=0, wal=False):
    """Another application's database: its own table, maybe its own id, maybe WAL."""
    db = sqlite3.connect(path)
    if application_id:
        db.execute(f"PRAGMA application_id = {application_id}")
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE users (name TEXT, email TEXT)")
    db.execute("INSERT INTO users VALUES ('ada', 'ada@example.org')")
    db.commit()
    db.close()
    return path


def _application_id(path) -> int:
    return int.from_bytes(path.read_bytes()[68:72], "big")


@pytest.mark.parametrize(
    ("application_id", "wal"), [(0, False), (0, True), (0x12345678, False), (0x12345678, True)]
)
def test_another_applications_database_is_refused_untouched(tmp_path, application_id, wal):
    path = _foreign(tmp_path / "app.db", application_id=application_id, wal=wal)
    before = path.read_bytes()
    files_before = sorted(p.name for p in tmp_path.iterdir())
    for readonly in (False, True):
        with pytest.raises(StoreError, match=r"app\.db'? is not an lrlab store"):
            Store(path, readonly=readonly)
    code, _, err = cli(*sweep_args(path))
    assert clean_failure(code, err, "sweep") and "not an lrlab store" in err, err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # no -wal / -shm either


def test_an_empty_database_of_another_application_is_refused(tmp_path):
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id = 7")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another application's SQLite database"):
        Store(path)
    assert path.read_bytes() == before


def test_a_new_store_carries_the_application_id_and_the_marker(tmp_path):
    path = make_store(tmp_path / "s.sqlite", runs=1)
    assert _application_id(path) == APPLICATION_ID
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert dict(db.execute("SELECT key, value FROM meta")) == {
        "schema_version": SCHEMA_VERSION,
        "application": "lrlab",
    }
    db.close()


def test_a_store_of_an_earlier_lrlab_opens_and_gets_the_id(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    db.commit()
    db.close()
    assert _application_id(path) == 0
    with Store(path, readonly=True) as store:  # a reader does not write
        assert store.count() == 0
    assert _application_id(path) == 0
    one = record()
    with Store(path) as store:
        store.write(one)
    with Store(path) as store:
        assert store.run_ids() == {one.run_id}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()


@pytest.mark.parametrize(
    "content",
    [b"", b"hello", b"not a database at all " * 50, b"SQLite format 3\x00" + b"\x00" * 30],
)
def test_files_that_are_not_sqlite(tmp_path, content):
    path = tmp_path / "x.sqlite"
    path.write_bytes(content)
    if not content:  # an empty file is a new store
        with Store(path) as store:
            assert store.count() == 0
        return
    with pytest.raises(StoreError, match=r"x\.sqlite' is not an lrlab store"):
        Store(path)
    assert path.read_bytes() == content


def test_disk_full_reports_the_real_cause(tmp_path):
    path = make_store(tmp_path / "s.sqlite", runs=1)
    big = record(seed=5, steps=400)
    with Store(path) as store:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        # the file cannot grow: the next big record fills the "disk"
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreError, match="database or disk is full") as caught:
            store.write(big)
        assert "cannot rollback" not in str(caught.value)
        assert "s.sqlite" in str(caught.value)
        assert store.count() == 1  # nothing half-written; the store still reads
        store._db.execute("PRAGMA max_page_count = 1073741823")
        store.write(big)  # and writes again once there is room
        assert store.count() == 2


def test_run_checks_the_store_before_computing(tmp_path, monkeypatch):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"garbage" * 200)
    computed = []
    real_run = lrlab.bench.runner.run
    monkeypatch.setattr(
        lrlab.bench.runner, "run", lambda config: computed.append(config) or real_run(config)
    )
    argv = ["run", "--problem", "synthetic_sphere", "--method", "sgd", "--steps", "2"]
    code, _, err = cli(*argv, "--store", str(junk))
    assert clean_failure(code, err, "run") and "not an lrlab store" in err, err
    assert computed == []  # refused before the run was computed
    code, _, err = cli(*argv, "--store", str(tmp_path / "good.sqlite"))
    assert code == 0 and len(computed) == 1
    with Store(tmp_path / "good.sqlite", readonly=True) as store:
        assert store.count() == 1


def test_a_write_that_fails_after_computing_prints_the_record(tmp_path, monkeypatch):
    path = make_store(tmp_path / "s.sqlite", runs=1)

    def full(self, record):
        raise StoreError(f"cannot write to store {str(self.path)!r}: database or disk is full")

    monkeypatch.setattr(Store, "write", full)
    argv = ["run", "--problem", "synthetic_sphere", "--method", "sgd", "--steps", "2"]
    code, out, err = cli(*argv, "--store", str(path))
    assert clean_failure(code, err, "run") and "database or disk is full" in err
    assert '"run_id"' in out and '"steps"' in out  # the computed record is not lost


@pytest.mark.slow
def test_the_console_command_prints_one_line_not_a_traceback(tmp_path):
    """The real entry point (``python -m lrlab``) on a damaged store."""
    good = make_store(tmp_path / "good.sqlite", runs=2)
    damaged = tmp_path / "damaged.sqlite"
    data = bytearray(good.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page : 2 * page] = bytes(range(256)) * (page // 256)  # page 2: the runs table's root
    damaged.write_bytes(bytes(data))
    for store in (damaged,):  # (a foreign database: the same path, tested in-process above)
        done = subprocess.run(
            [sys.executable, "-m", "lrlab", "report", "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=child_env(),
            cwd=tmp_path,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("lrlab report: error: argument --store: ") and store.name in line
