"""CLARA: hand-computed first steps (spec section 9), the reference, and the Adam inconsistency."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from lrlab.optim import ClaraAdam, ClaraSGD
from lrlab.optim.clara import adam_noise_reference, sgd_noise_reference
from tests.optim._problems import loss_at, make_params

TOL = {"rtol": 0, "atol": 5e-10}  # the spec rounds to 10 significant digits


def _quadratic_step(optimizer, params):
    """Problem P of spec 9 (and the two-tensor variant): f = 0.5 (x1^2 + 10 x2^2) [+ 0.5 b^2]."""
    optimizer.zero_grad()
    x = params[0]
    loss = 0.5 * (x[0] ** 2 + 10 * x[1] ** 2)
    if len(params) > 1:
        loss = loss + 0.5 * (params[1] ** 2).sum()
    loss.backward()
    optimizer.step()


def _x0():
    return torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)


def _stats_eta(optimizer) -> float:
    return optimizer.statistics()["eta"]


def test_clara_sgd_unit_step_spec_vector() -> None:
    x = _x0()
    optimizer = ClaraSGD([x], lr=0.1, c=0.2, d=0.5, unit_step=True)
    _quadratic_step(optimizer, [x])
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.9900496281, 0.9004962810], dtype=torch.float64), **TOL
    )
    assert optimizer.statistics()["path_ratio"] == pytest.approx(0.36, abs=1e-12)
    assert _stats_eta(optimizer) == pytest.approx(0.0726149037, abs=5e-11)
    assert optimizer.param_groups[0]["effective_lr"] == 0.1  # step 1 used eta0
    _quadratic_step(optimizer, [x])
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.9821138102, 0.8283163181], dtype=torch.float64), **TOL
    )
    assert float(optimizer.state[x]["path"].square().sum()) == pytest.approx(
        0.1295969039, abs=5e-11
    )
    assert _stats_eta(optimizer) == pytest.approx(0.0789138107, abs=5e-11)


def test_clara_sgd_gradient_step_spec_vector() -> None:
    x = _x0()
    optimizer = ClaraSGD([x], lr=0.1, c=0.2, d=0.5, unit_step=False)
    _quadratic_step(optimizer, [x])
    torch.testing.assert_close(x.detach(), torch.tensor([0.9, 0.0], dtype=torch.float64), **TOL)
    assert _stats_eta(optimizer) == pytest.approx(0.0726149037, abs=5e-11)
    _quadratic_step(optimizer, [x])
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.8346465867, 0.0], dtype=torch.float64), **TOL
    )
    assert float(optimizer.state[x]["path"].square().sum()) == pytest.approx(
        0.0719682380, abs=5e-11
    )
    assert _stats_eta(optimizer) == pytest.approx(0.0608874609, abs=5e-11)


@pytest.mark.parametrize("foreach", [False, True])
def test_clara_sgd_two_tensors_spec_vector(foreach: bool) -> None:
    a = _x0()
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    optimizer = ClaraSGD([a, b], lr=0.1, c=0.2, d=0.5, unit_step=True, foreach=foreach)
    _quadratic_step(optimizer, [a, b])
    torch.testing.assert_close(
        a.detach(), torch.tensor([0.9900496281, 0.9004962810], dtype=torch.float64), **TOL
    )
    assert float(b.detach()) == pytest.approx(2.9, abs=1e-12)
    assert optimizer.statistics()["path_ratio"] == pytest.approx(0.36, abs=1e-12)  # S=0.08, K=2
    assert _stats_eta(optimizer) == pytest.approx(0.0726149037, abs=5e-11)
    _quadratic_step(optimizer, [a, b])
    path_sq = sum(float(optimizer.state[p]["path"].square().sum()) for p in (a, b))
    assert path_sq == pytest.approx(0.2591969039, abs=5e-11)
    assert _stats_eta(optimizer) == pytest.approx(0.0789143605, abs=5e-11)


@pytest.mark.parametrize("unit_step", [True, False])
def test_clara_adam_spec_vector(unit_step: bool) -> None:
    x = _x0()
    optimizer = ClaraAdam([x], lr=0.1, c=0.2, d=0.5, mu=0.5958, unit_step=unit_step)
    _quadratic_step(optimizer, [x])
    expected_x1 = [0.9292893222, 0.9292893216] if unit_step else [0.900000001, 0.9000000001]
    torch.testing.assert_close(x.detach(), torch.tensor(expected_x1, dtype=torch.float64), **TOL)
    assert float(optimizer.state[x]["path"].square().sum()) == pytest.approx(0.04, abs=1e-10)
    assert _stats_eta(optimizer) == pytest.approx(0.0627236455, abs=5e-11)
    _quadratic_step(optimizer, [x])
    if unit_step:
        torch.testing.assert_close(
            x.detach(), torch.tensor([0.8849370073, 0.8849370063], dtype=torch.float64), **TOL
        )
    assert float(optimizer.state[x]["path"].square().sum()) == pytest.approx(0.1296, abs=1e-9)
    assert _stats_eta(optimizer) == pytest.approx(0.0424149047, abs=5e-11)


@pytest.mark.parametrize("cls", [ClaraSGD, ClaraAdam])
def test_first_step_factor_is_gradient_independent(cls) -> None:
    """Spec 1.7 pitfall 7: after step 1, S/M = c(2-c) (SGD) or c^2/mu_A (Adam)."""
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(500, dtype=torch.float64, generator=generator).requires_grad_()
        optimizer = cls([x], lr=0.01, d=0.3)
        x.grad = torch.randn(500, dtype=torch.float64, generator=generator)
        optimizer.step()
        c = 0.2
        mu = sgd_noise_reference(c) if cls is ClaraSGD else adam_noise_reference(500, c)
        ratio = c * c / mu
        assert optimizer.statistics()["path_ratio"] == pytest.approx(ratio, rel=1e-12)
        assert optimizer.statistics()["lr_factor"] == pytest.approx(math.exp(0.3 * (ratio - 1)))


def test_per_step_log_lr_change_is_bounded() -> None:
    """Spec 1.7 pitfall 5: log eta changes within [-d, d (1/mu - 1)] per step (SGD: [-d, 8d])."""
    x = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    d = 0.01
    optimizer = ClaraSGD([x], lr=0.01, d=d)
    generator = torch.Generator().manual_seed(0)
    previous = math.log(optimizer.statistics()["eta"])
    for step in range(60):
        # aligned gradients for 30 steps (path grows), then alternating (path shrinks)
        direction = torch.ones(50, dtype=torch.float64)
        x.grad = direction if step < 30 else direction * (-1) ** step
        x.grad = x.grad + 0.01 * torch.randn(50, dtype=torch.float64, generator=generator)
        optimizer.step()
        current = math.log(optimizer.statistics()["eta"])
        assert -d - 1e-12 <= current - previous <= 8 * d + 1e-12
        previous = current


def test_k_counts_only_tensors_updated_this_step() -> None:
    """Spec 1.7 pitfall 1: a frozen tensor must not bias S/(K mu) down."""
    live = torch.ones(3, dtype=torch.float64, requires_grad=True)
    frozen = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraSGD([live, frozen], lr=0.1, d=0.5)
    live.grad = torch.ones(3, dtype=torch.float64)
    optimizer.step()
    assert optimizer.statistics()["path_ratio"] == pytest.approx(0.2 * 1.8)  # c(2-c), K=1


def test_gradient_is_not_modified_in_place() -> None:
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    for optimizer in (
        ClaraSGD([x], unit_step=True, weight_decay=0.1),
        ClaraAdam([x], weight_decay=0.1),
    ):
        x.grad = torch.full((4,), 2.0, dtype=torch.float64)
        optimizer.step()
        assert torch.equal(x.grad, torch.full((4,), 2.0, dtype=torch.float64))


def test_adam_reference_closed_form_and_monte_carlo() -> None:
    # closed form for large tensors: 0.1111 * 1.72 / 0.28
    assert adam_noise_reference(10_000, 0.2) == pytest.approx(0.68254, abs=1e-5)
    # Monte Carlo for tiny ones, against the official table (spec 1.4): 2 -> ~0.60, 15 -> 0.6729
    assert adam_noise_reference(2, 0.2) == pytest.approx(0.60, abs=0.015)
    assert adam_noise_reference(15, 0.2) == pytest.approx(0.6729, abs=0.01)
    # deterministic
    assert adam_noise_reference(7, 0.2) == adam_noise_reference(7, 0.2)


def _noise_path_ratio(mu: float | None) -> float:
    """Mean S/M of Adam-CLARA fed pure N(0, I) gradients, with the LR frozen (d = 0)."""
    dimension = 2000
    x = torch.zeros(dimension, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAdam([x], lr=1e-3, d=0.0, mu=mu)
    generator = torch.Generator().manual_seed(1)
    ratios = []
    for step in range(400):
        x.grad = torch.randn(dimension, dtype=torch.float64, generator=generator)
        optimizer.step()
        if step >= 100:
            ratios.append(optimizer.statistics()["path_ratio"])
    return sum(ratios) / len(ratios)


def test_adam_inconsistency_of_the_sgd_reference() -> None:
    """The CLARA paper's point: with the SGD reference, pure noise looks like progress.

    Normalised Adam steps under pure noise have path ratio ~6.1 against mu = c/(2-c), so the
    2017-style reference would grow the LR by exp(5.1 d) per step; against mu_A it is ~1.
    """
    assert _noise_path_ratio(sgd_noise_reference(0.2)) == pytest.approx(6.14, rel=0.05)
    assert _noise_path_ratio(None) == pytest.approx(1.0, abs=0.05)


def test_group_ratios_are_kept() -> None:
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    b = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraSGD([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1, d=0.2)
    for _ in range(5):
        a.grad = torch.ones(3, dtype=torch.float64)
        b.grad = torch.ones(3, dtype=torch.float64)
        optimizer.step()
        first, second = (g["effective_lr"] for g in optimizer.param_groups)
        assert second / first == pytest.approx(0.5, rel=1e-12)


# -- fused=True: the native CPU kernels -------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (ClaraSGD, {"lr": 0.05, "weight_decay": 0.01}),
        (ClaraSGD, {"lr": 0.05, "unit_step": True, "c": 1.0, "d": 0.05}),
        (ClaraAdam, {"lr": 0.05, "weight_decay": 0.01, "transient_correction": True}),
        (ClaraAdam, {"lr": 0.05, "unit_step": True, "betas": (0.3, 0.9), "d": 0.05}),
    ],
)
def test_native_fused_matches_the_loop_with_own_step_counts(cls, kwargs, native_only) -> None:
    """A tensor without a gradient on odd steps (its own step count, so its own bias
    corrections), a zero gradient (the norm floor), a tensor of several driver blocks: the
    native calls give the for-loop's numbers. (float64 only: a float32 tensor's path norm,
    summed differently, moves the shared learning rate of the others by ~1e-10.)"""

    def build(fused: bool):
        params = [
            torch.linspace(-1, 1, 70_000, dtype=torch.float64).requires_grad_(),
            torch.linspace(1, 2, 7, dtype=torch.float64).requires_grad_(),
            torch.linspace(0, 3, 5, dtype=torch.float64).requires_grad_(),
            torch.ones(3, dtype=torch.float64, requires_grad=True),
        ]
        options = {"fused": True} if fused else {"foreach": False}
        return params, cls(params, **kwargs, **options)

    (loop_params, loop), (native_params, native) = build(False), build(True)
    for step in range(6):
        for params, optimizer in ((loop_params, loop), (native_params, native)):
            for p in params:
                p.grad = torch.cos(p.detach() * (step + 1)) + 0.5
            params[2].grad = None if step % 2 else params[2].grad
            params[3].grad = torch.zeros_like(params[3])
            optimizer.step()
    for a, b in zip(loop_params, native_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert native.statistics()["lr_factor"] == pytest.approx(
        loop.statistics()["lr_factor"], rel=1e-10
    )
    status = native_only.native_status()
    ran = {
        name
        for name, how in status.items()
        if name.startswith("native:clara.") and how != "not used yet"
    }
    passes = ("sgd_norms", "sgd_move") if cls is ClaraSGD else ("adam_moments", "adam_move")
    assert ran == {f"native:clara.clara_{name}" for name in passes}
    assert all(status[name] == "native" for name in ran)


def test_capturable_adam_meets_a_new_reference_size_inside_a_traced_step() -> None:
    """A capturable step counts each tensor's steps in 0-d tensors; when a tensor has no
    gradient the "total" reference needs a size not estimated at construction, which the traced
    step estimates eager (no Generator in the graph); a checkpoint holds the counts as ints."""
    kwargs = {"lr": 0.05, "reference_sum": "total", "transient_correction": True}
    params_h, params_c = make_params(), make_params()
    host = ClaraAdam(params_h, capturable=False, **kwargs)
    device = ClaraAdam(params_c, capturable=True, **kwargs)
    torch._dynamo.reset()
    step = torch.compile(device.step, backend=CompileCounter())
    for i in range(5):
        for params, run in ((params_h, host.step), (params_c, step)):
            for p in params:
                p.grad = None
            loss_at(params, i, unused=(1,) if i in (2, 3) else ()).backward()
            run()
    for a, b in zip(params_h, params_c, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    assert device.statistics()["lr_factor"] == pytest.approx(
        host.statistics()["lr_factor"], rel=1e-12
    )
    assert isinstance(device.state[params_c[1]]["step"], torch.Tensor)
    assert float(device.state[params_c[1]]["step"]) == 3
    saved = device.state_dict()["state"]
    assert [saved[i]["step"] for i in range(3)] == [5, 3, 5]
    assert all(type(saved[i]["step"]) is int for i in range(3))
