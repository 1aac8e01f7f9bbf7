"""One real Airflow (standalone: scheduler, API server with the Models view, DAG processor, triggerer)
on scratch databases, with a registry filled through it, shared by the API and the browser tests.

The registry it leaves: v1 champion from a `retrain` run started by unpausing the DAG; a second
`retrain` run, triggered through the REST API after labelled rows with faults arrived, whose rows
were partly quarantined and whose candidate v2 was compared with v1; a drift check of the champion,
made by the pipeline's own function. (No performance check: without served forecasts
`performance.monitor_performance` fails today, see the test below.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import yaml

from pipeline import stages
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace
from tests.standalone import standalone_airflow, wait_for

RUN_TIMEOUT = 300
BAD_ROWS = 4


@dataclass
class ViewAirflow:
    base_url: str
    token: str
    password: str
    engine: sa.engine.Engine
    env: dict[str, str]
    log_path: Path
    first_run: str = ""
    second_run: str = ""

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.request(method, f"{self.base_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)

    def view(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        """GET a Models view page; with the admin's token unless `token` says otherwise ('' = anonymous)."""
        token = self.token if token is None else token
        headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **kwargs.pop("headers", {})}
        return requests.get(f"{self.base_url}/models-view{path}", headers=headers, timeout=60, **kwargs)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """The rows of `sql`; a sealed quarantine or validation row (encryption at rest) comes back opened with the
        stack's own keys, as its readers see it (select its key_ref and sealed columns, or *)."""
        from pipeline.registry import records
        from pipeline.store import crypto, keys

        settings = Settings.from_env(self.env)
        keyring = crypto.Keyring(self.engine, lambda: keys.open_key_manager(settings))
        with self.engine.connect() as conn:
            found = [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
        return [records.opened(row, keyring) if row.get("sealed") is not None else row for row in found]

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        response = self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})
        response.raise_for_status()
        return list(response.json()["dag_runs"])

    def wait_until_idle(self, dag_id: str) -> None:
        try:
            wait_for(lambda: (runs := self.dag_runs(dag_id)) and all(r["state"] in ("success", "failed") for r in runs),
                     RUN_TIMEOUT, f"every {dag_id} run to finish", interval=2)
        except AssertionError as error:
            raise AssertionError(f"{error}; the Airflow log's last errors:\n{self.log_errors()}") from None

    def log_errors(self, lines: int = 12) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([line for line in text if "Error" in line or "[error" in line][-lines:])


def _view_config(tmp: Path) -> Path:
    """The shipped config; the arrival watcher never fires (runs here start only when the test says)."""
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    raw["monitoring"].update(poll_seconds=3600, min_new_rows=1_000_000)
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _fill_registry(live: ViewAirflow) -> None:
    """v1 through an unpaused `retrain`; faulty arrivals and a triggered run for v2; a drift check."""
    live.api("PATCH", "/dags/retrain", json={"is_paused": False}).raise_for_status()
    wait_for(lambda: live.rows("SELECT version FROM pipeline.champion"), RUN_TIMEOUT, "a first champion", 2)
    live.wait_until_idle("retrain")
    live.first_run = live.rows("SELECT run_id FROM pipeline.training_runs WHERE status = 'promoted'")[0]["run_id"]

    demo.simulate_arrivals(live.engine, rows=40, seed=7, bad_rows=BAD_ROWS)
    response = live.api("POST", "/dags/retrain/dagRuns", json={"logical_date": None, "conf": {}})
    assert response.status_code == 200, response.text
    live.second_run = response.json()["dag_run_id"]
    live.wait_until_idle("retrain")

    demo.simulate_arrivals(live.engine, rows=60, seed=2, drift={"bmi": 4.0}, labelled=False)
    ws = Workspace.open(Settings.from_env(live.env))
    stages.monitor_drift(ws, Run(run_id="drift-check-1", watermark=datetime.now(UTC)))
    ws.engine.dispose()


@pytest.fixture(scope="session")
def view_airflow(server_url: str, tmp_path_factory: pytest.TempPathFactory,
                 starts_airflow: None) -> Iterator[ViewAirflow]:
    tmp = tmp_path_factory.mktemp("models-view")
    with standalone_airflow(server_url, tmp, _view_config(tmp),
                            {"PIPELINE_MODELS_DIR": str(tmp / "no-more-models")}) as airflow:
        live = ViewAirflow(airflow.base_url, airflow.token, airflow.password, airflow.engine, airflow.env,
                           airflow.log_path)
        _fill_registry(live)
        yield live
