"""Dates and numbers a source holds as text are read by their declared format, or refused at load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from pipeline import stages
from pipeline.contract.config import ConfigError
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.registry import records
from pipeline.workspace import Workspace
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    LATER_WATERMARK,
    make_run,
    quick_workspace,
    retrain_through_stages,
)


def hold_as_text(settings: Settings) -> None:
    """The demo table as a clinic export has it: visit dates as d/m/Y text, BMI with a decimal comma."""
    engine = sa.create_engine(str(settings.database_url))
    demo.seed_demo(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("""
            ALTER TABLE public.patient_records
                ALTER COLUMN visit_date TYPE text USING to_char(visit_date, 'FMDD/MM/YYYY'),
                ALTER COLUMN bmi TYPE text USING replace(bmi::text, '.', ',')
        """))
    engine.dispose()


def config_with(tmp_path: Path, **declared: dict[str, str]) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "pipeline.yaml").read_text())
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    for feature in raw["dataset"]["features"]:
        feature.update(declared.get(feature["name"], {}))
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(("declared", "column", "key"), [
    ({}, "visit_date", "format"),
    ({"visit_date": {"format": "%d/%m/%Y"}}, "bmi", "decimal"),
])
def test_a_text_column_without_its_format_is_refused_at_load(settings: Settings, tmp_path: Path,
                                                            declared: dict[str, dict[str, str]], column: str,
                                                            key: str) -> None:
    hold_as_text(settings)
    with pytest.raises(ConfigError, match=f"column '{column}' of public.patient_records holds .* as text; "
                                          f"declare .*{key}"):
        Workspace.open(dataclasses.replace(settings, config_path=config_with(tmp_path, **declared)))


def test_declared_formats_read_every_value_as_it_was(settings: Settings, tmp_path: Path) -> None:
    expected = demo.demo_records()
    hold_as_text(settings)
    path = config_with(tmp_path, visit_date={"format": "%d/%m/%Y"}, bmi={"decimal": ","})
    ws = Workspace.open(dataclasses.replace(settings, config_path=path))
    run = make_run("text", DEMO_WATERMARK)

    snapshot = stages.ingest_snapshot(ws, run)
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    clean = ws.load_snapshot(checked["clean_snapshot_hash"]).set_index("patient_id")
    ws.engine.dispose()

    assert checked["rows_quarantined"] == 0
    original = expected.set_index("patient_id").loc[clean.index]
    early_days = pd.to_datetime(original["visit_date"]).dt.day <= 12  # the dates a guess could swap
    assert early_days.sum() > 100
    assert (clean["visit_date"].to_numpy() == pd.to_datetime(original["visit_date"]).to_numpy()).all()
    assert (clean["bmi"].to_numpy() == original["bmi"].to_numpy()).all()


def test_drift_leaves_out_rows_that_do_not_read_and_counts_them(settings: Settings, tmp_path: Path) -> None:
    hold_as_text(settings)
    path = config_with(tmp_path, visit_date={"format": "%d/%m/%Y"}, bmi={"decimal": ","})
    ws = quick_workspace(Workspace.open(dataclasses.replace(settings, config_path=path)))
    assert retrain_through_stages(ws, make_run("first", DEMO_WATERMARK))["outcome"]["status"] == "promoted"
    arrivals = demo.arrival_records(40, seed=3, drift=None, labelled=False)
    arrivals.insert(0, "patient_id", range(5001, 5041))
    arrivals["visit_date"] = [f"{d.day}/{d.month:02d}/{d.year}" for d in pd.to_datetime(arrivals["visit_date"])]
    arrivals["bmi"] = arrivals["bmi"].map(lambda v: str(v).replace(".", ","))
    arrivals.loc[0, "visit_date"] = "31/02/2024"  # no such day: left out, not read as 2 or 3 March
    arrivals.loc[1, "bmi"] = "27.5"  # the other decimal mark: left out, not read as 275 or 27.5
    with ws.engine.begin() as conn:
        demo.copy_into(conn, "public.patient_records", arrivals)

    result = stages.monitor_drift(ws, make_run("drift-text", LATER_WATERMARK))
    ws.engine.dispose()

    assert (result["recent_rows"], result["unreadable_rows"]) == (38, 2)
    assert result["verdict"] in ("stable", "drift")


def text_ids(settings: Settings) -> None:
    """The demo table with ids as a CRM may write them: 'P-0001'."""
    engine = sa.create_engine(str(settings.database_url))
    demo.seed_demo(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE public.patient_records ALTER COLUMN patient_id TYPE text "
                             "USING 'P-' || lpad(patient_id::text, 4, '0')"))
        conn.execute(sa.text("UPDATE public.patient_records SET sex = 'X' WHERE patient_id = 'P-0007'"))
    engine.dispose()


def test_text_ids_are_refused_unless_declared_then_kept_as_they_are(settings: Settings, tmp_path: Path) -> None:
    text_ids(settings)
    with pytest.raises(ConfigError, match="'patient_id' of public.patient_records is text; set dataset.id_type: text"):
        Workspace.open(dataclasses.replace(settings, config_path=config_with(tmp_path)))

    raw = yaml.safe_load(config_with(tmp_path).read_text())
    raw["dataset"]["id_type"] = "text"
    path = tmp_path / "text_ids.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    ws = quick_workspace(Workspace.open(dataclasses.replace(settings, config_path=path)))
    result = retrain_through_stages(ws, make_run("text-ids", DEMO_WATERMARK))
    with ws.engine.connect() as conn:
        quarantined = [records.opened(dict(r), ws.keyring)["source_id"]  # sealed at rest: opened
                       for r in conn.execute(sa.text("SELECT * FROM pipeline.quarantine")).mappings()]
        holdout_start = conn.scalar(sa.text("SELECT holdout_start FROM pipeline.model_versions"))
    ws.engine.dispose()

    assert result["outcome"]["status"] == "promoted"
    assert quarantined == ["P-0007"]
    assert set(holdout_start) == {"label_recorded_at", stages.HOLDOUT_ID_HMAC}  # a text id, as its keyed hash
