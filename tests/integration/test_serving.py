"""The REST API on real PostgreSQL, served by a real uvicorn server on a free port, called over HTTP.

Most tests share one database whose champion (version 1) does not change; the tests that change the
champion (readiness, hot swap, a tampered artifact) have databases of their own. Nothing here asserts a
timing: waits poll until a deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline import stages
from pipeline.contract.settings import (
    PROJECT_ROOT,
    Settings,
)
from pipeline.data import demo
from pipeline.registry.records import current_champion, get_model, promote
from pipeline.serving import rest
from pipeline.serving.app import create_app
from pipeline.store import artifacts, db
from pipeline.workspace import Workspace
from tests.conftest import create_scratch_database
from tests.integration.stage_runs import (
    command_env,
    fetch,
    make_run,
    promote_demo_champion,
    quick_workspace,
    rewrite_stored,
    stored_bytes,
    wait_until,
)

TOKEN, OTHER_TOKEN = "s3cret-token-for-tests", "a-second-token"
DEADLINE = 90.0  # seconds any wait may take on a loaded machine
TIMEOUT = 60.0  # one HTTP call
MODEL = "diabetes_progression"
PREDICT = f"/v1/models/{MODEL}/predict"


# --- helpers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(app: Any) -> Iterator[str]:
    """`app` in a real uvicorn server on a free port, in a thread; its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the server to start")
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(base: str, body: Any, token: str | None = TOKEN, request_id: str | None = None) -> requests.Response:
    headers = {**(auth(token) if token else {}), **({"X-Request-ID": request_id} if request_id else {})}
    return requests.post(base + PREDICT, json=body, headers=headers, timeout=TIMEOUT)


def patient_records(ws: Workspace, n: int, ids: list[str] | None = None) -> list[dict[str, Any]]:
    """`n` demo patients (or those with these ids) as the CRM would send them: the contract's names, dates
    as YYYY-MM-DD."""
    contract = ws.config.dataset
    chosen = "" if ids is None else f"WHERE {contract.id_column}::text = ANY(:ids)"
    rows = fetch(ws, f"SELECT * FROM public.patient_records {chosen} ORDER BY {contract.id_column} LIMIT :n", n=n,
                 ids=ids)
    records = []
    for row in rows:
        record = {k: v for k, v in row.items() if k in [contract.id_column, *contract.feature_names()]}
        records.append({k: (v.isoformat() if isinstance(v, date) else float(v) if k not in ("sex", contract.id_column)
                            and v is not None else v) for k, v in record.items()})
    return records


class LogCapture(logging.Handler):
    """Every log record of the process, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def captured_log() -> Iterator[LogCapture]:
    handler, root = LogCapture(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def fast_reload(ws: Workspace) -> Workspace:
    """The quick training config, and a champion looked for every 0.2 s."""
    quick = quick_workspace(ws)
    serving_policy = dataclasses.replace(quick.config.serving, reload_seconds=0.2)
    return dataclasses.replace(quick, config=dataclasses.replace(quick.config, serving=serving_policy))


def train_second_version(ws: Workspace) -> int:
    """A second version from 30 more patients, registered but not promoted."""
    demo.simulate_arrivals(ws.engine, rows=30, seed=7)
    run = make_run("second")
    snapshot = stages.ingest_snapshot(ws, run)
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    return int(stages.train_candidate(ws, run, checked["clean_snapshot_hash"])["version"])


def served_version(base: str) -> int:
    return int(requests.get(f"{base}/v1/models/{MODEL}", headers=auth(), timeout=TIMEOUT).json()["version"])


# --- one champion, shared ------------------------------------------------------------------------


@dataclasses.dataclass
class Service:
    ws: Workspace
    base: str
    log: LogCapture


@pytest.fixture(scope="module")
def service(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Version 1 champion on a database of this module's own, served with two tokens."""
    url = create_scratch_database(server_url)
    settings = Settings(database_url=url, config_path=PROJECT_ROOT / "pipeline.yaml",
                        artifact_dir=tmp_path_factory.mktemp("artifacts"), pgdata_dir=PROJECT_ROOT / ".pgdata")
    ws = fast_reload(Workspace.open(settings))
    handler, root = LogCapture(), logging.getLogger()
    root.addHandler(handler)
    level, root_level = logging.getLogger("pipeline").level, root.level
    root.setLevel(logging.INFO)
    try:
        promote_demo_champion(ws)
        with running(create_app(ws, [TOKEN, OTHER_TOKEN])) as base:
            yield Service(ws, base, handler)
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        logging.getLogger("pipeline").setLevel(level)
        ws.engine.dispose()
        db.drop_database(url)


def test_every_v1_call_needs_a_valid_bearer_token(service: Service) -> None:
    record = patient_records(service.ws, 1)[0]

    assert post(service.base, record, token=None).status_code == 401
    assert post(service.base, record, token="wrong-token").status_code == 401
    assert post(service.base, record, token=TOKEN[:-1]).status_code == 401
    refused = requests.get(f"{service.base}/v1/models/{MODEL}", headers=auth("nope"), timeout=TIMEOUT)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    basic = requests.get(f"{service.base}/v1/models/{MODEL}", headers={"Authorization": f"Basic {TOKEN}"},
                         timeout=TIMEOUT)
    assert basic.status_code == 401
    assert post(service.base, record, token=OTHER_TOKEN).status_code == 200  # either configured token
    assert requests.get(service.base + "/healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    assert requests.get(service.base + "/readyz", timeout=TIMEOUT).json()["version"] == 1
    assert requests.get(service.base + "/docs", timeout=TIMEOUT).status_code == 200
    spec = requests.get(service.base + "/openapi.json", timeout=TIMEOUT).json()
    assert "YYYY-MM-DD" in spec["info"]["description"]


def test_one_record_gets_its_forecast_interval_and_version(service: Service) -> None:
    record = patient_records(service.ws, 1)[0]

    answer = post(service.base, record)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["model_version"], body["id"]) == (MODEL, 1, record["patient_id"])
    interval = body["interval"]
    assert interval["lower"] < body["prediction"] < interval["upper"]
    assert interval["coverage"] == service.ws.config.serving.interval_coverage
    assert answer.headers["X-Request-ID"] == body["request_id"]


def test_many_records_are_scored_in_order_as_one_at_a_time(service: Service) -> None:
    records = patient_records(service.ws, 40)
    del records[3]["patient_id"]  # the id is optional

    answer = post(service.base, records)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["records"], body["scored"], body["refused"]) == (40, 40, 0)
    assert [r["index"] for r in body["results"]] == list(range(40))
    assert [r["id"] for r in body["results"]] == [r.get("patient_id") for r in records]
    assert {r["model_version"] for r in body["results"]} == {1}
    alone = post(service.base, records[7]).json()
    assert alone["prediction"] == pytest.approx(body["results"][7]["prediction"], rel=1e-12)


def test_a_list_with_invalid_records_scores_the_others(service: Service) -> None:
    records = patient_records(service.ws, 6)
    records[1]["bmi"] = 99.0  # the suite: bmi between 12 and 70
    records[2]["sex"] = "X"  # the suite: sex in {F, M}
    records[3]["birth_date"] = "03/01/1961"  # the API: dates as YYYY-MM-DD
    records[4]["BMI"] = 27.0  # not a field of the contract

    answer = post(service.base, records)

    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [200, 422, 422, 422, 422, 200]
    assert [(e["field"], e["code"]) for e in results[1]["errors"]] == [("bmi", "out_of_range")]
    assert "expect_column_values_to_be_between" in results[1]["errors"][0]["rule"]
    assert "max_value=70" in results[1]["errors"][0]["rule"]
    assert [(e["field"], e["code"]) for e in results[2]["errors"]] == [("sex", "unknown_category")]
    assert "['F', 'M']" in results[2]["errors"][0]["rule"]
    assert [(e["field"], e["code"]) for e in results[3]["errors"]] == [("birth_date", "wrong_type")]
    assert "YYYY-MM-DD" in results[3]["errors"][0]["rule"]
    assert [(e["field"], e["code"]) for e in results[4]["errors"]] == [("BMI", "unknown_field")]
    assert results[0]["prediction"] and results[5]["prediction"] and results[1]["id"] == records[1]["patient_id"]


def test_one_invalid_record_is_a_422_naming_field_and_rule(service: Service) -> None:
    record = patient_records(service.ws, 1)[0]
    record["visit_date"] = "1940-01-01"  # before birth
    record["glucose"] = "95"  # numbers are JSON numbers

    answer = post(service.base, record)

    assert answer.status_code == 422
    found = {(e["field"], e["code"]) for e in answer.json()["detail"]}
    assert ("glucose", "wrong_type") in found
    assert ("visit_date/birth_date", "impossible_dates") in found


def test_limits_unknown_models_and_malformed_bodies(service: Service) -> None:
    policy = service.ws.config.serving
    too_many = post(service.base, [{}] * (policy.max_request_records + 1))
    assert too_many.status_code == 413 and "max_request_records" in too_many.json()["detail"]
    too_big = requests.post(service.base + PREDICT, data=b"[" + b" " * policy.max_request_bytes + b"]",
                            headers={**auth(), "Content-Type": "application/json"}, timeout=TIMEOUT)
    assert too_big.status_code == 413 and "max_request_bytes" in too_big.json()["detail"]
    assert requests.post(service.base + PREDICT, data=b"{not json", headers={**auth(), "Content-Type": "application/json"},
                         timeout=TIMEOUT).status_code == 422
    assert post(service.base, []).status_code == 422
    assert post(service.base, [1, patient_records(service.ws, 1)[0]]).json()["results"][0]["errors"][0]["code"] == \
        "not_an_object"
    unknown = requests.post(service.base + "/v1/models/other_model/predict", json={}, headers=auth(), timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert requests.get(service.base + "/v1/models/other_model", headers=auth(), timeout=TIMEOUT).status_code == 404


def test_model_description_names_the_champion_and_its_card(service: Service) -> None:
    answer = requests.get(f"{service.base}/v1/models/{MODEL}", headers=auth(), timeout=TIMEOUT)

    assert answer.status_code == 200
    body = answer.json()
    with service.ws.engine.connect() as conn:
        champion = current_champion(conn, MODEL)
    assert champion is not None
    assert (body["version"], body["family"], body["artifact_hash"]) == (1, "ridge", champion["artifact_hash"])
    assert body["holdout_metrics"]["rmse"] > 0 and "r2" in body["holdout_metrics"]
    assert body["promoted_at"].startswith(champion["promoted_at"].date().isoformat())
    assert body["interval"]["half_width"] > 0
    assert body["model_card"]["path"].endswith(".html")
    card = requests.get(service.base + body["model_card"]["url"], headers=auth(), timeout=TIMEOUT)
    assert card.status_code == 200 and "<html" in card.text.lower()


def test_forecasts_are_recorded_as_api_predictions(service: Service) -> None:
    records = patient_records(service.ws, 5)
    records[2]["bmi"] = 5.0  # refused: not recorded

    answer = post(service.base, records, request_id="crm-batch-0001")
    assert answer.json()["request_id"] == "crm-batch-0001"

    rows = wait_until(lambda: len(found := fetch(service.ws, "SELECT * FROM pipeline.predictions WHERE run_id = :r "
                                                 "ORDER BY source_id", r="crm-batch-0001")) == 4 and found,
                      "the forecasts to be recorded")
    assert {(r["source"], r["version"], r["model"]) for r in rows} == {("api", 1, MODEL)}
    assert sorted(r["source_id"] for r in rows) == sorted(str(records[i]["patient_id"]) for i in (0, 1, 3, 4))
    by_id = {r["id"]: r for r in answer.json()["results"]}
    for row in rows:
        served = by_id[int(row["source_id"])]
        assert row["prediction"] == pytest.approx(served["prediction"])
        assert (row["lower"], row["upper"]) == pytest.approx((served["interval"]["lower"], served["interval"]["upper"]))
        assert len(row["input_hash"]) == 64


def test_concurrent_records_each_get_their_own_forecast_recorded_once(service: Service) -> None:
    """Single records sent at once by four clients, most scored on the event loop with no frame, a few (a category
    padded with a no-break space, which only pandas reads) on a worker thread: each answer is its own record's
    forecast, as the same records sent as one list (all through pandas) give it, and the log holds one row per
    answered record, with the list's input hash."""
    records = patient_records(service.ws, 24)
    for record in records[::5]:
        record["sex"] = "\u00a0" + record["sex"]
    listed = post(service.base, records, request_id="concurrent-list")
    assert listed.status_code == 200, listed.text
    expected = listed.json()["results"]

    def one(i: int) -> requests.Response:
        return post(service.base, records[i], request_id=f"concurrent-{i}")

    with ThreadPoolExecutor(4) as clients:
        answers = list(clients.map(one, range(len(records))))

    assert [a.status_code for a in answers] == [r["status"] for r in expected]
    answered = [i for i, a in enumerate(answers) if a.status_code == 200]
    assert len(answered) >= len(records) - len(records[::5])
    for i in answered:
        body = answers[i].json()
        assert (body["request_id"], body["id"]) == (f"concurrent-{i}", records[i]["patient_id"])
        assert body["prediction"] == pytest.approx(expected[i]["prediction"], rel=1e-12)
        assert body["interval"] == pytest.approx(expected[i]["interval"], rel=1e-12)
    logged = wait_until(lambda: len(found := fetch(
        service.ws, "SELECT run_id, source_id, prediction, input_hash FROM pipeline.predictions "
        "WHERE run_id LIKE 'concurrent-%'")) == 2 * len(answered) and found, "the forecasts to be recorded")
    by_request = {(r["run_id"], r["source_id"]): r for r in logged}
    assert len(by_request) == len(logged)  # nothing recorded twice
    for i in answered:
        single, in_list = by_request[f"concurrent-{i}", str(records[i]["patient_id"])], \
            by_request["concurrent-list", str(records[i]["patient_id"])]
        assert single["prediction"] == pytest.approx(answers[i].json()["prediction"], rel=1e-12)
        assert single["input_hash"] == in_list["input_hash"]


def test_a_record_without_an_id_is_logged_but_not_offered_to_the_crm(service: Service) -> None:
    [record] = patient_records(service.ws, 1)
    del record["patient_id"]

    assert post(service.base, record, request_id="no-id").status_code == 200

    [row] = wait_until(lambda: fetch(service.ws, "SELECT * FROM pipeline.predictions WHERE run_id = 'no-id'"),
                       "the forecast to be recorded")
    assert row["source_id"] == ""
    assert fetch(service.ws, "SELECT * FROM pipeline.latest_forecasts WHERE source_id = ''") == []


def test_patient_values_never_reach_the_log(service: Service) -> None:
    records = patient_records(service.ws, 2)
    records[0].update(patient_id=98765431, bmi=33.3317, glucose=123.4567, birth_date="1957-03-29")
    records[1].update(patient_id=98765432, bmi=88.8812, sex="Q")  # refused: its values are in its errors

    answer = post(service.base, records, request_id="privacy-check")
    assert [r["status"] for r in answer.json()["results"]] == [200, 422]
    wait_until(lambda: fetch(service.ws, "SELECT 1 FROM pipeline.predictions WHERE run_id = 'privacy-check'"),
               "the forecast to be recorded")

    text = service.log.text
    assert "privacy-check" in text  # the request is logged ...
    for value in ("98765431", "98765432", "33.3317", "123.4567", "88.8812", "1957-03-29"):
        assert value not in text  # ... its values are not


# --- starting, readiness, hot swap ---------------------------------------------------------------


def test_service_refuses_to_start_without_tokens(ws: Workspace, tmp_path: Path, database_url: str,
                                                 captured_log: LogCapture) -> None:
    with pytest.raises(rest.ServingError, match=rest.ENV_API_TOKEN_FILE):
        create_app(ws, [])
    comments_only = tmp_path / "tokens"
    comments_only.write_text("# rotated 2026-01\n\n   \n")
    assert rest.tokens_from_environment({rest.ENV_API_TOKEN_FILE: str(comments_only)}) == ()
    comments_only.write_text(f"# CRM\n  {TOKEN}  \n\n{OTHER_TOKEN}\n")
    assert rest.read_tokens(comments_only) == (TOKEN, OTHER_TOKEN)
    with pytest.raises(rest.ServingError, match="cannot read"):
        rest.read_tokens(tmp_path / "missing")

    create_app(ws, [], insecure_local=True)  # builds, and says loudly that it is unprotected
    assert "INSECURE" in captured_log.text

    env = {k: v for k, v in command_env(ws.settings).items() if k != rest.ENV_API_TOKEN_FILE}
    # A real subprocess: a mistaken environment must not leave a server running in this one.
    refused = subprocess.run([sys.executable, "-m", "pipeline", "serve", "--port", str(free_port())], cwd=PROJECT_ROOT,
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert refused.returncode == 1
    assert "no API tokens configured" in refused.stderr and rest.ENV_API_TOKEN_FILE in refused.stderr


def test_ready_only_once_a_champion_is_loaded(ws: Workspace) -> None:
    quick = fast_reload(ws)
    with running(create_app(quick, [TOKEN])) as base:
        assert requests.get(base + "/healthz", timeout=TIMEOUT).status_code == 200
        assert requests.get(base + "/readyz", timeout=TIMEOUT).status_code == 503
        demo.seed_demo(ws.engine)
        assert post(base, patient_records(ws, 1)[0]).status_code == 503

        promote_demo_champion(quick)

        wait_until(lambda: requests.get(base + "/readyz", timeout=TIMEOUT).status_code == 200, "readiness")
        assert post(base, patient_records(ws, 1)[0]).json()["model_version"] == 1


def test_hot_swap_under_concurrent_requests_fails_no_request(ws: Workspace) -> None:
    quick = fast_reload(ws)
    promote_demo_champion(quick)
    second = train_second_version(quick)
    records = patient_records(ws, 3)
    seen: list[list[tuple[int, int | None]]] = [[] for _ in range(4)]
    stop = threading.Event()

    with running(create_app(quick, [TOKEN])) as base:
        def hammer(mine: list[tuple[int, int | None]]) -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    answer = session.post(base + PREDICT, json=records, headers=auth(), timeout=TIMEOUT)
                    versions = {r.get("model_version") for r in answer.json().get("results", [{}])}
                    mine.append((answer.status_code, versions.pop() if len(versions) == 1 else None))

        threads = [threading.Thread(target=hammer, args=(mine,)) for mine in seen]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: all(len(mine) >= 2 for mine in seen), "requests before the swap")
            promote(ws.engine, ws.model, "second", second, 1, "test", "hot swap under load")
            wait_until(lambda: all(mine and mine[-1][1] == second for mine in seen), "every client to get version 2")
        finally:
            stop.set()
            for thread in threads:
                thread.join(DEADLINE)
        assert served_version(base) == second

    answers = [a for mine in seen for a in mine]
    assert {status for status, _ in answers} == {200}
    assert {version for _, version in answers} == {1, second}  # never a request with mixed versions (None)
    for mine in seen:  # once a client got the new version, it never got the old one again
        versions = [v for _, v in mine]
        assert versions == sorted(versions)


def test_a_tampered_new_champion_is_not_loaded_and_the_old_one_stays(ws: Workspace,
                                                                     captured_log: LogCapture) -> None:
    quick = fast_reload(ws)
    promote_demo_champion(quick)
    second = train_second_version(quick)
    with ws.engine.connect() as conn:
        artifact = get_model(conn, second, ws.model)["artifact_hash"]
    path = ws.settings.artifact_dir / "models" / f"{artifact}.joblib"
    # altered by someone holding its key (resealed): only the hash check can tell (a raw byte edit is refused by
    # the seal itself, tests/unit/test_crypto.py)
    rewrite_stored(ws, path, stored_bytes(ws, path)[:-16] + b"tampered-bytes!!")

    with running(create_app(quick, [TOKEN])) as base:
        record = patient_records(ws, 1)[0]
        assert post(base, record).json()["model_version"] == 1
        promote(ws.engine, ws.model, "second", second, 1, "test", "a version whose file was then altered")

        described = wait_until(lambda: (d := requests.get(f"{base}/v1/models/{MODEL}", headers=auth(),
                                                          timeout=TIMEOUT).json())["champion_not_loaded"] and d,
                               "the poller to refuse the altered artifact")
        assert described["version"] == 1
        assert described["champion_not_loaded"]["version"] == second
        assert "hashes to" in described["champion_not_loaded"]["reason"]
        assert post(base, record).json()["model_version"] == 1
        assert requests.get(base + "/readyz", timeout=TIMEOUT).json()["version"] == 1
    assert f"champion version {second} of {MODEL} not loaded" in captured_log.text


def test_cli_serve_answers_records_and_flushes_on_shutdown(service: Service, tmp_path: Path) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"# the CRM\n{TOKEN}\n")
    port = free_port()
    env = {**command_env(service.ws.settings), rest.ENV_API_TOKEN_FILE: str(tokens)}
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)], cwd=PROJECT_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(base + "/readyz", timeout=5).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy loading the champion
            assert server.poll() is None, server.communicate()[0]
            return False

    try:
        try:
            wait_until(ready, "python -m pipeline serve to be ready")
        except AssertionError as waited:
            server.send_signal(signal.SIGINT)
            raise AssertionError(f"serve never got ready; its output:\n{server.communicate(timeout=DEADLINE)[0]}") from waited
        record = {**patient_records(service.ws, 1)[0], "patient_id": 55501234, "bmi": 41.2345}
        answer = post(base, [record], request_id="cli-serve-check")
        assert answer.json()["results"][0]["status"] == 200
    finally:
        server.send_signal(signal.SIGINT)
        log_text = server.communicate(timeout=DEADLINE)[0]
    assert server.returncode == 0, log_text
    rows = fetch(service.ws, "SELECT source, source_id FROM pipeline.predictions WHERE run_id = 'cli-serve-check'")
    assert rows == [{"source": "api", "source_id": "55501234"}]
    assert "cli-serve-check" in log_text and "prediction log closed" in log_text
    assert "55501234" not in log_text and "41.2345" not in log_text


def test_a_service_restarted_on_a_corrupted_champion_answers_503_and_names_the_hash_mismatch(
        ws: Workspace, tmp_path: Path) -> None:
    promote_demo_champion(quick_workspace(ws))
    with ws.engine.connect() as conn:
        registered = get_model(conn, 1, ws.model)["artifact_hash"]
    path = artifacts.stored_path(ws.settings.artifact_dir, "models", registered)
    tampered = stored_bytes(ws, path)[:-16] + b"tampered-bytes!!"
    rewrite_stored(ws, path, tampered)  # resealed under its own key: only the hash check can tell
    actual = artifacts.sha256_bytes(tampered)
    (tmp_path / "tokens").write_text(TOKEN)
    port, log_path = free_port(), tmp_path / "serve.log"
    env = {**command_env(ws.settings), rest.ENV_API_TOKEN_FILE: str(tmp_path / "tokens")}
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)],
                                  cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return requests.get(base + "/healthz", timeout=5).status_code == 200
        except requests.ConnectionError:
            assert server.poll() is None, log_path.read_text()[-3000:]
            return False

    try:
        wait_until(up, "python -m pipeline serve to answer")
        mismatch = f"artifact {path} hashes to {actual}, but the registry says {registered}"
        wait_until(lambda: mismatch in log_path.read_text(), "the service's log to name the mismatch")
        ready = requests.get(base + "/readyz", timeout=TIMEOUT)
        described = requests.get(f"{base}/v1/models/{MODEL}", headers=auth(), timeout=TIMEOUT)
        forecast = post(base, patient_records(ws, 1)[0])
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
    for answer, key in ((ready, "reason"), (described, "detail"), (forecast, "detail")):
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert answer.json()[key] == f"no champion loaded: version 1 was refused ({mismatch}: it was modified " \
                                     "or corrupted; restore it or retrain)"
    assert f"champion version 1 of {MODEL} not loaded ({mismatch}" in log_path.read_text()
