"""Checks of a method's native kernels shared by the per-family test files (L4, MoMo)."""

from __future__ import annotations

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim._native import native_status

F64 = torch.float64


def native_steps(optimizer, params, count: int, late: int | None = None) -> None:
    """``count`` steps with gradients and losses made without torch reductions (a torch sum can
    depend on the thread count); tensor ``late`` gets its first gradient at step 3."""
    generator = torch.Generator().manual_seed(0)
    for step in range(count):
        for index, p in enumerate(params):
            noise = torch.randn(p.shape, generator=generator, dtype=F64).to(p.dtype)
            p.grad = None if index == late and step < 2 else noise + 0.5 * p.detach()
        optimizer.step(loss=torch.tensor(50.0 / (step + 1), dtype=F64))


def assert_independent_of_the_thread_count(name: str, family: str) -> None:
    """Every sample configuration of ``name`` (fused) gives bit-identical parameters, state and
    statistics with 1 and 3 torch threads, on tensors that span several driver blocks."""
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
                native_steps(optimizer, params, 4, late=2)
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
    ran = [how for kernel, how in native_status().items() if f":{family}." in kernel]
    assert "native" in ran


def assert_native_follows_the_loop(name: str, mixed: bool, rtol: float, stats_rtol: float) -> None:
    """Two groups, one tensor with its first gradient at step 3 (its own step count); all
    float64, or with a float32 tensor among them (``mixed``): fused vs for-loop, every sample
    configuration."""
    spec = lo.spec(name)
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
            native_steps(optimizer, made, 6, late=1)
            trajectories.append((made, optimizer.statistics()))
        (loop, stats_loop), (native, stats_native) = trajectories
        for a, b in zip(loop, native, strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2, msg=str(kwargs))
        for key, value in stats_loop.items():
            assert stats_native[key] == pytest.approx(value, rel=stats_rtol, abs=1e-12), (
                key,
                kwargs,
            )
