"""Registry-driven optimizer configurations and helpers shared by the optimizer reliability
tests (``test_optim_*.py``). Every registered method is covered on each of its step paths, so a
method added to the registry is tested without editing these files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

import lrlab
import lrlab.optim as lo


def configurations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(method, path label, constructor kwargs)``: the default path of every registered
    method, ``foreach=False`` where it takes ``foreach`` and ``fused=True`` where it has one."""
    for name in lo.names():
        spec = lo.spec(name)
        kwargs = dict(spec.sample_kwargs[0])
        yield name, "default", kwargs
        if spec.supports_foreach:
            yield name, "foreach=False", {**kwargs, "foreach": False}
        if spec.supports_fused:
            yield name, "fused=True", {**kwargs, "fused": True}


def build(
    name: str, kwargs: Mapping[str, Any], params: Sequence[torch.Tensor] | list[dict[str, Any]]
) -> torch.optim.Optimizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lo.create(name, params, **kwargs)


def step(
    optimizer: torch.optim.Optimizer,
    name: str,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor] | None = None,
    *,
    seed: int = 0,
) -> None:
    """One step with the gradients ``grads`` (default: seeded random), giving the method the
    loss, closure and example indices it needs."""
    spec = lo.spec(name)
    generator = torch.Generator().manual_seed(seed)
    if grads is None:
        grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()

    def closure(backward: bool = True) -> torch.Tensor:
        return torch.tensor(1.0)

    arguments: dict[str, Any] = {}
    if spec.needs_closure:
        arguments["closure"] = closure
    elif spec.needs_loss:
        arguments["loss"] = torch.tensor(1.0)
    if spec.needs_example_index:
        arguments["example_indices"] = torch.tensor([0, 1])
    optimizer.step(**arguments)


def snapshot(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[Any]:
    """A deep, comparable copy of the parameters, the state and the groups."""

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, Mapping):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [copy(v) for v in value]
        return value

    groups = [{k: copy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    state = [copy(dict(optimizer.state.get(p, {}))) for p in params]
    return [[p.detach().clone() for p in params], state, groups]


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two snapshots (NaN equals NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(
                a.view(-1).view(torch.uint8) if a.numel() else a,
                b.view(-1).view(torch.uint8) if b.numel() else b,
            )
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


def child_environment() -> dict[str, str]:
    """The environment of a child Python that imports this very ``lrlab`` (the worktree's
    sources here, the installed package in CI)."""
    environment = dict(os.environ)
    source = str(Path(lrlab.__file__).resolve().parents[1])
    tests_root = str(Path(__file__).resolve().parents[2])  # for `import tests.reliability...`
    environment["PYTHONPATH"] = os.pathsep.join(
        [source, tests_root, *filter(None, [environment.get("PYTHONPATH")])]
    )
    return environment


def run_child(code: str, timeout: float = 240.0) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``code`` in a fresh interpreter (a crash there must not take pytest down) and
    collect the JSON lines it prints: ``(exit status, records, stderr tail)``."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_environment(),
        check=False,
    )
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, records, result.stderr[-2000:]


def stayed_finite(before: Any, after: Any) -> bool:
    """Every entry that was finite before is finite after (a setting may be inf on purpose,
    e.g. D-Adaptation's growth_rate)."""
    if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
        if not before.is_floating_point() or before.shape != after.shape:
            return True
        return bool((torch.isfinite(after) | ~torch.isfinite(before)).all())
    if isinstance(before, float) and isinstance(after, (float, int)):
        return math.isfinite(after) or not math.isfinite(before)
    if isinstance(before, dict) and isinstance(after, dict):
        return all(stayed_finite(before[k], after[k]) for k in before if k in after)
    if isinstance(before, list) and isinstance(after, list):
        return all(stayed_finite(a, b) for a, b in zip(before, after, strict=False))
    return True
