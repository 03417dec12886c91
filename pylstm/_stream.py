"""Streaming inference: predictions for sequences that arrive a few steps at a time.

:class:`LSTMStream` keeps, for each of its sequences, every layer's (h, c)
after the steps read so far. A chunk of new steps runs through the network in
one kernel call per layer, started from that state
(:meth:`pylstm._network.SequenceNetwork.forward_from`), and the output layer
reads every step's top-layer output at once: the predictions for all the
prefixes that end in the chunk, each what the estimator's ``predict`` gives
for that prefix.
"""

import threading

import numpy as np
from sklearn.base import is_classifier
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ._network import SequenceNetwork, log_softmax
from ._threads import model_use
from ._validation import check_finite, check_numeric, check_positive_int

__all__ = ["LSTMStream"]


def _is_classifier_stream(stream):
    return stream._classes is not None


class LSTMStream:
    """Predictions of a fitted estimator for sequences read a chunk of steps at a time.

    Made by :meth:`LSTMClassifier.stream <pylstm.LSTMClassifier.stream>` and
    :meth:`LSTMRegressor.stream <pylstm.LSTMRegressor.stream>` (or directly,
    the same way). Each call of :meth:`predict` (or :meth:`predict_proba`)
    reads the next ``t`` steps of each of the ``n_streams`` sequences and
    returns, for each of those steps, what the estimator's ``predict`` (or
    ``predict_proba``) returns for the sequence read up to and including
    that step; the state after the chunk is kept for the next call. The
    result for every prefix equals ``predict`` on that prefix up to float
    rounding, however the sequence is cut into chunks.

    A chunk runs in one kernel call per LSTM layer, whatever its number of
    steps, and the output layer reads all its steps in one matrix product.

    Parameters
    ----------
    estimator : LSTMClassifier or LSTMRegressor
        A fitted, unidirectional estimator (``bidirectional=False``). The
        stream reads its weights at each call and never changes them.
    n_streams : int, default=1
        Number of sequences read side by side (e.g. one per sensor); each
        has its own state.

    Attributes
    ----------
    estimator : LSTMClassifier or LSTMRegressor
        The estimator whose predictions the stream gives.
    n_streams : int
        Number of sequences read side by side.
    n_steps_seen : int
        Steps of each sequence read since the stream was made or last reset.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.
    ValueError
        If the estimator is bidirectional (its reverse direction reads each
        sequence from the end, so every new step changes all of that pass:
        there is no state to carry forward), or ``n_streams < 1``.
    TypeError
        If ``estimator`` is not a pylstm sequence estimator, or ``n_streams``
        is not an integer.

    Notes
    -----
    **Shapes.** With ``n_streams=1`` a chunk may be 2-D, (t, n_features),
    and the results then have no stream axis: :meth:`predict` returns (t,)
    (or (t, n_outputs) for a regressor fitted on 2-D ``y``) and
    :meth:`predict_proba` (t, n_classes). A 3-D chunk (n_streams, t,
    n_features) gives results with a leading stream axis: (n_streams, t),
    (n_streams, t, n_outputs) or (n_streams, t, n_classes). ``n_features``
    is the number of features per step, also for an estimator fitted on
    2-D X (univariate sequences: 1, or its ``n_features`` parameter). A
    chunk of 0 steps returns empty results and leaves the state as it was.

    **Per-step models.** For an estimator fitted with
    ``return_sequences=True``, ``predict`` on a prefix gives a prediction
    for every step of it; the stream returns the one for the prefix's last
    step, which is the prediction for that step in any longer sequence too.

    **State.** Every call advances the state: call :meth:`predict_proba`
    alone, not both methods, on a chunk (the labels are
    ``estimator.classes_[proba.argmax(axis=-1)]``). A call that raises,
    on bad input or by an interrupt, leaves the state as it was. Training
    the estimator further in place (``partial_fit``, ``fit`` with
    ``warm_start=True``) between calls applies from the next chunk on, the
    state kept; after a ``fit`` from scratch the stream raises a
    ``RuntimeError``: make a new one.

    **Threads.** Streams of one estimator can be used from different
    threads at once: each owns its state and the estimator is only read,
    so each stream's results are those it gives alone. Calls on one stream
    from several threads run one after the other. As for ``predict``, a
    call made while another thread fits the estimator raises a
    ``RuntimeError``. A stream pickles (with its estimator and its state).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import LSTMClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 12, 2))
    >>> y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    >>> clf = LSTMClassifier(hidden_size=8, max_iter=2, random_state=0).fit(X, y)
    >>> stream = clf.stream()
    >>> first = stream.predict_proba(X[0, :5])      # steps 0-4 of one sequence
    >>> rest = stream.predict_proba(X[0, 5:])       # steps 5-11
    >>> first.shape, rest.shape, stream.n_steps_seen
    ((5, 2), (7, 2), 12)
    >>> bool(np.allclose(rest[-1], clf.predict_proba(X[:1])[0], atol=1e-5))
    True
    >>> bool(np.allclose(first[2], clf.predict_proba(X[:1, :3])[0], atol=1e-5))
    True
    >>> stream.reset().n_steps_seen
    0
    """

    def __init__(self, estimator, n_streams=1):
        if getattr(type(estimator), "stream", None) is None:
            raise TypeError(f"estimator must be an LSTMClassifier or LSTMRegressor, got "
                            f"{type(estimator).__name__}")
        check_is_fitted(estimator, "network_")
        network = estimator.network_
        if not isinstance(network, SequenceNetwork):
            raise TypeError(f"estimator must be a fitted LSTMClassifier or LSTMRegressor, "
                            f"got a network_ of type {type(network).__name__}")
        if network.layers[0].bidirectional:
            raise ValueError(
                f"stream() needs a unidirectional model, but this {type(estimator).__name__} "
                "is bidirectional: its reverse direction reads each sequence backwards from "
                "its last step, so every new step changes that whole pass and there is no "
                "state to carry from one chunk to the next; fit with bidirectional=False "
                "to stream, or call predict on the whole sequence")
        self.estimator = estimator
        self.n_streams = check_positive_int(n_streams, "n_streams")
        self._network = network
        self._dtype = np.dtype(estimator._dtype)
        self._n_features = int(estimator._n_step_features)
        self._classes = estimator.classes_ if is_classifier(estimator) else None
        self._squeeze = bool(getattr(estimator, "_y_squeeze", False))
        # Serializes calls on this stream: each reads the state the last one left.
        self._lock = threading.Lock()
        # (per-layer (h, c) pairs or None for zeros, steps read): one
        # attribute, replaced in one assignment, so that a call cut short
        # by an interrupt leaves the state of before the call.
        self._carry = (None, 0)

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]  # a lock does not pickle; a new stream gets its own
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self):
        return (f"{type(self).__name__}({self.estimator!r}, n_streams={self.n_streams}, "
                f"n_steps_seen={self.n_steps_seen})")

    @property
    def n_steps_seen(self):
        """Steps of each sequence read since the stream was made or last reset."""
        return self._carry[1]

    def reset(self):
        """Start over: forget the steps read so far (of every stream).

        Returns
        -------
        self : LSTMStream
            The stream, as new.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm import LSTMRegressor
        >>> X = np.random.default_rng(0).normal(size=(40, 6, 1))
        >>> reg = LSTMRegressor(hidden_size=4, max_iter=1, random_state=0).fit(X, X[:, -1, 0])
        >>> stream = reg.stream()
        >>> a = stream.predict(X[0])
        >>> b = stream.reset().predict(X[0])
        >>> bool(np.array_equal(a, b))
        True
        """
        with self._lock:
            self._carry = (None, 0)
        return self

    def predict(self, X):
        """Read the next steps; the prediction for the sequence read up to each of them.

        Parameters
        ----------
        X : array-like of shape (n_streams, t, n_features), or (t, n_features)
            The next ``t`` steps of each sequence (2-D with ``n_streams=1``
            only).

        Returns
        -------
        ndarray of shape (n_streams, t) or (t,)
            Classifier: the predicted class after each step. Regressor:
            float64 predictions, with a last axis of size ``n_outputs`` when
            the estimator was fitted on 2-D ``y``. No stream axis for 2-D X.

        Raises
        ------
        ValueError
            If X's shape does not fit the stream (its ndim, ``n_streams``,
            ``n_features``) or X holds NaN, infinity or non-numbers; the
            state is then unchanged.
        RuntimeError
            If the estimator was fitted from scratch since the stream was
            made, or is being fitted in another thread.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm import LSTMRegressor
        >>> X = np.random.default_rng(0).normal(size=(40, 6, 3))
        >>> reg = LSTMRegressor(hidden_size=4, max_iter=1, random_state=0).fit(X, X[:, 0, 0])
        >>> stream = reg.stream(n_streams=2)
        >>> stream.predict(X[:2, :4]).shape
        (2, 4)
        >>> bool(np.allclose(stream.predict(X[:2, 4:])[:, -1], reg.predict(X[:2]), atol=1e-5))
        True
        """
        raw, flat = self._run(X, "predict")
        if self._classes is not None:
            out = self._classes[raw.argmax(axis=-1)]
        else:
            out = raw.astype(np.float64, copy=False)
            if self._squeeze:
                out = out[..., 0]
        return out[0] if flat else out

    @available_if(_is_classifier_stream)
    def predict_proba(self, X):
        """Read the next steps; class probabilities after each (classifier only).

        Parameters
        ----------
        X : array-like of shape (n_streams, t, n_features), or (t, n_features)
            As in :meth:`predict`.

        Returns
        -------
        ndarray of shape (n_streams, t, n_classes), or (t, n_classes)
            float64, as the estimator's ``predict_proba``; no stream axis
            for 2-D X.

        Raises
        ------
        ValueError, RuntimeError
            As :meth:`predict`.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm import LSTMClassifier
        >>> X = np.random.default_rng(0).normal(size=(40, 6, 2))
        >>> clf = LSTMClassifier(hidden_size=4, max_iter=1, random_state=0)
        >>> clf = clf.fit(X, X[:, :, 0].sum(axis=1) > 0)
        >>> clf.stream().predict_proba(X[0]).shape
        (6, 2)
        """
        raw, flat = self._run(X, "predict_proba")
        proba = np.exp(log_softmax(raw.astype(np.float64)))
        return proba[0] if flat else proba

    # ------------------------------------------------------------------ internals
    def _check_chunk(self, X):
        """X as a C-contiguous (n_streams, t, n_features) array of the model's dtype,
        and whether it came without the stream axis."""
        check_numeric(X, "X")
        arr = np.asarray(X)
        if arr.dtype.kind == "O":  # numbers in an object array, as the estimators take
            try:
                arr = arr.astype(self._dtype)
            except (TypeError, ValueError):
                raise ValueError("X must hold real numbers, got an object array holding "
                                 "other values") from None
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"X must hold real numbers, got an array of dtype {arr.dtype}")
        S, F = self.n_streams, self._n_features
        flat = arr.ndim == 2 and S == 1
        if flat:
            arr = arr[None]
        expected = (f"({S}, t, {F})" if S > 1
                    else f"(t, {F}) or (1, t, {F})")
        if arr.ndim != 3:
            raise ValueError(f"X must have shape {expected} (n_streams={S}, "
                             f"n_features={F}), got shape {np.shape(X)}")
        if arr.shape[0] != S:
            raise ValueError(f"X holds {arr.shape[0]} sequences but the stream reads "
                             f"n_streams={S}: X must have shape {expected}")
        if arr.shape[2] != F:
            raise ValueError(
                f"X has {arr.shape[2]} features per step, but {type(self.estimator).__name__} "
                f"is expecting {F} features per step as input: X must have shape {expected}")
        arr = np.ascontiguousarray(arr, dtype=self._dtype)
        check_finite(arr, "X")
        return arr, flat

    def _run(self, X, method):
        """Raw network output (n_streams, t, n_outputs) for the chunk X; advances the state."""
        with model_use(self.estimator, f"stream().{method}"), self._lock:
            if self.estimator.__dict__.get("network_") is not self._network:
                raise RuntimeError(
                    f"{type(self.estimator).__name__} was fitted again from scratch after "
                    "this stream was made, which gives it a new model: make a new stream "
                    "with stream()")
            X, flat = self._check_chunk(X)
            if X.shape[1] == 0:  # nothing new: no output, no change of state
                width = self._network.coef.shape[1]
                return np.empty((self.n_streams, 0, width), self._dtype), flat
            state, seen = self._carry
            out, state = self._network.forward_from(X, state)
            self._carry = (state, seen + X.shape[1])
        return out, flat
