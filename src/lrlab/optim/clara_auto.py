r"""CLARA-auto: a cumulative path-length learning rate that sets its own damping, with brakes.

lrlab's own method (no paper of its own; write-up and measurements in
``docs/methods/clara_auto.md``). It answers the open problem the CLARA paper ends with
(Atamna et al., "Cumulative Learning Rate Adaptation: Revisiting Path-Based Schedules for SGD
and Adam", arXiv:2508.05408, 2025): set the damping automatically, so that the method is
started from any learning rate and left alone. It combines three published ideas:

* the *path statistic* of CLARA / cumulative step-size adaptation (CSA) in CMA-ES (Hansen &
  Ostermeier, 2001), in CSA's logarithmic form, so that growing and shrinking are equally fast;
* a damping set from the observed dimension of the statistic, as CSA sets its damping from the
  search-space dimension;
* two safeguards against runaway growth: a *distance bound* in the style of DoG (Ivgi et al.,
  ICML 2023) and D-Adaptation (Defazio & Mishchenko, ICML 2023), and a Page-Hinkley / CUSUM
  *brake* on the gradient norm (the 2017 scheme's Page-Hinkley test, SALeRA, arXiv:1709.01427,
  watched the loss; here the gradient norm, so no loss is needed).

The algorithm, for every step :math:`t` (tensors :math:`i` with a gradient, :math:`D_i` elements,
:math:`K` of them; :math:`c` the path memory, :math:`\mu = c / (2 - c)`,
:math:`L = \log((2 - c)/c)`, :math:`a = (1 - c)^2`)::

    eta    = lr * f                                           f: the global LR factor
    eta    = min(eta, r + r_eps)                         [distance bound; r_eps = 1e-4]
    for every tensor i:
        m_i = b1 m_i + (1 - b1) g_i ;   v_i = b2 v_i + (1 - b2) g_i^2      (Adam moments)
        h_i = sqrt(v_i / (1 - b2^t_i)) + eps                              (preconditioner)
        x_i = x_i - eta (m_i / (1 - b1^t_i)) / h_i                         (the Adam move)
        q_i = g_i / h_i ;  p_i = (1 - c) p_i + c q_i / ||q_i||     (path of preconditioned
                                                                    gradient directions)
    S = sum_i ||p_i||^2 ;   M = sum_i mu (1 - (1 - c)^(2 t_i))  (E[S] for independent directions)
    sigma = sqrt(4 a / (1 + a) * sum_i 1/D_i) / K       (std of S/M under pure noise)
    l = clip(log(S / M), -L, L) - k sigma        (log form: +-L at full (dis)agreement; k = 1/2)
    d = c / (L (1 + sigma))                                           (automatic damping)
    f = f exp(d l)
    r = max(r, rms(x - x_0))                                          (distance travelled)
    z = clip((log ||g|| - z_bar) / s_z, -3, 3) ; C = max(0, C + z - 1/2)              [brake]
    (z_bar, s_z^2): exponential mean and variance of log ||g|| (rate c); from step 11:
    if C > 5:  f = f * exp(-L), C = 0

Why each piece (measured in ``docs/methods/clara_auto.md``):

* The path is built from the *preconditioned gradient* ``g / h`` rather than from the Adam step:
  consecutive gradient directions under pure noise are independent, so the reference is
  CLARA-SGD's exact ``mu (1 - (1-c)^(2t))`` for every step, including the first (where
  ``S / M = 1``); the path of momentum steps is correlated under noise (its reference is 6 times
  larger and only known in the stationary regime).
* ``log(S/M)`` lies in ``[-L, L]`` when the directions (anti-)agree fully: an LR that is too small
  grows as fast as a too-large one shrinks. CLARA's ``S/M - 1`` lies in ``[-1, 1/mu - 1]``.
* ``- k sigma`` (``anneal``): at the noise floor the preconditioned gradient directions are
  independent, ``S/M ~ 1`` at *every* LR, so the unbiased statistic holds whatever LR it has; the
  margin asks for agreement of at least ``k`` noise standard deviations before the LR may hold or
  grow, so that under pure noise the LR decays by ``exp(-d k sigma)`` per step (an anneal) while
  real agreement (``log(S/M)`` up to ``L``) still grows it. The equilibrium is
  ``S/M = exp(k sigma)``.
* ``d L = c / (1 + sigma)``: the LR may change by at most a factor ``e^c`` per step, about what
  the path (memory ``1/c`` steps) can follow without overshooting; a noisier statistic (small
  tensors) moves it more slowly.
* The distance bound limits the first steps, before the path knows anything: an initial LR of
  100 would otherwise throw the parameters 100 units away in the first step. It lets the LR at
  most double the distance travelled per step (DoG's geometric growth).
* The brake catches what the path cannot see: a divergence whose gradients keep their direction
  (the norm explodes while the path says "agree, grow").

Safeguard activity is visible in :meth:`statistics` (``capped_steps``, ``brake_events``).
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
from lrlab.optim._validation import (
    check_betas,
    check_bool,
    check_nonnegative,
    check_positive,
    check_range,
)

__all__ = ["ClaraAuto", "auto_damping", "noise_std_of_ratio"]

# a normalised direction of a zero gradient is 0, not NaN
_NORM_FLOOR = 1e-12
# the brake's CUSUM on the standardised log gradient norm: slack and alarm level in standard
# deviations (the textbook one-sigma-shift detector), outlier clip, and steps before it may fire
BRAKE_SLACK = 0.5
BRAKE_THRESHOLD = 5.0
BRAKE_CLIP = 3.0
BRAKE_WARMUP = 10


def noise_std_of_ratio(c: float, inverse_dimensions: Scalar, tensors: Scalar) -> Scalar:
    r"""Standard deviation of ``S / M`` for independent isotropic unit directions (stationary).

    With :math:`a = (1-c)^2`, one tensor of dimension :math:`D` gives
    :math:`\mathrm{Var}(S/M) = 4a / ((1+a) D)`; :math:`K` tensors sum their variances:
    :math:`\sigma = \sqrt{4a/(1+a) \sum_i 1/D_i} / K`. Python numbers give a float, 0-d
    tensors (a capturable step's reduced counts) a 0-d tensor.
    """
    a = (1.0 - c) ** 2
    return scalar.sqrt(4.0 * a / (1.0 + a) * inverse_dimensions) / tensors


def auto_damping(c: float, inverse_dimensions: Scalar, tensors: Scalar) -> Scalar:
    """``d = c / (L (1 + sigma))``: at most a factor ``exp(c / (1 + sigma))`` per step."""
    bound = math.log((2.0 - c) / c)
    return c / (bound * (1.0 + noise_std_of_ratio(c, inverse_dimensions, tensors)))


_INVALID = (
    InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
    InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"c": 1.0}, r"c must be in \(0, 1\), got 1\.0"),
    InvalidKwargs({"damping": -0.1}, r"damping must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"distance_bound": 1}, r"distance_bound must be True or False, got 1"),
    InvalidKwargs({"brake": "yes"}, r"brake must be True or False, got 'yes'"),
    InvalidKwargs({"anneal": -0.1}, r"anneal must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"initial_distance": 0.0}, r"initial_distance must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"fused": "yes"}, r"fused must be True, False or None, got 'yes'"),
)


@register(
    "clara-auto",
    family="cumulative-path",
    paper=(
        "lrlab's own: CLARA (Atamna et al., arXiv:2508.05408) with CSA-style automatic damping, "
        "a DoG-style distance bound and a Page-Hinkley brake"
    ),
    summary="Adam whose LR follows a log path-length ratio with automatic damping and safeguards",
    supports_fused=True,
    # the first sample starts at a larger r_eps: with the default 1e-4 the first steps of a
    # bfloat16 parameter of size ~1 round away (as plain Adam's would at lr 1e-4), and the
    # conformance suite checks that 5 steps move every dtype
    sample_kwargs=(
        {"lr": 0.05, "initial_distance": 0.01},
        {"lr": 0.05},
        {"lr": 10.0, "betas": (0.8, 0.99), "c": 0.3},
        {"lr": 0.05, "damping": 0.05, "distance_bound": False, "brake": False, "anneal": 0.0},
    ),
    invalid_kwargs=_INVALID,
    group_kwargs={"lr": 0.01},
)
class ClaraAuto(AdaptiveOptimizer):
    r"""CLARA-auto: Adam with a self-damped cumulative path-length LR and two safeguards.

    The update is the algorithm box of the module docstring (:mod:`lrlab.optim.clara_auto`).

    Symbols: :math:`f` ``lr_factor``, :math:`\eta` ``effective_lr``, :math:`m_i, v_i, p_i`
    ``state["exp_avg"], state["exp_avg_sq"], state["path"]``,
    :math:`x - x_0` ``state["displacement"]``, :math:`S/M` ``statistics()["path_ratio"]``,
    :math:`d` ``statistics()["damping"]``, :math:`r` ``statistics()["distance"]``,
    :math:`C` ``statistics()["brake_cusum"]``.

    Args:
        params: parameters or param groups.
        lr: initial learning rate, in (0, inf). Any value works; values above the distance bound
            (``initial_distance`` at the first step) start at the bound.
        betas: Adam's :math:`(\beta_1, \beta_2)`, each in [0, 1).
        eps: Adam's :math:`\epsilon`, in (0, inf).
        c: path memory, in (0, 1). Default 0.2 (CLARA's).
        damping: None (default) for the automatic damping ``c / (L (1 + sigma))``; a number in
            [0, inf) fixes :math:`d` (for ablations; 0 keeps the LR fixed up to the safeguards).
        anneal: :math:`k`, the evidence margin in noise standard deviations subtracted from the
            log statistic, in [0, inf). Default 0.5 (the screen in ``docs/methods/clara_auto.md``:
            0 never anneals at the noise floor, 2 and above anneal too fast); 0 is the unbiased
            statistic.
        distance_bound: cap the LR by the distance travelled plus ``r_eps`` (default True).
        brake: the CUSUM (Page-Hinkley) brake on the gradient norm (default True).
        initial_distance: :math:`r_\epsilon`, the bound before anything moved, in root-mean-square
            per-coordinate units (Adam moves every coordinate by about ``eta``), in (0, inf).
            Default 1e-4 (DoG's relative ``r_eps``; absolute here, so that every rank knows it
            without a collective).
        sharded: each rank owns a disjoint part of the parameters, so the sums are reduced over
            ranks (not needed for DDP or DTensor, which is detected).
        fused: the step's path. None (default): CPU float32/float64 tensors take the native
            multi-tensor kernels (``native/clara_auto.cpp``, built once per machine), two passes
            over memory, one call per pass for all tensors of a dtype: (1) the moments, the
            move and the displacement with ``||q||^2``, (2) the path once ``||q||`` is known;
            the other tensors take the reference loop. True also sends the tensors the native
            kernels cannot take (CUDA, low precision) to one compiled kernel per tensor, which
            does the whole step in one sweep (see :mod:`lrlab.optim._fused`; the first step
            pays the compilation). False: the reference loop only. The numbers are the same up
            to float rounding (checked in float64 by the conformance suite).
        capturable: keep the LR factor, the statistics, the distance, the brake's state, the
            counters and every tensor's step count as 0-d tensors on the parameters' device, so
            that the step reads nothing back to the host (every branch of the algorithm box is
            a select) and ``torch.compile`` traces it without recompiling as they change (NOTE
            [device scalars] in ``lrlab/optim/_scalars.py``; a checkpoint holds plain numbers).
            None (default): True for CUDA/XPU parameters.

    The factor is global: every group's ``lr`` is multiplied by the same ``f``. Memory: four
    tensors per parameter (the Adam moments, the path and the displacement from the start).

    Example:
        >>> optimizer = ClaraAuto(model.parameters(), lr=1.0)  # any initial LR
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    has_global_statistics: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, float]] = {
        "lr_factor": 1.0,
        "path_ratio": 1.0,
        "damping_used": 0.0,
        "distance": 0.0,
        "capped_steps": 0,
        "brake_mean": 0.0,
        "brake_variance": 0.0,
        "brake_cusum": 0.0,
        "brake_events": 0,
        "global_step": 0,
    }
    #: a capturable step keeps every global of the run on the device (the counters are ints in a
    #: checkpoint) and counts each tensor's steps there
    capturable_scalars = scalar.checkpoint_types(global_defaults)
    capturable_counts: ClassVar[tuple[str, ...]] = ("step",)
    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "betas": check.betas(),
        "eps": check.positive(),
        "c": check.in_range(0.0, 1.0, "()"),
        "damping": check.optional(check.nonnegative()),
        "distance_bound": check.boolean(),
        "brake": check.boolean(),
        "initial_distance": check.positive(),
        "anneal": check.nonnegative(),
    }

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        c: float = 0.2,
        damping: float | None = None,
        distance_bound: bool = True,
        brake: bool = True,
        initial_distance: float = 1e-4,
        anneal: float = 0.5,
        sharded: bool = False,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_betas("betas", betas)
        check_positive("eps", eps)
        check_range("c", c, 0.0, 1.0, "()")
        if damping is not None:
            check_nonnegative("damping", damping)
        check_bool("distance_bound", distance_bound)
        check_bool("brake", brake)
        check_positive("initial_distance", initial_distance)
        check_nonnegative("anneal", anneal)
        check_bool("sharded", sharded)
        fused = check_fused(fused, None)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "c": c,
            "damping": damping,
            "distance_bound": distance_bound,
            "brake": brake,
            "initial_distance": initial_distance,
            "anneal": anneal,
            "sharded": sharded,
            "fused": fused,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = self._new_count(p)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["path"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # the sum of the moves, in the accumulation dtype: x - x_0 in exact arithmetic, but a
        # low-precision parameter that rounds a small move away still counts it (else the
        # distance bound could stay at r_eps forever)
        state["displacement"] = torch.zeros_like(
            p, dtype=_foreach.accumulation_dtype(p.dtype), memory_format=torch.preserve_format
        )

    def _update(self, context: StepContext) -> None:
        settings = self.param_groups[0]
        c = float(settings["c"])
        mu = c / (2 - c)
        # Python floats, or 0-d device tensors in a capturable step (NOTE [device scalars])
        factor: Scalar = self._get_global("lr_factor")
        factor = factor if self.capturable else float(factor)
        capped: bool | Tensor = False
        if settings["distance_bound"]:  # eta = min(eta, r + r_eps)
            distance = self._get_global("distance")
            distance = distance if self.capturable else float(distance)
            bound = distance + float(settings["initial_distance"])
            largest_lr = max(float(group["lr"]) for group in self.param_groups)
            capped = largest_lr * factor > bound
            # never capped at lr 0 (a scheduler's end): both sides of a select are computed
            ceiling = bound / largest_lr if largest_lr > 0 else factor
            factor = scalar.where(capped, ceiling, factor)

        # the per-tensor sums S = sum ||p_i||^2, ||x - x_0||^2 and ||g||^2, as 0-d parts
        path_sq: list[Tensor] = []
        distance_sq: list[Tensor] = []
        grad_sq: list[Tensor] = []
        # M = sum_i mu (1 - (1-c)^(2 t_i)), the element counts, sum_i 1/D_i and K
        references: list[Scalar] = []
        numels: list[float] = []
        inverse_dimensions = tensors = 0.0
        for group in self.param_groups:
            eta = float(group["lr"]) * factor
            group["effective_lr"] = eta
            beta1, beta2 = group["betas"]
            rows: list[dict[str, Tensor]] = []
            biases: list[dict[str, Scalar]] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(p, state)
                state["step"] += 1
                # a 0-d device tensor in a capturable step (a changing int would recompile)
                step = state["step"] if self.capturable else int(state["step"])
                rows.append(self._arrays(p, state))
                # per tensor, in Python double (0-d tensors in a capturable step): 1 - beta2^t
                # and the move's -eta / (1 - beta1^t)
                biases.append(
                    {"bias_correction2": 1 - beta2**step, "step_size": -eta / (1 - beta1**step)}
                )
                references.append(mu * (1 - (1 - c) ** (2 * step)))
                numels.append(float(p.numel()))
                inverse_dimensions += 1.0 / max(p.numel(), 1)
                tensors += 1.0
            plan = route(group, rows, (_MOVE, _PATH))
            scalars = {
                "one_minus_beta1": 1 - beta1,
                "beta2": beta2,
                "one_minus_beta2": 1 - beta2,
                "eps": group["eps"],
                "c": c,
            }
            # (1) the Adam moments and move, x - x_0, and ||q||^2 (the compiled kernel: all of it)
            moved = plan.run(_MOVE, scalars, tensor_scalars=biases)
            # (2) p = (1 - c) p + c q / ||q||, once ||q|| is known
            squares = moved.native_by_row("preconditioned")
            path_scalars = [
                {
                    "bias_correction2": bias["bias_correction2"],
                    # max keeps a NaN, as clamp_min does
                    "norm": max(math.sqrt(squares.get(index, 0.0)), _NORM_FLOOR),
                }
                for index, bias in enumerate(biases)
            ]
            extended = plan.run(_PATH, {"eps": group["eps"], "c": c}, tensor_scalars=path_scalars)
            path_sq += [sums["path"] for sums in moved.compiled] + extended.parts("path")
            grad_sq += moved.parts("grad")
            distance_sq += moved.parts("distance")
            for index in plan.reference:
                sums = self._step_reference(rows[index], scalars, biases[index])
                path_sq.append(sums[0])
                grad_sq.append(sums[1])
                distance_sq.append(sums[2])

        device = context.params[0].device
        totals = [
            torch.stack([part.to(device, torch.float64) for part in parts]).sum()
            if parts
            else torch.zeros((), dtype=torch.float64, device=device)
            for parts in (path_sq, distance_sq, grad_sq)
        ]
        counts = [
            torch.as_tensor(value, dtype=torch.float64, device=device)
            for value in (sum(references), sum(numels), inverse_dimensions, tensors)
        ]
        # every rank reaches the reduction, even one without gradients this step
        reduced = self._reduce_global([*totals, *counts])
        if self.capturable:
            assert isinstance(factor, Tensor)
            self._adapt_on_device(factor, capped, reduced, c)
            return
        assert not isinstance(factor, Tensor)
        path_sq_total, distance_sq_total, grad_sq_total, reference, numel, inverse_d, k = (
            float(value) for value in reduced
        )
        if reference == 0.0:  # no tensor had a gradient on any rank
            return
        self._set_global("global_step", int(self._get_global("global_step")) + 1)
        if capped:
            self._set_global("capped_steps", int(self._get_global("capped_steps")) + 1)

        bound = math.log((2.0 - c) / c)
        ratio = path_sq_total / reference
        # l = clip(log(S/M), -L, L) - k sigma: hold or grow only on evidence of agreement
        log_ratio = min(max(math.log(max(ratio, 1e-300)), -bound), bound)
        log_ratio -= float(settings["anneal"]) * float(noise_std_of_ratio(c, inverse_d, k))
        damping = settings["damping"]
        if damping is None:
            damping = auto_damping(c, inverse_d, k)
        factor *= math.exp(float(damping) * log_ratio)  # f = f exp(d l)
        self._set_global("path_ratio", ratio)
        self._set_global("damping_used", float(damping))
        distance = math.sqrt(distance_sq_total / max(numel, 1.0))
        self._set_global("distance", max(float(self._get_global("distance")), distance))
        if settings["brake"]:
            factor = self._brake(factor, 0.5 * math.log(max(grad_sq_total, 1e-300)), c, bound)
        self._set_global("lr_factor", factor)

    def _adapt_on_device(
        self, factor: Tensor, capped: bool | Tensor, reduced: list[Tensor], c: float
    ) -> None:
        """The host step's update of the globals (after the reduction) without a host read:
        in the device scalars' dtype, every ``if`` a select, and every global kept as it was
        when no tensor had a gradient on any rank (``M = 0``, where the host step returns).
        ``factor`` is the one the distance bound left."""
        settings = self.param_groups[0]
        path_sq, distance_sq, grad_sq, reference, numel, inverse_d, k = (
            value.to(factor.dtype) for value in reduced
        )
        moved = reference != 0
        # both sides of a select are computed: the divisions by M and K take 1 where M = 0
        reference, k = torch.where(moved, reference, 1.0), torch.where(moved, k, 1.0)
        bound = math.log((2.0 - c) / c)
        ratio = path_sq / reference
        # l = clip(log(S/M), -L, L) - k sigma
        log_ratio = torch.log(ratio.clamp_min(1e-300)).clamp(-bound, bound)
        log_ratio = log_ratio - float(settings["anneal"]) * noise_std_of_ratio(c, inverse_d, k)
        damping = settings["damping"]
        damping = auto_damping(c, inverse_d, k) if damping is None else float(damping)
        step = self._get_global("global_step") + 1
        updates: dict[str, Scalar] = {
            "global_step": step,
            "capped_steps": self._get_global("capped_steps") + capped,
            "path_ratio": ratio,
            "damping_used": damping,
            "distance": torch.maximum(
                self._get_global("distance"), torch.sqrt(distance_sq / numel.clamp_min(1.0))
            ),
        }
        factor = factor * torch.exp(damping * log_ratio)  # f = f exp(d l)
        if settings["brake"]:
            log_norm = 0.5 * torch.log(grad_sq.clamp_min(1e-300))
            factor = self._brake_on_device(factor, log_norm, step, c, bound, updates)
        updates["lr_factor"] = factor
        for key, value in updates.items():
            self._set_global(key, scalar.where(moved, value, self._get_global(key)))

    def _arrays(self, p: Tensor, state: dict[str, Any]) -> dict[str, Tensor]:
        """The named arrays of one parameter that the passes read and write."""
        return {
            "grad": p.grad,
            "p": p,
            "m": state["exp_avg"],
            "v": state["exp_avg_sq"],
            "displacement": state["displacement"],
            "path": state["path"],
        }

    def _step_reference(
        self, arrays: Mapping[str, Tensor], scalars: Mapping[str, float], own: Mapping[str, Scalar]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The step of one tensor in eager torch operations (both passes; the ground truth of
        the conformance suite). Returns its ``||p||^2``, ``||g||^2`` and ``||x - x_0||^2``."""
        grad, p, m, v = arrays["grad"], arrays["p"], arrays["m"], arrays["v"]
        displacement, path = arrays["displacement"], arrays["path"]
        accumulate = _foreach.accumulation_dtype(p.dtype)
        m.lerp_(grad, scalars["one_minus_beta1"])
        v.mul_(scalars["beta2"]).addcmul_(grad, grad, value=scalars["one_minus_beta2"])
        denominator = (v / own["bias_correction2"]).sqrt_().add_(scalars["eps"])
        move = m / denominator
        # a 0-d tensor step size is multiplied in (torch's alpha= would read it to the host)
        scalar.add_scaled_(p, move, own["step_size"])
        scalar.add_scaled_(displacement, move.to(displacement.dtype), own["step_size"])
        preconditioned = grad / denominator
        norm = torch.linalg.vector_norm(preconditioned, dtype=accumulate)
        path.lerp_(preconditioned / norm.clamp_min(_NORM_FLOOR).to(p.dtype), scalars["c"])
        return (
            path.square().sum(dtype=accumulate),
            grad.square().sum(dtype=accumulate),
            displacement.square().sum(),
        )

    def _brake(self, factor: float, log_norm: float, c: float, shrink: float) -> float:
        """CUSUM (Page-Hinkley) on the standardised ``log ||g||``; on alarm ``f *= e^-L``.

        ``z = clip((log||g|| - mean) / std, -3, 3)`` with an exponential mean and variance
        (rate ``c``); ``C = max(0, C + z - 1/2)``; alarm at ``C > 5`` (the textbook CUSUM for a
        one-standard-deviation shift). Standardising makes a noisy gradient norm (heavy-tailed
        mini-batches) quiet and the clip needs two or more outliers in a row; a geometric rise
        keeps ``z`` near its clip and alarms within a few steps.
        """
        step = int(self._get_global("global_step"))
        mean = float(self._get_global("brake_mean"))
        variance = float(self._get_global("brake_variance"))
        if step == 1:
            self._set_global("brake_mean", log_norm)
            return factor
        deviation = log_norm - mean
        self._set_global("brake_mean", mean + c * deviation)
        self._set_global("brake_variance", (1 - c) * (variance + c * deviation * deviation))
        if step <= BRAKE_WARMUP:  # the variance needs a few samples first
            return factor
        standardised = max(-BRAKE_CLIP, min(BRAKE_CLIP, deviation / math.sqrt(variance + 1e-12)))
        cusum = max(0.0, float(self._get_global("brake_cusum")) + standardised - BRAKE_SLACK)
        if cusum > BRAKE_THRESHOLD:
            self._set_global("brake_events", int(self._get_global("brake_events")) + 1)
            cusum = 0.0
            factor *= math.exp(-shrink)
        self._set_global("brake_cusum", cusum)
        return factor

    def _brake_on_device(
        self,
        factor: Tensor,
        log_norm: Tensor,
        step: Tensor,
        c: float,
        shrink: float,
        updates: dict[str, Scalar],
    ) -> Tensor:
        """:meth:`_brake` without a host read: the new brake state goes to ``updates``; the
        first step only sets the mean, the warm-up leaves the CUSUM as it was."""
        mean = self._get_global("brake_mean")
        variance = self._get_global("brake_variance")
        cusum = self._get_global("brake_cusum")
        first = step == 1
        deviation = log_norm - mean
        updates["brake_mean"] = torch.where(first, log_norm, mean + c * deviation)
        updates["brake_variance"] = torch.where(
            first, variance, (1 - c) * (variance + c * deviation * deviation)
        )
        standardised = (deviation / torch.sqrt(variance + 1e-12)).clamp(-BRAKE_CLIP, BRAKE_CLIP)
        running = (cusum + standardised - BRAKE_SLACK).clamp_min(0.0)
        active = step > BRAKE_WARMUP  # the variance needs a few samples first
        alarm = active & (running > BRAKE_THRESHOLD)
        updates["brake_events"] = self._get_global("brake_events") + alarm
        updates["brake_cusum"] = torch.where(active, torch.where(alarm, 0.0, running), cusum)
        return torch.where(alarm, factor * math.exp(-shrink), factor)

    def _statistics(self) -> dict[str, float]:
        factor = float(self._get_global("lr_factor"))
        return {
            "lr_factor": factor,
            "path_ratio": float(self._get_global("path_ratio")),
            "damping": float(self._get_global("damping_used")),
            "distance": float(self._get_global("distance")),
            "distance_bound": float(self._get_global("distance"))
            + float(self.param_groups[0]["initial_distance"]),
            "capped_steps": float(self._get_global("capped_steps")),
            "brake_events": float(self._get_global("brake_events")),
            "brake_cusum": float(self._get_global("brake_cusum")),
        }


# -- the passes' kernels (see :mod:`lrlab.optim._executor`; native/clara_auto.cpp) -------------

_MOVE_SCHEMA = Schema(
    "ClaraAutoMove",
    # c: only the compiled kernel's, which folds the path pass into this one
    scalars=("one_minus_beta1", "beta2", "one_minus_beta2", "eps", "c"),
    tensor_scalars=("bias_correction2", "step_size"),  # 1 - beta2^t, -eta / (1 - beta1^t)
    sums=("preconditioned", "grad", "distance"),  # ||q||^2, ||g||^2, ||x - x_0||^2
)
_PATH_SCHEMA = Schema(
    "ClaraAutoPath",
    scalars=("eps", "c"),
    tensor_scalars=("bias_correction2", "norm"),  # norm: max(||q||, 1e-12)
    sums=("path",),
)


@kernel
def _clara_auto_step(
    grad: Tensor,
    p: Tensor,
    m: Tensor,
    v: Tensor,
    displacement: Tensor,
    path: Tensor,
    scalars: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The whole step of one tensor (one call holds the tensor, so ``||q||`` needs no second
    sweep), in the scalars' dtype (float32 for low-precision tensors). Returns ``||p||^2``,
    ``||g||^2`` and ``||x - x_0||^2``."""
    c, dtype = _MOVE_SCHEMA.read(scalars), scalars.dtype
    g = grad.to(dtype)
    m_new = torch.lerp(m.to(dtype), g, c["one_minus_beta1"])
    v_new = v.to(dtype) * c["beta2"] + c["one_minus_beta2"] * g * g
    m.copy_(m_new)
    v.copy_(v_new)
    denominator = (v_new / c["bias_correction2"]).sqrt() + c["eps"]
    move = m_new / denominator
    p.copy_(p.to(dtype) + c["step_size"] * move)
    displacement_new = displacement.to(dtype) + c["step_size"] * move
    displacement.copy_(displacement_new)
    preconditioned = g / denominator
    norm = preconditioned.square().sum().sqrt().clamp_min(_NORM_FLOOR)
    path_new = torch.lerp(path.to(dtype), preconditioned / norm, c["c"])
    path.copy_(path_new)
    return (
        path_new.square().sum(),
        (g * g).sum(),
        displacement_new.square().sum(),
    )


_MOVE = Pass(
    "clara_auto",
    ("grad", "p", "m", "v", "displacement"),
    _MOVE_SCHEMA,
    native="clara_auto_move",
    compiled=_clara_auto_step,
    compiled_arrays=("grad", "p", "m", "v", "displacement", "path"),
    compiled_sums=("path", "grad", "distance"),
)
_PATH = Pass(
    "clara_auto",
    ("grad", "v", "path"),
    _PATH_SCHEMA,
    native="clara_auto_path",
    compiled_folded=True,
)
