"""The Python side's tuning constants, together.

Each states the rule it sets and the benchmark behind it; the figures are
in benchmarks/results and the docs' performance page. The compiled side's
are in ``src/_tuning.pxi``.
"""

#: Steps whose input projection the kernels compute with one GEMM (at most).
CHUNK_STEPS = 32
#: Elements of the projection buffer (chunk steps x batch x 4H) worth keeping
#: to: wide layers take fewer steps per chunk (a GEMM of at least 2**15 / 4H
#: rows, 64 at H = 128, still runs near BLAS's peak), so the buffer stays
#: small next to the BPTT cache.
CHUNK_ELEMENTS = 2**15
#: Valid steps (rows) of an inference call up to which the layer keeps the
#: packed weights for the next call: packing costs a share of about 30 / n of
#: a call of n rows, so beyond this the cache (twice the weights) would cost
#: memory for little (bench_lstm.py, batch-1 inference; performance.rst).
PACK_CACHE_MAX_ROWS = 2048

#: Per-step recurrent GEMM size (B * 4H * H multiply-adds) below which BLAS,
#: where it computes the step, stays on one thread: waking its workers at
#: every step costs more than they save (bench_lstm.py --threads 1,2).
SINGLE_THREAD_BELOW = 16_000_000

#: Multiply-adds of a call's whole-sequence products (about ``n 4H (I + H)``
#: for n valid steps) below which BLAS stays on one thread: waking its workers
#: costs more than they save there (bench_lstm.py --threads 1,2: training at
#: 1 x 100 x 32 x 128 and 32 x 50 x 32 x 64 is faster with one BLAS thread).
WHOLE_SEQUENCE_ONE_THREAD_BELOW = 100_000_000

#: Widest head input (H) whose weight gradients the head takes from
#: pylstm_gemm_tn (``head_gradients``); wider, BLAS's blocking wins
#: (benchmarks/bench_head.py).
HEAD_TN_MAX_INPUTS = 512
