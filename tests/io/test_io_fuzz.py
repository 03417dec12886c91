"""Fuzzing pylstm.load with mutated valid model files.

Each case takes a valid file (a classifier, a regressor, a layer or a
character- or word-level language model), mutates it and loads it. ``load``
must either raise :class:`pylstm.ModelFileError` or return a model; any other
exception, or a crash, fails the test.

* Blind mutations (bit flips, byte insertion, deletion, overwriting,
  truncation, a changed length prefix, header edits without a new checksum)
  may only load when they changed nothing: a model that loads must then be
  exactly the saved one (it re-encodes to the same bytes).
* Aware mutations edit the header or the arrays (shapes, dtypes, offsets,
  versions, types, extra or missing arrays, hyperparameters, fitted values,
  NaN/inf weights, vocabularies) and usually recompute the checksum, so that
  they reach the checks behind it. A model that loads must work:
  ``predict``/``transform`` (or ``forward``, or ``predict_proba``/``score``/
  ``generate``) return finite values of the right shape or raise
  ``ValueError`` (an odd but valid combination of hyperparameters).

The seed is fixed; the number of cases is fixed too, with a time cap as a
guard on slow machines. Run with ``-s`` to see the counts.
"""

import collections
import copy
import json
import random
import struct
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pylstm import (
    LSTM,
    LSTMClassifier,
    LSTMLanguageModel,
    LSTMRegressor,
    ModelFileError,
    _container,
    load,
    save,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

SEED = 20240611
BLIND_CASES = 20000
AWARE_CASES = 8000
TIME_CAP = 40.0  # seconds per test; the counts above take about 10 s in all


# ---------------------------------------------------------------------- base files
def _base_models():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 5, 3))
    ragged = [X[i, : 2 + i % 4] for i in range(len(X))]
    labels = np.where(X[:, :, 0].sum(axis=1) > 0, "up", "down")
    clf = LSTMClassifier(hidden_size=3, num_layers=2, bidirectional=True, max_iter=2,
                         dtype="float32", random_state=0).fit(X, labels)
    reg = LSTMRegressor(hidden_size=3, max_iter=3, solver="sgd", early_stopping=True,
                        random_state=0).fit(ragged, np.stack([X[:, 0, 0], X[:, 1, 1]], 1))
    clf2d = LSTMClassifier(hidden_size=2, max_iter=1, solver="rmsprop",
                           random_state=0).fit(X[:, :, 0], (X[:, 0, 0] > 0).astype(int))
    layer = LSTM(3, 2, num_layers=2, bidirectional=True, dtype=np.float64, random_state=0)
    texts = ["the cat sat on the mat, the dog sat on the log.", "A bird; 42 birds!"] * 2
    lm_char = LSTMLanguageModel(embedding_dim=3, hidden_size=3, num_layers=2, dropout=0.1,
                                seq_len=8, batch_size=2, max_iter=2, validation_fraction=0.1,
                                random_state=0).fit(texts)
    lm_word = LSTMLanguageModel(level="word", embedding_dim=2, hidden_size=3, seq_len=4,
                                batch_size=2, max_iter=1, solver="sgd", dtype="float64",
                                lowercase=True, random_state=0).fit(texts)
    return {"classifier": clf, "regressor": reg, "classifier-2d": clf2d, "layer": layer,
            "lm-char": lm_char, "lm-word": lm_word}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    out = {}
    for name, obj in _base_models().items():
        path = folder / f"{name}.pylstm"
        save(obj, path)
        out[name] = (path.read_bytes(), _encoding(obj))
    return out


def _encoding(obj):
    """The bytes save() would write for obj: equal encodings mean equal models."""
    header, _, chunks = _container.encode(type(obj).__name__, *obj._saved_state())
    return header + b"".join(chunks)


# ---------------------------------------------------------------------- running a case
class Stats:
    def __init__(self):
        self.counts = collections.Counter()
        self.messages = collections.Counter()

    def lines(self, title):
        total = sum(v for k, v in self.counts.items() if k.startswith("case:"))
        if not total:
            return []
        out = [f"{title}: {total} cases"]
        out += [f"  {key}: {value}" for key, value in sorted(self.counts.items())]
        out.append("  most frequent refusals:")
        out += [f"    {n:5d}  {msg}" for msg, n in self.messages.most_common(12)]
        return out


#: (title, Stats) of this session's fuzz tests, for :func:`fuzz_report`.
_REPORTS = []


def fuzz_report():
    """What the fuzz tests tried: printed after the run (conftest.py)."""
    return [line for title, stats in _REPORTS for line in stats.lines(title)]


def _message_kind(exc):
    text = str(exc)
    for sep in (":", " (", ","):
        text = text.split(sep)[0]
    return " ".join(text.split()[:6])


def _exercise(model):
    """Use a loaded model that differs from its base; only ValueError may come out."""
    rng = np.random.default_rng(1)
    try:
        if isinstance(model, LSTMLanguageModel):
            V = len(model.vocabulary_)
            proba = model.predict_proba("the c")
            assert proba.shape == (V,) and np.isfinite(proba).all()
            assert abs(proba.sum() - 1) < 1e-6
            assert np.isfinite(model.score("the dog sat"))
            text = model.generate("the", n_tokens=4, random_state=0)
            assert isinstance(text, str)
            return
        if isinstance(model, LSTM):
            X = rng.normal(size=(3, 4, model.input_size))
            out, (h, c) = model.forward(X, lengths=[4, 2, 1], training=False)
            assert out.shape == (3, 4, model.hidden_size * model.num_directions)
            assert np.isfinite(out).all() and np.isfinite(h).all()
            return
        if model._input_layout == "2d":
            X = rng.normal(size=(3, model.n_features_in_))
        else:
            X = rng.normal(size=(3, 4, model._n_step_features))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = model.predict(X)
            feats = model.transform(X)
        assert len(pred) == 3 and len(feats) == 3
        assert np.isfinite(feats).all()
        if isinstance(model, LSTMClassifier):
            assert np.isin(pred, model.classes_).all()
            assert np.isfinite(model.predict_proba(X)).all()
        else:
            assert np.isfinite(pred).all()
    except ValueError:
        pass


def _run(path, data, original_encoding, blind, stats, label):
    path.unlink(missing_ok=True)  # a new file: much faster than truncating one on some systems
    path.write_bytes(data)
    stats.counts[f"case:{label}"] += 1
    try:
        model = load(path)
    except ModelFileError as exc:
        stats.counts["refused (ModelFileError)"] += 1
        stats.messages[_message_kind(exc)] += 1
        return
    same = _encoding(model) == original_encoding
    if same:
        stats.counts["loaded, unchanged (no-op mutation)"] += 1
        return
    assert not blind, f"{label}: a blind mutation loaded as a different model"
    stats.counts["loaded, changed (aware mutation, valid file)"] += 1
    _exercise(model)


# ---------------------------------------------------------------------- mutations
def _header_end(data):
    """End of the header (clamped to the data, which earlier mutations may have cut)."""
    if len(data) < 8:
        return len(data)
    return min(8 + struct.unpack("<Q", data[:8])[0], len(data))


def flip_bits(data, rnd):
    out = bytearray(data)
    end = _header_end(data)
    for _ in range(rnd.choice([1, 1, 1, 2, 3, 8])):
        # Half of the flips hit the header, where the parsing is.
        i = rnd.randrange(end) if end and rnd.random() < 0.5 else rnd.randrange(len(out))
        out[i] ^= 1 << rnd.randrange(8)
    return bytes(out)


def insert_bytes(data, rnd):
    i = rnd.randrange(len(data) + 1)
    return data[:i] + bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8))) + data[i:]


def delete_bytes(data, rnd):
    i = rnd.randrange(len(data))
    return data[:i] + data[i + rnd.randint(1, 8):]


def overwrite_bytes(data, rnd):
    i = rnd.randrange(len(data))
    run = rnd.choice([b"\0", b"\xff", b" ", b"\n", b'"', b"{", b"}", b"[", b"0", b"9", b"-",
                      b"e", b"\\", b",", b":"]) * rnd.randint(1, 4)
    return data[:i] + run + data[i + len(run):]


def truncate(data, rnd):
    return data[: rnd.randrange(len(data))]


def duplicate_slice(data, rnd):
    i, j = sorted(rnd.randrange(len(data)) for _ in range(2))
    k = rnd.randrange(len(data))
    return data[:k] + data[i:j][:64] + data[k:]


def change_length_prefix(data, rnd):
    if len(data) < 8:
        return data
    (n,) = struct.unpack("<Q", data[:8])
    new = rnd.choice([0, 1, n - 1, n + 1, n - 8, n + 8, n * 2, 2**31, 2**64 - 1,
                      rnd.randrange(2**64), _container.MAX_HEADER_BYTES,
                      _container.MAX_HEADER_BYTES + 1])
    return struct.pack("<Q", new % 2**64) + data[8:]


def swap_json_char(data, rnd):
    """Replace one header character by another JSON-significant one (keeps the length)."""
    end = _header_end(data)
    if end <= 8:
        return data
    i = rnd.randrange(8, end)
    return data[:i] + rnd.choice(b' \t\n",:{}[]0123456789-.eE\\tfnul').to_bytes(1, "little") \
        + data[i + 1:]


BLIND = [flip_bits, insert_bytes, delete_bytes, overwrite_bytes, truncate, duplicate_slice,
         change_length_prefix, swap_json_char]

INTERESTING = [None, True, False, 0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, 2**32, 2**63, 2**64,
               -(2**63), 10**30, 0.0, -0.0, 0.5, 1.5, -1.5, 1e-300, 1e300, 1e308, "", "x",
               "nan", "inf", "-inf", "float16", "float32", "float64", "object", "F32", "F64",
               "I64", "O", "<f4", "adam", "sgd", "rmsprop", "2d", "3d", "seq", [], {},
               [0], [1, 2], [2, 1], ["a", "b"], {"a": 1}, [[1]], "A" * 300, [None] * 5]


def _paths(value, prefix=()):
    """Every (path, value) in a JSON value, containers included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _random_value(rnd, old):
    if isinstance(old, bool):
        return rnd.choice([not old, None, 0, 1, "true"])
    if isinstance(old, int) and rnd.random() < 0.5:
        return old + rnd.choice([-2, -1, 1, 2, old, -old - 1, 2**40])
    if isinstance(old, float) and rnd.random() < 0.5:
        return rnd.choice([old * 2, -old, old + 1e-9, float(int(old)), 1e300])
    if isinstance(old, str) and rnd.random() < 0.3:
        return old[: len(old) // 2] if old else "x"
    return copy.deepcopy(rnd.choice(INTERESTING))


def _edit_json(value, rnd):
    """Replace, delete or add one entry somewhere in a nested JSON value (in place)."""
    paths = [p for p, _ in _paths(value) if p]
    if not paths:
        return
    path = rnd.choice(paths)
    parent = value
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = rnd.random()
    if op < 0.7:
        parent[key] = _random_value(rnd, parent[key])
    elif op < 0.85:
        del parent[key]
    elif isinstance(parent, dict):
        parent[rnd.choice(["extra", "__class__", "n_iter_", "x" * 5])] = rnd.choice(INTERESTING)
    else:
        parent.insert(key, rnd.choice(INTERESTING))


def _typed_array(table, buf, name):
    info = table[name]
    dtype = _container.DTYPES[info["dtype"]]
    b, e = info["data_offsets"]
    return np.frombuffer(buf, dtype=dtype, count=(e - b) // dtype.itemsize, offset=b).copy(), b, e


def mutate_aware(data, rnd):
    """(new bytes, blind): a structured edit; blind when the checksum is left stale."""
    metadata, table, buf = _container._split(data)
    model = json.loads(metadata["model"])
    names = sorted(table)
    kind = rnd.choice(["model", "model", "model", "metadata", "table", "table", "add-array",
                       "drop-array", "nan", "version", "type", "splice-offsets"])
    if kind == "model":
        _edit_json(model, rnd)
    elif kind == "metadata":
        _edit_json(metadata, rnd)
    elif kind == "version":
        metadata["format_version"] = rnd.choice(["2", "0", "1", "01", "999999999", "-1", "1.0",
                                                 " 1", "", "1" * 12])
    elif kind == "type":
        metadata["type"] = rnd.choice(["LSTM", "LSTMClassifier", "LSTMRegressor",
                                       "LSTMLanguageModel", "builtins.eval", "os.system",
                                       "SequenceNetwork", "", "lstm"])
    elif kind == "table":
        name = rnd.choice(names)
        _edit_json(table[name], rnd)
        if rnd.random() < 0.2:
            table[name]["dtype"] = rnd.choice(["F32", "F64", "I64", "F16", "BF16", "O", "U8"])
    elif kind == "add-array":
        n_bytes = rnd.choice([0, 4, 8, 24])
        table[rnd.choice(["extra", names[0] + "x", "optimizer.ms.extra", "network.layers.9.w"])
              ] = {"dtype": rnd.choice(["F32", "F64"]), "shape": [n_bytes // 4],
                   "data_offsets": [len(buf), len(buf) + n_bytes]}
        buf += b"\0" * n_bytes
    elif kind == "drop-array":
        b, e = table.pop(rnd.choice(names))["data_offsets"]
        for info in table.values():
            if info["data_offsets"][0] >= e:
                info["data_offsets"] = [o - (e - b) for o in info["data_offsets"]]
        buf = buf[:b] + buf[e:]
    elif kind == "nan":
        name = rnd.choice(names)
        arr, b, e = _typed_array(table, buf, name)
        arr[rnd.randrange(arr.size)] = rnd.choice([np.nan, np.inf, -np.inf, -1.0, 1e30, 0.0])
        buf = buf[:b] + arr.tobytes() + buf[e:]
    else:  # swap the offsets of two arrays of the same size: a valid, different file
        same = collections.defaultdict(list)
        for name in names:
            same[tuple(table[name]["data_offsets"][1] - table[name]["data_offsets"][0]
                       for _ in [0])].append(name)
        groups = [g for g in same.values() if len(g) > 1]
        if groups:
            a, b = rnd.sample(rnd.choice(groups), 2)
            table[a]["data_offsets"], table[b]["data_offsets"] = (
                table[b]["data_offsets"], table[a]["data_offsets"])
    metadata["model"] = json.dumps(model)
    blind = rnd.random() < 0.2
    if not blind:
        metadata["sha256"] = _container._digest(metadata, table, [buf])
    try:
        header = _container._pack_header(metadata, table)
    except (TypeError, ValueError):  # e.g. a key that is no longer a string
        header = _container._pack_header({"format": "broken"}, {})
    return header + buf, blind


# ---------------------------------------------------------------------- the tests
def _in_turn(bases, count, start):
    """(bytes, encoding) of the base files in turn, ``count`` times or until
    :data:`TIME_CAP` seconds after ``start``."""
    names = sorted(bases)
    for i in range(count):
        if time.perf_counter() - start > TIME_CAP:
            return
        yield bases[names[i % len(names)]]


def test_fuzz_blind_mutations(bases, tmp_path):
    rnd, stats, start = random.Random(SEED), Stats(), time.perf_counter()
    for data, encoding in _in_turn(bases, BLIND_CASES, start):
        mutation = rnd.choice(BLIND)
        mutant = data
        for _ in range(rnd.choice([1, 1, 1, 2, 3])):
            mutant = mutation(mutant, rnd) if mutant else mutant
        _run(tmp_path / "mutant.pylstm", mutant, encoding, True, stats, mutation.__name__)
    _REPORTS.append((f"blind mutations ({time.perf_counter() - start:.1f} s)", stats))
    assert sum(v for k, v in stats.counts.items() if k.startswith("case:")) >= min(
        BLIND_CASES, 500)


def test_fuzz_aware_mutations(bases, tmp_path):
    rnd, stats, start = random.Random(SEED + 1), Stats(), time.perf_counter()
    for data, encoding in _in_turn(bases, AWARE_CASES, start):
        mutant, blind = mutate_aware(data, rnd)
        _run(tmp_path / "mutant.pylstm", mutant, encoding, blind, stats,
             "aware-stale-checksum" if blind else "aware-new-checksum")
    _REPORTS.append((f"aware mutations ({time.perf_counter() - start:.1f} s)", stats))
    assert stats.counts["refused (ModelFileError)"] > AWARE_CASES // 2


_HYPOTHESIS_STATS = Stats()
_REPORTS.append(("hypothesis", _HYPOTHESIS_STATS))
BASE_NAMES = ["classifier", "classifier-2d", "layer", "lm-char", "lm-word", "regressor"]
#: Fixed examples (derandomized, no database), each loading a file: no deadline.
HYPOTHESIS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])


@HYPOTHESIS
@given(base=st.sampled_from(BASE_NAMES),
       edits=st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete"]),
                                st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=4),
       cut=st.none() | st.floats(0, 1, exclude_max=True))
def test_fuzz_hypothesis_byte_edits(bases, tmp_path, base, edits, cut):
    data, encoding = bases[base]
    out = bytearray(data)
    for op, where, byte in edits:
        if not out:
            break
        # Positions are drawn in the header more often than in the arrays.
        span = _header_end(data) if where < 0.5 else len(out)
        i = min(int(where * 2 % 1 * span), len(out) - 1)
        if op == "flip":
            out[i] ^= 1 << (byte % 8)
        elif op == "set":
            out[i] = byte
        elif op == "insert":
            out.insert(i, byte)
        else:
            del out[i]
    if cut is not None:
        out = out[: int(cut * len(out))]
    _run(tmp_path / "mutant.pylstm", bytes(out), encoding, True, _HYPOTHESIS_STATS,
         "hypothesis-bytes")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10)


@HYPOTHESIS
@given(base=st.sampled_from(BASE_NAMES),
       pick=st.floats(0, 1, exclude_max=True), value=json_values,
       in_table=st.booleans())
def test_fuzz_hypothesis_header_values(bases, tmp_path, base, pick, value, in_table):
    """Replace one value of the model description or array table, with a new checksum."""
    data, encoding = bases[base]
    metadata, table, buf = _container._split(data)
    model = json.loads(metadata["model"])
    target = table if in_table else model
    paths = [p for p, _ in _paths(target) if p]
    path = paths[int(pick * len(paths))]
    parent = target
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    metadata["model"] = json.dumps(model)
    metadata["sha256"] = _container._digest(metadata, table, [buf])
    mutant = _container._pack_header(metadata, table) + buf
    _run(tmp_path / "mutant.pylstm", mutant, encoding, False, _HYPOTHESIS_STATS,
         "hypothesis-json")
