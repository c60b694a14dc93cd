"""L4 (L4Mom, L4Adam): spec vectors, derived vectors, invariances and the guards."""

from __future__ import annotations

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import L4Adam, L4Mom
from tests.optim._native_checks import (
    assert_independent_of_the_thread_count,
    assert_native_follows_the_loop,
)

F64 = torch.float64


def _problem_p(x: torch.Tensor) -> torch.Tensor:
    """Problem P of spec 9: f = 0.5 (x1^2 + 10 x2^2)."""
    return 0.5 * (x[0] ** 2 + 10 * x[1] ** 2)


def _steps(optimizer, x, count: int, scale: float = 1.0) -> list[float]:
    etas = []
    for _ in range(count):
        optimizer.zero_grad()
        loss = scale * _problem_p(x)
        loss.backward()
        optimizer.step(loss=loss.detach())
        etas.append(optimizer.param_groups[0]["effective_lr"])
    return etas


@pytest.mark.parametrize("foreach", [False, True])
def test_l4mom_spec_vector(foreach: bool) -> None:
    """Spec 9: L1 = 5.5, L_min = 0.75 * 5.5, eta1 = 0.15 (5.5 - 0.9 L_min) / 101."""
    x = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    optimizer = L4Mom([x], foreach=foreach)
    (eta1,) = _steps(optimizer, x, 1)
    assert eta1 == pytest.approx(0.0026547030, abs=5e-11)
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.9973452970, 0.9734529703], dtype=F64), rtol=0, atol=5e-11
    )
    assert optimizer.statistics()["l_min"] == pytest.approx(4.129125, abs=1e-12)
    assert optimizer.statistics()["loss_gap"] == pytest.approx(5.5 - 0.9 * 4.125, abs=1e-12)
    assert optimizer.statistics()["grad_dot_direction"] == pytest.approx(101.0, abs=1e-12)
    eta2, eta3 = _steps(optimizer, x, 2)
    assert eta2 == pytest.approx(0.0023200276, abs=5e-11)
    assert eta3 == pytest.approx(0.0020277034, abs=5e-11)
    # L_2, L_3 > L_min: the estimate only forgets, by (1 + 1/tau) per step
    assert optimizer.statistics()["l_min"] == pytest.approx(4.125 * 1.001**3, rel=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
def test_l4adam_spec_vector(foreach: bool) -> None:
    """Spec 9 (Adam epsilon 1e-4): <g_hat, v> = 1/1.0001 + 100/10.0001 at step 1."""
    x = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    optimizer = L4Adam([x], foreach=foreach)
    (eta1,) = _steps(optimizer, x, 1)
    assert eta1 == pytest.approx(0.0243754432, abs=5e-11)
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.9756269941, 0.9756248006], dtype=F64), rtol=0, atol=5e-11
    )
    assert optimizer.statistics()["grad_dot_direction"] == pytest.approx(
        1 / 1.0001 + 100 / 10.0001, rel=1e-14
    )
    eta2, eta3 = _steps(optimizer, x, 2)
    assert eta2 == pytest.approx(0.0209973492, abs=5e-11)
    assert eta3 == pytest.approx(0.0181060011, abs=5e-11)


def test_per_group_alpha_derived_vector() -> None:
    """Derived vector: P split into two tensors a (curvature 1) and b (curvature 10), the second
    group with alpha = 0.3. Step 1: gap = 5.5 - 0.9 * 0.75 * 5.5 = 1.7875, <g_hat, v> = 1 + 100
    over both groups, eta_a = 0.15 * 1.7875 / 101, eta_b = 0.3 * 1.7875 / 101."""
    a = torch.tensor([1.0], dtype=F64, requires_grad=True)
    b = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = L4Mom([{"params": [a]}, {"params": [b], "alpha": 0.3}])
    loss = 0.5 * (a**2 + 10 * b**2).sum()
    loss.backward()
    optimizer.step(loss=loss)
    eta_a, eta_b = (0.15 * 1.7875 / (101 + 1e-12), 0.3 * 1.7875 / (101 + 1e-12))
    assert [g["effective_lr"] for g in optimizer.param_groups] == pytest.approx(
        [eta_a, eta_b], rel=1e-14
    )
    assert a.item() == pytest.approx(1 - eta_a, rel=1e-14)
    assert b.item() == pytest.approx(1 - 10 * eta_b, rel=1e-14)


def test_l4mom_is_invariant_to_the_scale_of_the_loss() -> None:
    """Derived property: scaling L by k scales the gap by k and <g_hat, v> by k^2, so eta v is
    unchanged (up to eps = 1e-12, set to 0 here to make it exact to rounding)."""
    trajectories = []
    for scale in (1.0, 1000.0):
        x = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
        optimizer = L4Mom([x], eps=0.0)
        _steps(optimizer, x, 15, scale=scale)
        trajectories.append(x.detach().clone())
    torch.testing.assert_close(trajectories[0], trajectories[1], rtol=1e-12, atol=0)


def test_minimum_loss_estimate_derived_sequence() -> None:
    """Derived vector: losses 4, 3, 5, 2 with gamma0 = 0.75, tau = 1000.

    t1: 0.75 * 4 = 3, forgotten to 3.003; t2: min(3.003, 3) = 3 -> 3.003; t3: min(3.003, 5)
    -> 3.006003; t4: min(3.006003, 2) = 2 -> 2.002. The gap at t4 is 2 - 0.9 * 2 = 0.2.
    """
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = L4Mom([x])
    expected = [3.003, 3.003, 3.006003, 2.002]
    for loss, l_min in zip((4.0, 3.0, 5.0, 2.0), expected, strict=True):
        x.grad = torch.ones(1, dtype=F64)
        optimizer.step(loss=torch.tensor(loss, dtype=F64))
        assert optimizer.statistics()["l_min"] == pytest.approx(l_min, rel=1e-15)
    assert optimizer.statistics()["loss_gap"] == pytest.approx(0.2, rel=1e-14)


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("cls", [L4Mom, L4Adam])
def test_zero_estimate_is_not_a_descent_direction_and_is_skipped(cls, capturable: bool) -> None:
    """Guard: with g_hat = 0 (all gradients zero so far) <g_hat, v> = 0 and eta = alpha gap /
    eps would be 1e11: the move is skipped, counted, and L_min still initialised. A capturable
    step selects a move by 0 instead of branching."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = cls([x], capturable=capturable)
    x.grad = torch.zeros(2, dtype=F64)
    optimizer.step(loss=3.0)
    stats = optimizer.statistics()
    assert stats["nondescent_steps"] == 1.0 and stats["effective_lr"] == 0.0
    assert stats["l_min"] == pytest.approx(0.75 * 3.0 * 1.001, rel=1e-15)
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=F64))
    # the next step with a gradient moves normally, with bias corrections of step 2
    x.grad = torch.tensor([1.0, 0.0], dtype=F64)
    optimizer.step(loss=3.0)
    assert optimizer.statistics()["nondescent_steps"] == 1.0
    assert optimizer.param_groups[0]["effective_lr"] > 0.0


@pytest.mark.parametrize("capturable", [False, True])
def test_nonpositive_gap_is_skipped_and_counted(capturable: bool) -> None:
    """Guard: a negative loss can make L - gamma L_min <= 0 (L4 assumes L >= 0): no move."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = L4Mom([x], capturable=capturable)
    x.grad = torch.tensor([1.0, 1.0], dtype=F64)
    optimizer.step(loss=-2.0)  # L_min = -1.5, gap = -2 + 1.35 = -0.65
    stats = optimizer.statistics()
    assert stats["nonpositive_gap_steps"] == 1.0 and stats["nondescent_steps"] == 0.0
    assert stats["loss_gap"] == pytest.approx(-0.65, abs=1e-15)
    assert isinstance(optimizer.param_groups[0]["l_min"], torch.Tensor) is capturable
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=F64))
    # the moments were updated as usual (m = (1 - beta) g)
    torch.testing.assert_close(
        optimizer.state[x]["exp_avg"], torch.tensor([0.1, 0.1], dtype=F64), rtol=1e-15, atol=0
    )


def test_needs_the_loss() -> None:
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = L4Adam([x])
    x.grad = torch.ones(1, dtype=F64)
    with pytest.raises(ValueError, match="needs the loss"):
        optimizer.step()
    spec = lo.spec("l4-adam")
    assert spec.needs_loss and not spec.needs_closure and spec.lr_argument is None


# -- native kernels (fused=True on CPU float32/float64 tensors) ------------------------------


@pytest.mark.parametrize("name", ["l4-mom", "l4-adam"])
def test_native_kernels_do_not_depend_on_the_thread_count(name: str, native_only) -> None:
    assert_independent_of_the_thread_count(name, "l4")


@pytest.mark.parametrize("mixed", [False, True], ids=["float64", "float64+float32"])
@pytest.mark.parametrize("name", ["l4-mom", "l4-adam"])
def test_native_kernels_follow_the_for_loop_across_dtypes_and_groups(
    name: str, mixed: bool, native_only
) -> None:
    """Float64: as tight as the conformance suite; with a float32 tensor: float32 rounding."""
    rtol = 1e-4 if mixed else 1e-11
    assert_native_follows_the_loop(name, mixed, rtol=rtol, stats_rtol=rtol)
