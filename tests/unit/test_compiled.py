"""The compiled scoring path: each shipped family converted to ONNX predicts as its Pipeline does (missing values
and unknown categories included), and a model that does not convert or does not match scores through the
Pipeline, saying why."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import numpy_helper
from sklearn.kernel_ridge import KernelRidge
from sklearn.pipeline import Pipeline

from pipeline.contract.ages import age_in_years
from pipeline.contract.config import DatasetContract, PipelineConfig
from pipeline.model import compiled, train
from pipeline.model.features import build_preprocessor, model_inputs
from pipeline.store import artifacts
from tests.unit.test_old_artifacts import FIXTURES, MANIFEST

SMALL_FAMILIES: dict[str, dict[str, Any]] = {  # the shipped families, small enough to fit in a second
    "ridge": {"alpha": 1.0},
    "random_forest": {"n_estimators": 20, "min_samples_leaf": 5, "max_features": 0.5, "max_leaf_nodes": 64},
    "hist_gradient_boosting": {"max_iter": 20, "learning_rate": 0.1, "max_leaf_nodes": 7, "min_samples_leaf": 20},
}


@pytest.fixture(scope="module")
def split(demo_frame: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The demo study's training rows and holdout, as training splits them."""
    return train.split_holdout(demo_frame, contract, 0.2)


@pytest.fixture(scope="module")
def models(config: PipelineConfig, split: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, Pipeline]:
    """Every shipped family, small, fitted on the demo study's training rows."""
    policy = dataclasses.replace(config.training, families=SMALL_FAMILIES, n_jobs=1)
    return {family: train.fit_family(split[0], config.dataset, policy, family) for family in SMALL_FAMILIES}


def awkward_rows(holdout: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """Holdout rows with what a request may hold: missing numbers, text and dates, and an unknown sex."""
    rows = holdout.head(8).copy()
    rows["patient_id"] = pd.array(range(9001, 9009), dtype="Int64")
    rows.loc[rows.index[0], "bmi"] = np.nan
    rows.loc[rows.index[1], "sex"] = None
    rows.loc[rows.index[2], "sex"] = "X"
    rows.loc[rows.index[3], "birth_date"] = pd.NaT
    rows.loc[rows.index[4], "visit_date"] = pd.NaT
    rows.loc[rows.index[5], contract.names_with_role("numeric")] = np.nan
    rows.loc[rows.index[6], ["sex", "birth_date", "bmi", "glucose"]] = [None, pd.NaT, np.nan, np.nan]
    return rows


def test_the_shipped_families_are_the_ones_tested(config: PipelineConfig) -> None:
    assert set(SMALL_FAMILIES) == set(config.training.families)


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_every_shipped_family_converts_and_predicts_as_its_pipeline(
        family: str, models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame],
        contract: DatasetContract) -> None:
    model, holdout = models[family], split[1]
    rows = pd.concat([holdout, awkward_rows(holdout, contract)])
    result = compiled.compile_model(model, contract, rows)
    assert (result.method, result.reason, result.family) == ("onnx", None, family)
    assert result.parity is not None and result.parity.rows == len(rows)
    assert result.parity.max_relative_difference <= compiled.RELATIVE_TOLERANCE
    expected = model.predict(model_inputs(rows, contract))
    np.testing.assert_allclose(result.predict(rows), expected, rtol=compiled.RELATIVE_TOLERANCE, atol=0)
    assert result.describe() == {"scoring": "onnx", "family": family, "reason": None, "parity_rows": len(rows),
                                 "max_relative_difference": result.parity.max_relative_difference}


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_missing_values_and_unknown_categories_go_through_the_graph(
        family: str, models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame],
        contract: DatasetContract) -> None:
    """The graph itself takes them (the Pipeline is not asked), one row at a time too."""
    model = models[family]
    result = compiled.compile_model(model, contract, split[1])
    rows = awkward_rows(split[1], contract)
    assert result.scorer is not None
    through_graph = result.scorer.predict(model_inputs(rows, contract))
    assert through_graph is not None and np.isfinite(through_graph).all()
    expected = model.predict(model_inputs(rows, contract))
    np.testing.assert_allclose(through_graph, expected, rtol=compiled.RELATIVE_TOLERANCE, atol=0)
    for position in range(len(rows)):
        one = rows.iloc[[position]]
        np.testing.assert_allclose(result.predict(one), model.predict(model_inputs(one, contract)),
                                   rtol=compiled.RELATIVE_TOLERANCE, atol=0)


def plain_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame's rows as the compiled record checks give them: None for missing, dates as datetimes."""
    return [{c: None if pd.isna(v) else v.to_pydatetime() if isinstance(v, pd.Timestamp) else v
             for c, v in row.items()} for row in frame.astype(object).to_dict("records")]


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_plain_rows_predict_as_their_frame(family: str, models: dict[str, Pipeline],
                                           split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract) -> None:
    """The API's frameless path (`predict_rows`) feeds the graph what the frame gives it: the same predictions,
    bit for bit, missing values and an unknown category included, one row or many."""
    result = compiled.compile_model(models[family], contract, split[1])
    rows = pd.concat([split[1].head(20), awkward_rows(split[1], contract)])
    got = result.predict_rows(plain_rows(rows))
    assert got is not None
    np.testing.assert_array_equal(got, result.predict(rows))
    for position in (0, len(rows) - 1):
        np.testing.assert_array_equal(result.predict_rows(plain_rows(rows.iloc[[position]])),
                                      result.predict(rows.iloc[[position]]))


def test_compiling_leaves_the_pipeline_as_it_was(models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame],
                                                 contract: DatasetContract) -> None:
    model = models["hist_gradient_boosting"]
    before = artifacts.model_bytes(model)
    assert compiled.compile_model(model, contract, split[1]).method == "onnx"
    assert artifacts.model_bytes(model) == before


def test_the_age_before_the_graph_is_the_pipelines_age() -> None:
    """Times of day, a birth after the event, missing dates, units and zones: the same days and years."""
    birth = pd.Series(pd.to_datetime(["1960-03-01 23:00", "2020-01-02", None, "1999-12-31 06:00", "1980-02-29"], format="ISO8601"))
    event = pd.Series(pd.to_datetime(["2023-03-01 01:00", "2020-01-01 12:00", "2023-01-01", None, "2024-02-28"], format="ISO8601"))
    expected = age_in_years(birth, event).to_numpy()
    got = compiled.ages_in_years(birth.to_numpy(), event.to_numpy().astype("datetime64[s]"))
    np.testing.assert_array_equal(got, expected)
    zoned = event.dt.tz_localize("Europe/Paris")
    got_zoned = compiled.ages_in_years(compiled.as_datetime64(birth, 0), compiled.as_datetime64(zoned, 1))
    np.testing.assert_array_equal(got_zoned, age_in_years(birth, zoned.dt.tz_convert("UTC")).to_numpy())


def test_text_in_a_date_column_is_refused_as_the_pipeline_refuses_it(
        models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract) -> None:
    result = compiled.compile_model(models["ridge"], contract, split[1])
    rows = split[1].head(2).astype({"birth_date": object})
    rows["birth_date"] = ["1960-01-01", "1970-01-01"]
    with pytest.raises(TypeError, match="AgeFromDates: input column 0 holds string values"):
        models["ridge"].predict(model_inputs(rows, contract))
    with pytest.raises(TypeError, match="AgeFromDates: input column 0 holds string values"):
        result.predict(rows)


def test_an_estimator_skl2onnx_cannot_convert_scores_through_the_pipeline_and_says_so(
        split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract) -> None:
    train_rows, holdout = split
    model = Pipeline([("features", build_preprocessor(contract)), ("model", KernelRidge(alpha=1.0))])
    model.fit(model_inputs(train_rows, contract), train_rows[contract.target_column].to_numpy())
    result = compiled.compile_model(model, contract, holdout)
    assert (result.method, result.scorer, result.family) == ("pipeline", None, "KernelRidge")
    assert result.reason is not None and result.reason.startswith("KernelRidge: does not convert to ONNX")
    assert "KernelRidge" in result.reason.removeprefix("KernelRidge:")  # skl2onnx's message names the step
    assert result.describe()["scoring"] == "pipeline" and result.describe()["reason"] == result.reason
    np.testing.assert_array_equal(result.predict(holdout), model.predict(model_inputs(holdout, contract)))
    assert result.predict_rows(plain_rows(holdout.head(2))) is None  # the Pipeline reads a frame: the caller builds it


def shifted_intercept(graph: onnx.ModelProto, shift: float) -> onnx.ModelProto:
    """A ridge graph whose intercept (the one-element double constant its last Add adds) is off by `shift`."""
    wrong = onnx.ModelProto()
    wrong.CopyFrom(graph)
    add = [node for node in wrong.graph.node if node.op_type == "Add"][-1]
    for initializer in wrong.graph.initializer:
        if initializer.name in add.input:
            value = numpy_helper.to_array(initializer)
            assert value.size == 1 and value.dtype == np.float64
            initializer.CopyFrom(numpy_helper.from_array(value + shift, initializer.name))
            return wrong
    raise AssertionError("no intercept found in the ridge graph")


def test_a_graph_that_disagrees_on_the_holdout_is_not_trusted_and_names_the_worst_row(
        models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract) -> None:
    model, holdout = models["ridge"], split[1]
    good = compiled.convert(model, contract)
    wrong = compiled.OnnxScorer(shifted_intercept(good.graph, 0.01), good.inputs)
    result = compiled.checked(model, contract, holdout, wrong)
    assert (result.method, result.scorer) == ("pipeline", None)
    expected = model.predict(model_inputs(holdout, contract))
    smallest = int(holdout[contract.id_column].iloc[int(np.argmin(np.abs(expected)))])
    assert result.parity is not None and result.parity.failed
    assert result.parity.max_relative_difference == pytest.approx(0.01 / np.abs(expected).min(), rel=1e-6)
    assert result.reason is not None and result.reason.startswith("ridge: ONNX differs from the Pipeline")
    assert f"at row patient_id={smallest} " in result.reason and f"over {len(holdout)} rows" in result.reason
    np.testing.assert_array_equal(result.predict(holdout), expected)
    assert compiled.checked(model, contract, holdout, good).method == "onnx"  # the same rows pass the true graph


def test_no_holdout_rows_means_no_trust(models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame],
                                        contract: DatasetContract) -> None:
    result = compiled.compile_model(models["ridge"], contract, split[1].iloc[:0])
    assert result.method == "pipeline"
    assert result.reason == "ridge: no holdout rows to check ONNX against the Pipeline on"


def old_layout_rows(contract: DatasetContract) -> pd.DataFrame:
    """The rows the old-layout artifacts scored, typed as then: dates as date objects, sex as text."""
    rows = pd.read_csv(FIXTURES / "rows.csv", dtype={"sex": "str"})
    for column in ("birth_date", "visit_date"):
        rows[column] = pd.to_datetime(rows[column]).dt.date
    return rows


@pytest.mark.parametrize("family", sorted(MANIFEST))
def test_an_old_layout_artifact_converts_and_predicts_as_it_did(family: str, contract: DatasetContract) -> None:
    entry = MANIFEST[family]
    model = artifacts.load_model(FIXTURES / entry["file"], entry["sha256"])
    rows = old_layout_rows(contract)
    result = compiled.compile_model(model, contract, rows)
    assert (result.method, result.reason, result.family) == ("onnx", None, family)
    np.testing.assert_allclose(result.predict(rows), entry["predictions"], rtol=compiled.RELATIVE_TOLERANCE, atol=0)


def test_a_frame_without_a_feature_column_is_refused_as_the_pipeline_refuses_it(
        models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract) -> None:
    result = compiled.compile_model(models["random_forest"], contract, split[1])
    assert result.method == "onnx"
    with pytest.raises(KeyError, match="glucose"):
        result.predict(split[1].drop(columns="glucose"))


def test_holdout_values_the_graph_cannot_take_exactly_leave_the_pipeline_scoring_and_are_named(
        models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract) -> None:
    """Categories stored as numbers: the one-hot encoder compares objects, the graph compares text."""
    model = models["ridge"]
    rows = split[1].astype({"sex": object})
    rows["sex"] = rows["sex"].map({"F": 1, "M": 2})
    result = compiled.compile_model(model, contract, rows)
    assert result.method == "pipeline"
    assert result.reason is not None and result.reason.startswith("ridge: the holdout's columns ['sex'] hold values")
    np.testing.assert_array_equal(result.predict(rows), model.predict(model_inputs(rows, contract)))
    good = compiled.compile_model(model, contract, split[1])
    np.testing.assert_array_equal(good.predict(rows), model.predict(model_inputs(rows, contract)))  # asks the Pipeline


ARTIFACT = "ab" * 32  # the artifact hash a cache entry is named by (the cache never reads the artifact itself)


def test_a_cached_compile_loads_as_it_was_checked(models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame],
                                                 contract: DatasetContract, tmp_path: Path) -> None:
    model, holdout = models["hist_gradient_boosting"], split[1]
    built = compiled.compile_model(model, contract, holdout)
    compiled.save_compiled(tmp_path, ARTIFACT, built)
    loaded = compiled.load_compiled(tmp_path, ARTIFACT, model, contract)
    assert loaded is not None and loaded.describe() == built.describe() and loaded.scorer is not None
    np.testing.assert_array_equal(loaded.predict(holdout), built.predict(holdout))
    assert compiled.load_compiled(tmp_path, "cd" * 32, model, contract) is None  # another artifact: nothing cached


def test_a_fallback_is_cached_with_its_reason(split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract,
                                             tmp_path: Path) -> None:
    model = Pipeline([("features", build_preprocessor(contract)), ("model", KernelRidge())])
    model.fit(model_inputs(split[0], contract), split[0][contract.target_column])
    built = compiled.compile_model(model, contract, split[1])
    compiled.save_compiled(tmp_path, ARTIFACT, built)
    loaded = compiled.load_compiled(tmp_path, ARTIFACT, model, contract)
    assert loaded is not None and (loaded.method, loaded.reason) == ("pipeline", built.reason)


def test_a_stale_or_tampered_cache_entry_is_never_served(
        models: dict[str, Pipeline], split: tuple[pd.DataFrame, pd.DataFrame], contract: DatasetContract,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The entry of another artifact copied under this one's name, a graph swapped for another (a wrong
    intercept), libraries or contract features that changed since: each is rebuilt, none is loaded."""
    model = models["ridge"]
    built = compiled.compile_model(model, contract, split[1])
    described, graph = compiled.cache_paths(tmp_path, ARTIFACT)

    compiled.save_compiled(tmp_path, "cd" * 32, built)
    other_described, _ = compiled.cache_paths(tmp_path, "cd" * 32)
    described.write_bytes(other_described.read_bytes())
    assert compiled.load_compiled(tmp_path, ARTIFACT, model, contract) is None

    compiled.save_compiled(tmp_path, ARTIFACT, built)
    assert built.scorer is not None
    graph.chmod(0o600)
    graph.write_bytes(shifted_intercept(built.scorer.graph, 0.01).SerializeToString())
    with caplog.at_level("WARNING", logger="pipeline.model.compiled"):
        assert compiled.load_compiled(tmp_path, ARTIFACT, model, contract) is None
    assert "is rebuilt" in caplog.text and ARTIFACT in caplog.text

    compiled.save_compiled(tmp_path, ARTIFACT, built)
    entry = json.loads(described.read_text())
    entry["fingerprint"]["onnxruntime"] = "0.0.1"
    described.chmod(0o600)
    described.write_text(json.dumps(entry))
    assert compiled.load_compiled(tmp_path, ARTIFACT, model, contract) is None

    compiled.save_compiled(tmp_path, ARTIFACT, built)
    fewer = dataclasses.replace(contract, features=tuple(f for f in contract.features if f.name != "glucose"))
    assert compiled.load_compiled(tmp_path, ARTIFACT, model, fewer) is None
    assert compiled.load_compiled(tmp_path, ARTIFACT, model, contract) is not None  # the entry itself was sound
