"""Compare two wheels of pylstm: one built from the source tree, one from the sdist.

Usage::

    python tools/compare_wheels.py TREE.whl SDIST.whl

What must be identical, and is checked:

- the sorted list of files;
- the bytes of every file that is not a compiled module (the Python sources,
  the generated ``_version.py``, METADATA, WHEEL, entry points, licenses);
- the ``RECORD`` lines of those files (RECORD also holds the hashes of the
  compiled modules, compared below);
- in each compiled module (ELF ``.so``), the contents of every section that
  is loaded at run time (SHF_ALLOC: code, data, symbols for the dynamic
  linker). Sections that are not loaded (the symbol table, ``.comment``,
  debug info) may differ, since they can name the build folder, and are
  listed when they do; a module whose loaded sections differ fails.

Exit status 0 when the wheels match, 1 otherwise.
"""

import hashlib
import struct
import sys
import zipfile

SHF_ALLOC = 0x2


def elf_sections(data):
    """{name: (flags, bytes)} of the sections of a 64-bit little-endian ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = []
    for i in range(shnum):
        name, kind, flags, _, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        headers.append((name, kind, flags, offset, size))
    strtab = headers[shstrndx]
    names = data[strtab[3]:strtab[3] + strtab[4]]
    sections = {}
    for name, kind, flags, offset, size in headers:
        label = names[name:names.index(b"\0", name)].decode()
        body = b"" if kind == 8 else data[offset:offset + size]  # SHT_NOBITS: no bytes
        sections[label] = (flags, body, size)
    return sections


def compare_module(name, a, b):
    """Problems (list of str) and notes (list of str) of two builds of one module."""
    if a == b:
        return [], [f"{name}: byte-identical ({len(a)} bytes)"]
    sa, sb = elf_sections(a), elf_sections(b)
    problems, differing = [], []
    if list(sa) != list(sb):
        problems.append(f"{name}: different sections: {sorted(set(sa) ^ set(sb))}")
    for section in sa.keys() & sb.keys():
        if sa[section][1:] == sb[section][1:]:
            continue
        if sa[section][0] & SHF_ALLOC or sb[section][0] & SHF_ALLOC:
            problems.append(f"{name}: loaded section {section} differs "
                            f"({sa[section][2]} and {sb[section][2]} bytes)")
        else:
            differing.append(section)
    notes = [f"{name}: loaded sections identical; not loaded, differing: "
             f"{', '.join(sorted(differing)) or 'none'}"] if not problems else []
    return problems, notes


def record_without(record, modules):
    """The sorted lines of a RECORD file, less those of the compiled modules."""
    return sorted(line for line in record.decode().splitlines()
                  if line.split(",")[0] not in modules)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    with zipfile.ZipFile(argv[0]) as za, zipfile.ZipFile(argv[1]) as zb:
        files_a, files_b = sorted(za.namelist()), sorted(zb.namelist())
        problems, notes = [], []
        if files_a != files_b:
            problems.append(f"file lists differ: only in the first "
                            f"{sorted(set(files_a) - set(files_b))}, only in the second "
                            f"{sorted(set(files_b) - set(files_a))}")
        modules = [n for n in files_a if n.endswith((".so", ".pyd", ".dylib"))]
        for name in sorted(set(files_a) & set(files_b)):
            a, b = za.read(name), zb.read(name)
            if name in modules:
                p, n = compare_module(name, a, b)
                problems += p
                notes += n
            elif name.endswith(".dist-info/RECORD"):
                if record_without(a, modules) != record_without(b, modules):
                    problems.append(f"{name}: the lines of the files other than the compiled "
                                    "modules differ")
            elif a != b:
                problems.append(f"{name} differs (sha256 {hashlib.sha256(a).hexdigest()[:12]} "
                                f"and {hashlib.sha256(b).hexdigest()[:12]})")
    others = len(files_a) - len(modules)
    print(f"{len(files_a)} files in each wheel; the {others} that are not compiled modules "
          "byte-identical (RECORD: their lines)"
          if not problems else f"{len(files_a)} and {len(files_b)} files")
    for note in notes:
        print("  " + note)
    if problems:
        print("FAILED: the wheels differ:")
        for problem in problems:
            print("  " + problem)
        return 1
    print("OK: the wheel built from the sdist matches the one built from the tree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
