"""Caps: a few bytes of input never ask for gigabytes (LIBSVM width, sweep grid size)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_svmlight_file

from lrlab.bench.problems import _formats
from lrlab.bench.problems._formats import read_libsvm
from tests.reliability._lab import clean_failure, cli


@pytest.mark.parametrize(
    ("text", "match"),
    [
        # 15 bytes announcing a 1 x 2e9 matrix (14.9 GiB dense)
        (
            "1 2000000000:1\n",
            r"1 examples x 2000000000 features would be a dense float64 array "
            r"of 14\.9 GiB, more than the reader's cap of 2\.0 GiB",
        ),
        # past the parser's index range (the 44.7 GiB request of the issue)
        ("1 6000000000:1\n", r"feature index is too large|bad feature"),
    ],
)
def test_a_tiny_libsvm_file_cannot_ask_for_a_huge_array(tmp_path, text, match):
    path = tmp_path / "wide.svm"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_libsvm(path)


def test_the_libsvm_cap_counts_rows_times_width(tmp_path):
    path = tmp_path / "set.svm"
    path.write_text("".join(f"{i % 2} {i + 1}:1\n" for i in range(100)))  # 100 x 100
    features, labels = read_libsvm(path, max_dense_bytes=100 * 100 * 8)
    assert features.shape == (100, 100) and labels.shape == (100,)
    with pytest.raises(ValueError, match=r"100 examples x 100 features"):
        read_libsvm(path, max_dense_bytes=100 * 100 * 8 - 1)


def test_libsvm_is_read_by_scikit_learn(tmp_path, monkeypatch):
    path = tmp_path / "set.svm"
    path.write_text("1 1:0.5 3:2\n-1 2:1.5\n")
    calls = []
    import sklearn.datasets

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return load_svmlight_file(*args, **kwargs)

    monkeypatch.setattr(sklearn.datasets, "load_svmlight_file", spy)
    features, labels = read_libsvm(path)
    assert calls and calls[0]["zero_based"] is False
    np.testing.assert_array_equal(features, [[0.5, 0, 2], [0, 1.5, 0]])
    np.testing.assert_array_equal(labels, [1, -1])
    assert _formats.MAX_DENSE_BYTES == 2 * 1024**3


def test_a_huge_sweep_grid_is_refused_before_it_is_built(monkeypatch):
    base = ("sweep", "--problems", "synthetic_sphere", "--methods", "sgd", "adam", "--dry-run")
    code, _, err = cli(*base, "--lrs", "1e-6:1:1000", "--seeds", "200")
    assert clean_failure(code, err, "sweep"), err
    assert "has 400,000 runs, more than the cap of 100,000" in err
    assert "LRLAB_MAX_RUNS=400000" in err
    monkeypatch.setenv("LRLAB_MAX_RUNS", "1199")
    code, _, err = cli(*base, "--lrs", "1e-6:1:30", "--seeds", "20")
    assert clean_failure(code, err, "sweep") and "1,200 runs, more than the cap of 1,199" in err
    monkeypatch.setenv("LRLAB_MAX_RUNS", "1200")
    code, out, err = cli(*base, "--lrs", "1e-6:1:30", "--seeds", "20")
    assert code == 0 and "1200 runs" in out, err
    monkeypatch.setenv("LRLAB_MAX_RUNS", "10")
    code, _, err = cli(*base, "--lrs", "1e-6:1:1000000000000")  # never expanded
    assert clean_failure(code, err, "sweep") and "argument --lrs" in err
    monkeypatch.setenv("LRLAB_MAX_RUNS", "lots")
    code, _, err = cli(*base)
    assert clean_failure(code, err, "sweep") and "LRLAB_MAX_RUNS='lots'" in err


@pytest.mark.parametrize(
    ("lrs", "seeds", "message"),
    [
        ('"1e-6:1:1000000000000"', "1", "has 1,000,000,000,000 values, more than 1,000,000"),
        ('"1e-3"', "1000000000000", "seeds '1000000000000' has 1,000,000,000,000 values"),
        ('"1e-6:1:1000"', "1000", "has 2,000,000 runs, more than the cap of 100,000"),
    ],
)
def test_a_huge_study_file_is_refused_before_it_is_built(tmp_path, lrs, seeds, message):
    study = tmp_path / "huge.toml"
    study.write_text(
        f'name = "huge"\nproblems = ["synthetic_sphere"]\nmethods = ["sgd", "adam"]\n'
        f"lrs = {lrs}\nseeds = {seeds}\nsteps = 2\n"
    )
    for argv in (
        ("sweep", "--study", str(study), "--dry-run"),
        ("study", str(study), "--no-run", "--docs", str(tmp_path / "docs")),
    ):
        code, _, err = cli(*argv)
        assert clean_failure(code, err, argv[0]), err
        assert message in err, err
