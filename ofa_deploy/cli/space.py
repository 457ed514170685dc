"""``ofa-deploy space``, ``sample``, ``info`` and ``targets``: what the space and the registry hold."""

from __future__ import annotations

import json

import click

from .options import SEED, SPACE_OPTION, file_rule, load_config


@click.command()
@click.option("--space", "space_name", default=None, metavar="NAME", help="One space (default: all).")
def space(space_name: str | None) -> None:
    """Describe the search space(s) and their size.

    \b
    Example:
      ofa-deploy space --space ofa_mbv3_d234_e346_k357_w1.0
    """
    from ofa_deploy.search_space import get_space, list_spaces

    names = [space_name] if space_name else list_spaces()
    click.echo("\n\n".join(get_space(n).describe() for n in names))


@click.command()
@click.option("--seed", type=SEED, required=True, help="Seed of the random generator (numpy PCG64).")
@click.option("-o", "--output", default="subnet.json", show_default=True, type=click.Path(),
              help="Config file to write. " + file_rule("a subnet config"))
@SPACE_OPTION
def sample(seed: int, output: str, space: str | None) -> None:
    """Write a uniformly sampled valid subnet config.

    \b
    Example:
      ofa-deploy sample --seed 3 -o subnet.json
    """
    import numpy as np

    from ofa_deploy.outputs import check_output_file
    from ofa_deploy.search_space import DEFAULT_SPACE, SubnetConfig

    check_output_file(output, "a subnet config", lambda path: load_config(str(path), None))
    cfg = SubnetConfig.sample(np.random.default_rng(seed), space or DEFAULT_SPACE)
    cfg.to_json(output)
    click.echo(f"{output}: {cfg.id}")


@click.command()
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
    from ofa_deploy.search_space.costs import count_costs

    costs = count_costs(load_config(subnet, space))
    if as_json:
        out = costs.summary()
        if layers:
            out["layers"] = [{"name": l.name, "op": l.op, "macs": l.macs, "params": l.params,
                              "bytes_fp32": l.bytes(4), "intensity_fp32": l.intensity(4)} for l in costs.layers]
        click.echo(json.dumps(out, indent=2))
        return
    text = costs.table()
    click.echo(text if layers else "\n".join(text.splitlines()[-5:]))


@click.command("targets")
@click.option("--kind", type=click.Choice(["cpu", "cuda", "vta"]), default=None)
def targets_command(kind: str | None) -> None:
    """List the known targets with their peak figures.

    \b
    Example:
      ofa-deploy targets --kind cpu
    """
    from ofa_deploy.targets import all_targets

    rows = [t for t in all_targets().values() if kind is None or t.kind == kind]
    click.echo(f"{'name':<14}{'kind':<6}{'arch':<9}{'cores':>6}{'GFLOP/s':>10}{'GB/s':>8}  description")
    for t in rows:
        gf = f"{t.peak_gflops_fp32:.0f}" if t.peak_gflops_fp32 else "-"
        gb = f"{t.peak_gbps:.1f}" if t.peak_gbps else "-"
        click.echo(f"{t.name:<14}{t.kind:<6}{t.arch:<9}{t.cores:>6}{gf:>10}{gb:>8}  {t.description}")
    if any(t.kind == "vta" for t in rows):
        click.echo("vta-*: arch, cores and GFLOP/s (fp32) are the board's ARM host's, GB/s its DRAM; the VTA fabric "
                   "is an analytic model (TVM 0.27 has no VTA backend): compile builds for the ARM host")
