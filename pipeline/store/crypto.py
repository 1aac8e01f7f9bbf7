"""Sealing at rest: the one place that encrypts and decrypts what the pipeline stores (issue 30).

A stored file is sealed with AES-256-GCM under a data key of its own (`pipeline.store.keys`: a key wrapped by the
key manager, its row in pipeline.data_keys). A sealed file is a small header, then the plaintext in 1 MiB
segments, each encrypted and authenticated on its own, so a reader can seek (Parquet reads its footer first)
without decrypting the whole file, and never sees a byte that did not authenticate:

    MAGIC (8) | version (1) | len(key_ref) (1) | key_ref | segment size (4) | plaintext size (8) | nonce prefix (8)
    | key check (16) | segment 0 ... segment n-1, each its ciphertext and 16-byte tag

The header up to the key check is associated data of every segment (with the segment's number and whether it is
the last), so a file cannot be cut short, reordered, or given another file's key_ref. The key check is a tag over
the header alone: a key that fails it is the wrong key; a segment that fails after it is a tampered file.

A file that does not start with MAGIC is a plain file (written before encryption, or with
`security.encrypt_at_rest: false`) and is read as it is. Database values (the quarantine's raw values, the
validation results' patient values) are sealed with `seal_value`/`open_value`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.store.keys import KeyUnavailable

log = logging.getLogger(__name__)

MAGIC = b"\x89PSEAL\r\n"  # no Parquet (PAR1), pickle (\x80), HTML, NumPy (\x93NUMPY) or ONNX file starts so
VERSION = 1
SEGMENT = 1 << 20
TAG = 16
_FIXED = len(MAGIC) + 2  # magic, version, len(key_ref)
_VALUE_VERSION = b"\x01"


class ArtifactIntegrityError(RuntimeError):
    """A stored file's bytes no longer match the hash it was registered under (`pipeline.store.artifacts`)."""


class SealError(KeyUnavailable):
    """A sealed file or value that cannot be opened: the wrong key, a destroyed or missing key, no key manager.
    The rows are not at fault: like every KeyUnavailable, an infrastructure failure."""


class TamperedError(SealError, ArtifactIntegrityError):
    """A sealed file or value whose bytes do not authenticate under its (right) key: modified, cut or corrupted."""


@dataclass(eq=False)
class Keyring:
    """The data keys of one store, reached through its key manager (`pipeline.store.keys`), opened on first use.
    Unwrapped keys are kept for the life of the process (a destroyed key is dropped at once)."""

    engine: Any
    open_manager: Callable[[], Any]
    _manager: Any = None
    _keys: dict[str, bytes] = field(default_factory=dict)

    @property
    def manager(self) -> Any:
        if self._manager is None:
            self._manager = self.open_manager()
        return self._manager

    @property
    def source(self) -> str:
        """Where the master key lives, as errors name it (the key file, the PKCS#11 token)."""
        try:
            manager = self.manager
        except KeyUnavailable as exc:
            return exc.source or f"a key manager that does not open ({exc})"
        return str(getattr(manager, "source", None) or manager)

    def new(self) -> tuple[str, bytes]:
        """A fresh data key, recorded (wrapped) in pipeline.data_keys: its ref and its bytes."""
        from pipeline.store import keys

        ref, key = keys.new_data_key(self.engine, self.manager)
        self._keys[ref] = key
        return ref, key

    def get(self, ref: str, what: str) -> bytes:
        """The data key `ref`, unwrapped; a SealError naming `what` (the file or row), the key and its source."""
        if ref not in self._keys:
            from pipeline.store import keys

            try:
                self._keys[ref] = keys.data_key(self.engine, self.manager, ref)
            except KeyUnavailable as exc:  # destroyed, unknown, the wrong master key, the key file missing
                raise type(exc)(f"cannot open {what}: {exc} (key source {exc.source or self.source})", ref,
                                exc.source or self.source) from exc
        return self._keys[ref]

    def sealer(self) -> ValueSealer:
        """A ValueSealer under a fresh data key."""
        return ValueSealer(*self.new())

    def destroy(self, ref: str) -> None:
        """Destroy the data key `ref` (crypto-shredding: every copy sealed under it is unreadable from now)."""
        from pipeline.store import keys

        self._keys.pop(ref, None)
        keys.destroy_data_key(self.engine, ref)


def _need(keyring: Keyring | None, what: str, ref: str) -> Keyring:
    if keyring is None:
        raise SealError(f"{what} is sealed under data key {ref}, but this reader was given no key manager: "
                        "open it through the workspace's store (security.key_manager in the config)")
    return keyring


# --- files ----------------------------------------------------------------------------------------------------


def is_sealed(head: bytes) -> bool:
    return head[:len(MAGIC)] == MAGIC


def _header(ref: str, size: int, prefix: bytes) -> bytes:
    encoded = ref.encode()
    return (MAGIC + bytes([VERSION, len(encoded)]) + encoded + SEGMENT.to_bytes(4, "big") + size.to_bytes(8, "big")
            + prefix)


def _segment_ad(header: bytes, index: int, last: bool) -> bytes:
    return header + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _segments(size: int, segment: int) -> int:
    return max(1, -(-size // segment))


def seal(data: bytes | memoryview, ref: str, key: bytes) -> bytes:
    """`data` sealed under the data key `ref` (see the module's docstring for the layout)."""
    view = memoryview(data).cast("B")
    prefix = os.urandom(8)
    header = _header(ref, len(view), prefix)
    aead = AESGCM(key)
    parts = [header, aead.encrypt(prefix + b"\xff\xff\xff\xff", b"", header)]
    count = _segments(len(view), SEGMENT)
    for i in range(count):
        chunk = bytes(view[i * SEGMENT:(i + 1) * SEGMENT])
        parts.append(aead.encrypt(prefix + i.to_bytes(4, "big"), chunk, _segment_ad(header, i, i == count - 1)))
    return b"".join(parts)


@dataclass(frozen=True)
class Header:
    ref: str
    segment: int
    size: int
    prefix: bytes
    raw: bytes  # the header bytes the segments authenticate
    check: bytes

    @property
    def length(self) -> int:
        return len(self.raw) + TAG


def read_header(handle: IO[bytes], what: str) -> Header | None:
    """The sealed header at the start of `handle` (left just after it), or None for a plain file (left at 0)."""
    head = handle.read(_FIXED)
    if not is_sealed(head):
        handle.seek(0)
        return None
    if len(head) < _FIXED or head[len(MAGIC)] != VERSION:
        raise TamperedError(f"{what} starts as a sealed file but its header is cut short or of an unknown version "
                            f"({head[len(MAGIC):len(MAGIC) + 1].hex() or 'none'}): restore it")
    rest = handle.read(head[-1] + 4 + 8 + 8 + TAG)
    if len(rest) != head[-1] + 4 + 8 + 8 + TAG:
        raise TamperedError(f"{what}: its sealed header is cut short: restore it")
    n = head[-1]
    ref = rest[:n].decode(errors="replace")
    raw = head + rest[:n + 20]
    return Header(ref, int.from_bytes(rest[n:n + 4], "big"), int.from_bytes(rest[n + 4:n + 12], "big"),
                  rest[n + 12:n + 20], raw, rest[n + 20:])


def key_ref_of(path: Path) -> str | None:
    """The data key a stored file is sealed under (from its header), or None for a plain file."""
    with path.open("rb") as handle:
        header = read_header(handle, str(path))
    return None if header is None else header.ref


class SealedReader(io.RawIOBase):
    """A sealed file read as its plaintext: seekable, each 1 MiB segment decrypted (and authenticated) when a
    read reaches it. Errors name the file and the key."""

    def __init__(self, raw: IO[bytes], header: Header, key: bytes, what: str, source: str) -> None:
        super().__init__()
        self.raw, self.header, self.what = raw, header, what
        self.aead, self.position, self.cached = AESGCM(key), 0, (-1, b"")
        self.count = _segments(header.size, header.segment)
        try:
            self.aead.decrypt(header.prefix + b"\xff\xff\xff\xff", header.check, header.raw)
        except InvalidTag:
            raise SealError(f"{what} does not open with its data key {header.ref} (unwrapped with the master key "
                            f"from {source}): the wrong master key, or a key_ref that is not this file's") from None
        expected = header.length + header.size + TAG * self.count
        actual = os.fstat(raw.fileno()).st_size if hasattr(raw, "fileno") and _has_fileno(raw) else None
        if actual is not None and actual != expected:
            raise TamperedError(f"{what} is {actual} bytes, but its sealed header says {expected}: it was cut short "
                                "or appended to; restore it")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.raw.fileno()

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.header.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def _segment(self, index: int) -> bytes:
        if self.cached[0] != index:
            plain = self.header.segment
            self.raw.seek(self.header.length + index * (plain + TAG))
            length = min(plain, self.header.size - index * plain) + TAG
            sealed = self.raw.read(length)
            last = index == self.count - 1
            try:
                data = self.aead.decrypt(self.header.prefix + index.to_bytes(4, "big"), sealed,
                                         _segment_ad(self.header.raw, index, last))
            except InvalidTag:
                raise TamperedError(f"{self.what}: segment {index} of its sealed bytes does not authenticate under "
                                    f"its data key {self.header.ref}: the file was modified or corrupted; restore it "
                                    "or retrain") from None
            self.cached = (index, data)
        return self.cached[1]

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self.position < self.header.size:
            index, start = divmod(self.position, self.header.segment)
            data = self._segment(index)[start:start + len(out) - done]
            out[done:done + len(data)] = data
            done += len(data)
            self.position += len(data)
        return done

    def readall(self) -> bytes:
        out = bytearray()
        while self.position < self.header.size:
            index, start = divmod(self.position, self.header.segment)
            data = self._segment(index)[start:]
            out += data
            self.position += len(data)
        return bytes(out)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _has_fileno(raw: IO[bytes]) -> bool:
    try:
        raw.fileno()
    except (OSError, io.UnsupportedOperation):
        return False
    return True


WHOLE_BYTES = 256 << 20  # a sealed file up to this size is opened whole into memory (each segment decrypted once)


class _Opened(io.BytesIO):
    """A sealed file's plaintext, opened whole: read at memory speed, its file descriptor still the file's own (so
    `VerifiedFile.confirm_unchanged` sees a file rewritten since), closed with it."""

    def __init__(self, data: bytes, raw: IO[bytes]) -> None:
        super().__init__(data)
        self.raw = raw

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
        super().close()


def plain_reader(handle: IO[bytes], what: str, keyring: Keyring | None) -> IO[bytes]:
    """`handle` read as its plaintext: itself for a plain file; for a sealed one, its plaintext opened whole when
    small enough (WHOLE_BYTES), else a SealedReader that decrypts a segment when a read reaches it."""
    header = read_header(handle, what)
    if header is None:
        return handle
    ring = _need(keyring, what, header.ref)
    reader = SealedReader(handle, header, ring.get(header.ref, what), what, ring.source)
    if header.size <= WHOLE_BYTES and _has_fileno(handle):
        plaintext = reader.readall()
        reader.raw = io.BytesIO()  # the reader is dropped: closing it must not close the file `_Opened` keeps
        return _Opened(plaintext, handle)
    return reader  # type: ignore[return-value]


def open_plain(path: Path, keyring: Keyring | None) -> IO[bytes]:
    """A stored file, open for reading as its plaintext (plain or sealed)."""
    handle = path.open("rb")
    try:
        return plain_reader(handle, str(path), keyring)
    except BaseException:
        handle.close()
        raise


def read_plain(path: Path, keyring: Keyring | None) -> bytes:
    """A stored file's plaintext, whole."""
    with open_plain(path, keyring) as handle:
        return handle.read()


def open_bytes(data: bytes, what: str, keyring: Keyring | None) -> bytes:
    """Bytes read from a stored file (or the team store), as their plaintext."""
    return plain_reader(io.BytesIO(data), what, keyring).read()


# --- database values ---------------------------------------------------------------------------------------


def seal_value(value: Any, ref: str, key: bytes, context: str) -> bytes:
    """A JSON-able value sealed for a bytea column; `context` (the row's identity) is bound as associated data,
    so a sealed value copied to another row does not open."""
    nonce = os.urandom(12)
    plain = json.dumps(value, default=str, separators=(",", ":")).encode()
    return _VALUE_VERSION + nonce + AESGCM(key).encrypt(nonce, plain, f"{ref}|{context}".encode())


def open_value(sealed: bytes, ref: str, keyring: Keyring | None, context: str, what: str) -> Any:
    """A value `seal_value` sealed; errors name `what` (table and row) and the key."""
    ring = _need(keyring, what, ref)
    key = ring.get(ref, what)
    data = bytes(sealed)
    if data[:1] != _VALUE_VERSION:
        raise TamperedError(f"{what}: its sealed value is of an unknown version ({data[:1].hex()})")
    try:
        plain = AESGCM(key).decrypt(data[1:13], data[13:], f"{ref}|{context}".encode())
    except InvalidTag:
        raise TamperedError(f"{what}: its sealed value does not open under data key {ref} (master key from "
                            f"{ring.source}): it was modified, moved from another row, or the key is wrong") from None
    return json.loads(plain)


@dataclass(frozen=True)
class ValueSealer:
    """Seals database values under one data key (`Keyring.sealer`)."""

    ref: str
    key: bytes

    def seal(self, value: Any, context: str) -> bytes:
        return seal_value(value, self.ref, self.key, context)


_warned: set[str] = set()


def warn_plain_once(where: str) -> None:
    """Log, once per process, that encryption at rest is off (`security.encrypt_at_rest: false`)."""
    if "plain" not in _warned:
        _warned.add("plain")
        log.warning("ENCRYPTION AT REST IS OFF (security.encrypt_at_rest: false in %s): snapshots, models, reports "
                    "and the quarantine's patient values are written in plain form", where)
