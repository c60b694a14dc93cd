"""Reducing global scalar statistics across ``torch.distributed`` ranks.

NOTE [global statistics across ranks]
Methods such as D-Adaptation, Prodigy, Mechanic, DoG and CLARA keep *global* scalars (sums of
inner products and norms over all parameters). How they must cross ranks depends on the data
layout, not on the method:

* replicated parameters (DDP): every rank holds every parameter and the same averaged gradient,
  so every rank already computes the global value. Reducing would over-count by the world size.
* sharded parameters (FSDP, DTensor, or a user who gives each rank a disjoint part of the model):
  each rank computes a *partial* sum over the parameters it owns; the global value is the sum
  over ranks.

So optimizers reduce only partial statistics, they reduce the per-step *increments* (never a
running state such as an EMA, which would be summed again at every step), they pack every scalar
of one step into one tensor for a single collective, the buffer lives on the parameters' device
(gloo on CPU works), and every rank calls the collective unconditionally (an early return on one
rank would leave the others waiting forever).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_scalars", "is_distributed", "params_are_sharded"]


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """True when a process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def params_are_sharded(params: Sequence[Tensor]) -> bool:
    """True when any parameter is a DTensor that is not fully replicated."""
    try:
        from torch.distributed.tensor import DTensor, Replicate
    except ImportError:  # pragma: no cover - older torch
        return False
    for p in params:
        if isinstance(p, DTensor) and not all(isinstance(x, Replicate) for x in p.placements):
            return True
    return False


def all_reduce_scalars(
    values: Sequence[Tensor], *, partial: bool, group: dist.ProcessGroup | None = None
) -> list[Tensor]:
    """Sum per-rank partial scalars over ranks with one packed collective.

    Args:
        values: 0-d tensors (this step's increments), all on one device.
        partial: whether the values are partial sums (sharded parameters). When False, or when
            not running distributed, the values are returned unchanged.
        group: the process group (default: the world).

    Returns:
        The reduced scalars, in the same order, on the same device.
    """
    if not values:
        return []
    if not partial or not is_distributed(group):
        return list(values)
    dtype = values[0].dtype
    for value in values[1:]:
        dtype = torch.promote_types(dtype, value.dtype)
    # one buffer, one collective, on the parameters' device
    packed = torch.stack([v.detach().to(dtype).reshape(()) for v in values])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return list(packed.unbind(0))
