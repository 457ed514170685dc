"""``ofa-deploy profile``: build the target's latency model from measured tuned code."""

from __future__ import annotations

import click

from ofa_deploy.compile.profile import ProfileSettings
from ofa_deploy.errors import OfaDeployError

from .options import SEED, parse_resolutions


@click.command("profile")
@click.option("--target", required=True,
              help="A target that runs on this machine: x86-host (CUDA targets with a GPU); with --rpc, a board's "
                   "target (e.g. cortex-a76); with --estimate-from, any registry CPU target.")
@click.option("--rpc", default=None, metavar="HOST:PORT:KEY",
              help="Time on the board registered under KEY at this RPC tracker (modules cross-compiled here with "
                   "tuning_logs/<target>/'s database, as 'tune --rpc' made it); the model names that board.")
@click.option("--rpc-emulated", is_flag=True,
              help="The --rpc server runs under qemu: timings and the model are labelled 'emulated' (plumbing "
                   "tests only; search never presents them as a speed).")
@click.option("--resolutions", default="224", show_default=True, metavar="R[,R...]",
              help="Resolutions to profile; search with this model is restricted to them.")
@click.option("--calibrate", type=click.IntRange(min=0), default=None,
              help="Subnets compiled and timed end to end to fit the correction (~20 s each on 2 cores): the "
                   "fastest and the slowest by the tables of a seeded random pool (a line is pinned by its ends), "
                   "from the 13th on random ones; from 24 on a scale per stage and an offset per resolution are "
                   "fitted too where leave-one-out says they predict better. Default: 50 (a full profile), 12 "
                   "with --adapt, the model's own number with --recalibrate.")
@click.option("--recalibrate", is_flag=True,
              help="Keep this device's tables, build and time the calibration subnets again now (~20 s each on "
                   "2 cores) and refit the correction: for a machine whose speed moved since the profile (a board "
                   "with new cooling or clocks; a shared VM, as far as its speed holds).")
@click.option("--database", type=click.Path(file_okay=False), default=None,
              help="MetaSchedule database (default: tuning_logs/<target>/ if it holds one; else untuned). Search "
                   "uses the model only while tuning_logs/<target>/ holds this same database.")
@click.option("--space", default=None, metavar="NAME", help="Search space (default: ofa_mbv3_d234_e346_k357_w1.0).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the calibration subnets' pool.")
@click.option("--passes", type=click.IntRange(min=1), default=ProfileSettings().passes, show_default=True,
              help="Timing passes over all models (each built once); the median of the passes timed in the "
                   "machine's steady state counts, each referred to one speed state by the speed probe's reading "
                   "(a board's: the fastest). A shared machine's speed drifts: one pass is noisy.")
@click.option("--retries", type=click.IntRange(min=0), default=ProfileSettings().retry_passes, show_default=True,
              help="Extra passes for the models whose every pass ran while the speed probe said the machine was "
                   "slowed (each waits up to a minute per model for the steady state). 0 on a machine that stays "
                   "slowed: those timings are then kept, referred to the speed state like the others.")
@click.option("--turns", type=click.IntRange(min=0), default=ProfileSettings().turns, show_default=True, metavar="N",
              help="0: each pass times the models one after another. N: each pass loads them all into one process "
                   "and calls them in N turns, each turn's speed divided out: a shared VM's drift then hits every "
                   "model alike (a model made this way is never mixed with one-by-one timings).")
@click.option("--no-progress", is_flag=True, help="No progress bars (logs only).")
@click.option("--estimate-from", "estimate_from", default=None, metavar="SOURCE",
              help="For a target with no device here: learn roofline efficiencies on SOURCE's profiled model "
                   "(e.g. x86-host) and write tuning_logs/<target>/estimated_model.json (an estimate; nothing "
                   "is timed).")
@click.option("--adapt", is_flag=True,
              help="A usable model in minutes for a device without one: take the per-block tables of the nearest "
                   "other device's model (tuning_logs/), re-scale each block to the code built here by its tasks' "
                   "best times in the two databases (nothing timed), and only time the --calibrate subnets here "
                   "(few-shot transfer); a later plain 'profile' replaces it with this device's own tables.")
@click.option("--adapt-from", "adapt_from", type=click.Path(file_okay=False), default=None, metavar="FOLDER",
              help="Like --adapt, with this device folder's tables (e.g. tuning_logs/x86_64-znver5-2c).")
@click.option("--time-blocks", "time_blocks", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="With --adapt: also time here the K blocks that carry the largest share of a random subnet's "
                   "time (~25 s each: a build and 3 passes), and move every other block by the ratio its stage's "
                   "timed blocks show.")
@click.pass_context
def profile_command(ctx: click.Context, target: str, rpc: str | None, rpc_emulated: bool, resolutions: str,
                    calibrate: int | None, recalibrate: bool, database: str | None, space: str | None, seed: int,
                    passes: int, retries: int, turns: int, no_progress: bool, estimate_from: str | None, adapt: bool,
                    adapt_from: str | None, time_blocks: int) -> None:
    """Time every block variant of the space with the target's tuned code; fit and save the latency model.

    Builds and times the stem, the 90 block variants and the head per resolution (their edges in
    the layout the target computes in, NHWC on CPUs, so each compiles to the kernels it runs inside
    a network), then compiles --calibrate subnets end to end and fits measured = a * sum_of_blocks + b (with a
    scale per stage and an offset per resolution from 24 subnets on, where they predict better). Writes
    tuning_logs/<target>/latency_model.json, which 'ofa-deploy search' then uses for this target
    (while the database and TVM are unchanged). Interrupted runs resume.

    With --rpc HOST:PORT:KEY the board registered under KEY is the device: every model is
    cross-compiled here and timed there, and the model goes to the board's folder (the one
    'tune --rpc' with the same key made; another board's folder is refused).

    With --estimate-from SOURCE, for a target with no device here (e.g. cortex-a76), nothing is timed:
    per-layer roofline efficiencies are fitted to SOURCE's profiled tables and written to
    tuning_logs/<target>/estimated_model.json, which search then uses, labelled 'estimated'.

    \b
    Example:
      ofa-deploy profile --target x86-host
      ofa-deploy profile --target x86-host --resolutions 192,224 --turns 60   # ~35 min on 2 cores
      ofa-deploy profile --target x86-host --adapt --resolutions 224     # minutes, from another CPU's tables
      ofa-deploy profile --target x86-host --adapt --time-blocks 20      # + the 20 heaviest blocks timed here
      ofa-deploy profile --target x86-host --resolutions 192,224 --recalibrate  # refit on subnets timed now
      ofa-deploy profile --target cortex-a76 --rpc 192.168.1.10:9190:pi5  # on the board, after tune --rpc
      ofa-deploy profile --target cortex-a76 --estimate-from x86-host
    """
    if estimate_from is not None:
        _estimate(ctx, target, estimate_from, space)
        return
    from ofa_deploy.latency.profile import ProfileConfig, profile_target
    from ofa_deploy.search_space import DEFAULT_SPACE
    from ofa_deploy.search_space.genes import resolution_indices

    res = parse_resolutions(resolutions)
    resolution_indices(space or DEFAULT_SPACE, res)  # validates against the space: one line if wrong
    if adapt and adapt_from is None:
        from ofa_deploy.latency.measured import nearest_model
        from ofa_deploy.targets import get_target

        near = nearest_model(get_target(target).name)
        if near is None:
            raise OfaDeployError(f"--adapt: no other device in tuning_logs/ has a latency model to adapt; run "
                                 f"'ofa-deploy profile --target {target}' (the full tables)")
        adapt_from = str(near[0])
    if adapt_from is not None and calibrate is not None and calibrate < 3:
        raise OfaDeployError(f"--calibrate {calibrate}: adapting fits a scale and an offset, give at least 3 subnets")
    report = profile_target(ProfileConfig(target=target, resolutions=res, calibrate=calibrate, database_dir=database,
                                          space=space or DEFAULT_SPACE, seed=seed,
                                          settings=ProfileSettings(passes=passes, retry_passes=retries, turns=turns),
                                          adapt_from=adapt_from, rpc=rpc, rpc_emulated=rpc_emulated,
                                          time_blocks=time_blocks, recalibrate=recalibrate),
                            progress=False if no_progress else None)
    model, meta = report.model, report.model.meta
    cal = model.calibration
    click.echo(f"{report.path}: {len(meta['workloads'])} workloads ({report.timed} timed now, {report.reused} reused), "
               f"{meta['tuned_funcs']}/{meta['total_funcs']} fused functions tuned")
    if cal.n:
        worst = max(report.calibration, key=lambda p: abs(p["residual_pct"]))
        click.echo(f"calibration: {cal.describe()} on {cal.n} subnets; residual rms "
                   f"{cal.rms_pct:.1f} %, max {cal.max_pct:.1f} % ({worst['id']}: {worst['measured_ms']:.2f} ms "
                   f"measured, {worst['predicted_ms']:.2f} predicted)")
    else:
        click.echo("calibration: none (--calibrate 0): predictions are the plain sum of the blocks")
    if model.source == "emulated":
        click.echo(f"latency model: EMULATED, not a device speed ({model.basis})")
    else:
        click.echo(f"latency model: estimated from {model.basis}")


def _estimate(ctx: click.Context, target: str, source: str, space: str | None) -> None:
    """``profile --estimate-from``: learn efficiencies on SOURCE, write the target's estimated model."""
    from ofa_deploy.latency.learned import estimate_target

    timed_only = [p.replace("_", "-") for p in ("rpc", "rpc_emulated", "resolutions", "calibrate", "recalibrate",
                                                "database", "seed", "passes", "retries", "turns")
                  if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT]
    if timed_only:
        raise OfaDeployError(f"--{timed_only[0]}: not used with --estimate-from (nothing is timed); allowed with it: "
                             "--target, --space")
    report = estimate_target(target, source, space)
    fit, data = report.fit, report.data
    eff, src = data["efficiency"], data["learned_from"]
    click.echo(f"{report.path}: ESTIMATE for {data['target']}, efficiencies learned on {src['target']} "
               f"({src['tables']} tables, db {(src['database_sha256'] or 'none')[:8]}, TVM {src['tvm_version']})")
    click.echo("efficiency (fraction of peak): " + ", ".join(f"{k} {eff[k]:.3g}" for k in
                                                             ("conv", "dwconv", "se", "pool", "linear", "mem"))
               + f"; overhead {eff['overhead_us']:.1f} us/layer")
    click.echo(f"fit on {len(fit.keys)} {src['target']} workloads: relative error rms {fit.rms_pct:.1f} %, median "
               f"{fit.median_abs_pct:.1f} %, max {fit.max_pct:.1f} %"
               + (f"; weakly determined (< {data['fit']['fit_config']['min_share_pct']:g} % of the time): "
                  f"{', '.join(fit.weakly_determined)}"
                  if fit.weakly_determined else ""))
    e2e = data["fit"]["e2e_check"]
    if e2e["n"]:
        click.echo(f"end to end on {e2e['n']} {src['target']} calibration subnets (no correction): rms "
                   f"{e2e['rms_pct']:.1f} %, max {e2e['max_pct']:.1f} %")
    peaks = data["target_peaks"]
    click.echo(f"latency model: estimated (roofline on {data['target']} peaks {peaks['peak_gflops_fp32']:g} GFLOP/s, "
               f"{peaks['peak_gbps']:g} GB/s); not a measurement")
