"""Shadow challengers on real PostgreSQL: scored beside the champion, never shown to the CRM, promoted by hand.

Version 1 is the configured ridge, champion of the demo study. Version 2, a heavily shrunk ridge
trained after 30 more patients arrived, is evaluated and kept out (it loses to version 1): the
candidate an operator puts in shadow. 30 more records then await their outcome, some faulty.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from pipeline import champion, stages
from pipeline.contract.settings import Settings
from pipeline.data import demo
from pipeline.registry import records
from pipeline.serving import scoring
from pipeline.serving.app import create_app
from pipeline.store.artifacts import ArtifactIntegrityError
from pipeline.workspace import Workspace
from tests.commands import Cli, cli_in_process, output
from tests.conftest import copy_workspace, shared_workspace
from tests.integration.stage_runs import (
    command_env,
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    retrain_through_stages,
)
from tests.integration.test_serving import MODEL, TOKEN, auth, patient_records, post, running

WEAK_ALPHA = 800.0
AWAITING, FAULTY = 30, 4


def with_alpha(ws: Workspace, alpha: float) -> Workspace:
    training = dataclasses.replace(ws.config.training, families={"ridge": {"alpha": alpha}})
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))


def with_max_shadows(ws: Workspace, limit: int) -> Workspace:
    serving_policy = dataclasses.replace(ws.config.serving, max_shadows=limit)
    return dataclasses.replace(ws, config=dataclasses.replace(ws.config, serving=serving_policy))


@pytest.fixture(scope="module")
def registry(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """Version 1 champion, version 2 evaluated and kept out, records awaiting their outcome: built once per module."""
    with shared_workspace(server_url, tmp_path_factory.mktemp("shadows")) as ws:
        yield _seed(quick_workspace(ws))


@pytest.fixture
def sws(registry: Workspace, ws: Workspace) -> Workspace:
    """The test's own copy of the module's registry, to change as it likes."""
    copy_workspace(registry, ws)
    return quick_workspace(ws)


def _seed(quick: Workspace) -> Workspace:
    promote_demo_champion(quick)
    demo.simulate_arrivals(quick.engine, rows=30, seed=7)
    kept = retrain_through_stages(with_alpha(quick, WEAK_ALPHA), make_run("second"))
    assert (kept["candidate"]["version"], kept["outcome"]["status"]) == (2, "kept"), kept["outcome"]["reason"]
    demo.simulate_arrivals(quick.engine, rows=AWAITING, seed=3, labelled=False, bad_rows=FAULTY)
    return quick


@pytest.fixture
def cli(sws: Workspace, database_url: str, settings: Settings) -> Cli:
    """`python -m pipeline ARGS`, in this process, on the test's database and artifacts (the shipped config)."""
    env = command_env(settings, USER="tester")
    return cli_in_process(env)


def forecasts(ws: Workspace, run_id: str, source: str) -> dict[str, dict[str, Any]]:
    rows = fetch(ws, """SELECT model, version, source_id, prediction, lower, upper, coverage, run_id, source, input_hash
                          FROM pipeline.predictions WHERE run_id = :r AND source = :s""", r=run_id, s=source)
    by_id = {r["source_id"]: r for r in rows}
    assert len(by_id) == len(rows)  # one forecast per record and version
    return by_id


def champion_rows(ws: Workspace) -> dict[str, Any]:
    return {"champion": fetch(ws, "SELECT * FROM pipeline.champion"),
            "events": fetch(ws, "SELECT * FROM pipeline.promotion_events ORDER BY event_id")}


def shadow_events(ws: Workspace) -> list[tuple[int, str, str, str]]:
    with ws.engine.connect() as conn:
        return [(e["version"], e["action"], e["actor"], e["reason"]) for e in records.shadow_history(conn, ws.model)]


def overwrite_artifact(ws: Workspace, version: int) -> None:
    with ws.engine.connect() as conn:
        path = ws.settings.artifact_dir / records.get_model(conn, version, ws.model)["artifact_path"]
    os.chmod(path, path.stat().st_mode | stat.S_IWUSR)
    Path(path).write_bytes(b"not the model that was registered")


# --- scoring in shadow -----------------------------------------------------------------------------


def test_shadow_forecasts_are_stored_beside_the_champions_and_never_served(sws: Workspace) -> None:
    champion.add_shadow(sws, 2, "test", "kept out by the margin; watch it live")

    result = scoring.score_batch(sws, "score-s1")

    scored = AWAITING - FAULTY
    assert (result["version"], result["rows_scored"], result["rows_refused"]) == (1, scored, FAULTY)
    assert result["shadows"] == [{"version": 2, "status": "done", "rows_scored": scored, "rows_not_finite": 0,
                                  "reason": None}]
    [run] = fetch(sws, "SELECT * FROM pipeline.scoring_runs WHERE run_id = 'score-s1'")
    assert (run["status"], run["shadows"]) == ("done", result["shadows"])
    batch, shadow = forecasts(sws, "score-s1", "batch"), forecasts(sws, "score-s1", "shadow")
    assert set(shadow) == set(batch) and len(batch) == scored  # the same records, none of the refused ones
    for source_id, row in shadow.items():
        assert (row["version"], batch[source_id]["version"]) == (2, 1)
        assert row["input_hash"] == batch[source_id]["input_hash"]
        assert row["lower"] <= row["prediction"] <= row["upper"]
    assert any(shadow[k]["prediction"] != pytest.approx(batch[k]["prediction"]) for k in batch)

    latest = fetch(sws, "SELECT * FROM pipeline.latest_forecasts WHERE model = :m", m=sws.model)
    assert {(r["version"], r["source"], r["run_id"]) for r in latest} == {(1, "batch", "score-s1")}
    assert {r["source_id"]: r["prediction"] for r in latest} == {k: r["prediction"] for k, r in batch.items()}

    again = scoring.score_batch(sws, "score-s1")  # the same run again replaces its shadow rows too

    assert again == result
    assert forecasts(sws, "score-s1", "shadow") == shadow
    assert fetch(sws, "SELECT count(*) AS n FROM pipeline.predictions")[0]["n"] == 2 * scored

    ids = sorted(batch)[:5]
    with running(create_app(sws, [TOKEN])) as base:
        assert requests.get(f"{base}/v1/models/{MODEL}", headers=auth(), timeout=60).json()["version"] == 1
        answer = post(base, patient_records(sws, len(ids), ids=ids), request_id="crm-shadow")
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [str(r["id"]) for r in results] == ids
    for r in results:  # the champion's forecast, as in the batch; never the shadow's
        assert r["model_version"] == 1 and "shadow" not in str(r)
        assert r["prediction"] == pytest.approx(batch[str(r["id"])]["prediction"])


def test_a_shadow_that_cannot_be_loaded_leaves_the_champions_batch_whole(sws: Workspace,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    champion.add_shadow(sws, 2, "test", "watch it")
    overwrite_artifact(sws, 2)

    with caplog.at_level(logging.WARNING, logger="pipeline.serving.scoring"):
        result = scoring.score_batch(sws, "score-tampered")

    assert (result["rows_scored"], result["rows_refused"]) == (AWAITING - FAULTY, FAULTY)
    [shadow] = result["shadows"]
    assert (shadow["version"], shadow["status"], shadow["rows_scored"]) == (2, "failed", 0)
    assert shadow["reason"].startswith("could not be loaded") and "the registry says" in shadow["reason"]
    [run] = fetch(sws, "SELECT * FROM pipeline.scoring_runs WHERE run_id = 'score-tampered'")
    assert (run["status"], run["shadows"]) == ("done", result["shadows"])
    assert forecasts(sws, "score-tampered", "shadow") == {}
    assert len(forecasts(sws, "score-tampered", "batch")) == AWAITING - FAULTY
    assert any("shadow version 2" in r.getMessage() and "the champion's forecasts go on" in r.getMessage()
               for r in caplog.records)


def test_a_shadow_whose_copy_fails_on_the_server_is_stopped_and_the_champions_batch_stays_whole(
        sws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shadow's COPY runs on the writer's thread; when the server refuses it (here: a version the registry lacks,
    a foreign key violation), the error reaches the shadow's savepoint, only its rows are taken back, the run goes on."""
    champion.add_shadow(sws, 2, "test", "watch it")
    loaded = scoring.load_shadows

    def unknown_version(ws: Workspace, champion_version: int) -> list[scoring.Shadow]:
        shadows = loaded(ws, champion_version)
        for shadow in shadows:
            assert shadow.interval is not None
            shadow.interval = dataclasses.replace(shadow.interval, version=999)
        return shadows

    monkeypatch.setattr(scoring, "load_shadows", unknown_version)
    result = scoring.score_batch(sws, "score-shadow-copy-fails")

    assert (result["rows_scored"], result["rows_refused"]) == (AWAITING - FAULTY, FAULTY)
    [shadow] = result["shadows"]
    assert (shadow["version"], shadow["status"], shadow["rows_scored"]) == (2, "failed", 0)
    assert "could not score the chunk" in shadow["reason"] and "ForeignKeyViolation" in shadow["reason"]
    [run] = fetch(sws, "SELECT * FROM pipeline.scoring_runs WHERE run_id = 'score-shadow-copy-fails'")
    assert run["status"] == "done"
    assert forecasts(sws, "score-shadow-copy-fails", "shadow") == {}
    assert len(forecasts(sws, "score-shadow-copy-fails", "batch")) == AWAITING - FAULTY


# --- the shadow set --------------------------------------------------------------------------------


def test_the_shadow_set_refuses_what_it_must_and_keeps_its_history(sws: Workspace, cli: Cli) -> None:
    for version, error, match in ((1, ValueError, "version 1 is the champion"),
                                  (99, LookupError, "model version 99 is not registered")):
        with pytest.raises(error, match=match):
            champion.add_shadow(sws, version, "test", "")
    other_model = dataclasses.replace(sws, config=dataclasses.replace(sws.config, model="other_model"))
    with pytest.raises(LookupError, match="version 2 is a version of model 'diabetes_progression'"):
        champion.add_shadow(other_model, 2, "test", "")
    with pytest.raises(ValueError, match="version 2 of diabetes_progression is not in shadow"):
        champion.remove_shadow(sws, 2, "test", "")
    with pytest.raises(ValueError, match="serving.max_shadows is 0"):
        champion.add_shadow(with_max_shadows(sws, 0), 2, "test", "")
    assert shadow_events(sws) == []

    added = output(cli("shadow", "--add-rejected", "--reason", "the last candidate kept out", "--json"))

    assert (added["champion"], [s["version"] for s in added["shadows"]], added["max_shadows"]) == (1, [2], 2)
    refused = cli("shadow", "--add", "2")
    assert refused.returncode == 1 and "already in shadow" in refused.stderr
    refused = cli("shadow", "--add", "1")
    assert refused.returncode == 1 and "version 1 is the champion" in refused.stderr
    third = stages.train_candidate(sws, make_run("third"), retrain_snapshot(sws, "third"))["version"]
    with pytest.raises(ValueError, match=r"already has 1 version\(s\) in shadow \[2\].*max_shadows is 1"):
        champion.add_shadow(with_max_shadows(sws, 1), third, "test", "")
    listed = champion.add_shadow(sws, third, "test", "a version trained by hand")
    assert [s["version"] for s in listed["shadows"]] == [2, 3]

    removed = output(cli("shadow", "--remove", "2", "--reason", "seen enough", "--json"))

    assert [s["version"] for s in removed["shadows"]] == [3]
    assert shadow_events(sws) == [(2, "add", "cli:tester", "the last candidate kept out"),
                                  (3, "add", "test", "a version trained by hand"),
                                  (2, "remove", "cli:tester", "seen enough")]
    listing = cli("shadow")
    assert listing.returncode == 0 and "v3" in listing.stdout and "v2" not in listing.stdout
    for statement in ("UPDATE pipeline.shadow_events SET reason = 'rewritten'", "DELETE FROM pipeline.shadow_events"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), sws.engine.begin() as conn:
            conn.execute(sa.text(statement))


def retrain_snapshot(ws: Workspace, run_id: str) -> str:
    """The clean snapshot of a new run on the rows as they are (the same rows as the last run)."""
    run = make_run(run_id)
    snapshot = stages.ingest_snapshot(ws, run)
    return str(stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])["clean_snapshot_hash"])


# --- promote --to ----------------------------------------------------------------------------------


def test_promote_to_round_trips_with_history_and_live_evidence(sws: Workspace, cli: Cli) -> None:
    champion.add_shadow(sws, 2, "test", "watch it")
    scored = scoring.score_batch(sws, "score-before")["rows_scored"]
    before = champion_rows(sws)
    for args, message in ((("--to", "1", "--reason", "again"), "version 1 is already the champion"),
                          (("--to", "2", "--reason", "  "), "a promotion needs a reason"),
                          (("--to", "2"), "a promotion needs a reason"),
                          (("--to", "99", "--reason", "typo"), "model version 99 is not registered"),
                          (("--reason", "no version"), "--reason and --force go with --to"),
                          (("--to", "2", "--reason", "x", "--dry-run"), "do not go with --to")):
        refused = cli("promote", *args)
        assert refused.returncode == 1 and message in refused.stderr, (args, refused.stderr)
    assert champion_rows(sws) == before

    promoted = output(cli("promote", "--to", "2", "--reason", "better live", "--run-id", "promote-1", "--json"))

    assert (promoted["champion"], promoted["replaced"], promoted["run_id"], promoted["forced_past"]) == (
        2, 1, "promote-1", [])
    evidence = promoted["evidence"]
    assert (evidence["shadow_forecasts"], evidence["shadow_runs"], evidence["shadow_forecasts_with_outcome"]) == (
        scored, 1, 0)
    with sws.engine.connect() as conn:
        assert records.current_champion(conn, sws.model)["version"] == 2
        assert records.shadow_versions(conn, sws.model) == []  # the champion left the shadow set
    assert shadow_events(sws)[-1] == (2, "remove", "cli:tester", "became champion (run promote-1)")

    back = champion.promote_version(sws, "promote-2", 1, " v2 drifts on new patients ", actor="test")

    assert (back["champion"], back["replaced"]) == (1, 2)
    assert back["evidence"]["shadow_forecasts"] == 0  # version 1 never ran in shadow
    history = output(cli("history", "--json"))
    assert [(e["from_version"], e["to_version"], e["run_id"], e["actor"], e["reason"]) for e in history] == [
        (None, 1, "first", "test", history[0]["reason"]),
        (1, 2, "promote-1", "cli:tester", "promote: better live"),
        (2, 1, "promote-2", "test", "promote: v2 drifts on new patients")]
    assert history[1]["evidence"]["shadow_forecasts"] == scored

    stages.rollback_champion(sws, "rollback-1", "undo the undo")  # a rollback is a promotion too, as before
    assert [e["to_version"] for e in output(cli("history", "--json"))] == [1, 2, 1, 2]


def test_promote_to_a_tampered_artifact_is_refused(sws: Workspace) -> None:
    overwrite_artifact(sws, 2)
    before = champion_rows(sws)

    with pytest.raises(ArtifactIntegrityError, match="the registry says"):
        champion.promote_version(sws, "promote-bad", 2, "it did better in shadow")

    assert champion_rows(sws) == before


def test_shadow_add_of_a_tampered_version_is_refused_naming_the_hash(sws: Workspace, cli: Cli) -> None:
    overwrite_artifact(sws, 2)
    with sws.engine.connect() as conn:
        registered = records.get_model(conn, 2, sws.model)["artifact_hash"]

    with pytest.raises(ArtifactIntegrityError, match=registered):
        champion.add_shadow(sws, 2, "test", "watch it")
    refused = cli("shadow", "--add", "2", "--reason", "watch it")

    assert refused.returncode == 1 and refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: ") and registered in line
    assert champion.shadows(sws)["shadows"] == []
    assert fetch(sws, "SELECT * FROM pipeline.shadow_events") == []


def test_promote_to_an_unevaluated_version_needs_force(sws: Workspace) -> None:
    third = stages.train_candidate(sws, make_run("third"), retrain_snapshot(sws, "third"))["version"]
    before = champion_rows(sws)

    with pytest.raises(ValueError, match=f"version {third} failed its policy checks: .*no recorded evaluation"):
        champion.promote_version(sws, "promote-3", third, "trained by hand")
    assert champion_rows(sws) == before

    forced = champion.promote_version(sws, "promote-3", third, "trained by hand", force=True)

    assert forced["champion"] == third and forced["forced_past"]
    assert champion_rows(sws)["events"][-1]["reason"].startswith("promote: trained by hand [forced past failed checks")
