"""DoG, L-DoG and DoWG: step sizes from the distance travelled over the gradients seen.

Papers: Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
Schedule", ICML 2023, arXiv:2302.12022 (DoG, L-DoG, polynomial iterate averaging); Khaled,
Mishchenko & Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free Gradient Descent Method",
NeurIPS 2023, arXiv:2305.16284 (DoWG). Method page: ``docs/methods/distance-over-gradients.md``.

All three are SGD whose step size is "distance from the start so far" over "gradient energy so
far": no learning rate to tune, only a tiny initial distance that the method then grows.

NOTE [per-group scalars]
DoG and DoWG keep their distance and gradient sums *per param group* (the official package's
convention: every group is its own block), so these scalars live in each group's dict (``k``,
``r_bar``, ``G``, ...), not in ``global_defaults``: they differ between groups by design. They are
plain Python numbers, so ``state_dict()`` checkpoints them. L-DoG keeps them per tensor, in
``self.state[p]``. In a capturable step (``capturable=True``, NOTE [device scalars] in
``_scalars.py``) the group's scalars are 0-d tensors on the parameters' device and the step reads
none back: each rule is written once with :mod:`lrlab.optim._scalars`, whose functions give the
host step's numbers on Python numbers and stay on the device on tensors.

The fast path (native and compiled kernels, routed per tensor by
:func:`~lrlab.optim._executor.route`) runs the passes declared in :mod:`lrlab.optim.kernels.dog`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _foreach
from lrlab.optim import _scalars as scalar
from lrlab.optim import _validation as check
from lrlab.optim._base import SCALAR_STATE, AdaptiveOptimizer, StateEntry, StepContext
from lrlab.optim._executor import Plan, route
from lrlab.optim._fused import check_fused
from lrlab.optim._registry import InvalidKwargs, register
from lrlab.optim._scalars import Scalar
from lrlab.optim._validation import check_bool, check_nonnegative, check_positive
from lrlab.optim.kernels import dog as kernels

__all__ = ["DoG", "DoWG", "LDoG"]

_Row = dict[str, Tensor]  # the named arrays of one tensor (see lrlab.optim._executor)
_Weights = list[dict[str, Scalar]]  # per row, its per-tensor scalars

_DOG_PAPER = (
    "Ivgi, Hinder & Carmon, DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size "
    "Schedule, ICML 2023, arXiv:2302.12022"
)


class _DistanceOverGradients(AdaptiveOptimizer):
    """Shared machinery: the anchor ``x0``, the weight-decayed directions, the group counter."""

    #: per-group bookkeeping, see NOTE [per-group scalars]
    group_defaults: ClassVar[Mapping[str, float | int]] = {"k": 0}

    #: per-group settings and their checks (NOTE [one validation for hyperparameters])
    hyperparameters: ClassVar[Mapping[str, check.Rule]] = {
        "lr": check.positive(),
        "weight_decay": check.nonnegative(),
        "eps": check.nonnegative(),
        "reps_rel": check.nonnegative(),
        "init_eta": check.optional(check.positive()),
        "averaging_gamma": check.optional(check.nonnegative()),
        "init_estim_sq_dist": check.optional(check.positive()),
    }

    def _check_group(self, group: Mapping[str, Any]) -> None:
        # init_eta sets the first step and replaces reps_rel, which must be positive without it
        if "reps_rel" in group and group.get("init_eta") is None:
            check_positive("reps_rel", group["reps_rel"])
        # DoWG's initial squared distance defaults to eps: zero would never move
        if (
            "init_estim_sq_dist" in group
            and group["init_estim_sq_dist"] is None
            and (group.get("eps") == 0)
        ):
            raise ValueError("init_estim_sq_dist must be in (0, inf) when eps is 0, got None")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it starts its own distance and sums at its first step."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key, value in self.group_defaults.items():
            group.setdefault(key, value)
        if group.get("capturable"):
            self._to_device_scalars(group)  # the per-group scalars just set

    def _on_device(self) -> bool:
        """Whether the step is capturable, read from the scalars' type: dynamo's tracing of an
        optimizer shows ``group["capturable"]`` as True for every group, whatever it is."""
        return isinstance(self.param_groups[0]["k"], Tensor)

    def _first_step(self, group: dict[str, Any]) -> bool:
        """Whether the group takes its first step (which creates its anchors ``x0``). In a
        capturable step ``k`` lives on the device; the same fact is then read on the host from
        the state: no tensor of the group has its anchor yet."""
        if isinstance(group["k"], Tensor):
            return all("x0" not in self.state.get(p, {}) for p in group["params"])
        return bool(group["k"] == 0)

    def _start_group(self, group: dict[str, Any]) -> None:
        # x0 is a copy of every tensor of the group, with or without a gradient now: the
        # distance is measured over the whole group (the official package's convention)
        for p in group["params"]:
            self.state[p]["x0"] = p.detach().clone(memory_format=torch.preserve_format)

    def _arrays(self, p: Tensor) -> _Row:
        """The named arrays of one tensor that the passes read and write (the gradient, the
        average and L-DoG's statistics where the tensor has them)."""
        state = self.state[p]
        arrays = {"p": p, "x0": state["x0"]}
        if p.grad is not None:
            arrays["grad"] = p.grad
        for name, key in (("average", "averaged"), ("r_bar", "r_bar"), ("G", "G")):
            if key in state:
                arrays[name] = state[key]
        return arrays

    @staticmethod
    def _directions(group: dict[str, Any], params: list[Tensor], foreach: bool) -> list[Tensor]:
        """``g + weight_decay * x`` (coupled L2, as the official packages), without touching
        ``.grad``."""
        grads = _foreach.grads_of(params)
        weight_decay = group["weight_decay"]
        if weight_decay == 0 or not params:  # torch._foreach_add refuses an empty list
            return grads
        if foreach:
            return list(torch._foreach_add(grads, params, alpha=weight_decay))
        return [g.add(p, alpha=weight_decay) for g, p in zip(grads, params, strict=True)]

    def _distances_squared(self, params: list[Tensor], anchor: float, foreach: bool) -> Tensor:
        """``sum_i ||x_i - anchor x0_i||^2`` over ``params`` as a 0-d tensor (``anchor`` 0:
        DoG's first radius ``||x||^2``, 1: the distance travelled)."""
        if anchor == 0.0:
            return _foreach.sum_of_squares(params, foreach=foreach)
        anchors = [self.state[p]["x0"] for p in params]
        if foreach and params:
            differences = list(torch._foreach_sub(params, anchors))
        else:
            differences = [p - x0 for p, x0 in zip(params, anchors, strict=True)]
        return _foreach.sum_of_squares(differences, foreach=foreach)

    def _average_weights(self, group: dict[str, Any], rows: list[_Row], plan: Plan) -> _Weights:
        """Per row, the iterate average's weight in the kernels' move (``{}`` without averaging
        and for the reference loop's rows; ``group["k"]`` already counts this step). A tensor
        the kernels take that has no average yet gets one now, a copy of x with weight 1: it
        becomes the moved x, as the reference loop's copy of the moved x."""
        weights: _Weights = [{} for _ in rows]
        gamma = group.get("averaging_gamma")
        if gamma is None:
            return weights
        for index in kernels.fast_rows(plan):
            row = rows[index]
            if "average" in row:
                # a 0-d tensor in a capturable step
                weights[index] = {"weight": (1.0 + gamma) / (group["k"] + gamma)}
            else:
                average = row["p"].detach().clone(memory_format=torch.preserve_format)
                row["average"] = self.state[row["p"]]["averaged"] = average
                weights[index] = {"weight": 1.0}
        return weights

    # -- polynomial-decay iterate averaging (DoG and L-DoG) ---------------------------------

    def _average(
        self, group: dict[str, Any], foreach: bool, done: list[Tensor] | None = None
    ) -> None:
        """Step the average of every tensor of ``group`` but those in ``done`` (averaged by the
        kernels' move already): the reference loop's average."""
        gamma = group.get("averaging_gamma")
        if gamma is None:
            return
        t = group["k"]  # 1 after the first step: the first average is x_1 itself
        weight = (1.0 + gamma) / (t + gamma)
        skipped = {id(p) for p in done or ()}  # ids: `in` on tensors would compare values
        params = [p for p in group["params"] if id(p) not in skipped]
        if not params:
            return
        averages = []
        for p in params:
            state = self.state[p]
            if "averaged" not in state:
                state["averaged"] = p.detach().clone(memory_format=torch.preserve_format)
            averages.append(state["averaged"])
        if foreach:
            torch._foreach_lerp_(averages, params, weight)  # a 0-d tensor too
        else:
            for average, p in zip(averages, params, strict=True):
                average.lerp_(p, weight)  # a 0-d tensor too

    def averaged_parameters(self) -> list[Tensor]:
        """The polynomial-decay averages :math:`\\bar x_t`, one per parameter, in param-group order.

        A parameter whose group averages nothing, or that has not been stepped yet, is returned
        as ``p.detach()``. The tensors are the optimizer's own state: read them, do not modify
        them in place.

        Raises:
            ValueError: when no group was built with ``averaging_gamma``.
        """
        if all(group.get("averaging_gamma") is None for group in self.param_groups):
            raise ValueError(
                f"{type(self).__name__} keeps no iterate average: pass averaging_gamma "
                "(e.g. 8.0, the paper's) to the constructor"
            )
        averaged = []
        for group in self.param_groups:
            for p in group["params"]:
                average = self.state.get(p, {}).get("averaged")
                averaged.append(average if average is not None else p.detach())
        return averaged

    @contextlib.contextmanager
    def using_averaged_parameters(self) -> Iterator[None]:
        """Temporarily copy the averaged weights into the parameters (e.g. to evaluate).

        The training weights are restored on exit, even after an exception. Do not step the
        optimizer inside the block.

        Example:
            >>> with optimizer.using_averaged_parameters():
            ...     validation_loss = evaluate(model)
        """
        averaged = self.averaged_parameters()
        params = [p for group in self.param_groups for p in group["params"]]
        with torch.no_grad():
            backups = [p.detach().clone(memory_format=torch.preserve_format) for p in params]
            for p, average in zip(params, averaged, strict=True):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, backup in zip(params, backups, strict=True):
                    p.copy_(backup)


@dataclass
class _Block:
    """One group's step between its statistics pass and its move (DoG, DoWG)."""

    group: dict[str, Any]
    foreach: bool
    rows: list[_Row]  # the tensors with a gradient
    plan: Plan  # where those rows go
    taken: list[Tensor]  # the tensors the kernels moved (and averaged)
    params: list[Tensor]  # the reference loop's tensors with a gradient ...
    directions: list[Tensor]  # ... and their g + wd x
    sums: tuple[Tensor, Tensor]  # this rank's ||x_t - anchor x0||^2 and ||g_t||^2


class _GroupBlocks(_DistanceOverGradients):
    """DoG and DoWG: every param group is one block whose norms run over all its tensors.

    A step is two passes over memory around one reduction: this rank's squared distance and
    gradient norm of every group (the statistics pass: native kernels, compiled kernels or the
    reference loop per tensor, see :mod:`lrlab.optim._executor`), their sum over ranks and one
    host synchronisation, the method's scalar rule (:meth:`_step_size`), then the move.
    """

    #: DoG's first radius is measured from the origin, ``||x_0||``; DoWG's from ``x_0``
    radius_from_origin: ClassVar[bool] = False

    def _update(self, context: StepContext) -> None:
        device = context.params[0].device
        blocks = [self._statistics_pass(group) for group in self.param_groups]
        partials = [part.to(device) for block in blocks for part in block.sums]
        # every rank reaches the one reduction; then one host synchronisation for the step
        reduced = self._reduce_global(partials)
        stacked = torch.stack(_promoted(reduced))
        capturable = self._on_device()
        if capturable:  # the sums in the dtype of the device scalars, as the host's floats
            stacked = stacked.to(self.param_groups[0]["k"].dtype)
        values = scalar.entries(stacked, capturable)
        for block, distance_sq, gradient_sq in zip(blocks, values[::2], values[1::2], strict=True):
            eta = self._step_size(block.group, distance_sq, gradient_sq)
            block.group["eta"] = block.group["effective_lr"] = eta
            # before the move: the average's weight counts this step
            block.group["k"] = block.group["k"] + 1
            self._move(block, eta)

    def _step_size(self, group: dict[str, Any], distance_sq: Scalar, gradient_sq: Scalar) -> Scalar:
        """The method's rule: update the group's scalars from the reduced sums; the step size.
        Numbers in a host step, 0-d device tensors in a capturable one (the first step is
        ``k == 0``, a tensor condition there: both sides are computed, one is kept)."""
        raise NotImplementedError

    def _statistics_pass(self, group: dict[str, Any]) -> _Block:
        """This rank's ``||x_t - a x_0||^2`` over the group (``a`` = 0 at DoG's first step, the
        radius ``||x_0||^2``; at DoWG's first step ``x = x_0`` gives 0) and ``||g_t||^2`` over
        its tensors with a gradient; a tensor without one counts in the distance only."""
        first = self._first_step(group)
        if first:
            self._start_group(group)
        all_params = list(group["params"])
        foreach = _foreach.resolve_foreach(group["foreach"], all_params)
        anchor = 0.0 if first and self.radius_from_origin else 1.0
        rows = [self._arrays(p) for p in all_params if p.grad is not None]
        plan = route(group, rows, (kernels.SUMS, kernels.move_pass(group)))
        sums = plan.run(kernels.SUMS, {"weight_decay": group["weight_decay"], "anchor": anchor})
        idle_rows = [self._arrays(p) for p in all_params if p.grad is None]
        idle = route(group, idle_rows, (kernels.DISTANCE,))
        idle_sums = idle.run(kernels.DISTANCE, {"anchor": anchor})
        taken = [rows[i]["p"] for i in kernels.fast_rows(plan)]
        done = {id(p) for p in taken} | {id(idle_rows[i]["p"]) for i in kernels.fast_rows(idle)}
        # the reference loop: the other tensors, in the group's order (ids: `in` on tensors
        # would compare values)
        rest = [p for p in all_params if id(p) not in done]
        params = [p for p in rest if p.grad is not None]
        directions = self._directions(group, params, foreach)
        # the parts in a fixed order: compiled tensors, native dtypes, the reference loop
        distance = sums.parts("distance") + idle_sums.parts("distance")
        gradient = sums.parts("gradient")
        if rest:
            distance.append(self._distances_squared(rest, anchor, foreach))
        if params:
            gradient.append(_foreach.sum_of_squares(directions, foreach=foreach))
        like = all_params[0]
        totals = (_total(distance, like), _total(gradient, like))
        return _Block(group, foreach, rows, plan, taken, params, directions, totals)

    def _move(self, block: _Block, eta: Scalar) -> None:
        """``x_{t+1} = x_t - eta (g_t + wd x_t)``, with the iterate average where the group keeps
        one."""
        group = block.group
        weights = self._average_weights(group, block.rows, block.plan)
        kernels.run(
            block.plan,
            kernels.move_pass(group),
            {"weight_decay": group["weight_decay"]},
            [{"eta": eta, **weight} for weight in weights],
        )
        if block.params:
            if block.foreach:
                _foreach.add_scaled_(block.params, block.directions, -eta)
            else:
                for p, direction in zip(block.params, block.directions, strict=True):
                    scalar.add_scaled_(p, direction, -eta)
        self._average(group, block.foreach, done=block.taken)


def _dog_defaults(
    reps_rel: float,
    lr: float,
    weight_decay: float,
    eps: float,
    init_eta: float | None,
    averaging_gamma: float | None,
    foreach: bool | None,
    fused: bool | None,
) -> dict[str, Any]:
    """The checked settings of DoG and L-DoG."""
    check_positive("lr", lr)
    if init_eta is None:
        check_positive("reps_rel", reps_rel)
    else:
        # init_eta sets the first step and replaces reps_rel, which is then not used
        check_positive("init_eta", init_eta)
        check_nonnegative("reps_rel", reps_rel)
    check_nonnegative("weight_decay", weight_decay)
    check_nonnegative("eps", eps)
    if averaging_gamma is not None:
        check_nonnegative("averaging_gamma", averaging_gamma)
    return {
        "reps_rel": reps_rel,
        "lr": lr,
        "weight_decay": weight_decay,
        "eps": eps,
        "init_eta": init_eta,
        "averaging_gamma": averaging_gamma,
        "foreach": foreach,
        "fused": check_fused(fused, foreach),
    }


_DOG_INVALID = (
    InvalidKwargs({"lr": 0.0}, r"lr must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"reps_rel": 0.0}, r"reps_rel must be in \(0, inf\), got 0\.0"),
    InvalidKwargs({"init_eta": -1.0}, r"init_eta must be in \(0, inf\), got -1\.0"),
    InvalidKwargs({"eps": -1e-8}, r"eps must be in \[0, inf\), got -1e-08"),
    InvalidKwargs({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\), got -0\.1"),
    InvalidKwargs({"averaging_gamma": -1.0}, r"averaging_gamma must be in \[0, inf\), got -1\.0"),
)

_DOG_SAMPLES = (
    # reps_rel 1e-2 instead of 1e-6: the suite's 5-step bfloat16 check needs visible moves
    {"reps_rel": 1e-2},
    {"reps_rel": 1e-4, "weight_decay": 0.01, "averaging_gamma": 8.0},
    {"init_eta": 0.05, "eps": 0.0},
)


@register(
    "dog",
    family="distance-over-gradients",
    paper=_DOG_PAPER,
    summary="DoG: SGD with step size max distance from x0 over sqrt(sum of |g|^2), per group",
    supports_foreach=True,
    supports_fused=True,
    oracle="dog.DoG",
    sample_kwargs=_DOG_SAMPLES,
    invalid_kwargs=_DOG_INVALID,
    group_kwargs={"lr": 0.5},
)
class DoG(_GroupBlocks):
    r"""DoG ("Distance over Gradients"): a parameter-free dynamic step size for SGD.

    For every param group, treating all its tensors as one vector, at steps
    :math:`t = 0, 1, \dots` with gradient :math:`g_t` (plus :math:`\lambda x_t`):

    .. math::
        \begin{aligned}
        &\bar r_0 = r_\epsilon = \text{reps\_rel}\,(1 + \lVert x_0 \rVert), \qquad
         G_0 = \lVert g_0 \rVert^2 + \epsilon\\
        &\bar r_t = \max(\bar r_{t-1}, \lVert x_t - x_0 \rVert), \qquad
         G_t = G_{t-1} + \lVert g_t \rVert^2 \qquad (t \ge 1)\\
        &\eta_t = c\, \bar r_t / \sqrt{G_t}, \qquad x_{t+1} = x_t - \eta_t\, g_t
        \end{aligned}

    With ``init_eta``, :math:`\bar r_0 = 0` (``reps_rel`` is not used) and the step size is
    ``init_eta`` as long as :math:`\bar r_t = 0`, i.e. for the first step.

    Optional polynomial-decay iterate averaging (the paper evaluates the averaged model; Shamir &
    Zhang 2013), with :math:`t` counting steps from 1:

    .. math::
        \bar x_t = \Big(1 - \frac{1 + \gamma}{t + \gamma}\Big) \bar x_{t-1}
                   + \frac{1 + \gamma}{t + \gamma}\, x_t \qquad (\bar x_1 = x_1)

    Symbols: :math:`c` ``lr``, :math:`\bar r_t` ``group["r_bar"]``, :math:`G_t` ``group["G"]``,
    :math:`\eta_t` ``group["eta"]`` = ``group["effective_lr"]``, :math:`x_0`
    ``state["x0"]``, :math:`\bar x_t` ``state["averaged"]``, :math:`\gamma` ``averaging_gamma``,
    :math:`\epsilon` ``eps``, :math:`\lambda` ``weight_decay``, :math:`t` ``group["k"]`` (steps
    taken). ``statistics()`` reports ``r_bar``, ``G`` and ``eta`` of the first group.

    Args:
        params: parameters or param groups; each group is one DoG block.
        reps_rel: relative initial distance, in (0, inf) ([0, inf) with ``init_eta``).
            Default 1e-6; the authors suggest 1e-4 for models with batch normalisation.
        lr: the multiplier :math:`c`, in (0, inf). Default 1.0; the authors advise against
            changing it.
        weight_decay: coupled L2 coefficient added to the gradient (it also enters
            :math:`G`), in [0, inf).
        eps: added to :math:`G_0`, in [0, inf). Default 1e-8.
        init_eta: if given, the first step size, in (0, inf); replaces ``reps_rel``.
        averaging_gamma: :math:`\gamma` of the polynomial-decay average, in [0, inf), or None
            (default) for no average. The paper uses 8. Read the average with
            :meth:`averaged_parameters` or :meth:`using_averaged_parameters`.
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the step in two passes over memory: the tensors' parts of
            :math:`\lVert x_t - x_0\rVert^2` and :math:`\lVert g_t\rVert^2`, then (once the
            group's :math:`\eta_t` is known) the move, with the iterate average in the same
            pass. On CPU float32/float64 tensors each pass is a native multi-tensor kernel,
            one call for all tensors of a dtype (tensors without a gradient too, for the
            distance; see :mod:`lrlab.optim._native`); elsewhere each tensor's pass is a
            compiled kernel (see :mod:`lrlab.optim._fused`;
            only with ``fused=True``: the first step pays the compilation), and tensors
            without a gradient, non-contiguous or small ones take the ``foreach`` path.
        sharded: each rank owns a disjoint part of the parameters, so the norms are partial
            sums reduced over ranks (not needed for DDP; DTensor is detected). Every rank must
            build the same number of param groups, in the same order.
        capturable: keep every group's :math:`k`, :math:`\bar r_t`, :math:`G_t` and
            :math:`\eta_t` as 0-d tensors on the parameters' device, so that the step reads
            nothing back to the host and ``torch.compile`` traces it without recompiling as they
            change (NOTE [device scalars] in ``lrlab/optim/_scalars.py``). None (default): True
            for CUDA/XPU parameters.

    .. note::
        Deviations from the official package (``dog-optimizer`` 1.0.3), none of which changes the
        numbers on its supported inputs: ``.grad`` is never modified in place (the package adds
        the weight decay into ``.grad``); tensors without a gradient are skipped (the package
        fails on them) and count in the distance but not in :math:`G`; where :math:`G_t = 0`
        (only possible with ``eps = 0`` and all-zero gradients) the step size is 0 instead of the
        package's assertion error; the per-group scalars are plain numbers in the param groups,
        so ``state_dict()`` resumes exactly (the package keeps tensors and an instance flag);
        ``eps`` is validated (>= 0); nothing is logged.

    .. note::
        The iterate average lives in ``state["averaged"]`` (resumable with the optimizer), and
        follows the official ``PolynomialDecayAverager`` stepped once after every optimizer step.
        It averages the parameters only; buffers (BatchNorm statistics) must be recomputed for
        the averaged weights.

    Example:
        >>> optimizer = DoG(model.parameters(), averaging_gamma=8.0)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
        >>> with optimizer.using_averaged_parameters():
        ...     evaluate(model)
    """

    has_global_statistics: ClassVar[bool] = True
    group_defaults: ClassVar[Mapping[str, float | int]] = {
        "k": 0,
        "r_bar": 0.0,
        "G": 0.0,
        "eta": 0.0,
    }
    #: a capturable step keeps all of the group's run state on the device
    capturable_scalars = scalar.checkpoint_types(group_defaults)

    def __init__(
        self,
        params: ParamsT,
        reps_rel: float = 1e-6,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        init_eta: float | None = None,
        *,
        averaging_gamma: float | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        settings = (reps_rel, lr, weight_decay, eps, init_eta, averaging_gamma, foreach, fused)
        defaults = _dog_defaults(*settings)
        check_bool("sharded", sharded)
        super().__init__(params, {**defaults, "sharded": sharded, "capturable": capturable})

    radius_from_origin: ClassVar[bool] = True

    def _step_size(self, group: dict[str, Any], distance_sq: Scalar, gradient_sq: Scalar) -> Scalar:
        # Algorithm 1 of the paper; distance_sq is ||x_0||^2 at the first step
        init_eta = group["init_eta"]
        first = group["k"] == 0
        distance = scalar.sqrt(distance_sq)
        r_first = 0.0 if init_eta is not None else group["reps_rel"] * (1.0 + distance)
        r_bar = scalar.where(first, r_first, scalar.maximum(group["r_bar"], distance))
        G = scalar.where(first, gradient_sq + group["eps"], group["G"] + gradient_sq)
        # G > 0 but where eps = 0 and every gradient so far was zero: then a zero step
        eta = scalar.where(G > 0, scalar.ratio_or_zero(group["lr"] * r_bar, scalar.sqrt(G)), 0.0)
        if init_eta is not None:
            # r_bar starts at 0: init_eta is the step size until the iterate has moved
            eta = scalar.where(r_bar == 0.0, float(init_eta), eta)
        group["r_bar"], group["G"] = r_bar, G
        return eta

    def _statistics(self) -> dict[str, float]:
        group = self.param_groups[0]
        return {"r_bar": group["r_bar"], "G": group["G"], "eta": group["eta"]}


@register(
    "ldog",
    family="distance-over-gradients",
    paper=_DOG_PAPER,
    summary="L-DoG: DoG with its distance, gradient sum and step size kept per tensor (layer)",
    supports_foreach=True,
    supports_fused=True,
    oracle="dog.LDoG",
    sample_kwargs=_DOG_SAMPLES,
    invalid_kwargs=_DOG_INVALID,
    group_kwargs={"lr": 0.5},
)
class LDoG(_DistanceOverGradients):
    r"""L-DoG: layer-wise DoG, the same rule with every tensor as its own block.

    For every tensor :math:`i` (a "layer"), with its own :math:`x_{0,i}`:

    .. math::
        \begin{aligned}
        &\bar r_{0,i} = \text{reps\_rel}\,(1 + \lVert x_{0,i} \rVert), \quad
         G_{0,i} = \lVert g_{0,i} \rVert^2 + \epsilon\\
        &\bar r_{t,i} = \max(\bar r_{t-1,i}, \lVert x_{t,i} - x_{0,i} \rVert), \quad
         G_{t,i} = G_{t-1,i} + \lVert g_{t,i} \rVert^2\\
        &\eta_{t,i} = c\, \bar r_{t,i} / \sqrt{G_{t,i}}, \qquad
         x_{t+1,i} = x_{t,i} - \eta_{t,i}\, g_{t,i}
        \end{aligned}

    ``init_eta`` (first step size of every tensor, :math:`\bar r_0 = 0`) and the iterate
    average are as in :class:`DoG`.

    Symbols: :math:`\bar r_{t,i}` ``state["r_bar"]``, :math:`G_{t,i}` ``state["G"]``,
    :math:`\eta_{t,i}` ``state["eta"]`` (0-d tensors on the parameter's device), others as
    :class:`DoG`.

    ``effective_lr`` of a group is a representative scalar: the **mean** of :math:`\eta_{t,i}`
    over the group's tensors stepped in this step (0.0 when none was). ``statistics()`` reports
    ``eta`` (that mean for the first group), ``eta_min`` and ``eta_max`` over every tensor that
    has stepped, and ``r_bar`` and ``G`` as means over the first group's tensors.

    Args:
        params: parameters or param groups.
        reps_rel, lr, weight_decay, eps, init_eta, averaging_gamma, foreach: as :class:`DoG`,
            applied per tensor.
        fused: True runs the step in two passes over memory: every tensor's distance and
            gradient norm, then, with its :math:`\eta_{t,i}`, its move and iterate average.
            On CPU float32/float64 tensors each pass is a native multi-tensor kernel, one call
            for all tensors of a dtype (see :mod:`lrlab.optim._native`), and the per-tensor
            scalars are updated as one vector per dtype; elsewhere each tensor's whole step is
            one compiled kernel (see :mod:`lrlab.optim._fused`; only with ``fused=True``:
            the first step pays the compilation), and non-contiguous or small
            tensors take the ``foreach`` path.
        capturable: keep every group's step counter :math:`k` as a 0-d tensor on the
            parameters' device (the per-tensor scalars are device tensors already) and
            ``effective_lr`` as the 0-d mean, so that the step reads nothing back to the host
            (NOTE [device scalars] in ``lrlab/optim/_scalars.py``). None (default): True for
            CUDA/XPU parameters.

    .. note::
        With ``init_eta``, a tensor keeps the step size ``init_eta`` until it has moved
        (:math:`\bar r_{t,i} > 0`); for a tensor stepped at the first step this is the official
        behaviour, and a tensor without a gradient at the first step is not stuck at
        :math:`\eta = 0` later.

    .. note::
        L-DoG has no statistic that sums over tensors, so it takes no ``sharded`` argument and
        needs no collective: a rank that owns whole tensors has all their statistics. (A tensor
        split across ranks as a DTensor is reduced by DTensor's own norm.) Deviations from the
        official ``LDoG`` are those listed in :class:`DoG`, per tensor.

    Example:
        >>> optimizer = LDoG(model.parameters(), reps_rel=1e-4)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    #: its step traces under torch.compile without recompiles after the second step (the
    #: per-tensor scalars live in state tensors; tests/optim/test_compile.py)
    traceable_step: ClassVar[bool] = True
    #: a capturable step keeps the group's counter on the device too (the averaging weight)
    capturable_scalars: ClassVar[Mapping[str, type] | None] = {"k": int}

    #: the per-tensor scalars of the layer-wise rule
    state_layout: ClassVar[Mapping[str, StateEntry]] = {
        "r_bar": SCALAR_STATE,
        "G": SCALAR_STATE,
        "eta": SCALAR_STATE,
    }

    def __init__(
        self,
        params: ParamsT,
        reps_rel: float = 1e-6,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        init_eta: float | None = None,
        *,
        averaging_gamma: float | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool | None = None,
    ) -> None:
        settings = (reps_rel, lr, weight_decay, eps, init_eta, averaging_gamma, foreach, fused)
        super().__init__(params, {**_dog_defaults(*settings), "capturable": capturable})

    def _start_group(self, group: dict[str, Any]) -> None:
        super()._start_group(group)
        params = list(group["params"])
        foreach = _foreach.resolve_foreach(group["foreach"], params)
        norms = _foreach.norms(params, foreach=foreach)
        no_distance = group["init_eta"] is not None
        for p, norm in zip(params, norms, strict=True):
            state = self.state[p]
            state["r_bar"] = (
                torch.zeros_like(norm) if no_distance else (1.0 + norm) * group["reps_rel"]
            )
            # eps now; the first gradient is added by the first step like every later one
            state["G"] = torch.full_like(norm, group["eps"])

    def _update(self, context: StepContext) -> None:
        means: list[Tensor] = []
        stepped: list[dict[str, Any]] = []
        for group in self.param_groups:
            first = self._first_step(group)
            if first:
                self._start_group(group)
            group["k"] = group["k"] + 1
            foreach = _foreach.resolve_foreach(group["foreach"], list(group["params"]))
            params = [p for p in group["params"] if p.grad is not None]
            rows = [self._arrays(p) for p in params]
            plan = route(
                group, rows, (kernels.SUMS, kernels.move_pass(group), kernels.ldog_pass(group))
            )
            weights = self._average_weights(group, rows, plan)
            # the step sizes: 1-d per native dtype, 0-d per other tensor
            eta_vectors = self._step_by_dtype(group, plan, weights)
            etas = self._step_each(group, plan, weights)
            if plan.reference:
                reference = [params[i] for i in plan.reference]
                etas += self._step_tensors(group, reference, first, foreach)
            if etas:
                eta_vectors.append(torch.stack(_promoted(etas)))
            if eta_vectors:
                means.append(torch.cat(_promoted(eta_vectors)).mean())
                stepped.append(group)
            else:
                group["effective_lr"] = 0.0
            self._average(group, foreach, done=[rows[i]["p"] for i in kernels.fast_rows(plan)])
        if means:  # one host synchronisation for the step (none in a capturable step)
            stacked = torch.stack(_promoted(means, means[0].device))
            capturable = self._on_device()
            for group, value in zip(stepped, scalar.entries(stacked, capturable), strict=True):
                group["effective_lr"] = value if capturable else float(value)

    def _step_by_dtype(self, group: dict[str, Any], plan: Plan, weights: _Weights) -> list[Tensor]:
        """The rows of the native kernels, two calls per dtype: the tensors' distances and
        gradient norms, then (once each tensor's eta is known) the moves and averages. The
        per-tensor scalars are updated as vectors, in the accumulation dtype as the reference
        loop's 0-d tensors; returns the step sizes, one 1-d tensor per dtype. At the first
        step ``x = x0``, so the distance leaves the initial ``r_bar`` unchanged."""
        decay = {"weight_decay": group["weight_decay"]}
        sums = plan.run(kernels.SUMS, {**decay, "anchor": 1.0}, compiled=False)
        per_tensor: _Weights = [{} for _ in plan.rows]
        vectors = []
        for dtype, totals in sums.native.items():
            indices = plan.native[dtype]
            r_bars = [plan.rows[i]["r_bar"] for i in indices]
            Gs = [plan.rows[i]["G"] for i in indices]
            totals = totals.to(_foreach.accumulation_dtype(dtype))
            # r_bar = max(r_bar, ||x - x0||), G += ||g||^2, eta = lr r_bar / sqrt(G)
            r_bar = torch.maximum(torch.stack(r_bars), kernels.column(totals, "distance").sqrt())
            norm = kernels.column(totals, "gradient").sqrt()
            G = torch.stack(Gs).addcmul_(norm, norm)
            eta = _ldog_step_size(group, r_bar, G)
            torch._foreach_copy_(r_bars, r_bar.unbind())
            torch._foreach_copy_(Gs, G.unbind())
            for index, value, number in zip(indices, eta.unbind(), eta.tolist(), strict=True):
                self.state[plan.rows[index]["p"]]["eta"] = value
                per_tensor[index] = {"eta": number, **weights[index]}
            vectors.append(eta)
        natives = [i for indices in plan.native.values() for i in indices]
        kernels.run(plan, kernels.move_pass(group), decay, per_tensor, only=natives)
        return vectors

    def _step_each(self, group: dict[str, Any], plan: Plan, weights: _Weights) -> list[Tensor]:
        """The rows of the compiled kernels: every tensor's whole step (and average) in one
        call; its step sizes (0-d)."""
        init_eta = group["init_eta"]
        scalars = {
            "weight_decay": group["weight_decay"],
            "lr": group["lr"],
            "init_eta": float(init_eta or 0.0),
            "has_init_eta": float(init_eta is not None),
        }
        result = kernels.run(plan, kernels.ldog_pass(group), scalars, weights, only=plan.compiled)
        etas = [sums["eta"] for sums in result.compiled]
        for index, eta in zip(plan.compiled, etas, strict=True):
            self.state[plan.rows[index]["p"]]["eta"] = eta
        return etas

    def _step_tensors(
        self, group: dict[str, Any], params: list[Tensor], first: bool, foreach: bool
    ) -> list[Tensor]:
        """Update every tensor's statistics and take its step; the step sizes (0-d)."""
        states = [self.state[p] for p in params]
        r_bars = [state["r_bar"] for state in states]
        Gs = [state["G"] for state in states]
        directions = self._directions(group, params, foreach)
        gradient_norms = _foreach.norms(directions, foreach=foreach)
        if foreach:
            if not first:
                anchors = [state["x0"] for state in states]
                distances = _foreach.norms(list(torch._foreach_sub(params, anchors)), foreach=True)
                torch._foreach_maximum_(r_bars, distances)
            torch._foreach_addcmul_(Gs, gradient_norms, gradient_norms)
        else:
            for p, state, r_bar, G, norm in zip(
                params, states, r_bars, Gs, gradient_norms, strict=True
            ):
                if not first:
                    distance = torch.linalg.vector_norm(
                        p - state["x0"], dtype=_foreach.accumulation_dtype(p.dtype)
                    )
                    torch.maximum(r_bar, distance, out=r_bar)
                G.addcmul_(norm, norm)
        etas = []
        for state, r_bar, G in zip(states, r_bars, Gs, strict=True):
            state["eta"] = eta = _ldog_step_size(group, r_bar, G)
            etas.append(eta)
        if foreach:
            torch._foreach_sub_(params, torch._foreach_mul(directions, etas))
        else:
            for p, direction, eta in zip(params, directions, etas, strict=True):
                p.sub_(direction * eta)
        return etas

    def _statistics(self) -> dict[str, float]:
        first = [
            self.state[p]
            for p in self.param_groups[0]["params"]
            if "r_bar" in self.state.get(p, {})
        ]
        etas = [
            self.state[p]["eta"]
            for group in self.param_groups
            for p in group["params"]
            if "eta" in self.state.get(p, {})
        ]
        if not first or not etas:
            return {"eta": 0.0, "eta_min": 0.0, "eta_max": 0.0, "r_bar": 0.0, "G": 0.0}
        stacked = _stack_to_host(etas)
        return {
            "eta": float(self.param_groups[0]["effective_lr"]),
            "eta_min": float(stacked.min()),
            "eta_max": float(stacked.max()),
            "r_bar": float(_stack_to_host([state["r_bar"] for state in first]).mean()),
            "G": float(_stack_to_host([state["G"] for state in first]).mean()),
        }


@register(
    "dowg",
    family="distance-over-gradients",
    paper=(
        "Khaled, Mishchenko & Jin, DoWG Unleashed: An Efficient Universal Parameter-Free "
        "Gradient Descent Method, NeurIPS 2023, arXiv:2305.16284"
    ),
    summary="DoWG: SGD with step size r_bar^2 / sqrt(sum r_bar^2 |g|^2) (distance-weighted)",
    supports_foreach=True,
    supports_fused=True,
    sample_kwargs=(
        # a larger initial distance than the default 1e-4: the suite's short bfloat16 check
        {"init_estim_sq_dist": 1e-2},
        {"init_estim_sq_dist": 1e-3, "weight_decay": 0.01, "lr": 0.5},
        {"eps": 1e-8},
    ),
    invalid_kwargs=(
        InvalidKwargs({"lr": -1.0}, r"lr must be in \(0, inf\), got -1\.0"),
        InvalidKwargs(
            {"init_estim_sq_dist": 0.0}, r"init_estim_sq_dist must be in \(0, inf\), got 0\.0"
        ),
        InvalidKwargs({"eps": -1.0}, r"eps must be in \[0, inf\), got -1\.0"),
        InvalidKwargs(
            {"init_estim_sq_dist": None, "eps": 0.0},
            r"init_estim_sq_dist must be in \(0, inf\) when eps is 0, got None",
        ),
        InvalidKwargs({"weight_decay": -0.1}, r"weight_decay must be in \[0, inf\), got -0\.1"),
    ),
    group_kwargs={"lr": 0.5},
)
class DoWG(_GroupBlocks):
    r"""DoWG ("Distance over Weighted Gradients"): DoG with distance-weighted gradient sums.

    For every param group, treating all its tensors as one vector, at steps
    :math:`t = 0, 1, \dots` with gradient :math:`g_t` (plus :math:`\lambda x_t`):

    .. math::
        \begin{aligned}
        &\bar r_t^2 = \max(\bar r_{t-1}^2, \lVert x_t - x_0 \rVert^2), \qquad
         \bar r_{-1}^2 = r_\epsilon^2\\
        &v_t = v_{t-1} + \bar r_t^2\, \lVert g_t \rVert^2, \qquad v_{-1} = 0\\
        &\eta_t = c\, \bar r_t^2 / (\sqrt{v_t} + \epsilon), \qquad x_{t+1} = x_t - \eta_t\, g_t
        \end{aligned}

    With :math:`\epsilon = 0` the first step has length exactly :math:`r_\epsilon`.

    Symbols: :math:`r_\epsilon^2` ``init_estim_sq_dist`` (default: ``eps``), :math:`\bar r_t^2`
    ``group["r_bar_sq"]``, :math:`v_t` ``group["v"]``, :math:`\eta_t` ``group["eta"]`` =
    ``group["effective_lr"]``, :math:`c` ``lr``, :math:`x_0` ``state["x0"]``, :math:`t`
    ``group["k"]``. ``statistics()`` reports ``r_bar_sq``, ``v`` and ``eta`` of the first group.

    Args:
        params: parameters or param groups; each group is one DoWG block.
        lr: multiplier :math:`c`, in (0, inf). Default 1.0.
        init_estim_sq_dist: initial squared distance :math:`r_\epsilon^2`, in (0, inf), or None
            (default) to use ``eps``, as optax does.
        eps: added to :math:`\sqrt{v_t}`, in [0, inf). Default 1e-4 (optax's).
        weight_decay: coupled L2 coefficient added to the gradient, in [0, inf).
        foreach: multi-tensor path (None: when all tensors are on CPU/CUDA).
        fused: True runs the step in two passes over memory: the tensors' parts of
            :math:`\lVert x_t - x_0\rVert^2` and :math:`\lVert g_t\rVert^2`, then (once the
            group's :math:`\eta_t` is known) the move. On CPU float32/float64 tensors each
            pass is a native multi-tensor kernel, one call for all tensors of a dtype (see
            :mod:`lrlab.optim._native`); elsewhere the compiled kernels of :class:`DoG`'s
            ``fused``.
        sharded: as :class:`DoG`.
        capturable: as :class:`DoG` (here :math:`k`, :math:`\bar r_t^2`, :math:`v_t` and
            :math:`\eta_t`).

    .. note::
        There is no official PyTorch package; argument names and defaults follow the reference
        implementation ``optax.contrib.dowg`` (``learning_rate`` is called ``lr`` here). As
        there, the norms are over the whole block (here: the param group) and the weight decay
        is added to the gradient before it enters :math:`v`. Where :math:`\sqrt{v_t} + \epsilon
        = 0` (``eps = 0`` and all-zero gradients so far) the step size is 0.

    Example:
        >>> optimizer = DoWG(model.parameters())
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
    """

    has_global_statistics: ClassVar[bool] = True
    group_defaults: ClassVar[Mapping[str, float | int]] = {
        "k": 0,
        "r_bar_sq": 0.0,
        "v": 0.0,
        "eta": 0.0,
    }
    #: a capturable step keeps all of the group's run state on the device
    capturable_scalars = scalar.checkpoint_types(group_defaults)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1.0,
        init_estim_sq_dist: float | None = None,
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        sharded: bool = False,
        capturable: bool | None = None,
    ) -> None:
        check_positive("lr", lr)
        check_nonnegative("eps", eps)
        if init_estim_sq_dist is not None:
            check_positive("init_estim_sq_dist", init_estim_sq_dist)
        elif eps == 0:
            # the initial squared distance defaults to eps: zero would never move
            raise ValueError(
                f"init_estim_sq_dist must be in (0, inf) when eps is 0, got {init_estim_sq_dist!r}"
            )
        check_nonnegative("weight_decay", weight_decay)
        check_bool("sharded", sharded)
        fused = check_fused(fused, foreach)
        defaults = {
            "lr": lr,
            "init_estim_sq_dist": init_estim_sq_dist,
            "eps": eps,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "fused": fused,
            "sharded": sharded,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    def _step_size(self, group: dict[str, Any], distance_sq: Scalar, gradient_sq: Scalar) -> Scalar:
        # distance_sq is ||x_t - x_0||^2 (0 at the first step, where r_bar^2 is r_eps^2)
        first = group["k"] == 0
        initial = group["init_estim_sq_dist"]
        r_eps_sq = float(group["eps"] if initial is None else initial)
        previous = scalar.where(first, r_eps_sq, group["r_bar_sq"])
        r_bar_sq = scalar.maximum(previous, distance_sq)
        v = scalar.where(first, 0.0, group["v"]) + r_bar_sq * gradient_sq
        denominator = scalar.sqrt(v) + group["eps"]
        group["r_bar_sq"], group["v"] = r_bar_sq, v
        step = scalar.ratio_or_zero(group["lr"] * r_bar_sq, denominator)
        return scalar.where(denominator > 0, step, 0.0)

    def _statistics(self) -> dict[str, float]:
        group = self.param_groups[0]
        return {"r_bar_sq": group["r_bar_sq"], "v": group["v"], "eta": group["eta"]}


def _promoted(values: list[Tensor], device: torch.device | None = None) -> list[Tensor]:
    """``values`` in their promoted dtype (and on ``device``), to be stacked."""
    dtype = values[0].dtype
    for value in values[1:]:
        dtype = torch.promote_types(dtype, value.dtype)
    return [value.to(device=device, dtype=dtype) for value in values]


def _stack_to_host(values: list[Tensor]) -> Tensor:
    return torch.stack([value.detach().to(device="cpu", dtype=torch.float64) for value in values])


def _total(parts: list[Tensor], like: Tensor) -> Tensor:
    """The sum of 0-d parts in their promoted dtype (zero in ``like``'s accumulation dtype for
    none), as ``_foreach.sum_of_squares`` totals its per-tensor values."""
    if not parts:
        dtype = _foreach.accumulation_dtype(like.dtype)
        return torch.zeros((), dtype=dtype, device=like.device)
    return torch.stack(_promoted(parts)).sum()


def _ldog_step_size(group: dict[str, Any], r_bar: Tensor, G: Tensor) -> Tensor:
    """L-DoG's ``eta = lr r_bar / sqrt(G)`` of one tensor (0-d) or several (1-d)."""
    # a zero G (eps = 0 and zero gradients so far) gives a zero step
    eta = torch.where(G > 0, group["lr"] * r_bar / G.sqrt(), torch.zeros_like(G))
    if group["init_eta"] is not None:
        # r_bar starts at 0: init_eta is the step size until the tensor has moved
        eta = torch.where(r_bar > 0, eta, torch.full_like(eta, group["init_eta"]))
    return eta
