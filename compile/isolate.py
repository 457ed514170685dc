"""Run TVM work in a child process (``python -m <this package>.worker``).

TVM can abort or segfault (LLVM asserts, FFI mismatches); in-process that kills the caller,
e.g. a search loop that has been running for hours. In a child process the same crash becomes
an OfaDeployError carrying the tail of the child's stderr. A fresh process per job also keeps
TVM's global state (thread pools, registered callbacks, env vars) from leaking between builds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any, Callable

from ofa_deploy.atomic import make_temp_dir, sweep_stale
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets.hostcpu import usable_cores

log = logging.getLogger(__name__)
_WORKER_MODULE = f"{__package__}.worker"
STDERR_TAIL_LINES = 25


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def tvm_threads(requested: int | None = None) -> int:
    """The thread count TVM's pool uses in our workers: ``requested``, else $TVM_NUM_THREADS, else all cores.

    Left alone, TVM's runtime takes *half* the logical CPUs on x86 whether or not the machine
    has hyper-threading, which is one thread on a 2-core VM: every timing would then be a
    single-core number while ONNX Runtime and PyTorch use both cores. We pin it explicitly to
    the physical cores (``targets.hostcpu.usable_cores``).
    """
    if requested:
        return int(requested)
    from_env = os.environ.get("TVM_NUM_THREADS", "").strip()
    return int(from_env) if from_env.isdigit() and int(from_env) > 0 else usable_cores()


def run_worker(request: dict[str, Any], *, what: str, timeout: float | None,
               env: dict[str, str] | None = None,
               started: Callable[[subprocess.Popen], None] | None = None) -> dict[str, Any]:
    """Run one worker job and return its JSON reply; any failure -> OfaDeployError.

    ``what`` names the job in error messages ("building cortex-a76 module"). ``env`` adds to
    (does not replace) this process's environment; TVM_NUM_THREADS defaults to ``tvm_threads()``.
    ``started`` is called with the worker's process as soon as it exists.

    No worker outlives its caller: it dies with the thread that started it (``die_with_parent``,
    so even a SIGKILL of this process ends it), and whatever interrupts the wait here (Ctrl-C,
    SIGTERM unwinding through the CLI, a timeout) kills it before this call returns. Its
    temporaries, TVM's and MetaSchedule's included, live in the call's own folder (the worker's
    $TMPDIR), which goes with the call; one left by a SIGKILL is swept by a later call.
    """
    sweep_stale(tempfile.gettempdir())
    call_dir = make_temp_dir(tempfile.gettempdir(), "ofa_deploy_worker_")
    try:
        req_path, reply_path = call_dir / "request.json", call_dir / "reply.json"
        req_path.write_text(json.dumps({"die_with_parent": True, "parent_pid": os.getpid(), **request,
                                        "reply_path": str(reply_path)}))
        child_env = {**os.environ, "TVM_NUM_THREADS": str(tvm_threads()), **(env or {}), "TMPDIR": str(call_dir)}
        cmd = [sys.executable, "-m", _WORKER_MODULE, str(req_path)]
        log.debug("worker: %s", " ".join(cmd))
        # A session (process group) of its own: ending it ends everything the worker started.
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env,
                              start_new_session=True) as proc:
            if started is not None:
                started(proc)
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_worker(proc)
                stdout, stderr = proc.communicate()
                raise OfaDeployError(f"{what}: TVM worker timed out after {timeout:.0f} s",
                                     details=f"last output:\n{_tail(stderr)}") from None
            except BaseException:
                kill_worker(proc)
                proc.wait()  # Popen's own exit would not wait after a KeyboardInterrupt
                raise
        for line in stderr.splitlines():
            log.debug("worker| %s", line)
        reply = json.loads(reply_path.read_text()) if reply_path.is_file() else None
    finally:
        shutil.rmtree(call_dir, ignore_errors=True)
    if reply is not None and reply.get("ok"):
        return reply
    if reply is not None:  # a Python exception inside the worker, already summarised
        first, _, rest = str(reply["error"]).strip().partition("\n")
        raise OfaDeployError(f"{what}: {first}", details=rest or None)
    raise OfaDeployError(f"{what}: TVM worker crashed ({_describe_exit(proc.returncode)})",
                         details=f"last output:\n{_tail(stderr + stdout)}")


def kill_worker(proc: subprocess.Popen) -> None:
    """SIGKILL a worker and every process it started (its process group: isolate starts it in a new session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_worker_polling(request: dict[str, Any], *, what: str, timeout: float | None, poll: Callable[[], None],
                       every_s: float = 0.5, env: dict[str, str] | None = None) -> dict[str, Any]:
    """:func:`run_worker` in a thread while this thread calls ``poll()`` every ``every_s`` seconds.

    ``poll`` reads the worker's progress (new lines of a file it appends to); it runs once more
    after the worker has exited, so nothing written at the end is missed. The wait is bounded by
    the worker's ``timeout``. The thread outlives the worker, so a worker that dies with the thread
    that started it (PR_SET_PDEATHSIG) lives exactly as long as this call; an exception here (a
    signal, a failing ``poll``) kills the worker and waits for the thread before it propagates.
    """
    outcome: dict[str, Any] = {}
    lock = threading.Lock()

    def started(proc: subprocess.Popen) -> None:
        with lock:
            outcome["proc"] = proc
            if outcome.get("cancelled"):
                kill_worker(proc)

    def work() -> None:
        try:
            outcome["reply"] = run_worker(request, what=what, timeout=timeout, env=env, started=started)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="ofa-deploy-worker", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(every_s)
            poll()
        poll()
    except BaseException:  # Ctrl-C, SIGTERM (through the CLI) or a failing poll: the worker goes first
        with lock:
            outcome["cancelled"] = True
            if "proc" in outcome:
                kill_worker(outcome["proc"])
        thread.join()  # returns once the killed worker is reaped and its folder removed
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]
