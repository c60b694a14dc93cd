"""Studies (``lrlab study``): presets + commentary -> sweep, report, generated docs page.

The machinery runs end to end on a tiny two-part study written here (8 short runs); every shipped
preset is checked statically (it parses, names only registered problems and methods, and its
commentary's placeholders refer to runs the preset has).
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import pytest

import lrlab.optim as lo
from lrlab.bench import metrics
from lrlab.bench.cli import main
from lrlab.bench.presets import load_preset, preset_names
from lrlab.bench.problems import problem_names
from lrlab.bench.runner import run
from lrlab.bench.spec import Goal, RunStatus
from lrlab.bench.store import Store
from lrlab.bench.study import (
    check_commentary,
    fill_placeholders,
    load_study_source,
    run_study,
)
from lrlab.bench.sweep import Study, StudyError, make_config

TINY = """
name = "tiny"
title = "a tiny two-part study"
seeds = 2
[[parts]]
name = "a"
title = "fixed LR"
lrs = [0.5]
problems = [{ name = "synthetic_sphere", steps = 10, kwargs = { clamp = true, max_grad_norm = 5 } }]
methods = ["sgd", { name = "clara-sgd", kwargs = { unit_step = true }, label = "SGD CLARA us" }]
[parts.report]
metric = "distance_to_optimum"
figures = ["curves"]
[[parts]]
name = "b"
seeds = 1
lrs = [1e-3, 1.0]
problems = [{ name = "iris_logreg", steps = 15 }]
methods = ["sgd", { name = "dadapt-adam", lr_argument = "d0" }]
[parts.report]
tolerance = 0.05
figures = ["sensitivity"]
"""

COMMENTARY = """
Intro. Sphere SGD reaches {{value part=a problem=synthetic_sphere method=sgd}}; CLARA's worst
seed {{value problem=synthetic_sphere method="SGD CLARA us" stat=max fmt=.6g}}.
D-Adaptation on iris: best {{best problem=iris_logreg method=dadapt-adam[d0=lr] fmt=.6g}} at
{{best_lr problem=iris_logreg method=dadapt-adam[d0=lr]}}; SGD at 1e-3
{{value problem=iris_logreg method=sgd lr=0.001 fmt=.6g}}, width
{{width problem=iris_logreg method=sgd}}.

{{results}}

Closing words.
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny study run once: (outcome, doc text, store path, tmp dir)."""
    root = tmp_path_factory.mktemp("study")
    (root / "tiny.toml").write_text(TINY)
    (root / "tiny.md").write_text(COMMENTARY)
    outcome = run_study(
        str(root / "tiny.toml"),
        store=root / "tiny.sqlite",
        docs=root / "docs",
        report_dir=root / "report",
        workers=1,
        show_progress=False,
    )
    return outcome, outcome.doc.read_text(), root


def _records(root: Path):
    with Store(root / "tiny.sqlite", readonly=True) as store:
        return store.load_records()


def test_study_runs_every_config_and_writes_docs(tiny):
    outcome, doc, root = tiny
    assert outcome.runs == 8 and outcome.ran == 8 and outcome.missing == 0
    records = _records(root)
    assert {r.config.tags["part"] for r in records} == {"a", "b"}
    # the commentary comes first, the generated results where {{results}} stood, provenance last
    assert doc.index("Intro.") < doc.index("## Results") < doc.index("Closing words.")
    assert doc.index("Closing words.") < doc.index("## How this was produced")
    assert "{{" not in doc and "}}" not in doc
    assert "### Part a: fixed LR" in doc and "### Part b" in doc
    # figures: only the kinds each part asks for, copied next to the doc and linked from it
    names = sorted(p.name for p in outcome.figures)
    assert names == ["a-synthetic_sphere-curves.png", "b-iris_logreg-sensitivity.png"]
    for path in outcome.figures:
        assert path.read_bytes().startswith(b"\x89PNG")
        assert f"(tiny/{path.name})" in doc
    # the full HTML reports, one per part
    assert all((d / "report.html").is_file() for d in outcome.report_dirs)
    # provenance: command, measured time, machine, versions
    assert "Command: `lrlab study" in doc
    assert re.search(r"Measured wall time of the sweep: \d+ s", doc)
    assert "Machine: " in doc and "torch " in doc and "lrlab " in doc


def test_numbers_in_the_doc_are_the_stores(tiny):
    _, doc, root = tiny
    records = _records(root)
    sphere = [r for r in records if r.config.problem == "synthetic_sphere"]
    clara = [r for r in sphere if r.config.tags.get("label") == "SGD CLARA us"]
    worst = max(r.final["distance_to_optimum"] for r in clara)
    assert f"CLARA's worst\nseed {worst:.6g}." in doc
    iris = [r for r in records if r.config.problem == "iris_logreg"]
    dadapt = [r for r in iris if r.config.method == "dadapt-adam"]
    lr, best = metrics.best_tuned(dadapt, "test_accuracy", Goal.MAXIMIZE)[
        ("iris_logreg", "dadapt-adam[d0=lr]")
    ]
    assert f"best {best:.6g} at\n{lr:g};" in doc
    (sgd,) = [r for r in iris if r.config.method == "sgd" and r.config.lr == 1e-3]
    assert f"SGD at 1e-3\n{sgd.final['test_accuracy']:.6g}, width" in doc
    # a generated table cell: part a's sgd column (2 seeds: mean ± std)
    values = [r.final["distance_to_optimum"] for r in sphere if r.config.method == "sgd"]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    row = next(line for line in doc.splitlines() if line.startswith("| synthetic_sphere |"))
    assert f"| {mean:.3g} ± {std:.2g} |" in row
    # part b's per-problem table: one row per method, one column per LR, the stored values
    rows = [line for line in doc.splitlines() if line.startswith("| dadapt-adam[d0=lr] |")]
    assert rows[-1].count("|") == 4  # label + 2 LRs
    for run_record in dadapt:
        assert f"{run_record.final['test_accuracy']:.3g}" in doc


def test_lr_argument_sends_the_lr_to_that_argument(tiny):
    _, _, root = tiny
    dadapt = [r for r in _records(root) if r.config.method == "dadapt-adam"]
    assert {r.config.lr_argument for r in dadapt} == {"d0"}
    assert {r.config.lr for r in dadapt} == {1e-3, 1.0}
    # D-Adaptation Adam's first step uses d = d0 (lr 1): the two initial LRs give first
    # effective LRs 1000 times apart, as d0 = lr says
    first = {r.config.lr: r.steps[0]["effective_lr"] for r in dadapt}
    assert first[1.0] / first[1e-3] == pytest.approx(1000.0, rel=1e-6)
    # the same config run directly reproduces the stored record (the field is part of the id)
    record = dadapt[0]
    again = run(record.config)
    assert again.run_id == record.run_id
    assert again.final == record.final


def test_a_config_without_lr_argument_keeps_its_id():
    config = make_config(problem="iris_logreg", method="sgd", lr=0.1, seed=0, steps=3)
    assert "lr_argument" not in config.to_dict()
    moved = make_config(
        problem="iris_logreg", method="dadapt-adam", lr=0.1, seed=0, steps=3, lr_argument="d0"
    )
    assert moved.to_dict()["lr_argument"] == "d0"
    with pytest.raises(StudyError, match=r"lr_argument 'd00'.*no such constructor argument"):
        make_config(
            problem="iris_logreg", method="dadapt-adam", lr=0.1, seed=0, steps=3, lr_argument="d00"
        )


def test_second_invocation_resumes_and_keeps_the_measured_time(tiny, capsys):
    _, doc, root = tiny
    timing = json.loads((root / "tiny.sqlite.timing.json").read_text())["sweeps"]
    assert len(timing) == 1 and timing[0]["runs"] == 8
    code = main(
        [
            "study",
            str(root / "tiny.toml"),
            "--store",
            str(root / "tiny.sqlite"),
            "--docs",
            str(root / "docs2"),
            "--report-dir",
            str(root / "report2"),
            "--quiet",
        ]
    )
    assert code == 0
    assert "8 runs stored (0 run now)" in capsys.readouterr().out
    # nothing ran, so no new timing entry; the doc quotes the first invocation's time
    assert len(json.loads((root / "tiny.sqlite.timing.json").read_text())["sweeps"]) == 1
    doc2 = (root / "docs2" / "tiny.md").read_text()
    assert f"{timing[0]['wall_time_s']:.0f} s" in doc2
    results = lambda text: text[text.index("## Results") : text.index("Closing words.")]  # noqa: E731
    assert results(doc2) == results(doc)


def test_placeholders_that_match_nothing_fail(tiny):
    _, _, root = tiny
    source = load_study_source(str(root / "tiny.toml"))
    parts = {p.name: p for p in source.study.parts}
    records = {name: [r for r in _records(root) if r.config.tags["part"] == name] for name in parts}
    with pytest.raises(StudyError, match="no stored run of that problem and method"):
        fill_placeholders("{{value problem=iris_logreg method=adam}}", parts, records)
    with pytest.raises(StudyError, match=r"several initial LRs .*add lr="):
        fill_placeholders("{{value problem=iris_logreg method=sgd}}", parts, records)
    with pytest.raises(StudyError, match="first word must be one of"):
        fill_placeholders("{{mean problem=iris_logreg method=sgd}}", parts, records)
    with pytest.raises(StudyError, match="bad option 'lrs=1'"):
        fill_placeholders("{{value problem=iris_logreg method=sgd lrs=1}}", parts, records)
    assert fill_placeholders(
        "{{value problem=iris_logreg method=sgd lr=1 stat=seeds}}", parts, records
    ).startswith("1")


def test_a_value_of_a_metric_without_a_direction_is_its_mean(tiny):
    # final_lr has no better direction; a value placeholder is a plain mean and must not ask
    # for one (the lossgrad study's commentary quotes final LRs), a best or a width must
    _, _, root = tiny
    source = load_study_source(str(root / "tiny.toml"))
    parts = {p.name: p for p in source.study.parts}
    records = {name: [r for r in _records(root) if r.config.tags["part"] == name] for name in parts}
    chosen = [
        r
        for rs in records.values()
        for r in rs
        if r.config.problem == "iris_logreg" and r.config.method == "sgd" and r.config.lr == 1
    ]
    expected = sum(r.final["final_lr"] for r in chosen) / len(chosen)
    text = "{{value problem=iris_logreg method=sgd lr=1 metric=final_lr fmt=.6g}}"
    assert fill_placeholders(text, parts, records).strip() == f"{expected:.6g}"
    with pytest.raises(StudyError, match=r"'final_lr' .* has no known direction"):
        fill_placeholders("{{best problem=iris_logreg method=sgd metric=final_lr}}", parts, records)


def test_a_report_metric_the_runs_did_not_record_lists_the_recorded_ones(tiny):
    _, _, root = tiny
    (root / "typo.toml").write_text(TINY.replace("tolerance = 0.05", 'metric = "test_acuracy"'))
    with pytest.raises(StudyError, match=r"'test_acuracy' \(did you mean 'test_accuracy'\?\)"):
        run_study(
            str(root / "typo.toml"),
            store=root / "tiny.sqlite",
            docs=root / "typo-docs",
            report_dir=root / "typo-report",
            run=False,
            show_progress=False,
        )


def test_commentary_is_checked_before_running(tmp_path):
    (tmp_path / "s.toml").write_text(TINY)
    (tmp_path / "s.md").write_text("{{value part=b problem=iris_logreg method=SGD}}")
    assert check_commentary(load_study_source(str(tmp_path / "s.toml"))) == [
        "{{value part=b problem=iris_logreg method=SGD}}: no run of problem 'iris_logreg' "
        "with method label 'SGD'"
    ]
    with pytest.raises(StudyError, match="method label 'SGD'"):
        run_study(str(tmp_path / "s.toml"), store=tmp_path / "s.sqlite", show_progress=False)
    assert not (tmp_path / "s.sqlite").exists()  # nothing ran


def test_parts_inherit_and_override():
    import tomllib

    study = Study.from_mapping(tomllib.loads(TINY))
    a, b = study.parts
    assert (a.seeds, b.seeds) == ((0, 1), (0,))
    assert a.report["figures"] == ["curves"] and b.report["tolerance"] == 0.05
    assert len(study.configs()) == len(a.configs()) + len(b.configs()) == 8
    assert all(c.tags["part"] == "a" for c in a.configs())
    labels = {c.tags.get("label", c.method) for c in b.configs()}
    assert labels == {"sgd", "dadapt-adam[d0=lr]"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("[[parts]]\nname = 'a'\nmethods = ['sgd']\nproblems = ['iris_logreg']\n", "two parts"),
        ("[[parts]]\nname = 'c d'\nmethods = ['sgd']\nproblems = ['iris_logreg']\n", "a part name"),
        ("[report]\nmetrics = 'x'\n", "unknown key 'metrics'"),
        ("[report]\nfigures = ['pie']\n", "unknown figure 'pie'"),
        ("[report]\ntolerance = -1\n", "'tolerance' must be >= 0"),
        ("[report]\nwidth_reference = []\n", "'width_reference' must be a non-empty list"),
        ("[report]\nwidth_reference = ['sgd', 3]\n", "'width_reference' must be a non-empty"),
    ],
)
def test_bad_study_files_say_what_is_wrong(change, message):
    import tomllib

    if change.startswith("[report]"):  # a top-level table, before the first part
        text = TINY.replace("[[parts]]", change + "[[parts]]", 1)
    else:  # one more part
        text = TINY + change
    with pytest.raises(StudyError, match=message):
        Study.from_mapping(tomllib.loads(text))


def test_method_lrs_none_runs_the_default_lr():
    import tomllib

    study = Study.from_mapping(
        tomllib.loads(
            textwrap.dedent(
                """
                name = "x"
                lrs = [0.1, 1.0]
                seeds = 1
                problems = ["iris_logreg"]
                methods = ["sgd", { name = "dadapt-adam", lrs = "none" },
                           { name = "adam", lrs = [0.01] }]
                """
            )
        )
    )
    lrs = {}
    for config in study.configs():
        lrs.setdefault(config.method, []).append(config.lr)
    assert lrs == {"sgd": [0.1, 1.0], "dadapt-adam": [None], "adam": [0.01]}


def test_sweep_overrides_apply_to_every_part(tmp_path, capsys):
    (tmp_path / "t.toml").write_text(TINY)
    code = main(["sweep", "--study", str(tmp_path / "t.toml"), "--seeds", "3", "--dry-run"])
    assert code == 0
    # part a: 2 methods x 1 LR x 3 seeds; part b: 2 methods x 2 LRs x 3 seeds
    assert "tiny: 18 runs" in capsys.readouterr().out


@pytest.mark.parametrize("name", preset_names())
def test_shipped_presets_reference_registered_problems_and_methods(name):
    study = load_preset(name)
    configs = study.configs()
    assert configs
    problems, methods = set(problem_names()), set(lo.names())
    for config in configs:
        assert config.problem in problems
        assert config.method in methods
    source = load_study_source(name)
    assert check_commentary(source) == []
    if name in ("clara", "lossgrad", "lrfree"):  # the studies have hand-written commentary
        assert source.commentary.strip()


def test_clara_preset_matches_the_paper_setup():
    study = load_preset("clara")
    parts = {p.name: p for p in study.parts}
    assert set(parts) == {"a-adam", "a-sgd", "b"}
    adam = parts["a-adam"].configs()
    assert {c.lr for c in adam} == {100.0} and {c.steps for c in adam} == {20}
    assert all(c.problem_kwargs == {"clamp": True, "max_grad_norm": 5.0} for c in adam)
    claras = {json.dumps(dict(c.method_kwargs)) for c in adam if c.method == "clara-adam"}
    assert sorted((json.loads(k) for k in claras), key=len) == [
        {"d": 0.5106, "unit_step": True},  # lrlab's noise reference for D = 2
        {"d": 0.5106, "mu": 0.5958, "unit_step": True},  # the official table's
    ]
    assert {c.steps for c in parts["a-sgd"].configs()} == {100}
    grid = parts["b"].configs()
    assert sorted({c.lr for c in grid}) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert {c.seed for c in grid} == set(range(5))
    assert {c.problem for c in grid} == {
        "iris_logreg",
        "wine_logreg",
        "breast_cancer_logreg",
        "digits_logreg",
        "digits_mlp",
    }
    dadapt = {c.lr_argument for c in grid if c.method == "dadapt-adam"}
    assert dadapt == {"d0"}
    variants = {(c.method, c.method_kwargs.get("unit_step", False)) for c in grid}
    assert {("clara-sgd", False), ("clara-sgd", True), ("clara-adam", False)} <= variants
    assert {("clara-adam", True), ("agadam", False), ("sgd", False), ("adam", False)} <= variants


def test_a_study_without_parts_is_its_own_part(tmp_path):
    (tmp_path / "flat.toml").write_text(
        textwrap.dedent(
            """
            name = "flat"
            lrs = [0.1]
            seeds = 1
            problems = [{ name = "synthetic_sphere", steps = 3 }]
            methods = ["sgd"]
            """
        )
    )
    (tmp_path / "flat.md").write_text("SGD: {{value problem=synthetic_sphere method=sgd}}.\n")
    outcome = run_study(
        str(tmp_path / "flat.toml"),
        store=tmp_path / "flat.sqlite",
        docs=tmp_path / "docs",
        report_dir=tmp_path / "report",
        workers=1,
        show_progress=False,
    )
    with Store(tmp_path / "flat.sqlite", readonly=True) as store:
        (record,) = store.load_records()
    assert record.status is RunStatus.FINISHED
    doc = outcome.doc.read_text()
    assert f"SGD: {record.final['distance_to_optimum']:.3g}." in doc
    assert "### Part" not in doc
