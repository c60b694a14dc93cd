"""Mechanic: spec vectors (section 11), a scalar reference of spec 3.2, the official
``mechanic-pytorch`` 0.0.1 as oracle, resumable state, param groups, closures, collectives."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch
from mechanic_pytorch import mechanize

import lrlab.optim as lo
from lrlab.optim import AdaptiveOptimizer, Mechanic, StepContext
from lrlab.optim.mechanic import DEFAULT_BETAS
from tests.optim._oracle import PROBLEMS, max_trajectory_error, two_groups

ORACLE_RTOL = 1e-9  # achieved: <= 6e-14 on every problem and configuration below


@contextlib.contextmanager
def float64_default():
    """The package creates its tuner state with torch's default dtype (float32 unless changed)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _oracle_step(optimizer, closure) -> None:
    # the package runs the closure under no_grad (see test_package_step_with_closure_fails)
    closure()
    optimizer.step()


def _toy_step(optimizer, x) -> None:
    """Spec 11's toy: f(x) = 0.5 (x - 3)^2, full batch."""
    optimizer.zero_grad()
    (0.5 * (x - 3.0) ** 2).sum().backward()
    optimizer.step()


# -- (a) hand-computed first steps ----------------------------------------------------------


def test_spec_vector_over_sgd() -> None:
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = Mechanic([x], base="sgd", lr=1.0)
    _toy_step(optimizer, x)
    # h_1 = 0 (Delta = 0), so s_j = beta_j * 1e-6 * s_init / (n eps): sum(s) = 1e-6 * mean(betas)
    s1 = 1e-6 * sum(DEFAULT_BETAS) / len(DEFAULT_BETAS)
    assert optimizer.statistics()["s"] == pytest.approx(s1, rel=1e-14)
    assert s1 == pytest.approx(9.81481e-7, rel=1e-6)
    assert float(x.detach()) == pytest.approx(3 * s1, rel=1e-14)  # Delta = the SGD step, 3
    assert optimizer.param_groups[0]["effective_lr"] == pytest.approx(s1, rel=1e-14)
    _toy_step(optimizer, x)
    assert float(x.detach()) == pytest.approx(5.918886e-6, rel=1e-6)
    _toy_step(optimizer, x)
    assert float(x.detach()) == pytest.approx(1.187162e-5, rel=1e-6)


def _scalar_reference(x0, lr, steps, grad, s_decay=0.01, betas=DEFAULT_BETAS, s_init=1e-8):
    """Spec 3.2 (b) for one scalar parameter and an SGD base, in Python floats."""
    eps, n = 1e-8, len(betas)
    s, v, r, m = [0.0] * n, [0.0] * n, [0.0] * n, [1e-6] * n
    ref = x = x0
    out = []
    for _ in range(steps):
        g, S = grad(x), sum(s)
        delta = (x - ref) / (S + eps)
        x_plus = x - lr * g
        h = delta * (g + s_decay * S * abs(g) / (abs(x_plus) + eps) * x_plus)
        delta += x_plus - x
        m = [max(b * mj, abs(h)) for b, mj in zip(betas, m, strict=True)]
        v = [b * b * vj + h * h for b, vj in zip(betas, v, strict=True)]
        r = [max(0.0, b * rj - sj * h) for b, rj, sj in zip(betas, r, s, strict=True)]
        s = [
            (mj * s_init / n + rj) / (math.sqrt(vj) + eps)
            for mj, rj, vj in zip(m, r, v, strict=True)
        ]
        x = ref + delta * max(sum(s), 0.0)
        out.append((x, sum(s)))
    return out


@pytest.mark.parametrize(("s_decay", "s_init"), [(0.01, 1e-8), (0.5, 1e-4)])
def test_matches_the_scalar_reference(s_decay: float, s_init: float) -> None:
    x = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    optimizer = Mechanic([x], base="sgd", lr=0.7, s_decay=s_decay, s_init=s_init)
    reference = _scalar_reference(0.5, 0.7, 12, lambda z: 4 * (z - 3.0), s_decay, s_init=s_init)
    for x_ref, s_ref in reference:
        optimizer.zero_grad()
        (2 * (x - 3.0) ** 2).sum().backward()
        optimizer.step()
        assert float(x.detach()) == pytest.approx(x_ref, rel=1e-12)
        assert optimizer.statistics()["s"] == pytest.approx(s_ref, rel=1e-12)


# -- (b) the official package as oracle -----------------------------------------------------

_CONFIGS = [
    ("sgd", torch.optim.SGD, {"lr": 0.01}, {}),
    (
        "sgd",
        torch.optim.SGD,
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01},
        {"store_delta": True},
    ),
    (
        torch.optim.SGD,
        torch.optim.SGD,
        {"lr": 0.01, "momentum": 0.5},
        {"s_decay": 0.0, "betas": (0.9, 0.999)},
    ),
    ("adamw", torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.0}, {}),
    (
        "adamw",
        torch.optim.AdamW,
        {"lr": 0.01, "weight_decay": 0.1},
        {"store_delta": True},
    ),
    (torch.optim.AdamW, torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.1}, {"s_decay": 0.1}),
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize(("base", "oracle_base", "base_kwargs", "kwargs"), _CONFIGS)
def test_trajectory_matches_the_package(problem, base, oracle_base, base_kwargs, kwargs) -> None:
    """60 steps, float64, two groups (the second with its own base lr)."""
    with float64_default():
        error = max_trajectory_error(
            lambda params: Mechanic(params, base=base, base_kwargs=base_kwargs, **kwargs),
            lambda params: mechanize(oracle_base, **kwargs)(params, **base_kwargs),
            problem,
            steps=60,
            groups=two_groups(lr=base_kwargs["lr"] * 0.3),
            oracle_step=_oracle_step,
        )
    assert error <= ORACLE_RTOL


def test_why_the_sgd_oracle_runs_use_a_small_base_lr() -> None:
    """On the deterministic quadratic with SGD(lr=0.1, momentum=0.9), Mechanic reaches a chaotic
    regime after ~50 steps: the package against *itself*, with one parameter perturbed by one ulp
    at step 40, differs by more than 1e-7 (relative) after 66 steps. Any implementation whose
    rounding is not operation-for-operation the package's would too, so the oracle runs above use
    lr=0.01 there.
    """
    problem = PROBLEMS[0]
    with float64_default():
        params_a, params_b = problem.init_params(), problem.init_params()
        groups = two_groups(lr=0.03)
        a = mechanize(torch.optim.SGD)(groups(params_a), lr=0.1, momentum=0.9)
        b = mechanize(torch.optim.SGD)(groups(params_b), lr=0.1, momentum=0.9)
        for step in range(66):
            for optimizer, params in ((a, params_a), (b, params_b)):
                optimizer.zero_grad()
                problem.loss(params, step).backward()
                optimizer.step()
            if step == 40:
                with torch.no_grad():
                    params_b[0].mul_(1 + 2**-52)
    error = max(
        float((x.detach() - y.detach()).abs().max() / y.detach().abs().max())
        for x, y in zip(params_a, params_b, strict=True)
    )
    assert error > 1e-7


# -- deliberate differences from the package, pinned ----------------------------------------


def _save_load(obj) -> object:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_package_state_is_not_resumable_ours_is() -> None:
    """The package keys its state by tensor objects: a new optimizer cannot use it (issues #2,
    #4). Ours resumes through torch.save / torch.load(weights_only=True)."""
    with float64_default():
        x = torch.zeros(2, requires_grad=True)
        official = mechanize(torch.optim.SGD)([x], lr=0.1)
        _toy_step(official, x)
        y = x.detach().clone().requires_grad_()
        resumed = mechanize(torch.optim.SGD)([y], lr=0.1)
        resumed.load_state_dict(_save_load(official.state_dict()))
        with torch.enable_grad(), pytest.raises(KeyError):  # (restores the leaked grad mode)
            _toy_step(resumed, y)

    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ours = Mechanic([x], base="sgd", lr=0.1)
    _toy_step(ours, x)
    y = x.detach().clone().requires_grad_()
    resumed_ours = Mechanic([y], base="sgd", lr=0.1)
    resumed_ours.load_state_dict(_save_load(ours.state_dict()))
    _toy_step(ours, x)
    _toy_step(resumed_ours, y)
    assert torch.equal(x, y)


def test_package_step_with_closure_fails_ours_calls_it_once() -> None:
    """The package evaluates the closure with autograd disabled, so backward() fails."""
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    official = mechanize(torch.optim.SGD)([x], lr=0.1)

    def closure():
        official.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    # torch.enable_grad() restores the grad mode, which the package leaves disabled on error
    with torch.enable_grad(), pytest.raises(RuntimeError, match="does not require grad"):
        official.step(closure)
    assert torch.is_grad_enabled()

    calls = []
    y = torch.ones(2, dtype=torch.float64, requires_grad=True)
    ours = Mechanic([y], base=torch.optim.SGD, base_kwargs={"lr": 0.1})

    def our_closure():
        calls.append(1)
        ours.zero_grad()
        loss = (y**2).sum()
        loss.backward()
        return loss

    loss = ours.step(our_closure)
    assert float(loss.detach()) == 2.0 and calls == [1]


def test_bfloat16_parameters_learn_unlike_the_package() -> None:
    """bf16 x = x_ref + s Delta rounds back to x_ref while s ~ 1e-6. The package recomputes
    Delta = (x - x_ref) / S from x: it stays 0, so h = 0 and s never grows. Ours keeps Delta
    (and x_ref) in float32."""

    def run(optimizer, x, steps=40):
        for _ in range(steps):
            _toy_step(optimizer, x)

    x_official = torch.ones(3, dtype=torch.bfloat16, requires_grad=True)
    official = mechanize(torch.optim.SGD)([x_official], lr=1.0)
    run(official, x_official)
    assert torch.equal(x_official, torch.ones(3, dtype=torch.bfloat16))  # stuck at x_ref
    assert float(official.state["_mechanic"]["s"].sum()) < 1e-6  # never grew

    x = torch.ones(3, dtype=torch.bfloat16, requires_grad=True)
    ours = Mechanic([x], base="sgd", lr=1.0)
    run(ours, x)
    assert ours.state[x]["delta"].dtype == torch.float32
    assert ours.state[x]["ref"].dtype == torch.float32
    assert ours.statistics()["s"] > 1e-3
    assert float(x.detach().float().mean()) > 2.5  # moving toward 3


def test_bfloat16_float32_state_survives_a_checkpoint() -> None:
    def build():
        x = torch.linspace(-1, 1, 5, dtype=torch.bfloat16).requires_grad_()
        return x, Mechanic([x], base="adamw", base_kwargs={"lr": 0.1}, s_init=1e-5)

    x, optimizer = build()
    for _ in range(4):
        _toy_step(optimizer, x)
    checkpoint = _save_load({"x": x.detach().clone(), "opt": optimizer.state_dict()})
    for _ in range(4):
        _toy_step(optimizer, x)
    y, resumed = build()
    with torch.no_grad():
        y.copy_(checkpoint["x"])
    resumed.load_state_dict(checkpoint["opt"])
    assert resumed.state[y]["delta"].dtype == torch.float32
    assert resumed.state[y]["ref"].dtype == torch.float32
    for _ in range(4):
        _toy_step(resumed, y)
    assert torch.equal(x, y)


# -- (c) resume over a base with state ------------------------------------------------------


def _only_plain_types(value, path="state_dict") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"{path}: key {key!r}"
            _only_plain_types(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _only_plain_types(item, f"{path}[{index}]")
    else:
        assert value is None or isinstance(value, (torch.Tensor, int, float, str, bool)), path


@pytest.mark.parametrize("store_delta", [False, True])
def test_resume_over_adamw_is_bit_identical(store_delta: bool) -> None:
    problem = PROBLEMS[2]
    kwargs = {"base": "adamw", "base_kwargs": {"lr": 0.05, "weight_decay": 0.1}}
    groups = two_groups(lr=0.02)

    def run(optimizer, params, steps):
        for step in steps:
            optimizer.zero_grad()
            problem.loss(params, step).backward()
            optimizer.step()

    params = problem.init_params()
    optimizer = Mechanic(groups(params), store_delta=store_delta, **kwargs)
    run(optimizer, params, range(7))
    state_dict = optimizer.state_dict()
    _only_plain_types(state_dict)
    assert set(state_dict["base_state"]) == set(range(len(params)))
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(state_dict["base_state"][0])
    checkpoint = _save_load({"params": [p.detach().clone() for p in params], "opt": state_dict})
    run(optimizer, params, range(7, 15))

    resumed_params = [p.clone().requires_grad_() for p in checkpoint["params"]]
    resumed = Mechanic(groups(resumed_params), store_delta=store_delta, **kwargs)
    resumed.load_state_dict(checkpoint["opt"])
    assert resumed.base.param_groups is resumed.param_groups
    run(resumed, resumed_params, range(7, 15))
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params, strict=True))
    assert optimizer.statistics() == resumed.statistics()


def test_load_state_dict_rejects_a_plain_optimizer_state() -> None:
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    optimizer = Mechanic([x], base="sgd", lr=0.1)
    with pytest.raises(ValueError, match="base_state"):
        optimizer.load_state_dict(torch.optim.SGD([x], lr=0.1).state_dict())


# -- param groups ---------------------------------------------------------------------------


def _params(*sizes):
    return [torch.linspace(-1, 1, n, dtype=torch.float64).requires_grad_() for n in sizes]


def _quadratic_step(optimizer, params) -> None:
    optimizer.zero_grad()
    sum(((p - 1) ** 2).sum() for p in params).backward()
    optimizer.step()


def test_groups_are_shared_with_the_base_and_reach_it() -> None:
    a, b = _params(3, 2)
    optimizer = Mechanic(
        [{"params": [a]}, {"params": [b], "lr": 0.01}],
        base="sgd",
        base_kwargs={"lr": 0.1, "momentum": 0.9},
    )
    assert optimizer.param_groups is optimizer.base.param_groups
    assert [g["lr"] for g in optimizer.base.param_groups] == [0.1, 0.01]
    assert [g["momentum"] for g in optimizer.base.param_groups] == [0.9, 0.9]
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(3):
        _quadratic_step(optimizer, [a, b])
        scheduler.step()
    assert optimizer.base.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    _quadratic_step(optimizer, [a, b])
    s = optimizer.statistics()["s"]
    for group in optimizer.param_groups:
        assert group["effective_lr"] == pytest.approx(group["lr"] * s, rel=1e-15)
    clone = copy.deepcopy(optimizer)
    assert clone.param_groups is clone.base.param_groups


def test_add_param_group_reaches_the_base() -> None:
    a, c = _params(3, 4)
    optimizer = Mechanic([a], base="sgd", base_kwargs={"lr": 0.1, "momentum": 0.5})
    _quadratic_step(optimizer, [a])
    optimizer.add_param_group({"params": [c], "lr": 0.02})
    new = optimizer.param_groups[1]
    assert optimizer.base.param_groups[1] is new
    assert new["lr"] == 0.02 and new["momentum"] == 0.5
    for key in optimizer._all_global_defaults():
        assert new[key] == optimizer.param_groups[0][key], key
    _quadratic_step(optimizer, [a, c])
    assert "ref" in optimizer.state[c] and "momentum_buffer" in optimizer.base.state[c]
    assert not torch.equal(c.detach(), torch.linspace(-1, 1, 4, dtype=torch.float64))


def test_mechanic_settings_are_global() -> None:
    a, b = _params(2, 2)
    with pytest.raises(ValueError, match="global"):
        Mechanic([{"params": [a]}, {"params": [b], "mechanic_s_decay": 0.5}], base="sgd", lr=0.1)


def test_effective_lr_uses_the_base_effective_lr() -> None:
    (a,) = _params(4)
    optimizer = Mechanic([a], base="clara-sgd", lr=0.1)
    for _ in range(3):
        factor = optimizer.statistics()["base_lr_factor"]  # CLARA's factor for this step
        _quadratic_step(optimizer, [a])
        stats = optimizer.statistics()
        assert stats["effective_lr"] == pytest.approx(0.1 * factor * stats["s"], rel=1e-14)
    assert {"s", "scale", "inner_product", "mechanic_steps", "base_path_ratio"} <= set(stats)


def test_base_as_instance() -> None:
    a, b = _params(3, 2)
    a2, b2 = (p.detach().clone().requires_grad_() for p in (a, b))
    by_class = Mechanic([a, b], base=torch.optim.SGD, base_kwargs={"lr": 0.1})
    instance = torch.optim.SGD([a2, b2], lr=0.1)
    by_instance = Mechanic([a2, b2], base=instance)
    assert by_instance.base is instance
    for _ in range(4):
        _quadratic_step(by_class, [a, b])
        _quadratic_step(by_instance, [a2, b2])
    assert torch.equal(a, a2) and torch.equal(b, b2)
    with pytest.raises(ValueError, match="other parameters"):
        Mechanic([a], base=torch.optim.SGD([a, b], lr=0.1))
    with pytest.raises(ValueError, match="must not be given"):
        Mechanic([a], base=torch.optim.SGD([a], lr=0.1), lr=0.2)


def test_bases_that_cannot_be_wrapped() -> None:
    (a,) = _params(2)
    with pytest.raises(ValueError, match="train\\(\\)/eval\\(\\) modes"):
        Mechanic([a], base="schedulefree-sgd")
    with pytest.raises(ValueError, match="must not itself wrap"):
        Mechanic([a], base=Mechanic)
    with pytest.raises(ValueError, match="must not contain 'params'"):
        Mechanic([a], base="sgd", base_kwargs={"params": [a]})


# -- closures, the loss, non-finite policy --------------------------------------------------


class _NeedsLoss(AdaptiveOptimizer):
    """A minimal lrlab base that needs the loss: x <- x - lr * loss * g."""

    needs_loss = True

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    def _update(self, context: StepContext) -> None:
        for group in self.param_groups:
            group["effective_lr"] = group["lr"]
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * float(context.loss))


def test_a_base_that_needs_the_loss_gets_it_from_one_closure_call() -> None:
    (a,) = _params(3)
    optimizer = Mechanic([a], base=_NeedsLoss, base_kwargs={"lr": 0.1})
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = ((a - 1) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert calls == [1]
    optimizer.zero_grad()
    loss = ((a - 1) ** 2).sum()
    loss.backward()
    with pytest.raises(ValueError, match="needs the loss"):
        optimizer.step()
    optimizer.step(loss=loss.detach())
    assert optimizer.statistics()["mechanic_steps"] == 2.0


def test_lbfgs_base_does_not_evaluate_the_closure_twice() -> None:
    """The base's first closure call returns the loss the wrapper already computed."""

    def count_calls(make_optimizer):
        (a,) = _params(4)
        optimizer = make_optimizer([a])
        calls = []

        def closure():
            calls.append(1)
            optimizer.zero_grad()
            loss = ((a - 1) ** 2 * torch.arange(1.0, 5.0, dtype=torch.float64)).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return len(calls)

    alone = count_calls(lambda params: torch.optim.LBFGS(params, lr=0.5, max_iter=4))
    wrapped = count_calls(
        lambda params: Mechanic(
            params, base=torch.optim.LBFGS, base_kwargs={"lr": 0.5, "max_iter": 4}
        )
    )
    assert alone > 1 and wrapped == alone


def test_nonfinite_gradient_skips_the_base_too() -> None:
    (a,) = _params(3)
    optimizer = Mechanic([a], base="adamw", base_kwargs={"lr": 0.1})
    _quadratic_step(optimizer, [a])
    before = copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad()
    a.grad = torch.tensor([1.0, math.nan, 0.0], dtype=torch.float64)
    optimizer.step()
    after = optimizer.state_dict()
    assert torch.equal(after["base_state"][0]["exp_avg"], before["base_state"][0]["exp_avg"])
    assert after["base_state"][0]["step"] == before["base_state"][0]["step"]
    assert optimizer.statistics()["nonfinite_steps"] == 1.0


# -- global statistics ----------------------------------------------------------------------


def test_one_reduction_per_step_even_without_gradients() -> None:
    a, b = _params(3, 2)
    optimizer = Mechanic([a, b], base="sgd", lr=0.1, sharded=True)
    calls = []
    original = optimizer._reduce_global

    def counting(values):
        calls.append(len(values))
        return original(values)

    optimizer._reduce_global = counting
    _quadratic_step(optimizer, [a, b])
    assert calls == [1, 4]  # the non-finite flag (sharded), then the four inner products
    calls.clear()
    optimizer.zero_grad()  # no gradient at all on this "rank"
    optimizer.step()
    assert calls == [1, 4]


def test_sharded_is_forwarded_to_a_base_with_global_statistics() -> None:
    (a,) = _params(3)
    optimizer = Mechanic([a], base="clara-sgd", lr=0.1, sharded=True)
    assert optimizer.base.param_groups[0]["sharded"] is True
    with pytest.raises(ValueError, match="sharded=True but base_kwargs"):
        Mechanic([a], base="clara-sgd", base_kwargs={"lr": 0.1, "sharded": False}, sharded=True)


def test_registry_declares_a_wrapper_with_global_statistics() -> None:
    spec = lo.spec("mechanic")
    assert spec.wraps_base and spec.has_global_statistics and not spec.has_eval_mode
    assert lo.spec("Mechanic").name == "mechanic"


@pytest.mark.parametrize("store_delta", [False, True])
def test_native_passes_match_the_loop_and_keep_no_delta(
    store_delta: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fused=True on CPU runs Mechanic's passes as native kernels; without store_delta they
    recompute Delta from x and ref (never stored): the loop's numbers, and no "delta" state."""
    from lrlab.optim import _native

    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)
    # looked up by the C++ function's name: the Python objects that hold kernels may move
    name = "mechanic_move_stored" if store_delta else "mechanic_move_recomputed"
    move = next(k for k in _native._KERNELS if k.name == name)
    if not move.available():
        raise AssertionError("the native kernels cannot be built (no C++ compiler?)")
    monkeypatch.setattr(move, "used", False)
    shapes = [(70_000,), (30, 20), (5,)]

    def run(fused: bool) -> tuple[list[torch.Tensor], Mechanic]:
        generator = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
        params = [p.requires_grad_() for p in params]
        optimizer = Mechanic(
            params,
            base="adamw",
            base_kwargs={"lr": 0.01},
            s_init=1e-6,
            store_delta=store_delta,
            fused=fused,
        )
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            optimizer.step()
        return [p.detach() for p in params], optimizer

    (loop, _), (native, optimizer) = run(False), run(True)
    for a, b in zip(loop, native, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    assert move.used
    assert all(("delta" in optimizer.state[p]) == store_delta for p in optimizer.state)
