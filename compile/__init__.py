"""ONNX -> TVM (Relax) -> deployable ``.so``: the only part of ofa-deploy that uses TVM.

TVM itself is imported only in a worker subprocess (isolate.py runs :mod:`.worker`), so importing
this package is cheap and a TVM crash cannot take the caller down. Each job is a pair of modules
with one name: the parent side here writes the request and reads the reply, the worker side in
``worker/`` does the TVM part: ``build.py`` (build, run, time), ``tune.py`` (MetaSchedule),
``profile.py`` (build and time many models), ``rpc.py`` (run and time on a remote device)::

    from ofa_deploy.compile import build_module, run_local, time_local, run_emulated_aarch64
    from ofa_deploy.targets import get_target

    info = build_module("net.onnx", get_target("cortex-a76"), "net_a76.so",
                        input_name="input", input_shape=(1, 3, 224, 224))
    y = run_emulated_aarch64(info.so_path, x)          # correctness on x86 via qemu
"""

from .aarch64_runtime import build_deploy_app_aarch64, build_rpc_server_aarch64, fetch_aarch64_runtime
from .binfmt import FatbinEntry, elf_machine, embedded_fatbins
from .build import build_module, run_local, time_interleaved, time_local, turn_ratio, validate_target_specs
from .emulate import emulated_rpc_server, run_emulated_aarch64
from .rpc import RpcSpec, check_reachable, run_rpc, time_rpc
from .tune import TuneReport, TuneSettings, tune_target
from .types import BuildInfo, LatencyMeasurement

__all__ = [
    "BuildInfo", "FatbinEntry", "LatencyMeasurement", "build_deploy_app_aarch64", "build_module",
    "elf_machine", "embedded_fatbins", "fetch_aarch64_runtime", "run_emulated_aarch64",
    "run_local", "time_interleaved", "time_local", "turn_ratio", "validate_target_specs",
    "RpcSpec", "build_rpc_server_aarch64", "check_reachable", "emulated_rpc_server", "run_rpc", "time_rpc",
    "TuneReport", "TuneSettings", "tune_target",
]
