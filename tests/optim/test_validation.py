"""Validation messages name the argument, the value and the allowed range."""

from __future__ import annotations

import math

import pytest
import torch

from lrlab.optim._validation import (
    check_betas,
    check_bool,
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_range,
)


def test_check_range_brackets() -> None:
    assert check_range("c", 1.0, 0.0, 1.0, "(]") == 1.0
    with pytest.raises(ValueError, match=r"^c must be in \(0, 1\], got 0$"):
        check_range("c", 0, 0.0, 1.0, "(]")
    with pytest.raises(ValueError, match=r"^beta must be in \[0, 1\), got 1\.0$"):
        check_range("beta", 1.0, 0.0, 1.0, "[)")
    with pytest.raises(ValueError, match=r"got nan"):
        check_range("x", math.nan, -math.inf, math.inf)


def test_check_rejects_non_numbers() -> None:
    with pytest.raises(ValueError, match="lr must be a real number, got True"):
        check_positive("lr", True)
    with pytest.raises(ValueError, match=r"lr must be a real number, got '0\.1'"):
        check_positive("lr", "0.1")
    assert check_positive("lr", torch.tensor(0.5)) == 0.5


def test_other_checks() -> None:
    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\), got inf"):
        check_positive("lr", math.inf)
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\), got -1"):
        check_nonnegative("weight_decay", -1)
    with pytest.raises(ValueError, match=r"betas must be a sequence of 2 numbers"):
        check_betas("betas", 0.9)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1"):
        check_betas("betas", (0.9, 1))
    with pytest.raises(ValueError, match=r"steps must be an integer, got 2\.0"):
        check_int("steps", 2.0, 1)
    with pytest.raises(ValueError, match=r"steps must be in \[1, inf\], got 0"):
        check_int("steps", 0, 1)
    with pytest.raises(ValueError, match="flag must be True or False, got 'yes'"):
        check_bool("flag", "yes")
    with pytest.raises(ValueError, match="mode must be one of 'a', 'b', got 'c'"):
        check_choice("mode", "c", ("a", "b"))
