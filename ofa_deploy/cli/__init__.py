"""The ``ofa-deploy`` command line: a thin layer over the Python API, one module per command group.

``space`` (space, sample, info, targets), ``export``, ``compile``, ``check``, ``search`` (search,
acc-dataset, acc-predictor), ``tune``, ``profile`` and ``train`` (train, demo-data); :mod:`.options` holds what
several share. This package is the top of the house: nothing else in ofa_deploy imports it.

Every user error is an :class:`OfaDeployError` or a usage error: one line on stderr, exit code 2, no
traceback unless ``--debug``; so is a file-system error on a named path (an OSError with a filename).
Outputs follow the output rule (ofa_deploy/outputs.py) and are written atomically, so a failed or
interrupted command leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import sys
import threading
from typing import Any, Iterator

import click

from ofa_deploy.atomic import process_scratch
from ofa_deploy.errors import OfaDeployError

log = logging.getLogger("ofa_deploy")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level logging.")
@click.version_option(package_name="ofa-deploy")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Once-for-All subnets, compiled with TVM for the device they run on.

    \b
    Example:
      ofa-deploy sample --seed 0 -o subnet.json
      ofa-deploy info subnet.json
      ofa-deploy export subnet.json --supernet ofa.pth -o subnet.onnx
    """
    ctx.ensure_object(dict)["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _register() -> None:
    """Add the commands of every command group's module to the group.

    Imported here, not at the top, so the package's namespace keeps its submodules
    (``ofa_deploy.cli.search`` is the module, not the ``search`` command).
    """
    from .check import check_command
    from .compile import compile_command
    from .export import export
    from .profile import profile_command
    from .search import acc_dataset, acc_predictor, search
    from .space import info, sample, space, targets_command
    from .train import demo_data, train
    from .tune import tune_command

    for command in (space, sample, info, targets_command, export, compile_command, check_command, search, acc_dataset,
                    acc_predictor, tune_command, profile_command, train, demo_data):
        cli.add_command(command)


_register()


TVM_OPTION_WORD = re.compile(r"^-[a-z][a-z_]*=")  # -mcpu=cortex-a76, -arch=sm_87, -mattr=+neon


def merge_target_words(args: list[str]) -> list[str]:
    """Join ``--target llvm -mcpu=cortex-a76 -mattr=+neon`` into one ``--target`` value.

    Users type classic TVM target strings unquoted; click would read ``-mcpu=...`` as options.
    """
    out: list[str] = []
    skip_until = 0
    for i, word in enumerate(args):
        if i < skip_until:
            continue
        out.append(word)
        if word == "--target" and i + 1 < len(args):
            j = i + 2
            while j < len(args) and TVM_OPTION_WORD.match(args[j]):
                j += 1
            out.append(" ".join(args[i + 1:j]))
            skip_until = j
    return out


class Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds the command like Ctrl-C does, so every cleanup on the way runs.

    Python's default for SIGTERM ends the process at once: no ``finally``, so worker processes and
    staging folders were left behind. Raised in the main thread, it passes through the same
    ``finally`` blocks and context managers as KeyboardInterrupt (isolate.py kills the worker).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


UNWINDING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
NO_ARGS_IS_HELP: tuple[type, ...] = tuple(filter(None, [getattr(click.exceptions, "NoArgsIsHelpError", None)]))


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While the command runs: SIGINT, SIGTERM and SIGHUP raise in the main thread; a second one is ignored.

    Ignoring the signals that follow the first keeps a burst of them (a supervisor's repeated
    SIGTERM, a held Ctrl-C) from interrupting the cleanup the first one started.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: Any) -> None:
        for sig in UNWINDING_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    saved = {sig: signal.getsignal(sig) for sig in UNWINDING_SIGNALS}
    for sig in UNWINDING_SIGNALS:
        signal.signal(sig, unwind)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def one_line(text: str) -> str:
    """``text`` with every character that is not printable escaped: a path with a newline stays one line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace").decode()
                   for c in text.strip())


def _error_line(message: str, details: str | None = None) -> None:
    """One line on stderr; ``details`` (a worker's last output) go to the debug log (-v)."""
    if details:
        log.debug("%s", details)
    click.echo(f"error: {one_line(message)}" + (" (details: rerun with -v)" if details else ""), err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: map user errors to one line and exit code 2.

    A command runs with its own scratch folder for temporaries (removed at the end, and by the
    next command if this one is killed with SIGKILL) and with SIGTERM/SIGHUP unwinding like
    Ctrl-C, so no signal short of SIGKILL leaves a worker process or a temporary behind.
    """
    args = merge_target_words(list(argv if argv is not None else sys.argv[1:]))
    debug = "--debug" in args
    with _signals_unwind(), process_scratch():
        try:
            cli.main(args=args, prog_name="ofa-deploy", standalone_mode=False)
        except click.exceptions.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
            click.echo("aborted", err=True)
            sys.exit(130)
        except Terminated as sig:
            click.echo(f"terminated by {signal.Signals(sig.signum).name}", err=True)
            sys.exit(128 + sig.signum)
        except click.ClickException as err:  # usage errors: click's own message, one line, exit 2
            if isinstance(err, NO_ARGS_IS_HELP):  # plain "ofa-deploy": the help, as click 8.1 gave it (exit 0)
                click.echo(err.ctx.get_help() if err.ctx else err.format_message())
                sys.exit(0)
            if debug:
                raise
            _error_line(err.format_message())
            sys.exit(2)
        except OfaDeployError as err:
            if debug:
                raise
            _error_line(str(err), err.details)
            sys.exit(2)
        except OSError as err:  # a path the file system refused (too long, no permission, disk full): one line
            if debug or err.filename is None:
                raise
            _error_line(f"{err.filename}: {err.strerror or err}")
            sys.exit(2)
        except click.exceptions.Exit as err:
            sys.exit(err.exit_code)
