"""LSTMLanguageModel: next-token prediction and text generation.

Character- or word-level. Training is stateful truncated BPTT: the token
streams are laid side by side in ``batch_size`` lanes and cut into windows of
``seq_len`` tokens; the LSTM state is carried from one window to the next of
the same lane. Generation runs one single-step kernel call per token.
"""

import itertools
import numbers
import re
import warnings
from collections import Counter

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._container import ModelFileError, read_int, short
from ._fields import (
    COUNT,
    DTYPE,
    FLOAT_LIST,
    SEED,
    Field,
    decode_dropout,
    decode_proj_size,
    decode_trained,
    encode_trained,
    saved_proj_size,
    trained_arrays,
)
from ._network import LanguageNetwork, log_softmax, softmax_cross_entropy
from ._optim import (
    make_optimizer,
    reconfigure_optimizer,
    restore_optimizer,
    warn_if_diverging,
)
from ._progress import EpochProgress
from ._threads import inference, model_use, run_to_completion
from ._validation import BLAS_INT_MAX, NonFiniteError, check_dtype

__all__ = ["LSTMLanguageModel"]

UNK = "<unk>"
BOS = "<bos>"
_WORD_RE = re.compile(r"\w+|[^\w\s]")
#: Tokens per forward call when reading a text at inference (scoring, priming a
#: prompt): a call's logits are (tokens x vocabulary), so long texts go in chunks
#: carrying the state, and memory does not grow with the text's length.
_CHUNK_TOKENS = 4096
#: Code points below this are counted with one bincount and encoded through a
#: table with an entry per code point up to the largest one needed (at most
#: 512 KiB of int64); beyond it, by sorting and binary search.
_DENSE_CODES = 1 << 16


def _char_codes(text):
    """A text's characters as their code points (uint32), lone surrogates kept.

    A character-level model reads a text as this array rather than a list of
    one-character strings: counting and encoding it are NumPy passes, and a
    fit's preparation is several times as fast (``benchmarks/bench_lm.py``,
    outside the compiled calls).
    """
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    return codes.astype(np.uint32, copy=False)  # a copy only on a big-endian machine


def _count_codes(codes):
    """The distinct code points of ``codes`` in ascending order, and their counts."""
    if codes.size and int(codes.max()) < _DENSE_CODES:
        counts = np.bincount(codes)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(codes, return_counts=True)


def _decode_vocabulary(v, where):
    """The tokens of a language model: distinct non-empty strings, '<unk>' and '<bos>' first."""
    if not isinstance(v, list) or len(v) < 2:
        raise ModelFileError(f"{where} must be a list of at least 2 tokens, got {short(v)}")
    for i, token in enumerate(v):
        if not isinstance(token, str) or not token:
            raise ModelFileError(f"{where}[{i}] must be a non-empty string, got {short(token)}")
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise ModelFileError(f"{where}[{i}] is not valid Unicode text (it holds a lone "
                                 f"surrogate): {short(token)}") from None
    if v[0] != UNK or v[1] != BOS:
        raise ModelFileError(f"{where} must start with {UNK!r} and {BOS!r} (indices 0 and 1), "
                             f"got {short(v[:2])}")
    seen = set()
    for i, token in enumerate(v):
        if token in seen:
            raise ModelFileError(f"{where} has the token {short(token)} twice (again at index "
                                 f"{i}): tokens must be distinct")
        seen.add(token)
    return list(v)


class LSTMLanguageModel(BaseEstimator):
    """An LSTM language model over characters or words.

    Parameters
    ----------
    level : {'char', 'word'}, default='char'
        Tokens are characters, or words and punctuation marks.
    embedding_dim : int, default=32
        Size of the token embedding.
    hidden_size : int, default=128
        Units of each LSTM layer.
    num_layers : int, default=1
        Stacked LSTM layers.
    dropout : float in [0, 1), default=0.0
        Dropout between LSTM layers (training only).
    seq_len : int, default=64
        Tokens per training window (the truncation of BPTT).
    batch_size : int, default=32
        Parallel token streams (lanes) per batch.
    max_iter : int, default=10
        Epochs of ``fit``.
    solver : {'adam', 'sgd', 'rmsprop'}, default='adam'
        Optimizer.
    learning_rate_init : float, default=0.003
        Step size.
    clip_norm : float or None, default=5.0
        Clip the gradients' global norm; None disables.
    min_frequency : int, default=1
        Tokens seen fewer times in ``fit`` map to the unknown token.
    lowercase : bool, default=False
        Lowercase the text before tokenizing.
    validation_fraction : float in [0, 1), default=0.0
        Share of each text's tail held out to report validation perplexity
        after every epoch (0 disables; required > 0 by ``early_stopping``).
    early_stopping : bool, default=False
        Stop once the validation perplexity has not improved for more than
        ``n_iter_no_change`` consecutive epochs (the rule of the estimators
        and of scikit-learn's MLP), and restore the best weights.
    n_iter_no_change : int, default=3
        Epochs without improvement allowed by ``early_stopping``.
    random_state : int, RandomState instance or None, default=None
        Seeds weights, stream order and dropout.
    verbose : int, default=0
        1 prints a progress line per epoch with the validation perplexity.
    dtype : {'float32', 'float64'}, default='float32'
        Precision.
    recurrent_dropout : float in [0, 1), default=0.0
        Variational dropout on the recurrent state (Keras'
        ``recurrent_dropout``): in training, each stream and layer draws one
        mask over the units of h_{t-1} where it enters the recurrent
        product, the same at every step of a window, redrawn each batch; the
        state carried to the next window is unmasked. Off in evaluation and
        generation. ``dropout`` acts between layers instead.
    proj_size : int, default=0
        With ``proj_size > 0`` (smaller than ``hidden_size``), LSTM layers
        with projections, as ``torch.nn.LSTM(proj_size=...)``: the state
        h_t that the next layer and the softmax head read has ``proj_size``
        units, a learned projection of ``o_t * tanh(c_t)``.

    Attributes
    ----------
    vocabulary_ : list of str
        The tokens; index 0 is the unknown token ``'<unk>'`` and index 1 the
        beginning-of-text token ``'<bos>'``. Distributions are aligned with it.
    loss_curve_ : list of float
        Mean training cross-entropy (nats per token) of each epoch.
    validation_perplexities_ : list of float
        Held-out perplexity after each epoch (when validating).
    n_iter_ : int
        Epochs run.
    network_ : LanguageNetwork
        Embedding, LSTM layers and output layer.

    Examples
    --------
    >>> from pylstm import LSTMLanguageModel
    >>> lm = LSTMLanguageModel(hidden_size=16, seq_len=8, max_iter=2, random_state=0)
    >>> lm = lm.fit("abcabcabcabcabcabcabcabc" * 4)
    >>> len(lm.generate("ab", n_tokens=5, random_state=0))
    5
    """

    def __init__(self, level="char", embedding_dim=32, hidden_size=128, num_layers=1,
                 dropout=0.0, seq_len=64, batch_size=32, max_iter=10, solver="adam",
                 learning_rate_init=0.003, clip_norm=5.0, min_frequency=1, lowercase=False,
                 validation_fraction=0.0, early_stopping=False, n_iter_no_change=3,
                 random_state=None, verbose=0, dtype="float32", recurrent_dropout=0.0,
                 proj_size=0):
        self.level = level
        self.embedding_dim = embedding_dim
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.clip_norm = clip_norm
        self.min_frequency = min_frequency
        self.lowercase = lowercase
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.recurrent_dropout = recurrent_dropout
        self.proj_size = proj_size

    # ------------------------------------------------------------------ saved state
    # pylstm.save writes the description {"params", "fitted", "network", "optimizer"}
    # (network: dropout and sizes) and the network's and optimizer's arrays; pylstm.load
    # checks the description (_saved_layout) before it reads an array.

    #: Fitted attributes a model file keeps: name -> field. Besides these and the
    #: hyperparameters, fit sets network_ and _optimizer (saved as arrays) and _index
    #: (rebuilt from vocabulary_); tests/io/test_io.py checks that it sets no others.
    _saved_fitted = {
        "vocabulary_": Field(list, _decode_vocabulary),
        "_dtype": DTYPE,
        "_seed": SEED,
        "n_iter_": COUNT,
        "loss_curve_": FLOAT_LIST,
        "validation_perplexities_": FLOAT_LIST,
    }
    _SAVED_NETWORK = ("dropout", "embedding_dim", "hidden_size", "num_layers")

    def _saved_state(self):
        """The description and arrays that :func:`pylstm.save` writes."""
        check_is_fitted(self, "network_")
        if getattr(self, "_index", None) != {tok: i for i, tok in enumerate(self.vocabulary_)}:
            raise ValueError("cannot save this LSTMLanguageModel: its token index does not "
                             "match vocabulary_")
        net = self.network_
        if net.dtype != np.dtype(self._dtype):
            raise ValueError(f"cannot save this LSTMLanguageModel: its network is {net.dtype} "
                             f"but _dtype is {np.dtype(self._dtype)}")
        if not net.layers:
            raise ValueError("cannot save this LSTMLanguageModel: its network has no layer")
        return encode_trained(self, {
            "dropout": float(net.dropout), "embedding_dim": int(net.embedding.shape[1]),
            "hidden_size": int(net.layers[0].hidden_size), "num_layers": len(net.layers),
            **saved_proj_size(net.layers)})

    @classmethod
    def _saved_layout(cls, description, n_arrays):
        """Check a description read by :func:`pylstm.load`; return what
        :meth:`_from_saved_state` needs and the arrays the file must hold (name to
        shape and dtype). ``n_arrays``, the arrays in the file, bounds the layers."""
        lm, fitted, network, optimizer = decode_trained(cls, description, cls._SAVED_NETWORK)
        where = "model.network."
        dropout = decode_dropout(network["dropout"], where + "dropout")
        sizes = (len(fitted["vocabulary_"]),
                 read_int(network["embedding_dim"], where + "embedding_dim", 1, BLAS_INT_MAX),
                 read_int(network["hidden_size"], where + "hidden_size", 1, BLAS_INT_MAX // 4),
                 read_int(network["num_layers"], where + "num_layers", 1, max(1, n_arrays)))
        sizes += (decode_proj_size(network, sizes[2], where + "proj_size"),)
        optimizer, expected = trained_arrays(LanguageNetwork.saved_shapes(*sizes), optimizer,
                                             fitted["_dtype"])
        plan = {"lm": lm, "fitted": fitted, "dropout": dropout, "sizes": sizes,
                "optimizer": optimizer}
        return plan, expected

    @classmethod
    def _from_saved_state(cls, plan, arrays):
        """The fitted model of :meth:`_saved_layout`'s plan, with the saved arrays."""
        lm = plan["lm"]
        for attr, value in plan["fitted"].items():
            setattr(lm, attr, value)
        lm._index = {token: i for i, token in enumerate(lm.vocabulary_)}
        *sizes, proj_size = plan["sizes"]
        lm.network_ = LanguageNetwork(*sizes, plan["dropout"], lm._dtype,
                                      np.random.RandomState(0), proj_size=proj_size)
        lm.network_.load_saved_arrays(arrays)
        lm._optimizer = restore_optimizer(plan["optimizer"], lm.network_.parameters(), arrays)
        return lm

    def __setstate__(self, state):
        # Pickled before these parameters existed: what the model was then.
        state.setdefault("recurrent_dropout", 0.0)
        state.setdefault("proj_size", 0)
        super().__setstate__(state)

    # ------------------------------------------------------------------ text
    def _check_params(self):
        if self.level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {self.level!r}")
        for name in ("embedding_dim", "hidden_size", "num_layers", "seq_len", "batch_size",
                     "max_iter", "min_frequency", "n_iter_no_change"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        p = self.proj_size
        if (isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 0
                or p >= self.hidden_size):
            raise ValueError(f"proj_size must be an integer >= 0 and smaller than hidden_size "
                             f"({self.hidden_size}), got {p!r}")
        for name, low, high in (("dropout", 0, 1), ("validation_fraction", 0, 1),
                                ("recurrent_dropout", 0, 1)):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or not low <= v < high:
                raise ValueError(f"{name} must be in [{low}, {high}), got {v!r}")
        # Finite, as the estimators require: an infinite step makes every weight NaN.
        lr = self.learning_rate_init
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < np.inf:
            raise ValueError(f"learning_rate_init must be > 0 and finite, got {lr!r}")
        if self.clip_norm is not None and (
                isinstance(self.clip_norm, bool) or not isinstance(self.clip_norm, numbers.Real)
                or not self.clip_norm > 0):
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm!r}")
        if self.solver not in ("adam", "sgd", "rmsprop"):
            raise ValueError(f"solver must be 'adam', 'sgd' or 'rmsprop', got {self.solver!r}")
        if self.early_stopping and self.validation_fraction <= 0:
            raise ValueError("early_stopping needs validation_fraction > 0")
        try:
            return check_dtype(self.dtype)
        except TypeError as exc:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}") from exc

    @staticmethod
    def _as_texts(texts, name="texts"):
        if isinstance(texts, str):
            texts = [texts]
        try:
            texts = list(texts)
        except TypeError:
            raise TypeError(f"{name} must be a string or an iterable of strings, got "
                            f"{type(texts).__name__}") from None
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}] must be a string, got {type(t).__name__}")
        if not any(texts):
            raise ValueError(f"{name} is empty: no characters to learn from")
        return texts

    def _tokenize(self, text):
        if self.lowercase:
            text = text.lower()
        return _char_codes(text) if self.level == "char" else _WORD_RE.findall(text)

    def _encode_all(self, token_lists):
        """:meth:`_encode` of several texts' tokens: a character model's in one
        pass, whose lookup table is then made once rather than per text."""
        if self.level != "char" or len(token_lists) < 2:
            return [self._encode(t) for t in token_lists]
        ends = np.cumsum([len(t) for t in token_lists])[:-1]
        return np.split(self._encode(np.concatenate(token_lists)), ends)

    def _encode(self, tokens):
        """Token ids (int64) of :meth:`_tokenize`'s result; unknown tokens are 0."""
        if isinstance(tokens, np.ndarray):  # code points: looked up in a table
            chars = [t for t in self._index if len(t) == 1]
            codes = np.array([ord(t) for t in chars], dtype=np.int64)
            ids = np.array([self._index[t] for t in chars], dtype=np.int64)
            if codes.size == 0:
                return np.zeros(len(tokens), dtype=np.int64)
            if codes.max() < _DENSE_CODES:
                # One entry per code point up to the largest known one; the
                # last, past it, stands for every larger code point: unknown.
                table = np.zeros(codes.max() + 2, dtype=np.int64)
                table[codes] = ids
                return table[np.minimum(tokens, len(table) - 1)]
            order = np.argsort(codes)
            codes, ids = codes[order], ids[order]
            at = np.minimum(np.searchsorted(codes, tokens), len(codes) - 1)
            return np.where(codes[at] == tokens, ids[at], 0)
        # map() with the default as a second iterable runs the lookups in C
        # (unknown tokens are 0), several times as fast as a generator.
        return np.fromiter(map(self._index.get, tokens, itertools.repeat(0)), dtype=np.int64,
                           count=len(tokens))

    def _detokenize(self, tokens):
        if self.level == "char":
            return "".join(tokens)
        out = ""
        for tok in tokens:
            if out and (tok[0].isalnum() or tok[0] == "_"):
                out += " "
            out += tok
        return out

    # ------------------------------------------------------------------ training
    def fit(self, texts):
        """Build the vocabulary and train for ``max_iter`` epochs.

        Parameters
        ----------
        texts : str or iterable of str
            The training text(s); each string is one stream.

        Returns
        -------
        self : object
        """
        return self._fit(texts, incremental=False)

    def partial_fit(self, texts):
        """Train one more epoch on ``texts``, keeping the vocabulary.

        Unknown tokens map to ``'<unk>'``. On an unfitted model, builds the
        vocabulary from ``texts`` first. A ``learning_rate_init`` changed
        since the last call applies from the next update on, the optimizer's
        state kept; a changed ``solver`` starts a new optimizer.

        Parameters
        ----------
        texts : str or iterable of str

        Returns
        -------
        self : object
        """
        return self._fit(texts, incremental=True)

    def _build(self, token_lists, dtype):
        if self.level == "char":  # code points, in ascending order: sorted characters
            codes, counts = _count_codes(np.concatenate(token_lists))
            kept = [chr(c) for c in codes[counts >= self.min_frequency].tolist()]
            most = int(counts.max(initial=0))
        else:
            counts = Counter()
            for toks in token_lists:  # a list at a time: counted in C
                counts.update(toks)
            kept = sorted(t for t, n in counts.items()
                          if n >= self.min_frequency and t not in (UNK, BOS))
            most = max(counts.values(), default=0)
        vocab = [UNK, BOS] + kept
        if len(vocab) == 2:
            # A model of '<unk>' alone could never generate: those tokens are not emitted.
            raise ValueError(
                f"min_frequency={self.min_frequency} leaves no token in the vocabulary: the "
                f"most frequent token of the training text occurs "
                f"{most} times; lower min_frequency or give more text"
            )
        self.vocabulary_ = vocab
        self._index = {tok: i for i, tok in enumerate(vocab)}
        rng = check_random_state(self.random_state)
        self._dtype = dtype
        self.network_ = LanguageNetwork(len(vocab), self.embedding_dim, self.hidden_size,
                                        self.num_layers, self.dropout, dtype, rng,
                                        proj_size=self.proj_size)
        self._optimizer = make_optimizer(self.solver, self.network_.parameters(),
                                         self.learning_rate_init)
        self._seed = int(rng.randint(np.iinfo(np.int32).max))
        self.loss_curve_ = []
        self.validation_perplexities_ = []
        self.n_iter_ = 0

    def _fit(self, texts, incremental):
        with model_use(self, "partial_fit" if incremental else "fit", fitting=True):
            # An error or an interrupt before the training loop leaves the model
            # as it was: one assignment puts every attribute back.
            before = self.__dict__.copy()
            try:
                prepared = self._prepare_fit(texts, incremental)
            except BaseException:
                self.__dict__ = before
                raise
            return self._train(incremental, *prepared)

    def _prepare_fit(self, texts, incremental):
        """Tokenize, split and (re)build; the encoded streams that :meth:`_train` needs."""
        dtype = self._check_params()
        texts = self._as_texts(texts)
        token_lists = [self._tokenize(t) for t in texts]
        fitted = hasattr(self, "network_")
        frac = self.validation_fraction
        train, val = [], []
        for toks in token_lists:
            n_val = int(len(toks) * frac) if frac > 0 else 0
            train.append(toks[: len(toks) - n_val])
            if n_val:
                val.append(toks[len(toks) - n_val:])
        if not (incremental and fitted):
            self._build(train, dtype)
        streams = [np.concatenate([[1], t]) for t in self._encode_all(train) if len(t)]
        n_tokens = sum(len(s) - 1 for s in streams)
        if n_tokens < self.seq_len:
            raise ValueError(
                f"the training text has {n_tokens} tokens, fewer than one window of "
                f"seq_len={self.seq_len}: give more text or a smaller seq_len"
            )
        val_streams = [np.concatenate([[1], t]) for t in self._encode_all(val) if len(t)]
        self._optimizer.params = self.network_.parameters()
        # The layers draw their masks in training; a continued fit takes the
        # value set now (set_params, a loaded model).
        for layer in self.network_.layers:
            layer.recurrent_dropout = float(self.recurrent_dropout)
        if incremental and fitted:  # a changed solver or learning rate applies
            self._optimizer = reconfigure_optimizer(self._optimizer, self.solver,
                                                    self.network_.parameters(),
                                                    self.learning_rate_init)
        return streams, val_streams

    def _train(self, incremental, streams, val_streams):
        """The epochs of :meth:`fit` / :meth:`partial_fit`.

        A ``KeyboardInterrupt`` or a ``FloatingPointError`` (the training
        diverged) during an epoch rolls the weights, the optimizer,
        ``n_iter_``, ``loss_curve_`` and ``validation_perplexities_`` back to
        the end of the last completed epoch before it propagates, so the
        model keeps finite weights. A loss that grows by
        :data:`pylstm._optim.DIVERGENCE_FACTOR` over the call's first window
        is warned about once.
        """
        n_epochs = 1 if incremental else self.max_iter
        bar = EpochProgress(n_epochs) if self.verbose else None
        best, best_state, no_improve = np.inf, None, 0
        stopped = False
        first_loss, diverging = None, False
        snapshot = None
        try:
            for i in range(n_epochs):
                snapshot = (self.network_.get_state(), self._optimizer.state_dict(),
                            {"n_iter_": self.n_iter_, "loss_curve_": list(self.loss_curve_),
                             "validation_perplexities_": list(self.validation_perplexities_)})
                rng = np.random.RandomState([self._seed, self.n_iter_])
                loss, first = self._epoch(streams, rng, self.n_iter_ + 1)
                first_loss = first if first_loss is None else first_loss
                diverging = diverging or warn_if_diverging(
                    loss, first_loss, self.n_iter_ + 1, self.learning_rate_init, stacklevel=4)
                self.n_iter_ += 1
                self.loss_curve_.append(loss)
                ppl = None
                if val_streams:
                    ppl = float(np.exp(-self._mean_log_likelihood(val_streams)))
                    self.validation_perplexities_.append(ppl)
                    if ppl < best:
                        best, no_improve = ppl, 0
                        if self.early_stopping:
                            best_state = self.network_.get_state()
                    else:
                        no_improve += 1
                snapshot = None  # the epoch is complete: nothing to roll back
                if bar is not None:
                    bar.update(i + 1, loss=loss, perplexity=float(np.exp(loss)),
                               validation_perplexity=ppl)
                if self.early_stopping and no_improve > self.n_iter_no_change:
                    stopped = True
                    break
        except (KeyboardInterrupt, FloatingPointError):
            if snapshot is not None:
                run_to_completion(self._roll_back, snapshot)
            raise
        finally:
            for layer in self.network_.layers:
                layer.free_workspace()
            self._optimizer.clear_scratch()  # the updates' scratch
            self.network_._cache = None
        if best_state is not None:
            run_to_completion(self.network_.set_state, best_state)
        if not incremental and self.early_stopping and not stopped:
            warnings.warn(f"max_iter ({self.max_iter}) reached before early stopping",
                          ConvergenceWarning, stacklevel=4)
        return self

    def _roll_back(self, snapshot):
        """Back to an epoch's start (idempotent: may be run again)."""
        weights, optimizer, attrs = snapshot
        self.network_.set_state(weights)
        self._optimizer.load_state_dict(optimizer)
        self.__dict__.update(attrs)  # one call: all of them or none

    def _lanes(self, streams, rng):
        """Streams in a random order, concatenated and cut into batch_size lanes."""
        order = rng.permutation(len(streams))
        data = np.concatenate([streams[i] for i in order])
        B = max(1, min(self.batch_size, (len(data) - 1) // self.seq_len))
        width = (len(data) - 1) // B
        inputs = data[: B * width].reshape(B, width)
        targets = data[1: B * width + 1].reshape(B, width)
        return inputs, targets

    def _epoch(self, streams, rng, epoch):
        """One pass over the streams: the mean loss per token, and the first window's."""
        net = self.network_
        inputs, targets = self._lanes(streams, rng)
        B, width = inputs.shape
        state, total, count, first = None, 0.0, 0, None
        for start in range(0, width, self.seq_len):
            x = inputs[:, start:start + self.seq_len]
            y = targets[:, start:start + self.seq_len]
            try:
                logits, state = net.forward(x, state, training=True, rng=rng)
            except NonFiniteError as exc:
                # The tokens are valid: a non-finite layer input or state comes from
                # weights that the last update made non-finite.
                raise FloatingPointError(
                    f"the weights became non-finite in epoch {epoch}: lower "
                    f"learning_rate_init (now {self.learning_rate_init!r}) or set "
                    "clip_norm") from exc
            V = logits.shape[-1]
            n = y.size
            loss, dz = softmax_cross_entropy(logits.reshape(n, V), y.ravel(), np.full(n, 1.0 / n))
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became non-finite in epoch {epoch}: lower "
                    "learning_rate_init or set clip_norm")
            try:
                grads = net.backward(dz.reshape(logits.shape))
            except NonFiniteError:  # a gradient overflowed on its way down
                norm = np.nan
            else:  # (no update where the norm is not finite)
                norm = self._optimizer.clip_and_update(
                    grads, self.clip_norm if self.clip_norm else np.inf)
            if not np.isfinite(norm):
                raise FloatingPointError(
                    f"the gradients became non-finite in epoch {epoch}: lower "
                    "learning_rate_init or set clip_norm")
            first = float(loss) if first is None else first
            total += float(loss) * n
            count += n
        return total / count, first

    # ------------------------------------------------------------------ inference
    def _mean_log_likelihood(self, streams):
        """Mean log-probability per predicted token over encoded streams."""
        total, count = 0.0, 0
        for s in streams:
            if len(s) < 2:
                continue
            state = None
            inputs, targets = s[:-1], s[1:]
            for start in range(0, len(inputs), _CHUNK_TOKENS):
                x = inputs[None, start:start + _CHUNK_TOKENS]
                y = targets[start:start + _CHUNK_TOKENS]
                logits, state = self.network_.forward(x, state, training=False)
                logp = log_softmax(logits[0].astype(np.float64))
                total += float(logp[np.arange(len(y)), y].sum())
                count += len(y)
        if count == 0:
            raise ValueError("texts hold no token to score")
        return total / count

    @inference
    def score(self, texts):
        """Mean log-likelihood per token (nats; greater is better).

        Parameters
        ----------
        texts : str or iterable of str

        Returns
        -------
        float
        """
        check_is_fitted(self, "network_")
        texts = self._as_texts(texts)
        streams = [np.concatenate([[1], t])
                   for t in self._encode_all([self._tokenize(t) for t in texts])]
        return self._mean_log_likelihood(streams)

    def perplexity(self, texts):
        """Perplexity per token, ``exp(-score(texts))``.

        Parameters
        ----------
        texts : str or iterable of str

        Returns
        -------
        float
        """
        return float(np.exp(-self.score(texts)))

    def _prime(self, prefix):
        """Logits (V,) of the token after ``prefix``, and the state after it.

        Only the last token's logits are needed: the head runs on that row
        alone, and the prompt is read in chunks carrying the state, so memory
        does not grow with the prompt's length.
        """
        tokens = np.concatenate([[1], self._encode(self._tokenize(prefix))])
        state = None
        for start in range(0, len(tokens), _CHUNK_TOKENS):
            logits, state = self.network_.forward(tokens[None, start:start + _CHUNK_TOKENS],
                                                  state, training=False, last_only=True)
        return logits[0], state

    @inference
    def predict_proba(self, prefix, as_dict=False):
        """Distribution of the next token after ``prefix``.

        Parameters
        ----------
        prefix : str
            The text so far (may be empty; unknown tokens map to ``'<unk>'``).
        as_dict : bool, default=False
            Return a dict token -> probability instead of an array.

        Returns
        -------
        ndarray of shape (n_tokens,) or dict
            Probabilities aligned with ``vocabulary_`` (``n_tokens`` is
            ``len(vocabulary_)``), or a dict token -> probability with
            ``as_dict=True``.
        """
        check_is_fitted(self, "network_")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
        logits, _ = self._prime(prefix)
        proba = np.exp(log_softmax(logits.astype(np.float64)))
        if as_dict:
            return dict(zip(self.vocabulary_, proba.tolist(), strict=True))
        return proba

    @inference
    def generate(self, prompt="", n_tokens=200, temperature=1.0, top_k=None,
                 random_state=None):
        """Sample a continuation of ``prompt``.

        The prompt is read once; then each new token costs one single-step
        kernel call per layer, carrying the state.

        Parameters
        ----------
        prompt : str, default=''
            Text to continue (unknown tokens map to ``'<unk>'``).
        n_tokens : int, default=200
            Tokens to generate.
        temperature : float >= 0, default=1.0
            Divides the logits; 0 means greedy decoding (the most likely token).
            Must be finite.
        top_k : int or None, default=None
            Sample only among the k most likely tokens.
        random_state : int, RandomState instance or None, default=None
            Seed of the sampling.

        Returns
        -------
        str
            The generated continuation (without the prompt).
        """
        check_is_fitted(self, "network_")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, numbers.Integral) or (
                n_tokens < 0):
            raise ValueError(f"n_tokens must be an integer >= 0, got {n_tokens!r}")
        if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                or not 0 <= temperature < np.inf):
            raise ValueError(f"temperature must be >= 0 and finite, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, numbers.Integral) or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        if len(self.vocabulary_) <= 2:  # a model file of an older fit may have one
            raise ValueError("the vocabulary holds no token to generate, only '<unk>' and "
                             "'<bos>': refit with a lower min_frequency")
        rng = check_random_state(random_state)
        logits, state = self._prime(prompt)
        out = []
        special = np.array([0, 1])
        for _ in range(n_tokens):
            z = logits.astype(np.float64)
            z[special] = -np.inf  # never emit <unk> or <bos>
            if temperature == 0:
                token = int(np.argmax(z))
            else:
                # Shifted before the division: the most likely token's term is
                # exp(0) = 1 at any temperature, so the sum never overflows or
                # vanishes (a tiny temperature overflows the others to -inf).
                z -= z.max()
                with np.errstate(over="ignore"):
                    z /= temperature
                if top_k is not None and top_k < len(z):
                    cut = np.partition(z, -top_k)[-top_k]
                    z[z < cut] = -np.inf
                p = np.exp(z)
                p /= p.sum()
                token = int(rng.choice(len(p), p=p))
            out.append(self.vocabulary_[token])
            step_logits, state = self.network_.step(np.array([token]), state)
            logits = step_logits[0]
        return self._detokenize(out)
