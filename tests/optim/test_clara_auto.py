"""CLARA-auto: first steps computed by hand from the write-up's formulas, and its safeguards.

Every expected value below is computed here from the algorithm box of
``lrlab.optim.clara_auto`` (``docs/methods/clara_auto.md``) in plain Python floats, never read
from the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrlab.optim import ClaraAuto, ClaraSGD

C = 0.2
MU = C / (2 - C)
BOUND = math.log((2 - C) / C)
A = (1 - C) ** 2
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
ANNEAL = 0.5  # k: the default evidence margin, in noise standard deviations


def _step(optimizer: torch.optim.Optimizer, x: torch.Tensor, grad: list[float]) -> None:
    x.grad = torch.tensor(grad, dtype=torch.float64)
    optimizer.step()


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


def _sigma(dimension: int) -> float:
    """Standard deviation of S/M under pure noise, one tensor: sqrt(4a / ((1 + a) D))."""
    return math.sqrt(4 * A / (1 + A) / dimension)


def _expected_damping(dimension: int) -> float:
    return C / (BOUND * (1 + _sigma(dimension)))


def _log_statistic(ratio: float, dimension: int) -> float:
    """l = clip(log(S/M), -L, L) - k sigma."""
    return max(-BOUND, min(BOUND, math.log(ratio))) - ANNEAL * _sigma(dimension)


def test_first_two_steps_by_hand_without_safeguards() -> None:
    x0 = [1.0, -2.0, 0.5]
    g1, g2 = [0.3, -0.4, 1.2], [0.1, 0.5, -0.2]
    lr = 0.05
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAuto([x], lr=lr, distance_bound=False, brake=False)

    # step 1: m_hat = g, v_hat = g^2, so the move is eta g / (|g| + eps) and q = g / (|g| + eps)
    _step(optimizer, x, g1)
    h1 = [abs(g) + EPS for g in g1]
    expected = [xi - lr * g / h for xi, g, h in zip(x0, g1, h1, strict=True)]
    torch.testing.assert_close(x.detach(), torch.tensor(expected, dtype=torch.float64))
    # S = c^2 ||u||^2 = c^2 and M = mu (1 - (1-c)^2) = c^2: the first ratio is exactly 1, so
    # l = -k sigma and the factor falls by exp(-d k sigma)
    damping = _expected_damping(3)
    assert optimizer.statistics()["path_ratio"] == pytest.approx(1.0, rel=1e-12)
    factor = math.exp(-damping * ANNEAL * _sigma(3))
    assert optimizer.statistics()["lr_factor"] == pytest.approx(factor, rel=1e-12)
    assert optimizer.param_groups[0]["effective_lr"] == lr

    # step 2, at eta = lr * factor
    _step(optimizer, x, g2)
    eta = lr * factor
    m = [BETA1 * (1 - BETA1) * a + (1 - BETA1) * b for a, b in zip(g1, g2, strict=True)]
    v = [BETA2 * (1 - BETA2) * a * a + (1 - BETA2) * b * b for a, b in zip(g1, g2, strict=True)]
    h2 = [math.sqrt(vi / (1 - BETA2**2)) + EPS for vi in v]
    expected = [
        e - eta * (mi / (1 - BETA1**2)) / h for e, mi, h in zip(expected, m, h2, strict=True)
    ]
    torch.testing.assert_close(x.detach(), torch.tensor(expected, dtype=torch.float64))
    u1 = _unit([g / h for g, h in zip(g1, h1, strict=True)])
    u2 = _unit([g / h for g, h in zip(g2, h2, strict=True)])
    path = [(1 - C) * C * a + C * b for a, b in zip(u1, u2, strict=True)]
    ratio = sum(p * p for p in path) / (MU * (1 - (1 - C) ** 4))
    assert optimizer.statistics()["path_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert optimizer.statistics()["damping"] == pytest.approx(damping, rel=1e-12)
    factor *= math.exp(damping * _log_statistic(ratio, 3))
    assert optimizer.statistics()["lr_factor"] == pytest.approx(factor, rel=1e-12)
    # step 3 applies lr * factor
    _step(optimizer, x, g2)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(lr * factor, rel=1e-12)


def test_log_ratio_is_clipped_at_full_agreement_and_full_disagreement() -> None:
    """Identical directions drive ``S/M`` above ``(2-c)/c`` in the transient? No: they drive
    ``log(S/M)`` to ``log(1 / (1 - (1-c)^(2t)) ...)``; the clip applies when it exceeds L. Here:
    the factor after a long run of identical directions grows by exactly exp(d L) per step once
    ``S/M >= (2-c)/c`` (the stationary maximum is ``1/mu = (2-c)/c``), and alternating directions
    shrink it by at most exp(-d L)."""
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAuto([x], lr=1e-3, distance_bound=False, brake=False)
    for _ in range(200):
        _step(optimizer, x, [1.0, 1.0, 1.0, 1.0])
    before = optimizer.statistics()["lr_factor"]
    _step(optimizer, x, [1.0, 1.0, 1.0, 1.0])
    growth = optimizer.statistics()["lr_factor"] / before
    # the stationary ratio of identical unit directions is 1/mu, so log(S/M) -> L, l = L - k sigma
    expected = math.exp(_expected_damping(4) * (BOUND - ANNEAL * _sigma(4)))
    assert growth == pytest.approx(expected, rel=1e-6)

    y = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAuto([y], lr=1e-3, distance_bound=False, brake=False)
    sign = 1.0
    for _ in range(200):
        _step(optimizer, y, [sign] * 4)
        sign = -sign
    before = optimizer.statistics()["lr_factor"]
    _step(optimizer, y, [sign] * 4)
    shrink = optimizer.statistics()["lr_factor"] / before
    # alternating unit directions: |p| -> c / (2 - c), S/M -> mu = exp(-L): the lower clip
    expected = math.exp(-_expected_damping(4) * (BOUND + ANNEAL * _sigma(4)))
    assert shrink == pytest.approx(expected, rel=1e-6)


def test_fixed_damping_overrides_the_automatic_one() -> None:
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAuto([x], lr=1e-3, damping=0.0, distance_bound=False, brake=False)
    for grad in ([1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [1.0, 0.0, 0.2]):
        _step(optimizer, x, grad)
    assert optimizer.statistics()["lr_factor"] == 1.0
    assert optimizer.statistics()["damping"] == 0.0


def test_distance_bound_caps_the_first_step_and_grows_with_the_distance() -> None:
    x0 = [3.0, -4.0]
    floor = 1e-4  # r_eps
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAuto([x], lr=100.0, brake=False)
    _step(optimizer, x, [1.0, 1.0])
    # step 1: eta = min(100, 0 + r_eps) = r_eps, and each coordinate moves by eta g/(|g|+eps)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(floor, rel=1e-12)
    moved = floor / (1 + EPS)
    torch.testing.assert_close(
        x.detach(), torch.tensor([3.0 - moved, -4.0 - moved], dtype=torch.float64)
    )
    assert optimizer.statistics()["capped_steps"] == 1
    # step 2: the bound is the rms distance travelled (moved) plus r_eps
    assert optimizer.statistics()["distance_bound"] == pytest.approx(moved + floor, rel=1e-12)
    # the cap lowered the factor to r_eps / lr; the first ratio is 1 (l = -k sigma), so step 2
    # applies r_eps exp(-d k sigma), below the new bound: the bound caps, it never raises the LR
    _step(optimizer, x, [1.0, 1.0])
    annealed = floor * math.exp(-_expected_damping(2) * ANNEAL * _sigma(2))
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(annealed, rel=1e-12)
    assert optimizer.statistics()["capped_steps"] == 1


def test_anneal_lowers_the_factor_by_exactly_d_k_sigma_per_step_under_pure_noise() -> None:
    """With gradients that do not depend on x, S/M is the same sequence for every k, so the
    factors differ by exactly exp(-d k sigma) per step; with k = 0 (the unbiased statistic) the
    LR does not anneal on independent directions."""
    steps, dimension = 300, 50

    def factor(anneal: float) -> float:
        generator = torch.Generator().manual_seed(0)
        x = torch.zeros(dimension, dtype=torch.float64, requires_grad=True)
        optimizer = ClaraAuto([x], lr=1e-2, anneal=anneal, distance_bound=False, brake=False)
        for _ in range(steps):
            x.grad = torch.randn(dimension, generator=generator, dtype=torch.float64)
            optimizer.step()
        return optimizer.statistics()["lr_factor"]

    unbiased, annealed = factor(0.0), factor(ANNEAL)
    per_step = _expected_damping(dimension) * ANNEAL * _sigma(dimension)
    assert annealed / unbiased == pytest.approx(math.exp(-per_step * steps), rel=1e-9)
    assert annealed < 0.2 < 0.3 < unbiased < 3.0


@pytest.mark.parametrize("capturable", [False, True])
def test_brake_fires_when_the_gradient_norm_explodes_along_a_steady_direction(
    capturable: bool,
) -> None:
    """The path sees agreement (grow); the brake sees ||g|| double every step (shrink)."""

    def run(brake: bool) -> dict[str, float]:
        x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        optimizer = ClaraAuto(
            [x], lr=1e-2, distance_bound=False, brake=brake, capturable=capturable
        )
        for step in range(30):
            _step(optimizer, x, [2.0**step] * 5)
        return optimizer.statistics()

    braked, free = run(True), run(False)
    assert free["brake_events"] == 0
    assert braked["brake_events"] >= 1
    assert braked["lr_factor"] < free["lr_factor"] * math.exp(-BOUND) * 1.0000001


def test_brake_stays_quiet_on_a_steady_gradient_norm() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAuto([x], lr=1e-2)
    for _ in range(300):
        x.grad = torch.randn(50, generator=generator, dtype=torch.float64)
        optimizer.step()
    assert optimizer.statistics()["brake_events"] == 0


def _ill_conditioned_loss(x: torch.Tensor) -> torch.Tensor:
    curvature = torch.logspace(0, 2, x.numel(), dtype=torch.float64)
    return 0.5 * (curvature * x * x).sum()


def test_plain_clara_sgd_diverges_where_clara_auto_does_not() -> None:
    """f = 0.5 sum a_i x_i^2 with a_i in [1, 100], initial LR 10: SGD's iterate grows by
    |1 - 10 a_i| per step; CLARA-SGD (d = 0.1, raw gradient steps) can shrink its LR by at most
    e^-0.1 per step and the loss passes the runner's divergence threshold (1e6 times the initial
    loss). CLARA-auto starts at the distance bound and converges."""

    def train(optimizer: torch.optim.Optimizer, x: torch.Tensor) -> tuple[float, float]:
        worst = 0.0
        for _ in range(300):
            optimizer.zero_grad()
            loss = _ill_conditioned_loss(x)
            loss.backward()
            optimizer.step()
            worst = max(worst, float(loss.detach()))
        return float(_ill_conditioned_loss(x).detach()), worst

    start = torch.linspace(-1.0, 1.0, 20, dtype=torch.float64)
    initial = float(_ill_conditioned_loss(start))
    x = start.clone().requires_grad_()
    _, plain_worst = train(ClaraSGD([x], lr=10.0, d=0.1, unit_step=False), x)
    assert not math.isfinite(plain_worst) or plain_worst > 1e6 * initial

    y = start.clone().requires_grad_()
    auto = ClaraAuto([y], lr=10.0)
    final, worst = train(auto, y)
    assert final < 1e-3 * initial
    assert worst < 10 * initial
    assert auto.statistics()["capped_steps"] >= 1  # the safeguard's activity is visible


@pytest.mark.parametrize("lr", [1e-6, 1e2])
def test_any_initial_lr_reaches_the_same_region(lr: float) -> None:
    """From 1e-6 and from 100 the LR ends within a decade of each other on a quadratic."""
    finals = []
    for start_lr in (lr, 1e-2):
        x = torch.linspace(-1.0, 1.0, 20, dtype=torch.float64).requires_grad_()
        optimizer = ClaraAuto([x], lr=start_lr)
        for _ in range(200):
            optimizer.zero_grad()
            _ill_conditioned_loss(x).backward()
            optimizer.step()
        finals.append(float(_ill_conditioned_loss(x).detach()))
    assert finals[0] < 1e-2 and finals[1] < 1e-2


@pytest.mark.parametrize("capturable", [False, True])
def test_brake_cusum_follows_its_formulas(capturable: bool) -> None:
    """mean/variance: exponential (rate c) of log ||g||; from step 11 C = max(0, C + z - 1/2),
    z = clip((log||g|| - mean) / sqrt(var), -3, 3), alarm when C > 5 (the capturable step
    computes each branch as a select on the device)."""
    norms = [1.0, 2.0, 0.5, 1.5, 1.0, 3.0, 0.7, 1.2, 2.5, 1.1, 1.8, 4.0, 9.0, 30.0, 100.0]
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = ClaraAuto([x], lr=1e-3, distance_bound=False, capturable=capturable)
    mean = variance = cusum = 0.0
    events = 0
    for step, norm in enumerate(norms, start=1):
        _step(optimizer, x, [norm])
        z = math.log(norm)
        if step == 1:
            mean = z
            continue
        deviation = z - mean
        standardised = max(-3.0, min(3.0, deviation / math.sqrt(variance + 1e-12)))
        mean += C * deviation
        variance = (1 - C) * (variance + C * deviation**2)
        if step <= 10:
            continue
        cusum = max(0.0, cusum + standardised - 0.5)
        if cusum > 5.0:
            events, cusum = events + 1, 0.0
        assert optimizer.statistics()["brake_cusum"] == pytest.approx(cusum, rel=1e-9, abs=1e-12)
    assert optimizer.statistics()["brake_events"] == events
    assert events >= 1  # the last steps rise by 3x per step


def test_capturable_step_follows_the_host_step_through_the_safeguards() -> None:
    """The selects of the capturable step against the host step's branches, step by step: the
    distance bound caps (lr 10), a step without any gradient changes no global (M = 0), a step
    with one tensor's gradient only, and a norm explosion that fires the brake."""

    def grads(step: int) -> list[list[float] | None]:
        if step == 6:
            return [None, None]
        scale = 3.0 ** max(0, step - 14)
        first = [scale * (1.0 + 0.1 * ((step * 7 + i) % 5)) for i in range(3)]
        return [first, None if step == 9 else [scale * (0.5 - 0.2 * (step % 3)), scale]]

    runs = []
    for capturable in (False, True):
        x = torch.linspace(-1.0, 1.0, 3, dtype=torch.float64).requires_grad_()
        y = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
        groups = [{"params": [x]}, {"params": [y], "lr": 5.0}]
        optimizer = ClaraAuto(groups, lr=10.0, capturable=capturable)
        trace = []
        for step in range(26):
            for p, g in zip((x, y), grads(step), strict=True):
                p.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
            optimizer.step()
            trace.append(({**optimizer.statistics()}, x.detach().clone(), y.detach().clone()))
        runs.append((optimizer, trace))
    (host, host_trace), (device, device_trace) = runs
    assert isinstance(device.param_groups[1]["brake_cusum"], torch.Tensor)
    assert device.state[device.param_groups[0]["params"][0]]["step"].dim() == 0
    for (stats_h, x_h, y_h), (stats_d, x_d, y_d) in zip(host_trace, device_trace, strict=True):
        torch.testing.assert_close(x_d, x_h, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(y_d, y_h, rtol=1e-12, atol=1e-14)
        for key, value in stats_h.items():
            assert stats_d[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    stats = host_trace[-1][0]
    assert stats["capped_steps"] >= 1 and stats["brake_events"] >= 1
    # the step without a gradient: the host step returns early, the selects keep everything
    for trace in (host_trace, device_trace):
        before, after = trace[5][0], trace[6][0]
        assert {k: v for k, v in after.items() if k != "effective_lr"} == {
            k: v for k, v in before.items() if k != "effective_lr"
        }
    assert device.param_groups[0]["global_step"] == 25 == host.param_groups[0]["global_step"]
