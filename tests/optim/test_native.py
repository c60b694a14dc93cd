"""The native CPU kernel layer (lrlab/optim/_native.py) itself: build, cache, eligibility, calls.

What every method's native kernels compute is checked in the conformance suite.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import _native
from lrlab.optim._native import NativeKernel, native_eligible

needs_compiler = pytest.mark.skipif(
    _native._compiler() is None, reason="no C++ compiler on this machine"
)


@pytest.fixture
def fresh_libraries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Unbuilt libraries and an empty cache directory for this test."""
    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("LRLAB_DISABLE_COMPILE", raising=False)
    monkeypatch.setenv("LRLAB_CACHE_DIR", str(tmp_path / "cache"))
    for family in list(_native._LIBRARIES):
        monkeypatch.setitem(_native._LIBRARIES, family, _native._Library(family))
    return tmp_path / "cache"


def _probe() -> NativeKernel:
    return next(k for k in _native._KERNELS if k.name == "nonfinite_probe")


@needs_compiler
def test_builds_once_into_the_cache_and_reuses_it(fresh_libraries: Path) -> None:
    kernel = _probe()
    assert kernel.available()
    built = sorted(fresh_libraries.glob("core-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    # a new process (fresh library objects) finds the build and does not compile again
    _native._LIBRARIES["core"] = _native._Library("core")
    assert kernel.available()
    assert sorted(fresh_libraries.glob("core-*.so")) == built
    assert built[0].stat().st_mtime_ns == stamp
    assert not list(fresh_libraries.glob("tmp*")), "no scratch directory may be left behind"


@needs_compiler
def test_probe_finds_every_kind_of_non_finite_entry(fresh_libraries: Path) -> None:
    kernel = _probe()
    for dtype in (torch.float32, torch.float64):
        rows = [(torch.randn(100_000, dtype=dtype),), (torch.randn(7, dtype=dtype),)]
        sums = kernel(rows, ())
        assert sums is not None and sums.shape == (2, 1) and sums.dtype == torch.float64
        # the sums of squares (NOTE [non-finite policy]: squares that overflow count as bad)
        expected = torch.stack([(t.double() ** 2).sum() for (t,) in rows]).reshape(2, 1)
        torch.testing.assert_close(sums, expected, rtol=1e-5, atol=0)
        for bad in (float("nan"), float("inf"), -float("inf")):
            rows[0][0][54_321] = bad
            sums = kernel(rows, ())
            assert sums is not None
            assert not torch.isfinite(sums[0, 0]) and torch.isfinite(sums[1, 0])
            rows[0][0][54_321] = 0.0
        # a finite entry whose square overflows the dtype is caught too
        huge = torch.ones(1000, dtype=dtype)
        huge[3] = torch.finfo(dtype).max
        sums = kernel([(huge,)], ())
        assert sums is not None and not torch.isfinite(sums[0, 0].to(dtype))


@needs_compiler
def test_a_kernel_checks_its_arguments(fresh_libraries: Path) -> None:
    kernel = _probe()
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="takes 1 arrays per tensor"):
        kernel([(x, x)], ())
    assert kernel([], ()) is None  # nothing to do, nothing called


def test_eligibility() -> None:
    x = torch.zeros(3, 4)
    assert native_eligible(x, torch.zeros(3, 4), torch.nn.Parameter(torch.zeros(3, 4)))
    assert native_eligible(x.double())
    assert not native_eligible(x.t())  # not contiguous
    assert not native_eligible(x.bfloat16())  # dtype
    assert not native_eligible(x, x.double())  # one dtype per call
    assert not native_eligible(x.to_sparse())

    class Sub(torch.Tensor):
        pass

    assert not native_eligible(x.as_subclass(Sub))  # e.g. a sharded DTensor


def test_disabled_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("LRLAB_DISABLE_NATIVE", "LRLAB_DISABLE_COMPILE"):
        with monkeypatch.context() as patch:
            patch.setenv(variable, "1")
            assert not _probe().available()
            assert _native.native_status()["native:core.nonfinite_probe"] == (
                "unavailable: disabled by the environment"
            )


def test_a_broken_compiler_falls_back_with_a_warning(
    fresh_libraries: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "broken-c++"
    script.write_text("#!/bin/sh\necho 'fatal error: this compiler is broken' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CXX", str(script))
    with pytest.warns(RuntimeWarning, match="building the native kernels of core failed"):
        assert not _probe().available()
    status = _native.native_status()["native:core.nonfinite_probe"]
    assert status.startswith("unavailable: RuntimeError") and "this compiler is broken" in status


@needs_compiler
def test_unwritable_cache_falls_back_with_a_warning(
    fresh_libraries: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("LRLAB_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="building the native kernels of core failed"):
        assert not _probe().available()


@needs_compiler
def test_the_step_bumps_autograd_version_counters(fresh_libraries: Path) -> None:
    # a tensor saved for backward and then moved by a native step must be reported as modified,
    # as torch reports it after any in-place update
    spec = lo.spec("dadapt-adam")
    assert spec.supports_fused
    weight = torch.nn.Parameter(torch.randn(50))
    weight.grad = torch.randn(50)
    optimizer = lo.create("dadapt-adam", [weight], fused=True)
    loss = (weight * weight).sum()  # saves weight for backward
    optimizer.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_sources_ship_with_the_package() -> None:
    sources = Path(_native.__file__).with_name("native")
    for family in {kernel.family for kernel in _native._KERNELS}:
        assert (sources / f"{family}.cpp").is_file(), family
    assert (sources / "driver.h").is_file()
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"optim/native/*.cpp", "optim/native/*.h"' in pyproject  # package data
