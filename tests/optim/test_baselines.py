"""The baselines are torch's math unchanged, with the contract added."""

from __future__ import annotations

import pytest
import torch

import lrlab.optim as lo
from tests.optim._problems import make_params, plain_closure_for


@pytest.mark.parametrize(
    ("name", "torch_cls", "kwargs"),
    [
        ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
        ("adam", torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.1}),
        ("adamw", torch.optim.AdamW, {"lr": 0.05, "amsgrad": True}),
    ],
)
@pytest.mark.parametrize("foreach", [False, True])
def test_baseline_equals_torch_bit_for_bit(name, torch_cls, kwargs, foreach) -> None:
    ours_params, torch_params = make_params(), make_params()
    ours = lo.create(name, ours_params, foreach=foreach, **kwargs)
    reference = torch_cls(torch_params, foreach=foreach, **kwargs)
    for step in range(10):
        ours.step(plain_closure_for(ours, ours_params, step))
        reference.step(plain_closure_for(reference, torch_params, step))
    for a, b in zip(ours_params, torch_params, strict=True):
        assert torch.equal(a, b)
    assert ours.param_groups[0]["effective_lr"] == kwargs["lr"]


@pytest.mark.parametrize(
    ("name", "torch_cls", "kwargs", "fast_key"),
    [
        ("sgd", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}, "foreach"),
        ("adam", torch.optim.Adam, {"lr": 0.05, "weight_decay": 0.1}, "fused"),
        ("adamw", torch.optim.AdamW, {"lr": 0.05, "amsgrad": True}, "fused"),
    ],
)
def test_default_fast_kernel_equals_torch_forloop(name, torch_cls, kwargs, fast_key) -> None:
    # with foreach and fused unset, the baselines take torch's foreach (SGD) or fused (Adam,
    # AdamW) kernel; it must reproduce torch's for-loop default bit for bit in float64
    ours_params, torch_params = make_params(), make_params()
    ours = lo.create(name, ours_params, **kwargs)
    assert all(group[fast_key] is True for group in ours.param_groups)
    reference = torch_cls(torch_params, foreach=False, **kwargs)
    for step in range(10):
        ours.step(plain_closure_for(ours, ours_params, step))
        reference.step(plain_closure_for(reference, torch_params, step))
    for a, b in zip(ours_params, torch_params, strict=True):
        assert a.dtype == torch.float64
        assert torch.equal(a, b)


def test_step_hooks_run_once_per_step() -> None:
    params = make_params()
    optimizer = lo.create("adam", params)
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    optimizer.step(plain_closure_for(optimizer, params, 0))
    assert calls == ["pre", "post"]


def test_lr_scheduler_drives_effective_lr() -> None:
    params = make_params()
    optimizer = lo.create("sgd", params, lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    seen = []
    for step in range(3):
        optimizer.step(plain_closure_for(optimizer, params, step))
        seen.append(optimizer.statistics()["effective_lr"])
        scheduler.step()
    assert seen == [0.1, 0.05, 0.025]
