"""Run or time a compiled ``.so`` on a remote device over TVM RPC (worker-only: imports TVM).

The client side of TVM RPC: connect (directly to a server, or through a tracker by device key),
upload the module into the session's work directory, ``load_module`` it there, drive a Relax VM
on the remote device and bring the output (or the time_evaluator samples) back. The module runs
on the remote runtime only; nothing of it is loaded here.

Over RPC the VM is driven with ``set_input`` + ``invoke_stateful`` (arguments cross the wire as
plain DLTensors, which any remote runtime accepts) and timed with
``time_evaluator("invoke_stateful")``, which runs the timing loop on the device itself, so the
samples contain no network round trips.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import numpy as np
import tvm
from tvm import relax, rpc

from ofa_deploy.compile.binfmt import elf_machine

log = logging.getLogger(__name__)


def _connect(request: dict[str, Any]) -> rpc.RPCSession:
    host, port, key = request["host"], int(request["port"]), request.get("key")
    session_timeout = int(request.get("session_timeout") or 0)
    if key:
        tracker = rpc.connect_tracker(host, port)
        log.info("requesting a '%s' device from the tracker at %s:%d", key, host, port)
        return tracker.request(key, priority=1, session_timeout=session_timeout,
                               max_retry=int(request.get("max_retry", 2)))
    log.info("connecting to the RPC server at %s:%d", host, port)
    return rpc.connect(host, port, session_timeout=session_timeout)


def _remote_vm(request: dict[str, Any]) -> tuple[rpc.RPCSession, relax.VirtualMachine, Any, Any]:
    """(session, VM, device, input tensor on the device) with ``main``'s input set."""
    remote = _connect(request)
    dev = remote.cuda(0) if request.get("device") == "cuda" else remote.cpu(0)
    if not dev.exist:
        raise RuntimeError(f"the remote has no {request.get('device', 'cpu')} device")
    name = f"ofa_{uuid.uuid4().hex[:8]}_{os.path.basename(request['so_path'])}"
    remote.upload(request["so_path"], name)
    try:
        lib = remote.load_module(name)
    except Exception as exc:  # noqa: BLE001 - a wrong-architecture module reads as "file not found" there
        machine = elf_machine(request["so_path"]) or "not an ELF"
        raise RuntimeError(f"the remote could not load the module ({machine} code: is it built for this device?): "
                           f"{str(exc).strip().splitlines()[-1]}") from None
    vm = relax.VirtualMachine(lib, dev)
    x = tvm.runtime.tensor(np.load(request["input_path"]), dev)
    vm.set_input("main", x)
    return remote, vm, dev, x


def _first_output(vm: relax.VirtualMachine) -> np.ndarray:
    out = vm.get_outputs("main")
    while isinstance(out, (tuple, list, tvm.ir.Array)) and len(out) > 0:
        if len(out) > 1:
            log.warning("model returned %d outputs; using the first", len(out))
        out = out[0]
    return out.numpy()


def run(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``rpc_run``: input .npy -> output .npy, computed on the remote device."""
    _, vm, _, _ = _remote_vm(request)
    vm.invoke_stateful("main")
    np.save(request["output_path"], _first_output(vm))
    return {}


def time(request: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``rpc_time``: time_evaluator on the remote device; per-sample milliseconds."""
    _, vm, dev, _ = _remote_vm(request)
    vm.invoke_stateful("main")  # first call allocates the memory pools: not a sample
    evaluator = vm.time_evaluator("invoke_stateful", dev, number=request["number"], repeat=request["repeat"])
    result = evaluator("main")
    return {"samples_ms": [float(s) * 1e3 for s in result.results], "number": request["number"]}
