"""Is database B better than database A on this CPU? The max / mid / min subnet built with each, timed in turns.

The before/after check for a tuning change (#15: "keep each change only where a measured
before/after says it wins"). Each subnet is built twice, exactly as ``ofa-deploy compile`` builds
(the database, then the nearest other devices' schedules for what it lacks), and the two modules
are called in turns in one process (``compile.time_interleaved``): this VM's speed drifts by up to
1.6x within minutes, so only ratios taken within a turn are comparable. Prints, per subnet, both
medians and the median of the per-turn ratios B / A with its quartiles (below 1: B is faster).

    git show HEAD:tuning_logs/x86_64-znver4-2c/database_tuning_record.json.gz > /tmp/a/...  # (both files)
    python bench/compare_databases.py --a /tmp/a --b tuning_logs/x86_64-znver4-2c --calls 300

A side may also be ``none`` (no database: the rule schedules) and may be built in another data
layout than the target's (``--layout-a NCHW``): a layout change is a before/after like any other.
Other devices' schedules are offered to a side only in the target's own layout.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from ofa_deploy.compile import build_module, time_interleaved
from ofa_deploy.export import INPUT_NAME, export_onnx, seeded_input
from ofa_deploy.search_space import random_subnet
from ofa_deploy.targets import DATA_LAYOUTS, get_target
from ofa_deploy.errors import OfaDeployError
from ofa_deploy.tuning_logs.database import resolve_database, transfer_databases
from ofa_deploy.tuning_logs.identity import host_identity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import update_benchmarks_md  # noqa: E402
from compare_runtimes import SUBNETS  # noqa: E402


def compare(a: Path | None, b: Path | None, calls: int, threads: int, work: Path,
            layouts: tuple[str | None, str | None] = (None, None)) -> dict[str, dict[str, float]]:
    """Per subnet: median ms with A and with B, and the per-turn ratio B / A (median, quartiles).

    ``None`` for a database: none (rule schedules); for a layout: the target's.
    """
    spec = get_target("x86-host")
    layouts = tuple(layout or spec.data_layout for layout in layouts)
    folders: list[Path | None] = []
    for db in (a, b):  # a packed folder (as shipped) is read through its unpacked cache copy
        resolved = resolve_database(db) if db is not None else None
        if db is not None and resolved is None:
            raise OfaDeployError(f"{db} holds no MetaSchedule database (plain or packed)")
        folders.append(resolved)
    transfers = [transfer_databases(spec.name) if layout == spec.data_layout else [] for layout in layouts]
    rows = {}
    for name, cfg in SUBNETS.items():
        onnx_path = work / f"{cfg.id}.onnx"
        export_onnx(random_subnet(cfg, seed=0), cfg.image_size, onnx_path)
        shape = (1, 3, cfg.image_size, cfg.image_size)
        modules = [build_module(onnx_path, spec, work / f"{cfg.id}.{label}.so", input_name=INPUT_NAME,
                                input_shape=shape, database_dir=db, transfer_databases=transfer,
                                data_layout=layout).so_path
                   for label, db, transfer, layout in zip(("a", "b"), folders, transfers, layouts)]
        sa, sb = time_interleaved(modules, seeded_input(shape), calls=calls, num_threads=threads)
        ratios = [y / x for x, y in zip(sa, sb)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        rows[name] = {"a_ms": statistics.median(sa), "b_ms": statistics.median(sb),
                      "ratio": statistics.median(ratios), "q1": q1, "q3": q3}
        print(name, rows[name], flush=True)
    return rows


def table(rows: dict[str, dict[str, float]], a: str, b: str) -> str:
    lines = [f"| subnet @224 | A: {a} ms | B: {b} ms | B / A per turn (median) | quartiles |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['a_ms']:.2f} | {r['b_ms']:.2f} | {r['ratio']:.3f} | "
                     f"{r['q1']:.3f} - {r['q3']:.3f} |")
    geo = statistics.geometric_mean([r["ratio"] for r in rows.values()])
    lines.append(f"\nGeomean B / A: **{geo:.3f}** (below 1: B is faster)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="database folder A (before; packed or plain), or 'none'")
    parser.add_argument("--b", required=True, help="database folder B (after), or 'none'")
    for side in ("a", "b"):
        parser.add_argument(f"--layout-{side}", choices=DATA_LAYOUTS, default=None,
                            help=f"{side.upper()}'s data layout (default: the target's)")
    parser.add_argument("--label-a", default="before")
    parser.add_argument("--label-b", default="after")
    parser.add_argument("--calls", type=int, default=300, help="calls per module, in turns")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--section", default=None,
                        help="BENCHMARKS.md section to (re)write, e.g. 'Sibling polish' (default: print only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(*(None if x == "none" else Path(x) for x in (args.a, args.b)), args.calls, args.threads,
                       Path(tmp), (args.layout_a, args.layout_b))
    text = table(rows, args.label_a, args.label_b)
    print(text)
    if args.section:
        command = shlex.join(["python", "bench/compare_databases.py", *sys.argv[1:]])
        update_benchmarks_md(f"{args.section} ({host_identity().mcpu})",
                             f"Command: `{command}`  \nMachine: {host_identity().describe()}; {args.threads} "
                             f"threads; batch 1; {args.calls} calls per module in turns.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
