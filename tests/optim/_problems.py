"""Tiny deterministic stochastic problems that drive optimizers in the optim tests.

The loss is a separable quadratic ``sum_i 0.5 <a_i, x_i^2> + <n_i(step), x_i>`` with curvatures
``a_i`` in [1, 10] and a fresh noise vector ``n_i`` for every step index, drawn from a generator
seeded by the step index. Two runs that use the same step indices see the same gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

import lrlab.optim as lo

SHAPES: tuple[tuple[int, ...], ...] = ((4, 3), (5,), (2, 2, 2))


def make_params(
    dtype: torch.dtype = torch.float64, seed: int = 0, shapes: Sequence[tuple[int, ...]] = SHAPES
) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
        for shape in shapes
    ]


def curvature(shape: tuple[int, ...], index: int) -> Tensor:
    count = 1
    for size in shape:
        count *= size
    return torch.linspace(1.0, 10.0, count, dtype=torch.float64).reshape(shape) / (1 + index)


def loss_at(
    params: Sequence[Tensor],
    step: int,
    noise: float = 0.1,
    zero_grad_for: Sequence[int] = (),
    unused: Sequence[int] = (),
) -> Tensor:
    generator = torch.Generator().manual_seed(10_000 + step)
    total = torch.zeros((), dtype=torch.float64)
    for index, p in enumerate(params):
        n = torch.randn(p.shape, generator=generator, dtype=torch.float64) * noise
        if index in unused:
            continue
        x = p.to(torch.float64)
        if index in zero_grad_for:
            total = total + (x * 0.0).sum()
            continue
        total = total + 0.5 * (curvature(tuple(p.shape), index) * x * x).sum() + (n * x).sum()
    return total


def closure_for(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], step: int, **loss_kwargs: Any
) -> Callable[..., Tensor]:
    """An lrlab closure (supports ``backward=False``) for step index ``step``."""
    return lo.make_closure(optimizer, lambda: loss_at(params, step, **loss_kwargs))


def plain_closure_for(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], step: int, **loss_kwargs: Any
) -> Callable[[], Tensor]:
    """A standard torch closure without the ``backward`` keyword."""

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_at(params, step, **loss_kwargs)
        loss.backward()
        return loss

    return closure


def step_kwargs(spec: lo.MethodSpec, step: int) -> dict[str, Any]:
    if spec.needs_example_index:
        return {"example_indices": torch.arange(4) + 4 * (step % 8)}
    return {}


def prepare_step(spec: lo.MethodSpec, params: Sequence[Tensor], step: int) -> dict[str, Any]:
    """Gradients of step ``step`` in ``.grad`` (a script that calls ``backward`` itself) and the
    step's keyword arguments: the batch's indices and, for a method that needs it, the loss."""
    for p in params:
        p.grad = None
    loss = loss_at(params, step)
    loss.backward()
    kwargs = step_kwargs(spec, step)
    if spec.needs_loss:
        kwargs["loss"] = loss.detach()
    return kwargs


def run(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    spec: lo.MethodSpec,
    steps: range,
    **loss_kwargs: Any,
) -> None:
    for step in steps:
        optimizer.step(
            closure_for(optimizer, params, step, **loss_kwargs), **step_kwargs(spec, step)
        )


def snapshot(params: Sequence[Tensor]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def assert_nested_equal(
    left: Any, right: Any, path: str = "", ignore: frozenset[str] = frozenset()
) -> None:
    """Bitwise equality of nested state dicts (tensors by value, NaN equal to NaN)."""
    if isinstance(left, Tensor):
        assert isinstance(right, Tensor), path
        assert left.dtype == right.dtype and left.shape == right.shape, path
        assert torch.equal(left, right) or (
            left.is_floating_point()
            and torch.equal(left.isnan(), right.isnan())
            and torch.equal(left.nan_to_num(), right.nan_to_num())
        ), path
    elif isinstance(left, dict):
        assert isinstance(right, dict), path
        keys = (set(left) | set(right)) - ignore
        for key in keys:
            assert key in left and key in right, f"{path}.{key} missing"
            assert_nested_equal(left[key], right[key], f"{path}.{key}", ignore)
    elif isinstance(left, (list, tuple)):
        assert isinstance(right, (list, tuple)) and len(left) == len(right), path
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_nested_equal(a, b, f"{path}[{index}]", ignore)
    elif isinstance(left, float) and left != left:
        assert isinstance(right, float) and right != right, path
    else:
        assert left == right, f"{path}: {left!r} != {right!r}"
