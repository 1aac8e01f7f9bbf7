"""Model artifacts written before pipeline/ was grouped into subpackages still load and score identically.

tests/fixtures/old_layout holds one artifact per shipped family, fitted and saved by main at 8374f01 (the flat
layout: they pickle `pipeline.features.AgeFromDates` and `pipeline.features.missing_as_nan`), the rows they
scored and their predictions then (manifest.json).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.contract.config import load_config
from pipeline.contract.settings import PROJECT_ROOT
from pipeline.model.features import model_inputs
from pipeline.store import artifacts

FIXTURES = Path(__file__).parents[1] / "fixtures" / "old_layout"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def fixture_rows() -> pd.DataFrame:
    contract = load_config(PROJECT_ROOT / "pipeline.yaml").dataset
    rows = pd.read_csv(FIXTURES / "rows.csv", dtype={"sex": "str"})
    for column in ("birth_date", "visit_date"):
        rows[column] = pd.to_datetime(rows[column]).dt.date
    return model_inputs(rows, contract)


def test_the_fixtures_cover_every_shipped_family_and_name_the_old_paths() -> None:
    families = set(load_config(PROJECT_ROOT / "pipeline.yaml").training.families)
    assert set(MANIFEST) == families
    for entry in MANIFEST.values():
        data = (FIXTURES / entry["file"]).read_bytes()
        assert b"pipeline.features" in data and b"pipeline.model" not in data  # written by the flat layout


@pytest.mark.parametrize("family", sorted(MANIFEST))
def test_an_old_layout_artifact_loads_and_predicts_identically(family: str) -> None:
    entry = MANIFEST[family]
    path = FIXTURES / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    model = artifacts.load_model(path, entry["sha256"])
    predicted = model.predict(fixture_rows())
    assert len(predicted) == len(entry["predictions"]) == 60
    assert [float(p) for p in predicted] == entry["predictions"]


def test_a_new_artifact_names_the_new_paths_and_round_trips() -> None:
    model = artifacts.load_model(FIXTURES / MANIFEST["ridge"]["file"], MANIFEST["ridge"]["sha256"])
    data = artifacts.model_bytes(model)
    named = set(re.findall(rb"pipeline\.[a-z_.]+", data))
    assert b"pipeline.model.features" in named and b"pipeline.features" not in named
    again = artifacts.unpickle_model(data)
    assert list(again.predict(fixture_rows())) == list(model.predict(fixture_rows()))


def test_every_moved_module_exists_at_its_new_path() -> None:
    import importlib

    for old, new in artifacts.MOVED_MODULES.items():
        assert importlib.util.find_spec(new) is not None, f"{old} -> {new}"
        assert importlib.util.find_spec(old) is None or old in {"pipeline.registry", "pipeline.serving", "pipeline.cli"}
