"""Toy and benchmark sequence datasets.

This module provides small, dependency-free datasets for exercising
recurrent networks:

- :func:`make_adding_problem` -- the synthetic *adding problem* of
  Hochreiter & Schmidhuber (1997), a regression task with long-range
  dependencies.
- :func:`load_digits_sequences` -- scikit-learn's bundled 8x8 handwritten
  digits, read row by row as sequences of 8 time steps (no download).
- :func:`make_variable_length_sequences` -- a binary classification toy
  whose sequences have different lengths.
- :func:`load_python_docs` -- the English text behind Python's ``help()``,
  shipped with CPython (no download), a corpus for language models.
- :func:`make_agreement` -- generated sentences whose main verb must agree in
  number with a subject several words back, across attractor nouns.

All generators take a ``random_state`` argument that is passed through
:func:`sklearn.utils.check_random_state`, so results are reproducible when
an integer seed is given.
"""

from numbers import Integral

import numpy as np
from sklearn.datasets import load_digits
from sklearn.utils import Bunch, check_random_state

__all__ = [
    "load_digits_sequences",
    "load_python_docs",
    "make_adding_problem",
    "make_agreement",
    "make_variable_length_sequences",
]


def _check_int(value, name, min_value):
    """Validate that ``value`` is an integer (not a bool) ``>= min_value``.

    Parameters
    ----------
    value : object
        Value to check.
    name : str
        Argument name, used in the error message.
    min_value : int
        Smallest accepted value.

    Returns
    -------
    value : int
        ``value`` converted to a Python ``int``.

    Raises
    ------
    ValueError
        If ``value`` is not an integer or is smaller than ``min_value``.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer >= {min_value}, got {value!r}.")
    if value < min_value:
        raise ValueError(f"{name} must be an integer >= {min_value}, got {value!r}.")
    return int(value)


def make_adding_problem(n_samples=1000, n_timesteps=50, random_state=None):
    """Generate the adding problem of Hochreiter & Schmidhuber (1997).

    Each input sequence has two channels. Channel 0 holds values drawn
    uniformly from ``[0, 1)``. Channel 1 is a marker that equals 1 at exactly
    two time steps and 0 elsewhere: one marked step lies in the first half of
    the sequence (``t < n_timesteps // 2``) and the other in the second half
    (``t >= n_timesteps // 2``), as in the commonly used formulation of the
    task. The target is the sum of the two marked values, so it lies in
    ``[0, 2)``.

    The task probes long-range memory: the network must remember the first
    marked value across roughly ``n_timesteps / 2`` steps. A baseline that
    always predicts the mean target (1.0) has an expected mean squared error
    of ``Var(U1 + U2) = 2 / 12 = 1/6 ≈ 0.167``; a model has learned the task
    only if it does clearly better than that.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of sequences. Must be ``>= 1``.
    n_timesteps : int, default=50
        Length of every sequence. Must be ``>= 2`` so that each half holds at
        least one time step.
    random_state : int, RandomState instance or None, default=None
        Seed or random number generator, passed to
        :func:`sklearn.utils.check_random_state`. Pass an int for
        reproducible output.

    Returns
    -------
    X : ndarray of shape (n_samples, n_timesteps, 2), dtype float64
        Input sequences. ``X[:, :, 0]`` are the values, ``X[:, :, 1]`` the
        0/1 markers.
    y : ndarray of shape (n_samples,), dtype float64
        Sum of the two marked values of each sequence.

    Raises
    ------
    ValueError
        If ``n_samples`` is not an integer ``>= 1`` or ``n_timesteps`` is not
        an integer ``>= 2``.

    References
    ----------
    .. [1] S. Hochreiter and J. Schmidhuber, "Long Short-Term Memory",
       Neural Computation, 9(8), pp. 1735-1780, 1997.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm.datasets import make_adding_problem
    >>> X, y = make_adding_problem(n_samples=4, n_timesteps=10, random_state=0)
    >>> X.shape, X.dtype, y.shape
    ((4, 10, 2), dtype('float64'), (4,))
    >>> X[:, :, 1].sum(axis=1)
    array([2., 2., 2., 2.])
    >>> bool(np.allclose(y, (X[:, :, 0] * X[:, :, 1]).sum(axis=1)))
    True
    """
    n_samples = _check_int(n_samples, "n_samples", 1)
    n_timesteps = _check_int(n_timesteps, "n_timesteps", 2)
    rng = check_random_state(random_state)

    half = n_timesteps // 2
    values = rng.uniform(0.0, 1.0, size=(n_samples, n_timesteps))
    first = rng.randint(0, half, size=n_samples)
    second = rng.randint(half, n_timesteps, size=n_samples)

    rows = np.arange(n_samples)
    markers = np.zeros((n_samples, n_timesteps), dtype=np.float64)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0

    X = np.stack([values, markers], axis=-1)
    y = values[rows, first] + values[rows, second]
    return X, y


_DIGITS_SEQUENCES_DESCR = """\
Digits as sequences
-------------------

scikit-learn's bundled optical recognition of handwritten digits dataset
(UCI ML, 1797 8x8 images of the digits 0-9, pixel values 0-16), read as
sequences: each image is 8 time steps (its rows, top to bottom) of 8
features (the pixels of that row, left to right). Pixel values are scaled
to [0, 1] by dividing by 16.

:Number of instances: 1797
:Sequence length: 8
:Number of features per step: 8
:Classes: 10
:Source: sklearn.datasets.load_digits (no download needed)
"""


def load_digits_sequences(*, return_X_y=False):
    """Load scikit-learn's 8x8 digits as sequences of image rows.

    Each 8x8 image from :func:`sklearn.datasets.load_digits` becomes a
    sequence of 8 time steps with 8 features per step (the image rows, top
    to bottom), scaled to ``[0, 1]`` by dividing the pixel values (0-16) by
    16. The data ships with scikit-learn, so nothing is downloaded.

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with attributes:

        data : ndarray of shape (1797, 8, 8), dtype float64
            Sequences ``(n_samples, n_timesteps, n_features)`` with values
            in ``[0, 1]``.
        target : ndarray of shape (1797,), dtype int
            Digit labels 0-9.
        images : ndarray of shape (1797, 8, 8), dtype float64
            The original, unscaled images (pixel values 0-16), as in
            :func:`sklearn.datasets.load_digits`.
        target_names : ndarray of shape (10,)
            The class labels ``0, ..., 9``.
        DESCR : str
            Short description of the dataset.

    (X, y) : tuple of ndarrays
        Returned instead of the Bunch if ``return_X_y`` is True: ``X`` of
        shape (1797, 8, 8), float64, and ``y`` of shape (1797,).

    Examples
    --------
    >>> from pylstm.datasets import load_digits_sequences
    >>> X, y = load_digits_sequences(return_X_y=True)
    >>> X.shape, X.dtype, y.shape
    ((1797, 8, 8), dtype('float64'), (1797,))
    >>> float(X.min()), float(X.max())
    (0.0, 1.0)
    >>> digits = load_digits_sequences()
    >>> digits.target_names
    array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    data = images / 16.0
    target = np.asarray(digits.target)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        images=images,
        target_names=np.asarray(digits.target_names),
        DESCR=_DIGITS_SEQUENCES_DESCR,
    )


def make_variable_length_sequences(
    n_samples=200, min_length=5, max_length=30, n_features=1, random_state=None
):
    """Generate a binary classification toy with variable-length sequences.

    Each sequence has a length drawn uniformly from the integers
    ``min_length, ..., max_length`` (inclusive) and standard normal values.
    The label is 1 if the sum of the first feature over the whole sequence
    is positive and 0 otherwise, so the model must integrate information
    over every time step. The classes are roughly balanced.

    Parameters
    ----------
    n_samples : int, default=200
        Number of sequences. Must be ``>= 1``.
    min_length : int, default=5
        Shortest possible sequence length. Must be ``>= 1``.
    max_length : int, default=30
        Longest possible sequence length (inclusive). Must be
        ``>= min_length``.
    n_features : int, default=1
        Number of features per time step. Must be ``>= 1``. Only the first
        feature determines the label; the others are noise.
    random_state : int, RandomState instance or None, default=None
        Seed or random number generator, passed to
        :func:`sklearn.utils.check_random_state`. Pass an int for
        reproducible output.

    Returns
    -------
    X : list of ndarray
        ``n_samples`` arrays; the ``i``-th has shape ``(T_i, n_features)``,
        dtype float64, with ``min_length <= T_i <= max_length``.
    y : ndarray of shape (n_samples,), dtype int64
        Labels in ``{0, 1}``: ``y[i] == int(X[i][:, 0].sum() > 0)``.

    Raises
    ------
    ValueError
        If ``n_samples``, ``min_length`` or ``n_features`` is not an integer
        ``>= 1``, or if ``max_length`` is not an integer ``>= min_length``.

    Examples
    --------
    >>> from pylstm.datasets import make_variable_length_sequences
    >>> X, y = make_variable_length_sequences(
    ...     n_samples=3, min_length=2, max_length=6, n_features=2, random_state=0
    ... )
    >>> len(X), X[0].ndim, X[0].shape[1], y.shape
    (3, 2, 2, (3,))
    >>> all(2 <= len(seq) <= 6 for seq in X)
    True
    >>> [int(seq[:, 0].sum() > 0) for seq in X] == y.tolist()
    True
    """
    n_samples = _check_int(n_samples, "n_samples", 1)
    min_length = _check_int(min_length, "min_length", 1)
    max_length = _check_int(max_length, "max_length", min_length)
    n_features = _check_int(n_features, "n_features", 1)
    rng = check_random_state(random_state)

    lengths = rng.randint(min_length, max_length + 1, size=n_samples)
    X = [rng.standard_normal(size=(int(length), n_features)) for length in lengths]
    y = np.array([seq[:, 0].sum() > 0 for seq in X], dtype=np.int64)
    return X, y


def load_python_docs():
    """Load the English text behind Python's ``help()`` as one string.

    CPython ships the documentation topics of :func:`help` (the language
    reference sections on statements, operators, types, ...) in the module
    ``pydoc_data.topics``. This function returns the values of its ``topics``
    dict joined in sorted key order, separated by blank lines: about half a
    million characters of technical English with code, a corpus for
    character-level language models that needs no download. Its exact content
    depends on the Python version.

    Returns
    -------
    text : str
        The concatenated topics.

    Raises
    ------
    ImportError
        If this Python installation lacks ``pydoc_data`` (some minimal
        distributions strip it).

    Examples
    --------
    >>> from pylstm.datasets import load_python_docs
    >>> text = load_python_docs()
    >>> len(text) > 100_000
    True
    >>> "while" in text and "exception" in text
    True
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # pragma: no cover - stripped Python builds
        raise ImportError(
            "load_python_docs needs CPython's bundled pydoc_data package, which this "
            "Python installation does not have"
        ) from exc
    return "\n\n".join(topics[key] for key in sorted(topics))


# (singular, plural) pairs. The main verb of make_agreement is was / were.
_AGREEMENT_NOUNS = (
    ("cat", "cats"), ("dog", "dogs"), ("boy", "boys"), ("girl", "girls"),
    ("teacher", "teachers"), ("farmer", "farmers"), ("horse", "horses"),
    ("bird", "birds"), ("doctor", "doctors"), ("friend", "friends"),
    ("student", "students"), ("king", "kings"),
)
_AGREEMENT_VERBS = (
    ("chases", "chase"), ("sees", "see"), ("likes", "like"), ("feeds", "feed"),
    ("follows", "follow"), ("helps", "help"), ("knows", "know"), ("loves", "love"),
)
_AGREEMENT_ADJECTIVES = (
    "full", "happy", "tired", "hungry", "old", "young", "angry", "calm", "sick", "quiet",
)
#: Probability that the noun of an intervening clause has the other number.
_ATTRACTOR_PROBABILITY = 0.8


def make_agreement(n_samples=1000, max_attractors=3, random_state=None):
    """Generate sentences whose main verb agrees with a distant subject.

    Each sentence is ``the SUBJECT``, then ``k`` relative clauses
    ``that the NOUN VERB`` that all modify the subject, then the main verb
    ``was`` (singular subject) or ``were`` (plural subject) and an adjective::

        the cat was full
        the cat that the dogs chase was full
        the cats that the dog chases that the boys see were happy

    ``k`` is drawn uniformly from ``0, ..., max_attractors``; the subject is
    singular or plural with probability 1/2. The noun of each clause has the
    subject's other number with probability 0.8 (an *attractor*, which pulls
    a model relying on the nearest noun towards the wrong verb) and the same
    number otherwise, so that the nearest noun does not give the answer. The
    verb of every clause agrees with its own noun. Predicting ``was`` or
    ``were`` needs the subject's number kept across all clauses, the test of
    long-range memory of Linzen, Dupoux and Goldberg (2016).

    Parameters
    ----------
    n_samples : int, default=1000
        Number of sentences. Must be ``>= 1``.
    max_attractors : int, default=3
        Largest number of intervening relative clauses. Must be ``>= 0``.
    random_state : int, RandomState instance or None, default=None
        Seed or random number generator, passed to
        :func:`sklearn.utils.check_random_state`. Pass an int for
        reproducible output.

    Returns
    -------
    sentences : list of str
        Lowercase words separated by single spaces, with no punctuation.
    info : :class:`~sklearn.utils.Bunch`
        Per-sentence metadata, arrays of shape (n_samples,):

        n_attractors : ndarray of int
            Intervening nouns whose number differs from the subject's.
        n_clauses : ndarray of int
            Intervening relative clauses (``>= n_attractors``).
        plural : ndarray of bool
            Whether the subject is plural.
        verb_index : ndarray of int
            Word position of the main verb (``2 + 4 * n_clauses``), so that
            ``sentence.split()[:verb_index]`` is the prefix before it.
        verb : ndarray of str
            The correct main verb, ``'was'`` or ``'were'``.

    Raises
    ------
    ValueError
        If ``n_samples`` is not an integer ``>= 1`` or ``max_attractors`` is
        not an integer ``>= 0``.

    References
    ----------
    .. [1] T. Linzen, E. Dupoux and Y. Goldberg, "Assessing the ability of
       LSTMs to learn syntax-sensitive dependencies", Transactions of the
       ACL, 4, pp. 521-535, 2016.

    Examples
    --------
    >>> from pylstm.datasets import make_agreement
    >>> sentences, info = make_agreement(n_samples=3, max_attractors=2, random_state=0)
    >>> len(sentences), info.verb_index.shape
    (3, (3,))
    >>> words = sentences[0].split()
    >>> words[info.verb_index[0]] == info.verb[0]
    True
    >>> all(v in ("was", "were") for v in info.verb)
    True
    """
    n_samples = _check_int(n_samples, "n_samples", 1)
    max_attractors = _check_int(max_attractors, "max_attractors", 0)
    rng = check_random_state(random_state)

    n_clauses = rng.randint(0, max_attractors + 1, size=n_samples)
    plural = rng.random_sample(n_samples) < 0.5
    n_attractors = np.zeros(n_samples, dtype=np.int64)
    sentences = []
    for i in range(n_samples):
        number = int(plural[i])
        words = ["the", _AGREEMENT_NOUNS[rng.randint(len(_AGREEMENT_NOUNS))][number]]
        for _ in range(n_clauses[i]):
            other = rng.random_sample() < _ATTRACTOR_PROBABILITY
            clause_number = 1 - number if other else number
            n_attractors[i] += other
            noun = _AGREEMENT_NOUNS[rng.randint(len(_AGREEMENT_NOUNS))][clause_number]
            verb = _AGREEMENT_VERBS[rng.randint(len(_AGREEMENT_VERBS))][clause_number]
            words += ["that", "the", noun, verb]
        words.append("were" if number else "was")
        words.append(_AGREEMENT_ADJECTIVES[rng.randint(len(_AGREEMENT_ADJECTIVES))])
        sentences.append(" ".join(words))
    info = Bunch(
        n_attractors=n_attractors,
        n_clauses=n_clauses.astype(np.int64),
        plural=plural,
        verb_index=2 + 4 * n_clauses.astype(np.int64),
        verb=np.where(plural, "were", "was"),
    )
    return sentences, info
