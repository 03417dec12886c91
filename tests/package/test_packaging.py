"""The package as installed: one version everywhere, and no source checkout mixed in.

The version is written once, in meson.build's ``project()``; the wheel's
metadata, ``pylstm.__version__``, ``python -m pylstm --version`` and
:func:`pylstm.show_config` report it. Python started in a source checkout
(the README's ``pip install . && python -m pylstm demo``) finds the
checkout's ``pylstm/`` first, which has no compiled modules: the installed
pylstm is then imported in its place, whole. tools/check_wheel.sh runs these
tests against an installed wheel from outside the checkout.
"""

import importlib
import importlib.machinery
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import pylstm

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


def _python(args, cwd, isolated=False):
    """Run a fresh interpreter in ``cwd``; ``isolated`` drops site-packages and PYTHONPATH."""
    env = dict(os.environ)
    if isolated:
        env.pop("PYTHONPATH", None)
        args = ["-S", *args]
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _is_editable_install():
    return not isinstance(pylstm.__spec__.loader, importlib.machinery.SourceFileLoader)


def _fake_checkout(folder, version):
    """A source checkout in ``folder``: pylstm/__init__.py without compiled modules and a
    meson.build of the given version."""
    (folder / "pylstm").mkdir()
    shutil.copy(pylstm.__file__, folder / "pylstm" / "__init__.py")
    (folder / "meson.build").write_text(f"project(\n  'pylstm',\n  version: '{version}',\n)\n")
    return folder


def test_version_is_the_installed_distributions():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d+)*", pylstm.__version__)
    assert pylstm.__version__ == importlib.metadata.version("pylstm")


def test_version_command_prints_it(tmp_path):
    proc = _python(["-m", "pylstm", "--version"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"pylstm {pylstm.__version__}\n"


def test_show_config_reports_the_version():
    assert pylstm.show_config(mode="dicts")["version"] == pylstm.__version__


def test_compiled_and_python_modules_come_from_one_folder():
    if _is_editable_install():
        pytest.skip("an editable install keeps its compiled modules in its build folder")
    folder = pathlib.Path(pylstm.__file__).parent
    for name in ("_lstm", "_arrays", "_blas", "_version", "_cli", "_config"):
        module = importlib.import_module(f"pylstm.{name}")
        assert pathlib.Path(module.__file__).parent == folder, name


@pytest.mark.skipif(not (CHECKOUT / "pylstm" / "__init__.py").exists(),
                    reason="the tests are not in a source checkout")
def test_python_m_pylstm_in_the_checkout_runs_the_installed_package():
    proc = _python(["-m", "pylstm", "--version"], cwd=CHECKOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"pylstm {pylstm.__version__}\n"
    assert "running the installed pylstm" not in proc.stderr  # the versions agree
    code = "import pylstm, pylstm._cli; print(pylstm.__file__); print(pylstm._cli.__file__)"
    proc = _python(["-c", code], cwd=CHECKOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [pylstm.__file__, pylstm._cli.__file__]


def test_a_checkout_of_another_version_runs_the_installed_one_with_a_warning(tmp_path):
    checkout = _fake_checkout(tmp_path, "0.0.1")
    proc = _python(["-c", "import pylstm; print(pylstm.__file__, pylstm.__version__)"],
                   cwd=checkout)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [pylstm.__file__, pylstm.__version__]
    assert f"running the installed pylstm {pylstm.__version__}" in proc.stderr
    assert "pylstm 0.0.1" in proc.stderr and "pip install ." in proc.stderr


def test_a_checkout_without_an_installed_pylstm_says_how_to_install(tmp_path):
    checkout = _fake_checkout(tmp_path, pylstm.__version__)
    proc = _python(["-c", "import pylstm"], cwd=checkout, isolated=True)
    assert proc.returncode == 1
    assert "ImportError" in proc.stderr
    assert "no installed pylstm was found" in proc.stderr and "pip install ." in proc.stderr
