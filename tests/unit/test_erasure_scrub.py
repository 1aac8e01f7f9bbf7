"""Erasure's scrubbing of pages and registry JSON, tombstones, and API token names (no database)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from pipeline.data import quality, tombstones
from pipeline.erasure import scrub_json, scrub_page
from pipeline.serving import rest


def _table(headers: list[str], rows: list[list[object]]) -> str:
    return quality._html_table(headers, [list(r) for r in rows])


def test_a_page_loses_the_rows_and_example_ids_naming_the_patient() -> None:
    page = ("<html><body>" + _table(["patient_id", "reasons", "original values"],
                                    [[17, "out_of_range", "bmi 99"], [23, "unknown_category", "sex U"]])
            + _table(["column", "rule", "rows", "example ids"], [["sex", "letter_case", 2, ["17", "170"]]])
            + _table(["reason", "rows"], [["out_of_range", 17]]) + "</body></html>")
    scrubbed, found = scrub_page(page, "patient_id", "17")
    assert found == 2
    assert "bmi 99" not in scrubbed and "sex U" in scrubbed and "170" in scrubbed
    assert "<td>17</td>" in scrubbed  # a count of 17 in a table without ids is not an id
    assert scrub_page(scrubbed, "patient_id", "17") == (scrubbed, 0)


def test_registry_json_loses_the_id_in_lists_of_ids_and_rows() -> None:
    doc = {"failures": [{"column": "bmi", "sample_ids": ["17", "23"]}],
           "partial_unexpected_index_list": [{"patient_id": 17, "bmi": 99.0}, {"patient_id": 23, "bmi": 98.0}],
           "holdout_start": {"patient_id": "17", "recorded_at": "2026-01-01"}, "rows": 17}
    scrubbed, found = scrub_json(doc, "patient_id", "17")
    assert found == 3
    assert scrubbed["failures"][0]["sample_ids"] == ["23"] and scrubbed["rows"] == 17
    assert scrubbed["partial_unexpected_index_list"] == [{"patient_id": 23, "bmi": 98.0}]
    assert scrubbed["holdout_start"] == {"patient_id": None, "recorded_at": "2026-01-01"}
    assert scrub_json(scrubbed, "patient_id", "17")[1] == 0


def test_a_tombstone_is_keyed_and_the_key_file_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "erasure.key"
    key = tombstones.load_key(path)
    assert path.stat().st_mode & 0o777 == 0o600 and tombstones.load_key(path) == key
    assert tombstones.tombstone(key, 17) == tombstones.tombstone(key, "17") == tombstones.tombstone(key, 17.0)
    stone = tombstones.tombstone(key, 17)
    assert stone != tombstones.tombstone(b"x" * 32, 17)  # keyed: another key, another tombstone
    # not the plain hash of the id, which anyone could compute for every id and match (a 64-hex text may hold the
    # digits "17" by chance: that is no leak, so it is not what is checked)
    assert re.fullmatch(r"[0-9a-f]{64}", stone) and stone != hashlib.sha256(b"17").hexdigest()
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="PIPELINE_ERASURE_KEY_FILE"):
        tombstones.load_key(path)


def test_api_tokens_carry_the_name_the_access_log_gives(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# the CRM\ncrm-prod s3cret-one\nlone-token-two\n")
    tokens = rest.read_tokens(path)
    assert list(tokens) == ["s3cret-one", "lone-token-two"]
    assert rest.principal_of("s3cret-one", tokens) == "crm-prod"
    assert rest.principal_of("lone-token-two", tokens).startswith("token:")  # type: ignore[union-attr]
    assert rest.principal_of("nope", tokens) is None and rest.token_matches("s3cret-one", tokens)
    path.write_text("a b c\n")
    with pytest.raises(rest.ServingError, match="entry 1 has 3 fields"):
        rest.read_tokens(path)
