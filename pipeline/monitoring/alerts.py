"""Alerts: tell people when something happens, once per event, by e-mail and/or a webhook (`alerts:` in the config).

The events are `ALERT_EVENTS`: a failed run (with its failure kind), a degraded champion, a drift alarm, a refused
promotion and a new champion. Each `Alert` carries a key naming its event; `send` claims the key in
`pipeline.alerts_sent` first (its primary key), so a rerun, a retried task or the next monitor run on the same
event sends nothing again. A delivery that fails is logged and recorded, never raised: an alert never fails a run.
The builders word each event from plain data; the DAGs send through an Airflow notifier (`plugins/alerting.py`).
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.contract.config import AlertPolicy, EmailAlerts

log = logging.getLogger(__name__)

ENV_SMTP_PASSWORD = "PIPELINE_SMTP_PASSWORD"


@dataclass(frozen=True)
class Alert:
    """One event to tell: its kind (one of ALERT_EVENTS), the key that makes it one event, and the words."""

    kind: str
    key: str
    model: str
    subject: str
    text: str

    def message(self) -> str:
        return f"{self.subject}\n{self.text}" if self.text else self.subject


def send(engine: Engine, policy: AlertPolicy, alert: Alert) -> dict[str, str] | None:
    """Deliver `alert` to every configured channel once: None when alerts are off, the event kind is not wanted
    or the event was already told; else each channel's outcome ("sent" or the error), also recorded."""
    if not policy.enabled or alert.kind not in policy.events:
        return None
    if not _claim(engine, alert):
        log.info("alert %s: already sent", alert.key)
        return None
    delivered: dict[str, str] = {}
    if policy.email is not None:
        delivered["email"] = _attempt("e-mail", alert, lambda: _email(policy.email, alert, policy.timeout_seconds))
    if policy.webhook_url is not None:
        url = policy.webhook_url
        delivered["webhook"] = _attempt("webhook", alert, lambda: _webhook(url, alert, policy.timeout_seconds))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE pipeline.alerts_sent SET delivered = CAST(:d AS jsonb) WHERE event_key = :k"),
                     {"d": json.dumps(delivered), "k": alert.key})
    return delivered


def _claim(engine: Engine, alert: Alert) -> bool:
    with engine.begin() as conn:
        return conn.execute(sa.text("""
            INSERT INTO pipeline.alerts_sent (event_key, kind, model, message) VALUES (:key, :kind, :model, :message)
            ON CONFLICT (event_key) DO NOTHING RETURNING event_key
        """), {"key": alert.key, "kind": alert.kind, "model": alert.model, "message": alert.message()}).first() \
            is not None


def _attempt(channel: str, alert: Alert, deliver: Any) -> str:
    try:
        deliver()
    except Exception as exc:  # noqa: BLE001 - a delivery that fails is logged and recorded, never fails the run
        log.warning("alert %s: the %s could not be delivered: %s", alert.key, channel, exc)
        return f"failed: {type(exc).__name__}: {exc}"
    log.info("alert %s: %s sent", alert.key, channel)
    return "sent"


def _email(email: EmailAlerts, alert: Alert, timeout: float) -> None:
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = alert.subject, email.sender, ", ".join(email.recipients)
    message.set_content(alert.message())
    with smtplib.SMTP(email.smtp_host, email.smtp_port, timeout=timeout) as smtp:
        if email.starttls:
            smtp.starttls()
        if email.username:
            smtp.login(email.username, os.environ.get(ENV_SMTP_PASSWORD, ""))
        smtp.send_message(message)


def _webhook(url: str, alert: Alert, timeout: float) -> None:
    """A Slack- or Teams-compatible incoming webhook: a JSON POST of {"text": ...}; any 2xx answer is delivery."""
    request = urllib.request.Request(url, data=json.dumps({"text": alert.message()}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the operator's configured URL
        answer.read()


# --- the events ----------------------------------------------------------------------------------

def failed_run(model: str, dag_id: str, run_id: str, task_id: str, kind: str, line: str) -> Alert:
    """A DAG run failed: one alert per run, however many of its tasks fail or are retried."""
    return Alert("failed_run", f"failed_run:{dag_id}:{run_id}", model, f"[{model}] {dag_id} failed ({kind})",
                 f"run {run_id}, task {task_id}: {line}")


def refused_promotion(model: str, dag_id: str, run_id: str, line: str) -> Alert:
    """A Set champion run was refused; the champion is unchanged."""
    return Alert("refused_promotion", f"refused_promotion:{dag_id}:{run_id}", model,
                 f"[{model}] Set champion refused", f"run {run_id}: {line}; the champion is unchanged")


def new_champion(model: str, version: int, replaced: int | None, how: str, reason: str, run_id: str) -> Alert:
    """A version became champion (a promotion by a retrain, or a Set champion run): one alert per change."""
    was = f"replacing v{replaced}" if replaced is not None else "the first champion"
    return Alert("new_champion", f"new_champion:{model}:{run_id}:v{version}", model,
                 f"[{model}] v{version} is champion ({was})", f"{how} by run {run_id}: {reason}")


def degraded_champion(model: str, result: dict[str, Any]) -> Alert | None:
    """The performance monitor judged the champion degraded: one alert per champion version."""
    if result.get("verdict") != "degraded":
        return None
    version = result.get("champion_version") or result.get("version")
    return Alert("degraded_champion", f"degraded_champion:{model}:v{version}", model,
                 f"[{model}] champion v{version} is degraded", str(result.get("reason") or ""))


def drift_alarm(model: str, result: dict[str, Any], champion_version: int | None) -> Alert | None:
    """The drift monitor found drift: one alert per champion version and set of drifted features."""
    if result.get("verdict") != "drift":
        return None
    features = sorted(result.get("drifted_features") or [])
    return Alert("drift_alarm", f"drift_alarm:{model}:v{champion_version}:{','.join(features)}", model,
                 f"[{model}] drift in {', '.join(features)}",
                 f"run {result['run_id']}: {len(features)} feature(s) drifted on {result.get('recent_rows')} recent "
                 f"records against champion v{champion_version}'s training rows; a retrain was requested")
