"""Field codecs: how hyperparameters and fitted values are written to a model file's JSON.

A :class:`Field` pairs an encoder (value -> JSON value) with a decoder that
checks what a file holds (JSON value, where -> value, or
:class:`~pylstm._container.ModelFileError` naming ``where``). The saved classes
declare which field each fitted attribute uses (their ``_saved_fitted``
tables); :func:`encode_params` and :func:`decode_params` handle the
hyperparameters of any estimator, and :func:`encode_trained`,
:func:`decode_trained` and :func:`trained_arrays` the description shared by
the estimators and the language model.
"""

import math
import re
import warnings
from typing import NamedTuple

import numpy as np

from ._container import (
    MAX_HEADER_BYTES,
    ModelFileError,
    encode_float,
    read_bool,
    read_float,
    read_float_list,
    read_int,
    read_object,
    read_str,
    short,
)
from ._optim import saved_optimizer_layout
from ._validation import check_dtype

_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1


class Field(NamedTuple):
    """How one fitted attribute is written to and read from the JSON description."""

    encode: object  # value -> JSON value
    decode: object  # (JSON value, where) -> value


def int_field(lo, hi):
    """An integer in [lo, hi]."""
    return Field(int, lambda v, w: read_int(v, w, lo, hi))


def optional(field):
    """``field``, or None (JSON null)."""
    return Field(lambda x: None if x is None else field.encode(x),
                 lambda v, w: None if v is None else field.decode(v, w))


FLOAT = Field(encode_float, lambda v, w: read_float(v, w, nonfinite=True))
FLOAT_LIST = Field(lambda xs: [encode_float(x) for x in xs], read_float_list)
DTYPE = Field(lambda d: np.dtype(d).name,
              lambda v, w: np.dtype(read_str(v, w, {"float32", "float64"})))
BOOL = Field(bool, read_bool)
SEED = int_field(0, _UINT32_MAX)
COUNT = int_field(0, _UINT32_MAX)


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


def _check_label(x, dtype, w):
    """One class label read from a file, against the dtype of ``classes_``."""
    kind = dtype.kind
    if kind == "b":
        read_bool(x, w)
    elif kind in "iu":
        info = np.iinfo(dtype)
        read_int(x, w, int(info.min), int(info.max))
    elif kind == "f":
        read_float(x, w)
    elif kind == "U":
        if not isinstance(x, str) or len(x) > dtype.itemsize // 4:
            raise ModelFileError(f"{w} must be a string of at most {dtype.itemsize // 4} "
                                 f"characters, got {short(x)}")
    elif isinstance(x, bool) or not isinstance(x, (str, int, float)) or (
            isinstance(x, float) and not math.isfinite(x)):
        raise ModelFileError(f"{w} must be a string or a finite number, got {short(x)}")


def _decode_classes(v, where):
    v = read_object(v, where, {"dtype", "values"})
    code = read_str(v["dtype"], f"{where}.dtype")
    if not _CLASS_DTYPE.fullmatch(code):
        raise ModelFileError(f"{where}.dtype {short(code)} is not a supported label dtype")
    dtype = np.dtype(code)
    values = v["values"]
    if not isinstance(values, list) or len(values) < 2:
        raise ModelFileError(f"{where}.values must be a list of at least 2 labels")
    if len(values) * dtype.itemsize > 4 * MAX_HEADER_BYTES:
        raise ModelFileError(f"{where}: {len(values)} labels of dtype {code} are too large")
    for i, x in enumerate(values):
        _check_label(x, dtype, f"{where}.values[{i}]")
    if dtype.kind == "O":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # float16 overflow, checked below
            arr = np.array(values, dtype=dtype)
        if dtype.kind == "f" and not all(float(a) == x for a, x in zip(arr, values, strict=True)):
            raise ModelFileError(f"{where}.values are not representable as {dtype}")
    try:
        ordered = all(a < b for a, b in zip(arr[:-1], arr[1:], strict=True))
    except TypeError:
        ordered = False
    if not ordered:
        raise ModelFileError(f"{where}.values must be sorted and distinct (as fit makes them)")
    return arr


#: A classifier's ``classes_``: its dtype and its values, which must be sorted and distinct.
CLASSES = Field(_encode_classes, _decode_classes)


def _decode_names(v, where):
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ModelFileError(f"{where} must be a list of strings")
    arr = np.empty(len(v), dtype=object)
    arr[:] = v
    return arr


#: ``feature_names_in_``: None or an object array of strings.
NAMES = optional(Field(lambda a: [str(x) for x in a], _decode_names))


def encode_fitted(obj, schema):
    """The fitted attributes of ``obj`` named in ``schema`` (name -> Field); None stays None."""
    out = {}
    for attr, field in schema.items():
        value = getattr(obj, attr, None)
        out[attr] = None if value is None else field.encode(value)
    return out


def decode_fitted(v, schema, where):
    """Fitted attributes read from a file: exactly the keys of ``schema``, each decoded."""
    v = read_object(v, where, schema)
    return {attr: field.decode(v[attr], f"{where}.{attr}") for attr, field in schema.items()}


# ---------------------------------------------------------------------- hyperparameters
#: Hyperparameters added since format version 1 came out, with the value that
#: a file saved before them (which lacks them) meant.
_ADDED_PARAMS = {"class_weight": None, "recurrent_dropout": 0.0, "proj_size": 0,
                 "unit_forget_bias": False}

#: Of those, the ones a file holds only when they differ from that value: a
#: model that does not use them is saved as before they existed, byte for byte
#: (tests/io/test_old_files.py), and older versions of pylstm read it.
_WRITTEN_WHEN_SET = ("recurrent_dropout", "proj_size", "unit_forget_bias")

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
            raise TypeError(f"cannot save class_weight label {short(label)} of type "
                            f"{type(label).__name__}: only str, int, finite float and bool")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                math.isfinite(weight) and weight >= 0):
            raise ValueError(f"cannot save class_weight[{short(label)}]={short(weight)}: "
                             "class weights must be finite numbers >= 0")
        pairs.append([label, weight])
    return pairs


def _decode_class_weight(v, where):
    """``class_weight`` read from a file: None, 'balanced' or pairs -> dict."""
    if v is None or v == "balanced":
        return v
    if not isinstance(v, list):
        raise ModelFileError(f"{where} must be null, \"balanced\" or a list of [label, "
                             f"weight] pairs, got {short(v)}")
    out = {}
    for i, pair in enumerate(v):
        w = f"{where}[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ModelFileError(f"{w} must be a [label, weight] pair, got {short(pair)}")
        label, weight = pair
        if not isinstance(label, _LABEL_TYPES) or (
                isinstance(label, float) and not math.isfinite(label)):
            raise ModelFileError(f"{w}: the label must be a string, number or boolean, "
                                 f"got {short(label)}")
        if label in out:  # also 1, 1.0 and true, which are one dict key
            raise ModelFileError(f"{w}: label {short(label)} is given twice")
        out[label] = read_float(weight, f"{w} (weight)", lo=0.0) if isinstance(weight, float) \
            else read_int(weight, f"{w} (weight)", 0, _INT64_MAX)
    return out


def encode_params(estimator):
    """``get_params(deep=False)`` as JSON scalars (numpy scalars and dtypes converted).

    Raises
    ------
    TypeError
        If a value is not None, bool, int, float or str (nor convertible).
    ValueError
        If a float is not finite.
    """
    owner = type(estimator).__name__
    out = {}
    for name, value in estimator.get_params(deep=False).items():
        if name in _WRITTEN_WHEN_SET and value == _ADDED_PARAMS[name]:
            continue
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
            raise TypeError(f"cannot save hyperparameter {name}={short(value)} of type "
                            f"{type(value).__name__}: only None, bool, int, float and str")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot save hyperparameter {name}={value}: not finite")
        out[name] = value
    return out


def decode_params(cls, v, where):
    """An unfitted ``cls`` with the hyperparameters read from a file.

    Exactly ``cls``'s get_params() keys, JSON scalars, which ``cls``'s own
    ``_check_params`` accepts; a parameter of :data:`_ADDED_PARAMS` may be
    missing (the file predates it).
    """
    keys = cls().get_params(deep=False)
    if isinstance(v, dict):
        v = {**{k: d for k, d in _ADDED_PARAMS.items() if k in keys}, **v}
    v = read_object(v, where, keys)
    if "class_weight" in v:
        v["class_weight"] = _decode_class_weight(v["class_weight"], f"{where}.class_weight")
    for name, value in v.items():
        w = f"{where}.{name}"
        if name == "class_weight":
            continue
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ModelFileError(f"{w} must be a JSON scalar, got {short(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ModelFileError(f"{w} must be finite, got {value}")
    # Only these two strings reach NumPy's dtype parser (which runs ast.literal_eval on
    # some strings, and raises SyntaxError on ',f8').
    read_str(v["dtype"], f"{where}.dtype", {"float32", "float64"})
    if v["random_state"] is not None:
        read_int(v["random_state"], f"{where}.random_state", 0, _UINT32_MAX)
    if not isinstance(v["verbose"], bool):
        read_int(v["verbose"], f"{where}.verbose", 0, 2**31 - 1)
    estimator = cls(**v)
    try:
        estimator._check_params()
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"invalid hyperparameters in {where}: {exc}") from None
    return estimator


def decode_dropout(v, where):
    """A network's dropout: a number in [0, 1)."""
    dropout = read_float(v, where, lo=0.0)
    if dropout >= 1:
        raise ModelFileError(f"{where} must be < 1, got {dropout}")
    return dropout


# ---------------------------------------------------------------------- trained estimators
# The estimators and the language model save the same four parts: {"params", "fitted",
# "network", "optimizer"}, and the arrays of network_ and _optimizer.
_TRAINED_KEYS = ("params", "fitted", "network", "optimizer")


def encode_trained(model, network):
    """The description and arrays of a fitted estimator or language model.

    Parameters
    ----------
    model : estimator
        Fitted: its ``network_`` gives ``saved_arrays()``, its ``_optimizer``
        ``_saved_state(names)``, and its class a ``_saved_fitted`` table.
    network : dict
        The network's settings (JSON-able).

    Returns
    -------
    description : dict
    arrays : dict of str to ndarray
        The network's arrays, then the optimizer's buffers.
    """
    arrays = model.network_.saved_arrays()
    optimizer, buffers = model._optimizer._saved_state(list(arrays))
    description = {"params": encode_params(model),
                   "fitted": encode_fitted(model, type(model)._saved_fitted),
                   "network": network, "optimizer": optimizer}
    return description, {**arrays, **buffers}


def decode_trained(cls, description, network_keys):
    """The parts of a description of :func:`encode_trained`, read from a file.

    Returns
    -------
    model : cls
        Unfitted, with the saved hyperparameters.
    fitted : dict
        The decoded values of ``cls._saved_fitted``.
    network : dict
        The network's settings, a JSON object with ``network_keys`` and
        possibly ``proj_size`` (written only when set), unchecked.
    optimizer : object
        The optimizer's description, for :func:`trained_arrays`.
    """
    description = read_object(description, "model", _TRAINED_KEYS)
    network = description["network"]
    if isinstance(network, dict) and "proj_size" in network:
        network_keys = (*network_keys, "proj_size")
    return (decode_params(cls, description["params"], "model.params"),
            decode_fitted(description["fitted"], cls._saved_fitted, "model.fitted"),
            read_object(network, "model.network", network_keys),
            description["optimizer"])


def saved_proj_size(layers):
    """The network description's ``proj_size`` entry: ``{}`` for a network without
    projections, whose file is then as before they existed."""
    proj_size = layers[0].proj_size
    return {"proj_size": int(proj_size)} if proj_size else {}


def decode_proj_size(network, hidden_size, where):
    """A network's ``proj_size`` from its description (0 when absent)."""
    if "proj_size" not in network:
        return 0
    return read_int(network["proj_size"], where, 1, hidden_size - 1)


def trained_arrays(shapes, optimizer, dtype):
    """The optimizer's plan and every array a trained model's file must hold.

    ``shapes``: the network's (name, shape), aligned with its parameters;
    ``optimizer``: the description of :func:`decode_trained`; ``dtype``: the
    model's. Returns ``(plan, expected)``, ``expected`` mapping name to
    (shape, dtype).
    """
    plan, buffers = saved_optimizer_layout(optimizer, shapes, "model.optimizer")
    return plan, {name: (shape, dtype) for name, shape in [*shapes, *buffers.items()]}
