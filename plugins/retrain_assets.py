"""The models the DAGs are made for, the Asset that starts each one's retrain, and the one its champion
changes emit.

Each model config (PIPELINE_CONFIG, plus every *.yaml in PIPELINE_MODELS_DIR) gets its own
`retrain`, `monitor_drift`, `monitor_performance`, `set_champion` (and its old id `rollback`) and
`score_patients` DAGs and its own assets; the primary config's
keep the plain ids (`retrain`, `labelled_patient_records`, `champion_model`), the others carry the model name.
Parsing reads only each file's `model:` name: pipeline.contract.config and pipeline.contract.settings import no
heavy library.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Asset, AssetWatcher
from arrival_trigger import NewLabelledRowsTrigger

from pipeline.contract.config import ModelEntry, model_entries
from pipeline.contract.settings import Settings


def models() -> list[ModelEntry]:
    """Every model config, the primary one first."""
    settings = Settings.from_env()
    return model_entries(settings.config_path, settings.models_dir)


def labelled_records(model: ModelEntry) -> Asset:
    """The asset whose events start the model's retrain: arrivals (watched) and drift."""
    name = "labelled_patient_records" if model.primary else f"labelled_records__{model.name}"
    trigger = NewLabelledRowsTrigger(config_path=None if model.primary else str(model.config_path))
    return Asset(name=name, watchers=[AssetWatcher(name=f"new_labelled_rows__{model.name}", trigger=trigger)])


def champion_model(model: ModelEntry) -> Asset:
    """The asset a promotion or a rollback of the model's champion emits; it starts the batch scoring."""
    return Asset(name="champion_model" if model.primary else f"champion_model__{model.name}")


def manual_governance(model: ModelEntry, doc: str | None) -> dict[str, Any]:
    """The `@dag` arguments every manual governance DAG (set_champion, set_shadow) shares besides its schedule
    (None, stated at the DAG): one run at a time, tagged `governance` and the model, documented by its module."""
    return {"start_date": datetime(2026, 1, 1), "catchup": False, "max_active_runs": 1,
            "tags": ["governance", model.name], "doc_md": doc}
