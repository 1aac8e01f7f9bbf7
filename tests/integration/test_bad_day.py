"""The bad day, reproduced for real: a killed process, a read-only or full artifact store, a retried run
whose rows changed, a moved store, a future timestamp, a rollback to a version that failed its checks.

Each test checks that the champion is unchanged, that no run is left running, that no row is lost,
and that the message names what is wrong.

Commands run in this process (`tests.commands.cli_in_process`), except the four runs a test stops, kills or cuts
off from its database mid-stage: those are real `python -m pipeline` subprocesses, since what they test is what
happens to a process (its lock, its exit status, its last line on stderr) when it dies or loses its server.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import stages
from pipeline.contract.settings import (
    PROJECT_ROOT,
    Settings,
)
from pipeline.data import arrivals, demo
from pipeline.data.validate import ValidationFailed
from pipeline.registry import records, runs
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.commands import cli_in_process, output
from tests.integration.stage_runs import (
    DEMO_WATERMARK,
    SCORER_WAITING,
    champion_state,
    command_env,
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    wait_until,
)

DEADLINE_SECONDS = 180  # generous: only a broken pipeline gets near it, however busy the machine


def run_row(ws: Workspace, run_id: str) -> dict[str, Any]:
    [row] = fetch(ws, "SELECT * FROM pipeline.training_runs WHERE run_id = :r", r=run_id)
    return row


def source_rows(ws: Workspace) -> int:
    [row] = fetch(ws, "SELECT count(*) AS n FROM public.patient_records")
    return int(row["n"])


def arrivals_waiting(ws: Workspace) -> int:
    """Labelled rows the arrival watcher counts as not read by any run yet."""
    with ws.engine.connect() as conn:
        return arrivals.count_new_labelled_rows(conn, ws.config.dataset,
                                                arrivals.last_seen_watermark(conn, ws.model))[0]


@pytest.fixture
def champion(ws: Workspace) -> Workspace:
    """The demo loaded, version 1 champion (trained with one quick family); the quick workspace."""
    quick = quick_workspace(ws)
    promote_demo_champion(quick)
    return quick


def test_a_killed_run_is_marked_abandoned_by_the_next_command(champion: Workspace) -> None:
    """A real subprocess for the run: it is stopped (SIGSTOP) and killed (SIGKILL) mid-stage."""
    ws = champion
    demo.simulate_arrivals(ws.engine, rows=60, seed=3)
    before, rows = champion_state(ws), source_rows(ws)
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "retrain", "--run-id", "killed"], cwd=PROJECT_ROOT,
                               env=command_env(ws.settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stage = wait_until(lambda: fetch(ws, "SELECT active_stage FROM pipeline.training_runs WHERE run_id = 'killed' "
                                           "AND active_stage IN ('validate', 'train', 'evaluate')"), "a stage to start")
        os.kill(process.pid, signal.SIGSTOP)  # held mid-stage: alive, its lock held, however fast the stage
        assert runs.reap_abandoned(ws.engine, ws.model) == []  # a live run is never taken for dead
        assert run_row(ws, "killed")["status"] == "running"
        with pytest.raises(runs.RunBusy, match=rf"run killed is being worked on by \S+:{process.pid}"):
            with runs.running(ws.engine, ws.settings, "killed", "evaluate"):
                pass
        second = cli_in_process(command_env(ws.settings))("retrain", "--run-id", "killed")  # the same run, twice at once
        assert second.returncode == 1 and f":{process.pid} (stage " in second.stderr
        assert run_row(ws, "killed")["status"] == "running"  # the refused second never marks the first failed
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    report = wait_until(lambda: [r for r in output(cli_in_process(command_env(ws.settings))("status", "--json"))["recent_runs"]
                               if r["run_id"] == "killed" and r["status"] != "running"], "the run to be reaped")
    [killed] = report
    assert (killed["status"], killed["failure_kind"]) == ("failed", "abandoned")
    assert killed["reason"].startswith(f"abandoned: the process {run_row(ws, 'killed')['owner']} running stage "
                                       f"{stage[0]['active_stage']}")
    assert champion_state(ws) == before
    assert source_rows(ws) == rows
    assert arrivals_waiting(ws) == 60  # a run that died did not consume the rows it came for
    text = cli_in_process(command_env(ws.settings))("status")
    [line] = [line for line in text.stdout.splitlines() if " killed " in line]  # the status table's row of the run
    assert re.search(r" killed +cli +failed \(abandoned\) +abandoned: the process", line), text.stdout


@pytest.fixture
def breakable_store(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Callable[[], None]]]]:
    """An artifact store on a small tmpfs of its own where the machine allows mounting one (made read-only
    or filled up on demand); else a plain folder whose writes are made to fail (its subfolders replaced
    by files), named as such in the test id's output."""
    store = tmp_path / "store"
    store.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(store)],
                             capture_output=True, check=False).returncode == 0
    filler = store / "filler"

    def read_only() -> None:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
        else:
            break_writes()

    def full() -> None:
        if mounted:
            with filler.open("wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * (1 << 16))
                except OSError:  # ENOSPC: the disk is full
                    pass
        else:
            break_writes()

    def break_writes() -> None:
        for kind in ("models", "reports", "snapshots"):
            shutil.rmtree(store / kind, ignore_errors=True)
            (store / kind).write_text("not a folder: every write here fails")

    def repair() -> None:
        if mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(store)], check=True)
            filler.unlink(missing_ok=True)
        else:
            for kind in ("models", "reports", "snapshots"):
                if (store / kind).is_file():
                    (store / kind).unlink()

    try:
        yield store, {"read_only": read_only, "full": full, "repair": repair}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(store)], check=False)


@pytest.mark.parametrize("fault", ["read_only", "full"])
def test_an_unwritable_store_fails_the_stage_keeps_the_champion_and_the_arrivals(
        ws: Workspace, breakable_store: tuple[Path, dict[str, Callable[[], None]]], fault: str) -> None:
    store, make = breakable_store
    ws = quick_workspace(dataclasses.replace(ws, settings=dataclasses.replace(ws.settings, artifact_dir=store)))
    promote_demo_champion(ws)
    demo.simulate_arrivals(ws.engine, rows=60, seed=4)
    before, rows = champion_state(ws), source_rows(ws)
    run = make_run("unwritable")
    snapshot = stages.ingest_snapshot(ws, run)
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])

    make[fault]()
    with pytest.raises(OSError) as raised:
        stages.train_candidate(ws, run, checked["clean_snapshot_hash"])

    failed = run_row(ws, "unwritable")
    assert (failed["status"], failed["failure_kind"], failed["active_stage"]) == ("failed", "infrastructure", None)
    assert failed["reason"].startswith("train: ") and str(store) in failed["reason"]
    assert str(store) in str(raised.value)
    assert champion_state(ws) == before
    assert source_rows(ws) == rows
    assert list(store.rglob(".tmp-*")) == []  # no partial file is left behind
    assert arrivals_waiting(ws) == 60  # the rows signal again

    make["repair"]()
    candidate = stages.train_candidate(ws, run, checked["clean_snapshot_hash"])  # the retry, as Airflow's
    assert run_row(ws, "unwritable")["status"] == "running"
    stages.evaluate_candidate(ws, run, candidate["version"], margin=0.0)
    outcome = stages.promote_candidate(ws, run, actor="test")
    assert run_row(ws, "unwritable")["status"] == outcome["status"] != "running"
    assert arrivals_waiting(ws) == 0


def test_a_failure_on_the_data_consumes_its_arrivals(champion: Workspace) -> None:
    ws = champion
    demo.simulate_arrivals(ws.engine, rows=60, seed=5)
    with ws.engine.begin() as conn:  # every new row gets an unknown sex: far over the quarantine limit
        conn.execute(sa.text("UPDATE public.patient_records SET sex = 'X' WHERE recorded_at > :t"), {"t": DEMO_WATERMARK})
    run = make_run("bad-rows", datetime.now(UTC))
    snapshot = stages.ingest_snapshot(ws, run)
    with pytest.raises(ValidationFailed, match="sex"):
        stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])

    assert run_row(ws, "bad-rows")["status"] == "validation_failed"
    assert arrivals_waiting(ws) == 0  # the same rows would fail the same way: no signal loop


def test_a_future_timestamp_neither_loops_the_watcher_nor_silences_it(champion: Workspace) -> None:
    ws = champion
    with ws.engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO public.patient_records (patient_id, birth_date, visit_date, sex, bmi, bp_mean, tc, ldl, hdl, tch,
                                                ltg, glucose, progression_12m, recorded_at)
            SELECT 900001, birth_date, visit_date, sex, bmi, bp_mean, tc, ldl, hdl, tch, ltg, glucose, progression_12m,
                   '2100-01-01'
              FROM public.patient_records WHERE patient_id = 1
        """))
    assert arrivals.claim_arrival_signal(ws.engine, ws.model, ws.config.dataset, min_new_rows=1) is None

    with ws.engine.begin() as conn:  # a run recorded with a watermark in 2100 (an older version allowed it)
        records.start_run(conn, ws.model, "from-the-future", "test", datetime(2100, 1, 1, tzinfo=UTC), {})
    demo.simulate_arrivals(ws.engine, rows=5, seed=6)

    signal_ = arrivals.claim_arrival_signal(ws.engine, ws.model, ws.config.dataset, min_new_rows=5)
    assert signal_ is not None and signal_["new_rows"] == 5  # the five readable rows, not the one from 2100


def test_a_retried_run_reuses_its_snapshot_after_the_rows_changed(champion: Workspace) -> None:
    ws = champion
    demo.simulate_arrivals(ws.engine, rows=30, seed=8)
    run = make_run("retried", datetime.now(UTC))
    first = stages.ingest_snapshot(ws, run)
    clean = stages.validate_snapshot(ws, run, first["snapshot_hash"])["clean_snapshot_hash"]
    version = stages.train_candidate(ws, run, clean)["version"]
    with ws.engine.begin() as conn:  # a CRM correction lands before the retry
        conn.execute(sa.text("UPDATE public.patient_records SET bmi = bmi + 1 WHERE recorded_at > :t"),
                     {"t": DEMO_WATERMARK})

    again = stages.ingest_snapshot(ws, run)
    again_clean = stages.validate_snapshot(ws, run, again["snapshot_hash"])["clean_snapshot_hash"]
    again_version = stages.train_candidate(ws, run, again_clean)["version"]

    assert (again["snapshot_hash"], again_clean, again_version) == (first["snapshot_hash"], clean, version)
    [model] = fetch(ws, "SELECT * FROM pipeline.model_versions WHERE run_id = 'retried'")
    assert model["snapshot_hash"] == clean and run_row(ws, "retried")["snapshot_hash"] == first["snapshot_hash"]


def test_a_retried_run_whose_snapshot_is_gone_refuses_to_mix_inputs(champion: Workspace) -> None:
    ws = champion
    before = champion_state(ws)
    demo.simulate_arrivals(ws.engine, rows=30, seed=9)
    run = make_run("lost-input", datetime.now(UTC))
    first = stages.ingest_snapshot(ws, run)
    ws.snapshot_path(first["snapshot_hash"]).unlink()
    with ws.engine.begin() as conn:
        conn.execute(sa.text("UPDATE public.patient_records SET bmi = bmi + 1 WHERE recorded_at > :t"),
                     {"t": DEMO_WATERMARK})

    with pytest.raises(stages.LineageError, match=r"run lost-input recorded snapshot .* start a new run"):
        stages.ingest_snapshot(ws, run)

    failed = run_row(ws, "lost-input")
    assert (failed["status"], failed["failure_kind"]) == ("failed", "data")
    assert failed["snapshot_hash"] == first["snapshot_hash"]  # the record still names what the run read
    assert champion_state(ws) == before


def test_a_moved_store_is_read_by_hash_not_by_the_path_written(champion: Workspace, tmp_path: Path) -> None:
    ws = champion
    old_store = ws.settings.artifact_dir
    moved = dataclasses.replace(ws, settings=dataclasses.replace(ws.settings, artifact_dir=tmp_path / "moved"))
    shutil.copytree(old_store, moved.settings.artifact_dir)
    shutil.rmtree(old_store)

    demo.simulate_arrivals(ws.engine, rows=30, seed=10)
    run = make_run("after-move", datetime.now(UTC))
    snapshot = stages.ingest_snapshot(moved, run)
    checked = stages.validate_snapshot(moved, run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(moved, run, checked["clean_snapshot_hash"])
    evaluation = stages.evaluate_candidate(moved, run, candidate["version"])

    assert evaluation["champion_metrics"] is not None  # the champion was found in the moved store
    stored = fetch(ws, "SELECT path FROM pipeline.snapshots UNION ALL SELECT artifact_path FROM pipeline.model_versions")
    assert all(not Path(r["path"]).is_absolute() for r in stored)  # recorded relative to the store


def test_rolling_back_to_a_version_that_failed_its_checks_needs_force(champion: Workspace) -> None:
    ws = champion
    narrow = dataclasses.replace(ws.config.promotion, prediction_range=(0.0, 50.0))
    strict = dataclasses.replace(ws, config=dataclasses.replace(ws.config, promotion=narrow))
    demo.simulate_arrivals(ws.engine, rows=30, seed=11)
    run = make_run("out-of-range", datetime.now(UTC))
    snapshot = stages.ingest_snapshot(strict, run)
    checked = stages.validate_snapshot(strict, run, snapshot["snapshot_hash"])
    bad = stages.train_candidate(strict, run, checked["clean_snapshot_hash"])["version"]
    assert stages.evaluate_candidate(strict, run, bad)["decision"] == "keep"
    before = champion_state(ws)
    cli = cli_in_process(command_env(ws.settings))

    refused = cli("rollback", "--to", str(bad), "--reason", "try it")

    assert refused.returncode == 1
    assert f"version {bad} failed its policy checks: behaviour:" in refused.stderr
    assert "--force" in refused.stderr
    assert champion_state(ws) == before

    forced = output(cli("rollback", "--to", str(bad), "--reason", "the operator knows", "--force", "--json"))
    assert forced["champion"] == bad and forced["forced_past"]
    [event] = fetch(ws, "SELECT reason FROM pipeline.promotion_events WHERE to_version = :v", v=bad)
    assert "the operator knows [forced past failed checks: behaviour:" in event["reason"]


def test_a_stage_that_raises_marks_its_run_failed_with_the_reason(champion: Workspace) -> None:
    ws = champion
    run = make_run("wrong-input", datetime.now(UTC))
    snapshot = stages.ingest_snapshot(ws, run)

    with pytest.raises(ValueError, match="not a validated clean snapshot"):
        stages.train_candidate(ws, run, snapshot["snapshot_hash"])

    failed = run_row(ws, "wrong-input")
    assert (failed["status"], failed["failure_kind"], failed["active_stage"]) == ("failed", "data", None)
    assert failed["reason"].startswith(f"train: snapshot {snapshot['snapshot_hash']} is not a validated clean")


def test_a_missing_suite_file_is_refused_before_any_run_is_recorded(ws: Workspace, tmp_path: Path) -> None:
    config = tmp_path / "no-suite.yaml"
    config.write_text((PROJECT_ROOT / "pipeline.yaml").read_text().replace(
        "expectations/patient_records.json", str(tmp_path / "gone.json")))

    result = cli_in_process(command_env(ws.settings))("--config", str(config), "retrain", "--run-id", "no-suite")

    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: dataset.expectation_suite: cannot read {tmp_path / 'gone.json'}: "
                                     f"[Errno 2] No such file or directory: '{tmp_path / 'gone.json'}'")
    assert fetch(ws, "SELECT * FROM pipeline.training_runs") == []


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A PostgreSQL server of this test's own, which the test may stop and start again; stopped afterwards."""
    pgdata = tmp_path / "pgdata"
    url = db.start_embedded_postgres(pgdata)
    try:
        yield pgdata, url
    finally:
        db.stop_embedded_postgres(pgdata)


def test_a_run_that_loses_its_database_mid_stage_ends_abandoned(own_server: tuple[Path, str], tmp_path: Path) -> None:
    """A real subprocess for the run: it is held (SIGSTOP) while its server stops, and its exit status and last
    stderr line are the real process's."""
    pgdata, url = own_server
    settings = dataclasses.replace(Settings.from_env(), database_url=url, artifact_dir=tmp_path / "artifacts")
    ws = quick_workspace(Workspace.open(settings))
    promote_demo_champion(ws)
    demo.simulate_arrivals(ws.engine, rows=60, seed=12)
    before, rows = champion_state(ws), source_rows(ws)
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "retrain", "--run-id", "lost-db"], cwd=PROJECT_ROOT,
                               env=command_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: fetch(ws, "SELECT 1 FROM pipeline.training_runs WHERE run_id = 'lost-db' "
                                   "AND active_stage IN ('validate', 'train', 'evaluate')"), "a stage to start")
        os.kill(process.pid, signal.SIGSTOP)  # mid-stage when the server goes
        ws.engine.dispose()
        assert db.stop_embedded_postgres(pgdata) is not None
        os.kill(process.pid, signal.SIGCONT)
        _, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("error: database postgresql")  # one line, naming it
    restart = "import sys; from pathlib import Path; from pipeline.store import db; print(db.start_embedded_postgres(Path(sys.argv[1])))"
    restarted = subprocess.run([sys.executable, "-c", restart, str(pgdata)], cwd=PROJECT_ROOT, capture_output=True,
                               text=True, check=True)  # a fresh process: this one remembers the server as running
    assert restarted.stdout.strip() == url
    [run] = [r for r in output(cli_in_process(command_env(settings))("status", "--json"))["recent_runs"]
             if r["run_id"] == "lost-db"]
    assert (run["status"], run["failure_kind"]) == ("failed", "abandoned")
    assert champion_state(ws) == before
    assert source_rows(ws) == rows
    assert arrivals_waiting(ws) == 60
    ws.engine.dispose()


def test_a_killed_scoring_run_is_marked_abandoned_and_leaves_no_forecast(champion: Workspace) -> None:
    """A real subprocess for the scoring run: it is killed (SIGKILL) mid-write."""
    ws = champion
    demo.simulate_arrivals(ws.engine, rows=200, seed=13, labelled=False)
    blocker = ws.engine.connect()  # holds the refusals table: the scorer waits there, mid-run, until killed
    blocker.execute(sa.text("LOCK TABLE pipeline.scoring_refusals IN ACCESS EXCLUSIVE MODE"))
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "score", "--run-id", "killed-score"],
                               cwd=PROJECT_ROOT, env=command_env(ws.settings), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: fetch(ws, "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                     "WHERE c.relname = 'scoring_refusals' AND NOT l.granted"), "the scorer to wait")
        assert fetch(ws, "SELECT status FROM pipeline.scoring_runs WHERE run_id = 'killed-score'") == [
            {"status": "running"}]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        blocker.rollback()
        blocker.close()

    wait_until(lambda: stages.open_workspace(ws.settings).engine.dispose() or fetch(
        ws, "SELECT 1 FROM pipeline.scoring_runs WHERE run_id = 'killed-score' AND status = 'failed'"),
        "the scoring run to be reaped")
    [run] = fetch(ws, "SELECT status, reason FROM pipeline.scoring_runs WHERE run_id = 'killed-score'")
    assert run["reason"].startswith("abandoned:")
    assert fetch(ws, "SELECT * FROM pipeline.predictions WHERE run_id = 'killed-score'") == []  # rolled back whole


def test_a_run_left_between_stages_for_a_day_is_marked_abandoned(champion: Workspace) -> None:
    ws = champion
    run = make_run("left-behind", datetime.now(UTC))
    stages.ingest_snapshot(ws, run)  # then nothing: its scheduler went away between two tasks
    assert runs.reap_abandoned(ws.engine, ws.model) == []  # an hour between stages is nothing unusual
    with ws.engine.begin() as conn:  # a day and a bit later
        conn.execute(sa.text("UPDATE pipeline.training_runs SET heartbeat_at = now() - interval '25 hours', "
                             "started_at = now() - interval '25 hours' WHERE run_id = 'left-behind'"))

    [reaped] = runs.reap_abandoned(ws.engine, ws.model)

    failed = run_row(ws, "left-behind")
    assert reaped["run_id"] == "left-behind"
    assert (failed["status"], failed["failure_kind"]) == ("failed", "abandoned")
    assert failed["reason"].startswith(f"abandoned: no stage worked on it for {runs.IDLE_RUN_HOURS} hours")


def block_refusals(ws: Workspace, run_id: str, source_id: int) -> sa.engine.Connection:
    """An open transaction holding a refusal row of `run_id` for `source_id`: the scorer's COPY of that refusal
    waits on it, after the run's forecasts are written on its own (uncommitted) transaction."""
    blocker = ws.engine.connect()
    blocker.execute(sa.text("INSERT INTO pipeline.scoring_refusals (run_id, source_id, reasons) "
                            "VALUES (:r, :id, '[]')"), {"r": run_id, "id": str(source_id)})
    return blocker


def test_scoring_that_loses_its_database_mid_write_says_so_in_one_line_and_reruns_whole(
        own_server: tuple[Path, str], tmp_path: Path) -> None:
    """A real subprocess for the scoring run: what is tested is the real process's stderr when its server goes
    mid-COPY (one line of ours, nothing from a later warning or from psycopg2's C code) and its exit status."""
    pgdata, url = own_server
    settings = dataclasses.replace(Settings.from_env(), database_url=url, artifact_dir=tmp_path / "artifacts")
    ws = quick_workspace(Workspace.open(settings))
    promote_demo_champion(ws)
    ids = demo.simulate_arrivals(ws.engine, rows=40, seed=14, labelled=False)
    with ws.engine.begin() as conn:  # one record the contract refuses: its refusal is written after the forecasts
        conn.execute(sa.text("UPDATE public.patient_records SET sex = 'X' WHERE patient_id = :id"), {"id": ids[0]})
    blocker = block_refusals(ws, "lost-db-score", ids[0])
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "score", "--run-id", "lost-db-score"],
                               cwd=PROJECT_ROOT, env=command_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_until(lambda: fetch(ws, SCORER_WAITING), "the scorer to wait mid-write")
        ws.engine.dispose()
        # The server stops while the scorer still waits (a fast shutdown ends every session, the blocker's too):
        # releasing the blocker first would let the scorer finish before the server goes, on a quick machine.
        assert db.stop_embedded_postgres(pgdata) is not None
        stdout, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        blocker.invalidate()  # its server is gone: nothing to roll back
        process.kill()
        process.wait()

    assert process.returncode == 1 and stdout == "", stderr
    # One line of ours: no traceback, no follow-up warnings. (When the server dies inside a COPY, psycopg2's C code
    # may print that COPY's AdminShutdown itself, with no Python traceback: not ours to silence.)
    lines = stderr.strip().splitlines()
    assert "Traceback (most recent call last)" not in stderr, stderr
    assert not [x for x in lines if x.split(" ", 1)[0] in ("DEBUG", "INFO", "WARNING", "ERROR", "warning:")], stderr
    assert sum(x.startswith("error:") for x in lines) == 1 and lines[-1].startswith("error:"), stderr
    line = lines[-1]
    named = sa.engine.make_url(url).render_as_string(hide_password=True)
    assert line.startswith(f"error: database {named} (PIPELINE_DATABASE_URL): "), line
    assert "connection already closed" not in line, line  # the first cause, not the rollback's follow-up
    restart = "import sys; from pathlib import Path; from pipeline.store import db; print(db.start_embedded_postgres(Path(sys.argv[1])))"
    subprocess.run([sys.executable, "-c", restart, str(pgdata)], cwd=PROJECT_ROOT, check=True, capture_output=True)
    assert fetch(ws, "SELECT * FROM pipeline.predictions WHERE run_id = 'lost-db-score'") == []  # rolled back whole
    assert fetch(ws, "SELECT * FROM pipeline.scoring_refusals WHERE run_id = 'lost-db-score'") == []

    rerun = output(cli_in_process(command_env(settings))("score", "--run-id", "lost-db-score", "--json"))

    assert (rerun["rows_selected"], rerun["rows_scored"], rerun["rows_refused"]) == (40, 39, 1)
    [run] = fetch(ws, "SELECT status FROM pipeline.scoring_runs WHERE run_id = 'lost-db-score'")
    assert run["status"] == "done"
    assert len(fetch(ws, "SELECT 1 FROM pipeline.predictions WHERE run_id = 'lost-db-score'")) == 39
    ws.engine.dispose()
