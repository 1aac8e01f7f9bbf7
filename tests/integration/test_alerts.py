"""Alerts delivered to a real SMTP server and a real webhook, once per event; a failed delivery is logged only."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from pipeline.contract.config import ALERT_EVENTS, AlertPolicy, EmailAlerts
from pipeline.monitoring import alerts
from pipeline.workspace import Workspace
from tests.receivers import Received, alert_receivers
from tests.standalone import free_port


@pytest.fixture
def received() -> Iterator[Received]:
    with alert_receivers() as got:
        yield got


def _policy(received: Received, webhook_url: str | None = None) -> AlertPolicy:
    email = EmailAlerts(smtp_host="127.0.0.1", smtp_port=received.smtp_port, sender="pipeline@example.org",
                        recipients=("ops@example.org", "ml@example.org"))
    return AlertPolicy(email=email, webhook_url=webhook_url or received.webhook_url, timeout_seconds=5)


EVENTS = [
    alerts.failed_run("m", "retrain", "manual__1", "validate_snapshot", "data", "schema problem in suite 's'"),
    alerts.refused_promotion("m", "set_champion", "manual__2", "version 1 is already the champion of m"),
    alerts.new_champion("m", 2, 1, "promoted", "version 2 promoted: RMSE 46.9 -> 45.1", "manual__3"),
    alerts.degraded_champion("m", {"verdict": "degraded", "champion_version": 2, "reason": "live RMSE 2.4 x holdout"}),
    alerts.drift_alarm("m", {"verdict": "drift", "drifted_features": ["bmi"], "run_id": "d1", "recent_rows": 60}, 2),
]


def test_each_event_is_told_once_by_mail_and_webhook(ws: Workspace, received: Received) -> None:
    assert sorted(a.kind for a in EVENTS if a) == sorted(ALERT_EVENTS)
    policy = _policy(received)
    for alert in EVENTS:
        assert alert is not None
        assert alerts.send(ws.engine, policy, alert) == {"email": "sent", "webhook": "sent"}
    assert [m["Subject"] for m in received.mails] == [a.subject for a in EVENTS if a]
    assert received.mails[0]["To"] == "ops@example.org, ml@example.org"
    assert "validate_snapshot" in received.mails[0].get_payload()
    assert [p["text"] for p in received.posts] == [a.message() for a in EVENTS if a]
    assert {p["content_type"] for p in received.posts} == {"application/json"}

    for alert in EVENTS:  # the same events again: a rerun, a retried task, the next monitor run
        assert alert is not None and alerts.send(ws.engine, policy, alert) is None
    assert len(received.mails) == len(received.posts) == len(EVENTS)
    with ws.engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM pipeline.alerts_sent")) == len(EVENTS)


def test_quiet_verdicts_and_unwanted_kinds_send_nothing(ws: Workspace, received: Received) -> None:
    assert alerts.degraded_champion("m", {"verdict": "not_degraded"}) is None
    assert alerts.drift_alarm("m", {"verdict": "stable"}, 1) is None
    chosen = AlertPolicy(webhook_url=received.webhook_url, events=("failed_run",))
    assert alerts.send(ws.engine, chosen, alerts.new_champion("m", 2, 1, "promoted", "r", "x")) is None
    assert alerts.send(ws.engine, AlertPolicy(), alerts.failed_run("m", "d", "r", "t", "data", "x")) is None  # off
    assert received.posts == [] and received.mails == []


def test_a_delivery_that_fails_is_logged_and_never_raised(ws: Workspace, received: Received,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    alert = alerts.failed_run("m", "score_patients", "manual__9", "score_records", "infrastructure", "disk full")

    with caplog.at_level(logging.WARNING, logger="pipeline.monitoring.alerts"):
        delivered = alerts.send(ws.engine, _policy(received, webhook_url=dead), alert)

    assert delivered is not None and delivered["email"] == "sent" and delivered["webhook"].startswith("failed: ")
    assert any("alert failed_run:score_patients:manual__9: the webhook could not be delivered" in r.getMessage()
               for r in caplog.records)
    with ws.engine.connect() as conn:
        recorded = conn.scalar(sa.text("SELECT delivered FROM pipeline.alerts_sent WHERE event_key = :k"),
                               {"k": alert.key})
    assert recorded["webhook"].startswith("failed: ") and len(received.mails) == 1
