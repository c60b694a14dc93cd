"""Multi-tensor helpers shared by the optimizers.

Every helper has a for-loop meaning (the spec) and uses ``torch._foreach_*`` kernels where they
exist; the conformance suite checks the two paths of every optimizer against each other in float64.
Reductions return 0-d tensors on the tensors' device, so that a caller can combine many of them and
synchronise with the host once per step, not once per tensor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "accumulation_dtype",
    "add_scaled_",
    "grad_of",
    "grads_of",
    "group_by_device_and_dtype",
    "norms",
    "resolve_foreach",
    "sum_of_squares",
    "total_dot",
    "total_l1",
]


def grad_of(param: Tensor) -> Tensor:
    """``param.grad`` of a parameter the step already selected for having one (typed as a
    Tensor, so the update code needs no casts)."""
    grad = param.grad
    if grad is None:
        raise RuntimeError("internal error: a parameter without a gradient reached the update")
    return grad


def grads_of(params: Sequence[Tensor]) -> list[Tensor]:
    """:func:`grad_of` of every tensor of ``params``."""
    return [grad_of(p) for p in params]


def resolve_foreach(foreach: bool | None, tensors: Sequence[Tensor]) -> bool:
    """Decide whether to take the multi-tensor path.

    ``None`` means "fast path when possible": every tensor is a strided CPU or CUDA tensor and
    not sparse. An explicit ``True`` or ``False`` is honoured as given.
    """
    if foreach is not None:
        return foreach
    return all(
        t.layout == torch.strided and t.device.type in ("cpu", "cuda") and not t.is_sparse
        for t in tensors
    )


def group_by_device_and_dtype(
    tensor_lists: Sequence[Sequence[Tensor]],
) -> dict[tuple[torch.device, torch.dtype], list[list[Tensor]]]:
    """Split parallel lists of tensors by the (device, dtype) of the first list.

    ``torch._foreach_*`` kernels need every tensor of one call on one device with one dtype.
    Order within each bucket follows the input order, so results are deterministic.
    """
    buckets: dict[tuple[torch.device, torch.dtype], list[list[Tensor]]] = defaultdict(
        lambda: [[] for _ in tensor_lists]
    )
    for index, leader in enumerate(tensor_lists[0]):
        bucket = buckets[(leader.device, leader.dtype)]
        for position, tensors in enumerate(tensor_lists):
            bucket[position].append(tensors[index])
    return dict(buckets)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of scalar statistics of ``dtype`` tensors: float64 stays, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def norms(tensors: Sequence[Tensor], *, foreach: bool) -> list[Tensor]:
    """L2 norm of every tensor, each a 0-d tensor in the accumulation dtype."""
    if not tensors:
        return []
    if foreach:
        out: list[Tensor] = []
        for (_, dtype), (bucket,) in group_by_device_and_dtype([tensors]).items():
            # foreach_norm may run in the tensor's own dtype; promote low precision explicitly
            acc = accumulation_dtype(dtype)
            out.extend(
                torch._foreach_norm(bucket, 2, dtype=acc)
                if acc != dtype
                else torch._foreach_norm(bucket, 2)
            )
        # restore input order (buckets may interleave when devices or dtypes are mixed)
        return _reorder(tensors, out)
    return [torch.linalg.vector_norm(t, dtype=accumulation_dtype(t.dtype)) for t in tensors]


def _reorder(tensors: Sequence[Tensor], bucketed: list[Tensor]) -> list[Tensor]:
    keys = [(t.device, t.dtype) for t in tensors]
    if len(set(keys)) <= 1:
        return bucketed
    order: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        order[key].append(index)
    flat_index = [index for indices in order.values() for index in indices]
    result: list[Tensor | None] = [None] * len(tensors)
    for value, index in zip(bucketed, flat_index, strict=True):
        result[index] = value
    return [r for r in result if r is not None]


def _stack_sum(values: Sequence[Tensor], like: Tensor | None) -> Tensor:
    if not values:
        dtype = torch.float32 if like is None else accumulation_dtype(like.dtype)
        device = None if like is None else like.device
        return torch.zeros((), dtype=dtype, device=device)
    dtype = values[0].dtype
    for value in values[1:]:
        dtype = torch.promote_types(dtype, value.dtype)
    return torch.stack([v.to(dtype) for v in values]).sum()


def sum_of_squares(tensors: Sequence[Tensor], *, foreach: bool) -> Tensor:
    """``sum_i ||t_i||^2`` as a 0-d tensor."""
    values = norms(tensors, foreach=foreach)
    return _stack_sum([v * v for v in values], tensors[0] if tensors else None)


def total_l1(tensors: Sequence[Tensor], *, foreach: bool) -> Tensor:
    """``sum_i ||t_i||_1`` as a 0-d tensor."""
    if foreach and tensors:
        values: list[Tensor] = []
        for (_, dtype), (bucket,) in group_by_device_and_dtype([tensors]).items():
            acc = accumulation_dtype(dtype)
            values.extend(
                torch._foreach_norm(bucket, 1, dtype=acc)
                if acc != dtype
                else torch._foreach_norm(bucket, 1)
            )
    else:
        values = [
            torch.linalg.vector_norm(t, 1, dtype=accumulation_dtype(t.dtype)) for t in tensors
        ]
    return _stack_sum(values, tensors[0] if tensors else None)


def total_dot(left: Sequence[Tensor], right: Sequence[Tensor]) -> Tensor:
    """``sum_i <a_i, b_i>`` as a 0-d tensor, without full-size temporaries."""
    values = []
    for a, b in zip(left, right, strict=True):
        # .to() is free when the dtype already is the accumulation dtype
        acc = accumulation_dtype(a.dtype)
        values.append(torch.dot(a.reshape(-1).to(acc), b.reshape(-1).to(acc)))
    return _stack_sum(values, left[0] if left else None)


def add_scaled_(tensors: Sequence[Tensor], others: Sequence[Tensor], alpha: float | Tensor) -> None:
    """``t += alpha * o`` for every pair, in one multi-tensor kernel when ``alpha`` is a Python
    number. A 0-d tensor ``alpha`` (a capturable step's device scalar) is multiplied in first:
    torch's ``alpha=`` would read it back to the host."""
    if isinstance(alpha, Tensor):
        torch._foreach_add_(list(tensors), torch._foreach_mul(list(others), alpha))
    else:
        torch._foreach_add_(list(tensors), list(others), alpha=alpha)
