"""D-Adaptation (SGD, Adam, AdaGrad): spec vectors, the official package as oracle, deviations.

Method page: ``docs/methods/d-adaptation.md`` (toy problem: scalar
``x0 = 0``, ``f(x) = 0.5 (x - 3)^2``, so ``g0 = -3``, float64). The oracle is ``dadaptation==3.2``;
where lrlab deliberately differs (a bug or quirk the spec names), a test below pins the
difference.
"""

from __future__ import annotations

import math
import shutil

import dadaptation
import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import DAdaptAdaGrad, DAdaptAdam, DAdaptSGD
from tests.optim._oracle import PROBLEMS, max_trajectory_error, one_group, two_groups
from tests.optim._problems import make_params, run

ORACLE_RTOL = 1e-9
D0 = 1e-6


def _toy_steps(optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> list[float]:
    """Steps on f(x) = 0.5 (x - 3)^2; the iterate after each."""
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
    """``value`` rounds to the spec's ``printed`` number of ``digits`` significant digits."""
    assert float(f"{value:.{digits - 1}e}") == printed, (value, printed)


# -- (a) spec vectors -----------------------------------------------------------------------


def test_sgd_spec_vector() -> None:
    x = _x0()
    optimizer = DAdaptSGD([x])
    x1, x2, x3 = _toy_steps(optimizer, x, 3)
    # hand computation: G0 = 3, lambda = d0 / 3 while d = d0; s_1 = -d0, x_1 = -s_1
    assert x1 == D0
    # s_2 = s_1 + (d0/3)(x_1 - 3) = -2 d0 + d0^2/3 ; x_2 = -s_2; d_hat_2 < d0 keeps d = d0
    assert x2 == pytest.approx(2 * D0 - D0**2 / 3, rel=1e-14)
    assert x3 == pytest.approx(x2 + (D0 / 3) * (3 - x2), rel=1e-14)
    _printed(x2, 2.0e-6, 2)
    _printed(x3, 3.0e-6, 2)
    # step 3 raises d: N_3 = sum_k lambda <g_k, s_k>, d = 2 N_3 / |s_3|
    lam = D0 / 3
    numerator = lam * (x1 - 3) * (-D0) + lam * (x2 - 3) * (-x2)
    expected_d = 2 * numerator / x3
    stats = optimizer.statistics()
    assert stats["d"] == pytest.approx(expected_d, rel=1e-12)
    _printed(stats["d"], 1.9999993e-6, 8)
    assert stats["g0_norm"] == 3.0 and stats["k"] == 3.0
    assert stats["s_norm"] == pytest.approx(x3, rel=1e-14)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(lam, rel=1e-15)


def test_sgd_momentum_spec_vector() -> None:
    x = _x0()
    x1, x2, x3 = _toy_steps(DAdaptSGD([x], momentum=0.9), x, 3)
    # primal averaging: x_{k+1} = 0.9 x_k + 0.1 (x0 - s_{k+1})
    assert x1 == pytest.approx(0.1 * D0, rel=1e-14)
    s2 = -D0 + (D0 / 3) * (x1 - 3)
    assert x2 == pytest.approx(0.9 * x1 - 0.1 * s2, rel=1e-14)
    for value, printed in ((x1, 1e-7), (x2, 2.9e-7), (x3, 5.61e-7)):
        _printed(value, printed, 3)


def test_adam_spec_vector() -> None:
    x = _x0()
    optimizer = DAdaptAdam([x])
    x1, x2, x3 = _toy_steps(optimizer, x, 3)
    assert x1 == pytest.approx(D0 * 0.1 * 3 / (math.sqrt(0.001) * 3 + 1e-8), rel=1e-14)
    for value, printed, digits in (
        (x1, 3.16227733e-6, 9),
        (x2, 7.4118686e-6, 8),
        (x3, 3.9424570e-5, 8),
    ):
        _printed(value, printed, digits)
    _printed(optimizer.statistics()["d"], 4.1478e-5, 5)


def test_adam_first_step_by_hand() -> None:
    """Step 1: s_0 = 0 gives no numerator, so d_hat = 0 and d stays d0; then the second
    step's numerator is (1 - sqrt b2) d0 <g_1, s_1 / (sqrt v_1 + eps)>."""
    x = _x0()
    optimizer = DAdaptAdam([x])
    _toy_steps(optimizer, x, 1)
    stats = optimizer.statistics()
    assert stats["d_hat"] == 0.0 and stats["d"] == D0
    root = math.sqrt(0.999)
    assert stats["s_l1"] == pytest.approx((1 - root) * D0 * 3, rel=1e-14)
    assert optimizer.param_groups[0]["effective_lr"] == D0


def test_adagrad_first_steps_by_hand() -> None:
    """No spec vector for AdaGrad; derived from spec 1.3: alpha_0 = 1e-6, eps = 1e-6,
    lambda = d0: x_1 = 3 d0 / (sqrt(1e-6 + 9) + 1e-6); x_2 = d0 (6 - x_1) / (sqrt(alpha_2) +
    eps) with alpha_2 = alpha_1 + (x_1 - 3)^2. S - G = 0 after step 1, so d stays d0."""
    x = _x0()
    optimizer = DAdaptAdaGrad([x])
    (x1,) = _toy_steps(optimizer, x, 1)
    alpha1 = 1e-6 + 9.0
    assert x1 == pytest.approx(3 * D0 / (math.sqrt(alpha1) + 1e-6), rel=1e-14)
    assert abs(optimizer.statistics()["d_hat"]) < 1e-20
    (x2,) = _toy_steps(optimizer, x, 1)
    alpha2 = alpha1 + (x1 - 3) ** 2
    assert x2 == pytest.approx(D0 * (6 - x1) / (math.sqrt(alpha2) + 1e-6), rel=1e-14)
    stats = optimizer.statistics()
    assert stats["skl1"] == pytest.approx(D0 * (6 - x1), rel=1e-14)
    assert stats["d"] == D0


# -- (b) the official package as oracle -----------------------------------------------------

_SGD_CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"momentum": 0.9}, id="momentum"),
    pytest.param({"weight_decay": 0.01}, id="wd"),
    pytest.param(
        {"lr": 0.5, "d0": 1e-3, "growth_rate": 1.02, "momentum": 0.5, "weight_decay": 0.01},
        id="lr-growth-momentum-wd",
    ),
]
_ADAM_CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"weight_decay": 0.05}, id="coupled-wd"),
    pytest.param({"weight_decay": 0.05, "decouple": True}, id="decoupled-wd"),
    pytest.param(
        {"use_bias_correction": True, "d0": 1e-4, "growth_rate": 1.05, "betas": (0.8, 0.99)},
        id="bias-growth-betas",
    ),
]
_ADAGRAD_CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"momentum": 0.9}, id="momentum"),
    pytest.param({"weight_decay": 0.05}, id="wd"),
    pytest.param({"d0": 1e-3, "growth_rate": 1.1, "eps": 1e-4}, id="d0-growth-eps"),
]
_CASES = (
    [
        pytest.param(DAdaptSGD, dadaptation.DAdaptSGD, config.values[0], id=f"sgd-{config.id}")
        for config in _SGD_CONFIGS
    ]
    + [
        pytest.param(DAdaptAdam, dadaptation.DAdaptAdam, config.values[0], id=f"adam-{config.id}")
        for config in _ADAM_CONFIGS
    ]
    + [
        pytest.param(
            DAdaptAdaGrad, dadaptation.DAdaptAdaGrad, config.values[0], id=f"adagrad-{config.id}"
        )
        for config in _ADAGRAD_CONFIGS
    ]
)
# two groups: the same settings (the sums run over both), a group with lr 0 (excluded from the
# statistics), and per-group settings the package honours per group
_GROUPS = {
    DAdaptSGD: [two_groups(), two_groups(lr=0.0)],
    DAdaptAdam: [two_groups(layer_scale=0.5, weight_decay=0.01, eps=1e-6), two_groups(lr=0.0)],
    DAdaptAdaGrad: [two_groups(weight_decay=0.01, eps=1e-4), two_groups()],
}


def _compare(ours_cls, oracle_cls, kwargs, problem, groups) -> float:
    built: list[torch.optim.Optimizer] = []

    def make_ours(params):
        # the reference path (foreach=False; AdaGrad: fused=False, its default is the native
        # kernels) performs the package's operations in its order; the fast path differs by
        # float rounding (checked against it by the conformance suite)
        extra = {"fused": False} if ours_cls is DAdaptAdaGrad else {"foreach": False}
        built.append(ours_cls(params, **kwargs, **extra))
        return built[-1]

    error = max_trajectory_error(
        make_ours, lambda params: oracle_cls(params, **kwargs), problem, steps=60, groups=groups
    )
    # the comparison means something only if d adapted
    d0 = kwargs.get("d0", D0)
    assert built[0].statistics()["d"] > 2 * d0, built[0].statistics()
    return error


@pytest.mark.parametrize(("ours", "official", "kwargs"), _CASES)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("grouping", ["one", "two-a", "two-b"])
def test_trajectory_matches_official_package(ours, official, kwargs, problem, grouping) -> None:
    groups = one_group if grouping == "one" else _GROUPS[ours][grouping == "two-b"]
    error = _compare(ours, official, kwargs, problem, groups)
    assert error <= ORACLE_RTOL, f"max normwise relative error {error:.3e}"


def test_oracle_tolerance_achieved() -> None:
    """The tolerance stated in the report: Adam and AdaGrad add their sums in the package's
    order and agree bit for bit; SGD stores the numerator as a global value plus a reduced
    increment (spec 1.7), which reorders one addition: within a few ulps."""
    for ours, official, kwargs, expected in (
        (DAdaptAdam, dadaptation.DAdaptAdam, {"weight_decay": 0.05}, 0.0),
        (DAdaptAdaGrad, dadaptation.DAdaptAdaGrad, {"momentum": 0.9}, 0.0),
        (DAdaptSGD, dadaptation.DAdaptSGD, {"momentum": 0.9}, 1e-14),
    ):
        for problem in PROBLEMS:
            assert _compare(ours, official, kwargs, problem, two_groups()) <= expected


# -- deviations from the package, pinned ----------------------------------------------------


def test_sgd_weight_decay_is_per_group_unlike_the_package() -> None:
    """Spec 1.1 quirk: DAdaptSGD applies the first group's weight_decay to every group. lrlab
    honours each group's value. Two scalars, x (wd 0) and y (wd w), two steps by hand."""
    d0, w = 0.1, 0.5

    def run(cls):
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        y = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = cls([{"params": [x]}, {"params": [y], "weight_decay": w}], d0=d0)
        for _ in range(2):
            optimizer.zero_grad()
            (0.5 * (x - 3) ** 2 + 0.5 * (y + 1) ** 2).sum().backward()
            optimizer.step()
        return float(x.detach()), float(y.detach()), optimizer.param_groups[0]["d"]

    lam = d0 / math.sqrt(10.0)  # G0 from the raw gradients (-3, 1)
    s1 = (-3 * lam, lam)
    x1, y1 = -s1[0], -s1[1]  # weight decay is w * y0 = 0 at the first step
    g = (x1 - 3, (y1 + 1) + w * y1)
    numerator = lam * (g[0] * s1[0] + g[1] * s1[1])
    s2 = (s1[0] + lam * g[0], s1[1] + lam * g[1])
    expected_d = max(d0, 2 * numerator / math.hypot(*s2))

    x2, y2, d = run(DAdaptSGD)
    assert x2 == pytest.approx(-s2[0], rel=1e-14)
    assert y2 == pytest.approx(-s2[1], rel=1e-14)
    assert d == pytest.approx(expected_d, rel=1e-13)
    _, y2_package, _ = run(dadaptation.DAdaptSGD)
    assert y2_package == pytest.approx(-(s1[1] + lam * (y1 + 1)), rel=1e-14)  # wd ignored
    assert abs(y2 - y2_package) > 1e-4


@pytest.mark.parametrize("ours", [DAdaptSGD, DAdaptAdam, DAdaptAdaGrad])
def test_all_zero_gradients_are_a_no_op(ours) -> None:
    """The package's DAdaptSGD divides by ||g0|| = 0 (ZeroDivisionError); all variants here
    skip such a step (k stays 0) and continue exactly like a fresh run afterwards."""
    official = getattr(dadaptation, ours.__name__)
    x_ours, x_fresh = _x0(), _x0()
    optimizer = ours([x_ours])
    x_ours.grad = torch.zeros_like(x_ours)
    optimizer.step()
    assert float(x_ours.detach()) == 0.0
    assert optimizer.statistics()["k"] == 0.0
    assert optimizer.param_groups[0]["effective_lr"] == 0.0
    assert _toy_steps(optimizer, x_ours, 3) == _toy_steps(ours([x_fresh]), x_fresh, 3)
    if ours is DAdaptSGD:
        x = _x0()
        package = official([x])
        x.grad = torch.zeros_like(x)
        with pytest.raises(ZeroDivisionError):
            package.step()


def test_sgd_lr_zero_after_the_start_is_a_no_op() -> None:
    """An LR schedule reaching 0: the package's DAdaptSGD reads an unbound variable."""
    x = _x0()
    optimizer = DAdaptSGD([x])
    _toy_steps(optimizer, x, 2)
    before = (float(x.detach()), optimizer.statistics())
    optimizer.param_groups[0]["lr"] = 0.0
    _toy_steps(optimizer, x, 1)
    after = optimizer.statistics()
    assert float(x.detach()) == before[0]
    assert after.pop("effective_lr") == 0.0
    assert after == {key: value for key, value in before[1].items() if key != "effective_lr"}
    x = _x0()
    package = dadaptation.DAdaptSGD([x])
    _toy_steps(package, x, 2)
    package.param_groups[0]["lr"] = 0.0
    with pytest.raises(UnboundLocalError):
        _toy_steps(package, x, 1)


@pytest.mark.parametrize("ours", [DAdaptSGD, DAdaptAdam, DAdaptAdaGrad])
def test_gradients_are_not_modified(ours) -> None:
    """The package adds coupled weight decay to ``p.grad`` in place; lrlab does not."""
    for cls in (ours, getattr(dadaptation, ours.__name__)):
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        optimizer = cls([x], weight_decay=0.5)
        for _ in range(2):
            optimizer.zero_grad()
            (x * x).sum().backward()
            grad = x.grad.clone()
            optimizer.step()
            unchanged = torch.equal(x.grad, grad)
        assert unchanged is (cls is ours), cls


def test_adagrad_group_with_lr_zero_takes_no_part_unlike_the_package() -> None:
    """The package uses the first group's lr for every group. lrlab: a group with lr 0 below the
    largest lr is left out, so the other group follows the package run without it."""
    problem = PROBLEMS[2]  # the MLP: the first two tensors are layer 1
    ours_params, oracle_params = problem.init_params(), problem.init_params()
    optimizer = DAdaptAdaGrad(
        [{"params": ours_params[:2]}, {"params": ours_params[2:], "lr": 0.0}], momentum=0.5
    )
    oracle = dadaptation.DAdaptAdaGrad(oracle_params[:2], momentum=0.5)
    frozen = [p.detach().clone() for p in ours_params[2:]]
    for step in range(30):
        for opt, params in ((optimizer, ours_params), (oracle, oracle_params)):
            opt.zero_grad()
            problem.loss(params, step).backward()
            opt.step()
    for a, b in zip(ours_params, oracle_params, strict=True):
        assert torch.equal(a, b)
    for p, p0 in zip(ours_params[2:], frozen, strict=True):
        assert torch.equal(p, p0)
    assert optimizer.param_groups[1]["effective_lr"] == 0.0
    # the package with the same two groups moves the "frozen" group
    package_params = problem.init_params()
    package = dadaptation.DAdaptAdaGrad(
        [{"params": package_params[:2]}, {"params": package_params[2:], "lr": 0.0}]
    )
    package.zero_grad()
    problem.loss(package_params, 0).backward()
    package.step()
    assert not torch.equal(package_params[2], frozen[0])


# -- behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias_correction", [False, True])
def test_adam_effective_lr_is_d_times_lr_with_bias_correction(bias_correction: bool) -> None:
    problem = PROBLEMS[1]
    params = problem.init_params()
    optimizer = DAdaptAdam(
        [{"params": params[:1]}, {"params": params[1:], "layer_scale": 0.5}],
        lr=0.7,
        use_bias_correction=bias_correction,
    )
    for k in range(8):
        d = optimizer.statistics()["d"]
        optimizer.zero_grad()
        problem.loss(params, k).backward()
        optimizer.step()
        factor = math.sqrt(1 - 0.999 ** (k + 1)) / (1 - 0.9 ** (k + 1)) if bias_correction else 1
        assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(d * 0.7 * factor)
        assert optimizer.param_groups[1]["effective_lr"] == pytest.approx(0.5 * d * 0.7 * factor)
    assert optimizer.statistics()["d"] > 10 * D0  # d moved during the check


@pytest.mark.parametrize("name", ["dadapt-sgd", "dadapt-adam", "dadapt-adagrad"])
def test_d_coef_scales_the_estimate(name: str) -> None:
    """lrlab extension: d_hat is multiplied by d_coef (1.0 reproduces the package)."""
    problem = PROBLEMS[0]
    estimates = []
    for d_coef in (1.0, 3.0):
        params = problem.init_params()
        optimizer = lo.create(name, params, d_coef=d_coef)
        for k in range(2):  # d = d0 during both steps (d_hat is 0 or below d0 at step 1)
            optimizer.zero_grad()
            problem.loss(params, k).backward()
            optimizer.step()
        estimates.append(optimizer.statistics()["d_hat"])
    assert estimates[0] != 0.0
    assert estimates[1] == pytest.approx(3.0 * estimates[0], rel=1e-12)


def test_settings_read_from_the_first_group_must_agree() -> None:
    x, y = _x0(), _x0()
    with pytest.raises(ValueError, match=r"momentum is shared by all param groups"):
        DAdaptSGD([{"params": [x]}, {"params": [y], "momentum": 0.5}])
    with pytest.raises(ValueError, match=r"betas is shared by all param groups"):
        DAdaptAdam([{"params": [x]}, {"params": [y], "betas": (0.5, 0.9)}])
    with pytest.raises(ValueError, match=r"growth_rate is shared"):
        DAdaptAdaGrad([{"params": [x]}, {"params": [y], "growth_rate": 2.0}])
    optimizer = DAdaptAdam([{"params": [x], "betas": [0.9, 0.999]}, {"params": [y]}])
    assert len(optimizer.param_groups) == 2  # a list and a tuple are the same betas
    with pytest.raises(ValueError, match=r"layer_scale must be in \[0, inf\), got -1"):
        DAdaptAdam([{"params": [x], "layer_scale": -1}])


@pytest.mark.parametrize(
    ("cls", "key", "invalid", "valid", "match"),
    [
        (DAdaptSGD, "d0", 0.0, 1e-6, r"d0 must be in \(0, inf\), got 0\.0"),
        (DAdaptAdam, "eps", 0.0, 1e-8, r"eps must be in \(0, inf\), got 0\.0"),
        (DAdaptAdaGrad, "momentum", 1.0, 0.0, r"momentum must be in \[0, 1\), got 1\.0"),
        (lo.Prodigy, "slice_p", 0, 1, r"slice_p must be in \[1, inf\], got 0"),
    ],
)
def test_an_invalid_default_is_rejected_when_every_group_overrides_it(
    cls: type, key: str, invalid: object, valid: object, match: str
) -> None:
    """The constructors leave the group settings to the declared rules, which check the
    defaults too, although no group uses the invalid one."""
    with pytest.raises(ValueError, match=match):
        cls([{"params": [_x0()], key: valid}], **{key: invalid})


@pytest.mark.parametrize("cls", [DAdaptSGD, DAdaptAdam, lo.Prodigy])
def test_fsdp_in_use_does_not_hide_an_invalid_sharded(cls: type) -> None:
    with pytest.raises(ValueError, match=r"sharded must be True or False, got 1"):
        cls([_x0()], fsdp_in_use=True, sharded=1)
    with pytest.raises(ValueError, match=r"fsdp_in_use must be True or False, got 'yes'"):
        cls([_x0()], fsdp_in_use="yes")


def test_group_lrs_must_be_the_largest_or_zero() -> None:
    x, y = _x0(), _x0()
    optimizer = DAdaptAdam([{"params": [x]}, {"params": [y], "lr": 0.0}])
    optimizer.param_groups[1]["lr"] = 0.5
    x.grad, y.grad = torch.ones_like(x), torch.ones_like(y)
    with pytest.raises(ValueError, match=r"lr of param group 1 must equal the largest"):
        optimizer.step()


def test_package_only_arguments_are_accepted() -> None:
    x, y = _x0(), _x0()
    optimizer = DAdaptSGD([x], 1.0, 0.0, 0.0, 10, 1e-6, math.inf, True)  # positional, as upstream
    assert optimizer.param_groups[0]["sharded"] is True  # fsdp_in_use means sharded
    assert DAdaptAdam([y], log_every=5, fsdp_in_use=False).param_groups[0]["sharded"] is False
    # single process: a sharded optimizer reduces nothing and runs on CPU (the package's
    # fsdp_in_use=True builds a .cuda() buffer and needs a process group)
    assert _toy_steps(optimizer, x, 2) == _toy_steps(DAdaptSGD([y]), y, 2)


def test_statistics_expose_d_and_the_sums() -> None:
    expected = {
        "dadapt-sgd": {"d", "d_hat", "numerator_weighted", "s_norm", "g0_norm", "k"},
        "dadapt-adam": {"d", "d_hat", "numerator_weighted", "s_l1", "k"},
        "dadapt-adagrad": {"d", "d_hat", "gsq_weighted", "sksq_weighted", "skl1", "k"},
    }
    for name, keys in expected.items():
        x = _x0()
        optimizer = lo.create(name, [x])
        _toy_steps(optimizer, x, 3)
        stats = optimizer.statistics()
        assert keys <= set(stats), name
        assert stats["k"] == 3.0
        assert lo.spec(name).has_global_statistics


# -- native CPU kernels (fused=True) --------------------------------------------------------

# more than two of the native driver's 32768-element blocks, and small tensors
NATIVE_SHAPES = [(70_001,), (300, 301), (5,), (2, 3)]


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++")
@pytest.mark.parametrize(
    ("name", "kernels"),
    [
        ("dadapt-sgd", {"dadapt_sgd_norms", "dadapt_sgd_dual", "dadapt_sgd_step"}),
        ("dadapt-adagrad", {"dadapt_adagrad_accumulate", "dadapt_adagrad_move"}),
    ],
)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_native_kernels_match_the_reference_path(name, kernels, momentum, native_only) -> None:
    """Multi-block tensors, per-group decay and a group with lr 0 (moved, not counted): the
    native kernels follow the for-loop path in float64."""
    spec = lo.spec(name)
    reference = {"foreach": False} if spec.supports_foreach else {}
    results = []
    for path in (reference, {"fused": True}):
        params = make_params(torch.float64, shapes=NATIVE_SHAPES)
        groups = [
            {"params": params[:2], "weight_decay": 0.01},
            {"params": params[2:3]},
            {"params": params[3:], "lr": 0.0},
        ]
        optimizer = lo.create(name, groups, d0=1e-3, momentum=momentum, **path)
        run(optimizer, params, spec, range(6))
        results.append((params, optimizer.statistics()))
    (params_loop, stats_loop), (params_native, stats_native) = results
    for a, b in zip(params_loop, params_native, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for key, value in stats_loop.items():
        assert stats_native[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    assert stats_loop["d"] > 1e-3  # d moved during the check
    status = native_only.native_status()
    ran = {k for k, v in status.items() if v == "native" and k.startswith("native:dadaptation")}
    assert ran == {f"native:dadaptation.{kernel}" for kernel in kernels}
