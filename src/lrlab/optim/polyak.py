"""Stochastic Polyak step sizes: SPS / SPS_max, and the moving-target methods TAPS / MOTAPS.

SPS: N. Loizou, S. Vaswani, I. Laradji, S. Lacoste-Julien, "Stochastic Polyak Step-size for SGD:
An Adaptive Learning Rate for Fast Convergence", AISTATS 2021, arXiv:2002.10542. Official code:
``IssamLaradji/sps`` (not on PyPI; no oracle). Method page: ``docs/methods/loss-based.md``.

TAPS / MOTAPS: R. M. Gower, A. Defazio, M. Rabbat, "Stochastic Polyak Stepsize with a Moving
Target", arXiv:2106.11851 (2021). No public code, and the paper's full text was not available to
us: both are **reconstructions** (spec 5.2-5.3, LOW confidence), see the class docstrings.

All of them need the mini-batch loss (``step(closure)`` or ``step(loss=...)``); TAPS and MOTAPS
also need the training-set index of every example of the batch
(``step(..., example_indices=...)``), because they keep one scalar per training example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer, StepContext
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import (
    check_bool,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_range,
)
from lrlab.optim.momo import scalar_loss

__all__ = ["MOTAPS", "SPS", "TAPS"]

_SPS_PAPER = (
    "Loizou, Vaswani, Laradji, Lacoste-Julien, Stochastic Polyak Step-size for SGD, "
    "AISTATS 2021; arXiv:2002.10542"
)
_TAPS_PAPER = (
    "Gower, Defazio, Rabbat, Stochastic Polyak Stepsize with a Moving Target, arXiv:2106.11851 "
    "(2021); update reconstructed, not the paper's text"
)

AdaptFlag = Literal["smooth_iter", "constant"]

#: the official code takes no step when the gradient norm is below this
_SMALL_GRAD_NORM = 1e-8


def _groups_with_grads(
    optimizer: AdaptiveOptimizer,
) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor], bool]]:
    """(group, params, grads, foreach) of every group that has gradients, sparse rejected."""
    out = []
    for group in optimizer.param_groups:
        group["effective_lr"] = 0.0
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
        out.append((group, params, grads, _foreach.resolve_foreach(group["foreach"], params)))
    return out


def _squared_grad_norm(
    pending: list[tuple[dict[str, Any], list[Tensor], list[Tensor], bool]], device: torch.device
) -> Tensor:
    """This rank's :math:`\\sum \\lVert g\\rVert^2` over all groups, a float64 0-d tensor."""
    parts = [
        _foreach.sum_of_squares(grads, foreach=foreach).to(device=device, dtype=torch.float64)
        for _, _, grads, foreach in pending
    ]
    if not parts:
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack(parts).sum()


def _sgd_move(params: list[Tensor], grads: list[Tensor], step: Scalar, foreach: bool) -> None:
    """``x <- x - step * g`` (``step`` may be negative for TAPS; a 0-d device tensor in a
    capturable step, which moves by 0 rather than branch on it)."""
    if not scalar.is_device(step) and step == 0.0:
        return
    if foreach:
        _foreach.add_scaled_(params, grads, -step)
    else:
        for p, g in zip(params, grads, strict=True):
            scalar.add_scaled_(p, g, -step)


# -- SPS ----------------------------------------------------------------------------------------


@register(
    "sps",
    family="loss-based",
    paper=_SPS_PAPER,
    summary="SGD with the stochastic Polyak step (L - f*) / (c ||g||^2), capped (SPS_max) or "
    "smoothly bounded",
    supports_foreach=True,
    lr_argument=None,
    sample_kwargs=(
        {},
        {"adapt_flag": "constant", "c": 0.5, "eta_max": 1.0},
        {"c": 0.2, "n_batches_per_epoch": 10, "init_step_size": 0.1, "fstar": -0.5},
    ),
    invalid_kwargs=(
        InvalidKwargs({"c": 0.0}, r"c must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"eta_max": 0.0}, r"eta_max must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"init_step_size": -1.0}, r"init_step_size must be in \(0, inf\)"),
        InvalidKwargs({"gamma": 0.5}, r"gamma must be in \[1, inf\), got 0\.5"),
        InvalidKwargs({"n_batches_per_epoch": 0}, r"n_batches_per_epoch must be in \[1, inf\]"),
        InvalidKwargs({"adapt_flag": "armijo"}, r"adapt_flag must be one of .*got 'armijo'"),
        InvalidKwargs({"fstar": math.nan}, r"fstar must be in \(-inf, inf\), got nan"),
        InvalidKwargs({"eps": -1e-8}, r"eps must be in \[0, inf\), got -1e-08"),
        InvalidKwargs({"sharded": 0}, r"sharded must be True or False, got 0"),
    ),
    group_kwargs={"c": 2.0},
)
class SPS(AdaptiveOptimizer):
    r"""SGD with the stochastic Polyak step size: SPS, SPS_max and the smoothed bound.

    .. math::
        \begin{aligned}
        &\textbf{for } k = 0, 1, \dots \text{ (mini-batch loss } L_k \text{, gradient } g_k
            \text{ over all parameters):}\\
        &\quad \gamma^{\mathrm{P}}_k = \frac{(L_k - f^*)_+}{c\,\lVert g_k\rVert^2 + \epsilon}
            \qquad \text{(0 when } \lVert g_k\rVert < 10^{-8}\text{: no step)}\\
        &\quad \gamma_k = \begin{cases}
            \min(\gamma^{\mathrm{P}}_k, \eta_{\max}) & \texttt{constant}
                \text{ (SPS; SPS\_max with } \eta_{\max})\\
            \min\big(\gamma^{\mathrm{P}}_k,\ \tau^{1/N} \gamma_{k-1}\big) & \texttt{smooth\_iter},
                \ \gamma_{-1} = \texttt{init\_step\_size}
            \end{cases}\\
        &\quad x_{k+1} = x_k - \gamma_k\, g_k
        \end{aligned}

    ``smooth_iter`` (the official default) lets the upper bound grow by at most a factor
    :math:`\tau` (``gamma``) per epoch of :math:`N` (``n_batches_per_epoch``) steps, from the
    previous step size; ``eta_max`` caps both modes when set. Theory uses :math:`c = 1/2`, the
    paper's experiments :math:`c = 0.2`; :math:`f^* = 0` under interpolation.

    Symbols: :math:`c` ``c``, :math:`f^*` ``fstar``, :math:`\eta_{\max}` ``eta_max``,
    :math:`\tau` ``gamma``, :math:`N` ``n_batches_per_epoch``, :math:`\epsilon` ``eps``,
    :math:`\gamma_k` ``effective_lr`` and ``group["step_size"]`` (the smoothing reference),
    :math:`\gamma^{\mathrm{P}}_k` ``statistics()["polyak_step"]`` (first group),
    :math:`\lVert g_k\rVert` ``statistics()["grad_norm"]``.

    Every hyperparameter is per group: each group takes its own step from the shared
    :math:`L_k` and :math:`\lVert g_k\rVert` (the norm runs over all groups).

    Args:
        params: parameters or param groups.
        n_batches_per_epoch: :math:`N`, integer in [1, inf]. Default 500 (the official default:
            set it to the real number of batches per epoch, or the growth rate is wrong).
        init_step_size: :math:`\gamma_{-1}`, in (0, inf). Default 1.
        c: in (0, inf). Default 0.5.
        gamma: growth factor :math:`\tau` of the smoothed bound per epoch, in [1, inf).
            Default 2.
        eta_max: cap :math:`\eta_{\max}` (SPS_max), in (0, inf), or None. Default None.
        adapt_flag: ``"smooth_iter"`` (default) or ``"constant"``.
        fstar: :math:`f^*`, the loss's lower bound (minimum under interpolation), finite.
            Default 0.
        eps: added to the denominator, in [0, inf). Default 1e-8.
        lr: multiplier of the step :math:`\gamma_k`, in [0, inf). Default 1 (the paper's
            SPS); torch's schedulers scale it. ``effective_lr`` is ``lr`` times
            :math:`\gamma_k`; the smoothing reference keeps :math:`\gamma_k` itself.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        sharded: each rank owns a disjoint part of the parameters, so :math:`\lVert g\rVert^2`
            is a partial sum to be reduced over ranks (not needed for DDP or DTensor).
        capturable: keep :math:`\lVert g_k\rVert`, :math:`\gamma^{\mathrm{P}}_k` and each
            group's smoothing reference as 0-d tensors on the parameters' device, so that the
            step reads nothing back to the host (the cases above become selects: a step of
            size 0 moves by 0) and ``torch.compile`` traces it as one graph after the
            non-finite guard (NOTE [device scalars] in ``lrlab/optim/_scalars.py``; a
            checkpoint holds plain numbers). None (default): True for CUDA/XPU parameters.

    .. note::
        Deviations from the official code (``sps/sps.py``, spec 5.1): (1) the Polyak numerator
        is clipped at 0 and uses ``fstar`` in both modes; the official ``smooth_iter`` ignores
        :math:`f^*` and takes a *negative* step (ascent) when the loss is negative. (2) A step of
        size 0 (tiny gradient, or :math:`L_k \le f^*`) keeps the previous step size as the
        smoothing reference; the official code stores the 0, after which the smoothed bound
        :math:`\tau^{1/N} \cdot 0` is 0 forever (spec 5.1 pitfall); the reference of a group
        follows its step size even in a step where none of its tensors has a gradient (so that
        sharded ranks keep identical group state). (3) ``eta_max`` also caps
        ``smooth_iter``. (4) :math:`f^*` is a constant per group; the official ``fstar_flag``
        reading a per-batch :math:`f^*` from the data loader is not provided (pass
        ``loss=loss - fstar_batch`` instead). (5) Gradient centralisation (which modifies
        ``p.grad`` in place) is not provided; several param groups are supported. No oracle
        package exists (not on PyPI): the tests use hand-computed vectors.

    Example:
        >>> optimizer = SPS(model.parameters(), c=0.2, n_batches_per_epoch=len(loader))
        >>> loss = loss_fn(model(inputs), targets)
        >>> loss.backward()
        >>> optimizer.step(loss=loss)
    """

    needs_loss: ClassVar[bool] = True
    has_global_statistics: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float]] = {"grad_norm": 0.0, "polyak_step": 0.0}
    #: a capturable step keeps the diagnostics and each group's smoothing reference on the
    #: device (NOTE [device scalars] in _scalars.py)
    capturable_scalars: ClassVar[Mapping[str, type] | None] = dict.fromkeys(
        ("grad_norm", "polyak_step", "step_size"), float
    )
    #: torch.compile traces the step (NOTE [torch.compile and the step]); breaks: the guard
    #: and, in host mode, the step size's one host read
    traceable_step: ClassVar[bool] = True

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.nonnegative(),
        "n_batches_per_epoch": check.integer(1),
        "init_step_size": check.positive(),
        "c": check.positive(),
        "gamma": check.in_range(1.0, math.inf, "[)"),
        "eta_max": check.optional(check.positive()),
        "adapt_flag": check.one_of("smooth_iter", "constant"),
        "fstar": check.real(),
        "eps": check.nonnegative(),
    }

    def __init__(
        self,
        params: ParamsT,
        n_batches_per_epoch: int = 500,
        init_step_size: float = 1.0,
        c: float = 0.5,
        gamma: float = 2.0,
        eta_max: float | None = None,
        adapt_flag: AdaptFlag = "smooth_iter",
        fstar: float = 0.0,
        eps: float = 1e-8,
        *,
        lr: float = 1.0,
        foreach: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        check_range("lr", lr, 0.0, math.inf, "[)")
        check_int("n_batches_per_epoch", n_batches_per_epoch, 1)
        check_positive("init_step_size", init_step_size)
        check_positive("c", c)
        check_range("gamma", gamma, 1.0, math.inf, "[)")
        if eta_max is not None:
            check_positive("eta_max", eta_max)
        check_choice("adapt_flag", adapt_flag, ("smooth_iter", "constant"))
        check_range("fstar", fstar, -math.inf, math.inf, "()")
        check_nonnegative("eps", eps)
        check_bool("sharded", sharded)
        defaults = {
            "lr": lr,
            "n_batches_per_epoch": n_batches_per_epoch,
            "init_step_size": float(init_step_size),
            "c": c,
            "gamma": gamma,
            "eta_max": eta_max,
            "adapt_flag": adapt_flag,
            "fstar": float(fstar),
            "eps": eps,
            "foreach": foreach,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its smoothing reference ``step_size`` starts at ``init_step_size``
        (a 0-d device tensor in a capturable step)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("step_size", float(group["init_step_size"]))
        if self.capturable:
            self._to_device_scalars(group)

    def _update(self, context: StepContext) -> None:
        pending = _groups_with_grads(self)
        device = context.params[0].device
        (grad_sq_t,) = self._reduce_global([_squared_grad_norm(pending, device)])
        assert context.loss is not None  # needs_loss: the base class guarantees it
        loss_t = scalar_loss(context.loss, type(self).__name__).to(device)
        # the one host synchronisation of the step (none in a capturable step, where the
        # scalars below are 0-d device tensors and the branches selects: NOTE [device scalars])
        loss, grad_sq = scalar.entries(torch.stack([loss_t, grad_sq_t]), self.capturable)
        grad_norm = scalar.sqrt(grad_sq)
        small = grad_norm < _SMALL_GRAD_NORM  # no step
        moving = {id(group): (params, grads, foreach) for group, params, grads, foreach in pending}
        for index, group in enumerate(self.param_groups):
            # a zero denominator (eps = 0, g = 0) is a small gradient: the ratio is not taken
            polyak = scalar.ratio_or_zero(
                scalar.maximum(loss - group["fstar"], 0.0), group["c"] * grad_sq + group["eps"]
            )
            step = polyak
            if group["adapt_flag"] == "smooth_iter":
                growth = group["gamma"] ** (1.0 / group["n_batches_per_epoch"])
                step = scalar.minimum(step, growth * group["step_size"])
            if group["eta_max"] is not None:
                step = scalar.minimum(step, group["eta_max"])
            polyak, step = scalar.where(small, 0.0, polyak), scalar.where(small, 0.0, step)
            if index == 0:
                self._set_global("polyak_step", polyak)
            # the reference follows the group's step even where this rank holds none of the
            # group's gradients (sharded runs): every rank keeps the same group state
            group["step_size"] = scalar.where(step > 0.0, step, group["step_size"])
            if id(group) not in moving:
                continue
            params, grads, foreach = moving[id(group)]
            # lr (default 1) scales the move, not the smoothing reference: a scheduled lr
            # multiplies the adapted step
            _sgd_move(params, grads, group["lr"] * step, foreach)
            group["effective_lr"] = group["lr"] * step
        self._set_global("grad_norm", grad_norm)

    def _statistics(self) -> dict[str, float]:
        return {
            "grad_norm": float(self._get_global("grad_norm")),
            "polyak_step": float(self._get_global("polyak_step")),
        }


# -- TAPS / MOTAPS ------------------------------------------------------------------------------

#: where the per-example table lives: an entry of the *first* param group (see NOTE below)
EXAMPLE_TABLE_KEY = "example_alpha"

# NOTE [the per-example table of TAPS / MOTAPS]
# alpha (one float64 per training example) is not per-parameter state, so it is stored as the
# tensor ``param_groups[0]["example_alpha"]``. state_dict() packs group entries as they are and
# load_state_dict() restores them without casting (per-parameter state would be cast to the
# parameter's dtype, e.g. bfloat16), so checkpoints resume exactly. Later groups do not carry it.


def _check_indices(indices: object, name: str) -> Tensor:
    if not isinstance(indices, Tensor):
        indices = torch.as_tensor(indices)
    if (
        indices.dim() != 1
        or indices.numel() == 0
        or indices.is_floating_point()
        or indices.is_complex()
        or indices.dtype == torch.bool
    ):
        raise ValueError(
            f"{name}.step: example_indices must be a non-empty 1-d integer tensor, got "
            f"dtype {indices.dtype} and shape {tuple(indices.shape)}"
        )
    return indices


#: default cap on |r_k / q_k|, the Polyak step before relaxation (see the class docstrings)
_TAPS_ETA_MAX = 10.0


def _eta_max(group: dict[str, Any]) -> float:
    # .get: checkpoints written before the cap existed resume with the default cap
    return float(group.get("eta_max", _TAPS_ETA_MAX))


def _capped(step: Scalar, cap: float) -> Scalar:
    """``step`` with its magnitude capped at ``cap`` (the sign kept; TAPS steps may be < 0).
    A device ``step`` is clamped: the same number for every non-NaN step."""
    if isinstance(step, Tensor):
        return step.clamp(-cap, cap)
    return step if abs(step) <= cap else math.copysign(cap, step)


def _check_index_range(low: Scalar, high: Scalar, n: int, name: str) -> None:
    """Raise ValueError unless every example index lies in ``[0, n)``."""
    if low < 0 or high >= n:
        raise ValueError(
            f"{name}.step: example_indices must be in [0, {n}) (num_examples), got values "
            f"in [{int(low)}, {int(high)}]"
        )


def _multiplicity(indices: Tensor) -> Tensor:
    r""":math:`\sum_i c_i^2` over the distinct values :math:`i` of ``indices`` (:math:`c_i` its
    count), as an int64 0-d tensor: the sum over the positions of the count of each position's
    value, read off the sorted indices by two binary searches. Unlike ``torch.unique`` every
    shape is the input's (no host read of the number of distinct values), and the sum of
    integers is exact in any order."""
    ordered = indices.sort().values
    right = torch.searchsorted(ordered, ordered, right=True)
    return (right - torch.searchsorted(ordered, ordered)).sum()


class _MovingTargetPolyak(AdaptiveOptimizer):
    """Shared machinery of TAPS and MOTAPS: the slack table and the projection step."""

    needs_loss: ClassVar[bool] = True
    needs_example_index: ClassVar[bool] = True
    has_global_statistics: ClassVar[bool] = True
    #: torch.compile traces the step (NOTE [torch.compile and the step]); breaks: the guard
    #: and, in host mode, the one host read of the step's scalars (with the index check)
    traceable_step: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float]] = {
        "target": 0.0,
        "residual": 0.0,
        "step_size": 0.0,
        "grad_norm": 0.0,
    }
    #: a capturable step keeps them on the device (NOTE [device scalars] in _scalars.py)
    capturable_scalars: ClassVar[Mapping[str, type] | None] = dict.fromkeys(global_defaults, float)

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "num_examples": check.integer(1),
        "lr": check.positive(),
        "fstar": check.real(),
        "lmbda": check.in_range(0.0, 1.0, "[]"),
        "push": check.in_range(0.0, 1.0, "[)"),
        "lb": check.real(),
        "eta_max": check.positive(),
    }

    def _check_group(self, group: Mapping[str, Any]) -> None:
        table = group.get(EXAMPLE_TABLE_KEY)
        if table is None:
            return
        # a table of the wrong length would be indexed past its end by example_indices
        n = group.get("num_examples")
        if not (
            isinstance(table, Tensor)
            and table.dtype == torch.float64
            and tuple(table.shape) == (n,)
        ):
            found = (
                f"{tuple(table.shape)} {table.dtype}"
                if isinstance(table, Tensor)
                else type(table).__name__
            )
            raise ValueError(
                f"{EXAMPLE_TABLE_KEY} must be a float64 tensor of shape ({n},) (num_examples), "
                f"got {found}"
            )

    def __init__(
        self, params: ParamsT, defaults: dict[str, Any], num_examples: int, initial: float
    ) -> None:
        super().__init__(params, defaults)
        device = next(p.device for group in self.param_groups for p in group["params"])
        self.param_groups[0][EXAMPLE_TABLE_KEY] = torch.full(
            (num_examples,), initial, dtype=torch.float64, device=device
        )
        # a device scalar is filled in place, so that every group keeps sharing it
        target = self._get_global("target")
        start = float(initial)
        self._set_global("target", target.fill_(start) if isinstance(target, Tensor) else start)

    def _next_target(self, target: Scalar, mean_rise: Scalar) -> Scalar:
        """The target after the slack mean rose by ``mean_rise`` in the tracking step (0-d
        device tensors in a capturable step)."""
        raise NotImplementedError

    def _update(self, context: StepContext) -> None:
        name = type(self).__name__
        first = self.param_groups[0]
        indices = _check_indices(context.example_indices, name)
        device = context.params[0].device
        table = first[EXAMPLE_TABLE_KEY]
        if table.device != device:  # a checkpoint loaded onto another device
            table = first[EXAMPLE_TABLE_KEY] = table.to(device)
        n = table.numel()
        if self.capturable and not torch.compiler.is_compiling():
            # checked where they are, before anything moves: free for CPU indices (a
            # DataLoader's); indices already on a GPU cost one read, where a device-side
            # assert would kill the CUDA context on a bad index
            _check_index_range(indices.min(), indices.max(), n, name)
        indices = indices.to(device=device, non_blocking=True)
        b = indices.numel()
        # gather with clamped indices (safe on every device); bad indices raise below, before
        # anything is modified (a traced capturable step asserts on the device instead)
        safe = indices.clamp(0, n - 1)
        low, high = indices.min(), indices.max()
        if self.capturable and torch.compiler.is_compiling():
            in_range = (low >= 0) & (high < n)
            torch._assert_async(in_range, f"{name}.step: example_indices must be in [0, {n})")
        pending = _groups_with_grads(self)
        (grad_sq_t,) = self._reduce_global([_squared_grad_norm(pending, device)])
        assert context.loss is not None  # needs_loss: the base class guarantees it
        loss_t = scalar_loss(context.loss, name).to(device)
        values = torch.stack(
            [
                loss_t,
                grad_sq_t,
                table[safe].mean(),
                _multiplicity(safe).to(torch.float64),
                low.to(torch.float64),
                high.to(torch.float64),
            ]
        )
        # the one host synchronisation of the step (none in a capturable step, whose scalars
        # below are 0-d device tensors: NOTE [device scalars])
        loss, grad_sq, alpha_batch, multiplicity, *bounds = scalar.entries(values, self.capturable)
        if not self.capturable:
            _check_index_range(bounds[0], bounds[1], n, name)
        residual = loss - alpha_batch
        # squared norm of the constraint's gradient in (x, alpha): ||g||^2 + sum_i c_i^2 / b^2
        q = grad_sq + multiplicity / (b * b)
        moving = {id(group): (params, grads, foreach) for group, params, grads, foreach in pending}
        for group in self.param_groups:
            if id(group) in moving:
                step = _capped(group["lr"] * residual / q, group["lr"] * _eta_max(group))
                params, grads, foreach = moving[id(group)]
                _sgd_move(params, grads, step, foreach)
                group["effective_lr"] = abs(step)
        step0 = _capped(first["lr"] * residual / q, first["lr"] * _eta_max(first))
        # each occurrence of example i in the batch adds step0 / b to alpha_i
        # filled, not torch.full: a device step0 is not read back
        rises = torch.empty(b, dtype=table.dtype, device=device).fill_(step0 / b)
        table.index_add_(0, indices, rises)
        target = self._next_target(self._get_global("target"), step0 / n)
        # exact projection onto mean(alpha) = target (a uniform shift; mean taken on the device)
        table.sub_(table.mean() - target)
        self._set_global("target", target)
        self._set_global("residual", residual)
        self._set_global("step_size", step0)
        self._set_global("grad_norm", scalar.sqrt(grad_sq))

    def _statistics(self) -> dict[str, float]:
        return {
            key: float(self._get_global(key))
            for key in ("target", "residual", "step_size", "grad_norm")
        }


_TAPS_MATH = r"""
    .. math::
        \begin{aligned}
        &\textbf{for } k = 0, 1, \dots \text{ (mini-batch } B \text{ of } b \text{ example
            indices, example } i \text{ drawn } c_i \text{ times; loss } L_B(x_k) \text{, gradient }
            g_k\text{):}\\
        &\quad r_k = L_B(x_k) - \tfrac{1}{b} \textstyle\sum_{j \in B} \alpha_j, \qquad
              q_k = \lVert g_k\rVert^2 + \sum_i c_i^2 / b^2, \qquad s_k = \gamma\, r_k / q_k\\
        &\quad x_{k+1} = x_k - s_k\, g_k, \qquad
              \alpha_i \leftarrow \alpha_i + s_k\, c_i / b \quad (i \in B)\\
        &\quad TARGET\\
        &\quad \alpha \leftarrow \alpha - (\bar\alpha - \tau_{k+1})\,\mathbf 1, \qquad
              \bar\alpha = \tfrac1n \textstyle\sum_{i=1}^n \alpha_i
        \end{aligned}

    **Cap.** :math:`s_k` is clipped to :math:`[-\gamma\eta_{\max}, \gamma\eta_{\max}]` (``eta_max``,
    default 10; as SPS_max caps the stochastic Polyak step). Without it a small
    :math:`\lVert g_k\rVert` (gradient clipping, a flat region) leaves only
    :math:`\sum_i c_i^2/b^2 \ge 1/b` in :math:`q_k`, so :math:`s_k` reaches :math:`b\, r_k` and
    the move :math:`s_k g_k` overshoots (measured: losses of 1e28 under clipping). The table
    update uses the capped :math:`s_k`, so the projection stays consistent.

    Step 2 is the relaxed (factor :math:`\gamma`) projection of :math:`(x, \alpha)` onto the
    linearised equation :math:`L_B(x) = \tfrac1b \sum_{j\in B} \alpha_j` (a Kaczmarz /
    Newton-Raphson step: with :math:`\alpha` frozen at :math:`f_i^* = 0` it is the stochastic
    Polyak step :math:`x - \gamma L_B g / \lVert g\rVert^2` up to the :math:`1/b` term); the last
    line is the exact projection onto :math:`\bar\alpha = \tau`. :math:`s_k` may be negative
    (when the batch loss is below its slacks the step moves up the gradient): ``effective_lr`` is
    :math:`|s_k|`, the signed value is ``statistics()["step_size"]``.
"""

_TAPS_SYMBOLS = r"""
    Symbols: EXTRA:math:`\gamma` ``lr``, :math:`\alpha` the per-example table
    ``param_groups[0]["example_alpha"]`` (float64, length ``num_examples``), :math:`\tau`
    ``statistics()["target"]``, :math:`r_k` ``statistics()["residual"]``, :math:`s_k`
    ``statistics()["step_size"]``, :math:`\lVert g_k\rVert` ``statistics()["grad_norm"]``.
"""

_TAPS_USAGE = r"""
    **Example indices.** ``step(closure_or_loss, example_indices=indices)``: ``indices`` is the 1-d
    integer tensor of the training-set indices (in ``[0, num_examples)``) of the examples in the
    batch, in any order, repeats allowed; the loss is the *mean* loss over the batch (the usual
    reduction; per-example losses are not needed). The benchmark runner passes
    ``Batch.indices``. A data loader can yield them, e.g. from a dataset whose ``__getitem__``
    returns ``(x, y, index)``.

    **Where the table lives.** :math:`\alpha` is the float64 tensor
    ``param_groups[0]["example_alpha"]`` (O(n) memory; see NOTE [the per-example table of TAPS /
    MOTAPS] in the module): ``state_dict()`` saves it and ``load_state_dict()`` restores it
    exactly. Each step costs O(b) for the gathered slacks plus O(n) for the projection (one
    mean and one subtraction on the table). With several param groups, group :math:`g` moves by
    :math:`\gamma_g r_k / q_k` and the table uses the first group's :math:`\gamma` (the
    projection is exact in the joint variable when all groups share ``lr``). In data-parallel
    training every rank must pass the global batch's loss and indices, so that the replicated
    tables stay identical.
"""


@register(
    "taps",
    family="loss-based",
    paper=_TAPS_PAPER,
    summary="Targeted stochastic Polyak: per-example slacks alpha_i track the losses, their mean "
    "is pinned to a known f* (reconstructed)",
    supports_foreach=True,
    confidence="low",
    sample_kwargs=(
        {"num_examples": 256},
        {"num_examples": 64, "lr": 0.5, "fstar": -0.1},
    ),
    invalid_kwargs=(
        InvalidKwargs({"num_examples": 0}, r"num_examples must be in \[1, inf\], got 0"),
        InvalidKwargs({"num_examples": 32.0}, r"num_examples must be an integer, got 32\.0"),
        InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"fstar": math.inf}, r"fstar must be in \(-inf, inf\), got inf"),
        InvalidKwargs({"sharded": None}, r"sharded must be True or False, got None"),
    ),
    group_kwargs={"lr": 0.5},
)
class TAPS(_MovingTargetPolyak):
    __doc__ = (
        r"""TAPS: stochastic Polyak steps with per-example slacks and a known target.

    Confidence LOW: the paper's text and code were not available; this is the spec's
    reconstruction (``defazio_family.md`` 5.3) from the stated principle (SP is Newton-Raphson
    on the interpolation equations :math:`f_i(x) = f_i^*`; TAPS adds one auxiliary variable
    :math:`\alpha_i` per training example tracking :math:`f_i(x^*)`, with the known optimal value
    :math:`f^* = f(x^*)` as a target on their mean), written for mini-batches.
"""
        + _TAPS_MATH.replace("TARGET", r"\tau_{k+1} = f^* \text{ (fixed)}")
        + _TAPS_SYMBOLS.replace("EXTRA", "")
        + r"""
    At a solution (:math:`\alpha_i = f_i(x^*)`, :math:`\bar\alpha = f^*`) every
    residual is 0, so :math:`x^*` is a fixed point without interpolation (unlike SP, which
    keeps moving when :math:`f_i(x^*) > \min f_i`).

    Args:
        params: parameters or param groups.
        num_examples: :math:`n`, the size of the training set (the length of the table),
            integer in [1, inf]. Required.
        lr: relaxation :math:`\gamma` of the projection, in (0, inf); (0, 1] is the usual range,
            1 the exact projection. Default 1.
        eta_max: cap :math:`\eta_{\max}` on :math:`|r_k / q_k|`, in (0, inf). Default 10.
        fstar: the optimal value :math:`f^* = \min_x \frac1n\sum_i f_i(x)` (the mean-loss
            target), finite. Default 0. The slacks start at :math:`\alpha_i = f^*`.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        sharded: each rank owns a disjoint part of the parameters (reduces
            :math:`\lVert g\rVert^2`).
        capturable: :math:`\tau, r_k, s_k, \lVert g_k\rVert` as 0-d device tensors: no host read
            in the step, one graph after the guard under ``torch.compile`` (NOTE [device
            scalars] in ``lrlab/optim/_scalars.py``); ``example_indices`` are range-checked
            where they live (pass them on the CPU, as a DataLoader gives them, for a step with
            no read), and in a traced step by a device assertion. None (default): CUDA/XPU.
"""
        + _TAPS_USAGE
        + r"""
    .. note::
        Reconstructed, not verified against the paper: the mini-batch form (one equation per
        batch, :math:`q_k` with :math:`\sum_i c_i^2/b^2`), the exact (not relaxed) projection
        onto the mean constraint after every step, the initialisation
        :math:`\alpha_i = f^*`, and the per-group relaxation.

    Example:
        >>> optimizer = TAPS(model.parameters(), num_examples=len(train_set), fstar=0.0)
        >>> for inputs, targets, indices in loader:
        ...     loss = loss_fn(model(inputs), targets)
        ...     optimizer.zero_grad(); loss.backward()
        ...     optimizer.step(loss=loss, example_indices=indices)
    """
    )

    def __init__(
        self,
        params: ParamsT,
        num_examples: int,
        lr: float = 1.0,
        fstar: float = 0.0,
        *,
        eta_max: float = _TAPS_ETA_MAX,
        foreach: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        check_int("num_examples", num_examples, 1)
        check_positive("lr", lr)
        check_positive("eta_max", eta_max)
        check_range("fstar", fstar, -math.inf, math.inf, "()")
        check_bool("sharded", sharded)
        defaults = {
            "num_examples": num_examples,
            "lr": lr,
            "fstar": float(fstar),
            "eta_max": float(eta_max),
            "foreach": foreach,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults, num_examples, float(fstar))

    def _next_target(self, target: Scalar, mean_rise: Scalar) -> Scalar:
        fstar = float(self.param_groups[0]["fstar"])
        return torch.full_like(target, fstar) if isinstance(target, Tensor) else fstar


@register(
    "motaps",
    family="loss-based",
    paper=_TAPS_PAPER,
    summary="Moving-target stochastic Polyak: TAPS whose mean-loss target follows the slacks "
    "from a lower bound, for unknown f* (reconstructed)",
    supports_foreach=True,
    confidence="low",
    sample_kwargs=(
        {"num_examples": 256},
        {"num_examples": 40, "lr": 0.5, "lmbda": 0.9, "push": 0.01, "lb": -0.1},
        {"num_examples": 256, "lmbda": 0.0},
    ),
    invalid_kwargs=(
        InvalidKwargs({"num_examples": -3}, r"num_examples must be in \[1, inf\], got -3"),
        InvalidKwargs({"lr": -1.0}, r"lr must be in \(0, inf\), got -1\.0"),
        InvalidKwargs({"lmbda": 1.5}, r"lmbda must be in \[0, 1\], got 1\.5"),
        InvalidKwargs({"push": 1.0}, r"push must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"lb": math.nan}, r"lb must be in \(-inf, inf\), got nan"),
    ),
    group_kwargs={"lr": 0.5},
)
class MOTAPS(_MovingTargetPolyak):
    __doc__ = (
        r"""MOTAPS: TAPS with a moving target, for an unknown optimal value (reconstructed).

    Confidence LOW: the paper's abstract says only that MOTAPS removes TAPS's need to know
    :math:`f^*` by moving the target; the target rule below is **our construction** (the spec,
    ``defazio_family.md`` 5.3, marks the paper's weights as unknown): the target :math:`\tau`
    starts at a lower bound :math:`\ell` of the loss and follows a fraction :math:`\lambda` of
    the rise of the mean slack, optionally pulled back toward :math:`\ell` by ``push``.
"""
        + _TAPS_MATH.replace(
            "TARGET",
            r"\tau_{k+1} = (1 - \nu)\big(\tau_k + \lambda\, s_k / n\big) + \nu\,\ell"
            r"\qquad (\tau_0 = \ell,\ \alpha_i = \ell \text{ at the start})",
        )
        + r"""
    :math:`s_k / n` is the rise of :math:`\bar\alpha` in the tracking step (before it
    :math:`\bar\alpha = \tau_k`), so the target keeps the fraction :math:`\lambda` of it and the
    projection removes the rest from all slacks. Starting below :math:`f^*`, the slacks cannot
    all be met while :math:`\tau < f^*` (the residuals stay positive on average), so the target
    rises, and it stops rising once the equations can be met: on noisy least squares it settles
    near :math:`f^*`. :math:`\lambda = 0`, :math:`\nu = 0` is exactly TAPS with
    :math:`f^* = \ell`; :math:`\lambda = 1`, :math:`\nu = 0` lets the target follow the slacks
    (no pinning at all).
"""
        + _TAPS_SYMBOLS.replace(
            "EXTRA",
            ":math:`\\lambda` ``lmbda``, :math:`\\nu` ``push``, :math:`\\ell` ``lb``,\n    ",
        )
        + r"""
    Args:
        params: parameters or param groups.
        num_examples: :math:`n`, the size of the training set, integer in [1, inf]. Required.
        lr: relaxation :math:`\gamma` of the projection, in (0, inf). Default 1.
        eta_max: cap :math:`\eta_{\max}` on :math:`|r_k / q_k|`, in (0, inf). Default 10.
        lmbda: fraction :math:`\lambda` of the slack mean's rise the target follows, in
            [0, 1]. Default 0.5.
        push: pull :math:`\nu` of the target back toward ``lb`` per step, in [0, 1). Default 0.
        lb: lower bound :math:`\ell` of the per-example losses (0 for non-negative losses),
            finite; the start of the target and of the slacks. Default 0.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        sharded: each rank owns a disjoint part of the parameters (reduces
            :math:`\lVert g\rVert^2`).
        capturable: as :class:`TAPS`.
"""
        + _TAPS_USAGE
        + r"""
    .. note::
        Reconstructed, not verified against the paper: everything TAPS's note lists, and the
        whole target rule (the names ``lmbda``, ``push``, ``lb``, the update of :math:`\tau`
        and the initialisation at ``lb``) is ours. Treat results as those of "a moving-target
        Polyak method in the spirit of MOTAPS", not of the paper's algorithm.

    Example:
        >>> optimizer = MOTAPS(model.parameters(), num_examples=len(train_set))
        >>> for inputs, targets, indices in loader:
        ...     loss = loss_fn(model(inputs), targets)
        ...     optimizer.zero_grad(); loss.backward()
        ...     optimizer.step(loss=loss, example_indices=indices)
    """
    )

    def __init__(
        self,
        params: ParamsT,
        num_examples: int,
        lr: float = 1.0,
        lmbda: float = 0.5,
        push: float = 0.0,
        lb: float = 0.0,
        *,
        eta_max: float = _TAPS_ETA_MAX,
        foreach: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        check_int("num_examples", num_examples, 1)
        check_positive("lr", lr)
        check_positive("eta_max", eta_max)
        check_range("lmbda", lmbda, 0.0, 1.0, "[]")
        check_range("push", push, 0.0, 1.0, "[)")
        check_range("lb", lb, -math.inf, math.inf, "()")
        check_bool("sharded", sharded)
        defaults = {
            "num_examples": num_examples,
            "lr": lr,
            "lmbda": lmbda,
            "push": push,
            "lb": float(lb),
            "eta_max": float(eta_max),
            "foreach": foreach,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults, num_examples, float(lb))

    def _next_target(self, target: Scalar, mean_rise: Scalar) -> Scalar:
        first = self.param_groups[0]
        moved = target + first["lmbda"] * mean_rise
        return (1.0 - first["push"]) * moved + first["push"] * first["lb"]
