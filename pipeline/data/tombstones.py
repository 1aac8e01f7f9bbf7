"""Tombstones of erased patients: a keyed hash (HMAC-SHA256) of each erased id, never the id.

The key lives in a file outside the artifact store (`PIPELINE_ERASURE_KEY_FILE`, made on first use with mode
0600), so neither the store nor a database dump can turn a tombstone back into an id by hashing candidates.
Ingest refuses a source row whose id hashes to a tombstone (counted as `erased_rows` on its snapshot); a row
the source re-adds under a new id is a new row.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

KEY_BYTES = 32
TOMBSTONES = "pipeline.erasure_tombstones"


def id_text(value: Any) -> str:
    """An id as the registry writes it (pipeline.quarantine.source_id, predictions.source_id): 17, not 17.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def load_key(path: Path) -> bytes:
    """The erasure key: read, or made on first use (random, mode 0600, never overwritten by a racing writer)."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_key(path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
        log.warning("erasure key made at %s (mode 0600): keep it outside the artifact store and back it up; "
                    "without it erased ids can no longer be refused at ingest", path)
        return load_key(path)
    if len(key) < KEY_BYTES:
        raise ValueError(f"erasure key {path} (PIPELINE_ERASURE_KEY_FILE) holds {len(key)} bytes, fewer than "
                         f"{KEY_BYTES}: restore the key file it was made as")
    return key


def tombstone(key: bytes, source_id: Any) -> str:
    """The keyed hash of one id, as hex."""
    return hmac.digest(key, id_text(source_id).encode(), "sha256").hex()


def known(conn: Connection) -> set[str]:
    """Every tombstone recorded (one per erased id)."""
    if conn.scalar(sa.text("SELECT to_regclass(:t)"), {"t": TOMBSTONES}) is None:
        return set()
    return set(conn.scalars(sa.text(f"SELECT tombstone FROM {TOMBSTONES}")).all())


def refuser(engine: Engine, key_file: Path) -> Callable[[pa.Array], np.ndarray] | None:
    """A function giving, for an Arrow column of ids, which are erased; None when nothing was ever erased
    (ingest then pays nothing)."""
    with engine.connect() as conn:
        stones = known(conn)
    if not stones:
        return None
    key = load_key(key_file)

    def erased(ids: pa.Array) -> np.ndarray:
        return np.fromiter((tombstone(key, v) in stones for v in ids.to_pylist()), dtype=bool, count=len(ids))

    return erased


def erased_among(key: bytes, stones: set[str], ids: Iterable[Any]) -> list[Any]:
    """The ids of `ids` that a tombstone names."""
    return [i for i in ids if tombstone(key, i) in stones]
