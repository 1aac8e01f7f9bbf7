"""`python -m pipeline migrate-store`: a champion trained with the local store only (its registry naming absolute
paths of this machine, as before relative paths), moved into the team store; a worker with an empty cache then
reaches every file the registry names, and a second run changes nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.registry.store_paths import PATH_COLUMNS, migrate_store
from pipeline.store import artifacts
from pipeline.workspace import Workspace
from tests.commands import Cli, output
from tests.integration.stage_runs import promote_demo_champion, quick_workspace

pytestmark = pytest.mark.timeout(600)


def recorded_paths(ws: Workspace) -> dict[str, list[str]]:
    with ws.engine.connect() as conn:
        return {f"{table}.{column}": sorted(conn.scalars(sa.text(
            f"SELECT {column} FROM pipeline.{table} WHERE {column} IS NOT NULL")).all()) for table, column in PATH_COLUMNS}


def as_absolute(ws: Workspace, root: Path) -> None:
    """The registry as an older version wrote it: every path absolute, on this machine (append-only tables too;
    cards and reports are recorded so still)."""
    with ws.engine.begin() as conn:
        for table, column in PATH_COLUMNS:
            conn.execute(sa.text(f"ALTER TABLE pipeline.{table} DISABLE TRIGGER USER"))
            conn.execute(sa.text(f"UPDATE pipeline.{table} SET {column} = :root || '/' || {column} "
                                 f"WHERE {column} NOT LIKE '/%'"), {"root": str(root)})
            conn.execute(sa.text(f"ALTER TABLE pipeline.{table} ENABLE TRIGGER USER"))


def test_migrate_store_copies_local_artifacts_and_rewrites_their_paths(ws: Workspace, cli: Cli, tmp_path: Path) -> None:
    ws = quick_workspace(ws)
    assert ws.settings.artifact_store == "local"
    champion = promote_demo_champion(ws)["candidate"]
    root = ws.settings.artifact_dir
    as_absolute(ws, root)
    before = recorded_paths(ws)
    assert before["model_versions.artifact_path"] and before["model_cards.path"] and before["snapshots.path"]
    assert all(Path(p).is_absolute() for paths in before.values() for p in paths)

    moved = migrate_store(ws.engine, root, ws.keyring, ws.config.security.encrypt_at_rest)
    assert not moved.missing and not moved.skipped
    after = recorded_paths(ws)
    assert after == {key: sorted(str(Path(p).relative_to(root)) for p in paths) for key, paths in before.items()}
    assert sum(moved.rewritten.values()) == sum(len(paths) for paths in before.values())
    assert len(moved.copied) == len({p for paths in after.values() for p in paths})

    # A worker on another machine: the team store, an empty cache. Every file the registry names is reachable.
    elsewhere = Workspace.open(dataclasses.replace(ws.settings, artifact_store="postgres",
                                                   artifact_dir=tmp_path / "other-machine"))
    assert elsewhere.load_model(champion["artifact_hash"]).predict is not None
    for paths in after.values():
        for recorded in paths:
            copy = artifacts.recorded_copy(elsewhere.store, recorded)
            kind, name = Path(recorded).parts
            artifacts.verify_file(copy, Path(name).stem, elsewhere.keyring)
            assert copy.is_relative_to(tmp_path / "other-machine"), kind

    # Only the path's form may change in an append-only table, and only to the store's form of the same file.
    with pytest.raises(sa.exc.DBAPIError, match="append-only: UPDATE refused"), ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE pipeline.model_versions SET artifact_path = 'models/' || repeat('0', 64) "
                             "|| '.joblib'"))

    again = output(cli("migrate-store", "--json"))  # the CLI, on the same database and folder: nothing to do
    assert (again["copied"], again["rewritten"], again["missing"]) == ([], {}, [])
    assert again["in_store"] == sum(len(set(paths)) for paths in after.values())
    assert recorded_paths(ws) == after
