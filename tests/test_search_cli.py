"""search / acc-dataset / acc-predictor on the command line: happy paths, resume, exit code 2."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_deploy import OFAMobileNetV3, SubnetConfig, save_supernet
from ofa_deploy.outputs import MANIFEST
from ofa_deploy.search import ProxyAccuracy
from ofa_deploy.search.dataset import FORMAT, read_records
from ofa_deploy.search.encoding import n_features
from ofa_deploy.search.predictor import AccuracyPredictorNet, Predictor, PredictorMeta, save_predictor
from ofa_deploy.search_space.genes import random_genes
from tests.conftest import run_cli

SPACE = "ofa_mbv3_d234_e346_k357_w1.0"


@pytest.fixture
def run(capsys):
    """Run ``ofa-deploy`` in-process; return (code, out, err)."""
    return lambda args: run_cli(args, capsys)


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pred") / "p.pt"
    save_predictor(Predictor(AccuracyPredictorNet(n_features(SPACE), base_acc=0.7).eval(),
                             PredictorMeta(SPACE, 1000, "synthetic", 0.7)), path)
    return str(path)


@pytest.mark.parametrize("command", ["search", "acc-dataset", "acc-predictor"])
def test_help_has_example(run, command):
    code, out, _ = run([command, "--help"])
    assert code == 0 and "Example:" in out and "ofa-deploy " + command in out


def test_search_writes_outputs(run, predictor_file, tmp_path):
    code, out, err = run(["search", "--target", "vta-ultra96", "--latency-ms", "25", "--max-macs", "200M",
                          "--acc-predictor", predictor_file, "--population", "20", "--generations", "10",
                          "-o", str(tmp_path / "o")])
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "subnet.json").read_text())
    assert data["latency_source"] == "estimated" and data["latency_ms"] <= 25 and data["macs"] <= 200e6
    assert data["search"]["accuracy_predictor"]["path"] == predictor_file
    assert "ops/B (int8)" in out and "GOP/s" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [MANIFEST, "front.csv", "pareto.png", "subnet.json"]


@pytest.mark.parametrize("acc_max, warned", [(0.5, True), (0.99, False)])
def test_search_warns_when_the_prediction_extrapolates(run, tmp_path, acc_max, warned):
    """A predicted accuracy above the best subnet the predictor learnt from is flagged, not presented as fact."""
    torch.manual_seed(0)
    path = tmp_path / "p.pt"
    save_predictor(Predictor(AccuracyPredictorNet(n_features(SPACE), base_acc=0.7).eval(),
                             PredictorMeta(SPACE, 1000, "synthetic", 0.7, metrics={"acc_min": 0.4, "acc_max": acc_max})),
                   path)
    code, _, err = run(["search", "--target", "vta-ultra96", "--latency-ms", "25", "--acc-predictor", str(path),
                        "--population", "10", "--generations", "2", "-o", str(tmp_path / "o")])
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "subnet.json").read_text())
    assert data["search"]["accuracy_predictor"]["acc_max"] == acc_max
    assert ("above every subnet the predictor learnt from" in err) is warned
    assert (data["predicted_accuracy"] > acc_max) is warned  # the untrained net predicts about its base 0.7


def test_unquoted_tvm_target_words_are_joined(run, predictor_file, tmp_path, monkeypatch):
    from ofa_deploy.latency import choose

    seen = []

    def fake_lookup(text):
        seen.append(text)
        return type("Spec", (), dict(name="cortex-a76", kind="cpu", peak_gflops_fp32=153.6, peak_gbps=17.1))()

    monkeypatch.setattr(choose, "lookup_target", fake_lookup)
    code, _, err = run(["search", "--target", "llvm", "-mtriple=aarch64-linux-gnu", "-mcpu=cortex-a76",
                        "-mattr=+neon", "--latency-ms", "20", "--acc-predictor", predictor_file,
                        "--population", "10", "--generations", "2", "-o", str(tmp_path / "o")])
    assert code == 0, err
    assert seen == ["llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76 -mattr=+neon"]
    data = json.loads((tmp_path / "o" / "subnet.json").read_text())
    assert data["target"] == seen[0] and data["intensity_dtype"] == "fp32"
    # the '-o' inside -mtriple/-mcpu was not taken as the output option
    assert not list(tmp_path.glob("*rtex*")) and not (tmp_path / "o" / "search_out").exists()


@pytest.fixture(scope="module")
def supernet_2cls(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "ofa2.pth"
    save_supernet(OFAMobileNetV3(SPACE, n_classes=2), path)
    return str(path)


def test_bad_input_is_one_line_exit_2(run, predictor_file, supernet_2cls, tmp_path, monkeypatch):
    import ofa_deploy.search.api as api

    monkeypatch.setattr(api, "DEFAULT_PREDICTOR", tmp_path / "none" / "acc_predictor.pt")
    other = tmp_path / "w12.pt"
    save_predictor(Predictor(AccuracyPredictorNet(n_features("ofa_mbv3_d234_e346_k357_w1.2")),
                             PredictorMeta("ofa_mbv3_d234_e346_k357_w1.2", 1000, "x", 0.7)), other)
    base = ["search", "--target", "vta-ultra96", "-o", str(tmp_path / "out")]
    cases = [
        ([], "no accuracy predictor is installed"),
        (["--acc-predictor", predictor_file, "--latency-ms", "3"], "the fastest subnet takes 6.8"),
        (["--acc-predictor", predictor_file, "--objective", "fastest"], "--objective: unknown 'fastest'"),
        (["--acc-predictor", predictor_file, "--verify-top", "2"], "no device is reachable for target 'vta-ultra96'"),
        (["--acc-predictor", predictor_file, "--supernet", supernet_2cls], "has 2 classes but the predictor was trained for 1000"),
        (["--acc-predictor", str(other), "--supernet", supernet_2cls], "does not match the predictor's space"),
        (["--acc-predictor", predictor_file, "--latency-ms", "-4"], "--latency-ms: must be positive"),
        (["--acc-predictor", predictor_file, "--rpc", "127.0.0.1:9"], "add --verify-top K"),
        (["--acc-predictor", str(tmp_path / "nope.pt")], "accuracy predictor file not found"),
    ]
    for extra, message in cases:
        code, _, err = run(base + extra)
        assert code == 2 and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_verify_top_rpc_device_is_checked_before_searching(run, predictor_file, tmp_path):
    """A dead board fails in seconds with exit 2, not after the search."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run(["search", "--target", "cortex-a76", "--acc-predictor", predictor_file, "--verify-top", "2",
                        "--rpc", f"127.0.0.1:{port}", "-o", str(tmp_path / "out")])
    assert code == 2 and f"127.0.0.1:{port}" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def _tiny_dataset(root, n_classes=2, per_split=3, size=16):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(n_classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_split):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_acc_dataset_resumes_after_a_kill(run, supernet_2cls, tmp_path):
    data = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "acc.jsonl"
    args = ["acc-dataset", "--supernet", supernet_2cls, "--data", str(data), "--calib-images", "4", "-o", str(out)]
    code, stdout, err = run(args + ["-n", "4"])
    assert code == 0, err
    header, records = read_records(out)
    assert header["format"] == FORMAT and header["n_classes"] == 2 and header["space"] == SPACE
    assert len({r["arch"]["image_size"] for r in records}) > 1  # several resolutions, yet ...
    assert [r["index"] for r in records] == [0, 1, 2, 3]  # ... sample order: a stopped run is a random prefix
    assert all(0 <= r["acc"] <= 1 for r in records)
    records = records[:2]
    out.write_text("\n".join(out.read_text().split("\n")[:3]) + "\n")  # as if stopped after two subnets
    first = {r["index"]: r for r in records}
    with out.open("a") as f:  # a run killed in the middle of writing a line
        f.write('{"index": 2, "id": "r1')
    code, stdout, err = run(args + ["-n", "3"])
    assert code == 0, err
    header2, records2 = read_records(out)
    assert header2 == header and sorted(r["index"] for r in records2) == [0, 1, 2]
    assert all(first[i] == r for r in records2 if (i := r["index"]) in first)  # done subnets not redone
    assert out.read_text().endswith("\n") and "3 subnets" in stdout
    code, _, err = run(args + ["-n", "3", "--seed", "1"])  # different settings: refuse to mix
    assert code == 2 and "was built with seed=0, not 1" in err
    code, _, err = run(["acc-dataset", "--supernet", supernet_2cls, "--data", str(_tiny_dataset(tmp_path / "d3", 3)),
                        "-o", str(tmp_path / "x.jsonl")])
    assert code == 2 and "dataset has 3 classes but the supernet has 2" in err


def test_acc_predictor_trains_and_reports(run, tmp_path):
    rng = np.random.default_rng(0)
    genes = random_genes(rng, 200, SPACE)
    acc = ProxyAccuracy(SPACE).predict(genes)
    from ofa_deploy.search_space.genes import genes_to_config

    lines = [json.dumps({"format": FORMAT, "version": 1, "space": SPACE, "n_classes": 10, "dataset": "demo"})]
    lines += [json.dumps({"index": i, "arch": genes_to_config(g, SPACE).to_dict(), "acc": float(a)})
              for i, (g, a) in enumerate(zip(genes, acc))]
    (tmp_path / "acc.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = run(["acc-predictor", str(tmp_path / "acc.jsonl"), "-o", str(tmp_path / "p.pt"), "--epochs", "30"])
    assert code == 0, err
    assert "Kendall tau" in out and "160 train / 40 held-out" in out
    from ofa_deploy.search import load_predictor

    p = load_predictor(tmp_path / "p.pt")
    assert p.meta.n_classes == 10 and p.meta.dataset == "demo" and -1 <= p.meta.metrics["kendall_tau"] <= 1
    code, _, err = run(["acc-predictor", str(tmp_path / "missing.jsonl")])
    assert code == 2 and "not found or empty" in err
    cfg = SubnetConfig.max().to_dict()
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + json.dumps({"index": 0, "arch": {**cfg, "e": [5] * 20},
                                                                       "acc": 0.5}) + "\n")
    code, _, err = run(["acc-predictor", str(tmp_path / "bad.jsonl")])
    assert code == 2 and "field 'e[0]' = 5 is not allowed" in err
