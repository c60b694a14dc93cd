"""Native multi-tensor kernels: the ``fused=True`` step path on the CPU.

A compiled ``torch.compile`` kernel (:mod:`lrlab.optim._fused`) handles one tensor per call and
costs 40-80 us of Python and guard overhead per call, so on a model of many small tensors it
loses to the eager ``foreach`` path, and inductor emits a method's reductions as a second loop
over memory. On the CPU a method's ``fused=True`` path therefore first tries a *native* kernel:
a C++ function (``lrlab/optim/native/<family>.cpp``) that takes every tensor of one dtype in one
call, cuts them into blocks shared by torch's threads, and does the elementwise update and the
per-tensor sums in one loop (see ``native/driver.h``). One call per pass and step, whatever the
number of tensors.

* The sources ship with the package and are compiled on first use with the system C++ compiler
  (``$CXX``, else ``c++``/``g++``/``clang++``) into a per-user cache
  (``$LRLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/lrlab``, else ``~/.cache/lrlab``), keyed by the
  source, the compiler, the flags and the CPU, so a build is paid once per machine (~1 s per
  family) and never per step. Concurrent processes (sweep workers) build into temporary files and
  rename atomically.
* NOTE [a private, verified kernel cache]: loading a library runs its code, so the cache must be
  the user's own. The directory is created private (0700); one owned by another user or
  writable by group or others is refused: no native kernel is loaded from it (one warning) and
  ``fused=True`` takes the compiled or eager kernels. Each build writes the SHA-256 of the
  library next to it (``<library>.sha256``); before loading, the file is checked (owned by the
  user, not group/world-writable, the digest matches), and a library that fails is removed and
  rebuilt, never loaded.
* The arithmetic is the compiled kernels' (the same order of operations in the tensors' dtype;
  float32 sums run in float32 over runs of 1024 elements, then in double). Per-tensor sums are
  added block by block in a fixed order: results do not depend on the number of threads.
* Only plain, dense, contiguous float32/float64 CPU tensors take it. Everything else (CUDA,
  bfloat16, sharded tensor subclasses, ...) takes the compiled or eager path as before.
* These kernels are the default step path (``fused=None``) of every method that has them;
  ``fused=False`` or an explicit ``foreach`` turns them off.
* Without a compiler, or with ``LRLAB_DISABLE_NATIVE=1`` (or ``LRLAB_DISABLE_COMPILE=1``), every
  call falls through to those paths, silently (one ``logging.debug`` record per family, no
  warning); :func:`lrlab.optim.fused_status` says how each kernel runs.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

__all__ = ["NativeKernel", "last_array_scalar", "native_eligible", "native_status"]

_LOG = logging.getLogger(__name__)
_SOURCES = Path(__file__).with_name("native")
_FLAG_SETS = (
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp"],
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)
# IEEE arithmetic as torch's eager kernels do it: no reassociation, no contraction into fused
# multiply-adds (which round differently); sqrt without errno is the same value, only faster
_COMMON_FLAGS = ["-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno"]


def _disabled() -> bool:
    return any(
        os.environ.get(variable, "") not in ("", "0")
        for variable in ("LRLAB_DISABLE_NATIVE", "LRLAB_DISABLE_COMPILE")
    )


def _cache_dir() -> Path:
    if os.environ.get("LRLAB_CACHE_DIR"):
        return Path(os.environ["LRLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lrlab"


class UnsafeCacheError(RuntimeError):
    """The kernel cache directory is not private to this user (see NOTE [a private, verified
    kernel cache])."""


_REFUSED_CACHES: dict[str, str] = {}  # directory -> why it was refused (warned once each)


def _private_cache_dir() -> Path:
    """The cache directory, created private (0700); refused unless this user owns it and no
    one else may write to it."""
    directory = _cache_dir()
    if str(directory) in _REFUSED_CACHES:
        raise UnsafeCacheError(_REFUSED_CACHES[str(directory)])
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as error:
        # not a security refusal: reported like any other failed build
        raise RuntimeError(f"the kernel cache {directory} cannot be created: {error}") from None
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory"
    elif hasattr(os, "getuid") and info.st_uid != os.getuid():
        problem = f"is owned by another user (uid {info.st_uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    if problem is not None:
        reason = f"the kernel cache {directory} {problem}"
        _REFUSED_CACHES[str(directory)] = reason
        warnings.warn(
            f"lrlab: {reason}; no native kernels are loaded from it (fused=True uses the "
            "compiled or eager kernels). Make it private (chmod 700, owned by you) or set "
            "LRLAB_CACHE_DIR to a private directory.",
            RuntimeWarning,
            stacklevel=5,
        )
        raise UnsafeCacheError(reason)
    return directory


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_file(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _verified(library: Path) -> bool:
    """The library is this user's, not writable by others, and matches the digest recorded
    when it was built."""
    try:
        info = library.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return False
        return _digest_file(library).read_text().strip() == _digest(library)
    except OSError:
        return False


def _compiler() -> str | None:
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _cpu_identity() -> str:
    # -march=native code must not run on another CPU sharing the cache (a network home)
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


class _Library:
    """One family's compiled source, built on first use."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.failure: str | None = None
        self._handle: ctypes.CDLL | None = None
        self._lock = threading.Lock()

    def handle(self) -> ctypes.CDLL | None:
        if self._handle is not None or self.failure is not None:
            return self._handle
        with self._lock:
            if self._handle is None and self.failure is None:
                try:
                    self._handle = ctypes.CDLL(str(self._build()))
                except UnsafeCacheError as error:  # warned once for the directory
                    self.failure = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                except Exception as error:  # no compiler, read-only cache, broken toolchain
                    self.failure = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                    # not a warning: the default path takes these kernels where it can, and a
                    # machine without a compiler is not the user's mistake; fused_status() and
                    # this one debug record say why the other paths run
                    _LOG.debug(
                        "building the native kernels of %s failed (%s); the foreach path (or "
                        "with fused=True the compiled kernels) runs instead",
                        self.family,
                        self.failure,
                    )
        return self._handle

    def _build(self) -> Path:
        compiler = _compiler()
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX)")
        source = _SOURCES / f"{self.family}.cpp"
        text = source.read_bytes() + (_SOURCES / "driver.h").read_bytes()
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, check=False
        ).stdout
        errors = []
        cache = _private_cache_dir()
        for flags in _FLAG_SETS:
            key = hashlib.sha256(
                b"\0".join(
                    [text, version.encode(), " ".join(flags).encode(), _cpu_identity().encode()]
                )
            ).hexdigest()[:16]
            target = cache / f"{self.family}-{key}.so"
            if _verified(target):
                return target
            if target.exists() or target.is_symlink():
                # not what this user built (planted, replaced or damaged): never load it
                target.unlink()
            # build next to the target and rename: concurrent builders never see a partial file
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                partial = Path(scratch) / target.name
                result = subprocess.run(
                    [
                        compiler,
                        *flags,
                        *_COMMON_FLAGS,
                        f"-I{_SOURCES}",
                        str(source),
                        "-o",
                        str(partial),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if result.returncode == 0:
                    digest = Path(scratch) / (target.name + ".sha256")
                    digest.write_text(_digest(partial) + "\n")
                    os.replace(digest, _digest_file(target))
                    os.replace(partial, target)
                    if not _verified(target):  # another process renamed its build in between
                        raise RuntimeError(f"{target.name} changed while it was installed")
                    return target
                errors.append(result.stderr.strip().splitlines()[-1:] or ["failed"])
        raise RuntimeError(f"{compiler} could not build {source.name}: {errors[-1][0]}")


def _threads() -> int:
    # torch's intra-op thread count, as torch's own CPU kernels use
    return torch.get_num_threads()


_LIBRARIES: dict[str, _Library] = {}
_KERNELS: list[NativeKernel] = []


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_NATIVE_DTYPES = (torch.float32, torch.float64)


def native_eligible(*tensors: Tensor) -> bool:
    """True if a native kernel can take these tensors: plain, dense, contiguous CPU tensors of
    one dtype, float32 or float64 (a tensor subclass such as a sharded DTensor is not plain).
    Never while dynamo traces a step: a ctypes call through raw pointers cannot be traced (see
    NOTE [torch.compile and the step] in ``_base.py``)."""
    if torch.compiler.is_compiling():
        return False
    # called for every tensor of every step: cheap attribute reads only (t.device is not)
    dtype = tensors[0].dtype
    if dtype not in _NATIVE_DTYPES:
        return False
    for t in tensors:
        if (
            type(t) not in _PLAIN_TYPES
            or not t.is_cpu
            or t.dtype is not dtype
            or t.layout is not torch.strided
            or not t.is_contiguous()
        ):
            return False
    return True


ArrayLengths = Callable[[int, Sequence[float], Sequence[float]], Sequence[int]]
"""``(n, constants, tensor_constants_row) -> element count of each array of a tensor``."""


def _as_int64(values: Sequence[int]) -> array.array:
    return values if isinstance(values, array.array) else array.array("q", values)


def last_array_scalar(arrays: int) -> ArrayLengths:
    """``array_lengths`` of a kernel whose last array is one element (a 0-d per-tensor scalar)."""

    def lengths(n: int, constants: Sequence[float], row: Sequence[float]) -> tuple[int, ...]:
        return (n,) * (arrays - 1) + (1,)

    return lengths


class NativeKernel:
    """A multi-tensor kernel of one family's native library.

    ``kernel(rows, constants)`` runs the kernel on ``rows``, one tuple of equally long tensors
    per parameter (the arrays the kernel reads and writes, in its order), all of one dtype, and
    returns the per-tensor sums as a float64 tensor of shape ``(len(rows), sums)``; ``None`` if
    the native kernels are unavailable (the caller then takes its other path, nothing written).

    The kernel writes through raw pointers, so every buffer is checked before the call (per
    tensor, not per element): one dtype, on the CPU, contiguous, and exactly as many elements as
    the kernel will touch. That count is the first array's for every array, unless the kernel
    declares ``array_lengths(n, constants, tensor_constants_row)``, the element count of each of
    a tensor's arrays when its first array has ``n`` (Prodigy's sliced and broadcast ``x0``).
    A mismatch raises :class:`ValueError` instead of writing out of bounds.
    """

    def __init__(
        self,
        family: str,
        name: str,
        *,
        arrays: int,
        sums: int = 0,
        constants: int = 0,
        tensor_constants: int = 0,
        array_lengths: ArrayLengths | None = None,
    ) -> None:
        self.family, self.name = family, name
        self.arrays, self.sums, self.tensor_constants = arrays, sums, tensor_constants
        # the C++ reads exactly this many doubles from the constants pointer (its generated
        # struct): a shorter sequence would be read past its end
        self.constants = constants
        self.array_lengths = array_lengths
        self.used = False
        self._functions: dict[torch.dtype, object] = {}
        _LIBRARIES.setdefault(family, _Library(family))
        _KERNELS.append(self)

    @property
    def qualified_name(self) -> str:
        return f"native:{self.family}.{self.name}"

    def available(self) -> bool:
        """True if the kernel can run (builds the family's library on first call); never
        while dynamo traces (see :func:`native_eligible`)."""
        if torch.compiler.is_compiling():
            return False
        return not _disabled() and _LIBRARIES[self.family].handle() is not None

    def _function(self, dtype: torch.dtype) -> object:
        if dtype not in self._functions:
            handle = _LIBRARIES[self.family].handle()
            assert handle is not None
            suffix = "f32" if dtype == torch.float32 else "f64"
            function = getattr(handle, f"{self.name}_{suffix}")
            function.restype = None
            function.argtypes = [
                ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
            ]  # fmt: skip
            self._functions[dtype] = function
        return self._functions[dtype]

    def __call__(
        self,
        rows: Sequence[Sequence[Tensor]],
        constants: Sequence[float],
        tensor_constants: Sequence[Sequence[float]] | None = None,
    ) -> Tensor | None:
        if not rows or not self.available():
            return None
        if len(constants) != self.constants:
            raise ValueError(
                f"{self.qualified_name} takes {self.constants} constants, got {len(constants)}"
            )
        per_tensor = None
        if self.tensor_constants:
            if tensor_constants is None or len(tensor_constants) != len(rows):
                raise ValueError(f"{self.qualified_name} needs one row of constants per tensor")
            for row_constants in tensor_constants:
                if len(row_constants) != self.tensor_constants:
                    raise ValueError(
                        f"{self.qualified_name} takes {self.tensor_constants} constants per "
                        f"tensor, got {len(row_constants)}"
                    )
            per_tensor = array.array("d", [float(v) for row in tensor_constants for v in row])
        dtype = rows[0][0].dtype
        if dtype not in _NATIVE_DTYPES:
            raise ValueError(f"{self.qualified_name} takes float32 or float64 tensors, got {dtype}")
        if self.array_lengths is None:
            # the common case, once per tensor of every step: inline and cheap (the detailed
            # check below only runs to word the error)
            sizes = []
            arrays = self.arrays
            for index, row in enumerate(rows):
                n = row[0].numel()
                if len(row) != arrays:
                    self._check_row(index, row, dtype, constants, tensor_constants)
                for tensor in row:
                    if (
                        tensor.numel() != n
                        or tensor.dtype is not dtype
                        or not tensor.is_cpu
                        or not tensor.is_contiguous()
                    ):
                        self._check_row(index, row, dtype, constants, tensor_constants)
                sizes.append(n)
        else:
            sizes = [
                self._check_row(index, row, dtype, constants, tensor_constants)
                for index, row in enumerate(rows)
            ]
        return self._invoke(
            dtype,
            [t.data_ptr() for row in rows for t in row],
            sizes,
            constants,
            per_tensor,
            [tensor for row in rows for tensor in row],
        )

    def _check_row(
        self,
        index: int,
        row: Sequence[Tensor],
        dtype: torch.dtype,
        constants: Sequence[float],
        tensor_constants: Sequence[Sequence[float]] | None,
    ) -> int:
        """The element count the kernel uses for this tensor, after checking every buffer of
        the row against it (the kernel trusts these counts: a short buffer would be written
        past its end)."""
        if len(row) != self.arrays:
            raise ValueError(
                f"{self.qualified_name} takes {self.arrays} arrays per tensor, got {len(row)} "
                f"for tensor {index}"
            )
        n = row[0].numel()
        if self.array_lengths is None:
            lengths: Sequence[int] = (n,) * self.arrays
        else:
            lengths = self.array_lengths(
                n, constants, tensor_constants[index] if tensor_constants is not None else ()
            )
        for position, (tensor, length) in enumerate(zip(row, lengths, strict=True)):
            if (
                tensor.numel() != length
                or tensor.dtype is not dtype
                or not tensor.is_cpu
                or not tensor.is_contiguous()  # a sparse tensor raises here
            ):
                raise ValueError(
                    f"{self.qualified_name}: array {position} of tensor {index} must be a "
                    f"contiguous {dtype} CPU tensor of {length} elements, got "
                    f"{tensor.numel()} elements, {tensor.dtype}, {tensor.device}"
                    f"{'' if tensor.is_contiguous() else ', not contiguous'}"
                )
        return n

    def _invoke(
        self,
        dtype: torch.dtype,
        pointers: Sequence[int],
        sizes: Sequence[int],
        constants: Sequence[float],
        tensor_constants: Tensor | array.array | None,
        written: Sequence[Tensor],
    ) -> Tensor:
        if isinstance(tensor_constants, Tensor):
            if tensor_constants.dtype != torch.float64 or not tensor_constants.is_contiguous():
                raise ValueError("tensor_constants must be a contiguous float64 tensor")
            per_tensor: int | None = tensor_constants.data_ptr()
        elif tensor_constants is not None:
            per_tensor = tensor_constants.buffer_info()[0]
        else:
            per_tensor = None
        if self.tensor_constants and per_tensor is None:
            raise ValueError(f"{self.qualified_name} needs one row of constants per tensor")
        addresses = pointers if isinstance(pointers, array.array) else array.array("q", pointers)
        counts = sizes if isinstance(sizes, array.array) else array.array("q", sizes)
        values = array.array("d", [float(value) for value in constants])
        sums = torch.zeros((len(sizes), max(self.sums, 1)), dtype=torch.float64)
        self.used = True
        self._function(dtype)(  # type: ignore[operator]
            len(sizes),
            addresses.buffer_info()[0],
            counts.buffer_info()[0],
            values.buffer_info()[0] if values else None,
            per_tensor,
            sums.data_ptr(),
            _threads(),
        )
        if written:
            # the kernel wrote through raw pointers: bump autograd's version counters, so that a
            # tensor saved for backward before the step is reported as modified, as after
            # p.add_()
            increment_version(list(written))
        return sums


def native_status() -> dict[str, str]:
    """Every native kernel and how it runs: ``"native"``, ``"unavailable: <reason>"`` or
    ``"not used yet"``."""
    status = {}
    for kernel in _KERNELS:
        library = _LIBRARIES[kernel.family]
        if _disabled():
            status[kernel.qualified_name] = "unavailable: disabled by the environment"
        elif library.failure is not None:
            status[kernel.qualified_name] = f"unavailable: {library.failure}"
        elif not kernel.used:
            status[kernel.qualified_name] = "not used yet"
        else:
            status[kernel.qualified_name] = "native"
    return status
