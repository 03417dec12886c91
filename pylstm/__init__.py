"""pylstm: fast LSTM recurrent networks for CPUs.

Typed Cython kernels on BLAS (through :mod:`scipy.linalg.cython_blas`) under a
NumPy and scikit-learn API.
"""

from . import datasets
from ._estimators import LSTMClassifier, LSTMRegressor
from ._layer import LSTM

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMClassifier", "LSTMRegressor", "datasets", "__version__"]
