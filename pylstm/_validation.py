"""Input checks shared by the layer and the estimators.

Every check runs before any kernel call and raises ``ValueError`` or
``TypeError`` with a message naming the argument and what was expected.
"""

import datetime
import numbers

import numpy as np

from ._arrays import all_finite

#: Largest dimension a 32-bit BLAS integer can hold.
BLAS_INT_MAX = np.iinfo(np.int32).max

#: The floating dtypes the kernels are compiled for.
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype):
    """Return ``dtype`` as a NumPy dtype, float32 or float64.

    Parameters
    ----------
    dtype : str, type or numpy.dtype
        ``'float32'``, ``'float64'``, ``np.float32`` or ``np.float64``.

    Returns
    -------
    numpy.dtype

    Raises
    ------
    TypeError
        For any other dtype.

    Examples
    --------
    >>> from pylstm._validation import check_dtype
    >>> check_dtype('float64')
    dtype('float64')
    """
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError) as exc:  # np.dtype(",f8") -> SyntaxError
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def check_positive_int(value, name, minimum=1):
    """Return ``value`` as an int, checking that it is an integer >= ``minimum``.

    Examples
    --------
    >>> from pylstm._validation import check_positive_int
    >>> check_positive_int(3, 'hidden_size')
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > BLAS_INT_MAX:
        raise ValueError(f"{name}={value} is too large for 32-bit BLAS integers")
    return int(value)


def check_dropout(value, name):
    """Return ``value`` as a float, checking that it is a real number in [0, 1).

    Examples
    --------
    >>> from pylstm._validation import check_dropout
    >>> check_dropout(0.25, 'recurrent_dropout')
    0.25
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def as_float_array(a, name, dtype, ndim):
    """Convert ``a`` to a C-contiguous array of ``dtype`` with ``ndim`` dimensions.

    Integer, non-contiguous, Fortran-ordered and read-only inputs are converted
    (copied when needed). Strings, objects and complex numbers are rejected.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._validation import as_float_array
    >>> as_float_array([[1, 2]], 'X', np.float32, 2)
    array([[1., 2.]], dtype=float32)
    """
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers, got an array of dtype {arr.dtype}"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


#: dtype kinds that are not numbers, though NumPy converts most of them to float
#: (numeric strings, dates as counts of their unit): refused rather than read as numbers.
_NON_NUMERIC_KINDS = {"U": "strings", "S": "bytes", "M": "dates (datetime64)",
                      "m": "durations (timedelta64)", "V": "raw or structured records"}
#: Values of an object array that are not numbers, for the same reason.
_NON_NUMERIC_TYPES = (str, bytes, datetime.date, datetime.time, datetime.timedelta,
                      np.datetime64, np.timedelta64)


def check_numeric(X, name="X"):
    """Raise ``ValueError`` if array-like ``X`` holds strings, bytes, dates or durations.

    Object arrays (and a DataFrame's object columns) are looked at value by
    value; other values that are not numbers are left to the conversion to
    float, which raises its own error. Something that is not an array is left
    to the caller's conversion too.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._validation import check_numeric
    >>> check_numeric(np.array([["1", "2"]]))
    Traceback (most recent call last):
    ...
    ValueError: X must hold real numbers, got strings (dtype <U1); convert them to numbers first
    """
    columns = getattr(X, "dtypes", None)
    if hasattr(X, "iloc") and columns is not None and np.ndim(columns) == 1:  # a DataFrame
        for j, dtype in enumerate(columns):
            kind = getattr(dtype, "kind", "O")
            if kind in _NON_NUMERIC_KINDS or kind == "O":
                check_numeric(np.asarray(X.iloc[:, j]), f"{name}[:, {j}]")
        return
    try:
        arr = np.asarray(X)
    except (ValueError, TypeError):
        return
    kind = arr.dtype.kind
    if kind in _NON_NUMERIC_KINDS:
        raise ValueError(f"{name} must hold real numbers, got {_NON_NUMERIC_KINDS[kind]} "
                         f"(dtype {arr.dtype}); convert them to numbers first")
    if kind == "O":
        bad = next((v for v in arr.flat if isinstance(v, _NON_NUMERIC_TYPES)), None)
        if bad is not None:
            raise ValueError(f"{name} must hold real numbers, got an object array holding "
                             f"{type(bad).__name__} values such as {bad!r}")


class NonFiniteError(ValueError):
    """A ``ValueError`` for NaN or infinity, so that callers that turn a
    non-finite intermediate into their own error can tell it from others."""


def check_finite(arr, name):
    """Raise :class:`NonFiniteError` (a ``ValueError``) if ``arr`` holds NaN or infinity.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._validation import check_finite
    >>> check_finite(np.array([np.nan]), 'X')
    Traceback (most recent call last):
    ...
    pylstm._validation.NonFiniteError: X contains NaN
    """
    arr = np.asarray(arr)
    if arr.dtype in SUPPORTED_DTYPES and arr.flags.c_contiguous:
        # One pass over the exponent bits, no temporary (pylstm._arrays).
        finite = all_finite(arr.reshape(-1))
    elif arr.size <= 65536:  # small (per-token calls of generation): one quick pass
        finite = bool(np.isfinite(arr).all())
    else:
        # min and max are NaN or infinite exactly when some element is, and
        # unlike np.isfinite(arr).all() they need no array-sized temporary.
        finite = bool(np.isfinite(arr.min()) and np.isfinite(arr.max()))
    if not finite:
        what = "NaN" if np.isnan(arr).any() else "infinity"
        raise NonFiniteError(f"{name} contains {what}")


def check_lengths(lengths, n_samples, n_timesteps):
    """Validate per-sequence lengths and return them as an int64 array.

    Parameters
    ----------
    lengths : array-like of shape (n_samples,) or None
        Valid steps of each sequence, each in ``1 .. n_timesteps``. None means
        every sequence is ``n_timesteps`` long.
    n_samples, n_timesteps : int
        The batch's size and padded length.

    Returns
    -------
    ndarray of shape (n_samples,), int64

    Examples
    --------
    >>> from pylstm._validation import check_lengths
    >>> check_lengths([3, 1], 2, 3)
    array([3, 1])
    """
    if lengths is None:
        return np.full(n_samples, n_timesteps, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise ValueError(
            f"lengths must have shape ({n_samples},) to match X, got {arr.shape}"
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("lengths must be whole numbers")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    # The range is checked in the caller's dtype: a cast to int64 first would
    # wrap 1e20 or 2**64 - 1 to a negative length and name that instead.
    if n_samples and arr.min() < 1:
        raise ValueError(f"lengths must be >= 1, got a length of {arr.min()}")
    if n_samples and arr.max() > n_timesteps:
        raise ValueError(
            f"lengths must be <= n_timesteps={n_timesteps}, got a length of {arr.max()}"
        )
    return arr.astype(np.int64)
