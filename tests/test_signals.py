"""Every signal ends a command cleanly: SIGINT, SIGTERM and the parent's SIGKILL, during compile and tune.

A real ``ofa-deploy`` process is signalled once its TVM worker exists (for tune: once MetaSchedule's
builder/runner processes exist too). Then, within a few seconds, no process it started may be left,
and no temporary may stay behind: none at all after SIGINT or SIGTERM, and after SIGKILL (which
the command cannot see) none once any later ``ofa-deploy`` command has run. Only what resuming
needs may remain (the tuning database). Each command runs with its own $TMPDIR, so what it leaves
there is all it left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ofa_deploy.search_space import SubnetConfig
from tests.conftest import alive, command_line, descendants

pytestmark = [pytest.mark.tvm, pytest.mark.timeout(300)]

GONE_WITHIN_S = 2.0  # a worker may outlive its parent by this much at most
START_TIMEOUT_S = 240.0


def _start(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen, Path]:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "ofa_deploy.cli", *args], cwd=tmp_path,
                            env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return proc, scratch


def _wait_for(proc: subprocess.Popen, marker: str) -> set[int]:
    """The command's processes, once one of them runs ``marker`` (a module name in its command line)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ended before {marker} started:\n{proc.communicate()[1][-3000:]}"
        below = descendants(proc.pid)
        if any(marker in command_line(pid) for pid in below):
            return below
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{marker} did not start within {START_TIMEOUT_S:.0f} s")


def _signal_and_reap(proc: subprocess.Popen, sig: signal.Signals, marker: str) -> tuple[set[int], str]:
    """Send ``sig`` once ``marker`` runs; (every process the command had, its stderr) after it ended."""
    workers = _wait_for(proc, marker)
    proc.send_signal(sig)
    workers |= descendants(proc.pid)  # anything started meanwhile
    _, err = proc.communicate(timeout=60)
    gone_by = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < gone_by and any(alive(pid) for pid in workers):
        time.sleep(0.02)
    left = {pid: command_line(pid) for pid in workers if alive(pid)}
    assert not left, f"outlived the command by {GONE_WITHIN_S} s after {sig.name}: {left}"
    return workers, err


def _expected_end(sig: signal.Signals, proc: subprocess.Popen, err: str) -> None:
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig, err
        assert err.strip().splitlines()[-1] == ("aborted" if sig == signal.SIGINT else "terminated by SIGTERM"), err
        assert "Traceback" not in err


def _later_command(tmp_path: Path, scratch: Path) -> None:
    """Any later command removes what a SIGKILLed one left (here: the quickest one)."""
    done = subprocess.run([sys.executable, "-m", "ofa_deploy.cli", "space"], cwd=tmp_path, capture_output=True,
                          env={**os.environ, "TMPDIR": str(scratch)}, timeout=120)
    assert done.returncode == 0, done.stderr


def _left(folder: Path, keep: tuple[str, ...] = ()) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if not any(p.relative_to(folder).parts[0] == k for k in keep))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_during_compile_leaves_no_process_and_no_temporary(tmp_path, sig):
    SubnetConfig.min(image_size=128).to_json(tmp_path / "s.json")
    proc, scratch = _start(tmp_path, ["compile", "s.json", "--target", "x86-host", "--random-weights", "-o", "out"])
    _, err = _signal_and_reap(proc, sig, "ofa_deploy.compile.worker")
    _expected_end(sig, proc, err)
    if sig == signal.SIGKILL:
        assert _left(tmp_path, keep=("s.json",))  # the staging folder and the scratch folder: nobody could remove them
        _later_command(tmp_path, scratch)
    assert _left(tmp_path, keep=("s.json",)) == ["tmp"]  # no output folder, no staging folder, nothing in $TMPDIR


TUNE = ["tune", "--target", "x86-host", "--resolutions", "128", "--workloads", "r128/head", "--trials", "2",
        "--no-progress", "--database", "db"]


@pytest.mark.parametrize("sig, marker", [
    (signal.SIGINT, "ofa_deploy.compile.worker"),  # while the tasks are extracted (the plan worker)
    (signal.SIGTERM, "tvm.exec.popen_worker"),  # while MetaSchedule builds and runs candidates
    (signal.SIGKILL, "tvm.exec.popen_worker"),
], ids=lambda v: getattr(v, "name", None) or v.rsplit(".", 1)[-1])
def test_a_signal_during_tune_leaves_no_process_and_only_the_resumable_database(tmp_path, sig, marker):
    from ofa_deploy.tuning_logs.layout import CHUNK_DIR, LOCK_FILE, RECORD_FILE, STATE_FILE, WORKLOAD_FILE

    proc, scratch = _start(tmp_path, TUNE)
    _, err = _signal_and_reap(proc, sig, marker)
    _expected_end(sig, proc, err)
    if sig == signal.SIGKILL:
        _later_command(tmp_path, scratch)
    assert _left(tmp_path, keep=("db",)) == ["tmp"]
    resumable = {LOCK_FILE, RECORD_FILE, WORKLOAD_FILE, STATE_FILE, "identity.json"}
    if sig == signal.SIGKILL:  # only a kill -9 leaves the chunk's slice; the next run merges it (test_tune.py)
        resumable.add(CHUNK_DIR)
    assert {p.name for p in (tmp_path / "db").iterdir()} <= resumable  # no temporary in the database folder
