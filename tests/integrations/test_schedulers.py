"""torch's schedulers on every registered method: ``lr`` in every param group, ``LambdaLR`` and
``OneCycleLR`` (cycling the momentum where the method has one, under torch's name)."""

from __future__ import annotations

import inspect

import pytest
import torch

import lrlab.optim as lo
from tests.integrations._models import build, flat_params, mlp

NAMES = lo.names()
ALIASED = [name for name in NAMES if getattr(lo.spec(name).cls, "torch_names", {})]


def _two_groups(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = mlp()
    spec = lo.spec(name)
    first, last = list(model.parameters())[:2], list(model.parameters())[2:]
    groups = [{"params": first}, {"params": last, **spec.group_kwargs}]
    return model, build(name, groups)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, steps: int = 5):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=generator)
    y = torch.randn(32, 1, generator=generator)

    def compute_loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    for step in range(steps):
        optimizer.zero_grad()
        loss = compute_loss()
        loss.backward()
        indices = torch.arange(8 * (step % 4), 8 * (step % 4) + 8)
        lo.feed(optimizer, loss=loss, example_indices=indices, forward_only=compute_loss)
        optimizer.step()
        scheduler.step()


def _has_momentum(name: str) -> bool:
    """The method has a momentum-style hyperparameter (under any name)."""
    spec = lo.spec(name)
    parameters = inspect.signature(spec.cls.__init__).parameters
    return bool({"momentum", "betas", "beta"} & set(parameters)) or spec.wraps_base


@pytest.mark.parametrize("name", NAMES)
def test_every_group_has_lr_and_lambda_lr_scales_it(name: str) -> None:
    model, optimizer = _two_groups(name)
    assert all("lr" in group for group in optimizer.param_groups)
    initial = [group["lr"] for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step + 1))
    _train(model, optimizer, scheduler)
    assert [group["lr"] for group in optimizer.param_groups] == [lr * 0.5**6 for lr in initial]
    assert torch.isfinite(flat_params(model)).all()


@pytest.mark.parametrize("name", NAMES)
def test_one_cycle_lr_runs_and_cycles_the_momentum(name: str) -> None:
    model, optimizer = _two_groups(name)
    cycle = _has_momentum(name)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=optimizer.param_groups[0]["lr"], total_steps=10, cycle_momentum=cycle
    )
    _train(model, optimizer, scheduler)
    assert torch.isfinite(flat_params(model)).all()
    if cycle:  # the momentum a scheduler writes is the one the update reads
        group = optimizer.param_groups[0]
        written = group["betas"][0] if "betas" in group else group["momentum"]
        assert written != pytest.approx(0.95)  # moved away from the cycle's start


@pytest.mark.parametrize("name", ALIASED)
def test_torch_name_and_paper_name_are_one_hyperparameter(name: str) -> None:
    names = lo.spec(name).cls.torch_names
    torch_name, paper_name = next(iter(names.items()))

    def run(**kwargs: float) -> torch.Tensor:
        model = mlp()
        optimizer = build(name, model.parameters(), **kwargs)
        _train(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))
        return flat_params(model)

    by_torch_name, by_paper_name = run(**{torch_name: 0.5}), run(**{paper_name: 0.5})
    assert torch.equal(by_torch_name, by_paper_name)
    assert not torch.equal(by_torch_name, run())  # and it is not the default
    with pytest.raises(ValueError, match=f"{torch_name} and {paper_name} are the same"):
        build(name, mlp().parameters(), **{torch_name: 0.5, paper_name: 0.6})
    # a scheduler writing the torch name changes what the update does
    model = mlp()
    optimizer = build(name, model.parameters())
    for group in optimizer.param_groups:
        group[torch_name] = 0.5
    _train(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))
    assert torch.equal(flat_params(model), by_torch_name)
    assert optimizer.param_groups[0][paper_name] == 0.5


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_taken_at_a_scheduled_lr_of_zero_loads(name: str) -> None:
    # get_linear_schedule_with_warmup starts at and decays to lr = 0: its checkpoints must load
    model, optimizer = _two_groups(name)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0)
    _train(model, optimizer, scheduler, steps=2)
    assert all(group["lr"] == 0.0 for group in optimizer.param_groups)
    state = optimizer.state_dict()
    _, fresh = _two_groups(name)
    fresh.load_state_dict(state)
    assert [group["lr"] for group in fresh.param_groups] == [0.0, 0.0]
    state["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be in"):  # a negative lr is still refused
        fresh.load_state_dict(state)
