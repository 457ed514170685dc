"""Timing in the machine's steady state (compile.speed): the rules, the remembered floor, and how
``time_workloads`` keeps steady passes and re-times models whose every pass was contended. No TVM
except the last test (the worker's probe)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ofa_deploy.compile import speed
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.compile.types import LatencyMeasurement

FLOOR = 1.5  # us per launch: a steady reading on the development VM; contended ones read ~2.8


def test_a_reading_is_contended_only_well_above_the_floor():
    assert not speed.is_contended(1.9, FLOOR)  # 1.27 x: noise
    assert speed.is_contended(2.0, FLOOR)  # 1.33 x
    assert not speed.is_contended(50.0, None)  # no floor known: nothing can be judged


def test_steady_samples_keeps_the_steady_ones_or_all_when_too_few_are():
    samples, probes = [1.0, 1.6, 1.05, 1.62, 1.02, 1.58], [1.5, 2.8, 1.55, 2.9, 1.6, 2.7]
    kept, readings = speed.steady_samples(samples, probes, FLOOR)
    assert kept == [1.0, 1.05, 1.02] and readings == [1.5, 1.55, 1.6]
    # one steady sample of six is less than a third: the pass is contended and keeps everything
    kept, readings = speed.steady_samples(samples, [2.8, 2.8, 1.5, 2.9, 2.9, 2.7], FLOOR)
    assert kept == samples and len(readings) == 6
    assert speed.median_probe([]) is None and speed.median_probe([1.0, 3.0, 2.0]) == 2.0


def test_local_measurement_is_the_median_of_the_steady_samples():
    from ofa_deploy.compile.build import local_measurement

    reply = {"samples_ms": [1.0, 1.6, 1.05, 1.62, 1.02], "probe_us": [1.5, 2.8, 1.55, 2.9, 1.6], "number": 7,
             "threads": 2}
    m = local_measurement(reply, "cpu", FLOOR)
    assert m.median_ms == 1.02 and m.n == 3 and m.probe_us == 1.55 and m.runs_per_sample == 7
    plain = local_measurement({k: reply[k] for k in ("samples_ms", "number", "threads")}, "cpu")
    assert plain.median_ms == 1.05 and plain.n == 5 and plain.probe_us is None  # no readings: every sample


def _m(ms: float, probe: float | None) -> LatencyMeasurement:
    return LatencyMeasurement(ms, 0.0, 15, "measured", 10, "x86_64 (2 threads)", probe_us=probe)


def test_fastest_pass_ignores_contended_passes_even_when_they_are_faster():
    from ofa_deploy.compile.profile import fastest_pass

    # the 2.9 ms pass ran while the probe read 1.9x the calmest pass's reading: lucky, not a speed
    assert fastest_pass([_m(3.0, 1.5), _m(2.9, 2.85), _m(3.1, 1.55)]).median_ms == 3.0
    # all contended alike: they compete among themselves (the retry passes are time_workloads' job)
    assert fastest_pass([_m(4.0, 2.8), _m(3.9, 2.9)]).median_ms == 3.9
    # passes without readings (a board, older records) always compete
    assert fastest_pass([_m(2.95, None), _m(2.9, 2.85), _m(3.1, 1.5)]).median_ms == 2.95


def test_the_floor_is_remembered_per_cpu_and_thread_count_and_only_ever_lowered(tmp_path, monkeypatch):
    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path))
    assert speed.recorded_floor("x86_64-znver5-2c", 2) is None
    speed.record_floor("x86_64-znver5-2c", 2, 1.7)
    speed.record_floor("x86_64-znver5-2c", 2, 2.5)  # higher: a slow reading never raises the floor
    speed.record_floor("x86_64-znver5-2c", 1, 0.4)
    assert speed.recorded_floor("x86_64-znver5-2c", 2) == 1.7 and speed.recorded_floor("x86_64-znver5-2c", 1) == 0.4
    assert speed.recorded_floor("x86_64-znver4-2c", 2) is None  # another CPU's floor is not this one's
    (tmp_path / speed.FLOOR_FILE).write_text("{not json")
    assert speed.recorded_floor("x86_64-znver5-2c", 2) is None
    speed.record_floor("x86_64-znver5-2c", 2, 1.6)  # a damaged file is replaced, not a crash
    assert json.loads((tmp_path / speed.FLOOR_FILE).read_text()) == {"x86_64-znver5-2c/2t": 1.6}


def test_time_workloads_times_again_the_models_whose_every_pass_was_contended(tmp_path, monkeypatch, caplog):
    """``a`` is steady throughout, ``b`` steady only in its second retry, ``c`` never: ``b`` and ``c`` get retry
    passes (indices from ``passes`` on, with the longer wait), ``a`` none; ``c`` is reported."""
    from ofa_deploy.compile import profile as prof

    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path / "cache"))
    steady_from = {"a": 0, "b": 4, "c": 99}  # the first pass index timed in the steady state
    calls: list[tuple[str, int, float]] = []

    def fake_chunk(chunk, so_paths, request, env, settings, measurement, bar, keep):
        for it in chunk:
            if not request["time"]:  # the build round: make the module "built"
                so_paths[it.key].write_bytes(b"so")
                Path(f"{so_paths[it.key]}.json").write_text("{}")
                keep(it.key, None, {})
                continue
            p = sum(1 for key, _, _ in calls if key == it.key)
            calls.append((it.key, p, request["steady_wait_s"]))
            probe = FLOOR if p >= steady_from[it.key] else 2.8
            record = {"key": it.key, "samples_ms": [1.0 + 0.5 * (probe > FLOOR)] * 5, "number": 1, "threads": 2,
                      "probe_us": [probe] * 5, "probe_lowest_us": FLOOR, "tuned_funcs": 0, "total_funcs": 1}
            keep(it.key, measurement(record), record)

    monkeypatch.setattr(prof, "_run_chunk", fake_chunk)
    monkeypatch.setattr(speed.SteadyState, "for_host",
                        classmethod(lambda cls, num_threads=None: cls("x86_64-test-2c", 2, None)))
    items = []
    for key in "abc":
        onnx = tmp_path / f"{key}.onnx"
        onnx.write_bytes(key.encode())
        items.append((key, onnx, (1, 3, 8, 8)))
    settings = prof.ProfileSettings(passes=2, retry_passes=3, steady_wait_s=1.0, retry_wait_s=30.0)
    seen: list[tuple[str, int]] = []
    with caplog.at_level(logging.WARNING, logger="ofa_deploy.compile.profile"):
        out = prof.time_workloads(items, "x86-host", settings=settings, progress=False,
                                  on_result=lambda key, p, m, record: seen.append((key, p)))
    assert [len(out[k]) for k in "abc"] == [2, 5, 5]  # b: 2 passes + 3 retries (steady in the third pass index 4)
    assert ("b", 4) in seen and ("c", 4) in seen and not [p for k, p in seen if k == "a" and p >= 2]
    assert {w for k, p, w in calls if p >= 2} == {30.0} and {w for k, p, w in calls if p < 2} == {1.0}
    assert prof.fastest_pass(out["b"]).median_ms == 1.0 and prof.fastest_pass(out["b"]).probe_us == FLOOR
    assert any("timed only while the machine was slowed" in r.getMessage() and "(c" in r.getMessage()
               for r in caplog.records)
    assert speed.recorded_floor("x86_64-test-2c", 2) == FLOOR  # the lowest reading is remembered


def test_in_turns_divides_out_a_drift_that_every_model_shares():
    """Three models 1 : 2 : 5 timed in turns while the machine's speed wanders by +-30 % (a random walk) and each
    sample scatters 1 %: their latencies come back in the true ratios to ~1 %, at the session's median speed,
    while each model's own median is off by the drift it happened to see."""
    rng = np.random.default_rng(0)
    true, turns, block = np.array([1.0, 2.0, 5.0]), 200, 3
    drift = np.exp(np.clip(np.cumsum(rng.normal(0, 0.05, turns)), -0.3, 0.3))
    samples = [list(np.repeat(t * drift, block) * np.exp(rng.normal(0, 0.01, turns * block))) for t in true]
    timing = speed.in_turns(samples, block)
    ratios = np.array(timing.latency_ms) / timing.latency_ms[0]
    assert ratios == pytest.approx(true, rel=0.01)
    assert np.median(timing.turn_speed) == pytest.approx(1.0)
    assert np.array(timing.turn_speed) == pytest.approx(drift / np.median(drift), rel=0.02)
    assert timing.latency_ms[0] == pytest.approx(np.median(drift), rel=0.02)  # ms at the median speed
    assert max(timing.spread) < 0.02  # what is left once each turn's speed is out: the 1 % sample noise
    # one model: its median block; ragged or empty input is refused
    assert speed.in_turns([[3.0, 1.0, 2.0, 4.0]], 1).latency_ms == [2.5]
    with pytest.raises(ValueError, match="equally long"):
        speed.in_turns([[1.0, 2.0], [1.0]], 1)
    with pytest.raises(ValueError):
        speed.in_turns([[1.0]], 2)


def test_time_workloads_in_turns_times_each_pass_in_one_process(tmp_path, monkeypatch):
    """``ProfileSettings(turns=N)``: each pass is one ``time_interleaved`` worker call over every model still
    to time (one input per model), each model's latency with the turns' drift divided out; passes already done
    are skipped, no retry pass runs, and the measurements carry no probe reading (a pass is at its own median
    speed already)."""
    from ofa_deploy.compile import profile as prof

    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path / "cache"))
    requests: list[dict] = []

    def fake_chunk(chunk, so_paths, request, env, settings, measurement, bar, keep):
        assert not request["time"], "in turns, only the build round goes through the chunked worker"
        for it in chunk:
            so_paths[it.key].write_bytes(b"so")
            Path(f"{so_paths[it.key]}.json").write_text(json.dumps({"tuned_funcs": 1, "total_funcs": 2}))
            keep(it.key, None, {})

    def fake_worker(request, *, what, timeout, poll, env=None):
        requests.append(request)
        Path(request["progress_path"]).write_bytes(b"." * request["calls"])  # every turn done
        poll()
        shapes = [np.load(p).shape for p in request["input_paths"]]
        assert shapes == [(1, 3, 8, 8), (1, 3, 16, 16)][-len(shapes):]
        n = request["calls"] * request["block"]
        slow = np.repeat([1.0, 1.5] * (request["calls"] // 2), request["block"])  # every other turn 1.5x slow
        return {"samples_ms": [list(base * slow[:n]) for base in (1.0, 4.0)[-len(shapes):]],
                "numbers": [1] * len(shapes), "threads": 2}

    monkeypatch.setattr(prof, "_run_chunk", fake_chunk)
    monkeypatch.setattr(prof, "run_worker_polling", fake_worker)
    items = []
    for key, size in (("a", 8), ("b", 16)):
        onnx = tmp_path / f"{key}.onnx"
        onnx.write_bytes(key.encode())
        items.append((key, onnx, (1, 3, size, size)))
    seen: list[tuple[str, int, dict]] = []
    out = prof.time_workloads(items, "x86-host", settings=prof.ProfileSettings(passes=3, turns=10, retry_passes=3),
                              progress=False, passes_done={"a": 1},
                              on_result=lambda key, p, m, record: seen.append((key, p, record)))
    assert [len(r["so_paths"]) for r in requests] == [1, 2, 2]  # pass 1: only b; passes 2 and 3: both
    assert all(r["op"] == "time_interleaved" and r["calls"] == 10 and r["min_sample_ms"] > 0 for r in requests)
    assert sorted((k, p) for k, p, _ in seen) == [("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    m = out["b"][0]
    # the median turn speed is between the fast and the slow turns: both models at that one speed, in ratio 1 : 4
    assert out["a"][0].median_ms * 4 == pytest.approx(m.median_ms) and m.n == 10
    assert m.probe_us is None and m.source == "measured"
    assert all(r["tuned_funcs"] == 1 and r["timing"] == "in 10 turns" for _, _, r in seen)
    with pytest.raises(OfaDeployError, match="turns >= 0"):
        prof.ProfileSettings(turns=-1)
    # a board or a GPU: refused before anything is built (turns hold every model in one process of this machine)
    board = prof.RemoteDevice(prof.RpcSpec.parse("127.0.0.1:9190:pi5"))
    with pytest.raises(OfaDeployError, match="--turns 10: timing in turns holds every model in one process of this "
                                             "machine's CPU; cortex-a76 is timed over RPC"):
        prof.time_workloads(items, "cortex-a76", settings=prof.ProfileSettings(turns=10), progress=False, remote=board)
    assert len(requests) == 3


def test_a_profile_in_turns_never_resumes_timings_taken_one_by_one(tmp_path):
    """The way of timing is part of a profile's identity: a partial file timed one by one (or from before the field)
    is reused by a run timed the same way, never by one in turns, and the other way round."""
    from ofa_deploy.compile.profile import ProfileSettings
    from ofa_deploy.latency import profile as lp
    from ofa_deploy.tuning_logs.layout import PARTIAL_FILE

    identity = {"target": "x86-host", "tvm_version": "t"}
    one_by_one, in_turns = ProfileSettings().timing, ProfileSettings(turns=60).timing
    record = {"passes": [{"median_ms": 1.0}]}
    (tmp_path / PARTIAL_FILE).write_text(json.dumps({**identity, "workloads": {"r224/stem": record}}))
    assert list(lp._reusable(tmp_path, {**identity, "timing": one_by_one})[0]) == ["r224/stem"]  # before the field
    assert lp._reusable(tmp_path, {**identity, "timing": in_turns})[0] == {}
    (tmp_path / PARTIAL_FILE).write_text(json.dumps({**identity, "timing": in_turns, "workloads": {"r224/stem": record}}))
    assert lp._reusable(tmp_path, {**identity, "timing": one_by_one})[0] == {}
    assert list(lp._reusable(tmp_path, {**identity, "timing": in_turns})[0]) == ["r224/stem"]
    assert (one_by_one, in_turns) == ("one by one", "in 60 turns")


@pytest.mark.tvm
def test_the_worker_probe_reads_a_steady_floor_and_times_with_a_reading_per_sample():
    """The probe kernel builds and reads microseconds per launch; the profile worker's steady timing
    returns one reading per kept sample (worker code run in-process)."""
    pytest.importorskip("tvm")
    from ofa_deploy.compile.worker.speed_probe import SpeedProbe

    probe = SpeedProbe()
    readings = [probe.read_us() for _ in range(5)]
    assert all(0.05 < r < 1000 for r in readings)
    assert probe.lowest_us == pytest.approx(min(readings + [probe.lowest_us]))
    assert probe.floor(None) == probe.lowest_us and probe.floor(probe.lowest_us / 2) == probe.lowest_us / 2
    # waiting against a floor far below anything this machine reads gives up after the bound
    import time

    start = time.monotonic()
    probe.wait_steady(probe.lowest_us / 10, 0.5)
    assert 0.4 < time.monotonic() - start < 5.0
