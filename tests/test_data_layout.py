"""Data layout: CPU modules compute in NHWC, and nothing tuned or profiled in another layout is applied to them.

A database's workloads are the fused functions of one layout; a latency model times the modules of
one layout. Applying either across layouts would schedule nothing (silently untuned code) or
promise latencies of other kernels. No TVM here: every refusal happens before a worker starts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ofa_deploy.errors import OfaDeployError
from ofa_deploy.targets import get_target, list_targets
from ofa_deploy.tuning_logs.identity import host_identity, write_identity
from ofa_deploy.tuning_logs.layout import RECORD_FILE, STATE_FILE, WORKLOAD_FILE
from tests.conftest import run_cli


@pytest.mark.parametrize("name", list_targets())
def test_cpus_compute_in_nhwc_and_gpus_in_nchw(name):
    spec = get_target(name)
    assert spec.data_layout == ("NCHW" if spec.kind == "cuda" else "NHWC")
    assert spec.host_spec().data_layout == "NHWC" or spec.kind == "cuda"  # a VTA board's module runs on its ARM


def _database(folder: Path, state: dict | None) -> Path:
    """A device folder of this machine holding an (empty) database and, optionally, a tune_state.json."""
    folder.mkdir(parents=True, exist_ok=True)
    write_identity(folder, host_identity())
    (folder / WORKLOAD_FILE).write_text("")
    (folder / RECORD_FILE).write_text("")
    if state is not None:
        (folder / STATE_FILE).write_text(json.dumps(state))
    return folder


def test_a_databases_layout_is_its_state_files_and_older_ones_are_nchw(tmp_path):
    from ofa_deploy.tuning_logs.database import database_data_layout

    assert database_data_layout(tmp_path / "none") is None
    assert database_data_layout(_database(tmp_path / "old", {"target": "x86-host"})) == "NCHW"
    assert database_data_layout(_database(tmp_path / "new", {"target": "x86-host", "data_layout": "NHWC"})) == "NHWC"
    assert database_data_layout(_database(tmp_path / "copy", None)) is None  # a cache copy: unknown, not guessed


def test_this_devices_nchw_database_is_not_used_and_the_fix_is_named(logs, caplog):
    from ofa_deploy.tuning_logs.database import default_database

    folder = _database(logs / host_identity().folder_name(), {"target": "x86-host"})
    with caplog.at_level(logging.WARNING):
        assert default_database("x86-host") is None
        assert default_database("x86-host") is None
    warnings = [r.getMessage() for r in caplog.records if str(folder) in r.getMessage()]
    assert len(warnings) == 1 and "NCHW" in warnings[0] and "NHWC" in warnings[0]
    assert "ofa-deploy tune --target x86-host" in warnings[0]
    (folder / STATE_FILE).write_text(json.dumps({"target": "x86-host", "data_layout": "NHWC"}))
    assert default_database("x86-host") == folder


def test_build_refuses_a_database_of_another_layout(logs, tmp_path):
    from ofa_deploy.compile import build_module

    folder = _database(tmp_path / "db", {"target": "x86-host"})
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"not read: the database is refused first")
    with pytest.raises(OfaDeployError, match=r"tuned in NCHW; x86-host modules are built in NHWC"):
        build_module(onnx_path, "x86-host", tmp_path / "m.so", input_name="input", input_shape=(1, 3, 8, 8),
                     database_dir=folder)
    assert not (tmp_path / "m.so").exists()


def test_tune_refuses_to_append_to_a_database_of_another_layout(logs, capsys):
    folder = _database(logs / "old", {"target": "x86-host"})
    code, _, err = run_cli(["tune", "--target", "x86-host", "--database", str(folder), "--resolutions", "128",
                            "--workloads", "r128/head", "--trials", "2", "--no-progress"], capsys)
    assert code == 2 and "tuned in NCHW" in err and "NHWC" in err
    assert (folder / RECORD_FILE).read_text() == "" and json.loads((folder / STATE_FILE).read_text()) == {
        "target": "x86-host"}


def test_other_devices_databases_of_another_layout_are_not_borrowed(logs):
    from dataclasses import replace

    from ofa_deploy.tuning_logs.database import transfer_databases

    for name, state in [("nchw", {"target": "x86-host"}), ("nhwc", {"target": "x86-host", "data_layout": "NHWC"})]:
        folder = _database(logs / name, state)  # two other CPUs of this one's vector width
        write_identity(folder, replace(host_identity(), mcpu=f"{host_identity().mcpu}-{name}"))
    # the repository's shipped folders are listed too (after these nearer ones); of the two here only NHWC is borrowed
    here = [label for label, _ in transfer_databases("x86-host") if label in ("nchw", "nhwc")]
    assert here == ["nhwc"]


def test_a_latency_model_of_another_layout_is_stale():
    from ofa_deploy.latency.measured import mismatch

    data = {"space": "s", "database_sha256": None, "tvm_version": "t"}
    kwargs = dict(database_sha256=None, tvm_version="t", space="s", n_classes=None)
    assert "timed NCHW modules" in mismatch(data, **kwargs, data_layout="NHWC")  # before the field: NCHW
    assert mismatch({**data, "data_layout": "NHWC"}, **kwargs, data_layout="NHWC") is None


def test_cover_nets_hold_every_block_variant_and_nhwc_tuning_uses_them(monkeypatch):
    """Tuning in NHWC extracts tasks from whole subnets (a block alone turns the layout at its edges and
    does its residual add outside the projection conv): they must hold every block variant of the space."""
    from ofa_deploy import workloads
    from ofa_deploy.compile import tune
    from ofa_deploy.search_space import SubnetConfig, get_space

    sp = get_space("ofa_mbv3_d234_e346_k357_w1.0")
    nets = workloads.cover_nets(sp, (128, 224))
    assert len(nets) == 2 * len(sp.kernel_choices) * len(sp.expand_choices)
    covered = {workloads.slot_key(sp, b.slot, b.kernel, b.expand, w.resolution) for w in nets
               for b in SubnetConfig.uniform(w.kernel, w.expand, min(sp.depth_choices), w.resolution, sp.name).blocks()}
    assert covered == {w.key for w in workloads.space_workloads(sp, (128, 224)) if w.kind == "block"}

    monkeypatch.setattr(workloads, "export_workloads", lambda ws, *a, **k: {w.key: __file__ for w in ws})
    keys = {layout: [m["key"] for m in tune._workload_models(sp.name, (128,), None, None, False, layout)]
            for layout in ("NHWC", "NCHW")}
    assert keys["NHWC"] == [w.key for w in workloads.cover_nets(sp, (128,))]
    assert "r128/head" in keys["NCHW"] and not any("/net/" in k for k in keys["NCHW"])
    picked = tune._workload_models(sp.name, (128,), ("r128/head", "r128/net/k3-e3"), None, False, "NHWC")
    assert [m["key"] for m in picked] == ["r128/head", "r128/net/k3-e3"]  # either kind, when asked by key


def test_nhwc_workloads_have_channels_last_edges_and_compute_the_same():
    """profile times NHWC targets' pieces with NHWC edges (the network's layout between blocks): the
    stem takes the NCHW image and gives NHWC, blocks take and give NHWC, the head takes NHWC."""
    import torch

    from ofa_deploy.errors import ConfigError
    from ofa_deploy.workloads import space_workloads, workload_module

    space = "ofa_mbv3_d234_e346_k357_w1.0"
    nchw = {w.key: w for w in space_workloads(space, (128,))}
    nhwc = {w.key: w for w in space_workloads(space, (128,), layout="NHWC")}
    assert nchw.keys() == nhwc.keys() and {w.layout for w in nhwc.values()} == {"NHWC"}
    for key, w in nhwc.items():
        n, c, h, width = nchw[key].input_shape
        assert w.input_shape == ((n, c, h, width) if w.kind == "stem" else (n, h, width, c)), key
    torch.manual_seed(0)
    for key in ("r128/stem", "r128/s2-first/k7-e6", "r128/head"):
        x = torch.randn(nchw[key].input_shape)
        with torch.no_grad():
            ref = workload_module(nchw[key], space)(x)
            got = workload_module(nhwc[key], space)(x if key.endswith("stem") else x.permute(0, 2, 3, 1))
        assert torch.equal(got, ref if ref.dim() == 2 else ref.permute(0, 2, 3, 1)), key
    with pytest.raises(ConfigError, match="layout: 'NWHC' .* allowed: NCHW, NHWC"):
        space_workloads(space, (128,), layout="NWHC")


def test_profile_timings_of_another_layout_are_not_reused(tmp_path):
    """A partial profile of NCHW modules (or one from before the field) is not resumed by an NHWC run."""
    from ofa_deploy.latency.profile import _reusable
    from ofa_deploy.tuning_logs.layout import PARTIAL_FILE

    identity = {"target": "x86-host", "space": "s", "data_layout": "NHWC"}
    for saved_layout, reused in (("NCHW", False), (None, False), ("NHWC", True)):
        saved = {**identity, "data_layout": saved_layout} if saved_layout else {"target": "x86-host", "space": "s"}
        (tmp_path / PARTIAL_FILE).write_text(json.dumps({**saved, "workloads": {"r128/head": {"median_ms": 1.0}}}))
        assert bool(_reusable(tmp_path, identity)[0]) is reused, saved_layout


def test_profile_builds_in_the_targets_layout(logs, monkeypatch):
    """Every module profile times is built as compile builds it (NHWC on a CPU); a profile that built
    the default layout would time other kernels than the database's and the deployed module's."""
    from ofa_deploy.compile import profile

    requests = []
    monkeypatch.setattr(profile, "run_worker_polling", lambda request, **_kw: requests.append(request))
    onnx = logs / "m.onnx"
    onnx.write_bytes(b"not built: the worker is replaced")
    with pytest.raises(OfaDeployError, match="returned 0 of 1 items"):
        profile.time_workloads([("r128/head", onnx, (1, 4, 4, 960))], "x86-host", progress=False)
    assert requests and requests[0]["data_layout"] == get_target("x86-host").data_layout == "NHWC"
    key = profile.module_cache_dir(get_target("x86-host"), None)
    monkeypatch.setattr(type(get_target("x86-host")), "data_layout", property(lambda _self: "NCHW"))
    assert profile.module_cache_dir(get_target("x86-host"), None) != key  # modules of two layouts never share a file


def test_a_run_into_another_folder_seeds_from_this_devices_own_database_first(logs, tmp_path):
    """A re-tune elsewhere (a fresh folder, or cold caches for a warm-timed database) starts from this CPU's best."""
    from ofa_deploy.compile.tune import seed_databases

    own = _database(logs / host_identity().folder_name(), {"target": "x86-host", "data_layout": "NHWC"})
    (own / WORKLOAD_FILE).write_text(json.dumps(["1", "bW9k"]) + "\n")
    (own / RECORD_FILE).write_text(json.dumps([0, [[[], []], [1e-3], {"kind": "llvm"}, []]]) + "\n")
    elsewhere = seed_databases("x86-host", tmp_path / "cold")
    assert [label for label, _ in elsewhere][:1] == [own.name]
    assert (Path(elsewhere[0][1]) / RECORD_FILE).read_text() == (own / RECORD_FILE).read_text()  # its best records
    assert own.name not in [label for label, _ in seed_databases("x86-host", own)]  # never its own seed source
