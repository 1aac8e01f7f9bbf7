"""Feature preparation and model behaviour: ages from dates, dropped ids, invariance, unseen values."""

from __future__ import annotations

import dataclasses
from datetime import date

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from pipeline.contract.config import DatasetContract, PipelineConfig, TrainingPolicy
from pipeline.model.features import AgeFromDates, build_preprocessor, model_inputs, numeric_steps
from pipeline.model.train import build_model

BIRTH, EVENT = "birth_date", "visit_date"


def date_pairs(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {BIRTH: [date.fromisoformat(b) for b, _ in pairs], EVENT: [date.fromisoformat(e) for _, e in pairs]}
    )


def small_policy(config: PipelineConfig) -> TrainingPolicy:
    """The shipped policy with a small, seeded forest: fast, and sensitive to every input column."""
    return dataclasses.replace(
        config.training, n_jobs=1, families={"random_forest": {"n_estimators": 20, "min_samples_leaf": 5}}
    )


@pytest.fixture(scope="module")
def forest(config: PipelineConfig, demo_frame: pd.DataFrame) -> Pipeline:
    """A model fitted on whole snapshot rows, id and timestamp included, as the CLI would pass them."""
    contract = config.dataset
    model = build_model(contract, "random_forest", small_policy(config))
    return model.fit(demo_frame, demo_frame[contract.target_column].to_numpy())


# --- AgeFromDates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "event", "years"),
    [
        ("1970-06-15", "2020-06-15", 50.0),
        ("2000-02-29", "2001-02-28", 1.0),
        ("1999-12-31", "2000-12-30", 1.0),
        ("1950-01-01", "2025-07-02", 75.5),
        ("2020-01-01", "2020-01-01", 0.0),
    ],
)
def test_age_from_known_date_pairs(birth: str, event: str, years: float) -> None:
    ages = AgeFromDates().fit_transform(date_pairs([(birth, event)]))
    assert ages.shape == (1, 1)
    assert ages[0, 0] == pytest.approx(years, abs=0.01)


def test_age_is_in_rows_order_and_accepts_datetime_columns() -> None:
    frame = date_pairs([("1970-06-15", "2020-06-15"), ("1990-01-01", "2000-01-01")])
    as_datetimes = frame.apply(pd.to_datetime)
    ages = AgeFromDates().fit_transform(as_datetimes)
    np.testing.assert_allclose(ages[:, 0], [50.0, 10.0], atol=0.01)


def test_age_of_a_missing_date_is_nan_not_an_error() -> None:
    frame = pd.DataFrame({BIRTH: [pd.NaT, pd.Timestamp("1980-01-01")], EVENT: pd.to_datetime(["2020-01-01"] * 2)})
    ages = AgeFromDates().fit_transform(frame)
    assert np.isnan(ages[0, 0])
    assert ages[1, 0] == pytest.approx(40.0, abs=0.01)


# --- build_preprocessor --------------------------------------------------------------------------


def test_preprocessor_outputs_age_numerics_and_one_hot_categories(
    contract: DatasetContract, demo_frame: pd.DataFrame
) -> None:
    preprocessor = build_preprocessor(contract).fit(demo_frame)
    names = list(preprocessor.get_feature_names_out())
    categories = [
        f"{column}_{value}" for column in contract.names_with_role("categorical")
        for value in sorted(demo_frame[column].unique())
    ]
    assert sorted(names) == sorted(["age_years", *contract.names_with_role("numeric"), *categories])
    assert preprocessor.transform(demo_frame).shape == (len(demo_frame), len(names))


def test_numeric_columns_are_imputed_and_scaled_one_by_one_as_all_at_once(
    contract: DatasetContract, demo_frame: pd.DataFrame
) -> None:
    """Each numeric column has its own imputer and scaler (a bounded median); the values are those of one
    imputer and scaler over every numeric column, missing values included."""
    numeric = contract.names_with_role("numeric")
    frame = demo_frame.copy()
    rng = np.random.default_rng(7)
    for name in numeric:  # gaps in every column, at different rows
        frame.loc[rng.random(len(frame)) < 0.1, name] = np.nan
    preprocessor = build_preprocessor(contract).fit(frame)
    names = list(preprocessor.get_feature_names_out())
    ours = preprocessor.transform(frame)[:, [names.index(name) for name in numeric]]
    together = numeric_steps().fit(frame[numeric]).transform(frame[numeric])
    assert np.isnan(frame[numeric].to_numpy(dtype=float)).any()
    np.testing.assert_allclose(ours, together, rtol=1e-12, atol=1e-12)
    medians = [float(np.nanmedian(frame[name].to_numpy(dtype=float))) for name in numeric]
    assert [preprocessor.named_transformers_[f"numeric_{i}"][0].statistics_[0] for i in range(len(numeric))] == medians


def test_preprocessor_drops_id_timestamp_target_and_raw_dates(
    contract: DatasetContract, demo_frame: pd.DataFrame
) -> None:
    names = set(build_preprocessor(contract).fit(demo_frame).get_feature_names_out())
    dropped = {contract.id_column, contract.timestamp_column, contract.target_column, BIRTH, EVENT}
    assert not names & dropped


def test_preprocessor_without_a_date_pair_has_no_age(contract: DatasetContract, demo_frame: pd.DataFrame) -> None:
    no_dates = dataclasses.replace(
        contract, features=tuple(f for f in contract.features if f.role not in ("birth_date", "event_date"))
    )
    names = set(build_preprocessor(no_dates).fit(demo_frame).get_feature_names_out())
    assert "age_years" not in names
    assert set(no_dates.names_with_role("numeric")) <= names


def test_model_inputs_are_exactly_the_contract_features(contract: DatasetContract, demo_frame: pd.DataFrame) -> None:
    assert list(model_inputs(demo_frame, contract).columns) == contract.feature_names()


# --- model behaviour -----------------------------------------------------------------------------


def test_predictions_do_not_depend_on_patient_id_values(
    forest: Pipeline, contract: DatasetContract, demo_frame: pd.DataFrame
) -> None:
    rows = demo_frame.head(60)
    ids = rows[contract.id_column]
    shuffled = rows.assign(**{contract.id_column: ids.sample(frac=1.0, random_state=1).to_numpy()})
    replaced = rows.assign(**{contract.id_column: ids * 1000 + 7})
    baseline = forest.predict(rows)
    assert np.array_equal(forest.predict(shuffled), baseline)
    assert np.array_equal(forest.predict(replaced), baseline)


def test_training_does_not_depend_on_patient_id_values(
    forest: Pipeline, config: PipelineConfig, demo_frame: pd.DataFrame
) -> None:
    contract = config.dataset
    reversed_ids = demo_frame.assign(**{contract.id_column: demo_frame[contract.id_column].to_numpy()[::-1]})
    other = build_model(contract, "random_forest", small_policy(config))
    other.fit(reversed_ids, reversed_ids[contract.target_column].to_numpy())
    rows = demo_frame.head(60)
    assert np.array_equal(other.predict(rows), forest.predict(rows))


def test_predictions_do_depend_on_the_features(forest: Pipeline, demo_frame: pd.DataFrame) -> None:
    """Guards the invariance tests above: a model that ignored every input would pass them too."""
    rows = demo_frame.head(60)
    assert not np.array_equal(forest.predict(rows), forest.predict(rows.assign(bmi=rows["bmi"] + 10)))


def test_scoring_a_category_unseen_in_training_does_not_raise(
    forest: Pipeline, contract: DatasetContract, demo_frame: pd.DataFrame
) -> None:
    column = contract.names_with_role("categorical")[0]
    rows = demo_frame.head(10)
    unseen = rows.assign(**{column: pd.array(["X"] * len(rows), dtype=rows[column].dtype)})
    predicted = forest.predict(model_inputs(unseen, contract))
    assert predicted.shape == (len(rows),)
    assert np.all(np.isfinite(predicted))
