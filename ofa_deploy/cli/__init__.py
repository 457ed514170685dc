"""The ``ofa-deploy`` command line: a thin layer over the Python API, one module per command group.

``space`` (space, sample, info, targets), ``export``, ``compile``, ``search`` (search, acc-dataset,
acc-predictor), ``tune``, ``profile`` and ``train`` (train, demo-data); :mod:`.options` holds what
several share. This package is the top of the house: nothing else in ofa_deploy imports it.

Every user error is an :class:`OfaDeployError`: one line on stderr, exit code 2, no traceback
unless ``--debug``. Files are written atomically, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import logging
import re
import sys

import click

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
    from .compile import compile_command
    from .export import export
    from .profile import profile_command
    from .search import acc_dataset, acc_predictor, search
    from .space import info, sample, space, targets_command
    from .train import demo_data, train
    from .tune import tune_command

    for command in (space, sample, info, targets_command, export, compile_command, search, acc_dataset, acc_predictor,
                    tune_command, profile_command, train, demo_data):
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: map user errors to one line and exit code 2."""
    args = merge_target_words(list(argv if argv is not None else sys.argv[1:]))
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="ofa-deploy", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:  # usage errors: click's own message, exit 2
        err.show()
        sys.exit(err.exit_code)
    except OfaDeployError as err:
        if debug:
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)

