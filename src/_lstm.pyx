"""LSTM kernels: forward for training, forward for inference, and BPTT.

Every entry point works on one layer and one direction of a batch sorted by
length in decreasing order. At step ``s`` the active rows are then the
prefix ``0 .. n(s) - 1`` and every product covers exactly those rows. Every
per-step array is 2-D with one row per valid step, in the compact time-major
layout: time ``t`` holds its ``n(t)`` rows from row ``n(0) + ... + n(t-1)``
on (``t * B`` for a dense batch). Padding costs neither memory nor time. It is
the layout of PyTorch's ``PackedSequence``; "packed" here names only the
panel copies of the weights that the products read (``_kernels.h``). The
caller's own batch-first input, result and output gradient may be read and
written in place instead (``bf_rows``: the first row of each sorted
sequence).

A reverse direction visits, at step ``s``, time ``t = length[b] - 1 - s`` of
row ``b``: the time reversal is index arithmetic on the time-ordered arrays,
never a copy. All caches are kept in time order, so that after the reverse
time loop of BPTT the weight gradients are whole-sequence GEMMs.

Gate order (i, f, g, o) in blocks of ``H`` along the ``4H`` axis, as in
``torch.nn.LSTM``. The caller (``pylstm._layer``) provides every buffer; the
kernels check the shapes before any work, take the packed copies of the
weights and a second h array from the caller's work array (``_scratch.pxi``;
``malloc`` only without one) and the row offsets, once per call before the
time loop, and run their whole time loop without the GIL,
on one thread or split between two (``_parallel.h``, ``threads=2``).

The forward kernels share one time loop (``_forward``), so training and
inference round identically.

The module is one extension, written in parts by concept (included below):
the C kernels and their SIMD level; scratch memory; the per-step products
and packing; the layout and shape checks; the two-thread split; the forward
loop; BPTT; projections; the language model's softmax head (its products by
halves of their rows, its loss).
"""
from cpython.pycapsule cimport PyCapsule_New
from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from _blas cimport gemm, gemv

include "_tuning.pxi"
include "_kernels.pxi"
include "_scratch.pxi"
include "_products.pxi"
include "_layout.pxi"
include "_split.pxi"
include "_forward.pxi"
include "_backward.pxi"
include "_projection.pxi"
include "_head.pxi"
