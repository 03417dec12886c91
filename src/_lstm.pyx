"""LSTM kernels: forward for training, forward for inference, and BPTT.

Every entry point works on one layer and one direction of a batch laid out
time-major, ``(T, B, features)``, with the batch sorted by length in
decreasing order. At step ``s`` the active rows are then the prefix
``0 .. n(s) - 1`` and every BLAS call covers exactly those rows: padded steps
cost nothing in the time loop.

A reverse direction visits, at step ``s``, time ``t = length[b] - 1 - s`` of
row ``b``: the time reversal is index arithmetic on the time-ordered arrays,
never a copy. All caches are kept in time order, so that after the reverse
time loop of BPTT the weight gradients are whole-sequence GEMMs.

Gate order (i, f, g, o) in blocks of ``H`` along the ``4H`` axis, as in
``torch.nn.LSTM``. The caller (``pylstm._layer``) validates every shape and
allocates every buffer once per call; the kernels allocate nothing and run
their whole time loop without the GIL.
"""
from cython cimport floating
from libc.string cimport memcpy, memset

from _blas cimport gemm, gemv
from _activations cimport sigmoid, tanh_


cdef inline void _cell_forward(floating* gp, const floating* bias,
                               floating* h, floating* c,
                               floating* c_keep, floating* h_prev_keep,
                               floating* out, Py_ssize_t H) noexcept nogil:
    """One row of one step: activate the gates, update c and h in place.

    ``gp`` holds the 4H pre-activations without bias on entry and the
    activated gates on exit. ``c_keep``/``h_prev_keep`` (may be NULL) receive
    c_t and h_{t-1} for BPTT; ``out`` receives h_t.
    """
    cdef Py_ssize_t j
    cdef floating ig, fg, gg, og, cn, hn
    for j in range(H):
        ig = sigmoid(gp[j] + bias[j])
        fg = sigmoid(gp[H + j] + bias[H + j])
        gg = tanh_(gp[2 * H + j] + bias[2 * H + j])
        og = sigmoid(gp[3 * H + j] + bias[3 * H + j])
        cn = fg * c[j] + ig * gg
        hn = og * tanh_(cn)
        if h_prev_keep != NULL:
            h_prev_keep[j] = h[j]
            c_keep[j] = cn
            gp[j] = ig
            gp[H + j] = fg
            gp[2 * H + j] = gg
            gp[3 * H + j] = og
        c[j] = cn
        h[j] = hn
        out[j] = hn


cdef inline void _recurrent(int n, int G, int H, const floating* w_hh,
                            const floating* h, floating beta,
                            floating* dst) noexcept nogil:
    """dst[:n] = h[:n] @ w_hh^T + beta * dst[:n] (gemv for a single row)."""
    if n == 1:
        gemv(False, G, H, <floating> 1.0, w_hh, H, h, beta, dst)
    else:
        gemm(False, True, n, G, H, <floating> 1.0, h, H, w_hh, H, beta, dst, G)


def forward_train(const floating[:, :, ::1] x,
                  const int[::1] lengths,
                  const floating[:, ::1] w_ih,
                  const floating[:, ::1] w_hh,
                  const floating[::1] bias,
                  floating[:, ::1] h,
                  floating[:, ::1] c,
                  floating[:, :, ::1] out,
                  Py_ssize_t offset,
                  bint reverse,
                  floating[:, :, ::1] gates,
                  floating[:, :, ::1] c_cache,
                  floating[:, :, ::1] h_prev_cache,
                  floating[:, ::1] scratch):
    """Forward pass of one direction, keeping what BPTT needs.

    Parameters
    ----------
    x : (T, B, I) array
        Layer input, time-major, rows sorted by decreasing length.
    lengths : (B,) int32 array
        Valid steps per row, decreasing, each in ``1 .. T``.
    w_ih, w_hh, bias : (4H, I), (4H, H), (4H,) arrays
        Weights in gate order (i, f, g, o); ``bias = b_ih + b_hh``.
    h, c : (B, H) arrays
        Initial states on entry, each row's final state on exit.
    out : (T, B, D*H) array
        Receives h_t in columns ``offset .. offset + H``; untouched elsewhere.
    offset : int
        Column offset of this direction in ``out``.
    reverse : bool
        Run from each row's last valid step back to its first.
    gates, c_cache, h_prev_cache : (T, B, 4H), (T, B, H), (T, B, H) arrays
        Receive the activated gates, c_t and h_{t-1} (time order). Entries at
        padded positions of ``c_cache``/``h_prev_cache`` are left untouched.
    scratch : (B, 4H) array
        Work space.
    """
    cdef int T = <int> x.shape[0]
    cdef int B = <int> x.shape[1]
    cdef int I = <int> x.shape[2]
    cdef int G = <int> w_ih.shape[0]
    cdef int H = G // 4
    cdef int n = B
    cdef int s, b, t
    cdef floating* gp
    cdef floating* rp
    cdef Py_ssize_t j
    with nogil:
        # Input projection of every step at once: gates = x @ w_ih^T.
        gemm(False, True, T * B, G, I, <floating> 1.0, &x[0, 0, 0], I,
             &w_ih[0, 0], I, <floating> 0.0, &gates[0, 0, 0], G)
        for s in range(T):
            while n > 0 and lengths[n - 1] <= s:
                n -= 1
            if n == 0:
                break
            if not reverse:
                _recurrent(n, G, H, &w_hh[0, 0], &h[0, 0], <floating> 1.0,
                           &gates[s, 0, 0])
            else:
                _recurrent(n, G, H, &w_hh[0, 0], &h[0, 0], <floating> 0.0,
                           &scratch[0, 0])
            for b in range(n):
                t = lengths[b] - 1 - s if reverse else s
                gp = &gates[t, b, 0]
                if reverse:
                    rp = &scratch[b, 0]
                    for j in range(G):
                        gp[j] += rp[j]
                _cell_forward(gp, &bias[0], &h[b, 0], &c[b, 0],
                              &c_cache[t, b, 0], &h_prev_cache[t, b, 0],
                              &out[t, b, offset], H)


def forward_infer(const floating[:, :, ::1] x,
                  const int[::1] lengths,
                  const floating[:, ::1] w_ih,
                  const floating[:, ::1] w_hh,
                  const floating[::1] bias,
                  floating[:, ::1] h,
                  floating[:, ::1] c,
                  floating[:, :, ::1] out,
                  Py_ssize_t offset,
                  bint reverse,
                  floating[::1] xbuf,
                  floating[::1] gbuf):
    """Forward pass of one direction keeping no per-step state.

    Same arguments as :func:`forward_train` but instead of caches two work
    buffers for a chunk of ``K`` steps: ``xbuf`` of ``K * B * I`` and ``gbuf``
    of ``K * B * 4H`` elements, so that extra memory does not grow with T.
    The input rows of a chunk are gathered (reversed rows by index
    arithmetic) and projected by one GEMM.
    """
    cdef int T = <int> x.shape[0]
    cdef int B = <int> x.shape[1]
    cdef int I = <int> x.shape[2]
    cdef int G = <int> w_ih.shape[0]
    cdef int H = G // 4
    cdef int K = <int> (gbuf.shape[0] // (B * G))
    cdef int n = B
    cdef int n_chunk, s0, k, kk, s, b, t
    cdef floating* gp
    if K < 1 or xbuf.shape[0] < <Py_ssize_t> K * B * I:
        raise ValueError("forward_infer: work buffers too small")
    with nogil:
        s0 = 0
        while s0 < T:
            while n > 0 and lengths[n - 1] <= s0:
                n -= 1
            if n == 0:
                break
            n_chunk = n
            kk = K if s0 + K <= T else T - s0
            # Gather the chunk's active input rows, (kk, n_chunk, I).
            for k in range(kk):
                s = s0 + k
                if not reverse:
                    memcpy(&xbuf[k * n_chunk * I], &x[s, 0, 0],
                           n_chunk * I * sizeof(floating))
                else:
                    for b in range(n_chunk):
                        if lengths[b] > s:
                            t = lengths[b] - 1 - s
                            memcpy(&xbuf[(k * n_chunk + b) * I], &x[t, b, 0],
                                   I * sizeof(floating))
                        else:
                            memset(&xbuf[(k * n_chunk + b) * I], 0,
                                   I * sizeof(floating))
            gemm(False, True, kk * n_chunk, G, I, <floating> 1.0, &xbuf[0], I,
                 &w_ih[0, 0], I, <floating> 0.0, &gbuf[0], G)
            for k in range(kk):
                s = s0 + k
                while n > 0 and lengths[n - 1] <= s:
                    n -= 1
                if n == 0:
                    break
                gp = &gbuf[k * n_chunk * G]
                _recurrent(n, G, H, &w_hh[0, 0], &h[0, 0], <floating> 1.0, gp)
                for b in range(n):
                    t = lengths[b] - 1 - s if reverse else s
                    _cell_forward(gp + b * G, &bias[0], &h[b, 0], &c[b, 0],
                                  <floating*> NULL, <floating*> NULL,
                                  &out[t, b, offset], H)
            s0 += kk


def backward(const floating[:, :, ::1] x,
             const int[::1] lengths,
             const floating[:, ::1] w_ih,
             const floating[:, ::1] w_hh,
             const floating[:, ::1] c0,
             floating[:, :, ::1] gates,
             const floating[:, :, ::1] c_cache,
             const floating[:, :, ::1] h_prev_cache,
             const floating[:, :, ::1] d_out,
             Py_ssize_t offset,
             bint reverse,
             floating[:, ::1] dh,
             floating[:, ::1] dc,
             floating[:, :, ::1] dx,
             double dx_beta,
             floating[:, ::1] dw_ih,
             floating[:, ::1] dw_hh,
             floating[::1] db,
             floating[:, ::1] scratch):
    """Backpropagation through time for one direction.

    Parameters
    ----------
    x, lengths, w_ih, w_hh, offset, reverse
        As given to :func:`forward_train`.
    c0 : (B, H) array
        Initial cell state of that forward call.
    gates, c_cache, h_prev_cache
        The caches filled by :func:`forward_train`; ``gates`` is overwritten
        with the gradients of the gate pre-activations (so one cache serves
        one backward).
    d_out : (T, B, D*H) array
        Gradient of the loss with respect to ``out`` (padded rows ignored).
    dh, dc : (B, H) arrays
        Gradients with respect to the final states on entry; with respect to
        the initial states on exit.
    dx : (T, B, I) array
        Receives ``dL/dx + dx_beta * dx`` (``dx_beta = 1`` accumulates the
        second direction of a bidirectional layer).
    dw_ih, dw_hh, db : arrays
        Receive the weight gradients; ``db`` serves both biases.
    scratch : (B, 4H) array
        Work space.
    """
    cdef int T = <int> x.shape[0]
    cdef int B = <int> x.shape[1]
    cdef int I = <int> x.shape[2]
    cdef int G = <int> w_ih.shape[0]
    cdef int H = G // 4
    cdef int n = 0
    cdef int s, b, t, tp
    cdef Py_ssize_t j, r
    cdef floating ig, fg, gg, og, cn, cp, tc, dht, dct
    cdef floating* gp
    cdef const floating* src
    with nogil:
        # The projection left values at padded positions: clear them, so
        # the whole-sequence GEMMs below see zero gradients there.
        for b in range(B):
            for t in range(lengths[b], T):
                memset(&gates[t, b, 0], 0, G * sizeof(floating))
        for s in range(T - 1, -1, -1):
            while n < B and lengths[n] > s:
                n += 1
            if n == 0:
                continue
            for b in range(n):
                if reverse:
                    t = lengths[b] - 1 - s
                    tp = t + 1
                else:
                    t = s
                    tp = t - 1
                gp = &gates[t, b, 0]
                for j in range(H):
                    ig = gp[j]
                    fg = gp[H + j]
                    gg = gp[2 * H + j]
                    og = gp[3 * H + j]
                    cn = c_cache[t, b, j]
                    cp = c0[b, j] if s == 0 else c_cache[tp, b, j]
                    tc = tanh_(cn)
                    dht = dh[b, j] + d_out[t, b, offset + j]
                    dct = dc[b, j] + dht * og * (1 - tc * tc)
                    gp[j] = dct * gg * ig * (1 - ig)
                    gp[H + j] = dct * cp * fg * (1 - fg)
                    gp[2 * H + j] = dct * ig * (1 - gg * gg)
                    gp[3 * H + j] = dht * tc * og * (1 - og)
                    dc[b, j] = dct * fg
                if reverse:
                    memcpy(&scratch[b, 0], gp, G * sizeof(floating))
            src = &scratch[0, 0] if reverse else &gates[s, 0, 0]
            # dh_{s-1}[:n] = dG_s[:n] @ w_hh
            if n == 1:
                gemv(True, G, H, <floating> 1.0, &w_hh[0, 0], H, src,
                     <floating> 0.0, &dh[0, 0])
            else:
                gemm(False, False, n, H, G, <floating> 1.0, src, G,
                     &w_hh[0, 0], H, <floating> 0.0, &dh[0, 0], H)
        # Whole-sequence products over all T * B rows (padding rows are 0).
        gemm(True, False, G, I, T * B, <floating> 1.0, &gates[0, 0, 0], G,
             &x[0, 0, 0], I, <floating> 0.0, &dw_ih[0, 0], I)
        gemm(True, False, G, H, T * B, <floating> 1.0, &gates[0, 0, 0], G,
             &h_prev_cache[0, 0, 0], H, <floating> 0.0, &dw_hh[0, 0], H)
        gemm(False, False, T * B, I, G, <floating> 1.0, &gates[0, 0, 0], G,
             &w_ih[0, 0], I, <floating> dx_beta, &dx[0, 0, 0], I)
        for j in range(G):
            db[j] = 0
        for r in range(<Py_ssize_t> T * B):
            gp = &gates[0, 0, 0] + r * G
            for j in range(G):
                db[j] += gp[j]
