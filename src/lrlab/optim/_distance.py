r"""The machinery of the distance-estimating family: D-Adaptation and Prodigy (private).

Papers: Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
arXiv:2301.07733 (:mod:`lrlab.optim.dadaptation`); Mishchenko & Defazio, "Prodigy: An
Expeditiously Adaptive Parameter-Free Learner", ICML 2024, arXiv:2306.06101
(:mod:`lrlab.optim.prodigy`). Both keep a global scalar :math:`d`, a running lower bound on
:math:`D = \lVert x_0 - x_* \rVert`, from sums over *all* parameters; what they share, and only
that, lives here: the group rules, the learning rate across groups, the detection of partial
statistics, the one reduction and one host synchronisation per step, and the small tensor
helpers of their reference loops. Each method's update stays in its own module.

NOTE [D-Adaptation global scalars]
``d``, the step counter ``k`` and the running sums are method-global: they live as plain Python
numbers (0-d device tensors in a capturable step) in every param group (see NOTE [global
scalars live in param_groups] in ``_base.py``), so ``state_dict()`` resumes bit for bit.
Settings that shape the global estimate (``growth_rate``, ``d_coef``, ``d0``, the betas, ...)
are read from the first group, as in the packages; unlike the packages, a param group that
gives a *different* value for one of them is rejected with a ``ValueError`` instead of being
silently ignored. Per-group settings: ``lr`` (the largest or 0), ``weight_decay``, ``eps`` and
the method's own (DAdaptAdam's ``layer_scale``, Prodigy's ``safeguard_warmup`` and
``slice_p``).

NOTE [D-Adaptation learning rates across groups]
The step uses ``lr = max(group lr)``; every group's ``lr`` must equal that value or be 0 (else a
``ValueError``; the packages raise ``RuntimeError``). Groups with ``lr == 0`` take no part in the
statistics. Use ``layer_scale`` (DAdaptAdam) or ``d_coef`` to scale a part of a model.

NOTE [D-Adaptation across ranks]
The per-step increments of the sums (never the running values: spec 1.7 "HEAD pattern") are
reduced with one packed ``_reduce_global`` call, entered by every rank every step, only when the
statistics are partial (``sharded=True``, ``fsdp_in_use=True``, sharded DTensors, or FSDP-1 flat
parameters, which the packages detect by their ``_fsdp_flattened`` attribute). Under DDP nothing
is reduced: the package's ``fsdp_in_use=True`` under DDP inflates DAdaptSGD's ``d_hat`` by
``sqrt(world size)``.

NOTE [D-Adaptation fast path]
DAdaptSGD, DAdaptAdam and Prodigy take ``foreach`` (None: the fast path for dense CPU/CUDA
tensors; False: the reference path). The reference path performs the package's operations in the
package's order, so its float64 trajectories equal the package's bit for bit (the oracle tests
run it). The fast path computes the same formulas with fewer full-size temporaries, which on CPU
cost more than a pass over memory (every large allocation page-faults): ``||s||_1`` and
``||s||^2`` with norm / dot kernels instead of ``abs().sum()`` / ``(s * s).sum()``, quotients
written into the temporary that ``sqrt`` allocated, and DAdaptSGD's ``x = x0 - s`` written in
place. Its results differ from the reference path by float rounding only (the conformance suite
checks both paths against each other in float64 to rtol 1e-12).

NOTE [D-Adaptation capturable step]
With ``capturable=True`` (NOTE [device scalars] in ``_scalars.py``; the default for CUDA
parameters) every run-state global above is a 0-d tensor on the parameters' device, one tensor
shared by every group, and the step reads none of them back: a branch on one becomes
:func:`~lrlab.optim._scalars.where`. A step that makes no progress (the total that ``d_hat``
divides by is 0: all-zero gradients, or ``lr`` 0 everywhere) is then no Python ``return``:
every pass runs, the parameter update runs with its coefficients zeroed (so ``x`` keeps its
value), ``effective_lr`` is 0 and every global keeps its old value (``_set_globals``). The host
numbers hold to float rounding (tests/optim/test_capturable.py,
tests/optim/test_dadaptation_capturable.py). Two methods pay for the lost branch: DAdaptSGD
reduces ``||g||`` every step (one more read of the gradients, and one more collective when
sharded) and keeps it as ``||g0||`` where ``k == 0``; Prodigy keeps a full ``x0`` for an
all-zero tensor (its 0-d form is chosen by a host read).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer
from lrlab.optim._scalars import Scalar

__all__: list[str] = []


def _as_setting(value: Any) -> Any:
    # betas given as a list in one group and a tuple in another are the same setting
    return tuple(value) if isinstance(value, list) else value


def sharding(fsdp_in_use: bool, sharded: bool) -> bool:
    """The ``sharded`` setting: the packages' ``fsdp_in_use`` means the same (both checked, so
    that ``fsdp_in_use=True`` cannot hide a ``sharded`` that is not a bool)."""
    return check.check_bool("fsdp_in_use", fsdp_in_use) | check.check_bool("sharded", sharded)


def bias_correction(group: Mapping[str, Any], k: Scalar) -> Scalar:
    r"""Adam's :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})` with
    ``use_bias_correction``, else 1 (``k`` may be a device scalar)."""
    if not group["use_bias_correction"]:
        return 1.0
    beta1, beta2 = group["betas"]
    return scalar.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))


def weight_decayed(grad: Tensor, p: Tensor, weight_decay: float) -> Tensor:
    """``g + wd * p`` as a new tensor: ``p.grad`` is never modified (the packages add in
    place)."""
    return grad.add(p, alpha=weight_decay) if weight_decay != 0 else grad


def fast_path(group: Mapping[str, Any]) -> bool:
    """Whether this group takes the fast path (see NOTE [D-Adaptation fast path])."""
    return _foreach.resolve_foreach(group.get("foreach", False), group["params"])


def l1_norm(tensor: Tensor, fast: bool) -> Tensor:
    """``||t||_1``: the package's ``abs().sum()`` (a full-size temporary) or a norm kernel."""
    return torch.linalg.vector_norm(tensor, 1) if fast else tensor.abs().sum()


class DistanceEstimator(AdaptiveOptimizer):
    """The base of D-Adaptation and Prodigy (private; not registered).

    Group validation and the global settings check (NOTE [D-Adaptation global scalars]), the
    learning-rate rule across groups, the detection of partial statistics, and the one reduction
    plus one host synchronisation per step. A subclass keeps its global scalars in
    ``global_defaults``, which are also its ``statistics()``.
    """

    has_global_statistics: ClassVar[bool] = True
    #: settings read from the first group only; every group must carry the same value
    global_settings: ClassVar[tuple[str, ...]] = ("growth_rate", "d_coef", "d0", "sharded")

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        # a group may set lr = 0 to opt out of the shared estimate (the constructors ask lr > 0)
        "lr": check.nonnegative(),
        "weight_decay": check.nonnegative(),
        "eps": check.positive(),
        "d0": check.positive(),
        # below 1 it would freeze d for good; inf: no limit
        "growth_rate": check.in_range(1.0, math.inf, "[]"),
        "d_coef": check.positive(),
    }

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        # the constructor's settings pass the rules of a group's before anything uses them (a
        # group that overrides one would otherwise hide an invalid default); betas as a tuple
        self.check_hyperparameters(defaults)
        super().__init__(params, {key: _as_setting(value) for key, value in defaults.items()})
        self._set_initial("d", float(defaults["d0"]))

    def _set_initial(self, key: str, value: float) -> None:
        """Set a global at construction, as a device scalar in a capturable step (one tensor
        shared by every group)."""
        current = self._get_global(key)
        self._set_global(
            key, torch.full_like(current, value) if scalar.is_device(current) else value
        )

    # -- param groups -------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its settings (per-group ranges, shared global settings)."""
        merged = {**self.defaults, **param_group}
        self.check_hyperparameters(merged)
        if self.param_groups:
            first = self.param_groups[0]
            for key in self.global_settings:
                if _as_setting(merged[key]) != _as_setting(first[key]):
                    raise ValueError(
                        f"{key} is shared by all param groups (it shapes the global estimate "
                        f"of d); got {merged[key]!r} in a new group, but {first[key]!r} in the "
                        "first group"
                    )
        super().add_param_group(param_group)

    # -- the step helpers ---------------------------------------------------------------------

    def _common_lr(self) -> float:
        """``max(group lr)``; every group's lr must be that value or 0."""
        lr = max(float(group["lr"]) for group in self.param_groups)
        for index, group in enumerate(self.param_groups):
            if group["lr"] not in (lr, 0.0):
                raise ValueError(
                    f"lr of param group {index} must equal the largest group lr ({lr}) or be 0, "
                    f"got {group['lr']!r}: D-Adaptation estimates one d for all groups; scale "
                    "a group with layer_scale (DAdaptAdam) or the whole estimate with d_coef"
                )
        return lr

    def _statistics_are_partial(self) -> bool:
        # the package's own detection of FSDP-1 flat parameters, in addition to ours
        return super()._statistics_are_partial() or any(
            getattr(p, "_fsdp_flattened", False) for p in self._params()
        )

    def _with_grads(self, group: dict[str, Any]) -> Iterator[tuple[Tensor, Tensor]]:
        for p in group["params"]:
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                yield p, p.grad

    def _statistic_dtype_and_device(self) -> tuple[torch.dtype, torch.device]:
        # from ALL parameters, not only those with a gradient now: every rank must pack the
        # same dtype into the collective
        params = self._params()
        dtype = _foreach.accumulation_dtype(params[0].dtype)
        for p in params[1:]:
            dtype = torch.promote_types(dtype, _foreach.accumulation_dtype(p.dtype))
        return dtype, params[0].device

    def _total(self, parts: Sequence[Tensor]) -> Tensor:
        """Sum of 0-d tensors, in the statistics dtype, on the first parameter's device.

        Added one by one, in parameter order, as the packages add their Python floats: in
        float64 the sums then agree bit for bit, and the oracle trajectories with them (on a
        small MLP, a different summation order alone moves DAdaptAdam's iterates by ~1e-10).
        """
        dtype, device = self._statistic_dtype_and_device()
        total = torch.zeros((), dtype=dtype, device=device)
        for part in parts:
            total = total + part.to(device=device, dtype=dtype)
        return total

    def _globals(self, *keys: str) -> list[Scalar]:
        """The current values of global scalars: Python numbers of their default's type, or the
        device scalars themselves in a capturable step."""
        first = self.param_groups[0]
        if self.capturable:
            return [first[key] for key in keys]
        return [type(self.global_defaults[key])(first[key]) for key in keys]

    def _global_sums(self, *partials: Sequence[Tensor]) -> list[Scalar]:
        """The totals of this step's partial increments (one list of parts per statistic),
        reduced over ranks (one collective, every rank) and brought to the host (the one
        synchronisation of the step); in a capturable step 0-d tensors in the globals' dtype
        (the host's Python floats are doubles), read by nobody."""
        dtype, _ = self._statistic_dtype_and_device()
        reduced = self._reduce_global([self._total(parts) for parts in partials])
        totals = torch.stack([v.to(dtype) for v in reduced])
        if self.capturable:
            totals = totals.to(self._get_global("d").dtype)
        return scalar.entries(totals, self.capturable)

    def _stops(self, skip: bool | Tensor) -> bool:
        """Whether the step ends here, a no-op: on the host when ``skip`` holds (after setting
        every ``effective_lr`` to 0); a capturable step never ends early, it carries the device
        flag on (NOTE [D-Adaptation capturable step])."""
        if scalar.is_device(skip) or not skip:
            return False
        for group in self.param_groups:
            group["effective_lr"] = 0.0
        return True

    def _set_globals(self, skip: bool | Tensor, **values: Scalar) -> None:
        """Store the step's new globals; where the device flag ``skip`` holds, the old ones
        (the host returned before this call when it held)."""
        for key, value in values.items():
            if scalar.is_device(skip):
                value = scalar.where(skip, self._get_global(key), value)
            self._set_global(key, value)

    def _statistics(self) -> dict[str, float]:
        return {key: float(self._get_global(key)) for key in self.global_defaults}
