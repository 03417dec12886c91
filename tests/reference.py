"""The NumPy reference LSTM, shared by the tests and the benchmarks.

A plain NumPy LSTM with PyTorch's batch-first API, parameter names and gate
order (i, f, g, o): the oracle that pylstm's kernels are checked against
(``numpy_lstm`` fixture of ``tests/conftest.py``) and the "numpy" column of
``benchmarks/bench_lstm.py`` (loaded by path there, see ``benchmarks/_common.py``).
Not a test module and not part of the package.

Forward: one matrix product for the input projection of all steps, then a
Python loop over time with one product per step; optionally from given
initial states, with projections (``weight_hr``, PyTorch's ``proj_size``)
and with recurrent-dropout masks on h_{t-1} (inference-style forward only:
:meth:`NumpyLSTM.backward` covers the plain LSTM). Backward: full
backpropagation through time over the same loop, then whole-sequence products
for the weight gradients and the input gradient. Variable lengths are masked:
past its length a sequence's state is frozen and its output is zero; the
reverse direction reads each sequence reversed within its own length.
"""

import numpy as np


def sigmoid(z, out=None):
    """Logistic function written through tanh, so that it cannot overflow.

    Parameters
    ----------
    z : ndarray
        Pre-activations.
    out : ndarray, optional
        Where to write the result (may be ``z``).

    Returns
    -------
    ndarray
        ``1 / (1 + exp(-z))``, in the dtype of ``z``.
    """
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class NumpyLSTM:
    """A multi-layer, optionally bidirectional LSTM in NumPy.

    Parameters
    ----------
    state_dict : dict of str to ndarray
        PyTorch-named parameters (``weight_ih_l0``, ``weight_hh_l0``,
        ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0`` with projections,
        ``..._reverse``), as returned by ``pylstm.LSTM.state_dict()``; the
        sizes, layers and directions are read from it.
    dtype : dtype, default=np.float64
        The dtype every computation runs in.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm import LSTM
    >>> layer = LSTM(3, 4, random_state=0, dtype=np.float64)
    >>> X = np.ones((2, 5, 3))
    >>> out, (h_n, c_n) = NumpyLSTM(layer.state_dict()).forward(X, training=False)
    >>> bool(np.allclose(out, layer.forward(X)[0]))
    True
    """

    def __init__(self, state_dict, dtype=np.float64):
        self.dtype = np.dtype(dtype)
        self.params = {k: np.ascontiguousarray(v, dtype=self.dtype)
                       for k, v in state_dict.items()}
        self.H = self.params["weight_ih_l0"].shape[0] // 4  # units of c
        self.R = self.params["weight_hh_l0"].shape[1]  # units of h (proj_size, or H)
        self.L = sum(1 for k in self.params if k.startswith("weight_ih") and "reverse" not in k)
        self.D = 2 if "weight_ih_l0_reverse" in self.params else 1
        self._cache = None

    def _direction(self, layer, d):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        p = self.params
        return p["weight_ih" + sfx], p["weight_hh" + sfx], p["bias_ih" + sfx] + p["bias_hh" + sfx]

    def _dir_forward(self, x, mask, w_ih, w_hh, bias, training, h0=None, c0=None,
                     w_hr=None, h_mask=None):
        T, B, n_in = x.shape
        H, R = self.H, self.R
        z_all = (x.reshape(T * B, n_in) @ w_ih.T).reshape(T, B, 4 * H)
        z_all += bias
        h = np.zeros((B, R), dtype=self.dtype) if h0 is None else h0.astype(self.dtype)
        c = np.zeros((B, H), dtype=self.dtype) if c0 is None else c0.astype(self.dtype)
        out = np.empty((T, B, R), dtype=self.dtype)
        if training:
            tanh_c, c_prev, h_prev = (np.empty((T, B, H), dtype=self.dtype) for _ in range(3))
        for t in range(T):
            z = z_all[t]  # the activated gates overwrite the pre-activations
            z += (h if h_mask is None else h * h_mask) @ w_hh.T
            sigmoid(z[:, :2 * H], out=z[:, :2 * H])
            np.tanh(z[:, 2 * H:3 * H], out=z[:, 2 * H:3 * H])
            sigmoid(z[:, 3 * H:], out=z[:, 3 * H:])
            i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            c_new = f * c + i * g
            th = np.tanh(c_new)
            h_new = o * th if w_hr is None else (o * th) @ w_hr.T
            if training:
                tanh_c[t], c_prev[t], h_prev[t] = th, c, h
            if mask is None:
                out[t] = h_new
                h, c = h_new, c_new
            else:
                np.multiply(h_new, mask[t], out=out[t])
                h = np.where(mask[t], h_new, h)
                c = np.where(mask[t], c_new, c)
        cache = (x, z_all, tanh_c, c_prev, h_prev) if training else None
        return out, h, c, cache

    def _dir_backward(self, cache, d_out, mask, w_ih, w_hh):
        x, acts, tanh_c, c_prev, h_prev = cache
        T, B, n_in = x.shape
        H = self.H
        dh = np.zeros((B, H), dtype=self.dtype)
        dc = np.zeros((B, H), dtype=self.dtype)
        dz_all = np.empty((T, B, 4 * H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            a = acts[t]
            i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            th = tanh_c[t]
            if mask is None:
                dhn = dh + d_out[t]
                dcn = dc + dhn * o * (1 - th * th)
            else:
                dhn = mask[t] * (dh + d_out[t])
                dcn = mask[t] * dc + dhn * o * (1 - th * th)
            dz = dz_all[t]
            dz[:, :H] = dcn * g * i * (1 - i)
            dz[:, H:2 * H] = dcn * c_prev[t] * f * (1 - f)
            dz[:, 2 * H:3 * H] = dcn * i * (1 - g * g)
            dz[:, 3 * H:] = dhn * th * o * (1 - o)
            if mask is None:
                dc = dcn * f
                dh = dz @ w_hh
            else:  # past a sequence's length its state gradient passes through unchanged
                keep = 1 - mask[t]
                dc = dcn * f + keep * dc
                dh = dz @ w_hh + keep * dh
        dz2 = dz_all.reshape(T * B, 4 * H)
        dw_ih = dz2.T @ x.reshape(T * B, n_in)
        dw_hh = dz2.T @ h_prev.reshape(T * B, H)
        dx = (dz2 @ w_ih).reshape(T, B, n_in)
        return dx, dw_ih, dw_hh, dz2.sum(axis=0)

    def forward(self, X, lengths=None, training=True, h0=None, c0=None,
                recurrent_masks=None):
        """Run the LSTM over a batch.

        Parameters
        ----------
        X : ndarray of shape (B, T, I)
            Input sequences.
        lengths : array-like of int of shape (B,), optional
            Valid steps of each sequence (all ``T`` when None).
        training : bool, default=True
            Keep what :meth:`backward` needs (not with projections or masks).
        h0, c0 : ndarray of shape (L * D, B, R) and (L * D, B, H), optional
            Initial states (zeros when None); R is ``proj_size`` or H.
        recurrent_masks : ndarray of shape (L * D, B, R), optional
            Multipliers of h_{t-1} in the recurrent product, the same at
            every step (recurrent dropout).

        Returns
        -------
        out : ndarray of shape (B, T, D * R)
            The last layer's outputs (zero past each length).
        (h_n, c_n) : tuple of ndarray of shape (L * D, B, R) and (L * D, B, H)
            Final states of every layer and direction.
        """
        projected = "weight_hr_l0" in self.params
        if training and (projected or recurrent_masks is not None):
            raise ValueError("backward() of the reference covers the plain LSTM only: "
                             "use training=False with projections or masks")
        B, T, _ = X.shape
        x = np.ascontiguousarray(X.transpose(1, 0, 2), dtype=self.dtype)
        mask = rev = None
        if lengths is not None:
            lens = np.asarray(lengths)[None, :]
            steps = np.arange(T)[:, None]
            mask = (steps < lens).astype(self.dtype)[:, :, None]
            # rev[t, b]: the step the reverse direction reads at t (padding maps to itself).
            rev = np.where(steps < lens, lens - 1 - steps, steps)
        cols = np.arange(B)[None, :]
        h_n, c_n, caches = [], [], []
        layer_in = x
        for layer in range(self.L):
            outs = []
            for d in range(self.D):
                w_ih, w_hh, bias = self._direction(layer, d)
                if d == 0:
                    seq = layer_in
                elif rev is None:
                    seq = np.ascontiguousarray(layer_in[::-1])
                else:
                    seq = layer_in[rev, cols]
                k = layer * self.D + d
                out, h, c, cache = self._dir_forward(
                    seq, mask, w_ih, w_hh, bias, training,
                    None if h0 is None else h0[k], None if c0 is None else c0[k],
                    self.params.get(f"weight_hr_l{layer}" + ("_reverse" if d else "")),
                    None if recurrent_masks is None else recurrent_masks[k])
                if d == 1:
                    out = out[::-1] if rev is None else out[rev, cols]
                outs.append(out)
                caches.append(cache)
                h_n.append(h)
                c_n.append(c)
            layer_in = np.concatenate(outs, axis=2) if self.D == 2 else outs[0]
        self._cache = (mask, rev, caches) if training else None
        return layer_in.transpose(1, 0, 2), (np.stack(h_n), np.stack(c_n))

    def backward(self, d_out):
        """Backpropagate through time after ``forward(training=True)``.

        Parameters
        ----------
        d_out : ndarray of shape (B, T, D * H)
            Gradient of the loss with respect to ``out``.

        Returns
        -------
        dX : ndarray of shape (B, T, I)
            Gradient with respect to the input.
        grads : dict of str to ndarray
            Gradient of every parameter, under its ``state_dict`` name.
        """
        mask, rev, caches = self._cache
        self._cache = None
        H = self.H
        cols = np.arange(d_out.shape[0])[None, :]
        grad = np.ascontiguousarray(d_out.transpose(1, 0, 2), dtype=self.dtype)
        grads = {}
        for layer in range(self.L - 1, -1, -1):
            dx_total = 0
            for d in range(self.D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                g = grad[:, :, d * H:(d + 1) * H]
                if d == 1:
                    g = g[::-1] if rev is None else g[rev, cols]
                w_ih, w_hh, _ = self._direction(layer, d)
                dx, dw_ih, dw_hh, db = self._dir_backward(caches[layer * self.D + d], g, mask,
                                                          w_ih, w_hh)
                if d == 1:
                    dx = dx[::-1] if rev is None else dx[rev, cols]
                dx_total = dx_total + dx
                grads.update({"weight_ih" + sfx: dw_ih, "weight_hh" + sfx: dw_hh,
                              "bias_ih" + sfx: db, "bias_hh" + sfx: db.copy()})
            grad = dx_total
        return grad.transpose(1, 0, 2), grads
