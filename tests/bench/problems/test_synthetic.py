"""Synthetic problems: CLARA's setup values, gradients, optima, noise, box, clipping, registry."""

from __future__ import annotations

import math

import pytest
import torch

from lrlab.bench.problems import (
    UnknownNameError,
    build,
    get_problem,
    problem_names,
)
from lrlab.bench.problems.synthetic import SyntheticInstance
from lrlab.bench.spec import Batch, Goal

from ._fd import check_gradient, first_batch, parameters

SYNTHETIC = problem_names("synthetic")
SMALL = {"synthetic_quadratic": {"dim": 50}, "synthetic_noisy_quadratic": {"dim": 50}}

# specs/path_and_loss_methods.md 1.8(a), typed in by hand: start, optimum, box.
CLARA_SETUP = {
    "synthetic_sphere": ((1, 1), (0, 0), (-5, 5)),
    "synthetic_ellipsoid": ((1, 1), (0, 0), (-5, 5)),
    "synthetic_noisy_sphere": ((1, 1), (0, 0), (-5, 5)),
    "synthetic_noisy_ellipsoid": ((1, 1), (0, 0), (-5, 5)),
    "synthetic_rosenbrock": ((-1, 1), (1, 1), (-2, 2)),
    "synthetic_himmelblau": ((-4, 4), (3, 2), (-6, 6)),
    "synthetic_beale": ((1, 1), (3, 0.5), (-4.5, 4.5)),
    "synthetic_eggholder": ((500, 300), (512, 404.2319), (0, 600)),
    "synthetic_camel": ((1, 1), (0, 0), (-3, 3)),
    "synthetic_ackley": ((2, 2), (0, 0), (-5, 5)),
}


def make(name: str, **kwargs) -> SyntheticInstance:
    instance = build(name, 0, **{**SMALL.get(name, {}), **kwargs})
    assert isinstance(instance, SyntheticInstance)
    return instance


def set_point(instance: SyntheticInstance, point: torch.Tensor) -> None:
    with torch.no_grad():
        instance.model.x.copy_(point)


def noise_free_gradient(instance: SyntheticInstance) -> torch.Tensor:
    x = instance.model.x
    (gradient,) = torch.autograd.grad(instance.landscape.function(x), x)
    return gradient


def test_the_clara_set_and_the_nd_problems_are_registered() -> None:
    assert set(CLARA_SETUP) | {"synthetic_quadratic", "synthetic_noisy_quadratic"} == set(SYNTHETIC)
    for name in SYNTHETIC:
        info = get_problem(name).info
        assert info.kind == "synthetic"
        assert info.metric == "distance_to_optimum" and info.goal is Goal.MINIMIZE
        assert info.default_batch_size is None


@pytest.mark.parametrize("name", sorted(CLARA_SETUP))
def test_start_optimum_and_box_are_claras(name: str) -> None:
    start, optimum, box = CLARA_SETUP[name]
    landscape = make(name).landscape
    assert landscape.start.tolist() == list(start)
    assert landscape.optimum.tolist() == pytest.approx(list(optimum), abs=1e-4)
    assert landscape.box == box
    assert make(name).model.x.dtype == torch.float64


def test_values_at_the_start_points_by_hand() -> None:
    # rosenbrock(-1, 1) = 100 (1 - 1)^2 + (1 + 1)^2; himmelblau(-4, 4) = 9^2 + 5^2;
    # beale(1, 1) = 1.5^2 + 2.25^2 + 2.625^2; camel(1, 1) = 2 - 1.05 + 1/6 + 1 + 1;
    # ellipsoid(1, 1) = 1 + 1e3; ackley(2, 2) = -20 exp(-0.4) - exp(1) + 20 + e.
    expected = {
        "synthetic_sphere": 2.0,
        "synthetic_ellipsoid": 1001.0,
        "synthetic_rosenbrock": 4.0,
        "synthetic_himmelblau": 106.0,
        "synthetic_beale": 14.203125,
        "synthetic_camel": 2 - 1.05 + 1 / 6 + 2,
        "synthetic_ackley": 20 - 20 * math.exp(-0.4),
        "synthetic_eggholder": -347 * math.sin(math.sqrt(597)) - 500 * math.sin(math.sqrt(153)),
    }
    for name, value in expected.items():
        assert make(name).evaluate()["loss"] == pytest.approx(value, rel=1e-14), name


@pytest.mark.parametrize("name", SYNTHETIC)
def test_gradient_matches_finite_differences_at_a_random_point(name: str) -> None:
    instance = make(name)
    x0 = instance.landscape.start
    # a random point near the start (scaled to the box for Eggholder)
    spread = 20.0 if name == "synthetic_eggholder" else 0.5
    point = x0 + spread * torch.randn(
        x0.shape, generator=torch.Generator().manual_seed(3), dtype=x0.dtype
    )
    set_point(instance, point)
    batch = first_batch(instance, None if "noisy" not in name else 3)
    assert (batch.inputs.shape[0] > 0) == ("noisy" in name)
    check_gradient(instance, batch)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_optimum_has_the_declared_value_and_is_a_minimum(name: str) -> None:
    instance = make(name)
    landscape = instance.landscape
    set_point(instance, landscape.optimum)
    metrics = instance.evaluate()
    assert metrics["distance_to_optimum"] == 0.0
    assert instance.distance_to_optimum() == 0.0
    assert abs(metrics["suboptimality"]) <= 1e-12 * max(1.0, abs(landscape.optimal_value))
    gradient = noise_free_gradient(instance)
    if landscape.stationary_optimum:
        assert float(torch.linalg.vector_norm(gradient)) < 1e-8
    # no lower value in a small neighbourhood (inside the standard domain for Eggholder)
    generator = torch.Generator().manual_seed(0)
    around = landscape.optimum + 1e-3 * torch.randn(
        (200, landscape.optimum.numel()), generator=generator, dtype=torch.float64
    )
    if name == "synthetic_eggholder":
        around[:, 0] = around[:, 0].clamp(max=512.0)
    assert float(landscape.function(around).min()) >= landscape.optimal_value - 1e-12


def test_eggholder_optimum_is_on_the_domain_edge() -> None:
    instance = make("synthetic_eggholder")
    set_point(instance, instance.optimum)
    d_x1, d_x2 = noise_free_gradient(instance).tolist()
    assert abs(d_x2) < 1e-9  # stationary along x2 (refined 404.2318...)
    assert d_x1 < -3.0  # f keeps falling beyond x1 = 512: a boundary optimum
    assert instance.optimal_value == pytest.approx(-959.6407, abs=1e-4)


def test_himmelblau_has_four_minima_and_reports_the_nearest() -> None:
    instance = make("synthetic_himmelblau")
    for minimum in (instance.optimum, *instance.landscape.other_optima):
        set_point(instance, minimum)
        assert float(instance.landscape.function(minimum)) < 1e-20
        assert float(torch.linalg.vector_norm(noise_free_gradient(instance))) < 1e-9
        assert instance.evaluate()["distance_to_nearest_optimum"] == 0.0
    assert instance.evaluate()["distance_to_optimum"] > 3  # the metric is to (3, 2)


def test_dim_generalises_sphere_rosenbrock_and_ackley() -> None:
    rosenbrock = make("synthetic_rosenbrock", dim=5)
    assert rosenbrock.landscape.start.tolist() == [-1, 1, -1, 1, -1]
    assert rosenbrock.optimum.tolist() == [1.0] * 5
    # 4 terms of 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 at (-1, 1, -1, 1, -1): 0+4, 400+0, 0+4, 400+0
    assert rosenbrock.evaluate()["loss"] == 808.0
    assert make("synthetic_ackley", dim=7).evaluate()["distance_to_optimum"] == pytest.approx(
        2 * math.sqrt(7)
    )
    with pytest.raises(ValueError, match=r"dim must be in \[2, inf\], got 1"):
        build("synthetic_rosenbrock", 0, dim=1)


def test_quadratic_spectrum_rotation_and_condition() -> None:
    for rotate in (False, True):
        instance = make("synthetic_quadratic", dim=6, condition=1e4, rotate=rotate)
        hessian = torch.autograd.functional.hessian(instance.landscape.function, instance.optimum)
        eigenvalues = torch.linalg.eigvalsh(hessian)
        expected = torch.tensor([1e4 ** (i / 5) for i in range(6)], dtype=torch.float64)
        torch.testing.assert_close(eigenvalues, expected, rtol=1e-10, atol=0)
        diagonal = torch.allclose(hessian, torch.diag(torch.diagonal(hessian)))
        assert diagonal != rotate
    # the rotation is drawn from the seed: same seed same matrix, other seed another one
    a, b, c = (
        build("synthetic_quadratic", s, dim=4, rotate=True).landscape.function(
            torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
        )
        for s in (0, 0, 1)
    )
    assert a == b and a != c
    default = build("synthetic_quadratic", 0)
    assert default.model.x.numel() == 1000


def test_input_noise_is_claras_perturbed_point() -> None:
    # noisy sphere: loss = mean_j |x + 0.1 xi_j|^2, gradient = 2 (x + 0.1 mean_j xi_j), exactly
    instance = make("synthetic_noisy_sphere")
    batch = first_batch(instance, 4)
    assert batch.inputs.shape == (4, 2, 2) and batch.targets is None and batch.indices is None
    x = instance.model.x
    (gradient,) = torch.autograd.grad(instance.loss(batch), x)
    expected = 2 * (x.detach() + 0.1 * batch.inputs[:, 0].mean(0))
    torch.testing.assert_close(gradient, expected, rtol=1e-15, atol=1e-15)
    assert instance.evaluate()["loss"] == 2.0  # evaluation is noise-free


def test_gradient_noise_level_is_controllable() -> None:
    # gradient = exact + sigma * mean_j u_j: per-coordinate std sigma / sqrt(b)
    for sigma, batch_size in ((1.0, 1), (0.3, 1), (1.0, 16)):
        instance = build("synthetic_noisy_quadratic", 0, dim=4000, grad_noise=sigma)
        x = instance.model.x
        exact = noise_free_gradient(instance)
        batch = first_batch(instance, batch_size)
        (gradient,) = torch.autograd.grad(instance.loss(batch), x)
        noise = gradient - exact
        torch.testing.assert_close(noise, sigma * batch.inputs[:, 1].mean(0))
        assert float(noise.std()) == pytest.approx(sigma / math.sqrt(batch_size), rel=0.05)
        assert abs(float(noise.mean())) < 5 * sigma / math.sqrt(4000 * batch_size)


def test_noise_free_batches_are_empty_and_the_loss_is_exact() -> None:
    instance = make("synthetic_rosenbrock")
    batch = first_batch(instance, None)
    assert batch.inputs.shape == (0, 2, 2)
    assert float(instance.loss(batch).detach()) == 4.0


def test_determinism_and_no_global_rng() -> None:
    for name in ("synthetic_noisy_ellipsoid", "synthetic_noisy_quadratic"):
        state = torch.get_rng_state()
        kwargs = {"rotate": True} if "quadratic" in name else {}
        first, second = make(name, **kwargs), make(name, **kwargs)
        for p, q in zip(parameters(first), parameters(second), strict=True):
            assert torch.equal(p, q)
        streams = [
            instance.batches(torch.Generator().manual_seed(5), 2) for instance in (first, second)
        ]
        for _ in range(3):
            a, b = (next(s) for s in streams)
            assert torch.equal(a.inputs, b.inputs)
        assert torch.equal(state, torch.get_rng_state())


def test_clamp_projects_the_iterate_and_bounds_the_distance() -> None:
    instance = make("synthetic_sphere", clamp=True)
    set_point(instance, torch.tensor([40.0, -7.0], dtype=torch.float64))
    # reported at the projected point even before the next loss call
    assert instance.distance_to_optimum() == pytest.approx(math.hypot(5, 5))
    assert instance.evaluate()["loss"] == 50.0
    instance.loss(first_batch(instance, None))
    assert instance.model.x.tolist() == [5.0, -5.0]
    # plain SGD with a diverging LR stays in the box, as in the CLARA harness
    optimizer = torch.optim.SGD(instance.model.parameters(), lr=10.0)
    batches = instance.batches(torch.Generator().manual_seed(0), None)
    for _ in range(5):
        optimizer.zero_grad()
        instance.loss(next(batches)).backward()
        optimizer.step()
        assert instance.distance_to_optimum() <= math.hypot(5, 5) + 1e-12
    # off by default: nothing is projected
    free = make("synthetic_sphere")
    set_point(free, torch.tensor([40.0, -7.0], dtype=torch.float64))
    free.loss(first_batch(free, None))
    assert free.model.x.tolist() == [40.0, -7.0]
    with pytest.raises(ValueError, match="clamp=True needs a box"):
        build("synthetic_quadratic", 0, clamp=True)


def test_gradient_clipping_keeps_the_value_and_scales_the_gradient() -> None:
    clipped = make("synthetic_rosenbrock", max_grad_norm=2.0)
    plain = make("synthetic_rosenbrock")
    batch = first_batch(plain, None)
    x = clipped.model.x
    value = clipped.loss(batch)
    (gradient,) = torch.autograd.grad(value, x)
    (reference,) = torch.autograd.grad(plain.loss(batch), plain.model.x)
    assert float(value.detach()) == 4.0
    assert reference.tolist() == [-4.0, 0.0]  # at (-1, 1): -2 (1 - x1) - 400 x1 (x2 - x1^2)
    assert float(torch.linalg.vector_norm(gradient)) == pytest.approx(2.0, rel=1e-14)
    torch.testing.assert_close(
        gradient / 2.0, reference / torch.linalg.vector_norm(reference), rtol=1e-14, atol=1e-14
    )
    # below the threshold the gradient is unchanged
    set_point(clipped, torch.tensor([0.99, 0.98], dtype=torch.float64))
    set_point(plain, torch.tensor([0.99, 0.98], dtype=torch.float64))
    (small,) = torch.autograd.grad(clipped.loss(batch), clipped.model.x)
    (small_reference,) = torch.autograd.grad(plain.loss(batch), plain.model.x)
    assert torch.equal(small, small_reference)


def test_start_and_dtype_arguments() -> None:
    instance = build("synthetic_sphere", 0, start=[-1, -1], dtype="float32")
    assert instance.model.x.tolist() == [-1.0, -1.0] and instance.model.x.dtype == torch.float32
    with pytest.raises(ValueError, match=r"start must be a list of 2 numbers"):
        build("synthetic_sphere", 0, start=[1.0])
    with pytest.raises(ValueError, match=r"dtype must be one of 'float32', 'float64', got 'half'"):
        build("synthetic_sphere", 0, dtype="half")


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("synthetic_himmelblau", {"dim": 3}, r"has no argument 'dim'; its arguments"),
        ("synthetic_quadratic", {"condition": 0.5}, r"condition must be in \[1, inf\), got 0.5"),
        ("synthetic_sphere", {"input_noise": -1.0}, r"input_noise must be in \[0, inf\)"),
        ("synthetic_sphere", {"max_grad_norm": 0.0}, r"max_grad_norm must be in \(0, inf\)"),
        ("synthetic_sphere", {"clamp": 1}, r"clamp must be True or False"),
        ("synthetic_quadratic", {"dim": 0}, r"dim must be in \[1, inf\], got 0"),
    ],
)
def test_bad_arguments_are_named(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(name, 0, **kwargs)


def test_batch_size_is_checked_when_the_stream_is_made() -> None:
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, inf\], got 0"):
        make("synthetic_noisy_sphere").batches(torch.Generator(), 0)


def test_registry_names_aliases_and_errors() -> None:
    assert get_problem("synthetic_three_hump_camel") is get_problem("synthetic_camel")
    with pytest.raises(UnknownNameError, match=r"closest: synthetic_rosenbrock"):
        get_problem("synthetic_rosenbrok")
    with pytest.raises(KeyError):
        build("no_such_problem", 0)
    with pytest.raises(ValueError, match=r"seed must be in \[0, inf\]"):
        build("synthetic_sphere", -1)
    assert isinstance(first_batch(make("synthetic_sphere"), None), Batch)


def test_the_gradient_check_can_fail() -> None:
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x * x).sum()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 2.001 * x  # 0.05 % off

    instance = make("synthetic_sphere")
    original = instance.loss
    instance.loss = lambda batch: Wrong.apply(instance.model.x)  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="directional derivative"):
        check_gradient(instance, first_batch(instance, None))
    instance.loss = original  # type: ignore[method-assign]
    check_gradient(instance, first_batch(instance, None))


def test_adam_reproduces_the_clara_harness_output() -> None:
    # specs 1.8(a): Adam, LR 100, 20 steps, gradient norm clipped at 5, iterates clamped to the
    # box; the repo's final distances to the optimum (one decimal) for the noise-free functions.
    repo_output = {
        "synthetic_sphere": 1.0,
        "synthetic_ellipsoid": 5.0,
        "synthetic_rosenbrock": 3.2,
        "synthetic_himmelblau": 9.1,
        "synthetic_beale": 5.2,
        "synthetic_eggholder": 317.6,
        "synthetic_camel": 3.0,
        "synthetic_ackley": 7.1,
    }
    for name, distance in repo_output.items():
        instance = make(name, clamp=True, max_grad_norm=5.0)
        optimizer = torch.optim.Adam(instance.model.parameters(), lr=100.0)
        batches = instance.batches(torch.Generator().manual_seed(0), None)
        for _ in range(20):
            optimizer.zero_grad()
            instance.loss(next(batches)).backward()
            optimizer.step()
        assert round(instance.distance_to_optimum(), 1) == distance, name
