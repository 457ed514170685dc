"""The target registry: every entry well-formed, every user spelling resolved. No TVM here.

(That TVM itself accepts every entry's dict is checked in test_compile_backend.py, tvm tier.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets import KINDS, TargetSpec, all_targets, get_target, list_targets, register_target
from ofa_deploy.targets.hostcpu import _amd_mcpu, _intel_mcpu, detect_host_cpu
from ofa_deploy.targets.parse import parse_tvm_string

NAMES = list_targets()
REQUIRED = ["x86-host", "cortex-a76", "cortex-a72", "cortex-a53", "cuda-sm80", "cuda-sm90", "jetson-orin",
            "vta-ultra96", "vta-zcu104", "vta-pynq"]
ARM_MCPUS = {"cortex-a76", "cortex-a72", "cortex-a53", "cortex-a78", "cortex-a9"}


def test_required_entries_present():
    assert set(REQUIRED) <= set(NAMES)
    assert list_targets("cuda") == ["cuda-sm80", "cuda-sm90", "jetson-orin"]
    assert set(list_targets("vta")) == {"vta-ultra96", "vta-zcu104", "vta-pynq"}


def test_import_does_not_load_tvm():
    code = "import sys, ofa_deploy.targets as t; t.get_target('cuda -arch=sm_87'); print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _check_llvm_dict(d: dict, arch: str) -> None:
    assert d["kind"] == "llvm"
    assert isinstance(d.get("num-cores", 1), int)
    if arch == "x86_64":
        assert "mtriple" not in d or d["mtriple"].startswith("x86_64")
    else:
        assert d["mtriple"].split("-")[0] in ("aarch64", "armv7a")
        assert d["mcpu"] in ARM_MCPUS


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_well_formed(name):
    spec = all_targets()[name]
    assert spec.name == name and spec.kind in KINDS and spec.description and spec.peak_source
    assert spec.cores >= 1
    json.dumps(spec.to_dict())  # metadata-safe
    assert get_target(name) is spec
    for alias in spec.aliases:
        assert get_target(alias) is spec
    if spec.kind == "cpu":
        _check_llvm_dict(spec.tvm_target, spec.arch)
        assert spec.host is None
        assert spec.tvm_target.get("num-cores", spec.cores) == spec.cores
        assert spec.peak_gflops_fp32 is None or spec.peak_gflops_fp32 > 0
    elif spec.kind == "cuda":
        assert spec.tvm_target["kind"] == "cuda" and spec.tvm_target["arch"].startswith("sm_")
        _check_llvm_dict(spec.host, spec.arch)
        assert spec.tvm_target_with_host()["host"] == spec.host
        assert spec.peak_gflops_fp32 > 1000 and spec.peak_gbps > 100
    else:
        assert spec.analytic_only and spec.host is not None and spec.vta is not None
        _check_llvm_dict(spec.host, spec.arch)
        assert spec.host.get("num-cores") == spec.cores  # the ARM cores the peaks describe
    assert (spec.vta is None) == (spec.kind != "vta")
    if spec.arch == "aarch64":
        assert spec.cross_compiler == "aarch64-linux-gnu-g++"
    if spec.arch == "armv7":
        assert spec.cross_compiler == "arm-linux-gnueabihf-g++"
        assert spec.host["mfloat-abi"] == "hard" and spec.host["mtriple"].endswith("gnueabihf")
    if spec.arch == "x86_64":
        assert spec.cross_compiler is None
    if name != "x86-host":  # datasheet figures for real boards (VTA: the board's ARM cores and DRAM)
        assert spec.peak_gflops_fp32 and spec.peak_gbps


def test_arm_peaks_follow_from_cores_clock_and_fma_width():
    assert get_target("cortex-a76").peak_gflops_fp32 == pytest.approx(4 * 2.4 * 16)
    assert get_target("cortex-a72").peak_gflops_fp32 == pytest.approx(4 * 1.8 * 8)
    assert get_target("cortex-a53").peak_gflops_fp32 == pytest.approx(4 * 1.4 * 4)
    # VTA boards' ARM hosts: Cortex-A53 @ 1.2 GHz (ZU3EG -1; ZCU104 runs its -2 part at the Linux OPP
    # table's 1.2 GHz), Cortex-A9 @ 650 MHz; 4 FLOP/cycle each
    assert get_target("vta-ultra96").peak_gflops_fp32 == pytest.approx(4 * 1.2 * 4)
    assert get_target("vta-zcu104").peak_gflops_fp32 == pytest.approx(4 * 1.2 * 4)
    assert get_target("vta-pynq").peak_gflops_fp32 == pytest.approx(2 * 0.65 * 4)


@pytest.mark.parametrize("name, mhz, axi, gbps, arch", [
    ("vta-ultra96", 333.0, 128, 8.5, "aarch64"),
    ("vta-zcu104", 333.0, 128, 19.2, "aarch64"),
    ("vta-pynq", 100.0, 64, 2.1, "armv7"),
])
def test_vta_entries_carry_fabric_and_host(name, mhz, axi, gbps, arch):
    spec = get_target(name)
    assert (spec.vta.clock_mhz, spec.vta.axi_bits, spec.peak_gbps, spec.arch) == (mhz, axi, gbps, arch)
    assert f"{mhz:g} MHz" in spec.description and spec.vta.source
    host = spec.host_spec()
    assert host.kind == "cpu" and not host.analytic_only and host.vta is None and host.host is None
    assert host.tvm_target == spec.host and host.tvm_target is not spec.host  # a copy, never shared
    assert (host.arch, host.cross_compiler, host.cores, host.peak_gflops_fp32) == \
        (spec.arch, spec.cross_compiler, spec.cores, spec.peak_gflops_fp32)
    assert host.name == f"{name}-arm" and host.name not in NAMES
    assert spec.to_dict()["vta"] == {"clock_mhz": mhz, "axi_bits": axi, "source": spec.vta.source}
    assert get_target("cortex-a76").host_spec() is get_target("cortex-a76")
    if arch == "aarch64":  # the same code path as the cortex-a53 entry: identical target dict
        assert host.tvm_target == get_target("cortex-a53").tvm_target


@pytest.mark.parametrize("text, name, mattr", [
    ("x86-host", "x86-host", None),
    ("llvm", "x86-host", None),
    ("  LLVM  ", "x86-host", None),
    ("llvm -mcpu=native", "x86-host", None),
    ("llvm -mcpu=cortex-a76", "cortex-a76", None),
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon", "cortex-a76", ["+neon"]),
    ("llvm -device=arm_cpu -mtriple=aarch64-linux-gnu -mcpu=cortex-a72", "cortex-a72", None),
    ("llvm -mtriple=aarch64-unknown-linux-gnu -mcpu=cortex-a53 -mattr=+neon,+crc", "cortex-a53", ["+neon", "+crc"]),
    ("cuda -arch=sm_87", "jetson-orin", None),
    ("cuda -arch=sm_80", "cuda-sm80", None),
    ("cuda -arch=sm_90a", "cuda-sm90", None),
    ("nvidia/jetson-agx-orin-64gb", "jetson-orin", None),
    ("nvidia/nvidia-a100", "cuda-sm80", None),
    ("raspberry-pi/4b-aarch64", "cortex-a72", None),
    ("rpi5", "cortex-a76", None),
    ("CORTEX-A76", "cortex-a76", None),
    ('{"kind": "llvm", "mcpu": "cortex-a53"}', "cortex-a53", None),
    ({"kind": "cuda", "arch": "sm_90"}, "cuda-sm90", None),
])
def test_user_spellings_resolve(text, name, mattr):
    spec = get_target(text)
    assert spec.name == name
    assert spec.tvm_target.get("mattr") == mattr


@pytest.mark.parametrize("text", ["llvm -mattr=-avx,-avx2,-fma,-avx512f",
                                  "llvm -mcpu=native -mattr=-avx512f,-fma,-avx2,-avx",
                                  "x86-host:-avx,-avx2,-fma,-avx512f", "x86-host:-fma,-avx512f,-avx,-avx2"])
def test_host_with_vector_features_off_is_a_target_of_its_own(text):
    """128-bit code on this CPU is other code: its own name (which resolves back to it), dict and peak."""
    spec = get_target(text)
    host = get_target("x86-host")
    assert spec.name == "x86-host:-avx,-avx2,-fma,-avx512f" and get_target(spec.name).tvm_target == spec.tvm_target
    assert spec.tvm_target["mattr"] == ["-avx", "-avx2", "-fma", "-avx512f"] and "mattr" not in host.tvm_target
    assert spec.tvm_target["mcpu"] == host.tvm_target["mcpu"] and spec.aliases == ()
    if host.peak_gflops_fp32 is not None:  # SSE: 4 lanes x (add + mul pipes) = 8 FLOP/cycle per core
        per_cycle = detect_host_cpu().fp32_flops_per_cycle
        assert spec.peak_gflops_fp32 == pytest.approx(host.peak_gflops_fp32 * 8 / per_cycle, abs=0.2)
    plus = get_target("llvm -mattr=-avx512f,+sse4.2")  # added features stay extras of the variant
    assert plus.name == "x86-host:-avx512f" and plus.tvm_target["mattr"] == ["-avx512f", "+sse4.2"]


@pytest.mark.parametrize("text", ["llvm -mattr=-sse2", "x86-host:-neon"])
def test_host_feature_that_cannot_be_switched_off_is_refused(text):
    with pytest.raises(OfaDeployError, match=r"can switch off only -avx, -avx2, -fma, -f16c, -avx512f"):
        get_target(text)


def test_switching_a_feature_off_drops_what_llvm_drops_with_it():
    from ofa_deploy.targets import HostCpu

    cpu = HostCpu(mcpu="znver4", model_name="AMD EPYC", cores=2, ghz=2.6,
                  flags=frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw"}))
    assert cpu.fp32_flops_per_cycle == 64
    assert cpu.restricted(["avx512f"]).flags == {"sse4_2", "avx", "avx2", "fma", "f16c"}
    assert cpu.restricted(["avx512f"]).fp32_flops_per_cycle == 32
    assert cpu.restricted(["fma"]).flags == {"sse4_2", "avx", "avx2", "f16c"}  # AVX-512 needs FMA
    assert cpu.restricted(["avx"]).flags == {"sse4_2"} and cpu.restricted(["avx"]).fp32_flops_per_cycle == 8
    assert cpu.restricted([]) == cpu


def test_extra_mattr_does_not_leak_into_registry():
    derived = get_target("llvm -mcpu=cortex-a76 -mattr=+neon")
    base = get_target("cortex-a76")
    assert derived.tvm_target["mattr"] == ["+neon"] and "mattr" not in base.tvm_target
    assert derived.tvm_target["mcpu"] == base.tvm_target["mcpu"] == "cortex-a76"
    assert derived.peak_gflops_fp32 == base.peak_gflops_fp32


def test_get_target_passes_specs_through():
    spec = get_target("cortex-a72")
    assert get_target(spec) is spec


@pytest.mark.parametrize("text, hint", [
    ("foo", "unknown kind"),
    ("", "non-empty"),
    ("llvm -mcpu=cortex-a55", "unknown -mcpu=cortex-a55"),
    ("llvm -mtriple=aarch64-linux-gnu", "needs -mcpu"),
    ("llvm -mtriple=aarch64-linux-gnu -mcpu=skylake", "unknown -mcpu=skylake"),
    ("llvm -mcpu=cortex-a76 -mtriple=x86_64-linux-gnu", "does not match"),
    ("llvm -mcpu=cortex-a76 -libs=cblas", "unsupported option"),
    ("llvm mcpu=cortex-a76", "expected '-key=value'"),
    ("cuda", "needs -arch"),
    ("cuda -arch=sm_70", "unknown -arch=sm_70"),
    ("nvidia/geforce-rtx-3090", "unknown TVM tag"),
    ("{not json", "invalid JSON"),
    ("opencl", "unknown kind"),
])
def test_unknown_targets_fail_with_one_line_listing_names(text, hint):
    with pytest.raises(OfaDeployError) as exc:
        get_target(text)
    message = str(exc.value)
    assert hint in message
    assert "\n" not in message
    assert "known targets: " + ", ".join(NAMES) in message


def test_parse_tvm_string():
    assert parse_tvm_string("llvm -mtriple=aarch64-linux-gnu -mattr=+neon,+dotprod") == {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}


def test_register_target_adds_and_overrides():
    base = get_target("cortex-a76")
    custom = base.replace(name="my-board", description="test board", aliases=("my-alias",))
    try:
        register_target(custom)
        assert get_target("my-board") is custom and get_target("my-alias") is custom
        assert "my-board" in list_targets("cpu")

        @register_target
        def my_board() -> TargetSpec:  # decorator form replaces the entry
            return custom.replace(peak_gbps=1.0)

        assert get_target("my-board").peak_gbps == 1.0
    finally:
        from ofa_deploy.targets import registry

        registry._FACTORIES.pop("my-board", None)
        registry._SPECS.pop("my-board", None)
    assert "my-board" not in list_targets()


def test_spec_validation():
    with pytest.raises(ValueError):
        get_target("cortex-a76").replace(kind="fpga")
    with pytest.raises(ValueError):
        get_target("cortex-a76").replace(tvm_target={"mcpu": "cortex-a76"})
    with pytest.raises(ValueError, match="kind 'vta' needs"):
        get_target("vta-ultra96").replace(vta=None)
    with pytest.raises(ValueError, match="kind 'vta' needs"):
        get_target("vta-ultra96").replace(host=None)
    with pytest.raises(ValueError, match="other kinds take no vta"):
        get_target("cortex-a53").replace(vta=get_target("vta-ultra96").vta)


def test_host_cpu_guess():
    cpu = detect_host_cpu()
    assert cpu.cores >= 1 and cpu.mcpu
    assert get_target("x86-host").tvm_target["mcpu"] == cpu.mcpu
    assert _amd_mcpu(0x17, 0x31) == "znver2" and _amd_mcpu(0x19, 0x61) == "znver4"
    assert _amd_mcpu(0x19, 0x21) == "znver3" and _amd_mcpu(0x1A, 0x02) == "znver5"
    assert _intel_mcpu(frozenset({"avx512f", "avx512_vnni"})) == "cascadelake"
    assert _intel_mcpu(frozenset({"avx2", "fma"})) == "haswell"
    assert _intel_mcpu(frozenset()) == "x86-64"
