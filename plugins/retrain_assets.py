"""The Asset that starts a retrain, shared by the `retrain` and `monitor_drift` DAGs."""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher
from arrival_trigger import NewLabelledRowsTrigger

LABELLED_RECORDS = Asset(
    name="labelled_patient_records",
    watchers=[AssetWatcher(name="new_labelled_rows", trigger=NewLabelledRowsTrigger())],
)
