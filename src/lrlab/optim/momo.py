"""MoMo and MoMo-Adam: Polyak-type step sizes from a momentum model of the loss.

Paper: F. Schaipp, R. Ohana, M. Eickenberg, A. Defazio, R. M. Gower, "MoMo: Momentum Models for
Adaptive Learning Rates", ICML 2024, arXiv:2305.07583. Official code: ``fabian-sp/MoMo``, PyPI
``momo-opt`` 0.1.0 (our numerical oracle). Method page: ``docs/methods/loss-based.md``.

Averages of past losses :math:`\\bar f`, gradients :math:`d` and inner products
:math:`\\gamma = \\mathrm{avg}\\,\\langle g_j, x_j\\rangle` give a model of the loss,
:math:`\\bar f + \\langle d, x\\rangle - \\gamma`, truncated below by a known lower bound
:math:`f^*` (``lb``, 0 for most losses). The step is the proximal step on the truncated model: a
Polyak step along the momentum direction, capped by ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import SCALAR_STATE, AdaptiveOptimizer, StateEntry, StepContext
from lrlab.optim._executor import Pass, Plan, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._names import resolve_alias
from lrlab.optim._native import last_array_scalar
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import (
    check_betas,
    check_bool,
    check_nonnegative,
    check_positive,
    check_range,
)

__all__ = ["Momo", "MomoAdam"]

_PAPER = (
    "Schaipp, Ohana, Eickenberg, Defazio, Gower, MoMo: Momentum Models for Adaptive Learning "
    "Rates, ICML 2024; arXiv:2305.07583"
)

#: the named arrays of one parameter that the passes read and write
Row = Mapping[str, Tensor]
#: one row's per-tensor scalars (see the passes' schemas at the end of the module)
TensorScalars = dict[str, Scalar]


def scalar_loss(loss: Tensor, name: str) -> Tensor:
    """The mini-batch loss as a 0-d float64 tensor; a loss with several elements is an error."""
    if loss.numel() != 1:
        raise ValueError(
            f"{name}.step needs the scalar mini-batch loss, got a tensor of shape "
            f"{tuple(loss.shape)} (reduce it, e.g. with .mean())"
        )
    return loss.detach().reshape(()).to(torch.float64)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``<a, b>`` as a 0-d tensor in the accumulation dtype of ``a``."""
    acc = _foreach.accumulation_dtype(a.dtype)
    return torch.dot(a.reshape(-1).to(acc), b.reshape(-1).to(acc))


def _stack64(values: list[Tensor], device: torch.device) -> Tensor:
    """The sum of 0-d tensors in float64 (zero for an empty list)."""
    if not values:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack([v.to(device=device, dtype=torch.float64) for v in values]).sum()


def _check_no_sparse(grads: list[Tensor], name: str) -> None:
    if any(g.is_sparse for g in grads):
        raise RuntimeError(f"{name} does not support sparse gradients")


class _MomentumModel(AdaptiveOptimizer):
    """Shared machinery of MoMo: the model's global scalars, the step size and the lower bound.

    A step is two passes over the tensors (see :mod:`lrlab.optim._executor`): the averages,
    which also return each tensor's parts of the model's sums (:math:`\\gamma_i`,
    :math:`\\langle d_i, x_i\\rangle`, :math:`\\lVert d_i\\rVert^2_{D_i^{-1}}`), and, once the
    global step size :math:`\\tau_k` is known, the move. Subclasses declare both passes (their
    schemas and kernels), their reference loops, their scalars, the bias correction
    :math:`\\rho_k` and the loss average :math:`\\bar f_k`.
    """

    needs_loss: ClassVar[bool] = True
    has_global_statistics: ClassVar[bool] = True
    #: the per-tensor average of <g, x>
    state_layout: ClassVar[Mapping[str, StateEntry]] = {"grad_dot_w": SCALAR_STATE}
    global_defaults: ClassVar[dict[str, float | int]] = {
        "step": 0,
        "loss_avg": 0.0,
        "lower_bound": 0.0,
        "d_norm_sq": 0.0,
    }
    #: a capturable step keeps the model's global scalars on the device
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {
        **dict.fromkeys(("loss_avg", "lower_bound", "d_norm_sq"), float),
        "step": int,
    }

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "weight_decay": check.nonnegative(),
        "lb": check.real(),
        "use_fstar": check.boolean(),
    }

    #: the averages pass (sums: gamma, dot, norm) and the move pass
    _averages: ClassVar[Pass]
    _move: ClassVar[Pass]
    #: the state tensors that the passes' arrays name, besides "grad" and "p"
    _state_arrays: ClassVar[Mapping[str, str]]

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        # the running lower bound starts at the user's lb (it only moves with use_fstar); a
        # device scalar is filled in place, so that every group keeps sharing it
        start, lb = float(self.param_groups[0]["lb"]), self._get_global("lower_bound")
        self._set_global("lower_bound", lb.fill_(start) if isinstance(lb, Tensor) else start)

    # -- the method-specific parts ----------------------------------------------------------

    def _init_state(self, p: Tensor, g: Tensor) -> None:
        """Create the state of a tensor at its first gradient ``g``."""
        raise NotImplementedError

    def _begin(
        self, group: dict[str, Any], rows: Sequence[Row], fresh: list[bool], plan: Plan
    ) -> list[TensorScalars]:
        """Count the step and finish the state of the tensors seen for the first time
        (``fresh``) as ``plan`` routes them; return each row's tensor scalars (both passes')."""
        raise NotImplementedError

    def _average_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def _averages_reference(
        self, group: dict[str, Any], rows: Sequence[Row], foreach: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Update the averages of ``rows``; return their float64 sums (dot, gamma, norm)."""
        raise NotImplementedError

    # the model's scalars below are Python numbers, or 0-d device tensors in a capturable step
    # (NOTE [device scalars] in _scalars.py)

    def _loss_average(self, loss: Scalar, k: Scalar) -> Scalar:
        raise NotImplementedError

    def _rho(self, group: dict[str, Any], k: Scalar) -> Scalar:
        raise NotImplementedError

    def _move_scalars(self, group: dict[str, Any], tau: Scalar) -> dict[str, Scalar]:
        raise NotImplementedError

    def _move_reference(
        self, group: dict[str, Any], rows: Sequence[Row], tau: Scalar, foreach: bool
    ) -> None:
        """Move the parameters of ``rows`` by ``tau``."""
        raise NotImplementedError

    # -- the step ---------------------------------------------------------------------------

    def _update(self, context: StepContext) -> None:
        name = type(self).__name__
        first = self.param_groups[0]
        # the model's scalars: Python numbers, or 0-d device tensors in a capturable step
        k = self._get_global("step") + 1
        # 1. the averages d_k (MoMo-Adam: m_k, v_k) and gamma_k of every tensor with a
        #    gradient, and the model's sums <d_k, x_k>, Gamma_k, ||d_k||^2 over all of them
        # (group, plan, tensor scalars, foreach of the reference rows) of every group that moves
        pending: list[tuple[dict[str, Any], Plan, list[TensorScalars], bool]] = []
        dot_parts: list[Tensor] = []
        gamma_parts: list[Tensor] = []
        norm_parts: list[Tensor] = []
        for group in self.param_groups:
            group["effective_lr"] = 0.0
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = _foreach.grads_of(params)
            _check_no_sparse(grads, name)
            fresh = [len(self.state[p]) == 0 for p in params]
            for p, g, new in zip(params, grads, fresh, strict=True):
                if new:
                    self._init_state(p, g)
            rows = [
                {
                    "grad": g,
                    "p": p,
                    **{a: self.state[p][key] for a, key in self._state_arrays.items()},
                }
                for p, g in zip(params, grads, strict=True)
            ]
            plan = route(group, rows, (self._averages, self._move))
            own = self._begin(group, rows, fresh, plan)
            fast = plan.run(self._averages, self._average_scalars(group), tensor_scalars=own)
            # per group: the kernels' parts (compiled rows, then one per native dtype), then the
            # reference rows' total. The gammas are values of their tensors' accumulation dtype,
            # added in float64 on every path.
            dots, norms = fast.parts("dot"), fast.parts("norm")
            gammas = fast.parts("gamma", dtype=torch.float64)
            foreach = False
            if plan.reference:
                # resolved over all of the group's tensors, as for a group without kernels
                foreach = _foreach.resolve_foreach(group["foreach"], params)
                reference = [rows[i] for i in plan.reference]
                dot_r, gamma_r, norm_r = self._averages_reference(group, reference, foreach)
                dots.append(dot_r)
                gammas.append(gamma_r)
                norms.append(norm_r)
            device = params[0].device
            dot_parts.append(_stack64(dots, device))
            gamma_parts.append(_stack64(gammas, device))
            norm_parts.append(_stack64(norms, device))
            pending.append((group, plan, own, foreach))

        # every rank reaches the reduction, even one without gradients this step
        device = context.params[0].device
        sums = self._reduce_global(
            [_stack64(parts, device) for parts in (dot_parts, gamma_parts, norm_parts)]
        )
        assert context.loss is not None  # needs_loss: the base class guarantees it
        loss_t = scalar_loss(context.loss, name).to(device)
        # the one host synchronisation of the step (none in a capturable step)
        loss, dot, gamma, norm = scalar.entries(torch.stack([loss_t, *sums]), self.capturable)

        # 2. the loss average f_k and, per group, the step tau_k: the proximal step on the
        #    model truncated at rho_k f^* (with use_fstar, f^* is estimated group after group)
        f_bar = self._loss_average(loss, k)
        lb = self._get_global("lower_bound")
        initial_lb = float(first["lb"])
        use_fstar = bool(first["use_fstar"])
        taus: dict[int, Scalar] = {}
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            rho = self._rho(group, k)
            c = 1 + lr * wd
            if use_fstar:
                cap = c * f_bar + dot - c * gamma
                # the model is below the bound: reset the estimate (rho > 0, c >= 1)
                lb = scalar.where(
                    cap < c * rho * lb, scalar.maximum(cap / (2 * c * rho), initial_lb), lb
                )
            numerator = c * (f_bar - rho * lb) + dot - c * gamma
            # norm == 0 only when every d is zero: the direction is zero, take the cap
            t1 = scalar.where(
                norm > 0, scalar.ratio_or_zero(scalar.maximum(numerator, 0.0), norm), math.inf
            )
            tau = scalar.minimum(lr / rho, t1)
            if use_fstar:
                h = f_bar + dot - gamma
                lb = scalar.maximum((h - 0.5 * tau * norm) / rho, initial_lb)
            taus[id(group)] = tau

        # 3. the move x_{k+1} = (x_k - tau_k d_k) / c (MoMo-Adam: d_k = m_k / D_k)
        for group, plan, own, foreach in pending:
            tau = group["effective_lr"] = taus[id(group)]
            moving = own if self._move.schema.tensor_scalars else None
            plan.run(self._move, self._move_scalars(group, tau), tensor_scalars=moving)
            if plan.reference:
                self._move_reference(group, [plan.rows[i] for i in plan.reference], tau, foreach)
        self._set_global("step", k)
        self._set_global("loss_avg", f_bar)
        self._set_global("lower_bound", lb)
        self._set_global("d_norm_sq", norm)

    def _statistics(self) -> dict[str, float]:
        return {
            "loss_avg": float(self._get_global("loss_avg")),
            "lower_bound": float(self._get_global("lower_bound")),
            "d_norm_sq": float(self._get_global("d_norm_sq")),
        }

    # -- checkpoints ------------------------------------------------------------------------

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint; ``grad_dot_w`` of low-precision parameters stays in float32.

        torch casts floating per-parameter state to the parameter's dtype on load; the scalar
        average :math:`\\gamma_i` is kept in the accumulation dtype on purpose (it enters a
        difference of large, similar numbers), so it is taken again from the checkpoint, uncast.
        """
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            if not (isinstance(index, int) and isinstance(saved, Mapping)):
                continue
            value = saved.get("grad_dot_w")
            p = params[index]
            if isinstance(value, Tensor) and value.dtype != p.dtype:
                self.state[p]["grad_dot_w"] = value.to(p.device, copy=True)


_COMMON_INVALID = (
    InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"lb": math.inf}, r"lb must be in \(-inf, inf\), got inf"),
    InvalidKwargs({"use_fstar": 1}, r"use_fstar must be True or False, got 1"),
    InvalidKwargs({"sharded": "no"}, r"sharded must be True or False, got 'no'"),
)


@register(
    "momo",
    family="loss-based",
    paper=_PAPER,
    summary="SGD with momentum whose step is a Polyak step on a momentum model of the loss",
    supports_foreach=True,
    supports_fused=True,
    oracle="momo.Momo",
    sample_kwargs=(
        {"lr": 1.0},
        {"lr": 1.0, "weight_decay": 0.01, "bias_correction": True},
        {"lr": 0.5, "beta": 0.5, "use_fstar": True},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"beta": 1.0}, r"beta must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"bias_correction": "yes"}, r"bias_correction must be True or False"),
    ),
    group_kwargs={"lr": 0.05},
)
class Momo(_MomentumModel):
    r"""MoMo: SGD with momentum and a Polyak-type adaptive step size (Momo).

    .. math::
        \begin{aligned}
        &\textbf{for } k = 1, 2, \dots \text{ (mini-batch loss } L_k \text{, gradients } g_{i,k}
            \text{ of the tensors } x_i\text{):}\\
        &\quad \text{if } k = 1:\ \bar f, d_i, \gamma_i \leftarrow 0 \text{ (bias\_correction) or }
              L_1, g_{i,1}, \langle g_{i,1}, x_{i,1}\rangle\\
        &\quad \bar f_k = \beta \bar f_{k-1} + (1-\beta) L_k, \quad
              \rho_k = 1 - \beta^k \text{ (bias\_correction) else } 1\\
        &\quad d_{i,k} = \beta d_{i,k-1} + (1-\beta) g_{i,k}, \quad
              \gamma_{i,k} = \beta \gamma_{i,k-1} + (1-\beta) \langle g_{i,k}, x_{i,k}\rangle\\
        &\quad \Gamma_k = \textstyle\sum_i \gamma_{i,k}, \quad
              \langle d_k, x_k\rangle = \sum_i \langle d_{i,k}, x_{i,k}\rangle, \quad
              \lVert d_k\rVert^2_{D_k^{-1}} = \sum_i \lVert d_{i,k}\rVert^2 \ (D_k = I)\\
        &\textbf{for every group:}\\
        &\quad c = 1 + \eta\lambda \quad (\eta = \texttt{lr},\ \lambda = \texttt{weight\_decay}
              \text{ of the group})\\
        &\quad \text{[use\_fstar] if } c \bar f_k + \langle d_k, x_k\rangle - c\Gamma_k
              < c \rho_k f^*: \quad f^* \leftarrow \max\Big(\frac{c \bar f_k + \langle d_k,
              x_k\rangle - c \Gamma_k}{2 c \rho_k}, f^*_0\Big)\\
        &\quad \tau_k = \min\Big(\frac{\eta}{\rho_k}, \frac{\big(c (\bar f_k - \rho_k f^*) +
              \langle d_k, x_k\rangle - c\,\Gamma_k\big)_+}{\lVert d_k\rVert^2_{D_k^{-1}}}\Big)\\
        &\quad \text{[use\_fstar]}\quad f^* \leftarrow \max\Big(\frac{\bar f_k + \langle d_k,
              x_k\rangle - \Gamma_k - \tau_k \lVert d_k\rVert^2_{D_k^{-1}} / 2}{\rho_k},
              f^*_0\Big)
        &\quad x_{i,k+1} = (x_{i,k} - \tau_k d_{i,k}) / c
        \end{aligned}

    :math:`\tau_k` is the proximal step on the model :math:`\max(\bar f_k + \langle d_k,
    x - x_k\rangle, \rho_k f^*)` (written with :math:`\Gamma_k`), plus the proximal operator of
    :math:`\frac{\lambda}{2}\lVert x\rVert^2`. The first step without bias correction is SPS_max
    with :math:`c = 1`: :math:`\tau_1 = \min(\eta, (L_1 - f^*)_+ / \lVert g_1\rVert^2)`.

    Symbols: :math:`\eta` ``lr``, :math:`\beta` ``beta``, :math:`\lambda` ``weight_decay``,
    :math:`f^*_0` ``lb``, :math:`f^*` ``statistics()["lower_bound"]``, :math:`\bar f`
    ``statistics()["loss_avg"]``, :math:`d_i` ``state["grad_avg"]``, :math:`\gamma_i`
    ``state["grad_dot_w"]``, :math:`\lVert d\rVert^2` ``statistics()["d_norm_sq"]``,
    :math:`\tau_k` ``effective_lr``.

    Args:
        params: parameters or param groups.
        lr: the largest step :math:`\eta`, in (0, inf). Default 1.0 (the package's; README:
            lr = 1 works broadly).
        weight_decay: :math:`\lambda`, proximal L2 (divides by :math:`1 + \eta\lambda`), in
            [0, inf). Default 0.
        beta: momentum of all averages, in [0, 1). Default 0.9. Global (the first group's).
            ``momentum`` is torch's name for it (the param group carries both; schedulers
            such as ``OneCycleLR(cycle_momentum=True)`` write ``momentum``).
        lb: known lower bound :math:`f^*` of the loss (0 for non-negative losses), finite.
            Default 0. With ``use_fstar`` it is the initial estimate and a floor. Global.
        bias_correction: start the averages at 0 and divide by :math:`\rho_k = 1 - \beta^k`.
            Default False. Global.
        use_fstar: estimate the lower bound online (MoMo*; for losses whose minimum is not
            known). Default False. Global.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the work in two passes over memory: the averages and the tensors'
            sums, then (once the global :math:`\tau_k` is known) the move. On CPU
            float32/float64 tensors each pass is one native multi-tensor kernel call for all
            tensors of a dtype (see :mod:`lrlab.optim._native`); elsewhere the compiled kernels,
            one call per tensor (see :mod:`lrlab.optim._fused`), and non-contiguous tensors take
            the ``foreach`` path.
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: each rank owns a disjoint part of the parameters, so the sums are partial and
            reduced over ranks (not needed for DDP or DTensor, which is detected).
        capturable: keep the step counter, the loss average, the lower bound and
            :math:`\lVert d\rVert^2` as 0-d tensors on the parameters' device, so that the step
            reads nothing back to the host (the step size :math:`\tau_k` is computed there by
            selects) and ``torch.compile`` traces it as one graph after the non-finite guard
            (NOTE [device scalars] in ``lrlab/optim/_scalars.py``; a checkpoint holds plain
            numbers). None (default): True for CUDA/XPU parameters.

    All sums (:math:`\langle d, x\rangle`, :math:`\Gamma = \sum_i \gamma_i`,
    :math:`\lVert d\rVert^2`) run over every parameter with a gradient, across groups; each group
    then takes its own :math:`\tau` from its ``lr`` and ``weight_decay``. With ``use_fstar`` the
    lower-bound estimate is shared and updated group after group, in order, as in the package.

    The loss must be the scalar mini-batch loss whose gradient is used: ``step(closure)`` or
    ``loss.backward(); step(loss=loss)``. In data-parallel training pass the loss averaged over
    ranks (as the gradients are).

    .. note::
        Deviations from ``momo-opt`` 0.1.0 (spec 4.4): the step counter, :math:`\bar f` and the
        current lower bound live in the param groups (``step``, ``loss_avg``, ``lower_bound``),
        so ``state_dict()`` / ``load_state_dict()`` resume a run exactly; the package keeps them in
        instance attributes and, after a reload, re-initialises its averages as on step 1.
        Parameters without a gradient are skipped (``Momo`` of the package crashes on them) and
        their averages are initialised at their first gradient. When every :math:`d` is zero
        (:math:`\lVert d\rVert^2 = 0`) the package divides by zero; here :math:`\tau = \eta/\rho`
        (the direction is zero, so only weight decay acts). Sparse gradients are rejected.

    Example:
        >>> optimizer = Momo(model.parameters(), lr=1.0)
        >>> loss = loss_fn(model(inputs), targets)
        >>> loss.backward()
        >>> optimizer.step(loss=loss)
    """

    torch_names: ClassVar[dict[str, str]] = {"momentum": "beta"}

    #: its step traces under torch.compile without recompiles after the second step
    #: (tests/optim/test_compile.py)
    traceable_step: ClassVar[bool] = True

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "beta": check.in_range(0.0, 1.0, "[)"),
        "bias_correction": check.boolean(),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        beta: float | None = None,
        lb: float = 0.0,
        bias_correction: bool = False,
        use_fstar: bool = False,
        *,
        momentum: float | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_nonnegative("weight_decay", weight_decay)
        beta = resolve_alias("momentum", momentum, "beta", beta, 0.9)
        check_range("beta", beta, 0.0, 1.0, "[)")
        check_range("lb", lb, -math.inf, math.inf, "()")
        check_bool("bias_correction", bias_correction)
        check_bool("use_fstar", use_fstar)
        check_bool("sharded", sharded)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            # the update reads "beta"; schedulers write "momentum" (NOTE in _names.py)
            "momentum": beta,
            "beta": beta,
            "lb": float(lb),
            "bias_correction": bias_correction,
            "use_fstar": use_fstar,
            "foreach": foreach,
            "fused": fused,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    _state_arrays: ClassVar[Mapping[str, str]] = {"d": "grad_avg", "gamma": "grad_dot_w"}

    def _init_state(self, p: Tensor, g: Tensor) -> None:
        state = self.state[p]
        if self.param_groups[0]["bias_correction"]:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        else:
            state["grad_avg"] = g.clone(memory_format=torch.preserve_format)
        # 0, or <g, x> where the average starts there (set in _begin, once routed)
        state["grad_dot_w"] = torch.zeros(
            (), dtype=_foreach.accumulation_dtype(p.dtype), device=p.device
        )

    def _begin(
        self, group: dict[str, Any], rows: Sequence[Row], fresh: list[bool], plan: Plan
    ) -> list[TensorScalars]:
        starts = [0.0] * len(rows)
        if not self.param_groups[0]["bias_correction"]:
            native = {i for indices in plan.native.values() for i in indices}
            for i in (i for i, new in enumerate(fresh) if new):
                if i in native:
                    # the kernel starts gamma at <g, x> from its own sum (torch.dot's may
                    # depend on the thread count, the kernel's does not)
                    starts[i] = 1.0
                else:
                    rows[i]["gamma"].copy_(_dot(rows[i]["p"], rows[i]["grad"]))
        return [{"starts": value} for value in starts]

    def _average_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        beta = self.param_groups[0]["beta"]
        return {"beta": beta, "one_minus_beta": 1 - beta}

    def _averages_reference(
        self, group: dict[str, Any], rows: Sequence[Row], foreach: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        beta = self.param_groups[0]["beta"]
        params, grads = [row["p"] for row in rows], [row["grad"] for row in rows]
        averages, gammas = [row["d"] for row in rows], [row["gamma"] for row in rows]
        # <g_i, x_i> at the current point, before the move
        grad_dots = [_dot(p, g) for p, g in zip(params, grads, strict=True)]
        if foreach:
            torch._foreach_mul_(averages, beta)
            torch._foreach_add_(averages, grads, alpha=1 - beta)
            torch._foreach_mul_(gammas, beta)
            torch._foreach_add_(gammas, grad_dots, alpha=1 - beta)
        else:
            for d, g, gamma, grad_dot in zip(averages, grads, gammas, grad_dots, strict=True):
                d.mul_(beta).add_(g, alpha=1 - beta)
                gamma.mul_(beta).add_(grad_dot, alpha=1 - beta)
        return (
            _foreach.total_dot(params, averages).to(torch.float64),
            _stack64(gammas, params[0].device),
            _foreach.sum_of_squares(averages, foreach=foreach).to(torch.float64),
        )

    def _loss_average(self, loss: Scalar, k: Scalar) -> Scalar:
        first = self.param_groups[0]
        beta = first["beta"]
        f_bar = self._get_global("loss_avg")
        f_bar = scalar.where(k == 1, 0.0 if first["bias_correction"] else loss, f_bar)
        return beta * f_bar + (1 - beta) * loss

    def _rho(self, group: dict[str, Any], k: Scalar) -> Scalar:
        first = self.param_groups[0]
        return 1 - first["beta"] ** k if first["bias_correction"] else 1.0

    def _move_scalars(self, group: dict[str, Any], tau: Scalar) -> dict[str, Scalar]:
        lr, wd = group["lr"], group["weight_decay"]
        # 1.0 without weight decay: x / 1 is exact, and the kernels' graph stays the same
        return {"minus_tau": -tau, "divisor": 1 + lr * wd if wd > 0 else 1.0}

    def _move_reference(
        self, group: dict[str, Any], rows: Sequence[Row], tau: Scalar, foreach: bool
    ) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        params, averages = [row["p"] for row in rows], [row["d"] for row in rows]
        if foreach:
            _foreach.add_scaled_(params, averages, -tau)
            if wd > 0:
                torch._foreach_div_(params, 1 + lr * wd)
        else:
            for p, d in zip(params, averages, strict=True):
                scalar.add_scaled_(p, d, -tau)
                if wd > 0:
                    p.div_(1 + lr * wd)


@register(
    "momo-adam",
    family="loss-based",
    paper=_PAPER,
    summary="Adam whose step is a Polyak step on a momentum model of the loss (MoMo-Adam)",
    supports_foreach=True,
    supports_fused=True,
    oracle="momo.MomoAdam",
    sample_kwargs=(
        {"lr": 0.1},
        {"lr": 0.1, "weight_decay": 0.01, "divide": False},
        {"lr": 0.05, "betas": (0.8, 0.99), "use_fstar": True, "weight_decay": 0.01},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"divide": None}, r"divide must be True or False, got None"),
    ),
    group_kwargs={"lr": 0.01},
)
class MomoAdam(_MomentumModel):
    r"""MoMo-Adam: Adam directions with a Polyak-type adaptive step size (MomoAdam).

    .. math::
        \begin{aligned}
        &\textbf{for } k = 1, 2, \dots \text{ and every tensor } x_i \text{ with a gradient }
            g_i \text{ (its own step count } t_i\text{):}\\
        &\quad m_i \leftarrow \beta_1 m_i + (1-\beta_1) g_i, \quad
              v_i \leftarrow \beta_2 v_i + (1-\beta_2) g_i^2, \quad
              \gamma_i \leftarrow \beta_1 \gamma_i + (1-\beta_1) \langle g_i, x_i\rangle\\
        &\quad D_i = \sqrt{v_i / (1 - \beta_2^{t_i})} + \epsilon, \quad
              \bar f_k = (1-\beta_1) L_k + \beta_1 \bar f_{k-1} \ (\bar f_0 = 0)\\
        &\quad \Gamma_k = \textstyle\sum_i \gamma_i, \quad \langle d_k, x_k\rangle =
              \sum_i \langle m_i, x_i\rangle, \quad \lVert d_k\rVert^2_{D_k^{-1}} =
              \sum_i \langle m_i, m_i / D_i\rangle, \quad \rho_k = 1 - \beta_1^k\\
        &\textbf{for every group:}\\
        &\quad c = 1 + \eta\lambda \quad (\eta = \texttt{lr},\ \lambda = \texttt{weight\_decay}
              \text{ of the group})\\
        &\quad \text{[use\_fstar] if } c \bar f_k + \langle d_k, x_k\rangle - c\Gamma_k
              < c \rho_k f^*: \quad f^* \leftarrow \max\Big(\frac{c \bar f_k + \langle d_k,
              x_k\rangle - c \Gamma_k}{2 c \rho_k}, f^*_0\Big)\\
        &\quad \tau_k = \min\Big(\frac{\eta}{\rho_k}, \frac{\big(c (\bar f_k - \rho_k f^*) +
              \langle d_k, x_k\rangle - c\,\Gamma_k\big)_+}{\lVert d_k\rVert^2_{D_k^{-1}}}\Big)\\
        &\quad \text{[use\_fstar]}\quad f^* \leftarrow \max\Big(\frac{\bar f_k + \langle d_k,
              x_k\rangle - \Gamma_k - \tau_k \lVert d_k\rVert^2_{D_k^{-1}} / 2}{\rho_k},
              f^*_0\Big)
        &\quad x_i \leftarrow \begin{cases}
              (x_i - \tau_k\, m_i / D_i) / c & \text{divide}\\
              (1 - \eta\lambda)\, x_i - \tau_k\, m_i / D_i & \text{otherwise (AdamW-style)}
              \end{cases}
        \end{aligned}

    Symbols: :math:`\eta` ``lr``, :math:`\beta_1, \beta_2` ``betas``, :math:`\epsilon` ``eps``,
    :math:`\lambda` ``weight_decay``, :math:`f^*_0` ``lb``, :math:`m_i, v_i, \gamma_i, t_i`
    ``state["grad_avg"]``, ``state["grad_avg_sq"]``, ``state["grad_dot_w"]``,
    ``state["step"]``, :math:`\bar f` ``statistics()["loss_avg"]``, :math:`f^*`
    ``statistics()["lower_bound"]``, :math:`\tau_k` ``effective_lr``.

    Args:
        params: parameters or param groups.
        lr: the largest step :math:`\eta` (divided by :math:`\rho_k`), in (0, inf). Default 1e-2
            (the package's; README: 1e-2 or slightly smaller).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999). The loss
            average and :math:`\gamma` use :math:`\beta_1`.
        eps: :math:`\epsilon`, in (0, inf). Default 1e-8.
        weight_decay: :math:`\lambda`, in [0, inf). Default 0.
        lb: known lower bound :math:`f^*` of the loss, finite. Default 0. Global.
        divide: proximal weight decay (divide by :math:`1 + \eta\lambda`, default True) or the
            AdamW form (multiply by :math:`1 - \eta\lambda` before the step).
        use_fstar: estimate the lower bound online. Default False. Global.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the work in two passes over memory (the moments and the tensors'
            sums, then the move): native multi-tensor kernels on CPU float32/float64 tensors,
            elsewhere the compiled kernels, as in :class:`Momo`.
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: as :class:`Momo`.
        capturable: as :class:`Momo`; each tensor's step count :math:`t_i` is then a 0-d
            tensor too.

    Which parameters the sums run over, which loss to pass, and the deviations from
    ``momo-opt`` 0.1.0 are as for :class:`Momo` (see its notes).

    .. note::
        Also different from the package, only visible with param groups that differ in
        ``betas`` or with tensors whose first gradient comes after step 1: the loss average uses
        :math:`\beta_1` of the first group (the package: of the last group), and the update
        divides by the same :math:`D_i` (per-tensor step count) that entered
        :math:`\lVert d\rVert^2_{D^{-1}}` (the package recomputes :math:`D_i` for the update with
        the global step count). ``step()`` returns the loss (the package's returns None).

    Example:
        >>> optimizer = MomoAdam(model.parameters(), lr=1e-2)
        >>> loss = loss_fn(model(inputs), targets)
        >>> loss.backward()
        >>> optimizer.step(loss=loss)
    """

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "betas": check.betas(),
        "eps": check.positive(),
        "divide": check.boolean(),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        lb: float = 0.0,
        divide: bool = True,
        use_fstar: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_betas("betas", betas)
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_range("lb", lb, -math.inf, math.inf, "()")
        check_bool("divide", divide)
        check_bool("use_fstar", use_fstar)
        check_bool("sharded", sharded)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "lb": float(lb),
            "divide": divide,
            "use_fstar": use_fstar,
            "foreach": foreach,
            "fused": fused,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    capturable_counts: ClassVar[tuple[str, ...]] = ("step",)

    def _denominators(
        self, group: dict[str, Any], params: list[Tensor], foreach: bool
    ) -> list[Tensor]:
        """:math:`D_i = \\sqrt{v_i / (1 - \\beta_2^{t_i})} + \\epsilon` (fresh tensors)."""
        beta2, eps = group["betas"][1], group["eps"]
        squares = [self.state[p]["grad_avg_sq"] for p in params]
        # an int, or a 0-d tensor in a capturable step (load_state_dict keeps the mode's form)
        bias2 = [1 - beta2 ** self.state[p]["step"] for p in params]
        if foreach:
            denominators = list(torch._foreach_div(squares, bias2))
            torch._foreach_sqrt_(denominators)
            torch._foreach_add_(denominators, eps)
            return denominators
        return [v.div(b).sqrt_().add_(eps) for v, b in zip(squares, bias2, strict=True)]

    _state_arrays: ClassVar[Mapping[str, str]] = {
        "m": "grad_avg",
        "v": "grad_avg_sq",
        "gamma": "grad_dot_w",
    }

    def _init_state(self, p: Tensor, g: Tensor) -> None:
        state = self.state[p]
        state["step"] = self._new_count(p)  # a 0-d device tensor in a capturable step
        state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["grad_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # the dtype and device of <g, x> (see _dot)
        state["grad_dot_w"] = torch.zeros(
            (), dtype=_foreach.accumulation_dtype(p.dtype), device=p.device
        )

    def _begin(
        self, group: dict[str, Any], rows: Sequence[Row], fresh: list[bool], plan: Plan
    ) -> list[TensorScalars]:
        # each tensor counts its own steps t_i (for D_i's bias correction)
        beta2 = group["betas"][1]
        biases = []
        for row in rows:
            state = self.state[row["p"]]
            state["step"] += 1
            biases.append({"bias2": 1 - beta2 ** state["step"]})
        return biases

    def _average_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        beta1, beta2 = group["betas"]
        return {
            "beta1": beta1,
            "one_minus_beta1": 1 - beta1,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "eps": group["eps"],
        }

    def _averages_reference(
        self, group: dict[str, Any], rows: Sequence[Row], foreach: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        beta1, beta2 = group["betas"]
        params, grads = [row["p"] for row in rows], [row["grad"] for row in rows]
        averages, squares = [row["m"] for row in rows], [row["v"] for row in rows]
        gammas = [row["gamma"] for row in rows]
        grad_dots = [_dot(p, g) for p, g in zip(params, grads, strict=True)]
        if foreach:
            torch._foreach_mul_(averages, beta1)
            torch._foreach_add_(averages, grads, alpha=1 - beta1)
            torch._foreach_mul_(squares, beta2)
            torch._foreach_addcmul_(squares, grads, grads, value=1 - beta2)
            torch._foreach_mul_(gammas, beta1)
            torch._foreach_add_(gammas, grad_dots, alpha=1 - beta1)
        else:
            for m, v, g, gamma, grad_dot in zip(
                averages, squares, grads, gammas, grad_dots, strict=True
            ):
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                gamma.mul_(beta1).add_(grad_dot, alpha=1 - beta1)
        denominators = self._denominators(group, params, foreach)
        if foreach:
            # m / D written into D's fresh tensors: the same numbers, half the temporaries
            scaled = denominators
            for m, d in zip(averages, scaled, strict=True):
                torch.div(m, d, out=d)
        else:
            scaled = [m / d for m, d in zip(averages, denominators, strict=True)]
        return (
            _foreach.total_dot(params, averages).to(torch.float64),
            _stack64(gammas, params[0].device),
            _foreach.total_dot(averages, scaled).to(torch.float64),
        )

    def _loss_average(self, loss: Scalar, k: Scalar) -> Scalar:
        beta1 = self.param_groups[0]["betas"][0]
        return (1 - beta1) * loss + beta1 * self._get_global("loss_avg")

    def _rho(self, group: dict[str, Any], k: Scalar) -> Scalar:
        return 1 - group["betas"][0] ** k

    def _move_scalars(self, group: dict[str, Any], tau: Scalar) -> dict[str, Scalar]:
        lr, wd, divide = group["lr"], group["weight_decay"], group["divide"]
        # 1.0 for a factor that is off: x * 1 and x / 1 are exact, and the graph stays the same
        return {
            "decay": 1 - wd * lr if wd > 0 and not divide else 1.0,
            "minus_tau": -tau,
            "eps": group["eps"],
            "divisor": 1 + lr * wd if wd > 0 and divide else 1.0,
        }

    def _move_reference(
        self, group: dict[str, Any], rows: Sequence[Row], tau: Scalar, foreach: bool
    ) -> None:
        lr, wd, divide = group["lr"], group["weight_decay"], group["divide"]
        params, averages = [row["p"] for row in rows], [row["m"] for row in rows]
        # recomputed rather than kept from the averages: no second copy of v alive across groups
        denominators = self._denominators(group, params, foreach)
        if foreach:
            if wd > 0 and not divide:
                torch._foreach_mul_(params, 1 - wd * lr)
            if isinstance(tau, Tensor):  # value= would read a device tau back
                _foreach.add_scaled_(params, torch._foreach_div(averages, denominators), -tau)
            else:
                torch._foreach_addcdiv_(params, averages, denominators, value=-tau)
            if wd > 0 and divide:
                torch._foreach_div_(params, 1 + lr * wd)
        else:
            for p, m, d in zip(params, averages, denominators, strict=True):
                if wd > 0 and not divide:
                    p.mul_(1 - wd * lr)
                if isinstance(tau, Tensor):
                    scalar.add_scaled_(p, m / d, -tau)
                else:
                    p.addcdiv_(m, d, value=-tau)
                if wd > 0 and divide:
                    p.div_(1 + lr * wd)


# -- the passes' kernels (see :mod:`lrlab.optim._executor`) -------------------------------------
# The sums are taken in the scalars' dtype, the accumulation dtype of the parameter (as _dot and
# total_dot cast low-precision tensors to float32). Every first pass returns, per tensor, the
# new gamma_i, <x_i, d_i> and ||d_i||^2_{D_i^-1} (d_i = m_i for MoMo-Adam).

_SUMS = ("gamma", "dot", "norm")
_AVERAGES_SCHEMA = Schema(
    "MomoAverages",
    scalars=("beta", "one_minus_beta"),
    # 1 at a tensor's first step without bias correction, on the native path: gamma starts at
    # the kernel's own <g, x> (elsewhere _begin has set it)
    tensor_scalars=("starts",),
    sums=_SUMS,
)
_MOVE_SCHEMA = Schema("MomoMove", scalars=("minus_tau", "divisor"))  # divisor: 1 + lr wd or 1
_ADAM_MOMENTS_SCHEMA = Schema(
    "MomoAdamMoments",
    scalars=("beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "eps"),
    tensor_scalars=("bias2",),  # 1 - beta2^t of the tensor's step t
    sums=_SUMS,
)
_ADAM_MOVE_SCHEMA = Schema(
    "MomoAdamMove",
    # decay: 1 - lr wd (AdamW form) or 1; divisor: 1 + lr wd (divide) or 1
    scalars=("decay", "minus_tau", "eps", "divisor"),
    tensor_scalars=("bias2",),
)


@kernel
def _momo_averages(
    grad: Tensor, p: Tensor, d: Tensor, gamma: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Momo's averages of one tensor (gamma: a 1-element view of the 0-d state). The compiled
    rows' gamma was started by _begin: ``starts`` is for the native kernel."""
    c, acc = _AVERAGES_SCHEMA.read(scalars), scalars.dtype
    x = p.to(acc)
    d_new = d * c["beta"] + c["one_minus_beta"] * grad
    d.copy_(d_new)
    gamma_new = gamma * c["beta"] + c["one_minus_beta"] * (x * grad.to(acc)).sum()
    gamma.copy_(gamma_new)
    d_acc = d_new.to(acc)
    return gamma_new.sum(), (x * d_acc).sum(), (d_acc * d_acc).sum()


@kernel
def _momo_move(p: Tensor, d: Tensor, scalars: Tensor) -> None:
    """Momo's move ``x = (x - tau d) / (1 + lr wd)``."""
    c = _MOVE_SCHEMA.read(scalars)
    p.copy_((p + c["minus_tau"] * d) / c["divisor"])


@kernel
def _momo_adam_moments(
    grad: Tensor, p: Tensor, m: Tensor, v: Tensor, gamma: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """MoMo-Adam's moments of one tensor (gamma: a 1-element view of the 0-d state)."""
    c, acc = _ADAM_MOMENTS_SCHEMA.read(scalars), scalars.dtype
    x = p.to(acc)
    m_new = m * c["beta1"] + c["one_minus_beta1"] * grad
    v_new = v * c["beta2"] + c["one_minus_beta2"] * grad * grad
    m.copy_(m_new)
    v.copy_(v_new)
    gamma_new = gamma * c["beta1"] + c["one_minus_beta1"] * (x * grad.to(acc)).sum()
    gamma.copy_(gamma_new)
    scaled = m_new / ((v_new / c["bias2"]).sqrt() + c["eps"])
    m_acc = m_new.to(acc)
    return gamma_new.sum(), (x * m_acc).sum(), (m_acc * scaled.to(acc)).sum()


@kernel
def _momo_adam_move(p: Tensor, m: Tensor, v: Tensor, scalars: Tensor) -> None:
    """MoMo-Adam's move ``x = (decay x - tau m / D) / divisor``."""
    c = _ADAM_MOVE_SCHEMA.read(scalars)
    denominator = (v / c["bias2"]).sqrt() + c["eps"]
    p.copy_((p * c["decay"] + c["minus_tau"] * m / denominator) / c["divisor"])


Momo._averages = Pass(
    "momo",
    ("grad", "p", "d", "gamma"),
    _AVERAGES_SCHEMA,
    native="momo_averages",
    compiled=_momo_averages,
    array_lengths=last_array_scalar(4),  # gamma: one element
)
Momo._move = Pass("momo", ("p", "d"), _MOVE_SCHEMA, native="momo_move", compiled=_momo_move)
MomoAdam._averages = Pass(
    "momo",
    ("grad", "p", "m", "v", "gamma"),
    _ADAM_MOMENTS_SCHEMA,
    native="momo_adam_moments",
    compiled=_momo_adam_moments,
    array_lengths=last_array_scalar(5),
)
MomoAdam._move = Pass(
    "momo",
    ("p", "m", "v"),
    _ADAM_MOVE_SCHEMA,
    native="momo_adam_move",
    compiled=_momo_adam_move,
)
