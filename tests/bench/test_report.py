"""The report on a hand-made store: every number the summary shows is set here by hand.

The store (written through the real :class:`~lrlab.bench.store.Store`) holds two problems, five
methods, three seeds and three initial LRs; the final values are chosen so that the expected
leaderboard, ties, robustness widths and verdict can be worked out in the comments.

toy_min (final_loss, lower is better), mean over seeds at each LR:

    method   1e-3   1e-2                 1e-1
    adam     1.12   1.05 (0.98..1.12)    1 of 3 seeds diverged
    steady   1.5    1.00 (0.99..1.01)    1.3
    fragile  2.0    diverged             diverged
    broken   diverged everywhere
    lrfree   run once at its defaults (no LR): 1.07

toy_acc (test_accuracy, higher is better):

    method   1e-3   1e-2     1e-1
    adam     0.80   0.91     0.86
    steady   0.60   0.70     0.65
    fragile  0.96   diverged diverged
    broken   diverged everywhere
    lrfree   defaults: 0.89
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html as html_lib
import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lrlab.bench import figures, summary
from lrlab.bench.cli import main
from lrlab.bench.report import MetricChoice, build_report
from lrlab.bench.spec import Goal, RunConfig, RunRecord, RunStatus
from lrlab.bench.store import Store

SEEDS = (0, 1, 2)
LRS = (1e-3, 1e-2, 1e-1)
D = None  # a diverged seed
VALUES: dict[str, dict[str, dict[float | None, tuple[float | None, ...]]]] = {
    "toy_min": {
        "adam": {1e-3: (1.10, 1.12, 1.14), 1e-2: (0.98, 1.05, 1.12), 1e-1: (1.5, 1.6, D)},
        "steady": {1e-3: (1.5, 1.5, 1.5), 1e-2: (0.99, 1.00, 1.01), 1e-1: (1.3, 1.3, 1.3)},
        "fragile": {1e-3: (2.0, 2.1, 1.9), 1e-2: (D, D, D), 1e-1: (D, D, D)},
        "broken": dict.fromkeys(LRS, (D, D, D)),
        "lrfree": {None: (1.06, 1.07, 1.08)},
    },
    "toy_acc": {
        "adam": {1e-3: (0.80, 0.80, 0.80), 1e-2: (0.90, 0.91, 0.92), 1e-1: (0.85, 0.86, 0.87)},
        "steady": {1e-3: (0.60, 0.60, 0.60), 1e-2: (0.70, 0.70, 0.70), 1e-1: (0.65, 0.65, 0.65)},
        "fragile": {1e-3: (0.95, 0.96, 0.97), 1e-2: (D, D, D), 1e-1: (D, D, D)},
        "broken": dict.fromkeys(LRS, (D, D, D)),
        "lrfree": {None: (0.88, 0.89, 0.90)},
    },
}
CHOICES = {
    "toy_min": MetricChoice("final_loss", Goal.MINIMIZE),
    "toy_acc": MetricChoice("test_accuracy", Goal.MAXIMIZE),
}
STEPS = 12
_NOPE = MetricChoice("nope", Goal.MINIMIZE)


def _record(problem: str, method: str, lr: float | None, seed: int, value: float | None):
    """A run whose training loss decays towards ``value`` (an accuracy: towards 1 - value)."""
    config = RunConfig(problem=problem, method=method, lr=lr, seed=seed, steps=STEPS)
    end = value if problem == "toy_min" else 1.0 - value if value is not None else None
    rows = []
    for step in range(1, STEPS + 1):
        loss = (end if end is not None else 1.0) + 2.0 / step + 0.01 * seed
        rows.append(
            {"step": float(step), "loss": loss, "effective_lr": (lr or 0.5) / math.sqrt(step)}
        )
        if value is None and step == 4:
            rows[-1]["loss"] = 1e9
            break
    final: dict[str, float] = {}
    if value is not None:  # both problems record the final loss, only toy_acc an accuracy
        final = {"final_loss": value if problem == "toy_min" else rows[-1]["loss"]}
        final.update({"test_accuracy": value} if problem == "toy_acc" else {})
    return RunRecord(
        run_id=config.run_id,
        config=config,
        status=RunStatus.FINISHED if value is not None else RunStatus.DIVERGED,
        steps=rows,
        evals=[],
        final=final,
        diverged_at_step=None if value is not None else 4,
        wall_time_s=0.01,
        versions={"lrlab": "test", "torch": "x"},
    )


def _write_store(path: Path) -> Path:
    with Store(path) as store:
        for problem, methods in VALUES.items():
            for method, grid in methods.items():
                for lr, seeds in grid.items():
                    for seed, value in zip(SEEDS, seeds, strict=True):
                        store.write(_record(problem, method, lr, seed, value))
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_store(tmp_path_factory.mktemp("store") / "hand.sqlite")


@pytest.fixture(scope="module")
def records(store_path: Path) -> list[RunRecord]:
    with Store(store_path, readonly=True) as store:
        return store.load_records()


def _choice(problem, _records):
    return CHOICES[problem]


@pytest.fixture(scope="module")
def report(records, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report")
    return build_report(records, out, title="hand-made study", metric_choice=_choice)


# -- the summary's numbers ----------------------------------------------------------------------


def test_leaderboard_ranks_by_the_documented_rule(records) -> None:
    board = summary.leaderboard(records, CHOICES)
    ranks = {
        problem: {m: board.cells[(problem, m)].rank for m in VALUES[problem]} for problem in VALUES
    }
    # toy_min: steady 1.00 < adam 1.05 < lrfree 1.07 < fragile 2.0; broken never finished
    assert ranks["toy_min"] == {"steady": 1, "adam": 2, "lrfree": 3, "fragile": 4, "broken": None}
    # toy_acc (higher is better): fragile 0.96 > adam 0.91 > lrfree 0.89 > steady 0.70
    assert ranks["toy_acc"] == {"fragile": 1, "adam": 2, "lrfree": 3, "steady": 4, "broken": None}
    # the best-tuned LR skips LRs where a seed diverged (adam's 1e-1 on toy_min is never chosen)
    assert board.cells[("toy_min", "adam")].lr == 1e-2
    assert board.cells[("toy_acc", "fragile")].lr == 1e-3
    # mean rank, unranked = last place (5): adam (2+2)/2, fragile (4+1)/2, steady (1+4)/2,
    # lrfree 3, broken 5; the 2.5 tie is broken by first places (one each), then by name
    assert board.mean_rank == {
        "adam": 2.0, "fragile": 2.5, "steady": 2.5, "lrfree": 3.0, "broken": 5.0
    }  # fmt: skip
    assert board.methods == ["adam", "fragile", "steady", "lrfree", "broken"]


def test_equal_means_share_a_rank(tmp_path) -> None:
    runs = [
        _record("toy_min", method, 1e-2, seed, value)
        for method, value in (("a", 1.0), ("b", 1.0), ("c", 2.0))
        for seed in SEEDS
    ]
    board = summary.leaderboard(runs, CHOICES)
    assert [board.cells[("toy_min", m)].rank for m in "abc"] == [1, 1, 3]


def test_means_equal_up_to_rounding_share_a_rank() -> None:
    # two seeds each, both means 1406 / 1440 in exact arithmetic, two different floats: the
    # report showed rank 1 and rank 2 for the same result (0.9764)
    a, b = (0.975, 0.9777777777777777), (0.9666666666666667, 0.9861111111111112)
    assert sum(a) / 2 != sum(b) / 2
    runs = [
        _record("toy_acc", method, 1e-2, seed, value)
        for method, values in (("a", a), ("b", b), ("c", (0.5, 0.5)))
        for seed, value in enumerate(values)
    ]
    board = summary.leaderboard(runs, CHOICES)
    assert [board.cells[("toy_acc", m)].rank for m in "abc"] == [1, 1, 3]
    assert not board.cells[("toy_acc", "a")].tied and not board.cells[("toy_acc", "b")].tied


def _numpy_interval(values, level=0.95, resamples=10_000, seed=0):
    """The percentile bootstrap written out again with numpy, for the comparison."""
    sample = np.array(values, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(sample), size=(resamples, len(sample)))
    means = sample[draws].mean(axis=1)
    return tuple(np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))


def test_intervals_and_ties(records) -> None:
    board = summary.leaderboard(records, CHOICES)
    for (problem, method), cell in board.cells.items():
        if cell.rank is None:
            assert cell.values == () and not cell.tied
            continue
        seeds = VALUES[problem][method][cell.lr]
        assert cell.values == pytest.approx(seeds)
        assert cell.mean == pytest.approx(np.mean(seeds))
        assert (cell.low, cell.high) == pytest.approx(_numpy_interval(seeds))
        eps = 1e-12  # the mean itself is rounded (3 x 0.7 averages to 0.6999999999999998)
        assert min(seeds) <= cell.low <= cell.mean + eps and cell.mean - eps <= cell.high
        assert cell.high <= max(seeds)
    # ties, worked out: on toy_min the leader steady's interval lies inside [0.99, 1.01]; adam's
    # seeds (0.98, 1.05, 1.12) resample to all-0.98 with probability 1/27 > 2.5 %, so its
    # interval starts at 0.98 and overlaps; lrfree's starts at >= 1.06 and does not
    tied = {key: cell.tied for key, cell in board.cells.items()}
    assert tied[("toy_min", "adam")] is True
    assert tied[("toy_min", "lrfree")] is False and tied[("toy_min", "fragile")] is False
    # on toy_acc the leader fragile (0.95..0.97) is clear of adam's (0.90..0.92): no tie
    assert not any(tied[("toy_acc", m)] for m in VALUES["toy_acc"])
    # the rule itself, against an independent overlap check of the numpy intervals
    for problem in VALUES:
        leader = next(c for (p, _), c in board.cells.items() if p == problem and c.rank == 1)
        low, high = _numpy_interval(leader.values)
        for (p, method), cell in board.cells.items():
            if p == problem and cell.rank not in (None, 1):
                other = _numpy_interval(cell.values)
                assert cell.tied == (other[0] <= high and low <= other[1]), method


def test_robustness_cells(records) -> None:
    cells = summary.robustness(records, CHOICES, tolerance=0.1)
    # toy_min: best run 0.99 (steady), so mean <= 1.089 qualifies: steady and adam at 1e-2 only
    # toy_acc: best run 0.97 (fragile), so mean >= 0.873 qualifies: adam 1e-2, fragile 1e-3
    widths = {key: cell.width for key, cell in cells.items()}
    assert widths == {
        ("toy_min", "adam"): 1.0, ("toy_min", "steady"): 1.0, ("toy_min", "fragile"): 0.0,
        ("toy_min", "broken"): 0.0, ("toy_min", "lrfree"): 0.0,
        ("toy_acc", "adam"): 1.0, ("toy_acc", "steady"): 0.0, ("toy_acc", "fragile"): 1.0,
        ("toy_acc", "broken"): 0.0, ("toy_acc", "lrfree"): 0.0,
    }  # fmt: skip
    assert cells[("toy_min", "adam")].divergence_rate == pytest.approx(1 / 9)
    assert cells[("toy_min", "fragile")].divergence_rate == pytest.approx(6 / 9)
    assert cells[("toy_acc", "broken")].divergence_rate == 1.0
    # defaults: adam's default LR is 1e-3 (its constructor's), lrfree ran without an LR; the
    # hand-made names "steady"/"fragile" are not registered, so they have no default LR
    assert cells[("toy_acc", "adam")].default_mean == pytest.approx(0.80)
    assert cells[("toy_acc", "adam")].default_lr == 1e-3
    assert cells[("toy_min", "lrfree")].default_mean == pytest.approx(1.07)
    assert cells[("toy_min", "steady")].default_values == ()


def test_verdict_names_the_most_reliable_method(records) -> None:
    board, robust, verdict = summary.summarize(records, CHOICES, tolerance=0.1)
    # tuned adam: 1.05 (toy_min), 0.91 (toy_acc). lrfree at defaults: 1.07 (1.9 % worse) and
    # 0.89 (2.2 % worse): within 10 % on 2 of 2. adam at its default 1e-3: 1.12 (6.7 %) and
    # 0.80 (12 %): 1 of 2.
    assert verdict.baseline == "adam"
    assert (verdict.reliable_method, verdict.within, verdict.problems) == ("lrfree", 2, 2)
    assert verdict.text.startswith("With no tuning, the most reliable method here was lrfree")
    assert "within 10 % of tuned adam on 2 of 2 problems" in verdict.text
    assert "Tuned, adam ranked best overall" in verdict.text
    assert "most fragile was broken: 100 %" in verdict.text
    # at a tolerance of 1 % nobody is within on both; lrfree still has the smallest shortfall
    verdict_tight = summary.verdict(board, robust, records, tolerance=0.01)
    assert (verdict_tight.reliable_method, verdict_tight.within) == ("lrfree", 0)


def test_metric_direction_comes_from_one_place(records) -> None:
    # the registry: a registered problem's declared directions
    assert summary.metric_goal("iris_logreg", "test_accuracy") is Goal.MAXIMIZE
    assert summary.metric_goal("synthetic_rosenbrock", "distance_to_optimum") is Goal.MINIMIZE
    # an unregistered problem: the shipped metrics' table, by exact name
    assert summary.metric_goal("toy_acc", "test_accuracy") is Goal.MAXIMIZE
    assert summary.metric_goal("toy_acc", "test_loss") is Goal.MINIMIZE
    # what the runs stored wins over both
    stored = dataclasses.replace(records[0], goals={"test_loss": Goal.MAXIMIZE})
    assert summary.metric_goal("iris_logreg", "test_loss", [stored]) is Goal.MAXIMIZE
    # never a guess from the name: an unknown metric is an error naming the known ones
    with pytest.raises(ValueError, match="'my_accuracy' of problem 'toy_acc' has no known"):
        summary.metric_goal("toy_acc", "my_accuracy")


def test_variants_of_one_method_share_a_row() -> None:
    """A learning-rate-free method swept over d0 and run at its defaults is one method."""
    sweep = RunConfig(
        problem="toy_min", method="dadapt-adam", lr=1e-3, seed=0, steps=STEPS,
        lr_argument="d0", tags={"label": "dadapt-adam[d0=lr]"},
    )  # fmt: skip
    runs = [
        dataclasses.replace(_record("toy_min", "dadapt-adam", None, 0, 1.0)),
        dataclasses.replace(_record("toy_min", "x", 1e-3, 0, 0.5), config=sweep),
    ]
    grouped = summary.group_variants(runs)
    assert [summary.method_label(r) for r in grouped] == ["dadapt-adam", "dadapt-adam"]
    assert grouped[0] is runs[0] and grouped[1].config.lr_argument == "d0"
    board = summary.leaderboard(grouped, CHOICES)
    assert board.methods == ["dadapt-adam"] and board.cells[("toy_min", "dadapt-adam")].lr == 1e-3


def test_the_baseline_is_the_more_tuned_of_adam_and_adamw() -> None:
    runs = [_record("toy_min", "adam", lr, 0, 1.0) for lr in (1e-3, 1e-2)]
    assert summary.baseline_method(runs) == "adam"
    runs += [_record("toy_min", "adamw", lr, 0, 1.0) for lr in (1e-3, 3e-3, 1e-2)]
    assert summary.baseline_method(runs) == "adamw"
    assert summary.baseline_method([_record("toy_min", "sgd", 1e-3, 0, 1.0)]) is None


def test_an_unknown_metric_lists_the_valid_ones(records, tmp_path) -> None:
    with pytest.raises(KeyError, match=r"'acuracy' \(did you mean 'test_accuracy'\?\)") as error:
        summary.check_metric(records, "acuracy")
    assert "final_loss" in str(error.value) and "test_accuracy" in str(error.value)
    # a metric only one problem recorded is named with each problem's own metrics
    with pytest.raises(KeyError, match="not recorded for toy_min"):
        summary.check_metric(records, "test_accuracy")
    summary.check_metric(records, "final_loss")  # both have it
    with pytest.raises(KeyError, match="valid names are"):
        build_report(records, tmp_path / "out", metric_choice=lambda p, r: _NOPE)
    assert not (tmp_path / "out").exists()  # nothing written


# -- the command line ---------------------------------------------------------------------------


def test_lrlab_report_rejects_unknown_names_and_ends_with_the_verdict(store_path, capsys) -> None:
    code = main(["report", "--store", str(store_path), "--metric", "acuracy"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "argument --metric: unknown metric 'acuracy'" in err and "test_accuracy" in err
    code = main(["report", "--store", str(store_path), "--problems", "toy_mni"])
    _, err = capsys.readouterr()
    assert code == 2 and "toy_mni" in err and "toy_acc, toy_min" in err
    argv = ["report", "--store", str(store_path), "--problems", "toy_acc"]
    code = main([*argv, "--metric", "test_accuracy"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.rstrip().splitlines()[-1].startswith("Verdict: With no tuning")
    assert "*1: 0.96" in out  # fragile's best cell starred in the terminal leaderboard


# -- the page -----------------------------------------------------------------------------------


def test_every_figure_is_written_as_svg_pdf_and_png(report) -> None:
    from PIL import Image

    names = sorted(path.stem for path in report.figures)
    assert names == sorted(
        [f"{p}-{kind}" for p in VALUES for kind in ("sensitivity", "lr-trajectories", "curves")]
        + ["performance-profile"]
    )
    assert sorted(p.name for p in report.vector_figures) == sorted(
        f"{n}.{kind}" for n in names for kind in ("svg", "pdf")
    )
    markdown = report.markdown.read_text()
    page = report.html.read_text()
    for png in report.figures:
        svg, pdf = png.with_suffix(".svg"), png.with_suffix(".pdf")
        assert png.read_bytes().startswith(b"\x89PNG")
        assert pdf.read_bytes().startswith(b"%PDF")
        assert "<svg" in svg.read_text()[:2000]
        with Image.open(png) as image:
            assert image.info["dpi"] == pytest.approx((200, 200), abs=0.1)
        assert f"(figures/{png.name})" in markdown and f"(figures/{svg.name})" in markdown
        assert f'alt="{png.stem}"' in page
    assert page.count("<figcaption>") == len(report.figures)
    # the page embeds each figure at 100 px per inch (half the file) and links the files
    embedded = re.findall(r'alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    for name, data in embedded:
        folder = report.figures[0].parent
        with (
            Image.open(io.BytesIO(base64.b64decode(data))) as small,
            Image.open(folder / f"{name}.png") as full,
        ):
            assert small.size == (full.width // 2, full.height // 2)
        assert f'href="figures/{name}.svg"' in page and f'href="figures/{name}.pdf"' in page
    assert len(embedded) == len(report.figures)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_tables_as_csv_and_latex(report, records) -> None:
    names = {path.name for path in report.tables}
    for table in ("leaderboard", "robustness", "best-tuned", "time-to-target", "provenance"):
        assert {f"{table}.csv", f"{table}.tex"} <= names
    folder = report.tables[0].parent
    rows = list(csv.DictReader(io.StringIO((folder / "leaderboard.csv").read_text())))
    cell = next(r for r in rows if r["problem"] == "toy_min" and r["method"] == "adam")
    assert float(cell["mean"]) == pytest.approx(1.05) and cell["rank"] == "2"
    assert (float(cell["ci_low"]), float(cell["ci_high"])) == pytest.approx(
        _numpy_interval((0.98, 1.05, 1.12))
    )
    assert cell["tied_with_best"] == "True"
    latex = (folder / "leaderboard.tex").read_text()
    assert "\\begin{tabular}" in latex and "toy\\_min" in latex and "\\textbf{1: " in latex


def test_summary_first_then_contents_then_figures(report) -> None:
    page = report.html.read_text()
    verdict = page.index('class="verdict"')
    board = page.index('id="leaderboard"')
    robust = page.index('id="robustness"')
    contents = page.index('id="contents"')
    first_figure = page.index("<figure>")
    assert verdict < board < robust < contents < first_figure
    for anchor in re.findall(r'<a href="#([^"]+)">', page):
        assert f'id="{anchor}"' in page
    assert {"toy_acc", "toy_min", "provenance"} <= set(re.findall(r'href="#([^"]+)"', page))
    assert html_lib.escape(report.verdict) in page


def test_markdown_and_html_summaries_agree(report) -> None:
    markdown = report.markdown.read_text()
    page = report.html.read_text()
    assert report.verdict in markdown
    assert markdown.index(report.verdict) < markdown.index("## Contents") < markdown.index("![")
    block = markdown.split("### Leaderboard")[1].split("### Robustness")[0]
    md_rows = [
        [c.strip().strip("*") for c in line.strip("|").split(" | ")]
        for line in block.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    table = page.split('id="leaderboard"')[1].split("</table>")[0]
    html_rows = [
        [
            html_lib.unescape(re.sub(r"</?strong>", "", c))
            for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", row)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", table)
    ]
    assert md_rows == html_rows and len(md_rows) == 1 + len(VALUES["toy_min"])


def test_a_store_where_every_run_diverged_still_reports(records, tmp_path) -> None:
    broken = [r for r in records if r.config.method == "broken" and r.config.problem == "toy_acc"]
    files = build_report(broken, tmp_path, metric_choice=_choice)
    assert [p.stem for p in files.figures] == ["toy_acc-sensitivity", "toy_acc-lr-trajectories"]
    assert "| broken | 1.00 | diverged |" in files.markdown.read_text()
    assert "No method was run at its defaults" in files.verdict


def test_empty_records_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="records is empty"):
        build_report([], tmp_path)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is required for the browser check (make test installs it)"
    return path


def test_html_in_a_real_browser(report) -> None:
    """Loads in headless Chromium, every figure decodes, no console errors."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.html.resolve().as_uri())
        page.wait_for_load_state("load")
        sizes = page.eval_on_selector_all(
            "figure img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])"
        )
        title = page.title()
        links = page.eval_on_selector_all(
            "nav a", "links => links.map(a => !!document.getElementById(a.hash.slice(1)))"
        )
        browser.close()
    assert title == "hand-made study"
    assert len(sizes) == len(report.figures)
    assert all(complete and width > 100 for complete, width in sizes), sizes
    assert links and all(links)
    assert errors == []


# -- the figures --------------------------------------------------------------------------------


def _diverged_marks(figure) -> tuple[list[float], list[tuple[float, float]]]:
    """The x of every diverged mark, and (mark's display y, its axes' top) pairs."""
    figure.canvas.draw()
    xs, heights = [], []
    for axis in figure.axes:
        top = axis.get_window_extent().y1
        for line in axis.get_lines():
            if line.get_gid() == "diverged":
                points = line.get_transform().transform(line.get_xydata())
                xs += list(line.get_xdata())
                heights += [(y, top) for y in points[:, 1]]
    return xs, heights


def _data_lines_inside_limits(figure) -> None:
    for axis in figure.axes:
        low, high = axis.get_ylim()
        for line in axis.get_lines():
            if line.get_gid() != "diverged" and line.get_transform() == axis.transData:
                y = np.asarray(line.get_ydata(), dtype=float)
                assert np.all((y >= low) & (y <= high)), (line.get_label(), y, (low, high))


@pytest.mark.parametrize("problem", ["toy_acc", "toy_min"])
def test_diverged_runs_are_drawn_above_the_data_range(records, problem) -> None:
    mine = [r for r in records if r.config.problem == problem]
    styles = figures.method_styles(sorted(VALUES[problem]))
    drawn = figures.sensitivity_figure(problem, mine, CHOICES[problem], styles)
    try:
        xs, heights = _diverged_marks(drawn.figure)
        # every LR at which any seed diverged, per method: fragile 1e-2, 1e-1; broken all three;
        # adam 1e-1 on toy_min (one seed of three)
        expected = [1e-2, 1e-1] + list(LRS) + ([1e-1] if problem == "toy_min" else [])
        assert sorted(xs) == pytest.approx(sorted(expected))
        assert heights and all(y > top for y, top in heights)
        _data_lines_inside_limits(drawn.figure)
        # the mean line of fragile stops at the only LR where every seed finished
        (line,) = [ln for ln in drawn.figure.axes[0].get_lines() if ln.get_label() == "fragile"]
        assert list(line.get_xdata()) == [1e-3]
        legend = drawn.figure.axes[0].get_legend()
        assert figures.DIVERGED_LABEL in [t.get_text() for t in legend.get_texts()]
    finally:
        import matplotlib.pyplot as plt

        plt.close(drawn.figure)


def test_small_multiples_also_keep_diverged_runs_outside(records) -> None:
    """Six methods: one panel each; an accuracy that diverged is never drawn as a top score."""
    mine = [r for r in records if r.config.problem == "toy_acc"]
    extra = [
        _record("toy_acc", "extra", lr, seed, None if lr == 1e-1 else 0.5)
        for lr in LRS
        for seed in SEEDS
    ]
    styles = figures.method_styles([*VALUES["toy_acc"], "extra"])
    drawn = figures.sensitivity_figure("toy_acc", mine + extra, CHOICES["toy_acc"], styles)
    try:
        panels = [axis for axis in drawn.figure.axes if axis.axison]
        assert len(panels) == 6
        xs, heights = _diverged_marks(drawn.figure)
        assert sorted(xs) == pytest.approx(sorted([1e-2, 1e-1, *LRS, 1e-1]))
        assert all(y > top for y, top in heights)
        _data_lines_inside_limits(drawn.figure)
        labels = [t.get_text() for legend in drawn.figure.legends for t in legend.get_texts()]
        assert figures.DIVERGED_LABEL in labels
    finally:
        import matplotlib.pyplot as plt

        plt.close(drawn.figure)


def test_curves_are_smoothed_with_integer_step_axes(records) -> None:
    mine = [r for r in records if r.config.problem == "toy_min"]
    drawn = figures.curves_figure(
        "toy_min", mine, CHOICES["toy_min"], figures.method_styles(VALUES["toy_min"])
    )
    try:
        drawn.figure.canvas.draw()
        steady = next(a for a in drawn.figure.axes if a.get_title().startswith("steady"))
        # three seeds at steady's best LR 1e-2: loss = value + 2 / step + 0.01 seed
        raw = np.mean([[v + 2 / s + 0.01 * k for s in range(1, STEPS + 1)]
                       for k, v in enumerate((0.99, 1.00, 1.01))], axis=0)  # fmt: skip
        weight = figures.ema_weight(STEPS)
        lines = [ln for ln in steady.get_lines() if ln.get_color() != figures._CONTEXT]
        faint, bold = lines
        assert np.asarray(faint.get_ydata()) == pytest.approx(raw)
        assert faint.get_alpha() < 0.5
        assert np.asarray(bold.get_ydata()) == pytest.approx(figures.ema(list(raw), weight))
        for axis in drawn.figure.axes:
            if axis.axison:
                ticks = [
                    t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]
                ]
                assert ticks and all(float(t).is_integer() for t in ticks)
        broken = next(a for a in drawn.figure.axes if a.get_title() == "broken")
        assert "every seed finished" in broken.texts[0].get_text()
    finally:
        import matplotlib.pyplot as plt

        plt.close(drawn.figure)


def test_ema_by_hand() -> None:
    # w = 0.5: s1 = 0.5 * 1 / (1 - 0.5) = 1; s2 = (0.25 + 0) / (1 - 0.25) = 1/3
    assert figures.ema([1.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3])
    assert figures.ema([3.0] * 5, 0.9) == pytest.approx([3.0] * 5)  # no pull towards zero
    with pytest.raises(ValueError, match="weight"):
        figures.ema([1.0], 1.0)


def test_every_registered_method_gets_its_own_stable_look() -> None:
    import lrlab.optim as lo

    names = lo.names()
    styles = figures.method_styles(names)
    looks = {(s["color"], s["linestyle"], s["marker"]) for s in styles.values()}
    assert len(looks) == len(names) >= 31
    # the same method looks the same whatever else is in the report
    assert figures.method_styles(["adam", "sgd"])["adam"] == styles["adam"]
    # and labels beyond the registry stay distinct: 40 made-up names plus every method
    many = figures.method_styles([*names, *(f"variant-{k}" for k in range(40))])
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in many.values()}) == len(many)
    assert figures.method_styles(list(reversed(names))) == styles
