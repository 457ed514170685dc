"""``ofa-deploy check``: a compiled folder verified (and timed) on the device it was shipped to."""

from __future__ import annotations

import sys

import click


@click.command("check")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--no-measure", is_flag=True, help="Only verify; do not time the module.")
@click.option("--repeat", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timing samples (each the mean of 5 calls).")
def check_command(folder: str, no_measure: bool, repeat: int) -> None:
    """Run a compiled folder's module on THIS machine against the PyTorch logits compile recorded.

    For modules compiled elsewhere: a CUDA module built on a machine without a GPU, an ARM module
    compiled on a laptop. Needs only TVM's runtime here (set TVM_USE_RUNTIME_LIB=1 where the
    compiler library is absent). Writes FOLDER/check-<device>.json (verification, latency with
    its source, and this device's identity); exit code 1 when the outputs differ.

    \b
    Example:
      ofa-deploy compile out/subnet.json --target cuda-sm90 -o build/h100   # on the build machine
      ofa-deploy check build/h100                                           # on the GPU machine
    """
    from ofa_deploy.device_check import check_compiled

    result = check_compiled(folder, measure=not no_measure, repeat=repeat)
    v, latency = result.record["verification"], result.record["latency"]
    line = f"{folder}: {result.record['target']} on {result.record['device_line']}: verification {v['status']} " \
           f"(max rel err {v['max_rel_err']:.1e})"
    if latency:
        line += f", latency {latency['median_ms']:.3f} ms ({latency['source']})"
    click.echo(line)
    if not result.passed:
        sys.exit(1)
