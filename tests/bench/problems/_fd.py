"""Finite-difference gradient checks for problem instances (float64)."""

from __future__ import annotations

import torch

from lrlab.bench.spec import Batch, ProblemInstance


def check_gradient(
    instance: ProblemInstance,
    batch: Batch,
    *,
    directions: int = 4,
    steps: tuple[float, ...] = (1e-6, 1e-7),
    rtol: float = 1e-6,
    seed: int = 0,
) -> None:
    """Compare the autograd gradient of ``instance.loss(batch)`` with central differences.

    Along ``directions`` random directions ``v`` (all parameters at once), the directional
    derivative ``<grad, v>`` must match ``(f(p + eps v) - f(p - eps v)) / (2 eps)`` to within
    ``rtol`` relative to ``|<grad, v>| + |f| + 1`` (the rounding error of the difference scales
    with ``|f|``) for at least one ``eps`` in ``steps``. Several step sizes because a ReLU or
    max-pool kink within ``eps`` of the point spoils one difference quotient (on images, one
    near-zero unit is replicated over the constant background); a wrong gradient fails at every
    step size. Parameters are restored exactly afterwards.
    """
    params = [p for p in instance.model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float64 for p in params), "check in float64"
    loss = instance.loss(batch)
    grads = torch.autograd.grad(loss, params)
    saved = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(seed)

    def value_at(vs: list[torch.Tensor], shift: float) -> float:
        with torch.no_grad():
            for p, p0, v in zip(params, saved, vs, strict=True):
                p.copy_(p0 + shift * v)
            return float(instance.loss(batch))

    try:
        for _ in range(directions):
            vs = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
            analytic = sum(float((g * v).sum()) for g, v in zip(grads, vs, strict=True))
            scale = abs(analytic) + abs(float(loss.detach())) + 1.0
            numeric = [(value_at(vs, eps) - value_at(vs, -eps)) / (2 * eps) for eps in steps]
            assert any(abs(n - analytic) <= rtol * scale for n in numeric), (
                f"directional derivative: autograd {analytic!r}, finite differences {numeric!r}"
            )
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved, strict=True):
                p.copy_(p0)


def first_batch(instance: ProblemInstance, batch_size: int | None, seed: int = 0) -> Batch:
    return next(instance.batches(torch.Generator().manual_seed(seed), batch_size))


def parameters(instance: ProblemInstance) -> list[torch.Tensor]:
    return [p.detach().clone() for p in instance.model.parameters()]
