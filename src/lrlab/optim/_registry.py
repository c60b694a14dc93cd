"""The method registry: kebab-case names -> declared capabilities -> constructors.

A method module registers its class with :func:`register`. The capability flags (``needs_loss``,
``needs_closure``, ...) are read from the class (see :class:`~lrlab.optim._base.AdaptiveOptimizer`);
everything else is declared in the decorator. The conformance suite, the runner and the CLI branch
on these declarations only, never on a method's name.

Every registered class is an :class:`~lrlab.optim._base.AdaptiveOptimizer` (the baselines too), so
``create(name, ...)`` is typed as one and ``create("clara-adam", ...).statistics()`` type-checks.
Methods with ``has_eval_mode`` also follow :class:`EvalModeOptimizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from torch.optim.optimizer import ParamsT

from lrlab._registry import Registry, UnknownNameError
from lrlab.optim._base import AdaptiveOptimizer

__all__ = [
    "EvalModeOptimizer",
    "InvalidKwargs",
    "MethodSpec",
    "UnknownNameError",
    "create",
    "names",
    "register",
    "spec",
]

Confidence = Literal["high", "medium", "low"]


@runtime_checkable
class EvalModeOptimizer(Protocol):
    """An optimizer whose parameters differ between training and evaluation (Schedule-Free):
    call ``eval()`` before evaluating and ``train()`` before training again."""

    def train(self) -> None: ...

    def eval(self) -> None: ...


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class InvalidKwargs:
    """Constructor arguments that must be rejected, with the expected error."""

    kwargs: Mapping[str, Any]
    match: str
    """A regular expression the error message must match (``re.search``)."""
    error: type[Exception] = ValueError

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", _frozen(self.kwargs))


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodSpec:
    """The declared capabilities of one registered method."""

    name: str
    cls: type[AdaptiveOptimizer]
    family: str
    paper: str
    """Citation of the paper the update follows (title, venue or arXiv id)."""
    summary: str
    needs_loss: bool
    needs_closure: bool
    needs_example_index: bool
    wraps_base: bool
    has_eval_mode: bool
    has_global_statistics: bool
    """Keeps sums over all parameters; takes ``sharded=`` and reduces them across ranks."""
    traceable_step: bool
    """``torch.compile(optimizer.step)`` traces the step (otherwise it runs eager); see
    NOTE [torch.compile and the step] in ``_base.py``."""
    capturable: bool
    """The constructor takes ``capturable``: the step can keep its global scalars as 0-d
    tensors on the parameters' device, read nothing back to the host but the non-finite
    guard, and trace under ``torch.compile`` (NOTE [device scalars] in ``_scalars.py``)."""
    supports_foreach: bool
    """The constructor takes ``foreach`` and both paths compute the same numbers."""
    supports_fused: bool = False
    """The constructor takes ``fused``: native multi-tensor kernels on CPU float32/float64
    tensors (``lrlab.optim._native``) and, unless ``fused_compiled`` is False, compiled
    elementwise kernels (``lrlab.optim._fused``) for the other tensors."""
    fused_compiled: bool = True
    """With ``supports_fused``: the tensors the native kernels cannot take (CUDA, low precision)
    go to compiled kernels; False: to the default path."""
    confidence: Confidence = "high"
    """How sure we are that the update is the paper's (low: reconstructed from partial sources)."""
    oracle: str | None = None
    """The official package used as a numerical oracle, if any (``dadaptation.DAdaptSGD``)."""
    lr_argument: str | None = "lr"
    """The constructor argument a sweep's "initial learning rate" sets; None if there is none."""
    aliases: tuple[str, ...] = ()
    sample_kwargs: tuple[Mapping[str, Any], ...] = field(default_factory=lambda: ({},))
    """Valid constructor kwargs; the first is what the conformance suite uses by default."""
    invalid_kwargs: tuple[InvalidKwargs, ...] = ()
    group_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Settings a second param group overrides in the conformance test (may be empty)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_kwargs", tuple(_frozen(k) for k in self.sample_kwargs))
        object.__setattr__(self, "group_kwargs", _frozen(self.group_kwargs))
        if not self.sample_kwargs:
            raise ValueError(f"{self.name}: sample_kwargs needs at least one entry")


_METHODS: Registry[MethodSpec] = Registry("method", r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

OptimizerT = TypeVar("OptimizerT", bound=type[AdaptiveOptimizer])


def register(
    name: str,
    *,
    family: str,
    paper: str,
    summary: str,
    supports_foreach: bool = False,
    supports_fused: bool = False,
    fused_compiled: bool = True,
    confidence: Confidence = "high",
    oracle: str | None = None,
    lr_argument: str | None = "lr",
    aliases: Iterable[str] = (),
    sample_kwargs: Iterable[Mapping[str, Any]] = ({},),
    invalid_kwargs: Iterable[InvalidKwargs] = (),
    group_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[OptimizerT], OptimizerT]:
    """Class decorator that registers an optimizer under a kebab-case ``name``.

    The class name is registered as an alias too, so ``create("ClaraAdam", ...)`` works.
    """

    def decorate(cls: OptimizerT) -> OptimizerT:
        record = MethodSpec(
            name=name,
            cls=cls,
            family=family,
            paper=paper,
            summary=summary,
            needs_loss=bool(getattr(cls, "needs_loss", False)),
            needs_closure=bool(getattr(cls, "needs_closure", False)),
            needs_example_index=bool(getattr(cls, "needs_example_index", False)),
            wraps_base=bool(getattr(cls, "wraps_base", False)),
            has_eval_mode=bool(getattr(cls, "has_eval_mode", False)),
            has_global_statistics=bool(getattr(cls, "has_global_statistics", False)),
            traceable_step=bool(getattr(cls, "traceable_step", False)),
            capturable=getattr(cls, "capturable_scalars", None) is not None,
            supports_foreach=supports_foreach,
            supports_fused=supports_fused,
            fused_compiled=supports_fused and fused_compiled,
            confidence=confidence,
            oracle=oracle,
            lr_argument=lr_argument,
            aliases=tuple(dict.fromkeys((*aliases, cls.__name__))),
            sample_kwargs=tuple(sample_kwargs),
            invalid_kwargs=tuple(invalid_kwargs),
            group_kwargs=dict(group_kwargs or {}),
        )
        _METHODS.add(name, record, aliases=record.aliases)
        return cls

    return decorate


def names() -> list[str]:
    """Every registered method name (kebab-case), in registration order."""
    return _METHODS.names()


def spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a method, by registry name or class name."""
    return _METHODS.get(name)


def create(name: str, params: ParamsT, **kwargs: Any) -> AdaptiveOptimizer:
    """Construct the optimizer registered as ``name`` over ``params``.

    The result is a ``torch.optim.Optimizer`` with the lrlab contract (``statistics()``,
    ``effective_lr``); narrow it with ``isinstance`` for a method's own extras.
    """
    return spec(name).cls(params, **kwargs)
