"""subnet.json -> verified module: the compiled code reproduces the official logits (x86, emulated ARM)."""


import numpy as np
import pytest

from ofa_deploy import SubnetConfig
from ofa_deploy.cli import main, merge_target_words
from ofa_deploy.deploy import CompileOptions, compile_subnet, read_metadata
from ofa_deploy.outputs import MANIFEST, OutputFolder
from ofa_deploy.search_space.costs import count_costs
from tests.conftest import reference_input

pytestmark = pytest.mark.tvm


def _compile_reference(reference, index, target, out, batch=2, **kw):
    cfg = SubnetConfig.from_dict(reference["records"][index]["arch"])
    opts = CompileOptions(target=target, out_dir=str(out), checkpoint=reference["checkpoint_path"], batch=batch, **kw)
    return cfg, compile_subnet(cfg, opts)


def _check_reference_logits(reference, index, out):
    from ofa_deploy.compile import run_emulated_aarch64, run_local

    meta = read_metadata(out)
    x = reference_input(reference["seed"], meta["subnet"]["image_size"])
    runner = run_emulated_aarch64 if meta["target"]["arch"] == "aarch64" else run_local
    got = runner(out / "subnet.so", x)
    np.testing.assert_allclose(got, reference["logits"][index], rtol=1e-3, atol=1e-4)


def test_x86_module_reproduces_reference_and_writes_metadata(reference, tmp_path):
    import json

    from ofa_deploy.tuning_logs.identity import host_identity

    searched = tmp_path / "subnet.json"  # as search writes it after measuring its pick on this machine
    searched.write_text(json.dumps({**reference["records"][2]["arch"], "latency_ms": 1.5, "latency_source": "measured",
                                    "measured_on": host_identity().to_json()}))
    cfg, out = _compile_reference(reference, 2, "x86-host", tmp_path / "x86", measure=True, config_path=str(searched))
    _check_reference_logits(reference, 2, out)
    meta = read_metadata(out)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "metadata.json", "reference.npz", "subnet.json",
                                                     "subnet.onnx", "subnet.so"]
    assert meta["verification"]["status"] == "passed" and meta["verification"]["ran_on"] == "local"
    assert meta["verification"]["max_rel_err"] < 1e-3
    assert meta["latency"]["source"] == "measured" and meta["latency_ms"] > 0
    assert meta["measured_on"]["mcpu"] == host_identity().mcpu and meta["search_measured_ms"] == 1.5
    assert meta["macs"] == count_costs(cfg).macs and meta["arithmetic_intensity"]["fp32"] > 1
    assert meta["input"] == {"name": "input", "shape": [2, 3, 188, 188], "layout": "NCHW", "dtype": "float32"}
    assert meta["tvm_version"].startswith("0.27") and meta["subnet_id"] == cfg.id
    assert SubnetConfig.from_json(out / "subnet.json") == cfg
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_check_reruns_the_recorded_reference_on_this_machine(reference, tmp_path, capsys):
    """``ofa-deploy check``: the folder's module against the logits compile recorded, on the machine it runs on."""
    import json

    from ofa_deploy.device_check import check_compiled
    from ofa_deploy.tuning_logs.identity import host_identity
    from tests.conftest import run_cli

    cfg, out = _compile_reference(reference, 3, "x86-host", tmp_path / "x86", batch=1, verify=False)
    with np.load(out / "reference.npz") as ref:  # compile's input and PyTorch's logits for it
        assert ref["input"].shape == (1, 3, cfg.image_size, cfg.image_size) and ref["logits"].shape == (1, 1000)
        x, logits = ref["input"], ref["logits"]
    result = check_compiled(out, measure=False)
    here = host_identity()
    assert result.path == out / f"check-{here.folder_name()}.json" and result.passed
    record = json.loads(result.path.read_text())
    assert record["device"]["mcpu"] == here.mcpu and record["subnet_id"] == cfg.id and record["latency"] is None
    assert record["verification"]["max_rel_err"] < 1e-3 and len(record["so_sha256"]) == 64

    code, stdout, _ = run_cli(["check", str(out), "--repeat", "3"], capsys)
    assert code == 0 and "verification passed" in stdout and "(measured)" in stdout
    assert json.loads(result.path.read_text())["latency"]["source"] == "measured"

    np.savez(out / "reference.npz", input=x, logits=logits * 1.01)  # a module that no longer matches: exit 1
    code, stdout, _ = run_cli(["check", str(out), "--no-measure"], capsys)
    assert code == 1 and "verification failed" in stdout
    assert json.loads(result.path.read_text())["verification"]["status"] == "failed"


def test_emulated_arm_module_reproduces_reference_without_a_speed(reference, tmp_path):
    _, out = _compile_reference(reference, 1, "llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon",
                                tmp_path / "a76", measure=True)
    meta = read_metadata(out)
    assert meta["target"]["name"] == "cortex-a76" and meta["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    assert meta["verification"]["ran_on"].startswith("qemu") and meta["verification"]["status"] == "passed"
    assert meta["latency"] is None  # qemu time is never reported as a speed
    _check_reference_logits(reference, 1, out)


@pytest.mark.parametrize("target", ["x86-host", "cortex-a76"])
@pytest.mark.parametrize("index", range(8))
def test_all_reference_configs_on_x86_and_arm(reference, tmp_path, index, target):
    _, out = _compile_reference(reference, index, target, tmp_path / "m", verify=False)
    _check_reference_logits(reference, index, out)


def test_failed_verification_leaves_no_output(reference, tmp_path, monkeypatch):
    import ofa_deploy.deploy as deploy
    import ofa_deploy.device_check as device_check

    monkeypatch.setattr(device_check, "VERIFY_RTOL", 0.0)  # every real module now "fails"
    with OutputFolder(tmp_path / "out", "compile", deploy.COMPILE_FILES).staged() as stage:  # an earlier output
        (stage / "metadata.json").write_text("previous result")
    (tmp_path / "out" / "notes.txt").write_text("the user's")
    with pytest.raises(deploy.OfaDeployError, match="verification failed on local"):
        _compile_reference(reference, 1, "x86-host", tmp_path / "out", batch=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # old output kept, no staging folder
    assert (tmp_path / "out" / "metadata.json").read_text() == "previous result"
    assert (tmp_path / "out" / "notes.txt").read_text() == "the user's"


def test_classic_target_words_are_joined():
    assert merge_target_words(["compile", "s.json", "--target", "llvm", "-mcpu=cortex-a76", "-mattr=+neon", "-o", "x"]) == \
        ["compile", "s.json", "--target", "llvm -mcpu=cortex-a76 -mattr=+neon", "-o", "x"]
    assert merge_target_words(["--target", "cuda", "-arch=sm_87"]) == ["--target", "cuda -arch=sm_87"]


@pytest.mark.parametrize("args,message", [
    (["--target", "llvm", "-mcpu=cortex-z99"], "unknown -mcpu=cortex-z99"),
    (["--target", "tpu-v9"], "known targets: x86-host"),
    (["--target", "x86-host"], "--supernet CHECKPOINT is required"),
    (["--target", "x86-host", "--random-weights", "--supernet", "x.pth"], "not both"),
])
def test_compile_bad_input_exit_2(tmp_path, capsys, monkeypatch, args, message):
    import ofa_deploy.deploy as deploy

    monkeypatch.setattr(deploy, "default_supernet", lambda: None)  # as on an installation without one
    SubnetConfig.min().to_json(tmp_path / "s.json")
    with pytest.raises(SystemExit) as exit_:
        main(["compile", str(tmp_path / "s.json"), *args, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
