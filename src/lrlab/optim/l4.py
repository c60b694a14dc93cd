"""L4: a step size that aims to remove a fixed fraction of the loss above its estimated minimum.

Paper: M. Rolinek, G. Martius, "L4: Practical loss-based stepsize adaptation for deep learning",
NeurIPS 2018, arXiv:1802.05074. Official code: ``martius-lab/l4-optimizer`` (TensorFlow 1),
PyTorch port ``iovdin/l4-pytorch``. Method page: ``docs/methods/loss-based.md``.

With the update ``x <- x - eta v`` the linearised loss decreases by ``eta <g_hat, v>``. L4 picks
``eta`` so that this predicted decrease is ``alpha`` times the gap between the current loss and
``gamma`` times an online estimate of the minimal loss. Implemented natively (not by wrapping a
torch optimizer), so any direction and its gradient estimate are computed in one pass.
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
from lrlab.optim._executor import Pass, Plan, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._names import resolve_alias
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import check_betas, check_bool, check_positive, check_range

__all__ = ["L4Adam", "L4Mom"]

_PAPER = (
    "Rolinek & Martius, L4: Practical loss-based stepsize adaptation for deep learning, "
    "NeurIPS 2018; arXiv:1802.05074"
)


class _L4(AdaptiveOptimizer):
    """Shared machinery of L4: the minimum-loss estimate, the step size and the guards.

    Subclasses compute, for every tensor with a gradient, the gradient estimate
    :math:`\\hat g` and the direction :math:`v`.
    """

    needs_loss: ClassVar[bool] = True
    has_global_statistics: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float | int]] = {
        "step": 0,
        "l_min": 0.0,
        "loss_gap": 0.0,
        "grad_dot_direction": 0.0,
        "nondescent_steps": 0,
        "nonpositive_gap_steps": 0,
    }
    #: a capturable step keeps the run state and the diagnostics on the device (NOTE [device
    #: scalars] in _scalars.py), and each tensor's step count t
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {
        **dict.fromkeys(("step", "nondescent_steps", "nonpositive_gap_steps"), int),
        **dict.fromkeys(("l_min", "loss_gap", "grad_dot_direction"), float),
    }
    capturable_counts: ClassVar[tuple[str, ...]] = ("step",)

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.nonnegative(),
        "alpha": check.positive(),
        "gamma": check.in_range(0.0, 1.0, "[]"),
        "gamma0": check.in_range(0.0, 1.0, "[]"),
        "tau": check.positive(),
        "eps": check.in_range(0.0, math.inf, "[)"),
    }

    def _l4_defaults(
        self,
        alpha: float,
        gamma: float,
        gamma0: float,
        tau: float,
        eps: float,
        sharded: bool,
        lr: float,
        capturable: bool | None,
    ) -> dict[str, Any]:
        check_range("lr", lr, 0.0, math.inf, "[)")
        check_positive("alpha", alpha)
        check_range("gamma", gamma, 0.0, 1.0, "[]")
        check_range("gamma0", gamma0, 0.0, 1.0, "[]")
        check_positive("tau", tau)
        check_range("eps", eps, 0.0, math.inf, "[)")
        check_bool("sharded", sharded)
        return {
            "lr": lr,
            "alpha": alpha,
            "gamma": gamma,
            "gamma0": gamma0,
            "tau": tau,
            "eps": eps,
            "sharded": sharded,
            "capturable": capturable,
        }

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = self._new_count(p)  # a 0-d device tensor in a capturable step
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _estimates(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[Scalar],
        foreach: bool,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Update the moments; return the gradient estimates and the directions."""
        raise NotImplementedError

    #: the two passes (the moments with <g_hat, v>, then the move) and the state tensors their
    #: arrays name besides "grad" and "p"
    _moments: ClassVar[Pass]
    _move: ClassVar[Pass]
    _state_arrays: ClassVar[Mapping[str, str]] = {"m": "exp_avg"}

    def _moment_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        """The moments pass's scalars of a group."""
        raise NotImplementedError

    def _bias_scalars(self, group: dict[str, Any], step: Scalar) -> dict[str, Scalar]:
        """The bias corrections of a tensor at its step ``step`` (tensor scalars of both
        passes), in Python double as the reference path has them (0-d device tensors in a
        capturable step, whose counts are)."""
        raise NotImplementedError

    def _move_scalars(self, group: dict[str, Any], eta: Scalar) -> dict[str, Scalar]:
        """The move's scalars of a group."""
        raise NotImplementedError

    def _update(self, context: StepContext) -> None:
        first = self.param_groups[0]
        # (group, params, directions, foreach) of every group with gradients
        pending: list[tuple[dict[str, Any], list[Tensor], list[Tensor], bool]] = []
        # (group, plan, bias corrections) of the tensors whose first pass ran on the kernels:
        # eta needs the global <g_hat, v> and the loss, so their move is a second pass
        fused_pending: list[tuple[dict[str, Any], Plan, list[dict[str, Scalar]]]] = []
        dot_parts: list[Tensor] = []
        for group in self.param_groups:
            group["effective_lr"] = 0.0
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if len(state) == 0:
                    self._init_state(p, state)
                state["step"] += 1
            # ints, or 0-d device tensors in a capturable step (load_state_dict keeps the form)
            steps: list[Scalar] = [state["step"] for state in states]
            rows = [
                {
                    "grad": grad,
                    "p": p,
                    **{name: state[key] for name, key in self._state_arrays.items()},
                }
                for p, grad, state in zip(params, grads, states, strict=True)
            ]
            plan = route(group, rows, (self._moments, self._move))
            if plan.native or plan.compiled:
                biases = [self._bias_scalars(group, step) for step in steps]
                result = plan.run(self._moments, self._moment_scalars(group), tensor_scalars=biases)
                dot_parts += result.parts("dot")
                fused_pending.append((group, plan, biases))
                if not plan.reference:
                    continue
                params = [params[i] for i in plan.reference]
                grads = [grads[i] for i in plan.reference]
                steps = [steps[i] for i in plan.reference]
            foreach = _foreach.resolve_foreach(group["foreach"], params)
            estimates, directions = self._estimates(group, params, grads, steps, foreach)
            dot_parts.append(_foreach.total_dot(estimates, directions))
            pending.append((group, params, directions, foreach))

        # every rank reaches the reduction, even one without gradients this step
        device = context.params[0].device
        dot = (
            torch.stack([part.to(torch.float64) for part in dot_parts]).sum()
            if dot_parts
            else torch.zeros((), dtype=torch.float64, device=device)
        )
        (dot,) = self._reduce_global([dot])
        assert context.loss is not None  # needs_loss: the base class guarantees it
        loss_tensor = context.loss.detach().to(device=dot.device, dtype=torch.float64)
        # the one host synchronisation of the step (none in a capturable step)
        loss, grad_dot_direction = scalar.entries(torch.stack([loss_tensor, dot]), self.capturable)

        # Python numbers, or 0-d device tensors in a capturable step (NOTE [device scalars]):
        # the branches below are selects there, and a step that does not move moves by 0
        t = self._get_global("step") + 1
        l_min = scalar.where(
            t == 1, first["gamma0"] * loss, scalar.minimum(self._get_global("l_min"), loss)
        )
        gap = loss - first["gamma"] * l_min
        # not a descent direction for the gradient estimate: eta would be negative or huge
        descent = grad_dot_direction > 0.0
        # a gap <= 0 is only possible with negative losses (L4 assumes L >= 0): eta would be <= 0
        moves = descent & (gap > 0.0)
        self._set_global(
            "nondescent_steps", self._get_global("nondescent_steps") + scalar.where(descent, 0, 1)
        )
        self._set_global(
            "nonpositive_gap_steps",
            self._get_global("nonpositive_gap_steps")
            + scalar.where(descent, scalar.where(moves, 0, 1), 0),
        )
        if scalar.is_device(moves) or moves:
            for group, params, directions, foreach in pending:
                eta = self._eta(group, gap, grad_dot_direction, moves)
                group["effective_lr"] = eta
                if foreach:
                    _foreach.add_scaled_(params, directions, -eta)
                else:
                    for p, direction in zip(params, directions, strict=True):
                        scalar.add_scaled_(p, direction, -eta)
            for group, plan, biases in fused_pending:
                eta = self._eta(group, gap, grad_dot_direction, moves)
                group["effective_lr"] = eta
                plan.run(self._move, self._move_scalars(group, eta), tensor_scalars=biases)
        # slow forgetting, so that the estimate can rise again
        l_min *= 1.0 + 1.0 / first["tau"]
        self._set_global("step", t)
        self._set_global("l_min", l_min)
        self._set_global("loss_gap", gap)
        self._set_global("grad_dot_direction", grad_dot_direction)

    def _eta(self, group: dict[str, Any], gap: Scalar, dot: Scalar, moves: Any) -> Scalar:
        """A group's step size; 0 in a capturable step that does not move (the host step does
        not call it then)."""
        # lr (default 1) multiplies the step, so torch's schedulers can scale it; the
        # denominator is > 0 where the step moves
        eta = scalar.ratio_or_zero(
            group["lr"] * group["alpha"] * gap, dot + self.param_groups[0]["eps"]
        )
        return scalar.where(moves, eta, 0.0)

    def _statistics(self) -> dict[str, float]:
        return {
            key: float(self._get_global(key))
            for key in (
                "l_min",
                "loss_gap",
                "grad_dot_direction",
                "nondescent_steps",
                "nonpositive_gap_steps",
            )
        }


_L4_INVALID = (
    InvalidKwargs({"alpha": 0.0}, r"alpha must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"gamma": 1.5}, r"gamma must be in \[0, 1\], got 1\.5"),
    InvalidKwargs({"gamma0": -0.1}, r"gamma0 must be in \[0, 1\], got -0\.1"),
    InvalidKwargs({"tau": 0.0}, r"tau must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"eps": -1e-12}, r"eps must be in \[0, inf\), got -1e-12"),
    InvalidKwargs({"sharded": "no"}, r"sharded must be True or False, got 'no'"),
)

_L4_MATH = r"""
    .. math::
        \begin{aligned}
        &\textbf{for } t = 1, 2, \dots \text{ (mini-batch loss } L_t \text{, gradient } g_t
            \text{):}\\
        &\quad L_{\min} \leftarrow \gamma_0 L_1 \text{ if } t = 1, \quad
              L_{\min} \leftarrow \min(L_{\min}, L_t) \text{ otherwise}\\
        &\quad \text{update the moments; } \hat g_t, v_t \text{ (see below)}\\
        &\quad \eta_t = \alpha\, \frac{L_t - \gamma L_{\min}}{\langle \hat g_t, v_t\rangle
              + \epsilon}, \qquad x \leftarrow x - \eta_t v_t\\
        &\quad L_{\min} \leftarrow (1 + 1/\tau)\, L_{\min}
        \end{aligned}
"""

_L4_NOTES = r"""
    ``eta v`` does not depend on the scale of ``v``, so L4 has no learning rate; ``alpha`` is the
    fraction of the loss gap each step aims to remove. With several param groups every group
    :math:`k` moves by :math:`\eta_k v_k` with :math:`\eta_k = \alpha_k (L_t - \gamma
    L_{\min}) / (\langle \hat g, v\rangle + \epsilon)`, the inner product over all parameters
    (the paper's rule when all groups share ``alpha``). ``gamma``, ``gamma0``, ``tau`` and
    ``eps`` are global (the first group's).

    The loss must be the objective whose gradient is used (include regularisers) and L4 assumes
    :math:`L \ge 0` with a minimum near 0: for a loss with a known floor :math:`f^*` pass
    :math:`L - f^*` (``step(loss=loss - f_star)``).

    .. note::
        Guards (deviations from the official code, which only adds :math:`\epsilon = 10^{-12}`,
        spec 5.5): when :math:`\langle \hat g, v\rangle \le 0` :math:`\eta` would be negative or
        explode, so the parameter move is skipped (``effective_lr`` 0) and counted in
        ``statistics()["nondescent_steps"]``. Here :math:`\hat g` is the first moment the
        direction is built from, so :math:`\langle \hat g, v\rangle = \lVert \hat g\rVert^2`
        (L4Mom) or :math:`\sum \hat g^2 / (\sqrt{\hat s} + \delta)` (L4Adam) is never negative
        and the guard fires exactly when :math:`\hat g = 0` (every gradient so far zero, or
        underflow), where the official code would report :math:`\eta = \alpha\,\mathrm{gap} /
        \epsilon \approx 10^{11}`. When the gap :math:`L_t - \gamma L_{\min}` is
        not positive (only with negative losses) the move is skipped and counted in
        ``statistics()["nonpositive_gap_steps"]`` (the PyTorch port raises on negative losses).
        In both cases the moments, the step counters and :math:`L_{\min}` are updated as usual.
        Non-finite losses or gradients skip the whole step (lrlab non-finite policy; the port
        also skips NaN losses).
"""


@register(
    "l4-mom",
    family="loss-based",
    paper=_PAPER,
    summary="L4 with momentum: eta removes a fraction alpha of the loss above its estimated min",
    supports_foreach=True,
    supports_fused=True,
    lr_argument=None,
    sample_kwargs=(
        {},
        {"alpha": 0.3, "gamma": 0.8},
        {"alpha": 0.1, "gamma0": 0.5, "tau": 100.0, "beta": 0.5},
    ),
    invalid_kwargs=(
        *_L4_INVALID,
        InvalidKwargs({"beta": 1.0}, r"beta must be in \[0, 1\), got 1\.0"),
    ),
    group_kwargs={"alpha": 0.05},
)
class L4Mom(_L4):
    torch_names: ClassVar[dict[str, str]] = {"momentum": "beta"}

    __doc__ = (
        r"""L4 applied to momentum SGD (L4Mom).
"""
        + _L4_MATH
        + r"""
    with the bias-corrected momentum as both the gradient estimate and the direction:
    :math:`m \leftarrow \beta m + (1-\beta) g_t`, :math:`\hat g_t = v_t = m / (1 - \beta^t)`
    (:math:`t` counted per tensor).

    Symbols: :math:`\alpha` ``alpha`` (official ``fraction``), :math:`\gamma` ``gamma``
    (``minloss_factor``), :math:`\gamma_0` ``gamma0`` (``init_factor``), :math:`\tau` ``tau``
    (``minloss_forget_time``), :math:`\epsilon` ``eps``, :math:`\beta` ``beta``, :math:`m`
    ``state["exp_avg"]``, :math:`L_{\min}` ``statistics()["l_min"]``, :math:`\eta_t`
    ``effective_lr``, :math:`L_t - \gamma L_{\min}` ``statistics()["loss_gap"]``,
    :math:`\langle \hat g, v\rangle` ``statistics()["grad_dot_direction"]``.

    Args:
        params: parameters or param groups.
        alpha: fraction of the loss gap removed per step, in (0, inf). Default 0.15 (paper;
            README range 0.1-0.3, lower for small batches).
        gamma: :math:`\gamma`, in [0, 1]. Default 0.9.
        gamma0: initial :math:`L_{\min} / L_1`, in [0, 1]. Default 0.75.
        tau: forgetting time of :math:`L_{\min}` in steps, in (0, inf). Default 1000.
        eps: added to :math:`\langle \hat g, v\rangle`, in [0, inf). Default 1e-12.
        momentum: momentum :math:`\beta` of the gradient estimate, in [0, 1). Default 0.9
            (time scale 10). ``beta`` (the paper's name) is accepted as an alias; the param
            group carries both, schedulers write ``momentum`` (``OneCycleLR(cycle_momentum=
            True)`` cycles it).
        lr: multiplier of the step size :math:`\eta_t`, in [0, inf). Default 1 (the paper's
            L4). A torch scheduler scales it; L4 has no learning rate of its own.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the work in two passes over memory: the momentum with
            :math:`\langle \hat g, v\rangle = \lVert \hat g\rVert^2`, then, once the step
            size is known (it needs that global sum and the loss), the move, which recomputes
            :math:`\hat g` from the momentum instead of keeping it (no full-size temporary). On
            CPU float32/float64 tensors each pass is one native multi-tensor kernel call for all
            tensors of a dtype (see :mod:`lrlab.optim._native`); elsewhere the compiled kernels,
            one call per tensor (see :mod:`lrlab.optim._fused`), and tensors that cannot be
            viewed flat (non-contiguous, sparse) or are small take the ``foreach`` path.
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: each rank owns a disjoint part of the parameters, so
            :math:`\langle \hat g, v\rangle` is a partial sum to be reduced over ranks.
        capturable: keep the step counters, :math:`L_{\min}` and the diagnostics (each
            tensor's step count too) as 0-d tensors on the parameters' device, so that the step
            reads nothing back to the host (the guards below become selects: a skipped move
            moves by 0) and ``torch.compile`` traces it as one graph after the non-finite guard
            (NOTE [device scalars] in ``lrlab/optim/_scalars.py``; a checkpoint holds plain
            numbers). None (default): True for CUDA/XPU parameters.
"""
        + _L4_NOTES
        + r"""
    Example:
        >>> optimizer = L4Mom(model.parameters())
        >>> loss = loss_fn(model(inputs), targets)
        >>> loss.backward()
        >>> optimizer.step(loss=loss)
    """
    )

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {"beta": check.in_range(0.0, 1.0, "[)")}

    def __init__(
        self,
        params: ParamsT,
        alpha: float = 0.15,
        *,
        gamma: float = 0.9,
        gamma0: float = 0.75,
        tau: float = 1000.0,
        eps: float = 1e-12,
        momentum: float | None = None,
        beta: float | None = None,
        lr: float = 1.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        defaults = self._l4_defaults(alpha, gamma, gamma0, tau, eps, sharded, lr, capturable)
        beta = resolve_alias("momentum", momentum, "beta", beta, 0.9)
        check_range("beta", beta, 0.0, 1.0, "[)")
        fused = check_fused(fused, foreach)
        # the update reads "beta"; schedulers write "momentum" (NOTE in _names.py)
        defaults.update({"momentum": beta, "beta": beta, "foreach": foreach, "fused": fused})
        super().__init__(params, defaults)

    def _estimates(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[Scalar],
        foreach: bool,
    ) -> tuple[list[Tensor], list[Tensor]]:
        beta = group["beta"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        bias = [1 - beta**t for t in steps]
        if foreach:
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta)
            estimates = list(torch._foreach_div(exp_avgs, bias))
        else:
            estimates = []
            for g, m, b in zip(grads, exp_avgs, bias, strict=True):
                m.lerp_(g, 1 - beta)
                estimates.append(m / b)
        return estimates, estimates

    def _moment_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        return {"weight": 1 - group["beta"]}

    def _bias_scalars(self, group: dict[str, Any], step: Scalar) -> dict[str, Scalar]:
        return {"bias": 1 - group["beta"] ** step}

    def _move_scalars(self, group: dict[str, Any], eta: Scalar) -> dict[str, Scalar]:
        return {"eta": eta}


@register(
    "l4-adam",
    family="loss-based",
    paper=_PAPER,
    summary="L4 with Adam directions: eta removes a fraction alpha of the loss above its min",
    supports_foreach=True,
    supports_fused=True,
    lr_argument=None,
    sample_kwargs=(
        {},
        {"alpha": 0.25},
        {"alpha": 0.1, "betas": (0.8, 0.99), "adam_eps": 1e-6, "tau": 100.0},
    ),
    invalid_kwargs=(
        *_L4_INVALID,
        InvalidKwargs({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"adam_eps": 0.0}, r"adam_eps must be in \(0, inf\), got 0\.0"),
    ),
    group_kwargs={"alpha": 0.05},
)
class L4Adam(_L4):
    __doc__ = (
        r"""L4 applied to Adam directions (L4Adam).
"""
        + _L4_MATH
        + r"""
    with Adam's bias-corrected moments (:math:`t` counted per tensor):
    :math:`m \leftarrow \beta_1 m + (1-\beta_1) g_t`,
    :math:`s \leftarrow \beta_2 s + (1-\beta_2) g_t^2`, :math:`\hat g_t = m / (1-\beta_1^t)`,
    :math:`v_t = \hat g_t / (\sqrt{s / (1-\beta_2^t)} + \delta)`.

    Symbols: as :class:`L4Mom`; :math:`\beta_1, \beta_2` ``betas``, :math:`\delta` ``adam_eps``,
    :math:`m, s` ``state["exp_avg"]``, ``state["exp_avg_sq"]``.

    Args:
        params: parameters or param groups.
        alpha, gamma, gamma0, tau, eps: as :class:`L4Mom` (same defaults).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999) (time scales 10
            and 1000, the paper's).
        adam_eps: :math:`\delta`, in (0, inf). Default 1e-4, the official code's value (not
            Adam's usual 1e-8).
        lr: multiplier of the step size :math:`\eta_t`, in [0, inf). Default 1 (the paper's
            L4). A torch scheduler scales it; L4 has no learning rate of its own.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the work in two passes over memory: the moments with
            :math:`\langle \hat g, v\rangle`, then, once the step size is known (it needs that
            global sum and the loss), the move, which recomputes :math:`v` from the moments
            instead of keeping it (no full-size temporary). On CPU float32/float64 tensors each
            pass is one native multi-tensor kernel call for all tensors of a dtype (see
            :mod:`lrlab.optim._native`); elsewhere the compiled kernels, one call per tensor
            (see :mod:`lrlab.optim._fused`), and tensors that cannot be viewed flat
            (non-contiguous, sparse) take the ``foreach`` path.
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: as :class:`L4Mom`.
        capturable: as :class:`L4Mom`.
"""
        + _L4_NOTES
        + r"""
    .. note::
        The official code keeps a separate gradient estimate (momentum, time scale 10) next to
        the Adam moments; with :math:`\beta_1 = 0.9` both are the same EMA of the gradients, so
        here :math:`\hat g` *is* Adam's bias-corrected first moment (one buffer less, identical
        numbers at the defaults; with another :math:`\beta_1` the estimate follows it).

    Example:
        >>> optimizer = L4Adam(model.parameters())
        >>> loss = loss_fn(model(inputs), targets)
        >>> loss.backward()
        >>> optimizer.step(loss=loss)
    """
    )

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "betas": check.betas(),
        "adam_eps": check.positive(),
    }

    def __init__(
        self,
        params: ParamsT,
        alpha: float = 0.15,
        *,
        gamma: float = 0.9,
        gamma0: float = 0.75,
        tau: float = 1000.0,
        eps: float = 1e-12,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-4,
        lr: float = 1.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        defaults = self._l4_defaults(alpha, gamma, gamma0, tau, eps, sharded, lr, capturable)
        check_betas("betas", betas)
        check_positive("adam_eps", adam_eps)
        fused = check_fused(fused, foreach)
        defaults.update(
            {"betas": tuple(betas), "adam_eps": adam_eps, "foreach": foreach, "fused": fused}
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(p, state)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _estimates(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[Scalar],
        foreach: bool,
    ) -> tuple[list[Tensor], list[Tensor]]:
        beta1, beta2 = group["betas"]
        adam_eps = group["adam_eps"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        bias1 = [1 - beta1**t for t in steps]
        bias2 = [1 - beta2**t for t in steps]
        if foreach:
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            estimates = list(torch._foreach_div(exp_avgs, bias1))
            denominators = torch._foreach_div(exp_avg_sqs, bias2)
            torch._foreach_sqrt_(denominators)
            torch._foreach_add_(denominators, adam_eps)
            # the quotient written into the denominators' fresh tensors: the same numbers,
            # one full-size temporary fewer
            directions = list(denominators)
            for estimate, direction in zip(estimates, directions, strict=True):
                torch.div(estimate, direction, out=direction)
            return estimates, directions
        estimates, directions = [], []
        for g, m, s, b1, b2 in zip(grads, exp_avgs, exp_avg_sqs, bias1, bias2, strict=True):
            m.lerp_(g, 1 - beta1)
            s.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            estimate = m / b1
            estimates.append(estimate)
            directions.append(estimate / (s / b2).sqrt_().add_(adam_eps))
        return estimates, directions

    _state_arrays: ClassVar[Mapping[str, str]] = {"m": "exp_avg", "s": "exp_avg_sq"}

    def _moment_scalars(self, group: dict[str, Any]) -> dict[str, float]:
        beta1, beta2 = group["betas"]
        return {
            "weight1": 1 - beta1,
            "beta2": beta2,
            "weight2": 1 - beta2,
            "adam_eps": group["adam_eps"],
        }

    def _bias_scalars(self, group: dict[str, Any], step: Scalar) -> dict[str, Scalar]:
        beta1, beta2 = group["betas"]
        return {"bias1": 1 - beta1**step, "bias2": 1 - beta2**step}

    def _move_scalars(self, group: dict[str, Any], eta: Scalar) -> dict[str, Scalar]:
        return {"eta": eta, "adam_eps": group["adam_eps"]}


# -- the passes' kernels (see :mod:`lrlab.optim._executor`) -------------------------------------

_ADAM_BIASES = ("bias1", "bias2")  # 1 - beta1^t, 1 - beta2^t of the tensor's step t
_ADAM_MOMENTS_SCHEMA = Schema(
    "L4AdamMoments",
    scalars=("weight1", "beta2", "weight2", "adam_eps"),  # weight: 1 - beta
    tensor_scalars=_ADAM_BIASES,
    sums=("dot",),  # <g_hat, v>
)
_ADAM_MOVE_SCHEMA = Schema("L4AdamMove", ("eta", "adam_eps"), tensor_scalars=_ADAM_BIASES)
# weight: 1 - beta; bias: 1 - beta^t; dot: <g_hat, v> = ||g_hat||^2
_MOM_MOMENTS_SCHEMA = Schema("L4MomMoments", ("weight",), tensor_scalars=("bias",), sums=("dot",))
_MOM_MOVE_SCHEMA = Schema("L4MomMove", ("eta",), tensor_scalars=("bias",))


@kernel
def _l4_adam_moments(grad: Tensor, m: Tensor, s: Tensor, scalars: Tensor) -> Tensor:
    """L4Adam's first pass over one tensor. Returns ``<g_hat, v>`` in the scalars' dtype
    (float32 sums for low-precision tensors)."""
    c, dtype = _ADAM_MOMENTS_SCHEMA.read(scalars), scalars.dtype
    g = grad.to(dtype)
    m_new = torch.lerp(m.to(dtype), g, c["weight1"])
    s_new = s.to(dtype) * c["beta2"] + c["weight2"] * g * g
    m.copy_(m_new)
    s.copy_(s_new)
    estimate = m_new / c["bias1"]
    return (estimate * (estimate / ((s_new / c["bias2"]).sqrt() + c["adam_eps"]))).sum()


@kernel
def _l4_adam_move(p: Tensor, m: Tensor, s: Tensor, scalars: Tensor) -> None:
    """L4Adam's second pass: ``x -= eta v`` with ``v`` recomputed from the updated moments as
    the first pass formed it."""
    c, dtype = _ADAM_MOVE_SCHEMA.read(scalars), scalars.dtype
    direction = (m.to(dtype) / c["bias1"]) / ((s.to(dtype) / c["bias2"]).sqrt() + c["adam_eps"])
    p.copy_(p.to(dtype) - c["eta"] * direction)


@kernel
def _l4_mom_moments(grad: Tensor, m: Tensor, scalars: Tensor) -> Tensor:
    """L4Mom's first pass over one tensor. Returns ``<g_hat, v> = ||g_hat||^2`` in the scalars'
    dtype (float32 sums for low-precision tensors)."""
    c, dtype = _MOM_MOMENTS_SCHEMA.read(scalars), scalars.dtype
    m_new = torch.lerp(m.to(dtype), grad.to(dtype), c["weight"])
    m.copy_(m_new)
    estimate = m_new / c["bias"]
    return (estimate * estimate).sum()


@kernel
def _l4_mom_move(p: Tensor, m: Tensor, scalars: Tensor) -> None:
    """L4Mom's second pass: ``x -= eta g_hat`` with ``g_hat`` recomputed from the updated
    momentum as the first pass formed it."""
    c, dtype = _MOM_MOVE_SCHEMA.read(scalars), scalars.dtype
    p.copy_(p.to(dtype) - c["eta"] * (m.to(dtype) / c["bias"]))


L4Mom._moments = Pass(
    "l4", ("grad", "m"), _MOM_MOMENTS_SCHEMA, native="l4_mom_moments", compiled=_l4_mom_moments
)
L4Mom._move = Pass("l4", ("p", "m"), _MOM_MOVE_SCHEMA, native="l4_mom_move", compiled=_l4_mom_move)
L4Adam._moments = Pass(
    "l4",
    ("grad", "m", "s"),
    _ADAM_MOMENTS_SCHEMA,
    native="l4_adam_moments",
    compiled=_l4_adam_moments,
)
L4Adam._move = Pass(
    "l4", ("p", "m", "s"), _ADAM_MOVE_SCHEMA, native="l4_adam_move", compiled=_l4_adam_move
)
