"""Array passes of the layer's bookkeeping, in compiled code.

A finite check, and the copies between the caller's batch-first ``(B, T, F)``
arrays and the kernels' time-major rows, each checking the values it copies.
NumPy does each in one or two passes too, but through its general strided
machinery, a visible share of a small training step; here a copy and its
check are one pass of row ``memcpy``-sized loops.
"""
from cpython.buffer cimport PyBUF_ANY_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer
from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memmove, memset

import numpy as np


cdef extern from "_arrays.h" nogil:
    int pylstm_all_finite_f(const float* a, Py_ssize_t n)
    int pylstm_all_finite_d(const double* a, Py_ssize_t n)
    int pylstm_copy_finite_f(const float* src, float* dst, Py_ssize_t n)
    int pylstm_copy_finite_d(const double* src, double* dst, Py_ssize_t n)
    double pylstm_sum_squares_f(const float* a, Py_ssize_t n)
    double pylstm_sum_squares_d(const double* a, Py_ssize_t n)
    void pylstm_adam_f(float* p, const float* g, float* m, float* v, Py_ssize_t n, float gs,
                       float b1, float c1, float b2, float c2, float root_bias, float eps,
                       float step)
    void pylstm_adam_d(double* p, const double* g, double* m, double* v, Py_ssize_t n,
                       double gs, double b1, double c1, double b2, double c2,
                       double root_bias, double eps, double step)


cdef inline int _copy_finite(const floating* src, floating* dst, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return pylstm_copy_finite_f(src, dst, n)
    else:
        return pylstm_copy_finite_d(src, dst, n)


cdef int _check_rows(Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t col_stride,
                     Py_ssize_t itemsize, Py_ssize_t need_rows, Py_ssize_t need_cols,
                     str name) except -1:
    """ValueError unless a 2-D argument has contiguous rows, enough of them and
    wide enough."""
    if col_stride != itemsize:
        raise ValueError(f"the rows of {name} must be contiguous")
    if rows < need_rows or cols < need_cols:
        raise ValueError(f"{name} must have at least {need_rows} rows and {need_cols} "
                         f"columns, got {rows} and {cols}")
    return 0


def all_finite(const floating[::1] a):
    """Whether the contiguous array ``a`` holds no NaN and no infinity.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import all_finite
    >>> all_finite(np.array([0.0, 1e300])), all_finite(np.array([1.0, np.inf]))
    (True, False)
    """
    cdef Py_ssize_t n = a.shape[0]
    cdef int ok = 1
    if n == 0:
        return True
    with nogil:
        if floating is float:
            ok = pylstm_all_finite_f(&a[0], n)
        else:
            ok = pylstm_all_finite_d(&a[0], n)
    return ok != 0


def to_time_major(const floating[:, :, ::1] x, floating[:, :] out):
    """``out[t * B + b, :F] = x[b, t]`` for the batch-first ``x`` of shape (B, T, F).

    ``out`` has at least ``T * B`` contiguous rows of at least ``F`` columns
    (its other columns are left alone). Returns whether every copied value is finite.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import to_time_major
    >>> x = np.arange(12.0).reshape(2, 3, 2)
    >>> out = np.zeros((6, 3))
    >>> to_time_major(x, out), out[:, :2].tolist() == x.transpose(1, 0, 2).reshape(6, 2).tolist()
    (True, True)
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], F = x.shape[2]
    cdef Py_ssize_t b, t
    cdef int ok = 1
    _check_rows(out.shape[0], out.shape[1], out.strides[1], sizeof(floating), T * B, F,
                "out")
    if B == 0 or T == 0 or F == 0:
        return True
    with nogil:
        for t in range(T):
            for b in range(B):
                ok &= _copy_finite(&x[b, t, 0], &out[t * B + b, 0], F)
    return ok != 0


def to_batch_first(const floating[:, :] src, floating[:, :, ::1] out):
    """``out[b, t] = src[t * B + b, :F]`` for ``out`` of shape (B, T, F): the inverse copy.

    Returns whether every copied value is finite.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import to_batch_first
    >>> src = np.arange(6.0).reshape(3, 2)
    >>> out = np.empty((1, 3, 2))
    >>> to_batch_first(src, out), out[0].tolist() == src.tolist()
    (True, True)
    """
    cdef Py_ssize_t B = out.shape[0], T = out.shape[1], F = out.shape[2]
    cdef Py_ssize_t b, t
    cdef int ok = 1
    _check_rows(src.shape[0], src.shape[1], src.strides[1], sizeof(floating), T * B, F,
                "src")
    if B == 0 or T == 0 or F == 0:
        return True
    with nogil:
        for b in range(B):
            for t in range(T):
                ok &= _copy_finite(&src[t * B + b, 0], &out[b, t, 0], F)
    return ok != 0


def compact_rows(const int[::1] lengths, const Py_ssize_t[::1] order, Py_ssize_t T):
    """Where each row of the compact time-major layout comes from.

    For a batch sorted by decreasing ``lengths`` (``order[b]``: sorted row
    ``b``'s row in the caller's batch), time ``t`` holds the rows still active
    at ``t``, one after another (the kernels' layout of every per-step array).
    Returns, for each of the ``sum(lengths)`` compact rows, its row
    ``order[b] * T + t`` in the caller's (B * T)-row batch-first array.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import compact_rows
    >>> compact_rows(np.array([3, 1], np.intc), np.array([1, 0], np.intp), 3)
    array([3, 0, 4, 5])
    """
    cdef Py_ssize_t B = lengths.shape[0]
    cdef Py_ssize_t b, t, r = 0, n = 0, active
    if order.shape[0] != B:
        raise ValueError(f"compact_rows: {B} lengths but {order.shape[0]} rows in order")
    for b in range(B):
        if lengths[b] < 0 or lengths[b] > T or (b and lengths[b] > lengths[b - 1]):
            raise ValueError("compact_rows: lengths must decrease, each in 0 .. T")
        if order[b] < 0:
            raise ValueError(f"compact_rows: row {order[b]} in order is negative")
        n += lengths[b]
    rows = np.empty(n, dtype=np.intp)
    cdef Py_ssize_t[::1] out = rows
    active = B
    with nogil:
        for t in range(lengths[0] if B else 0):
            while active > 0 and lengths[active - 1] <= t:
                active -= 1
            for b in range(active):
                out[r] = order[b] * T + t
                r += 1
    return rows


def gather_rows(const floating[:, ::1] src, const Py_ssize_t[::1] rows, floating[:, :] out):
    """``out[r, :F] = src[rows[r]]`` for every ``r``; whether every copied value is finite.

    ``src`` has F columns; ``out`` at least ``len(rows)`` contiguous rows of at
    least F columns (its other columns are left alone). Every row index is
    checked against ``src`` before anything is copied. The compact copy of a
    batch of sequences of several lengths (:func:`compact_rows`), checked as
    it passes: only the valid steps, which are the ones that must be finite.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import gather_rows
    >>> out = np.zeros((2, 3))
    >>> gather_rows(np.arange(6.0).reshape(3, 2), np.array([2, 0], np.intp), out), out.tolist()
    (True, [[4.0, 5.0, 0.0], [0.0, 1.0, 0.0]])
    """
    cdef Py_ssize_t n = rows.shape[0], F = src.shape[1], r
    cdef int ok = 1
    _check_rows(out.shape[0], out.shape[1], out.strides[1], sizeof(floating), n, F, "out")
    for r in range(n):
        if rows[r] < 0 or rows[r] >= src.shape[0]:
            raise ValueError(f"gather_rows: row {rows[r]} at position {r} is outside the "
                             f"{src.shape[0]} rows of src")
    if n == 0 or F == 0:
        return True
    with nogil:
        for r in range(n):
            ok &= _copy_finite(&src[rows[r], 0], &out[r, 0], F)
    return ok != 0


def zero_padding(floating[:, :, ::1] out, const int[::1] lengths):
    """``out[b, lengths[b]:] = 0`` for every row ``b`` of the (B, T, F) ``out``.

    A batch-first result whose valid steps the kernels write: only the steps
    past each length need zeros.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import zero_padding
    >>> out = np.ones((2, 3, 1))
    >>> zero_padding(out, np.array([1, 3], np.intc))
    >>> out[..., 0].tolist()
    [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    cdef Py_ssize_t B = out.shape[0], T = out.shape[1], F = out.shape[2], b
    if lengths.shape[0] != B:
        raise ValueError(f"zero_padding: {lengths.shape[0]} lengths for {B} rows")
    for b in range(B):
        if lengths[b] < 0 or lengths[b] > T:
            raise ValueError(f"zero_padding: length {lengths[b]} of row {b} is outside "
                             f"0 .. {T}")
    if T == 0 or F == 0:
        return
    with nogil:
        for b in range(B):
            if lengths[b] < T:
                memset(&out[b, lengths[b], 0], 0, (T - lengths[b]) * F * sizeof(floating))


def compact_tokens(const int64_t[:, :] tokens, int64_t vocab, int[::1] out):
    """``out[t * B + b] = tokens[b, t]`` for the (B, T) ``tokens``, each checked to be a
    row of a ``vocab``-row table first.

    The time-major token ids of a dense batch, as C ints, for a looked-up input
    projection. Returns -1, or the position ``b * T + t`` of the first token
    (in row order) outside ``0 .. vocab - 1``, in which case nothing is written.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import compact_tokens
    >>> out = np.empty(6, np.intc)
    >>> compact_tokens(np.array([[0, 1, 2], [3, 4, 5]]), 6, out), out.tolist()
    (-1, [0, 3, 1, 4, 2, 5])
    >>> compact_tokens(np.array([[0, 1, 2], [3, 9, 5]]), 6, out)
    4
    """
    cdef Py_ssize_t B = tokens.shape[0], T = tokens.shape[1], b, t
    cdef Py_ssize_t bad = -1
    if out.shape[0] != B * T:
        raise ValueError(f"compact_tokens: out has {out.shape[0]} entries for {B} x {T} "
                         "tokens")
    with nogil:
        for b in range(B):
            for t in range(T):
                if tokens[b, t] < 0 or tokens[b, t] >= vocab:
                    bad = b * T + t
                    break
            if bad >= 0:
                break
        if bad < 0:
            for t in range(T):
                for b in range(B):
                    out[t * B + b] = <int> tokens[b, t]
    return bad


def address(obj):
    """The address of the first byte of a contiguous buffer (a NumPy array).

    ``ndarray.ctypes.data`` without making the ctypes object that costs more
    than the small calls it serves.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import address
    >>> a = np.zeros(4)
    >>> address(a) == a.ctypes.data
    True
    """
    cdef Py_buffer view
    PyObject_GetBuffer(obj, &view, PyBUF_ANY_CONTIGUOUS)
    cdef size_t p = <size_t> view.buf
    PyBuffer_Release(&view)
    return p


ctypedef void (*_task_fn)(void*) noexcept nogil
ctypedef int (*_halves_fn)(_task_fn fn, void* arg0, void* arg1) noexcept nogil
cdef _halves_fn _run_halves = NULL

# Entries of a parameter from which its Adam update goes by halves on the
# kernels' two threads: a smaller update saves a few microseconds at most,
# less than waking a sleeping worker costs (adam_update timed alone at 2,048
# to 65,536 entries; tests/estimators/test_optim.py checks the bits).
ADAM_SPLIT_MIN = 32768


cdef _halves_fn _halves() except NULL:
    """pylstm._lstm's runner of two halves of a task (its kept worker thread)."""
    global _run_halves
    if _run_halves == NULL:
        from pylstm import _lstm
        _run_halves = <_halves_fn> PyCapsule_GetPointer(_lstm.RUN_HALVES,
                                                        b"pylstm._lstm.run_halves")
    return _run_halves


cdef struct _AdamPart:
    bint is_float
    void* p
    const void* g
    void* m
    void* v
    Py_ssize_t n
    double gs, b1, b2, root_bias, eps, step


cdef void _adam_task(void* arg) noexcept nogil:
    """The update of one part (a thread's entry point)."""
    cdef _AdamPart* a = <_AdamPart*> arg
    if a.n == 0:
        return
    if a.is_float:
        pylstm_adam_f(<float*> a.p, <const float*> a.g, <float*> a.m, <float*> a.v, a.n,
                      <float> a.gs, <float> a.b1, <float> (1.0 - a.b1), <float> a.b2,
                      <float> (1.0 - a.b2), <float> a.root_bias, <float> a.eps,
                      <float> a.step)
    else:
        pylstm_adam_d(<double*> a.p, <const double*> a.g, <double*> a.m, <double*> a.v, a.n,
                      a.gs, a.b1, 1.0 - a.b1, a.b2, 1.0 - a.b2, a.root_bias, a.eps, a.step)


def adam_update(p, g, m, v, double beta_1, double beta_2, double root_bias, double epsilon,
                double step, int threads=1):
    """One Adam update of a contiguous parameter ``p`` and its moments, in place.

    ``m = beta_1 m + (1 - beta_1) g``; ``v = beta_2 v + (1 - beta_2) g**2``;
    ``p -= step * m / (sqrt(v) / root_bias + epsilon)``, every coefficient and
    every operation in the arrays' dtype, in one pass: the same bits as
    :class:`pylstm.AdamOptimizer`'s NumPy update of the same arrays. With
    ``threads=2``, from ``ADAM_SPLIT_MIN`` entries on, the kernels' worker
    thread and the caller take half of the entries each when no other kernel
    call holds the worker (the same bits: each entry is updated on its own).
    Returns the number of threads used.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import adam_update
    >>> p, m, v = np.ones(2), np.zeros(2), np.zeros(2)
    >>> adam_update(p, np.array([3.0, -0.5]), m, v, 0.9, 0.999, np.sqrt(0.001), 1e-8, 1.0)
    1
    >>> np.round(p, 4)  # the first step moves each entry by about step * (1 - beta_1)
    array([0.9, 1.1])
    """
    n = len(p)
    if len(g) != n or len(m) != n or len(v) != n:
        raise ValueError(f"adam_update: p, g, m, v must have one length, got {n}, "
                         f"{len(g)}, {len(m)}, {len(v)}")
    # One parameter of adam_update_many: its halves are this update's halves.
    return adam_update_many([p], [g], [m], [v], beta_1, beta_2, root_bias, epsilon, step,
                            threads)


cdef struct _AdamList:
    # One thread's share of a many-parameter update: whole parts or pieces of them.
    _AdamPart* parts
    Py_ssize_t count


cdef void _adam_list_task(void* arg) noexcept nogil:
    """The updates of one thread's share (a thread's entry point)."""
    cdef _AdamList* a = <_AdamList*> arg
    cdef Py_ssize_t i
    for i in range(a.count):
        _adam_task(&a.parts[i])


cdef Py_ssize_t _adam_parts(floating dtype, list params, list grads, list ms, list vs,
                            _AdamPart* parts, _AdamPart* proto) except -1:
    """Fill ``parts`` with the parameters' pointers and sizes, checked (all of
    ``dtype``'s type); the total."""
    cdef floating[::1] p, m, v
    cdef const floating[::1] g
    cdef Py_ssize_t i, total = 0
    for i in range(len(params)):
        try:
            p = params[i]
            g = grads[i]
            m = ms[i]
            v = vs[i]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"adam_update_many: parameter {i}'s arrays must be 1-D, "
                             f"C-contiguous and of one dtype ({exc})") from None
        if g.shape[0] != p.shape[0] or m.shape[0] != p.shape[0] or v.shape[0] != p.shape[0]:
            raise ValueError(f"adam_update_many: parameter {i}'s p, g, m, v must have one "
                             f"length, got {p.shape[0]}, {g.shape[0]}, {m.shape[0]}, "
                             f"{v.shape[0]}")
        parts[i] = proto[0]
        parts[i].n = p.shape[0]
        if p.shape[0]:
            parts[i].p, parts[i].g, parts[i].m, parts[i].v = &p[0], &g[0], &m[0], &v[0]
        total += p.shape[0]
    return total


def adam_update_many(list params, list grads, list ms, list vs, double beta_1,
                     double beta_2, double root_bias, double epsilon, double step,
                     int threads=1, double grad_scale=1.0):
    """:func:`adam_update` of several parameters in one call.

    Every array 1-D, C-contiguous and of the first parameter's dtype (float32
    or float64). From ``ADAM_SPLIT_MIN`` entries in all, with ``threads=2``,
    the kernels' worker and the caller take half of the entries each (the
    parameters laid end to end, cut at a multiple of 16 entries of the
    parameter it falls in): the same bits as one call per parameter, with a
    tenth of the calls' overhead (an optimizer step of a small model).
    ``grad_scale`` multiplies each gradient entry, rounded to the dtype, as it
    is read (a clipping factor; the gradients are left as they are): the bits
    of ``g *= grad_scale`` before the update. Returns the number of threads
    used.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import adam_update_many
    >>> ps = [np.ones(2), np.ones(3)]
    >>> moments = [np.zeros(2), np.zeros(3)], [np.zeros(2), np.zeros(3)]
    >>> grads = [np.array([3.0, -0.5]), np.ones(3)]
    >>> adam_update_many(ps, grads, *moments, 0.9, 0.999, np.sqrt(0.001), 1e-8, 1.0)
    1
    >>> np.round(ps[0], 4), np.round(ps[1], 4)
    (array([0.9, 1.1]), array([0.9, 0.9, 0.9]))
    """
    cdef Py_ssize_t k = len(params)
    cdef Py_ssize_t total, half, before, i, cut
    cdef _AdamPart proto
    cdef _AdamPart* parts
    cdef _AdamList lists[2]
    cdef _halves_fn run = NULL
    cdef int used = 1
    if len(grads) != k or len(ms) != k or len(vs) != k:
        raise ValueError(f"adam_update_many: {k} parameters, but {len(grads)} gradients, "
                         f"{len(ms)} first and {len(vs)} second moments")
    if k == 0:
        return 1
    memset(&proto, 0, sizeof(proto))
    proto.is_float = getattr(params[0], "dtype", None) == "float32"
    proto.gs, proto.b1, proto.b2, proto.root_bias = grad_scale, beta_1, beta_2, root_bias
    proto.eps, proto.step = epsilon, step
    # One more entry: a parameter cut in two at the halves.
    parts = <_AdamPart*> PyMem_Malloc((k + 1) * sizeof(_AdamPart))
    if parts == NULL:
        raise MemoryError()
    try:
        if proto.is_float:
            total = _adam_parts[float](0, params, grads, ms, vs, parts, &proto)
        else:
            total = _adam_parts[double](0, params, grads, ms, vs, parts, &proto)
        lists[0].parts, lists[0].count = parts, k
        lists[1].parts, lists[1].count = parts + k, 0
        if threads >= 2 and total >= ADAM_SPLIT_MIN:
            run = _halves()
        with nogil:
            if run != NULL:
                half = (total // 2) // 16 * 16
                before = 0
                for i in range(k):  # the parameter where the first half ends
                    if before + parts[i].n > half:
                        break
                    before += parts[i].n
                cut = (half - before) // 16 * 16  # of parameter i's entries, to the first
                # Parameter i's rest, then the parameters after it, to the second.
                memmove(&parts[i + 1], &parts[i], (k - i) * sizeof(_AdamPart))
                _cut_part(&parts[i], &parts[i + 1], cut)
                lists[0].count = i + 1
                lists[1].parts, lists[1].count = &parts[i + 1], k - i
                used = run(_adam_list_task, &lists[0], &lists[1])
            else:
                _adam_list_task(&lists[0])
    finally:
        PyMem_Free(parts)
    return used


cdef void _cut_part(_AdamPart* head, _AdamPart* tail, Py_ssize_t cut) noexcept nogil:
    """``head`` keeps its first ``cut`` entries; ``tail`` (a copy of it) the rest."""
    cdef Py_ssize_t size = sizeof(float) if head.is_float else sizeof(double)
    head.n = cut
    tail.n -= cut
    if tail.n > 0:
        tail.p = <char*> tail.p + cut * size
        tail.g = <const char*> tail.g + cut * size
        tail.m = <char*> tail.m + cut * size
        tail.v = <char*> tail.v + cut * size


def scatter_add_rows(const int64_t[::1] index, const floating[:, ::1] rows, double[:, ::1] out):
    """``out[index[r]] += rows[r]`` for every row ``r``, in row order, in float64.

    The embedding's gradient: the input gradients of equal tokens summed. Every
    index is checked against ``out``'s rows before anything is added.

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import scatter_add_rows
    >>> out = np.zeros((3, 2))
    >>> scatter_add_rows(np.array([2, 0, 2]), np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), out)
    >>> out.tolist()
    [[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]
    """
    cdef Py_ssize_t n = index.shape[0]
    cdef Py_ssize_t width = rows.shape[1]
    cdef Py_ssize_t r, j, k
    cdef Py_ssize_t bad = -1
    if rows.shape[0] != n or out.shape[1] != width:
        raise ValueError(f"scatter_add_rows: {n} indices, rows of shape ({rows.shape[0]}, "
                         f"{width}) and out of shape ({out.shape[0]}, {out.shape[1]}) do not "
                         "match")
    with nogil:
        for r in range(n):
            if index[r] < 0 or index[r] >= out.shape[0]:
                bad = r
                break
        if bad < 0:
            for r in range(n):
                k = <Py_ssize_t> index[r]
                for j in range(width):
                    out[k, j] += rows[r, j]
    if bad >= 0:
        raise ValueError(f"scatter_add_rows: index {index[bad]} at position {bad} is outside "
                         f"the {out.shape[0]} rows of out")


def sum_squares_many(list arrays):
    """The sum over ``arrays``, in their order, of each one's :func:`sum_squares`.

    Every array 1-D, C-contiguous, of float32 or float64: in one call, the float
    a Python loop adding the sums from 0.0 would give (the global norm's square
    of a model's gradients).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import sum_squares_many
    >>> sum_squares_many([np.array([3.0]), np.array([4.0], dtype=np.float32)])
    25.0
    """
    cdef double total = 0.0
    cdef const float[::1] f
    cdef const double[::1] d
    for a in arrays:
        if getattr(a, "dtype", None) == "float32":
            f = a
            if f.shape[0]:
                total += pylstm_sum_squares_f(&f[0], f.shape[0])
        else:
            d = a
            if d.shape[0]:
                total += pylstm_sum_squares_d(&d[0], d.shape[0])
    return total


def sum_squares(const floating[::1] a):
    """The sum of the squares of ``a``'s entries, in float64 (inf or NaN if one is).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._arrays import sum_squares
    >>> sum_squares(np.array([3.0, 4.0], dtype=np.float32))
    25.0
    """
    cdef Py_ssize_t n = a.shape[0]
    cdef double total = 0.0
    if n == 0:
        return 0.0
    with nogil:
        if floating is float:
            total = pylstm_sum_squares_f(&a[0], n)
        else:
            total = pylstm_sum_squares_d(&a[0], n)
    return total
