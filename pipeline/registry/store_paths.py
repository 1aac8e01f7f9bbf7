"""Moving a machine's artifacts into the team store: every file the registry names is copied into
pipeline.artifact_objects, and its recorded path becomes the store's own form, <kind>/<sha256><suffix>, which
every worker resolves through its cache (`artifacts.recorded_copy`). Safe to run twice: what is there already is
left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.store import artifacts
from pipeline.store.crypto import Keyring

# Every registry column holding a stored file's path (sql/): table, column.
PATH_COLUMNS = (("snapshots", "path"), ("validation_results", "report_path"), ("model_versions", "artifact_path"),
                ("drift_reports", "report_path"), ("performance_reports", "report_path"), ("model_cards", "path"))
_STORE_FILE = re.compile(r"(?:^|.*/)(?P<kind>[a-z]+)/(?P<digest>[0-9a-f]{64})(?P<suffix>\.[a-z]+)$")


@dataclass
class Migration:
    copied: list[str] = field(default_factory=list)  # <kind>/<digest><suffix> put in the team store now
    in_store: int = 0  # files the team store had already
    rewritten: dict[str, int] = field(default_factory=dict)  # table.column -> rows whose path changed
    missing: list[str] = field(default_factory=list)  # table.column: path, found nowhere
    skipped: list[str] = field(default_factory=list)  # table.column: path that names no stored file


def store_form(recorded: str) -> tuple[str, str, str] | None:
    """(kind, digest, suffix) of a recorded path that names a stored file, wherever it was; else None."""
    match = _STORE_FILE.match(recorded.replace("\\", "/"))
    if match is None or artifacts.SUFFIXES.get(match["kind"]) != match["suffix"]:
        return None
    return match["kind"], match["digest"], match["suffix"]


def in_team_store(engine: Engine, digest: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(sa.text(f"SELECT 1 FROM {artifacts.TEAM_TABLE} WHERE digest = :d"), {"d": digest}))


def migrate_store(engine: Engine, root: Path, keyring: Keyring | None = None, encrypt: bool = False) -> Migration:
    """Copy every file the registry names (an absolute path, or one relative to `root`, this machine's artifact
    folder) into the team store, checked against its hash, then record its path in the store's form. Sealed files
    open with `keyring`; the team store's copies are sealed under it when `encrypt`."""
    result = Migration()
    store = artifacts.ArtifactStore(root, engine, keyring, encrypt and keyring is not None)
    for table, column in PATH_COLUMNS:
        with engine.connect() as conn:
            paths = conn.scalars(sa.text(f"SELECT DISTINCT {column} FROM pipeline.{table} "
                                         f"WHERE {column} IS NOT NULL")).all()
        for recorded in paths:
            where = f"pipeline.{table}.{column}: {recorded}"
            found = store_form(recorded)
            if found is None:
                result.skipped.append(where)
                continue
            kind, digest, suffix = found
            relative = f"{kind}/{digest}{suffix}"
            if in_team_store(engine, digest):
                result.in_store += 1
            else:
                local = next((p for p in (root / recorded, root / relative) if p.is_file()), None)
                if local is None:
                    result.missing.append(where)
                    continue
                artifacts.store_bytes(store, kind, artifacts.read_verified(local, digest, artifacts.store_keys(store)), suffix)
                result.copied.append(relative)
            if recorded != relative:
                with engine.begin() as conn:
                    changed = conn.execute(sa.text(f"UPDATE pipeline.{table} SET {column} = :new "
                                                   f"WHERE {column} = :old"), {"new": relative, "old": recorded})
                key = f"{table}.{column}"
                result.rewritten[key] = result.rewritten.get(key, 0) + changed.rowcount
    return result
