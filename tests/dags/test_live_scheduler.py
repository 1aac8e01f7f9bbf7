"""Retraining that starts by itself, observed through a real Airflow (scheduler, triggerer,
DAG processor, API server) started on the test PostgreSQL and driven through its REST API.

The tests run in order against one Airflow: each leaves the system as the next expects.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline.contract.settings import PROJECT_ROOT
from pipeline.data import demo
from tests.standalone import standalone_airflow, stored_bytes, stored_frame, wait_for

RUN_TIMEOUT = 420  # a guard against a hung run, not a timing: generous so that a busy machine does not trip it
MIN_NEW_ROWS = 20
# The performance test fills in two batches of outcomes; together fewer than MIN_NEW_ROWS, so only the
# performance monitor (not the arrival watcher) can start a retrain.
OUTCOMES = 9
MIN_OUTCOMES = 8


@dataclass
class LiveAirflow:
    base_url: str
    token: str
    engine: sa.engine.Engine
    log_path: Path
    artifact_dir: Path
    env: dict[str, str]

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> requests.Response:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        response = self.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})
        response.raise_for_status()
        return sorted(response.json()["dag_runs"], key=lambda r: r["queued_at"] or "")

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return dict(response.json())

    def wait_until_finished(self, dag_id: str, run_id: str) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None
        return dict(wait_for(finished, RUN_TIMEOUT, f"{dag_id} run {run_id} to finish"))

    def wait_until_idle(self, dag_id: str) -> None:
        wait_for(lambda: all(r["state"] in ("success", "failed") for r in self.runs(dag_id)),
                  RUN_TIMEOUT, f"every {dag_id} run to finish")

    def training_run(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM pipeline.training_runs WHERE run_id = :r"),
                               {"r": run_id}).mappings().one()
        return dict(row)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.scalar(sa.text(sql), params)

    def cli(self, *args: str) -> str:
        """`python -m pipeline ARGS` against this Airflow's pipeline database and config."""
        done = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, env=self.env,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
        assert done.returncode == 0, f"pipeline {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        return done.stdout


def _test_config(tmp: Path) -> Path:
    """The shipped configuration with a fast watcher and a small arrival threshold."""
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["monitoring"].update(poll_seconds=1, min_new_rows=MIN_NEW_ROWS)
    raw["monitoring"]["performance"]["min_outcomes"] = MIN_OUTCOMES
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def live_airflow(server_url: str, tmp_path_factory: pytest.TempPathFactory,
                 starts_airflow: None) -> Iterator[LiveAirflow]:
    tmp = tmp_path_factory.mktemp("live-airflow")
    with standalone_airflow(server_url, tmp, _test_config(tmp)) as airflow:
        yield LiveAirflow(airflow.base_url, airflow.token, airflow.engine, airflow.log_path, airflow.artifact_dir,
                          airflow.env)


def _new_run(live: LiveAirflow, dag_id: str, after: set[str], run_type: str | None = None) -> dict[str, Any]:
    def appeared() -> dict[str, Any] | None:
        fresh = [r for r in live.runs(dag_id) if r["dag_run_id"] not in after
                 and (run_type is None or r["run_type"] == run_type)]
        return fresh[0] if fresh else None
    return dict(wait_for(appeared, RUN_TIMEOUT, f"a new {run_type or ''} {dag_id} run"))


def _run_ids(live: LiveAirflow, dag_id: str) -> set[str]:
    return {r["dag_run_id"] for r in live.runs(dag_id)}


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_unpausing_trains_a_first_champion(live_airflow: LiveAirflow) -> None:
    live_airflow.unpause("retrain")
    wait_for(lambda: live_airflow.scalar("SELECT count(*) FROM pipeline.champion"), RUN_TIMEOUT, "a champion")
    live_airflow.wait_until_idle("retrain")
    statuses = live_airflow.scalar("SELECT array_agg(DISTINCT status) FROM pipeline.training_runs")
    assert "promoted" in statuses and "failed" not in statuses


def test_arrival_of_new_labelled_rows_starts_a_retrain(live_airflow: LiveAirflow) -> None:
    before = _run_ids(live_airflow, "retrain")
    landed = datetime.now(UTC)
    ids = demo.simulate_arrivals(live_airflow.engine, rows=MIN_NEW_ROWS + 5, seed=11)

    run = _new_run(live_airflow, "retrain", before, run_type="asset_triggered")
    finished = live_airflow.wait_until_finished("retrain", run["dag_run_id"])
    record = live_airflow.training_run(run["dag_run_id"])

    assert finished["state"] == "success"
    assert finished["note"].startswith(record["status"])  # the scheduler's listener wrote the outcome
    assert record["triggered_by"] == "arrival"
    assert record["trigger_event"]["asset_events"][0]["extra"]["payload"]["new_rows"] >= len(ids)
    assert record["status"] in ("promoted", "kept")
    trained_rows = live_airflow.scalar(
        "SELECT row_count FROM pipeline.snapshots WHERE snapshot_hash = :h", h=record["snapshot_hash"])
    assert trained_rows == 442 + len(ids)
    print(f"\narrival -> retrain run start: {(_parse_time(finished['start_date']) - landed).total_seconds():.1f} s")


def test_a_manual_run_without_new_data_is_skipped(live_airflow: LiveAirflow) -> None:
    response = live_airflow.trigger("retrain", {})
    assert response.status_code == 200, response.text
    run = live_airflow.wait_until_finished("retrain", response.json()["dag_run_id"])
    record = live_airflow.training_run(run["dag_run_id"])

    assert run["state"] == "success"
    assert record["status"] == "skipped" and record["reason"].startswith("no new data")
    assert run["note"] == "skipped: no new data"
    assert record["triggered_by"].startswith("operator")
    assert live_airflow.scalar("SELECT count(*) FROM pipeline.model_versions WHERE run_id = :r", r=run["dag_run_id"]) == 0
    seconds = (_parse_time(run["end_date"]) - _parse_time(run["start_date"])).total_seconds()
    print(f"\nskipped run took {seconds:.1f} s")


def test_an_invalid_param_is_refused_before_the_run(live_airflow: LiveAirflow) -> None:
    before = _run_ids(live_airflow, "retrain")
    response = live_airflow.trigger("retrain", {"margin": 5})
    assert response.status_code == 400
    assert "margin" in response.text
    assert _run_ids(live_airflow, "retrain") == before


def test_batches_landing_during_a_run_are_trained_on_by_the_next(live_airflow: LiveAirflow) -> None:
    response = live_airflow.trigger("retrain", {"force": True})
    assert response.status_code == 200, response.text
    busy_run = response.json()["dag_run_id"]
    wait_for(lambda: live_airflow.run("retrain", busy_run)["state"] == "running", 60, "the forced run to start")
    before = _run_ids(live_airflow, "retrain")
    first = demo.simulate_arrivals(live_airflow.engine, rows=MIN_NEW_ROWS // 2 + 2, seed=21)
    second = demo.simulate_arrivals(live_airflow.engine, rows=MIN_NEW_ROWS // 2 + 2, seed=22)
    live_airflow.wait_until_finished("retrain", busy_run)

    busy_rows = live_airflow.scalar(
        "SELECT s.row_count FROM pipeline.training_runs r JOIN pipeline.snapshots s USING (snapshot_hash) "
        "WHERE r.run_id = :r", r=busy_run)
    next_run = _new_run(live_airflow, "retrain", before, run_type="asset_triggered")
    live_airflow.wait_until_finished("retrain", next_run["dag_run_id"])
    record = live_airflow.training_run(next_run["dag_run_id"])
    snapshot_path = live_airflow.scalar("SELECT path FROM pipeline.snapshots WHERE snapshot_hash = :h",
                                        h=record["snapshot_hash"])
    trained = stored_frame(live_airflow.env, live_airflow.engine, live_airflow.artifact_dir / snapshot_path)
    trained_ids = set(trained["patient_id"])
    assert set(first) | set(second) <= trained_ids
    assert not (set(first) | set(second)) & set(range(busy_rows + 1, 0))  # sanity: ids are new
    assert len(trained_ids) == busy_rows + len(first) + len(second)


def _judge_new_outcomes(live: LiveAirflow, seed: int, shift: list[str]) -> tuple[dict[str, Any], datetime]:
    """OUTCOMES new records scored by the champion, their outcomes filled in a year later (shifted or not),
    then the performance monitor run as its daily schedule would; returns its finished run and the landing time."""
    demo.simulate_arrivals(live.engine, rows=OUTCOMES, seed=seed, labelled=False)
    live.cli("score")
    live.cli("simulate-outcomes", "--months", "0", "--seed", str(seed), *shift)
    landed = datetime.now(UTC)
    response = live.trigger("monitor_performance", {})
    assert response.status_code == 200, response.text
    return live.wait_until_finished("monitor_performance", response.json()["dag_run_id"]), landed


def _performance_report(live: LiveAirflow, run_id: str) -> dict[str, Any]:
    with live.engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT * FROM pipeline.performance_reports WHERE run_id = :r"),
                                 {"r": run_id}).mappings().one())


def test_a_concept_shift_starts_a_performance_retrain_and_stable_outcomes_do_not(live_airflow: LiveAirflow) -> None:
    live_airflow.wait_until_idle("retrain")
    live_airflow.unpause("monitor_performance")  # its last daily run starts at once
    wait_for(lambda: live_airflow.runs("monitor_performance"), 60, "a monitor_performance run")
    live_airflow.wait_until_idle("monitor_performance")

    stable, _ = _judge_new_outcomes(live_airflow, seed=41, shift=[])
    report = _performance_report(live_airflow, stable["dag_run_id"])
    emit = live_airflow.call("GET", f"/dags/monitor_performance/dagRuns/{stable['dag_run_id']}"
                                    "/taskInstances/request_retrain").json()
    assert stable["state"] == "success"
    assert report["outcomes"] == OUTCOMES and report["degraded"] is False, report
    assert emit["state"] == "skipped"

    before = _run_ids(live_airflow, "retrain")
    shifted, landed = _judge_new_outcomes(live_airflow, seed=42, shift=["--shift", "ltg=+2"])
    report = _performance_report(live_airflow, shifted["dag_run_id"])
    assert shifted["state"] == "success"
    assert report["outcomes"] == 2 * OUTCOMES and report["degraded"] is True, report

    run = _new_run(live_airflow, "retrain", before, run_type="asset_triggered")
    finished = live_airflow.wait_until_finished("retrain", run["dag_run_id"])
    record = live_airflow.training_run(run["dag_run_id"])
    assert finished["state"] == "success"
    assert record["triggered_by"] == "performance"
    assert record["trigger_event"]["asset_events"][0]["extra"]["performance_run_id"] == shifted["dag_run_id"]
    assert record["status"] in ("promoted", "kept")  # the new outcomes are new data: it trains
    print(f"\noutcomes landed -> performance retrain start: "
          f"{(_parse_time(finished['start_date']) - landed).total_seconds():.1f} s; live RMSE "
          f"{report['live_rmse']:.1f} against holdout {report['holdout_rmse']:.1f}")


def test_drift_is_flagged_and_starts_a_retrain(live_airflow: LiveAirflow) -> None:
    demo.simulate_arrivals(live_airflow.engine, rows=40, seed=31, drift={"bmi": 4.0}, labelled=False)
    live_airflow.unpause("monitor_drift")  # its last hourly run starts at once; its window ends on the hour
    wait_for(lambda: live_airflow.runs("monitor_drift"), 60, "a monitor_drift run")
    live_airflow.wait_until_idle("monitor_drift")
    live_airflow.wait_until_idle("retrain")
    before = _run_ids(live_airflow, "retrain")
    response = live_airflow.trigger("monitor_drift", {})
    assert response.status_code == 200, response.text
    check = live_airflow.wait_until_finished("monitor_drift", response.json()["dag_run_id"])

    assert check["state"] == "success"
    with live_airflow.engine.connect() as conn:
        report = dict(conn.execute(sa.text("SELECT * FROM pipeline.drift_reports WHERE run_id = :r"),
                                   {"r": check["dag_run_id"]}).mappings().one())
    bmi = next(f for f in report["features"] if f["feature"] == "bmi")
    assert report["verdict"] == "drift" and bmi["drifted"] and bmi["psi"] > 0.25
    page = stored_bytes(live_airflow.env, live_airflow.engine, live_airflow.artifact_dir / report["report_path"])
    assert page.decode().count("<img") == len(report["features"])

    run = _new_run(live_airflow, "retrain", before, run_type="asset_triggered")
    live_airflow.wait_until_finished("retrain", run["dag_run_id"])
    record = live_airflow.training_run(run["dag_run_id"])
    assert record["triggered_by"] == "drift"
    assert record["trigger_event"]["asset_events"][0]["extra"]["drift_run_id"] == report["run_id"]


def test_two_simultaneous_triggers_promote_at_most_once(live_airflow: LiveAirflow) -> None:
    events_before = live_airflow.scalar("SELECT count(*) FROM pipeline.promotion_events")
    responses: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: responses.append(
        live_airflow.trigger("retrain", {"force": True, "margin": 0.0}))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [200, 200]
    runs = [live_airflow.wait_until_finished("retrain", r.json()["dag_run_id"]) for r in responses]

    assert live_airflow.scalar("SELECT count(*) FROM pipeline.promotion_events") - events_before <= 1
    first, second = sorted(runs, key=lambda r: r["start_date"])
    assert _parse_time(second["start_date"]) >= _parse_time(first["end_date"])  # never interleaved
    decisions = live_airflow.scalar("SELECT count(*) FROM pipeline.evaluations WHERE run_id = ANY(:ids)",
                                    ids=[r["dag_run_id"] for r in runs])
    assert decisions == 2
