"""``compile --target vta-*``: the whole network built for the board's ARM host, the VTA placement reported.

TVM 0.27 has no VTA backend, so the module runs every layer on the ARM cores; metadata.json and the
CLI say so and list, per layer, what the analytic VTA model would offload, with its latency labelled
``estimated``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from ofa_deploy import SubnetConfig
from ofa_deploy.latency.tables import layers_with_acts
from ofa_deploy.latency.vta import vta_report
from ofa_deploy.search_space.costs import count_costs
from ofa_deploy.targets import get_target

from tests.conftest import run_cli


def _compile(tmp_path, capsys, target: str) -> tuple[int, str, str, dict | None]:
    cfg = SubnetConfig.min()
    cfg.to_json(tmp_path / "s.json")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["compile", str(tmp_path / "s.json"), "--target", target, "--random-weights",
                                    "-o", str(out)], capsys)
    meta = json.loads((out / "metadata.json").read_text()) if (out / "metadata.json").is_file() else None
    return code, stdout, stderr, meta


def _check_vta_section(meta: dict, target: str) -> None:
    cfg = SubnetConfig.min()
    names = [layer.name for layer in count_costs(cfg).layers]
    vta = meta["vta"]
    assert [row["name"] for row in vta["layers"]] == names
    assert len(vta["offloadable"]) + len(vta["not_offloadable"]) == len(names)
    assert set(vta["offloadable"]) == {r["name"] for r in vta["layers"] if r["vta_model"] == "vta"}
    by_op = {r["op"] for r in vta["layers"] if r["name"] in vta["not_offloadable"]}
    assert {"dwconv", "se", "pool", "linear"} <= by_op  # what VTA cannot run, all on ARM
    assert all(r["op"] == "conv" for r in vta["layers"] if r["name"] in vta["offloadable"])
    assert vta["estimate"]["source"] == "estimated" and vta["estimate"]["target"] == target
    expected = vta_report(layers_with_acts(cfg), target).latency_ms
    assert vta["estimate"]["latency_ms"] == pytest.approx(expected, abs=1e-4)
    assert "TVM 0.27 has no VTA backend (removed in apache/tvm PR 17542)" in vta["note"]
    assert meta["target"]["name"] == target and meta["target"]["vta"]["clock_mhz"] == get_target(target).vta.clock_mhz
    assert meta["latency"] is None  # nothing was measured: the only latency is the model's, under "vta"


@pytest.mark.tvm
def test_vta_ultra96_builds_the_arm_host_and_reports_the_offload(tmp_path, capsys):
    from ofa_deploy.compile import elf_machine

    code, out, err, meta = _compile(tmp_path, capsys, "vta-ultra96")
    assert code == 0, err
    assert elf_machine(tmp_path / "out" / "subnet.so") == "aarch64"
    assert meta["tvm_target"]["mcpu"] == "cortex-a53" and meta["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    assert meta["verification"]["status"] == "passed" and "qemu-aarch64" in meta["verification"]["ran_on"]
    _check_vta_section(meta, "vta-ultra96")
    lines = out.splitlines()
    assert "vta-ultra96, verification passed on qemu-aarch64" in lines[0]
    assert lines[1].startswith("note: TVM 0.27 has no VTA backend (removed in apache/tvm PR 17542)")
    assert f"{len(meta['vta']['offloadable'])} of {len(meta['vta']['layers'])} layers offloadable" in lines[2]
    assert f"{meta['vta']['estimate']['latency_ms']:.2f} ms (estimated)" in lines[3]
    for row in meta["vta"]["layers"]:  # one line per layer, device as the model places it
        assert any(line.split()[:3] == [row["name"], row["op"], row["vta_model"]] for line in lines), row["name"]


def test_vta_pynq_without_its_cross_compiler_exits_2_naming_the_package(tmp_path, capsys, monkeypatch):
    from ofa_deploy.compile import toolchain

    which = shutil.which
    monkeypatch.setattr(toolchain.shutil, "which",
                        lambda name, *a, **k: None if name == "arm-linux-gnueabihf-g++" else which(name, *a, **k))
    code, out, err, meta = _compile(tmp_path, capsys, "vta-pynq")
    assert code == 2 and meta is None and not (tmp_path / "out").exists()
    assert len(err.strip().splitlines()) == 1
    assert "arm-linux-gnueabihf-g++ not found" in err and "apt-get install g++-arm-linux-gnueabihf" in err


@pytest.mark.tvm
@pytest.mark.skipif(shutil.which("arm-linux-gnueabihf-g++") is None,
                    reason="needs arm-linux-gnueabihf-g++ (apt-get install g++-arm-linux-gnueabihf)")
def test_vta_pynq_builds_a_hard_float_armv7_module(tmp_path, capsys):
    from ofa_deploy.compile import elf_machine

    code, out, err, meta = _compile(tmp_path, capsys, "vta-pynq")
    assert code == 0, err
    assert elf_machine(tmp_path / "out" / "subnet.so") == "armv7"
    assert meta["tvm_target"]["mcpu"] == "cortex-a9" and meta["tvm_target"]["mfloat-abi"] == "hard"
    assert meta["verification"]["status"] == "compiled-only"  # no armv7 TVM runtime here to emulate with
    _check_vta_section(meta, "vta-pynq")
    assert "no VTA backend" in out
