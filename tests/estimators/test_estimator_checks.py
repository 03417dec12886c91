"""scikit-learn's API compliance suite on LSTMClassifier and LSTMRegressor.

These checks only feed 2-D input (univariate sequences, one column per time
step); tests/estimators/test_estimators.py covers 3-D and list (variable-length) input.
"""

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from pylstm import LSTMClassifier, LSTMRegressor

# The float64 instances pass every check. The default (float32) instances pass
# every check but one: check_sample_weight_equivalence_on_dense_data asks for
# the predictions of a weighted and a repeated-samples fit to agree to rtol
# 1e-7, finer than float32's rounding (test_sample_weight.py checks that
# equivalence in float64 and float32 at their own precision).
FLOAT32_EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data":
        "float32 rounds at 1.2e-7, above the check's rtol of 1e-7",
}


def _expected_failed_checks(estimator):
    return FLOAT32_EXPECTED_FAILED_CHECKS if estimator.dtype == "float32" else {}


# hidden_size=16 (instead of the default 64) keeps the suite fast, and the
# checks that test learning (check_classifiers_train, check_regressors_train)
# still pass. The float64 classifier uses learning_rate_init=0.002: at the
# default 0.005 its fit on the sample-weight check's data (30 steps of noise,
# random labels) has exploding gradients after about 50 epochs and amplifies
# rounding chaotically, so no weighting could agree to 1e-7.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [
        LSTMClassifier(hidden_size=16, learning_rate_init=0.002, dtype="float64",
                       random_state=0),
        LSTMRegressor(hidden_size=16, dtype="float64", random_state=0),
        LSTMClassifier(hidden_size=16, random_state=0),
        LSTMRegressor(hidden_size=16, random_state=0),
        LSTMRegressor(hidden_size=16, proj_size=4, dtype="float64", random_state=0),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_convergence_warning_is_the_sklearn_one():
    # The filter above silences sklearn's ConvergenceWarning; make sure that is
    # the class the estimators emit, so the filter does not hide anything else.
    with pytest.warns(ConvergenceWarning):
        LSTMRegressor(hidden_size=2, max_iter=1, random_state=0).fit([[0.0, 1.0]] * 4,
                                                                    [0.0, 1.0, 0.0, 1.0])
