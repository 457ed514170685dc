"""What every bench script shares: the repository root and the BENCHMARKS.md section writer."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def update_benchmarks_md(section: str, body: str) -> None:
    """Replace (or append) the section ``## section`` of BENCHMARKS.md, atomically."""
    from ofa_deploy.atomic import write_text

    path = REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was made by the command shown with it.\n"
    block = f"## {section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    write_text(path, text)
