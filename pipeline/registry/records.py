"""The registry: runs, snapshots, validations, model versions, evaluations and the champion."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.data.ingest import Snapshot
from pipeline.store import crypto

_PROMOTION_LOCK_ID = 72_410_002  # pg_advisory_xact_lock key: promotions never interleave


class StaleChampionError(RuntimeError):
    """The champion changed between evaluation and promotion."""


class RunIdTaken(ValueError):
    """A run id is already recorded for another model: run ids are unique across the database."""


def _jsonable(value: Any) -> Any:
    """JSON's own types: NaN and infinity (which jsonb refuses) become null, numpy scalars plain."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _json(value: Any) -> str:
    return json.dumps(_jsonable(value), default=str)


def _row(result: sa.CursorResult[Any]) -> dict[str, Any] | None:
    row = result.mappings().first()
    return dict(row) if row is not None else None


def start_run(conn: Connection, model: str, run_id: str, triggered_by: str, watermark: datetime,
              params: dict[str, Any], trigger_event: dict[str, Any] | None = None) -> None:
    """Record that a run of `model` started, how and by which event; a retried task refreshes the same row."""
    started = conn.execute(sa.text("""
        INSERT INTO pipeline.training_runs (model, run_id, triggered_by, watermark, params, status, trigger_event)
        VALUES (:model, :run_id, :by, :wm, CAST(:params AS jsonb), 'running', CAST(:event AS jsonb))
        ON CONFLICT (run_id) DO UPDATE
           SET status = 'running', reason = NULL, finished_at = NULL, params = EXCLUDED.params
         WHERE pipeline.training_runs.model = EXCLUDED.model
        RETURNING run_id
    """), {"model": model, "run_id": run_id, "by": triggered_by, "wm": watermark, "params": _json(params),
           "event": _json(trigger_event) if trigger_event else None}).scalar()
    if started is None:
        owner = conn.scalar(sa.text("SELECT model FROM pipeline.training_runs WHERE run_id = :r"), {"r": run_id})
        raise RunIdTaken(f"run id {run_id!r} is already a run of model {owner!r}, not {model!r}; use another run id")


def last_trained_snapshot(conn: Connection, model: str, exclude_run: str) -> dict[str, Any] | None:
    """The raw snapshot behind the model's newest version, not counting this run's own."""
    return _row(conn.execute(sa.text("""
        SELECT m.version, m.run_id, coalesce(s.parent_hash, s.snapshot_hash) AS snapshot_hash
          FROM pipeline.model_versions m JOIN pipeline.snapshots s USING (snapshot_hash)
         WHERE m.model = :model AND m.run_id <> :run_id ORDER BY m.version DESC LIMIT 1
    """), {"model": model, "run_id": exclude_run}))


def finish_run(conn: Connection, run_id: str, status: str, reason: str) -> None:
    conn.execute(sa.text("""
        UPDATE pipeline.training_runs SET status = :status, reason = :reason, finished_at = now()
         WHERE run_id = :run_id
    """), {"run_id": run_id, "status": status, "reason": reason})


def run_snapshot(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """The raw snapshot a run recorded at its ingest, if it got that far."""
    return _row(conn.execute(sa.text("""
        SELECT s.* FROM pipeline.training_runs r JOIN pipeline.snapshots s USING (snapshot_hash)
         WHERE r.run_id = :run_id
    """), {"run_id": run_id}))


def get_run(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """The run's row in pipeline.training_runs, if a run has that id (any model's)."""
    return _row(conn.execute(sa.text("SELECT * FROM pipeline.training_runs WHERE run_id = :r"), {"r": run_id}))


def evaluation_of_run(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """The run's recorded evaluation, if it got that far."""
    return _row(conn.execute(sa.text("SELECT * FROM pipeline.evaluations WHERE run_id = :r"), {"r": run_id}))


def model_of_run(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """The candidate a run registered, if any (one per run)."""
    return _row(conn.execute(sa.text("SELECT * FROM pipeline.model_versions WHERE run_id = :run_id"),
                             {"run_id": run_id}))


def record_snapshot(conn: Connection, snapshot: Snapshot, run_id: str) -> None:
    """Register a snapshot once (same rows, same hash) and link the run to it."""
    conn.execute(sa.text("""
        INSERT INTO pipeline.snapshots (snapshot_hash, source_table, query, watermark, row_count, path, first_run_id,
                                        unlabelled_rows, erased_rows)
        VALUES (:h, :t, :q, :wm, :n, :p, :run_id, :unlabelled, :erased)
        ON CONFLICT (snapshot_hash) DO NOTHING
    """), {"h": snapshot.snapshot_hash, "t": snapshot.source_table, "q": snapshot.query,
           "wm": snapshot.watermark, "n": snapshot.row_count, "p": snapshot.path, "run_id": run_id,
           "unlabelled": snapshot.unlabelled_rows, "erased": snapshot.erased_rows})
    conn.execute(sa.text("UPDATE pipeline.training_runs SET snapshot_hash = :h WHERE run_id = :run_id"),
                 {"h": snapshot.snapshot_hash, "run_id": run_id})


def record_derived_snapshot(conn: Connection, kind: str, snapshot_hash: str, path: str, raw: dict[str, Any],
                            rows: int, run_id: str, query: str | None = None) -> None:
    """Register a snapshot made from a raw one, linked to it: its valid rows ('clean'), or the rows
    recorded with it that await their outcome ('unlabelled')."""
    conn.execute(sa.text("""
        INSERT INTO pipeline.snapshots (snapshot_hash, source_table, query, watermark, row_count, path,
                                        first_run_id, kind, parent_hash)
        VALUES (:h, :t, :q, :wm, :n, :p, :run_id, :kind, :parent)
        ON CONFLICT (snapshot_hash) DO NOTHING
    """), {"h": snapshot_hash, "t": raw["source_table"], "q": query or raw["query"], "wm": raw["watermark"],
           "n": rows, "p": path, "run_id": run_id, "kind": kind, "parent": raw["snapshot_hash"]})


def unlabelled_snapshot(conn: Connection, raw_hash: str) -> dict[str, Any] | None:
    """The snapshot of rows awaiting their outcome that was taken with a raw snapshot, if any: for a raw snapshot
    an erasure rewrote, the one taken with the original, as it stands now (its redacted copy, if rewritten too)."""
    row = _row(conn.execute(sa.text("""
        SELECT * FROM pipeline.snapshots WHERE parent_hash = :h AND kind = 'unlabelled'
         ORDER BY created_at LIMIT 1
    """), {"h": raw_hash}))
    if row is None:
        older = conn.scalar(sa.text(
            "SELECT old_hash FROM pipeline.snapshot_redactions WHERE new_hash = :h ORDER BY at LIMIT 1"), {"h": raw_hash})
        return None if older is None else unlabelled_snapshot(conn, str(older))
    live = live_snapshot_hash(conn, row["snapshot_hash"])
    return row if live == row["snapshot_hash"] else get_snapshot(conn, live)


def live_snapshot_hash(conn: Connection, snapshot_hash: str) -> str:
    """The snapshot that stands for `snapshot_hash` now: itself, or the redacted copy an erasure rewrote it as
    (following erasure after erasure; pipeline.snapshot_redactions)."""
    current, seen = snapshot_hash, {snapshot_hash}
    while (newer := conn.scalar(sa.text("SELECT new_hash FROM pipeline.snapshot_redactions WHERE old_hash = :h"),
                                {"h": current})) is not None:
        if newer in seen:
            raise ValueError(f"snapshot redactions of {snapshot_hash} go round in a circle at {newer}")
        current = str(newer)
        seen.add(current)
    return current


def erasures_of_version(conn: Connection, version: int) -> list[dict[str, Any]]:
    """The erasure requests that removed rows this version was trained on (it is `trained_on_erased`), oldest first."""
    rows = conn.execute(sa.text("""
        SELECT l.request_id, l.at, r.reason FROM pipeline.erased_lineage l
          JOIN pipeline.erasure_requests r USING (request_id)
         WHERE l.version = :v ORDER BY l.request_id
    """), {"v": version}).mappings()
    return [dict(r) for r in rows]


def erasure_deadline(conn: Connection, model: str, within_days: float) -> dict[str, Any] | None:
    """When the model's champion was trained on rows erased since (pipeline.trained_on_erased): the first such
    erasure and the deadline `within_days` after it by which the champion must be replaced; else None."""
    row = _row(conn.execute(sa.text("""
        SELECT c.version, t.first_erasure_at, t.erasures FROM pipeline.champion c
          JOIN pipeline.trained_on_erased t USING (version)
         WHERE c.model = :model AND c.slot = 'production'
    """), {"model": model}))
    if row is None:
        return None
    return {"champion": int(row["version"]), "first_erasure_at": row["first_erasure_at"],
            "erasures": int(row["erasures"]), "retrain_within_days": within_days,
            "deadline": row["first_erasure_at"] + timedelta(days=within_days)}


ERASURE_RETRAIN_MARGIN = timedelta(days=1)  # a retrain is forced when the deadline is this near, or past


def erasure_retrain_due(conn: Connection, model: str, within_days: float, at: datetime) -> dict[str, Any] | None:
    """The erasure deadline when a retrain must replace the champion now (past, or within a day of `at`)."""
    deadline = erasure_deadline(conn, model, within_days)
    if deadline is None or deadline["deadline"] - ERASURE_RETRAIN_MARGIN > at:
        return None
    return deadline


def get_snapshot(conn: Connection, snapshot_hash: str) -> dict[str, Any]:
    row = _row(conn.execute(sa.text("SELECT * FROM pipeline.snapshots WHERE snapshot_hash = :h"),
                            {"h": snapshot_hash}))
    if row is None:
        raise LookupError(f"snapshot {snapshot_hash} is not registered")
    return row


SEALED_VALIDATION = ("failures", "result", "normalisations")  # the columns that can hold patient values
SEALED_QUARANTINE = ("source_id", "reasons", "original")


def sealed_context(row: dict[str, Any]) -> str:
    """The identity a sealed registry value is bound to (its associated data): its table and primary key."""
    if "row_number" in row:
        return f"quarantine|{row['run_id']}|{row['snapshot_hash']}|{row['row_number']}"
    if "snapshot_hash" not in row:
        return f"scoring_refusals|{row['run_id']}|{row['source_id']}"
    return f"validation_results|{row['run_id']}|{row['snapshot_hash']}"


def seal_refusal(run_id: str, source_id: str, reasons: list[dict[str, Any]], sealer: crypto.ValueSealer
                 ) -> dict[str, Any]:
    """A refused record's row (pipeline.scoring_refusals) with the values that broke the contract sealed: its
    reasons' codes, columns and rules stay plain (the forecasts page counts and lists them by code)."""
    context = sealed_context({"run_id": run_id, "source_id": source_id})
    return {"run_id": run_id, "source_id": source_id, "key_ref": sealer.ref,
            "reasons": [{k: v for k, v in reason.items() if k != "value"} for reason in reasons],
            "sealed": sealer.seal({"reasons": reasons}, context)}


def opened(row: dict[str, Any], keys: crypto.Keyring | None) -> dict[str, Any]:
    """A quarantine, validation or scoring-refusal row with its sealed values opened in place of their redacted
    copies (a plain row as it is); a SealError names the row and the key when they do not open."""
    if row.get("sealed") is None:
        return {k: v for k, v in row.items() if k != "sealed"}
    context = sealed_context(row)
    what = f"pipeline.{context.split('|')[0]} row ({', '.join(context.split('|')[1:])})"
    payload = crypto.open_value(row["sealed"], row["key_ref"], keys, context, what)
    return {**{k: v for k, v in row.items() if k != "sealed"}, **payload}


def _redacted(value: Any) -> Any:
    """A validation document without what can name or describe a patient: sample ids, GX's lists of unexpected
    values and rows; counts, rules and statistics stay."""
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()
                if not (str(k).endswith("ids") or str(k).endswith("_list") or str(k).startswith("partial_unexpected")
                        or str(k) in ("value", "values", "unexpected_rows"))}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def seal_validation(record: dict[str, Any], run_id: str, snapshot_hash: str,
                    sealer: crypto.ValueSealer) -> dict[str, Any]:
    """The record with its patient values sealed (`sealed`, `key_ref`) and redacted in the plain columns."""
    payload = {k: _jsonable(record[k]) for k in SEALED_VALIDATION if k in record}
    context = sealed_context({"run_id": run_id, "snapshot_hash": snapshot_hash})
    return {**record, **{k: _redacted(v) for k, v in payload.items()}, "key_ref": sealer.ref,
            "sealed": sealer.seal(payload, context)}


def reseal_refusals(conn: Connection, run_id: str, rows: list[dict[str, Any]], sealer: crypto.ValueSealer) -> None:
    """Write one scoring run's refusals back (plain ones, or sealed ones opened) sealed under `sealer`'s key."""
    for row in rows:
        sealed = seal_refusal(run_id, row["source_id"], row["reasons"], sealer)
        conn.execute(sa.text("""
            UPDATE pipeline.scoring_refusals SET reasons = CAST(:reasons AS jsonb), key_ref = :key_ref, sealed = :sealed
             WHERE run_id = :run_id AND source_id = :source_id
        """), {**sealed, "reasons": json.dumps(sealed["reasons"], default=str)})


def record_validation(conn: Connection, run_id: str, snapshot_hash: str, record: dict[str, Any],
                      sealer: crypto.ValueSealer | None = None) -> None:
    """Store one validation with its row counts; a retried task replaces its own row. With `sealer` (encryption
    at rest) the values that can name patients are sealed under its key, and kept redacted in plain."""
    json_keys = ("statistics", "failures", "result", "reason_counts", "normalisations", "unlabelled_reason_counts")
    if sealer is not None:
        record = seal_validation(record, run_id, snapshot_hash, sealer)
    record = {"key_ref": None, "sealed": None, **record}
    values = {k: (_json(v) if k in json_keys else v) for k, v in record.items()}
    conn.execute(sa.text("""
        INSERT INTO pipeline.validation_results
               (run_id, snapshot_hash, suite_name, success, statistics, failures, result, rows_read, rows_valid,
                rows_quarantined, reason_counts, normalisations, clean_snapshot_hash, report_path,
                rows_unlabelled, unlabelled_faulty, unlabelled_reason_counts, key_ref, sealed)
        VALUES (:run_id, :snapshot_hash, :suite_name, :success, CAST(:statistics AS jsonb),
                CAST(:failures AS jsonb), CAST(:result AS jsonb), :rows_read, :rows_valid, :rows_quarantined,
                CAST(:reason_counts AS jsonb), CAST(:normalisations AS jsonb), :clean_snapshot_hash, :report_path,
                :rows_unlabelled, :unlabelled_faulty, CAST(:unlabelled_reason_counts AS jsonb), :key_ref, :sealed)
        ON CONFLICT (run_id, snapshot_hash) DO UPDATE SET
               success = EXCLUDED.success, statistics = EXCLUDED.statistics, failures = EXCLUDED.failures,
               result = EXCLUDED.result, rows_read = EXCLUDED.rows_read, rows_valid = EXCLUDED.rows_valid,
               rows_quarantined = EXCLUDED.rows_quarantined, reason_counts = EXCLUDED.reason_counts,
               normalisations = EXCLUDED.normalisations, clean_snapshot_hash = EXCLUDED.clean_snapshot_hash,
               report_path = EXCLUDED.report_path, rows_unlabelled = EXCLUDED.rows_unlabelled,
               unlabelled_faulty = EXCLUDED.unlabelled_faulty,
               unlabelled_reason_counts = EXCLUDED.unlabelled_reason_counts, key_ref = EXCLUDED.key_ref,
               sealed = EXCLUDED.sealed, created_at = now()
    """), {**values, "run_id": run_id, "snapshot_hash": snapshot_hash})


QUARANTINE_FIELDS = ("snapshot_hash", "row_number", "source_id", "reasons", "original", "labelled")
QUARANTINE_BATCH_ROWS = 10_000  # quarantined rows per INSERT, sent as one JSON document


def seal_quarantined(row: dict[str, Any], run_id: str, sealer: crypto.ValueSealer) -> dict[str, Any]:
    """A quarantined row with its source id, reasons' values and original row sealed; its reasons' codes,
    columns and rules stay plain (the view filters and counts by code)."""
    payload = _jsonable({k: row[k] for k in SEALED_QUARANTINE})
    context = sealed_context({**row, "run_id": run_id})
    return {**row, "source_id": None, "original": None, "key_ref": sealer.ref,
            "reasons": [{k: v for k, v in reason.items() if k != "value"} for reason in row["reasons"]],
            "sealed": sealer.seal(payload, context).hex()}


def record_quarantine(conn: Connection, run_id: str, rows: list[dict[str, Any]],
                      sealer: crypto.ValueSealer | None = None) -> None:
    """Replace this run's quarantined rows (so a retried task does not duplicate them). Each row names
    its snapshot and whether it is labelled (left out of training) or awaits its outcome (reported). With
    `sealer` (encryption at rest; one data key for the run's rows) the patient's values are sealed."""
    conn.execute(sa.text("DELETE FROM pipeline.quarantine WHERE run_id = :r"), {"r": run_id})
    for start in range(0, len(rows), QUARANTINE_BATCH_ROWS):  # one statement per batch, not one per row
        batch = [{k: r[k] for k in QUARANTINE_FIELDS} for r in rows[start:start + QUARANTINE_BATCH_ROWS]]
        if sealer is not None:
            batch = [seal_quarantined(r, run_id, sealer) for r in batch]
        conn.execute(sa.text("""
            INSERT INTO pipeline.quarantine (run_id, snapshot_hash, row_number, source_id, reasons, original, labelled,
                   key_ref, sealed)
            SELECT :run_id, r.snapshot_hash, r.row_number, r.source_id, r.reasons, r.original, r.labelled, r.key_ref,
                   decode(r.sealed, 'hex')
              FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(snapshot_hash text, row_number integer,
                   source_id text, reasons jsonb, original jsonb, labelled boolean, key_ref text, sealed text)
        """), {"run_id": run_id, "rows": _json(batch)})


def quality_history(conn: Connection, model: str, limit: int = 10) -> list[dict[str, Any]]:
    """The model's latest validations: rows read, valid, quarantined by reason, and awaiting an outcome."""
    rows = conn.execute(sa.text("""
        SELECT v.run_id, v.snapshot_hash, v.success, v.rows_read, v.rows_valid, v.rows_quarantined, v.reason_counts,
               v.rows_unlabelled, v.unlabelled_faulty, v.unlabelled_reason_counts, v.normalisations,
               v.report_path, v.created_at
          FROM pipeline.validation_results v JOIN pipeline.training_runs r USING (run_id)
         WHERE r.model = :model ORDER BY v.created_at DESC LIMIT :n
    """), {"model": model, "n": limit}).mappings()
    return [dict(r) for r in rows]


def register_model(conn: Connection, record: dict[str, Any]) -> int:
    """Register the run's candidate once and return its version; a retry gets the same version."""
    json_keys = ("params", "cv_metrics", "holdout_start", "library_versions")
    values = {k: (_json(v) if k in json_keys else v) for k, v in record.items()}
    inserted = conn.execute(sa.text("""
        INSERT INTO pipeline.model_versions
               (model, run_id, snapshot_hash, artifact_hash, artifact_path, model_family, params, cv_metrics,
                train_rows, holdout_rows, holdout_start, library_versions, code_version)
        VALUES (:model, :run_id, :snapshot_hash, :artifact_hash, :artifact_path, :model_family, CAST(:params AS jsonb),
                CAST(:cv_metrics AS jsonb), :train_rows, :holdout_rows, CAST(:holdout_start AS jsonb),
                CAST(:library_versions AS jsonb), :code_version)
        ON CONFLICT (run_id) DO NOTHING
        RETURNING version
    """), values).scalar()
    if inserted is not None:
        return int(inserted)
    return int(conn.execute(sa.text("SELECT version FROM pipeline.model_versions WHERE run_id = :r"),
                            {"r": record["run_id"]}).scalar_one())


def get_model(conn: Connection, version: int, model: str) -> dict[str, Any]:
    """A registered version of `model`; a version of another model is not found here."""
    row = _row(conn.execute(sa.text("SELECT * FROM pipeline.model_versions WHERE version = :v"), {"v": version}))
    if row is None:
        raise LookupError(f"model version {version} is not registered")
    if row["model"] != model:
        raise LookupError(f"version {version} is a version of model {row['model']!r}, not of {model!r}")
    return row


def current_champion(conn: Connection, model: str) -> dict[str, Any] | None:
    """The model's champion row joined with its version, or None before its first promotion."""
    return _row(conn.execute(sa.text("""
        SELECT c.version, c.run_id AS promoted_by_run, c.promoted_at, m.*
          FROM pipeline.champion c JOIN pipeline.model_versions m USING (version)
         WHERE c.model = :model AND c.slot = 'production'
    """), {"model": model}))


def record_evaluation(conn: Connection, run_id: str, evaluation: dict[str, Any]) -> None:
    conn.execute(sa.text("""
        INSERT INTO pipeline.evaluations (run_id, candidate_version, champion_version, holdout_rows,
               candidate_metrics, champion_metrics, policy, decision, reason, evidence)
        VALUES (:run_id, :candidate_version, :champion_version, :holdout_rows, CAST(:cm AS jsonb),
                CAST(:chm AS jsonb), CAST(:policy AS jsonb), :decision, :reason, CAST(:evidence AS jsonb))
        ON CONFLICT (run_id) DO UPDATE SET
               candidate_version = EXCLUDED.candidate_version, champion_version = EXCLUDED.champion_version,
               holdout_rows = EXCLUDED.holdout_rows, candidate_metrics = EXCLUDED.candidate_metrics,
               champion_metrics = EXCLUDED.champion_metrics, policy = EXCLUDED.policy,
               decision = EXCLUDED.decision, reason = EXCLUDED.reason, evidence = EXCLUDED.evidence,
               created_at = now()
    """), {"run_id": run_id, "candidate_version": evaluation["candidate_version"],
           "champion_version": evaluation["champion_version"], "holdout_rows": evaluation["holdout_rows"],
           "cm": _json(evaluation["candidate_metrics"]),
           "chm": _json(evaluation["champion_metrics"]) if evaluation["champion_metrics"] else None,
           "policy": _json(evaluation["policy"]), "decision": evaluation["decision"],
           "reason": evaluation["reason"], "evidence": _json(evaluation.get("evidence"))})


def get_evaluation(conn: Connection, run_id: str) -> dict[str, Any]:
    row = evaluation_of_run(conn, run_id)
    if row is None:
        raise LookupError(f"run {run_id} has no evaluation; run the evaluate stage first")
    return row


def promoted_by_run(conn: Connection, run_id: str) -> int | None:
    """The version this run made champion, if it did (the event log is the record)."""
    version = conn.scalar(sa.text(
        "SELECT to_version FROM pipeline.promotion_events WHERE run_id = :r ORDER BY event_id LIMIT 1"),
        {"r": run_id})
    return int(version) if version is not None else None


def _lock_promotions(conn: Connection, model: str) -> int | None:
    """Take the model's promotion lock for this transaction; the champion version it finds."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:model))"), {"k": _PROMOTION_LOCK_ID, "model": model})
    version = conn.execute(sa.text(
        "SELECT version FROM pipeline.champion WHERE model = :model AND slot = 'production' FOR UPDATE"),
        {"model": model}).scalar()
    return None if version is None else int(version)


def _set_champion(conn: Connection, model: str, from_version: int | None, to_version: int, run_id: str,
                  actor: str, reason: str, evidence: dict[str, Any] | None = None) -> None:
    """Point the model's champion at a version and append the event, inside the caller's transaction.
    A version in shadow that becomes champion leaves the shadow set, as an event too."""
    conn.execute(sa.text("""
        INSERT INTO pipeline.champion (model, slot, version, run_id, promoted_at)
        VALUES (:model, 'production', :v, :run_id, now())
        ON CONFLICT (model, slot) DO UPDATE SET version = EXCLUDED.version, run_id = EXCLUDED.run_id,
                                                promoted_at = EXCLUDED.promoted_at
    """), {"model": model, "v": to_version, "run_id": run_id})
    conn.execute(sa.text("""
        INSERT INTO pipeline.promotion_events (model, from_version, to_version, run_id, actor, reason, evidence)
        VALUES (:model, :from_v, :to_v, :run_id, :actor, :reason, CAST(:evidence AS jsonb))
    """), {"model": model, "from_v": from_version, "to_v": to_version, "run_id": run_id, "actor": actor,
           "reason": reason, "evidence": _json(evidence) if evidence is not None else None})
    if to_version in shadow_versions(conn, model):
        _shadow_event(conn, model, to_version, "remove", actor, f"became champion (run {run_id})")


def promote(engine: Engine, model: str, run_id: str, to_version: int, expected_champion: int | None, actor: str,
            reason: str) -> bool:
    """Make `to_version` champion in one transaction, if the champion is still `expected_champion`.

    Returns False when `to_version` already is the champion (a retried task). Raises
    StaleChampionError when another run changed the champion since this run's evaluation.
    """
    with engine.begin() as conn:
        current = _lock_promotions(conn, model)
        if current == to_version or promoted_by_run(conn, run_id) == to_version:
            return False  # this run already promoted it (a retried task); later promotions stand
        if current != expected_champion:
            raise StaleChampionError(
                f"champion is now version {current} of {model}, but run {run_id} was evaluated against "
                f"{expected_champion}; not promoting. Re-run the evaluation.")
        _set_champion(conn, model, current, to_version, run_id, actor, reason)
    return True


def recent_runs(conn: Connection, model: str, limit: int = 10) -> list[dict[str, Any]]:
    """The model's latest runs, newest first, with their decisions."""
    rows = conn.execute(sa.text("""
        SELECT r.run_id, r.triggered_by, r.status, r.reason, r.failure_kind, r.active_stage, r.owner,
               r.watermark, r.snapshot_hash, r.started_at, r.finished_at, e.candidate_version, e.decision,
               e.candidate_metrics, e.champion_metrics
          FROM pipeline.training_runs r LEFT JOIN pipeline.evaluations e USING (run_id)
         WHERE r.model = :model ORDER BY r.started_at DESC LIMIT :n
    """), {"model": model, "n": limit}).mappings()
    return [dict(r) for r in rows]


def promotion_history(conn: Connection, model: str) -> list[dict[str, Any]]:
    """Every change of the model's champion, oldest first."""
    rows = conn.execute(sa.text("SELECT * FROM pipeline.promotion_events WHERE model = :model ORDER BY event_id"),
                        {"model": model}).mappings()
    return [dict(r) for r in rows]


def record_drift_report(conn: Connection, report: dict[str, Any]) -> None:
    """Store one drift check; a retried task replaces its own row."""
    conn.execute(sa.text("""
        INSERT INTO pipeline.drift_reports (model, run_id, champion_version, reference_snapshot, window_start, window_end,
               reference_rows, recent_rows, unreadable_rows, quarantined_rows, quarantine_reasons, verdict, features,
               report_path)
        VALUES (:model, :run_id, :champion_version, :reference_snapshot, :window_start, :window_end,
                :reference_rows, :recent_rows, :unreadable_rows, :quarantined_rows, CAST(:quarantine_reasons AS jsonb),
                :verdict, CAST(:features AS jsonb), :report_path)
        ON CONFLICT (run_id) DO UPDATE SET
               champion_version = EXCLUDED.champion_version, reference_snapshot = EXCLUDED.reference_snapshot,
               window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,
               reference_rows = EXCLUDED.reference_rows, recent_rows = EXCLUDED.recent_rows,
               unreadable_rows = EXCLUDED.unreadable_rows, quarantined_rows = EXCLUDED.quarantined_rows,
               quarantine_reasons = EXCLUDED.quarantine_reasons,
               verdict = EXCLUDED.verdict, features = EXCLUDED.features, report_path = EXCLUDED.report_path,
               created_at = now()
    """), {"quarantined_rows": 0, **report, "features": _json(report["features"]),
           "quarantine_reasons": _json(report.get("quarantine_reasons") or {})})


def previous_champion(conn: Connection, model: str) -> int | None:
    """The version the model's current champion replaced (where a plain rollback goes back to)."""
    version = conn.scalar(sa.text("""
        SELECT e.from_version FROM pipeline.promotion_events e
          JOIN pipeline.champion c ON c.version = e.to_version AND c.model = e.model
         WHERE e.model = :model
         ORDER BY e.event_id DESC LIMIT 1
    """), {"model": model})
    return int(version) if version is not None else None


def set_champion(engine: Engine, model: str, to_version: int, run_id: str, actor: str, reason: str,
                 evidence: dict[str, Any] | None = None) -> int | None:
    """Make a registered version of `model` champion in one transaction, as an event (an operator's
    choice, not a run's decision: no expected champion); returns the version replaced."""
    with engine.begin() as conn:
        get_model(conn, to_version, model)  # a version of another model never becomes this one's champion
        current = _lock_promotions(conn, model)
        if current == to_version:
            raise ValueError(f"version {to_version} is already the champion of {model}")
        _set_champion(conn, model, current, to_version, run_id, actor, reason, evidence)
    return current


def rollback(engine: Engine, model: str, to_version: int, run_id: str, actor: str, reason: str) -> int | None:
    """Make an earlier version champion again in one transaction, as an event; returns the version replaced."""
    return set_champion(engine, model, to_version, run_id, actor, f"rollback: {reason}")


# --- the shadow set --------------------------------------------------------------------------------


def shadow_set(conn: Connection, model: str) -> list[dict[str, Any]]:
    """The model's versions in shadow, oldest version first, with who added them, when and why."""
    rows = conn.execute(sa.text("SELECT * FROM pipeline.shadows WHERE model = :model ORDER BY version"),
                        {"model": model}).mappings()
    return [dict(r) for r in rows]


def shadow_versions(conn: Connection, model: str) -> list[int]:
    return [int(r["version"]) for r in shadow_set(conn, model)]


def shadow_history(conn: Connection, model: str) -> list[dict[str, Any]]:
    """Every change of the model's shadow set, oldest first."""
    rows = conn.execute(sa.text("SELECT * FROM pipeline.shadow_events WHERE model = :model ORDER BY event_id"),
                        {"model": model}).mappings()
    return [dict(r) for r in rows]


def _shadow_event(conn: Connection, model: str, version: int, action: str, actor: str, reason: str) -> None:
    conn.execute(sa.text("""
        INSERT INTO pipeline.shadow_events (model, version, action, actor, reason)
        VALUES (:model, :version, :action, :actor, :reason)
    """), {"model": model, "version": version, "action": action, "actor": actor, "reason": reason})


def add_shadow(engine: Engine, model: str, version: int, actor: str, reason: str, max_shadows: int) -> None:
    """Put a version of `model` in shadow, as an event; under the promotion lock, so the champion cannot
    change meanwhile. Refuses the champion, a version already in shadow, and a set already full."""
    with engine.begin() as conn:
        get_model(conn, version, model)
        champion = _lock_promotions(conn, model)
        if version == champion:
            raise ValueError(f"version {version} is the champion of {model}: it is scored as the champion, "
                             "not in shadow")
        current = shadow_versions(conn, model)
        if version in current:
            raise ValueError(f"version {version} of {model} is already in shadow")
        if len(current) >= max_shadows:
            raise ValueError(f"{model} already has {len(current)} version(s) in shadow {current}, and "
                             f"serving.max_shadows is {max_shadows}: remove one first (shadow --remove VERSION), "
                             "or raise serving.max_shadows in the config")
        _shadow_event(conn, model, version, "add", actor, reason)


def remove_shadow(engine: Engine, model: str, version: int, actor: str, reason: str) -> None:
    """Take a version of `model` out of shadow, as an event; refuses one that is not in shadow."""
    with engine.begin() as conn:
        get_model(conn, version, model)
        _lock_promotions(conn, model)
        current = shadow_versions(conn, model)
        if version not in current:
            raise ValueError(f"version {version} of {model} is not in shadow (in shadow: {current or 'none'})")
        _shadow_event(conn, model, version, "remove", actor, reason)


def last_kept_candidate(conn: Connection, model: str) -> int | None:
    """The candidate of the model's latest run that was evaluated and kept the champion (by the policy's
    decision, a dry run, or a champion that changed meanwhile)."""
    version = conn.scalar(sa.text("""
        SELECT e.candidate_version FROM pipeline.evaluations e JOIN pipeline.training_runs r USING (run_id)
         WHERE r.model = :model AND r.status = 'kept' ORDER BY e.created_at DESC, e.candidate_version DESC LIMIT 1
    """), {"model": model})
    return int(version) if version is not None else None


def record_run_note(engine: Engine, dag_id: str, run_id: str, note: str) -> None:
    """The outcome note of an Airflow run (`pipeline.run_notes`), replacing an earlier try's."""
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO pipeline.run_notes (dag_id, run_id, note) VALUES (:dag_id, :run_id, :note)
            ON CONFLICT (dag_id, run_id) DO UPDATE SET note = EXCLUDED.note, recorded_at = now()
        """), {"dag_id": dag_id, "run_id": run_id, "note": note})


def run_note(conn: Connection, dag_id: str, run_id: str) -> str | None:
    """The outcome note a task recorded for an Airflow run, if any."""
    note = conn.scalar(sa.text("SELECT note FROM pipeline.run_notes WHERE dag_id = :d AND run_id = :r"),
                       {"d": dag_id, "r": run_id})
    return None if note is None else str(note)
