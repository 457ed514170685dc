"""Device identity: every tuning_logs/ folder names its device, x86-host finds this CPU's, nothing mixes two.

No TVM here: the refusals happen before any worker starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.tuning_logs import folders
from ofa_deploy.tuning_logs.identity import (CODEGEN_FLAGS, DeviceIdentity, claim_folder, host_identity, read_identity,
                                             write_identity)
from ofa_deploy.tuning_logs.layout import IDENTITY_FILE, MODEL_FILE, RECORD_FILE, WORKLOAD_FILE
from tests.conftest import SAMPLE_LATENCY_MODEL, run_cli

AVX512 = ("avx", "avx2", "avx512f", "fma")
ZNVER5 = DeviceIdentity(kind="cpu", arch="x86_64", mcpu="znver5", isa=AVX512, cores=2, model_name="AMD EPYC")
ZNVER3 = DeviceIdentity(kind="cpu", arch="x86_64", mcpu="znver3", isa=("avx", "avx2", "fma"), cores=2,
                        model_name="AMD EPYC")


def _device_folder(root: Path, identity: DeviceIdentity, name: str | None = None) -> Path:
    folder = root / (name or identity.folder_name())
    folder.mkdir(parents=True)
    write_identity(folder, identity)
    return folder


def test_same_device_compares_what_changes_the_code_not_the_marketing_name():
    renamed = replace(ZNVER5, model_name="AMD EPYC 9R45")
    assert ZNVER5.same_device(DeviceIdentity.from_json(ZNVER5.to_json(), "here"))
    assert renamed.same_device(ZNVER5)  # VMs print "AMD EPYC" for several generations: informative only
    assert not ZNVER5.same_device(ZNVER3)
    diff = "; ".join(ZNVER5.differences(ZNVER3))
    assert "mcpu znver5 vs znver3" in diff and "+avx512f" in diff
    assert ZNVER5.folder_name() == "x86_64-znver5-2c"
    assert not replace(ZNVER5, cores=8).same_device(ZNVER5)  # tuned for 2 threads is not tuned for 8


def test_two_gpus_of_one_architecture_are_two_devices():
    """An H100 and an H200: both sm_90 with 132 multiprocessors; 1.4x apart in memory bandwidth."""
    h200 = DeviceIdentity(kind="cuda", arch="cuda", mcpu="sm_90", cores=132, model_name="NVIDIA H200")
    h100 = replace(h200, model_name="NVIDIA H100 80GB HBM3")
    assert not h200.same_device(h100) and h200.same_device(DeviceIdentity.from_json(h200.to_json(), "here"))
    assert "model_name NVIDIA H200 vs NVIDIA H100 80GB HBM3" in h200.differences(h100)
    assert (h200.folder_name(), h100.folder_name()) == ("cuda-sm_90-nvidia-h200", "cuda-sm_90-nvidia-h100-80gb-hbm3")
    assert h200.describe() == "NVIDIA H200 (cuda, -mcpu=sm_90, 132 multiprocessors)"


def test_host_identity_reads_this_machine():
    me = host_identity()
    assert me.kind == "cpu" and me.cores >= 1 and me.mcpu
    assert list(me.isa) == sorted(me.isa) and set(me.isa) <= CODEGEN_FLAGS


def test_x86_host_resolves_to_the_folder_of_this_cpu(logs, monkeypatch):
    monkeypatch.setattr(folders, "host_identity", lambda **_: ZNVER3)
    other = _device_folder(logs, ZNVER5)
    assert folders.target_dir("x86-host") == logs / "x86_64-znver3-2c"  # none yet: a new folder named after it
    mine = _device_folder(logs, ZNVER3, name="my-workstation")  # a folder may have any name: identity decides
    assert folders.target_dir("x86-host") == mine
    assert folders.target_dir("cortex-a76") == logs / "cortex-a76"  # named targets keep their registry name
    assert [f for f, _ in folders.nearest_devices(ZNVER3) if f.parent == logs] == [other]


def test_this_cpu_with_vector_features_off_is_another_device_with_its_own_folder(logs):
    """``x86-host:-avx,...`` (128-bit code on this CPU) never reads or extends the host's database or tables."""
    from ofa_deploy.tuning_logs.database import check_database_target
    from ofa_deploy.targets import get_target

    sse_name = "x86-host:-avx,-avx2,-fma,-avx512f"
    me, sse = folders.target_identity("x86-host"), folders.target_identity(sse_name)
    assert sse.mattr == ("-avx", "-avx2", "-fma", "-avx512f") and me.mattr == ()
    assert not sse.same_device(me) and "-mattr -avx,-avx2,-fma,-avx512f vs -" in "; ".join(sse.differences(me))
    assert sse.vector_bits == 128 and not {"avx", "avx2", "fma", "avx512f"} & set(sse.isa)
    assert sse.folder_name() == me.folder_name() + "-no-avx-no-avx2-no-fma-no-avx512f"
    assert folders.target_dir(sse_name) == logs / sse.folder_name() != folders.target_dir("x86-host")
    assert DeviceIdentity.from_json(sse.to_json(), "here") == sse
    old = {k: v for k, v in me.to_json().items() if k != "mattr"}  # identity.json from before the field
    assert DeviceIdentity.from_json(old, "here").same_device(me)
    # Records tuned for the full ISA are refused for the narrow target, and the other way round.
    host, narrow = get_target("x86-host"), get_target(sse_name)
    db = logs / "db"
    db.mkdir()
    (db / RECORD_FILE).write_text(json.dumps([0, [[[], []], [1e-3], host.tvm_target, []]]) + "\n")
    check_database_target(db, host.tvm_target, host.name)
    with pytest.raises(OfaDeployError, match=r"tuned with -mattr=\(none off\), but target x86-host:-avx.* has "
                                             r"-mattr=-avx,-avx2,-avx512f,-fma"):
        check_database_target(db, narrow.tvm_target, narrow.name)
    (db / RECORD_FILE).write_text(json.dumps([0, [[[], []], [1e-3], narrow.tvm_target, []]]) + "\n")
    check_database_target(db, narrow.tvm_target, narrow.name)
    with pytest.raises(OfaDeployError, match="other vector code"):
        check_database_target(db, host.tvm_target, host.name)


def test_nearest_devices_puts_the_same_architecture_first(logs):
    a76 = _device_folder(logs, DeviceIdentity(kind="named", arch="aarch64", mcpu="cortex-a76", cores=4), "cortex-a76")
    z5 = _device_folder(logs, ZNVER5)
    assert [f for f, _ in folders.nearest_devices(ZNVER3) if f.parent == logs] == [z5, a76]


def test_schedules_are_borrowed_only_from_devices_of_the_same_vector_width(logs, monkeypatch):
    """AVX-512 schedules ran slower than rule schedules on a 128-bit ISA (BENCHMARKS): an aarch64 target
    borrows from no x86 database, an AVX2 CPU from no AVX-512 one; same width or unknown width: nearest first."""
    from ofa_deploy.tuning_logs import database

    assert ZNVER5.vector_bits == 512 and ZNVER3.vector_bits == 256
    assert DeviceIdentity(kind="named", arch="aarch64", mcpu="cortex-a76").vector_bits == 128
    assert DeviceIdentity(kind="named", arch="armv7", mcpu="cortex-a9").vector_bits == 128
    assert DeviceIdentity(kind="named", arch="x86_64", mcpu="znver4").vector_bits is None  # no flags: unknown
    z5 = _device_folder(logs, ZNVER5)
    z3 = _device_folder(logs, ZNVER3)
    monkeypatch.setattr(database, "nearest_devices", lambda me, exclude=None: [
        (f, i) for f, i in folders.nearest_devices(me, exclude=exclude) if f.parent == logs])
    monkeypatch.setattr(database, "resolve_database", lambda folder: folder)
    monkeypatch.setattr(database, "best_records", lambda folder: folder)
    monkeypatch.setattr(folders, "host_identity", lambda **_: ZNVER3)
    monkeypatch.setattr(database, "target_identity", folders.target_identity)
    assert database.transfer_databases("cortex-a76") == []
    assert database.transfer_databases("x86-host") == []  # znver3 (AVX2): only znver5 (AVX-512) is there
    z3b = _device_folder(logs, replace(ZNVER3, cores=4), name="znver3-4c")
    assert database.transfer_databases("x86-host") == [("znver3-4c", z3b)]
    monkeypatch.setattr(folders, "host_identity", lambda **_: replace(ZNVER5, cores=4))
    assert [label for label, _ in database.transfer_databases("x86-host")] == [z5.name]
    assert z3.name not in [label for label, _ in database.transfer_databases("x86-host")]
    # An AVX-512 CPU tuned with AVX-512 switched off (x86-host:-avx512f) made 256-bit schedules: an AVX2 CPU
    # borrows them; the AVX-512 CPU itself does not (its own folder's code is 512-bit).
    z5_avx2 = _device_folder(logs, replace(ZNVER5, isa=("avx", "avx2", "fma"), mattr=("-avx512f",)))
    assert z5_avx2.name == "x86_64-znver5-2c-no-avx512f"
    assert z5_avx2.name not in [label for label, _ in database.transfer_databases("x86-host")]
    monkeypatch.setattr(folders, "host_identity", lambda **_: ZNVER3)
    assert [label for label, _ in database.transfer_databases("x86-host")] == ["znver3-4c", z5_avx2.name]


def test_a_fresh_tuning_logs_folder_still_sees_the_shipped_devices(logs):
    shipped = {f.name for f, _ in folders.device_folders(shipped=True)}
    assert "x86_64-znver5-2c" in shipped  # the repository's, though OFA_DEPLOY_TUNING_LOGS points elsewhere
    assert not folders.device_folders()


def test_claim_refuses_another_devices_folder_and_leaves_it_untouched(logs):
    folder = _device_folder(logs, ZNVER5)
    before = (folder / IDENTITY_FILE).read_bytes()
    with pytest.raises(OfaDeployError, match=r"mcpu znver5 vs znver3.*refusing to mix two devices"):
        claim_folder(folder, ZNVER3, "a tuning database")
    assert (folder / IDENTITY_FILE).read_bytes() == before
    claim_folder(folder, ZNVER5, "a tuning database")  # its own device: fine
    new = logs / "new"
    claim_folder(new, ZNVER3, "a latency model")
    assert read_identity(new) == ZNVER3


def test_a_named_targets_folder_is_claimed_by_its_first_real_device(logs):
    named = _device_folder(logs, DeviceIdentity(kind="named", arch="aarch64", mcpu="cortex-a76", cores=4), "cortex-a76")
    board = DeviceIdentity(kind="rpc", arch="aarch64", mcpu="cortex-a76", cores=4, rpc_key="pi5")
    claim_folder(named, board, "a tuning database")
    assert read_identity(named) == board
    with pytest.raises(OfaDeployError, match="rpc_key pi5 vs pi5b"):
        claim_folder(named, replace(board, rpc_key="pi5b"), "a tuning database")


def test_damaged_identity_is_one_line_and_skipped_when_listing(logs):
    bad = logs / "broken"
    bad.mkdir()
    (bad / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(OfaDeployError, match="not JSON"):
        read_identity(bad)
    (bad / IDENTITY_FILE).write_text(json.dumps({"format": 1, "kind": "cpu"}))
    with pytest.raises(OfaDeployError, match="lacks or mistypes a field"):
        read_identity(bad)
    assert all(f != bad for f, _ in folders.device_folders())


def test_tune_refuses_to_resume_in_another_devices_folder(logs, capsys):
    """A run resumed on another CPU (or pointed at another device's folder) never appends to it."""
    foreign = ZNVER5 if not host_identity().same_device(ZNVER5) else ZNVER3
    folder = _device_folder(logs, foreign)
    (folder / WORKLOAD_FILE).write_text("")
    (folder / RECORD_FILE).write_text("")
    code, _, err = run_cli(["tune", "--target", "x86-host", "--database", str(folder), "--resolutions", "128",
                            "--workloads", "r128/head", "--trials", "2", "--no-progress"], capsys)
    assert code == 2 and "refusing to mix two devices" in err and foreign.mcpu in err
    assert (folder / RECORD_FILE).read_text() == "" and read_identity(folder) == foreign


@pytest.fixture
def other_model(logs) -> Path:
    """A device folder next to this machine's (same CPU, twice the cores) holding a latency model.

    Its tables are a real (znver5, NCHW) model's from tests/data, relabelled as timings of the layout builds
    use now: test data for the plumbing (which model is found, what is said), not a claim about any CPU.
    """
    from ofa_deploy.targets import get_target

    me = host_identity()
    folder = _device_folder(logs, replace(me, cores=me.cores * 2))
    data = json.loads(SAMPLE_LATENCY_MODEL.read_text())
    data["data_layout"] = get_target("x86-host").data_layout
    (folder / MODEL_FILE).write_text(json.dumps(data))
    return folder


def test_search_without_a_model_for_this_device_says_so_and_names_the_estimate(other_model, capsys, caplog, tmp_path):
    """No latency model for this CPU: one warning naming the nearest device and the fix; the basis names it too."""
    from ofa_deploy.latency.measured import nearest_model

    assert nearest_model("x86-host")[0] == other_model  # the nearest device with a model
    code, out, err = run_cli(["search", "--target", "x86-host", "--latency-ms", "15", "-o", str(tmp_path / "s"),
                              "--verify-top", "0"], capsys)
    assert code == 0, err
    warning = [r.getMessage() for r in caplog.records if "no latency model for this device" in r.getMessage()]
    assert len(warning) == 1 and other_model.name in warning[0] and "ofa-deploy profile --target x86-host" in warning[0]
    saved = json.loads((tmp_path / "s" / "subnet.json").read_text())
    assert "ANOTHER DEVICE" in json.dumps(saved) and other_model.name in json.dumps(saved)


def test_profile_refuses_another_devices_folder(logs, capsys):
    foreign = ZNVER5 if not host_identity().same_device(ZNVER5) else ZNVER3
    folder = _device_folder(logs, foreign, name="elsewhere")
    (folder / MODEL_FILE).write_text("{}")
    from ofa_deploy.latency.profile import ProfileConfig, profile_target

    with pytest.raises(OfaDeployError, match="refusing to mix two devices"):
        profile_target(ProfileConfig(target="x86-host", out_dir=str(folder), calibrate=0, keys=("r128/head",),
                                     resolutions=(128,)))
    assert (folder / MODEL_FILE).read_text() == "{}"


def test_search_measures_its_picks_when_the_model_is_another_devices(other_model, capsys, monkeypatch, tmp_path):
    """The budget holds: with only another device's model, search measures its top candidates here and keeps
    one that meets the budget when measured, or says why not (exit 2) before anything is compiled by the user."""
    from ofa_deploy.search import verify

    measured = []

    def slow_device(cfg):  # this device runs everything 1.5x slower than the other device's model said
        measured.append(cfg.id)
        return 14.0 if len(measured) == 3 else 40.0, "measured"

    monkeypatch.setattr(verify, "find_measure", lambda target, rpc=None: slow_device)
    code, out, err = run_cli(["search", "--target", "x86-host", "--latency-ms", "15", "-o", str(tmp_path / "s")],
                             capsys)
    assert code == 0, err
    assert len(measured) >= 3 and len(set(measured)) == len(measured) and "measured here" in err
    saved = json.loads((tmp_path / "s" / "subnet.json").read_text())
    # the model is off here, so search ran again on it scaled and measured those picks too (all 40 ms): the one
    # that met the budget is still the answer
    assert saved["latency_source"] == "measured" and saved["latency_ms"] == 14.0
    assert [v["round"] for v in saved["verified"]][:3] == [1, 1, 1] and saved["verified"][-1]["round"] > 1
    assert DeviceIdentity.from_json(saved["measured_on"], "subnet.json").same_device(host_identity())  # named
    measured.clear()
    monkeypatch.setattr(verify, "find_measure", lambda target, rpc=None: lambda cfg: (40.0, "measured"))
    code, _, err = run_cli(["search", "--target", "x86-host", "--latency-ms", "15", "-o", str(tmp_path / "t")],
                           capsys)
    assert code == 2 and re.search(r"none of the \d+ subnets measured meets the 15 ms budget \(fastest measured "
                                   r"40.000 ms\); on this device they ran [\d.]+x the latency model's estimates", err)


def test_compile_knows_what_search_measured_on_this_device_only(tmp_path):
    """compile --measure compares with search's own measurement of the subnet when it was taken on this device."""
    from ofa_deploy.deploy import _searched_here

    me = host_identity().to_json()
    record = {"ks": [3] * 20, "latency_ms": 3.73, "latency_source": "measured", "measured_on": me}
    path = tmp_path / "subnet.json"
    path.write_text(json.dumps(record))
    assert _searched_here(str(path), me) == 3.73
    other = replace(host_identity(), cores=host_identity().cores * 2).to_json()
    assert _searched_here(str(path), other) is None  # measured on another device: not this one's figure
    path.write_text(json.dumps({**record, "latency_source": "estimated"}))
    assert _searched_here(str(path), me) is None
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "measured_on"}))  # from before it was named
    assert _searched_here(str(path), me) is None and _searched_here(None, me) is None


def test_every_shipped_database_was_tuned_for_the_device_its_folder_names():
    """A shipped folder's records carry the -mcpu and switched-off features of its identity.json: an AVX2
    database tuned on an AVX-512 CPU (``-no-avx512f``) holds no AVX-512 record, and the other way round."""
    from ofa_deploy.tuning_logs.database import _switched_off, database_targets, resolve_database

    checked = []
    for folder, identity in folders.device_folders(shipped=True):
        database = resolve_database(folder)
        if database is None or identity.arch != "x86_64":
            continue
        for recorded in database_targets(database):
            assert recorded.get("mcpu") == identity.mcpu, folder.name
            assert _switched_off(recorded) == sorted(identity.mattr), folder.name
        checked.append((folder.name, identity.vector_bits))
    assert ("x86_64-znver5-2c", 512) in checked and ("x86_64-znver5-2c-no-avx512f", 256) in checked


def test_every_shipped_latency_model_describes_its_folders_device_and_database():
    """A shipped latency model was profiled on the device its folder names, with the database shipped beside it
    (the packed file's hash), in the layout builds use, with every table entry and fused function timed tuned:
    otherwise ``search`` would present another device's or another database's timings as this one's. A CPU that
    borrows its schedules (no database of its own) names the shipped databases it borrowed; an adapted model, the
    source model it took its tables from."""
    from ofa_deploy.compile.toolchain import installed_tvm_version
    from ofa_deploy.latency.measured import MeasuredLatencyModel, mismatch
    from ofa_deploy.targets import get_target
    from ofa_deploy.tuning_logs.database import best_records, database_hash, resolve_database

    checked = []
    shipped = folders.device_folders(shipped=True)
    for folder, identity in shipped:
        if not (folder / MODEL_FILE).is_file() or identity.arch != "x86_64":
            continue
        data = json.loads((folder / MODEL_FILE).read_text())
        assert DeviceIdentity.from_json(data["device"], str(folder)).same_device(identity), folder.name
        database = resolve_database(folder)
        if database is None:  # a CPU that borrows its schedules: the model names the borrowed databases
            assert data["database_sha256"] is None and data["transfer_sha256"], folder.name
            borrowable = {database_hash(best_records(d)) for d in map(resolve_database, (f for f, i in shipped
                          if i.vector_bits == identity.vector_bits and f != folder)) if d is not None}
            assert set(data["transfer_sha256"]) <= borrowable, folder.name
        assert mismatch(data, database_sha256=database_hash(database) if database else None,
                        tvm_version=installed_tvm_version(), space=data["space"], n_classes=None,
                        data_layout=get_target("x86-host").data_layout) is None
        assert data["timing_source"] == "measured", folder.name
        if database is not None:  # its own database tunes every function (borrowed code: what transfer covers)
            assert data["tuned_funcs"] == data["total_funcs"], folder.name
        source = data.get("adapted_from")
        if source:  # adopted tables: the source's model, of the database its folder ships
            source_data = json.loads((folder.parent / source["folder"] / MODEL_FILE).read_text())
            assert source["database_sha256"] == source_data["database_sha256"], folder.name
        model = MeasuredLatencyModel.load(folder / MODEL_FILE)
        assert model.complete and data["calibration"]["n"] >= 12, folder.name
        checked.append(folder.name)
    assert "x86_64-znver5-2c" in checked and "x86_64-znver3-2c" in checked


def test_search_measures_its_picks_when_no_device_has_a_model(logs, capsys, monkeypatch, tmp_path):
    """No latency model here or on any other device: the roofline is a guess about this CPU, so search measures
    its top candidates here as it does with another device's model (the README's main job on a new machine)."""
    from ofa_deploy.latency import choose
    from ofa_deploy.search import verify

    measured = []

    def device(cfg):
        measured.append(cfg.id)
        return 9.0, "measured"

    monkeypatch.setattr(choose, "load_nearest_model", lambda *args, **kwargs: None)  # none shipped for any CPU either
    monkeypatch.setattr(verify, "find_measure", lambda target, rpc=None: device)
    code, out, err = run_cli(["search", "--target", "x86-host", "--latency-ms", "15", "-o", str(tmp_path / "s")],
                             capsys)
    assert code == 0, err
    assert len(measured) >= 3 and "analytic roofline" in err and "measured here" in err
    saved = json.loads((tmp_path / "s" / "subnet.json").read_text())
    assert saved["latency_source"] == "measured" and saved["latency_ms"] == 9.0
    measured.clear()
    code, _, err = run_cli(["search", "--target", "cortex-a76", "--latency-ms", "15", "-o", str(tmp_path / "t")],
                           capsys)  # a board that is not here: its estimate stands, labelled as one
    assert code == 0 and not measured and "measured here" not in err


def test_search_takes_only_this_devices_own_profile_as_checked():
    """unchecked_estimate: this device's own tables need no measuring; tables adopted by profile --adapt (a scale and
    an offset fitted here, the ranking still the other device's) and another device's model do; a board not here
    cannot be measured by search at all."""
    from ofa_deploy.cli.search import unchecked_estimate
    from ofa_deploy.latency.measured import MeasuredLatencyModel
    from ofa_deploy.latency.speed_state import SpeedScaling

    data = json.loads(SAMPLE_LATENCY_MODEL.read_text())
    assert unchecked_estimate("x86-host", MeasuredLatencyModel.from_dict(data)) is None
    data["adapted_from"] = {"folder": "x86_64-znver5-2c", "database_sha256": None}
    assert "x86_64-znver5-2c" in unchecked_estimate("x86-host:-avx512f", MeasuredLatencyModel.from_dict(data))
    del data["adapted_from"]
    foreign = MeasuredLatencyModel.from_dict(data)
    foreign.foreign_device = "x86_64-znver4-2c"
    assert "x86_64-znver4-2c" in unchecked_estimate("x86-host", foreign)
    assert unchecked_estimate("cortex-a76", MeasuredLatencyModel.from_dict(data)) is None
    data["calibration"]["rms_pct"] = 5.3  # this device's own, but a noisy machine's: checked as well
    assert "own profile, whose calibration scatters 5.3 % rms" in unchecked_estimate("x86-host",
                                                                                   MeasuredLatencyModel.from_dict(data))
    data["calibration"]["rms_pct"] = 2.5  # a tight calibration on a machine whose passes scatter 8 %: checked too
    assert unchecked_estimate("x86-host", MeasuredLatencyModel.from_dict(data)) is None  # (no probe: rms only)
    data["speed_scaling"] = SpeedScaling(1.7, 1.0, True, 36, 0.2).to_dict()
    for record in data["workloads"].values():
        record["passes"] = [{"median_ms": record["median_ms"] * f, "probe_us": 1.7} for f in (0.92, 1.0, 1.08)]
    assert "whose timings of one block scatter 8.0 % between passes" in unchecked_estimate(
        "x86-host", MeasuredLatencyModel.from_dict(data))
    for record in data["workloads"].values():
        record["passes"] = [{"median_ms": record["median_ms"] * f, "probe_us": 1.7} for f in (0.98, 1.0, 1.02)]
    assert unchecked_estimate("x86-host", MeasuredLatencyModel.from_dict(data)) is None  # 2 %: trusted
