"""Feature preparation, as scikit-learn steps that travel inside the saved model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from pipeline.contract.ages import age_in_years
from pipeline.contract.config import DatasetContract

TYPED_DATES = ("date", "datetime", "datetime64", "empty")  # what pandas' infer_dtype calls date-typed values


def typed_dates(column: pd.Series, position: int) -> pd.Series:
    """A date column as datetimes; text (or anything else) is refused: a model never guesses a date format."""
    values = column.dropna()
    if not pd.api.types.is_datetime64_any_dtype(column.dtype) and len(values):
        kind = pd.api.types.infer_dtype(values)
        if kind not in TYPED_DATES:
            raise TypeError(
                f"AgeFromDates: input column {position} holds {kind} values (e.g. {values.iloc[0]!r}), not dates; "
                "dates must be typed (datetime64 or date objects) before they reach the model: cast them with "
                "casting.cast_column, which reads text only by its declared format")
    return pd.to_datetime(column, errors="coerce")


class AgeFromDates(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Age in years at the event, from a (birth date, event date) column pair."""

    def fit(self, X: Any, y: Any = None) -> AgeFromDates:
        self.n_features_in_ = 2
        return self

    def transform(self, X: Any) -> np.ndarray:
        frame = pd.DataFrame(X)
        birth, event = typed_dates(frame.iloc[:, 0], 0), typed_dates(frame.iloc[:, 1], 1)
        ages: np.ndarray = age_in_years(birth, event).to_numpy().reshape(-1, 1)
        return ages

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array(["age_years"], dtype=object)


def missing_as_nan(X: Any) -> pd.DataFrame:
    """Text columns as objects with NaN for missing (pandas' NA breaks the imputer)."""
    frame = pd.DataFrame(X).astype(object)
    return frame.where(frame.notna(), np.nan)


def numeric_steps() -> Pipeline:
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler())


def build_preprocessor(contract: DatasetContract) -> ColumnTransformer:
    """Age from the date pair, imputed and scaled numerics, one-hot categoricals.

    Columns not in the contract (the id, the timestamp) are dropped, so they can never
    influence a prediction.
    """
    transformers: list[tuple[str, Any, list[str]]] = []
    birth, event = contract.names_with_role("birth_date"), contract.names_with_role("event_date")
    if birth and event:
        age = make_pipeline(AgeFromDates(), SimpleImputer(strategy="median"), StandardScaler())
        transformers.append(("age", age, [birth[0], event[0]]))
    # One imputer and scaler per numeric column, the same statistics as one over them all: scikit-learn's
    # median sorts a masked copy of its whole input with int64 indices, four times the columns in memory.
    for index, name in enumerate(contract.names_with_role("numeric")):
        transformers.append((f"numeric_{index}", numeric_steps(), [name]))
    categorical = contract.names_with_role("categorical")
    if categorical:
        encoder = make_pipeline(
            FunctionTransformer(missing_as_nan, feature_names_out="one-to-one"),
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
        )
        transformers.append(("categorical", encoder, categorical))
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def model_inputs(frame: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The feature columns a model is fitted and scored on."""
    return frame[contract.feature_names()]
