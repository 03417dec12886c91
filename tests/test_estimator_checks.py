"""scikit-learn's API compliance suite on LSTMClassifier and LSTMRegressor.

These checks only feed 2-D input (univariate sequences, one column per time
step); tests/test_estimators.py covers 3-D and list (variable-length) input.
"""

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from pylstm import LSTMClassifier, LSTMRegressor

# Every check currently passes, so no check is expected to fail. If one ever
# has to be listed here, give the reason as the value:
# {"check_name": "why it fails"}.
EXPECTED_FAILED_CHECKS = {}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS


# hidden_size=16 (instead of the default 64) keeps the suite fast; the
# defaults of every other parameter are kept, and the checks that test
# learning (check_classifiers_train, check_regressors_train) still pass.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    [
        LSTMClassifier(hidden_size=16, random_state=0),
        LSTMRegressor(hidden_size=16, random_state=0),
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
