"""``ofa-deploy compile``: a subnet as a verified deployable TVM module."""

from __future__ import annotations

import click

from .options import FOLDER_RULE


@click.command("compile")
@click.argument("subnet", type=click.Path())
@click.option("--target", required=True,
              help="Registry name, TVM tag or classic TVM string (e.g. llvm -mcpu=cortex-a76).")
@click.option("--supernet", "checkpoint", type=click.Path(), default=None, help="Supernet checkpoint (official format).")
@click.option("--random-weights", is_flag=True, help="No checkpoint: seeded random weights (latency work only).")
@click.option("-o", "--output", default=None, type=click.Path(),
              help="Output folder (default: build/<id>-<target>). " + FOLDER_RULE)
@click.option("--no-verify", is_flag=True, help="Skip the numeric check on the target or its emulator.")
@click.option("--measure", is_flag=True, help="Time the module on the target where one is reachable.")
@click.option("--rpc", default=None, metavar="HOST:PORT[:KEY]",
              help="Verify and --measure on a remote device over TVM RPC: a tracker and device key "
                   "(HOST:PORT:KEY) or a server (HOST:PORT).")
@click.option("--rpc-emulated", is_flag=True, help="The --rpc server runs under qemu: latency labelled 'emulated'.")
@click.option("--database", type=click.Path(file_okay=False), default=None,
              help="MetaSchedule database directory (default: tuning_logs/<target>/ if present).")
@click.option("--no-cuda-graph", is_flag=True,
              help="CUDA targets: launch every kernel on each call instead of replaying one captured CUDA graph.")
def compile_command(subnet: str, target: str, checkpoint: str | None,
                    random_weights: bool, output: str | None, no_verify: bool, measure: bool, rpc: str | None,
                    rpc_emulated: bool, database: str | None, no_cuda_graph: bool) -> None:
    """Compile a subnet into a verified deployable TVM module (.so + metadata.json + ONNX).

    \b
    Example:
      ofa-deploy compile subnet.json --supernet ofa.pth --target x86-host --measure -o build/x86
      ofa-deploy compile subnet.json --supernet ofa.pth --target cortex-a76 --measure --rpc 192.168.1.2:9190:pi5
      ofa-deploy compile subnet.json --supernet ofa.pth --target llvm -mcpu=cortex-a76 -o build/pi5
    """
    from ofa_deploy.deploy import CompileOptions, compile_subnet
    from ofa_deploy.search_space import SubnetConfig
    from ofa_deploy.targets import get_target

    cfg = SubnetConfig.from_json(subnet)
    spec = get_target(target)
    out = output or f"build/{cfg.id}-{spec.name}"
    result = compile_subnet(cfg, CompileOptions(target=target, out_dir=out, checkpoint=checkpoint,
                                                random_weights=random_weights, verify=not no_verify,
                                                measure=measure, rpc=rpc, rpc_emulated=rpc_emulated,
                                                database_dir=database, config_path=subnet,
                                                cuda_graph=not no_cuda_graph))
    from ofa_deploy.deploy import read_metadata

    meta = read_metadata(result)
    v = meta["verification"]
    line = f"{result}: {spec.name}, verification {v['status']}"
    if "max_rel_err" in v:
        line += f" on {v['ran_on']} (max rel err {v['max_rel_err']:.1e})"
    if meta["latency"]:
        line += f", latency {meta['latency']['median_ms']:.2f} ms ({meta['latency']['source']})"
        if meta["latency"]["source"] == "emulated":
            line += " - emulated: not a device speed"
        prediction = meta.get("latency_prediction")
        if prediction:  # at this timing's speed state when the model is speed-referred
            line += f"; the latency model predicted {prediction['predicted_ms']:.2f} ms ({prediction['error_pct']:+.1f} %)"
    click.echo(line)
    if "vta" in meta:  # say plainly what runs where: the module is ARM-only, the VTA figures are a model's
        from ofa_deploy.latency.vta import describe_offload

        for text in describe_offload(meta["vta"]):
            click.echo(text)
