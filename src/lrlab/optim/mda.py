"""MDA: Modernized Dual Averaging (Jelassi & Defazio, 2020). MEDIUM confidence.

Paper: "Dual Averaging is Surprisingly Effective for Deep Learning Optimization",
arXiv:2010.10502. Method page: ``docs/methods/dual-averaging.md``. No official
code exists; the structure of the update is certain, and the constants the paper's text could
not confirm are taken from MADGRAD (Defazio & Jelassi, arXiv:2101.11075,
``facebookresearch/madgrad``), which is MDA with an AdaGrad-style denominator.

Instead of moving from the current iterate, dual averaging recomputes it from the anchor ``x0``
and a weighted sum of every gradient seen so far, with a regulariser toward ``x0`` that weakens
as ``sqrt(k)``; momentum is an average of those dual-averaged points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer, StepContext
from lrlab.optim._executor import Pass, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import check_nonnegative, check_positive, check_range

__all__ = ["MDA"]


@register(
    "mda",
    family="dual-averaging",
    paper=(
        "Jelassi & Defazio, Dual Averaging is Surprisingly Effective for Deep Learning "
        "Optimization, arXiv:2010.10502 (2020)"
    ),
    summary="Modernized Dual Averaging: x = x0 - s/sqrt(k+1), s += lr sqrt(k+1) g, momentum",
    supports_foreach=True,
    supports_fused=True,
    confidence="medium",
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "momentum": 0.0},
        {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.01},
    ),
    invalid_kwargs=(
        InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"momentum": -0.1}, r"momentum must be in \[0, 1\), got -0\.1"),
        InvalidKwargs({"weight_decay": -1.0}, r"weight_decay must be in \[0, inf\), got -1\.0"),
    ),
    group_kwargs={"lr": 0.01},
)
class MDA(AdaptiveOptimizer):
    r"""Modernized Dual Averaging (MDA). **Medium confidence** (see the notes).

    At global steps :math:`k = 0, 1, \dots`, for every tensor with a gradient :math:`g_k`
    (plus :math:`\lambda x_k`):

    .. math::
        \begin{aligned}
        &\lambda_k = \gamma_k \sqrt{k + 1}, \qquad s_{k+1} = s_k + \lambda_k\, g_k,
         \qquad s_0 = 0\\
        &\beta_{k+1} = \sqrt{k + 1}, \qquad z_{k+1} = x_0 - s_{k+1} / \beta_{k+1}\\
        &x_{k+1} = (1 - c)\, x_k + c\, z_{k+1}, \qquad c = 1 - \text{momentum}
        \end{aligned}

    so :math:`z_{k+1} = x_0 - \frac{\gamma}{\sqrt{k+1}} \sum_{i \le k} \sqrt{i + 1}\, g_i` for a
    constant :math:`\gamma`: an increasingly weighted average of the gradients with a quadratic
    regulariser toward :math:`x_0` of weight :math:`\beta_{k+1} = O(\sqrt{k})`. The first step
    with ``momentum=0`` is SGD with step :math:`\gamma`.

    Symbols: :math:`\gamma_k` ``lr`` (the group's current, possibly scheduled, value),
    :math:`\lambda_k` ``statistics()["lam"]``, :math:`s` ``state["s"]``, :math:`x_0`
    ``state["x0"]`` (a copy of the tensor at its first step), :math:`k` ``group["k"]`` (global,
    the same in every group), :math:`\lambda` ``weight_decay``.

    ``effective_lr`` is :math:`\gamma_k = \lambda_k / \beta_{k+1}`, the weight of the newest
    gradient in :math:`z_{k+1}` (the iterate itself moves a fraction :math:`c` of the way toward
    :math:`z_{k+1}` per step).

    Args:
        params: parameters or param groups.
        lr: :math:`\gamma`, in (0, inf). Default 1e-2 (MADGRAD's); not comparable to an SGD LR,
            tune it.
        momentum: in [0, 1); :math:`c = 1 - ` momentum. Default 0.9 (MADGRAD's).
        weight_decay: coupled L2 coefficient added to the gradient before it enters :math:`s`,
            in [0, inf).
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the whole step (:math:`s`, :math:`z` and the interpolation) in a
            single pass over memory, as every scalar of the step is known before it: on CPU
            float32/float64 tensors as a native multi-tensor kernel, one call for all tensors
            of a dtype (see :mod:`lrlab.optim._native`); elsewhere as one compiled kernel per
            tensor (see :mod:`lrlab.optim._fused`; the first step pays the compilation).
            Tensors that cannot be viewed flat (non-contiguous, sparse) or, off the CPU, are
            small take the ``foreach`` path.
        capturable: keep the step counter :math:`k` as a 0-d tensor on the parameters'
            device, so that :math:`\lambda_k` and :math:`1/\beta_{k+1}` are computed there and
            ``torch.compile`` traces the step as one graph after the non-finite guard without a
            guard on :math:`k` (NOTE [device scalars] in ``lrlab/optim/_scalars.py``; a
            checkpoint holds a plain number). None (default): True for CUDA/XPU parameters.

    .. note::
        Confidence is **medium** (spec ``defazio_family.md`` section 6): no official MDA code
        exists and the paper's text could not be checked line by line. The dual-averaging
        structure (:math:`\lambda_k = \gamma \sqrt{k+1}`, :math:`\beta_{k+1} = \sqrt{k+1}`,
        :math:`z = x_0 - s/\beta`) is the paper's. Taken from MADGRAD's conventions instead: (1)
        momentum as a constant interpolation :math:`x \leftarrow (1-c) x + c z` with
        :math:`c = 1 - ` momentum and default 0.9 (the paper's momentum schedule :math:`c_k` is
        not confirmed); (2) weight decay coupled, added to the gradient before it enters
        :math:`s` (MADGRAD's default, non-decoupled form); (3) the step counter :math:`k` is
        global (one count of optimizer steps), so a tensor first stepped at step :math:`k` gets
        :math:`x_0` = its value then and :math:`\lambda_k` of that global :math:`k`; (4) tensors
        without a gradient in a step are left untouched; (5) default ``lr`` = 1e-2. Not taken
        from MADGRAD: the ``eps`` it adds to ``lr`` (MDA has no denominator to protect, and
        ``lr`` > 0 is enforced), and its optional decoupled weight decay.

    Example:
        >>> optimizer = MDA(model.parameters(), lr=0.01, momentum=0.9)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    global_defaults: ClassVar[dict[str, float | int]] = {"k": 0}
    #: a capturable step keeps k on the device (NOTE [device scalars] in _scalars.py)
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {"k": int}
    #: torch.compile traces the step (NOTE [torch.compile and the step]); one break: the guard
    traceable_step: ClassVar[bool] = True

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "momentum": check.in_range(0.0, 1.0, "[)"),
        "weight_decay": check.nonnegative(),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_range("momentum", momentum, 0.0, 1.0, "[)")
        check_nonnegative("weight_decay", weight_decay)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "fused": fused,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _update(self, context: StepContext) -> None:
        # a Python int, or a 0-d device tensor in a capturable step (then beta, lam too)
        k = self._get_global("k")
        beta = scalar.sqrt(k + 1)
        for group in self.param_groups:
            lam = group["lr"] * beta  # lambda_k = lr sqrt(k + 1)
            group["effective_lr"] = float(group["lr"])
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["x0"] = p.detach().clone(memory_format=torch.preserve_format)
            # every scalar of the step is known before it (no global reduction): one pass
            rows = [
                {"grad": p.grad, "p": p, "s": self.state[p]["s"], "x0": self.state[p]["x0"]}
                for p in params
            ]
            plan = route(group, rows, (_STEP,))
            scalars = {
                "weight_decay": group["weight_decay"],
                "lam": lam,
                # -1 / beta in Python double, as the reference path has it
                "inverse_beta": -1.0 / beta,
                "c": 1.0 - group["momentum"],
            }
            plan.run(_STEP, scalars)
            params = [params[i] for i in plan.reference]
            if not params:
                continue
            foreach = _foreach.resolve_foreach(group["foreach"], params)
            _mda_step(
                params,
                _foreach.grads_of(params),
                [self.state[p]["s"] for p in params],
                [self.state[p]["x0"] for p in params],
                group,
                lam=lam,
                beta=beta,
                foreach=foreach,
            )
        self._set_global("k", k + 1)

    def _statistics(self) -> dict[str, float]:
        k = int(self._get_global("k"))
        if k == 0:
            return {"k": 0.0, "lam": 0.0}
        # lambda of the last step taken (k - 1), for the first group
        return {"k": float(k), "lam": float(self.param_groups[0]["lr"]) * math.sqrt(k)}


def _mda_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    sums: list[torch.Tensor],
    anchors: list[torch.Tensor],
    group: dict[str, Any],
    *,
    lam: Scalar,
    beta: Scalar,
    foreach: bool,
) -> None:
    weight_decay, c = group["weight_decay"], 1.0 - group["momentum"]
    if foreach:
        if weight_decay != 0:
            grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
        _foreach.add_scaled_(sums, grads, lam)
        # z = x0 - s / beta (a device 1 / beta multiplied in: alpha= would read it back)
        if isinstance(beta, Tensor):
            points = torch._foreach_add(anchors, torch._foreach_mul(sums, -1.0 / beta))
        else:
            points = torch._foreach_add(anchors, sums, alpha=-1.0 / beta)
        if c == 1.0:
            torch._foreach_copy_(params, points)
        else:
            torch._foreach_lerp_(params, points, c)
        return
    for p, g, s, x0 in zip(params, grads, sums, anchors, strict=True):
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        scalar.add_scaled_(s, g, lam)
        z = x0 + s * (-1.0 / beta) if isinstance(beta, Tensor) else x0.add(s, alpha=-1.0 / beta)
        if c == 1.0:
            p.copy_(z)
        else:
            p.lerp_(z, c)


_STEP_SCHEMA = Schema("MdaStep", scalars=("weight_decay", "lam", "inverse_beta", "c"))


@kernel
def _mda_tensor_step(grad: Tensor, p: Tensor, s: Tensor, x0: Tensor, scalars: Tensor) -> None:
    """One MDA step of one tensor (NOTE [fused kernels] in lrlab.optim._fused).

    Low-precision tensors are computed in the scalars' float32 and stored back in their dtype.
    Weight decay 0.0 rather than a branch, and lerp with weight 1 (momentum 0) is exactly z, so
    the graph depends on neither setting.
    """
    c = _STEP_SCHEMA.read(scalars)
    p_old = p.to(scalars.dtype)
    g = grad.to(scalars.dtype) + c["weight_decay"] * p_old
    s_new = s.to(scalars.dtype) + c["lam"] * g
    s.copy_(s_new)
    z = x0.to(scalars.dtype) + c["inverse_beta"] * s_new  # z = x0 - s / beta
    p.copy_(torch.lerp(p_old, z, c["c"]))


_STEP = Pass(
    "mda", ("grad", "p", "s", "x0"), _STEP_SCHEMA, native="mda_step", compiled=_mda_tensor_step
)
