"""The REST API at its boundary, probed as a CRM integrator and an attacker would: a real `python -m pipeline
serve` process with a real token, over HTTP, on real PostgreSQL. Hostile input gets a 4xx naming its cause,
never a 500; an answer is always strict JSON; no token reaches the log; the OpenAPI document is typed and valid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.serving.app import create_app
from pipeline.store import db
from pipeline.workspace import Workspace
from tests.conftest import create_scratch_database
from tests.integration.stage_runs import command_env, promote_demo_champion, quick_workspace, wait_until
from tests.integration.test_serving import MODEL, PREDICT, TIMEOUT, TOKEN, auth, free_port, patient_records, running

SECRETS = ("query-secret-81f2", "header-secret-5c1e", "cookie-secret-0d9a", "body-secret-77b3")


@dataclasses.dataclass
class Served:
    ws: Workspace
    base: str
    log_file: Path


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are refused."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def served(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Version 1 champion, served by `python -m pipeline serve` with a token file; its output in a log file."""
    url = create_scratch_database(server_url)
    folder = tmp_path_factory.mktemp("served")
    settings = Settings(database_url=url, config_path=PROJECT_ROOT / "pipeline.yaml",
                        artifact_dir=folder / "artifacts", pgdata_dir=PROJECT_ROOT / ".pgdata")
    ws = quick_workspace(Workspace.open(settings))
    promote_demo_champion(ws)
    (folder / "tokens").write_text(f"{TOKEN}\n")
    port, log_file = free_port(), folder / "serve.log"
    env = command_env(settings, PIPELINE_API_TOKEN_FILE=str(folder / "tokens"))
    with log_file.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)],
                                   cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _ready(base), "the service to be ready")
        assert process.poll() is None, log_file.read_text()[-3000:]
        yield Served(ws, base, log_file)
    finally:
        process.terminate()
        process.wait(60)
        ws.engine.dispose()
        db.drop_database(url)


def _ready(base: str) -> bool:
    try:
        return requests.get(base + "/readyz", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def send(base: str, body: bytes, content_type: str | None = "application/json", **extra: Any) -> requests.Response:
    headers = {**auth(), **({"Content-Type": content_type} if content_type else {}), **extra.pop("headers", {})}
    return requests.post(base + PREDICT, data=body, headers=headers, timeout=TIMEOUT, **extra)


def recorded(ws: Workspace, request_id: str) -> int:
    with ws.engine.connect() as conn:
        return int(conn.scalar(sa.text("SELECT count(*) FROM pipeline.predictions WHERE run_id = :r"),
                               {"r": request_id}))


def record_text(record: dict[str, Any], bmi: str) -> bytes:
    """The record as JSON text with `bmi` written verbatim (NaN, Infinity, 1e400: no encoder writes those)."""
    return json.dumps({**record, "bmi": "BMI"}).replace('"BMI"', bmi).encode()


def test_deep_nesting_is_refused_before_parsing(served: Served) -> None:
    for body in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 100000,
                 b'[{"bmi": [[1]]}]'):
        answer = send(served.base, body)
        assert answer.status_code == 422, (body[:20], answer.text[:200])
        assert "nests" in strict_json(answer.text)["detail"]
    brackets_in_text = send(served.base, json.dumps([{"sex": "[[[[[[{{{{"}]).encode())
    assert brackets_in_text.status_code == 200  # brackets inside a string are text, not nesting


@pytest.mark.parametrize("written", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_numbers_json_cannot_carry_are_refused_as_not_finite(served: Served, written: str) -> None:
    [record] = patient_records(served.ws, 1)
    alone = send(served.base, record_text(record, written), headers={"X-Request-ID": f"alone-{written}"})
    assert alone.status_code == 422
    [error] = strict_json(alone.text)["detail"]
    assert (error["field"], error["code"], error["value"]) == ("bmi", "not_finite", written)
    assert recorded(served.ws, f"alone-{written}") == 0


def test_one_bad_record_never_changes_the_others(served: Served) -> None:
    first, second = patient_records(served.ws, 2)
    by_itself = strict_json(send(served.base, json.dumps([first]).encode()).text)["results"][0]
    body = b"[" + json.dumps(first).encode() + b"," + record_text(second, "NaN") + b"]"
    answer = send(served.base, body, headers={"X-Request-ID": "mixed-1"})
    assert answer.status_code == 200
    results = strict_json(answer.text)["results"]
    assert results[0]["status"] == 200 and results[0]["prediction"] == by_itself["prediction"]
    assert results[1]["status"] == 422 and results[1]["errors"][0]["code"] == "not_finite"
    wait_until(lambda: recorded(served.ws, "mixed-1") == 1, "the answered forecast to be recorded")


def test_only_json_bodies_are_read(served: Served) -> None:
    [record] = patient_records(served.ws, 1)
    body = json.dumps(record).encode()
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                         "application/jsonx"):
        answer = send(served.base, body, content_type, headers={"X-Request-ID": "typed-415"})
        assert answer.status_code == 415, content_type
        assert "application/json" in strict_json(answer.text)["detail"]
    assert send(served.base, body, "application/json; charset=utf-8").status_code == 200
    assert recorded(served.ws, "typed-415") == 0  # a refused request records nothing


def test_overflowing_integers_and_odd_values_are_4xx(served: Served) -> None:
    [record] = patient_records(served.ws, 1)
    probes = {
        "a 5000-digit id": json.dumps({**record, "patient_id": "ID"}).replace('"ID"', "9" * 5000).encode(),
        "an id past int64": json.dumps({**record, "patient_id": 10**30}).encode(),
        "an array for a number": json.dumps({**record, "glucose": [1, 2]}).encode(),
        "an object for a date": json.dumps({**record, "birth_date": {"y": 1961}}).encode(),
        "a boolean for a number": json.dumps({**record, "bmi": True}).encode(),
        "a very long string": json.dumps({**record, "sex": "F" * 100_000}).encode(),
        "invalid UTF-8": b'{"sex": "\xff\xfe"}',
        "a lone surrogate": b'{"sex": "\\ud800"}',
        "a bare number": b"42",
        "null": b"null",
    }
    for what, body in probes.items():
        answer = send(served.base, body)
        assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.text[:300])
        strict_json(answer.text)
        assert len(answer.content) < 4000, what  # a refused value is echoed cut short


def test_an_error_answer_is_no_bigger_than_its_request(served: Served) -> None:
    [record] = patient_records(served.ws, 1)
    noisy = {**record, **{f"unknown_field_{i:02d}": "x" * 40 for i in range(50)}}
    body = json.dumps([noisy] * 280).encode()
    assert len(body) < 1_000_000
    answer = send(served.base, body)
    assert answer.status_code == 200
    results = strict_json(answer.text)["results"]
    assert all(r["status"] == 422 for r in results) and len(results) == 280
    assert max(len(r["errors"]) for r in results) == 21  # 20 listed, then one saying how many more
    assert len(answer.content) < len(body)


def test_tokens_are_read_from_the_authorization_header_only_and_never_logged(served: Served) -> None:
    [record] = patient_records(served.ws, 1)
    body = json.dumps({**record, "note": SECRETS[3]}).encode()
    misplaced = requests.post(f"{served.base}{PREDICT}?token={SECRETS[0]}&access_token={SECRETS[0]}", data=body,
                              headers={"Content-Type": "application/json", "X-Api-Key": SECRETS[1]},
                              cookies={"token": SECRETS[2]}, timeout=TIMEOUT)
    assert misplaced.status_code == 401
    in_header = send(served.base + "", body, headers={"Authorization": f"Bearer {SECRETS[0]}"})
    assert in_header.status_code == 401
    with_query = requests.post(f"{served.base}{PREDICT}?token={SECRETS[0]}", data=body, timeout=TIMEOUT,
                               headers={**auth(), "Content-Type": "application/json"})
    assert with_query.status_code == 422  # authenticated by its header; the body's unknown field is refused
    wait_until(lambda: f"POST {PREDICT} 422" in served.log_file.read_text(), "the access log line")
    text = served.log_file.read_text()
    assert f"POST {PREDICT} 401" in text
    for secret in (*SECRETS, TOKEN):
        assert secret not in text, f"{secret} reached the log"


def test_the_probe_table(served: Served) -> None:
    """Issue 29's probes in one table, request -> status (printed with -s: the closing note's evidence), each
    status as the issue asks; the query-string token is then searched for in the service's log file."""
    record, other = patient_records(served.ws, 2)
    body = json.dumps(record).encode()
    in_list = lambda bmi: b"[" + body + b"," + record_text(other, bmi) + b"]"  # noqa: E731
    probes: list[tuple[str, Any, int]] = [
        ("nested JSON: [ x 5,000 (10 KB)", lambda: send(served.base, b"[" * 5000 + b"]" * 5000), 422),
        ("nested JSON: {\"a\": x 5,000", lambda: send(served.base, b'{"a":' * 5000 + b"1" + b"}" * 5000), 422),
        *[(f"bmi {v} alone", lambda v=v: send(served.base, record_text(record, v)), 422)
          for v in ("NaN", "Infinity", "-Infinity", "1e400")],
        *[(f"bmi {v} beside a valid record in a list (the list's status)", lambda v=v: send(served.base, in_list(v)),
           200) for v in ("NaN", "Infinity", "-Infinity", "1e400")],
        ("Content-Type: application/json", lambda: send(served.base, body), 200),
        ("Content-Type: application/json; charset=utf-8",
         lambda: send(served.base, body, "application/json; charset=utf-8"), 200),
        ("no Content-Type", lambda: send(served.base, body, None), 415),
        *[(f"Content-Type: {t}", lambda t=t: send(served.base, body, t), 415)
          for t in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")],
        ("token in the query string only", lambda: requests.post(
            f"{served.base}{PREDICT}?token={SECRETS[0]}", data=body, headers={"Content-Type": "application/json"},
            timeout=TIMEOUT), 401),
        ("token in the query string and the header", lambda: requests.post(
            f"{served.base}{PREDICT}?token={SECRETS[0]}", data=body, timeout=TIMEOUT,
            headers={**auth(), "Content-Type": "application/json"}), 200),
    ]
    noisy = json.dumps([{**record, **{f"unknown_field_{i:02d}": "x" * 40 for i in range(50)}}] * 280).encode()
    lines, failed = [f"{'request':<72} {'status':<24} body bytes", "-" * 108], []
    for what, call, expected in probes:
        answer = call()
        strict_json(answer.text)
        statuses = [r["status"] for r in answer.json().get("results", [])] if answer.status_code == 200 else []
        shown = f"{answer.status_code}" + (f" (records: {', '.join(map(str, statuses))})" if len(statuses) > 1 else "")
        lines.append(f"{what:<72} {shown:<24} {len(answer.content):,}")
        failed += [] if answer.status_code == expected else [f"{what}: {answer.status_code}, not {expected}"]
        failed += [f"{what}: records {statuses}, not [200, 422]"] if "list" in what and statuses != [200, 422] else []
    oversized = send(served.base, noisy)
    lines.append(f"{'error response: 280 records x 50 unknown fields (' + format(len(noisy), ',') + ' bytes)':<72} "
                 f"{oversized.status_code:<24} {len(oversized.content):,}")
    wait_until(lambda: f"POST {PREDICT} 200" in served.log_file.read_text(), "the access log lines")
    log_text = served.log_file.read_text()
    found = SECRETS[0] in log_text
    lines.append(f"{'the query-string token searched for in the log file (' + served.log_file.name + ')':<72} "
                 f"{'FOUND' if found else 'absent'}")
    print("\n" + "\n".join(lines))
    assert not failed, failed
    assert oversized.status_code == 200 and len(oversized.content) < len(noisy)
    assert not found, "the query-string token reached the log"


def test_cors_is_closed_unless_origins_are_configured(served: Served) -> None:
    preflight = {"Origin": "https://crm.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    closed = requests.options(served.base + PREDICT, headers=preflight, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in closed.headers
    answered = requests.get(served.base + "/healthz", headers={"Origin": "https://crm.example.org"}, timeout=TIMEOUT)
    assert answered.status_code == 200 and "access-control-allow-origin" not in answered.headers

    policy = dataclasses.replace(served.ws.config.serving, cors_origins=("https://crm.example.org",))
    ws = dataclasses.replace(served.ws, config=dataclasses.replace(served.ws.config, serving=policy))
    with running(create_app(ws, [TOKEN])) as base:
        allowed = requests.options(base + PREDICT, headers=preflight, timeout=TIMEOUT)
        assert allowed.headers.get("access-control-allow-origin") == "https://crm.example.org"
        other = requests.options(base + PREDICT, headers={**preflight, "Origin": "https://evil.example"},
                                 timeout=TIMEOUT)
        assert "access-control-allow-origin" not in other.headers


def test_the_openapi_document_is_typed_and_valid_openapi_3_1(served: Served) -> None:
    from openapi_spec_validator import validate

    document = requests.get(served.base + "/openapi.json", timeout=TIMEOUT).json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    schemas = document["components"]["schemas"]
    record = schemas["DiabetesProgressionRecord"]
    assert record["additionalProperties"] is False
    assert set(record["required"]) == {"birth_date", "visit_date", "sex"}
    bmi = next(s for s in record["properties"]["bmi"]["anyOf"] if s.get("type") == "number")
    assert (bmi["minimum"], bmi["maximum"]) == (12, 70)
    assert record["properties"]["birth_date"]["format"] == "date"
    assert "F" in record["properties"]["sex"]["pattern"] and "M" in record["properties"]["sex"]["pattern"]
    predict = document["paths"][PREDICT.replace(MODEL, "{model}")]["post"]
    assert set(predict["responses"]) == {"200", "401", "404", "413", "415", "422", "503"}
    assert {"ErrorItem", "Forecast", "Forecasts", "Refused", "Problem", "ModelSummary"} <= set(schemas)
    assert "HTTPValidationError" not in json.dumps(document)


@pytest.mark.timeout(1500)
def test_schemathesis_finds_no_failure(served: Served, tmp_path: Path) -> None:
    """Schemathesis, bounded and seeded, with every check, against the live service and its own document."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run", served.base + "/openapi.json",
         "--checks", "all", "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", "40", "--seed", "29",
         "--workers", "1", "--no-color", "--generation-database", "none", "--request-timeout", "60",
         "--max-failures", "20"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, check=False)
    summary = result.stdout[-6000:]
    print(summary)  # shown with -s: the run's own summary
    assert result.returncode == 0, summary
    assert "No issues found" in summary or "passed" in summary.lower(), summary


# Records can break rules a schema cannot state (a visit after the birth, an adult's age, no future date):
# a record of one that satisfies the schema may still be refused, with 422 and its reasons.
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "404", "422"]
"""


# --- the database lost while serving -------------------------------------------------------------

PENDING = 20  # serving.max_pending_forecasts of the outage test: forecasts answered while the database is away


@pytest.fixture
def outage_service(tmp_path: Path) -> Iterator[tuple[Path, Workspace, str]]:
    """A champion on a PostgreSQL server of this test's own, served by `python -m pipeline serve` holding at most
    PENDING unwritten forecasts; the server may be stopped and started again. Everything stopped afterwards."""
    pgdata = tmp_path / "pgdata"
    url = db.start_embedded_postgres(pgdata)
    settings = Settings(database_url=url, config_path=PROJECT_ROOT / "pipeline.yaml",
                        artifact_dir=tmp_path / "artifacts", pgdata_dir=pgdata)
    ws = quick_workspace(Workspace.open(settings))
    process = None
    try:
        promote_demo_champion(ws)
        config = tmp_path / "pipeline.yaml"
        config.write_text((PROJECT_ROOT / "pipeline.yaml").read_text()
                          .replace("expectations/patient_records.json", str(PROJECT_ROOT / "expectations" /
                                                                            "patient_records.json"))
                          .replace("max_pending_forecasts: 100000", f"max_pending_forecasts: {PENDING}")
                          .replace("reload_seconds: 2 ", "reload_seconds: 0.5 "))
        (tmp_path / "tokens").write_text(TOKEN)
        port = free_port()
        env = command_env(settings, config=config, PIPELINE_API_TOKEN_FILE=str(tmp_path / "tokens"))
        with (tmp_path / "serve.log").open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port)],
                                       cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: process.poll() is not None or _ready(base), "the service to be ready")
        assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        yield pgdata, ws, base
    finally:
        if process is not None:
            process.terminate()
            process.wait(60)
        ws.engine.dispose()
        db.stop_embedded_postgres(pgdata)


def test_a_lost_database_turns_forecasts_into_503_then_recovers_without_a_restart(
        outage_service: tuple[Path, Workspace, str]) -> None:
    pgdata, ws, base = outage_service
    [record] = patient_records(ws, 1)
    body = json.dumps(record).encode()
    answers: dict[str, int] = {}

    def call(n: int) -> requests.Response:
        answer = send(base, body, headers={"X-Request-ID": f"outage-{n}"})
        answers[f"outage-{n}"] = answer.status_code
        return answer

    assert call(0).status_code == 200
    ws.engine.dispose()
    assert db.stop_embedded_postgres(pgdata) is not None
    calls = iter(range(1, 10_000))
    [refused] = wait_until(lambda: [a for a in [call(next(calls))] if a.status_code == 503],
                           "a forecast refused while the database is away")
    assert refused.headers["Retry-After"] and "forecasts cannot be recorded now" in strict_json(refused.text)["detail"]
    answered_away = [rid for rid, status in answers.items() if status == 200 and rid != "outage-0"]
    assert 1 <= len(answered_away) <= PENDING  # kept in memory, at most the configured number
    unready = requests.get(base + "/readyz", timeout=TIMEOUT)
    assert unready.status_code == 503 and "database" in unready.json()["reason"]
    described = requests.get(f"{base}/v1/models/{MODEL}", headers=auth(), timeout=TIMEOUT)
    assert described.status_code == 200 and described.json()["version"] == 1  # known from memory
    card = requests.get(f"{base}/v1/models/{MODEL}/card", headers=auth(), timeout=TIMEOUT)
    assert card.status_code in (200, 503), card.text  # the store's file, or said unreadable: never a 500

    restart = ("import sys; from pathlib import Path; from pipeline.store import db; "
               "print(db.start_embedded_postgres(Path(sys.argv[1])))")
    subprocess.run([sys.executable, "-c", restart, str(pgdata)], cwd=PROJECT_ROOT, check=True, capture_output=True,
                   timeout=120)  # a fresh process: this one remembers the server as stopped
    wait_until(lambda: _ready(base), "the service to be ready again")
    assert call(next(calls)).status_code == 200
    rows = _counts(ws)
    expected = {rid: 1 for rid, status in answers.items() if status == 200}
    wait_until(lambda: _counts(ws) == expected, "every answered forecast recorded once, and no other")
    assert all(status in (200, 503) for status in answers.values())
    assert set(rows) <= set(expected)


def _counts(ws: Workspace) -> dict[str, int]:
    with ws.engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT run_id, count(*) FROM pipeline.predictions "
                                         "WHERE run_id LIKE 'outage-%' GROUP BY run_id")).all())


def test_a_typed_client_generated_from_the_document_calls_the_service(served: Served, tmp_path: Path) -> None:
    """openapi-python-client, as a CRM team would run it on /openapi.json: its typed models and calls work."""
    (tmp_path / "openapi.json").write_text(requests.get(served.base + "/openapi.json", timeout=TIMEOUT).text)
    bin_dir = Path(sys.executable).parent
    generated = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", "openapi.json",
                                "--output-path", "client", "--meta", "none"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300, check=False,
                               env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert generated.returncode == 0, generated.stdout + generated.stderr
    [record] = patient_records(served.ws, 1)
    script = f"""
import json, sys
sys.path.insert(0, {str(tmp_path)!r})
from client import AuthenticatedClient
from client.api.default import describe_model, predict
from client.models import DiabetesProgressionRecord, Forecast, ModelSummary
api = AuthenticatedClient(base_url={served.base!r}, token={TOKEN!r})
forecast = predict.sync(model={MODEL!r}, client=api, body=DiabetesProgressionRecord.from_dict(json.loads(sys.argv[1])))
assert isinstance(forecast, Forecast), forecast
summary = describe_model.sync(model={MODEL!r}, client=api)
assert isinstance(summary, ModelSummary), summary
print(json.dumps({{"prediction": forecast.prediction, "version": summary.version}}))
"""
    called = subprocess.run([sys.executable, "-c", script, json.dumps(record)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert called.returncode == 0, called.stderr[-3000:]
    answer = json.loads(called.stdout)
    direct = strict_json(send(served.base, json.dumps(record).encode()).text)
    assert answer == {"prediction": direct["prediction"], "version": 1}


def _champion_predictions(ws: Workspace, n: int) -> list[float]:
    """The champion's own joblib Pipeline on the first `n` demo patients, as stored (typed)."""
    import pandas as pd

    from pipeline.model.features import model_inputs
    from pipeline.registry.records import current_champion

    with ws.engine.connect() as conn:
        champion = current_champion(conn, MODEL)
        assert champion is not None
        frame = pd.read_sql(sa.text(f"SELECT * FROM public.patient_records ORDER BY patient_id LIMIT {n}"), conn)
    model = ws.load_model(champion["artifact_hash"])
    return [float(p) for p in model.predict(model_inputs(frame, ws.config.dataset))]


def test_the_champion_scores_through_onnx_checked_on_its_holdout(served: Served) -> None:
    summary = requests.get(f"{served.base}/v1/models/{MODEL}", headers=auth(), timeout=TIMEOUT).json()
    scoring = summary["scoring"]
    assert (scoring["scoring"], scoring["reason"]) == ("onnx", None)
    assert scoring["parity_rows"] > 50 and scoring["max_relative_difference"] <= 1e-6
    records = patient_records(served.ws, 8)
    answered = strict_json(send(served.base, json.dumps(records).encode()).text)["results"]
    expected = _champion_predictions(served.ws, 8)
    for result, pipeline in zip(answered, expected, strict=True):
        assert abs(result["prediction"] - pipeline) <= 1e-6 * abs(pipeline) + 1e-9


def test_a_model_that_cannot_be_checked_scores_through_its_pipeline_and_says_why(
        served: Served, tmp_path: Path) -> None:
    """The holdout ONNX is checked on is gone (snapshots not on this machine, nor the compiled cache): the
    Pipeline scores, and the description says why."""
    import shutil

    artifacts = tmp_path / "artifacts"
    shutil.copytree(served.ws.settings.artifact_dir, artifacts, ignore=shutil.ignore_patterns("snapshots", "compiled"))
    ws = dataclasses.replace(served.ws, settings=dataclasses.replace(served.ws.settings, artifact_dir=artifacts))
    with running(create_app(ws, [TOKEN])) as base:
        scoring = requests.get(f"{base}/v1/models/{MODEL}", headers=auth(), timeout=TIMEOUT).json()["scoring"]
        assert scoring["scoring"] == "pipeline" and "holdout could not be read" in scoring["reason"]
        records = patient_records(served.ws, 3)
        answered = strict_json(send(base, json.dumps(records).encode()).text)["results"]
    assert [r["prediction"] for r in answered] == _champion_predictions(served.ws, 3)
