"""Tests for pylstm._optim: optimizers and gradient clipping."""

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pylstm._arrays import ADAM_SPLIT_MIN, adam_update, adam_update_many

import pylstm._optim as optim_module
from pylstm._optim import (
    AdamOptimizer,
    RMSpropOptimizer,
    SGDOptimizer,
    clip_grad_norm,
    clip_grad_value,
    make_optimizer,
)
from pylstm._threads import loop_threads

SHAPES = [(3, 4), (4,), (2, 3, 2)]
N_STEPS = 7


def _random_params(rng, dtype=np.float64):
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _random_grad_sequence(rng, n_steps=N_STEPS, dtype=np.float64):
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(n_steps)]


def _global_norm(arrays):
    return math.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays))


def _build(name, params, **kwargs):
    classes = {"sgd": SGDOptimizer, "adam": AdamOptimizer, "rmsprop": RMSpropOptimizer}
    return classes[name](params, **kwargs)


ALL_CONFIGS = [
    ("sgd", {"learning_rate_init": 0.05, "momentum": 0.0}),
    ("sgd", {"learning_rate_init": 0.05, "momentum": 0.9}),
    ("sgd", {"learning_rate_init": 0.05, "momentum": 0.9, "nesterov": True}),
    ("adam", {"learning_rate_init": 0.01}),
    ("rmsprop", {"learning_rate_init": 0.01, "rho": 0.95}),
]
CONFIG_IDS = ["sgd", "sgd-momentum", "sgd-nesterov", "adam", "rmsprop"]


# ---------------------------------------------------------------------------
# Hand-written references
# ---------------------------------------------------------------------------


def test_sgd_without_momentum_is_plain_gradient_descent():
    rng = np.random.default_rng(0)
    params = _random_params(rng)
    expected = [p.copy() for p in params]
    lr = 0.03
    opt = SGDOptimizer(params, learning_rate_init=lr, momentum=0.0)
    for grads in _random_grad_sequence(rng):
        opt.update_params(grads)
        for e, g in zip(expected, grads, strict=True):
            e -= lr * g
        for p, e in zip(params, expected, strict=True):
            np.testing.assert_array_equal(p, e)
    assert opt.t == N_STEPS


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_sgd_momentum_matches_reference(momentum, nesterov):
    # Reference in the other common formulation (scikit-learn, Sutskever et al.):
    # v = mu * v - lr * g; p += v  (Nesterov: p += mu * v - lr * g).
    rng = np.random.default_rng(1)
    params = _random_params(rng)
    ref = [p.copy() for p in params]
    vel = [np.zeros_like(p) for p in params]
    lr = 0.1
    opt = SGDOptimizer(params, learning_rate_init=lr, momentum=momentum, nesterov=nesterov)
    for grads in _random_grad_sequence(rng):
        opt.update_params(grads)
        for i, g in enumerate(grads):
            vel[i] = momentum * vel[i] - lr * g
            if nesterov:
                ref[i] = ref[i] + momentum * vel[i] - lr * g
            else:
                ref[i] = ref[i] + vel[i]
        for p, r in zip(params, ref, strict=True):
            np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-14)


def test_nesterov_differs_from_plain_momentum():
    rng = np.random.default_rng(2)
    p1 = _random_params(rng)
    p2 = [p.copy() for p in p1]
    o1 = SGDOptimizer(p1, learning_rate_init=0.1, momentum=0.9, nesterov=False)
    o2 = SGDOptimizer(p2, learning_rate_init=0.1, momentum=0.9, nesterov=True)
    for grads in _random_grad_sequence(rng, 3):
        o1.update_params(grads)
        o2.update_params(grads)
    assert not np.allclose(p1[0], p2[0])


@pytest.mark.parametrize(
    ("lr", "beta_1", "beta_2", "epsilon"),
    [(0.001, 0.9, 0.999, 1e-8), (0.05, 0.8, 0.99, 1e-6), (0.1, 0.0, 0.5, 1e-3)],
)
def test_adam_matches_paper_reference(lr, beta_1, beta_2, epsilon):
    # Algorithm 1 of Kingma and Ba (2015), written out directly.
    rng = np.random.default_rng(3)
    params = _random_params(rng)
    ref = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    opt = AdamOptimizer(
        params, learning_rate_init=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon
    )
    for t, grads in enumerate(_random_grad_sequence(rng, 10), start=1):
        opt.update_params(grads)
        for i, g in enumerate(grads):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            m_hat = m[i] / (1 - beta_1**t)
            v_hat = v[i] / (1 - beta_2**t)
            ref[i] = ref[i] - lr * m_hat / (np.sqrt(v_hat) + epsilon)
        assert opt.t == t
        for p, r in zip(params, ref, strict=True):
            np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-14)


def test_adam_first_step_has_size_lr():
    # With bias correction the first step is lr * g / (|g| + eps), whatever the betas.
    w = np.array([1.0, 2.0, -3.0])
    g = np.array([10.0, -0.01, 1e3])
    AdamOptimizer([w], learning_rate_init=0.1, beta_1=0.5, beta_2=0.9).update_params([g])
    np.testing.assert_allclose(w, [0.9, 2.1, -3.1], rtol=1e-6)


def test_rmsprop_matches_reference():
    rng = np.random.default_rng(4)
    params = _random_params(rng)
    ref = [p.copy() for p in params]
    sq = [np.zeros_like(p) for p in params]
    lr, rho, eps = 0.01, 0.8, 1e-6
    opt = RMSpropOptimizer(params, learning_rate_init=lr, rho=rho, epsilon=eps)
    for grads in _random_grad_sequence(rng):
        opt.update_params(grads)
        for i, g in enumerate(grads):
            sq[i] = rho * sq[i] + (1 - rho) * g**2
            ref[i] = ref[i] - lr * g / (np.sqrt(sq[i]) + eps)
        for p, r in zip(params, ref, strict=True):
            np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-14)


def test_learning_rate_attribute_is_used():
    # Schedules change opt.learning_rate between updates.
    w = np.array([1.0])
    opt = SGDOptimizer([w], learning_rate_init=0.1, momentum=0.0)
    opt.learning_rate = 0.5
    opt.update_params([np.array([1.0])])
    np.testing.assert_allclose(w, [0.5])
    assert opt.learning_rate_init == 0.1


# ---------------------------------------------------------------------------
# Comparison with torch.optim
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ours_kwargs", "torch_cls", "torch_kwargs"),
    [
        (
            "adam",
            {"learning_rate_init": 0.01, "beta_1": 0.85, "beta_2": 0.995, "epsilon": 1e-7},
            "Adam",
            {"lr": 0.01, "betas": (0.85, 0.995), "eps": 1e-7},
        ),
        (
            "sgd",
            {"learning_rate_init": 0.05, "momentum": 0.9, "nesterov": True},
            "SGD",
            {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        ),
        (
            "sgd",
            {"learning_rate_init": 0.05, "momentum": 0.7, "nesterov": False},
            "SGD",
            {"lr": 0.05, "momentum": 0.7},
        ),
        (
            "rmsprop",
            {"learning_rate_init": 0.01, "rho": 0.9, "epsilon": 1e-6},
            "RMSprop",
            {"lr": 0.01, "alpha": 0.9, "eps": 1e-6},
        ),
    ],
    ids=["adam", "sgd-nesterov", "sgd-momentum", "rmsprop"],
)
def test_matches_torch_optim(name, ours_kwargs, torch_cls, torch_kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    params = _random_params(rng)
    t_params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    ours = _build(name, params, **ours_kwargs)
    theirs = getattr(torch.optim, torch_cls)(t_params, **torch_kwargs)
    for grads in _random_grad_sequence(rng, 12):
        ours.update_params(grads)
        for tp, g in zip(t_params, grads, strict=True):
            tp.grad = torch.from_numpy(g.copy())
        theirs.step()
    for p, tp in zip(params, t_params, strict=True):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# dtype, in-place behaviour, validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), ALL_CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("grad_dtype", [np.float32, np.float64])
def test_float32_params_stay_float32(name, kwargs, grad_dtype):
    rng = np.random.default_rng(6)
    params = _random_params(rng, np.float32)
    ids = [id(p) for p in params]
    ref = [p.astype(np.float64) for p in params]
    ref_opt = _build(name, ref, **kwargs)
    opt = _build(name, params, **kwargs)
    for grads in _random_grad_sequence(rng, 5, np.float32):
        opt.update_params([g.astype(grad_dtype) for g in grads])
        ref_opt.update_params([g.astype(np.float64) for g in grads])
    assert [id(p) for p in opt.params] == ids
    assert all(p.dtype == np.float32 for p in params)
    state = opt.state_dict()
    for key, value in state.items():
        if isinstance(value, list):
            assert all(a.dtype == np.float32 for a in value), key
    # Same trajectory as in float64, up to float32 rounding.
    for p, r in zip(params, ref, strict=True):
        np.testing.assert_allclose(p, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs"), ALL_CONFIGS, ids=CONFIG_IDS)
def test_params_updated_in_place(name, kwargs):
    # A view of a bigger buffer (the layer keeps its weights in one flat array).
    flat = np.zeros(12)
    views = [flat[:8].reshape(2, 4), flat[8:]]
    opt = _build(name, views, **kwargs)
    opt.update_params([np.ones((2, 4)), -np.ones(4)])
    assert np.all(flat[:8] < 0)
    assert np.all(flat[8:] > 0)


def test_update_params_checks_grads():
    opt = AdamOptimizer([np.zeros(3), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="expected 2 gradient arrays"):
        opt.update_params([np.zeros(3)])
    with pytest.raises(ValueError, match="shape"):
        opt.update_params([np.zeros(3), np.zeros(4)])
    assert opt.t == 0


def test_constructor_validation():
    with pytest.raises(TypeError, match="floating"):
        SGDOptimizer([np.zeros(3, dtype=np.int64)])
    with pytest.raises(TypeError, match="ndarray"):
        SGDOptimizer([[0.0, 1.0]])
    with pytest.raises(ValueError, match="learning_rate_init"):
        AdamOptimizer([np.zeros(3)], learning_rate_init=0.0)
    with pytest.raises(ValueError, match="beta_2"):
        AdamOptimizer([np.zeros(3)], beta_2=1.0)
    with pytest.raises(ValueError, match="momentum"):
        SGDOptimizer([np.zeros(3)], momentum=-0.1)
    with pytest.raises(ValueError, match="rho"):
        RMSpropOptimizer([np.zeros(3)], rho=float("nan"))
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        RMSpropOptimizer([ro])
    w = np.zeros((4, 6))
    with pytest.raises(ValueError, match=r"params\[0\] and params\[2\] share memory"):
        AdamOptimizer([w, np.zeros(3), w[1:, 2:]])
    # Disjoint views of one array are distinct parameters.
    AdamOptimizer([w[:, ::2], w[:, 1::2], np.zeros(3)])


# ---------------------------------------------------------------------------
# state_dict / load_state_dict
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("name", "kwargs"), ALL_CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip_continues_identically(name, kwargs, dtype):
    rng = np.random.default_rng(7)
    params = _random_params(rng, dtype)
    grad_seq = _random_grad_sequence(rng, 8, dtype)
    opt = _build(name, params, **kwargs)
    for grads in grad_seq[:4]:
        opt.update_params(grads)
    opt.learning_rate *= 0.5  # as a schedule would
    state = opt.state_dict()
    saved_params = [p.copy() for p in params]

    # Continue the original run.
    for grads in grad_seq[4:]:
        opt.update_params(grads)

    # The saved state is a copy: later updates did not change it.
    assert state["t"] == 4
    # A fresh optimizer over copies of the saved params, with the saved state.
    resumed_params = [p.copy() for p in saved_params]
    resumed = _build(name, resumed_params, **kwargs)
    resumed.load_state_dict(state)
    assert resumed.t == 4
    assert resumed.learning_rate == opt.learning_rate
    for grads in grad_seq[4:]:
        resumed.update_params(grads)
    assert resumed.t == opt.t == 8
    for p, q in zip(params, resumed_params, strict=True):
        assert q.dtype == dtype
        np.testing.assert_array_equal(p, q)

    # Without the state (fresh buffers, t=0) the trajectory differs, except
    # for momentum-free SGD which has no state to lose.
    fresh_params = [p.copy() for p in saved_params]
    fresh = _build(
        name,
        fresh_params,
        learning_rate_init=opt.learning_rate,
        **{k: v for k, v in kwargs.items() if k != "learning_rate_init"},
    )
    for grads in grad_seq[4:]:
        fresh.update_params(grads)
    same = all(np.array_equal(p, q) for p, q in zip(params, fresh_params, strict=True))
    assert same == (name == "sgd" and kwargs["momentum"] == 0.0)


def test_state_dict_is_a_copy_of_plain_values():
    w = np.zeros(3)
    opt = AdamOptimizer([w], learning_rate_init=0.1)
    opt.update_params([np.ones(3)])
    state = opt.state_dict()
    assert set(state) == {"optimizer", "t", "learning_rate", "ms", "vs"}
    assert isinstance(state["t"], int)
    assert isinstance(state["learning_rate"], float)
    before = state["ms"][0].copy()
    opt.update_params([np.ones(3)])
    np.testing.assert_array_equal(state["ms"][0], before)
    assert state["ms"][0] is not opt.ms[0]


def test_load_state_dict_validation():
    opt = AdamOptimizer([np.zeros(3)])
    good = AdamOptimizer([np.zeros(3)]).state_dict()
    with pytest.raises(ValueError, match="'sgd' optimizer"):
        opt.load_state_dict(SGDOptimizer([np.zeros(3)]).state_dict())
    bad = dict(good, ms=[np.zeros(4)])
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    bad = dict(good, vs=[])
    with pytest.raises(ValueError, match="holds 0 arrays"):
        opt.load_state_dict(bad)
    bad = {k: v for k, v in good.items() if k != "t"}
    with pytest.raises(ValueError, match="misses"):
        opt.load_state_dict(bad)


def test_load_state_dict_keeps_buffer_dtype():
    opt64 = RMSpropOptimizer([np.zeros(3)])
    opt64.update_params([np.ones(3)])
    w32 = np.zeros(3, dtype=np.float32)
    opt32 = RMSpropOptimizer([w32])
    opt32.load_state_dict(opt64.state_dict())
    assert opt32.square_avg[0].dtype == np.float32
    np.testing.assert_allclose(opt32.square_avg[0], opt64.square_avg[0], rtol=1e-6)


# ---------------------------------------------------------------------------
# make_optimizer
# ---------------------------------------------------------------------------


def test_make_optimizer():
    params = [np.zeros(3)]
    sgd = make_optimizer("sgd", params, 0.2, momentum=0.3, nesterovs_momentum=False)
    assert isinstance(sgd, SGDOptimizer)
    assert (sgd.learning_rate_init, sgd.momentum, sgd.nesterov) == (0.2, 0.3, False)
    assert sgd.params[0] is params[0]
    assert make_optimizer("sgd", params, 0.2).nesterov is True
    adam = make_optimizer("adam", params, 0.01)
    assert isinstance(adam, AdamOptimizer)
    assert adam.learning_rate_init == 0.01
    rms = make_optimizer("rmsprop", params, 0.02)
    assert isinstance(rms, RMSpropOptimizer)
    assert rms.learning_rate == 0.02


@pytest.mark.parametrize("name", ["lbfgs", "Adam", "", None])
def test_make_optimizer_unknown_name(name):
    with pytest.raises(ValueError, match="'adam', 'rmsprop', 'sgd'"):
        make_optimizer(name, [np.zeros(3)], 0.01)


# ---------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_clips_large_grads(dtype):
    rng = np.random.default_rng(8)
    grads = [10 * g for g in _random_params(rng, dtype)]
    original = [g.copy() for g in grads]
    norm = clip_grad_norm(grads, 1.0)
    assert isinstance(norm, float)
    assert norm == pytest.approx(_global_norm(original), rel=1e-12)
    assert norm > 1.0
    new_norm = _global_norm(grads)
    assert new_norm <= 1.0
    assert new_norm == pytest.approx(1.0, rel=1e-5)
    for g, o in zip(grads, original, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, o / norm, rtol=1e-5)


def test_clip_grad_norm_leaves_small_grads_unchanged():
    rng = np.random.default_rng(9)
    grads = [0.01 * g for g in _random_params(rng)]
    original = [g.copy() for g in grads]
    norm = clip_grad_norm(grads, 5.0)
    assert norm == pytest.approx(_global_norm(original), rel=1e-12)
    for g, o in zip(grads, original, strict=True):
        np.testing.assert_array_equal(g, o)
    # Exactly at the threshold: unchanged too.
    grads = [np.array([3.0, 4.0])]
    assert clip_grad_norm(grads, 5.0) == 5.0
    np.testing.assert_array_equal(grads[0], [3.0, 4.0])


def test_clip_grad_norm_float32_no_overflow():
    # The squares overflow float32 (max ~3.4e38) but not float64.
    grads = [np.full(4, 1e30, dtype=np.float32), np.full((2, 2), -1e30, dtype=np.float32)]
    norm = clip_grad_norm(grads, 2.0)
    assert math.isfinite(norm)
    assert norm == pytest.approx(math.sqrt(8) * 1e30, rel=1e-6)
    assert all(g.dtype == np.float32 for g in grads)
    assert _global_norm(grads) <= 2.0
    np.testing.assert_allclose(grads[0], 2.0 / math.sqrt(8), rtol=1e-5)


def test_clip_grad_norm_huge_float64():
    # Squares overflow float64; every entry is finite.
    grads = [np.array([3e200, -4e200])]
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5e200, rel=1e-12)
    np.testing.assert_allclose(grads[0], [0.6, -0.8], rtol=1e-12)


def test_clip_grad_norm_non_finite_left_unchanged():
    grads = [np.array([1.0, np.inf]), np.array([2.0])]
    assert clip_grad_norm(grads, 1.0) == math.inf
    np.testing.assert_array_equal(grads[0], [1.0, np.inf])
    grads = [np.array([1.0, np.nan])]
    assert math.isnan(clip_grad_norm(grads, 1.0))
    assert grads[0][0] == 1.0


def test_clip_grad_norm_edge_cases():
    assert clip_grad_norm([], 1.0) == 0.0
    grads = [np.zeros(3)]
    assert clip_grad_norm(grads, 0.0) == 0.0
    grads = [np.array([1.0, -2.0])]
    clip_grad_norm(grads, 0.0)
    np.testing.assert_array_equal(grads[0], [0.0, 0.0])
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([np.ones(2)], -1.0)


def test_clip_grad_value():
    grads = [np.array([-5.0, -0.5, 0.0, 0.5, 5.0]), np.array([[2.0, -2.0]], dtype=np.float32)]
    g0 = grads[0]
    assert clip_grad_value(grads, 1.0) is None
    assert grads[0] is g0
    np.testing.assert_array_equal(grads[0], [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(grads[1], [[1.0, -1.0]])
    assert grads[1].dtype == np.float32
    with pytest.raises(ValueError, match="clip_value"):
        clip_grad_value(grads, -1.0)


# ---------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------


def _grad_array(dtype):
    return hnp.arrays(
        dtype=dtype,
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
        elements=st.floats(
            -1e6, 1e6, allow_nan=False, allow_infinity=False, width=np.finfo(dtype).bits
        ),
    )


_grad_arrays = st.lists(
    st.sampled_from([np.float32, np.float64]).flatmap(_grad_array), min_size=1, max_size=4
)


@settings(max_examples=300, deadline=None)
@given(grads=_grad_arrays, max_norm=st.floats(1e-3, 1e4))
def test_clip_grad_norm_property(grads, max_norm):
    original = [g.copy() for g in grads]
    old_norm = _global_norm(original)
    returned = clip_grad_norm(grads, max_norm)
    new_norm = _global_norm(grads)
    assert returned == pytest.approx(old_norm, rel=1e-12, abs=1e-300)
    # Never increases the norm, never exceeds max_norm, keeps dtypes and shapes.
    assert new_norm <= old_norm
    for g, o in zip(grads, original, strict=True):
        assert g.dtype == o.dtype
        assert g.shape == o.shape
    if returned <= max_norm:
        for g, o in zip(grads, original, strict=True):
            np.testing.assert_array_equal(g, o)
    else:
        # The scaled norm is max_norm up to the rounding of the scaling.
        assert new_norm <= max_norm * (1 + 1e-12)
        assert new_norm == pytest.approx(max_norm, rel=1e-5)
        # Same direction: every array scaled by one common positive factor.
        factor = new_norm / old_norm
        for g, o in zip(grads, original, strict=True):
            np.testing.assert_allclose(g, o * factor, rtol=1e-5, atol=1e-6 * max_norm)
            assert np.all(np.sign(g[np.abs(g) > 0]) == np.sign(o[np.abs(g) > 0]))


@settings(max_examples=200, deadline=None)
@given(grads=_grad_arrays, clip_value=st.floats(0.0, 1e3))
def test_clip_grad_value_property(grads, clip_value):
    original = [g.copy() for g in grads]
    clip_grad_value(grads, clip_value)
    for g, o in zip(grads, original, strict=True):
        assert g.dtype == o.dtype
        assert np.all(np.abs(g) <= np.asarray(clip_value, dtype=g.dtype))
        inside = np.abs(o) <= clip_value
        np.testing.assert_array_equal(g[inside], o[inside])
        bound = np.asarray(clip_value, dtype=g.dtype)
        np.testing.assert_array_equal(g[~inside], np.sign(o[~inside]) * bound)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    split=st.integers(0, 6),
    config=st.sampled_from(ALL_CONFIGS),
)
def test_state_dict_resume_property(seed, split, config):
    # Resuming from a state saved after any number of steps gives the same result.
    name, kwargs = config
    rng = np.random.default_rng(seed)
    params = _random_params(rng)
    start = [p.copy() for p in params]
    grad_seq = _random_grad_sequence(rng, 6)
    opt = _build(name, params, **kwargs)
    for grads in grad_seq:
        opt.update_params(grads)

    first = [p.copy() for p in start]
    opt_a = _build(name, first, **kwargs)
    for grads in grad_seq[:split]:
        opt_a.update_params(grads)
    second = [p.copy() for p in first]
    opt_b = _build(name, second, **kwargs)
    opt_b.load_state_dict(opt_a.state_dict())
    for grads in grad_seq[split:]:
        opt_b.update_params(grads)
    for p, q in zip(params, second, strict=True):
        np.testing.assert_array_equal(p, q)


# ---------------------------------------------------------------------------
# Docstrings
# ---------------------------------------------------------------------------


def test_doctests():
    result = doctest.testmod(optim_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def _reference_update(name, p, g, buffers, t, kw):
    """The update rules written with fresh temporaries, as the docs state them."""
    if name == "sgd":
        (v,) = buffers
        lr, mu = kw["learning_rate_init"], kw["momentum"]
        v *= mu
        v += g
        step = mu * v
        step += g
        step *= lr
        p -= step
    elif name == "adam":
        m, v = buffers
        b1, b2, lr, eps = 0.9, 0.999, kw["learning_rate_init"], 1e-8
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * np.square(g)
        denom = np.sqrt(v)
        denom /= math.sqrt(1.0 - b2**t)
        denom += eps
        np.divide(m, denom, out=denom)
        denom *= lr / (1.0 - b1**t)
        p -= denom
    else:
        (v,) = buffers
        rho, lr, eps = 0.9, kw["learning_rate_init"], 1e-8
        v *= rho
        v += (1.0 - rho) * np.square(g)
        denom = np.sqrt(v)
        denom += eps
        np.divide(g, denom, out=denom, casting="same_kind")
        denom *= lr
        p -= denom


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize(("p_dtype", "g_dtype"), [
    (np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)])
def test_kept_scratch_gives_the_same_bits(name, p_dtype, g_dtype):
    """Updates write their temporaries into kept arrays: same bits as fresh ones."""
    import pickle

    rng = np.random.default_rng(5)
    p = rng.normal(size=(40, 7)).astype(p_dtype)
    ref_p = p.copy()
    kw = {"learning_rate_init": 0.01, "momentum": 0.9}
    kwargs = {"momentum": 0.9, "nesterovs_momentum": True} if name == "sgd" else {}
    opt = make_optimizer(name, [p], 0.01, **kwargs)
    n_buffers = 2 if name == "adam" else 1
    ref_buffers = [np.zeros_like(p) for _ in range(n_buffers)]
    for t in range(1, 6):
        g = rng.normal(size=p.shape).astype(g_dtype)
        opt.update_params([g])
        _reference_update(name, ref_p, g, ref_buffers, t, kw)
        np.testing.assert_array_equal(p, ref_p)
    assert p.dtype == p_dtype
    # The scratch is not state: not pickled, remade on demand. Adam's compiled
    # pass (parameter and gradient of one dtype) needs none.
    clone = pickle.loads(pickle.dumps(opt))
    compiled = name == "adam" and p_dtype == g_dtype
    assert clone._workspace.nbytes == 0 and (opt._workspace.nbytes == 0) == compiled
    g = rng.normal(size=p.shape).astype(g_dtype)
    clone.update_params([g])
    opt.update_params([g])
    np.testing.assert_array_equal(clone.params[0], opt.params[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_compiled_pass_gives_numpys_bits(monkeypatch, dtype):
    """Contiguous parameters of one dtype take the one-pass compiled update
    (``pylstm._arrays.adam_update_many``); it gives the bits of the NumPy passes that
    other parameters (a strided view, another dtype) take."""
    rng = np.random.default_rng(11)
    # (181, 200): from ADAM_SPLIT_MIN entries on, by halves on two threads.
    shapes = [(33, 7), (5,), (2, 3, 4), (181, 200)]
    start = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads = [[(rng.normal(size=s) * 10.0 ** rng.integers(-3, 3)).astype(dtype)
              for s in shapes] for _ in range(6)]
    calls = []
    real = optim_module.adam_update_many
    monkeypatch.setattr(optim_module, "adam_update_many",
                        lambda *a: (calls.append((len(a[0]), a[9])), real(*a)))
    results = {}
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(optim_module, "_COMPILED_DTYPES", ())
        params = [p.copy() for p in start]
        opt = AdamOptimizer(params, learning_rate_init=0.01, beta_2=0.99)
        for step_grads in grads:
            opt.update_params(step_grads)
        results[compiled] = params + opt.ms + opt.vs
    # Every update of the first run: one call for the four parameters, on the
    # kernels' threads (36,200 entries in the last one alone).
    assert calls == [(len(shapes), loop_threads())] * len(grads)
    for a, b in zip(results[True], results[False], strict=True):
        np.testing.assert_array_equal(a, b)
    # A strided parameter goes through NumPy and is updated in place all the same.
    monkeypatch.setattr(optim_module, "_COMPILED_DTYPES", (np.dtype(dtype),))
    wide = start[0].copy()
    view = wide[:, ::2]
    before = len(calls)
    AdamOptimizer([view], learning_rate_init=0.01).update_params([np.ones_like(view)])
    assert len(calls) == before
    np.testing.assert_allclose(view, start[0][:, ::2] - 0.01, rtol=1e-5)
    np.testing.assert_array_equal(wide[:, 1::2], start[0][:, 1::2])


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * ADAM_SPLIT_MIN // 4), min_size=1, max_size=5),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_adam_update_many_gives_the_bits_of_one_call_per_parameter(sizes, dtype):
    """``adam_update_many``: one call for several parameters, cut into halves
    for two threads anywhere (inside a parameter, at a boundary, past empty
    ones), gives every entry of one ``adam_update`` per parameter."""
    rng = np.random.default_rng(sum(sizes))
    start = [(rng.normal(size=(4, n)) * [[1.0], [1e-2], [1e-3], [1e-5]]).astype(dtype)
             for n in sizes]
    v0 = [np.abs(a[3]) for a in start]
    out = {}
    for how in ("each", 1, 2):
        p, m, v = ([a[0].copy() for a in start], [a[2].copy() for a in start],
                   [x.copy() for x in v0])
        g = [a[1] for a in start]
        for t in range(1, 3):
            coefs = (0.9, 0.999, np.sqrt(1 - 0.999**t), 1e-8, 1e-3)
            if how == "each":
                for args in zip(p, g, m, v, strict=True):
                    adam_update(*args, *coefs)
            else:
                used = adam_update_many(p, g, m, v, *coefs, how)
                assert used == (2 if how == 2 and sum(sizes) >= ADAM_SPLIT_MIN else 1)
        out[how] = p + m + v
    for how in (1, 2):
        for a, b in zip(out["each"], out[how], strict=True):
            np.testing.assert_array_equal(b, a)


def test_adam_groups_its_compiled_updates_by_dtype(monkeypatch):
    """Parameters of two dtypes (and a strided one) in one optimizer: one
    compiled call per dtype, the strided one through NumPy, every entry as
    the NumPy passes of each alone give it."""
    rng = np.random.default_rng(3)
    wide = rng.normal(size=(5, 8))
    start = [rng.normal(size=(6, 7)).astype(np.float32), rng.normal(size=9),
             rng.normal(size=(40,)).astype(np.float32), wide[:, ::2]]
    grads = [[rng.normal(size=p.shape).astype(p.dtype) for p in start] for _ in range(4)]
    calls = []
    real = optim_module.adam_update_many
    monkeypatch.setattr(optim_module, "adam_update_many",
                        lambda *a: (calls.append((a[0][0].dtype, len(a[0]))), real(*a)))
    together = [p.copy() for p in start[:3]] + [wide.copy()[:, ::2]]
    opt = AdamOptimizer(together, learning_rate_init=0.01)
    for step in grads:
        opt.update_params(step)
    assert calls == [(np.dtype(np.float32), 2), (np.dtype(np.float64), 1)] * len(grads)
    monkeypatch.setattr(optim_module, "_COMPILED_DTYPES", ())
    for i, p0 in enumerate(start):
        alone = p0.copy()
        ref = AdamOptimizer([alone], learning_rate_init=0.01)
        for step in grads:
            ref.update_params([step[i]])
        np.testing.assert_array_equal(together[i], alone)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_adam_copy_updates_its_own_parameters(how):
    """Adam keeps flat views of its parameters for its compiled pass: a copied
    optimizer must update the copy's parameters, not arrays of its own, and the
    original is left alone."""
    import copy
    import pickle

    rng = np.random.default_rng(4)
    params = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    grads = [np.ones_like(p) for p in params]
    opt = AdamOptimizer(params, learning_rate_init=0.1)
    opt.clip_and_update(grads, 5.0)  # the views are made
    clone = pickle.loads(pickle.dumps(opt)) if how == "pickle" else copy.deepcopy(opt)
    before = [p.copy() for p in params]
    start = [p.copy() for p in clone.params]
    clone.clip_and_update(grads, 5.0)
    assert all((p != s).all() for p, s in zip(clone.params, start, strict=True))
    assert all((p == b).all() for p, b in zip(params, before, strict=True))
    opt.clip_and_update(grads, 5.0)  # the original goes on as the copy did
    for p, c in zip(params, clone.params, strict=True):
        np.testing.assert_array_equal(p, c)


def test_adam_update_many_checks_its_arrays():
    one = [np.zeros(3)]
    with pytest.raises(ValueError, match="1 parameters, but 2 gradients"):
        adam_update_many(one, one * 2, one, one, 0.9, 0.999, 1.0, 1e-8, 1e-3)
    with pytest.raises(ValueError, match=r"parameter 0's p, g, m, v must have one length, "
                                         r"got 3, 2, 3, 3"):
        adam_update_many(one, [np.zeros(2)], one, one, 0.9, 0.999, 1.0, 1e-8, 1e-3)
    for bad in (np.zeros(3, np.float32), np.zeros(6)[::2], np.zeros((3, 1))):
        with pytest.raises(ValueError, match="parameter 1's arrays must be 1-D, C-contiguous "
                                             "and of one dtype"):
            adam_update_many(one * 2, [one[0], bad], one * 2, one * 2, 0.9, 0.999, 1.0, 1e-8,
                             1e-3)
    assert adam_update_many([], [], [], [], 0.9, 0.999, 1.0, 1e-8, 1e-3) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [ADAM_SPLIT_MIN - 1, ADAM_SPLIT_MIN, ADAM_SPLIT_MIN + 37, 300_001])
def test_adam_update_by_halves_gives_the_same_bits(dtype, n):
    """``adam_update(..., threads=2)`` splits from ADAM_SPLIT_MIN entries on (at
    a multiple of 16, an odd count too): every entry as on one thread."""
    rng = np.random.default_rng(n)
    p0, g = (rng.normal(size=(2, n)) * [[1.0], [1e-2]]).astype(dtype)
    out = {}
    for threads in (1, 2):
        p, m, v = p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
        for t in range(1, 4):
            used = adam_update(p, g * t, m, v, 0.9, 0.999, np.sqrt(1 - 0.999**t), 1e-8,
                               1e-3, threads)
            assert used == (2 if threads == 2 and n >= ADAM_SPLIT_MIN else 1)
        out[threads] = (p, m, v)
    for a, b in zip(out[1], out[2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(out[1][0], p0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_clip_and_update_gives_the_bits_of_clipping_then_updating(monkeypatch, dtype,
                                                                 optimizer):
    """``clip_and_update`` (Adam's: the norm in one call, the factor inside the
    update's pass) gives the bits of clip_grad_norm then update_params, with the
    gradients' norm above and below the limit, and returns the same norm."""
    clipped = []
    real = optim_module.clip_grad_norm
    monkeypatch.setattr(optim_module, "clip_grad_norm",
                        lambda *a: (clipped.append(1), real(*a))[1])
    rng = np.random.default_rng(3)
    shapes = [(33, 7), (5,), (2, 3, 4), (181, 200)]
    start = [rng.normal(size=s).astype(dtype) for s in shapes]
    grads = [[(rng.normal(size=s) * 10.0 ** k).astype(dtype) for s in shapes]
             for k in (-3, 1, -2, 0, 2, -4)]
    out, norms = {}, {}
    for fused in (True, False):
        params = [p.copy() for p in start]
        opt = make_optimizer(optimizer, params, 0.01)
        norms[fused] = []
        for step_grads in grads:
            g = [a.copy() for a in step_grads]
            if fused:
                norms[fused].append(opt.clip_and_update(g, 5.0))
            else:
                norms[fused].append(clip_grad_norm(g, 5.0))
                opt.update_params(g)
        out[fused] = params + [b for name in opt._buffer_names for b in opt._buffers[name]]
        assert opt.t == len(grads)
        if fused:  # Adam's own way, or the generic one through clip_grad_norm
            assert len(clipped) == (0 if optimizer == "adam" else len(grads))
    assert norms[True] == norms[False]
    assert min(norms[True]) < 5.0 < max(norms[True])
    for a, b in zip(out[True], out[False], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_and_update_does_not_update_for_a_non_finite_norm(bad):
    params = [np.ones((3, 2), np.float32), np.zeros(4, np.float32)]
    opt = AdamOptimizer(params, learning_rate_init=0.1)
    grads = [np.ones((3, 2), np.float32), np.full(4, bad, np.float32)]
    assert not np.isfinite(opt.clip_and_update(grads, 1.0))
    assert opt.t == 0
    np.testing.assert_array_equal(params[0], 1.0)
    assert not opt.ms[0].any() and not opt.vs[0].any()


def test_clip_and_update_of_overflowing_or_mixed_gradients_takes_clip_grad_norms_way():
    """float64 gradients whose squares overflow, and parameters of two dtypes, go
    through clip_grad_norm (its rescaled norm; its sum in order) and give its bits."""
    rng = np.random.default_rng(4)
    cases = [[rng.normal(size=(4, 3)) * 1e200, rng.normal(size=5) * 1e-3],
             [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5) * 30.0]]
    for grads in cases:
        out = []
        for fused in (True, False):
            params = [np.ones_like(g) for g in grads]
            opt = AdamOptimizer(params, learning_rate_init=0.1)
            g = [a.copy() for a in grads]
            if fused:
                norm = opt.clip_and_update(g, 1.0)
            else:
                norm = clip_grad_norm(g, 1.0)
                opt.update_params(g)
            assert np.isfinite(norm) and norm > 1.0
            out.append((norm, params, opt.ms, opt.vs))
        assert out[0][0] == out[1][0]
        for a, b in zip(out[0][1:], out[1][1:], strict=True):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
