"""The benchmark scripts run: each with ``--quick`` (tiny sizes, one sample) in a subprocess.

A smoke test, not a measurement: it checks that every script in ``benchmarks/`` still
works against the installed package, prints its header (the BLAS libraries that
threadpoolctl finds) and its table, and writes its summary file. The torch columns are
checked where torch is installed; the scripts that need torch (or Dask) are skipped
without it.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
pytestmark = pytest.mark.slow  # an interpreter per script (and workers), most with torch


def run(script, *options):
    """Run ``benchmarks/<script> --quick <options>``; its standard output."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", *options],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BLAS / OpenMP libraries (threadpoolctl" in proc.stdout
    assert "openblas" in proc.stdout.lower() or "mkl" in proc.stdout.lower()
    return proc.stdout


@pytest.mark.timeout(300)
def test_bench_lstm(tmp_path):
    out = run("bench_lstm.py", "--memory", "--json", str(tmp_path / "lstm.json"))
    assert "Median ms per call" in out and "geometric mean numpy/pylstm" in out
    assert "3x5x2x4 L2-bi-var" in out and "CHECK" not in out
    summary = json.loads((tmp_path / "lstm.json").read_text())
    assert {r["mode"] for r in summary["timings"]} == {"infer", "train"}
    assert all(r["numpy_over_pylstm"] > 0 for r in summary["timings"])
    assert all((r["torch_over_pylstm"] is not None) == HAS_TORCH for r in summary["timings"])
    assert all(m["peak_mb"] > m["bptt_mb"] > 0 for m in summary["memory"])


@pytest.mark.timeout(300)
def test_bench_simd(tmp_path):
    out = run("bench_simd.py", "--json", str(tmp_path / "simd.json"))
    assert "== level" in out and "2x4x3x4" in out
    figures = json.loads((tmp_path / "simd.json").read_text())["figures"]
    assert all(f["installed_ms"] > 0 for f in figures)
    assert all(("torch/pl" in f) == HAS_TORCH for f in figures)


@pytest.mark.timeout(300)
def test_bench_fit(tmp_path):
    out = run("bench_fit.py", "--json", str(tmp_path / "fit.json"))
    assert "Epochs per second of a whole fit" in out
    rows = json.loads((tmp_path / "fit.json").read_text())["results"]
    assert [r["case"] for r in rows] == ["digits", "varlen"]  # an array and a list
    assert all((r["ratio"] is not None) == HAS_TORCH for r in rows)
    # Each fit's compiled calls were found and timed: a finite share outside them.
    assert all(0 <= r["pylstm"]["outside_compiled"] < 50 for r in rows)


@pytest.mark.timeout(300)
def test_bench_fit_idle_wait(tmp_path):
    run("bench_fit.py", "--no-torch", "--idle-wait", "40", "1000", "--json",
        str(tmp_path / "fit.json"))
    rows = json.loads((tmp_path / "fit.json").read_text())["results"]
    assert [(r["case"], r["idle_wait_us"]) for r in rows] == [
        ("digits", 40), ("digits", 1000), ("varlen", 40), ("varlen", 1000)]
    assert all(r["pylstm"]["epochs_per_s"] > 0 for r in rows)


@pytest.mark.timeout(300)
def test_bench_fit_general_path(tmp_path):
    run("bench_fit.py", "--no-torch", "--general-path", "--json", str(tmp_path / "fit.json"))
    rows = json.loads((tmp_path / "fit.json").read_text())["results"]
    assert [(r["case"], r["step"]) for r in rows] == [
        ("digits", "planned"), ("digits", "general"), ("varlen", "planned"),
        ("varlen", "general")]
    # The same fits, bit for bit, through either path.
    assert rows[0]["pylstm"]["accuracy"] == rows[1]["pylstm"]["accuracy"]
    assert all(r["pylstm"]["epochs_per_s"] > 0 for r in rows)


@needs_torch
@pytest.mark.timeout(300)
def test_bench_lm(tmp_path):
    out = run("bench_lm.py", "--json", str(tmp_path / "lm.json"))
    assert "Training: tokens per second" in out and "Generation" in out
    train = json.loads((tmp_path / "lm.json").read_text())["results"][0]["train"]
    # Both sides start from the same weights and see the same windows.
    assert train["pylstm"]["loss"] == pytest.approx(train["torch"]["loss"], rel=1e-3)
    assert train["ratio"] > 0
    # The compiled calls were found and timed: the time outside them is a finite share
    # (of a tiny --quick model, whose calls are short, more than the time inside).
    assert 0 <= train["pylstm"]["outside_compiled"] < 50
    assert train["pylstm"]["gflop_per_s"] > 0 and train["pylstm"]["kernel_gflop_per_s"] > 0
    # No fit is faster than its compiled calls alone.
    assert train["pylstm"]["ceiling"] >= train["ratio"] > 0
    # The kernel calls of a batch were found and made again alone.
    assert np.isfinite(train["pylstm"]["kernel_fit_over_alone"])
    assert train["pylstm"]["kernel_fit_over_alone"] > 0


@needs_torch
@pytest.mark.timeout(300)
def test_bench_quality(tmp_path):
    out = run("bench_quality.py", "--tasks", "digits", "lm", "--save", str(tmp_path / "q"))
    assert "pylstm/torch" in out and "lm seed 0 torch" in out
    assert (tmp_path / "q.txt").read_text().startswith("bench_quality.py |")
    tasks = json.loads((tmp_path / "q.json").read_text())["tasks"]
    assert set(tasks) == {"digits", "lm"}
    # pylstm's time outside its compiled calls (over the run: the tiny ones miss the target).
    assert all(task["pylstm_outside"] > 0 for task in tasks.values())


@needs_torch
@pytest.mark.timeout(300)
def test_bench_quality_same_init(tmp_path):
    out = run("bench_quality.py", "--same-init", "--tasks", "adding", "lm", "--save",
              str(tmp_path / "q"))
    assert "same initial weights" in out
    tasks = json.loads((tmp_path / "q.json").read_text())["tasks"]
    # torch's model starts from pylstm's weights: their first predictions agree.
    assert tasks["adding"]["initial_gap"] < 1e-5 and tasks["lm"]["initial_gap"] < 1e-5


@needs_torch
@pytest.mark.timeout(300)
def test_bench_quality_unit_forget_bias(tmp_path):
    out = run("bench_quality.py", "--unit-forget-bias", "--tasks", "adding", "--save",
              str(tmp_path / "q"))
    assert "| unit_forget_bias" in out and "adding seed 0 torch" in out
    assert set(json.loads((tmp_path / "q.json").read_text())["tasks"]) == {"adding"}


@needs_torch
@pytest.mark.timeout(300)
def test_bench_lm_parity(tmp_path):
    out = run("bench_lm.py", "--parity", "--same-init", "--json",
              str(tmp_path / "parity.json"))
    mean = next(line for line in out.splitlines() if line.startswith("mean"))
    assert mean.split()[4] == "1.000"  # the same initial weights: the same model
    final = json.loads((tmp_path / "parity.json").read_text())["parity"][0]["final"]
    assert final["pylstm"] == pytest.approx(final["torch"], rel=1e-4)


@pytest.mark.timeout(300)
def test_bench_stream(tmp_path):
    out = run("bench_stream.py", "--json", str(tmp_path / "stream.json"))
    assert "/ stream.predict" in out and "LSTM.step" in out
    rows = json.loads((tmp_path / "stream.json").read_text())["calls"]
    assert [r["call"] for r in rows][:2] == ["stream.predict", "stream.predict, chunks of 16"]
    assert len(rows) == 4 + HAS_TORCH and all(r["us_per_step"] > 0 for r in rows)
    if HAS_TORCH:  # the torch loop computes the stream's probabilities
        assert float(out.split("max |difference| ")[1].split()[0]) < 1e-5


@pytest.mark.timeout(300)
def test_bench_recurrent_dropout(tmp_path):
    out = run("bench_recurrent_dropout.py", "--json", str(tmp_path / "rd.json"))
    assert "ratio = dropout / plain" in out
    rows = json.loads((tmp_path / "rd.json").read_text())["cases"]
    assert [r["case"] for r in rows] == ["2x5x3x4", "digits epoch"]
    assert all(r["plain_ms"] > 0 and r["dropout_ms"] > 0 for r in rows)


@pytest.mark.timeout(300)
def test_bench_streaming(tmp_path):
    out = run("bench_streaming.py", "--json", str(tmp_path / "st.json"))
    assert "ratio = stream / plain" in out
    rows = json.loads((tmp_path / "st.json").read_text())["cases"]
    assert [r["case"] for r in rows] == ["2x5x3x4", "lm epoch H=8"]
    assert all(r["plain_ms"] > 0 and r["stream_ms"] > 0 for r in rows)


@pytest.mark.timeout(300)
def test_bench_head(tmp_path):
    out = run("bench_head.py", "--json", str(tmp_path / "head.json"))
    assert "ratio = tn / blas" in out
    rows = json.loads((tmp_path / "head.json").read_text())["cases"]
    assert [r["case"] for r in rows] == ["64x8x5"]
    assert rows[0]["blas_ms"] > 0 and rows[0]["tn_ms"] > 0


@pytest.mark.skipif(importlib.util.find_spec("dask_ml") is None, reason="needs dask-ml")
@pytest.mark.timeout(300)
def test_bench_dask():
    out = run("bench_dask.py")
    assert "identical scores: True" in out and "identical scores: False" not in out
    assert "Incremental   accuracy" in out
