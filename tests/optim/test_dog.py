"""DoG, L-DoG and DoWG: spec vectors, the official ``dog`` package as oracle, averaging.

Method page: ``docs/methods/distance-over-gradients.md`` (problem P:
``f(x) = 0.5 (x1^2 + 10 x2^2)``, ``x0 = (1, 1)``). The L-DoG two-tensor values and the DoWG
reference trajectory are derived here from the section 7 formulas (see each test's docstring).
"""

from __future__ import annotations

import math

import dog
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import lrlab.optim as lo
from lrlab.optim import DoG, DoWG, LDoG, _fused
from lrlab.optim._base import StepContext
from tests.optim._oracle import PROBLEMS, max_trajectory_error, one_group, two_groups
from tests.optim._problems import loss_at, make_params

ORACLE_RTOL = 1e-9
SPEC = {"rel": 5e-10}  # the spec prints 10 significant digits


def _p_step(optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor]) -> None:
    """One step on problem P (first tensor) plus ``0.5 ||b||^2`` for a second tensor."""
    optimizer.zero_grad()
    x = tensors[0]
    loss = 0.5 * (x[0] ** 2 + 10 * x[1] ** 2)
    for extra in tensors[1:]:
        loss = loss + 0.5 * (extra**2).sum()
    loss.backward()
    optimizer.step()


def _x0() -> torch.Tensor:
    return torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)


# -- spec vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
def test_dog_spec_vector(foreach: bool) -> None:
    x = _x0()
    optimizer = DoG([x], reps_rel=1e-6, eps=1e-8, foreach=foreach)
    _p_step(optimizer, [x])
    stats = optimizer.statistics()
    assert stats["r_bar"] == pytest.approx(2.414213562e-6, **SPEC)  # r_eps = 1e-6 (1 + sqrt 2)
    assert stats["G"] == pytest.approx(101.00000001, rel=1e-14)
    assert stats["eta"] == pytest.approx(2.402232280e-7, **SPEC)
    assert optimizer.param_groups[0]["effective_lr"] == stats["eta"]
    eta0 = stats["eta"]
    # x1 = x0 - eta0 g0 with g0 = (1, 10), to the last bit
    torch.testing.assert_close(
        x.detach(),
        torch.tensor([1.0 - eta0, 1.0 - 10 * eta0], dtype=torch.float64),
        rtol=0,
        atol=0,
    )
    _p_step(optimizer, [x])
    stats = optimizer.statistics()
    # ||x1 - x0|| = r_eps sqrt(1 - eps/G0) is just below r_eps: r_bar unchanged
    assert stats["r_bar"] == pytest.approx(2.414213562e-6, **SPEC)
    assert stats["eta"] == pytest.approx(1.698636757e-7, **SPEC)
    _p_step(optimizer, [x])
    stats = optimizer.statistics()
    assert stats["r_bar"] == pytest.approx(4.121318311e-6, **SPEC)
    assert stats["eta"] == pytest.approx(2.367640594e-7, **SPEC)


@pytest.mark.parametrize("foreach", [False, True])
def test_dowg_spec_vector(foreach: bool) -> None:
    x = _x0()
    # the spec ignores eps in the denominator: eps = 0 with an explicit r_eps^2
    optimizer = DoWG([x], init_estim_sq_dist=1e-4, eps=0.0, foreach=foreach)
    _p_step(optimizer, [x])
    stats = optimizer.statistics()
    assert stats["eta"] == pytest.approx(9.950371902e-4, **SPEC)
    assert stats["v"] == pytest.approx(1e-4 * 101, rel=1e-14)
    step_length = float(torch.linalg.vector_norm(x.detach() - torch.ones(2, dtype=torch.float64)))
    assert step_length == pytest.approx(0.01, rel=1e-13)  # exactly r_eps
    _p_step(optimizer, [x])
    assert optimizer.statistics()["eta"] == pytest.approx(7.070752507e-4, **SPEC)
    _p_step(optimizer, [x])
    stats = optimizer.statistics()
    assert stats["r_bar_sq"] == pytest.approx(2.902233209e-4, **SPEC)
    assert stats["eta"] == pytest.approx(1.320045537e-3, **SPEC)
    assert optimizer.param_groups[0]["effective_lr"] == stats["eta"]


def test_dowg_default_initial_distance_is_eps() -> None:
    """optax's convention: without init_estim_sq_dist, r_eps^2 = eps (1e-4), and eps stays in
    the denominator: eta0 = 1e-4 / (sqrt(1e-4 * 101) + 1e-4)."""
    x = _x0()
    optimizer = DoWG([x])
    _p_step(optimizer, [x])
    assert optimizer.statistics()["r_bar_sq"] == 1e-4
    assert optimizer.statistics()["eta"] == pytest.approx(
        1e-4 / (math.sqrt(1e-4 * 101) + 1e-4), rel=1e-14
    )


@pytest.mark.parametrize("foreach", [False, True])
def test_ldog_per_tensor_hand_values(foreach: bool) -> None:
    """L-DoG on A = (1, 1) under P and B = (3,) under 0.5 b^2 (our derivation from spec 7.1).

    Every tensor is its own DoG block, so A follows the DoG spec vector of problem P exactly,
    while B has ``r_eps = 1e-6 (1 + 3) = 4e-6``, ``G0 = 9 + 1e-8`` and
    ``eta0 = 4e-6 / sqrt(9.00000001) = 1.3333333326e-6``.
    """
    a, b = _x0(), torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    optimizer = LDoG([a, b], reps_rel=1e-6, eps=1e-8, foreach=foreach)
    _p_step(optimizer, [a, b])
    assert float(optimizer.state[a]["eta"]) == pytest.approx(2.402232280e-7, **SPEC)
    assert float(optimizer.state[b]["eta"]) == pytest.approx(1.3333333326e-6, **SPEC)
    assert float(optimizer.state[b]["r_bar"]) == pytest.approx(4e-6, rel=1e-15)
    assert float(b.detach()) == pytest.approx(3.0 * (1 - 1.3333333326e-6), rel=1e-15)
    # effective_lr is the mean of the tensors' step sizes (documented representative)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(
        (2.402232280e-7 + 1.3333333326e-6) / 2, **SPEC
    )
    stats = optimizer.statistics()
    assert stats["eta_min"] == pytest.approx(2.402232280e-7, **SPEC)
    assert stats["eta_max"] == pytest.approx(1.3333333326e-6, **SPEC)
    for _ in range(2):
        _p_step(optimizer, [a, b])
    assert float(optimizer.state[a]["r_bar"]) == pytest.approx(4.121318311e-6, **SPEC)
    assert float(optimizer.state[a]["eta"]) == pytest.approx(2.367640594e-7, **SPEC)


def test_ldog_on_one_tensor_is_dog() -> None:
    x_dog, x_ldog = _x0(), _x0()
    opt_dog, opt_ldog = DoG([x_dog], reps_rel=1e-3), LDoG([x_ldog], reps_rel=1e-3)
    for _ in range(20):
        _p_step(opt_dog, [x_dog])
        _p_step(opt_ldog, [x_ldog])
    torch.testing.assert_close(x_dog, x_ldog, rtol=1e-13, atol=0)


# -- the official package as oracle ---------------------------------------------------------

_ORACLE_CONFIGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"weight_decay": 0.05}, id="wd"),
    pytest.param({"reps_rel": 1e-3, "weight_decay": 0.05}, id="reps1e-3-wd"),
    pytest.param({"init_eta": 0.1}, id="init_eta"),
]
_GROUPS = [
    pytest.param(one_group, id="one-group"),
    pytest.param(two_groups(lr=0.5, weight_decay=0.02), id="two-groups"),
]


@pytest.mark.parametrize(("ours", "official"), [(DoG, dog.DoG), (LDoG, dog.LDoG)])
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("kwargs", _ORACLE_CONFIGS)
@pytest.mark.parametrize("groups", _GROUPS)
def test_trajectory_matches_official_package(ours, official, problem, kwargs, groups) -> None:
    built: list[torch.optim.Optimizer] = []

    def make_ours(params):
        built.append(ours(params, **kwargs))
        return built[-1]

    error = max_trajectory_error(
        make_ours, lambda params: official(params, **kwargs), problem, steps=60, groups=groups
    )
    assert error <= ORACLE_RTOL, f"max normwise relative error {error:.3e}"
    # the comparison is meaningful only if the run went somewhere
    optimizer = built[0]
    travelled = max(group["r_bar"] for group in optimizer.param_groups) if ours is DoG else 0.0
    if ours is LDoG:
        travelled = max(float(s["r_bar"]) for s in optimizer.state.values())
    assert travelled > 0.01


def _module_of(tensors: list[torch.Tensor]) -> torch.nn.Module:
    return torch.nn.ParameterList([torch.nn.Parameter(t.detach().clone()) for t in tensors])


@pytest.mark.parametrize(("ours", "official"), [(DoG, dog.DoG), (LDoG, dog.LDoG)])
@pytest.mark.parametrize("gamma", [8.0, 2.0])
@pytest.mark.parametrize("problem", PROBLEMS[1:], ids=lambda p: p.name)
def test_averaging_matches_official_averager(ours, official, gamma, problem) -> None:
    """Our ``state["averaged"]`` against ``dog.PolynomialDecayAverager`` stepped after every
    optimizer step, at every one of 60 steps."""
    init = problem.init_params()
    ours_module, oracle_module = _module_of(init), _module_of(init)
    ours_params, oracle_params = list(ours_module), list(oracle_module)
    kwargs = {"reps_rel": 1e-3}
    optimizer = ours(ours_params, averaging_gamma=gamma, **kwargs)
    oracle = official(oracle_params, **kwargs)
    averager = dog.PolynomialDecayAverager(oracle_module, gamma=gamma)
    worst = 0.0
    for step in range(60):
        for opt, params in ((optimizer, ours_params), (oracle, oracle_params)):
            opt.zero_grad()
            problem.loss(params, step).backward()
            opt.step()
        averager.step()
        for a, b in zip(
            optimizer.averaged_parameters(), averager.averaged_model.parameters(), strict=True
        ):
            worst = max(worst, float((a - b.detach()).abs().max() / b.detach().abs().max()))
    assert worst <= ORACLE_RTOL
    # the average lags the iterate: it is a different point
    last = [p.detach() for p in ours_params]
    averaged = optimizer.averaged_parameters()
    assert any(not torch.allclose(a, p) for a, p in zip(averaged, last, strict=True))


def test_averaging_with_gamma_zero_is_the_uniform_mean() -> None:
    """gamma = 0 gives weights 1/t: the plain mean of x_1..x_t (Shamir & Zhang with gamma 0)."""
    x = _x0()
    optimizer = DoG([x], reps_rel=1e-2, averaging_gamma=0.0)
    iterates = []
    for _ in range(7):
        _p_step(optimizer, [x])
        iterates.append(x.detach().clone())
    (average,) = optimizer.averaged_parameters()
    torch.testing.assert_close(average, torch.stack(iterates).mean(0), rtol=1e-14, atol=1e-15)


def test_first_average_is_the_first_iterate_and_is_checkpointed() -> None:
    x = _x0()
    optimizer = DoG([x], reps_rel=1e-2, averaging_gamma=8.0)
    _p_step(optimizer, [x])
    assert torch.equal(optimizer.averaged_parameters()[0], x.detach())
    _p_step(optimizer, [x])
    state = optimizer.state_dict()["state"][0]
    assert torch.equal(state["averaged"], optimizer.averaged_parameters()[0])


def test_using_averaged_parameters_swaps_in_and_restores() -> None:
    x = _x0()
    optimizer = LDoG([x], reps_rel=1e-2, averaging_gamma=8.0)
    for _ in range(5):
        _p_step(optimizer, [x])
    current = x.detach().clone()
    (average,) = optimizer.averaged_parameters()
    assert not torch.equal(current, average)
    with optimizer.using_averaged_parameters():
        assert torch.equal(x.detach(), average)
    assert torch.equal(x.detach(), current)
    with pytest.raises(RuntimeError, match="boom"), optimizer.using_averaged_parameters():
        raise RuntimeError("boom")
    assert torch.equal(x.detach(), current)


def test_averaged_parameters_need_averaging_gamma() -> None:
    x = _x0()
    optimizer = DoG([x])
    with pytest.raises(ValueError, match="averaging_gamma"):
        optimizer.averaged_parameters()


# -- behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dog", "ldog", "dowg"])
def test_gradient_is_not_modified_in_place(name: str) -> None:
    x = torch.ones(4, dtype=torch.float64, requires_grad=True)
    optimizer = lo.create(name, [x], weight_decay=0.1)
    for _ in range(2):
        x.grad = torch.full((4,), 2.0, dtype=torch.float64)
        optimizer.step()
        assert torch.equal(x.grad, torch.full((4,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("cls", [DoG, LDoG])
def test_zero_gradient_sum_gives_a_zero_step_not_nan(cls) -> None:
    """With eps = 0 an all-zero first gradient makes G = 0: the official package asserts; we
    take a zero step and continue with the next gradient."""
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = cls([x], eps=0.0, reps_rel=1e-2)
    x.grad = torch.zeros(3, dtype=torch.float64)
    optimizer.step()
    assert torch.equal(x.detach(), torch.ones(3, dtype=torch.float64))
    assert optimizer.param_groups[0]["effective_lr"] == 0.0
    x.grad = torch.ones(3, dtype=torch.float64)
    optimizer.step()
    # now G = 3, r_bar = r_eps = 1e-2 (1 + sqrt 3): eta = r_eps / sqrt 3
    eta = 1e-2 * (1 + math.sqrt(3)) / math.sqrt(3)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(eta, rel=1e-14)
    torch.testing.assert_close(x.detach(), torch.full((3,), 1 - eta, dtype=torch.float64))


@pytest.mark.parametrize("cls", [DoG, LDoG])
def test_init_eta_sets_the_first_step(cls) -> None:
    x = _x0()
    optimizer = cls([x], init_eta=0.05)
    _p_step(optimizer, [x])
    torch.testing.assert_close(
        x.detach(), torch.tensor([0.95, 0.5], dtype=torch.float64), rtol=0, atol=1e-16
    )
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(0.05, rel=1e-15)
    _p_step(optimizer, [x])  # r_bar = ||x1 - x0|| = 0.05 ||g0||, G = ||g0||^2 + ||g1||^2 + eps
    g0_sq, g1_sq = 101.0, 0.95**2 + 25.0
    expected = 0.05 * math.sqrt(g0_sq) / math.sqrt(g0_sq + g1_sq + 1e-8)
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(expected, rel=1e-13)


def test_ldog_tensor_without_first_gradient_is_not_stuck_with_init_eta() -> None:
    a, b = _x0(), torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    optimizer = LDoG([a, b], init_eta=0.1)
    a.grad = torch.ones(2, dtype=torch.float64)
    optimizer.step()  # b has no gradient: it keeps r_bar = 0
    a.grad, b.grad = torch.ones(2, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    optimizer.step()
    assert float(b.detach()) == pytest.approx(2.9, rel=1e-15)  # its first step used init_eta


def test_groups_are_separate_dog_blocks() -> None:
    """Two groups: each has its own r_bar and G (the official convention), so a group equals a
    DoG run over that group's tensors alone."""
    a, b = _x0(), torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    optimizer = DoG([{"params": [a]}, {"params": [b], "lr": 0.5}], reps_rel=1e-2)
    a_alone = _x0()
    alone = DoG([a_alone], reps_rel=1e-2)
    for _ in range(10):
        _p_step(optimizer, [a, b])
        _p_step(alone, [a_alone])
    torch.testing.assert_close(a, a_alone, rtol=1e-14, atol=0)
    first, second = optimizer.param_groups
    assert first["r_bar"] != second["r_bar"] and first["G"] != second["G"]


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs"),
    [(DoG, {"reps_rel": 1e-2}), (DoWG, {"init_estim_sq_dist": 1e-2}), (LDoG, {"reps_rel": 1e-2})],
)
def test_a_group_without_gradients_with_weight_decay(optimizer_class, kwargs: dict) -> None:
    """A group none of whose tensors has a gradient this step, with weight decay: the step
    leaves it where it is on every path (the multi-tensor path once failed on the empty list
    of directions), and the paths agree on the other group."""
    results = []
    for options in ({"foreach": True}, {"foreach": False}, {}):
        a, b = _x0(), torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
        groups = [{"params": [a]}, {"params": [b], "lr": 0.5}]
        optimizer = optimizer_class(groups, weight_decay=0.1, **kwargs, **options)
        _p_step(optimizer, [a])  # b has no gradient
        assert float(b.detach()) == 3.0
        _p_step(optimizer, [a, b])
        results.append((a.detach().clone(), b.detach().clone()))
    for result in results[1:]:
        for ours, expected in zip(result, results[0], strict=True):
            torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)


def _dowg_reference(
    init: list[torch.Tensor], grads_of, steps: int, lr: float, r0_sq: float, eps: float, wd: float
) -> list[list[torch.Tensor]]:
    """DoWG from spec 7.2 on one flattened vector, written independently of lrlab."""
    x0 = torch.cat([t.detach().reshape(-1) for t in init])
    x, r_sq, v, trajectory = x0.clone(), r0_sq, 0.0, []
    sizes = [t.numel() for t in init]
    for step in range(steps):
        pieces = [t.reshape(s.shape) for t, s in zip(x.split(sizes), init, strict=True)]
        g = torch.cat([g.reshape(-1) for g in grads_of(pieces, step)]) + wd * x
        r_sq = max(r_sq, float(((x - x0) ** 2).sum()))
        v += r_sq * float((g**2).sum())
        x = x - lr * r_sq / (math.sqrt(v) + eps) * g
        trajectory.append([p.clone() for p in x.split(sizes)])
    return trajectory


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("foreach", [False, True])
def test_dowg_matches_an_independent_reference(problem, foreach: bool) -> None:
    """No official PyTorch DoWG: compare 60 steps with a from-the-spec loop over one flat vector
    (weight decay, lr multiplier and eps on)."""
    kwargs = {"lr": 0.7, "init_estim_sq_dist": 1e-3, "eps": 1e-6, "weight_decay": 0.01}

    def grads_of(pieces, step):
        leaves = [p.detach().clone().requires_grad_() for p in pieces]
        return torch.autograd.grad(problem.loss(leaves, step), leaves)

    reference = _dowg_reference(
        problem.init_params(),
        grads_of,
        60,
        kwargs["lr"],
        kwargs["init_estim_sq_dist"],
        kwargs["eps"],
        kwargs["weight_decay"],
    )
    params = problem.init_params()
    optimizer = DoWG(params, foreach=foreach, **kwargs)
    for step in range(60):
        optimizer.zero_grad()
        problem.loss(params, step).backward()
        optimizer.step()
        for ours, expected in zip(params, reference[step], strict=True):
            torch.testing.assert_close(ours.detach().reshape(-1), expected, rtol=1e-11, atol=1e-13)
    assert optimizer.statistics()["r_bar_sq"] > 0.1  # it went somewhere


def test_dowg_first_step_has_length_r_eps_for_any_gradient() -> None:
    generator = torch.Generator().manual_seed(5)
    for _ in range(5):
        tensors = [
            torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()
            for shape in ((3, 4), (7,))
        ]
        start = [t.detach().clone() for t in tensors]
        optimizer = DoWG(tensors, init_estim_sq_dist=0.04, eps=0.0)
        for t in tensors:
            t.grad = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        optimizer.step()
        moved_sq = [
            float(((t.detach() - s) ** 2).sum()) for t, s in zip(tensors, start, strict=True)
        ]
        moved = math.sqrt(sum(moved_sq))
        assert moved == pytest.approx(0.2, rel=1e-13)


# -- native kernels (fused=True on CPU float32/float64 tensors) -------------------------------


def _gappy_run(optimizer_class, kwargs: dict, fused: bool) -> tuple[list[torch.Tensor], dict]:
    """Two groups, one tensor whose gradient is missing at the first step and every third
    step, one without any gradient ever (it still counts in DoG's and DoWG's distance)."""
    torch.manual_seed(0)
    shapes = [(40,), (3, 7), (5,), (6,)]
    tensors = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    targets = [torch.randn(s, dtype=torch.float64) for s in shapes]
    groups = [{"params": tensors[:2]}, {"params": tensors[2:], "lr": 0.5}]
    options = {"fused": True} if fused else {"foreach": False}
    optimizer = optimizer_class(groups, **kwargs, **options)
    for step in range(8):
        optimizer.zero_grad()
        active = [0, 1, 2] if step % 3 else [0, 1]
        loss = sum(((tensors[i] - targets[i]) ** 2 * (1 + i)).sum() for i in active)
        loss.backward()
        optimizer.step()
    return [t.detach().clone() for t in tensors], optimizer.statistics()


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs"),
    [
        (DoG, {"reps_rel": 1e-2, "weight_decay": 0.01}),
        (DoG, {"reps_rel": 1e-2, "averaging_gamma": 8.0}),
        (DoG, {"init_eta": 0.05, "eps": 0.0, "averaging_gamma": 2.0}),
        (LDoG, {"reps_rel": 1e-2, "weight_decay": 0.01}),
        (LDoG, {"init_eta": 0.05, "averaging_gamma": 8.0}),
        (DoWG, {"init_estim_sq_dist": 1e-2, "weight_decay": 0.01}),
    ],
)
def test_native_path_follows_the_for_loop_with_missing_gradients(
    optimizer_class, kwargs: dict, native_only
) -> None:
    loop, loop_stats = _gappy_run(optimizer_class, kwargs, fused=False)
    native, native_stats = _gappy_run(optimizer_class, kwargs, fused=True)
    for a, b in zip(loop, native, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for key, value in loop_stats.items():
        assert native_stats[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
    ran = {name for name, how in native_only.native_status().items() if how == "native"}
    assert "native:dog.dog_sums" in ran and ran & {
        "native:dog.dog_move",
        "native:dog.dog_move_average",
    }
    if optimizer_class is not LDoG:
        assert "native:dog.dog_distance" in ran  # the tensor without a gradient


def test_native_average_matches_the_for_loop(native_only) -> None:
    """The averages themselves (not only the parameters), also of a tensor whose average starts
    after the first step."""
    results = []
    for fused in (False, True):
        torch.manual_seed(1)
        tensors = [torch.randn(30, dtype=torch.float64, requires_grad=True) for _ in range(2)]
        optimizer = DoG(
            tensors, reps_rel=1e-2, averaging_gamma=8.0, **({"fused": True} if fused else {})
        )
        for step in range(6):
            optimizer.zero_grad()
            used = tensors if step else tensors[:1]
            sum((t**2).sum() for t in used).backward()
            optimizer.step()
        results.append([a.clone() for a in optimizer.averaged_parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optimizer_class", [DoG, LDoG, DoWG])
def test_native_mixed_dtypes_in_one_group(optimizer_class, native_only) -> None:
    """float32 and float64 tensors in one group: one native call per dtype and pass."""
    results = []
    for fused in (False, True):
        torch.manual_seed(2)
        tensors = [
            torch.randn(50, dtype=torch.float64, requires_grad=True),
            torch.randn(20, dtype=torch.float32, requires_grad=True),
        ]
        options = {"fused": True} if fused else {"foreach": False}
        optimizer = optimizer_class(tensors, **options)
        for _ in range(5):
            optimizer.zero_grad()
            sum((t.double() ** 2).sum() for t in tensors).backward()
            optimizer.step()
        results.append([t.detach().clone() for t in tensors])
    for a, b in zip(*results, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- the capturable step's compiled rows ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("dog", {"reps_rel": 1e-2, "averaging_gamma": 8.0}),
        ("dog", {"init_eta": 0.05, "eps": 0.0, "weight_decay": 0.01}),
        ("dowg", {"init_estim_sq_dist": 1e-2, "weight_decay": 0.01}),
        ("ldog", {"reps_rel": 1e-2, "averaging_gamma": 2.0}),
    ],
)
def test_capturable_compiled_rows_read_nothing_back(name: str, kwargs: dict, monkeypatch) -> None:
    """The compiled kernels take every tensor (as CUDA tensors do by default): their per-tensor
    scalars (the group's eta, the average's weight) are device scalars in a capturable step, so
    the update traces as one graph (``fullgraph=True`` fails on any read back to the host) and
    gives the host step's numbers."""
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)
    monkeypatch.setenv("LRLAB_DISABLE_COMPILE", "1")  # the kernels' eager form, traced inline
    runs = []
    for capturable in (False, True):
        params = make_params()
        optimizer = lo.create(name, params, fused=True, capturable=capturable, **kwargs)
        update = optimizer.step
        if capturable:
            torch._dynamo.reset()
            update = torch.compile(optimizer._update, backend=CompileCounter(), fullgraph=True)
        for i in range(4):
            optimizer.zero_grad()
            loss_at(params, i).backward()
            if capturable:
                context = StepContext(
                    loss=None, closure=None, example_indices=None, params=tuple(params)
                )
                with torch.no_grad():
                    update(context)
            else:
                update()
        runs.append((params, optimizer.statistics()))
    (host, host_stats), (device, device_stats) = runs
    for a, b in zip(host, device, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    assert device_stats == pytest.approx(host_stats, rel=1e-10, abs=1e-14)
