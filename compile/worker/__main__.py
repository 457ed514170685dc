"""Child-process entry point: ``python -m ofa_deploy.compile.worker REQUEST.json`` (started by isolate.py).

The request names an ``op`` and its arguments; :func:`handle` hands it to the module that does it
(``build``, ``check_targets``: :mod:`.build`; ``run``, ``time``: :mod:`.run`; ``rpc_run``,
``rpc_time``: :mod:`.rpc`; ``profile``: :mod:`.profile`; ``tune_plan``, ``tune_chunk``,
``workload_tasks``: :mod:`.tune`), importing it only then, so a job pays for the TVM parts it
uses. The reply (JSON written to ``reply_path``) is ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. A crash leaves no reply; the parent then reports the exit
signal and stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from .lifetime import die_with_parent, guard_group

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
        from .build import build

        return build(request)
    if op in ("run", "time", "time_interleaved"):
        from .run import run, time, time_interleaved

        return {"run": run, "time": time, "time_interleaved": time_interleaved}[op](request)
    if op in ("rpc_run", "rpc_time"):
        from . import rpc

        return rpc.run(request) if op == "rpc_run" else rpc.time(request)
    if op == "profile":
        from .profile import profile

        return profile(request)
    if op in ("tune_plan", "tune_chunk", "workload_tasks"):
        from . import tune

        return {"tune_plan": tune.tune_plan, "tune_chunk": tune.tune_chunk, "workload_tasks": tune.workload_tasks}[op](request)
    if op == "check_targets":
        from .build import check_targets

        return check_targets(request)
    raise ValueError(f"unknown worker op {op!r}")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    request = json.loads(Path(argv[1]).read_text())
    if request.get("die_with_parent"):
        die_with_parent(request.get("parent_pid"))
        if request.get("parent_pid"):
            guard_group(request["parent_pid"])  # and what this worker starts, even mid-start
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
