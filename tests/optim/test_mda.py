"""MDA (Modernized Dual Averaging): hand-derived vectors and closed forms. No oracle exists.

How the vectors were derived (method page ``docs/methods/dual-averaging.md``):
``lam_k = lr sqrt(k+1)``, ``s_{k+1} = s_k + lam_k g_k``, ``z_{k+1} = x0 - s_{k+1} / sqrt(k+1)``,
``x_{k+1} = (1-c) x_k + c z_{k+1}``, ``c = 1 - momentum``. Unrolled,
``z_{k+1} = x0 - lr / sqrt(k+1) * sum_{i<=k} sqrt(i+1) g_i``.

On problem P (``f = 0.5 (x1^2 + 10 x2^2)``, ``g = (x1, 10 x2)``, ``x0 = (1, 1)``), lr = 0.1:

* momentum 0: step 1 is SGD, ``x1 = x0 - 0.1 (1, 10) = (0.9, 0)``. Step 2: ``g1 = (0.9, 0)``,
  ``s2 = 0.1 (1, 10) + 0.1 sqrt2 (0.9, 0)``, ``x2 = x0 - s2 / sqrt2
  = (0.91 - 0.1/sqrt2, 1 - 1/sqrt2) = (0.8392893219, 0.2928932188)``. Step 3: ``g2 = (x2_1,
  10 x2_2)``, ``x3 = x0 - (s2 + 0.1 sqrt3 g2) / sqrt3 = (0.7848513486, 0.1297565120)``.
* momentum 0.9 (c = 0.1): ``x1 = 0.9 x0 + 0.1 (x0 - 0.1 g0) = x0 - 0.01 g0 = (0.99, 0.9)``.
  Step 2: ``g1 = (0.99, 9)``, ``z2 = x0 - (0.1 g0 + 0.1 sqrt2 g1)/sqrt2 = (0.901 - 0.1/sqrt2,
  0.1 - 1/sqrt2)``, ``x2 = 0.9 x1 + 0.1 z2 = (0.9740289322, 0.7492893219)``; step 3 likewise
  ``x3 = (0.9530289308, 0.5682117383)``.
* coupled weight decay: ``f = 0``, ``x0 = 2``, wd = 0.5, momentum 0: ``g0 = 1``, ``x1 = 1.9``;
  ``g1 = 0.95``, ``x2 = 2 - (0.1 + 0.1 sqrt2 0.95)/sqrt2 = 1.8342893219``.

The arithmetic was checked with a few lines of plain-Python floats (not lrlab). The longer tests
compare against the unrolled closed form above, evaluated directly from the list of gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrlab.optim import MDA

SPEC = {"rtol": 0, "atol": 5e-11}  # values printed to 10 decimals


def _p_step(optimizer: MDA, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    (0.5 * (x[0] ** 2 + 10 * x[1] ** 2)).backward()
    optimizer.step()


def _x0() -> torch.Tensor:
    return torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("foreach", [False, True])
def test_hand_vector_without_momentum(foreach: bool) -> None:
    x = _x0()
    optimizer = MDA([x], lr=0.1, momentum=0.0, foreach=foreach)
    _p_step(optimizer, x)
    torch.testing.assert_close(x.detach(), _vec(0.9, 0.0), rtol=0, atol=1e-15)
    _p_step(optimizer, x)
    torch.testing.assert_close(x.detach(), _vec(0.8392893219, 0.2928932188), **SPEC)
    _p_step(optimizer, x)
    torch.testing.assert_close(x.detach(), _vec(0.7848513486, 0.1297565120), **SPEC)
    stats = optimizer.statistics()
    assert stats["k"] == 3.0
    assert stats["lam"] == pytest.approx(0.1 * math.sqrt(3), rel=1e-15)  # lambda_2
    assert optimizer.param_groups[0]["effective_lr"] == 0.1


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_hand_vector_with_momentum(foreach: bool, capturable: bool) -> None:
    """Also with k as a device scalar (capturable): the same vector."""
    x = _x0()
    optimizer = MDA([x], lr=0.1, momentum=0.9, foreach=foreach, capturable=capturable)
    _p_step(optimizer, x)
    torch.testing.assert_close(x.detach(), _vec(0.99, 0.9), rtol=0, atol=1e-15)
    _p_step(optimizer, x)
    torch.testing.assert_close(x.detach(), _vec(0.9740289322, 0.7492893219), **SPEC)
    _p_step(optimizer, x)
    torch.testing.assert_close(x.detach(), _vec(0.9530289308, 0.5682117383), **SPEC)
    # x0 is a copy, not an alias of the parameter (spec 6(e))
    torch.testing.assert_close(optimizer.state[x]["x0"], _vec(1.0, 1.0), rtol=0, atol=0)


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("path", [{"foreach": False, "fused": False}, {"foreach": True}])
def test_hand_vector_coupled_weight_decay(path: dict, capturable: bool) -> None:
    x = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    optimizer = MDA([x], lr=0.1, momentum=0.0, weight_decay=0.5, capturable=capturable, **path)
    for expected in (1.9, 1.8342893219):
        x.grad = torch.zeros(1, dtype=torch.float64)
        optimizer.step()
        assert float(x.detach()) == pytest.approx(expected, abs=5e-11)
        assert torch.equal(x.grad, torch.zeros(1, dtype=torch.float64))  # .grad untouched


def _closed_form_z(x0: torch.Tensor, grads: list[torch.Tensor], lrs: list[float]) -> torch.Tensor:
    """``x0 - sum_i lr_i sqrt(i+1) g_i / sqrt(k+1)`` after k+1 = len(grads) steps."""
    k_plus_1 = len(grads)
    total = sum(lr * math.sqrt(i + 1) * g for i, (g, lr) in enumerate(zip(grads, lrs, strict=True)))
    return x0 - total / math.sqrt(k_plus_1)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("foreach", [False, True])
def test_fifty_steps_match_the_unrolled_closed_form(momentum: float, foreach: bool) -> None:
    """Random gradients, an LR changed by a schedule mid-run: the recursion for s and x equals
    the unrolled dual average ``z`` and the momentum average of the ``z`` points."""
    generator = torch.Generator().manual_seed(7)
    shapes = ((3, 4), (5,))
    x0 = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    params = [t.clone().requires_grad_() for t in x0]
    optimizer = MDA(params, lr=0.05, momentum=momentum, foreach=foreach)
    grads: list[list[torch.Tensor]] = [[] for _ in shapes]
    lrs: list[float] = []
    expected = [t.clone() for t in x0]
    c = 1.0 - momentum
    for step in range(50):
        if step == 25:
            optimizer.param_groups[0]["lr"] = 0.02  # lambda_k uses the current (scheduled) lr
        lrs.append(optimizer.param_groups[0]["lr"])
        for index, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            grads[index].append(p.grad.clone())
        optimizer.step()
        for index, p in enumerate(params):
            z = _closed_form_z(x0[index], grads[index], lrs)
            expected[index] = (1 - c) * expected[index] + c * z
            torch.testing.assert_close(p.detach(), expected[index], rtol=1e-12, atol=1e-12)


def test_constant_gradient_closed_form() -> None:
    """A linear loss <g, x> without momentum: x_k = x0 - lr g (sum_{i=1..k} sqrt i) / sqrt k."""
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    g = _vec(1.0, -2.0, 0.5)
    optimizer = MDA([x], lr=0.3, momentum=0.0)
    for k in range(1, 31):
        x.grad = g.clone()
        optimizer.step()
        factor = sum(math.sqrt(i) for i in range(1, k + 1)) / math.sqrt(k)
        torch.testing.assert_close(x.detach(), -0.3 * factor * g, rtol=1e-13, atol=1e-15)


def test_step_counter_is_global_and_late_tensors_anchor_then() -> None:
    """A tensor first stepped at global k = 3 gets x0 = its value then and lambda_3 = lr * 2:
    its first move is ``-lr * 2 g / sqrt(4) = -lr g`` (momentum 0); a tensor that never has a
    gradient never moves."""
    a = torch.ones(2, dtype=torch.float64, requires_grad=True)
    b = torch.full((2,), 5.0, dtype=torch.float64, requires_grad=True)
    frozen = torch.full((2,), 7.0, dtype=torch.float64, requires_grad=True)
    optimizer = MDA([a, b, frozen], lr=0.1, momentum=0.0)
    for _ in range(3):
        a.grad = torch.ones(2, dtype=torch.float64)
        optimizer.step()
    assert b not in optimizer.state
    a.grad, b.grad = torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    optimizer.step()
    torch.testing.assert_close(b.detach(), torch.full((2,), 4.9, dtype=torch.float64))
    torch.testing.assert_close(optimizer.state[b]["x0"], torch.full((2,), 5.0, dtype=torch.float64))
    assert torch.equal(frozen.detach(), torch.full((2,), 7.0, dtype=torch.float64))
    assert all(group["k"] == 4 for group in optimizer.param_groups)


def test_param_groups_share_k_and_use_their_own_lr() -> None:
    a, b = _x0(), _x0()
    optimizer = MDA([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1, momentum=0.0)
    for _ in range(2):
        for p in (a, b):
            p.grad = torch.ones(2, dtype=torch.float64)
        optimizer.step()
    # constant gradient: x2 = x0 - lr (1 + sqrt 2) / sqrt 2
    factor = (1 + math.sqrt(2)) / math.sqrt(2)
    torch.testing.assert_close(a.detach(), torch.full((2,), 1 - 0.1 * factor, dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.full((2,), 1 - 0.05 * factor, dtype=torch.float64))
    assert [g["effective_lr"] for g in optimizer.param_groups] == [0.1, 0.05]


# -- fused=True: the native CPU kernel -------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_native_fused_matches_the_loop_with_late_and_mixed_dtype_tensors(
    momentum: float, weight_decay: float, native_only
) -> None:
    """Tensors of two dtypes in one group, one of them first stepped at k = 2 (its own x0 and
    the global lambda_k), stepped by one native call per dtype: the for-loop's numbers."""

    def build(fused: bool):
        params = [
            torch.linspace(-1, 1, 70_000, dtype=torch.float64).requires_grad_(),
            torch.linspace(1, 2, 7, dtype=torch.float32).requires_grad_(),
            torch.linspace(0, 3, 5, dtype=torch.float64).requires_grad_(),
        ]
        kwargs = {"fused": True} if fused else {"foreach": False}
        optimizer = MDA(params, lr=0.05, momentum=momentum, weight_decay=weight_decay, **kwargs)
        return params, optimizer

    (loop_params, loop), (native_params, native) = build(False), build(True)
    for step in range(6):
        for params, optimizer in ((loop_params, loop), (native_params, native)):
            for index, p in enumerate(params):
                late = index == 2 and step < 2
                p.grad = None if late else torch.cos(p.detach() * (step + 1)) + 0.5
            optimizer.step()
    for a, b in zip(loop_params, native_params, strict=True):
        rtol = 1e-12 if a.dtype == torch.float64 else 1e-5
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-7 if rtol > 1e-12 else 1e-14)
    assert native_only.native_status()["native:mda.mda_step"] == "native"
