"""Named deployment targets (``ofa_deploy.targets``): pure Python, no TVM import.

    from ofa_deploy.targets import get_target, list_targets
    spec = get_target("llvm -mcpu=cortex-a76")   # -> the "cortex-a76" entry (Raspberry Pi 5)
    spec.tvm_target                              # TVM 0.27 JSON-dict target

See ``builtin.py`` for the entries and where their peak figures come from.
"""

from .hostcpu import HostCpu, detect_host_cpu
from .parse import get_target, parse_tvm_string
from .registry import all_targets, list_targets, register_target
from .spec import DATA_LAYOUTS, KINDS, TargetSpec

__all__ = [
    "DATA_LAYOUTS", "HostCpu", "KINDS", "TargetSpec", "all_targets", "detect_host_cpu", "get_target",
    "list_targets", "parse_tvm_string", "register_target",
]
