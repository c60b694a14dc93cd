"""Mechanic: a learning-rate tuner that learns the scale of any base optimizer's updates.

Paper: Cutkosky, Defazio & Mehta, "Mechanic: A Learning Rate Tuner", NeurIPS 2023,
arXiv:2306.00144. Method page: ``docs/methods/learning-rate-free.md`` (the released PyTorch
package ``mechanic-pytorch==0.0.1`` is the numerical oracle).

The base optimizer proposes updates; Mechanic keeps their running sum :math:`\\Delta` and plays
``x = x_ref + s * Delta``, where the scalar ``s`` is learned online by a parameter-free
coin-betting tuner run for several horizons ``betas`` and summed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _validation as check
from lrlab.optim._base import (
    SCALAR_STATE,
    AdaptiveOptimizer,
    LossClosure,
    StateEntry,
    StepContext,
    check_state_dict,
)
from lrlab.optim._executor import Pass, Plan, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._registry import InvalidKwargs, register, spec
from lrlab.optim._validation import check_bool, check_nonnegative, check_positive, check_range

__all__ = ["Mechanic"]

BaseOptimizer = str | type[torch.optim.Optimizer] | torch.optim.Optimizer
"""What ``base=`` accepts: a registered lrlab name, an optimizer class, or an instance."""

DEFAULT_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)

#: the initial value of the tuner's running maximum ``m`` (hard-coded in the official package; it,
#: not ``s_init`` alone, sets the first scale: ``sum(s) = 1e-6 * mean(betas) * s_init / 1e-8``)
INITIAL_MAX_PRODUCT = 1e-6

# Mechanic's own settings are global (one tuner for all parameters). They live in every param
# group next to the base optimizer's settings, so they carry a prefix: AdamW has "betas" and "eps"
# of its own. See NOTE [Mechanic param groups].
_SETTINGS = (
    "mechanic_s_decay",
    "mechanic_betas",
    "mechanic_s_init",
    "mechanic_eps",
    "mechanic_store_delta",
    "mechanic_fused",
)

# NOTE [Mechanic param groups]
# The wrapper and the base optimizer share ONE list of param-group dicts: group i of the wrapper
# *is* group i of the base. A per-group setting the user gives (``{"params": ..., "lr": 0.01}``)
# goes to the base; LR schedulers that edit ``optimizer.param_groups[i]["lr"]`` reach the base;
# ``state_dict()`` saves every key once. Mechanic adds its prefixed settings and its global tuner
# state (identical in every group) to the same dicts. Per-parameter state is kept apart: Mechanic's
# own (``ref``, ``delta``) in ``self.state``, the base's in ``self.base.state``; ``state_dict()``
# stores the latter under the extra key ``"base_state"`` (keyed by parameter index, like torch).


class _FirstCallReturnsLoss:
    """A closure for a torch base optimizer that must not run the user's closure a second time.

    The wrapper has already evaluated the closure (loss and gradients) once; the base's first call
    gets that loss back, later calls (e.g. L-BFGS line searches) evaluate the closure again.
    """

    def __init__(self, closure: LossClosure, loss: Tensor | None) -> None:
        self.closure = closure
        self.loss = loss
        self.calls = 0

    # Any: the loss as the closure returns it (torch types a closure as returning a float)
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 1 and not args and not kwargs:
            return self.loss
        return self.closure(*args, **kwargs)


def _resolve_base_class(base: object) -> type[torch.optim.Optimizer]:
    cls: type[torch.optim.Optimizer]
    if isinstance(base, str):
        cls = spec(base).cls  # raises UnknownNameError (a KeyError) naming the closest names
    elif isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
        cls = base
    elif isinstance(base, torch.optim.Optimizer):
        cls = type(base)
    else:
        raise ValueError(
            "base must be a registered method name, a torch.optim.Optimizer subclass or "
            f"instance, got {base!r} ({type(base).__name__})"
        )
    if getattr(cls, "wraps_base", False):
        raise ValueError(f"base must not itself wrap an optimizer, got {cls.__name__}")
    if getattr(cls, "has_eval_mode", False):
        raise ValueError(
            f"base must not have train()/eval() modes (Schedule-Free), got {cls.__name__}: "
            "Mechanic would not switch them"
        )
    return cls


# torch's elementwise optimizers: every state tensor is shaped like its parameter but "step"
_ELEMENTWISE_TORCH = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adagrad,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
)


def _foreign_layout(base: torch.optim.Optimizer) -> Mapping[str, StateEntry] | None:
    """The state layout of a torch optimizer used as the base; None where it is not known
    (only the structure of its checkpoint is checked then)."""
    return {"step": SCALAR_STATE} if type(base) in _ELEMENTWISE_TORCH else None


def _state_dtype(p: Tensor) -> torch.dtype:
    """float32 for ``ref`` and ``delta`` of low-precision parameters, else the parameter's dtype."""
    if p.is_floating_point() and torch.finfo(p.dtype).bits < 32:
        return torch.float32
    return p.dtype


def _check_betas(betas: object, name: str = "betas") -> tuple[float, ...]:
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {betas!r}")
    return tuple(check_range(f"{name}[{i}]", b, 0.0, 1.0, "[]") for i, b in enumerate(betas))


@register(
    "mechanic",
    family="learning-rate-free",
    paper="Cutkosky, Defazio & Mehta, Mechanic: A Learning Rate Tuner, NeurIPS 2023 "
    "(arXiv:2306.00144)",
    summary="wraps any base optimizer and learns the scale of its updates online",
    oracle="mechanic_pytorch.mechanize",
    supports_fused=True,
    sample_kwargs=(
        # the README's SGD lr=1 and optax's s_init=1e-6: visible moves within a few steps even for
        # bfloat16 parameters (with s_init=1e-8 the first scale, ~1e-6, is below bf16 resolution)
        {"base": "sgd", "base_kwargs": {"lr": 1.0}, "s_init": 1e-6},
        {"base": "adamw", "base_kwargs": {"lr": 0.01, "weight_decay": 0.1}},
        {"base": "sgd", "base_kwargs": {"lr": 0.1, "momentum": 0.9}, "store_delta": True},
        {"base": torch.optim.Adam, "base_kwargs": {"lr": 0.01}, "betas": (0.9, 0.99), "s_decay": 0},
    ),
    invalid_kwargs=(
        InvalidKwargs({"base": "not-a-method"}, r"unknown method 'not-a-method'", KeyError),
        InvalidKwargs({"base": 3}, r"base must be a registered method name.*got 3"),
        InvalidKwargs({"base": "mechanic"}, r"base must not itself wrap an optimizer"),
        InvalidKwargs({"base_kwargs": {"lr": -1.0}}, r"lr must be in \(0, inf\), got -1\.0"),
        InvalidKwargs({"lr": 0.2}, r"lr is given twice: lr=0\.2 and base_kwargs\['lr'\]"),
        InvalidKwargs({"base_kwargs": [1]}, r"base_kwargs must be a mapping"),
        InvalidKwargs({"betas": ()}, r"betas must be a non-empty sequence"),
        InvalidKwargs({"betas": (0.9, 1.5)}, r"betas\[1\] must be in \[0, 1\], got 1\.5"),
        InvalidKwargs({"s_decay": -0.1}, r"s_decay must be in \[0, inf\), got -0\.1"),
        InvalidKwargs({"s_init": 0.0}, r"s_init must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"store_delta": 1}, r"store_delta must be True or False, got 1"),
    ),
    group_kwargs={"lr": 0.01},
)
class Mechanic(AdaptiveOptimizer):
    r"""Mechanic: learn the scale ``s`` of a base optimizer's updates online.

    .. math::
        \begin{aligned}
        &\textbf{input: } \text{base optimizer}, \ \beta_1..\beta_n, \ \lambda \text{ (s\_decay)},
            \ s_{init}, \ \epsilon;\quad
            s = v = r = 0,\ m = 10^{-6} \in \mathbb{R}^n\\
        &\textbf{for } t = 1, 2, \dots:\\
        &\quad S = \textstyle\sum_j s_j;\quad
            \Delta_i = \texttt{delta}_i \text{ if store\_delta else }
            (x_i - x_{ref,i}) / (S+\epsilon)\\
        &\quad u = \text{base step from } x \text{ with gradient } g
            \quad (\text{so } x^+ = x + u)\\
        &\quad h = \textstyle\sum_i \big\langle \Delta_i,\ g_i
            + \lambda S \frac{\lVert g \rVert}{\lVert x^+ \rVert + \epsilon} x^+_i \big\rangle,
            \qquad \Delta_i \leftarrow \Delta_i + u_i\\
        &\quad m \leftarrow \max(\beta m, |h|),\quad v \leftarrow \beta^2 v + h^2,\quad
            r \leftarrow \max(0,\ \beta r - s h)\\
        &\quad s \leftarrow \frac{s_{init}\, m / n + r}{\sqrt{v} + \epsilon}
            \quad (\text{elementwise over the } n \text{ betas})\\
        &\quad x_i \leftarrow x_{ref,i} + \max\big(\textstyle\sum_j s_j,\ 0\big)\, \Delta_i
        \end{aligned}

    ``x_ref`` is the value of each parameter before its first step. Sums over ``i`` and the norms
    run over every parameter with a gradient in this step, in all groups. The effective step size
    is the base's step size times ``sum(s)``.

    Symbols: :math:`\lambda` ``s_decay``; :math:`\beta` ``betas``; :math:`x_{ref}`
    ``state[p]["ref"]``; :math:`\Delta` ``state[p]["delta"]`` (only with ``store_delta``);
    :math:`s, v, r, m` the group keys ``mechanic_s``, ``mechanic_v``, ``mechanic_r``,
    ``mechanic_m`` (lists over the betas, identical in every group); :math:`h`
    ``statistics()["inner_product"]``; :math:`\sum_j s_j` ``statistics()["s"]``.

    Param groups (NOTE [Mechanic param groups] in the source): the wrapper's param groups *are*
    the base optimizer's (one shared list of dicts). Per-group settings, LR schedulers and
    ``param_groups[i]["lr"]`` therefore act on the base. Mechanic's own settings are global and
    stored with a ``mechanic_`` prefix; they cannot be set per group.

    Args:
        params: parameters or param groups (per-group keys are the base optimizer's settings).
            With an optimizer instance as ``base``: the same parameters as the instance's, whose
            grouping is then used.
        base: the base optimizer: a registered lrlab name (``"sgd"``, ``"adamw"``, ...), a
            ``torch.optim.Optimizer`` subclass, or an instance built over the same parameters.
            Not a wrapper and not a method with train/eval modes. Default ``"sgd"``.
        base_kwargs: constructor arguments of the base (not with an instance).
        lr: shorthand for ``base_kwargs["lr"]`` (what a sweep's initial learning rate sets).
        s_decay: :math:`\lambda`, Mechanic's weight-decay analog, in [0, inf). Default 0.01.
        betas: the tuner horizons, each in [0, 1], at least one.
            Default (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999).
        s_init: :math:`s_{init}`, in (0, inf). Default 1e-8.
        eps: :math:`\epsilon`, in (0, inf). Default 1e-8.
        store_delta: keep :math:`\Delta` as state (one more copy of the parameters, exact)
            instead of recomputing it as :math:`(x - x_{ref}) / (S + \epsilon)`. Default False.
            Always on for low-precision parameters (see the notes).
        sharded: each rank owns a disjoint part of the parameters, so the four inner products
            behind :math:`h` are partial sums, reduced over ranks with one collective per step.
            Forwarded to a base that takes ``sharded`` (unless ``base_kwargs`` sets it).
        fused: True runs Mechanic's own per-tensor work as three passes (before the base step:
            keep x, form Delta, two inner products; after it: two inner products and the Delta
            update; then the final move) instead of about a dozen eager kernels; the base keeps
            its own path (pass ``base_kwargs={"fused": True}`` to a base that has one). On CPU
            float32/float64 tensors these are native multi-tensor kernels (one call per pass for
            all tensors of a dtype; see :mod:`lrlab.optim._native`), elsewhere the compiled
            kernels (tensors under 128k elements, non-contiguous, empty or low-precision ones
            stay eager; see :mod:`lrlab.optim._fused`). Without ``store_delta`` both recompute
            Delta from x and ``ref`` instead of writing it out: one temporary copy of the
            parameters per step (x before the base step) instead of two; on the native path
            that copy is one buffer kept from step to step.
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.

    Example:
        >>> optimizer = Mechanic(model.parameters(), base="adamw", base_kwargs={"lr": 1e-3})
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
        >>> optimizer.statistics()["s"]  # the learned scale

    .. note::
        Deviations from ``mechanic-pytorch`` 0.0.1. Otherwise the numbers are the package's up to
        rounding: <= 6e-14 relative over 60 float64 steps on the oracle problems. Rounding
        differences are not always harmless: on a deterministic quadratic, once ``s`` has grown to
        the edge of stability the tuner amplifies them ~10x per step, and the package against
        itself with a one-ulp perturbation drifts the same way (a test pins this).

        * **Resumable state.** The official package keeps its state in ``state["_mechanic"]``
          keyed by tensor objects, so ``load_state_dict`` into a new optimizer fails with a
          ``KeyError`` (its issues #2 and #4). Here the per-parameter state is keyed by index like
          any torch optimizer, the tuner scalars live in the param groups, the base's state is
          saved under ``"base_state"``, and a resumed run continues bit for bit.
        * **Tuner precision.** The official tuner state is created with torch's *default* dtype
          (float32 unless changed), whatever the parameters' dtype; here it is kept in Python
          floats (float64). The oracle test therefore runs the package with float64 as default.
        * The inner product :math:`h` is assembled from four sums (``<Delta, g>``, ``||g||^2``,
          ``<Delta, x+>``, ``||x+||^2``) rather than one dot product with a decay-augmented
          gradient: the same value, but it lets sharded runs reduce scalar increments only.
        * Gradients are read before the base step instead of being cloned (so no copy of the
          gradients); parameters without a gradient get their reference point when they first
          have one (the package takes it for every parameter at the first step; the values are
          the same because the base does not move such parameters).
        * **Low-precision parameters** (bfloat16, float16): ``ref`` and ``delta`` are kept in
          float32 and ``delta`` is always stored. Recomputing :math:`\Delta = (x - x_{ref}) /
          (S + \epsilon)` from a bf16 :math:`x` divides its rounding error by the tiny initial
          :math:`S`; in the package the first moves round away entirely, :math:`\Delta` stays 0,
          :math:`h = 0` and ``s`` never grows. The float32 copies survive ``load_state_dict``
          (which would otherwise cast them to the parameter's dtype).
        * No logging (``log_func``, ``log_every``); read ``statistics()`` instead.
        * **Closures.** The package evaluates the closure with autograd disabled, so
          ``step(closure)`` fails in ``backward()`` (and leaves grad mode off). Here the wrapper
          evaluates the closure once, with autograd, and skips a non-finite step before the base
          sees it; an lrlab base is then driven through its update with that loss and closure (a
          LOSSGRAD base may still make its forward-only evaluation); a torch base receives a
          closure whose first call returns the loss already computed (L-BFGS evaluates no more
          often than alone).
        * ``base`` may also be a registered name or an optimizer instance, and ``lr=`` is a
          shorthand for the base's learning rate; the package takes a class only.

    .. note::
        The paper's experiments used the JAX version (``optax.contrib.mechanize``), which differs
        in details (``s`` starts at ``s_init``, ``h`` is clipped, the reward is not clamped, decay
        uses the parameters before the base step, ``s_init`` = 1e-6): spec 3.2 (e). We follow the
        PyTorch package.
    """

    wraps_base: ClassVar[bool] = True
    has_global_statistics: ClassVar[bool] = True
    #: the groups' "fused" is the base's (torch's Adam, say); Mechanic's own is apart
    fused_setting: ClassVar[str] = "mechanic_fused"
    global_defaults: ClassVar[Mapping[str, float | int | bool]] = {
        "mechanic_steps": 0,
        "mechanic_h": 0.0,
    }

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "mechanic_s_decay": check.nonnegative(),
        "mechanic_betas": lambda name, value: _check_betas(value, name),
        "mechanic_s_init": check.positive(),
        "mechanic_eps": check.positive(),
        "mechanic_store_delta": check.boolean(),
        "mechanic_fused": check.optional_bool(),
    }

    def __init__(
        self,
        params: ParamsT,
        base: BaseOptimizer = "sgd",
        base_kwargs: Mapping[str, Any] | None = None,
        *,
        lr: float | None = None,
        s_decay: float = 0.01,
        betas: Sequence[float] = DEFAULT_BETAS,
        s_init: float = 1e-8,
        eps: float = 1e-8,
        store_delta: bool = False,
        sharded: bool = False,
        fused: bool | None = None,
    ) -> None:
        base_class = _resolve_base_class(base)
        if base_kwargs is not None and not isinstance(base_kwargs, Mapping):
            raise ValueError(f"base_kwargs must be a mapping or None, got {base_kwargs!r}")
        kwargs = dict(base_kwargs or {})
        if lr is not None:
            if "lr" in kwargs:
                raise ValueError(f"lr is given twice: lr={lr!r} and base_kwargs['lr']")
            kwargs["lr"] = lr
        betas = _check_betas(betas)
        check_nonnegative("s_decay", s_decay)
        check_positive("s_init", s_init)
        check_positive("eps", eps)
        check_bool("store_delta", store_delta)
        check_bool("sharded", sharded)
        if "params" in kwargs:
            raise ValueError("base_kwargs must not contain 'params'; pass them as params")
        if (
            not isinstance(base, torch.optim.Optimizer)
            and getattr(base_class, "has_global_statistics", False)
            and issubclass(base_class, AdaptiveOptimizer)
        ):
            kwargs.setdefault("sharded", sharded)
            if kwargs["sharded"] != sharded:
                raise ValueError(
                    f"sharded={sharded} but base_kwargs['sharded']={kwargs['sharded']!r}"
                )
        defaults = {
            "mechanic_s_decay": float(s_decay),
            "mechanic_betas": betas,
            "mechanic_s_init": float(s_init),
            "mechanic_eps": float(eps),
            "mechanic_store_delta": store_delta,
            # named apart from "fused": the base (torch's Adam, say) has a "fused" of its own
            "mechanic_fused": check_fused(fused, None),
            "sharded": sharded,
        }
        super().__init__(params, defaults)
        own_keys = self._own_keys()
        for group in self.param_groups:
            overridden = [k for k in _SETTINGS if k in group and group[k] != defaults[k]]
            if overridden:
                raise ValueError(
                    f"Mechanic's settings are global and cannot be set per group: {overridden}"
                )
        if isinstance(base, torch.optim.Optimizer):
            base_optimizer = self._adopt_instance(base, kwargs)
        else:
            groups = [{k: v for k, v in g.items() if k not in own_keys} for g in self.param_groups]
            base_optimizer = base_class(groups, **kwargs)
        # Mechanic's keys have the same values in every group (global settings and scalars)
        template = {k: self.param_groups[0][k] for k in own_keys}
        for group in base_optimizer.param_groups:
            group.update(template)
        # one list of group dicts, shared (NOTE [Mechanic param groups])
        self.param_groups = base_optimizer.param_groups
        self.base = base_optimizer
        # torch's schedulers look up the base's hyperparameters in ``defaults``
        # (OneCycleLR(cycle_momentum=True) needs "momentum" or "betas" there)
        self.defaults = {**base_optimizer.defaults, **self.defaults}

    def _adopt_instance(
        self, base: torch.optim.Optimizer, kwargs: dict[str, Any]
    ) -> torch.optim.Optimizer:
        if kwargs:
            raise ValueError(
                f"base is an optimizer instance: base_kwargs/lr must not be given, got {kwargs}"
            )
        ours = [p for g in self.param_groups for p in g["params"]]
        theirs = [p for g in base.param_groups for p in g["params"]]
        if len(ours) != len(theirs) or any(a is not b for a, b in zip(ours, theirs, strict=False)):
            raise ValueError(
                "base is an optimizer instance over other parameters: params must be the "
                "instance's parameters, in the same order"
            )
        sharded = self.param_groups[0]["sharded"]
        if base.param_groups[0].get("sharded", sharded) != sharded:
            raise ValueError(f"sharded={sharded} differs from the base instance's setting")
        return base

    def _own_keys(self) -> set[str]:
        return {*self._settings(), *self._all_global_defaults(), "effective_lr"}

    def _settings(self) -> dict[str, Any]:
        """Mechanic's own settings (``defaults`` also holds the base's, for schedulers)."""
        return {
            k: v for k, v in self.defaults.items() if k.startswith("mechanic_") or k == "sharded"
        }

    def _all_global_defaults(self) -> dict[str, Any]:
        n = len(self.defaults["mechanic_betas"])
        return {
            **super()._all_global_defaults(),
            "mechanic_s": [0.0] * n,
            "mechanic_v": [0.0] * n,
            "mechanic_r": [0.0] * n,
            "mechanic_m": [INITIAL_MAX_PRODUCT] * n,
        }

    # -- groups and checkpoints -------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer and to Mechanic (one shared group dict)."""
        if "base" not in self.__dict__:  # during __init__: the base does not exist yet
            super().add_param_group(param_group)
            return
        own_keys = self._own_keys()
        self.check_hyperparameters({**self.defaults, **param_group})
        overridden = [
            k for k in _SETTINGS if k in param_group and param_group[k] != self.defaults[k]
        ]
        if overridden:
            raise ValueError(
                f"Mechanic's settings are global and cannot be set per group: {overridden}"
            )
        self.base.add_param_group({k: v for k, v in param_group.items() if k not in own_keys})
        group = self.param_groups[-1]  # the list is shared with the base
        group.update(self._settings())
        for key in self._all_global_defaults():
            group[key] = self.param_groups[0][key]  # the current global tuner state
        group["effective_lr"] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """Mechanic's state dict plus the base optimizer's per-parameter state (``base_state``).

        Contains only tensors, numbers, strings, bools, None, lists, tuples and dicts, so it loads
        with ``torch.load(weights_only=True)``.
        """
        state = super().state_dict()
        state["base_state"] = self.base.state_dict()["state"]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load the state of Mechanic and of its base optimizer (see :meth:`state_dict`)."""
        state_dict = dict(state_dict)
        if "base_state" not in state_dict:
            raise ValueError(
                "not a Mechanic state dict: the key 'base_state' (the base optimizer's state) "
                "is missing"
            )
        base_dict = {
            "state": state_dict.pop("base_state"),
            "param_groups": state_dict["param_groups"],
        }
        # both parts are checked before either is loaded: a bad checkpoint changes nothing
        if isinstance(self.base, AdaptiveOptimizer):
            self.base.check_state_dict(base_dict)
        else:
            check_state_dict(self.base, base_dict, _foreign_layout(self.base))
        self.check_state_dict(state_dict)
        self.base.load_state_dict(base_dict)
        super().load_state_dict(state_dict)
        # torch casts floating state to the parameter's dtype; ref and delta of low-precision
        # parameters are float32 on purpose, so take them again from the checkpoint, uncast
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            if isinstance(index, int) and _state_dtype(params[index]) != params[index].dtype:
                p = params[index]
                for key in ("ref", "delta"):
                    if key in saved:
                        self.state[p][key] = saved[key].to(p.device, _state_dtype(p), copy=True)
        for ours, theirs in zip(self.param_groups, self.base.param_groups, strict=True):
            for key, value in theirs.items():
                ours.setdefault(key, value)
        self.base.param_groups = self.param_groups

    def _scratch_buffer(self, key: tuple[Any, ...], size: int, dtype: torch.dtype) -> Tensor:
        """A CPU buffer of ``size`` elements for ``key``, the same one from step to step while
        the size holds. Not optimizer state: never saved, copied or pickled (torch's
        ``__getstate__`` keeps only defaults, state and groups), and its contents do not
        outlive a step."""
        buffers: dict[tuple[Any, ...], Tensor] = self.__dict__.setdefault("_scratch", {})
        buffer = buffers.get(key)
        if buffer is None or buffer.numel() != size:
            buffer = buffers[key] = torch.empty(size, dtype=dtype)
        return buffer

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["base"] = self.base  # pickled with shared references (the group list, params)
        return state

    # -- the step ---------------------------------------------------------------------------

    def step(  # type: ignore[override]
        self,
        closure: LossClosure | None = None,
        *,
        loss: Tensor | float | None = None,
        example_indices: Tensor | None = None,
    ) -> Tensor | None:
        """One step of the base optimizer, rescaled by Mechanic (see the class docstring).

        Takes what the base needs: ``step(closure)``, ``step()`` after ``backward()``, and
        ``loss=`` / ``example_indices=`` for lrlab bases that need them.
        """
        base = self.base
        if isinstance(base, AdaptiveOptimizer):
            name = f"Mechanic({type(base).__name__})"
            if base.needs_closure and closure is None:
                raise ValueError(
                    f"{name}.step needs a closure: the base evaluates the loss again "
                    "(see lrlab.optim.make_closure)"
                )
            if base.needs_loss and closure is None and loss is None:
                raise ValueError(f"{name}.step needs the loss: call step(closure) or step(loss=)")
            if base.needs_example_index and example_indices is None:
                raise ValueError(f"{name}.step needs example_indices=")
        return super().step(closure, loss=loss, example_indices=example_indices)

    def _base_step(self, context: StepContext) -> None:
        base = self.base
        if isinstance(base, AdaptiveOptimizer):
            if base.needs_loss and context.loss is None:
                raise ValueError("the closure returned None; the base optimizer needs the loss")
            base._update(
                StepContext(
                    loss=context.loss,
                    closure=context.closure,
                    example_indices=context.example_indices,
                    params=context.params,
                )
            )
        elif context.closure is not None:
            base.step(_FirstCallReturnsLoss(context.closure, context.loss))
        else:
            base.step()

    def _update(self, context: StepContext) -> None:
        first = self.param_groups[0]
        betas: tuple[float, ...] = tuple(first["mechanic_betas"])
        s_decay, s_init = first["mechanic_s_decay"], first["mechanic_s_init"]
        eps, store_delta = first["mechanic_eps"], first["mechanic_store_delta"]
        s: list[float] = list(first["mechanic_s"])
        S = sum(s)
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        # Delta_i: stored, or (x_i - x_ref,i) / (S + eps) formed from x_i and x_ref,i
        before, after, move = _STORED if store_delta else _RECOMPUTED
        plan, reference = self._plan(params, store_delta, (before, after, move))

        # 1. before the base step: keep x in prev; <Delta, g> and ||g||^2
        fast = plan.run(before, {"divisor": S + eps})
        for row in reference:
            row["prev"] = prev = row["p"].detach().to(row["ref"].dtype, copy=True)
            if "delta" not in row:
                # the division in place: the same numbers with one full-size temporary, not two
                row["delta"] = torch.sub(prev, row["ref"]).div_(S + eps)
        deltas = [row["delta"] for row in reference]
        grads = [row["grad"] for row in reference]
        delta_dot_grad = _sum_with(_foreach.total_dot(deltas, grads), fast.parts("delta_dot_grad"))
        grad_sq = _sum_with(_foreach.total_dot(grads, grads), fast.parts("grad_sq"))

        self._base_step(context)

        # 2. after it (x+ = x + u): <Delta, x+> and ||x+||^2, then Delta += u
        if params:
            fast = plan.run(after, {"divisor": S + eps})
            moved = [row["p"] for row in reference]
            delta_dot_param = _sum_with(
                _foreach.total_dot(deltas, moved), fast.parts("delta_dot_param")
            )
            param_sq = _sum_with(_foreach.total_dot(moved, moved), fast.parts("param_sq"))
            for row in reference:
                row["delta"].add_(row["prev"].neg_().add_(row["p"]))  # u = x+ - x
            partials = [delta_dot_grad, grad_sq, delta_dot_param, param_sq]
        else:
            like = context.params[0]
            zero = torch.zeros(
                (), dtype=_foreach.accumulation_dtype(like.dtype), device=like.device
            )
            partials = [zero] * 4
        # every rank reaches the reduction, even one without gradients this step
        reduced = self._reduce_global(partials)
        # the one host synchronisation of the step
        dg, gg, dp, pp = torch.stack([v.to(reduced[0].dtype) for v in reduced]).tolist()

        # 3. the tuner: h, then m, v, r and s for every beta
        h = dg + s_decay * S * math.sqrt(gg) / (math.sqrt(pp) + eps) * dp
        m = [max(b * m_j, abs(h)) for b, m_j in zip(betas, first["mechanic_m"], strict=True)]
        v = [v_j * (b * b) + h * h for b, v_j in zip(betas, first["mechanic_v"], strict=True)]
        r = [
            max(0.0, b * r_j - s_j * h)
            for b, r_j, s_j in zip(betas, first["mechanic_r"], s, strict=True)
        ]
        n = len(betas)
        s = [
            (m_j * s_init / n + r_j) / (math.sqrt(v_j) + eps)
            for m_j, r_j, v_j in zip(m, r, v, strict=True)
        ]

        # 4. x = x_ref + max(sum s, 0) Delta
        scale = max(sum(s), 0.0)
        plan.run(move, {"divisor": S + eps, "scale": scale})
        for row in reference:
            p, ref, delta = row["p"], row["ref"], row["delta"]
            if delta.dtype == p.dtype:
                p.copy_(delta).mul_(scale).add_(ref)
            else:
                p.copy_(delta.mul(scale).add_(ref))

        for group in self.param_groups:
            base_rate = (
                group["effective_lr"]
                if isinstance(self.base, AdaptiveOptimizer)
                else float(group.get("lr", 1.0))
            )
            group["effective_lr"] = float(base_rate) * scale
        self._set_global("mechanic_s", s)
        self._set_global("mechanic_v", v)
        self._set_global("mechanic_r", r)
        self._set_global("mechanic_m", m)
        self._set_global("mechanic_h", h)
        self._set_global("mechanic_steps", self._get_global("mechanic_steps") + 1)

    def _plan(
        self, params: list[Tensor], store_delta: bool, passes: tuple[Pass, Pass, Pass]
    ) -> tuple[Plan, list[dict[str, Tensor]]]:
        """Start the state of new parameters and route every parameter's arrays (``p``,
        ``grad``, ``ref``, and ``delta`` where it is stored) between the kernels and the
        reference loop; return the plan and the reference loop's rows, in parameter order.

        The kernels' rows get ``prev`` (x before the base step): on the native path a slice of
        one buffer per dtype that lives from step to step (see :meth:`_scratch_buffer`)."""
        rows: list[dict[str, Tensor]] = []
        for p in params:
            state = self.state[p]
            dtype = _state_dtype(p)
            if len(state) == 0:
                # x_ref: the parameter before its first step
                state["ref"] = p.detach().to(dtype, copy=True)
                if store_delta or dtype != p.dtype:
                    state["delta"] = torch.zeros_like(p, dtype=dtype)
            row = {"p": p, "grad": _foreach.grad_of(p), "ref": state["ref"]}
            if "delta" in state:
                row["delta"] = state["delta"]
            rows.append(row)
        # the kernels take the parameters whose state is in their own dtype (low-precision ones
        # keep a float32 Delta) and has the layout of this setting
        takes = [
            row
            for row in rows
            if row["ref"].dtype == row["p"].dtype
            and ("delta" in row) == store_delta
            and row["p"].numel() > 0
        ]
        plan = route({"fused": self.param_groups[0].get(self.fused_setting, False)}, takes, passes)
        for dtype, indices in plan.native.items():
            sizes = [takes[i]["p"].numel() for i in indices]
            buffer = self._scratch_buffer((dtype, store_delta), sum(sizes), dtype)
            for i, prev in zip(indices, buffer.split(sizes), strict=True):
                takes[i]["prev"] = prev
        for i in plan.compiled:
            takes[i]["prev"] = torch.empty_like(takes[i]["p"])
        fast = {id(takes[i]) for i in plan.compiled}
        fast.update(id(takes[i]) for indices in plan.native.values() for i in indices)
        return plan, [row for row in rows if id(row) not in fast]

    # -- observation ------------------------------------------------------------------------

    def _statistics(self) -> dict[str, float]:
        s = sum(self._get_global("mechanic_s"))
        stats = {
            "s": float(s),
            "scale": max(float(s), 0.0),
            "inner_product": float(self._get_global("mechanic_h")),
            "mechanic_steps": float(self._get_global("mechanic_steps")),
        }
        if isinstance(self.base, AdaptiveOptimizer):
            stats.update({f"base_{k}": float(v) for k, v in self.base._statistics().items()})
        return stats


# -- the passes' kernels (see :mod:`lrlab.optim._executor`) -------------------------------------


def _sum_with(total: Tensor, parts: list[Tensor]) -> Tensor:
    """``total`` (the reference rows' sum; a float32 zero when there are none) plus the kernels'
    parts (compiled rows, then one per native dtype), in the wider of the two dtypes."""
    if not parts:
        return total
    fused = torch.stack(parts).sum()
    dtype = torch.promote_types(total.dtype, fused.dtype)
    return total.to(device=fused.device, dtype=dtype) + fused.to(dtype)


# divisor: S + eps, by which the passes without a stored Delta form it from x and x_ref
_BEFORE_SCHEMA = Schema("MechanicBefore", scalars=("divisor",), sums=("delta_dot_grad", "grad_sq"))
_AFTER_SCHEMA = Schema("MechanicAfter", scalars=("divisor",), sums=("delta_dot_param", "param_sq"))
_MOVE_SCHEMA = Schema("MechanicMove", scalars=("divisor", "scale"))


@kernel
def _mechanic_before_recomputed(
    p: Tensor, grad: Tensor, ref: Tensor, prev: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    """Before the base step: keep x in ``prev``; (<Delta, g>, <g, g>) with Delta formed."""
    c = _BEFORE_SCHEMA.read(scalars)
    delta = (p - ref) / c["divisor"]
    prev.copy_(p)
    return (delta * grad).to(scalars.dtype).sum(), (grad * grad).to(scalars.dtype).sum()


@kernel
def _mechanic_before_stored(
    p: Tensor, grad: Tensor, delta: Tensor, prev: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    """Before the base step: keep x in ``prev``; (<Delta, g>, <g, g>)."""
    prev.copy_(p)
    return (delta * grad).sum(), (grad * grad).sum()


@kernel
def _mechanic_after_recomputed(
    p: Tensor, prev: Tensor, ref: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    """After the base step: (<Delta, x+>, <x+, x+>) with Delta formed from x (``prev``)."""
    c = _AFTER_SCHEMA.read(scalars)
    delta = (prev - ref) / c["divisor"]
    return (delta * p).sum(), (p * p).sum()


@kernel
def _mechanic_after_stored(
    p: Tensor, prev: Tensor, delta: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    """After the base step: (<Delta, x+>, <x+, x+>), then Delta += x+ - x."""
    dot, square = (delta * p).sum(), (p * p).sum()
    delta.copy_(delta + (p - prev))
    return dot, square


@kernel
def _mechanic_move_recomputed(p: Tensor, prev: Tensor, ref: Tensor, scalars: Tensor) -> None:
    """``x = x_ref + scale * Delta`` with Delta = (x - x_ref) / divisor + (x+ - x)."""
    c = _MOVE_SCHEMA.read(scalars)
    delta = (prev - ref) / c["divisor"] + (p - prev)
    p.copy_(delta * c["scale"] + ref)


@kernel
def _mechanic_move_stored(p: Tensor, ref: Tensor, delta: Tensor, scalars: Tensor) -> None:
    """``x = x_ref + scale * Delta``."""
    p.copy_(delta * _MOVE_SCHEMA.read(scalars)["scale"] + ref)


#: (before, after, move) without and with a stored Delta
_RECOMPUTED = (
    Pass(
        "mechanic",
        ("p", "grad", "ref", "prev"),
        _BEFORE_SCHEMA,
        native="mechanic_before_recomputed",
        compiled=_mechanic_before_recomputed,
    ),
    Pass(
        "mechanic",
        ("p", "prev", "ref"),
        _AFTER_SCHEMA,
        native="mechanic_after_recomputed",
        compiled=_mechanic_after_recomputed,
    ),
    Pass(
        "mechanic",
        ("p", "prev", "ref"),
        _MOVE_SCHEMA,
        native="mechanic_move_recomputed",
        compiled=_mechanic_move_recomputed,
    ),
)
_STORED = (
    Pass(
        "mechanic",
        ("p", "grad", "delta", "prev"),
        _BEFORE_SCHEMA,
        native="mechanic_before_stored",
        compiled=_mechanic_before_stored,
    ),
    Pass(
        "mechanic",
        ("p", "prev", "delta"),
        _AFTER_SCHEMA,
        native="mechanic_after_stored",
        compiled=_mechanic_after_stored,
    ),
    Pass(
        "mechanic",
        ("p", "ref", "delta"),
        _MOVE_SCHEMA,
        native="mechanic_move_stored",
        compiled=_mechanic_move_stored,
    ),
)
