"""scikit-learn estimators: LSTMClassifier and LSTMRegressor.

They validate input once, encode targets, cut batches, run epochs, stop early
and keep the fitted state; the model's mathematics is
:class:`pylstm._network.SequenceNetwork`'s and the updates are
:mod:`pylstm._optim`'s.
"""

import numbers
import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import TransformerTags, check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ._arrays import sum_squares
from ._container import ModelFileError, read_bool, read_int, read_str, short
from ._fields import (
    BOOL,
    CLASSES,
    COUNT,
    DTYPE,
    FLOAT,
    FLOAT_LIST,
    NAMES,
    SEED,
    Field,
    decode_dropout,
    decode_proj_size,
    decode_trained,
    encode_trained,
    int_field,
    optional,
    saved_proj_size,
    trained_arrays,
)
from ._network import SequenceNetwork, log_softmax, softmax_cross_entropy, squared_error
from ._optim import (
    clip_grad_norm,
    clip_grad_value,
    make_optimizer,
    reconfigure_optimizer,
    restore_optimizer,
    warn_if_diverging,
)
from ._progress import EpochProgress
from ._sequences import as_sequence_array, check_sequence_list, is_ragged, pad_sequences
from ._stream import LSTMStream
from ._threads import inference, model_use, run_to_completion
from ._validation import BLAS_INT_MAX, check_dtype, check_numeric

__all__ = ["LSTMClassifier", "LSTMRegressor"]

#: Sequences per inference batch in predict/transform.
_PREDICT_BATCH = 256

_SHARED_PARAMS_DOC = """
    hidden_size : int, default=64
        Units of each LSTM direction in each layer.
    num_layers : int, default=1
        Stacked LSTM layers.
    bidirectional : bool, default=False
        Read each sequence forwards and backwards; the output layer sees both
        directions' final states (or both outputs at each step).
    dropout : float in [0, 1), default=0.0
        Dropout on the outputs of every LSTM layer but the last (training
        only; deterministic given ``random_state``).
    solver : {'adam', 'sgd', 'rmsprop'}, default='adam'
        Optimizer.
    learning_rate_init : float, default=0.005
        Step size.
    momentum : float, default=0.9
        Momentum of 'sgd'.
    nesterovs_momentum : bool, default=True
        Nesterov momentum for 'sgd'.
    batch_size : int, default=32
        Sequences per mini-batch (capped at the number of samples).
    max_iter : int, default=100
        Epochs of ``fit`` (``partial_fit`` runs one per call).
    alpha : float, default=1e-4
        L2 penalty on the weight matrices.
    clip_norm : float or None, default=5.0
        Rescale the gradients whenever their global L2 norm exceeds this;
        None disables.
    clip_value : float or None, default=None
        Clip every gradient entry to ``[-clip_value, clip_value]``.
    shuffle : bool, default=True
        Shuffle the mini-batches every epoch.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified for the
        classifier), stop once its score has not improved by ``tol`` for
        more than ``n_iter_no_change`` consecutive epochs (scikit-learn's
        MLP rule) and restore the best weights.
    validation_fraction : float in (0, 1), default=0.1
        Share of the data held out with ``early_stopping``.
    n_iter_no_change : int, default=10
        Epochs without improvement allowed (the training loss's, or the
        validation score's with ``early_stopping``).
    tol : float, default=1e-4
        Least improvement of the training loss (or validation score) that counts.
    warm_start : bool, default=False
        Continue from the previous fit's weights and optimizer state. A
        ``learning_rate_init``, ``momentum`` or ``nesterovs_momentum`` changed
        since (``set_params``) applies from the next update on, the
        optimizer's state kept; a changed ``solver`` starts a new optimizer,
        as scikit-learn's MLP does. The same holds for ``partial_fit`` (where
        the MLP ignores such changes).
    random_state : int, RandomState instance or None, default=None
        Seeds the weights, the shuffling, dropout and the validation split.
        Same seed, same data and same BLAS thread count give bit-identical
        models.
    verbose : int, default=0
        1 prints a progress line per epoch (loss, validation score, time).
    dtype : {'float32', 'float64'}, default='float32'
        Precision of the weights and computations. 'float32', as in PyTorch
        and Keras, is about twice as fast; 'float64' for gradient checks or
        long sequences whose sums need the extra precision. Input of either
        dtype is converted.
    return_sequences : bool, default=False
        False: one prediction per sequence, from its last valid step.
        True: a prediction at every valid step (sequence tagging); y then
        holds per-step targets.
    n_features : int or None, default=None
        Features per step of 2-D input: each row of a 2-D X then holds
        ``n_timesteps * n_features`` values, step after step (row ``i`` is
        ``X3d[i].ravel()``). None means 1 (univariate sequences). This is the
        layout for tools that only pass 2-D blocks, such as
        ``dask_ml.wrappers.Incremental``.
"""

_INPUT_DOC = """
    The input X can be a 3-D array (n_samples, n_timesteps, n_features), a
    2-D array (n_samples, n_timesteps) of univariate sequences (or of
    flattened multivariate ones, see ``n_features``), or a list of
    2-D arrays (T_i, n_features) of different lengths (1-D arrays are
    univariate sequences). ``n_features_in_`` is the number of features per
    step for 3-D and list input, and, following scikit-learn, the number of
    columns (time steps) for 2-D input, which must then be the same at
    predict time. pandas DataFrames work like 2-D arrays.
"""


def _available_memory():
    """Bytes of physical memory available now, or None where unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _valid_steps(lengths, n_timesteps):
    """Boolean mask (n_samples, n_timesteps): True at each sequence's valid steps."""
    return np.arange(n_timesteps)[None, :] < lengths[:, None]


def _ndim(X):
    """Number of dimensions of array-like ``X`` (-1 when it is not array-like)."""
    try:
        return np.asarray(X).ndim
    except (ValueError, TypeError):
        return -1


def _check_labels(labels, name="y"):
    """ValueError for object labels that are missing (None, NaN) or of mixed kinds.

    Classes are sorted (``np.unique``): None, NaN or strings among numbers
    would fail there with a bare comparison TypeError.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind != "O" or labels.size == 0:
        return
    flat = labels.ravel()
    missing = [i for i, v in enumerate(flat) if v is None or (isinstance(v, float) and v != v)
               or type(v).__name__ == "NAType"]
    if missing:
        raise ValueError(f"{name} contains missing labels (None or NaN), first at index "
                         f"{missing[0]}: every sample needs a label")
    kinds = {"str" if isinstance(v, str) else "number" if isinstance(v, numbers.Number)
             else type(v).__name__ for v in flat}
    if len(kinds) > 1:
        raise ValueError(f"{name} must hold labels of one kind, all strings or all numbers; "
                         f"got {', '.join(sorted(kinds))}")


def _decode_architecture(v, where):
    """``_architecture`` read from a file: (hidden_size, num_layers, bidirectional,
    return_sequences, dtype name)."""
    if not isinstance(v, list) or len(v) != 5:
        raise ModelFileError(f"{where} must be a list of 5 values, got {short(v)}")
    hidden = read_int(v[0], f"{where}[0] (hidden_size)", 1, BLAS_INT_MAX // 4)
    layers = read_int(v[1], f"{where}[1] (num_layers)", 1, BLAS_INT_MAX)
    return (hidden, layers, read_bool(v[2], f"{where}[2] (bidirectional)"),
            read_bool(v[3], f"{where}[3] (return_sequences)"),
            read_str(v[4], f"{where}[4] (dtype)", {"float32", "float64"}))


def _real_array(y):
    """``y`` as a float64 array, converting numeric object arrays."""
    arr = np.asarray(y)
    try:
        if arr.dtype.kind not in "biuf":
            if arr.dtype.kind != "O":
                raise TypeError
            arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"y must hold real numbers, got dtype {arr.dtype}") from None
    return arr.astype(np.float64)


_CLASS_WEIGHT_DOC = """    class_weight : dict, 'balanced' or None, default=None
        Weight of each class, multiplying ``sample_weight`` in the loss and in
        the validation score of ``early_stopping``: a dict ``{label:
        weight}`` (labels left out weigh 1), 'balanced' for
        ``n_samples / (n_classes * np.bincount(y))`` computed from the labels
        (and sample weights) of each ``fit``, or None (all weigh 1). It is
        scikit-learn's :func:`~sklearn.utils.class_weight.compute_class_weight`.
        With ``return_sequences`` it weighs each step by its label.
        ``partial_fit`` refuses 'balanced', as
        :class:`~sklearn.linear_model.SGDClassifier` does: one call's labels
        need not represent the whole data; pass a dict instead.
"""

_RECURRENT_DROPOUT_DOC = """    recurrent_dropout : float in [0, 1), default=0.0
        Variational dropout on the recurrent state (Keras'
        ``recurrent_dropout``, Gal & Ghahramani 2016): in training, each
        sequence, layer and direction draws one mask over the units of
        h_{t-1} where it enters the recurrent product, the same at every
        step, redrawn each batch; off in prediction. ``dropout`` acts
        between layers instead, on each layer's outputs at every step.
    proj_size : int, default=0
        With ``proj_size > 0`` (smaller than ``hidden_size``), each layer
        is an LSTM with projections, as ``torch.nn.LSTM(proj_size=...)``:
        its h_t, which the next layer and the output layer read, is a
        learned projection of ``o_t * tanh(c_t)`` to ``proj_size`` units
        (fewer weights in the recurrent and following products).
    unit_forget_bias : bool, default=False
        Start each layer with a total forget-gate bias of 1 (Keras'
        ``unit_forget_bias``; ``bias_ih``'s forget block 1, ``bias_hh``'s 0)
        instead of PyTorch's uniform draw: the cell state then carries
        information across many steps from the first batch, which can help
        tasks that need a long memory and slow those that do not (measured
        in the user guide's hyperparameters page). It sets the
        initial weights only: ``warm_start`` and ``partial_fit`` continue
        the fitted ones.
"""


class _BaseLSTMEstimator(BaseEstimator):
    """Shared training loop of LSTMClassifier and LSTMRegressor."""

    def __init__(self, hidden_size=64, num_layers=1, bidirectional=False, dropout=0.0,
                 solver="adam", learning_rate_init=0.005, momentum=0.9,
                 nesterovs_momentum=True, batch_size=32, max_iter=100, alpha=1e-4,
                 clip_norm=5.0, clip_value=None, shuffle=True, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4,
                 warm_start=False, random_state=None, verbose=0, dtype="float32",
                 return_sequences=False, n_features=None, recurrent_dropout=0.0,
                 proj_size=0, unit_forget_bias=False):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.alpha = alpha
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.shuffle = shuffle
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.return_sequences = return_sequences
        self.n_features = n_features
        self.recurrent_dropout = recurrent_dropout
        self.proj_size = proj_size
        self.unit_forget_bias = unit_forget_bias

    def __setstate__(self, state):
        # Pickled before these parameters existed: what the model was then.
        state.setdefault("recurrent_dropout", 0.0)
        state.setdefault("proj_size", 0)
        state.setdefault("unit_forget_bias", False)
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        # transform() gives the final hidden states as features.
        tags.transformer_tags = TransformerTags(preserves_dtype=[self.dtype])
        return tags

    # ------------------------------------------------------------------ saved state
    # pylstm.save writes the description {"params", "fitted", "network": {"dropout"},
    # "optimizer"} and the network's and optimizer's arrays; pylstm.load checks the
    # description (_saved_layout) before it reads an array.

    #: Fitted attributes a model file keeps: name -> field. Besides these and the
    #: hyperparameters, fit sets network_ and _optimizer (saved as arrays) and
    #: _best_state (not saved); tests/io/test_io.py checks that it sets no others.
    _saved_fitted = {
        "n_features_in_": int_field(1, BLAS_INT_MAX),
        "feature_names_in_": NAMES,
        "_input_layout": Field(str, lambda v, w: read_str(v, w, {"3d", "2d", "seq"})),
        "_n_step_features": int_field(1, BLAS_INT_MAX),
        "_dtype": DTYPE,
        "_seed": SEED,
        "_architecture": Field(
            lambda a: [int(a[0]), int(a[1]), bool(a[2]), bool(a[3]), str(a[4])],
            _decode_architecture),
        "n_iter_": COUNT,
        "t_": int_field(0, 2**63 - 1),
        "loss_curve_": FLOAT_LIST,
        "best_loss_": FLOAT,
        "_no_improvement_count": int_field(0, 2**63 - 1),
        "validation_scores_": optional(FLOAT_LIST),
        "best_validation_score_": optional(FLOAT),
    }

    def _saved_state(self):
        """The description and arrays that :func:`pylstm.save` writes."""
        check_is_fitted(self, "network_")
        return encode_trained(self, {"dropout": float(self.network_.dropout),
                                     **saved_proj_size(self.network_.layers)})

    @classmethod
    def _saved_layout(cls, description, n_arrays):
        """Check a description read by :func:`pylstm.load`; return what
        :meth:`_from_saved_state` needs and the arrays the file must hold (name to
        shape and dtype). ``n_arrays``, the arrays in the file, bounds the layers."""
        estimator, fitted, network, optimizer = decode_trained(cls, description, {"dropout"})
        dropout = decode_dropout(network["dropout"], "model.network.dropout")
        H, L, bidirectional, _, dtype = fitted["_architecture"]
        proj_size = decode_proj_size(network, H, "model.network.proj_size")
        if dtype != fitted["_dtype"].name:
            raise ModelFileError(f"model.fitted._architecture has dtype {dtype} but "
                                 f"_dtype is {fitted['_dtype'].name}")
        n_step, n_features = fitted["_n_step_features"], fitted["n_features_in_"]
        if fitted["_input_layout"] == "2d":
            if n_features % n_step:
                raise ModelFileError(
                    f"model.fitted: 2-D input has n_features_in_={n_features} "
                    f"columns, not a multiple of _n_step_features={n_step}")
        elif n_features != n_step:
            raise ModelFileError(f"model.fitted.n_features_in_={n_features} "
                                 f"differs from _n_step_features={n_step}")
        names = fitted["feature_names_in_"]
        if names is not None and (fitted["_input_layout"] != "2d" or len(names) != n_features):
            raise ModelFileError("model.fitted.feature_names_in_ must name the "
                                 "n_features_in_ columns of 2-D input")
        if (fitted["validation_scores_"] is None) != (fitted["best_validation_score_"] is None):
            raise ModelFileError("model.fitted: validation_scores_ and best_validation_score_ "
                                 "must both be null or both be set")
        if L + 1 > n_arrays:
            raise ModelFileError(f"model.fitted._architecture has {L} layers but the file "
                                 f"holds only {n_arrays} arrays")
        n_outputs = len(fitted["classes_"]) if "classes_" in fitted else fitted["n_outputs_"]
        optimizer, expected = trained_arrays(
            SequenceNetwork.saved_shapes(n_step, n_outputs, H, L, bidirectional, proj_size),
            optimizer, dtype)
        plan = {"estimator": estimator, "fitted": fitted, "dropout": dropout,
                "n_outputs": n_outputs, "optimizer": optimizer, "proj_size": proj_size}
        return plan, expected

    @classmethod
    def _from_saved_state(cls, plan, arrays):
        """The fitted estimator of :meth:`_saved_layout`'s plan, with the saved arrays."""
        est, fitted = plan["estimator"], plan["fitted"]
        for attr, value in fitted.items():
            if value is not None or attr != "feature_names_in_":
                setattr(est, attr, value)
        H, L, bidirectional, return_sequences, dtype = fitted["_architecture"]
        est.network_ = SequenceNetwork(fitted["_n_step_features"], plan["n_outputs"], H, L,
                                       bidirectional, plan["dropout"], return_sequences,
                                       np.dtype(dtype), np.random.RandomState(0),
                                       proj_size=plan["proj_size"],
                                       unit_forget_bias=bool(est.unit_forget_bias))
        est.network_.load_saved_arrays(arrays)
        est._optimizer = restore_optimizer(plan["optimizer"], est.network_.parameters(), arrays)
        est._best_state = None
        return est

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")

        def real(name, low, high, low_open=False, high_open=False, none=False):
            v = getattr(self, name)
            if none and v is None:
                return
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)
            if ok:
                ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
            if not ok:
                raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low}, "
                                 f"{high}{')' if high_open else ']'}, got {v!r}")

        for name in ("hidden_size", "num_layers", "batch_size", "max_iter", "n_iter_no_change"):
            integer(name, 1)
        real("dropout", 0, 1, high_open=True)
        real("recurrent_dropout", 0, 1, high_open=True)
        p = self.proj_size
        if (isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 0
                or p >= self.hidden_size):
            raise ValueError(f"proj_size must be an integer >= 0 and smaller than hidden_size "
                             f"({self.hidden_size}), got {p!r}")
        if not isinstance(self.unit_forget_bias, (bool, np.bool_)):
            raise ValueError(f"unit_forget_bias must be True or False, got "
                             f"{self.unit_forget_bias!r}")
        real("learning_rate_init", 0, np.inf, low_open=True, high_open=True)
        real("momentum", 0, 1)
        real("alpha", 0, np.inf, high_open=True)
        real("clip_norm", 0, np.inf, low_open=True, high_open=True, none=True)
        real("clip_value", 0, np.inf, low_open=True, high_open=True, none=True)
        real("validation_fraction", 0, 1, low_open=True, high_open=True)
        real("tol", 0, np.inf, high_open=True)
        if self.solver not in ("adam", "sgd", "rmsprop"):
            raise ValueError(f"solver must be 'adam', 'sgd' or 'rmsprop', got {self.solver!r}")
        if self.n_features is not None:
            integer("n_features", 1)
        try:
            return check_dtype(self.dtype)
        except TypeError as exc:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}") from exc

    def _validate_X(self, X, reset):
        """Return (padded X, lengths); on reset record the input's feature count."""
        dtype = check_dtype(self.dtype) if reset else self._dtype
        if isinstance(X, (list, tuple)) and len(X) == 0:
            raise ValueError("X is empty: found 0 sequences")
        check_sequence_list(X)
        if is_ragged(X):
            Xp, lengths = pad_sequences(X, dtype)
            layout = "seq"
        else:
            # Before any conversion to float, which would read numeric strings
            # and dates (as counts of their unit) as numbers.
            check_numeric(X)
            if hasattr(X, "iloc") or _ndim(X) == 2:
                fitted_2d = not reset and self._input_layout == "2d"
                if reset or fitted_2d:
                    Xp = validate_data(self, X, reset=reset, dtype=dtype,
                                       ensure_all_finite=True)
                else:
                    Xp = validate_data(self, X, reset=False, skip_check_array=True)
                    Xp = as_sequence_array(np.asarray(Xp)[:, :, None], dtype)[:, :, 0]
                if Xp.shape[1] == 0:
                    raise ValueError("X has 0 columns: sequences need at least one step")
                F = 1 if self.n_features is None else self.n_features
                if Xp.shape[1] % F:
                    raise ValueError(
                        f"2-D X has {Xp.shape[1]} columns, not a multiple of n_features={F}: "
                        "each row must hold n_timesteps * n_features values, step by step"
                    )
                Xp = np.ascontiguousarray(Xp.reshape(Xp.shape[0], Xp.shape[1] // F, F))
                layout = "2d"
            else:
                Xp = as_sequence_array(X, dtype)
                layout = "3d"
            lengths = np.full(Xp.shape[0], Xp.shape[1], dtype=np.int64)
            if Xp.shape[1] == 0:
                raise ValueError("X has sequences of length 0; every sequence needs a step")
        n_step = Xp.shape[2]
        if reset:
            self._input_layout = layout
            self._n_step_features = n_step
            if layout != "2d":
                self.n_features_in_ = n_step
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
        elif n_step != self._n_step_features:
            raise ValueError(
                f"X has {n_step} features per step, but {type(self).__name__} is expecting "
                f"{self._n_step_features} features per step as input"
            )
        return Xp, lengths

    def _validate_seq_targets(self, y, lengths, name="y"):
        """Per-step targets -> (n, T, ...) padded array aligned with X's lengths."""
        n, T = len(lengths), int(lengths.max())
        if is_ragged(y) or (isinstance(y, (list, tuple)) and len(y) and np.ndim(y[0]) >= 1):
            seqs = [np.asarray(s) for s in y]
        else:
            arr = np.asarray(y)
            if arr.ndim < 2:
                raise ValueError(
                    f"with return_sequences=True, {name} must hold one target per step: "
                    f"shape (n_samples, n_timesteps[, n_outputs]) or a list of arrays, got "
                    f"shape {arr.shape}"
                )
            seqs = list(arr)
        if len(seqs) != n:
            raise ValueError(f"{name} has {len(seqs)} sequences but X has {n}")
        trail = None
        for i, s in enumerate(seqs):
            if s.ndim not in (1, 2) or s.shape[0] != lengths[i]:
                raise ValueError(
                    f"{name}[{i}] must have one target per step of X[{i}] "
                    f"({lengths[i]} steps), got shape {s.shape}"
                )
            if trail is None:
                trail = s.shape[1:]
            elif s.shape[1:] != trail:
                raise ValueError(f"all per-step targets must have the same shape: {name}[{i}]")
        out = np.zeros((n, T) + trail, dtype=np.result_type(*[s.dtype for s in seqs]))
        for i, s in enumerate(seqs):
            out[i, : s.shape[0]] = s
        return out

    # ------------------------------------------------------------------ training
    def fit(self, X, y, sample_weight=None):
        """Train on sequences X with targets y for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps[, n_features]) or list
            Sequences (see the class docstring for the layouts).
        y : array-like
            Targets: one per sequence, or per step with ``return_sequences``.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each sequence (None: all 1). Each batch's
            loss is the weighted mean ``sum(w_i * loss_i) / sum(w_i)`` (the
            L2 penalty is divided by ``sum(w_i)`` too), as in scikit-learn's
            MLP: a weight of 0 removes the sample, an integer weight ``k``
            acts as ``k`` copies of it (exactly so when every epoch is one
            batch). With ``return_sequences`` a sequence's weight applies to
            each of its steps. The validation score of ``early_stopping`` is
            weighted too.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def _initialize(self, n_outputs, rng):
        self.network_ = SequenceNetwork(
            self._n_step_features, n_outputs, self.hidden_size, self.num_layers,
            self.bidirectional, self.dropout, self.return_sequences, self._dtype, rng,
            proj_size=self.proj_size, unit_forget_bias=bool(self.unit_forget_bias))
        self._optimizer = make_optimizer(
            self.solver, self.network_.parameters(), self.learning_rate_init,
            momentum=self.momentum, nesterovs_momentum=self.nesterovs_momentum)
        self._seed = int(rng.randint(np.iinfo(np.int32).max))
        self.loss_curve_ = []
        self.best_loss_ = np.inf
        self.n_iter_ = 0
        self.t_ = 0
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None

    #: Training bookkeeping that an interrupted epoch rolls back with the weights.
    _EPOCH_ATTRS = ("t_", "n_iter_", "loss_curve_", "best_loss_", "_no_improvement_count",
                    "validation_scores_", "best_validation_score_", "_best_state")

    def _epoch_snapshot(self):
        """What an interruption during the next epoch falls back to."""
        attrs = {}
        for name in self._EPOCH_ATTRS:
            value = getattr(self, name, None)
            attrs[name] = list(value) if isinstance(value, list) else value
        return self.network_.get_state(), self._optimizer.state_dict(), attrs

    def _roll_back(self, snapshot):
        """Back to :meth:`_epoch_snapshot`'s state (idempotent: may be run again)."""
        weights, optimizer, attrs = snapshot
        self.network_.set_state(weights)
        self._optimizer.load_state_dict(optimizer)
        self.__dict__.update(attrs)  # one call: all of them or none

    def _fit(self, X, y, incremental, classes=None, sample_weight=None):
        with model_use(self, "partial_fit" if incremental else "fit", fitting=True):
            # An error or an interrupt before the training loop leaves the
            # estimator as it was: one assignment puts every attribute back.
            before = self.__dict__.copy()
            try:
                prepared = self._prepare_fit(X, y, incremental, classes, sample_weight)
            except BaseException:
                self.__dict__ = before
                raise
            return self._train(incremental, *prepared)

    def _prepare_fit(self, X, y, incremental, classes, sample_weight):
        """Validate, encode and (re)initialize; the arrays that :meth:`_train` needs."""
        dtype = self._check_params()
        fitted = hasattr(self, "network_")
        reset = not (fitted and (incremental or self.warm_start))
        if reset:
            self._dtype = dtype
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        Xp, lengths = self._validate_X(X, reset=reset)
        Y = self._encode_targets(y, lengths, reset=reset, classes=classes,
                                 incremental=incremental)
        if len(Y) != len(Xp):
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {len(Xp)} and {len(Y)}"
            )
        # Shape (n_samples,), finite, non-negative, not all zero; float64 so
        # that the weighted means round alike whatever ``dtype``.
        sample_weight = _check_sample_weight(sample_weight, Xp, dtype=np.float64,
                                             ensure_non_negative=True)
        W, S = self._training_weights(sample_weight, Y, lengths,
                                      new_fit=reset and not incremental)
        if not W.any():
            raise ValueError("the sample weights times the class weights are all zero: "
                             "at least one sample needs a non-zero weight")
        arch = (self.hidden_size, self.num_layers, bool(self.bidirectional),
                bool(self.return_sequences), dtype.name)
        if reset:
            self._initialize(self._n_outputs(), check_random_state(self.random_state))
            self._architecture = arch
        elif arch != self._architecture:
            raise ValueError(
                "warm_start and partial_fit continue the fitted network, whose (hidden_size, "
                f"num_layers, bidirectional, return_sequences, dtype) are {self._architecture};"
                f" the parameters now ask for {arch}: refit from scratch instead"
            )
        elif self.proj_size != self.network_.layers[0].proj_size:
            raise ValueError(
                "warm_start and partial_fit continue the fitted network, whose proj_size is "
                f"{self.network_.layers[0].proj_size}; the parameters now ask for "
                f"{self.proj_size}: refit from scratch instead"
            )
        # Re-bind after unpickling by joblib, which copies arrays separately.
        self._optimizer.params = self.network_.parameters()
        # The layers draw their masks in training; a continued fit takes the
        # value set now (set_params, a loaded model).
        for layer in self.network_.layers:
            layer.recurrent_dropout = float(self.recurrent_dropout)

        X_val = len_val = Y_val = W_val = None
        if self.early_stopping and not incremental:
            (Xp, X_val, lengths, len_val, Y, Y_val, W, W_val, S, _) = self._split_validation(
                Xp, lengths, Y, W, S)
            self._check_validation_set(len(Xp) + len(X_val), len_val)
            for part, weights in (("training", W), ("validation", W_val)):
                if not weights.any():
                    raise ValueError(
                        f"early_stopping's {part} part of the data has only zero sample "
                        "weights (after class_weight): change validation_fraction or "
                        "random_state, or give those samples non-zero weights")
        self._check_memory(Xp, lengths)
        if not reset:  # last: nothing can fail after this change in place
            self._optimizer = reconfigure_optimizer(
                self._optimizer, self.solver, self.network_.parameters(),
                self.learning_rate_init, momentum=self.momentum,
                nesterovs_momentum=self.nesterovs_momentum)
        return Xp, lengths, Y, W, S, X_val, len_val, Y_val, W_val

    def _training_weights(self, sample_weight, Y, lengths, new_fit):
        """Loss weights ``W`` and penalty weights ``S`` of the training samples.

        ``W`` has shape (n_samples,), or (n_samples, n_timesteps) with
        ``return_sequences`` (0 past each sequence's end); ``S`` (n_samples,)
        is each sequence's share of the L2 penalty's divisor. Subclasses fold
        class weights into them; ``new_fit`` is True for a ``fit`` from scratch.
        """
        if not self.return_sequences:
            return sample_weight, sample_weight
        W = sample_weight[:, None] * _valid_steps(lengths, Y.shape[1])
        return W, sample_weight

    def _train(self, incremental, Xp, lengths, Y, W, S, X_val, len_val, Y_val, W_val):
        """The epochs of :meth:`fit` / :meth:`partial_fit`.

        A ``KeyboardInterrupt`` at any point of an epoch rolls the weights,
        the optimizer and the bookkeeping (``n_iter_``, ``loss_curve_``, ...)
        back to the end of the last completed epoch, with a warning; a
        ``FloatingPointError`` (non-finite loss or gradients) does the same
        and propagates. A loss that grows by :data:`pylstm._optim.DIVERGENCE_FACTOR`
        over the call's first batch is warned about once.
        """
        n_epochs = 1 if incremental else self.max_iter
        bar = EpochProgress(n_epochs) if self.verbose else None
        net = self.network_
        snapshot = None
        first_loss, diverging = None, False
        try:
            for i in range(n_epochs):
                snapshot = self._epoch_snapshot()
                epoch = self.n_iter_ + 1
                rng = np.random.RandomState([self._seed, self.n_iter_])
                total = seen = 0.0
                for idx in self._batches(lengths, rng):
                    # A batch of zero total weight has no loss to descend: it
                    # is skipped (its samples have no effect, as promised).
                    if not W[idx].any():
                        continue
                    batch_loss = self._train_batch(Xp, lengths, Y, W, S, idx, rng, epoch)
                    if first_loss is None:
                        first_loss = batch_loss
                    batch_weight = float(S[idx].sum())
                    total += batch_loss * batch_weight
                    seen += batch_weight
                self.n_iter_ = epoch
                loss = total / seen
                diverging = diverging or warn_if_diverging(loss, first_loss, epoch,
                                                           self.learning_rate_init,
                                                           stacklevel=4)
                self.loss_curve_.append(loss)
                val_score = None
                if X_val is not None:
                    val_score = self._score_padded(X_val, len_val, Y_val, W_val)
                    self.validation_scores_.append(val_score)
                stop = self._update_no_improvement(loss, val_score)
                snapshot = None  # the epoch is complete: nothing to roll back
                if bar is not None:
                    bar.update(i + 1, loss=loss,
                               validation_score=val_score)
                if stop and not incremental:
                    if self.verbose:
                        print(f"No improvement for {self.n_iter_no_change} epochs: stopping.")
                    break
            else:
                if not incremental:
                    warnings.warn(
                        f"Stochastic optimizer: maximum iterations ({self.max_iter}) reached "
                        "and the optimization hasn't converged yet.",
                        ConvergenceWarning, stacklevel=4)
        except FloatingPointError:
            if snapshot is not None:  # finite weights, as the error message says
                run_to_completion(self._roll_back, snapshot)
            raise
        except KeyboardInterrupt:
            if snapshot is not None:
                run_to_completion(self._roll_back, snapshot)
            warnings.warn(
                f"training interrupted during epoch {self.n_iter_ + 1}; the estimator keeps "
                f"the weights of the last completed epoch ({self.n_iter_}) and stays usable",
                UserWarning, stacklevel=4)
        finally:
            for layer in net.layers:
                layer.free_workspace()
            self._optimizer.clear_scratch()  # the updates' scratch
            net._cache = None
        if X_val is not None and getattr(self, "_best_state", None) is not None:
            run_to_completion(net.set_state, self._best_state)
        self._best_state = None
        return self

    def _check_memory(self, Xp, lengths):
        """Fail early if one batch's BPTT cache cannot fit in the available memory."""
        B = min(self.batch_size, len(Xp))
        T = int(np.sort(lengths)[-B:].max())
        D = 2 if self.bidirectional else 1
        H = self.hidden_size
        # Per layer and direction: gates (4H), c_t and h_{t-1} (2H), output (H).
        per_step = self.num_layers * D * 7 * H + Xp.shape[2]
        need = self._dtype.itemsize * B * T * per_step
        available = _available_memory()
        if available is not None and need > 0.8 * available:
            raise MemoryError(
                f"one training batch needs about {need / 2**30:.1f} GiB for backpropagation "
                f"through time, more than the {available / 2**30:.1f} GiB available: use a "
                "smaller batch_size, shorter sequences or fewer units, or stream the data "
                "with partial_fit"
            )

    def _split_validation(self, Xp, lengths, Y, *weights):
        """Training and validation parts of Xp, lengths, Y and each weight array."""
        stratify = None
        if isinstance(self, ClassifierMixin) and not self.return_sequences:
            stratify = Y
        n_val = max(1, int(round(self.validation_fraction * len(Xp))))
        if len(Xp) - n_val < 1:
            raise ValueError("too few samples to hold out a validation set for early_stopping")
        rs = np.random.RandomState([self._seed, 2**20])
        try:
            return train_test_split(Xp, lengths, Y, *weights, test_size=n_val,
                                    random_state=rs, stratify=stratify)
        except ValueError:
            return train_test_split(Xp, lengths, Y, *weights, test_size=n_val,
                                    random_state=rs)

    def _check_validation_set(self, n_samples, len_val):
        """Refuse a validation set that the score cannot rate (the subclass's rule)."""

    def _batches(self, lengths, rng):
        """Index arrays of mini-batches; ragged data is bucketed by length."""
        n = len(lengths)
        size = min(self.batch_size, n)
        if lengths.min() != lengths.max():
            order = np.lexsort((rng.random_sample(n) if self.shuffle else np.arange(n),
                               lengths))
        else:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches = [order[i:i + size] for i in range(0, n, size)]
        if self.shuffle and lengths.min() != lengths.max():
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _train_batch(self, Xp, lengths, Y, W, S, idx, rng, epoch):
        net = self.network_
        lb = lengths[idx]
        T = int(lb.max())
        try:
            out = net.forward(Xp[idx, :T], lb, training=True, rng=rng)
        except ValueError as exc:  # X is checked: a layer's input is the one below's output
            if "NaN" in str(exc) or "infinity" in str(exc):
                raise self._non_finite_error(epoch, np.nan) from exc
            raise
        if self.return_sequences:
            Yb, Wb = Y[idx][:, :T], W[idx][:, :T]
        else:
            Yb, Wb = Y[idx], W[idx]
        # The weighted mean over the batch: sum(w_i * loss_i) / sum(w_i).
        loss, d_out = self._loss(out, Yb, (Wb / Wb.sum()).ravel())
        if not (np.isfinite(loss) and np.isfinite(d_out).all()):
            raise self._non_finite_error(epoch, loss)
        try:
            grads = net.backward(d_out.astype(self._dtype, copy=False))
        except ValueError as exc:  # a gradient overflowed on its way down
            if "NaN" in str(exc) or "infinity" in str(exc):
                raise self._non_finite_error(epoch, loss) from exc
            raise
        if self.alpha:
            # Divided by the batch's total weight, as scikit-learn's MLP does:
            # weights then act as repetitions, penalty included.
            scale = self.alpha / S[idx].sum()
            for p, g, pen in zip(net.parameters(), grads, net.penalised(), strict=True):
                if pen:
                    loss += 0.5 * scale * sum_squares(p.reshape(-1))
                    g += scale * p
        if not np.isfinite(loss):
            raise self._non_finite_error(epoch, loss)
        max_norm = self.clip_norm if self.clip_norm else np.inf
        if self.clip_value is None:
            norm = self._optimizer.clip_and_update(grads, max_norm)
        else:
            norm = clip_grad_norm(grads, max_norm)
            if np.isfinite(norm):
                clip_grad_value(grads, self.clip_value)
                self._optimizer.update_params(grads)
        if not np.isfinite(norm):
            raise self._non_finite_error(epoch, loss)
        self.t_ += len(idx)
        return float(loss)

    @staticmethod
    def _non_finite_error(epoch, loss):
        what = f"loss became non-finite ({loss})" if not np.isfinite(loss) else (
            "gradients became non-finite")
        return FloatingPointError(
            f"the training {what} in epoch {epoch}: lower learning_rate_init, or set "
            "clip_norm / clip_value; the estimator keeps the weights of its last completed "
            "epoch"
        )

    def _update_no_improvement(self, loss, val_score):
        """MLP-style patience on the validation score, or else on the training loss."""
        if val_score is not None:
            if val_score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if val_score > self.best_validation_score_:
                self.best_validation_score_ = val_score
                self._best_state = self.network_.get_state()
        else:
            if loss > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
        self.best_loss_ = min(self.best_loss_, loss)
        return self._no_improvement_count > self.n_iter_no_change

    # ------------------------------------------------------------------ inference
    def _forward_padded(self, Xp, lengths, sequences=False):
        """Raw outputs for padded X in batches of similar length (input order kept)."""
        net = self.network_
        order = np.argsort(-lengths, kind="stable")
        pieces = []
        for i in range(0, len(order), _PREDICT_BATCH):
            idx = order[i:i + _PREDICT_BATCH]
            lb = lengths[idx]
            T = int(lb.max())
            if sequences == "features":
                res = net.features(Xp[idx, :T], lb, training=False, final_states=True)
            else:
                res = net.forward(Xp[idx, :T], lb, training=False)
            if res.ndim == 3 and res.shape[1] < Xp.shape[1]:
                res = np.concatenate(
                    [res, np.zeros((res.shape[0], Xp.shape[1] - T, res.shape[2]), res.dtype)],
                    axis=1)
            pieces.append(res)
        out = np.concatenate(pieces)
        result = np.empty_like(out)
        result[order] = out
        return result

    def _raw_output(self, X):
        check_is_fitted(self, "network_")
        Xp, lengths = self._validate_X(X, reset=False)
        return self._forward_padded(Xp, lengths), lengths, is_ragged(X)

    def _score_sequences(self, X, y, sample_weight):
        """The subclass's score over all valid steps (``return_sequences=True``).

        A sequence's weight applies to each of its steps.
        """
        check_is_fitted(self, "network_")
        Xp, lengths = self._validate_X(X, reset=False)
        Y = self._encode_targets(y, lengths, reset=False, classes=None, incremental=False)
        W = None
        if sample_weight is not None:
            if len(Y) != len(Xp):
                raise ValueError(f"X and y have inconsistent numbers of samples: {len(Xp)} "
                                 f"and {len(Y)}")
            sample_weight = _check_sample_weight(sample_weight, Xp, dtype=np.float64,
                                                 ensure_non_negative=True)
            W = sample_weight[:, None] * _valid_steps(lengths, Y.shape[1])
        return self._score_padded(Xp, lengths, Y, W)

    @staticmethod
    def _unpad(arr, lengths, ragged):
        """Per-step results: a list of arrays for ragged input, else the array."""
        if ragged:
            return [arr[i, :n] for i, n in enumerate(lengths)]
        return arr

    @inference
    def gate_activations(self, X):
        """Per-step gate activations and cell states of the fitted LSTM layers.

        For looking inside the model: what the forget, input and output gates
        do over time on given sequences.

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.

        Returns
        -------
        gates : dict of str to dict of str to ndarray
            Keys ``'l0'``, ``'l0_reverse'`` (bidirectional), ``'l1'``, ... for
            each stacked layer and direction; each value holds the arrays
            ``'input'``, ``'forget'``, ``'cell'`` (candidate), ``'output'``,
            ``'c'`` of shape (n_samples, n_timesteps, hidden_size) and ``'h'``
            of shape (n_samples, n_timesteps, proj_size or hidden_size),
            zero past each sequence's length (list input is padded to the
            longest sequence).

        Examples
        --------
        >>> from pylstm import LSTMClassifier
        >>> from pylstm.datasets import load_digits_sequences
        >>> X, y = load_digits_sequences(return_X_y=True)
        >>> clf = LSTMClassifier(hidden_size=8, max_iter=1, random_state=0).fit(X[:100], y[:100])
        >>> clf.gate_activations(X[:2])['l0']['forget'].shape
        (2, 8, 8)
        """
        check_is_fitted(self, "network_")
        Xp, lengths = self._validate_X(X, reset=False)
        result = {}
        h = Xp
        for k, layer in enumerate(self.network_.layers):
            gates = layer.gate_activations(h, lengths=lengths)
            for name, entry in gates.items():
                result[name.replace("l0", f"l{k}", 1)] = entry
            h = np.concatenate([gates[name]["h"] for name in gates], axis=2)
        return result

    def fit_transform(self, X, y, sample_weight=None):
        """Fit, then return :meth:`transform` of X.

        Parameters
        ----------
        X : array-like or list of sequences
        y : array-like
        sample_weight : array-like of shape (n_samples,), default=None
            As in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, (proj_size or hidden_size) * D)
        """
        return self.fit(X, y, sample_weight=sample_weight).transform(X)

    @inference
    def transform(self, X):
        """Final hidden-state features of each sequence.

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, (proj_size or hidden_size) * D)
            The last layer's states at each sequence's last valid step (the
            forward direction's, then the reverse direction's after reading
            the first step).
        """
        check_is_fitted(self, "network_")
        Xp, lengths = self._validate_X(X, reset=False)
        return self._forward_padded(Xp, lengths, sequences="features")

    def stream(self, n_streams=1):
        """Predict while sequences arrive: a stream that reads them a chunk of steps at a time.

        ``stream.predict(chunk)`` (and, for the classifier,
        ``stream.predict_proba(chunk)``) reads the next steps of each
        sequence and returns, for each of those steps, what :meth:`predict`
        returns for the sequence read so far; the LSTM state is kept between
        calls, and ``stream.reset()`` starts over. See
        :class:`~pylstm.LSTMStream` for the shapes, and
        :ref:`streaming` in the user guide.

        Parameters
        ----------
        n_streams : int, default=1
            Number of sequences read side by side, each with its own state.

        Returns
        -------
        stream : LSTMStream
            A new stream, at the start of its sequences.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        ValueError
            If the model is bidirectional (its reverse direction reads each
            sequence from the end: nothing can be carried forward), or
            ``n_streams < 1``.

        Examples
        --------
        >>> import numpy as np
        >>> from pylstm import LSTMRegressor
        >>> X = np.random.default_rng(0).normal(size=(50, 8, 2))
        >>> reg = LSTMRegressor(hidden_size=8, max_iter=2, random_state=0)
        >>> reg = reg.fit(X, X[:, :, 0].mean(axis=1))
        >>> stream = reg.stream()
        >>> per_step = stream.predict(X[0])   # after steps 1, 2, ..., 8 of X[0]
        >>> bool(np.allclose(per_step[-1], reg.predict(X[:1])[0], atol=1e-5))
        True
        """
        with model_use(self, "stream"):
            return LSTMStream(self, n_streams=n_streams)


class LSTMClassifier(ClassifierMixin, _BaseLSTMEstimator):
    __doc__ = """Sequence classifier: LSTM layers, then a softmax output layer.

    Trained with the cross-entropy loss by mini-batch BPTT on compiled
    kernels.
""" + _INPUT_DOC + """
    Parameters
    ----------""" + _SHARED_PARAMS_DOC + _CLASS_WEIGHT_DOC + _RECURRENT_DROPOUT_DOC + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Features per step (3-D or list input) or columns (2-D input).
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame.
    loss_curve_ : list of float
        Mean training loss of each epoch (weighted by ``sample_weight`` and
        ``class_weight``).
    best_loss_ : float
        Smallest value in ``loss_curve_``.
    validation_scores_ : list of float or None
        Held-out accuracy after each epoch, weighted as the loss is
        (``early_stopping`` only).
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_iter_ : int
        Epochs run.
    t_ : int
        Training sequences seen by the optimizer.
    network_ : SequenceNetwork
        The trained LSTM layers and output layer.

    See Also
    --------
    LSTMRegressor : The regression counterpart.

    Examples
    --------
    >>> from pylstm import LSTMClassifier
    >>> from pylstm.datasets import load_digits_sequences
    >>> X, y = load_digits_sequences(return_X_y=True)
    >>> clf = LSTMClassifier(hidden_size=32, max_iter=5, random_state=0).fit(X[:500], y[:500])
    >>> clf.predict(X[:3]).shape
    (3,)
    """

    # scikit-learn reads the parameters from this signature: the shared ones,
    # then class_weight (last, so that positional arguments keep their place).
    def __init__(self, hidden_size=64, num_layers=1, bidirectional=False, dropout=0.0,
                 solver="adam", learning_rate_init=0.005, momentum=0.9,
                 nesterovs_momentum=True, batch_size=32, max_iter=100, alpha=1e-4,
                 clip_norm=5.0, clip_value=None, shuffle=True, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4,
                 warm_start=False, random_state=None, verbose=0, dtype="float32",
                 return_sequences=False, n_features=None, class_weight=None,
                 recurrent_dropout=0.0, proj_size=0, unit_forget_bias=False):
        super().__init__(
            hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
            dropout=dropout, solver=solver, learning_rate_init=learning_rate_init,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            batch_size=batch_size, max_iter=max_iter, alpha=alpha, clip_norm=clip_norm,
            clip_value=clip_value, shuffle=shuffle, early_stopping=early_stopping,
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            tol=tol, warm_start=warm_start, random_state=random_state, verbose=verbose,
            dtype=dtype, return_sequences=return_sequences, n_features=n_features,
            recurrent_dropout=recurrent_dropout, proj_size=proj_size,
            unit_forget_bias=unit_forget_bias)
        self.class_weight = class_weight

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags

    _saved_fitted = {**_BaseLSTMEstimator._saved_fitted, "classes_": CLASSES}

    def _check_params(self):
        dtype = super()._check_params()
        cw = self.class_weight
        if cw is None or (isinstance(cw, str) and cw == "balanced"):
            return dtype
        if not isinstance(cw, dict):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict of class "
                             f"label to weight, got {cw!r}")
        for label, weight in cw.items():
            if (isinstance(weight, bool) or not isinstance(weight, numbers.Real)
                    or not np.isfinite(weight) or weight < 0):
                raise ValueError(f"class_weight[{label!r}] must be a finite number >= 0, "
                                 f"got {weight!r}")
        return dtype

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Run one epoch over (X, y), continuing from the current state.

        Optimizer settings changed since the last call apply as described
        under ``warm_start``.

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.
        y : array-like
            Targets.
        classes : array-like of shape (n_classes,), default=None
            Every class of the whole data; required on the first call.
        sample_weight : array-like of shape (n_samples,), default=None
            As in :meth:`fit`; multiplied by ``class_weight`` (a dict or None:
            'balanced' is refused here).

        Returns
        -------
        self : object
        """
        if isinstance(self.class_weight, str) and self.class_weight == "balanced":
            # One call's labels need not represent the whole data (SGDClassifier's rule).
            raise ValueError(
                "class_weight='balanced' is not supported by partial_fit: compute the "
                "weights from the labels of the whole data (or a large sample of them) "
                "with sklearn.utils.class_weight.compute_class_weight('balanced', "
                "classes=classes, y=y) and pass them as a dict class_weight")
        if not hasattr(self, "network_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if classes is not None:
            _check_labels(classes, "classes")
        if hasattr(self, "network_") and classes is not None and not np.array_equal(
                np.unique(classes), self.classes_):
            raise ValueError(
                f"classes={list(np.unique(classes))} differs from the classes of the first "
                f"call to partial_fit, {list(self.classes_)}"
            )
        return self._fit(X, y, incremental=True, classes=classes,
                         sample_weight=sample_weight)

    def _training_weights(self, sample_weight, Y, lengths, new_fit):
        """Sample weights times class weights (per step with ``return_sequences``)."""
        if self.return_sequences:
            mask = _valid_steps(lengths, Y.shape[1])
            codes = Y[mask]
            step_weight = np.broadcast_to(sample_weight[:, None], mask.shape)[mask]
        else:
            codes, step_weight = Y, sample_weight
        class_weight = self._class_weights(codes, step_weight)
        if new_fit:
            present = np.unique(codes[step_weight * class_weight[codes] > 0])
            if len(present) == 1:  # none at all: _prepare_fit's error
                # Zero weights remove samples: fit refuses one class, weighted or not.
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes with "
                    "non-zero weight (sample_weight times class_weight), but only class "
                    f"{self.classes_[present].tolist()} has any")
        if not self.return_sequences:
            W = sample_weight * class_weight[Y]
            return W, W
        W = np.zeros(mask.shape)
        W[mask] = step_weight * class_weight[codes]
        return W, sample_weight

    def _class_weights(self, codes, weight):
        """``class_weight`` as one weight per class of ``classes_``.

        'balanced' counts the samples (steps) of non-zero weight only, weighted,
        so that zero weights act as removed samples here too.
        """
        cw = self.class_weight
        if cw is None:  # ones: scikit-learn's checks would cost a partial_fit's batch
            return np.ones(len(self.classes_))
        if not (isinstance(cw, str) and cw == "balanced"):
            return compute_class_weight(cw, classes=self.classes_,
                                        y=self.classes_[codes]).astype(np.float64)
        keep = weight > 0
        present = np.unique(codes[keep])
        out = np.ones(len(self.classes_))
        out[present] = compute_class_weight("balanced", classes=present, y=codes[keep],
                                            sample_weight=weight[keep])
        return out

    def _encode_targets(self, y, lengths, reset, classes, incremental):
        if self.return_sequences:
            Y = self._validate_seq_targets(y, lengths)
            mask = _valid_steps(lengths, Y.shape[1])
            flat = Y[mask]
        else:
            if isinstance(y, (list, tuple)) and len(y) and np.ndim(y[0]) >= 1:
                raise ValueError("y must have one label per sequence (1-D); for per-step "
                                 "labels set return_sequences=True")
            flat = column_or_1d(y, warn=True)
        if flat.dtype.kind == "f" and not np.isfinite(flat).all():
            raise ValueError("Input y contains NaN or infinity.")
        _check_labels(flat)
        check_classification_targets(flat)
        if reset:
            encoder = LabelEncoder()
            encoder.fit(classes if classes is not None else flat)
            self.classes_ = encoder.classes_
            if len(self.classes_) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes in the data,"
                    f" but the data contain only one class: {self.classes_[0]!r}"
                )
        unseen = np.setdiff1d(flat, self.classes_)
        if len(unseen):
            raise ValueError(
                f"y contains labels not seen in classes_ {list(self.classes_)}: "
                f"{list(unseen[:5])}"
            )
        codes = np.searchsorted(self.classes_, flat)
        if self.return_sequences:
            out = np.zeros(mask.shape, dtype=np.int64)
            out[mask] = codes
            return out
        return codes

    def _n_outputs(self):
        return len(self.classes_)

    def _loss(self, out, Y, weight):
        """Loss and its gradient; ``weight`` (one per row or step) sums to 1."""
        if self.return_sequences:
            flat = out.reshape(-1, out.shape[2])
            loss, dz = softmax_cross_entropy(flat, Y.ravel(), weight)
            return loss, dz.reshape(out.shape)
        return softmax_cross_entropy(out, Y, weight)

    def _score_padded(self, Xp, lengths, Y, W=None):
        pred = self._forward_padded(Xp, lengths).argmax(axis=-1)
        if self.return_sequences:
            mask = _valid_steps(lengths, Y.shape[1])
            pred, Y, W = pred[mask], Y[mask], None if W is None else W[mask]
        return float(accuracy_score(Y, pred, sample_weight=W))

    @inference
    def predict_log_proba(self, X):
        """Log-probabilities of the classes.

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            With ``return_sequences``: (n_samples, n_timesteps, n_classes), or a
            list of (T_i, n_classes) arrays for list input.
        """
        out, lengths, ragged = self._raw_output(X)
        logp = log_softmax(out.astype(np.float64))
        return self._unpad(logp, lengths, ragged) if self.return_sequences else logp

    @inference
    def predict_proba(self, X):
        """Class probabilities (same shapes as :meth:`predict_log_proba`).

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.

        Returns
        -------
        ndarray or list of ndarrays
        """
        out, lengths, ragged = self._raw_output(X)
        proba = np.exp(log_softmax(out.astype(np.float64)))
        return self._unpad(proba, lengths, ragged) if self.return_sequences else proba

    @inference
    def predict(self, X):
        """Predicted class of each sequence (or of each valid step).

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples,)
            With ``return_sequences``: (n_samples, n_timesteps) or a list of
            (T_i,) arrays.
        """
        out, lengths, ragged = self._raw_output(X)
        labels = self.classes_[out.argmax(axis=-1)]
        return self._unpad(labels, lengths, ragged) if self.return_sequences else labels

    @inference
    def score(self, X, y, sample_weight=None):
        """Mean accuracy (over all valid steps with ``return_sequences``).

        Parameters
        ----------
        X : array-like or list of sequences
        y : array-like
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sequence (with ``return_sequences``, of each of its
            steps).

        Returns
        -------
        float
        """
        if not self.return_sequences:
            return accuracy_score(y, self.predict(X), sample_weight=sample_weight)
        return self._score_sequences(X, y, sample_weight)


class LSTMRegressor(RegressorMixin, _BaseLSTMEstimator):
    __doc__ = """Sequence regressor: LSTM layers, then a linear output layer.

    Trained with the squared error by mini-batch BPTT on compiled kernels; y
    of shape (n_samples,) or (n_samples, n_outputs), or per-step targets with
    ``return_sequences``.
""" + _INPUT_DOC + """
    Parameters
    ----------""" + _SHARED_PARAMS_DOC + _RECURRENT_DROPOUT_DOC + """
    Attributes
    ----------
    n_features_in_ : int
        Features per step (3-D or list input) or columns (2-D input).
    feature_names_in_ : ndarray of str
        Column names, when fitted on a DataFrame.
    n_outputs_ : int
        Number of regression targets.
    loss_curve_ : list of float
        Mean training loss (half the squared error) of each epoch (weighted
        by ``sample_weight``).
    best_loss_ : float
        Smallest value in ``loss_curve_``.
    validation_scores_ : list of float or None
        Held-out R^2 after each epoch, weighted by ``sample_weight``
        (``early_stopping`` only).
    best_validation_score_ : float or None
        Best of ``validation_scores_``.
    n_iter_ : int
        Epochs run.
    t_ : int
        Training sequences seen by the optimizer.
    network_ : SequenceNetwork
        The trained LSTM layers and output layer.

    See Also
    --------
    LSTMClassifier : The classification counterpart.

    Examples
    --------
    >>> from pylstm import LSTMRegressor
    >>> from pylstm.datasets import make_adding_problem
    >>> X, y = make_adding_problem(200, 10, random_state=0)
    >>> reg = LSTMRegressor(hidden_size=16, max_iter=3, random_state=0).fit(X, y)
    >>> reg.predict(X[:4]).shape
    (4,)
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    _saved_fitted = {**_BaseLSTMEstimator._saved_fitted,
                     "n_outputs_": int_field(1, BLAS_INT_MAX), "_y_squeeze": BOOL}

    def partial_fit(self, X, y, sample_weight=None):
        """Run one epoch over (X, y), continuing from the current state.

        Optimizer settings changed since the last call apply as described
        under ``warm_start``.

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.
        y : array-like
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            As in :meth:`fit`.

        Returns
        -------
        self : object
        """
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _encode_targets(self, y, lengths, reset, classes, incremental):
        if self.return_sequences:
            Y = self._validate_seq_targets(y, lengths)
            Y = _real_array(Y)
            squeeze = Y.ndim == 2
            if squeeze:
                Y = Y[:, :, None]
        else:
            Y = _real_array(y)
            if Y.ndim not in (1, 2):
                raise ValueError(f"y must have shape (n_samples,) or (n_samples, n_outputs), "
                                 f"got {Y.shape}")
            squeeze = Y.ndim == 1
            if squeeze:
                Y = Y[:, None]
        if not np.isfinite(Y).all():
            raise ValueError("Input y contains NaN or infinity.")
        if Y.shape[-1] == 0:
            raise ValueError(f"y has 0 outputs (shape {np.shape(y)}): every sample (or step) "
                             "needs at least one target")
        if reset:
            self._y_squeeze = squeeze
            self.n_outputs_ = Y.shape[-1]
        elif Y.shape[-1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[-1]} outputs but the model was fitted with "
                             f"{self.n_outputs_}")
        return Y

    def _n_outputs(self):
        return self.n_outputs_

    def _check_validation_set(self, n_samples, len_val):
        # R^2 of fewer than 2 values is NaN: every epoch would score NaN, none
        # would count as an improvement, and early stopping would never stop.
        n_scored = int(len_val.sum()) if self.return_sequences else len(len_val)
        if n_scored < 2:
            what = "step" if self.return_sequences else "sample"
            raise ValueError(
                f"early_stopping holds out {len(len_val)} of {n_samples} samples "
                f"(validation_fraction={self.validation_fraction}), {n_scored} {what} to score, "
                "and R^2 needs at least 2: raise validation_fraction or pass more samples"
            )

    def _loss(self, out, Y, weight):
        """Loss and its gradient; ``weight`` (one per row or step) sums to 1."""
        if self.return_sequences:
            loss, dz = squared_error(out.reshape(-1, out.shape[2]),
                                     Y.reshape(-1, Y.shape[2]), weight)
            return loss, dz.reshape(out.shape)
        return squared_error(out, Y, weight)

    def _score_padded(self, Xp, lengths, Y, W=None):
        pred = self._forward_padded(Xp, lengths)
        if self.return_sequences:
            mask = _valid_steps(lengths, Y.shape[1])
            pred, Y, W = pred[mask], Y[mask], None if W is None else W[mask]
        return float(r2_score(Y, pred, sample_weight=W))

    @inference
    def predict(self, X):
        """Predicted targets.

        Parameters
        ----------
        X : array-like or list of sequences
            As in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            float64 whatever ``dtype`` (targets are float64, as in
            scikit-learn's regressors). With ``return_sequences``:
            (n_samples, n_timesteps[, n_outputs]) or a list of per-sequence
            arrays.
        """
        out, lengths, ragged = self._raw_output(X)
        out = out.astype(np.float64, copy=False)
        if self._y_squeeze:
            out = out[..., 0]
        return self._unpad(out, lengths, ragged) if self.return_sequences else out

    @inference
    def score(self, X, y, sample_weight=None):
        """Coefficient of determination R^2 (over all valid steps with ``return_sequences``).

        Parameters
        ----------
        X : array-like or list of sequences
        y : array-like
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sequence (with ``return_sequences``, of each of its
            steps).

        Returns
        -------
        float
        """
        if not self.return_sequences:
            return r2_score(y, self.predict(X), sample_weight=sample_weight)
        return self._score_sequences(X, y, sample_weight)
