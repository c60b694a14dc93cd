"""MoMo and MoMo-Adam: spec vectors, derived vectors, the ``momo-opt`` oracle and resume.

Method page: ``docs/methods/loss-based.md`` (toy: scalar ``x0 = 0``,
``f(x) = 0.5 (x - 3)^2``, so ``g0 = -3``, ``L0 = 4.5``). The vectors marked "derived" are worked
out by hand from the section 4 formulas in each test's docstring.
"""

from __future__ import annotations

import io
import math

import momo
import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import Momo, MomoAdam, _scalars
from tests.optim._native_checks import (
    assert_independent_of_the_thread_count,
    assert_native_follows_the_loop,
)
from tests.optim._oracle import PROBLEMS, max_trajectory_error, one_group, two_groups
from tests.optim._problems import loss_at, make_params

F64 = torch.float64
ORACLE_RTOL = 1e-9
SPEC = {"rel": 0, "abs": 5e-8}  # the spec prints 7-8 significant digits


def _toy_steps(optimizer: torch.optim.Optimizer, x: torch.Tensor, count: int) -> list[float]:
    """``count`` steps on f(x) = 0.5 (x - 3)^2 with ``step(loss=...)``; the iterates."""
    iterates = []
    for _ in range(count):
        optimizer.zero_grad()
        loss = 0.5 * ((x - 3.0) ** 2).sum()
        loss.backward()
        optimizer.step(loss=loss.detach())
        iterates.append(float(x.detach()))
    return iterates


def _x0() -> torch.Tensor:
    return torch.zeros(1, dtype=F64, requires_grad=True)


# -- spec vectors (section 11) --------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_momo_spec_vector(foreach: bool) -> None:
    """tau_1 = min(1, 4.5 / 9) = 0.5, so x1 = 1.5 exactly; then 1.5394737, 1.5788152."""
    x = _x0()
    optimizer = Momo([x], lr=1.0, foreach=foreach)
    x1, x2, x3 = _toy_steps(optimizer, x, 3)
    assert x1 == 1.5
    assert x2 == pytest.approx(1.5394737, **SPEC)
    assert x3 == pytest.approx(1.5788152, **SPEC)
    # step 2 by hand: f_bar = 0.9 * 4.5 + 0.1 * 1.125, d = -2.85, Gamma = 0.1 * (-2.25),
    # <d, x> = -4.275, ||d||^2 = 8.1225: tau_2 = (f_bar + <d, x> - Gamma) / ||d||^2
    stats = optimizer.statistics()
    assert stats["lower_bound"] == 0.0
    assert stats["nonfinite_steps"] == 0.0


def test_momo_second_step_by_hand() -> None:
    x = _x0()
    optimizer = Momo([x], lr=1.0)
    _toy_steps(optimizer, x, 2)
    tau2 = (4.1625 - 4.275 + 0.225) / 8.1225
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(tau2, rel=1e-14)
    assert float(x.detach()) == pytest.approx(1.5 + 2.85 * tau2, rel=1e-15)
    assert optimizer.statistics()["loss_avg"] == pytest.approx(4.1625, rel=1e-15)
    assert optimizer.statistics()["d_norm_sq"] == pytest.approx(8.1225, rel=1e-15)
    assert float(optimizer.state[x]["grad_dot_w"]) == pytest.approx(-0.225, rel=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_momo_adam_spec_vector(foreach: bool) -> None:
    """m = -0.3, D = 3 + 1e-8, f_bar = 0.45, ||d||^2 = 0.03, t1 = 15, tau = lr / bc1 = 0.1."""
    x = _x0()
    optimizer = MomoAdam([x], lr=1e-2, foreach=foreach)
    x1, x2, x3 = _toy_steps(optimizer, x, 3)
    assert x1 == pytest.approx(0.03 / (3 + 1e-8), rel=1e-15)
    assert x1 == pytest.approx(0.00999999997, abs=5e-12)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(1e-2 / (1 - 0.9**3))
    assert x2 == pytest.approx(0.0199991, abs=5e-8)
    assert x3 == pytest.approx(0.0299968, abs=5e-8)


# -- derived vectors ------------------------------------------------------------------------


def test_momo_weight_decay_derived_vector() -> None:
    """Derived: lr = 0.5, wd = 1, so c = 1.5; step 1 has f_bar = 4.5, d = -3, Gamma = 0,
    <d, x> = 0, ||d||^2 = 9: t1 = 1.5 * 4.5 / 9 = 0.75, tau = min(0.5, 0.75) = 0.5 and
    x1 = (0 + 0.5 * 3) / 1.5 = 1.0."""
    x = _x0()
    optimizer = Momo([x], lr=0.5, weight_decay=1.0)
    (x1,) = _toy_steps(optimizer, x, 1)
    assert x1 == pytest.approx(1.0, rel=1e-15)
    assert optimizer.param_groups[0]["effective_lr"] == 0.5


@pytest.mark.parametrize("bias_correction", [False, True])
def test_momo_lower_bound_derived_vector(bias_correction: bool) -> None:
    """Derived: lb = 0.5. Without bias correction t1 = (4.5 - 0.5) / 9; with it every average
    and rho = 0.1 are scaled by 0.1 and t1 = (0.45 - 0.05) / 0.09: the same, x1 = 4/3."""
    x = _x0()
    optimizer = Momo([x], lr=1.0, lb=0.5, bias_correction=bias_correction)
    (x1,) = _toy_steps(optimizer, x, 1)
    assert x1 == pytest.approx(4.0 / 3.0, rel=1e-14)


def test_momo_use_fstar_derived_vector() -> None:
    """Derived (MoMo*): step 1 is the plain step (tau = 0.5) and then
    lb = (h - tau ||d||^2 / 2) = 4.5 - 0.5 * 0.5 * 9 = 2.25. Step 2: the model value
    f_bar + <d, x> - Gamma = 4.1625 - 4.275 + 0.225 = 0.1125 < lb, so lb resets to 0.1125 / 2,
    tau_2 = (0.1125 - 0.05625) / 8.1225 and lb = 0.1125 - tau_2 * 8.1225 / 2 = 0.084375."""
    x = _x0()
    optimizer = Momo([x], lr=1.0, use_fstar=True)
    (x1,) = _toy_steps(optimizer, x, 1)
    assert x1 == 1.5
    assert optimizer.statistics()["lower_bound"] == pytest.approx(2.25, rel=1e-15)
    (x2,) = _toy_steps(optimizer, x, 1)
    tau2 = 0.05625 / 8.1225
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(tau2, rel=1e-12)
    assert x2 == pytest.approx(1.5 + 2.85 * tau2, rel=1e-14)
    assert optimizer.statistics()["lower_bound"] == pytest.approx(0.084375, rel=1e-12)


def test_momo_two_groups_share_the_model_derived_vector() -> None:
    """Derived: f = 0.5 (a - 3)^2 + 0.5 (b - 3)^2 from 0, groups a (lr 1) and b (lr 0.1). The sums
    run over both tensors: t1 = 9 / 18 = 0.5; tau_a = 0.5, tau_b = min(0.1, 0.5) = 0.1."""
    a, b = _x0(), _x0()
    optimizer = Momo([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=1.0)
    loss = 0.5 * ((a - 3) ** 2).sum() + 0.5 * ((b - 3) ** 2).sum()
    loss.backward()
    optimizer.step(loss=loss)
    assert [g["effective_lr"] for g in optimizer.param_groups] == [0.5, 0.1]
    assert float(a.detach()) == 1.5
    assert float(b.detach()) == pytest.approx(0.3, rel=1e-15)


# -- the oracle -----------------------------------------------------------------------------

MOMO_CONFIGS = [
    {},
    {"weight_decay": 0.01},
    {"lr": 0.5, "bias_correction": True, "weight_decay": 0.05},
    {"use_fstar": True},
    {"lr": 2.0, "beta": 0.5, "lb": 0.05},
    {"lr": 0.5, "beta": 0.5, "lb": -0.1},
]
MOMO_ADAM_CONFIGS = [
    {},
    {"weight_decay": 0.01},
    {"lr": 0.05, "weight_decay": 0.05, "divide": False},
    {"use_fstar": True, "weight_decay": 0.01},
    {"lr": 0.1, "betas": (0.8, 0.99), "eps": 1e-6},
]
GROUPINGS = {
    "one-group": one_group,
    "two-groups": two_groups(lr=0.3),
    "two-groups-wd": two_groups(lr=0.3, weight_decay=0.02),
}


def _float64_oracle_step(optimizer: torch.optim.Optimizer, closure) -> None:
    """Step the package with float64 as torch's default dtype.

    ``momo-opt`` creates the average ``grad_dot_w`` with ``torch.zeros(1)`` (Momo with bias
    correction) or ``torch.tensor(0.)`` (MomoAdam), i.e. in the *default* dtype, float32, even
    for float64 parameters; its trajectories then drift from the float64 ones by ~1e-7
    (``test_the_package_keeps_gamma_in_the_default_dtype`` pins this). Ours keeps the average in
    the parameters' accumulation dtype (float64 here).
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        optimizer.step(closure)
    finally:
        torch.set_default_dtype(previous)


def _oracle_error(ours: type, oracle: type, config: dict, problem, grouping, **kwargs) -> float:
    return max_trajectory_error(
        lambda params: ours(params, **config),
        lambda params: oracle(params, **config),
        problem,
        steps=60,
        groups=grouping,
        **{"oracle_step": _float64_oracle_step, **kwargs},
    )


@pytest.mark.filterwarnings("ignore:More than one param group")
@pytest.mark.parametrize("grouping", GROUPINGS, ids=str)
@pytest.mark.parametrize("config", MOMO_CONFIGS, ids=str)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_momo_matches_the_official_package(problem, config: dict, grouping: str) -> None:
    error = _oracle_error(Momo, momo.Momo, config, problem, GROUPINGS[grouping])
    assert error < ORACLE_RTOL, error


@pytest.mark.filterwarnings("ignore:More than one param group")
@pytest.mark.parametrize("grouping", GROUPINGS, ids=str)
@pytest.mark.parametrize("config", MOMO_ADAM_CONFIGS, ids=str)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_momo_adam_matches_the_official_package(problem, config: dict, grouping: str) -> None:
    error = _oracle_error(MomoAdam, momo.MomoAdam, config, problem, GROUPINGS[grouping])
    assert error < ORACLE_RTOL, error


def test_the_package_keeps_gamma_in_the_default_dtype() -> None:
    """Pins the package's float32 ``grad_dot_w`` (see ``_float64_oracle_step``): stepped plainly,
    Momo of the package with bias correction leaves the float64 trajectory by more than 1e-9."""
    problem, config = PROBLEMS[0], {"lr": 0.5, "bias_correction": True}
    plain = _oracle_error(Momo, momo.Momo, config, problem, one_group, oracle_step=None)
    assert plain > 1e-8
    assert _oracle_error(Momo, momo.Momo, config, problem, one_group) < ORACLE_RTOL


def test_oracle_comparison_can_fail() -> None:
    """A different beta must be caught: the check is not vacuous."""
    error = max_trajectory_error(
        lambda params: Momo(params, beta=0.8),
        lambda params: momo.Momo(params, beta=0.9),
        PROBLEMS[1],
        steps=20,
    )
    assert error > 1e-6


# -- resume ---------------------------------------------------------------------------------


def _problem_run(optimizer, params, problem, steps: range) -> None:
    for step in steps:
        optimizer.zero_grad()
        loss = problem.loss(params, step)
        loss.backward()
        optimizer.step(loss=loss.detach())


def _resumed(factory, problem, split: int, total: int) -> list[torch.Tensor]:
    params = problem.init_params()
    optimizer = factory(params)
    _problem_run(optimizer, params, problem, range(split))
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    params = [p.clone().requires_grad_() for p in checkpoint["params"]]
    optimizer = factory(params)
    optimizer.load_state_dict(checkpoint["opt"])
    _problem_run(optimizer, params, problem, range(split, total))
    return [p.detach() for p in params]


def _uninterrupted(factory, problem, total: int) -> list[torch.Tensor]:
    params = problem.init_params()
    _problem_run(factory(params), params, problem, range(total))
    return [p.detach() for p in params]


@pytest.mark.parametrize(
    ("ours", "oracle", "config"),
    [
        (Momo, momo.Momo, {"use_fstar": True}),
        (MomoAdam, momo.MomoAdam, {"use_fstar": True, "weight_decay": 0.01}),
    ],
)
def test_resume_is_exact_unlike_the_official_package(ours, oracle, config) -> None:
    """Pins the difference: ``momo-opt`` keeps the step counter, the loss average and the lower
    bound in attributes, so its reloaded run restarts them; ours continues bit for bit."""
    problem = PROBLEMS[1]
    runs = ((lambda p: ours(p, **config), True), (lambda p: oracle(p, **config), False))
    for factory, exact in runs:
        full = _uninterrupted(factory, problem, 30)
        resumed = _resumed(factory, problem, 15, 30)
        same = all(torch.equal(a, b) for a, b in zip(full, resumed, strict=True))
        assert same is exact
        if not exact:
            gap = max(float((a - b).abs().max()) for a, b in zip(full, resumed, strict=True))
            assert gap > 1e-6


def test_gamma_of_bfloat16_parameters_stays_float32_across_load() -> None:
    x = torch.tensor([1.0, -2.0], dtype=torch.bfloat16, requires_grad=True)
    optimizer = MomoAdam([x], lr=0.1)
    loss = (x.float() ** 2).sum()
    loss.backward()
    optimizer.step(loss=loss)
    assert optimizer.state[x]["grad_dot_w"].dtype == torch.float32
    saved = optimizer.state_dict()
    fresh = MomoAdam([x], lr=0.1)
    fresh.load_state_dict(saved)
    assert fresh.state[x]["grad_dot_w"].dtype == torch.float32
    assert fresh.state[x]["grad_avg"].dtype == torch.bfloat16
    assert torch.equal(fresh.state[x]["grad_dot_w"], optimizer.state[x]["grad_dot_w"])


# -- guards ---------------------------------------------------------------------------------


def test_parameters_without_gradient_are_skipped() -> None:
    """The package's Momo crashes on a parameter without gradient; ours leaves it alone."""
    x, frozen = _x0(), torch.ones(2, dtype=F64, requires_grad=True)
    optimizer = Momo([x, frozen], lr=1.0, weight_decay=0.1)
    _toy_steps(optimizer, x, 2)
    assert torch.equal(frozen.detach(), torch.ones(2, dtype=F64))
    assert frozen not in optimizer.state


def test_zero_direction_takes_the_cap_and_only_decays() -> None:
    """||d||^2 = 0 (the package divides by zero): tau = lr / rho, only weight decay acts."""
    x = torch.full((2,), 2.0, dtype=F64, requires_grad=True)
    optimizer = Momo([x], lr=0.5, weight_decay=1.0)
    loss = (x * 0.0).sum() + 1.0
    loss.backward()
    optimizer.step(loss=loss)
    assert optimizer.param_groups[0]["effective_lr"] == 0.5
    torch.testing.assert_close(x.detach(), torch.full((2,), 2.0 / 1.5, dtype=F64))
    assert all(math.isfinite(v) for v in optimizer.statistics().values())


def test_non_scalar_loss_is_rejected() -> None:
    x = _x0()
    optimizer = Momo([x])
    losses = 0.5 * (x - 3.0) ** 2 * torch.ones(3, dtype=F64)
    losses.sum().backward()
    with pytest.raises(ValueError, match="scalar mini-batch loss"):
        optimizer.step(loss=losses.detach())


def test_registry_declares_the_oracle_and_the_loss() -> None:
    for name, oracle in (("momo", "momo.Momo"), ("momo-adam", "momo.MomoAdam")):
        spec = lo.spec(name)
        assert spec.needs_loss and spec.oracle == oracle and spec.has_global_statistics


# -- native kernels (fused=True on CPU float32/float64 tensors) ------------------------------


@pytest.mark.parametrize("name", ["momo", "momo-adam"])
def test_native_kernels_do_not_depend_on_the_thread_count(name: str, native_only) -> None:
    assert_independent_of_the_thread_count(name, "momo")


@pytest.mark.parametrize("mixed", [False, True], ids=["float64", "float64+float32"])
@pytest.mark.parametrize("name", ["momo", "momo-adam"])
def test_native_kernels_follow_the_for_loop_across_dtypes_and_groups(
    name: str, mixed: bool, native_only
) -> None:
    """All float64: as tight as the conformance suite. With a float32 tensor both paths round
    differently, and the step size, a ratio of a difference of large similar sums, is only as
    close as each path is to the float64 trajectory (~1e-4 here)."""
    rtol, stats_rtol = (1e-4, 1e-3) if mixed else (1e-11, 1e-11)
    assert_native_follows_the_loop(name, mixed, rtol=rtol, stats_rtol=stats_rtol)


@pytest.mark.parametrize("cls", [Momo, MomoAdam])
def test_capturable_step_takes_the_host_branches(cls, monkeypatch) -> None:
    """The device step decides by selects what the host step decides by ``if``: a zero first
    gradient (||d||^2 = 0, so tau = lr / rho) and, with use_fstar, the reset of the lower-bound
    estimate when the model falls below it. The host run takes each branch both ways (recorded
    from its ``scalar.where`` calls), and the device run gives its numbers."""
    where, decisions = _scalars.where, []

    def recording_where(condition, a, b):
        if not isinstance(condition, torch.Tensor):
            decisions.append(bool(condition))
        return where(condition, a, b)

    monkeypatch.setattr(_scalars, "where", recording_where)
    runs = []
    for capturable in (False, True):
        params = make_params()
        optimizer = cls(params, lr=0.5, lb=2.0, use_fstar=True, capturable=capturable)
        taus, bounds = [], []
        for i in range(8):
            optimizer.zero_grad()
            loss = loss_at(params, i, zero_grad_for=(0, 1, 2) if i == 0 else ())
            loss.backward()
            optimizer.step(loss=loss.detach())
            taus.append(float(optimizer.param_groups[0]["effective_lr"]))
            bounds.append(optimizer.statistics()["lower_bound"])
        runs.append((params, taus, bounds))
    # per host step: Momo (k == 1, reset, ||d||^2 > 0), MomoAdam (reset, ||d||^2 > 0)
    stride = 3 if cls is Momo else 2
    resets, moving = decisions[stride - 2 :: stride], decisions[stride - 1 :: stride]
    assert len(decisions) == 8 * stride
    assert True in resets and False in resets
    assert moving == [False] + [True] * 7
    (params_h, taus_h, bounds_h), (params_d, taus_d, bounds_d) = runs
    assert taus_h[0] == pytest.approx(0.5 if cls is Momo else 0.5 / (1 - 0.9), rel=1e-12)
    assert taus_d == pytest.approx(taus_h, rel=1e-12)
    assert bounds_d == pytest.approx(bounds_h, rel=1e-12, abs=1e-14)
    for a, b in zip(params_h, params_d, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
