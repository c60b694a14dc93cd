r"""Prodigy: an Adam whose step size is estimated online from the distance travelled.

Paper: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
ICML 2024, arXiv:2306.06101. Spec: ``shared/specs/defazio_family.md`` section 2. The released
package ``prodigyopt==1.1.2`` is the numerical oracle; :class:`Prodigy` takes its arguments, in
its order, with its defaults (a drop-in replacement).

Like D-Adaptation (:mod:`lrlab.optim.dadaptation`, whose shared machinery this module uses), the
method keeps a global lower bound ``d`` on :math:`\lVert x_0 - x_* \rVert`; it differs by weighting
new gradients with :math:`d_k^2` instead of :math:`d_k`, by measuring the distance actually
travelled (:math:`\langle g_k, x_0 - x_k \rangle`) and by scaling Adam's :math:`\epsilon` with
``d``. It improves D-Adaptation's rate by a factor :math:`O(\sqrt{\log(D / d_0)})`.

NOTE [Prodigy Resetting is not provided]
The early arXiv versions of the paper describe a second technique, "Resetting" (D-Adapted dual
averaging run in epochs, restarted whenever the estimate grows by a constant factor). It is not
implemented here: there is no public code to check against, the algorithm box could not be read
(the spec reconstructs it with medium-low confidence: the doubling constant and the restart
point are unverified), and the final (ICML 2024) version of the paper presents Prodigy alone. A
reconstruction we cannot test against the paper would be a different method under the paper's
name; ask for it with the algorithm box in hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _validation as check
from lrlab.optim._base import StateEntry, StepContext
from lrlab.optim._fused import check_fused, flat, flat_eligible, kernel, scalars
from lrlab.optim._native import NativeKernel, native_eligible
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._validation import (
    check_betas,
    check_bool,
    check_int,
    check_nonnegative,
    check_positive,
    check_range,
)
from lrlab.optim.dadaptation import (
    _check_foreach,
    _DistanceEstimator,
    _fast,
    _l1,
    _weight_decayed,
    check_growth_rate,
)

__all__ = ["Prodigy"]


def _sliced_length(p: Tensor, group: Mapping[str, Any]) -> int:
    """Entries of ``p.reshape(-1)[::slice_p]``."""
    slice_p = group.get("slice_p", 1)
    return -(-p.numel() // slice_p) if isinstance(slice_p, int) and slice_p > 0 else -1


@register(
    "prodigy",
    family="d-adaptation",
    paper=(
        "Mishchenko & Defazio, Prodigy: An Expeditiously Adaptive Parameter-Free Learner, "
        "ICML 2024, arXiv:2306.06101"
    ),
    summary="Adam whose step d*lr grows d from the distance travelled (d^2-weighted sums)",
    supports_foreach=True,
    supports_fused=True,
    oracle="prodigyopt.Prodigy",
    sample_kwargs=(
        {"d0": 1e-2, "growth_rate": 1.02},
        {"d0": 1e-3, "weight_decay": 0.01, "use_bias_correction": True, "safeguard_warmup": True},
        {"d0": 1e-3, "betas": (0.0, 0.99), "decouple": False, "weight_decay": 0.01, "slice_p": 3},
        {"d0": 1e-3, "beta3": 0.9, "d_coef": 2.0},
    ),
    invalid_kwargs=(
        InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"beta3": 1.0}, r"beta3 must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\), got -0\.1"),
        InvalidKwargs({"decouple": 1}, r"decouple must be True or False, got 1"),
        InvalidKwargs({"safeguard_warmup": None}, r"safeguard_warmup must be True or False"),
        InvalidKwargs({"d0": -1e-6}, r"d0 must be in \(0, inf\), got -1e-06"),
        InvalidKwargs({"d_coef": 0.0}, r"d_coef must be in \(0, inf\), got 0\.0"),
        InvalidKwargs({"growth_rate": 0.9}, r"growth_rate must be in \[1, inf\), got 0\.9"),
        InvalidKwargs({"slice_p": 0}, r"slice_p must be in \[1, inf\], got 0"),
        InvalidKwargs({"slice_p": 2.0}, r"slice_p must be an integer, got 2\.0"),
        InvalidKwargs({"sharded": "no"}, r"sharded must be True or False, got 'no'"),
    ),
    group_kwargs={"weight_decay": 0.5},
)
class Prodigy(_DistanceEstimator):
    r"""Prodigy (the released ``prodigyopt`` update; the paper's Adam form).

    .. math::
        \begin{aligned}
        &\lambda_k = d_k\, \gamma\, b_k, \qquad
            b_k = \frac{\sqrt{1 - \beta_2^{k+1}}}{1 - \beta_1^{k+1}}
            \text{ (or 1 without bias correction)}, \qquad
            g_k = \nabla f(x_k) \;(+\, \omega x_k \text{ if coupled})\\
        &m_{k+1} = \beta_1 m_k + (1 - \beta_1)\, d_k g_k, \qquad
            v_{k+1} = \beta_2 v_k + (1 - \beta_2)\, d_k^2 g_k^2\\
        &r_{k+1} = \beta_3 r_k + \tfrac{d_k}{d_0} \lambda_k
            \langle \hat g_k, \hat x_0 - \hat x_k \rangle, \qquad
            s_{k+1} = \beta_3 s_k + \tfrac{d_k}{d_0}\, w_k\, \hat g_k, \qquad
            w_k = \lambda_k \text{ (or } d_k \text{ with safeguard\_warmup)}\\
        &\hat d_{k+1} = c_d\, r_{k+1} / \lVert s_{k+1} \rVert_1, \qquad
            \bar d_{k+1} = \max(\bar d_k, \hat d_{k+1}), \qquad
            d_{k+1} = \min\!\big(\bar d_{k+1},\, \rho\, d_k'\big)\\
        &x_{k+1} = x_k - \omega \lambda_k x_k\,[\text{decouple}]
            - \lambda_k\, m_{k+1} / (\sqrt{v_{k+1}} + d_{k+1}\epsilon)
        \end{aligned}

    where :math:`d_k' = \max(d_k, \hat d_{k+1})` at the first increase (while
    :math:`d_k = d_0`, so the first jump bypasses ``growth_rate``) and :math:`d_k` after it;
    :math:`\bar d_0 = d_0`. With :math:`\beta_1 = 0` the step uses
    :math:`d_{k+1} g_k` in place of :math:`m_{k+1}`. The hats :math:`\hat g, \hat x` take every
    ``slice_p``-th entry of the flattened tensor (``slice_p = 1``: all of them), a memory saver
    for :math:`s` and :math:`x_0`. The factor :math:`d_k / d_0` rescales both sums against
    underflow and cancels in :math:`\hat d`, as does the paper's :math:`(1 - \beta_3)`.
    :math:`\beta_3` defaults to :math:`\sqrt{\beta_2}`. Sums run over parameters in groups
    with ``lr > 0``.

    Symbols: :math:`\gamma` ``lr``, :math:`d_k` ``d``, :math:`\bar d` ``d_max``, :math:`\hat d`
    ``d_hat``, :math:`r` ``d_numerator``, :math:`\lVert s \rVert_1` ``d_denom`` (global, in every
    group and in ``statistics()``), :math:`s, \hat x_0, m, v` ``state["s"]``, ``state["p0"]``,
    ``state["exp_avg"]``, ``state["exp_avg_sq"]``, :math:`\omega` ``weight_decay``, :math:`\rho`
    ``growth_rate``, :math:`c_d` ``d_coef``. ``effective_lr`` is :math:`\lambda_k` (``d * lr``
    with the bias correction) in groups with ``lr > 0``, else 0.

    Args:
        params: parameters or param groups.
        lr: multiplier of the adapted step, in (0, inf); leave at 1.0 (tune ``d_coef``). A
            group may set 0 to take no part in the estimate (see notes).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1); :math:`\beta_1 = 0` keeps no
            momentum buffer. Global.
        beta3: decay of the estimate's sums, in [0, 1), or None for :math:`\sqrt{\beta_2}`.
            Global.
        eps: :math:`\epsilon` (scaled by ``d``), in (0, inf); per group.
        weight_decay: :math:`\omega`, in [0, inf); per group.
        decouple: AdamW-style decoupled decay (default True, unlike DAdaptAdam). Global.
        use_bias_correction: multiply the step by :math:`b_k`. Global.
        safeguard_warmup: leave ``lr`` out of :math:`s`, so that an external LR warmup cannot
            inflate ``d``; per group.
        d0: initial estimate :math:`d_0`, in (0, inf); raise it (1e-5 .. 1e-4) if ``d`` stays
            tiny.
        d_coef: multiplies the estimate, in (0, inf): the recommended knob (0.5, 2, 10).
        growth_rate: largest growth factor of ``d`` per step after the first jump, in [1, inf].
        fsdp_in_use: the package's flag for sharded parameters; the same as ``sharded=True``.
        slice_p: keep every ``slice_p``-th entry in :math:`s, x_0` (11 saves memory), integer
            in [1, inf); per group.
        sharded: each rank owns a disjoint part of the parameters, so the sums are partial and
            reduced over ranks (not needed under DDP; DTensors and FSDP-1 are detected).
        foreach: None (default) takes the fast path for dense CPU/CUDA tensors (``||s||_1`` by
            a norm kernel, no ``abs()`` temporary), False the package's operations, bit for bit
            (see NOTE [D-Adaptation fast path] in :mod:`lrlab.optim.dadaptation`).
        fused: True runs the step in two passes over memory: the moments, :math:`s` and the
            two sums, then (once the new :math:`d` is known, which the update's
            :math:`d_{k+1}\epsilon` needs) the parameter update. On CPU float32/float64 tensors
            each pass is a native multi-tensor kernel, one call for all tensors of a dtype, any
            ``slice_p`` (see :mod:`lrlab.optim._native`); elsewhere each tensor's pass is a
            compiled kernel, except the first pass with ``slice_p > 1`` (the ``foreach=False``
            path), and a non-contiguous tensor takes the eager path (see
            :mod:`lrlab.optim._fused`). Opt-in: the first step pays the build or compilation.

    .. note::
        Deviations from ``prodigyopt==1.1.2`` (spec 2.2), identical numbers otherwise:
        ``p.grad`` is never modified (the package adds coupled decay in place); a step in which
        no statistic moved (all-zero gradients, ``lr`` 0 everywhere) is a no-op on every rank,
        after the one reduction of this step's increments on the parameters' device (the
        package returns early without FSDP, and with FSDP divides by zero or hits an unbound
        variable, on ``.cuda()`` buffers); different ``lr`` in two groups (other than 0) raise
        ``ValueError`` (the package: ``RuntimeError``); settings the package reads from the
        first or last group only (``betas``, ``beta3``, ``decouple``, ``use_bias_correction``,
        ``d0``, ``d_coef``, ``growth_rate``) must be equal in every group; the package's
        ``print("Using decoupled weight decay")`` is not reproduced (lrlab never prints).

    .. note::
        As in the package, parameters of a group with ``lr = 0`` are still stepped with
        :math:`\lambda_k`: their decoupled decay applies and their (stale) momentum is used;
        with :math:`\beta_1 = 0` their raw gradient is divided by :math:`d\epsilon` (huge).
        Do not rely on ``lr = 0`` to freeze parameters; leave them out of the optimizer.

    Example:
        >>> optimizer = Prodigy(model.parameters(), lr=1.0, weight_decay=0.01)
        >>> scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
        >>> scheduler.step()
    """

    #: s and x0 keep every slice_p-th entry of the flattened tensor (x0: 0-d for an all-zero
    #: tensor)
    state_layout: ClassVar[Mapping[str, StateEntry]] = {
        "s": StateEntry(
            shapes=lambda p, group: ((_sliced_length(p, group),),),
            dtype=lambda p: _foreach.accumulation_dtype(p.dtype),
        ),
        "p0": StateEntry(shapes=lambda p, group: ((_sliced_length(p, group),), ())),
        # float32 for float16/bfloat16 parameters (see _init_states)
        "exp_avg": StateEntry(dtype=lambda p: _foreach.accumulation_dtype(p.dtype)),
        "exp_avg_sq": StateEntry(dtype=lambda p: _foreach.accumulation_dtype(p.dtype)),
    }
    global_defaults: ClassVar[dict[str, float | int]] = {
        "k": 0,
        "d": 1e-6,
        "d_max": 1e-6,
        "d_hat": 0.0,
        "d_numerator": 0.0,
        "d_denom": 0.0,
    }
    global_settings: ClassVar[tuple[str, ...]] = (
        *_DistanceEstimator.global_settings,
        "betas",
        "beta3",
        "decouple",
        "use_bias_correction",
    )

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "betas": check.betas(),
        "beta3": check.optional(check.in_range(0.0, 1.0, "[)")),
        "decouple": check.boolean(),
        "use_bias_correction": check.boolean(),
        "safeguard_warmup": check.boolean(),
        "slice_p": check.integer(1),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
        *,
        sharded: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_betas("betas", betas)
        if beta3 is not None:
            check_range("beta3", beta3, 0.0, 1.0, "[)")
        check_positive("eps", eps)
        check_nonnegative("weight_decay", weight_decay)
        check_bool("decouple", decouple)
        check_bool("use_bias_correction", use_bias_correction)
        check_bool("safeguard_warmup", safeguard_warmup)
        check_positive("d0", d0)
        check_positive("d_coef", d_coef)
        check_growth_rate(growth_rate)
        check_bool("fsdp_in_use", fsdp_in_use)
        check_int("slice_p", slice_p, 1)
        check_bool("sharded", sharded)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "beta3": beta3,
            "eps": eps,
            "weight_decay": weight_decay,
            "decouple": decouple,
            "use_bias_correction": use_bias_correction,
            "safeguard_warmup": safeguard_warmup,
            "d0": d0,
            "d_coef": d_coef,
            "growth_rate": growth_rate,
            "slice_p": slice_p,
            "sharded": fsdp_in_use or sharded,
            "foreach": _check_foreach(foreach),
            "fused": fused,
        }
        super().__init__(params, defaults)
        self._set_global("d_max", float(d0))

    def _init_states(self) -> None:
        """State of the parameters seen for the first time (one host sync, first step only)."""
        beta1 = self.param_groups[0]["betas"][0]
        fresh = [
            (group, p)
            for group in self.param_groups
            for p, _ in self._with_grads(group)
            if len(self.state[p]) == 0
        ]
        if not fresh:
            return
        device = fresh[0][1].device
        # an all-zero tensor (e.g. a LoRA factor) keeps a 0-d x0, as in the package: it
        # broadcasts in <g, x0 - x> and saves the memory of a copy
        nonzero = torch.stack([p.detach().ne(0).any().to(device) for _, p in fresh]).tolist()
        for (group, p), any_nonzero in zip(fresh, nonzero, strict=True):
            state = self.state[p]
            sliced = p.detach().reshape(-1)[:: group["slice_p"]]
            # float32 statistics for float16/bfloat16 parameters: the moments carry factors d
            # and d^2 (d0 = 1e-6: 1e-12), which underflow to 0 in float16 and make the first
            # step divide by zero (the package's NaN after one step)
            wide = _foreach.accumulation_dtype(p.dtype)
            state["s"] = torch.zeros_like(sliced, dtype=wide)
            state["p0"] = (
                sliced.clone() if any_nonzero else torch.zeros((), dtype=p.dtype, device=p.device)
            )
            if beta1 > 0:
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=wide, memory_format=torch.preserve_format
                )
            state["exp_avg_sq"] = torch.zeros_like(
                p, dtype=wide, memory_format=torch.preserve_format
            )

    def _update(self, context: StepContext) -> None:
        lr = self._common_lr()
        first = self.param_groups[0]
        k, d, d_max = int(first["k"]), float(first["d"]), float(first["d_max"])
        d0 = float(first["d0"])
        beta1, beta2 = first["betas"]
        beta3 = math.sqrt(beta2) if first["beta3"] is None else float(first["beta3"])
        decouple = bool(first["decouple"])
        correction = (
            math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
            if first["use_bias_correction"]
            else 1.0
        )
        lam = d * lr * correction
        self._init_states()

        # (group, p, grad, g, fused update) of every parameter with a gradient; g includes
        # coupled decay, and is None where no eager pass needs it
        entries: list[tuple[dict[str, Any], Tensor, Tensor, Tensor | None, bool]] = []
        distances, l1 = [], []
        # per group, the update's rows of the native kernel by dtype: (p, direction, v)
        native_steps: list[dict[torch.dtype, list[tuple[Tensor, ...]]]] = []
        native_moments = _NATIVE_MOMENTS if beta1 > 0 else _NATIVE_MOMENTS_WITHOUT_MOMENTUM
        for group in self.param_groups:
            weight_decay, slice_p = group["weight_decay"], group["slice_p"]
            fast = _fast(group)
            fused = bool(group.get("fused", False))
            weight = d if group["safeguard_warmup"] else lam
            constants: dict[torch.dtype, Tensor] = {}
            native = fused and native_moments.available()
            native_rows: dict[torch.dtype, list[tuple[Tensor, ...]]] = {}
            # per row: 1 where x0 is the one element of an all-zero tensor's 0-d x0
            native_broadcast: dict[torch.dtype, list[tuple[float]]] = {}
            native_step: dict[torch.dtype, list[tuple[Tensor, ...]]] = {}
            for p, grad in self._with_grads(group):
                state = self.state[p]
                moments = [state["exp_avg_sq"], *([state["exp_avg"]] if beta1 > 0 else [])]
                if native and native_eligible(grad, p, state["s"], state["p0"], *moments):
                    direction = moments[1] if beta1 > 0 else grad
                    native_step.setdefault(p.dtype, []).append((p, direction, moments[0]))
                    if group["lr"] != 0:
                        row = (grad, p, state["p0"], state["s"], *moments)
                        native_rows.setdefault(p.dtype, []).append(row)
                        broadcast = (1.0 if state["p0"].dim() == 0 else 0.0,)
                        native_broadcast.setdefault(p.dtype, []).append(broadcast)
                    continue
                fused_update = fused and flat_eligible(p, grad, *moments)
                # the kernel reads s and x0 flat: every slice_p-th entry is not a flat view
                fused_statistics = (
                    fused_update and slice_p == 1 and flat_eligible(state["s"], state["p0"])
                )
                g = None
                if not fused_update or (group["lr"] != 0 and not fused_statistics):
                    g = grad if decouple else _weight_decayed(grad, p, weight_decay)
                entries.append((group, p, grad, g, fused_update))
                if group["lr"] == 0:
                    continue
                if fused_statistics:
                    if p.dtype not in constants:
                        constants[p.dtype] = scalars(
                            (
                                0.0 if decouple else weight_decay,
                                (d / d0) * lam,
                                beta1,
                                d * (1 - beta1),
                                beta2,
                                d * d * (1 - beta2),
                                beta3,
                                (d / d0) * weight,
                            ),
                            p,
                        )
                    # a 0-d x0 (an all-zero tensor) views as one element and broadcasts
                    flat_tensors = [flat(t) for t in (grad, p, state["p0"], state["s"], *moments)]
                    if beta1 > 0:
                        distance, norm = _prodigy_moments(*flat_tensors, constants[p.dtype])
                    else:
                        distance, norm = _prodigy_moments_without_momentum(
                            *flat_tensors, constants[p.dtype]
                        )
                    distances.append(distance)
                    l1.append(norm)
                    continue
                assert g is not None
                g_hat = g.reshape(-1)[::slice_p]
                x_hat = p.detach().reshape(-1)[::slice_p]
                distances.append(torch.dot(g_hat, state["p0"] - x_hat) * ((d / d0) * lam))
                if beta1 > 0:
                    state["exp_avg"].mul_(beta1).add_(g, alpha=d * (1 - beta1))
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=d * d * (1 - beta2))
                state["s"].mul_(beta3).add_(g_hat, alpha=(d / d0) * weight)
                l1.append(_l1(state["s"], fast))
            for dtype, rows in native_rows.items():
                sums = native_moments(
                    rows,
                    (
                        0.0 if decouple else weight_decay,
                        (d / d0) * lam,
                        beta1,
                        d * (1 - beta1),
                        beta2,
                        d * d * (1 - beta2),
                        beta3,
                        (d / d0) * weight,
                        slice_p,
                    ),
                    native_broadcast[dtype],
                )
                assert sums is not None  # available() was checked above
                distance, norm = sums.sum(0).to(_foreach.accumulation_dtype(dtype))
                distances.append(distance)
                l1.append(norm)
            native_steps.append(native_step)

        increment, denominator = self._global_floats([self._total(distances), self._total(l1)])
        if denominator == 0.0:  # no progress: skip on every rank, after the collective
            self._skip_step()
            return
        numerator = beta3 * float(first["d_numerator"]) + increment
        d_hat = float(first["d_hat"])
        if lr > 0:
            d_hat = float(first["d_coef"]) * numerator / denominator
            if d == d0:  # the first increase is not limited by growth_rate
                d = max(d, d_hat)
            d_max = max(d_max, d_hat)
            d = min(d_max, d * float(first["growth_rate"]))

        for group, native_step in zip(self.param_groups, native_steps, strict=True):
            for rows in native_step.values():
                weight_decay = group["weight_decay"]
                _NATIVE_STEP(
                    rows,
                    (
                        -weight_decay * lam if decouple else 0.0,
                        # the raw gradient (beta1 = 0) is the one with coupled decay
                        weight_decay if beta1 == 0 and not decouple else 0.0,
                        -lam if beta1 > 0 else -lam * d,
                        d * group["eps"],
                    ),
                )
        # scalars of the update kernel, per (group, dtype)
        step_constants: dict[tuple[int, torch.dtype], Tensor] = {}
        for group, p, grad, g, fused_update in entries:
            state = self.state[p]
            if fused_update:
                key = (id(group), p.dtype)
                if key not in step_constants:
                    weight_decay = group["weight_decay"]
                    step_constants[key] = scalars(
                        (
                            -weight_decay * lam if decouple else 0.0,
                            # the raw gradient (beta1 = 0) is the one with coupled decay
                            weight_decay if beta1 == 0 and not decouple else 0.0,
                            -lam if beta1 > 0 else -lam * d,
                            d * group["eps"],
                        ),
                        p,
                    )
                direction = state["exp_avg"] if beta1 > 0 else grad
                _prodigy_step(
                    flat(p), flat(direction), flat(state["exp_avg_sq"]), step_constants[key]
                )
                continue
            assert g is not None
            denom = state["exp_avg_sq"].sqrt().add_(d * group["eps"])
            if group["weight_decay"] != 0 and decouple:
                p.add_(p, alpha=-group["weight_decay"] * lam)
            if beta1 > 0:
                p.addcdiv_(state["exp_avg"], denom, value=-lam)
            else:
                p.addcdiv_(g, denom, value=-lam * d)
        for group in self.param_groups:
            group["effective_lr"] = lam if group["lr"] > 0 else 0.0
        self._set_global("d_numerator", numerator)
        self._set_global("d_denom", denominator)
        self._set_global("d_hat", d_hat)
        self._set_global("d_max", d_max)
        self._set_global("d", d)
        self._set_global("k", k + 1)

    def _statistics(self) -> dict[str, float]:
        first = self.param_groups[0]
        return {
            key: float(first[key]) for key in ("d", "d_hat", "d_max", "d_numerator", "d_denom", "k")
        }


# -- native kernels (see :mod:`lrlab.optim._native`) -----------------------------------------


def _moments_lengths(
    n: int, constants: Sequence[float], broadcast: Sequence[float]
) -> tuple[int, ...]:
    """Element counts of (grad, p, x0, s, v[, m]): x0 and s hold every slice_p-th entry
    (constant 8), x0 one element where it broadcasts (the tensor constant)."""
    sliced = -(-n // int(constants[8]))
    x0 = 1 if broadcast[0] != 0.0 else sliced
    return (n, n, x0, sliced, n, n)


_NATIVE_MOMENTS = NativeKernel(
    "prodigy",
    "prodigy_moments_momentum",
    arrays=6,
    sums=2,
    tensor_constants=1,
    array_lengths=_moments_lengths,
)
_NATIVE_MOMENTS_WITHOUT_MOMENTUM = NativeKernel(
    "prodigy",
    "prodigy_moments_without_momentum",
    arrays=5,
    sums=2,
    tensor_constants=1,
    array_lengths=lambda n, constants, broadcast: _moments_lengths(n, constants, broadcast)[:5],
)
_NATIVE_STEP = NativeKernel("prodigy", "prodigy_step", arrays=3)


# -- fused kernels (see :mod:`lrlab.optim._fused`) -------------------------------------------


def _second_moment_and_sums(
    g: Tensor, p: Tensor, p0: Tensor, s: Tensor, v: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """What both first-pass kernels share (inlined into each when compiled)."""
    distance = (g * (p0 - p)).sum() * c[1]
    v.copy_(v * c[4] + c[5] * g * g)
    s_new = s * c[6] + g * c[7]
    s.copy_(s_new)
    return distance, s_new.abs().sum()


@kernel
def _prodigy_moments(
    grad: Tensor, p: Tensor, p0: Tensor, s: Tensor, v: Tensor, m: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """Prodigy's first pass in one sweep; ``c`` = (coupled decay, (d / d0) lam, beta1,
    d (1 - beta1), beta2, d^2 (1 - beta2), beta3, (d / d0) w). Returns the tensor's
    (d / d0) lam <g, x0 - x> and ||s_new||_1."""
    g = grad + c[0] * p
    m.copy_(m * c[2] + g * c[3])
    return _second_moment_and_sums(g, p, p0, s, v, c)


@kernel
def _prodigy_moments_without_momentum(
    grad: Tensor, p: Tensor, p0: Tensor, s: Tensor, v: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`_prodigy_moments` for beta1 = 0, which keeps no momentum buffer."""
    return _second_moment_and_sums(grad + c[0] * p, p, p0, s, v, c)


@kernel
def _prodigy_step(p: Tensor, direction: Tensor, v: Tensor, c: Tensor) -> None:
    """Prodigy's parameter update; ``c`` = (-decoupled decay times lam, coupled decay of a raw
    gradient direction, -lam (or -lam d_new with beta1 = 0), d_new eps)."""
    u = direction + c[1] * p
    p.copy_(p + c[0] * p + c[2] * u / (v.sqrt() + c[3]))
