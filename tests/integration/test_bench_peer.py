"""The bench's hand-wired peer (bench/peer.py) runs end to end on 10^4 generated rows, as `make bench` runs it."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from threadpoolctl import threadpool_limits

from bench import peer, workload
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.store import db

ROWS = 10**4


def small_config(tmp_path: Path, source: Path) -> Path:
    """The bench's config (ridge and gradient boosting), the boosting cut to 20 iterations: the test is about
    the wiring, not the model. It runs on one thread: two spinning OpenMP threads on a busy machine made this
    search ten times slower."""
    path = workload.write_config(source, tmp_path / "bench.yaml")
    raw = yaml.safe_load(path.read_text())
    raw["training"]["families"]["hist_gradient_boosting"]["max_iter"] = 20
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.timeout(300)
def test_the_peer_reads_checks_searches_dumps_and_scores_the_generated_rows(server_url: str, tmp_path: Path) -> None:
    url = db.with_database(server_url, f"pipeline_test_peer_{uuid.uuid4().hex[:10]}")
    workload.create_table(url, ROWS)
    config = small_config(tmp_path, PROJECT_ROOT / "pipeline.yaml")
    try:
        with threadpool_limits(limits=1):
            result = peer.run_peer({"database_url": url, "watermark": workload.WATERMARK.isoformat(),
                                    "config_path": str(config)})
    finally:
        db.drop_database(url)

    assert result["rows"] == ROWS - ROWS // 50  # every 50th row awaits its label
    assert result["holdout_rows"] == round(result["rows"] * 0.2)
    # GX lists the unknown and the messy sex codes (one each in 200 rows); the peer trains on them anyway
    assert result["gx"] == {"success": False, "unexpected_rows": ROWS // 100}
    assert set(result["steps"]) == set(peer.STEPS) and all(s > 0 for s in result["steps"].values())
    assert result["best"] in ("Ridge", "HistGradientBoostingRegressor") and result["model_bytes"] > 0
    assert np.isfinite(result["holdout_rmse"]) and result["holdout_rmse"] < 45  # the label's noise is 30
