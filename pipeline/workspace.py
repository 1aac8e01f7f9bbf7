"""What every stage reaches: the settings, the model's configuration, the database and the artifact store.

A `Workspace` holds no stage logic. Opening one loads the configuration, connects to the database (starting the
embedded one if needed), applies the schema and checks the declared formats against the source table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import Engine

from pipeline.contract.config import PipelineConfig, load_config
from pipeline.contract.settings import Settings
from pipeline.data import ingest
from pipeline.registry import records
from pipeline.store import artifacts, crypto, db


@dataclass(frozen=True)
class Workspace:
    settings: Settings
    config: PipelineConfig
    engine: Engine

    @classmethod
    def open(cls, settings: Settings) -> Workspace:
        """Load the configuration and connect to the database (starting the embedded one if needed)."""
        config = load_config(settings.config_path)
        engine = db.create_engine(db.database_url(settings), config.database)
        db.ensure_schema(engine)
        present = ingest.source_column_types(engine, config.dataset)
        if present is not None:  # a table still to be created is named when ingest first reads it
            ingest.check_declared_formats(config.dataset, present)
        return cls(settings, config, engine)

    @classmethod
    def for_config(cls, config_path: Path) -> Workspace:
        """A Workspace from the environment's settings, for the model config at `config_path`."""
        return cls.open(replace(Settings.from_env(), config_path=Path(config_path)))

    @property
    def model(self) -> str:
        return self.config.model

    @cached_property
    def keyring(self) -> crypto.Keyring:
        """The data keys, through the key manager `security.key_manager` names (opened on first use: a store
        that meets no sealed file and writes none never needs it). Never derived from the artifact folder, so
        every worker reaches the same key source."""
        from pipeline.store import keys

        return crypto.Keyring(self.engine, lambda: keys.open_key_manager(self.settings, self.config))

    @cached_property
    def store(self) -> artifacts.ArtifactStore:
        """The artifact store: the local folder, and the team store in this database when configured; new files
        sealed when `security.encrypt_at_rest` (the default), plain and loudly logged when not."""
        encrypt = self.config.security.encrypt_at_rest
        if not encrypt:
            crypto.warn_plain_once(str(self.settings.config_path))
        return artifacts.artifact_store(self.settings, self.engine, self.keyring, encrypt)

    def snapshot_path(self, snapshot_hash: str) -> Path:
        """A stored snapshot's file on this machine (fetched from the team store when it is not here yet)."""
        return artifacts.local_copy(self.store, "snapshots", snapshot_hash)

    def load_snapshot(self, snapshot_hash: str, columns: list[str] | None = None) -> Any:
        """A stored snapshot as a frame (every column, or `columns`), found by its hash in the configured store
        and checked against it; a snapshot an erasure rewrote is read as its redacted copy (`live_snapshot`)."""
        live = self.live_snapshot(snapshot_hash)
        return ingest.load_snapshot(self.snapshot_path(live), live, columns, self.store.keyring)

    def live_snapshot(self, snapshot_hash: str) -> str:
        """The snapshot that stands for `snapshot_hash` now: itself, or the copy an erasure rewrote it as
        (the old file is shredded; `pipeline.snapshot_redactions` records old -> new)."""
        with self.engine.connect() as conn:
            return records.live_snapshot_hash(conn, snapshot_hash)

    def load_model(self, artifact_hash: str) -> Any:
        """A stored model, found by its hash in the configured store; unpickled from the very bytes checked."""
        return artifacts.load_model(artifacts.local_copy(self.store, "models", artifact_hash),
                                    artifact_hash, self.store.keyring)

    def relative(self, path: Path | str) -> str:
        return artifacts.relative_path(self.settings.artifact_dir, Path(path))

    def report_url(self, run_id: str, kind: str) -> str:
        """Where the Models view shows a run's report (`kind`: quality, drift, performance...): logs link it."""
        return f"{self.settings.view_url}/{quote(self.model, safe='')}/runs/{quote(run_id, safe='')}/{kind}"
