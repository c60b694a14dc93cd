"""WNGrad and WN-Adam: spec vectors, derived vectors per granularity, and the accumulator's
properties (monotone, no epsilon drift)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import WNAdam, WNGrad

F64 = torch.float64


def _half_square_step(optimizer, params) -> None:
    """f = 0.5 sum ||p||^2 over the given tensors (gradient = the parameters)."""
    optimizer.zero_grad()
    sum(0.5 * (p * p).sum() for p in params).backward()
    optimizer.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_wngrad_spec_vector_lr_1(foreach: bool) -> None:
    """Spec 9: f = 0.5 ||x||^2, x0 = (1, 2), b0 = 1, eta = 1."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = WNGrad([x], lr=1.0, foreach=foreach)
    _half_square_step(optimizer, [x])
    assert optimizer.statistics()["b"] == pytest.approx(6.0, abs=1e-14)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(1 / 6, abs=1e-15)
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.8333333333, 1.6666666667], dtype=F64), rtol=0, atol=5e-11
    )
    _half_square_step(optimizer, [x])
    assert optimizer.statistics()["b"] == pytest.approx(6.5787037037, abs=5e-11)
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.7066619751, 1.4133239503], dtype=F64), rtol=0, atol=5e-11
    )
    _half_square_step(optimizer, [x])
    assert optimizer.statistics()["b"] == pytest.approx(6.9582398324, abs=5e-11)


def test_wngrad_spec_vector_lr_half() -> None:
    """Spec 9: eta = 0.5: b1 = 1 + 0.25 * 5 = 2.25, x1 = x0 (1 - 0.5 / 2.25)."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = WNGrad([x], lr=0.5)
    _half_square_step(optimizer, [x])
    assert optimizer.statistics()["b"] == 2.25
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.7777777778, 1.5555555556], dtype=F64), rtol=0, atol=5e-11
    )
    _half_square_step(optimizer, [x])
    assert optimizer.statistics()["b"] == pytest.approx(2.5860768176, abs=5e-11)


def _wn_adam_reference(steps: int) -> list[tuple[Fraction, Fraction]]:
    """WN-Adam (spec 4.2) in exact rational arithmetic, written from the spec's three lines."""
    beta, eta = Fraction(9, 10), Fraction(1)
    x = [Fraction(1), Fraction(2)]
    m = [Fraction(0), Fraction(0)]
    b = Fraction(1)
    trajectory = []
    for t in range(1, steps + 1):
        g = list(x)  # gradient of 0.5 ||x||^2
        m = [beta * mi + (1 - beta) * gi for mi, gi in zip(m, g, strict=True)]
        b = b + eta**2 * sum(gi * gi for gi in g) / b
        x = [xi - eta / (1 - beta**t) * mi / b for xi, mi in zip(x, m, strict=True)]
        trajectory.append((x[0], x[1]))
    return trajectory


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_wn_adam_derived_vector(foreach: bool, capturable: bool) -> None:
    """Derived vector: f = 0.5 ||x||^2, x0 = (1, 2), b0 = 1, eta = 1, beta = 0.9, computed
    exactly with fractions (step 1 equals WNGrad's, x1 = (5/6, 5/3), b1 = 6; step 2 has
    b2 = 6 + (125/36) / 6 = 1421/216 and m2 = (13/75, 26/75), bias correction 1 - 0.81).
    Capturable: b and the step count (its bias correction) are 0-d tensors, the same numbers."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = WNAdam([x], lr=1.0, beta=0.9, foreach=foreach, capturable=capturable)
    for step, expected in enumerate(_wn_adam_reference(4)):
        _half_square_step(optimizer, [x])
        torch.testing.assert_close(
            x.detach(), torch.tensor([float(v) for v in expected], dtype=F64), rtol=1e-14, atol=0
        )
        if step == 1:
            assert optimizer.statistics()["b"] == pytest.approx(1421 / 216, rel=1e-15)
    assert isinstance(optimizer.state[x]["step"], torch.Tensor) is capturable
    assert int(optimizer.state[x]["step"]) == 4


def _weight_and_bias():
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64, requires_grad=True)
    bias = torch.tensor([1.0], dtype=F64, requires_grad=True)
    return weight, bias


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("cls", [WNGrad, WNAdam])
def test_granularities_derived_vectors(cls, foreach: bool, capturable: bool) -> None:
    """Derived vectors: W = [[1, 2], [3, 4]], bias = [1], f = 0.5 (||W||^2 + bias^2), lr 1, b0 1.

    global: b = 1 + 30 + 1 = 32; tensor: b_W = 31, b_bias = 2; row: b = (1 + 5, 1 + 25) per row
    and the bias is not adapted (b = 1, so it moves by its full gradient to 0). The first step
    of WN-Adam equals WNGrad's (the bias-corrected momentum is the gradient). Capturable: the
    same numbers with a device step count (and, global, a device b).
    """
    cases = {
        "global": ([[1 - 1 / 32, 2 - 2 / 32], [3 - 3 / 32, 4 - 4 / 32]], 1 - 1 / 32, 1 / 32),
        "tensor": ([[1 - 1 / 31, 2 - 2 / 31], [3 - 3 / 31, 4 - 4 / 31]], 0.5, (4 / 31 + 0.5) / 5),
        "row": (
            [[1 - 1 / 6, 2 - 2 / 6], [3 - 3 / 26, 4 - 4 / 26]],
            0.0,
            (4 * (1 / 6 + 1 / 26) / 2 + 1) / 5,
        ),
    }
    for granularity, (weight_1, bias_1, effective_lr) in cases.items():
        weight, bias = _weight_and_bias()
        optimizer = cls(
            [weight, bias],
            lr=1.0,
            granularity=granularity,
            foreach=foreach,
            capturable=capturable,
        )
        _half_square_step(optimizer, [weight, bias])
        torch.testing.assert_close(
            weight.detach(), torch.tensor(weight_1, dtype=F64), rtol=1e-15, atol=1e-15
        )
        assert bias.item() == pytest.approx(bias_1, abs=1e-15), granularity
        effective = optimizer.param_groups[0]["effective_lr"]
        assert isinstance(effective, torch.Tensor) is capturable
        assert float(effective) == pytest.approx(effective_lr, rel=1e-14)
        if granularity == "row":
            torch.testing.assert_close(
                optimizer.state[weight]["b"], torch.tensor([[6.0], [26.0]], dtype=F64)
            )
            assert optimizer.state[bias]["b"].item() == 1.0
        if granularity == "tensor":
            assert optimizer.state[weight]["b"].item() == 31.0
            assert optimizer.state[bias]["b"].item() == 2.0


@pytest.mark.parametrize("shape", [(2, 1, 1, 2), (2, 1, 2)])
def test_row_granularity_of_conv_kernels_is_per_out_in_slice(shape) -> None:
    """A conv kernel (out, in, *spatial) has one b per (out, in) slice, normed over space:
    the same numbers as the 2-D case above, b = (6, 26)."""
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64).reshape(shape).requires_grad_()
    optimizer = WNGrad([weight], lr=1.0, granularity="row")
    _half_square_step(optimizer, [weight])
    b = optimizer.state[weight]["b"]
    assert b.shape == (2, 1) + (1,) * (len(shape) - 2)
    torch.testing.assert_close(b.reshape(-1), torch.tensor([6.0, 26.0], dtype=F64))
    expected = torch.tensor([1 - 1 / 6, 2 - 2 / 6, 3 - 3 / 26, 4 - 4 / 26], dtype=F64)
    torch.testing.assert_close(weight.detach().reshape(-1), expected, rtol=1e-15, atol=1e-15)


def test_coupled_weight_decay_derived_vector() -> None:
    """wd = 0.5 on f = 0.5 ||x||^2, x0 = (1, 2): g = 1.5 x0, b = 1 + 11.25 = 12.25,
    x1 = x0 - 1.5 x0 / 12.25; .grad is left as the loss gradient."""
    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    optimizer = WNGrad([x], lr=1.0, weight_decay=0.5)
    _half_square_step(optimizer, [x])
    assert optimizer.statistics()["b"] == pytest.approx(12.25, rel=1e-15)
    torch.testing.assert_close(
        x.detach(), torch.tensor([1.0, 2.0], dtype=F64) * (1 - 1.5 / 12.25), rtol=1e-15, atol=0
    )
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0], dtype=F64))


def test_accumulator_grows_at_least_like_adagrad_norm() -> None:
    """Spec 4.1: b never decreases and b_{j+1}^2 >= b_j^2 + 2 eta^2 ||g_j||^2."""
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(20, dtype=F64, requires_grad=True)
    optimizer = WNGrad([x], lr=0.7, b0=0.3)
    b = 0.3
    for _ in range(30):
        x.grad = torch.randn(20, generator=generator, dtype=F64) * 3
        optimizer.step()
        b_next = optimizer.statistics()["b"]
        assert b_next >= b
        assert b_next**2 >= b**2 + 2 * 0.7**2 * float(x.grad.square().sum()) * (1 - 1e-14)
        b = b_next


@pytest.mark.parametrize("granularity", ["global", "tensor", "row"])
def test_zero_gradients_do_not_drift_the_accumulator(granularity: str) -> None:
    """The authors' code adds eps into b every step; we do not (spec 4.5)."""
    weight = torch.ones(3, 2, dtype=F64, requires_grad=True)
    optimizer = WNAdam([weight], lr=1.0, b0=0.5, granularity=granularity)
    for _ in range(10):
        weight.grad = torch.zeros(3, 2, dtype=F64)
        optimizer.step()
    if granularity == "global":
        assert optimizer.statistics()["b"] == 0.5
    else:
        assert torch.all(optimizer.state[weight]["b"] == 0.5)
    assert torch.equal(weight.detach(), torch.ones(3, 2, dtype=F64))


def test_granularity_is_global_across_param_groups() -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="granularity must be the same in every param group"):
        WNGrad([{"params": [a]}, {"params": [b], "granularity": "row"}])
    optimizer = WNGrad([a], granularity="tensor")
    with pytest.raises(ValueError, match="granularity must be the same"):
        optimizer.add_param_group({"params": [b], "granularity": "global"})
    assert len(optimizer.param_groups) == 1


def test_registry_entries() -> None:
    assert lo.spec("wngrad").confidence == "high"
    assert lo.spec("wn-adam").confidence == "medium"
    assert lo.spec("wngrad").has_global_statistics


# rows longer than the native driver's 32768-element blocks (a row split over threads), a conv
# kernel (one block per (out, in) slice), a one-row matrix, a bias and a 0-d tensor
NATIVE_SHAPES = [(3, 40_000), (4, 3, 5, 5), (1, 7), (6,), ()]


@pytest.mark.parametrize("name", ["wngrad", "wn-adam"])
@pytest.mark.parametrize("granularity", ["global", "tensor", "row"])
def test_native_blocks_match_the_loop(
    name: str, granularity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fused=True on CPU takes the native kernels, which cut every tensor into its blocks of b
    (rows split over threads when long): the same numbers as the for-loop path, and the same
    with 1 and 3 threads."""
    from lrlab.optim import _native

    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)
    # the kernel that moves: the global b's move pass, or the block pass that does the step
    prefix = "wngrad" if name == "wngrad" else "wnadam"
    suffix = "move" if granularity == "global" else "blocks"
    move = next(k for k in _native._KERNELS if k.name == f"{prefix}_{suffix}")
    if not move.available():
        raise AssertionError("the native kernels cannot be built (no C++ compiler?)")
    monkeypatch.setattr(move, "used", False)

    def run(fused: bool, threads: int, dtype: torch.dtype) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        params = [
            torch.randn(shape, generator=generator, dtype=dtype).requires_grad_()
            for shape in NATIVE_SHAPES
        ]
        kwargs = {"lr": 0.5, "granularity": granularity, "weight_decay": 0.01}
        optimizer = lo.create(name, params, **kwargs, **({"fused": True} if fused else {}))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for _ in range(4):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
                optimizer.step()
        finally:
            torch.set_num_threads(previous)
        return [p.detach() for p in params]

    for loop, native in zip(run(False, 1, F64), run(True, 1, F64), strict=True):
        torch.testing.assert_close(native, loop, rtol=1e-12, atol=1e-14)
    assert move.used
    for one, three in zip(run(True, 1, torch.float32), run(True, 3, torch.float32), strict=True):
        assert torch.equal(one, three)


@pytest.mark.parametrize("name", ["wngrad", "wn-adam"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_empty_tensors_on_every_path(
    name: str, granularity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tensors with no elements (an empty b per row, or zero-width rows) step on the native
    kernels as on the loop path, and weigh nothing in effective_lr (it stays finite)."""
    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    shapes = [(0, 5), (5, 0), (0,), (3, 4), (2, 3, 0, 1)]
    results = []
    for path in ({"foreach": False}, {"fused": True}):
        generator = torch.Generator().manual_seed(1)
        params = [torch.randn(s, generator=generator, dtype=F64).requires_grad_() for s in shapes]
        kwargs = {"lr": 0.3, "granularity": granularity, "weight_decay": 0.01}
        optimizer = lo.create(name, params, **kwargs, **path)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator, dtype=F64)
            optimizer.step()
        results.append((params, optimizer.statistics()["effective_lr"]))
    (loop, loop_lr), (native, native_lr) = results
    for a, b in zip(loop, native, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    assert math.isfinite(loop_lr) and native_lr == pytest.approx(loop_lr, rel=1e-12)
