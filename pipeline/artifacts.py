"""The content-addressed artifact store: files named by the SHA-256 of their bytes."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import joblib


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


def store_bytes(root: Path, kind: str, data: bytes | memoryview, suffix: str) -> tuple[str, Path]:
    """Write `data` under root/kind/<sha256><suffix> once; never overwrite. Returns (hash, path)."""
    digest = sha256_bytes(data)
    path = root / kind / f"{digest}{suffix}"
    if path.exists():
        verify_file(path, digest)
        return digest, path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)  # atomic: readers see the whole file or none
    return digest, path


def verify_file(path: Path, expected_hash: str) -> None:
    """Raise unless the file exists and its bytes hash to `expected_hash`."""
    if not path.is_file():
        raise ArtifactIntegrityError(f"artifact missing: {path} (registered as {expected_hash})")
    actual = sha256_file(path)
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
    """Load a model only after its file matches the hash the registry holds for it."""
    verify_file(path, expected_hash)
    return joblib.load(path)
