"""Plain baselines: torch's SGD, Adam and AdamW with the lrlab contract added.

These are thin subclasses of torch's own classes. The math is torch's, unchanged; lrlab adds
``effective_lr``, ``statistics()``, argument validation with ranges in the message, and the
non-finite policy (see NOTE [the lrlab optimizer contract] in ``_base.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch.optim.optimizer import ParamsT

from lrlab.optim import _validation as check
from lrlab.optim._base import SCALAR_STATE, AdaptiveOptimizer, StateEntry, StepContext
from lrlab.optim._foreach import resolve_foreach
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._validation import check_betas, check_bool, check_nonnegative, check_positive

__all__ = ["SGD", "Adam", "AdamW"]


def _torch_step(function: Callable[..., Any]) -> Callable[..., Any]:
    # torch wraps an Optimizer subclass's step with its hook runner once per class
    # (Optimizer._patch_step_function). Our own step is already wrapped, so call torch's
    # unwrapped update to run the step hooks once, not twice.
    unwrapped: Callable[..., Any] = getattr(function, "__wrapped__", function)
    return unwrapped if getattr(function, "hooked", False) else function


class _TorchBaseline(AdaptiveOptimizer):
    """Shared ``_update`` for thin subclasses of a torch optimizer."""

    _torch_class: type[torch.optim.Optimizer]
    #: torch keeps a 0-d step count per parameter
    state_layout: ClassVar[Mapping[str, StateEntry]] = {"step": SCALAR_STATE}
    #: torch.compile traces the step (NOTE [torch.compile and the step]), torch's included
    traceable_step: ClassVar[bool] = True
    #: take torch's fused kernel (not only foreach) when the caller chose neither
    _fused_by_default: bool = False

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "weight_decay": check.nonnegative(),
        "maximize": check.boolean(),
        "differentiable": check.boolean(),
        "capturable": check.boolean(),
    }

    # "fused" here is torch's own kernel, chosen by default: plain SGD/Adam users get no C++
    # build of lrlab's native guard that they did not ask for
    fused_setting: ClassVar[str | None] = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; with ``foreach`` and ``fused`` both unset, pick the fast kernel.

        torch defaults to its per-tensor for-loop on CPU. Its foreach (SGD) and fused
        (Adam, AdamW) kernels compute the same numbers (bit for bit in float64, checked in
        ``tests/optim/test_baselines.py``) several times faster, so a group whose tensors are
        all dense floating-point CPU/CUDA tensors gets them. An explicit ``foreach`` or
        ``fused`` is honoured as given.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("foreach") is not None or group.get("fused") or group.get("differentiable"):
            return
        params = group["params"]
        if not (
            params and resolve_foreach(None, params) and all(p.is_floating_point() for p in params)
        ):
            return
        if self._fused_by_default:
            group["fused"] = True
        else:
            group["foreach"] = True

    def _update(self, context: StepContext) -> None:
        _torch_step(self._torch_class.step)(self)
        for group in self.param_groups:
            group["effective_lr"] = float(group["lr"])


_BASELINE_INVALID = (
    InvalidKwargs({"lr": -0.1}, r"lr must be in \(0, inf\), got -0\.1"),
    InvalidKwargs({"lr": float("nan")}, r"lr must be in \(0, inf\), got nan"),
    InvalidKwargs({"weight_decay": -1.0}, r"weight_decay must be in \[0, inf\), got -1\.0"),
)


@register(
    "sgd",
    family="baseline",
    paper="Robbins & Monro, A Stochastic Approximation Method, 1951 (torch.optim.SGD)",
    summary="torch.optim.SGD (optionally with momentum / Nesterov) with the lrlab contract",
    supports_foreach=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "momentum": 0.9},
        {"lr": 0.05, "nesterov": True, "momentum": 0.5},
    ),
    invalid_kwargs=(
        *_BASELINE_INVALID,
        InvalidKwargs({"momentum": 1.5}, r"momentum must be in \[0, 1\], got 1\.5"),
    ),
    group_kwargs={"lr": 0.01},
)
class SGD(_TorchBaseline, torch.optim.SGD):
    r"""Stochastic gradient descent (torch's implementation) with the lrlab contract.

    .. math::
        b_t = \mu b_{t-1} + (1 - \tau) g_t, \qquad \theta_t = \theta_{t-1} - \gamma b_t

    (plain SGD for :math:`\mu = 0`; see ``torch.optim.SGD`` for Nesterov and weight decay).
    ``effective_lr`` is :math:`\gamma`.

    Args:
        params: parameters or param groups.
        lr: learning rate :math:`\gamma`, in (0, inf). Default 1e-3 (torch's).
        momentum: :math:`\mu`, in [0, 1].
        dampening: :math:`\tau`, in [0, 1].
        weight_decay: coupled L2 coefficient, in [0, inf).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        foreach: multi-tensor path (None: foreach for dense CPU/CUDA float tensors, the same
            numbers as torch's for-loop default, faster).
    """

    _torch_class = torch.optim.SGD
    #: torch's SGD updates from sparse gradients (checked against the densified gradient)
    supports_sparse_gradients = True

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "momentum": check.in_range(0.0, 1.0, "[]"),
        "dampening": check.in_range(0.0, 1.0, "[]"),
        "nesterov": check.boolean(),
    }

    def _check_group(self, group: Mapping[str, Any]) -> None:
        momentum, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
        if group.get("nesterov") and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov=True needs momentum in (0, 1] and dampening 0, got momentum={momentum}, "
                f"dampening={dampening}"
            )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        from lrlab.optim._validation import check_range

        check_positive("lr", lr)
        check_range("momentum", momentum, 0.0, 1.0, "[]")
        check_range("dampening", dampening, 0.0, 1.0, "[]")
        check_nonnegative("weight_decay", weight_decay)
        check_bool("nesterov", nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"nesterov=True needs momentum in (0, 1] and dampening 0, got momentum={momentum}, "
                f"dampening={dampening}"
            )
        torch.optim.SGD.__init__(
            self,
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
        )


_ADAM_SAMPLES = ({"lr": 0.05}, {"lr": 0.05, "amsgrad": True}, {"lr": 0.05, "weight_decay": 0.1})
_ADAM_INVALID = (
    *_BASELINE_INVALID,
    InvalidKwargs({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\), got 1\.0"),
    InvalidKwargs({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\), got -0\.1"),
    InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
)


_ADAM_RULES: Mapping[str, check.Rule] = {
    "betas": check.betas(),
    "eps": check.positive(),
    "amsgrad": check.boolean(),
    "decoupled_weight_decay": check.boolean(),
}


def _check_adam(lr: float, betas: Any, eps: float, weight_decay: float, amsgrad: bool) -> None:
    check_positive("lr", lr)
    check_betas("betas", betas)
    check_positive("eps", eps)
    check_nonnegative("weight_decay", weight_decay)
    check_bool("amsgrad", amsgrad)


@register(
    "adam",
    family="baseline",
    paper="Kingma & Ba, Adam: A Method for Stochastic Optimization, ICLR 2015 (torch.optim.Adam)",
    summary="torch.optim.Adam with the lrlab contract",
    supports_foreach=True,
    sample_kwargs=_ADAM_SAMPLES,
    invalid_kwargs=_ADAM_INVALID,
    group_kwargs={"lr": 0.01},
)
class Adam(_TorchBaseline, torch.optim.Adam):
    r"""Adam (torch's implementation) with the lrlab contract.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        \theta_t = \theta_{t-1}
            - \gamma \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    ``effective_lr`` is :math:`\gamma` (the per-coordinate normalisation is not folded in).

    Args:
        params: parameters or param groups.
        lr: :math:`\gamma`, in (0, inf). Default 1e-3.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon`, in (0, inf).
        weight_decay: coupled L2 coefficient (decoupled in :class:`AdamW`), in [0, inf).
        amsgrad: use the AMSGrad maximum of :math:`v`.
        foreach, fused: torch's implementation switches. With both None, torch's fused kernel
            is used for dense floating-point CPU/CUDA tensors (the same numbers as the for-loop
            in float64, several times faster); pass ``foreach=False`` for torch's for-loop.
    """

    _torch_class = torch.optim.Adam
    _fused_by_default = True

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = _ADAM_RULES

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        _check_adam(lr, betas, eps, weight_decay, amsgrad)
        torch.optim.Adam.__init__(
            self,
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
        )


@register(
    "adamw",
    family="baseline",
    paper="Loshchilov & Hutter, Decoupled Weight Decay Regularization, ICLR 2019",
    summary="torch.optim.AdamW with the lrlab contract",
    supports_foreach=True,
    sample_kwargs=_ADAM_SAMPLES,
    invalid_kwargs=_ADAM_INVALID,
    group_kwargs={"weight_decay": 0.5},
)
class AdamW(_TorchBaseline, torch.optim.AdamW):
    r"""AdamW (torch's implementation) with the lrlab contract.

    Adam with decoupled weight decay :math:`\theta \leftarrow \theta (1 - \gamma\lambda)` before
    the Adam update. ``effective_lr`` is :math:`\gamma`. Arguments as :class:`Adam`; the default
    ``weight_decay`` is torch's 1e-2.
    """

    _torch_class = torch.optim.AdamW
    _fused_by_default = True

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = _ADAM_RULES

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        _check_adam(lr, betas, eps, weight_decay, amsgrad)
        torch.optim.AdamW.__init__(
            self,
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
        )
