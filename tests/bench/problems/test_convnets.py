"""The leaderboard's convnets: ResNet-BN with augmentation, colour digits, a 1-D CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lrlab.bench.problems import build, get_problem, problem_names
from lrlab.bench.problems._common import SupervisedInstance
from lrlab.bench.problems._formats import write_cifar_batch
from lrlab.bench.problems.convnets import AugmentedInstance, augment, color_digits
from lrlab.bench.problems.vision import load_images
from lrlab.bench.spec import Goal

from ._fd import check_gradient, first_batch, parameters

NEW = ("colordigits_resnet", "cifar10_resnet", "mnist1d_cnn")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(
            root / name, rng.integers(0, 256, (4, 3072), dtype=np.uint8), [1, 2, 3, 4]
        )
    return root.parent


def test_registered_with_headline_accuracy() -> None:
    assert set(NEW) <= set(problem_names("vision"))
    for name in NEW:
        info = get_problem(name).info
        assert (info.metric, info.goal) == ("test_accuracy", Goal.MAXIMIZE)
    assert get_problem("colordigits_resnet").info.default_batch_size == 32
    assert get_problem("mnist1d_cnn").info.default_steps == 30 * 32


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("colordigits_resnet", {"width": 0.25}), ("mnist1d_cnn", {"width": 0.25})],
)
def test_gradient_matches_finite_differences(name, kwargs) -> None:
    instance = build(name, 0, dtype="float64", **kwargs)
    check_gradient(instance, first_batch(instance, 6))


def test_gradient_on_cifar_files(cifar_root) -> None:
    instance = build("cifar10_resnet", 0, dtype="float64", width=0.25, data_dir=str(cifar_root))
    check_gradient(instance, first_batch(instance, 4))


def test_resnet_architecture() -> None:
    model = build("colordigits_resnet", 0, width=1.0).model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [16, 16, 16, 32, 32, 32, 64, 64, 64]
    assert all(c.bias is None for c in convs) and len(norms) == len(convs)
    assert sum(p.numel() for p in model.parameters()) == 78_042
    # the projection shortcuts are 1x1 convolutions with stride 2
    assert [(c.kernel_size, c.stride) for c in convs if c.kernel_size == (1, 1)] == [
        ((1, 1), (2, 2)),
        ((1, 1), (2, 2)),
    ]
    assert all(torch.equal(n.running_var, torch.ones_like(n.running_var)) for n in norms)
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in norms)
    assert sum(p.numel() for p in build("colordigits_resnet", 0).model.parameters()) == 19_954
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10)


def test_conv1d_architecture() -> None:
    instance = build("mnist1d_cnn", 0)
    convs = [m for m in instance.model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (1, 32, 5, 1),
        (32, 32, 3, 2),
        (32, 32, 3, 2),
    ]
    assert sum(p.numel() for p in instance.model.parameters()) == 9_610
    batch = first_batch(instance, 7)
    assert batch.inputs.shape == (7, 1, 40)
    mnist1d = load_images("mnist1d")
    assert torch.equal(batch.inputs[:, 0], mnist1d.images[batch.indices].float())


def test_color_digits_are_a_fixed_ten_class_colour_set() -> None:
    data = color_digits()
    assert data.images.shape == (4000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.test_images.shape == (1000, 3, 32, 32)
    assert set(data.labels.tolist()) == set(range(10)) == set(data.test_labels.tolist())
    counts = torch.bincount(data.labels, minlength=10)
    assert int(counts.min()) > 300  # roughly balanced, like MNIST
    # colour: the channels differ (not a grey image repeated)
    assert float((data.images[:, 0].float() - data.images[:, 1].float()).abs().mean()) > 5
    again = color_digits.__wrapped__()  # generation is deterministic (fixed seed, no global RNG)
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)


def test_augmentation_translates_and_flips_from_the_generator() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).view(2, 1, 4, 4) + 1
    out = augment(images, torch.Generator().manual_seed(3), pad=1, flip=True)
    again = augment(images, torch.Generator().manual_seed(3), pad=1, flip=True)
    assert torch.equal(out, again)
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(2):
        windows = [
            padded[i, :, t : t + 4, s : s + 4].flip(-1)
            if mirror
            else padded[i, :, t : t + 4, s : s + 4]
            for t in range(3)
            for s in range(3)
            for mirror in (False, True)
        ]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(augment(images, torch.Generator(), pad=0, flip=False), images)
    # over many draws every offset and both orientations occur
    seen = set()
    generator = torch.Generator().manual_seed(0)
    one = images[:1]
    for _ in range(200):
        result = augment(one, generator, pad=1, flip=True)[0]
        for t in range(3):
            for s in range(3):
                window = nn.functional.pad(one, (1, 1, 1, 1))[0, :, t : t + 4, s : s + 4]
                if torch.equal(result, window):
                    seen.add((t, s, False))
                if torch.equal(result, window.flip(-1)):
                    seen.add((t, s, True))
    assert len(seen) == 18


def test_training_batches_are_augmented_and_evaluation_is_not() -> None:
    instance = build("colordigits_resnet", 0, width=0.25, eval_limit=8)
    assert isinstance(instance, AugmentedInstance)
    batch = first_batch(instance, 16)
    images, labels = instance.train_data
    plain = instance.prepare(images[batch.indices])
    assert torch.equal(batch.targets, labels[batch.indices])
    assert not torch.equal(batch.inputs, plain)  # translated
    again = first_batch(build("colordigits_resnet", 0, width=0.25, eval_limit=8), 16)
    assert torch.equal(batch.inputs, again.inputs)
    instance.model.eval()
    metrics = instance.evaluate()
    with torch.no_grad():
        x, y = instance.test_data
        logits = instance.model(instance.prepare(x[:8]))
    assert metrics["test_loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y[:8])))


def test_inputs_are_standardised_per_channel() -> None:
    instance = build("colordigits_resnet", 0, width=0.25)
    images, _ = instance.train_data
    prepared = instance.prepare(images).double()
    torch.testing.assert_close(
        prepared.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        prepared.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0
    )


def test_determinism_and_no_global_rng(cifar_root) -> None:
    for name, kwargs in (
        ("colordigits_resnet", {"width": 0.25}),
        ("mnist1d_cnn", {}),
        ("cifar10_resnet", {"width": 0.25, "data_dir": str(cifar_root)}),
    ):
        state = torch.get_rng_state()
        a, b = build(name, 0, **kwargs), build(name, 0, **kwargs)
        assert torch.equal(state, torch.get_rng_state())
        for p, q in zip(parameters(a), parameters(b), strict=True):
            assert torch.equal(p, q)
        assert not torch.equal(parameters(build(name, 1, **kwargs))[0], parameters(a)[0])
        sa, sb = (i.batches(torch.Generator().manual_seed(1), 4) for i in (a, b))
        for _ in range(3):
            x, y = next(sa), next(sb)
            assert torch.equal(x.inputs, y.inputs) and torch.equal(x.indices, y.indices)


def test_cifar10_resnet_reads_the_files_and_flips(cifar_root) -> None:
    instance = build("cifar10_resnet", 0, width=0.25, data_dir=str(cifar_root))
    assert isinstance(instance, SupervisedInstance)
    assert instance.num_train_examples == 20 and len(instance.test_data[0]) == 4
    assert get_problem("cifar10_resnet").defaults["flip"] is True
    assert get_problem("colordigits_resnet").defaults["flip"] is False


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"pad must be in \[0, 16\], got 20"):
        build("colordigits_resnet", 0, pad=20)
    with pytest.raises(ValueError, match=r"flip must be True or False, got 1"):
        build("colordigits_resnet", 0, flip=1)
    with pytest.raises(ValueError, match=r"has no argument 'pad'"):
        build("mnist1d_cnn", 0, pad=2)
