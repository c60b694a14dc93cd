"""The results store: one SQLite file (stdlib ``sqlite3``, WAL journal), written by one process.

Tables::

    runs   run_id PRIMARY KEY (= RunConfig.run_id, the SHA-256 of the canonical config),
           problem, method, label, lr, seed, steps, status, diverged_at_step, error,
           wall_time_s, stored_at, config (JSON), final (JSON), versions (JSON),
           metric (the problem's headline metric), goals (JSON: metric -> "min"/"max")
    steps  (run_id, idx) -> step, metrics (JSON object: one RunRecord.steps row)
    evals  (run_id, idx) -> step, metrics (JSON object: one RunRecord.evals row)
    meta   key -> value (schema_version)

Each record is written in ONE transaction (its runs row and all its step and eval rows), so a
process killed at any point, SIGKILL included, leaves either the whole run or nothing of it; a
resumed sweep skips the ``run_id``\\ s present and loses or duplicates none. Only the sweep's
driver writes; any number of readers (reports) may read at the same time (WAL).

A store is recognised before anything is written to it: its SQLite header carries the
application id :data:`APPLICATION_ID` and ``meta`` the marker ``application = lrlab``. A store of
an earlier lrlab (the same tables, no id) opens and gets both; any other file (another
application's database, a non-SQLite file) is refused with its bytes untouched. Opening checks
the pages (``PRAGMA quick_check``), so a damaged store is reported at once, as one
:class:`StoreError` naming the file, and every later SQLite failure (a full disk included: "database
or disk is full") is a :class:`StoreError` too.

Metric rows are JSON objects; non-finite floats are written as the strings ``"nan"``, ``"inf"``
and ``"-inf"`` (valid JSON, readable with SQLite's ``json_extract``) and read back as floats, so
a record read back equals the record written, float for float. Config kwargs come back as lists
where they were tuples (same ``run_id``).

Example:
    >>> with Store("results/smoke.sqlite") as store:
    ...     records = store.load_records(problem="synthetic_sphere", status="finished")
    ...     frame = store.dataframe("steps")  # pandas
    ...     store.export("steps.parquet", table="steps")
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from lrlab.bench.spec import Goal, RunConfig, RunRecord, RunStatus, run_label

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "Store",
    "StoreError",
    "load_records",
    "record_to_dict",
]

SCHEMA_VERSION = "1"
TABLES = ("runs", "steps", "evals")
APPLICATION_ID = 0x4C524C42
"""SQLite ``application_id`` of an lrlab store (the bytes ``LRLB``, offset 68 of the header)."""
APPLICATION_MARKER = "lrlab"
"""``meta.application`` of an lrlab store (the schema marker beside the application id)."""
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    problem TEXT NOT NULL,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    lr REAL,
    seed INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    status TEXT NOT NULL,
    diverged_at_step INTEGER,
    error TEXT,
    wall_time_s REAL NOT NULL,
    stored_at TEXT NOT NULL,
    config TEXT NOT NULL,
    final TEXT NOT NULL,
    versions TEXT NOT NULL,
    metric TEXT,
    goals TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_by_problem ON runs (problem, method, lr, seed);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    step INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    step INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
"""

# columns of `runs` that `query` / `load_records` filter on directly
_FILTER_COLUMNS = ("run_id", "problem", "method", "label", "lr", "seed", "steps", "status")
_RUN_COLUMNS = (
    "run_id",
    "problem",
    "method",
    "label",
    "lr",
    "seed",
    "steps",
    "status",
    "diverged_at_step",
    "error",
    "wall_time_s",
    "stored_at",
    "config",
    "final",
    "versions",
)
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class StoreError(RuntimeError):
    """A store that cannot be used: not an lrlab store, damaged, full, unwritable, another schema
    version, a bad filter or a missing optional package. The message names the file."""


def _reason(error: BaseException) -> str:
    """The cause of an SQLite or OS error in words (no exception class names)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__  # one line


def _recognise(path: Path) -> bool:
    """Check, without writing anything, that ``path`` may be opened as a store: missing or
    empty (a new store: returns True), an lrlab store (its application id, or an earlier
    lrlab's tables with no id), or else raise :class:`StoreError`. Another application's SQLite
    database is refused untouched."""
    name = repr(str(path))
    try:
        with path.open("rb") as handle:
            header = handle.read(100)
    except FileNotFoundError:
        return True
    except OSError as error:
        raise StoreError(f"cannot read store {name}: {_reason(error)}") from None
    if not header:
        return True
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"{name} is not an lrlab store (not an SQLite database)")
    application_id = int.from_bytes(header[68:72], "big")
    if application_id == APPLICATION_ID:
        return False
    if application_id != 0:
        raise StoreError(
            f"{name} is not an lrlab store: it is another application's SQLite database "
            f"(application_id 0x{application_id:08x}); refusing to touch it"
        )
    # no id: an empty database, a store of an earlier lrlab, or someone else's database. Look
    # at its tables read-only; a WAL database with no WAL file is opened immutable, so not even
    # the -shm/-wal side files get created.
    wal_mode = header[18] == 2 and header[19] == 2
    immutable = "&immutable=1" if wal_mode and not Path(f"{path}-wal").exists() else ""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{immutable}", uri=True)
        try:
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            marked = (
                "meta" in tables
                and db.execute("SELECT count(*) FROM meta WHERE key = 'schema_version'").fetchone()[
                    0
                ]
            )
        finally:
            db.close()
    except (sqlite3.DatabaseError, ValueError) as error:  # ValueError: text that is not UTF-8
        raise StoreError(f"{name} is not an lrlab store or is damaged ({_reason(error)})") from None
    if not tables:
        return True
    if tables == {"meta", *TABLES} and marked:
        return False
    raise StoreError(
        f"{name} is not an lrlab store: it is an SQLite database with other tables "
        f"({', '.join(sorted(tables)[:8])}{', ...' if len(tables) > 8 else ''}); refusing to "
        "touch it"
    )


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _translated(action: str) -> Callable[[_Method], _Method]:
    """Turn the SQLite and decoding errors of a :class:`Store` method into one
    :class:`StoreError` naming the file and the cause ("database or disk is full", "database
    disk image is malformed", ...)."""

    def wrap(method: _Method) -> _Method:
        @functools.wraps(method)
        def translated(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as error:
                cause = _reason(error)
                if "readonly" in cause and self.readonly:
                    cause = "the store is open read-only"
                raise StoreError(f"cannot {action} store {str(self.path)!r}: {cause}") from error
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                if action == "write to":
                    raise  # the record given, not the store, is at fault
                raise StoreError(
                    f"cannot {action} store {str(self.path)!r}: a stored run is damaged "
                    f"({type(error).__name__}: {error})"
                ) from error

        return translated  # type: ignore[return-value]

    return wrap


def _encode_metrics(row: Mapping[str, Any]) -> str:
    return json.dumps(_finite_json(row), separators=(",", ":"))


def _decode_metrics(text: str) -> dict[str, Any]:
    return {
        k: _NONFINITE[v] if isinstance(v, str) and v in _NONFINITE else v
        for k, v in json.loads(text).items()
    }


def _finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def record_to_dict(record: RunRecord) -> dict[str, Any]:
    """A record as strict-JSON-ready data (non-finite metric values as ``"nan"``/``"inf"``)."""
    return {
        "run_id": record.run_id,
        "config": record.config.to_dict(),
        "status": record.status.value,
        "diverged_at_step": record.diverged_at_step,
        "error": record.error,
        "wall_time_s": record.wall_time_s,
        "versions": dict(record.versions),
        "final": _finite_json(record.final),
        "steps": _finite_json(record.steps),
        "evals": _finite_json(record.evals),
        "metric": record.metric,
        "goals": {k: Goal(v).value for k, v in record.goals.items()},
    }


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done it: after "database or
    disk is full" it has, and a second ROLLBACK would replace the real cause by "cannot
    rollback - no transaction is active"."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):  # the error being raised says what went wrong
            db.execute("ROLLBACK")


# columns added to `runs` after schema version 1 shipped: added in place to an older store
_ADDED_COLUMNS = {"metric": "TEXT", "goals": "TEXT NOT NULL DEFAULT '{}'"}


class Store:
    """A SQLite results store at ``path`` (created with its parent directories if missing).

    Args:
        path: the database file (``.sqlite``).
        readonly: open without creating or writing (a report).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        name = repr(str(self.path))
        if "\x00" in str(self.path):
            raise StoreError(f"store {name}: a path cannot contain a NUL character")
        if self.path.is_dir():
            raise StoreError(f"store {name} is a directory, not a store file")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"store {name} is not a regular file")
        if readonly and not self.path.is_file():
            raise StoreError(f"store {name} does not exist")
        # Recognise the file BEFORE connecting for writing: opening another application's
        # database read-write (even the WAL pragma) would already change its bytes.
        new = _recognise(self.path)
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open store {name}: {_reason(error)}") from None
        try:
            found = self._open(readonly, new)
        except (sqlite3.DatabaseError, ValueError) as error:  # ValueError: text not UTF-8
            self._db.close()
            raise StoreError(
                f"{name} is not an lrlab store or is damaged ({_reason(error)})"
            ) from None
        if found != SCHEMA_VERSION:
            self._db.close()
            raise StoreError(
                f"store {name} has schema version {found!r}; this lrlab reads "
                f"version {SCHEMA_VERSION!r}"
            )

    def _open(self, readonly: bool, new: bool) -> str | None:
        """Set the pragmas, create the tables if writable, check the pages; returns the schema
        version found."""
        if not readonly:
            if new:  # in the file header before WAL mode, so a reader sees it at once
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            # WAL: readers never block the writer; synchronous=NORMAL keeps every committed
            # transaction across a killed process (a power cut may lose the last few).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # a damaged page is found here, with one clear error, not half-way through a sweep or
        # after a run was computed (a linear scan: well under a second for stores of 100 MB)
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            found = [line for text in problems for line in str(text).splitlines()]
            details = "; ".join(line for line in found if not line.startswith("***"))
            raise sqlite3.DatabaseError(f"database disk image is malformed: {details}")
        if not readonly:
            self._db.executescript(_SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            self._db.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (("schema_version", SCHEMA_VERSION), ("application", APPLICATION_MARKER)),
            )
            # a store written by an lrlab without the id gets it (recognised by its tables)
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        found = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return found[0] if found else None

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    @_translated("write to")
    def write(self, record: RunRecord) -> None:
        """Store one finished run (replacing a stored run with the same id), in one transaction."""
        config = record.config
        row = (
            record.run_id,
            config.problem,
            config.method,
            run_label(config),
            config.lr,
            config.seed,
            config.steps,
            record.status.value,
            record.diverged_at_step,
            record.error,
            record.wall_time_s,
            datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            json.dumps(config.to_dict(), separators=(",", ":")),
            _encode_metrics(record.final),
            json.dumps(record.versions, separators=(",", ":")),
            record.metric,
            json.dumps({k: Goal(v).value for k, v in record.goals.items()}, separators=(",", ":")),
        )
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # the cascade removes an older version's step and eval rows
            db.execute("DELETE FROM runs WHERE run_id = ?", (record.run_id,))
            columns = (*_RUN_COLUMNS, *_ADDED_COLUMNS)
            db.execute(
                f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(row))})",
                row,
            )
            for table, rows in (("steps", record.steps), ("evals", record.evals)):
                db.executemany(
                    f"INSERT INTO {table} (run_id, idx, step, metrics) VALUES (?, ?, ?, ?)",
                    (
                        (record.run_id, i, int(r.get("step", i)), _encode_metrics(r))
                        for i, r in enumerate(rows)
                    ),
                )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    @_translated("delete from")
    def delete(self, run_ids: Iterable[str]) -> int:
        """Remove runs (with their step and eval rows); returns how many were removed."""
        ids = list(run_ids)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            removed = self._db.executemany("DELETE FROM runs WHERE run_id = ?", ((i,) for i in ids))
            self._db.execute("COMMIT")
        except BaseException:
            _rollback(self._db)
            raise
        return removed.rowcount

    # -- reading ----------------------------------------------------------------------------

    def _where(self, filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """SQL for ``column = value`` (or ``IN`` for a list) and ``tags.NAME = value`` filters."""
        clauses: list[str] = []
        values: list[Any] = []
        for key, value in filters.items():
            if key.startswith("tags."):
                column = "json_extract(config, ?)"
                prefix = [f"$.tags.{key[len('tags.') :]}"]
            elif key in _FILTER_COLUMNS:
                column, prefix = key, []
            else:
                allowed = ", ".join((*_FILTER_COLUMNS, "tags.<name>"))
                raise StoreError(f"cannot filter runs on {key!r}; allowed: {allowed}")
            options = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
            options = [v.value if isinstance(v, RunStatus) else v for v in options]
            parts = []
            non_null = [v for v in options if v is not None]
            if non_null:
                parts.append(f"{column} IN ({', '.join('?' * len(non_null))})")
                values += [*prefix, *non_null]
            if len(non_null) < len(options):
                parts.append(f"{column} IS NULL")
                values += prefix
            clauses.append("(" + " OR ".join(parts) + ")" if parts else "0")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), values

    @_translated("read")
    def run_ids(self, **filters: Any) -> set[str]:
        """The ids of the stored runs that match ``filters`` (see :meth:`query`)."""
        where, values = self._where(filters)
        return {r[0] for r in self._db.execute(f"SELECT run_id FROM runs{where}", values)}

    @_translated("read")
    def count(self, **filters: Any) -> int:
        where, values = self._where(filters)
        return int(self._db.execute(f"SELECT count(*) FROM runs{where}", values).fetchone()[0])

    @_translated("read")
    def status_counts(self, **filters: Any) -> dict[str, int]:
        """``{status: number of runs}`` over the runs matching ``filters``."""
        where, values = self._where(filters)
        sql = f"SELECT status, count(*) FROM runs{where} GROUP BY status ORDER BY status"
        return dict(self._db.execute(sql, values))

    @_translated("read")
    def query(self, **filters: Any) -> list[dict[str, Any]]:
        """Summary rows of the runs matching ``filters``, ordered by problem, method, lr, seed.

        Filters: ``problem``, ``method``, ``label``, ``lr``, ``seed``, ``steps``, ``status``,
        ``run_id`` (a value, or a list of accepted values) and ``tags.<name>``. Each row holds
        the ``runs`` columns with ``config``, ``final`` and ``versions`` decoded.
        """
        where, values = self._where(filters)
        cursor = self._db.execute(
            f"SELECT * FROM runs{where} ORDER BY problem, method, label, lr, seed, run_id", values
        )
        names = [d[0] for d in cursor.description]
        rows = []
        for raw in cursor:
            row = dict(zip(names, raw, strict=True))
            row["config"] = json.loads(row["config"])
            row["final"] = _decode_metrics(row["final"])
            row["versions"] = json.loads(row["versions"])
            row["goals"] = json.loads(row.get("goals") or "{}")  # absent in an older store
            row.setdefault("metric", None)
            rows.append(row)
        return rows

    def _rows(self, table: str, run_id: str) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            f"SELECT metrics FROM {table} WHERE run_id = ? ORDER BY idx", (run_id,)
        )
        return [_decode_metrics(text) for (text,) in cursor]

    @_translated("read")
    def load_records(self, **filters: Any) -> list[RunRecord]:
        """The full :class:`RunRecord` of every run matching ``filters`` (see :meth:`query`)."""
        records = []
        for row in self.query(**filters):
            records.append(
                RunRecord(
                    run_id=row["run_id"],
                    config=RunConfig.from_dict(row["config"]),
                    status=RunStatus(row["status"]),
                    steps=self._rows("steps", row["run_id"]),
                    evals=self._rows("evals", row["run_id"]),
                    final=row["final"],
                    diverged_at_step=row["diverged_at_step"],
                    error=row["error"],
                    wall_time_s=row["wall_time_s"],
                    versions=row["versions"],
                    metric=row["metric"],
                    goals={k: Goal(v) for k, v in row["goals"].items()},
                )
            )
        return records

    # -- tables for analysis ----------------------------------------------------------------

    @_translated("read")
    def table(self, name: str, **filters: Any) -> list[dict[str, Any]]:
        """One flat row per run (``runs``), per step (``steps``) or per evaluation (``evals``).

        ``runs`` rows: the config's fields, ``tags.*``, kwargs as JSON text, status, timing,
        ``final.*`` and ``versions.*``. ``steps`` / ``evals`` rows: ``run_id``, ``problem``,
        ``method``, ``label``, ``lr``, ``seed`` and the row's metrics. Every row has every column
        of the table (None where a run has no value).
        """
        if name not in TABLES:
            raise StoreError(f"unknown table {name!r}; allowed: {', '.join(TABLES)}")
        runs = self.query(**filters)
        rows: list[dict[str, Any]] = []
        if name == "runs":
            for run in runs:
                config = run["config"]
                row: dict[str, Any] = {
                    "run_id": run["run_id"],
                    "problem": run["problem"],
                    "method": run["method"],
                    "label": run["label"],
                    "lr": run["lr"],
                    "seed": run["seed"],
                    "steps": run["steps"],
                    "batch_size": config.get("batch_size"),
                    "schedule": config.get("schedule"),
                    "eval_every": config.get("eval_every"),
                    "divergence_threshold": config.get("divergence_threshold"),
                    "problem_kwargs": json.dumps(config.get("problem_kwargs", {}), sort_keys=True),
                    "method_kwargs": json.dumps(config.get("method_kwargs", {}), sort_keys=True),
                    "schedule_kwargs": json.dumps(
                        config.get("schedule_kwargs", {}), sort_keys=True
                    ),
                    "status": run["status"],
                    "diverged_at_step": run["diverged_at_step"],
                    "error": (run["error"] or "").split("\n", 1)[0] or None,
                    "wall_time_s": run["wall_time_s"],
                    "stored_at": run["stored_at"],
                }
                row.update({f"tags.{k}": v for k, v in config.get("tags", {}).items()})
                row.update({f"final.{k}": v for k, v in run["final"].items()})
                row.update({f"versions.{k}": v for k, v in run["versions"].items()})
                row["metric"] = run["metric"]
                row.update({f"goals.{k}": v for k, v in run["goals"].items()})
                rows.append(row)
        else:
            for run in runs:
                head = {k: run[k] for k in ("run_id", "problem", "method", "label", "lr", "seed")}
                rows.extend({**head, **metrics} for metrics in self._rows(name, run["run_id"]))
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return [{column: row.get(column) for column in columns} for row in rows]

    def dataframe(self, name: str = "runs", **filters: Any) -> Any:
        """:meth:`table` as a ``pandas.DataFrame`` (needs pandas: ``pip install lrlab[bench]``)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise StoreError(
                "loading into pandas needs pandas: pip install 'lrlab[bench]'"
            ) from error
        return pd.DataFrame.from_records(self.table(name, **filters))

    @_translated("export from")
    def export(
        self,
        path: str | Path,
        *,
        table: str = "runs",
        file_format: str | None = None,
        **filters: Any,
    ) -> Path:
        """Write :meth:`table` to ``path`` as CSV or Parquet (``file_format`` or the suffix).

        Parquet needs pyarrow (``pip install pyarrow``).
        """
        path = Path(path)
        fmt = (file_format or path.suffix.lstrip(".")).lower()
        if fmt not in ("csv", "parquet"):
            raise StoreError(f"unknown export format {fmt!r}; allowed: csv, parquet")
        rows = self.table(table, **filters)
        if fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as error:
                raise StoreError(
                    "Parquet export needs pyarrow: pip install pyarrow (or export to .csv)"
                ) from error
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), path)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            columns = list(rows[0]) if rows else []
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.load_records())

    def __len__(self) -> int:
        return self.count()


def load_records(path: str | Path, **filters: Any) -> list[RunRecord]:
    """The records stored at ``path`` that match ``filters`` (see :meth:`Store.query`)."""
    with Store(path, readonly=True) as store:
        return store.load_records(**filters)
