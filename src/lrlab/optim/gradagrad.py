"""GradaGrad (scalar reading): an AdaGrad-Norm step size that can also grow.

Paper: A. Defazio, B. Zhou, L. Xiao, "Grad-GradaGrad? A Non-Monotone Adaptive Stochastic Gradient
Method", arXiv:2206.06900 (2022). No official code exists.
Method page: ``docs/methods/accumulator.md``, confidence **LOW**.

RECONSTRUCTED, NOT VERIFIED AGAINST THE PAPER'S ALGORITHM 1. The paper's body could not be read;
this module implements the spec's reconstruction, which follows a third-party "simplified scalar
GradaGrad" re-implementation: the hypergradient of the loss with respect to the step size,
``-<g_k, g_{k-1}>``, decides whether the AdaGrad-Norm denominator grows (gradients disagree) or
the numerator grows (consecutive gradients agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer, StepContext
from lrlab.optim._executor import Pass, Plan, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._validation import check_bool, check_nonnegative, check_positive, check_range

__all__ = ["GradaGrad"]


@register(
    "gradagrad",
    family="accumulator",
    paper=(
        "Defazio, Zhou & Xiao, Grad-GradaGrad? A Non-Monotone Adaptive Stochastic Gradient "
        "Method, arXiv:2206.06900 (2022) [scalar reading, reconstructed]"
    ),
    summary="AdaGrad-Norm whose step size also grows when consecutive gradients agree "
    "(reconstruction)",
    supports_foreach=True,
    supports_fused=True,
    confidence="low",
    sample_kwargs=(
        {"lr": 0.5},
        {"lr": 0.1, "rho": 0.0},
        {"lr": 1.0, "r": 1.0, "rho": 1.0},
    ),
    invalid_kwargs=(
        InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"rho": -1.0}, r"rho must be in \[0, inf\), got -1\.0"),
        InvalidKwargs({"r": 1.5}, r"r must be in \[0, 1\], got 1\.5"),
        InvalidKwargs({"sharded": 1}, r"sharded must be True or False, got 1"),
    ),
    group_kwargs={"lr": 0.1},
)
class GradaGrad(AdaptiveOptimizer):
    r"""GradaGrad, scalar reading: **reconstructed, not verified against the paper's Algorithm 1**.

    Confidence: **low** (spec section 6). The paper (arXiv:2206.06900) says GradaGrad keeps
    AdaGrad's mirror-descent form but accumulates the denominator so that the step size can
    grow as well as shrink; its Algorithm 1 could not be read. This class implements the spec's
    reconstruction of a third-party "simplified scalar GradaGrad":

    .. math::
        \begin{aligned}
        &\gamma \leftarrow \gamma_0,\quad A \leftarrow 0,\quad g_{\mathrm{prev}} \leftarrow 0;
            \quad \textbf{for } k = 1, 2, \dots:\\
        &\quad v = \lVert g_k \rVert^2 - \rho\, \langle g_k, g_{\mathrm{prev}} \rangle\\
        &\quad \textbf{if } v \ge 0: \ A \leftarrow A + v
            \quad \text{(AdaGrad-like: the step shrinks)}\\
        &\quad \textbf{else}: \ v \leftarrow \max(v, -r A), \quad
            \gamma \leftarrow \gamma \sqrt{1 - v / A}
            \quad \text{(gradients agree: the step grows)}\\
        &\quad x \leftarrow x - \frac{\gamma}{\sqrt{A}}\, g_k, \qquad
            g_{\mathrm{prev}} \leftarrow g_k
        \end{aligned}

    With :math:`\rho = 2`, :math:`v = \lVert g_k - g_{\mathrm{prev}}\rVert^2 -
    \lVert g_{\mathrm{prev}}\rVert^2`; :math:`-\langle g_k, g_{\mathrm{prev}}\rangle` is the
    hypergradient of the loss with respect to the previous step size. Norms and inner products
    run over all parameters (one global step size).

    What this reconstruction guarantees (and what the tests check; nothing more is claimed):
    the first step is normalised gradient descent, :math:`x_1 = x_0 - \gamma_0 g_0 / \lVert g_0
    \rVert`; :math:`A` and :math:`\gamma` never decrease and :math:`\gamma` grows by at most
    :math:`\sqrt{1 + r}` per step; with :math:`\rho = 0` it is exactly AdaGrad-Norm,
    :math:`x_{k+1} = x_k - \gamma_0 g_k / \sqrt{\sum_{i \le k} \lVert g_i\rVert^2}`.

    With several param groups group :math:`j` moves by :math:`\mathrm{lr}_j \phi / \sqrt{A}\,
    g_j`, with one global factor :math:`\phi = \gamma / \gamma_0` (``lr_factor``); with one group
    :math:`\gamma = \mathrm{lr} \cdot \phi`.

    Symbols: :math:`\gamma_0` ``lr``, :math:`\gamma` ``lr * lr_factor``
    (``statistics()["gamma"]``), :math:`A` ``statistics()["alpha_acc"]``, :math:`\rho` ``rho``,
    :math:`r` ``r``, :math:`g_{\mathrm{prev}}` ``state["prev_grad"]``, :math:`v`
    ``statistics()["v"]``, :math:`\gamma / \sqrt{A}` ``effective_lr``.

    Args:
        params: parameters or param groups.
        lr: :math:`\gamma_0`, the length of the first step, in (0, inf). Default 1e-2
            (``torch.optim.Adagrad``'s; the source gives no default).
        rho: weight :math:`\rho` of the hypergradient, in [0, inf). Default 2 (the source's
            "recommended" value); 0 gives AdaGrad-Norm.
        r: limit of the growth of :math:`\gamma` per step (factor :math:`\sqrt{1 + r}`), in
            [0, 1] (the source's range). Default 0.5 (the spec's test vector; the source gives
            no default).
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the step in two passes over memory: :math:`\lVert g\rVert^2` and
            :math:`\langle g, g_{\mathrm{prev}}\rangle` with the copy
            :math:`g_{\mathrm{prev}} \leftarrow g`, then, once the step size is known (it
            needs those global sums), the move (none while :math:`A = 0`). On CPU
            float32/float64 tensors each pass is a native multi-tensor kernel, one call for all
            tensors of a dtype (see :mod:`lrlab.optim._native`); elsewhere each tensor's pass
            is a compiled kernel (see :mod:`lrlab.optim._fused`; only with ``fused=True``:
            the first step pays the compilation), and tensors that cannot be
            viewed flat (non-contiguous, sparse) or are small take the ``foreach`` path.
        sharded: each rank owns a disjoint part of the parameters, so the norms and inner
            products are partial sums to be reduced over ranks (DTensor is detected).
        capturable: keep :math:`\phi`, :math:`A`, :math:`v` (and ``effective_lr``) as 0-d
            tensors on the parameters' device, so that the step reads nothing back to the host
            and ``torch.compile`` traces it without recompiling as they change (NOTE [device
            scalars] in ``lrlab/optim/_scalars.py``); the branch on the sign of :math:`v` is
            then a ``torch.where``, and the move runs (by 0) while :math:`A = 0`. None
            (default): True for CUDA/XPU parameters.

    .. note::
        Guards (ours): while :math:`A = 0` (every gradient so far zero) no step is taken
        (``effective_lr`` 0; the formula would divide by zero) and :math:`\gamma` cannot grow;
        a tensor without a gradient in a step counts as a zero gradient, so its
        :math:`g_{\mathrm{prev}}` is reset to 0 (the previous gradient of the whole model is
        the gradient of the previous step). Consecutive stochastic gradients come from
        different mini-batches, so :math:`\langle g_k, g_{k-1}\rangle` is a noisy
        hypergradient.

    Example:
        >>> optimizer = GradaGrad(model.parameters(), lr=0.1)
        >>> loss_fn(model(inputs), targets).backward()
        >>> optimizer.step()
    """

    has_global_statistics: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float]] = {"lr_factor": 1.0, "alpha_acc": 0.0, "v": 0.0}
    #: a capturable step keeps the run state on the device
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {
        "lr_factor": float,
        "alpha_acc": float,
        "v": float,
    }

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "rho": check.nonnegative(),
        "r": check.in_range(0.0, 1.0, "[]"),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        *,
        rho: float = 2.0,
        r: float = 0.5,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_nonnegative("rho", rho)
        check_range("r", r, 0.0, 1.0, "[]")
        check_bool("sharded", sharded)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": lr,
            "rho": rho,
            "r": r,
            "foreach": foreach,
            "fused": fused,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _update(self, context: StepContext) -> None:
        first = self.param_groups[0]
        # (group, params, grads, previous gradients, foreach) of every group with gradients
        pending: list[tuple[dict[str, Any], list[Tensor], list[Tensor], list[Tensor], bool]] = []
        # (group, plan) of the tensors whose first pass ran on the kernels: the step size needs
        # the global sums, so their move is a second pass (their g_prev already holds g)
        kernel_pending: list[tuple[dict[str, Any], Plan]] = []
        square_parts: list[Tensor] = []
        dot_parts: list[Tensor] = []
        for group in self.param_groups:
            group["effective_lr"] = 0.0
            params = []
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                elif "prev_grad" in self.state.get(p, {}):  # no gradient now: it counts as 0
                    self.state[p]["prev_grad"].zero_()
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            rows = [{"grad": p.grad, "p": p, "g_prev": self.state[p]["prev_grad"]} for p in params]
            plan = route(group, rows, (_SUMS, _MOVE))
            if plan.native or plan.compiled:
                # sums in the accumulation dtype, totals in float64, as the reference path
                sums = plan.run(_SUMS, {})
                square_parts += [part.to(torch.float64) for part in sums.parts("square")]
                dot_parts += [part.to(torch.float64) for part in sums.parts("dot")]
                kernel_pending.append((group, plan))
                params = [params[i] for i in plan.reference]
                if not params:
                    continue
            grads = _foreach.grads_of(params)
            previous = [self.state[p]["prev_grad"] for p in params]
            foreach = _foreach.resolve_foreach(group["foreach"], params)
            square_parts.append(_foreach.sum_of_squares(grads, foreach=foreach).to(torch.float64))
            dot_parts.append(_foreach.total_dot(grads, previous).to(torch.float64))
            pending.append((group, params, grads, previous, foreach))

        # every rank reaches the reduction, even one without gradients this step
        device = context.params[0].device
        zero = torch.zeros((), dtype=torch.float64, device=device)
        squares = torch.stack(square_parts).sum() if square_parts else zero
        dot = torch.stack(dot_parts).sum() if dot_parts else zero
        squares, dot = self._reduce_global([squares, dot])
        # host mode: one synchronisation; a capturable step keeps them on the device
        grad_sq, grad_dot_prev = scalar.entries(
            torch.stack([squares, dot.to(squares.device)]), self.capturable
        )

        # Python numbers, or 0-d device tensors in a capturable step (NOTE [device scalars]):
        # both branches are computed, each safe for every input, and one is chosen
        factor = self._get_global("lr_factor")
        alpha_acc = self._get_global("alpha_acc")
        v = grad_sq - first["rho"] * grad_dot_prev
        agree = (v < 0) & (alpha_acc > 0)  # the step grows (no growth while A = 0)
        # v clipped to [-r A, 0]: 1 - v / A >= 1 in either branch
        v_agree = scalar.maximum(scalar.minimum(v, 0.0), -first["r"] * alpha_acc)
        growth = scalar.sqrt(1.0 - scalar.ratio_or_zero(v_agree, alpha_acc))
        factor = scalar.where(agree, factor * growth, factor)
        alpha_acc = scalar.where(v >= 0, alpha_acc + v, alpha_acc)
        v = scalar.where(agree, v_agree, v)
        scale = scalar.ratio_or_zero(1.0, scalar.sqrt(alpha_acc))  # 0 while A = 0: no step
        for group, params, grads, previous, foreach in pending:
            step_size = group["lr"] * factor * scale
            group["effective_lr"] = step_size
            # a capturable step moves by 0 while A = 0 rather than branch on a device scalar
            moves = self.capturable or step_size > 0
            if foreach:
                if moves:
                    _foreach.add_scaled_(params, grads, -step_size)
                torch._foreach_copy_(previous, grads)
            else:
                for p, g, prev in zip(params, grads, previous, strict=True):
                    if moves:
                        scalar.add_scaled_(p, g, -step_size)
                    prev.copy_(g)
        for group, plan in kernel_pending:
            step_size = group["lr"] * factor * scale
            group["effective_lr"] = step_size
            if self.capturable or step_size > 0:
                plan.run(_MOVE, {"step_size": step_size})
        self._set_global("lr_factor", factor)
        self._set_global("alpha_acc", alpha_acc)
        self._set_global("v", v)

    def _statistics(self) -> dict[str, float]:
        factor = float(self._get_global("lr_factor"))
        return {
            "gamma": float(self.param_groups[0]["lr"]) * factor,
            "lr_factor": factor,
            "alpha_acc": float(self._get_global("alpha_acc")),
            "v": float(self._get_global("v")),
        }


# -- the passes' kernels (see :mod:`lrlab.optim._executor`) -------------------------------------

_SUMS_SCHEMA = Schema("GradaGradSums", scalars=(), sums=("square", "dot"))
_MOVE_SCHEMA = Schema("GradaGradMove", scalars=("step_size",))


@kernel
def _gradagrad_sums(grad: Tensor, previous: Tensor, scalars: Tensor) -> tuple[Tensor, Tensor]:
    """GradaGrad's first pass over one tensor: returns ``||g||^2`` and ``<g, g_prev>`` (in the
    scalars' dtype: float32 sums for low-precision tensors) and then sets ``g_prev = g`` in the
    same sweep (the move reads ``g`` itself, so the old ``g_prev`` is not needed after this
    pass)."""
    g = grad.to(scalars.dtype)
    square = (g * g).sum()
    dot = (g * previous.to(scalars.dtype)).sum()
    previous.copy_(grad)
    return square, dot


@kernel
def _gradagrad_move(p: Tensor, grad: Tensor, scalars: Tensor) -> None:
    """GradaGrad's second pass: ``x -= step_size g``."""
    c = _MOVE_SCHEMA.read(scalars)
    p.copy_(p.to(scalars.dtype) - c["step_size"] * grad.to(scalars.dtype))


_SUMS = Pass(
    "gradagrad", ("grad", "g_prev"), _SUMS_SCHEMA, native="gradagrad_sums", compiled=_gradagrad_sums
)
_MOVE = Pass(
    "gradagrad", ("p", "grad"), _MOVE_SCHEMA, native="gradagrad_move", compiled=_gradagrad_move
)
