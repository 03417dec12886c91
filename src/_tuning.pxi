# The compiled side's tuning constants, together: each with the rule it sets
# and the benchmark behind it (figures: benchmarks/results and the docs'
# performance page). The C kernels' own (the tile shapes, PYLSTM_TMR and
# PYLSTM_TNV in _simd.h; the step blocks of the weight gradient,
# PYLSTM_KB_BYTES in _kernels.c; the spins and waits in _parallel.h) sit with the
# code they shape. The Python side's are in pylstm/_tuning.py.

cdef enum:
    # A step's product runs on packed weights from this many active rows on
    # (and for one row): fewer rows do not fill a tile (bench_lstm.py, B 2-8).
    PACKED_MIN_ROWS = 8
    # The input gradient packs W_ih while the pack stays in L2, where the
    # packed kernel beats BLAS (bench_lstm.py, training, I 32-128).
    PACKED_DX_BYTES = 262144
    # Widest [X | H_prev] (I + H) whose weight gradients pylstm_gemm_tn makes;
    # wider, BLAS's blocking wins (bench_lstm.py, training).
    DIRECT_DW_MAX_WIDTH = 256
    # Two threads split a loop once a step's multiply-adds outweigh the
    # barrier between steps and the call's outweigh waking the worker
    # (bench_lstm.py --threads 1,2).
    SPLIT_STEP_MACS = 16384
    SPLIT_CALL_MACS = 1000000

# OpenBLAS (0.3.17 on) multiplies without packing its operands up to
# m * n * k = 1e6 with A not transposed, and copies the weights into its own
# layout above: BLAS steps' products are cut into column blocks under that
# size (_column_block; bench_lm.py, batch 32, hidden 128).
cdef double SMALL_GEMM = 1e6

# Two threads split a loop by rows from this many rows on, where each has at
# least one whole tile of rows of the packed product (8 or fewer rows by
# level, _simd.h); by hidden units below (bench_lstm.py --threads 1,2, B 8-32).
cdef int ROW_SPLIT_MIN_ROWS = 16
