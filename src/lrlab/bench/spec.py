"""The contracts of the benchmark lab. Read this first.

Data flows one way::

    problems (Problem) + lrlab.optim (method) + RunConfig  ->  runner.run  ->  RunRecord
        -> store (SQLite)  ->  metrics / report

* A :class:`Problem` is a registered, named recipe (``synthetic_rosenbrock``, ``iris_logreg``,
  ``digits_mlp``). ``problem.build(seed, **kwargs)`` returns a fresh :class:`ProblemInstance`:
  the model whose parameters are optimised, a deterministic stream of training batches, the
  training loss of a batch, and evaluation.
* A :class:`RunConfig` is everything that determines a run. Its :attr:`RunConfig.run_id` is the
  SHA-256 of its canonical JSON, never a timestamp, so a store can tell a finished run from a new
  one and a killed sweep resumes without losing or duplicating runs.
* A :class:`RunRecord` is what a run produced: per-step rows, evaluation rows, the final metrics,
  status, timing and library versions. Records are plain data (JSON-serialisable).

Determinism: the same config gives the same record, bit for bit, on CPU (timing fields aside):
every random choice draws from ``torch.Generator`` objects seeded from ``RunConfig.seed``; no
global RNG is used.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "METRIC_GOALS",
    "Batch",
    "Goal",
    "JSONScalar",
    "Problem",
    "ProblemInfo",
    "ProblemInstance",
    "RunConfig",
    "RunRecord",
    "RunStatus",
    "canonical_json",
    "metric_goals",
    "run_label",
    "variant_label",
]

JSONScalar = str | int | float | bool | None
"""The values allowed in config kwargs (nested lists/tuples of them are allowed too)."""
KwargValue = JSONScalar | tuple["KwargValue", ...] | list["KwargValue"]


class Goal(str, Enum):
    """Whether a metric is better when smaller or larger."""

    MINIMIZE = "min"
    MAXIMIZE = "max"


METRIC_GOALS: Mapping[str, Goal] = MappingProxyType(
    {
        "loss": Goal.MINIMIZE,
        "suboptimality": Goal.MINIMIZE,
        "distance_to_optimum": Goal.MINIMIZE,
        "distance_to_nearest_optimum": Goal.MINIMIZE,
        "train_loss": Goal.MINIMIZE,
        "test_loss": Goal.MINIMIZE,
        "train_accuracy": Goal.MAXIMIZE,
        "test_accuracy": Goal.MAXIMIZE,
        "train_bits_per_byte": Goal.MINIMIZE,
        "test_bits_per_byte": Goal.MINIMIZE,
        "final_loss": Goal.MINIMIZE,
    }
)
"""The direction of the evaluation metrics the shipped problems report, by exact name (a
problem declares any other in :attr:`ProblemInfo.metric_goals`). ``final_lr`` has none."""


class RunStatus(str, Enum):
    FINISHED = "finished"
    """All steps ran."""
    DIVERGED = "diverged"
    """The training loss became non-finite or exceeded the divergence threshold; the run stopped
    early (``RunRecord.diverged_at_step``). A diverged run is a result, not an error."""
    FAILED = "failed"
    """An exception escaped (bad config, bug); ``RunRecord.error`` holds the message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProblemInfo:
    """Static facts about a problem, declared at registration."""

    name: str
    """``dataset_model`` in snake case: ``synthetic_rosenbrock``, ``digits_mlp``."""
    kind: str
    """``synthetic``, ``logistic``, ``vision`` or ``language``."""
    summary: str
    metric: str
    """The headline final metric, a key of :meth:`ProblemInstance.evaluate`'s result
    (``distance_to_optimum``, ``test_accuracy``, ``train_loss``)."""
    goal: Goal
    default_steps: int
    default_batch_size: int | None
    """None: the gradient is deterministic or the batch is defined by the problem (synthetic)."""
    source: str = ""
    """Where the setup comes from (paper, spec section)."""
    metric_goals: Mapping[str, Goal] = field(default_factory=dict)
    """Directions of this problem's evaluation metrics beyond :data:`METRIC_GOALS` (and
    overriding it); the headline ``metric`` always has ``goal``."""


def metric_goals(info: ProblemInfo) -> dict[str, Goal]:
    """Every metric direction a problem declares: :data:`METRIC_GOALS`, then its own
    ``metric_goals``, then ``metric -> goal`` (the headline wins)."""
    return {**METRIC_GOALS, **info.metric_goals, info.metric: Goal(info.goal)}


@dataclass(frozen=True, slots=True)
class Batch:
    """One training mini-batch.

    ``indices`` are the training-set indices of the examples (for methods that keep per-example
    state, see ``MethodSpec.needs_example_index``). Synthetic problems carry their noise sample in
    ``inputs`` and have ``targets``/``indices`` None.
    """

    inputs: Tensor
    targets: Tensor | None = None
    indices: Tensor | None = None


class ProblemInstance(Protocol):
    """One built problem: a model and its data, for one seed."""

    @property
    def model(self) -> nn.Module:
        """Holds every trainable parameter (a synthetic problem wraps its point ``x`` in a
        module)."""
        ...

    def batches(self, generator: torch.Generator, batch_size: int | None) -> Iterator[Batch]:
        """An endless, deterministic stream of training batches drawn with ``generator``."""
        ...

    def loss(self, batch: Batch) -> Tensor:
        """The training loss (a 0-d tensor) of ``batch`` at the model's current parameters."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Evaluation metrics at the current parameters (no gradient): e.g. ``train_loss``,
        ``test_loss``, ``test_accuracy``, ``distance_to_optimum``, ``suboptimality``."""
        ...

    def distance_to_optimum(self) -> float | None:
        """Euclidean distance to the known optimum, or None where no optimum is known."""
        ...

    @property
    def num_train_examples(self) -> int | None:
        """Size of the training set (None for synthetic problems)."""
        ...


class Problem(Protocol):
    """A registered problem recipe."""

    @property
    def info(self) -> ProblemInfo:
        """The problem's static facts."""
        ...

    def build(self, seed: int, **kwargs: KwargValue) -> ProblemInstance:
        """A fresh instance; the same ``seed`` and ``kwargs`` give identical instances."""
        ...


def canonical_json(value: object) -> str:
    """JSON with sorted keys, no spaces, tuples as lists and floats in repr form.

    Non-finite floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so that the
    text is valid JSON and the hash is stable.
    """

    def normalise(item: object) -> object:
        if isinstance(item, float):
            if math.isnan(item):
                return "nan"
            if math.isinf(item):
                return "inf" if item > 0 else "-inf"
            return item
        if isinstance(item, Mapping):
            return {str(k): normalise(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [normalise(v) for v in item]
        if isinstance(item, Enum):
            return item.value
        return item

    return json.dumps(normalise(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Everything that determines one run. Two equal configs give bit-identical records."""

    problem: str
    method: str
    lr: float | None
    """The initial learning rate, passed to the method's ``spec.lr_argument`` (None: the method's
    own default)."""
    seed: int
    steps: int
    batch_size: int | None = None
    """None: the problem's ``default_batch_size``."""
    problem_kwargs: Mapping[str, KwargValue] = field(default_factory=dict)
    method_kwargs: Mapping[str, KwargValue] = field(default_factory=dict)
    schedule: str | None = None
    """An LR schedule from ``lrlab.schedules`` applied on top of the method, or None."""
    schedule_kwargs: Mapping[str, KwargValue] = field(default_factory=dict)
    eval_every: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    divergence_threshold: float = 1e6
    """Stop as diverged when the loss exceeds ``threshold * max(1, |initial loss|)``."""
    tags: Mapping[str, JSONScalar] = field(default_factory=dict)
    """Free labels (study name, pass number); part of the identity."""
    lr_argument: str | None = None
    """The constructor argument that receives ``lr`` in place of the method's
    ``spec.lr_argument`` (``"d0"`` for D-Adaptation's initial estimate, its ``lr`` left at its
    default). None: the method's own. Part of the identity only when set, so configs without it
    keep their ids."""

    def to_dict(self) -> dict[str, object]:
        extra: dict[str, object] = (
            {} if self.lr_argument is None else {"lr_argument": self.lr_argument}
        )
        return {
            "problem": self.problem,
            "method": self.method,
            "lr": self.lr,
            "seed": self.seed,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "problem_kwargs": dict(self.problem_kwargs),
            "method_kwargs": dict(self.method_kwargs),
            "schedule": self.schedule,
            "schedule_kwargs": dict(self.schedule_kwargs),
            "eval_every": self.eval_every,
            "divergence_threshold": self.divergence_threshold,
            "tags": dict(self.tags),
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RunConfig:
        return cls(**data)  # type: ignore[arg-type]

    @property
    def run_id(self) -> str:
        """SHA-256 of the canonical JSON of the config (hex, 64 characters)."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """What one run produced."""

    run_id: str
    config: RunConfig
    status: RunStatus
    steps: list[dict[str, float]]
    """One row per step: ``step``, ``loss``, ``effective_lr``, ``grad_l2``, ``grad_l1``,
    ``distance_to_optimum`` (where known) and the optimizer's ``statistics()`` under
    ``stat.<name>``."""
    evals: list[dict[str, float]]
    """One row per evaluation: ``step`` and the problem's evaluation metrics."""
    final: dict[str, float]
    """Metrics at the end (the last evaluation, plus ``final_loss``, ``final_lr``)."""
    diverged_at_step: int | None = None
    error: str | None = None
    wall_time_s: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    """``lrlab``, ``torch``, ``python`` versions that produced the record."""
    metric: str | None = None
    """The problem's headline metric (``ProblemInfo.metric``) when the run was made; None in
    records written before it was stored, or when the problem is unknown."""
    goals: dict[str, Goal] = field(default_factory=dict)
    """The direction (:class:`Goal`) of every metric of ``final`` and ``evals`` that has one,
    as the problem declared it (:func:`metric_goals`), so readers never guess it from a name.
    Empty in records written before it was stored."""

    def goal_of(self, metric: str) -> Goal | None:
        """The stored direction of ``metric``, or None when the record does not know it."""
        return self.goals.get(metric)


def _format_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return format(value, "g") if isinstance(value, float) else str(value)


def variant_label(method: str, kwargs: Mapping[str, object]) -> str:
    """``clara-sgd(d=0.02)``: the method name and its non-default kwargs, sorted (the ``label``
    a study gives a method entry with kwargs)."""
    if not kwargs:
        return method
    inner = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(kwargs.items()))
    return f"{method}({inner})"


def run_label(config: RunConfig) -> str:
    """The name a run's method goes by in tables and figures: its ``label`` tag (a variant
    ``clara-sgd(d=0.02)``, a preset's own label) or else the method name."""
    label = config.tags.get("label") if config.tags else None
    return str(label) if label else config.method
