"""Drift: baselines built from a sample, their checks, and the rolling window's PSI and JS measures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from samd.drift import (
    MAX_COLUMNS,
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    Baseline,
    BaselineError,
    DriftMonitor,
    build_baseline,
    column_bins,
    jensen_shannon,
    load_sample,
    psi,
    response_outputs,
)

pytestmark = pytest.mark.unit


def _normal(rows: int, columns: int = 8, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, columns)).astype(np.float32)


def _baseline(rows: int = 3000) -> Baseline:
    sample = _normal(rows)
    return build_baseline({"features": sample}, {"fraud": (sample[:, 3] > 1.0).astype(np.int64)})


def _feed(monitor: DriftMonitor, rows: np.ndarray, batch: int = 1) -> None:
    for start in range(0, rows.shape[0], batch):
        part = rows[start : start + batch]
        monitor.observe({"features": part}, {"fraud": (part[:, 3] > 1.0).astype(np.int64)})


def _by_name(monitor: DriftMonitor) -> dict[str, float]:
    return {column.name: column.psi for column in monitor.drift()}


def test_quantile_bins_hold_about_equal_shares_of_the_sample() -> None:
    edges, shares = column_bins(_normal(5000)[:, 0], 10)
    assert len(edges) == 9
    assert len(shares) == 10
    assert all(0.09 < share < 0.11 for share in shares)


def test_a_column_with_few_values_gets_one_bin_per_value() -> None:
    values = np.array([0, 1, 1, 1, 2] * 40, dtype=np.float64)
    edges, shares = column_bins(values, 10)
    assert edges == (0.5, 1.5)
    assert shares == pytest.approx((0.2, 0.6, 0.2))


def test_an_unshifted_window_stays_below_the_moderate_threshold() -> None:
    monitor = DriftMonitor(_baseline(), window_rows=4000)
    _feed(monitor, _normal(4000, seed=11))
    assert max(_by_name(monitor).values()) < PSI_MODERATE


def test_shifting_one_feature_crosses_the_significant_threshold_for_that_feature_only() -> None:
    monitor = DriftMonitor(_baseline(), window_rows=4000)
    shifted = _normal(4000, seed=12)
    shifted[:, 3] += 0.75  # in standard deviations
    _feed(monitor, shifted, batch=4)
    measured = _by_name(monitor)
    assert measured["features[3]"] > PSI_SIGNIFICANT
    assert measured["fraud"] > PSI_MODERATE  # the outputs move with the feature that drives them
    assert all(
        value < PSI_MODERATE for name, value in measured.items() if name not in ("features[3]", "fraud")
    )


def test_the_window_forgets_old_rows_so_a_recovered_input_stops_drifting() -> None:
    monitor = DriftMonitor(_baseline(), window_rows=2000, segments=10, batch_rows=100)
    shifted = _normal(2000, seed=13)
    shifted[:, 0] += 1.0
    _feed(monitor, shifted, batch=10)
    assert _by_name(monitor)["features[0]"] > PSI_SIGNIFICANT
    _feed(monitor, _normal(2200, seed=14), batch=10)
    assert _by_name(monitor)["features[0]"] < PSI_MODERATE
    assert monitor.window_rows() <= 2000


def test_the_measures_are_nan_until_the_window_holds_enough_rows() -> None:
    monitor = DriftMonitor(_baseline(), min_rows=200)
    _feed(monitor, _normal(50, seed=15))
    assert all(math.isnan(column.psi) and math.isnan(column.jensen_shannon) for column in monitor.drift())


def test_non_finite_values_are_not_counted() -> None:
    monitor = DriftMonitor(_baseline(), min_rows=1)
    rows = _normal(300, seed=16)
    rows[:, 2] = np.nan
    _feed(monitor, rows, batch=30)
    by_name = {column.name: column for column in monitor.drift()}
    assert by_name["features[2]"].rows == 0
    assert by_name["features[1]"].rows == 300


def test_psi_and_jensen_shannon_are_zero_for_equal_shares_and_grow_with_the_difference() -> None:
    same = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(same, same) == pytest.approx(0.0)
    assert jensen_shannon(same, same) == pytest.approx(0.0, abs=1e-12)
    near, far = np.array([0.3, 0.25, 0.25, 0.2]), np.array([0.7, 0.1, 0.1, 0.1])
    assert 0 < psi(same, near) < psi(same, far)
    assert 0 < jensen_shannon(same, near) < jensen_shannon(same, far) <= 1.0


def test_a_baseline_survives_its_json_form() -> None:
    baseline = _baseline()
    assert Baseline.from_json(baseline.to_json()) == baseline


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.update(format="other"), "is not a drift baseline"),
        (lambda d: d["inputs"][0].update(proportions=[1.0]), "one more proportion than edges"),
        (
            lambda d: d["inputs"][0].update(edges=list(reversed(d["inputs"][0]["edges"]))),
            "strictly ascending",
        ),
        (lambda d: d["inputs"][1].update(name=d["inputs"][0]["name"]), "names must be unique"),
        (lambda d: d["inputs"][0].pop("tensor"), "is malformed"),
        (lambda d: d.update(inputs=d["inputs"] * 9), "at most 64"),
    ],
)
def test_a_malformed_baseline_is_refused_with_what_is_wrong(change: object, problem: str) -> None:
    document = orjson.loads(_baseline().to_json())
    change(document)  # type: ignore[operator]
    with pytest.raises(BaselineError, match=problem):
        Baseline.from_json(orjson.dumps(document))


def test_a_small_sample_or_too_many_columns_is_refused() -> None:
    with pytest.raises(BaselineError, match="at least 100"):
        build_baseline({"x": _normal(50)}, {})
    with pytest.raises(BaselineError, match=f"at most {MAX_COLUMNS}"):
        build_baseline({"x": _normal(200, MAX_COLUMNS + 1)}, {})


def test_feature_names_come_from_a_csv_header_and_can_be_chosen(tmp_path: Path) -> None:
    rows = _normal(150, 3)
    sample = tmp_path / "validation.csv"
    sample.write_text("amount,velocity,distance\n" + "\n".join(",".join(str(v) for v in row) for row in rows))
    loaded = load_sample(sample, "features")
    baseline = build_baseline(loaded.tensors, {}, names=loaded.names, keep=["amount", "distance"])
    assert [column.name for column in baseline.inputs] == ["amount", "distance"]
    assert [column.column for column in baseline.inputs] == [0, 2]


def test_a_bad_sample_names_the_line_or_the_format(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(BaselineError, match="line 3"):
        load_sample(bad, "features")
    (tmp_path / "sample.parquet").write_bytes(b"x")
    with pytest.raises(BaselineError, match=r"not \.npz, \.npy or \.csv"):
        load_sample(tmp_path / "sample.parquet", "features")
    np.save(tmp_path / "sample.npy", _normal(120))
    with pytest.raises(BaselineError, match="--input"):
        load_sample(tmp_path / "sample.npy", None)


def test_outputs_are_read_from_json_and_binary_response_parts() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    document = {
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]},
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": probabilities.nbytes},
            },
        ]
    }
    arrays = response_outputs(document, [probabilities.tobytes()], frozenset({"label", "probabilities"}))
    assert arrays["label"].ravel().tolist() == [0, 1]
    assert np.array_equal(arrays["probabilities"], probabilities)


def test_answers_queued_as_response_documents_count_like_their_arrays() -> None:
    baseline = _baseline()
    from_arrays, from_answers = DriftMonitor(baseline, min_rows=1), DriftMonitor(baseline, min_rows=1)
    rows = _normal(600, seed=17)
    rows[:, 3] += 0.5
    for start in range(0, 600, 3):
        part = rows[start : start + 3]
        fraud = (part[:, 3] > 1.0).astype(np.int64)
        from_arrays.observe({"features": part}, {"fraud": fraud})
        document = {"outputs": [{"name": "fraud", "datatype": "INT64", "shape": [3], "data": fraud.tolist()}]}
        from_answers.observe_answer({"features": part}, document, [])
    assert from_arrays.drift() == from_answers.drift()
