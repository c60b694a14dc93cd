"""transformers callback: every lrlab optimizer trains under ``transformers.Trainer``.

Usage (the Trainer builds no optimizer of its own when given one)::

    from lrlab.integrations.transformers import LrlabCallback

    optimizer = lo.create("momo", model.parameters(), lr=1.0)
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      optimizers=(optimizer, None), callbacks=[LrlabCallback()])
    trainer.train()

The Trainer calls ``optimizer.step()`` with no arguments and hands its callbacks neither the
loss nor the batch, so the callback watches the model instead (forward hooks, registered in
``on_train_begin`` and removed in ``on_train_end``):

* the loss is read from the model's output (``output.loss``, ``output["loss"]`` or
  ``output[0]``) of every training forward pass of an optimizer step and fed before the step
  (:func:`lrlab.optim.feed`): the mean of the micro-batch losses, or their sum when the Trainer
  passed ``num_items_in_batch`` (then each micro-batch loss is already its share of the step's
  token mean);
* the ``"index"`` entry of the batch (the training-set index of each example) is taken out of
  the model's inputs before the forward pass and fed as ``example_indices``. The Trainer drops
  dataset columns the model's ``forward`` does not name unless
  ``TrainingArguments(remove_unused_columns=False)``: the callback checks that for methods that
  need the indices and says so;
* LOSSGRAD's forward-only check runs the model again on the step's inputs (no grad, same
  dropout masks, BatchNorm buffers kept), never the Trainer's ``training_step``.

Schedule-Free: the Trainer itself calls ``optimizer.train()`` / ``optimizer.eval()`` around
training and evaluation; the callback also switches to the evaluation weights before a
checkpoint is saved and at the end of training. ``effective_lr`` and ``statistics()`` are added
to the Trainer's logs (``logging_steps``), before the reporting integrations see them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import Tensor

from lrlab.integrations._common import (
    RngState,
    batch_indices,
    check_pass,
    gather_over_ranks,
    loss_of,
    lrlab_optimizers,
    mean_over_ranks,
    needs_any,
    rng_state,
    statistics_to_log,
)
from lrlab.optim._base import AdaptiveOptimizer
from lrlab.optim._feed import discard_fed, feed

__all__ = ["LrlabCallback"]


class _LogInjector(transformers.TrainerCallback):
    """Runs first in ``on_log`` so that every reporting integration sees the statistics."""

    def __init__(self, owner: LrlabCallback) -> None:
        self.owner = owner

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.owner._add_statistics(state, logs)


class LrlabCallback(transformers.TrainerCallback):
    """Feeds lrlab optimizers what ``Trainer.train`` does not pass them; logs their statistics.

    Args:
        index_key: the batch entry with each example's training-set index (for methods with
            ``spec(name).needs_example_index``: TAPS, MOTAPS). Default ``"index"``.
        log_statistics: add ``effective_lr`` and ``statistics()`` to the Trainer's logs.
        prefix: the prefix of the logged names. Default ``"lrlab/"``.
    """

    def __init__(
        self, *, index_key: str = "index", log_statistics: bool = True, prefix: str = "lrlab/"
    ) -> None:
        if not isinstance(index_key, str) or not index_key:
            raise ValueError(f"index_key must be a non-empty string, got {index_key!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {prefix!r}")
        self.index_key = index_key
        self.log_statistics = bool(log_statistics)
        self.prefix = prefix
        self._optimizers: list[AdaptiveOptimizer] = []
        self._model: torch.nn.Module | None = None
        self._handles: list[Any] = []
        self._checking = False
        self._injected = False
        # this optimizer step's micro-batches
        self._losses: list[Tensor] = []
        self._indices: list[Tensor] = []
        self._inputs: list[tuple[tuple[Any, ...], dict[str, Any], RngState]] = []
        self._shares = False  # the losses are shares of the step's mean (num_items_in_batch)
        self._pending_rng: RngState | None = None  # where the current forward's RNG started

    # -- forward hooks ----------------------------------------------------------------------

    def _capturing(self, module: torch.nn.Module) -> bool:
        return module.training and torch.is_grad_enabled() and not self._checking

    def _before_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self.index_key not in kwargs:
            return None
        kwargs = dict(kwargs)
        indices = kwargs.pop(self.index_key)  # the model's forward does not take it
        if self._capturing(module):
            self._indices.append(batch_indices({self.index_key: indices}, self.index_key, ""))
        return args, kwargs

    def _after_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not self._capturing(module):
            return
        loss = loss_of(output)
        if loss is not None:
            self._losses.append(loss.detach())
        self._shares = kwargs.get("num_items_in_batch") is not None
        if needs_any(self._optimizers, "needs_closure") and self._pending_rng is not None:
            # the random state this forward started from was recorded by the pre-hook
            self._inputs.append((args, dict(kwargs), self._pending_rng))

    def _record_rng(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if self._capturing(module) and needs_any(self._optimizers, "needs_closure"):
            self._pending_rng = rng_state()

    def _forward_only(self) -> Callable[[], Tensor]:
        model = self._model
        assert model is not None
        window = list(self._inputs)

        def one_pass(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Tensor]:
            def compute() -> Tensor:
                self._checking = True
                try:
                    loss = loss_of(model(*args, **kwargs))
                finally:
                    self._checking = False
                if loss is None:
                    raise ValueError("LrlabCallback: the model returned no loss in the check pass")
                return loss

            return compute

        passes = [(one_pass(args, kwargs), state) for args, kwargs, state in window]
        combine = "sum" if self._shares else "mean"
        return lambda: check_pass(passes, [model], combine=combine)

    # -- Trainer events ---------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._optimizers = lrlab_optimizers([kwargs.get("optimizer")])
        if not self._optimizers:
            return
        if needs_any(self._optimizers, "needs_example_index") and args.remove_unused_columns:
            raise ValueError(
                "LrlabCallback: "
                + ", ".join(type(o).__name__ for o in self._optimizers)
                + " needs the training-set index of every example: give each example an "
                f"{self.index_key!r} entry and set TrainingArguments(remove_unused_columns="
                "False), or the Trainer drops it before the model sees the batch"
            )
        model = kwargs.get("model")
        if not isinstance(model, torch.nn.Module):
            raise ValueError("LrlabCallback: the Trainer passed no model to its callbacks")
        self._model = model
        self._remove_hooks()
        self._handles = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_pre_hook(self._record_rng, with_kwargs=True),
            model.register_forward_hook(self._after_forward, with_kwargs=True),
        ]
        if self.log_statistics:
            self._inject_logger()

    def _inject_logger(self) -> None:
        """Put a small on_log callback first in the Trainer's list (the reporting integrations
        come before user callbacks, so they would not see values added later)."""
        frame = inspect.currentframe()
        try:
            for _ in range(8):
                frame = frame.f_back if frame is not None else None
                if frame is None:
                    break
                handler = frame.f_locals.get("self")
                callbacks = getattr(handler, "callbacks", None)
                if isinstance(callbacks, list) and self in callbacks:
                    # once per Trainer (the callback may be reused by another Trainer)
                    if not any(
                        isinstance(callback, _LogInjector) and callback.owner is self
                        for callback in callbacks
                    ):
                        callbacks.insert(0, _LogInjector(self))
                    self._injected = True
                    return
            self._injected = False  # not found: add the values in this callback's own on_log
        finally:
            del frame

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._losses, self._indices, self._inputs = [], [], []
        for optimizer in self._optimizers:
            discard_fed(optimizer)  # left over from a step a GradScaler skipped

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._optimizers:
            return
        loss = None
        if self._losses:
            stacked = torch.stack([value.to(torch.float64) for value in self._losses])
            # data-parallel ranks must agree on the loss and see the global batch's indices
            loss = mean_over_ranks(stacked.sum() if self._shares else stacked.mean())
        indices = gather_over_ranks(torch.cat(self._indices)) if self._indices else None
        for optimizer in self._optimizers:
            if optimizer.needs_loss and loss is None:
                raise ValueError(
                    f"LrlabCallback: {type(optimizer).__name__} needs the loss, and the model "
                    "returned none (the callback reads output.loss of the training forward "
                    "passes; a label smoother or compute_loss_func computes it outside the model)"
                )
            if optimizer.needs_example_index and indices is None:
                raise ValueError(
                    f"LrlabCallback: {type(optimizer).__name__} needs example indices and the "
                    f"batch had no {self.index_key!r} entry"
                )
            forward_only = self._forward_only() if optimizer.needs_closure else None
            feed(optimizer, loss=loss, example_indices=indices, forward_only=forward_only)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._inputs = []
        if control.should_save:
            self._to_eval()  # the checkpoint holds the evaluation weights

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:
            self._to_eval()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not self._injected:
            self._add_statistics(state, logs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove_hooks()
        self._to_eval()

    # -- helpers ----------------------------------------------------------------------------

    def _add_statistics(self, state: Any, logs: Any) -> None:
        if not self.log_statistics or not self._optimizers or not isinstance(logs, dict):
            return
        if not any(key in logs for key in ("loss", "learning_rate", "grad_norm")):
            return  # an evaluation's metrics, not a training log
        values = statistics_to_log(self._optimizers, self.prefix)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def _to_eval(self) -> None:
        for optimizer in self._optimizers:
            if optimizer.has_eval_mode and getattr(optimizer, "training", False):
                optimizer.eval()  # type: ignore[attr-defined]

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
