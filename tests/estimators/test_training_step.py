"""The planned training step (pylstm._training_step): the general path's bits."""

import pickle
import warnings

import numpy as np
import pytest

from pylstm import LSTMClassifier, LSTMLanguageModel, LSTMRegressor
from pylstm._network import SequenceNetwork
from pylstm._training_step import DenseTrainingSteps
from pylstm.datasets import make_adding_problem

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture
def count_steps(monkeypatch):
    """Calls of DenseTrainingSteps.forward, counted."""
    calls = {"n": 0}
    original = DenseTrainingSteps.forward

    def counted(self, X, *args, **kwargs):
        calls["n"] += 1
        return original(self, X, *args, **kwargs)

    monkeypatch.setattr(DenseTrainingSteps, "forward", counted)
    return calls


def _fit(Est, X, y, planned, monkeypatch, **params):
    """A fit with the planned step where it applies (``planned``) or nowhere."""
    with monkeypatch.context() as m:
        if not planned:
            m.setattr(DenseTrainingSteps, "applies", staticmethod(lambda layer: False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a diverging case, alike
            return Est(max_iter=2, random_state=0, **params).fit(X, y)


def _assert_same_fit(a, b):
    assert a.loss_curve_ == b.loss_curve_
    for p, q in zip(a.network_.parameters(), b.network_.parameters(), strict=True):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("hidden", "batch"), [(5, 7), (16, 32), (64, 64), (32, 300)])
def test_regressor_fits_bit_for_bit_as_the_general_path(dtype, hidden, batch, monkeypatch,
                                                        count_steps):
    # Batch sizes that leave a shorter last batch, one small enough for one BLAS thread
    # and one large enough for the per-step products to go through BLAS.
    X, y = make_adding_problem(600, 20, random_state=0)
    X = X.astype(dtype)
    params = dict(hidden_size=hidden, batch_size=batch, dtype=dtype, clip_norm=1.0)
    planned = _fit(LSTMRegressor, X, y, True, monkeypatch, **params)
    assert count_steps["n"] == 2 * -(-600 // batch)  # every batch took the planned step
    _assert_same_fit(planned, _fit(LSTMRegressor, X, y, False, monkeypatch, **params))


@pytest.mark.parametrize("params", [
    {"alpha": 1e-3, "dtype": "float64"},
    {"unit_forget_bias": True, "clip_value": 0.01},
    {"class_weight": "balanced", "learning_rate_init": 0.05},
])
def test_classifier_fits_bit_for_bit_as_the_general_path(params, monkeypatch, count_steps):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(130, 9, 3))
    y = rng.integers(0, 3, size=130)
    planned = _fit(LSTMClassifier, X, y, True, monkeypatch, hidden_size=12, batch_size=32,
                   **params)
    assert count_steps["n"] > 0
    _assert_same_fit(planned, _fit(LSTMClassifier, X, y, False, monkeypatch, hidden_size=12,
                                   batch_size=32, **params))


def test_ragged_batches_take_the_general_path_and_dense_ones_the_planned(monkeypatch,
                                                                        count_steps):
    # Lengths 3 and 5: batches of one length take the planned step, the mixed batch not.
    rng = np.random.default_rng(1)
    X = [rng.normal(size=(3 if i < 40 else 5, 2)) for i in range(80)]
    y = rng.normal(size=80)
    planned = _fit(LSTMRegressor, X, y, True, monkeypatch, hidden_size=6, batch_size=16,
                   shuffle=False)
    assert count_steps["n"] == 2 * 4
    _assert_same_fit(planned, _fit(LSTMRegressor, X, y, False, monkeypatch, hidden_size=6,
                                   batch_size=16, shuffle=False))


@pytest.mark.parametrize("params", [
    {"num_layers": 2, "dropout": 0.3}, {"num_layers": 3, "dtype": "float64"},
    {"return_sequences": True}, {"return_sequences": True, "num_layers": 2},
])
def test_stacks_and_sequence_outputs_fit_bit_for_bit_as_the_general_path(
        params, monkeypatch, count_steps):
    # Dropout between the layers draws its masks from the fit's generator alike.
    rng = np.random.default_rng(2)
    X = rng.normal(size=(70, 5, 2))
    y = rng.normal(size=(70, 5, 1)) if params.get("return_sequences") else rng.normal(size=70)
    planned = _fit(LSTMRegressor, X, y, True, monkeypatch, hidden_size=6, batch_size=16,
                   **params)
    assert count_steps["n"] == 2 * 5 * params.get("num_layers", 1)
    _assert_same_fit(planned, _fit(LSTMRegressor, X, y, False, monkeypatch, hidden_size=6,
                                   batch_size=16, **params))


@pytest.mark.parametrize("params", [
    {"bidirectional": True}, {"proj_size": 3}, {"recurrent_dropout": 0.2},
    {"num_layers": 2, "recurrent_dropout": 0.2},
])
def test_other_networks_take_the_general_path(params, count_steps):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 5, 2))
    y = rng.normal(size=40)
    LSTMRegressor(hidden_size=6, max_iter=1, random_state=0, **params).fit(X, y)
    assert count_steps["n"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_network_forward_and_backward_match_the_general_path(dtype, monkeypatch):
    """Two steps in a row at the network's level: outputs and every gradient."""
    def steps(planned):
        net = SequenceNetwork(3, 2, 8, 1, False, 0.0, False, dtype, np.random.RandomState(0))
        with monkeypatch.context() as m:
            if not planned:
                m.setattr(DenseTrainingSteps, "applies", staticmethod(lambda layer: False))
            results = []
            for seed in (0, 1):
                data = np.random.default_rng(seed)
                X = data.normal(size=(5, 4, 3)).astype(dtype)
                out = net.forward(X, np.full(5, 4), training=True).copy()
                grads = net.backward(data.normal(size=(5, 2)).astype(dtype))
                results.append((out, [g.copy() for g in grads]))
                for p, g in zip(net.parameters(), grads, strict=True):
                    p -= 0.1 * g  # the next step sees new weights
        return results

    for (out_a, grads_a), (out_b, grads_b) in zip(steps(True), steps(False), strict=True):
        np.testing.assert_array_equal(out_a, out_b)
        for a, b in zip(grads_a, grads_b, strict=True):
            np.testing.assert_array_equal(a, b)


def test_non_finite_input_is_refused_before_the_kernels():
    net = SequenceNetwork(2, 1, 4, 1, False, 0.0, False, np.float32, np.random.RandomState(0))
    X = np.ones((3, 4, 2), np.float32)
    X[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        net.forward(X, np.full(3, 4), training=True)


def test_backward_needs_a_forward():
    layer = SequenceNetwork(2, 1, 4, 1, False, 0.0, False, np.float32,
                            np.random.RandomState(0)).layers[0]
    with pytest.raises(RuntimeError, match="preceding forward"):
        DenseTrainingSteps(layer).backward(np.zeros((3, 4), np.float32))


def test_a_fit_keeps_no_plan_and_pickles_without_one():
    X, y = make_adding_problem(50, 6, random_state=0)
    est = LSTMRegressor(hidden_size=4, max_iter=1, random_state=0).fit(X, y)
    layer = est.network_.layers[0]
    assert "_dense_steps" not in layer.__dict__  # freed with the workspace
    layer._dense_steps = DenseTrainingSteps(layer)  # as during a fit
    assert "_dense_steps" not in pickle.loads(pickle.dumps(layer)).__dict__
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).predict(X), est.predict(X))


@pytest.mark.parametrize(("dtype", "hidden", "batch", "layers"), [
    ("float32", 8, 4, 1), ("float64", 8, 4, 1), ("float32", 24, 16, 1),
    ("float64", 24, 16, 1), ("float32", 12, 8, 2), ("float64", 12, 8, 3)])
def test_language_model_fits_bit_for_bit_as_the_general_path(dtype, hidden, batch, layers,
                                                             monkeypatch, count_steps):
    # Stateful windows: each batch starts from the state the last one left; stacks
    # with dropout between their layers.
    text = "the quick brown fox jumps over the lazy dog, said the cat. " * 12

    def fit(planned):
        with monkeypatch.context() as m:
            if not planned:
                m.setattr(DenseTrainingSteps, "applies", staticmethod(lambda layer: False))
            return LSTMLanguageModel(hidden_size=hidden, embedding_dim=5, seq_len=9,
                                     batch_size=batch, num_layers=layers,
                                     dropout=0.2 if layers > 1 else 0.0, max_iter=2,
                                     clip_norm=1.0, random_state=0, dtype=dtype).fit(text)

    planned = fit(True)
    assert count_steps["n"] > 0
    general = fit(False)
    assert planned.loss_curve_ == general.loss_curve_
    for p, q in zip(planned.network_.parameters(), general.network_.parameters(), strict=True):
        np.testing.assert_array_equal(p, q)


def test_many_batch_shapes_share_the_buffers(monkeypatch, count_steps):
    # Six lengths, each a multiple of the batch size: every batch is dense, of one of
    # six shapes, in shuffled order; the plans share their large arrays.
    rng = np.random.default_rng(4)
    lengths = np.repeat([2, 3, 5, 7, 8, 11], 16)
    X = [rng.normal(size=(n, 2)) for n in lengths]
    y = rng.normal(size=len(X))
    planned = _fit(LSTMRegressor, X, y, True, monkeypatch, hidden_size=5, batch_size=8)
    assert count_steps["n"] == 2 * 12
    _assert_same_fit(planned, _fit(LSTMRegressor, X, y, False, monkeypatch, hidden_size=5,
                                   batch_size=8))
    steps = DenseTrainingSteps(planned.network_.layers[0])
    shapes = [(8, n) for n in (11, 2, 3, 5, 7, 8)]  # the largest first: nothing grows later
    for B, T in shapes:
        steps.forward(np.zeros((B, T, 2), np.float32))
        steps.backward(d_h=np.ones((B, 5), np.float32))
    assert len(steps._plans) == len(shapes)
    gates = steps._buffers["gates"]
    for plan in steps._plans.values():  # the gradients' two arrays too
        assert np.shares_memory(plan.gates, gates)
        assert all(np.shares_memory(w, steps._buffers[f"grad_work{k}"])
                   for k, w in enumerate(plan.grad_work))
    steps.forward(np.zeros((8, 12, 2), np.float32))  # larger: a new buffer, old plans dropped
    assert len(steps._plans) == 1 and steps._buffers["gates"] is not gates


def test_gradients_stay_valid_until_the_next_backward():
    # A caller may keep a step's gradients while it runs forwards (a finite-difference
    # check does): the forward's scratch is not their array.
    net = SequenceNetwork(2, 1, 4, 2, False, 0.0, False, np.float64, np.random.RandomState(0))
    X = np.random.default_rng(5).normal(size=(3, 4, 2))
    net.forward(X, np.full(3, 4), training=True)
    grads = net.backward(np.ones((3, 1)))
    kept = [g.copy() for g in grads]
    for _ in range(2):
        net.forward(X + 1.0, np.full(3, 4), training=True)
    for g, k in zip(grads, kept, strict=True):
        np.testing.assert_array_equal(g, k)
    # Also through forwards of other batch shapes, whose plans share the gradients' arrays.
    for B, T in ((5, 4), (3, 7), (2, 2)):
        net.forward(np.ones((B, T, 2)), np.full(B, T), training=True)
    for g, k in zip(grads, kept, strict=True):
        np.testing.assert_array_equal(g, k)
    # The next backward may reuse them: the one before it is the one kept.
    grads2 = net.backward(np.ones((2, 1)))
    assert not any(np.shares_memory(a, b) for a, b in zip(grads[:4], grads2[:4], strict=True))
