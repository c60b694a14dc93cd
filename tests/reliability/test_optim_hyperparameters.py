"""One validation of hyperparameters at every entry point: the constructor, a param group that
overrides a setting, ``add_param_group`` and ``load_state_dict`` (NOTE [one validation for
hyperparameters] in lrlab/optim/_validation.py). Driven by the registry: every method, every
declared setting."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
import torch

import lrlab.optim as lo
from tests.reliability._optim_cases import build, same, snapshot, step

# values no hyperparameter accepts: NaN fails every range, a string every number, choice and bool
NEVER_VALID = (math.nan, "yes")


def _fresh(name: str) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]
    optimizer = build(name, lo.spec(name).sample_kwargs[0], params)
    return optimizer, params


def _declared_group_keys(name: str) -> list[str]:
    optimizer, _ = _fresh(name)
    rules = type(optimizer).hyperparameter_rules()
    if lo.spec(name).wraps_base:
        rules = {**rules, **type(optimizer.base).hyperparameter_rules()}
    return sorted(key for key in optimizer.param_groups[0] if key in rules)


CASES = [(name, key) for name in lo.names() for key in _declared_group_keys(name)]


def test_every_method_declares_its_settings() -> None:
    for name in lo.names():
        assert "lr" in _declared_group_keys(name) or lo.spec(name).lr_argument != "lr", name


@pytest.mark.parametrize(("name", "key"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_a_bad_setting_is_rejected_at_every_entry_point(name: str, key: str) -> None:
    spec = lo.spec(name)
    for value in NEVER_VALID:
        named = re.compile(rf"{re.escape(key)}\b.*\bgot\b")
        # (1) a param group overriding the setting
        with pytest.raises(ValueError, match=named):
            build(
                name,
                spec.sample_kwargs[0],
                [
                    {"params": [torch.nn.Parameter(torch.randn(3))]},
                    {"params": [torch.nn.Parameter(torch.randn(2))], key: value},
                ],
            )
        # (2) add_param_group: refused and nothing added
        optimizer, params = _fresh(name)
        step(optimizer, name, params)
        before = snapshot(optimizer, params)
        groups = len(optimizer.param_groups)
        with pytest.raises(ValueError, match=named):
            optimizer.add_param_group({"params": [torch.nn.Parameter(torch.randn(4))], key: value})
        assert len(optimizer.param_groups) == groups
        assert same(before, snapshot(optimizer, params))
        # (3) load_state_dict: refused and nothing changed
        saved = copy.deepcopy(optimizer.state_dict())
        saved["param_groups"][0][key] = value
        with pytest.raises(ValueError, match=named):
            optimizer.load_state_dict(saved)
        assert same(before, snapshot(optimizer, params))


def _with_lr(name: str) -> bool:
    optimizer, _ = _fresh(name)
    return "lr" in optimizer.param_groups[0]


@pytest.mark.parametrize("name", [n for n in lo.names() if _with_lr(n)])
def test_group_lr_nan_and_loaded_lr_minus_one_are_rejected(name: str) -> None:
    spec = lo.spec(name)
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError, match=r"lr must be in .*got nan"):
        build(name, spec.sample_kwargs[0], [{"params": [a]}, {"params": [b], "lr": math.nan}])
    optimizer, params = _fresh(name)
    step(optimizer, name, params)
    before = snapshot(optimizer, params)
    saved = copy.deepcopy(optimizer.state_dict())
    saved["param_groups"][0]["lr"] = -1
    with pytest.raises(ValueError, match=r"param group 0: lr must be in .*got -1"):
        optimizer.load_state_dict(saved)
    assert same(before, snapshot(optimizer, params))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("adam", {"maximize": "False"}, r"maximize must be True or False, got 'False'"),
        ("sgd", {"maximize": "False"}, r"maximize must be True or False, got 'False'"),
        ("adamw", {"amsgrad": 1}, r"amsgrad must be True or False, got 1"),
        *[
            (n, {"foreach": "yes"}, r"foreach must be True.* got 'yes'")
            for n in lo.names()
            if lo.spec(n).supports_foreach
        ],
        *[
            (n, {"fused": "yes"}, r"fused must be True, False or None, got 'yes'")
            for n in lo.names()
            if lo.spec(n).supports_fused
        ],
    ],
)
def test_switches_must_be_real_booleans(name: str, kwargs: dict[str, Any], match: str) -> None:
    params = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match=match):
        build(name, {**lo.spec(name).sample_kwargs[0], **kwargs}, params)


def test_the_group_message_is_the_constructor_message() -> None:
    """Where a setting has the same range in a group as in the constructor, the registry's
    constructor error is raised for a group override too, word for word."""
    checked = 0
    for name in lo.names():
        spec = lo.spec(name)
        optimizer, _ = _fresh(name)
        keys = set(optimizer.param_groups[0])
        for invalid in spec.invalid_kwargs:
            if not set(invalid.kwargs) <= keys or set(invalid.kwargs) & {"fused", "foreach"}:
                continue
            try:
                build(name, {**spec.sample_kwargs[0], **invalid.kwargs}, [torch.randn(2)])
            except ValueError as constructor_error:
                expected = str(constructor_error)
            group = {"params": [torch.nn.Parameter(torch.randn(2))], **invalid.kwargs}
            try:
                optimizer.add_param_group(group)
            except ValueError as group_error:
                if str(group_error) == expected:
                    checked += 1
    assert checked >= 40


def test_nesterov_needs_momentum_in_a_group_too() -> None:
    optimizer, _ = _fresh("sgd")
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        optimizer.add_param_group(
            {"params": [torch.nn.Parameter(torch.randn(2))], "nesterov": True}
        )


def test_a_loaded_example_table_of_the_wrong_length_is_rejected() -> None:
    optimizer, params = _fresh("taps")
    step(optimizer, "taps", params)
    saved = copy.deepcopy(optimizer.state_dict())
    saved["param_groups"][0]["example_alpha"] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"example_alpha must be a float64 tensor of shape \(256,\)"
    ):
        optimizer.load_state_dict(saved)
