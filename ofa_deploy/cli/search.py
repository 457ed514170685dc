"""``ofa-deploy search``, ``acc-dataset``, ``acc-predictor``: a subnet for a target, and the predictor it ranks by.

Plain click commands, registered on the ``ofa-deploy`` group in :mod:`ofa_deploy.cli`. User errors
are :class:`OfaDeployError` (one line, exit code 2); files are written atomically (the dataset is
append-only JSONL, fsynced per line).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import click

from ofa_deploy.errors import OfaDeployError

from .options import FOLDER_RULE, SEED, file_rule

log = logging.getLogger("ofa_deploy")

# One word of a classic TVM target string: -mcpu=cortex-a76, -mattr=+neon, -model=rpi5, -libs=cblas.
# Names have two or more letters, so short options of ours (-o, -h) are never swallowed.
_TVM_WORD = re.compile(r"^-[A-Za-z][A-Za-z0-9_.]+(=.*)?$")


class TargetWordsCommand(click.Command):
    """Lets ``--target llvm -mcpu=cortex-a76`` work unquoted.

    Click would parse ``-mcpu=...`` as a cluster of short options (its ``o`` would even be taken
    as ``-o``). Before click sees the arguments, the words of a TVM target string that follow
    ``--target VALUE`` are joined into that value.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--" or not (arg == "--target" or arg.startswith("--target=")):
                out.append(arg)
                i += 1
                continue
            if arg == "--target":
                if i + 1 >= len(args):
                    out.append(arg)
                    break
                words, i = [args[i + 1]], i + 2
            else:
                words, i = [arg.split("=", 1)[1]], i + 1
            while i < len(args) and _TVM_WORD.match(args[i]):
                words.append(args[i])
                i += 1
            out += ["--target", " ".join(words)]
        return super().parse_args(ctx, out)


class HumanNumber(click.ParamType):
    """A count like 300M, 2.5e8, 5M, 600k (MACs, parameters)."""

    name = "NUMBER"
    _SUFFIX = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        scale = self._SUFFIX.get(text[-1:], 1.0)
        try:
            return float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            self.fail(f"{value!r} is not a number (examples: 300M, 2.5e8, 600k)", param, ctx)


AUTO_VERIFY = 3  # candidates measured when this machine is the target and its estimate is unchecked (below)
LOOSE_RMS_PCT = 5.0  # an own model whose calibration residuals (rms), or whose blocks' own passes (median sd), scatter
#                     more than this is checked too: 2 sd of a 10 % margin


def unchecked_estimate(target: str, model: object) -> str | None:
    """What the latency estimate is when ``target`` is this machine and ``model`` is not its own profile.

    Then search can and should measure its picks here before promising a budget: the estimate is
    another device's tables (``foreign_device``; or adopted by ``profile --adapt``, which fits only a
    scale and offset here, not the ranking), a roofline with no timing of this CPU behind it, or this
    device's own profile whose end-to-end calibration, or whose blocks' own timing passes, scatter more
    than :data:`LOOSE_RMS_PCT` (a noisy machine: the znver3 VM's shipped model, calibration rms 3.2 % but
    passes scattering 6.3 %, put 16-48 % of four sets of unseen subnets outside +-10 %; znver5's model,
    4.4 % and 3.9 %, 8 %).
    None: the model is this device's own and tight, or the device is not here (a board: --verify-top --rpc).
    """
    from ofa_deploy.latency.measured import MeasuredLatencyModel
    from ofa_deploy.targets import get_target
    from ofa_deploy.targets.hostcpu import host_variant

    foreign = getattr(model, "foreign_device", None)
    if foreign:
        return f"another device's tables ({foreign})"
    if isinstance(model, MeasuredLatencyModel):
        adapted = model.meta.get("adapted_from")  # profile --adapt: the ranking is still the other device's
        if isinstance(adapted, dict):
            return f"another device's tables ({adapted.get('folder')}) calibrated here"
        from ofa_deploy.latency.speed_state import pass_scatter_pct, passes_of

        rms = model.calibration.rms_pct
        if rms > LOOSE_RMS_PCT:
            return f"this device's own profile, whose calibration scatters {rms:.1f} % rms (over {LOOSE_RMS_PCT:g} %)"
        if model.scaling is None:  # not timed against a speed probe (a board, a GPU, an older model): rms only
            return None
        scatter = pass_scatter_pct([passes_of(w) for w in model.meta.get("workloads", {}).values()], model.scaling)
        if scatter is not None and scatter > LOOSE_RMS_PCT:
            return (f"this device's own profile, on a machine whose timings of one block scatter {scatter:.1f} % "
                    f"between passes (over {LOOSE_RMS_PCT:g} %)")
        return None
    try:
        name = get_target(target).name
    except OfaDeployError:
        return None  # a VTA board: its analytic model is the only latency there is
    return "an analytic roofline" if host_variant(name) is not None else None


@click.command("search", cls=TargetWordsCommand)
@click.option("--target", required=True, metavar="TARGET",
              help="Registry name or TVM target string (unquoted words allowed), or vta-ultra96 | vta-zcu104 | vta-pynq.")
@click.option("--latency-ms", type=float, default=None, help="Latency budget (ms, batch 1).")
@click.option("--max-macs", type=HumanNumber(), default=None, help="MAC budget, e.g. 300M.")
@click.option("--max-params", type=HumanNumber(), default=None, help="Parameter budget, e.g. 5M.")
@click.option("--min-intensity", type=float, default=None,
              help="Minimum arithmetic intensity, ops/byte at the target's precision (fp32; int8 on VTA).")
@click.option("--objective", default="accuracy", show_default=True, metavar="accuracy|pareto",
              help="accuracy: OFA evolution for the most accurate subnet; pareto: NSGA-II front of "
                   "accuracy / latency / intensity.")
@click.option("--population", type=int, default=100, show_default=True)
@click.option("--generations", type=int, default=500, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--supernet", type=click.Path(), default=None,
              help="Supernet checkpoint: checked against the predictor (space, classes).")
@click.option("--acc-predictor", type=click.Path(), default=None,
              help="Accuracy predictor from 'ofa-deploy acc-predictor' (default: the installed one).")
@click.option("-o", "--output", default="search_out", show_default=True, type=click.Path(),
              help="Folder for subnet.json, front.csv and pareto.png. " + FOLDER_RULE)
@click.option("--verify-top", type=click.IntRange(min=0), default=None,
              help="Compile and measure the K best subnets on the device; keep the best that meets the budget. "
                   f"Default: {AUTO_VERIFY} when the latency model is another device's and this device is here "
                   "(the budget is then checked, not assumed), else 0.")
@click.option("--rpc", default=None, metavar="HOST:PORT[:KEY]",
              help="With --verify-top: measure on this TVM RPC device (tracker HOST:PORT:KEY or server HOST:PORT).")
def search(target: str, latency_ms: float | None, max_macs: float | None, max_params: float | None,
           min_intensity: float | None, objective: str, population: int, generations: int, seed: int,
           supernet: str | None, acc_predictor: str | None, output: str, verify_top: int | None,
           rpc: str | None) -> None:
    """Find the most accurate subnet for a target under latency / MACs / parameter budgets.

    Latency comes from tuning_logs/<target>/latency_model.json (measured tuned code, 'ofa-deploy
    profile') where one exists, else from a roofline (efficiencies learned on measured tables where
    'profile --estimate-from' made them, else named guesses); VTA boards use the VTA model. All are
    labelled 'estimated' with their basis. Without --supernet/--acc-predictor the shipped demo
    defaults are used. Writes subnet.json (OFA arch dict + results), front.csv and pareto.png.

    \b
    Example:
      ofa-deploy search --target x86-host --latency-ms 15 -o out/
      ofa-deploy search --target vta-ultra96 --latency-ms 25 --acc-predictor predictor.pt -o out/
      ofa-deploy search --target llvm -mcpu=cortex-a76 --latency-ms 20 --objective pareto
      ofa-deploy search --target cortex-a76 --latency-ms 20 --verify-top 5 --rpc 192.168.1.10:9190:pi5
    """
    from ofa_deploy.search.api import predictor_info, resolve_predictor, run_search
    from ofa_deploy.search.evaluator import Constraints
    from ofa_deploy.search.output import gops, output_folder, write_outputs
    from ofa_deploy.latency.choose import latency_model
    from ofa_deploy.search.verify import find_measure

    if objective not in ("accuracy", "pareto"):
        raise OfaDeployError(f"--objective: unknown {objective!r}; allowed: accuracy, pareto")
    constraints = Constraints(latency_ms, max_macs, max_params, min_intensity)
    for name, value in constraints.as_dict().items():
        if not value > 0:
            raise OfaDeployError(f"--{name.replace('_', '-')}: must be positive, got {value:g}")
    inputs = (supernet, acc_predictor)
    output_folder(output).check(inputs)  # before the search, not after it
    predictor = resolve_predictor(acc_predictor, supernet)
    measure = None
    if rpc is not None and not verify_top:
        raise OfaDeployError(f"--rpc {rpc}: the device measures the --verify-top K candidates; add --verify-top K")
    model = latency_model(target, predictor.space, predictor.meta.n_classes)
    unchecked = unchecked_estimate(target, model)
    if verify_top is None:
        verify_top = 0
        if unchecked and latency_ms is not None and (measure := find_measure(target)) is not None:
            verify_top = AUTO_VERIFY
            click.echo(f"search: the latency estimate comes from {unchecked}, so the top "
                       f"{AUTO_VERIFY} candidates are compiled and measured here (about a minute each; more rounds if "
                       f"the estimate is off) to check the {latency_ms:g} ms budget (--verify-top 0: don't)", err=True)
    if verify_top and measure is None:
        measure = find_measure(target, rpc)
        if measure is None:
            raise OfaDeployError(f"--verify-top: no device is reachable for target {target!r} "
                                 f"(compile+measure backend not available for it)")
    result = run_search(target, predictor, constraints=constraints, objective=objective, population=population,
                        generations=generations, seed=seed, progress=None, verify_k=verify_top, measure=measure,
                        latency=model)
    if result.verified:  # a measurement names its device (compile --measure compares with it there)
        from ofa_deploy.deploy import measuring_device

        result.measured_on = measuring_device(target, rpc)
    paths = write_outputs(result, output, target=target, predictor_info=predictor_info(predictor, acc_predictor),
                          inputs=inputs)
    row = result.row(result.best, 0)
    speed = gops(row)
    click.echo(f"{paths['subnet']}: {row['id']}  predicted acc {100 * row['predicted_accuracy']:.2f}%  "
               f"{row['latency_ms']:.3f} ms ({row['latency_source']}) on {result.target}  "
               f"{row['macs'] / 1e6:.1f} MMACs  {row['intensity']:.2f} ops/B ({row['intensity_dtype']})  "
               + (f"{speed:.2f} GOP/s" if speed is not None else "- emulated: not a device speed"))
    if row.get("latency_basis"):
        click.echo(f"latency basis: {row['latency_basis']}")
    click.echo(f"{paths['front']}: {len(result.front)} Pareto subnets; plot {paths['plot']}")
    click.echo(f"search: {result.evaluations:,} evaluations in {result.seconds:.2f} s ({result.objective})")
    m = predictor.meta.metrics
    if "acc_max" in m and row["predicted_accuracy"] > m["acc_max"]:
        error = f"; held-out RMSE {100 * m['rmse']:.1f} points" if "rmse" in m else ""
        click.echo(f"warning: predicted accuracy {100 * row['predicted_accuracy']:.2f}% is above every subnet the "
                   f"predictor learnt from (best {100 * m['acc_max']:.1f}%{error}): an extrapolation, likely "
                   f"optimistic; evaluate the subnet on your validation data before relying on it", err=True)


@click.command("acc-dataset")
@click.option("--supernet", "checkpoint", required=True, type=click.Path(),
              help="Supernet checkpoint (official once-for-all format).")
@click.option("--data", "data_root", required=True, type=click.Path(),
              help="ImageFolder dataset root with train/ and val/.")
@click.option("-n", "--n-subnets", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Subnet sampling seed.")
@click.option("--val-limit", type=click.IntRange(min=1), default=None, help="Validation images per subnet (default: all).")
@click.option("--calib-images", type=click.IntRange(min=1), default=256, show_default=True,
              help="Training images for BN recalibration.")
@click.option("--space", default=None, metavar="NAME", help="Search space (default: the checkpoint's, else w1.0).")
@click.option("-o", "--output", default="acc_dataset.jsonl", show_default=True, type=click.Path(),
              help="Dataset file (JSON lines), extended when rerun. " + file_rule("an accuracy dataset"))
def acc_dataset(checkpoint: str, data_root: str, n_subnets: int, seed: int, val_limit: int | None,
                calib_images: int, space: str | None, output: str) -> None:
    """Measure the accuracy of sampled subnets (BN recalibrated) for predictor training.

    Resumable: results are appended to --output one line per subnet; rerun the same command after
    an interruption and it continues where it stopped (a larger -n extends the set).

    \b
    Example:
      ofa-deploy acc-dataset --supernet ofa.pth --data data/demo -n 500 -o acc.jsonl
    """
    from ofa_deploy.outputs import check_output_file, usable_path
    from ofa_deploy.search.dataset import AccDatasetConfig, build_acc_dataset, read_records
    from ofa_deploy.search_space import DEFAULT_SPACE, load_supernet
    from ofa_deploy.search_space.checkpoint import read_state_dict

    if not usable_path(data_root, "--data").is_dir():
        raise OfaDeployError(f"--data {data_root}: dataset folder not found")
    check_output_file(output, "an accuracy dataset", read_records, inputs=(checkpoint,))
    space = space or read_state_dict(checkpoint)[1].get("space") or DEFAULT_SPACE
    net = load_supernet(checkpoint, space)
    cfg = AccDatasetConfig(n_subnets=n_subnets, seed=seed, val_limit=val_limit, calib_images=calib_images)
    records = build_acc_dataset(net, data_root, output, cfg)
    accs = [r["acc"] for r in records]
    click.echo(f"{output}: {len(records)} subnets, top-1 {100 * min(accs):.1f}..{100 * max(accs):.1f}% "
               f"(mean {100 * sum(accs) / len(accs):.1f}%)")


@click.command("acc-predictor")
@click.argument("dataset", type=click.Path())
@click.option("-o", "--output", default="acc_predictor.pt", show_default=True, type=click.Path(),
              help="Predictor file to write. " + file_rule("an accuracy predictor"))
@click.option("--epochs", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--holdout", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Fraction of subnets held out for RMSE / Kendall tau.")
@click.option("--seed", type=SEED, default=0, show_default=True)
def acc_predictor(dataset: str, output: str, epochs: int, holdout: float, seed: int) -> None:
    """Train OFA's accuracy predictor (3 x 400 MLP) on an acc-dataset file.

    Reports RMSE and Kendall tau on held-out subnets and saves weights + metadata atomically.

    \b
    Example:
      ofa-deploy acc-predictor acc.jsonl -o predictor.pt
    """
    from ofa_deploy.outputs import check_output_file
    from ofa_deploy.search.dataset import load_acc_dataset
    from ofa_deploy.search.predictor import TrainConfig, load_predictor, save_predictor, train_predictor

    header, genes, accs = load_acc_dataset(dataset)
    check_output_file(output, "an accuracy predictor", load_predictor, inputs=(dataset,))
    predictor = train_predictor(genes, accs, space=header["space"], n_classes=header["n_classes"],
                                dataset=header["dataset"], config=TrainConfig(epochs=epochs, holdout=holdout, seed=seed))
    save_predictor(predictor, output)
    m = predictor.meta.metrics
    click.echo(f"{output}: held-out RMSE {100 * m['rmse']:.2f} points, Kendall tau {m['kendall_tau']:.3f} "
               f"({m['n_train']} train / {m['n_test']} held-out subnets, mean acc {100 * predictor.meta.mean_acc:.1f}%, "
               f"range {100 * m['acc_min']:.1f}..{100 * m['acc_max']:.1f}%)")
