"""Unsupported inputs are refused up front, before any state or parameter changes: sparse
gradients, complex and integer parameters, with an error naming the method and the parameter.
Zero-element tensors are handled. The native-kernel cache is private and verified (NOTE [a
private, verified kernel cache] in lrlab/optim/_native.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import lrlab.optim as lo
from lrlab.optim import _native
from tests.reliability._optim_cases import (
    build,
    child_environment,
    configurations,
    same,
    snapshot,
    step,
)

CASES = list(configurations())
IDS = [f"{n}-{p}" for n, p, _ in CASES]
# the methods that refuse sparse gradients, read from their declared capability
DENSE_ONLY = [case for case in CASES if not lo.spec(case[0]).cls.supports_sparse_gradients]


def _sparse_gradient() -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.randn(2, 3), (5, 3))


@pytest.mark.parametrize(
    ("name", "label", "kwargs"), DENSE_ONLY, ids=[f"{n}-{p}" for n, p, _ in DENSE_ONLY]
)
def test_sparse_gradients_are_refused_before_anything_changes(
    name: str, label: str, kwargs: dict[str, Any]
) -> None:
    params = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(5, 3))]
    optimizer = build(name, kwargs, params)
    step(optimizer, name, params, seed=1)
    before = snapshot(optimizer, params)
    cls = type(optimizer).__name__
    with pytest.raises(ValueError, match=rf"{cls}: parameter 1 has a sparse gradient"):
        step(optimizer, name, params, [torch.randn(4), _sparse_gradient()])
    assert same(before, snapshot(optimizer, params))


def test_sgd_takes_sparse_gradients_as_their_dense_equivalent() -> None:
    gradient = _sparse_gradient()
    results = []
    for grad in (gradient, gradient.to_dense()):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3))]
        optimizer = lo.create("sgd", params, lr=0.1, momentum=0.9)
        for _ in range(3):
            params[0].grad = grad.clone()
            optimizer.step()
        results.append(params[0].detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", lo.names())
@pytest.mark.parametrize(
    "bad",
    [torch.randn(3, dtype=torch.complex64), torch.arange(3), torch.zeros(3, dtype=torch.bool)],
)
def test_complex_and_integer_parameters_are_refused(name: str, bad: torch.Tensor) -> None:
    kwargs = lo.spec(name).sample_kwargs[0]
    good = torch.nn.Parameter(torch.randn(2))
    odd = torch.nn.Parameter(bad, requires_grad=bad.is_complex())
    with pytest.raises(ValueError, match=rf"parameter 1 is a {bad.dtype} tensor; .* takes real"):
        build(name, kwargs, [good, odd])
    optimizer = build(name, kwargs, [good])
    with pytest.raises(ValueError, match=rf"parameter 1 is a {bad.dtype} tensor"):
        optimizer.add_param_group({"params": [odd]})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize(("name", "label", "kwargs"), CASES, ids=IDS)
def test_zero_element_tensors_are_handled(name: str, label: str, kwargs: dict[str, Any]) -> None:
    """An empty tensor (a pruned layer, an empty embedding) steps without error: everything
    stays finite and the other parameters move (alera/salera/agadam divided by its size)."""
    params = [
        torch.nn.Parameter(torch.randn(6, 5)),
        torch.nn.Parameter(torch.zeros(0, 4)),
        torch.nn.Parameter(torch.randn(7)),
    ]
    start = [p.detach().clone() for p in params]
    optimizer = build(name, kwargs, params)
    for seed in (1, 2, 3):
        step(optimizer, name, params, seed=seed)
    assert optimizer.statistics()["nonfinite_steps"] == 0
    assert all(torch.isfinite(p).all() for p in params)
    assert params[1].shape == (0, 4)
    assert not torch.equal(params[0], start[0]) and not torch.equal(params[2], start[2])


# -- the native kernel cache ---------------------------------------------------------------------

needs_compiler = pytest.mark.skipif(
    _native._compiler() is None, reason="the native kernels need a C++ compiler"
)

_PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
  FILE* f = fopen(MARKER, "w");
  if (f) { fputs("executed", f); fclose(f); }
}
"""

_LOAD_IN_CHILD = """
import warnings
from lrlab.optim import _native
probe = next(k for k in _native._KERNELS if k.name == "nonfinite_probe")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print("available", probe.available())
print("warnings", [str(w.message) for w in caught])
"""


def _load_in_child(cache: Path) -> str:
    environment = child_environment()
    environment["LRLAB_CACHE_DIR"] = str(cache)
    environment.pop("LRLAB_DISABLE_NATIVE", None)
    environment.pop("LRLAB_DISABLE_COMPILE", None)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_CHILD],
        capture_output=True,
        text=True,
        env=environment,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_compiler
@pytest.mark.slow  # a child interpreter (crash isolation / a fresh build)
def test_a_planted_library_is_rebuilt_never_executed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert "available True" in _load_in_child(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (library,) = cache.glob("core-*.so")
    assert Path(str(library) + ".sha256").exists()
    marker = tmp_path / "executed"
    source = tmp_path / "planted.c"
    source.write_text(_PLANTED)
    compiler = _native._compiler()
    assert compiler is not None
    planted = tmp_path / "planted.so"
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            f'-DMARKER="{marker}"',
            "-x",
            "c",
            str(source),
            "-o",
            str(planted),
        ],
        check=True,
        capture_output=True,
    )
    # the attacker replaces the library (its recorded digest no longer matches)
    shutil.copyfile(planted, library)
    output = _load_in_child(cache)
    assert "available True" in output
    assert not marker.exists(), "the planted library was executed"
    assert library.read_bytes() != planted.read_bytes(), "the planted library was kept"
    # and with a forged digest file next to it, but a library that is not private to the user
    shutil.copyfile(planted, library)
    Path(str(library) + ".sha256").write_text(_native._digest(library) + "\n")
    library.chmod(0o666)
    output = _load_in_child(cache)
    assert "available True" in output and not marker.exists()


@needs_compiler
@pytest.mark.slow  # a child interpreter (crash isolation / a fresh build)
def test_a_cache_writable_by_others_is_refused_with_one_warning(tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o777)
    output = _load_in_child(cache)
    assert "available False" in output
    assert output.count("writable by group or others") == 1
    assert not list(cache.glob("*.so"))


def test_a_cache_owned_by_someone_else_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # POSIX ownership: the private cache's protection (lrlab's native kernels build on POSIX
    # only), so a platform without it fails here instead of silently skipping the check
    assert hasattr(os, "getuid"), "the native-kernel cache's ownership check needs POSIX"
    monkeypatch.setenv("LRLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_REFUSED_CACHES", {})
    (tmp_path / "cache").mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with (
        pytest.warns(RuntimeWarning, match="is owned by another user"),
        pytest.raises(_native.UnsafeCacheError),
    ):
        _native._private_cache_dir()
    # refused once, quietly afterwards
    with pytest.raises(_native.UnsafeCacheError):
        _native._private_cache_dir()


def test_fused_runs_without_native_kernels_from_a_refused_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o777)
    monkeypatch.setenv("LRLAB_CACHE_DIR", str(cache))
    monkeypatch.delenv("LRLAB_DISABLE_NATIVE", raising=False)
    monkeypatch.setattr(_native, "_REFUSED_CACHES", {})
    for family in list(_native._LIBRARIES):
        monkeypatch.setitem(_native._LIBRARIES, family, _native._Library(family))
    params = [torch.nn.Parameter(torch.randn(10))]
    optimizer = lo.create("dadapt-adam", params, fused=True)
    with pytest.warns(RuntimeWarning, match="writable by group or others"):
        step(optimizer, "dadapt-adam", params)
    assert torch.isfinite(params[0]).all()
    assert not list(cache.iterdir())
