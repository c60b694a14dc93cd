"""Lightning callback: every lrlab optimizer trains under ``lightning.pytorch.Trainer``.

Usage (nothing else changes; ``configure_optimizers`` returns an lrlab optimizer)::

    from lrlab.integrations.lightning import LrlabCallback

    trainer = lightning.pytorch.Trainer(callbacks=[LrlabCallback()], ...)
    trainer.fit(module, train_loader, val_loader)

What the callback does, hook by hook (Lightning 2.x):

* ``on_train_batch_start``: remembers the batch (and the random-number state, for the
  forward-only check), forgets values fed for a step that a GradScaler skipped, and puts a
  Schedule-Free optimizer back in train mode before the step.
* ``on_before_backward``: feeds the loss (:func:`lrlab.optim.feed`). Lightning hands the hook
  the loss divided by ``accumulate_grad_batches`` and, under fp16 mixed precision, multiplied
  by the GradScaler's scale; both are undone, so a step's loss is the mean of its micro-batch
  losses in every precision. Also feeds the batch's ``"index"`` entry to methods that keep one
  value per training example, and, for a method that checks the loss again after moving
  (LOSSGRAD), a forward-only function that calls ``training_step`` on the remembered batch
  with logging silenced and without any Lightning hook (Lightning's closure would run the
  whole training step again, hooks and logging included). Under manual optimization the
  callback feeds the loss and indices of a single lrlab optimizer; with several optimizers, or
  for LOSSGRAD's check, call :func:`lrlab.optim.feed` / pass a closure in ``training_step``.
* ``on_validation_start`` (sanity check included): Schedule-Free optimizers switch to their
  evaluation weights; ``on_train_end`` leaves them there (the model after ``fit`` is the
  averaged one).
* ``on_save_checkpoint``: a checkpoint holds the evaluation weights of a Schedule-Free method
  and the optimizer in eval mode; training continues in train mode, and a run resumed from the
  checkpoint continues bit for bit like the uninterrupted one.
* ``on_train_batch_end``: ``effective_lr`` and ``statistics()`` go to ``pl_module.log_dict``
  (every logger Lightning drives, at its ``log_every_n_steps``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
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


def _clone(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((key, _clone(item)) for key, item in value.items())
    if isinstance(value, list):
        return [_clone(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_clone(item) for item in value)
    return value


@contextlib.contextmanager
def _logging_silenced(module: pl.LightningModule) -> Iterator[None]:
    """``self.log`` / ``self.log_dict`` do nothing inside (the check pass must not log)."""

    def ignore(*args: Any, **kwargs: Any) -> None:
        return None

    module.log = ignore  # type: ignore[method-assign]
    module.log_dict = ignore  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log
        del module.log_dict


class LrlabCallback(pl.Callback):
    """Feeds lrlab optimizers what ``Trainer.fit`` does not pass them; logs their statistics.

    Args:
        index_key: the entry of a dict batch holding each example's training-set index (for
            methods with ``spec(name).needs_example_index``: TAPS, MOTAPS). Default
            ``"index"``.
        log_statistics: log ``effective_lr`` and ``statistics()`` after every optimizer step
            through ``pl_module.log_dict`` (Lightning keeps its ``log_every_n_steps``).
        prefix: the prefix of the logged names. Default ``"lrlab/"``.

    Optimizers that are not lrlab's are left alone.
    """

    def __init__(
        self, *, index_key: str = "index", log_statistics: bool = True, prefix: str = "lrlab/"
    ) -> None:
        if not isinstance(index_key, str) or not index_key:
            raise ValueError(f"index_key must be a non-empty string, got {index_key!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {prefix!r}")
        super().__init__()
        self.index_key = index_key
        self.log_statistics = bool(log_statistics)
        self.prefix = prefix
        # the micro-batches of the current optimizer step: (batch, batch_idx, rng state)
        self._window: list[tuple[Any, int, RngState]] = []

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _optimizers(trainer: pl.Trainer) -> list[AdaptiveOptimizer]:
        return lrlab_optimizers(trainer.optimizers)

    @staticmethod
    def _first_of_step(trainer: pl.Trainer, batch_idx: int) -> bool:
        return batch_idx % trainer.accumulate_grad_batches == 0

    def _unscaled_loss(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> Tensor:
        value = loss.detach()
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            # MixedPrecision.pre_backward scaled the loss before this hook: undo it (the scale
            # is a power of two, so the division is exact)
            value = value / scaler.get_scale()
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            # the closure divided the training step's loss by the accumulation count
            value = value * trainer.accumulate_grad_batches
        return value

    def _forward_only(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> Callable[[], Tensor]:
        window = list(self._window)
        training_step = pl_module.training_step
        takes_batch_idx = len(inspect.signature(training_step).parameters) >= 2

        def one_pass(batch: Any, batch_idx: int) -> Callable[[], Tensor]:
            def compute() -> Tensor:
                arguments = (batch, batch_idx) if takes_batch_idx else (batch,)
                with _logging_silenced(pl_module), trainer.precision_plugin.train_step_context():
                    loss = loss_of(training_step(*arguments))
                if loss is None:
                    raise ValueError(
                        "LrlabCallback: training_step returned no loss in the forward-only check"
                    )
                return loss

            return compute

        passes = [(one_pass(batch, batch_idx), state) for batch, batch_idx, state in window]
        return lambda: check_pass(passes, [pl_module])

    # -- training ---------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        optimizers = self._optimizers(trainer)
        if not optimizers:
            return
        if self._first_of_step(trainer, batch_idx):
            self._window = []
            for optimizer in optimizers:
                discard_fed(optimizer)  # left over from a step a GradScaler skipped
        state = rng_state() if needs_any(optimizers, "needs_closure") else (torch.empty(0), None)
        self._window.append((batch, batch_idx, state))
        for optimizer in optimizers:
            if optimizer.has_eval_mode and not getattr(optimizer, "training", True):
                optimizer.train()  # type: ignore[attr-defined]

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        optimizers = self._optimizers(trainer)
        if not optimizers or not self._window:
            return
        automatic = pl_module.automatic_optimization
        if not automatic and len(optimizers) > 1:
            # manual optimization with several optimizers (a GAN): which one this backward
            # serves is the user's code's business; feed them with lrlab.optim.feed there
            return
        # data-parallel ranks must agree on the loss and see the global batch's indices
        value = mean_over_ranks(self._unscaled_loss(trainer, pl_module, loss))
        batch = self._window[-1][0]
        for optimizer in optimizers:
            indices = (
                gather_over_ranks(batch_indices(batch, self.index_key, "LrlabCallback"))
                if optimizer.needs_example_index
                else None
            )
            # under manual optimization training_step steps itself: it cannot be the check
            forward_only = (
                self._forward_only(trainer, pl_module)
                if optimizer.needs_closure and automatic
                else None
            )
            feed(optimizer, loss=value, example_indices=indices, forward_only=forward_only)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.log_statistics:
            return
        optimizers = self._optimizers(trainer)
        if optimizers:
            pl_module.log_dict(
                statistics_to_log(optimizers, self.prefix),
                on_step=True,
                on_epoch=False,
                prog_bar=False,
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._to_eval(trainer)

    # -- evaluation weights (Schedule-Free) -------------------------------------------------

    def _to_eval(self, trainer: pl.Trainer) -> None:
        for optimizer in self._optimizers(trainer):
            if optimizer.has_eval_mode and getattr(optimizer, "training", False):
                optimizer.eval()  # type: ignore[attr-defined]

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._to_eval(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        switching = [
            optimizer
            for optimizer in self._optimizers(trainer)
            if optimizer.has_eval_mode and getattr(optimizer, "training", False)
        ]
        if not switching:
            return
        # Lightning gathered the state before this hook: gather it again at the evaluation
        # weights (copies, since the weights change back below), then resume training
        for optimizer in switching:
            optimizer.eval()  # type: ignore[attr-defined]
        checkpoint["state_dict"] = _clone(trainer.strategy.lightning_module_state_dict())
        checkpoint["optimizer_states"] = [
            _clone(trainer.strategy.optimizer_state(optimizer)) for optimizer in trainer.optimizers
        ]
        for optimizer in switching:
            optimizer.train()  # type: ignore[attr-defined]
