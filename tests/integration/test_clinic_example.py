"""The worked example of a second table (examples/clinic/): a clinic's own export, with its own column
names, d/m/Y text dates and a few faults, trained as a second model beside the demo in one database."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.registry import records
from pipeline.workspace import Workspace
from tests.commands import Cli, output
from tests.integration.stage_runs import (
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
)

CLINIC_CONFIG = "examples/clinic/clinic.yaml"
DUPLICATE_KEY = ["dob", "seen_on", "gender", "body_mass", "bp", "chol_total", "ldl_c", "hdl_c", "chol_ratio",
                 "log_trig", "fasting_glucose"]


@pytest.fixture
def clinic_ws(ws: Workspace, settings: Settings) -> Iterator[Workspace]:
    """The clinic export loaded beside the demo table, and a Workspace for the clinic's config."""
    assert demo.seed_clinic_export(ws.engine) == 445  # 442 visits and 3 of them entered twice
    workspace = Workspace.open(dataclasses.replace(settings, config_path=PROJECT_ROOT / CLINIC_CONFIG))
    yield workspace
    workspace.engine.dispose()


def faulty_ids(export: pd.DataFrame) -> dict[str, list[str]]:
    """The ids of the export's labelled faulty rows, by the reason each fault should give, read off the export."""
    labelled = export[export["outcome_score"].notna()]
    ids = {
        "duplicate_record": labelled[labelled.duplicated(DUPLICATE_KEY, keep=False)]["visit_id"],
        "unknown_category": labelled[~labelled["gender"].isin(["F", "M"])]["visit_id"],
        "wrong_type": labelled[labelled["seen_on"] == demo.CLINIC_IMPOSSIBLE_DATE]["visit_id"],
    }
    return {reason: sorted(str(i) for i in column) for reason, column in ids.items()}


def quarantined_ids(ws: Workspace, run_id: str) -> dict[str, list[str]]:
    """The source ids quarantined by the run, by reason code."""
    rows = fetch(ws, "SELECT * FROM pipeline.quarantine WHERE run_id = :run_id", run_id=run_id)  # opened if sealed
    by_reason: dict[str, set[str]] = {}
    for row in rows:
        for reason in row["reasons"]:
            by_reason.setdefault(reason["code"], set()).add(row["source_id"])
    return {code: sorted(ids) for code, ids in by_reason.items()}


def clean_rows(ws: Workspace, clean_hash: str) -> pd.DataFrame:
    with ws.engine.connect() as conn:
        assert records.get_snapshot(conn, clean_hash)["kind"] == "clean"
    return ws.load_snapshot(clean_hash)


def own_runs_and_versions(cli: Cli, *config: str) -> dict[str, Any]:
    """What `status` and `history` print for one model: its champion, its runs, its promotions."""
    status = output(cli(*config, "status", "--json"))
    history = output(cli(*config, "history", "--json"))
    return {"champion": status["champion"]["version"], "runs": [r["run_id"] for r in status["recent_runs"]],
            "promoted": [e["to_version"] for e in history]}


def test_seed_clinic_export_loads_the_export_once(cli: Cli, database_url: str) -> None:
    # On a fresh database, with the clinic's config named before its table exists.
    assert output(cli("--config", CLINIC_CONFIG, "seed-clinic-export", "--json")) == {"inserted": 445, "table": "clinic.visits"}
    assert output(cli("seed-clinic-export", "--json"))["inserted"] == 0

    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        types = dict(conn.execute(sa.text("""
            SELECT column_name, data_type FROM information_schema.columns
             WHERE table_schema = 'clinic' AND table_name = 'visits'""")).tuples().all())
        first_of_year = conn.scalar(sa.text("SELECT seen_on FROM clinic.visits WHERE seen_on LIKE '3/01/%'"))
    engine.dispose()
    assert types["dob"] == types["seen_on"] == "text"  # as the clinic's system exports them
    assert types["body_mass"] == "double precision" and types["entered_at"] == "timestamp with time zone"
    assert first_of_year == "3/01/2024"


def test_clinic_export_is_deterministic() -> None:
    first, again = demo.clinic_export(), demo.clinic_export()

    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == list(demo.CLINIC_COLUMNS.values())
    assert {k: len(v) for k, v in faulty_ids(first).items()} == {"duplicate_record": 6, "unknown_category": 1,
                                                                  "wrong_type": 1}
    assert first["outcome_score"].isna().sum() == 1


def test_clinic_model_trains_beside_the_demo_in_one_database(ws: Workspace, clinic_ws: Workspace,
                                                             cli: Cli) -> None:
    demo_result = promote_demo_champion(quick_workspace(ws))

    result = retrain_through_stages(quick_workspace(clinic_ws), make_run("clinic-first"))

    # Its own first champion: the demo's champion was no champion of the clinic model.
    assert result["evaluation"]["champion_version"] is None
    assert result["outcome"]["status"] == "promoted", result["outcome"]
    # 444 labelled rows read; the one visit without an outcome is counted, not trained on, not quarantined.
    assert result["snapshot"]["row_count"] == 444
    assert result["snapshot"]["unlabelled_rows"] == 1
    checked = result["checked"]
    assert checked["reason_counts"] == {"duplicate_record": 6, "unknown_category": 1, "wrong_type": 1}
    assert (checked["rows_read"], checked["rows_valid"], checked["rows_quarantined"]) == (444, 436, 8)
    assert quarantined_ids(clinic_ws, "clinic-first") == faulty_ids(demo.clinic_export())
    with clinic_ws.engine.connect() as conn:
        validation = records.quality_history(conn, clinic_ws.model)[0]
    assert (validation["rows_unlabelled"], validation["unlabelled_faulty"]) == (1, 0)

    # Dates read day first, by the declared format: '3/01/2024' is 3 January, and every visit kept its date.
    clean = clean_rows(clinic_ws, result["clean_snapshot_hash"]).set_index("visit_id")
    export = demo.clinic_export().set_index("visit_id")
    assert clean.loc[int(export.index[export["seen_on"] == "3/01/2024"][0]), "seen_on"] == pd.Timestamp("2024-01-03")
    study_visits = pd.to_datetime(demo.demo_records()["visit_date"]).to_numpy()
    originals = clean.index[clean.index < demo.CLINIC_FIRST_ID + len(study_visits)]
    assert (clean.loc[originals, "seen_on"].to_numpy() == study_visits[originals - demo.CLINIC_FIRST_ID]).all()

    # Each model's status and history list its own champion, runs and versions only.
    demo_version, clinic_version = demo_result["candidate"]["version"], result["candidate"]["version"]
    assert demo_version != clinic_version
    assert own_runs_and_versions(cli) == {"champion": demo_version, "runs": ["first"], "promoted": [demo_version]}
    assert own_runs_and_versions(cli, "--config", CLINIC_CONFIG) == {
        "champion": clinic_version, "runs": ["clinic-first"], "promoted": [clinic_version]}
