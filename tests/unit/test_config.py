"""The configuration file: the shipped one loads, and every broken variant is refused by name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.contract.config import (
    DEFAULT_DRIFT_MIN_ROWS,
    ConfigError,
    DatabasePolicy,
    PipelineConfig,
    load_config,
    model_entries,
    suite_columns,
)
from pipeline.contract.settings import ENV_DATABASE_URL, PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "pipeline.yaml"

Mutation = Callable[[dict[str, Any]], None]


def shipped_raw() -> dict[str, Any]:
    return dict(yaml.safe_load(SHIPPED.read_text()))


def write_variant(tmp_path: Path, mutate: Mutation) -> Path:
    """The shipped configuration, changed by `mutate`, written to tmp_path/pipeline.yaml."""
    raw = shipped_raw()
    raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / raw["dataset"]["expectation_suite"])
    mutate(raw)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def quoted(name: str) -> str:
    """A pattern for `name` as the messages quote it (the tmp path may contain the bare word)."""
    return re.escape(f"'{name}'")


def feature_named(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in raw["dataset"]["features"] if f["name"] == name)


def drop_role(role: str) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        raw["dataset"]["features"] = [f for f in raw["dataset"]["features"] if f["role"] != role]
    return mutate


# --- the shipped file ----------------------------------------------------------------------------


def test_shipped_config_matches_the_yaml_it_was_read_from(config: PipelineConfig) -> None:
    raw = shipped_raw()["dataset"]
    contract = config.dataset
    assert contract.table == raw["table"]
    assert contract.id_column == raw["id_column"]
    assert contract.feature_names() == [f["name"] for f in raw["features"]]
    assert {f.name: f.role for f in contract.features} == {f["name"]: f["role"] for f in raw["features"]}
    assert contract.columns() == [
        raw["id_column"], *(f["name"] for f in raw["features"]), raw["target_column"], raw["timestamp_column"],
        raw["label_timestamp_column"],
    ]
    assert contract.labelled_at_column() == raw["label_timestamp_column"]


def test_shipped_config_has_one_date_pair_and_keeps_id_and_timestamp_out_of_features(
    config: PipelineConfig,
) -> None:
    contract = config.dataset
    assert len(contract.names_with_role("birth_date")) == 1
    assert len(contract.names_with_role("event_date")) == 1
    assert contract.names_with_role("categorical")
    assert contract.names_with_role("numeric")
    for column in (contract.id_column, contract.timestamp_column, contract.target_column):
        assert column not in contract.feature_names()
    types = contract.column_types()
    assert types[contract.id_column] == "integer"
    assert types[contract.timestamp_column] == "timestamp"


def test_shipped_expectation_suite_exists_and_names_the_contract_columns(config: PipelineConfig) -> None:
    suite_path = config.dataset.expectation_suite
    assert suite_path.is_absolute()
    assert suite_path.is_file()
    suite = json.loads(suite_path.read_text())
    column_sets = [
        e["kwargs"]["column_set"] for e in suite["expectations"] if e["type"] == "expect_table_columns_to_match_set"
    ]
    assert column_sets, "the suite should pin the table's columns"
    assert set(column_sets[0]) == set(config.dataset.columns())


def test_shipped_policies_are_usable(config: PipelineConfig) -> None:
    raw = shipped_raw()
    assert 0.0 < config.training.holdout_fraction < 1.0
    assert set(config.training.families) == set(raw["training"]["families"])
    assert config.promotion.metric == "rmse"
    assert config.promotion.margin == raw["promotion"]["margin"]


def test_a_variant_identical_to_the_shipped_file_loads_the_same(tmp_path: Path, config: PipelineConfig) -> None:
    variant = load_config(write_variant(tmp_path, lambda raw: None))
    assert variant.training == config.training
    assert variant.promotion == config.promotion
    assert variant.dataset.features == config.dataset.features


# --- refused variants ----------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_config(missing)


@pytest.mark.parametrize("section", ["dataset", "training", "promotion"])
def test_missing_section_is_named(tmp_path: Path, section: str) -> None:
    path = write_variant(tmp_path, lambda raw: raw.pop(section))
    with pytest.raises(ConfigError, match=quoted(section)):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("dataset", "table"),
        ("dataset", "id_column"),
        ("dataset", "timestamp_column"),
        ("dataset", "target_column"),
        ("dataset", "expectation_suite"),
        ("dataset", "features"),
        ("training", "seed"),
        ("training", "holdout_fraction"),
        ("training", "cv_folds"),
        ("training", "families"),
        ("promotion", "metric"),
    ],
)
def test_missing_key_is_named(tmp_path: Path, section: str, key: str) -> None:
    path = write_variant(tmp_path, lambda raw: raw[section].pop(key))
    with pytest.raises(ConfigError, match=quoted(key)):
        load_config(path)


@pytest.mark.parametrize("key", ["min_r2", "margin", "confidence", "slice_tolerance", "prediction_range"])
def test_a_missing_promotion_threshold_loads_but_is_reported_missing(tmp_path: Path, key: str) -> None:
    """Thresholds are not defaulted: a missing one loads as None, and promotion fails closed on it."""
    config = load_config(write_variant(tmp_path, lambda raw: raw["promotion"].pop(key)))
    assert config.promotion.missing_thresholds() == [key]


def test_key_set_to_null_counts_as_missing(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw["training"].update(seed=None))
    with pytest.raises(ConfigError, match=quoted("seed")):
        load_config(path)


def test_feature_without_role_is_named(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: feature_named(raw, "bmi").pop("role"))
    with pytest.raises(ConfigError, match=quoted("role")):
        load_config(path)


def test_bad_role_names_the_role_and_the_feature(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: feature_named(raw, "bmi").update(role="ordinal"))
    with pytest.raises(ConfigError, match=quoted("ordinal")) as caught:
        load_config(path)
    assert "bmi" in str(caught.value)


def test_bad_type_names_the_type_and_the_feature(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: feature_named(raw, "tc").update(type="decimal"))
    with pytest.raises(ConfigError, match=quoted("decimal")) as caught:
        load_config(path)
    assert "tc" in str(caught.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_holdout_fraction_outside_the_open_unit_interval_is_refused(tmp_path: Path, fraction: float) -> None:
    path = write_variant(tmp_path, lambda raw: raw["training"].update(holdout_fraction=fraction))
    with pytest.raises(ConfigError, match="holdout_fraction") as caught:
        load_config(path)
    assert str(fraction) in str(caught.value)


def test_holdout_fraction_just_inside_the_interval_loads(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw["training"].update(holdout_fraction=0.999))
    assert load_config(path).training.holdout_fraction == 0.999


def test_empty_families_is_refused(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw["training"].update(families={}))
    with pytest.raises(ConfigError, match="families"):
        load_config(path)


@pytest.mark.parametrize("rows", [0, 9])
def test_search_max_rows_too_small_for_the_folds_is_refused(tmp_path: Path, rows: int) -> None:
    path = write_variant(tmp_path, lambda raw: raw["training"].update(search_max_rows=rows, cv_folds=5))
    with pytest.raises(ConfigError, match="search_max_rows must be at least 2 x cv_folds") as caught:
        load_config(path)
    assert f"got {rows}" in str(caught.value)


def test_search_max_rows_left_out_means_every_row(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw["training"].pop("search_max_rows"))
    assert load_config(path).training.search_max_rows is None
    assert load_config(write_variant(tmp_path, lambda raw: None)).training.search_max_rows == 200_000


def test_drift_min_rows_left_out_is_the_studied_default(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw["monitoring"]["drift"].pop("min_rows"))
    assert load_config(path).monitoring.drift.min_rows == DEFAULT_DRIFT_MIN_ROWS == 30


def test_drift_min_rows_under_one_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw["monitoring"]["drift"].update(min_rows=0))
    with pytest.raises(ConfigError, match="monitoring.drift.min_rows must be at least 1, got 0"):
        load_config(path)


def test_interval_conditional_on_names_a_promotion_slice(tmp_path: Path) -> None:
    assert load_config(write_variant(tmp_path, lambda raw: None)).serving.interval_conditional_on is None
    path = write_variant(tmp_path, lambda raw: raw["serving"].update(interval_conditional_on="age"))
    assert load_config(path).serving.interval_conditional_on == "age"


@pytest.mark.parametrize("value", ["region", 3])
def test_interval_conditional_on_outside_the_slices_is_refused_naming_the_key(tmp_path: Path, value: Any) -> None:
    path = write_variant(tmp_path, lambda raw: raw["serving"].update(interval_conditional_on=value))
    with pytest.raises(ConfigError, match="serving.interval_conditional_on"):
        load_config(path)


def test_unsupported_metric_is_named(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw["promotion"].update(metric="mae"))
    with pytest.raises(ConfigError, match=quoted("mae")):
        load_config(path)


@pytest.mark.parametrize("role", ["birth_date", "event_date"])
def test_only_one_of_the_date_pair_is_refused(tmp_path: Path, role: str) -> None:
    path = write_variant(tmp_path, drop_role(role))
    with pytest.raises(ConfigError, match="birth_date") as caught:
        load_config(path)
    assert "event_date" in str(caught.value)


def test_two_date_pairs_are_refused(tmp_path: Path) -> None:
    def add_second_pair(raw: dict[str, Any]) -> None:
        raw["dataset"]["features"] += [
            {"name": "mother_birth_date", "role": "birth_date", "type": "date"},
            {"name": "followup_date", "role": "event_date", "type": "date"},
        ]
    with pytest.raises(ConfigError, match="birth_date"):
        load_config(write_variant(tmp_path, add_second_pair))


def suite_without(tmp_path: Path, columns: set[str]) -> str:
    """The shipped suite without the expectations on `columns`, written beside the variant."""
    suite = json.loads((PROJECT_ROOT / "expectations" / "patient_records.json").read_text())
    suite["expectations"] = [e for e in suite["expectations"] if not set(suite_columns(e)) & columns]
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(suite))
    return str(path)


def test_neither_date_role_is_accepted(tmp_path: Path) -> None:
    def drop_both(raw: dict[str, Any]) -> None:
        drop_role("birth_date")(raw)
        drop_role("event_date")(raw)
        raw["promotion"]["slices"] = [s for s in raw["promotion"]["slices"] if s["column"] != "age_years"]
        raw["dataset"]["expectation_suite"] = suite_without(tmp_path, {"birth_date", "visit_date"})
    contract = load_config(write_variant(tmp_path, drop_both)).dataset
    assert contract.names_with_role("birth_date") == contract.names_with_role("event_date") == []


# --- values of the wrong kind are ConfigErrors naming the key --------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "holdout_fraction", "a fifth"),
        ("training", "seed", "forty-two"),
        ("promotion", "min_r2", "high"),
        ("training", "families", ["ridge", "random_forest"]),
    ],
)
def test_value_of_the_wrong_kind_is_a_config_error_naming_the_key(
    tmp_path: Path, section: str, key: str, value: Any
) -> None:
    path = write_variant(tmp_path, lambda raw: raw[section].update({key: value}))
    with pytest.raises(ConfigError, match=quoted(key)):
        load_config(path)


def test_a_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("- dataset\n- training\n")
    with pytest.raises(ConfigError, match=quoted("dataset")):
        load_config(path)


# --- every column a key names is a contract column --------------------------------------------------


def rename_feature(old: str, new: str) -> Mutation:
    """Rename a column in `dataset:` only, as a user pointing the pipeline at another table would."""
    def mutate(raw: dict[str, Any]) -> None:
        feature_named(raw, old)["name"] = new
        raw["dataset"]["expectation_suite"] = str(PROJECT_ROOT / "expectations" / "patient_records.json")
    return mutate


@pytest.mark.parametrize(("mutate", "key", "column"), [
    (lambda raw: raw["promotion"]["slices"].append({"name": "x", "column": "bmii"}), "promotion.slices[3].column", "bmii"),
    (lambda raw: raw["promotion"]["behaviour"]["directions"].update(glucse=5), "promotion.behaviour.directions.glucse", "glucse"),
    (lambda raw: raw["promotion"]["behaviour"]["directions"].update(sex=1), "promotion.behaviour.directions.sex", "sex"),
    (lambda raw: raw["promotion"]["slices"].append({"name": "s", "column": "sex", "edges": [1]}), "promotion.slices[3].edges", "sex"),
])
def test_every_column_naming_key_is_checked_against_the_contract(tmp_path: Path, mutate: Mutation, key: str,
                                                                   column: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key) + ".*" + quoted(column)):
        load_config(write_variant(tmp_path, mutate))


def test_renaming_a_column_in_dataset_alone_is_refused_where_it_is_still_named(tmp_path: Path) -> None:
    """The first real table: `dataset:` changed, the slices still name the demo's column."""
    with pytest.raises(ConfigError, match=r"promotion\.slices\[2\]\.column: 'bmi'"):
        load_config(write_variant(tmp_path, rename_feature("bmi", "body_mass")))


def test_the_derived_age_column_can_be_sliced_only_with_its_date_pair(config: PipelineConfig) -> None:
    assert "age_years" in config.dataset.monitored_columns()
    assert [s.column for s in config.promotion.slices] == ["sex", "age_years", "bmi"]


def test_a_suite_expectation_on_a_column_the_contract_lacks_is_refused(tmp_path: Path) -> None:
    suite = json.loads((PROJECT_ROOT / "expectations" / "patient_records.json").read_text())
    suite["expectations"].append({"type": "expect_column_values_to_be_between",
                                  "kwargs": {"column": "hba1c", "min_value": 3, "max_value": 20}})
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    index = len(suite["expectations"]) - 1

    def mutate(raw: dict[str, Any]) -> None:
        raw["dataset"]["expectation_suite"] = str(tmp_path / "suite.json")
    with pytest.raises(ConfigError, match=rf"expectations\[{index}\] \(expect_column_values_to_be_between\) "
                                          r"names column\(s\) \['hba1c'\]"):
        load_config(write_variant(tmp_path, mutate))


def test_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        feature_named(raw, "ldl")["name"] = "patient_id"
    with pytest.raises(ConfigError, match=r"\['patient_id'\] named twice"):
        load_config(write_variant(tmp_path, mutate))


# --- formats of values held as text --------------------------------------------------------------


@pytest.mark.parametrize(("feature", "entry", "message"), [
    ("bmi", {"format": "%d/%m/%Y"}, "'format' is for date and timestamp columns"),
    ("visit_date", {"decimal": ","}, "'decimal' is for float and integer columns"),
    ("bmi", {"decimal": ";"}, "decimal mark ';' is not one of"),
    ("visit_date", {"format": "dd/mm/yyyy"}, "has no strftime directive"),
    ("visit_date", {"fromat": "%d/%m/%Y"}, r"unknown key\(s\) \['fromat'\]"),
])
def test_a_declared_format_must_fit_its_column(tmp_path: Path, feature: str, entry: dict[str, str],
                                               message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_variant(tmp_path, lambda raw: feature_named(raw, feature).update(entry)))


def test_declared_formats_are_kept_per_column(tmp_path: Path) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        feature_named(raw, "visit_date")["format"] = "%d/%m/%Y"
        feature_named(raw, "bmi")["decimal"] = ","
        raw["dataset"]["target_decimal"] = "."
    contract = load_config(write_variant(tmp_path, mutate)).dataset
    assert contract.column_formats() == {"visit_date": "%d/%m/%Y", "bmi": ",", "progression_12m": "."}


# --- model names ---------------------------------------------------------------------------------


def test_the_model_name_defaults_and_must_fit_a_dag_id(tmp_path: Path) -> None:
    assert load_config(write_variant(tmp_path, lambda raw: raw.pop("model", None))).model == "diabetes_progression"
    assert load_config(write_variant(tmp_path, lambda raw: raw.update(model="clinic_2"))).model == "clinic_2"
    with pytest.raises(ConfigError, match="model 'Clinic Export' must be lower-case"):
        load_config(write_variant(tmp_path, lambda raw: raw.update(model="Clinic Export")))


def test_each_model_config_gets_its_own_dag_ids_and_run_ids(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "clinic.yaml").write_text("model: clinic\n")
    entries = model_entries(SHIPPED, models)
    assert [(e.name, e.dag_id("retrain"), e.run_id("manual__1")) for e in entries] == [
        ("diabetes_progression", "retrain", "manual__1"), ("clinic", "retrain__clinic", "clinic:manual__1")]
    (models / "again.yaml").write_text("model: clinic\n")
    with pytest.raises(ConfigError, match=r"clinic.yaml: model .clinic. is already named by .*again.yaml"):
        model_entries(SHIPPED, models)
    assert [e.name for e in model_entries(SHIPPED, tmp_path / "absent")] == ["diabetes_progression"]


# --- ranges, and values that are no numbers --------------------------------------------------------


def set_key(path: str, value: Any) -> Mutation:
    """Set a dotted key path of the raw config."""
    def mutate(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    return mutate


@pytest.mark.parametrize(("path", "value", "message"), [
    ("promotion.confidence", 1.5, "promotion.confidence must be between 0 and 1, both excluded, got 1.5"),
    ("promotion.bootstrap_samples", 0, "promotion.bootstrap_samples must be at least 100, got 0"),
    ("promotion.margin", -1, "promotion.margin must be between 0 and 0.5 (0.01 means 1 %), got -1.0"),
    ("promotion.margin", ".nan", "'margin' must be a number, got '.nan'"),
    ("promotion.prediction_range", ["zero", 500], "promotion.prediction_range must be a number, got 'zero'"),
    ("promotion.prediction_range", [500, 0], "prediction_range must be [low, high] with low < high, got [500.0, 0.0]"),
    ("promotion.behaviour.directions", {"bmi": "up"}, "promotion.behaviour.directions.bmi must be a number, got 'up'"),
    ("promotion.behaviour.directions", {"bmi": -10}, "promotion.behaviour.directions.bmi must be more than 0, got -10.0"),
    ("quality.max_quarantine_share", "lots", "'max_quarantine_share' must be a number, got 'lots'"),
    ("training.cv_folds", 1, "training.cv_folds must be at least 2, got 1"),
    ("training.families", {"ridge": {}, "xgboost": {}}, "unknown model family ['xgboost']"),
    ("monitoring.drift.p_value", 0, "monitoring.drift.p_value must be between 0 and 1, both excluded, got 0.0"),
    ("monitoring.poll_seconds", True, "'poll_seconds' must be a number, got True"),
])
def test_out_of_range_and_non_numeric_values_are_refused_by_key(tmp_path: Path, path: str, value: Any,
                                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write_variant(tmp_path, set_key(path, value)))


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: x\ndataset:\n  table: [a\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line 4, column 1: expected ',' or ']'"):
        load_config(path)


def test_check_config_runs_the_checks_alone_without_a_database(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "pipeline", "check-config", "--json"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, ENV_DATABASE_URL: "postgresql://x@127.0.0.1:1/none"})
    assert good.returncode == 0, good.stderr
    checked = json.loads(good.stdout)
    assert {k: checked[k] for k in ("config", "model", "ok")} == {"config": str(SHIPPED), "model": "diabetes_progression",
                                                                  "ok": True}
    assert checked["source"]["checked"] is False  # the database cannot be reached: said, not failed
    assert checked["source"]["why"].startswith("database postgresql://x@127.0.0.1:1/none (PIPELINE_DATABASE_URL): ")
    # which key manager, and whether it opens (a key file not made yet is said, never made by a check)
    assert {k: checked["keys"][k] for k in ("encrypt_at_rest", "manager", "opened")} == {
        "encrypt_at_rest": True, "manager": "local", "opened": True}
    hsm = write_variant(tmp_path, lambda raw: raw.update(security={"key_manager": "pkcs11", "pkcs11": {
        "module": str(tmp_path / "no-such-module.so"), "token_label": "pipeline"}}))
    down = subprocess.run([sys.executable, "-m", "pipeline", "--config", str(hsm), "check-config"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, ENV_DATABASE_URL: "postgresql://x@127.0.0.1:1/none",
                               "PIPELINE_PKCS11_PIN": "1234"})
    assert down.returncode == 0, down.stderr
    assert (f"key manager pkcs11 (pkcs11:pipeline@{tmp_path / 'no-such-module.so'}): CANNOT BE OPENED: PKCS#11 module "
            f"{tmp_path / 'no-such-module.so'}, token 'pipeline' cannot be opened") in down.stdout, down.stdout
    bad = write_variant(tmp_path, set_key("promotion.confidence", 1.5))
    refused = subprocess.run([sys.executable, "-m", "pipeline", "--config", str(bad), "check-config"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: {bad}: promotion.confidence must be between 0 and 1, both excluded, got 1.5"


def test_ids_are_integers_unless_declared_text(tmp_path: Path, config: PipelineConfig) -> None:
    assert config.dataset.column_types()["patient_id"] == "integer"
    declared = load_config(write_variant(tmp_path, set_key("dataset.id_type", "text"))).dataset
    assert declared.column_types()["patient_id"] == "text"
    with pytest.raises(ConfigError, match=r"dataset\.id_type: 'uuid' is not one of \('integer', 'text'\)"):
        load_config(write_variant(tmp_path, set_key("dataset.id_type", "uuid")))


def test_database_timeouts_default_and_are_checked(tmp_path: Path, config: PipelineConfig) -> None:
    assert (config.database.connect_timeout_seconds, config.database.statement_timeout_seconds,
            config.database.lock_timeout_seconds) == (10, 900, 60)
    assert load_config(write_variant(tmp_path, lambda raw: raw.pop("database"))).database == DatabasePolicy()
    with pytest.raises(ConfigError, match=r"database\.lock_timeout_seconds must be at least 1 \(seconds\), got 0"):
        load_config(write_variant(tmp_path, set_key("database.lock_timeout_seconds", 0)))
    with pytest.raises(ConfigError, match=r"database: unknown key\(s\) \['timeout'\]"):
        load_config(write_variant(tmp_path, set_key("database.timeout", 5)))


def test_alerts_are_off_by_default_and_checked_key_by_key(tmp_path: Path) -> None:
    shipped = load_config(PROJECT_ROOT / "pipeline.yaml").alerts
    assert not shipped.enabled and "failed_run" in shipped.events

    def alerting(raw: dict[str, Any]) -> None:
        raw["alerts"] = {"webhook_url": "https://hooks.example.org/x", "events": ["failed_run", "new_champion"],
                         "email": {"smtp_host": "smtp.example.org", "smtp_port": 587, "starttls": True,
                                   "sender": "p@example.org", "recipients": ["ops@example.org"]}}

    policy = load_config(write_variant(tmp_path, alerting)).alerts
    assert policy.enabled and policy.events == ("failed_run", "new_champion")
    assert policy.email is not None and (policy.email.smtp_port, policy.email.starttls) == (587, True)

    for change, message in (
        ({"webhook": "https://x"}, r"alerts: unknown key\(s\) \['webhook'\]"),
        ({"events": ["drift"]}, r"alerts.events must be a list of"),
        ({"webhook_url": "ftp://x"}, r"alerts.webhook_url must be an http\(s\) URL"),
        ({"email": {"smtp_host": "h", "sender": "s", "recipients": ["a@b"], "tls": True}},
         r"alerts.email: unknown key\(s\) \['tls'\]"),
        ({"email": {"smtp_host": "h", "sender": "s", "recipients": "a@b"}}, r"alerts.email.recipients must be a list"),
    ):
        path = write_variant(tmp_path, lambda raw, c=change: raw.update(alerts=c))  # type: ignore[misc]
        with pytest.raises(ConfigError, match=message):
            load_config(path)


# --- security: encryption at rest and its key manager -------------------------------------------------------


def test_security_defaults_to_encryption_on_with_the_local_key_file() -> None:
    security = load_config(SHIPPED).security
    assert security.encrypt_at_rest is True and security.key_manager == "local" and security.pkcs11 is None


@pytest.mark.parametrize(("section", "refused"), [
    ({"encrypt_at_rest": True, "key_manger": "local"}, r"security: unknown key\(s\) \['key_manger'\]"),
    ({"encrypt_at_rest": "yes"}, r"security.encrypt_at_rest must be true or false, got 'yes'"),
    ({"key_manager": "kmip"}, r"security.key_manager must be one of \['local', 'pkcs11'\], got 'kmip'"),
    ({"key_manager": "pkcs11"}, r"key_manager is pkcs11 but security.pkcs11 \(module, token_label\) is missing"),
    ({"key_manager": "pkcs11", "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so"}},
     r"security.pkcs11: missing required key 'token_label'"),
    ({"key_manager": "pkcs11", "pkcs11": {"module": "m.so", "token_label": "t", "slot": 0}},
     r"security.pkcs11: unknown key\(s\) \['slot'\]"),
    ({"key_manager": "pkcs11", "pkcs11": {"module": "m.so", "token_label": "t", "pin": "1234"}},
     r"security.pkcs11.pin: a PIN is never written in the configuration"),
])
def test_a_bad_security_section_is_refused_by_name(tmp_path: Path, section: dict[str, Any], refused: str) -> None:
    path = write_variant(tmp_path, lambda raw: raw.update(security=section))
    with pytest.raises(ConfigError, match=refused):
        load_config(path)


def test_security_paths_are_read_from_the_config_files_folder(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda raw: raw.update(security={
        "key_manager": "pkcs11", "key_file": "keys/master.key",
        "pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "pipeline", "pin_file": "hsm-pin"}}))
    security = load_config(path).security
    assert security.key_file == tmp_path / "keys" / "master.key"
    assert security.pkcs11 is not None and security.pkcs11.pin_file == tmp_path / "hsm-pin"
    assert security.pkcs11.pin_env == "PIPELINE_PKCS11_PIN" and security.pkcs11.token_label == "pipeline"
