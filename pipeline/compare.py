"""Any two versions side by side: their parameters and CV tables, and both scored on the same rows.

The rows: the holdout of the newest registered version's snapshot (the newest rows any version was judged
on), less every row either version trained on, so neither is judged on its own training rows. The paired
bootstrap resamples those rows for both at once; it is stated as the RMSE change B − A (candidate − champion:
negative means B is better), the convention of every page of the view.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa

from pipeline.registry import records
from pipeline.workspace import Workspace


def newest_version(ws: Workspace) -> dict[str, Any]:
    """The model's newest registered version: its snapshot's holdout has the newest rows any was judged on."""
    with ws.engine.connect() as conn:
        newest = conn.scalar(sa.text("SELECT max(version) FROM pipeline.model_versions WHERE model = :m"),
                             {"m": ws.model})
        if newest is None:
            raise LookupError(f"model {ws.model!r} has no registered version")
        return records.get_model(conn, int(newest), ws.model)


def _evaluation(ws: Workspace, version: int) -> dict[str, Any] | None:
    with ws.engine.connect() as conn:
        row = conn.execute(sa.text("""
            SELECT e.candidate_metrics, e.decision, e.reason, e.champion_version FROM pipeline.evaluations e
              JOIN pipeline.model_versions m ON m.run_id = e.run_id WHERE m.version = :v"""), {"v": version})
        found = row.mappings().first()
    return dict(found) if found else None


def compare_versions(ws: Workspace, a: int, b: int) -> dict[str, Any]:
    """Versions `a` (the baseline, champion's role) and `b` (the candidate's) as plain data: their records,
    evaluations, and both scored on the same rows with the paired bootstrap of RMSE(b) − RMSE(a)."""
    from pipeline import stages
    from pipeline.model import cards, evaluate, features, train

    with ws.engine.connect() as conn:
        first, second = records.get_model(conn, a, ws.model), records.get_model(conn, b, ws.model)
    newest = newest_version(ws)
    fraction = float((newest.get("params") or {}).get("holdout_fraction", ws.config.training.holdout_fraction))
    _, holdout = train.holdout_rows(ws, newest["snapshot_hash"], fraction)
    rows = {"snapshot_hash": newest["snapshot_hash"], "of_version": int(newest["version"]), "holdout": len(holdout)}
    for key, version in (("excluded_a", first), ("excluded_b", second)):
        holdout, rows[key], unknown = stages.comparison_holdout(ws, holdout, version)
        if unknown:
            raise LookupError(unknown)
    contract = ws.config.dataset
    observed = holdout[contract.target_column].to_numpy()
    inputs = features.model_inputs(holdout, contract)
    predicted = {k: np.asarray(ws.load_model(v["artifact_hash"]).predict(inputs), dtype="float64")
                 for k, v in (("a", first), ("b", second))}
    policy = ws.config.promotion
    boot = evaluate.bootstrap_improvement(observed, predicted["a"], predicted["b"], policy.bootstrap_samples,
                                          policy.confidence or 0.95, seed=ws.config.training.seed)
    return {
        "a": first, "b": second, "evaluation_a": _evaluation(ws, a), "evaluation_b": _evaluation(ws, b),
        "rows": {**rows, "compared": len(holdout)},
        "metrics_a": evaluate.regression_metrics(observed, predicted["a"]),
        "metrics_b": evaluate.regression_metrics(observed, predicted["b"]),
        "change": {**cards.rmse_change_interval(boot), "confidence": boot["confidence"], "samples": boot["samples"]},
    }
