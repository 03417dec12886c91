"""Sequence input formats -> one padded array plus lengths.

The estimators accept three layouts of X and, for per-step targets, two of y;
this module turns each into the single layout the network works on:
a C-contiguous ``(n_samples, max_length, n_features)`` array of the model's
dtype (zeros past each length) and an int64 array of lengths.
"""

import numpy as np
from sklearn.utils.validation import check_array

from ._validation import check_finite, check_numeric


def is_ragged(X):
    """True when ``X`` is a list or tuple of sequences of different lengths.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._sequences import is_ragged
    >>> is_ragged([np.zeros((3, 2)), np.zeros((5, 2))]), is_ragged(np.zeros((2, 3)))
    (True, False)
    """
    if not isinstance(X, (list, tuple)) or len(X) == 0:
        return False
    first = X[0]
    if not hasattr(first, "__len__") or isinstance(first, str):
        return False
    shapes = set()
    for seq in X:
        if isinstance(seq, str) or not hasattr(seq, "__len__"):
            return False
        try:
            shapes.add(np.shape(seq))
        except ValueError:  # itself ragged: pad_sequences names it
            return True
        if len(shapes) > 1:
            return True
    return False


def check_sequence_list(X, name="X"):
    """Raise ``ValueError`` if an element of the list ``X`` cannot be a sequence.

    A list of sequences holds array-likes: None, strings, bytes, or a number
    among sequences are refused by name, rather than left to NumPy's
    "inhomogeneous shape" error. A list of numbers (a 1-D X) is left alone.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._sequences import check_sequence_list
    >>> try:
    ...     check_sequence_list([np.zeros((3, 2)), None])
    ... except ValueError as exc:
    ...     print(str(exc).split(":")[0])
    X[1] is None, not a sequence
    """
    if not isinstance(X, (list, tuple)) or len(X) == 0:
        return
    sequences = hasattr(X[0], "__len__") and not isinstance(X[0], (str, bytes))
    for i, seq in enumerate(X):
        if (seq is None or isinstance(seq, (str, bytes))
                or (sequences and not hasattr(seq, "__len__"))):
            what = "None" if seq is None else f"a {type(seq).__name__}"
            raise ValueError(
                f"{name}[{i}] is {what}, not a sequence: each element of a list {name} is one "
                "sequence, an array-like of shape (n_timesteps, n_features) or (n_timesteps,)"
            )


def pad_sequences(seqs, dtype, name="X"):
    """Stack a list of (T_i, F) or (T_i,) sequences into a padded array.

    Parameters
    ----------
    seqs : list of array-like
        Each of shape (T_i, n_features), or (T_i,) for one feature.
    dtype : numpy.dtype
        dtype of the result.
    name : str, default='X'
        Name used in error messages.

    Returns
    -------
    X : ndarray of shape (n_samples, max(T_i), n_features)
    lengths : ndarray of shape (n_samples,), int64

    Raises
    ------
    ValueError
        On an empty list, an empty sequence, sequences with different numbers
        of features or of the wrong ndim, strings, dates, NaN or infinity.
    TypeError
        On other values that are not numbers (in object arrays).

    Examples
    --------
    >>> from pylstm._sequences import pad_sequences
    >>> X, lengths = pad_sequences([[[1.0], [2.0]], [[3.0]]], 'float64')
    >>> X[:, :, 0].tolist(), lengths.tolist()
    ([[1.0, 2.0], [3.0, 0.0]], [2, 1])
    """
    if len(seqs) == 0:
        raise ValueError(f"{name} is empty: found 0 sequences")
    arrays = []
    n_features = None
    for i, seq in enumerate(seqs):
        try:
            arr = np.asarray(seq)
        except ValueError:  # NumPy's "inhomogeneous shape"
            raise ValueError(
                f"{name}[{i}] is not a rectangular array: its steps have different numbers "
                "of features (each sequence is an array of shape (n_timesteps, n_features))"
            ) from None
        check_numeric(arr, f"{name}[{i}]")
        if arr.dtype.kind not in "biufO":  # complex
            raise ValueError(f"{name}[{i}] must hold real numbers, got dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(
                f"{name}[{i}] must be a 2-D array (n_timesteps, n_features), got shape "
                f"{arr.shape}"
            )
        if arr.shape[0] == 0:
            raise ValueError(f"{name}[{i}] has length 0; every sequence needs at least one step")
        if n_features is None:
            n_features = arr.shape[1]
        elif arr.shape[1] != n_features:
            raise ValueError(
                f"all sequences must have the same number of features: {name}[0] has "
                f"{n_features}, {name}[{i}] has {arr.shape[1]}"
            )
        arrays.append(arr)
    if n_features == 0:
        raise ValueError(f"{name} has 0 features per step")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    out = np.zeros((len(arrays), lengths.max(), n_features), dtype=dtype)
    for i, arr in enumerate(arrays):
        out[i, : arr.shape[0]] = arr
    check_finite(out, name)
    return out, lengths


def as_sequence_array(X, dtype, name="X"):
    """Validate a 3-D array of sequences (no NaN/inf, at least one sample and step).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._sequences import as_sequence_array
    >>> as_sequence_array(np.zeros((2, 3, 1)), np.float32).dtype
    dtype('float32')
    """
    X = check_array(X, dtype=dtype, allow_nd=True, ensure_all_finite=True,
                    ensure_min_samples=1, ensure_min_features=1, input_name=name)
    if X.ndim != 3:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_timesteps), 3-D (n_samples, n_timesteps, "
            f"n_features) or a list of 2-D sequences; got an array of shape {X.shape}"
        )
    if X.shape[2] == 0:
        raise ValueError(f"{name} has 0 features per step")
    return np.ascontiguousarray(X)
