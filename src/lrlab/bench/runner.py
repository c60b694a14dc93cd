"""``run(config) -> RunRecord``: one training run, read top to bottom.

The loop (one iteration per step ``t = 1..T``)::

    batch = next(batches)                      # drawn with a seeded torch.Generator
    loss  = optimizer.step(closure)            # closure: zero_grad, loss(batch), backward
                                               #   (grad norms are taken inside it, pre-update)
    schedule.step()                            # optional LR schedule from lrlab.schedules
    row   = {step, loss, effective_lr, grad_l2, grad_l1, distance_to_optimum, stat.*}
    stop if the loss is non-finite or above the divergence limit
    evaluate every ``eval_every`` steps

What one row means (row ``t`` describes step ``t``, which moves ``x_{t-1}`` to ``x_t``):

* ``loss``: the mini-batch loss at ``x_{t-1}``, the one the step used;
* ``grad_l2``, ``grad_l1``: norms of the mini-batch gradient at ``x_{t-1}``, taken right after
  the backward pass, before the optimizer moves (the schedule refinement of
  ``lrlab.schedules`` reads them: L2 for SGD-like methods, L1 for Adam-like ones);
* ``effective_lr`` and ``stat.<name>``: the optimizer's ``statistics()`` after step ``t``
  (``stat.effective_lr`` is not repeated);
* ``distance_to_optimum``: ``||x_t - x*||`` after the step, where the problem knows ``x*``, so the
  last row's distance is the final one (for a method with an eval mode, such as Schedule-Free,
  rows see the training iterate and evaluations the eval-mode point).

What a method declares (``lrlab.optim.spec(name)``) decides what it is fed: every method steps with
a closure from ``lrlab.optim.make_closure`` (so loss-based and closure-needing methods work);
``needs_example_index`` adds ``example_indices=batch.indices`` to ``step`` and, when the
constructor takes ``num_examples``, sets it to the problem's training-set size;
``has_eval_mode`` puts the optimizer in ``eval()`` around every evaluation. ``config.lr`` goes to
the constructor argument ``spec.lr_argument`` (or ``config.lr_argument`` where set).

Evaluation rows: at step 0 (the start point), every ``eval_every`` steps and after the last step.

Determinism: everything random draws from generators seeded from ``config.seed``; the run also
executes inside ``torch.random.fork_rng`` with the global generator seeded from the config, so
third-party code that uses the global RNG is deterministic too, and the caller's global RNG state is
left untouched. Bit-identical records need the same torch thread count (sweep workers use one).

The record also carries the problem's headline ``metric`` and the direction of every metric it
reports (``goals``: ``test_accuracy`` -> max, ``test_loss`` -> min), from the problem's
declaration (:func:`lrlab.bench.spec.metric_goals`).

A run never raises: an exception becomes a ``failed`` record carrying the message and traceback;
a non-finite loss, or one above ``divergence_threshold * max(1, |first loss|)``, or non-finite
parameters at the end, ends the run as ``diverged``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import platform
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

import lrlab
import lrlab.optim as lo
from lrlab.bench.spec import (
    Batch,
    Goal,
    ProblemInstance,
    RunConfig,
    RunRecord,
    RunStatus,
    metric_goals,
)

__all__ = [
    "derive_seed",
    "library_versions",
    "make_schedule",
    "run",
    "schedule_names",
]


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one ``purpose`` (``"batches"``, ``"global"``) of a run."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def library_versions() -> dict[str, str]:
    """The versions that produced a record."""
    return {
        "lrlab": lrlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _get_problem(name: str) -> Any:
    from lrlab.bench.problems import get_problem

    return get_problem(name)


@dataclass
class _Log:
    """What a run has produced so far (kept when an exception ends it)."""

    steps: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


def _gradient_norms(params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """L2 and L1 norms of all gradients together, as 0-d tensors (no host sync here)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        zero = torch.zeros((), dtype=torch.float64)
        return zero, zero
    l2 = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    l1 = torch.stack([g.abs().sum() for g in grads]).sum()
    return l2, l1


class _MeasuringClosure:
    """A closure from ``lo.make_closure`` that also measures the first gradient it computes.

    At its first backward call (inside ``optimizer.step``, before the update) it stores
    ``[loss, grad_l2, grad_l1]`` as one float64 tensor. It keeps the ``backward`` keyword, so
    methods can still evaluate the loss without a backward pass.
    """

    def __init__(self, closure: Callable[..., Tensor], params: list[Tensor]) -> None:
        self._closure = closure
        self._params = params
        self.measured: Tensor | None = None

    def __call__(self, *, backward: bool = True) -> Tensor:
        loss = self._closure(backward=backward)
        if backward and self.measured is None:
            l2, l1 = _gradient_norms(self._params)
            self.measured = torch.stack([loss.detach().double(), l2.double(), l1.double()])
        return loss


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def schedule_names() -> dict[str, type[torch.optim.lr_scheduler.LRScheduler]]:
    """The LR schedules of :mod:`lrlab.schedules` by kebab-case name (``linear-decay``)."""
    from lrlab import schedules

    found = {}
    for name in schedules.__all__:
        value = getattr(schedules, name)
        if isinstance(value, type) and issubclass(value, torch.optim.lr_scheduler.LRScheduler):
            found[_kebab(name)] = value
    return found


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, **kwargs: Any
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule ``name`` (see :func:`schedule_names`) on ``optimizer``; ``total_steps`` is
    passed to schedules that take it, unless ``kwargs`` sets it."""
    available = schedule_names()
    if name not in available:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(available)}")
    cls = available[name]
    if "total_steps" in inspect.signature(cls).parameters:
        kwargs.setdefault("total_steps", total_steps)
    return cls(optimizer, **kwargs)


def _create_optimizer(
    config: RunConfig, params: list[Tensor], instance: ProblemInstance
) -> lo.AdaptiveOptimizer:
    spec = lo.spec(config.method)
    kwargs = dict(config.method_kwargs)
    if config.lr is not None:
        lr_argument = config.lr_argument or spec.lr_argument
        if lr_argument is None:
            raise ValueError(f"method {config.method!r} has no learning-rate argument; use lr=None")
        if lr_argument in kwargs:
            raise ValueError(f"method_kwargs sets {lr_argument!r}, which the run's lr sets already")
        kwargs[lr_argument] = config.lr
    # a method with per-example state sizes its table from the training set
    if (
        spec.needs_example_index
        and "num_examples" in inspect.signature(spec.cls).parameters
        and "num_examples" not in kwargs
    ):
        if instance.num_train_examples is None:
            raise ValueError(
                f"method {config.method!r} keeps per-example state, but problem "
                f"{config.problem!r} has no training set"
            )
        kwargs["num_examples"] = instance.num_train_examples
    return lo.create(config.method, params, **kwargs)


def _evaluate(
    instance: ProblemInstance, optimizer: torch.optim.Optimizer, has_eval_mode: bool, step: int
) -> dict[str, float]:
    model = instance.model
    model.eval()
    modes = cast(lo.EvalModeOptimizer, optimizer)  # declared by spec.has_eval_mode
    if has_eval_mode:
        modes.eval()
    try:
        with torch.no_grad():
            metrics = instance.evaluate()
    finally:
        if has_eval_mode:
            modes.train()
        model.train()
    return {"step": step, **{key: float(value) for key, value in metrics.items()}}


def _train(config: RunConfig, log: _Log) -> tuple[RunStatus, int | None, dict[str, float]]:
    """The training loop; fills ``log`` and returns (status, diverged_at_step, final)."""
    problem = _get_problem(config.problem)
    instance = problem.build(config.seed, **dict(config.problem_kwargs))
    spec = lo.spec(config.method)
    params = [p for p in instance.model.parameters() if p.requires_grad]
    optimizer = _create_optimizer(config, params, instance)
    schedule = (
        make_schedule(config.schedule, optimizer, config.steps, **dict(config.schedule_kwargs))
        if config.schedule is not None
        else None
    )
    batch_size = (
        config.batch_size if config.batch_size is not None else problem.info.default_batch_size
    )
    batches = instance.batches(
        torch.Generator().manual_seed(derive_seed(config.seed, "batches")), batch_size
    )
    if spec.has_eval_mode:
        cast(lo.EvalModeOptimizer, optimizer).train()
    log.evals.append(_evaluate(instance, optimizer, spec.has_eval_mode, 0))

    limit = math.inf
    loss_value = math.nan
    stats: dict[str, float] = {}
    for step in range(1, config.steps + 1):
        batch: Batch = next(batches)
        closure = _MeasuringClosure(
            lo.make_closure(optimizer, functools.partial(instance.loss, batch)), params
        )
        step_kwargs: dict[str, Any] = {}
        if spec.needs_example_index:
            if batch.indices is None:
                raise ValueError(
                    f"method {config.method!r} needs example indices, but problem "
                    f"{config.problem!r} gives batches without them"
                )
            step_kwargs["example_indices"] = batch.indices
        optimizer.step(closure, **step_kwargs)
        if schedule is not None:
            schedule.step()
        if closure.measured is None:
            raise RuntimeError(f"method {config.method!r} did not call the closure in step()")
        # cost note: one host synchronisation per step, here (free on CPU)
        loss_value, grad_l2, grad_l1 = closure.measured.tolist()
        stats = optimizer.statistics()
        row: dict[str, float] = {
            "step": step,
            "loss": loss_value,
            "effective_lr": stats["effective_lr"],
            "grad_l2": grad_l2,
            "grad_l1": grad_l1,
        }
        distance = instance.distance_to_optimum()
        if distance is not None:
            row["distance_to_optimum"] = float(distance)
        row.update({f"stat.{k}": v for k, v in stats.items() if k != "effective_lr"})
        log.steps.append(row)

        if step == 1:
            limit = config.divergence_threshold * max(1.0, abs(loss_value))
        if not math.isfinite(loss_value) or loss_value > limit:
            final = {"final_loss": loss_value, "final_lr": stats["effective_lr"]}
            return RunStatus.DIVERGED, step, final
        if config.eval_every and step % config.eval_every == 0 and step != config.steps:
            log.evals.append(_evaluate(instance, optimizer, spec.has_eval_mode, step))

    final_lr = stats.get("effective_lr", math.nan)
    with torch.no_grad():
        finite = all(bool(torch.isfinite(p).all()) for p in params)
    if not finite:
        return RunStatus.DIVERGED, config.steps, {"final_loss": loss_value, "final_lr": final_lr}
    log.evals.append(_evaluate(instance, optimizer, spec.has_eval_mode, config.steps))
    last = {k: v for k, v in log.evals[-1].items() if k != "step"}
    return RunStatus.FINISHED, None, {**last, "final_loss": loss_value, "final_lr": final_lr}


def _directions(
    config: RunConfig, log: _Log, final: dict[str, float]
) -> tuple[str | None, dict[str, Goal]]:
    """The problem's headline metric and the direction of every metric the run reported (for
    the record: readers never guess a direction from a metric's name)."""
    try:
        info = _get_problem(config.problem).info
    except KeyError:  # an unknown problem is a failed run; it has no metrics either
        return None, {}
    known = metric_goals(info)
    names = dict.fromkeys([info.metric, *final, *(k for row in log.evals for k in row)])
    return info.metric, {name: known[name] for name in names if name in known}


def run(config: RunConfig) -> RunRecord:
    """Train once as ``config`` says and return what happened. Never raises for a bad run."""
    start = time.perf_counter()
    log = _Log()
    error = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "global"))
            status, diverged_at, final = _train(config, log)
    except Exception as exc:
        status, diverged_at, final = RunStatus.FAILED, None, {}
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        error += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    metric, goals = _directions(config, log, final)
    return RunRecord(
        run_id=config.run_id,
        config=config,
        status=status,
        steps=log.steps,
        evals=log.evals,
        final=final,
        diverged_at_step=diverged_at,
        error=error,
        wall_time_s=time.perf_counter() - start,
        versions=library_versions(),
        metric=metric,
        goals=goals,
    )
