"""The runner: determinism, what a row holds, evaluation, divergence, failures, feeding needs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import lrlab.optim as lo
from lrlab.bench.runner import derive_seed, run
from lrlab.bench.spec import Goal, RunConfig, RunStatus, metric_goals, run_label
from tests.bench._tiny import TinyInstance, TinyProblem, use_tiny


@pytest.fixture(autouse=True)
def _tiny(monkeypatch):
    use_tiny(monkeypatch)


def _config(method="sgd", lr=0.1, seed=0, steps=12, **kwargs):
    return RunConfig(
        problem="tiny_lsq", method=method, lr=lr, seed=seed, steps=steps, batch_size=8, **kwargs
    )


def _untimed(record):
    return dataclasses.replace(record, wall_time_s=0.0)


@pytest.mark.parametrize("method", ["sgd", "clara-adam"])
def test_same_config_gives_the_same_record(method):
    config = _config(method=method, eval_every=5)
    first = run(config)
    torch.manual_seed(1234)  # a different global RNG state must not matter
    run(_config(method="adam", seed=7))  # nor an unrelated run in between
    second = run(config)
    assert first.status is RunStatus.FINISHED
    assert _untimed(first) == _untimed(second)
    assert first.run_id == config.run_id
    assert set(first.versions) == {"lrlab", "torch", "python"}


def test_seed_changes_the_run_and_the_global_rng_is_left_alone():
    state = torch.get_rng_state()
    a, b = run(_config(seed=0)), run(_config(seed=1))
    assert torch.equal(state, torch.get_rng_state())
    assert a.steps[0]["loss"] != b.steps[0]["loss"]


def test_first_row_matches_a_hand_computed_sgd_step():
    lr = 0.05
    record = run(_config(lr=lr, steps=3))
    instance = TinyInstance(0)
    batch = next(instance.batches(torch.Generator().manual_seed(derive_seed(0, "batches")), 8))
    loss = instance.loss(batch)
    (grad,) = torch.autograd.grad(loss, [instance.model.weight])
    expected_point = instance.model.weight.detach()[0] - lr * grad[0]
    row = record.steps[0]
    assert row["step"] == 1
    assert row["loss"] == float(loss.detach())
    assert row["grad_l2"] == pytest.approx(float(grad.norm()), rel=1e-14)
    assert row["grad_l1"] == pytest.approx(float(grad.abs().sum()), rel=1e-14)
    assert row["effective_lr"] == lr
    assert row["distance_to_optimum"] == pytest.approx(
        float((expected_point - instance.optimum).norm()), rel=1e-14
    )
    assert row["stat.nonfinite_steps"] == 0.0
    assert "stat.effective_lr" not in row  # not repeated
    assert [r["step"] for r in record.steps] == [1, 2, 3]


def test_statistics_of_the_method_are_recorded_every_step():
    record = run(_config(method="clara-sgd", steps=6))
    names = set(lo.create("clara-sgd", [torch.zeros(1, requires_grad=True)]).statistics())
    for row in record.steps:
        assert {k.removeprefix("stat.") for k in row if k.startswith("stat.")} == names - {
            "effective_lr"
        }
    assert record.steps[-1]["effective_lr"] == record.final["final_lr"]


def test_evaluations_at_start_every_n_and_end():
    record = run(_config(steps=12, eval_every=5))
    assert [e["step"] for e in record.evals] == [0, 5, 10, 12]
    last = record.evals[-1]
    assert record.final == {
        "train_loss": last["train_loss"],
        "distance_to_optimum": last["distance_to_optimum"],
        "final_loss": record.steps[-1]["loss"],
        "final_lr": 0.1,
    }
    assert record.final["distance_to_optimum"] == record.steps[-1]["distance_to_optimum"]
    assert record.evals[0]["distance_to_optimum"] > record.evals[-1]["distance_to_optimum"]
    assert [e["step"] for e in run(_config(steps=4)).evals] == [0, 4]


def test_exploding_loss_ends_the_run_as_diverged():
    record = run(_config(lr=100.0, steps=50))
    assert record.status is RunStatus.DIVERGED
    assert record.error is None
    step = record.diverged_at_step
    assert step is not None and 1 < step < 50
    assert len(record.steps) == step
    limit = 1e6 * max(1.0, abs(record.steps[0]["loss"]))
    assert record.steps[-1]["loss"] > limit
    assert all(r["loss"] <= limit for r in record.steps[:-1])
    assert record.final["final_loss"] == record.steps[-1]["loss"]
    # a lower threshold stops it earlier
    early = run(_config(lr=100.0, steps=50, divergence_threshold=10.0))
    assert early.status is RunStatus.DIVERGED
    assert early.diverged_at_step < step


def test_non_finite_loss_is_divergence_at_that_step():
    record = run(_config(steps=20, problem_kwargs={"nan_at_step": 7}))
    assert record.status is RunStatus.DIVERGED
    assert record.diverged_at_step == 7
    assert math.isnan(record.steps[-1]["loss"])
    assert record.steps[-1]["effective_lr"] == 0.0  # the optimizer skipped the step
    assert record.steps[-1]["stat.nonfinite_steps"] == 1.0


def test_bad_hyperparameter_is_a_failed_record():
    record = run(_config(lr=-1.0))
    assert record.status is RunStatus.FAILED
    assert record.error.startswith("ValueError: lr must be in (0, inf), got -1.0")
    assert "Traceback" in record.error
    assert record.steps == [] and record.final == {}


def test_exception_mid_run_keeps_the_rows_so_far():
    record = run(_config(steps=20, problem_kwargs={"fail_at_step": 5}))
    assert record.status is RunStatus.FAILED
    assert record.error.startswith("RuntimeError: tiny_lsq: planned failure at call 5")
    assert [r["step"] for r in record.steps] == [1, 2, 3, 4]
    assert [e["step"] for e in record.evals] == [0]


def test_lr_given_twice_or_unknown_names_fail_cleanly():
    twice = run(_config(method_kwargs={"lr": 0.2}))
    assert twice.status is RunStatus.FAILED
    assert "method_kwargs sets 'lr', which the run's lr sets already" in twice.error
    unknown = run(_config(method="no-such-method"))
    assert unknown.status is RunStatus.FAILED
    assert "unknown method 'no-such-method'" in unknown.error


def test_lr_none_keeps_the_method_default():
    record = run(_config(method="sgd", lr=None, method_kwargs={"lr": 0.03}, steps=2))
    assert record.status is RunStatus.FINISHED
    assert record.steps[0]["effective_lr"] == 0.03


@pytest.mark.parametrize("method", lo.names())
def test_every_registered_method_runs_through_the_runner(method):
    spec = lo.spec(method)
    kwargs = dict(spec.sample_kwargs[0])
    lr = kwargs.pop(spec.lr_argument, None) if spec.lr_argument else None
    if spec.needs_example_index:
        kwargs.pop("num_examples", None)  # the runner sizes per-example state from the problem
    record = run(_config(method=method, lr=lr, steps=8, method_kwargs=kwargs))
    assert record.status is RunStatus.FINISHED, record.error
    assert len(record.steps) == 8
    assert all(math.isfinite(r["loss"]) and r["grad_l2"] > 0 for r in record.steps)
    assert all(math.isfinite(r["effective_lr"]) for r in record.steps)


@pytest.mark.parametrize("method", [n for n in lo.names() if lo.spec(n).has_eval_mode])
def test_methods_with_eval_mode_are_evaluated_in_eval_mode(method, monkeypatch):
    built: list[TinyInstance] = []

    class Recording(TinyProblem):
        def build(self, seed, **kwargs):
            built.append(super().build(seed, **kwargs))
            return built[-1]

    use_tiny(monkeypatch, Recording())
    cls = lo.spec(method).cls
    for mode in ("train", "eval"):
        original = getattr(cls, mode)

        def spy(self, *args, _original=original, _mode=mode, **kwargs):
            built[0].log.append(_mode)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, mode, spy)
    record = run(_config(method=method, lr=None, steps=4, eval_every=2))
    assert record.status is RunStatus.FINISHED, record.error
    assert built[0].log == ["train"] + ["eval", "evaluate", "train"] * 3


def test_example_indices_are_fed_to_methods_that_declare_the_need(monkeypatch):
    seen: list[torch.Tensor] = []

    class NeedsIndices(lo.AdaptiveOptimizer):
        needs_example_index = True

        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        def _update(self, context):
            seen.append(context.example_indices.clone())
            for group in self.param_groups:
                group["effective_lr"] = group["lr"]
                for p in group["params"]:
                    p.sub_(group["lr"] * p.grad)

    fake = dataclasses.replace(lo.spec("sgd"), name="needs-indices", cls=NeedsIndices)
    fake = dataclasses.replace(fake, needs_example_index=True)
    real_spec = lo.spec
    monkeypatch.setattr(lo, "spec", lambda n: fake if n == "needs-indices" else real_spec(n))
    monkeypatch.setattr(lo, "create", lambda n, params, **kw: lo.spec(n).cls(params, **kw))
    record = run(_config(method="needs-indices", steps=3))
    assert record.status is RunStatus.FINISHED, record.error
    instance = TinyInstance(0)
    stream = instance.batches(torch.Generator().manual_seed(derive_seed(0, "batches")), 8)
    expected = [next(stream).indices for _ in range(3)]
    assert len(seen) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))


def test_schedules_by_name_scale_the_rate():
    record = run(_config(lr=0.1, steps=4, schedule="linear-decay"))
    assert record.status is RunStatus.FINISHED, record.error
    assert [r["effective_lr"] for r in record.steps] == pytest.approx(
        [0.1, 0.075, 0.05, 0.025], rel=1e-15
    )
    bad = run(_config(schedule="sawtooth"))
    assert bad.status is RunStatus.FAILED
    assert "unknown schedule 'sawtooth'; allowed: " in bad.error
    assert "linear-decay" in bad.error


def test_logged_gradient_norms_feed_a_refined_schedule():
    from lrlab.schedules import refine

    first = run(_config(method="adam", lr=0.05, steps=10))
    multipliers = [
        float(m) for m in refine([r["grad_l1"] for r in first.steps], kind="adam", length=10)
    ]
    second = run(
        _config(
            method="adam",
            lr=0.05,
            steps=10,
            schedule="refined-schedule",
            schedule_kwargs={"multipliers": multipliers},
        )
    )
    assert second.status is RunStatus.FINISHED, second.error
    assert [r["effective_lr"] for r in second.steps] == pytest.approx(
        [0.05 * m for m in multipliers], rel=1e-12
    )
    assert second.steps[-1]["effective_lr"] == 0.0  # refined schedules end at zero


@pytest.mark.parametrize("kind", ["synthetic", "logistic", "vision"])
def test_real_problems_of_every_kind_are_deterministic(kind):
    from lrlab.bench.problems import problem_names
    from lrlab.bench.sweep import make_config

    problem = problem_names(kind)[0]
    config = make_config(
        problem=problem, method="clara-adam", lr=1e-2, seed=1, steps=6, eval_every=3
    )
    first = run(config)
    torch.manual_seed(99)
    second = run(config)
    assert first.status is RunStatus.FINISHED, first.error
    assert _untimed(first) == _untimed(second)
    assert [e["step"] for e in first.evals] == [0, 3, 6]


def test_the_record_stores_each_metric_direction_the_problem_declares(monkeypatch):
    # a problem's own declaration wins over the shared table, and the headline over both
    info = dataclasses.replace(
        TinyProblem.info,
        metric="train_loss",
        goal=Goal.MAXIMIZE,  # deliberately odd: the record must follow the problem, not the name
        metric_goals={"distance_to_optimum": Goal.MAXIMIZE},
    )
    monkeypatch.setattr(TinyProblem, "info", info)
    record = run(_config())
    assert record.status is RunStatus.FINISHED
    assert record.metric == "train_loss"
    assert record.goals == {
        "train_loss": Goal.MAXIMIZE,
        "distance_to_optimum": Goal.MAXIMIZE,
        "final_loss": Goal.MINIMIZE,
    }
    assert "final_lr" not in record.goals  # no direction: not guessed
    assert record.goal_of("test_accuracy") is None
    assert metric_goals(info)["test_accuracy"] is Goal.MAXIMIZE


def test_a_diverged_or_failed_run_still_knows_its_directions():
    diverged = run(_config(lr=1e6))
    assert diverged.status is RunStatus.DIVERGED
    assert diverged.goals["distance_to_optimum"] is Goal.MINIMIZE  # from the step-0 evaluation
    failed = run(dataclasses.replace(_config(), problem="no_such_problem"))
    assert failed.status is RunStatus.FAILED and failed.metric is None and failed.goals == {}


def test_run_label_is_the_label_tag_or_the_method():
    assert run_label(_config()) == "sgd"
    assert run_label(_config(tags={"label": "sgd(momentum=0.9)"})) == "sgd(momentum=0.9)"
    assert run_label(_config(tags={"label": ""})) == "sgd"
