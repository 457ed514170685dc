"""Child-process entry point: ``python -m ofa_deploy.compile.worker REQUEST.json``.

The request names an ``op`` (``build``, ``run``, ``time``) and its arguments; the reply (JSON
written to ``reply_path``) is ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. A crash
leaves no reply; the parent then reports the exit signal and stderr (see isolate.py).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

MAX_ERROR_CHARS = 4000


def _summarise(exc: BaseException) -> str:
    """Exception type and message; long TVM messages keep their head and tail."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        text = text[:half] + "\n  [...]\n" + text[-half:]
    return text


def handle(request: dict[str, Any]) -> dict[str, Any]:
    op = request["op"]
    if op == "build":
        from .tvm_build import build

        return build(request)
    if op in ("run", "time"):
        from .tvm_run import run, time

        return run(request) if op == "run" else time(request)
    if op in ("rpc_run", "rpc_time"):
        from . import tvm_rpc

        return tvm_rpc.run(request) if op == "rpc_run" else tvm_rpc.time(request)
    if op == "profile":
        from .tvm_profile import profile

        return profile(request)
    if op in ("tune_plan", "tune_chunk"):
        from . import tvm_tune

        return tvm_tune.tune_plan(request) if op == "tune_plan" else tvm_tune.tune_chunk(request)
    if op == "check_targets":
        from .tvm_build import check_targets

        return check_targets(request)
    raise ValueError(f"unknown worker op {op!r}")


def die_with_parent(parent_pid: int | None) -> None:
    """Have Linux SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    A worker that writes into shared state (a tuning database) must not outlive a parent killed
    with SIGKILL: an orphan would keep appending while a restarted run repairs the same files.
    ``parent_pid`` closes the race of a parent that died before the call. No-op off Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    request = json.loads(Path(argv[1]).read_text())
    if request.get("die_with_parent"):
        die_with_parent(request.get("parent_pid"))
    reply_path = Path(request["reply_path"])
    try:
        reply = {"ok": True, **handle(request)}
        code = 0
    except Exception as exc:  # noqa: BLE001 - everything is reported to the parent
        traceback.print_exc()
        reply, code = {"ok": False, "error": _summarise(exc)}, 1
    reply_path.write_text(json.dumps(reply))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
