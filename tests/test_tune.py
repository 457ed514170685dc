"""``ofa-deploy tune``: MetaSchedule tuning into a per-target database, resumable and checked.

The TVM tests tune the smallest workload of the space (the head at resolution 128: 5 distinct
tasks) for 2 trials per task, in two chunks, and check what a user relies on: the database
holds records that ``build_module`` applies, a rerun tunes nothing new, a kill -9 mid-run loses
nothing measured (slow tier), and damaged or foreign databases are refused with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ofa_deploy.errors import OfaDeployError
from tests.conftest import alive, descendants, free_port, run_cli

HEAD = "r128/head"
SMALL = ["--target", "x86-host", "--resolutions", "128", "--workloads", HEAD, "--trials", "2", "--no-progress"]
AARCH64_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "keys": ["arm_cpu", "cpu"]}


def _fake_database(path: Path, target: dict, n_records: int = 2) -> Path:
    """A database with well-formed lines (enough for the checks that run before TVM)."""
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, WORKLOAD_FILE

    path.mkdir(parents=True, exist_ok=True)
    (path / WORKLOAD_FILE).write_text(json.dumps(["123", "bW9kdWxl"]) + "\n")
    (path / RECORD_FILE).write_text("".join(json.dumps([0, [[[], []], [1e-3 * (i + 1)], target, []]]) + "\n"
                                            for i in range(n_records)))
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- bad input (no TVM)

@pytest.mark.parametrize("args, expected", [
    (["--target", "no-such-board"], "no-such-board"),
    (["--target", "x86-host", "--rpc", "not-an-address"], "--rpc"),
    (["--target", "x86-host", "--rpc", "127.0.0.1:9090"], "HOST:PORT:KEY"),
    (["--target", "x86-host", "--resolutions", "130"], "allowed: 128..224"),
    (["--target", "x86-host", "--resolutions", "big"], "--resolutions"),
    (["--target", "x86-host", "--trials", "0"], "--trials"),
    (["--target", "x86-host", "--budget-minutes", "-1"], "--budget-minutes"),
    (["--target", "cortex-a76"], "--rpc HOST:PORT:KEY"),
    (["--target", "vta-zcu104"], "analytic-only"),
])
def test_bad_input_is_one_line_exit_2(args, expected, capsys, tmp_path):
    code, _, err = run_cli(["tune", *args, "--database", str(tmp_path / "db")], capsys)
    assert code == 2
    assert expected in _one_error_line(err)
    assert not (tmp_path / "db").exists()  # refused before touching anything


def test_unreachable_tracker_fails_fast(capsys, tmp_path):
    port = free_port()
    start = time.monotonic()
    code, _, err = run_cli(["tune", "--target", "x86-host", "--rpc", f"127.0.0.1:{port}:pi5",
                            "--database", str(tmp_path / "db")], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert f"127.0.0.1:{port}" in line and "cannot reach" in line
    assert time.monotonic() - start < 30  # bounded retries, no hang
    assert not (tmp_path / "db").exists()


def test_foreign_database_is_refused_and_untouched(capsys, tmp_path):
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    db = _fake_database(tmp_path / "db", AARCH64_TARGET)
    before = (db / RECORD_FILE).read_bytes()
    code, _, err = run_cli(["tune", *SMALL, "--database", str(db)], capsys)
    assert code == 2
    assert "tuned for aarch64" in _one_error_line(err)
    assert (db / RECORD_FILE).read_bytes() == before


def test_database_of_another_target_by_state_file(capsys, tmp_path):
    from ofa_deploy.tuning_logs.layout import STATE_FILE

    db = tmp_path / "db"
    db.mkdir()
    (db / STATE_FILE).write_text(json.dumps({"target": "cortex-a76"}))
    code, _, err = run_cli(["tune", *SMALL, "--database", str(db)], capsys)
    assert code == 2
    assert "belongs to target cortex-a76" in _one_error_line(err)


def test_corrupted_database_is_refused(capsys, tmp_path):
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    db = _fake_database(tmp_path / "db", {"kind": "llvm", "keys": ["cpu"]}, n_records=3)
    lines = (db / RECORD_FILE).read_text().splitlines()
    damaged = "\n".join([lines[0], lines[1][:25], lines[2]]) + "\n"  # damage in the middle: not a torn write
    (db / RECORD_FILE).write_text(damaged)
    code, _, err = run_cli(["tune", *SMALL, "--database", str(db)], capsys)
    assert code == 2
    assert f"{RECORD_FILE}:2: corrupted" in _one_error_line(err)
    assert (db / RECORD_FILE).read_text() == damaged


def test_one_tuning_run_per_database(capsys, tmp_path):
    from ofa_deploy.compile.tune import _locked

    db = tmp_path / "db"
    with _locked(db):
        code, _, err = run_cli(["tune", *SMALL, "--database", str(db)], capsys)
    assert code == 2
    assert f"pid {os.getpid()}" in _one_error_line(err)


@pytest.mark.parametrize("state, asked, refused", [
    ({"target": "x86-host", "data_layout": "NHWC", "cache": "cold"}, "warm", "timed with cold caches"),
    ({"target": "x86-host", "data_layout": "NHWC"}, "cold", "timed with warm caches"),  # before the field: warm
])
def test_a_database_is_never_timed_two_ways(state, asked, refused, capsys, tmp_path):
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, STATE_FILE

    db = _fake_database(tmp_path / "db", {"kind": "llvm", "keys": ["cpu"]})
    (db / STATE_FILE).write_text(json.dumps(state))
    before = (db / RECORD_FILE).read_bytes()
    code, _, err = run_cli(["tune", *SMALL, "--cache", asked, "--database", str(db)], capsys)
    line = _one_error_line(err)
    assert code == 2 and refused in line and f"--cache {state.get('cache', 'warm')}" in line
    assert (db / RECORD_FILE).read_bytes() == before and json.loads((db / STATE_FILE).read_text()) == state


def test_the_cache_protocol_is_the_databases_own_else_cold(tmp_path):
    from ofa_deploy.compile.tune import cache_protocol
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.layout import STATE_FILE

    cpu, gpu = get_target("x86-host"), get_target("cuda-sm80")
    assert cache_protocol(cpu, tmp_path / "new", None) == "cold"
    assert cache_protocol(cpu, tmp_path / "new", "warm") == "warm"
    old = _fake_database(tmp_path / "old", {"kind": "llvm", "keys": ["cpu"]})
    (old / STATE_FILE).write_text(json.dumps({"target": "x86-host"}))
    assert cache_protocol(cpu, old, None) == "warm"  # continued the way it was timed
    assert cache_protocol(gpu, tmp_path / "gpu", None) == "warm"
    with pytest.raises(OfaDeployError, match="allowed: warm"):
        cache_protocol(gpu, tmp_path / "gpu", "cold")


# ---------------------------------------------------------------- repair of torn writes (no TVM)

def test_repair_drops_only_a_torn_last_line(tmp_path):
    from ofa_deploy.tuning_logs.database import repair_database
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, WORKLOAD_FILE

    db = _fake_database(tmp_path / "db", {"kind": "llvm"}, n_records=3)
    good = (db / RECORD_FILE).read_bytes()
    (db / RECORD_FILE).write_bytes(good + good.splitlines()[0][:17])  # kill -9 mid-append
    assert repair_database(db) == {RECORD_FILE: 1}
    assert (db / RECORD_FILE).read_bytes() == good
    assert repair_database(db) == {}  # idempotent
    # A complete last line that only lacks its newline is kept (the next append would fuse onto it).
    (db / WORKLOAD_FILE).write_bytes((db / WORKLOAD_FILE).read_bytes().rstrip(b"\n"))
    assert repair_database(db) == {WORKLOAD_FILE: 0}
    assert (db / WORKLOAD_FILE).read_text().endswith("\n")
    assert len((db / WORKLOAD_FILE).read_text().splitlines()) == 1


def test_repair_refuses_a_record_of_a_missing_workload(tmp_path):
    from ofa_deploy.tuning_logs.database import repair_database
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    db = _fake_database(tmp_path / "db", {"kind": "llvm"})
    with open(db / RECORD_FILE, "a") as f:
        f.write(json.dumps([1, [[[], []], [1e-3], {"kind": "llvm"}, []]]) + "\n")
    with pytest.raises(OfaDeployError, match=r":3: corrupted .*workload 1"):
        repair_database(db)


# ---------------------------------------------------------------- a chunk's slice of the database (no TVM)

def _record(index: int, secs: float, tag: int) -> str:
    return json.dumps([index, [[[tag], []], [secs], {"kind": "llvm"}, []]]) + "\n"


def test_a_chunk_opens_a_slice_and_everything_it_measured_reaches_the_database(tmp_path):
    """The slice holds the chunk's tasks' records and each other workload's best; merging appends only the new ones."""
    from ofa_deploy.tuning_logs.database import merge_chunk, slice_for_chunk
    from ofa_deploy.tuning_logs.layout import CHUNK_DIR, COST_MODEL_FILE, RECORD_FILE, WORKLOAD_FILE

    db = tmp_path / "db"
    db.mkdir()
    (db / WORKLOAD_FILE).write_text("".join(json.dumps([h, "bW9k"]) + "\n" for h in ("100", "101", "102")))
    old = [_record(0, 3e-3, 1), _record(1, 2e-3, 2), _record(0, 1e-3, 3), _record(1, 1e10, 4), _record(1, 1e-3, 5),
           _record(2, 1e10, 6)]
    (db / RECORD_FILE).write_text("".join(old))
    (db / COST_MODEL_FILE).write_bytes(b"model v1")
    chunk = slice_for_chunk(db, ["101", "109"])  # 109: a task without records yet
    assert chunk == db / CHUNK_DIR and (chunk / WORKLOAD_FILE).read_bytes() == (db / WORKLOAD_FILE).read_bytes()
    sliced = (chunk / RECORD_FILE).read_text().splitlines(keepends=True)
    # every record of 101 (failed ones too: never measured again), 100's best only, nothing of 102 (all failed)
    assert sorted(sliced) == sorted([old[1], old[3], old[4], old[2]])
    assert (chunk / COST_MODEL_FILE).read_bytes() == b"model v1"
    # the worker: a new workload (109) committed after the copied ones, records of both tasks, a new cost model
    with open(chunk / WORKLOAD_FILE, "a") as f:
        f.write(json.dumps(["109", "bW9k"]) + "\n")
    new = [_record(1, 0.5e-3, 7), _record(3, 2e-3, 8)]
    with open(chunk / RECORD_FILE, "a") as f:
        f.write("".join(new) + new[0][:20])  # and a torn line: the worker was killed mid-append
    (chunk / COST_MODEL_FILE).write_bytes(b"model v2")
    assert merge_chunk(db) == 2 and not chunk.exists()
    assert (db / WORKLOAD_FILE).read_text().splitlines()[3] == json.dumps(["109", "bW9k"])
    assert (db / RECORD_FILE).read_text() == "".join(old) + "".join(new)  # 109 is workload 3 here too
    assert (db / COST_MODEL_FILE).read_bytes() == b"model v2"
    assert merge_chunk(db) == 0  # nothing left to merge
    again = slice_for_chunk(db, ["109"])  # merged, then killed before the slice was removed: nothing twice
    with open(again / RECORD_FILE, "a") as f:
        f.write(new[1])
    assert merge_chunk(db) == 0 and (db / RECORD_FILE).read_text() == "".join(old) + "".join(new)


def test_a_killed_chunk_is_merged_by_the_next_slice_and_renumbered_by_hash(tmp_path):
    from ofa_deploy.tuning_logs.database import merge_chunk, slice_for_chunk
    from ofa_deploy.tuning_logs.layout import CHUNK_DIR, RECORD_FILE, WORKLOAD_FILE

    db = _fake_database(tmp_path / "db", {"kind": "llvm"}, n_records=2)
    chunk = slice_for_chunk(db, ["555"])
    with open(chunk / WORKLOAD_FILE, "a") as f:
        f.write(json.dumps(["555", "bW9k"]) + "\n")
    with open(chunk / RECORD_FILE, "a") as f:
        f.write(_record(1, 1e-3, 9))
    # meanwhile the database gained the same workload at another index (never happens under the lock: checked anyway)
    with open(db / WORKLOAD_FILE, "a") as f:
        f.write(json.dumps(["777", "bW9k"]) + "\n" + json.dumps(["555", "bW9k"]) + "\n")
    before = (db / RECORD_FILE).read_text()
    again = slice_for_chunk(db, ["123"])  # the next run's first chunk merges the leftover first
    assert (db / RECORD_FILE).read_text() == before + _record(2, 1e-3, 9)
    assert len((db / WORKLOAD_FILE).read_text().splitlines()) == 3  # "555" matched by hash, not appended twice
    assert merge_chunk(db) == 0 and not again.exists()
    half = db / CHUNK_DIR
    half.mkdir()
    (half / RECORD_FILE).write_text(_record(0, 1e-3, 10))  # a slice killed while it was made: no slice.json
    assert merge_chunk(db) == 0 and not half.exists() and (db / RECORD_FILE).read_text() == before + _record(2, 1e-3, 9)


def test_budget_fit_takes_tasks_in_order():
    from ofa_deploy.compile.tune import _Task, _fit

    tasks = [_Task(i, f"t{i}", str(i), 1.0, 1, (), remaining=r) for i, r in enumerate([10, 10, 5])]
    # overhead 20 s + 10 trials x 2 s per task
    assert _fit(tasks, 39.0, 2.0, 20.0) == 0
    assert _fit(tasks, 40.0, 2.0, 20.0) == 1
    assert _fit(tasks, 69.0, 2.0, 20.0) == 2
    assert _fit(tasks, 1e9, 2.0, 20.0) == 3


# ---------------------------------------------------------------- tuning (TVM)

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The head at 128 tuned with 2 trials per task, in chunks of 3 tasks (two worker processes)."""
    from ofa_deploy.compile.tune import tune_target

    db = tmp_path_factory.mktemp("tune") / "x86-host"
    report = tune_target("x86-host", database_dir=db, resolutions=(128,), trials_per_task=2, keys=(HEAD,),
                         chunk_tasks=3, progress=False)
    return db, report


def _head_onnx() -> tuple[Path, tuple[int, ...]]:
    """The head as tune tunes it for x86-host: its edges in the target's layout, as inside a network."""
    from ofa_deploy.search_space import DEFAULT_SPACE
    from ofa_deploy.targets import get_target
    from ofa_deploy.workloads import export_workloads, space_workloads

    layout = get_target("x86-host").data_layout
    (w,) = [w for w in space_workloads(DEFAULT_SPACE, [128], None, layout) if w.key == HEAD]
    return export_workloads([w], DEFAULT_SPACE)[HEAD], w.input_shape


@pytest.mark.tvm
def test_tune_writes_records_that_compile_applies(tuned, tmp_path):
    from ofa_deploy.compile import build_module
    from ofa_deploy.compile.tune import TuneSettings
    from ofa_deploy.tuning_logs.database import database_hash
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, STATE_FILE

    db, report = tuned
    records = [json.loads(line) for line in (db / RECORD_FILE).read_text().splitlines()]
    assert report.tasks_total > 0 and report.tasks_tuned == report.tasks_total
    assert report.tasks_skipped == report.tasks_failed == report.tasks_left == 0
    assert report.trials == len(records) > 0 and report.trials_failed < report.trials
    assert report.trials <= 2 * report.tasks_total
    assert report.database_sha256 == database_hash(db)
    assert report.seconds_per_trial > 0 and report.chunk_overhead_s > 0
    assert {r[0] for r in records} == set(range(report.tasks_total))  # every task measured
    state = json.loads((db / STATE_FILE).read_text())
    assert state["target"] == "x86-host" and len(state["tasks"]) == report.tasks_total
    assert state["cache"] == "cold"  # a new database is timed with cold caches: one call per sample, 10 samples
    assert {len(r[1][1]) for r in records if r[1][1][0] < 1e9} == {TuneSettings().cold_samples}
    assert state["measured"]["local"]["trials"] == report.trials
    assert state["tuned_resolutions"] == []  # one workload of 128 is not the whole resolution

    onnx_path, shape = _head_onnx()
    info = build_module(onnx_path, "x86-host", tmp_path / "head.so", input_name="input", input_shape=shape,
                        database_dir=db)
    assert info.tuned_records_applied and 0 < info.tuned_funcs <= info.total_funcs
    assert info.database_hash == report.database_sha256


@pytest.mark.tvm
def test_rerun_polishes_once_then_tunes_nothing_new(tuned):
    from ofa_deploy.compile.tune import tune_target
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, STATE_FILE

    db, first = tuned
    # The first rerun polishes each task once: at most warm_start (4) seed schedules it has not measured
    # (its siblings in the shipped databases, re-fitted), no search; the second has nothing left to do.
    polished = tune_target("x86-host", database_dir=db, resolutions=(128,), trials_per_task=2, keys=(HEAD,),
                           progress=False)
    state = json.loads((db / STATE_FILE).read_text())
    # a task a seed beat by > 1 % is reopened and tuned on (here: siblings in the shipped r224 database)
    assert polished.tasks_skipped + polished.tasks_tuned == first.tasks_total
    assert 0 < polished.trials <= 4 * first.tasks_total + 2 * polished.tasks_tuned
    assert all(entry["polished"] for entry in state["tasks"].values())
    before = (db / RECORD_FILE).read_bytes()
    again = tune_target("x86-host", database_dir=db, resolutions=(128,), trials_per_task=2, keys=(HEAD,),
                        progress=False)
    assert again.tasks_skipped == first.tasks_total and again.tasks_tuned == again.trials == 0
    assert (db / RECORD_FILE).read_bytes() == before
    assert again.database_sha256 == polished.database_sha256


@pytest.mark.tvm
def test_tampered_workload_hash_is_refused(tuned, tmp_path, capsys):
    from ofa_deploy.tuning_logs.layout import WORKLOAD_FILE

    db = tmp_path / "db"
    shutil.copytree(tuned[0], db)
    lines = (db / WORKLOAD_FILE).read_text().splitlines()
    entry = json.loads(lines[1])
    entry[0] = str(int(entry[0]) ^ 1)
    lines[1] = json.dumps(entry)
    (db / WORKLOAD_FILE).write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(["tune", *SMALL, "--database", str(db)], capsys)
    assert code == 2
    assert "structural hash of workload line(s) [2]" in _one_error_line(err)


@pytest.mark.tvm
def test_budget_too_small_for_one_chunk_tunes_nothing(tuned, tmp_path, capsys):
    from ofa_deploy.compile.tune import ASSUMED_CHUNK_OVERHEAD_S
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    db = tmp_path / "db"  # fresh: no measured rates, so the assumed chunk start-up applies
    minutes = ASSUMED_CHUNK_OVERHEAD_S / 60 / 2
    code, out, _ = run_cli(["tune", *SMALL, "--database", str(db), "--budget-minutes", str(minutes)], capsys)
    assert code == 0
    assert f"budget reached: {tuned[1].tasks_total} tasks left" in out
    assert not (db / RECORD_FILE).exists()


@pytest.mark.tvm
def test_tune_an_arm_target_through_an_rpc_tracker(rpc_tracker, tmp_path, capsys):
    """Cross-compiled candidates measured on an aarch64 device (here: the C++ RPC server under qemu).

    Functional only: emulated timings are never a speed, so this database is a throwaway.
    """
    from ofa_deploy.compile import emulated_rpc_server
    from ofa_deploy.compile.rpc import registered_keys, tracker_summary
    from ofa_deploy.compile.tune import tune_target
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import check_database_target, database_targets
    from ofa_deploy.tuning_logs.identity import read_identity
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    db = tmp_path / "cortex-a76"
    with emulated_rpc_server(tracker=f"127.0.0.1:{rpc_tracker}", key="a64-tune") as spec:
        deadline = time.monotonic() + 60  # the server registers with the tracker after it listens
        while spec.key not in registered_keys(tracker_summary(spec, timeout_s=2, retries=0)):
            assert time.monotonic() < deadline, "the emulated server did not register with the tracker"
            time.sleep(0.5)
        report = tune_target("cortex-a76", database_dir=db, resolutions=(128,), trials_per_task=1, keys=(HEAD,),
                             rpc=str(spec), progress=False)
    records = [json.loads(line) for line in (db / RECORD_FILE).read_text().splitlines()]
    assert report.tasks_tuned == report.tasks_total and report.tasks_failed == 0
    assert report.trials == len(records) == report.tasks_total  # one trial per task
    assert all(0 < r[1][1][0] < 1.0 for r in records)  # measured on the device, none failed
    a76 = get_target("cortex-a76")
    assert [t["mtriple"] for t in database_targets(db)] == ["aarch64-linux-gnu"]
    check_database_target(db, a76.tvm_target, a76.name)
    board = read_identity(db)  # the folder names the device it measured on: the board behind the key
    assert board.kind == "rpc" and board.rpc_key == "a64-tune" and board.arch == "aarch64"
    # The same directory is foreign to the x86 host: refused, never appended to.
    before = (db / RECORD_FILE).read_bytes()
    code, _, err = run_cli(["tune", *SMALL, "--database", str(db)], capsys)
    assert code == 2 and "refusing to mix two devices" in _one_error_line(err) and "a64-tune" in err
    assert (db / RECORD_FILE).read_bytes() == before


@pytest.mark.tvm
@pytest.mark.slow
def test_kill_9_mid_run_then_resume(tmp_path):
    from ofa_deploy.compile import build_module
    from ofa_deploy.tuning_logs.layout import CHUNK_DIR, RECORD_FILE

    db = tmp_path / "db"
    measuring = db / CHUNK_DIR / RECORD_FILE  # the chunk's slice of the (empty) database: its records arrive here
    cmd = [sys.executable, "-m", "ofa_deploy.cli", "tune", *SMALL, "--database", str(db)]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if measuring.is_file() and measuring.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        workers = descendants(proc.pid)
        assert workers  # the tuning worker (and its builder/runner processes)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(alive(p) for p in workers), "the tuning worker outlived its killed parent"

    kept = measuring.read_bytes()
    kept = kept[:kept.rfind(b"\n") + 1]  # complete lines written before the kill
    with open(measuring, "ab") as f:
        f.write(kept.splitlines()[0][:40])  # a torn write on top
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "dropped 1 torn line" in done.stderr and "merged" in done.stderr  # the killed chunk's records kept
    after = (db / RECORD_FILE).read_bytes()
    assert after.startswith(kept)  # nothing measured before the kill was lost
    assert all(json.loads(line) for line in after.splitlines())
    onnx_path, shape = _head_onnx()
    info = build_module(onnx_path, "x86-host", tmp_path / "head.so", input_name="input", input_shape=shape,
                        database_dir=db)  # TVM loads the resumed database and applies it
    assert info.tuned_funcs > 0


@pytest.mark.tvm
@pytest.mark.slow
def test_builder_timeouts_are_failed_trials_not_a_failed_run(tmp_path):
    from ofa_deploy.compile.tune import TuneSettings, tune_target
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, STATE_FILE

    db = tmp_path / "db"
    report = tune_target("x86-host", database_dir=db, resolutions=(128,), trials_per_task=1, keys=(HEAD,),
                         settings=TuneSettings(builder_timeout_s=0.001), progress=False)
    records = [json.loads(line) for line in (db / RECORD_FILE).read_text().splitlines()]
    # Every candidate failed, the rule schedule each new task measures first included (1 trial + that seed).
    assert report.trials == report.trials_failed == len(records) and report.tasks_total <= len(records) <= 2 * report.tasks_total
    assert len({r[0] for r in records}) == report.tasks_total
    assert all(r[1][1][0] >= 1e9 for r in records)  # MetaSchedule's mark of a failed candidate
    # A chunk in which nothing could be measured leaves its tasks to the next run.
    assert report.tasks_failed == report.tasks_total and report.tasks_tuned == 0
    assert json.loads((db / STATE_FILE).read_text())["tasks"] == {}


def test_packed_database_keeps_its_hash_and_is_read_where_a_plain_one_is(tmp_path, monkeypatch, capsys):
    """The shipped form (gzip): same hash, resolved for TVM through the cache, unpacked again for tuning."""
    from ofa_deploy.tuning_logs.database import (current_database_hash, database_hash, default_database, is_packed,
                                                 pack_database, resolve_database, unpack_in_place)
    from ofa_deploy.tuning_logs.folders import host_dir
    from ofa_deploy.tuning_logs.layout import PACKED, RECORD_FILE, WORKLOAD_FILE

    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "tl"))
    target = {"kind": "llvm", "mcpu": "znver3"}
    db = _fake_database(host_dir(), target, n_records=50)  # x86-host: this CPU's folder
    assert db.parent == tmp_path / "tl"
    twin = _fake_database(tmp_path / "twin", target, n_records=50)
    plain = {name: (db / name).read_bytes() for name in (WORKLOAD_FILE, RECORD_FILE)}
    h = database_hash(db)
    assert resolve_database(db) == db and default_database("x86-host") == db and not is_packed(db)

    code, out, _ = run_cli(["tune", "--target", "x86-host", "--pack"], capsys)
    assert code == 0 and f"sha256 {h[:8]}, unchanged" in out
    assert is_packed(db) and (db / (WORKLOAD_FILE + PACKED)).is_file() and not (db / RECORD_FILE).exists()
    assert (db / (RECORD_FILE + PACKED)).stat().st_size < len(plain[RECORD_FILE]) / 5
    assert pack_database(twin) == h  # deterministic bytes: no file name or time in the gzip header
    assert all((db / (n + PACKED)).read_bytes() == (twin / (n + PACKED)).read_bytes() for n in plain)

    resolved = default_database("x86-host")  # what compile, profile and search hand to TVM
    assert resolved is not None and resolved.is_relative_to(tmp_path / "cache")
    assert {n: (resolved / n).read_bytes() for n in plain} == plain
    assert database_hash(resolved) == h == current_database_hash("x86-host")  # latency models stay valid
    assert resolve_database(db) == resolved  # unpacked once, then reused

    damaged = tmp_path / "damaged"
    shutil.copytree(twin, damaged)
    data = (damaged / (RECORD_FILE + PACKED)).read_bytes()
    (damaged / (RECORD_FILE + PACKED)).write_bytes(data[: len(data) // 2])  # a truncated download
    with pytest.raises(OfaDeployError, match=f"{RECORD_FILE + PACKED}: not a readable gzip file"):
        resolve_database(damaged)
    assert [p.name for p in (tmp_path / "cache" / "databases").iterdir()] == [resolved.name]  # no debris

    assert unpack_in_place(db) and not is_packed(db) and database_hash(db) == h
    assert not (db / (RECORD_FILE + PACKED)).exists() and not unpack_in_place(db)
    assert resolve_database(tmp_path / "empty") is None


def test_pack_refuses_tuning_options_and_missing_databases(tmp_path, capsys):
    code, _, err = run_cli(["tune", "--target", "x86-host", "--pack", "--trials", "4"], capsys)
    assert code == 2 and "--trials: not used with --pack" in _one_error_line(err)
    code, _, err = run_cli(["tune", "--target", "x86-host", "--pack", "--database", str(tmp_path)], capsys)
    assert code == 2 and "is not a MetaSchedule database directory" in _one_error_line(err)


def test_rounds_put_trials_where_the_latency_is_and_stop_converged_tasks(tmp_path, monkeypatch):
    """Round 1 gives every task 8 trials; later rounds double them for the tasks still improving, the largest
    share of the latency (weight x best time) first; a task whose round gained < 1 % stops (no TVM: the
    chunk worker is replaced by a fake device on which task 'a' keeps improving and task 'b' does not)."""
    import dataclasses
    from types import SimpleNamespace

    from ofa_deploy.compile import tune as tune_mod

    tasks = [tune_mod._Task(i, n, n, flops, weight, ("r224/stem",), 32)
             for i, (n, flops, weight) in enumerate([("a", 1e9, 1), ("b", 1e9, 4), ("c", 1e6, 1)])]
    best = {"a": 1e-3, "b": 2e-3, "c": 5e-3}  # c: few FLOPs, yet slow (memory bound)
    records = {t.hash: 0 for t in tasks}
    order: list[list[str]] = []

    def fake_chunk(job, chunk, plan_path, rates, bar, polish=False):
        assert not polish
        order.append([t.hash for t in chunk])
        for t in chunk:
            records[t.hash] += t.remaining
            best[t.hash] *= 0.5 if t.hash == "a" else 0.999  # only 'a' keeps getting faster
        return ({"records_added": sum(t.remaining for t in chunk), "records_failed": 0, "tune_seconds": 1.0,
                 "seed_records": 0, "first_build_error": None, "best_seconds": {t.hash: best[t.hash] for t in chunk},
                 "records": {t.hash: records[t.hash] for t in chunk}}, 1.5)

    monkeypatch.setattr(tune_mod, "_tune_chunk", fake_chunk)
    job = SimpleNamespace(spec=SimpleNamespace(name="x86-host"), progress=False, chunk_tasks=1, budget_s=None,
                          started=0.0, settings=tune_mod.TuneSettings(), trials=32, keys=None, db=tmp_path,
                          state_path=tmp_path / "tune_state.json", runner_kind="local", log_dir=tmp_path)
    state: dict = {"tasks": {}}
    rates = tune_mod._Rates(1.0, 1.0, "assumed")
    run = tune_mod._Run()
    left = tune_mod._run_chunks(job, state, tasks, list(tasks), tmp_path / "plan.json", rates, 96, run)
    assert tune_mod._round_targets(8, 64) == [8, 16, 32, 64] and tune_mod._round_targets(8, 2) == [2]
    assert order[:3] == [["b"], ["a"], ["c"]]  # round 1: by weighted FLOPs (b occurs 4 times)
    assert order[3:6] == [["b"], ["c"], ["a"]]  # round 2: by weight x best time (4 x 2 ms, 5 ms, 0.5 ms)
    assert order[6:] == [["a"]]  # round 3: only a still improves
    assert records == {"a": 32, "b": 16, "c": 16}  # b and c stopped after round 2: < 1 % gain
    assert state["tasks"]["b"]["converged"] and state["tasks"]["c"]["converged"]
    assert state["tasks"]["a"]["trials"] == 32 and not left and run.tuned == 3
    assert dataclasses.asdict(job.settings)["converged_gain"] == 0.01


def test_a_task_a_few_trials_short_of_a_round_waits_for_the_next(tmp_path, monkeypatch):
    """Rounds of 8, 16, 32, 64: a task at 30 records skips round 32 (2 trials would cost a whole chunk's
    start-up) and gets 34 in the last round, which takes every task short of --trials (no TVM: fake chunks)."""
    from types import SimpleNamespace

    from ofa_deploy.compile import tune as tune_mod

    tasks = [tune_mod._Task(0, "a", "a", 1e9, 1, ("r224/stem",), 34, records=30, best_s=1e-3),
             tune_mod._Task(1, "b", "b", 1e9, 1, ("r224/stem",), 1, records=63, best_s=1e-3)]
    chunks: list[list[tuple[str, int]]] = []

    def fake_chunk(job, chunk, plan_path, rates, bar, polish=False):
        chunks.append([(t.hash, t.remaining) for t in chunk])
        best = {t.hash: 0.5 * t.best_s for t in chunk}
        return ({"records_added": sum(t.remaining for t in chunk), "records_failed": 0, "tune_seconds": 1.0,
                 "seed_records": 0, "first_build_error": None, "best_seconds": best,
                 "records": {t.hash: t.records + t.remaining for t in chunk}}, 1.5)

    monkeypatch.setattr(tune_mod, "_tune_chunk", fake_chunk)
    job = SimpleNamespace(spec=SimpleNamespace(name="x86-host"), progress=False, chunk_tasks=4, budget_s=None,
                          started=0.0, settings=tune_mod.TuneSettings(), trials=64, keys=None, db=tmp_path,
                          state_path=tmp_path / "tune_state.json", runner_kind="local", log_dir=tmp_path)
    left = tune_mod._run_chunks(job, {"tasks": {}}, tasks, list(tasks), tmp_path / "plan.json",
                                tune_mod._Rates(1.0, 1.0, "assumed"), 35, tune_mod._Run())
    assert chunks == [[("a", 34), ("b", 1)]] and not left


def test_polish_tries_siblings_once_per_tuned_task_and_reopens_the_ones_it_improves(tmp_path, monkeypatch):
    """Before the rounds, each task tuned here (and only those) measures ``warm_start`` seed schedules once, the
    largest share of the latency first; a task they make > 1 % faster is no longer converged, and a second
    run polishes nothing (no TVM: the chunk worker is a fake on which a sibling halves task 'a')."""
    from types import SimpleNamespace

    from ofa_deploy.compile import tune as tune_mod

    tasks = [tune_mod._Task(i, n, n, 1e9, w, ("r224/stem",), 0, records=r, best_s=b)
             for i, (n, w, r, b) in enumerate([("a", 1, 16, 1e-3), ("b", 2, 64, 1e-3), ("new", 1, 0, None)])]
    state: dict = {"tasks": {"a": {"trials": 64, "records": 16, "best_s": 1e-3, "converged": True},
                             "b": {"trials": 64, "records": 64, "best_s": 1e-3, "converged": False}}}
    plan = {"tasks": [{"index": t.index, "hash": t.hash, "records": t.records} for t in tasks]}
    calls: list[tuple[list[str], list[int], bool]] = []

    def fake_chunk(job, chunk, plan_path, rates, bar, polish=False):
        calls.append(([t.hash for t in chunk], [t.remaining for t in chunk], polish))
        best = {"a": 0.5e-3, "b": 0.999e-3}
        return ({"records_added": 8, "records_failed": 0, "tune_seconds": 1.0, "seed_records": 8,
                 "first_build_error": None, "best_seconds": {t.hash: best[t.hash] for t in chunk},
                 "records": {t.hash: t.records + 4 for t in chunk}}, 1.5)

    monkeypatch.setattr(tune_mod, "_tune_chunk", fake_chunk)
    job = SimpleNamespace(spec=SimpleNamespace(name="x86-host"), progress=False, chunk_tasks=4, budget_s=None,
                          started=0.0, settings=tune_mod.TuneSettings(), trials=64, keys=None, db=tmp_path,
                          state_path=tmp_path / "tune_state.json", runner_kind="local", log_dir=tmp_path)
    rates = tune_mod._Rates(1.0, 1.0, "assumed")
    assert tune_mod._polish(job, state, tasks, plan, tmp_path / "plan.json", rates, tune_mod._Run())
    assert calls == [(["b", "a"], [4, 4], True)]  # b first: weight 2 x 1 ms; the untuned task is not polished
    a, b = state["tasks"]["a"], state["tasks"]["b"]
    assert a["polished"] and b["polished"] and a["best_s"] == 0.5e-3 and a["records"] == 20
    assert not a["converged"] and a["trials"] == 0  # reopened: the rounds may search on from the new best
    assert b["trials"] == 64  # 0.1 % better: stays done
    _, pending = tune_mod._pending_tasks({"tasks": [{**p, "name": p["hash"], "flops": 1e9, "weight": 1,
                                                     "workloads": ["r224/stem"]} for p in plan["tasks"]]},
                                         state, 64)
    assert sorted(t.hash for t in pending) == ["a", "new"] and state["tasks"]["a"]["polished"]
    assert not tune_mod._polish(job, state, tasks, plan, tmp_path / "plan.json", rates, tune_mod._Run())
    assert len(calls) == 1


def test_builds_read_only_each_workloads_fastest_record(tmp_path, monkeypatch):
    """best_records: one record per workload (lowest mean, failed runs never), renumbered, cached by content."""
    import json as _json

    from ofa_deploy.tuning_logs.database import best_records
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, WORKLOAD_FILE

    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path / "cache"))
    db = tmp_path / "db"
    db.mkdir()
    workloads = [["1-a", "AAA"], ["2-b", "BBB"], ["3-c", "CCC"]]
    target = {"kind": "llvm"}
    records = [[0, [["t0-slow"], [3e-3, 3e-3], target, []]], [0, [["t0-fast"], [1e-3, 2e-3], target, []]],
               [0, [["t0-min-not-mean"], [0.5e-3, 9e-3], target, []]],
               [1, [["t1-failed"], [1e10], target, []]],  # workload 1: only failed runs, nothing to borrow
               [2, [["t2"], [4e-3], target, []]], "[2, [torn"]
    (db / WORKLOAD_FILE).write_text("".join(_json.dumps(w) + "\n" for w in workloads))
    (db / RECORD_FILE).write_text("".join((r if isinstance(r, str) else _json.dumps(r)) + "\n" for r in records))
    best = best_records(db)
    assert [_json.loads(line) for line in (best / WORKLOAD_FILE).read_text().splitlines()] == [workloads[0],
                                                                                          workloads[2]]
    kept = [_json.loads(line) for line in (best / RECORD_FILE).read_text().splitlines()]
    assert kept == [[0, [["t0-fast"], [1e-3, 2e-3], target, []]], [1, [["t2"], [4e-3], target, []]]]
    assert best_records(db) == best  # cached: the same folder, not rebuilt
    with open(db / RECORD_FILE, "a") as f:  # a new record changes the database hash: a new copy
        f.write(_json.dumps([1, [["t1-ok"], [1e-3], target, []]]) + "\n")
    assert best_records(db) != best and len((best_records(db) / RECORD_FILE).read_text().splitlines()) == 3


@pytest.mark.tvm
def test_every_new_task_measures_the_rule_schedule_first(tmp_path):
    """A database is never worse than none: each new CPU task's first record is the rule schedule a build without
    a database emits (10- and 30-minute databases of random first trials ran slower than no database). With no
    seeds and one trial per task, that one record is the rule's, built and run."""
    from tvm.s_tir import meta_schedule as ms

    from ofa_deploy.compile.tune import TuneSettings, tune_target
    from ofa_deploy.compile.worker.seeds import rule_seed, trace_key
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    db = tmp_path / "x86-host"
    report = tune_target("x86-host", database_dir=db, resolutions=(128,), trials_per_task=1, keys=(HEAD,),
                         settings=TuneSettings(warm_start=0), progress=False)
    records = ms.database.JSONDatabase(work_dir=str(db)).get_all_tuning_records()
    assert len(records) == report.trials == report.tasks_total == len((db / RECORD_FILE).read_text().splitlines())
    cores = get_target("x86-host").cores
    ruled = [rec for rec in records if rule_seed(rec.workload.mod, cores)]
    assert len(ruled) >= report.tasks_total - 1  # a task the rule changes nothing in (a reshape) is searched
    for rec in ruled:
        assert trace_key(rec.trace) == trace_key(rule_seed(rec.workload.mod, cores)[0].trace)
        assert max(float(s) for s in rec.run_secs) < 1.0  # built and ran (a failed trial records 1e10)
