"""``ofa-deploy export``: a subnet as verified ONNX."""

from __future__ import annotations

import click

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.outputs import check_output_file

from .options import SPACE_OPTION, file_rule, load_config, read_onnx_model


@click.command()
@click.argument("subnet", type=click.Path())
@click.option("--supernet", "checkpoint", type=click.Path(), default=None,
              help="Supernet checkpoint in the official once-for-all format.")
@click.option("--random-weights", is_flag=True, help="No checkpoint: export with random weights (latency work only).")
@click.option("-o", "--output", default=None, type=click.Path(),
              help="ONNX file to write (default: <subnet id>.onnx). " + file_rule("an ONNX model"))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@SPACE_OPTION
def export(subnet: str, checkpoint: str | None, random_weights: bool, output: str | None, batch: int,
           space: str | None) -> None:
    """Export a subnet to ONNX (opset 17, onnxsim, checked, verified with ONNX Runtime).

    \b
    Example:
      ofa-deploy export subnet.json --supernet ofa_mbv3_d234_e346_k357_w1.0.pth -o subnet.onnx
    """
    from ofa_deploy.export import export_onnx
    from ofa_deploy.search_space import load_supernet, random_subnet

    cfg = load_config(subnet, space)
    if checkpoint is None and not random_weights:
        raise OfaDeployError("export: --supernet CHECKPOINT is required (or --random-weights for latency work)")
    if checkpoint is not None and random_weights:
        raise OfaDeployError("export: give either --supernet or --random-weights, not both")
    out = str(check_output_file(output or f"{cfg.id}.onnx", "an ONNX model", read_onnx_model,
                                inputs=(subnet, checkpoint)))
    if checkpoint is None:
        model = random_subnet(cfg, seed=0)
    else:
        model = load_supernet(checkpoint, cfg.space).extract(cfg)
    report = export_onnx(model, cfg.image_size, out, batch=batch)
    click.echo(f"{out}: {report.nodes} nodes, opset {report.opset}, ORT vs PyTorch max abs err {report.max_abs_err:.2e}")
