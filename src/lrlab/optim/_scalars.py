"""Arithmetic on a method's global scalars that reads the same on the host and on the device.

NOTE [device scalars]
A method's global scalars (D-Adaptation's ``d``, DoG's ``r̄``, Schedule-Free's averaging
weight, step counters) are Python numbers by default (NOTE [global scalars live in
param_groups] in ``_base.py``): on the CPU that is the fastest form, and a checkpoint holds plain
numbers. On a GPU a Python number that depends on a gradient costs a host synchronisation per
read (``.item()``, ``.tolist()``, ``if x > y``), and under ``torch.compile`` every such read is a
graph break and every Python float a guard that recompiles when its value changes. In
*capturable* mode (``capturable=True``; the default for CUDA parameters of a method that
supports it) those scalars are 0-d tensors on the parameters' device, as in torch's
``capturable`` optimizers, and the step never reads one back.

A method writes its scalar arithmetic once, with the functions below: given Python numbers
they compute exactly what the plain expressions did (so the default CPU path keeps its numbers
bit for bit), given a tensor they stay on its device without a branch (``torch.where`` instead of
``if``). Both branches of :func:`where` are evaluated, so each must be safe for every input
(:func:`ratio_or_zero` for a division whose denominator may be zero).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = [
    "Scalar",
    "add_scaled_",
    "checkpoint_types",
    "entries",
    "is_device",
    "maximum",
    "minimum",
    "ratio_or_zero",
    "sqrt",
    "where",
]

Scalar = float | int | Tensor
"""A global scalar: a Python number (host mode) or a 0-d tensor (capturable mode)."""


def is_device(*values: object) -> bool:
    """Whether any of ``values`` is a tensor (the arithmetic then stays on its device)."""
    return any(isinstance(value, Tensor) for value in values)


def _like(value: Scalar, *others: object) -> Tensor:
    """``value`` as a tensor on the device and in the dtype of the first tensor of ``others``
    (a Python float must not round through float32, torch's default dtype)."""
    if isinstance(value, Tensor):
        return value
    like = next(other for other in others if isinstance(other, Tensor))
    return torch.full((), value, dtype=like.dtype, device=like.device)


def maximum(a: Scalar, b: Scalar) -> Scalar:
    """``max(a, b)``; NaN propagates from a tensor as ``torch.maximum`` does."""
    if is_device(a, b):
        return torch.maximum(_like(a, b), _like(b, a))
    return max(a, b)


def minimum(a: Scalar, b: Scalar) -> Scalar:
    """``min(a, b)``."""
    if is_device(a, b):
        return torch.minimum(_like(a, b), _like(b, a))
    return min(a, b)


def where(condition: bool | Tensor, a: Scalar, b: Scalar) -> Scalar:
    """``a if condition else b``; on a tensor condition ``torch.where`` (both sides already
    computed)."""
    if not isinstance(condition, Tensor):
        return a if condition else b
    like = next((v for v in (a, b) if isinstance(v, Tensor)), None)
    if like is None:
        like = torch.zeros((), dtype=torch.float64, device=condition.device)
    return torch.where(condition, _like(a, like), _like(b, like))


def ratio_or_zero(numerator: Scalar, denominator: Scalar) -> Scalar:
    """``numerator / denominator``, and 0 where the denominator is 0."""
    if is_device(numerator, denominator):
        den = _like(denominator, numerator)
        nonzero = den != 0
        return torch.where(nonzero, numerator / torch.where(nonzero, den, 1.0), 0.0)
    return numerator / denominator if denominator != 0 else 0.0


def sqrt(value: Scalar) -> Scalar:
    """``math.sqrt`` on a number, ``torch.sqrt`` on a tensor (both correctly rounded)."""
    if isinstance(value, Tensor):
        return torch.sqrt(value)
    return math.sqrt(value)


def add_scaled_(tensor: Tensor, other: Tensor, alpha: Scalar) -> Tensor:
    """``tensor += alpha * other`` in place; a 0-d tensor ``alpha`` is multiplied in first
    (torch's ``alpha=`` would read it back to the host)."""
    if isinstance(alpha, Tensor):
        return tensor.add_(other * alpha)
    return tensor.add_(other, alpha=alpha)


def entries(values: Tensor, capturable: bool) -> list[Scalar]:
    """The entries of a 1-d tensor of a step's sums: Python floats (one host read for all of
    them) in host mode, 0-d tensors on its device in a capturable step."""
    if capturable:
        return list(values.unbind(0))
    return values.tolist()


def checkpoint_types(defaults: Mapping[str, float | int]) -> dict[str, type]:
    """A class's ``capturable_scalars`` from its run-state defaults: each scalar is written to
    a checkpoint as its default's type (an int counter stays an int)."""
    return {key: type(value) for key, value in defaults.items()}
