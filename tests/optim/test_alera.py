"""The 2017 scheme: spec-9 vectors (ALeRA, Page-Hinkley), the catastrophe test, Ag-Adam, SPALeRA."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch import nn

import lrlab.optim as lo
from lrlab.optim.alera import PageHinkley, page_hinkley_step

TOL = {"rtol": 0, "atol": 5e-10}  # the spec rounds to 10 significant digits


def _x0() -> torch.Tensor:
    return torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)


def _p_gradient(x: torch.Tensor) -> torch.Tensor:
    """Problem P of spec 9: f = 0.5 (x1^2 + 10 x2^2), g = (x1, 10 x2)."""
    return x.detach() * torch.tensor([1.0, 10.0], dtype=torch.float64)


def _p_step(optimizer: torch.optim.Optimizer, x: torch.Tensor, loss: float | None = None) -> None:
    x.grad = _p_gradient(x)
    if loss is None:
        optimizer.step()
    else:  # a float64 tensor: a Python float would reach the optimizer as float32
        optimizer.step(loss=torch.tensor(loss, dtype=torch.float64))


def _path_sq(optimizer: torch.optim.Optimizer, x: torch.Tensor) -> float:
    return float(optimizer.state[x]["path"].square().sum())


# -- ALeRA: spec 9 --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["tensor", "group"])
@pytest.mark.parametrize("foreach", [False, True])
def test_alera_spec_vector(block: str, foreach: bool) -> None:
    x = _x0()
    optimizer = lo.ALeRA([x], lr=0.1, alpha=0.1, adapt_constant=0.01, block=block, foreach=foreach)
    # t = 1: ||p||^2 = alpha^2 = mu_1, so eta is unchanged
    _p_step(optimizer, x)
    assert _path_sq(optimizer, x) == pytest.approx(0.01, abs=1e-15)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(0.1, abs=1e-15)
    torch.testing.assert_close(x.detach(), torch.tensor([0.9, 0.0], dtype=torch.float64), **TOL)
    assert optimizer.statistics()["path_ratio"] == pytest.approx(1.0, abs=1e-12)
    # t = 2: mu_2 = 0.0181; the rate grows before the step and is used for it
    _p_step(optimizer, x)
    assert _path_sq(optimizer, x) == pytest.approx(0.0198910669, abs=5e-11)
    assert optimizer.statistics()["path_ratio"] == pytest.approx(0.0198910669 / 0.0181, rel=1e-8)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(0.1000253327, abs=5e-11)
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.8099772006, 0.0], dtype=torch.float64), **TOL
    )
    # t = 3: mu_3 = 0.024661
    _p_step(optimizer, x)
    assert _path_sq(optimizer, x) == pytest.approx(0.0457237245, abs=5e-11)
    assert optimizer.statistics()["path_ratio"] == pytest.approx(0.0457237245 / 0.024661, rel=1e-8)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(0.1003237243, abs=5e-11)
    assert optimizer.statistics()["eta_max"] == optimizer.param_groups[0]["effective_lr"]


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (lo.ALeRA, {"block": "tensor"}),
        (lo.ALeRA, {"block": "group"}),
        (lo.AgAdam, {}),
        (lo.SALeRA, {}),
    ],
)
def test_first_step_never_changes_the_rate(cls, kwargs) -> None:
    """||p_1||^2 = alpha^2 = mu_1 exactly, whatever the gradient (spec 2.1)."""
    generator = torch.Generator().manual_seed(7)
    for dimension, alpha in [(1, 0.5), (7, 0.1), (300, 1e-3), (5000, 0.9)]:
        x = torch.randn(dimension, dtype=torch.float64, generator=generator).requires_grad_()
        scale = 10.0 ** float(torch.randint(-4, 5, (), generator=generator))
        x.grad = scale * torch.randn(dimension, dtype=torch.float64, generator=generator)
        optimizer = cls([x], lr=0.01, alpha=alpha, adapt_constant=0.5, **kwargs)
        optimizer.step(loss=1.0) if optimizer.needs_loss else optimizer.step()
        assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(0.01, rel=1e-12)
        assert optimizer.statistics()["path_ratio"] == pytest.approx(1.0, rel=1e-12)


def test_a_tensor_that_starts_late_has_its_own_step_count() -> None:
    """A block's reference counts its own path updates, so its first step is rate-neutral too."""
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    late = torch.ones(4, dtype=torch.float64, requires_grad=True)
    optimizer = lo.ALeRA([a, late], lr=0.1, alpha=0.1, adapt_constant=0.5)
    for _ in range(5):
        a.grad = torch.ones(3, dtype=torch.float64)
        optimizer.step()
    assert optimizer.state[a]["block_step"] == 5 and late not in optimizer.state
    a.grad = torch.ones(3, dtype=torch.float64)
    late.grad = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    optimizer.step()
    assert optimizer.state[late]["block_step"] == 1
    assert optimizer.state[late]["lr_factor"] == pytest.approx(1.0, rel=1e-12)
    assert optimizer.state[a]["lr_factor"] > 1.0  # aligned gradients grew a's rate


def test_zero_gradient_only_shrinks_the_path() -> None:
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    optimizer = lo.ALeRA([x], lr=0.1, alpha=0.1, adapt_constant=0.0)
    x.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    optimizer.step()
    path = optimizer.state[x]["path"].clone()
    x.grad = torch.full((2,), 1e-7, dtype=torch.float64)  # norm below 1e-6
    optimizer.step()
    torch.testing.assert_close(optimizer.state[x]["path"], 0.9 * path, rtol=1e-15, atol=0)


# -- layers: one group per module -----------------------------------------------------------------


def test_a_group_block_is_one_vector_of_its_tensors() -> None:
    """A weight and a bias in one group move exactly like their concatenation in one tensor."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 3, dtype=torch.float64, generator=generator).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64, generator=generator).requires_grad_()
    joined = torch.cat([weight.detach().reshape(-1), bias.detach()]).requires_grad_()
    grouped = lo.ALeRA(
        [{"params": [weight, bias], "block": "group"}], lr=0.05, alpha=0.2, adapt_constant=0.05
    )
    single = lo.ALeRA([joined], lr=0.05, alpha=0.2, adapt_constant=0.05)
    for _ in range(8):
        g = torch.randn(9, dtype=torch.float64, generator=generator) + 0.5
        weight.grad, bias.grad = g[:6].reshape(2, 3).clone(), g[6:].clone()
        joined.grad = g.clone()
        grouped.step()
        single.step()
        assert grouped.param_groups[0]["effective_lr"] == pytest.approx(
            single.param_groups[0]["effective_lr"], rel=1e-13
        )
    torch.testing.assert_close(
        torch.cat([weight.detach().reshape(-1), bias.detach()]), joined.detach(), rtol=1e-13, atol=0
    )
    assert grouped.param_groups[0]["block_step"] == 8
    assert "lr_factor" not in grouped.state[weight]  # the group holds the block's rate


def test_layer_param_groups_one_group_per_module() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.Linear(3, 3))
    model[3].weight = model[2].weight  # tied: belongs to the first owner
    model[0].bias.requires_grad_(False)  # frozen: left out
    groups = lo.layer_param_groups(model, lr=0.5)
    assert [len(group["params"]) for group in groups] == [1, 2, 1]
    assert groups[0]["params"][0] is model[0].weight
    assert groups[1]["params"] == [model[2].weight, model[2].bias]
    assert groups[2]["params"] == [model[3].bias]
    assert all(group["block"] == "group" and group["lr"] == 0.5 for group in groups)
    optimizer = lo.ALeRA(groups, lr=0.1, alpha=0.1, adapt_constant=0.01)
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    assert [group["block_step"] for group in optimizer.param_groups] == [1, 1, 1]


# -- SALeRA: the Page-Hinkley test ----------------------------------------------------------------


def test_page_hinkley_spec_vector() -> None:
    """Spec 9: r = 0.25, lambda = 0.1 x first loss, losses 1.0, 0.9, 0.8, 0.7, 3.0."""
    ph = PageHinkley()
    gaps = []
    for loss in (1.0, 0.9, 0.8, 0.7, 3.0):
        ph = page_hinkley_step(ph, loss, 0.25)
        gaps.append(ph.U - ph.m)
    assert gaps[:4] == pytest.approx([0.0, 0.0, 0.0, 0.0], abs=1e-15)
    assert gaps[4] == pytest.approx(0.284, abs=1e-12)
    assert ph.relaxed_loss == pytest.approx(1.28, abs=1e-12)
    assert ph.mu0 == pytest.approx(0.996, abs=1e-12)
    assert abs(ph.U - 0.134) < 1e-12
    assert ph.m == pytest.approx(-0.15, abs=1e-12)
    assert ph.n == 5


def test_page_hinkley_switches_to_the_exponential_average_after_one_over_r_calls() -> None:
    ph = PageHinkley(n=5, relaxed_loss=2.0, mu0=1.0, U=0.0, m=0.0)
    assert page_hinkley_step(ph, 4.0, 0.25).relaxed_loss == pytest.approx(0.75 * 2.0 + 0.25 * 4.0)


@pytest.mark.parametrize("capturable", [False, True], ids=["host", "capturable"])
@pytest.mark.parametrize("block", ["tensor", "group"])
def test_salera_alarm_restores_the_parameters_and_halves_the_rates(
    block: str, capturable: bool
) -> None:
    """Spec 9's alarm; a capturable step (0-d tensors) takes it by selects, with the same
    numbers: the parameters restored, the path and the rate kept, the test reset."""
    x = _x0()
    optimizer = lo.SALeRA(
        [x],
        lr=0.1,
        alpha=0.1,
        adapt_constant=0.01,
        block=block,
        mbratio=0.25,
        ph_lambda_rel=0.1,
        capturable=capturable,
    )
    before = []
    for loss in (1.0, 0.9, 0.8, 0.7):
        before.append(x.detach().clone())
        _p_step(optimizer, x, loss=loss)
    group = optimizer.param_groups[0]
    # the statistics after call 4 (spec 9): relaxed loss 0.85, mu0 0.925, U = m = -0.15
    assert isinstance(group["ph_U"], torch.Tensor) is capturable
    counts = (float(group["ph_n"]), float(group["ph_threshold"]), optimizer.statistics()["alarms"])
    assert counts == (4, 0.1, 0)
    assert float(group["ph_relaxed_loss"]) == pytest.approx(0.85, abs=1e-12)
    assert float(group["ph_mu0"]) == pytest.approx(0.925, abs=1e-12)
    assert float(group["ph_U"]) == pytest.approx(-0.15, abs=1e-12)
    assert float(group["ph_m"]) == pytest.approx(-0.15, abs=1e-12)
    # without the catastrophe test the same four steps are ALeRA's (spec 9 vector)
    torch.testing.assert_close(
        before[2], torch.tensor([0.8099772006, 0.0], dtype=torch.float64), **TOL
    )
    eta_4 = float(group["effective_lr"])
    path = optimizer.state[x]["path"].clone()
    holder = group if block == "group" else optimizer.state[x]
    factor, block_step = float(holder["lr_factor"]), int(holder["block_step"])

    _p_step(optimizer, x, loss=3.0)  # the fifth call raises the alarm
    stats = optimizer.statistics()
    assert stats["alarms"] == 1.0 and stats["rate_scale"] == 0.5
    assert stats["ph_gap"] == pytest.approx(0.284, abs=1e-12)
    assert torch.equal(x.detach(), before[3]), "the last step must be undone"
    assert float(group["effective_lr"]) == 0.0
    assert [float(group[key]) for key in ("ph_n", "ph_relaxed_loss", "ph_mu0", "ph_U", "ph_m")] == [
        0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]
    # paths, block step counters and lambda are kept
    assert torch.equal(optimizer.state[x]["path"], path)
    assert (float(holder["lr_factor"]), int(holder["block_step"])) == (factor, block_step)
    assert float(group["ph_threshold"]) == 0.1
    assert stats["eta_max"] == pytest.approx(0.5 * eta_4, rel=1e-15)

    # the next call steps again, with every rate halved
    _p_step(optimizer, x, loss=0.7)
    eta = float(group["effective_lr"])
    assert eta == pytest.approx(0.5 * 0.1 * float(holder["lr_factor"]), rel=1e-15)
    assert float(group["ph_n"]) == 1


def test_salera_absolute_threshold_and_negative_first_loss() -> None:
    x = _x0()
    optimizer = lo.SALeRA([x], lr=0.01, ph_lambda=0.5)
    _p_step(optimizer, x, loss=10.0)
    assert optimizer.param_groups[0]["ph_threshold"] == 0.5
    y = _x0()
    optimizer = lo.SALeRA([y], lr=0.01, ph_lambda_rel=0.1)
    _p_step(optimizer, y, loss=-2.0)  # a negative loss must not give a negative threshold
    assert optimizer.param_groups[0]["ph_threshold"] == pytest.approx(0.2)
    assert optimizer.statistics()["alarms"] == 0.0


@pytest.mark.parametrize("capturable", [False, True], ids=["host", "capturable"])
def test_spalera_alarm_restores_and_halves(capturable: bool) -> None:
    x = _x0()
    optimizer = lo.SPALeRA(
        [x], lr=0.05, alpha=0.1, adapt_constant=0.01, mbratio=0.25, capturable=capturable
    )
    before = []
    for loss in (1.0, 0.9, 0.8, 0.7, 3.0):
        before.append(x.detach().clone())
        _p_step(optimizer, x, loss=loss)
    assert optimizer.statistics()["alarms"] == 1.0
    assert torch.equal(x.detach(), before[3])
    multiplier = optimizer.state[x]["lr_multiplier"].clone()
    _p_step(optimizer, x, loss=0.7)
    assert float(optimizer.param_groups[0]["effective_lr"]) == 0.025
    assert int(optimizer.param_groups[0]["block_step"]) == 5  # the alarm call did not count
    assert not torch.equal(optimizer.state[x]["lr_multiplier"], multiplier)


# -- SPALeRA --------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_spalera_first_step(foreach: bool) -> None:
    """Step 1 on P: exponent_i = C alpha (D g_i^2 / ||g||^2 - 1), so they sum to zero."""
    x = _x0()
    optimizer = lo.SPALeRA([x], lr=0.1, alpha=0.1, adapt_constant=0.01, foreach=foreach)
    _p_step(optimizer, x, loss=5.5)
    g = torch.tensor([1.0, 10.0], dtype=torch.float64)
    exponents = 0.01 * 0.1 * (2 * g.square() / 101.0 - 1.0)
    multipliers = exponents.exp()
    torch.testing.assert_close(optimizer.state[x]["lr_multiplier"], multipliers, rtol=1e-14, atol=0)
    torch.testing.assert_close(x.detach(), 1.0 - 0.1 * multipliers * g, rtol=1e-14, atol=1e-15)
    assert float(multipliers.log().sum()) == pytest.approx(0.0, abs=1e-15)
    stats = optimizer.statistics()
    assert stats["multiplier_min"] == pytest.approx(math.exp(0.001 * (2 / 101 - 1)), rel=1e-14)
    assert stats["multiplier_mean"] == pytest.approx(float(multipliers.mean()), rel=1e-14)


# -- Ag-Adam --------------------------------------------------------------------------------------


def _softmax_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    inputs = torch.randn(16, 5, dtype=torch.float64, generator=generator)
    targets = torch.randint(0, 3, (16,), generator=generator)
    return inputs, targets


def _softmax_loss(weight: torch.Tensor, bias: torch.Tensor, step: int) -> torch.Tensor:
    inputs, targets = _softmax_batch(step)
    return nn.functional.cross_entropy(inputs @ weight.T + bias, targets)


@pytest.mark.parametrize("foreach", [False, True])
def test_agadam_step_is_torch_adam_at_the_layer_rate(foreach: bool) -> None:
    """Oracle: torch.optim.Adam with lr = our layer rate and eps = eps / sqrt(1 - beta2^t)."""
    generator = torch.Generator().manual_seed(0)
    ours = [
        (0.3 * torch.randn(3, 5, dtype=torch.float64, generator=generator)).requires_grad_(),
        torch.zeros(3, dtype=torch.float64, requires_grad=True),
    ]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    eps, beta2 = 1e-8, 0.999
    agadam = lo.AgAdam(ours, lr=0.05, alpha=0.1, adapt_constant=0.05, eps=eps, foreach=foreach)
    adam = torch.optim.Adam([{"params": [p]} for p in theirs], lr=0.05, eps=eps, foreach=False)
    grew = False
    for step in range(40):
        agadam.zero_grad()
        _softmax_loss(*ours, step).backward()
        agadam.step()
        adam.zero_grad()
        _softmax_loss(*theirs, step).backward()
        for group, p in zip(adam.param_groups, ours, strict=True):
            group["lr"] = 0.05 * agadam.state[p]["lr_factor"]
            group["eps"] = eps / math.sqrt(1 - beta2 ** (step + 1))
        adam.step()
        grew |= agadam.state[ours[0]]["lr_factor"] > 1.01
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)
    assert grew, "the layer rates must have moved for this to test anything"


def test_agadam_rates_are_alera_rates_from_the_same_raw_gradients() -> None:
    """The path sees raw gradients only, so the rates match ALeRA's for the same gradients."""
    generator = torch.Generator().manual_seed(5)
    x_alera = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    x_agadam = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    alera = lo.ALeRA([x_alera], lr=0.1, alpha=0.2, adapt_constant=0.02)
    agadam = lo.AgAdam([x_agadam], lr=0.1, alpha=0.2, adapt_constant=0.02)
    for _ in range(10):
        g = torch.randn(6, dtype=torch.float64, generator=generator) + 1.0
        x_alera.grad, x_agadam.grad = g.clone(), g.clone()
        alera.step()
        agadam.step()
        assert agadam.param_groups[0]["effective_lr"] == alera.param_groups[0]["effective_lr"]
    assert alera.param_groups[0]["effective_lr"] > 0.1


def test_agadam_first_step_by_hand() -> None:
    """Step 1: x1 = x0 - eta g / (|g| + eps / sqrt(1 - beta2)) with the folded bias correction."""
    x = _x0()
    optimizer = lo.AgAdam([x], lr=0.1, alpha=0.1, adapt_constant=0.01, eps=1e-3)
    _p_step(optimizer, x)
    g = torch.tensor([1.0, 10.0], dtype=torch.float64)
    expected = 1.0 - 0.1 * g / (g + 1e-3 / math.sqrt(1 - 0.999))
    torch.testing.assert_close(x.detach(), expected, rtol=1e-14, atol=0)


# -- contract details -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alera", "salera", "agadam", "spalera"])
def test_gradient_is_not_modified_in_place(name: str) -> None:
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    optimizer = lo.create(name, [x], lr=0.1, weight_decay=0.1)
    for _ in range(2):
        x.grad = torch.full((4,), 2.0, dtype=torch.float64)
        optimizer.step(loss=1.0) if optimizer.needs_loss else optimizer.step()
        assert torch.equal(x.grad, torch.full((4,), 2.0, dtype=torch.float64))


def test_an_invalid_block_in_a_param_group_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"block must be one of 'tensor', 'group', got 'row'"):
        lo.ALeRA([{"params": [torch.zeros(2, requires_grad=True)], "block": "row"}])


class _ThreadAllReduce:
    """A SUM all-reduce between threads, standing in for torch.distributed in one process."""

    def __init__(self, ranks: int) -> None:
        self.barrier = threading.Barrier(ranks)
        self.slots: list[torch.Tensor | None] = [None] * ranks
        self.local = threading.local()
        self.calls = 0

    def __call__(self, values, *, partial: bool, group=None):
        if not partial or not values:
            return list(values)
        self.slots[self.local.rank] = torch.stack([v.to(torch.float64) for v in values])
        self.barrier.wait()
        total = self.slots[0] + self.slots[1]  # the same order on every rank
        self.calls += 1
        self.barrier.wait()
        return list(total.unbind(0))


@pytest.mark.parametrize("name", ["alera", "salera"])
def test_a_group_block_split_over_two_ranks_matches_one_process(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sharded=True: each rank owns one tensor of the layer; the pair moves like one process."""
    collective = _ThreadAllReduce(2)
    monkeypatch.setattr("lrlab.optim._base.all_reduce_scalars", collective)
    monkeypatch.setattr("lrlab.optim.alera.is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    kwargs = {"lr": 0.05, "alpha": 0.2, "adapt_constant": 0.05, "block": "group"}
    if lo.spec(name).needs_loss:
        # an absolute threshold: with a relative one the test is blind to the loss's scale
        kwargs["ph_lambda"] = 0.05
    generator = torch.Generator().manual_seed(11)
    start = [torch.randn(4, dtype=torch.float64, generator=generator) for _ in range(2)]
    gradients = [
        [torch.randn(4, dtype=torch.float64, generator=generator) + 0.3 for _ in range(2)]
        for _ in range(12)
    ]
    losses = [[1.0 + 0.1 * (step % 4), 0.5 + 0.2 * (step % 3)] for step in range(12)]

    whole = [s.clone().requires_grad_() for s in start]
    single = lo.create(name, whole, **kwargs)
    for step in range(12):
        for p, g in zip(whole, gradients[step], strict=True):
            p.grad = g.clone()
        loss = sum(losses[step]) / 2  # the global loss is the mean over ranks
        single.step(loss=loss) if single.needs_loss else single.step()
    if single.needs_loss:
        assert single.statistics()["alarms"] >= 1  # the test must exercise an alarm too

    shards = [s.clone().requires_grad_() for s in start]
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            collective.local.rank = rank
            torch.set_num_threads(1)
            optimizer = lo.create(name, [shards[rank]], sharded=True, **kwargs)
            for step in range(12):
                shards[rank].grad = gradients[step][rank].clone()
                if optimizer.needs_loss:
                    optimizer.step(loss=losses[step][rank])
                else:
                    optimizer.step()
        except BaseException as error:  # surfaced below; a hung barrier would hide it
            errors.append(error)
            collective.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert collective.calls >= 12
    for a, b in zip(whole, shards, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-13, atol=1e-15)
    assert not torch.equal(whole[0].detach(), start[0])


@pytest.mark.parametrize("kernels", ["native", "compiled"])
@pytest.mark.parametrize("name", ["salera", "spalera"])
def test_fused_alarm_restores_the_same_parameters_as_the_loop(
    name: str, kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the kernels save the previous parameters while moving them; an inductor bug once turned
    # that copy into an alias of the moved parameters, which only an alarm reveals. Both kinds
    # of kernels: the native ones (CPU float32/float64) and the compiled ones (elsewhere)
    from lrlab.optim import _fused, _native

    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)
    if kernels == "native":
        monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
        monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)

        def refuse(self, *args):
            raise AssertionError(f"compiled kernel {self.name} called on the native path")

        monkeypatch.setattr(_fused.FusedKernel, "__call__", refuse)
        for native in _native._KERNELS:
            monkeypatch.setattr(native, "used", False)
    else:
        monkeypatch.setenv("LRLAB_DISABLE_NATIVE", "1")
    generator = torch.Generator().manual_seed(3)
    start = [
        torch.randn(shape, generator=generator, dtype=torch.float64) for shape in [(6, 5), (7,)]
    ]
    losses = (1.0, 0.9, 0.8, 0.7, 3.0, 0.7, 0.6, 4.0, 0.6)
    trajectories = {}
    for fused in (False, True):
        params = [t.clone().requires_grad_() for t in start]
        kwargs = {"fused": True} if fused else {"foreach": False}
        optimizer = lo.create(name, params, lr=0.05, alpha=0.1, mbratio=0.25, **kwargs)
        seen = []
        for step, loss in enumerate(losses):
            for index, p in enumerate(params):
                p.grad = torch.sin(p.detach() * (step + index + 1))
            optimizer.step(loss=torch.tensor(loss, dtype=torch.float64))
            seen.append([p.detach().clone() for p in params])
        assert optimizer.statistics()["alarms"] >= 2
        trajectories[fused] = seen
    for loop_step, fused_step in zip(trajectories[False], trajectories[True], strict=True):
        for a, b in zip(loop_step, fused_step, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if kernels == "native" and _native_compiler_found():
        ran = {kernel for kernel, how in _native.native_status().items() if how == "native"}
        move = "native:alera.salera_move" if name == "salera" else "native:alera.spalera_move"
        assert move in ran, ran


def _native_compiler_found() -> bool:
    import os
    import shutil

    return bool(shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++"))
