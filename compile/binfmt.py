"""Inspect built artifacts without loading them: ELF machine, embedded CUDA fatbins.

Loading a module for the wrong CPU fails with an opaque dlopen error, and a CUDA module cannot
be loaded at all without a GPU; reading the bytes lets us check both here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7", 0xF3: "riscv64"}
FATBIN_MAGIC = 0xBA55ED50
_FATBIN_KINDS = {1: "ptx", 2: "sass"}


def elf_machine(path: str | Path) -> str | None:
    """``"x86_64"``, ``"aarch64"``, ... for an ELF file; ``None`` if not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    endian = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack_from(endian + "H", head, 18)
    return _ELF_MACHINES.get(machine, f"elf-machine-{machine:#x}")


@dataclass(frozen=True)
class FatbinEntry:
    """One image in a CUDA fatbin: ``kind`` is ``"ptx"`` or ``"sass"``; ``sm`` e.g. 87."""

    kind: str
    sm: int


def fatbin_entries(data: bytes, offset: int = 0) -> list[FatbinEntry]:
    """Images of the fatbin starting at ``offset`` (layout as written by nvcc --fatbin).

    Strict (version, header size, exact entry chain, known image kinds), so that the magic
    number turning up inside model weights is not mistaken for a fatbin.
    """
    magic, version, header_size, fat_size = struct.unpack_from("<IHHQ", data, offset)
    end = offset + header_size + fat_size
    if magic != FATBIN_MAGIC or version != 1 or header_size != 16 or end > len(data) or fat_size == 0:
        raise ValueError("not a CUDA fatbin")
    entries = []
    pos = offset + header_size
    while pos < end:
        kind, _ver, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
        sm = struct.unpack_from("<I", data, pos + 28)[0]
        if kind not in _FATBIN_KINDS or entry_header < 32 or not 10 <= sm < 1000:
            raise ValueError("not a CUDA fatbin entry")
        entries.append(FatbinEntry(_FATBIN_KINDS[kind], sm))
        pos += entry_header + payload
    if pos != end:
        raise ValueError("CUDA fatbin entries overrun")
    return entries


def embedded_fatbins(path: str | Path) -> list[list[FatbinEntry]]:
    """The CUDA fatbins embedded in a built ``.so`` (each as its list of images)."""
    data = Path(path).read_bytes()
    magic = struct.pack("<I", FATBIN_MAGIC)
    found, pos = [], data.find(magic)
    while pos != -1:
        try:
            found.append(fatbin_entries(data, pos))
        except (ValueError, struct.error):
            pass
        pos = data.find(magic, pos + 4)
    return found
