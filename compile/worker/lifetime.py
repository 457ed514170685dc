"""A worker process lives no longer than the parent that started it (Linux ``PR_SET_PDEATHSIG``).

Used by the dispatch (:mod:`.__main__`) for requests that ask for it, and by the builder and
runner processes tuning starts (:mod:`.tune`).
"""

from __future__ import annotations

import sys


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
