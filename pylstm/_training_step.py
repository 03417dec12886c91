"""The training step of the common case, planned once per batch shape.

A training batch for a unidirectional LSTM layer without projections or
recurrent dropout, whose sequences all have the batch's length (an
estimator's dense batch; a language model's window of looked-up tokens, its
state carried in; the output of the layer below in a stack), makes the same
kernel calls on arrays of the same shapes, batch after batch. The general
path (:class:`pylstm.LSTM`'s ``_forward`` and ``_backward``) checks, sorts,
plans and allocates afresh at every call; after the kernels have swept the
caches, that Python costs several times what it costs on its own, and it
was most of a small fit's time outside its compiled calls
(``benchmarks/bench_fit.py``, ``outside``). :class:`DenseTrainingSteps`
plans each batch shape once and keeps its arrays; the gradients it
returns stay valid until the next backward, which a fit, whose optimizer
consumes them at once, allows. The networks choose it per batch; its
results are the general path's, bit for bit
(``tests/estimators/test_training_step.py``).
"""

import numpy as np

from . import _lstm
from ._arrays import to_batch_first, to_time_major
from ._layer import _chunk_steps, _fuse_weight_gradients, _grad_arrays
from ._threads import single_threaded_blas, thread_plan
from ._validation import check_finite
from ._workspace import aligned_empty, aligned_zeros

#: Batch shapes planned at once (a fit on dense data has two: full batches and
#: the last one; bucketed lengths one per bucket); a new one beyond drops them.
_MAX_PLANS = 32


class _Plan:
    """Decisions and arrays of one batch shape (:class:`DenseTrainingSteps`): B rows
    of T steps, and V, the rows of a looked-up embedding (None: none). The arrays
    that grow with B * T, and the weight gradients' two, are views of the steps' shared
    buffers (``big``)."""

    def __init__(self, layer, B, T, V, big):
        I, H, dt = layer.input_size, layer.hidden_size, layer.dtype
        N = B * T
        self.lengths = np.full(B, T, dtype=np.intc)
        self.bf_rows = np.arange(B) * T
        self.blas_steps = _lstm.needs_w_hh_t(self.lengths)
        self.work = N * 4 * H * (I + H)  # the whole-sequence products' multiply-adds
        self.fuse = (V is None and not _lstm.direct_weight_gradients(I, H)
                     and _fuse_weight_gradients(N, I, H))
        if self.fuse:
            # [x_t | h_{t-1}]: the input's compact copy, continued by h_{t-1}
            # (the layout of LSTM._forward_layers), for the backward's one GEMM
            # of both weight gradients.
            wide = big("wide", (N, I + H))
            self.x, self.h_prev = wide[:, :I], wide[:, I:]
        else:
            # Apart, each contiguous: the batch's copy into x then writes I
            # values a row, not one cache line per row (the adding problem's
            # ``outside``, benchmarks/bench_quality.py); a looked-up projection
            # never reads x.
            self.x, self.h_prev = big("x", (N, I)), big("h_prev", (N, H))
        self.w_hh_t = aligned_empty((H, 4 * H), dt) if self.blas_steps else None
        self.bias = np.empty(4 * H, dt)
        self.h, self.c = aligned_empty((B, H), dt), aligned_empty((B, H), dt)
        self.c_start = np.empty((B, H), dt)
        K = _chunk_steps(T, B, H)
        self.xbuf = aligned_empty((K * B * I,), dt)
        self.gbuf = aligned_empty((K * B * 4 * H,), dt)
        # Two arrays for the kernels' scratch, then the weight gradients, shared by
        # the plans: a forward takes the one that does not hold the last backward's
        # gradients (DenseTrainingSteps._held), so that they outlive forwards until
        # the next backward.
        size = _lstm.gradient_work_size(I, H, B, dt, self.fuse)
        self.grad_work = [big(f"grad_work{k}", (size,)) for k in range(2)]
        self.grad_views = [_grad_arrays(w, 4 * H, I) for w in self.grad_work]
        self.gates = big("gates", (N, 4 * H))
        self.c_cache = big("c_cache", (N, H))
        self.out = big("out", (B, T, H))  # every step's h_t, batch-first
        self.dh, self.dc = np.empty((B, H), dt), np.empty((B, H), dt)
        self.scratch = aligned_empty((B, 4 * H), dt)
        self.backward_work = aligned_empty(
            _lstm.work_size(I, H, B, dt) if self.fuse
            else _lstm.input_gradient_work_size(I, H, dt), dt)
        self.d_b2 = np.empty(4 * H, dt)
        self.table = None
        if V is not None:  # the table's gradient, summed by token (float64)
            self.table = dict(d_table=np.empty((V, 4 * H)), d_embedding=np.empty((V, I), dt),
                              table_work=np.empty(_lstm.table_work_size(V, I, H)))


class DenseTrainingSteps:
    """A one-layer, unidirectional LSTM's training calls for dense batches, planned
    once per batch shape.

    For a layer without projections or recurrent dropout (:meth:`applies`),
    :meth:`forward` and :meth:`backward` give what the layer's ``_forward``
    and ``_backward`` give for a training call without lengths, bit for bit.
    Their results are kept arrays: the outputs overwritten by the next
    forward, the gradients by the next backward.

    Parameters
    ----------
    layer : pylstm.LSTM
        The layer; its parameters are read at every step.
    """

    def __init__(self, layer):
        self.layer = layer
        self._plans = {}
        self._plan = None
        self._buffers = {}  # name -> flat buffer, grown to the largest shape's need
        self._grown = False
        self._zeros = None  # the outputs' gradient where only the final states have one
        self._held = 1  # which of the "grad_work" buffers holds the last backward's gradients

    def _big(self, name, shape):
        """A view of the shared buffer ``name``, of ``shape``, grown if too small (one
        step runs at a time: every plan may use the same buffers)."""
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = aligned_empty(size, self.layer.dtype)
            self._grown = True
        return buf[:size].reshape(shape)

    def _plan_for(self, key):
        """The plan of ``key``, (B, T, V), made if new. A plan that grows a shared
        buffer drops the others, whose views the old buffers would keep alive."""
        plan = self._plans.get(key)
        if plan is None:
            self._grown = False
            plan = _Plan(self.layer, *key, self._big)
            if self._grown or len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    @staticmethod
    def applies(layer):
        """Whether ``layer`` is one unidirectional layer without projections or
        recurrent dropout."""
        return (layer.num_layers == 1 and not layer.bidirectional and not layer.proj_size
                and not layer.recurrent_dropout)

    def forward(self, X, h0=None, c0=None, lookup=None):
        """Every step's hidden state and the final states, ``(out, h, c)``, of (B, T, H),
        (B, H) and (B, H): kept arrays.

        Parameters
        ----------
        X : ndarray of shape (B, T, I) or None
            Batch-first, C-contiguous, of the layer's dtype; None with ``lookup``.
        h0, c0 : ndarray of shape (1, B, H) or None
            Initial states (None: zeros).
        lookup : tuple or None
            ``(embedding, tokens)``: the input projection looked up by token
            (``LSTM._forward``).

        Raises
        ------
        NonFiniteError
            ``X``, ``h0`` or ``c0`` holds NaN or infinity (before any kernel runs).
        """
        layer = self.layer
        B, T = np.shape(lookup[1]) if X is None else X.shape[:2]
        self._plan = None  # until this forward is complete
        plan = self._plan_for((B, T, None if lookup is None else lookup[0].shape[0]))
        tokens = table = None
        if lookup is not None:
            table, tokens, plan.embedding = layer._lookup_table(lookup, True, B, T)
        elif not to_time_major(X, plan.x):
            check_finite(X, "X")
        for state, start, name in ((plan.h, h0, "h0"), (plan.c, c0, "c0")):
            if start is None:
                state.fill(0)
            else:
                np.copyto(state, layer._check_state(start, name, B)[0])
        np.copyto(plan.c_start, plan.c)
        p = layer._params
        w_ih, w_hh = p["weight_ih_l0"], p["weight_hh_l0"]
        np.add(p["bias_ih_l0"], p["bias_hh_l0"], out=plan.bias)
        if plan.blas_steps:
            np.copyto(plan.w_hh_t, w_hh.T)
            w_hh_t = plan.w_hh_t
        else:  # unread by the kernel; any (H, 4H) array fills the slot
            w_hh_t = w_hh.reshape(layer.hidden_size, -1)
        # The kernels' scratch, then the weight gradients: not the array of the last
        # backward's gradients, which a caller may hold until the next backward.
        work = plan.grad_work[1 - self._held]
        plan.d_ih, plan.d_hh, plan.d_b = plan.grad_views[1 - self._held]
        one_thread, _, loop_threads = thread_plan(B, layer.hidden_size, 1, plan.blas_steps,
                                                  plan.work)
        with single_threaded_blas(one_thread):
            _lstm.forward_train(plan.x, plan.lengths, w_ih, w_hh, w_hh_t, plan.bias, plan.h,
                                plan.c, plan.out.reshape(B * T, -1), 0, False, plan.xbuf,
                                plan.gbuf, plan.gates, plan.c_cache, plan.h_prev, True,
                                plan.bf_rows, loop_threads, work, None, table,
                                tokens)
        plan.tokens = tokens
        self._plan = plan
        return plan.out, plan.h, plan.c

    def backward(self, d_out=None, d_h=None, input_gradient=False):
        """Gradients of the layer's parameters (in ``parameters()`` order) for the last
        :meth:`forward`, and the input's: after a lookup the embedding's (V, I), with
        ``input_gradient`` the (B, T, I) input's (a kept array), else None.

        Parameters
        ----------
        d_out : ndarray of shape (B, T, H) or None
            Gradient of every step's output, C-contiguous, of the layer's
            dtype (None: zeros).
        d_h : ndarray of shape (B, H) or None
            Gradient of the final hidden states (None: zeros).
        input_gradient : bool, default=False
            Make the gradient of a batch-first input (a layer below's output).

        Raises
        ------
        NonFiniteError
            ``d_h`` holds NaN or infinity (before the kernel runs).
        """
        plan, self._plan = self._plan, None
        if plan is None:
            raise RuntimeError("backward() needs a preceding forward()")
        B, H = plan.h.shape
        if d_out is None:  # zeros, read only, shared by every plan
            size = plan.out.size
            if self._zeros is None or self._zeros.size < size:
                self._zeros = aligned_zeros(size, plan.out.dtype)
            d_out = self._zeros[:size].reshape(plan.out.shape)
        if d_h is None:
            plan.dh.fill(0)
        else:
            check_finite(d_h, "d_h_n")
            np.copyto(plan.dh, d_h)
        plan.dc.fill(0)
        table = {}
        if plan.table is not None:
            table = dict(plan.table, tokens=plan.tokens, embedding=plan.embedding)
        p = self.layer._params
        work = plan.backward_work if plan.fuse else plan.grad_work[1 - self._held]
        one_thread, _, loop_threads = thread_plan(B, H, 1, plan.blas_steps, plan.work)
        with single_threaded_blas(one_thread):
            _lstm.backward(plan.x, plan.lengths, p["weight_ih_l0"], p["weight_hh_l0"],
                           plan.c_start, plan.gates, plan.c_cache, plan.h_prev,
                           d_out.reshape(B * d_out.shape[1], H), 0, False, plan.dh, plan.dc,
                           plan.x, 0.0, plan.d_ih, plan.d_hh, plan.d_b, plan.scratch, True,
                           plan.bf_rows, False, loop_threads, work, plan.fuse, None, **table)
            d_in = None if plan.table is None else plan.table["d_embedding"]
            if input_gradient and plan.table is None:
                # The gate gradients (in place of the gates) times W_ih, over the
                # input's compact copy, which the backward has read.
                _lstm.input_gradient(plan.gates, p["weight_ih_l0"], plan.x, 0.0,
                                     loop_threads, plan.backward_work)
                d_in = self._big("dx", (B, d_out.shape[1], plan.x.shape[1]))
                to_batch_first(plan.x, d_in)
        np.copyto(plan.d_b2, plan.d_b)
        self._held = 1 - self._held
        return [plan.d_ih, plan.d_hh, plan.d_b, plan.d_b2], d_in
