"""Latencies referred to one speed state of the machine (``latency.speed_state``): no TVM.

The elasticity fit must recover a known k from passes at different probe readings whatever the
subnets' sizes, refuse to fit what the readings cannot show, and an entry's timing must ignore its
contended passes and undo the drift of the steady ones. Then the two places that use it: profile
refers its tables and calibration (and leaves another device's adopted tables alone), and
``compile --measure`` compares a measured latency with the model's prediction at that timing's reading.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ofa_deploy.latency.speed_state import (DEFAULT_ELASTICITY, PRIOR_SD, SpeedScaling, fastest_steady,
                                            lowest_reading, passes_of, shrunk, steady_passes)

REF = 1.6  # us: the model's reference reading in these tests


def drifting_passes(rng: np.random.Generator, base_ms: float, k: float, n: int = 3,
                    noise: float = 0.0) -> list[tuple[float, float]]:
    """``n`` steady passes of one subnet at readings 1.6-2.0 us, time following the reading with elasticity k."""
    probes = rng.uniform(REF, 2.0, n)
    return [(base_ms * (p / REF) ** k * (1 + noise * rng.standard_normal()), float(p)) for p in probes]


def test_the_fit_recovers_the_elasticity_whatever_the_subnets_sizes():
    rng = np.random.default_rng(0)
    groups = [drifting_passes(rng, base, 1.5, noise=0.003) for base in rng.uniform(2.0, 4.0, 12)]
    scaling = SpeedScaling.fit(groups, lowest_reading(groups))
    assert scaling.fitted and scaling.n_passes == 36
    assert scaling.fitted_k == pytest.approx(1.5, abs=0.1) and 0 < scaling.stderr < 0.1
    assert scaling.elasticity == pytest.approx(shrunk(scaling.fitted_k, scaling.stderr))
    assert DEFAULT_ELASTICITY < scaling.elasticity < scaling.fitted_k  # a precise fit moves k most of the way
    assert scaling.elasticity > 1.0 + 0.5 * (scaling.fitted_k - 1.0)
    exact = [drifting_passes(rng, base, 0.7) for base in (1.0, 10.0, 100.0)]  # noiseless: exact slope
    assert SpeedScaling.fit(exact, REF).elasticity == pytest.approx(0.7, rel=1e-9)


def test_a_loose_fit_stays_near_time_proportional_to_the_reading():
    """12 subnets x 3 passes with 8 % noise (a shared VM): the slope's standard error is ~0.3 and k stays within
    0.15 of 1 whatever the true k; precision weighting, not a cut-off."""
    for true_k, seed in ((0.4, 2), (1.8, 3)):
        rng = np.random.default_rng(seed)
        groups = [drifting_passes(rng, base, true_k, noise=0.08) for base in rng.uniform(4.0, 9.0, 12)]
        scaling = SpeedScaling.fit(groups, lowest_reading(groups))
        assert scaling.fitted and scaling.stderr > 0.15
        assert abs(scaling.elasticity - DEFAULT_ELASTICITY) < 0.15
        assert np.sign(scaling.elasticity - 1.0) == np.sign(scaling.fitted_k - 1.0)  # still leaning the fit's way
        assert "shrunk toward 1" in scaling.describe()
    assert shrunk(1.5, 0.0) == 1.5 and shrunk(1.5, PRIOR_SD) == pytest.approx(1.25)
    old = SpeedScaling.from_dict({"reference_us": 1.7, "elasticity": 1.34, "fitted": True, "n_passes": 68,
                                  "stderr": 0.17})  # a model from before the shrinking: its k is its raw fit
    assert old.fitted_k is None and old.elasticity == 1.34 and old.describe().endswith("(k 1.34 +- 0.17)")


def test_the_fit_falls_back_when_readings_cannot_show_the_elasticity():
    rng = np.random.default_rng(1)
    flat = [[(3.0 * (1 + 0.01 * rng.standard_normal()), 1.70) for _ in range(3)] for _ in range(5)]
    few = [drifting_passes(rng, 3.0, 1.5, n=2) for _ in range(2)]  # 4 passes: fewer than a fit needs
    unprobed = [[(3.0, None), (3.1, None)] for _ in range(6)]
    for groups in (flat, few, unprobed, []):
        scaling = SpeedScaling.fit(groups, REF)
        assert not scaling.fitted and scaling.elasticity == DEFAULT_ELASTICITY and scaling.stderr is None
    wild = [[(1.0, 1.6), (5.0, 1.7)] for _ in range(4)]  # a 16x slope from two readings: bounded
    assert SpeedScaling.fit(wild, 1.6).elasticity == 3.0


def test_an_entry_is_the_median_of_its_steady_passes_referred_to_the_reference():
    scaling = SpeedScaling(REF, 1.5, True, 36, 0.05)
    passes = [(3.0 * (1.8 / REF) ** 1.5, 1.8), (3.0 * (1.7 / REF) ** 1.5 * 1.02, 1.7), (2.9, 3.0)]
    assert steady_passes(passes) == passes[:2]  # 3.0 us is contended against the calmest (1.7)
    assert scaling.timing(passes) == pytest.approx(3.0 * 1.01)  # median of 3.00 and 3.06; the contended 2.9 ignored
    assert fastest_steady(passes) == pytest.approx(passes[1][0])  # the raw rule keeps one drifted pass
    assert scaling.timing([(3.3, None), (3.2, 1.7)]) == 3.2  # an unprobed pass: not scaled, fastest steady
    assert scaling.at(3.0, 1.8) == pytest.approx(3.0 * (1.8 / REF) ** 1.5)
    assert scaling.at(3.0, 1.8) * scaling.factor(1.8) == pytest.approx(3.0)
    assert SpeedScaling.from_dict(scaling.to_dict()) == scaling and SpeedScaling.from_dict(None) is None
    assert lowest_reading([[(1.0, None)], [(1.0, 1.9), (1.0, 1.7)]]) == 1.7 and lowest_reading([[(1.0, None)]]) is None


def _run_with(workloads: dict, points: list[dict], remote=None):
    from types import SimpleNamespace

    return SimpleNamespace(workloads=workloads, points={p["id"]: p for p in points}, remote=remote,
                           spec=SimpleNamespace(name="x86-host"))


def _entry(passes: list[tuple[float, float | None]], **extra) -> dict:
    return {**extra, "median_ms": min(ms for ms, _ in passes),
            "passes": [{"median_ms": ms, "probe_us": p} for ms, p in passes]}


def test_profile_refers_its_own_tables_and_calibration_but_not_adopted_tables(caplog):
    from ofa_deploy.latency.profile import _refer_timings

    rng = np.random.default_rng(2)
    points = [_entry(drifting_passes(rng, base, 1.4), id=f"s{i}") for i, base in enumerate((2.0, 2.5, 3.0, 3.5))]
    table = _entry([(0.20, 1.62), (0.21, 1.9), (0.5, 3.2)])
    run = _run_with({"r224/stem": table}, points)
    scaling = _refer_timings(run, points)
    assert scaling.fitted and scaling.elasticity == pytest.approx(1.4, rel=1e-6) and scaling.reference_us == 1.62
    assert table["median_ms"] == pytest.approx(np.median([0.20 * (1.62 / 1.62) ** 1.4, 0.21 * (1.62 / 1.9) ** 1.4]))
    for p, base in zip(points, (2.0, 2.5, 3.0, 3.5)):
        assert p["measured_ms"] == pytest.approx(base * (1.62 / REF) ** 1.4)  # every pass referred to 1.62 us
    adopted = {**_entry([(0.3, 9.0), (0.4, 9.5)]), "adopted_from": "x86_64-znver5-2c"}  # another device's record
    _refer_timings(_run_with({"r224/stem": adopted}, points), points)  # (its own readings): left as it was
    assert adopted["median_ms"] == 0.3
    board = _entry([(0.3, None), (0.25, None)])  # over RPC nothing is probed: the fastest steady pass
    assert _refer_timings(_run_with({"r224/stem": board}, points, remote=object()), points) is None
    assert board["median_ms"] == 0.25 and points[0]["measured_ms"] == fastest_steady(passes_of(points[0]))
    flat = [_entry([(2.0, 1.7), (2.02, 1.7), (2.01, 1.7)], id=f"f{i}") for i in range(3)]
    with caplog.at_level(logging.WARNING):
        assert not _refer_timings(_run_with({}, flat), flat).fitted
    assert "k = 1.0 assumed" in caplog.text


def test_compile_measure_compares_at_the_timings_probe_reading(monkeypatch, tmp_path, caplog):
    """A speed-referred model's prediction moves to the reading of the measured timing; the measurement does not."""
    from ofa_deploy.deploy import _check_prediction
    from ofa_deploy.latency import measured as measured_mod
    from ofa_deploy.latency.measured import save_model
    from ofa_deploy.search_space import SubnetConfig
    from ofa_deploy.search_space.genes import configs_to_genes
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.folders import host_dir
    from ofa_deploy.tuning_logs.layout import MODEL_FILE
    from tests.test_latency_model import fake_model

    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "tl"))
    monkeypatch.setattr(measured_mod, "_warned", set())
    data = fake_model(resolutions=(224,))
    data["data_layout"] = get_target("x86-host").data_layout
    data["speed_scaling"] = SpeedScaling(REF, 1.5, True, 36, 0.05).to_dict()
    host_dir().mkdir(parents=True)
    save_model(host_dir() / MODEL_FILE, data)
    cfg = SubnetConfig.max(image_size=224)
    reference = float(measured_mod.MeasuredLatencyModel.from_dict(data).predict(configs_to_genes([cfg]))[0])
    slowed = reference * (2.0 / REF) ** 1.5  # the same code, timed while the probe read 2.0 us
    with caplog.at_level(logging.WARNING):
        got = _check_prediction(cfg, get_target("x86-host"), 1000, {"median_ms": slowed, "source": "measured",
                                                                     "probe_us": 2.0})
    assert got["measured_ms"] == pytest.approx(slowed, abs=1e-3) and got["error_pct"] == pytest.approx(0, abs=0.1)
    assert got["predicted_ms"] == pytest.approx(slowed, abs=1e-3)
    assert got["predicted_at_reference_ms"] == pytest.approx(reference, abs=1e-3)
    assert "referred to probe 1.60 us" in got["basis"] and "predicted" not in caplog.text
    unprobed = _check_prediction(cfg, get_target("x86-host"), 1000, {"median_ms": slowed, "source": "measured"})
    assert unprobed["predicted_ms"] == pytest.approx(reference, abs=1e-3) and unprobed["predicted_at_reference_ms"] is None
    assert unprobed["error_pct"] == pytest.approx((reference / slowed - 1) * 100, abs=0.1)
    assert "the latency model predicted" in caplog.text  # 35 % off without the reading: warned
    assert "budget may not hold" in caplog.text  # measured slower than predicted: the budget is at risk
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fast = _check_prediction(cfg, get_target("x86-host"), 1000, {"median_ms": reference / 1.3, "source": "measured"})
    assert fast["error_pct"] == pytest.approx(30, abs=0.1)
    assert "over-estimates" in caplog.text and "budget may not hold" not in caplog.text  # faster: the budget holds


def test_the_accuracy_bench_reports_the_scatter_referring_leaves_as_its_noise_floor():
    """bench/latency_accuracy.repeatability: drift the probe explains is no scatter; the rest is."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from latency_accuracy import repeatability, row_passes

    scaling = SpeedScaling(REF, 1.5, True, 40, 0.1)
    rng = np.random.default_rng(0)
    explained = [drifting_passes(rng, base, 1.5) for base in (1.0, 2.0, 3.0)]
    clean = repeatability(explained, scaling)
    assert clean["n"] == 3 and clean["median_sd_pct"] < 1e-9 and clean["single_within_10pct"] == 1.0
    unreferred = repeatability(explained, None)  # the same passes, nothing referred: the drift is scatter
    assert unreferred["median_sd_pct"] > 3.0
    noisy = [drifting_passes(rng, 2.0, 1.5, n=5, noise=0.15) for _ in range(40)]
    stats = repeatability(noisy, scaling)
    assert 10.0 < stats["median_sd_pct"] < 20.0 and 0.3 < stats["single_within_10pct"] < 0.8
    assert repeatability([[(2.0, 1.7)]], scaling)["n"] == 0  # one pass shows no scatter
    row = {"pass_ms": "2.0 2.2", "pass_probe_us": "1.700 0.000"}  # a pass without a reading has none
    assert row_passes(row) == [(2.0, 1.7), (2.2, None)]
