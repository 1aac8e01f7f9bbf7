"""The PKCS#11 key manager: AES master keys generated on a token (an HSM; SoftHSM2 in tests), never extractable.

A data key is wrapped by AES-256-GCM on the token (12-byte nonce, the master key id as associated data), so a
wrong key or damaged bytes fail the tag check instead of giving garbage. Master keys carry the label
`<key_label>/<id>`; ids sort by creation time, and the newest is current. Imported only when
`security.key_manager: pkcs11`, so the local manager does not need python-pkcs11 loaded.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.mechanisms import GCMParams

from pipeline.contract.config import Pkcs11Policy
from pipeline.store.keys import KeyManagerUnreachable, KeyUnavailable, NoMasterKey, refuse_open_mode

NONCE_BYTES = 12


@dataclass
class Pkcs11KeyManager:
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
        where = f"PKCS#11 module {self.policy.module}, token {self.policy.token_label!r}"
        try:
            lib = pkcs11.lib(str(self.policy.module))
            token = lib.get_token(token_label=self.policy.token_label)
            session = token.open(user_pin=self._pin(), rw=True)
        except KeyUnavailable:
            raise
        except (PKCS11Error, OSError, RuntimeError) as exc:
            raise KeyManagerUnreachable(f"{where} cannot be opened ({type(exc).__name__}: {exc}): the key manager "
                                        "is down or misconfigured; the run is retried", source=self.source) from exc
        try:
            yield session
        finally:
            session.close()

    def _keys(self, session: Any) -> dict[str, Any]:
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
        key_id = "mk-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f") + "-" + secrets.token_hex(2)
        with self._session() as session:
            session.generate_key(KeyType.AES, 256, label=f"{self.policy.key_label}/{key_id}", id=key_id.encode(),
                                 store=True, template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        return key_id
