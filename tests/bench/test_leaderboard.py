"""The leaderboard: the preset's grid, its quick variant, and the per-(method, problem) numbers on
hand-made records (every expected number is worked out in the comments)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

import lrlab.optim as lo
from lrlab.bench.leaderboard import entries, method_group, record_goal, targets_from_records
from lrlab.bench.presets import load_preset
from lrlab.bench.spec import Goal, RunConfig, RunRecord, RunStatus
from lrlab.bench.studyfile import Study, StudyError, parse_lrs

# -- the preset ---------------------------------------------------------------------------------

WHOLE_DECADES = parse_lrs("1e-6:1e2:9")
HALF_DECADES = parse_lrs("1e-6:1e2:17")
ESTIMATES = parse_lrs("1e-8:1:9")
INITIAL_ESTIMATE = {
    "dadapt-sgd": "d0",
    "dadapt-adam": "d0",
    "dadapt-adagrad": "d0",
    "prodigy": "d0",
    "dog": "reps_rel",
    "ldog": "reps_rel",
    "dowg": "init_estim_sq_dist",
    "mechanic": "s_init",
}


def _settings(configs: list[RunConfig]) -> dict[str, set[tuple[str | None, float | None]]]:
    """Per row label: the (lr_argument, lr) settings it runs (any problem, any seed)."""
    found: dict[str, set[tuple[str | None, float | None]]] = {}
    for config in configs:
        found.setdefault(method_group(config), set()).add((config.lr_argument, config.lr))
    return found


@pytest.fixture(scope="module")
def preset() -> Study:
    return load_preset("leaderboard")


def test_every_registered_method_is_on_the_leaderboard(preset) -> None:
    configs = preset.configs()
    assert {c.method for c in configs} == set(lo.names())
    assert {c.seed for c in configs} == {0, 1, 2}
    # every method runs on every problem
    problems = {c.problem for c in configs}
    assert len(problems) == len(preset.parts) == 5
    for method in lo.names():
        assert {c.problem for c in configs if c.method == method} == problems


def test_the_grid_of_each_kind_of_method(preset) -> None:
    settings = _settings(preset.configs())
    tuned = {"sgd-momentum", "adamw"}
    assert tuned <= set(settings)
    for label, found in settings.items():
        method = label.split("(")[0]
        spec = lo.spec("sgd" if label == "sgd-momentum" else method)
        if label in tuned:
            expected = {(None, lr) for lr in HALF_DECADES} | {(None, None)}
        elif method in INITIAL_ESTIMATE:
            expected = {(INITIAL_ESTIMATE[method], v) for v in ESTIMATES} | {(None, None)}
        elif spec.lr_argument is None:
            expected = {(None, None)}  # L4, SPS: no step size, defaults only
        else:
            expected = {(None, lr) for lr in WHOLE_DECADES} | {(None, None)}
        assert found == expected, label
    assert len(WHOLE_DECADES) == 9 and WHOLE_DECADES[0] == 1e-6 and WHOLE_DECADES[-1] == 100.0
    assert len(HALF_DECADES) == 17
    # the momentum baseline is SGD with momentum 0.9
    momentum = [c for c in preset.configs() if method_group(c) == "sgd-momentum"]
    assert {c.method_kwargs["momentum"] for c in momentum} == {0.9}


def test_the_preset_reports_one_leaderboard_over_all_parts(preset) -> None:
    assert preset.report["combine_parts"] and preset.report["leaderboard"]
    assert [p.name for p in preset.parts] == [
        "transformer",
        "resnet",
        "mnist1d",
        "digits",
        "tabular",
    ]
    assert preset.part("resnet").problems[0].name == "colordigits_resnet"
    with pytest.raises(StudyError, match=r"no part 'nope'; its parts: transformer, resnet"):
        preset.part("nope")


def test_the_quick_variant_is_small(preset) -> None:
    quick = preset.quick
    assert quick is not None and quick.name == preset.name
    configs = quick.configs()
    assert {c.seed for c in configs} == {0, 1}
    assert {c.method for c in configs} == set(lo.names())  # still every method
    problems = {c.problem for c in configs}
    assert len(problems) == 3
    assert not problems & {"stdlib_transformer", "colordigits_resnet"}  # the heavy ones stay out
    assert all(c.steps <= 150 for c in configs)
    # every other decade for the methods on the study grid
    settings = _settings(configs)
    assert settings["adam"] == {(None, lr) for lr in parse_lrs("1e-6:1e2:5")} | {(None, None)}
    # size: rows x settings x seeds x problems, worked out from the grid
    rows = {label: len(found) for label, found in settings.items()}
    assert len(configs) == sum(rows.values()) * 2 * 3
    assert len(configs) < len(preset.configs()) / 3
    # step budget: a fraction of the full study's on the problems they share
    full_steps = {c.problem: c.steps for c in preset.configs()}
    assert all(c.steps <= full_steps[c.problem] for c in configs)


def test_quick_tables_are_checked() -> None:
    base = {"name": "s", "seeds": 1, "lrs": [0.1], "methods": ["sgd"], "problems": ["iris_logreg"]}
    with pytest.raises(StudyError, match=r"quick: needs its own 'problems'"):
        Study.from_mapping({**base, "quick": {"seeds": 1}})
    with pytest.raises(StudyError, match=r"'quick' must be a table"):
        Study.from_mapping({**base, "quick": 3})
    with pytest.raises(StudyError, match=r"cannot have its own 'quick'"):
        Study.from_mapping({**base, "quick": {"problems": ["iris_logreg"], "quick": {}}})
    study = Study.from_mapping(
        {**base, "quick": {"problems": [{"name": "wine_logreg", "steps": 5}], "seeds": 2}}
    )
    assert study.quick is not None and [p.name for p in study.quick.problems] == ["wine_logreg"]
    assert study.quick.seeds == (0, 1) and study.quick.lrs == (0.1,)  # inherited
    assert study.seeds == (0,) and study.quick.quick is None
    with pytest.raises(StudyError, match=r"'leaderboard' must be bool"):
        Study.from_mapping({**base, "report": {"leaderboard": "yes"}})


# -- the numbers ----------------------------------------------------------------------------------


def record(
    method: str,
    lr: float | None,
    seed: int,
    value: float | None,
    *,
    label: str | None = None,
    problem: str = "p",
    losses: tuple[float, ...] = (3.0, 2.0, 1.0, 0.5),
    wall: float = 8.0,
    lr_argument: str | None = None,
) -> RunRecord:
    config = RunConfig(
        problem=problem,
        method=method,
        lr=lr,
        seed=seed,
        steps=len(losses),
        tags={"label": label} if label else {},
        lr_argument=lr_argument,
    )
    finished = value is not None
    return RunRecord(
        run_id=config.run_id,
        config=config,
        status=RunStatus.FINISHED if finished else RunStatus.DIVERGED,
        steps=[{"step": float(i + 1), "loss": v} for i, v in enumerate(losses)],
        evals=[],
        final={"score": value, "final_loss": losses[-1]} if finished else {},
        wall_time_s=wall,
        metric="score",
        goals={"score": Goal.MAXIMIZE, "final_loss": Goal.MINIMIZE},
    )


def _board() -> list[RunRecord]:
    return [
        # method a: LRs 0.01 (0.8, 0.6 -> mean 0.7), 0.1 (0.9, 0.9), 1 (diverges on seed 1);
        # default (lr None): 0.5, 0.5
        record("a", 0.01, 0, 0.8),
        record("a", 0.01, 1, 0.6),
        record("a", 0.1, 0, 0.9, losses=(3.0, 1.0, 0.4, 0.3)),
        record("a", 0.1, 1, 0.9, losses=(3.0, 2.0, 0.4, 0.3)),
        record("a", 1.0, 0, 0.95),
        record("a", 1.0, 1, None),
        record("a", None, 0, 0.5),
        record("a", None, 1, 0.5),
        # b (learning-rate free): default 0.85 on both seeds; d0 sweep 1e-4: 0.86, 1e-2: 0.84
        record("b", None, 0, 0.85),
        record("b", None, 1, 0.85),
        record("b", 1e-4, 0, 0.86, label="b[d0=lr]", lr_argument="d0"),
        record("b", 1e-4, 1, 0.86, label="b[d0=lr]", lr_argument="d0"),
        record("b", 1e-2, 0, 0.84, label="b[d0=lr]", lr_argument="d0"),
        record("b", 1e-2, 1, 0.84, label="b[d0=lr]", lr_argument="d0"),
        # c: one LR only, diverges at its default
        record("c", 0.1, 0, 0.9),
        record("c", 0.1, 1, 0.9),
        record("c", None, 0, None),
        record("c", None, 1, 0.2),
    ]


def test_method_group_strips_the_lr_argument_suffix() -> None:
    assert method_group(record("b", 1e-4, 0, 1.0, label="b[d0=lr]").config) == "b"
    assert method_group(record("sgd", 1e-4, 0, 1.0, label="sgd(momentum=0.9)").config) == (
        "sgd(momentum=0.9)"
    )
    assert method_group(record("a", 1e-4, 0, 1.0).config) == "a"


def test_entries_on_a_hand_made_board() -> None:
    found = {e.method: e for e in entries(_board(), tolerance=0.1)}
    assert set(found) == {"a", "b", "c"}
    a, b, c = found["a"], found["b"], found["c"]
    assert (a.metric, a.goal) == ("score", Goal.MAXIMIZE)  # from the records, not the name
    # best over settings with no diverged seed: a 0.9 at 0.1 (1.0 has a diverged seed)
    assert (a.best, a.best_setting, a.best_values) == (0.9, 0.1, (0.9, 0.9))
    # b: best over its default and its d0 sweep, one row: 0.86 at d0 = 1e-4
    assert (b.best, b.best_setting) == (0.86, 1e-4)
    assert (b.default, b.default_values) == (0.85, (0.85, 0.85))
    assert c.best == 0.9 and c.default is None and c.default_diverged
    assert a.default == 0.5 and not a.default_diverged
    # ranks: best a 0.9 = c 0.9 > b 0.86 -> a 1, c 1, b 3; defaults: b 0.85 > a 0.5, c none
    assert (a.rank, c.rank, b.rank) == (1, 1, 3)
    assert (b.default_rank, a.default_rank, c.default_rank) == (1, 2, None)
    # divergence: a 1 of 8 runs, b 0 of 6, c 1 of 4
    assert (a.divergence_rate, b.divergence_rate, c.divergence_rate) == (1 / 8, 0.0, 1 / 4)
    assert (a.runs, b.runs, c.runs) == (8, 6, 4)
    # width: reference = the best single run, 0.95 (a at 1.0); within 10 % (>= 0.855): a's 0.1
    # only (1.0 has a diverged seed; grid spacing 1 decade) -> 1 decade; b: d0 1e-4 (0.86) only,
    # on a grid 2 decades apart -> 2; c: its one LR (spacing 1 by convention) -> 1
    assert (a.width, b.width, c.width) == (1.0, 2.0, 1.0)


def test_time_to_target_in_steps_and_wall_time() -> None:
    # target: best median final training loss over (method, setting) = 0.3 (a at 0.1), plus
    # 10 % -> 0.33. a at its best setting (0.1) reaches <= 0.33 at step 4 on both seeds
    # (0.3); others end at 0.5 and never reach it.
    board = _board()
    assert targets_from_records(board, 0.1) == {"p": pytest.approx(0.33)}
    found = {e.method: e for e in entries(board)}
    assert found["a"].target == pytest.approx(0.33)
    assert found["a"].steps_to_target == 4.0
    assert found["a"].seconds_to_target == 8.0  # 4 of 4 steps of an 8 s run
    assert math.isinf(found["b"].steps_to_target) and math.isinf(found["b"].seconds_to_target)
    # a given target: 0.45 -> seed 0 at step 3 (0.4), seed 1 at step 3 -> median 3 -> 6 s
    given = {e.method: e for e in entries(board, targets={"p": 0.45})}
    assert given["a"].steps_to_target == 3.0 and given["a"].seconds_to_target == 6.0


def test_directions_come_from_the_records() -> None:
    board = _board()
    assert record_goal(board, "final_loss") is Goal.MINIMIZE
    with pytest.raises(ValueError, match=r"no stored direction for metric 'accuracy'"):
        record_goal(board, "accuracy")
    old = [dataclasses.replace(r, goals={}, metric=None) for r in board]
    with pytest.raises(ValueError, match=r"headline metrics"):
        entries(old)
    # a metric choice overrides what is stored (minimising the score reverses the ranks)
    found = {
        e.method: e for e in entries(board, metric_choice=lambda p, rs: ("score", Goal.MINIMIZE))
    }
    # lowest: a 0.5 (its default), b 0.84 (d0 1e-2), c 0.9 (its default has a diverged seed)
    assert (found["a"].best, found["a"].best_setting, found["a"].rank) == (0.5, None, 1)
    assert (found["b"].best, found["b"].rank, found["c"].rank) == (0.84, 2, 3)


# -- the study machinery: quick, parts run apart, merge, one combined leaderboard -----------------

BOARD = """
name = "board"
title = "a tiny leaderboard"
seeds = 2
lrs = [0.01, 0.1]
methods = [
    "sgd",
    { name = "sgd", lrs = "none" },
    { name = "dadapt-adam", label = "dadapt-adam", lrs = "none" },
    { name = "dadapt-adam", label = "dadapt-adam", lr_argument = "d0", lrs = [1e-6, 1e-3] },
]
[report]
combine_parts = true
leaderboard = true
figures = ["sensitivity"]
[[parts]]
name = "iris"
problems = [{ name = "iris_logreg", steps = 8 }]
[[parts]]
name = "wine"
problems = [{ name = "wine_logreg", steps = 8 }]
[quick]
seeds = 1
lrs = [0.1]
problems = [{ name = "iris_logreg", steps = 4 }]
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    (root / "board.toml").write_text(BOARD)
    (root / "board.md").write_text(
        "Reading: sgd at its default on iris "
        "{{value problem=iris_logreg method=sgd lr=none}}.\n\n{{results}}\n"
    )
    # the quick variant's own reading (it names no wine run: wine is not in the quick variant)
    (root / "board.quick.md").write_text(
        "Quick reading: sgd at its default on iris "
        "{{value problem=iris_logreg method=sgd lr=none}}.\n\n{{results}}\n"
    )
    return root


@pytest.mark.slow  # four study invocations, each with its worker process
def test_parts_run_apart_and_merge_into_one_leaderboard(board) -> None:
    from lrlab.bench.store import Store
    from lrlab.bench.study import run_study

    common = {"docs": board / "docs", "workers": 1, "show_progress": False}
    first = run_study(
        str(board / "board.toml"),
        store=board / "iris.sqlite",
        report_dir=board / "r1",
        parts=["iris"],
        **common,
    )
    # 2 problems x (sgd 2 LRs + default, dadapt-adam default + 2 d0) x 2 seeds; iris ran only
    assert (first.ran, first.runs, first.missing) == (12, 12, 12)
    assert first.doc is None and not (board / "docs").exists()  # the page waits for every part
    # built without --part while wine is unfinished: iris alone, wine named, not ranked, and
    # the time of an invocation that ran only wine (as if interrupted) not counted
    timing_file = board / "iris.sqlite.timing.json"
    saved_timing = timing_file.read_text()
    sweeps = json.loads(saved_timing)["sweeps"]
    sweeps.append({**sweeps[0], "parts": ["wine"], "wall_time_s": 1000.0, "interrupted": True})
    timing_file.write_text(json.dumps({"sweeps": sweeps}))
    early = run_study(
        str(board / "board.toml"),
        store=board / "iris.sqlite",
        report_dir=board / "r0",
        run=False,
        docs=board / "early-docs",
        show_progress=False,
        command="lrlab study board",
    )
    assert early.unfinished == [("wine", 0, 12)] and early.missing == 0
    page = early.doc.read_text()
    header = next(line for line in page.splitlines() if line.startswith("| method | iris_logreg"))
    assert "wine_logreg" not in header and "wine_logreg" not in page.split("## How")[0]
    assert "**Not on this page yet: part `wine`** (0 of its 12 runs stored)" in page
    assert early.sweep_wall_time_s == pytest.approx(first.sweep_wall_time_s)
    timing_file.write_text(saved_timing)
    assert "`lrlab study board --part wine` finishes it" in page
    second = run_study(
        str(board / "board.toml"),
        store=board / "wine.sqlite",
        report_dir=board / "r2",
        parts=["wine"],
        **common,
    )
    assert second.ran == 12
    merged = run_study(
        str(board / "board.toml"),
        store=board / "all.sqlite",
        report_dir=board / "r3",
        merge=[board / "iris.sqlite", board / "wine.sqlite"],
        run=False,
        **common,
    )
    assert (merged.runs, merged.missing, merged.ran) == (24, 0, 0)
    with Store(board / "all.sqlite", readonly=True) as store:
        assert store.count() == 24
    # the timings of both invocations came along: the page sums them
    assert merged.sweep_wall_time_s == pytest.approx(
        first.sweep_wall_time_s + second.sweep_wall_time_s
    )
    doc = merged.doc.read_text()
    # one report over both parts: no per-part sections; the leaderboard tables, both problems
    assert "### Part" not in doc
    assert "**Leaderboard, tuned**" in doc and "**With no tuning**" in doc
    assert "**Robustness**" in doc and "**Time to target**" in doc
    header = next(line for line in doc.splitlines() if line.startswith("| method | iris_logreg"))
    assert "wine_logreg" in header
    rows = [line for line in doc.splitlines() if line.startswith("| dadapt-adam |")]
    # one row per method in the summary's leaderboard and in each of the four tables (the d0
    # runs are the same row as the defaults)
    assert len(rows) == 5
    assert "**Verdict** (generated from the runs): " in doc
    assert merged.report_dirs == [board / "r3"]
    # merging again copies nothing and does not double the timings
    again = run_study(
        str(board / "board.toml"),
        store=board / "all.sqlite",
        report_dir=board / "r3",
        merge=[board / "iris.sqlite"],
        run=False,
        **common,
    )
    assert again.sweep_wall_time_s == pytest.approx(merged.sweep_wall_time_s)


@pytest.mark.slow
def test_quick_runs_the_quick_variant_into_its_own_store(board, monkeypatch) -> None:
    from lrlab.bench.study import run_study

    monkeypatch.chdir(board)
    outcome = run_study(
        str(board / "board.toml"), quick=True, docs=board / "qdocs", workers=1, show_progress=False
    )
    # iris only, 1 seed: sgd 0.1 + default, dadapt-adam default + 2 d0
    assert (outcome.ran, outcome.missing) == (5, 0)
    assert outcome.store == Path("results") / "board-quick.sqlite"
    assert (board / "results" / "board-quick-report" / "report.html").is_file()
    # its own page (never the full study's board.md), read from its own commentary
    assert outcome.doc == board / "qdocs" / "board-quick.md"
    assert not (board / "qdocs" / "board.md").exists()
    page = outcome.doc.read_text()
    assert page.startswith("# Study `board`") and "Quick reading: sgd at its default" in page
    assert "Reading: sgd" not in page
    assert all(f.parent == board / "qdocs" / "board-quick" for f in outcome.figures)
    assert outcome.figures and "](board-quick/" in page


def test_unknown_parts_and_missing_quick_fail_before_running(board, tmp_path) -> None:
    from lrlab.bench.study import run_study

    with pytest.raises(StudyError, match=r"no part 'cifar'; its parts: iris, wine"):
        run_study(str(board / "board.toml"), store=tmp_path / "s.sqlite", parts=["cifar"])
    assert not (tmp_path / "s.sqlite").exists()
    plain = tmp_path / "plain.toml"
    plain.write_text(BOARD.split("[quick]")[0])
    with pytest.raises(StudyError, match=r"has no quick variant"):
        run_study(str(plain), store=tmp_path / "s.sqlite", quick=True)
    with pytest.raises(StudyError, match=r"merge: store .*absent.sqlite' does not exist"):
        run_study(str(plain), store=tmp_path / "s.sqlite", merge=[tmp_path / "absent.sqlite"])
    assert not (tmp_path / "s.sqlite").exists()


@pytest.mark.slow  # starts a local Ray instance
def test_a_study_runs_on_ray_with_only_the_backend_changed(tmp_path) -> None:
    from lrlab.bench.cli import main
    from lrlab.bench.store import Store

    study = tmp_path / "ray.toml"
    study.write_text(
        'name = "ray"\nseeds = 1\nlrs = [0.1]\nmethods = ["sgd", "adam"]\n'
        'problems = [{ name = "iris_logreg", steps = 5 }]\n'
    )
    records = {}
    for backend in ("local", "ray"):
        code = main(
            [
                "study",
                str(study),
                "--quiet",
                "--workers",
                "1",
                "--backend",
                backend,
                "--store",
                str(tmp_path / f"{backend}.sqlite"),
                "--docs",
                str(tmp_path / backend),
                "--report-dir",
                str(tmp_path / f"{backend}-report"),
            ]
        )
        assert code == 0
        with Store(tmp_path / f"{backend}.sqlite", readonly=True) as store:
            records[backend] = {
                r.run_id: dataclasses.replace(r, wall_time_s=0.0) for r in store.load_records()
            }
    assert len(records["local"]) == 2 and records["local"] == records["ray"]
    assert "--backend ray" in (tmp_path / "ray" / "ray.md").read_text()


def test_study_backend_errors_are_usage_errors(tmp_path, capsys) -> None:
    from lrlab.bench.cli import main

    code = main(["study", "smoke", "--address", "10.0.0.1:6379", "--store", str(tmp_path / "s")])
    assert code == 2
    assert "only meaningful with the ray backend" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_an_interrupted_study_keeps_the_time_it_ran(tmp_path, monkeypatch) -> None:
    import json

    import lrlab.bench.sweep as sweep
    from lrlab.bench.runner import run
    from lrlab.bench.study import run_study

    study = tmp_path / "cut.toml"
    study.write_text(
        'name = "cut"\nseeds = 1\nlrs = [0.1]\nmethods = ["sgd", "adam"]\n'
        'problems = [{ name = "iris_logreg", steps = 3 }]\n'
    )

    def interrupted_sweep(configs, store, **_):
        store.write(run(configs[0]))  # one run is stored, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted_sweep)
    with pytest.raises(KeyboardInterrupt):
        run_study(str(study), store=tmp_path / "cut.sqlite", docs=tmp_path / "docs")
    (entry,) = json.loads((tmp_path / "cut.sqlite.timing.json").read_text())["sweeps"]
    assert entry["runs"] == 1 and entry["interrupted"] is True and entry["wall_time_s"] > 0


def test_ranks_treat_means_equal_up_to_rounding_as_equal() -> None:
    from lrlab.bench.leaderboard import _ranks

    same_a = (0.975 + 0.9777777777777777) / 2
    same_b = (0.9666666666666667 + 0.9861111111111112) / 2
    assert same_a != same_b  # the same 1406 / 1440, rounded differently
    values = {"a": same_a, "b": same_b, "c": 0.5, "d": None}
    assert _ranks(values, Goal.MAXIMIZE) == {"a": 1, "b": 1, "c": 3, "d": None}
    assert _ranks(values, Goal.MINIMIZE) == {"a": 2, "b": 2, "c": 1, "d": None}
