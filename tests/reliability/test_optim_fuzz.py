"""Seeded fuzzing of the optimizers as a careless or hostile user would drive them: bad group
hyperparameters, huge finite gradients, unsupported inputs and mismatched checkpoints, on every
registered method and step path. Each case either is refused with a ValueError that leaves the
optimizer as it was, or runs and leaves everything finite. The counts (tried / held) are printed
(``pytest -s``) and every case must hold.

The checkpoint cases run in one child interpreter: a heap corruption there fails the test
instead of killing pytest.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch

import lrlab.optim as lo
from tests.reliability._optim_cases import (
    build,
    configurations,
    run_child,
    same,
    snapshot,
    stayed_finite,
    step,
)

SEED = 20261207
CONFIGURATIONS = list(configurations())
# values no hyperparameter accepts
BAD_VALUES: tuple[Any, ...] = (math.nan, "yes", "False", [1.0], b"1", object())


def _params(shapes: list[tuple[int, ...]], seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]


def _refused_unchanged(action: Callable[[], None], optimizer: Any, params: list[Any]) -> bool:
    before = snapshot(optimizer, params)
    try:
        action()
    except ValueError:
        return same(before, snapshot(optimizer, params))
    except Exception:
        return False
    return False


def _report(category: str, tried: int, held: int, failures: list[str]) -> None:
    print(f"\nfuzz {category}: tried {tried}, held {held}")
    assert held == tried, f"{tried - held} of {tried} did not hold, e.g. {failures[:5]}"


# -- group hyperparameters -------------------------------------------------------------------


def _group_case(rng: random.Random) -> tuple[str, bool]:
    name, label, kwargs = rng.choice(CONFIGURATIONS)
    params = _params([(4, 3), (5,)], rng.randrange(1000))
    optimizer = build(name, kwargs, params)
    keys = sorted(k for k in optimizer.defaults if k != "params")
    key, value = rng.choice(keys), rng.choice(BAD_VALUES)
    entry = rng.choice(("override", "add_param_group", "load_state_dict"))
    case = f"{name}/{label} {entry} {key}={value!r}"
    if entry == "override":
        extra = _params([(3,)], 7)
        try:
            build(name, kwargs, [{"params": params}, {"params": extra, key: value}])
        except ValueError:
            return case, True
        except Exception:
            return case, False
        return case, False
    step(optimizer, name, params, seed=1)
    if entry == "add_param_group":
        group = {"params": _params([(3,)], 8), key: value}
        return case, _refused_unchanged(lambda: optimizer.add_param_group(group), optimizer, params)
    saved = optimizer.state_dict()
    saved = {**saved, "param_groups": [dict(g) for g in saved["param_groups"]]}
    saved["param_groups"][0][key] = value
    return case, _refused_unchanged(lambda: optimizer.load_state_dict(saved), optimizer, params)


def test_fuzz_group_hyperparameters() -> None:
    rng = random.Random(SEED)
    results = [_group_case(rng) for _ in range(240)]
    failures = [case for case, held in results if not held]
    _report("group hyperparameters", len(results), len(results) - len(failures), failures)


def test_fuzz_negative_and_nan_learning_rates() -> None:
    """lr = -1 (silent ascent) and NaN are refused in a group and on load, for every method."""
    tried, failures = 0, []
    for name in lo.names():
        kwargs = lo.spec(name).sample_kwargs[0]
        params = _params([(4, 3)], 0)
        optimizer = build(name, kwargs, params)
        if "lr" not in optimizer.param_groups[0]:
            continue
        step(optimizer, name, params, seed=1)
        for value in (-1.0, math.nan):
            tried += 2
            group = {"params": _params([(3,)], 1), "lr": value}
            add = optimizer.add_param_group
            if not _refused_unchanged(lambda a=add, g=group: a(g), optimizer, params):
                failures.append(f"{name} group lr={value}")
            saved = optimizer.state_dict()
            saved = {**saved, "param_groups": [{**g, "lr": value} for g in saved["param_groups"]]}
            load = optimizer.load_state_dict
            if not _refused_unchanged(lambda f=load, d=saved: f(d), optimizer, params):
                failures.append(f"{name} loaded lr={value}")
    _report("lr -1 / nan", tried, tried - len(failures), failures)


# -- huge finite gradients -------------------------------------------------------------------


def _gradient_case(rng: random.Random) -> tuple[str, bool]:
    name, label, kwargs = rng.choice(CONFIGURATIONS)
    dtype = rng.choice((torch.float32, torch.float64))
    top = math.log10(torch.finfo(dtype).max)
    exponent = rng.uniform(top / 4, top)
    params = [
        p.detach().to(dtype).requires_grad_() for p in _params([(6, 5), (7,)], rng.randrange(1000))
    ]
    params = [torch.nn.Parameter(p.detach()) for p in params]
    optimizer = build(name, kwargs, params)
    case = f"{name}/{label} {dtype} |g| = 1e{exponent:.1f}"
    try:
        step(optimizer, name, params, seed=1)
        before = snapshot(optimizer, params)
        skipped_before = optimizer.statistics()["nonfinite_steps"]
        generator = torch.Generator().manual_seed(rng.randrange(1000))
        huge = [
            torch.randn(p.shape, generator=generator, dtype=dtype).sign() * 10.0**exponent
            for p in params
        ]
        step(optimizer, name, params, huge)
        skipped = optimizer.statistics()["nonfinite_steps"] > skipped_before
        after = snapshot(optimizer, params)
        if skipped and not same(before[:2], after[:2]):
            return case, False  # a skipped step must change no parameter and no state
        step(optimizer, name, params, seed=2)
    except Exception as error:
        return f"{case} raised {type(error).__name__}", False
    return case, stayed_finite(before, snapshot(optimizer, params))


def test_fuzz_huge_finite_gradients() -> None:
    rng = random.Random(SEED + 1)
    results = [_gradient_case(rng) for _ in range(200)]
    failures = [case for case, held in results if not held]
    _report("huge finite gradients", len(results), len(results) - len(failures), failures)


# -- unsupported inputs ----------------------------------------------------------------------


def _input_case(rng: random.Random) -> tuple[str, bool]:
    name, label, kwargs = rng.choice(CONFIGURATIONS)
    kind = rng.choice(("sparse", "complex", "integer", "empty"))
    case = f"{name}/{label} {kind}"
    params = _params([(5, 3), (4,)], rng.randrange(1000))
    if kind in ("complex", "integer"):
        odd = (
            torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
            if kind == "complex"
            else torch.nn.Parameter(torch.arange(3), requires_grad=False)
        )
        try:
            optimizer = build(name, kwargs, [*params, odd])
        except ValueError:
            return case, True
        except Exception:
            return case, False
        all_params = [*params, odd]
        before = snapshot(optimizer, all_params)
        try:
            odd.grad = torch.ones_like(odd) if kind == "complex" else None
            step(optimizer, name, params + ([odd] if kind == "complex" else []))
        except ValueError:
            return case, same(before, snapshot(optimizer, all_params))
        except Exception:
            return case, False
        return case, False  # complex and integer parameters are supported by no method
    if kind == "sparse":
        optimizer = build(name, kwargs, params)
        step(optimizer, name, params, seed=1)
        before = snapshot(optimizer, params)
        sparse = torch.sparse_coo_tensor(torch.tensor([[0, 3]]), torch.randn(2, 3), (5, 3))
        try:
            step(optimizer, name, params, [sparse, torch.randn(4)])
        except ValueError:
            return case, same(before, snapshot(optimizer, params))
        except Exception:
            return case, False
        return case, all(bool(torch.isfinite(p).all()) for p in params)
    params.insert(1, torch.nn.Parameter(torch.zeros(0, rng.randrange(1, 4))))
    try:
        optimizer = build(name, kwargs, params)
        for seed in (1, 2):
            step(optimizer, name, params, seed=seed)
        optimizer.statistics()
    except Exception as error:
        return f"{case} raised {type(error).__name__}", False
    return case, all(bool(torch.isfinite(p).all()) for p in params)


def test_fuzz_unsupported_inputs() -> None:
    rng = random.Random(SEED + 2)
    results = [_input_case(rng) for _ in range(160)]
    failures = [case for case, held in results if not held]
    _report("unsupported inputs", len(results), len(results) - len(failures), failures)


# -- mismatched checkpoints (in a child interpreter) -----------------------------------------

CHILD = r"""
import copy, json, random, warnings
import torch
from tests.reliability._optim_cases import build, configurations, same, snapshot, step

warnings.simplefilter("ignore")
torch.set_num_threads(1)
rng = random.Random(SEED)
configs = list(configurations())
MUTATIONS = (
    "swap", "short", "long", "reshape", "complex", "unknown-id", "group-count", "drop-param"
)


def mutate(saved, kind, rng):
    saved = copy.deepcopy(saved)
    tensors = [
        (index, key)
        for index, entries in saved["state"].items()
        for key, value in entries.items()
        if isinstance(value, torch.Tensor) and value.numel() > 1
    ]
    if kind == "unknown-id":
        saved["state"][99] = copy.deepcopy(next(iter(saved["state"].values()), {}))
        return saved
    if kind == "group-count":
        saved["param_groups"].append(copy.deepcopy(saved["param_groups"][0]))
        return saved
    if kind == "drop-param":
        saved["param_groups"][0]["params"].pop()
        return saved
    if not tensors:
        return None
    index, key = rng.choice(tensors)
    value = saved["state"][index][key]
    if kind == "short":
        saved["state"][index][key] = value.reshape(-1)[:-1].clone()
    elif kind == "long":
        saved["state"][index][key] = torch.cat([value.reshape(-1), value.reshape(-1)[:1]])
    elif kind == "reshape":
        saved["state"][index][key] = value.reshape(-1).clone()
        if tuple(value.shape) == (value.numel(),):
            saved["state"][index][key] = value.reshape(1, -1).clone()
    elif kind == "complex":
        saved["state"][index][key] = value.to(torch.complex64)
    return saved


for case in range(COUNT):
    name, label, kwargs = rng.choice(configs)
    kind = rng.choice(MUTATIONS)
    shapes = [(6, 5), (7,)]
    print(json.dumps({"started": [case, name, label, kind]}), flush=True)
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    optimizer = build(name, kwargs, params)
    step(optimizer, name, params, seed=1)
    step(optimizer, name, params, seed=2)
    saved = optimizer.state_dict()
    target_shapes = list(reversed(shapes)) if kind == "swap" else shapes
    has_tensors = any(
        isinstance(v, torch.Tensor) for entries in saved["state"].values() for v in entries.values()
    )
    if kind == "swap" and not has_tensors:
        print(json.dumps({"case": case, "skipped": True}), flush=True)
        continue
    mutated = saved if kind == "swap" else mutate(saved, kind, rng)
    if mutated is None:
        print(json.dumps({"case": case, "skipped": True}), flush=True)
        continue
    targets = [torch.nn.Parameter(torch.randn(s)) for s in target_shapes]
    target = build(name, kwargs, targets)
    step(target, name, targets, seed=3)
    before = snapshot(target, targets)
    try:
        target.load_state_dict(mutated)
        outcome = "accepted"
        step(target, name, targets, seed=4)
    except ValueError:
        outcome = "rejected" if same(before, snapshot(target, targets)) else "rejected-changed"
    except Exception as error:
        outcome = "raised " + type(error).__name__
    print(json.dumps({"case": case, "what": [name, label, kind], "outcome": outcome}), flush=True)
"""


@pytest.mark.slow  # a child interpreter (crash isolation / a fresh build)
def test_fuzz_mismatched_checkpoints() -> None:
    count = 160
    code = CHILD.replace("SEED", str(SEED + 3)).replace("COUNT", str(count))
    status, records, stderr = run_child(code, timeout=600)
    started = [r["started"] for r in records if "started" in r]
    finished = {r["case"]: r for r in records if "case" in r}
    tried = [r for r in finished.values() if not r.get("skipped")]
    failures = [f"{r['what']}: {r['outcome']}" for r in tried if r["outcome"] != "rejected"]
    if status != 0:
        # the case that was running crashed the interpreter; the rest never ran
        failures.append(f"child died (status {status}) in {started[-1]}: {stderr[-300:]}")
        unfinished = count - len(finished)
        print(f"\nfuzz checkpoints: {unfinished} cases not run after the crash")
        tried_count = len(tried) + 1
    else:
        tried_count = len(tried)
    print(json.dumps({"checkpoint_cases": tried_count}))
    _report("mismatched checkpoints", tried_count, tried_count - len(failures), failures)


@pytest.fixture(autouse=True)
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
