"""Shared fixtures. Test tiers (tinygrad style), selected with markers:

* no marker: pure Python / PyTorch / ONNX, fast, always run;
* ``tvm``: compiles with TVM (minutes on 2 cores);
* ``slow``: excluded from the default run (``-m slow`` to run them);
* ``gpu``: needs a CUDA device; skipped where none is present.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "tests" / "data" / "reference" / "ofa_mbv3"  # see tests/data/README.md
# a real measured latency model (znver5, NCHW modules): plumbing test data, see tests/data/README.md
SAMPLE_LATENCY_MODEL = REPO / "tests" / "data" / "latency_model_znver5_nchw.json"


@pytest.fixture(scope="session")
def reference() -> dict:
    """The official implementation's logits for 8 arch configs (tests/data/reference/, tracked in the repository)."""
    meta_path = REFERENCE_DIR / "reference_outputs.json"
    if not meta_path.is_file():
        pytest.fail(f"reference data missing: {meta_path} (it is tracked in the repository: git checkout tests/data)")
    meta = json.loads(meta_path.read_text())
    logits = np.load(REFERENCE_DIR / meta["logits_file"])
    meta["checkpoint_path"] = str(REFERENCE_DIR / meta["checkpoint"])
    meta["logits"] = [logits[f"config{i}"] for i in range(len(meta["records"]))]
    return meta


@pytest.fixture(scope="session")
def reference_supernet(reference):
    import ofa_deploy as od

    return od.load_supernet(reference["checkpoint_path"])


def reference_input(seed: int, image_size: int, batch: int = 2) -> np.ndarray:
    """The input described in reference_outputs.json."""
    return np.random.default_rng(seed).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)


@pytest.fixture
def logs(tmp_path, monkeypatch) -> Path:
    """An empty tuning_logs/ (and cache) of this test's own: no shipped or earlier folder of this device."""
    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "tl"))
    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tl").mkdir()
    return tmp_path / "tl"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rpc_tracker():
    """TVM's Python RPC tracker on 127.0.0.1: its port (stopped with its process group afterwards)."""
    from ofa_deploy.compile.rpc import RpcSpec, tracker_summary
    from ofa_deploy.errors import OfaDeployError

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                             str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120  # the tracker imports TVM first: slow on 2 busy cores
        while True:
            try:
                tracker_summary(RpcSpec("127.0.0.1", port, "any"), timeout_s=2, retries=0)
                break
            except OfaDeployError:
                assert proc.poll() is None and time.monotonic() < deadline, "the RPC tracker did not start"
                time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``ofa-deploy ARGS`` in-process (through ``main``, as the console script does).

    Returns (exit code, stdout, stderr).
    """
    from ofa_deploy.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc: children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
