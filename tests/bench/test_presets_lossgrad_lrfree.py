"""The ``lossgrad`` and ``lrfree`` study presets: they parse, name only registered problems,
methods and schedules with valid arguments, match the setups their docs describe, every
distinct method config takes a few real steps, and their commentaries' placeholders refer to
runs the presets have. (Generic checks of every preset are in ``test_study.py``.)"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import lrlab.optim as lo
from lrlab.bench.problems import get_problem
from lrlab.bench.runner import make_schedule, run, schedule_names
from lrlab.bench.spec import RunStatus
from lrlab.bench.study import check_commentary, load_study_source
from lrlab.bench.sweep import Study

NAMES = ("lossgrad", "lrfree")

LR_FREE = {
    "dadapt-sgd",
    "dadapt-adam",
    "dadapt-adagrad",
    "prodigy",
    "mechanic",
    "schedulefree-sgd",
    "schedulefree-adamw",
    "dog",
    "ldog",
    "dowg",
    "mda",
    "momo",
    "sps",
    "l4-adam",
    "lossgrad",
}


def _study(name: str) -> Study:
    return load_study_source(name).study


def _part(study: Study, name: str) -> Study:
    (part,) = [p for p in study.parts if p.name == name]
    return part


def _label(config) -> str:
    return str(config.tags.get("label") or config.method)


@pytest.mark.parametrize("name", NAMES)
def test_preset_names_only_registered_problems_methods_and_schedules(name):
    configs = _study(name).configs()
    assert configs
    schedules = schedule_names()
    for config in configs:
        get_problem(config.problem)  # raises KeyError for an unknown problem
        lo.spec(config.method)
        if config.schedule is not None:
            assert config.schedule in schedules
            # the schedule's arguments are valid for the run's length
            optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            make_schedule(config.schedule, optimizer, config.steps, **config.schedule_kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_commentary_placeholders_refer_to_runs_of_the_preset(name):
    source = load_study_source(name)
    assert source.commentary.strip(), f"{name}.md commentary is missing"
    assert check_commentary(source) == []


@pytest.mark.parametrize("name", NAMES)
def test_every_distinct_method_config_takes_real_steps(name):
    """Each distinct (method, kwargs, LR) of the preset runs 3 steps on its cheapest problem
    without failing (catches misspelt kwargs and bad defaults before a 6-minute study)."""
    configs = _study(name).configs()
    cheapest = min({c.problem for c in configs}, key=lambda p: get_problem(p).info.default_steps)
    seen = set()
    for config in configs:
        key = (config.method, repr(sorted(config.method_kwargs.items())), config.lr)
        if key in seen or config.seed != 0:
            continue
        seen.add(key)
        problem_kwargs = next(c.problem_kwargs for c in configs if c.problem == cheapest)
        short = dataclasses.replace(
            config,
            problem=cheapest,
            problem_kwargs=problem_kwargs,
            steps=3,
            schedule=None,
            schedule_kwargs={},
            batch_size=32,
        )
        record = run(short)
        assert record.status is not RunStatus.FAILED, (key, record.error)
        assert len(record.steps) >= 1
    assert len(seen) >= 5


def test_lossgrad_preset_matches_the_study_design():
    study = _study("lossgrad")
    assert {p.name for p in study.parts} == {"lr0", "c"}
    assert {p.name for p in study.problems} | {
        p.name for part in study.parts for p in part.problems
    } == {"digits_mlp", "digits_autoencoder"}
    lr0 = _part(study, "lr0")
    configs = lr0.configs()
    lossgrad_lrs = sorted({c.lr for c in configs if c.method == "lossgrad"})
    assert math.log10(lossgrad_lrs[-1] / lossgrad_lrs[0]) >= 5 - 1e-9  # at least 5 decades
    assert all(c.method_kwargs == {} for c in configs if c.method == "lossgrad")  # default c
    labels = {_label(c) for c in configs}
    assert {"lossgrad", "sgd", "sgd+step-decay", "sgd+trapezoid", "wngrad"} <= labels
    for config in configs:
        if config.problem == "digits_mlp":
            assert config.problem_kwargs == {"arch": "lossgrad"}
            assert config.batch_size == 100
        if config.schedule == "step-decay":
            assert all(0 < m < config.steps for m in config.schedule_kwargs["milestones"])
    c_part = _part(study, "c")
    c_values = sorted({c.method_kwargs["c"] for c in c_part.configs()})
    assert c_values == [1.001, 1.005, 1.01, 1.05, 1.1, 1.2]
    assert {c.method for c in c_part.configs()} == {"lossgrad"}


def test_lrfree_preset_matches_the_study_design():
    study = _study("lrfree")
    problems = {
        "iris_logreg",
        "wine_logreg",
        "breast_cancer_logreg",
        "digits_logreg",
        "gaussian_logreg",
        "separable_gaussian_logreg",
    }
    tuned, fixed = _part(study, "tuned"), _part(study, "fixed")
    for part in (tuned, fixed):
        assert {c.problem for c in part.configs()} == problems
        assert set(part.report["targets"]) == problems  # a time-to-target target per problem
    # (a) Adam tuned per problem on a grid of at least 5 LRs spanning at least 3 decades
    tuned_lrs = sorted({c.lr for c in tuned.configs()})
    assert {c.method for c in tuned.configs()} == {"adam"}
    assert len(tuned_lrs) >= 5 and math.log10(tuned_lrs[-1] / tuned_lrs[0]) >= 3
    # (b) every learning-rate-free method at its defaults (no LR passed) ...
    configs = fixed.configs()
    methods = {c.method for c in configs}
    assert methods >= LR_FREE | {"adam"}
    for config in configs:
        if config.method != "adam":
            assert config.lr is None, config
    # ... against Adam at ONE fixed LR, a point of the tuned grid, the same on every problem
    calibrated = {c.lr for c in configs if _label(c) == "adam (fixed lr, best mean rank)"}
    assert len(calibrated) == 1
    (fixed_lr,) = calibrated
    assert any(math.isclose(fixed_lr, lr, rel_tol=1e-9) for lr in tuned_lrs)
    mechanic = {c.method_kwargs["base"] for c in configs if c.method == "mechanic"}
    assert mechanic == {"adamw"}
