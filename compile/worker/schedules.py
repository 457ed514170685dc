"""Schedules for the fused functions a device's own tuning database does not cover (worker-only: imports TVM).

Relax's CPU pipeline schedules nothing: a PrimFunc without a tuned record compiles as naive
loops, 20-33x slower than ONNX Runtime. So after the device's own database (``tuned``) every
remaining function gets the best schedule we can find without measuring anything, in this order:

``transferred``
    Another device's database holds this exact workload: its best trace is replayed as it is.
    A trace is target-independent TIR scheduling (splits, reorders, parallel, vectorise); LLVM
    lowers its vectors to the target's width, so x86 schedules also serve aarch64.
``sibling``
    A database (this device's first, then the others) holds a workload with the same blocks and
    other shapes (another resolution, kernel size or width: the space's tasks are a handful of
    operator kinds): its best trace is replayed with every tile size re-fitted to this function's
    loop extents (:func:`fit_tile`).
``default``
    A rule: inline elementwise blocks, run the outer loops in parallel, vectorise the innermost
    spatial loop (:func:`rule_schedule`).

A function none of these can schedule stays ``unscheduled`` (counted, never hidden).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from ofa_deploy.tuning_logs.layout import FAILED_RUN_SECS

log = logging.getLogger(__name__)

SCHEDULED_ATTR = "tirx.is_scheduled"
SOURCES = ("tuned", "transferred", "sibling", "default", "unscheduled")
MAX_SIBLINGS_TRIED = 4
# What a schedule primitive or a trace replay raises when it does not apply to a function (TVM maps
# its errors onto these builtins; ScheduleError is a RuntimeError): the candidate is skipped.
SCHEDULE_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, KeyError)


def is_scheduled(func: tvm.tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get(SCHEDULED_ATTR, False))


def _root_blocks(sch: s_tir.Schedule) -> list[Any]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def signature(func: tvm.tirx.PrimFunc) -> tuple[tuple[str, str], ...]:
    """What a trace replays against: the blocks' names and iterator kinds, shapes left out.

    Block names of a reduction over an input carry the input's variable name (``lv45_red``),
    which differs between models: that prefix is dropped.
    """
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    return tuple((re.sub(r"^lv\d*_?", "", sch.get(b).name_hint),
                  "".join("R" if int(iv.iter_type) == 2 else "S" for iv in sch.get(b).iter_vars))
                 for b in _root_blocks(sch))


def loop_extents(func: tvm.tirx.PrimFunc) -> list[int]:
    """Every block's loop extents, in order: the shape a sibling's distance is measured on."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    return [int(sch.get(loop).extent) for b in _root_blocks(sch) for loop in sch.get_loops(b)]


def shape_distance(a: list[int], b: list[int]) -> float:
    """Sum of |log ratio| of the extents; infinite when the loop nests differ."""
    if len(a) != len(b):
        return math.inf
    return sum(abs(math.log(max(x, 1)) - math.log(max(y, 1))) for x, y in zip(a, b))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def fit_tile(extent: int, decision: list[int]) -> list[int]:
    """Tile factors of ``extent`` closest (in log) to a sibling's ``decision``, innermost first.

    The innermost factors carry the register and vector blocking that made the sibling fast, so
    they are matched first; the outermost factor takes what is left. The product is ``extent``.
    """
    rest, fitted = extent, [1] * len(decision)
    for i in range(len(decision) - 1, 0, -1):
        want = max(1, int(decision[i]))
        best = min(_divisors(rest), key=lambda d: (abs(math.log(d) - math.log(want)), -d))
        fitted[i] = best
        rest //= best
    fitted[0] = rest
    return fitted


@dataclass
class _Entry:
    extents: list[int]
    record: Any  # ms.database.TuningRecord
    seconds: float


@dataclass
class RecordIndex:
    """The best record of each workload of one database, by structural hash and by signature."""

    label: str
    database: Any
    by_signature: dict[tuple, list[_Entry]] = field(default_factory=dict)
    _built: bool = False

    @classmethod
    def open(cls, database_dir: str, label: str) -> "RecordIndex":
        return cls(label, ms.database.JSONDatabase(work_dir=database_dir, allow_missing=False))

    def exact(self, mod: tvm.IRModule) -> tvm.tirx.PrimFunc | None:
        """This workload's best schedule in the database, or None."""
        if not self.database.has_workload(mod):
            return None
        sch = self.database.query_schedule(mod, target=tvm.target.Target("llvm"), workload_name="main")
        return None if sch is None else sch.mod["main"]

    def _build(self) -> None:
        best: dict[int, tuple[float, Any]] = {}
        for rec in self.database.get_all_tuning_records():
            secs = min((float(s) for s in rec.run_secs or []), default=math.inf)
            if secs >= FAILED_RUN_SECS:
                continue
            key = int(tvm_ffi.structural_hash(rec.workload.mod))
            if key not in best or secs < best[key][0]:
                best[key] = (secs, rec)
        for secs, rec in best.values():
            func = rec.workload.mod["main"]
            self.by_signature.setdefault(signature(func), []).append(_Entry(loop_extents(func), rec, secs))
        self._built = True

    def siblings(self, func: tvm.tirx.PrimFunc, exclude_identical: bool = False) -> list[tuple[float, _Entry]]:
        """Records of workloads with ``func``'s signature, nearest shape first."""
        if not self._built:
            self._build()
        here = loop_extents(func)
        ranked = sorted(((shape_distance(here, e.extents), e) for e in self.by_signature.get(signature(func), [])),
                        key=lambda pair: pair[0])
        return [(d, e) for d, e in ranked if d < math.inf and not (exclude_identical and d == 0)]


def replay(func: tvm.tirx.PrimFunc, trace: Any) -> s_tir.Schedule:
    """``trace`` (a sibling's) applied to ``func`` with every tile decision re-fitted to its extents.

    The returned schedule's trace holds the re-fitted decisions (a seed records it as is).
    """
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))

    def decide(inst: Any, inputs: list[Any], attrs: list[Any], decision: Any) -> Any:
        if inst.kind.name == "SamplePerfectTile":
            return fit_tile(int(sch.get(inputs[0]).extent), [int(d) for d in decision])
        return decision

    trace.apply_to_schedule(sch, remove_postproc=False, decision_provider=decide)
    return sch


def target_cores(target: tvm.target.Target) -> int:
    """The cores a target's code runs on (its ``num-cores``; 1 when it does not say): the rule's parallel grain."""
    return int(target.attrs.get("num-cores", 1)) if "num-cores" in target.attrs else 1


def rule_schedule(func: tvm.tirx.PrimFunc, cores: int) -> s_tir.Schedule | None:
    """A schedule without any record: elementwise blocks inlined, outer loops parallel, inner vectorised.

    Reduction blocks (convolutions, means) put their reduction loops outside the innermost
    spatial loop, so that loop can be vectorised. Returns None when nothing applies.

    A schedule (not just its function) because tuning measures it too: its trace is recorded as
    the first candidate of every new task (:mod:`.seeds`), so a task's best record is never a
    random schedule slower than what a build without any database would emit.
    """
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    blocks = _root_blocks(sch)
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    for b in blocks:
        blk = sch.get(b)
        if blk.name_hint in outputs or any(int(iv.iter_type) == 2 for iv in blk.iter_vars):
            continue
        try:
            sch.compute_inline(b)
        except SCHEDULE_ERRORS:
            pass  # kept as its own loop nest
    changed = False
    for b in _root_blocks(sch):
        loops = sch.get_loops(b)
        reduce_flags = [_is_reduce_loop(sch, b, loop) for loop in loops]
        spatial = [loop for loop, r in zip(loops, reduce_flags) if not r]
        reduce = [loop for loop, r in zip(loops, reduce_flags) if r]
        if not spatial:
            continue
        inner = spatial[-1]
        vec = _vector_factor(int(sch.get(inner).extent))
        outer, block_loops = spatial[:-1], []
        if vec > 1 and vec < int(sch.get(inner).extent):
            inner_o, inner = sch.split(inner, [None, vec])
            outer = outer + [inner_o]
        if reduce and len(spatial) >= 3:
            # register blocking: a few rows of another spatial axis (output channels of a
            # convolution) share each loaded weight/input and give the FMA units independent chains
            axis = spatial[-3] if int(sch.get(spatial[-3]).extent) > 1 else spatial[-2]
            rows = next((r for r in (8, 4, 2) if int(sch.get(axis).extent) % r == 0), 1)
            if rows > 1:
                axis_o, axis_i = sch.split(axis, [None, rows])
                outer = [axis_o if l.same_as(axis) else l for l in outer]
                block_loops = [axis_i]
        if reduce:
            sch.reorder(*outer, *reduce, *block_loops, inner)
        par = sch.fuse(*_parallel_prefix(sch, outer, cores)) if len(outer) > 1 else (outer[0] if outer else None)
        if par is not None and int(sch.get(par).extent) > 1:
            sch.parallel(par)
            changed = True
        if vec > 1:
            sch.vectorize(inner)
            changed = True
        for loop in block_loops:
            sch.unroll(loop)
        if reduce:
            sch.decompose_reduction(b, reduce[0])
    return sch if changed else None


def _is_reduce_loop(sch: s_tir.Schedule, block: Any, loop: Any) -> bool:
    from tvm.tirx.analysis import undefined_vars

    realize = sch.get(block)
    var = sch.get(loop).loop_var
    body = sch.get(loop).body
    while not isinstance(body, s_tir.SBlockRealize):
        body = body.seq[0] if hasattr(body, "seq") else body.body
    for iv, value in zip(realize.iter_vars, body.iter_values):
        if int(iv.iter_type) == 2 and any(var.same_as(v) for v in undefined_vars(value)):
            return True
    return False


def _vector_factor(extent: int) -> int:
    """Lanes for the innermost loop: a power of two dividing it, else the whole loop when short."""
    for lanes in (16, 8, 4):
        if extent % lanes == 0:
            return lanes
    return extent if extent <= 16 else 1


def _parallel_prefix(sch: s_tir.Schedule, loops: list[Any], cores: int) -> list[Any]:
    """The outer loops to fuse into one parallel loop: enough iterations for every core, no more."""
    chosen, product = [], 1
    for loop in loops:
        chosen.append(loop)
        product *= int(sch.get(loop).extent)
        if product >= 8 * cores:
            break
    return chosen


@dataclass
class Report:
    """Where each function's schedule came from."""

    sources: dict[str, str] = field(default_factory=dict)  # function name -> one of SOURCES

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for v in self.sources.values() if v == s) for s in SOURCES}


def schedule_module(mod: tvm.IRModule, target: tvm.target.Target, own: str | None,
                    others: Iterable[tuple[str, str]] = (), cores: int = 1) -> tuple[tvm.IRModule, Report]:
    """Schedule every PrimFunc of a prepared module; ``own``: this device's database folder.

    ``others``: (label, folder) of other devices' databases, nearest device first.
    """
    report = Report()
    if own is not None:
        with target:
            mod = tvm.relax.transform.MetaScheduleApplyDatabase(own, enable_warning=False)(mod)
    indexes = ([RecordIndex.open(own, "own")] if own is not None else []) + [RecordIndex.open(d, label)
                                                                              for label, d in others]
    foreign = indexes[1:] if own is not None else indexes
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint
        if is_scheduled(func):
            report.sources[name] = "tuned"
            continue
        plain = func.with_attr("global_symbol", "main")
        new, source = _transfer(plain, foreign, indexes), None
        if new is not None:
            new, source = new
        else:
            rule = rule_schedule(plain, cores)
            new = None if rule is None else rule.mod["main"]
            source = "default" if new is not None else "unscheduled"
        report.sources[name] = source
        if new is not None:
            attrs = {k: v for k, v in func.attrs.items()} if func.attrs is not None else {}
            attrs[SCHEDULED_ATTR] = True
            mod[gv] = new.with_attrs(attrs)
    return mod, report


def _transfer(func: tvm.tirx.PrimFunc, foreign: list[RecordIndex],
              indexes: list[RecordIndex]) -> tuple[tvm.tirx.PrimFunc, str] | None:
    mod = tvm.IRModule({"main": func})
    for index in foreign:
        exact = index.exact(mod)
        if exact is not None:
            return exact, "transferred"
    for index in indexes:
        for _, entry in index.siblings(func)[:MAX_SIBLINGS_TRIED]:
            try:
                return replay(func, entry.record.trace).mod["main"], "sibling"
            except SCHEDULE_ERRORS as exc:
                log.debug("sibling trace of %s did not replay: %s", index.label, str(exc).splitlines()[-1][:200])
    return None
