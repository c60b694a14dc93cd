"""What both framework callbacks share: finding the lrlab optimizers, the forward-only check
pass, and the values to log. No framework is imported here."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from lrlab.optim._base import AdaptiveOptimizer
from lrlab.optim._feed import find_lrlab_optimizer
from lrlab.optim.lossgrad import _rng_states, _set_rng_states

__all__ = [
    "RngState",
    "batch_indices",
    "check_pass",
    "lrlab_optimizers",
    "needs_any",
    "rng_state",
    "statistics_to_log",
]

RngState = tuple[Tensor, list[Tensor] | None]


def lrlab_optimizers(optimizers: Iterable[Any]) -> list[AdaptiveOptimizer]:
    """The lrlab optimizers among (or inside wrappers of) ``optimizers``; others are skipped."""
    found: list[AdaptiveOptimizer] = []
    for optimizer in optimizers:
        try:
            found.append(find_lrlab_optimizer(optimizer))
        except TypeError:
            continue  # a torch or third-party optimizer: the callback leaves it alone
    return found


def needs_any(optimizers: Iterable[AdaptiveOptimizer], capability: str) -> bool:
    """Whether any optimizer declares ``capability`` (``needs_loss``, ``has_eval_mode``, ...)."""
    return any(bool(getattr(optimizer, capability, False)) for optimizer in optimizers)


def batch_indices(batch: Any, key: str, where: str) -> Tensor:
    """The training-set indices of a dict batch (``batch[key]``), as a 1-d integer tensor.

    Raises:
        ValueError: the batch is not a mapping with ``key`` (the message says what to change).
    """
    if not isinstance(batch, Mapping) or key not in batch:
        found = (
            f"a dict batch with keys {sorted(map(str, batch))}"
            if isinstance(batch, Mapping)
            else f"a batch of type {type(batch).__name__}"
        )
        raise ValueError(
            f"{where}: the optimizer needs the training-set index of every example "
            f"(example_indices); the callback reads it from the batch entry {key!r}, but got "
            f"{found}. Make the dataset's items dicts with an {key!r} entry (the example's "
            "position in the training set), or pass index_key= to the callback"
        )
    indices = batch[key]
    if not isinstance(indices, Tensor):
        indices = torch.as_tensor(indices)
    return indices.reshape(-1)


def rng_state() -> RngState:
    """The random-number-generator states (CPU, and CUDA once initialised)."""
    return _rng_states()


def loss_of(output: Any) -> Tensor | None:
    """The loss in a model's or a training step's output: a tensor, ``output["loss"]``,
    ``output.loss`` or the first element of a tuple; None when there is none."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        value = output.get("loss")
        return value if isinstance(value, Tensor) else None
    value = getattr(output, "loss", None)
    if isinstance(value, Tensor):
        return value
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


@contextlib.contextmanager
def _buffers_kept(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    buffers = [b for module in modules for b in module.buffers()]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def check_pass(
    passes: list[tuple[Callable[[], Tensor], RngState]],
    modules: Iterable[torch.nn.Module],
    *,
    combine: str = "mean",
) -> Tensor:
    """The loss of the same micro-batches at the current parameters, without a graph.

    Each pass replays the random-number state its training forward started from (dropout
    draws the same masks), and the buffers of ``modules`` (BatchNorm statistics) and the RNG
    are put back afterwards: the check does not change the run. ``combine`` is ``"mean"`` (a
    step's loss is the mean of its micro-batch losses) or ``"sum"`` (each micro-batch loss is
    already its share of the step's mean, as in transformers' ``num_items_in_batch``).
    """
    after = _rng_states()
    losses = []
    try:
        with _buffers_kept(list(modules)), torch.no_grad():
            for compute, state in passes:
                _set_rng_states(state)
                losses.append(compute().detach().to(torch.float64))
    finally:
        _set_rng_states(after)
    total = torch.stack(losses).sum()
    return total if combine == "sum" else total / len(losses)


def statistics_to_log(optimizers: list[AdaptiveOptimizer], prefix: str) -> dict[str, float]:
    """``statistics()`` of every lrlab optimizer (``effective_lr`` first) under ``prefix``;
    with several optimizers each key carries the optimizer's position."""
    logged: dict[str, float] = {}
    for position, optimizer in enumerate(optimizers):
        tag = prefix if len(optimizers) == 1 else f"{prefix}{position}/"
        for key, value in optimizer.statistics().items():
            logged[f"{tag}{key}"] = float(value)
    return logged


def _world_size() -> int:
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size()
    return 1


def mean_over_ranks(loss: Tensor) -> Tensor:
    """The mean of ``loss`` over the ranks of the default process group (itself on one rank).

    Data-parallel ranks hold the same averaged gradient; a method that also uses the loss must
    see the same loss everywhere, or the replicas drift apart. Every rank must call this.
    """
    world = _world_size()
    if world == 1:
        return loss
    total = loss.detach().to(torch.float64).clone()
    torch.distributed.all_reduce(total)
    return total / world


def gather_over_ranks(indices: Tensor) -> Tensor:
    """The example indices of every rank's batch, concatenated in rank order (the global batch).

    Raises:
        ValueError: the ranks' batches differ in size (a distributed sampler pads or drops to
            equal sizes; use one).
    """
    world = _world_size()
    if world == 1:
        return indices
    indices = indices.reshape(-1).to(torch.int64)
    sizes = [torch.zeros((), dtype=torch.int64, device=indices.device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor(indices.numel(), device=indices.device))
    if len({int(size) for size in sizes}) != 1:
        raise ValueError(
            "the ranks' batches have different sizes "
            f"({[int(size) for size in sizes]}): example indices cannot be gathered; use a "
            "DistributedSampler that pads or drops the last batch"
        )
    parts = [torch.empty_like(indices) for _ in range(world)]
    torch.distributed.all_gather(parts, indices)
    return torch.cat(parts)
