"""Row-level quality on real PostgreSQL: faulty rows quarantined with reasons, counts that reconcile.

A few bad rows are set aside and the run goes on; too many, or a broken schema, stop the run
with the champion (row, model, promotion history and artifact bytes) exactly as it was.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.data import demo, ingest
from pipeline.data.validate import ValidationFailed
from pipeline.registry.runs import Run
from pipeline.workspace import Workspace
from tests.commands import cli_in_process
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    champion_state,
    command_env,
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
    stored_frame,
    stored_text,
)

FAULTY_ID = 10001
ARRIVALS, ARRIVAL_SEED, BAD_ROWS = 120, 5, 12



def execute(ws: Workspace, sql: str) -> None:
    with ws.engine.begin() as conn:
        conn.execute(sa.text(sql))


def ingest_and_validate(ws: Workspace, run: Run) -> dict[str, Any]:
    snapshot = stages.ingest_snapshot(ws, run)
    return stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])



def declaring(ws: Workspace, column: str, **text_format: str) -> Workspace:
    """The workspace whose contract declares how `column`, held as text, is written (format= or decimal=)."""
    contract = ws.config.dataset
    features = tuple(dataclasses.replace(f, **text_format) if f.name == column else f for f in contract.features)
    dataset = dataclasses.replace(contract, features=features)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, dataset=dataset))


def quarantined(ws: Workspace, run_id: str) -> dict[int, dict[str, Any]]:
    rows = fetch(ws, "SELECT * FROM pipeline.quarantine WHERE run_id = :r", r=run_id)
    return {int(row["source_id"]): row for row in rows}


def as_stored(value: Any) -> Any:
    """A source value as the quarantine's `original` JSON holds it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.isoformat() if isinstance(value, date) else value



@pytest.fixture
def champion(quick: Workspace) -> dict[str, Any]:
    """The demo study loaded and a first retrain over it: version 1 is the champion."""
    return promote_demo_champion(quick)


# --- one faulty row of each kind ------------------------------------------------------------------


@pytest.mark.parametrize("kind", range(len(demo.BAD_ROW_KINDS)),
                         ids=[f"{n}-{reason}" for n, (reason, _) in enumerate(demo.BAD_ROW_KINDS)])
def test_each_bad_row_kind_is_quarantined_with_its_reason(ws: Workspace, kind: int) -> None:
    reason, fault = demo.BAD_ROW_KINDS[kind]
    demo.seed_demo(ws.engine)
    row = demo.arrival_records(1, seed=3).to_dict("records")[0]
    clean = dict(row)
    fault(row)
    [changed] = [c for c in row if as_stored(row[c]) != as_stored(clean[c])]
    with ws.engine.begin() as conn:
        demo.copy_into(conn, demo.DEMO_TABLE, pd.DataFrame([{"patient_id": FAULTY_ID, **row}]))

    checked = ingest_and_validate(ws, make_run("one-fault"))

    assert (checked["rows_read"], checked["rows_valid"], checked["rows_quarantined"]) == (443, 442, 1)
    assert checked["reason_counts"] == {reason: 1}
    [(source_id, record)] = quarantined(ws, "one-fault").items()
    assert source_id == FAULTY_ID
    assert [r["code"] for r in record["reasons"]] == [reason]
    assert changed in record["reasons"][0]["column"].split("/")
    stamps = {c: record["original"][c] for c in ("recorded_at", "label_recorded_at")}
    assert stamps["label_recorded_at"] == stamps["recorded_at"]  # sql/009: inserted with its outcome, known then
    assert record["original"] == {"patient_id": FAULTY_ID, **stamps, **{c: as_stored(v) for c, v in row.items()}}
    page = stored_text(ws, checked["report_path"])
    [shown] = re.findall(rf"<tr><td>{FAULTY_ID}</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert shown[0].startswith(reason) and "None" not in shown[0]
    named = record["reasons"][0]["column"].split("/")  # an impossible-dates row shows both its dates
    assert shown[1] == html.escape(", ".join(
        f"{c}={'missing' if as_stored(row[c]) is None else as_stored(row[c])}" for c in named))
    [snapshot] = fetch(ws, "SELECT path FROM pipeline.snapshots WHERE snapshot_hash = :h",
                       h=checked["clean_snapshot_hash"])
    assert FAULTY_ID not in set(stored_frame(ws, ws.settings.artifact_dir / snapshot["path"])["patient_id"])


# --- a retrain over a batch with bad rows: every row accounted for ---------------------------------


@pytest.fixture
def faulty_retrain(quick: Workspace) -> dict[str, Any]:
    """The demo study plus 120 arrivals, 12 of them faulty and 12 merely messy, retrained once."""
    demo.seed_demo(quick.engine)
    ids = demo.simulate_arrivals(quick.engine, rows=ARRIVALS, seed=ARRIVAL_SEED, bad_rows=BAD_ROWS)
    _, expected = demo.add_faults(demo.arrival_records(ARRIVALS, ARRIVAL_SEED), BAD_ROWS, ARRIVAL_SEED)
    result = retrain_through_stages(quick, make_run("faulty"))
    result["expected"] = {i: reason for i, reason in zip(ids, expected, strict=True) if reason != "valid"}
    return result


def test_rows_reconcile_through_a_retrain(ws: Workspace, faulty_retrain: dict[str, Any]) -> None:
    expected = faulty_retrain["expected"]
    [validation] = fetch(ws, "SELECT * FROM pipeline.validation_results WHERE run_id = 'faulty'")
    [raw] = fetch(ws, "SELECT * FROM pipeline.snapshots WHERE snapshot_hash = :h",
                  h=faulty_retrain["snapshot"]["snapshot_hash"])
    rows_valid = validation["rows_valid"]
    assert validation["rows_read"] == rows_valid + validation["rows_quarantined"] == raw["row_count"] == 442 + ARRIVALS
    assert validation["rows_quarantined"] == len(expected) == BAD_ROWS
    assert validation["success"] is True
    assert sum(validation["reason_counts"].values()) >= BAD_ROWS
    assert set(validation["reason_counts"]) == set(expected.values())

    records = quarantined(ws, "faulty")
    assert set(records) == set(expected)
    for source_id, reason in expected.items():
        assert reason in {r["code"] for r in records[source_id]["reasons"]}, (source_id, records[source_id])

    [model] = fetch(ws, "SELECT * FROM pipeline.model_versions WHERE run_id = 'faulty'")
    assert model["train_rows"] + model["holdout_rows"] == rows_valid
    [clean] = fetch(ws, "SELECT * FROM pipeline.snapshots WHERE snapshot_hash = :h", h=model["snapshot_hash"])
    assert (clean["kind"], clean["parent_hash"], clean["row_count"]) == ("clean", raw["snapshot_hash"], rows_valid)
    assert clean["snapshot_hash"] == validation["clean_snapshot_hash"]
    frame = ws.load_snapshot(clean["snapshot_hash"])
    assert len(frame) == rows_valid and frame["patient_id"].is_unique
    assert not set(expected) & set(frame["patient_id"])
    assert set(frame["sex"]) == {"F", "M"}
    assert faulty_retrain["outcome"]["status"] == "promoted"


def test_normalisations_and_report_are_recorded(ws: Workspace, faulty_retrain: dict[str, Any]) -> None:
    [validation] = fetch(ws, "SELECT * FROM pipeline.validation_results WHERE run_id = 'faulty'")
    # The 12 messy rows alternate ' f ' (spaces and case) and 'f' (case only).
    assert {(n["column"], n["rule"]): n["rows"] for n in validation["normalisations"]} == {
        ("sex", "strip_spaces"): BAD_ROWS // 2, ("sex", "letter_case"): BAD_ROWS}
    arrival_ids = set(range(443, 443 + ARRIVALS))
    assert all(set(n["sample_ids"]) <= arrival_ids for n in validation["normalisations"])

    report = Path(validation["report_path"])
    assert report == Path(faulty_retrain["checked"]["report_path"]) and report.is_file()
    page = stored_text(ws, report)
    for source_id, reason in faulty_retrain["expected"].items():
        assert f"<tr><td>{source_id}</td><td>" in page
        assert f"<td>{reason}</td>" in page
    assert f"<td>rows read</td><td>{validation['rows_read']}</td>" in page
    # the share against the limit, and every expectation of the suite with its result, as GX Data Docs shows them
    share = validation["rows_quarantined"] / validation["rows_read"]
    limit = ws.config.quality.max_quarantine_share
    assert f"<td>quarantined share</td><td>{share:.2%}</td>" in page
    assert f"<td>limit (quality.max_quarantine_share)</td><td>{limit:.2%}</td>" in page
    assert f"within the limit of {limit:.2%} (quality.max_quarantine_share)" in page
    results = validation["result"]["results"]
    listed = page.split("<h2 id='expectations'>", 1)[1].split("</table>", 1)[0]
    assert listed.count("<tr class='pass'>") + listed.count("<tr class='fail'>") == len(results)
    for entry in results:
        kind, outcome = entry["expectation_config"]["type"], entry["result"]
        verdict = "pass" if entry["success"] else "FAIL"
        assert f"<td>{verdict}</td><td>{kind}</td>" in listed
        if "unexpected_count" in outcome:
            share_text = f"<td>{outcome['unexpected_count']} of {outcome['element_count']}</td>"
            assert f"{share_text}<td>{outcome['unexpected_percent']:.2f}%</td>" in listed
    assert "<td>min_value=12.0, max_value=70.0</td>" in listed  # bmi's bound


def test_cli_quality_summarises_the_run(ws: Workspace, database_url: str,
                                        faulty_retrain: dict[str, Any]) -> None:
    env = command_env(ws.settings)

    done = cli_in_process(env)("quality", "--json")

    assert done.returncode == 0, done.stderr
    [summary] = json.loads(done.stdout)
    [validation] = fetch(ws, "SELECT * FROM pipeline.validation_results WHERE run_id = 'faulty'")
    assert summary["run_id"] == "faulty" and summary["success"] is True
    assert (summary["rows_read"], summary["rows_valid"], summary["rows_quarantined"]) == (
        442 + ARRIVALS, 442 + ARRIVALS - BAD_ROWS, BAD_ROWS)
    assert summary["reason_counts"] == validation["reason_counts"]
    assert sum(summary["reason_counts"].values()) >= BAD_ROWS
    assert summary["report_path"] == validation["report_path"]


# --- runs that must stop with the champion untouched -----------------------------------------------


def test_too_many_bad_rows_fail_the_run_and_leave_the_champion(ws: Workspace,
                                                               champion: dict[str, Any]) -> None:
    before = champion_state(ws)
    demo.simulate_arrivals(ws.engine, rows=100, seed=11, bad_rows=40)  # 40 of 542 rows: 7.4 %, over 5 %
    run = make_run("too-many")

    with pytest.raises(ValidationFailed) as failed:
        ingest_and_validate(ws, run)

    message = str(failed.value)
    assert "40 of 542 rows quarantined (7.4%)" in message and "quality.max_quarantine_share" in message
    assert champion_state(ws) == before
    [run_record] = fetch(ws, "SELECT * FROM pipeline.training_runs WHERE run_id = 'too-many'")
    assert run_record["status"] == "validation_failed" and run_record["reason"] == message
    [validation] = fetch(ws, "SELECT * FROM pipeline.validation_results WHERE run_id = 'too-many'")
    assert validation["success"] is False
    assert (validation["rows_read"], validation["rows_valid"], validation["rows_quarantined"]) == (542, 502, 40)
    assert len(quarantined(ws, "too-many")) == 40
    assert fetch(ws, "SELECT version FROM pipeline.model_versions WHERE run_id = 'too-many'") == []


SCHEMA_BREAKS = {
    "renamed column": ("ALTER TABLE public.patient_records RENAME COLUMN bp_mean TO bp",
                       ["lacks contract column(s) ['bp_mean']", "'bp'"]),
    "boolean glucose": ("ALTER TABLE public.patient_records ALTER COLUMN glucose TYPE boolean USING glucose > 100",
                        ["column 'glucose'", "BOOLEAN", "contract expects float"]),
}


@pytest.mark.parametrize("name", list(SCHEMA_BREAKS))
def test_schema_break_stops_the_run_at_ingest(ws: Workspace, champion: dict[str, Any], name: str) -> None:
    alter, fragments = SCHEMA_BREAKS[name]
    before = champion_state(ws)
    snapshots_before = fetch(ws, "SELECT snapshot_hash FROM pipeline.snapshots ORDER BY snapshot_hash")
    execute(ws, alter)

    with pytest.raises(ingest.SchemaError) as failed:
        stages.ingest_snapshot(ws, make_run("broken"))

    for fragment in fragments:
        assert fragment in str(failed.value)
    assert champion_state(ws) == before
    assert fetch(ws, "SELECT snapshot_hash FROM pipeline.snapshots ORDER BY snapshot_hash") == snapshots_before
    assert fetch(ws, "SELECT * FROM pipeline.validation_results WHERE run_id = 'broken'") == []


def test_text_numeric_column_quarantines_only_the_row_that_will_not_cast(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    execute(ws, "ALTER TABLE public.patient_records ALTER COLUMN bmi TYPE text")
    execute(ws, "UPDATE public.patient_records SET bmi = 'abc' WHERE patient_id = 17")

    checked = ingest_and_validate(declaring(ws, "bmi", decimal="."), make_run("text-bmi", DEMO_WATERMARK))

    assert (checked["rows_read"], checked["rows_valid"], checked["rows_quarantined"]) == (442, 441, 1)
    assert checked["reason_counts"] == {"wrong_type": 1}
    [(source_id, record)] = quarantined(ws, "text-bmi").items()
    assert source_id == 17
    assert record["reasons"] == [{"code": "wrong_type", "column": "bmi", "rule": "cast to float with decimal mark '.'",
                                  "value": "abc"}]
    assert record["original"]["bmi"] == "abc"
    [snapshot] = fetch(ws, "SELECT path FROM pipeline.snapshots WHERE snapshot_hash = :h",
                       h=checked["clean_snapshot_hash"])
    clean = stored_frame(ws, ws.settings.artifact_dir / snapshot["path"]).set_index("patient_id")
    assert clean["bmi"].dtype == "float64"
    study = demo.demo_records().set_index("patient_id").drop(index=17)
    assert clean["bmi"].to_dict() == study["bmi"].to_dict()  # text and back loses nothing
    page = stored_text(ws, checked["report_path"])
    assert "<tr><td>17</td><td>wrong_type(bmi=abc)</td><td>bmi=abc</td></tr>" in page


def test_text_date_column_is_read_by_its_declared_format(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    # Day first, day not zero-padded ('3/01/1970'), as a European CRM export writes it.
    execute(ws, "ALTER TABLE public.patient_records ALTER COLUMN birth_date TYPE text "
                "USING to_char(birth_date, 'FMDD/MM/YYYY')")
    execute(ws, "UPDATE public.patient_records SET birth_date = '31/02/1970' WHERE patient_id = 17")

    day_first = declaring(ws, "birth_date", format="%d/%m/%Y")
    checked = ingest_and_validate(day_first, make_run("text-birth", DEMO_WATERMARK))

    assert (checked["rows_read"], checked["rows_valid"], checked["rows_quarantined"]) == (442, 441, 1)
    [(source_id, record)] = quarantined(ws, "text-birth").items()
    assert (source_id, record["reasons"]) == (17, [{"code": "wrong_type", "column": "birth_date", "value": "31/02/1970",
                                                    "rule": "cast to date with format %d/%m/%Y"}])
    [snapshot] = fetch(ws, "SELECT path FROM pipeline.snapshots WHERE snapshot_hash = :h",
                       h=checked["clean_snapshot_hash"])
    clean = stored_frame(ws, ws.settings.artifact_dir / snapshot["path"]).set_index("patient_id")
    study = demo.demo_records().set_index("patient_id").drop(index=17)
    assert clean["birth_date"].dt.date.to_dict() == study["birth_date"].to_dict()  # no day read as a month


def test_the_same_visit_under_two_ids_quarantines_both(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    execute(ws, "INSERT INTO public.patient_records SELECT 10001, birth_date, visit_date, sex, bmi, bp_mean, tc, ldl, "
                "hdl, tch, ltg, glucose, progression_12m + 20, recorded_at FROM public.patient_records "
                "WHERE patient_id = 17")

    checked = ingest_and_validate(ws, make_run("twice", DEMO_WATERMARK))

    assert (checked["rows_read"], checked["rows_valid"], checked["rows_quarantined"]) == (443, 441, 2)
    assert checked["reason_counts"] == {"duplicate_record": 2}
    records = quarantined(ws, "twice")
    assert sorted(records) == [17, 10001]
    assert all([r["code"] for r in record["reasons"]] == ["duplicate_record"] for record in records.values())


@pytest.fixture
def quick(ws: Workspace) -> Workspace:
    return quick_workspace(ws)


