"""pylstm: fast LSTM recurrent networks for CPUs.

Typed Cython kernels on BLAS (through :mod:`scipy.linalg.cython_blas`) under a
NumPy and scikit-learn API.
"""


def _installed_package_for_checkout():
    """Import the installed pylstm in this module's place if this is a source checkout.

    An installed pylstm finds its compiled modules (``_lstm`` and the others)
    beside this file, or where a meson-python editable install's import hook
    puts them, and this returns None. A source checkout's ``pylstm/`` has none:
    it is imported when Python starts in the checkout, as the README's
    ``pip install . && python -m pylstm demo`` does (the current folder comes
    first on ``sys.path``). Then the first pylstm with compiled modules further
    on ``sys.path`` is imported instead, whole (its own ``__init__``, version
    and submodules: nothing of the checkout runs), and put in ``sys.modules``,
    which is what ``import pylstm`` returns; it is also returned here. A
    checkout whose version differs from the installed one's gets a warning.
    Without an installed pylstm, ImportError says how to install one.
    """
    import importlib.machinery
    import importlib.util
    import os
    import re
    import sys
    import warnings

    if importlib.util.find_spec(__name__ + "._lstm") is not None:
        return None
    here = os.path.realpath(os.path.dirname(__file__))
    for entry in sys.path:
        spec = importlib.machinery.PathFinder.find_spec(__name__, [entry])
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            continue
        folder = os.path.realpath(list(spec.submodule_search_locations)[0])
        if folder != here and any(
                os.path.exists(os.path.join(folder, "_lstm" + suffix))
                for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            break
    else:
        raise ImportError(
            f"{here} is pylstm's source, without its compiled modules, and no installed "
            "pylstm was found: install the package with `pip install .` in the source folder")
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module
    spec.loader.exec_module(module)
    try:
        with open(os.path.join(os.path.dirname(here), "meson.build"), encoding="utf-8") as f:
            source = re.search(r"\bversion\s*:\s*'([^']*)'", f.read())
    except OSError:
        source = None
    if source and source.group(1) != module.__version__:
        warnings.warn(
            f"running the installed pylstm {module.__version__} ({folder}), not the source "
            f"of pylstm {source.group(1)} in {os.path.dirname(here)}: run `pip install .` "
            "there to install it", stacklevel=2)
    return module


if _installed_package_for_checkout() is None:
    from . import datasets, interop
    from ._config import show_config
    from ._estimators import LSTMClassifier, LSTMRegressor
    from ._io import ModelFileError, load, save
    from ._language_model import LSTMLanguageModel
    from ._layer import LSTM
    from ._onnx import export_onnx
    from ._stream import LSTMStream
    from ._version import __version__

    __all__ = [
        "LSTM",
        "LSTMClassifier",
        "LSTMLanguageModel",
        "LSTMRegressor",
        "LSTMStream",
        "ModelFileError",
        "datasets",
        "export_onnx",
        "interop",
        "load",
        "save",
        "show_config",
        "__version__",
    ]
