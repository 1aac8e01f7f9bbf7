"""The sealed-file format (pipeline.store.crypto), without a database: files of several 1 MiB segments read back
whole and by seeks across segment boundaries; a reordered, cut or bit-flipped file, and a wrong key, refused."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store import crypto

REF = "dk-" + "ab" * 16


def _keyring(key: bytes) -> crypto.Keyring:
    ring = crypto.Keyring(engine=None, open_manager=lambda: "test manager")
    ring._keys[REF] = key
    return ring


@pytest.mark.parametrize("whole", [True, False])  # opened whole into memory, or a segment at a time
@pytest.mark.parametrize("size", [0, 1, crypto.SEGMENT - 1, crypto.SEGMENT, crypto.SEGMENT + 1, 2 * crypto.SEGMENT + 517])
def test_a_sealed_file_reads_back_whole_and_by_seeks_across_segments(tmp_path: Path, size: int, whole: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not whole:
        monkeypatch.setattr(crypto, "WHOLE_BYTES", -1)
    data, key = os.urandom(size), os.urandom(32)
    path = tmp_path / "file"
    path.write_bytes(crypto.seal(data, REF, key))
    assert crypto.key_ref_of(path) == REF
    if size >= 16:
        assert data[:16] not in path.read_bytes()
    assert crypto.read_plain(path, _keyring(key)) == data
    with crypto.open_plain(path, _keyring(key)) as handle:
        for start in (0, crypto.SEGMENT - 3, crypto.SEGMENT, size // 2, max(size - 5, 0)):
            handle.seek(start)
            assert handle.read(10) == data[start:start + 10]
        if size >= 4:
            handle.seek(-4, io.SEEK_END)
            assert handle.read() == data[-4:]


def test_pyarrow_reads_a_sealed_parquet_file_through_the_reader(tmp_path: Path) -> None:
    table = pa.table({"patient_id": list(range(300_000)), "bmi": [i / 7 for i in range(300_000)]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=50_000)
    key, path = os.urandom(32), tmp_path / "snapshot.parquet"
    path.write_bytes(crypto.seal(sink.getvalue().to_pybytes(), REF, key))
    with crypto.open_plain(path, _keyring(key)) as handle:
        parquet = pq.ParquetFile(handle)
        assert parquet.num_row_groups == 6
        assert parquet.read(columns=["bmi"]).column(0).equals(table.column("bmi"))


def test_an_opened_file_outlives_the_reader_that_decrypted_it(tmp_path: Path) -> None:
    import gc

    key, path = os.urandom(32), tmp_path / "file"
    path.write_bytes(crypto.seal(b"hello" * 1000, REF, key))
    with crypto.open_plain(path, _keyring(key)) as handle:
        gc.collect()  # the SealedReader that decrypted it is gone: the file stays open for the caller
        assert handle.read(5) == b"hello" and os.fstat(handle.fileno()).st_size == path.stat().st_size


def test_a_plain_file_is_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "plain.html"
    path.write_bytes(b"<p>plain</p>")
    assert crypto.read_plain(path, None) == b"<p>plain</p>" and crypto.key_ref_of(path) is None


def test_a_wrong_key_a_swapped_segment_and_a_cut_file_are_refused_naming_the_file(tmp_path: Path) -> None:
    data, key = os.urandom(2 * crypto.SEGMENT + 10), os.urandom(32)
    sealed = crypto.seal(data, REF, key)
    path = tmp_path / "file"
    path.write_bytes(sealed)
    with pytest.raises(crypto.SealError, match=f"{path}.*{REF}.*test manager"):
        crypto.read_plain(path, _keyring(os.urandom(32)))
    header = len(sealed) - len(data) - 3 * crypto.TAG
    first, second = (sealed[header + i * (crypto.SEGMENT + crypto.TAG):header + (i + 1) * (crypto.SEGMENT + crypto.TAG)]
                     for i in range(2))
    path.write_bytes(sealed[:header] + second + first + sealed[header + 2 * (crypto.SEGMENT + crypto.TAG):])
    with pytest.raises(crypto.TamperedError, match=f"{path}: segment 0 .*{REF}"):
        crypto.read_plain(path, _keyring(key))
    path.write_bytes(sealed[:header + crypto.SEGMENT + crypto.TAG])  # the last segments gone
    with pytest.raises(crypto.TamperedError, match="cut short"):
        crypto.read_plain(path, _keyring(key))
    with pytest.raises(crypto.SealError, match="no key manager"):
        crypto.read_plain(tmp_path.joinpath("file"), None)


def test_a_sealed_value_is_bound_to_its_row() -> None:
    key = os.urandom(32)
    sealed = crypto.seal_value({"source_id": "17", "original": {"bmi": 32.1}}, REF, key, "quarantine|run|h|3")
    assert b"32.1" not in sealed and b"original" not in sealed
    assert crypto.open_value(sealed, REF, _keyring(key), "quarantine|run|h|3", "row 3") == {
        "source_id": "17", "original": {"bmi": 32.1}}
    with pytest.raises(crypto.TamperedError, match="row 4"):
        crypto.open_value(sealed, REF, _keyring(key), "quarantine|run|h|4", "row 4")
