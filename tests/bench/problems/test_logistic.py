"""Logistic-regression problems: gradients, splits, batches, data sets, LIBSVM files, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from lrlab.bench.problems import DATA_ENV_VAR, MissingDataError, build, get_problem, problem_names
from lrlab.bench.problems._common import SupervisedInstance
from lrlab.bench.problems._formats import write_libsvm
from lrlab.bench.spec import Goal

from ._fd import check_gradient, first_batch, parameters

BUNDLED = [n for n in problem_names("logistic") if n != "libsvm_logreg"]
SIZES = {"iris_logreg": 150, "wine_logreg": 178, "breast_cancer_logreg": 569, "digits_logreg": 1797}


def make(name: str, seed: int = 0, **kwargs) -> SupervisedInstance:
    instance = build(name, seed, **kwargs)
    assert isinstance(instance, SupervisedInstance)
    return instance


@pytest.fixture
def libsvm_dir(tmp_path):
    """A data root holding a 3-class LIBSVM set ``glass`` (as ``libsvm/glass.scale.bz2``)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 5))
    labels = np.array([1, 2, 7] * 13 + [2], dtype=np.float64)  # LIBSVM's glass labels skip values
    (tmp_path / "libsvm").mkdir()
    write_libsvm(tmp_path / "libsvm" / "glass.scale.bz2", features, labels)
    return tmp_path, features, labels


def test_registered_sets() -> None:
    assert set(BUNDLED) == {*SIZES, "gaussian_logreg", "separable_gaussian_logreg"}
    for name in problem_names("logistic"):
        info = get_problem(name).info
        assert info.metric == "test_accuracy" and info.goal is Goal.MAXIMIZE
    # CLARA: batch 128, 100 epochs of the 80 % training part
    assert get_problem("iris_logreg").info.default_steps == 100  # 120 examples: 1 batch/epoch
    assert get_problem("digits_logreg").info.default_steps == 1200  # 1437: 12 batches/epoch
    assert get_problem("libsvm_logreg").info.default_batch_size == 16


@pytest.mark.parametrize("name", [*BUNDLED, "libsvm_logreg"])
def test_gradient_matches_finite_differences(name: str, libsvm_dir) -> None:
    extra = {"dataset": "glass", "data_dir": str(libsvm_dir[0])} if name == "libsvm_logreg" else {}
    instance = make(name, dtype="float64", **extra)
    # a random point: the seeded default initialisation, shifted
    with torch.no_grad():
        for p in instance.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype))
    check_gradient(instance, first_batch(instance, 16))


def test_loss_is_the_unregularised_multinomial_cross_entropy() -> None:
    instance = make("wine_logreg", dtype="float64")
    batch = first_batch(instance, 8)
    weight, bias = instance.model.weight, instance.model.bias
    logits = batch.inputs @ weight.T + bias
    expected = (torch.logsumexp(logits, 1) - logits[torch.arange(8), batch.targets]).mean()
    torch.testing.assert_close(instance.loss(batch), expected, rtol=1e-14, atol=0)
    assert weight.shape == (3, 13)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_split_is_80_20_disjoint_and_seeded(name: str) -> None:
    n = SIZES[name]
    instance = make(name)
    train_x, _ = instance.train_data
    test_x, _ = instance.test_data
    assert len(test_x) == math.ceil(0.2 * n) and len(train_x) + len(test_x) == n
    assert instance.num_train_examples == len(train_x)
    # no standardisation by default: the rows are the raw scikit-learn rows
    from sklearn import datasets

    loader = getattr(datasets, f"load_{name.removesuffix('_logreg')}")
    raw = torch.tensor(loader(return_X_y=True)[0], dtype=torch.float32)
    rows = torch.cat([train_x, test_x])
    assert torch.equal(rows.sort(dim=0).values, raw.sort(dim=0).values)
    other = make(name, seed=1)
    assert not torch.equal(other.train_data[0], train_x)


def test_batches_are_epochs_of_valid_indices() -> None:
    instance = make("iris_logreg")
    n = instance.num_train_examples  # 120
    stream = instance.batches(torch.Generator().manual_seed(0), 50)
    epoch = [next(stream) for _ in range(3)]  # 50 + 50 + 20
    assert [len(b.indices) for b in epoch] == [50, 50, 20]
    assert torch.equal(torch.cat([b.indices for b in epoch]).sort().values, torch.arange(n))
    train_x, train_y = instance.train_data
    for batch in epoch:
        assert batch.indices.dtype == torch.int64
        assert torch.equal(batch.inputs, train_x[batch.indices])
        assert torch.equal(batch.targets, train_y[batch.indices])
    following = next(stream)  # the next epoch is a fresh permutation
    assert not torch.equal(following.indices, epoch[0].indices)
    full = first_batch(instance, None)
    assert torch.equal(full.indices, torch.arange(n))


def test_evaluate_by_hand() -> None:
    instance = make("iris_logreg", dtype="float64")
    metrics = instance.evaluate()
    assert set(metrics) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    for part in ("train", "test"):
        x, y = getattr(instance, f"{part}_data")
        with torch.no_grad():
            logits = instance.model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        accuracy = float((logits.argmax(1) == y).double().mean())
        assert metrics[f"{part}_loss"] == pytest.approx(loss, rel=1e-12)
        assert metrics[f"{part}_accuracy"] == pytest.approx(accuracy, abs=1e-15)
    assert instance.distance_to_optimum() is None


def test_determinism_and_no_global_rng() -> None:
    state = torch.get_rng_state()
    a, b = make("gaussian_logreg"), make("gaussian_logreg")
    assert torch.equal(state, torch.get_rng_state())
    for p, q in zip(parameters(a), parameters(b), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(a.train_data[0], b.train_data[0])
    sa, sb = (i.batches(torch.Generator().manual_seed(4), 32) for i in (a, b))
    for _ in range(10):
        x, y = next(sa), next(sb)
        assert torch.equal(x.indices, y.indices) and torch.equal(x.inputs, y.inputs)


def test_gaussian_sets_separable_or_not() -> None:
    def fitted_train_accuracy(name: str) -> float:
        instance = make(name, dtype="float64")
        x, y = (t.numpy() for t in instance.train_data)
        model = LogisticRegression(C=1e8, max_iter=5000).fit(x, y)
        return model.score(x, y)

    assert fitted_train_accuracy("separable_gaussian_logreg") == 1.0
    assert fitted_train_accuracy("gaussian_logreg") < 0.9
    small = make("gaussian_logreg", n_samples=50, n_features=3, n_classes=4)
    assert small.model.weight.shape == (4, 3) and small.num_train_examples == 40


def test_standardize_and_zero_init() -> None:
    instance = make("breast_cancer_logreg", standardize=True, init="zeros", dtype="float64")
    x, _ = instance.train_data
    torch.testing.assert_close(x.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(30, dtype=torch.float64))
    assert all(float(p.detach().abs().max()) == 0.0 for p in instance.model.parameters())
    # the zero start gives the uniform prediction: loss log 2 on a binary set
    assert instance.evaluate()["train_loss"] == pytest.approx(math.log(2))


def test_libsvm_set_from_a_directory(libsvm_dir, monkeypatch) -> None:
    root, features, labels = libsvm_dir
    instance = make("libsvm_logreg", dataset="glass", data_dir=str(root), dtype="float64")
    assert instance.model.weight.shape == (3, 5)  # labels {1, 2, 7} -> classes {0, 1, 2}
    x, y = instance.train_data
    tx, ty = instance.test_data
    assert len(x) == 32 and len(tx) == 8
    mapping = {1.0: 0, 2.0: 1, 7.0: 2}
    all_x = torch.cat([x, tx])
    all_y = torch.cat([y, ty])
    for row, label in zip(all_x, all_y, strict=True):
        (match,) = np.flatnonzero((features == row.numpy()).all(1))
        assert mapping[labels[match]] == int(label)
    # the environment variable is the fallback for data_dir
    monkeypatch.setenv(DATA_ENV_VAR, str(root))
    from_env = make("libsvm_logreg", dataset="glass", dtype="float64")
    assert torch.equal(from_env.train_data[0], x)


def test_libsvm_missing_data_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(MissingDataError, match=r"pass data_dir='/path/to/data' or set LRLAB_DATA"):
        build("libsvm_logreg", 0, dataset="letter")
    with pytest.raises(MissingDataError, match=r"does not exist"):
        build("libsvm_logreg", 0, dataset="letter", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(MissingDataError) as error:
        build("libsvm_logreg", 0, dataset="letter", data_dir=str(tmp_path))
    message = str(error.value)
    assert "letter.scale or letter.scale.bz2" in message and "letter.xz" in message
    assert str(tmp_path / "libsvm") in message
    with pytest.raises(ValueError, match=r"libsvm_logreg needs dataset=NAME"):
        build("libsvm_logreg", 0, data_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\), got 1.0"),
        ({"test_fraction": 0}, r"test_fraction must be in \(0, 1\), got 0"),
        ({"init": "he"}, r"init must be one of 'default', 'zeros', got 'he'"),
        ({"standardize": "yes"}, r"standardize must be True or False"),
        ({"hidden": 3}, r"has no argument 'hidden'"),
    ],
)
def test_bad_arguments_are_named(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        build("iris_logreg", 0, **kwargs)
