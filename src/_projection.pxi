# The projected LSTM of torch.nn.LSTM(proj_size=P) (Sak, Senior & Beaufays
# 2014): h_t = W_hr (o_t * tanh(c_t)), P < H. One thread and BLAS products
# per step over the active rows; per-step arrays in the compact time-major
# layout of forward_train. The cell's element-wise work is the same fused C
# as the unprojected loop's.


cdef inline Py_ssize_t _row_at(const Py_ssize_t* off, const int* lengths, int b, int s,
                               bint reverse) noexcept nogil:
    """Packed row of sorted row ``b`` at loop step ``s`` (time ``lengths[b] - 1 - s``
    when reversed)."""
    return off[lengths[b] - 1 - s if reverse else s] + b


cdef int _check_projected(Py_ssize_t B, Py_ssize_t N, int I, int H, int P,
                          const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                          const floating[:, ::1] w_hr, Py_ssize_t h_rows, Py_ssize_t h_cols,
                          Py_ssize_t c_rows, Py_ssize_t c_cols, Py_ssize_t x_rows,
                          Py_ssize_t x_cols, Py_ssize_t out_rows, Py_ssize_t out_cols,
                          Py_ssize_t offset) except -1:
    """ValueError unless the arrays of a projected call fit together."""
    if (w_ih.shape[0] != 4 * H or w_hh.shape[0] != 4 * H or w_hh.shape[1] != P
            or w_hr.shape[0] != P or w_hr.shape[1] != H or P < 1):
        raise ValueError(f"weights ({w_ih.shape[0]}, {w_ih.shape[1]}), ({w_hh.shape[0]}, "
                         f"{w_hh.shape[1]}), ({w_hr.shape[0]}, {w_hr.shape[1]}) do not "
                         "match 4H x I, 4H x P, P x H")
    _check_rows(x_rows, x_cols, N, I, "x")
    _check_rows(out_rows, out_cols, N, offset + P, "out")
    if offset < 0 or h_rows != B or h_cols != P or c_rows != B or c_cols != H:
        raise ValueError(f"h ({h_rows}, {h_cols}) and c ({c_rows}, {c_cols}) must be "
                         f"({B}, {P}) and ({B}, {H}); offset {offset} must be >= 0")
    return 0


def forward_projected(const floating[:, :] x,
                      const int[::1] lengths,
                      const floating[:, ::1] w_ih,
                      const floating[:, ::1] w_hh,
                      const floating[::1] bias,
                      const floating[:, ::1] w_hr,
                      floating[:, ::1] h,
                      floating[:, ::1] c,
                      floating[:, :] out,
                      Py_ssize_t offset,
                      bint reverse,
                      floating[:, ::1] gates=None,
                      floating[:, ::1] c_cache=None,
                      floating[:, ::1] m_cache=None,
                      floating[:, :] h_prev_cache=None,
                      const floating[:, ::1] mask=None):
    """Forward pass of one direction of a projected LSTM.

    Parameters
    ----------
    x : (N, I) array
        Layer input, compact time-major rows (see :func:`forward_train`);
        rows contiguous, the row stride free.
    lengths : (B,) int32 array
        Valid steps per row, decreasing.
    w_ih, w_hh, bias, w_hr : (4H, I), (4H, P), (4H,), (P, H) arrays
        ``bias = b_ih + b_hh``; ``w_hr`` projects ``o * tanh(c)`` to h.
    h, c : (B, P), (B, H) arrays
        Initial states on entry, each row's final state on exit.
    out : (N, D*P) array
        Receives h_t in columns ``offset .. offset + P``.
    offset, reverse
        As in :func:`forward_train`.
    gates, c_cache, m_cache, h_prev_cache : (N, 4H), (N, H), (N, H), (N, P)
        With ``gates`` given (training), all four receive what
        :func:`backward_projected` needs: the activated gates, c_t,
        ``o * tanh(c_t)`` and h_{t-1} (masked, with a mask).
    mask : (B, P) array, default None
        Recurrent dropout on h_{t-1}, as in :func:`forward_train`.
    """
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> w_ih.shape[1]
    cdef int H = <int> w_ih.shape[0] // 4
    cdef int P = <int> w_hr.shape[0]
    cdef int G = 4 * H
    cdef int T, n, s, b
    cdef Py_ssize_t N, r, x_ld, out_ld, hp_ld = 0
    cdef bint keep = gates is not None
    cdef const floating* mk = NULL
    cdef floating* gk
    cdef floating* ck
    cdef floating* work = NULL
    cdef floating* xg
    cdef floating* g
    cdef floating* m
    cdef floating* ms
    cdef floating* h_cur
    cdef floating* h_nxt
    cdef floating* swap
    cdef floating* spare
    cdef const floating* xa
    cdef Py_ssize_t* off = _step_offsets(lengths)
    try:
        T = lengths[0]
        N = off[T]
        _check_projected(B, N, I, H, P, w_ih, w_hh, w_hr, h.shape[0], h.shape[1],
                         c.shape[0], c.shape[1], x.shape[0], x.shape[1], out.shape[0],
                         out.shape[1], offset)
        _check_rows(bias.shape[0], 1, G, 1, "bias")
        x_ld = _row_stride(N, I, x.strides[0], x.strides[1], sizeof(floating), "x")
        out_ld = _row_stride(N, out.shape[1], out.strides[0], out.strides[1],
                             sizeof(floating), "out")
        if keep:
            if c_cache is None or m_cache is None or h_prev_cache is None:
                raise ValueError("training needs gates, c_cache, m_cache and h_prev_cache")
            _check_rows(gates.shape[0], gates.shape[1], N, G, "gates")
            _check_rows(c_cache.shape[0], c_cache.shape[1], N, H, "c_cache")
            _check_rows(m_cache.shape[0], m_cache.shape[1], N, H, "m_cache")
            _check_rows(h_prev_cache.shape[0], h_prev_cache.shape[1], N, P, "h_prev_cache")
            hp_ld = _row_stride(N, P, h_prev_cache.strides[0], h_prev_cache.strides[1],
                                sizeof(floating), "h_prev_cache")
        _check_mask(mask, B, P)
        if mask is not None:
            mk = &mask[0, 0]
        # Gathered inputs, gate pre-activations, o * tanh(c), the other h, and
        # three rows the cell writes but this loop does not read.
        work = <floating*> malloc((<size_t> B * (<size_t> I + G + H + P) + 3 * <size_t> H)
                                  * sizeof(floating))
        if work == NULL:
            raise MemoryError()
        xg = work
        g = xg + <Py_ssize_t> B * I
        m = g + <Py_ssize_t> B * G
        h_nxt = m + <Py_ssize_t> B * H
        spare = h_nxt + <Py_ssize_t> B * P
        memset(spare, 0, 3 * H * sizeof(floating))
        h_cur = &h[0, 0]
        with nogil:
            pylstm_enter()
            if mk != NULL:
                for b in range(B):
                    _mask_row(h_cur + <Py_ssize_t> b * P, mk + <Py_ssize_t> b * P, P)
            n = B
            for s in range(T):
                while n > 0 and lengths[n - 1] <= s:
                    n -= 1
                if reverse:
                    for b in range(n):
                        memcpy(xg + <Py_ssize_t> b * I,
                               &x[0, 0] + _row_at(off, &lengths[0], b, s, True) * x_ld,
                               I * sizeof(floating))
                    xa = xg
                else:
                    xa = &x[0, 0] + off[s] * x_ld
                gemm(False, True, n, G, I, <floating> 1.0, xa, <int> (I if reverse else x_ld),
                     &w_ih[0, 0], I, <floating> 0.0, g, G)
                gemm(False, True, n, G, P, <floating> 1.0, h_cur, P, &w_hh[0, 0], P,
                     <floating> 1.0, g, G)
                # o * tanh(c) of a forward direction in training goes straight
                # into its cache rows, which are this step's rows in order.
                ms = &m_cache[0, 0] + off[s] * H if keep and not reverse else m
                for b in range(n):
                    r = _row_at(off, &lengths[0], b, s, reverse)
                    gk = ck = NULL
                    if keep:
                        gk = &gates[0, 0] + r * G
                        ck = &c_cache[0, 0] + r * H
                    # h_in only feeds the cache of h_{t-1}, which this loop keeps itself.
                    _cell_forward(g + <Py_ssize_t> b * G, &bias[0], spare,
                                  ms + <Py_ssize_t> b * H, &c[0, 0] + <Py_ssize_t> b * H,
                                  spare + H, gk, ck, spare + 2 * H, H, H)
                gemm(False, True, n, P, H, <floating> 1.0, ms, H, &w_hr[0, 0], H,
                     <floating> 0.0, h_nxt, P)
                for b in range(n):
                    r = _row_at(off, &lengths[0], b, s, reverse)
                    memcpy(&out[0, 0] + r * out_ld + offset, h_nxt + <Py_ssize_t> b * P,
                           P * sizeof(floating))
                    if keep:
                        if reverse:
                            memcpy(&m_cache[0, 0] + r * H, m + <Py_ssize_t> b * H,
                                   H * sizeof(floating))
                        memcpy(&h_prev_cache[0, 0] + r * hp_ld, h_cur + <Py_ssize_t> b * P,
                               P * sizeof(floating))
                    if mk != NULL:
                        _mask_row(h_nxt + <Py_ssize_t> b * P, mk + <Py_ssize_t> b * P, P)
                swap = h_cur
                h_cur = h_nxt
                h_nxt = swap
            # Each row's final state is its last output (unmasked).
            for b in range(B):
                r = off[0 if reverse else lengths[b] - 1] + b
                memcpy(&h[0, 0] + <Py_ssize_t> b * P, &out[0, 0] + r * out_ld + offset,
                       P * sizeof(floating))
            pylstm_leave()
    finally:
        free(work)
        free(off)
    return 1


def backward_projected(const floating[:, :] x,
                       const int[::1] lengths,
                       const floating[:, ::1] w_hh,
                       const floating[:, ::1] w_hr,
                       const floating[:, ::1] c0,
                       floating[:, ::1] gates,
                       const floating[:, ::1] c_cache,
                       const floating[:, ::1] m_cache,
                       const floating[:, :] h_prev_cache,
                       const floating[:, :] d_out,
                       Py_ssize_t offset,
                       bint reverse,
                       floating[:, ::1] dh,
                       floating[:, ::1] dc,
                       floating[:, ::1] dw_ih,
                       floating[:, ::1] dw_hh,
                       floating[::1] db,
                       floating[:, ::1] dw_hr,
                       const floating[:, ::1] mask=None):
    """BPTT for one direction of a projected LSTM (see :func:`forward_projected`).

    ``gates`` is overwritten with the gate pre-activation gradients, from
    which the caller forms the input gradient (:func:`input_gradient`).
    ``d_out`` is the compact (N, D*P) gradient of ``out``; ``dh`` (B, P) and
    ``dc`` (B, H) hold the gradients of the final states on entry and of
    the initial states on exit. ``dw_ih``, ``dw_hh``, ``db`` and ``dw_hr``
    receive the weight gradients (``db`` serves both biases). ``mask`` as
    given to the forward call.
    """
    cdef int B = <int> lengths.shape[0]
    cdef int I = <int> dw_ih.shape[1]
    cdef int H = <int> w_hr.shape[1]
    cdef int P = <int> w_hr.shape[0]
    cdef int G = 4 * H
    cdef int T, n, s, b, j
    cdef Py_ssize_t N, r, rp, x_ld, hp_ld, do_ld
    cdef const floating* mk = NULL
    cdef const floating* cp
    cdef const floating* dro
    cdef floating* work = NULL
    cdef floating* d_h
    cdef floating* dm
    cdef floating* dg
    cdef const floating* dga
    cdef floating* zeros
    cdef floating* dhb
    cdef Py_ssize_t* off = _step_offsets(lengths)
    try:
        T = lengths[0]
        N = off[T]
        if (w_hh.shape[0] != G or w_hh.shape[1] != P or dw_ih.shape[0] != G
                or dw_hh.shape[0] != G or dw_hh.shape[1] != P or db.shape[0] != G
                or dw_hr.shape[0] != P or dw_hr.shape[1] != H):
            raise ValueError("weight or gradient arrays do not match 4H x (I, P), P x H")
        _check_rows(x.shape[0], x.shape[1], N, I, "x")
        _check_rows(gates.shape[0], gates.shape[1], N, G, "gates")
        _check_rows(c_cache.shape[0], c_cache.shape[1], N, H, "c_cache")
        _check_rows(m_cache.shape[0], m_cache.shape[1], N, H, "m_cache")
        _check_rows(h_prev_cache.shape[0], h_prev_cache.shape[1], N, P, "h_prev_cache")
        _check_rows(d_out.shape[0], d_out.shape[1], N, offset + P, "d_out")
        _check_rows(c0.shape[0], c0.shape[1], B, H, "c0")
        if dh.shape[0] != B or dh.shape[1] != P or dc.shape[0] != B or dc.shape[1] != H:
            raise ValueError(f"dh and dc must be ({B}, {P}) and ({B}, {H})")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        _check_mask(mask, B, P)
        if mask is not None:
            mk = &mask[0, 0]
        x_ld = _row_stride(N, I, x.strides[0], x.strides[1], sizeof(floating), "x")
        hp_ld = _row_stride(N, P, h_prev_cache.strides[0], h_prev_cache.strides[1],
                            sizeof(floating), "h_prev_cache")
        do_ld = _row_stride(N, d_out.shape[1], d_out.strides[0], d_out.strides[1],
                            sizeof(floating), "d_out")
        # dL/dh_t of every valid step (for dW_hr), this step's rows of it,
        # dL/d(o * tanh c), the gate gradients in row order, a row of zeros.
        work = <floating*> malloc((<size_t> N * P + <size_t> B * (<size_t> P + H + G) + H)
                                  * sizeof(floating))
        if work == NULL:
            raise MemoryError()
        d_h = work
        dhb = d_h + N * P
        dm = dhb + <Py_ssize_t> B * P
        dg = dm + <Py_ssize_t> B * H
        zeros = dg + <Py_ssize_t> B * G
        memset(zeros, 0, H * sizeof(floating))
        with nogil:
            pylstm_enter()
            n = 0
            for s in range(T - 1, -1, -1):
                while n < B and lengths[n] > s:
                    n += 1
                for b in range(n):
                    r = _row_at(off, &lengths[0], b, s, reverse)
                    dro = &d_out[0, 0] + r * do_ld + offset
                    for j in range(P):
                        dhb[<Py_ssize_t> b * P + j] = dh[b, j] + dro[j]
                    memcpy(d_h + r * P, dhb + <Py_ssize_t> b * P, P * sizeof(floating))
                gemm(False, False, n, H, P, <floating> 1.0, dhb, P, &w_hr[0, 0], H,
                     <floating> 0.0, dm, H)
                for b in range(n):
                    r = _row_at(off, &lengths[0], b, s, reverse)
                    if s == 0:
                        cp = &c0[0, 0] + <Py_ssize_t> b * H
                    else:
                        rp = _row_at(off, &lengths[0], b, s - 1, reverse)
                        cp = &c_cache[0, 0] + rp * H
                    _cell_backward(&gates[0, 0] + r * G, &c_cache[0, 0] + r * H, cp,
                                   dm + <Py_ssize_t> b * H, &dc[0, 0] + <Py_ssize_t> b * H,
                                   zeros, H, H)
                    if reverse:  # a forward direction's rows are in order in place
                        memcpy(dg + <Py_ssize_t> b * G, &gates[0, 0] + r * G,
                               G * sizeof(floating))
                dga = dg if reverse else &gates[0, 0] + off[s] * G
                gemm(False, False, n, P, G, <floating> 1.0, dga, G, &w_hh[0, 0], P,
                     <floating> 0.0, &dh[0, 0], P)
                if mk != NULL:
                    for b in range(n):
                        _mask_row(&dh[0, 0] + <Py_ssize_t> b * P, mk + <Py_ssize_t> b * P, P)
            gemm(True, False, G, I, <int> N, <floating> 1.0, &gates[0, 0], G, &x[0, 0],
                 <int> x_ld, <floating> 0.0, &dw_ih[0, 0], I)
            gemm(True, False, G, P, <int> N, <floating> 1.0, &gates[0, 0], G,
                 &h_prev_cache[0, 0], <int> hp_ld, <floating> 0.0, &dw_hh[0, 0], P)
            gemm(True, False, P, H, <int> N, <floating> 1.0, d_h, P, &m_cache[0, 0], H,
                 <floating> 0.0, &dw_hr[0, 0], H)
            if floating is float:
                pylstm_column_sums_f(&gates[0, 0], N, G, G, &db[0])
            else:
                pylstm_column_sums_d(&gates[0, 0], N, G, G, &db[0])
            pylstm_leave()
    finally:
        free(work)
        free(off)
    return 1
