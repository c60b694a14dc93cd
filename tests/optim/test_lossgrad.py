"""LOSSGRAD: spec vectors, the closure contract, guards, the consistent closure, and the paper's
claim that the step size forgets its initial value."""

from __future__ import annotations

import math

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import Lossgrad, make_closure, make_consistent_closure

F64 = torch.float64


def _square_closure(optimizer, x):
    """f(x) = sum x^2 (spec 9: f(x) = x^2 for one coordinate)."""
    return make_closure(optimizer, lambda: (x * x).sum())


@pytest.mark.parametrize("foreach", [False, True])
def test_spec_vector_growing_h(foreach: bool) -> None:
    """Spec 9: f = x^2, x0 = 1, c = 1.05, h0 = 0.1."""
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1, c=1.05, foreach=foreach)
    loss = optimizer.step(_square_closure(optimizer, x))
    assert float(loss.detach()) == 1.0  # step() returns the loss before the move
    assert x.item() == pytest.approx(0.8, abs=1e-15)
    stats = optimizer.statistics()
    assert stats["rel_err"] == pytest.approx(0.1, abs=1e-12)  # lred 0.4, L_new 0.64
    assert stats["h"] == pytest.approx(0.105, abs=1e-15)
    assert optimizer.param_groups[0]["effective_lr"] == 0.1  # the h this step used
    optimizer.step(_square_closure(optimizer, x))
    assert x.item() == pytest.approx(0.632, abs=1e-15)
    assert optimizer.statistics()["rel_err"] == pytest.approx(0.105, abs=1e-12)
    assert optimizer.statistics()["h"] == pytest.approx(0.11025, abs=1e-15)


def test_spec_vector_shrinking_h() -> None:
    """Spec 9: h0 = 0.6 overshoots to x = -0.2, L_new = 0.04, rel_err = 0.6 > 1/2."""
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.6)
    optimizer.step(_square_closure(optimizer, x))
    assert x.item() == pytest.approx(-0.2, abs=1e-15)
    assert optimizer.statistics()["rel_err"] == pytest.approx(0.6, abs=1e-12)
    assert optimizer.statistics()["h"] == pytest.approx(0.5714285714, abs=5e-11)


def test_rel_err_on_a_quadratic_is_the_rayleigh_quotient() -> None:
    """Derived vector (spec 3.1/9): on f = 0.5 x^T H x, rel_err = h g^T H g / (2 ||g||^2) exactly.

    H = diag(1, 10), x0 = (1, 1): g = (1, 10), g^T H g = 1001, ||g||^2 = 101, so with h = 0.05
    rel_err = 0.05 * 1001 / 202 = 0.24777... < 1/2 (grow); with h = 0.15 it is 0.7433... (shrink).
    """
    curvature = torch.tensor([1.0, 10.0], dtype=F64)
    for h, grows in ((0.05, True), (0.15, False)):
        x = torch.tensor([1.0, 1.0], dtype=F64, requires_grad=True)
        optimizer = Lossgrad([x], lr=h, c=2.0)
        optimizer.step(make_closure(optimizer, lambda x=x: 0.5 * (curvature * x * x).sum()))
        assert optimizer.statistics()["rel_err"] == pytest.approx(h * 1001 / 202, rel=1e-12)
        assert optimizer.statistics()["h"] == pytest.approx(h * 2 if grows else h / 2, rel=1e-15)
        torch.testing.assert_close(x.detach(), torch.tensor([1 - h, 1 - 10 * h], dtype=F64))


def test_two_groups_predict_the_decrease_of_the_whole_move() -> None:
    """Derived vector: groups a (lr 0.1) and b (lr 0.2) on f = a^2 + b^2, a0 = 1, b0 = 2.

    lred = 0.1 * 2^2 + 0.2 * 4^2 = 3.6; after the move a = 0.8, b = 1.2, so L_new = 0.64 + 1.44 =
    2.08 and rel_err = (2.08 - (5 - 3.6)) / 3.6 = 0.68 / 3.6 < 1/2: the shared factor grows by c.
    """
    a = torch.tensor([1.0], dtype=F64, requires_grad=True)
    b = torch.tensor([2.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1, c=1.25)
    optimizer.step(make_closure(optimizer, lambda: (a * a).sum() + (b * b).sum()))
    assert (a.item(), b.item()) == pytest.approx((0.8, 1.2), abs=1e-15)
    assert optimizer.statistics()["rel_err"] == pytest.approx(0.68 / 3.6, rel=1e-12)
    assert [g["effective_lr"] for g in optimizer.param_groups] == [0.1, 0.2]
    assert optimizer.statistics()["lr_factor"] == 1.25
    assert [g["lr"] * g["lr_factor"] for g in optimizer.param_groups] == [0.125, 0.25]


class _CountingClosure:
    """An lrlab closure that counts forward and backward passes."""

    def __init__(self, optimizer, params, compute_loss) -> None:
        self.inner = make_closure(optimizer, compute_loss)
        self.params = params
        self.backward_calls = 0
        self.forward_only_calls = 0
        self.grad_enabled_in_check: list[bool] = []

    def __call__(self, *, backward: bool = True):
        if backward:
            self.backward_calls += 1
        else:
            self.forward_only_calls += 1
            self.grad_enabled_in_check.append(torch.is_grad_enabled())
        return self.inner(backward=backward)


def test_one_backward_and_one_forward_only_pass_per_step() -> None:
    x = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1)
    closure = _CountingClosure(optimizer, [x], lambda: (x * x).sum())
    for _ in range(3):
        optimizer.step(closure)
    assert closure.backward_calls == 3
    assert closure.forward_only_calls == 3
    assert closure.grad_enabled_in_check == [False, False, False]


def test_plain_closure_keeps_the_callers_gradients() -> None:
    """A closure without ``backward=``: the check pass runs backward but .grad is restored."""
    x = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    torch.testing.assert_close(x.grad, torch.tensor([2.0, -4.0], dtype=F64))  # at x0, not x1
    torch.testing.assert_close(x.detach(), torch.tensor([0.8, -1.6], dtype=F64))


def test_step_without_closure_is_rejected() -> None:
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(ValueError, match="needs a closure"):
        optimizer.step(loss=loss)


def test_zero_gradient_keeps_h_and_skips_the_check_pass() -> None:
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1)
    closure = _CountingClosure(optimizer, [x], lambda: (x * 0.0).sum() + 3.0)
    for _ in range(4):
        optimizer.step(closure)
    assert closure.forward_only_calls == 0
    stats = optimizer.statistics()
    assert stats["h"] == 0.1 and stats["zero_gradient_steps"] == 4.0
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0], dtype=F64))


def test_parameters_without_gradients_are_ignored() -> None:
    """An unused parameter changes neither the move nor rel_err nor h."""
    runs = []
    for with_unused in (False, True):
        x = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
        unused = torch.tensor([5.0], dtype=F64, requires_grad=True)
        optimizer = Lossgrad([x, unused] if with_unused else [x], lr=0.3)
        for _ in range(5):
            optimizer.step(make_closure(optimizer, lambda x=x: (x**4).sum()))
        if with_unused:
            assert unused.grad is None and unused.item() == 5.0
        runs.append((x.detach().clone(), optimizer.statistics()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_nonfinite_check_loss_undoes_the_step_and_shrinks_h() -> None:
    """Spec 3.5: a NaN/inf loss after the move counts as rel_err = +inf (shrink); we also undo
    the move, so that the next step does not start from a point with a non-finite loss."""
    x = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1, c=1.5)

    def compute():  # finite at x0 = (1, -2), infinite after any of the moves below
        loss = (x * x).sum()
        return loss if x[0].item() > 0.95 else loss * math.inf

    closure = make_closure(optimizer, compute)
    for step in range(3):
        optimizer.step(closure)
        torch.testing.assert_close(x.detach(), torch.tensor([1.0, -2.0], dtype=F64))
        stats = optimizer.statistics()
        assert stats["nonfinite_checks"] == step + 1
        assert stats["h"] == pytest.approx(0.1 / 1.5 ** (step + 1), rel=1e-14)
        assert stats["rel_err"] == math.inf
        assert optimizer.param_groups[0]["effective_lr"] == 0.0
    assert stats["nonfinite_steps"] == 0.0  # the first pass was always finite


def test_nonfinite_first_loss_is_skipped_by_the_policy_and_h_is_kept() -> None:
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1)
    optimizer.step(make_closure(optimizer, lambda: (x * x).sum() * math.nan))
    assert optimizer.statistics()["nonfinite_steps"] == 1.0
    assert optimizer.statistics()["h"] == 0.1 and x.item() == 1.0


def _noisy_least_squares(seed: int = 0, n: int = 256, d: int = 8, noise: float = 0.5):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, generator=generator, dtype=F64)
    w_true = torch.randn(d, generator=generator, dtype=F64)
    targets = inputs @ w_true + noise * torch.randn(n, generator=generator, dtype=F64)
    return inputs, targets


def _final_h(h0: float, steps: int) -> tuple[float, float]:
    inputs, targets = _noisy_least_squares()
    w = torch.zeros(inputs.shape[1], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([w], lr=h0)
    batches = torch.Generator().manual_seed(1)
    log_h_tail = []
    for step in range(steps):
        index = torch.randint(0, inputs.shape[0], (32,), generator=batches)
        batch_x, batch_y = inputs[index], targets[index]
        closure = make_closure(
            optimizer, lambda bx=batch_x, by=batch_y: 0.5 * ((bx @ w - by) ** 2).mean()
        )
        optimizer.step(closure)
        if step >= steps - 100:
            log_h_tail.append(math.log(optimizer.statistics()["h"]))
    return optimizer.statistics()["h"], math.exp(sum(log_h_tail) / len(log_h_tail))


def test_h_forgets_its_initial_value_when_the_loss_has_a_positive_floor() -> None:
    """The paper's claim (insensitivity to h0), as a test.

    Noisy least squares (targets = X w* + 0.5 noise, mini-batches of 32 from 256 examples): the
    mini-batch loss never reaches 0, so rel_err does not vanish and h settles around the value
    where the fitted parabola's minimiser equals the step. Starting from h0 = 1e-3 and h0 = 1
    (1000x apart; ln(1000)/ln(1.05) = 142 steps at the least to cross that gap), after 600 steps
    both runs end within a factor 2 of each other, each far from where it started.
    """
    small_final, small_mean = _final_h(1e-3, 600)
    large_final, large_mean = _final_h(1.0, 600)
    assert 0.5 < small_final / large_final < 2.0, (small_final, large_final)
    assert 0.5 < small_mean / large_mean < 2.0, (small_mean, large_mean)
    assert small_final > 100 * 1e-3  # it really moved from h0 = 1e-3


# -- the consistent check pass (dropout and BatchNorm) --------------------------------------


def _dropout_batchnorm_model() -> torch.nn.Module:
    generator_state = torch.get_rng_state()
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, 1),
    ).to(F64)
    torch.set_rng_state(generator_state)
    return model.train()


def _batch():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(32, 4, generator=generator, dtype=F64), torch.randn(
        32, 1, generator=generator, dtype=F64
    )


def _buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def test_consistent_closure_replays_dropout_and_restores_batchnorm_buffers() -> None:
    inputs, targets = _batch()
    model = _dropout_batchnorm_model()
    optimizer = Lossgrad(model.parameters(), lr=0.1)

    def compute():
        return torch.nn.functional.mse_loss(model(inputs), targets)

    # reference: one training forward/backward only
    reference = _dropout_batchnorm_model()
    reference.load_state_dict(model.state_dict())
    torch.manual_seed(11)
    torch.nn.functional.mse_loss(reference(inputs), targets).backward()
    rng_after_one_pass = torch.get_rng_state()

    torch.manual_seed(11)
    closure = make_consistent_closure(optimizer, compute, model)
    first = closure()
    buffers_after_first = _buffers(model)
    second = closure(backward=False)
    assert torch.equal(first.detach(), second), "same parameters must give the same loss"
    for buffer, expected in zip(model.buffers(), buffers_after_first, strict=True):
        assert torch.equal(buffer, expected), "the check pass changed a BatchNorm buffer"
    for buffer, expected in zip(model.buffers(), reference.buffers(), strict=True):
        assert torch.equal(buffer, expected)
    assert torch.equal(torch.get_rng_state(), rng_after_one_pass)
    assert not second.requires_grad

    # the caveat it fixes: a plain lrlab closure draws a new mask and updates BN again
    torch.manual_seed(11)
    plain = make_closure(optimizer, compute)
    first_plain = plain()
    buffers_plain = _buffers(model)
    second_plain = plain(backward=False)
    assert not torch.equal(first_plain.detach(), second_plain)
    assert any(not torch.equal(b, e) for b, e in zip(model.buffers(), buffers_plain, strict=True))


def test_consistent_closure_makes_rel_err_meaningful_under_dropout() -> None:
    """With a tiny h the parabola is nearly linear: rel_err ~ 0 when the check pass evaluates
    the same function, and is dominated by dropout noise (|rel_err| >> 1) when it does not."""
    inputs, targets = _batch()
    rel_errs = {}
    for kind in ("consistent", "plain"):
        model = _dropout_batchnorm_model()
        optimizer = Lossgrad(model.parameters(), lr=1e-7)

        def compute(model=model):
            return torch.nn.functional.mse_loss(model(inputs), targets)

        closure = (
            make_consistent_closure(optimizer, compute, model)
            if kind == "consistent"
            else make_closure(optimizer, compute)
        )
        torch.manual_seed(5)
        optimizer.step(closure)
        rel_errs[kind] = optimizer.statistics()["rel_err"]
    assert abs(rel_errs["consistent"]) < 1e-3
    assert abs(rel_errs["plain"]) > 1e2


def test_consistent_closure_needs_a_first_pass() -> None:
    x = torch.tensor([1.0], dtype=F64, requires_grad=True)
    optimizer = Lossgrad([x], lr=0.1)
    closure = make_consistent_closure(optimizer, lambda: (x * x).sum())
    with pytest.raises(ValueError, match=r"needs a closure\(\) call first"):
        closure(backward=False)


def test_registry_declares_loss_and_closure() -> None:
    spec = lo.spec("lossgrad")
    assert spec.needs_loss and spec.needs_closure and spec.has_global_statistics
    assert spec.lr_argument == "lr" and spec.confidence == "high"
