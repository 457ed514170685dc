"""A second proxy for ARM code quality without a board: LLVM's machine-code analyser on the hot loops.

#17 asks whether schedules carried from another CPU (or the rule schedules every ARM build gets
today) are good aarch64 code, and no ARM board is here. The first proxy (``isa_transfer.py``)
times this x86 CPU restricted to 128-bit vectors. This one reads the emitted aarch64 code itself:

1. Build a subnet for a target with each schedule source: ``rule`` (no database anywhere: what
   ``compile --target cortex-a76`` emits today) and ``transferred`` (every function takes the
   schedule this CPU's x86 database has for it: what a build borrowing x86 schedules would emit).
2. Disassemble the ``.so`` (``objdump``), find each kernel's innermost loops (backward branches)
   and take the one doing the most floating-point work per iteration: the hot loop.
3. ``llvm-mca`` gives that loop's cycles per iteration on the CPU's scheduling model; with the
   loop's FLOPs per iteration that is the kernel's compute rate. The kernel's time is estimated
   as its FLOPs (TIR count) over that rate, summed over kernels: a compute-bound, one-core,
   no-stall estimate, good for comparing two builds of one network, not as a latency.
4. The proxy is checked where timings are real: the same analysis of this CPU restricted to
   SSE (``x86-host:-avx,-avx2,-fma,-avx512f``), whose builds are also timed in turns here.
   If the proxy orders the x86 builds as the clock does, its aarch64 verdict has some support.

    python bench/mca_proxy.py --subnet min

llvm-mca 14 (Debian's) has no Cortex-A76 model of its own: ``-mcpu=cortex-a76`` uses the
Cortex-A57 model (the A72's), and no Zen 4 model (``znver3`` stands in). Relative figures only.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402
from vm_kernels import SUBNET_NAMES, subnet_named  # noqa: E402

from ofa_deploy.compile import build_module, time_interleaved, turn_ratio  # noqa: E402
from ofa_deploy.export import INPUT_NAME, seeded_input  # noqa: E402
from ofa_deploy.targets import get_target  # noqa: E402
from ofa_deploy.tuning_logs.database import best_records, default_database  # noqa: E402
from ofa_deploy.tuning_logs.identity import host_identity  # noqa: E402

log = logging.getLogger("mca_proxy")
SSE_TARGET = "x86-host:-avx,-avx2,-fma,-avx512f"
# (target, objdump, llvm-mca triple and cpu)
MACHINES = {
    "cortex-a76": ("aarch64-linux-gnu-objdump", "aarch64-linux-gnu", "cortex-a76"),
    SSE_TARGET: ("objdump", "x86_64-linux-gnu", "znver3"),
}
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_BRANCH_TARGET = re.compile(r"^([0-9a-f]+) <")


@dataclass
class Loop:
    """An innermost loop of a kernel: its instructions (branch excluded) and FLOPs per iteration."""

    body: list[str]
    flops: int


def flops_of(mnemonic: str, operands: str) -> int:
    """Floating-point operations one instruction does (mul, add, fused multiply-add; fp32 lanes)."""
    m = mnemonic.lower()
    if m.startswith(("fmla", "fmls", "fmul", "fadd", "fsub", "fmadd", "fmsub", "fnmadd", "fnmsub")):  # aarch64
        lanes = 4 if ".4s" in operands else 2 if ".2s" in operands else 1 if re.search(r"\bs\d+\b", operands) else 0
        return lanes * (2 if m.startswith(("fmla", "fmls", "fmadd", "fmsub", "fnmadd", "fnmsub")) else 1)
    x86 = re.match(r"v?(fn?m(add|sub)\d*|mul|add|sub)(ps|ss)$", m)
    if x86:
        width = 16 if "%zmm" in operands else 8 if "%ymm" in operands else 4
        lanes = width if x86.group(3) == "ps" else 1
        return lanes * (2 if x86.group(1).startswith(("fmadd", "fmsub", "fnmadd", "fnmsub")) else 1)
    return 0


def kernel_name(symbol: str) -> str:
    """``fused_conv2d_add_relu_compute_`` and its parallel lambdas -> ``fused_conv2d_add_relu``."""
    return symbol.split("_compute_")[0]


def hot_loops(so_path: Path, objdump: str) -> dict[str, Loop]:
    """Per kernel: its innermost loop with the most FLOPs per iteration (kernels with no FP loop left out)."""
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(so_path)], check=True, capture_output=True,
                          text=True).stdout
    functions: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    for line in text.splitlines():
        head = _FUNC.match(line)
        if head:
            current = head.group(1) if "_compute_" in head.group(1) else None
            if current:
                functions[current] = []
            continue
        insn = _INSN.match(line)
        if current and insn:
            functions[current].append((int(insn.group(1), 16), insn.group(2), insn.group(3)))
    best: dict[str, Loop] = {}
    for symbol, insns in functions.items():
        index = {addr: j for j, (addr, _, _) in enumerate(insns)}
        targets = [_branch_target(m, o) for _, m, o in insns]
        loops = []
        for i, ((addr, _, _), target) in enumerate(zip(insns, targets)):
            start = index.get(target) if target is not None and target < addr else None
            if start is None:
                continue  # not a backward branch within the function
            if any(t is not None and target <= t < a for (a, _, _), t in zip(insns[start:i], targets[start:i])):
                continue  # another loop's back edge inside: not innermost
            body = insns[start:i]
            loops.append(Loop([_asm(m, o) for _, m, o in body], sum(flops_of(m, o) for _, m, o in body)))
        loops = [lp for lp in loops if lp.flops > 0]
        if loops:
            top = max(loops, key=lambda lp: lp.flops)
            name = kernel_name(symbol)
            if name not in best or top.flops > best[name].flops:
                best[name] = top
    return best


def _branch_target(mnemonic: str, operands: str) -> int | None:
    m = mnemonic.lower()
    if not (m.startswith(("b.", "cbz", "cbnz", "tbz", "tbnz")) or m == "b" or re.match(r"j[a-z]+$", m)):
        return None
    last = operands.split(",")[-1].strip()
    hit = _BRANCH_TARGET.match(last)
    return int(hit.group(1), 16) if hit else None


def _asm(mnemonic: str, operands: str) -> str:
    """An objdump line as assembler input: comments dropped (``//`` on aarch64, ``#`` after AT&T operands)."""
    operands = operands.split("//")[0]
    operands = re.sub(r"\s+#.*$", "", operands)
    return f"{mnemonic} {operands}".strip()


def cycles_per_iteration(loop: Loop, triple: str, cpu: str, work: Path) -> float:
    """llvm-mca's steady-state cycles per iteration of the loop body on ``cpu``'s scheduling model."""
    src = work / "loop.s"
    src.write_text("\n".join(loop.body) + "\n")
    out = subprocess.run(["llvm-mca", f"-mtriple={triple}", f"-mcpu={cpu}", "-iterations=200", str(src)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"llvm-mca failed on a loop of {len(loop.body)} instructions: {out.stderr.strip()[:300]}")
    total = float(re.search(r"Total Cycles:\s+(\d+)", out.stdout).group(1))
    return total / 200


def kernel_flops(cfg, spec, onnx_path: Path) -> dict[str, float]:
    """TIR FLOPs of every fused function of the subnet's module as ``compile`` prepares it for ``spec``
    (its ONNX is written to ``onnx_path`` on the way: the file the builds compile)."""
    import tvm
    from vm_kernels import prepared_subnet

    from ofa_deploy.compile.worker.build import make_target

    target = make_target(spec.tvm_target_with_host(), spec.name)
    mod = prepared_subnet(cfg, spec, target, onnx_path)
    out = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                out[gv.name_hint] = float(tvm.s_tir.analysis.estimate_tir_flops(tvm.IRModule({gv.name_hint: func})))
            except Exception as exc:  # noqa: BLE001 - some functions (layout transforms) have no countable FLOPs
                log.debug("%s: no FLOP count (%s)", gv.name_hint, exc)
    return out


def analyse(so_path: Path, machine: str, flops: dict[str, float], work: Path) -> dict:
    """Estimated compute cycles of a build (sum over kernels of FLOPs / hot-loop rate) and what it covers."""
    objdump, triple, cpu = MACHINES[machine]
    loops = hot_loops(so_path, objdump)
    cycles, covered = 0.0, 0.0
    for name, loop in loops.items():
        if flops.get(name, 0) <= 0:
            continue
        try:
            per_iter = cycles_per_iteration(loop, triple, cpu, work)
        except RuntimeError as exc:  # an instruction the model lacks: the kernel is left out of the coverage
            log.warning("%s: %s", name, exc)
            continue
        cycles += flops[name] / (loop.flops / per_iter)  # the kernel's FLOPs at its hot loop's FLOP/cycle
        covered += flops[name]
    return {"cycles": cycles, "covered": covered / max(sum(flops.values()), 1.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnet", choices=SUBNET_NAMES, default="min")
    parser.add_argument("--calls", type=int, default=100, help="turns for the x86 timings")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for tool in ("llvm-mca", "objdump", "aarch64-linux-gnu-objdump"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install llvm-14 binutils binutils-aarch64-linux-gnu)")
    host_db = default_database("x86-host")
    if host_db is None:
        raise SystemExit("no x86-host database to transfer schedules from: tune x86-host first")
    sources = {"rule": [], "transferred": [("x86-host", best_records(host_db))]}
    cfg = subnet_named(args.subnet)
    x = seeded_input((1, 3, cfg.image_size, cfg.image_size))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_path = work / "net.onnx"
        for machine in MACHINES:
            spec = get_target(machine)
            flops = kernel_flops(cfg, spec, onnx_path)
            builds = {label: build_module(onnx_path, spec, work / f"{spec.name}-{label}.so", input_name=INPUT_NAME,
                                          input_shape=x.shape, transfer_databases=transfer)
                      for label, transfer in sources.items()}
            result = {label: analyse(b.so_path, machine, flops, work) for label, b in builds.items()}
            row = {"target": spec.name, "mca cpu": MACHINES[machine][2],
                   "sources": {label: {k: n for k, n in b.schedule_sources.items() if n}
                               for label, b in builds.items()},
                   "predicted transferred / rule": result["transferred"]["cycles"] / result["rule"]["cycles"],
                   "covered": min(r["covered"] for r in result.values()),
                   "rule cycles": result["rule"]["cycles"], "transferred cycles": result["transferred"]["cycles"]}
            if spec.arch == host_identity().arch:
                ms = time_interleaved([b.so_path for b in builds.values()], x, calls=args.calls, num_threads=2)
                row["measured transferred / rule"] = turn_ratio(ms[1], ms[0])
                row["measured ms"] = {label: statistics.median(m) for label, m in zip(builds, ms)}
            print(row, flush=True)
            rows.append(row)
    lines = ["| target | llvm-mca model | FLOPs covered | rule: estimated Mcycles | transferred: estimated Mcycles | "
             "transferred / rule, llvm-mca | transferred / rule, measured here |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        measured = (f"{r['measured transferred / rule']:.2f}x ({r['measured ms']['rule']:.2f} vs "
                    f"{r['measured ms']['transferred']:.2f} ms)" if "measured ms" in r else "- (no board)")
        lines.append(f"| {r['target']} | -mcpu={r['mca cpu']} | {100 * r['covered']:.0f} % | "
                     f"{r['rule cycles'] / 1e6:.1f} | {r['transferred cycles'] / 1e6:.1f} | "
                     f"{r['predicted transferred / rule']:.2f}x | {measured} |")
    publish("ARM code without a board: llvm-mca on the hot loops", [
        f"Machine: {host_identity().describe()}; subnet {args.subnet} ({cfg.id}); x86 timings: 2 threads, "
        f"{args.calls} turns, both builds in one process (per-turn ratio). rule: no database (what ARM builds get); "
        f"transferred: x86-host's database ({host_identity().folder_name()}) for every "
        "function it has. Estimated cycles: each kernel's TIR FLOPs over its hot loop's FLOP/cycle from llvm-mca "
        "14 (compute-bound, one core, no memory stalls: a relative figure).",
        "\n".join(lines)], not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
