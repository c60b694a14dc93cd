"""Every registered method under ``transformers.Trainer`` (a tiny GPT-2 built from its config)
with ``LrlabCallback``: train with gradient accumulation and the Trainer's default linear
warm-up schedule (``get_linear_schedule_with_warmup``), resume from a checkpoint bit for bit,
and get the loss / indices / forward-only check / evaluation weights the method declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import lrlab.optim as lo
from lrlab.integrations.transformers import LrlabCallback
from tests.integrations._models import TokenData, build, flat_params, tiny_gpt2

NAMES = lo.names()
STEPS = 4  # 32 examples, batch 4, 2 micro-batches per step: 4 steps per epoch


def _args(root: Path, **overrides: Any) -> transformers.TrainingArguments:
    options: dict[str, Any] = {
        "output_dir": str(root),
        "max_steps": STEPS,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "save_steps": 2,
        "logging_steps": 1,
        "warmup_steps": 1,
        "max_grad_norm": 1.0,
        "report_to": "none",
        "remove_unused_columns": False,
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "data_seed": 0,
    }
    options.update(overrides)
    return transformers.TrainingArguments(**options)


def _train(name: str, root: Path, resume: Path | None = None, **overrides: Any):
    model = tiny_gpt2()
    optimizer = build(name, model.parameters())
    contexts: list[Any] = []
    update = optimizer._update

    def record(context: Any) -> None:
        contexts.append(context)
        update(context)

    optimizer._update = record  # type: ignore[method-assign]
    trainer = transformers.Trainer(
        model=model,
        args=_args(root, **overrides),
        train_dataset=TokenData(),
        optimizers=(optimizer, None),  # the Trainer adds its linear warm-up schedule
        callbacks=[LrlabCallback()],
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return model, trainer, optimizer, contexts


@pytest.mark.parametrize("name", NAMES)
def test_train_and_resume_bit_identically(name: str, tmp_path: Path) -> None:
    spec = lo.spec(name)
    model, trainer, optimizer, contexts = _train(name, tmp_path / "full")
    assert trainer.state.global_step == STEPS and len(contexts) == STEPS
    assert torch.isfinite(flat_params(model)).all()
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    resumed, _, _, _ = _train(name, tmp_path / "resumed", resume=tmp_path / "full" / "checkpoint-2")
    assert torch.equal(flat_params(resumed), flat_params(model))

    if spec.needs_loss:
        assert all(c.loss is not None and torch.isfinite(c.loss) for c in contexts)
    if spec.needs_example_index:
        # 2 micro-batches of 4 examples each, in the order the sampler drew them
        drawn = torch.cat([c.example_indices for c in contexts])
        assert drawn.numel() == STEPS * 8 and sorted(drawn.tolist()) == list(range(32))
    if spec.has_eval_mode:
        assert not optimizer.training  # evaluation weights after training
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == STEPS
    assert all(f"lrlab/{key}" in logged[-1] for key in lo.statistics(optimizer))


def test_the_step_loss_is_the_loss_the_trainer_back_propagates(tmp_path: Path) -> None:
    # with num_items_in_batch each micro-batch loss is its share of the step's token mean; the
    # step's loss is their sum, which is what the Trainer reports (and differentiates)
    name = next(n for n in NAMES if lo.spec(n).needs_loss)
    _, trainer, _, contexts = _train(name, tmp_path, max_steps=2, save_steps=10)
    reported = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert [c.loss.item() for c in contexts] == pytest.approx(reported, rel=1e-6)
    # and without accumulation it is the model's own mean loss on the batch
    _, trainer, _, contexts = _train(
        name, tmp_path / "one", max_steps=2, save_steps=10, gradient_accumulation_steps=1
    )
    reported = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert [c.loss.item() for c in contexts] == pytest.approx(reported, rel=1e-6)


def test_index_methods_need_remove_unused_columns_false(tmp_path: Path) -> None:
    name = next(n for n in NAMES if lo.spec(n).needs_example_index)
    with pytest.raises(ValueError, match=r"remove_unused_columns=False"):
        _train(name, tmp_path, remove_unused_columns=True)


def test_reporting_callbacks_before_it_see_the_statistics(tmp_path: Path) -> None:
    # the reporting integrations (TensorBoard, W&B, MLflow) come before user callbacks
    class Reporter(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.logs: list[dict[str, float]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
            self.logs.append(dict(logs))

    model = tiny_gpt2()
    reporter, callback = Reporter(), LrlabCallback()
    for run in range(2):  # the same callback object in a second Trainer
        trainer = transformers.Trainer(
            model=model,
            args=_args(tmp_path / str(run), max_steps=2, save_steps=10),
            train_dataset=TokenData(),
            optimizers=(build(NAMES[0], model.parameters()), None),
            callbacks=[reporter, callback],
        )
        trainer.train()
    training_logs = [logs for logs in reporter.logs if "loss" in logs]
    assert len(training_logs) == 4
    assert all("lrlab/effective_lr" in logs for logs in training_logs)
