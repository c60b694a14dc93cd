"""lrlab.optim.feed / statistics: values reach the next step through wrappers, are consumed
once, average over micro-batches, and never override explicit arguments."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import lrlab.optim as lo
from tests.integrations._models import build, flat_params, mlp


class Wrapper:
    """What accelerate / Lightning do: hold the optimizer as ``.optimizer``, step without args."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def step(self) -> None:
        self.optimizer.step()


def _first(capability: str) -> str:
    return next(name for name in lo.names() if getattr(lo.spec(name), capability))


def _recording(optimizer: Any) -> list[Any]:
    seen: list[Any] = []
    update = optimizer._update

    def record(context: Any) -> None:
        seen.append(context)
        update(context)

    optimizer._update = record
    return seen


def _backward(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=generator)
    loss = model(x).square().mean()
    loss.backward()
    return loss


def test_feed_reaches_the_optimizer_through_nested_wrappers() -> None:
    model = mlp()
    optimizer = build(_first("needs_loss"), model.parameters())
    seen = _recording(optimizer)
    loss = _backward(model)
    wrapped = Wrapper(Wrapper(optimizer))
    lo.feed(wrapped, loss=loss)
    wrapped.step()
    assert seen[0].loss.item() == loss.item()
    # consumed: the next step without a feed has no loss again
    with pytest.raises(ValueError, match="needs the loss"):
        wrapped.step()


def test_fed_loss_of_accumulated_micro_batches_is_their_mean() -> None:
    model = mlp()
    optimizer = build(_first("needs_loss"), model.parameters())
    seen = _recording(optimizer)
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.5)]
    _backward(model)
    for loss in losses:
        lo.feed(optimizer, loss=loss)
    optimizer.step()
    assert seen[0].loss.item() == pytest.approx(2.5, rel=0, abs=0)


def test_fed_indices_are_concatenated_and_explicit_arguments_win() -> None:
    model = mlp()
    optimizer = build(_first("needs_example_index"), model.parameters())
    seen = _recording(optimizer)
    _backward(model)
    lo.feed(optimizer, loss=0.5, example_indices=torch.tensor([0, 1]))
    lo.feed(optimizer, loss=0.7, example_indices=torch.tensor([5]))
    optimizer.step()
    assert seen[0].example_indices.tolist() == [0, 1, 5]
    _backward(model, seed=1)
    lo.feed(optimizer, loss=9.0, example_indices=torch.tensor([3]))
    optimizer.step(loss=0.25, example_indices=torch.tensor([7]))
    assert seen[1].loss.item() == 0.25
    assert seen[1].example_indices.tolist() == [7]


def test_fed_loss_wins_over_the_closure_return_value() -> None:
    # a framework's closure returns the last micro-batch loss divided by the accumulation count
    model = mlp()
    optimizer = build(_first("needs_loss"), model.parameters())
    seen = _recording(optimizer)

    def closure() -> torch.Tensor:
        loss = _backward(model)
        lo.feed(optimizer, loss=loss * 3)  # the hook feeds from inside the closure
        return loss

    optimizer.step(closure)
    expected = _backward(mlp()).item() * 3
    assert seen[0].loss.item() == pytest.approx(expected, rel=1e-6)


def test_discard_forgets_what_was_fed() -> None:
    model = mlp()
    optimizer = build(_first("needs_loss"), model.parameters())
    _backward(model)
    lo.feed(optimizer, loss=1.0)
    lo.discard_fed(optimizer)
    with pytest.raises(ValueError, match="needs the loss"):
        optimizer.step()


def test_values_a_method_does_not_need_are_ignored() -> None:
    name = next(n for n in lo.names() if not lo.spec(n).needs_loss)
    a, b = mlp(), mlp()
    opt_a, opt_b = build(name, a.parameters()), build(name, b.parameters())
    _backward(a)
    _backward(b)
    lo.feed(opt_a, loss=123.0, example_indices=torch.tensor([1, 2]))
    opt_a.step()
    opt_b.step()
    assert torch.equal(flat_params(a), flat_params(b))


def test_forward_only_stands_in_for_the_closure() -> None:
    name = _first("needs_closure")
    model = mlp()
    optimizer = build(name, model.parameters())
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    calls = []

    def forward_only() -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return model(x).square().mean()

    loss = model(x).square().mean()
    loss.backward()
    lo.feed(Wrapper(optimizer), loss=loss, forward_only=forward_only)
    optimizer.step()
    assert calls == [False]  # one forward-only pass, without a graph


def test_statistics_through_wrappers() -> None:
    model = mlp()
    optimizer = build("sgd", model.parameters())
    _backward(model)
    optimizer.step()
    assert lo.statistics(Wrapper(optimizer)) == optimizer.statistics()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": "1.0"}, TypeError, "loss must be a tensor or a number"),
        ({"loss": torch.ones(2)}, ValueError, r"single value, got a tensor of shape \(2,\)"),
        ({"example_indices": [1, 2]}, TypeError, "1-d integer tensor, got list"),
        ({"example_indices": torch.ones(2)}, ValueError, "1-d integer tensor, got 1-d"),
        ({"example_indices": torch.ones(2, 2, dtype=torch.long)}, ValueError, "got 2-d"),
        ({"forward_only": 3}, TypeError, "forward_only must be callable"),
    ],
)
def test_bad_values_are_rejected_and_nothing_is_stored(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = mlp()
    optimizer = build(_first("needs_loss"), model.parameters())
    with pytest.raises(error, match=match):
        lo.feed(optimizer, **kwargs)
    _backward(model)
    with pytest.raises(ValueError, match="needs the loss"):
        optimizer.step()


def test_feed_names_what_it_got_when_there_is_no_lrlab_optimizer() -> None:
    torch_sgd = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(TypeError, match="got Wrapper wrapping SGD"):
        lo.feed(Wrapper(torch_sgd), loss=1.0)
