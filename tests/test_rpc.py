"""TVM RPC: compiled modules run and timed on a remote device, tested against servers on this machine.

The aarch64 C++ server (examples/deploy_cpp/rpc_server.cc) runs under qemu: its outputs are the
device's numerics and its timings are labelled ``emulated``. The tracker path uses TVM's own
Python tracker and Python server on this x86 host, as a board with Python would run them: those
timings are real, ``measured``. Bad addresses fail with one line, fast (hang guards only).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ofa_deploy import SubnetConfig
from ofa_deploy.compile.rpc import RpcSpec, check_reachable, registered_keys, tracker_summary
from ofa_deploy.errors import OfaDeployError
from tests.conftest import free_port, run_cli

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"
HANG_GUARD_S = 30.0  # a bad address must fail long before this (loose: the machine is shared)
START_TIMEOUT_S = 120.0  # TVM's Python tracker/server import TVM first: slow on 2 busy cores


def _wait_for_key(spec: RpcSpec, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if spec.key in registered_keys(tracker_summary(spec, timeout_s=2, retries=0)):
                return
        except OfaDeployError:
            pass  # tracker still starting
        time.sleep(0.5)
    pytest.fail(f"no server registered as {spec.key!r} at {spec.host}:{spec.port} within {timeout:.0f} s")


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- bad input: no TVM needed ------------------------------------------------------------------

@pytest.mark.parametrize("text, host, port, key", [
    ("192.168.1.10:9190:pi5", "192.168.1.10", 9190, "pi5"),
    ("jetson.local:9090", "jetson.local", 9090, None),
    ("127.0.0.1:9190:orin-agx_64.gb", "127.0.0.1", 9190, "orin-agx_64.gb"),
])
def test_rpc_spec_forms(text, host, port, key):
    spec = RpcSpec.parse(text)
    assert (spec.host, spec.port, spec.key, spec.is_tracker) == (host, port, key, key is not None)
    assert str(spec) == text and RpcSpec.parse(str(spec)) == spec
    assert ("via RPC tracker" if key else "RPC server") in spec.describe()


@pytest.mark.parametrize("text", ["", "pi5", "host:", ":9190", "host:abc", "host:0", "host:70000",
                                  "host:9190:", "host:9190:pi 5", "host:9190:pi5:extra", "http://host:9190"])
def test_bad_rpc_strings_name_the_field_and_the_forms(text):
    with pytest.raises(OfaDeployError, match=r"^--rpc: .*(HOST:PORT:KEY|1\.\.65535)") as err:
        RpcSpec.parse(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", [None, "pi5"])
def test_closed_port_is_a_clear_error_in_bounded_time(key):
    spec = RpcSpec("127.0.0.1", free_port(), key)
    start = time.monotonic()
    with pytest.raises(OfaDeployError, match=f"cannot reach the RPC {'tracker' if key else 'server'} at "
                                             f"127.0.0.1:{spec.port} .*2 attempts") as err:
        check_reachable(spec, timeout_s=2, retries=1)
    assert time.monotonic() - start < HANG_GUARD_S
    assert "\n" not in str(err.value) and ("rpc_tracker" if key else "rpc_server") in str(err.value)


def test_port_that_does_not_speak_the_tracker_protocol():
    """A listener that never answers (not a tracker): the read times out, no hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        spec = RpcSpec("127.0.0.1", listener.getsockname()[1], "pi5")
        start = time.monotonic()
        with pytest.raises(OfaDeployError, match="does not answer as an RPC tracker"):
            check_reachable(spec, timeout_s=1, retries=0)
        assert time.monotonic() - start < HANG_GUARD_S


@pytest.mark.parametrize("args, expected", [
    (["--measure", "--rpc", "raspberrypi"], "--rpc: 'raspberrypi' is not an RPC address; allowed: HOST:PORT:KEY"),
    (["--measure", "--rpc", "127.0.0.1:{closed}:pi5"], "cannot reach the RPC tracker at 127.0.0.1:{closed}"),
    (["--measure", "--rpc", "127.0.0.1:{closed}"], "cannot reach the RPC server at 127.0.0.1:{closed}"),
    (["--rpc", "127.0.0.1:9090"], "add --measure"),
    (["--measure", "--rpc-emulated"], "--rpc-emulated: marks an --rpc server as running under qemu"),
])
def test_cli_rejects_bad_rpc_before_building(tmp_path, capsys, args, expected):
    SubnetConfig.min(SPACE, 128).to_json(tmp_path / "subnet.json")
    closed = free_port()
    args = [a.format(closed=closed) for a in args]
    start = time.monotonic()
    code, out, err = run_cli(["compile", str(tmp_path / "subnet.json"), "--random-weights", "--target", "x86-host",
                              *args, "-o", str(tmp_path / "out")], capsys)
    assert time.monotonic() - start < HANG_GUARD_S
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected.format(closed=closed) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet.json"]  # nothing built, nothing written


# --- the whole path, with TVM ------------------------------------------------------------------

@pytest.fixture(scope="module")
def stem():
    """(ONNX path, input shape, input, PyTorch output) of the space's stem at resolution 128."""
    import torch

    from ofa_deploy.workloads import export_workloads, space_workloads, workload_module

    w = next(w for w in space_workloads(SPACE, [128]) if w.kind == "stem")
    x = np.random.default_rng(0).standard_normal(w.input_shape).astype(np.float32)
    with torch.no_grad():
        ref = workload_module(w, SPACE)(torch.from_numpy(x)).numpy()
    return export_workloads([w], SPACE)[w.key], w.input_shape, x, ref


def _build(stem, target: str, out: Path) -> str:
    from ofa_deploy.compile import build_module
    from ofa_deploy.export import INPUT_NAME

    onnx_path, shape, _, _ = stem
    return build_module(onnx_path, target, out, input_name=INPUT_NAME, input_shape=shape).so_path


@pytest.fixture(scope="module")
def a76_module(stem, tmp_path_factory):
    return _build(stem, "cortex-a76", tmp_path_factory.mktemp("a76") / "stem_a76.so")


@pytest.fixture(scope="module")
def x86_module(stem, tmp_path_factory):
    return _build(stem, "x86-host", tmp_path_factory.mktemp("x86") / "stem_x86.so")


@pytest.fixture(scope="module")
def tracker(rpc_tracker):
    """The shared tracker (conftest.py) as (host, port)."""
    return "127.0.0.1", rpc_tracker


@pytest.fixture(scope="module")
def x86_server(tracker):
    """TVM's Python RPC server on this x86 host, registered with the tracker as 'x86-ci'."""
    host, port = tracker
    server_port = free_port()
    proc = _start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                   "--port-end", str(server_port + 1), "--tracker", f"{host}:{port}", "--key", "x86-ci"])
    spec = RpcSpec(host, port, "x86-ci")
    try:
        _wait_for_key(spec)
        yield spec
    finally:
        _stop(proc)


def _assert_device_output(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.tvm
def test_emulated_aarch64_server_runs_and_times(stem, a76_module, x86_module):
    from ofa_deploy.compile import emulated_rpc_server, run_rpc, time_rpc

    _, _, x, ref = stem
    with emulated_rpc_server() as spec:
        assert not spec.is_tracker and spec.host == "127.0.0.1"
        _assert_device_output(run_rpc(a76_module, x, spec), ref)
        m = time_rpc(a76_module, x, spec, emulated=True)
        assert m.source == "emulated" and m.n == 3 and m.runs_per_sample == 1  # emulated: few samples
        assert m.median_ms > 0 and m.std_ms >= 0 and f"RPC server 127.0.0.1:{spec.port}" in m.device
        assert "under qemu" in m.device
        with pytest.raises(OfaDeployError, match=f"running {Path(x86_module).name} on RPC server.*x86_64 code: "
                                                 "is it built for this device"):
            run_rpc(x86_module, x, spec)  # an x86 module cannot load on the aarch64 board
        _assert_device_output(run_rpc(a76_module, x, spec), ref)  # the server outlived the failed session


@pytest.mark.tvm
def test_tracker_and_key_measure_on_the_x86_python_server(stem, x86_module, x86_server):
    from ofa_deploy.compile import run_rpc, time_rpc

    _, _, x, ref = stem
    _assert_device_output(run_rpc(x86_module, x, str(x86_server)), ref)
    m = time_rpc(x86_module, x, x86_server, repeat=5, number=2)
    assert m.source == "measured" and m.n == 5 and m.runs_per_sample == 2
    assert 0 < m.median_ms < 1000 and f"'x86-ci' via RPC tracker 127.0.0.1:{x86_server.port}" in m.device
    unknown = RpcSpec(x86_server.host, x86_server.port, "pi5")
    with pytest.raises(OfaDeployError, match="no device with key 'pi5' is registered .*registered: x86-ci"):
        time_rpc(x86_module, x, unknown)


@pytest.mark.tvm
def test_cpp_server_registers_with_the_tracker(stem, a76_module, tracker):
    from ofa_deploy.compile import emulated_rpc_server, run_rpc

    _, _, x, ref = stem
    with emulated_rpc_server(tracker=f"{tracker[0]}:{tracker[1]}", key="a64-ci") as spec:
        assert spec == RpcSpec(tracker[0], tracker[1], "a64-ci")
        _wait_for_key(spec, timeout=60)
        for _ in range(2):  # the second session needs the fresh match key registered after the first
            _assert_device_output(run_rpc(a76_module, x, spec), ref)


@pytest.mark.tvm
def test_cli_compile_measures_through_an_emulated_rpc_server(tmp_path, capsys):
    from ofa_deploy.compile import emulated_rpc_server
    from ofa_deploy.deploy import read_metadata

    SubnetConfig.min(SPACE, 128).to_json(tmp_path / "subnet.json")
    with emulated_rpc_server() as spec:
        code, out, err = run_cli(["compile", str(tmp_path / "subnet.json"), "--random-weights", "--target",
                                  "cortex-a76", "--measure", "--rpc", str(spec), "--rpc-emulated",
                                  "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "verification passed on RPC server" in out and "(emulated) - emulated: not a device speed" in out
    meta = read_metadata(tmp_path / "out")
    assert meta["verification"]["status"] == "passed" and meta["verification"]["max_rel_err"] < 1e-4
    assert meta["verification"]["ran_on"] == f"RPC server {spec} (emulated)"
    latency = meta["latency"]
    assert latency["source"] == "emulated" and latency["n"] == 3 and latency["median_ms"] == meta["latency_ms"] > 0
    assert latency["device"] == f"RPC server {spec} (cpu, under qemu)"
