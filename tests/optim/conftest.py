"""Fixtures shared by the optimizer tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def native_only(monkeypatch: pytest.MonkeyPatch):
    """fused=True with the native CPU kernels on and the compiled kernels made to fail, so that
    every pass on CPU float32/float64 tensors must be native; the kernels' "used" marks are
    cleared for this test. Returns :mod:`lrlab.optim._native`.

    The native kernels need a C++ compiler; a machine without one fails here (the fallback
    without a compiler is tested on its own in the conformance suite and test_native.py).
    """
    from lrlab.optim import _fused, _native

    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)
    # were a native kernel missing, even the small test tensors would reach a compiled one
    monkeypatch.setattr(_fused, "MIN_ELEMENTS", 1)

    def refuse(self, *args):
        raise AssertionError(f"compiled kernel {self.name} called where a native one should run")

    monkeypatch.setattr(_fused.FusedKernel, "__call__", refuse)
    for kernel in _native._KERNELS:
        monkeypatch.setattr(kernel, "used", False)
    probe = next(kernel for kernel in _native._KERNELS if kernel.name == "nonfinite_probe")
    assert probe.available(), f"the native kernels cannot be built: {_native.native_status()}"
    return _native
