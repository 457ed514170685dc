"""What every bench script shares: the repository root, the BENCHMARKS.md section writer and the
fixed subnets the training benches report on."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The uniform subnets (kernel, expand ratio, depth) the training benches compare: smallest, middle, largest.
UNIFORM_SUBNETS = {"min (k3 e3 d2)": (3, 3, 2), "mid (k5 e4 d3)": (5, 4, 3), "max (k7 e6 d4)": (7, 6, 4)}


def update_benchmarks_md(section: str, body: str) -> None:
    """Replace (or append) the section ``## section`` of BENCHMARKS.md, atomically."""
    from ofa_deploy.atomic import write_text

    path = REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was made by the command shown with it.\n"
    block = f"## {section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    write_text(path, text)


def command_line() -> str:
    """The ``Command: ...`` line that opens a section: this script and its arguments, as run."""
    import sys

    return f"Command: `python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]) + "`"


def publish(section: str, paragraphs: list[str], write: bool) -> None:
    """Print a section (command line first) and, if ``write``, replace it in BENCHMARKS.md."""
    body = "\n\n".join([command_line(), *paragraphs])
    print(body)
    if write:
        update_benchmarks_md(section, body)
