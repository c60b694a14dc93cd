"""The ``lrlab`` command line: listing, one run, sweeps, report, export, and bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import pytest

import lrlab.optim as lo
from lrlab.bench.cli import main
from lrlab.bench.problems import get_problem, problem_names
from lrlab.bench.runner import run
from lrlab.bench.store import Store, record_to_dict
from lrlab.bench.sweep import make_config


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default stores go to ./results: keep them out of the checkout


def _run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- bad input: exit code 2 and a message naming the argument and what is allowed ---------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["sweep", "--problems", "synthetic_sphere", "--methods", "sdg"],
            r"argument --methods: unknown method 'sdg'; closest: sgd.*Valid methods: .*clara-sgd",
        ),
        (
            ["sweep", "--problems", "synthetic_sphre", "--methods", "sgd"],
            r"argument --problems: unknown problem 'synthetic_sphre'.*Valid problems: ",
        ),
        (["sweep", "--preset", "smoky"], r"argument --preset: unknown preset 'smoky'; available"),
        (["sweep", "--study", "/nonexistent.toml"], r"argument --study: study file .* not exist"),
        (["sweep", "--methods", "sgd"], r"arguments are required without --preset or --study: "),
        (
            ["sweep", "--preset", "smoke", "--lrs", "1e-6:1"],
            r"argument --lrs: bad learning-rate grid '1e-6:1': use LOW:HIGH:COUNT",
        ),
        (["sweep", "--preset", "smoke", "--seeds", "0"], r"argument --seeds: bad seeds '0'"),
        (["sweep", "--preset", "smoke", "--workers", "0"], r"argument --workers: expected an int"),
        (
            ["sweep", "--preset", "smoke", "--backend", "spark"],
            r"argument --backend: invalid choice: 'spark' \(choose from '?local'?, '?ray'?\)",
        ),
        (
            ["sweep", "--preset", "smoke", "--ray-address", "auto"],
            r"argument --ray-address: only allowed with --backend ray",
        ),
        (["sweep", "--preset", "smoke", "--study", "x.toml"], r"not allowed with argument"),
        (
            ["sweep", "--preset", "smoke", "--backend", "ray", "--ray-address", "nowhere"],
            r"argument --ray-address: bad Ray address 'nowhere': use auto, HOST:PORT",
        ),
        (
            ["sweep", "--preset", "smoke", "--backend", "ray", "--ray-address", "127.0.0.1:1"],
            r"argument --ray-address: no Ray cluster answers at '127.0.0.1:1'",
        ),
        (["run", "--problem", "synthetic_sphere"], r"the following arguments are required: --me"),
        (
            ["run", "--problem", "synthetic_sphere", "--method", "sgd", "--lr", "-3"],
            r"argument --lr: expected a positive number or 'none'",
        ),
        (
            ["run", "--problem", "synthetic_sphere", "--method", "sgd", "--method-kwargs", "x"],
            r"argument --method-kwargs: expected NAME=VALUE, got 'x'",
        ),
        (
            ["run", "--problem", "nope", "--method", "sgd"],
            r"argument --problem: unknown problem 'nope'",
        ),
        (
            ["run", "--problem", "synthetic_sphere", "--method", "sgd", "--schedule", "saw"],
            r"argument --schedule: unknown schedule 'saw'; allowed: .*linear-decay",
        ),
        (["report", "--store", "/nonexistent.sqlite"], r"argument --store: no store at"),
        (["list", "colours"], r"argument what: invalid choice: 'colours'"),
        (
            ["sweep", "--preset", "smoke", "--import", "no_such_module_xyz"],
            r"argument --import: cannot import 'no_such_module_xyz': No module named",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_argument(capsys, argv, message):
    code, out, err = _run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    import re

    assert re.search(message, err), err


def test_a_bad_store_file_is_a_usage_error(capsys, tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not sqlite" * 100)
    code, _, err = _run_cli(capsys, "report", "--store", str(junk))
    assert code == 2 and "is not an lrlab store" in err
    code, _, err = _run_cli(capsys, "export", "--store", str(junk), "--out", "x.csv")
    assert code == 2 and "is not an lrlab store" in err


# -- listing ------------------------------------------------------------------------------------


def test_list_methods_problems_presets(capsys):
    code, out, _ = _run_cli(capsys, "list")
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()} == set(lo.names())
    code, out, _ = _run_cli(capsys, "list", "problems", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == problem_names()
    assert {r["kind"] for r in rows} == {"synthetic", "logistic", "vision", "language"}
    code, out, _ = _run_cli(capsys, "list", "presets")
    from lrlab.bench.presets import preset_names

    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == preset_names()
    assert "smoke" in preset_names()


# -- one run ------------------------------------------------------------------------------------


def test_run_prints_the_record_as_json_and_stores_it(capsys, tmp_path):
    store = tmp_path / "one.sqlite"
    code, out, _ = _run_cli(
        capsys,
        "run",
        "--problem", "synthetic_noisy_sphere", "--method", "clara-sgd", "--lr", "0.05",
        "--steps", "12", "--seed", "2", "--method-kwargs", "d=0.1", "unit_step=true",
        "--eval-every", "6", "--json", "--store", str(store),
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    config = make_config(
        problem="synthetic_noisy_sphere",
        method="clara-sgd",
        lr=0.05,
        seed=2,
        steps=12,
        method_kwargs={"d": 0.1, "unit_step": True},
        eval_every=6,
    )
    assert config.tags == {"label": "clara-sgd(d=0.1,unit_step=True)"}
    expected = record_to_dict(run(config))
    assert data["run_id"] == config.run_id
    assert {**data, "wall_time_s": 0} == {**expected, "wall_time_s": 0}
    with Store(store) as reader:
        (stored,) = reader.load_records()
    assert stored.run_id == config.run_id


def test_run_summary_and_a_failed_run_exit_code(capsys):
    code, out, _ = _run_cli(
        capsys, "run", "--problem", "synthetic_sphere", "--method", "sgd", "--lr", "0.1",
        "--steps", "5",
    )  # fmt: skip
    assert code == 0
    assert out.startswith("synthetic_sphere / sgd / lr=0.1 / seed=0: finished after 5 of 5")
    assert "distance_to_optimum" in out
    code, out, _ = _run_cli(
        capsys, "run", "--problem", "synthetic_sphere", "--method", "sgd", "--steps", "5",
        "--method-kwargs", "momentum=-1",
    )  # fmt: skip
    assert code == 1
    assert "failed after 0 of 5" in out and "error: ValueError: momentum must be" in out


# -- sweep, report, export ----------------------------------------------------------------------


def test_sweep_report_and_export(capsys, tmp_path):
    store = tmp_path / "s.sqlite"
    argv = [
        "sweep", "--problems", "synthetic_rosenbrock", "--methods", "sgd", "adam",
        "--lrs", "1e-3,1", "--seeds", "2", "--steps", "20", "--store", str(store),
        "--workers", "2",
    ]  # fmt: skip
    code, out, err = _run_cli(capsys, *argv)
    assert code == 0, err
    assert "8 runs: 0 already in" in err and "8/8 (100%)" in err
    assert f"Results: {store} (" in out
    code, out, err = _run_cli(capsys, *argv, "--quiet")
    assert code == 0 and err == ""
    assert "8 runs, 8 already stored; ran 0" in out

    code, out, _ = _run_cli(capsys, "report", "--store", str(store))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("synthetic_rosenbrock: final distance_to_optimum (min), mean")
    assert lines[1].split() == ["method", "lr=0.001", "lr=1"]
    with Store(store) as reader:
        records = reader.load_records(method="adam", lr=0.001)
    mean = sum(r.final["distance_to_optimum"] for r in records) / 2
    assert lines[2].split() == ["adam", f"{mean:.3g}", lines[2].split()[2]]
    assert lines[3].split()[0] == "sgd" and lines[3].split()[2] == "diverged"

    out_csv = tmp_path / "steps.csv"
    code, out, _ = _run_cli(
        capsys, "export", "--store", str(store), "--table", "steps", "--out", str(out_csv)
    )
    assert code == 0 and str(out_csv) in out
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == {"sgd", "adam"}
    assert len(rows) == sum(len(r.steps) for r in Store(store).load_records())


def test_sweep_study_file_with_overrides(capsys, tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(
        'name = "mine"\nlrs = [0.1]\nseeds = 1\nsteps = 4\n'
        'problems = ["synthetic_sphere"]\nmethods = ["sgd"]\n'
    )
    code, out, _ = _run_cli(capsys, "sweep", "--study", str(study), "--dry-run")
    assert code == 0 and out.strip() == "mine: 1 runs -> results/mine.sqlite"
    code, out, _ = _run_cli(
        capsys, "sweep", "--study", str(study), "--methods", "sgd", "adam", "--seeds", "3",
        "--dry-run", "--store", str(tmp_path / "x.sqlite"),
    )  # fmt: skip
    assert code == 0 and out.strip() == f"mine: 6 runs -> {tmp_path / 'x.sqlite'}"


@pytest.mark.slow
def test_smoke_preset_runs_end_to_end(capsys, tmp_path):
    """The preset behind `make demo`: one problem of each kind, no failures, under a minute."""
    store = tmp_path / "smoke.sqlite"
    code, out, err = _run_cli(capsys, "sweep", "--preset", "smoke", "--store", str(store))
    assert code == 0, err
    with Store(store) as reader:
        records = reader.load_records()
        counts = reader.status_counts()
    from lrlab.bench.presets import load_preset

    study = load_preset("smoke")
    assert {r.run_id for r in records} == {c.run_id for c in study.configs()}
    assert "failed" not in counts and counts["finished"] >= len(records) // 2
    kinds = {get_problem(r.config.problem).info.kind for r in records}
    assert kinds == {"synthetic", "logistic", "vision"}
    # the summary reports the sweep's wall time (its value is the machine's, not asserted here)
    assert float(out.split(") in ")[1].split(" s")[0]) > 0
    code, out, _ = _run_cli(capsys, "report", "--store", str(store))
    assert code == 0 and out.count("mean over 2 seed(s)") == 3


def test_console_script_entry_point(tmp_path):
    """`python -m lrlab` is the same command line (what `make demo` calls as `lrlab`)."""
    done = subprocess.run(
        [sys.executable, "-m", "lrlab", "sweep", "--preset", "smoke", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    from lrlab.bench.presets import load_preset

    runs = len(load_preset("smoke").configs())
    assert done.stdout.strip() == f"smoke: {runs} runs -> results/smoke.sqlite"


def test_demo_subcommand_still_works(capsys):
    code, out, _ = _run_cli(capsys, "demo", "--steps", "3")
    assert code == 0
    assert "Small MLP, 3 full-batch steps" in out and "clara-adam" in out


def test_records_from_the_cli_equal_records_from_the_api(capsys, tmp_path):
    store = tmp_path / "s.sqlite"
    code, _, _ = _run_cli(
        capsys, "sweep", "--problems", "iris_logreg", "--methods", "adam", "--lrs", "0.01",
        "--steps", "5", "--store", str(store), "--workers", "1", "--quiet",
    )  # fmt: skip
    assert code == 0
    (stored,) = Store(store).load_records()
    config = make_config(problem="iris_logreg", method="adam", lr=0.01, seed=0, steps=5)
    assert dataclasses.replace(stored, wall_time_s=0) == dataclasses.replace(
        run(config), wall_time_s=0
    )
