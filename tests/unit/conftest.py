"""Fixtures for the unit tests: the shipped contract and the demo rows, no database."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import pytest

from pipeline.contract.config import DatasetContract, Feature, PipelineConfig
from pipeline.data import demo, ingest
from pipeline.data.validate import load_suite


@pytest.fixture(scope="session")
def contract(config: PipelineConfig) -> DatasetContract:
    return config.dataset


def source_records() -> pd.DataFrame:
    """The demo study as the source table holds it once loaded: sql/009's trigger stamps each outcome
    (label_recorded_at) as known when its row was recorded."""
    records = demo.demo_records()
    records["label_recorded_at"] = records["recorded_at"]
    return records


@pytest.fixture(scope="session")
def demo_frame(contract: DatasetContract) -> pd.DataFrame:
    """The demo study as a snapshot holds it: typed by the contract. Copy before changing it."""
    return ingest.cast_to_contract(source_records(), contract)


@pytest.fixture(scope="session")
def suite(contract: DatasetContract) -> dict[str, Any]:
    """The shipped expectation suite."""
    return load_suite(contract.expectation_suite)


def declaring(contract: DatasetContract, formats: dict[str, str], target_decimal: str | None = None) -> DatasetContract:
    """The contract with the text format of some features declared, as a config for a text column must."""
    def declared(feature: Feature) -> Feature:
        if feature.name not in formats:
            return feature
        key = "format" if feature.type in ("date", "timestamp") else "decimal"
        return dataclasses.replace(feature, **{key: formats[feature.name]})
    features = tuple(declared(f) for f in contract.features)
    return dataclasses.replace(contract, features=features, target_decimal=target_decimal)


@pytest.fixture(scope="session")
def text_bmi(contract: DatasetContract) -> DatasetContract:
    """The faulty frame holds text in bmi (row 70), so bmi declares its decimal mark."""
    return declaring(contract, {"bmi": "."})


@pytest.fixture(scope="session")
def raw_records() -> pd.DataFrame:
    """The demo study as the source table holds it: dates as date objects, sex as text."""
    return source_records()
