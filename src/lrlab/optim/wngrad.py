"""WNGrad and WN-Adam: a step size 1/b with b accumulating squared gradient norms divided by b.

Paper: X. Wu, R. Ward, L. Bottou, "WNGrad: Learn the Learning Rate in Gradient Descent",
arXiv:1803.02865 (2018). Code: the first author's PyTorch fork ``xwuShirley/pytorch``
(``torch/optim/wngrad.py``, ``wnadam.py``) and ``mlpack/ensmallen`` (WNGrad).
Method page: ``docs/methods/accumulator.md``.

``b`` only grows, so the step size only shrinks; a too-small ``b0`` (too-large learning rate)
makes the first increment of ``b`` large, which corrects the step size after one step.
"""

from __future__ import annotations

import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer, StateEntry, StepContext
from lrlab.optim._fused import (
    check_fused,
    compiled_requested,
    flat,
    flat_eligible,
    kernel,
    native_requested,
    scalars,
)
from lrlab.optim._names import resolve_alias
from lrlab.optim._native import NativeKernel, native_eligible
from lrlab.optim._registry import InvalidKwargs, register
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
    """

    has_global_statistics: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float]] = {"b": 1.0}
    #: b per tensor (0-d) or per row (keepdim shape; 0-d for a tensor that is not adapted)
    state_layout: ClassVar[Mapping[str, StateEntry]] = {
        "b": StateEntry(shapes=lambda p, group: (_b_shape(p, group["granularity"]),))
    }

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "b0": check.positive(),
        "granularity": check.one_of(*GRANULARITIES),
        "weight_decay": check.nonnegative(),
    }

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

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[int],
        foreach: bool,
    ) -> tuple[list[Tensor], list[float]]:
        """Update the method's moments; return the directions and each tensor's step factor."""
        raise NotImplementedError

    # -- the fused path (see :mod:`lrlab.optim._fused`); one kernel set per subclass ---------

    def _fused_state(self, p: Tensor) -> list[Tensor]:
        """The per-element state tensors the subclass's kernels read besides ``b``."""
        raise NotImplementedError

    def _fused_sums(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        """Global granularity, first pass: every tensor's ``||g + wd x||^2`` (0-d), with the
        moments that do not wait for ``b``."""
        raise NotImplementedError

    def _move_fused(self, group: dict[str, Any], params: list[Tensor], eta: float) -> None:
        """Global granularity, second pass: the move with step size ``eta`` = lr / b."""
        raise NotImplementedError

    def _blocks_fused(self, group: dict[str, Any], params: list[Tensor], granularity: str) -> None:
        """Tensor and row granularity: every tensor's moments, ``b`` and move in one call."""
        raise NotImplementedError

    def _split_fused(
        self, group: dict[str, Any], params: list[Tensor], granularity: str
    ) -> tuple[list[Tensor], list[Tensor]]:
        """(tensors the kernels step, the others) of a group; all others without fused."""
        # .get: checkpoints written before the fused path have no "fused" key
        if not compiled_requested(group):
            return [], params
        fused: list[Tensor] = []
        rest: list[Tensor] = []
        for p in params:
            state = self.state[p]
            tensors = [p, _grad(p), *self._fused_state(p)]
            if granularity != "global":
                tensors.append(state["b"])
            (fused if flat_eligible(*tensors) else rest).append(p)
        return fused, rest

    def _update(self, context: StepContext) -> None:
        granularity = self.param_groups[0]["granularity"]
        # (group, params, the native kernels' blocks by dtype, those the compiled kernels step,
        # the others, the others' grads with weight decay, foreach) of every group with gradients
        pending: list[
            tuple[
                dict[str, Any],
                list[Tensor],
                dict[torch.dtype, _NativeBatch],
                list[Tensor],
                list[Tensor],
                list[Tensor],
                bool,
            ]
        ] = []
        increments: list[Tensor] = []  # eta^2 ||g||^2 of every group (global granularity)
        for group in self.param_groups:
            group["effective_lr"] = 0.0
            all_params = [p for p in group["params"] if p.grad is not None]
            if not all_params:
                continue
            for p in all_params:
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(p, state, group)
                state["step"] += 1
            foreach = _foreach.resolve_foreach(group["foreach"], all_params)
            native, remaining = self._take_native(group, all_params, granularity)
            fused, params = self._split_fused(group, remaining, granularity)
            grads = _foreach.grads_of(params)
            weight_decay = group["weight_decay"]
            # coupled: the decayed gradient feeds b and the step (params may be empty when the
            # kernels take every tensor, and torch._foreach_add refuses an empty list)
            if weight_decay != 0 and params:
                if foreach:
                    grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
                else:
                    grads = [
                        g.add(p, alpha=weight_decay) for g, p in zip(grads, params, strict=True)
                    ]
            if granularity == "global":
                squares = _foreach.sum_of_squares(grads, foreach=foreach)
                parts = self._fused_sums(group, fused) if fused else []
                for dtype, batch in native.items():
                    # factor 1 per tensor: the first pass's sums are the tensors' ||g||^2
                    sums = self._native_first_pass(group, dtype, batch)
                    parts.append(sums.sum().to(_foreach.accumulation_dtype(dtype)))
                if parts:
                    squares = _total([*parts, squares])
                increments.append(squares * group["lr"] ** 2)
            pending.append((group, all_params, native, fused, params, grads, foreach))

        # every rank reaches the reduction (with nothing to reduce unless the granularity is
        # global: per-tensor and per-row blocks live on one rank when each rank owns its tensors)
        if granularity == "global":
            device = context.params[0].device
            total = (
                torch.stack([part.to(torch.float64) for part in increments]).sum()
                if increments
                else torch.zeros((), dtype=torch.float64, device=device)
            )
            (total,) = self._reduce_global([total])
            b = float(self._get_global("b"))
            b = b + float(total) / b  # the one host synchronisation of the step
            self._set_global("b", b)
            for group, _, native, fused, params, grads, foreach in pending:
                eta = group["lr"] / b
                group["effective_lr"] = eta
                for dtype, batch in native.items():
                    self._native_move_pass(group, dtype, batch, eta, None)
                if fused:
                    self._move_fused(group, fused, eta)
                if not params:
                    continue
                steps = [int(self.state[p]["step"]) for p in params]
                directions, factors = self._directions(group, params, grads, steps, foreach)
                scales = [-eta * factor for factor in factors]
                if foreach:
                    torch._foreach_add_(params, torch._foreach_mul(directions, scales))
                else:
                    for p, direction, scale in zip(params, directions, scales, strict=True):
                        p.add_(direction, alpha=scale)
            return

        mean_step_parts: list[Tensor] = []  # per group: element-weighted mean of eta / b
        for group, all_params, native, fused, params, grads, foreach in pending:
            lr = group["lr"]
            # sum over the group's elements of eta / (their b), from the native kernels' new b
            # of every block (no torch op per tensor), then from the other tensors' b
            step_sums: list[Tensor] = []
            for dtype, batch in native.items():
                sums = self._native_first_pass(group, dtype, batch)
                b_new = _run_native(
                    _NATIVE_ACCUMULATE,
                    dtype,
                    batch.b,
                    [1] * len(batch.sizes),
                    (),
                    sums,
                    [],
                    batch.buffers,
                )
                self._native_move_pass(group, dtype, batch, lr, b_new)
                sizes = torch.tensor(batch.sizes, dtype=torch.float64)
                step_sums.append((lr / b_new[:, 0] * sizes).sum())
            if fused:
                self._blocks_fused(group, fused, granularity)
            if params:
                steps = [int(self.state[p]["step"]) for p in params]
                accumulators = self._update_blocks(group, params, grads, granularity, foreach)
                directions, factors = self._directions(group, params, grads, steps, foreach)
                for p, direction, block_b, factor in zip(
                    params, directions, accumulators, factors, strict=True
                ):
                    # b broadcasts over its block (a 0-d tensor, or a keepdim row shape)
                    p.addcdiv_(direction, block_b.to(p.dtype), value=-lr * factor)
            others = [*fused, *params]
            if others:
                accumulators = [self.state[p]["b"] for p in others]
                means = torch.stack([(lr / b.to(torch.float64)).mean() for b in accumulators])
                weights = torch.tensor([p.numel() for p in others], dtype=torch.float64)
                step_sums.append((means * weights.to(means.device)).sum())
            numel = sum(p.numel() for p in all_params)
            total = torch.stack([part.to(step_sums[0].device) for part in step_sums]).sum()
            mean_step_parts.append(total / numel)
        if mean_step_parts:
            values = torch.stack([part.to(mean_step_parts[0].device) for part in mean_step_parts])
            for (group, *_), value in zip(pending, values.tolist(), strict=True):
                group["effective_lr"] = float(value)  # the one host synchronisation of the step

    # -- the native path (see :mod:`lrlab.optim._native`) ----------------------------------

    def _native_arrays(self, p: Tensor, grad: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The arrays of the subclass's native first pass and move, in the kernels' order."""
        raise NotImplementedError

    def _native_factor(self, group: dict[str, Any], step: int) -> float:
        """The step factor of a tensor at its ``step``, as :meth:`_directions` gives it."""
        raise NotImplementedError

    def _native_first_pass(
        self, group: dict[str, Any], dtype: torch.dtype, batch: _NativeBatch
    ) -> Tensor:
        """The first pass over the batch's blocks (their sums, and moments that do not wait for
        ``b``); returns each block's sum times its factor, shape (blocks, 1)."""
        raise NotImplementedError

    def _native_move_pass(
        self,
        group: dict[str, Any],
        dtype: torch.dtype,
        batch: _NativeBatch,
        step_size: float,
        b_new: Tensor | None,
    ) -> None:
        """The move of the batch's blocks with ``step_size / b``: ``b_new`` the blocks' new
        ``b`` (blocks, 1), or None for the global ``b``, which is then in ``step_size``."""
        raise NotImplementedError

    def _take_native(
        self, group: dict[str, Any], params: list[Tensor], granularity: str
    ) -> tuple[dict[torch.dtype, _NativeBatch], list[Tensor]]:
        """(the native kernels' blocks of the group by dtype, the tensors they do not take)."""
        # .get: checkpoints written before the fused path have no "fused" key
        if not native_requested(group) or not _NATIVE_ACCUMULATE.available():
            return {}, params
        batches: dict[torch.dtype, _NativeBatch] = {}
        rest: list[Tensor] = []
        blocks = granularity != "global"
        lr_sq = group["lr"] ** 2
        factors: dict[int, float] = {}  # the step factor by step count (mostly one per group)
        for p in params:
            grad = _grad(p)
            state = self.state[p]
            first, move = self._native_arrays(p, grad)
            b = state["b"] if blocks else None
            tensors = [*first, *move] if b is None else [*first, *move, b]
            if p.numel() == 0 or not native_eligible(*tensors):
                rest.append(p)
                continue
            batch = batches.get(p.dtype)
            if batch is None:
                batch = batches[p.dtype] = _NativeBatch()
            step = int(state["step"])
            if step not in factors:
                factors[step] = self._native_factor(group, step)
            # the sum of a block enters b with lr^2 (0: a tensor whose b stays b0); the global
            # b takes the plain sums and applies lr^2 to the group's total as the loop does
            factor = (lr_sq if _adapted(p, granularity) else 0.0) if blocks else 1.0
            rows = 1 if b is None else b.numel()
            width = p.numel() // rows
            first_pointers = [t.data_ptr() for t in first]
            move_pointers = [t.data_ptr() for t in move]
            if rows == 1:
                batch.first.extend(first_pointers)
                batch.move.extend(move_pointers)
                if b is not None:
                    batch.b.append(b.data_ptr())
            else:
                # every row of the (rows, width) tensors is a block: its own "tensor"
                assert b is not None  # several rows only with per-row accumulators
                stride, b_pointer, itemsize = (
                    width * p.element_size(),
                    b.data_ptr(),
                    b.element_size(),
                )
                for row in range(rows):
                    offset = row * stride
                    batch.first.extend(pointer + offset for pointer in first_pointers)
                    batch.move.extend(pointer + offset for pointer in move_pointers)
                    batch.b.append(b_pointer + row * itemsize)
            batch.sizes.extend([width] * rows)
            batch.factors.extend([factor] * rows)
            batch.step_factors.extend([factors[step]] * rows)
            batch.written.extend(
                [p, *self._fused_state(p)] if b is None else [p, *self._fused_state(p), b]
            )
            batch.buffers.extend(tensors)
        return batches, rest

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
        state["step"] = 0
        granularity = group["granularity"]
        if granularity == "tensor":
            state["b"] = torch.full((), float(group["b0"]), dtype=p.dtype, device=p.device)
        elif granularity == "row":
            dims = _row_dims(p)
            shape = (
                ()
                if dims is None
                else tuple(1 if d in dims else size for d, size in enumerate(p.shape))
            )
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
            ``"tensor"`` and ``"row"``, the blocks' sums, :math:`b` (one element per block) and
            the move. Elsewhere (CUDA, bfloat16, non-contiguous) the compiled kernels of
            :mod:`lrlab.optim._fused`: ``"global"`` as above, ``"tensor"`` and ``"row"`` one
            kernel per tensor; small tensors there take the ``foreach`` path.
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: each rank owns a disjoint part of the parameters, so the global
            :math:`\lVert g\rVert^2` is a partial sum to be reduced over ranks (DTensor is
            detected; per-tensor and per-row blocks need no reduction).

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
    ) -> None:
        defaults = self._common_defaults(lr, b0, granularity, weight_decay, sharded)
        defaults["foreach"] = foreach
        defaults["fused"] = check_fused(fused, foreach)
        super().__init__(params, defaults)
        self._finish_init(b0)

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[int],
        foreach: bool,
    ) -> tuple[list[Tensor], list[float]]:
        return grads, [1.0] * len(grads)

    def _fused_state(self, p: Tensor) -> list[Tensor]:
        return []

    def _native_arrays(self, p: Tensor, grad: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return [grad, p], [grad, p]

    def _native_factor(self, group: dict[str, Any], step: int) -> float:
        return 1.0

    def _native_first_pass(
        self, group: dict[str, Any], dtype: torch.dtype, batch: _NativeBatch
    ) -> Tensor:
        return _run_native(
            _NATIVE_WNGRAD_SQUARES,
            dtype,
            batch.first,
            batch.sizes,
            (group["weight_decay"],),
            array.array("d", batch.factors),
            [],
            batch.buffers,
        )

    def _native_move_pass(
        self,
        group: dict[str, Any],
        dtype: torch.dtype,
        batch: _NativeBatch,
        step_size: float,
        b_new: Tensor | None,
    ) -> None:
        # b = 1 for the global b (an exact division); -step_size * 1.0: the eager path's scale
        # of a factor-1 direction
        per_block = array.array("d", [1.0]) * len(batch.sizes) if b_new is None else b_new
        constants = (group["weight_decay"], -step_size * 1.0)
        _run_native(
            _NATIVE_WNGRAD_MOVE,
            dtype,
            batch.move,
            batch.sizes,
            constants,
            per_block,
            batch.written,
            batch.buffers,
        )

    def _fused_sums(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        constants = _Constants()
        return [
            _wngrad_sums(flat(_grad(p)), flat(p), constants.get(p, (group["weight_decay"],)))
            for p in params
        ]

    def _move_fused(self, group: dict[str, Any], params: list[Tensor], eta: float) -> None:
        constants = _Constants()
        for p in params:
            # -eta * 1.0: the eager path's scale of a factor-1 direction
            c = constants.get(p, (group["weight_decay"], -eta * 1.0))
            _wngrad_move(flat(_grad(p)), flat(p), c)

    def _blocks_fused(self, group: dict[str, Any], params: list[Tensor], granularity: str) -> None:
        constants = _Constants()
        lr, weight_decay = group["lr"], group["weight_decay"]
        for p in params:
            b = self.state[p]["b"]
            adapted = _adapted(p, granularity)
            c = constants.get(p, (weight_decay, lr**2 if adapted else 0.0, -lr * 1.0), key=adapted)
            rows = b.numel()
            if rows == 1:  # one block: the whole tensor
                _wngrad_tensor(flat(_grad(p)), flat(p), flat(b), c)
            else:
                _wngrad_rows(_rows(_grad(p), rows), _rows(p, rows), _rows(b, rows), c)


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
        b0, granularity, weight_decay, foreach, sharded: as :class:`WNGrad`.
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
            }
        )
        super().__init__(params, defaults)
        self._finish_init(b0)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super()._init_state(p, state, group)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[int],
        foreach: bool,
    ) -> tuple[list[Tensor], list[float]]:
        beta = group["beta"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        if foreach:
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta)
        else:
            for m, g in zip(exp_avgs, grads, strict=True):
                m.lerp_(g, 1 - beta)
        return exp_avgs, [1.0 / (1.0 - beta**t) for t in steps]

    def _fused_state(self, p: Tensor) -> list[Tensor]:
        return [self.state[p]["exp_avg"]]

    def _native_arrays(self, p: Tensor, grad: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        m = self.state[p]["exp_avg"]
        return [grad, p, m], [p, m]

    def _native_factor(self, group: dict[str, Any], step: int) -> float:
        return 1.0 / (1.0 - group["beta"] ** step)

    def _native_first_pass(
        self, group: dict[str, Any], dtype: torch.dtype, batch: _NativeBatch
    ) -> Tensor:
        return _run_native(
            _NATIVE_WNADAM_MOMENT,
            dtype,
            batch.first,
            batch.sizes,
            (group["weight_decay"], 1 - group["beta"]),
            array.array("d", batch.factors),
            [],
            batch.buffers,
        )

    def _native_move_pass(
        self,
        group: dict[str, Any],
        dtype: torch.dtype,
        batch: _NativeBatch,
        step_size: float,
        b_new: Tensor | None,
    ) -> None:
        # per block (b, its scale); b = 1 for the global b (an exact division)
        scales = [-step_size * factor for factor in batch.step_factors]
        per_block: Tensor | array.array
        if b_new is None:
            per_block = array.array("d", [value for scale in scales for value in (1.0, scale)])
        else:
            per_block = torch.stack((b_new[:, 0], torch.tensor(scales, dtype=torch.float64)), 1)
        _run_native(
            _NATIVE_WNADAM_MOVE,
            dtype,
            batch.move,
            batch.sizes,
            (),
            per_block,
            batch.written,
            batch.buffers,
        )

    def _fused_sums(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        constants = _Constants()
        values = (group["weight_decay"], 1 - group["beta"])
        return [
            _wnadam_moment_and_sums(
                flat(_grad(p)), flat(p), flat(self.state[p]["exp_avg"]), constants.get(p, values)
            )
            for p in params
        ]

    def _move_fused(self, group: dict[str, Any], params: list[Tensor], eta: float) -> None:
        constants = _Constants()
        beta = group["beta"]
        for p in params:
            state = self.state[p]
            t = int(state["step"])  # counted per tensor: the bias correction may differ
            c = constants.get(p, (-eta * (1.0 / (1.0 - beta**t)),), key=t)
            _wnadam_move(flat(p), flat(state["exp_avg"]), c)

    def _blocks_fused(self, group: dict[str, Any], params: list[Tensor], granularity: str) -> None:
        constants = _Constants()
        lr, beta, weight_decay = group["lr"], group["beta"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            t, adapted = int(state["step"]), _adapted(p, granularity)
            values = (
                weight_decay,
                1 - beta,
                lr**2 if adapted else 0.0,
                -lr * (1.0 / (1.0 - beta**t)),
            )
            c = constants.get(p, values, key=(adapted, t))
            m, b = state["exp_avg"], state["b"]
            rows = b.numel()
            if rows == 1:  # one block: the whole tensor
                _wnadam_tensor(flat(_grad(p)), flat(p), flat(m), flat(b), c)
            else:
                tensors = [_rows(t, rows) for t in (_grad(p), p, m, b)]
                _wnadam_rows(*tensors, c)


@dataclass
class _NativeBatch:
    """The blocks of ``b`` of one group and dtype that the native kernels take: a whole tensor
    per block (global and per-tensor ``b``) or one row (per-row ``b``), given to the kernels by
    address (a row's arrays start ``row * width`` elements into the tensor's)."""

    first: list[int] = field(default_factory=list)  # the first pass's arrays, block by block
    move: list[int] = field(default_factory=list)  # the move's arrays, block by block
    b: list[int] = field(default_factory=list)  # each block's b (per-tensor and per-row b)
    sizes: list[int] = field(default_factory=list)  # elements per block
    factors: list[float] = field(default_factory=list)  # of each block's sum (lr^2, 0 or 1)
    step_factors: list[float] = field(default_factory=list)  # 1, or WN-Adam's bias correction
    written: list[Tensor] = field(default_factory=list)  # what the kernels write or read
    # every tensor a block's arrays lie in (the kernels check each address against them)
    buffers: list[Tensor] = field(default_factory=list)


def _run_native(
    native: NativeKernel,
    dtype: torch.dtype,
    pointers: list[int],
    sizes: list[int],
    constants: tuple[float, ...],
    tensor_constants: Tensor | array.array | None,
    written: list[Tensor],
    buffers: list[Tensor],
) -> Tensor:
    """``native`` on arrays given by address (rows of a tensor as blocks of their own); returns
    the per-block sums, shape (blocks, max(sums, 1)). ``tensor_constants``: float64, row-major,
    one row per block."""
    return native.call_addresses(
        dtype, pointers, sizes, constants, tensor_constants, written, buffers=buffers
    )


_NATIVE_ACCUMULATE = NativeKernel(
    "wngrad", "wngrad_accumulate", arrays=1, sums=1, tensor_constants=1
)
_NATIVE_WNGRAD_SQUARES = NativeKernel(
    "wngrad", "wngrad_squares", arrays=2, sums=1, tensor_constants=1
)
_NATIVE_WNGRAD_MOVE = NativeKernel("wngrad", "wngrad_move", arrays=2, tensor_constants=1)
_NATIVE_WNADAM_MOMENT = NativeKernel(
    "wngrad", "wnadam_moment", arrays=3, sums=1, tensor_constants=1
)
_NATIVE_WNADAM_MOVE = NativeKernel("wngrad", "wnadam_move", arrays=2, tensor_constants=2)


class _Constants:
    """The scalars tensor of one kernel, made once per (dtype, key) in a step: one small
    host-to-device copy per dtype rather than one per tensor."""

    def __init__(self) -> None:
        self._made: dict[tuple[torch.dtype, Any], Tensor] = {}

    def get(self, like: Tensor, values: tuple[float, ...], key: Any = None) -> Tensor:
        full_key = (like.dtype, key)
        if full_key not in self._made:
            self._made[full_key] = scalars(values, like)
        return self._made[full_key]


def _grad(p: Tensor) -> Tensor:
    grad = p.grad
    assert grad is not None  # the fused path takes tensors with a gradient only
    return grad


def _adapted(p: Tensor, granularity: str) -> bool:
    """Whether ``p``'s ``b`` grows (every tensor but the 0-d and 1-d ones of ``"row"``)."""
    return granularity != "row" or _row_dims(p) is not None


def _rows(tensor: Tensor, rows: int) -> Tensor:
    """``tensor`` as a (blocks, block size) alias that is not a view (see ``_fused.flat``): the
    ``"row"`` blocks of a contiguous tensor are the rows of this matrix."""
    return tensor.view(rows, -1).detach()


def _total(parts: list[Tensor]) -> Tensor:
    """The sum of 0-d parts in their promoted dtype, as ``_foreach.sum_of_squares`` totals."""
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    return torch.stack([part.to(dtype) for part in parts]).sum()


# -- fused kernels (see :mod:`lrlab.optim._fused`) -------------------------------------------
# Sums are taken in c's dtype, the accumulation dtype of the parameter, as the eager path's
# norms. Weight decay 0 gives g + 0 x = g exactly, so one graph serves both.


def _lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``torch.lerp``'s formula for a 0-d tensor weight of another dtype, which
    ``torch.lerp`` itself refuses."""
    difference = end - start
    return torch.where(
        weight.abs() < 0.5, start + weight * difference, end - difference * (1 - weight)
    )


@kernel
def _wngrad_sums(grad: Tensor, p: Tensor, c: Tensor) -> Tensor:
    """One tensor's ``||g + wd x||^2``; ``c`` = (wd,)."""
    direction = (grad + c[0] * p).to(c.dtype)
    return (direction * direction).sum()


@kernel
def _wngrad_move(grad: Tensor, p: Tensor, c: Tensor) -> None:
    """WNGrad's move; ``c`` = (wd, -lr / b)."""
    p.copy_(p + c[1] * (grad + c[0] * p))


@kernel
def _wnadam_moment_and_sums(grad: Tensor, p: Tensor, m: Tensor, c: Tensor) -> Tensor:
    """WN-Adam's momentum of one tensor and its ``||g + wd x||^2``; ``c`` = (wd, 1 - beta)."""
    g = grad + c[0] * p
    m.copy_(_lerp(m, g, c[1]))
    direction = g.to(c.dtype)
    return (direction * direction).sum()


@kernel
def _wnadam_move(p: Tensor, m: Tensor, c: Tensor) -> None:
    """WN-Adam's move; ``c`` = (-lr / (b (1 - beta^t)),)."""
    p.copy_(p + c[0] * m)


def _blocks_move(
    g: Tensor, p: Tensor, direction: Tensor, b: Tensor, squares: Tensor, c: Tensor
) -> None:
    """``b <- b + lr^2 ||g_blk||^2 / b`` and ``x <- x + scale direction / b`` (inlined into the
    kernels below), given the blocks' sums of ``g^2``; ``c`` ends with (lr^2, scale), and
    lr^2 is 0 for a tensor whose ``b`` stays ``b0``."""
    old = b.to(c.dtype)
    new = (old + c[-2] * squares / old).to(b.dtype)
    b.copy_(new)
    p.copy_(p + c[-1] * (direction / new.to(p.dtype)))


def _squares(g: Tensor, c: Tensor) -> Tensor:
    return g.to(c.dtype) * g.to(c.dtype)


# One block per tensor (flat tensors, b as 1 element) and one per row (matrices of blocks, b as
# a column) are separate kernels: torch specialises sizes of 1, and sharing one function would
# spend dynamo's recompile limit (8 graphs) on the 1-row and 1-column cases of every dtype.


@kernel
def _wngrad_tensor(grad: Tensor, p: Tensor, b: Tensor, c: Tensor) -> None:
    """WNGrad's step of one tensor (one block); ``c`` = (wd, lr^2 or 0, -lr)."""
    g = grad + c[0] * p
    _blocks_move(g, p, g, b, _squares(g, c).sum(), c)


@kernel
def _wngrad_rows(grad: Tensor, p: Tensor, b: Tensor, c: Tensor) -> None:
    """WNGrad's step of one tensor as (blocks, block size), ``b`` as (blocks, 1); ``c`` as
    :func:`_wngrad_tensor`."""
    g = grad + c[0] * p
    _blocks_move(g, p, g, b, _squares(g, c).sum(dim=1, keepdim=True), c)


@kernel
def _wnadam_tensor(grad: Tensor, p: Tensor, m: Tensor, b: Tensor, c: Tensor) -> None:
    """WN-Adam's step of one tensor (one block); ``c`` = (wd, 1 - beta, lr^2 or 0,
    -lr / (1 - beta^t))."""
    g = grad + c[0] * p
    m_new = _lerp(m, g, c[1])
    m.copy_(m_new)
    _blocks_move(g, p, m_new, b, _squares(g, c).sum(), c)


@kernel
def _wnadam_rows(grad: Tensor, p: Tensor, m: Tensor, b: Tensor, c: Tensor) -> None:
    """WN-Adam's step of one tensor as (blocks, block size), ``b`` as (blocks, 1); ``c`` as
    :func:`_wnadam_tensor`."""
    g = grad + c[0] * p
    m_new = _lerp(m, g, c[1])
    m.copy_(m_new)
    _blocks_move(g, p, m_new, b, _squares(g, c).sum(dim=1, keepdim=True), c)
