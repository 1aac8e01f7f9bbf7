"""Drift statistics against numbers worked out by hand, and the report built from them."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.contract.ages import monitored_columns
from pipeline.contract.config import DatasetContract, DriftPolicy, Feature, PipelineConfig, QualityPolicy
from pipeline.data import demo, ingest
from pipeline.monitoring import drift, drift_study

# Reference 1..10 cut into 5 quantile bins: edges 2.8, 4.6, 6.4, 8.2, two values per bin.
ONE_TO_TEN = np.arange(1.0, 11.0)


@pytest.fixture(scope="module")
def policy(config: PipelineConfig) -> DriftPolicy:
    return config.monitoring.drift


def categories(counts: dict[str, int]) -> pd.Series:
    """A categorical column holding each value `count` times."""
    return pd.Series([value for value, n in counts.items() for _ in range(n)], dtype="string")


def max_ecdf_gap(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample KS statistic from first principles: the largest gap between the ECDFs."""
    points = np.concatenate([a, b])
    ecdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    ecdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.max(np.abs(ecdf_a - ecdf_b)))


def test_policy_thresholds_are_the_documented_ones(policy: DriftPolicy) -> None:
    assert (policy.psi_moderate, policy.psi_major, policy.p_value) == (0.1, 0.25, 0.01)


def test_psi_from_proportions_matches_the_formula() -> None:
    # sum (cur - ref) * ln(cur / ref) = 0.25 ln 2 + 0 + (-0.25) ln 0.5 = 0.5 ln 2
    psi = drift.psi_from_proportions(np.array([0.25, 0.25, 0.5]), np.array([0.5, 0.25, 0.25]))
    assert psi == pytest.approx(0.5 * math.log(2))


def smoothed(counts: list[int]) -> np.ndarray:
    """Bin shares with half a row added to each bin, worked out by hand: (count + 0.5) / (n + 0.5 k)."""
    return np.array([(c + 0.5) / (sum(counts) + 0.5 * len(counts)) for c in counts])


def psi_by_hand(reference: list[int], recent: list[int]) -> float:
    ref, cur = smoothed(reference), smoothed(recent)
    return float(sum((c - r) * math.log(c / r) for r, c in zip(ref, cur, strict=True)))


def test_psi_smooths_an_empty_bin_by_half_a_row_instead_of_going_infinite() -> None:
    # Reference 2, 2, 0 against recent 1, 1, 2: shares (2.5, 2.5, 0.5) / 5.5 and (1.5, 1.5, 2.5) / 5.5.
    psi = drift.psi_from_counts(np.array([2, 2, 0]), np.array([1, 1, 2]))
    expected = 2 * (1.5 - 2.5) / 5.5 * math.log(1.5 / 2.5) + (2.5 - 0.5) / 5.5 * math.log(2.5 / 0.5)
    assert math.isfinite(psi)
    assert psi == pytest.approx(expected)


def test_an_empty_bin_of_a_small_window_adds_little_psi() -> None:
    # 30 rows spread over 9 of 10 bins of a large reference: the empty bin once added ~0.7 (floor 1e-4).
    reference, recent = np.full(10, 1000), np.array([4, 3, 3, 3, 3, 4, 3, 4, 3, 0])
    empty_bin_share = 0.5 / 35
    assert drift.psi_from_counts(reference, recent) < 0.2
    assert (0.1 - empty_bin_share) * math.log(0.1 / empty_bin_share) < 0.2


def test_numeric_psi_bins_at_the_reference_quantiles() -> None:
    # Bins (-inf, 2.8], (2.8, 4.6], (4.6, 6.4], (6.4, 8.2], (8.2, inf): reference 0.2 each.
    # Counts 2 per bin against 4, 1, 1, 1, 3; the last bin counts missing values (none on either side).
    recent = np.array([1, 1, 1, 1, 3, 5, 7, 9, 9, 9], dtype=float)
    expected = psi_by_hand([2, 2, 2, 2, 2, 0], [4, 1, 1, 1, 3, 0])
    assert drift.numeric_psi(ONE_TO_TEN, recent, bins=5) == pytest.approx(expected)


def test_numeric_psi_outer_bins_are_open_ended() -> None:
    recent = np.array([-100.0] * 5 + [100.0] * 5)  # counts 5, 0, 0, 0, 5
    expected = psi_by_hand([2, 2, 2, 2, 2, 0], [5, 0, 0, 0, 5, 0])
    assert drift.numeric_psi(ONE_TO_TEN, recent, bins=5) == pytest.approx(expected)


def test_identical_samples_show_no_drift(policy: DriftPolicy) -> None:
    values = pd.Series(np.random.default_rng(0).normal(50, 10, 500))

    result = drift.numeric_drift("x", values, values.copy(), policy)

    assert result.psi == pytest.approx(0.0, abs=1e-12)
    assert result.statistic == 0.0 and result.p_value == pytest.approx(1.0)
    assert (result.level, result.drifted) == ("none", False)


def test_a_larger_shift_gives_a_larger_psi(policy: DriftPolicy) -> None:
    rng = np.random.default_rng(1)
    reference, noise = rng.normal(0, 1, 1000), rng.normal(0, 1, 1000)

    psi = {shift: drift.numeric_psi(reference, noise + shift, policy.bins) for shift in (0.0, 0.3, 1.0)}

    assert psi[0.0] < psi[0.3] < psi[1.0]
    assert psi[0.0] < policy.psi_moderate
    assert drift.numeric_drift("x", pd.Series(reference), pd.Series(noise + 1.0), policy).level == "major"


def test_ks_statistic_is_the_largest_ecdf_gap(policy: DriftPolicy) -> None:
    rng = np.random.default_rng(2)
    reference, recent = rng.normal(0, 1, 300), rng.normal(0.3, 1.2, 120)

    result = drift.numeric_drift("x", pd.Series(reference), pd.Series(recent), policy)

    assert result.test == "ks"
    assert result.statistic == pytest.approx(max_ecdf_gap(reference, recent))
    assert result.p_value == pytest.approx(stats.kstest(reference, recent).pvalue, rel=1e-6)


def test_numeric_drift_ignores_missing_values(policy: DriftPolicy) -> None:
    rng = np.random.default_rng(3)
    reference, recent = rng.normal(0, 1, 200), rng.normal(0.5, 1, 100)
    with_gaps = pd.Series(np.concatenate([recent, [np.nan] * 7]))

    result = drift.numeric_drift("x", pd.Series(reference), with_gaps, policy)

    assert result.statistic == pytest.approx(max_ecdf_gap(reference, recent))


def test_chi_squared_is_pearsons_on_the_2xk_table(policy: DriftPolicy) -> None:
    table = np.array([[30, 50, 20],   # reference F, M, X
                      [20, 20, 10]])  # recent
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    pearson = float(((table - expected) ** 2 / expected).sum())
    assert pearson == pytest.approx(12 / 7)  # worked out on paper

    result = drift.categorical_drift("sex", categories(dict(zip("FMX", table[0], strict=True))),
                                     categories(dict(zip("FMX", table[1], strict=True))), policy)

    assert result.test == "chi2"
    assert result.statistic == pytest.approx(pearson)
    assert result.p_value == pytest.approx(math.exp(-pearson / 2))  # chi-squared, 2 dof: sf(x) = e^(-x/2)
    assert result.psi == pytest.approx(psi_by_hand([30, 50, 20], [20, 20, 10]))


def test_chi_squared_on_a_2x2_table_uses_yates_correction(policy: DriftPolicy) -> None:
    table = np.array([[60, 40], [20, 30]])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    yates = float(((np.abs(table - expected) - 0.5) ** 2 / expected).sum())

    result = drift.categorical_drift("sex", categories({"F": 60, "M": 40}), categories({"F": 20, "M": 30}), policy)

    assert result.statistic == pytest.approx(yates)
    assert result.p_value == pytest.approx(stats.chi2.sf(yates, df=1))


def test_categorical_drift_with_a_category_only_in_recent(policy: DriftPolicy) -> None:
    result = drift.categorical_drift("sex", categories({"F": 50, "M": 50}),
                                     categories({"F": 40, "M": 40, "X": 20}), policy)

    assert math.isfinite(result.psi) and result.level == "major" and result.drifted


def test_moderate_psi_without_a_significant_test_is_not_drift(policy: DriftPolicy) -> None:
    # Proportions 1/3 each against 0.533 / 0.267 / 0.2: PSI ~0.177, moderate at any sample size.
    small = drift.categorical_drift("c", categories({"a": 5, "b": 5, "c": 5}),
                                    categories({"a": 8, "b": 4, "c": 3}), policy)
    large = drift.categorical_drift("c", categories({"a": 100, "b": 100, "c": 100}),
                                    categories({"a": 160, "b": 80, "c": 60}), policy)

    assert policy.psi_moderate <= small.psi < policy.psi_major
    assert small.level == large.level == "moderate"
    assert small.p_value > policy.p_value and small.drifted is False
    assert large.p_value < policy.p_value and large.drifted is True


def test_major_psi_without_a_significant_test_is_not_drift(policy: DriftPolicy) -> None:
    # 15 rows cannot show a major shift beyond chance: PSI alone decides nothing (issue 32).
    result = drift.categorical_drift("c", categories({"a": 5, "b": 5, "c": 5}),
                                     categories({"a": 11, "b": 2, "c": 2}), policy)

    assert result.psi >= policy.psi_major and result.p_value > policy.p_value
    assert (result.level, result.drifted) == ("major", False)


def test_the_significance_level_is_shared_among_the_features(policy: DriftPolicy) -> None:
    # PSI ~0.24, p ~0.008: under p_value 0.01 for one feature, not under 0.01 / 10 when ten are compared.
    reference, recent = categories({"a": 50, "b": 50, "c": 50}), categories({"a": 29, "b": 11, "c": 10})
    alone = drift.categorical_drift("c", reference, recent, policy)
    among_ten = drift.categorical_drift("c", reference, recent, policy, features=10)

    assert policy.p_value / 10 < alone.p_value < policy.p_value and alone.level != "none"
    assert alone.drifted is True and among_ten.drifted is False
    assert drift.significance_level(policy, 10) == pytest.approx(policy.p_value / 10)


def test_level_boundaries_are_inclusive(policy: DriftPolicy) -> None:
    reference, recent = categories({"a": 5, "b": 5, "c": 5}), categories({"a": 8, "b": 4, "c": 3})
    psi = drift.categorical_drift("c", reference, recent, policy).psi

    at_moderate = dataclasses.replace(policy, psi_moderate=psi, psi_major=psi + 1)
    at_major = dataclasses.replace(policy, psi_moderate=psi / 2, psi_major=psi)
    above = dataclasses.replace(policy, psi_moderate=psi + 0.01, psi_major=psi + 1)

    assert drift.categorical_drift("c", reference, recent, at_moderate).level == "moderate"
    assert drift.categorical_drift("c", reference, recent, at_major).level == "major"
    assert drift.categorical_drift("c", reference, recent, above).level == "none"


def moderate_numeric(policy: DriftPolicy) -> drift.FeatureDrift:
    """A numeric feature with a moderate PSI and a KS test far from significant."""
    recent = pd.Series([1, 1, 2, 2, 4, 5, 6, 7, 9, 10])  # counts 4, 1, 2, 1, 2
    return drift.numeric_drift("x", pd.Series(ONE_TO_TEN), recent, dataclasses.replace(policy, bins=5))


def test_moderate_numeric_psi_without_a_significant_ks_is_not_drift(policy: DriftPolicy) -> None:
    result = moderate_numeric(policy)

    assert result.psi == pytest.approx(psi_by_hand([2, 2, 2, 2, 2, 0], [4, 1, 2, 1, 2, 0]))
    assert result.level == "moderate" and result.p_value > policy.p_value
    assert not result.drifted


def test_drifted_is_a_plain_bool(policy: DriftPolicy) -> None:
    assert type(moderate_numeric(policy).drifted) is bool


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 0/0 on the empty recent column
def test_a_numeric_feature_missing_from_every_recent_row_is_drift(policy: DriftPolicy) -> None:
    reference = pd.Series(np.random.default_rng(5).normal(0, 1, 100))

    result = drift.numeric_drift("x", reference, pd.Series([np.nan] * 50), policy)

    assert math.isfinite(result.psi) and result.drifted


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 0/0 on the empty recent column
def test_a_categorical_feature_missing_from_every_recent_row_is_drift(policy: DriftPolicy) -> None:
    reference, recent = categories({"F": 50, "M": 50}), pd.Series([pd.NA] * 50, dtype="string")
    try:
        result = drift.categorical_drift("sex", reference, recent, policy)
    except ValueError as exc:
        raise AssertionError(f"categorical_drift raised {exc}") from exc

    assert math.isfinite(result.psi) and result.drifted


def test_monitored_columns_derive_age_and_drop_id_and_timestamp(contract: DatasetContract,
                                                                demo_frame: pd.DataFrame) -> None:
    columns = monitored_columns(demo_frame, contract)

    assert set(columns.columns) == {"sex", "bmi", "bp_mean", "tc", "ldl", "hdl", "tch", "ltg", "glucose", "age_years"}
    for dropped in ("patient_id", "recorded_at", "progression_12m", "birth_date", "visit_date"):
        assert dropped not in columns.columns
    days = (pd.to_datetime(demo_frame["visit_date"]) - pd.to_datetime(demo_frame["birth_date"])).dt.days
    np.testing.assert_allclose(columns["age_years"].to_numpy(), days.to_numpy() / 365.25)
    # Each demo patient is the study's whole-number age plus up to 300 days.
    np.testing.assert_array_equal(np.floor(columns["age_years"]).to_numpy(), demo.study_frame()["age"].to_numpy())


def test_monitored_columns_age_for_a_written_out_row(contract: DatasetContract) -> None:
    row = pd.DataFrame({"birth_date": ["2000-01-01"], "visit_date": ["2020-01-01"], "sex": ["F"],
                        **{c: [1.0] for c in contract.names_with_role("numeric")}})

    assert monitored_columns(row, contract)["age_years"].tolist() == [20.0]  # 7305 days


def test_compare_an_undrifted_batch_flags_nothing_major(contract: DatasetContract, policy: DriftPolicy) -> None:
    results = drift.compare(demo.demo_records(), demo.arrival_records(200, seed=1), contract, policy)

    assert [r.feature for r in results] == list(monitored_columns(demo.demo_records(), contract).columns)
    assert [r.feature for r in results if r.level == "major"] == []
    assert {r.kind for r in results if r.feature == "sex"} == {"categorical"}
    assert all(r.kind == "numeric" for r in results if r.feature != "sex")


def test_compare_flags_a_shifted_bmi(contract: DatasetContract, policy: DriftPolicy) -> None:
    results = {r.feature: r for r in drift.compare(demo.demo_records(), demo.arrival_records(200, seed=1,
                                                   drift={"bmi": 4}), contract, policy)}

    assert results["bmi"].level == "major" and results["bmi"].drifted
    assert results["bmi"].p_value < policy.p_value
    assert not results["glucose"].drifted


REPORT_ROW = {"champion_version": 3, "reference_snapshot": "abc123", "window_start": "2026-03-01 00:00:00+00:00",
              "window_end": "2026-04-01 02:00:00+00:00", "unreadable_rows": 0}


def test_render_report_has_a_row_and_a_plot_per_feature(contract: DatasetContract, policy: DriftPolicy) -> None:
    reference, recent = demo.demo_records(), demo.arrival_records(100, seed=3, drift={"bmi": 4})
    results = drift.compare(reference, recent, contract, policy)

    page = drift.render_report(results, reference, recent, contract, "Drift report r1", policy, REPORT_ROW)

    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    assert len(re.findall(r"<img ", page)) == len(results) == 10
    assert len(re.findall(r"<tr class='(none|moderate|major)'>", page)) == len(results)
    assert "<tr class='major'><td>bmi</td>" in page
    assert "its training snapshot abc123: 442 rows</td>" in page and "<th>recent rows</th><td>100 valid by the contract</td>" in page
    assert page.count("src='data:image/png;base64,iVBORw0KGgo") == len(results)  # PNG signature


def test_render_report_escapes_feature_names_and_title(contract: DatasetContract, policy: DriftPolicy) -> None:
    odd = dataclasses.replace(contract, features=(Feature("a<b", "numeric", "float"),
                                                  Feature("sex", "categorical", "text")))
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"a<b": rng.normal(0, 1, 60), "sex": ["F", "M"] * 30})
    recent = pd.DataFrame({"a<b": rng.normal(0, 1, 40), "sex": ["F", "M"] * 20})
    results = drift.compare(reference, recent, odd, policy)

    page = drift.render_report(results, reference, recent, odd, "<script>x</script>", policy,
                               {**REPORT_ROW, "reference_snapshot": "<b>"})

    assert [r.feature for r in results] == ["a<b", "sex"]
    assert "<td>a&lt;b</td>" in page and "alt='a&lt;b distribution, reference vs recent'" in page
    assert "its training snapshot &lt;b&gt;" in page
    assert "a<b" not in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert page.count("<img ") == 2


# --- what the report states (issue 14): verdict, thresholds, window, champion, labelled plots ---------


def test_report_states_verdict_thresholds_window_and_champion(contract: DatasetContract,
                                                              policy: DriftPolicy) -> None:
    reference, recent = demo.demo_records(), demo.arrival_records(100, seed=3, drift={"bmi": 4})
    results = drift.compare(reference, recent, contract, policy)
    bmi = next(r for r in results if r.feature == "bmi")

    page = drift.render_report(results, reference, recent, contract, "Drift report r1", policy,
                               {**REPORT_ROW, "quarantined_rows": 2,
                                "quarantine_reasons": {"out_of_range": 1, "unknown_category": 1}})

    drifted = [r for r in results if r.drifted]
    verdict = re.search(r"<p class='verdict'>([^<]*)</p>", page)
    assert verdict and verdict.group(1).startswith(f"Drift: {len(drifted)} of 10 features drifted (bmi: PSI "
                                                   f"{bmi.psi:.3f}, major")
    for name, value in (("psi_moderate", "0.1"), ("psi_major", "0.25"), ("p_value", "0.01"), ("bins", "10"),
                        ("min_rows", "30")):
        assert f"<tr><th>{name}</th><td>{value}: " in page
    assert "<tr><th>champion version</th><td>3</td></tr>" in page
    assert ("<tr><th>window</th><td>records recorded after 2026-03-01 00:00:00+00:00 (the champion&#x27;s "
            "training watermark) up to 2026-04-01 02:00:00+00:00</td></tr>") in page
    assert ("100 valid by the contract (2 more quarantined by it and left out: a data-quality signal, not drift; "
            "out_of_range 1, unknown_category 1)") in page


def test_a_stable_report_says_so(contract: DatasetContract, policy: DriftPolicy) -> None:
    reference = demo.demo_records()
    results = drift.compare(reference, reference, contract, policy)

    page = drift.render_report(results, reference, reference, contract, "r", policy, REPORT_ROW)

    assert "<p class='verdict'>Stable: none of the 10 features drifted (highest PSI 0.000" in page


def test_a_moderate_drift_names_its_test_and_p_value(policy: DriftPolicy) -> None:
    moderate = drift.FeatureDrift("glucose", "numeric", 0.15, "ks", 0.2, 0.001, "moderate", True)

    assert drift.verdict_sentence([moderate], policy) == (
        "Drift: 1 of 1 features drifted (glucose: PSI 0.150, moderate, ks p-value 0.001 under 0.01).")
    assert drift.verdict_sentence([moderate] * 10, policy).endswith("ks p-value 0.001 under 0.001).")


def test_every_distribution_plot_labels_both_axes(contract: DatasetContract) -> None:
    reference, recent = demo.demo_records(), demo.arrival_records(100, seed=3)
    ref, cur = monitored_columns(reference, contract), monitored_columns(recent, contract)

    for name in ref.columns:
        figure = drift.distribution_figure(name, ref[name], cur[name], categorical=name == "sex")
        [axes] = figure.axes
        assert axes.get_xlabel() and axes.get_ylabel(), name
        assert {t.get_text() for t in axes.get_legend().get_texts()} == {"reference", "recent"}
    age = drift.distribution_figure("age_years", ref["age_years"], cur["age_years"], categorical=False)
    assert age.axes[0].get_xlabel() == "age at the visit (years)"
    sex = drift.distribution_figure("sex", ref["sex"], cur["sex"], categorical=True)
    assert (sex.axes[0].get_xlabel(), sex.axes[0].get_ylabel()) == ("sex (category)", "share of rows")


# --- drift on the rows we train on (issue 32): a window is classified by the contract first -----------------


def faulty_window(rows: int, bad_rows: int, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Clean arrivals, `bad_rows` of them made faulty and as many merely messy (' f', 'm'): demo.add_faults;
    with the reason validation should give each row."""
    records, expected = demo.add_faults(demo.arrival_records(rows, seed), bad_rows, seed)
    records.insert(0, "patient_id", range(9001, 9001 + rows))
    records["recorded_at"] = records["label_recorded_at"] = pd.Timestamp("2027-06-01", tz="UTC")
    return records, expected


def test_a_window_with_only_normalisable_or_quarantinable_faults_reports_no_drift(
        contract: DatasetContract, policy: DriftPolicy, suite: dict[str, object]) -> None:
    raw, expected = faulty_window(120, bad_rows=12, seed=5)
    as_cast, _ = ingest.readable_rows(raw, contract)  # what the check compared before: cast, never classified
    assert any(r.drifted for r in drift.compare(demo.demo_records(), as_cast, contract, policy))

    recent, labelled, awaiting = drift.classified_window(raw, contract, suite, quality_policy())
    results = drift.compare(demo.demo_records(), recent, contract, policy)

    assert [r.feature for r in results if r.drifted] == []
    assert set(recent["sex"]) == {"F", "M"}
    summary = drift.quarantine_summary(labelled, awaiting)
    assert summary["quarantined_rows"] == 12 and len(recent) == 108
    assert summary["quarantine_reasons"] == dict(sorted(Counter(e for e in expected if e != "valid").items()))


def test_a_window_of_rows_awaiting_their_outcome_keeps_them(contract: DatasetContract,
                                                            suite: dict[str, object]) -> None:
    raw, _ = faulty_window(40, bad_rows=0, seed=6)
    raw["progression_12m"], raw["label_recorded_at"] = np.nan, pd.NaT

    recent, labelled, awaiting = drift.classified_window(raw, contract, suite, quality_policy())

    assert len(recent) == 40 and drift.quarantine_summary(labelled, awaiting)["quarantined_rows"] == 0


def quality_policy() -> QualityPolicy:
    return QualityPolicy(max_quarantine_share=0.05)


# --- the false-alarm study (issue 32): windows from the simulate-arrivals generator -------------------------


@pytest.mark.parametrize("rows", [30, 60])
def test_clean_windows_raise_a_false_alarm_in_at_most_5_percent(contract: DatasetContract, policy: DriftPolicy,
                                                                 rows: int) -> None:
    rate = drift_study.window_rate(demo.demo_records(), contract, policy, "clean", rows, batches=100, seed=1000)

    assert rate.share <= 0.05, f"{rate.flagged} of {rate.batches} clean windows of {rows} rows flagged"


def test_a_bmi_shift_of_4_is_seen_in_at_least_90_percent_of_60_row_windows(contract: DatasetContract,
                                                                           policy: DriftPolicy) -> None:
    rate = drift_study.window_rate(demo.demo_records(), contract, policy, "bmi +4", 60, batches=60, seed=2000)

    assert rate.share >= 0.9, f"only {rate.flagged} of {rate.batches} windows with bmi +4 flagged"


def test_the_study_table_has_a_share_per_scenario_and_size() -> None:
    rates = [drift_study.Rate("clean", 30, 10, 1), drift_study.Rate("clean", 60, 10, 0),
             drift_study.Rate("bmi +4", 30, 10, 9), drift_study.Rate("bmi +4", 60, 10, 10)]

    assert drift_study.as_markdown(rates).splitlines() == [
        "| windows | 30 rows | 60 rows |", "|---|---|---|",
        "| clean | 0.100 (1/10) | 0.000 (0/10) |", "| bmi +4 | 0.900 (9/10) | 1.000 (10/10) |"]


def test_the_cli_text_names_the_quarantined_rows_apart_from_drift() -> None:
    from pipeline.cli.monitor import text_drift

    result = {"verdict": "stable", "recent_rows": 90, "quarantined_rows": 10, "report_path": None, "features": [],
              "quarantine_reasons": {"unknown_category": 4, "out_of_range": 6}}

    assert text_drift(result).splitlines()[:2] == [
        "drift verdict: stable over 90 recent rows",
        "quarantined by the contract and left out (a data-quality signal, not drift): 10 rows "
        "{'unknown_category': 4, 'out_of_range': 6}"]
