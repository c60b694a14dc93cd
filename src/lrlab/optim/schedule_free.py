"""Schedule-Free SGD and AdamW: iterate averaging in place of a learning-rate schedule.

Paper: Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
NeurIPS 2024 (arXiv:2405.15682). Method page: ``docs/methods/schedule-free.md`` (the released
package ``schedulefree==1.4.1`` is the numerical oracle).

Three sequences: the base iterate ``z`` (plain SGD / AdamW steps), its weighted average ``x`` (the
point to evaluate and to ship) and the interpolation ``y`` between them, where gradients are taken.
Only ``z`` is extra memory: the parameter buffer holds ``y`` in train mode and ``x`` in eval mode.
How to checkpoint in either mode and how to recalibrate BatchNorm statistics for ``x``:
``docs/schedule_free.md`` and :func:`recalibrate_batchnorm`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer, LossClosure, StepContext
from lrlab.optim._executor import Pass, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import (
    check_betas,
    check_int,
    check_nonnegative,
    check_positive,
    check_range,
)

__all__ = ["AdamWScheduleFree", "SGDScheduleFree", "recalibrate_batchnorm"]

#: per-group run state (the package keeps these per group too: each group's warmup and lr_max)
_GROUP_STATE = {
    "k": 0,
    "lr_max": -1.0,
    "weight_sum": 0.0,
    "scheduled_lr": 0.0,
    "averaging_weight": 0.0,
}

# the native kernels of fused=True on CPU float32/float64 tensors (native/schedule_free.cpp)
# the switch between modes, p = lerp(p, z, weight) (native only: it is not a step)
_INTERPOLATE = Pass(
    "schedule_free",
    ("p", "z"),
    Schema("ScheduleFreeInterpolate", scalars=("weight",)),
    native="schedule_free_interpolate",
)


class _ScheduleFree(AdaptiveOptimizer):
    """Shared machinery: modes, warmup, averaging weights and the y/z update.

    Subclasses give the interpolation constant ``beta`` of a group and the (preconditioned)
    direction of every parameter.
    """

    has_eval_mode: ClassVar[bool] = True
    #: a capturable step keeps the run state of every group on the device
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {
        "k": int,
        "lr_max": float,
        "weight_sum": float,
        "scheduled_lr": float,
        "averaging_weight": float,
    }
    # NOTE [Schedule-Free mode]: the mode is global (all groups switch together) and lives in the
    # param groups, so state_dict() records whether the parameters hold y or x.
    global_defaults: ClassVar[Mapping[str, float | int | bool]] = {"train_mode": True}
    #: whether :meth:`_directions` returns fresh buffers (else the gradients, never modified)
    _owns_directions: ClassVar[bool] = False
    #: the whole step of a group as one pass (every scalar is known before it), and the state
    #: tensors its arrays name after "grad" and "p"
    _step: ClassVar[Pass]
    _state_arrays: ClassVar[Mapping[str, str]] = {"z": "z"}

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.nonnegative(),
        "weight_decay": check.nonnegative(),
        "warmup_steps": check.integer(0),
        "r": check.nonnegative(),
        "weight_lr_power": check.nonnegative(),
        # the run's own scalars, kept in the groups: a group may not set them to nonsense
        "k": check.integer(0),
        "lr_max": check.real(),
        "weight_sum": check.nonnegative(),
        "scheduled_lr": check.nonnegative(),
        "averaging_weight": check.in_range(0.0, 1.0, "[]"),
        "train_mode": check.boolean(),
    }

    def _beta(self, group: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        k: int,
        foreach: bool,
    ) -> list[Tensor]:
        """The vector ``d`` with ``z <- z - lr d`` (weight decay at y added by the caller)."""
        raise NotImplementedError

    def _step_scalars(
        self, group: dict[str, Any], k: Scalar, lr: Scalar, c: Scalar, y_step: Scalar
    ) -> dict[str, Scalar]:
        """The scalars of :attr:`_step` for one group."""
        raise NotImplementedError

    # -- modes ------------------------------------------------------------------------------

    @property
    def training(self) -> bool:
        """True in train mode (parameters hold y), False in eval mode (parameters hold x)."""
        return bool(self._get_global("train_mode"))

    @torch.no_grad()
    def train(self) -> None:
        """Switch the parameters to y, the gradient point. Call before training steps.

        A no-op when already in train mode. ``y = (1 - beta) z + beta x``.
        """
        if self.training:
            return
        for group in self.param_groups:
            self._interpolate(group, 1 - self._beta(group))
        self._set_global("train_mode", True)

    @torch.no_grad()
    def eval(self) -> None:
        """Switch the parameters to x, the averaged point. Call before evaluating or saving.

        A no-op when already in eval mode. ``x = (y - (1 - beta) z) / beta``.
        """
        if not self.training:
            return
        for group in self.param_groups:
            self._interpolate(group, 1 - 1 / self._beta(group))
        self._set_global("train_mode", False)

    def _interpolate(self, group: dict[str, Any], weight: float) -> None:
        """``p = lerp(p, z, weight)`` for every parameter of ``group`` that has a ``z``; by
        default CPU float32/float64 tensors in one native call per dtype."""
        rows = [{"p": p, "z": self.state[p]["z"]} for p in group["params"] if "z" in self.state[p]]
        plan = route(group, rows, (_INTERPOLATE,))
        plan.run(_INTERPOLATE, {"weight": weight})
        for i in plan.reference:
            p, z = rows[i]["p"], rows[i]["z"]
            p.lerp_(z.to(p.device), weight)

    # -- the step ---------------------------------------------------------------------------

    def step(  # type: ignore[override]
        self,
        closure: LossClosure | None = None,
        *,
        loss: Tensor | float | None = None,
        example_indices: Tensor | None = None,
    ) -> Tensor | None:
        """One training step (see NOTE [the lrlab optimizer contract]); needs train mode."""
        if not self.training:
            # checked before the closure runs, so nothing is evaluated or changed
            raise RuntimeError(
                f"{type(self).__name__} is in eval mode (the parameters hold the average x): "
                "call optimizer.train() before step()"
            )
        return super().step(closure, loss=loss, example_indices=example_indices)

    def _update(self, context: StepContext) -> None:
        for group in self.param_groups:
            # Python numbers, or 0-d device tensors in a capturable step (NOTE [device scalars])
            k = group["k"]
            warmup_steps = group["warmup_steps"]
            schedule = scalar.where(k < warmup_steps, (k + 1) / max(warmup_steps, 1), 1.0)
            lr = group["lr"] * schedule
            lr_max = scalar.maximum(lr, group["lr_max"])
            weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
            weight_sum = group["weight_sum"] + weight
            # c_{k+1}: the weight of the new z in the average x (0 while every weight is 0)
            c = scalar.ratio_or_zero(weight, weight_sum)
            group.update(
                {
                    "k": k + 1,
                    "lr_max": lr_max,
                    "weight_sum": weight_sum,
                    "scheduled_lr": lr,
                    "averaging_weight": c,
                    "effective_lr": lr if self.capturable else float(lr),
                }
            )
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(p, state)
            grads = _foreach.grads_of(params)
            beta, weight_decay = self._beta(group), group["weight_decay"]
            # y_{k+1} = (1 - c) y + c z - lr (1 - beta (1 - c)) d  ==  spec 7.1 in y only
            y_step = lr * (beta * (1 - c) - 1)
            # every scalar of the step is known before it (no global reduction): one pass
            rows = [
                {
                    "grad": grad,
                    "p": p,
                    **{name: self.state[p][key] for name, key in self._state_arrays.items()},
                }
                for p, grad in zip(params, grads, strict=True)
            ]
            plan = route(group, rows, (self._step,))
            plan.run(self._step, self._step_scalars(group, k, lr, c, y_step))
            if not plan.reference:
                continue
            params = [params[i] for i in plan.reference]
            grads = [grads[i] for i in plan.reference]
            z = [self.state[p]["z"] for p in params]
            foreach = _foreach.resolve_foreach(group["foreach"], params)
            directions = self._directions(group, params, grads, k, foreach)
            if foreach:
                for (_, _), (ys, ds, zs) in _foreach.group_by_device_and_dtype(
                    [params, directions, z]
                ).items():
                    if weight_decay != 0:  # decay at y, added to the direction
                        if self._owns_directions:
                            torch._foreach_add_(ds, ys, alpha=weight_decay)
                        else:
                            ds = list(torch._foreach_add(ds, ys, alpha=weight_decay))
                    torch._foreach_lerp_(ys, zs, c)  # type: ignore[arg-type]  # a 0-d tensor too
                    _foreach.add_scaled_(ys, ds, y_step)
                    _foreach.add_scaled_(zs, ds, -lr)
            else:
                for y, d, z_p in zip(params, directions, z, strict=True):
                    if weight_decay != 0:  # decay at y, added to the direction
                        if self._owns_directions:
                            d.add_(y, alpha=weight_decay)
                        else:
                            d = d.add(y, alpha=weight_decay)
                    y.lerp_(z_p, c)
                    scalar.add_scaled_(y, d, y_step)
                    scalar.add_scaled_(z_p, d, -lr)

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        # z starts at the parameter's value when it first has a gradient (x = y = z there)
        state["z"] = p.detach().clone(memory_format=torch.preserve_format)

    def _statistics(self) -> dict[str, float]:
        group = self.param_groups[0]
        return {
            "scheduled_lr": float(group["scheduled_lr"]),
            "averaging_weight": float(group["averaging_weight"]),
            "weight_sum": float(group["weight_sum"]),
            "lr_max": float(group["lr_max"]),
            "k": float(group["k"]),
            "train_mode": 1.0 if self.training else 0.0,
        }


def _check_schedule_free_betas(name: str, betas: object) -> None:
    """Two coefficients in [0, 1), the first in (0, 1): beta1 = 0 would never average."""
    check_betas(name, betas)
    assert isinstance(betas, Sequence)
    check_range(f"{name}[0]", betas[0], 0.0, 1.0, "()")


def _check_common(
    lr: float, weight_decay: float, warmup_steps: int, r: float, power: float
) -> None:
    check_nonnegative("lr", lr)
    check_nonnegative("weight_decay", weight_decay)
    check_int("warmup_steps", warmup_steps, 0)
    check_nonnegative("r", r)
    check_nonnegative("weight_lr_power", power)


_COMMON_INVALID = (
    InvalidKwargs({"lr": -0.1}, r"lr must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"weight_decay": -1.0}, r"weight_decay must be in \[0, inf\), got -1\.0"),
    InvalidKwargs({"warmup_steps": 2.5}, r"warmup_steps must be an integer, got 2\.5"),
    InvalidKwargs({"warmup_steps": -1}, r"warmup_steps must be in \[0, inf\], got -1"),
    InvalidKwargs({"r": -0.5}, r"r must be in \[0, inf\), got -0\.5"),
    InvalidKwargs({"weight_lr_power": -2.0}, r"weight_lr_power must be in \[0, inf\), got -2\.0"),
    InvalidKwargs({"foreach": 1}, r"foreach must be True, False or None, got 1"),
)

_PAPER = (
    "Defazio et al., The Road Less Scheduled, NeurIPS 2024 (arXiv:2405.15682); schedulefree 1.4.1"
)

_NOTES = r"""
    .. note::
        Deviations from ``schedulefree`` 1.4.1 (same numbers otherwise, to ~1e-15 in float64):

        * A new optimizer starts in **train** mode (the package starts in eval mode and needs a
          ``train()`` call first). Parameters without ``z`` are unaffected either way.
        * ``p.grad`` is never modified (the package adds the weight decay to the gradient in place
          and AdamW also divides it by the denominator in place).
        * Stepping in eval mode raises :class:`RuntimeError` ("call optimizer.train() before
          step()") *before* the closure runs; the package raises a bare ``Exception`` after
          checking only the first group. The mode is global: ``train()`` / ``eval()`` switch all
          groups, and ``train_mode`` is stored in every group (so in ``state_dict()``).
        * Non-finite steps are skipped (the lrlab policy): ``k``, the averaging weights, ``z`` and
          the parameters stay as they were.
        * Hyperparameters are validated (the package validates only ``lr``, ``weight_decay``
          and SGD's ``momentum``); ``lr`` may be 0 (schedulers that start at 0: the averaging
          weight is then 0, as in the package, instead of a division by zero).

    Checkpoints: ``state_dict()`` contains ``z``, the per-group counters and the mode. Saved in
    train mode, the parameters are y and a resumed run continues bit for bit with no call. Saved
    in eval mode (the package's advice, so that the saved weights are the average x), call
    ``train()`` after loading, exactly as the original run does after saving; both runs then take
    the same steps. See ``docs/schedule_free.md``.

    BatchNorm: running statistics are collected at y during training; recompute them at x with
    :func:`recalibrate_batchnorm` before evaluating.
"""


@register(
    "schedulefree-sgd",
    family="schedule-free",
    paper=_PAPER,
    summary="Schedule-Free SGD: interpolate between SGD iterates and their running average",
    supports_foreach=True,
    supports_fused=True,
    oracle="schedulefree.SGDScheduleFree",
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "momentum": 0.5, "warmup_steps": 3, "weight_decay": 0.01},
        {"lr": 0.05, "r": 0.75, "weight_lr_power": 0.0},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"momentum": 1.0}, r"momentum must be in \(0, 1\), got 1\.0"),
        InvalidKwargs({"momentum": 0.0}, r"momentum must be in \(0, 1\), got 0\.0"),
    ),
    group_kwargs={"lr": 0.01},
)
class SGDScheduleFree(_ScheduleFree):
    r"""Schedule-Free SGD.

    .. math::
        \begin{aligned}
        &\textbf{for } k = 0, 1, \dots \text{ (per group):}\\
        &\quad \gamma_k = \gamma \min\!\big(1, (k+1) / \text{warmup\_steps}\big),\qquad
            \gamma^{max}_k = \max_{i \le k} \gamma_i\\
        &\quad w_k = (k+1)^r\, (\gamma^{max}_k)^{\text{weight\_lr\_power}},\qquad
            c_{k+1} = w_k / \textstyle\sum_{i \le k} w_i\\
        &\quad g_k = \nabla f(y_k) + \lambda y_k\\
        &\quad z_{k+1} = z_k - \gamma_k g_k\\
        &\quad x_{k+1} = (1 - c_{k+1})\, x_k + c_{k+1} z_{k+1}\\
        &\quad y_{k+1} = (1 - \beta)\, z_{k+1} + \beta x_{k+1}
        \end{aligned}

    Stored: the parameter buffer (y in train mode, x in eval mode) and ``z``. The update of y is
    done in place without forming x: :math:`y \leftarrow (1-c) y + c z - \gamma (1 - \beta (1-c))
    g`, then :math:`z \leftarrow z - \gamma g`. ``effective_lr`` is :math:`\gamma_k`.

    Symbols: :math:`\gamma` ``lr``; :math:`\beta` ``momentum``; :math:`\lambda` ``weight_decay``;
    :math:`z` ``state[p]["z"]``; :math:`k, \gamma^{max}, \sum w, \gamma_k, c` the group keys ``k``,
    ``lr_max``, ``weight_sum``, ``scheduled_lr``, ``averaging_weight``.

    Args:
        params: parameters or param groups.
        lr: :math:`\gamma`, in [0, inf). Default 1.0 (the package's; typically 10-50x a
            classical SGD learning rate).
        momentum: the interpolation :math:`\beta`, in (0, 1). Default 0.9. 1 would be primal
            averaging, 0 Polyak-Ruppert averaging (both excluded: eval() divides by beta).
        weight_decay: :math:`\lambda`, coupled L2 evaluated at y, in [0, inf). Default 0.
        warmup_steps: linear warmup of :math:`\gamma` over this many steps, an integer >= 0.
        r: polynomial weighting power of the average, in [0, inf). Default 0.
        weight_lr_power: power of :math:`\gamma^{max}` in the weights, in [0, inf). Default 2.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the whole step (the decayed gradient, y and z) in a single pass over
            memory, as every scalar of the step is known before it, and so are ``train()`` and
            ``eval()``: on CPU float32/float64 tensors as native multi-tensor kernels, one call
            for all tensors of a dtype (see :mod:`lrlab.optim._native`); elsewhere the step as
            one compiled kernel per tensor (see :mod:`lrlab.optim._fused`; the first step pays
            the compilation). Tensors that cannot be viewed flat (non-contiguous, sparse) or,
            off the CPU, are small take the ``foreach`` path.
        capturable: keep the counters and averaging weights as 0-d tensors on the parameters'
            device, so that the step reads nothing back to the host and ``torch.compile`` traces
            it without recompiling as they change (NOTE [device scalars] in
            ``lrlab/optim/_scalars.py``). None (default): True for CUDA/XPU parameters.

    Example:
        >>> optimizer = SGDScheduleFree(model.parameters(), lr=1.0)
        >>> for inputs, targets in loader:  # optimizer starts in train mode
        ...     optimizer.zero_grad()
        ...     loss_fn(model(inputs), targets).backward()
        ...     optimizer.step()
        >>> optimizer.eval()  # parameters now hold x: evaluate, save
    """

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "momentum": check.in_range(0.0, 1.0, "()")
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        _check_common(lr, weight_decay, warmup_steps, r, weight_lr_power)
        check_range("momentum", momentum, 0.0, 1.0, "()")
        _check_foreach(foreach)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": float(lr),
            "momentum": float(momentum),
            "weight_decay": float(weight_decay),
            "warmup_steps": warmup_steps,
            "r": float(r),
            "weight_lr_power": float(weight_lr_power),
            "foreach": foreach,
            "fused": fused,
            "capturable": capturable,
            **_GROUP_STATE,
        }
        super().__init__(params, defaults)

    def _beta(self, group: Mapping[str, Any]) -> float:
        return float(group["momentum"])

    def _step_scalars(
        self, group: dict[str, Any], k: Scalar, lr: Scalar, c: Scalar, y_step: Scalar
    ) -> dict[str, Scalar]:
        return {"weight_decay": group["weight_decay"], "lr": lr, "c": c, "y_step": y_step}

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        k: int,
        foreach: bool,
    ) -> list[Tensor]:
        return grads  # never modified: weight decay is added out of place


_SGD_STEP_SCHEMA = Schema("ScheduleFreeSgdStep", scalars=("weight_decay", "lr", "c", "y_step"))


@kernel
def _sgd_schedule_free_step(grad: Tensor, y: Tensor, z: Tensor, scalars: Tensor) -> None:
    """One SGDScheduleFree step of one tensor (NOTE [fused kernels] in lrlab.optim._fused).

    Low-precision tensors are computed in the scalars' float32 and stored back in their dtype;
    weight decay 0.0 rather than a branch, so the graph does not depend on it.
    """
    c = _SGD_STEP_SCHEMA.read(scalars)
    y_old = y.to(scalars.dtype)
    # weight decay at y before it moves, as the reference path adds it
    d = grad.to(scalars.dtype) + c["weight_decay"] * y_old
    y.copy_(torch.lerp(y_old, z.to(scalars.dtype), c["c"]) + c["y_step"] * d)
    z.copy_(z.to(scalars.dtype) - c["lr"] * d)


SGDScheduleFree._step = Pass(
    "schedule_free",
    ("grad", "p", "z"),
    _SGD_STEP_SCHEMA,
    native="schedule_free_sgd_step",
    compiled=_sgd_schedule_free_step,
)


SGDScheduleFree.__doc__ = f"{SGDScheduleFree.__doc__}{_NOTES}"


@register(
    "schedulefree-adamw",
    family="schedule-free",
    paper=_PAPER,
    summary="Schedule-Free AdamW: Adam-preconditioned z steps, y/x interpolation and averaging",
    supports_foreach=True,
    supports_fused=True,
    oracle="schedulefree.AdamWScheduleFree",
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "betas": (0.95, 0.99), "warmup_steps": 3, "weight_decay": 0.1},
        {"lr": 0.05, "r": 0.75, "weight_lr_power": 0.0, "eps": 1e-6},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"betas": (0.0, 0.999)}, r"betas\[0\] must be in \(0, 1\), got 0\.0"),
        InvalidKwargs({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
    ),
    group_kwargs={"lr": 0.01},
)
class AdamWScheduleFree(_ScheduleFree):
    r"""Schedule-Free AdamW (the package's main form, version 1.3 and later).

    .. math::
        \begin{aligned}
        &\textbf{for } k = 0, 1, \dots \text{ (per group), with } \gamma_k, c_{k+1}
            \text{ as in } \texttt{SGDScheduleFree}:\\
        &\quad v_{k+1} = \beta_2 v_k + (1 - \beta_2)\, \nabla f(y_k)^2\\
        &\quad d_k = \frac{\nabla f(y_k)}{\sqrt{v_{k+1} / (1 - \beta_2^{k+1})} + \epsilon}
            + \lambda y_k\\
        &\quad z_{k+1} = z_k - \gamma_k d_k,\qquad
            x_{k+1} = (1 - c_{k+1})\, x_k + c_{k+1} z_{k+1},\qquad
            y_{k+1} = (1 - \beta_1)\, z_{k+1} + \beta_1 x_{k+1}
        \end{aligned}

    The bias correction is in the denominator and the averaging weights use the warmup-scheduled
    :math:`\gamma_k` only (the pre-1.3 "paper" form put :math:`\sqrt{1-\beta_2^{k+1}}` into the
    learning rate). Weight decay is added after preconditioning, at y (decoupled from Adam's
    scaling, like AdamW).

    Symbols: :math:`\gamma` ``lr``; :math:`\beta_1, \beta_2` ``betas``; :math:`\epsilon` ``eps``;
    :math:`\lambda` ``weight_decay``; :math:`v` ``state[p]["exp_avg_sq"]``; :math:`z`
    ``state[p]["z"]``; counters and weights as in :class:`SGDScheduleFree`.

    Args:
        params: parameters or param groups.
        lr: :math:`\gamma`, in [0, inf). Default 0.0025.
        betas: :math:`(\beta_1, \beta_2)`: :math:`\beta_1` in (0, 1) is the interpolation
            (``momentum`` of the SGD variant), :math:`\beta_2` in [0, 1). Default (0.9, 0.999).
        eps: :math:`\epsilon`, in (0, inf). Default 1e-8.
        weight_decay: :math:`\lambda`, in [0, inf). Default 0.
        warmup_steps, r, weight_lr_power, foreach: as :class:`SGDScheduleFree`.
        fused: True runs the whole step (v, the direction, y and z) in a single pass over
            memory, as every scalar of the step is known before it, and so are ``train()`` and
            ``eval()``: on CPU float32/float64 tensors as native multi-tensor kernels, one call
            for all tensors of a dtype (see :mod:`lrlab.optim._native`); elsewhere the step as
            one compiled kernel per tensor (see :mod:`lrlab.optim._fused`; the first step pays
            the compilation). Tensors that cannot be viewed flat (non-contiguous, sparse) take
            the ``foreach`` path.
        capturable: as :class:`SGDScheduleFree`.

    Example:
        >>> optimizer = AdamWScheduleFree(model.parameters(), lr=2.5e-3, warmup_steps=1000)
        >>> loss_fn(model(inputs), targets).backward()
        >>> optimizer.step()
        >>> optimizer.eval(); evaluate(model); optimizer.train()
    """

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "betas": _check_schedule_free_betas,
        "eps": check.positive(),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        _check_common(lr, weight_decay, warmup_steps, r, weight_lr_power)
        check_betas("betas", betas)
        check_range("betas[0]", betas[0], 0.0, 1.0, "()")
        check_positive("eps", eps)
        _check_foreach(foreach)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": float(lr),
            "betas": (float(betas[0]), float(betas[1])),
            "eps": float(eps),
            "weight_decay": float(weight_decay),
            "warmup_steps": warmup_steps,
            "r": float(r),
            "weight_lr_power": float(weight_lr_power),
            "foreach": foreach,
            "fused": fused,
            "capturable": capturable,
            **_GROUP_STATE,
        }
        super().__init__(params, defaults)

    _owns_directions: ClassVar[bool] = True
    _state_arrays: ClassVar[Mapping[str, str]] = {"z": "z", "v": "exp_avg_sq"}

    def _beta(self, group: Mapping[str, Any]) -> float:
        return float(group["betas"][0])

    def _step_scalars(
        self, group: dict[str, Any], k: Scalar, lr: Scalar, c: Scalar, y_step: Scalar
    ) -> dict[str, Scalar]:
        _, beta2 = group["betas"]
        # 1 - beta2 and the bias correction in Python double, as the reference path has them
        return {
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "bias_correction2": 1 - beta2 ** (k + 1),
            "eps": group["eps"],
            "weight_decay": group["weight_decay"],
            "lr": lr,
            "c": c,
            "y_step": y_step,
        }

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(p, state)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        k: int,
        foreach: bool,
    ) -> list[Tensor]:
        _, beta2 = group["betas"]
        eps = group["eps"]
        bias_correction2 = 1 - beta2 ** (k + 1)
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        if foreach:
            directions: list[Tensor] = []
            for (_, _), (gs, vs) in _foreach.group_by_device_and_dtype(
                [grads, exp_avg_sqs]
            ).items():
                torch._foreach_mul_(vs, beta2)
                torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
                denominators = torch._foreach_div(vs, bias_correction2)
                torch._foreach_sqrt_(denominators)
                torch._foreach_add_(denominators, eps)
                # g / D written into D's fresh tensors: the same numbers, one temporary fewer
                for g, denominator in zip(gs, denominators, strict=True):
                    torch.div(g, denominator, out=denominator)
                directions.extend(denominators)
            return _foreach._reorder(grads, directions)
        out = []
        for g, v in zip(grads, exp_avg_sqs, strict=True):
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            out.append(g / v.div(bias_correction2).sqrt_().add_(eps))
        return out


_ADAMW_STEP_SCHEMA = Schema(
    "ScheduleFreeAdamwStep",
    scalars=(
        "beta2",
        "one_minus_beta2",
        "bias_correction2",  # 1 - beta2^(k+1)
        "eps",
        "weight_decay",
        "lr",
        "c",
        "y_step",
    ),
)


@kernel
def _adamw_schedule_free_step(
    grad: Tensor, y: Tensor, z: Tensor, v: Tensor, scalars: Tensor
) -> None:
    """One AdamWScheduleFree step of one tensor (NOTE [fused kernels] in lrlab.optim._fused).

    Low-precision tensors are computed in the scalars' float32 and stored back in their dtype.
    """
    c = _ADAMW_STEP_SCHEMA.read(scalars)
    g = grad.to(scalars.dtype)
    y_old = y.to(scalars.dtype)
    v_new = v.to(scalars.dtype) * c["beta2"] + c["one_minus_beta2"] * g * g
    # weight decay at y before it moves, as the reference path adds it
    d = g / ((v_new / c["bias_correction2"]).sqrt() + c["eps"]) + c["weight_decay"] * y_old
    v.copy_(v_new)
    y.copy_(torch.lerp(y_old, z.to(scalars.dtype), c["c"]) + c["y_step"] * d)
    z.copy_(z.to(scalars.dtype) - c["lr"] * d)


AdamWScheduleFree._step = Pass(
    "schedule_free",
    ("grad", "p", "z", "v"),
    _ADAMW_STEP_SCHEMA,
    native="schedule_free_adamw_step",
    compiled=_adamw_schedule_free_step,
)


AdamWScheduleFree.__doc__ = f"{AdamWScheduleFree.__doc__}{_NOTES}"


def _check_foreach(foreach: object) -> None:
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"foreach must be True, False or None, got {foreach!r}")


# -- BatchNorm -----------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    optimizer: SGDScheduleFree | AdamWScheduleFree,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    """Recompute the BatchNorm running statistics of ``model`` at the averaged weights x.

    During training, BatchNorm layers collect running means and variances of activations at y,
    not at the averaged weights x that Schedule-Free evaluates. This puts the optimizer in eval
    mode (parameters = x), resets the running statistics of every BatchNorm layer, and runs
    forward passes over ``batches`` in training mode without gradients, with a cumulative
    (equal-weight) average (``momentum=None``). The model's per-module train/eval flags and the
    layers' ``momentum`` are restored afterwards; the optimizer stays in eval mode, ready for
    evaluation or saving (call ``optimizer.train()`` before the next step).

    Args:
        model: the model; modules of type ``torch.nn.modules.batchnorm._BatchNorm``
            (BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants) are recalibrated.
        optimizer: the Schedule-Free optimizer of the model's parameters.
        batches: an iterable of inputs (a few dozen batches of training data is typical).
        forward: ``forward(model, batch)``; default ``model(batch)``.

    Returns:
        The number of batches used (0 if the model has no BatchNorm layer: nothing is run).

    Example:
        >>> optimizer.eval()  # optional: recalibrate_batchnorm does it
        >>> recalibrate_batchnorm(model, optimizer, (x for x, _ in islice(train_loader, 50)))
        >>> model.eval(); accuracy = evaluate(model)
    """
    optimizer.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    training = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    count = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
        model.train()
        for batch in batches:
            if forward is None:
                model(batch)
            else:
                forward(model, batch)
            count += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for module, flag in training.items():
            module.train(flag)
    return count
