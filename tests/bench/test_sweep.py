"""Sweeps: grids, study files, skipping stored runs, kill-and-resume, local vs Ray executors."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lrlab.optim as lo
from lrlab.bench.runner import run
from lrlab.bench.spec import RunConfig, RunStatus
from lrlab.bench.store import Store
from lrlab.bench.sweep import (
    MethodEntry,
    ProblemEntry,
    Progress,
    Study,
    StudyError,
    load_study,
    make_config,
    parse_lrs,
    parse_seeds,
    run_sweep,
)

NO_LR_METHOD = next(n for n in lo.names() if lo.spec(n).lr_argument is None)


def _untimed(record):
    return dataclasses.replace(record, wall_time_s=0.0)


# -- grids and studies --------------------------------------------------------------------------


def test_lr_grids():
    assert parse_lrs("1e-6:1:7") == (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
    assert parse_lrs("1e-3:1e-1:5") == (1e-3, 0.00316227766017, 1e-2, 0.0316227766017, 0.1)
    assert parse_lrs("0.5:0.5:1") == (0.5,)
    assert parse_lrs("1e-3, 0.1") == (1e-3, 0.1)
    for bad in ("1e-6:1", "0:1:3", "1:1e-6:3", "1e-3:1:0", "a,b", "-1", "", "inf"):
        with pytest.raises(StudyError, match=r"bad learning-rate grid .*LOW:HIGH:COUNT"):
            parse_lrs(bad)


def test_seed_lists():
    assert parse_seeds("3") == (0, 1, 2)
    assert parse_seeds("0,4,7") == (0, 4, 7)
    for bad in ("0", "-1", "x", "1,-2"):
        with pytest.raises(StudyError, match=r"bad seeds"):
            parse_seeds(bad)


STUDY = """
name = "t"
description = "a test study"
lrs = "1e-2:1e-1:2"
seeds = [0, 5]
steps = 7
tags = { study = "t" }
problems = ["synthetic_sphere", { name = "synthetic_rosenbrock", steps = 3 }]
methods = ["sgd", { name = "clara-sgd", grid = { d = [0.02, 0.1] } }, "NO_LR"]
"""


def test_study_file_expands_to_configs(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(STUDY.replace("NO_LR", NO_LR_METHOD))
    study = load_study(path)
    assert study.lrs == (0.01, 0.1) and study.seeds == (0, 5)
    configs = study.configs()
    # per problem: sgd 2 LRs x 2 seeds + clara-sgd 2 variants x 2 x 2 + the LR-free method 2 seeds
    assert len(configs) == 2 * (4 + 8 + 2)
    assert len({c.run_id for c in configs}) == len(configs)
    steps = {c.problem: c.steps for c in configs}
    assert steps == {"synthetic_sphere": 7, "synthetic_rosenbrock": 3}
    labels = {c.tags.get("label") for c in configs if c.method == "clara-sgd"}
    assert labels == {"clara-sgd(d=0.02)", "clara-sgd(d=0.1)"}
    assert all(c.tags["study"] == "t" for c in configs)
    assert "label" not in next(c for c in configs if c.method == "sgd").tags
    no_lr = [c for c in configs if c.method == NO_LR_METHOD]
    assert len(no_lr) == 4 and all(c.lr is None for c in no_lr)


def test_defaults_are_made_explicit_in_the_config():
    config = make_config(problem="synthetic_sphere", method="adam", lr=0.1, seed=0)
    from lrlab.bench.problems import get_problem

    info = get_problem("synthetic_sphere").info
    assert config.steps == info.default_steps
    assert config.batch_size == info.default_batch_size
    assert config.tags == {}
    # class-name aliases resolve to the registry name, so the run id is the same
    alias = make_config(problem="synthetic_sphere", method="Adam", lr=0.1, seed=0)
    assert alias.run_id == config.run_id


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"colour": "red"}, r"unknown key 'colour'; allowed: description, divergence_threshold"),
        ({"name": None}, r"missing key 'name'"),
        ({"lrs": "1:2"}, r"bad learning-rate grid '1:2'"),
        ({"lrs": ["x"]}, r"'lrs' must hold numbers"),
        ({"seeds": "3"}, r"'seeds' must be a count or a list of integers"),
        ({"steps": 1.5}, r"'steps' must be int, got 1.5"),
        ({"problems": []}, r"'problems' must be a non-empty list"),
        ({"methods": [{"name": "sgd", "grid": {"momentum": 0.9}}]}, r"grid 'momentum' must be a"),
        ({"methods": [{"name": "sgd", "speed": 1}]}, r"method 'sgd': unknown key 'speed'"),
        ({"problems": [{"name": "synthetic_sphere", "size": 1}]}, r"unknown key 'size'"),
    ],
)
def test_study_errors_name_the_key(edit, message):
    data = {
        "name": "t",
        "lrs": [0.1],
        "seeds": 1,
        "problems": ["synthetic_sphere"],
        "methods": ["sgd"],
    }
    data.update(edit)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(StudyError, match=message):
        Study.from_mapping(data, source="t.toml")


def test_unknown_names_in_a_study_list_the_valid_ones():
    study = Study(
        name="t",
        problems=(ProblemEntry(name="synthetic_spher"),),
        methods=(MethodEntry(name="sgd"),),
        lrs=(0.1,),
        seeds=(0,),
    )
    with pytest.raises(StudyError, match=r"unknown problem 'synthetic_spher'; closest: synth"):
        study.configs()
    study = dataclasses.replace(
        study, problems=(ProblemEntry(name="synthetic_sphere"),), methods=(MethodEntry(name="sdg"),)
    )
    with pytest.raises(StudyError, match=r"unknown method 'sdg'; closest: sgd"):
        study.configs()


def test_progress_line_counts_and_eta():
    stream = io.StringIO()
    bar = Progress(4, stream=stream, interval=0.0)
    bar.update(RunStatus.FINISHED)
    bar.update(RunStatus.DIVERGED)
    bar.update(None)
    bar.update(RunStatus.FAILED)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("[############............] 2/4 (50%) finished 1, diverged 1")
    assert "ETA" in lines[1]
    assert "failed 1, lost 1" in lines[-1] and "4/4 (100%)" in lines[-1]


# -- running ------------------------------------------------------------------------------------


def _small_study(**changes):
    study = Study(
        name="small",
        problems=(ProblemEntry(name="synthetic_noisy_sphere", steps=15),),
        methods=(MethodEntry(name="sgd"), MethodEntry(name="clara-adam")),
        lrs=(0.01, 0.1),
        seeds=(0, 1),
    )
    return dataclasses.replace(study, **changes)


def test_sweep_skips_stored_runs_and_matches_in_process_runs(tmp_path):
    configs = _small_study().configs()
    first, rest = configs[:3], configs[3:]
    stream = io.StringIO()
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep(first, store, workers=2, progress=stream)
        assert summary.counts["finished"] == 3 and summary.skipped == 0
        again = run_sweep(configs, store, workers=2, progress=stream)
        assert again.total == 8 and again.skipped == 3
        assert sum(again.counts.values()) == 5 and not again.lost
        assert store.run_ids() == {c.run_id for c in configs}
        stored = {r.run_id: r for r in store.load_records()}
    assert "8 runs: 3 already in" in stream.getvalue()
    assert "5/5 (100%) finished 5" in stream.getvalue()
    for config in (first[0], rest[-1]):  # spawned workers compute what this process computes
        assert _untimed(stored[config.run_id]) == _untimed(run(config))


def test_failed_runs_are_stored_and_retried_on_request(tmp_path):
    bad = make_config(
        problem="synthetic_sphere", method="sgd", lr=0.1, seed=0, steps=3,
        method_kwargs={"momentum": -1.0},
    )  # fmt: skip
    good = make_config(problem="synthetic_sphere", method="sgd", lr=0.1, seed=0, steps=3)
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep([bad, good], store, workers=1, show_progress=False)
        assert summary.counts == {"finished": 1, "diverged": 0, "failed": 1}
        assert "sgd lr=0.1 seed=0: ValueError: momentum must be in" in summary.errors[0]
        skipped = run_sweep([bad, good], store, workers=1, show_progress=False)
        assert skipped.skipped == 2
        retried = run_sweep([bad, good], store, workers=1, show_progress=False, retry_failed=True)
        assert retried.skipped == 1 and retried.counts["failed"] == 1
        assert store.count() == 2


KILL_ARGS = [
    "--problems", "synthetic_rosenbrock", "synthetic_noisy_ellipsoid",
    "--methods", "clara-sgd", "adam",
    "--lrs", "1e-4:1e-2:3", "--seeds", "2", "--steps", "1000", "--workers", "2",
]  # fmt: skip


def _stored_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return [r[0] for r in db.execute("SELECT run_id FROM runs")]
        finally:
            db.close()
    except sqlite3.OperationalError:  # created but no table yet
        return []


@pytest.mark.slow
def test_sweep_killed_with_sigkill_resumes_without_lost_or_duplicated_runs(tmp_path):
    store = tmp_path / "kill.sqlite"
    command = [sys.executable, "-m", "lrlab", "sweep", *KILL_ARGS, "--store", str(store)]
    expected = {
        make_config(problem=p, method=m, lr=lr, seed=s, steps=1000).run_id
        for p in ("synthetic_rosenbrock", "synthetic_noisy_ellipsoid")
        for m in ("clara-sgd", "adam")
        for lr in (1e-4, 1e-3, 1e-2)
        for s in (0, 1)
    }
    # its own session, so that SIGKILL reaches the driver and its workers at once
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_stored_ids(store)) < 4 and process.poll() is None:
            assert time.monotonic() < deadline, "the sweep stored nothing in 60 s"
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    before = _stored_ids(store)
    assert 4 <= len(before) < len(expected)  # killed mid-sweep

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(before)} already in" in resumed.stderr

    after = _stored_ids(store)
    assert len(after) == len(set(after)) == len(expected)
    assert set(after) == expected
    with Store(store, readonly=True) as reader:
        records = reader.load_records()
        db = reader._db
        per_run = dict(db.execute("SELECT run_id, count(*) FROM steps GROUP BY run_id"))
    for record in records:  # no duplicated or partial step rows either
        assert per_run.get(record.run_id, 0) == len(record.steps)
        assert record.status is not RunStatus.FAILED, record.error


@pytest.mark.slow
def test_local_and_ray_executors_give_identical_records(tmp_path):
    configs = _small_study(
        problems=(
            ProblemEntry(name="synthetic_noisy_sphere", steps=20),
            ProblemEntry(name="synthetic_rosenbrock", steps=20),
        ),
        lrs=(0.1,),
        seeds=(3,),
    ).configs()
    assert len(configs) == 4
    results = {}
    for backend in ("local", "ray"):
        with Store(tmp_path / f"{backend}.sqlite") as store:
            summary = run_sweep(configs, store, backend=backend, workers=2, show_progress=False)
            assert sum(summary.counts.values()) == 4 and not summary.lost
            results[backend] = {r.run_id: _untimed(r) for r in store.load_records()}
    assert set(results["local"]) == {c.run_id for c in configs}
    assert results["local"] == results["ray"]
    assert results["local"][configs[0].run_id] == _untimed(run(configs[0]))


def test_a_dying_worker_loses_only_its_own_run(tmp_path):
    configs = [
        RunConfig(problem="crash_tiny", method="sgd", lr=0.1, seed=seed, steps=5, batch_size=8)
        for seed in range(4)
    ]
    stream = io.StringIO()
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep(
            configs, store, workers=1, progress=stream, imports=["tests.bench._crash"]
        )
        stored = store.run_ids()
    assert [c.seed for c in summary.lost] == [1]
    assert stored == {c.run_id for c in configs if c.seed != 1}
    assert summary.counts["finished"] == 3
    assert "4/4 (100%) finished 3, diverged 0, failed 0, lost 1" in stream.getvalue()


def test_the_documented_study_format_loads(tmp_path):
    import lrlab.bench.studyfile as studyfile

    doc = studyfile.__doc__
    example = doc.split("format)::\n\n", 1)[1].split("\n\n", 1)[0]
    path = tmp_path / "doc.toml"
    path.write_text("\n".join(line[4:] for line in example.splitlines()))
    configs = load_study(path).configs()
    # 2 problems x (sgd + adam + clara-sgd + 2 clara-adam variants) x 7 LRs x 5 seeds
    assert len(configs) == 2 * 5 * 7 * 5
    assert {c.schedule for c in configs} == {"linear-decay"}
    digits = next(c for c in configs if c.problem == "digits_mlp")
    assert (digits.steps, digits.batch_size, dict(digits.problem_kwargs)) == (
        300,
        64,
        {"width": 0.5},
    )


def test_the_study_schema_lives_in_studyfile_and_sweep_re_exports_it():
    import lrlab.bench.studyfile as studyfile
    import lrlab.bench.sweep as sweep
    from lrlab.bench.spec import variant_label

    for name in ("Study", "StudyError", "MethodEntry", "ProblemEntry", "load_study", "make_config"):
        assert getattr(sweep, name) is getattr(studyfile, name)
    assert sweep.variant_label is studyfile.variant_label is variant_label
    assert variant_label("clara-sgd", {"d": 0.02, "c": [1, 2.5]}) == "clara-sgd(c=[1,2.5],d=0.02)"


def test_refinement_no_longer_imports_the_sweep_driver():
    import inspect
    import os
    import subprocess
    import sys
    from pathlib import Path

    import lrlab
    import lrlab.bench.refinement as refinement

    script = (
        "import sys, lrlab.bench.refinement\n"
        "bad = [m for m in ('lrlab.bench.sweep', 'lrlab.bench.studyfile') if m in sys.modules]\n"
        "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(lrlab.__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # and nothing in refinement's source imports them lazily either
    text = inspect.getsource(refinement)
    assert "bench.sweep" not in text and "bench.studyfile" not in text
