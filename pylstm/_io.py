"""Safe persistence of layers, estimators and language models: :func:`save`, :func:`load`.

A model file never holds pickled objects and loading never imports or calls
anything named in the file. Three parts share the work:

* :mod:`pylstm._container` reads and writes the file: a JSON header (type
  name, description, checksum) and raw arrays, with every check on framing,
  sizes, dtypes and bytes; it knows nothing of models.
* Each savable class owns what it saves, beside its other code: the method
  ``_saved_state()`` returns its description (JSON: hyperparameters, fitted
  values, settings) and its arrays; the classmethod
  ``_saved_layout(description, n_arrays)`` checks a description read from a
  file and returns a plan and the arrays the file must hold (name to shape
  and dtype), before any array is read; the classmethod
  ``_from_saved_state(plan, arrays)`` builds the object. They use the field
  codecs of :mod:`pylstm._fields`, the network's and optimizer's own saved
  state (:mod:`pylstm._network`, :mod:`pylstm._optim`).
* This module dispatches: a file's type name is looked up in the fixed table
  :data:`_SAVABLE` of the savable pylstm classes.

What the descriptions hold (``format_version`` 1)
-------------------------------------------------
* :class:`~pylstm.LSTM`: ``{"params": ...}``, its constructor arguments
  (without ``random_state``); the arrays of :meth:`~pylstm.LSTM.state_dict`
  under their own names.
* :class:`~pylstm.LSTMClassifier`, :class:`~pylstm.LSTMRegressor`:
  ``params`` (``get_params()``; a dict ``class_weight`` as a list of
  ``[label, weight]`` pairs, and one missing from a file written before it
  existed means None), ``fitted`` (``classes_``, ``loss_curve_`` ...; the
  classes' ``_saved_fitted`` tables), ``network`` (the dropout) and
  ``optimizer`` (name, settings, counter, learning rate); the arrays
  ``network.layers.{k}.weight_ih_l0`` ... ``network.coef``,
  ``network.intercept`` and the optimizer's buffers
  ``optimizer.{buffer}.{array name}``, so that ``partial_fit`` continues
  after loading exactly as it would have without saving.
* :class:`~pylstm.LSTMLanguageModel`: the same, with the vocabulary in
  ``fitted.vocabulary_`` (distinct strings starting with ``'<unk>'`` and
  ``'<bos>'``; the token index is rebuilt from it), the network's sizes in
  ``network`` (``embedding_dim``, ``hidden_size``, ``num_layers``,
  ``dropout``) and the arrays ``network.embedding`` (V, E),
  ``network.layers.{k}.*`` (one unidirectional layer each),
  ``network.coef`` (H, V), ``network.intercept`` (V,) with the optimizer's
  buffers, V being the vocabulary's size.
"""

import json

import numpy as np

from . import _container
from ._container import ModelFileError
from ._estimators import LSTMClassifier, LSTMRegressor
from ._language_model import LSTMLanguageModel
from ._layer import LSTM

__all__ = ["ModelFileError", "load", "save"]

#: The savable types: the type name written in a file -> its class. load() resolves a
#: file's type through this dict only. A class added here needs the three methods
#: of the module's docstring.
_SAVABLE = {cls.__name__: cls for cls in (LSTM, LSTMClassifier, LSTMRegressor,
                                          LSTMLanguageModel)}


def _type_name(obj):
    for type_name, cls in _SAVABLE.items():
        if type(obj) is cls:
            return type_name
    raise TypeError(f"cannot save an object of type {type(obj).__name__}; pylstm.save saves "
                    f"{', '.join(sorted(_SAVABLE))}")


def _layout(type_name, description, n_arrays):
    return _SAVABLE[type_name]._saved_layout(description, n_arrays)


def save(obj, path):
    """Save a layer, a fitted estimator or language model to a model file, without pickle.

    The file holds the hyperparameters and fitted values (for a language
    model, its vocabulary too) as JSON and the arrays (weights, and for
    estimators and language models the optimizer's state) as raw
    little-endian bytes, with a SHA-256 checksum; see :mod:`pylstm._container`
    for the layout and :mod:`pylstm._io` for the content. :func:`load` reads
    it back into a model that predicts bit for bit like ``obj`` and, for
    estimators and language models, continues ``partial_fit`` exactly as
    ``obj`` would.

    The file is written under a temporary name in the same folder, flushed to
    disk and then renamed to ``path``, so an interrupted save never leaves a
    partial model at ``path`` (an existing file there stays intact until the
    rename replaces it). A save killed outright (SIGKILL, power loss) can
    leave its temporary file, ``.<name>.<12 hex digits>.tmp``: the next save
    to the same path removes those older than an hour
    (:data:`pylstm._container.STALE_TEMPORARY_SECONDS`).

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
    type_name = _type_name(obj)
    description, arrays = obj._saved_state()
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise ValueError(f"cannot save this {type_name}: {name} holds NaN or infinity")
    header, table, chunks = _container.encode(type_name, description, arrays)
    # Check what is about to be written as load() does, so that save never writes a
    # file that load refuses.
    try:
        _, expected = _layout(type_name, json.loads(_container.json_dumps(description)),
                              len(table))
        _container.check_table(table, expected)
    except ModelFileError as exc:
        raise ValueError(f"cannot save this {type_name}: {exc}") from None
    _container.write(path, header, chunks)


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
    type_name, plan, arrays = _container.read(path, _SAVABLE, _layout)
    try:
        return _SAVABLE[type_name]._from_saved_state(plan, arrays)
    except ModelFileError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        # Defense in depth: the checks above should have caught every inconsistency.
        raise ModelFileError(f"the model could not be rebuilt from the file: {exc}") from exc
