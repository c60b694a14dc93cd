"""Readers and writers of IDX, CIFAR pickle batches, LIBSVM and pixel-CSV files."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_svmlight_file

from lrlab.bench.problems._formats import (
    read_cifar_batch,
    read_idx,
    read_libsvm,
    read_pixel_csv,
    write_cifar_batch,
    write_idx,
    write_libsvm,
    write_pixel_csv,
)

# -- IDX ----------------------------------------------------------------------------------------


def test_idx_bytes_by_hand(tmp_path) -> None:
    # magic 00 00 08 (uint8) 02 (dims), sizes 2 and 3 big-endian, then the elements in C order
    array = np.array([[1, 2, 3], [4, 5, 255]], dtype=np.uint8)
    write_idx(tmp_path / "a-idx2-ubyte", array)
    expected = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255])
    assert (tmp_path / "a-idx2-ubyte").read_bytes() == expected
    # int32 big-endian: 0x0C, one dimension of size 1, value 258 = 00 00 01 02
    write_idx(tmp_path / "b", np.array([258], dtype=np.int32))
    assert (tmp_path / "b").read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 1, 2])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"x-idx3{suffix}"
    write_idx(path, array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_gzip_is_detected_by_content(tmp_path) -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    write_idx(tmp_path / "plain", array)
    (tmp_path / "no-suffix").write_bytes(gzip.compress((tmp_path / "plain").read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "no-suffix"), array)


def test_idx_errors(tmp_path) -> None:
    (tmp_path / "magic").write_bytes(bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "type").write_bytes(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(ValueError, match="unknown IDX element type 0x0a"):
        read_idx(tmp_path / "type")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3]))
    with pytest.raises(
        ValueError, match=r"shape \(2, 2\) \(4 bytes of data\) but the file holds 3"
    ):
        read_idx(tmp_path / "short")
    with pytest.raises(ValueError, match="IDX cannot store dtype int64"):
        write_idx(tmp_path / "bad", np.zeros(2, dtype=np.int64))


# -- CIFAR --------------------------------------------------------------------------------------


def test_cifar_round_trip_in_the_documented_layout(tmp_path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    labels = [3, 0, 9, 1, 1]
    write_cifar_batch(tmp_path / "data_batch_1", data, labels)
    # what the CIFAR page's own `unpickle` (pickle.load(encoding="bytes")) sees
    with open(tmp_path / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    assert set(raw) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert raw[b"labels"] == labels and raw[b"data"].dtype == np.uint8
    back, back_labels = read_cifar_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(back, data)
    assert back_labels.tolist() == labels and back_labels.dtype == np.int64


def test_cifar100_fine_labels_and_string_keys(tmp_path) -> None:
    data = np.zeros((2, 3072), dtype=np.uint8)
    write_cifar_batch(tmp_path / "train", data, [99, 5], label_key="fine_labels")
    assert read_cifar_batch(tmp_path / "train")[1].tolist() == [99, 5]
    assert read_cifar_batch(tmp_path / "train", "fine_labels")[1].tolist() == [99, 5]
    # files whose keys unpickle as str (Python 2 pickles read with latin1) are accepted too
    with open(tmp_path / "str_keys", "wb") as handle:
        pickle.dump({"data": data, "labels": [1, 2]}, handle, protocol=2)
    assert read_cifar_batch(tmp_path / "str_keys")[1].tolist() == [1, 2]


class _Exploit:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_reader_refuses_code_and_malformed_batches(tmp_path) -> None:
    with open(tmp_path / "evil", "wb") as handle:
        pickle.dump({b"data": _Exploit(), b"labels": []}, handle, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load (posix|nt)\.getcwd"):
        read_cifar_batch(tmp_path / "evil")
    with open(tmp_path / "no_labels", "wb") as handle:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8)}, handle, protocol=2)
    with pytest.raises(ValueError, match=r"needs the keys 'data' and 'labels' or 'fine_labels'"):
        read_cifar_batch(tmp_path / "no_labels")
    with open(tmp_path / "shape", "wb") as handle:
        pickle.dump({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, handle, protocol=2)
    with pytest.raises(ValueError, match=r"must be uint8 of shape \(n, 3072\)"):
        read_cifar_batch(tmp_path / "shape")
    (tmp_path / "text").write_text("hello")
    with pytest.raises(ValueError, match="not a CIFAR python batch"):
        read_cifar_batch(tmp_path / "text")


# -- LIBSVM -------------------------------------------------------------------------------------

_HANDWRITTEN = """\
# a comment line
3 1:0.5 3:-1.25 # trailing comment
1 qid:7 2:2
-1
2 1:1e-3 4:7
"""


def test_libsvm_reader_matches_scikit_learn(tmp_path) -> None:
    path = tmp_path / "small"
    path.write_text(_HANDWRITTEN)
    features, labels = read_libsvm(path)
    expected = np.array(
        [[0.5, 0, -1.25, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1e-3, 0, 0, 7]], dtype=np.float64
    )
    np.testing.assert_array_equal(features, expected)
    assert labels.tolist() == [3.0, 1.0, -1.0, 2.0]
    oracle_x, oracle_y = load_svmlight_file(str(path))
    np.testing.assert_array_equal(features, oracle_x.toarray())
    np.testing.assert_array_equal(labels, oracle_y)
    assert read_libsvm(path, n_features=6)[0].shape == (4, 6)
    with pytest.raises(ValueError, match="feature index 4 exceeds n_features=3"):
        read_libsvm(path, n_features=3)


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"])
def test_libsvm_round_trip(tmp_path, suffix) -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(20, 7)) * (rng.random((20, 7)) < 0.5)
    features[:, -1] = 1.0  # keep the width
    labels = rng.integers(1, 6, size=20).astype(np.float64)
    path = tmp_path / f"set{suffix}"
    write_libsvm(path, features, labels)
    back, back_labels = read_libsvm(path)
    np.testing.assert_array_equal(back, features)  # repr precision: exact
    np.testing.assert_array_equal(back_labels, labels)
    if not suffix:
        oracle_x, oracle_y = load_svmlight_file(str(path))
        np.testing.assert_array_equal(oracle_x.toarray(), features)
        np.testing.assert_array_equal(oracle_y, labels)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("1,2 1:3", r"bad:1: bad label '1,2'"),
        ("1 0:3", r"bad:1: bad feature '0:3'"),
        ("1 3", r"bad:1: bad feature '3'"),
        ("1 2:x", r"bad:1: bad feature '2:x'"),
    ],
)
def test_libsvm_errors_name_the_line(tmp_path, line, match) -> None:
    (tmp_path / "bad").write_text(line + "\n")
    with pytest.raises(ValueError, match=match):
        read_libsvm(tmp_path / "bad")


# -- pixel CSV ----------------------------------------------------------------------------------


def test_pixel_csv_round_trip_and_layout(tmp_path) -> None:
    pixels = np.array([[0, 255, 7], [1, 2, 3]], dtype=np.uint8)
    write_pixel_csv(tmp_path / "p.csv.gz", pixels, np.array([4, 9]))
    assert gzip.decompress((tmp_path / "p.csv.gz").read_bytes()) == b"0,255,7,4\n1,2,3,9\n"
    back, labels = read_pixel_csv(tmp_path / "p.csv.gz")
    np.testing.assert_array_equal(back, pixels)
    assert back.dtype == np.uint8 and labels.tolist() == [4, 9]
    (tmp_path / "bad.csv").write_text("0,256,1\n")
    with pytest.raises(ValueError, match=r"pixel values must be in 0..255"):
        read_pixel_csv(tmp_path / "bad.csv")
    (tmp_path / "text.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="not a pixel CSV"):
        read_pixel_csv(tmp_path / "text.csv")
