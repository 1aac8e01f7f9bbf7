"""The content-addressed store: names are hashes, writes happen once, tampering is caught."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.store.artifacts import (
    ArtifactIntegrityError,
    load_model,
    sha256_file,
    store_bytes,
    store_model,
    verify_file,
)

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


def test_storing_the_right_bytes_repairs_a_corrupted_copy_and_keeps_the_evidence(tmp_path: Path) -> None:
    digest, path = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    tamper(path)

    again = store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")  # a retrain producing the same bytes

    assert again == (digest, path)
    assert path.read_bytes() == PAYLOAD and not path.stat().st_mode & stat.S_IWUSR
    aside = path.with_name(f"{path.name}.corrupt-{hashlib.sha256(b'tampered').hexdigest()[:16]}")
    assert aside.read_bytes() == b"tampered"  # the evidence is left for a human to look at
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, aside.name])


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk, injected at the fsync: the error surfaces, and the store holds nothing half-written."""
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store_bytes(tmp_path, "snapshots", PAYLOAD, ".parquet")
    assert list((tmp_path / "snapshots").iterdir()) == []


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


class Payload:
    """A pickle that, when loaded, creates a file: proof that swapped bytes were unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_file_swapped_during_loading_is_never_unpickled(tmp_path: Path) -> None:
    """A second thread swaps the stored model for a malicious pickle and back, as fast as it can, while
    loads run: every load either gets the checked model or is refused; the payload never runs."""
    model = fitted_model()
    digest, path = store_model(tmp_path, model)
    good, marker = tmp_path / "good.joblib", tmp_path / "payload-ran"
    good.write_bytes(path.read_bytes())
    evil = tmp_path / "evil.joblib"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    stop = threading.Event()

    def swap() -> None:
        for _ in range(20_000):  # bounded, and stops with the loads
            if stop.is_set():
                return
            shutil.copyfile(evil, tmp_path / "next")
            os.replace(tmp_path / "next", path)
            shutil.copyfile(good, tmp_path / "next")
            os.replace(tmp_path / "next", path)

    swapper = threading.Thread(target=swap)
    swapper.start()
    loaded = refused = 0
    try:
        for _ in range(2_000):
            try:
                load_model(path, digest)
                loaded += 1
            except ArtifactIntegrityError:
                refused += 1
    finally:
        stop.set()
        swapper.join()
    assert not marker.exists()
    assert loaded + refused == 2_000 and refused > 0  # the race really happened
