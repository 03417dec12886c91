"""The model file container: a JSON header and raw arrays, read without trusting them.

This module knows the layout of a file and nothing of what it holds: a type
name, a JSON description and named arrays go in (:func:`encode`, :func:`write`)
and come out again, checked (:func:`read`). What the description and the arrays
mean is the business of the saved classes (see :mod:`pylstm._io`).

Layout (``format_version`` 1)
-----------------------------
That of a `safetensors <https://github.com/huggingface/safetensors>`_ file,
written and read here (no dependency; ``docs/user_guide/persistence.rst``
says why):

* bytes 0-7: ``N``, the header's length, an unsigned little-endian 64-bit integer;
* bytes 8 to 8 + N: the header, a UTF-8 JSON object, padded with spaces so that
  the arrays start at a multiple of 8 bytes::

      {"__metadata__": {"format": "pylstm", "format_version": "1",
                        "type": "LSTMClassifier", "model": "<JSON text>",
                        "sha256": "<64 hex digits>"},
       "<array name>": {"dtype": "F32", "shape": [20, 3], "data_offsets": [0, 240]},
       ...}

  ``model`` is the description, itself JSON text (non-finite floats are
  written by the classes as the strings ``"inf"``, ``"-inf"`` and ``"nan"``:
  the JSON here is strict);
* the rest: the arrays' bytes (``F32``/``F64``/``I64``, little-endian, C order),
  back to back in the order of their ``data_offsets``, with no gap.

``sha256`` is the SHA-256 digest of the canonical JSON of the metadata (without
``sha256``) and of the array table, a NUL byte, then the array bytes, so any
change to the arrays, to their layout or to the description is detected.

Reading never executes anything from the file: the header is strict JSON (no
duplicate keys, no NaN, at most :data:`MAX_HEADER_BYTES`), the type must be
one of the names the caller accepts, every array's dtype, shape and offsets
are checked against the description before any array byte is read, the file
must be exactly as long as its arrays say, and arrays hold no NaN or infinity.
"""

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import stat
import struct
import time

import numpy as np

__all__ = ["ModelFileError", "encode", "read", "write"]

#: Name in the ``format`` field of every pylstm model file.
FORMAT_NAME = "pylstm"

#: Version of the format that :func:`encode` writes and the newest that :func:`read` reads.
FORMAT_VERSION = 1

#: Largest header :func:`read` accepts (bytes); a larger one means a foreign or corrupted file.
MAX_HEADER_BYTES = 16 * 2**20

#: The only array dtypes a file may declare (safetensors' names).
DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8")}
_CODES = {np.dtype(dtype.name): code for code, dtype in DTYPES.items()}

_METADATA_KEYS = frozenset({"format", "format_version", "type", "model", "sha256"})
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_INT64_MAX = 2**63 - 1


class ModelFileError(ValueError):
    """A file is not a valid pylstm model file; :func:`pylstm.load` refused it.

    Raised for every problem with the file's content: too short, truncated or
    with trailing bytes; an oversized or non-JSON header; another format (a
    pickle, joblib, skops or zip file) or a newer format version; an unknown
    model type; missing, extra or misshapen arrays, a dtype other than
    float32/float64 (or an object array); invalid hyperparameters or fitted
    values; NaN or infinite weights; a checksum mismatch. The message says
    which. Errors of the file system (a missing file, no permission) are
    :class:`OSError` as usual.

    It is a subclass of :class:`ValueError`.

    Examples
    --------
    >>> import os, tempfile
    >>> import pylstm
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "junk.pylstm")
    ...     with open(path, "wb") as f:
    ...         _ = f.write(b"\\x05\\x00\\x00\\x00\\x00\\x00\\x00\\x00[1,2]")
    ...     try:
    ...         pylstm.load(path)
    ...     except pylstm.ModelFileError as exc:
    ...         print(exc)
    not a pylstm model file: the header is not a JSON object
    """


# ---------------------------------------------------------------------- strict JSON
def short(value, limit=80):
    """``repr(value)`` cut to ``limit`` characters, for messages about file content."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {short(key)}")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def json_loads(text, what):
    """Strict JSON: no duplicate keys, no NaN/Infinity; every failure is a ModelFileError."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates,
                          parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{what} is not valid JSON: {short(str(exc), 120)}") from None


def json_dumps(obj, canonical=False):
    """Compact ASCII JSON; NaN and infinity are refused (the reader refuses them too)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      sort_keys=canonical)


# ---------------------------------------------------------------------- checked JSON values
# Each returns the value read from a file at ``where`` or raises ModelFileError naming it.
def read_int(v, where, lo, hi):
    """An integer (not a bool) in [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ModelFileError(f"{where} must be an integer in [{lo}, {hi}], got {short(v)}")
    return v


def read_bool(v, where):
    """true or false."""
    if not isinstance(v, bool):
        raise ModelFileError(f"{where} must be true or false, got {short(v)}")
    return v


def read_str(v, where, choices=None):
    """A string, one of ``choices`` if given."""
    if not isinstance(v, str) or (choices is not None and v not in choices):
        expected = "a string" if choices is None else f"one of {sorted(choices)}"
        raise ModelFileError(f"{where} must be {expected}, got {short(v)}")
    return v


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def read_float(v, where, nonfinite=False, lo=-math.inf, hi=math.inf):
    """A finite number in [lo, hi] as a float, or with ``nonfinite`` "inf", "-inf", "nan"."""
    if nonfinite and isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    if (isinstance(v, bool) or not isinstance(v, (int, float))
            or not math.isfinite(v) or not lo <= v <= hi):
        raise ModelFileError(f"{where} must be a finite number in [{lo}, {hi}], got {short(v)}")
    return float(v)


def read_float_list(v, where):
    """A list of numbers, non-finite ones allowed (as :func:`read_float` with ``nonfinite``)."""
    if not isinstance(v, list):
        raise ModelFileError(f"{where} must be a list of numbers, got {short(v)}")
    return [read_float(x, f"{where}[{i}]", nonfinite=True) for i, x in enumerate(v)]


def read_object(v, where, keys):
    """A JSON object with exactly the given keys."""
    if not isinstance(v, dict):
        raise ModelFileError(f"{where} must be a JSON object, got {short(v)}")
    missing = sorted(set(keys) - set(v))
    extra = sorted(set(v) - set(keys))
    if missing or extra:
        problems = ([f"missing keys {short(missing)}"] if missing else []) + (
            [f"unexpected keys {short(extra)}"] if extra else [])
        raise ModelFileError(f"{where} has {' and '.join(problems)}")
    return v


def encode_float(x):
    """A float for the description: non-finite values as "inf", "-inf" or "nan"."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


# ---------------------------------------------------------------------- writing
def _digest(metadata, table, chunks):
    """SHA-256 over the canonical metadata (without sha256) and table, then the bytes."""
    meta = {k: v for k, v in metadata.items() if k != "sha256"}
    h = hashlib.sha256(json_dumps({"metadata": meta, "tensors": table},
                                  canonical=True).encode("ascii"))
    h.update(b"\0")
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _pack_header(metadata, table):
    """The 8-byte length and the space-padded JSON header."""
    text = json_dumps({"__metadata__": metadata, **table}).encode("ascii")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def encode(type_name, description, arrays):
    """The bytes of a model file, in parts.

    Parameters
    ----------
    type_name : str
        The saved object's type, as :func:`read` will look it up.
    description : dict
        JSON-able description (strict JSON: no NaN or infinity).
    arrays : dict of str to ndarray
        float32, float64 or int64 arrays, written in this order.

    Returns
    -------
    header : bytes
        Length prefix and header.
    table : dict
        The array table of the header (name to dtype, shape, data_offsets).
    chunks : list of bytes
        The arrays' bytes, to write after ``header``.

    Raises
    ------
    TypeError
        If an array has another dtype.
    """
    table, chunks, offset = {}, [], 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        code = _CODES.get(arr.dtype)
        if code is None:
            raise TypeError(f"cannot save array {name} of dtype {arr.dtype}")
        data = np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()
        table[name] = {"dtype": code, "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "type": type_name, "model": json_dumps(description)}
    metadata["sha256"] = _digest(metadata, table, chunks)
    return _pack_header(metadata, table), table, chunks


#: Seconds after which a temporary file of :func:`write` (``.<name>.<12 hex
#: digits>.tmp``) is taken for the orphan of a save that was killed before its
#: rename (SIGKILL, power loss) and removed by the next save of ``<name>``. A save
#: in progress rewrites its file all along, so its modification time stays recent.
STALE_TEMPORARY_SECONDS = 3600


def _remove_stale_temporaries(folder, base):
    """Remove our temporary files of ``base`` in ``folder`` older than
    :data:`STALE_TEMPORARY_SECONDS`; other files, and any error, are left alone."""
    pattern = re.compile(re.escape(f".{base}.") + r"[0-9a-f]{12}\.tmp")
    cutoff = time.time() - STALE_TEMPORARY_SECONDS
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    os.unlink(entry.path)


def write(path, header, chunks):
    """Write to a new file next to ``path``, flush it to disk, then rename it over ``path``.

    A symbolic link at ``path`` is followed: the file it points to is replaced
    (and keeps its permission bits, as a file rewritten in place would), the
    link stays. Errors name ``path``, not the temporary file.
    """
    requested = os.fsdecode(os.fspath(path))  # bytes too, as open() takes them
    target = os.path.realpath(requested)
    folder, base = os.path.split(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:  # a new file: the umask applies, as for open()
        mode = None
    _remove_stale_temporaries(folder, base)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    # Named before it is created, so that an interrupt at any point (even
    # right after os.open) removes it: ``path`` is replaced whole or untouched,
    # and no temporary file is left behind.
    tmp = fd = None
    try:
        while fd is None:
            tmp = os.path.join(folder, f".{base}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
            except FileExistsError:  # pragma: no cover - 48 random bits
                tmp = None  # someone else's
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        # Removed even when a second interrupt comes during the removal, which then
        # takes the first one's place: a bare removal could be cut short
        # (tests/threads/test_interrupts.py::test_interrupt_storm_save).
        error = exc
        while tmp is not None:
            try:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                tmp = None
            except KeyboardInterrupt as again:
                error = again
        if isinstance(error, OSError) and error.errno is not None:
            # The same error (OSError picks the subclass from errno) about the caller's path.
            raise OSError(error.errno, error.strerror, requested) from None
        if error is not exc:  # the second interrupt
            raise error from None
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename durable (POSIX)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ---------------------------------------------------------------------- reading
def _split(data):
    """Parse a model file's bytes into (metadata, table, array bytes), without checks.

    A helper for tests that edit files; :func:`read` does its own careful reading.
    """
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__")
    return metadata, header, data[8 + n:]


def _check_prefix(prefix):
    """Header length from the first 8 bytes, with a helpful message for foreign files."""
    if len(prefix) < 8:
        raise ModelFileError(f"not a pylstm model file: only {len(prefix)} bytes "
                             "(empty or truncated)")
    if prefix[0] == 0x80 and 2 <= prefix[1] <= 5:
        raise ModelFileError("not a pylstm model file: it looks like a pickle stream, which "
                             "pylstm.load never unpickles (use pickle or joblib only for "
                             "files you trust)")
    if prefix[:4] == b"PK\x03\x04":
        raise ModelFileError("not a pylstm model file: it is a zip archive (an .npz or skops "
                             "file?)")
    if prefix[:6] == b"\x93NUMPY":
        raise ModelFileError("not a pylstm model file: it is a NumPy .npy file")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise ModelFileError(f"not a pylstm model file or a corrupted one: header length {n} "
                             f"exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if n < 2:
        raise ModelFileError(f"not a pylstm model file: header length {n} is too small")
    return n


def _parse_header(raw, types):
    """Check the header's framing and metadata; return (metadata, description, table)."""
    if raw[:1] != b"{":
        raise ModelFileError("not a pylstm model file: the header is not a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError("the header is not valid UTF-8") from None
    header = json_loads(text, "the header")
    if not isinstance(header, dict):
        raise ModelFileError("not a pylstm model file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    description = _check_metadata(metadata, types)
    for name, info in header.items():
        where = f"array {short(name)}"
        read_object(info, where, _TENSOR_KEYS)
        code = read_str(info["dtype"], f"{where} dtype")
        if code not in DTYPES:
            raise ModelFileError(f"{where} has unsupported dtype {short(code)}: model files "
                                 f"hold only {', '.join(DTYPES)} (no object arrays)")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 8:
            raise ModelFileError(f"{where} shape must be a list of at most 8 sizes")
        for i, s in enumerate(shape):
            read_int(s, f"{where} shape[{i}]", 0, _INT64_MAX)
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise ModelFileError(f"{where} data_offsets must be [begin, end]")
        read_int(offsets[0], f"{where} data_offsets[0]", 0, _INT64_MAX)
        read_int(offsets[1], f"{where} data_offsets[1]", offsets[0], _INT64_MAX)
    return metadata, description, header


def _check_metadata(metadata, types):
    """Check the header's ``__metadata__``; return the description it holds, parsed."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            "not a pylstm model file: its header has no '__metadata__' with "
            f"format {FORMAT_NAME!r} (a safetensors file from another library?)")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise ModelFileError(f"metadata {short(key)} must be a string, got {short(value)}")
    version = metadata.get("format_version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]{1,9}", version):
        raise ModelFileError(f"format_version must be a positive integer, got {short(version)}")
    version = int(version)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"the file has format version {version}, newer than this pylstm reads (format "
            f"version {FORMAT_VERSION}): it was written by a newer pylstm; upgrade pylstm to "
            "load it")
    if version < 1:
        raise ModelFileError(f"format_version must be >= 1, got {version}")
    read_object(metadata, "the header's __metadata__", _METADATA_KEYS)
    if metadata["type"] not in types:
        raise ModelFileError(f"unknown model type {short(metadata['type'])}; pylstm loads only "
                             f"{', '.join(sorted(types))}")
    if not re.fullmatch(r"[0-9a-f]{64}", metadata["sha256"]):
        raise ModelFileError("metadata sha256 must be 64 lowercase hexadecimal digits")
    return json_loads(metadata["model"], "the model description")


def check_table(table, expected):
    """Check an array table against the arrays a description implies; return the data length.

    Parameters
    ----------
    table : dict
        The header's array table (already checked for syntax).
    expected : dict of str to (tuple, numpy.dtype)
        Name to shape and dtype of every array the file must hold.

    Returns
    -------
    int
        The number of array bytes after the header.

    Raises
    ------
    ModelFileError
        If an array is missing, unexpected, of another dtype or shape, or the
        offsets leave gaps.
    """
    missing = sorted(set(expected) - set(table))
    extra = sorted(set(table) - set(expected))
    if missing:
        raise ModelFileError(f"the file misses the arrays {short(missing, 200)}")
    if extra:
        raise ModelFileError(f"the file has unexpected arrays {short(extra, 200)}")
    for name, (shape, dtype) in expected.items():
        info, code = table[name], _CODES[np.dtype(dtype)]
        if info["dtype"] != code:
            raise ModelFileError(f"array {name} has dtype {info['dtype']}, expected {code} "
                                 "(the model's dtype)")
        if tuple(info["shape"]) != tuple(shape):
            raise ModelFileError(f"array {name} has shape {tuple(info['shape'])}, expected "
                                 f"{tuple(shape)} from the model description")
        begin, end = info["data_offsets"]
        nbytes = math.prod(shape) * DTYPES[code].itemsize
        if end - begin != nbytes:
            raise ModelFileError(f"array {name} has data_offsets {[begin, end]} for "
                                 f"{nbytes} bytes")
    position = 0
    for name, info in sorted(table.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        begin, end = info["data_offsets"]
        if begin != position:
            raise ModelFileError(f"array {name} starts at byte {begin} of the data, expected "
                                 f"{position}: arrays must be back to back")
        position = end
    return position


def _read_arrays(table, data):
    """Arrays from checked offsets, read-only and native-endian; reject NaN/inf.

    Views of ``data`` where the machine is little-endian: the classes copy what
    they keep, so a copy here would be a second one.
    """
    arrays = {}
    for name, info in table.items():
        dtype = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                            offset=begin).reshape(info["shape"])
        if not arr.dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
            arr.flags.writeable = False
        if dtype.kind == "f" and not np.isfinite(arr).all():
            what = "NaN" if np.isnan(arr).any() else "infinity"
            raise ModelFileError(f"array {name} contains {what}")
        arrays[name] = arr
    return arrays


def _bytes_left(f):
    """Bytes after the current position of a regular file; None if unknown (a pipe)."""
    try:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - f.tell())
    except (OSError, AttributeError, ValueError):  # pragma: no cover - unusual file objects
        return None


def read(path, types, layout):
    """Read a model file, checking everything before it is used.

    Parameters
    ----------
    path : str, bytes or path-like
        The file.
    types : collection of str
        The type names accepted; any other is refused before the description
        is parsed.
    layout : callable
        ``layout(type_name, description, n_arrays) -> (plan, expected)``:
        checks the description (raising :class:`ModelFileError`) and returns
        what to build the object from and the arrays the file must hold, a
        dict of name to (shape, dtype). ``n_arrays``, the number of arrays in
        the file, bounds any loop over the description's layers.

    Returns
    -------
    type_name : str
    plan : object
        What ``layout`` returned.
    arrays : dict of str to ndarray
        Read-only native-endian arrays, all finite (copy what you keep).

    Raises
    ------
    ModelFileError
        If the file is not a valid model file of a format version up to
        :data:`FORMAT_VERSION` or ``layout`` refuses it.
    OSError
        If the file cannot be read.
    """
    with open(path, "rb") as f:
        n = _check_prefix(f.read(8))
        raw = f.read(n)
        if len(raw) < n:
            raise ModelFileError(f"the file is truncated: its header needs {n} bytes, only "
                                 f"{len(raw)} follow")
        metadata, description, table = _parse_header(raw, types)
        plan, expected = layout(metadata["type"], description, len(table))
        total = check_table(table, expected)
        available = _bytes_left(f)
        if available is not None and available < total:
            # Checked before reading, so that a header declaring huge arrays that the file
            # does not hold is refused without trying to allocate them.
            raise ModelFileError(f"the file is truncated: the arrays need {total} bytes, only "
                                 f"{available} are present")
        data = f.read(total + 1)
    if len(data) < total:
        raise ModelFileError(f"the file is truncated: the arrays need {total} bytes, only "
                             f"{len(data)} are present")
    if len(data) > total:
        raise ModelFileError("the file has bytes after its last array (corrupted or "
                             "appended to)")
    if not secrets.compare_digest(_digest(metadata, table, [data]), metadata["sha256"]):
        raise ModelFileError("checksum mismatch: the file is corrupted or was modified "
                             "(SHA-256 of the header and arrays differs from the stored one)")
    return metadata["type"], plan, _read_arrays(table, data)
