"""The command line: happy paths, and bad input -> one line, exit code 2, nothing written."""

import json
import subprocess
import sys

import pytest
import torch

from ofa_deploy import SubnetConfig
from ofa_deploy.cli import cli
from tests.conftest import run_cli


run = run_cli


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and "Example:" in out and "ofa-deploy " + command in out


def test_space_prints_size(capsys):
    code, out, _ = run(["space"], capsys)
    assert code == 0 and "2.176e+19" in out and "ofa_mbv3_d234_e346_k357_w1.2" in out


def test_sample_is_reproducible_and_valid(tmp_path, capsys):
    for name in ("a.json", "b.json"):
        assert run(["sample", "--seed", "4", "-o", str(tmp_path / name)], capsys)[0] == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b
    SubnetConfig.from_json(tmp_path / "a.json")


def test_info_prints_official_figures(tmp_path, capsys):
    SubnetConfig.max().to_json(tmp_path / "max.json")
    code, out, _ = run(["info", str(tmp_path / "max.json")], capsys)
    assert code == 0 and "566.17 M" in out and "7.665 M" in out and "ops/byte" in out
    code, out, _ = run(["info", str(tmp_path / "max.json"), "--json", "--layers"], capsys)
    data = json.loads(out)
    assert data["macs"] == 566170656 and len(data["layers"]) > 60


def test_export_with_reference_checkpoint(reference, tmp_path, capsys):
    cfg = SubnetConfig.from_dict(reference["records"][1]["arch"])
    cfg.to_json(tmp_path / "s.json")
    code, out, _ = run(["export", str(tmp_path / "s.json"), "--supernet", reference["checkpoint_path"],
                        "-o", str(tmp_path / "s.onnx")], capsys)
    assert code == 0 and (tmp_path / "s.onnx").is_file() and "max abs err" in out


BAD_CONFIGS = {
    "malformed.json": ("{ks: [", "not valid JSON (line 1"),
    "short.json": (json.dumps({**SubnetConfig.max().to_dict(), "ks": [7] * 5}), "field 'ks' has 5 values, expected 20"),
    "outside.json": (json.dumps({**SubnetConfig.max().to_dict(), "e": [6] * 19 + [8]}),
                     "field 'e[19]' = 8 is not allowed; allowed values: 3, 4, 6"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
@pytest.mark.parametrize("command", ["info", "export"])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, name, command):
    text, message = BAD_CONFIGS[name]
    (tmp_path / name).write_text(text)
    code, out, err = run([command, str(tmp_path / name), "--random-weights"] if command == "export"
                         else [command, str(tmp_path / name)], capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


def test_bad_checkpoint_and_missing_files_exit_2(reference, tmp_path, capsys):
    SubnetConfig.min().to_json(tmp_path / "s.json")
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"first_conv.conv.weight": torch.zeros(8, 3, 3, 3)}}, wrong)
    cases = [
        (["export", str(tmp_path / "s.json"), "--supernet", str(wrong)], "parameter 'first_conv.conv.weight' has shape (8, 3, 3, 3), expected (16, 3, 3, 3)"),
        (["export", str(tmp_path / "s.json"), "--supernet", str(tmp_path / "nope.pth")], "checkpoint file not found"),
        (["export", str(tmp_path / "s.json")], "--supernet CHECKPOINT is required"),
        (["info", str(tmp_path / "missing.json")], "subnet config file not found"),
        (["export", str(tmp_path / "s.json"), "--supernet", reference["checkpoint_path"], "--space",
          "ofa_mbv3_d234_e346_k357_w1.2"], "expected (24, 3, 3, 3)"),
    ]
    for args, message in cases:
        code, _, err = run(args + ["-o", str(tmp_path / "x.onnx")] if args[0] == "export" else args, capsys)
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_debug_shows_traceback_and_console_script_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    plain = subprocess.run([sys.executable, "-m", "ofa_deploy.cli", "info", str(bad)], capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.startswith("error: ") and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "ofa_deploy.cli", "--debug", "info", str(bad)],
                           capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_usage_error_exit_2(capsys):
    code, _, err = run(["sample"], capsys)
    assert code == 2 and "--seed" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_train_on_cuda_without_a_gpu_exits_2(tmp_path, capsys):
    from ofa_deploy.data import make_demo_dataset

    data = make_demo_dataset(tmp_path / "data", train_per_class=2, val_per_class=1, size=32)
    code, _, err = run(["train", "--data", str(data), "--device", "cuda", "-o", str(tmp_path / "run")], capsys)
    assert code == 2 and "device: 'cuda' asked for, but torch sees no GPU" in err
    assert not (tmp_path / "run" / "last.pth").exists()
