"""``ofa-deploy profile``: the latency model of a whole space from measured, tuned code.

Steps (each resumable; see :func:`profile_target`):

1. Export every workload of the space at the chosen resolutions (:mod:`ofa_deploy.workloads`: stem,
   90 block variants, head per resolution), build each once with the target's MetaSchedule
   database and time it in ``passes`` passes (``compile.profile.time_workloads``: samples taken
   while the speed probe says the VM is slowed are dropped). Block timings fill
   ``table[slot, k, e, r]`` and stem + head fill ``fixed[r]`` (:func:`.measured.tables_from_workloads`).
2. Calibrate: compile ``calibrate`` subnets end to end (the same build as ``ofa-deploy compile``,
   with the database) and time them the same way: the fastest and the slowest by the tables of a
   seeded random pool, then random ones (:func:`calibration_subnets`). Refer every timing to
   one speed state of the machine (:mod:`.speed_state`: the median of an entry's steady passes,
   each scaled by its probe reading, with the elasticity fitted on these subnets' passes; the
   fastest steady pass where nothing was probed), then fit ``measured = a * table_sum + b`` (the
   sum of isolated blocks misses the VM's per-call work and cache effects between blocks), with a
   scale per stage and an offset per resolution from 24 subnets on (:mod:`.calibration`).
3. Save ``tuning_logs/<target>/latency_model.json`` (atomic) with the TVM version and database
   sha256 it is valid for; search loads it (:func:`.choose.latency_model`).

Every finished timing pass goes to ``latency_model.partial.json`` at once and every build to the
module cache, so a killed run resumes where it stopped, as long as the database, TVM version,
target, space, head, device and timing source are unchanged.

**A board over RPC** (``rpc``: ``HOST:PORT:KEY``): the modules are cross-compiled here with the
board's database (``tuning_logs/<target>/``, as ``tune --rpc`` left it) and timed on the board;
the model names the board (its identity, the key included: the same one ``tune --rpc`` recorded)
and its ``timing_source``: ``measured``, or ``emulated`` for a server under qemu (``rpc_emulated``),
whose model search labels ``emulated`` and never presents as a speed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ofa_deploy.atomic import write_json
from ofa_deploy.compile.profile import ONE_BY_ONE
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.search_space import DEFAULT_SPACE, SearchSpace, SubnetConfig, get_space
from ofa_deploy.tuning_logs.database import (current_transfer_hashes, database_hash, default_database,
                                             transfer_databases)
from ofa_deploy.tuning_logs.folders import measuring_identity, target_dir
from ofa_deploy.tuning_logs.identity import check_folder, claim_folder
from ofa_deploy.tuning_logs.layout import MODEL_FILE, PARTIAL_FILE

from .measured import (FORMAT_VERSION, Calibration, MeasuredLatencyModel, model_data_layout, save_model,
                       tables_from_workloads, timing_source)
from .speed_state import SpeedScaling, kept_timing, lowest_reading, passes_of, probed
from .tables import lookup, stage_sums

log = logging.getLogger(__name__)

SAMPLE_BATCH = 64  # sample_subnets draws candidates this many at a time, whatever n is
CALIBRATION_POOL = 24  # calibration_subnets takes its first END_PICKS picks from the ends of this many seeded subnets
END_PICKS = 12  # ... and the rest from the seeded stream after them, at random
ADAPT_CALIBRATION = 12  # --adapt's default: ~6 min on 2 cores, inside #16's 15 minutes (100 % within +-10 % on SPR)
FULL_CALIBRATION = 50  # a full profile's default: enough for the stage terms (tau 0.92 -> 0.95 on SPR; +~16 min)
# In the model file. Earlier: "ends of a pool of max(24, 2n)" (the same picks up to 12), absent: n random subnets.
CALIBRATION_DESIGN = f"ends of a pool of {CALIBRATION_POOL} (up to {END_PICKS}), then the pool's stream"


@dataclass(frozen=True)
class ProfileConfig:
    """What ``ofa-deploy profile`` does; defaults are the CLI's."""

    target: str  # registry name or TVM target string; must run on this machine
    resolutions: tuple[int, ...] = (224,)  # profiled resolutions: search is restricted to them
    calibrate: int | None = None  # subnets timed end to end for the correction; None: the mode's (calibration_count)
    database_dir: str | None = None  # default: tuning_logs/<target>/ when it holds a database (else untuned)
    space: str = DEFAULT_SPACE
    n_classes: int | None = None  # classifier width; None: the space's (1000)
    seed: int = 0  # the calibration subnets' pool is sampled from numpy's PCG64 with this seed
    keys: tuple[str, ...] | None = None  # only these workloads (tests): the model is then partial
    out_dir: str | None = None  # default: tuning_logs/<target>/
    settings: Any = None  # compile.profile.ProfileSettings; None: its defaults
    adapt_from: str | None = None  # a device folder with a latency model: reuse its tables, only calibrate here
    time_blocks: int = 0  # with adapt_from: time this many blocks (largest share first) here, move the rest by them
    rpc: str | None = None  # HOST:PORT:KEY: time on the board registered under KEY at this RPC tracker
    rpc_emulated: bool = False  # the --rpc server runs under qemu: timings and model are "emulated"
    recalibrate: bool = False  # keep the finished model's tables, time its calibration subnets again now

    def __post_init__(self) -> None:
        if self.calibrate is not None and self.calibrate < 0:
            raise OfaDeployError(f"--calibrate must be >= 0, got {self.calibrate}")
        if not self.resolutions:
            raise OfaDeployError("--resolutions: give at least one resolution, e.g. 224")
        if self.time_blocks < 0:
            raise OfaDeployError(f"--time-blocks must be >= 0, got {self.time_blocks}")
        if self.recalibrate and self.calibrate is not None and self.calibrate < 2:
            raise OfaDeployError(f"--recalibrate refits the correction on the --calibrate subnets; got --calibrate "
                                 f"{self.calibrate}, allowed 2 or more")
        if self.time_blocks and self.adapt_from is None:
            raise OfaDeployError("--time-blocks: anchors another device's tables; give --adapt too (without it "
                                 "profile times every block)")


@dataclass
class ProfileReport:
    """What a profile run produced."""

    path: Path
    model: Any  # MeasuredLatencyModel
    timed: int  # workloads timed in this run
    reused: int  # workloads reused from an earlier (killed) run or an existing model
    calibration: list[dict[str, Any]] = field(default_factory=list)


def _identity(spec: Any, db_hash: str | None, space: str, n_classes: int, threads: int | None,
              timing_source: str = "measured", timing: str = ONE_BY_ONE) -> dict[str, Any]:
    """What timings depend on: reuse old timings only if all of it is unchanged.

    ``threads``: TVM's pool here (None on a board: its server's); ``timing_source``: ``measured``
    or ``emulated`` (an emulator's timings never mix with a device's); ``timing``: one model after
    another or in turns (``ProfileSettings.timing``: the two see the machine's drift differently).
    """
    from ofa_deploy.compile.toolchain import installed_tvm_version

    return {"target": spec.name, "tvm_target": spec.tvm_target, "tvm_version": installed_tvm_version(),
            "database_sha256": db_hash, "transfer_sha256": current_transfer_hashes(spec.name), "space": space,
            "n_classes": n_classes, "tvm_threads": threads, "timing_source": timing_source,
            "data_layout": spec.data_layout, "timing": timing}


# What a file from before a field existed meant by its absence.
IDENTITY_DEFAULTS = {"timing_source": "measured", "data_layout": "NCHW", "timing": ONE_BY_ONE}


def _reusable(out_dir: Path, identity: dict[str, Any]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Workload records and calibration points from a partial run or a finished model with this identity."""
    workloads: dict[str, dict] = {}
    points: dict[str, dict] = {}
    for name in (MODEL_FILE, PARTIAL_FILE):
        path = out_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            log.warning("%s is unreadable; ignoring it", path)
            continue
        if not isinstance(data, dict):
            log.warning("%s is not a JSON object; ignoring it", path)
            continue
        if any(data.get(k, IDENTITY_DEFAULTS.get(k)) != v for k, v in identity.items()):
            log.info("%s was made with another database, TVM, target or head: not reused", path)
            continue
        workloads.update(_timed_here(data))
        cal = data.get("calibration", {})
        for p in (cal.get("points", []) if isinstance(cal, dict) else cal):
            points[p["id"]] = p
    return workloads, points


def _timed_here(data: dict[str, Any]) -> dict[str, dict]:
    """The workload records of a model or partial file that were timed on its device, not adopted (``--adapt``).

    Adopted records carry ``adopted_from``; an adapted model from before that marker (no record
    carries it) adopted all of them. Reusing another device's timings as this one's would make a
    later full profile a copy of the adapted tables.
    """
    records = data.get("workloads", {})
    if data.get("adapted_from") and not any("adopted_from" in r for r in records.values()):
        return {}
    return {k: r for k, r in records.items() if "adopted_from" not in r}


def sample_subnets(space: str, resolutions: tuple[int, ...], n: int, seed: int,
                   table: np.ndarray | None = None) -> list[SubnetConfig]:
    """``n`` distinct seeded random subnets at ``resolutions`` (uniform over the space otherwise).

    With a partial ``table`` (NaN cells: workloads not timed) each active block slot draws its
    (kernel, expand) among the timed variants only, so every sample can be predicted. Candidates
    come in batches of a fixed size, so the first k of a sample of n are the sample of k: a bench
    stopped early and rerun with a smaller ``n`` keeps its subnets.
    """
    from ofa_deploy.search_space.genes import canonical, genes_to_config, layout, random_genes, resolution_indices

    sp = get_space(space)
    lay = layout(sp)
    rng = np.random.default_rng(seed)
    r_choices = resolution_indices(sp, resolutions)
    out: list[SubnetConfig] = []
    seen: set[bytes] = set()
    for _ in range(100 + n // SAMPLE_BATCH):  # bounded: a tiny partial table may have fewer than n distinct subnets
        genes = random_genes(rng, SAMPLE_BATCH, sp, r_choices=r_choices)
        if table is not None and np.isnan(table).any():
            for row in genes:
                for slot in range(sp.n_blocks):
                    ok = np.argwhere(np.isfinite(table[slot, :, :, row[lay.r]]))
                    if len(ok) == 0:
                        raise OfaDeployError(f"no timed variant for block slot {slot} at "
                                             f"{sp.resolution_choices[row[lay.r]]}px; profile more workloads")
                    row[lay.ks.start + slot], row[lay.e.start + slot] = ok[rng.integers(len(ok))]
        for row, canon in zip(genes, canonical(genes, sp)):
            if canon.tobytes() not in seen and len(out) < n:
                seen.add(canon.tobytes())
                out.append(genes_to_config(row, sp))
        if len(out) >= n:
            break
    if len(out) < n:
        raise OfaDeployError(f"only {len(out)} distinct subnets can be drawn from the timed workloads; "
                             f"asked for {n}")
    return out


def calibration_subnets(space: str, resolutions: tuple[int, ...], n: int, seed: int, table: np.ndarray,
                        fixed: np.ndarray) -> list[SubnetConfig]:
    """``n`` subnets to calibrate on: the ends of a seeded random pool by table sum, then random ones of the pool.

    Why the ends first: the correction's line ``a * table_sum + b`` is pinned by how far apart its
    points lie. Random subnets crowd the middle of the range (a sum of 20 blocks), so with few of
    them the slope is mostly noise, and every prediction away from the middle inherits it. Taking
    the lowest and highest sums of a pool of :data:`CALIBRATION_POOL` random subnets spreads the
    points without leaving the subnets search meets. Measured on the accuracy rows of four models
    (``bench/calibration_design.py``: calibrate on 24 of the rows, score the rest): the ends beat as
    many random subnets at every size from 3 to 12, most at few-shot sizes (4 subnets: +2 to +12
    points within +-10 %, a fifth to two fifths of the slope's scatter).

    Why random ones after the first :data:`END_PICKS`: more subnets fit the stage and resolution
    terms (:mod:`.calibration`), which are about how blocks add up *inside* a resolution and a
    size; the ends alone would be the smallest subnets at the lowest resolution and the largest at
    the highest. The random ones are the pool's next subnets, drawn from the same seeded stream.

    Low, high, low, ... then the pool in order: the first ``m`` of ``n`` picks are the picks for ``m``.
    """
    from ofa_deploy.search_space.genes import configs_to_genes

    if n == 0:
        return []
    pool = sample_subnets(space, resolutions, CALIBRATION_POOL + max(0, n - END_PICKS), seed, table)
    ends = pool[:CALIBRATION_POOL]
    sums = lookup(configs_to_genes(ends, get_space(space)), table, fixed, get_space(space))
    return [ends[i] for i in ends_in_turns(sums, min(n, END_PICKS))] + pool[CALIBRATION_POOL:][:max(0, n - END_PICKS)]


def ends_in_turns(sums: Any, n: int) -> list[int]:
    """Indices of the ``n`` picks of :func:`calibration_subnets` among ``sums``: lowest, highest, 2nd lowest, ..."""
    if n > len(sums):
        raise ValueError(f"{n} picks from {len(sums)} sums")
    order = [int(i) for i in np.argsort(np.asarray(sums), kind="stable")]
    return [order[i // 2] if i % 2 == 0 else order[-1 - i // 2] for i in range(n)]


def measure_subnets(cfgs: list[SubnetConfig], spec: Any, database_dir: str | Path | None, n_classes: int | None,
                    *, settings: Any = None, seed: int = 0, passes_done: dict[str, int] | None = None,
                    on_result: Any = None, progress: bool | None = True, remote: Any = None) -> dict[str, list[Any]]:
    """Compile each subnet (seeded random weights) like ``ofa-deploy compile`` and time it here (or on
    the ``remote`` board: a ``compile.profile.RemoteDevice``), in passes.

    Builds go to the module cache and timings follow ``compile.profile.time_workloads`` (the
    same worker, settings and passes as the per-block tables, so table and end-to-end numbers
    are taken the same way). Returns ``{subnet id: [LatencyMeasurement per pass timed now]}``;
    ``on_result(id, pass_index, measurement, record)`` fires as each finishes.
    """
    from ofa_deploy.compile.profile import ProfileSettings, WorkloadItem, time_workloads
    from ofa_deploy.export import INPUT_NAME, export_onnx
    from ofa_deploy.search_space import random_subnet

    with tempfile.TemporaryDirectory(prefix="ofa_deploy_subnets_") as tmp:
        items = []
        for cfg in cfgs:
            onnx_path = Path(tmp) / f"{cfg.id}.onnx"
            export_onnx(random_subnet(cfg, seed, n_classes), cfg.image_size, onnx_path, seed=seed)
            items.append(WorkloadItem(cfg.id, onnx_path, (1, 3, cfg.image_size, cfg.image_size)))
        return time_workloads(items, spec, database_dir, input_name=INPUT_NAME, settings=settings or ProfileSettings(),
                              on_result=on_result, progress=progress, passes_done=passes_done, remote=remote)


def _now() -> str:
    """UTC time to the second, ISO 8601: model files and calibration points compare as strings."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _add_pass(entry: dict[str, Any], pass_index: int, m: Any) -> dict[str, Any]:
    """``entry`` (a workload record or calibration point) with pass ``pass_index`` added and its timing updated.

    ``pass_ms`` lists the pass medians; ``median_ms``/``measured_ms`` is the fastest of the steady ones
    (``compile.profile.fastest_pass``), ``std_ms`` their spread; :func:`_refer_timings` replaces the
    timing with the speed-referred one once the calibration is timed.
    """
    from ofa_deploy.compile.profile import fastest_pass
    from ofa_deploy.compile.types import LatencyMeasurement

    passes = [dict(p) for p in entry.get("passes", [])][:pass_index] + [m.to_dict()]
    kept = fastest_pass([LatencyMeasurement(**p) for p in passes])
    return {**entry, "passes": passes, "pass_ms": [p["median_ms"] for p in passes], "median_ms": kept.median_ms,
            "std_ms": kept.std_ms, "n": kept.n, "runs_per_sample": kept.runs_per_sample, "source": kept.source,
            "device": kept.device}


def _passes_done(entries: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Timing passes each entry already has (records of the one-pass era count as none)."""
    return {k: len(v.get("passes", [])) for k, v in entries.items()}


def profile_target(cfg: ProfileConfig, *, progress: bool | None = True) -> ProfileReport:
    """Time the workloads, calibrate, and save ``latency_model.json`` (the module docstring's three steps).

    With ``cfg.adapt_from`` step 1 times only the ``cfg.time_blocks`` blocks with the largest share
    (none by default): the per-block tables of another device's model stand in for the rest, and
    the calibration (``cfg.calibrate`` subnets, timed here) is fitted on them, a few-shot transfer
    that makes a usable model in minutes (see :func:`_adopt_tables`, :mod:`.anchor`).
    """
    cfg = dataclasses.replace(cfg, calibrate=calibration_count(cfg))
    run = _start(cfg)
    if cfg.adapt_from is not None:
        earlier = run.workloads  # this device's own timings from an earlier run: --time-blocks reuses them
        source = _adopt_tables(run, cfg)
        timed, reused = _time_anchor_blocks(run, cfg, earlier, progress)
    else:
        source = None
        untimed = [w.key for w in run.wanted if w.key not in run.workloads]
        if cfg.recalibrate and untimed:
            raise OfaDeployError(f"--recalibrate keeps the tables, but {len(untimed)} of {len(run.wanted)} workloads "
                                 f"(e.g. {untimed[0]}) have no timing here with this database, TVM, target and way of timing "
                                 f"({run.settings.timing}); run 'ofa-deploy profile --target {cfg.target}' without "
                                 "--recalibrate, or recalibrate as the model was timed")
        timed, reused = _time_workloads(run, cfg.resolutions, progress)
    used, cal, scaling = _calibrate(run, cfg, progress)
    if source is not None:
        source["anchored"] = run.anchoring
    return _save(run, cfg, used, cal, scaling, timed, reused, adapted_from=source)


def calibration_count(cfg: ProfileConfig) -> int:
    """``cfg.calibrate``, or when not given: :data:`ADAPT_CALIBRATION` with ``--adapt`` (minutes, a line), the
    model's own count with ``--recalibrate`` (its subnets timed again), else :data:`FULL_CALIBRATION` (a full
    profile: enough subnets for the stage terms of :mod:`.calibration`)."""
    if cfg.calibrate is not None:
        return cfg.calibrate
    if cfg.adapt_from is not None:
        return ADAPT_CALIBRATION
    if cfg.recalibrate:
        from ofa_deploy.targets import get_target

        path = (Path(cfg.out_dir) if cfg.out_dir else target_dir(get_target(cfg.target).name)) / MODEL_FILE
        try:
            return int(json.loads(path.read_text())["calibration"]["n"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no model to recalibrate: _timed_since_model says so
    return FULL_CALIBRATION


def _time_anchor_blocks(run: _Run, cfg: ProfileConfig, earlier: dict[str, dict[str, Any]],
                        progress: bool | None) -> tuple[int, int]:
    """``--time-blocks K``: time here the K adopted blocks with the largest share of a random subnet's time.

    Their records replace the adopted ones (an earlier run's timings of them are reused); the
    untimed blocks are moved by the timed ones' ratios once the timings are referred
    (:func:`_anchor_untimed`). Returns (blocks timed now, records adopted or reused).
    """
    from .anchor import block_shares, choose_blocks

    run.adopted_ms = {k: v["median_ms"] for k, v in run.workloads.items()}
    shares = block_shares(run.space, cfg.resolutions, run.adopted_ms)
    picked = choose_blocks(shares, cfg.time_blocks)
    if not picked:
        return 0, len(run.workloads)
    log.info("adapt: timing the %d blocks with the largest share here (%.0f %% of a random subnet's adopted time)",
             len(picked), 100 * sum(shares[k] for k in picked) / sum(shares.values()))
    for key in picked:
        del run.workloads[key]
        if key in earlier:
            run.workloads[key] = earlier[key]
    timed, _ = _time_workloads(run, cfg.resolutions, progress, only=picked)
    return timed, len(run.workloads) - timed


def _anchor_untimed(run: _Run) -> None:
    """Move each adopted block by the ratio (timed here / adopted) of its stage's timed blocks (:mod:`.anchor`).

    From the adopted figures every time (``run.adopted_ms``), so a resumed run gives the same tables.
    """
    from .anchor import anchor_tables

    timed = {k: v["median_ms"] for k, v in run.workloads.items() if "adopted_from" not in v}
    anchored, how = anchor_tables(run.adopted_ms, timed)
    for key, record in run.workloads.items():
        if "adopted_from" in record:
            record.update(adopted_ms=run.adopted_ms[key], median_ms=anchored[key])
    run.anchoring = {**how.summary(), "blocks": sorted(timed), "stage_ratios": {
        g: round(r, 4) for g, r in sorted(how.group_ratio.items())}} if timed else None


def _adopt_tables(run: _Run, cfg: ProfileConfig) -> dict[str, Any]:
    """Few-shot transfer: another device's per-block tables, to be calibrated on this one.

    A block's time relative to the others' changes little between two CPUs running the same
    schedules, while the overall speed and the per-call overhead change a lot: the affine
    calibration ``measured = a * table + b`` fitted on subnets timed *here* captures exactly those
    two (HELP, NeurIPS 2021, adapts a latency predictor with ~10 samples of the new device). Where
    this device runs other schedules (its own database, or 256-bit ones borrowed where the tables
    timed AVX-512 code), each block is first re-scaled by its tasks' best times in the two
    databases (:func:`_rescale_to_this_code`), which a scale and an offset could not do.
    ``profile`` without ``--adapt-from`` then replaces it with this device's own tables.
    """
    from ofa_deploy.tuning_logs.identity import read_identity

    folder = Path(cfg.adapt_from)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise OfaDeployError(f"--adapt-from {folder}: no {MODEL_FILE} there (a device folder of tuning_logs/ "
                             "with a profiled latency model)")
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise OfaDeployError(f"--adapt-from {path}: not JSON; restore it or choose another device") from None
    missing = [r for r in cfg.resolutions if r not in data.get("resolutions", [])]
    if missing:
        raise OfaDeployError(f"--adapt-from {folder}: its model covers r{data.get('resolutions')}, not {missing}; "
                             f"allowed --resolutions: {','.join(map(str, data.get('resolutions', [])))}")
    if data.get("space") != run.space.name:
        raise OfaDeployError(f"--adapt-from {folder}: it models space {data.get('space')}, not {run.space.name}")
    if model_data_layout(data) != run.spec.data_layout:
        raise OfaDeployError(f"--adapt-from {folder}: its tables timed {model_data_layout(data)} modules and "
                             f"{run.spec.name} builds {run.spec.data_layout} (other kernels); re-profile that device, "
                             f"or profile this one without --adapt")
    if timing_source(data) == "emulated":
        raise OfaDeployError(f"--adapt-from {folder}: its tables are EMULATED timings (qemu), not a device's speed; "
                             "choose a device folder whose model was measured")
    wanted = {w.key for w in run.wanted}
    run.workloads = {k: {**v, "adopted_from": folder.name} for k, v in data["workloads"].items() if k in wanted}
    source_device = read_identity(folder)
    log.info("adapt: per-block tables of %s (%s); only the calibration is measured here", folder.name,
             source_device.describe() if source_device else "device unknown")
    return {"folder": folder.name, "device": source_device.to_json() if source_device else None,
            "created": data.get("created"), "database_sha256": data.get("database_sha256"),
            "tvm_threads": data.get("tvm_threads"), "rescaled": _rescale_to_this_code(run, cfg, folder, data)}


def _rescale_to_this_code(run: _Run, cfg: ProfileConfig, folder: Path, data: dict[str, Any]) -> dict[str, Any] | None:
    """Re-scale the adopted tables (``run.workloads``) to the code built here: :func:`rescale_tables` with the
    databases builds take schedules from, in that order: this device's own, then the ones it borrows."""
    from ofa_deploy.tuning_logs.database import transfer_folders

    own = Path(cfg.database_dir) if cfg.database_dir else target_dir(run.spec.name)
    here = [(own, run.identity["database_sha256"])] if run.database is not None else []
    here += [(f, database_hash(resolved)) for f, resolved in transfer_folders(run.spec.name)]
    run.workloads, info = rescale_tables(run.workloads, folder, data.get("database_sha256"), here, run.spec.name,
                                         run.space.name, tuple(cfg.resolutions), run.n_classes)
    return info


def rescale_tables(workloads: dict[str, dict[str, Any]], source_folder: Path, source_sha: str | None,
                   here: list[tuple[Path, str | None]], target: str, space: str, resolutions: tuple[int, ...],
                   n_classes: int | None) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Another device's workload records re-scaled block by block by the databases' task times (:mod:`.rescale`).

    The tables' task times are those of the database they timed (``source_folder``'s
    tune_state.json, checked against ``source_sha``); this code's are those of ``here``, (device
    folder, sha256 of the database builds use from it) in the order builds take schedules, each
    used only when its tune_state.json was written for that database. Returns the records and
    what was done (None, records unchanged, said in the log, when either side has no task times).
    """
    from ofa_deploy.compile.tune import workload_tasks
    from ofa_deploy.tuning_logs.database import task_best_times

    from .rescale import block_ratios, rescale_workloads

    state_sha, source = task_best_times(source_folder)
    if not source or state_sha != source_sha:
        log.warning("adapt: %s holds no task times of the database its tables timed (db %s); the tables are "
                    "taken as they are, only scaled by the calibration", source_folder.name, str(source_sha)[:8])
        return workloads, None
    times: dict[str, float] = {}
    used = []
    for path, sha in here:
        state_sha, found = task_best_times(path)
        if found and state_sha == sha:  # task times of exactly the database builds use
            used.append(f"{path.name} (db {sha[:8]})")
            for task, seconds in found.items():
                times.setdefault(task, seconds)  # the first database holding a task schedules it
    if not times:
        log.warning("adapt: the databases builds here use hold no task times; %s's tables are taken as they are",
                    source_folder.name)
        return workloads, None
    ratios = block_ratios(workload_tasks(target, space, resolutions, n_classes, set(workloads)), source, times)
    summary = ratios.summary()
    log.info("adapt: %s's tables re-scaled block by block to this code by the tasks' best times of %s (median "
             "x %.2f, 10-90 %% x %.2f..%.2f; %d of %d blocks got the median)", source_folder.name, ", ".join(used),
             summary["median_ratio"], summary["ratio_p10"], summary["ratio_p90"], summary["blocks_with_median"],
             summary["blocks"])
    return rescale_workloads(workloads, ratios), {"by": "task best times", "databases_here": used, **summary}


@dataclass
class _Run:
    """One profile run: what it times and with what, and its results so far.

    ``workloads`` (timing record per workload key) and ``points`` (calibration point per subnet id)
    start from what an earlier run with the same ``identity`` left; every new timing is added to
    them and saved to the partial file at once (:meth:`save_partial`), so a killed run resumes.
    """

    spec: Any  # TargetSpec
    space: SearchSpace
    n_classes: int
    settings: Any  # compile.profile.ProfileSettings
    database: Path | None  # None: untuned
    identity: dict[str, Any]  # what the timings depend on (_identity)
    out_dir: Path
    wanted: list[Any]  # the workloads this run covers (ofa_deploy.workloads.Workload): the space's, or cfg.keys
    device: Any  # DeviceIdentity of the machine timed on: the model describes it and only it
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote: Any = None  # compile.profile.RemoteDevice: the board timed on over RPC; None: this machine
    adopted_ms: dict[str, float] | None = None  # --adapt: every block's adopted (re-scaled) figure, before anchoring
    anchoring: dict[str, Any] | None = None  # --time-blocks: what the timed blocks did to the adopted ones

    def save_partial(self) -> None:
        write_json(self.out_dir / PARTIAL_FILE,
                   {**self.identity, "workloads": self.workloads, "calibration": list(self.points.values())})


def _start(cfg: ProfileConfig) -> _Run:
    """Check where the target is timed (here, or a board over RPC) and that its folder is that device's, find
    its database, list the workloads and what earlier runs timed of them."""
    from ofa_deploy.compile.isolate import tvm_threads
    from ofa_deploy.compile.profile import ProfileSettings, check_turns
    from ofa_deploy.compile.rpc import check_reachable
    from ofa_deploy.targets import get_target
    from ofa_deploy.workloads import space_workloads

    spec = get_target(cfg.target)
    remote = _timing_device(cfg, spec)
    settings = cfg.settings or ProfileSettings()
    check_turns(settings, spec, remote)  # before the board is contacted
    out_dir = Path(cfg.out_dir) if cfg.out_dir else target_dir(spec.name)
    device = measuring_identity(spec.name, remote.rpc.key if remote else None)
    check_folder(out_dir, device, "a latency model")  # a wrong board is refused before it is contacted
    if remote is not None:
        check_reachable(remote.rpc)  # seconds, one line: before anything is written or built
    sp = get_space(cfg.space)
    n_classes = cfg.n_classes or sp.n_classes
    database = Path(cfg.database_dir) if cfg.database_dir else default_database(spec.name)
    db_hash = database_hash(database) if database is not None else None
    if database is None:
        borrowed = [name for name, _ in transfer_databases(spec.name)]
        if borrowed:  # what compile builds here too: the model describes that code
            log.warning("profile %s: no MetaSchedule database of its own (tuning_logs/%s/, no --database): timing "
                        "code with schedules borrowed from %s, the rule for the rest; 'ofa-deploy tune' makes "
                        "this device's own", spec.name, target_dir(spec.name).name, ", ".join(borrowed))
        else:
            log.warning("profile %s: no MetaSchedule database (tuning_logs/%s/ has none, no --database): timing "
                        "UNTUNED code; run 'ofa-deploy tune' first for a model of tuned code", spec.name,
                        target_dir(spec.name).name)
    identity = _identity(spec, db_hash, sp.name, n_classes, None if remote else tvm_threads(settings.num_threads),
                         remote.source if remote else "measured", settings.timing)
    workloads = space_workloads(sp, cfg.resolutions, n_classes, spec.data_layout)  # edges in the network's layout
    if cfg.keys is not None:
        unknown = sorted(set(cfg.keys) - {w.key for w in workloads})
        if unknown:
            raise OfaDeployError(f"keys: {unknown[0]} is not a workload at resolutions {list(cfg.resolutions)} "
                                 f"(e.g. {workloads[1].key})")
        workloads = [w for w in workloads if w.key in set(cfg.keys)]
    claim_folder(out_dir, device, "a latency model")
    identity["device"] = device.to_json()  # saved in the model as is: timings of another device are not reused
    done, points = _reusable(out_dir, identity)
    if cfg.recalibrate:
        points = _timed_since_model(out_dir, points, spec.name)
    done = {k: v for k, v in done.items() if k in {w.key for w in workloads}}
    return _Run(spec, sp, n_classes, settings, database, identity, out_dir, workloads, device, done, points,
                remote=remote)


def _timed_since_model(out_dir: Path, points: dict[str, dict[str, Any]], target: str) -> dict[str, dict[str, Any]]:
    """``--recalibrate``: the calibration points timed after the finished model was made, i.e. a killed
    recalibration's (each point records when its last pass ended); the model's own are timed again."""
    path = out_dir / MODEL_FILE
    try:
        created = json.loads(path.read_text())["created"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OfaDeployError(f"--recalibrate: {path} is no latency model to recalibrate; run 'ofa-deploy profile "
                             f"--target {target}' (the full tables) or 'profile --adapt' first") from None
    return {k: p for k, p in points.items() if str(p.get("timed_at", "")) > str(created)}


def _timing_device(cfg: ProfileConfig, spec: Any) -> Any:
    """Where the timings are taken: None for this machine (checked: the target runs here), else the
    ``compile.profile.RemoteDevice`` of ``cfg.rpc`` (checked: a tracker and a board key, for a target
    that does not run here). Bad input -> OfaDeployError naming the option."""
    from ofa_deploy.compile.profile import RemoteDevice, local_device, remote_device, runs_here
    from ofa_deploy.compile.rpc import RpcSpec

    if cfg.rpc is None:
        if cfg.rpc_emulated:
            raise OfaDeployError("--rpc-emulated: marks the --rpc server as running under qemu; give --rpc "
                                 "HOST:PORT:KEY too")
        try:
            local_device(spec)
        except OfaDeployError as err:
            raise OfaDeployError(f"profile: {err}; or, for an estimate from a profiled target, --estimate-from "
                                 "x86-host") from None
        return None
    rpc = RpcSpec.parse(cfg.rpc)
    if not rpc.is_tracker:
        raise OfaDeployError(f"--rpc {rpc}: profile needs an RPC tracker and the board's key (HOST:PORT:KEY), not a "
                             "server address: the key names the board the latency model belongs to")
    if runs_here(spec):
        raise OfaDeployError(f"--rpc {rpc}: target {spec.name} runs on this machine; profile it here without --rpc "
                             "(--rpc is for a board, e.g. --target cortex-a76)")
    remote_device(spec)  # analytic-only targets have nothing to time
    return RemoteDevice(rpc, cfg.rpc_emulated)


def _time_workloads(run: _Run, resolutions: tuple[int, ...], progress: bool | None,
                    only: list[str] | None = None) -> tuple[int, int]:
    """Step 1: export, build and time the workloads (``only`` these keys, if given) still short of ``passes``
    timings; (timed now, reused)."""
    from ofa_deploy.compile.profile import WorkloadItem, time_workloads
    from ofa_deploy.workloads import export_workloads

    passes = run.settings.passes
    db_hash = run.identity["database_sha256"]
    have = _passes_done(run.workloads)
    keys = None if only is None else set(only)
    wanted = [w for w in run.wanted if keys is None or w.key in keys]
    todo = [w for w in wanted if have.get(w.key, 0) < passes]
    reused = len(wanted) - len(todo)
    code = (f"database {db_hash[:8]}" if db_hash else
            "borrowed schedules" if run.identity.get("transfer_sha256") else "untuned")
    log.info("profile %s: %d workloads at %s px, %d already timed (%d passes), %d to time (%s)", run.spec.name,
             len(wanted), ",".join(map(str, resolutions)), reused, passes, len(todo), code)
    if todo:
        paths: dict[str, Path] = {}
        for w in tqdm(todo, desc="export workloads", unit="model", file=sys.stderr, leave=False,
                      disable=None if progress is None else not progress):
            paths.update(export_workloads([w], run.space, run.n_classes))  # cached: only new workloads are exported

        def keep(key: str, pass_index: int, m: Any, record: dict[str, Any]) -> None:
            run.workloads[key] = _add_pass({**run.workloads.get(key, {}), "tuned_funcs": record["tuned_funcs"],
                                            "total_funcs": record["total_funcs"], "tvm_target": record["tvm_target"],
                                            "schedule_sources": record.get("schedule_sources")}, pass_index, m)
            run.save_partial()

        time_workloads([WorkloadItem(w.key, paths[w.key], w.input_shape) for w in todo], run.spec, run.database,
                       settings=run.settings, on_result=keep, progress=progress, passes_done=have, remote=run.remote)
    return len(todo), reused


def _calibrate(run: _Run, cfg: ProfileConfig,
               progress: bool | None) -> tuple[list[dict[str, Any]], Calibration, SpeedScaling | None]:
    """Step 2: time ``cfg.calibrate`` subnets end to end (:func:`calibration_subnets`) and fit them to the tables' sums.

    Returns the calibration points used (each with its table sum, measured and predicted time and
    residual), the fitted correction and the speed state the timings were referred to
    (:func:`_refer_timings`); adopted tables are then anchored by the blocks timed here.
    """
    from ofa_deploy.search_space.genes import configs_to_genes

    sp, passes = run.space, run.settings.passes
    table, fixed = tables_from_workloads(sp, cfg.resolutions, {k: _ranking_ms(v) for k, v in run.workloads.items()})
    calib = calibration_subnets(sp.name, cfg.resolutions, cfg.calibrate, cfg.seed, table, fixed)
    have_cal = _passes_done(run.points)
    cal_todo = [c for c in calib if have_cal.get(c.id, 0) < passes]
    if cal_todo:
        log.info("calibrate %s: %d subnets end to end (%d reused)", run.spec.name, len(cal_todo),
                 len(calib) - len(cal_todo))

        def keep_point(sid: str, pass_index: int, m: Any, record: dict[str, Any]) -> None:
            sub = next(c for c in cal_todo if c.id == sid)
            point = _add_pass({**run.points.get(sid, {}), "id": sid, "config": sub.to_dict()}, pass_index, m)
            run.points[sid] = {**point, "measured_ms": point["median_ms"], "timed_at": _now()}
            run.save_partial()

        measure_subnets(cal_todo, run.spec, run.database, run.n_classes, settings=run.settings, seed=cfg.seed,
                        passes_done=have_cal, on_result=keep_point, progress=progress, remote=run.remote)
    used = [run.points[s.id] for s in calib]
    scaling = _refer_timings(run, used)
    if run.adopted_ms is not None:
        _anchor_untimed(run)
    table, fixed = tables_from_workloads(sp, cfg.resolutions, {k: v["median_ms"] for k, v in run.workloads.items()})
    genes = configs_to_genes(calib, sp)
    sums = lookup(genes, table, fixed, sp)
    for point, table_ms in zip(used, sums):
        point["table_ms"] = float(table_ms)  # a reused point meets the tables timed now
    y = np.array([p["measured_ms"] for p in used])
    cal = Calibration.fit(sums, y, stage_sums(genes, table, sp), np.array([c.image_size for c in calib]))
    for p, predicted in zip(used, lookup(genes, *cal.corrected(table, fixed, sp), sp)):
        p["predicted_ms"] = float(predicted)
        p["residual_pct"] = (p["predicted_ms"] - p["measured_ms"]) / p["measured_ms"] * 100
    return used, cal, scaling


def _ranking_ms(record: dict[str, Any]) -> float:
    """A workload's time as :func:`calibration_subnets` ranks by: its first pass where it was timed here, else
    (adopted from another device) its adopted figure.

    Why the first pass: nothing after it moves it, so the picks, once timed, stay the picks. The referred median
    moves with each fit's speed state (a refit would time other subnets), and the fastest steady pass with every
    pass added (a profile extended with more ``--passes`` built and timed other ends; seen in
    ``test_profile_tiny_set_end_to_end`` under load). A pass timed slowed ranks its block a little high; the
    ends of a pool of 24 stay near the ends.
    """
    passes = passes_of(record)
    return passes[0][0] if passes and "adopted_from" not in record else float(record["median_ms"])


def _refer_timings(run: _Run, used: list[dict[str, Any]]) -> SpeedScaling | None:
    """Each table entry's and calibration point's latency from its passes, at one speed state.

    When every pass here carries a speed-probe reading (local CPU timing), the elasticity is fitted
    on the calibration subnets and every entry becomes the median of its steady passes referred to
    the lowest reading (:mod:`.speed_state`); otherwise (a board, no calibration) the fastest
    steady pass, as before. Adopted records (``--adapt``) are another device's and stay as they are.
    Recomputed from the stored passes every time, so a resumed run gives the same numbers.
    """
    tables = [w for w in run.workloads.values() if w.get("passes") and "adopted_from" not in w]
    groups = [passes_of(w) for w in tables] + [passes_of(p) for p in used]
    scaling = None
    if used and run.remote is None and all(probed(g) for g in groups):
        scaling = SpeedScaling.fit([passes_of(p) for p in used], lowest_reading(groups))
        log.info("profile %s: timings %s, fitted on %d calibration passes", run.spec.name, scaling.describe(),
                 scaling.n_passes)
        if not scaling.fitted:
            log.warning("profile %s: %d calibration passes with too few or too alike speed-probe readings to "
                        "measure how latency follows them; k = %.1f assumed (more --calibrate or --passes fit it)",
                        run.spec.name, scaling.n_passes, scaling.elasticity)
    for entry in tables:
        entry["median_ms"] = kept_timing(passes_of(entry), scaling)
    for point in used:
        if point.get("passes"):
            point["measured_ms"] = kept_timing(passes_of(point), scaling)
    return scaling


def _save(run: _Run, cfg: ProfileConfig, used: list[dict[str, Any]], cal: Calibration,
          scaling: SpeedScaling | None, timed: int, reused: int,
          adapted_from: dict[str, Any] | None = None) -> ProfileReport:
    """Step 3: write ``latency_model.json`` (checked, atomic, naming its device) and drop the partial file."""
    done = run.workloads
    tuned = sum(v["tuned_funcs"] for v in done.values())
    total = sum(v["total_funcs"] for v in done.values())
    data = {
        "format": FORMAT_VERSION, **run.identity,
        "tvm_target_built": next((v["tvm_target"] for v in done.values() if "adopted_from" not in v), None),
        "database_dir": str(run.database) if run.database is not None else None,
        "resolutions": list(cfg.resolutions),
        "created": _now(),
        "profile_settings": dataclasses.asdict(run.settings),
        "tuned_funcs": tuned, "total_funcs": total,
        "workloads": done,
        "calibration": {**cal.to_dict(), "seed": cfg.seed, "design": CALIBRATION_DESIGN, "points": used},
        "adapted_from": adapted_from,
        "speed_scaling": scaling.to_dict() if scaling is not None else None,
    }
    path = run.out_dir / MODEL_FILE
    save_model(path, data)
    (run.out_dir / PARTIAL_FILE).unlink(missing_ok=True)
    model = MeasuredLatencyModel.from_dict(data)
    log.info("profile %s: wrote %s (%s)", run.spec.name, path, model.basis)
    return ProfileReport(path, model, timed, reused, used)
