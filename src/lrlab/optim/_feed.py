"""Hand an optimizer its loss and example indices through any wrapper: :func:`feed`.

Training frameworks call ``optimizer.step()`` themselves, often through a wrapper
(accelerate's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``, a ``GradScaler``),
and with no arguments. A method that needs the loss (MoMo, SPS, L4, ...) or the training-set
indices of the batch (TAPS, MOTAPS) cannot get them through ``step(loss=...)`` there. So the
values are handed to the lrlab optimizer *before* the step::

    loss = loss_fn(model(inputs), targets)
    accelerator.backward(loss)
    lo.feed(optimizer, loss=loss, example_indices=batch["index"])
    optimizer.step()          # the wrapper's step; the lrlab step underneath uses what was fed

NOTE [what was fed belongs to the next step]
* ``feed`` finds the lrlab optimizer by following ``.optimizer`` attributes (nested wrappers
  included) and stores the values on it. The next ``step()`` consumes them and forgets them,
  whether the step is taken or skipped as non-finite. ``zero_grad()`` does not clear them:
  frameworks zero the gradients at different points of a step (Lightning between forward and
  backward). A caller that skips a step without calling ``step()`` (a GradScaler skip) calls
  :func:`discard_fed` so the next step does not average in a stale loss.
* Several ``feed`` calls before one step are micro-batches of one step (gradient accumulation):
  the step's loss is the *mean* of the fed losses and its indices are their concatenation.
* Values the method does not need are ignored, so every method can be fed the same way.
* Explicit arguments win: ``step(loss=...)`` uses that loss and ``step(example_indices=...)``
  those indices. A fed loss wins over the value a closure returns (a framework's closure
  returns only the last micro-batch's loss, often divided by the accumulation count).
* ``forward_only=``: a function returning the loss of the same batch at the current
  parameters without building a graph. It serves a method that evaluates the loss again after
  moving (LOSSGRAD) where the framework passes no closure, or a closure that would re-run the
  framework's training hooks.
* Fed values are transient (never in ``state_dict()``): a checkpoint is taken between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["FedValues", "discard_fed", "feed", "find_lrlab_optimizer", "statistics"]

_FED_ATTRIBUTE = "_lrlab_fed"


@dataclass
class FedValues:
    """What was fed to an optimizer since its last step (see NOTE above)."""

    losses: list[Tensor] = field(default_factory=list)
    indices: list[Tensor] = field(default_factory=list)
    forward_only: Callable[[], Tensor | float] | None = None

    def loss(self) -> Tensor | None:
        """The mean of the fed losses (gradient accumulation), or None."""
        if not self.losses:
            return None
        if len(self.losses) == 1:
            return self.losses[0]
        dtype = torch.promote_types(self.losses[0].dtype, torch.float32)
        return torch.stack([loss.to(dtype) for loss in self.losses]).mean()

    def example_indices(self) -> Tensor | None:
        """The fed indices of every micro-batch, concatenated, or None."""
        if not self.indices:
            return None
        return self.indices[0] if len(self.indices) == 1 else torch.cat(self.indices)


def find_lrlab_optimizer(optimizer: Any) -> Any:
    """The lrlab optimizer inside ``optimizer``, following ``.optimizer`` attributes.

    Raises:
        TypeError: when no lrlab optimizer is found (the message names what was found).
    """
    from lrlab.optim._base import AdaptiveOptimizer

    current, seen = optimizer, set()
    while not isinstance(current, AdaptiveOptimizer):
        if id(current) in seen or not hasattr(current, "optimizer"):
            raise TypeError(
                f"expected an lrlab optimizer or a wrapper holding one as .optimizer "
                f"(accelerate, Lightning), got {type(optimizer).__name__}"
                + (f" wrapping {type(current).__name__}" if current is not optimizer else "")
            )
        seen.add(id(current))
        current = current.optimizer
    return current


def _as_tensor(value: Tensor | float, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"feed: {name} must be a tensor or a number, got {type(value).__name__}")
    return torch.as_tensor(float(value), dtype=torch.float64)


def feed(
    optimizer: Any,
    *,
    loss: Tensor | float | None = None,
    example_indices: Tensor | None = None,
    forward_only: Callable[[], Tensor | float] | None = None,
) -> None:
    """Give the next ``step()`` of the lrlab optimizer inside ``optimizer`` what it needs.

    Args:
        optimizer: an lrlab optimizer or a wrapper holding one as ``.optimizer``.
        loss: the mini-batch loss (a tensor, detached here, or a number). Fed several times
            before one step, the step uses the mean (gradient accumulation).
        example_indices: 1-d integer tensor, the training-set index of each example of the
            mini-batch; concatenated over several feeds.
        forward_only: ``() -> loss`` at the current parameters on the same batch, computed
            without a graph; replaces a closure for the forward-only check of LOSSGRAD.

    Raises:
        TypeError: no lrlab optimizer inside ``optimizer``, or a value of the wrong type.
        ValueError: ``loss`` with more than one element, ``example_indices`` not a 1-d integer
            tensor. Nothing is stored when an argument is rejected.
    """
    target = find_lrlab_optimizer(optimizer)
    loss_tensor = None if loss is None else _as_tensor(loss, "loss")
    if loss_tensor is not None and loss_tensor.numel() != 1:
        raise ValueError(
            f"feed: loss must be a single value, got a tensor of shape {tuple(loss_tensor.shape)}"
        )
    if example_indices is not None:
        if not isinstance(example_indices, Tensor):
            raise TypeError(
                "feed: example_indices must be a 1-d integer tensor, got "
                f"{type(example_indices).__name__}"
            )
        if (
            example_indices.dim() != 1
            or example_indices.is_floating_point()
            or (example_indices.is_complex() or example_indices.dtype == torch.bool)
        ):
            raise ValueError(
                "feed: example_indices must be a 1-d integer tensor, got "
                f"{example_indices.dim()}-d {example_indices.dtype}"
            )
    if forward_only is not None and not callable(forward_only):
        raise TypeError(f"feed: forward_only must be callable, got {type(forward_only).__name__}")
    fed = _fed_values(target)
    if loss_tensor is not None:
        fed.losses.append(loss_tensor.reshape(()))
    if example_indices is not None:
        fed.indices.append(example_indices.detach())
    if forward_only is not None:
        fed.forward_only = forward_only


def discard_fed(optimizer: Any) -> None:
    """Forget what was fed to the lrlab optimizer inside ``optimizer`` (a skipped step)."""
    target = find_lrlab_optimizer(optimizer)
    if hasattr(target, _FED_ATTRIBUTE):
        delattr(target, _FED_ATTRIBUTE)


def statistics(optimizer: Any) -> dict[str, float]:
    """``statistics()`` of the lrlab optimizer inside ``optimizer`` (through wrappers)."""
    return dict(find_lrlab_optimizer(optimizer).statistics())


def _fed_values(target: Any) -> FedValues:
    fed = getattr(target, _FED_ATTRIBUTE, None)
    if fed is None:
        fed = FedValues()
        # transient by design (NOTE above): not a param-group entry, never checkpointed
        setattr(target, _FED_ATTRIBUTE, fed)
    return fed


def peek_fed(target: Any) -> FedValues | None:
    """What was fed to ``target`` (an lrlab optimizer), without consuming it."""
    return getattr(target, _FED_ATTRIBUTE, None)


def take_fed(target: Any) -> FedValues | None:
    """What was fed to ``target`` (an lrlab optimizer); forgets it (one step consumes it)."""
    fed = getattr(target, _FED_ATTRIBUTE, None)
    if fed is not None:
        delattr(target, _FED_ATTRIBUTE)
    return fed


def _as_check_closure(forward_only: Callable[[], Tensor | float]) -> Callable[..., Tensor | float]:
    def closure(*, backward: bool = True) -> Tensor | float:
        if backward:
            raise RuntimeError("a fed forward_only function cannot compute gradients")
        return forward_only()

    return closure


def needs_no_closure(target: Any) -> bool:
    """Whether a fed ``forward_only`` stands in for the closure ``target.step`` needs."""
    fed = peek_fed(target)
    return fed is not None and fed.forward_only is not None


def apply_fed(
    target: Any,
    *,
    loss: Any,
    loss_is_explicit: bool,
    example_indices: Tensor | None,
    closure: Any,
) -> tuple[Any, Tensor | None, Any]:
    """The step's (loss, example_indices, check closure) once what was fed is taken into account.

    Called by ``AdaptiveOptimizer.step`` after the closure ran (a framework feeds from inside
    its closure); consumes what was fed (see NOTE [what was fed belongs to the next step]).
    """
    fed = take_fed(target)
    if fed is None:
        return loss, example_indices, closure
    if not loss_is_explicit and fed.losses:
        loss = fed.loss()
    if example_indices is None:
        example_indices = fed.example_indices()
    if fed.forward_only is not None:
        closure = _as_check_closure(fed.forward_only)
    return loss, example_indices, closure
