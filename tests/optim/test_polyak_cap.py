"""TAPS / MOTAPS cap the Polyak step (``eta_max``, as SPS_max does): hand-computed vectors."""

from __future__ import annotations

import pytest
import torch

from lrlab.optim import MOTAPS, TAPS


def _one_step(cls: type, loss: float, lr: float, eta_max: float) -> tuple[torch.Tensor, TAPS]:
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    optimizer = cls([x], num_examples=4, lr=lr, eta_max=eta_max)
    x.grad = torch.tensor([1e-3, 0.0], dtype=torch.float64)  # a clipped or tiny gradient
    optimizer.step(loss=loss, example_indices=torch.arange(4))
    return x.detach(), optimizer


@pytest.mark.parametrize("cls", [TAPS, MOTAPS])
@pytest.mark.parametrize(
    ("loss", "lr", "eta_max", "step"),
    [
        # r = 2 - 0, q = 1e-6 + 4 / 4^2 = 0.250001: r / q = 7.99997 capped at 1
        (2.0, 1.0, 1.0, 1.0),
        # below the slacks the step is negative: -3 / 0.250001 capped at -1
        (-3.0, 1.0, 1.0, -1.0),
        # lr relaxes the capped step: min(0.5 * 7.99997, 0.5 * 1)
        (2.0, 0.5, 1.0, 0.5),
        # a cap above the Polyak step changes nothing: 2 / 0.250001
        (2.0, 1.0, 100.0, 2.0 / 0.250001),
    ],
)
def test_polyak_step_is_capped(cls: type, loss: float, lr: float, eta_max: float, step: float):
    x, optimizer = _one_step(cls, loss, lr, eta_max)
    expected = torch.tensor([1.0 - step * 1e-3, 2.0], dtype=torch.float64)
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=0)
    assert optimizer.statistics()["step_size"] == pytest.approx(step, rel=1e-12)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(abs(step), rel=1e-12)
    # the table moved by the capped step: each slack + step / 4, then the mean is projected
    table = optimizer.param_groups[0]["example_alpha"]
    assert torch.allclose(table, table.mean().expand(4), rtol=0, atol=1e-15)


def test_the_default_cap_bounds_the_step() -> None:
    _, optimizer = _one_step(TAPS, 50.0, 1.0, eta_max=10.0)
    assert optimizer.statistics()["step_size"] == 10.0  # 50 / 0.250001 = 200 uncapped
    assert TAPS([torch.nn.Parameter(torch.zeros(1))], num_examples=4).defaults["eta_max"] == 10.0


@pytest.mark.parametrize("cls", [TAPS, MOTAPS])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_cap_is_rejected(cls: type, bad: float) -> None:
    with pytest.raises(ValueError, match="eta_max must be in"):
        cls([torch.nn.Parameter(torch.zeros(1))], num_examples=4, eta_max=bad)
