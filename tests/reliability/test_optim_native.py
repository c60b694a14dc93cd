"""Every native kernel call checks the buffers it is handed (per tensor): a short, wrong-dtype,
non-contiguous or foreign buffer raises ValueError instead of being written out of bounds."""

from __future__ import annotations

import pytest
import torch

import lrlab.optim  # noqa: F401  (registers every method's kernels)
from lrlab.optim import _native


def _kernel(name: str) -> _native.NativeKernel:
    # looked up by the C++ function's name: the Python objects that hold kernels may move
    return next(k for k in _native._KERNELS if k.name == name)


_NATIVE_MOMO_AVERAGES = _kernel("momo_averages")
_NATIVE_MOMENTS = _kernel("prodigy_moments_momentum")

# plain SGD's pieces are not needed: the core guard kernel has one array and one sum
_PROBE = next(k for k in _native._KERNELS if k.name == "nonfinite_probe")
# a two-array kernel that writes its second array: gradagrad's first pass (g_prev = g)
_TWO = next(k for k in _native._KERNELS if k.name == "gradagrad_sums")


@pytest.fixture(autouse=True)
def _native_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)
    assert _TWO.available(), f"the native kernels cannot be built: {_native.native_status()}"


def test_a_short_buffer_is_refused_and_nothing_is_written() -> None:
    grad = torch.ones(1000)
    storage = torch.full((1000,), 7.0)
    previous = storage[:999]  # one element short; the canary sits just past it
    with pytest.raises(ValueError, match=r"array 1 of tensor 0 .* of 1000 elements, got 999"):
        _TWO([(grad, previous)], ())
    assert torch.all(storage == 7.0)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: torch.zeros(1000, dtype=torch.float64),  # another dtype
        lambda: torch.zeros(2000)[::2],  # not contiguous
        lambda: torch.zeros(1001),  # one too long is refused too: the count must match exactly
    ],
)
def test_wrong_buffers_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="gradagrad_sums"):
        _TWO([(torch.ones(1000), bad())], ())


def test_a_row_with_the_wrong_number_of_arrays_is_refused() -> None:
    with pytest.raises(ValueError, match="takes 2 arrays per tensor, got 1"):
        _TWO([(torch.ones(3),)], ())


def test_declared_lengths_are_checked_scalar_and_sliced_arrays() -> None:
    n = 10
    g, p, d = torch.ones(n), torch.ones(n), torch.zeros(n)
    # MoMo's last array is one element (gamma), not n
    with pytest.raises(ValueError, match=r"array 3 of tensor 0 .* of 1 elements, got 10"):
        _NATIVE_MOMO_AVERAGES([(g, p, d, torch.zeros(n))], (0.9, 0.1), [(1.0,)])
    _NATIVE_MOMO_AVERAGES([(g, p, d, torch.zeros(()))], (0.9, 0.1), [(1.0,)])
    # Prodigy's x0 and s hold every slice_p-th entry: ceil(10 / 3) = 4
    constants = (0.0, 1.0, 0.9, 0.1, 0.99, 0.01, 0.9, 1.0, 3.0)
    rows = [(g, p.clone(), torch.zeros(4), torch.zeros(3), torch.zeros(n), torch.zeros(n))]
    with pytest.raises(ValueError, match=r"array 3 of tensor 0 .* of 4 elements, got 3"):
        _NATIVE_MOMENTS(rows, constants, [(0.0,)])


def test_the_wrong_number_of_scalars_is_refused_before_the_call() -> None:
    # the C++ reads its generated struct (a fixed number of doubles) from the constants pointer:
    # a short sequence would be read past its end
    g, p, d = torch.ones(4), torch.ones(4), torch.zeros(4)
    before = d.clone()
    with pytest.raises(ValueError, match=r"momo_averages takes 2 constants, got 1"):
        _NATIVE_MOMO_AVERAGES([(g, p, d, torch.zeros(()))], (0.9,), [(1.0,)])
    with pytest.raises(ValueError, match=r"momo_averages takes 2 constants, got 3"):
        _NATIVE_MOMO_AVERAGES([(g, p, d, torch.zeros(()))], (0.9, 0.1, 0.0), [(1.0,)])
    assert torch.equal(d, before)


def test_every_native_kernel_declares_its_scalar_count() -> None:
    # each kernel's count is its schema's (the executor) or the core guard's (none)
    from lrlab.optim import _executor

    for kernel in _native._KERNELS:
        schemas = [
            schema
            for schema in _executor._SCHEMAS.get(kernel.family, [])
            if len(schema.scalars) == kernel.constants
        ]
        assert kernel.family == "core" or schemas, kernel.qualified_name
