"""The projected kernels (``forward_projected``, ``backward_projected``) refuse
arguments that would make them read or write out of bounds, as the other
entry points do, before any work."""

import numpy as np
import pytest

from pylstm import _lstm


def _forward_args(lengths, B=2, I=3, H=4, P=2):
    N = 5  # the valid steps of [3, 2]; bad lengths are refused before any shape
    return (np.ones((N, I)), np.asarray(lengths, np.intc), np.ones((4 * H, I)),
            np.ones((4 * H, P)), np.zeros(4 * H), np.ones((P, H)), np.zeros((B, P)),
            np.zeros((B, H)), np.zeros((N, P)), 0)


@pytest.mark.parametrize("lengths", [[1, 3], [3, 0], [1, 10**8], [2, -1]])
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_out_of_order_are_refused(lengths, reverse):
    with pytest.raises(ValueError, match="lengths must be at least 1 and in decreasing order"):
        _lstm.forward_projected(*_forward_args(lengths), reverse)
    lens = np.asarray(lengths, np.intc)
    N, G, H, P, I = 5, 16, 4, 2, 3
    with pytest.raises(ValueError, match="lengths must be at least 1 and in decreasing order"):
        _lstm.backward_projected(np.zeros((N, I)), lens, np.zeros((G, P)), np.zeros((P, H)),
                                 np.zeros((2, H)), np.zeros((N, G)), np.zeros((N, H)),
                                 np.zeros((N, H)), np.zeros((N, P)), np.zeros((N, P)), 0,
                                 reverse, np.zeros((2, P)), np.zeros((2, H)),
                                 np.zeros((G, I)), np.zeros((G, P)), np.zeros(G),
                                 np.zeros((P, H)))


def test_negative_offsets_are_refused():
    with pytest.raises(ValueError, match="offset"):
        _lstm.forward_projected(*_forward_args([3, 2])[:-1], -1, False)
    N, G, H, P, I = 5, 16, 4, 2, 3
    with pytest.raises(ValueError, match="offset must be >= 0"):
        _lstm.backward_projected(np.zeros((N, I)), np.array([3, 2], np.intc),
                                 np.zeros((G, P)), np.zeros((P, H)), np.zeros((2, H)),
                                 np.zeros((N, G)), np.zeros((N, H)), np.zeros((N, H)),
                                 np.zeros((N, P)), np.zeros((N, P)), -10**12, False,
                                 np.zeros((2, P)), np.zeros((2, H)), np.zeros((G, I)),
                                 np.zeros((G, P)), np.zeros(G), np.zeros((P, H)))


def test_shapes_that_do_not_fit_are_refused():
    args = list(_forward_args([3, 2]))
    args[3] = np.ones((16, 3))  # w_hh with H columns instead of P
    with pytest.raises(ValueError, match="do not match 4H x I, 4H x P, P x H"):
        _lstm.forward_projected(*args, False)
    args = list(_forward_args([3, 2]))
    args[6] = np.zeros((2, 4))  # h with H columns
    with pytest.raises(ValueError, match=r"h \(2, 4\) and c \(2, 4\) must be"):
        _lstm.forward_projected(*args, False)
    args = list(_forward_args([3, 2]))
    with pytest.raises(ValueError, match="training needs gates, c_cache, m_cache"):
        _lstm.forward_projected(*args, False, np.zeros((5, 16)))
