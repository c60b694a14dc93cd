"""A short demonstration: adaptive vs fixed learning rates from a bad initial learning rate.

Trains the same small MLP on a generated classification task with SGD, CLARA-SGD, Adam and
CLARA-Adam, each started from a learning rate far below a good one, and reports the final loss
and the final learning rate. Deterministic on CPU; takes a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import lrlab.optim as lo

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True, slots=True)
class DemoResult:
    method: str
    initial_lr: float
    final_loss: float
    final_lr: float


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(512, 10, generator=generator)
    teacher = torch.randn(10, 3, generator=generator)
    targets = (inputs @ teacher + 0.5 * torch.randn(512, 3, generator=generator)).argmax(dim=1)
    return inputs, targets


def run_demo(
    methods: tuple[str, ...] = ("sgd", "clara-sgd", "adam", "clara-adam"),
    initial_lr: float = 1e-4,
    steps: int = 600,
    d: float = 0.02,
    seed: int = 0,
) -> list[DemoResult]:
    """Train one MLP per method from ``initial_lr``; CLARA uses damping ``d``."""
    inputs, targets = _data(seed)
    results = []
    for method in methods:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
        kwargs = {"d": d} if lo.spec(method).family == "cumulative-path" else {}
        optimizer = lo.create(method, model.parameters(), lr=initial_lr, **kwargs)

        def compute_loss(model: nn.Module = model) -> torch.Tensor:
            return nn.functional.cross_entropy(model(inputs), targets)

        closure = lo.make_closure(optimizer, compute_loss)
        loss: torch.Tensor | None = None
        for _ in range(steps):
            loss = optimizer.step(closure)
        results.append(
            DemoResult(
                method=method,
                initial_lr=initial_lr,
                final_loss=float(loss.detach()) if loss is not None else float("nan"),
                final_lr=optimizer.statistics().get("eta", optimizer.statistics()["effective_lr"]),
            )
        )
    return results


def format_table(results: list[DemoResult]) -> str:
    lines = [f"{'method':<12} {'initial lr':>11} {'final loss':>11} {'final lr':>11}"]
    for r in results:
        lines.append(
            f"{r.method:<12} {r.initial_lr:>11.3g} {r.final_loss:>11.4f} {r.final_lr:>11.3g}"
        )
    return "\n".join(lines)
