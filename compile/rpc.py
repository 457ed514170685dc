"""Measure compiled modules on a remote board through TVM RPC (parent side: no TVM here).

A Raspberry Pi or Jetson user sets up what TVM users always have: an RPC tracker on the host
(``python -m tvm.exec.rpc_tracker --port 9190``) and an RPC server on the board registered
with a device key (``python -m tvm.exec.rpc_server --tracker HOST:9190 --key pi5``, or our C++
``examples/deploy_cpp/rpc_server`` where the board has no Python); or just a server reached by
address. ``--rpc`` names either::

    HOST:PORT:KEY   a tracker and the device key to request from it
    HOST:PORT       an RPC server, directly

    spec = RpcSpec.parse("192.168.1.10:9190:pi5")
    y = run_rpc("subnet_a76.so", x, spec)                     # output computed on the board
    m = time_rpc("subnet_a76.so", x, spec)                    # LatencyMeasurement, "measured"

The TVM client runs in a worker process (worker/rpc.py). Before it starts, the address is checked
with plain sockets (bounded retries and timeouts), and a tracker is asked whether a device with
the key is registered at all, so an unreachable tracker or board is a one-line OfaDeployError
within seconds instead of a hang. A server under qemu (emulate.py: ``emulated_rpc_server``) runs
real aarch64 code but at emulator speed: its timings are labelled ``emulated``.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import statistics
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa_deploy.errors import OfaDeployError

from .binfmt import elf_machine, embedded_fatbins
from .isolate import run_worker
from .types import LatencyMeasurement

log = logging.getLogger(__name__)

# tvm/rpc/base.py: the tracker handshake and the two requests used here
RPC_TRACKER_MAGIC = 0x2F271
TRACKER_SUCCESS, TRACKER_SUMMARY = 0, 6

RPC_FORMS = "HOST:PORT:KEY (an RPC tracker and a device key) or HOST:PORT (an RPC server)"
DEFAULT_CONNECT_TIMEOUT_S = 5.0  # per connection attempt
DEFAULT_RETRIES = 2  # extra attempts after the first (a board that is just booting its server)
RETRY_PAUSE_S = 1.0
DEFAULT_REPEAT, DEFAULT_NUMBER = 20, 5  # samples x runs per sample on a device
EMULATED_REPEAT, EMULATED_NUMBER = 3, 1  # under qemu a run is ~100x slower and the number means nothing
DEFAULT_SESSION_TIMEOUT_S = 600  # the server ends a session after this (a hung model frees the board)
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")
_HOST = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class RpcSpec:
    """Where a remote device is: a tracker plus device key, or a server address (key None)."""

    host: str
    port: int
    key: str | None = None  # device key at the tracker; None: ``host:port`` is the server itself

    @classmethod
    def parse(cls, text: str, field: str = "--rpc") -> RpcSpec:
        """``HOST:PORT:KEY`` or ``HOST:PORT``; anything else -> OfaDeployError naming ``field``."""
        parts = str(text).strip().split(":")
        bad = OfaDeployError(f"{field}: {text!r} is not an RPC address; allowed: {RPC_FORMS}, "
                             "e.g. 192.168.1.10:9190:pi5 or 127.0.0.1:9090")
        if len(parts) not in (2, 3) or not _HOST.match(parts[0]) or not parts[1].isdigit():
            raise bad
        port = int(parts[1])
        if not 1 <= port <= 65535:
            raise OfaDeployError(f"{field}: port {port} is out of range; allowed: 1..65535 (in {RPC_FORMS})")
        key = parts[2] if len(parts) == 3 else None
        if key is not None and not _KEY.match(key):
            raise OfaDeployError(f"{field}: device key {key!r} is invalid; allowed: letters, digits, '_', '-', '.' "
                                 f"(in {RPC_FORMS})")
        return cls(parts[0], port, key)

    @property
    def is_tracker(self) -> bool:
        return self.key is not None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + (f":{self.key}" if self.key else "")

    def describe(self) -> str:
        """Human-readable: names a device in measurements and errors."""
        if self.is_tracker:
            return f"'{self.key}' via RPC tracker {self.host}:{self.port}"
        return f"RPC server {self.host}:{self.port}"


def _connect(spec: RpcSpec, timeout_s: float, retries: int) -> socket.socket:
    """A TCP connection to the tracker/server, retried ``retries`` times; else OfaDeployError."""
    what = "RPC tracker" if spec.is_tracker else "RPC server"
    last: OSError | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(RETRY_PAUSE_S)
        try:
            return socket.create_connection((spec.host, spec.port), timeout=timeout_s)
        except OSError as exc:
            last = exc
            log.debug("%s %s:%d not reachable (attempt %d of %d): %s", what, spec.host, spec.port, attempt + 1,
                      retries + 1, exc)
    reason = "timed out" if isinstance(last, TimeoutError) else (last.strerror or str(last) if last else "?")
    start = ("python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}" if spec.is_tracker else
             "python -m tvm.exec.rpc_server --host 0.0.0.0 --port {port} (or rpc_server on the board)")
    raise OfaDeployError(f"--rpc {spec}: cannot reach the {what} at {spec.host}:{spec.port} "
                         f"({reason}; {retries + 1} attempts, {timeout_s:g} s each); is it running? "
                         f"start it with: {start.format(port=spec.port)}")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def tracker_summary(spec: RpcSpec, *, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                    retries: int = DEFAULT_RETRIES) -> dict[str, Any]:
    """The tracker's summary (``server_info``: registered servers, ``queue_info``: free/pending per key)."""
    with _connect(spec, timeout_s, retries) as sock:
        try:
            sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            if struct.unpack("<i", _recv_exact(sock, 4))[0] != RPC_TRACKER_MAGIC:
                raise ValueError("wrong magic number")
            body = json.dumps([TRACKER_SUMMARY]).encode()
            sock.sendall(struct.pack("<i", len(body)) + body)
            size = struct.unpack("<i", _recv_exact(sock, 4))[0]
            reply = json.loads(_recv_exact(sock, size))
        except (OSError, ValueError, struct.error) as exc:
            raise OfaDeployError(f"--rpc {spec}: {spec.host}:{spec.port} does not answer as an RPC tracker "
                                 f"({exc}); use HOST:PORT (no key) for an RPC server") from None
    if not isinstance(reply, list) or reply[0] != TRACKER_SUCCESS:
        raise OfaDeployError(f"--rpc {spec}: the RPC tracker refused the summary request ({reply!r})")
    return reply[1]


def registered_keys(summary: dict[str, Any]) -> list[str]:
    """Device keys of the servers registered in a tracker summary ("server:pi5" -> "pi5")."""
    keys = {str(s.get("key", "")).split(":", 1)[-1] for s in summary.get("server_info", [])}
    return sorted(k for k in keys if k)


def check_reachable(spec: RpcSpec, *, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                    retries: int = DEFAULT_RETRIES) -> None:
    """Fail fast, with one clear line, when the remote device cannot be used.

    A server must accept a TCP connection; a tracker must answer as a tracker and have a server
    registered under the key. Each attempt is bounded by ``timeout_s``; ``retries`` extra
    attempts (1 s apart) cover a board that is just starting its server.
    """
    if timeout_s <= 0 or retries < 0:
        raise OfaDeployError(f"timeout_s must be > 0 and retries >= 0 (got {timeout_s}, {retries})")
    if not spec.is_tracker:
        _connect(spec, timeout_s, retries).close()
        return
    keys = registered_keys(tracker_summary(spec, timeout_s=timeout_s, retries=retries))
    if spec.key not in keys:
        raise OfaDeployError(f"--rpc {spec}: no device with key '{spec.key}' is registered at the RPC tracker "
                             f"{spec.host}:{spec.port} (registered: {', '.join(keys) or 'none'}); on the board: "
                             f"python -m tvm.exec.rpc_server --tracker {spec.host}:{spec.port} --key {spec.key}")


def _check_module(so_path: str | Path, device: str) -> Path:
    path = Path(so_path)
    if device not in ("cpu", "cuda"):
        raise OfaDeployError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if not path.is_file():
        raise OfaDeployError(f"module not found: {path}")
    if elf_machine(path) is None:
        raise OfaDeployError(f"{path} is not a compiled module (not an ELF shared library)")
    if (device == "cuda") != bool(embedded_fatbins(path)):
        raise OfaDeployError(f"{path} is a {'CUDA' if device == 'cpu' else 'CPU'} module; "
                             f"use device={'cuda' if device == 'cpu' else 'cpu'!r}")
    return path


def _remote_request(op: str, path: Path, spec: RpcSpec, device: str, session_timeout: float,
                    in_path: Path, **extra: Any) -> dict[str, Any]:
    return {"op": op, "so_path": str(path.resolve()), "input_path": str(in_path), "device": device,
            "host": spec.host, "port": spec.port, "key": spec.key,
            "session_timeout": int(session_timeout), **extra}


def run_rpc(so_path: str | Path, input: np.ndarray, spec: RpcSpec | str, *, device: str = "cpu",
            timeout: float = DEFAULT_SESSION_TIMEOUT_S,
            connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S, retries: int = DEFAULT_RETRIES) -> np.ndarray:
    """Output of the module for ``input``, computed on the remote device (numeric check on the board).

    ``timeout`` bounds the whole remote session (upload, load, run); the server also ends the
    session after it, so a hung model frees the board.
    """
    spec = RpcSpec.parse(spec) if isinstance(spec, str) else spec
    path = _check_module(so_path, device)
    check_reachable(spec, timeout_s=connect_timeout, retries=retries)
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_rpc_") as tmp:
        in_path, out_path = Path(tmp) / "input.npy", Path(tmp) / "output.npy"
        np.save(in_path, np.ascontiguousarray(input, dtype=np.float32))
        run_worker(_remote_request("rpc_run", path, spec, device, timeout, in_path, output_path=str(out_path)),
                   what=f"running {path.name} on {spec.describe()}", timeout=timeout + 60)
        return np.load(out_path)


def time_rpc(so_path: str | Path, input: np.ndarray, spec: RpcSpec | str, *, repeat: int | None = None,
             number: int | None = None, emulated: bool = False, device: str = "cpu",
             timeout: float = DEFAULT_SESSION_TIMEOUT_S, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
             retries: int = DEFAULT_RETRIES) -> LatencyMeasurement:
    """Time the module on the remote device with TVM's time_evaluator (run on the device itself).

    ``repeat`` samples, each the mean of ``number`` runs, after one discarded warm-up call
    (default 20 x 5; emulated 3 x 1). ``source`` is ``"measured"``, or ``"emulated"`` when
    ``emulated`` says the server runs under an emulator (qemu): then the number is the emulator's
    speed, never the device's, and must not enter a latency model.
    """
    repeat = repeat if repeat is not None else (EMULATED_REPEAT if emulated else DEFAULT_REPEAT)
    number = number if number is not None else (EMULATED_NUMBER if emulated else DEFAULT_NUMBER)
    if repeat < 1 or number < 1:
        raise OfaDeployError(f"repeat and number must be >= 1 (got repeat={repeat}, number={number})")
    spec = RpcSpec.parse(spec) if isinstance(spec, str) else spec
    path = _check_module(so_path, device)
    check_reachable(spec, timeout_s=connect_timeout, retries=retries)
    with tempfile.TemporaryDirectory(prefix="ofa_deploy_rpc_") as tmp:
        in_path = Path(tmp) / "input.npy"
        np.save(in_path, np.ascontiguousarray(input, dtype=np.float32))
        reply = run_worker(_remote_request("rpc_time", path, spec, device, timeout, in_path,
                                           repeat=repeat, number=number),
                           what=f"timing {path.name} on {spec.describe()}", timeout=timeout + 60)
    return rpc_measurement(reply, spec, device, emulated)


def rpc_measurement(reply: dict[str, Any], spec: RpcSpec, device: str, emulated: bool) -> LatencyMeasurement:
    """A worker's timing on a remote device (``samples_ms``, ``number``) as a labelled measurement.

    The label names the board (its key or server address) and says ``emulated`` for a server under
    qemu, so no emulator's number is ever read as the device's speed.
    """
    samples = reply["samples_ms"]
    where = f"{spec.describe()} ({device}{', under qemu' if emulated else ''})"
    return LatencyMeasurement(
        median_ms=statistics.median(samples), std_ms=statistics.pstdev(samples) if len(samples) > 1 else 0.0,
        n=len(samples), source="emulated" if emulated else "measured", runs_per_sample=reply["number"],
        device=where)
