"""``torch.compile(optimizer.step)`` for every registered method (issue 14, "a step ready for
GPUs"; see NOTE [torch.compile and the step] in ``lrlab/optim/_base.py``).

A method that declares ``traceable_step`` has its step traced by dynamo: the compiled step must
follow the eager trajectory (float32 and float64), compile no new frame after the second step,
and break the graph only where :data:`BREAKS` says, for the reason given there (measured with
torch 2.13 on CPU). A method whose only break is the non-finite guard has an update that traces
as one graph (``fullgraph=True``). Every other method runs its step eager under compilation;
:data:`EAGER` gives the measured reason of each (that such a step equals the eager one
and makes no graph is checked over 30 steps in ``tests/integrations/test_compile.py``, for every
method). The tracing checks use dynamo's counting
backend (no inductor), so the file costs seconds; one inductor run checks the real backend.
CUDA is untested here: there is no GPU on the development machine or in CI.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import lrlab.optim as lo
from lrlab.optim._base import StepContext
from tests.optim._problems import make_params, prepare_step

NAMES = lo.names()
TRACED = [n for n in NAMES if lo.spec(n).traceable_step]
NOT_TRACED = [n for n in NAMES if not lo.spec(n).traceable_step]
STEPS = {torch.float64: 4, torch.float32: 3}
"""Steps of each traced run: frames compiled after step 2 must stay the same through the last."""

GUARD = ("_base.py", "_has_nonfinite")
"""The non-finite guard's host read (``bool(bad > 0)``): every traced step breaks here, since
a skipped step must leave all state as it was (NOTE [non-finite policy])."""

# The one place that lists why a step is not one graph: for each traced method, its graph-break
# sites (file, function) with the reason, and the break count torch._dynamo.explain reports for
# one step after the first two (a break inside a nested call counts once per traced frame).
BREAKS: dict[str, tuple[int, dict[tuple[str, str], str]]] = {
    "sgd": (
        2,
        {
            GUARD: "the non-finite guard",
            ("baselines.py", "_update"): "torch.optim's own step breaks around its body "
            "(torch._dynamo.graph_break in _use_grad_for_differentiable)",
        },
    ),
    "adam": (
        1,
        {
            GUARD: "the non-finite guard",
            ("baselines.py", "_update"): "torch.optim's own step (as for sgd)",
        },
    ),
    "adamw": (
        1,
        {
            GUARD: "the non-finite guard",
            ("baselines.py", "_update"): "torch.optim's own step (as for sgd)",
        },
    ),
    "mda": (1, {GUARD: "the non-finite guard"}),
    "ldog": (
        2,
        {
            GUARD: "the non-finite guard",
            ("_scalars.py", "entries"): "host mode: one .tolist() of the step's sums "
            "(scalar.entries in LDoG._update); capturable=True has none "
            "(tests/optim/test_capturable.py)",
        },
    ),
    "momo": (
        4,
        {
            GUARD: "the non-finite guard",
            ("_scalars.py", "entries"): "one .tolist() of the step's sums (momo.py _update, "
            "host mode; capturable=True has none: tests/optim/test_capturable.py)",
        },
    ),
    "sps": (
        4,
        {
            GUARD: "the non-finite guard",
            ("_scalars.py", "entries"): "host mode: the Polyak step size min(loss / |g|^2, "
            "cap) is decided on the host (one .tolist() of loss and |g|^2, scalar.entries in "
            "SPS._update); capturable=True has none (tests/optim/test_capturable.py)",
        },
    ),
    "taps": (
        5,
        {
            GUARD: "the non-finite guard",
            ("_scalars.py", "entries"): "host mode: one .tolist() of the step's scalars, with "
            "the range check of the example indices (scalar.entries in "
            "_MovingTargetPolyak._update); capturable=True has none "
            "(tests/optim/test_capturable.py)",
        },
    ),
    "motaps": (
        5,
        {
            GUARD: "the non-finite guard",
            ("_scalars.py", "entries"): "as for taps",
        },
    ),
}

# Every method whose step runs eager under torch.compile, with what tracing it gave (torch 2.13,
# CPU, the conformance problem, default torch.compile settings; frames compiled after steps
# 1, 2, 3, ...). The recompiles come from method-global Python floats in the param groups
# (NOTE [global scalars live in param_groups]): dynamo guards each on its value until it first
# changes. Keeping them as 0-d tensors (the capturable form) removes both the guards and the
# host reads; that is a change in each method module.
EAGER: dict[str, str] = {
    "clara-sgd": "host mode recompiles at step 3 (frames 3, 7, 8); host read float(reference) "
    "== 0; capturable=True traces (tests/optim/test_capturable.py)",
    "clara-adam": "host mode recompiles at step 3 (4, 8, 9); host read float(reference) == 0; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "alera": "dynamo fails mid-step ('Guard failed on the same frame it was created') on "
    "exp(min(x, 700)) of the Python-float learning-rate factor, state half written; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "salera": "as alera",
    "agadam": "as alera",
    "spalera": "recompiles at step 3 (5, 9, 13); host read .tolist() of the step's sums; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "clara-auto": "host mode recompiles at step 3 (5, 7, 9); host read float() of the reduced "
    "sums; capturable=True traces (tests/optim/test_capturable.py)",
    "dadapt-sgd": "recompiles at steps 3, 4, 5 (5, 10, 15, 20, 21): guards on k and d_hat; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "dadapt-adam": "recompiles at step 3 (5, 10, 15): guards on d_hat; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "dadapt-adagrad": "recompiles at step 5 (.., 13, 17): guards on d_hat; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "dog": "host mode recompiles at steps 3 and 4 (4, 8, 9, 10): guards on the running max "
    "distance; capturable=True traces (tests/optim/test_capturable.py)",
    "dowg": "host mode recompiles at steps 3 and 4 (4, 8, 9, 10); capturable=True traces "
    "(tests/optim/test_capturable.py)",
    "gradagrad": "host mode recompiles at step 3 (4, 8, 12); host read .tolist() of two sums; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "l4-mom": "host mode recompiles at step 3 (5, 9, 10); host read .tolist() of loss and "
    "<g, v>; capturable=True traces (tests/optim/test_capturable.py)",
    "l4-adam": "as l4-mom",
    "lossgrad": "needs the closure inside the step: a forward-only evaluation after moving",
    "mechanic": "recompiles at step 3 (6, 12, 18); the base's torch step breaks; host read of "
    "four dots",
    "momo-adam": "host mode recompiles at step 3 (5, 9, 10); capturable=True traces "
    "(tests/optim/test_capturable.py)",
    "prodigy": "recompiles at step 3 (12, 20, 31): guards on d, d_hat and k; "
    "capturable=True traces (tests/optim/test_capturable.py)",
    "schedulefree-sgd": "host mode recompiles at step 3 (2, 4, 5): guard on the averaging "
    "weight lr_max^2 / weight_sum; capturable=True traces (tests/optim/test_capturable.py)",
    "schedulefree-adamw": "as schedulefree-sgd",
    "wngrad": "host mode recompiles at step 3 (4, 8, 9); host read float(total) of the b "
    "update; capturable=True traces (tests/optim/test_capturable.py)",
    "wn-adam": "as wngrad",
}


def _optimizer(name: str, dtype: torch.dtype) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    params = make_params(dtype)
    return lo.create(name, params, **dict(lo.spec(name).sample_kwargs[0])), params


def _prepare(name: str, params: list[torch.Tensor], step: int) -> dict:
    return prepare_step(lo.spec(name), params, step)


def _assert_same(name: str, dtype: torch.dtype, eager, compiled, params_e, params_c) -> None:
    rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (1e-5, 1e-6)
    for a, b in zip(params_e, params_c, strict=True):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=name)
    stats_e, stats_c = eager.statistics(), compiled.statistics()
    for key, value in stats_e.items():
        assert stats_c[key] == pytest.approx(value, rel=rtol * 10, abs=atol), (name, key)


def test_every_method_is_declared_once() -> None:
    """A new method is traced (with its breaks in BREAKS) or untraced (with its reason)."""
    assert sorted(BREAKS) == sorted(TRACED)
    assert sorted(EAGER) == sorted(NOT_TRACED)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", TRACED)
def test_traced_step_matches_eager_and_stops_compiling(name: str, dtype: torch.dtype) -> None:
    torch._dynamo.reset()
    eager, params_e = _optimizer(name, dtype)
    compiled, params_c = _optimizer(name, dtype)
    counter = CompileCounter()
    step = torch.compile(compiled.step, backend=counter)
    frames = []
    for i in range(STEPS[dtype]):
        eager.step(**_prepare(name, params_e, i))
        step(**_prepare(name, params_c, i))
        frames.append(counter.frame_count)
        _assert_same(name, dtype, eager, compiled, params_e, params_c)
    assert frames[0] > 0, f"{name}: nothing was traced"
    # frames compiled after each step: the second step may add some (state now exists, the
    # global scalars that changed turn dynamic); none after it
    assert frames[1:] == [frames[1]] * (len(frames) - 1), f"{name}: frames per step {frames}"


def _break_sites(explained) -> dict[tuple[str, str], str]:
    sites = {}
    for reason in explained.break_reasons:
        ours = [f for f in reason.user_stack if f"{os.sep}lrlab{os.sep}" in f.filename]
        assert ours, reason.reason
        site = (os.path.basename(ours[-1].filename), ours[-1].name)
        sites[site] = reason.reason.splitlines()[0]
    return sites


@pytest.mark.parametrize("name", TRACED)
def test_graph_breaks_of_a_traced_step_are_the_declared_ones(name: str) -> None:
    optimizer, params = _optimizer(name, torch.float64)
    for i in range(2):
        optimizer.step(**_prepare(name, params, i))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(optimizer.step)(**_prepare(name, params, 2))
    count, declared = BREAKS[name]
    sites = _break_sites(explained)
    assert set(sites) == set(declared), f"{name}: graph breaks at {sites}"
    assert explained.graph_break_count <= count, f"{name}: {explained.graph_break_count} breaks"


GUARD_ONLY = [name for name in TRACED if set(BREAKS[name][1]) == {GUARD}]


@pytest.mark.parametrize("name", GUARD_ONLY)
def test_the_update_after_the_guard_is_one_graph(name: str) -> None:
    """The update of a method whose only break is the guard traces with ``fullgraph=True`` and
    gives the eager update's numbers."""
    eager, params_e = _optimizer(name, torch.float64)
    compiled, params_c = _optimizer(name, torch.float64)
    torch._dynamo.reset()
    update = torch.compile(compiled._update, backend=CompileCounter(), fullgraph=True)
    for i in range(3):
        eager.step(**_prepare(name, params_e, i))
        _prepare(name, params_c, i)
        context = StepContext(loss=None, closure=None, example_indices=None, params=tuple(params_c))
        with torch.no_grad():
            update(context)
        _assert_same(name, torch.float64, eager, compiled, params_e, params_c)


def test_inductor_compiles_a_traced_step() -> None:
    """The real backend once (inductor, float32; seconds): same numbers, no recompilation."""
    name = "mda"
    torch._dynamo.reset()
    counters.clear()
    eager, params_e = _optimizer(name, torch.float32)
    compiled, params_c = _optimizer(name, torch.float32)
    step = torch.compile(compiled.step)
    for i in range(3):
        eager.step(**_prepare(name, params_e, i))
        step(**_prepare(name, params_c, i))
        if i == 1:
            graphs = counters["stats"]["unique_graphs"]
    _assert_same(name, torch.float32, eager, compiled, params_e, params_c)
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs
