"""pylstm: fast LSTM recurrent networks for CPUs.

Typed Cython kernels on BLAS (through :mod:`scipy.linalg.cython_blas`) under a
NumPy and scikit-learn API.
"""


def _locate_compiled_package():
    """Point the package at the installed, compiled modules when run from a checkout.

    ``python -m pylstm`` in the source folder imports this file from the
    checkout, whose ``pylstm/`` holds no compiled kernels. If an installed
    pylstm with kernels is on ``sys.path``, its folder is put first on the
    package's ``__path__`` so that every submodule comes from the installation.
    """
    import importlib.machinery
    import os
    import sys

    def has_kernels(folder):
        return any(os.path.exists(os.path.join(folder, "_lstm" + suffix))
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)

    here = os.path.dirname(os.path.abspath(__file__))
    if has_kernels(here):
        return
    for entry in sys.path:
        folder = os.path.join(os.path.abspath(entry or os.curdir), "pylstm")
        if folder != here and has_kernels(folder):
            __path__.insert(0, folder)
            return
    raise ImportError(
        "pylstm's compiled kernels are not built here; install the package with "
        "`pip install .` (the source folder alone cannot be imported)"
    )


_locate_compiled_package()

from . import datasets, interop  # noqa: E402
from ._config import show_config  # noqa: E402
from ._estimators import LSTMClassifier, LSTMRegressor  # noqa: E402
from ._io import ModelFileError, load, save  # noqa: E402
from ._language_model import LSTMLanguageModel  # noqa: E402
from ._layer import LSTM  # noqa: E402
from ._onnx import export_onnx  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "LSTMClassifier",
    "LSTMLanguageModel",
    "LSTMRegressor",
    "ModelFileError",
    "datasets",
    "export_onnx",
    "interop",
    "load",
    "save",
    "show_config",
    "__version__",
]
