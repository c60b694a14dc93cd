r"""D-Adaptation: learning-rate-free SGD, Adam and AdaGrad.

Paper: Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
arXiv:2301.07733. Method page: ``docs/methods/d-adaptation.md``. The released
package ``dadaptation==3.2`` is the numerical oracle; the constructors take its arguments, in its
order, with its defaults, so that ``lrlab.optim.DAdaptAdam`` is a drop-in replacement.

Every variant keeps a scalar :math:`d`, a running *lower bound* on the distance
:math:`D = \lVert x_0 - x_* \rVert` that starts at ``d0`` and never decreases. The estimate comes
from a weighted dual sum :math:`s` of past gradients: in the convex case
:math:`\sum_k \lambda_k \langle g_k, s_k \rangle / \lVert s_{k+1} \rVert \le D`. The step size is
``d * lr`` times the variant's normalisation, so ``lr`` is a *multiplier* (leave it at 1.0).

The machinery the variants share with Prodigy (the global scalars, the learning rate across
groups, the reductions across ranks, the fast path) is described, and lives, in
:mod:`lrlab.optim._distance`: see NOTE [D-Adaptation global scalars], NOTE [D-Adaptation
learning rates across groups], NOTE [D-Adaptation across ranks] and NOTE [D-Adaptation fast
path] there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import StepContext
from lrlab.optim._distance import (
    DistanceEstimator,
    bias_correction,
    fast_path,
    l1_norm,
    sharding,
    weight_decayed,
)
from lrlab.optim._executor import Pass, Plan, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import check_int, check_positive

__all__ = ["DAdaptAdaGrad", "DAdaptAdam", "DAdaptSGD"]

_PAPER = (
    "Defazio & Mishchenko, Learning-Rate-Free Learning by D-Adaptation, ICML 2023, arXiv:2301.07733"
)

#: DAdaptAdaGrad's initial accumulator of squared gradients (hard-coded in the package)
ADAGRAD_ALPHA_INIT = 1e-6


class _DAdaptation(DistanceEstimator):
    """What the three variants share beyond Prodigy: the named per-parameter arrays of their
    passes and the rule by which d grows."""

    #: each per-parameter array of the passes (besides ``grad`` and ``p``) -> its state key
    state_arrays: ClassVar[Mapping[str, str]] = {}

    def _initial_state(self, p: Tensor) -> dict[str, Tensor]:
        """The state of a parameter seen for the first time."""
        raise NotImplementedError

    def _rows(self, group: dict[str, Any]) -> list[dict[str, Tensor]]:
        """The named arrays of the group's parameters with a gradient."""
        rows = []
        for p, grad in self._with_grads(group):
            state = self.state[p]
            if len(state) == 0:
                state.update(self._initial_state(p))
            named = {name: state[key] for name, key in self.state_arrays.items()}
            rows.append({"grad": grad, "p": p, **named})
        return rows

    def _next_d(
        self, lr: float, d: Scalar, numerator: Scalar, denominator: Scalar
    ) -> tuple[Scalar, Scalar]:
        r"""``(d_hat, d)`` after this step: :math:`\hat d = c_d N / D` and
        :math:`d_{k+1} = \max(d_k, \min(\hat d, \rho\, d_k))`, so ``d`` never decreases nor grows
        faster than ``growth_rate``; both are kept while every group's lr is 0 (``D = 0``, only
        in a skipped capturable step, gives 0)."""
        first = self.param_groups[0]
        if not lr > 0:
            return self._globals("d_hat")[0], d
        d_hat = scalar.ratio_or_zero(float(first["d_coef"]) * numerator, denominator)
        return d_hat, scalar.maximum(d, scalar.minimum(d_hat, d * float(first["growth_rate"])))


_COMMON_INVALID = (
    InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"d0": 0.0}, r"d0 must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"growth_rate": 0.5}, r"growth_rate must be in \[1, inf\), got 0\.5"),
    InvalidKwargs({"d_coef": -1.0}, r"d_coef must be in \(0, inf\), got -1\.0"),
    InvalidKwargs({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"log_every": -1}, r"log_every must be in \[0, inf\], got -1"),
    InvalidKwargs({"sharded": 1}, r"sharded must be True or False, got 1"),
)


# -- DAdaptSGD --------------------------------------------------------------------------------


@register(
    "dadapt-sgd",
    family="d-adaptation",
    paper=_PAPER,
    summary="dual-averaging SGD whose step d*lr/||g0|| adapts d, a lower bound on ||x0 - x*||",
    oracle="dadaptation.DAdaptSGD",
    supports_foreach=True,
    supports_fused=True,
    # its default path is already a few foreach kernels: only the CPU has a fused path
    fused_compiled=False,
    sample_kwargs=(
        {"d0": 0.01},
        {"d0": 0.01, "momentum": 0.9, "weight_decay": 1e-3, "growth_rate": 1.05},
        {"d0": 1e-3, "lr": 0.5, "d_coef": 2.0},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1\.0"),
    ),
    group_kwargs={"weight_decay": 0.5},
)
class DAdaptSGD(_DAdaptation):
    r"""SGD with D-Adaptation (dual averaging, the released ``DAdaptSGD``).

    .. math::
        \begin{aligned}
        &\lambda_k = d_k\,\gamma / \lVert g_0 \rVert, \qquad
            g_k = \nabla f(x_k) + \omega\, x_k\\
        &N_{k+1} = N_k + \lambda_k \langle g_k, s_k \rangle, \qquad
            s_{k+1} = s_k + \lambda_k g_k\\
        &\hat d_{k+1} = c_d\, \frac{2 N_{k+1}}{\lVert s_{k+1} \rVert_2}, \qquad
            d_{k+1} = \max\!\big(d_k, \min(\hat d_{k+1}, \rho\, d_k)\big)\\
        &z_{k+1} = x_0 - s_{k+1}, \qquad x_{k+1} = \mu\, x_k + (1 - \mu)\, z_{k+1}
        \end{aligned}

    Sums and norms run over every parameter with a gradient in groups with ``lr > 0``.
    :math:`\lVert g_0 \rVert` is the norm of the first step's gradient *without* weight decay (as
    in the package). With :math:`\mu = 0` the iterate is the dual-averaging point
    :math:`x_0 - s_{k+1}`; :math:`\mu > 0` is primal averaging, not heavy-ball momentum. The
    estimate is twice the paper's Algorithm 1 bound, as in the code since v1 (spec 1.0).

    Symbols: :math:`\gamma` ``lr`` (the largest group lr), :math:`d_k` ``d``, :math:`\hat d`
    ``d_hat``, :math:`N` ``numerator_weighted``, :math:`\lVert g_0 \rVert` ``g0_norm``,
    :math:`\lVert s \rVert_2` ``s_norm`` (all global, in every group and in ``statistics()``),
    :math:`s_k, x_0` ``state["s"]``, ``state["x0"]``, :math:`\omega` ``weight_decay``,
    :math:`\mu` ``momentum``, :math:`\rho` ``growth_rate``, :math:`c_d` ``d_coef``.
    ``effective_lr`` is :math:`\lambda_k` (the weight of this step's gradient, the package's
    ``dlr``) in groups with ``lr > 0``, else 0.

    Args:
        params: parameters or param groups.
        lr: multiplier of the adapted step, in (0, inf); leave at 1.0. A group may set 0.
        momentum: primal-averaging coefficient :math:`\mu`, in [0, 1). Global.
        weight_decay: coupled L2 coefficient :math:`\omega`, in [0, inf); per group (see notes).
        log_every: accepted for compatibility and ignored: lrlab never logs; read
            ``statistics()`` (``d``, ``d_hat``, ``effective_lr``, the sums) instead.
        d0: initial lower bound :math:`d_0`, in (0, inf). Raise it (1e-5 .. 1e-3) if ``d``
            stays tiny.
        growth_rate: largest factor :math:`\rho` by which ``d`` may grow per step, in [1, inf];
            e.g. 1.02 acts as a warmup.
        fsdp_in_use: the package's flag for sharded parameters; the same as ``sharded=True``.
        d_coef: lrlab extension (the package has no such argument): multiplies the estimate
            :math:`\hat d`, in (0, inf), like Prodigy's ``d_coef``. 1.0 is the package.
        sharded: each rank owns a disjoint part of the parameters, so the sums are partial and
            reduced over ranks (not needed under DDP; DTensors and FSDP-1 are detected).
        foreach: None (default) takes the fast path for dense CPU/CUDA tensors, False the
            package's operations (see NOTE [D-Adaptation fast path]).
        fused: True runs the step, on CPU float32/float64 tensors, as native multi-tensor
            kernels: one call per pass for all tensors of a dtype (see
            :mod:`lrlab.optim._native`), two passes over memory (the dual sum with its two
            sums, then the parameter update, which waits for the step's skip decision). Other
            tensors (CUDA, bfloat16, non-contiguous) take the fast eager path.
        capturable: keep ``d``, the step counter and the running sums as 0-d tensors on the
            parameters' device, so that the step reads nothing back to the host and
            ``torch.compile`` traces it without recompiling as they change (NOTE [device
            scalars] in ``lrlab/optim/_scalars.py``, NOTE [D-Adaptation capturable step]).
            None (default): True for CUDA/XPU parameters. Without a branch on ``k`` this step
            reduces ``||g||`` every step (one more read of the gradients).

    .. note::
        Deviations from ``dadaptation==3.2`` (spec 1.1, 1.7), identical numbers otherwise:
        ``weight_decay`` is per group (the package applies the first group's to all groups);
        ``p.grad`` is never modified (the package adds the decay in place); a step whose
        gradients are all zero, or whose ``lr`` is 0 everywhere, is a no-op (the package raises
        ``ZeroDivisionError`` or ``UnboundLocalError``); the numerator is stored as a global
        value and only its per-step increment is reduced, on the parameters' device, by every
        rank (the package reduces the running local value on ``.cuda()``); ``z`` is not stored
        (it is recomputed from ``x0 - s``). Settings the package reads from the first group only
        (``momentum``, ``growth_rate``, ``d0``, ``d_coef``) must be equal in every group.

    Example:
        >>> optimizer = DAdaptSGD(model.parameters(), lr=1.0, momentum=0.9)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
        >>> optimizer.statistics()["d"]
    """

    global_defaults: ClassVar[dict[str, float | int]] = {
        "d": 1e-6,
        "d_hat": 0.0,
        "numerator_weighted": 0.0,
        "s_norm": 0.0,
        "g0_norm": 0.0,
        "k": 0,
    }
    #: the run state a capturable step keeps on the device (NOTE [D-Adaptation capturable step])
    capturable_scalars = scalar.checkpoint_types(global_defaults)
    global_settings = (*DistanceEstimator.global_settings, "momentum")
    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "momentum": check.in_range(0.0, 1.0, "[)")
    }
    state_arrays: ClassVar[Mapping[str, str]] = {"s": "s", "x0": "x0"}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0,
        log_every: int = 0,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        *,
        d_coef: float = 1.0,
        sharded: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        # the settings kept in the groups are checked by the declared rules
        check_positive("lr", lr)
        check_int("log_every", log_every, 0)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "d0": d0,
            "growth_rate": growth_rate,
            "d_coef": d_coef,
            "sharded": sharding(fsdp_in_use, sharded),
            "foreach": foreach,
            "fused": check_fused(fused, foreach),
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _update(self, context: StepContext) -> None:
        lr = self._common_lr()
        first = self.param_groups[0]
        capturable = self.capturable
        k, d, numerator, g0_norm = self._globals("k", "d", "numerator_weighted", "g0_norm")
        plans = [
            (group, route(group, self._rows(group), _SGD_PASSES)) for group in self.param_groups
        ]
        live = [(group, plan) for group, plan in plans if group["lr"] > 0]

        if not capturable and k == 0:
            # ||g0|| is needed before the first gradient enters s: reduce it with the squared
            # norm of the (decayed) gradient, from which ||s_1||^2 = lambda_0^2 ||g'_0||^2
            raw_sq, decayed_sq, decayed = self._norms(live, decay=True)
            g0_sq, decayed_sq_total = self._global_sums(raw_sq, decayed_sq)
            g0_norm = math.sqrt(g0_sq)
            lam = scalar.ratio_or_zero(d * lr, g0_norm)
            s_sq = lam * lam * decayed_sq_total
            if g0_norm == 0.0 or s_sq == 0.0:  # the package divides by ||g0|| = 0
                self._stops(True)
                return
            sums = [plan.rows[i]["s"] for _, plan in live for i in plan.reference]
            for s, g in zip(sums, decayed, strict=True):
                scalar.add_scaled_(s, g, lam)
            for group, plan in live:
                # s is zero: its sums are not needed, s_1 = lam g'_0 is
                plan.run(_SGD_DUAL, {"weight_decay": group["weight_decay"], "lam": lam})
            # s_0 = 0, so the numerator gets no increment and d_hat = 0 at the first step
        else:
            if capturable:
                # no branch on k (NOTE [D-Adaptation capturable step]): ||g|| every step, kept
                # as ||g0|| where k == 0; s_0 = 0 makes the rest of the first step this branch
                (g0_sq,) = self._global_sums(self._norms(live, decay=False)[0])
                g0_norm = scalar.where(k == 0, scalar.sqrt(g0_sq), g0_norm)
            lam = scalar.ratio_or_zero(d * lr, g0_norm)  # lam = 0 while ||g0|| is 0: skipped
            dots, squares = [], []
            for group, plan in live:
                fast = fast_path(group)
                for i in plan.reference:
                    p, grad, s = plan.rows[i]["p"], plan.rows[i]["grad"], plan.rows[i]["s"]
                    g = weight_decayed(grad, p, group["weight_decay"])
                    dots.append(_foreach.total_dot([g], [s]) * lam)
                    scalar.add_scaled_(s, g, lam)
                    flat = s.reshape(-1)
                    squares.append(torch.dot(flat, flat) if fast else (s * s).sum())
                dual = plan.run(_SGD_DUAL, {"weight_decay": group["weight_decay"], "lam": lam})
                dots += dual.parts("dot")
                squares += dual.parts("s_sq")
            increment, s_sq = self._global_sums(dots, squares)
            numerator = numerator + increment
        # nothing took part (lr 0 everywhere, or zero gradients)
        skip = s_sq == 0.0
        if self._stops(skip):
            return

        # twice the paper's bound, as the package since v1 (spec 1.0)
        d_hat, d = self._next_d(lr, d, 2.0 * numerator, scalar.sqrt(s_sq))

        # x = (1 - c) x + c z, z = x0 - s; c = 0 keeps x in a skipped capturable step
        c = scalar.where(skip, 0.0, 1.0 - float(first["momentum"]))
        for group, plan in plans:
            plan.run(_SGD_STEP, {"c": c})
            fast = fast_path(group)
            for i in plan.reference:
                p, x0, s = plan.rows[i]["p"], plan.rows[i]["x0"], plan.rows[i]["s"]
                if fast and not capturable and c == 1.0:
                    # x = z = x0 - s written in place: no temporary, no pass over the old x
                    torch.sub(x0, s, out=p)
                elif fast:
                    scalar.add_scaled_(scalar.add_scaled_(p.mul_(1.0 - c), x0, c), s, -c)
                else:
                    scalar.add_scaled_(p.mul_(1.0 - c), x0 - s, c)
            group["effective_lr"] = scalar.where(skip, 0.0, lam) if group["lr"] > 0 else 0.0
        self._set_globals(skip, numerator_weighted=numerator, g0_norm=g0_norm, d_hat=d_hat)
        self._set_globals(skip, s_norm=scalar.sqrt(s_sq), d=d, k=k + 1)

    def _norms(
        self, live: list[tuple[dict[str, Any], Plan]], decay: bool
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The parts of this step's ``||g||^2`` without weight decay (the package's ``||g0||``)
        and, with ``decay``, of ``||g'||^2`` with the decayed gradients ``g'`` of the reference
        rows (in the parts' order: the reference rows of every group, then the kernels')."""
        rows = [
            (plan.rows[i], group["weight_decay"]) for group, plan in live for i in plan.reference
        ]
        raw_sq = [(row["grad"] * row["grad"]).sum() for row, _ in rows]
        decayed = [weight_decayed(row["grad"], row["p"], wd) for row, wd in rows if decay]
        decayed_sq = [(g * g).sum() for g in decayed]
        for group, plan in live:
            norms = plan.run(_SGD_NORMS, {"weight_decay": group["weight_decay"]})
            raw_sq += norms.parts("raw_sq")
            decayed_sq += norms.parts("decayed_sq")
        return raw_sq, decayed_sq, decayed

    def _initial_state(self, p: Tensor) -> dict[str, Tensor]:
        return {"s": torch.zeros_like(p), "x0": p.detach().clone()}


# -- DAdaptAdam -------------------------------------------------------------------------------


@register(
    "dadapt-adam",
    family="d-adaptation",
    paper=_PAPER,
    summary="Adam whose step d*lr adapts d from an EMA of weighted gradient inner products",
    oracle="dadaptation.DAdaptAdam",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"d0": 1e-2, "growth_rate": 1.02},
        {"d0": 1e-3, "decouple": True, "weight_decay": 0.01, "use_bias_correction": True},
        {"d0": 1e-3, "weight_decay": 0.01, "d_coef": 0.5},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"decouple": "yes"}, r"decouple must be True or False, got 'yes'"),
        InvalidKwargs(
            {"use_bias_correction": 0}, r"use_bias_correction must be True or False, got 0"
        ),
    ),
    group_kwargs={"layer_scale": 0.5},
)
class DAdaptAdam(_DAdaptation):
    r"""Adam with D-Adaptation (the released v3 ``DAdaptAdam``, inner-product estimate).

    .. math::
        \begin{aligned}
        &\lambda_k = d_k\, \gamma\, b_k, \qquad
            b_k = \frac{\sqrt{1 - \beta_2^{k+1}}}{1 - \beta_1^{k+1}}
            \text{ (or 1 without bias correction)}, \qquad \hat\beta = \sqrt{\beta_2}\\
        &A_k = \textstyle\sum_i r_i\, \lambda_k \big\langle g_{k,i},\,
            s_{k,i} / (\sqrt{v_{k,i}} + \epsilon_i) \big\rangle
            \quad\text{(old } s, v\text{)}\\
        &m_{k+1} = \beta_1 m_k + (1 - \beta_1)\, r\, \lambda_k g_k, \qquad
            v_{k+1} = \beta_2 v_k + (1 - \beta_2)\, g_k^2\\
        &s_{k+1} = \hat\beta s_k + (1 - \hat\beta)\, \lambda_k g_k, \qquad
            N_{k+1} = \hat\beta N_k + (1 - \hat\beta) A_k\\
        &\hat d_{k+1} = c_d\, \frac{N_{k+1}}{(1 - \hat\beta)\sum_i r_i \lVert s_{k+1,i}
            \rVert_1}, \qquad d_{k+1} = \max\!\big(d_k, \min(\hat d_{k+1}, \rho\, d_k)\big)\\
        &x_{k+1} = x_k - \omega\, \lambda_k x_k\,[\text{decouple}]
            - m_{k+1} / (\sqrt{v_{k+1}} + \epsilon)
        \end{aligned}

    The step size lives inside :math:`m`: a gradient is weighted by the :math:`\lambda` of the
    step that saw it, so a growth of :math:`d` reaches the update gradually. With coupled decay
    :math:`g_k = \nabla f(x_k) + \omega x_k`. Sums run over parameters in groups with
    ``lr > 0``; :math:`r_i` is the group's ``layer_scale``.

    Symbols: :math:`\gamma` ``lr``, :math:`d_k` ``d``, :math:`\hat d` ``d_hat``, :math:`N`
    ``numerator_weighted``, :math:`\sum r \lVert s \rVert_1` ``s_l1`` (global, in every group),
    :math:`s, m, v` ``state["s"]``, ``state["exp_avg"]``, ``state["exp_avg_sq"]``, :math:`r`
    ``layer_scale``, :math:`\omega` ``weight_decay``, :math:`\rho` ``growth_rate``, :math:`c_d`
    ``d_coef``. ``effective_lr`` is :math:`r \lambda_k` (``d * lr`` with the bias correction,
    times the group's ``layer_scale``) in groups with ``lr > 0``, else 0.

    Args:
        params: parameters or param groups. A group may set ``layer_scale`` (default 1.0, in
            [0, inf)) to scale its step (the package's per-layer alternative to group lrs).
        lr: multiplier of the adapted step, in (0, inf); leave at 1.0.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Global.
        eps: :math:`\epsilon`, in (0, inf); per group.
        weight_decay: :math:`\omega`, in [0, inf); per group.
        log_every: accepted for compatibility and ignored (lrlab never logs).
        decouple: AdamW-style decoupled decay (default False, as in the package: set True to
            replace AdamW). Global.
        use_bias_correction: multiply the step by :math:`b_k`. Global.
        d0: initial lower bound, in (0, inf).
        growth_rate: largest growth factor of ``d`` per step, in [1, inf].
        fsdp_in_use: the same as ``sharded=True``.
        d_coef: lrlab extension, multiplies :math:`\hat d`, in (0, inf); 1.0 is the package.
        sharded: the parameters are split over ranks (see :class:`DAdaptSGD`).
        foreach: fast path or the package's operations (see :class:`DAdaptSGD`).
        fused: True runs the per-tensor work as one compiled kernel (moments, statistics and the
            parameter update in one pass over memory; two passes with decoupled weight decay,
            whose update must wait for the step's skip decision; see :mod:`lrlab.optim._fused`).
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        capturable: as :class:`DAdaptSGD` (no extra work here).

    .. note::
        Deviations from ``dadaptation==3.2`` (spec 1.2, 1.7): ``p.grad`` is never modified (the
        package adds coupled decay in place); when no statistic moved (all-zero gradients, or
        ``lr`` 0 everywhere) the step is a no-op *after* the reduction, so a rank without
        gradients cannot leave the others waiting (the package returns before its collective);
        the numerator is stored as a global value and only this step's increment is reduced, on
        the parameters' device (the package reduces the running local EMA on ``.cuda()``, which
        is wrong when a checkpoint of rank 0 is loaded on every rank). As in the package, groups
        with ``lr = 0`` still receive the decoupled weight decay with :math:`\lambda_k`.

    Example:
        >>> optimizer = DAdaptAdam(model.parameters(), lr=1.0, decouple=True, weight_decay=0.05)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    global_defaults: ClassVar[dict[str, float | int]] = {
        "d": 1e-6,
        "d_hat": 0.0,
        "numerator_weighted": 0.0,
        "s_l1": 0.0,
        "k": 0,
    }
    #: the run state a capturable step keeps on the device (NOTE [D-Adaptation capturable step])
    capturable_scalars = scalar.checkpoint_types(global_defaults)
    global_settings = (
        *DistanceEstimator.global_settings,
        "betas",
        "decouple",
        "use_bias_correction",
    )
    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "betas": check.betas(),
        "decouple": check.boolean(),
        "use_bias_correction": check.boolean(),
        "layer_scale": check.nonnegative(),
    }
    state_arrays: ClassVar[Mapping[str, str]] = {"s": "s", "m": "exp_avg", "v": "exp_avg_sq"}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        log_every: int = 0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        *,
        d_coef: float = 1.0,
        sharded: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        # the settings kept in the groups are checked by the declared rules
        check_positive("lr", lr)
        check_int("log_every", log_every, 0)
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "layer_scale": 1.0,
            "decouple": decouple,
            "use_bias_correction": use_bias_correction,
            "d0": d0,
            "growth_rate": growth_rate,
            "d_coef": d_coef,
            "sharded": sharding(fsdp_in_use, sharded),
            "foreach": foreach,
            "fused": check_fused(fused, foreach),
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _update(self, context: StepContext) -> None:
        lr = self._common_lr()
        first = self.param_groups[0]
        k, d, numerator = self._globals("k", "d", "numerator_weighted")
        beta1, beta2 = first["betas"]
        decouple = bool(first["decouple"])
        lam = d * lr * bias_correction(first, k)
        root_beta2 = math.sqrt(beta2)

        # m, v, s and the increments of the numerator and of ||s||_1; with decoupled decay the
        # update must wait for the skip decision (s_l1 == 0), without it the first pass also
        # moves x (the skip changes nothing then: s_l1 == 0 means every m is zero)
        inner: list[Tensor] = []
        l1: list[Tensor] = []
        plans: list[tuple[dict[str, Any], Plan, bool]] = []
        for group in self.param_groups:
            r, eps, weight_decay = group["layer_scale"], group["eps"], group["weight_decay"]
            two_passes = decouple and weight_decay != 0
            moments = _ADAM_MOMENTS if two_passes else _ADAM_MOMENTS_AND_STEP
            rows = self._rows(group)
            # a group with lr 0 takes no part: the reference update only
            plan = route(group if group["lr"] != 0 else {}, rows, (moments, _ADAM_STEP))
            plans.append((group, plan, two_passes))
            if group["lr"] == 0:
                continue
            scalars = {
                "r_lam": r * lam,
                "coupled_decay": 0.0 if decouple else weight_decay,
                "eps": eps,
                "beta1": beta1,
                "beta2": beta2,
                "root_beta2": root_beta2,
                "lam": lam,
                "r": r,
                "move": 0.0 if two_passes else 1.0,
            }
            fast = fast_path(group)
            for i in plan.reference:
                p, grad, s, m, v = (plan.rows[i][key] for key in ("p", "grad", "s", "m", "v"))
                g = grad if decouple else weight_decayed(grad, p, weight_decay)
                # s / (sqrt(v) + eps): the same operations in both paths; the fast path writes
                # the quotient into the temporary that sqrt allocated (one temporary, not two)
                scaled = v.sqrt().add_(eps)
                scaled = torch.div(s, scaled, out=scaled) if fast else s.div(scaled)
                inner.append(_foreach.total_dot([g], [scaled]) * (r * lam))
                del scaled
                scalar.add_scaled_(m.mul_(beta1), g, r * lam * (1 - beta1))
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                scalar.add_scaled_(s.mul_(root_beta2), g, lam * (1 - root_beta2))
                l1.append(l1_norm(s, fast) * r)
            result = plan.run(moments, scalars)
            inner += result.parts("dot")
            l1 += result.parts("s_l1")

        increment, s_l1 = self._global_sums(inner, l1)
        skip = s_l1 == 0.0  # no progress: the package returns here, before its collective
        if self._stops(skip):
            return
        numerator = root_beta2 * numerator + (1 - root_beta2) * increment
        d_hat, d = self._next_d(lr, d, numerator, (1 - root_beta2) * s_l1)

        # x -= omega lam x [decouple] + m / (sqrt(v) + eps); a skipped capturable step zeroes
        # both terms: the kernels' rows take part, so their m is zero (s_l1 = 0), the others'
        # (lr 0 everywhere) need not be
        for group, plan, two_passes in plans:
            eps, weight_decay = group["eps"], group["weight_decay"]
            decay = scalar.where(skip, 0.0, weight_decay * lam)
            if two_passes:
                plan.run(_ADAM_STEP, {"decay": decay, "eps": eps})
            for i in plan.reference:
                p, m, v = plan.rows[i]["p"], plan.rows[i]["m"], plan.rows[i]["v"]
                denominator = v.sqrt().add_(eps)
                if weight_decay != 0 and decouple:
                    scalar.add_scaled_(p, p, -decay)
                if scalar.is_device(skip):
                    p.addcdiv_(m * scalar.where(skip, 0.0, -1.0), denominator)
                else:
                    p.addcdiv_(m, denominator, value=-1)
            step_size = float(group["layer_scale"]) * lam if group["lr"] > 0 else 0.0
            group["effective_lr"] = scalar.where(skip, 0.0, step_size)
        self._set_globals(skip, numerator_weighted=numerator, s_l1=s_l1, d_hat=d_hat, d=d, k=k + 1)

    def _initial_state(self, p: Tensor) -> dict[str, Tensor]:
        return {key: torch.zeros_like(p) for key in ("s", "exp_avg", "exp_avg_sq")}


# -- the passes' kernels (see :mod:`lrlab.optim._executor`) -------------------------------------

_SGD_NORMS = Pass(
    "dadaptation",
    ("grad", "p"),
    # the package's g0 norm is taken without decay
    Schema("DAdaptSgdNorms", scalars=("weight_decay",), sums=("raw_sq", "decayed_sq")),
    native="dadapt_sgd_norms",
)
_SGD_DUAL = Pass(
    "dadaptation",
    ("grad", "p", "s"),
    # dot: lam <g, s> with the old s
    Schema("DAdaptSgdDual", scalars=("weight_decay", "lam"), sums=("dot", "s_sq")),
    native="dadapt_sgd_dual",
)
_SGD_STEP = Pass(
    "dadaptation",
    ("p", "x0", "s"),
    Schema("DAdaptSgdStep", scalars=("c",)),
    native="dadapt_sgd_step",
)
_SGD_PASSES = (_SGD_NORMS, _SGD_DUAL, _SGD_STEP)

_ADAM_MOMENTS_SCHEMA = Schema(
    "DAdaptAdamMoments",
    # move: 1 to also update x (no decoupled decay), else 0
    scalars=("r_lam", "coupled_decay", "eps", "beta1", "beta2", "root_beta2", "lam", "r", "move"),
    # dot: r lam <g, s / (sqrt(v) + eps)>; s_l1: r ||s_new||_1
    sums=("dot", "s_l1"),
)
_ADAM_STEP_SCHEMA = Schema("DAdaptAdamStep", scalars=("decay", "eps"))


def _adam_moments(
    grad: Tensor, p: Tensor, s: Tensor, m: Tensor, v: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What both compiled first-pass kernels share (inlined into each when compiled): m, v and
    s updated; returns the two sums, the new m and the new v."""
    c = _ADAM_MOMENTS_SCHEMA.read(scalars)
    g = grad + c["coupled_decay"] * p
    # sums in the scalars' dtype (float32 for low-precision parameters), as the reference path
    dot = (g * (s / (v.sqrt() + c["eps"]))).to(scalars.dtype).sum() * c["r_lam"]
    m_new = m * c["beta1"] + g * (c["r_lam"] * (1 - c["beta1"]))
    v_new = v * c["beta2"] + (1 - c["beta2"]) * g * g
    s_new = s * c["root_beta2"] + g * (c["lam"] * (1 - c["root_beta2"]))
    m.copy_(m_new)
    v.copy_(v_new)
    s.copy_(s_new)
    return dot, s_new.abs().to(scalars.dtype).sum() * c["r"], m_new, v_new


@kernel
def _dadapt_adam_moments(
    grad: Tensor, p: Tensor, s: Tensor, m: Tensor, v: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    """DAdaptAdam's first pass in one sweep (the ``move`` scalar is not read: see
    :func:`_dadapt_adam_moments_and_step`)."""
    dot, s_l1, _, _ = _adam_moments(grad, p, s, m, v, scalars)
    return dot, s_l1


@kernel
def _dadapt_adam_moments_and_step(
    grad: Tensor, p: Tensor, s: Tensor, m: Tensor, v: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`_dadapt_adam_moments` and the parameter update (no decoupled decay) in one sweep.

    The reference path skips the parameter update when ``s_l1 == 0``; here it has already
    happened, which changes nothing: ``s_l1 == 0`` means every ``s`` is zero, so every gradient
    seen so far was zero (or its group's ``layer_scale`` is 0) and so is every ``m``.
    """
    dot, s_l1, m_new, v_new = _adam_moments(grad, p, s, m, v, scalars)
    p.copy_(p - m_new / (v_new.sqrt() + _ADAM_MOMENTS_SCHEMA.read(scalars)["eps"]))
    return dot, s_l1


@kernel
def _dadapt_adam_step(p: Tensor, m: Tensor, v: Tensor, scalars: Tensor) -> None:
    """DAdaptAdam's parameter update with decoupled decay (``decay``: weight decay times lam)."""
    c = _ADAM_STEP_SCHEMA.read(scalars)
    p.copy_(p - c["decay"] * p - m / (v.sqrt() + c["eps"]))


_ADAM_MOMENTS = Pass(
    "dadaptation",
    ("grad", "p", "s", "m", "v"),
    _ADAM_MOMENTS_SCHEMA,
    native="dadapt_adam_moments",
    compiled=_dadapt_adam_moments,
)
# the same native function (its "move" scalar says whether it also updates x)
_ADAM_MOMENTS_AND_STEP = dataclasses.replace(_ADAM_MOMENTS, compiled=_dadapt_adam_moments_and_step)
_ADAM_STEP = Pass(
    "dadaptation",
    ("p", "m", "v"),
    _ADAM_STEP_SCHEMA,
    native="dadapt_adam_step",
    compiled=_dadapt_adam_step,
)

_ADAGRAD_ACCUMULATE_SCHEMA = Schema(
    "DAdaptAdaGradAccumulate",
    scalars=("weight_decay", "eps", "lam"),
    # sum s^2 / (sqrt(a) + eps) and ||s||_1 before and after the update, and
    # sum g^2 / (sqrt(a_new) + eps): the caller subtracts each tensor's old sums from its new
    sums=("old_s_sq", "old_l1", "weighted", "new_s_sq", "new_l1"),
)
_ADAGRAD_MOVE_SCHEMA = Schema("DAdaptAdaGradMove", scalars=("eps", "c"))


@kernel
def _dadapt_adagrad_accumulate(
    grad: Tensor, p: Tensor, alpha: Tensor, s: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """DAdaptAdaGrad's statistics and accumulators of one tensor in one sweep. Returns
    (sum g^2 / (sqrt(a_new) + eps), the change of sum s^2 / (sqrt(a) + eps), the change of
    ||s||_1), as the reference path."""
    c = _ADAGRAD_ACCUMULATE_SCHEMA.read(scalars)
    dtype = scalars.dtype
    g = grad + c["weight_decay"] * p
    old_s_sq = (s * s / (alpha.sqrt() + c["eps"])).to(dtype).sum()
    old_l1 = s.abs().to(dtype).sum()
    alpha_new = alpha + g * g
    metric = alpha_new.sqrt() + c["eps"]
    weighted = (g * g / metric).to(dtype).sum()
    s_new = s + g * c["lam"]
    alpha.copy_(alpha_new)
    s.copy_(s_new)
    change_s = (s_new * s_new / metric).to(dtype).sum() - old_s_sq
    return weighted, change_s, s_new.abs().to(dtype).sum() - old_l1


@kernel
def _dadapt_adagrad_move(p: Tensor, x0: Tensor, s: Tensor, alpha: Tensor, scalars: Tensor) -> None:
    """``x = (1 - c) x + c (x0 - s / (sqrt(a) + eps))``. With c = 1 (no momentum)
    ``0 * x + z`` is ``z`` exactly, as the reference's copy."""
    c = _ADAGRAD_MOVE_SCHEMA.read(scalars)
    z = x0 - s / (alpha.sqrt() + c["eps"])
    p.copy_(p * (1.0 - c["c"]) + z * c["c"])


_ADAGRAD_ACCUMULATE = Pass(
    "dadaptation",
    ("grad", "p", "alpha", "s"),
    _ADAGRAD_ACCUMULATE_SCHEMA,
    native="dadapt_adagrad_accumulate",
    compiled=_dadapt_adagrad_accumulate,
    compiled_sums=("weighted", "change_s_sq", "change_l1"),
)
_ADAGRAD_MOVE = Pass(
    "dadaptation",
    ("p", "x0", "s", "alpha"),
    _ADAGRAD_MOVE_SCHEMA,
    native="dadapt_adagrad_move",
    compiled=_dadapt_adagrad_move,
)


# -- DAdaptAdaGrad ----------------------------------------------------------------------------


@register(
    "dadapt-adagrad",
    family="d-adaptation",
    paper=_PAPER,
    summary="dual-averaging AdaGrad whose step d*lr adapts d from weighted dual-sum norms",
    oracle="dadaptation.DAdaptAdaGrad",
    supports_fused=True,
    sample_kwargs=(
        {"d0": 0.01},
        {"d0": 0.01, "momentum": 0.9, "weight_decay": 1e-3},
        {"d0": 1e-3, "eps": 1e-4, "growth_rate": 1.1, "d_coef": 2.0},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
    ),
    group_kwargs={"weight_decay": 0.5},
)
class DAdaptAdaGrad(_DAdaptation):
    r"""AdaGrad with D-Adaptation (dual averaging with a diagonal AdaGrad metric).

    .. math::
        \begin{aligned}
        &\lambda_k = d_k \gamma, \qquad g_k = \nabla f(x_k) + \omega\, x_k, \qquad
            \alpha_{k+1} = \alpha_k + g_k^2, \qquad a_{k+1} = \sqrt{\alpha_{k+1}} + \epsilon\\
        &s_{k+1} = s_k + \lambda_k g_k, \qquad
            G_{k+1} = G_k + \lambda_k^2 \textstyle\sum g_k^2 / a_{k+1}\\
        &S_{k+1} = \textstyle\sum s_{k+1}^2 / a_{k+1}, \qquad
            L_{k+1} = \lVert s_{k+1} \rVert_1\\
        &\hat d_{k+1} = c_d\, \frac{S_{k+1} - G_{k+1}}{L_{k+1}}, \qquad
            d_{k+1} = \max\!\big(d_k, \min(\hat d_{k+1}, \rho\, d_k)\big)\\
        &z_{k+1} = x_0 - s_{k+1} / a_{k+1}, \qquad x_{k+1} = \mu\, x_k + (1 - \mu)\, z_{k+1}
        \end{aligned}

    with :math:`\alpha_0 = 10^{-6}` elementwise (not 0, as in the package). :math:`S` and
    :math:`L` are kept as running sums of their per-step changes, as in the package.

    Symbols: :math:`\gamma` ``lr``, :math:`d_k` ``d``, :math:`\hat d` ``d_hat``, :math:`G`
    ``gsq_weighted``, :math:`S` ``sksq_weighted``, :math:`L` ``skl1`` (global, in every group),
    :math:`\alpha, s, x_0` ``state["alphak"]``, ``state["sk"]``, ``state["x0"]``, :math:`\mu`
    ``momentum``, :math:`\omega` ``weight_decay``, :math:`\rho` ``growth_rate``, :math:`c_d`
    ``d_coef``. ``effective_lr`` is :math:`\lambda_k` in the groups that take part, else 0.

    Args:
        params: parameters or param groups.
        lr: multiplier of the adapted step, in (0, inf); leave at 1.0.
        momentum: primal-averaging coefficient :math:`\mu`, in [0, 1). Global.
        log_every: accepted for compatibility and ignored (lrlab never logs).
        weight_decay: coupled L2 coefficient, in [0, inf); per group.
        eps: :math:`\epsilon`, in (0, inf); per group. Default 1e-6 (the package's).
        d0: initial lower bound, in (0, inf).
        growth_rate: largest growth factor of ``d`` per step, in [1, inf].
        d_coef: lrlab extension, multiplies :math:`\hat d`, in (0, inf); 1.0 is the package.
        sharded: the parameters are split over ranks (the package has no distributed support
            for this variant; the increments of :math:`S, L, G` are reduced).
        fused: True runs the step in two passes over memory: the statistics and accumulator
            updates, then the parameter update (which waits for the step's skip decision). On
            CPU float32/float64 tensors each pass is a native multi-tensor kernel, one call for
            all tensors of a dtype (see :mod:`lrlab.optim._native`); elsewhere each tensor's
            pass is a compiled kernel, and tensors under 128k elements and non-contiguous ones
            stay eager (see :mod:`lrlab.optim._fused`).
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        capturable: as :class:`DAdaptSGD` (no extra work here).

    .. note::
        Deviations from ``dadaptation==3.2`` (spec 1.3): the package reads ``lr`` from the first
        group only and applies it to every group; here the rule of the other variants holds
        (the largest group lr; groups with ``lr = 0`` take no part: no accumulation, no new
        gradient), identical to the package when every group has the same lr. ``p.grad`` is
        never modified. Sparse gradients raise ``RuntimeError`` (the package's sparse path,
        with ``eps`` inside the root and no weight decay, is not implemented). The maintainers
        advise DAdaptAdam or DAdaptSGD over this variant, which adapts slowly (issue #29).

    Example:
        >>> optimizer = DAdaptAdaGrad(model.parameters(), lr=1.0)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    global_defaults: ClassVar[dict[str, float | int]] = {
        "d": 1e-6,
        "d_hat": 0.0,
        "gsq_weighted": 0.0,
        "sksq_weighted": 0.0,
        "skl1": 0.0,
        "k": 0,
    }
    #: the run state a capturable step keeps on the device (NOTE [D-Adaptation capturable step])
    capturable_scalars = scalar.checkpoint_types(global_defaults)
    global_settings = (*DistanceEstimator.global_settings, "momentum")
    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "momentum": check.in_range(0.0, 1.0, "[)")
    }
    state_arrays: ClassVar[Mapping[str, str]] = {"alpha": "alphak", "s": "sk", "x0": "x0"}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        momentum: float = 0,
        log_every: int = 0,
        weight_decay: float = 0.0,
        eps: float = 1e-6,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        *,
        d_coef: float = 1.0,
        sharded: bool = False,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        # the settings kept in the groups are checked by the declared rules
        check_positive("lr", lr)
        check_int("log_every", log_every, 0)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eps": eps,
            "d0": d0,
            "growth_rate": growth_rate,
            "d_coef": d_coef,
            "sharded": sharded,
            "fused": check_fused(fused, None),
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _update(self, context: StepContext) -> None:
        lr = self._common_lr()
        first = self.param_groups[0]
        k, d = self._globals("k", "d")
        g_weighted, s_sq, l1 = self._globals("gsq_weighted", "sksq_weighted", "skl1")
        lam = d * lr

        # the accumulators and the changes of the three sums behind d_hat; the package lets
        # every group take part (with the first group's lr); a group with lr 0 below the largest
        # lr opts out (NOTE [... learning rates across groups])
        changes_s: list[Tensor] = []
        changes_l1: list[Tensor] = []
        weighted_g: list[Tensor] = []
        plans: list[tuple[dict[str, Any], Plan]] = []
        for group in self.param_groups:
            eps, weight_decay = group["eps"], group["weight_decay"]
            plan = route(group, self._rows(group), (_ADAGRAD_ACCUMULATE, _ADAGRAD_MOVE))
            plans.append((group, plan))
            if group["lr"] != lr:
                continue
            for i in plan.reference:
                p, grad, alpha, s = (plan.rows[i][key] for key in ("p", "grad", "alpha", "s"))
                g = weight_decayed(grad, p, weight_decay)
                old_s_sq = (s * s).div_(alpha.sqrt().add_(eps)).sum()
                old_l1 = s.abs().sum()
                alpha.add_(g * g)
                metric = alpha.sqrt().add_(eps)
                weighted_g.append((g * g).div_(metric).sum())
                scalar.add_scaled_(s, g, lam)
                changes_s.append((s * s).div_(metric).sum() - old_s_sq)
                changes_l1.append(s.abs().sum() - old_l1)
            scalars = {"weight_decay": weight_decay, "eps": eps, "lam": lam}
            result = plan.run(_ADAGRAD_ACCUMULATE, scalars)
            weighted_g += [sums["weighted"] for sums in result.compiled]
            changes_s += [sums["change_s_sq"] for sums in result.compiled]
            changes_l1 += [sums["change_l1"] for sums in result.compiled]
            # each tensor's change is its new sum minus its old one, as the reference path
            weighted_g += result.native_totals(lambda sum: sum("weighted"))
            changes_s += result.native_totals(lambda sum: sum("new_s_sq") - sum("old_s_sq"))
            changes_l1 += result.native_totals(lambda sum: sum("new_l1") - sum("old_l1"))

        change_s, change_l1, g_sq = self._global_sums(changes_s, changes_l1, weighted_g)
        s_sq = s_sq + change_s
        l1 = l1 + change_l1
        skip = l1 == 0.0  # no progress (the package returns here too)
        if self._stops(skip):
            return
        g_weighted = g_weighted + lam * lam * g_sq
        d_hat, d = self._next_d(lr, d, s_sq - g_weighted, l1)

        # x = (1 - c) x + c z, z = x0 - s / (sqrt(alpha) + eps); c = 0 keeps x when skipped
        momentum = float(first["momentum"])
        c = scalar.where(skip, 0.0, 1.0 - momentum)
        for group, plan in plans:
            eps = group["eps"]
            plan.run(_ADAGRAD_MOVE, {"eps": eps, "c": c})
            for i in plan.reference:
                p, x0, s, alpha = (plan.rows[i][key] for key in ("p", "x0", "s", "alpha"))
                z = x0 - s.div(alpha.sqrt().add_(eps))
                if momentum != 0 or scalar.is_device(c):
                    scalar.add_scaled_(p.mul_(1.0 - c), z, c)
                else:
                    p.copy_(z)
            taking_part = group["lr"] == lr and lr > 0
            group["effective_lr"] = scalar.where(skip, 0.0, lam) if taking_part else 0.0
        self._set_globals(
            skip, gsq_weighted=g_weighted, sksq_weighted=s_sq, skl1=l1, d_hat=d_hat, d=d, k=k + 1
        )

    def _initial_state(self, p: Tensor) -> dict[str, Tensor]:
        alpha = torch.full_like(p, ADAGRAD_ALPHA_INIT)
        return {"alphak": alpha, "sk": torch.zeros_like(p), "x0": p.detach().clone()}
