"""Built-in targets.

Peak figures are theoretical ceilings for a roofline/cost model, never measurements. CPU fp32
peaks are cores x clock x FLOP/cycle, where FLOP/cycle = fp32 lanes x 2 (FMA) x FMA pipes per
core: Cortex-A53 has one 64-bit NEON FMA pipe (4), Cortex-A72 one 128-bit FMA per cycle (8),
Cortex-A76/A78 two 128-bit FMA pipes (16) (Arm Software Optimization Guides for each core).
DRAM bandwidth = transfer rate x bus width.

Each entry is a zero-argument factory (built on first use, so nothing probes the machine at
import); :data:`BUILTINS` lists them in registration order and the registry registers them
(this module does not import the registry: the entries are data the registry reads).
"""

from __future__ import annotations

from .hostcpu import detect_host_cpu, host_copy_bandwidth_gbps, host_variant_name, switched_off
from .spec import TargetSpec, VtaFabric

_A64 = "aarch64-linux-gnu"
_A64_CXX = "aarch64-linux-gnu-g++"
# Fields TVM's own CUDA tags carry; set explicitly so codegen never queries a (missing) GPU.
_CUDA_LIMITS = {"max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
                "max_num_threads": 1024, "thread_warp_size": 32, "registers_per_block": 65536}
_X86_SERVER_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}


def _arm_cpu(mcpu: str, cores: int) -> dict:
    return {"kind": "llvm", "mtriple": _A64, "mcpu": mcpu, "num-cores": cores}


def x86_host(disabled: tuple[str, ...] = ()) -> TargetSpec:
    """This machine; with ``disabled`` x86 features (``-mattr=-avx,...``) a target of its own
    (``x86-host:-avx,...``): narrower vectors are other code, with their own database and tables."""
    disabled = switched_off(disabled)
    cpu = detect_host_cpu().restricted(disabled)
    peak = None if cpu.ghz is None else round(cpu.cores * cpu.ghz * cpu.fp32_flops_per_cycle, 1)
    tvm_target = {"kind": "llvm", "mcpu": cpu.mcpu, "num-cores": cpu.cores}
    if disabled:
        tvm_target["mattr"] = [f"-{f}" for f in disabled]
    restriction = f" with {','.join('-' + f for f in disabled)}" if disabled else ""
    return TargetSpec(
        name=host_variant_name(disabled),
        description=f"this machine: {cpu.model_name}, {cpu.cores} cores (llvm -mcpu={cpu.mcpu}{restriction})",
        tvm_target=tvm_target,
        host=None, kind="cpu", arch="x86_64", cross_compiler=None, cores=cpu.cores,
        peak_gflops_fp32=peak, peak_gbps=host_copy_bandwidth_gbps(cpu.model_name),
        peak_source=(f"estimated from /proc/cpuinfo: {cpu.cores} cores x {cpu.ghz:.2f} GHz x "
                     f"{cpu.fp32_flops_per_cycle} FLOP/cycle (two FMA pipes of the widest ISA{restriction}, an "
                     "upper bound); DRAM bandwidth measured here (256 MiB numpy copy, one thread, cached)"),
        aliases=() if disabled else ("host", "local", "native", "llvm"),
    )


def cortex_a76() -> TargetSpec:
    return TargetSpec(
        name="cortex-a76",
        description="Raspberry Pi 5 (BCM2712): 4x Cortex-A76 @ 2.4 GHz, LPDDR4X-4267 32-bit",
        tvm_target=_arm_cpu("cortex-a76", 4), host=None, kind="cpu", arch="aarch64",
        cross_compiler=_A64_CXX, cores=4, peak_gflops_fp32=153.6, peak_gbps=17.1,
        peak_source=("4 cores x 2.4 GHz x 16 FLOP/cycle (2x128-bit FMA, Cortex-A76 SWOG); "
                     "4267 MT/s x 4 B (Raspberry Pi 5 product brief: LPDDR4X-4267)"),
        aliases=("rpi5", "raspberry-pi-5", "raspberrypi5", "bcm2712"),
    )


def cortex_a72() -> TargetSpec:
    return TargetSpec(
        name="cortex-a72",
        description=("Raspberry Pi 4 Model B (BCM2711): 4x Cortex-A72 @ 1.8 GHz (1.5 GHz on "
                     "pre-2021 boards), LPDDR4-3200 32-bit"),
        tvm_target=_arm_cpu("cortex-a72", 4), host=None, kind="cpu", arch="aarch64",
        cross_compiler=_A64_CXX, cores=4, peak_gflops_fp32=57.6, peak_gbps=12.8,
        peak_source=("4 cores x 1.8 GHz x 8 FLOP/cycle (one 128-bit FMA/cycle, Cortex-A72 SWOG; "
                     "48.0 at 1.5 GHz); 3200 MT/s x 4 B (Raspberry Pi 4 product brief: LPDDR4-3200)"),
        aliases=("rpi4", "raspberry-pi-4", "raspberrypi4", "bcm2711",
                 "raspberry-pi/4b-aarch64", "arm/rasp4b64"),
    )


def cortex_a53() -> TargetSpec:
    return TargetSpec(
        name="cortex-a53",
        description="Raspberry Pi 3 Model B+ (BCM2837B0): 4x Cortex-A53 @ 1.4 GHz, LPDDR2 32-bit",
        tvm_target=_arm_cpu("cortex-a53", 4), host=None, kind="cpu", arch="aarch64",
        cross_compiler=_A64_CXX, cores=4, peak_gflops_fp32=22.4, peak_gbps=4.0,
        peak_source=("4 cores x 1.4 GHz x 4 FLOP/cycle (64-bit NEON datapath, Cortex-A53 TRM); "
                     "1000 MT/s x 4 B (LPDDR2 at sdram_freq=500 MHz)"),
        aliases=("rpi3", "raspberry-pi-3", "bcm2837"),
    )


def cuda_sm80() -> TargetSpec:
    return TargetSpec(
        name="cuda-sm80",
        description="NVIDIA A100 SXM4 80GB (sm_80, 108 SMs), x86-64 host",
        tvm_target={"kind": "cuda", "arch": "sm_80", **_CUDA_LIMITS}, host=dict(_X86_SERVER_HOST),
        kind="cuda", arch="x86_64", cross_compiler=None, cores=108,
        peak_gflops_fp32=19500.0, peak_gbps=2039.0,
        peak_source="NVIDIA A100 datasheet: 19.5 TFLOPS FP32 (non-tensor), 2,039 GB/s HBM2e",
        aliases=("a100", "sm_80", "sm80", "nvidia/nvidia-a100"),
    )


def cuda_sm90() -> TargetSpec:
    return TargetSpec(
        name="cuda-sm90",
        description="NVIDIA H100 SXM5 80GB (sm_90, 132 SMs), x86-64 host",
        tvm_target={"kind": "cuda", "arch": "sm_90", **_CUDA_LIMITS}, host=dict(_X86_SERVER_HOST),
        kind="cuda", arch="x86_64", cross_compiler=None, cores=132,
        peak_gflops_fp32=67000.0, peak_gbps=3350.0,
        peak_source="NVIDIA H100 datasheet (SXM5): 67 TFLOPS FP32 (non-tensor), 3.35 TB/s HBM3",
        aliases=("h100", "sm_90", "sm90", "sm_90a", "nvidia/nvidia-h100"),
    )


def jetson_orin() -> TargetSpec:
    return TargetSpec(
        name="jetson-orin",
        description=("NVIDIA Jetson AGX Orin 64GB: Ampere GPU sm_87 (2048 CUDA cores, 16 SMs, "
                     "1.3 GHz), host 12x Cortex-A78AE, LPDDR5 256-bit"),
        tvm_target={"kind": "cuda", "arch": "sm_87", **_CUDA_LIMITS},
        host=_arm_cpu("cortex-a78", 12), kind="cuda", arch="aarch64", cross_compiler=_A64_CXX,
        cores=16, peak_gflops_fp32=5325.0, peak_gbps=204.8,
        peak_source=("2048 CUDA cores x 2 x 1.3 GHz = 5.3 TFLOPS FP32; 204.8 GB/s "
                     "(NVIDIA Jetson AGX Orin series datasheet)"),
        aliases=("orin", "jetson-agx-orin", "nvidia/jetson-agx-orin-64gb"),
    )


# VTA boards (kind "vta"). TVM 0.27 has no VTA backend (removed in apache/tvm PR 17542), so the
# fabric is modelled analytically (ofa_deploy.latency.vta, which reads every board figure
# from here) and `compile` builds the whole network for the board's ARM cores (TargetSpec.host_spec).
# ARM fp32 peak = cores x clock x 4 FLOP/cycle: Cortex-A53 as above (64-bit NEON datapath); Cortex-A9
# likewise (NEON VMLA.F32 on q registers: 4 lanes x 2 FLOP every 2 cycles; measured 3.999 GFLOP/s on
# one 1 GHz core, gruntthepeon.free.fr "ARM Cortex A9 peak flops", 2011).
_FLOP_PER_CYCLE_A53_A9 = 4
_ARMV7_HF = "armv7a-linux-gnueabihf"
_VTA_PKG_CONFIG = "apache/tvm-vta config/pkg_config.py"


def _vta(name: str, board: str, *, mcpu: str, cores: int, ghz: float, clock_note: str, dram_gbps: float,
         dram_note: str, fabric: VtaFabric) -> TargetSpec:
    """A VTA board entry: its ARM host (target dict, cross compiler, peaks) and its VTA fabric."""
    if mcpu == "cortex-a53":
        host, arch, cxx = _arm_cpu(mcpu, cores), "aarch64", _A64_CXX
    else:  # Zynq-7000: 32-bit ARMv7-A with NEON. TVM 0.27 emits soft-float-ABI objects for a gnueabihf
        # triple unless told (readelf: no Tag_ABI_VFP_args), which armhf's g++ and runtime reject.
        host = {"kind": "llvm", "mtriple": _ARMV7_HF, "mcpu": mcpu, "mattr": ["+neon"], "mfloat-abi": "hard",
                "num-cores": cores}
        arch, cxx = "armv7", "arm-linux-gnueabihf-g++"
    cpu = f"{cores}x Cortex-{mcpu.removeprefix('cortex-').upper()} @ {ghz:g} GHz"
    return TargetSpec(
        name=name,
        description=(f"VTA on {board}: fabric {fabric.clock_mhz:g} MHz, {fabric.axi_bits}-bit AXI (analytic "
                     f"model); host {cpu}"),
        tvm_target={"kind": "ext_dev"}, host=host, kind="vta", arch=arch, cross_compiler=cxx, cores=cores,
        peak_gflops_fp32=round(cores * ghz * _FLOP_PER_CYCLE_A53_A9, 3), peak_gbps=dram_gbps,
        peak_source=(f"ARM host: {cores} cores x {ghz:g} GHz x {_FLOP_PER_CYCLE_A53_A9} FLOP/cycle ({clock_note}); "
                     f"DRAM shared by ARM and fabric: {dram_note}"),
        analytic_only=True, vta=fabric,
    )


def vta_ultra96() -> TargetSpec:
    return _vta("vta-ultra96", "Avnet Ultra96-V2 (Zynq UltraScale+ ZU3EG -1)", mcpu="cortex-a53", cores=4,
                ghz=1.2, clock_note="DS925: 1.2 GHz APU maximum of -1 speed-grade parts such as the ZU3EG-1",
                dram_gbps=8.5, dram_note="2 GB LPDDR4 x32 at 2133 MT/s = 8.5 GB/s",
                fabric=VtaFabric(333.0, 128, f"{_VTA_PKG_CONFIG}, target ultra96: fpga_freq 333, "
                                             "fpga_log_axi_bus_width 7"))


def vta_zcu104() -> TargetSpec:
    return _vta("vta-zcu104", "Xilinx ZCU104 (Zynq UltraScale+ XCZU7EV-2FFVC1156)", mcpu="cortex-a53", cores=4,
                ghz=1.2, clock_note=("the ZCU104's -2 part allows 1.333 GHz and only -3 parts 1.5 GHz (DS925), "
                                     "but Linux's zynqmp.dtsi CPU OPP table tops out at 1199999988 Hz, the clock "
                                     "the board runs at"),
                dram_gbps=19.2, dram_note="PS DDR4 x64 at 2400 MT/s = 19.2 GB/s (UG1267)",
                fabric=VtaFabric(333.0, 128, f"{_VTA_PKG_CONFIG} has no zcu104 entry: the ultra96 (Zynq "
                                             "UltraScale+) settings, 333 MHz and 128-bit AXI, assumed"))


def vta_pynq() -> TargetSpec:
    return _vta("vta-pynq", "Digilent PYNQ-Z1 (Zynq-7020)", mcpu="cortex-a9", cores=2, ghz=0.65,
                clock_note="PYNQ-Z1 reference manual: 650 MHz Cortex-A9",
                dram_gbps=2.1, dram_note="512 MB DDR3 x16 at 1050 MT/s = 2.1 GB/s (PYNQ-Z1 reference manual)",
                fabric=VtaFabric(100.0, 64, f"{_VTA_PKG_CONFIG}, default (pynq) target: fpga_freq 100, "
                                            "fpga_log_axi_bus_width 6"))


# Registration order is the order ``ofa-deploy targets`` lists them in.
BUILTINS = (x86_host, cortex_a76, cortex_a72, cortex_a53, cuda_sm80, cuda_sm90, jetson_orin,
            vta_ultra96, vta_zcu104, vta_pynq)
