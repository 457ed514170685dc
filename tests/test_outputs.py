"""The output rule and bad input: no command deletes or overwrites a file it did not write.

Folders: new, empty, or an earlier output of the same command (its ``.ofa-deploy.json``), where
exactly the command's own files are replaced; anything else is refused (exit 2, one line) before
any long work. Files: new, or a file of the kind the command writes, never an input. Failures
(a full disk, a folder the user may not write, a file that is not what it claims) are one line,
and leave nothing half-written. Nothing here compiles: the refusals come first.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.outputs import MANIFEST, OutputFolder, check_output_file
from ofa_deploy.search_space import SubnetConfig
from tests.conftest import REFERENCE_DIR, SAMPLE_LATENCY_MODEL, run_cli

REFERENCE_CKPT = REFERENCE_DIR / "ofa_mbv3_d234_e346_k357_w1.0.seed7.pth"
SEARCH_FAST = ["--target", "x86-host", "--latency-ms", "15", "--population", "8", "--generations", "2",
               "--verify-top", "0"]  # no candidate compiled


def _one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The issue's folder: a user's notes, sources and the subnet config, side by side."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "notes.md").write_text("my notes\n")
    (proj / "src" / "a.py").write_text("print('mine')\n")
    SubnetConfig.min(image_size=128).to_json(proj / "s.json")
    return proj


# ------------------------------------------------------------------------- a folder of someone else's files

@pytest.mark.parametrize("args", [
    ["compile", "{proj}/s.json", "--target", "x86-host", "--random-weights", "-o", "{proj}"],
    ["compile", "{proj}/s.json", "--target", "x86-host", "--random-weights", "-o", "{proj}/src"],
    ["search", *SEARCH_FAST, "-o", "{proj}"],
    ["train", "--data", "demo", "-o", "{proj}"],
    ["demo-data", "-o", "{proj}"],
    ["tune", "--target", "x86-host", "--database", "{proj}"],
    ["tune", "--target", "x86-host", "--pack", "--database", "{proj}"],
    ["export", "{proj}/s.json", "--random-weights", "-o", "{proj}/notes.md"],
    ["export", "{proj}/s.json", "--random-weights", "-o", "{proj}/s.json"],
    ["sample", "--seed", "1", "-o", "{proj}/notes.md"],
    ["acc-dataset", "--supernet", str(REFERENCE_CKPT), "--data", "{proj}/src", "-o", "{proj}/notes.md"],
    ["acc-predictor", "{proj}/s.json", "-o", "{proj}/notes.md"],
], ids=lambda a: " ".join(w for w in a if not w.startswith("{") and "/" not in w)[:40])
def test_a_folder_or_file_the_command_did_not_write_is_refused_untouched(project, capsys, args):
    before = _tree(project)
    code, _, err = run_cli([a.format(proj=project) for a in args], capsys)
    line = _one_error_line(code, err)
    assert "refusing" in line or "input" in line or "not an ofa-deploy accuracy dataset" in line, line
    assert _tree(project) == before and sorted(os.listdir(project)) == ["notes.md", "s.json", "src"]


@pytest.mark.parametrize("where", [".", "/"])
@pytest.mark.parametrize("command", [
    ["compile", "{proj}/s.json", "--target", "x86-host", "--random-weights"],
    ["search", *SEARCH_FAST],
    ["train", "--data", "demo"],
    ["demo-data"],
])
def test_dot_and_root_are_one_line_up_front(project, capsys, monkeypatch, command, where):
    monkeypatch.chdir(project)
    code, _, err = run_cli([a.format(proj=project) for a in command] + ["-o", where], capsys)
    assert f"-o {where}: the folder holds files" in _one_error_line(code, err)
    assert sorted(os.listdir(project)) == ["notes.md", "s.json", "src"]


def test_an_empty_current_folder_is_a_fine_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["search", *SEARCH_FAST, "-o", "."], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "front.csv", "pareto.png", "subnet.json"]


def test_rerun_replaces_exactly_its_own_files(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(["search", *SEARCH_FAST, "-o", str(out)], capsys)[0] == 0
    (out / "notes.md").write_text("the user's, added later")
    first = (out / "subnet.json").stat().st_mtime_ns
    code, _, err = run_cli(["search", *SEARCH_FAST, "--seed", "1", "-o", str(out)], capsys)
    assert code == 0, err
    assert (out / "notes.md").read_text() == "the user's, added later"
    assert (out / "subnet.json").stat().st_mtime_ns != first
    assert json.loads((out / MANIFEST).read_text())["files"] == ["front.csv", "pareto.png", "subnet.json"]
    assert sorted(os.listdir(out)) == [MANIFEST, "front.csv", "notes.md", "pareto.png", "subnet.json"]
    # Another command's output folder is not this command's to write.
    code, _, err = run_cli(["compile", str(out / "subnet.json"), "--target", "x86-host", "--random-weights", "-o",
                            str(out)], capsys)
    assert "the output of 'ofa-deploy search'" in _one_error_line(code, err)


def test_stale_files_of_its_own_go_others_stay(tmp_path):
    folder = OutputFolder(tmp_path / "o", "compile", ("a.txt", "b.txt"))
    with folder.staged() as stage:
        (stage / "a.txt").write_text("1")
        (stage / "b.txt").write_text("1")
    (tmp_path / "o" / "mine.txt").write_text("user")
    with folder.staged() as stage:
        (stage / "a.txt").write_text("2")
    assert sorted(os.listdir(tmp_path / "o")) == [MANIFEST, "a.txt", "mine.txt"]
    assert (tmp_path / "o" / "a.txt").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["o"]  # no staging folder left


def test_a_failed_write_leaves_the_earlier_output_and_no_new_folder(tmp_path):
    folder = OutputFolder(tmp_path / "new" / "o", "compile", ("a.txt",))
    with pytest.raises(RuntimeError), folder.staged() as stage:
        (stage / "a.txt").write_text("half")
        raise RuntimeError("the build failed")
    assert not (tmp_path / "new").exists()  # the folders it made are gone again


def test_the_input_config_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "build"
    with OutputFolder(out, "compile", ("metadata.json", "subnet.json", "subnet.onnx", "subnet.so")).staged() as stage:
        SubnetConfig.min(image_size=128).to_json(stage / "subnet.json")
    before = (out / "subnet.json").read_bytes()
    code, _, err = run_cli(["compile", str(out / "subnet.json"), "--target", "x86-host", "--random-weights",
                            "-o", str(out)], capsys)
    assert "would replace the input" in _one_error_line(code, err)
    assert (out / "subnet.json").read_bytes() == before


def test_outputs_get_the_users_umask_not_0700(tmp_path):
    old = os.umask(0o022)
    try:
        with OutputFolder(tmp_path / "o", "search", ("a.txt",)).staged() as stage:
            (stage / "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "o").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "o" / MANIFEST).stat().st_mode) == 0o644


def test_previous_output_files_are_recognised_by_kind(tmp_path, capsys):
    sampled = tmp_path / "s.json"
    assert run_cli(["sample", "--seed", "1", "-o", str(sampled)], capsys)[0] == 0
    assert run_cli(["sample", "--seed", "2", "-o", str(sampled)], capsys)[0] == 0  # a config: replaced
    with pytest.raises(OfaDeployError, match="is a folder"):
        check_output_file(tmp_path, "a subnet config", lambda p: None)


# ------------------------------------------------------------------------- the disk and its permissions

def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    real_replace = os.replace

    def full(src, dst, *a, **k):
        if str(tmp_path) in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    code, _, err = run_cli(["sample", "--seed", "1", "-o", str(tmp_path / "s.json")], capsys)
    assert "the disk is full" in _one_error_line(code, err)
    code, _, err = run_cli(["search", *SEARCH_FAST, "-o", str(tmp_path / "out")], capsys)
    assert "the disk is full" in _one_error_line(code, err)
    assert os.listdir(tmp_path) == []  # no temp file, no staging folder, no output folder


def test_a_folder_the_user_may_not_write_is_one_line_up_front(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == locked and mode & os.W_OK else
                        real_access(p, mode, *a, **k))  # read-only for everyone: chmod alone would not stop root
    SubnetConfig.min().to_json(tmp_path / "s.json")
    for args in (["compile", str(tmp_path / "s.json"), "--target", "x86-host", "--random-weights",
                  "-o", str(locked / "out")],
                 ["sample", "--seed", "1", "-o", str(locked / "s.json")],
                 ["search", *SEARCH_FAST, "-o", str(locked)]):
        code, _, err = run_cli(args, capsys)
        assert "permission denied" in _one_error_line(code, err), args
    assert os.listdir(locked) == []


def test_a_path_no_file_system_can_hold_is_one_line(tmp_path, capsys, monkeypatch):
    """Found by tests/test_fuzz.py: a 300-character name made demo-data and acc-dataset raise OSError (ENAMETOOLONG)
    from a check before the output rule's; any other file-system error with a path is one line naming it."""
    long = str(tmp_path / ("9" * 300))
    code, _, err = run_cli(["demo-data", "-o", long], capsys)
    assert "-o" in _one_error_line(code, err) and "not a usable path" in err
    code, _, err = run_cli(["acc-dataset", "--supernet", str(REFERENCE_CKPT), "--data", long, "-n", "2", "-o",
                            str(tmp_path / "a.jsonl")], capsys)
    assert "--data" in _one_error_line(code, err) and "not a usable path" in err
    import ofa_deploy.data

    def broken(root, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp_path / "x.png"))

    monkeypatch.setattr(ofa_deploy.data, "make_demo_dataset", broken)
    code, _, err = run_cli(["demo-data", "-o", str(tmp_path / "d")], capsys)
    assert _one_error_line(code, err) == f"error: {tmp_path / 'x.png'}: {os.strerror(errno.EIO)}"


# ------------------------------------------------------------------------- files that are not what they claim

def _text(path: Path) -> Path:
    path.write_text("hello, these are my notes\n")
    return path


def _truncated(path: Path) -> Path:
    path.write_bytes(REFERENCE_CKPT.read_bytes()[:100_000])
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _pickled_object(path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": OfaDeployError("not weights")}, f)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _other_tensors(path: Path) -> Path:
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, path)
    return path


@pytest.mark.parametrize("make, says", [
    (_text, "not a PyTorch checkpoint (a text file)"),
    (_truncated, "damaged or truncated PyTorch checkpoint"),
    (_empty, "empty file, not a PyTorch checkpoint"),
    (_pickled_object, "not a"),
    (_folder, "is a folder, not a checkpoint file"),
    (_other_tensors, "not a supernet checkpoint"),
], ids=lambda v: getattr(v, "__name__", "")[1:])
@pytest.mark.parametrize("command", ["compile", "export", "search", "acc-dataset"])
def test_a_bad_supernet_file_says_what_it_is(tmp_path, capsys, make, says, command):
    bad = make(tmp_path / "bad.pth")
    cfg = tmp_path / "s.json"
    SubnetConfig.min(image_size=128).to_json(cfg)
    (tmp_path / "data").mkdir()
    args = {"compile": ["compile", str(cfg), "--target", "x86-host", "--supernet", str(bad)],
            "export": ["export", str(cfg), "--supernet", str(bad)],
            "search": ["search", *SEARCH_FAST, "--supernet", str(bad)],
            "acc-dataset": ["acc-dataset", "--supernet", str(bad), "--data", str(tmp_path / "data")]}[command]
    code, _, err = run_cli(args + ["-o", str(tmp_path / "out")], capsys)
    line = _one_error_line(code, err)
    assert says in line and "does not match" not in line and "Error" not in line, line
    assert not (tmp_path / "out").exists()


def _fake_database(path: Path, target: dict, lines: int = 3) -> Path:
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, WORKLOAD_FILE

    path.mkdir(parents=True)
    (path / WORKLOAD_FILE).write_text(json.dumps(["123", "bW9kdWxl"]) + "\n")
    (path / RECORD_FILE).write_text("".join(json.dumps([0, [[[], []], [1e-3], target, []]]) + "\n"
                                            for _ in range(lines)))
    return path


def _truncate(path: Path) -> None:
    from ofa_deploy.tuning_logs.layout import RECORD_FILE

    data = (path / RECORD_FILE).read_bytes()
    (path / RECORD_FILE).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, says", [
    ("truncated", "not a MetaSchedule tuning record"),
    ("foreign", "tuned for aarch64"),
    ("garbage", "not a MetaSchedule tuning record"),
    ("gz", "not a MetaSchedule database"),
])
def test_a_damaged_or_foreign_database_is_one_line_for_compile(tmp_path, capsys, damage, says):
    from ofa_deploy.tuning_logs.layout import RECORD_FILE, WORKLOAD_FILE

    db = tmp_path / "db"
    if damage == "foreign":
        _fake_database(db, {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "keys": ["arm_cpu", "cpu"]})
    elif damage == "truncated":
        _truncate(_fake_database(db, {"kind": "llvm", "keys": ["cpu"]}))
    elif damage == "garbage":
        db.mkdir()
        (db / WORKLOAD_FILE).write_bytes(b"\x00\x01\xff")
        (db / RECORD_FILE).write_text("hello\n")
    else:
        db.mkdir()
        (db / (WORKLOAD_FILE + ".gz")).write_bytes(b"not gzip")
        (db / (RECORD_FILE + ".gz")).write_bytes(b"\x1f\x8b")
    SubnetConfig.min(image_size=128).to_json(tmp_path / "s.json")
    before = _tree(db)
    code, _, err = run_cli(["compile", str(tmp_path / "s.json"), "--target", "x86-host", "--random-weights",
                            "--database", str(db), "-o", str(tmp_path / "out")], capsys)
    errors = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and says in errors[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and _tree(db) == before
    assert sorted(os.listdir(tmp_path)) == ["db", "s.json"]  # no staging folder


LATENCY_MODEL_DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "not JSON": lambda text: "hello\n",
    "a list": lambda text: "[1, 2, 3]\n",
    "workloads a list": lambda text: json.dumps({**json.loads(text), "workloads": [1]}),
    "calibration a string": lambda text: json.dumps({**json.loads(text), "calibration": "x"}),
}


@pytest.mark.parametrize("damage", list(LATENCY_MODEL_DAMAGE))
def test_a_damaged_latency_model_is_one_line(tmp_path, damage):
    from ofa_deploy.latency.measured import MeasuredLatencyModel

    path = tmp_path / "latency_model.json"
    path.write_text(LATENCY_MODEL_DAMAGE[damage](SAMPLE_LATENCY_MODEL.read_text()))
    with pytest.raises(OfaDeployError) as err:
        MeasuredLatencyModel.load(path)
    assert len(str(err.value).splitlines()) == 1 and str(path) in str(err.value)


def _target_dir(name: str) -> Path:
    from ofa_deploy.tuning_logs.folders import target_dir

    return target_dir(name)


@pytest.mark.parametrize("damage", ["truncated", "a list"])
def test_search_with_a_damaged_latency_model_is_one_line(tmp_path, capsys, monkeypatch, damage):
    from ofa_deploy.tuning_logs.layout import MODEL_FILE

    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "tl"))
    folder = _target_dir("x86-host")
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_text(LATENCY_MODEL_DAMAGE[damage](SAMPLE_LATENCY_MODEL.read_text()))
    code, _, err = run_cli(["search", *SEARCH_FAST, "-o", str(tmp_path / "out")], capsys)
    assert MODEL_FILE in _one_error_line(code, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.tvm
@pytest.mark.parametrize("state", [{"target": "x86-host", "tasks": []}, {"measured": [1]}], ids=["tasks", "measured"])
def test_a_damaged_tune_state_is_one_line(tmp_path, capsys, state):
    from ofa_deploy.tuning_logs.layout import STATE_FILE

    db = tmp_path / "db"
    db.mkdir()
    (db / STATE_FILE).write_text(json.dumps(state))
    code, _, err = run_cli(["tune", "--target", "x86-host", "--resolutions", "128", "--workloads", "r128/head",
                            "--trials", "1", "--budget-minutes", "0.01", "--no-progress", "--database", str(db)],
                           capsys)
    assert STATE_FILE in _one_error_line(code, err)


def test_a_run_folder_from_before_manifests_resumes_a_downloaded_checkpoint_is_refused(tmp_path, capsys):
    from ofa_deploy.train.trainer import TRAIN_FILES, is_run_folder

    run = tmp_path / "run"
    run.mkdir()
    trainer = {"phase": 0, "epochs_done": 1, "optimizer": {}, "history": [], "phases": [], "config": {}}
    torch.save({"state_dict": {}, "space": "x", "trainer": trainer}, run / "last.pth")
    OutputFolder(run, "train", TRAIN_FILES, recognise=is_run_folder).check()  # train's own, from an older version
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "supernet.pth").write_bytes(REFERENCE_CKPT.read_bytes())
    code, _, err = run_cli(["train", "--data", "demo", "-o", str(weights)], capsys)
    assert "refusing" in _one_error_line(code, err)
    assert sorted(os.listdir(weights)) == ["supernet.pth"]
