"""The conformance suite: every registered method, driven only by its declared capabilities.

Plan (after torch's TestOptimRenewed): the for-loop path is the ground truth and the multi-tensor
path must match it in float64; checkpoints resume bit for bit; the non-finite policy leaves all
state untouched; parameters without or with zero gradients are handled; dtypes, param groups,
copying, pickling and determinism. No test here may branch on a method's name: a new method gets
all of this by being registered.
"""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import shutil
import warnings

import pytest
import torch

import lrlab.optim as lo
from tests.optim._problems import (
    assert_nested_equal,
    closure_for,
    loss_at,
    make_params,
    plain_closure_for,
    run,
    snapshot,
    step_kwargs,
)

NAMES = lo.names()
VOLATILE_GROUP_KEYS = frozenset({"effective_lr", "nonfinite_steps"})


def _samples(spec: lo.MethodSpec) -> list[dict]:
    return [dict(kwargs) for kwargs in spec.sample_kwargs]


@pytest.fixture(params=NAMES)
def spec(request: pytest.FixtureRequest) -> lo.MethodSpec:
    return lo.spec(request.param)


def _build(spec: lo.MethodSpec, params, **overrides) -> torch.optim.Optimizer:
    kwargs = {**dict(spec.sample_kwargs[0]), **overrides}
    return lo.create(spec.name, params, **kwargs)


# -- construction ---------------------------------------------------------------------------


def test_invalid_kwargs_raise_declared_error(spec: lo.MethodSpec) -> None:
    assert spec.invalid_kwargs, f"{spec.name} declares no invalid kwargs"
    for invalid in spec.invalid_kwargs:
        kwargs = {**dict(spec.sample_kwargs[0]), **dict(invalid.kwargs)}
        with pytest.raises(invalid.error, match=invalid.match):
            lo.create(spec.name, make_params(), **kwargs)


def test_unknown_kwarg_is_rejected(spec: lo.MethodSpec) -> None:
    with pytest.raises(TypeError):
        lo.create(spec.name, make_params(), not_an_argument=1, **dict(spec.sample_kwargs[0]))


def test_every_sample_kwargs_constructs_and_steps(spec: lo.MethodSpec) -> None:
    for kwargs in _samples(spec):
        params = make_params()
        optimizer = lo.create(spec.name, params, **kwargs)
        run(optimizer, params, spec, range(3))
        assert all(torch.isfinite(p).all() for p in params), kwargs


# -- the step -------------------------------------------------------------------------------


def test_reduces_a_convex_quadratic(spec: lo.MethodSpec) -> None:
    params = make_params()
    optimizer = _build(spec, params)
    before = float(loss_at(params, 0, noise=0.0).detach())
    run(optimizer, params, spec, range(20), noise=0.0)
    after = float(loss_at(params, 0, noise=0.0).detach())
    assert after < before, f"{spec.name}: loss {before} -> {after}"


def test_effective_lr_and_statistics_after_every_step(spec: lo.MethodSpec) -> None:
    params = make_params()
    optimizer = _build(spec, params)
    for step in range(3):
        optimizer.step(closure_for(optimizer, params, step), **step_kwargs(spec, step))
        for group in optimizer.param_groups:
            assert isinstance(group["effective_lr"], float)
            assert math.isfinite(group["effective_lr"]) and group["effective_lr"] >= 0.0
        stats = optimizer.statistics()
        assert isinstance(stats, dict) and stats
        assert stats["effective_lr"] == optimizer.param_groups[0]["effective_lr"]
        assert stats["nonfinite_steps"] == 0.0
        for key, value in stats.items():
            assert isinstance(key, str) and isinstance(value, float), (key, value)


def test_step_returns_the_closure_loss_and_plain_closures_work(spec: lo.MethodSpec) -> None:
    params_a, params_b = make_params(), make_params()
    opt_a, opt_b = _build(spec, params_a), _build(spec, params_b)
    for step in range(4):
        loss_a = opt_a.step(closure_for(opt_a, params_a, step), **step_kwargs(spec, step))
        loss_b = opt_b.step(plain_closure_for(opt_b, params_b, step), **step_kwargs(spec, step))
        assert torch.equal(loss_a.detach(), loss_b.detach())
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.equal(a, b), "a plain torch closure must give the same trajectory"


def test_step_without_closure(spec: lo.MethodSpec) -> None:
    """Scripts that call backward() themselves: step(), or step(loss=...) for loss-based methods."""
    params_a, params_b = make_params(), make_params()
    opt_a, opt_b = _build(spec, params_a), _build(spec, params_b)
    for step in range(4):
        opt_a.step(closure_for(opt_a, params_a, step), **step_kwargs(spec, step))
        opt_b.zero_grad()
        loss = loss_at(params_b, step)
        loss.backward()
        if spec.needs_closure:
            with pytest.raises(ValueError, match="needs a closure"):
                opt_b.step(**step_kwargs(spec, step))
            return
        if spec.needs_loss:
            with pytest.raises(ValueError, match="needs the loss"):
                opt_b.step(**step_kwargs(spec, step))
            opt_b.step(loss=loss.detach(), **step_kwargs(spec, step))
        else:
            opt_b.step(**step_kwargs(spec, step))
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.equal(a, b)


def test_closure_and_loss_together_is_an_error(spec: lo.MethodSpec) -> None:
    params = make_params()
    optimizer = _build(spec, params)
    with pytest.raises(ValueError, match="either closure or loss"):
        optimizer.step(
            closure_for(optimizer, params, 0), loss=torch.tensor(1.0), **step_kwargs(spec, 0)
        )


def _assert_paths_agree(name: str, reference: dict, candidate: dict, rtol: float = 1e-12) -> None:
    """Both configurations of ``name`` follow the same float64 trajectory (to ``rtol``)."""
    spec = lo.spec(name)
    for kwargs in _samples(spec):
        params_loop, params_other = make_params(), make_params()
        opt_loop = lo.create(spec.name, params_loop, **{**kwargs, **reference})
        opt_other = lo.create(spec.name, params_other, **{**kwargs, **candidate})
        run(opt_loop, params_loop, spec, range(12))
        run(opt_other, params_other, spec, range(12))
        for a, b in zip(params_loop, params_other, strict=True):
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-14, msg=str(kwargs))
        stats_loop, stats_other = opt_loop.statistics(), opt_other.statistics()
        for key, value in stats_loop.items():
            assert stats_other[key] == pytest.approx(value, rel=1e-10, abs=1e-14), (key, kwargs)


@pytest.mark.parametrize("name", [n for n in NAMES if lo.spec(n).supports_foreach])
def test_foreach_matches_forloop_in_float64(name: str) -> None:
    _assert_paths_agree(name, {"foreach": False}, {"foreach": True})


FUSED = [n for n in NAMES if lo.spec(n).supports_fused]
# the methods whose fused path has compiled kernels for what the native CPU kernels cannot take
COMPILED = [n for n in FUSED if lo.spec(n).fused_compiled]
# as tight as foreach-vs-loop: a looser bound hid a float32 accumulation of float64 sums once
FUSED_RTOL = 1e-12


@pytest.fixture
def kernels_for_small_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send the suite's small tensors through the compiled kernels (normally eager), not the
    native CPU kernels (which take every CPU float32/float64 tensor; tested further below)."""
    from lrlab.optim import _fused

    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)
    monkeypatch.setenv("LRLAB_DISABLE_NATIVE", "1")


def _reference_path(name: str) -> dict:
    """The for-loop path: ``foreach=False`` where the method has a multi-tensor path too,
    ``fused=False`` where it has fused kernels (the default path takes them)."""
    spec = lo.spec(name)
    if spec.supports_foreach:
        return {"foreach": False}
    return {"fused": False} if spec.supports_fused else {}


def _cpp_compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_kernels_match_forloop_in_float64(
    name: str, kernels_for_small_tensors: None
) -> None:
    from lrlab.optim._fused import fused_status

    _assert_paths_agree(name, _reference_path(name), {"fused": True}, rtol=FUSED_RTOL)
    # the check above is only worth something if the kernels really ran compiled, which they
    # must wherever inductor finds a C++ compiler (a machine without one falls back: tested below)
    ran = {
        kernel: how
        for kernel, how in fused_status().items()
        if how != "not used yet" and not kernel.startswith("native:")
    }
    assert ran, "no fused kernel ran"
    expected = "compiled" if _cpp_compiler() else "eager"
    assert all(how.startswith(expected) for how in ran.values()), ran


@pytest.mark.parametrize("name", COMPILED)
def test_fused_falls_back_to_eager_without_a_compiler(
    name: str, monkeypatch: pytest.MonkeyPatch, kernels_for_small_tensors: None
) -> None:
    from lrlab.optim import _fused

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)

    fresh = {}
    for compiled in _fused._KERNELS:  # a kernel that already compiled would not notice
        fresh[compiled] = (compiled._compiled, compiled.fallback_reason)
        compiled._compiled, compiled.fallback_reason = None, None
    monkeypatch.setattr(torch, "compile", broken_compile)
    try:
        with pytest.warns(RuntimeWarning, match="using the eager path"):
            _assert_paths_agree(name, _reference_path(name), {"fused": True}, rtol=FUSED_RTOL)
        assert any("no C++ compiler" in how for how in _fused.fused_status().values())
    finally:
        for compiled, (function, reason) in fresh.items():
            compiled._compiled, compiled.fallback_reason = function, reason


@pytest.mark.parametrize("name", FUSED)
def test_fused_low_precision_follows_the_reference_path(
    name: str, kernels_for_small_tensors: None
) -> None:
    spec = lo.spec(name)
    kwargs = dict(spec.sample_kwargs[0])
    params_loop = make_params(torch.bfloat16)
    params_fused = make_params(torch.bfloat16)
    opt_loop = lo.create(name, params_loop, **{**kwargs, **_reference_path(name)})
    opt_fused = lo.create(name, params_fused, **{**kwargs, "fused": True})
    run(opt_loop, params_loop, spec, range(6))
    run(opt_fused, params_fused, spec, range(6))
    for a, b in zip(params_loop, params_fused, strict=True):
        assert a.dtype == b.dtype == torch.bfloat16
        # a few bf16 roundings apart (statistics accumulate in float32 on both paths)
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("name", FUSED)
def test_fused_loads_a_checkpoint_written_without_the_flag(
    name: str, kernels_for_small_tensors: None
) -> None:
    spec = lo.spec(name)
    params = make_params()
    optimizer = lo.create(name, params, **dict(spec.sample_kwargs[0]))
    run(optimizer, params, spec, range(2))
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group.pop("fused", None)  # as saved by lrlab before the fused path existed
    restored = lo.create(name, params, **dict(spec.sample_kwargs[0]))
    restored.load_state_dict(state)
    run(restored, params, spec, range(2, 4))
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("name", COMPILED)
def test_fused_kernels_stay_compiled_on_mixed_ranks_and_dtypes(
    name: str, kernels_for_small_tensors: None
) -> None:
    # a kernel must not compile one graph per parameter shape: dynamo's recompile limit (8)
    # would silently send every later call to eager. Here hitting a limit raises, and the limit
    # is 4: flat() needs at most two graphs per dtype, a kernel keyed on the rank would need six
    # per dtype. The dtypes are the ones the other fused tests compile anyway (a cold compile
    # costs seconds; CI starts cold).
    import torch._dynamo

    spec = lo.spec(name)
    shapes = [(8,), (3, 5), (2, 3, 4), (2, 2, 2, 3), (2, 2, 2, 2, 2), (2, 1, 2, 1, 2, 3), (7, 8)]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=4):
        for dtype in (torch.float64, torch.bfloat16):
            params = make_params(dtype, shapes=shapes)
            optimizer = lo.create(name, params, **{**dict(spec.sample_kwargs[0]), "fused": True})
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="lrlab")
                run(optimizer, params, spec, range(3))
            assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("name", COMPILED)
def test_fused_leaves_small_tensors_on_the_eager_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lrlab.optim import _fused

    monkeypatch.setenv("LRLAB_DISABLE_NATIVE", "1")  # they would take the native kernels

    def refuse(self, *args):
        raise AssertionError(f"kernel {self.name} called for a small tensor")

    monkeypatch.setattr(_fused.FusedKernel, "__call__", refuse)
    spec = lo.spec(name)
    params = make_params()
    assert max(p.numel() for p in params) < _fused.MIN_ELEMENTS
    optimizer = lo.create(name, params, **{**dict(spec.sample_kwargs[0]), "fused": True})
    run(optimizer, params, spec, range(2))
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)  # and the guard above can fail
    with pytest.raises(AssertionError, match="called for a small tensor"):
        run(optimizer, params, spec, range(2, 3))


@pytest.mark.parametrize("name", FUSED)
def test_fused_argument_is_validated(name: str) -> None:
    with pytest.raises(ValueError, match="fused must be True, False or None"):
        lo.create(name, make_params(), fused="yes")
    if lo.spec(name).supports_foreach:
        with pytest.raises(ValueError, match="cannot be set together"):
            lo.create(name, make_params(), fused=True, foreach=True)


# -- native CPU kernels (fused=True on CPU float32/float64 tensors) ------------------------


@pytest.fixture
def native_kernels(native_only):
    return native_only


def _native_ran(native) -> dict[str, str]:
    return {name: how for name, how in native.native_status().items() if how != "not used yet"}


@pytest.mark.parametrize("name", FUSED)
def test_native_kernels_match_forloop_in_float64(name: str, native_kernels) -> None:
    _assert_paths_agree(name, _reference_path(name), {"fused": True}, rtol=FUSED_RTOL)
    ran = _native_ran(native_kernels)
    assert ran, "no native kernel ran"
    assert all(how == "native" for how in ran.values()), ran


@pytest.mark.parametrize("name", FUSED)
def test_default_path_is_native_and_fused_false_is_not(name: str, native_kernels) -> None:
    # fast by default: a user who sets nothing gets the native kernels (same numbers as the
    # for-loop path); fused=False, or an explicit foreach, takes none of them
    _assert_paths_agree(name, _reference_path(name), {}, rtol=FUSED_RTOL)
    ran = _native_ran(native_kernels)
    assert any(kernel != "native:core.nonfinite_probe" for kernel in ran), ran
    assert all(how == "native" for how in ran.values()), ran
    opted_out = [{"fused": False}]
    if lo.spec(name).supports_foreach:
        opted_out += [{"foreach": True}, {"foreach": False}]
    for kwargs in opted_out:
        for kernel in native_kernels._KERNELS:
            kernel.used = False
        params = make_params()
        optimizer = lo.create(name, params, **{**dict(lo.spec(name).sample_kwargs[0]), **kwargs})
        run(optimizer, params, lo.spec(name), range(3))
        assert not _native_ran(native_kernels), kwargs


@pytest.mark.parametrize("name", FUSED)
def test_native_float32_follows_the_reference_path(name: str, native_kernels) -> None:
    spec = lo.spec(name)
    kwargs = dict(spec.sample_kwargs[0])
    params_loop, params_native = make_params(torch.float32), make_params(torch.float32)
    opt_loop = lo.create(name, params_loop, **{**kwargs, **_reference_path(name)})
    opt_native = lo.create(name, params_native, **{**kwargs, "fused": True})
    run(opt_loop, params_loop, spec, range(6))
    run(opt_native, params_native, spec, range(6))
    for a, b in zip(params_loop, params_native, strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# tensors of more than two of the driver's 32768-element blocks, so that threads share them
THREADED_SHAPES = [(70_000,), (300, 300), (17,), (5, 3)]


@pytest.mark.parametrize("name", FUSED)
def test_native_results_do_not_depend_on_the_thread_count(
    name: str, native_kernels, monkeypatch: pytest.MonkeyPatch
) -> None:
    # only the kernels' thread count changes: the test's own loss (torch sums) may round
    # differently with another torch thread count
    spec = lo.spec(name)
    results = []
    for count in (1, 3):
        monkeypatch.setattr(native_kernels, "_threads", lambda count=count: count)
        params = make_params(torch.float32, shapes=THREADED_SHAPES)
        optimizer = lo.create(name, params, **{**dict(spec.sample_kwargs[0]), "fused": True})
        run(optimizer, params, spec, range(4))
        results.append(([p.detach().clone() for p in params], optimizer.state_dict()))
    (params_one, state_one), (params_three, state_three) = results
    for a, b in zip(params_one, params_three, strict=True):
        assert torch.equal(a, b)
    assert_nested_equal(state_one, state_three)
    assert _native_ran(native_kernels)


@pytest.mark.parametrize("name", FUSED)
def test_native_resume_mid_run_is_bit_identical(name: str, native_kernels) -> None:
    spec = lo.spec(name)
    kwargs = {**dict(spec.sample_kwargs[0]), "fused": True}
    params = make_params()
    optimizer = lo.create(name, params, **kwargs)
    run(optimizer, params, spec, range(3))
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(optimizer.state_dict())
    run(optimizer, params, spec, range(3, 6))
    resumed_params = [p.detach().clone().requires_grad_() for p in saved_params]
    resumed = lo.create(name, resumed_params, **kwargs)
    resumed.load_state_dict(saved_state)
    run(resumed, resumed_params, spec, range(3, 6))
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", FUSED)
def test_native_takes_eligible_tensors_and_leaves_the_rest(name: str, native_kernels) -> None:
    # a non-contiguous parameter (a transposed view) goes the other way, the others native
    spec = lo.spec(name)
    kwargs = dict(spec.sample_kwargs[0])

    def params() -> list[torch.Tensor]:
        made = make_params()
        made[0] = made[0].detach().t().requires_grad_()  # a transposed (4, 3): not contiguous
        return made

    params_loop, params_native = params(), params()
    assert not params_native[0].is_contiguous()
    opt_loop = lo.create(name, params_loop, **{**kwargs, **_reference_path(name)})
    opt_native = lo.create(name, params_native, **{**kwargs, "fused": True})
    run(opt_loop, params_loop, spec, range(6))
    run(opt_native, params_native, spec, range(6))
    for a, b in zip(params_loop, params_native, strict=True):
        torch.testing.assert_close(a, b, rtol=FUSED_RTOL, atol=1e-14)
    if _cpp_compiler() is not None:
        assert _native_ran(native_kernels)


@pytest.mark.parametrize("name", FUSED)
def test_native_kernels_fall_back_without_a_compiler(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lrlab.optim import _native

    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    for family in list(_native._LIBRARIES):  # fresh, unbuilt libraries for this test
        monkeypatch.setitem(_native._LIBRARIES, family, _native._Library(family))
    # silently: the default path takes these kernels, and no compiler is not a user error
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*native kernels", category=RuntimeWarning)
        _assert_paths_agree(name, _reference_path(name), {"fused": True}, rtol=FUSED_RTOL)
        _assert_paths_agree(name, _reference_path(name), {}, rtol=FUSED_RTOL)
    failed = [how for how in _native.native_status().values() if how.startswith("unavailable")]
    assert failed and all("no C++ compiler found" in how for how in failed)


# -- checkpoints ----------------------------------------------------------------------------


def test_state_dict_resume_mid_run_is_bit_identical(spec: lo.MethodSpec) -> None:
    for kwargs in _samples(spec):
        params_full = make_params()
        optimizer_full = lo.create(spec.name, params_full, **kwargs)
        run(optimizer_full, params_full, spec, range(10))

        params_first = make_params()
        optimizer_first = lo.create(spec.name, params_first, **kwargs)
        run(optimizer_first, params_first, spec, range(5))
        buffer = io.BytesIO()
        torch.save(
            {"params": snapshot(params_first), "optimizer": optimizer_first.state_dict()}, buffer
        )
        buffer.seek(0)
        # weights_only=True is torch's default: a checkpoint must load without unpickling code
        checkpoint = torch.load(buffer, weights_only=True)

        params_resumed = [p.clone().requires_grad_() for p in checkpoint["params"]]
        optimizer_resumed = lo.create(spec.name, params_resumed, **kwargs)
        optimizer_resumed.load_state_dict(checkpoint["optimizer"])
        run(optimizer_resumed, params_resumed, spec, range(5, 10))

        for a, b in zip(params_full, params_resumed, strict=True):
            assert torch.equal(a, b), f"{spec.name} {kwargs}: resumed run differs"
        assert optimizer_full.statistics() == optimizer_resumed.statistics()


def test_deepcopy_and_pickle_continue_identically(spec: lo.MethodSpec) -> None:
    params = make_params()
    optimizer = _build(spec, params)
    run(optimizer, params, spec, range(3))
    for clone in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        clone_params = [p for group in clone.param_groups for p in group["params"]]
        assert all(c is not p for c, p in zip(clone_params, params, strict=True))
        reference = copy.deepcopy(optimizer)
        reference_params = [p for group in reference.param_groups for p in group["params"]]
        run(reference, reference_params, spec, range(3, 6))
        run(clone, clone_params, spec, range(3, 6))
        for a, b in zip(reference_params, clone_params, strict=True):
            assert torch.equal(a, b)


def test_determinism(spec: lo.MethodSpec) -> None:
    results = []
    for _ in range(2):
        params = make_params()
        optimizer = _build(spec, params)
        run(optimizer, params, spec, range(8))
        results.append((snapshot(params), optimizer.statistics()))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        assert torch.equal(a, b)
    assert results[0][1] == results[1][1]


# -- the non-finite policy ------------------------------------------------------------------


def _poisoned_closure(optimizer, params, step, value: float, where: str):
    def closure(*, backward: bool = True):
        loss = closure_for(optimizer, params, step)(backward=backward)
        if where == "grad" and backward:
            params[1].grad.view(-1)[2] = value
        if where == "loss":
            loss = loss * value
        return loss

    return closure


@pytest.mark.parametrize(
    ("value", "where"),
    [(math.nan, "grad"), (math.inf, "grad"), (-math.inf, "grad"), (math.nan, "loss")],
)
def test_nonfinite_step_is_skipped_and_leaves_state_unchanged(
    spec: lo.MethodSpec, value: float, where: str
) -> None:
    params_clean = make_params()
    optimizer_clean = _build(spec, params_clean)
    run(optimizer_clean, params_clean, spec, range(6))

    params = make_params()
    optimizer = _build(spec, params)
    run(optimizer, params, spec, range(3))
    before_params = snapshot(params)
    before_state = copy.deepcopy(optimizer.state_dict())
    optimizer.step(_poisoned_closure(optimizer, params, 99, value, where), **step_kwargs(spec, 99))
    for a, b in zip(before_params, params, strict=True):
        assert torch.equal(a, b), "a non-finite step moved the parameters"
    assert_nested_equal(before_state, optimizer.state_dict(), ignore=VOLATILE_GROUP_KEYS)
    assert optimizer.statistics()["nonfinite_steps"] == 1.0
    assert all(group["effective_lr"] == 0.0 for group in optimizer.param_groups)

    run(optimizer, params, spec, range(3, 6))
    for a, b in zip(params_clean, params, strict=True):
        assert torch.equal(a, b), "the run must continue as if the bad batch was never drawn"


# -- parameters and groups ------------------------------------------------------------------


def test_parameters_with_none_or_zero_gradients(spec: lo.MethodSpec) -> None:
    params = make_params()
    optimizer = _build(spec, params)
    untouched = params[2].detach().clone()
    for step in range(6):
        closure = closure_for(optimizer, params, step, unused=(2,), zero_grad_for=(1,))
        optimizer.step(closure, **step_kwargs(spec, step))
        assert params[2].grad is None
    assert torch.equal(params[2], untouched), "a parameter without gradient moved"
    for p in params:
        assert torch.isfinite(p).all()
    for state in optimizer.state.values():
        for value in state.values() if isinstance(state, dict) else ():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert torch.isfinite(value).all()
    assert math.isfinite(optimizer.param_groups[0]["effective_lr"])
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))


def test_two_param_groups_with_different_settings(spec: lo.MethodSpec) -> None:
    def build(group_kwargs):
        params = make_params()
        groups = [{"params": params[:2]}, {"params": params[2:], **group_kwargs}]
        return params, _build(spec, groups)

    params, optimizer = build(dict(spec.group_kwargs))
    run(optimizer, params, spec, range(6))
    assert len(optimizer.param_groups) == 2
    for group in optimizer.param_groups:
        assert isinstance(group["effective_lr"], float)
        for key, value in dict(spec.group_kwargs).items():
            if group is optimizer.param_groups[1]:
                assert group[key] == value
    global_keys = getattr(optimizer, "_all_global_defaults", dict)()
    for key in global_keys:
        first, second = (group[key] for group in optimizer.param_groups)
        assert first == second or (first != first and second != second), key
    assert all(torch.isfinite(p).all() for p in params)
    if spec.group_kwargs:
        same_params, same_optimizer = build({})
        run(same_optimizer, same_params, spec, range(6))
        assert not torch.equal(params[2], same_params[2]), "the group setting had no effect"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_parameter_dtypes(spec: lo.MethodSpec, dtype: torch.dtype) -> None:
    params = make_params(dtype=dtype)
    optimizer = _build(spec, params)
    before = snapshot(params)
    run(optimizer, params, spec, range(5))
    for p in params:
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for stat in optimizer.statistics().values():
        assert math.isfinite(stat)


@pytest.mark.parametrize("name", [n for n in NAMES if lo.spec(n).has_eval_mode])
def test_eval_mode_blocks_steps(name: str) -> None:
    spec = lo.spec(name)
    params = make_params()
    optimizer = _build(spec, params)
    run(optimizer, params, spec, range(2))
    optimizer.eval()
    with pytest.raises((RuntimeError, ValueError), match="train"):
        run(optimizer, params, spec, range(2, 3))
    optimizer.train()
    run(optimizer, params, spec, range(2, 4))
