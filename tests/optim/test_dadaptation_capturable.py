"""The capturable step of D-Adaptation and Prodigy where tests/optim/test_capturable.py does not
look: the steps that make no progress (NOTE [D-Adaptation capturable step] in
``lrlab/optim/_distance.py``).

The host step returns early from such a step; the capturable one runs through with its update
coefficients zeroed and its globals kept. Both must leave the same parameters, globals and
``effective_lr``, on every path (the reference loop, the native kernels, the compiled kernels'
eager form), in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import lrlab.optim as lo
from lrlab.optim import _fused
from tests.optim._problems import loss_at, make_params

STEPS = 8
ZERO_GRADIENTS = (0, 1)  # DAdaptSGD has no ||g0|| yet: it must take it at step 2
LR_ZERO = 5  # lr 0 in every group: nothing takes part

# (name, kwargs, the second group's, whether the all-zero gradients make no progress: not
# with coupled decay, whose gradient g + wd x is not zero, except for DAdaptSGD, whose ||g0||
# is taken without decay)
CASES = [
    ("dadapt-sgd", {"momentum": 0.9}, {"weight_decay": 0.5}, True),
    ("dadapt-sgd", {}, {}, True),  # x = x0 - s written directly on the host's fast path
    (
        "dadapt-adam",
        {"decouple": True, "weight_decay": 0.01, "use_bias_correction": True},
        {"layer_scale": 0.5},
        True,
    ),
    ("dadapt-adam", {"weight_decay": 0.01}, {}, False),
    ("dadapt-adagrad", {"momentum": 0.9}, {"eps": 1e-4}, True),
    ("dadapt-adagrad", {}, {"weight_decay": 0.5}, False),
    ("prodigy", {"use_bias_correction": True}, {"weight_decay": 0.5}, True),
    (
        "prodigy",
        {"betas": (0.0, 0.99), "decouple": False, "slice_p": 3},
        {"weight_decay": 0.5},
        False,
    ),
]
PATHS = {"loop": {"fused": False}, "default": {}, "compiled": {"fused": True}}


def _params() -> list[Tensor]:
    # an all-zero tensor too: Prodigy keeps its x0 as a 0-d zero on the host only
    return [*make_params(), torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)]


def _run(name: str, capturable: bool, second: dict, **kwargs) -> tuple:
    params = _params()
    groups = [{"params": params[:2]}, {"params": params[2:], **second}]
    optimizer = lo.create(name, groups, d0=1e-2, capturable=capturable, **kwargs)
    effective_lrs, ks = [], []
    for i in range(STEPS):
        for p in params:
            p.grad = None
        zero = range(len(params)) if i in ZERO_GRADIENTS else ()
        loss_at(params, i, zero_grad_for=zero).backward()
        for group in optimizer.param_groups:
            group["lr"] = 0.0 if i == LR_ZERO else 1.0
        optimizer.step()
        effective_lrs.append(float(optimizer.param_groups[0]["effective_lr"]))
        ks.append(optimizer.statistics()["k"])
    return optimizer, params, effective_lrs, ks


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize(("name", "kwargs", "second", "zero_skips"), CASES)
def test_steps_without_progress_leave_what_the_host_leaves(
    name, kwargs, second, zero_skips, path, monkeypatch
):
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)  # the compiled kernels take every tensor
    monkeypatch.setenv("LRLAB_DISABLE_COMPILE", "1")  # their eager form: the same graph
    host, params_h, lrs_h, ks_h = _run(name, False, second, **kwargs, **PATHS[path])
    device, params_d, lrs_d, ks_d = _run(name, True, second, **kwargs, **PATHS[path])
    # the host skips where expected: k stays 0 through the zero gradients; lr 0 everywhere is
    # no progress (DAdaptAdaGrad's running sums are not zero then: its step still counts)
    assert (ks_h[: len(ZERO_GRADIENTS)] == [0.0] * len(ZERO_GRADIENTS)) is zero_skips
    counted = name == "dadapt-adagrad"
    assert ks_h[LR_ZERO] == ks_h[LR_ZERO - 1] + counted
    assert lrs_h[LR_ZERO] == 0.0 and (lrs_h[0] == 0.0) is zero_skips
    assert ks_d == ks_h
    assert lrs_d == pytest.approx(lrs_h, rel=1e-12, abs=0.0)
    for a, b in zip(params_h, params_d, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    stats_h, stats_d = host.statistics(), device.statistics()
    for key, value in stats_h.items():
        assert stats_d[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    assert isinstance(device.param_groups[1]["d"], Tensor)
    if name == "prodigy":
        zero = params_h[-1], params_d[-1]
        assert host.state[zero[0]]["p0"].dim() == 0 and device.state[zero[1]]["p0"].dim() == 1


def test_a_skipped_capturable_step_moves_nothing() -> None:
    """DAdaptAdam with momentum left from earlier steps and lr 0 everywhere: the host returns
    before its update; the capturable update runs with the step zeroed (x bit for bit)."""
    params = make_params()
    optimizer = lo.create("dadapt-adam", params, d0=1e-2, capturable=True)
    for i in range(3):
        for p in params:
            p.grad = None
        loss_at(params, i).backward()
        optimizer.step()
    before = [p.detach().clone() for p in params]
    globals_before = optimizer.statistics()
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.step()
    for a, b in zip(before, params, strict=True):
        assert torch.equal(a, b)
    after = optimizer.statistics()
    assert after.pop("effective_lr") == 0.0
    globals_before.pop("effective_lr")
    assert after == globals_before
