"""Options and argument parsing several command groups share."""

from __future__ import annotations

import click

from ofa_deploy.errors import OfaDeployError

SPACE_OPTION = click.option("--space", default=None, metavar="NAME",
                            help="Search space name (default: the config's, else ofa_mbv3_d234_e346_k357_w1.0).")


def load_config(path: str, space: str | None):
    """A subnet config file, validated (one line naming the field if not)."""
    from ofa_deploy.search_space import SubnetConfig

    return SubnetConfig.from_json(path, space=space)


def parse_resolutions(text: str) -> tuple[int, ...]:
    """``"160,192,224"`` -> (160, 192, 224); one clear line for anything else."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values:
        raise OfaDeployError(f"--resolutions: expected comma-separated integers like 224 or 160,192,224; got {text!r}")
    return values
