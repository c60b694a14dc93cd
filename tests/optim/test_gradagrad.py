"""GradaGrad (scalar reading, spec 6, LOW confidence): only what the reconstruction guarantees.

The update is a reconstruction not verified against the paper's Algorithm 1, so these tests
check the spec 9 vector and the reconstruction's own properties (first step, bounded monotone
growth, AdaGrad-Norm when rho = 0, guards), never a claim about the paper.
"""

from __future__ import annotations

import math

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import GradaGrad

F64 = torch.float64


def _problem_p_step(optimizer, x) -> None:
    """Problem P of spec 9: f = 0.5 (x1^2 + 10 x2^2)."""
    optimizer.zero_grad()
    (0.5 * (x[0] ** 2 + 10 * x[1] ** 2)).backward()
    optimizer.step()


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_spec_vector(foreach: bool, capturable: bool) -> None:
    """Spec 9: rho = 2, r = 0.5, gamma0 = 0.1 on P from (1, 1); both branches of v (the second
    step clamps it). Capturable: the branches are a torch.where on 0-d tensors, same numbers."""
    x = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
    optimizer = GradaGrad([x], lr=0.1, rho=2.0, r=0.5, foreach=foreach, capturable=capturable)
    _problem_p_step(optimizer, x)
    stats = optimizer.statistics()
    assert stats["v"] == pytest.approx(101.0, abs=1e-12)
    assert stats["alpha_acc"] == pytest.approx(101.0, abs=1e-12)
    assert stats["effective_lr"] == pytest.approx(0.0099503719, abs=5e-11)
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.9900496281, 0.9004962810], dtype=F64), rtol=0, atol=5e-11
    )
    _problem_p_step(optimizer, x)
    stats = optimizer.statistics()
    assert stats["v"] == pytest.approx(-50.5, abs=1e-12)  # clamped from -100.0098
    assert stats["alpha_acc"] == pytest.approx(101.0, abs=1e-12)
    assert stats["gamma"] == pytest.approx(0.1224744871, abs=5e-11)
    assert stats["effective_lr"] == pytest.approx(0.0121866670, abs=5e-11)
    _problem_p_step(optimizer, x)
    assert optimizer.statistics()["gamma"] == pytest.approx(0.15, abs=1e-12)
    _problem_p_step(optimizer, x)
    assert optimizer.statistics()["gamma"] == pytest.approx(0.1837117307, abs=5e-11)


def test_first_step_is_normalised_gradient_descent() -> None:
    """x1 = x0 - gamma0 g0 / ||g0|| for any first gradient (g_prev = 0, so v = ||g0||^2)."""
    generator = torch.Generator().manual_seed(1)
    for gamma0 in (1e-3, 0.5, 7.0):
        x = torch.randn(3, 4, generator=generator, dtype=F64).requires_grad_()
        start = x.detach().clone()
        grad = torch.randn(3, 4, generator=generator, dtype=F64) * 100
        optimizer = GradaGrad([x], lr=gamma0)
        x.grad = grad
        optimizer.step()
        torch.testing.assert_close(
            x.detach(), start - gamma0 * grad / grad.norm(), rtol=1e-14, atol=1e-15
        )
        assert (x.detach() - start).norm().item() == pytest.approx(gamma0, rel=1e-14)


@pytest.mark.parametrize("r", [0.0, 0.5, 1.0])
def test_growth_is_monotone_and_bounded_by_sqrt_one_plus_r(r: float) -> None:
    """A and gamma never decrease; gamma grows by at most sqrt(1 + r) per step, and it does
    grow while consecutive gradients are aligned (the first 20 steps here)."""
    generator = torch.Generator().manual_seed(2)
    x = torch.zeros(10, dtype=F64, requires_grad=True)
    optimizer = GradaGrad([x], lr=0.1, r=r)
    direction = torch.randn(10, generator=generator, dtype=F64)
    gamma, alpha_acc = 0.1, 0.0
    growth_steps = 0
    for step in range(40):
        noise = torch.randn(10, generator=generator, dtype=F64)
        x.grad = direction + (0.1 if step < 20 else 3.0) * noise  # aligned, then noisy
        optimizer.step()
        stats = optimizer.statistics()
        assert stats["alpha_acc"] >= alpha_acc
        assert gamma <= stats["gamma"] <= gamma * math.sqrt(1 + r) * (1 + 1e-14)
        growth_steps += stats["gamma"] > gamma
        gamma, alpha_acc = stats["gamma"], stats["alpha_acc"]
    if r > 0:
        assert growth_steps > 5  # the aligned phase really exercised the growth branch
    else:
        assert gamma == 0.1


def test_rho_zero_is_adagrad_norm() -> None:
    """rho = 0: x_{k+1} = x_k - gamma0 g_k / sqrt(sum_{i<=k} ||g_i||^2), written out here."""
    generator = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,)]
    params = [torch.randn(s, generator=generator, dtype=F64).requires_grad_() for s in shapes]
    reference = [p.detach().clone() for p in params]
    optimizer = GradaGrad(params, lr=0.3, rho=0.0)
    accumulated = 0.0
    for _ in range(25):
        grads = [torch.randn(s, generator=generator, dtype=F64) for s in shapes]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()
        accumulated += sum(float(g.square().sum()) for g in grads)
        for ref, g in zip(reference, grads, strict=True):
            ref -= 0.3 / math.sqrt(accumulated) * g
        assert optimizer.statistics()["gamma"] == 0.3
    for p, ref in zip(params, reference, strict=True):
        torch.testing.assert_close(p.detach(), ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("capturable", [False, True])
def test_zero_first_gradient_takes_no_step(capturable: bool) -> None:
    """Guard: while A = 0 the step gamma / sqrt(A) is undefined: no move, no NaN (a capturable
    step moves by exactly 0)."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = GradaGrad([x], lr=0.1, capturable=capturable)
    x.grad = torch.zeros(2, dtype=F64)
    optimizer.step()
    assert float(optimizer.param_groups[0]["effective_lr"]) == 0.0
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=F64))
    x.grad = torch.tensor([3.0, 4.0], dtype=F64)
    optimizer.step()  # now a normalised step of length 0.1
    torch.testing.assert_close(x.detach(), torch.tensor([1 - 0.06, 2 - 0.08], dtype=F64))


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_tensor_without_gradient_counts_as_a_zero_gradient(fused: bool, capturable: bool) -> None:
    """Derived vector: tensors a, b with gradients (1,) and (2,) at step 1 (A = 5); at step 2
    only a has a gradient (1,) and b none: v = 1 - 2 * <(1, 0), (1, 2)> = -1, the growth branch
    with gamma *= sqrt(1 + 1/5). At step 3, a has none and b has (2,): b's previous gradient was
    reset, so v = 4 (not 4 - 2 * 4), A = 9."""
    a = torch.zeros(1, dtype=F64, requires_grad=True)
    b = torch.zeros(1, dtype=F64, requires_grad=True)
    optimizer = GradaGrad([a, b], lr=1.0, r=1.0, fused=fused, capturable=capturable)
    a.grad, b.grad = torch.ones(1, dtype=F64), torch.full((1,), 2.0, dtype=F64)
    optimizer.step()
    b.grad = None
    optimizer.step()
    assert optimizer.statistics()["v"] == pytest.approx(-1.0, abs=1e-15)
    assert optimizer.statistics()["gamma"] == pytest.approx(math.sqrt(1.2), rel=1e-15)
    a.grad, b.grad = None, torch.full((1,), 2.0, dtype=F64)
    optimizer.step()
    assert optimizer.statistics()["v"] == pytest.approx(4.0, abs=1e-15)
    assert optimizer.statistics()["alpha_acc"] == pytest.approx(9.0, abs=1e-14)


def test_registered_as_a_low_confidence_reconstruction() -> None:
    spec = lo.spec("gradagrad")
    assert spec.confidence == "low"
    assert "reconstructed" in spec.paper
    assert "not verified against the paper's Algorithm 1" in (GradaGrad.__doc__ or "")


# -- native kernels (fused=True on CPU float32/float64 tensors) -------------------------------


def test_native_path_follows_the_for_loop(native_only) -> None:
    """Two groups of float32 and float64 tensors (one native call per dtype and pass), a tensor
    whose gradient is missing every third step, and more than one driver block."""
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        shapes = [(70_000,), (3, 7), (5,), (6,)]
        dtypes = [F64, F64, torch.float32, F64]
        tensors = [
            torch.randn(s, dtype=d, requires_grad=True) for s, d in zip(shapes, dtypes, strict=True)
        ]
        groups = [{"params": tensors[:2]}, {"params": tensors[2:], "lr": 0.05}]
        options = {"fused": True} if fused else {"foreach": False}
        optimizer = GradaGrad(groups, lr=0.1, **options)
        for step in range(8):
            optimizer.zero_grad()
            active = [0, 1, 2] if step % 3 else [0, 1, 2, 3]
            sum((torch.sin(tensors[i].double()) * (1 + i)).sum() for i in active).backward()
            optimizer.step()
        results.append(([t.detach().clone() for t in tensors], optimizer.statistics()))
    (loop, loop_stats), (native, native_stats) = results
    for a, b in zip(loop, native, strict=True):
        assert a.dtype == b.dtype
        rtol = 1e-12 if a.dtype == F64 else 1e-5
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-7)
    for key, value in loop_stats.items():
        assert native_stats[key] == pytest.approx(value, rel=1e-7), key
    ran = {name for name, how in native_only.native_status().items() if how == "native"}
    assert {"native:gradagrad.gradagrad_sums", "native:gradagrad.gradagrad_move"} <= ran
