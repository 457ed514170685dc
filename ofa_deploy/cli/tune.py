"""``ofa-deploy tune``: MetaSchedule tuning of the space's distinct tasks into tuning_logs/<target>/."""

from __future__ import annotations

import sys

import click

from ofa_deploy.tuning_logs.database import CACHE_PROTOCOLS

from .options import check_database_folder


@click.command("tune")
@click.option("--target", required=True, help="Registry name, TVM tag or classic TVM string (e.g. x86-host).")
@click.option("--rpc", default=None, metavar="HOST:PORT:KEY",
              help="RPC tracker with the device registered under KEY (targets that do not run here).")
@click.option("--trials", type=int, default=64, show_default=True,
              help="At most this many measured candidates per distinct task. Trials come in rounds (8 for "
                   "every task, then doubling for the tasks that still improve, largest share of the latency "
                   "first); a task that stops improving stops early.")
@click.option("--warm-start", type=int, default=4, show_default=True,
              help="Seed schedules measured first for a task new here: the same task tuned on the nearest "
                   "other devices (tuning_logs/, the repository's shipped folders included) and its structural "
                   "siblings; and, once, for each task tuned here already (the polish before the rounds: a task "
                   "they beat is reopened). 0: neither. On CPUs every new task also measures the schedule a build "
                   "without a database would use, first: its best is never worse than that.")
@click.option("--cache", type=click.Choice(CACHE_PROTOCOLS), default=None,
              help="How candidates are timed: cold (weights and output flushed from the caches before each sample, "
                   "as in a network's inference) or warm (MetaSchedule's default: rerun with everything cached). "
                   "Default: the database's own protocol, cold for a new one (GPUs: warm).")
@click.option("--budget-minutes", type=float, default=None,
              help="Stop starting work that would not finish within this many minutes; rerun to continue.")
@click.option("--resolutions", default="224", show_default=True, metavar="R[,R...]",
              help="Resolutions whose workloads are tuned; each one adds its own tasks (cost is linear).")
@click.option("--database", type=click.Path(file_okay=False), default=None,
              help="MetaSchedule database directory (default: tuning_logs/<target>/, which compile uses): new, "
                   "empty or a database; tune adds only its own files there, and refuses any other folder (exit 2).")
@click.option("--space", default=None, metavar="NAME", help="Search space (default: ofa_mbv3_d234_e346_k357_w1.0).")
@click.option("--workloads", default=None, metavar="KEY[,KEY...]",
              help="Only these workloads of the resolutions, e.g. r224/head,r224/s2-first/k5-e4 (default: all).")
@click.option("--chunk-tasks", type=int, default=16, show_default=True,
              help="Tasks per worker process (larger: less start-up cost per task, more retuned after a kill).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs only).")
@click.option("--pack", is_flag=True, help="Tune nothing: gzip the database for shipping (*.json.gz, ~14x smaller, "
              "same hash; compile and search read it as is, the next tune unpacks it).")
@click.pass_context
def tune_command(ctx: click.Context, target: str, rpc: str | None, trials: int, warm_start: int,
                 cache: str | None, budget_minutes: float | None,
                 resolutions: str, database: str | None, space: str | None, workloads: str | None, chunk_tasks: int,
                 no_progress: bool, pack: bool) -> None:
    """Tune the target's MetaSchedule database (XGBoost cost model) on the space's distinct tasks.

    The tasks are the fused kernels of every block variant, stem and head of the space at the
    given resolutions; identical tasks are tuned once for all subnets (at 224: 92 workloads,
    ~187 distinct tasks). Before it starts, the run prints its estimate (tasks x trials x seconds
    per trial, measured here after the first run). Interrupted (even kill -9) or budget-limited
    runs continue where they stopped when rerun. 'ofa-deploy compile' then uses the database.

    \b
    Example:
      ofa-deploy tune --target x86-host --budget-minutes 60
      ofa-deploy tune --target cortex-a76 --rpc 192.168.1.10:9190:pi5 --resolutions 160,224
      ofa-deploy tune --target x86-host --pack
    """
    if database is not None:
        check_database_folder(database)  # a new or empty folder, or a database: tune writes only its own files
    if pack:
        _pack(ctx, target, database)
        return
    from ofa_deploy.compile.tune import TuneSettings, tune_target
    from ofa_deploy.errors import OfaDeployError
    from ofa_deploy.search_space import DEFAULT_SPACE
    from ofa_deploy.search_space.genes import resolution_indices

    from .options import parse_resolutions

    if warm_start < 0:
        raise OfaDeployError(f"--warm-start must be >= 0 (seed schedules per new task), got {warm_start}")
    res = parse_resolutions(resolutions)
    resolution_indices(space or DEFAULT_SPACE, res)  # validates against the space: one line if wrong
    report = tune_target(target, database_dir=database, resolutions=res, trials_per_task=trials,
                         budget_minutes=budget_minutes, rpc=rpc, space=space, chunk_tasks=chunk_tasks,
                         keys=tuple(k for k in workloads.replace(" ", "").split(",") if k) if workloads else None,
                         settings=TuneSettings(warm_start=warm_start, cache=cache),
                         progress=False if no_progress else None)
    rate = (f", {report.seconds_per_trial:.2f} s/trial + {report.chunk_overhead_s:.0f} s per chunk (measured)"
            if report.seconds_per_trial is not None else "")
    click.echo(f"{report.database_dir}: {report.tasks_total} distinct tasks ({report.extracted_tasks} in "
               f"{report.workloads} workloads); tuned now {report.tasks_tuned}, already tuned {report.tasks_skipped}; "
               f"{report.trials} trials in {report.seconds:.0f} s{rate}")
    if report.stopped_by_budget:
        click.echo(f"budget reached: {report.tasks_left} tasks left; rerun the same command to continue")
    if report.tasks_failed:
        click.echo(f"{report.tasks_failed} tasks failed (see the log above); rerun the same command to retry them",
                   err=True)
        sys.exit(1)


def _pack(ctx: click.Context, target: str, database: str | None) -> None:
    """``tune --pack``: gzip the target's database in place (its hash, and so its latency model, stay valid)."""
    from pathlib import Path

    from ofa_deploy.errors import OfaDeployError
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import pack_database
    from ofa_deploy.tuning_logs.folders import target_dir
    from ofa_deploy.tuning_logs.layout import DATABASE_FILES, PACKED

    other = [p for p in ("rpc", "trials", "cache", "budget_minutes", "resolutions", "space", "workloads", "chunk_tasks")
             if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT]
    if other:
        raise OfaDeployError(f"--{other[0].replace('_', '-')}: not used with --pack (nothing is tuned); allowed with "
                             "it: --target, --database")
    db = Path(database) if database else target_dir(get_target(target).name)
    before = sum((db / name).stat().st_size for name in DATABASE_FILES if (db / name).is_file())
    digest = pack_database(db)
    after = sum((db / (name + PACKED)).stat().st_size for name in DATABASE_FILES)
    click.echo(f"{db}: packed {before / 1e6:.1f} MB into {after / 1e6:.1f} MB "
               f"(database sha256 {digest[:8]}, unchanged)")
