"""The capturable step (issue 14, "a step ready for GPUs"; NOTE [device scalars] in
``lrlab/optim/_scalars.py``): for every method that declares ``capturable_scalars``.

What a CPU can test: with ``capturable=True`` the global scalars are 0-d tensors, the step gives
the host-mode numbers (float64, every path), a checkpoint holds plain numbers and moves between
the modes, ``torch.compile`` traces the step with the non-finite guard as its only graph break
and compiles nothing new after the second step, and the update after the guard traces with
``fullgraph=True`` (so it reads no scalar back to the host: a ``.item()``, ``.tolist()`` or
``if tensor`` inside it would break the graph and fail). CUDA itself is untested here.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo
from torch import Tensor
from torch._dynamo.testing import CompileCounter

import lrlab.optim as lo
from lrlab.optim import _fused
from lrlab.optim._base import StepContext
from tests.optim._problems import loss_at, make_params, prepare_step, step_kwargs

CAPTURABLE = [name for name in lo.names() if lo.spec(name).capturable]
STEPS = 6


def _first(condition) -> str:
    return next(name for name in CAPTURABLE if condition(lo.spec(name)))


# one capturable method per way a step differs around the update, read from the registry: a
# class with its own step (eval mode), one that needs the loss, one that needs the batch's
# indices, and one that needs none of these
EXPLAINED = tuple(
    dict.fromkeys(
        [
            _first(lambda spec: spec.has_eval_mode),
            _first(lambda spec: spec.needs_loss and not spec.needs_example_index),
            _first(lambda spec: spec.needs_example_index),
            _first(lambda spec: not (spec.has_eval_mode or spec.needs_loss or spec.needs_closure)),
        ]
    )
)
"""The methods whose compiled step's graph-break sites are listed (see the test)."""
PATHS = {
    "default": {},
    "loop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "compiled": {"fused": True},
}


def _kwargs(name: str, index: int = 0) -> dict:
    samples = lo.spec(name).sample_kwargs
    return dict(samples[index % len(samples)])


def _step(optimizer: torch.optim.Optimizer, name: str, params: list[Tensor], i: int, step=None):
    (step or optimizer.step)(**prepare_step(lo.spec(name), params, i))


def _run(name: str, capturable: bool, steps: int = STEPS, dtype=torch.float64, **kwargs):
    params = make_params(dtype)
    optimizer = lo.create(name, params, capturable=capturable, **kwargs)
    for i in range(steps):
        _step(optimizer, name, params, i)
    return optimizer, params


def _assert_same(name, params_a, params_b, stats_a, stats_b, rtol=1e-12, atol=1e-14) -> None:
    for a, b in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=name)
    for key, value in stats_a.items():
        assert stats_b[key] == pytest.approx(value, rel=rtol * 100, abs=atol), (name, key)


def test_some_methods_are_capturable() -> None:
    assert {"schedulefree-sgd", "schedulefree-adamw"} <= set(CAPTURABLE)
    assert len(EXPLAINED) == 4


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (name, path)
        for name in CAPTURABLE
        for path in sorted(PATHS)
        if path != "foreach" or lo.spec(name).supports_foreach
        if path != "compiled" or lo.spec(name).supports_fused
    ],
)
def test_capturable_step_gives_the_host_numbers(name: str, path: str, monkeypatch) -> None:
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)  # the compiled kernels take every tensor
    if path == "compiled":
        monkeypatch.setenv("LRLAB_DISABLE_COMPILE", "1")  # their eager form: the same graph
    spec = lo.spec(name)
    for index in range(len(spec.sample_kwargs)):
        kwargs = {**_kwargs(name, index), **PATHS[path]}
        if not spec.supports_foreach:
            kwargs.pop("foreach", None)  # the loop path is fused=False alone
        if not spec.supports_fused:
            kwargs.pop("fused", None)  # no kernels: the loop path is foreach=False alone
        host, params_h = _run(name, False, **kwargs)
        device, params_d = _run(name, True, **kwargs)
        assert device.capturable and not host.capturable
        _assert_same(name, params_h, params_d, host.statistics(), device.statistics())
        for key in lo.spec(name).cls.capturable_scalars:
            assert isinstance(device.param_groups[0][key], Tensor), key
            assert not isinstance(host.param_groups[0][key], Tensor), key


@pytest.mark.parametrize("name", CAPTURABLE)
def test_globals_are_one_tensor_shared_by_every_group(name: str) -> None:
    params = make_params()
    groups = [{"params": params[:1]}, {"params": params[1:], **lo.spec(name).group_kwargs}]
    optimizer = lo.create(name, groups, capturable=True, **_kwargs(name))
    for i in range(2):
        _step(optimizer, name, params, i)
    first, second = optimizer.param_groups
    for key in optimizer._all_global_defaults():
        if key in optimizer.capturable_scalars:
            assert first[key] is second[key], key


@pytest.mark.parametrize("name", CAPTURABLE)
def test_checkpoints_hold_numbers_and_move_between_modes(name: str) -> None:
    spec = lo.spec(name)
    reference, params_r = _run(name, False, steps=STEPS, **_kwargs(name))
    for saved_mode, loaded_mode in [(True, False), (False, True), (True, True)]:
        saved, params_s = _run(name, saved_mode, steps=3, **_kwargs(name))
        state = saved.state_dict()
        for key, kind in spec.cls.capturable_scalars.items():
            value = state["param_groups"][0].get(key)
            assert value is None or type(value) is kind, (key, type(value))
        params_l = [p.detach().clone().requires_grad_() for p in params_s]
        loaded = lo.create(name, params_l, capturable=loaded_mode, **_kwargs(name))
        loaded.load_state_dict(state)
        assert loaded.capturable is loaded_mode
        for i in range(3, STEPS):
            _step(loaded, name, params_l, i)
        _assert_same(name, params_r, params_l, reference.statistics(), loaded.statistics())


@pytest.mark.parametrize("name", CAPTURABLE)
def test_capturable_setting_is_validated(name: str) -> None:
    params = make_params()
    with pytest.raises(ValueError, match="capturable must be True, False or None, got 'yes'"):
        lo.create(name, params, capturable="yes", **_kwargs(name))
    optimizer = lo.create(name, params[:1], capturable=True, **_kwargs(name))
    before = len(optimizer.param_groups)
    with pytest.raises(ValueError, match=r"capturable=False cannot join .* capturable=True"):
        optimizer.add_param_group({"params": params[1:], "capturable": False})
    assert len(optimizer.param_groups) == before
    optimizer.add_param_group({"params": params[1:]})  # unset: the optimizer's mode
    assert optimizer.param_groups[-1]["capturable"] is True


@pytest.mark.parametrize("name", CAPTURABLE)
def test_cpu_parameters_default_to_the_host_step(name: str) -> None:
    optimizer = lo.create(name, make_params(), **_kwargs(name))
    assert optimizer.capturable is False


def test_a_method_without_device_scalars_refuses_capturable() -> None:
    host_only = [n for n in lo.names() if not lo.spec(n).capturable and lo.spec(n).supports_fused]
    with pytest.raises((TypeError, ValueError), match="capturable"):
        lo.create(host_only[0], make_params(), capturable=True)


def _break_sites(explained) -> set[tuple[str, str]]:
    sites = set()
    for reason in explained.break_reasons:
        ours = [f for f in reason.user_stack if f"{os.sep}lrlab{os.sep}" in f.filename]
        assert ours, reason.reason
        sites.add((os.path.basename(ours[-1].filename), ours[-1].name))
    return sites


@pytest.mark.parametrize("name", EXPLAINED)
def test_compiled_capturable_step_breaks_only_at_the_guard_and_stops_compiling(name: str) -> None:
    """``torch.compile(optimizer.step)``: same numbers as eager, no new frame after the second
    step, and the guard as the only graph break; for the steps that differ around the update (a
    class with its own ``step``, one that needs the loss, one that needs the batch's indices,
    one plain method). Every method's update is one graph that stops compiling after the
    second step by :func:`test_the_capturable_update_reads_nothing_back`; the base's step
    around it is the same code for all."""
    torch._dynamo.reset()
    eager, params_e = _run(name, False, steps=0, **_kwargs(name))
    compiled, params_c = _run(name, True, steps=0, **_kwargs(name))
    counter = CompileCounter()
    step = torch.compile(compiled.step, backend=counter)
    frames = []
    for i in range(STEPS):
        _step(eager, name, params_e, i)
        _step(compiled, name, params_c, i, step=step)
        frames.append(counter.frame_count)
    _assert_same(name, params_e, params_c, eager.statistics(), compiled.statistics())
    assert frames[0] > 0, f"{name}: nothing was traced"
    assert frames[2:] == [frames[1]] * (STEPS - 2), f"{name}: frames per step {frames}"
    torch._dynamo.reset()
    _step(compiled, name, params_c, STEPS)
    for p in params_c:
        p.grad = None
    loss = loss_at(params_c, STEPS + 1)
    loss.backward()
    kwargs = step_kwargs(lo.spec(name), STEPS + 1)
    if lo.spec(name).needs_loss:
        kwargs["loss"] = loss.detach()
    explained = torch._dynamo.explain(compiled.step)(**kwargs)
    assert _break_sites(explained) == {("_base.py", "_has_nonfinite")}


@pytest.mark.parametrize("name", CAPTURABLE)
def test_the_capturable_update_reads_nothing_back(name: str) -> None:
    """The update after the guard is one graph (no host read inside it), gives the host
    numbers, and compiles no new frame after the second step (no guard on a scalar's value)."""
    eager, params_e = _run(name, False, steps=0, **_kwargs(name))
    compiled, params_c = _run(name, True, steps=0, **_kwargs(name))
    torch._dynamo.reset()
    counter = CompileCounter()
    update = torch.compile(compiled._update, backend=counter, fullgraph=True)
    frames = []
    for i in range(STEPS):
        _step(eager, name, params_e, i)
        for p in params_c:
            p.grad = None
        loss = loss_at(params_c, i)
        loss.backward()
        context = StepContext(
            loss=loss.detach(),
            closure=None,
            example_indices=step_kwargs(lo.spec(name), i).get("example_indices"),
            params=tuple(params_c),
        )
        with torch.no_grad():
            update(context)
        frames.append(counter.frame_count)
    _assert_same(name, params_e, params_c, eager.statistics(), compiled.statistics())
    assert frames[2:] == [frames[1]] * (STEPS - 2), f"{name}: frames per step {frames}"


@pytest.mark.parametrize("name", CAPTURABLE[:2])
def test_a_pickled_capturable_optimizer_stays_capturable(name: str, tmp_path) -> None:
    optimizer, _ = _run(name, True, steps=2, **_kwargs(name))
    path = tmp_path / "optimizer.pt"
    torch.save(optimizer, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded.capturable is True
    for key in lo.spec(name).cls.capturable_scalars:
        assert isinstance(loaded.param_groups[0][key], Tensor), key
