"""Drift: baselines from numpy/pandas/files, calibrated false alarms, planted shifts, alert events."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from nbscale.errors import NbscaleError, SpecError
from nbscale.monitoring.baseline import Baseline
from nbscale.monitoring.drift import compare, parse_duration, windows
from nbscale.monitoring.endpoint_drift import endpoint_drift
from nbscale.serving.capture import DataCapture
from nbscale.store import get_store
from nbscale.store.events import DRIFT, list_events

FEATURES = 64


def mixed_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """64 features of four kinds: normal, skewed, small integers (ties) and bimodal."""
    cols = []
    for j in range(FEATURES):
        kind = j % 4
        if kind == 0:
            cols.append(rng.normal(j, 1 + j % 3, n))
        elif kind == 1:
            cols.append(rng.lognormal(0, 1, n))
        elif kind == 2:
            cols.append(rng.integers(0, 5, n).astype(float))
        else:
            cols.append(np.where(rng.random(n) < 0.3, rng.normal(-2, 0.5, n), rng.normal(2, 1, n)))
    return np.column_stack(cols)


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(20261201)
    data = mixed_data(rng, 40_000)
    train, held_out = data[:20_000], data[20_000:]
    return Baseline.from_data(train), train, held_out


@pytest.mark.slow  # calibration over many windows: most of the unit tier's time
def test_false_alarms_stay_under_one_percent_per_feature_and_window(population):
    # Given a baseline and 300 windows of 500 rows drawn by permutation from held-out rows
    # of the same distribution
    baseline, _, held_out = population
    rng = np.random.default_rng(7)
    alarms = np.zeros(FEATURES)
    n_windows = 300
    for _ in range(n_windows):
        window = held_out[rng.permutation(len(held_out))[:500]]
        for f in compare(baseline, window).drifting:
            alarms[f.index] += 1
    # Then at most 1% of (feature, window) pairs are flagged, and no feature is flagged
    # in more than 1% of windows
    assert alarms.sum() / (n_windows * FEATURES) <= 0.01
    assert alarms.max() / n_windows <= 0.01, alarms


@pytest.mark.slow  # calibration over many windows: most of the unit tier's time
def test_half_a_standard_deviation_in_one_feature_of_64_is_found_in_95_percent_of_windows(
    population,
):
    baseline, train, held_out = population
    rng = np.random.default_rng(11)
    found = first = others = 0
    n_windows = 200
    shifted = 8  # a normal feature
    for _ in range(n_windows):
        window = held_out[rng.permutation(len(held_out))[:500]].copy()
        window[:, shifted] += 0.5 * train[:, shifted].std()
        report = compare(baseline, window)
        names = [f.feature for f in report.drifting]
        found += f"f{shifted}" in names
        first += bool(names) and names[0] == f"f{shifted}"
        others += len([n for n in names if n != f"f{shifted}"])
    assert found / n_windows >= 0.95
    assert first / n_windows >= 0.95  # the drifting feature is named first
    assert others / (n_windows * (FEATURES - 1)) <= 0.01


def test_a_report_names_statistic_p_value_and_share_of_the_window(population):
    baseline, train, held_out = population
    window = held_out[:500].copy()
    window[:, 0] += 3 * train[:, 0].std()
    report = compare(baseline, window, start=100.0, end=200.0)
    top = report.drifting[0]
    assert top.feature == "f0" and set(top.tests) == {"psi", "ks"}
    assert top.ks > 0.5 and top.ks_p_adjusted < 1e-6
    assert top.psi > top.psi_threshold
    assert 0.5 < top.share <= 1.0  # most of the window moved to other bins
    d = report.to_dict()
    assert d["drifting"][0] == "f0" and d["features"][0]["feature"] == "f0"
    assert {"ks", "p_value", "psi", "psi_threshold", "share"} <= set(d["features"][0])
    assert "f0: KS" in report.describe()


def test_psi_threshold_shrinks_with_window_size_and_grows_with_bins(population):
    baseline, _, held_out = population
    small = compare(baseline, held_out[:200]).features[0].psi_threshold
    large = compare(baseline, held_out[:2000]).features[0].psi_threshold
    assert large < small
    few_bins = Baseline.from_data(held_out[:5000, :1], bins=4)
    many_bins = Baseline.from_data(held_out[:5000, :1], bins=20)
    window = held_out[10_000:10_500, :1]
    assert (
        compare(few_bins, window).features[0].psi_threshold
        < compare(many_bins, window).features[0].psi_threshold
    )


def test_a_window_too_small_is_reported_not_tested(population):
    baseline, _, held_out = population
    report = compare(baseline, held_out[:10])
    assert report.skipped and not report.features and "10 rows" in report.describe()


def test_baseline_from_pandas_keeps_column_names_and_rejects_text():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.normal(40, 10, 1000), "income": rng.lognormal(10, 1, 1000)})
    b = Baseline.from_data(frame)
    assert b.names == ["age", "income"] and b.rows == 1000
    age = b.features[0]
    assert abs(age.mean - 40) < 1.5 and abs(sum(age.proportions) - 1) < 1e-9
    assert len(age.proportions) == 10 and all(p > 0 for p in age.proportions)
    with pytest.raises(SpecError, match="city.*not numeric"):
        Baseline.from_data(frame.assign(city="x"))


def test_baseline_of_a_discrete_feature_has_no_empty_bins():
    rng = np.random.default_rng(0)
    x = np.where(rng.random(5000) < 0.7, 0.0, rng.integers(1, 17, 5000)).astype(float)
    f = Baseline.from_data(x).features[0]
    assert all(p > 0 for p in f.proportions)
    # a constant feature: one bin; a window with other values is still caught by KS
    const = Baseline.from_data(np.column_stack([np.zeros(1000), rng.normal(size=1000)]))
    window = np.column_stack([np.full(200, 3.0), rng.normal(size=200)])
    report = compare(const, window)
    assert [f.feature for f in report.drifting] == ["f0"]


def test_bad_baseline_file_says_how_to_make_one(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(SpecError, match="nbscale baseline DATA"):
        Baseline.load(tmp_path / "b.json")


def test_windows_split_by_clock_and_parse_durations(population):
    baseline, _, held_out = population
    times = np.concatenate([np.full(300, 3600.0 * 10 + 5), np.full(300, 3600.0 * 11 + 5)])
    reports = windows(baseline, times, held_out[:600], 3600)
    assert [(r.start, r.rows) for r in reports] == [(36000.0, 300), (39600.0, 300)]
    assert parse_duration("30m") == 1800 and parse_duration("7d") == 7 * 86400
    with pytest.raises(SpecError, match="not a duration"):
        parse_duration("soon")


def test_endpoint_drift_reads_capture_and_records_one_alert_per_window(tmp_path, population):
    # Given an endpoint directory with a baseline and a real capture writer's files:
    # an hour of normal traffic, then an hour with feature f8 shifted
    baseline, train, held_out = population
    edir = tmp_path / "ep"
    edir.mkdir()
    baseline.save(edir / "baseline.json")
    cap = DataCapture(edir / "capture")
    rng = np.random.default_rng(5)
    hour = 3600 * (int(time.time()) // 3600)
    rows = held_out[rng.permutation(len(held_out))[:1200]]
    shifted = rows[600:].copy()
    shifted[:, 8] += 0.5 * train[:, 8].std()
    for i in range(0, 600, 20):  # requests of 20 rows each
        cap._q.put((hour - 3600 + i, None, "m", {"input": rows[i : i + 20]}, {"output": []}))
        cap._q.put((hour + i, None, "m", {"input": shifted[i : i + 20]}, {"output": []}))
    cap.flush()
    store = get_store()
    # When drift is asked for twice
    report = endpoint_drift(store, "ep", edir, window="1h", since="3h")
    again = endpoint_drift(store, "ep", edir, window="1h", since="3h")
    # Then the shifted hour names f8, the normal hour nothing, and one alert is stored
    assert report.captured_rows == 1200 and len(report.windows) == 2
    assert report.windows[0].drifting == [] and report.windows[1].drifting[0].feature == "f8"
    assert report.drifting == ["f8"] and report.alerts == 1 and again.alerts == 0
    alerts = list_events(store, kind="endpoint", ref="ep", types=[DRIFT])
    assert len(alerts) == 1 and alerts[0]["data"]["features"][0]["feature"] == "f8"
    assert alerts[0]["data"]["window_start"] == hour
    frame = report.to_frame()
    assert set(frame["feature"]) >= {"f8"} and len(frame) == 2 * FEATURES


def test_endpoint_drift_without_baseline_says_how_to_add_one(tmp_path):
    with pytest.raises(NbscaleError, match="has no baseline"):
        endpoint_drift(get_store(), "ep", tmp_path, window="1h")


def test_unchanged_windows_are_not_tested_again(population, monkeypatch):
    from nbscale.monitoring import drift

    baseline, _, held_out = population
    times = np.concatenate([np.full(300, 10.0), np.full(300, 3610.0)])
    cache: dict = {}
    first = windows(baseline, times, held_out[:600], 3600, cache=cache)
    calls = []
    real = drift.compare
    monkeypatch.setattr(drift, "compare", lambda *a, **k: calls.append(1) or real(*a, **k))
    # the second window gets 100 more rows; the first is unchanged
    times2 = np.concatenate([times, np.full(100, 3620.0)])
    again = drift.windows(baseline, times2, held_out[:700], 3600, cache=cache)
    assert len(calls) == 1 and again[0] is first[0] and again[1].rows == 400
