"""The latency model built by ``ofa-deploy profile`` from measured, tuned code (no TVM needed to use it).

``tuning_logs/<target>/latency_model.json`` holds the measured latency of every workload of the
space at the profiled resolutions (each block variant, stem and head, compiled with the target's
MetaSchedule database and timed with TVM's time_evaluator; see :mod:`ofa_deploy.workloads`) and
a correction fitted on subnets compiled and timed end to end (:mod:`.calibration`: the sum of
isolated blocks misses VM overhead and cache effects between blocks): ``a * table_sum + b``, with
per-stage scales and resolution offsets when enough subnets were timed.

Timings taken on this machine with the speed probe are referred to one speed state of it
(``speed_scaling``, :mod:`.speed_state`): predictions are latencies in that state, and
:meth:`SpeedScaling.at` says what they become at another probe reading.

Prediction is a lookup in the corrected tables (:meth:`.Calibration.corrected`), so a batch of
10,000 subnets takes a few milliseconds and the exact fastest subnet of those tables
(:func:`.tables.argmin_additive`) is the fastest of the model. The numbers are a model's
output, so ``source = "estimated"``; ``basis`` says what they are built on.

The model is only valid for the compiled code it was measured on: it records the TVM version and
the database sha256, and :func:`load_measured_model` refuses (warning once, so search falls back
to the analytic roofline) a model whose database or TVM has changed since.

A model profiled through an RPC server under qemu (``profile --rpc-emulated``) records
``timing_source: "emulated"``: its predictions are labelled ``emulated`` (not ``estimated``), its
basis says EMULATED, and it never stands in for another device or teaches a roofline.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa_deploy.atomic import write_json
from ofa_deploy.compile.toolchain import installed_tvm_version
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space import SearchSpace, get_space
from ofa_deploy.tuning_logs.database import current_database_hash, current_transfer_hashes, target_data_layout
from ofa_deploy.tuning_logs.folders import target_dir
from ofa_deploy.tuning_logs.layout import MODEL_FILE

from .calibration import Calibration, fit_affine
from .speed_state import SpeedScaling
from .tables import argmin_additive, lookup

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_warned: set[tuple[str, str]] = set()  # (path, reason) already warned about


def tables_from_workloads(space: str | SearchSpace, resolutions: list[int] | tuple[int, ...],
                          workload_ms: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """``table[slot, k, e, r]`` and ``fixed[r]`` (stem + head) from per-workload milliseconds.

    Cells of resolutions not profiled are +inf (so such subnets are never "fast"); cells whose
    workload was not timed (a partial profile) are NaN.
    """
    from ofa_deploy.workloads import slot_key

    sp = get_space(space)
    nk, ne, nr = len(sp.kernel_choices), len(sp.expand_choices), len(sp.resolution_choices)
    table = np.full((sp.n_blocks, nk, ne, nr), np.inf)
    fixed = np.full(nr, np.inf)
    for r in resolutions:
        ri = sp.resolution_choices.index(r)
        fixed[ri] = workload_ms.get(f"r{r}/stem", np.nan) + workload_ms.get(f"r{r}/head", np.nan)
        for slot in range(sp.n_blocks):
            for ki, k in enumerate(sp.kernel_choices):
                for ei, e in enumerate(sp.expand_choices):
                    table[slot, ki, ei, ri] = workload_ms.get(slot_key(sp, slot, k, e, r), np.nan)
    return table, fixed


class MeasuredLatencyModel:
    """Per-block tables of measured tuned code + end-to-end correction (``source="estimated"``).

    ``resolutions`` are the profiled resolutions: the only ones this model (and search with it)
    allows, since code at any other resolution would be untuned and unmeasured.
    """

    source = "estimated"  # "emulated" for tables timed under an emulator (set per model from its file)
    dtype_bytes = 4  # fp32 modules

    def __init__(self, space: str | SearchSpace, table: np.ndarray, fixed: np.ndarray, calibration: Calibration, *,
                 target: str, resolutions: tuple[int, ...], basis: str, meta: dict[str, Any] | None = None) -> None:
        self.space = get_space(space)
        self.table, self.fixed, self.calibration = table, fixed, calibration
        self._corrected = calibration.corrected(table, fixed, self.space)  # what predict and fastest sum up
        self.target, self.resolutions, self.basis = target, tuple(resolutions), basis
        self.foreign_device: str | None = None  # set when it stands in for a device without a model
        self.meta = meta or {}
        self.scaling = SpeedScaling.from_dict(self.meta.get("speed_scaling"))  # None: timings not speed-referred
        if self.timing_source == "emulated":  # an emulator's tables: its predictions are no speed either
            self.source = "emulated"
        self.complete = bool(np.isfinite(self.fixed_supported()).all()
                             and np.isfinite(table[..., self._r_idx()]).all())

    @property
    def timing_source(self) -> str:
        """How the tables were timed: ``measured`` on the device, or ``emulated`` (qemu: plumbing only)."""
        return timing_source(self.meta)

    def _r_idx(self) -> list[int]:
        return [self.space.resolution_choices.index(r) for r in self.resolutions]

    def fixed_supported(self) -> np.ndarray:
        return self.fixed[self._r_idx()]

    def table_sum(self, genes: np.ndarray) -> np.ndarray:
        """Uncorrected sum of the measured workloads per row (ms): what calibration fits against."""
        return lookup(genes, self.table, self.fixed, self.space)

    def predict(self, genes: np.ndarray) -> np.ndarray:
        """(N, n_genes) gene rows -> (N,) predicted end-to-end latency (ms); inf outside ``resolutions``."""
        return lookup(genes, *self._corrected, self.space)

    def fastest(self) -> tuple[float, np.ndarray]:
        """(ms, gene row) of the fastest subnet at the profiled resolutions: exact (predictions are sums per block)."""
        return argmin_additive(*self._corrected, self.space)

    # -- file -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MeasuredLatencyModel":
        if data.get("format") != FORMAT_VERSION:
            raise OfaDeployError(f"latency model format {data.get('format')!r} is not supported; expected "
                                 f"{FORMAT_VERSION} (re-run ofa-deploy profile)")
        sp = get_space(data["space"])
        res = tuple(int(r) for r in data["resolutions"])
        ms = {k: float(v["median_ms"]) for k, v in data["workloads"].items()}
        table, fixed = tables_from_workloads(sp, res, ms)
        cal = Calibration.from_dict(data["calibration"])
        return cls(sp, table, fixed, cal, target=data["target"], resolutions=res, basis=describe_basis(data),
                   meta=data)

    @classmethod
    def load(cls, path: str | Path) -> "MeasuredLatencyModel":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise OfaDeployError(f"{path}: not a readable latency model ({err}); delete it and re-run "
                                 "ofa-deploy profile") from None
        if not isinstance(data, dict):
            raise OfaDeployError(f"{path}: not a latency model (a JSON {type(data).__name__}, expected an object); "
                                 "delete it and re-run ofa-deploy profile")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise OfaDeployError(f"{path}: malformed latency model (missing or bad field: "
                                 f"{type(err).__name__} {err}); delete it and re-run ofa-deploy profile") from None


def timing_source(data: dict[str, Any]) -> str:
    """``measured`` or ``emulated``: how a saved model's tables were timed (models from before the field: measured)."""
    return "emulated" if data.get("timing_source") == "emulated" else "measured"


def model_data_layout(data: dict[str, Any]) -> str:
    """The layout of the modules a saved model timed (models from before the field: NCHW)."""
    return str(data.get("data_layout", "NCHW"))


def _short(sha256: str | None, missing: str) -> str:
    """A database hash as the 8 characters shown to people, or ``missing`` when there is none."""
    return sha256[:8] if sha256 else missing


def describe_basis(data: dict[str, Any]) -> str:
    """One line saying what the estimate is built on, shown next to ``source`` in search output.

    A board's model names the board (its RPC key); an emulated one says so first, in capitals.
    """
    db = data.get("database_sha256")
    timed = "EMULATED (qemu: plumbing, not a device speed)" if timing_source(data) == "emulated" else "measured"
    tuned = (f"tuned-{timed} tables (db {db[:8]})" if db else
             f"{timed} tables of borrowed schedules (no database of its own)" if data.get("transfer_sha256") else
             f"untuned-{timed} tables (no database)")
    source = data.get("adapted_from")
    if isinstance(source, dict):  # another device's tables; only the correction was fitted on this one
        was = source.get("database_sha256")
        rescaled = source.get("rescaled")
        per_block = (f"re-scaled per block by the task times of {', '.join(rescaled['databases_here'])}, "
                     if isinstance(rescaled, dict) else "")
        code = f"db {_short(db, 'none')}" if db or not data.get("transfer_sha256") else "borrowed schedules"
        anchored = source.get("anchored")
        anchors = (f"anchored by {anchored['timed_blocks']} blocks timed here, "
                   if isinstance(anchored, dict) and anchored.get("timed_blocks") else "")
        tuned = (f"ADAPTED: {source.get('folder')}'s {timed} tables (db {_short(was, 'none')}), {per_block}"
                 f"{anchors}calibrated on this device's code ({code})")
    c = data["calibration"]
    terms = " with stage and resolution terms" if c.get("terms") else ""
    fit = f"{c['n']} calibration subnets{terms}, rms {c['rms_pct']:.1f} %" if c.get("n") else "not calibrated"
    res = ",".join(str(r) for r in data["resolutions"])
    threads = f" ({data['tvm_threads']} threads)" if data.get("tvm_threads") else ""
    device = data.get("device")
    board = (f" on board '{device.get('rpc_key')}' over RPC"
             if isinstance(device, dict) and device.get("kind") == "rpc" else "")
    speed = SpeedScaling.from_dict(data.get("speed_scaling"))
    referred = f", {speed.describe()}" if speed is not None else ""
    turns = f", timed {data['timing']}" if str(data.get("timing", "")).startswith("in ") else ""  # in N turns
    return (f"{tuned}, {data['target']}{board}{threads}, r{res}, TVM {data.get('tvm_version')}, {fit}{turns}"
            f"{referred}")


def save_model(path: str | Path, data: dict[str, Any]) -> None:
    """Write a model dict atomically, after checking it loads."""
    MeasuredLatencyModel.from_dict(data)
    write_json(path, data)


def mismatch(data: dict[str, Any], *, database_sha256: str | None, tvm_version: str | None,
             space: str, n_classes: int | None, transfer_sha256: list[str] | None = None,
             data_layout: str | None = None) -> str | None:
    """Why a saved model does not describe the code compiled now (None: it does).

    ``transfer_sha256``: the other devices' databases a build borrows from now; a model that
    recorded what it was built with is stale when they changed (older models did not record it).
    ``data_layout``: the layout builds use now; models from before the field timed NCHW modules.
    """
    if data_layout is not None and model_data_layout(data) != data_layout:
        return (f"it timed {model_data_layout(data)} modules and builds are {data_layout} now "
                "(other kernels, other speeds)")
    if data.get("space") != space:
        return f"it models space {data.get('space')}, not {space}"
    if n_classes is not None and n_classes > int(data.get("n_classes") or 0):
        # A smaller classifier only makes the head faster: the model stays a (slightly) safe upper bound.
        return f"it models a {data.get('n_classes')}-class head, not {n_classes}"
    if data.get("database_sha256") != database_sha256:
        was, now = data.get("database_sha256"), database_sha256
        return (f"the tuning database changed since profiling (profiled with "
                f"{_short(was, 'no database')}, now {_short(now, 'none')})")
    if tvm_version is not None and data.get("tvm_version") != tvm_version:
        return f"it was profiled with TVM {data.get('tvm_version')}, this is TVM {tvm_version}"
    if transfer_sha256 is not None and "transfer_sha256" in data and data["transfer_sha256"] != list(transfer_sha256):
        return ("the other devices' databases this device borrows schedules from changed since profiling "
                "(run 'ofa-deploy tune' here to depend on them less)")
    return None


def _warn_once(path: Path, reason: str, used: bool = False) -> None:
    """One warning per (file, reason) and process: why a model is not used (or used with a caveat)."""
    if (str(path), reason) not in _warned:
        _warned.add((str(path), reason))
        if used:
            log.warning("%s: %s", path, reason)
        else:
            log.warning("%s not used: %s; re-run 'ofa-deploy profile'. Falling back to the analytic roofline.",
                        path, reason)


def load_measured_model(target_name: str, space: str | SearchSpace, n_classes: int | None = None,
                        label: str | None = None) -> MeasuredLatencyModel | None:
    """The target's profiled model if one exists and matches the current database and TVM, else None.

    A present but stale or partial model is warned about once per process (the database or TVM moved
    on: the search falls back honestly). A damaged one (not JSON, wrong types) raises: it is the
    user's file to delete, and guessing past it would hide that the promised model is gone.
    """
    path = target_dir(target_name) / MODEL_FILE
    if not path.is_file():
        return None
    sp = get_space(space)
    model = MeasuredLatencyModel.load(path)  # OfaDeployError (exit 2) naming the file when damaged
    reason = mismatch(model.meta, database_sha256=current_database_hash(target_name),
                      transfer_sha256=current_transfer_hashes(target_name), data_layout=target_data_layout(target_name),
                      tvm_version=installed_tvm_version(), space=sp.name, n_classes=n_classes)
    if reason is None and not model.complete:
        reason = "it is a partial profile (some workloads were not timed)"
    if reason is not None:
        _warn_once(path, reason)
        return None
    if model.timing_source == "emulated":
        _warn_once(path, "its tables were timed under an emulator (profile --rpc-emulated): latencies are labelled "
                         "'emulated', plumbing only, never the device's speed; profile the real board for a model",
                   used=True)
    if label:
        model.target = label
    if n_classes is not None and n_classes != model.meta.get("n_classes"):
        _warn_once(path, f"it models a {model.meta.get('n_classes')}-class head; this {n_classes}-class "
                         "net's classifier is smaller, so its predictions are a slight upper bound", used=True)
    log.info("target %s: latency from %s (%s)", target_name, path, model.basis)
    return model



def nearest_model(target_name: str) -> tuple[Path, Any] | None:
    """(folder, identity) of the nearest other device with a latency model, or None."""
    from ofa_deploy.tuning_logs.folders import nearest_devices, target_identity

    for folder, identity in nearest_devices(target_identity(target_name), exclude=target_dir(target_name)):
        if identity.kind != "named" and (folder / MODEL_FILE).is_file() and not _emulated_file(folder / MODEL_FILE):
            return folder, identity
    return None


def _emulated_file(path: Path) -> bool:
    """True when the model at ``path`` holds emulated timings: those never stand in for another device.

    An unreadable file is not skipped here: whoever loads it says what is wrong with it.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and timing_source(data) == "emulated"


def load_nearest_model(target_name: str, space: str | SearchSpace, n_classes: int | None = None,
                       label: str | None = None) -> MeasuredLatencyModel | None:
    """Another device's measured model standing in for this device's, said in one warning line.

    Used when this device has no model of its own: the nearest device's tables describe the same
    schedules (a build here borrows them) on another CPU, so its figures are an *estimate* for
    this one, and the basis says whose they are. ``ofa-deploy profile --target T --adapt`` makes
    this device's own model from them in minutes.
    """
    from ofa_deploy.tuning_logs.folders import target_identity

    me = target_identity(target_name)
    near = nearest_model(target_name)
    from ofa_deploy.compile.profile import runs_here
    from ofa_deploy.targets import get_target

    turns = " --turns 60" if runs_here(get_target(target_name)) else ""  # timing in turns: this machine only
    fix = (f"make one: 'ofa-deploy profile --target {target_name} --adapt{turns}' (6-10 min: the nearest tables, "
           f"calibrated here) or 'ofa-deploy profile --target {target_name}{turns}' (this device's own tables and "
           "50 subnets timed end to end: ~35 min on 2 cores)")
    if near is None:
        _warn_once(target_dir(target_name) / MODEL_FILE, f"no latency model for this device ({me.describe()}) "
                   f"and none of another device to start from; {fix}", used=True)
        return None
    folder, identity = near
    try:
        model = MeasuredLatencyModel.load(folder / MODEL_FILE)
        reason = mismatch(model.meta, database_sha256=model.meta.get("database_sha256"),
                          tvm_version=installed_tvm_version(), space=get_space(space).name, n_classes=n_classes,
                          data_layout=target_data_layout(target_name))
    except OfaDeployError as err:
        reason = str(err)
    if reason is not None or not model.complete:
        _warn_once(folder / MODEL_FILE, f"no latency model for this device ({me.describe()}); the nearest, "
                   f"{folder.name}, is unusable ({reason or 'partial'}); {fix}", used=True)
        return None
    _warn_once(target_dir(target_name) / MODEL_FILE, f"no latency model for this device ({me.describe()}); "
               f"estimating from the nearest, {folder.name} ({identity.describe()}), which may be far off here; "
               f"{fix}", used=True)
    model.basis = f"ANOTHER DEVICE's measured tables: {folder.name} ({identity.describe()}), not this one; {model.basis}"
    model.foreign_device = folder.name
    model.scaling = None  # speed states are one CPU's probe readings (znver5's 1.70 us is a slowed znver3)
    model.target = label or target_name
    return model


__all__ = ["Calibration", "MeasuredLatencyModel", "describe_basis", "fit_affine", "load_measured_model",
           "load_nearest_model", "mismatch", "model_data_layout", "nearest_model", "save_model",
           "tables_from_workloads", "timing_source"]
