"""Safe persistence of layers, estimators and language models: :func:`save`, :func:`load`.

A model file never holds pickled objects and loading never imports or calls
anything named in the file: the file's type name is looked up in a fixed
registry (:data:`_REGISTRY`) of the savable pylstm types, hyperparameters and
fitted values are plain JSON, and the arrays are raw little-endian bytes whose
dtype and shape the header states and the loader checks against the
hyperparameters before it reads them.

File format (``format_version`` 1)
----------------------------------
The layout is that of a `safetensors <https://github.com/huggingface/safetensors>`_
file, written and read by this module alone (no dependency):

* bytes 0-7: ``N``, the header's length, an unsigned little-endian 64-bit integer;
* bytes 8 to 8 + N: the header, a UTF-8 JSON object, padded with spaces so that
  the arrays start at a multiple of 8 bytes::

      {"__metadata__": {"format": "pylstm", "format_version": "1",
                        "type": "LSTMClassifier", "model": "<JSON text>",
                        "sha256": "<64 hex digits>"},
       "<array name>": {"dtype": "F32", "shape": [20, 3], "data_offsets": [0, 240]},
       ...}

  ``model`` is itself JSON: the hyperparameters (``params``; a dict
  ``class_weight`` as a list of ``[label, weight]`` pairs, and one missing
  from a file written before it existed means None) and, for
  estimators and language models, the fitted values (``fitted``: ``classes_``,
  ``vocabulary_``, ``loss_curve_`` ...; non-finite floats as the strings
  ``"inf"``, ``"-inf"`` and ``"nan"``), the network's dropout and the
  optimizer's settings, counter and learning rate;
* the rest: the arrays' bytes (``F32``/``F64``/``I64``, little-endian, C order),
  back to back in the order of their ``data_offsets``, with no gap.

``sha256`` is the SHA-256 digest of the canonical JSON of the metadata (without
``sha256``) and of the array table, a NUL byte, then the array bytes, so any
change to the weights, to their layout or to the fitted values is detected.

Estimator files hold the network's arrays (``network.layers.{k}.weight_ih_l0``
... ``network.coef``, ``network.intercept``) and the optimizer's buffers
(``optimizer.{buffer}.{array name}``), so that ``partial_fit`` continues after
loading exactly as it would have without saving; layer files hold the arrays of
:meth:`pylstm.LSTM.state_dict` under their own names.

:class:`~pylstm.LSTMLanguageModel` files hold the vocabulary in the JSON
(``fitted.vocabulary_``, a list of distinct strings starting with ``'<unk>'``
and ``'<bos>'``; the token index is rebuilt from it), the network's sizes
(``network``: ``embedding_dim``, ``hidden_size``, ``num_layers``, ``dropout``)
and the arrays ``network.embedding`` (V, E), ``network.layers.{k}.*`` (one
unidirectional layer each), ``network.coef`` (H, V), ``network.intercept``
(V,) with the optimizer's buffers, V being the vocabulary's size.
"""

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import secrets
import stat
import struct
import time
import warnings
from typing import NamedTuple

import numpy as np
from sklearn.utils.validation import check_is_fitted

from . import _optim
from ._estimators import LSTMClassifier, LSTMRegressor
from ._language_model import BOS, UNK, LSTMLanguageModel
from ._layer import LSTM, _param_names
from ._network import LanguageNetwork, SequenceNetwork
from ._validation import BLAS_INT_MAX, check_dtype

__all__ = ["ModelFileError", "load", "save"]

#: Name in the ``format`` field of every pylstm model file.
FORMAT_NAME = "pylstm"

#: Version of the format that :func:`save` writes and the newest that :func:`load` reads.
FORMAT_VERSION = 1

#: Largest header :func:`load` accepts (bytes); a larger one means a foreign or corrupted file.
MAX_HEADER_BYTES = 16 * 2**20

#: The only array dtypes a file may declare (safetensors' names).
_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8")}
_DTYPE_CODES = {"float32": "F32", "float64": "F64", "int64": "I64"}

_METADATA_KEYS = frozenset({"format", "format_version", "type", "model", "sha256"})
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1


class ModelFileError(ValueError):
    """A file is not a valid pylstm model file; :func:`load` refused it.

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


# ---------------------------------------------------------------------- JSON helpers
def _short(value, limit=80):
    """``repr(value)`` cut to ``limit`` characters, for messages about file content."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_short(key)}")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _json_loads(text, what):
    """Strict JSON: no duplicate keys, no NaN/Infinity; every failure is a ModelFileError."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates,
                          parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{what} is not valid JSON: {_short(str(exc), 120)}") from None


def _json_dumps(obj, canonical=False):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      sort_keys=canonical)


# ---------------------------------------------------------------------- value readers
def _int(v, where, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ModelFileError(f"{where} must be an integer in [{lo}, {hi}], got {_short(v)}")
    return v


def _bool(v, where):
    if not isinstance(v, bool):
        raise ModelFileError(f"{where} must be true or false, got {_short(v)}")
    return v


def _str(v, where, choices=None):
    if not isinstance(v, str) or (choices is not None and v not in choices):
        expected = "a string" if choices is None else f"one of {sorted(choices)}"
        raise ModelFileError(f"{where} must be {expected}, got {_short(v)}")
    return v


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _float(v, where, nonfinite=False, lo=-math.inf, hi=math.inf):
    if nonfinite and isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    if (isinstance(v, bool) or not isinstance(v, (int, float))
            or not math.isfinite(v) or not lo <= v <= hi):
        raise ModelFileError(f"{where} must be a finite number in [{lo}, {hi}], got {_short(v)}")
    return float(v)


def _float_list(v, where):
    if not isinstance(v, list):
        raise ModelFileError(f"{where} must be a list of numbers, got {_short(v)}")
    return [_float(x, f"{where}[{i}]", nonfinite=True) for i, x in enumerate(v)]


def _dict(v, where, keys):
    """Check that ``v`` is a JSON object with exactly the given keys."""
    if not isinstance(v, dict):
        raise ModelFileError(f"{where} must be a JSON object, got {_short(v)}")
    missing = sorted(set(keys) - set(v))
    extra = sorted(set(v) - set(keys))
    if missing or extra:
        problems = ([f"missing keys {_short(missing)}"] if missing else []) + (
            [f"unexpected keys {_short(extra)}"] if extra else [])
        raise ModelFileError(f"{where} has {' and '.join(problems)}")
    return v


def _enc_float(x):
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


class _Field(NamedTuple):
    """How one fitted attribute is written to and read from the JSON header."""

    encode: object  # value -> JSON value
    decode: object  # (JSON value, where) -> value


def _int_field(lo, hi):
    return _Field(int, lambda v, w: _int(v, w, lo, hi))


def _optional(field):
    return _Field(lambda x: None if x is None else field.encode(x),
                  lambda v, w: None if v is None else field.decode(v, w))


_FLOAT_FIELD = _Field(_enc_float, lambda v, w: _float(v, w, nonfinite=True))
_FLOAT_LIST_FIELD = _Field(lambda xs: [_enc_float(x) for x in xs], _float_list)
_DTYPE_FIELD = _Field(lambda d: np.dtype(d).name,
                      lambda v, w: np.dtype(_str(v, w, {"float32", "float64"})))
_BOOL_FIELD = _Field(bool, _bool)


def _decode_architecture(v, where):
    if not isinstance(v, list) or len(v) != 5:
        raise ModelFileError(f"{where} must be a list of 5 values, got {_short(v)}")
    hidden = _int(v[0], f"{where}[0] (hidden_size)", 1, BLAS_INT_MAX // 4)
    layers = _int(v[1], f"{where}[1] (num_layers)", 1, BLAS_INT_MAX)
    return (hidden, layers, _bool(v[2], f"{where}[2] (bidirectional)"),
            _bool(v[3], f"{where}[3] (return_sequences)"),
            _str(v[4], f"{where}[4] (dtype)", {"float32", "float64"}))


_ARCHITECTURE_FIELD = _Field(
    lambda a: [int(a[0]), int(a[1]), bool(a[2]), bool(a[3]), str(a[4])], _decode_architecture)


# classes_ keep their dtype, so that predict returns labels of the same dtype.
_CLASS_DTYPE = re.compile(r"\|b1|[<>|][iu][1248]|[<>]f[248]|[<>]U[0-9]{1,7}|\|O")


def _encode_classes(classes):
    arr = np.asarray(classes)
    kind = arr.dtype.kind
    if arr.ndim != 1 or not _CLASS_DTYPE.fullmatch(arr.dtype.str):
        raise TypeError(f"cannot save classes_ of dtype {arr.dtype} and shape {arr.shape}; "
                        "supported: bool, integers, floats, str, and objects holding str, "
                        "int, float or bool")
    if kind == "O":
        values = []
        for v in arr:
            if isinstance(v, (np.generic,)):
                v = v.item()
            if not isinstance(v, (str, int, float, bool)):
                raise TypeError(f"cannot save a class label of type {type(v).__name__}")
            values.append(v)
    else:
        values = arr.tolist()
    return {"dtype": arr.dtype.str, "values": values}


def _decode_classes(v, where):
    v = _dict(v, where, {"dtype", "values"})
    code = _str(v["dtype"], f"{where}.dtype")
    if not _CLASS_DTYPE.fullmatch(code):
        raise ModelFileError(f"{where}.dtype {_short(code)} is not a supported label dtype")
    dtype = np.dtype(code)
    values = v["values"]
    if not isinstance(values, list) or len(values) < 2:
        raise ModelFileError(f"{where}.values must be a list of at least 2 labels")
    if len(values) * dtype.itemsize > 4 * MAX_HEADER_BYTES:
        raise ModelFileError(f"{where}: {len(values)} labels of dtype {code} are too large")
    kind = dtype.kind
    for i, x in enumerate(values):
        w = f"{where}.values[{i}]"
        if kind == "b":
            _bool(x, w)
        elif kind in "iu":
            info = np.iinfo(dtype)
            _int(x, w, int(info.min), int(info.max))
        elif kind == "f":
            _float(x, w)
        elif kind == "U":
            if not isinstance(x, str) or len(x) > dtype.itemsize // 4:
                raise ModelFileError(f"{w} must be a string of at most {dtype.itemsize // 4} "
                                     f"characters, got {_short(x)}")
        elif isinstance(x, bool) or not isinstance(x, (str, int, float)) or (
                isinstance(x, float) and not math.isfinite(x)):
            raise ModelFileError(f"{w} must be a string or a finite number, got {_short(x)}")
    if kind == "O":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # float16 overflow, checked below
            arr = np.array(values, dtype=dtype)
        if kind == "f" and not all(float(a) == x for a, x in zip(arr, values, strict=True)):
            raise ModelFileError(f"{where}.values are not representable as {dtype}")
    try:
        ordered = all(a < b for a, b in zip(arr[:-1], arr[1:], strict=True))
    except TypeError:
        ordered = False
    if not ordered:
        raise ModelFileError(f"{where}.values must be sorted and distinct (as fit makes them)")
    return arr


_CLASSES_FIELD = _Field(_encode_classes, _decode_classes)


def _decode_names(v, where):
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ModelFileError(f"{where} must be a list of strings")
    arr = np.empty(len(v), dtype=object)
    arr[:] = v
    return arr


_NAMES_FIELD = _optional(_Field(lambda a: [str(x) for x in a], _decode_names))


# ---------------------------------------------------------------------- hyperparameters
#: Hyperparameters added since format version 1 came out, with the value that
#: a file saved before them (which lacks them) meant.
_ADDED_PARAMS = {"class_weight": None}

#: JSON types of a class label in a saved ``class_weight``.
_LABEL_TYPES = (str, bool, int, float)


def _encode_class_weight(class_weight):
    """A dict ``class_weight`` as a list of ``[label, weight]`` pairs.

    JSON object keys are strings only: pairs keep integer, float and boolean
    labels apart from the strings that spell them.
    """
    pairs = []
    for label, weight in class_weight.items():
        label = label.item() if isinstance(label, np.generic) else label
        weight = weight.item() if isinstance(weight, np.generic) else weight
        if not isinstance(label, _LABEL_TYPES) or (
                isinstance(label, float) and not math.isfinite(label)):
            raise TypeError(f"cannot save class_weight label {_short(label)} of type "
                            f"{type(label).__name__}: only str, int, finite float and bool")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                math.isfinite(weight) and weight >= 0):
            raise ValueError(f"cannot save class_weight[{_short(label)}]={_short(weight)}: "
                             "class weights must be finite numbers >= 0")
        pairs.append([label, weight])
    return pairs


def _decode_class_weight(v, where):
    """``class_weight`` read from a file: None, 'balanced' or pairs -> dict."""
    if v is None or v == "balanced":
        return v
    if not isinstance(v, list):
        raise ModelFileError(f"{where} must be null, \"balanced\" or a list of [label, "
                             f"weight] pairs, got {_short(v)}")
    out = {}
    for i, pair in enumerate(v):
        w = f"{where}[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ModelFileError(f"{w} must be a [label, weight] pair, got {_short(pair)}")
        label, weight = pair
        if not isinstance(label, _LABEL_TYPES) or (
                isinstance(label, float) and not math.isfinite(label)):
            raise ModelFileError(f"{w}: the label must be a string, number or boolean, "
                                 f"got {_short(label)}")
        if label in out:  # also 1, 1.0 and true, which are one dict key
            raise ModelFileError(f"{w}: label {_short(label)} is given twice")
        out[label] = _float(weight, f"{w} (weight)", lo=0.0) if isinstance(weight, float) \
            else _int(weight, f"{w} (weight)", 0, _INT64_MAX)
    return out


def _encode_params(params, owner):
    """``get_params()`` values as JSON scalars (numpy scalars and dtypes converted)."""
    out = {}
    for name, value in params.items():
        if name == "class_weight" and isinstance(value, dict):
            out[name] = _encode_class_weight(value)
            continue
        if name == "dtype" and value not in ("float32", "float64"):
            value = check_dtype(value).name  # 'f4', np.float32 ... -> 'float32'
        elif isinstance(value, np.generic):
            value = value.item()
        if name == "random_state" and isinstance(value, np.random.RandomState):
            warnings.warn(
                f"{owner}'s random_state is a RandomState instance, which a model file cannot "
                "hold; it is saved as None (the fitted weights are saved exactly; only a "
                "refit from scratch of the loaded model draws new initial weights)",
                UserWarning, stacklevel=4)
            value = None
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"cannot save hyperparameter {name}={_short(value)} of type "
                            f"{type(value).__name__}: only None, bool, int, float and str")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot save hyperparameter {name}={value}: not finite")
        out[name] = value
    return out


def _decode_estimator_params(cls, v, where):
    """Hyperparameters of an estimator: exactly its get_params() keys, JSON scalars.

    A parameter of :data:`_ADDED_PARAMS` may be missing (the file predates it).
    """
    keys = cls().get_params(deep=False)
    if isinstance(v, dict):
        v = {**{k: d for k, d in _ADDED_PARAMS.items() if k in keys}, **v}
    v = _dict(v, where, keys)
    if "class_weight" in v:
        v["class_weight"] = _decode_class_weight(v["class_weight"], f"{where}.class_weight")
    for name, value in v.items():
        w = f"{where}.{name}"
        if name == "class_weight":
            continue
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ModelFileError(f"{w} must be a JSON scalar, got {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ModelFileError(f"{w} must be finite, got {value}")
    # Only these two strings reach NumPy's dtype parser (which runs ast.literal_eval on
    # some strings, and raises SyntaxError on ',f8').
    _str(v["dtype"], f"{where}.dtype", {"float32", "float64"})
    if v["random_state"] is not None:
        _int(v["random_state"], f"{where}.random_state", 0, _UINT32_MAX)
    if not isinstance(v["verbose"], bool):
        _int(v["verbose"], f"{where}.verbose", 0, 2**31 - 1)
    estimator = cls(**v)
    try:
        estimator._check_params()
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"invalid hyperparameters in {where}: {exc}") from None
    return estimator


# ---------------------------------------------------------------------- the registry
class _Codec(NamedTuple):
    """How one savable type is written and read.

    ``to_arrays(obj) -> (model, arrays)``: the JSON-able description and the
    arrays (a dict of name to ndarray). ``spec(model, n_arrays) -> (parsed,
    expected)``: validates the description read from a file (raising
    ModelFileError) and returns what :func:`from_arrays` needs plus the arrays
    the file must hold, as a dict of name to (shape, dtype code); ``n_arrays``
    (the number of arrays in the file) bounds any loop over layers.
    ``from_arrays(parsed, arrays) -> obj`` builds the object from checked data.
    """

    cls: type
    to_arrays: object
    spec: object
    from_arrays: object


# -- LSTM layer
_LAYER_PARAMS = ("input_size", "hidden_size", "num_layers", "bidirectional", "dtype",
                 "unit_forget_bias")


def _layer_to_arrays(layer):
    params = {"input_size": int(layer.input_size), "hidden_size": int(layer.hidden_size),
              "num_layers": int(layer.num_layers), "bidirectional": bool(layer.bidirectional),
              "dtype": np.dtype(layer.dtype).name,
              "unit_forget_bias": bool(layer.unit_forget_bias)}
    return {"params": params}, layer.state_dict()


def _lstm_shapes(input_size, hidden_size, num_layers, bidirectional, prefix=""):
    """(name, shape) of an LSTM's parameters in state_dict order, with a name prefix."""
    H, D = hidden_size, 2 if bidirectional else 1
    out = []
    for layer, _, names in _param_names(num_layers, bidirectional):
        in_size = input_size if layer == 0 else H * D
        shapes = ((4 * H, in_size), (4 * H, H), (4 * H,), (4 * H,))
        out.extend((prefix + n, s) for n, s in zip(names, shapes, strict=True))
    return out


def _layer_spec(model, n_arrays):
    model = _dict(model, "model", {"params"})
    p = _dict(model["params"], "model.params", _LAYER_PARAMS)
    where = "model.params."
    params = {
        "input_size": _int(p["input_size"], where + "input_size", 1, BLAS_INT_MAX),
        "hidden_size": _int(p["hidden_size"], where + "hidden_size", 1, BLAS_INT_MAX // 4),
        "num_layers": _int(p["num_layers"], where + "num_layers", 1, max(1, n_arrays)),
        "bidirectional": _bool(p["bidirectional"], where + "bidirectional"),
        "dtype": _str(p["dtype"], where + "dtype", {"float32", "float64"}),
        "unit_forget_bias": _bool(p["unit_forget_bias"], where + "unit_forget_bias"),
    }
    code = _DTYPE_CODES[params["dtype"]]
    expected = {name: (shape, code) for name, shape in _lstm_shapes(
        params["input_size"], params["hidden_size"], params["num_layers"],
        params["bidirectional"])}
    return params, expected


def _layer_from_arrays(params, arrays):
    layer = LSTM(params["input_size"], params["hidden_size"], params["num_layers"],
                 params["bidirectional"], params["dtype"], random_state=0,
                 unit_forget_bias=params["unit_forget_bias"])
    layer.load_state_dict(arrays)
    return layer


# -- estimators
#: Fitted attributes of both estimators: name -> how it is stored. Attributes not
#: listed here (nor hyperparameters, network_, _optimizer, _best_state) are not saved;
#: tests/io/test_io.py checks that fit sets no others.
_ESTIMATOR_FITTED = {
    "n_features_in_": _int_field(1, BLAS_INT_MAX),
    "feature_names_in_": _NAMES_FIELD,
    "_input_layout": _Field(str, lambda v, w: _str(v, w, {"3d", "2d", "seq"})),
    "_n_step_features": _int_field(1, BLAS_INT_MAX),
    "_dtype": _DTYPE_FIELD,
    "_seed": _int_field(0, _UINT32_MAX),
    "_architecture": _ARCHITECTURE_FIELD,
    "n_iter_": _int_field(0, _UINT32_MAX),
    "t_": _int_field(0, _INT64_MAX),
    "loss_curve_": _FLOAT_LIST_FIELD,
    "best_loss_": _FLOAT_FIELD,
    "_no_improvement_count": _int_field(0, _INT64_MAX),
    "validation_scores_": _optional(_FLOAT_LIST_FIELD),
    "best_validation_score_": _optional(_FLOAT_FIELD),
}
_CLASSIFIER_FITTED = {**_ESTIMATOR_FITTED, "classes_": _CLASSES_FIELD}
_REGRESSOR_FITTED = {**_ESTIMATOR_FITTED, "n_outputs_": _int_field(1, BLAS_INT_MAX),
                     "_y_squeeze": _BOOL_FIELD}

#: Optimizers by name, with the settings (beyond the learning rate) each keeps.
_OPTIMIZERS = {
    "adam": (_optim.AdamOptimizer, ("beta_1", "beta_2", "epsilon")),
    "rmsprop": (_optim.RMSpropOptimizer, ("rho", "epsilon")),
    "sgd": (_optim.SGDOptimizer, ("momentum", "nesterov")),
}
#: Optimizer buffers that are running means of squares, hence never negative.
_NONNEGATIVE_BUFFERS = frozenset({"vs", "square_avg"})


def _network_names(n_layers, bidirectional):
    """Names of SequenceNetwork's arrays, aligned with ``parameters()``."""
    names = []
    for k in range(n_layers):
        names.extend(f"network.layers.{k}.{n}" for _, _, group in _param_names(1, bidirectional)
                     for n in group)
    return names + ["network.coef", "network.intercept"]


def _estimator_to_arrays(est, fitted_schema):
    check_is_fitted(est, "network_")
    fitted = {}
    for attr, field in fitted_schema.items():
        value = getattr(est, attr, None)
        fitted[attr] = None if value is None else field.encode(value)
    net = est.network_
    names = _network_names(len(net.layers), net.layers[0].bidirectional)
    params = net.parameters()
    if len(params) != len(names):
        raise ValueError("the network's parameters do not match its layers")
    arrays = dict(zip(names, params, strict=True))
    optimizer = _encode_optimizer(est._optimizer, names, arrays)
    model = {"params": _encode_params(est.get_params(deep=False), type(est).__name__),
             "fitted": fitted, "network": {"dropout": float(net.dropout)},
             "optimizer": optimizer}
    return model, arrays


def _encode_optimizer(opt, names, arrays):
    """The optimizer's JSON description; adds its buffers to ``arrays`` (in place).

    ``names`` are the names of the network's arrays, aligned with the
    optimizer's parameters; buffer ``b`` of array ``n`` is saved as
    ``optimizer.{b}.{n}``.
    """
    entry = _OPTIMIZERS.get(getattr(opt, "_name", None))
    if entry is None or type(opt) is not entry[0]:
        raise TypeError(f"cannot save an optimizer of type {type(opt).__name__}")
    state = opt.state_dict()
    for buf in entry[0]._buffer_names:
        if len(state[buf]) != len(names):
            raise ValueError(f"the optimizer's {buf} do not match the network's parameters")
        arrays.update((f"optimizer.{buf}.{n}", a) for n, a in zip(names, state[buf],
                                                                   strict=True))
    optimizer = {"name": opt._name, "t": int(state["t"]),
                 "learning_rate": float(state["learning_rate"]),
                 "learning_rate_init": float(opt.learning_rate_init)}
    for key in entry[1]:
        value = getattr(opt, key)
        optimizer[key] = bool(value) if isinstance(value, (bool, np.bool_)) else float(value)
    return optimizer


def _decode_optimizer(v):
    where = "model.optimizer"
    if not isinstance(v, dict):
        raise ModelFileError(f"{where} must be a JSON object")
    name = _str(v.get("name"), f"{where}.name", set(_OPTIMIZERS))
    cls, settings = _OPTIMIZERS[name]
    _dict(v, where, {"name", "t", "learning_rate", "learning_rate_init", *settings})
    out = {"name": name, "cls": cls,
           "t": _int(v["t"], f"{where}.t", 0, _INT64_MAX),
           "learning_rate": _float(v["learning_rate"], f"{where}.learning_rate", lo=0.0),
           "learning_rate_init": _float(v["learning_rate_init"],
                                        f"{where}.learning_rate_init", lo=0.0)}
    kwargs = {}
    for key in settings:
        if key == "nesterov":
            kwargs[key] = _bool(v[key], f"{where}.{key}")
        else:
            kwargs[key] = _float(v[key], f"{where}.{key}")
    try:  # the optimizer's own range checks, on a throwaway instance
        cls([np.zeros(1)], out["learning_rate_init"], **kwargs)
        if out["learning_rate"] <= 0:
            raise ValueError("learning_rate must be > 0")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"invalid optimizer settings in {where}: {exc}") from None
    out["kwargs"] = kwargs
    return out


class _EstimatorSpec:
    """``spec`` of an estimator codec; ``fitted`` is its fitted-attribute schema."""

    def __init__(self, cls, fitted):
        self.cls = cls
        self.fitted = fitted

    def __call__(self, model, n_arrays):
        model = _dict(model, "model", {"params", "fitted", "network", "optimizer"})
        estimator = _decode_estimator_params(self.cls, model["params"], "model.params")
        raw = _dict(model["fitted"], "model.fitted", self.fitted)
        fitted = {attr: field.decode(raw[attr], f"model.fitted.{attr}")
                  for attr, field in self.fitted.items()}
        network = _dict(model["network"], "model.network", {"dropout"})
        dropout = _float(network["dropout"], "model.network.dropout", lo=0.0)
        if dropout >= 1:
            raise ModelFileError(f"model.network.dropout must be < 1, got {dropout}")

        # Consistency of the fitted values with each other.
        H, L, bidirectional, return_sequences, dtype_name = fitted["_architecture"]
        if dtype_name != fitted["_dtype"].name:
            raise ModelFileError(f"model.fitted._architecture has dtype {dtype_name} but "
                                 f"_dtype is {fitted['_dtype'].name}")
        n_step = fitted["_n_step_features"]
        if fitted["_input_layout"] == "2d":
            if fitted["n_features_in_"] % n_step:
                raise ModelFileError(
                    f"model.fitted: 2-D input has n_features_in_={fitted['n_features_in_']} "
                    f"columns, not a multiple of _n_step_features={n_step}")
        elif fitted["n_features_in_"] != n_step:
            raise ModelFileError(f"model.fitted.n_features_in_={fitted['n_features_in_']} "
                                 f"differs from _n_step_features={n_step}")
        names = fitted["feature_names_in_"]
        if names is not None and (fitted["_input_layout"] != "2d"
                                  or len(names) != fitted["n_features_in_"]):
            raise ModelFileError("model.fitted.feature_names_in_ must name the "
                                 "n_features_in_ columns of 2-D input")
        if (fitted["validation_scores_"] is None) != (fitted["best_validation_score_"] is None):
            raise ModelFileError("model.fitted: validation_scores_ and best_validation_score_ "
                                 "must both be null or both be set")
        if "classes_" in fitted:
            n_outputs = len(fitted["classes_"])
        else:
            n_outputs = fitted["n_outputs_"]
        if L + 1 > n_arrays:
            raise ModelFileError(f"model.fitted._architecture has {L} layers but the file "
                                 f"holds only {n_arrays} arrays")
        optimizer = _decode_optimizer(model["optimizer"])

        code = _DTYPE_CODES[dtype_name]
        shapes = []
        in_size = n_step
        for k in range(L):
            shapes.extend(_lstm_shapes(in_size, H, 1, bidirectional, f"network.layers.{k}."))
            in_size = H * (2 if bidirectional else 1)
        shapes += [("network.coef", (in_size, n_outputs)), ("network.intercept", (n_outputs,))]
        expected = {name: (shape, code) for name, shape in shapes}
        for buf in optimizer["cls"]._buffer_names:
            expected.update((f"optimizer.{buf}.{name}", (shape, code)) for name, shape in shapes)
        parsed = {"estimator": estimator, "fitted": fitted, "dropout": dropout,
                  "optimizer": optimizer, "n_outputs": n_outputs,
                  "names": [name for name, _ in shapes]}
        return parsed, expected


def _estimator_from_arrays(parsed, arrays):
    est = parsed["estimator"]
    fitted = parsed["fitted"]
    for attr, value in fitted.items():
        if value is not None or attr != "feature_names_in_":
            setattr(est, attr, value)
    H, L, bidirectional, return_sequences, dtype_name = fitted["_architecture"]
    net = SequenceNetwork(fitted["_n_step_features"], parsed["n_outputs"], H, L, bidirectional,
                          parsed["dropout"], return_sequences, np.dtype(dtype_name),
                          np.random.RandomState(0))
    for k, layer in enumerate(net.layers):
        prefix = f"network.layers.{k}."
        layer.load_state_dict({n: arrays[prefix + n] for _, _, group in
                               _param_names(1, bidirectional) for n in group})
    net.coef[...] = arrays["network.coef"]
    net.intercept[...] = arrays["network.intercept"]
    est.network_ = net
    est._optimizer = _build_optimizer(parsed["optimizer"], net.parameters(), arrays,
                                      parsed["names"])
    est._best_state = None
    return est


def _build_optimizer(opt, params, arrays, names):
    """An optimizer over ``params`` (aligned with ``names``) in the saved state."""
    optimizer = opt["cls"](params, opt["learning_rate_init"], **opt["kwargs"])
    state = {"optimizer": opt["name"], "t": opt["t"], "learning_rate": opt["learning_rate"]}
    for buf in opt["cls"]._buffer_names:
        state[buf] = [arrays[f"optimizer.{buf}.{name}"] for name in names]
    optimizer.load_state_dict(state)
    return optimizer


# -- language model
def _decode_vocabulary(v, where):
    """The tokens of a language model: distinct non-empty strings, '<unk>' and '<bos>' first."""
    if not isinstance(v, list) or len(v) < 2:
        raise ModelFileError(f"{where} must be a list of at least 2 tokens, got {_short(v)}")
    for i, token in enumerate(v):
        if not isinstance(token, str) or not token:
            raise ModelFileError(f"{where}[{i}] must be a non-empty string, got {_short(token)}")
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise ModelFileError(f"{where}[{i}] is not valid Unicode text (it holds a lone "
                                 f"surrogate): {_short(token)}") from None
    if v[0] != UNK or v[1] != BOS:
        raise ModelFileError(f"{where} must start with {UNK!r} and {BOS!r} (indices 0 and 1), "
                             f"got {_short(v[:2])}")
    seen = set()
    for i, token in enumerate(v):
        if token in seen:
            raise ModelFileError(f"{where} has the token {_short(token)} twice (again at index "
                                 f"{i}): tokens must be distinct")
        seen.add(token)
    return list(v)


_VOCABULARY_FIELD = _Field(list, _decode_vocabulary)

#: Fitted attributes of LSTMLanguageModel: name -> how it is stored. Besides these and
#: the hyperparameters, fit sets network_ and _optimizer (saved as arrays and
#: model.network / model.optimizer) and _index (rebuilt from vocabulary_ on load);
#: tests/io/test_io.py checks that fit sets no others.
_LM_FITTED = {
    "vocabulary_": _VOCABULARY_FIELD,
    "_dtype": _DTYPE_FIELD,
    "_seed": _int_field(0, _UINT32_MAX),
    "n_iter_": _int_field(0, _UINT32_MAX),
    "loss_curve_": _FLOAT_LIST_FIELD,
    "validation_perplexities_": _FLOAT_LIST_FIELD,
}
_LM_REBUILT = frozenset({"network_", "_optimizer", "_index"})
_LM_NETWORK_KEYS = ("dropout", "embedding_dim", "hidden_size", "num_layers")


def _lm_shapes(vocab_size, embedding_dim, hidden_size, num_layers):
    """(name, shape) of a LanguageNetwork's arrays, aligned with ``parameters()``."""
    shapes = [("network.embedding", (vocab_size, embedding_dim))]
    in_size = embedding_dim
    for k in range(num_layers):
        shapes.extend(_lstm_shapes(in_size, hidden_size, 1, False, f"network.layers.{k}."))
        in_size = hidden_size
    return shapes + [("network.coef", (hidden_size, vocab_size)),
                     ("network.intercept", (vocab_size,))]


def _lm_to_arrays(lm):
    check_is_fitted(lm, "network_")
    fitted = {attr: field.encode(getattr(lm, attr)) for attr, field in _LM_FITTED.items()}
    vocabulary = fitted["vocabulary_"]
    if getattr(lm, "_index", None) != {token: i for i, token in enumerate(vocabulary)}:
        raise ValueError("cannot save this LSTMLanguageModel: its token index does not match "
                         "vocabulary_")
    net = lm.network_
    if net.dtype != np.dtype(lm._dtype):
        raise ValueError(f"cannot save this LSTMLanguageModel: its network is {net.dtype} "
                         f"but _dtype is {np.dtype(lm._dtype)}")
    if not net.layers:
        raise ValueError("cannot save this LSTMLanguageModel: its network has no layer")
    network = {"dropout": float(net.dropout), "embedding_dim": int(net.embedding.shape[1]),
               "hidden_size": int(net.layers[0].hidden_size),
               "num_layers": len(net.layers)}
    names = [name for name, _ in _lm_shapes(len(vocabulary), network["embedding_dim"],
                                            network["hidden_size"], network["num_layers"])]
    params = net.parameters()
    if len(params) != len(names):
        raise ValueError("the network's parameters do not match its layers")
    arrays = dict(zip(names, params, strict=True))
    optimizer = _encode_optimizer(lm._optimizer, names, arrays)
    model = {"params": _encode_params(lm.get_params(deep=False), type(lm).__name__),
             "fitted": fitted, "network": network, "optimizer": optimizer}
    return model, arrays


def _lm_spec(model, n_arrays):
    model = _dict(model, "model", {"params", "fitted", "network", "optimizer"})
    lm = _decode_estimator_params(LSTMLanguageModel, model["params"], "model.params")
    raw = _dict(model["fitted"], "model.fitted", _LM_FITTED)
    fitted = {attr: field.decode(raw[attr], f"model.fitted.{attr}")
              for attr, field in _LM_FITTED.items()}
    network = _dict(model["network"], "model.network", _LM_NETWORK_KEYS)
    where = "model.network."
    dropout = _float(network["dropout"], where + "dropout", lo=0.0)
    if dropout >= 1:
        raise ModelFileError(f"model.network.dropout must be < 1, got {dropout}")
    E = _int(network["embedding_dim"], where + "embedding_dim", 1, BLAS_INT_MAX)
    H = _int(network["hidden_size"], where + "hidden_size", 1, BLAS_INT_MAX // 4)
    L = _int(network["num_layers"], where + "num_layers", 1, max(1, n_arrays))
    V = len(fitted["vocabulary_"])
    if V > BLAS_INT_MAX:  # pragma: no cover - the header's size limit comes first
        raise ModelFileError(f"model.fitted.vocabulary_ has {V} tokens, too many")
    optimizer = _decode_optimizer(model["optimizer"])
    code = _DTYPE_CODES[fitted["_dtype"].name]
    shapes = _lm_shapes(V, E, H, L)
    expected = {name: (shape, code) for name, shape in shapes}
    for buf in optimizer["cls"]._buffer_names:
        expected.update((f"optimizer.{buf}.{name}", (shape, code)) for name, shape in shapes)
    parsed = {"estimator": lm, "fitted": fitted, "dropout": dropout, "sizes": (V, E, H, L),
              "optimizer": optimizer, "names": [name for name, _ in shapes]}
    return parsed, expected


def _lm_from_arrays(parsed, arrays):
    lm = parsed["estimator"]
    fitted = parsed["fitted"]
    for attr, value in fitted.items():
        setattr(lm, attr, value)
    lm._index = {token: i for i, token in enumerate(lm.vocabulary_)}
    V, E, H, L = parsed["sizes"]
    net = LanguageNetwork(V, E, H, L, parsed["dropout"], fitted["_dtype"],
                          np.random.RandomState(0))
    net.embedding[...] = arrays["network.embedding"]
    for k, layer in enumerate(net.layers):
        prefix = f"network.layers.{k}."
        layer.load_state_dict({n: arrays[prefix + n] for _, _, group in
                               _param_names(1, False) for n in group})
    net.coef[...] = arrays["network.coef"]
    net.intercept[...] = arrays["network.intercept"]
    lm.network_ = net
    lm._optimizer = _build_optimizer(parsed["optimizer"], net.parameters(), arrays,
                                     parsed["names"])
    return lm


#: The savable types: the type name written in a file -> its codec. load() resolves a
#: file's type through this dict only. To add a type, write its three functions and
#: add one entry.
_REGISTRY = {
    "LSTM": _Codec(LSTM, _layer_to_arrays, _layer_spec, _layer_from_arrays),
    "LSTMClassifier": _Codec(LSTMClassifier,
                             functools.partial(_estimator_to_arrays,
                                               fitted_schema=_CLASSIFIER_FITTED),
                             _EstimatorSpec(LSTMClassifier, _CLASSIFIER_FITTED),
                             _estimator_from_arrays),
    "LSTMRegressor": _Codec(LSTMRegressor,
                            functools.partial(_estimator_to_arrays,
                                              fitted_schema=_REGRESSOR_FITTED),
                            _EstimatorSpec(LSTMRegressor, _REGRESSOR_FITTED),
                            _estimator_from_arrays),
    "LSTMLanguageModel": _Codec(LSTMLanguageModel, _lm_to_arrays, _lm_spec, _lm_from_arrays),
}


# ---------------------------------------------------------------------- container
def _digest(metadata, table, chunks):
    """SHA-256 over the canonical metadata (without sha256) and table, then the bytes."""
    meta = {k: v for k, v in metadata.items() if k != "sha256"}
    h = hashlib.sha256(_json_dumps({"metadata": meta, "tensors": table},
                                   canonical=True).encode("ascii"))
    h.update(b"\0")
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _pack_header(metadata, table):
    """The 8-byte length and the space-padded JSON header."""
    text = _json_dumps({"__metadata__": metadata, **table}).encode("ascii")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def _encode(type_name, model, arrays):
    """(header bytes, array table, list of array byte strings) of a model file."""
    table, chunks, offset = {}, [], 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        code = _DTYPE_CODES.get(arr.dtype.name)
        if code is None:
            raise TypeError(f"cannot save array {name} of dtype {arr.dtype}")
        data = np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
        table[name] = {"dtype": code, "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "type": type_name, "model": _json_dumps(model)}
    metadata["sha256"] = _digest(metadata, table, chunks)
    return _pack_header(metadata, table), table, chunks


def _split(data):
    """Parse a model file's bytes into (metadata, table, array bytes), without checks.

    A helper for tests that edit files; :func:`load` does its own careful reading.
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


def _parse_header(raw):
    """Check the header's framing and metadata; return (metadata, codec, model, table)."""
    if raw[:1] != b"{":
        raise ModelFileError("not a pylstm model file: the header is not a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError("the header is not valid UTF-8") from None
    header = _json_loads(text, "the header")
    if not isinstance(header, dict):
        raise ModelFileError("not a pylstm model file: the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            "not a pylstm model file: its header has no '__metadata__' with "
            f"format {FORMAT_NAME!r} (a safetensors file from another library?)")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise ModelFileError(f"metadata {_short(key)} must be a string, got {_short(value)}")
    version = metadata.get("format_version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]{1,9}", version):
        raise ModelFileError(f"format_version must be a positive integer, got {_short(version)}")
    version = int(version)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"the file has format version {version}, newer than this pylstm reads (format "
            f"version {FORMAT_VERSION}): it was written by a newer pylstm; upgrade pylstm to "
            "load it")
    if version < 1:
        raise ModelFileError(f"format_version must be >= 1, got {version}")
    _dict(metadata, "the header's __metadata__", _METADATA_KEYS)
    type_name = metadata["type"]
    codec = _REGISTRY.get(type_name)
    if codec is None:
        raise ModelFileError(f"unknown model type {_short(type_name)}; pylstm loads only "
                             f"{', '.join(sorted(_REGISTRY))}")
    if not re.fullmatch(r"[0-9a-f]{64}", metadata["sha256"]):
        raise ModelFileError("metadata sha256 must be 64 lowercase hexadecimal digits")
    model = _json_loads(metadata["model"], "the model description")
    for name, info in header.items():
        where = f"array {_short(name)}"
        _dict(info, where, _TENSOR_KEYS)
        code = _str(info["dtype"], f"{where} dtype")
        if code not in _DTYPES:
            raise ModelFileError(f"{where} has unsupported dtype {_short(code)}: model files "
                                 f"hold only {', '.join(_DTYPES)} (no object arrays)")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 8:
            raise ModelFileError(f"{where} shape must be a list of at most 8 sizes")
        for i, s in enumerate(shape):
            _int(s, f"{where} shape[{i}]", 0, _INT64_MAX)
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise ModelFileError(f"{where} data_offsets must be [begin, end]")
        _int(offsets[0], f"{where} data_offsets[0]", 0, _INT64_MAX)
        _int(offsets[1], f"{where} data_offsets[1]", offsets[0], _INT64_MAX)
    return metadata, codec, model, header


def _check_table(table, expected):
    """Names, dtypes, shapes and offsets against the expected arrays; return the data length."""
    missing = sorted(set(expected) - set(table))
    extra = sorted(set(table) - set(expected))
    if missing:
        raise ModelFileError(f"the file misses the arrays {_short(missing, 200)}")
    if extra:
        raise ModelFileError(f"the file has unexpected arrays {_short(extra, 200)}")
    for name, (shape, code) in expected.items():
        info = table[name]
        if info["dtype"] != code:
            raise ModelFileError(f"array {name} has dtype {info['dtype']}, expected {code} "
                                 "(the model's dtype)")
        if tuple(info["shape"]) != tuple(shape):
            raise ModelFileError(f"array {name} has shape {tuple(info['shape'])}, expected "
                                 f"{tuple(shape)} from the model description")
        begin, end = info["data_offsets"]
        nbytes = math.prod(shape) * _DTYPES[code].itemsize
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
    """Arrays from checked offsets, as writable native-endian copies; reject NaN/inf."""
    arrays = {}
    for name, info in table.items():
        dtype = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize,
                            offset=begin).reshape(info["shape"])
        arr = arr.astype(dtype.newbyteorder("="))
        if dtype.kind == "f" and not np.isfinite(arr).all():
            what = "NaN" if np.isnan(arr).any() else "infinity"
            raise ModelFileError(f"array {name} contains {what}")
        buffer_name = name.split(".")[1] if name.startswith("optimizer.") else None
        if buffer_name in _NONNEGATIVE_BUFFERS and (arr < 0).any():
            raise ModelFileError(f"array {name} (a running mean of squares) has negative "
                                 "entries")
        arrays[name] = arr
    return arrays


# ---------------------------------------------------------------------- public API
def _bytes_left(f):
    """Bytes after the current position of a regular file; None if unknown (a pipe)."""
    try:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return max(0, info.st_size - f.tell())
    except (OSError, AttributeError, ValueError):  # pragma: no cover - unusual file objects
        return None


def _codec_for(obj):
    for type_name, codec in _REGISTRY.items():
        if type(obj) is codec.cls:
            return type_name, codec
    raise TypeError(f"cannot save an object of type {type(obj).__name__}; pylstm.save saves "
                    f"{', '.join(sorted(_REGISTRY))}")


#: Seconds after which a temporary file of :func:`_atomic_write` (``.<name>.<12 hex
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


def _atomic_write(path, header, chunks):
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
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            # The same error (OSError picks the subclass from errno) about the caller's path.
            raise OSError(exc.errno, exc.strerror, requested) from None
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename durable (POSIX)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(obj, path):
    """Save a layer, a fitted estimator or language model to a model file, without pickle.

    The file holds the hyperparameters and fitted values (for a language
    model, its vocabulary too) as JSON and the arrays (weights, and for
    estimators and language models the optimizer's state) as raw
    little-endian bytes, with a SHA-256 checksum; see :mod:`pylstm._io` for
    the layout. :func:`load` reads it back into a model that predicts bit for
    bit like ``obj`` and, for estimators and language models, continues
    ``partial_fit`` exactly as ``obj`` would.

    The file is written under a temporary name in the same folder, flushed to
    disk and then renamed to ``path``, so an interrupted save never leaves a
    partial model at ``path`` (an existing file there stays intact until the
    rename replaces it). A save killed outright (SIGKILL, power loss) can
    leave its temporary file, ``.<name>.<12 hex digits>.tmp``: the next save
    to the same path removes those older than an hour
    (:data:`STALE_TEMPORARY_SECONDS`).

    Parameters
    ----------
    obj : LSTM, LSTMClassifier, LSTMRegressor or LSTMLanguageModel
        A layer, or a fitted estimator or language model. Hyperparameters
        must be None, bool, int, float or str (NumPy scalars and dtypes are
        converted); a ``random_state`` that is a RandomState instance is
        saved as None with a warning.
    path : str, bytes or path-like
        Where to write; an existing file is replaced and keeps its permission
        bits. A symbolic link is followed: the file it points to is replaced,
        the link stays.

    Raises
    ------
    TypeError
        If ``obj`` is of another type, or a hyperparameter or label cannot be
        stored.
    sklearn.exceptions.NotFittedError
        If ``obj`` is an estimator that is not fitted.
    ValueError
        If a weight is NaN or infinite, or the hyperparameters are invalid
        (a file that :func:`load` would refuse is never written).
    OSError
        If the file cannot be written (the error names ``path``).

    See Also
    --------
    load : Read a model file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import pylstm
    >>> layer = pylstm.LSTM(3, 4, num_layers=2, bidirectional=True, random_state=0)
    >>> X = np.random.default_rng(0).normal(size=(2, 5, 3))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "layer.pylstm")
    ...     pylstm.save(layer, path)
    ...     loaded = pylstm.load(path)
    >>> out, _ = layer.forward(X, training=False)
    >>> out_loaded, _ = loaded.forward(X, training=False)
    >>> bool((out == out_loaded).all())
    True
    """
    type_name, codec = _codec_for(obj)
    model, arrays = codec.to_arrays(obj)
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise ValueError(f"cannot save this {type_name}: {name} holds NaN or infinity")
    header, table, chunks = _encode(type_name, model, arrays)
    # Check what is about to be written as load() does, so that save never writes a
    # file that load refuses.
    try:
        _, expected = codec.spec(json.loads(_json_dumps(model)), len(table))
        _check_table(table, expected)
    except ModelFileError as exc:
        raise ValueError(f"cannot save this {type_name}: {exc}") from None
    _atomic_write(path, header, chunks)


def load(path):
    """Load a layer or estimator saved by :func:`save`.

    Nothing in the file is executed, unpickled or imported: the type is one
    of pylstm's savable types, found by name in a fixed table. Everything is
    checked before the model is built: the header's size (at most 16 MiB) and
    JSON syntax, the format name and version, the type, the hyperparameters
    and fitted values, that exactly the arrays the hyperparameters imply are
    present with the implied shapes and dtype (float32 or float64), the
    file's length, the SHA-256 checksum, and that no weight is NaN or
    infinite.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.

    Returns
    -------
    LSTM, LSTMClassifier, LSTMRegressor or LSTMLanguageModel
        The saved object. Estimators and language models are fitted, predict
        (and generate) bit for bit like the saved one and continue training
        (``partial_fit``, ``warm_start``) from the saved optimizer state.

    Raises
    ------
    ModelFileError
        If the file is not a valid pylstm model file of a format version up to
        this pylstm's (the message says what is wrong).
    OSError
        If the file cannot be read.

    See Also
    --------
    save : Write a model file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import pylstm
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(30, 6, 2)), np.repeat(["low", "high"], 15)
    >>> clf = pylstm.LSTMClassifier(hidden_size=4, max_iter=2, random_state=0)
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # max_iter=2 does not converge
    ...     clf = clf.fit(X, y)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "clf.pylstm")
    ...     pylstm.save(clf, path)
    ...     loaded = pylstm.load(path)
    >>> loaded.classes_
    array(['high', 'low'], dtype='<U4')
    >>> bool((loaded.predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    with open(path, "rb") as f:
        n = _check_prefix(f.read(8))
        raw = f.read(n)
        if len(raw) < n:
            raise ModelFileError(f"the file is truncated: its header needs {n} bytes, only "
                                 f"{len(raw)} follow")
        metadata, codec, model, table = _parse_header(raw)
        parsed, expected = codec.spec(model, len(table))
        total = _check_table(table, expected)
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
    arrays = _read_arrays(table, data)
    try:
        return codec.from_arrays(parsed, arrays)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        # Defense in depth: the checks above should have caught every inconsistency.
        raise ModelFileError(f"the model could not be rebuilt from the file: {exc}") from exc
