"""The stages of a retrain, each callable from the CLI and from the Airflow DAG alike.

Every stage takes a `Workspace` (settings, configuration, database) and a `Run` (its id and
watermark), reads its inputs from the registry by key, and returns a small JSON-able dict.
Each is idempotent: running it twice for the same run gives the same records.

Every Airflow task imports this module, so it imports no scikit-learn, scipy or matplotlib itself: the stages
that train, evaluate or compare import those modules (train, evaluate, cards, drift, intervals, features)
where they run (tests/integration/test_task_imports.py).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.contract.config import PipelineConfig, PromotionPolicy
from pipeline.contract.settings import Settings
from pipeline.data import ingest, quality, tombstones, validate
from pipeline.data.chunked_quality import CHUNK_ROWS, NotStreamable, classify_snapshots, streamable
from pipeline.registry import records, runs
from pipeline.registry.runs import Run
from pipeline.runtime import memory
from pipeline.store import artifacts
from pipeline.workspace import Workspace

if TYPE_CHECKING:
    from pipeline.model import cards

log = logging.getLogger(__name__)


RUN_TYPE_NAMES = {"scheduled": "schedule", "manual": "operator", "backfill": "backfill"}


def _event_source(event: dict[str, Any]) -> str:
    """'arrival' or 'drift' for the project's own asset events, else 'asset'."""
    extra = event.get("extra") or {}
    payload = extra.get("payload") or {}
    return str(extra.get("source") or payload.get("source") or "asset")


def describe_trigger(run_type: str, user: str | None, asset_events: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """How a run was started, as (short label, full record): schedule, operator:<user>, arrival, drift."""
    if run_type == "asset_triggered":
        label = "+".join(sorted({_event_source(e) for e in asset_events})) or "asset"
    else:
        label = RUN_TYPE_NAMES.get(run_type, run_type)
        if run_type == "manual" and user:
            label = f"{label}:{user}"
    return label, {"run_type": run_type, "user": user, "asset_events": asset_events}


class LineageError(ValueError):
    """A retried stage would mix a run's recorded inputs with new ones."""


def open_workspace(settings: Settings) -> Workspace:
    """The workspace a command or a task works in, once the runs whose process died are marked failed: a run
    is never shown as running when nothing works on it."""
    ws = Workspace.open(settings)
    runs.reap_abandoned(ws.engine, ws.model)
    return ws


F = TypeVar("F", bound=Callable[..., Any])


def stage(name: str) -> Callable[[F], F]:
    """A stage of a run: while it works, its process holds the run's lock and names the stage; any
    exception marks the run failed with the reason and its kind (`pipeline.registry.runs`), then propagates."""
    def wrap(function: F) -> F:
        @functools.wraps(function)
        def staged(ws: Workspace, run: Run, *args: Any, **kwargs: Any) -> Any:
            with runs.running(ws.engine, ws.settings, run.run_id, name), memory.collect_new_only():
                return function(ws, run, *args, **kwargs)
        return staged  # type: ignore[return-value]
    return wrap


def _load_snapshot(ws: Workspace, snapshot_hash: str, columns: list[str] | None = None) -> Any:
    with ws.engine.connect() as conn:
        records.get_snapshot(conn, snapshot_hash)  # registered, or a clear error naming it
    return ws.load_snapshot(snapshot_hash, columns)


def preflight(config: PipelineConfig, engine: Engine, watermark: datetime) -> dict[str, Any]:
    """Everything a run can know is wrong before it starts, checked before it writes anything (the config
    itself was checked when it loaded): every model family's parameters, by building its estimator without
    fitting; the source table's columns and their types, by one catalogue query; and that the watermark
    selects at least one labelled row, by one EXISTS. A failure is one line naming the key or the column;
    `check-config` runs the same checks."""
    from pipeline.model import train

    train.check_families(config.training)
    ingest.check_source_columns(engine, config.dataset)
    ingest.check_selection(engine, config.dataset, watermark)
    return {"families": list(config.training.families), "table": config.dataset.table,
            "watermark": watermark.isoformat()}


def ingest_snapshot(ws: Workspace, run: Run, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Snapshot the labelled rows up to the run's watermark and register it; a retried run reuses the
    snapshot it recorded (see `_recorded_snapshot`). A new run is checked first (`preflight`): a run refused
    there leaves no row, file or event behind."""
    with ws.engine.connect() as conn:
        recorded = records.run_snapshot(conn, run.run_id)
    if recorded is None:
        preflight(ws.config, ws.engine, run.watermark)
    with ws.engine.begin() as conn:
        records.start_run(conn, ws.model, run.run_id, run.triggered_by, run.watermark, params or {},
                           run.trigger_event)
    return _ingest(ws, run, recorded)


@stage("ingest")
def _ingest(ws: Workspace, run: Run, recorded: dict[str, Any] | None) -> dict[str, Any]:
    if recorded is not None and (live := ws.live_snapshot(recorded["snapshot_hash"])) != recorded["snapshot_hash"]:
        with ws.engine.connect() as conn:  # an erasure rewrote the run's snapshot: its redacted copy stands for it
            recorded = records.get_snapshot(conn, live)
    if recorded is not None and ws.snapshot_path(recorded["snapshot_hash"]).is_file():
        return _recorded_snapshot(ws, run, recorded)
    erased = tombstones.refuser(ws.engine, ws.settings.erasure_key_file)
    snapshot, _ = ingest.take_snapshot(ws.engine, ws.config.dataset, run.watermark, ws.store, keep_table=False,
                                       erased=erased)
    if snapshot.erased_rows:
        log.warning("ingest: %d source row(s) refused as erased (their id has a tombstone in "
                    "pipeline.erasure_tombstones); not in the snapshot", snapshot.erased_rows)
    if recorded is not None and snapshot.snapshot_hash != recorded["snapshot_hash"]:
        raise LineageError(
            f"run {run.run_id} recorded snapshot {recorded['snapshot_hash'][:16]}… ({recorded['row_count']} rows up to "
            f"{recorded['watermark']}), whose file is gone from the store {ws.settings.artifact_dir}; the source now "
            f"gives {snapshot.snapshot_hash[:16]}… ({snapshot.row_count} rows). A retried run never mixes its recorded "
            "inputs with new ones: restore the file, or start a new run to train on the rows as they are now")
    with ws.engine.begin() as conn:
        records.record_snapshot(conn, replace(snapshot, path=ws.relative(snapshot.path)), run.run_id)
        if snapshot.unlabelled_hash:  # frozen only when some rows await their outcome
            records.record_derived_snapshot(conn, "unlabelled", snapshot.unlabelled_hash,
                                             ws.relative(str(snapshot.unlabelled_path)), snapshot.as_dict(),
                                             snapshot.unlabelled_rows, run.run_id, snapshot.unlabelled_query)
    log.info("ingest: snapshot %s, %d labelled rows up to %s; %d more await their outcome (not trained on); "
             "file %s", snapshot.snapshot_hash, snapshot.row_count, run.watermark, snapshot.unlabelled_rows,
             snapshot.path)
    return snapshot.as_dict()


def _recorded_snapshot(ws: Workspace, run: Run, recorded: dict[str, Any]) -> dict[str, Any]:
    """A retried run's ingest: the snapshot the run recorded, checked against its hash, never a new read
    (the source may have changed since, and the run's later stages were computed from these rows)."""
    artifacts.verify_file(ws.snapshot_path(recorded["snapshot_hash"]), recorded["snapshot_hash"], ws.store.keyring)
    with ws.engine.connect() as conn:
        waiting = records.unlabelled_snapshot(conn, recorded["snapshot_hash"])
    log.info("run %s was ingested before: reusing its snapshot %s (%d rows up to %s), not reading the source again",
             run.run_id, recorded["snapshot_hash"], recorded["row_count"], recorded["watermark"])
    return ingest.Snapshot(
        recorded["snapshot_hash"], str(ws.snapshot_path(recorded["snapshot_hash"])), recorded["row_count"],
        recorded["watermark"].isoformat(), recorded["source_table"], recorded["query"],
        unlabelled_rows=recorded["unlabelled_rows"] or 0,
        unlabelled_hash=waiting["snapshot_hash"] if waiting else None,
        unlabelled_path=str(ws.snapshot_path(waiting["snapshot_hash"])) if waiting else None,
        unlabelled_query=waiting["query"] if waiting else None).as_dict()


@stage("has_new_data")
def has_new_data(ws: Workspace, run: Run, snapshot_hash: str, force: bool = False) -> bool:
    """False (and the run recorded as skipped) when the latest model was trained on these very rows."""
    with ws.engine.connect() as conn:
        last = records.last_trained_snapshot(conn, ws.model, exclude_run=run.run_id)
        if last is not None:  # a snapshot an erasure rewrote is compared as its redacted copy
            last["snapshot_hash"] = records.live_snapshot_hash(conn, last["snapshot_hash"])
        snapshot_hash = records.live_snapshot_hash(conn, snapshot_hash)
        due = None if force else records.erasure_retrain_due(conn, ws.model, ws.config.erasure.retrain_within_days,
                                                              run.watermark)
    if due is not None:
        log.warning("retrain forced: champion version %s was trained on rows erased since %s and must be replaced by "
                    "%s (erasure.retrain_within_days %g)", due["champion"], due["first_erasure_at"], due["deadline"],
                    due["retrain_within_days"])
        return True
    if force or last is None or last["snapshot_hash"] != snapshot_hash:
        log.info("new data: %s", "force=true" if force and last and last["snapshot_hash"] == snapshot_hash else
                 "no model trained yet" if last is None else
                 f"snapshot {snapshot_hash[:12]} differs from version {last['version']}'s {last['snapshot_hash'][:12]}")
        return True
    reason = (f"no new data: snapshot {snapshot_hash[:12]} is the one version {last['version']} "
              f"was trained on (run {last['run_id']}); trigger with force=true to retrain anyway")
    with ws.engine.begin() as conn:
        records.finish_run(conn, run.run_id, "skipped", reason)
    log.info(reason)
    return False


def _awaiting_rows(ws: Workspace, raw_hash: str) -> tuple[Any, str | None]:
    """The rows frozen with a raw snapshot that await their outcome, and their snapshot's hash; None, None
    when there were none."""
    with ws.engine.connect() as conn:
        row = records.unlabelled_snapshot(conn, raw_hash)
    if row is None:
        return None, None
    return ws.load_snapshot(row["snapshot_hash"]), str(row["snapshot_hash"])


def _classify_snapshot(ws: Workspace, snapshot_hash: str, suite: dict[str, Any], chunk_rows: int | None) -> tuple[
        quality.QualityResult, quality.QualityResult, str | None, memoryview | None]:
    """The labelled rows' and the awaiting rows' results, the awaiting rows' snapshot hash, and the clean
    snapshot's bytes when it was written chunk by chunk (`chunk_rows` at a time; None: the whole frame)."""
    contract = ws.config.dataset
    if chunk_rows and streamable(suite):
        with ws.engine.connect() as conn:
            records.get_snapshot(conn, snapshot_hash)  # registered, or a clear error naming it
            waiting = records.unlabelled_snapshot(conn, snapshot_hash)
        hashes = [snapshot_hash] + ([str(waiting["snapshot_hash"])] if waiting else [])
        paths = [ws.snapshot_path(digest) for digest in hashes]
        for path, digest in zip(paths, hashes, strict=True):
            artifacts.verify_file(path, digest, ws.store.keyring)
        try:
            done = classify_snapshots(paths, contract, suite, ws.config.quality, chunk_rows, ws.store.keyring)
            return done.result, done.awaiting, hashes[1] if waiting else None, done.clean
        except NotStreamable as exc:
            log.info("validation: the whole batch at once (%s)", exc)
    awaiting_frame, awaiting_hash = _awaiting_rows(ws, snapshot_hash)
    result, awaiting = quality.classify_with_awaiting(_load_snapshot(ws, snapshot_hash), awaiting_frame, contract,
                                                      suite, ws.config.quality)
    return result, awaiting, awaiting_hash, None


@stage("validate")
def validate_snapshot(ws: Workspace, run: Run, snapshot_hash: str,
                      chunk_rows: int | None = CHUNK_ROWS) -> dict[str, Any]:
    """Classify every row of the snapshot as valid or quarantined; store the clean rows and the report.

    The rows recorded with it that await their outcome are checked in the same pass and reported
    (never trained on). The run stops (champion untouched) on a schema problem, or when the
    quarantined share of the labelled rows is over `quality.max_quarantine_share`. The rows are read
    `chunk_rows` at a time when the suite allows it (`pipeline.data.chunked_quality`; None: all at once),
    with the same verdicts, result and clean snapshot either way.
    """
    contract, limit = ws.config.dataset, ws.config.quality.max_quarantine_share
    snapshot_hash = ws.live_snapshot(snapshot_hash)  # an erasure may have rewritten it since ingest
    suite = validate.load_suite(contract.expectation_suite)
    result, awaiting, awaiting_hash, clean = _classify_snapshot(ws, snapshot_hash, suite, chunk_rows)
    result.check_reconciles()
    failures = quality.failure_summary(result, contract.id_column)
    share = len(result.quarantined) / max(result.rows_read, 1)
    problem = None
    if result.schema_failures:
        problem = f"schema problem in suite '{suite['name']}' (the batch is not usable):"
    elif share > limit:
        problem = (f"{len(result.quarantined)} of {result.rows_read} rows quarantined ({share:.1%}), over the "
                   f"limit of {limit:.1%} (quality.max_quarantine_share):")
    page = quality.render_report(result, contract, f"Validation {run.run_id}", awaiting, ws.config.quality)
    _, report_path = artifacts.store_bytes(ws.store, "reports", page.encode(), ".html")
    if clean is None:
        clean_hash, clean_path = ingest.store_clean_snapshot(result.valid, ws.store)
    else:  # written chunk by chunk, with the bytes `store_clean_snapshot` gives the whole valid frame
        clean_hash, clean_path = artifacts.store_bytes(ws.store, "snapshots", clean, ".parquet")
    clean_path = Path(ws.relative(clean_path))
    quarantined = [{**r, "snapshot_hash": snapshot_hash, "labelled": True}
                   for r in quality.quarantine_records(result, contract.id_column)]
    quarantined += [{**r, "snapshot_hash": awaiting_hash, "labelled": False}
                    for r in quality.quarantine_records(awaiting, contract.id_column)]
    summary = {"snapshot_hash": snapshot_hash, "clean_snapshot_hash": clean_hash, "rows_read": result.rows_read,
               "rows_valid": result.valid_count, "rows_quarantined": len(result.quarantined),
               "reason_counts": result.reason_counts(), "rows_unlabelled": awaiting.rows_read,
               "unlabelled_faulty": len(awaiting.quarantined), "unlabelled_reason_counts": awaiting.reason_counts(),
               "report_path": str(report_path)}
    seal = ws.store.encrypt  # encryption at rest: the run's quarantined rows under one data key, its result another
    sealers = (ws.keyring.sealer() if seal and quarantined else None, ws.keyring.sealer() if seal else None)
    with ws.engine.begin() as conn:
        raw = records.get_snapshot(conn, snapshot_hash)
        records.record_derived_snapshot(conn, "clean", clean_hash, str(clean_path), raw, result.valid_count,
                                         run.run_id)
        records.record_quarantine(conn, run.run_id, quarantined, sealers[0])
        records.record_validation(conn, run.run_id, snapshot_hash, {
            **{k: v for k, v in summary.items() if k != "snapshot_hash"}, "suite_name": suite["name"],
            "success": problem is None, "statistics": result.gx_result["statistics"], "failures": failures,
            "result": result.gx_result, "normalisations": result.normalisations}, sealers[1])
        if problem:
            error = validate.ValidationFailed(suite["name"], failures, headline=problem)
            records.finish_run(conn, run.run_id, "validation_failed", str(error))
    if problem:
        log.info("validation report %s", ws.report_url(run.run_id, "quality"))
        raise error
    log.info("validation: %d rows read, %d valid, %d quarantined %s; %d await their outcome (%d with faults %s); "
             "report %s", result.rows_read, result.valid_count, len(result.quarantined), result.reason_counts(),
             awaiting.rows_read, len(awaiting.quarantined), awaiting.reason_counts(),
             ws.report_url(run.run_id, "quality"))
    return summary


def plan_search(ws: Workspace) -> list[dict[str, Any]]:
    """The tasks of a mapped model search: one per configured family, in order, sharing the search's start
    (wall clock) so that one budget holds across them. The first family always finishes."""
    started_at = time.time()
    return [{"family": family, "started_at": started_at, "first": index == 0}
            for index, family in enumerate(ws.config.training.families)]


def _training_rows(ws: Workspace, snapshot_hash: str) -> tuple[Any, dict[str, Any]]:
    """The clean snapshot's training rows, split as every stage splits them, of the model's inputs and outcome
    only (the whole snapshot is freed before a fit); and the holdout's size and first row, as a version
    records them."""
    from pipeline.model import train

    contract = ws.config.dataset
    with ws.engine.connect() as conn:
        if records.get_snapshot(conn, snapshot_hash)["kind"] != "clean":
            raise ValueError(f"snapshot {snapshot_hash} is not a validated clean snapshot: train on the "
                             "clean_snapshot_hash that validate_snapshot returns")
    frame = _load_snapshot(ws, snapshot_hash)
    trained, held = train.split_positions(frame, contract, ws.config.training.holdout_fraction)
    first = frame.iloc[held[:1]]
    holdout = {"rows": len(held), "start": {
        contract.labelled_at_column(): str(train.labelled_at(first, contract).iloc[0]),
        **holdout_start_id(ws, quality.source_id(first[contract.id_column].iloc[0]))}}
    return frame[list(dict.fromkeys([*contract.feature_names(), contract.target_column]))].iloc[trained], holdout


def search_family(ws: Workspace, run: Run, snapshot_hash: str, family: str, started_at: float,
                  first: bool = False) -> dict[str, Any]:
    """Cross-validate one family on the search's seeded rows and folds: one task of the mapped search, run
    beside its siblings (the run's lock held shared). Its out-of-fold |residuals| go to the artifact store,
    so the selecting task, on any worker, reads what this one computed."""
    from pipeline.model import train

    contract, policy = ws.config.dataset, ws.config.training
    if family not in policy.families:
        raise ValueError(f"family '{family}' is not in training.families {list(policy.families)}")
    with runs.sharing(ws.engine, ws.settings, run.run_id, "search"):
        train_rows, _ = _training_rows(ws, snapshot_hash)
        memory.give_back()
        X, y, folds = train.search_data(train_rows, contract, policy)
        budget = train.SearchBudget.since(None if first else policy.search_budget_seconds, started_at)
        residuals: dict[str, Any] = {}
        row = train.cross_validate_family(contract, family, policy, X, y, folds, budget, residuals)
        stored = None
        if family in residuals:
            buffer = io.BytesIO()
            np.save(buffer, residuals[family], allow_pickle=False)
            stored, _ = artifacts.store_bytes(ws.store, "residuals", buffer.getvalue(), ".npy")
    log.info("search %s: %s", family, row)
    return {"family": family, "cv": row, "residuals_hash": stored}


def _searched_table(ws: Workspace, searched: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The CV table (in configured order) and the residuals of each finished family, from the mapped search's
    results; a family missing from them, or one not configured, is refused by name."""
    by_family = {entry["family"]: entry for entry in searched}
    configured = list(ws.config.training.families)
    if sorted(by_family) != sorted(configured):
        raise ValueError(f"the model search returned families {sorted(by_family)}, but training.families is "
                         f"{configured}: every configured family is searched once")
    residuals = {family: np.load(io.BytesIO(artifacts.read_verified(
                     artifacts.local_copy(ws.store, "residuals", entry["residuals_hash"]),
                     entry["residuals_hash"], ws.store.keyring)), allow_pickle=False)
                 for family, entry in by_family.items() if entry["residuals_hash"]}
    return {family: by_family[family]["cv"] for family in configured}, residuals


@stage("train")
def train_candidate(ws: Workspace, run: Run, snapshot_hash: str,
                    searched: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Pick the family with the lowest CV RMSE, fit it on all training rows and register it. `searched`
    holds the results of a mapped search (`search_family` per family, as the DAG runs it); without it the
    families are searched here, one after another, with the same seeds and folds. A retried run that
    registered its candidate already gets it back, if it was trained on this very snapshot."""
    from pipeline.model import intervals, train

    contract, policy = ws.config.dataset, ws.config.training
    with ws.engine.connect() as conn:
        registered = records.model_of_run(conn, run.run_id)
    if registered is not None:
        return _registered_candidate(ws, run, registered, snapshot_hash)
    train_rows, holdout = _training_rows(ws, snapshot_hash)
    memory.give_back()  # the whole snapshot, before the fit allocates
    residuals: dict[str, Any] = {}
    if searched is None:
        cv_table = train.cross_validate_families(train_rows, contract, policy, residuals=residuals)
    else:
        cv_table, residuals = _searched_table(ws, searched)
    family = train.best_family(cv_table)
    memory.give_back()  # what the search allocated, before the fit on every training row
    model = train.fit_family(train_rows, contract, policy, family)
    artifact_hash, path = artifacts.store_model(ws.store, model)
    record = {
        "model": ws.model, "run_id": run.run_id, "snapshot_hash": snapshot_hash, "artifact_hash": artifact_hash,
        "artifact_path": ws.relative(path), "model_family": family,
        "params": {"family_params": policy.families[family], "seed": policy.seed,
                   "cv_folds": policy.cv_folds, "holdout_fraction": policy.holdout_fraction,
                   "search_max_rows": policy.search_max_rows},
        "cv_metrics": cv_table, "train_rows": len(train_rows), "holdout_rows": holdout["rows"],
        "holdout_start": holdout["start"],
        "library_versions": train.library_versions(), "code_version": train.code_version(),
    }
    del train_rows, residuals
    memory.give_back()
    calibrated = _calibrated_intervals(ws, model, snapshot_hash, artifact_hash)
    interval = calibrated[0]
    with ws.engine.begin() as conn:
        version = records.register_model(conn, record)
        for each in calibrated:
            intervals.record(conn, version, each)
    log.info("train: version %s registered, %s won the cross-validation (CV RMSE %s; %s search) on %d rows, "
             "%d held out; model %s", version, family, _metric(cv_table.get(family), "cv_rmse_mean"),
             "mapped" if searched is not None else "sequential", record["train_rows"], holdout["rows"],
             record["artifact_path"])
    return {"version": version, "model_family": family, "artifact_hash": artifact_hash, "cv_metrics": cv_table,
            "interval": {"coverage": interval["coverage"], "half_width": interval["half_width"]}}


def _calibrated_intervals(ws: Workspace, model: Any, snapshot_hash: str, artifact_hash: str) -> list[dict[str, Any]]:
    """The new version's split conformal interval, calibrated on its holdout: over all records, and per group
    of `serving.interval_conditional_on` when set."""
    from pipeline.model import intervals, train

    fraction, coverage = ws.config.training.holdout_fraction, ws.config.serving.interval_coverage
    _, holdout = train.holdout_rows(ws, snapshot_hash, fraction)
    inputs = intervals.calibration_inputs(snapshot_hash, artifact_hash, fraction)
    specs = [None] + ([spec] if (spec := intervals.conditional_spec(ws)) else [])
    return [intervals.holdout_record(model, holdout, ws.config.dataset, coverage, s, inputs) for s in specs]


def _registered_candidate(ws: Workspace, run: Run, registered: dict[str, Any], snapshot_hash: str) -> dict[str, Any]:
    if registered["snapshot_hash"] != snapshot_hash:
        raise LineageError(
            f"run {run.run_id} already registered version {registered['version']}, trained on snapshot "
            f"{registered['snapshot_hash'][:16]}…; it is now asked to train on {snapshot_hash[:16]}…. One run has one "
            "candidate from one snapshot: start a new run to train on other rows")
    log.info("run %s registered version %s from this snapshot before: reusing it", run.run_id, registered["version"])
    return {"version": registered["version"], "model_family": registered["model_family"],
            "artifact_hash": registered["artifact_hash"], "cv_metrics": registered["cv_metrics"]}


def _render_page(render: Any, ws: Workspace, key: Any) -> str | None:
    """Write a model card or comparison page; a page that fails to render never fails the run."""
    try:
        return str(render(ws, key))
    except Exception:  # noqa: BLE001 - logged; `python -m pipeline card` can write it later
        log.exception("could not render the page for %s", key)
        return None


def _champion_predictions(champion: dict[str, Any] | None, holdout: Any, contract: Any,
                          load_model: Callable[[str], Any]) -> tuple[Any, str | None]:
    """The champion's holdout predictions; an unreadable champion yields an error, never a guess."""
    from pipeline.model import features

    if champion is None:
        return None, None
    try:
        model = load_model(champion["artifact_hash"])
        predicted = model.predict(features.model_inputs(holdout, contract))
        if not np.all(np.isfinite(predicted)):
            raise ValueError("non-finite predictions")
        return predicted, None
    except Exception as exc:  # noqa: BLE001 - any failure to score the champion must fail closed
        return None, f"champion version {champion['version']} could not be scored: {exc}"


class ChampionRowsUnknown(ValueError):
    """The rows the champion trained on cannot be told, so they cannot be kept out of a comparison."""


def _champion_training_ids(ws: Workspace, champion: dict[str, Any]) -> Any:
    """The ids of the rows the champion was trained on: its own snapshot, split as when it was trained (with
    its recorded holdout fraction, and by record time if its holdout started by record time). A snapshot that
    cannot be read, or that no longer splits as recorded, is an error naming the file."""
    from pipeline.model import train

    contract, path = ws.config.dataset, ws.snapshot_path(champion["snapshot_hash"])
    started = champion.get("holdout_start") or {}
    if contract.label_timestamp_column and contract.timestamp_column in started:
        contract = replace(contract, label_timestamp_column=None)  # trained before the holdout followed label time
    fraction = float((champion.get("params") or {}).get("holdout_fraction", ws.config.training.holdout_fraction))
    try:
        keys = _load_snapshot(ws, champion["snapshot_hash"], train.split_columns(contract)[:-1])
        trained, held = train.split_positions(keys, contract, fraction)
    except Exception as exc:
        raise ChampionRowsUnknown(
            f"champion version {champion['version']}'s training snapshot {path} could not be read ({exc}); "
            "without it the rows it trained on cannot be kept out of the holdout, and comparing on them would "
            "flatter the champion. Restore the file (PIPELINE_ARTIFACT_DIR) or roll back to a version whose "
            "snapshot is in the store") from exc
    ids = keys[contract.id_column]
    first_held_out = quality.source_id(ids.iloc[held[0]])
    if HOLDOUT_ID_HMAC in started:  # recorded as its keyed hash (encryption at rest): compared as one
        started = {**started, contract.id_column: started[HOLDOUT_ID_HMAC]}
        first_held_out = holdout_start_id(ws, first_held_out)[HOLDOUT_ID_HMAC]
    if (erased := _rows_erased_since(ws, champion["snapshot_hash"])):
        # rows erased since it trained: the split of the redacted snapshot can move by as many rows, and an
        # erased row can be in no holdout (its id is refused at ingest), so the ids left are the ones to keep out
        if abs(len(trained) - champion["train_rows"]) > erased:
            raise ChampionRowsUnknown(
                f"champion version {champion['version']}'s redacted training snapshot {path} splits into "
                f"{len(trained)} training rows; the version records {champion['train_rows']}, and only {erased} "
                "were erased since: the rows it trained on are unknown")
        return ids.iloc[trained]
    if len(trained) != champion["train_rows"] or started.get(contract.id_column, first_held_out) != first_held_out:
        raise ChampionRowsUnknown(
            f"champion version {champion['version']}'s training snapshot {path} splits into {len(trained)} "
            f"training rows and a holdout starting at id {first_held_out}, but the version records "
            f"{champion['train_rows']} and {started}: the rows it trained on are unknown")
    return ids.iloc[trained]


HOLDOUT_ID_HMAC = "id_hmac"  # a version's holdout start names its first row by the keyed hash of its id


def holdout_start_id(ws: Workspace, source_id: Any) -> dict[str, Any]:
    """How a version records the id of its holdout's first row: with encryption at rest, as its keyed hash
    (the erasure key's HMAC, as a tombstone: the registry then holds no patient id); else the id itself."""
    if not ws.store.encrypt:
        return {ws.config.dataset.id_column: source_id}
    return {HOLDOUT_ID_HMAC: tombstones.tombstone(tombstones.load_key(ws.settings.erasure_key_file), source_id)}


def _rows_erased_since(ws: Workspace, snapshot_hash: str) -> int:
    """How many rows erasures removed from a snapshot since it was written (0 when it was never redacted)."""
    with ws.engine.connect() as conn:
        return int(conn.scalar(sa.text("""
            WITH RECURSIVE chain AS (
                SELECT old_hash, new_hash, rows_removed FROM pipeline.snapshot_redactions WHERE old_hash = :h
                UNION ALL
                SELECT r.old_hash, r.new_hash, r.rows_removed FROM pipeline.snapshot_redactions r
                  JOIN chain c ON r.old_hash = c.new_hash)
            SELECT coalesce(sum(rows_removed), 0) FROM chain
        """), {"h": snapshot_hash}) or 0)


def _among(values: Any, known: Any) -> np.ndarray:
    """Which of `values` are in `known`, as pandas' `isin` says; whole-number ids without a missing one go
    through numpy, which marks them in a table over their range instead of hashing every known id."""
    if values.dtype.kind in "iu" and known.dtype.kind in "iu" and not values.isna().any() and not known.isna().any():
        return np.isin(values.to_numpy(dtype="int64"), known.to_numpy(dtype="int64"))
    return np.asarray(values.isin(known))


def comparison_holdout(ws: Workspace, holdout: Any, champion: dict[str, Any] | None) -> tuple[Any, int, str | None]:
    """The holdout rows candidate and champion are compared on: the candidate's holdout without the rows the
    champion trained on; how many were left out; and why no comparison is possible, if it is not."""
    if champion is None:
        return holdout, 0, None
    try:
        trained_on = _champion_training_ids(ws, champion)
    except ChampionRowsUnknown as exc:
        return holdout, 0, str(exc)
    seen = _among(holdout[ws.config.dataset.id_column], trained_on)
    kept = holdout.loc[~seen]
    if len(kept) < 2:
        raise ValueError(f"{int(seen.sum())} of the {len(holdout)} holdout rows are rows champion version "
                         f"{champion['version']} trained on: too few are left to compare the two")
    return kept, int(seen.sum()), None


def gather_evidence(ws: Workspace, candidate: dict[str, Any], champion: dict[str, Any] | None,
                    policy: PromotionPolicy, resampled: dict[str, Any] | None = None,
                    ) -> tuple[dict[str, Any], cards.Scored | None]:
    """Everything a promotion decision rests on, computed on the candidate's held-out rows less those the
    champion trained on (a champion judged on its own training rows would look better than it is); and,
    when those are its whole holdout, the candidate's scores on it, for its card. `resampled`: a recorded
    interval, to be computed again by its own method and parameters rather than the policy's."""
    from pipeline.model import cards, evaluate, features, train

    contract, fraction = ws.config.dataset, ws.config.training.holdout_fraction
    train_mean, whole = train.holdout_rows(ws, candidate["snapshot_hash"], fraction)
    holdout, excluded, rows_unknown = comparison_holdout(ws, whole, champion)
    del whole
    observed = holdout[contract.target_column].to_numpy()
    model = ws.load_model(candidate["artifact_hash"])
    predicted = model.predict(features.model_inputs(holdout, contract))
    champion_predicted, champion_error = ((None, rows_unknown) if rows_unknown else
                                          _champion_predictions(champion, holdout, contract, ws.load_model))
    finite = bool(np.all(np.isfinite(predicted)))
    evidence: dict[str, Any] = {
        "holdout_rows": len(holdout),
        "holdout_rows_excluded_champion_trained": excluded,
        "interval": _interval_evidence(ws, candidate["version"], holdout, predicted) if finite else None,
        "behaviour": evaluate.behaviour_checks(model, holdout, contract, policy, predicted),
        "candidate": evaluate.regression_metrics(observed, predicted) if finite else None,
        "champion": None if champion_predicted is None else evaluate.regression_metrics(observed, champion_predicted),
        "champion_error": champion_error,
        "baseline": {"train_mean": train_mean,
                     "rmse": evaluate.regression_metrics(observed, np.full(len(observed), train_mean))["rmse"]},
        "bootstrap": None,
        "slices": evaluate.slice_table(holdout, contract, policy, predicted, champion_predicted) if finite else [],
    }
    if finite:
        evidence["holdout_errors"] = store_holdout_errors(ws, observed, predicted)
    if finite and champion_predicted is not None and policy.confidence is not None:
        evidence["bootstrap"] = (
            evaluate.redo_resampling(resampled, observed, champion_predicted, predicted, ws.config.training.seed)
            if resampled else evaluate.resample_gain(policy.bootstrap_method, observed, champion_predicted, predicted,
                                                     policy.bootstrap_samples, policy.confidence,
                                                     seed=ws.config.training.seed))
    scored = None if excluded else cards.Scored(int(candidate["version"]), fraction, train_mean, holdout, predicted,
                                                evidence["behaviour"], model)
    return evidence, scored


def store_holdout_errors(ws: Workspace, observed: Any, predicted: Any) -> dict[str, Any]:
    """The candidate's squared errors on its holdout, stored, so that a degradation verdict can resample them."""
    buffer = io.BytesIO()
    np.save(buffer, (np.asarray(observed, dtype="float64") - predicted) ** 2, allow_pickle=False)
    digest, _ = artifacts.store_bytes(ws.store, "residuals", buffer.getvalue(), ".npy")
    return {"sha256": digest, "rows": len(observed)}


def _interval_evidence(ws: Workspace, version: int, holdout: Any, predicted: Any) -> dict[str, Any]:
    """The version's interval, the guarantee of its method and the share of holdout outcomes inside it;
    informative, never a reason to fail an evaluation."""
    from pipeline.model import intervals

    try:
        interval = intervals.for_version(ws, version)
    except Exception as exc:  # noqa: BLE001 - reported in the evidence and on the card
        log.warning("no interval for version %s", version, exc_info=True)
        return {"error": str(exc)}
    observed = holdout[ws.config.dataset.target_column].to_numpy(dtype="float64")
    return {"coverage": interval.coverage, "half_width": interval.half_width, "method": interval.method,
            "guarantee": interval.guarantee, "group_half_widths": interval.group_half_widths,
            "holdout_coverage": intervals.holdout_coverage(observed, predicted,
                                                           interval.half_widths(holdout, ws.config.dataset))}


@stage("evaluate")
def evaluate_candidate(ws: Workspace, run: Run, version: int, margin: float | None = None) -> dict[str, Any]:
    """Score candidate and champion on the same held-out rows, check behaviour, record the decision."""
    from pipeline.model import evaluate

    policy = replace(ws.config.promotion, margin=ws.config.promotion.margin if margin is None else margin)
    with ws.engine.connect() as conn:
        candidate = records.get_model(conn, version, ws.model)
        champion = records.current_champion(conn, ws.model)
        already_promoted = records.promoted_by_run(conn, run.run_id) == version
        erased = records.erasure_retrain_due(conn, ws.model, ws.config.erasure.retrain_within_days, run.watermark)
        recorded = records.get_evaluation(conn, run.run_id) if already_promoted else None
    if recorded is not None:  # a retried task after this run promoted: the record stands
        return {**_evaluation_summary(recorded), **_render_pages(ws, version, run.run_id)}
    scored = None
    # a champion trained on erased rows past (or near) its deadline is no bar: the candidate is judged on the floor
    # alone, as a first model is, so that it replaces the champion in time (erasure.retrain_within_days)
    judged_against = None if erased is not None and candidate["version"] != erased["champion"] else champion
    try:
        evidence, scored = gather_evidence(ws, candidate, judged_against, policy)
        if evidence["champion_error"]:
            decision = evaluate.Decision(False, f"fail closed: {evidence['champion_error']}")
        elif evidence["candidate"] is None:
            decision = evaluate.Decision(False, "fail closed: the candidate's holdout predictions are not finite")
        else:
            decision = evaluate.decide_promotion(evidence, policy)
        if judged_against is None and champion is not None and erased is not None:
            decision = replace(decision, reason=f"{decision.reason} [champion version {champion['version']} was "
                               "trained on rows erased since; it must be replaced by "
                               f"{erased['deadline']:%Y-%m-%d %H:%M %Z} (erasure.retrain_within_days), so the "
                               "candidate was judged on the floor alone]")
        if evidence["holdout_rows_excluded_champion_trained"]:
            decision = replace(decision, reason=f"{decision.reason} [compared on {evidence['holdout_rows']} holdout "
                               f"rows: {evidence['holdout_rows_excluded_champion_trained']} the champion trained "
                               "on were left out]")
    except Exception as exc:  # noqa: BLE001 - an evaluation that errored promotes nothing, and says why
        evidence = {"holdout_rows": 0, "candidate": None, "champion": None, "error": repr(exc)}
        decision = evaluate.Decision(False, f"fail closed: evaluation error: {exc}")
    evaluation = {
        "run_id": run.run_id, "candidate_version": version,
        "champion_version": champion["version"] if champion else None, "holdout_rows": evidence["holdout_rows"],
        "candidate_metrics": evidence["candidate"] or {}, "champion_metrics": evidence["champion"],
        "policy": _policy_record(policy), "decision": decision.label, "reason": decision.reason,
        "evidence": evidence,
    }
    with ws.engine.begin() as conn:
        records.record_evaluation(conn, run.run_id, evaluation)
    memory.give_back()  # the champion's rows and scores, before the pages
    pages = _render_pages(ws, version, run.run_id, scored)
    log.info("evaluate: decision %s for version %s against champion %s (RMSE %s vs %s on %d holdout rows): %s; "
             "card %s, comparison %s", decision.label, version, evaluation["champion_version"],
             _metric(evidence["candidate"]), _metric(evidence["champion"]), evidence["holdout_rows"], decision.reason,
             pages["card"], pages["comparison"])
    return {**_evaluation_summary(evaluation), **pages}


def _metric(metrics: dict[str, Any] | None, name: str = "rmse") -> str:
    value = (metrics or {}).get(name)
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def _render_pages(ws: Workspace, version: int, run_id: str, scored: cards.Scored | None = None) -> dict[str, str | None]:
    """The candidate's model card (from `scored`, its holdout scores, when the evaluation has them) and the
    decision's comparison page, once the decision is recorded."""
    from pipeline.model import cards

    return {"card": _render_page(lambda w, v: cards.render_model_card(w, v, scored), ws, version),
            "comparison": _render_page(cards.render_comparison, ws, run_id)}


def _policy_record(policy: PromotionPolicy) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(policy), default=str))  # type: ignore[no-any-return]


def _evaluation_summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    keys = ("candidate_version", "champion_version", "candidate_metrics", "champion_metrics", "decision", "reason")
    return {k: evaluation[k] for k in keys}


@stage("promote")
def promote_candidate(ws: Workspace, run: Run, dry_run: bool = False, actor: str = "retrain") -> dict[str, Any]:
    """Apply the recorded decision: promote in one transaction, or keep the champion and say why."""
    with ws.engine.connect() as conn:
        evaluation = records.get_evaluation(conn, run.run_id)
    version, reason = evaluation["candidate_version"], evaluation["reason"]
    if evaluation["decision"] != "promote":
        status, outcome = "kept", f"champion kept: {reason}"
    elif run.as_of is not None:  # judged on the rows of a past cut-off: evidence, never a champion of today
        status, outcome = "kept", (f"as of {run.as_of.isoformat()}: would promote version {version} ({reason}); "
                                   "never promoted, the cut-off is in the past")
    elif dry_run:
        status, outcome = "kept", f"dry run: would promote version {version} ({reason})"
    else:
        try:
            records.promote(ws.engine, ws.model, run.run_id, version, evaluation["champion_version"], actor, reason)
            status, outcome = "promoted", f"version {version} promoted: {reason}"  # now, or by an earlier try
        except records.StaleChampionError as exc:
            status, outcome = "kept", str(exc)
    with ws.engine.begin() as conn:
        records.finish_run(conn, run.run_id, status, outcome)
    log.info("promote: %s", outcome)
    return {"status": status, "candidate_version": version, "reason": outcome,
            "replaced": evaluation["champion_version"]}


def mark_run_failed(ws: Workspace, run_id: str, reason: str, kind: str = "data") -> None:
    """Record a failed run and the kind of its failure, keeping a more specific status (e.g. validation_failed)."""
    runs.fail_if_idle(ws.engine, run_id, reason, kind)


def monitor_drift(ws: Workspace, run: Run) -> dict[str, Any]:
    """Compare rows recorded since the champion's training watermark with its training snapshot: the window's
    rows as training would take them (normalised, checked by the contract, the valid ones), so a quarantined
    row counts as a quality signal (`quarantined_rows`, `quarantine_reasons`), never as drift."""
    from pipeline.monitoring import drift

    contract, policy = ws.config.dataset, ws.config.monitoring.drift
    with ws.engine.connect() as conn:
        champion = records.current_champion(conn, ws.model)
        reference_info = records.get_snapshot(conn, champion["snapshot_hash"]) if champion else None
    report: dict[str, Any] = {"model": ws.model, "run_id": run.run_id, "window_end": run.watermark, "features": [],
                              "champion_version": None, "reference_snapshot": None, "window_start": None,
                              "reference_rows": 0, "recent_rows": 0, "unreadable_rows": 0, "quarantined_rows": 0,
                              "quarantine_reasons": {}, "report_path": None}
    if champion is None or reference_info is None:
        report["verdict"] = "no_champion"
    else:
        reference = ws.load_snapshot(reference_info["snapshot_hash"])
        since = reference_info["watermark"]
        until = datetime.fromisoformat(run.watermark.isoformat())
        raw = ingest.read_raw_rows(ws.engine, contract, ingest.recorded_rows_query(contract, until, since))
        recent, *results = drift.classified_window(raw, contract, validate.load_suite(contract.expectation_suite),
                                                   ws.config.quality)
        report.update(champion_version=champion["version"], reference_snapshot=reference_info["snapshot_hash"],
                      window_start=since, reference_rows=len(reference), recent_rows=len(recent),
                      unreadable_rows=ingest.readable_rows(raw, contract)[1], **drift.quarantine_summary(*results))
        if len(recent) < policy.min_rows:
            report["verdict"] = "insufficient_data"
        else:
            compared = drift.compare(reference, recent, contract, policy)
            report["features"] = drift.as_records(compared)
            report["verdict"] = "drift" if any(r.drifted for r in compared) else "stable"
            page = drift.render_report(compared, reference, recent, contract, f"Drift report {run.run_id}", policy, report)
            report["report_path"] = str(artifacts.store_bytes(ws.store, "reports", page.encode(), ".html")[1])
    with ws.engine.begin() as conn:
        records.record_drift_report(conn, report)
    drifted = [f["feature"] for f in report["features"] if f["drifted"]]
    log.info("drift verdict %s (%d recent rows; %d quarantined by the contract, a quality signal: %s); drifted "
             "features: %s%s", report["verdict"], report["recent_rows"], report["quarantined_rows"],
             report["quarantine_reasons"], drifted,
             f"; report {ws.report_url(run.run_id, 'drift')}" if report["report_path"] else "")
    return {"run_id": run.run_id, "verdict": report["verdict"], "drifted_features": drifted,
            "champion_version": report["champion_version"],
            "recent_rows": report["recent_rows"], "unreadable_rows": report["unreadable_rows"],
            "quarantined_rows": report["quarantined_rows"], "quarantine_reasons": report["quarantine_reasons"],
            "report_path": report["report_path"],
            "features": report["features"]}


def failed_policy_checks(conn: Any, model: dict[str, Any]) -> list[str]:
    """The policy checks a version failed when it was evaluated (behaviour, prediction range, R² floor, an
    evaluation that failed closed), or why it was never judged; empty when it passed them all. Losing to
    the champion of the day is not a failed check: that is what a rollback may undo."""
    try:
        evaluation = records.get_evaluation(conn, model["run_id"])
    except LookupError:
        return [f"version {model['version']} has no recorded evaluation (run {model['run_id']})"]
    if evaluation["candidate_version"] != model["version"]:
        return [f"run {model['run_id']} evaluated version {evaluation['candidate_version']}, not {model['version']}"]
    evidence = evaluation.get("evidence") or {}
    behaviour = evidence.get("behaviour") or {}
    failed = [f"behaviour: {f}" for f in behaviour.get("failures") or []]
    if behaviour and not behaviour.get("passed", False) and not failed:
        failed.append("behaviour checks did not pass")
    floor = (evaluation.get("policy") or {}).get("min_r2")
    r2 = (evaluation.get("candidate_metrics") or {}).get("r2")
    if floor is not None and (r2 is None or not r2 >= floor):
        failed.append(f"holdout R² {r2} is under the floor {floor}")
    if evaluation["reason"].startswith("fail closed"):
        failed.append(evaluation["reason"])
    return failed


@dataclass(frozen=True)
class Asking:
    """How a refusal tells the operator to set an option of a champion change: the CLI's flags by default, the
    Set champion form's fields (`FORM`) when the DAG made the change."""

    reason: str = "--reason"
    version: str = "name one with --to VERSION"
    force: str = "with --force"


CLI = Asking()
FORM = Asking(reason="the form's Reason field", version="choose one in the form's Version field",
              force="with Force ticked in the form")


def vet_champion_to_be(ws: Workspace, version: int, force: bool, verb: str, ask: Asking = CLI) -> list[str]:
    """Before an operator makes `version` champion: it is a version of this model, its artifact matches its
    registered SHA-256, and it passed its policy checks unless `force`; returns the checks it failed."""
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.model)
        failed = failed_policy_checks(conn, model)
    try:  # first: a file that is not what was registered is refused as such, whatever the checks and --force say
        verify_artifact(ws, model)
    except artifacts.ArtifactIntegrityError as exc:
        raise artifacts.ArtifactIntegrityError(f"version {version} cannot become champion: {exc}") from exc
    if failed and not force:
        raise ValueError(f"version {version} failed its policy checks: {'; '.join(failed)}. {verb} only "
                         f"{ask.force} (the checks are recorded in the promotion event)")
    return failed


def verify_artifact(ws: Workspace, model: dict[str, Any]) -> None:
    """Raise ArtifactIntegrityError (naming the hash) unless the version's stored artifact matches its registered SHA-256."""
    artifacts.verify_file(artifacts.local_copy(ws.store, "models", model["artifact_hash"]), model["artifact_hash"],
                          ws.store.keyring)


def rollback_champion(ws: Workspace, run_id: str, reason: str, to_version: int | None = None,
                      actor: str = "operator", force: bool = False, ask: Asking = CLI) -> dict[str, Any]:
    """Make an earlier version champion again (default: the one the champion replaced), hash-checked first.
    A version that failed policy checks when evaluated needs `force`; the checks go into the event. A refusal
    says what to set in the operator's words (`ask`: the CLI's flags, or the form's fields)."""
    if not reason or not reason.strip():
        raise ValueError(f"a rollback needs a reason ({ask.reason})")
    with ws.engine.connect() as conn:
        target = to_version if to_version is not None else records.previous_champion(conn, ws.model)
    if target is None:
        raise ValueError(f"no earlier champion of {ws.model} to roll back to; {ask.version}")
    failed = vet_champion_to_be(ws, target, force, "Roll back to it", ask)
    recorded = reason.strip() + (f" [forced past failed checks: {'; '.join(failed)}]" if failed else "")
    replaced = records.rollback(ws.engine, ws.model, target, run_id, actor, recorded)
    log.info("rolled back: version %s is champion again (replacing %s): %s", target, replaced, recorded)
    return {"champion": target, "replaced": replaced, "reason": reason.strip(), "run_id": run_id,
            "forced_past": failed}


def reproduce_evaluation(ws: Workspace, run_id: str) -> dict[str, Any]:
    """A run's recorded evaluation done again on the same versions, with the policy it recorded and its interval
    resampled by the method it recorded (a record from before the choice of method: the exact bootstrap);
    says whether the decision and the interval come out as recorded."""
    from pipeline.model import evaluate

    with ws.engine.connect() as conn:
        recorded = records.get_evaluation(conn, run_id)
        candidate = records.get_model(conn, recorded["candidate_version"], ws.model)
        champion = (None if recorded["champion_version"] is None
                    else records.get_model(conn, recorded["champion_version"], ws.model))
    policy = recorded_policy(recorded["policy"] or {}, ws.config.promotion)
    before = (recorded["evidence"] or {}).get("bootstrap")
    evidence, _ = gather_evidence(ws, candidate, champion, policy, resampled=before)
    decision = (evaluate.Decision(False, f"fail closed: {evidence['champion_error']}") if evidence["champion_error"]
                else evaluate.decide_promotion(evidence, policy))
    after = evidence["bootstrap"]
    keys = ("method", "samples", "low", "high", "mean")
    return {"run_id": run_id, "candidate_version": candidate["version"], "champion_version": recorded["champion_version"],
            "decision_recorded": recorded["decision"], "decision_now": decision.label,
            "resampling_recorded": None if before is None else {k: before.get(k, evaluate.EXACT) for k in keys},
            "resampling_now": None if after is None else {k: after.get(k, evaluate.EXACT) for k in keys},
            "interval_identical": before == after if before is None else
                                  all(before.get(k) == after.get(k) for k in ("low", "high", "mean", "samples")),
            "decision_identical": recorded["decision"] == decision.label}


def recorded_policy(recorded: dict[str, Any], current: PromotionPolicy) -> PromotionPolicy:
    """The promotion policy an evaluation recorded, over the current one for anything it did not record; a
    record without a resampling method was made by the exact bootstrap, the only method then."""
    from pipeline.contract.config import SliceSpec

    known = {f.name for f in fields(PromotionPolicy)}
    values = {k: v for k, v in recorded.items() if k in known}
    values.setdefault("bootstrap_method", "exact")
    if "slices" in values:
        values["slices"] = tuple(SliceSpec(s["name"], s["column"], tuple(s.get("edges") or ())) for s in values["slices"])
    if values.get("prediction_range") is not None:
        values["prediction_range"] = tuple(values["prediction_range"])
    return replace(current, **values)


def reproduce_version(ws: Workspace, version: int) -> dict[str, Any]:
    """Rebuild a version from its recorded snapshot and parameters; compare predictions bit for bit."""
    from pipeline.model import features, train

    contract = ws.config.dataset
    with ws.engine.connect() as conn:
        model = records.get_model(conn, version, ws.model)
        erasures = records.erasures_of_version(conn, version)
        live_hash = records.live_snapshot_hash(conn, model["snapshot_hash"])
    recorded = model["params"]
    policy = replace(ws.config.training, seed=recorded["seed"], holdout_fraction=recorded["holdout_fraction"],
                     families={model["model_family"]: recorded["family_params"]})
    frame = _load_snapshot(ws, model["snapshot_hash"])
    train_rows, holdout = train.split_holdout(frame, contract, policy.holdout_fraction)
    rebuilt = train.build_model(contract, model["model_family"], policy, n_jobs=policy.n_jobs)
    rebuilt.fit(features.model_inputs(train_rows, contract), train_rows[contract.target_column].to_numpy())
    train.freeze_threads(rebuilt)
    original = ws.load_model(model["artifact_hash"])
    X = features.model_inputs(frame, contract)
    same = bool(np.array_equal(original.predict(X), rebuilt.predict(X)))
    libraries_now = train.library_versions()
    differing = {k: {"recorded": v, "now": libraries_now.get(k)} for k, v in model["library_versions"].items()
                 if libraries_now.get(k) != v}
    rebuilt_hash = artifacts.sha256_bytes(artifacts.model_bytes(rebuilt))
    return {"version": version, "predictions_identical": same, "rows_compared": len(frame),
            "artifact_identical": rebuilt_hash == model["artifact_hash"], "snapshot_hash": model["snapshot_hash"],
            "trained_on_erased": bool(erasures), "erasure_requests": [e["request_id"] for e in erasures],
            "reproduced_on_snapshot": live_hash,
            "erasure_note": (f"version {version} was trained on data later erased (request(s) "
                             f"{', '.join(str(e['request_id']) for e in erasures)}): it was reproduced on the redacted "
                             f"snapshot {live_hash}, without the erased rows, so it is not expected to be identical")
                            if erasures else None,
            "train_rows": len(train_rows), "recorded_train_rows": model["train_rows"],
            "library_differences": differing, "code_version_recorded": model["code_version"],
            "code_version_now": train.code_version()}
