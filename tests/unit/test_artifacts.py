"""The content-addressed store: names are hashes, writes happen once, tampering is caught."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.artifacts import ArtifactIntegrityError, load_model, sha256_file, store_bytes, store_model, verify_file

PAYLOAD = b"labelled rows up to 2024-06-01\n"


def tamper(path: Path, data: bytes = b"tampered") -> None:
    """Change a stored file the way a careless hand would: make it writable, then overwrite it."""
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    path.write_bytes(data)


def fitted_model() -> Pipeline:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = X @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.1, size=40)
    return make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(X, y)


def assert_names_path_and_hashes(error: ArtifactIntegrityError, path: Path, expected: str, actual: str) -> None:
    message = str(error)
    assert str(path) in message
    assert expected in message
    assert actual in message


# --- store_bytes ---------------------------------------------------------------------------------


def test_store_bytes_names_the_file_by_its_sha256(tmp_path: Path) -> None:
    digest, path = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    expected = hashlib.sha256(PAYLOAD).hexdigest()
    assert digest == expected
    assert path == tmp_path / "snapshots" / f"{expected}.parquet"
    assert path.read_bytes() == PAYLOAD


def test_stored_files_are_read_only_and_leave_no_temporary_files(tmp_path: Path) -> None:
    _, path = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_storing_the_same_bytes_twice_gives_the_same_path(tmp_path: Path) -> None:
    first = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    second = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    assert first == second
    assert len(list(first[1].parent.iterdir())) == 1


def test_different_bytes_get_different_files(tmp_path: Path) -> None:
    _, one = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    _, other = store_bytes(tmp_path, "snapshots", PAYLOAD + b"one more row\n", ".parquet")
    assert one != other
    assert one.read_bytes() == PAYLOAD


def test_store_bytes_never_overwrites_a_tampered_file(tmp_path: Path) -> None:
    digest, path = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    tamper(path)
    with pytest.raises(ArtifactIntegrityError) as caught:
        store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    assert_names_path_and_hashes(caught.value, path, digest, hashlib.sha256(b"tampered").hexdigest())
    assert path.read_bytes() == b"tampered"  # the evidence is left for a human to look at


# --- verify_file / load_model --------------------------------------------------------------------


def test_verify_file_accepts_an_untouched_file(tmp_path: Path) -> None:
    digest, path = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    verify_file(path, digest)
    assert sha256_file(path) == digest


def test_verify_file_names_path_and_both_hashes_of_a_tampered_file(tmp_path: Path) -> None:
    digest, path = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    tamper(path)
    with pytest.raises(ArtifactIntegrityError) as caught:
        verify_file(path, digest)
    assert_names_path_and_hashes(caught.value, path, digest, hashlib.sha256(b"tampered").hexdigest())


def test_verify_file_names_a_missing_file(tmp_path: Path) -> None:
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    missing = tmp_path / "snapshots" / f"{digest}.parquet"
    with pytest.raises(ArtifactIntegrityError) as caught:
        verify_file(missing, digest)
    assert str(missing) in str(caught.value)
    assert digest in str(caught.value)


def test_sha256_file_reads_files_larger_than_one_block(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: more than the 1 MiB read block
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_store_model_and_load_model_round_trip(tmp_path: Path) -> None:
    model = fitted_model()
    digest, path = store_model(tmp_path, model)
    assert path.parent == tmp_path / "models"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(path, digest)
    X = np.random.default_rng(1).normal(size=(10, 3))
    assert np.array_equal(loaded.predict(X), model.predict(X))


def test_load_model_refuses_a_tampered_file(tmp_path: Path) -> None:
    digest, path = store_model(tmp_path, fitted_model())
    original = path.read_bytes()
    tamper(path, original[:-1] + bytes([original[-1] ^ 1]))  # one flipped bit
    with pytest.raises(ArtifactIntegrityError) as caught:
        load_model(path, digest)
    assert_names_path_and_hashes(caught.value, path, digest, sha256_file(path))
