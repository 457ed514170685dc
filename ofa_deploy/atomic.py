"""Atomic file writes, and the temporaries they (and every command) make, which never outlive their owner for long.

A file is written to a temporary name in its own directory and renamed onto its final name, so a
reader (or a later resume) sees the old file or the complete new one, never a half-written file.

Every temporary name this package makes carries its owner, ``ofa-tmp-<host>-<pid>-``: a process
killed with SIGKILL cannot remove what it made, so whoever next looks into that folder
(:func:`sweep_stale`), and every later ``ofa-deploy`` command for the folders the dead process
listed in its scratch folder (:func:`process_scratch`), removes the temporaries whose owner is
gone. A live owner's temporaries are never touched. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import OfaDeployError

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]  # a pid means nothing on another host
_TAG = "ofa-tmp"
_OWNER = re.compile(rf"{_TAG}-([0-9a-f]{{6}})-(\d+)-")
SCRATCH_PREFIX = "ofa-deploy-"
_OWNED_LIST = "owned.txt"  # in a process's scratch folder: the temporaries it made elsewhere
_scratch: Path | None = None  # this process's scratch folder while a command runs


def owner_tag() -> str:
    """The part of a temporary name that says which process made it (``ofa-tmp-<host>-<pid>-``)."""
    return f"{_TAG}-{_HOST}-{os.getpid()}-"


def _owner_gone(name: str) -> bool:
    """True when ``name`` is a temporary of a process of this host that no longer exists."""
    match = _OWNER.search(name)
    if match is None or match.group(1) != _HOST or int(match.group(2)) == os.getpid():
        return False
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's live process; a pid no kernel gives
        return False
    return False


def _remove(path: Path) -> None:
    """Remove a dead owner's temporary; a scratch folder's listed temporaries go with it."""
    if path.is_dir() and not path.is_symlink():
        owned = path / _OWNED_LIST
        try:
            listed = owned.read_bytes().splitlines() if owned.is_file() else []
        except OSError:
            listed = []
        tag = _OWNER.search(path.name)
        for line in listed:
            other = Path(os.fsdecode(line))
            if tag is not None and line and tag.group(0) in other.name:
                _remove_plain(other)  # only what carries the same dead owner's tag
        shutil.rmtree(path, ignore_errors=True)
    else:
        _remove_plain(path)


def _remove_plain(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def sweep_stale(folder: str | os.PathLike[str]) -> None:
    """Remove the temporaries in ``folder`` whose owning process is gone (killed before it could clean up)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if _owner_gone(name):
            _remove(Path(folder) / name)


def _remember(path: Path) -> None:
    """List a temporary made outside the scratch folder, so a later command can remove it if we are killed."""
    if _scratch is None or _scratch in path.parents:
        return
    with contextlib.suppress(OSError), open(_scratch / _OWNED_LIST, "ab") as f:
        f.write(os.fsencode(path) + b"\n")  # any name the file system takes, undecodable bytes included


def umask() -> int:
    """The process umask (the only portable way to read it is to set it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new folder in ``parent`` named ``PREFIX<owner tag>XXXX``, with the mode a plain ``mkdir`` gives.

    ``tempfile.mkdtemp`` makes 0700 folders; a folder that is later renamed into place as an
    output must have the user's umask like any other folder the user makes.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{owner_tag()}", dir=parent))
    os.chmod(path, 0o777 & ~umask())
    _remember(path)
    return path


@contextlib.contextmanager
def process_scratch() -> Iterator[Path | None]:
    """This command's private temporary folder; every ``tempfile`` user of the process writes in it.

    ``tempfile.tempdir`` and ``$TMPDIR`` (inherited by the worker processes and theirs) point into
    it while the command runs, so TVM's, ONNX's and our own temporaries all land here and go
    when it is removed at the end, whatever ended the command short of SIGKILL. Before it is
    made, the scratch folders of dead commands (SIGKILL) are removed, with the temporaries they
    listed elsewhere (a half-staged output folder next to its destination).
    """
    global _scratch
    system_tmp = tempfile.gettempdir()
    sweep_stale(system_tmp)
    saved = tempfile.tempdir, os.environ.get("TMPDIR"), _scratch
    try:
        path = make_temp_dir(system_tmp, SCRATCH_PREFIX)
    except OSError:  # an unwritable temporary folder: the commands that need one say so themselves
        yield None
        return
    tempfile.tempdir, os.environ["TMPDIR"], _scratch = str(path), str(path), path
    try:
        yield path
    finally:
        tempfile.tempdir, _scratch = saved[0], saved[2]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(path, ignore_errors=True)


_WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.EFBIG: "file too large"}


def write_error(path: str | os.PathLike[str], err: OSError) -> OfaDeployError:
    """One line for a write that failed for a reason the user can fix (full disk, permissions)."""
    reason = _WRITE_ERRORS.get(err.errno or 0) or err.strerror or type(err).__name__
    return OfaDeployError(f"cannot write {path}: {reason} (nothing was written)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Use for writers that want a file name (``torch.save``, ``onnx.save``). On error the temporary
    file is removed and ``path`` is left untouched; a full disk or a folder the user may not write
    is one :class:`OfaDeployError` line.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:64]}.{owner_tag()}", suffix=".tmp", dir=final.parent)
        os.close(fd)
    except OSError as err:
        if err.errno not in _WRITE_ERRORS:
            raise
        raise write_error(final, err) from err
    tmp_path = Path(tmp)
    _remember(tmp_path)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes it 0600; give it the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, final)
    except OSError as err:
        if err.errno not in _WRITE_ERRORS:
            raise
        raise write_error(final, err) from err
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (trailing newline, stable key order)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike[str], what: str, error: type[OfaDeployError] = OfaDeployError) -> Any:
    """Parse a JSON file a user gave or a command wrote; a missing, unreadable or malformed one is one line.

    ``what`` names the file's role in the message ("subnet config"); ``error`` is the
    :class:`OfaDeployError` subclass raised.
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{p}: {what} file not found") from None
    except IsADirectoryError:
        raise error(f"{p}: is a folder, not a {what} file") from None
    except UnicodeDecodeError:
        raise error(f"{p}: not a {what} (a binary file, not JSON text)") from None
    except OSError as err:
        raise error(f"{p}: cannot read the {what}: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        state = "truncated" if err.pos >= len(text.rstrip()) else "not valid JSON"
        raise error(f"{p}: {what} is {state} (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except ValueError as err:  # an integer literal past Python's digit limit
        raise error(f"{p}: {what} holds a number too long to read ({str(err).split(':')[0]})") from None
    except RecursionError:
        raise error(f"{p}: {what} is nested too deeply to be one") from None
