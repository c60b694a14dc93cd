"""Every registered method under ``lightning.pytorch.Trainer`` with ``LrlabCallback`` and nothing
else changed: 32-bit fit with clipping, validation and a checkpoint, resumed bit for bit; the fp16
``MixedPrecision`` plugin with gradient accumulation; the loss, indices, forward-only check and
evaluation weights each method declares it needs (``spec()``), and the logged statistics."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision

import lrlab.optim as lo
from lrlab.integrations.lightning import LrlabCallback
from lrlab.optim._feed import find_lrlab_optimizer
from tests.integrations._models import IndexedRegression, build, flat_params, mlp

NAMES = lo.names()
BATCH = 8  # 32 examples: 4 batches per epoch


class Regression(pl.LightningModule):
    """A tiny regression; records what the optimizer and the hooks saw."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.net = mlp()
        self.method = name
        self.step_losses: list[torch.Tensor] = []  # training_step losses with autograd on
        self.step_indices: list[torch.Tensor] = []
        self.contexts: list[Any] = []  # what the optimizer's update received
        self.log_calls = 0
        self.backward_hooks = 0
        self.modes_in_validation: list[bool] = []
        self.modes_in_training: list[bool] = []

    def log(self, *args: Any, **kwargs: Any) -> None:
        if args and args[0] == "train_loss":
            self.log_calls += 1
        super().log(*args, **kwargs)

    def _mode(self) -> bool:
        return bool(getattr(find_lrlab_optimizer(self.optimizers()), "training", True))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
        if torch.is_grad_enabled():
            self.step_losses.append(loss.detach().float())
            self.step_indices.append(batch["index"])
            self.modes_in_training.append(self._mode())
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.modes_in_validation.append(self._mode())
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"]))

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.backward_hooks += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = build(self.method, self.parameters())
        update = optimizer._update

        def record(context: Any) -> None:
            self.contexts.append(context)
            update(context)

        optimizer._update = record  # type: ignore[method-assign]
        return optimizer


def _loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    data = IndexedRegression()
    return (
        torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False),
        torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False),
    )


def _fit(name: str, root: Path, *, ckpt_path: Path | None = None, **trainer_kwargs: Any):
    module = Regression(name)
    callbacks: list[pl.Callback] = [LrlabCallback()]
    checkpointing = trainer_kwargs.pop("checkpointing", False)
    if checkpointing:
        callbacks.append(
            ModelCheckpoint(
                dirpath=root, save_top_k=-1, filename="{epoch}", save_on_train_epoch_end=True
            )
        )
    options: dict[str, Any] = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": checkpointing,
        "num_sanity_val_steps": 1,
        "limit_val_batches": 1,
        "check_val_every_n_epoch": 2,
        "callbacks": callbacks,
    }
    options.update(trainer_kwargs)
    trainer = pl.Trainer(**options)
    trainer.fit(module, *_loaders(), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("name", NAMES)
def test_fit_with_clipping_and_checkpoint_resumes_bit_identically(
    name: str, tmp_path: Path
) -> None:
    spec = lo.spec(name)
    full, trainer = _fit(name, tmp_path, checkpointing=True, gradient_clip_val=0.5)
    assert trainer.global_step == 8
    first_epoch = tmp_path / "epoch=0.ckpt"
    resumed, _ = _fit(name, tmp_path / "resumed", ckpt_path=first_epoch, gradient_clip_val=0.5)
    assert torch.equal(flat_params(resumed.net), flat_params(full.net))
    assert torch.isfinite(flat_params(full.net)).all()

    # what the method needs arrived, without re-running the training hooks
    assert len(full.contexts) == 8
    assert full.backward_hooks == 8 and full.log_calls == 8
    if spec.needs_loss:
        for context, loss in zip(full.contexts, full.step_losses, strict=True):
            assert context.loss.item() == loss.item()
    if spec.needs_example_index:
        for context, indices in zip(full.contexts, full.step_indices, strict=True):
            assert torch.equal(context.example_indices, indices)
    # the statistics reached Lightning's logging
    logged = trainer.callback_metrics
    assert {f"lrlab/{key}" for key in lo.statistics(trainer.optimizers[0])} <= set(logged)

    # evaluation weights for validation, the checkpoint and after fit; training weights to train
    if spec.has_eval_mode:
        assert full.modes_in_validation and not any(full.modes_in_validation)
        assert all(full.modes_in_training)
        saved = torch.load(first_epoch, weights_only=False)
        assert saved["optimizer_states"][0]["param_groups"][0]["train_mode"] is False
        assert not trainer.optimizers[0].training


@pytest.mark.parametrize("name", NAMES)
def test_fp16_mixed_precision_plugin_with_accumulation(name: str, tmp_path: Path) -> None:
    spec = lo.spec(name)
    module, trainer = _fit(
        name,
        tmp_path,
        max_epochs=1,
        plugins=[MixedPrecision("16-mixed", device="cpu")],
        accumulate_grad_batches=2,
        gradient_clip_val=0.5,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    assert trainer.global_step == 2
    assert torch.isfinite(flat_params(module.net)).all()
    assert module.backward_hooks == 4 and module.log_calls == 4
    taken = list(module.contexts)  # a GradScaler skip would leave a step out
    assert taken, "every step was skipped"
    if spec.needs_loss:
        # the loss of a step is the mean of its micro-batch losses, scaler and 1/N undone
        pairs = torch.stack(module.step_losses).reshape(-1, 2).mean(dim=1)
        for context, expected in zip(taken, pairs[-len(taken) :], strict=True):
            assert context.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    if spec.needs_example_index:
        windows = torch.stack(module.step_indices).reshape(-1, 2 * BATCH)
        for context, expected in zip(taken, windows[-len(taken) :], strict=True):
            assert torch.equal(context.example_indices, expected)


def test_statistics_go_to_the_logger_every_log_every_n_steps(tmp_path: Path) -> None:
    name = NAMES[0]
    logger = CSVLogger(tmp_path, name="csv")
    _fit(name, tmp_path, max_epochs=1, logger=logger, log_every_n_steps=2)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("lrlab/effective_lr")]
    assert [int(row["step"]) for row in rows] == [1, 3]
    assert all(float(row["lrlab/effective_lr"]) >= 0.0 for row in rows)


def test_a_batch_without_indices_is_reported_clearly(tmp_path: Path) -> None:
    name = next(n for n in NAMES if lo.spec(n).needs_example_index)

    class NoIndex(Regression):
        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])

    regression = IndexedRegression()
    data = [{"x": x, "y": y} for x, y in zip(regression.x, regression.y, strict=True)]
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[LrlabCallback()],
    )
    with pytest.raises(ValueError, match="from the batch entry 'index'"):
        trainer.fit(NoIndex(name), torch.utils.data.DataLoader(data, batch_size=BATCH))


@pytest.mark.parametrize(
    "name", [n for n in NAMES if lo.spec(n).needs_loss and not lo.spec(n).needs_closure]
)
def test_manual_optimization_gets_the_loss(name: str) -> None:
    class Manual(Regression):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.automatic_optimization = False

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])
            self.step_losses.append(loss.detach())
            self.manual_backward(loss)
            optimizer.step()  # LightningOptimizer.step(): no loss argument

    module = Manual(name)
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[LrlabCallback()],
    )
    trainer.fit(module, _loaders()[0])
    assert [c.loss.item() for c in module.contexts] == [v.item() for v in module.step_losses]
