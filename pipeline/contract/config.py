"""The dataset contract and the training / promotion policy, read from one YAML file."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

FEATURE_ROLES = ("numeric", "categorical", "birth_date", "event_date")
COLUMN_TYPES = ("float", "integer", "text", "date", "timestamp")
FEATURE_KEYS = {"name", "role", "type", "format", "decimal"}
ID_TYPES = ("integer", "text")
AGE_COLUMN = "age_years"  # derived inside the model from the birth_date / event_date pair
DEFAULT_MODEL = "diabetes_progression"
MODEL_FAMILIES = ("ridge", "random_forest", "hist_gradient_boosting")  # what pipeline.model.train can build
MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # it becomes part of DAG ids and asset names
SUITE_COLUMN_KEYS = ("column", "column_A", "column_B", "column_list", "column_set")
DEFAULT_AGE_AT_EVENT_YEARS = (0.0, 120.0)  # quality.age_at_event_years left out: any human age


class ConfigError(ValueError):
    """The configuration file is missing a key or holds a value the pipeline cannot use."""


DECIMAL_MARKS = (".", ",")  # a number held as text declares which one it uses; thousands separators never pass


@dataclass(frozen=True)
class Feature:
    name: str
    role: str
    type: str
    format: str | None = None  # date / timestamp held as text: its strftime pattern, e.g. "%d/%m/%Y"
    decimal: str | None = None  # float / integer held as text: its decimal mark, "." or ","


@dataclass(frozen=True)
class DatasetContract:
    table: str
    id_column: str
    timestamp_column: str
    target_column: str
    target_type: str
    features: tuple[Feature, ...]
    expectation_suite: Path
    target_decimal: str | None = None  # the target held as text: its decimal mark
    id_type: str = "integer"  # or "text", for ids such as 'P-0001'
    # When the target became known (an outcome filled in a year later). None: a row's label counts as
    # known when the row was recorded (timestamp_column), so a late UPDATE of the target goes unseen.
    label_timestamp_column: str | None = None

    def columns(self) -> list[str]:
        """Every column the pipeline reads, in snapshot order."""
        label_time = [self.label_timestamp_column] if self.label_timestamp_column else []
        return [self.id_column, *self.feature_names(), self.target_column, self.timestamp_column, *label_time]

    def labelled_at_column(self) -> str:
        """The column that says when a row's label became known: the label timestamp, else the record time."""
        return self.label_timestamp_column or self.timestamp_column

    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def names_with_role(self, role: str) -> list[str]:
        return [f.name for f in self.features if f.role == role]

    def column_types(self) -> dict[str, str]:
        """Contract type of every column, keyed by column name."""
        types = {f.name: f.type for f in self.features}
        types[self.id_column] = self.id_type
        types[self.target_column] = self.target_type
        types[self.timestamp_column] = "timestamp"
        if self.label_timestamp_column:
            types[self.label_timestamp_column] = "timestamp"
        return types

    def derived_columns(self) -> list[str]:
        """Columns the model computes from others: age in years from the birth and event dates."""
        return [AGE_COLUMN] if self.names_with_role("birth_date") and self.names_with_role("event_date") else []

    def monitored_columns(self) -> list[str]:
        """The features as the model sees them: numerics, categoricals, and derived columns."""
        return self.names_with_role("numeric") + self.names_with_role("categorical") + self.derived_columns()

    def column_formats(self) -> dict[str, str]:
        """The declared text format of each column that has one: a strftime pattern for a date or
        timestamp, the decimal mark for a number. A text cell is only ever read by its declared format."""
        formats = {f.name: f.format or f.decimal for f in self.features if f.format or f.decimal}
        if self.target_decimal:
            formats[self.target_column] = self.target_decimal
        return {k: str(v) for k, v in formats.items()}


@dataclass(frozen=True)
class TrainingPolicy:
    seed: int
    holdout_fraction: float
    cv_folds: int
    n_jobs: int | None  # threads per pool of a task; None: the worker's cores // its task slots (pipeline.runtime.threads)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    search_budget_seconds: float | None = None  # no CV fold of a later family may end past this
    search_max_rows: int | None = None  # cross-validate on a seeded sample of at most this many rows


@dataclass(frozen=True)
class SliceSpec:
    name: str
    column: str  # a feature, or age_years (derived from the date pair)
    edges: tuple[float, ...] = ()  # numeric bands; empty: one slice per category


@dataclass(frozen=True)
class PromotionPolicy:
    """Promotion thresholds. A None threshold is not a default: promotion fails closed on it."""

    metric: str
    min_r2: float | None
    margin: float | None
    confidence: float | None = None
    bootstrap_samples: int = 2000
    slice_tolerance: float | None = None
    min_slice_rows: int = 10
    slices: tuple[SliceSpec, ...] = ()
    prediction_range: tuple[float, float] | None = None
    directions: dict[str, float] = field(default_factory=dict)  # feature -> increase that must not lower the prediction
    max_drop: float | None = None

    def missing_thresholds(self) -> list[str]:
        """Names of the thresholds promotion needs that are not configured."""
        needed = {"min_r2": self.min_r2, "margin": self.margin, "confidence": self.confidence,
                  "slice_tolerance": self.slice_tolerance, "prediction_range": self.prediction_range,
                  "max_drop": self.max_drop}
        return [name for name, value in needed.items() if value is None]


# The false-alarm study (README, "Drift"; pipeline.monitoring.drift_study): with the size-and-significance rule,
# clean windows of 30 rows raise an alarm in under 1 % of windows (0.4 %), and a bmi shift of +4 is seen in 86 % of
# them (99.8 % at 60 rows): the smallest window whose alarms can be believed.
DEFAULT_DRIFT_MIN_ROWS = 30


@dataclass(frozen=True)
class DriftPolicy:
    psi_moderate: float
    psi_major: float
    p_value: float
    bins: int
    min_rows: int


@dataclass(frozen=True)
class PerformancePolicy:
    """When the champion's live performance (forecasts judged on outcomes that arrived) counts as degraded.
    A threshold left out disables the performance trigger (with a warning); the report is still made."""

    max_ratio: float | None = None  # degraded: live RMSE > holdout RMSE x this ...
    min_outcomes: int | None = None  # ... on at least this many judged forecasts ...
    confidence: float | None = None  # ... and the bootstrap interval of the ratio lies above max_ratio
    bootstrap_samples: int = 2000

    def missing_thresholds(self) -> list[str]:
        needed = {"max_ratio": self.max_ratio, "min_outcomes": self.min_outcomes, "confidence": self.confidence}
        return [name for name, value in needed.items() if value is None]


@dataclass(frozen=True)
class MonitoringPolicy:
    min_new_rows: int
    poll_seconds: float
    drift: DriftPolicy
    performance: PerformancePolicy = field(default_factory=PerformancePolicy)


@dataclass(frozen=True)
class QualityPolicy:
    max_quarantine_share: float
    # Plausible age in years at the event (from the birth_date / event_date pair): a row outside is quarantined.
    age_at_event_years: tuple[float, float] = DEFAULT_AGE_AT_EVENT_YEARS


SCORE_RECORDS = ("awaiting_outcome", "all")


@dataclass(frozen=True)
class ServingPolicy:
    """How the champion's forecasts reach the CRM: which records the batch scores, and the interval."""

    interval_coverage: float = 0.9  # share of outcomes a forecast's interval should hold (split conformal)
    score_records: str = "awaiting_outcome"  # the batch scores these: target NULL ('awaiting_outcome') or 'all'
    batch_rows: int = 100_000  # rows per chunk read, checked, scored and written by the batch
    max_request_records: int = 1000  # records one REST request may carry
    max_request_bytes: int = 1_000_000  # bytes one REST request body may carry
    reload_seconds: float = 2.0  # how often the REST service looks for a new champion
    max_shadows: int = 2  # versions the batch also scores in shadow (stored, never shown to the CRM)
    max_pending_forecasts: int = 100_000  # REST forecasts waiting for the database; past this, 503 until written
    cors_origins: tuple[str, ...] = ()  # browser origins the REST API answers (CORS); none: closed
    interval_conditional_on: str | None = None  # a promotion.slices name: calibrate the interval per group (Mondrian)


@dataclass(frozen=True)
class DatabasePolicy:
    """How long the pipeline waits on PostgreSQL before it gives up with an error, in seconds."""

    connect_timeout_seconds: int = 10  # a server that does not answer (down, frozen, unreachable)
    statement_timeout_seconds: int = 900  # one statement: the largest is ingest's COPY (6 s at 10^7 rows)
    lock_timeout_seconds: int = 60  # waiting for a lock: promotion, schema apply, arrival signals


ALERT_EVENTS = ("failed_run", "degraded_champion", "drift_alarm", "refused_promotion", "new_champion")


@dataclass(frozen=True)
class EmailAlerts:
    """Where alert e-mails go: an SMTP server (its password, if any, in PIPELINE_SMTP_PASSWORD), sender, recipients."""

    smtp_host: str
    sender: str
    recipients: tuple[str, ...]
    smtp_port: int = 25
    starttls: bool = False
    username: str | None = None


@dataclass(frozen=True)
class AlertPolicy:
    """Who is told when something happens (`alerts:`): off unless an e-mail or a webhook is set."""

    email: EmailAlerts | None = None
    webhook_url: str | None = None  # a Slack- or Teams-compatible incoming webhook: a JSON POST {"text": ...}
    events: tuple[str, ...] = ALERT_EVENTS
    timeout_seconds: float = 10.0  # one delivery attempt; a failed one is logged, never retried

    @property
    def enabled(self) -> bool:
        return self.email is not None or self.webhook_url is not None


@dataclass(frozen=True)
class ErasurePolicy:
    """A patient's erasure (issue 30): how soon a champion trained on erased rows must be replaced."""

    retrain_within_days: float = 30  # the retrain DAG forces a retrain when the deadline is this near or past
    wait_seconds: int = 900  # how long an erasure waits for the stages at work to end before it fails


KEY_MANAGERS = ("local", "pkcs11")  # pipeline.store.keys: a local key file, or a PKCS#11 token (an HSM, SoftHSM2)
DEFAULT_PIN_ENV = "PIPELINE_PKCS11_PIN"


@dataclass(frozen=True)
class Pkcs11Policy:
    """Where the PKCS#11 token is: the module (the vendor's .so), the token's label, the PIN's source."""

    module: Path
    token_label: str
    pin_file: Path | None = None  # a file holding the user PIN (mode 0600); else the environment variable pin_env
    pin_env: str = DEFAULT_PIN_ENV
    key_label: str = "pipeline-master"  # the master keys on the token are labelled this, then '/' and their id


@dataclass(frozen=True)
class SecurityPolicy:
    """Encryption at rest (issue 30): on by default; which key manager wraps the data keys."""

    encrypt_at_rest: bool = True
    key_manager: str = "local"  # see KEY_MANAGERS
    key_file: Path | None = None  # local: PIPELINE_KEY_FILE wins; neither set: .secrets/master.key
    pkcs11: Pkcs11Policy | None = None


@dataclass(frozen=True)
class PipelineConfig:
    path: Path
    model: str  # the registry, the champion, runs, reports and DAG ids are all scoped by this name
    dataset: DatasetContract
    training: TrainingPolicy
    promotion: PromotionPolicy
    monitoring: MonitoringPolicy
    quality: QualityPolicy
    database: DatabasePolicy = field(default_factory=DatabasePolicy)
    serving: ServingPolicy = field(default_factory=ServingPolicy)
    erasure: ErasurePolicy = field(default_factory=ErasurePolicy)
    alerts: AlertPolicy = field(default_factory=AlertPolicy)
    security: SecurityPolicy = field(default_factory=SecurityPolicy)


def _require(section: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(section).__name__}")
    if key not in section or section[key] is None:
        raise ConfigError(f"{where}: missing required key '{key}'")
    return section[key]


def _number(section: dict[str, Any], key: str, where: str, kind: type[float] | type[int]) -> Any:
    """A required numeric value, or a ConfigError naming the key and the bad value."""
    return _as_number(_require(section, key, where), f"{where}: '{key}'", kind)


def _as_number(value: Any, what: str, kind: type[float] | type[int] = float) -> Any:
    """A finite number (a bool is not one), or a ConfigError naming `what` and the bad value."""
    try:
        if isinstance(value, bool) or not math.isfinite(float(value)):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def _parse_feature(raw: dict[str, Any], index: int, path: Path) -> Feature:
    where = f"{path}: dataset.features[{index}]"
    unknown = sorted(set(raw) - FEATURE_KEYS) if isinstance(raw, dict) else []
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a feature takes {sorted(FEATURE_KEYS)}")
    feature = Feature(
        name=str(_require(raw, "name", where)),
        role=str(_require(raw, "role", where)),
        type=str(_require(raw, "type", where)),
        format=_text(raw, "format"),
        decimal=_text(raw, "decimal"),
    )
    if feature.role not in FEATURE_ROLES:
        raise ConfigError(f"{where} ({feature.name}): role '{feature.role}' is not one of {FEATURE_ROLES}")
    if feature.type not in COLUMN_TYPES:
        raise ConfigError(f"{where} ({feature.name}): type '{feature.type}' is not one of {COLUMN_TYPES}")
    check_text_format(feature.name, feature.type, feature.format, feature.decimal, where)
    return feature


def _id_type(raw: dict[str, Any], where: str) -> str:
    """How ids are read: integers (the default), or text such as 'P-0001'."""
    kind = str(raw.get("id_type") or "integer")
    if kind not in ID_TYPES:
        raise ConfigError(f"{where}.id_type: '{kind}' is not one of {ID_TYPES}")
    return kind


def _text(section: dict[str, Any], key: str) -> str | None:
    """An optional text value: None when the key is absent or empty."""
    return None if section.get(key) is None else str(section[key])


def check_text_format(column: str, kind: str, pattern: str | None, decimal: str | None, where: str) -> None:
    """A format fits its type: a strftime pattern for dates and timestamps, a decimal mark for numbers."""
    if pattern is not None:
        if kind not in ("date", "timestamp"):
            raise ConfigError(f"{where} ({column}): 'format' is for date and timestamp columns; "
                              f"a {kind} column held as text declares its 'decimal' mark instead")
        if "%" not in pattern:
            raise ConfigError(f"{where} ({column}): format {pattern!r} has no strftime directive (e.g. '%d/%m/%Y')")
    if decimal is not None:
        if kind not in ("float", "integer"):
            raise ConfigError(f"{where} ({column}): 'decimal' is for float and integer columns, not {kind}")
        if decimal not in DECIMAL_MARKS:
            raise ConfigError(f"{where} ({column}): decimal mark {decimal!r} is not one of {DECIMAL_MARKS}")


def _parse_dataset(raw: dict[str, Any], path: Path) -> DatasetContract:
    where = f"{path}: dataset"
    features = tuple(
        _parse_feature(f, i, path) for i, f in enumerate(_require(raw, "features", where))
    )
    columns = [str(_require(raw, k, where)) for k in ("id_column", "target_column", "timestamp_column")]
    label_time = _text(raw, "label_timestamp_column")
    names = columns + [f.name for f in features] + ([label_time] if label_time else [])
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ConfigError(f"{where}: column(s) {repeated} named twice among id_column, target_column, "
                          "timestamp_column, label_timestamp_column and features: each column has one role")
    if AGE_COLUMN in [f.name for f in features]:
        raise ConfigError(f"{where}.features: '{AGE_COLUMN}' is derived from the date pair; name the source column otherwise")
    roles = [f.role for f in features]
    if roles.count("birth_date") != roles.count("event_date") or roles.count("birth_date") > 1:
        raise ConfigError(f"{where}: give both a birth_date and an event_date feature, or neither")
    check_text_format(str(raw.get("target_column")), str(raw.get("target_type", "float")), None,
                      _text(raw, "target_decimal"), where)
    return DatasetContract(
        table=str(_require(raw, "table", where)),
        id_column=str(_require(raw, "id_column", where)),
        timestamp_column=str(_require(raw, "timestamp_column", where)),
        target_column=str(_require(raw, "target_column", where)),
        target_type=str(raw.get("target_type", "float")),
        target_decimal=_text(raw, "target_decimal"),
        id_type=_id_type(raw, where),
        label_timestamp_column=label_time,
        features=features,
        expectation_suite=(path.parent / str(_require(raw, "expectation_suite", where))).resolve(),
    )


def _parse_training(raw: dict[str, Any], path: Path) -> TrainingPolicy:
    where = f"{path}: training"
    holdout = _number(raw, "holdout_fraction", where, float)
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"{where}: holdout_fraction must be between 0 and 1, got {holdout}")
    families = _require(raw, "families", where)
    if not isinstance(families, dict) or not all(isinstance(v, dict | None) for v in families.values()):
        raise ConfigError(f"{where}: 'families' must map family names to parameter mappings")
    if not families:
        raise ConfigError(f"{where}: families must name at least one model family")
    unknown = sorted(set(families) - set(MODEL_FAMILIES))
    if unknown:
        raise ConfigError(f"{where}.families: unknown model family {unknown}; use {list(MODEL_FAMILIES)}")
    cv_folds = _number(raw, "cv_folds", where, int)
    max_rows = _optional(raw, "search_max_rows", where, int)
    if max_rows is not None and max_rows < 2 * cv_folds:
        raise ConfigError(f"{where}: search_max_rows must be at least 2 x cv_folds, got {max_rows}")
    return TrainingPolicy(
        seed=_number(raw, "seed", where, int),
        holdout_fraction=holdout,
        cv_folds=cv_folds,
        n_jobs=_optional(raw, "n_jobs", where, int),
        families={str(k): dict(v or {}) for k, v in families.items()},
        search_budget_seconds=_optional(raw, "search_budget_seconds", where, float),
        search_max_rows=max_rows,
    )


def _optional(section: dict[str, Any], key: str, where: str, kind: type[float] | type[int]) -> Any:
    return None if section.get(key) is None else _number(section, key, where, kind)


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _parse_slices(raw: list[Any], where: str) -> tuple[SliceSpec, ...]:
    slices = []
    for i, item in enumerate(raw or []):
        spot = f"{where}.slices[{i}]"
        edges = tuple(_as_number(e, f"{spot}.edges") for e in (item.get("edges") or [])) if isinstance(item, dict) else ()
        slices.append(SliceSpec(str(_require(item, "name", spot)), str(_require(item, "column", spot)), edges))
    return tuple(slices)


def _parse_promotion(raw: dict[str, Any], path: Path) -> PromotionPolicy:
    where = f"{path}: promotion"
    metric = str(_require(raw, "metric", where))
    if metric != "rmse":
        raise ConfigError(f"{where}: metric '{metric}' is not supported; use 'rmse'")
    behaviour = raw.get("behaviour") or {}
    bounds = raw.get("prediction_range")
    if bounds is not None and (not isinstance(bounds, list) or len(bounds) != 2):
        raise ConfigError(f"{where}: prediction_range must be [low, high], got {bounds!r}")
    return PromotionPolicy(
        metric=metric,
        min_r2=_optional(raw, "min_r2", where, float),
        margin=_optional(raw, "margin", where, float),
        confidence=_optional(raw, "confidence", where, float),
        bootstrap_samples=_default(_optional(raw, "bootstrap_samples", where, int), 2000),
        slice_tolerance=_optional(raw, "slice_tolerance", where, float),
        min_slice_rows=_default(_optional(raw, "min_slice_rows", where, int), 10),
        slices=_parse_slices(raw.get("slices") or [], where),
        prediction_range=tuple(_as_number(b, f"{where}.prediction_range") for b in bounds) if bounds else None,
        directions={str(k): _as_number(v, f"{where}.behaviour.directions.{k}")
                    for k, v in (behaviour.get("directions") or {}).items()},
        max_drop=_optional(behaviour, "max_drop", f"{where}.behaviour", float),
    )


def _parse_monitoring(raw: dict[str, Any], path: Path) -> MonitoringPolicy:
    where = f"{path}: monitoring"
    drift_raw = _require(raw, "drift", where)
    where_drift = f"{where}.drift"
    drift = DriftPolicy(
        psi_moderate=_number(drift_raw, "psi_moderate", where_drift, float),
        psi_major=_number(drift_raw, "psi_major", where_drift, float),
        p_value=_number(drift_raw, "p_value", where_drift, float),
        bins=_number(drift_raw, "bins", where_drift, int),
        min_rows=_default(_optional(drift_raw, "min_rows", where_drift, int), DEFAULT_DRIFT_MIN_ROWS),
    )
    if not 0 < drift.psi_moderate <= drift.psi_major:
        raise ConfigError(f"{where_drift}: need 0 < psi_moderate <= psi_major")
    min_new_rows = _number(raw, "min_new_rows", where, int)
    if min_new_rows < 1:
        raise ConfigError(f"{where}: min_new_rows must be at least 1, got {min_new_rows}")
    return MonitoringPolicy(min_new_rows, _number(raw, "poll_seconds", where, float), drift,
                            _parse_performance(raw.get("performance") or {}, f"{where}.performance"))


def _parse_performance(raw: dict[str, Any], where: str) -> PerformancePolicy:
    """The optional `monitoring.performance:` section; a threshold left out disables the trigger."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - {f.name for f in fields(PerformancePolicy)})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {[f.name for f in fields(PerformancePolicy)]}")
    return PerformancePolicy(
        max_ratio=_optional(raw, "max_ratio", where, float),
        min_outcomes=_optional(raw, "min_outcomes", where, int),
        confidence=_optional(raw, "confidence", where, float),
        bootstrap_samples=_default(_optional(raw, "bootstrap_samples", where, int), 2000),
    )


def _parse_database(raw: dict[str, Any], path: Path) -> DatabasePolicy:
    """The optional `database:` section: each timeout at least 1 s; a key left out keeps its default."""
    where, defaults = f"{path}: database", DatabasePolicy()
    unknown = sorted(set(raw) - set(DatabasePolicy.__dataclass_fields__)) if isinstance(raw, dict) else []
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; it takes {sorted(DatabasePolicy.__dataclass_fields__)}")
    values = {key: _default(_optional(raw, key, where, int), getattr(defaults, key))
              for key in DatabasePolicy.__dataclass_fields__}
    for key, value in values.items():
        if value < 1:
            raise ConfigError(f"{where}.{key} must be at least 1 (seconds), got {value}")
    return DatabasePolicy(**values)


def _parse_quality(raw: dict[str, Any], path: Path) -> QualityPolicy:
    where = f"{path}: quality"
    share = _number(raw, "max_quarantine_share", where, float)
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"{where}: max_quarantine_share must be between 0 and 1, got {share}")
    return QualityPolicy(share, _age_bounds(raw.get("age_at_event_years"), path))


def _age_bounds(bounds: Any, path: Path) -> tuple[float, float]:
    """quality.age_at_event_years: [low, high] in years with 0 <= low < high, or the default when left out."""
    key = f"{path}: quality.age_at_event_years"
    if bounds is None:
        return DEFAULT_AGE_AT_EVENT_YEARS
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ConfigError(f"{key} must be [low, high] in years, got {bounds!r}")
    low, high = (_as_number(b, key) for b in bounds)
    if not 0 <= low < high:
        raise ConfigError(f"{key} must be [low, high] with 0 <= low < high, got {bounds!r}")
    return float(low), float(high)


def _parse_serving(raw: dict[str, Any], path: Path) -> ServingPolicy:
    where = f"{path}: serving"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    defaults = ServingPolicy()
    unknown = sorted(set(raw) - {f.name for f in fields(ServingPolicy)})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {[f.name for f in fields(ServingPolicy)]}")
    records = raw.get("score_records", defaults.score_records)
    if records not in SCORE_RECORDS:
        raise ConfigError(f"{where}.score_records must be one of {list(SCORE_RECORDS)}, got {records!r}")
    numbers = {name: _as_number(raw.get(name, getattr(defaults, name)), f"{where}.{name}")
               for name in ("interval_coverage", "batch_rows", "max_request_records", "max_request_bytes",
                            "reload_seconds", "max_shadows", "max_pending_forecasts")}
    return ServingPolicy(interval_coverage=float(numbers["interval_coverage"]), score_records=str(records),
                         batch_rows=int(numbers["batch_rows"]), max_request_records=int(numbers["max_request_records"]),
                         max_request_bytes=int(numbers["max_request_bytes"]),
                         reload_seconds=float(numbers["reload_seconds"]), max_shadows=int(numbers["max_shadows"]),
                         max_pending_forecasts=int(numbers["max_pending_forecasts"]),
                         cors_origins=_origins(raw.get("cors_origins", []), f"{where}.cors_origins"),
                         interval_conditional_on=_conditional_on(raw.get("interval_conditional_on"), where))


def _known_keys(raw: Any, known: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return raw


def _parse_pkcs11(raw: Any, path: Path) -> Pkcs11Policy:
    """`security.pkcs11`: the module and token are required; the PIN is never written here."""
    where = f"{path}: security.pkcs11"
    if isinstance(raw, dict) and "pin" in raw:
        raise ConfigError(f"{where}.pin: a PIN is never written in the configuration; put it in a file named by "
                          f"pin_file (mode 0600) or in the environment variable named by pin_env ({DEFAULT_PIN_ENV})")
    raw = _known_keys(raw, [f.name for f in fields(Pkcs11Policy)], where)
    pin_file = raw.get("pin_file")
    return Pkcs11Policy(module=Path(str(_require(raw, "module", where))),
                        token_label=str(_require(raw, "token_label", where)),
                        pin_file=None if pin_file is None else (path.parent / str(pin_file)).resolve(),
                        pin_env=str(raw.get("pin_env") or DEFAULT_PIN_ENV),
                        key_label=str(raw.get("key_label") or Pkcs11Policy.key_label))


def _parse_security(raw: Any, path: Path) -> SecurityPolicy:
    """The optional `security:` section; a relative key_file is read from the configuration file's folder."""
    where = f"{path}: security"
    raw = _known_keys(raw, [f.name for f in fields(SecurityPolicy)], where)
    encrypt = raw.get("encrypt_at_rest", True)
    if not isinstance(encrypt, bool):
        raise ConfigError(f"{where}.encrypt_at_rest must be true or false, got {encrypt!r}")
    manager = raw.get("key_manager", "local")
    if manager not in KEY_MANAGERS:
        raise ConfigError(f"{where}.key_manager must be one of {list(KEY_MANAGERS)}, got {manager!r}")
    pkcs11 = None if raw.get("pkcs11") is None else _parse_pkcs11(raw["pkcs11"], path)
    if manager == "pkcs11" and pkcs11 is None:
        raise ConfigError(f"{where}: key_manager is pkcs11 but security.pkcs11 (module, token_label) is missing")
    key_file = raw.get("key_file")
    return SecurityPolicy(encrypt_at_rest=encrypt, key_manager=manager, pkcs11=pkcs11,
                          key_file=None if key_file is None else (path.parent / str(key_file)).resolve())


def _parse_alerts(raw: Any, path: Path) -> AlertPolicy:
    where = f"{path}: alerts"
    raw = _known_keys(raw, ("email", "webhook_url", "events", "timeout_seconds"), where)
    events = raw.get("events", list(ALERT_EVENTS))
    if not isinstance(events, list) or any(e not in ALERT_EVENTS for e in events):
        raise ConfigError(f"{where}.events must be a list of {list(ALERT_EVENTS)}, got {events!r}")
    url = raw.get("webhook_url")
    if url is not None and not (isinstance(url, str) and re.match(r"https?://\S+$", url)):
        raise ConfigError(f"{where}.webhook_url must be an http(s) URL, got {url!r}")
    timeout = float(_as_number(raw.get("timeout_seconds", 10.0), f"{where}.timeout_seconds"))
    if not timeout > 0:
        raise ConfigError(f"{where}.timeout_seconds must be over 0, got {timeout}")
    email = None if raw.get("email") is None else _parse_email(raw["email"], f"{where}.email")
    return AlertPolicy(email=email, webhook_url=url, events=tuple(events), timeout_seconds=timeout)


def _parse_email(raw: Any, where: str) -> EmailAlerts:
    raw = _known_keys(raw, [f.name for f in fields(EmailAlerts)], where)
    for key in ("smtp_host", "sender"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}.{key} is needed (a text), got {raw.get(key)!r}")
    recipients = raw.get("recipients")
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) and "@" in r
                                                                     for r in recipients):
        raise ConfigError(f"{where}.recipients must be a list of e-mail addresses, got {recipients!r}")
    port = int(_as_number(raw.get("smtp_port", 25), f"{where}.smtp_port", int))
    if not 0 < port < 65536:
        raise ConfigError(f"{where}.smtp_port must be a port number, got {port}")
    starttls = raw.get("starttls", False)
    if not isinstance(starttls, bool):
        raise ConfigError(f"{where}.starttls must be true or false, got {starttls!r}")
    username = raw.get("username")
    return EmailAlerts(smtp_host=raw["smtp_host"], sender=raw["sender"], recipients=tuple(recipients), smtp_port=port,
                       starttls=starttls, username=None if username is None else str(username))


def _origins(raw: Any, key: str) -> tuple[str, ...]:
    """Browser origins such as https://crm.example.org: scheme and host (and port), no path, no wildcard."""
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise ConfigError(f"{key} must be a list of origins such as 'https://crm.example.org', got {raw!r}")
    for origin in raw:
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
            raise ConfigError(f"{key}: {origin!r} is not an origin (scheme://host[:port], no path, no '*')")
    return tuple(raw)

def _conditional_on(value: Any, where: str) -> str | None:
    """`serving.interval_conditional_on`: a slice's name, or left out / null for one interval for all records."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.interval_conditional_on must be the name of one of promotion.slices, got {value!r}")
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path} (set PIPELINE_CONFIG)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections 'dataset', 'training', 'promotion', 'monitoring', 'quality'")
    return raw


def model_name(path: Path, raw: dict[str, Any] | None = None) -> str:
    """The `model:` a configuration file names (default diabetes_progression); reads nothing else."""
    name = str((_read_yaml(path) if raw is None else raw).get("model") or DEFAULT_MODEL)
    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"{path}: model {name!r} must be lower-case letters, digits and _ (at most 40, "
                          "starting with a letter): it becomes part of DAG ids")
    return name


def _parse_erasure(raw: dict[str, Any], path: Path) -> ErasurePolicy:
    """The optional `erasure:` section; a key left out keeps its default."""
    where, defaults = f"{path}: erasure", ErasurePolicy()
    unknown = sorted(set(raw) - set(ErasurePolicy.__dataclass_fields__)) if isinstance(raw, dict) else []
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; it takes {sorted(ErasurePolicy.__dataclass_fields__)}")
    days = _default(_optional(raw, "retrain_within_days", where, float), defaults.retrain_within_days)
    wait = _default(_optional(raw, "wait_seconds", where, int), defaults.wait_seconds)
    if not days > 0:
        raise ConfigError(f"{where}.retrain_within_days must be more than 0 (days), got {days!r}")
    if wait < 1:
        raise ConfigError(f"{where}.wait_seconds must be at least 1 (seconds), got {wait!r}")
    return ErasurePolicy(float(days), wait)


def load_config(path: Path) -> PipelineConfig:
    """Read and check the pipeline configuration file, and every column it names against the contract."""
    raw = _read_yaml(path)
    for section in ("dataset", "training", "promotion", "monitoring", "quality"):
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"{path}: missing section '{section}'")
    config = PipelineConfig(
        path=path.resolve(),
        model=model_name(path, raw),
        dataset=_parse_dataset(raw["dataset"], path),
        training=_parse_training(raw["training"], path),
        promotion=_parse_promotion(raw["promotion"], path),
        monitoring=_parse_monitoring(raw["monitoring"], path),
        quality=_parse_quality(raw["quality"], path),
        database=_parse_database(raw.get("database") or {}, path),
        serving=_parse_serving(raw.get("serving") or {}, path),
        erasure=_parse_erasure(raw.get("erasure") or {}, path),
        alerts=_parse_alerts(raw.get("alerts") or {}, path),
        security=_parse_security(raw.get("security") or {}, path),
    )
    check_ranges(config)
    check_column_names(config)
    check_suite_columns(config.dataset)
    return config


def check_ranges(config: PipelineConfig) -> None:
    """Every number inside the range where it means something; else the key path and the value.
    A threshold left out (None) is not checked here: promotion fails closed on it."""
    t, p, m = config.training, config.promotion, config.monitoring
    rules: list[tuple[str, Any, Callable[[float], bool], str]] = [
        ("training.seed", t.seed, lambda v: 0 <= v < 2**32, "from 0 to 4294967295 (2**32 - 1, numpy's seeds)"),
        ("training.cv_folds", t.cv_folds, lambda v: v >= 2, "at least 2"),
        ("training.n_jobs", t.n_jobs, lambda v: v >= 1, "at least 1"),
        ("training.search_budget_seconds", t.search_budget_seconds, lambda v: v > 0, "more than 0"),
        ("promotion.confidence", p.confidence, lambda v: 0 < v < 1, "between 0 and 1, both excluded"),
        ("promotion.bootstrap_samples", p.bootstrap_samples, lambda v: v >= 100, "at least 100"),
        ("promotion.margin", p.margin, lambda v: 0 <= v <= 0.5, "between 0 and 0.5 (0.01 means 1 %)"),
        ("promotion.min_r2", p.min_r2, lambda v: v <= 1, "at most 1"),
        ("promotion.slice_tolerance", p.slice_tolerance, lambda v: v >= 0, "at least 0"),
        ("promotion.min_slice_rows", p.min_slice_rows, lambda v: v >= 0, "at least 0"),
        ("promotion.behaviour.max_drop", p.max_drop, lambda v: v >= 0, "at least 0"),
        ("monitoring.poll_seconds", m.poll_seconds, lambda v: v > 0, "more than 0"),
        ("monitoring.drift.p_value", m.drift.p_value, lambda v: 0 < v < 1, "between 0 and 1, both excluded"),
        ("monitoring.drift.bins", m.drift.bins, lambda v: v >= 2, "at least 2"),
        ("monitoring.drift.min_rows", m.drift.min_rows, lambda v: v >= 1, "at least 1"),
        ("serving.interval_coverage", config.serving.interval_coverage, lambda v: 0 < v < 1,
         "between 0 and 1, both excluded"),
        ("serving.batch_rows", config.serving.batch_rows, lambda v: v >= 1, "at least 1"),
        ("serving.max_request_records", config.serving.max_request_records, lambda v: v >= 1, "at least 1"),
        ("serving.max_request_bytes", config.serving.max_request_bytes, lambda v: v >= 1024, "at least 1024"),
        ("serving.reload_seconds", config.serving.reload_seconds, lambda v: v > 0, "more than 0"),
        ("serving.max_shadows", config.serving.max_shadows, lambda v: v >= 0, "at least 0"),
        ("serving.max_pending_forecasts", config.serving.max_pending_forecasts, lambda v: v >= 1, "at least 1"),
        ("monitoring.performance.max_ratio", m.performance.max_ratio, lambda v: v >= 1, "at least 1 (1.2 means 20 % worse)"),
        ("monitoring.performance.min_outcomes", m.performance.min_outcomes, lambda v: v >= 2, "at least 2"),
        ("monitoring.performance.confidence", m.performance.confidence, lambda v: 0 < v < 1,
         "between 0 and 1, both excluded"),
        ("monitoring.performance.bootstrap_samples", m.performance.bootstrap_samples, lambda v: v >= 100, "at least 100"),
        *((f"promotion.behaviour.directions.{k}", v, lambda v: v > 0, "more than 0") for k, v in p.directions.items()),
    ]
    for key, value, holds, meaning in rules:
        if value is not None and not holds(value):
            raise ConfigError(f"{config.path}: {key} must be {meaning}, got {value!r}")
    if p.prediction_range and not p.prediction_range[0] < p.prediction_range[1]:
        raise ConfigError(f"{config.path}: promotion.prediction_range must be [low, high] with low < high, "
                          f"got {list(p.prediction_range)}")


def check_column_names(config: PipelineConfig) -> None:
    """Every column a key outside `dataset:` names is a contract feature or a derived column."""
    contract, where = config.dataset, f"{config.path}: promotion"
    monitored = contract.monitored_columns()
    numeric = contract.names_with_role("numeric") + contract.derived_columns()
    for i, spec in enumerate(config.promotion.slices):
        if spec.column not in monitored:
            raise ConfigError(f"{where}.slices[{i}].column: '{spec.column}' is not a feature of the contract "
                              f"(dataset.features) nor derived; slices can use {monitored}")
        if spec.edges and spec.column not in numeric:
            raise ConfigError(f"{where}.slices[{i}].edges: '{spec.column}' is not numeric; give edges only "
                              f"for {numeric}, or leave them out for one slice per category")
    conditional_on, names = config.serving.interval_conditional_on, [s.name for s in config.promotion.slices]
    if conditional_on is not None and conditional_on not in names:
        raise ConfigError(f"{config.path}: serving.interval_conditional_on: '{conditional_on}' is not a slice of "
                          f"promotion.slices; calibrate per group of one of {names}, or leave the key out")
    for feature in config.promotion.directions:
        if feature not in contract.names_with_role("numeric"):
            raise ConfigError(f"{where}.behaviour.directions.{feature}: '{feature}' is not a numeric feature of "
                              f"the contract; directions can raise {contract.names_with_role('numeric')}")


def suite_columns(expectation: dict[str, Any]) -> list[str]:
    """The columns one expectation of a suite names, whatever its kind."""
    kwargs = expectation.get("kwargs") or {}
    names: list[str] = []
    for key in SUITE_COLUMN_KEYS:
        value = kwargs.get(key)
        names += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)] if value else []
    return names


def check_suite_columns(contract: DatasetContract) -> None:
    """Refuse a suite that checks a column the contract does not have: the snapshot would not hold it."""
    path = contract.expectation_suite
    try:
        suite = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"dataset.expectation_suite: cannot read {path}: {exc}") from exc
    known = set(contract.columns())
    for i, expectation in enumerate(suite.get("expectations") or [] if isinstance(suite, dict) else []):
        unknown = [c for c in suite_columns(expectation) if c not in known]
        if unknown:
            raise ConfigError(f"{path}: expectations[{i}] ({expectation.get('type')}) names column(s) {unknown}, "
                              f"which the contract (dataset: in the config) does not have: {sorted(known)}")


@dataclass(frozen=True)
class ModelEntry:
    """One model config the DAGs are made for. The primary one (PIPELINE_CONFIG) keeps the plain DAG ids."""

    name: str
    config_path: Path
    primary: bool

    def dag_id(self, base: str) -> str:
        """`retrain` for the primary model, `retrain__<model>` for the others."""
        return base if self.primary else f"{base}__{self.name}"

    def run_id(self, airflow_run_id: str) -> str:
        """The registry's run id: Airflow's run ids repeat across DAGs, the registry's may not."""
        return airflow_run_id if self.primary else f"{self.name}:{airflow_run_id}"


def model_entries(primary: Path, models_dir: Path) -> list[ModelEntry]:
    """The primary config, then every *.yaml in `models_dir`; reads only each file's `model:` name."""
    entries = [ModelEntry(model_name(primary), primary, True)]
    paths = sorted(models_dir.glob("*.yaml")) if models_dir.is_dir() else []
    for path in (p for p in paths if p.resolve() != primary.resolve()):
        entry = ModelEntry(model_name(path), path, False)
        clash = next((e for e in entries if e.name == entry.name), None)
        if clash:
            raise ConfigError(f"{path}: model {entry.name!r} is already named by {clash.config_path}; "
                              "each model config needs a name of its own")
        entries.append(entry)
    return entries
