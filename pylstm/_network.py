"""The trainable stack behind the estimators.

``SequenceNetwork`` is LSTM layers (with dropout between them) followed by a
dense output layer. It computes the forward and backward pass of the whole
model on one batch and exposes its parameters and gradients as aligned lists
of arrays; losses live here too. It knows nothing of scikit-learn.
"""

import numpy as np

from ._layer import LSTM

__all__ = ["SequenceNetwork", "log_softmax", "softmax_cross_entropy", "squared_error"]


def log_softmax(z):
    """Row-wise log-softmax along the last axis, stable for any finite input.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import log_softmax
    >>> np.exp(log_softmax(np.array([[1000.0, 0.0]]))).round(3)
    array([[1., 0.]])
    """
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(z, y, weight):
    """Mean cross-entropy of logits ``z`` (N, C) for integer labels ``y`` (N,).

    ``weight`` (N,) gives each row's share of the mean (0 for ignored rows);
    it sums to 1. Returns the loss and its gradient with respect to ``z``.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import softmax_cross_entropy
    >>> loss, dz = softmax_cross_entropy(np.zeros((2, 2)), np.array([0, 1]), np.full(2, 0.5))
    >>> round(float(loss), 4)
    0.6931
    """
    logp = log_softmax(z)
    rows = np.arange(z.shape[0])
    loss = -np.dot(weight, logp[rows, y])
    dz = np.exp(logp)
    dz[rows, y] -= 1.0
    dz *= weight[:, None]
    return loss, dz


def squared_error(z, y, weight):
    """Half the weighted mean over rows of the squared error summed over outputs.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import squared_error
    >>> loss, dz = squared_error(np.array([[1.0]]), np.array([[0.0]]), np.ones(1))
    >>> float(loss), dz.tolist()
    (0.5, [[1.0]])
    """
    diff = z - y
    loss = 0.5 * np.dot(weight, (diff * diff).sum(axis=1))
    return loss, diff * weight[:, None]


class SequenceNetwork:
    """LSTM layers, dropout between them, and a dense output layer.

    Parameters
    ----------
    n_inputs : int
        Features per step.
    n_outputs : int
        Width of the dense output layer (classes or regression targets).
    hidden_size, num_layers, bidirectional, dropout
        As in the estimators.
    return_sequences : bool
        Output at every valid step (True) or from each sequence's final
        states (False).
    dtype : numpy.dtype
        float32 or float64.
    rng : numpy.random.RandomState
        Source of the initial weights.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._network import SequenceNetwork
    >>> net = SequenceNetwork(2, 3, 4, 1, False, 0.0, False, np.float64,
    ...                       np.random.RandomState(0))
    >>> net.forward(np.zeros((5, 6, 2)), np.full(5, 6)).shape
    (5, 3)
    """

    def __init__(self, n_inputs, n_outputs, hidden_size, num_layers, bidirectional,
                 dropout, return_sequences, dtype, rng):
        self.dtype = np.dtype(dtype)
        self.dropout = float(dropout)
        self.return_sequences = bool(return_sequences)
        self.layers = []
        in_size = n_inputs
        for _ in range(num_layers):
            layer = LSTM(in_size, hidden_size, 1, bidirectional, self.dtype,
                         random_state=rng)
            self.layers.append(layer)
            in_size = hidden_size * layer.num_directions
        bound = np.sqrt(6.0 / (in_size + n_outputs))
        self.coef = rng.uniform(-bound, bound, size=(in_size, n_outputs)).astype(self.dtype)
        self.intercept = np.zeros(n_outputs, dtype=self.dtype)
        self._cache = None

    # ------------------------------------------------------------------ parameters
    def parameters(self):
        """Live parameter arrays: each layer's (in state-dict order), then the head."""
        params = [p for layer in self.layers for p in layer.parameters()]
        return params + [self.coef, self.intercept]

    def penalised(self):
        """Booleans aligned with :meth:`parameters`: True for weight matrices (L2)."""
        return [p.ndim == 2 for p in self.parameters()]

    def get_state(self):
        """Copies of all parameters (a list aligned with :meth:`parameters`)."""
        return [p.copy() for p in self.parameters()]

    def set_state(self, state):
        """Copy parameters in place from a list made by :meth:`get_state`."""
        for p, s in zip(self.parameters(), state, strict=True):
            p[...] = s

    # ------------------------------------------------------------------ passes
    def features(self, X, lengths, training=False, rng=None, final_states=None):
        """Run the LSTM stack; return (B, D*H) final states or (B, T, D*H) outputs.

        ``final_states`` defaults to ``not return_sequences``.
        """
        if final_states is None:
            final_states = not self.return_sequences
        masks = []
        h = X
        top = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            out, (h_n, _) = layer.forward(h, lengths=lengths, training=training)
            if k < top:
                if training and self.dropout > 0:
                    keep = 1.0 - self.dropout
                    mask = (rng.random_sample(out.shape) < keep).astype(self.dtype) / keep
                    out *= mask
                    masks.append(mask)
                else:
                    masks.append(None)
            h = out
        if training:
            self._cache = {"masks": masks, "shape": h.shape}
        if not final_states:
            return h
        return np.ascontiguousarray(h_n.transpose(1, 0, 2).reshape(h_n.shape[1], -1))

    def forward(self, X, lengths, training=False, rng=None):
        """Network output: (B, n_outputs), or (B, T, n_outputs) per step."""
        feats = self.features(X, lengths, training=training, rng=rng)
        if training:
            self._cache["feats"] = feats
        return feats @ self.coef + self.intercept

    def backward(self, d_output):
        """Gradients (aligned with :meth:`parameters`) for the last training forward."""
        cache, self._cache = self._cache, None
        feats = cache["feats"]
        flat_f = feats.reshape(-1, feats.shape[-1])
        flat_d = d_output.reshape(-1, d_output.shape[-1])
        d_coef = flat_f.T @ flat_d
        d_intercept = flat_d.sum(axis=0)
        d_feats = d_output @ self.coef.T
        B, T, width = cache["shape"]
        top = self.layers[-1]
        if self.return_sequences:
            d_out, d_h_n = d_feats, None
        else:
            d_out = np.zeros((B, T, width), dtype=self.dtype)
            d_h_n = d_feats.reshape(B, top.num_directions, top.hidden_size).transpose(1, 0, 2)
        grads_per_layer = []
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            d_in, grads = layer.backward(d_out, d_h_n=d_h_n)
            grads_per_layer.append([grads[name] for name in layer._params])
            if k > 0:
                mask = cache["masks"][k - 1]
                d_out = d_in if mask is None else d_in * mask
                d_h_n = None
        grads = [g for layer_grads in reversed(grads_per_layer) for g in layer_grads]
        return grads + [d_coef.astype(self.dtype, copy=False),
                        d_intercept.astype(self.dtype, copy=False)]
