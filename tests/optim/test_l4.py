"""L4 (L4Mom, L4Adam): spec vectors, derived vectors, invariances and the guards."""

from __future__ import annotations

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import L4Adam, L4Mom

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


@pytest.mark.parametrize("cls", [L4Mom, L4Adam])
def test_zero_estimate_is_not_a_descent_direction_and_is_skipped(cls) -> None:
    """Guard: with g_hat = 0 (all gradients zero so far) <g_hat, v> = 0 and eta = alpha gap /
    eps would be 1e11: the move is skipped, counted, and L_min still initialised."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = cls([x])
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


def test_nonpositive_gap_is_skipped_and_counted() -> None:
    """Guard: a negative loss can make L - gamma L_min <= 0 (L4 assumes L >= 0): no move."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = L4Mom([x])
    x.grad = torch.tensor([1.0, 1.0], dtype=F64)
    optimizer.step(loss=-2.0)  # L_min = -1.5, gap = -2 + 1.35 = -0.65
    stats = optimizer.statistics()
    assert stats["nonpositive_gap_steps"] == 1.0 and stats["nondescent_steps"] == 0.0
    assert stats["loss_gap"] == pytest.approx(-0.65, abs=1e-15)
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


def _native_steps(optimizer, params, count: int, late: int | None = None) -> None:
    """``count`` steps with gradients and losses made without torch reductions (a torch sum can
    depend on the thread count); tensor ``late`` gets its first gradient at step 3."""
    generator = torch.Generator().manual_seed(0)
    for step in range(count):
        for index, p in enumerate(params):
            noise = torch.randn(p.shape, generator=generator, dtype=F64).to(p.dtype)
            p.grad = None if index == late and step < 2 else noise + 0.5 * p.detach()
        optimizer.step(loss=torch.tensor(50.0 / (step + 1), dtype=F64))


@pytest.mark.parametrize("name", ["l4-mom", "l4-adam"])
def test_native_kernels_do_not_depend_on_the_thread_count(name: str, native_only) -> None:
    from lrlab.optim._native import native_status

    spec = lo.spec(name)
    threads = torch.get_num_threads()
    for kwargs in spec.sample_kwargs:
        results = []
        try:
            for count in (1, 3):
                torch.set_num_threads(count)
                generator = torch.Generator().manual_seed(1)
                params = [
                    torch.randn(shape, generator=generator).requires_grad_()
                    for shape in ((70_000,), (300, 300), (17,))
                ]
                optimizer = lo.create(name, params, **{**kwargs, "fused": True})
                _native_steps(optimizer, params, 4, late=2)
                results.append((params, optimizer))
        finally:
            torch.set_num_threads(threads)
        (params_one, opt_one), (params_three, opt_three) = results
        for a, b in zip(params_one, params_three, strict=True):
            assert torch.equal(a, b), kwargs
            for key, value in opt_one.state[a].items():
                other = opt_three.state[b][key]
                same = (
                    torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
                )
                assert same, (key, kwargs)
        assert opt_one.statistics() == opt_three.statistics()
    assert any(how == "native" for kernel, how in native_status().items() if ":l4." in kernel)


@pytest.mark.parametrize("mixed", [False, True], ids=["float64", "float64+float32"])
@pytest.mark.parametrize("name", ["l4-mom", "l4-adam"])
def test_native_kernels_follow_the_for_loop_across_dtypes_and_groups(
    name: str, mixed: bool, native_only
) -> None:
    """Two groups, one tensor with its first gradient at step 3 (its own step count and bias
    corrections); all float64 (as tight as the conformance suite), or with a float32 tensor
    among them (float32 rounding)."""
    spec = lo.spec(name)
    rtol = 1e-4 if mixed else 1e-11
    dtypes = (F64, torch.float32 if mixed else F64, F64)

    def params() -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(2)
        return [
            torch.randn(shape, generator=generator, dtype=F64).to(dtype).requires_grad_()
            for shape, dtype in zip(((40_000,), (70, 30), (9,)), dtypes, strict=True)
        ]

    for kwargs in spec.sample_kwargs:
        trajectories = []
        for path in ({"foreach": False}, {"fused": True}):
            made = params()
            groups = [{"params": made[:2]}, {"params": made[2:], **dict(spec.group_kwargs)}]
            optimizer = lo.create(name, groups, **{**kwargs, **path})
            _native_steps(optimizer, made, 6, late=1)
            trajectories.append((made, optimizer))
        (loop, opt_loop), (native, opt_native) = trajectories
        for a, b in zip(loop, native, strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2, msg=str(kwargs))
        for key, value in opt_loop.statistics().items():
            assert opt_native.statistics()[key] == pytest.approx(value, rel=rtol, abs=1e-12), (
                key,
                kwargs,
            )
