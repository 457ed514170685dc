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


def connect(request: dict[str, Any]) -> rpc.RPCSession:
    """A session on the remote device: through the tracker by ``key``, or straight to the server.

    ``session_timeout`` (seconds, 0: none) is enforced by the server too, so a hung model frees
    the board; a caller timing many modules in one session sizes it for all of them.
    """
    host, port, key = request["host"], int(request["port"]), request.get("key")
    session_timeout = int(request.get("session_timeout") or 0)
    if key:
        tracker = rpc.connect_tracker(host, port)
        log.info("requesting a '%s' device from the tracker at %s:%d", key, host, port)
        return tracker.request(key, priority=1, session_timeout=session_timeout,
                               max_retry=int(request.get("max_retry", 2)))
    log.info("connecting to the RPC server at %s:%d", host, port)
    return rpc.connect(host, port, session_timeout=session_timeout)


def load_remote(remote: rpc.RPCSession, so_path: str, x: np.ndarray,
                device: str) -> tuple[relax.VirtualMachine, Any, Any]:
    """(VM, device, input tensor on the device) of ``so_path`` uploaded into ``remote``'s session, with
    ``main``'s input ``x`` set (the caller keeps the tensor as long as the VM).

    One session can load many modules (``ofa-deploy profile`` times a whole chunk in one): each
    upload gets a unique name in the session's work directory, which the server removes with it.
    """
    dev = remote.cuda(0) if device == "cuda" else remote.cpu(0)
    if not dev.exist:
        raise RuntimeError(f"the remote has no {device} device")
    name = f"ofa_{uuid.uuid4().hex[:8]}_{os.path.basename(so_path)}"
    remote.upload(so_path, name)
    try:
        lib = remote.load_module(name)
    except Exception as exc:  # noqa: BLE001 - a wrong-architecture module reads as "file not found" there
        machine = elf_machine(so_path) or "not an ELF"
        raise RuntimeError(f"the remote could not load the module ({machine} code: is it built for this device?): "
                           f"{str(exc).strip().splitlines()[-1]}") from None
    vm = relax.VirtualMachine(lib, dev)
    tensor = tvm.runtime.tensor(x, dev)
    vm.set_input("main", tensor)
    return vm, dev, tensor


def remote_samples(vm: relax.VirtualMachine, dev: Any, number: int, repeat: int) -> list[float]:
    """Seconds per sample of ``main`` (each the mean of ``number`` runs), timed on the device itself.

    ``time_evaluator("invoke_stateful")`` runs the loop on the remote, so no network round trip
    is in a sample.
    """
    evaluator = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)
    return [float(s) for s in evaluator("main").results]


def _remote_vm(request: dict[str, Any]) -> tuple[rpc.RPCSession, relax.VirtualMachine, Any, Any]:
    """(session, VM, device, input tensor) of the request's module with its input set; the session and
    the tensor must outlive the VM."""
    remote = connect(request)
    return (remote, *load_remote(remote, request["so_path"], np.load(request["input_path"]),
                                 request.get("device", "cpu")))


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
    samples = remote_samples(vm, dev, int(request["number"]), int(request["repeat"]))
    return {"samples_ms": [s * 1e3 for s in samples], "number": request["number"]}
