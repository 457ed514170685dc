"""Embed nvcc-compiled CUDA kernels in the exported ``.so`` (worker-only: imports TVM).

See library_blob.py for why: without a GPU driver, TVM 0.27 keeps CUDA kernels as source to be
compiled at load time by Python. ``make_cuda_packer`` returns an ``fpack_imports`` hook for
``export_library`` that compiles them here, for the target's ``sm_XX``, into a fatbin holding
SASS for that arch plus PTX (so newer GPUs can JIT it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import tvm
import tvm_ffi
from tvm.support import nvcc

from ofa_deploy.compile.library_blob import blob_to_asm, parse_blob, recompile_cuda_payload, serialize_blob

log = logging.getLogger(__name__)


def _cuda_sources(mod: tvm.runtime.Module) -> list[bytes]:
    found, stack, seen = [], [mod], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if m.kind == "cuda":
            found.append(m.inspect_source("cuda").encode())
        stack.extend(m.imports)
    return found


def compile_cuda_fatbin(source: bytes, target: tvm.target.Target) -> bytes:
    """nvcc ``source`` -> fatbin with SASS for ``target.arch`` and PTX for forward compat."""
    sm = str(target.arch).removeprefix("sm_")
    arch = ["-gencode", f"arch=compute_{sm},code=sm_{sm}", "-gencode", f"arch=compute_{sm},code=compute_{sm}"]
    with target:  # nvcc.compile_cuda reads Target.current() for the compute version
        binary = nvcc.compile_cuda(source.decode(), target_format="fatbin", arch=arch, compiler="nvcc")
    log.info("nvcc: %d bytes of CUDA -> %d byte fatbin (sm_%s + PTX)", len(source), len(binary), sm)
    return bytes(binary)


def make_cuda_packer(target: tvm.target.Target) -> Callable[..., str]:
    """An ``export_library(fpack_imports=...)`` hook that embeds fatbins instead of CUDA source."""

    def pack(mod: tvm.runtime.Module, is_system_lib: bool, symbol_prefix: str, workspace_dir: str) -> str:
        if is_system_lib or symbol_prefix:
            raise NotImplementedError("system-lib export is not supported for CUDA targets")
        blob = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        lib = parse_blob(blob)
        if not any(kind == "cuda" for kind, _ in lib.entries):
            raise RuntimeError("CUDA target but no CUDA module to pack")
        sources = _cuda_sources(mod)
        lib.entries = [(kind, recompile_cuda_payload(p, sources, lambda s: compile_cuda_fatbin(s, target))
                        if kind == "cuda" and p is not None else p) for kind, p in lib.entries]
        blob_path = os.path.join(workspace_dir, "library_bin.bin")
        with open(blob_path, "wb") as f:
            f.write(serialize_blob(lib))
        asm_path = os.path.join(workspace_dir, "devc.S")
        with open(asm_path, "w") as f:
            f.write(blob_to_asm(blob_path))
        return asm_path

    return pack
