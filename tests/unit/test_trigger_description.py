"""How a retrain run was started: the short label on the run and the full record kept with it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.stages import describe_trigger


def arrival_event(new_rows: int = 60) -> dict[str, Any]:
    """An asset event from the arrival watcher: Airflow nests the trigger's payload under extra."""
    return {"asset": {"name": "labelled_patient_records"}, "source_dag_id": None,
            "extra": {"from_trigger": True,
                      "payload": {"source": "arrival", "signal_id": 3, "new_rows": new_rows,
                                  "since": "2026-07-01T00:00:00+00:00", "up_to": "2026-11-22T10:00:00+00:00"}}}


def drift_event() -> dict[str, Any]:
    """An asset event from the drift monitor's request_retrain task."""
    return {"asset": {"name": "labelled_patient_records"}, "source_dag_id": "monitor_drift",
            "extra": {"source": "drift", "drift_run_id": "scheduled__2026-11-22T10:00:00+00:00",
                      "drifted_features": ["bmi"]}}


def other_event() -> dict[str, Any]:
    """An asset event from somebody else's DAG or the API, with no source of ours."""
    return {"asset": {"name": "labelled_patient_records"}, "source_dag_id": "etl", "extra": {}}


@pytest.mark.parametrize(("run_type", "user", "label"), [
    ("scheduled", None, "schedule"),
    ("manual", "alice", "operator:alice"),
    ("manual", None, "operator"),
    ("manual", "", "operator"),
    ("backfill", None, "backfill"),
    ("scheduled", "alice", "schedule"),  # a user only names who pressed Trigger
])
def test_label_of_a_run_not_started_by_an_asset(run_type: str, user: str | None, label: str) -> None:
    assert describe_trigger(run_type, user, [])[0] == label


@pytest.mark.parametrize(("events", "label"), [
    ([arrival_event()], "arrival"),
    ([drift_event()], "drift"),
    ([arrival_event(), drift_event()], "arrival+drift"),
    ([drift_event(), arrival_event()], "arrival+drift"),
    ([arrival_event(50), arrival_event(70)], "arrival"),
    ([other_event()], "asset"),
    ([{"extra": None}], "asset"),
    ([{"extra": {"from_trigger": True, "payload": None}}], "asset"),
    ([other_event(), drift_event()], "asset+drift"),
    ([], "asset"),
])
def test_label_of_an_asset_triggered_run(events: list[dict[str, Any]], label: str) -> None:
    assert describe_trigger("asset_triggered", None, events)[0] == label


def test_full_record_keeps_run_type_user_and_every_event() -> None:
    events = [arrival_event(), drift_event()]

    label, record = describe_trigger("asset_triggered", None, events)

    assert label == "arrival+drift"
    assert record == {"run_type": "asset_triggered", "user": None, "asset_events": events}
    assert record["asset_events"][0]["extra"]["payload"]["new_rows"] == 60
    assert record["asset_events"][1]["extra"]["drifted_features"] == ["bmi"]
    assert json.loads(json.dumps(record)) == record  # stored as jsonb on the run


def test_full_record_of_a_manual_run() -> None:
    assert describe_trigger("manual", "alice", []) == (
        "operator:alice", {"run_type": "manual", "user": "alice", "asset_events": []})
