"""CLARA: cumulative path-length learning-rate adaptation for SGD and Adam.

Paper: "Cumulative Learning Rate Adaptation: Revisiting Path-Based Schedules for SGD and Adam",
arXiv:2508.05408 (2025). Method page: ``docs/methods/cumulative-path.md``.

The learning rate is multiplied after every step by ``exp(d (S / M - 1))``, where ``S`` is the
squared length of an exponentially discounted path of *normalised* steps and ``M`` its expected
value when the steps are driven by pure noise. Longer than expected (steps agree): grow; shorter
(steps cancel): shrink.
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
from lrlab.optim._executor import Pass, Schema, route
from lrlab.optim._fused import check_fused, kernel
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import (
    check_betas,
    check_bool,
    check_choice,
    check_nonnegative,
    check_positive,
    check_range,
)

__all__ = ["ClaraAdam", "ClaraSGD", "adam_noise_reference", "sgd_noise_reference"]

#: below this many elements the stationary-regime closed form for Adam is off by > 0.5 %, so the
#: reference is estimated by Monte Carlo (spec 1.4: D = 2 gives ~0.60 instead of 0.6825)
MONTE_CARLO_MAX_DIMENSION = 64

# a normalised direction of a zero gradient is 0, not NaN (spec 1.7 pitfall 3)
_NORM_FLOOR = 1e-12

ReferenceSum = Literal["per-tensor", "total"]


def sgd_noise_reference(c: float) -> float:
    """``E||p||^2`` in the stationary regime for independent unit steps: ``c / (2 - c)``."""
    return c / (2.0 - c)


def adam_noise_reference(
    dimension: int, c: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> float:
    """Stationary ``E||p||^2`` of the path of normalised Adam steps fed with N(0, I) gradients.

    For ``dimension > MONTE_CARLO_MAX_DIMENSION`` the closed form (our derivation, spec 1.4)
    ``mu_A = c/(2-c) * (1 + (1-c) b1) / (1 - (1-c) b1)``; below it a deterministic Monte-Carlo
    estimate (cached; a fraction of a second per distinct dimension).
    """
    if dimension > MONTE_CARLO_MAX_DIMENSION:
        beta1 = betas[0]
        return sgd_noise_reference(c) * (1 + (1 - c) * beta1) / (1 - (1 - c) * beta1)
    return _monte_carlo_adam_reference(
        int(dimension), float(c), float(betas[0]), float(betas[1]), float(eps)
    )


#: the Monte-Carlo references computed so far, by (dimension, c, beta1, beta2, eps). A plain
#: dict, not functools.lru_cache: dynamo traces through an lru_cache wrapper (ignoring the
#: cache), while a lookup here traces as a constant
_MONTE_CARLO_REFERENCES: dict[tuple[int, float, float, float, float], float] = {}


def _monte_carlo_adam_reference(
    dimension: int, c: float, beta1: float, beta2: float, eps: float
) -> float:
    key = (dimension, c, beta1, beta2, eps)
    if key not in _MONTE_CARLO_REFERENCES:
        estimate = _estimate_adam_reference
        if torch.compiler.is_compiling():
            # a traced step that meets a new size runs the estimate eager (one graph break;
            # the next trace finds it cached). A capturable ClaraAdam estimates its parameters'
            # sizes when they join: only a "total" over part of them gets here
            estimate = torch.compiler.disable(estimate, recursive=True)
        _MONTE_CARLO_REFERENCES[key] = estimate(*key)
    return _MONTE_CARLO_REFERENCES[key]


def _estimate_adam_reference(
    dimension: int, c: float, beta1: float, beta2: float, eps: float
) -> float:
    trials, steps, burn_in = 256, 2500, 500
    # a private generator: the estimate is the same in every process and never touches the
    # global RNG of the user's run
    generator = torch.Generator().manual_seed(20250807 + dimension)
    m = torch.zeros(trials, dimension, dtype=torch.float64)
    v = torch.zeros_like(m)
    path = torch.zeros_like(m)
    total = 0.0
    for t in range(1, steps + 1):
        g = torch.randn(trials, dimension, dtype=torch.float64, generator=generator)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        s = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps)
        u = s / s.norm(dim=1, keepdim=True).clamp_min(_NORM_FLOOR)
        path.lerp_(u, c)
        if t > burn_in:
            total += float(path.square().sum(dim=1).mean())
    return total / (steps - burn_in)


class _CumulativePathAdaptation(AdaptiveOptimizer):
    """Shared machinery of the CLARA variants: the path, the reference and the LR factor.

    Subclasses compute the (unnormalised) step direction ``s_i`` of every tensor, and name the
    arrays and scalars of their two passes (see :mod:`lrlab.optim._executor`): (1) ``s_i`` and
    ``||s_i||^2`` (ClaraAdam updates its moments there), (2) once the norm is known, the move
    and the path with the new ``||p_i||^2``. A compiled kernel holds a whole tensor, so it does
    both in one call (pass (2) is folded into it).
    """

    global_defaults: ClassVar[dict[str, float]] = {"lr_factor": 1.0, "path_ratio": 0.0}
    #: a capturable step keeps the LR factor and the last S / M on the device
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {
        "lr_factor": float,
        "path_ratio": float,
    }
    capturable_counts: ClassVar[tuple[str, ...]] = ("step",)
    has_global_statistics: ClassVar[bool] = True
    #: the passes (set below the kernels) and the state tensors their arrays name besides
    #: "grad" and "p"
    _norms: ClassVar[Pass]
    _move: ClassVar[Pass]
    _state_arrays: ClassVar[Mapping[str, str]] = {"path": "path"}

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "c": check.in_range(0.0, 1.0, "(]"),
        "d": check.nonnegative(),
        "mu": check.optional(check.positive()),
        "reference_sum": check.one_of("per-tensor", "total"),
        "unit_step": check.boolean(),
        "transient_correction": check.boolean(),
        "weight_decay": check.nonnegative(),
    }

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[Scalar],
        foreach: bool,
    ) -> list[Tensor]:
        raise NotImplementedError

    def _stationary_reference(self, group: dict[str, Any], dimension: int) -> float:
        raise NotImplementedError

    def _scalars(self, group: dict[str, Any], eta: Scalar) -> dict[str, Scalar]:
        """The scalars of both passes for one group and learning rate."""
        raise NotImplementedError

    def _tensor_scalars(self, group: dict[str, Any], step: Scalar) -> dict[str, Scalar]:
        """A tensor's scalars at its step ``step`` (ClaraAdam: the bias corrections, in Python
        double as the reference path has them; 0-d tensors from a capturable step's count)."""
        return {}

    def _update(self, context: StepContext) -> None:
        # a Python float, or a 0-d device tensor in a capturable step (NOTE [device scalars])
        factor = self._get_global("lr_factor")
        factor = factor if self.capturable else float(factor)
        damping = float(self.param_groups[0]["d"])
        path_sq_parts: list[Tensor] = []
        # (group, numel, step) of every tensor updated this step, for the reference sum M
        updated: list[tuple[dict[str, Any], int, Scalar]] = []
        for group in self.param_groups:
            eta = float(group["lr"]) * factor
            group["effective_lr"] = eta
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states, strict=True):
                if len(state) == 0:
                    self._init_state(p, state)
                state["step"] += 1
            # a capturable step counts in 0-d device tensors (a changing Python int would make
            # torch.compile recompile); the host step reads the count as an int
            steps: list[Scalar] = [
                state["step"] if self.capturable else int(state["step"]) for state in states
            ]
            updated.extend((group, p.numel(), step) for p, step in zip(params, steps, strict=True))
            rows = [
                {
                    "grad": p.grad,
                    "p": p,
                    **{name: state[key] for name, key in self._state_arrays.items()},
                }
                for p, state in zip(params, states, strict=True)
            ]
            plan = route(group, rows, (self._norms, self._move))
            if plan.native or plan.compiled:
                scalars = self._scalars(group, eta)
                own = [self._tensor_scalars(group, step) for step in steps]
                # (1) s_i and ||s_i||^2 (the compiled kernel: the whole step)
                norms = plan.run(self._norms, scalars, tensor_scalars=own)
                squares = norms.native_by_row("direction")
                # (2) u_i = s_i / max(||s_i||, 1e-12), x_i -= eta (u_i or s_i),
                # p_i = (1 - c) p_i + c u_i, and ||p_i||^2
                unit = [
                    # max keeps a NaN, as clamp_min does
                    {**row, "norm": max(math.sqrt(squares.get(index, 0.0)), _NORM_FLOOR)}
                    for index, row in enumerate(own)
                ]
                moved = plan.run(self._move, scalars, tensor_scalars=unit)
                path_sq_parts += [sums["path"] for sums in norms.compiled]
                path_sq_parts += moved.parts("path")
            if not plan.reference:
                continue
            params = [params[i] for i in plan.reference]
            grads = [p.grad for p in params]
            steps = [steps[i] for i in plan.reference]
            paths = [self.state[p]["path"] for p in params]
            foreach = _foreach.resolve_foreach(group["foreach"], params)
            directions = self._directions(group, params, grads, steps, foreach)
            c = group["c"]
            if foreach:
                _move_and_extend_path(params, paths, directions, eta, c, group["unit_step"])
            else:
                units = _normalise(directions, foreach=False)
                moves = units if group["unit_step"] else directions
                for p, move, path, u in zip(params, moves, paths, units, strict=True):
                    scalar.add_scaled_(p, move, -eta)
                    path.lerp_(u, c)
            path_sq_parts.append(_foreach.sum_of_squares(paths, foreach=foreach))

        # every rank reaches the reduction, even one without gradients this step
        device = context.params[0].device
        dtype = path_sq_parts[0].dtype if path_sq_parts else torch.float64
        path_sq = (
            torch.stack([part.to(dtype) for part in path_sq_parts]).sum()
            if path_sq_parts
            else torch.zeros((), dtype=dtype, device=device)
        )
        reference = torch.as_tensor(
            self._reference_sum(updated) if updated else 0.0, dtype=dtype, device=path_sq.device
        )
        path_sq, reference = self._reduce_global([path_sq, reference])
        if self.capturable:
            self._adapt_on_device(self._get_global("lr_factor"), damping, path_sq, reference)
            return
        if float(reference) == 0.0:  # no tensor had a gradient on any rank
            return
        ratio = float(path_sq) / float(reference)  # the one host synchronisation of the step
        self._set_global("path_ratio", ratio)
        self._set_global("lr_factor", factor * math.exp(damping * (ratio - 1.0)))

    def _adapt_on_device(
        self, factor: Tensor, damping: float, path_sq: Tensor, reference: Tensor
    ) -> None:
        """The LR factor's update without a host read: ``S / M`` in the scalars' dtype (the host
        step divides in Python double) and, when no tensor had a gradient (``M = 0``), the
        factor and the ratio kept by a select."""
        path_sq, reference = path_sq.to(factor.dtype), reference.to(factor.dtype)
        moved = reference != 0
        # both sides of a select are computed: the ratio divides by 1 where M = 0
        ratio = path_sq / torch.where(moved, reference, 1.0)
        self._set_global("path_ratio", torch.where(moved, ratio, self._get_global("path_ratio")))
        self._set_global(
            "lr_factor", torch.where(moved, factor * torch.exp(damping * (ratio - 1.0)), factor)
        )

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = self._new_count(p)
        state["path"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._cache_references()

    def _cache_references(self) -> None:
        """In a capturable step, estimate the references of the parameters' sizes now (Monte
        Carlo for a small ClaraAdam tensor): a traced step then finds them cached (``total``:
        the size of all parameters, as when every tensor has a gradient)."""
        first = self.param_groups[0]
        if not self.capturable or first["mu"] is not None:
            return
        if first["reference_sum"] == "total":
            total = sum(p.numel() for group in self.param_groups for p in group["params"])
            self._stationary_reference(first, total)
            return
        for group in self.param_groups:
            for p in group["params"]:
                self._stationary_reference(group, p.numel())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._cache_references()

    def _reference_sum(self, updated: list[tuple[dict[str, Any], int, Scalar]]) -> Scalar:
        """``M``: expected ``S`` under pure noise, summed over the tensors updated this step."""
        first = updated[0][0]
        per_tensor: list[Scalar]
        if first["mu"] is not None:
            per_tensor = [float(group["mu"]) for group, _, _ in updated]
        elif first["reference_sum"] == "total":
            # the official code: K * mu(total parameter count)
            size = sum(numel for _, numel, _ in updated)
            per_tensor = [self._stationary_reference(first, size)] * len(updated)
        else:
            per_tensor = [self._stationary_reference(group, n) for group, n, _ in updated]
        if first["transient_correction"]:
            # E||p_t||^2 = mu (1 - (1-c)^(2t)) after t steps from p_0 = 0 (the 2017 scheme)
            per_tensor = [
                mu * (1.0 - (1.0 - group["c"]) ** (2 * step))
                for mu, (group, _, step) in zip(per_tensor, updated, strict=True)
            ]
        total = sum(per_tensor)  # a 0-d tensor from a capturable step's counts
        return total if isinstance(total, Tensor) else float(total)

    def _statistics(self) -> dict[str, float]:
        factor = float(self._get_global("lr_factor"))
        return {
            "path_ratio": float(self._get_global("path_ratio")),
            "lr_factor": factor,
            "eta": float(self.param_groups[0]["lr"]) * factor,
        }


def _move_and_extend_path(
    params: list[Tensor],
    paths: list[Tensor],
    directions: list[Tensor],
    eta: Scalar,
    c: float,
    unit_step: bool,
) -> None:
    """The multi-tensor form of ``x -= eta (u or s)``, ``p = lerp(p, u, c)``, ``u = s/||s||``.

    The unit direction ``u`` is never materialised: ``1/||s||`` is a 0-d tensor per tensor that
    ``addcmul`` broadcasts, so the step reads ``s`` twice and allocates nothing full-size (the
    for-loop path allocates ``u``; a full-size temporary costs more than a pass over memory on
    CPU, where every large allocation page-faults). ``(1-c) p + c (s/||s||)`` differs from
    ``lerp`` only by float rounding.
    """
    inverse_norms = _foreach.norms(directions, foreach=True)
    torch._foreach_clamp_min_(inverse_norms, _NORM_FLOOR)
    torch._foreach_reciprocal_(inverse_norms)
    inverse_norms = [n.to(d.dtype) for n, d in zip(inverse_norms, directions, strict=True)]
    if unit_step and isinstance(eta, Tensor):
        # a device eta is multiplied into the inverse norms: value= would read it back
        torch._foreach_addcmul_(params, directions, torch._foreach_mul(inverse_norms, -eta))
    elif unit_step:
        torch._foreach_addcmul_(params, directions, inverse_norms, value=-float(eta))
    else:
        _foreach.add_scaled_(params, directions, -eta)
    torch._foreach_mul_(paths, 1.0 - c)
    torch._foreach_addcmul_(paths, directions, inverse_norms, value=c)


def _normalise(directions: list[Tensor], *, foreach: bool) -> list[Tensor]:
    norms = _foreach.norms(directions, foreach=foreach)
    if foreach:
        torch._foreach_clamp_min_(norms, _NORM_FLOOR)
        norms = [n.to(d.dtype) for n, d in zip(norms, directions, strict=True)]
        return list(torch._foreach_div(directions, norms))
    return [
        d / n.clamp_min(_NORM_FLOOR).to(d.dtype) for d, n in zip(directions, norms, strict=True)
    ]


def _check_common(
    lr: float,
    c: float,
    d: float,
    mu: float | None,
    reference_sum: str,
    unit_step: bool,
    transient_correction: bool,
    weight_decay: float,
) -> None:
    check_positive("lr", lr)
    check_range("c", c, 0.0, 1.0, "(]")
    check_nonnegative("d", d)
    if mu is not None:
        check_positive("mu", mu)
    check_choice("reference_sum", reference_sum, ("per-tensor", "total"))
    check_bool("unit_step", unit_step)
    check_bool("transient_correction", transient_correction)
    check_nonnegative("weight_decay", weight_decay)


_COMMON_INVALID = (
    InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"c": 0.0}, r"c must be in \(0, 1\], got 0\.0"),
    InvalidKwargs({"c": 1.5}, r"c must be in \(0, 1\], got 1\.5"),
    InvalidKwargs({"d": -1e-3}, r"d must be in \[0, inf\), got -0\.001"),
    InvalidKwargs({"mu": 0.0}, r"mu must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"reference_sum": "layer"}, r"reference_sum must be one of .*got 'layer'"),
    InvalidKwargs({"unit_step": 1}, r"unit_step must be True or False, got 1"),
)


@register(
    "clara-sgd",
    family="cumulative-path",
    paper="Atamna et al., Cumulative Learning Rate Adaptation, arXiv:2508.05408 (2025)",
    summary="SGD whose LR follows the length of a path of normalised gradients (CLARA)",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "unit_step": True, "d": 0.05},
        {"lr": 0.05, "transient_correction": True, "weight_decay": 0.01},
    ),
    invalid_kwargs=_COMMON_INVALID,
    group_kwargs={"lr": 0.01},
)
class ClaraSGD(_CumulativePathAdaptation):
    r"""SGD with cumulative path-length learning-rate adaptation (CLARA, SGD variant).

    .. math::
        \begin{aligned}
        &\textbf{for } t = 1, 2, \dots \textbf{ and every tensor } i \text{ with a gradient:}\\
        &\quad u_i = g_i / \max(\lVert g_i \rVert, 10^{-12})\\
        &\quad x_i \leftarrow x_i - \eta_t\, (u_i \text{ if unit\_step else } g_i)\\
        &\quad p_i \leftarrow (1 - c)\, p_i + c\, u_i\\
        &S = \textstyle\sum_i \lVert p_i \rVert^2, \qquad
         M = \textstyle\sum_i \mu, \qquad \mu = c / (2 - c)\\
        &\eta_{t+1} = \eta_t \exp\!\big(d\, (S / M - 1)\big)
        \end{aligned}

    Sums run over the tensors updated in this step, so ``M = K mu`` with ``K`` the number of
    tensors with a gradient now. The factor is global: every param group's ``lr`` is multiplied by
    the same factor, so their ratios are kept.

    Symbols: :math:`\eta` ``lr * lr_factor`` (``effective_lr``), :math:`c` ``c``, :math:`d`
    ``d``, :math:`p_i` ``state["path"]``, :math:`S / M` ``statistics()["path_ratio"]``.

    Args:
        params: parameters or param groups.
        lr: initial learning rate :math:`\eta_0`, in (0, inf). Default 1e-3 (the official class's).
        c: path memory, in (0, 1]. Default 0.2 (the only value the official code uses).
        d: damping of the LR change, in [0, inf). Default 1e-3 (the benchmark setting; see notes).
        unit_step: move along the normalised direction :math:`u_i` instead of :math:`g_i`.
        mu: override the per-tensor reference :math:`\mu` (default ``c / (2 - c)``).
        reference_sum: ``"per-tensor"`` (default) or ``"total"``; identical for SGD, where the
            reference does not depend on the tensor size (kept for symmetry with Adam).
        transient_correction: compare against :math:`\mu (1 - (1-c)^{2t})`, the expectation after
            ``t`` steps from a zero path (the 2017 scheme's correction), instead of :math:`\mu`.
        weight_decay: coupled L2 coefficient added to the gradient (not in place), in [0, inf).
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True fuses the step (direction, its norm, the parameter move, the path and its
            squared norm). On CPU float32/float64 tensors: native multi-tensor kernels, one call
            per pass for all tensors of a dtype (see :mod:`lrlab.optim._native`), two passes
            over memory (the direction's norm must be known before anything moves); elsewhere
            one compiled kernel per tensor (see :mod:`lrlab.optim._fused`; the first step pays
            the compilation). Tensors that cannot be viewed flat (non-contiguous, sparse) take
            the ``foreach`` path.
        sharded: each rank owns a disjoint part of the parameters, so the path norm and the
            reference are partial sums to be reduced over ranks (not needed for DDP or
            DTensor, which is detected).
        capturable: keep the LR factor, the path ratio and every tensor's step count as 0-d
            tensors on the parameters' device, so that the step reads nothing back to the host
            and ``torch.compile`` traces it without recompiling as they change (NOTE [device
            scalars] in ``lrlab/optim/_scalars.py``; a checkpoint holds plain numbers). None
            (default): True for CUDA/XPU parameters.

    .. note::
        Deviations from the official code (``optimizers/sgd_clara.py``), all following spec 1.7:
        ``K`` counts only tensors that have a gradient in this step (the official code also counts
        frozen tensors, biasing the LR down forever); ``.grad`` is never modified in place; the
        default ``d`` is 1e-3 (the value the paper's benchmark uses for every run) instead of the
        class's ``2 sigma`` formula, whose variance is too small by sqrt(2).

    .. note::
        The first step is gradient-independent: ``S / M = c (2 - c)`` whatever the gradients, so
        the LR changes by ``exp(d (c (2 - c) - 1))``. Per step, ``log eta`` changes by at most
        ``[-d, d (1/mu - 1)]`` = ``[-d, 8 d]`` for c = 0.2.

    Example:
        >>> optimizer = ClaraSGD(model.parameters(), lr=0.1)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        *,
        c: float = 0.2,
        d: float = 1e-3,
        unit_step: bool = False,
        mu: float | None = None,
        reference_sum: ReferenceSum = "per-tensor",
        transient_correction: bool = False,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        _check_common(lr, c, d, mu, reference_sum, unit_step, transient_correction, weight_decay)
        check_bool("sharded", sharded)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": lr,
            "c": c,
            "d": d,
            "unit_step": unit_step,
            "mu": mu,
            "reference_sum": reference_sum,
            "transient_correction": transient_correction,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "fused": fused,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[Scalar],
        foreach: bool,
    ) -> list[Tensor]:
        weight_decay = group["weight_decay"]
        if weight_decay == 0:
            return grads
        if foreach:
            return list(torch._foreach_add(grads, params, alpha=weight_decay))
        return [g.add(p, alpha=weight_decay) for g, p in zip(grads, params, strict=True)]

    def _stationary_reference(self, group: dict[str, Any], dimension: int) -> float:
        return sgd_noise_reference(group["c"])

    def _scalars(self, group: dict[str, Any], eta: Scalar) -> dict[str, Scalar]:
        return {
            "weight_decay": group["weight_decay"],
            "eta": eta,
            "c": group["c"],
            "unit_step": 1.0 if group["unit_step"] else 0.0,
        }


@register(
    "clara-adam",
    family="cumulative-path",
    paper="Atamna et al., Cumulative Learning Rate Adaptation, arXiv:2508.05408 (2025)",
    summary="Adam whose LR follows the path of normalised Adam steps vs its noise reference",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "unit_step": True, "d": 0.05},
        {"lr": 0.05, "reference_sum": "total", "weight_decay": 0.01},
    ),
    invalid_kwargs=(
        *_COMMON_INVALID,
        InvalidKwargs({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"eps": -1.0}, r"eps must be in \(0, inf\), got -1\.0"),
    ),
    group_kwargs={"lr": 0.01},
)
class ClaraAdam(_CumulativePathAdaptation):
    r"""Adam with corrected cumulative path-length learning-rate adaptation (CLARA).

    .. math::
        \begin{aligned}
        &\textbf{for every tensor } i \text{ with a gradient } g_i
             \text{ (plus } \lambda x_i\text{):}\\
        &\quad m_i \leftarrow \beta_1 m_i + (1-\beta_1) g_i,\quad
              v_i \leftarrow \beta_2 v_i + (1-\beta_2) g_i^2\\
        &\quad s_i = \frac{m_i / (1-\beta_1^{t_i})}{\sqrt{v_i / (1-\beta_2^{t_i})} + \epsilon},
              \qquad u_i = s_i / \max(\lVert s_i \rVert, 10^{-12})\\
        &\quad x_i \leftarrow x_i - \eta_t\, (u_i \text{ if unit\_step else } s_i),\qquad
              p_i \leftarrow (1 - c)\, p_i + c\, u_i\\
        &\eta_{t+1} = \eta_t \exp\!\Big(d \Big(\frac{\sum_i \lVert p_i\rVert^2}
              {\sum_i \mu_A(D_i)} - 1\Big)\Big)
        \end{aligned}

    The correction over the 2017 scheme (see ``agadam``): the path is built from the Adam step
    actually taken, and compared with the path length of Adam steps driven by pure noise,
    :math:`\mu_A`, which is about 6.1 times the SGD reference because momentum correlates
    consecutive steps. :math:`\mu_A(D) = \frac{c}{2-c}\frac{1 + (1-c)\beta_1}{1 - (1-c)\beta_1}`
    for large tensors (0.6825 at c = 0.2, beta1 = 0.9); a Monte-Carlo estimate for tensors of at
    most 64 elements (see :func:`adam_noise_reference`).

    Symbols: :math:`\eta` ``lr * lr_factor``, :math:`m_i, v_i` ``state["exp_avg"]``,
    ``state["exp_avg_sq"]``, :math:`p_i` ``state["path"]``, :math:`t_i` ``state["step"]``.

    Args:
        params: parameters or param groups.
        lr: initial learning rate, in (0, inf). Default 1e-3 (torch Adam's; see notes).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: :math:`\epsilon`, in (0, inf).
        c, d, unit_step, transient_correction: as :class:`ClaraSGD`.
        mu: override the per-tensor reference (the spec's test vectors use the official table's
            0.5958 for D = 2).
        reference_sum: ``"per-tensor"`` (default): :math:`M = \sum_i \mu_A(D_i)`;
            ``"total"``: :math:`M = K \mu_A(\sum_i D_i)`, the official code's lookup by total size.
        weight_decay: coupled L2 coefficient, added to the gradient (not in place).
        foreach: multi-tensor path.
        fused: True fuses the step (moments, direction, its norm, the parameter move, the path
            and its squared norm). On CPU float32/float64 tensors: native multi-tensor kernels,
            one call per pass for all tensors of a dtype (see :mod:`lrlab.optim._native`), two
            passes over memory (the moments and the direction's norm, then the move, which
            recomputes the direction from the moments); elsewhere one compiled kernel per tensor
            (see :mod:`lrlab.optim._fused`; the first step pays the compilation). Tensors that
            cannot be viewed flat take the ``foreach`` path.
        sharded: as :class:`ClaraSGD`.
        capturable: as :class:`ClaraSGD`.

    .. note::
        Deviations from the official code (``optimizers/adam_clara.py``), following spec 1.4/1.7:
        the reference comes from the closed form or Monte Carlo for any size (the official
        lookup table is undefined for model sizes it does not list) and is summed per tensor by
        default; ``K`` counts tensors updated in this step; ``.grad`` is never modified; the
        default ``lr`` is 1e-3 (the official class uses 1.0) so that the class is a drop-in for
        ``torch.optim.Adam``; the default ``d`` is 1e-3 (the benchmark setting).
    """

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "betas": check.betas(),
        "eps": check.positive(),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        c: float = 0.2,
        d: float = 1e-3,
        unit_step: bool = False,
        mu: float | None = None,
        reference_sum: ReferenceSum = "per-tensor",
        transient_correction: bool = False,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        _check_common(lr, c, d, mu, reference_sum, unit_step, transient_correction, weight_decay)
        check_bool("sharded", sharded)
        fused = check_fused(fused, foreach)
        check_betas("betas", betas)
        check_positive("eps", eps)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "c": c,
            "d": d,
            "unit_step": unit_step,
            "mu": mu,
            "reference_sum": reference_sum,
            "transient_correction": transient_correction,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "fused": fused,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    _state_arrays: ClassVar[Mapping[str, str]] = {"m": "exp_avg", "v": "exp_avg_sq", "path": "path"}

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(p, state)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        steps: list[Scalar],
        foreach: bool,
    ) -> list[Tensor]:
        beta1, beta2 = group["betas"]
        eps, weight_decay = group["eps"], group["weight_decay"]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        bias1 = [1 - beta1**t for t in steps]
        bias2 = [1 - beta2**t for t in steps]
        if foreach:
            if weight_decay != 0:
                grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            # one full-size temporary per tensor, reused in place: sqrt(v)/sqrt(b2) + eps,
            # then m / that, then / b1 (the same value as the for-loop up to float rounding)
            directions = list(torch._foreach_sqrt(exp_avg_sqs))
            # 0-d tensors in a capturable step
            torch._foreach_mul_(directions, [1.0 / scalar.sqrt(b) for b in bias2])  # type: ignore[misc]
            torch._foreach_add_(directions, eps)
            for m, direction in zip(exp_avgs, directions, strict=True):
                torch.div(m, direction, out=direction)
            torch._foreach_mul_(directions, [1.0 / b for b in bias1])
            return directions
        directions = []
        for p, g, m, v, b1, b2 in zip(
            params, grads, exp_avgs, exp_avg_sqs, bias1, bias2, strict=True
        ):
            if weight_decay != 0:
                g = g.add(p, alpha=weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            directions.append((m / b1) / ((v / b2).sqrt_().add_(eps)))
        return directions

    def _stationary_reference(self, group: dict[str, Any], dimension: int) -> float:
        return adam_noise_reference(dimension, group["c"], group["betas"], group["eps"])

    def _scalars(self, group: dict[str, Any], eta: Scalar) -> dict[str, Scalar]:
        beta1, beta2 = group["betas"]
        # 1 - beta in Python double, as the reference path has them
        return {
            "weight_decay": group["weight_decay"],
            "one_minus_beta1": 1 - beta1,
            "beta2": beta2,
            "one_minus_beta2": 1 - beta2,
            "eps": group["eps"],
            "eta": eta,
            "c": group["c"],
            "unit_step": 1.0 if group["unit_step"] else 0.0,
        }

    def _tensor_scalars(self, group: dict[str, Any], step: Scalar) -> dict[str, Scalar]:
        beta1, beta2 = group["betas"]
        return {"bias1": 1 - beta1**step, "bias2": 1 - beta2**step}


# -- the passes' kernels (see :mod:`lrlab.optim._executor`; native/clara.cpp) -----------------

# the scalars of both passes of a variant (unit_step: 1 or 0); the second pass's tensor scalars
# add the norm max(||s||, 1e-12) that the first pass's sum gives
_SGD_SCALARS = ("weight_decay", "eta", "c", "unit_step")
_ADAM_SCALARS = (
    "weight_decay",
    "one_minus_beta1",
    "beta2",
    "one_minus_beta2",
    "eps",
    *_SGD_SCALARS[1:],
)
_SGD_NORMS_SCHEMA = Schema("ClaraSgdNorms", _SGD_SCALARS, sums=("direction",))  # ||s||^2
_SGD_MOVE_SCHEMA = Schema("ClaraSgdMove", _SGD_SCALARS, tensor_scalars=("norm",), sums=("path",))
_ADAM_MOMENTS_SCHEMA = Schema(
    "ClaraAdamMoments",
    _ADAM_SCALARS,
    tensor_scalars=("bias1", "bias2"),  # 1 - beta1^t, 1 - beta2^t
    sums=("direction",),
)
_ADAM_MOVE_SCHEMA = Schema(
    "ClaraAdamMove", _ADAM_SCALARS, tensor_scalars=("bias1", "bias2", "norm"), sums=("path",)
)


def _clara_move_and_path(p: Tensor, path: Tensor, s: Tensor, c: dict[str, Tensor]) -> Tensor:
    """The common tail of both compiled kernels (inlined into each): normalise ``s``, move
    ``p`` and the path, return the new ``||path||^2``. ``s`` and the scalars are in the
    accumulation dtype."""
    unit = s / s.square().sum().sqrt().clamp_min(_NORM_FLOOR)
    # a select on a 0-d flag, not a Python branch: one graph serves both settings
    move = torch.where(c["unit_step"] != 0, unit, s)
    new_path = torch.lerp(path.to(s.dtype), unit, c["c"])
    p.copy_(p.to(s.dtype) - c["eta"] * move)
    path.copy_(new_path)
    return new_path.square().sum()


@kernel
def _clara_sgd_step(grad: Tensor, p: Tensor, path: Tensor, scalars: Tensor) -> Tensor:
    """One ClaraSGD step of one tensor, both passes (``s = g + weight_decay x``).

    Low-precision tensors are computed in the scalars' float32, so the norms are float32 sums.
    """
    c, dtype = _SGD_NORMS_SCHEMA.read(scalars), scalars.dtype
    s = grad.to(dtype) + c["weight_decay"] * p.to(dtype)
    return _clara_move_and_path(p, path, s, c)


@kernel
def _clara_adam_step(
    grad: Tensor, p: Tensor, m: Tensor, v: Tensor, path: Tensor, scalars: Tensor
) -> Tensor:
    """One ClaraAdam step of one tensor, both passes: the moments, the Adam direction
    ``s = (m / bias1) / (sqrt(v / bias2) + eps)``, the move and the path."""
    c, dtype = _ADAM_MOMENTS_SCHEMA.read(scalars), scalars.dtype
    g = grad.to(dtype) + c["weight_decay"] * p.to(dtype)
    m_new = torch.lerp(m.to(dtype), g, c["one_minus_beta1"])
    v_new = v.to(dtype) * c["beta2"] + c["one_minus_beta2"] * g * g
    m.copy_(m_new)
    v.copy_(v_new)
    s = (m_new / c["bias1"]) / ((v_new / c["bias2"]).sqrt() + c["eps"])
    return _clara_move_and_path(p, path, s, c)


ClaraSGD._norms = Pass(
    "clara",
    ("grad", "p"),
    _SGD_NORMS_SCHEMA,
    native="clara_sgd_norms",
    compiled=_clara_sgd_step,
    compiled_arrays=("grad", "p", "path"),
    compiled_sums=("path",),
)
ClaraSGD._move = Pass(
    "clara", ("grad", "p", "path"), _SGD_MOVE_SCHEMA, native="clara_sgd_move", compiled_folded=True
)
ClaraAdam._norms = Pass(
    "clara",
    ("grad", "p", "m", "v"),
    _ADAM_MOMENTS_SCHEMA,
    native="clara_adam_moments",
    compiled=_clara_adam_step,
    compiled_arrays=("grad", "p", "m", "v", "path"),
    compiled_sums=("path",),
)
ClaraAdam._move = Pass(
    "clara",
    ("p", "m", "v", "path"),
    _ADAM_MOVE_SCHEMA,
    native="clara_adam_move",
    compiled_folded=True,
)
