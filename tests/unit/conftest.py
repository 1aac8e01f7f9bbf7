"""Fixtures for the unit tests: the shipped contract and the demo rows, no database."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import demo, ingest
from pipeline.config import DatasetContract, PipelineConfig


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
