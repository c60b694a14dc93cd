"""Hyperparameter checks shared by every lrlab optimizer.

Every check raises :class:`ValueError` whose message names the argument, the value received and the
allowed range, e.g. ``"c must be in (0, 1], got 1.5"``. NaN never passes a range check.

NOTE [one validation for hyperparameters]
A hyperparameter reaches an optimizer four ways: the constructor, ``add_param_group``, a param
group that overrides it (``[{"params": b, "lr": nan}]``) and ``load_state_dict``. Each optimizer
class therefore *declares* the check of every per-group setting once, as a mapping from the key to
a :data:`Rule` built from the helpers below (``hyperparameters`` in
:class:`~lrlab.optim.AdaptiveOptimizer`; subclasses add to their bases' declarations), and the base
class applies it at all four entry points with :func:`check_hyperparameters`. The rules call the
same functions as the constructors, so the messages are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial

__all__ = [
    "Rule",
    "betas",
    "boolean",
    "check_betas",
    "check_bool",
    "check_choice",
    "check_hyperparameters",
    "check_int",
    "check_nonnegative",
    "check_positive",
    "check_range",
    "in_range",
    "integer",
    "nonnegative",
    "one_of",
    "optional",
    "optional_bool",
    "positive",
    "real",
]

_BRACKETS = {"[]", "[)", "(]", "()"}


def _as_real(name: str, value: object) -> float:
    # bool is an int subclass: reject it so that `lr=True` is not read as 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import torch

            if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
                return float(value)
        except ImportError:  # pragma: no cover - torch is a hard dependency
            pass
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def _format_bound(bound: float) -> str:
    if math.isinf(bound):
        return "inf" if bound > 0 else "-inf"
    return f"{bound:g}"


def check_range(name: str, value: object, low: float, high: float, closed: str = "[]") -> float:
    """Check ``low <= value <= high`` with the bracket style ``closed`` and return ``float(value)``.

    ``closed`` is one of ``"[]"``, ``"[)"``, ``"(]"``, ``"()"``; an infinite bound is always open.
    """
    if closed not in _BRACKETS:
        raise ValueError(f"closed must be one of {sorted(_BRACKETS)}, got {closed!r}")
    x = _as_real(name, value)
    above = x >= low if closed[0] == "[" else x > low
    below = x <= high if closed[1] == "]" else x < high
    if math.isnan(x) or not (above and below):
        left = "(" if math.isinf(low) else closed[0]
        right = ")" if math.isinf(high) else closed[1]
        raise ValueError(
            f"{name} must be in {left}{_format_bound(low)}, {_format_bound(high)}{right}, "
            f"got {value!r}"
        )
    return x


def check_positive(name: str, value: object, *, allow_inf: bool = False) -> float:
    """Check ``0 < value < inf`` (``<= inf`` with ``allow_inf``)."""
    x = check_range(name, value, 0.0, math.inf, "()")
    if math.isinf(x) and not allow_inf:  # pragma: no cover - excluded by the open bracket
        raise ValueError(f"{name} must be finite, got {value!r}")
    return x


def check_nonnegative(name: str, value: object) -> float:
    """Check ``0 <= value < inf``."""
    return check_range(name, value, 0.0, math.inf, "[)")


def check_int(name: str, value: object, low: int, high: float = math.inf) -> int:
    """Check that ``value`` is an integer with ``low <= value <= high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {_format_bound(high)}], got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Check that ``value`` is a bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value: object, choices: Collection[object]) -> None:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def check_betas(
    name: str, betas: object, count: int = 2, *, allow_zero: bool = True
) -> tuple[float, ...]:
    """Check a tuple of ``count`` momentum coefficients, each in ``[0, 1)`` (``(0, 1)``)."""
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != count:
        raise ValueError(f"{name} must be a sequence of {count} numbers, got {betas!r}")
    closed = "[)" if allow_zero else "()"
    return tuple(
        check_range(f"{name}[{index}]", beta, 0.0, 1.0, closed) for index, beta in enumerate(betas)
    )


# -- declarative rules (NOTE [one validation for hyperparameters]) ----------------------------

Rule = Callable[[str, object], object]
"""``rule(name, value)`` raises :class:`ValueError` if ``value`` is not allowed for ``name``."""


def positive(*, allow_inf: bool = False) -> Rule:
    """``0 < value < inf``."""
    return partial(check_positive, allow_inf=allow_inf)


def nonnegative() -> Rule:
    """``0 <= value < inf``."""
    return check_nonnegative


def in_range(low: float, high: float, closed: str = "[]") -> Rule:
    """``low <= value <= high`` with the bracket style ``closed``."""
    return partial(check_range, low=low, high=high, closed=closed)


def real() -> Rule:
    """Any finite real number."""
    return in_range(-math.inf, math.inf, "()")


def integer(low: int, high: float = math.inf) -> Rule:
    """An integer in ``[low, high]``."""
    return partial(check_int, low=low, high=high)


def boolean() -> Rule:
    """``True`` or ``False`` (not merely truthy: ``"False"`` is rejected)."""
    return check_bool


def _check_optional_bool(name: str, value: object) -> object:
    if value is not None and not isinstance(value, bool):
        raise ValueError(
            f"{name} must be True, False or None, got {value!r} ({type(value).__name__})"
        )
    return value


def optional_bool() -> Rule:
    """``True``, ``False`` or ``None`` (the ``foreach`` / ``fused`` switches)."""
    return _check_optional_bool


def one_of(*choices: object) -> Rule:
    """One of ``choices``."""
    return partial(check_choice, choices=choices)


def betas(count: int = 2, *, allow_zero: bool = True) -> Rule:
    """A sequence of ``count`` coefficients, each in ``[0, 1)`` (``(0, 1)``)."""
    return partial(check_betas, count=count, allow_zero=allow_zero)


def optional(rule: Rule) -> Rule:
    """``None`` or a value that passes ``rule``."""

    def check(name: str, value: object) -> object:
        return None if value is None else rule(name, value)

    return check


def check_hyperparameters(group: Mapping[str, object], rules: Mapping[str, Rule]) -> None:
    """Apply ``rules`` to the entries of ``group`` that have one (a missing key is not checked:
    it takes the optimizer's default, which was checked at construction)."""
    for key, rule in rules.items():
        if key in group:
            rule(key, group[key])
