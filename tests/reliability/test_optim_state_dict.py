"""load_state_dict checks every state tensor against its parameter before anything is assigned
(NOTE [checked checkpoints] in lrlab/optim/_base.py), on every method and step path.

The fused paths write through raw pointers, so on the old code a mismatched checkpoint could
corrupt the heap: the cases run in a child interpreter, where a crash fails the test instead of
killing pytest.
"""

from __future__ import annotations

import copy

import pytest
import torch

import lrlab.optim as lo
from tests.reliability._optim_cases import build, configurations, run_child, same, snapshot, step

CHILD = r"""
import copy, json, sys, warnings
import torch
from tests.reliability._optim_cases import build, configurations, same, snapshot, step

warnings.simplefilter("ignore")
torch.set_num_threads(1)


def attempt(optimizer, params, name, state_dict):
    before = snapshot(optimizer, params)
    try:
        optimizer.load_state_dict(state_dict)
    except ValueError as error:
        if not same(before, snapshot(optimizer, params)):
            return "rejected but changed: " + str(error)[:200]
        try:
            step(optimizer, name, params, seed=5)  # still usable
        except Exception as later:
            return f"rejected, then the step raised {type(later).__name__}"
        return "rejected"
    except Exception as error:
        return f"load raised {type(error).__name__}: {str(error)[:100]}"
    try:
        step(optimizer, name, params, seed=5)
    except Exception as error:
        return f"accepted, then the step raised {type(error).__name__}"
    return "accepted"


for name, label, kwargs in configurations():
    print(json.dumps({"started": [name, label]}), flush=True)
    shapes = [(6, 5), (7,)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    optimizer = build(name, kwargs, params)
    step(optimizer, name, params, seed=1)
    step(optimizer, name, params, seed=2)
    saved = optimizer.state_dict()
    tensors = [
        (key, value)
        for key, value in saved["state"].get(0, {}).items()
        if isinstance(value, torch.Tensor) and value.numel() > 1
    ]
    record = {"case": [name, label], "swapped": "no state", "short": "no state"}
    if tensors:
        swapped = [torch.nn.Parameter(torch.randn(s)) for s in reversed(shapes)]
        other = build(name, kwargs, swapped)
        step(other, name, swapped, seed=3)
        record["swapped"] = attempt(other, swapped, name, saved)
        short = copy.deepcopy(saved)
        key, value = tensors[0]
        short["state"][0][key] = value.reshape(-1)[:-1].clone()
        fresh = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        target = build(name, kwargs, fresh)
        step(target, name, fresh, seed=3)
        record["short"] = attempt(target, fresh, name, short)
        record["short_key"] = key
    print(json.dumps(record), flush=True)
"""


@pytest.mark.slow  # a child interpreter (crash isolation / a fresh build)
def test_mismatched_checkpoints_are_rejected_on_every_path() -> None:
    status, records, stderr = run_child(CHILD)
    started = [r["started"] for r in records if "started" in r]
    assert status == 0, f"the child died (status {status}) during {started[-1:]}: {stderr}"
    results = [r for r in records if "case" in r]
    assert len(results) == len(list(configurations()))
    failures = [
        (r["case"], kind, r[kind])
        for r in results
        for kind in ("swapped", "short")
        if r[kind] not in ("rejected", "no state")
    ]
    assert not failures
    # the cases must exercise the check: most methods keep per-parameter tensors
    assert sum(r["swapped"] == "rejected" for r in results) >= len(results) // 2


def test_the_error_names_the_parameter_the_key_and_both_shapes() -> None:
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7))]
    optimizer = build("adam", {"lr": 0.1}, params)
    step(optimizer, "adam", params)
    saved = optimizer.state_dict()
    swapped = [torch.nn.Parameter(torch.randn(7)), torch.nn.Parameter(torch.randn(6, 5))]
    other = build("adam", {"lr": 0.1}, swapped)
    with pytest.raises(
        ValueError, match=r"parameter 0, state 'exp_avg': saved shape \(6, 5\), expected \(7,\)"
    ):
        other.load_state_dict(saved)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "2 param groups"),
        (lambda sd: sd["param_groups"][0]["params"].pop(), "has 1 parameters"),
        (lambda sd: sd["state"].__setitem__(9, {}), "state for parameter id 9"),
        (lambda sd: sd["param_groups"][0]["params"].__setitem__(1, 0), "listed twice"),
        (lambda sd: sd.pop("state"), "no 'state' entry"),
    ],
)
def test_structural_mismatches_are_rejected(change, match) -> None:
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
    optimizer = build("clara-adam", {"lr": 0.1}, params)
    step(optimizer, "clara-adam", params)
    saved = optimizer.state_dict()
    change(saved)
    before = snapshot(optimizer, params)
    with pytest.raises(ValueError, match=match):
        optimizer.load_state_dict(saved)
    assert same(before, snapshot(optimizer, params))


def test_declared_layouts_accept_their_own_checkpoints() -> None:
    """Non-param-shaped state (per-row b, sliced x0, 0-d scalars) round-trips on every method."""
    for name, _, kwargs in configurations():
        for sample in lo.spec(name).sample_kwargs:
            sample = {**sample, **{k: v for k, v in kwargs.items() if k in ("foreach", "fused")}}
            params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
            copy_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
            optimizer = build(name, sample, params)
            other = build(name, sample, copy_params)
            step(optimizer, name, params)
            with torch.no_grad():
                for a, b in zip(copy_params, params, strict=True):
                    a.copy_(b)
            # a deep copy, as torch.save/torch.load give: a state dict shares the live tensors
            other.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            step(optimizer, name, params, seed=4)
            step(other, name, copy_params, seed=4)
            for a, b in zip(params, copy_params, strict=True):
                assert torch.equal(a, b), (name, sample)


def test_mechanic_checks_both_parts_before_loading_either() -> None:
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7))]
    kwargs = {"base": "adam", "base_kwargs": {"lr": 0.01}}
    optimizer = build("mechanic", kwargs, params)
    step(optimizer, "mechanic", params)
    saved = optimizer.state_dict()
    saved["state"][0]["ref"] = saved["state"][0]["ref"].reshape(-1)[:-1].clone()
    target_params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(7))]
    target = build("mechanic", kwargs, target_params)
    step(target, "mechanic", target_params, seed=7)
    before = snapshot(target.base, target_params)
    with pytest.raises(ValueError, match="state 'ref'"):
        target.load_state_dict(saved)
    assert same(before, snapshot(target.base, target_params))
