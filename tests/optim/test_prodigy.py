"""Prodigy: the spec vector, the official ``prodigyopt`` package as oracle, deviations.

Method page: ``docs/methods/d-adaptation.md`` (toy problem: scalar ``x0 = 0``,
``f(x) = 0.5 (x - 3)^2``, float64). The oracle is ``prodigyopt==1.1.2``.
"""

from __future__ import annotations

import math
import shutil

import prodigyopt
import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import Prodigy
from tests.optim._oracle import PROBLEMS, max_trajectory_error, one_group, two_groups
from tests.optim._problems import make_params, run

ORACLE_RTOL = 1e-9
D0 = 1e-6


def _toy_steps(optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> list[float]:
    iterates = []
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (x - 3.0) ** 2).sum().backward()
        optimizer.step()
        iterates.append(float(x.detach()))
    return iterates


def _x0() -> torch.Tensor:
    return torch.zeros(1, dtype=torch.float64, requires_grad=True)


def _printed(value: float, printed: float, digits: int) -> None:
    assert float(f"{value:.{digits - 1}e}") == printed, (value, printed)


# -- (a) the spec vector --------------------------------------------------------------------


def test_spec_vector() -> None:
    x = _x0()
    optimizer = Prodigy([x])
    x1, x2, x3 = _toy_steps(optimizer, x, 1) + _toy_steps(optimizer, x, 2)
    # step 1 by hand: x0 = x_0 so the numerator is 0, d_hat = 0 and d stays d0;
    # m = 0.1 d0 g, sqrt(v) = sqrt(0.001) d0 |g|: x1 = d0 0.1 * 3 / (sqrt(0.001) 3 + eps)
    assert x1 == pytest.approx(D0 * 0.1 * 3 / (math.sqrt(0.001) * 3 + 1e-8), rel=1e-14)
    for value, printed, digits in (
        (x1, 3.16227733e-6, 9),
        (x2, 7.4118684e-6, 8),
        (x3, 1.5173532e-5, 8),
    ):
        _printed(value, printed, digits)
    stats = optimizer.statistics()
    _printed(stats["d"], 4.8224e-6, 5)
    assert stats["k"] == 3.0 and stats["d_max"] >= stats["d"]


def test_second_step_by_hand() -> None:
    """Step 2: r = (d/d0) lambda <g_1, x_0 - x_1> = d0 (3 - x_1) x_1 (d = d0, beta3 r_1 = 0);
    s_2 = sqrt(b2) s_1 + d0 g_1 with s_1 = d0 g_0 (the d/d0 factor is 1), so d_hat = r / |s_2|
    and d jumps to it at once (the first increase ignores growth_rate)."""
    x = _x0()
    optimizer = Prodigy([x], growth_rate=1.0001)
    (x1,) = _toy_steps(optimizer, x, 1)
    assert optimizer.statistics()["d_hat"] == 0.0
    _toy_steps(optimizer, x, 1)
    root = math.sqrt(0.999)
    numerator = D0 * (x1 - 3) * (0 - x1)
    s2 = root * D0 * -3 + D0 * (x1 - 3)
    stats = optimizer.statistics()
    assert stats["d_numerator"] == pytest.approx(numerator, rel=1e-14)
    assert stats["d_denom"] == pytest.approx(abs(s2), rel=1e-14)
    assert stats["d_hat"] == pytest.approx(numerator / abs(s2), rel=1e-13)
    assert stats["d"] == stats["d_hat"] > 1.0001 * D0
    # the third step's growth is capped: d <= growth_rate * d
    _toy_steps(optimizer, x, 1)
    assert optimizer.statistics()["d"] <= 1.0001 * stats["d"] * (1 + 1e-15)


# -- (b) the official package as oracle -----------------------------------------------------

_CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"weight_decay": 0.05}, id="decoupled-wd"),
    pytest.param({"weight_decay": 0.05, "decouple": False}, id="coupled-wd"),
    pytest.param({"use_bias_correction": True, "safeguard_warmup": True}, id="bias-safeguard"),
    pytest.param({"betas": (0.0, 0.99), "weight_decay": 0.01}, id="beta1-zero"),
    pytest.param({"slice_p": 3, "growth_rate": 1.02, "d0": 1e-4}, id="slice-growth"),
    pytest.param({"d_coef": 2.0, "beta3": 0.9, "lr": 0.5}, id="dcoef-beta3-lr"),
]
_GROUPS = [
    pytest.param(one_group, id="one-group"),
    pytest.param(
        two_groups(weight_decay=0.01, eps=1e-6, slice_p=2, safeguard_warmup=True),
        id="two-groups",
    ),
    pytest.param(two_groups(lr=0.0), id="two-groups-lr0"),
]


def _compare(kwargs, problem, groups) -> float:
    built: list[Prodigy] = []

    def make_ours(params):
        # the reference path (foreach=False) performs the package's operations in its order;
        # the fast path differs by float rounding (checked against it by the conformance suite)
        built.append(Prodigy(params, **kwargs, foreach=False))
        return built[-1]

    error = max_trajectory_error(
        make_ours,
        lambda params: prodigyopt.Prodigy(params, **kwargs),
        problem,
        steps=60,
        groups=groups,
    )
    assert built[0].statistics()["d"] > 2 * kwargs.get("d0", D0), "d did not adapt"
    return error


# beta1 = 0 with an lr-0 group diverges in both (see the next section): compared separately
_CASES = [
    pytest.param(config.values[0], groups.values[0], id=f"{config.id}-{groups.id}")
    for config in _CONFIGS
    for groups in _GROUPS
    if not (config.id == "beta1-zero" and groups.id == "two-groups-lr0")
]


@pytest.mark.parametrize(("kwargs", "groups"), _CASES)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_trajectory_matches_official_package(kwargs, problem, groups) -> None:
    error = _compare(kwargs, problem, groups)
    assert error <= ORACLE_RTOL, f"max normwise relative error {error:.3e}"


def test_oracle_tolerance_achieved() -> None:
    """The sums are added in the package's order, so float64 runs agree bit for bit."""
    for problem in PROBLEMS:
        assert _compare({"weight_decay": 0.05}, problem, two_groups(eps=1e-6)) == 0.0


# -- deviations and guards ------------------------------------------------------------------


def test_gradients_are_not_modified() -> None:
    """The package adds coupled weight decay to ``p.grad`` in place; lrlab does not."""
    for cls in (Prodigy, prodigyopt.Prodigy):
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        optimizer = cls([x], weight_decay=0.5, decouple=False)
        for _ in range(2):
            optimizer.zero_grad()
            (x * x).sum().backward()
            grad = x.grad.clone()
            optimizer.step()
            unchanged = torch.equal(x.grad, grad)
        assert unchanged is (cls is Prodigy), cls


def test_all_zero_gradients_are_a_no_op() -> None:
    x, fresh = _x0(), _x0()
    optimizer = Prodigy([x])
    x.grad = torch.zeros_like(x)
    optimizer.step()
    assert float(x.detach()) == 0.0 and optimizer.statistics()["k"] == 0.0
    assert optimizer.param_groups[0]["effective_lr"] == 0.0
    assert _toy_steps(optimizer, x, 3) == _toy_steps(Prodigy([fresh]), fresh, 3)


def test_sharded_flag_runs_without_cuda_or_a_process_group() -> None:
    """The package's fsdp_in_use=True reduces a ``.cuda()`` buffer through a process group;
    lrlab reduces on the parameters' device and only when a process group exists."""
    x, y = _x0(), _x0()
    ours = _toy_steps(Prodigy([x], fsdp_in_use=True), x, 3)
    assert ours == _toy_steps(Prodigy([y]), y, 3)
    z = _x0()
    package = prodigyopt.Prodigy([z], fsdp_in_use=True)
    with pytest.raises((AssertionError, RuntimeError, ValueError)):
        _toy_steps(package, z, 1)


def test_zero_tensor_keeps_a_zero_dim_x0_and_slices_the_sums() -> None:
    """As in the package: an all-zero tensor (a LoRA factor) stores x0 as a 0-d zero; with
    slice_p the sum s holds every slice_p-th entry of the flattened tensor."""
    zero = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    ones = torch.ones(4, 5, dtype=torch.float64, requires_grad=True)
    optimizer = Prodigy([zero, ones], slice_p=3)
    optimizer.zero_grad()
    ((zero - 1) ** 2 + (ones - 2) ** 2).sum().backward()
    optimizer.step()
    assert optimizer.state[zero]["p0"].dim() == 0
    assert optimizer.state[ones]["p0"].shape == (7,)  # ceil(20 / 3)
    assert optimizer.state[zero]["s"].shape == (7,)


def test_lr_zero_group_with_beta1_zero_jumps_as_in_the_package() -> None:
    """Documented hazard (spec 2.2 pitfalls), kept for drop-in fidelity: a group with lr 0 is
    still stepped, and with beta1 = 0 its raw gradient is divided by d * eps (v was never
    updated): the first step moves it by lambda g / eps = 100 g."""
    results = []
    for cls in (Prodigy, prodigyopt.Prodigy):
        x, y = _x0(), _x0()
        optimizer = cls([{"params": [x]}, {"params": [y], "lr": 0.0}], betas=(0.0, 0.999))
        optimizer.zero_grad()
        (0.5 * (x - 3) ** 2 + 0.5 * (y - 3) ** 2).sum().backward()
        optimizer.step()
        results.append((float(x.detach()), float(y.detach())))
    assert results[0] == results[1]
    assert results[0][1] == pytest.approx(D0 * 3 / 1e-8, rel=1e-12)


def test_beta1_zero_keeps_no_momentum_buffer() -> None:
    x = _x0()
    optimizer = Prodigy([x], betas=(0.0, 0.99))
    _toy_steps(optimizer, x, 2)
    assert "exp_avg" not in optimizer.state[x]


# -- behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias_correction", [False, True])
def test_effective_lr_is_d_times_lr(bias_correction: bool) -> None:
    problem = PROBLEMS[1]
    params = problem.init_params()
    optimizer = Prodigy(
        [{"params": params[:1]}, {"params": params[1:], "lr": 0.0}],
        lr=0.7,
        use_bias_correction=bias_correction,
    )
    for k in range(10):
        d = optimizer.statistics()["d"]
        optimizer.zero_grad()
        problem.loss(params, k).backward()
        optimizer.step()
        factor = math.sqrt(1 - 0.999 ** (k + 1)) / (1 - 0.9 ** (k + 1)) if bias_correction else 1
        assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(d * 0.7 * factor)
        assert optimizer.param_groups[1]["effective_lr"] == 0.0
    assert optimizer.statistics()["d"] > 2 * D0  # d moved during the check


def test_settings_read_from_the_first_group_must_agree() -> None:
    x, y = _x0(), _x0()
    for key, value in (("betas", (0.5, 0.9)), ("beta3", 0.5), ("d_coef", 2.0), ("d0", 1e-3)):
        with pytest.raises(ValueError, match=rf"{key} is shared by all param groups"):
            Prodigy([{"params": [x]}, {"params": [y], key: value}])
    with pytest.raises(ValueError, match=r"slice_p must be in \[1, inf\], got 0"):
        Prodigy([{"params": [x]}, {"params": [y], "slice_p": 0}])


def test_registry_and_statistics() -> None:
    spec = lo.spec("prodigy")
    assert spec.cls is Prodigy and lo.spec("Prodigy") is spec
    assert spec.has_global_statistics and spec.oracle == "prodigyopt.Prodigy"
    x = _x0()
    optimizer = lo.create("prodigy", [x])
    _toy_steps(optimizer, x, 2)
    assert {"d", "d_hat", "d_max", "d_numerator", "d_denom", "k"} <= set(optimizer.statistics())
    assert "prodigy-resetting" not in lo.names()  # see NOTE [Prodigy Resetting is not provided]


# -- native CPU kernels (fused=True) --------------------------------------------------------

# more than two of the native driver's 32768-element blocks, with lengths that slice_p does not
# divide (a block then starts mid-slice), an all-zero tensor (0-d x0) and a small one
NATIVE_SHAPES = [(70_001,), (300, 301), (1000,), (5,)]


def _native_params(dtype: torch.dtype) -> list[torch.Tensor]:
    params = make_params(dtype, shapes=NATIVE_SHAPES)
    with torch.no_grad():
        params[2].zero_()
    return params


@pytest.fixture
def native_only(monkeypatch: pytest.MonkeyPatch):
    """Native kernels on, compiled kernels made to fail, the kernels' "used" marks cleared."""
    from lrlab.optim import _fused, _native

    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)

    def refuse(self, *args):
        raise AssertionError(f"compiled kernel {self.name} called where a native one should run")

    monkeypatch.setattr(_fused.FusedKernel, "__call__", refuse)
    for native in _native._KERNELS:
        monkeypatch.setattr(native, "used", False)
    return _native


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++")
@pytest.mark.parametrize("slice_p", [1, 3])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.99)])
@pytest.mark.parametrize("decouple", [True, False])
def test_native_kernels_match_the_reference_path(slice_p, betas, decouple, native_only) -> None:
    """Every slice_p, with or without momentum and coupled decay, a 0-d x0 and a group with lr
    0 (stepped, not counted): the native kernels follow the for-loop path in float64."""
    spec = lo.spec("prodigy")
    results = []
    for path in ({"foreach": False}, {"fused": True}):
        params = _native_params(torch.float64)
        groups = [{"params": params[:3]}, {"params": params[3:], "lr": 0.0}]
        kwargs = {"betas": betas, "decouple": decouple, "weight_decay": 0.01, "slice_p": slice_p}
        optimizer = Prodigy(groups, d0=1e-3, growth_rate=1.5, **kwargs, **path)
        run(optimizer, params, spec, range(6))
        assert optimizer.state[params[2]]["p0"].dim() == 0
        results.append((params, optimizer.statistics()))
    (params_loop, stats_loop), (params_native, stats_native) = results
    for a, b in zip(params_loop, params_native, strict=True):
        # relative to the tensor's scale, not elementwise: without momentum the raw gradient is
        # divided by a tiny sqrt(v) early on, so an entry that the step sends near zero carries
        # the rounding of the others (the foreach path differs from the loop as much)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * float(a.detach().abs().max()))
    for key, value in stats_loop.items():
        assert stats_native[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    moments = "prodigy_moments_momentum" if betas[0] > 0 else "prodigy_moments_without_momentum"
    status = native_only.native_status()
    ran = {k for k, v in status.items() if v == "native" and k.startswith("native:prodigy")}
    assert ran == {f"native:prodigy.{moments}", "native:prodigy.prodigy_step"}


def test_native_sliced_results_do_not_depend_on_the_thread_count(native_only) -> None:
    spec = lo.spec("prodigy")
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            params = _native_params(torch.float32)
            optimizer = Prodigy(params, d0=1e-3, slice_p=3, fused=True)
            run(optimizer, params, spec, range(4))
            results.append(([p.detach().clone() for p in params], optimizer.statistics()))
    finally:
        torch.set_num_threads(threads)
    (params_one, stats_one), (params_three, stats_three) = results
    for a, b in zip(params_one, params_three, strict=True):
        assert torch.equal(a, b)
    assert stats_one == stats_three
