"""Outcome time on real PostgreSQL: an outcome filled in a year after its visit, by an UPDATE of an old row.

sql/009 stamps when each outcome became known (label_recorded_at); the watcher counts outcomes by it,
a snapshot is read as known at its watermark, the holdout is the most recently labelled rows, and an
evaluation never judges the champion on rows it trained on. A contract without the column keeps the
old behaviour: everything keys on the record time.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.data import demo, ingest
from pipeline.data.arrivals import claim_arrival_signal, count_new_labelled_rows, last_seen_watermark
from pipeline.model import evaluate, train
from pipeline.model.features import model_inputs
from pipeline.registry import records
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
    stored_text,
)

LATE_IDS = list(range(1, 31))  # the study's earliest visits: recorded first, their outcomes filled in last


def withhold_outcomes(ws: Workspace, ids: list[int]) -> dict[int, float]:
    """Blank the outcomes of old rows, as if they were still awaited; returns the outcomes to fill in later."""
    with ws.engine.begin() as conn:
        outcomes: dict[Any, Any] = dict(conn.execute(sa.text(
            "SELECT patient_id, progression_12m FROM public.patient_records WHERE patient_id = ANY(:ids)"),
            {"ids": ids}).all())
        conn.execute(sa.text("UPDATE public.patient_records SET progression_12m = NULL WHERE patient_id = ANY(:ids)"),
                     {"ids": ids})
    return {int(k): float(v) for k, v in outcomes.items()}


def fill_in_outcomes(ws: Workspace, outcomes: dict[int, float]) -> None:
    """The CRM fills in outcomes of rows recorded long ago: an UPDATE that names no label time."""
    with ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE public.patient_records SET progression_12m = :y WHERE patient_id = :i"),
                     [{"i": i, "y": y} for i, y in outcomes.items()])


def label_times(ws: Workspace, ids: list[int]) -> dict[int, Any]:
    rows = fetch(ws, "SELECT patient_id, recorded_at, label_recorded_at FROM public.patient_records "
                     "WHERE patient_id = ANY(:ids)", ids=ids)
    return {r["patient_id"]: (r["recorded_at"], r["label_recorded_at"]) for r in rows}


def without_label_time(ws: Workspace) -> Workspace:
    """The shipped config with label_timestamp_column left out: the table keeps the column, unread."""
    contract = dataclasses.replace(ws.config.dataset, label_timestamp_column=None)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, dataset=contract))


def with_holdout_fraction(ws: Workspace, fraction: float) -> Workspace:
    training = dataclasses.replace(ws.config.training, holdout_fraction=fraction)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))


def server_now(ws: Workspace) -> datetime:
    """The database's clock, which stamps label times: watermarks taken from it never race the stamps."""
    with ws.engine.connect() as conn:
        return conn.scalar(sa.text("SELECT clock_timestamp()"))  # type: ignore[no-any-return]


def holdout_ids(ws: Workspace, version: int) -> tuple[set[int], set[int]]:
    """The training and holdout ids of a version, split from its own clean snapshot."""
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.model)
    frame = ws.load_snapshot(model["snapshot_hash"])
    trained_on, held_out = train.split_holdout(frame, ws.config.dataset, model["params"]["holdout_fraction"])
    return set(trained_on["patient_id"].astype(int)), set(held_out["patient_id"].astype(int))


# --- sql/009: the trigger and the migration ----------------------------------------------------------


def test_the_trigger_stamps_outcomes_on_insert_and_on_a_late_update(ws: Workspace) -> None:
    recorded = datetime(2025, 3, 1, 9, tzinfo=UTC)
    given = datetime(2025, 9, 1, tzinfo=UTC)
    with ws.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO public.patient_records (patient_id, progression_12m, recorded_at, label_recorded_at)
            VALUES (1, 100, :r, NULL), (2, NULL, :r, NULL), (3, 120, :r, :given)
        """), {"r": recorded, "given": given})
    assert label_times(ws, [1, 2, 3]) == {1: (recorded, recorded), 2: (recorded, None), 3: (recorded, given)}

    before = server_now(ws)
    fill_in_outcomes(ws, {2: 150.0})  # NULL -> value: known now
    after = server_now(ws)
    _, stamped = label_times(ws, [2])[2]
    assert before <= stamped <= after

    with ws.engine.begin() as conn:  # withdrawn: unknown again; a writer that gives the time keeps it
        conn.execute(sa.text("UPDATE public.patient_records SET progression_12m = NULL WHERE patient_id = 1"))
        conn.execute(sa.text("UPDATE public.patient_records SET progression_12m = 160, label_recorded_at = :g "
                             "WHERE patient_id = 2"), {"g": given})
    assert label_times(ws, [1, 2]) == {1: (recorded, None), 2: (recorded, given)}


def test_the_migration_backfills_labelled_rows_and_applies_twice(ws: Workspace) -> None:
    demo.seed_demo(ws.engine)
    with ws.engine.begin() as conn:  # a table as it was before sql/009: outcomes with no label time
        conn.execute(sa.text("ALTER TABLE public.patient_records DISABLE TRIGGER USER"))
        conn.execute(sa.text("UPDATE public.patient_records SET label_recorded_at = NULL"))
        conn.execute(sa.text("ALTER TABLE public.patient_records ENABLE TRIGGER USER"))

    db.apply_schema(ws.engine)
    db.apply_schema(ws.engine)

    [counts] = fetch(ws, """
        SELECT count(*) AS rows, count(*) FILTER (WHERE label_recorded_at = recorded_at) AS backfilled
          FROM public.patient_records""")
    assert counts == {"rows": 442, "backfilled": 442}
    triggers = fetch(ws, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.patient_records'::regclass "
                         "AND NOT tgisinternal ORDER BY tgname")
    assert [t["tgname"] for t in triggers] == ["patient_records_outcome_insert", "patient_records_outcome_update"]
    columns = fetch(ws, "SELECT data_type FROM information_schema.columns WHERE table_schema = 'public' "
                        "AND table_name = 'patient_records' AND column_name = 'label_recorded_at'")
    assert columns == [{"data_type": "timestamp with time zone"}]


@pytest.mark.parametrize("sql_type", ["text", "bigint", "date"])
def test_a_label_time_that_is_not_a_timestamp_is_refused_naming_it(ws: Workspace, sql_type: str) -> None:
    with ws.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE public.patient_records ADD COLUMN outcome_known {sql_type}"))
    contract = dataclasses.replace(ws.config.dataset, label_timestamp_column="outcome_known")

    with pytest.raises(ingest.SchemaError, match=r"dataset\.label_timestamp_column: column 'outcome_known' of "
                                                 r"public\.patient_records is .*must be a timestamp column"):
        ingest.check_source_columns(ws.engine, contract)


# --- a late outcome: counted, snapshotted as of its time, held out -----------------------------------


def test_a_late_outcome_is_counted_lands_in_the_next_snapshot_and_is_held_out(ws: Workspace) -> None:
    quick = quick_workspace(ws)
    demo.seed_demo(ws.engine)
    outcomes = withhold_outcomes(ws, LATE_IDS)
    first = retrain_through_stages(quick, make_run("first", server_now(ws)))
    assert first["outcome"]["status"] == "promoted"
    assert (first["snapshot"]["row_count"], first["snapshot"]["unlabelled_rows"]) == (442 - 30, 30)
    with ws.engine.connect() as conn:
        assert count_new_labelled_rows(conn, ws.config.dataset, last_seen_watermark(conn, ws.model))[0] == 0

    fill_in_outcomes(ws, outcomes)

    with ws.engine.connect() as conn:
        since = last_seen_watermark(conn, ws.model)
        count, newest = count_new_labelled_rows(conn, ws.config.dataset, since)
    assert count == 30 and newest > since  # rows recorded in 2024, outcomes known now
    signal = claim_arrival_signal(ws.engine, ws.model, ws.config.dataset, min_new_rows=30)
    assert signal is not None and signal["new_rows"] == 30

    second = retrain_through_stages(quick, make_run("second", server_now(ws)))
    assert (second["snapshot"]["row_count"], second["snapshot"]["unlabelled_rows"]) == (442, 0)
    version = second["candidate"]["version"]
    trained_on, held_out = holdout_ids(ws, version)
    assert set(LATE_IDS) <= held_out and not set(LATE_IDS) & trained_on
    # Recorded first, labelled last: by record time they would all have been trained on.
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.model)
    assert set(model["holdout_start"]) == {"label_recorded_at", stages.HOLDOUT_ID_HMAC}  # the id as its keyed hash
    [evaluation] = fetch(ws, "SELECT evidence FROM pipeline.evaluations WHERE run_id = 'second'")
    assert evaluation["evidence"]["holdout_rows_excluded_champion_trained"] == 0


def test_a_snapshot_read_again_after_later_outcomes_gives_the_same_hash(ws: Workspace, tmp_path: Path) -> None:
    demo.seed_demo(ws.engine)
    outcomes = withhold_outcomes(ws, LATE_IDS)
    watermark = server_now(ws)
    first, _ = ingest.take_snapshot(ws.engine, ws.config.dataset, watermark, tmp_path)

    fill_in_outcomes(ws, outcomes)  # outcomes known after the watermark ...
    demo.simulate_arrivals(ws.engine, rows=10, seed=3)  # ... and rows recorded after it
    again, table = ingest.take_snapshot(ws.engine, ws.config.dataset, watermark, tmp_path)

    assert again == first
    assert (first.row_count, first.unlabelled_rows) == (442 - 30, 30)
    assert not set(LATE_IDS) & set(table.column("patient_id").to_pylist())
    waiting = ingest.load_snapshot(Path(str(again.unlabelled_path)), str(again.unlabelled_hash))
    assert sorted(waiting["patient_id"]) == LATE_IDS
    assert waiting["progression_12m"].isna().all() and waiting["label_recorded_at"].isna().all()
    now, _ = ingest.take_snapshot(ws.engine, ws.config.dataset, server_now(ws), tmp_path)
    assert (now.row_count, now.unlabelled_rows) == (442 + 10, 0)


# --- the evaluation never judges the champion on rows it trained on ----------------------------------


def test_holdout_rows_the_champion_trained_on_are_left_out_and_counted(ws: Workspace) -> None:
    quick = quick_workspace(ws)
    # The champion held out 10 %, trained on the oldest 90 %; the candidate holds out 30 % of the same rows.
    promote_demo_champion(with_holdout_fraction(quick, 0.1))
    trained_on, _ = holdout_ids(ws, 1)
    candidate_ws = with_holdout_fraction(quick, 0.3)
    run = make_run("wider-holdout", DEMO_WATERMARK)
    snapshot = stages.ingest_snapshot(candidate_ws, run)  # the same rows: no has_new_data gate here
    checked = stages.validate_snapshot(candidate_ws, run, snapshot["snapshot_hash"])
    version = stages.train_candidate(candidate_ws, run, checked["clean_snapshot_hash"])["version"]
    result = stages.evaluate_candidate(candidate_ws, run, version)

    [evaluation] = fetch(ws, "SELECT * FROM pipeline.evaluations WHERE run_id = 'wider-holdout'")
    evidence = evaluation["evidence"]
    _, held_out = holdout_ids(ws, version)
    compared = held_out - trained_on
    assert evidence["holdout_rows_excluded_champion_trained"] == len(held_out & trained_on) == 133 - 44
    assert evaluation["holdout_rows"] == evidence["holdout_rows"] == len(compared) == 44
    assert evaluation["candidate_metrics"]["n"] == evaluation["champion_metrics"]["n"] == 44
    # The champion's metrics are its error on the compared rows alone, computed here by hand.
    frame = ws.load_snapshot(checked["clean_snapshot_hash"])
    rows = frame[frame["patient_id"].isin(compared)]
    with ws.engine.connect() as conn:
        champion = records.get_model(conn, 1, ws.model)
    by_hand = evaluate.regression_metrics(rows["progression_12m"].to_numpy(),
                                          ws.load_model(champion["artifact_hash"]).predict(model_inputs(rows,
                                                                                           ws.config.dataset)))
    assert evaluation["champion_metrics"]["rmse"] == pytest.approx(by_hand["rmse"], rel=1e-12)
    assert "89 the champion trained on were left out" in result["reason"]
    page = stored_text(ws, ws.settings.artifact_dir / result["comparison"])
    assert "89 holdout rows the champion trained on were left out" in page


def test_an_unreadable_champion_snapshot_fails_the_comparison_closed_naming_the_file(ws: Workspace) -> None:
    quick = quick_workspace(ws)
    promote_demo_champion(quick, lambda w, r: retrain_through_stages(
        w, dataclasses.replace(r, watermark=DEMO_WATERMARK - timedelta(days=60))))
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
    assert champion is not None
    lost = ws.snapshot_path(champion["snapshot_hash"])
    lost.unlink()

    result = retrain_through_stages(quick, make_run("after-loss", DEMO_WATERMARK), margin=-1.0)

    assert result["outcome"]["status"] == "kept"
    reason = result["evaluation"]["reason"]
    assert reason.startswith(f"fail closed: champion version {champion['version']}'s training snapshot {lost}")
    assert "could not be read" in reason
    [evaluation] = fetch(ws, "SELECT champion_metrics FROM pipeline.evaluations WHERE run_id = 'after-loss'")
    assert evaluation["champion_metrics"] is None  # never scored on rows that may be its own


# --- a contract without label_timestamp_column: everything keys on the record time, as before ---------


def test_without_a_label_time_late_outcomes_go_unseen_and_snapshots_move(ws: Workspace,
                                                                          tmp_path: Path) -> None:
    plain = without_label_time(ws)
    contract = plain.config.dataset
    assert "label_recorded_at" not in contract.columns() and contract.labelled_at_column() == "recorded_at"
    demo.seed_demo(ws.engine)
    outcomes = withhold_outcomes(ws, LATE_IDS)
    watermark = server_now(ws)
    first, _ = ingest.take_snapshot(ws.engine, contract, watermark, tmp_path)

    fill_in_outcomes(ws, outcomes)

    with ws.engine.connect() as conn:
        assert count_new_labelled_rows(conn, contract, watermark)[0] == 0  # recorded before: never counted
    again, table = ingest.take_snapshot(ws.engine, contract, watermark, tmp_path)
    assert (first.row_count, again.row_count) == (442 - 30, 442)  # the read as of the watermark changed
    assert table.column_names == contract.columns()
    frame = ingest.arrow_to_frame(table)
    _, held_out = train.split_holdout(frame, contract, 0.2)  # by record time: the late rows are the oldest
    assert not set(LATE_IDS) & set(held_out["patient_id"])
    assert held_out.equals(frame.sort_values(["recorded_at", "patient_id"]).tail(len(held_out)))
