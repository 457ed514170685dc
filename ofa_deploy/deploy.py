"""subnet.json -> verified deployable module: the second half of the user's workflow.

Data flows one way: SubnetConfig -> static torch module -> ONNX (verified with ONNX Runtime) ->
TVM Relax -> [target's tuning database] -> build -> ``.so`` (cross-compiled where needed) ->
numeric verification on the target (or its emulator) -> ``metadata.json``.

Everything is written into a staging folder and moved into place at the end (ofa_deploy.outputs:
the output rule), so a crash or a failed verification never leaves an output folder that looks
complete, and a folder of someone else's files is refused before any work.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .atomic import write_json
from .data import MEAN, STD
from .device_check import REFERENCE_FILE, VERIFY_RTOL, verification
from .errors import OfaDeployError
from .export import INPUT_NAME, export_onnx, seeded_input
from .outputs import OutputFolder
from .search_space import SubnetConfig, load_supernet, random_subnet
from .search_space.costs import count_costs
from .shipped import default_supernet
from .tuning_logs.database import default_database, transfer_databases

log = logging.getLogger(__name__)

COMPILE_FILES = ("metadata.json", "subnet.json", "subnet.onnx", "subnet.so", REFERENCE_FILE)


@dataclass(frozen=True)
class CompileOptions:
    target: str  # registry name, TVM tag or classic TVM string
    out_dir: str
    checkpoint: str | None = None  # supernet in the official format; None: the shipped default supernet
    random_weights: bool = False  # latency work only: seeded random weights
    verify: bool = True  # compare the compiled module with PyTorch on the target or its emulator
    measure: bool = False  # time on the target where one is reachable (here: the x86 host, or rpc)
    rpc: str | None = None  # HOST:PORT:KEY (tracker + device key) or HOST:PORT (server): verify and measure there
    rpc_emulated: bool = False  # the RPC server runs under qemu: its latency is labelled "emulated"
    database_dir: str | None = None  # default: tuning_logs/<target>/ when it holds a database
    config_path: str | None = None  # the subnet.json cfg was read from: the output never replaces it
    batch: int = 1
    seed: int = 0
    cuda_graph: bool = True  # CUDA targets: the network replays as one captured CUDA graph (build_module)


def _checkpoint(opts: CompileOptions) -> str | None:
    """The weights to compile: the given checkpoint, else the shipped supernet; None = random weights."""
    if opts.random_weights:
        if opts.checkpoint is not None:
            raise OfaDeployError("compile: give either --supernet or --random-weights, not both")
        return None
    if opts.checkpoint is not None:
        return opts.checkpoint
    shipped = default_supernet()
    if shipped is None:
        raise OfaDeployError("compile: --supernet CHECKPOINT is required (no default supernet is installed; "
                             "or --random-weights for latency work)")
    return str(shipped)


def _model(cfg: SubnetConfig, opts: CompileOptions) -> tuple[torch.nn.Module, list[str] | None]:
    checkpoint = _checkpoint(opts)
    if checkpoint is None:
        return random_subnet(cfg, opts.seed), None
    supernet = load_supernet(checkpoint, cfg.space)
    return supernet.extract(cfg), supernet.classes


def verify_module(so_path: Path, spec: Any, x: np.ndarray, expected: np.ndarray, *,
                  rpc: Any = None, rpc_emulated: bool = False) -> dict[str, Any]:
    """Run the module on the remote device (``rpc``: an RpcSpec) or where it can run here, and
    compare with PyTorch's output."""
    from .compile import run_emulated_aarch64, run_local, run_rpc

    if rpc is not None:
        device = "cuda" if spec.kind == "cuda" else "cpu"
        got, how = run_rpc(so_path, x, rpc, device=device), rpc.describe() + (" (emulated)" if rpc_emulated else "")
    elif spec.kind == "cuda":
        if not torch.cuda.is_available():
            return {"status": "compiled-only", "reason": "no CUDA GPU here: the generated CUDA was compiled with nvcc, not run"}
        got, how = run_local(so_path, x), "cuda"
    elif spec.arch == "aarch64":
        got, how = run_emulated_aarch64(so_path, x), "qemu-aarch64 (emulated)"
    elif spec.arch != os.uname().machine:
        return {"status": "compiled-only", "reason": f"no {spec.arch} TVM runtime here to emulate with: compiled, not run"}
    else:
        got, how = run_local(so_path, x), "local"
    return verification(got, expected, how)


def compile_subnet(cfg: SubnetConfig, opts: CompileOptions) -> Path:
    """Build, verify and (optionally) time ``cfg`` for ``opts.target``; return the output directory."""
    from .compile import build_module, time_local, time_rpc
    from .compile.toolchain import linker_for
    from .targets import get_target

    spec = get_target(opts.target)
    build_spec = spec.host_spec()  # VTA: TVM 0.27 has no VTA backend, so the whole net for the board's ARM cores
    linker_for(build_spec.cross_compiler)  # a missing cross compiler fails now, naming its package
    rpc = _rpc_spec(opts)  # checked before minutes of building
    database = Path(opts.database_dir) if opts.database_dir else default_database(spec.name)
    transfer = transfer_databases(spec.name)
    folder = OutputFolder(opts.out_dir, "compile", COMPILE_FILES)
    inputs = (opts.config_path, opts.checkpoint)
    folder.check(inputs)  # a folder of someone else's files is refused before minutes of building
    model, classes = _model(cfg, opts)
    with folder.staged(inputs) as work:
        shape = (opts.batch, 3, cfg.image_size, cfg.image_size)
        export = export_onnx(model, cfg.image_size, work / "subnet.onnx", batch=opts.batch, seed=opts.seed)
        info = build_module(work / "subnet.onnx", build_spec, work / "subnet.so", input_name=INPUT_NAME, input_shape=shape,
                            database_dir=database, transfer_databases=transfer, cuda_graph=opts.cuda_graph)
        _warn_if_untuned(info, spec.name, on_board=not is_local_target(spec) and spec.kind == "cpu")
        x = seeded_input(shape, opts.seed)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.savez(work / REFERENCE_FILE, input=x, logits=expected)  # for 'ofa-deploy check' on the device
        verified = (verify_module(work / "subnet.so", build_spec, x, expected, rpc=rpc, rpc_emulated=opts.rpc_emulated)
                    if opts.verify else {"status": "skipped"})
        if verified["status"] == "failed":
            raise OfaDeployError(f"verification failed on {verified['ran_on']}: max relative error "
                                 f"{verified['max_rel_err']:.2e} > {VERIFY_RTOL:g}")
        latency = None
        if opts.measure:
            if rpc is not None:
                latency = time_rpc(work / "subnet.so", x, rpc, emulated=opts.rpc_emulated,
                                   device="cuda" if build_spec.kind == "cuda" else "cpu").to_dict()
            elif is_local_target(spec):
                latency = time_local(work / "subnet.so", x).to_dict()
            else:
                log.warning("--measure: no %s device reachable from here; no latency recorded "
                            "(emulation is never a speed)", spec.name)
        measured_on = measuring_device(spec.name, rpc) if latency else None
        searched_ms = _searched_here(opts.config_path, measured_on)
        if latency and searched_ms is not None:
            log.info("search measured %.2f ms for this subnet on this device; now %.2f ms (%+.1f %%)", searched_ms,
                     latency["median_ms"], 100 * (latency["median_ms"] / searched_ms - 1))
        prediction = (_check_prediction(cfg, spec, model.n_classes, latency, measured_on, searched_ms)
                      if latency else None)
        costs = count_costs(cfg, n_classes=model.n_classes)
        metadata = {
            "ofa_deploy_version": __version__,
            "subnet": cfg.to_dict(), "subnet_id": cfg.id,
            "target": spec.to_dict(), "tvm_target": info.tvm_target, "tvm_version": info.tvm_version,
            "tuning_database": {"path": str(database) if database else None, "sha256": info.database_hash,
                                "tuned_functions": info.tuned_funcs, "total_functions": info.total_funcs,
                                "schedule_sources": info.schedule_sources,
                                "transferred_from": list(info.transferred_from)},
            "cuda_graph": info.cuda_graph,
            "input": {"name": INPUT_NAME, "shape": list(shape), "layout": "NCHW", "dtype": "float32"},
            "output": {"name": "logits", "shape": [opts.batch, model.n_classes], "dtype": "float32", "classes": classes},
            "preprocessing": {"resize": [cfg.image_size, cfg.image_size], "color": "RGB", "scale": 1 / 255,
                              "mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist()},
            "macs": costs.macs, "params": costs.params,
            "arithmetic_intensity": {"fp32": costs.intensity(4), "int8": costs.intensity(1)},
            "latency_ms": latency["median_ms"] if latency else None,
            "latency": latency,  # carries its source: measured | emulated | estimated
            "measured_on": measured_on,  # the device's identity (a board's by its RPC key, as tune/profile --rpc)
            "search_measured_ms": searched_ms,  # search's own measurement of this subnet on this device, if any
            "latency_prediction": prediction,  # what search's latency model predicted for this subnet
            "verification": verified,
            "reference": {"file": REFERENCE_FILE, "seed": opts.seed,  # input + PyTorch's logits: what check compares
                          "note": "ofa-deploy check FOLDER runs them through subnet.so on the device"},
            "onnx": {"file": "subnet.onnx", "sha256": info.onnx_sha256, "max_abs_err_vs_torch": export.max_abs_err},
            "build_seconds": info.build_seconds,
            "weights": _checkpoint(opts) or "random (latency work only)",
        }
        if spec.kind == "vta":  # what the VTA model would offload, next to the ARM-only module built here
            from .latency.tables import layers_with_acts
            from .latency.vta import offload_report

            metadata["vta"] = offload_report(layers_with_acts(cfg, model.n_classes), spec.name)
        write_json(work / "metadata.json", metadata)
        cfg.to_json(work / "subnet.json")
    log.info("wrote %s (verification: %s)", folder, verified["status"])
    return Path(opts.out_dir)


PREDICTION_WARN = 0.10  # compile --measure warns when the latency model was further off than this


def measuring_device(target: str, rpc: Any = None) -> dict[str, Any] | None:
    """The identity of the device a latency of ``target`` is measured on (``rpc``: an RpcSpec or HOST:PORT[:KEY]).

    This CPU (or GPU) when the target runs here; over RPC the board ``tune``/``profile --rpc`` record for
    its key; None for a bare server address, which names no board.
    """
    from .tuning_logs.folders import measuring_identity

    if rpc is None:
        return measuring_identity(target).to_json()
    if isinstance(rpc, str):
        from .compile import RpcSpec

        rpc = RpcSpec.parse(rpc)
    return measuring_identity(target, rpc.key).to_json() if rpc.is_tracker else None


def _searched_here(config_path: str | None, measured_on: dict[str, Any] | None) -> float | None:
    """The latency ``search`` measured for this subnet on this same device (its subnet.json), else None."""
    if config_path is None or measured_on is None:
        return None
    from .tuning_logs.identity import DeviceIdentity

    try:
        record = json.loads(Path(config_path).read_text())
        if record.get("latency_source") != "measured" or not isinstance(record.get("measured_on"), dict):
            return None
        searched_on = DeviceIdentity.from_json(record["measured_on"], config_path)
        same = searched_on.same_device(DeviceIdentity.from_json(measured_on, "this measurement"))
        return float(record["latency_ms"]) if same else None
    except (OSError, ValueError, KeyError, TypeError, OfaDeployError):
        return None


def _check_prediction(cfg: SubnetConfig, spec: Any, n_classes: int, latency: dict[str, Any],
                      measured_on: dict[str, Any] | None = None,
                      searched_ms: float | None = None) -> dict[str, Any] | None:
    """The latency model's prediction for ``cfg`` beside the measured latency; a warning above 10 %.

    Search picked the subnet on that prediction, so a large error means the budget may not hold on
    this device: the warning names the model, the device it describes and the command that fixes it.
    A model whose timings are referred to one speed state of the machine (``speed_scaling``) is
    compared at the speed probe's reading of this timing: the prediction moves, the measurement
    stays as measured (another CPU's model has none: ``latency.measured.load_nearest_model``).
    Timings are compared only with a model timed the same way: a device's latency with a model of
    measured code (or a roofline), an emulated one (qemu over ``--rpc-emulated``) only with a model
    profiled under the emulator, as plumbing: recorded with ``source: emulated``, never warned about.
    ``measured_on`` (a board's identity) is checked against the device the model describes.
    ``searched_ms``: search measured this subnet on this device and answered on that measurement, so
    a model far off did not decide the budget (the warning says so instead of that it may not hold).
    """
    source = latency.get("source")
    if source not in ("measured", "emulated"):
        return None
    from .latency.choose import latency_model
    from .search_space.genes import configs_to_genes

    try:
        model = latency_model(spec, cfg.space, n_classes)
        predicted = float(model.predict(configs_to_genes([cfg]))[0])
    except (OfaDeployError, ValueError, IndexError) as exc:
        log.info("no latency prediction to compare with (%s)", exc)
        return None
    if getattr(model, "timing_source", "measured") != source:
        log.info("no latency prediction to compare with: this latency is %s, the model's tables are not", source)
        return None
    if not np.isfinite(predicted):  # e.g. a resolution the measured model does not cover
        return None
    measured = float(latency["median_ms"])
    scaling, probe_us = getattr(model, "scaling", None), latency.get("probe_us")
    at_reference = predicted
    if scaling is not None and probe_us:  # the model's latencies are of one speed state: compare in this one
        predicted = scaling.at(at_reference, probe_us)
        log.info("latency model: %.2f ms at its reference speed state, %.2f ms at this timing's probe reading "
                 "(%.2f us vs %.2f us, k %.2f)", at_reference, predicted, probe_us, scaling.reference_us,
                 scaling.elasticity)
    error = (predicted - measured) / measured
    basis = getattr(model, "basis", "")
    model_device = getattr(model, "meta", {}).get("device")
    other_board = (measured_on is not None and measured_on.get("kind") == "rpc" and isinstance(model_device, dict)
                   and model_device.get("rpc_key") != measured_on.get("rpc_key"))
    if other_board:
        log.warning("the latency model describes board '%s', this latency was taken on board '%s': the comparison "
                    "is between two devices", model_device.get("rpc_key") or model_device.get("mcpu"),
                    measured_on["rpc_key"])
    if source == "measured" and abs(error) > PREDICTION_WARN:
        board = f" --rpc HOST:PORT:{measured_on['rpc_key']}" if measured_on and measured_on.get("rpc_key") else ""
        # Slower than predicted breaks a budget; faster only means search may have passed over better subnets.
        if searched_ms is not None:
            what = (f"search measured this subnet here ({searched_ms:.2f} ms) and answered on that, not on the "
                    "model; the model is what the next search starts from")
        elif error < 0:
            what = "search's budget may not hold on this device"
        else:
            what = "the model over-estimates here: the budget holds, but search may have passed over faster subnets"
        log.warning("measured %.2f ms, the latency model predicted %.2f ms (%+.0f %%): %s; %s; fix: "
                    "'ofa-deploy profile --target %s%s' (or '--adapt' for a quick one)",
                    measured, predicted, 100 * error, basis, what, spec.name, board)
    return {"predicted_ms": round(predicted, 3), "measured_ms": round(measured, 3), "error_pct": round(100 * error, 1),
            "basis": basis, "source": source, "same_device": not other_board,
            # the model's own figure (its reference speed state) when predicted_ms was moved to this timing's
            "predicted_at_reference_ms": round(at_reference, 3) if predicted != at_reference else None}


UNTUNED_WARN_SHARE = 0.5  # compile warns when this device's database scheduled less than half the functions


def _warn_if_untuned(info: Any, target_name: str, on_board: bool = False) -> None:
    """Say so when most of the module is not this device's tuned code (it is then slower than it could be).

    ``on_board``: the target's CPU is a board, tuned over RPC (the fix names ``--rpc``).
    """
    if info.untuned_share <= UNTUNED_WARN_SHARE:
        return
    borrowed = {k: v for k, v in info.schedule_sources.items() if k != "tuned" and v}
    log.warning("%s: only %d of %d fused functions are tuned for this device (%s); the module works but is "
                "slower than tuned code: 'ofa-deploy tune --target %s%s' tunes this device", target_name,
                info.tuned_funcs, info.total_funcs, ", ".join(f"{n} {k}" for k, n in borrowed.items()), target_name,
                " --rpc HOST:PORT:KEY" if on_board else "")


def _rpc_spec(opts: CompileOptions) -> Any:
    """The parsed ``--rpc`` (None without), its device already answering; bad input -> OfaDeployError."""
    if opts.rpc is None:
        if opts.rpc_emulated:
            raise OfaDeployError("--rpc-emulated: marks an --rpc server as running under qemu; give --rpc too")
        return None
    from .compile import RpcSpec, check_reachable

    spec = RpcSpec.parse(opts.rpc)
    if not opts.measure:
        raise OfaDeployError(f"--rpc {spec}: the remote device is where --measure times the module; add --measure")
    check_reachable(spec)
    return spec


def read_metadata(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "metadata.json").read_text())


def is_local_target(spec: Any) -> bool:
    """True when modules for ``spec`` run on this machine (so their latency can be measured here)."""
    from .compile.profile import runs_here

    return runs_here(spec)


def make_measure(target: str, rpc: str | None = None) -> Callable[[SubnetConfig], tuple[float, str]] | None:
    """``measure(cfg) -> (ms, "measured")`` for ``search --verify-top``; None without a reachable device.

    Latency does not depend on weight values, so candidates are compiled with seeded random weights
    (with the target's tuning database, as ``compile`` would) and timed with TVM's time_evaluator,
    here or on the ``rpc`` device (HOST:PORT:KEY tracker or HOST:PORT server; checked now, before
    minutes of search).
    """
    from .targets import get_target

    spec = get_target(target)
    if spec.analytic_only or (rpc is None and not is_local_target(spec)):
        return None
    if rpc is not None:
        from .compile import RpcSpec, check_reachable

        check_reachable(RpcSpec.parse(rpc))  # a bad or dead --rpc fails now, not after the search

    def measure(cfg: SubnetConfig) -> tuple[float, str]:
        with tempfile.TemporaryDirectory(prefix="ofa_deploy_measure_") as tmp:
            out = compile_subnet(cfg, CompileOptions(target=target, out_dir=f"{tmp}/m", random_weights=True,
                                                     verify=False, measure=True, rpc=rpc))
            latency = read_metadata(out)["latency"]
        return latency["median_ms"], latency["source"]

    return measure
