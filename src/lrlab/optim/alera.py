r"""ALeRA, SALeRA and Ag-Adam: the 2017 cumulative path-length learning rates.

Paper: A. Schoenauer-Sebag, M. Schoenauer, M. Sebag, "Stochastic Gradient Descent: Going As Fast
As Possible But Not Faster", arXiv:1709.01427 (2017). Official code: the Lua/Torch7 repository
``aschoenauer-sebag/salera``. Method page: ``docs/methods/cumulative-path.md``. The family's
fourth method, SPALeRA, is in :mod:`lrlab.optim.spalera` and builds on the machinery here
(:class:`_PathLearningRates`).

Every layer keeps an exponentially discounted sum ("path") of its *normalised raw gradients* and
compares the squared path length with its expectation when the unit directions are independent
(a random walk). Longer than expected (gradients agree): grow the layer's learning rate; shorter
(they cancel): shrink it. Unlike CLARA (:mod:`lrlab.optim.clara`), which revisits this scheme,
the learning rate is updated *before* the step and used for it, the reference carries the exact
transient correction, and the deviation is scaled by the reference's spread
:math:`\alpha / \sqrt{D_l}`.

NOTE [what a layer is]
The paper's "layer" is one module with weights: its weight and bias form one block. torch gives
an optimizer tensors, not modules, so every ALeRA-family class takes ``block``:

* ``"tensor"`` (default): every parameter tensor is its own block. Needs nothing from the user,
  but a layer's weight and bias get separate learning rates.
* ``"group"``: every param group is one block. :func:`layer_param_groups` builds one group per
  module that owns parameters (with ``block="group"``), which reproduces the paper's blocks:
  ``ALeRA(layer_param_groups(model), lr=...)``.

``block`` is a group setting, so the two can be mixed.

NOTE [the 2017 scheme across ranks]
A tensor block is always on one rank. A group block can span ranks when each rank owns a disjoint
part of the model (``sharded=True``): then its four partial sums (path norm, path-gradient inner
product, gradient norm, size) are reduced in the one collective of the step, and the new path
norm is obtained from them by expanding :math:`\lVert(1-\alpha)p + \alpha u\rVert^2`, so the step
needs no second collective. Every rank must then build the same group-mode groups in the same
order. SALeRA's and SPALeRA's Page-Hinkley test runs on the mini-batch loss: with sharded
parameters the loss is averaged over ranks in the same collective, so all ranks agree on alarms;
in replicated (DDP) training pass the same loss on every rank (e.g. the all-reduced mean).
Tested with disjoint ownership (``sharded=True``, threads standing in for ranks); DTensor
parameters are untested.

NOTE [the 2017 scheme fused]
The fast path of all four methods is two passes over memory, declared as
:class:`~lrlab.optim._executor.Pass` es with named scalars (the passes, their schemas and the
compiled kernels are in :mod:`lrlab.optim.kernels.alera`): on CPU float32/float64 tensors native
multi-tensor kernels (:mod:`lrlab.optim._native`, ``native/alera.cpp``), one call per pass for all
tensors of a group and dtype (a tensor block's rate and :math:`1/\lVert g_l \rVert` go in as
per-tensor scalars); with ``fused=True`` elsewhere compiled kernels (:mod:`lrlab.optim._fused`),
one call per tensor and pass; :func:`~lrlab.optim._executor.route` decides per tensor. The passes:
(1) the partial sums before anything moves (ALeRA, SALeRA, Ag-Adam: path norm, path-gradient inner
product, gradient norm; SPALeRA: the gradient norm) and (2) the path, the method's state and the
parameter. Two passes, not one, because pass (2) needs numbers that exist only after every sum of
pass (1) is in: a block's new rate and :math:`1/\lVert g_l \rVert` (a group block or SPALeRA's
global norm spans many tensors, and may be reduced over ranks), and for SALeRA and SPALeRA the
Page-Hinkley verdict, which must come before any parameter moves. The kernels add the weight decay
themselves (the gradient plus decay is never materialised; pass (1) reads the parameter only when
the decay is on), and pass (2) of SALeRA and SPALeRA also saves :math:`x_{\text{prev}}`, which the
reference loop copies in a pass of its own. Tensors that no kernel takes (for the compiled ones:
not :func:`~lrlab.optim._fused.flat_eligible`, i.e. small, non-contiguous, sparse) take the
reference loop (``foreach`` or per tensor) within the same step; all paths feed the same sums.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import AdaptiveOptimizer, StepContext
from lrlab.optim._distributed import is_distributed
from lrlab.optim._executor import Pass, PassResult, Plan, route
from lrlab.optim._fused import check_fused
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim.clara import sgd_noise_reference
from lrlab.optim.kernels import alera as kernels

__all__ = [
    "ALeRA",
    "AgAdam",
    "PageHinkley",
    "SALeRA",
    "layer_param_groups",
    "page_hinkley_step",
]

Block = Literal["tensor", "group"]
#: a step's reduced statistics, in order (Python floats, or a capturable step's 0-d tensors)
Sums = Iterator[Scalar]
_BLOCKS = ("tensor", "group")

#: a block whose gradient norm is at most this adds nothing to its path (the Lua code's
#: ``epsilon`` in ``main.lua``; ensmallen's ``epsilon``)
GRADIENT_FLOOR = 1e-6
#: the official code stops training once a learning rate falls to this (see SALeRA's notes)
LR_STOP = 1e-15
# math.exp overflows above ~709.78; a larger exponent would give an infinite rate anyway
_MAX_EXPONENT = 700.0
#: a block's rate factor, step count and last path ratio before its first step
_NEW_BLOCK: dict[str, Any] = {"lr_factor": 1.0, "block_step": 0, "path_ratio": 0.0}
_BLOCK_FLOATS = {"lr_factor", "path_ratio"}
#: their types in a checkpoint (a capturable step keeps them as 0-d device tensors)
_BLOCK_SCALARS = {key: type(value) for key, value in _NEW_BLOCK.items()}


def layer_param_groups(model: nn.Module, **options: Any) -> list[dict[str, Any]]:
    """One param group per module that owns parameters: the paper's per-layer blocks.

    A module's weight and bias (every parameter it registers itself, not its children's) form one
    group with ``block="group"``. Frozen parameters (``requires_grad=False``) are left out; a
    parameter shared by several modules (tied weights) belongs to the first module that owns it.

    Args:
        model: the model.
        **options: settings copied into every group (``lr=...``, ``alpha=...``).

    Example:
        >>> optimizer = ALeRA(layer_param_groups(model), lr=1e-2, alpha=1e-3)
    """
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module in model.modules():
        params = [
            p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen
        ]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "block": "group", **options})
    return groups


# -- the Page-Hinkley test ------------------------------------------------------------------------


class PageHinkley(NamedTuple):
    """Page-Hinkley statistics of SALeRA's catastrophe test (all 0 after a reset)."""

    n: Scalar = 0
    """calls since the last reset"""
    relaxed_loss: Scalar = 0.0
    r"""the relaxed (smoothed) mini-batch loss :math:`\bar\ell`"""
    mu0: Scalar = 0.0
    r"""the running mean of the relaxed loss :math:`\mu_0`"""
    U: Scalar = 0.0
    r"""the cumulative deviation :math:`U = \sum (\bar\ell - \mu_0)`"""
    m: Scalar = 0.0
    r"""the running minimum of :math:`U`"""


def page_hinkley_step(ph: PageHinkley, loss: Scalar, mbratio: float) -> PageHinkley:
    r"""One Page-Hinkley update with the mini-batch loss (spec 2.2, steps 1-2).

    .. math::
        \bar\ell \leftarrow \begin{cases} (1 - r)\,\bar\ell + r\,L & n > 1/r\\
                                          (n\,\bar\ell + L)/(n + 1) & \text{otherwise}\end{cases},
        \quad \mu_0 \leftarrow \frac{n \mu_0 + \bar\ell}{n + 1},\quad
        U \leftarrow U + \bar\ell - \mu_0,\quad m \leftarrow \min(m, U),\quad n \leftarrow n + 1

    The caller raises an alarm when :math:`U - m > \lambda` and then resets to ``PageHinkley()``.
    Python numbers, or 0-d tensors of a capturable step (NOTE [device scalars]).
    """
    n = ph.n
    relaxed = scalar.where(
        n > 1.0 / mbratio,
        (1.0 - mbratio) * ph.relaxed_loss + mbratio * loss,
        (n * ph.relaxed_loss + loss) / (n + 1),
    )
    mu0 = (n * ph.mu0 + relaxed) / (n + 1)
    cumulative = ph.U + relaxed - mu0
    return PageHinkley(n + 1, relaxed, mu0, cumulative, scalar.minimum(ph.m, cumulative))


_PH_KEYS = tuple(f"ph_{field}" for field in PageHinkley._fields)

_CATASTROPHE_GLOBALS: dict[str, Any] = {
    **dict(zip(_PH_KEYS, PageHinkley(), strict=True)),
    "ph_gap": 0.0,  # U - m at the last call (the test statistic)
    "ph_threshold": None,  # lambda, fixed at the first call from the first loss
    "rate_scale": 1.0,  # halved at every alarm; multiplies every learning rate
    "alarms": 0,
}
#: the catastrophe test's globals of a capturable step (NOTE [device scalars])
_CATASTROPHE_SCALARS = {k: float if v is None else type(v) for k, v in _CATASTROPHE_GLOBALS.items()}


# -- the shared machinery -------------------------------------------------------------------------


@dataclass(slots=True)
class _GroupWork:
    """The tensors of one param group that take part in this step, and where each goes."""

    group: dict[str, Any]
    params: list[Tensor]
    #: the raw gradient of a tensor the kernels take (they add the weight decay themselves), the
    #: gradient plus the coupled decay of one that the reference loop takes
    grads: list[Tensor]
    #: which tensors take the native or compiled kernels; ``plan.reference``: the others
    plan: Plan
    foreach: bool

    @property
    def on_kernels(self) -> bool:
        """Whether some tensor of the group takes the kernels."""
        return len(self.plan.reference) < len(self.params)

    def reference(self, values: list[Any]) -> list[Any]:
        """The entries of ``values`` (one per tensor) of the tensors of the reference loop."""
        return [values[i] for i in self.plan.reference]


class _PathLearningRates(AdaptiveOptimizer):
    """Paths of normalised raw gradients, per-block rates, and the optional catastrophe test.

    One step: (1) partial statistics of every block before anything moves; (2) one reduction
    (only for statistics that are partial across ranks) and one host synchronisation; (3) with
    the loss (SALeRA, SPALeRA), the Page-Hinkley test: an alarm restores the previous parameters,
    halves every rate and ends the step; (4) the rate update and the step.
    """

    has_global_statistics: ClassVar[bool] = True

    # -- hooks ----------------------------------------------------------------------------------

    #: pass (1) on the kernels without and with weight decay (without, the parameter is not read
    #: at all), and pass (2) (see lrlab.optim.kernels.alera)
    _sums_pass: ClassVar[Pass]
    _decayed_sums_pass: ClassVar[Pass]
    _move: ClassVar[Pass]
    #: the state arrays of pass (2): the pass's name of each -> its key in ``state[p]``
    _state_arrays: ClassVar[Mapping[str, str]] = {"path": "path"}

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "alpha": check.in_range(0.0, 1.0, "(]"),
        "adapt_constant": check.nonnegative(),
        "weight_decay": check.nonnegative(),
        # SALeRA's and SPALeRA's catastrophe detector
        "mbratio": check.in_range(0.0, 1.0, "(]"),
        "ph_lambda_rel": check.nonnegative(),
        "ph_lambda": check.optional(check.nonnegative()),
    }

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["path"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if self.needs_loss:
            # the value to restore on an alarm; a tensor that first gets a gradient on an alarm
            # step has not moved yet, so restoring it to itself is right
            state["prev"] = p.detach().clone(memory_format=torch.preserve_format)

    def _group_defaults(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """A constructor's arguments (its ``locals()``) as the optimizer's defaults: every one
        but ``params`` is a group setting. Checked here, by the declared rules (NOTE [one
        validation for hyperparameters]), before ``params`` is read; ``fused`` is resolved
        against ``foreach``."""
        defaults = {k: v for k, v in arguments.items() if k not in ("self", "params", "__class__")}
        defaults["fused"] = check_fused(defaults["fused"], defaults["foreach"])
        self.check_hyperparameters(defaults)
        if "betas" in defaults:
            defaults["betas"] = tuple(defaults["betas"])
        return defaults

    def _block_statistics(self, work: list[_GroupWork]) -> tuple[list[Tensor], list[Tensor]]:
        raise NotImplementedError

    def _adapt_and_move(
        self, work: list[_GroupWork], shared: Sums, local: Sums, moves: bool | Tensor
    ) -> None:
        """The rate update and the step; ``moves``: False on a capturable step's alarm (a
        tensor), which then keeps every rate and moves by 0."""
        raise NotImplementedError

    # -- the step -------------------------------------------------------------------------------

    def _update(self, context: StepContext) -> None:
        work = self._gather()
        device = context.params[0].device
        shared, local = self._block_statistics(work)
        if self.needs_loss:
            assert context.loss is not None  # the base class enforces needs_loss
            shared = [context.loss.detach().reshape(()), *shared]
        # one collective per step, reached by every rank (it is a no-op unless partial)
        shared = self._reduce_global([v.to(device=device, dtype=torch.float64) for v in shared])
        parts = [torch.stack(shared)] if shared else []
        parts.extend(v.to(device=device, dtype=torch.float64) for v in local)
        # the one host synchronisation (none in a capturable step: 0-d device tensors)
        values = scalar.entries(torch.cat(parts), self.capturable) if parts else []
        shared_values = iter(values[: len(shared)])
        local_values = iter(values[len(shared) :])
        moves: bool | Tensor = True
        if self.needs_loss:
            loss = next(shared_values) / self._loss_ranks()
            alarm = self._catastrophe(loss)
            if alarm is True:  # undo the last step; no step now
                for p, prev in self._previous():
                    p.copy_(prev)
                for group in self.param_groups:
                    group["effective_lr"] = 0.0
                return
            # x_prev <- x; pass (2) of a tensor on the kernels does it in the same sweep
            on_kernels = {id(p) for w in work for p in w.params} - {
                id(p) for w in work for p in w.reference(w.params)
            }
            # a capturable step's alarm: a select, not a return
            moves = ~alarm if isinstance(alarm, Tensor) else True
            for p, prev in self._previous():
                if isinstance(alarm, Tensor):
                    p.copy_(torch.where(alarm, prev, p))
                if id(p) not in on_kernels:
                    prev.copy_(p)
        self._adapt_and_move(work, shared_values, local_values, moves)

    def _gather(self) -> list[_GroupWork]:
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            rows = []
            for p, grad in zip(params, grads, strict=True):
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(group, p, state)
                arrays = {name: state[key] for name, key in self._state_arrays.items()}
                rows.append({"grad": grad, "p": p, **arrays})
            plan = route(group, rows, (self._sums_pass, self._decayed_sums_pass, self._move))
            foreach = _foreach.resolve_foreach(group["foreach"], params)
            if group["weight_decay"] != 0 and plan.reference:
                # coupled L2 for the reference loop; the kernels add it themselves (no full-size
                # temporary)
                kernels.decay(grads, params, plan.reference, group["weight_decay"], foreach)
            work.append(_GroupWork(group, params, grads, plan, foreach))
        return work

    def _first_pass(self, w: _GroupWork) -> PassResult:
        """Pass (1) of the tensors of ``w`` that the kernels take."""
        weight_decay = w.group["weight_decay"]
        if weight_decay != 0:
            return w.plan.run(self._decayed_sums_pass, {"weight_decay": weight_decay})
        return w.plan.run(self._sums_pass, {})

    def _rate_scale(self) -> Scalar:
        scale = self.param_groups[0].get("rate_scale", 1.0)
        return scale if isinstance(scale, Tensor) else float(scale)

    # -- the catastrophe test (SALeRA, SPALeRA) -------------------------------------------------

    def _loss_ranks(self) -> int:
        """The losses were summed over ranks when the statistics are partial: divide by this."""
        if self._statistics_are_partial() and is_distributed():
            return dist.get_world_size()
        return 1

    def _catastrophe(self, loss: Scalar) -> bool | Tensor:
        """The Page-Hinkley test with this call's loss: whether it raised an alarm (a 0-d bool
        tensor in a capturable step, whose updates are selects)."""
        first = self.param_groups[0]
        threshold = self._get_global("ph_threshold")
        if threshold is None:
            # lambda is fixed once, from the first loss (as the Lua code does); abs() keeps a
            # negative first loss from giving a negative threshold, which would alarm at once
            absolute = first["ph_lambda"]
            threshold = absolute if absolute is not None else first["ph_lambda_rel"] * abs(loss)
            if isinstance(loss, Tensor):
                threshold = torch.as_tensor(threshold, dtype=loss.dtype, device=loss.device)
            self._set_global("ph_threshold", threshold if self.capturable else float(threshold))
        ph = PageHinkley(*(self._get_global(key) for key in _PH_KEYS))
        ph = page_hinkley_step(ph, loss, first["mbratio"])
        gap = ph.U - ph.m
        self._set_global("ph_gap", gap)
        alarm = gap > threshold
        # on an alarm: count it, halve every rate, reset the test (paths and counters are kept)
        self._set_global("alarms", self._get_global("alarms") + scalar.where(alarm, 1, 0))
        rate = self._rate_scale()
        self._set_global("rate_scale", scalar.where(alarm, rate * 0.5, rate))
        reset = zip(PageHinkley(), ph, strict=True)
        ph = PageHinkley(*(scalar.where(alarm, new, old) for new, old in reset))
        for key, value in zip(_PH_KEYS, ph, strict=True):
            self._set_global(key, value)
        return alarm

    def _previous(self) -> Iterator[tuple[Tensor, Tensor]]:
        """``(x, x_prev)`` of every tensor that keeps its previous value (SALeRA, SPALeRA)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "prev" in self.state.get(p, {}):
                    yield p, self.state[p]["prev"]

    def _catastrophe_statistics(self) -> dict[str, float]:
        if not self.needs_loss:
            return {}
        return {
            "alarms": float(self._get_global("alarms")),
            "rate_scale": float(self._rate_scale()),
            "ph_gap": float(self._get_global("ph_gap")),
        }


class _LayerPathLearningRates(_PathLearningRates):
    """ALeRA's per-block rates (blocks: tensors or param groups); subclasses choose the move."""

    _sums_pass: ClassVar[Pass] = kernels.PATH_SUMS
    _decayed_sums_pass: ClassVar[Pass] = kernels.DECAYED_PATH_SUMS

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {"block": check.one_of(*_BLOCKS)}

    #: a capturable step keeps every block's run state on the device (a tensor block's in its
    #: state, made by :meth:`_block_value`; ``block_step`` as a count, an int in a checkpoint)
    capturable_scalars: ClassVar[Mapping[str, type] | None] = _BLOCK_SCALARS
    capturable_counts: ClassVar[tuple[str, ...]] = ("block_step",)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        # a group block keeps its rate factor, step count and last path ratio in the group
        for key, value in _NEW_BLOCK.items():
            self.param_groups[-1].setdefault(key, value)
        if self.capturable:
            self._to_device_scalars(self.param_groups[-1])

    def _block_value(self, p: Tensor, value: float) -> Scalar:
        """A tensor block's run state in this optimizer's mode (as ``_new_count``)."""
        if not self.capturable:
            return value
        dtype = torch.float32 if p.device.type == "mps" else torch.float64
        return torch.tensor(value, dtype=dtype, device=p.device)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint, with a tensor block's run state as Python numbers (a capturable step
        keeps it on the device), so that it loads in either mode."""
        state = super().state_dict()
        state["state"] = {
            index: {k: float(v) if k in _BLOCK_FLOATS else v for k, v in entry.items()}
            for index, entry in state["state"].items()
        }
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for p in self._params():  # a tensor block's run state in this optimizer's mode
            entry = self.state.get(p, {})
            entry.update(
                {k: self._block_value(p, float(entry[k])) for k in _BLOCK_FLOATS & entry.keys()}
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _NEW_BLOCK.items():
                group.setdefault(key, value)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        if group["block"] == "tensor":  # a tensor block keeps them in its state
            state.update({key: self._block_value(p, value) for key, value in _NEW_BLOCK.items()})

    def _block_statistics(self, work: list[_GroupWork]) -> tuple[list[Tensor], list[Tensor]]:
        shared: list[Tensor] = []
        local: list[Tensor] = []
        device = self._params()[0].device
        for w in work:
            if w.params:
                path_sq, dots, grad_sq = self._tensor_sums(w, device)
            if w.group["block"] == "group":
                # always four entries, even without local gradients: every rank packs the same
                # layout (NOTE [the 2017 scheme across ranks])
                if w.params:
                    size = torch.tensor(
                        float(sum(p.numel() for p in w.params)), dtype=torch.float64, device=device
                    )
                    shared.extend([path_sq.sum(), dots.sum(), grad_sq.sum(), size])
                else:
                    shared.extend([torch.zeros((), dtype=torch.float64, device=device)] * 4)
            elif w.params:
                local.append(torch.stack([path_sq, dots, grad_sq], dim=1).reshape(-1))
        return shared, local

    def _tensor_sums(self, w: _GroupWork, device: torch.device) -> tuple[Tensor, ...]:
        """Per tensor of ``w``, before the update: ``||p||^2``, ``<p, g>``, ``||g||^2`` (float64
        vectors in parameter order, so that a group block sums them in one order on every
        path): pass (1) on the kernels, :func:`~lrlab.optim.kernels.alera.tensor_statistics` on
        the reference loop."""
        paths = [self.state[p]["path"] for p in w.reference(w.params)]
        if not w.on_kernels:
            return kernels.tensor_statistics(paths, w.grads, w.foreach, device)
        result = self._first_pass(w)
        if [list(range(len(w.params)))] == list(result.native_rows.values()):
            # every tensor native and of one dtype (the usual case): already in order
            return next(iter(result.native.values())).to(device).unbind(1)
        rows = {i: r.to(device=device, dtype=torch.float64) for i, r in result.by_row().items()}
        if paths:
            reference = kernels.tensor_statistics(paths, w.reference(w.grads), w.foreach, device)
            rows.update(zip(w.plan.reference, torch.stack(reference, dim=1).unbind(0), strict=True))
        return torch.stack([rows[i] for i in range(len(w.params))]).unbind(1)

    def _adapt_block(
        self,
        group: dict[str, Any],
        holder: dict[str, Any],
        sums: list[Scalar],
        size: Scalar,
        moves: bool | Tensor,
    ) -> tuple[Scalar, Scalar]:
        """Update one block's rate from its statistics ``sums`` (``||p||^2``, ``<p, g>``,
        ``||g||^2``, of ``size`` elements); return (its eta, 1/||g_l|| or 0). Python numbers, or
        0-d tensors of a capturable step, where ``moves`` False (a tensor) keeps the rate and
        gives eta 0."""
        path_sq, dot, grad_sq = sums
        if isinstance(size, int) and size == 0:
            # an empty tensor has no path and no gradient: its rate stays as it is
            eta = scalar.where(
                moves, float(group["lr"]) * self._rate_scale() * holder["lr_factor"], 0.0
            )
            return eta, eta * 0.0  # (a 0-d tensor like the others in a capturable step)
        alpha = group["alpha"]
        inverse_norm = kernels.inverse_norm(scalar.sqrt(grad_sq), GRADIENT_FLOOR)
        # ||(1 - alpha) p + alpha g/||g|| ||^2, from sums that may have been reduced over ranks
        new_path_sq = scalar.maximum(
            0.0,
            (1.0 - alpha) ** 2 * path_sq
            + 2.0 * alpha * (1.0 - alpha) * inverse_norm * dot
            + (alpha * inverse_norm) ** 2 * grad_sq,
        )
        step = holder["block_step"]
        t = (step if isinstance(step, Tensor) else int(step)) + 1
        mu_t = sgd_noise_reference(alpha) * (1.0 - (1.0 - alpha) ** (2 * t))
        spread = alpha / scalar.sqrt(size)
        exponent = group["adapt_constant"] * (new_path_sq - mu_t) / spread
        factor = holder["lr_factor"] * kernels.capped_exp(exponent, _MAX_EXPONENT)
        new = {"lr_factor": factor, "block_step": t, "path_ratio": new_path_sq / mu_t}
        holder.update({key: scalar.where(moves, value, holder[key]) for key, value in new.items()})
        eta = float(group["lr"]) * self._rate_scale() * holder["lr_factor"]
        return scalar.where(moves, eta, 0.0), inverse_norm

    def _adapt_and_move(
        self, work: list[_GroupWork], shared: Sums, local: Sums, moves: bool | Tensor
    ) -> None:
        for w in work:
            group = w.group
            # the blocks' new rates: (eta_l, 1/||g_l||) of every tensor of the group
            if group["block"] == "group":
                *sums, size = (next(shared) for _ in range(4))
                if isinstance(size, Tensor):  # a capturable step: a block of size 0 is kept
                    rate = self._adapt_block(group, group, sums, size, moves & (size != 0))
                elif size == 0:  # no tensor of this block has a gradient on any rank
                    group["effective_lr"] = 0.0
                    continue
                else:
                    rate = self._adapt_block(group, group, sums, round(size), moves)
                group["effective_lr"] = rate[0]
                rates = [rate] * len(w.params)
            else:
                rates = [
                    self._adapt_block(
                        group, self.state[p], list(islice(local, 3)), p.numel(), moves
                    )
                    for p in w.params
                ]
                # the mean of the tensors' rates: one number for a group of per-tensor rates
                etas = [eta for eta, _ in rates]
                group["effective_lr"] = sum(etas) / len(etas) if etas else 0.0
            if not w.params:
                continue
            etas, inverse_norms = [eta for eta, _ in rates], [norm for _, norm in rates]
            alpha = scalar.where(moves, group["alpha"], 0.0)  # no move, no path update
            if w.on_kernels:
                # pass (2): the path, the method's state and the parameter in one sweep
                reference = set(w.plan.reference)
                tensor_scalars = [
                    {} if i in reference else self._tensor_scalars(group, p, etas[i], norm)
                    for i, (p, norm) in enumerate(zip(w.params, inverse_norms, strict=True))
                ]
                scalars = self._move_scalars(group, alpha)
                w.plan.run(self._move, scalars, tensor_scalars=tensor_scalars)
            if not w.plan.reference:
                continue
            # the reference loop: p <- lerp(p, g / ||g_l||, alpha), then the method's move
            paths = [self.state[p]["path"] for p in w.reference(w.params)]
            grads, inverse_norms = w.reference(w.grads), w.reference(inverse_norms)
            if w.foreach:
                directions = torch._foreach_mul(grads, inverse_norms)  # type: ignore[arg-type]
                torch._foreach_lerp_(paths, directions, alpha)  # type: ignore[arg-type]
            else:
                for path, g, inverse_norm in zip(paths, grads, inverse_norms, strict=True):
                    path.lerp_(g * inverse_norm, alpha)
            self._step(group, w.reference(w.params), grads, w.reference(etas), w.foreach)

    def _move_scalars(self, group: dict[str, Any], alpha: Scalar) -> dict[str, Scalar]:
        """The scalars of pass (2) (its schema's) of a group."""
        return {"weight_decay": group["weight_decay"], "alpha": alpha}

    def _tensor_scalars(
        self, group: dict[str, Any], p: Tensor, eta: Scalar, inverse_norm: Scalar
    ) -> dict[str, Scalar]:
        """The per-tensor scalars of pass (2) of ``p`` (its block's rate and 1/||g_l||)."""
        return {"inverse_norm": inverse_norm, "eta": eta}

    def _step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        etas: list[Scalar],
        foreach: bool,
    ) -> None:
        """The reference loop's move of ``params`` (each with its block's rate)."""
        raise NotImplementedError

    def _block_rates(self) -> tuple[list[float], list[float]]:
        """(eta, last path ratio) of every block that exists."""
        rate = float(self._rate_scale())
        etas: list[float] = []
        ratios: list[float] = []
        for group in self.param_groups:
            if group["block"] == "group":
                etas.append(float(group["lr"]) * rate * float(group["lr_factor"]))
                if group["block_step"] > 0:
                    ratios.append(float(group["path_ratio"]))
                continue
            for p in group["params"]:
                state = self.state.get(p)
                if state and "lr_factor" in state:
                    etas.append(float(group["lr"]) * rate * float(state["lr_factor"]))
                    ratios.append(float(state["path_ratio"]))
        if not etas:
            etas = [float(group["lr"]) * rate for group in self.param_groups]
        return etas, ratios

    def _statistics(self) -> dict[str, float]:
        etas, ratios = self._block_rates()
        return {
            "eta_min": min(etas),
            "eta_mean": sum(etas) / len(etas),
            "eta_max": max(etas),
            "path_ratio": sum(ratios) / len(ratios) if ratios else 0.0,
            **self._catastrophe_statistics(),
        }


# -- validation -----------------------------------------------------------------------------------


_PATH_INVALID = (
    InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"alpha": 0.0}, r"alpha must be in \(0, 1\], got 0\.0"),
    InvalidKwargs({"alpha": 1.5}, r"alpha must be in \(0, 1\], got 1\.5"),
    InvalidKwargs({"adapt_constant": -1e-3}, r"adapt_constant must be in \[0, inf\), got -0\.001"),
    InvalidKwargs({"weight_decay": -1.0}, r"weight_decay must be in \[0, inf\), got -1\.0"),
    InvalidKwargs({"sharded": 1}, r"sharded must be True or False, got 1"),
)
_BLOCK_INVALID = (
    InvalidKwargs({"block": "layer"}, r"block must be one of 'tensor', 'group', got 'layer'"),
)
_CATASTROPHE_INVALID = (
    InvalidKwargs({"mbratio": 0.0}, r"mbratio must be in \(0, 1\], got 0\.0"),
    InvalidKwargs({"ph_lambda_rel": -0.1}, r"ph_lambda_rel must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"ph_lambda": -1.0}, r"ph_lambda must be in \[0, inf\), got -1\.0"),
)

_PAPER = (
    "Schoenauer-Sebag, Schoenauer & Sebag, Stochastic Gradient Descent: Going As Fast As "
    "Possible But Not Faster, arXiv:1709.01427 (2017)"
)


# -- ALeRA ----------------------------------------------------------------------------------------


@register(
    "alera",
    family="cumulative-path",
    paper=_PAPER,
    summary="SGD with per-layer LRs from the path length of normalised gradients (2017)",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "alpha": 0.1, "adapt_constant": 0.01, "block": "group"},
        {"lr": 0.05, "alpha": 0.05, "adapt_constant": 1e-3, "weight_decay": 0.01},
    ),
    invalid_kwargs=(*_PATH_INVALID, *_BLOCK_INVALID),
    group_kwargs={"lr": 0.01},
)
class ALeRA(_LayerPathLearningRates):
    r"""ALeRA: SGD with per-layer learning rates set by cumulative path length (2017).

    .. math::
        \begin{aligned}
        &\textbf{for } t = 1, 2, \dots \textbf{ and every block (layer) } l
            \text{ with gradient } g_l \text{ (plus } \lambda x_l\text{):}\\
        &\quad p_l \leftarrow (1 - \alpha)\, p_l + \alpha\, g_l / \lVert g_l \rVert
            \quad(\text{only } (1 - \alpha)\, p_l \text{ if } \lVert g_l \rVert \le 10^{-6})\\
        &\quad \mu_t = \frac{\alpha}{2 - \alpha}\big(1 - (1 - \alpha)^{2t}\big), \qquad
              s_l = \alpha / \sqrt{D_l}\\
        &\quad \eta_l \leftarrow \eta_l \exp\!\big(C\, (\lVert p_l \rVert^2 - \mu_t) / s_l\big)\\
        &\quad x_l \leftarrow x_l - \eta_l\, g_l
        \end{aligned}

    The rate is updated *before* the step and used for it (the 2017 order; CLARA updates after).
    :math:`\mu_t` is the exact expectation of :math:`\lVert p_l\rVert^2` after :math:`t` random
    unit steps from :math:`p_l = 0`, so the first step never changes a rate
    (:math:`\lVert p_1 \rVert^2 = \alpha^2 = \mu_1`). The step uses the raw gradient.

    Symbols: :math:`\alpha` ``alpha``, :math:`C` ``adapt_constant``, :math:`\eta_l`
    ``lr * lr_factor`` (``lr_factor`` in ``state[p]`` for tensor blocks, in the group for group
    blocks), :math:`p_l` ``state["path"]``, :math:`t` ``block_step``, :math:`D_l` the block's
    number of elements, :math:`\lVert p_l\rVert^2/\mu_t` ``path_ratio``.

    Args:
        params: parameters or param groups (see :func:`layer_param_groups`).
        lr: initial learning rate :math:`\eta_0` of every block, in (0, inf). Default 1e-3 (the
            Lua code's).
        alpha: path memory :math:`\alpha`, in (0, 1]. Default 1e-3 (the Lua code's).
        adapt_constant: adaptation constant :math:`C`, in [0, inf); 0 freezes the rates.
            Default 1e-6 (ours: the Lua code has no default).
        block: ``"tensor"`` or ``"group"``: what one layer is (NOTE [what a layer is] in the
            module docstring). A group setting.
        weight_decay: coupled L2 coefficient added to the gradient (once, not in place), in
            [0, inf).
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the step as two passes over memory: the sums before the update, then
            the path and the parameter (NOTE [the 2017 scheme fused]). On CPU float32/float64
            tensors each pass is a native multi-tensor kernel, one call for all tensors of a
            dtype (see :mod:`lrlab.optim._native`); elsewhere each tensor's pass is a compiled
            kernel, and tensors that are small or cannot be viewed flat take the ``foreach``
            path (see :mod:`lrlab.optim._fused`).
            Default None: the native kernels wherever they run (built once per machine,
            cached) and the ``foreach`` path elsewhere; True adds the compiled kernels (the
            first step pays the compilation); False takes neither.
        sharded: each rank owns a disjoint part of the model; group blocks are then reduced over
            ranks (NOTE [the 2017 scheme across ranks]).
        capturable: keep every block's rate factor, step count and path ratio (and SALeRA's
            catastrophe-test statistics) as 0-d tensors on the parameters' device, so that the
            step reads nothing back to the host and ``torch.compile`` traces it without
            recompiling as they change (NOTE [device scalars] in ``lrlab/optim/_scalars.py``; a
            checkpoint holds plain numbers). None (default): True for CUDA/XPU parameters.

    ``effective_lr`` is the group's :math:`\eta_l` for a group block, and the mean of its
    tensors' :math:`\eta_l` for tensor blocks. ``statistics()`` adds ``eta_min``, ``eta_mean``,
    ``eta_max`` over all blocks and the mean ``path_ratio``.

    .. note::
        Deviations from the official code (``luasrc/alera.lua``): weight decay is added once (the
        Lua code adds it twice); the step counter :math:`t` of the reference is counted per block
        (the number of updates the block's path has had) instead of per call, which is the same
        when every block has a gradient at every step and keeps a block that starts late (frozen,
        then unfrozen) from being compared with a longer path's expectation; a block's tensors
        without a gradient in a step are not part of the block in that step.

    .. note::
        Confidence: high for the update (official code). The paper's recommended
        :math:`\alpha` and :math:`C` could not be checked; the defaults above are not the paper's.

    Example:
        >>> optimizer = ALeRA(layer_param_groups(model), lr=1e-2, alpha=1e-3, adapt_constant=1e-6)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    _move: ClassVar[Pass] = kernels.ALERA_MOVE

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        *,
        alpha: float = 1e-3,
        adapt_constant: float = 1e-6,
        block: Block = "tensor",
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        super().__init__(params, self._group_defaults(locals()))

    def _step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        etas: list[Scalar],
        foreach: bool,
    ) -> None:
        # x_l <- x_l - eta_l g_l
        kernels.sgd_reference_move(params, grads, etas, foreach)


# -- SALeRA ---------------------------------------------------------------------------------------


@register(
    "salera",
    family="cumulative-path",
    paper=_PAPER,
    summary="ALeRA plus a Page-Hinkley test on the loss that undoes a step and halves the LRs",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "alpha": 0.1, "adapt_constant": 0.01, "block": "group", "mbratio": 0.25},
        {"lr": 0.05, "alpha": 0.05, "adapt_constant": 1e-3, "ph_lambda": 0.01},
    ),
    invalid_kwargs=(*_PATH_INVALID, *_BLOCK_INVALID, *_CATASTROPHE_INVALID),
    group_kwargs={"lr": 0.01},
)
class SALeRA(ALeRA):
    r"""SALeRA: ALeRA plus a Page-Hinkley catastrophe test on the mini-batch loss (2017).

    Before the ALeRA update (see :class:`ALeRA`), with the loss :math:`L` of this call:

    .. math::
        \begin{aligned}
        &\bar\ell \leftarrow \begin{cases} (1 - r)\,\bar\ell + r\,L & n > 1/r\\
              (n\,\bar\ell + L)/(n + 1) & \text{otherwise}\end{cases},\qquad
         \mu_0 \leftarrow \frac{n \mu_0 + \bar\ell}{n + 1}\\
        &U \leftarrow U + \bar\ell - \mu_0,\qquad m \leftarrow \min(m, U)\\
        &\textbf{if } U - m > \lambda:\ x \leftarrow x_{\text{prev}},\
              \eta_l \leftarrow \eta_l / 2 \ \forall l,\ (n, \bar\ell, \mu_0, U, m) \leftarrow 0,
              \ \text{no step}\\
        &\textbf{else}:\ x_{\text{prev}} \leftarrow x,\ \text{ALeRA step},\ n \leftarrow n + 1
        \end{aligned}

    with :math:`\lambda = \lambda_{\text{rel}} \lvert L_1 \rvert` fixed at the first call (or the
    absolute ``ph_lambda``). An alarm means the mean loss went up since the last step: that step
    is undone and every rate halved. The test cannot fire on the first call after a reset
    (:math:`U - m = 0`).

    Symbols: :math:`r` ``mbratio``, :math:`\lambda` ``ph_threshold``, :math:`n, \bar\ell, \mu_0,
    U, m` ``ph_n``, ``ph_relaxed_loss``, ``ph_mu0``, ``ph_U``, ``ph_m`` (global scalars in the
    param groups, see :class:`PageHinkley`), :math:`x_{\text{prev}}` ``state["prev"]``; the
    halvings are kept as one global factor ``rate_scale`` that multiplies every rate.

    Args:
        params, lr, alpha, adapt_constant, block, weight_decay, foreach, sharded, capturable:
            as :class:`ALeRA` (a capturable alarm restores the parameters by a select and moves
            by 0).
        fused: as :class:`ALeRA` (native multi-tensor kernels on CPU float32/float64 tensors,
            compiled kernels elsewhere; the second pass also saves :math:`x_{\text{prev}}`, in
            the same pass over memory).
        mbratio: :math:`r`, mini-batch size over training-set size, in (0, 1]. Default 0.01 (the
            Lua runs').
        ph_lambda_rel: :math:`\lambda_{\text{rel}}`, in [0, inf). Default 0.1 (the Lua code's).
        ph_lambda: an absolute threshold :math:`\lambda` instead, in [0, inf) (ensmallen uses
            0.01). Default None.

    The catastrophe test is global: ``mbratio`` and the thresholds of the first param group are
    the ones used.

    ``statistics()`` adds ``alarms`` (count), ``rate_scale`` (:math:`2^{-\text{alarms}}`) and
    ``ph_gap`` (:math:`U - m` at the last call). ``effective_lr`` is 0.0 on an alarm call.
    Needs the loss: ``step(closure)`` or ``step(loss=loss)``. One extra copy of the parameters.

    .. note::
        What an alarm keeps: the ALeRA paths and the per-block step counters (as the Lua code
        does; ensmallen resets its counters), and :math:`\lambda`. Only the Page-Hinkley
        statistics are reset. The rates of tensors that get their first gradient after an alarm
        start halved too (the halving is one global factor).

    .. note::
        Deviations from the official code (``luasrc/salera.lua``): the Lua function rebinds a
        local ``x`` to the previous parameters, which its caller never sees, so its backtracking
        is a no-op; we restore the parameters, as the paper and ensmallen do. The Lua code stops
        training when a rate falls to 1e-15 or below; an lrlab optimizer never stops a run, so
        the caller can stop on ``statistics()["eta_min"] <= LR_STOP`` (1e-15; steps that small
        do nothing anyway). :math:`\lambda` uses :math:`\lvert L_1\rvert` (see above). With sharded
        parameters the loss is averaged over ranks (NOTE [the 2017 scheme across ranks]).

    Example:
        >>> optimizer = SALeRA(layer_param_groups(model), lr=1e-2, mbratio=batch / len(data))
        >>> loss = optimizer.step(closure)
    """

    needs_loss: ClassVar[bool] = True
    global_defaults: ClassVar[dict[str, Any]] = _CATASTROPHE_GLOBALS
    capturable_scalars: ClassVar[Mapping[str, type] | None] = _BLOCK_SCALARS | _CATASTROPHE_SCALARS
    _state_arrays: ClassVar[Mapping[str, str]] = {"path": "path", "prev": "prev"}
    _move: ClassVar[Pass] = kernels.SALERA_MOVE

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        *,
        alpha: float = 1e-3,
        adapt_constant: float = 1e-6,
        block: Block = "tensor",
        mbratio: float = 0.01,
        ph_lambda_rel: float = 0.1,
        ph_lambda: float | None = None,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        # skip ALeRA.__init__ (its signature has no catastrophe-test arguments)
        _LayerPathLearningRates.__init__(self, params, self._group_defaults(locals()))

    def _move_scalars(self, group: dict[str, Any], alpha: Scalar) -> dict[str, Scalar]:
        # "one": the runtime 1.0 of the compiled kernel's copy x_prev <- x (see
        # lrlab.optim.kernels.alera)
        return {**super()._move_scalars(group, alpha), "one": 1.0}


# -- Ag-Adam --------------------------------------------------------------------------------------


@register(
    "agadam",
    family="cumulative-path",
    paper=_PAPER,
    summary="Adam with per-layer ALeRA LRs from raw-gradient paths (the 2017 Ag-Adam)",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        {"lr": 0.05},
        {"lr": 0.05, "alpha": 0.1, "adapt_constant": 0.01, "block": "group"},
        {"lr": 0.05, "alpha": 0.05, "adapt_constant": 1e-3, "weight_decay": 0.01},
    ),
    invalid_kwargs=(
        *_PATH_INVALID,
        *_BLOCK_INVALID,
        InvalidKwargs({"betas": (0.9, 1.0)}, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
        InvalidKwargs({"eps": 0.0}, r"eps must be in \(0, inf\), got 0\.0"),
    ),
    group_kwargs={"lr": 0.01},
)
class AgAdam(_LayerPathLearningRates):
    r"""Ag-Adam: Adam whose per-layer learning rates ALeRA sets from raw-gradient paths (2017).

    Every block's rate :math:`\eta_l` is updated exactly as in :class:`ALeRA` (path of
    :math:`g_l / \lVert g_l \rVert`, before the step); then

    .. math::
        \begin{aligned}
        &m \leftarrow \beta_1 m + (1 - \beta_1) g,\qquad
              v \leftarrow \beta_2 v + (1 - \beta_2) g^2\\
        &x_l \leftarrow x_l - \eta_l \frac{\sqrt{1 - \beta_2^{t}}}{1 - \beta_1^{t}}\,
              \frac{m_l}{\sqrt{v_l} + \epsilon}
        \end{aligned}

    This is the variant the CLARA paper calls conceptually inconsistent: the path is built from
    normalised *raw gradients* and compared with the random-walk reference, while the step
    actually taken is Adam's preconditioned, momentum-smoothed one, whose consecutive directions
    are correlated even under pure noise. :class:`~lrlab.optim.ClaraAdam` builds the path from the
    Adam steps and uses their noise reference instead.

    Symbols: as :class:`ALeRA`, plus :math:`m, v` ``state["exp_avg"]``, ``state["exp_avg_sq"]``,
    :math:`t` ``state["step"]``, :math:`\beta_1, \beta_2` ``betas``, :math:`\epsilon` ``eps``.

    Args:
        params, lr, alpha, adapt_constant, block, weight_decay, foreach, sharded, capturable:
            as :class:`ALeRA` (``lr`` default 1e-3, the Lua code's; a capturable step also
            keeps every tensor's Adam step count on the device).
        fused: as :class:`ALeRA` (native multi-tensor kernels on CPU float32/float64 tensors,
            compiled kernels elsewhere; the second pass updates the path, the moments and the
            parameter).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). Default (0.9, 0.999).
        eps: :math:`\epsilon`, in (0, inf). Default 1e-8.

    ``effective_lr`` reports :math:`\eta_l` as ALeRA does (Adam's normalisation and bias
    correction are not folded in, as for lrlab's ``adam``).

    .. note::
        The bias correction is folded into the step size and :math:`\epsilon` is added to
        :math:`\sqrt{v}` (Kingma & Ba's efficient form, as the Lua code and Torch7's
        ``optim.adam`` do), not to :math:`\sqrt{v / (1 - \beta_2^t)}` as in ``torch.optim.Adam``:
        the two agree when torch's ``eps`` is :math:`\epsilon / \sqrt{1 - \beta_2^t}`. Weight
        decay is coupled and enters both the path and the moments, as in the Lua code.
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
        alpha: float = 1e-3,
        adapt_constant: float = 1e-6,
        block: Block = "tensor",
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        super().__init__(params, self._group_defaults(locals()))

    _state_arrays: ClassVar[Mapping[str, str]] = {"path": "path", "m": "exp_avg", "v": "exp_avg_sq"}
    _move: ClassVar[Pass] = kernels.AGADAM_MOVE

    capturable_counts: ClassVar[tuple[str, ...]] = ("block_step", "step")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        state["step"] = self._new_count(p)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @staticmethod
    def _step_size(group: dict[str, Any], eta: Scalar, step: Scalar) -> Scalar:
        """``eta sqrt(1 - beta2^t) / (1 - beta1^t)``, in Python double on every path (0-d
        tensors from a capturable step's count)."""
        beta1, beta2 = group["betas"]
        return eta * scalar.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)

    def _move_scalars(self, group: dict[str, Any], alpha: Scalar) -> dict[str, Scalar]:
        beta1, beta2 = group["betas"]
        return {
            **super()._move_scalars(group, alpha),
            "weight1": 1.0 - beta1,
            "beta2": beta2,
            "weight2": 1.0 - beta2,
            "eps": group["eps"],
        }

    def _tensor_scalars(
        self, group: dict[str, Any], p: Tensor, eta: Scalar, inverse_norm: Scalar
    ) -> dict[str, Scalar]:
        state = self.state[p]
        state["step"] += 1  # pass (2) is the tensor's Adam step t
        return {"inverse_norm": inverse_norm, "size": self._step_size(group, eta, state["step"])}

    def _step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        etas: list[Scalar],
        foreach: bool,
    ) -> None:
        states = [self.state[p] for p in params]
        for state in states:
            state["step"] += 1
        sizes = [
            self._step_size(group, eta, s["step"]) for eta, s in zip(etas, states, strict=True)
        ]
        moments = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        kernels.adam_reference_move(params, grads, *moments, sizes, group, foreach)
