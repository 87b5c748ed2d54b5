"""Checks a built ferroq wheel's tags and its native module's glibc needs;
scripts/wheel runs it on every wheel it builds (in its build venv, which has
pyelftools).

    python scripts/check_wheel.py WHEEL VERSION

Fails (exit 1) unless: the file name's and the metadata's version are
VERSION; every tag is ``cp39-abi3-<platform>`` (one abi3 wheel serves every
CPython from 3.9); and, for a manylinux wheel, every platform tag allows
glibc 2.17 and the highest GLIBC_x.y symbol version the extension module
requires is at most 2.17 -- read from the ELF's version-needs section, not
from the tag, so a wheel tagged 2.17 but linked against a newer glibc is
caught. A musllinux wheel must need no glibc symbols at all.
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection

MAX_GLIBC = (2, 17)
ABI_TAG = "cp39-abi3-"


def glibc_needs(so: bytes) -> set[tuple[int, int]]:
    """Every GLIBC_x.y version the shared object requires."""
    found: set[tuple[int, int]] = set()
    for section in ELFFile(io.BytesIO(so)).iter_sections():
        if not isinstance(section, GNUVerNeedSection):
            continue
        for _library, versions in section.iter_versions():
            for version in versions:
                m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", version.name)
                if m:
                    found.add((int(m[1]), int(m[2])))
    return found


def platform_glibc(platform: str) -> tuple[int, int] | None:
    """The glibc a manylinux platform tag promises, e.g. (2, 17); None if
    the tag is not a manylinux one."""
    if platform.startswith("manylinux2014_"):
        return (2, 17)
    m = re.match(r"manylinux_(\d+)_(\d+)_", platform)
    return (int(m[1]), int(m[2])) if m else None


def check(path: Path, version: str) -> list[str]:
    """The problems found in the wheel at ``path`` (empty when it is good)."""
    problems = []
    name_version = path.name.split("-")[1]
    if name_version != version:
        problems.append(f"file name says version {name_version}, expected {version}")
    with zipfile.ZipFile(path) as whl:
        info = f"ferroq-{name_version}.dist-info"
        wheel = whl.read(f"{info}/WHEEL").decode()
        meta = whl.read(f"{info}/METADATA").decode()
        sos = [n for n in whl.namelist() if n.endswith(".so")]
        needs = {n: glibc_needs(whl.read(n)) for n in sos}
    m = re.search(r"^Version: (.+)$", meta, re.M)
    if not m or m[1].strip() != version:
        problems.append(f"METADATA says version {m[1] if m else '?'}, expected {version}")
    if sos != ["ferroq/_core.abi3.so"]:
        problems.append(f"expected one extension module ferroq/_core.abi3.so, found {sos}")
    tags = re.findall(r"^Tag: (.+)$", wheel, re.M)
    if not tags:
        problems.append("WHEEL has no Tag lines")
    musl = all("musllinux" in t for t in tags)
    for tag in tags:
        if not tag.startswith(ABI_TAG):
            problems.append(f"tag {tag} is not {ABI_TAG}*")
            continue
        platform = tag[len(ABI_TAG) :]
        if musl:
            continue
        promised = platform_glibc(platform)
        if promised is None or promised > MAX_GLIBC:
            problems.append(f"tag {tag} does not allow glibc {MAX_GLIBC[0]}.{MAX_GLIBC[1]}")
    for so, versions in needs.items():
        highest = max(versions, default=None)
        shown = f"{highest[0]}.{highest[1]}" if highest else "none"
        print(f"  {so}: highest GLIBC symbol version required: {shown}")
        if musl and versions:
            problems.append(f"{so} is in a musllinux wheel but needs glibc {shown}")
        elif highest and highest > MAX_GLIBC:
            problems.append(f"{so} needs GLIBC_{shown}, more than the 2.17 its tag promises")
    print(f"  tags: {', '.join(tags)}")
    return problems


def main() -> int:
    """Checks the wheel named on the command line; prints what is wrong."""
    path, version = Path(sys.argv[1]), sys.argv[2]
    problems = check(path, version)
    for problem in problems:
        print(f"  FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
