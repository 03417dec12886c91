"""Work arrays kept by a layer between calls.

A training step allocates, per layer and direction, the BPTT cache (gates,
cell states, previous hidden states) and the chunk buffers of the input
projection: several times the size of the batch. Allocated afresh on every
call, large arrays come from newly mapped pages, and the first write to each
page is a page fault: on this project's benchmark machine that was a third of
the time of a small float32 training step. A :class:`Workspace` keeps one
array per name and hands out views of it, growing it only when a call needs
more; successive batches of the same (or smaller) shape allocate nothing.

Only one call at a time borrows a layer's workspace. A call made while
another thread holds it gets private, freshly allocated arrays, so sharing a
layer between threads stays correct, only without the reuse.

The borrower is recorded as a weak reference to its :class:`_Borrow`, not as
a held lock: a call ended by an exception that skipped ``__exit__`` (an
interrupt at its first bytecode) leaves a reference that dies with the
call's frame, and the next call reuses the arrays. A forked child forgets
the borrowers of the parent's threads, which it does not have (each
workspace notices the fork at its first use there).
"""

import math
import os
import threading
import weakref

import numpy as np

from ._arrays import address

__all__ = ["Workspace", "aligned_empty", "aligned_zeros"]

#: Alignment of the arrays that the kernels read and write: one cache line.
#: NumPy's own buffers start 16 bytes past one on this project's machine, so
#: that every 64-byte vector access of a row crosses two lines, and where two
#: threads split a row between them, the line at the split is written by both.
ALIGN = 64


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the array.
    dtype : data-type
        Its dtype.

    Returns
    -------
    ndarray
        A view of a slightly longer buffer (its ``base``).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._workspace import aligned_empty
    >>> a = aligned_empty((3, 5), np.float32)
    >>> a.shape, a.ctypes.data % 64, a.flags.c_contiguous
    ((3, 5), 0, True)
    """
    dtype = np.dtype(dtype)
    if not isinstance(shape, tuple):
        shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)  # int or NumPy integer
    size = math.prod(shape)
    pad = ALIGN // dtype.itemsize
    buf = np.empty(size + pad, dtype=dtype)
    start = (-address(buf) % ALIGN) // dtype.itemsize
    return buf[start:start + size].reshape(shape)


def aligned_zeros(shape, dtype):
    """Like :func:`aligned_empty`, filled with zeros."""
    arr = aligned_empty(shape, dtype)
    arr.fill(0)
    return arr


class _Arrays:
    """Named work arrays drawn from a dict of flat buffers."""

    def __init__(self, buffers):
        self._buffers = buffers

    def empty(self, name, shape, dtype):
        """A C-contiguous array of ``shape`` whose values are left as they were."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = aligned_empty(max(size, 1), dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)

    def kept(self, name, shape, dtype):
        """Like :meth:`empty`, but zero-filled when the buffer is new.

        For contents that a call leaves for the next one (the packed-weight
        cache of inference): they are then never left-over bytes of freed
        memory, which could pass for valid contents.
        """
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            self._buffers[name] = np.zeros(max(size, 1), dtype=dtype)
        return self.empty(name, shape, dtype)

    def zeros(self, name, shape, dtype):
        """Like :meth:`empty`, filled with zeros."""
        arr = self.empty(name, shape, dtype)
        arr.fill(0)
        return arr


class _Borrow:
    """The context manager of :meth:`Workspace.borrow` (a class: it is entered
    twice per training step, and costs less than a generator-based one)."""

    __slots__ = ("_ws", "_held", "__weakref__")

    def __init__(self, ws):
        self._ws = ws
        self._held = False

    def __enter__(self):
        ws = self._ws
        if ws._forks != _forks[0]:  # the first call in a forked child
            with _fork_lock:
                if ws._forks != _forks[0]:
                    ws._reset()
        with ws._lock:  # only for the test-and-set: never held across a call
            holder = ws._holder
            if holder is None or holder() is None:
                ws._holder = weakref.ref(self)
                self._held = True
        return _Arrays(ws._buffers if self._held else {})

    def __exit__(self, *exc):
        if self._held:
            self._held = False
            self._ws._holder = None
        return False


class Workspace:
    """One layer's reusable work arrays (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from pylstm._workspace import Workspace
    >>> ws = Workspace()
    >>> with ws.borrow() as arrays:
    ...     a = arrays.empty("gates", (2, 3), np.float64)
    >>> with ws.borrow() as arrays:
    ...     b = arrays.empty("gates", (3, 2), np.float64)
    >>> bool(np.shares_memory(a, b)), ws.nbytes
    (True, 48)
    >>> ws.clear()
    >>> ws.nbytes
    0
    """

    def __init__(self):
        self._reset()
        self._buffers = {}

    def _reset(self):
        # In a forked child, the lock may be held, and the borrower be, by a
        # thread that the child does not have.
        self._lock = threading.Lock()
        self._holder = None  # weak reference to the borrowing _Borrow
        self._forks = _forks[0]

    def borrow(self):
        """A context manager giving the arrays for one call: the kept ones if
        free, else private ones."""
        return _Borrow(self)

    def clear(self):
        """Drop every kept array (a call using them meanwhile keeps its own)."""
        self._buffers = {}

    @property
    def nbytes(self):
        """Bytes held by the kept arrays."""
        return sum(buf.nbytes for buf in list(self._buffers.values()))


#: Forks that this process descends from (counted in each child).
_forks = [0]
_fork_lock = threading.Lock()


def _after_fork_in_child():
    global _fork_lock
    _fork_lock = threading.Lock()
    _forks[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
