"""A tiny least-squares problem implementing the ``Problem`` protocol, for runner/store tests.

``tiny_lsq``: mini-batch least squares ``0.5 * mean((x_i . w - y_i)^2)`` in float64 with a
known optimum. ``fail_at_step`` makes ``loss`` raise from that call on (failure capture),
``nan_at_step`` makes it NaN from that call on (divergence).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from lrlab.bench.spec import Batch, Goal, ProblemInfo

INFO = ProblemInfo(
    name="tiny_lsq",
    kind="synthetic",
    summary="tiny mini-batch least squares (tests only)",
    metric="distance_to_optimum",
    goal=Goal.MINIMIZE,
    default_steps=20,
    default_batch_size=8,
)


class TinyInstance:
    def __init__(
        self, seed: int, n: int = 64, d: int = 4, fail_at_step: int = 0, nan_at_step: int = 0
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.features = torch.randn(n, d, generator=generator, dtype=torch.float64)
        truth = torch.randn(d, generator=generator, dtype=torch.float64)
        # noise-free targets: the optimum is exactly `truth` (torch.linalg.lstsq is not
        # bit-reproducible on CPU: MKL's result depends on memory alignment)
        self.targets = self.features @ truth
        self.optimum = truth
        self.model = nn.Linear(d, 1, bias=False).double()
        with torch.no_grad():
            self.model.weight.copy_(torch.randn(1, d, generator=generator, dtype=torch.float64))
        self._fail_at_step = fail_at_step
        self._nan_at_step = nan_at_step
        self.log: list[str] = []
        self._calls = 0
        self._n = n

    def batches(self, generator: torch.Generator, batch_size: int | None) -> Iterator[Batch]:
        size = batch_size or self._n
        while True:
            order = torch.randperm(self._n, generator=generator)
            for start in range(0, self._n - size + 1, size):
                index = order[start : start + size]
                yield Batch(self.features[index], self.targets[index], index)

    def _loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return 0.5 * (self.model(inputs)[:, 0] - targets).pow(2).mean()

    def loss(self, batch: Batch) -> Tensor:
        self._calls += 1
        if self._fail_at_step and self._calls >= self._fail_at_step:
            raise RuntimeError(f"tiny_lsq: planned failure at call {self._calls}")
        assert batch.targets is not None
        loss = self._loss(batch.inputs, batch.targets)
        if self._nan_at_step and self._calls >= self._nan_at_step:
            loss = loss * math.nan
        return loss

    def evaluate(self) -> dict[str, float]:
        self.log.append("evaluate")
        return {
            "train_loss": float(self._loss(self.features, self.targets)),
            "distance_to_optimum": self.distance_to_optimum(),
        }

    def distance_to_optimum(self) -> float:
        return float(torch.linalg.vector_norm(self.model.weight.detach()[0] - self.optimum))

    @property
    def num_train_examples(self) -> int:
        return self._n


class TinyProblem:
    """The recipe, for tests that wrap ``build``."""

    info = INFO

    def build(self, seed: int, **kwargs: object) -> TinyInstance:
        return TinyInstance(seed, **kwargs)  # type: ignore[arg-type]


def use_tiny(monkeypatch: object, problem: object | None = None) -> None:
    """Register ``tiny_lsq`` (or ``problem`` under that name) for one test, in this process.

    The registry entry is removed after the test, so suites that iterate over every registered
    problem never see it (and worker processes do not have it: subprocess tests use real
    problems).
    """
    from lrlab.bench.problems._common import PROBLEMS

    monkeypatch.setitem(  # type: ignore[attr-defined]
        PROBLEMS._records, INFO.name, problem if problem is not None else TinyProblem()
    )
