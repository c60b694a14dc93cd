"""Every registered method through accelerate: ``prepare``, ``lrlab.optim.feed`` before the
wrapper's ``step()``, ``statistics`` through the wrapper, and ``save_state`` / ``load_state``
continuing bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator

import lrlab.optim as lo
from tests.integrations._models import IndexedRegression, build, flat_params, mlp

NAMES = lo.names()
STEPS, SAVE_AFTER = 4, 2


def _batches() -> list[dict[str, torch.Tensor]]:
    loader = torch.utils.data.DataLoader(IndexedRegression(), batch_size=8, shuffle=False)
    return list(loader)


def _train(
    name: str, steps: range, *, save: Path | None = None, load: Path | None = None
) -> tuple[torch.nn.Module, Any]:
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(mlp(), build(name, mlp().parameters()))
    # the optimizer was built over another model's parameters: rebuild it over the prepared one
    model, optimizer = accelerator.prepare(model, build(name, model.parameters()))
    if load is not None:
        accelerator.load_state(str(load))
    batches = _batches()
    for step in steps:
        batch = batches[step % len(batches)]
        optimizer.zero_grad()

        def compute_loss(batch: dict[str, torch.Tensor] = batch) -> torch.Tensor:
            return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])

        loss = compute_loss()
        accelerator.backward(loss)
        # the same call for every method: what a method does not need is ignored
        lo.feed(optimizer, loss=loss, example_indices=batch["index"], forward_only=compute_loss)
        optimizer.step()
        if save is not None and step + 1 == SAVE_AFTER:
            accelerator.save_state(str(save))
    return model, optimizer


@pytest.mark.parametrize("name", NAMES)
def test_prepare_feed_and_resume_from_saved_state(name: str, tmp_path: Path) -> None:
    full, optimizer = _train(name, range(STEPS), save=tmp_path / "state")
    statistics = lo.statistics(optimizer)  # through AcceleratedOptimizer
    assert statistics["nonfinite_steps"] == 0.0
    assert torch.isfinite(flat_params(full)).all()
    resumed, resumed_optimizer = _train(name, range(SAVE_AFTER, STEPS), load=tmp_path / "state")
    assert torch.equal(flat_params(resumed), flat_params(full))
    assert lo.statistics(resumed_optimizer) == statistics
