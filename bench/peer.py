"""The hand-wired peer: the retrain a user writes from pandas', Great Expectations' and scikit-learn's own
tutorials, timed step by step beside ours.

    rows = pandas.read_sql(labelled rows)               read_sql
    a GX checkpoint with the same suite, rows listed    gx_checkpoint  (result format COMPLETE: unexpected rows by id)
    split, features, GridSearchCV (5 folds, same grid)  grid_search    (refit on every training row)
    joblib.dump(best model)                             dump
    predict the newest 20 %, RMSE                       predict

No quarantine (the checkpoint's verdict is printed, every row is trained on), no lineage, no bootstrap, no
model card, no champion. Its features are a tutorial's: age from the two dates in pandas, then a
ColumnTransformer (median imputer and scaler for numbers, one-hot for categories). The families and their
parameters are the config's (`training.families`, one grid point each, as the pipeline searches them), on
`training.cv_folds` shuffled folds seeded with `training.seed`. Nothing here imports `pipeline`'s stages:
the config is read with yaml, as a user's script would.

`python -m bench.peer DATABASE_URL [--config pipeline.yaml]` runs it on a database and prints its steps;
the bench runs it in a fresh process per size (`bench.probe`'s "peer" probe).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import report
from bench.measure import peak_mb, rss_mb, timed

STEPS = ("read_sql", "gx_checkpoint", "grid_search", "dump", "predict")
ROW = "peer: hand-wired retrain"
TARGET = 0.5  # our whole retrain's seconds over the peer's, at most
FAMILY_CLASSES = {"ridge": "sklearn.linear_model.Ridge",
                  "random_forest": "sklearn.ensemble.RandomForestRegressor",
                  "hist_gradient_boosting": "sklearn.ensemble.HistGradientBoostingRegressor"}


def read_config(path: Path) -> dict[str, Any]:
    """The pipeline's config as plain data; the suite's path made absolute."""
    raw: dict[str, Any] = yaml.safe_load(path.read_text())
    raw["dataset"]["expectation_suite"] = str((path.parent / raw["dataset"]["expectation_suite"]).resolve())
    return raw


def read_rows(database_url: str, dataset: dict[str, Any], watermark: datetime) -> Any:
    """Every labelled row recorded up to the watermark, as pandas reads it."""
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    sql = sa.text(f"SELECT * FROM {dataset['table']} WHERE {dataset['target_column']} IS NOT NULL "
                  f"AND {dataset['timestamp_column']} <= :watermark")
    try:
        return pd.read_sql(sql, engine, params={"watermark": watermark})
    finally:
        engine.dispose()


def checkpoint(frame: Any, suite_path: str, id_column: str) -> dict[str, Any]:
    """Great Expectations' checkpoint over the frame with the suite, every unexpected row listed by id."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch = context.data_sources.add_pandas("peer").add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(**json.loads(Path(suite_path).read_text())))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="peer", data=batch, suite=suite))
    check = context.checkpoints.add(gx.Checkpoint(
        name="peer", validation_definitions=[definition],
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}))
    result = check.run(batch_parameters={"dataframe": frame})
    unexpected = {str(row[id_column]) for run in result.run_results.values() for r in run.results
                  for row in (r.result.get("unexpected_index_list") or [])}
    return {"success": bool(result.success), "unexpected_rows": len(unexpected)}


def estimator(family: str, seed: int) -> Any:
    """The family's scikit-learn estimator, seeded."""
    import importlib

    module, name = FAMILY_CLASSES[family].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    return cls(random_state=seed)


def param_grid(families: dict[str, dict[str, Any]], seed: int) -> list[dict[str, list[Any]]]:
    """GridSearchCV's grid: one entry per family, its estimator as the pipeline's `model` step."""
    return [{"model": [estimator(family, seed)], **{f"model__{k}": [v] for k, v in params.items()}}
            for family, params in families.items()]


def feature_columns(dataset: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The model's numeric columns (age in years last, when the contract has the date pair) and categorical ones."""
    roles = {f["role"] for f in dataset["features"]}
    numeric = [f["name"] for f in dataset["features"] if f["role"] == "numeric"]
    if {"birth_date", "event_date"} <= roles:
        numeric.append("age_years")
    return numeric, [f["name"] for f in dataset["features"] if f["role"] == "categorical"]


def features(frame: Any, dataset: dict[str, Any]) -> Any:
    """The model's inputs: the numeric and categorical columns, with age in years from the date pair."""
    import pandas as pd

    dated = {f["role"]: f["name"] for f in dataset["features"] if f["role"] in ("birth_date", "event_date")}
    inputs = frame[[f["name"] for f in dataset["features"] if f["role"] in ("numeric", "categorical")]].copy()
    if len(dated) == 2:
        born, seen = pd.to_datetime(frame[dated["birth_date"]]), pd.to_datetime(frame[dated["event_date"]])
        inputs["age_years"] = (seen - born).dt.days / 365.25
    return inputs


def search(config: dict[str, Any]) -> Any:
    """GridSearchCV over a preprocessing + model Pipeline, as scikit-learn's user guide builds one."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    dataset, training = config["dataset"], config["training"]
    numeric, categorical = feature_columns(dataset)
    prep = ColumnTransformer([("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
                              ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)])
    model = Pipeline([("prep", prep), ("model", Ridge())])
    folds = KFold(n_splits=training["cv_folds"], shuffle=True, random_state=training["seed"])
    return GridSearchCV(model, param_grid(training["families"], training["seed"]), cv=folds,
                        scoring="neg_root_mean_squared_error")


def retrain(database_url: str, config_path: Path, watermark: datetime, model_dir: Path) -> dict[str, Any]:
    """The peer's whole retrain, each step timed; the model file lands in `model_dir`."""
    import great_expectations  # noqa: F401 - imported before the clock starts, as every import of ours is
    import joblib
    import pandas  # noqa: F401
    from sklearn.metrics import root_mean_squared_error

    config = read_config(config_path)
    dataset, training = config["dataset"], config["training"]
    seconds: dict[str, float] = {}
    ready = rss_mb()
    frame, seconds["read_sql"] = timed(read_rows, database_url, dataset, watermark)
    verdict, seconds["gx_checkpoint"] = timed(checkpoint, frame, dataset["expectation_suite"], dataset["id_column"])
    grid = search(config)
    n_holdout = max(1, round(len(frame) * training["holdout_fraction"]))

    def split_and_search() -> Any:
        """The newest rows held out, the search on the rest; returns the holdout."""
        ordered = frame.sort_values([dataset["timestamp_column"], dataset["id_column"]])
        train = ordered.iloc[:-n_holdout]
        grid.fit(features(train, dataset), train[dataset["target_column"]].to_numpy(dtype="float64"))
        return ordered.iloc[-n_holdout:]

    holdout, seconds["grid_search"] = timed(split_and_search)
    path = model_dir / "model.joblib"
    _, seconds["dump"] = timed(joblib.dump, grid.best_estimator_, path)

    def score() -> float:
        predicted = grid.predict(features(holdout, dataset))
        return float(root_mean_squared_error(holdout[dataset["target_column"]].to_numpy(dtype="float64"), predicted))

    rmse, seconds["predict"] = timed(score)
    best = type(grid.best_params_["model"]).__name__
    return {"seconds": sum(seconds.values()), "steps": seconds, "rows": len(frame), "holdout_rows": n_holdout,
            "best": best, "cv_rmse": float(-grid.best_score_), "holdout_rmse": rmse, "gx": verdict,
            "model_bytes": path.stat().st_size, "ready_mb": ready, "peak_mb": peak_mb()}


def run_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """The bench's probe: the peer on the size's database and config, its model in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as folder:
        return retrain(spec["database_url"], Path(spec["config_path"]), datetime.fromisoformat(spec["watermark"]),
                       Path(folder))


PROBES = {"peer": run_peer}


def rows(measured: dict[str, Any], ours: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The peer's rows of the bench's table: its whole retrain, whose floor column holds our whole retrain's
    seconds (so its ratio is ours / the peer's), then each of its steps."""
    total = report.step(ROW, measured["seconds"], n, ours["seconds"], measured["peak_mb"],
                        ready_mb=measured["ready_mb"], ours_peak_mb=ours["peak_mb"],
                        result={k: measured[k] for k in ("best", "cv_rmse", "holdout_rmse", "gx", "holdout_rows")})
    return [total, *(report.step(f"  peer: {name}", measured["steps"][name], n) for name in STEPS)]


def verdicts(sizes: list[dict[str, Any]]) -> list[str]:
    """Our whole retrain against the peer's, per size: seconds and peak memory."""
    lines = []
    for size in sizes:
        at = {s["step"]: s for s in size["steps"]}
        if ROW not in at:
            continue
        row, first = at[ROW], at.get(report.FIRST_ROW)
        one_process = f", {first['peak_mb']:,.0f} MB all stages in one process" if first else ""
        lines.append(f"our retrain / the hand-wired peer at {report.fmt(size['rows'], 'rows')}: "
                     f"{row['floor_seconds']:.2f} s / {row['seconds']:.2f} s = {row['vs_floor']:.2f} "
                     f"(target <= {TARGET:g}) {'OK' if row['vs_floor'] <= TARGET else 'MISSED'}; peak "
                     f"{row['ours_peak_mb']:,.0f} MB per task{one_process}, the peer's {row['peak_mb']:,.0f} MB "
                     f"(target <=) {'OK' if row['ours_peak_mb'] <= row['peak_mb'] else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "pipeline.yaml")
    args = parser.parse_args(argv)
    result = run_peer({"database_url": args.database_url, "config_path": str(args.config),
                       "watermark": datetime.now(UTC).isoformat()})
    for name in STEPS:
        print(f"{name:14s} {result['steps'][name]:8.2f} s")
    print(f"{'total':14s} {result['seconds']:8.2f} s on {result['rows']:,} rows, peak {result['peak_mb']:,.0f} MB; "
          f"best {result['best']}, holdout RMSE {result['holdout_rmse']:.2f}; GX success {result['gx']['success']}, "
          f"{result['gx']['unexpected_rows']:,} rows unexpected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
