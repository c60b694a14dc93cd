"""Schedule-Free SGD / AdamW: spec vectors (section 11), a three-sequence reference, the official
``schedulefree`` 1.4.1 as oracle (train-mode y and eval-mode x), modes, checkpoints, BatchNorm."""

from __future__ import annotations

import copy
import io
import math

import pytest
import schedulefree
import torch
from torch import nn

import lrlab.optim as lo
from lrlab.optim import AdamWScheduleFree, SGDScheduleFree, recalibrate_batchnorm
from tests.optim._oracle import PROBLEMS, max_trajectory_error, two_groups

ORACLE_RTOL = 1e-9  # achieved: 0.0 (bit-identical) on every problem and configuration below


def _toy_step(optimizer, x):
    """Spec 11's toy: f(x) = 0.5 (x - 3)^2, full batch."""
    optimizer.zero_grad()
    (0.5 * (x - 3.0) ** 2).sum().backward()
    optimizer.step()


def _x_of(optimizer) -> list[torch.Tensor]:
    """The averaged point x, read from a copy switched to eval mode (the original stays in y)."""
    clone = copy.deepcopy(optimizer)
    clone.eval()
    return [p.detach().clone() for group in clone.param_groups for p in group["params"]]


# -- (a) hand-computed first steps ----------------------------------------------------------


def test_sgd_spec_vector() -> None:
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = SGDScheduleFree([x], lr=0.1, momentum=0.9)
    expected = [(0.3, 0.3), (0.4485, 0.435), (0.59106, 0.56505)]  # (y, x) after steps 1..3
    for y_k, x_k in expected:
        _toy_step(optimizer, x)
        assert float(x.detach()) == pytest.approx(y_k, abs=1e-12)
        assert float(_x_of(optimizer)[0]) == pytest.approx(x_k, abs=1e-12)
    # c_{k+1} = 1 / (k + 1) for r = 0 and a constant lr
    assert optimizer.statistics()["averaging_weight"] == pytest.approx(1 / 3, rel=1e-15)
    assert optimizer.param_groups[0]["effective_lr"] == 0.1


def test_adamw_spec_vector() -> None:
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = AdamWScheduleFree([x], lr=0.1)
    _toy_step(optimizer, x)
    # step 1: c = 1, so y = x = z = 0.1 * 3 / (sqrt(9 * 0.001 / 0.001) + eps)
    assert float(x.detach()) == pytest.approx(0.1 * 3 / (3 + 1e-8), rel=1e-15)
    assert float(x.detach()) == pytest.approx(0.0999999997, abs=1e-10)
    _toy_step(optimizer, x)
    assert float(x.detach()) == pytest.approx(0.1540605, abs=5e-8)
    assert float(_x_of(optimizer)[0]) == pytest.approx(0.1491459, abs=5e-8)


def _reference_run(kwargs: dict, adam: bool, gradients: list[list[float]]) -> list[tuple]:
    """Spec 7.1 with all three sequences explicit (plain Python floats, one coordinate each)."""
    lr, wd = kwargs["lr"], kwargs.get("weight_decay", 0.0)
    beta = kwargs.get("betas", (0.9, 0.999))[0] if adam else kwargs.get("momentum", 0.9)
    beta2, eps = kwargs.get("betas", (0.9, 0.999))[1], kwargs.get("eps", 1e-8)
    warmup, r, power = (
        kwargs.get("warmup_steps", 0),
        kwargs.get("r", 0.0),
        kwargs.get("weight_lr_power", 2.0),
    )
    x = z = list(kwargs["start"])
    v = [0.0] * len(x)
    lr_max, weight_sum, out = -1.0, 0.0, []
    for k, grad_at in enumerate(gradients):
        y = [(1 - beta) * zi + beta * xi for zi, xi in zip(z, x, strict=True)]
        g = grad_at(y)
        gamma = lr * min(1.0, (k + 1) / warmup) if warmup else lr
        lr_max = max(lr_max, gamma)
        weight = (k + 1) ** r * lr_max**power
        weight_sum += weight
        c = weight / weight_sum
        if adam:
            v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g, strict=True)]
            g = [
                gi / (math.sqrt(vi / (1 - beta2 ** (k + 1))) + eps)
                for gi, vi in zip(g, v, strict=True)
            ]
        d = [gi + wd * yi for gi, yi in zip(g, y, strict=True)]
        z = [zi - gamma * di for zi, di in zip(z, d, strict=True)]
        x = [(1 - c) * xi + c * zi for xi, zi in zip(x, z, strict=True)]
        out.append(([(1 - beta) * zi + beta * xi for zi, xi in zip(z, x, strict=True)], x))
    return out


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SGDScheduleFree, {"lr": 0.2, "momentum": 0.8, "weight_decay": 0.1, "warmup_steps": 3}),
        (SGDScheduleFree, {"lr": 0.2, "r": 0.75, "weight_lr_power": 0.0}),
        (AdamWScheduleFree, {"lr": 0.1, "betas": (0.9, 0.99), "weight_decay": 0.1, "r": 0.5}),
        (AdamWScheduleFree, {"lr": 0.1, "warmup_steps": 4, "eps": 1e-3}),
    ],
)
def test_matches_the_three_sequence_reference(cls, kwargs) -> None:
    """The in-place y update equals the explicit x, y, z recursion (spec 7.1 / 7.2)."""
    start = [1.5, -0.7]
    curvature = [1.0, 4.0]

    def grad_at(y):
        return [a * yi - 1.0 for a, yi in zip(curvature, y, strict=True)]

    reference = _reference_run({**kwargs, "start": start}, cls is AdamWScheduleFree, [grad_at] * 8)
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimizer = cls([p], **kwargs)
    for y_ref, x_ref in reference:
        p.grad = torch.tensor(grad_at(p.tolist()), dtype=torch.float64)
        optimizer.step()
        assert p.tolist() == pytest.approx(y_ref, rel=1e-12, abs=1e-14)
        assert _x_of(optimizer)[0].tolist() == pytest.approx(x_ref, rel=1e-12, abs=1e-14)


# -- (b) the official package as oracle -----------------------------------------------------

_CONFIGS = [
    (SGDScheduleFree, schedulefree.SGDScheduleFree, {"lr": 0.5}),
    (
        SGDScheduleFree,
        schedulefree.SGDScheduleFree,
        {"lr": 0.5, "momentum": 0.8, "weight_decay": 0.05, "warmup_steps": 10, "r": 0.75},
    ),
    (AdamWScheduleFree, schedulefree.AdamWScheduleFree, {"lr": 0.05}),
    (
        AdamWScheduleFree,
        schedulefree.AdamWScheduleFree,
        {
            "lr": 0.05,
            "betas": (0.95, 0.99),
            "weight_decay": 0.1,
            "warmup_steps": 10,
            "r": 0.5,
            "weight_lr_power": 1.0,
        },
    ),
]


def _oracle_factory(cls, kwargs):
    def make(params):
        optimizer = cls(params, **kwargs)
        optimizer.train()  # the package starts in eval mode
        return optimizer

    return make


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize(("ours", "theirs", "kwargs"), _CONFIGS)
@pytest.mark.parametrize("foreach", [False, True])
def test_train_mode_trajectory_matches_the_package(problem, ours, theirs, kwargs, foreach) -> None:
    """y after every step, 60 steps, two groups (the second with its own lr and warmup)."""
    groups = two_groups(lr=kwargs["lr"] * 0.3, warmup_steps=3)
    error = max_trajectory_error(
        lambda params: ours(params, foreach=foreach, **kwargs),
        _oracle_factory(theirs, {**kwargs, "foreach": foreach}),
        problem,
        steps=60,
        groups=groups,
    )
    assert error <= ORACLE_RTOL


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize(("ours", "theirs", "kwargs"), [_CONFIGS[1], _CONFIGS[3]])
def test_eval_mode_x_sequence_matches_the_package(problem, ours, theirs, kwargs) -> None:
    """x after every step: both switched to eval(), compared, switched back to train()."""
    params_ours, params_theirs = problem.init_params(), problem.init_params()
    groups = two_groups(lr=kwargs["lr"] * 0.3)
    ours_opt = ours(groups(params_ours), **kwargs)
    theirs_opt = _oracle_factory(theirs, kwargs)(groups(params_theirs))
    worst = 0.0
    for step in range(50):
        for optimizer, params in ((ours_opt, params_ours), (theirs_opt, params_theirs)):
            optimizer.zero_grad()
            problem.loss(params, step).backward()
            optimizer.step()
            optimizer.eval()
        for a, b in zip(params_ours, params_theirs, strict=True):
            error = float((a.detach() - b.detach()).abs().max()) / float(b.detach().abs().max())
            worst = max(worst, error)
        ours_opt.train()
        theirs_opt.train()
    assert worst <= ORACLE_RTOL


def test_lr_schedule_starting_at_zero_matches_the_package() -> None:
    """An external schedule whose first lr is 0 (package issue #5: weight_sum = 0)."""
    problem = PROBLEMS[1]
    factors = [0.0, 0.25, 0.5, 1.0] + [1.0] * 20
    params_ours, params_theirs = problem.init_params(), problem.init_params()
    ours = SGDScheduleFree(params_ours, lr=0.5)
    theirs = _oracle_factory(schedulefree.SGDScheduleFree, {"lr": 0.5})(params_theirs)
    for step, factor in enumerate(factors):
        for optimizer, params in ((ours, params_ours), (theirs, params_theirs)):
            optimizer.param_groups[0]["lr"] = 0.5 * factor
            optimizer.zero_grad()
            problem.loss(params, step).backward()
            optimizer.step()
        if step == 0:
            assert ours.statistics()["averaging_weight"] == 0.0
        for a, b in zip(params_ours, params_theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=ORACLE_RTOL, atol=0)


# -- deliberate differences from the package, pinned ----------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (SGDScheduleFree, schedulefree.SGDScheduleFree),
        (AdamWScheduleFree, schedulefree.AdamWScheduleFree),
    ],
)
def test_starts_in_train_mode_and_never_modifies_grad(ours, theirs) -> None:
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    ours_opt, theirs_opt = ours([a], weight_decay=0.1), theirs([b], weight_decay=0.1)
    assert ours_opt.training
    with pytest.raises(Exception, match="not in train mode"):  # the package starts in eval mode
        theirs_opt.step()
    theirs_opt.train()
    for p, optimizer in ((a, ours_opt), (b, theirs_opt)):
        p.grad = torch.tensor([0.5, 0.25], dtype=torch.float64)
        optimizer.step()
    assert a.grad.tolist() == [0.5, 0.25]  # ours: untouched
    assert b.grad.tolist() != [0.5, 0.25]  # the package: decay (and AdamW's division) in place
    assert torch.equal(a, b)  # same numbers otherwise


@pytest.mark.parametrize("cls", [SGDScheduleFree, AdamWScheduleFree])
def test_step_in_eval_mode_raises_before_running_the_closure(cls) -> None:
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = cls([p], lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    optimizer.eval()
    state = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(RuntimeError, match=r"call optimizer\.train\(\) before step\(\)"):
        optimizer.step(closure)
    assert len(calls) == 1
    assert optimizer.state_dict()["param_groups"][0]["k"] == state["param_groups"][0]["k"]
    optimizer.train()
    optimizer.step(closure)
    assert optimizer.statistics()["k"] == 2.0


@pytest.mark.parametrize("cls", [SGDScheduleFree, AdamWScheduleFree])
def test_modes_are_global_idempotent_and_invert_each_other(cls) -> None:
    params = [
        torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        for i in range(2)
    ]
    params = [p.requires_grad_() for p in params]
    optimizer = cls([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}], lr=0.1)
    for step in range(4):
        optimizer.zero_grad()
        sum((p**2).sum() * (step + 1) for p in params).backward()
        optimizer.step()
    y = [p.detach().clone() for p in params]
    x = _x_of(optimizer)
    optimizer.eval()
    optimizer.eval()  # no-op
    assert [g["train_mode"] for g in optimizer.param_groups] == [False, False]
    assert all(torch.equal(p, e) for p, e in zip(params, x, strict=True))
    assert not all(torch.equal(p, e) for p, e in zip(params, y, strict=True))
    optimizer.train()
    optimizer.train()  # no-op
    for p, e in zip(params, y, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-14, atol=1e-15)
    assert optimizer.statistics()["train_mode"] == 1.0


def test_foreach_handles_mixed_dtypes_in_one_group() -> None:
    def build(foreach):
        params = [
            torch.linspace(-1, 1, 6, dtype=torch.float64).requires_grad_(),
            torch.linspace(1, 2, 4, dtype=torch.float32).requires_grad_(),
            torch.linspace(0, 3, 5, dtype=torch.float64).requires_grad_(),
        ]
        return params, AdamWScheduleFree(params, lr=0.1, weight_decay=0.1, foreach=foreach)

    (pa, a), (pb, b) = build(False), build(True)
    for step in range(5):
        for params, optimizer in ((pa, a), (pb, b)):
            optimizer.zero_grad()
            sum(((p.double() - step) ** 2).sum() for p in params).backward()
            optimizer.step()
    for x, y in zip(pa, pb, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)


# -- checkpoints ----------------------------------------------------------------------------


def _run(optimizer, params, steps):
    for step in steps:
        optimizer.zero_grad()
        PROBLEMS[2].loss(params, step).backward()
        optimizer.step()


def _save(params, optimizer) -> dict:
    buffer = io.BytesIO()
    torch.save(
        {"params": [p.detach().clone() for p in params], "opt": optimizer.state_dict()}, buffer
    )
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("cls", [SGDScheduleFree, AdamWScheduleFree])
def test_checkpoint_in_eval_mode_resumes_bit_identically(cls) -> None:
    """The documented recipe: eval(); save (weights = x); train(); continue. A run resumed from
    the checkpoint calls train() after loading and takes exactly the same steps."""
    kwargs = {"lr": 0.05, "warmup_steps": 3, "weight_decay": 0.01}
    params = PROBLEMS[2].init_params()
    optimizer = cls(params, **kwargs)
    _run(optimizer, params, range(6))
    x_expected = _x_of(optimizer)
    optimizer.eval()
    checkpoint = _save(params, optimizer)
    optimizer.train()
    _run(optimizer, params, range(6, 12))

    assert all(g["train_mode"] is False for g in checkpoint["opt"]["param_groups"])
    assert all(torch.equal(a, b) for a, b in zip(checkpoint["params"], x_expected, strict=True))
    resumed_params = [p.clone().requires_grad_() for p in checkpoint["params"]]
    resumed = cls(resumed_params, **kwargs)
    resumed.load_state_dict(checkpoint["opt"])
    assert not resumed.training  # the mode is part of the state dict
    with pytest.raises(RuntimeError, match="train"):
        _run(resumed, resumed_params, range(6, 7))
    resumed.train()
    _run(resumed, resumed_params, range(6, 12))
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params, strict=True))
    assert optimizer.statistics() == resumed.statistics()


@pytest.mark.parametrize("cls", [SGDScheduleFree, AdamWScheduleFree])
def test_checkpoint_in_train_mode_resumes_without_any_call(cls) -> None:
    params = PROBLEMS[2].init_params()
    optimizer = cls(params, lr=0.05)
    _run(optimizer, params, range(5))
    checkpoint = _save(params, optimizer)
    _run(optimizer, params, range(5, 10))
    resumed_params = [p.clone().requires_grad_() for p in checkpoint["params"]]
    resumed = cls(resumed_params, lr=0.05)
    resumed.load_state_dict(checkpoint["opt"])
    _run(resumed, resumed_params, range(5, 10))
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params, strict=True))


# -- BatchNorm ------------------------------------------------------------------------------


def _bn_model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).double()


def test_recalibrate_batchnorm_computes_statistics_at_x() -> None:
    model = _bn_model()
    optimizer = SGDScheduleFree(model.parameters(), lr=0.2)
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(8, 3, dtype=torch.float64, generator=generator) for _ in range(6)]
    for inputs in data:
        optimizer.zero_grad()
        model(inputs).square().mean().backward()
        optimizer.step()
    bn = model[1]
    stats_at_y = bn.running_mean.clone()
    model.eval()
    model[3].train()  # a mixed pattern of flags, to be restored exactly
    count = recalibrate_batchnorm(model, optimizer, data[:4])

    assert count == 4
    assert not optimizer.training  # parameters hold x
    x = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(x, _x_of(optimizer), strict=True))
    with torch.no_grad():
        pre_bn = [model[0](inputs) for inputs in data[:4]]  # at x
    expected_mean = torch.stack([h.mean(0) for h in pre_bn]).mean(0)
    expected_var = torch.stack([h.var(0, unbiased=True) for h in pre_bn]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-12, atol=1e-14)
    assert int(bn.num_batches_tracked) == 4
    assert not torch.allclose(bn.running_mean, stats_at_y)
    assert bn.momentum == 0.1
    assert [m.training for m in model] == [False, False, False, True]
    optimizer.train()  # training continues from y
    optimizer.zero_grad()
    model(data[0]).square().mean().backward()
    optimizer.step()


def test_recalibrate_batchnorm_without_batchnorm_layers_only_switches_to_eval() -> None:
    model = nn.Linear(2, 1).double()
    optimizer = AdamWScheduleFree(model.parameters(), lr=0.1)
    model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    optimizer.step()
    calls = []
    count = recalibrate_batchnorm(model, optimizer, [1, 2], forward=lambda m, b: calls.append(b))
    assert count == 0 and calls == []
    assert not optimizer.training


def test_registry_declares_eval_mode() -> None:
    for name in ("schedulefree-sgd", "schedulefree-adamw"):
        spec = lo.spec(name)
        assert spec.has_eval_mode and not spec.has_global_statistics
    assert lo.spec("SGDScheduleFree").name == "schedulefree-sgd"
    assert lo.spec("AdamWScheduleFree").name == "schedulefree-adamw"


# -- fused=True: the native CPU kernels -------------------------------------------------------


@pytest.fixture
def native_only(monkeypatch: pytest.MonkeyPatch):
    """fused=True with the compiled kernels made to fail: CPU tensors must all go native."""
    from lrlab.optim import _fused, _native, schedule_free

    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)

    def refuse(self, *args):
        raise AssertionError(f"compiled kernel {self.name} called where a native one should run")

    monkeypatch.setattr(_fused.FusedKernel, "__call__", refuse)
    for native in _native._KERNELS:  # "used" marks of this test only
        monkeypatch.setattr(native, "used", False)
    if not schedule_free._INTERPOLATE.native_available():
        raise AssertionError("the native kernels cannot be built (no C++ compiler?)")
    return _native


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SGDScheduleFree, {"lr": 0.05, "weight_decay": 0.01, "warmup_steps": 2}),
        (AdamWScheduleFree, {"lr": 0.05, "weight_decay": 0.1, "r": 0.75}),
    ],
)
def test_native_fused_steps_and_modes_match_the_loop(cls, kwargs, native_only) -> None:
    """Steps, eval() and train() of fused=True on CPU tensors of two dtypes (one of them of
    several driver blocks, one without a gradient at first) run natively and give the
    for-loop's numbers; a non-contiguous parameter takes the other path alongside."""

    def build(fused: bool):
        params = [
            torch.linspace(-1, 1, 70_000, dtype=torch.float64).requires_grad_(),
            torch.linspace(1, 2, 7, dtype=torch.float32).requires_grad_(),
            torch.linspace(0, 3, 6, dtype=torch.float64).reshape(2, 3).t().requires_grad_(),
            torch.linspace(0, 3, 5, dtype=torch.float64).requires_grad_(),
        ]
        options = {"fused": True} if fused else {"foreach": False}
        return params, cls(params, **kwargs, **options)

    def assert_close(left, right) -> None:
        for a, b in zip(left, right, strict=True):
            rtol = 1e-12 if a.dtype == torch.float64 else 1e-5
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-7 if rtol > 1e-12 else 1e-14)

    (loop_params, loop), (native_params, native) = build(False), build(True)
    for step in range(6):
        for params, optimizer in ((loop_params, loop), (native_params, native)):
            for index, p in enumerate(params):
                late = index == 3 and step < 2
                p.grad = None if late else torch.cos(p.detach() * (step + 1)) + 0.5
            optimizer.step()
        if step in (2, 4):
            for optimizer in (loop, native):
                optimizer.eval()
            assert_close(loop_params, native_params)
            for optimizer in (loop, native):
                optimizer.train()
        assert_close(loop_params, native_params)
    status = native_only.native_status()
    step_kernel = "sgd" if cls is SGDScheduleFree else "adamw"
    ran = {
        name
        for name, how in status.items()
        if name.startswith("native:schedule_free.") and how != "not used yet"
    }
    assert ran == {
        f"native:schedule_free.schedule_free_{step_kernel}_step",
        "native:schedule_free.schedule_free_interpolate",
    }
    assert all(status[name] == "native" for name in ran)
