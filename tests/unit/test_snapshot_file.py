"""A stored snapshot read in parts: some columns of every row, or every column of some rows, as the whole
read gives them, from bytes checked against the snapshot's name."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contract.config import DatasetContract
from pipeline.data import ingest
from pipeline.data.ingest import SnapshotFile
from pipeline.model import train
from pipeline.store import artifacts


def stored(folder: Path, frame: pd.DataFrame, row_group_rows: int, preserve_index: bool = False) -> SnapshotFile:
    """`frame` as a stored snapshot of small row groups, named by its hash."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=preserve_index), buffer, row_group_size=row_group_rows)
    digest, path = artifacts.store_bytes(folder, "snapshots", buffer.getvalue(), ".parquet")
    return SnapshotFile(path, digest)


@pytest.mark.parametrize("row_group_rows", [1, 37, 100, 10_000])
@pytest.mark.parametrize("batch_rows", [5, ingest.BATCH_ROWS])  # several batches to a row group, or one
def test_rows_are_the_whole_reads_rows_in_the_order_asked(
        tmp_path: Path, demo_frame: pd.DataFrame, contract: DatasetContract, row_group_rows: int, batch_rows: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "BATCH_ROWS", batch_rows)
    snapshot = stored(tmp_path, demo_frame, row_group_rows)
    whole = snapshot.read()
    trained, held = train.split_positions(whole, contract, 0.2)
    rng = np.random.default_rng(3)
    for positions in (held, trained, rng.permutation(len(whole))[:50], np.array([len(whole) - 1, 0, 36, 37]),
                      np.array([], dtype=np.int64)):
        pd.testing.assert_frame_equal(snapshot.rows(positions), whole.iloc[positions])
    _, holdout = train.split_holdout(whole, contract, 0.2)
    pd.testing.assert_frame_equal(snapshot.rows(held), holdout)


def test_rows_of_a_snapshot_with_its_own_index_labels_are_taken_from_the_whole_read(
        tmp_path: Path, demo_frame: pd.DataFrame) -> None:
    labelled = demo_frame.set_index(pd.Index(np.arange(len(demo_frame))[::-1] * 3, name="label"))
    snapshot = stored(tmp_path, labelled, 50, preserve_index=True)
    positions = np.array([5, 0, 120, 7])
    pd.testing.assert_frame_equal(snapshot.rows(positions), snapshot.read().iloc[positions])
    assert snapshot.rows(positions).index.tolist() == labelled.index[positions].tolist()


def test_read_of_some_columns_keeps_those_the_snapshot_has(
        tmp_path: Path, demo_frame: pd.DataFrame, contract: DatasetContract) -> None:
    snapshot = stored(tmp_path, demo_frame, 100)
    wanted = [contract.id_column, contract.target_column, "no_such_column", contract.id_column]
    pd.testing.assert_frame_equal(snapshot.read(wanted),
                                  snapshot.read()[[contract.id_column, contract.target_column]])


def test_a_snapshot_whose_bytes_changed_is_refused_before_any_read(tmp_path: Path, demo_frame: pd.DataFrame) -> None:
    snapshot = stored(tmp_path, demo_frame, 100)
    path, digest = snapshot.file.path, artifacts.sha256_file(snapshot.file.path)
    snapshot.close()
    other = stored(tmp_path / "other", demo_frame.iloc[:-1], 100)
    path.chmod(0o644)
    path.write_bytes(other.file.path.read_bytes())
    with pytest.raises(artifacts.ArtifactIntegrityError, match="registry says"):
        SnapshotFile(path, digest)


def test_a_snapshot_rewritten_after_its_check_is_refused_on_read(tmp_path: Path, demo_frame: pd.DataFrame,
                                                                 contract: DatasetContract) -> None:
    snapshot = stored(tmp_path, demo_frame, 100)
    before = snapshot.read([contract.id_column])
    assert len(before) == len(demo_frame)
    path = snapshot.file.path
    path.chmod(0o644)
    with path.open("r+b") as handle:  # in place, as a careless tool would: same file, new bytes
        handle.seek(0, 2)
        handle.write(b"appended")
    with pytest.raises(artifacts.ArtifactIntegrityError, match="rewritten while it was being read"):
        snapshot.read([contract.id_column])
    with pytest.raises(artifacts.ArtifactIntegrityError, match="rewritten while it was being read"):
        snapshot.rows(np.array([0, 1]))


def test_a_missing_snapshot_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "snapshots" / "ab.parquet"
    with pytest.raises(artifacts.ArtifactIntegrityError, match=f"artifact missing: {missing}"):
        SnapshotFile(missing, "ab")
