"""The output rule: a command writes only its own files, and never over a file it did not write.

**Folders** (``compile -o``, ``search -o``, ``train -o``, ``demo-data -o``). A folder a command
writes carries a manifest, ``.ofa-deploy.json``, naming the command and the files it wrote. The
command may write into a folder that does not exist yet, an empty one, or one whose manifest
names the same command: there it replaces exactly its own files (and removes those of its own
that the new run no longer writes); every other file stays as it is. Any other non-empty
folder, or a file where the folder should be, is refused before any long work, with one line
(exit code 2). An input of the command is never among the files it replaces.

**Files** (``sample -o``, ``export -o``, ``acc-predictor -o``, ``acc-dataset -o``). An existing
file at the path is replaced (or, for the resumable ``acc-dataset``, extended) only when it is
what the command writes (a subnet config, an ONNX model, a predictor, an accuracy dataset), never
when it is anything else or one of the command's inputs.

**Tuning databases** (``tune --database``, ``tuning_logs/<target>/``): the folder must be new,
empty or already hold a tuning database; tune adds and appends its own files and leaves the rest.

A folder is written in a staging folder (next to it when it is new, inside it when it exists)
and then renamed into place, so a failed or interrupted command leaves nothing that looks
complete; a staging folder left by a SIGKILL is removed by the next command (ofa_deploy.atomic).
Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .atomic import make_temp_dir, sweep_stale, write_error, write_json
from .errors import OfaDeployError

log = logging.getLogger(__name__)

MANIFEST = ".ofa-deploy.json"
MAX_NAMES_SHOWN = 3
PathLike = str | os.PathLike[str]


def _resolve(path: PathLike, option: str) -> tuple[Path, Path]:
    """(the path as given, its absolute form); an empty path, or one no file system can hold, is one line."""
    if not str(path).strip():
        raise OfaDeployError(f"{option}: empty path")
    return Path(path), usable_path(path, option)


def usable_path(path: PathLike, option: str) -> Path:
    """The absolute form of ``path`` (an output's, or an input folder's), or one line naming ``option`` when no file
    system can hold it: ``Path.is_dir()`` and friends raise on such a path instead of answering False."""
    try:
        resolved = Path(path).resolve()
        resolved.exists()
    except (OSError, ValueError, RuntimeError) as err:  # name too long, NUL byte, symlink loop
        raise OfaDeployError(f"{option} {str(path)!r}: not a usable path ({_reason(err)})") from None
    return resolved


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _names(entries: list[str]) -> str:
    shown = ", ".join(sorted(entries)[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(entries) - MAX_NAMES_SHOWN} more" if len(entries) > MAX_NAMES_SHOWN else "")


def _check_writable_home(resolved: Path, given: Path, option: str) -> None:
    """The folder that will hold ``resolved`` (itself, or its nearest existing ancestor) must be writable."""
    home = resolved
    while not home.exists():
        home = home.parent
    if not home.is_dir():
        raise OfaDeployError(f"{option} {given}: {home} is a file, not a folder")
    if not os.access(home, os.W_OK | os.X_OK):
        raise OfaDeployError(f"{option} {given}: cannot write in {home} (permission denied)")


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    return False


class OutputFolder:
    """The output folder of one command: checked up front, written through a staging folder.

    ``files`` are the names the command writes at the folder's top level. ``recognise`` says
    whether a folder without a manifest was nevertheless written by this command (the demo
    dataset's stamp, a run folder of train from before manifests, a tuning database's files).
    """

    def __init__(self, path: PathLike, command: str, files: Iterable[str], *, option: str = "-o",
                 recognise: Callable[[Path], bool] | None = None) -> None:
        self.given, self.path = _resolve(path, option)
        self.command = command
        self.files = tuple(files)
        self.option = option
        self.recognise = recognise

    def __str__(self) -> str:
        return str(self.given)

    # -- the rule -------------------------------------------------------------------------------
    def _manifest(self) -> dict | None:
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None

    def _our_previous_files(self) -> list[str]:
        manifest = self._manifest()
        return [f for f in manifest["files"] if isinstance(f, str)] if manifest else []

    def check(self, inputs: Iterable[PathLike | None] = ()) -> None:
        """Refuse (one line) a folder this command may not write; nothing is written here.

        ``inputs`` are the command's input files: none of them may be one of the files replaced.
        """
        given, path = self.given, self.path
        if path.exists() and not path.is_dir():
            raise OfaDeployError(f"{self.option} {given}: exists and is not a folder")
        if path.is_dir():
            sweep_stale(path)
            try:
                entries = [e for e in os.listdir(path) if e != MANIFEST]
            except OSError as err:
                raise OfaDeployError(f"{self.option} {given}: cannot read the folder ({_reason(err)})") from None
            manifest = self._manifest()
            ours = manifest is not None and manifest.get("command") == self.command
            if entries and not ours and not (self.recognise and self.recognise(path)):
                whose = (f"the output of 'ofa-deploy {manifest.get('command')}'" if manifest is not None
                         else f"files 'ofa-deploy {self.command}' did not write ({_names(entries)})")
                raise OfaDeployError(f"{self.option} {given}: the folder holds {whose}; refusing to write into it: "
                                     "choose a new or empty folder")
        _check_writable_home(path, given, self.option)
        replaced = {path / name for name in (*self.files, *self._our_previous_files())}
        for item in inputs:
            if item is not None and any(_same_file(Path(item), r) for r in replaced if r.exists()):
                raise OfaDeployError(f"{self.option} {given}: writing there would replace the input {item}; "
                                     "choose another folder")

    # -- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def staged(self, inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
        """Yield an empty staging folder; on success its files replace this command's files in the folder.

        A new folder appears complete (one rename); into an existing one, each file is renamed
        into place. On error (or a signal) the staging folder is removed, and so is the folder if
        this call created it, so nothing half-written stays behind.
        """
        self.check(inputs)
        created = self._make_parents()
        home = self.path if self.path.is_dir() else self.path.parent
        try:
            stage = make_temp_dir(home, f".{self.path.name[:64]}." if home != self.path else ".")
        except OSError as err:
            raise write_error(self.given, err) from None
        try:
            yield stage
            self._publish(stage)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if still empty
            raise

    def claim(self, inputs: Iterable[PathLike | None] = ()) -> Path:
        """For commands that write their folder bit by bit (train, demo-data): check, create, mark it now."""
        self.check(inputs)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self._manifest() is None:  # a folder it recognised without one gets it now
                self._write_manifest(self.files)
        except OSError as err:
            raise write_error(self.given, err) from None
        return self.path

    def _make_parents(self) -> list[Path]:
        missing = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        created = []
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                raise write_error(self.given, err) from None
            created.append(folder)
        return created

    def _write_manifest(self, files: Iterable[str], where: Path | None = None) -> None:
        write_json((where or self.path) / MANIFEST,
                   {"written_by": f"ofa-deploy {self.command}", "command": self.command, "files": sorted(set(files))})

    def _publish(self, stage: Path) -> None:
        written = sorted(os.listdir(stage))
        unexpected = sorted(set(written) - set(self.files))
        if unexpected:  # a bug, not a user error: the command declares what it writes
            raise RuntimeError(f"{self.command} staged files it does not declare: {unexpected}")
        try:
            if not self.path.exists():
                self._write_manifest(written, stage)
                os.rename(stage, self.path)  # the new folder appears complete, at once
                return
            old = self._our_previous_files()
            self._write_manifest({*old, *written})  # a kill from here on leaves a folder that is still ours
            for name in written:
                os.replace(stage / name, self.path / name)
            for name in set(old) - set(written):
                stale = self.path / name
                if stale.is_file() or stale.is_symlink():
                    stale.unlink()
            self._write_manifest(written)
            stage.rmdir()
        except OSError as err:
            raise write_error(self.given, err) from None


def _reads_as(read: Callable[[Path], object], path: Path) -> bool:
    try:
        read(path)
    except OfaDeployError:
        return False
    return True


def check_output_file(path: PathLike, what: str, read: Callable[[Path], object], *, option: str = "-o",
                      inputs: Iterable[PathLike | None] = ()) -> Path:
    """Check an output file path before any work: new, or an existing ``what`` (a previous output).

    ``read(path)`` is the command's own reader of the kind of file it writes (and may replace,
    or extend): it raises :class:`OfaDeployError` for anything else. Anything else at the path,
    a folder, or one of the command's ``inputs`` is refused with one line. Returns the path.
    """
    given, resolved = _resolve(path, option)
    if resolved.is_dir():
        raise OfaDeployError(f"{option} {given}: is a folder; give a file name")
    for item in inputs:
        if item is not None and _same_file(Path(item), resolved):
            raise OfaDeployError(f"{option} {given}: is an input of this command; choose another file name")
    if resolved.exists() and not _reads_as(read, resolved):
        raise OfaDeployError(f"{option} {given}: exists and is not {what}; refusing to replace it: "
                             "choose another file name")
    if resolved.exists() and not os.access(resolved.parent, os.W_OK | os.X_OK):
        raise OfaDeployError(f"{option} {given}: cannot write in {resolved.parent} (permission denied)")
    if not resolved.exists():
        _check_writable_home(resolved, given, option)
    return given
