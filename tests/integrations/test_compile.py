"""``torch.compile(optimizer.step)`` (the pattern PyTorch documents for its own optimizers)
never changes results: 30 float64 steps on a small MLP equal the eager run (rtol 1e-9), with no
error. A method that declares ``traceable_step`` is traced (with ``aot_eager`` here: inductor's
compile time would dominate the suite; ``tests/optim/test_compile.py`` runs inductor once and
checks the recompilations, which here the closure's own forward and backward would add to);
every other step runs eager, with no graph at all
(see NOTE [torch.compile and the step] in ``_base.py``)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import lrlab.optim as lo
from tests.integrations._models import build, flat_params, mlp

NAMES = lo.names()
STEPS = 30


def _run(name: str, compiled: bool) -> tuple[torch.Tensor, dict[str, float]]:
    model = mlp().double()
    optimizer = build(name, model.parameters())
    step = torch.compile(optimizer.step, backend="aot_eager") if compiled else optimizer.step
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, dtype=torch.float64, generator=generator)
    y = torch.randn(32, 1, dtype=torch.float64, generator=generator)
    for i in range(STEPS):
        rows = slice(8 * (i % 4), 8 * (i % 4) + 8)
        closure = lo.make_closure(
            optimizer, lambda rows=rows: torch.nn.functional.mse_loss(model(x[rows]), y[rows])
        )
        indices = torch.arange(rows.start, rows.stop)
        if lo.spec(name).needs_example_index:
            step(closure, example_indices=indices)
        else:
            step(closure)
    return flat_params(model), optimizer.statistics()


@pytest.mark.parametrize("name", NAMES)
def test_compiled_step_equals_eager(name: str) -> None:
    eager, eager_statistics = _run(name, compiled=False)
    torch._dynamo.reset()
    counters.clear()
    compiled, compiled_statistics = _run(name, compiled=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=0)
    assert compiled_statistics == pytest.approx(eager_statistics, rel=1e-9, abs=0)
    if lo.spec(name).traceable_step:
        assert counters["stats"]["unique_graphs"] > 0
    else:  # no graph of the step at all
        assert counters["stats"]["unique_graphs"] == 0
    assert counters["frames"]["total"] > 0  # dynamo did see the compiled calls
