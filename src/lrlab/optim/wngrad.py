"""WNGrad and WN-Adam: a step size 1/b with b accumulating squared gradient norms divided by b.

Paper: X. Wu, R. Ward, L. Bottou, "WNGrad: Learn the Learning Rate in Gradient Descent",
arXiv:1803.02865 (2018). Code: the first author's PyTorch fork ``xwuShirley/pytorch``
(``torch/optim/wngrad.py``, ``wnadam.py``) and ``mlpack/ensmallen`` (WNGrad).
Method page: ``docs/methods/accumulator.md``.

``b`` only grows, so the step size only shrinks; a too-small ``b0`` (too-large learning rate)
makes the first increment of ``b`` large, which corrects the step size after one step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import SCALAR_STATE, AdaptiveOptimizer, StateEntry, StepContext
from lrlab.optim._executor import Pass, Plan, Schema, route
from lrlab.optim._fused import FusedKernel, check_fused, kernel
from lrlab.optim._names import resolve_alias
from lrlab.optim._native import ArrayLengths
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import (
    check_bool,
    check_choice,
    check_nonnegative,
    check_positive,
    check_range,
)

__all__ = ["WNAdam", "WNGrad"]

Granularity = Literal["global", "tensor", "row"]
GRANULARITIES: tuple[str, ...] = ("global", "tensor", "row")

_PAPER = (
    "Wu, Ward & Bottou, WNGrad: Learn the Learning Rate in Gradient Descent, arXiv:1803.02865 "
    "(2018)"
)


def _row_dims(p: Tensor) -> tuple[int, ...] | None:
    """Dimensions summed in one block of ``granularity="row"``; None: the tensor is not adapted.

    2-D weights: one block per output row (the fan-in); weights with more dimensions (conv
    kernels): one block per (out, in) slice. 0-d and 1-d tensors (biases, norm layers) keep
    ``b = b0``, as in the authors' code.
    """
    if p.dim() <= 1:
        return None
    if p.dim() == 2:
        return (1,)
    return tuple(range(2, p.dim()))


def _b_shape(p: Tensor, granularity: str) -> tuple[int, ...]:
    """The shape of a tensor's ``b`` at ``granularity`` "tensor" or "row"."""
    dims = _row_dims(p) if granularity == "row" else None
    return () if dims is None else tuple(1 if d in dims else size for d, size in enumerate(p.shape))


class _WeightNormAccumulator(AdaptiveOptimizer):
    """Shared machinery of WNGrad and WN-Adam: the ``b`` accumulators at every granularity.

    Subclasses give the direction :math:`d` of every tensor and its step factor; the move is
    :math:`x \\leftarrow x - \\text{factor}\\cdot\\eta\\, d / b`.

    The fast paths run as passes of :mod:`lrlab.optim._executor`, which each subclass declares:
    for the global ``b``, ``_first`` (every tensor's :math:`\\lVert g\\rVert^2`, with the
    moments that do not wait for ``b``) and ``_move``; for per-tensor and per-row ``b`` the
    whole step of a tensor in one pass (its blocks' sums, ``b`` and the move), ``_one_block``
    for a tensor with one ``b`` and ``_row_blocks`` for one ``b`` per row (separate compiled
    kernels: torch specialises sizes of 1, and one function would spend dynamo's recompile limit
    on both cases).
    """

    has_global_statistics: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float]] = {"b": 1.0}
    #: a capturable step keeps the global b on the device (per-tensor and per-row b are tensors
    #: already; the step counts that give WN-Adam's bias correction are per tensor, on the host)
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {"b": float}
    capturable_counts: ClassVar[tuple[str, ...]] = ("step",)
    #: b per tensor (0-d) or per row (keepdim shape; 0-d for a tensor that is not adapted); the
    #: step count is a 0-d tensor in a capturable step
    state_layout: ClassVar[Mapping[str, StateEntry]] = {
        "b": StateEntry(shapes=lambda p, group: (_b_shape(p, group["granularity"]),)),
        "step": SCALAR_STATE,
    }

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "b0": check.positive(),
        "granularity": check.one_of(*GRANULARITIES),
        "weight_decay": check.nonnegative(),
    }

    #: the subclass's passes (see the class docstring)
    _first: ClassVar[Pass]
    _move: ClassVar[Pass]
    _one_block: ClassVar[Pass]
    _row_blocks: ClassVar[Pass]
    #: the passes' array names -> state keys, besides grad, p and b
    _state_arrays: ClassVar[Mapping[str, str]] = {}

    def _common_defaults(
        self, lr: float, b0: float, granularity: str, weight_decay: float, sharded: bool
    ) -> dict[str, Any]:
        check_positive("lr", lr)
        check_positive("b0", b0)
        check_choice("granularity", granularity, GRANULARITIES)
        check_nonnegative("weight_decay", weight_decay)
        check_bool("sharded", sharded)
        return {
            "lr": lr,
            "b0": b0,
            "granularity": granularity,
            "weight_decay": weight_decay,
            "sharded": sharded,
        }

    def _finish_init(self, b0: float) -> None:
        # the global accumulator starts at the constructor's b0 (a global scalar, NOTE [global
        # scalars live in param_groups]); per-tensor and per-row ones start at their group's b0
        self._set_global("b", float(b0))
        if self.capturable:  # one device tensor, shared by every group
            self._to_device_scalars(self.param_groups[0])
            self._set_global("b", self.param_groups[0]["b"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``granularity`` is a global setting and must match the first group's."""
        super().add_param_group(param_group)
        first, added = self.param_groups[0], self.param_groups[-1]
        if added["granularity"] != first["granularity"]:
            self.param_groups.pop()
            raise ValueError(
                f"granularity must be the same in every param group, got {added['granularity']!r}"
                f" and {first['granularity']!r}"
            )

    # -- what a subclass gives ----------------------------------------------------------------

    def _directions(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> list[Tensor]:
        """Update the method's moments (reference path); return the directions."""
        raise NotImplementedError

    def _step_factor(self, group: dict[str, Any], step: Scalar) -> Scalar:
        """The factor of a tensor's step at its ``step`` count (1, or a bias correction); the
        count is a 0-d device tensor in a capturable step."""
        raise NotImplementedError

    def _direction_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        """The scalars of the passes that compute the direction (``_first``, the blocks)."""
        raise NotImplementedError

    def _move_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        """The scalars of the global ``b``'s move pass besides the per-tensor step."""
        raise NotImplementedError

    # -- the step -----------------------------------------------------------------------------

    def _update(self, context: StepContext) -> None:
        started = [(group, self._start(group)) for group in self.param_groups]
        started = [(group, params) for group, params in started if params]
        if self.param_groups[0]["granularity"] == "global":
            self._global_step(context, started)
        else:
            self._block_step(started)

    def _start(self, group: dict[str, Any]) -> list[Tensor]:
        """The group's parameters with a gradient, their state made and their step counted."""
        group["effective_lr"] = 0.0
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                self._init_state(p, state, group)
            state["step"] += 1  # an int, or a 0-d device tensor (capturable_counts)
        return params

    def _rows(self, params: list[Tensor], with_b: bool) -> list[dict[str, Tensor]]:
        """The executor's rows of ``params``: each tensor's arrays by the passes' names."""
        rows = []
        for p in params:
            state = self.state[p]
            row = {"grad": _foreach.grad_of(p), "p": p}
            row.update({name: state[key] for name, key in self._state_arrays.items()})
            if with_b:
                row["b"] = state["b"]
            rows.append(row)
        return rows

    def _global_step(
        self, context: StepContext, started: list[tuple[dict[str, Any], list[Tensor]]]
    ) -> None:
        """One global ``b``: :math:`b \\leftarrow b + \\sum_k \\eta_k^2 \\lVert g_k\\rVert^2 / b`
        over the groups :math:`k` (and ranks), then :math:`x \\leftarrow x - (\\eta_k / b)\\,
        \\text{factor}\\, d` for every tensor."""
        # (group, its parameters, plan, the reference rows' parameters, grads, foreach)
        pending: list[tuple[dict[str, Any], list[Tensor], Plan, list[Tensor], list[Tensor], bool]]
        pending = []
        increments: list[Tensor] = []  # eta^2 ||g||^2 of every group
        for group, params in started:
            plan = route(group, self._rows(params, with_b=False), (self._first, self._move))
            fast = plan.run(self._first, self._direction_scalars(group))
            rest = [params[i] for i in plan.reference]
            foreach = _foreach.resolve_foreach(group["foreach"], rest)
            grads = _decayed_grads(group, rest, foreach)
            squares = _foreach.sum_of_squares(grads, foreach=foreach)
            parts = fast.parts("square")
            if parts:
                squares = _total([*parts, squares])
            increments.append(squares * group["lr"] ** 2)
            pending.append((group, params, plan, rest, grads, foreach))

        # every rank reaches the reduction, even one without gradients this step
        device = context.params[0].device
        total = (
            torch.stack([part.to(torch.float64) for part in increments]).sum()
            if increments
            else torch.zeros((), dtype=torch.float64, device=device)
        )
        (total,) = self._reduce_global([total])
        b = self._get_global("b")  # a Python float, or a 0-d device tensor (capturable)
        # host mode: float(total) is the one host synchronisation of the step
        b = b + (total.to(b.dtype) if self.capturable else float(total)) / b
        self._set_global("b", b)

        for group, params, plan, rest, grads, foreach in pending:
            eta = group["lr"] / b
            group["effective_lr"] = eta
            steps = [{"step": -eta * self._factor(group, p)} for p in params]  # 0-d tensors too
            plan.run(self._move, self._move_scalars(group), tensor_scalars=steps)
            if not rest:
                continue
            directions = self._directions(group, rest, grads, foreach)
            scales = [steps[i]["step"] for i in plan.reference]
            if foreach:
                torch._foreach_add_(rest, torch._foreach_mul(directions, scales))
            else:
                for p, direction, scale in zip(rest, directions, scales, strict=True):
                    scalar.add_scaled_(p, direction, scale)

    def _block_step(self, started: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        """A ``b`` per tensor or per row: :math:`b \\leftarrow b + \\eta^2 \\lVert
        g_{\\text{blk}}\\rVert^2 / b` for every block, then :math:`x \\leftarrow x - \\eta\\,
        \\text{factor}\\, d / b` (``b`` broadcast over its block)."""
        granularity = self.param_groups[0]["granularity"]
        mean_steps: list[Tensor] = []  # per group: element-weighted mean of eta / b
        for group, params in started:
            lr = group["lr"]
            rows = self._rows(params, with_b=True)
            plan = route(group, rows, (self._one_block, self._row_blocks))
            blocks = [
                {
                    "blocks": row["b"].numel(),
                    # the sum of a block enters b with lr^2 (0: a tensor whose b stays b0)
                    "rate": lr**2 if _adapted(p, granularity) else 0.0,
                    "step": -lr * self._factor(group, p),
                }
                for p, row in zip(params, rows, strict=True)
            ]
            one = [i for i, row in enumerate(rows) if row["b"].numel() == 1]
            several = [i for i, row in enumerate(rows) if row["b"].numel() != 1]
            scalars = self._direction_scalars(group)
            fast = (
                plan.run(self._one_block, scalars, tensor_scalars=blocks, only=one),
                plan.run(self._row_blocks, scalars, tensor_scalars=blocks, only=several),
            )
            # sum over the group's elements of eta / (their b): the native kernels sum 1 / b
            # over the elements of their tensors (no torch op per tensor), then the others'
            step_sums = [
                lr * part
                for result in fast
                for part in result.parts("elements_over_b", torch.float64)
            ]
            rest = [params[i] for i in plan.reference]
            if rest:
                foreach = _foreach.resolve_foreach(group["foreach"], rest)
                grads = _decayed_grads(group, rest, foreach)
                accumulators = self._update_blocks(group, rest, grads, granularity, foreach)
                directions = self._directions(group, rest, grads, foreach)
                for i, p, direction, block_b in zip(
                    plan.reference, rest, directions, accumulators, strict=True
                ):
                    # b broadcasts over its block (a 0-d tensor, or a keepdim row shape); value=
                    # would read a device scalar back: the same operations, in addcdiv's order
                    step, block_b = blocks[i]["step"], block_b.to(p.dtype)
                    if isinstance(step, Tensor):
                        p.add_(step * direction / block_b)
                    else:
                        p.addcdiv_(direction, block_b, value=step)
            # an empty tensor weighs nothing (and its empty b has no mean)
            others = [params[i] for i in (*plan.compiled, *plan.reference) if params[i].numel()]
            if others:
                accumulators = [self.state[p]["b"] for p in others]
                means = torch.stack([(lr / b.to(torch.float64)).mean() for b in accumulators])
                weights = torch.tensor([p.numel() for p in others], dtype=torch.float64)
                step_sums.append((means * weights.to(means.device)).sum())
            total = torch.stack([part.to(step_sums[0].device) for part in step_sums]).sum()
            mean_steps.append(total / sum(p.numel() for p in params))
        if mean_steps:
            values = torch.stack([part.to(mean_steps[0].device) for part in mean_steps])
            # host mode: the one host synchronisation of the step (none in a capturable one)
            entries = scalar.entries(values, self.capturable)
            for (group, _), value in zip(started, entries, strict=True):
                group["effective_lr"] = value

    def _factor(self, group: dict[str, Any], p: Tensor) -> Scalar:
        return self._step_factor(group, self.state[p]["step"])

    def _update_blocks(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        granularity: str,
        foreach: bool,
    ) -> list[Tensor]:
        """``b <- b + eta^2 ||g_blk||^2 / b`` for every block; return each tensor's ``b``."""
        lr_sq = group["lr"] ** 2
        accumulators = [self.state[p]["b"] for p in params]
        if granularity == "tensor":
            norms = _foreach.norms(grads, foreach=foreach)
            squares = [n * n for n in norms]
        else:
            squares = []
            for g, b in zip(grads, accumulators, strict=True):
                dims = _row_dims(g)
                if dims is None:  # not adapted: b stays b0
                    squares.append(torch.zeros_like(b, dtype=_foreach.accumulation_dtype(g.dtype)))
                else:
                    acc = _foreach.accumulation_dtype(g.dtype)
                    squares.append(g.to(acc).square().sum(dim=dims, keepdim=True))
        for b, square in zip(accumulators, squares, strict=True):
            old = b.to(square.dtype)
            b.copy_(old + lr_sq * square / old)
        return accumulators

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = self._new_count(p)
        granularity = group["granularity"]
        if granularity != "global":
            shape = _b_shape(p, granularity)
            state["b"] = torch.full(shape, float(group["b0"]), dtype=p.dtype, device=p.device)

    def _statistics(self) -> dict[str, float]:
        if self.param_groups[0]["granularity"] == "global":
            return {"b": float(self._get_global("b"))}
        return {}


_COMMON_INVALID = (
    InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"b0": -1.0}, r"b0 must be in \(0, inf\), got -1\.0"),
    InvalidKwargs({"granularity": "layer"}, r"granularity must be one of .*got 'layer'"),
    InvalidKwargs({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"sharded": 0}, r"sharded must be True or False, got 0"),
)

_GRANULARITY_DOC = r"""
    ``granularity`` (spec 4.2): ``"global"`` (default, the paper's theory) keeps one scalar
    :math:`b` for all parameters, with :math:`\lVert g\rVert` over all of them; ``"tensor"`` one
    :math:`b` per tensor; ``"row"`` the authors' deep-learning setting, in the spirit of weight
    normalisation: one :math:`b` per output row of a 2-D weight (norm over the fan-in), one per
    (out, in) slice of a conv kernel (norm over the spatial dimensions), while 0-d and 1-d tensors
    (biases, norm layers) keep :math:`b = b_0` for ever (not adapted). The granularity is a
    global setting (the same in every param group). For ``"tensor"`` and ``"row"``
    ``effective_lr`` is the element-weighted mean of :math:`\eta / b` over the group's tensors
    with a gradient; for ``"global"`` it is :math:`\eta / b` exactly.

    With several param groups (global granularity) every group :math:`k` contributes
    :math:`\eta_k^2 \lVert g_k\rVert^2` to the increment of the shared :math:`b`, and moves with
    :math:`\eta_k / b`: the paper's rule applied to the variables rescaled by
    :math:`\eta_k`, and exactly the paper's rule with one group.
"""


@register(
    "wngrad",
    family="accumulator",
    paper=_PAPER,
    summary="gradient descent with step lr/b, b += lr^2 ||g||^2 / b (global, per tensor or row)",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"lr": 1.0},
        {"lr": 1.0, "granularity": "tensor"},
        {"lr": 0.5, "granularity": "row", "b0": 0.5, "weight_decay": 0.01},
    ),
    invalid_kwargs=_COMMON_INVALID,
    group_kwargs={"lr": 0.1},
)
class WNGrad(_WeightNormAccumulator):
    __doc__ = (
        r"""WNGrad: gradient descent whose step size :math:`\eta / b` learns :math:`b` online.

    .. math::
        \begin{aligned}
        &b_0 > 0; \quad \textbf{for } j = 0, 1, \dots:\\
        &\quad b_{j+1} = b_j + \frac{\eta^2 \lVert g_j \rVert^2}{b_j}\\
        &\quad x_{j+1} = x_j - \frac{\eta}{b_{j+1}}\, g_j
        \end{aligned}

    (the updated :math:`b` is used for the step, as in the authors' code and ensmallen).
    :math:`\eta` is redundant in theory (:math:`b' = b / \eta` gives the paper's form with
    :math:`b'_0 = b_0 / \eta`) and kept as the user-facing knob. :math:`b` never decreases and
    :math:`b_{j+1}^2 \ge b_j^2 + 2 \eta^2 \lVert g_j \rVert^2`, so the step size decays at least as
    fast as AdaGrad-Norm's.
"""
        + _GRANULARITY_DOC
        + r"""
    Symbols: :math:`\eta` ``lr``, :math:`b_0` ``b0``, :math:`b` ``statistics()["b"]`` (global) or
    ``state["b"]`` (per tensor / per row), :math:`\eta / b` ``effective_lr``.

    Args:
        params: parameters or param groups.
        lr: :math:`\eta`, in (0, inf). Default 1e-2 (the authors' class; ensmallen uses 0.562).
            Sweep it (or ``b0``) over decades: flatness of the final loss is the selling point.
        b0: initial :math:`b`, in (0, inf). Default 1.
        granularity: ``"global"``, ``"tensor"`` or ``"row"`` (see above).
        weight_decay: coupled L2 coefficient added to the gradient before the accumulation (not
            in place), in [0, inf).
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA); with ``"row"`` the
            row norms are computed tensor by tensor on both paths.
        fused: True runs the per-tensor work as kernels. On CPU float32/float64 tensors these
            are native multi-tensor kernels (one call per pass for all tensors of a dtype; see
            :mod:`lrlab.optim._native`): ``"global"``, two passes (every tensor's
            :math:`\lVert g\rVert^2`, then, once the shared :math:`b` is known, the move);
            ``"tensor"`` and ``"row"``, one pass that does the whole step of every block of
            :math:`b` (its sum, :math:`b`, the move; a row longer than the driver's blocks is
            shared by the threads). Elsewhere (CUDA, bfloat16, non-contiguous) the compiled
            kernels of :mod:`lrlab.optim._fused`: ``"global"`` as above, ``"tensor"`` and
            ``"row"`` one kernel per tensor; small tensors there take the ``foreach`` path.
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: each rank owns a disjoint part of the parameters, so the global
            :math:`\lVert g\rVert^2` is a partial sum to be reduced over ranks (DTensor is
            detected; per-tensor and per-row blocks need no reduction).
        capturable: keep the global :math:`b` (and ``effective_lr``) as 0-d tensors on the
            parameters' device, so that the step reads nothing back to the host and
            ``torch.compile`` traces it without recompiling as :math:`b` changes (NOTE [device
            scalars] in ``lrlab/optim/_scalars.py``). None (default): True for CUDA/XPU
            parameters.

    .. note::
        The authors' code adds its ``eps`` *into the accumulator, in place, every step* in the
        no-momentum path, so :math:`b` drifts up by ``eps`` per step; we do not copy that bug
        (spec 4.5): :math:`b \ge b_0 > 0` needs no epsilon. The authors' momentum variant of
        WNGrad is not implemented. ``.grad`` is never modified.

    Example:
        >>> optimizer = WNGrad(model.parameters(), lr=0.1)
        >>> loss_fn(model(inputs), targets).backward()
        >>> optimizer.step()
    """
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        *,
        b0: float = 1.0,
        granularity: Granularity = "global",
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        defaults = self._common_defaults(lr, b0, granularity, weight_decay, sharded)
        defaults["foreach"] = foreach
        defaults["fused"] = check_fused(fused, foreach)
        defaults["capturable"] = capturable
        super().__init__(params, defaults)
        self._finish_init(b0)

    def _directions(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> list[Tensor]:
        return grads

    def _step_factor(self, group: dict[str, Any], step: Scalar) -> Scalar:
        return 1.0

    def _direction_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {"weight_decay": group["weight_decay"]}

    def _move_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {"weight_decay": group["weight_decay"]}  # the move recomputes g + wd x


@register(
    "wn-adam",
    family="accumulator",
    paper=_PAPER,
    summary="WNGrad's b accumulator with a bias-corrected momentum direction (WN-Adam)",
    supports_foreach=True,
    supports_fused=True,
    confidence="medium",
    sample_kwargs=(
        {"lr": 1.0},
        {"lr": 1.0, "granularity": "tensor", "beta": 0.5},
        {"lr": 0.5, "granularity": "row", "b0": 2.0, "weight_decay": 0.01},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"beta": 1.0}, r"beta must be in \[0, 1\), got 1\.0"),
    ),
    group_kwargs={"lr": 0.1},
)
class WNAdam(_WeightNormAccumulator):
    torch_names: ClassVar[dict[str, str]] = {"momentum": "beta"}
    _state_arrays: ClassVar[Mapping[str, str]] = {"m": "exp_avg"}

    __doc__ = (
        r"""WN-Adam: WNGrad's accumulator with a bias-corrected first-moment direction.

    .. math::
        \begin{aligned}
        &m_t = \beta m_{t-1} + (1 - \beta) g_t\\
        &b_t = b_{t-1} + \frac{\eta^2 \lVert g_t \rVert^2}{b_{t-1}}\\
        &x_t = x_{t-1} - \frac{\eta}{1 - \beta^t}\, \frac{m_t}{b_t}
        \end{aligned}

    No second-moment EMA and no epsilon (authors' ``wnadam.py``). :math:`t` is counted per
    tensor.
"""
        + _GRANULARITY_DOC
        + r"""
    Symbols: as :class:`WNGrad`; :math:`\beta` ``beta``, :math:`m` ``state["exp_avg"]``.
    ``effective_lr`` is :math:`\eta / b` (the bias correction is not included).

    Args:
        params: parameters or param groups.
        lr: :math:`\eta`, in (0, inf). Default 1.0 (the authors' WN-Adam class).
        momentum: momentum :math:`\beta`, in [0, 1). Default 0.9. ``beta`` (the paper's
            name) is accepted as an alias; schedulers write ``momentum``.
        b0, granularity, weight_decay, foreach, sharded, capturable: as :class:`WNGrad`.
        fused: as :class:`WNGrad` (native multi-tensor kernels on CPU float32/float64
            tensors, one call per pass; see :mod:`lrlab.optim._native`; elsewhere the compiled
            kernels); the momentum is updated in the first pass (it does not depend on
            :math:`b`), so the move reads only :math:`x` and :math:`m`.

    .. note::
        Confidence **medium** (spec 0): the update is the authors' code; which granularity their
        deep-learning runs used (we believe ``"row"``) is not verified against the paper. The
        default here is ``"global"``, the paper's theory.

    Example:
        >>> optimizer = WNAdam(model.parameters(), lr=1.0, granularity="row")
        >>> loss_fn(model(inputs), targets).backward()
        >>> optimizer.step()
    """
    )

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {"beta": check.in_range(0.0, 1.0, "[)")}

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        *,
        momentum: float | None = None,
        beta: float | None = None,
        b0: float = 1.0,
        granularity: Granularity = "global",
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        defaults = self._common_defaults(lr, b0, granularity, weight_decay, sharded)
        beta = resolve_alias("momentum", momentum, "beta", beta, 0.9)
        check_range("beta", beta, 0.0, 1.0, "[)")
        # the update reads "beta"; schedulers write "momentum" (NOTE in _names.py)
        defaults.update(
            {
                "momentum": beta,
                "beta": beta,
                "foreach": foreach,
                "fused": check_fused(fused, foreach),
                "capturable": capturable,
            }
        )
        super().__init__(params, defaults)
        self._finish_init(b0)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super()._init_state(p, state, group)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _directions(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> list[Tensor]:
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        if foreach:
            torch._foreach_lerp_(exp_avgs, grads, 1 - group["beta"])
        else:
            for m, g in zip(exp_avgs, grads, strict=True):
                m.lerp_(g, 1 - group["beta"])
        return exp_avgs

    def _step_factor(self, group: dict[str, Any], step: Scalar) -> Scalar:
        return 1.0 / (1.0 - group["beta"] ** step)  # t counted per tensor

    def _direction_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {"weight_decay": group["weight_decay"], "one_minus_beta": 1 - group["beta"]}

    def _move_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {}  # the momentum already holds the direction


def _adapted(p: Tensor, granularity: str) -> bool:
    """Whether ``p``'s ``b`` grows (every tensor but the 0-d and 1-d ones of ``"row"``)."""
    return granularity != "row" or _row_dims(p) is not None


def _decayed_grads(group: dict[str, Any], params: list[Tensor], foreach: bool) -> list[Tensor]:
    """The gradients with coupled weight decay: the decayed gradient feeds ``b`` and the step."""
    grads = _foreach.grads_of(params)
    weight_decay = group["weight_decay"]
    # torch._foreach_add refuses an empty list (the kernels may take every tensor)
    if weight_decay == 0 or not params:
        return grads
    if foreach:
        return list(torch._foreach_add(grads, params, alpha=weight_decay))
    return [g.add(p, alpha=weight_decay) for g, p in zip(grads, params, strict=True)]


def _total(parts: list[Tensor]) -> Tensor:
    """The sum of 0-d parts in their promoted dtype, as ``_foreach.sum_of_squares`` totals."""
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    return torch.stack([part.to(dtype) for part in parts]).sum()


# -- the passes' kernels (see :mod:`lrlab.optim._executor`) -----------------------------------
# The native kernels are in native/wngrad.cpp. The compiled ones take sums in the scalars'
# dtype, the accumulation dtype of the parameter, as the eager path's norms; weight decay 0
# gives g + 0 x = g exactly, so one graph serves both. "blocks" (the number of b's of a tensor)
# is for the native kernels, which cut a tensor into its rows; the compiled ones see b's shape.

_BLOCKS = ("blocks", "rate", "step")  # rate: lr^2, or 0 for a b that stays b0
_WNGRAD_SQUARES = Schema("WNGradSquares", ("weight_decay",), sums=("square",))
_WNGRAD_MOVE = Schema("WNGradMove", ("weight_decay",), tensor_scalars=("step",))
_WNGRAD_BLOCKS = Schema(
    "WNGradBlocks", ("weight_decay",), tensor_scalars=_BLOCKS, sums=("elements_over_b",)
)
_WNADAM_MOMENT = Schema("WNAdamMoment", ("weight_decay", "one_minus_beta"), sums=("square",))
_WNADAM_MOVE = Schema("WNAdamMove", (), tensor_scalars=("step",))
_WNADAM_BLOCKS = Schema(
    "WNAdamBlocks",
    ("weight_decay", "one_minus_beta"),
    tensor_scalars=_BLOCKS,
    sums=("elements_over_b",),
)


def _block_lengths(schema: Schema, arrays: int) -> ArrayLengths:
    """The element counts of a block pass's arrays: ``n`` each, but one per block for b."""
    blocks = schema.tensor_scalars.index("blocks")

    def lengths(n: int, constants: Sequence[float], own: Sequence[float]) -> tuple[int, ...]:
        return (n,) * (arrays - 1) + (int(own[blocks]),)

    return lengths


def _lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``torch.lerp``'s formula for a 0-d tensor weight of another dtype, which
    ``torch.lerp`` itself refuses."""
    difference = end - start
    return torch.where(
        weight.abs() < 0.5, start + weight * difference, end - difference * (1 - weight)
    )


@kernel
def _wngrad_squares(grad: Tensor, p: Tensor, scalars: Tensor) -> Tensor:
    """One tensor's ``||g + wd x||^2``."""
    c = _WNGRAD_SQUARES.read(scalars)
    g = (grad + c["weight_decay"] * p).to(scalars.dtype)
    return (g * g).sum()


@kernel
def _wngrad_move(grad: Tensor, p: Tensor, scalars: Tensor) -> None:
    """WNGrad's move with the global ``b``: ``x <- x + step (g + wd x)``, step = -lr / b."""
    c = _WNGRAD_MOVE.read(scalars)
    p.copy_(p + c["step"] * (grad + c["weight_decay"] * p))


@kernel
def _wnadam_moment(grad: Tensor, p: Tensor, m: Tensor, scalars: Tensor) -> Tensor:
    """WN-Adam's momentum of one tensor and its ``||g + wd x||^2``."""
    c = _WNADAM_MOMENT.read(scalars)
    g = grad + c["weight_decay"] * p
    m.copy_(_lerp(m, g, c["one_minus_beta"]))
    direction = g.to(scalars.dtype)
    return (direction * direction).sum()


@kernel
def _wnadam_move(p: Tensor, m: Tensor, scalars: Tensor) -> None:
    """WN-Adam's move with the global ``b``: ``x <- x + step m``, step = -lr / (b (1 - beta^t))."""
    p.copy_(p + _WNADAM_MOVE.read(scalars)["step"] * m)


def _blocks_move(
    p: Tensor, direction: Tensor, b: Tensor, squares: Tensor, c: Mapping[str, Tensor]
) -> None:
    """``b <- b + rate ||g_blk||^2 / b`` and ``x <- x + step direction / b`` (inlined into the
    kernels below), given the blocks' sums of ``g^2``."""
    old = b.to(c["rate"].dtype)
    new = (old + c["rate"] * squares / old).to(b.dtype)
    b.copy_(new)
    p.copy_(p + c["step"] * (direction / new.to(p.dtype)))


def _squares(g: Tensor, dtype: torch.dtype) -> Tensor:
    return g.to(dtype) * g.to(dtype)


def _as_rows(b: Tensor, *arrays: Tensor) -> list[Tensor]:
    """The flat arrays as (blocks, block size) matrices and ``b`` as a (blocks, 1) column."""
    rows = b.shape[0]
    return [array.view(rows, -1) for array in arrays] + [b.view(rows, 1)]


@kernel
def _wngrad_tensor(grad: Tensor, p: Tensor, b: Tensor, scalars: Tensor) -> None:
    """WNGrad's step of one tensor (one block)."""
    c = _WNGRAD_BLOCKS.read(scalars)
    g = grad + c["weight_decay"] * p
    _blocks_move(p, g, b, _squares(g, scalars.dtype).sum(), c)


@kernel
def _wngrad_rows(grad: Tensor, p: Tensor, b: Tensor, scalars: Tensor) -> None:
    """WNGrad's step of one tensor with a ``b`` per row."""
    c = _WNGRAD_BLOCKS.read(scalars)
    grad, p, b = _as_rows(b, grad, p)
    g = grad + c["weight_decay"] * p
    _blocks_move(p, g, b, _squares(g, scalars.dtype).sum(dim=1, keepdim=True), c)


@kernel
def _wnadam_tensor(grad: Tensor, p: Tensor, m: Tensor, b: Tensor, scalars: Tensor) -> None:
    """WN-Adam's step of one tensor (one block)."""
    c = _WNADAM_BLOCKS.read(scalars)
    g = grad + c["weight_decay"] * p
    m_new = _lerp(m, g, c["one_minus_beta"])
    m.copy_(m_new)
    _blocks_move(p, m_new, b, _squares(g, scalars.dtype).sum(), c)


@kernel
def _wnadam_rows(grad: Tensor, p: Tensor, m: Tensor, b: Tensor, scalars: Tensor) -> None:
    """WN-Adam's step of one tensor with a ``b`` per row."""
    c = _WNADAM_BLOCKS.read(scalars)
    grad, p, m, b = _as_rows(b, grad, p, m)
    g = grad + c["weight_decay"] * p
    m_new = _lerp(m, g, c["one_minus_beta"])
    m.copy_(m_new)
    _blocks_move(p, m_new, b, _squares(g, scalars.dtype).sum(dim=1, keepdim=True), c)


def _block_passes(
    arrays: tuple[str, ...], schema: Schema, native: str, one: FusedKernel, rows: FusedKernel
) -> tuple[Pass, Pass]:
    """The block passes of a method: one native function (it cuts each tensor into its
    blocks), a compiled kernel for a tensor with one ``b`` and one for a ``b`` per row (they
    return no sums: a compiled tensor's ``effective_lr`` part is read from its stored ``b``,
    as the reference path's)."""
    make = partial(
        Pass,
        "wngrad",
        arrays,
        schema,
        native=native,
        compiled_sums=(),
        array_lengths=_block_lengths(schema, len(arrays)),
    )
    return make(compiled=one), make(compiled=rows)


WNGrad._first = Pass(
    "wngrad", ("grad", "p"), _WNGRAD_SQUARES, native="wngrad_squares", compiled=_wngrad_squares
)
WNGrad._move = Pass(
    "wngrad", ("grad", "p"), _WNGRAD_MOVE, native="wngrad_move", compiled=_wngrad_move
)
WNGrad._one_block, WNGrad._row_blocks = _block_passes(
    ("grad", "p", "b"), _WNGRAD_BLOCKS, "wngrad_blocks", _wngrad_tensor, _wngrad_rows
)
WNAdam._first = Pass(
    "wngrad", ("grad", "p", "m"), _WNADAM_MOMENT, native="wnadam_moment", compiled=_wnadam_moment
)
WNAdam._move = Pass("wngrad", ("p", "m"), _WNADAM_MOVE, native="wnadam_move", compiled=_wnadam_move)
WNAdam._one_block, WNAdam._row_blocks = _block_passes(
    ("grad", "p", "m", "b"), _WNADAM_BLOCKS, "wnadam_blocks", _wnadam_tensor, _wnadam_rows
)
