"""lrlab.schedules: refinement (spec 8.2) and the schedulers, against hand values and torch's."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import lrlab.optim as lo
from lrlab.schedules import (
    CosineDecay,
    LinearDecay,
    RefinedSchedule,
    StepDecay,
    Trapezoid,
    refine,
)

# -- refine ---------------------------------------------------------------------------------------


def _linear(count: int) -> np.ndarray:
    return np.arange(count - 1, -1, -1, dtype=np.float64) / (count - 1)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("count", [2, 3, 101, 1000])
def test_constant_norms_give_exactly_linear_decay(kind: str, count: int) -> None:
    schedule = refine(np.full(count, 3.7), kind=kind)
    assert np.array_equal(schedule, _linear(count))  # bit for bit: (T - 1 - t) / (T - 1)


def test_tensor_in_tensor_out() -> None:
    schedule = refine(torch.full((50,), 0.2, dtype=torch.float32), kind="adam")
    assert isinstance(schedule, torch.Tensor) and schedule.dtype == torch.float64
    assert torch.equal(schedule, torch.from_numpy(_linear(50)))


def test_weights_and_tail_sums_by_hand() -> None:
    # G = (1, 2, 1), no smoothing. SGD: w = (1, 1/4, 1), tail sums (9/4, 5/4, 1),
    # eta = (1 * 5/4, 1/4 * 1, 0) -> / 5/4 = (1, 0.2, 0). Adam: w = (1, 1/2, 1) -> (1, 1/3, 0).
    np.testing.assert_allclose(refine([1.0, 2.0, 1.0], smoothing=0.0), [1.0, 0.2, 0.0], rtol=1e-15)
    np.testing.assert_allclose(
        refine([1.0, 2.0, 1.0], kind="adam", smoothing=0.0), [1.0, 1 / 3, 0.0], rtol=1e-15
    )


def test_median_filter_width_and_padding() -> None:
    """N = 10, tau = 0.3: width 3. An isolated spike disappears; at the right end the padding
    reflects (so an end spike disappears too); at the left end the boundary is "nearest"."""
    spike = [1.0, 1.0, 1.0, 9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert np.array_equal(refine(spike, smoothing=0.3), _linear(10))
    right = [1.0] * 9 + [5.0]
    assert np.array_equal(refine(right, smoothing=0.3), _linear(10))
    # left: median(5, 5, 1) = 5 stays, so w = (1/25, 1, ..., 1): eta_0 = 9/25, eta_t = 9 - t
    left = refine([5.0] + [1.0] * 9, smoothing=0.3)
    np.testing.assert_allclose(left, [9 / 25 / 8, *(np.arange(8, -1, -1) / 8)], rtol=1e-15)
    # tau N below 2: the filter is the identity and the spike stays
    assert refine(spike, smoothing=0.15)[3] < 0.02  # w_3 = 1/81: the spike step gets ~no rate


def test_large_early_norms_give_an_emergent_warmup() -> None:
    """Spec 8.2's profile: norms 15 -> 1 over the first 10 %, then flat."""
    count = 1000
    norms = np.concatenate([np.linspace(15.0, 1.0, count // 10), np.ones(count - count // 10)])
    schedule = refine(norms, kind="sgd")
    assert schedule.max() == 1.0
    assert 0.08 <= np.argmax(schedule) / count <= 0.12  # the peak is near 10 % of training
    assert 0.003 < schedule[0] < 0.007  # it starts near 0.005 of the peak
    assert np.all(np.diff(schedule[: count // 12]) > 0)  # rising: a warm-up
    assert np.all(np.diff(schedule[count // 8 :]) < 0)  # then decaying to 0
    assert schedule[-1] == 0.0


def test_rising_late_norms_give_rapid_annealing() -> None:
    count = 1000
    norms = np.concatenate([np.ones(800), np.linspace(1.0, 5.0, 200)])
    schedule = refine(norms, kind="sgd")
    linear = _linear(count)
    assert schedule[0] == 1.0
    for t in (750, 850, 900):
        assert schedule[t] < 0.6 * linear[t], t
    assert schedule[850] < 0.05 * linear[850]


def test_non_finite_norms_are_dropped() -> None:
    rng = np.random.default_rng(0)
    clean = 1.0 + rng.random(200)
    dirty = clean.copy()
    dirty = np.insert(dirty, [0, 17, 100, 200], [np.nan, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(refine(dirty, kind="adam"), refine(clean, kind="adam"))


def test_resampling_to_a_new_length() -> None:
    np.testing.assert_allclose(refine(np.ones(100), length=37), _linear(37), rtol=0, atol=1e-15)
    coarse = refine([1.0, 2.0, 1.0], smoothing=0.0, length=5)  # (1, 0.2, 0) at 0, 0.5, 1
    np.testing.assert_allclose(coarse, [1.0, 0.6, 0.2, 0.1, 0.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("norms", "kwargs", "match"),
    [
        ([1.0], {}, r"grad_norms must have at least 2 finite entries, got 1 \(of 1\)"),
        (
            [np.nan, 2.0, np.inf],
            {},
            r"grad_norms must have at least 2 finite entries, got 1 \(of 3\)",
        ),
        ([], {}, r"grad_norms must have at least 2 finite entries, got 0"),
        ([1.0, 2.0], {"length": 1}, r"length must be in \[2, inf\], got 1"),
        ([1.0, -2.0], {}, r"grad_norms must be >= 0, got -2\.0"),
        ([[1.0, 2.0], [3.0, 4.0]], {}, r"grad_norms must be one-dimensional, got shape \(2, 2\)"),
        ([1.0, 0.0, 1.0], {"smoothing": 0.0}, r"grad_norms must be > 0 after smoothing"),
        ([1.0, 2.0], {"kind": "l2"}, r"kind must be one of 'sgd', 'adam', got 'l2'"),
        ([1.0, 2.0], {"smoothing": 1.0}, r"smoothing must be in \[0, 1\), got 1\.0"),
    ],
)
def test_refine_rejects_bad_input_with_a_clear_error(norms, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        refine(norms, **kwargs)


def test_an_isolated_zero_norm_is_smoothed_away() -> None:
    norms = [1.0] * 10
    norms[4] = 0.0
    assert np.array_equal(refine(norms, smoothing=0.3), _linear(10))


# -- schedulers -----------------------------------------------------------------------------------


def _sgd(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _play(scheduler, optimizer, steps: int) -> list[list[float]]:
    """The learning rates the optimizer uses at steps 0..steps-1."""
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()  # no gradients: a no-op, but keeps torch's order check quiet
        scheduler.step()
    return rates


def test_linear_decay_by_hand() -> None:
    optimizer = _sgd(0.5)
    rates = _play(LinearDecay(optimizer, 4), optimizer, 6)
    assert [r[0] for r in rates] == [0.5, 0.375, 0.25, 0.125, 0.0, 0.0]  # 0.5 (1 - t/4)
    optimizer = _sgd(1.0)
    rates = _play(LinearDecay(optimizer, 6, warmup_steps=2), optimizer, 7)
    assert [r[0] for r in rates] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]


def test_linear_decay_matches_torch_linear_lr() -> None:
    ours, theirs = _sgd(0.3, 0.1), _sgd(0.3, 0.1)
    ours_rates = _play(LinearDecay(ours, 50), ours, 50)
    torch_scheduler = torch.optim.lr_scheduler.LinearLR(
        theirs, start_factor=1.0, end_factor=0.0, total_iters=50
    )
    theirs_rates = _play(torch_scheduler, theirs, 50)
    np.testing.assert_allclose(ours_rates, theirs_rates, rtol=1e-12, atol=1e-15)


def test_trapezoid_by_hand() -> None:
    optimizer = _sgd(2.0)
    rates = _play(Trapezoid(optimizer, 10, warmup_steps=2, decay_steps=4), optimizer, 12)
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert [r[0] for r in rates] == [2.0 * m for m in expected]
    optimizer = _sgd(1.0)
    rates = _play(Trapezoid(optimizer, 5, warmup_steps=1, decay_steps=0), optimizer, 8)
    assert [r[0] for r in rates] == [1.0] * 8


def test_trapezoid_without_plateau_is_linear_decay() -> None:
    a, b = _sgd(1.0), _sgd(1.0)
    trapezoid = _play(Trapezoid(a, 30, warmup_steps=5, decay_steps=25), a, 33)
    linear = _play(LinearDecay(b, 30, warmup_steps=5), b, 33)
    assert trapezoid == linear


def test_cosine_matches_torch_cosine_annealing() -> None:
    for min_factor in (0.0, 0.1):
        ours, theirs = _sgd(0.2, 0.05), _sgd(0.2, 0.05)
        ours_rates = _play(CosineDecay(ours, 40, min_factor=min_factor), ours, 41)
        torch_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            theirs, T_max=40, eta_min=0.2 * min_factor
        )
        theirs_rates = np.array(_play(torch_scheduler, theirs, 41))
        # torch's eta_min is absolute; a group with another peak only matches the first column
        np.testing.assert_allclose(
            np.array(ours_rates)[:, 0], theirs_rates[:, 0], rtol=1e-12, atol=1e-15
        )
        if min_factor == 0.0:
            np.testing.assert_allclose(ours_rates, theirs_rates, rtol=1e-12, atol=1e-15)


def test_cosine_with_warmup_by_hand() -> None:
    optimizer = _sgd(1.0)
    scheduler = CosineDecay(optimizer, 6, warmup_steps=2, min_factor=0.2)
    rates = [r[0] for r in _play(scheduler, optimizer, 8)]
    tail = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    np.testing.assert_allclose(rates, [0.5, 1.0, *tail, 0.2, 0.2], rtol=1e-15)


def test_step_decay_matches_torch() -> None:
    ours, theirs = _sgd(1.0, 0.3), _sgd(1.0, 0.3)
    ours_rates = _play(StepDecay(ours, 7, gamma=0.5), ours, 30)
    theirs_rates = _play(torch.optim.lr_scheduler.StepLR(theirs, 7, gamma=0.5), theirs, 30)
    np.testing.assert_allclose(ours_rates, theirs_rates, rtol=1e-14)
    ours, theirs = _sgd(1.0), _sgd(1.0)
    ours_rates = _play(StepDecay(ours, milestones=[3, 10, 11], gamma=0.1), ours, 15)
    torch_scheduler = torch.optim.lr_scheduler.MultiStepLR(theirs, [3, 10, 11], gamma=0.1)
    np.testing.assert_allclose(ours_rates, _play(torch_scheduler, theirs, 15), rtol=1e-14)
    assert ours_rates[12][0] == pytest.approx(1e-3, rel=1e-14)


def test_refined_schedule_plays_the_multipliers() -> None:
    optimizer = _sgd(0.4, 0.1)
    scheduler = RefinedSchedule(optimizer, [0.5, 1.0, 0.25, 0.0])
    rates = _play(scheduler, optimizer, 6)
    assert [r[0] for r in rates] == [0.2, 0.4, 0.1, 0.0, 0.0, 0.0]
    assert [r[1] for r in rates] == [0.05, 0.1, 0.025, 0.0, 0.0, 0.0]
    # from a previous run's norms: constant norms over 4 logged steps, replayed over 7 steps
    optimizer = _sgd(0.6)
    scheduler = RefinedSchedule.from_grad_norms(optimizer, [2.0] * 4, total_steps=7)
    rates = [r[0] for r in _play(scheduler, optimizer, 7)]
    np.testing.assert_allclose(rates, 0.6 * _linear(7), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda o: LinearDecay(o, 0), r"total_steps must be in \[1, inf\], got 0"),
        (lambda o: LinearDecay(o, 5, warmup_steps=5), r"warmup_steps must be in \[0, 4\], got 5"),
        (lambda o: LinearDecay(o, 5.0), r"total_steps must be an integer, got 5\.0"),
        (
            lambda o: Trapezoid(o, 10, warmup_steps=4, decay_steps=7),
            r"decay_steps must be in \[0, 6\], got 7",
        ),
        (lambda o: CosineDecay(o, 10, min_factor=1.5), r"min_factor must be in \[0, 1\], got 1\.5"),
        (lambda o: StepDecay(o), r"exactly one of step_size and milestones"),
        (lambda o: StepDecay(o, 3, milestones=[4]), r"exactly one of step_size and milestones"),
        (lambda o: StepDecay(o, 0), r"step_size must be in \[1, inf\], got 0"),
        (lambda o: StepDecay(o, milestones=[5, 5]), r"milestones must be strictly increasing"),
        (lambda o: StepDecay(o, 2, gamma=1.5), r"gamma must be in \[0, 1\], got 1\.5"),
        (lambda o: RefinedSchedule(o, []), r"multipliers must be a non-empty 1-d sequence"),
        (lambda o: RefinedSchedule(o, [1.0, -0.5]), r"multipliers must be finite and >= 0"),
        (lambda o: RefinedSchedule(o, [1.0, math.nan]), r"multipliers must be finite and >= 0"),
    ],
)
def test_scheduler_arguments_are_validated(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(_sgd(0.1))


SCHEDULES = {
    "linear": lambda o: LinearDecay(o, 20, warmup_steps=3),
    "trapezoid": lambda o: Trapezoid(o, 20, warmup_steps=3, decay_steps=8),
    "cosine": lambda o: CosineDecay(o, 20, warmup_steps=2, min_factor=0.1),
    "step": lambda o: StepDecay(o, milestones=[4, 9], gamma=0.3),
    "refined": lambda o: RefinedSchedule(o, refine(np.linspace(5.0, 1.0, 20))),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    build = SCHEDULES[name]
    optimizer = _sgd(0.3, 0.7)
    full = _play(build(optimizer), optimizer, 20)

    first = _sgd(0.3, 0.7)
    scheduler = build(first)
    _play(scheduler, first, 8)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = _sgd(0.3, 0.7)
    resumed_scheduler = build(resumed)  # torch: build the scheduler, then load the optimizer
    resumed.load_state_dict(checkpoint["optimizer"])
    resumed_scheduler.load_state_dict(checkpoint["scheduler"])
    assert _play(resumed_scheduler, resumed, 12) == full[8:]


def test_schedule_multiplies_the_adapted_rate_of_an_lrlab_optimizer() -> None:
    """clara-adam: effective_lr = scheduled lr x the adapted factor (the factor before the step)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, dtype=torch.float64, generator=generator).requires_grad_()
    optimizer = lo.create("clara-adam", [x], lr=0.05, d=0.2)
    scheduler = LinearDecay(optimizer, 10, warmup_steps=2)
    expected_lrs = [0.05 * scheduler.multiplier(t) for t in range(10)]
    factors = []
    for step in range(10):
        scheduled = optimizer.param_groups[0]["lr"]
        assert scheduled == pytest.approx(expected_lrs[step], rel=1e-15)
        factor = optimizer.statistics()["lr_factor"]
        factors.append(factor)
        x.grad = x.detach() + 0.1 * torch.randn(8, dtype=torch.float64, generator=generator)
        optimizer.step()
        assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(
            scheduled * factor, rel=1e-15
        )
        scheduler.step()
    assert len(set(factors)) > 1, "the factor must adapt for this to test the product"
    assert optimizer.param_groups[0]["initial_lr"] == 0.05
