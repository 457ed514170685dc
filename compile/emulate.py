"""Run an aarch64 module on this x86 machine: the deploy app, or an RPC server, under qemu.

For correctness only (do outputs match?): emulation runs the real aarch64 code, so numerics are
the device's, but its speed says nothing about the device, so no latency is reported; timings
through ``emulated_rpc_server`` are labelled ``emulated`` (time_rpc(..., emulated=True)).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ofa_deploy.errors import OfaDeployError

from .aarch64_runtime import build_deploy_app_aarch64, build_rpc_server_aarch64
from .binfmt import elf_machine
from .toolchain import AARCH64_SYSROOT, require_qemu_aarch64
from .worker.lifetime import dies_with_parent

from .rpc import RpcSpec

log = logging.getLogger(__name__)
_SHAPE_LINE = re.compile(r"^output shape: ([0-9x]+)$", re.MULTILINE)
_LISTENING = re.compile(r"^rpc_server listening on [^:]+:(\d+)$")
SERVER_START_TIMEOUT_S = 60.0  # qemu loads ~5 MB of runtime before the server prints its port


def run_emulated_aarch64(so_path: str | Path, input: np.ndarray, *, timeout: float | None = 900.0,
                         cache_dir: str | Path | None = None) -> np.ndarray:
    """Output of an aarch64 module for ``input``, computed by the aarch64 deploy app under qemu.

    Needs ``qemu-user-static`` and ``g++-aarch64-linux-gnu`` (for the app and the aarch64 C
    library); the aarch64 TVM runtime is fetched with pip once (aarch64_runtime.py).
    """
    path = Path(so_path)
    if not path.is_file():
        raise OfaDeployError(f"module not found: {path}")
    machine = elf_machine(path)
    if machine != "aarch64":
        raise OfaDeployError(f"{path} is not an aarch64 module ({machine or 'not ELF'})")
    qemu = require_qemu_aarch64()
    app = build_deploy_app_aarch64(cache_dir)
    x = np.ascontiguousarray(input, dtype="<f4")
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_qemu_") as tmp:
        in_path, out_path = Path(tmp) / "input.f32", Path(tmp) / "output.f32"
        x.tofile(in_path)
        cmd = [qemu, "-L", str(AARCH64_SYSROOT), str(app), str(path.resolve()), "--input", str(in_path),
               "--shape", ",".join(str(d) for d in x.shape), "--output", str(out_path),
               "--repeat", "1", "--warmup", "0", "--topk", "0"]
        env = {**os.environ, "TVM_NUM_THREADS": "1"}  # emulated threads only add overhead
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                  preexec_fn=dies_with_parent())
        except subprocess.TimeoutExpired:
            raise OfaDeployError(f"emulated run of {path.name} timed out after {timeout:.0f} s") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr + proc.stdout).strip().splitlines()[-15:])
            raise OfaDeployError(f"emulated run of {path.name} failed (exit {proc.returncode})", details=tail)
        match = _SHAPE_LINE.search(proc.stdout)
        if match is None:
            raise OfaDeployError("deploy app printed no output shape", details=proc.stdout[-1000:])
        shape = tuple(int(d) for d in match.group(1).split("x"))
        return np.fromfile(out_path, dtype="<f4").reshape(shape)


@contextlib.contextmanager
def emulated_rpc_server(port: int | None = None, *, tracker: RpcSpec | str | None = None, key: str = "qemu-a64",
                        start_timeout: float = SERVER_START_TIMEOUT_S,
                        cache_dir: str | Path | None = None) -> Iterator[RpcSpec]:
    """An aarch64 TVM RPC server (``examples/deploy_cpp/rpc_server.cc``) under qemu on 127.0.0.1.

    Yields the RpcSpec to reach it: the server itself (``127.0.0.1:PORT``), or with ``tracker``
    (``HOST:PORT`` of a running RPC tracker) the tracker and ``key``, under which the server
    registers. ``port=None`` lets the OS pick a free port. Timings through it are the emulator's
    (pass ``emulated=True`` to time_rpc). The server and its session processes are stopped on exit.
    """
    qemu = require_qemu_aarch64()
    server = build_rpc_server_aarch64(cache_dir)
    tracker_spec = RpcSpec.parse(tracker, "tracker") if isinstance(tracker, str) else tracker
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_rpcsrv_") as tmp:
        cmd = [qemu, "-L", str(AARCH64_SYSROOT), str(server), "--host", "127.0.0.1",
               "--port", str(port or 0), "--work-dir", tmp]
        if tracker_spec is not None:
            cmd += ["--tracker", f"{tracker_spec.host}:{tracker_spec.port}", "--key", key]
        env = {**os.environ, "TVM_NUM_THREADS": "1"}  # emulated threads only add overhead
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_file, env=env, start_new_session=True,
                                    preexec_fn=dies_with_parent())
        try:
            bound = _wait_for_port(proc, start_timeout, log_path)
            log.info("emulated aarch64 RPC server on 127.0.0.1:%d (pid %d)", bound, proc.pid)
            if tracker_spec is not None:
                yield RpcSpec(tracker_spec.host, tracker_spec.port, key)
            else:
                yield RpcSpec("127.0.0.1", bound)
        finally:
            _stop(proc)


def _wait_for_port(proc: subprocess.Popen, timeout: float, log_path: Path) -> int:
    """The port from the server's first stdout line; OfaDeployError if it exits or stays silent."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready = select.select([proc.stdout], [], [], max(left, 0))[0] if left > 0 else []
        chunk = os.read(proc.stdout.fileno(), 256) if ready else b""
        if not chunk:
            tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-10:])
            state = "exited" if proc.poll() is not None else f"printed no port within {timeout:.0f} s"
            raise OfaDeployError(f"the emulated RPC server {state}", details=tail)
        line += chunk
    match = _LISTENING.match(line.decode(errors="replace").splitlines()[0].strip())
    if match is None:
        raise OfaDeployError(f"the emulated RPC server printed {line!r}, expected its port")
    return int(match.group(1))


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (server + session children), SIGKILL after 5 s."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.stdout is not None:
        proc.stdout.close()
