"""Where things live: the one settings object, built from the environment once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

ENV_DATABASE_URL = "PIPELINE_DATABASE_URL"
ENV_CONFIG = "PIPELINE_CONFIG"
ENV_ARTIFACT_DIR = "PIPELINE_ARTIFACT_DIR"
ENV_ARTIFACT_STORE = "PIPELINE_ARTIFACT_STORE"
ARTIFACT_STORES = ("local", "postgres")  # postgres: the artifact dir is this machine's cache of the team store
ENV_PGDATA = "PIPELINE_PGDATA"
ENV_MODELS_DIR = "PIPELINE_MODELS_DIR"
ENV_ERASURE_KEY_FILE = "PIPELINE_ERASURE_KEY_FILE"  # the key of erased ids' tombstones: outside the artifact store
ENV_KEY_FILE = "PIPELINE_KEY_FILE"  # the local master keys (security.key_file): one file every worker reaches
ENV_VIEW_URL = "PIPELINE_VIEW_URL"
VIEW_PATH = "/models-view"  # where plugins/models_view.py mounts the Models view in the Airflow UI


@dataclass(frozen=True)
class Settings:
    """Locations of the database, the configuration file and the artifact store.

    `database_url` is None when PIPELINE_DATABASE_URL is unset: the embedded PostgreSQL in
    `pgdata_dir` is used then (see `pipeline.store.db.database_url`).
    """

    database_url: str | None
    config_path: Path
    artifact_dir: Path
    pgdata_dir: Path
    models_dir: Path = PROJECT_ROOT / "models"  # more model configs (*.yaml), each with DAGs of its own
    artifact_store: str = "local"  # see ARTIFACT_STORES and `pipeline.store.artifacts.ArtifactStore`
    erasure_key_file: Path = PROJECT_ROOT / ".secrets" / "erasure.key"  # made on first use, mode 0600
    key_file: Path | None = None  # PIPELINE_KEY_FILE; None: security.key_file, else .secrets/master.key
    view_url: str = VIEW_PATH  # the Models view, as logs link reports (http://host:8080/models-view under Airflow)

    def __post_init__(self) -> None:
        if self.artifact_store not in ARTIFACT_STORES:
            raise ValueError(f"{ENV_ARTIFACT_STORE}={self.artifact_store!r} is not an artifact store; "
                             f"set it to one of: {', '.join(ARTIFACT_STORES)} (unset means local)")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=env.get(ENV_DATABASE_URL) or None,
            config_path=Path(env.get(ENV_CONFIG) or PROJECT_ROOT / "pipeline.yaml"),
            artifact_dir=Path(env.get(ENV_ARTIFACT_DIR) or PROJECT_ROOT / ".artifacts"),
            pgdata_dir=Path(env.get(ENV_PGDATA) or PROJECT_ROOT / ".pgdata"),
            models_dir=Path(env.get(ENV_MODELS_DIR) or PROJECT_ROOT / "models"),
            artifact_store=env.get(ENV_ARTIFACT_STORE) or "local",
            erasure_key_file=Path(env.get(ENV_ERASURE_KEY_FILE) or PROJECT_ROOT / ".secrets" / "erasure.key"),
            key_file=Path(env[ENV_KEY_FILE]) if env.get(ENV_KEY_FILE) else None,
            view_url=(env.get(ENV_VIEW_URL) or VIEW_PATH).rstrip("/"),
        )
