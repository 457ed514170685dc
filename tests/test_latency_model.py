"""The profiled latency model: file round trip, exact predictions, fallback, resolution restriction, resume.

Everything except the last test runs without TVM on fake tables; the ``tvm`` test profiles a tiny
set of real workloads (r128, untuned, 12 workloads, 2 calibration subnets) end to end.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ofa_deploy.tuning_logs.folders import host_dir
from ofa_deploy import SubnetConfig
from ofa_deploy.compile.toolchain import installed_tvm_version
from ofa_deploy.latency import TableLatencyModel, latency_model
from ofa_deploy.latency import measured as measured_mod
from ofa_deploy.latency.measured import Calibration, MeasuredLatencyModel, fit_affine, save_model
from ofa_deploy.latency.speed_state import SpeedScaling, passes_of
from ofa_deploy.search import (Constraints, Evaluator, EvolutionConfig, NsgaConfig, ProxyAccuracy, evolution_search,
                               nsga_search, write_outputs)
from ofa_deploy.search.operators import mutate
from ofa_deploy.search_space.genes import configs_to_genes, genes_to_config, random_genes, resolution_indices
from ofa_deploy.tuning_logs.database import database_hash
from ofa_deploy.tuning_logs.layout import MODEL_FILE, RECORD_FILE, WORKLOAD_FILE
from ofa_deploy.workloads import block_key, space_workloads
from tests.conftest import run_cli

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"
RES = (160, 192)
A, B = 1.15, 0.42


def fake_model(resolutions=RES, db: str | None = None, seed: int = 0, drop: tuple[str, ...] = ()) -> dict:
    """A model file's dict with seeded random workload timings (what ``profile`` would write)."""
    rng = np.random.default_rng(seed)
    workloads = {w.key: {"median_ms": float(rng.uniform(0.02, 2.0)), "std_ms": 0.0, "n": 5, "runs_per_sample": 10,
                         "source": "measured", "device": "x86_64 (2 threads)", "tuned_funcs": 3, "total_funcs": 4,
                         "tvm_target": {"kind": "llvm"}}
                 for w in space_workloads(SPACE, list(resolutions)) if w.key not in drop}
    return {"format": 1, "data_layout": "NHWC", "target": "x86-host", "tvm_target": {"kind": "llvm"}, "tvm_version": installed_tvm_version(),
            "database_sha256": db, "space": SPACE, "n_classes": 1000, "resolutions": list(resolutions),
            "created": "2026-01-01T00:00:00+00:00", "workloads": workloads, "tuned_funcs": 3, "total_funcs": 4,
            "calibration": {"a": A, "b": B, "n": 3, "rms_pct": 2.5, "max_pct": 4.0, "seed": 0, "points": []}}


def python_sum(cfg: SubnetConfig, data: dict) -> float:
    """The reference: walk the config's active blocks and add up their workload timings."""
    ms = {k: v["median_ms"] for k, v in data["workloads"].items()}
    r = cfg.image_size
    total = ms[f"r{r}/stem"] + ms[f"r{r}/head"]
    for s, depth in enumerate(cfg.d):
        for j in range(depth):
            slot = 4 * s + j
            total += ms[block_key(r, s, j == 0, cfg.ks[slot], cfg.e[slot])]
    return total


@pytest.fixture
def tuning_logs(tmp_path, monkeypatch):
    """An empty tuning_logs/ and a fresh warn-once memory."""
    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "tl"))
    monkeypatch.setattr(measured_mod, "_warned", set())
    return tmp_path / "tl"


def random_configs(n: int, seed: int, resolutions=RES) -> list[SubnetConfig]:
    rng = np.random.default_rng(seed)
    genes = random_genes(rng, n, SPACE, r_choices=resolution_indices(SPACE, resolutions))
    return [genes_to_config(g, SPACE) for g in genes]


def test_model_file_round_trips_and_predicts_table_sum_exactly(tmp_path):
    data = fake_model(db="ab" * 32)
    save_model(tmp_path / MODEL_FILE, data)
    model = MeasuredLatencyModel.load(tmp_path / MODEL_FILE)
    assert model.source == "estimated" and model.resolutions == RES and model.complete
    assert "tuned-measured tables (db abababab)" in model.basis and "r160,192" in model.basis
    data["adapted_from"] = {"folder": "x86_64-znver5-2c", "database_sha256": "cd" * 32}  # profile --adapt's record
    adapted = MeasuredLatencyModel.from_dict(data).basis  # whose tables, and whose code calibrated them
    assert adapted.startswith("ADAPTED: x86_64-znver5-2c's measured tables (db cdcdcdcd)") and "(db abababab)" in adapted
    own = {**fake_model(db=None), "transfer_sha256": ["ef" * 32]}  # no database here: builds borrow schedules
    assert MeasuredLatencyModel.from_dict(own).basis.startswith("measured tables of borrowed schedules (no database")
    assert MeasuredLatencyModel.from_dict(fake_model(db=None)).basis.startswith("untuned-measured tables")
    cfgs = random_configs(200, seed=5)
    expected = np.array([A * python_sum(c, data) + B for c in cfgs])
    got = model.predict(configs_to_genes(cfgs))
    assert np.allclose(got, expected, rtol=1e-12, atol=0)
    # outside the profiled resolutions there is no estimate at all
    assert np.isinf(model.predict(configs_to_genes([SubnetConfig.max(SPACE, 224)]))).all()
    # fastest() is exact: no random subnet beats it, and it is the model's own prediction of its row
    best, row = model.fastest()
    assert best == pytest.approx(model.predict(row[None])[0], rel=1e-12)
    assert best <= got.min() and genes_to_config(row, SPACE).image_size in RES
    # a malformed file is one clear error
    (tmp_path / "bad.json").write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(Exception, match="format 99 is not supported"):
        MeasuredLatencyModel.load(tmp_path / "bad.json")


def test_fit_affine_recovers_the_line_and_guards_degenerate_cases():
    x = np.array([10.0, 20.0, 35.0, 50.0])
    a, b = fit_affine(x, 1.3 * x + 2.0)
    assert a == pytest.approx(1.3) and b == pytest.approx(2.0)
    assert fit_affine(np.array([10.0]), np.array([12.0])) == pytest.approx((1.2, 0.0))
    assert fit_affine(np.zeros(0), np.zeros(0)) == (1.0, 0.0)
    cal = Calibration.fit(x, np.array([15.0, 26.0, 47.0, 66.0]))
    rel = (cal.a * x + cal.b - np.array([15.0, 26.0, 47.0, 66.0])) / np.array([15.0, 26.0, 47.0, 66.0]) * 100
    assert cal.rms_pct == pytest.approx(np.sqrt(np.mean(rel ** 2))) and cal.max_pct == pytest.approx(np.abs(rel).max())


def test_search_uses_a_current_model_and_falls_back_once_when_stale(tuning_logs, caplog):
    d = host_dir()
    d.mkdir(parents=True)
    save_model(d / MODEL_FILE, fake_model())
    model = latency_model("x86-host", SPACE)
    assert isinstance(model, MeasuredLatencyModel) and model.source == "estimated" and model.target == "x86-host"

    stale = fake_model()
    stale["tvm_version"] = "0.1.0"
    save_model(d / MODEL_FILE, stale)
    with caplog.at_level(logging.WARNING):
        first = latency_model("x86-host", SPACE)
        second = latency_model("x86-host", SPACE)
    assert not_own(first) and not_own(second)  # the roofline, or the nearest device's model, said so
    warnings = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(warnings) == 1 and "profiled with TVM 0.1.0" in warnings[0]

    # a database appears after profiling (tuning ran since): the untuned model is stale
    (d / WORKLOAD_FILE).write_text('["x"]\n')
    (d / RECORD_FILE).write_text("")
    save_model(d / MODEL_FILE, fake_model())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not_own(latency_model("x86-host", SPACE))
    assert any("tuning database changed" in r.getMessage() for r in caplog.records)
    save_model(d / MODEL_FILE, fake_model(db=database_hash(d)))  # profiled with this very database
    assert isinstance(latency_model("x86-host", SPACE), MeasuredLatencyModel)
    # a partial profile (some workloads never timed) is not used for search either
    save_model(d / MODEL_FILE, fake_model(db=database_hash(d), drop=("r160/head",)))
    assert not_own(latency_model("x86-host", SPACE))


def not_own(model) -> bool:
    """Not this device's own measured model: the analytic roofline, or another device's model marked as such."""
    if isinstance(model, TableLatencyModel):
        return model.basis.startswith("analytic roofline") and model.resolutions is None
    return bool(model.foreign_device) and model.basis.startswith("ANOTHER DEVICE")


def test_resolution_restriction_in_sampling_mutation_evolution_and_nsga(tmp_path):
    data = fake_model()
    save_model(tmp_path / MODEL_FILE, data)
    model = MeasuredLatencyModel.load(tmp_path / MODEL_FILE)
    allowed = resolution_indices(SPACE, RES)
    rng = np.random.default_rng(0)
    assert set(random_genes(rng, 5000, SPACE, r_choices=allowed)[:, -1]) == set(allowed)
    assert set(random_genes(rng, 5000, SPACE, bias=2.0, r_choices=allowed)[:, -1]) == set(allowed)
    kids = mutate(rng, random_genes(rng, 5000, SPACE, r_choices=allowed), SPACE, 1.0, allowed)
    assert set(kids[:, -1]) == set(allowed)
    assert len(set(mutate(rng, kids, SPACE, 1.0)[:, -1])) > 2  # unrestricted mutation still reaches all

    budget = float(np.median(model.predict(configs_to_genes(random_configs(500, seed=1)))))
    # Without the restriction the proxy's favourite (more MACs) would sit at 224 px.
    ev = Evaluator(SPACE, ProxyAccuracy(SPACE), model, Constraints(latency_ms=budget))
    evo = evolution_search(ev, EvolutionConfig(population=40, generations=40, seed=2))
    ev = Evaluator(SPACE, ProxyAccuracy(SPACE), model, Constraints(latency_ms=budget))
    pareto = nsga_search(ev, NsgaConfig(population=40, generations=30, seed=2))
    free = Evaluator(SPACE, ProxyAccuracy(SPACE), model)  # no budget: only the restriction bounds it
    unbounded = evolution_search(free, EvolutionConfig(population=40, generations=40, seed=2))
    for res in (evo, pareto, unbounded):
        for scored in (res.best, res.front, res.candidates):
            sizes = {genes_to_config(g, SPACE).image_size for g in scored.genes}
            assert sizes <= set(RES), sizes
            assert np.isfinite(scored.latency).all()
    assert unbounded.best_config.image_size == 192  # the largest allowed, not 224
    assert (evo.front.latency <= budget).all() and (pareto.front.latency <= budget).all()
    assert evo.latency_basis == model.basis and pareto.latency_basis == model.basis

    paths = write_outputs(evo, tmp_path / "out", target="x86-host")
    sub = json.loads(paths["subnet"].read_text())
    assert sub["latency_source"] == "estimated" and sub["latency_basis"] == model.basis
    rows = list(csv.DictReader(paths["front"].open()))
    assert len(rows) == len(evo.front) and {(r["latency_source"], r["latency_basis"]) for r in rows} == {
        ("estimated", model.basis)}


def with_passes(entry: dict, best_ms: float, field: str = "median_ms") -> dict:
    """``entry`` as ``profile`` stores it after its default timing passes, whose fastest took ``best_ms``."""
    from ofa_deploy.compile.profile import ProfileSettings
    from ofa_deploy.compile.types import LatencyMeasurement

    passes = [LatencyMeasurement(best_ms * (1 + 0.1 * k), 0.0, 5, "measured", 10, "x86_64 (2 threads)").to_dict()
              for k in range(ProfileSettings().passes)]
    return {**entry, field: best_ms, "passes": passes, "pass_ms": [p["median_ms"] for p in passes]}


def test_fastest_pass_keeps_the_fastest_median_and_reports_the_spread():
    from ofa_deploy.compile.profile import fastest_pass
    from ofa_deploy.compile.types import LatencyMeasurement

    ms = [LatencyMeasurement(m, 0.01, 15, "measured", 40, "x86_64 (2 threads)") for m in (5.8, 4.6, 4.7)]
    best = fastest_pass(ms)
    assert best.median_ms == 4.6 and best.n == 45 and best.runs_per_sample == 40 and best.source == "measured"
    assert best.std_ms == pytest.approx(np.std([5.8, 4.6, 4.7]))
    with pytest.raises(ValueError):
        fastest_pass([])


def test_sample_subnets_is_a_prefix_stream():
    """A bench stopped early and rerun with a smaller --n keeps its subnets (no re-draw)."""
    from ofa_deploy.latency.profile import sample_subnets

    many = [c.id for c in sample_subnets(SPACE, RES, 150, 1000)]
    assert len(set(many)) == 150
    for n in (1, 35, 64, 65, 100):
        assert [c.id for c in sample_subnets(SPACE, RES, n, 1000)] == many[:n]
    assert [c.id for c in sample_subnets(SPACE, RES, 35, 1001)] != many[:35]


def test_calibration_subnets_are_the_ends_of_a_seeded_pool_in_turns_then_its_stream():
    """The first 12 picks are the pool's lowest and highest table sums, low/high in turns; the rest are the seeded
    stream's next subnets; the first m picks are the picks for m; the ends spread wider than the pool; seeded."""
    from ofa_deploy.latency.profile import (CALIBRATION_POOL, END_PICKS, calibration_subnets, ends_in_turns,
                                            sample_subnets)
    from ofa_deploy.latency.tables import lookup

    assert ends_in_turns([5.0, 1.0, 9.0, 3.0, 7.0], 4) == [1, 2, 3, 4]  # 1.0, 9.0, 3.0, 7.0
    assert ends_in_turns([5.0, 1.0, 9.0], 3) == [1, 2, 0]
    with pytest.raises(ValueError):
        ends_in_turns([1.0, 2.0], 3)
    model = MeasuredLatencyModel.from_dict(fake_model())
    table, fixed = model.table, model.fixed

    def sums(cfgs):
        return lookup(configs_to_genes(cfgs, SPACE), table, fixed, SPACE)

    picks = calibration_subnets(SPACE, RES, 12, 7, table, fixed)
    pool_sums = sorted(sums(sample_subnets(SPACE, RES, CALIBRATION_POOL, 7, table)))
    got = sums(picks)
    assert sorted(got[0::2]) == pytest.approx(pool_sums[:6]) and sorted(got[1::2]) == pytest.approx(pool_sums[-6:])
    assert list(got[0::2]) == sorted(got[0::2]) and list(got[1::2]) == sorted(got[1::2], reverse=True)
    for m in (1, 2, 5, 12):
        assert [c.id for c in calibration_subnets(SPACE, RES, m, 7, table, fixed)] == [c.id for c in picks[:m]]
    assert np.std(got) > np.std(pool_sums)  # the ends spread wider than the pool they come from
    assert calibration_subnets(SPACE, RES, 0, 7, table, fixed) == []
    big = calibration_subnets(SPACE, RES, 50, 7, table, fixed)
    assert len({c.id for c in big}) == 50 and [c.id for c in big[:END_PICKS]] == [c.id for c in picks]
    stream = sample_subnets(SPACE, RES, CALIBRATION_POOL + 50 - END_PICKS, 7, table)[CALIBRATION_POOL:]
    assert [c.id for c in big[END_PICKS:]] == [c.id for c in stream]  # random: the middle of the range too
    assert [c.id for c in calibration_subnets(SPACE, RES, 30, 7, table, fixed)] == [c.id for c in big[:30]]
    assert [c.id for c in calibration_subnets(SPACE, RES, 4, 8, table, fixed)] != [c.id for c in picks[:4]]


def test_the_calibration_pool_is_ranked_by_first_passes_that_more_passes_do_not_move():
    """A block's rank time is its first pass: a faster second pass (a profile extended with more --passes) or a
    refit leaves the picks as they were; an adopted record ranks by its adopted figure."""
    from ofa_deploy.latency.profile import _ranking_ms, calibration_subnets

    def record(*ms: float) -> dict:
        return {"median_ms": min(ms), "passes": [{"median_ms": v, "probe_us": 2.0} for v in ms]}

    assert _ranking_ms(record(5.0)) == _ranking_ms(record(5.0, 4.0, 3.0)) == 5.0
    assert _ranking_ms({**record(5.0), "adopted_from": "x", "median_ms": 7.0}) == 7.0
    model = MeasuredLatencyModel.from_dict(fake_model())
    one = {k: record(v) for k, v in zip(model.meta["workloads"], np.linspace(1.0, 2.0, len(model.meta["workloads"])))}
    rng = np.random.default_rng(3)
    more = {k: record(v["passes"][0]["median_ms"], v["passes"][0]["median_ms"] * rng.uniform(0.5, 1.0))
            for k, v in one.items()}  # a second pass up to 2x faster, block by block

    def picks(records: dict) -> list[str]:
        table, fixed = measured_mod.tables_from_workloads(SPACE, RES, {k: _ranking_ms(v) for k, v in records.items()})
        return [c.id for c in calibration_subnets(SPACE, RES, 6, 0, table, fixed)]

    assert picks(one) == picks(more)


def test_the_accuracy_bench_scores_a_kept_model_file_on_earlier_rows(tuning_logs, tmp_path, capsys):
    """bench/latency_accuracy --score-rows [--model FILE]: rows timed at 1.1x the device model's prediction score
    100 % within +-10 % with a -9.1 % bias; an earlier model file (predicting 2x) is scored on the same rows
    instead when given; rows of another TVM are left out."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from latency_accuracy import rescore

    data = fake_model()
    host_dir().mkdir(parents=True)
    save_model(host_dir() / MODEL_FILE, data)
    model = MeasuredLatencyModel.from_dict(data)
    cfgs = random_configs(20, seed=5)
    pred = model.predict(configs_to_genes(cfgs, SPACE))
    rows = [{"id": c.id, "image_size": c.image_size, "ks": " ".join(map(str, c.ks)), "e": " ".join(map(str, c.e)),
             "d": " ".join(map(str, c.d)), "pass_ms": f"{1.1 * m:.6f} {1.2 * m:.6f} {1.1 * m:.6f}",
             "pass_probe_us": "", "database_sha256": "", "tvm_version": data["tvm_version"] if i < 16 else "0.1.0",
             "model_created": "x"} for i, (c, m) in enumerate(zip(cfgs, pred))]
    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rescore("x86-host", csv_path, tmp_path / "out")
    out = capsys.readouterr().out
    assert "16 subnets from" in out and "within +-10 %: 100.0 %" in out and "bias -9.1 %" in out
    assert "Kendall tau 1.000" in out and "goal (#16, a full profile)" in out
    earlier = tmp_path / "earlier.json"
    save_model(earlier, {**data, "calibration": {**data["calibration"], "a": 2 * A, "b": 2 * B}})
    again = tmp_path / "again.csv"  # a second run that timed the same
    again.write_text(csv_path.read_text())
    rescore("x86-host", csv_path, tmp_path / "out", earlier, retests=[again, csv_path])
    out = capsys.readouterr().out
    assert f"retest ({again} timed the same subnets): 16 subnets, x 1.000 (median ratio) within +-10 %: 100.0 %" in out
    assert f"retest: {csv_path} holds these rows" in out
    assert f"model {earlier}" in out and "within +-10 %: 0.0 %" in out and "bias +81.8 %" in out
    plots = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(plots) == 2 and plots[1].endswith("_rescored_earlier.png")  # the device model's plot is kept


def test_the_accuracy_bench_resumes_only_rows_timed_the_same_way(tmp_path):
    """A run with --turns N resumes rows timed in N turns, never rows timed one by one (rows from before the
    ``timing`` column were) or in another number of turns, and the other way round."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from latency_accuracy import read_rows, write_rows

    from ofa_deploy.compile.profile import ProfileSettings

    def timing_label(turns: int) -> str:
        return ProfileSettings(turns=turns).timing

    base = {"image_size": 224, "ks": "", "e": "", "d": "", "predicted_ms": "1", "measured_ms": "1", "fastest_ms": "1",
            "pass_ms": "1.0", "pass_probe_us": "2.0", "rel_err_pct": "0", "database_sha256": "", "tvm_version": "t",
            "model_created": "m"}
    path = tmp_path / "rows.csv"
    write_rows(path, [{**base, "id": "old", "timing": ""}, {**base, "id": "seq", "timing": timing_label(0)},
                      {**base, "id": "t60", "timing": timing_label(60)}, {**base, "id": "t30", "timing": "in 30 turns"}])
    assert sorted(read_rows(path, None, "t", "m", timing_label(0))) == ["old", "seq"]
    assert sorted(read_rows(path, None, "t", "m", timing_label(60))) == ["t60"]
    assert read_rows(path, None, "t", "m", timing_label(90)) == {}


def test_the_accuracy_bench_refers_each_pass_by_the_models_calibration_subnets(tmp_path):
    """--ruler: a pass whose calibration subnets ran 1.25x the times the model kept for them counts its rows at
    1/1.25 (the median ratio: one odd subnet does not move it); rows without a ruler are as timed, and a cut to the
    first passes cuts the rulers too. --ruler without --turns is one line, exit 2."""
    import sys

    from click.testing import CliRunner

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from latency_accuracy import first_passes, main, row_passes, ruler

    assert ruler({"a": 2.5, "b": 5.0, "c": 9.0}, {"a": 2.0, "b": 4.0, "c": 4.0}) == 1.25
    row = {"pass_ms": "5.0 4.0", "pass_probe_us": "0.000 0.000", "pass_ruler": "1.25 1.0"}
    assert row_passes(row) == [(4.0, None), (4.0, None)]
    assert row_passes({**row, "pass_ruler": ""}) == [(5.0, None), (4.0, None)]
    assert row_passes(first_passes(row, 1)) == [(4.0, None)]
    result = CliRunner().invoke(main, ["--ruler", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--ruler" in result.output and "--turns" in result.output


def test_the_accuracy_bench_says_how_well_its_own_rows_repeat():
    """bench/latency_accuracy's ceiling: a second run at 1.2x with +-3 % alternating noise reproduces the rows at
    scale 1 / 1.2, all within +-10 %, with the noise's sd (3.0 %) and a noise-free model's share from it; odd and even
    passes 5 % apart give scale 1.05 and no scatter; too few shared subnets or passes give None; with a model's
    predictions the error that repeats in both runs is the model's own (a +-4 % pattern under +-3 % noise)."""
    import sys
    from math import erf

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from latency_accuracy import (agreement, ceiling_line, ceiling_lines, retest, split_half,
                                  within_10pct_of_normal)

    def row(i: int, passes: list[float]) -> dict[str, str]:
        return {"id": f"s{i}", "pass_ms": " ".join(f"{v:.6f}" for v in passes), "pass_probe_us": ""}

    base = np.linspace(2.0, 9.0, 20)
    noise = np.where(np.arange(20) % 2 == 0, 1.03, 1 / 1.03)
    rows = [row(i, [v, 1.3 * v, v]) for i, v in enumerate(base)]  # kept: the fastest pass, v
    other = [row(i, [1.2 * v * f]) for i, (v, f) in enumerate(zip(base, noise))] + [row(99, [1.0])]
    a = retest(rows, other, None)
    assert a["n"] == 20 and a["within_10pct"] == 1.0 and 0.9 < a["kendall_tau"] < 1  # the noise swaps a few
    assert a["scale"] == pytest.approx(1 / 1.2, rel=0.031)  # what the other run's timings are scaled by
    sd = 100 * np.std(np.log(base / (a["scale"] * 1.2 * base * noise)), ddof=1)
    assert a["sd_pct"] == pytest.approx(sd) and 2.9 < sd < 3.1
    noise_pct = sd / np.sqrt(2)
    assert a["noise_pct"] == pytest.approx(noise_pct)
    assert a["noise_free_within_10pct"] == pytest.approx(erf(np.log(1.1) / (noise_pct / 100 * np.sqrt(2))))
    assert retest(rows, [row(0, [1.0])], None) is None
    far = agreement(base, base * np.where(np.arange(20) < 11, 1.0, 1.5))  # 9 of 20 subnets 50 % slower later
    assert far["scale"] == 1.0 and far["within_10pct"] == pytest.approx(0.55) and far["noise_free_within_10pct"] < 0.5

    # The error budget: a model off by a fixed +-4 % pattern, two runs with their own +-3 % noise (patterns
    # orthogonal over 4 subnets) and biases of the hour (x 1.1 and x 0.95): the shared sd is the model's 4 %.
    pred = {f"s{i}": float(v) for i, v in enumerate(base)}
    model_err = np.tile([1.04, 1 / 1.04], 10)
    here = [row(i, [v * model_err[i] * 1.1 * [1.03, 1.03, 1 / 1.03, 1 / 1.03][i % 4]]) for i, v in enumerate(base)]
    there = [row(i, [v * model_err[i] * 0.95 * [1.03, 1 / 1.03, 1 / 1.03, 1.03][i % 4]]) for i, v in enumerate(base)]
    b = retest(here, there, None, pred)
    assert b["model_shared_sd_pct"] == pytest.approx(100 * np.std(np.log(model_err), ddof=1), rel=1e-3)
    assert b["model_bias_here_pct"] == pytest.approx(-100 * np.log(1.1), abs=0.01)  # predicts 9.5 % fast here
    assert b["model_bias_there_pct"] == pytest.approx(-100 * np.log(0.95), abs=0.01)
    assert b["model_noise_free_within_10pct"] > 0.98 and b["within_10pct"] == 1.0
    assert within_10pct_of_normal(0.0, np.log(1.2)) == 0.0 and within_10pct_of_normal(0.0) == 1.0
    assert within_10pct_of_normal(np.log(1.1)) == pytest.approx(0.6827, abs=1e-4)  # one sd either side
    assert "repeats there by sd 4.0 %" in ceiling_line("retest", b)

    four = [row(i, [v, 1.05 * v, v, 1.05 * v]) for i, v in enumerate(base)]
    half = split_half(four + rows, None)  # 3-pass rows are left out
    assert half["n"] == 20 and half["scale"] == pytest.approx(1.05) and half["sd_pct"] < 1e-3
    assert split_half(rows, None) is None
    lines = ceiling_lines(four, None, [(Path("R.csv"), other), (Path("none.csv"), []), (Path("me.csv"), four)])
    assert lines[0].startswith("split-half") and "within +-10 %: 100.0 %" in lines[0]
    assert lines[1].startswith("retest (R.csv") and "x 0.8" in lines[1]
    assert lines[2] == "retest: none.csv shares fewer than 2 subnets with these rows"
    assert lines[3] == "retest: me.csv holds these rows"


def test_the_calibration_design_bench_prefers_the_ends_on_a_line_with_noise():
    """bench/calibration_design.compare on rows that follow a line with 5 % noise: both designs recover it, the
    ends with a tighter slope and at least the share within +-10 % of random picks; sizes are checked."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from calibration_design import compare

    from ofa_deploy.errors import OfaDeployError

    rng = np.random.default_rng(0)
    table = rng.normal(8.0, 1.0, 60)
    measured = (1.3 * table + 0.5) * np.exp(rng.normal(0, 0.05, 60))
    res = compare(table, measured, [3, 12], trials=200, seed=0)
    for n in (3, 12):
        assert res[n]["ends"]["slope_sd"] < 0.7 * res[n]["random"]["slope_sd"]
        assert res[n]["ends"]["within_10pct"] >= res[n]["random"]["within_10pct"] - 0.01
    assert res[3]["ends"]["within_10pct"] > res[3]["random"]["within_10pct"]
    with pytest.raises(OfaDeployError, match="--sizes 30"):
        compare(table, measured, [30], trials=1, seed=0)
    with pytest.raises(OfaDeployError, match="need at least"):
        compare(table[:20], measured[:20], [3], trials=1, seed=0)


def partial_identity(data: dict) -> dict:
    """What a partial file of this machine's x86-host profile must record for its timings to be reused."""
    from ofa_deploy.compile.isolate import tvm_threads
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import current_transfer_hashes
    from ofa_deploy.tuning_logs.folders import measuring_identity

    identity = {k: data[k] for k in ("target", "tvm_version", "database_sha256", "space", "n_classes")}
    identity["tvm_target"] = get_target("x86-host").tvm_target
    identity["tvm_threads"] = tvm_threads()  # timings of another thread count are not reused
    identity["data_layout"] = get_target("x86-host").data_layout  # nor timings of modules of another layout
    identity["transfer_sha256"] = current_transfer_hashes("x86-host")  # schedules borrowed from other devices
    identity["device"] = measuring_identity("x86-host").to_json()  # timings of another device are not reused
    return identity


def test_profile_resumes_from_partial_file_without_rebuilding(tuning_logs):
    """All timings already in the partial file: profile fits and saves without running TVM once."""
    from ofa_deploy.latency.profile import ProfileConfig, calibration_subnets, profile_target
    from ofa_deploy.tuning_logs.layout import PARTIAL_FILE

    keys = ["r128/stem", "r128/head"] + [block_key(128, s, f, 3, 3) for s in range(5) for f in (True, False)]
    data = fake_model(resolutions=(128,))
    workloads = {k: with_passes(data["workloads"][k], data["workloads"][k]["median_ms"]) for k in keys}
    ms = {k: v["median_ms"] for k, v in workloads.items()}
    table, fixed = measured_mod.tables_from_workloads(SPACE, (128,), ms)
    calib = calibration_subnets(SPACE, (128,), 3, 0, table, fixed)
    assert len({c.id for c in calib}) == 3 and all(set(c.ks) == {3} and set(c.e) == {3} for c in calib)
    assert [c.id for c in calibration_subnets(SPACE, (128,), 3, 0, table, fixed)] == [c.id for c in calib]  # seeded
    sums = [python_sum(c, {"workloads": workloads}) for c in calib]
    points = [with_passes({"id": c.id, "config": c.to_dict(), "table_ms": s, "std_ms": 0.0, "source": "measured"},
                          2.0 * s + 1.0, "measured_ms") for c, s in zip(calib, sums)]
    identity = partial_identity(data)
    from ofa_deploy.compile.isolate import tvm_threads
    from ofa_deploy.targets import get_target

    d = host_dir()
    d.mkdir(parents=True)
    (d / PARTIAL_FILE).write_text(json.dumps({**identity, "workloads": workloads, "calibration": points}))
    report = profile_target(ProfileConfig(target="x86-host", resolutions=(128,), calibrate=3, keys=tuple(keys)),
                            progress=False)
    assert report.timed == 0 and report.reused == 12 and not (d / PARTIAL_FILE).exists()
    cal = report.model.calibration
    assert cal.a == pytest.approx(2.0) and cal.b == pytest.approx(1.0) and cal.n == 3 and cal.rms_pct < 1e-9
    assert [p["table_ms"] for p in report.calibration] == pytest.approx(sums, rel=1e-12)
    assert not report.model.complete  # 12 of 92 workloads: never used by search
    saved = json.loads((d / MODEL_FILE).read_text())
    assert saved["database_sha256"] is None and saved["calibration"]["n"] == 3 and saved["resolutions"] == [128]
    assert saved["calibration"]["design"].startswith("ends of a pool")

    # --recalibrate keeps the tables and times the model's calibration subnets again: none of the model's points
    # counts, a killed recalibration's (timed after the model) do, so with all of those nothing is timed
    from ofa_deploy.errors import OfaDeployError
    from ofa_deploy.latency.profile import _timed_since_model

    assert _timed_since_model(d, {p["id"]: p for p in saved["calibration"]["points"]}, "x86-host") == {}
    later = [{**with_passes(dict(p), 3.0 * s + 0.5, "measured_ms"), "timed_at": "2999-01-01T00:00:00+00:00"}
             for p, s in zip(points, sums)]
    (d / PARTIAL_FILE).write_text(json.dumps({**identity, "workloads": workloads, "calibration": later}))
    recal = ProfileConfig(target="x86-host", resolutions=(128,), calibrate=3, keys=tuple(keys), recalibrate=True)
    again = profile_target(recal, progress=False)
    assert again.timed == 0 and again.reused == 12
    assert again.model.calibration.a == pytest.approx(3.0) and again.model.calibration.b == pytest.approx(0.5)
    assert {k: w["median_ms"] for k, w in again.model.meta["workloads"].items()} == pytest.approx(
        {k: w["median_ms"] for k, w in saved["workloads"].items()})  # the tables as they were
    with pytest.raises(OfaDeployError, match="1 of 13 workloads .* have no timing here"):
        profile_target(dataclasses.replace(recal, keys=(*keys, block_key(128, 0, True, 5, 3))), progress=False)
    with pytest.raises(OfaDeployError, match="allowed 2 or more"):
        dataclasses.replace(recal, calibrate=1)
    (d / MODEL_FILE).rename(d / "kept.json")
    with pytest.raises(OfaDeployError, match="no latency model to recalibrate"):
        profile_target(recal, progress=False)
    (d / "kept.json").rename(d / MODEL_FILE)

    from ofa_deploy.latency.profile import _identity, _reusable

    now = _identity(get_target("x86-host"), None, SPACE, 1000, tvm_threads())
    assert _reusable(d, now)[0] == workloads  # the saved model is reusable as is
    # another thread count or TVM version: nothing is reused (and the stale partial is not trusted)
    for field, other in (("tvm_threads", tvm_threads() + 1), ("tvm_version", "0.1.0")):
        (d / MODEL_FILE).unlink(missing_ok=True)
        (d / PARTIAL_FILE).write_text(json.dumps({**identity, field: other, "workloads": workloads,
                                                  "calibration": points}))
        assert _reusable(d, now) == ({}, {}), field


def test_profile_fits_stage_terms_from_enough_calibration_subnets(tuning_logs):
    """30 calibration subnets whose stages run at different speeds than their blocks alone (timings in the partial
    file, nothing run): the saved model carries the stage terms, predicts its points by its tables, and names them."""
    from ofa_deploy.latency.profile import ProfileConfig, calibration_subnets, profile_target
    from ofa_deploy.latency.tables import stage_sums
    from ofa_deploy.tuning_logs.layout import PARTIAL_FILE

    keys = ["r128/stem", "r128/head"] + [block_key(128, s, f, 3, 3) for s in range(5) for f in (True, False)]
    data = fake_model(resolutions=(128,))
    workloads = {k: with_passes(data["workloads"][k], data["workloads"][k]["median_ms"]) for k in keys}
    table, fixed = measured_mod.tables_from_workloads(SPACE, (128,), {k: v["median_ms"] for k, v in workloads.items()})
    calib = calibration_subnets(SPACE, (128,), 30, 0, table, fixed)
    genes = configs_to_genes(calib, SPACE)
    scales = np.array([1.3, 1.0, 0.8, 1.1, 0.9])
    truth = 1.5 * (fixed[genes[:, -1]] + stage_sums(genes, table, SPACE) @ scales) + 0.3
    points = [with_passes({"id": c.id, "config": c.to_dict(), "std_ms": 0.0, "source": "measured"}, float(t),
                          "measured_ms") for c, t in zip(calib, truth)]
    d = host_dir()
    d.mkdir(parents=True)
    (d / PARTIAL_FILE).write_text(json.dumps({**partial_identity(data), "workloads": workloads, "calibration": points}))
    report = profile_target(ProfileConfig(target="x86-host", resolutions=(128,), calibrate=30, keys=tuple(keys)),
                            progress=False)
    cal = report.model.calibration
    assert report.timed == 0 and cal.n == 30 and cal.stage_scale is not None and cal.rms_pct < 0.5
    assert np.array(cal.stage_scale) / cal.stage_scale[0] == pytest.approx(scales / scales[0], rel=0.03)
    predicted = report.model.predict(genes)
    assert predicted == pytest.approx(truth, rel=0.01)
    assert [p["predicted_ms"] for p in report.calibration] == pytest.approx(predicted, rel=1e-12)
    saved = json.loads((d / MODEL_FILE).read_text())
    assert saved["calibration"]["terms"]["stage_scale"] == pytest.approx(list(cal.stage_scale))
    assert saved["calibration"]["loo_rms_pct"] < saved["calibration"]["terms"]["affine_loo_rms_pct"]
    assert "with stage and resolution terms" in report.model.basis
    # the same points without the stage effect: the line, and the file says so
    line = 1.5 * (fixed[genes[:, -1]] + stage_sums(genes, table, SPACE).sum(axis=1)) + 0.3
    points = [{**p, **with_passes({}, float(t), "measured_ms")} for p, t in zip(points, line)]
    (d / MODEL_FILE).unlink()
    (d / PARTIAL_FILE).write_text(json.dumps({**partial_identity(data), "workloads": workloads, "calibration": points}))
    again = profile_target(ProfileConfig(target="x86-host", resolutions=(128,), calibrate=30, keys=tuple(keys)),
                           progress=False)
    assert again.model.calibration.stage_scale is None and again.model.calibration.a == pytest.approx(1.5)
    assert json.loads((d / MODEL_FILE).read_text())["calibration"]["terms"] is None


def test_calibrate_defaults_to_the_modes_count(tmp_path):
    """Not given: 50 for a full profile (the stage terms need them), 12 with --adapt (its 15 minutes), the
    model's own count with --recalibrate (its subnets again); given: as given."""
    from ofa_deploy.latency.profile import ADAPT_CALIBRATION, FULL_CALIBRATION, ProfileConfig, calibration_count

    assert (FULL_CALIBRATION, ADAPT_CALIBRATION) == (50, 12)
    assert calibration_count(ProfileConfig(target="x86-host")) == FULL_CALIBRATION
    assert calibration_count(ProfileConfig(target="x86-host", adapt_from=str(tmp_path))) == ADAPT_CALIBRATION
    assert calibration_count(ProfileConfig(target="x86-host", calibrate=7, adapt_from=str(tmp_path))) == 7
    recal = ProfileConfig(target="x86-host", recalibrate=True, out_dir=str(tmp_path))
    assert calibration_count(recal) == FULL_CALIBRATION  # no model yet: profile then says there is none
    (tmp_path / MODEL_FILE).write_text(json.dumps({**fake_model(), "calibration": {**fake_model()["calibration"],
                                                                                   "n": 24}}))
    assert calibration_count(recal) == 24


def test_profile_cli_rejects_remote_targets_and_bad_resolutions(capsys):
    code, _, err = run_cli(["profile", "--target", "cortex-a76"], capsys)
    assert code == 2 and "does not run on this machine" in err and "RPC" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["profile", "--target", "x86-host", "--resolutions", "130"], capsys)
    assert code == 2 and "resolutions: 130 is not a resolution" in err and "128..224" in err
    code, _, err = run_cli(["profile", "--target", "x86-host", "--resolutions", "2x4"], capsys)
    assert code == 2 and "--resolutions: expected comma-separated integers" in err
    code, _, err = run_cli(["profile", "--target", "vta-ultra96"], capsys)
    assert code == 2 and ("analytic-only" in err or "does not run on this machine" in err)
    code, _, err = run_cli(["profile", "--target", "x86-host", "--time-blocks", "5"], capsys)
    assert code == 2 and "--time-blocks: anchors another device's tables; give --adapt" in err
    code, _, err = run_cli(["profile", "--target", "x86-host", "--recalibrate", "--calibrate", "1"], capsys)
    assert code == 2 and "--recalibrate refits the correction" in err and "allowed 2 or more" in err
    code, _, err = run_cli(["profile", "--target", "cortex-a76", "--estimate-from", "x86-host", "--retries", "0"],
                           capsys)
    assert code == 2 and "--retries: not used with --estimate-from" in err
    code, _, err = run_cli(["profile", "--target", "x86-host", "--adapt", "--time-blocks", "-1"], capsys)
    assert code == 2 and "--time-blocks" in err and ">=0" in err.replace(" ", "")
    code, _, err = run_cli(["profile", "--target", "cortex-a76", "--rpc", "127.0.0.1:9190:pi5", "--turns", "60"], capsys)
    assert code == 2 and "--turns 60: timing in turns holds every model in one process of this machine" in err
    code, _, err = run_cli(["profile", "--target", "cortex-a76", "--estimate-from", "x86-host", "--turns", "60"], capsys)
    assert code == 2 and "--turns: not used with --estimate-from" in err


@pytest.mark.tvm
def test_profile_tiny_set_end_to_end(tuning_logs, tmp_path, monkeypatch, caplog):
    """12 real workloads (r128, untuned) built once and timed in passes, 2 subnets compiled and timed end to end."""
    import dataclasses

    from ofa_deploy.compile.profile import ProfileSettings
    from ofa_deploy.latency.profile import ProfileConfig, profile_target

    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path / "cache"))  # an empty module cache
    modules = tmp_path / "cache" / "modules"
    keys = ["r128/stem", "r128/head"] + [block_key(128, s, f, 3, 3) for s in range(5) for f in (True, False)]
    # no retry passes: the pass counts below are the plumbing under test (tests/test_speed.py tests the retries)
    one_pass = ProfileSettings(repeat=5, min_repeat_ms=10.0, chunk_size=12, passes=1, keep_modules=True,
                               retry_passes=0)
    cfg = ProfileConfig(target="x86-host", resolutions=(128,), calibrate=2, keys=tuple(keys), settings=one_pass)
    first = profile_target(cfg, progress=False)
    assert len(list(modules.glob("*/*.so"))) == 12 + 2  # every workload and calibration subnet, built once
    assert all(len(w["pass_ms"]) == 1 for w in first.model.meta["workloads"].values())
    # a second pass on top of the first (a resumed or extended run): timed again, nothing rebuilt;
    # modules leave the cache once their last pass is done
    cfg = dataclasses.replace(cfg, settings=dataclasses.replace(one_pass, passes=2, keep_modules=False))
    caplog.set_level(logging.INFO, logger="ofa_deploy.compile.profile")
    caplog.clear()  # only the second run's messages
    report = profile_target(cfg, progress=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "ofa_deploy.compile.profile"]
    assert not [m for m in messages if m.startswith("built ")] and len([m for m in messages if m.startswith("timed ")]) == 14
    assert not list(modules.glob("*/*.so")) and not list(modules.glob("*/*.json"))
    meta = report.model.meta
    assert report.timed == 12 and set(meta["workloads"]) == set(keys)
    scaling = SpeedScaling.from_dict(meta["speed_scaling"])

    def referred(entry: dict) -> float:
        """The timing ``profile`` keeps: the median of the steady passes, referred to the lowest reading."""
        return scaling.timing(passes_of(entry))

    for key, w in meta["workloads"].items():
        assert w["source"] == "measured" and w["median_ms"] > 0 and w["tuned_funcs"] == 0 and w["total_funcs"] > 0
        assert w["pass_ms"][0] == first.model.meta["workloads"][key]["pass_ms"][0] and len(w["pass_ms"]) == 2
        assert w["median_ms"] == pytest.approx(referred(w)) and 2 <= w["n"] <= 10  # the steady samples of 2 x 5
        assert all(p["probe_us"] > 0 for p in w["passes"])  # every pass read the speed probe
    # every pass was probed: timings referred to the lowest reading; 2 subnets x 2 passes are too few to fit k
    readings = [p["probe_us"] for e in [*meta["workloads"].values(), *report.calibration] for p in e["passes"]]
    assert meta["speed_scaling"]["reference_us"] == min(readings) and not meta["speed_scaling"]["fitted"]
    assert "referred to probe" in report.model.basis
    stem = meta["workloads"]["r128/stem"]["median_ms"]
    assert all(w["median_ms"] > stem / 50 for w in meta["workloads"].values())  # no empty modules
    cal = report.model.calibration
    assert cal.n == 2 and cal.a > 0 and meta["database_sha256"] is None
    # no database here: untuned, or where this CPU borrows another's schedules (a CPU without AVX-512), that
    assert ("borrowed schedules" if meta["transfer_sha256"] else "untuned") in report.model.basis
    for p in report.calibration:
        cfg_p = SubnetConfig.from_dict(p["config"])
        assert p["table_ms"] == pytest.approx(python_sum(cfg_p, meta), rel=1e-12)
        assert p["measured_ms"] == pytest.approx(referred(p)) and p["measured_ms"] > 0 and len(p["pass_ms"]) == 2
        assert p["predicted_ms"] == pytest.approx(cal.a * p["table_ms"] + cal.b)
        assert p["residual_pct"] == pytest.approx((p["predicted_ms"] / p["measured_ms"] - 1) * 100)
    rel = np.array([p["residual_pct"] for p in report.calibration])
    assert cal.rms_pct == pytest.approx(np.sqrt(np.mean(rel ** 2)))
    genes = configs_to_genes([SubnetConfig.from_dict(p["config"]) for p in report.calibration])
    assert report.model.predict(genes) == pytest.approx([p["predicted_ms"] for p in report.calibration], rel=1e-12)
    # a rerun (e.g. after a kill) reuses every timing and builds nothing
    again = profile_target(cfg, progress=False)
    assert again.timed == 0 and again.reused == 12
    assert again.model.calibration.a == pytest.approx(cal.a) and again.model.calibration.b == pytest.approx(cal.b)


def test_smaller_head_is_accepted_larger_is_not():
    """A 10-class net only shrinks the profiled 1000-class classifier: the model is a safe upper bound."""
    from ofa_deploy.latency.measured import mismatch

    data = {"space": SPACE, "n_classes": 1000, "database_sha256": "h", "tvm_version": "v"}
    assert mismatch(data, database_sha256="h", tvm_version="v", space=SPACE, n_classes=10) is None
    assert "1000-class head" in mismatch(data, database_sha256="h", tvm_version="v", space=SPACE, n_classes=2000)


def test_the_adaptation_curve_refits_on_prefixes_of_the_calibration_subnets():
    """bench/adaptation_curve.refit_curve: n points of a device that runs 1.5x the tables + 0.2 ms recover it (and
    predict unseen subnets exactly) from n = 2 on, while the model's own correction (A, B) stays as it was."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from adaptation_curve import refit_curve

    from ofa_deploy.errors import OfaDeployError

    data = fake_model()
    model = MeasuredLatencyModel.from_dict(data)
    cfgs = random_configs(16, seed=3)
    table = model.table_sum(configs_to_genes(cfgs, SPACE))
    device = 1.5 * table + 0.2
    data["calibration"]["points"] = [{"config": c.to_dict(), "table_ms": -1.0, "measured_ms": float(m)}
                                     for c, m in zip(cfgs[:6], device[:6])]  # table sums: the model's own
    model = MeasuredLatencyModel.from_dict(data)
    rows = [{"ks": " ".join(map(str, c.ks)), "e": " ".join(map(str, c.e)), "d": " ".join(map(str, c.d)),
             "image_size": str(c.image_size), "pass_ms": f"{m:.6f}", "pass_probe_us": "0.000"}
            for c, m in zip(cfgs[6:], device[6:])]
    curve = refit_curve(model, rows, [2, 6])
    assert [c["n"] for c in curve] == [2, 6]
    for c in curve:
        assert c["a"] == pytest.approx(1.5, rel=1e-3) and c["b"] == pytest.approx(0.2, abs=1e-3)
        assert c["within_10pct"] == 1.0 and c["mape_pct"] < 0.01
    assert model.calibration.a == A and model.calibration.b == B
    with pytest.raises(OfaDeployError, match="6 calibration subnets"):
        refit_curve(model, rows, [7])

    # a device whose stages run at their own speeds: from 24 subnets on the refit has the stage terms
    from ofa_deploy.latency.tables import stage_sums

    cfgs = random_configs(70, seed=4)
    genes = configs_to_genes(cfgs, SPACE)
    device = 1.5 * (model.fixed[genes[:, -1]] + stage_sums(genes, model.table, SPACE) @ [1.3, 1.0, 0.8, 1.1, 0.9]) + 0.2
    data["calibration"]["points"] = [{"config": c.to_dict(), "measured_ms": float(m)}
                                     for c, m in zip(cfgs[:30], device[:30])]
    rows = [{"ks": " ".join(map(str, c.ks)), "e": " ".join(map(str, c.e)), "d": " ".join(map(str, c.d)),
             "image_size": str(c.image_size), "pass_ms": f"{m:.6f}", "pass_probe_us": "0.000"}
            for c, m in zip(cfgs[30:], device[30:])]
    line, terms = refit_curve(MeasuredLatencyModel.from_dict(data), rows, [12, 30])
    assert not line["terms"] and terms["terms"] and terms["mape_pct"] < min(0.1, line["mape_pct"] / 5)


def test_the_adaptation_curve_stands_a_full_profiles_entries_in_for_the_blocks_timed():
    """bench/adaptation_curve.anchored_model: with every block 'timed' the tables are the full profile's; with K the
    K largest shares are, and each other block moved by its stage's ratio (what profile --time-blocks K does)."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from adaptation_curve import anchored_model

    from ofa_deploy.latency.anchor import anchor_tables, block_shares, choose_blocks

    adapted, own = fake_model(resolutions=(224,), seed=1), fake_model(resolutions=(224,), seed=2)
    ms = {name: {k: w["median_ms"] for k, w in d["workloads"].items()} for name, d in (("a", adapted), ("o", own))}
    own_model = MeasuredLatencyModel.from_dict(own)
    every = anchored_model(MeasuredLatencyModel.from_dict(adapted), own_model, 10_000)
    assert {k: w["median_ms"] for k, w in every.meta["workloads"].items()} == ms["o"]
    some = anchored_model(MeasuredLatencyModel.from_dict(adapted), own_model, 15)
    picked = choose_blocks(block_shares(SPACE, (224,), ms["a"]), 15)
    expected, _ = anchor_tables(ms["a"], {k: ms["o"][k] for k in picked})
    assert {k: w["median_ms"] for k, w in some.meta["workloads"].items()} == pytest.approx(expected)
    assert adapted["workloads"]["r224/stem"]["median_ms"] == ms["a"]["r224/stem"]  # the input is left as it was


def test_block_ratios_weigh_each_blocks_tasks_by_their_time_and_fall_back_to_the_median():
    """A block's factor is its tasks' summed best times here over there (weights count repeats); a block whose
    known tasks hold under half its source time takes the median of the others."""
    from ofa_deploy.latency.rescale import block_ratios, rescale_workloads

    source = {"conv": 2e-4, "dw": 1e-4, "se": 1e-5, "odd": 3e-4}
    here = {"conv": 4e-4, "dw": 1e-4, "se": 3e-5}  # 256-bit code: the conv doubles, the depthwise does not
    tasks = {"b1": {"conv": 1, "dw": 2}, "b2": {"dw": 1, "se": 1}, "b3": {"odd": 1, "se": 1}, "b4": {"rule": 1}}
    r = block_ratios(tasks, source, here)
    assert r.ratio["b1"] == pytest.approx((4e-4 + 2e-4) / (2e-4 + 2e-4))
    assert r.ratio["b2"] == pytest.approx((1e-4 + 3e-5) / (1e-4 + 1e-5))
    assert r.cover["b3"] == pytest.approx(1e-5 / 3.1e-4) and r.cover["b4"] == 0.0
    assert r.uncovered == ("b3", "b4") and r.median == pytest.approx(np.median([r.ratio["b1"], r.ratio["b2"]]))
    assert r.ratio["b3"] == r.ratio["b4"] == r.median
    scaled = rescale_workloads({"b1": {"median_ms": 2.0, "pass_ms": [2.0]}, "zz": {"median_ms": 1.0}}, r)
    assert scaled["b1"]["median_ms"] == pytest.approx(2.0 * r.ratio["b1"]) and scaled["b1"]["source_ms"] == 2.0
    assert scaled["zz"]["median_ms"] == pytest.approx(r.median) and scaled["b1"]["pass_ms"] == [2.0]
    assert r.summary()["blocks_with_median"] == 2


def test_task_best_times_read_tune_state(tmp_path):
    from ofa_deploy.tuning_logs.database import task_best_times
    from ofa_deploy.tuning_logs.layout import STATE_FILE

    assert task_best_times(tmp_path) == (None, {})
    (tmp_path / STATE_FILE).write_text("{not json")
    assert task_best_times(tmp_path) == (None, {})
    (tmp_path / STATE_FILE).write_text(json.dumps({"database_sha256": "ab" * 32, "tasks": {
        "1": {"best_s": 2e-4}, "2": {"best_s": None}, "3": {"trials": 0}, "4": {"best_s": 0}}}))
    assert task_best_times(tmp_path) == ("ab" * 32, {"1": 2e-4})


def test_adapted_tables_are_rescaled_to_the_code_built_here(tuning_logs, monkeypatch):
    """profile --adapt: each adopted block is scaled by its tasks' best times in the databases builds here use
    (own first, then borrowed) over the source database's; a source whose task times are of another database, or
    no task times here, leaves the tables as they are."""
    from types import SimpleNamespace

    import ofa_deploy.compile.tune as tune_mod
    import ofa_deploy.tuning_logs.database as database_mod
    from ofa_deploy.latency import profile as profile_mod
    from ofa_deploy.tuning_logs.layout import STATE_FILE

    src, borrowed = tuning_logs / "src", tuning_logs / "avx2"
    for folder, sha, times in ((src, "aa" * 32, {"t1": 1e-4, "t2": 2e-4}), (borrowed, "bb" * 32, {"t1": 3e-4, "t2": 2e-4})):
        folder.mkdir(parents=True)
        (folder / STATE_FILE).write_text(json.dumps({"database_sha256": sha, "tasks": {
            h: {"best_s": s} for h, s in times.items()}}))
    monkeypatch.setattr(tune_mod, "workload_tasks", lambda *a, **k: {"w1": {"t1": 1}, "w2": {"t2": 1}, "w3": {"t1": 1, "t2": 1}})
    monkeypatch.setattr(database_mod, "transfer_folders", lambda name, limit=3: [(borrowed, borrowed)])
    borrowed_sha = {borrowed: "bb" * 32}  # the database builds borrow now
    monkeypatch.setattr(profile_mod, "database_hash", lambda path: borrowed_sha[path])
    run = SimpleNamespace(spec=SimpleNamespace(name="x86-host"), database=None, space=SimpleNamespace(name=SPACE),
                          n_classes=1000, identity={"database_sha256": None},
                          workloads={k: {"median_ms": 1.0} for k in ("w1", "w2", "w3")})
    cfg = profile_mod.ProfileConfig(target="x86-host", resolutions=(224,))
    info = profile_mod._rescale_to_this_code(run, cfg, src, {"database_sha256": "aa" * 32})
    assert [run.workloads[k]["median_ms"] for k in ("w1", "w2", "w3")] == pytest.approx([3.0, 1.0, 5 / 3])
    assert info["databases_here"] == [f"avx2 (db {'bb' * 4})"] and info["median_ratio"] == pytest.approx(5 / 3, abs=1e-4)
    data = fake_model(db=None)
    data.update(transfer_sha256=["bb" * 32], adapted_from={"folder": "src", "database_sha256": "aa" * 32, "rescaled": info})
    assert ("re-scaled per block by the task times of avx2 (db bbbbbbbb), calibrated on this device's code (borrowed "
            "schedules)") in MeasuredLatencyModel.from_dict(data).basis
    run.workloads = {k: {"median_ms": 1.0} for k in ("w1", "w2")}
    assert profile_mod._rescale_to_this_code(run, cfg, src, {"database_sha256": "cc" * 32}) is None  # stale times
    borrowed_sha[borrowed] = "dd" * 32  # the borrowed database changed since its tune_state was written
    assert profile_mod._rescale_to_this_code(run, cfg, src, {"database_sha256": "aa" * 32}) is None
    assert [w["median_ms"] for w in run.workloads.values()] == [1.0, 1.0]


@pytest.mark.tvm
def test_workload_tasks_are_the_keys_tune_state_records():
    """The task hashes of a block as x86-host builds it are the ones tune wrote into tune_state.json (every task of
    a 224 px block is in the shipped znver5 database's state): what re-scaling looks the best times up by."""
    from ofa_deploy.compile.tune import workload_tasks
    from ofa_deploy.tuning_logs.database import task_best_times

    key = "r224/s0-first/k3-e3"
    tasks = workload_tasks("x86-host", SPACE, (224,), keys={key})
    _, times = task_best_times(Path(__file__).resolve().parents[1] / "tuning_logs" / "x86_64-znver5-2c")
    assert set(tasks) == {key} and len(tasks[key]) >= 2 and all(w >= 1 for w in tasks[key].values())
    assert set(tasks[key]) <= set(times)


def test_block_shares_are_each_workloads_expected_time_in_a_uniformly_random_subnet():
    """The shares add up to the mean table sum of uniformly random subnets (checked by sampling 20 000), a stage's
    non-first blocks count P(d > 1) + P(d > 2) + P(d > 3) = 2 slots over 9 (k, e) variants, the stem runs always."""
    from ofa_deploy.latency.anchor import block_shares, choose_blocks

    data = fake_model(resolutions=(224,))
    ms = {k: v["median_ms"] for k, v in data["workloads"].items()}
    shares = block_shares(SPACE, (224,), ms)
    assert set(shares) == set(ms)
    assert shares["r224/stem"] == ms["r224/stem"]
    assert shares["r224/s2-first/k5-e6"] == pytest.approx(ms["r224/s2-first/k5-e6"] / 9)
    assert shares["r224/s2-later/k5-e6"] == pytest.approx(ms["r224/s2-later/k5-e6"] * 2 / 9)
    sums = MeasuredLatencyModel.from_dict(data).table_sum(configs_to_genes(random_configs(20000, 5, (224,)), SPACE))
    assert sum(shares.values()) == pytest.approx(float(np.mean(sums)), rel=0.01)
    top = choose_blocks(shares, 5)
    assert len(top) == 5 and [shares[k] for k in top] == sorted((shares[k] for k in top), reverse=True)
    assert min(shares[k] for k in top) >= max(v for k, v in shares.items() if k not in top)
    assert choose_blocks(shares, 0) == [] and len(choose_blocks(shares, 1000)) == len(shares)


def test_anchoring_moves_untimed_blocks_by_their_stages_timed_ratio():
    """Timed blocks take their timing; a stage with >= 2 timed blocks moves the rest by their median ratio, a stage
    with fewer by the median over every timed block; nothing timed changes nothing."""
    from ofa_deploy.latency.anchor import anchor_tables

    adopted = {"r224/s0-first/k3-e3": 1.0, "r224/s0-later/k3-e3": 2.0, "r224/s0-later/k5-e3": 4.0,
               "r224/s1-first/k3-e3": 1.0, "r224/s1-later/k7-e6": 3.0, "r224/stem": 0.5}
    timed = {"r224/s0-first/k3-e3": 2.0, "r224/s0-later/k3-e3": 6.0, "r224/s1-first/k3-e3": 1.5}  # x2, x3, x1.5
    out, how = anchor_tables(adopted, timed)
    assert {k: out[k] for k in timed} == timed
    assert out["r224/s0-later/k5-e3"] == pytest.approx(4.0 * 2.5)  # s0's own median of x2 and x3
    assert out["r224/s1-later/k7-e6"] == pytest.approx(3.0 * 2.0)  # one timed in s1: the median of all three
    assert out["r224/stem"] == pytest.approx(0.5 * 2.0)
    assert how.group_ratio == {"r224/s0": 2.5, "r224/s1": 2.0, "r224/stem": 2.0} and how.median == 2.0
    assert how.summary()["timed_blocks"] == 3 and how.summary()["stages_own_ratio"] == 1
    same, none = anchor_tables(adopted, {})
    assert same == adopted and none.median == 1.0


def test_profile_adapt_times_the_largest_blocks_and_anchors_the_rest(tuning_logs):
    """profile --adapt --time-blocks K without TVM (every timing already in the partial file, as after a kill): the K
    blocks with the largest share are this device's records, the others the source's moved by their stage's ratio;
    on a device that runs each stage x f_stage of the source, those are its exact tables and the calibration is
    exact. The model says so, and a later full profile reuses only the blocks timed here."""
    from ofa_deploy.compile.isolate import tvm_threads
    from ofa_deploy.errors import OfaDeployError
    from ofa_deploy.latency.anchor import block_shares, choose_blocks, stage_of
    from ofa_deploy.latency.profile import ProfileConfig, _identity, _reusable, calibration_subnets, profile_target
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.folders import measuring_identity
    from ofa_deploy.tuning_logs.layout import PARTIAL_FILE

    with pytest.raises(OfaDeployError, match="--time-blocks: anchors another device's tables; give --adapt"):
        ProfileConfig(target="x86-host", time_blocks=3)
    src = tuning_logs / "src-device"
    src.mkdir(parents=True)
    source = fake_model(resolutions=(224,))
    source["data_layout"] = get_target("x86-host").data_layout
    save_model(src / MODEL_FILE, source)
    factor = {"r224/s0": 2.0, "r224/s1": 3.0, "r224/s2": 2.5, "r224/s3": 1.5, "r224/s4": 4.0, "r224/stem": 2.2,
              "r224/head": 1.8}
    device = {k: {**v, "median_ms": v["median_ms"] * factor[stage_of(k)]} for k, v in source["workloads"].items()}
    adopted_ms = {k: v["median_ms"] for k, v in source["workloads"].items()}
    k_timed = 40
    picked = choose_blocks(block_shares(SPACE, (224,), adopted_ms), k_timed)
    assert all(sum(stage_of(k) == s for k in picked) >= 2 for s in factor if s[-1].isdigit())
    at_calibration = {k: (device[k] if k in picked else v)["median_ms"] for k, v in source["workloads"].items()}
    calib = calibration_subnets(SPACE, (224,), 4, 0, *measured_mod.tables_from_workloads(SPACE, (224,), at_calibration))
    sums = [python_sum(c, {"workloads": device}) for c in calib]
    identity = _identity(get_target("x86-host"), None, SPACE, 1000, tvm_threads())
    identity["device"] = measuring_identity("x86-host").to_json()
    d = host_dir()
    d.mkdir(parents=True)
    (d / PARTIAL_FILE).write_text(json.dumps({**identity, "workloads": {
        k: with_passes(device[k], device[k]["median_ms"]) for k in picked}, "calibration": [
        with_passes({"id": c.id, "config": c.to_dict(), "source": "measured"}, 1.1 * s + 0.3, "measured_ms")
        for c, s in zip(calib, sums)]}))
    report = profile_target(ProfileConfig(target="x86-host", resolutions=(224,), calibrate=4, adapt_from=str(src),
                                          time_blocks=k_timed), progress=False)
    meta = report.model.meta
    assert report.timed == 0  # all reused from the partial: nothing built
    for key, record in meta["workloads"].items():
        assert record["median_ms"] == pytest.approx(device[key]["median_ms"], rel=1e-9), key
        assert ("adopted_from" in record) == (key not in picked)
    cal = report.model.calibration
    assert cal.a == pytest.approx(1.1) and cal.b == pytest.approx(0.3, abs=1e-9) and cal.rms_pct < 1e-6
    anchored = meta["adapted_from"]["anchored"]
    assert anchored["timed_blocks"] == k_timed and anchored["blocks"] == sorted(picked)
    assert anchored["stage_ratios"]["r224/s4"] == 4.0
    assert f"anchored by {k_timed} blocks timed here" in report.model.basis and meta["tvm_target_built"] is not None
    assert set(_reusable(d, identity)[0]) == set(picked)  # a full profile starts from these, not the source's
