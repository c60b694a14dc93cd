"""The optimizer contract every lrlab method follows.

NOTE [the lrlab optimizer contract]
Every lrlab optimizer is a :class:`torch.optim.Optimizer` and adds:

* ``step(closure=None, *, loss=None, example_indices=None)``
    - ``closure`` is a standard torch closure (``zero_grad``; forward; ``backward``; return the
      loss). It is always accepted. When given, the optimizer calls it (with autograd enabled)
      and uses its gradients and its loss.
    - ``loss=`` lets a method that needs the loss value (MoMo, SPS, L4, ...) run in a script that
      calls ``loss.backward()`` itself: ``optimizer.step(loss=loss)``.
    - A method that needs an extra *forward-only* evaluation after moving (LOSSGRAD) needs the
      closure. To avoid a wasted backward pass, a closure may accept a keyword ``backward``:
      ``closure(backward=False)`` must return the loss without touching gradients (it is called
      under ``torch.no_grad()``). :func:`make_closure` builds such a closure. A plain closure
      still works: it is then called with autograd enabled and the gradients it writes are
      discarded (the caller's ``.grad`` are kept), at the cost of one backward pass.
    - ``example_indices=`` (a 1-d integer tensor) carries the training-set index of each example
      of the mini-batch, for methods that keep one scalar per training example.
* ``param_group["effective_lr"]`` (float) after every step: the scalar step size actually
  applied to that group in that step (0.0 for a skipped step).
* ``statistics() -> dict[str, float]``: ``effective_lr`` of the first group, the count of
  skipped non-finite steps, and the method's own internals. Optimizers never print or log.
* NOTE [non-finite policy]: a step whose loss (when known) or any gradient is NaN or infinite, or
  whose gradient is so large that its squares overflow (the sum of the squares of a tensor is
  not finite in its dtype, or in float16 an entry's square: the second moments and squared
  norms every method keeps would turn inf), is skipped: parameters and every piece of optimizer
  state stay exactly as they were, every group's ``effective_lr`` is set to 0.0 and
  ``statistics()["nonfinite_steps"]`` grows by one. So a run that meets a bad batch continues
  exactly as if that batch had not been drawn.
* NOTE [global scalars live in param_groups]: method-global scalars (D-Adaptation's ``d``, the
  CLARA learning-rate factor, step counters) are stored as plain Python numbers in *every* param
  group and kept identical, so ``state_dict()`` / ``load_state_dict()`` checkpoint them and a
  resumed run continues bit for bit. Per-parameter tensors live in ``self.state[p]``. No run
  state lives in instance attributes. In a *capturable* step (``capturable=True``, the default
  for CUDA parameters of a method that declares ``capturable_scalars``) they are 0-d tensors
  on the parameters' device instead, one tensor shared by every group, and ``state_dict()``
  still writes Python numbers (NOTE [device scalars] in ``_scalars.py``).
* Bad hyperparameters raise :class:`ValueError` naming the argument, the value and the allowed
  range (see :mod:`lrlab.optim._validation`). Each class declares the check of every per-group
  setting once (``hyperparameters``), and it is applied at construction, in
  ``add_param_group`` (group overrides) and on ``load_state_dict`` (see NOTE [one validation for
  hyperparameters] in ``_validation.py``).
* NOTE [checked checkpoints]: ``load_state_dict`` checks the whole state dict before anything is
  assigned: the number of groups and of parameters per group, that every state entry belongs to
  a listed parameter, and the shape of every state tensor against its parameter (a class
  declares the entries that are not shaped like their parameter in ``state_layout``). A
  mismatch raises :class:`ValueError` naming the parameter index, the state key and both
  shapes, and leaves the optimizer exactly as it was. The native kernels write through raw
  pointers, so a state tensor of the wrong length must never reach them.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from lrlab.optim import _feed
from lrlab.optim._distributed import all_reduce_scalars, params_are_sharded
from lrlab.optim._foreach import group_by_device_and_dtype
from lrlab.optim._fused import native_requested
from lrlab.optim._names import sync_paper_names, torch_name_from_alias
from lrlab.optim._native import NativeKernel, native_eligible
from lrlab.optim._validation import Rule, boolean, check_hyperparameters, optional_bool

_NONFINITE_PROBE = NativeKernel("core", "nonfinite_probe", arrays=1, sums=1)

__all__ = [
    "SCALAR_STATE",
    "AdaptiveOptimizer",
    "LossClosure",
    "StateEntry",
    "StepContext",
    "check_state_dict",
    "evaluate_without_backward",
    "make_closure",
]

LossClosure = Callable[..., Tensor | float]
"""A torch closure; it may accept the keyword ``backward`` (see the contract above)."""


def _as_loss(value: Tensor | float | None) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value
    # a Python float is a double: keep all its digits (float64 methods compare losses exactly)
    return torch.as_tensor(float(value), dtype=torch.float64)


def _accepts_backward_flag(closure: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(closure).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    return any(p.name == "backward" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def evaluate_without_backward(closure: LossClosure, params: Iterable[Tensor]) -> Tensor:
    """Evaluate the loss at the current parameters, leaving every ``.grad`` as it was.

    Uses ``closure(backward=False)`` under ``torch.no_grad()`` when the closure supports it.
    Otherwise calls the plain closure with autograd enabled and puts the caller's gradients back
    afterwards (cost: one backward pass).
    """
    if _accepts_backward_flag(closure):
        with torch.no_grad():
            loss = _as_loss(closure(backward=False))
        assert loss is not None  # a closure returning None is rejected by the caller
        return loss.detach()
    params = list(params)
    saved = [p.grad for p in params]
    # give the closure empty slots: its zero_grad/backward then cannot touch our gradients
    for p in params:
        p.grad = None
    try:
        with torch.enable_grad():
            loss = _as_loss(closure())
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad
    if loss is None:
        raise ValueError("the closure returned None; it must return the loss")
    return loss.detach()


def make_closure(
    optimizer: torch.optim.Optimizer, compute_loss: Callable[[], Tensor]
) -> Callable[..., Tensor]:
    """Build a closure that follows the lrlab contract from a function computing the loss.

    ``closure()`` zeroes the gradients, computes the loss and runs backward;
    ``closure(backward=False)`` only computes the loss, without building a graph.

    Example:
        >>> closure = make_closure(optimizer, lambda: loss_fn(model(inputs), targets))
        >>> loss = optimizer.step(closure)
    """

    def closure(*, backward: bool = True) -> Tensor:
        if not backward:
            with torch.no_grad():
                return compute_loss()
        optimizer.zero_grad()
        with torch.enable_grad():
            loss = compute_loss()
            loss.backward()
        return loss

    return closure


def _squares_fit(tensors: list[Tensor]) -> Tensor:
    """0-d bool tensor: every entry of every tensor (one device, one dtype) is finite and its
    square fits the dtype: for float32/float64 the sum of the squares of each tensor is finite,
    for float16/bfloat16 every ``|g| < sqrt(max of the dtype)`` (256 in float16).

    One pass over each tensor: ``dot(g, g)`` is a BLAS reduction, as fast as the plain sum it
    replaces (1.54 vs 1.55 ms on 10M float32 entries, one thread). A NaN or infinite entry makes
    it NaN or inf, and so does an entry whose square overflows: such a gradient would put inf
    into every second-moment or squared-norm statistic (Adam's ``v``, D-Adaptation's and DoG's
    sums, ...), so the step is skipped like a NaN one (NOTE [non-finite policy]). A low-precision
    tensor's sum of squares would overflow float16 on ordinary gradients, so there each entry is
    checked (its max-abs; float16 state such as Adam's ``v`` overflows at 256). No host
    synchronisation here.
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    flags = []
    for t in tensors:
        if t.dtype in (torch.float32, torch.float64):
            flat = t.reshape(-1)
            flags.append(torch.isfinite(torch.dot(flat, flat)))
        elif t.numel():
            # NaN compares false: a NaN entry fails too
            peak = torch.linalg.vector_norm(t, ord=math.inf)
            flags.append(peak < math.sqrt(torch.finfo(t.dtype).max))
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)


@dataclass(frozen=True, slots=True)
class StepContext:
    """What ``step()`` hands to a method's update: the loss and how to evaluate it again."""

    loss: Tensor | None
    closure: LossClosure | None
    example_indices: Tensor | None
    params: tuple[Tensor, ...]

    def forward_only(self) -> Tensor:
        """The loss at the current parameters on the same batch, without a backward pass."""
        if self.closure is None:
            raise ValueError("this method needs step(closure) to evaluate the loss again")
        return evaluate_without_backward(self.closure, self.params)


ShapeRule = Callable[[Tensor, Mapping[str, Any]], Sequence[tuple[int, ...]]]
"""``(parameter, its param group) -> the shapes a state entry may have``."""


def _shaped_like_parameter(param: Tensor, group: Mapping[str, Any]) -> Sequence[tuple[int, ...]]:
    return (tuple(param.shape),)


@dataclass(frozen=True, slots=True)
class StateEntry:
    """The layout of one per-parameter state entry (see NOTE [checked checkpoints]).

    Attributes:
        shapes: the shapes the entry's tensor may have, from the parameter and its group
            (default: the parameter's shape).
        dtype: the dtype the entry is kept in, from the parameter; None: the parameter's dtype
            (torch casts floating state to it on load). An entry kept wider on purpose (float32
            statistics of a float16 parameter) declares it and is loaded uncast.
    """

    shapes: ShapeRule = _shaped_like_parameter
    dtype: Callable[[Tensor], torch.dtype] | None = None


SCALAR_STATE = StateEntry(shapes=lambda param, group: ((),))
"""A 0-d tensor per parameter (a step count, a per-tensor scalar)."""

_DEFAULT_ENTRY = StateEntry()


def _shape_text(shapes: Sequence[tuple[int, ...]]) -> str:
    return " or ".join(str(tuple(shape)) for shape in shapes)


def check_state_dict(
    optimizer: torch.optim.Optimizer,
    state_dict: Mapping[str, Any],
    layout: Mapping[str, StateEntry] | None,
    check_group: Callable[[Mapping[str, Any], int], None] | None = None,
) -> None:
    """Check a state dict against ``optimizer`` before it is loaded; raise ValueError if it does
    not fit (see NOTE [checked checkpoints]).

    ``layout`` names the state entries not shaped like their parameter; None checks only the
    structure (groups, parameter counts, state keys), for a foreign optimizer whose layout is
    unknown. ``check_group(saved_group, index)`` validates each saved group's settings.
    """
    name = type(optimizer).__name__
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{name}.load_state_dict: expected a mapping, got {type(state_dict).__name__}"
        )
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"{name}.load_state_dict: the state dict has no {key!r} entry")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_state, Mapping):
        raise ValueError(f"{name}.load_state_dict: 'state' must be a mapping")
    if not isinstance(saved_groups, Sequence) or isinstance(saved_groups, (str, bytes)):
        raise ValueError(f"{name}.load_state_dict: 'param_groups' must be a list")
    groups = optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"{name}.load_state_dict: the state dict has {len(saved_groups)} param groups, "
            f"the optimizer {len(groups)}"
        )
    # saved parameter id -> (flat index, parameter, current group, saved group)
    where: dict[Any, tuple[int, Tensor, Mapping[str, Any], Mapping[str, Any]]] = {}
    flat = 0
    for group_index, (group, saved) in enumerate(zip(groups, saved_groups, strict=True)):
        ids = saved.get("params") if isinstance(saved, Mapping) else None
        if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)):
            raise ValueError(
                f"{name}.load_state_dict: param group {group_index} has no list of parameters"
            )
        if len(ids) != len(group["params"]):
            raise ValueError(
                f"{name}.load_state_dict: param group {group_index} has {len(ids)} parameters "
                f"in the state dict, {len(group['params'])} in the optimizer"
            )
        if check_group is not None:
            check_group(saved, group_index)
        for saved_id, param in zip(ids, group["params"], strict=True):
            if saved_id in where:
                raise ValueError(
                    f"{name}.load_state_dict: parameter id {saved_id!r} is listed twice"
                )
            where[saved_id] = (flat, param, group, saved)
            flat += 1
    for saved_id, entries in saved_state.items():
        if saved_id not in where:
            raise ValueError(
                f"{name}.load_state_dict: state for parameter id {saved_id!r}, which no param "
                "group lists"
            )
        index, param, _, saved = where[saved_id]
        if not isinstance(entries, Mapping):
            raise ValueError(
                f"{name}.load_state_dict: the state of parameter {index} must be a mapping, "
                f"got {type(entries).__name__}"
            )
        for key, value in entries.items():
            if not isinstance(value, Tensor):
                continue
            if value.layout is not torch.strided or (value.is_complex() and not param.is_complex()):
                raise ValueError(
                    f"{name}.load_state_dict: parameter {index}, state {key!r}: a dense real "
                    f"tensor is needed, got {value.dtype} ({value.layout})"
                )
            if layout is None:
                continue
            # the group as it will be after loading: the saved settings win
            shapes = [tuple(s) for s in layout.get(key, _DEFAULT_ENTRY).shapes(param, saved)]
            if tuple(value.shape) not in shapes:
                raise ValueError(
                    f"{name}.load_state_dict: parameter {index}, state {key!r}: saved shape "
                    f"{tuple(value.shape)}, expected {_shape_text(shapes)} (the parameter's "
                    f"shape is {tuple(param.shape)})"
                )


def _eager_under_compile(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` as dynamo should see it under ``torch.compile(optimizer.step)``: traced when the
    class declares ``traceable_step``, otherwise excluded from tracing (run eager).

    NOTE [torch.compile and the step]: method-global scalars are Python numbers in the param
    groups (NOTE [global scalars live in param_groups]). Dynamo guards a traced step on their
    values and makes each one dynamic only once it has changed, so a method whose scalars start
    changing at different steps recompiles at the third, fourth... step (D-Adaptation, Prodigy,
    DoG, GradaGrad, L4, WNGrad, Schedule-Free, Mechanic), and the arithmetic of ALeRA's learning
    rate factor on those symbolic floats (``exp(min(x, 700))``) makes torch 2.13's dynamo fail
    ("Guard failed on the same frame it was created") in the middle of a step, with part of the
    state already written. A class whose traced step matches its eager step and compiles no new
    graph after the second step declares ``traceable_step = True``
    (``tests/optim/test_compile.py`` measures both for every such method, and the graph breaks
    of each); every other step runs eager under compilation: exact, one skipped frame per call,
    nothing changes for an uncompiled step. The compiled kernels of ``fused=True``
    (``_fused.py``) are compiled on their own and still run. While dynamo traces, the native
    CPU kernels are never chosen (``_native.native_eligible``): the ``foreach`` path traces.

    A capturable step (``capturable=True``, NOTE [device scalars] in ``_scalars.py``) is
    traced too: its global scalars are 0-d tensors, which dynamo takes as graph inputs rather
    than guarding on their values, and its update reads none of them back
    (``tests/optim/test_capturable.py`` traces that update with ``fullgraph=True``).

    Every traced step keeps one graph break: the non-finite guard's decision
    (NOTE [non-finite policy]) is a host read of a device flag (``_has_nonfinite``), as
    torch's own ``GradScaler`` does for its ``foreach`` optimizers.
    """

    @functools.wraps(step)
    def maybe_eager(self: Any, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling() and not (type(self).traceable_step or self.capturable):
            # only reached while dynamo traces (torch._dynamo is imported by then; importing it
            # for every process that never compiles would cost a second at import time)
            return torch.compiler.disable(step, recursive=True)(self, *args, **kwargs)
        return step(self, *args, **kwargs)

    return maybe_eager


class AdaptiveOptimizer(torch.optim.Optimizer):
    """Base class of lrlab optimizers: closure plumbing, non-finite guard, statistics.

    Subclasses implement :meth:`_update` (one step, gradients already known to be finite) and
    optionally :meth:`_statistics`. They declare their needs with the class attributes below; the
    registry copies them into the method's :class:`~lrlab.optim.MethodSpec`.
    """

    #: the method needs the loss value (through the closure or ``loss=``)
    needs_loss: ClassVar[bool] = False
    #: the method needs a closure (for an extra forward-only evaluation)
    needs_closure: ClassVar[bool] = False
    #: the method needs ``example_indices=`` (one scalar per training example)
    needs_example_index: ClassVar[bool] = False
    #: the method has ``train()`` / ``eval()`` modes (Schedule-Free)
    has_eval_mode: ClassVar[bool] = False
    #: the method wraps a base optimizer (Mechanic)
    wraps_base: ClassVar[bool] = False
    #: the method keeps global statistics (sums over all parameters); such a method takes the
    #: constructor argument ``sharded`` and reduces them with :meth:`_reduce_global`
    has_global_statistics: ClassVar[bool] = False
    #: ``torch.compile(optimizer.step)`` traces the step instead of running it eager: declared
    #: by a method whose traced step matches the eager one and compiles nothing new after the
    #: second step (see NOTE [torch.compile and the step]; tests/optim/test_compile.py)
    traceable_step: ClassVar[bool] = False
    #: method-global scalars and their initial values
    #: (see NOTE [global scalars live in param_groups])
    global_defaults: ClassVar[Mapping[str, float | int | bool]] = {}

    #: the method computes the right update from sparse gradients (tested); otherwise a sparse
    #: gradient is refused before the step changes anything
    supports_sparse_gradients: ClassVar[bool] = False
    #: per-parameter state entries that are not shaped like their parameter, or not kept in
    #: its dtype (see NOTE [checked checkpoints]); any other state tensor must have the
    #: parameter's shape
    state_layout: ClassVar[Mapping[str, StateEntry]] = {}

    #: the check of each per-group setting (NOTE [one validation for hyperparameters]); a class
    #: declares its own keys, the rules of its bases apply too
    hyperparameters: ClassVar[Mapping[str, Rule]] = {
        "foreach": optional_bool(),
        "fused": optional_bool(),
        "sharded": boolean(),
        "capturable": optional_bool(),
    }

    #: torch's name -> the paper's name of a hyperparameter the update reads under the paper's
    #: name (``{"momentum": "beta"}``); see NOTE [torch names of hyperparameters]
    torch_names: ClassVar[Mapping[str, str]] = {}

    #: the param-group key of the method's own ``fused`` setting (a wrapper whose groups are
    #: its base optimizer's keeps its own under another name: Mechanic's ``mechanic_fused``);
    #: None: the method has no lrlab native kernels (plain SGD/Adam, whose ``fused`` is torch's)
    fused_setting: ClassVar[str | None] = "fused"

    #: the group keys a *capturable* step keeps as 0-d tensors on the parameters' device, with
    #: their Python type in a checkpoint (NOTE [device scalars] in ``_scalars.py``); None: the
    #: method keeps its global scalars on the host only and takes no ``capturable`` setting
    capturable_scalars: ClassVar[Mapping[str, type] | None] = None
    #: the per-parameter state keys that count a tensor's own steps: ints on the host, 0-d
    #: tensors on the parameter's device in a capturable step (a changing Python int recompiles
    #: a traced step), ints in a checkpoint; made by :meth:`_new_count`
    capturable_counts: ClassVar[tuple[str, ...]] = ()

    _base_global_defaults: ClassVar[Mapping[str, float | int]] = {"nonfinite_steps": 0}

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:  # a subclass's own step (Mechanic, Schedule-Free)
            cls.step = _eager_under_compile(cls.__dict__["step"])  # type: ignore[method-assign]

    # -- global scalars ---------------------------------------------------------------------

    def _all_global_defaults(self) -> dict[str, Any]:
        return {**self._base_global_defaults, **self.global_defaults}

    @classmethod
    def hyperparameter_rules(cls) -> dict[str, Rule]:
        """Every declared hyperparameter check of this class and its bases (subclasses win)."""
        rules: dict[str, Rule] = {}
        for klass in reversed(cls.__mro__):
            rules.update(vars(klass).get("hyperparameters", {}))
        # a setting kept under torch's name is checked as its paper name is
        # (NOTE [torch names of hyperparameters])
        for torch_name, paper_name in cls.torch_names.items():
            if paper_name in rules:
                rules.setdefault(torch_name, rules[paper_name])
        return rules

    def check_hyperparameters(self, group: Mapping[str, Any]) -> None:
        """Raise ValueError if a setting of ``group`` is not allowed (the declared rules, then
        the relations between settings, :meth:`_check_group`)."""
        check_hyperparameters(group, self.hyperparameter_rules())
        self._check_group(group)

    def _check_group(self, group: Mapping[str, Any]) -> None:
        """Checks that relate several settings of one group (a hook; the default has none)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its settings (the optimizer's defaults completed by the
        group's overrides, a paper's name of a setting read as torch's name) and its parameters
        (real floating point: every method's arithmetic assumes it); it receives the current
        method-global scalars of the first group."""
        torch_name_from_alias(param_group, self.torch_names)
        capturable = None
        if isinstance(param_group, Mapping):
            self.check_hyperparameters({**self.defaults, **param_group})
            params = param_group.get("params")
            if params is not None and not isinstance(params, (Tensor, list, tuple, set)):
                param_group["params"] = params = list(params)  # a generator is read once
            params = [params] if isinstance(params, Tensor) else list(params or [])
            self._check_parameters(params)
            capturable = self._resolve_capturable(param_group, params)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        template = self.param_groups[0] if len(self.param_groups) > 1 else None
        for key, default in self._all_global_defaults().items():
            group[key] = template[key] if template is not None else default
        group.setdefault("effective_lr", 0.0)
        if capturable is not None:
            self._capturable_mode = capturable
            group["capturable"] = capturable
            if capturable:
                self._to_device_scalars(group)

    def _resolve_capturable(self, param_group: Mapping[str, Any], params: list[Any]) -> bool | None:
        """The capturable mode of a new group (None: the method has none). The first group
        decides it (unset: True when its parameters are on a CUDA or XPU device); a later group
        may not ask for the other mode, since the global scalars are shared."""
        if self.capturable_scalars is None:
            return None
        setting = param_group.get("capturable", self.defaults.get("capturable"))
        if not getattr(self, "param_groups", None):
            if setting is not None:
                return bool(setting)
            return any(isinstance(p, Tensor) and p.device.type in ("cuda", "xpu") for p in params)
        mode = self.capturable
        if setting is not None and setting != mode:
            raise ValueError(
                f"{type(self).__name__}: a param group with capturable={setting!r} cannot join "
                f"an optimizer whose groups have capturable={mode}: the global scalars are shared "
                "by every group, so every group uses one mode"
            )
        return mode

    @property
    def capturable(self) -> bool:
        """Whether the step keeps the method's global scalars as 0-d tensors on the
        parameters' device and never reads one back (NOTE [device scalars]).

        An attribute, not the groups' ``capturable`` key: while dynamo traces a torch optimizer
        it shows that key as True in every group (``_set_capturable`` in
        ``torch/_dynamo/variables/optimizer.py``, torch 2.13), which would trace a host step
        as a capturable one."""
        return bool(getattr(self, "_capturable_mode", False))

    def _to_device_scalars(self, group: dict[str, Any]) -> None:
        """Turn the group's declared scalars into 0-d tensors on its parameters' device
        (float64; float32 on a device without float64). A value that is already a tensor (a
        global shared with the first group) is kept."""
        assert self.capturable_scalars is not None
        like = next((p for g in (group, *self.param_groups) for p in g["params"]), None)
        device = like.device if like is not None else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64
        for key in self.capturable_scalars:
            value = group.get(key)
            if value is not None and not isinstance(value, Tensor):
                group[key] = torch.tensor(float(value), dtype=dtype, device=device)

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with every device scalar of a capturable step as a Python number
        (one host read per scalar, at checkpoint time only): a checkpoint loads in either mode
        and on any device (NOTE [global scalars live in param_groups])."""
        state = super().state_dict()
        kinds = {**(self.capturable_scalars or {}), "effective_lr": float}
        for group in state["param_groups"]:
            for key, kind in kinds.items():
                value = group.get(key)
                if isinstance(value, Tensor):
                    group[key] = kind(value.item())
        if self.capturable_counts:  # new entries: torch's hold the live state's tensors
            state["state"] = {
                index: {
                    key: int(value)
                    if key in self.capturable_counts and isinstance(value, Tensor)
                    else value
                    for key, value in entry.items()
                }
                for index, entry in state["state"].items()
            }
        return state

    def _new_count(self, p: Tensor, count: int = 0) -> int | Tensor:
        """A step count of ``p``'s state in this optimizer's mode (see ``capturable_counts``)."""
        if not self.capturable:
            return count
        dtype = torch.float32 if p.device.type == "mps" else torch.float64
        return torch.tensor(float(count), dtype=dtype, device=p.device)

    def _check_parameters(self, params: Iterable[Any]) -> None:
        name = type(self).__name__
        first = sum(len(group["params"]) for group in getattr(self, "param_groups", []))
        for offset, p in enumerate(params):
            if isinstance(p, Tensor) and (not p.is_floating_point() or p.is_complex()):
                raise ValueError(
                    f"{name}: parameter {first + offset} is a {p.dtype} tensor; {name} takes "
                    "real floating-point parameters (float16, bfloat16, float32 or float64)"
                )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # checkpoints written before a global scalar existed still load
        for group in self.param_groups:
            for key, default in self._all_global_defaults().items():
                group.setdefault(key, default)
            group.setdefault("effective_lr", 0.0)
        # torch pickles the groups, not the attributes (and its load_state_dict comes through
        # here with the saved groups): the mode comes back from the first group
        self._capturable_mode = bool(
            self.capturable_scalars is not None
            and self.param_groups
            and self.param_groups[0].get("capturable") is True
        )

    # -- checkpoints ------------------------------------------------------------------------

    def _check_loaded_group(self, saved: Mapping[str, Any], index: int) -> None:
        """Validate the settings of a saved param group: they replace the current ones."""
        if saved.get("lr") == 0.0:
            # a scheduler's value (the end of a linear decay, the start of a warm-up): torch's
            # schedulers write it and the run must resume from that checkpoint
            saved = {key: value for key, value in saved.items() if key != "lr"}
        try:
            self.check_hyperparameters(saved)
        except ValueError as error:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: param group {index}: {error}"
            ) from None

    def check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Raise ValueError if ``state_dict`` does not fit this optimizer; change nothing."""
        check_state_dict(self, state_dict, self.state_layout, self._check_loaded_group)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint after checking all of it (see NOTE [checked checkpoints]).

        Load-state-dict pre-hooks run first, as in torch; the checked dict is then loaded by
        torch's ``load_state_dict``. Entries declared with their own dtype in ``state_layout``
        are taken again from the checkpoint, uncast.
        """
        hooks = self._optimizer_load_state_dict_pre_hooks
        state_dict = dict(state_dict) if isinstance(state_dict, Mapping) else state_dict
        for hook in hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self.check_state_dict(state_dict)
        capturable = self.capturable
        # the hooks already ran on the dict that was checked: do not let torch run them again
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
        self._restore_declared_dtypes(state_dict)
        if self.capturable_scalars is not None:
            # the mode follows this optimizer's parameters, not the machine that saved the run
            self._capturable_mode = capturable  # torch's load ran __setstate__ on the saved groups
            for group in self.param_groups:
                group["capturable"] = capturable
                if capturable:
                    self._to_device_scalars(group)
            if capturable:
                for key in self._all_global_defaults():
                    self._set_global(key, self._get_global(key))  # one tensor for every group
            for p in self._params():  # the step counts in this optimizer's mode
                entry = self.state.get(p, {})
                for key in self.capturable_counts:
                    if key in entry:
                        entry[key] = self._new_count(p, int(entry[key]))

    def _restore_declared_dtypes(self, state_dict: Mapping[str, Any]) -> None:
        wide = {key: entry.dtype for key, entry in self.state_layout.items() if entry.dtype}
        if not wide:
            return
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        param_of = dict(zip(ids, self._params(), strict=True))
        for saved_id, entries in state_dict["state"].items():
            p = param_of[saved_id]
            for key, dtype_of in wide.items():
                value = entries.get(key)
                if isinstance(value, Tensor) and dtype_of(p) != p.dtype:
                    self.state[p][key] = value.to(device=p.device, dtype=dtype_of(p), copy=True)

    def _get_global(self, key: str) -> Any:
        return self.param_groups[0][key]

    def _set_global(self, key: str, value: Any) -> None:
        for group in self.param_groups:
            group[key] = value

    # -- the step ---------------------------------------------------------------------------

    def _params(self) -> tuple[Tensor, ...]:
        return tuple(p for group in self.param_groups for p in group["params"])

    def _statistics_are_partial(self) -> bool:
        """Whether this rank sees only part of the parameters (see NOTE in ``_distributed.py``).

        True when the optimizer was built with ``sharded=True`` (each rank owns a disjoint part
        of the model) or when a parameter is a sharded DTensor. Replicated (DDP) training is not
        partial: every rank already holds the global gradient.
        """
        return bool(self.param_groups[0].get("sharded", False)) or params_are_sharded(
            self._params()
        )

    def _reduce_global(self, values: list[Tensor]) -> list[Tensor]:
        """Sum this step's partial scalar increments over ranks, one collective, if partial.

        Every rank must call this every step (no early return before it), even with no
        gradients: pass zeros.
        """
        return all_reduce_scalars(values, partial=self._statistics_are_partial())

    def _has_nonfinite(self, loss: Tensor | None) -> bool:
        """One pass over the gradients and one host synchronisation per step.

        With sharded parameters the flag is reduced over ranks, so that every rank skips the
        same steps and no rank leaves the others waiting in a collective.
        """
        flags: list[Tensor] = []
        if loss is not None:
            flags.append(torch.isfinite(loss.detach()).all())
        grads = []
        for index, p in enumerate(self._params()):
            grad = p.grad
            if grad is None:
                continue
            if grad.layout is not torch.strided and not self.supports_sparse_gradients:
                # refused before anything moves (a sparse gradient would fail deep inside the
                # update, after state was created)
                name = type(self).__name__
                raise ValueError(
                    f"{name}: parameter {index} has a sparse gradient ({grad.layout}); {name} "
                    "supports dense gradients only"
                )
            grads.append(grad)
        if self._uses_native_kernels() and _NONFINITE_PROBE.available():
            # one multi-threaded pass over every CPU gradient, where torch needs a sum kernel
            # per tensor (a quarter of Adam(fused)'s step on 200 small tensors)
            native: dict[torch.dtype, list[tuple[Tensor]]] = {}
            others = []
            for grad in grads:
                if native_eligible(grad):
                    native.setdefault(grad.dtype, []).append((grad,))
                else:
                    others.append(grad)
            for dtype, rows in native.items():
                probe = _NONFINITE_PROBE(rows, ())
                assert probe is not None
                # the per-tensor sums of squares, in the gradients' dtype: inf where they overflow
                flags.append(torch.isfinite(probe.to(dtype)).all())
            grads = others
        for (_, _), (bucket,) in group_by_device_and_dtype([grads]).items():
            dense = [g.coalesce().values() if g.is_sparse else g for g in bucket]
            flags.append(_squares_fit(dense))
        device = flags[0].device if flags else None
        bad = (
            (~torch.stack([f.to(device) for f in flags]).all()).to(torch.float32)
            if flags
            else torch.zeros((), dtype=torch.float32)
        )
        if self.has_global_statistics and self._statistics_are_partial():
            (bad,) = self._reduce_global([bad])
        return bool(bad > 0)

    def _uses_native_kernels(self) -> bool:
        """Whether a group takes the native CPU kernels: ``fused`` None (the default) or True
        (a group without the key, or torch's own ``fused`` of plain SGD/Adam, does not)."""
        setting = self.fused_setting
        if setting is None:
            return False
        return any(
            native_requested({"fused": group.get(setting, False)}) for group in self.param_groups
        )

    @_eager_under_compile
    def step(
        self,
        closure: LossClosure | None = None,
        *,
        loss: Tensor | float | None = None,
        example_indices: Tensor | None = None,
    ) -> Tensor | None:
        """Perform one optimization step (see NOTE [the lrlab optimizer contract]).

        Args:
            closure: a standard torch closure that recomputes the loss and its gradients.
            loss: the loss at the current parameters, for methods that need it and scripts that
                call ``backward()`` themselves. Not allowed together with ``closure``.
            example_indices: training-set indices of the mini-batch examples, for methods that
                keep per-example state.

        Returns:
            The loss (from the closure or ``loss``), or None.
        """
        name = type(self).__name__
        if closure is not None and loss is not None:
            raise ValueError(f"{name}.step: pass either closure or loss, not both")
        loss_is_explicit = loss is not None
        if self.needs_closure and closure is None and not _feed.needs_no_closure(self):
            raise ValueError(
                f"{name}.step needs a closure: it evaluates the loss again after moving "
                "(see lrlab.optim.make_closure)"
            )
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if loss is None and self.needs_loss and _feed.peek_fed(self) is None:
                raise ValueError(f"{name}.step: the closure returned None; it must return the loss")
        # what lrlab.optim.feed handed over (NOTE in _feed.py); consumed by this step
        loss, example_indices, closure = _feed.apply_fed(
            self,
            loss=loss,
            loss_is_explicit=loss_is_explicit,
            example_indices=example_indices,
            closure=closure,
        )
        loss_tensor = _as_loss(loss)
        if self.needs_loss and loss_tensor is None:
            raise ValueError(f"{name}.step needs the loss: call step(closure) or step(loss=loss)")
        if self.needs_example_index and example_indices is None:
            raise ValueError(
                f"{name}.step needs example_indices= (the training-set index of each example)"
            )
        with torch.no_grad():
            if self._has_nonfinite(loss_tensor):
                self._set_global("nonfinite_steps", self._get_global("nonfinite_steps") + 1)
                for group in self.param_groups:
                    group["effective_lr"] = 0.0
                return loss  # type: ignore[return-value]
            context = StepContext(
                loss=loss_tensor,
                closure=closure,
                example_indices=example_indices,
                params=self._params(),
            )
            sync_paper_names(self.param_groups, self.torch_names)
            self._update(context)
        return loss  # type: ignore[return-value]

    def _update(self, context: StepContext) -> None:
        """One step of the method. Must set ``group["effective_lr"]`` for every group."""
        raise NotImplementedError

    # -- observation ------------------------------------------------------------------------

    def statistics(self) -> dict[str, float]:
        """Named floats describing the optimizer now: ``effective_lr`` of the first group,
        ``nonfinite_steps`` and the method's own internals."""
        stats = {
            "effective_lr": float(self.param_groups[0]["effective_lr"]),
            "nonfinite_steps": float(self._get_global("nonfinite_steps")),
        }
        stats.update({key: float(value) for key, value in self._statistics().items()})
        return stats

    def _statistics(self) -> dict[str, float]:
        return {}
