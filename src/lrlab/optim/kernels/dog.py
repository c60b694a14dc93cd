"""The DoG family's fast path: the schemas, passes and compiled kernels of DoG, L-DoG and DoWG
(the method module: :mod:`lrlab.optim.dog`; the native kernels: ``native/dog.cpp``; the
convention: :mod:`lrlab.optim.kernels`).

The passes: :data:`SUMS`, the statistics (grad, p, x0 -> ``||x - a x0||^2``, ``||g + wd x||^2``);
:data:`DISTANCE`, the distance of a tensor without a gradient; :data:`MOVE` and
:data:`MOVE_AVERAGE`, the move without and with the iterate average; :data:`LDOG_STEP` and
:data:`LDOG_STEP_AVERAGE`, L-DoG's whole step of one tensor in one compiled call. :func:`run`
runs a pass whose per-tensor scalars may be a capturable step's device scalars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from lrlab.optim import _scalars as scalar
from lrlab.optim._executor import Pass, PassResult, Plan, Schema
from lrlab.optim._fused import flat, kernel, scalars
from lrlab.optim._scalars import Scalar

__all__ = [
    "DISTANCE",
    "LDOG_STEP",
    "LDOG_STEP_AVERAGE",
    "MOVE",
    "MOVE_AVERAGE",
    "SUMS",
    "column",
    "fast_rows",
    "ldog_pass",
    "move_pass",
    "run",
]

# The statistics pass (grad, p, x0 -> ||x - a x0||^2, ||g + wd x||^2), the distance of a tensor
# without a gradient, and the move with or without the average, native (native/dog.cpp) and
# compiled; eta is a per-tensor scalar so that L-DoG's per-tensor step sizes take the same
# native kernels as DoG's and DoWG's group one. L-DoG's compiled kernels take a tensor's whole
# step in one call. The compiled sums are taken in the scalars' dtype, the accumulation dtype
# of the parameter, as the reference loop's norms; weight decay 0 gives g + 0 x = g exactly.

_SUMS_SCHEMA = Schema("DogSums", scalars=("weight_decay", "anchor"), sums=("distance", "gradient"))
_DISTANCE_SCHEMA = Schema("DogDistance", scalars=("anchor",), sums=("distance",))
_MOVE_SCHEMA = Schema("DogMove", scalars=("weight_decay",), tensor_scalars=("eta",))
_MOVE_AVERAGE_SCHEMA = Schema(
    "DogMoveAverage", scalars=("weight_decay",), tensor_scalars=("eta", "weight")
)
_LDOG_SCALARS = ("weight_decay", "lr", "init_eta", "has_init_eta")
_LDOG_STEP_SCHEMA = Schema("LDogStep", scalars=_LDOG_SCALARS)
_LDOG_AVERAGE_SCHEMA = Schema("LDogStepAverage", scalars=_LDOG_SCALARS, tensor_scalars=("weight",))


def _lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``torch.lerp``'s formula (exact at weight 0 and 1) for a 0-d tensor weight of another
    dtype, which ``torch.lerp`` itself refuses."""
    difference = end - start
    return torch.where(
        weight.abs() < 0.5, start + weight * difference, end - difference * (1 - weight)
    )


@kernel
def _dog_sums(grad: Tensor, p: Tensor, x0: Tensor, scalars: Tensor) -> tuple[Tensor, Tensor]:
    """One tensor's ``||x - anchor x0||^2`` and ``||g + wd x||^2``."""
    c = _SUMS_SCHEMA.read(scalars)
    difference = (p - c["anchor"] * x0).to(scalars.dtype)
    direction = (grad + c["weight_decay"] * p).to(scalars.dtype)
    return (difference * difference).sum(), (direction * direction).sum()


def _dog_moved(grad: Tensor, p: Tensor, c: dict[str, Tensor]) -> Tensor:
    """``x - eta (g + wd x)`` (inlined into the kernels below)."""
    return p - c["eta"] * (grad + c["weight_decay"] * p)


@kernel
def _dog_move(grad: Tensor, p: Tensor, scalars: Tensor) -> None:
    """The move with the tensor's ``eta`` (DoG, DoWG: the group's)."""
    p.copy_(_dog_moved(grad, p, _MOVE_SCHEMA.read(scalars)))


@kernel
def _dog_move_and_average(grad: Tensor, p: Tensor, average: Tensor, scalars: Tensor) -> None:
    """The move and the polynomial-decay average of the moved x."""
    c = _MOVE_AVERAGE_SCHEMA.read(scalars)
    moved = _dog_moved(grad, p, c)
    p.copy_(moved)
    average.copy_(_lerp(average, moved, c["weight"]))


def _ldog_moved(
    grad: Tensor, p: Tensor, x0: Tensor, r_bar: Tensor, G: Tensor, scalars: Tensor
) -> tuple[Tensor, Tensor]:
    """L-DoG's statistics and move of one tensor (inlined into the kernels below). Updates
    r_bar and G (1-element views of the 0-d states); returns the moved x and eta (0-d, the
    states' dtype)."""
    c = _LDOG_STEP_SCHEMA.read(scalars)  # the average's weight, if any, comes after these
    direction = grad + c["weight_decay"] * p
    difference = (p - x0).to(scalars.dtype)
    r_new = torch.maximum(r_bar[0], (difference * difference).sum().sqrt())
    squares = direction.to(scalars.dtype)
    norm = (squares * squares).sum().sqrt()
    G_new = G[0] + norm * norm
    # a zero G (eps = 0 and zero gradients so far) gives a zero step
    eta = torch.where(G_new > 0, c["lr"] * r_new / G_new.sqrt(), torch.zeros_like(G_new))
    # with init_eta, r_bar starts at 0: init_eta is the step size until the tensor has moved
    eta = torch.where((r_new > 0) | (c["has_init_eta"] == 0), eta, c["init_eta"].to(eta.dtype))
    r_bar.copy_(r_new)
    G.copy_(G_new)
    return p - direction * eta, eta


@kernel
def _ldog_step(grad: Tensor, p: Tensor, x0: Tensor, r_bar: Tensor, G: Tensor, c: Tensor) -> Tensor:
    """L-DoG's whole step of one tensor (see :func:`_ldog_moved`); returns eta."""
    moved, eta = _ldog_moved(grad, p, x0, r_bar, G, c)
    p.copy_(moved)
    return eta


@kernel
def _ldog_step_and_average(
    grad: Tensor, p: Tensor, x0: Tensor, r_bar: Tensor, G: Tensor, average: Tensor, c: Tensor
) -> Tensor:
    """:func:`_ldog_step` and the average of the moved x."""
    moved, eta = _ldog_moved(grad, p, x0, r_bar, G, c)
    p.copy_(moved)
    average.copy_(_lerp(average, moved, _LDOG_AVERAGE_SCHEMA.read(c)["weight"]))
    return eta


SUMS = Pass("dog", ("grad", "p", "x0"), _SUMS_SCHEMA, native="dog_sums", compiled=_dog_sums)
DISTANCE = Pass("dog", ("p", "x0"), _DISTANCE_SCHEMA, native="dog_distance")
MOVE = Pass("dog", ("grad", "p"), _MOVE_SCHEMA, native="dog_move", compiled=_dog_move)
MOVE_AVERAGE = Pass(
    "dog",
    ("grad", "p", "average"),
    _MOVE_AVERAGE_SCHEMA,
    native="dog_move_average",
    compiled=_dog_move_and_average,
)
# compiled only: the native kernels take L-DoG's step as _SUMS and _MOVE around vector math
_LDOG = ("grad", "p", "x0", "r_bar", "G")
LDOG_STEP = Pass("dog", _LDOG, _LDOG_STEP_SCHEMA, compiled=_ldog_step, compiled_sums=("eta",))
LDOG_STEP_AVERAGE = Pass(
    "dog",
    (*_LDOG, "average"),
    _LDOG_AVERAGE_SCHEMA,
    compiled=_ldog_step_and_average,
    compiled_sums=("eta",),
)


def move_pass(group: Mapping[str, Any]) -> Pass:
    """The move of a group, with the iterate average where it keeps one."""
    return MOVE if group.get("averaging_gamma") is None else MOVE_AVERAGE


def ldog_pass(group: Mapping[str, Any]) -> Pass:
    """L-DoG's one-call step of a group (compiled kernels)."""
    return LDOG_STEP if group.get("averaging_gamma") is None else LDOG_STEP_AVERAGE


def fast_rows(plan: Plan) -> list[int]:
    """The rows of ``plan`` that the native and compiled kernels take."""
    return [*plan.compiled, *(index for indices in plan.native.values() for index in indices)]


def column(sums: Tensor, name: str) -> Tensor:
    """The sum ``name`` of every row of a native ``(rows, sums)`` tensor of :data:`SUMS`."""
    return sums[:, SUMS.schema.sums.index(name)]


def run(
    plan: Plan,
    step: Pass,
    named: Mapping[str, Scalar],
    tensor_scalars: Sequence[Mapping[str, Scalar]],
    only: Sequence[int] | None = None,
) -> PassResult:
    """``plan.run(step, named, tensor_scalars=..., only=...)``, where a per-tensor scalar (the
    group's ``eta``, the average's weight) may be a capturable step's 0-d device tensor.

    The executor takes per-tensor scalars as Python numbers: right for the native kernels, which
    read them on the CPU anyway (no device sync), but a compiled row's would be read back from
    its device. Here a compiled row gets its scalars stacked on its device instead, as the
    executor stacks a pass's device scalars (NOTE [device scalars] in ``_scalars.py``)."""
    # a native row's device scalar is a CPU tensor: the executor's float() costs no device sync
    numbers = cast(Sequence[Mapping[str, float]], tensor_scalars)
    values = [value for row in tensor_scalars for value in row.values()]
    if not scalar.is_device(*values):
        return plan.run(step, named, tensor_scalars=numbers, only=only)
    keep = None if only is None else set(only)
    natives = [i for rows in plan.native.values() for i in rows if keep is None or i in keep]
    result = plan.run(step, named, tensor_scalars=numbers, only=natives)
    schema, names = step.schema, step.compiled_sums or step.schema.sums
    assert step.compiled is not None and step.compiled_arrays is None  # the passes above
    for i in plan.compiled:
        if keep is not None and i not in keep:
            continue
        row, own = plan.rows[i], tensor_scalars[i]
        if set(own) != set(schema.tensor_scalars):
            raise ValueError(f"{schema.struct}: tensor scalars {sorted(own)}")
        values = [*schema.values(named), *(own[name] for name in schema.tensor_scalars)]
        arrays = [flat(row[name]) for name in step.arrays]
        out = step.compiled(*arrays, scalars(values, arrays[0]))
        if names:
            parts = out if isinstance(out, tuple) else (out,)
            result.compiled.append(dict(zip(names, parts, strict=True)))
            result.compiled_rows.append(i)
    return result
