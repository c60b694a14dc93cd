"""The SQLite store: exact round trip, queries, one row per run, exports, clear errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sqlite3
import sys

import pytest

from lrlab.bench.runner import run
from lrlab.bench.spec import Goal, RunConfig, RunStatus
from lrlab.bench.store import _SCHEMA, Store, StoreError, load_records, record_to_dict
from tests.bench._tiny import use_tiny


@pytest.fixture(autouse=True)
def _tiny(monkeypatch):
    use_tiny(monkeypatch)


def _config(method="sgd", lr=0.1, seed=0, **kwargs):
    return RunConfig(problem="tiny_lsq", method=method, lr=lr, seed=seed, steps=12, **kwargs)


@pytest.fixture(scope="module")
def records():
    """One finished, one diverged (NaN-free but huge loss), one failed, one with kwargs/tags."""
    with pytest.MonkeyPatch.context() as patch:
        use_tiny(patch)
        return [
            run(_config(eval_every=4)),
            run(_config(lr=100.0)),
            run(_config(lr=0.1, method_kwargs={"momentum": -1.0})),
            run(
                _config(
                    method="adam",
                    lr=0.01,
                    seed=3,
                    method_kwargs={"betas": [0.8, 0.99]},
                    tags={"label": "adam-b0.8", "study": "t"},
                )
            ),
        ]


def test_fixture_covers_every_status(records):
    assert [r.status for r in records] == [
        RunStatus.FINISHED,
        RunStatus.DIVERGED,
        RunStatus.FAILED,
        RunStatus.FINISHED,
    ]


def test_round_trip_is_exact(tmp_path, records):
    with Store(tmp_path / "s.sqlite") as store:
        for record in records:
            store.write(record)
        loaded = {r.run_id: r for r in store.load_records()}
    assert set(loaded) == {r.run_id for r in records}
    for record in records:
        assert loaded[record.run_id] == record  # every float, bit for bit


def test_non_finite_values_round_trip(tmp_path, records):
    finished = records[0]
    steps = [dict(row) for row in finished.steps]
    steps[-1]["loss"] = math.nan
    steps[-2]["grad_l2"] = math.inf
    record = dataclasses.replace(
        finished, steps=steps, final={**finished.final, "final_loss": -math.inf}
    )
    with Store(tmp_path / "s.sqlite") as store:
        store.write(record)
        (back,) = store.load_records()
        # stored as valid JSON that SQLite itself can read
        (text,) = store._db.execute(
            "SELECT json_extract(metrics, '$.loss') FROM steps WHERE idx = ?", (len(steps) - 1,)
        ).fetchone()
    assert text == "nan"
    assert math.isnan(back.steps[-1]["loss"])
    assert back.steps[-2]["grad_l2"] == math.inf
    assert back.final["final_loss"] == -math.inf
    assert back.steps[:-2] == finished.steps[:-2]


def test_rewriting_a_run_keeps_one_copy(tmp_path, records):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        store.write(records[0])
        store.write(records[0])
        assert len(store) == 1
    db = sqlite3.connect(path)
    (steps,) = db.execute("SELECT count(*) FROM steps").fetchone()
    (evals,) = db.execute("SELECT count(*) FROM evals").fetchone()
    db.close()
    assert steps == len(records[0].steps)
    assert evals == len(records[0].evals) == 4  # steps 0, 4, 8, 12


def test_queries(tmp_path, records):
    with Store(tmp_path / "s.sqlite") as store:
        for record in records:
            store.write(record)
        assert store.count() == 4
        assert store.status_counts() == {"diverged": 1, "failed": 1, "finished": 2}
        assert store.run_ids(status="failed") == {records[2].run_id}
        assert store.run_ids(status=RunStatus.DIVERGED) == {records[1].run_id}
        assert store.run_ids(method="adam") == {records[3].run_id}
        assert store.run_ids(lr=[100.0, 0.01]) == {records[1].run_id, records[3].run_id}
        assert store.run_ids(**{"tags.study": "t"}) == {records[3].run_id}
        assert store.run_ids(label="adam-b0.8", seed=3) == {records[3].run_id}
        assert store.run_ids(problem="nothing") == set()
        (row,) = store.query(method="adam")
        assert row["final"] == records[3].final
        assert row["versions"] == records[3].versions
        assert row["config"]["method_kwargs"] == {"betas": [0.8, 0.99]}
        with pytest.raises(StoreError, match=r"cannot filter runs on 'colour'; allowed: run_id"):
            store.query(colour="red")
        assert store.delete([records[0].run_id]) == 1
        assert store.count() == 3
    assert {r.run_id for r in load_records(tmp_path / "s.sqlite", status="finished")} == {
        records[3].run_id
    }


def test_exports_and_pandas(tmp_path, records):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        for record in records:
            store.write(record)
        store.export(tmp_path / "runs.csv")
        store.export(tmp_path / "steps.parquet", table="steps")
        store.export(tmp_path / "evals.csv", table="evals")
        runs = store.dataframe("runs")
        steps = store.dataframe("steps", status="finished")

    with (tmp_path / "runs.csv").open() as handle:
        rows = {row["run_id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {r.run_id for r in records}
    finished = rows[records[0].run_id]
    assert float(finished["final.distance_to_optimum"]) == records[0].final["distance_to_optimum"]
    assert finished["status"] == "finished" and finished["method"] == "sgd"
    assert rows[records[2].run_id]["error"].startswith("ValueError: momentum")
    assert json.loads(rows[records[3].run_id]["method_kwargs"]) == {"betas": [0.8, 0.99]}

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "steps.parquet").to_pylist()
    assert len(table) == sum(len(r.steps) for r in records)
    first = next(r for r in table if r["run_id"] == records[0].run_id and r["step"] == 1)
    assert first["loss"] == records[0].steps[0]["loss"]
    assert first["stat.nonfinite_steps"] == 0.0
    adam_rows = [r for r in table if r["run_id"] == records[3].run_id]
    assert all(r["label"] == "adam-b0.8" for r in adam_rows)

    assert len(runs) == 4
    assert set(runs["status"]) == {"finished", "diverged", "failed"}
    assert runs.set_index("run_id").loc[records[1].run_id, "diverged_at_step"] == (
        records[1].diverged_at_step
    )
    assert len(steps) == len(records[0].steps) + len(records[3].steps)
    sgd = steps[steps["run_id"] == records[0].run_id]
    assert sgd["grad_l2"].tolist() == [row["grad_l2"] for row in records[0].steps]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, records, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with Store(tmp_path / "s.sqlite") as store:
        store.write(records[0])
        with pytest.raises(StoreError, match=r"Parquet export needs pyarrow: pip install"):
            store.export(tmp_path / "x.parquet")
        with pytest.raises(StoreError, match=r"unknown export format 'xlsx'; allowed: csv"):
            store.export(tmp_path / "x.xlsx")
        with pytest.raises(StoreError, match=r"unknown table 'metrics'; allowed: runs, steps"):
            store.table("metrics")


def test_record_to_dict_is_strict_json(records):
    text = json.dumps(record_to_dict(records[1]), allow_nan=False)
    data = json.loads(text)
    assert data["status"] == "diverged"
    assert data["config"] == records[1].config.to_dict()
    assert len(data["steps"]) == records[1].diverged_at_step


def test_store_errors(tmp_path):
    with pytest.raises(StoreError, match=r"does not exist"):
        Store(tmp_path / "missing.sqlite", readonly=True)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"is not an lrlab store"):
        Store(garbage)
    old = tmp_path / "old.sqlite"
    Store(old).close()
    db = sqlite3.connect(old)
    db.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"has schema version '0'; this lrlab reads version '1'"):
        Store(old)


def test_readonly_store_reads_while_a_writer_is_open(tmp_path, records):
    path = tmp_path / "s.sqlite"
    with Store(path) as writer:
        writer.write(records[0])
        with Store(path, readonly=True) as reader:
            assert reader.run_ids() == {records[0].run_id}
            writer.write(records[3])
            assert reader.count() == 2
            with pytest.raises(StoreError, match="open read-only"):
                reader.write(records[1])


def test_metric_directions_round_trip(tmp_path, records):
    finished = records[0]
    assert finished.metric == "distance_to_optimum"
    assert finished.goals == {
        "distance_to_optimum": Goal.MINIMIZE,
        "train_loss": Goal.MINIMIZE,
        "final_loss": Goal.MINIMIZE,
    }
    with Store(tmp_path / "s.sqlite") as store:
        store.write(finished)
        (back,) = store.load_records()
        (row,) = store.table("runs")
    assert back.metric == finished.metric and back.goals == finished.goals
    assert all(isinstance(goal, Goal) for goal in back.goals.values())
    assert row["metric"] == "distance_to_optimum" and row["goals.train_loss"] == "min"
    assert record_to_dict(finished)["goals"]["distance_to_optimum"] == "min"


def test_a_store_written_before_directions_gains_them(tmp_path, records):
    new = tmp_path / "new.sqlite"
    with Store(new) as store:
        store.write(records[0])
    # a store as schema version 1 shipped it: `runs` without the metric and goals columns
    path = tmp_path / "old.sqlite"
    old_schema = "".join(
        line for line in _SCHEMA.splitlines(keepends=True) if "metric TEXT" not in line
    ).replace(
        "versions TEXT NOT NULL,\n    goals TEXT NOT NULL DEFAULT '{}'", "versions TEXT NOT NULL"
    )
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("ATTACH DATABASE ? AS new", (str(new),))
    columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]
    assert "goals" not in columns and "metric" not in columns
    db.execute(f"INSERT INTO runs SELECT {', '.join(columns)} FROM new.runs")
    for table in ("steps", "evals"):
        db.execute(f"INSERT INTO {table} SELECT * FROM new.{table}")
    db.commit()
    db.close()
    with Store(path, readonly=True) as store:
        (old,) = store.load_records()
    assert old.metric is None and old.goals == {} and old.goal_of("train_loss") is None
    assert old.steps == records[0].steps
    with Store(path) as store:  # writable: the columns are added in place
        store.write(records[3])
        loaded = {r.run_id: r for r in store.load_records()}
    assert loaded[records[3].run_id].goals == records[3].goals
    assert loaded[records[0].run_id].goals == {}
