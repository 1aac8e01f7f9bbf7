"""The content-addressed artifact store: files named by the SHA-256 of their (plaintext) bytes.

With encryption at rest (`security.encrypt_at_rest`, on by default) each file is stored sealed under a data key
of its own (`pipeline.store.crypto`); its name is still the hash of the plaintext, so hashes, lineage and
`reproduce` do not change with keys, and every read checks the plaintext against the name. A plain file (an
older store, or encryption off) is read as it is.

With `PIPELINE_ARTIFACT_STORE=postgres` the files also live in the pipeline's PostgreSQL, one large object
per digest (table pipeline.artifact_objects), and the local folder is this machine's cache of them: a
worker that never wrote a file fetches it on first read, through the same hash checks as a local file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import joblib
import sqlalchemy as sa
from joblib.numpy_pickle import NumpyUnpickler
from sqlalchemy.engine import Connection, Engine

from pipeline.contract.settings import Settings
from pipeline.store import crypto
from pipeline.store.crypto import (
    ArtifactIntegrityError as ArtifactIntegrityError,  # defined there: crypto raises it too
)
from pipeline.store.crypto import Keyring

log = logging.getLogger(__name__)

# Where each module of the flat layout went when pipeline/ was grouped into subpackages: a model artifact
# pickles its classes and functions (features.AgeFromDates, features.missing_as_nan) by module path, so an
# artifact written before the move names the old path. Loading maps it; the artifact's bytes never change.
MOVED_MODULES = {
    "pipeline.ages": "pipeline.contract.ages",
    "pipeline.arrivals": "pipeline.data.arrivals",
    "pipeline.artifacts": "pipeline.store.artifacts",
    "pipeline.cards": "pipeline.model.cards",
    "pipeline.casting": "pipeline.data.casting",
    "pipeline.chunked_quality": "pipeline.data.chunked_quality",
    "pipeline.cli": "pipeline.cli.main",
    "pipeline.cluster": "pipeline.cli.cluster",
    "pipeline.config": "pipeline.contract.config",
    "pipeline.db": "pipeline.store.db",
    "pipeline.demo": "pipeline.data.demo",
    "pipeline.drift": "pipeline.monitoring.drift",
    "pipeline.evaluate": "pipeline.model.evaluate",
    "pipeline.features": "pipeline.model.features",
    "pipeline.ingest": "pipeline.data.ingest",
    "pipeline.intervals": "pipeline.model.intervals",
    "pipeline.localenv": "pipeline.cli.localenv",
    "pipeline.memory": "pipeline.runtime.memory",
    "pipeline.models_view": "pipeline.views.models_view",
    "pipeline.outcome_notes": "pipeline.views.run_notes",
    "pipeline.outcomes": "pipeline.monitoring.outcomes",
    "pipeline.params": "pipeline.contract.params",
    "pipeline.performance": "pipeline.monitoring.performance",
    "pipeline.quality": "pipeline.data.quality",
    "pipeline.registry": "pipeline.registry.records",
    "pipeline.rowchecks": "pipeline.data.rowchecks",
    "pipeline.runs": "pipeline.registry.runs",
    "pipeline.scoring": "pipeline.serving.scoring",
    "pipeline.serving": "pipeline.serving.rest",
    "pipeline.settings": "pipeline.contract.settings",
    "pipeline.threads": "pipeline.runtime.threads",
    "pipeline.train": "pipeline.model.train",
    "pipeline.validate": "pipeline.data.validate",
}


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SUFFIXES = {"snapshots": ".parquet", "models": ".joblib", "reports": ".html", "residuals": ".npy",
            "cards": ".html"}
TEAM_TABLE = "pipeline.artifact_objects"
_CHUNK = 1 << 20  # large objects are written and read a MiB at a time, never whole in one message
_SHARE_LOCK_ID = 72_410_021  # pg_advisory_xact_lock(key, hashtext(digest)): one writer per digest


@dataclass(frozen=True)
class ArtifactStore:
    """One machine's artifact store: its folder `root` and, in a team (`engine` set), the PostgreSQL
    store every worker shares, of which the folder is then a cache."""

    root: Path
    engine: Engine | None = None
    keyring: Keyring | None = None  # the data keys: opens sealed files, and seals new ones when `encrypt`
    encrypt: bool = False


def artifact_store(settings: Settings, engine: Engine, keyring: Keyring | None = None,
                   encrypt: bool = False) -> ArtifactStore:
    """The store the settings ask for: the local folder alone, or also the team store in `engine`'s database;
    new files sealed under `keyring` when `encrypt`."""
    return ArtifactStore(settings.artifact_dir, engine if settings.artifact_store == "postgres" else None,
                         keyring, encrypt and keyring is not None)


def store_keys(store: Path | ArtifactStore) -> Keyring | None:
    """The keyring a store's sealed files open with (none for a bare folder)."""
    return store.keyring if isinstance(store, ArtifactStore) else None


def store_root(store: Path | ArtifactStore) -> Path:
    """The local folder of a store (a bare Path is a local store)."""
    return store.root if isinstance(store, ArtifactStore) else store


def local_copy(store: Path | ArtifactStore, kind: str, digest: str) -> Path:
    """`stored_path` on this machine, fetched first from the team store when the file is not here yet
    (only bytes that hash to `digest` are put in the cache). Callers check it as any stored file."""
    path = stored_path(store_root(store), kind, digest)
    if isinstance(store, ArtifactStore) and store.engine is not None and not path.is_file():
        _fetch_shared(store.engine, digest, path, store.keyring)
    return path


def recorded_copy(store: Path | ArtifactStore, recorded: str) -> Path:
    """The local file of a path the registry recorded (relative to the store, e.g. cards/<sha256>.html),
    fetched from the team store when it is not here yet."""
    path = store_root(store) / recorded  # an absolute recorded path stays itself
    kind = Path(recorded).parent.name
    if not path.is_file() and kind in SUFFIXES:
        return local_copy(store, kind, Path(recorded).stem)
    return path


def stored_path(root: Path, kind: str, digest: str) -> Path:
    """Where the store keeps the file of `kind` whose bytes hash to `digest`: found by its hash under the
    configured store, never by a path saved when it was written (the store may have moved since)."""
    return root / kind / f"{digest}{SUFFIXES[kind]}"


def relative_path(root: Path, path: Path) -> str:
    """A stored file's path relative to its store, as the registry records it."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def store_bytes(root: Path | ArtifactStore, kind: str, data: bytes | memoryview, suffix: str) -> tuple[str, Path]:
    """Write `data` under root/kind/<sha256><suffix> once; never overwrite good bytes. Returns (hash, path).

    The name is the hash of `data`, the plaintext: with `encrypt` the file holds it sealed under a new data key,
    recorded in pipeline.sealed_files. A stored copy whose plaintext no longer matches its name (or that no longer
    opens) is moved aside (kept as evidence) and replaced atomically by these bytes: the name says what belongs
    there. In a team store the stored bytes also go to PostgreSQL (once per digest), before the call returns.
    """
    store = root if isinstance(root, ArtifactStore) else ArtifactStore(root)
    digest = sha256_bytes(data)
    path = store.root / kind / f"{digest}{suffix}"
    stored = _stored_bytes(store, path, digest, kind, data)
    if store.engine is not None:
        _share(store.engine, kind, digest, suffix, stored, len(memoryview(data).cast("B")))
    return digest, path


def _stored_bytes(store: ArtifactStore, path: Path, digest: str, kind: str, data: bytes | memoryview) -> bytes | memoryview:
    """The bytes at `path` once it holds `data` (as it was, when good; else written now, sealed when `encrypt`)."""
    if path.exists():
        try:
            actual = sha256_plain(path, store.keyring)
        except crypto.SealError as exc:
            actual = f"unreadable ({exc})"
        if actual == digest:
            return path.read_bytes() if store.engine is not None else b""
        aside = path.with_name(f"{path.name}.corrupt-{sha256_file(path)[:16]}")
        os.replace(path, aside)
        log.warning("artifact %s hashed to %s, not its name: moved to %s and rewritten", path, actual, aside)
    stored = seal_for(store, kind, digest, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, stored)
    return stored


def seal_for(store: ArtifactStore, kind: str, digest: str, data: bytes | memoryview) -> bytes | memoryview:
    """The bytes to store for the plaintext `data`: sealed under a new data key (recorded against `digest` in
    pipeline.sealed_files) when the store encrypts, else `data` itself."""
    if not store.encrypt or store.keyring is None:
        return data
    ref, key = store.keyring.new()
    sealed = crypto.seal(data, ref, key)
    with store.keyring.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO pipeline.sealed_files (digest, kind, key_ref) VALUES (:d, :k, :r) ON CONFLICT DO NOTHING
        """), {"d": digest, "k": kind, "r": ref})
    return sealed


def write_sealed(store: Path | ArtifactStore, kind: str, path: Path, data: bytes | memoryview) -> None:
    """Write a file outside the content-addressed folders (the compiled cache) as `store_bytes` would: sealed
    under a new data key when the store encrypts, atomically, read-only."""
    stored = seal_for(store, kind, sha256_bytes(data), data) if isinstance(store, ArtifactStore) else data
    write_atomically(path, stored)


def sha256_plain(path: Path, keyring: Keyring | None) -> str:
    """The SHA-256 of a stored file's plaintext (of its bytes, for a plain file)."""
    digest = hashlib.sha256()
    with crypto.open_plain(path, keyring) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write a read-only file that readers see whole or not at all; no temporary file outlives a failure."""
    with _atomic_writer(path) as handle:
        handle.write(data)


@contextmanager
def _atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """A handle on a temporary file beside `path` that becomes `path`, read-only, when the block ends
    without an exception; on any exception it is removed and `path` is left as it was."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w+b") as handle:  # readable too: a fetched file is checked before it becomes `path`
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name the one
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise


def _missing(path: Path, expected_hash: str) -> ArtifactIntegrityError:
    return ArtifactIntegrityError(f"artifact missing: {path} (registered as {expected_hash}); is "
                                  "PIPELINE_ARTIFACT_DIR the store it was written to?")


def verify_file(path: Path, expected_hash: str, keys: Keyring | None = None) -> None:
    """Raise unless the file exists and its plaintext hashes to `expected_hash`."""
    if not path.is_file():
        raise _missing(path, expected_hash)
    _check_hash(path, sha256_plain(path, keys), expected_hash)


def read_verified(path: Path, expected_hash: str, keys: Keyring | None = None) -> bytes:
    """The file's plaintext, read once and checked against `expected_hash`: callers use exactly what was checked."""
    try:
        data = crypto.read_plain(path, keys)
    except FileNotFoundError:
        raise _missing(path, expected_hash) from None
    _check_hash(path, sha256_bytes(data), expected_hash)
    return data


@dataclass
class VerifiedFile:
    """An artifact file opened once and hashed through that open file, a MiB at a time (never whole in
    memory). Reads then go through the same open file, so a file renamed over it is never what is read, and
    `confirm_unchanged` refuses one rewritten in place since the check (its size or modification time moved)."""

    path: Path
    handle: IO[bytes]
    checked: tuple[int, int]  # size and modification time (ns) when the hash was checked

    def confirm_unchanged(self) -> None:
        if _identity(self.handle) != self.checked:
            raise ArtifactIntegrityError(
                f"artifact {self.path} was rewritten while it was being read, after its hash was checked; "
                "stored artifacts are never changed in place: find what wrote to it, then retry")

    def close(self) -> None:
        self.handle.close()


def _identity(handle: IO[bytes]) -> tuple[int, int]:
    status = os.fstat(handle.fileno())
    return status.st_size, status.st_mtime_ns


def open_verified(path: Path, expected_hash: str, keys: Keyring | None = None) -> VerifiedFile:
    """The file open for reading as its plaintext, checked against `expected_hash` (see VerifiedFile)."""
    try:
        handle = crypto.open_plain(path, keys)
    except FileNotFoundError:
        raise _missing(path, expected_hash) from None
    try:
        checked = _identity(handle)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        _check_hash(path, digest.hexdigest(), expected_hash)
        handle.seek(0)
        verified = VerifiedFile(path, handle, checked)
        verified.confirm_unchanged()
    except BaseException:
        handle.close()
        raise
    return verified


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


def store_model(root: Path | ArtifactStore, model: Any) -> tuple[str, Path]:
    """Serialise a fitted model with joblib into the store."""
    return store_bytes(root, "models", model_bytes(model), ".joblib")


def load_model(path: Path, expected_hash: str, keys: Keyring | None = None) -> Any:
    """Unpickle a model from the very bytes that matched the hash the registry holds for it (the file is
    read once: a file swapped after the check is never what gets loaded)."""
    return unpickle_model(read_verified(path, expected_hash, keys))


class _MovedModulesUnpickler(NumpyUnpickler):  # type: ignore[misc]
    """joblib's unpickler, finding each pickled class or function under its module's current path."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


def unpickle_model(data: bytes) -> Any:
    """A model from the bytes `model_bytes` wrote, whichever layout of `pipeline` wrote them."""
    return _MovedModulesUnpickler("", io.BytesIO(data), ensure_native_byte_order=True).load()


def _share(engine: Engine, kind: str, digest: str, suffix: str, data: bytes | memoryview, size: int) -> None:
    """Put the stored bytes `data` (sealed or plain) of the plaintext `digest` (`size` bytes) in the team store as
    one large object and its index row, in one transaction; a digest already there is left alone (writers of the
    same digest queue on an advisory lock, never fail)."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:d))"), {"k": _SHARE_LOCK_ID, "d": digest})
        if conn.scalar(sa.text(f"SELECT 1 FROM {TEAM_TABLE} WHERE digest = :d"), {"d": digest}):
            return
        target = _dbapi(conn, engine).lobject(0, "wb")
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _CHUNK):
            target.write(bytes(view[start:start + _CHUNK]))
        oid = target.oid
        target.close()
        conn.execute(sa.text(f"""
            INSERT INTO {TEAM_TABLE} (digest, kind, suffix, size_bytes, oid) VALUES (:d, :kind, :suffix, :size, :oid)
        """), {"d": digest, "kind": kind, "suffix": suffix, "size": size, "oid": oid})
    log.info("artifact %s (%s, %d bytes) put in the team store %s", digest, kind, size, TEAM_TABLE)


def _fetch_shared(engine: Engine, digest: str, path: Path, keys: Keyring | None = None) -> None:
    """Copy the team store's bytes of `digest` to `path` (atomically, streamed, a MiB at a time) when their
    plaintext hashes to `digest`; refuse them, leaving no file, when it does not. Nothing happens when it lacks them."""
    with engine.begin() as conn:
        oid = conn.scalar(sa.text(f"SELECT oid FROM {TEAM_TABLE} WHERE digest = :d"), {"d": digest})
        if oid is None:
            return
        source = _dbapi(conn, engine).lobject(oid, "rb")
        path.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_writer(path) as handle:
            for block in iter(lambda: source.read(_CHUNK), b""):
                handle.write(block)
            handle.flush()
            handle.seek(0)
            plain = crypto.plain_reader(handle, f"{digest} from the team store {TEAM_TABLE}", keys)  # not closed:
            hashed = hashlib.sha256()  # the writer closes `handle`
            for block in iter(lambda: plain.read(_CHUNK), b""):
                hashed.update(block)
            if hashed.hexdigest() != digest:
                raise ArtifactIntegrityError(
                    f"artifact {digest} in the team store {TEAM_TABLE} (large object {oid}) of database "
                    f"{engine.url.render_as_string(hide_password=True)} hashes to {hashed.hexdigest()}: it was "
                    f"modified or corrupted there and was not copied to {path}; restore it or retrain")
        source.close()
    log.info("artifact %s fetched from the team store %s into %s", digest, TEAM_TABLE, path)


def _dbapi(conn: Connection, engine: Engine) -> Any:
    """The psycopg2 connection under `conn`, whose `lobject` streams large objects."""
    raw = conn.connection.dbapi_connection
    if not hasattr(raw, "lobject"):
        raise RuntimeError(f"the postgres artifact store needs the psycopg2 driver, but {engine.url.drivername} "
                           "is in use: write the database URL as postgresql:// or postgresql+psycopg2://")
    return raw
