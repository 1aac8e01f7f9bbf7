"""`process_erasures` run through Airflow (dag.test) on a real PostgreSQL: a request the CRM inserted is worked off."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.workspace import Workspace
from tests.integration.stage_runs import make_run


def test_a_crm_request_is_processed_by_the_dag(airflow_db: None, dag_bag: Any, pipeline_env: Settings) -> None:
    ws = Workspace.open(pipeline_env)
    demo.seed_demo(ws.engine)
    snapshot = stages.ingest_snapshot(ws, make_run("before"))
    with ws.engine.begin() as conn:
        patient = conn.scalar(sa.text("SELECT min(patient_id)::text FROM public.patient_records"))
        conn.execute(sa.text("INSERT INTO pipeline.erasure_requests (source_id, reason, requested_by) "
                             "VALUES (:p, 'the patient asked', 'crm')"), {"p": patient})
    dag = dag_bag.dags["process_erasures"]
    assert dag.dag_id == "process_erasures" and "privacy" in dag.tags
    run = dag.test()
    assert run.state == "success"
    with ws.engine.connect() as conn:
        request = conn.execute(sa.text("SELECT * FROM pipeline.erasure_requests")).mappings().one()
        redacted = conn.scalar(sa.text("SELECT new_hash FROM pipeline.snapshot_redactions WHERE old_hash = :h"),
                               {"h": snapshot["snapshot_hash"]})
        note = conn.scalar(sa.text("SELECT note FROM pipeline.run_notes WHERE dag_id = 'process_erasures'"))
    assert (request["status"], request["source_id"]) == ("done", None) and request["tombstone"]
    assert redacted is not None and not ws.snapshot_path(snapshot["snapshot_hash"]).exists()
    assert note == f"1 erasure request: #{request['request_id']} done"  # the operator's words, no patient id
    ws.engine.dispose()
