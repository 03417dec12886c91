"""Check that only the run-time dispatched kernels of pylstm's extensions hold AVX code.

The hot kernels (src/_kernels.c) are compiled once per instruction-set level
into static libraries (src/meson.build): ``pylstm_kernels_avx2`` and
``pylstm_kernels_avx512`` with -mavx2/-mavx512f..., chosen at run time by
CPUID (src/_kernels.h). Everything else -- the Cython modules and the
baseline kernels -- must run on any x86-64 CPU, so it must hold no
instruction that a CPU without AVX cannot decode. This script proves it for
one build, three ways:

1. flags: in the build's compile_commands.json, no object outside the
   dispatched libraries is compiled with a flag that ties code to a CPU
   (-march=native or any -march but x86-64, -mtune=native, -mavx*, -mfma,
   -mbmi*, -mf16c, -msse3 and later);
2. objects: ``objdump -d`` of every object file of the build; the objects
   outside the dispatched libraries hold no VEX- or EVEX-encoded instruction
   (every AVX, AVX2, FMA, AVX-512 and BMI instruction is one: objdump spells
   the vector ones with a ``v`` prefix; the rest are matched by name or by
   their ymm/zmm/k registers), while the dispatched ones do hold some (the
   detector is seen to work on real AVX code);
3. the shipped modules: ``objdump -d`` of each extension module of the wheel
   (or .so files given), grouped by the function symbols of its symbol table.
   The functions that hold VEX/EVEX instructions, as a multiset of (name,
   sequence of those instructions), must be exactly those of the dispatched
   objects: one more anywhere -- a Cython function, a third copy of a kernel
   from a baseline library built with AVX flags, or code from a library
   linked in -- fails. Linking moves code and fills in addresses but does
   not change instructions, and meson-python does not strip the modules, so
   the static functions keep their names.

-march=native on a builder with AVX makes GCC and Clang encode every SSE
instruction with VEX, so it fails 2 and 3, as well as 1. Plain SSE3/SSE4/
POPCNT code without VEX (say, -msse4.2 alone) is caught by 1 only.

Usage::

    python tools/check_simd_isolation.py --build-dir BUILD [WHEEL_OR_SO ...]
    python tools/check_simd_isolation.py --dispatched avx512 ...   # must fail

The second form counts the AVX2 kernels as code that must run anywhere: the
self-test that the check fails when AVX code is where it must not be,
without a second build (tools/check_wheel.sh runs both).

BUILD is the meson build folder that made the wheel (``python -m build
-Cbuild-dir=BUILD``). Exit status 0 when every check passes, 1 otherwise.
Linux x86-64 with GNU binutils' objdump.
"""

import argparse
import collections
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile

DISPATCHED = ["avx2", "avx512"]
KERNEL_LIB = re.compile(r"libpylstm_kernels_(\w+?)\.a\.p$")
LABEL = re.compile(r"^([0-9a-f]+) <(.+)>:$")
INSN = re.compile(r"^\s+[0-9a-f]+:\s+(.*)$")
WIDE_REGISTER = re.compile(r"%(?:[yz]mm\d+|k[0-7])\b")
# VEX-encoded instructions on general registers (BMI1, BMI2), no v prefix.
VEX_GPR = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext",
           "rorx", "sarx", "shlx", "shrx"}
# v-prefixed mnemonics that are not AVX (virtualization, segment checks).
NOT_VEX = {"verr", "verw", "vmcall", "vmclear", "vmfunc", "vmlaunch", "vmptrld", "vmptrst",
           "vmread", "vmresume", "vmwrite", "vmxoff", "vmxon"}
PREFIXES = {"lock", "rep", "repe", "repz", "repne", "repnz", "notrack", "bnd", "data16",
            "data32", "addr32", "cs", "ds", "es", "fs", "gs", "ss"}
CPU_FLAG = re.compile(r"^-m(?:arch=(?!x86-64$)|tune=native$|avx|fma|bmi|f16c|sse3|ssse3|sse4"
                      r"|popcnt|lzcnt|movbe|xop|amx|vaes|vpclmul|gfni)")


def vex_mnemonic(line):
    """The mnemonic of an objdump instruction line if it is VEX/EVEX-encoded, else None."""
    words = [w for w in line.split() if not w.startswith("{")]
    while words and words[0] in PREFIXES:
        words.pop(0)
    if not words:
        return None
    mnemonic = words[0]
    if ((mnemonic.startswith("v") and mnemonic not in NOT_VEX) or mnemonic in VEX_GPR
            or WIDE_REGISTER.search(line)):
        return mnemonic
    return None


def vex_functions(path):
    """{(address, function name): [its VEX/EVEX mnemonics]} of an object or shared
    object, by ``objdump -d``; only the functions that hold some (static functions
    of different objects may share a name). Also returns the count of function
    labels seen."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-w", path], check=True,
                         capture_output=True, text=True).stdout
    found = collections.defaultdict(list)
    labels = 0
    name = None
    for line in out.splitlines():
        label = LABEL.match(line)
        if label:
            name = (int(label.group(1), 16), label.group(2))
            labels += 1
            continue
        insn = INSN.match(line)
        if insn and name is not None:
            mnemonic = vex_mnemonic(insn.group(1))
            if mnemonic:
                found[name].append(mnemonic)
    return dict(found), labels


def signature(functions):
    """The multiset of (name, VEX mnemonics) of a {(address, name): mnemonics} dict."""
    return collections.Counter((name, tuple(m)) for (_, name), m in functions.items())


def has_local_function_symbols(path):
    """Whether the symbol table (not only the dynamic one) names static functions."""
    out = subprocess.run(["objdump", "-t", path], check=True, capture_output=True,
                         text=True).stdout
    return any(" l     F .text" in line for line in out.splitlines())


def check_flags(build_dir, failures):
    """Check 1: compile flags of the objects outside the dispatched libraries."""
    db = os.path.join(build_dir, "compile_commands.json")
    with open(db, encoding="utf-8") as f:
        commands = json.load(f)
    checked, problems = 0, []
    for entry in commands:
        output = entry.get("output", "")
        lib = KERNEL_LIB.search(os.path.dirname(output))
        if lib and lib.group(1) in DISPATCHED:
            continue
        args = entry.get("arguments") or shlex.split(entry["command"])
        bad = [a for a in args if CPU_FLAG.match(a)]
        checked += 1
        if bad:
            problems.append(f"flags: {output} is compiled with {' '.join(bad)}")
    print(f"1. flags: {checked} objects outside the dispatched kernels, "
          f"{len(problems)} compiled with a CPU-specific flag")
    if not checked:
        problems.append("flags: compile_commands.json lists no object")
    failures.extend(problems)


def check_objects(build_dir, failures):
    """Check 2: the object files. Returns the VEX signature of the dispatched objects."""
    expected = collections.Counter()
    seen = collections.Counter()
    for folder, _, files in os.walk(build_dir):
        for name in sorted(files):
            if not name.endswith(".o"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, build_dir)
            lib = KERNEL_LIB.search(os.path.basename(folder))
            functions, labels = vex_functions(path)
            if lib and lib.group(1) in DISPATCHED:
                seen["dispatched"] += 1
                print(f"   {rel}: dispatched ({lib.group(1)}), {len(functions)} of {labels} "
                      "functions use AVX")
                if not functions:
                    failures.append(f"objects: {rel} is an AVX kernel object without AVX "
                                    "instructions (the detector or the build is broken)")
                expected += signature(functions)
            else:
                seen["other"] += 1
                print(f"   {rel}: not dispatched, {len(functions)} of {labels} functions "
                      "use AVX")
                for (_, fn), mnemonics in sorted(functions.items()):
                    failures.append(f"objects: {rel}: {fn} holds {len(mnemonics)} AVX/VEX "
                                    f"instructions ({', '.join(sorted(set(mnemonics))[:6])})")
    print(f"2. objects: {seen['other']} not dispatched, {seen['dispatched']} dispatched")
    if seen["dispatched"] != len(DISPATCHED) or seen["other"] < 2:
        failures.append(f"objects: expected {len(DISPATCHED)} dispatched kernel objects and "
                        f"the others in {build_dir}, found {dict(seen)}")
    return expected


def extension_modules(paths, tmp):
    """The .so files of the wheels and .so paths given."""
    modules = []
    for path in paths:
        if path.endswith(".whl"):
            with zipfile.ZipFile(path) as wheel:
                for name in wheel.namelist():
                    if name.endswith(".so"):
                        modules.append((f"{os.path.basename(path)}:{name}",
                                        wheel.extract(name, tmp)))
        else:
            modules.append((path, path))
    return modules


def check_modules(paths, expected, failures):
    """Check 3: the shipped extension modules against the dispatched objects."""
    with tempfile.TemporaryDirectory() as tmp:
        modules = extension_modules(paths, tmp)
        found = collections.Counter()
        for label, path in modules:
            if not has_local_function_symbols(path):
                failures.append(f"modules: {label} has no symbol table (stripped?): its "
                                "functions cannot be told apart")
                continue
            functions, labels = vex_functions(path)
            print(f"   {label}: {len(functions)} of {labels} functions use AVX")
            found += signature(functions)
    if not modules:
        failures.append("modules: no extension module given")
        return
    extra, missing = found - expected, expected - found
    for (fn, mnemonics), n in sorted(extra.items()):
        failures.append(f"modules: {fn} ({len(mnemonics)} AVX/VEX instructions) x{n} is not "
                        "a function of the dispatched kernel objects")
    for (fn, _), n in sorted(missing.items()):
        failures.append(f"modules: the dispatched kernel function {fn} x{n} is not found "
                        "with the same instructions in the modules")
    print(f"3. modules: {sum(found.values())} functions with AVX in {len(modules)} modules, "
          f"{sum(expected.values())} in the dispatched objects"
          + (", the same" if not extra and not missing else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", required=True, help="the meson build folder")
    parser.add_argument("--dispatched", default=",".join(DISPATCHED), metavar="LEVELS",
                        help="the kernel libraries chosen at run time (default: %(default)s); "
                             "naming fewer is the check's self-test: it must then fail")
    parser.add_argument("modules", nargs="*", metavar="WHEEL_OR_SO",
                        help="wheels or extension modules built from that folder")
    args = parser.parse_args(argv)
    DISPATCHED[:] = args.dispatched.split(",")
    failures = []
    check_flags(args.build_dir, failures)
    expected = check_objects(args.build_dir, failures)
    if args.modules:
        check_modules(args.modules, expected, failures)
    if failures:
        by_check = collections.defaultdict(list)
        for failure in failures:
            by_check[failure.split(":", 1)[0]].append(failure)
        print(f"FAILED: {len(failures)} problems ("
              + ", ".join(f"{len(v)} {k}" for k, v in by_check.items())
              + "); code outside the run-time dispatched kernels must run on any x86-64 CPU:")
        for problems in by_check.values():
            for failure in problems[:8]:
                print("  " + failure)
            if len(problems) > 8:
                print(f"  ... and {len(problems) - 8} more")
        return 1
    print("OK: AVX/AVX-512 code only in the run-time dispatched kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
