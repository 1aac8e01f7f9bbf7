"""Alerts from the DAGs' runs (dag.test, real PostgreSQL) to a real SMTP server and a real webhook started here:
a failed run with its kind, a refused Set champion, a new champion, drift; each told once; a delivery that fails
is logged and the run still succeeds."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from pipeline.contract.settings import ENV_CONFIG, PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.store import db
from tests.dags.test_run_notes import run_note
from tests.receivers import Received, alert_receivers
from tests.standalone import free_port


def _write_config(path: Path, webhook_url: str, smtp_port: int) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["training"].update(families={"ridge": {"alpha": 1.0}}, cv_folds=3)
    raw["alerts"] = {"webhook_url": webhook_url, "timeout_seconds": 5,
                     "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp_port, "sender": "pipeline@example.org",
                               "recipients": ["ops@example.org"]}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def received() -> Iterator[Received]:
    with alert_receivers() as got:
        yield got


@pytest.fixture(scope="module")
def alerting_dags(airflow_db: None, received: Received, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[dict[str, Any], Path]]:
    """The project's DAGs parsed for a config whose alerts go to this module's receivers."""
    from airflow.dag_processing.dagbag import DagBag

    config = _write_config(tmp_path_factory.mktemp("alerts") / "pipeline.yaml", received.webhook_url,
                           received.smtp_port)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_CONFIG, str(config))
        bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
        assert bag.import_errors == {}
        yield bag.dags, config


def _kinds(received: Received) -> list[str]:
    return [m["Subject"] for m in received.mails]


def test_alerts_from_runs_once_each(alerting_dags: tuple[dict[str, Any], Path], received: Received,
                                    pipeline_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    dags, config = alerting_dags
    monkeypatch.setenv(ENV_CONFIG, str(config))
    engine = db.create_engine(db.database_url(pipeline_env))
    demo.seed_demo(engine)

    failed = dags["score_patients"].test()  # no champion yet: a failure on the data
    assert failed.state == "failed"
    assert _kinds(received) == ["[diabetes_progression] score_patients failed (data)"]
    assert received.posts[0]["text"].startswith("[diabetes_progression] score_patients failed (data)\nrun "
                                                f"{failed.run_id}, task score_records: model 'diabetes_progression' "
                                                "has no champion")

    refused = dags["set_champion"].test(run_conf={"mode": "rollback", "to_version": None, "reason": "back"})
    assert refused.state == "failed"
    assert _kinds(received)[-1] == "[diabetes_progression] Set champion refused"
    assert "choose one in the form's Version field" in received.posts[-1]["text"]
    assert "--" not in received.posts[-1]["text"]

    assert dags["retrain"].test().state == "success"
    assert _kinds(received)[-1] == "[diabetes_progression] v1 is champion (the first champion)"

    demo.simulate_arrivals(engine, rows=60, seed=2, drift={"bmi": 4.0}, labelled=False)
    drifted = dags["monitor_drift"].test()
    assert drifted.state == "success"
    assert (run_note("monitor_drift", drifted.run_id) or "").startswith("drift in bmi (PSI ")
    assert _kinds(received)[-1] == "[diabetes_progression] drift in bmi"
    told = len(received.mails)

    again = dags["monitor_drift"].test()  # the same drift, the same champion: told already
    assert again.state == "success" and len(received.mails) == len(received.posts) == told == 4

    # the webhook is down: the e-mail goes, the failure is logged and recorded, the run succeeds
    _write_config(config, f"http://127.0.0.1:{free_port()}/hook", received.smtp_port)
    demo.simulate_arrivals(engine, rows=60, seed=3, drift={"bmi": 4.0, "glucose": 60.0}, labelled=False)
    with caplog.at_level(logging.WARNING, logger="pipeline.monitoring.alerts"):
        unreachable = dags["monitor_drift"].test()
    assert unreachable.state == "success"
    assert _kinds(received)[-1].startswith("[diabetes_progression] drift in ") and len(received.posts) == told
    assert any("the webhook could not be delivered" in r.getMessage() for r in caplog.records)
    with engine.connect() as conn:
        delivered = conn.execute(sa.text("SELECT kind, delivered FROM pipeline.alerts_sent ORDER BY sent_at")).all()
    assert [k for k, _ in delivered] == ["failed_run", "refused_promotion", "new_champion", "drift_alarm",
                                         "drift_alarm"]
    assert delivered[-1][1]["email"] == "sent" and delivered[-1][1]["webhook"].startswith("failed: ")
    engine.dispose()


def test_a_degraded_champion_is_told_once_by_a_monitor_run(alerting_dags: tuple[dict[str, Any], Path],
                                                            received: Received, pipeline_env: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.workspace import Workspace
    from tests.integration.test_performance import add_records, degraded_history, register_versions

    dags, config = alerting_dags
    _write_config(config, received.webhook_url, received.smtp_port)  # live receivers (an earlier test may break one)
    monkeypatch.setenv(ENV_CONFIG, str(config))
    ws = Workspace.open(Settings.from_env())  # this test's database, the alerting config
    version, = register_versions(ws, [10.0], champion=0)
    ids = list(range(8001, 8061))
    add_records(ws, ids)
    degraded_history(ws, ids, version, spread=25.0)  # live RMSE far above the holdout's 10.0
    mails, posts = len(received.mails), len(received.posts)

    first = dags["monitor_performance"].test()

    assert first.state == "success"
    subject = f"[diabetes_progression] champion v{version} is degraded"
    assert _kinds(received)[mails:] == [subject]
    [post] = received.posts[posts:]
    assert post["text"].startswith(subject) and "live RMSE" in post["text"]

    again = dags["monitor_performance"].test()  # the same champion, the same evidence: told already

    assert again.state == "success"
    assert len(received.mails) == mails + 1 and len(received.posts) == posts + 1
    with ws.engine.connect() as conn:
        kinds = conn.execute(sa.text("SELECT kind FROM pipeline.alerts_sent ORDER BY sent_at")).scalars().all()
    assert kinds == ["degraded_champion"]
    ws.engine.dispose()
