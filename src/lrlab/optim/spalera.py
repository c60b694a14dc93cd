r"""SPALeRA: the per-parameter variant of the 2017 cumulative path-length learning rates.

Paper: A. Schoenauer-Sebag, M. Schoenauer, M. Sebag, "Stochastic Gradient Descent: Going As Fast
As Possible But Not Faster", arXiv:1709.01427 (2017). Official code: the Lua/Torch7 repository
``aschoenauer-sebag/salera``. Method page: ``docs/methods/cumulative-path.md``.

SALeRA (:class:`~lrlab.optim.alera.SALeRA`) with one path entry and one learning-rate multiplier
per scalar parameter instead of one rate per layer. After the Page-Hinkley test of SALeRA (an
alarm restores the previous parameters, halves every rate and takes no step), with
:math:`D` the number of scalar parameters that have a gradient and :math:`\mu_t` ALeRA's reference:

.. math::
    \begin{aligned}
    &p \leftarrow (1 - \alpha)\, p + \alpha\, g / \lVert g \rVert
          \qquad(\lVert g \rVert \text{ over all parameters})\\
    &a_i \leftarrow a_i \exp\!\Big(C\, \frac{p_i^2 - \mu_t / D}{\alpha / D}\Big),\qquad
     x_i \leftarrow x_i - \eta\, a_i\, g_i
    \end{aligned}

The family's machinery (the paths, the one-collective step, the catastrophe test, the routing of
the two passes onto the kernels, NOTE [the 2017 scheme fused]) is
:class:`lrlab.optim.alera._PathLearningRates`; this module declares SPALeRA's statistics (the
global gradient norm and :math:`D`) and its move. The passes and kernels are in
:mod:`lrlab.optim.kernels.alera`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim._executor import Pass
from lrlab.optim._registry import register
from lrlab.optim._scalars import Scalar
from lrlab.optim.alera import (
    _CATASTROPHE_GLOBALS,
    _CATASTROPHE_INVALID,
    _CATASTROPHE_SCALARS,
    _PAPER,
    _PATH_INVALID,
    GRADIENT_FLOOR,
    _GroupWork,
    _PathLearningRates,
)
from lrlab.optim.clara import sgd_noise_reference
from lrlab.optim.kernels import alera as kernels

__all__ = ["SPALeRA"]


@register(
    "spalera",
    family="cumulative-path",
    paper=_PAPER,
    summary="SALeRA with one path entry and one LR multiplier per scalar parameter",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "alpha": 0.1, "adapt_constant": 1e-3, "mbratio": 0.25},
        {
            "lr": 0.05,
            "alpha": 0.05,
            "adapt_constant": 1e-4,
            "ph_lambda": 0.01,
            "weight_decay": 0.01,
        },
    ),
    invalid_kwargs=(*_PATH_INVALID, *_CATASTROPHE_INVALID),
    group_kwargs={"lr": 0.01},
)
class SPALeRA(_PathLearningRates):
    r"""SPALeRA: per-parameter SALeRA (2017).

    First the Page-Hinkley test of :class:`~lrlab.optim.alera.SALeRA` (an alarm restores the
    previous parameters, halves every rate and takes no step); otherwise

    .. math::
        \begin{aligned}
        &p \leftarrow (1 - \alpha)\, p + \alpha\, g / \lVert g \rVert
              \qquad(\lVert g \rVert \text{ over all parameters; only } (1 - \alpha) p
              \text{ if } \lVert g \rVert \le 10^{-6})\\
        &a_i \leftarrow a_i \exp\!\Big(C\, \frac{p_i^2 - \mu_t / D}{\alpha / D}\Big)
              \qquad \text{for every scalar parameter } i,\ a_i^{(0)} = 1\\
        &x_i \leftarrow x_i - \eta\, a_i\, g_i
        \end{aligned}

    with :math:`\mu_t` the reference of :class:`~lrlab.optim.alera.ALeRA` and :math:`D` the
    number of scalar parameters that have a gradient. The per-coordinate reference
    :math:`\mu_t / D` and spread :math:`\alpha / D` are the layer ones split evenly over the
    coordinates; the exponents of one step sum to :math:`C D (\lVert p\rVert^2 - \mu_t)/\alpha`,
    so on the first step the multipliers' geometric mean is unchanged.

    Symbols: :math:`a_i` ``state["lr_multiplier"]``, :math:`\eta` ``lr * rate_scale``,
    :math:`p` ``state["path"]``, :math:`t` the global ``block_step``; the catastrophe test as in
    :class:`~lrlab.optim.alera.SALeRA`.

    Args:
        params: parameters or param groups.
        lr: base learning rate :math:`\eta`, in (0, inf). Default 1e-3 (the Lua code's).
        alpha: path memory, in (0, 1]. Default 1e-3 (the Lua code's and ensmallen's).
        adapt_constant: :math:`C`, in [0, inf). Default 3.1e-8 (ensmallen's ``adaptRate``).
        mbratio, ph_lambda_rel, ph_lambda: the catastrophe test, as
            :class:`~lrlab.optim.alera.SALeRA`.
        weight_decay: coupled L2 coefficient, in [0, inf).
        foreach: multi-tensor path.
        fused: True runs the step as two passes over memory: the squared gradient norm, then
            the previous value, the path, the multipliers and the parameter (NOTE [the 2017
            scheme fused]). On CPU float32/float64 tensors each pass is a native multi-tensor
            kernel, one call for all tensors of a group and dtype (see
            :mod:`lrlab.optim._native`); elsewhere each tensor's pass is a compiled kernel, and
            tensors that are small or cannot be viewed flat take the ``foreach`` path (see
            :mod:`lrlab.optim._fused`).
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: each rank owns a disjoint part of the model: the gradient norm, :math:`D` and
            the loss are reduced over ranks.
        capturable: keep the step count and the catastrophe test's statistics as 0-d tensors on
            the parameters' device, so that the step reads nothing back to the host and
            ``torch.compile`` traces it without recompiling as they change (NOTE [device
            scalars] in ``lrlab/optim/_scalars.py``; a checkpoint holds plain numbers; an alarm
            restores the parameters by a select and moves by 0). None (default): True for
            CUDA/XPU parameters.

    ``effective_lr`` is :math:`\eta` (``lr * rate_scale``): the multipliers, which start at 1, are
    not folded in; ``statistics()`` reports ``multiplier_min``, ``multiplier_mean``,
    ``multiplier_max`` (one host synchronisation) and the catastrophe-test statistics.

    .. note::
        Alpha, C and the catastrophe-test settings are read per param group; the normalisation
        and :math:`D` are global, as in the official code. With ``bfloat16`` parameters the
        multipliers are stored in ``bfloat16`` (torch casts optimizer state to the parameter
        dtype when loading a checkpoint), so per-step changes below about 0.4 % are lost: keep
        float32 master weights. As for SALeRA, the backtracking is done (the Lua code's is a
        no-op) and the run is never stopped.
    """

    needs_loss: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, Any]] = {**_CATASTROPHE_GLOBALS, "block_step": 0}
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {
        **_CATASTROPHE_SCALARS,
        "block_step": int,
    }
    _state_arrays: ClassVar[Mapping[str, str]] = {
        "path": "path",
        "multiplier": "lr_multiplier",
        "prev": "prev",
    }
    _sums_pass: ClassVar[Pass] = kernels.GRAD_SQ
    _decayed_sums_pass: ClassVar[Pass] = kernels.DECAYED_GRAD_SQ
    _move: ClassVar[Pass] = kernels.SPALERA_MOVE

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        *,
        alpha: float = 1e-3,
        adapt_constant: float = 3.1e-8,
        mbratio: float = 0.01,
        ph_lambda_rel: float = 0.1,
        ph_lambda: float | None = None,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        super().__init__(params, self._group_defaults(locals()))

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        state["lr_multiplier"] = torch.ones_like(p, memory_format=torch.preserve_format)

    def _block_statistics(self, work: list[_GroupWork]) -> tuple[list[Tensor], list[Tensor]]:
        device = self._params()[0].device
        grads = [g for w in work for g in w.grads]
        if any(w.on_kernels for w in work):
            grad_sq = self._mixed_grad_sq(work, device)
        else:
            foreach = all(w.foreach for w in work)
            grad_sq = (
                _foreach.sum_of_squares(grads, foreach=foreach).to(device, torch.float64)
                if grads
                else torch.zeros((), dtype=torch.float64, device=device)
            )
        size = torch.tensor(
            float(sum(g.numel() for g in grads)), dtype=torch.float64, device=device
        )
        return [grad_sq, size], []

    def _mixed_grad_sq(self, work: list[_GroupWork], device: torch.device) -> Tensor:
        """``sum ||g||^2`` over all groups, some of whose tensors take the kernels: the squares
        of every tensor, summed in float64 (those of the native kernels first)."""
        native: list[Tensor] = []
        others: list[Tensor] = []
        for w in work:
            result = self._first_pass(w)
            native += [table.reshape(-1).to(device) for table in result.native.values()]
            compiled = dict(zip(result.compiled_rows, result.compiled, strict=True))
            norms = iter(_foreach.norms(w.reference(w.grads), foreach=w.foreach))
            reference = set(w.plan.reference)
            for index in range(len(w.params)):
                if index in compiled:
                    others.append(compiled[index]["grad_sq"].to(device=device, dtype=torch.float64))
                elif index in reference:
                    others.append(next(norms).to(device=device, dtype=torch.float64).square())
        return torch.cat([*native, torch.stack(others)] if others else native).sum()

    def _adapt_and_move(
        self,
        work: list[_GroupWork],
        shared: Iterator[Scalar],
        local: Iterator[Scalar],
        moves: bool | Tensor,
    ) -> None:
        grad_sq, size = next(shared), next(shared)
        if isinstance(size, Tensor):  # a capturable step: no gradient anywhere moves by 0
            moves = moves & (size != 0)
        elif size == 0:  # no gradient on any rank
            for group in self.param_groups:
                group["effective_lr"] = 0.0
            return
        inverse_norm = kernels.inverse_norm(scalar.sqrt(grad_sq), GRADIENT_FLOOR)
        step = self._get_global("block_step")
        t = (step if isinstance(step, Tensor) else int(step)) + 1
        self._set_global("block_step", scalar.where(moves, t, step))
        rate = self._rate_scale()
        for w in work:
            group = w.group
            # 0 (no move, no path or multiplier update) on a capturable step's alarm
            eta = scalar.where(moves, float(group["lr"]) * rate, 0.0)
            group["effective_lr"] = eta
            if not w.params:
                continue
            alpha = scalar.where(moves, group["alpha"], 0.0)
            constant = scalar.where(moves, group["adapt_constant"], 0.0)
            mu_t = sgd_noise_reference(group["alpha"]) * (1.0 - (1.0 - group["alpha"]) ** (2 * t))
            # exp(C (p_i^2 - mu_t/D) / (alpha/D)) = exp(C D/alpha p_i^2 - C mu_t/alpha)
            gain = constant * size / group["alpha"]
            offset = -constant * mu_t / group["alpha"]
            if w.on_kernels:
                # pass (2): x_prev, the path, the multipliers and the parameter in one sweep;
                # "one": the runtime 1.0 of the compiled kernel's copy (lrlab.optim.kernels.alera)
                scalars = {"weight_decay": group["weight_decay"], "inverse_norm": inverse_norm}
                scalars |= {"alpha": alpha, "gain": gain, "offset": offset, "eta": eta, "one": 1.0}
                w.plan.run(self._move, scalars)
            if not w.plan.reference:
                continue
            # the reference loop: p <- lerp(p, g / ||g||, alpha), a <- a exp(gain p^2 + offset),
            # x <- x - eta a g
            params, grads = w.reference(w.params), w.reference(w.grads)
            states = [self.state[p] for p in params]
            paths = [state["path"] for state in states]
            multipliers = [state["lr_multiplier"] for state in states]
            if w.foreach:
                directions = torch._foreach_mul(grads, inverse_norm)
                torch._foreach_lerp_(paths, directions, alpha)  # type: ignore[arg-type]
                exponents = torch._foreach_mul(paths, paths)
                torch._foreach_mul_(exponents, gain)
                # (a device offset as a list: the single-tensor overload reads it back)
                offsets = [offset] * len(exponents) if scalar.is_device(offset) else offset
                torch._foreach_add_(exponents, offsets)
                torch._foreach_exp_(exponents)
                torch._foreach_mul_(multipliers, exponents)
                _foreach.add_scaled_(params, torch._foreach_mul(multipliers, grads), -eta)
                continue
            for p, g, path, multiplier in zip(params, grads, paths, multipliers, strict=True):
                path.lerp_(g * inverse_norm, alpha)
                multiplier.mul_((path * path).mul_(gain).add_(offset).exp_())
                scalar.add_scaled_(p, multiplier * g, -eta)

    def _statistics(self) -> dict[str, float]:
        rows: list[Tensor] = []
        count = 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                # an empty tensor has no multipliers (min/max of nothing is undefined)
                if state and "lr_multiplier" in state and state["lr_multiplier"].numel():
                    multiplier = state["lr_multiplier"].detach().reshape(-1).to(torch.float64)
                    rows.append(torch.stack([multiplier.min(), multiplier.sum(), multiplier.max()]))
                    count += multiplier.numel()
        stats = {"multiplier_min": 1.0, "multiplier_mean": 1.0, "multiplier_max": 1.0}
        if rows:
            values = torch.stack([row.cpu() for row in rows]).tolist()  # one synchronisation
            stats = {
                "multiplier_min": min(row[0] for row in values),
                "multiplier_mean": sum(row[1] for row in values) / count,
                "multiplier_max": max(row[2] for row in values),
            }
        return {**stats, **self._catastrophe_statistics()}
