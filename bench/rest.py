"""The REST API's latency and throughput beside a bare FastAPI endpoint and a hand-written peer, in one run.

A scratch database gets the demo study and a ridge champion. Three apps run in real uvicorn servers on free
ports: ours (`pipeline.serving.app.create_app`), the peer a user would write by hand from the libraries'
tutorials (FastAPI, `joblib.load` of the same champion, `predict` on a one-row DataFrame: no contract, no
intervals, no log), and a bare endpoint that returns a constant. Client threads send the same bodies (1 and
100 records) to each over HTTP, 1 client and CLIENTS at once. `python -m bench.rest` runs it alone.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import requests
from fastapi import FastAPI, Request

from pipeline import stages
from pipeline.contract.settings import PROJECT_ROOT, Settings
from pipeline.data import demo
from pipeline.registry.runs import Run
from pipeline.serving.app import create_app
from pipeline.store import artifacts, db
from pipeline.workspace import Workspace

CLIENTS = 4
TOKEN = "bench-token"
# Requests per shape: enough for a stable median of the API (tens of ms each); the bare endpoint is cheap.
REQUESTS = {"api": {1: 120, 100: 40}, "peer": {1: 120, 100: 40}, "bare": {1: 400, 100: 200}}
TARGET_RATIO = 2.0  # single-record p50: the API within this factor of the bare endpoint
TARGET_PEER_P50 = 0.5  # single-record p50: the API at most this share of the hand-written peer's, 1 and 4 clients
TARGET_PEER_THROUGHPUT = 2.0  # single-record requests per second at CLIENTS clients: at least this many times the peer's
SOAK_REQUESTS = 10_000  # single-record requests after which the service's memory is compared with before them
TARGET_SOAK_GROWTH_MB = 20.0  # resident memory the service may gain over SOAK_REQUESTS (flat, give or take)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _served(app: Any) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def bare_app() -> Any:
    """The floor: FastAPI reading the same JSON body and returning a constant."""
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, float]:
        await request.json()
        return {"prediction": 150.0}

    return app


def handwritten_app(artifact: Path, features: list[str]) -> Any:
    """The peer: what a user writes by hand from FastAPI's and scikit-learn's tutorials to serve the champion."""
    import joblib
    import pandas as pd

    model = joblib.load(artifact)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        body = await request.json()
        frame = pd.DataFrame(body if isinstance(body, list) else [body])
        for column in ("birth_date", "visit_date"):
            frame[column] = pd.to_datetime(frame[column]).dt.date
        predictions = model.predict(frame[features])
        return {"prediction": float(predictions[0])} if isinstance(body, dict) else \
            {"predictions": [float(p) for p in predictions]}

    return app


def _champion(server_url: str, artifacts: Path) -> tuple[str, Workspace]:
    """A scratch database with the demo study and a ridge champion (three folds: quick)."""
    url = db.with_database(server_url, f"bench_rest_{int(time.time())}")
    db.ensure_database(url)
    settings = Settings(url, PROJECT_ROOT / "pipeline.yaml", artifacts, Settings.from_env().pgdata_dir)
    ws = Workspace.open(settings)
    training = dataclasses.replace(ws.config.training, families={"ridge": ws.config.training.families["ridge"]},
                                   cv_folds=3)
    ws = dataclasses.replace(ws, config=dataclasses.replace(ws.config, training=training))
    demo.seed_demo(ws.engine)
    run = Run("bench-rest", datetime(2100, 1, 1, tzinfo=UTC), "bench")
    snapshot = stages.ingest_snapshot(ws, run)
    checked = stages.validate_snapshot(ws, run, snapshot["snapshot_hash"])
    candidate = stages.train_candidate(ws, run, checked["clean_snapshot_hash"])
    stages.evaluate_candidate(ws, run, candidate["version"])
    stages.promote_candidate(ws, run, actor="bench")
    return url, ws


def _records(ws: Workspace, n: int) -> list[dict[str, Any]]:
    contract = ws.config.dataset
    fields = [contract.id_column, *contract.feature_names()]
    with ws.engine.connect() as conn:
        import sqlalchemy as sa

        rows = conn.execute(sa.text(f"SELECT {', '.join(fields)} FROM {contract.table} ORDER BY 1 LIMIT :n"),
                            {"n": n}).mappings().all()
    return [{k: v.isoformat() if isinstance(v, date) else v if isinstance(v, str | int) or v is None else float(v)
             for k, v in row.items()} for row in rows]


def _load(url: str, body: bytes, headers: dict[str, str], requests_total: int, clients: int = CLIENTS
          ) -> dict[str, Any]:
    """`requests_total` POSTs from `clients` threads; latency percentiles and requests per second."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    remaining = [requests_total]

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                answer = session.post(url, data=body, headers=headers, timeout=120)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    failures[0] += answer.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(ordered), "failed": failures[0], "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "requests_per_second": len(ordered) / wall}


class PeerMismatch(RuntimeError):
    """The hand-written peer does not serve what our API serves: its times would compare nothing."""


def _same_forecast(endpoints: dict[str, str], body: bytes, headers: dict[str, str]) -> dict[str, float]:
    """Our API's forecast and the peer's for one record: the same champion, so the same number (ours runs its
    compiled graph: equal within 1e-6 relative); PeerMismatch when they differ."""
    ours = requests.post(endpoints["api"], data=body, headers=headers, timeout=120)
    theirs = requests.post(endpoints["peer"], data=body, headers=headers, timeout=120)
    if ours.status_code != 200 or theirs.status_code != 200:
        raise PeerMismatch(f"a forecast of the same record failed: our API {ours.status_code} {ours.text[:200]}, "
                         f"the peer {theirs.status_code} {theirs.text[:200]}")
    pair = {"api": float(ours.json()["prediction"]), "peer": float(theirs.json()["prediction"])}
    if abs(pair["api"] - pair["peer"]) > 1e-6 * max(abs(pair["peer"]), 1.0):
        raise PeerMismatch(f"our API and the hand-written peer forecast the same record differently: {pair}")
    return pair


def _soak(endpoint: str, body: bytes, headers: dict[str, str], requests_total: int) -> dict[str, Any]:
    """The process's resident memory before and after `requests_total` single-record requests (the service
    runs in this process: its threads, its model, its prediction log)."""
    from bench.measure import rss_mb

    _load(endpoint, body, headers, 500)  # caches, pools and the prediction log at their working size
    before = rss_mb()
    measured = _load(endpoint, body, headers, requests_total)
    return {"requests": requests_total, "rss_before_mb": before, "rss_after_mb": rss_mb(),
            "growth_mb": rss_mb() - before, "failed": measured["failed"]}


def _artifact(ws: Workspace, folder: Path) -> Path:
    """The champion as the hand-written peer has it: a plain joblib file (a user wiring the libraries together
    keeps no sealed store), its bytes the stored artifact's plaintext, checked against the registered hash."""
    from pipeline.registry.records import current_champion

    with ws.engine.connect() as conn:
        champion = current_champion(conn, ws.model)
    assert champion is not None, "the bench's retrain makes a champion"
    stored = artifacts.local_copy(ws.store, "models", champion["artifact_hash"])
    plain = folder / "champion.joblib"
    plain.write_bytes(artifacts.read_verified(stored, champion["artifact_hash"], ws.keyring))
    return plain


def measure(server_url: str, say: Callable[[str], None] = print, soak: int = SOAK_REQUESTS,
            requests_per_shape: dict[str, dict[int, int]] | None = None) -> dict[str, Any]:
    """Latency and throughput of the API, the hand-written peer and the bare endpoint, 1 and 100 records
    (`requests_per_shape`: REQUESTS unless given, as a test does with a few)."""
    counts = requests_per_shape or REQUESTS
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as folder:
        url, ws = _champion(server_url, Path(folder) / "store")
        try:
            records = _records(ws, 100)
            results: dict[str, Any] = {"clients": CLIENTS}
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            peer = handwritten_app(_artifact(ws, Path(folder)), ws.config.dataset.feature_names())
            with _served(create_app(ws, [TOKEN])) as api, _served(peer) as hand, _served(bare_app()) as bare:
                endpoints = {"api": f"{api}/v1/models/{ws.model}/predict", "peer": f"{hand}/predict",
                             "bare": f"{bare}/predict"}
                results["same_forecast"] = _same_forecast(endpoints, json.dumps(records[0]).encode(), headers)
                for size, clients in ((1, 1), (1, CLIENTS), (100, CLIENTS)):
                    body = json.dumps(records[0] if size == 1 else records[:size]).encode()
                    for name, endpoint in endpoints.items():
                        _load(endpoint, body, headers, clients, clients)  # warm-up
                        key = f"{name}_{size}" + ("_1client" if clients == 1 else "")
                        results[key] = m = _load(endpoint, body, headers, counts[name][size], clients)
                        say(f"REST {name:>4} {size:>3} record(s), {clients} client(s): p50 {m['p50_ms']:8.1f} ms  "
                            f"p99 {m['p99_ms']:8.1f} ms  {m['requests_per_second']:7.1f} req/s  ({m['requests']} "
                            f"requests, {m['failed']} failed)")
                if soak:
                    results["soak"] = m = _soak(endpoints["api"], json.dumps(records[0]).encode(), headers, soak)
                    say(f"REST  api memory over {soak} requests: {m['rss_before_mb']:.0f} MB -> {m['rss_after_mb']:.0f}"
                        f" MB ({m['growth_mb']:+.1f} MB, {m['failed']} failed)")
        finally:
            ws.engine.dispose()
            db.drop_database(url)
    for size in (1, 100):
        results[f"p50_ratio_{size}"] = results[f"api_{size}"]["p50_ms"] / results[f"bare_{size}"]["p50_ms"]
    results["peer_p50_ratio_1client"] = results["api_1_1client"]["p50_ms"] / results["peer_1_1client"]["p50_ms"]
    results["peer_p50_ratio"] = results["api_1"]["p50_ms"] / results["peer_1"]["p50_ms"]
    results["peer_throughput_ratio"] = (results["api_1"]["requests_per_second"]
                                        / results["peer_1"]["requests_per_second"])
    return results


def verdict(results: dict[str, Any]) -> str:
    ratio = results["p50_ratio_1"]
    one, many, rate = results["peer_p50_ratio_1client"], results["peer_p50_ratio"], results["peer_throughput_ratio"]
    met = one <= TARGET_PEER_P50 and many <= TARGET_PEER_P50 and rate >= TARGET_PEER_THROUGHPUT
    return (f"REST single-record p50: {ratio:.1f}x the bare FastAPI endpoint (target <= {TARGET_RATIO:g}x) "
            f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}; 100 records: {results['p50_ratio_100']:.1f}x, "
            f"{results['api_100']['requests_per_second'] * 100:.0f} records/s with {results['clients']} clients\n"
            f"REST against the hand-written peer: p50 {one:.2f}x (1 client), {many:.2f}x ({results['clients']} clients)"
            f" (target <= {TARGET_PEER_P50:g}x); throughput {rate:.2f}x (target >= {TARGET_PEER_THROUGHPUT:g}x) "
            f"{'OK' if met else 'MISSED'}"
            + (f"\nREST memory over {results['soak']['requests']} requests: {results['soak']['growth_mb']:+.1f} MB "
               f"(target <= {TARGET_SOAK_GROWTH_MB:g} MB) "
               f"{'OK' if results['soak']['growth_mb'] <= TARGET_SOAK_GROWTH_MB else 'MISSED'}" if "soak" in results
               else ""))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--soak", type=int, default=SOAK_REQUESTS, help="single-record requests of the memory soak "
                        "(0: none)")
    measured = measure(db.database_url(Settings.from_env()), soak=parser.parse_args().soak)
    print(verdict(measured))
