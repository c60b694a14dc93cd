"""The optimizer contract every lrlab method follows.

NOTE [the lrlab optimizer contract]
Every lrlab optimizer is a :class:`torch.optim.Optimizer` and adds:

* ``step(closure=None, *, loss=None, example_indices=None)``
    - ``closure`` is a standard torch closure (``zero_grad``; forward; ``backward``; return the
      loss). It is always accepted. When given, the optimizer calls it (with autograd enabled)
      and uses its gradients and its loss.
    - ``loss=`` lets a method that needs the loss value (MoMo, SPS, L4, ...) run in a script that
      calls ``loss.backward()`` itself: ``optimizer.step(loss=loss)``.
    - A method that needs an extra *forward-only* evaluation after moving (LOSSGRAD) needs the
      closure. To avoid a wasted backward pass, a closure may accept a keyword ``backward``:
      ``closure(backward=False)`` must return the loss without touching gradients (it is called
      under ``torch.no_grad()``). :func:`make_closure` builds such a closure. A plain closure
      still works: it is then called with autograd enabled and the gradients it writes are
      discarded (the caller's ``.grad`` are kept), at the cost of one backward pass.
    - ``example_indices=`` (a 1-d integer tensor) carries the training-set index of each example
      of the mini-batch, for methods that keep one scalar per training example.
* ``param_group["effective_lr"]`` (float) after every step: the scalar step size actually
  applied to that group in that step (0.0 for a skipped step).
* ``statistics() -> dict[str, float]``: ``effective_lr`` of the first group, the count of
  skipped non-finite steps, and the method's own internals. Optimizers never print or log.
* NOTE [non-finite policy]: a step whose loss (when known) or any gradient is NaN or infinite is
  skipped: parameters and every piece of optimizer state stay exactly as they were, every group's
  ``effective_lr`` is set to 0.0 and ``statistics()["nonfinite_steps"]`` grows by one. So a run
  that meets a bad batch continues exactly as if that batch had not been drawn.
* NOTE [global scalars live in param_groups]: method-global scalars (D-Adaptation's ``d``, the
  CLARA learning-rate factor, step counters) are stored as plain Python numbers in *every* param
  group and kept identical, so ``state_dict()`` / ``load_state_dict()`` checkpoint them and a
  resumed run continues bit for bit. Per-parameter tensors live in ``self.state[p]``. No run
  state lives in instance attributes.
* Bad hyperparameters raise :class:`ValueError` naming the argument, the value and the allowed
  range (see :mod:`lrlab.optim._validation`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _feed
from lrlab.optim._distributed import all_reduce_scalars, params_are_sharded
from lrlab.optim._foreach import group_by_device_and_dtype
from lrlab.optim._names import sync_paper_names, torch_name_from_alias
from lrlab.optim._native import NativeKernel, native_eligible

_NONFINITE_PROBE = NativeKernel("core", "nonfinite_probe", arrays=1, sums=1)

__all__ = [
    "AdaptiveOptimizer",
    "LossClosure",
    "StepContext",
    "evaluate_without_backward",
    "make_closure",
]

LossClosure = Callable[..., Tensor | float]
"""A torch closure; it may accept the keyword ``backward`` (see the contract above)."""


def _as_loss(value: Tensor | float | None) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value
    # a Python float is a double: keep all its digits (float64 methods compare losses exactly)
    return torch.as_tensor(float(value), dtype=torch.float64)


def _accepts_backward_flag(closure: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(closure).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return any(p.name == "backward" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def evaluate_without_backward(closure: LossClosure, params: Iterable[Tensor]) -> Tensor:
    """Evaluate the loss at the current parameters, leaving every ``.grad`` as it was.

    Uses ``closure(backward=False)`` under ``torch.no_grad()`` when the closure supports it.
    Otherwise calls the plain closure with autograd enabled and puts the caller's gradients back
    afterwards (cost: one backward pass).
    """
    if _accepts_backward_flag(closure):
        with torch.no_grad():
            loss = _as_loss(closure(backward=False))
        assert loss is not None  # a closure returning None is rejected by the caller
        return loss.detach()
    params = list(params)
    saved = [p.grad for p in params]
    # give the closure empty slots: its zero_grad/backward then cannot touch our gradients
    for p in params:
        p.grad = None
    try:
        with torch.enable_grad():
            loss = _as_loss(closure())
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad
    if loss is None:
        raise ValueError("the closure returned None; it must return the loss")
    return loss.detach()


def make_closure(
    optimizer: torch.optim.Optimizer, compute_loss: Callable[[], Tensor]
) -> Callable[..., Tensor]:
    """Build a closure that follows the lrlab contract from a function computing the loss.

    ``closure()`` zeroes the gradients, computes the loss and runs backward;
    ``closure(backward=False)`` only computes the loss, without building a graph.

    Example:
        >>> closure = make_closure(optimizer, lambda: loss_fn(model(inputs), targets))
        >>> loss = optimizer.step(closure)
    """

    def closure(*, backward: bool = True) -> Tensor:
        if not backward:
            with torch.no_grad():
                return compute_loss()
        optimizer.zero_grad()
        with torch.enable_grad():
            loss = compute_loss()
            loss.backward()
        return loss

    return closure


def _all_finite(tensors: list[Tensor]) -> Tensor:
    """0-d bool tensor: every entry of every tensor (one device, one dtype) is finite.

    Fast path: a plain sum is finite only if every entry is (an inf or NaN entry makes any sum
    inf or NaN), and ``sum`` is the fastest full reduction torch has (on CPU the max-abs norm
    is about 15x and ``isfinite(t).all()`` about 30x slower per element, measured in
    ``benchmarks/step_overhead.py``). A non-finite sum is either a bad entry or an overflow of
    the sum itself, so only then the exact (slow) check decides. No host synchronisation here.
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    fast = torch.isfinite(torch.stack([t.sum() for t in tensors])).all()
    # deciding whether the exact check is needed reads the flag on the host: one
    # synchronisation per (device, dtype) bucket, which the caller makes anyway
    if bool(fast):
        return fast
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


@dataclass(frozen=True, slots=True)
class StepContext:
    """What ``step()`` hands to a method's update: the loss and how to evaluate it again."""

    loss: Tensor | None
    closure: LossClosure | None
    example_indices: Tensor | None
    params: tuple[Tensor, ...]

    def forward_only(self) -> Tensor:
        """The loss at the current parameters on the same batch, without a backward pass."""
        if self.closure is None:
            raise ValueError("this method needs step(closure) to evaluate the loss again")
        return evaluate_without_backward(self.closure, self.params)


def _eager_under_compile(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` excluded from dynamo tracing: ``torch.compile(optimizer.step)`` runs it eager.

    NOTE [torch.compile and the step]: method-global scalars are Python numbers in the param
    groups (NOTE [global scalars live in param_groups]), so a traced step bakes them into the
    graph as constants: D-Adaptation's ``d`` froze at its step-3 value under
    ``torch.compile(optimizer.step)`` and every other method recompiled each step until
    dynamo's limit. Excluding the step from tracing keeps the results exact (one graph break
    per call of the compiled step; nothing changes for an uncompiled step); the compiled
    kernels of ``fused=True`` (``_fused.py``) are compiled on their own and still run. Speed
    comes from ``fused=True``, not from compiling the step.
    """

    @functools.wraps(step)
    def maybe_eager(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            # only reached while dynamo traces (torch._dynamo is imported by then; importing it
            # for every process that never compiles would cost a second at import time)
            return torch.compiler.disable(step, recursive=True)(*args, **kwargs)
        return step(*args, **kwargs)

    return maybe_eager


class AdaptiveOptimizer(torch.optim.Optimizer):
    """Base class of lrlab optimizers: closure plumbing, non-finite guard, statistics.

    Subclasses implement :meth:`_update` (one step, gradients already known to be finite) and
    optionally :meth:`_statistics`. They declare their needs with the class attributes below; the
    registry copies them into the method's :class:`~lrlab.optim.MethodSpec`.
    """

    #: the method needs the loss value (through the closure or ``loss=``)
    needs_loss: ClassVar[bool] = False
    #: the method needs a closure (for an extra forward-only evaluation)
    needs_closure: ClassVar[bool] = False
    #: the method needs ``example_indices=`` (one scalar per training example)
    needs_example_index: ClassVar[bool] = False
    #: the method has ``train()`` / ``eval()`` modes (Schedule-Free)
    has_eval_mode: ClassVar[bool] = False
    #: the method wraps a base optimizer (Mechanic)
    wraps_base: ClassVar[bool] = False
    #: the method keeps global statistics (sums over all parameters); such a method takes the
    #: constructor argument ``sharded`` and reduces them with :meth:`_reduce_global`
    has_global_statistics: ClassVar[bool] = False
    #: method-global scalars and their initial values
    #: (see NOTE [global scalars live in param_groups])
    global_defaults: ClassVar[Mapping[str, float | int | bool]] = {}

    #: torch's name -> the paper's name of a hyperparameter the update reads under the paper's
    #: name (``{"momentum": "beta"}``); see NOTE [torch names of hyperparameters]
    torch_names: ClassVar[Mapping[str, str]] = {}

    _base_global_defaults: ClassVar[Mapping[str, float | int]] = {"nonfinite_steps": 0}

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:  # a subclass's own step (Mechanic, Schedule-Free)
            cls.step = _eager_under_compile(cls.__dict__["step"])  # type: ignore[method-assign]

    # -- global scalars ---------------------------------------------------------------------

    def _all_global_defaults(self) -> dict[str, Any]:
        return {**self._base_global_defaults, **self.global_defaults}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it receives the current method-global scalars of the first group."""
        torch_name_from_alias(param_group, self.torch_names)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        template = self.param_groups[0] if len(self.param_groups) > 1 else None
        for key, default in self._all_global_defaults().items():
            group[key] = template[key] if template is not None else default
        group.setdefault("effective_lr", 0.0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # checkpoints written before a global scalar existed still load
        for group in self.param_groups:
            for key, default in self._all_global_defaults().items():
                group.setdefault(key, default)
            group.setdefault("effective_lr", 0.0)

    def _get_global(self, key: str) -> Any:
        return self.param_groups[0][key]

    def _set_global(self, key: str, value: Any) -> None:
        for group in self.param_groups:
            group[key] = value

    # -- the step ---------------------------------------------------------------------------

    def _params(self) -> tuple[Tensor, ...]:
        return tuple(p for group in self.param_groups for p in group["params"])

    def _statistics_are_partial(self) -> bool:
        """Whether this rank sees only part of the parameters (see NOTE in ``_distributed.py``).

        True when the optimizer was built with ``sharded=True`` (each rank owns a disjoint part
        of the model) or when a parameter is a sharded DTensor. Replicated (DDP) training is not
        partial: every rank already holds the global gradient.
        """
        return bool(self.param_groups[0].get("sharded", False)) or params_are_sharded(
            self._params()
        )

    def _reduce_global(self, values: list[Tensor]) -> list[Tensor]:
        """Sum this step's partial scalar increments over ranks, one collective, if partial.

        Every rank must call this every step (no early return before it), even with no
        gradients: pass zeros.
        """
        return all_reduce_scalars(values, partial=self._statistics_are_partial())

    def _has_nonfinite(self, loss: Tensor | None) -> bool:
        """One pass over the gradients and one host synchronisation per step.

        With sharded parameters the flag is reduced over ranks, so that every rank skips the
        same steps and no rank leaves the others waiting in a collective.
        """
        flags: list[Tensor] = []
        if loss is not None:
            flags.append(torch.isfinite(loss.detach()).all())
        grads = [p.grad for p in self._params() if p.grad is not None]
        if self._uses_native_kernels() and _NONFINITE_PROBE.available():
            # one multi-threaded pass over every CPU gradient, where torch needs a sum kernel
            # per tensor (a quarter of Adam(fused)'s step on 200 small tensors)
            native: dict[torch.dtype, list[tuple[Tensor]]] = {}
            others = []
            for grad in grads:
                if native_eligible(grad):
                    native.setdefault(grad.dtype, []).append((grad,))
                else:
                    others.append(grad)
            for rows in native.values():
                probe = _NONFINITE_PROBE(rows, ())
                assert probe is not None
                flags.append(torch.isfinite(probe).all())
            grads = others
        for (_, _), (bucket,) in group_by_device_and_dtype([grads]).items():
            dense = [g.coalesce().values() if g.is_sparse else g for g in bucket]
            flags.append(_all_finite(dense))
        device = flags[0].device if flags else None
        bad = (
            (~torch.stack([f.to(device) for f in flags]).all()).to(torch.float32)
            if flags
            else torch.zeros((), dtype=torch.float32)
        )
        if self.has_global_statistics and self._statistics_are_partial():
            (bad,) = self._reduce_global([bad])
        return bool(bad > 0)

    def _uses_native_kernels(self) -> bool:
        """Whether a group asked for the fused path, whose CPU kernels are native."""
        return any(
            group.get("fused", False) is True or group.get("mechanic_fused", False) is True
            for group in self.param_groups
        )

    @_eager_under_compile
    def step(  # type: ignore[override]
        self,
        closure: LossClosure | None = None,
        *,
        loss: Tensor | float | None = None,
        example_indices: Tensor | None = None,
    ) -> Tensor | None:
        """Perform one optimization step (see NOTE [the lrlab optimizer contract]).

        Args:
            closure: a standard torch closure that recomputes the loss and its gradients.
            loss: the loss at the current parameters, for methods that need it and scripts that
                call ``backward()`` themselves. Not allowed together with ``closure``.
            example_indices: training-set indices of the mini-batch examples, for methods that
                keep per-example state.

        Returns:
            The loss (from the closure or ``loss``), or None.
        """
        name = type(self).__name__
        if closure is not None and loss is not None:
            raise ValueError(f"{name}.step: pass either closure or loss, not both")
        loss_is_explicit = loss is not None
        if self.needs_closure and closure is None and not _feed.needs_no_closure(self):
            raise ValueError(
                f"{name}.step needs a closure: it evaluates the loss again after moving "
                "(see lrlab.optim.make_closure)"
            )
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if loss is None and self.needs_loss and _feed.peek_fed(self) is None:
                raise ValueError(f"{name}.step: the closure returned None; it must return the loss")
        # what lrlab.optim.feed handed over (NOTE in _feed.py); consumed by this step
        loss, example_indices, closure = _feed.apply_fed(
            self,
            loss=loss,
            loss_is_explicit=loss_is_explicit,
            example_indices=example_indices,
            closure=closure,
        )
        loss_tensor = _as_loss(loss)
        if self.needs_loss and loss_tensor is None:
            raise ValueError(f"{name}.step needs the loss: call step(closure) or step(loss=loss)")
        if self.needs_example_index and example_indices is None:
            raise ValueError(
                f"{name}.step needs example_indices= (the training-set index of each example)"
            )
        with torch.no_grad():
            if self._has_nonfinite(loss_tensor):
                self._set_global("nonfinite_steps", self._get_global("nonfinite_steps") + 1)
                for group in self.param_groups:
                    group["effective_lr"] = 0.0
                return loss  # type: ignore[return-value]
            context = StepContext(
                loss=loss_tensor,
                closure=closure,
                example_indices=example_indices,
                params=self._params(),
            )
            sync_paper_names(self.param_groups, self.torch_names)
            self._update(context)
        return loss  # type: ignore[return-value]

    def _update(self, context: StepContext) -> None:
        """One step of the method. Must set ``group["effective_lr"]`` for every group."""
        raise NotImplementedError

    # -- observation ------------------------------------------------------------------------

    def statistics(self) -> dict[str, float]:
        """Named floats describing the optimizer now: ``effective_lr`` of the first group,
        ``nonfinite_steps`` and the method's own internals."""
        stats = {
            "effective_lr": float(self.param_groups[0]["effective_lr"]),
            "nonfinite_steps": float(self._get_global("nonfinite_steps")),
        }
        stats.update({key: float(value) for key, value in self._statistics().items()})
        return stats

    def _statistics(self) -> dict[str, float]:
        return {}
