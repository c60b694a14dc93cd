"""Compiled elementwise kernels: the ``fused=True`` step path.

An optimizer step is memory-bound. Written as eager torch kernels, a method that does Adam's work
plus a statistic reads and writes every full-size array once per kernel (25-45 passes over
memory for the Adam family, against 7 for ``torch.optim.Adam(fused=True)``). A method's
``fused=True`` path instead hands the per-tensor elementwise work of a step (moment updates, the
parameter update, and the per-tensor sums the method reduces) to a function compiled once by
``torch.compile``: inductor turns it into one or two loops over memory.

On the CPU, float32/float64 tensors first go to the *native* kernels of
:mod:`lrlab.optim._native` (C++, one call per pass for all tensors of a dtype); the compiled kernels
here serve the rest (CUDA, low precision) and CPU machines without a C++ compiler.

Design (see NOTE [fused kernels]):

* A kernel is a plain function of 1-d tensors and one 1-d tensor of scalar hyperparameters. Flat
  tensors keep the number of compiled graphs small (one per dtype, plus torch's specialisation of
  size-1 tensors) whatever the shapes of a model's parameters; scalars passed as a tensor rather
  than Python floats do not trigger a recompilation when ``d`` or the learning rate changes.
* Compilation happens on a kernel's first call and is cached for the process (and by inductor's
  on-disk cache across processes), never per step.
* Without a working compiler (no C++ toolchain, an unsupported device or dtype, ``torch.compile``
  unavailable) the same function runs eagerly: the numbers are the same up to float rounding,
  only slower. :func:`fused_status` says which kernels fell back and why; the environment
  variable ``LRLAB_DISABLE_COMPILE=1`` forces the eager fallback.
* Tensors that cannot be viewed flat (non-contiguous, sparse) take the optimizer's ``foreach``
  path; so do small tensors (below :data:`MIN_ELEMENTS`, where a compiled call's fixed overhead
  exceeds the eager kernels' cost) and any tensor of a group whose options the kernel does not
  cover.

The conformance suite checks the fused path of every method that offers one against its
for-loop path in float64, and checks the eager fallback the same way.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lrlab.optim._foreach import accumulation_dtype

__all__ = [
    "FusedKernel",
    "cached_scalars",
    "check_fused",
    "compiled_requested",
    "flat",
    "flat_eligible",
    "fused_status",
    "kernel",
    "native_requested",
    "scalars",
]

_KERNELS: list[FusedKernel] = []


class FusedKernel:
    """A function of tensors compiled on first use, with an eager fallback.

    Calling the kernel runs the compiled function; if compiling or running it raises (no
    compiler, unsupported backend), the kernel records why, warns once, and from then on runs
    the plain function.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.name = function.__qualname__
        self.fallback_reason: str | None = None
        self.used = False
        self._compiled: Callable[..., Any] | None = None
        self._lock = threading.Lock()

    @property
    def compiled(self) -> bool:
        """True while calls run the compiled function (it may not have been compiled yet)."""
        return self.fallback_reason is None and not _compile_disabled()

    def __call__(self, *args: Any) -> Any:
        self.used = True
        if not self.compiled:
            return self.function(*args)
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    try:
                        self._compiled = torch.compile(self.function, dynamic=True, fullgraph=True)
                    except Exception as error:  # torch.compile unavailable on this build
                        return self._fall_back(error, args)
        try:
            return self._compiled(*args)
        except Exception as error:  # compilation happens here, on first call per dtype
            return self._fall_back(error, args)

    def _fall_back(self, error: Exception, args: tuple[Any, ...]) -> Any:
        # inductor compiles before it runs anything, so no argument has been written yet
        self.fallback_reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        warnings.warn(
            f"lrlab: compiling the fused kernel {self.name} failed "
            f"({self.fallback_reason}); using the eager path (same numbers, slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return self.function(*args)


def kernel(function: Callable[..., Any]) -> FusedKernel:
    """Declare ``function`` as a fused kernel (compiled on first call, eager fallback)."""
    compiled = FusedKernel(function)
    _KERNELS.append(compiled)
    return compiled


def fused_status() -> dict[str, str]:
    """Every fused kernel and how it runs.

    Compiled kernels: ``"compiled"``, ``"eager: <reason>"`` or ``"not used yet"`` (a kernel
    compiles on its first call). Native CPU kernels (names ``"native:<family>.<kernel>"``, see
    :mod:`lrlab.optim._native`): ``"native"``, ``"unavailable: <reason>"`` or
    ``"not used yet"``.
    """
    from lrlab.optim._native import native_status

    status = native_status()
    for compiled in _KERNELS:
        if not compiled.used:
            status[compiled.name] = "not used yet"
        elif _compile_disabled():
            status[compiled.name] = "eager: LRLAB_DISABLE_COMPILE is set"
        elif compiled.fallback_reason is not None:
            status[compiled.name] = f"eager: {compiled.fallback_reason}"
        else:
            status[compiled.name] = "compiled"
    return status


def _compile_disabled() -> bool:
    return os.environ.get("LRLAB_DISABLE_COMPILE", "") not in ("", "0")


def check_fused(fused: bool | None, foreach: bool | None) -> bool | None:
    """Validate the ``fused`` argument and resolve the default.

    ``None`` (the default) asks for the fastest correct path that needs no opt-in: the native
    CPU kernels where they are available (see :func:`native_requested`), else the ``foreach``
    path. It resolves to ``False`` when ``foreach`` is set, so that ``foreach=False`` stays the
    reference for-loop and ``foreach=True`` the multi-tensor torch path. ``True`` also allows
    the compiled kernels (CUDA, low precision; the first step pays the compilation); ``False``
    never takes a fused kernel.
    """
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(f"fused must be True, False or None, got {fused!r}")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot be set together: choose one path")
    if fused is None and foreach is not None:
        return False
    return fused


def native_requested(group: Mapping[str, Any]) -> bool:
    """Whether ``group`` lets CPU float32/float64 tensors take the native kernels: ``fused`` is
    None (the default) or True. A group saved before the fused path existed has no ``fused``
    key and keeps its old path. While dynamo traces the step (``torch.compile`` of the step,
    NOTE [torch.compile and the step]) the answer is no: a ctypes call cannot be traced, and the
    ``foreach`` path it would replace traces into the step's graph."""
    if torch.compiler.is_compiling():
        return False
    return group.get("fused", False) is not False


def compiled_requested(group: Mapping[str, Any]) -> bool:
    """Whether ``group`` lets its CPU tensors take the compiled kernels: only an explicit
    ``fused=True`` (compiling costs seconds on the first step, which a CPU default must not;
    on a GPU, where no native kernel exists, :func:`lrlab.optim._executor.route` takes them by
    default)."""
    return group.get("fused", False) is True


MIN_ELEMENTS = 131_072
"""Tensors smaller than this take the optimizer's eager path even with ``fused=True``.

A call of a compiled function costs 40-80 us of Python and guard overhead on CPU, more than
the eager kernels of a small tensor. Measured on the 2-core development machine (50 tensors of
n elements, microseconds per tensor, eager vs fused): DAdaptAdam (one call per tensor) 68 vs 81
at n = 1,000, 161 vs 111 at 16,000, 289 vs 193 at 64,000, 1147 vs 650 at 256,000; Prodigy (two
calls) 65 vs 162, 131 vs 187, 326 vs 311 at 64,000, 1039 vs 991 at 256,000. SGD-like methods
with two calls per tensor (DoWG, WNGrad, L4-Mom, GradaGrad) were still slower fused at ~108k
elements. 2^17 keeps every method at least as fast as its eager path on the tensors it takes;
the tests lower it to exercise the kernels on small tensors."""


def flat_eligible(*tensors: Tensor) -> bool:
    """True if the kernel should take these tensors: every one a plain dense, contiguous,
    floating tensor, so that ``t.view(-1)`` is the whole of its data (a tensor subclass such as
    a sharded DTensor is not), and the largest at least :data:`MIN_ELEMENTS` long."""
    return max(t.numel() for t in tensors) >= MIN_ELEMENTS and all(
        type(t) in (Tensor, torch.nn.Parameter)
        and t.layout == torch.strided
        and t.is_contiguous()
        and t.is_floating_point()
        for t in tensors
    )


def flat(tensor: Tensor) -> Tensor:
    """``tensor`` as a 1-d alias that is not a view (same storage, same version counter).

    torch.compile guards a view argument on the rank and sizes of its base, so ``t.view(-1)``
    alone compiles one graph per parameter rank and exhausts dynamo's recompile limit (8) on
    models that mix ranks and dtypes; ``detach()`` drops the base and keeps writes visible.
    """
    return tensor.view(-1).detach()


def scalars(values: Sequence[float | Tensor], like: Tensor) -> Tensor:
    """The scalar hyperparameters of one kernel call, as one 1-d tensor on ``like``'s device.

    Low-precision parameters get float32 scalars (as torch's fused kernels compute in float32
    for them); float64 parameters get float64 ones, so the float64 conformance checks compare
    the same arithmetic. When a value is a 0-d tensor (a capturable step's device scalar, NOTE
    [device scalars] in ``_scalars.py``) the vector is stacked on the device: no value is read
    back to the host.
    """
    dtype = accumulation_dtype(like.dtype)
    if not any(isinstance(value, Tensor) for value in values):
        return torch.tensor(list(values), dtype=dtype, device=like.device)
    return torch.stack(
        [
            value.to(device=like.device, dtype=dtype)
            if isinstance(value, Tensor)
            else torch.full((), value, dtype=dtype, device=like.device)
            for value in values
        ]
    )


def cached_scalars(
    cache: dict[tuple[torch.device, torch.dtype], Tensor], values: Sequence[float], like: Tensor
) -> Tensor:
    """:func:`scalars` made once per (device, dtype) of ``cache``'s lifetime (the caller keeps
    one cache per set of ``values``, e.g. per group and step), not once per tensor."""
    key = (like.device, like.dtype)
    if key not in cache:
        cache[key] = scalars(values, like)
    return cache[key]
