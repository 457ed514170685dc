"""The ``ofa-deploy`` command line: a thin layer over the Python API.

Every user error is an :class:`OfaDeployError`: one line on stderr, exit code 2, no traceback
unless ``--debug``. Files are written atomically, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import click

from .errors import OfaDeployError

log = logging.getLogger("ofa_deploy")

SPACE_OPTION = click.option("--space", default=None, metavar="NAME",
                            help="Search space name (default: the config's, else ofa_mbv3_d234_e346_k357_w1.0).")


def _load_config(path: str, space: str | None):
    from .search_space import SubnetConfig

    return SubnetConfig.from_json(path, space=space)


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


@cli.command()
@click.option("--space", "space_name", default=None, metavar="NAME", help="One space (default: all).")
def space(space_name: str | None) -> None:
    """Describe the search space(s) and their size.

    \b
    Example:
      ofa-deploy space --space ofa_mbv3_d234_e346_k357_w1.0
    """
    from .search_space import get_space, list_spaces

    names = [space_name] if space_name else list_spaces()
    click.echo("\n\n".join(get_space(n).describe() for n in names))


@cli.command()
@click.option("--seed", type=int, required=True, help="Seed of the random generator (numpy PCG64).")
@click.option("-o", "--output", default="subnet.json", show_default=True, type=click.Path(dir_okay=False))
@SPACE_OPTION
def sample(seed: int, output: str, space: str | None) -> None:
    """Write a uniformly sampled valid subnet config.

    \b
    Example:
      ofa-deploy sample --seed 3 -o subnet.json
    """
    import numpy as np

    from .search_space import DEFAULT_SPACE, SubnetConfig

    cfg = SubnetConfig.sample(np.random.default_rng(seed), space or DEFAULT_SPACE)
    cfg.to_json(output)
    click.echo(f"{output}: {cfg.id}")


@cli.command()
@click.argument("subnet", type=click.Path())
@click.option("--layers", is_flag=True, help="Also print the per-layer table.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@SPACE_OPTION
def info(subnet: str, layers: bool, as_json: bool, space: str | None) -> None:
    """MACs, parameters, bytes moved and arithmetic intensity of a subnet.

    \b
    Example:
      ofa-deploy info subnet.json --layers
    """
    from .search_space.costs import count_costs

    costs = count_costs(_load_config(subnet, space))
    if as_json:
        out = costs.summary()
        if layers:
            out["layers"] = [{"name": l.name, "op": l.op, "macs": l.macs, "params": l.params,
                              "bytes_fp32": l.bytes(4), "intensity_fp32": l.intensity(4)} for l in costs.layers]
        click.echo(json.dumps(out, indent=2))
        return
    text = costs.table()
    click.echo(text if layers else "\n".join(text.splitlines()[-5:]))


@cli.command()
@click.argument("subnet", type=click.Path())
@click.option("--supernet", "checkpoint", type=click.Path(), default=None,
              help="Supernet checkpoint in the official once-for-all format.")
@click.option("--random-weights", is_flag=True, help="No checkpoint: export with random weights (latency work only).")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="ONNX file to write (default: <subnet id>.onnx).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@SPACE_OPTION
def export(subnet: str, checkpoint: str | None, random_weights: bool, output: str | None, batch: int,
           space: str | None) -> None:
    """Export a subnet to ONNX (opset 17, onnxsim, checked, verified with ONNX Runtime).

    \b
    Example:
      ofa-deploy export subnet.json --supernet ofa_mbv3_d234_e346_k357_w1.0.pth -o subnet.onnx
    """
    from .export import export_onnx
    from .search_space import load_supernet, random_subnet

    cfg = _load_config(subnet, space)
    if checkpoint is None and not random_weights:
        raise OfaDeployError("export: --supernet CHECKPOINT is required (or --random-weights for latency work)")
    if checkpoint is None:
        model = random_subnet(cfg, seed=0)
    else:
        model = load_supernet(checkpoint, cfg.space).extract(cfg)
    out = output or f"{cfg.id}.onnx"
    report = export_onnx(model, cfg.image_size, out, batch=batch)
    click.echo(f"{out}: {report.nodes} nodes, opset {report.opset}, ORT vs PyTorch max abs err {report.max_abs_err:.2e}")


def _register() -> None:
    """Commands that live in their own modules (one module per area)."""
    from .cli_compile import compile_command, targets_command
    from .cli_profile import profile_command
    from .cli_search import acc_dataset, acc_predictor, search
    from .cli_train import demo_data, train
    from .cli_tune import tune_command

    for command in (search, compile_command, targets_command, train, demo_data, acc_dataset, acc_predictor):
        cli.add_command(command)
    cli.add_command(profile_command)
    cli.add_command(tune_command)


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


if __name__ == "__main__":
    main()
