"""The model-file container on the ``safetensors`` package, measured against our own.

The question (issue 23): should :func:`pylstm._container.read` hand the file's
layout to the ``safetensors`` package (Rust, fuzzed) instead of reading it
itself? This file holds the answer's evidence:

* :func:`read`: a prototype of ``pylstm._container.read`` (same arguments and
  results) on ``safetensors.safe_open``. The package parses the framing, the
  header JSON and the array table, checks the offsets and the file's length,
  and reads the arrays; pylstm keeps what the package does not do: its own
  messages for foreign files (pickle, zip, npy) and its header limit (the
  first 8 bytes), the metadata (format, version, type, checksum syntax), the
  dtypes it allows, the arrays a description implies, the SHA-256 checksum
  (over the table rebuilt from ``offset_keys()``) and NaN/infinity.
* ``python benchmarks/container_safetensors.py``: the figures of the decision
  (``docs/user_guide/persistence.rst``): load time of a large layer (median
  of repeats, both readers alternating), code size of the two readers,
  the hostile-file tests run against the prototype (``tests/io`` with this
  module as a pytest plugin, ``-p container_safetensors``, which patches
  :func:`read` in) and a blind fuzz of the package's own parser, and the
  installed size of the package.

Run it from the repository root with the package and ``safetensors`` installed
(``pip install safetensors``); it writes nothing but its report.
"""

import argparse
import ast
import hashlib
import io
import math
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tokenize
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- the prototype
def read(path, types, layout):
    """``pylstm._container.read`` with the layout read by the ``safetensors`` package."""
    from safetensors import SafetensorError, safe_open

    from pylstm import _container as c

    path = os.fsdecode(os.fspath(path))
    with open(path, "rb") as f:
        c._check_prefix(f.read(8))  # pylstm's messages for foreign files, its header limit
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata()
            table, offset = {}, 0
            for name in f.offset_keys():
                view = f.get_slice(name)
                code, shape = view.get_dtype(), list(view.get_shape())
                if code not in c.DTYPES:
                    raise c.ModelFileError(f"array {c.short(name)} has unsupported dtype "
                                           f"{c.short(code)}: model files hold only "
                                           f"{', '.join(c.DTYPES)} (no object arrays)")
                size = math.prod(shape) * c.DTYPES[code].itemsize
                table[name] = {"dtype": code, "shape": shape,
                               "data_offsets": [offset, offset + size]}
                offset += size
            description = c._check_metadata(metadata, types)
            plan, expected = layout(metadata["type"], description, len(table))
            c.check_table(table, expected)
            arrays = {name: f.get_tensor(name) for name in table}
    except SafetensorError as exc:
        raise c.ModelFileError(f"not a valid model file: {exc}") from None
    digest = c._digest(metadata, table, [np.ascontiguousarray(a).view(np.uint8).ravel()
                                         for a in arrays.values()])
    if digest != metadata["sha256"]:
        raise c.ModelFileError("checksum mismatch: the file is corrupted or was modified "
                               "(SHA-256 of the header and arrays differs from the stored one)")
    out = {}
    for name, arr in arrays.items():
        arr = arr.astype(arr.dtype.newbyteorder("="))  # writable, native
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise c.ModelFileError(f"array {name} contains "
                                   f"{'NaN' if np.isnan(arr).any() else 'infinity'}")
        out[name] = arr
    return metadata["type"], plan, out


def pytest_configure(config):
    """As a pytest plugin (``-p container_safetensors``): load() reads with :func:`read`."""
    from pylstm import _container

    _container.read = read


# ---------------------------------------------------------------------- load time
def load_times(repeats, folder):
    import _common

    import pylstm
    from pylstm import _container, _io

    layer = pylstm.LSTM(896, 896, num_layers=2, dtype="float32", random_state=0)
    path = os.path.join(folder, "large.pylstm")
    pylstm.save(layer, path)
    size = os.path.getsize(path)
    own = _container.read

    def run(fn):
        def call():
            start = time.perf_counter()
            result = fn()
            return time.perf_counter() - start, result
        return call

    def load_with(reader):
        _container.read = reader
        try:
            return pylstm.load(path)
        finally:
            _container.read = own

    from safetensors.numpy import load_file

    calls = {
        "pylstm.load, own reader": run(lambda: load_with(own)),
        "pylstm.load, safetensors reader": run(lambda: load_with(read)),
        "container only, own reader": run(lambda: own(path, _io._SAVABLE, _io._layout)),
        "container only, safetensors reader": run(lambda: read(path, _io._SAVABLE,
                                                               _io._layout)),
        "safetensors.numpy.load_file (no checks)": run(lambda: load_file(path)),
        "  part of both: SHA-256 of the file": run(
            lambda: hashlib.sha256(Path(path).read_bytes()).hexdigest()),
        "  part of pylstm.load: LSTM(...) draws weights": run(
            lambda: pylstm.LSTM(896, 896, num_layers=2, dtype="float32", random_state=0)),
    }
    for fn in calls.values():  # warm the page cache and the imports
        fn()
    samples, shares, _, _ = _common.timed_alternately(calls, repeats)
    lines = [f"load time of LSTM(896, 896, num_layers=2, float32): {size / 1e6:.1f} MB file, "
             f"median of {repeats} (min-max), ms"]
    for name, times in samples.items():
        busy = max((s for s in shares[name] if s is not None), default=0.0)
        lines.append(f"  {name:46s} {1e3 * statistics.median(times):7.1f}  "
                     f"({1e3 * min(times):.1f}-{1e3 * max(times):.1f})"
                     + ("  [busy machine]" if busy > _common.BUSY else ""))
    return lines


# ---------------------------------------------------------------------- code size
def code_lines(path, names=None):
    """Lines holding code (no blank, comment or docstring lines) of a module, or of
    its top-level functions and classes in ``names``."""
    source = Path(path).read_text()
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    wanted = None
    if names is not None:
        wanted = set()
        for node in tree.body:
            if getattr(node, "name", None) in names or (
                    isinstance(node, ast.Assign) and any(
                        getattr(t, "id", None) in names for t in node.targets)):
                wanted.update(range(node.lineno, node.end_lineno + 1))
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    lines -= docstrings
    return len(lines if wanted is None else lines & wanted)


#: The parts of pylstm/_container.py that the package would replace: the parsing of
#: the header and table, the offsets against the file's length, the reading. The
#: writing stays: the package's writer orders the arrays itself and the metadata
#: differently in each process, so the checksum could not be computed before writing.
REPLACED = {"_parse_header", "_read_arrays", "_bytes_left", "read", "_TENSOR_KEYS",
            "_INT64_MAX"}


def code_size():
    container = ROOT / "pylstm" / "_container.py"
    return [
        "code size (lines of code, no comments, docstrings or blank lines)",
        f"  pylstm/_container.py, all                     {code_lines(container):5d}",
        f"  of which the package would replace            {code_lines(container, REPLACED):5d}"
        "  (header and table parsing, offsets, reading)",
        f"  the prototype's read on the package           {code_lines(__file__, {'read'}):5d}"
        "  (+ the metadata checks it shares with pylstm)",
    ]


# ---------------------------------------------------------------------- robustness
def hostile_tests():
    """tests/io with the prototype patched in: pytest's summary, and the failures."""
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "container_safetensors", "tests/io", "-rf", "--timeout", "600"],
        cwd=ROOT, env=env, capture_output=True, text=True)
    summary = [line.replace("tests/io/", "") for line in proc.stdout.splitlines()
               if line.startswith("FAILED") or re.search(r"\d+ (passed|failed)", line)]
    # test_doctests fails on the printed message of ModelFileError's example.
    wrong = [line for line in summary if line.startswith("FAILED") and not (
        "Regex pattern did not match" in line or "test_doctests" in line)]
    return ["tests/io against the prototype (python -m pytest -p container_safetensors "
            "tests/io): each failure is a ModelFileError with another message than "
            f"pylstm's, but {len(wrong)}"] + [f"  {line[:110]}" for line in summary]


def fuzz_package(cases, folder):
    """Blind mutations of saved files through safe_open alone: which exceptions come out."""
    from safetensors import SafetensorError, safe_open

    files = sorted((ROOT / "tests" / "data" / "model_files").glob("*.pylstm"))
    rnd = random.Random(0)
    outcomes, others = {}, {}
    path = os.path.join(folder, "mutant.safetensors")
    start = time.perf_counter()
    for i in range(cases):
        data = bytearray(files[i % len(files)].read_bytes())
        kind = rnd.choice(["flip", "truncate", "insert", "prefix", "header-char"])
        n = struct.unpack("<Q", data[:8])[0]
        if kind == "flip":
            j = rnd.randrange(8 + n) if rnd.random() < 0.7 else rnd.randrange(len(data))
            data[j] ^= 1 << rnd.randrange(8)
        elif kind == "truncate":
            data = data[: rnd.randrange(len(data))]
        elif kind == "insert":
            j = rnd.randrange(len(data))
            data[j:j] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif kind == "prefix":
            data[:8] = struct.pack("<Q", rnd.choice([0, 1, n - 1, n + 1, 2**31, 2**64 - 1]))
        else:
            j = rnd.randrange(8, 8 + n)
            data[j] = rnd.choice(b' ",:{}[]0123456789-.eE\\tfnul')
        with open(path, "wb") as f:
            f.write(data)
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.offset_keys():
                    f.get_tensor(name)
            outcome = "opened"
        except SafetensorError:
            outcome = "SafetensorError"
        except BaseException as exc:  # a panic is a BaseException
            outcome = f"other: {type(exc).__name__}"
            others.setdefault(outcome, str(exc)[:100])
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    lines = [f"blind fuzz of safetensors.safe_open alone ({cases} mutated files, "
             f"{time.perf_counter() - start:.1f} s): no crash, no hang"]
    lines += [f"  {k}: {v}" for k, v in sorted(outcomes.items())]
    lines += [f"  e.g. {k}: {v}" for k, v in others.items()]
    return lines


# ---------------------------------------------------------------------- install weight
def install_weight():
    import safetensors

    folder = Path(safetensors.__file__).parent
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    native = sum(p.stat().st_size for p in folder.glob("*.so")) + sum(
        p.stat().st_size for p in folder.glob("*.pyd"))
    return [f"safetensors {safetensors.__version__} installed: {total / 1e6:.2f} MB "
            f"({native / 1e6:.2f} MB of it the compiled Rust extension)"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fuzz-cases", type=int, default=5000)
    parser.add_argument("--no-tests", action="store_true", help="skip running tests/io")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = load_times(args.repeats, folder) + code_size()
        report += fuzz_package(args.fuzz_cases, folder) + install_weight()
    if not args.no_tests:
        report += hostile_tests()
    print("\n".join(report))


if __name__ == "__main__":
    main()
