"""hubsets.sources.tensors against real bytes: np.save files, safetensors files written from the spec, truncations,
lying headers, pickles; and a hypothesis round trip against numpy."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubsets import errors
from hubsets.sources import tensors
from hubsets.sources.tensors import TensorError
from hubsets.testing import samples

CAP = 1 << 20
ST = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "int32": "I32"}


def raw_safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    """A .safetensors file from the spec: u64 little-endian header length, the JSON header, the data section."""
    raw = json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def refused(reason: str, call, label: str = "e.bin") -> TensorError:  # type: ignore[no-untyped-def]
    """`call()` raises a TensorError of `reason`, one line, naming the file, with a declared reason."""
    with pytest.raises(TensorError) as info:
        call()
    exc = info.value
    assert exc.reason == reason, (exc.reason, exc.detail)
    assert errors.known(exc.reason) and "\n" not in str(exc)
    if label:
        assert exc.detail.startswith(f"{label}:"), exc.detail
    return exc


def values(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "int32":
        return rng.integers(-(2**31), 2**31 - 1, size=shape, dtype=np.int32)
    return rng.standard_normal(shape).astype(np.float32)


def stored(dtype: str, array: np.ndarray) -> np.ndarray:
    """The little-endian array `Tensor.data` must hold for float32/int32 `array`."""
    if dtype == "bfloat16":
        return samples.bf16_bits(array)
    return array.astype(tensors.LITTLE_ENDIAN[dtype])


# --- round trips -------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(tensors.DTYPES), shape=st.lists(st.integers(1, 5), min_size=2, max_size=4),
       seed=st.integers(0, 2**16), index=st.integers(0, 4), order=st.sampled_from("<>F"))
def test_round_trip_matches_numpy(tmp_path: Path, dtype, shape, seed, index, order) -> None:
    shape = tuple(shape)
    index %= shape[0]
    expected = stored(dtype, values(dtype, shape, seed))
    label = f"m-{dtype}-{seed}.safetensors"
    path = tmp_path / label
    path.write_bytes(samples.safetensors_bytes({"a": (ST[dtype], list(shape), expected.tobytes())}))
    whole = tensors.read_safetensors(path, label, None, max_bytes=CAP)
    row = tensors.read_safetensors(path, label, "a", max_bytes=CAP, index=index)
    assert (whole.dtype, whole.shape, whole.data) == (dtype, shape, expected.tobytes())
    assert (row.shape, row.data) == (shape[1:], expected[index].tobytes())
    assert row.source == {"file": label, "tensor": "a", "stored_as": ST[dtype], "row": index}
    if dtype == "bfloat16":
        return  # .npy cannot hold bfloat16
    on_disk = expected.astype(expected.dtype.newbyteorder(">")) if order == ">" else expected
    label = f"m-{dtype}-{seed}-{ord(order)}.npy"
    np.save(tmp_path / label, np.asfortranarray(on_disk) if order == "F" else on_disk)
    whole = tensors.read_npy(tmp_path / label, label, max_bytes=CAP)
    row = tensors.read_npy_row(tmp_path / label, label, index, max_bytes=CAP)
    assert (whole.dtype, whole.shape, whole.data) == (dtype, shape, expected.tobytes())
    assert (row.dtype, row.shape, row.data) == (dtype, shape[1:], expected[index].tobytes())
    assert row.source["stored_as"] == on_disk.dtype.str and row.source["row"] == index


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(tensors.DTYPES), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_inline_lists_match_numpy(dtype, shape, seed) -> None:
    array = values(dtype, tuple(shape), seed)
    got = tensors.inline(array.tolist(), dtype, max_bytes=CAP)
    cast = array if dtype in ("int32", "bfloat16") else array.astype(tensors.LITTLE_ENDIAN[dtype])
    assert (got.dtype, got.shape, got.data) == (dtype, tuple(shape), stored(dtype, cast).tobytes())


def test_bf16_rounds_to_nearest_even_and_keeps_nan() -> None:
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, np.nan], dtype=np.float32)
    assert tensors.bf16_from_float(x).tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x7F80, 0x7FC0]


# --- hostile .npy files ----------------------------------------------------------------------------------

def npy(tmp_path: Path, array: np.ndarray, name: str = "e.bin") -> Path:
    with open(tmp_path / name, "wb") as f:
        np.save(f, array, allow_pickle=True)
    return tmp_path / name


def npy_bytes(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy file with `header` (the dict literal) as written, padded as the format says."""
    text = header.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + data


def test_npy_header_lying_about_its_shape_or_truncated(tmp_path: Path) -> None:
    path = npy(tmp_path, np.ones((4, 8), "<f4"))
    path.write_bytes(path.read_bytes()[:-1])
    assert refused("bad_embedding", lambda: tensors.read_npy(path, "e.bin", max_bytes=CAP)).detail == (
        "e.bin: the header announces [4, 8] (128 bytes of data) but the file holds 127 (a truncated download?)")
    refused("bad_embedding", lambda: tensors.read_npy_row(path, "e.bin", 3, max_bytes=CAP))
    data = np.ones((4, 8), "<f4").tobytes()
    for shape in ("(5, 8)", "(1099511627776, 1099511627776)", "(9223372036854775807, 4)", "(4, 8, 3037000500)"):
        path.write_bytes(npy_bytes(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}", data))
        assert "truncated" in refused("bad_embedding", lambda: tensors.read_npy(path, "e.bin", max_bytes=2**70)
                                      ).detail
    for junk in (b"\x93NUMPY\x01\x00garbage", b"", b"PK\x03\x04" + bytes(60),
                 npy_bytes("{'descr': '<f4', 'fortran_order': False}", data),
                 npy_bytes("__import__('os').system('true')", data)):
        path.write_bytes(junk)
        refused("bad_embedding", lambda: tensors.read_npy(path, "e.bin", max_bytes=CAP))


def test_npy_shape_that_overflows_int64_is_refused_not_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "e.bin"
    path.write_bytes(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4), }"))
    assert tensors.npy_header(path, "e.bin")[0] == (0, 2**62, 4)  # zero rows: no data is announced
    refused("embedding_row_out_of_range", lambda: tensors.read_npy_row(path, "e.bin", 0, max_bytes=CAP))
    path.write_bytes(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 0), }"))
    refused("bad_embedding", lambda: tensors.read_npy_row(path, "e.bin", 0, max_bytes=CAP))  # numpy: too big
    path.write_bytes(npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (0, 4), }"))
    refused("bad_shape", lambda: tensors.read_npy(path, "e.bin", max_bytes=CAP))


class Planted:
    """Unpickling it writes a file: a pickled .npy must never get that far."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.where, "pwned"))


def test_pickled_object_and_structured_npy_are_never_loaded(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    path = npy(tmp_path, np.array([Planted(planted), 1], dtype=object))
    assert pickle.dumps(Planted(planted))  # a real pickle payload sits in the file
    for call in (lambda: tensors.read_npy(path, "e.bin", max_bytes=CAP),
                 lambda: tensors.read_npy_row(path, "e.bin", 0, max_bytes=CAP)):
        refused("wrong_dtype", call)
    assert not planted.exists()
    path = npy(tmp_path, np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    refused("wrong_dtype", lambda: tensors.read_npy(path, "e.bin", max_bytes=CAP))
    for dtype in ("<f8", "<i8", "u1", "?", "<c8"):
        path = npy(tmp_path, np.zeros((2, 3), dtype=dtype))
        refused("wrong_dtype", lambda path=path: tensors.read_npy(path, "e.bin", max_bytes=CAP))


def test_npy_rows_caps_and_values(tmp_path: Path) -> None:
    path = npy(tmp_path, np.ones((3, 4), "<f4"))
    refused("embedding_row_out_of_range", lambda: tensors.read_npy_row(path, "e.bin", 3, max_bytes=CAP))
    refused("embedding_row_out_of_range", lambda: tensors.read_npy_row(path, "e.bin", -1, max_bytes=CAP))
    refused("too_large", lambda: tensors.read_npy(path, "e.bin", max_bytes=47))
    assert tensors.read_npy(path, "e.bin", max_bytes=48).shape == (3, 4)
    refused("too_large", lambda: tensors.read_npy_row(path, "e.bin", 0, max_bytes=15))
    path = npy(tmp_path, np.ones(4, "<f4"))
    refused("bad_shape", lambda: tensors.read_npy_row(path, "e.bin", 0, max_bytes=CAP))
    for bad in (np.nan, np.inf, -np.inf):
        for dtype in ("<f2", ">f4"):
            path = npy(tmp_path, np.array([[1, bad], [2, 3]], dtype=dtype))
            refused("non_finite", lambda path=path: tensors.read_npy(path, "e.bin", max_bytes=CAP))
            row = tensors.read_npy_row(path, "e.bin", 1, max_bytes=CAP)
            assert row.data == np.array([2, 3], dtype=tensors.LITTLE_ENDIAN[row.dtype]).tobytes()


def test_npy_matrix_cache_is_bounded_and_sees_each_file(tmp_path: Path) -> None:
    cache = tensors.NpyMatrices(size=2)
    for i in range(5):
        path = npy(tmp_path, np.full((2, 3), i, "<i4"), f"m{i}.npy")
        assert tensors.read_npy_row(path, path.name, 1, max_bytes=CAP, matrices=cache).data == \
            np.full(3, i, "<i4").tobytes()
        assert len(cache.cache) <= 2


# --- hostile .safetensors files --------------------------------------------------------------------------

def st_file(tmp_path: Path, raw: bytes) -> Path:
    (tmp_path / "e.bin").write_bytes(raw)
    return tmp_path / "e.bin"


def read(path: Path, name: str | None = "a", index: int | None = None, max_bytes: int = CAP) -> tensors.Tensor:
    return tensors.read_safetensors(path, "e.bin", name, max_bytes=max_bytes, index=index)


def test_safetensors_headers_over_the_cap_or_the_file(tmp_path: Path) -> None:
    good = samples.safetensors_bytes({"a": ("F32", [2, 2], np.ones(4, "<f4").tobytes())})
    for raw in (b"", b"\x01\x00", raw_safetensors({}, length=tensors.MAX_HEADER_BYTES + 1),
                raw_safetensors({}, length=2**64 - 1), good[:20], b"\x02" + b"\x00" * 7 + b"[]",
                b"\x04" + b"\x00" * 7 + b"\xff\xfe{}", raw_safetensors([1, 2])):
        path = st_file(tmp_path, raw)
        refused("bad_embedding", lambda path=path: read(path))
    path = st_file(tmp_path, good[:-1])  # data cut short
    refused("bad_embedding", lambda: read(path))
    big = samples.safetensors_bytes({"a": ("F32", [2, 2], np.ones(4, "<f4").tobytes())},
                                    metadata={"note": "x" * 1000})  # a real header of ~1 KB
    path = st_file(tmp_path, big)
    capped = tensors.SafetensorsHeaders(max_header=512)
    exc = refused("bad_embedding", lambda: tensors.read_safetensors(path, "e.bin", "a", max_bytes=CAP,
                                                                    headers=capped))
    assert "over the 512-byte cap" in exc.detail and not capped.cache
    assert read(path).shape == (2, 2)


@pytest.mark.parametrize("info", [
    {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 17]},      # past the end of the file
    {"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 20]},      # past the end of the file
    {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 4]},       # reversed
    {"dtype": "F32", "shape": [2, 2], "data_offsets": [-4, 12]},     # negative
    {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]},       # shorter than the shape
    {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]},
    {"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]},
    {"dtype": "F32", "shape": [2, 2], "data_offsets": [0]},
    {"dtype": "F32", "shape": [2, 2], "data_offsets": ["0", "16"]},
    {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]},
    "not a description",
])
def test_safetensors_offsets_and_shapes_are_checked(tmp_path: Path, info: object) -> None:
    path = st_file(tmp_path, raw_safetensors({"a": info}, np.ones(4, "<f4").tobytes()))
    with pytest.raises(TensorError) as exc:
        read(path)
    assert exc.value.reason in ("bad_embedding", "too_large") and exc.value.detail.startswith("e.bin:")


def test_safetensors_overlapping_tensors_wrong_dtype_missing_tensor(tmp_path: Path) -> None:
    data = np.arange(8, dtype="<f4").tobytes()
    path = st_file(tmp_path, raw_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                              "b": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]}},
                                             data))
    assert "overlap" in refused("bad_embedding", lambda: read(path, "b")).detail
    path = st_file(tmp_path, raw_safetensors({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}}, data))
    refused("wrong_dtype", lambda: read(path))
    two = samples.safetensors_bytes({"a": ("F32", [2], data[:8]), "b": ("I32", [2], data[8:16])},
                                    metadata={"format": "pt"})
    path = st_file(tmp_path, two)
    refused("missing_tensor", lambda: read(path, "c"))
    refused("missing_tensor", lambda: read(path, None))
    assert tensors.safetensors_names(path, "e.bin") == ["a", "b"]
    assert read(path, "b").data == data[8:16] and read(path, "b").dtype == "int32"


def test_safetensors_rows_caps_and_non_finite(tmp_path: Path) -> None:
    bits = samples.bf16_bits(np.array([[1, 2], [np.nan, 3], [np.inf, 0]], dtype=np.float32))
    path = st_file(tmp_path, samples.safetensors_bytes({"a": ("BF16", [3, 2], bits.tobytes())}))
    assert read(path, index=0).data == bits[0].tobytes()
    refused("non_finite", lambda: read(path, index=1))
    refused("non_finite", lambda: read(path, index=2))
    refused("non_finite", lambda: read(path))
    refused("embedding_row_out_of_range", lambda: read(path, index=3))
    refused("too_large", lambda: read(path, max_bytes=11))
    assert read(path, index=0, max_bytes=4).shape == (2,)


# --- inline values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "dtype", "reason"), [
    ([[1, 2], [3]], "float32", "bad_shape"),
    ([[1, 2], 3], "float32", "bad_shape"),
    ([], "float32", "bad_shape"),
    ([[]], "bfloat16", "bad_shape"),
    ("1, 2", "float32", "wrong_type"),
    ({"a": 1}, "float32", "wrong_type"),
    ([True, False], "float32", "wrong_type"),
    (["1", "2"], "float32", "wrong_type"),
    ([1.5, 2], "int32", "wrong_dtype"),
    ([2**31], "int32", "wrong_dtype"),
    ([float("nan")], "int32", "non_finite"),
    ([float("inf"), 1], "float32", "non_finite"),
    ([1e6], "float16", "non_finite"),
    ([1e300], "bfloat16", "non_finite"),
    ([float("nan")], "bfloat16", "non_finite"),
    ([0.0] * 5, "float32", "too_large"),
])
def test_inline_refusals(value: object, dtype: str, reason: str) -> None:
    refused(reason, lambda: tensors.inline(value, dtype, max_bytes=16), label="")
