"""Refined schedules in the lab: from a stored record, the two-pass sweep, resume, report, CLI."""

from __future__ import annotations

import concurrent.futures
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lrlab.bench import sweep as sweep_module
from lrlab.bench.cli import main
from lrlab.bench.figures import refinement_figure
from lrlab.bench.refinement import (
    TWO_PASS_METHODS,
    pass_two_config,
    refined_schedule_from_record,
    smoothed_norms,
)
from lrlab.bench.report import build_report, default_metric_choice
from lrlab.bench.runner import run
from lrlab.bench.spec import RunConfig, RunRecord, RunStatus
from lrlab.bench.store import Store
from lrlab.bench.sweep import MethodEntry, ProblemEntry, Study, StudyError, run_sweep
from lrlab.schedules import refine
from tests.bench._tiny import use_tiny

# -- from a record ------------------------------------------------------------------------------


def _record(l2: list[float], l1: list[float], status: RunStatus = RunStatus.FINISHED) -> RunRecord:
    config = RunConfig(problem="p", method="sgd", lr=0.1, seed=0, steps=len(l2))
    steps = [
        {"step": t + 1, "loss": 1.0, "effective_lr": 0.1, "grad_l2": a, "grad_l1": b}
        for t, (a, b) in enumerate(zip(l2, l1, strict=True))
    ]
    return RunRecord(
        run_id=config.run_id, config=config, status=status, steps=steps, evals=[], final={}
    )


@pytest.mark.parametrize("count", [2, 7, 300])
def test_constant_norms_in_a_record_give_exactly_linear_decay(count: int) -> None:
    record = _record([2.5] * count, [40.0] * count)
    linear = np.arange(count - 1, -1, -1, dtype=np.float64) / (count - 1)
    for kind in ("sgd", "adam"):
        assert np.array_equal(refined_schedule_from_record(record, kind), linear)
    # resampled to a new length, still linear decay (up to interpolation rounding)
    np.testing.assert_allclose(
        refined_schedule_from_record(record, "sgd", 11), np.linspace(1.0, 0.0, 11), atol=1e-15
    )


def test_the_kind_picks_the_norm() -> None:
    """SGD reads grad_l2 (weights 1/G^2), Adam grad_l1 (weights 1/G): by hand, no smoothing."""
    record = _record([1.0, 2.0, 1.0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        refined_schedule_from_record(record, "sgd", smoothing=0.0), [1.0, 0.2, 0.0], rtol=1e-15
    )
    assert np.array_equal(
        refined_schedule_from_record(record, "adam", smoothing=0.0), [1.0, 0.5, 0.0]
    )
    np.testing.assert_allclose(
        refined_schedule_from_record(record, "sgd", smoothing=0.0, norm="grad_l1"),
        [1.0, 0.5, 0.0],
        rtol=1e-15,
    )


def test_bad_records_are_refused_with_a_clear_error() -> None:
    diverged = _record([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], RunStatus.DIVERGED)
    with pytest.raises(ValueError, match=r"is diverged, not finished.*allow_unfinished"):
        refined_schedule_from_record(diverged)
    assert refined_schedule_from_record(diverged, allow_unfinished=True)[-1] == 0.0
    old = _record([1.0, 1.0], [1.0, 1.0])
    del old.steps[1]["grad_l1"]
    with pytest.raises(ValueError, match=r"no 'grad_l1' at step 2"):
        refined_schedule_from_record(old, "adam")
    with pytest.raises(ValueError, match=r"kind must be one of 'sgd', 'adam', got 'adamw'"):
        refined_schedule_from_record(old, "adamw")  # type: ignore[arg-type]


def test_smoothed_norms_are_what_refine_weighs() -> None:
    norms = np.abs(np.random.default_rng(0).standard_normal(200)) + 0.1
    norms[5] = np.inf  # dropped by both
    assert np.array_equal(
        refine(smoothed_norms(norms, 0.1), smoothing=0.0), refine(norms, smoothing=0.1)
    )


# -- studies ------------------------------------------------------------------------------------


def _study(lrs: tuple[float, ...] = (0.05,), seeds: tuple[int, ...] = (0, 1)) -> Study:
    return Study(
        name="two-pass",
        problems=(ProblemEntry(name="tiny_lsq", steps=12),),
        methods=(
            MethodEntry(name="refined-sgd"),
            MethodEntry(name="refined-adam", kwargs={"betas": [0.8, 0.99]}),
            MethodEntry(name="sgd", schedule="cosine-decay"),
        ),
        lrs=lrs,
        seeds=seeds,
        tags={"study": "two-pass"},
    )


def test_a_two_pass_method_expands_to_its_first_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    use_tiny(monkeypatch)
    configs = _study().configs()
    assert len(configs) == 3 * 2
    by_label = {(c.tags["label"], c.seed): c for c in configs}
    first = by_label[("sgd+linear-decay", 0)]
    assert (first.method, first.schedule, dict(first.schedule_kwargs)) == (
        "sgd",
        "linear-decay",
        {},
    )
    assert first.tags == {
        "study": "two-pass",
        "label": "sgd+linear-decay",
        "pass": 1,
        "two_pass": "refined-sgd",
        "refined_label": "refined-sgd",
    }
    adam = by_label[("adam(betas=[0.8,0.99])+linear-decay", 1)]
    assert adam.method == "adam" and adam.tags["refined_label"] == "refined-adam(betas=[0.8,0.99])"
    cosine = by_label[("sgd+cosine-decay", 0)]
    assert cosine.schedule == "cosine-decay" and "pass" not in cosine.tags
    bad = Study(
        name="bad",
        problems=(ProblemEntry(name="tiny_lsq"),),
        methods=(MethodEntry(name="refined-sgd", schedule="cosine-decay"),),
        lrs=(0.1,),
        seeds=(0,),
    )
    with pytest.raises(StudyError, match=r"'refined-sgd' runs pass 1 under 'linear-decay'"):
        bad.configs()


# -- the two-pass sweep -------------------------------------------------------------------------


class _Inline(concurrent.futures.Executor):
    """Runs each submitted run at once in this process (so ``tiny_lsq`` exists), counting them."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        config = args[0]
        self.ran.append(config.run_id)
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(run(config))
        return future


@pytest.fixture
def inline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    use_tiny(monkeypatch)
    ran: list[str] = []
    monkeypatch.setattr(sweep_module, "make_executor", lambda *a, **k: _Inline(ran))
    return ran


def _by_pass(records: list[RunRecord]) -> dict[object, list[RunRecord]]:
    passes: dict[object, list[RunRecord]] = {1: [], 2: [], None: []}
    for record in records:
        passes[record.config.tags.get("pass")].append(record)
    return passes


def test_the_two_pass_sweep_stores_both_passes_and_refines_from_pass_one(
    tmp_path: Path, inline: list[str]
) -> None:
    configs = _study(lrs=(0.05, 1e5)).configs()  # lr 1e5 diverges: no pass 2 for it
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep(configs, store, show_progress=False)
        passes = _by_pass(store.load_records())
    firsts, seconds = passes[1], passes[2]
    assert len(firsts) == 2 * 2 * 2 and len(passes[None]) == 2 * 2
    diverged = [r for r in firsts if r.status is RunStatus.DIVERGED]
    assert {r.config.lr for r in diverged} == {1e5} and len(diverged) == 4
    assert len(seconds) == 4 and all(r.status is RunStatus.FINISHED for r in seconds)
    assert summary.total == 12 + 4 and summary.counts["finished"] + summary.counts["diverged"] == 16
    assert len(summary.not_refined) == 4 and all("diverged" in s for s in summary.not_refined)
    by_id = {r.run_id: r for r in firsts}
    for second in seconds:
        first = by_id[second.config.tags["refined_from"]]
        method = TWO_PASS_METHODS[first.config.tags["two_pass"]]
        norm = "grad_l2" if method.name == "refined-sgd" else "grad_l1"
        expected = refine([row[norm] for row in first.steps], kind=method.kind, length=12)
        multipliers = second.config.schedule_kwargs["multipliers"]
        assert multipliers == expected.tolist()  # exactly refine() of the logged norms
        assert second.config.schedule == "refined-schedule"
        assert second.config.tags["label"] == first.config.tags["refined_label"]
        assert second.config.tags["study"] == "two-pass" and second.config.tags["pass"] == 2
        # everything else as in pass 1; the schedule was applied
        for field in ("problem", "method", "lr", "seed", "steps", "method_kwargs"):
            assert getattr(second.config, field) == getattr(first.config, field)
        lr = second.config.lr
        assert [row["effective_lr"] for row in second.steps] == [lr * m for m in multipliers]
        assert second.config == pass_two_config(first)  # rebuilt from the stored record
    assert len(inline) == len(set(inline)) == 16


def test_a_sweep_killed_after_pass_one_resumes_with_pass_two_only(
    tmp_path: Path, inline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = _study(seeds=(0,)).configs()

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the sweep dies between the passes

    with Store(tmp_path / "s.sqlite") as store:
        original = sweep_module.second_pass_configs
        monkeypatch.setattr(sweep_module, "second_pass_configs", killed)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(configs, store, show_progress=False)
        stored = {r["run_id"]: r["stored_at"] for r in store.query()}
        assert len(stored) == 3 and not _by_pass(store.load_records())[2]
        first_round = list(inline)
        monkeypatch.setattr(sweep_module, "second_pass_configs", original)
        summary = run_sweep(configs, store, show_progress=False)
        assert summary.skipped == 3 and summary.counts["finished"] == 2
        assert not set(inline[len(first_round) :]) & set(first_round)  # pass 1 not rerun
        after = {r["run_id"]: r["stored_at"] for r in store.query()}
        assert {k: after[k] for k in stored} == stored and len(after) == 5
        again = run_sweep(configs, store, show_progress=False)
        assert again.skipped == 5 and sum(again.counts.values()) == 0


def test_the_report_shows_norms_and_the_derived_schedule(tmp_path: Path, inline: list[str]) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        run_sweep(_study(seeds=(0,)).configs(), store, show_progress=False)
        records = store.load_records()
    files = build_report(records, tmp_path / "report")
    assert (tmp_path / "report" / "figures" / "tiny_lsq-refinement.png") in files.figures
    markdown = files.markdown.read_text()
    assert "![tiny_lsq-refinement](figures/tiny_lsq-refinement.png)" in markdown
    assert "schedules refined from a previous run" in markdown
    assert "schedules refined from a previous run" in files.html.read_text()
    # no two-pass runs, no figure
    choice = default_metric_choice("tiny_lsq", records)
    plain = [r for r in records if r.config.tags.get("pass") != 2]
    assert refinement_figure("tiny_lsq", plain, choice) is None


def test_the_cli_prints_and_saves_a_stored_runs_refined_schedule(
    tmp_path: Path, inline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.sqlite"
    config = _study(seeds=(0,)).configs()[1]  # refined-adam's pass 1
    record = run(config)
    with Store(path) as store:
        store.write(record)
    out_json, out_csv = tmp_path / "m.json", tmp_path / "m.csv"
    argv = ["refine", "--store", str(path), "--run-id", record.run_id[:12]]
    assert main([*argv, "--out", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "refined schedule (adam: grad_l1 norms)" in text and "peak at step" in text
    expected = refined_schedule_from_record(record, "adam").tolist()
    assert json.loads(out_json.read_text())["multipliers"] == expected
    assert main([*argv, "--kind", "sgd", "--length", "5", "--out", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [float(r["multiplier"]) for r in rows] == refined_schedule_from_record(
        record, "sgd", 5
    ).tolist()
    assert main(["refine", "--store", str(path), "--run-id", "zz"]) == 2
    assert "no run in" in capsys.readouterr().err
