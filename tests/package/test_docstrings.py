"""Documentation checks: every public name is documented and every example runs.

* The doctests of every module of the installed package run (modules whose
  optional dependencies are missing are skipped), and so do the ``>>>``
  examples of the documentation's own pages (``docs/index.rst`` and
  ``docs/user_guide/*.rst``; ``docs/scaling.rst`` is run by ``test_dask.py``).
* Every name in ``pylstm.__all__`` and every public function of
  ``pylstm.datasets`` and ``pylstm.interop`` has a numpydoc docstring with an
  ``Examples`` section, and documents each parameter of its signature (for
  classes: of ``__init__``); so do the public methods of the public classes
  (their parameters, not necessarily examples).
* The API reference page (``docs/api.rst``) lists every one of these names.
"""

import doctest
import importlib
import inspect
import re
import warnings
from pathlib import Path

import pytest

import pylstm

#: Modules whose docstrings hold doctests, imported from the installed package.
MODULES = [
    "pylstm",
    "pylstm._layer",
    "pylstm._estimators",
    "pylstm._language_model",
    "pylstm._network",
    "pylstm._optim",
    "pylstm._validation",
    "pylstm._sequences",
    "pylstm._stream",
    "pylstm._progress",
    "pylstm._threads",
    "pylstm.datasets",
    "pylstm.interop",
    "pylstm._onnx",
    "pylstm._container",
    "pylstm._fields",
    "pylstm._io",
    "pylstm._cli",
    # The compiled modules' examples too.
    "pylstm._lstm",
    "pylstm._arrays",
    "pylstm._workspace",
]

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Documentation pages whose examples run here (other pages test themselves).
GUIDE_PAGES = ["index.rst"] + sorted(
    str(p.relative_to(DOCS)) for p in (DOCS / "user_guide").glob("*.rst"))

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _import_or_skip(name):
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # an optional dependency of that module
        pytest.skip(f"{name} cannot be imported here: {exc}")


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    """Run in an empty folder (examples may write files) without warnings."""
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name, quiet):
    module = _import_or_skip(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) of {name} failed (output above)"


@pytest.mark.skipif(not (DOCS / "user_guide").is_dir(), reason="no docs/ folder here")
@pytest.mark.parametrize("page", GUIDE_PAGES)
def test_documentation_page_examples(page, quiet):
    result = doctest.testfile(str(DOCS / page), module_relative=False, optionflags=FLAGS,
                              encoding="utf-8", verbose=False)
    assert result.failed == 0, f"{result.failed} example(s) of docs/{page} failed"


# ---------------------------------------------------------------------- coverage
def _public_objects():
    """(qualified name, object) of every public name that must be documented."""
    objects = []
    for name in pylstm.__all__:
        obj = getattr(pylstm, name)
        if inspect.ismodule(obj) or name == "__version__":
            continue
        objects.append((f"pylstm.{name}", obj))
    for module in (pylstm.datasets, pylstm.interop):
        for name in module.__all__:
            objects.append((f"{module.__name__}.{name}", getattr(module, name)))
    return objects


def _public_methods():
    """(qualified name, function) of the public methods of the public classes."""
    methods = []
    for qualname, obj in _public_objects():
        if not inspect.isclass(obj) or issubclass(obj, BaseException):
            continue
        for name, member in inspect.getmembers(obj, inspect.isfunction):
            if name.startswith("_") or member.__module__.startswith("sklearn"):
                continue
            methods.append((f"{qualname}.{name}", member))
    return methods


def _sections(doc):
    """numpydoc section titles -> their lines (dedented docstring)."""
    lines = inspect.cleandoc(doc).splitlines()
    sections, current = {}, None
    for i, line in enumerate(lines):
        if (i + 1 < len(lines) and line.strip() and set(lines[i + 1].strip()) == {"-"}
                and len(lines[i + 1].strip()) >= len(line.strip())):
            current = line.strip()
            sections[current] = []
        elif current is not None and not (line.strip() and set(line.strip()) == {"-"}):
            sections[current].append(line)
    return sections


def _documented_parameters(doc):
    """Names in the Parameters (and Other Parameters) sections."""
    names = set()
    sections = _sections(doc)
    for title in ("Parameters", "Other Parameters"):
        for line in sections.get(title, []):
            if not line or line[0].isspace():
                continue  # descriptions are indented under their name
            head = line.split(" : ", 1)[0]
            for part in head.split(","):
                names.add(part.strip().lstrip("*"))
    return names


def _signature_parameters(obj):
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = inspect.signature(target).parameters.values()
    return {p.name for p in params if p.name not in ("self", "cls")}


def test_public_names_are_there():
    names = [name for name, _ in _public_objects()]
    assert "pylstm.LSTMClassifier" in names and "pylstm.datasets.make_agreement" in names


@pytest.mark.parametrize("qualname, obj", _public_objects(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_public_docstring_has_examples(qualname, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{qualname} has no docstring"
    sections = _sections(doc)
    assert "Examples" in sections, f"{qualname}'s docstring has no Examples section"
    assert any(line.lstrip().startswith(">>>") for line in sections["Examples"]), (
        f"{qualname}'s Examples section has no >>> example")


@pytest.mark.parametrize("qualname, obj", _public_objects() + _public_methods(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_parameters_are_documented(qualname, obj):
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        pytest.skip("exceptions take a message")
    doc = inspect.getdoc(obj)
    assert doc, f"{qualname} has no docstring"
    documented = _documented_parameters(doc)
    expected = _signature_parameters(obj)
    missing = sorted(expected - documented)
    unknown = sorted(documented - expected)
    assert not missing, f"{qualname}: parameters not documented: {missing}"
    assert not unknown, f"{qualname}: documented parameters not in the signature: {unknown}"


@pytest.mark.skipif(not (DOCS / "api.rst").is_file(), reason="no docs/ folder here")
def test_api_reference_lists_every_public_name():
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s{3}(\w+)\s*$", text, flags=re.M))
    for qualname, _ in _public_objects():
        assert qualname.rsplit(".", 1)[1] in listed, f"{qualname} is not in docs/api.rst"
