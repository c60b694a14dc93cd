"""The registry: names, declared capabilities, construction and the unknown-name error."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import lrlab.optim as lo

FOUNDATION = ["sgd", "adam", "adamw", "clara-sgd", "clara-adam"]


def test_names_are_kebab_case_and_unique() -> None:
    names = lo.names()
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name), name
    assert set(FOUNDATION) <= set(names)


def test_every_exported_optimizer_class_is_registered() -> None:
    registered = {lo.spec(name).cls for name in lo.names()}
    for export in lo.__all__:
        value = getattr(lo, export)
        if (
            isinstance(value, type)
            and issubclass(value, torch.optim.Optimizer)
            and value is not lo.AdaptiveOptimizer
        ):
            assert value in registered, export


def test_spec_is_frozen_and_complete() -> None:
    spec = lo.spec("clara-adam")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.family = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.sample_kwargs[0]["lr"] = 1.0  # type: ignore[index]
    for field in (
        "family",
        "paper",
        "needs_loss",
        "needs_closure",
        "wraps_base",
        "has_eval_mode",
        "sample_kwargs",
        "invalid_kwargs",
    ):
        assert hasattr(spec, field)
    assert spec.family and spec.paper and spec.summary


def test_capabilities_are_read_from_the_class() -> None:
    for name in lo.names():
        spec = lo.spec(name)
        for flag in (
            "needs_loss",
            "needs_closure",
            "needs_example_index",
            "wraps_base",
            "has_eval_mode",
        ):
            assert getattr(spec, flag) == bool(getattr(spec.cls, flag, False)), (name, flag)


def test_create_by_name_and_by_class_name() -> None:
    params = [torch.zeros(2, requires_grad=True)]
    assert type(lo.create("clara-adam", params)) is lo.ClaraAdam
    assert type(lo.create("ClaraAdam", params)) is lo.ClaraAdam
    assert lo.spec("ClaraSGD").name == "clara-sgd"


def test_unknown_name_lists_the_closest_names() -> None:
    with pytest.raises(KeyError, match=r"unknown method 'clara_adam'; closest: clara-adam") as info:
        lo.create("clara_adam", [torch.zeros(1, requires_grad=True)])
    assert "Valid methods:" in str(info.value)
    with pytest.raises(lo.UnknownNameError):
        lo.spec("nope")


def test_duplicate_registration_is_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        lo.register("sgd", family="x", paper="x", summary="x")(type("Dup", (lo.SGD,), {}))
    with pytest.raises(ValueError, match="naming rule"):
        lo.register("Bad_Name", family="x", paper="x", summary="x")(type("Bad", (lo.SGD,), {}))
