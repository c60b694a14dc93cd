"""Global statistics across ranks: two ``gloo`` processes on CPU against one process (issue 7).

For EVERY registered method whose ``spec.has_global_statistics`` is True (parametrised over the
registry, never over names), with its first ``sample_kwargs``, on a tiny float64 MLP:

1. DDP: each rank computes gradients on its half of every batch; the gradients (and the loss)
   are averaged with ``all_reduce``; the optimizer is built over all parameters with
   ``sharded=False``. After every step the parameters equal those of a single process on the
   whole batch (rtol 1e-6) and are the same on both ranks.
2. Sharded: each rank owns every other parameter tensor; its optimizer is built over its own
   tensors only with ``sharded=True``; after every step each owner broadcasts its tensors, so
   both ranks hold the whole model. Equal to the single process too.
3. Counting: ``torch.distributed``'s collectives are wrapped to count the calls made *inside*
   ``optimizer.step`` (the test's own gradient averaging uses the unwrapped functions). Under
   DDP there must be none (a reduction there would over-count replicated statistics by the
   world size); sharded, the same small number every step (the non-finite flag and the one
   packed reduction of the statistics).
4. A rank whose tensors have no gradient in some steps still enters the collective: the run
   neither hangs nor differs from the single process given the same missing gradients.

A negative control shows the comparison can fail: DoG under DDP built with ``sharded=True``
(which sums statistics that are already global) leaves the single-process trajectory.

Both ranks run every method in one spawn (a process start costs about a second); each rank
saves its trajectories to a file that the tests read. Collectives time out after
``COLLECTIVE_TIMEOUT_S`` and the spawn is killed after ``SPAWN_TIMEOUT_S``.
"""

from __future__ import annotations

import functools
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

import lrlab.optim as lo

WORLD = 2
STEPS = 10
BATCH = 16
IDLE_STEPS = frozenset({2, 3, 7})  # steps where the odd tensors (rank 1's) get no gradient
SHAPES = ((6, 4), (6,), (3, 6), (3,))  # a 4 -> 6 -> 3 tanh MLP
COLLECTIVE_TIMEOUT_S = 15
SPAWN_TIMEOUT_S = 50
RTOL = 1e-6

GLOBAL_METHODS = [name for name in lo.names() if lo.spec(name).has_global_statistics]
SCENARIOS = ("ddp", "sharded", "idle")
NEGATIVE_CONTROL = ("dog", {"reps_rel": 1e-2}, "ddp-sharded-flag")

_COLLECTIVES = (
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
)


# -- the problem (identical in the test process and in the workers) -------------------------


def _init_params() -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        (0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()
        for shape in SHAPES
    ]


def _batch(step: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    inputs = torch.randn(BATCH, SHAPES[0][1], generator=generator, dtype=torch.float64)
    targets = torch.randint(0, SHAPES[2][0], (BATCH,), generator=generator)
    return inputs, targets


def _loss(params: list[Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
    w1, b1, w2, b2 = params
    logits = torch.tanh(inputs @ w1.T + b1) @ w2.T + b2
    return torch.nn.functional.cross_entropy(logits, targets)


def _closure(
    params: list[Tensor],
    step: int,
    *,
    rows: slice,
    idle: bool,
    average: Callable[[Tensor], None] | None,
    gather: Callable[[], None] | None = None,
) -> Callable[..., Tensor]:
    """An lrlab closure: gradients of this rank's rows (``average`` makes them the mean over
    ranks); ``closure(backward=False)`` is the whole-batch loss, computed locally after
    ``gather`` has brought every tensor up to date (as a sharded forward pass does)."""
    inputs, targets = _batch(step)

    def closure(*, backward: bool = True) -> Tensor:
        if not backward:
            if gather is not None:
                gather()
            with torch.no_grad():
                return _loss(params, inputs, targets)
        for p in params:  # all tensors, not only the optimizer's: the others are averaged too
            p.grad = None
        with torch.enable_grad():
            loss = _loss(params, inputs[rows], targets[rows])
            loss.backward()
        if idle and step in IDLE_STEPS:
            for p in params[1::2]:
                p.grad = None
        loss = loss.detach().clone()
        if average is not None:
            for value in [loss, *(p.grad for p in params if p.grad is not None)]:
                average(value)
        return loss

    return closure


def _step_kwargs(spec: lo.MethodSpec, step: int) -> dict[str, Any]:
    if spec.needs_example_index:
        return {"example_indices": torch.arange(BATCH) + BATCH * step}
    return {}


def single_process_trajectory(name: str, kwargs: dict[str, Any], idle: bool) -> list[list[Tensor]]:
    """The reference: one process, whole batches."""
    spec = lo.spec(name)
    params = _init_params()
    optimizer = lo.create(name, params, **kwargs)
    trajectory = []
    for step in range(STEPS):
        closure = _closure(params, step, rows=slice(None), idle=idle, average=None)
        optimizer.step(closure, **_step_kwargs(spec, step))
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


# -- the workers ----------------------------------------------------------------------------


class _CollectiveCounter:
    """Wraps ``torch.distributed``'s collectives; counts calls while ``active``."""

    def __init__(self) -> None:
        self.original = {name: getattr(dist, name) for name in _COLLECTIVES if hasattr(dist, name)}
        self.active = False
        self.calls: list[str] = []

    def install(self) -> None:
        for name, function in self.original.items():
            setattr(dist, name, self._wrap(name, function))

    def uninstall(self) -> None:
        for name, function in self.original.items():
            setattr(dist, name, function)

    def _wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.calls.append(name)
            return function(*args, **kwargs)

        return counted

    def count_during(self, action: Callable[[], Any]) -> int:
        self.calls.clear()
        self.active = True
        try:
            action()
        finally:
            self.active = False
        return len(self.calls)


def _run_on_rank(
    rank: int, name: str, kwargs: dict[str, Any], scenario: str, counter: _CollectiveCounter
) -> dict[str, Any]:
    spec = lo.spec(name)
    all_reduce, broadcast = counter.original["all_reduce"], counter.original["broadcast"]

    def average(value: Tensor) -> None:
        all_reduce(value, op=dist.ReduceOp.SUM)
        value.div_(WORLD)

    def gather() -> None:  # the owner of each tensor sends it to the other rank
        for index, p in enumerate(params):
            broadcast(p.data, src=index % WORLD)

    params = _init_params()
    sharded = scenario in ("sharded", "idle")
    owned = [p for index, p in enumerate(params) if index % WORLD == rank] if sharded else params
    sharded_flag = sharded or scenario == "ddp-sharded-flag"
    optimizer = lo.create(name, owned, **{**kwargs, "sharded": sharded_flag})
    rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    trajectory, counts = [], []
    for step in range(STEPS):
        closure = _closure(
            params,
            step,
            rows=rows,
            idle=scenario == "idle",
            average=average,
            gather=gather if sharded else None,
        )
        step_once = functools.partial(optimizer.step, closure, **_step_kwargs(spec, step))
        counts.append(counter.count_during(step_once))
        if sharded:
            gather()
        trajectory.append([p.detach().clone() for p in params])
    return {"trajectory": trajectory, "counts": counts, "error": None}


def _worker(rank: int, port: int, out_dir: str, jobs: list[tuple[str, dict, str]]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    counter = _CollectiveCounter()
    counter.install()
    results: dict[str, Any] = {}
    try:
        for name, kwargs, scenario in jobs:
            try:
                results[f"{name}/{scenario}"] = _run_on_rank(rank, name, kwargs, scenario, counter)
            except Exception as error:  # recorded and reported by the test of that method
                message = "".join(traceback.format_exception_only(type(error), error))
                results[f"{name}/{scenario}"] = {"error": message.strip()[:2000]}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        counter.uninstall()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run every job on two spawned ranks; each rank's results, by ``"name/scenario"``."""
    out_dir = tmp_path_factory.mktemp("distributed")
    jobs = [
        (name, dict(lo.spec(name).sample_kwargs[0]), scenario)
        for name in GLOBAL_METHODS
        for scenario in SCENARIOS
    ]
    jobs.append(NEGATIVE_CONTROL)
    context = mp.spawn(_worker, args=(_free_port(), str(out_dir), jobs), nprocs=WORLD, join=False)
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=0.5):
        if time.monotonic() > deadline:
            for process in context.processes:  # only the two processes this fixture started
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the 2-rank run did not finish in {SPAWN_TIMEOUT_S} s (a rank hangs)")
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


# -- the tests ------------------------------------------------------------------------------


def _result(ranks: list[dict[str, Any]], name: str, scenario: str) -> list[dict[str, Any]]:
    results = [rank_results[f"{name}/{scenario}"] for rank_results in ranks]
    errors = [r["error"] for r in results if r.get("error")]
    assert not errors, f"{name} ({scenario}) raised on a rank: {errors[0]}"
    return results


def _assert_trajectories_match(
    name: str, scenario: str, ours: list[list[Tensor]], reference: list[list[Tensor]]
) -> None:
    start = _init_params()
    moved = 0.0
    for step, (mine, expected) in enumerate(zip(ours, reference, strict=True)):
        for index, (a, b, a0) in enumerate(zip(mine, expected, start, strict=True)):
            where = f"{name} ({scenario}): tensor {index} after step {step + 1}"
            torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-12, msg=where)
            # the displacement too, so that a method that barely moves cannot pass trivially
            displacement = (b - a0.detach()).abs().max()
            error = (a - b).abs().max()
            assert error <= RTOL * displacement + 1e-15, f"{where}: displacement error {error}"
            moved = max(moved, float(displacement))
    assert moved > 1e-9, f"{name} ({scenario}) did not move: the comparison would be empty"


def test_the_global_methods_are_all_covered() -> None:
    assert {"clara-sgd", "clara-adam", "dog", "dowg"} <= set(GLOBAL_METHODS)


@pytest.mark.parametrize("name", GLOBAL_METHODS)
def test_ddp_matches_single_process(ranks, name: str) -> None:
    kwargs = dict(lo.spec(name).sample_kwargs[0])
    reference = single_process_trajectory(name, kwargs, idle=False)
    rank0, rank1 = _result(ranks, name, "ddp")
    _assert_trajectories_match(name, "ddp", rank0["trajectory"], reference)
    for a, b in zip(rank0["trajectory"][-1], rank1["trajectory"][-1], strict=True):
        assert torch.equal(a, b), f"{name}: the DDP ranks disagree"


@pytest.mark.parametrize("name", GLOBAL_METHODS)
def test_ddp_step_makes_no_collective(ranks, name: str) -> None:
    """Replicated gradients already give global statistics: reducing them would over-count."""
    for rank, result in enumerate(_result(ranks, name, "ddp")):
        assert result["counts"] == [0] * STEPS, (
            f"{name}: optimizer.step made collectives under DDP (sharded=False) on rank {rank}: "
            f"{result['counts']} per step"
        )


@pytest.mark.parametrize("name", GLOBAL_METHODS)
def test_sharded_matches_single_process(ranks, name: str) -> None:
    kwargs = dict(lo.spec(name).sample_kwargs[0])
    reference = single_process_trajectory(name, kwargs, idle=False)
    for result in _result(ranks, name, "sharded"):
        _assert_trajectories_match(name, "sharded", result["trajectory"], reference)


@pytest.mark.parametrize("name", GLOBAL_METHODS)
def test_sharded_step_reduces_a_fixed_small_number_of_times(ranks, name: str) -> None:
    """One packed reduction of the statistics per step (plus the base class's non-finite flag);
    the same count on every rank and every step, or the ranks would pair mismatched calls."""
    counts = [result["counts"] for result in _result(ranks, name, "sharded")]
    per_step = set(counts[0]) | set(counts[1])
    assert len(per_step) == 1 and 1 <= per_step.pop() <= 2, (
        f"{name}: collectives per sharded step {counts}; expected the same 1 or 2 every step"
    )


@pytest.mark.parametrize("name", GLOBAL_METHODS)
def test_rank_without_gradients_still_enters_the_collective(ranks, name: str) -> None:
    kwargs = dict(lo.spec(name).sample_kwargs[0])
    reference = single_process_trajectory(name, kwargs, idle=True)
    results = _result(ranks, name, "idle")
    for result in results:
        _assert_trajectories_match(name, "idle", result["trajectory"], reference)
    assert results[0]["counts"] == results[1]["counts"], f"{name}: ranks made different calls"


def test_overcounting_is_detected(ranks) -> None:
    """Negative control: under DDP, ``sharded=True`` sums already-global statistics twice, and
    the trajectory leaves the single-process one by far more than the tolerance."""
    name, kwargs, scenario = NEGATIVE_CONTROL
    reference = single_process_trajectory(name, kwargs, idle=False)
    (result, _) = _result(ranks, name, scenario)
    assert all(count >= 1 for count in result["counts"])
    start = _init_params()
    final, expected = result["trajectory"][-1], reference[-1]
    relative = max(
        float((a - b).abs().max() / (b - a0.detach()).abs().max())
        for a, b, a0 in zip(final, expected, start, strict=True)
    )
    assert relative > 100 * RTOL
