"""The native CPU kernel layer (lrlab/optim/_native.py) itself: build, cache, eligibility, calls.

What every method's native kernels compute is checked in the conformance suite.
"""

from __future__ import annotations

import logging
import stat
import warnings
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


def _falls_back_silently(caplog: pytest.LogCaptureFixture) -> None:
    """The probe is unavailable, with no warning and one debug record saying why."""
    caplog.set_level(logging.DEBUG, logger="lrlab.optim._native")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default path may not warn on every machine
        assert not _probe().available()
        assert not _probe().available()  # asked again: no second build, no second record
    records = [r for r in caplog.records if "building the native kernels of core" in r.message]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG


def test_a_broken_compiler_falls_back_silently(
    fresh_libraries: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = tmp_path / "broken-c++"
    script.write_text("#!/bin/sh\necho 'fatal error: this compiler is broken' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CXX", str(script))
    _falls_back_silently(caplog)
    status = _native.native_status()["native:core.nonfinite_probe"]
    assert status.startswith("unavailable: RuntimeError") and "this compiler is broken" in status


@needs_compiler
def test_unwritable_cache_falls_back_silently(
    fresh_libraries: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("LRLAB_CACHE_DIR", str(blocker / "cache"))
    _falls_back_silently(caplog)


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


@needs_compiler
def test_the_default_construction_takes_the_native_kernels(fresh_libraries: Path) -> None:
    # fast by default: nothing set -> native; fused=False -> none (the foreach path)
    for kwargs, expected in (({}, True), ({"fused": False}, False)):
        for kernel in _native._KERNELS:
            kernel.used = False
        weight = torch.nn.Parameter(torch.randn(50))
        weight.grad = torch.randn(50)
        lo.create("prodigy", [weight], **kwargs).step()
        used = {k.qualified_name for k in _native._KERNELS if k.used}
        assert ("native:prodigy.prodigy_step" in used) is expected, (kwargs, used)


@needs_compiler
def test_mechanic_routes_by_its_own_fused_setting(fresh_libraries: Path) -> None:
    # the groups' "fused" is the base's (torch's AdamW sets it True): Mechanic's passes and its
    # non-finite guard follow mechanic_fused alone
    for kwargs, expected in (({}, True), ({"fused": False}, False)):
        for kernel in _native._KERNELS:
            kernel.used = False
        weight = torch.nn.Parameter(torch.randn(50))
        weight.grad = torch.randn(50)
        optimizer = lo.create("mechanic", [weight], base="adamw", lr=0.01, **kwargs)
        assert optimizer.param_groups[0]["fused"] is True  # the base's own setting
        optimizer.step()
        used = {k.qualified_name for k in _native._KERNELS if k.used}
        for name in ("native:mechanic.mechanic_move_recomputed", "native:core.nonfinite_probe"):
            assert (name in used) is expected, (kwargs, used)


@needs_compiler
def test_mechanic_reuses_its_scratch_buffer(fresh_libraries: Path) -> None:
    # x before the base step is kept in one buffer that lives from step to step: a fresh
    # full-size buffer per step costs page faults (the most expensive part of the step)
    weights = [torch.nn.Parameter(torch.randn(300)), torch.nn.Parameter(torch.randn(40))]
    optimizer = lo.create("mechanic", weights)
    addresses = set()
    for _ in range(3):
        for w in weights:
            w.grad = torch.randn_like(w)
        optimizer.step()
        (buffer,) = optimizer._scratch.values()
        assert buffer.numel() == 340
        addresses.add(buffer.data_ptr())
    assert len(addresses) == 1
    # not state: a copy starts without it and continues identically
    import copy

    clone = copy.deepcopy(optimizer)
    assert "_scratch" not in clone.__dict__
