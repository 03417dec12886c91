"""The command line: ``python -m pylstm demo`` and ``python -m pylstm charnn``."""

import contextlib
import io
import re
import subprocess
import sys

import numpy as np
import pytest

import pylstm
from pylstm._cli import build_parser, main
from pylstm.datasets import load_python_docs

TRAIN_OPTIONS = ["--model", "--hidden-size", "--num-layers", "--embedding-dim", "--dropout",
                 "--seq-len", "--batch-size", "--epochs", "--learning-rate",
                 "--validation-fraction", "--dtype", "--random-state"]
SAMPLE_OPTIONS = ["--length", "--temperature", "--prompt", "--top-k", "--random-state"]
TINY = ["--hidden-size", "16", "--embedding-dim", "8", "--seq-len", "16", "--batch-size", "8",
        "--epochs", "2", "--learning-rate", "0.01", "--random-state", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once with the CLI; return (model path, training output)."""
    folder = tmp_path_factory.mktemp("charnn")
    text_file = folder / "input.txt"
    text_file.write_text(load_python_docs()[:6000], encoding="utf-8")
    model = folder / "model.pylstm"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["charnn", "train", str(text_file), "--model", str(model), *TINY])
    assert status == 0
    return model, out.getvalue()


def test_train_prints_progress_and_saves_a_model(trained):
    model_path, out = trained
    lines = out.splitlines()
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert len(epochs) == 2
    for line in epochs:
        assert re.search(r"validation_perplexity \d+(\.\d+)?", line), line
    assert "trained 2 epochs" in out and "validation perplexity" in out
    assert f"saved the model to {model_path}" in out
    model = pylstm._cli._load_model(str(model_path))
    assert isinstance(model, pylstm.LSTMLanguageModel)
    assert model.level == "char" and model.hidden_size == 16 and model.n_iter_ == 2
    assert model.validation_fraction == 0.05  # the default
    assert len(model.validation_perplexities_) == 2


def test_sample_prints_prompt_and_continuation(trained, capsys):
    model_path, _ = trained
    args = ["charnn", "sample", str(model_path), "--length", "80", "--temperature", "0.8",
            "--prompt", "The ", "--random-state", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("The ")
    assert len(first) == len("The ") + 80 + 1  # and the newline of print
    assert main(args) == 0
    assert capsys.readouterr().out == first  # repeatable with --random-state
    # Same text as the estimator's generate.
    model = pylstm._cli._load_model(str(model_path))
    assert first == "The " + model.generate("The ", 80, temperature=0.8, random_state=1) + "\n"


def test_sample_greedy_top_k_and_unknown_prompt(trained, capsys):
    model_path, _ = trained
    assert main(["charnn", "sample", str(model_path), "--length", "30", "--temperature", "0",
                 "--prompt", "\u20ac\u00a7"]) == 0
    greedy = capsys.readouterr().out
    assert main(["charnn", "sample", str(model_path), "--length", "30", "--top-k", "1",
                 "--prompt", "\u20ac\u00a7", "--random-state", "5"]) == 0
    assert capsys.readouterr().out == greedy
    assert main(["charnn", "sample", str(model_path), "--length", "10"]) == 0
    assert len(capsys.readouterr().out) == 11  # empty prompt, default temperature


def test_help_documents_every_option(capsys):
    for argv, options in [(["charnn", "train", "--help"], TRAIN_OPTIONS),
                          (["charnn", "sample", "--help"], SAMPLE_OPTIONS)]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for option in options:
            assert option in text, option
    parser = build_parser()
    charnn = parser._subparsers._group_actions[0].choices["charnn"]
    for name, command in charnn._subparsers._group_actions[0].choices.items():
        for action in command._actions:
            assert action.help, (name, action.dest)
    with pytest.raises(SystemExit):
        main(["charnn", "--help"])
    assert "train" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"this is not a model", b"\x80\x04junk pickle",
                                     b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]"])
def test_bad_model_file_exits_2_without_traceback(tmp_path, capsys, content):
    path = tmp_path / "bad.pylstm"
    path.write_bytes(content)
    assert main(["charnn", "sample", str(path), "--length", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not a pylstm model file" in captured.err
    assert "Traceback" not in captured.err


def test_model_file_is_a_safe_pylstm_file(trained):
    """`charnn train` writes pylstm's own format: pylstm.load reads it, no pickle inside."""
    model_path, _ = trained
    assert not model_path.read_bytes().startswith(b"\x80")
    model = pylstm.load(model_path)
    assert isinstance(model, pylstm.LSTMLanguageModel)
    same = pylstm._cli._load_model(str(model_path))
    assert model.generate("The", 30, random_state=2) == same.generate("The", 30, random_state=2)


class _MakesAFile:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_model_files_are_never_unpickled(trained, tmp_path, capsys):
    """Files of the old joblib fallback, or any pickle, are refused with exit status 2."""
    import pickle

    joblib = pytest.importorskip("joblib")
    model = pylstm.load(trained[0])
    marker = tmp_path / "pwned"
    for name, write in [
            ("model.joblib", lambda p: joblib.dump(model, p)),
            ("model.pkl", lambda p: p.write_bytes(pickle.dumps(model))),
            ("evil.pkl", lambda p: p.write_bytes(pickle.dumps(_MakesAFile(str(marker))))),
            ("evil.joblib", lambda p: joblib.dump(_MakesAFile(str(marker)), p))]:
        path = tmp_path / name
        write(path)
        assert main(["charnn", "sample", str(path), "--length", "5"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "Traceback" not in captured.err
        assert "not a pylstm model file" in captured.err and "pickle" in captured.err
    assert not marker.exists()


def test_missing_or_wrong_kind_of_model_file(tmp_path, capsys):
    assert main(["charnn", "sample", str(tmp_path / "missing.pylstm")]) == 2
    assert "cannot read the model file" in capsys.readouterr().err
    assert main(["charnn", "sample", str(tmp_path)]) == 2
    assert "not a model file" in capsys.readouterr().err
    path = tmp_path / "layer.pylstm"  # a valid pylstm file holding another model type
    pylstm.save(pylstm.LSTM(2, 3, random_state=0), path)
    assert main(["charnn", "sample", str(path)]) == 2
    assert "holds a LSTM, not a language model" in capsys.readouterr().err


def test_bad_training_input_exits_2(tmp_path, capsys):
    model = str(tmp_path / "m.pylstm")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["charnn", "train", str(empty), "--model", model]) == 2
    assert "empty" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert main(["charnn", "train", str(short), "--model", model, "--seq-len", "64"]) == 2
    assert "fewer than one window" in capsys.readouterr().err
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["charnn", "train", str(binary), "--model", model]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    assert main(["charnn", "train", str(tmp_path / "nope.txt"), "--model", model]) == 2
    assert "cannot read" in capsys.readouterr().err
    ok = tmp_path / "ok.txt"
    ok.write_text("abc " * 100)
    assert main(["charnn", "train", str(ok), "--model", model, "--hidden-size", "0"]) == 2
    assert "hidden_size must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "m.pylstm").exists()
    with pytest.raises(SystemExit) as exc:  # argparse: not an integer
        main(["charnn", "train", str(ok), "--model", model, "--epochs", "two"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # --model is required
        main(["charnn", "train", str(ok)])
    assert exc.value.code == 2
    capsys.readouterr()


def test_bad_sample_arguments_exit_2(trained, capsys):
    model_path, _ = trained
    assert main(["charnn", "sample", str(model_path), "--length", "-3"]) == 2
    assert "n_tokens must be an integer >= 0" in capsys.readouterr().err
    assert main(["charnn", "sample", str(model_path), "--temperature", "-1"]) == 2
    assert "temperature must be >= 0" in capsys.readouterr().err


def test_python_m_pylstm_charnn_end_to_end(tmp_path):
    (tmp_path / "in.txt").write_text("hello world, " * 200, encoding="utf-8")
    run = [sys.executable, "-m", "pylstm", "charnn"]
    train = subprocess.run([*run, "train", "in.txt", "--model", "m.pylstm", *TINY],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr
    assert "Epoch 2/2" in train.stdout
    sample = subprocess.run([*run, "sample", "m.pylstm", "--length", "40", "--prompt", "hel",
                             "--temperature", "0"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("hel") and len(sample.stdout) == 44


def test_demo_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pylstm", "demo", "--epochs", "1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "held-out accuracy" in result.stdout
    accuracy = float(re.search(r"held-out accuracy: ([0-9.]+)", result.stdout).group(1))
    assert 0.0 <= accuracy <= 1.0
    assert np.isfinite(accuracy)


def test_docstring_examples():
    import doctest

    import pylstm._cli as cli_module

    result = doctest.testmod(cli_module)
    assert result.attempted > 0 and result.failed == 0
