"""The content-addressed artifact store: files named by the SHA-256 of their bytes."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import joblib

log = logging.getLogger(__name__)


class ArtifactIntegrityError(RuntimeError):
    """A stored file's bytes no longer match the hash it was registered under."""


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SUFFIXES = {"snapshots": ".parquet", "models": ".joblib", "reports": ".html"}


def stored_path(root: Path, kind: str, digest: str) -> Path:
    """Where the store keeps the file of `kind` whose bytes hash to `digest`: found by its hash under the
    configured store, never by a path saved when it was written (the store may have moved since)."""
    return root / kind / f"{digest}{SUFFIXES[kind]}"


def relative_path(root: Path, path: Path) -> str:
    """A stored file's path relative to its store, as the registry records it."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def store_bytes(root: Path, kind: str, data: bytes | memoryview, suffix: str) -> tuple[str, Path]:
    """Write `data` under root/kind/<sha256><suffix> once; never overwrite good bytes. Returns (hash, path).

    A stored copy whose bytes no longer match its name is moved aside (kept as evidence, named by what
    it hashes to now) and replaced atomically by these bytes, which do: the name says what belongs there.
    """
    digest = sha256_bytes(data)
    path = root / kind / f"{digest}{suffix}"
    if path.exists():
        actual = sha256_file(path)
        if actual == digest:
            return digest, path
        aside = path.with_name(f"{path.name}.corrupt-{actual[:16]}")
        os.replace(path, aside)
        log.warning("artifact %s hashed to %s, not its name: moved to %s and rewritten", path, actual, aside)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    return digest, path


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write a read-only file that readers see whole or not at all; no temporary file outlives a failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name the one
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise


def verify_file(path: Path, expected_hash: str) -> None:
    """Raise unless the file exists and its bytes hash to `expected_hash`."""
    if not path.is_file():
        raise ArtifactIntegrityError(f"artifact missing: {path} (registered as {expected_hash}); is "
                                     "PIPELINE_ARTIFACT_DIR the store it was written to?")
    _check_hash(path, sha256_file(path), expected_hash)


def read_verified(path: Path, expected_hash: str) -> bytes:
    """The file's bytes, read once and checked against `expected_hash`: callers use exactly what was checked."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"artifact missing: {path} (registered as {expected_hash}); is "
                                     "PIPELINE_ARTIFACT_DIR the store it was written to?") from None
    _check_hash(path, sha256_bytes(data), expected_hash)
    return data


def _check_hash(path: Path, actual: str, expected_hash: str) -> None:
    if actual != expected_hash:
        raise ArtifactIntegrityError(
            f"artifact {path} hashes to {actual}, but the registry says {expected_hash}: "
            "it was modified or corrupted; restore it or retrain"
        )


def model_bytes(model: Any) -> bytes:
    """A fitted model serialised with joblib."""
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def store_model(root: Path, model: Any) -> tuple[str, Path]:
    """Serialise a fitted model with joblib into the store."""
    return store_bytes(root, "models", model_bytes(model), ".joblib")


def load_model(path: Path, expected_hash: str) -> Any:
    """Unpickle a model from the very bytes that matched the hash the registry holds for it (the file is
    read once: a file swapped after the check is never what gets loaded)."""
    return joblib.load(io.BytesIO(read_verified(path, expected_hash)))
