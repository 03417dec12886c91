"""The instruction-set levels of the kernels: choosing one (``PYLSTM_SIMD``,
``_lstm.set_simd``), reporting it (``pylstm.show_config``), and the levels
agreeing with each other and with a NumPy reference.

The whole kernel suite also runs once per level in CI (``.ci/run``, with
``PYLSTM_SIMD`` set); here every level this machine has is compared in one
process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pylstm
from pylstm import LSTM, _lstm

LEVELS = _lstm.simd_levels()


@pytest.fixture
def restore_level():
    old = _lstm.simd()
    yield
    _lstm.set_simd(old)


def _child(code, **env):
    """Run ``code`` in a fresh interpreter with extra environment variables;
    returns its stdout and stderr."""
    full = {k: v for k, v in os.environ.items() if k != "PYLSTM_SIMD"}
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_show_config_reports_the_build_and_the_level():
    config = pylstm.show_config(mode="dicts")
    assert config["simd"] == _lstm.simd()
    assert config["simd"] in config["simd_available"]
    assert set(config["simd_available"]) <= {"baseline", "avx2", "avx512", "neon"}
    assert config["compiler"].split()[0] in {"gcc", "clang", "msvc", "intel-llvm"}
    assert config["threads"] in (1, 2)
    assert config["blas"]


def test_show_config_prints(capsys):
    assert pylstm.show_config() is None
    out = capsys.readouterr().out
    assert f"simd           : {_lstm.simd()}" in out
    assert "compiler" in out and "blas" in out


def test_show_config_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        pylstm.show_config(mode="json")


@pytest.mark.parametrize("level", LEVELS)
def test_environment_caps_the_level(level):
    code = "import json, pylstm; print(json.dumps(pylstm.show_config(mode='dicts')['simd']))"
    out, err = _child(code, PYLSTM_SIMD=level)
    assert json.loads(out) == level
    assert "RuntimeWarning" not in err


def test_environment_level_the_cpu_lacks_falls_back_with_a_warning():
    missing = [lv for lv in ("neon", "avx512", "avx2") if lv not in LEVELS]
    if not missing:
        pytest.skip("this machine runs every level")
    code = ("import warnings, json; warnings.simplefilter('always')\n"
            "import pylstm; print(json.dumps(pylstm.show_config(mode='dicts')['simd']))")
    out, err = _child(code, PYLSTM_SIMD=missing[0])
    assert json.loads(out) in LEVELS
    assert "does not run it" in err


def test_environment_unknown_level_is_ignored_with_a_warning():
    code = ("import warnings, json; warnings.simplefilter('always')\n"
            "import pylstm; print(json.dumps(pylstm.show_config(mode='dicts')['simd']))")
    out, err = _child(code, PYLSTM_SIMD="sse9")
    assert json.loads(out) == LEVELS[-1]
    assert "not one of" in err


def test_set_simd_returns_the_old_level_and_rejects_unknown_names(restore_level):
    first = _lstm.set_simd(LEVELS[0])
    assert _lstm.simd() == LEVELS[0]
    assert _lstm.set_simd(first) == LEVELS[0]
    with pytest.raises(ValueError, match="level must be one of"):
        _lstm.set_simd("avx1024")


def _train_step(dtype, level, B=9, T=7, I=5, H=64, seed=0, layers=2, bidirectional=True):
    """Outputs, final states and every gradient of a stacked bidirectional
    layer at one level (H = 64: every packed product runs; lengths vary)."""
    _lstm.set_simd(level)
    rng = np.random.default_rng(seed)
    layer = LSTM(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                 random_state=seed)
    X = rng.normal(size=(B, T, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    out, (h, c) = layer.forward(X, lengths=lengths, training=True)
    g = rng.normal(size=out.shape).astype(dtype)
    dX, grads = layer.backward(g)
    infer, _ = layer.forward(X, lengths=lengths, training=False)
    return [out, h, c, dX, infer] + [grads[k] for k in sorted(grads)]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-11), (np.float32, 2e-4)])
def test_every_level_agrees_with_the_baseline(dtype, rtol, restore_level):
    ref = _train_step(dtype, LEVELS[0])
    for level in LEVELS[1:]:
        got = _train_step(dtype, level)
        for a, b in zip(got, ref, strict=True):
            scale = max(float(np.abs(b).max()), 1.0)
            np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=level)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_kernel_matches_numpy_at_every_level(level, dtype, restore_level):
    _lstm.set_simd(level)
    rng = np.random.default_rng(1)
    k, m, n1, n2 = 301, 37, 5, 43  # odd sizes: every tail of the tiles
    a = rng.normal(size=(k, m)).astype(dtype)
    b1 = rng.normal(size=(k, n1)).astype(dtype)
    b2 = rng.normal(size=(k, n2)).astype(dtype)
    c1 = np.empty((m, n1), dtype)
    c2 = np.empty((m, n2), dtype)
    _lstm._gemm_tn(a, b1, b2, c1, c2)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(c1, a64.T @ b1, rtol=tol, atol=tol * np.sqrt(k))
    np.testing.assert_allclose(c2, a64.T @ b2, rtol=tol, atol=tol * np.sqrt(k))


@pytest.mark.parametrize("level", LEVELS)
def test_one_row_and_many_rows_agree_at_every_level(level, restore_level):
    """Batch 1 takes the packed matrix-vector product; a batch of identical
    rows the tile loop: the same sums in another order."""
    _lstm.set_simd(level)
    rng = np.random.default_rng(2)
    layer = LSTM(3, 96, dtype=np.float64, random_state=0)
    x = rng.normal(size=(1, 20, 3))
    one, _ = layer.forward(x, training=False)
    many, _ = layer.forward(np.repeat(x, 11, axis=0), training=False)
    np.testing.assert_allclose(many, np.repeat(one, 11, axis=0), rtol=1e-12, atol=1e-13)


@pytest.mark.skipif(not os.environ.get("PYLSTM_EXPECT_COMPILER"),
                    reason="only where CI names the compiler of the build under test")
def test_the_build_under_test_is_the_expected_compilers():
    """CI runs the suite against a GCC and a Clang build: each run checks it
    imported the build it meant to test."""
    assert _lstm.compiler().split()[0] == os.environ["PYLSTM_EXPECT_COMPILER"]


@pytest.mark.skipif(not os.environ.get("PYLSTM_SIMD"), reason="PYLSTM_SIMD is not set")
def test_the_level_under_test_is_the_one_asked_for():
    """CI's per-level runs of the kernel tests really ran at that level."""
    assert _lstm.simd() == os.environ["PYLSTM_SIMD"].strip().lower()
