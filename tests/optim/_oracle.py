"""Trajectory comparison against an official package (a numerical oracle).

Three float64 problems, as issue 7 asks: a convex quadratic, softmax regression on mini-batches
and a small MLP. Both optimizers start from identical parameters, see identical batches, and the
parameters are compared after every step with a normwise relative error per tensor:
``max|ours - oracle| / max(max|oracle|, 1e-300)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

ParamsFactory = Callable[[list[Tensor]], Any]
"""Builds param groups from the list of parameter tensors (default: the list itself)."""


@dataclass(frozen=True)
class OracleProblem:
    name: str
    shapes: tuple[tuple[int, ...], ...]

    def init_params(self, seed: int = 0) -> list[Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [
            (0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()
            for shape in self.shapes
        ]

    def loss(self, params: Sequence[Tensor], step: int) -> Tensor:
        if self.name == "quadratic":
            total = torch.zeros((), dtype=torch.float64)
            for index, p in enumerate(params):
                scale = torch.linspace(0.5, 5.0, p.numel(), dtype=torch.float64).reshape(p.shape)
                total = total + 0.5 * (scale * (p - 0.3 * (index + 1)) ** 2).sum()
            return total
        inputs, targets = _batch(step)
        if self.name == "softmax":
            weight, bias = params
            logits = inputs @ weight.T + bias
        else:  # mlp
            w1, b1, w2, b2 = params
            logits = torch.tanh(inputs @ w1.T + b1) @ w2.T + b2
        return torch.nn.functional.cross_entropy(logits, targets)


def _batch(step: int, batch_size: int = 16) -> tuple[Tensor, Tensor]:
    data_gen = torch.Generator().manual_seed(1234)
    inputs = torch.randn(128, 5, generator=data_gen, dtype=torch.float64)
    teacher = torch.randn(5, 3, generator=data_gen, dtype=torch.float64)
    targets = (
        inputs @ teacher + 0.7 * torch.randn(128, 3, generator=data_gen, dtype=torch.float64)
    ).argmax(dim=1)
    index = torch.randperm(128, generator=torch.Generator().manual_seed(step))[:batch_size]
    return inputs[index], targets[index]


PROBLEMS = (
    OracleProblem("quadratic", ((3, 4), (6,))),
    OracleProblem("softmax", ((3, 5), (3,))),
    OracleProblem("mlp", ((8, 5), (8,), (3, 8), (3,))),
)


def one_group(params: list[Tensor]) -> Any:
    return params


def two_groups(**second: Any) -> ParamsFactory:
    """Split the parameters into two groups; the second gets the overrides ``second``."""

    def factory(params: list[Tensor]) -> Any:
        half = max(1, len(params) // 2)
        return [{"params": params[:half]}, {"params": params[half:], **second}]

    return factory


def max_trajectory_error(
    make_ours: Callable[[Any], torch.optim.Optimizer],
    make_oracle: Callable[[Any], torch.optim.Optimizer],
    problem: OracleProblem,
    *,
    steps: int = 60,
    groups: ParamsFactory = one_group,
    oracle_step: Callable[[torch.optim.Optimizer, Callable[[], Tensor]], Any] | None = None,
) -> float:
    """Run both optimizers side by side; the largest per-step normwise relative difference.

    ``oracle_step(optimizer, closure)`` overrides how the oracle is stepped (default:
    ``optimizer.step(closure)``), for packages with a different calling convention.
    """
    ours_params, oracle_params = problem.init_params(), problem.init_params()
    ours, oracle = make_ours(groups(ours_params)), make_oracle(groups(oracle_params))

    def closure_for(optimizer: torch.optim.Optimizer, params: list[Tensor], step: int):
        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = problem.loss(params, step)
            loss.backward()
            return loss

        return closure

    worst = 0.0
    for step in range(steps):
        ours.step(closure_for(ours, ours_params, step))
        if oracle_step is None:
            oracle.step(closure_for(oracle, oracle_params, step))
        else:
            oracle_step(oracle, closure_for(oracle, oracle_params, step))
        for a, b in zip(ours_params, oracle_params, strict=True):
            scale = max(float(b.detach().abs().max()), 1e-300)
            error = float((a.detach() - b.detach()).abs().max()) / scale
            if error != error:  # NaN: report it as a failure
                return float("inf")
            worst = max(worst, error)
    return worst
