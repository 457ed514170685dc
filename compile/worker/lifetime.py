"""A child process lives no longer than the parent that started it (Linux ``PR_SET_PDEATHSIG``).

Used by the dispatch (:mod:`.__main__`) for every worker request (isolate.py asks for it), by
the builder and runner processes tuning starts (:mod:`.tune`), and, through
:func:`dies_with_parent`, for the emulator processes the parent starts (compile/emulate.py).
:func:`guard_group` covers what PDEATHSIG cannot: a worker's own children that are still
starting up (TVM's popen workers import TVM before their initializer asks for PDEATHSIG).
Standard library only: the parent side imports it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from typing import Callable

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int | None) -> None:
    """Have Linux SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    A worker that writes into shared state (a tuning database) must not outlive a parent killed
    with SIGKILL: an orphan would keep appending while a restarted run repairs the same files,
    and a build would keep a core busy for a minute after the command is gone. The signal comes
    when the parent *thread* that started this process ends, so a thread that starts one must
    wait for it. ``parent_pid`` closes the race of a parent that died before the call. No-op off
    Linux.
    """
    prctl = _prctl()
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess`` that makes the child die with this process (None off Linux).

    libc's ``prctl`` is looked up here, in the parent: the child, between fork and exec, only
    calls it (no import, no dlopen that another thread's lock could block).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


GUARD_POLL_S = 0.2


def guard_group(parent_pid: int) -> None:
    """Fork a watchdog that SIGKILLs this process's whole group once the parent or this process is gone.

    For a worker that leads its own process group (isolate.py starts it in a new session): every
    process it starts, and theirs, is in the group, including those that have not yet reached
    their own ``die_with_parent``; PDEATHSIG is not inherited across fork. The watchdog forks
    before TVM is imported (one thread: fork is safe), drops the worker's pipes (the parent
    reads them to their end) and polls every ``GUARD_POLL_S`` seconds. No-op where the caller
    does not lead its group or there is no fork.
    """
    if not hasattr(os, "fork") or os.getpgid(0) != os.getpid():
        return
    worker = os.getpid()
    if os.fork() != 0:
        return
    try:  # the watchdog: nothing here may raise past os._exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 1 << 16)
        while os.getppid() == worker and _alive(parent_pid):
            time.sleep(GUARD_POLL_S)
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)  # the worker, everything it started, and this watchdog
    finally:
        os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
