"""A board owner's whole path over TVM RPC: ``tune --rpc``, ``profile --rpc``, ``search``, ``compile --measure --rpc``.

The TVM test walks it end to end against the C++ RPC server under qemu (``emulated_rpc_server``,
registered at a real TVM tracker): every timing there is the emulator's, so every output must say
``emulated`` (plumbing, never a speed) and name the board by the key ``tune --rpc`` recorded. The
fast tests check what needs no board: ``profile --rpc``'s bad input (one line, exit 2, nothing
written, no device contacted) and how an emulated latency model is presented by search, compile's
prediction check, ``--estimate-from`` and the nearest-device fallback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from ofa_deploy.latency import measured as measured_mod
from ofa_deploy.search_space import SubnetConfig
from ofa_deploy.tuning_logs.layout import IDENTITY_FILE, MODEL_FILE, PARTIAL_FILE
from ofa_deploy.workloads import space_workloads
from tests.conftest import free_port, run_cli

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"
TARGET = "cortex-a76"
BOARD = "a64-board"


@pytest.fixture
def tuning_logs(tmp_path, monkeypatch) -> Path:
    """An empty tuning_logs/ and fresh warn-once memories."""
    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "tl"))
    monkeypatch.setattr(measured_mod, "_warned", set())
    return tmp_path / "tl"


def error_line(err: str) -> str:
    """The one ``error:`` line a refused command prints (and no traceback)."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def board_identity(key: str):
    from ofa_deploy.tuning_logs.folders import measuring_identity

    return measuring_identity(TARGET, key)


def emulated_record(ms: float, key: str = BOARD) -> dict:
    """One workload's timing as ``profile --rpc-emulated`` saves it (one pass)."""
    timing = {"median_ms": ms, "std_ms": 0.0, "n": 3, "source": "emulated", "runs_per_sample": 1,
              "device": f"'{key}' via RPC tracker 127.0.0.1:9190 (cpu, under qemu)"}
    return {**timing, "passes": [dict(timing)], "pass_ms": [ms], "tuned_funcs": 1, "total_funcs": 2,
            "tvm_target": {"kind": "llvm"}}


def emulated_model(resolutions=(128,), key: str = BOARD) -> dict:
    """A complete board model of emulated timings (what profile --rpc-emulated writes), untuned."""
    from ofa_deploy.compile.toolchain import installed_tvm_version

    rng = np.random.default_rng(0)
    workloads = {w.key: emulated_record(float(rng.uniform(5, 50)), key) for w in space_workloads(SPACE, resolutions)}
    return {"format": 1, "data_layout": "NHWC", "target": TARGET, "tvm_target": {"kind": "llvm"}, "tvm_version": installed_tvm_version(),
            "database_sha256": None, "space": SPACE, "n_classes": 1000, "resolutions": list(resolutions),
            "tvm_threads": None, "timing_source": "emulated", "device": board_identity(key).to_json(),
            "created": "2026-01-01T00:00:00+00:00", "workloads": workloads, "tuned_funcs": 1, "total_funcs": 2,
            "calibration": {"a": 1.0, "b": 0.0, "n": 0, "rms_pct": None, "max_pct": None, "seed": 0, "points": []}}


def install_board_model(tuning_logs: Path, data: dict) -> Path:
    """tuning_logs/cortex-a76/ as tune and profile --rpc leave it: the board's identity and its model."""
    from ofa_deploy.latency.measured import save_model
    from ofa_deploy.tuning_logs.identity import write_identity

    folder = tuning_logs / TARGET
    folder.mkdir(parents=True)
    write_identity(folder, board_identity(data["device"]["rpc_key"]))
    save_model(folder / MODEL_FILE, data)
    return folder


# ---------------------------------------------------------------- bad input (no TVM, no board)

@pytest.mark.parametrize("args, expected", [
    (["--target", TARGET, "--rpc", "not-an-address"], "--rpc: 'not-an-address' is not an RPC address"),
    (["--target", TARGET, "--rpc", "127.0.0.1:9190:pi 5"], "device key 'pi 5' is invalid"),
    (["--target", TARGET, "--rpc", "127.0.0.1:9090"], "HOST:PORT:KEY"),
    (["--target", "x86-host", "--rpc", "127.0.0.1:9190:pi5"], "x86-host runs on this machine"),
    (["--target", "vta-zcu104", "--rpc", "127.0.0.1:9190:pi5"], "analytic-only"),
    (["--target", TARGET, "--rpc-emulated"], "--rpc-emulated"),
    (["--target", TARGET], "--rpc HOST:PORT:KEY"),
    (["--target", TARGET, "--rpc", "127.0.0.1:9190:pi5", "--estimate-from", "x86-host"],
     "--rpc: not used with --estimate-from"),
])
def test_bad_rpc_input_is_one_line_exit_2(args, expected, tuning_logs, capsys):
    code, _, err = run_cli(["profile", *args], capsys)
    assert code == 2
    assert expected in error_line(err)
    assert not tuning_logs.exists()  # refused before anything is written


def test_another_boards_folder_is_refused_before_the_board_is_contacted(tuning_logs, capsys):
    """The folder tune --rpc made for board pi5 is refused to a run on pi4, naming both, at once.

    The tracker address is closed: had the run contacted it, the error would be 'cannot reach'.
    """
    from ofa_deploy.tuning_logs.identity import write_identity

    folder = tuning_logs / TARGET
    write_identity(folder, board_identity("pi5"))
    before = (folder / IDENTITY_FILE).read_bytes()
    code, _, err = run_cli(["profile", "--target", TARGET, "--rpc", f"127.0.0.1:{free_port()}:pi4"], capsys)
    line = error_line(err)
    assert code == 2 and "refusing to mix two devices" in line
    assert "rpc key pi5" in line and "rpc key pi4" in line and "--rpc HOST:PORT:pi5" in line
    assert sorted(p.name for p in folder.iterdir()) == [IDENTITY_FILE]
    assert (folder / IDENTITY_FILE).read_bytes() == before


def test_unreachable_tracker_fails_fast_and_claims_nothing(tuning_logs, capsys):
    port = free_port()
    start = time.monotonic()
    code, _, err = run_cli(["profile", "--target", TARGET, "--rpc", f"127.0.0.1:{port}:pi5"], capsys)
    line = error_line(err)
    assert code == 2 and "cannot reach" in line and f"127.0.0.1:{port}" in line
    assert time.monotonic() - start < 30
    assert not (tuning_logs / TARGET).exists()  # no identity.json naming a board never reached


# ---------------------------------------------------------------- an emulated model, presented honestly (no TVM)

def test_an_emulated_model_is_labelled_emulated_and_names_the_board(tuning_logs):
    from ofa_deploy.latency.choose import latency_model
    from ofa_deploy.latency.measured import nearest_model
    from ofa_deploy.tuning_logs.folders import nearest_devices, target_identity

    install_board_model(tuning_logs, emulated_model())
    model = latency_model(TARGET, SPACE)
    assert model.source == "emulated" and model.timing_source == "emulated" and model.complete
    assert "EMULATED" in model.basis and f"board '{BOARD}' over RPC" in model.basis
    assert "tuned-measured" not in model.basis and "untuned-measured" not in model.basis
    # the board is the nearest device to a Pi 4, but an emulator's tables never stand in for another device
    devices = [f for f, identity in nearest_devices(target_identity("cortex-a72")) if identity.kind != "named"]
    assert devices[0] == tuning_logs / TARGET
    near = nearest_model("cortex-a72")
    assert near is None or near[0] != tuning_logs / TARGET


def test_search_never_presents_an_emulated_model_as_a_speed(tuning_logs, tmp_path, capsys):
    install_board_model(tuning_logs, emulated_model())
    out_dir = tmp_path / "out"
    code, out, err = run_cli(["search", "--target", TARGET, "--latency-ms", "100000", "--population", "8",
                              "--generations", "2", "-o", str(out_dir)], capsys)
    assert code == 0, err
    assert "(emulated)" in out and "not a device speed" in out and "GOP/s" not in out
    assert "latency basis: " in out and "EMULATED" in out and "(estimated)" not in out and "(measured)" not in out
    sub = json.loads((out_dir / "subnet.json").read_text())
    assert sub["latency_source"] == "emulated" and "EMULATED" in sub["latency_basis"] and sub["gops"] is None
    assert sub["image_size"] == 128  # only the profiled resolution
    rows = (out_dir / "front.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {r.split(",")[header.index("latency_source")] for r in rows[1:]} == {"emulated"}


def test_compile_compares_an_emulated_latency_only_with_an_emulated_model(tuning_logs, caplog):
    from ofa_deploy.deploy import _check_prediction
    from ofa_deploy.targets import get_target

    install_board_model(tuning_logs, emulated_model())
    cfg = SubnetConfig.min(image_size=128)
    spec, board = get_target(TARGET), board_identity(BOARD).to_json()
    emulated = {"median_ms": 500.0, "source": "emulated"}
    got = _check_prediction(cfg, spec, 1000, emulated, board)
    assert got["source"] == "emulated" and got["measured_ms"] == 500.0 and got["same_device"]
    assert "EMULATED" in got["basis"] and not [r for r in caplog.records if "predicted" in r.getMessage()]
    assert _check_prediction(cfg, spec, 1000, {"median_ms": 5.0, "source": "measured"}, board) is None
    other = _check_prediction(cfg, spec, 1000, emulated, board_identity("pi4").to_json())
    assert other["same_device"] is False and "two devices" in caplog.text


def test_emulated_tables_teach_no_roofline_and_adapt_no_device(tuning_logs, capsys):
    folder = install_board_model(tuning_logs, emulated_model())
    code, _, err = run_cli(["profile", "--target", "cortex-a72", "--estimate-from", TARGET], capsys)
    assert code == 2 and "EMULATED timings" in error_line(err)
    code, _, err = run_cli(["profile", "--target", "x86-host", "--adapt-from", str(folder), "--resolutions", "128"],
                           capsys)
    assert code == 2 and "EMULATED timings" in error_line(err)


def test_emulated_and_measured_timings_are_never_reused_for_each_other(tmp_path):
    from ofa_deploy.latency.profile import _reusable

    identity = {"target": TARGET, "space": SPACE, "timing_source": "measured"}
    for source, reused in (("emulated", False), ("measured", True), (None, True)):  # None: a file before the field
        saved = {k: v for k, v in {**identity, "timing_source": source}.items() if v is not None}
        (tmp_path / PARTIAL_FILE).write_text(json.dumps({**saved, "workloads": {"r128/head": {"median_ms": 1.0}}}))
        assert bool(_reusable(tmp_path, identity)[0]) is reused, source
    emulated = {**identity, "timing_source": "emulated"}
    assert not _reusable(tmp_path, emulated)[0]  # the measured file is not an emulated run's either


# ---------------------------------------------------------------- the whole path under qemu (TVM)

TINY = ("r128/stem", "r128/head", "r128/s0-first/k3-e3")  # what profile --rpc really times on the board


def wait_registered(spec, timeout_s: float = 60.0) -> None:
    """The emulated server registers with the tracker after it listens."""
    from ofa_deploy.compile.rpc import registered_keys, tracker_summary

    deadline = time.monotonic() + timeout_s
    while spec.key not in registered_keys(tracker_summary(spec, timeout_s=2, retries=0)):
        assert time.monotonic() < deadline, "the emulated server did not register with the tracker"
        time.sleep(0.5)


def seed_killed_run(folder: Path) -> None:
    """The partial file a killed ``profile --rpc`` run leaves, holding every r128 workload but TINY.

    What the board really times is TINY (three builds and qemu runs); the other 89 workloads of the
    space come from this file, as after a kill, so the resumed run reuses them and the model it
    saves is complete: the only kind search uses. Same identity as the model of the TINY run.
    """
    model = json.loads((folder / MODEL_FILE).read_text())
    rest = {w.key: emulated_record(20.0) for w in space_workloads(SPACE, (128,)) if w.key not in TINY}
    (folder / PARTIAL_FILE).write_text(json.dumps({**model, "workloads": rest, "calibration": []}))


@pytest.mark.tvm
def test_a_board_owners_whole_path_under_qemu(rpc_tracker, tuning_logs, tmp_path, capsys):
    """tune --rpc, profile --rpc, search, compile --measure --rpc against the C++ RPC server under qemu.

    About 2.5 minutes on 2 cores: one tuning chunk, three workloads and two subnets built and run under qemu.
    """
    from ofa_deploy.compile import emulated_rpc_server
    from ofa_deploy.compile.profile import ProfileSettings
    from ofa_deploy.latency.profile import ProfileConfig, profile_target
    from ofa_deploy.tuning_logs.identity import read_identity
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    folder = tuning_logs / TARGET
    with emulated_rpc_server(tracker=f"127.0.0.1:{rpc_tracker}", key=BOARD) as spec:
        wait_registered(spec)
        rpc = ["--rpc", str(spec)]
        # 1. tune on the board: one small workload, one trial per task
        code, out, err = run_cli(["tune", "--target", TARGET, *rpc, "--resolutions", "128", "--workloads",
                                  "r128/head", "--trials", "1", "--no-progress"], capsys)
        assert code == 0, err
        board = read_identity(folder)
        assert (folder / RECORD_FILE).is_file() and board.kind == "rpc" and board.rpc_key == BOARD

        # 2. profile on the board: TINY really timed over RPC (then killed, in effect), the rest resumed
        tiny = profile_target(ProfileConfig(target=TARGET, resolutions=(128,), calibrate=0, keys=TINY,
                                            settings=ProfileSettings(passes=1), rpc=str(spec), rpc_emulated=True),
                              progress=False)
        assert tiny.timed == len(TINY) and not tiny.model.complete
        for w in tiny.model.meta["workloads"].values():
            assert w["source"] == "emulated" and BOARD in w["device"] and "under qemu" in w["device"]
            assert w["median_ms"] > 0 and w["tuned_funcs"] <= w["total_funcs"]
        seed_killed_run(folder)
        code, out, err = run_cli(["profile", "--target", TARGET, *rpc, "--rpc-emulated", "--resolutions", "128",
                                  "--calibrate", "1", "--passes", "1", "--no-progress"], capsys)
        assert code == 0, err
        assert "92 workloads (0 timed now, 92 reused)" in out and "latency model: EMULATED" in out
        data = json.loads((folder / MODEL_FILE).read_text())
        assert data["timing_source"] == "emulated" and data["device"]["rpc_key"] == BOARD
        assert read_identity(folder).same_device(board)  # the identity tune --rpc recorded, unchanged
        point = data["calibration"]["points"][0]  # one subnet compiled and timed end to end on the board
        assert point["source"] == "emulated" and BOARD in point["device"] and point["measured_ms"] > 0
        assert {w["source"] for w in data["workloads"].values()} == {"emulated"}
        assert not (folder / PARTIAL_FILE).exists()

        # 3. search with the board's model: labelled emulated, never a speed (a small subnet: a quick build)
        out_dir = tmp_path / "search"
        code, out, err = run_cli(["search", "--target", TARGET, "--latency-ms", "1000000", "--max-macs", "60M",
                                  "--population", "8", "--generations", "2", "-o", str(out_dir)], capsys)
        assert code == 0, err
        assert "(emulated)" in out and "GOP/s" not in out and f"board '{BOARD}'" in out
        sub = json.loads((out_dir / "subnet.json").read_text())
        assert sub["latency_source"] == "emulated" and sub["image_size"] == 128

        # 4. compile the result, verify and time it on the board, compare with the model's prediction
        build = tmp_path / "build"
        code, out, err = run_cli(["compile", str(out_dir / "subnet.json"), "--target", TARGET, "--random-weights",
                                  "--measure", *rpc, "--rpc-emulated", "-o", str(build)], capsys)
        assert code == 0, err
        assert "(emulated) - emulated: not a device speed" in out
        meta = json.loads((build / "metadata.json").read_text())
        assert meta["verification"]["status"] == "passed" and "(emulated)" in meta["verification"]["ran_on"]
        assert meta["latency"]["source"] == "emulated" and BOARD in meta["latency"]["device"]
        assert meta["measured_on"]["kind"] == "rpc" and meta["measured_on"]["rpc_key"] == BOARD
        prediction = meta["latency_prediction"]
        assert prediction["source"] == "emulated" and prediction["same_device"] and "EMULATED" in prediction["basis"]
        assert prediction["measured_ms"] == pytest.approx(meta["latency"]["median_ms"], abs=1e-3)

    # another board's key is refused, one line, the board's folder untouched
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    code, _, err = run_cli(["profile", "--target", TARGET, "--rpc", f"127.0.0.1:{rpc_tracker}:other-board"], capsys)
    assert code == 2 and "refusing to mix two devices" in error_line(err) and BOARD in err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
