"""A fuzzed surface: arbitrary strings and JSON for every argument and option of every command.

The outcome of any command line is success, or exit code 2 with exactly one line on stderr
(``error: ...`` or nothing but that), never a traceback and never another exit code. Commands
whose work is long (compile, tune, profile, search, train, ...) have that work replaced by a stub
that records it was reached: the validation in front of it is what is fuzzed. Every run happens
in a scratch folder with its own tuning_logs/ and cache, so no fuzzed path or ``--pack`` touches
the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path

import click
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofa_deploy.cli import cli, main
from ofa_deploy.errors import ConfigError
from ofa_deploy.search.dataset import FORMAT, VERSION
from ofa_deploy.search_space import DEFAULT_SPACE, SubnetConfig
from tests.conftest import REFERENCE_DIR

# Per command; the whole file runs in well under a minute on 2 cores. OFA_DEPLOY_FUZZ_EXAMPLES=1000 digs deeper.
EXAMPLES = int(os.environ.get("OFA_DEPLOY_FUZZ_EXAMPLES", "40"))
FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Reached(BaseException):
    """Raised by a stub in place of a command's long work: everything in front of it accepted the input."""


# Long work, replaced by a stub: (module, attribute). Each is looked up at call time by the CLI.
HEAVY = [
    ("ofa_deploy.deploy", "export_onnx"),  # compile: everything up to the export is checked for real
    ("ofa_deploy.compile", "check_reachable"),  # --rpc: no network
    ("ofa_deploy.compile.rpc", "check_reachable"),
    ("ofa_deploy.export", "export_onnx"),
    ("ofa_deploy.search.api", "run_search"),
    ("ofa_deploy.compile.tune", "tune_target"),
    ("ofa_deploy.tuning_logs.database", "pack_database"),
    ("ofa_deploy.latency.profile", "profile_target"),
    ("ofa_deploy.latency.learned", "estimate_target"),
    ("ofa_deploy.train", "train"),
    ("ofa_deploy.data", "render_demo_image"),  # demo-data: the folder checks run, the images are not drawn
    ("ofa_deploy.search.dataset", "build_acc_dataset"),
    ("ofa_deploy.search.predictor", "train_predictor"),
    ("ofa_deploy.compile", "run_local"),  # check: the folder's files are checked for real, the module not run
]


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the inputs a user might name: good and bad configs, text, folders, checkpoints."""
    root = tmp_path_factory.mktemp("fuzz")
    SubnetConfig.min(image_size=128).to_json(root / "good.json")
    (root / "notes.txt").write_text("my notes\n")
    (root / "bad.json").write_text("{ks: [")
    (root / "array.json").write_text("[1, 2, 3]\n")
    (root / "empty.json").write_text("")
    (root / "binary.bin").write_bytes(bytes(range(256)))
    (root / "folder").mkdir()
    (root / "folder" / "keep.txt").write_text("keep")
    (root / "empty_folder").mkdir()
    (root / "acc.jsonl").write_text(json.dumps({"format": "nope"}) + "\n")
    header = {"format": FORMAT, "version": VERSION, "space": DEFAULT_SPACE, "n_classes": 10, "dataset": "demo"}
    rng = np.random.default_rng(0)
    records = [{"index": i, "arch": SubnetConfig.sample(rng).to_dict(), "acc": 0.5 + i / 100} for i in range(8)]
    (root / "acc_good.jsonl").write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
    compiled = root / "compiled"  # what compile writes, as check reads it
    compiled.mkdir()
    (compiled / "metadata.json").write_text(json.dumps({"target": {"name": "x86-host", "kind": "cpu"}, "tvm_target": {},
                                                        "subnet_id": "r128-x"}))
    (compiled / "subnet.so").write_bytes(b"\x7fELF")
    np.savez(compiled / "reference.npz", input=np.zeros((1, 3, 8, 8), np.float32), logits=np.zeros((1, 10), np.float32))
    return root


PATH_NAMES = ["good.json", "notes.txt", "bad.json", "array.json", "empty.json", "binary.bin", "folder",
              "empty_folder", "acc.jsonl", "acc_good.jsonl", "compiled", "missing.json", "folder/keep.txt", "new_dir", "new.onnx", ".", "/",
              "", " ", "..", "/proc/self/status", "/dev/null", str(REFERENCE_DIR / "ofa_mbv3_d234_e346_k357_w1.0.seed7.pth")]
WORDS = ["", " ", "-", "--", "-1", "0", "1", "2", "3", "7", "8", "2.5", "1e309", "-1e309", "nan", "NaN", "inf", "-inf",
         "99999999999999999999999999", "9" * 5000, "None", "null", "true", "false", "[]", "{}", "[1, 2]", '{"a": 1}',
         "é", "日本語", "\u202e", "\t", "x86-host", "cortex-a76", "vta-pynq", "cuda-sm80", "llvm", "llvm -mcpu=cortex-a76",
         "llvm -mcpu=nope", "nvidia/jetson-agx-orin-64gb", "224", "128", "130", "160,224", "224,", ",", "r128/head",
         "r224/head,r224/s2-first/k5-e4", "127.0.0.1:1", "127.0.0.1:1:key", "host:port:key", ":::", "300M", "5k",
         "1e3G", "accuracy", "pareto", "auto", "cpu", "cuda", "demo", "paper", "tiny", DEFAULT_SPACE, "nope_space"]
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=24)
ARGV_BYTES = st.binary(max_size=12).map(lambda b: b.replace(b"\x00", b"").decode("utf-8", "surrogateescape"))
NUMBERS = st.one_of(st.integers(-10**30, 10**30).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr))


def values(playground: Path) -> st.SearchStrategy[str]:
    paths = st.sampled_from(PATH_NAMES).map(lambda name: name if name in ("", " ", ".", "/", "..") or
                                            name.startswith("/") else str(playground / name))
    return st.one_of(st.sampled_from(WORDS), paths, TEXT, NUMBERS, ARGV_BYTES)


# A valid command line per command ({name} is a playground file): the fuzz mutates these too, so the
# checks deep in a command (past click's parsing) see bad values as well.
VALID = {
    "acc-dataset": ["--supernet", "{ref}", "--data", "{folder}", "-o", "{new}.jsonl"],
    "acc-predictor": ["{acc}", "-o", "{new}.pt"],
    "check": ["{compiled}", "--repeat", "3"],
    "compile": ["{good}", "--target", "x86-host", "--random-weights", "-o", "{new}"],
    "demo-data": ["-o", "{new}"],
    "export": ["{good}", "--random-weights", "-o", "{new}.onnx"],
    "info": ["{good}", "--layers"],
    "profile": ["--target", "x86-host", "--resolutions", "128"],
    "sample": ["--seed", "3", "-o", "{new}.json"],
    "search": ["--target", "x86-host", "--latency-ms", "15", "-o", "{new}"],
    "space": [],
    "targets": ["--kind", "cpu"],
    "train": ["--data", "demo", "-o", "{new}"],
    "tune": ["--target", "x86-host", "--resolutions", "128", "--workloads", "r128/head", "--database", "{new}"],
}


def valid_line(name: str, playground: Path) -> list[str]:
    files = {"ref": str(REFERENCE_DIR / "ofa_mbv3_d234_e346_k357_w1.0.seed7.pth"), "folder": str(playground / "folder"),
             "acc": str(playground / "acc_good.jsonl"), "good": str(playground / "good.json"),
             "new": str(playground / "out" / name), "compiled": str(playground / "compiled")}
    return [name] + [word.format(**files) for word in VALID[name]]


@st.composite
def command_lines(draw: st.DrawFn, name: str, playground: Path) -> list[str]:
    """``[name, ...]``: a valid command line with values replaced, or a random selection of options."""
    value = values(playground)
    if draw(st.booleans()):
        args = valid_line(name, playground)
        for _ in range(draw(st.integers(1, 3))):
            if len(args) > 1:
                args[draw(st.integers(1, len(args) - 1))] = draw(value)
        return args
    command = cli.commands[name]
    args = [name]
    params = [p for p in command.params if p.name not in ("help",)]
    for param in draw(st.lists(st.sampled_from(params), max_size=6)) if params else []:
        if isinstance(param, click.Argument):
            args.append(draw(value))
        elif param.is_flag:
            args.append(param.opts[0])
        else:
            args += [draw(st.sampled_from(param.opts)), draw(value)]
    if draw(st.booleans()):  # the arguments in their usual place too
        args[1:1] = [draw(value) for p in params if isinstance(p, click.Argument)]
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(0, len(args))), draw(st.sampled_from(["--help", "--debug", "-v", "--bogus"])))
    return args


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def invoke(args: list[str]) -> tuple[int | None, str, list[str]]:
    """Run ``ofa-deploy ARGS`` in-process: (exit code or None if a stub was reached, stderr, log lines).

    Log records count as stderr lines: the console script sends them there (INFO and up).
    """
    err, records = io.StringIO(), _Records()
    logging.getLogger().addHandler(records)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(args)
        code: int | None = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except Reached:
        code = None
    finally:
        logging.getLogger().removeHandler(records)
    return code, err.getvalue(), records.lines


def check_outcome(args: list[str]) -> None:
    debug = "--debug" in args
    try:
        code, err, logged = invoke(args)
    except Exception:
        if debug:  # --debug re-raises user errors with their traceback: that is its job
            return
        raise
    if code in (None, 0):
        return
    assert code == 2, f"exit code {code} for {args!r}: {err}"
    lines = [line for line in err.splitlines() if line.strip()] + logged
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{args!r} -> {lines!r}"
    assert "Traceback" not in err


@pytest.fixture
def sandbox(playground: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stubs for the long work, a private tuning_logs/ and cache, and the scratch folder as the working directory."""
    import importlib

    def reached(*args, **kwargs):
        raise Reached()

    for module, attribute in HEAVY:
        monkeypatch.setattr(importlib.import_module(module), attribute, reached)
    monkeypatch.setenv("OFA_DEPLOY_TUNING_LOGS", str(tmp_path / "tuning_logs"))
    monkeypatch.setenv("OFA_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return playground


COMMANDS = sorted(cli.commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_the_valid_line_reaches_the_work(name: str, sandbox: Path) -> None:
    """The stubs stand where the work starts: a valid command line gets there (or simply succeeds)."""
    code, err, logged = invoke(valid_line(name, sandbox))
    assert code in (None, 0), (err, logged)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", COMMANDS)
def test_any_command_line_succeeds_or_is_one_error_line(name: str, sandbox: Path) -> None:
    notes = (sandbox / "notes.txt").read_text()

    @FAST
    @given(command_lines(name, sandbox))
    def run(args: list[str]) -> None:
        check_outcome(args)

    run()
    assert (sandbox / "notes.txt").read_text() == notes  # an input is never replaced
    assert (sandbox / "folder" / "keep.txt").read_text() == "keep"


@pytest.mark.timeout(120)
def test_any_top_level_line_succeeds_or_is_one_error_line(sandbox: Path) -> None:
    words = st.one_of(st.sampled_from([*COMMANDS, "--debug", "-v", "--version", "-h", "--help", "--bogus"]),
                      values(sandbox))

    @FAST
    @given(st.lists(words, max_size=4))
    def run(args: list[str]) -> None:
        check_outcome(args)

    run()


# ------------------------------------------------------------------------------------ config parsing

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | TEXT,
                    lambda inner: st.lists(inner, max_size=22) | st.dictionaries(TEXT, inner, max_size=5),
                    max_leaves=60)
GENE = st.one_of(st.sampled_from([2, 3, 4, 5, 6, 7, 3.0, 128, 224, 188]), JSON)
SPACE = st.one_of(st.just(DEFAULT_SPACE), st.sampled_from(["ofa_mbv3_d234_e346_k357_w1.2", "x"]), JSON)


@st.composite
def arch_dicts(draw: st.DrawFn) -> object:
    """Mostly near-valid arch dicts (so validation gets deep), with arbitrary JSON at every level."""
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON)
    data = {"ks": draw(st.one_of(st.lists(GENE, min_size=18, max_size=22), JSON)),
            "e": draw(st.one_of(st.lists(GENE, min_size=18, max_size=22), JSON)),
            "d": draw(st.one_of(st.lists(GENE, min_size=4, max_size=6), JSON)),
            draw(st.sampled_from(["image_size", "r"])): draw(GENE)}
    if draw(st.booleans()):
        data["space"] = draw(SPACE)
    for key in draw(st.lists(st.sampled_from(list(data)), max_size=2, unique=True)):
        del data[key]
    data.update(draw(st.dictionaries(TEXT, JSON, max_size=2)))
    return data


def _check_config(data: object, cfg: SubnetConfig | None) -> None:
    if cfg is not None:  # accepted: then it is valid and round-trips
        assert SubnetConfig.from_dict(cfg.to_dict()) == cfg
        assert all(isinstance(v, int) for v in (*cfg.ks, *cfg.e, *cfg.d, cfg.image_size))


@FAST
@given(arch_dicts())
def test_subnet_config_from_any_json_is_valid_or_one_config_error(data: object) -> None:
    try:
        cfg = SubnetConfig.from_dict(data)  # type: ignore[arg-type]
    except ConfigError as err:
        assert len(str(err).splitlines()) == 1 and len(str(err)) < 500
        return
    _check_config(data, cfg)


@FAST
@given(arch_dicts(), st.sampled_from(["json", "truncated", "bytes"]))
def test_subnet_config_from_any_file_is_valid_or_one_config_error(tmp_path_factory, data: object, form: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "s.json"
    text = json.dumps(data, allow_nan=True)
    if form == "truncated":
        path.write_text(text[: len(text) // 2])
    elif form == "bytes":
        path.write_bytes(text.encode("utf-16"))
    else:
        path.write_text(text)
    try:
        cfg = SubnetConfig.from_json(path)
    except ConfigError as err:
        assert len(str(err).splitlines()) == 1
        return
    _check_config(data, cfg)


def test_non_finite_and_huge_genes_are_named() -> None:
    base = SubnetConfig.min().to_dict()
    for bad, shown in ((math.inf, "inf"), (math.nan, "nan"), (10**5000, "-bit integer"), (2.5, "2.5")):
        with pytest.raises(ConfigError, match=shown):
            SubnetConfig.from_dict({**base, "image_size": bad})
