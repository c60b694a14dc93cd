"""Huge but finite gradients are non-finite steps (NOTE [non-finite policy] in
lrlab/optim/_base.py): a gradient whose squares overflow is skipped and counted, and no state
or parameter turns inf or NaN. Low-precision Prodigy keeps its statistics in float32."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import lrlab.optim as lo
from tests.reliability._optim_cases import (
    build,
    configurations,
    same,
    snapshot,
    stayed_finite,
    step,
)

CASES = list(configurations())


@pytest.mark.parametrize(("name", "label", "kwargs"), CASES, ids=[f"{n}-{p}" for n, p, _ in CASES])
def test_overflowing_gradients_are_skipped_and_counted(
    name: str, label: str, kwargs: dict[str, Any]
) -> None:
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7))]
    optimizer = build(name, kwargs, params)
    step(optimizer, name, params, seed=1)
    before = snapshot(optimizer, params)
    # 1e30 in float32: every square overflows (> 3.4e38)
    huge = [torch.full(p.shape, 1e30) for p in params]
    step(optimizer, name, params, huge)
    assert optimizer.statistics()["nonfinite_steps"] == 1
    after = snapshot(optimizer, params)
    for groups in (before[2], after[2]):  # what a skipped step changes, by the contract
        for group in groups:
            group.pop("effective_lr"), group.pop("nonfinite_steps")
    assert same(before, after), "a skipped step changed something"
    assert optimizer.param_groups[0]["effective_lr"] == 0.0


@pytest.mark.parametrize(("name", "label", "kwargs"), CASES, ids=[f"{n}-{p}" for n, p, _ in CASES])
def test_large_gradients_never_leave_inf_or_nan(
    name: str, label: str, kwargs: dict[str, Any]
) -> None:
    """From 1e10 to 1e38: each step is either skipped or leaves everything finite, and so
    does a normal step after it."""
    for magnitude in (1e10, 1e18, 1e19, 1e25, 1e38):
        params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7))]
        optimizer = build(name, kwargs, params)
        step(optimizer, name, params, seed=1)
        before = snapshot(optimizer, params)
        signs = [torch.randn(p.shape).sign() for p in params]
        step(optimizer, name, params, [magnitude * s for s in signs])
        step(optimizer, name, params, seed=2)
        assert stayed_finite(before, snapshot(optimizer, params)), magnitude


def test_the_guard_counts_the_sum_of_squares_not_single_entries() -> None:
    """1e19 squared (1e38) fits float32, but 30 of them do not: skipped (every method's squared
    norm would be inf); the same gradient in float64 is fine."""
    for dtype, skipped in ((torch.float32, 1), (torch.float64, 0)):
        params = [torch.nn.Parameter(torch.randn(30, dtype=dtype))]
        optimizer = build("sgd", {"lr": 1e-30}, params)
        step(optimizer, "sgd", params, [torch.full((30,), 1e19, dtype=dtype)])
        assert optimizer.statistics()["nonfinite_steps"] == skipped


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prodigy_in_low_precision_follows_the_float32_run(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    w0 = torch.randn(64, 32, generator=generator)
    x, y = torch.randn(128, 32, generator=generator), torch.randn(128, 64, generator=generator)
    runs = {}
    for run_dtype in (dtype, torch.float32):
        w = torch.nn.Parameter(w0.to(run_dtype))
        optimizer = lo.create("prodigy", [w], d0=1e-3)
        for _ in range(20):
            optimizer.zero_grad()
            loss = ((x.to(run_dtype) @ w.T - y.to(run_dtype)) ** 2).mean()
            loss.backward()
            optimizer.step()
        assert torch.isfinite(w).all()
        assert optimizer.statistics()["nonfinite_steps"] == 0
        assert optimizer.state[w]["exp_avg_sq"].dtype == torch.float32
        runs[run_dtype] = (loss.item(), optimizer.statistics()["d"])
    (low_loss, low_d), (loss32, d32) = runs[dtype], runs[torch.float32]
    assert low_loss < 10.0 and loss32 < 10.0  # from ~33: both trained
    assert 0.5 < low_d / d32 < 2.0


def test_prodigy_low_precision_statistics_survive_a_checkpoint() -> None:
    w = torch.nn.Parameter(torch.randn(8, 4).half())
    optimizer = lo.create("prodigy", [w], d0=1e-3)
    step(optimizer, "prodigy", [w])
    other = lo.create("prodigy", [torch.nn.Parameter(w.detach().clone())], d0=1e-3)
    other.load_state_dict(optimizer.state_dict())
    (state,) = other.state.values()
    assert state["exp_avg_sq"].dtype == torch.float32 and state["s"].dtype == torch.float32
    assert torch.equal(state["exp_avg_sq"], optimizer.state[w]["exp_avg_sq"])


@pytest.mark.parametrize("name", ["adam", "sgd", "clara-adam", "prodigy"])
def test_float16_entries_whose_square_overflows_are_skipped(name: str) -> None:
    """300^2 = 90000 overflows float16 (max 65504): an Adam-like v kept in float16 would turn
    inf, so the step is skipped; 200 (40000) passes."""
    for value, skipped in ((300.0, 1), (200.0, 0)):
        params = [torch.nn.Parameter(torch.randn(8).half())]
        optimizer = build(name, lo.spec(name).sample_kwargs[0], params)
        step(optimizer, name, params, [torch.full((8,), value).half()])
        assert optimizer.statistics()["nonfinite_steps"] == skipped, value
        assert torch.isfinite(params[0]).all()
