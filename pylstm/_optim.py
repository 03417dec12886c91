"""Stochastic optimizers and gradient clipping in plain NumPy.

The optimizers own a list of parameter arrays and update them **in place**
from a list of gradient arrays aligned with them. Every update is an in-place
operation on the parameter, so a float32 parameter stays float32; the state
buffers (momentum, moment estimates) have the dtype of their parameter.

The update rules follow ``torch.optim`` (default options), so that the same
hyperparameters give the same trajectory:

* SGD: ``v = momentum * v + g``; ``p -= lr * v``, or with Nesterov momentum
  ``p -= lr * (g + momentum * v)``.
* Adam (Kingma and Ba, 2015): ``m = beta_1 * m + (1 - beta_1) * g``;
  ``v = beta_2 * v + (1 - beta_2) * g**2``;
  ``p -= lr * m_hat / (sqrt(v_hat) + epsilon)`` with the bias-corrected
  ``m_hat = m / (1 - beta_1**t)`` and ``v_hat = v / (1 - beta_2**t)``.
* RMSprop (Hinton): ``v = rho * v + (1 - rho) * g**2``;
  ``p -= lr * g / (sqrt(v) + epsilon)``.

``state_dict`` and ``load_state_dict`` save and restore the iteration counter,
the current learning rate and the buffers, so that a run can be continued
(warm start, ``partial_fit``) with an identical trajectory.
"""

import math
import numbers
import warnings

import numpy as np

from ._arrays import ADAM_SPLIT_MIN, adam_update_many, sum_squares, sum_squares_many
from ._container import ModelFileError, read_bool, read_float, read_int, read_object, read_str
from ._threads import loop_threads
from ._workspace import Workspace

#: Dtypes of the compiled updates (float32 and float64); others take NumPy's passes.
_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = [
    "AdamOptimizer",
    "RMSpropOptimizer",
    "SGDOptimizer",
    "clip_grad_norm",
    "clip_grad_value",
    "make_optimizer",
    "reconfigure_optimizer",
    "warn_if_diverging",
]

#: An epoch's mean loss this many times the first batch's loss of a fit is taken
#: for divergence: no optimizer that converges climbs ten orders of magnitude.
DIVERGENCE_FACTOR = 1e10

_OPTIMIZER_NAMES = ("adam", "rmsprop", "sgd")


def _check_real(value, name, low, high, *, low_closed=True, high_closed=True):
    """Return ``value`` as a Python float, checking it lies in the given interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    low_ok = value >= low if low_closed else value > low
    high_ok = value <= high if high_closed else value < high
    if not (low_ok and high_ok):  # also rejects NaN
        left = "[" if low_closed else "("
        right = "]" if high_closed else ")"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value}")
    return value


def _check_params(params):
    """Return ``params`` as a list of writeable floating NumPy arrays."""
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray):
            raise TypeError(f"params[{i}] must be a numpy.ndarray, got {type(p).__name__}")
        if not np.issubdtype(p.dtype, np.floating):
            raise TypeError(f"params[{i}] must have a floating dtype, got {p.dtype}")
        if not p.flags.writeable:
            raise ValueError(f"params[{i}] is read-only; the optimizer updates it in place")
    # Each parameter is updated once per step, and Adam's compiled update may
    # update two at once on two threads (adam_update_many): they must not overlap.
    for i, p in enumerate(params):
        for j in range(i):
            if np.shares_memory(p, params[j]):
                raise ValueError(f"params[{j}] and params[{i}] share memory; each entry "
                                 "must belong to one parameter")
    return params


def _out(tmp, a):
    """Return ``tmp`` as the ``out=`` of a ufunc over ``a``, or None if their dtypes differ.

    ``tmp`` has the gradient's dtype, the state buffers the parameter's. A result
    computed from a buffer keeps the buffer's dtype (neither rounded nor widened),
    so it goes into ``tmp`` only when the two dtypes agree, else into a new array.
    """
    return tmp if tmp.dtype == a.dtype else None


def _accumulate_square(v, g, decay, tmp):
    """Update the running mean of squares ``v = decay * v + (1 - decay) * g**2`` in place.

    ``tmp``, an array like ``g``, takes ``(1 - decay) * g**2``.
    """
    v *= decay
    np.square(g, out=tmp)
    tmp *= 1.0 - decay
    v += tmp


def _divide_by_rms(num, v, epsilon, tmp, bias=1.0):
    """Return ``num / (sqrt(v) / sqrt(bias) + epsilon)``: Adam's and RMSprop's step, before lr.

    Parameters
    ----------
    num : numpy.ndarray
        Numerator (Adam's first moment, RMSprop's gradient).
    v : numpy.ndarray
        Running mean of squared gradients, of the parameter's dtype.
    epsilon : float
        Added to the root.
    tmp : numpy.ndarray
        Scratch array like the gradient; holds the result when it has ``v``'s dtype.
    bias : float, default=1.0
        Adam's bias correction ``1 - beta_2**t`` of ``v``.

    Returns
    -------
    numpy.ndarray
        The quotient, of ``v``'s dtype: ``tmp`` or a new array.
    """
    denom = np.sqrt(v, out=_out(tmp, v))
    if bias != 1.0:  # dividing by 1 is exact: skip the pass
        denom /= math.sqrt(bias)
    denom += epsilon
    np.divide(num, denom, out=denom, casting="same_kind")
    return denom


class _BaseOptimizer:
    """Shared machinery: parameter list, counter, learning rate and state.

    Subclasses set ``_name`` and ``_buffer_names`` and implement
    ``_update(p, g, buffers)`` where ``buffers`` is the tuple of the state
    arrays of that parameter, in the order of ``_buffer_names``.
    """

    _name = ""
    _buffer_names = ()

    def __init__(self, params, learning_rate_init):
        self.params = _check_params(params)
        self.learning_rate_init = _check_real(
            learning_rate_init, "learning_rate_init", 0.0, math.inf, low_closed=False
        )
        self.learning_rate = self.learning_rate_init
        self.t = 0
        self._workspace = Workspace()
        self._buffers = {
            name: [np.zeros_like(p) for p in self.params] for name in self._buffer_names
        }

    def update_params(self, grads):
        """Apply one update step to the parameters, in place.

        Parameters
        ----------
        grads : list of numpy.ndarray
            Gradients of the loss with respect to ``params``, one per parameter
            and of the same shape.

        Raises
        ------
        ValueError
            If the number of gradients or one of their shapes does not match
            the parameters.
        """
        grads = self._checked_grads(grads)
        self.t += 1
        self._update_all(range(len(grads)), grads)

    def clip_and_update(self, grads, max_norm):
        """:func:`clip_grad_norm` of ``grads`` to ``max_norm``, then, if their norm
        is finite, :meth:`update_params`; a fit's step after its backward.

        Parameters
        ----------
        grads : list of numpy.ndarray
            As in :meth:`update_params`; they may be left scaled or not.
        max_norm : float
            Largest allowed global norm, >= 0 (``math.inf``: no clipping).

        Returns
        -------
        float
            The global norm before clipping; when it is not finite, nothing
            was updated.
        """
        norm = clip_grad_norm(grads, max_norm)
        if math.isfinite(norm):
            self.update_params(grads)
        return norm

    def _checked_grads(self, grads):
        """``grads`` as a list of arrays, one per parameter and of its shape."""
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(
                f"expected {len(self.params)} gradient arrays (one per parameter), got {len(grads)}"
            )
        grads = [np.asarray(g) for g in grads]
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            if g.shape != p.shape:
                raise ValueError(
                    f"grads[{i}] has shape {g.shape}, expected {p.shape} like params[{i}]"
                )
        return grads

    def _update_all(self, indices, grads):
        """:meth:`_update` of the parameters at ``indices``, one at a time."""
        # Fresh temporaries of the size of a parameter would come from newly
        # mapped pages under some allocator settings (Dask's workers): a page
        # fault per 4 KiB on every update. Each update writes them into a
        # kept array instead (the arithmetic is the same).
        with self._workspace.borrow() as arrays:
            for i in indices:
                p, g = self.params[i], grads[i]
                self._update(p, g, tuple(self._buffers[name][i] for name in self._buffer_names),
                             arrays.empty(f"tmp{i}", g.shape, g.dtype))

    def _update(self, p, g, buffers, tmp):  # pragma: no cover - abstract
        """Update ``p`` in place; ``tmp``, an array like ``g``, takes the temporaries."""
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_workspace"] = None  # scratch arrays, not state
        if "_flats" in state:
            # Views of the parameters (AdamOptimizer._fixed_flats): a copy would
            # make them arrays of their own, which the updates would then write.
            state["_flats"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._workspace = Workspace()

    def clear_scratch(self):
        """Drop what the updates keep between calls for speed alone (their scratch
        arrays; Adam's views of its parameters), as a fit does when it ends."""
        self._workspace.clear()

    def state_dict(self):
        """Return the optimizer state as a dict of copies.

        Returns
        -------
        dict
            ``'optimizer'`` (the name, a str), ``'t'`` (int, number of updates
            done), ``'learning_rate'`` (float, current learning rate) and, for
            each state buffer, a list of arrays (copies, one per parameter).
        """
        state = {
            "optimizer": self._name,
            "t": int(self.t),
            "learning_rate": float(self.learning_rate),
        }
        for name in self._buffer_names:
            state[name] = [b.copy() for b in self._buffers[name]]
        return state

    def load_state_dict(self, state):
        """Restore a state returned by :meth:`state_dict`.

        The buffers are copied into the existing ones, so they keep the dtype
        of their parameter.

        Parameters
        ----------
        state : dict
            A dict returned by ``state_dict()`` of an optimizer of the same
            class over parameters of the same shapes.

        Raises
        ------
        ValueError
            If ``state`` comes from another optimizer class, misses a key or
            holds buffers that do not match the parameters.
        """
        name = state.get("optimizer", self._name)
        if name != self._name:
            raise ValueError(
                f"state_dict is from a {name!r} optimizer, cannot load it into {self._name!r}"
            )
        missing = [k for k in ("t", "learning_rate", *self._buffer_names) if k not in state]
        if missing:
            raise ValueError(f"state_dict misses the keys {missing}")
        new_buffers = {}
        for key in self._buffer_names:
            arrays = list(state[key])
            if len(arrays) != len(self.params):
                raise ValueError(
                    f"state_dict[{key!r}] holds {len(arrays)} arrays, expected {len(self.params)}"
                )
            arrays = [np.asarray(a) for a in arrays]
            for i, (a, p) in enumerate(zip(arrays, self.params, strict=True)):
                if a.shape != p.shape:
                    raise ValueError(
                        f"state_dict[{key!r}][{i}] has shape {a.shape}, expected {p.shape}"
                    )
            new_buffers[key] = arrays
        t = int(state["t"])
        if t < 0:
            raise ValueError(f"state_dict['t'] must be >= 0, got {t}")
        learning_rate = _check_real(
            state["learning_rate"],
            "state_dict['learning_rate']",
            0.0,
            math.inf,
            low_closed=False,
        )
        # All checks passed: now mutate.
        for key, arrays in new_buffers.items():
            for buf, a in zip(self._buffers[key], arrays, strict=True):
                np.copyto(buf, a, casting="same_kind")
        self.t = t
        self.learning_rate = learning_rate

    # ------------------------------------------------------------------ saved state
    #: Constructor arguments besides ``learning_rate_init`` that a model file keeps,
    #: with their type (bool or float).
    _settings = {}
    #: Buffers that are running means of squares: negative entries mean a damaged file.
    _nonnegative_buffers = ()

    def _saved_state(self, names):
        """The description and arrays that :func:`pylstm.save` writes for this optimizer.

        Parameters
        ----------
        names : list of str
            The saved names of ``params``, aligned with them.

        Returns
        -------
        description : dict
            ``name``, ``t``, ``learning_rate``, ``learning_rate_init`` and the
            settings (``_settings``).
        arrays : dict of str to ndarray
            Buffer ``b`` of the parameter named ``n`` as ``optimizer.{b}.{n}``.

        Raises
        ------
        TypeError
            If this is not one of pylstm's optimizer classes (a subclass).
        """
        if _SAVED_OPTIMIZERS.get(self._name) is not type(self):
            raise TypeError(f"cannot save an optimizer of type {type(self).__name__}")
        state = self.state_dict()
        arrays = {}
        for buf in self._buffer_names:
            if len(state[buf]) != len(names):
                raise ValueError(f"the optimizer's {buf} do not match the network's parameters")
            arrays.update((f"optimizer.{buf}.{n}", a) for n, a in zip(names, state[buf],
                                                                       strict=True))
        description = {"name": self._name, "t": state["t"],
                       "learning_rate": state["learning_rate"],
                       "learning_rate_init": float(self.learning_rate_init)}
        description.update((key, kind(getattr(self, key))) for key, kind in self._settings.items())
        return description, arrays


class SGDOptimizer(_BaseOptimizer):
    """Stochastic gradient descent with (Nesterov) momentum.

    With ``v`` the momentum buffer (zero at start) and ``g`` the gradient::

        v = momentum * v + g
        p -= learning_rate * v                      # nesterov=False
        p -= learning_rate * (g + momentum * v)     # nesterov=True

    the update of ``torch.optim.SGD`` with ``dampening=0``. With a constant
    learning rate it is the same as the formulation ``v = momentum * v - lr * g;
    p += v`` of scikit-learn's ``SGDOptimizer``. With ``momentum=0`` it is
    plain gradient descent ``p -= learning_rate * g``.

    Parameters
    ----------
    params : list of numpy.ndarray
        Floating parameter arrays, updated in place; no two may share memory.
    learning_rate_init : float, default=0.01
        Initial learning rate, > 0. The attribute ``learning_rate`` holds the
        current one and may be changed between updates (schedules).
    momentum : float, default=0.9
        Momentum, in [0, 1].
    nesterov : bool, default=False
        Whether to use Nesterov's momentum.

    Attributes
    ----------
    params : list of numpy.ndarray
        The parameters (the arrays passed in, not copies).
    learning_rate : float
        Current learning rate.
    t : int
        Number of updates done.
    velocities : list of numpy.ndarray
        Momentum buffers, one per parameter, of the parameter's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._optim import SGDOptimizer
    >>> w = np.array([1.0, 2.0])
    >>> opt = SGDOptimizer([w], learning_rate_init=0.1, momentum=0.0)
    >>> opt.update_params([np.array([1.0, -1.0])])
    >>> w
    array([0.9, 2.1])
    >>> opt.t
    1
    """

    _name = "sgd"
    _buffer_names = ("velocities",)
    _settings = {"momentum": float, "nesterov": bool}

    def __init__(self, params, learning_rate_init=0.01, momentum=0.9, nesterov=False):
        super().__init__(params, learning_rate_init)
        self.momentum = _check_real(momentum, "momentum", 0.0, 1.0)
        self.nesterov = bool(nesterov)

    @property
    def velocities(self):
        return self._buffers["velocities"]

    def _update(self, p, g, buffers, tmp):
        (v,) = buffers
        lr = float(self.learning_rate)
        mu = self.momentum
        if mu == 0.0:
            p -= np.multiply(g, lr, out=tmp)
            return
        v *= mu
        v += g
        if self.nesterov:
            step = np.multiply(v, mu, out=_out(tmp, v))
            step += g
            step *= lr
        else:
            step = np.multiply(v, lr, out=_out(tmp, v))
        p -= step


class AdamOptimizer(_BaseOptimizer):
    """Adam: adaptive moment estimation (Kingma and Ba, 2015).

    With ``t`` the update counter (1 at the first update)::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        p -= lr * (m / (1 - beta_1**t)) / (sqrt(v / (1 - beta_2**t)) + epsilon)

    the update of the paper and of ``torch.optim.Adam``.

    Parameters
    ----------
    params : list of numpy.ndarray
        Floating parameter arrays, updated in place; no two may share memory.
    learning_rate_init : float, default=0.001
        Initial learning rate, > 0. The attribute ``learning_rate`` holds the
        current one and may be changed between updates.
    beta_1 : float, default=0.9
        Decay rate of the first moment estimate, in [0, 1).
    beta_2 : float, default=0.999
        Decay rate of the second moment estimate, in [0, 1).
    epsilon : float, default=1e-8
        Added to the denominator for numerical stability, > 0.

    Attributes
    ----------
    params : list of numpy.ndarray
        The parameters (the arrays passed in, not copies).
    learning_rate : float
        Current learning rate.
    t : int
        Number of updates done.
    ms, vs : list of numpy.ndarray
        First and second moment estimates, one per parameter, of the
        parameter's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._optim import AdamOptimizer
    >>> w = np.array([1.0, -1.0], dtype=np.float32)
    >>> opt = AdamOptimizer([w], learning_rate_init=0.1)
    >>> opt.update_params([np.array([3.0, -0.5], dtype=np.float32)])
    >>> np.round(w, 4)  # the first Adam step moves each entry by about lr
    array([ 0.9, -0.9], dtype=float32)
    """

    _name = "adam"
    _buffer_names = ("ms", "vs")
    _settings = {"beta_1": float, "beta_2": float, "epsilon": float}
    _nonnegative_buffers = ("vs",)

    def __init__(self, params, learning_rate_init=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        super().__init__(params, learning_rate_init)
        self.beta_1 = _check_real(beta_1, "beta_1", 0.0, 1.0, high_closed=False)
        self.beta_2 = _check_real(beta_2, "beta_2", 0.0, 1.0, high_closed=False)
        self.epsilon = _check_real(epsilon, "epsilon", 0.0, math.inf, low_closed=False)
        self._flats = None  # _fixed_flats's views, made at the first update

    @property
    def ms(self):
        return self._buffers["ms"]

    @property
    def vs(self):
        return self._buffers["vs"]

    def clear_scratch(self):
        """As :meth:`_BaseOptimizer.clear_scratch`, the views included."""
        super().clear_scratch()
        self._flats = None

    def _fixed_flats(self):
        """Per parameter, ``(dtype, p, m, v)`` flat when the three arrays are contiguous
        and of one compiled dtype, else None; made once for the parameter list (its
        arrays and the buffers stay: :meth:`load_state_dict` copies into them)."""
        cached = self.__dict__.get("_flats")
        if cached is None or cached[0] is not self.params:
            flats = []
            for p, m, v in zip(self.params, self.ms, self.vs, strict=True):
                ok = (p.dtype == m.dtype == v.dtype and p.dtype in _COMPILED_DTYPES
                      and p.flags.c_contiguous and m.flags.c_contiguous
                      and v.flags.c_contiguous)
                flats.append((p.dtype, p.reshape(-1), m.reshape(-1), v.reshape(-1))
                             if ok else None)
            cached = self._flats = (self.params, flats)
        return cached[1]

    def _compiled_groups(self, grads):
        """``(groups, rest)``: dtype -> the flat ``[ps, gs, ms, vs]`` of the parameters
        whose four arrays are contiguous and of that compiled dtype, and the
        indices of the others."""
        # The parameters' side is kept (_fixed_flats): at a small model's step this
        # loop's checks had cost half of the optimizer's Python (bench_fit.py, digits).
        groups, rest = {}, []
        for i, (g, fixed) in enumerate(zip(grads, self._fixed_flats(), strict=True)):
            if fixed is not None and g.dtype == fixed[0] and g.flags.c_contiguous:
                arrays = groups.get(fixed[0])
                if arrays is None:
                    arrays = groups[fixed[0]] = ([], [], [], [])
                arrays[0].append(fixed[1])
                arrays[1].append(g.reshape(-1))
                arrays[2].append(fixed[2])
                arrays[3].append(fixed[3])
            else:
                rest.append(i)
        return groups, rest

    def _update_group(self, arrays, grad_scale=1.0):
        """One compiled pass over a group of :meth:`_compiled_groups` (``t`` counted)."""
        b1, b2 = self.beta_1, self.beta_2
        total = sum(p.size for p in arrays[0])
        adam_update_many(*arrays, b1, b2, math.sqrt(1.0 - b2**self.t), self.epsilon,
                         float(self.learning_rate) / (1.0 - b1**self.t),
                         loop_threads() if total >= ADAM_SPLIT_MIN else 1, grad_scale)

    def update_params(self, grads):
        """One Adam step (see the class), as :meth:`_BaseOptimizer.update_params`."""
        # Contiguous parameters whose arrays share one dtype take one compiled
        # pass each, all of a dtype in one call (adam_update_many: the same
        # bits as NumPy's passes, which the others take, and no scratch).
        grads = self._checked_grads(grads)
        self.t += 1
        groups, rest = self._compiled_groups(grads)
        for arrays in groups.values():
            self._update_group(arrays)
        if rest:
            self._update_all(rest, grads)

    def clip_and_update(self, grads, max_norm):
        """As :meth:`_BaseOptimizer.clip_and_update`, the same bits; the gradients
        are left unscaled.

        Where every parameter's arrays are contiguous and of one compiled dtype
        (a fit's), the norm takes one call and the clipping factor goes into
        the update's pass (``adam_update_many``'s ``grad_scale``): a small
        model's step is then mostly its two passes
        (``tests/estimators/test_optim.py``).
        """
        grads = self._checked_grads(grads)
        groups, rest = self._compiled_groups(grads)
        if rest or len(groups) != 1:
            return super().clip_and_update(grads, max_norm)
        max_norm = _check_real(max_norm, "max_norm", 0.0, math.inf)
        (arrays,) = groups.values()
        sum_sq = sum_squares_many(arrays[1])
        if not math.isfinite(sum_sq):  # overflowed, or not finite: clip_grad_norm's way
            return super().clip_and_update(grads, max_norm)
        norm = math.sqrt(sum_sq)
        self.t += 1
        self._update_group(arrays, 1.0 if norm <= max_norm else _clip_factor(grads, max_norm,
                                                                             1.0, norm))
        return norm

    def _update(self, p, g, buffers, tmp):
        m, v = buffers
        b1, b2 = self.beta_1, self.beta_2
        step = float(self.learning_rate) / (1.0 - b1**self.t)
        m *= b1
        m += np.multiply(g, 1.0 - b1, out=tmp)
        _accumulate_square(v, g, b2, tmp)
        # lr * m_hat / (sqrt(v_hat) + eps): m's bias correction goes into the step size
        quotient = _divide_by_rms(m, v, self.epsilon, tmp, bias=1.0 - b2**self.t)
        quotient *= step
        p -= quotient


class RMSpropOptimizer(_BaseOptimizer):
    """RMSprop: scale the gradient by a running RMS of its past values.

    ::

        v = rho * v + (1 - rho) * g**2
        p -= learning_rate * g / (sqrt(v) + epsilon)

    the update of ``torch.optim.RMSprop`` with its defaults (``alpha=rho``,
    no momentum, not centered; ``epsilon`` is added outside the square root).

    Parameters
    ----------
    params : list of numpy.ndarray
        Floating parameter arrays, updated in place; no two may share memory.
    learning_rate_init : float, default=0.001
        Initial learning rate, > 0. The attribute ``learning_rate`` holds the
        current one and may be changed between updates.
    rho : float, default=0.9
        Decay rate of the running mean of squared gradients, in [0, 1).
    epsilon : float, default=1e-8
        Added to the denominator for numerical stability, > 0.

    Attributes
    ----------
    params : list of numpy.ndarray
        The parameters (the arrays passed in, not copies).
    learning_rate : float
        Current learning rate.
    t : int
        Number of updates done.
    square_avg : list of numpy.ndarray
        Running means of the squared gradients, one per parameter, of the
        parameter's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._optim import RMSpropOptimizer
    >>> w = np.array([0.0, 0.0])
    >>> opt = RMSpropOptimizer([w], learning_rate_init=0.01, rho=0.99)
    >>> opt.update_params([np.array([1.0, -4.0])])
    >>> np.round(w, 4)  # first step: lr * g / |0.1 * g| = 0.1 * sign(g)
    array([-0.1,  0.1])
    """

    _name = "rmsprop"
    _buffer_names = ("square_avg",)
    _settings = {"rho": float, "epsilon": float}
    _nonnegative_buffers = ("square_avg",)

    def __init__(self, params, learning_rate_init=0.001, rho=0.9, epsilon=1e-8):
        super().__init__(params, learning_rate_init)
        self.rho = _check_real(rho, "rho", 0.0, 1.0, high_closed=False)
        self.epsilon = _check_real(epsilon, "epsilon", 0.0, math.inf, low_closed=False)

    @property
    def square_avg(self):
        return self._buffers["square_avg"]

    def _update(self, p, g, buffers, tmp):
        (v,) = buffers
        _accumulate_square(v, g, self.rho, tmp)
        step = _divide_by_rms(g, v, self.epsilon, tmp)
        step *= float(self.learning_rate)
        p -= step


def make_optimizer(name, params, learning_rate_init, momentum=0.9, nesterovs_momentum=True):
    """Build an optimizer from its name, as the estimators' ``solver`` option.

    Parameters
    ----------
    name : {'adam', 'sgd', 'rmsprop'}
        Which optimizer.
    params : list of numpy.ndarray
        Floating parameter arrays, updated in place; no two may share memory.
    learning_rate_init : float
        Initial learning rate.
    momentum : float, default=0.9
        Momentum of ``'sgd'``; ignored by the others.
    nesterovs_momentum : bool, default=True
        Whether ``'sgd'`` uses Nesterov's momentum; ignored by the others.

    Returns
    -------
    SGDOptimizer, AdamOptimizer or RMSpropOptimizer
        The others' hyperparameters take their defaults.

    Raises
    ------
    ValueError
        If ``name`` is not one of the allowed names.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._optim import make_optimizer
    >>> opt = make_optimizer('sgd', [np.zeros(3)], 0.1, momentum=0.5)
    >>> type(opt).__name__, opt.momentum, opt.nesterov
    ('SGDOptimizer', 0.5, True)
    >>> make_optimizer('lbfgs', [np.zeros(3)], 0.1)
    Traceback (most recent call last):
    ...
    ValueError: optimizer name must be one of 'adam', 'rmsprop', 'sgd'; got 'lbfgs'
    """
    if name == "adam":
        return AdamOptimizer(params, learning_rate_init=learning_rate_init)
    if name == "sgd":
        return SGDOptimizer(
            params,
            learning_rate_init=learning_rate_init,
            momentum=momentum,
            nesterov=nesterovs_momentum,
        )
    if name == "rmsprop":
        return RMSpropOptimizer(params, learning_rate_init=learning_rate_init)
    allowed = ", ".join(repr(n) for n in _OPTIMIZER_NAMES)
    raise ValueError(f"optimizer name must be one of {allowed}; got {name!r}")


#: The optimizers a model file may name, by ``_name``.
_SAVED_OPTIMIZERS = {cls._name: cls for cls in (AdamOptimizer, RMSpropOptimizer, SGDOptimizer)}


def saved_optimizer_layout(description, shapes, where):
    """Check a saved optimizer's description; return what :func:`restore_optimizer` needs.

    Parameters
    ----------
    description : object
        The JSON value read from a file (written by ``_saved_state``).
    shapes : list of (str, tuple)
        The saved names and shapes of the parameters, aligned with them.
    where : str
        The description's place in the file, for messages.

    Returns
    -------
    plan : dict
        The optimizer's class, counter, learning rates and settings.
    expected : dict of str to tuple
        The buffers the file must hold, name to shape.

    Raises
    ------
    ModelFileError
        If the description is not that of a valid optimizer.
    """
    if not isinstance(description, dict):
        raise ModelFileError(f"{where} must be a JSON object")
    name = read_str(description.get("name"), f"{where}.name", set(_SAVED_OPTIMIZERS))
    cls = _SAVED_OPTIMIZERS[name]
    read_object(description, where, {"name", "t", "learning_rate", "learning_rate_init",
                                     *cls._settings})
    plan = {"cls": cls, "names": [n for n, _ in shapes],
            "t": read_int(description["t"], f"{where}.t", 0, 2**63 - 1),
            "learning_rate": read_float(description["learning_rate"],
                                        f"{where}.learning_rate", lo=0.0),
            "learning_rate_init": read_float(description["learning_rate_init"],
                                             f"{where}.learning_rate_init", lo=0.0),
            "settings": {key: (read_bool if kind is bool else read_float)(
                description[key], f"{where}.{key}") for key, kind in cls._settings.items()}}
    try:  # the optimizer's own range checks, on a throwaway instance
        cls([np.zeros(1)], plan["learning_rate_init"], **plan["settings"])
        if plan["learning_rate"] <= 0:
            raise ValueError("learning_rate must be > 0")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"invalid optimizer settings in {where}: {exc}") from None
    expected = {f"optimizer.{buf}.{n}": shape for buf in cls._buffer_names
                for n, shape in shapes}
    return plan, expected


def restore_optimizer(plan, params, arrays):
    """The optimizer over ``params`` in the saved state (checked by
    :func:`saved_optimizer_layout`; ``arrays`` holds its buffers)."""
    cls = plan["cls"]
    state = {"optimizer": cls._name, "t": plan["t"], "learning_rate": plan["learning_rate"]}
    for buf in cls._buffer_names:
        state[buf] = [arrays[f"optimizer.{buf}.{n}"] for n in plan["names"]]
        for n, arr in zip(plan["names"], state[buf], strict=True):
            if buf in cls._nonnegative_buffers and (arr < 0).any():
                raise ModelFileError(f"array optimizer.{buf}.{n} (a running mean of squares) "
                                     "has negative entries")
    optimizer = cls(params, plan["learning_rate_init"], **plan["settings"])
    optimizer.load_state_dict(state)
    return optimizer


def reconfigure_optimizer(optimizer, name, params, learning_rate_init, momentum=0.9,
                          nesterovs_momentum=True):
    """The optimizer to continue training with, under settings that may have changed.

    For ``warm_start`` and ``partial_fit`` after ``set_params``. The same
    solver keeps ``optimizer`` and its state (counter, moments, velocities)
    and takes the new learning rate (and SGD's momentum settings) from the
    next update on, as a learning-rate schedule would. Another solver gets a
    new optimizer from :func:`make_optimizer`, as scikit-learn's MLP builds
    one: the state of one solver means nothing to another.

    Parameters
    ----------
    optimizer : SGDOptimizer, AdamOptimizer or RMSpropOptimizer
        The optimizer of the fitted model.
    name, params, learning_rate_init, momentum, nesterovs_momentum
        As in :func:`make_optimizer`.

    Returns
    -------
    SGDOptimizer, AdamOptimizer or RMSpropOptimizer
        ``optimizer`` itself, updated, or a new one.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._optim import make_optimizer, reconfigure_optimizer
    >>> opt = make_optimizer('adam', [np.zeros(3)], 0.1)
    >>> reconfigure_optimizer(opt, 'adam', opt.params, 0.01) is opt, opt.learning_rate
    (True, 0.01)
    >>> type(reconfigure_optimizer(opt, 'sgd', opt.params, 0.01)).__name__
    'SGDOptimizer'
    """
    if name != optimizer._name:
        return make_optimizer(name, params, learning_rate_init, momentum=momentum,
                              nesterovs_momentum=nesterovs_momentum)
    lr = _check_real(learning_rate_init, "learning_rate_init", 0.0, math.inf, low_closed=False)
    if lr != optimizer.learning_rate_init:  # else any rate the state holds goes on
        optimizer.learning_rate_init = optimizer.learning_rate = lr
    if name == "sgd":
        optimizer.momentum = _check_real(momentum, "momentum", 0.0, 1.0)
        optimizer.nesterov = bool(nesterovs_momentum)
    return optimizer


def warn_if_diverging(loss, first_loss, epoch, learning_rate_init, stacklevel=2):
    """Warn (RuntimeWarning) if ``loss`` is :data:`DIVERGENCE_FACTOR` times ``first_loss``.

    For a loss that stays finite while the training diverges (a learning rate
    far too large with gradient clipping); a non-finite loss is an error of
    its own. Returns whether it warned.

    Examples
    --------
    >>> import warnings
    >>> from pylstm._optim import warn_if_diverging
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_if_diverging(4e61, 0.47, 3, 1e30)
    True
    >>> print(str(caught[0].message).split(":")[0])
    the training loss grew from 0.47 (first batch) to 4e+61 (epoch 3)
    """
    if not (first_loss > 0 and loss > DIVERGENCE_FACTOR * first_loss):
        return False
    warnings.warn(
        f"the training loss grew from {first_loss:.3g} (first batch) to {loss:.3g} (epoch "
        f"{epoch}): the training diverges; lower learning_rate_init (now "
        f"{learning_rate_init!r})", RuntimeWarning, stacklevel=stacklevel + 1)
    return True


def _global_norm_parts(grads):
    """Return ``(scale, root)`` with the global L2 norm of ``grads`` = ``scale * root``.

    The sum of squares is accumulated in float64. If it overflows while every
    entry is finite (float64 gradients above ~1e154), the entries are divided
    by the largest magnitude first, so that ``root`` is always finite for
    finite gradients. For non-finite gradients ``root`` is inf or nan.
    """
    sum_sq = 0.0
    with np.errstate(over="ignore"):  # handled below
        for g in grads:
            if g.dtype in _COMPILED_DTYPES and g.flags.c_contiguous:
                sum_sq += sum_squares(g.reshape(-1))  # one compiled pass, no float64 copy
            else:
                sum_sq += float(np.square(g, dtype=np.float64).sum())
    if math.isfinite(sum_sq):
        return 1.0, math.sqrt(sum_sq)
    scale = max((float(np.max(np.abs(g))) for g in grads if g.size), default=0.0)
    if not math.isfinite(scale):  # an inf (sum_sq is inf) or nan (sum_sq is nan) entry
        return 1.0, math.sqrt(sum_sq)
    sum_sq = 0.0
    for g in grads:
        sum_sq += float(np.square(np.asarray(g, dtype=np.float64) / scale).sum())
    return scale, math.sqrt(sum_sq)


def clip_grad_norm(grads, max_norm):
    """Scale the gradients in place so that their global L2 norm is <= ``max_norm``.

    The global norm is that of all arrays concatenated. It is computed in
    float64, so float32 gradients whose squares overflow float32 are handled.
    If it exceeds ``max_norm``, every array is multiplied by the same factor,
    which preserves the direction of the overall gradient; the factor is
    shrunk by a few units in the last place of the gradients' dtype so that
    rounding cannot leave the new norm above ``max_norm``. Otherwise the
    gradients are left untouched.

    If the norm is not finite (the gradients contain inf or NaN), the
    gradients are left unchanged and the non-finite norm is returned, so the
    caller can skip the step.

    Parameters
    ----------
    grads : list of numpy.ndarray
        Floating gradient arrays, modified in place.
    max_norm : float
        Largest allowed global norm, >= 0.

    Returns
    -------
    float
        The global norm before clipping.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._optim import clip_grad_norm
    >>> grads = [np.array([3.0]), np.array([[4.0]])]
    >>> clip_grad_norm(grads, max_norm=1.0)
    5.0
    >>> print(np.round(grads[0], 6), np.round(grads[1], 6))
    [0.6] [[0.8]]
    >>> clip_grad_norm(grads, max_norm=10.0) <= 1.0  # small gradients: unchanged
    True
    """
    max_norm = _check_real(max_norm, "max_norm", 0.0, math.inf)
    grads = list(grads)
    scale, root = _global_norm_parts(grads)
    total_norm = scale * root
    if not math.isfinite(root) or total_norm <= max_norm:
        return float(total_norm)
    coef = _clip_factor(grads, max_norm, scale, root)
    for g in grads:
        g *= coef
    return float(total_norm)


def _clip_factor(grads, max_norm, scale, root):
    """The factor of :func:`clip_grad_norm` for the norm ``scale * root`` above
    ``max_norm``: shrunk by a few units in the last place of the gradients' dtype,
    so that rounding cannot leave the new norm above ``max_norm``."""
    eps = max((float(np.finfo(g.dtype).eps) for g in grads), default=0.0)
    return (max_norm / scale) / root * (1.0 - 4.0 * eps)


def clip_grad_value(grads, clip_value):
    """Clip every gradient entry in place to ``[-clip_value, clip_value]``.

    Parameters
    ----------
    grads : list of numpy.ndarray
        Floating gradient arrays, modified in place.
    clip_value : float
        Largest allowed magnitude, >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._optim import clip_grad_value
    >>> grads = [np.array([-3.0, 0.5, 2.0])]
    >>> clip_grad_value(grads, 1.0)
    >>> grads[0]
    array([-1. ,  0.5,  1. ])
    """
    clip_value = _check_real(clip_value, "clip_value", 0.0, math.inf)
    for g in grads:
        np.clip(g, -clip_value, clip_value, out=g)
