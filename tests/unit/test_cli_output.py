"""What the CLI prints for scripts: `--json` is JSON a strict parser reads."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest

from pipeline.cli.common import as_json


def test_json_output_is_strict_json_with_a_reason_for_each_null() -> None:
    result = {"live_rmse": float("inf"), "ratio_low": np.float32("nan"), "n": 3, "when": date(2026, 1, 2),
              "versions": [{"bias": float("-inf"), "mae": np.float64(1.5)}]}

    text = as_json(result)

    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in --json output"))
    assert parsed["live_rmse"] is None and parsed["ratio_low"] is None and parsed["versions"][0]["bias"] is None
    assert (parsed["n"], parsed["when"], parsed["versions"][0]["mae"]) == (3, "2026-01-02", 1.5)
    assert parsed["not_finite"] == {"$.live_rmse": "inf is not a finite number, so null",
                                    "$.ratio_low": "nan is not a finite number, so null",
                                    "$.versions[0].bias": "-inf is not a finite number, so null"}
    assert "not_finite" not in json.loads(as_json({"rmse": 1.0}))
