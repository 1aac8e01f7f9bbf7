"""Keys for encryption at rest: master keys in a key manager, and the data keys they wrap.

Each encrypted file has its own random data key. The key manager holds the master keys and wraps data keys
with the current one; `pipeline.data_keys` keeps each wrapped data key under its `key_ref` (`dk-<hex>`), so
a file names only its key_ref. Rotating makes a new master key current and re-wraps every row
(`rewrap_all`) without rewriting any file; old master keys stay so backups remain readable. Destroying a
data key (crypto-shredding) clears its wrapped bytes and keeps the row, so lineage shows it existed.

Two key managers (`security.key_manager`):
- `local`: a key file (JSON, mode 0600) outside the artifact store: `PIPELINE_KEY_FILE`, else
  `security.key_file`, else `.secrets/master.key`. Every worker must read the same file (a shared mount), or
  a worker cannot unwrap what another wrote.
- `pkcs11`: AES master keys that never leave a PKCS#11 token (an HSM; SoftHSM2 in tests), used through
  python-pkcs11. A module or token that cannot be opened is `KeyManagerUnreachable`, an infrastructure
  failure that Airflow retries.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)
from sqlalchemy.engine import Engine

from pipeline.contract.config import PipelineConfig, Pkcs11Policy, SecurityPolicy, load_config
from pipeline.contract.settings import ENV_KEY_FILE, PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

DATA_KEYS = "pipeline.data_keys"
DATA_KEY_BYTES = 32  # AES-256
MASTER_KEY_BYTES = 32
DEFAULT_KEY_FILE = PROJECT_ROOT / ".secrets" / "master.key"  # beside the erasure key, outside .artifacts/


class KeyUnavailable(RuntimeError):
    """A key cannot be had: the message names the key id and the key source (file or token) and what to do.

    The rows are not at fault, so a run failing on it counts as an infrastructure failure (its arrivals stay
    unconsumed until the key is back)."""

    def __init__(self, message: str, key_id: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.source = source


class KeyManagerUnreachable(KeyUnavailable):
    """The key manager (a PKCS#11 module or token) cannot be opened: retried like any infrastructure failure."""


class NoMasterKey(KeyUnavailable):
    """The key source holds no master key yet (`ensure_key_source` makes the first one when that is safe)."""


class DataKeyDestroyed(KeyUnavailable):
    """The data key was crypto-shredded: whatever it encrypted is gone for good."""


class KeyManager(Protocol):
    @property
    def source(self) -> str:
        """Where the master keys are: "local:/abs/.secrets/master.key" or "pkcs11:<token label>@<module>"."""
        ...

    def current_key_id(self) -> str:
        """The id of the master key that wraps new data keys (NoMasterKey when there is none)."""
        ...

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """(master key id, wrapped bytes) of `data_key` under the current master key."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """The data key wrapped under master key `key_id`; KeyUnavailable naming key id and source otherwise."""
        ...

    def rotate(self) -> str:
        """Make a new master key current (old ones stay, for unwrap); its id."""
        ...


def master_key_id(key: bytes) -> str:
    """A master key's id: a fingerprint of it, so a different key can never pass for it."""
    return "mk-" + hashlib.sha256(b"pipeline master key\0" + key).hexdigest()[:16]


def refuse_open_mode(path: Path, what: str) -> None:
    """Refuse a secret file that group or others may read or write."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyUnavailable(f"{what} {path} has mode {mode:04o}: group or others may read it; make it private "
                             f"(chmod 600 {path}) and check who copied it", source=str(path))


@dataclass
class LocalKeyManager:
    """Master keys in one JSON key file: {"current": id, "keys": {id: base64 key}}, mode 0600."""

    path: Path
    _cache: tuple[tuple[int, int, int], dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        return f"local:{self.path}"

    def _read(self) -> dict[str, Any]:
        """The key file's content (re-read when it changed: another process may have rotated)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise NoMasterKey(f"key file {self.path} is missing ({ENV_KEY_FILE} / security.key_file); it is made "
                              "on first use only while pipeline.data_keys is empty", source=self.source) from None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        refuse_open_mode(self.path, "key file")
        try:
            content = json.loads(self.path.read_text())
            keys = {k: base64.b64decode(v, validate=True) for k, v in content["keys"].items()}
            current = str(content["current"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyUnavailable(f"key file {self.path} is not a pipeline key file ({exc!r}); restore the key "
                                 "file every worker shares", source=self.source) from exc
        for key_id, key in keys.items():
            if master_key_id(key) != key_id:
                raise KeyUnavailable(f"key file {self.path}: master key {key_id} does not match its id (the file "
                                     "was edited or damaged); restore it from backup", key_id, self.source)
        if current not in keys:
            raise KeyUnavailable(f"key file {self.path}: its current key {current} is not among its keys",
                                 current, self.source)
        data = {"current": current, "keys": keys}
        self._cache = (stamp, data)
        return data

    def current_key_id(self) -> str:
        return str(self._read()["current"])

    def _key(self, key_id: str) -> bytes:
        keys: dict[str, bytes] = self._read()["keys"]
        if key_id not in keys:
            raise KeyUnavailable(f"master key {key_id} is not in key file {self.path} (it holds {sorted(keys)}): "
                                 f"this is not the key file the key was wrapped with; point {ENV_KEY_FILE} / "
                                 "security.key_file at the file every worker shares", key_id, self.source)
        return keys[key_id]

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        key_id = self.current_key_id()
        return key_id, aes_key_wrap_with_padding(self._key(key_id), data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap_with_padding(self._key(key_id), wrapped)
        except InvalidUnwrap as exc:
            raise KeyUnavailable(f"master key {key_id} in key file {self.path} does not unwrap these bytes: they "
                                 "were damaged, or wrapped by another key", key_id, self.source) from exc

    def rotate(self) -> str:
        """Add a new master key and make it current; the first one when the file does not exist yet."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _file_lock(self.path.with_name(self.path.name + ".lock")):
            try:
                keys = dict(self._read()["keys"])
            except NoMasterKey:
                keys = {}
            key = secrets.token_bytes(MASTER_KEY_BYTES)
            key_id = master_key_id(key)
            keys[key_id] = key
            _write_private(self.path, json.dumps(
                {"current": key_id, "keys": {k: base64.b64encode(v).decode() for k, v in keys.items()}}, indent=1))
        log.warning("master key %s is now current in %s (mode 0600); back the file up and give every worker "
                    "the same file", key_id, self.path)
        return key_id


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600 from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- PKCS#11 -----------------------------------------------------------------------------------------------

NONCE_BYTES = 12
# One PKCS#11 call at a time in a process: re-initialising the module (to see a token made after it was loaded)
# ends every session of the process, so no other thread may hold one then.
_MODULE_LOCK = threading.RLock()


def _token(module: str, label: str) -> Any:
    """The token labelled `label`; the module is re-initialised once when none is (a token initialised after this
    process loaded the module is seen only then)."""
    import pkcs11
    from pkcs11.exceptions import NoSuchToken

    lib = pkcs11.lib(module)
    try:
        return lib.get_token(token_label=label)
    except NoSuchToken:
        lib.reinitialize()
        return lib.get_token(token_label=label)


@dataclass
class Pkcs11KeyManager:
    """AES master keys generated on a PKCS#11 token (an HSM; SoftHSM2 in tests), never extractable.

    A data key is wrapped by AES-256-GCM on the token (12-byte nonce, the master key id as associated data), so a
    wrong key or damaged bytes fail the tag check instead of giving garbage. Master keys carry the label
    `<key_label>/<id>`; ids sort by creation time, and the newest is current. python-pkcs11 is imported only
    when this manager is used."""

    policy: Pkcs11Policy

    @property
    def source(self) -> str:
        return f"pkcs11:{self.policy.token_label}@{self.policy.module}"

    def _pin(self) -> str:
        """The user PIN: from pin_file (mode 0600) or the environment variable pin_env; never from the config."""
        pin_file = self.policy.pin_file
        if pin_file is not None:
            try:
                refuse_open_mode(pin_file, "PIN file")
                return pin_file.read_text().strip()
            except OSError as exc:
                raise KeyManagerUnreachable(f"PIN file {pin_file} of token {self.policy.token_label!r} cannot be "
                                            f"read ({exc.strerror})", source=self.source) from exc
        pin = os.environ.get(self.policy.pin_env)
        if not pin:
            raise KeyUnavailable(f"token {self.policy.token_label!r}: no PIN; set {self.policy.pin_env} or "
                                 "security.pkcs11.pin_file", source=self.source)
        return pin

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """A read-write session logged in to the token; KeyManagerUnreachable naming module and token otherwise."""
        from pkcs11.exceptions import PKCS11Error

        where = f"PKCS#11 module {self.policy.module}, token {self.policy.token_label!r}"
        with _MODULE_LOCK:
            pin = self._pin()
            try:
                session = _token(str(self.policy.module), self.policy.token_label).open(user_pin=pin, rw=True)
            except (PKCS11Error, OSError, RuntimeError) as exc:
                raise KeyManagerUnreachable(
                    f"{where} cannot be opened ({type(exc).__name__}: {exc}): the key manager is down or "
                    "misconfigured; a run failing on it is retried", source=self.source) from exc
            try:
                yield session
            finally:
                session.close()

    def _keys(self, session: Any) -> dict[str, Any]:
        from pkcs11 import Attribute, KeyType, ObjectClass

        prefix = self.policy.key_label + "/"
        found = {}
        for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}):
            label = key.label or ""
            if label.startswith(prefix):
                found[label.removeprefix(prefix)] = key
        return found

    def current_key_id(self) -> str:
        with self._session() as session:
            keys = self._keys(session)
        if not keys:
            raise NoMasterKey(f"token {self.policy.token_label!r} holds no master key labelled "
                              f"{self.policy.key_label}/…", source=self.source)
        return max(keys)

    def _key(self, session: Any, key_id: str) -> Any:
        keys = self._keys(session)
        if key_id not in keys:
            raise KeyUnavailable(f"master key {key_id} is not on token {self.policy.token_label!r} ({self.source}; it "
                                 f"holds {sorted(keys)}): this is not the token the key was wrapped with",
                                 key_id, self.source)
        return keys[key_id]

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        with self._session() as session:
            keys = self._keys(session)
            if not keys:
                raise NoMasterKey(f"token {self.policy.token_label!r} holds no master key", source=self.source)
            key_id = max(keys)
            nonce = secrets.token_bytes(NONCE_BYTES)
            sealed = keys[key_id].encrypt(data_key, mechanism=Mechanism.AES_GCM,
                                          mechanism_param=GCMParams(nonce, key_id.encode()))
        return key_id, nonce + bytes(sealed)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.exceptions import PKCS11Error
        from pkcs11.mechanisms import GCMParams

        with self._session() as session:
            key = self._key(session, key_id)
            try:
                return bytes(key.decrypt(wrapped[NONCE_BYTES:], mechanism=Mechanism.AES_GCM,
                                         mechanism_param=GCMParams(wrapped[:NONCE_BYTES], key_id.encode())))
            except PKCS11Error as exc:
                raise KeyUnavailable(f"master key {key_id} on token {self.policy.token_label!r} does not unwrap "
                                     f"these bytes ({type(exc).__name__}): they were damaged, or wrapped by another "
                                     "key", key_id, self.source) from exc

    def rotate(self) -> str:
        """Generate a new AES-256 master key on the token (sensitive, never extractable); it becomes current."""
        from pkcs11 import Attribute, KeyType

        key_id = "mk-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f") + "-" + secrets.token_hex(2)
        with self._session() as session:
            session.generate_key(KeyType.AES, 256, label=f"{self.policy.key_label}/{key_id}", id=key_id.encode(),
                                 store=True, template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        return key_id


def key_file_path(settings: Settings, security: SecurityPolicy) -> Path:
    """The local key file: PIPELINE_KEY_FILE, else security.key_file, else .secrets/master.key; never inside
    the artifact store (a copy of the store must not carry its own keys)."""
    path = (settings.key_file or security.key_file or DEFAULT_KEY_FILE).absolute()
    store = settings.artifact_dir.absolute()
    if path.is_relative_to(store):
        raise KeyUnavailable(f"key file {path} lies inside the artifact store {store}: anyone with a copy of the "
                             f"store could read it; set {ENV_KEY_FILE} or security.key_file to a path outside it",
                             source=f"local:{path}")
    return path


def open_key_manager(settings: Settings, config: PipelineConfig | SecurityPolicy | None = None) -> KeyManager:
    """The configured key manager (`security.key_manager`); `config` defaults to the settings' config file."""
    if config is None:
        config = load_config(settings.config_path)
    security = config.security if isinstance(config, PipelineConfig) else config
    if security.key_manager == "pkcs11":
        assert security.pkcs11 is not None  # the config loader requires it
        return Pkcs11KeyManager(security.pkcs11)
    return LocalKeyManager(key_file_path(settings, security))


# --- pipeline.data_keys -------------------------------------------------------------------------------


def _live_master_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.text(
            f"SELECT DISTINCT master_key_id FROM {DATA_KEYS} WHERE wrapped IS NOT NULL ORDER BY 1")).all())


def ensure_key_source(engine: Engine, km: KeyManager) -> str:
    """The current master key id, making the first master key when the source has none and no data key needs
    one; never a new key while pipeline.data_keys holds keys that an old one wrapped."""
    try:
        return km.current_key_id()
    except NoMasterKey as missing:
        needed = _live_master_ids(engine)
        if needed:
            raise KeyUnavailable(
                f"{missing} but pipeline.data_keys holds data keys wrapped by master key(s) {needed}: restore that "
                "key source (a new master key would not unwrap them); no key was made", needed[0], km.source) from None
        return km.rotate()


def new_data_key(engine: Engine, km: KeyManager) -> tuple[str, bytes]:
    """A new random data key, stored wrapped in pipeline.data_keys: (key_ref, key bytes)."""
    ensure_key_source(engine, km)
    key = secrets.token_bytes(DATA_KEY_BYTES)
    key_ref = "dk-" + secrets.token_hex(16)
    master_id, wrapped = km.wrap(key)
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {DATA_KEYS} (key_ref, master_key_id, wrapped) VALUES (:r, :m, :w)"),
                     {"r": key_ref, "m": master_id, "w": wrapped})
    return key_ref, key


def data_key(engine: Engine, km: KeyManager, key_ref: str) -> bytes:
    """The data key `key_ref`, unwrapped; a clear error if it is unknown, destroyed or cannot be unwrapped."""
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            f"SELECT master_key_id, wrapped, destroyed_at FROM {DATA_KEYS} WHERE key_ref = :r"), {"r": key_ref}).first()
    if row is None:
        raise KeyUnavailable(f"data key {key_ref} is not in {DATA_KEYS}: the file was encrypted against another "
                             "database, or the row was lost", key_ref, km.source)
    if row.wrapped is None:
        raise DataKeyDestroyed(f"data key {key_ref} was destroyed on {row.destroyed_at:%Y-%m-%d %H:%M:%S %Z} "
                               "(crypto-shredded): what it encrypted cannot be read by anyone", key_ref, km.source)
    try:
        return km.unwrap(row.master_key_id, bytes(row.wrapped))
    except KeyUnavailable as exc:
        raise type(exc)(f"data key {key_ref}: {exc}", exc.key_id, exc.source) from exc


def destroy_data_key(engine: Engine, key_ref: str) -> None:
    """Crypto-shred `key_ref`: its wrapped bytes are cleared and the time noted; the row stays for lineage."""
    with engine.begin() as conn:
        found = conn.execute(sa.text(
            f"UPDATE {DATA_KEYS} SET wrapped = NULL, destroyed_at = coalesce(destroyed_at, now()) "
            "WHERE key_ref = :r RETURNING key_ref"), {"r": key_ref}).first()
    if found is None:
        raise KeyUnavailable(f"data key {key_ref} is not in {DATA_KEYS}: nothing to destroy", key_ref)


def rewrap_all(engine: Engine, km: KeyManager) -> int:
    """Re-wrap every live data key not under the current master key with it, in one transaction; how many.
    No file changes: a file names its data key, never the master key."""
    current = km.current_key_id()
    with engine.begin() as conn:
        rows = conn.execute(sa.text(
            f"SELECT key_ref, master_key_id, wrapped FROM {DATA_KEYS} "
            "WHERE wrapped IS NOT NULL AND master_key_id <> :m ORDER BY key_ref FOR UPDATE"), {"m": current}).all()
        for row in rows:
            try:
                plain = km.unwrap(row.master_key_id, bytes(row.wrapped))
            except KeyUnavailable as exc:
                raise type(exc)(f"data key {row.key_ref}: {exc}; nothing was re-wrapped", exc.key_id,
                                exc.source) from exc
            master_id, wrapped = km.wrap(plain)
            conn.execute(sa.text(
                f"UPDATE {DATA_KEYS} SET master_key_id = :m, wrapped = :w WHERE key_ref = :r"),
                {"m": master_id, "w": wrapped, "r": row.key_ref})
    return len(rows)



def describe(settings: Settings, config: PipelineConfig) -> dict[str, Any]:
    """Which key manager the config names, and whether it opens (check-config); nothing is made or written."""
    security = config.security
    found: dict[str, Any] = {"encrypt_at_rest": security.encrypt_at_rest, "manager": security.key_manager}
    try:
        km = open_key_manager(settings, security)
        found["source"] = km.source
        found["current_key_id"] = km.current_key_id()
        found["opened"] = True
    except NoMasterKey as exc:
        found.update(opened=True, current_key_id=None, why=f"no master key yet: {exc}")
    except KeyUnavailable as exc:
        found.update(opened=False, source=exc.source, why=str(exc))
    return found


def rotate_keys(engine: Engine, km: KeyManager) -> dict[str, Any]:
    """`rotate-keys`: a new current master key, and every live data key re-wrapped under it (no file changes)."""
    previous = ensure_key_source(engine, km)
    current = km.rotate()
    return {"source": km.source, "previous_key_id": previous, "current_key_id": current,
            "rewrapped": rewrap_all(engine, km)}
