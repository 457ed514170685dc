"""Options and argument parsing several command groups share."""

from __future__ import annotations

from pathlib import Path

import click

from ofa_deploy.errors import OfaDeployError

# The output rule (ofa_deploy/outputs.py), as each command's --help states it.
FOLDER_RULE = ("An existing folder is written into only when it is empty or a previous output of this command "
               "(marked by its .ofa-deploy.json): then exactly the command's own files are replaced and nothing "
               "else is touched; any other folder is refused (exit 2).")


def file_rule(what: str) -> str:
    """The output rule for a command that writes one file."""
    return (f"An existing file there is replaced only when it is {what} (never an input of the command); "
            "anything else is refused (exit 2).")


SEED = click.IntRange(0, 2**32 - 1)  # what numpy's and torch's generators both accept

SPACE_OPTION = click.option("--space", default=None, metavar="NAME",
                            help="Search space name (default: the config's, else ofa_mbv3_d234_e346_k357_w1.0).")


def load_config(path: str, space: str | None):
    """A subnet config file, validated (one line naming the field if not)."""
    from ofa_deploy.search_space import SubnetConfig

    return SubnetConfig.from_json(path, space=space)


def read_onnx_model(path: Path) -> object:
    """An ONNX model with a graph (what ``export`` writes); anything else is an OfaDeployError."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf and onnx raise many types; all mean "not an ONNX model"
        model = None
    if model is None or not model.graph.node or not model.opset_import:
        raise OfaDeployError(f"{path}: not an ONNX model")
    return model


def parse_resolutions(text: str) -> tuple[int, ...]:
    """``"160,192,224"`` -> (160, 192, 224); one clear line for anything else."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values:
        raise OfaDeployError(f"--resolutions: expected comma-separated integers like 224 or 160,192,224; got {text!r}")
    return values


def check_database_folder(path: str) -> None:
    """``tune --database``: a new or empty folder, or one that holds a tuning database.

    tune adds and appends only its own files there (ofa_deploy/outputs.py), so a database folder
    may hold other files too; a non-empty folder without one is somebody else's and is refused.
    """
    from ofa_deploy.outputs import OutputFolder
    from ofa_deploy.tuning_logs.layout import DATABASE_FILES, LOCK_FILE, PACKED, STATE_FILE

    names = (*DATABASE_FILES, *(name + PACKED for name in DATABASE_FILES), STATE_FILE, LOCK_FILE)
    OutputFolder(path, "tune", (), option="--database",
                 recognise=lambda folder: any((folder / name).exists() for name in names)).check()
