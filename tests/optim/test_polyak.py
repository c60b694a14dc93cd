"""SPS / SPS_max, TAPS and MOTAPS: derived vectors, invariants and the guards.

No oracle exists (the official SPS code is not on PyPI; TAPS/MOTAPS have no public code), and
spec section 11 has no SPS vector, so every vector here is worked out by hand from the formulas
of ``docs/methods/loss-based.md`` (and, for MOTAPS's target, from the class
docstring), as each test's docstring shows. Toy problem unless stated: scalar ``x0 = 0``,
``f(x) = 0.5 (x - 3)^2``, so ``L0 = 4.5``, ``g0 = -3``, ``||g0||^2 = 9``.
"""

from __future__ import annotations

import io

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import MOTAPS, SPS, TAPS
from lrlab.optim.polyak import _multiplicity

F64 = torch.float64


def _x0(value: float = 0.0) -> torch.Tensor:
    return torch.full((1,), value, dtype=F64, requires_grad=True)


def _toy_step(optimizer: torch.optim.Optimizer, x: torch.Tensor, loss_shift: float = 0.0) -> float:
    """One step on 0.5 (x - 3)^2; ``loss_shift`` is added to the loss value passed (not to the
    gradient), to test how the step reacts to the loss alone."""
    optimizer.zero_grad()
    loss = 0.5 * ((x - 3.0) ** 2).sum()
    loss.backward()
    optimizer.step(loss=loss.detach() + loss_shift)
    return float(x.detach())


# -- SPS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_sps_constant_jumps_to_the_minimum(foreach: bool, capturable: bool) -> None:
    """Derived: c = 1/2, eps = 0: gamma = 4.5 / (0.5 * 9) = 1, x1 = 0 + 1 * 3 = 3 exactly. Then
    the gradient is 0 (< 1e-8): no step (the capturable step selects a step of 0, and its
    Polyak ratio 0 / 0 stays out of it)."""
    x = _x0()
    optimizer = SPS(
        [x], adapt_flag="constant", c=0.5, eps=0.0, foreach=foreach, capturable=capturable
    )
    assert _toy_step(optimizer, x) == 3.0
    assert float(optimizer.param_groups[0]["effective_lr"]) == 1.0
    assert optimizer.statistics()["grad_norm"] == 3.0
    assert _toy_step(optimizer, x) == 3.0
    assert float(optimizer.param_groups[0]["effective_lr"]) == 0.0
    assert optimizer.statistics()["polyak_step"] == 0.0


def test_sps_default_eps_enters_the_denominator() -> None:
    x = _x0()
    optimizer = SPS([x], adapt_flag="constant")
    assert _toy_step(optimizer, x) == pytest.approx(3 * 4.5 / (4.5 + 1e-8), rel=1e-15)


def test_sps_max_caps_the_step() -> None:
    """Derived: eta_max = 0.2 caps gamma_P = 1: x1 = 0.6. Step 2: x = 0.6, g = -2.4,
    L = 2.88, gamma_P = 2.88 / (0.5 * 5.76) = 1 again, capped: x2 = 0.6 + 0.2 * 2.4 = 1.08."""
    x = _x0()
    optimizer = SPS([x], adapt_flag="constant", c=0.5, eta_max=0.2, eps=0.0)
    assert _toy_step(optimizer, x) == pytest.approx(0.6, rel=1e-15)
    assert _toy_step(optimizer, x) == pytest.approx(1.08, rel=1e-15)
    assert optimizer.statistics()["polyak_step"] == pytest.approx(1.0, rel=1e-15)
    assert optimizer.param_groups[0]["effective_lr"] == 0.2


def test_sps_fstar_derived_vector() -> None:
    """Derived: f* = 0.5, c = 1: gamma = (4.5 - 0.5) / 9 = 4/9, x1 = 4/3."""
    x = _x0()
    optimizer = SPS([x], adapt_flag="constant", c=1.0, fstar=0.5, eps=0.0)
    assert _toy_step(optimizer, x) == pytest.approx(4.0 / 3.0, rel=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_sps_smooth_iter_derived_vector(foreach: bool) -> None:
    """Derived: c = 0.2 (the paper's setting) gives gamma_P = 0.5 / 0.2 = 2.5 at every point of
    this 1-d quadratic; with N = 1, tau = 2, gamma_{-1} = 0.1 the bound doubles each step:
    gamma = 0.2, 0.4, 0.8, 1.6, then min(3.2, 2.5) = 2.5. The error e = x - 3 is multiplied by
    1 - gamma: -3, -2.4, -1.44, -0.288, 0.1728, -0.2592."""
    x = _x0()
    optimizer = SPS(
        [x], n_batches_per_epoch=1, init_step_size=0.1, c=0.2, gamma=2.0, eps=0.0, foreach=foreach
    )
    expected_steps = [0.2, 0.4, 0.8, 1.6, 2.5]
    expected_errors = [-2.4, -1.44, -0.288, 0.1728, -0.2592]
    for step, error in zip(expected_steps, expected_errors, strict=True):
        x_new = _toy_step(optimizer, x)
        assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(step, rel=1e-15)
        assert x_new - 3.0 == pytest.approx(error, rel=1e-12)
    assert optimizer.param_groups[0]["step_size"] == 2.5


def test_sps_smooth_iter_default_growth() -> None:
    """The official defaults: the bound grows by 2^(1/500) per step from init_step_size = 1."""
    x = _x0()
    optimizer = SPS([x], c=0.2, eps=0.0)
    _toy_step(optimizer, x)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(2 ** (1 / 500), rel=1e-15)


@pytest.mark.parametrize("capturable", [False, True])
def test_sps_zero_step_keeps_the_smoothing_reference(capturable: bool) -> None:
    """Deviation from the official code (which stores the 0 and stays at 0 forever): a step
    whose loss is below f* moves nothing and the next bound grows from the last real step
    (a select in the capturable step)."""
    x = _x0()
    optimizer = SPS(
        [x],
        n_batches_per_epoch=1,
        init_step_size=0.1,
        c=0.2,
        gamma=2.0,
        eps=0.0,
        capturable=capturable,
    )
    _toy_step(optimizer, x)  # gamma = 0.2, x = 0.6
    before = float(x.detach())
    _toy_step(optimizer, x, loss_shift=-10.0)  # loss < f* = 0: no step
    assert float(x.detach()) == before
    assert float(optimizer.param_groups[0]["effective_lr"]) == 0.0
    assert float(optimizer.param_groups[0]["step_size"]) == pytest.approx(0.2, rel=1e-15)
    assert isinstance(optimizer.param_groups[0]["step_size"], torch.Tensor) is capturable
    _toy_step(optimizer, x)
    assert float(optimizer.param_groups[0]["effective_lr"]) == pytest.approx(0.4, rel=1e-15)


def test_sps_negative_loss_never_ascends() -> None:
    """The official smooth_iter takes a negative step (ascent) when the loss is negative."""
    x = _x0()
    optimizer = SPS([x])
    _toy_step(optimizer, x, loss_shift=-5.0)
    assert float(x.detach()) == 0.0
    assert optimizer.statistics()["polyak_step"] == 0.0


def test_sps_per_group_c_derived_vector() -> None:
    """Derived: a and b, each 0.5 (. - 3)^2 from 0: L = 9, ||g||^2 = 18 over both groups.
    Group a (c = 0.5): 9 / 9 = 1, a1 = 3; group b (c = 2): 9 / 36 = 0.25, b1 = 0.75."""
    a, b = _x0(), _x0()
    optimizer = SPS([{"params": [a]}, {"params": [b], "c": 2.0}], adapt_flag="constant", eps=0.0)
    loss = 0.5 * ((a - 3) ** 2).sum() + 0.5 * ((b - 3) ** 2).sum()
    loss.backward()
    optimizer.step(loss=loss)
    assert [g["effective_lr"] for g in optimizer.param_groups] == [1.0, 0.25]
    assert float(a.detach()) == 3.0
    assert float(b.detach()) == 0.75


# -- TAPS / MOTAPS: a 4-example least-squares toy ------------------------------------------------

TARGETS = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)


def _examples_step(optimizer, x: torch.Tensor, indices: list[int]) -> float:
    """Mini-batch step on f_i(x) = 0.5 (x - y_i)^2 with y = (1, 2, 3, 4); returns the loss."""
    index = torch.tensor(indices)
    optimizer.zero_grad()
    loss = (0.5 * (x - TARGETS[index]) ** 2).mean()
    loss.backward()
    optimizer.step(loss=loss.detach(), example_indices=index)
    return float(loss.detach())


def _table(optimizer) -> torch.Tensor:
    return optimizer.param_groups[0]["example_alpha"]


@pytest.mark.parametrize("foreach", [False, True])
def test_taps_derived_vector(foreach: bool) -> None:
    """Derived: batch {0, 1} at x = 0: L_B = (0.5 + 2) / 2 = 1.25, g = -1.5, ||g||^2 = 2.25,
    alpha = 0 (f* = 0): r = 1.25, q = 2.25 + 2/4 = 2.75, s = 5/11, x1 = 1.5 * 5/11 = 15/22;
    alpha_0, alpha_1 += s/2 = 5/22, then minus the mean 5/44: (5, 5, -5, -5) / 44."""
    x = _x0()
    optimizer = TAPS([x], num_examples=4, foreach=foreach)
    _examples_step(optimizer, x, [0, 1])
    assert float(x.detach()) == pytest.approx(15 / 22, rel=1e-15)
    torch.testing.assert_close(
        _table(optimizer), torch.tensor([5, 5, -5, -5], dtype=F64) / 44, rtol=1e-15, atol=1e-16
    )
    stats = optimizer.statistics()
    assert stats["residual"] == 1.25
    assert stats["step_size"] == pytest.approx(5 / 11, rel=1e-15)
    assert stats["target"] == 0.0
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(5 / 11, rel=1e-15)


def test_taps_step_solves_the_linearised_equation() -> None:
    """With lr = 1 the step is the exact projection: after it, the linearisation
    L_B + g (x1 - x0) equals the batch mean of the slacks (before the mean projection)."""
    x = _x0(0.3)
    optimizer = TAPS([x], num_examples=4, fstar=0.2)
    _examples_step(optimizer, x, [0, 1])  # move away from the start first
    x0 = float(x.detach())
    table_before = _table(optimizer).clone()
    index = torch.tensor([1, 3, 3])
    optimizer.zero_grad()
    loss = (0.5 * (x - TARGETS[index]) ** 2).mean()
    loss.backward()
    grad = float(x.grad)
    optimizer.step(loss=loss.detach(), example_indices=index)
    s = optimizer.statistics()["step_size"]
    tracked = table_before.clone()
    tracked.index_add_(0, index, torch.full((3,), s / 3, dtype=F64))
    linearised = float(loss.detach()) + grad * (float(x.detach()) - x0)
    assert linearised == pytest.approx(float(tracked[index].mean()), rel=1e-13)


@pytest.mark.parametrize("capturable", [False, True])
def test_taps_repeated_indices_derived_vector(capturable: bool) -> None:
    """Derived: batch (0, 0): c_0 = 2, so q = ||g||^2 + 4/4 = 1 + 1 = 2; L = 0.5, g = -1,
    s = 0.25, x1 = 0.25; alpha_0 += 2 * 0.25 / 2 = 0.25, then minus the mean 0.0625."""
    x = _x0()
    optimizer = TAPS([x], num_examples=4, capturable=capturable)
    _examples_step(optimizer, x, [0, 0])
    assert float(x.detach()) == 0.25
    torch.testing.assert_close(
        _table(optimizer), torch.tensor([0.1875, -0.0625, -0.0625, -0.0625], dtype=F64)
    )


def test_taps_first_step_is_a_polyak_step() -> None:
    """With the slacks at f* = 0, TAPS's first step is SPS's with c = 1 and eps = 1/b
    (spec 5.3: SP up to the 1/b term)."""
    x_taps, x_sps = _x0(), _x0()
    taps = TAPS([x_taps], num_examples=4)
    sps = SPS([x_sps], adapt_flag="constant", c=1.0, eps=0.5)
    _examples_step(taps, x_taps, [0, 1])
    _examples_step(sps, x_sps, [0, 1])
    assert float(x_taps.detach()) == pytest.approx(float(x_sps.detach()), rel=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_motaps_derived_vector(foreach: bool) -> None:
    """Derived: as the TAPS vector (lb = 0), s = 5/11, x1 = 15/22. Target: lambda = 0.5 keeps
    half of the mean's rise s / n = 5/44: tau1 = 5/88, and the slacks are shifted to mean 5/88:
    (5/22, 5/22, 0, 0) - 5/88 = (15, 15, -5, -5) / 88."""
    x = _x0()
    optimizer = MOTAPS([x], num_examples=4, foreach=foreach)
    _examples_step(optimizer, x, [0, 1])
    assert float(x.detach()) == pytest.approx(15 / 22, rel=1e-15)
    assert optimizer.statistics()["target"] == pytest.approx(5 / 88, rel=1e-15)
    torch.testing.assert_close(
        _table(optimizer), torch.tensor([15, 15, -5, -5], dtype=F64) / 88, rtol=1e-14, atol=1e-16
    )


def test_motaps_push_derived_vector() -> None:
    """Derived: push = 0.5 toward lb = 0 halves the moved target: tau1 = 0.5 * 5/88."""
    x = _x0()
    optimizer = MOTAPS([x], num_examples=4, push=0.5)
    _examples_step(optimizer, x, [0, 1])
    assert optimizer.statistics()["target"] == pytest.approx(5 / 176, rel=1e-15)
    assert float(_table(optimizer).mean()) == pytest.approx(5 / 176, rel=1e-12)


BATCHES = [[0, 1], [2, 3, 3], [1], [0, 2, 3], [3, 0], [1, 2]] * 3


def test_motaps_without_moving_target_is_taps() -> None:
    x_taps, x_motaps = _x0(0.5), _x0(0.5)
    taps = TAPS([x_taps], num_examples=4, fstar=0.25)
    motaps = MOTAPS([x_motaps], num_examples=4, lmbda=0.0, push=0.0, lb=0.25)
    for batch in BATCHES:
        _examples_step(taps, x_taps, batch)
        _examples_step(motaps, x_motaps, batch)
        assert torch.equal(x_taps, x_motaps)
        assert torch.equal(_table(taps), _table(motaps))


@pytest.mark.parametrize("cls", [TAPS, MOTAPS])
def test_mean_of_slacks_is_the_target_after_every_step(cls) -> None:
    x = _x0(-1.0)
    optimizer = cls([x], num_examples=4, lr=0.7)
    for batch in BATCHES:
        _examples_step(optimizer, x, batch)
        target = optimizer.statistics()["target"]
        assert float(_table(optimizer).mean()) == pytest.approx(target, abs=1e-14)


# -- TAPS / MOTAPS: behaviour without interpolation ---------------------------------------------


def _least_squares(n: int = 64, d: int = 5):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, dtype=F64, generator=generator)
    y = a @ torch.randn(d, dtype=F64, generator=generator) + 0.5 * torch.randn(
        n, dtype=F64, generator=generator
    )
    x_star = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1)
    f_star = float((0.5 * (a @ x_star - y) ** 2).mean())
    return a, y, x_star, f_star


def _train(optimizer, x: torch.Tensor, a, y, epochs: int, batch: int = 8) -> None:
    generator = torch.Generator().manual_seed(1)
    n = a.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            optimizer.zero_grad()
            loss = (0.5 * (a[index] @ x - y[index]) ** 2).mean()
            loss.backward()
            optimizer.step(loss=loss.detach(), example_indices=index)


def test_solution_is_a_fixed_point_of_taps_but_not_of_sps() -> None:
    """Noisy least squares (no interpolation): at x* with alpha_i = f_i(x*) every residual is 0,
    so TAPS stays put on every batch; SPS (f* = 0) walks away."""
    a, y, x_star, f_star = _least_squares()
    x = x_star.clone().requires_grad_()
    optimizer = TAPS([x], num_examples=64, fstar=f_star)
    _table(optimizer).copy_(0.5 * (a @ x_star - y) ** 2)
    _train(optimizer, x, a, y, epochs=1)
    assert float((x.detach() - x_star).norm()) < 1e-12
    assert abs(optimizer.statistics()["residual"]) < 1e-12
    x_sps = x_star.clone().requires_grad_()
    _train(SPS([x_sps], adapt_flag="constant", c=0.5), x_sps, a, y, epochs=1)
    assert float((x_sps.detach() - x_star).norm()) > 0.05


def test_taps_and_motaps_converge_where_sps_stalls() -> None:
    """Noisy least squares, batch 8 of 64, 150 epochs from x = 0: SPS with f* = 0 (c = 1/2)
    stays in a wide neighbourhood of x*; TAPS (knowing f*) and MOTAPS (starting its target at
    lb = 0) get much closer, and MOTAPS's target ends near f*."""
    a, y, x_star, f_star = _least_squares()
    distances = {}
    for name, make in {
        "sps": lambda p: SPS(p, adapt_flag="constant", c=0.5),
        "taps": lambda p: TAPS(p, num_examples=64, fstar=f_star),
        "motaps": lambda p: MOTAPS(p, num_examples=64),
    }.items():
        x = torch.zeros(5, dtype=F64, requires_grad=True)
        optimizer = make([x])
        _train(optimizer, x, a, y, epochs=150)
        distances[name] = float((x.detach() - x_star).norm())
        if name == "motaps":
            assert optimizer.statistics()["target"] == pytest.approx(f_star, rel=0.2)
    assert distances["taps"] < 0.5 * distances["sps"], distances
    assert distances["motaps"] < 0.5 * distances["sps"], distances


# -- TAPS / MOTAPS: the index API and checkpoints -----------------------------------------------


@pytest.mark.parametrize("capturable", [False, True])
def test_out_of_range_indices_raise_before_anything_changes(capturable: bool) -> None:
    """A capturable step checks the range of the indices where they live (a CPU tensor costs
    no device read): the same ValueError, before anything changes."""
    x = _x0()
    optimizer = TAPS([x], num_examples=4, capturable=capturable)
    _examples_step(optimizer, x, [0, 1])
    before_x, before_table = x.detach().clone(), _table(optimizer).clone()
    optimizer.zero_grad()
    loss = 0.5 * ((x - 3.0) ** 2).sum()
    loss.backward()
    for bad in (torch.tensor([1, 4]), torch.tensor([-1, 2])):
        with pytest.raises(ValueError, match=r"must be in \[0, 4\) \(num_examples\), got values"):
            optimizer.step(loss=loss.detach(), example_indices=bad)
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([[0, 1]]), torch.tensor([], dtype=int)):
        with pytest.raises(ValueError, match="non-empty 1-d integer tensor"):
            optimizer.step(loss=loss.detach(), example_indices=bad)
    with pytest.raises(ValueError, match="needs example_indices"):
        optimizer.step(loss=loss.detach())
    assert torch.equal(x.detach(), before_x)
    assert torch.equal(_table(optimizer), before_table)


def test_multiplicity_is_the_sum_of_squared_counts() -> None:
    """sum_i c_i^2 from the sorted indices (shape-static) equals the count of torch.unique,
    exactly, for batches with and without repeats and in any integer dtype."""
    generator = torch.Generator().manual_seed(0)
    for size, high, dtype in [(1, 5, torch.int64), (64, 10, torch.int32), (257, 1000, torch.int16)]:
        indices = torch.randint(0, high, (size,), generator=generator, dtype=dtype)
        _, counts = torch.unique(indices, return_counts=True)
        assert int(_multiplicity(indices)) == int(counts.square().sum())
    assert int(_multiplicity(torch.tensor([3, 1, 3, 3, 0, 1]))) == 9 + 4 + 1


def test_indices_may_be_a_list() -> None:
    x = _x0()
    optimizer = TAPS([x], num_examples=4)
    loss = 0.5 * ((x - 3.0) ** 2).sum()
    loss.backward()
    optimizer.step(loss=loss.detach(), example_indices=[0, 1])
    assert float(x.detach()) != 0.0


def test_table_round_trips_exactly_for_bfloat16_parameters() -> None:
    """The table is a group entry, so load_state_dict does not cast it to the parameters'
    bfloat16 (per-parameter state would be cast)."""
    x = torch.zeros(2, dtype=torch.bfloat16, requires_grad=True)
    optimizer = MOTAPS([x], num_examples=8)
    for step in range(3):
        optimizer.zero_grad()
        loss = ((x.float() - 1.0 - step) ** 2).mean()
        loss.backward()
        optimizer.step(loss=loss, example_indices=torch.tensor([step, step + 1]))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = MOTAPS([x], num_examples=8)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert _table(fresh).dtype == F64
    assert torch.equal(_table(fresh), _table(optimizer))
    assert fresh.statistics()["target"] == optimizer.statistics()["target"]


def test_registry_declares_the_needs() -> None:
    assert lo.spec("sps").needs_loss and not lo.spec("sps").needs_example_index
    for name in ("taps", "motaps"):
        spec = lo.spec(name)
        assert spec.needs_loss and spec.needs_example_index and spec.confidence == "low"
        assert all(kwargs["num_examples"] >= 32 for kwargs in spec.sample_kwargs)
