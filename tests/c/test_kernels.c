/* The kernels of src/_kernels.c, every table compiled into this program (one
 * object of _kernels.c per SIMD level, PYLSTM_HAVE_<LEVEL>), against plain
 * references written here, in float32 and float64; and the two threads of
 * src/_parallel.h. Built and run by tests/c/run.sh (x86-64 with gcc and
 * clang, aarch64 under qemu-user; MinGW compiles it).
 *
 * The inputs are float-representable, so the float and double kernels see
 * the same values. Sums are checked against a double-precision reference
 * within 8 eps sqrt(terms) of the sum of the terms' magnitudes; the cell
 * against libm (expf and tanhf, exp and tanh) within a few ulps of 1.
 *
 * Prints one line per check, then "N passed, M failed"; exits 1 on any
 * failure.
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "_kernels.h"
#include "_parallel.h"

/* ---- reporting ---------------------------------------------------------- */

static int n_passed, n_failed;
static char why[300];   /* the first failure of the current check */
static double worst;    /* the largest error of the check, in tolerances */

static void begin(void)
{
    why[0] = 0;
    worst = 0;
}

static void fail(const char *fmt, ...)
{
    va_list ap;
    if (why[0])
        return;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
}

/* note: what a passed check says, or NULL for its worst error. */
static void report(const char *level, const char *what, const char *note)
{
    if (why[0]) {
        n_failed++;
        printf("FAIL %-8s %-24s %s\n", level, what, why);
    } else if (note) {
        n_passed++;
        printf("ok   %-8s %-24s %s\n", level, what, note);
    } else {
        n_passed++;
        printf("ok   %-8s %-24s worst error %.2f of tolerance\n", level, what, worst);
    }
}

/* |got - want| <= bound (NaN fails); ctx and i (the flat index) say where. */
static void close_to(double got, double want, double bound, const char *ctx, long i)
{
    double err = fabs(got - want);
    double r = bound > 0 ? err / bound : (err > 0 ? INFINITY : 0);
    if (!(err <= bound))
        fail("%s: [%ld] = %.10g, want %.10g (bound %.3g)", ctx, i, got, want, bound);
    if (r > worst)
        worst = r;
}

/* An element outside the output must keep its value. */
static void kept(double got, double before, const char *ctx, long i)
{
    if (got != before)
        fail("%s: [%ld] outside the output changed from %.10g to %.10g", ctx, i, before, got);
}

/* ---- float or double arrays --------------------------------------------- */

typedef struct {
    int dbl;
    long n;
    void *p;
} arr;

#define F(a) ((float *)(a).p)
#define D(a) ((double *)(a).p)

/* n elements from x (zeros if x is NULL). */
static arr arr_new(int dbl, long n, const double *x)
{
    arr a = {dbl, n, calloc((size_t)(n > 0 ? n : 1), dbl ? sizeof(double) : sizeof(float))};
    if (!a.p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (long i = 0; x && i < n; i++) {
        if (dbl)
            D(a)[i] = x[i];
        else
            F(a)[i] = (float)x[i];
    }
    return a;
}

static arr arr_copy(arr a)
{
    arr b = arr_new(a.dbl, a.n, NULL);
    memcpy(b.p, a.p, (size_t)a.n * (a.dbl ? sizeof(double) : sizeof(float)));
    return b;
}

static double at(arr a, long i) { return a.dbl ? D(a)[i] : F(a)[i]; }
static int same_bits(arr a, arr b)
{
    return memcmp(a.p, b.p, (size_t)a.n * (a.dbl ? sizeof(double) : sizeof(float))) == 0;
}

static double eps(int dbl) { return dbl ? DBL_EPSILON : FLT_EPSILON; }
static const char *tname(int dbl) { return dbl ? "d" : "f"; }

/* Uniform in [-scale, scale), rounded to float (xorshift64*, fixed seed). */
static unsigned long long rng_state = 0x9e3779b97f4a7c15ULL;
static double rnd(double scale)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    double u = (double)((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
    return (double)(float)((2 * u - 1) * scale);
}

static double *rnd_vec(long n, double scale)
{
    double *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (long i = 0; i < n; i++)
        x[i] = rnd(scale);
    return x;
}

/* ---- calls of the kernels on arr arguments ------------------------------ */

static void pack(arr b, int ldb, int trans, int k, int n, arr bp)
{
    if (b.dbl)
        pylstm_pack_d(D(b), ldb, trans, k, n, D(bp));
    else
        pylstm_pack_f(F(b), ldb, trans, k, n, F(bp));
}

static long packed_size(int dbl, int k, int n)
{
    return dbl ? pylstm_packed_size_d(k, n) : pylstm_packed_size_f(k, n);
}

/* gemm_packed on rows i0 .. i0 + m - 1 of A and C and the columns from panel
 * j0 / NR on. */
static void gemm_packed(const pylstm_kernels *t, int m, int n, int k, arr a, int lda, long i0,
                        arr bp, long j0, arr c, int ldc, int acc)
{
    long pb = j0 * k;  /* panels are NR columns of k rows each */
    if (a.dbl)
        t->gemm_packed_d(m, n, k, D(a) + i0 * lda, lda, D(bp) + pb, D(c) + i0 * ldc + j0,
                         ldc, acc);
    else
        t->gemm_packed_f(m, n, k, F(a) + i0 * lda, lda, F(bp) + pb, F(c) + i0 * ldc + j0,
                         ldc, acc);
}

/* C1 = A^T B1, C2 = A^T B2 for the rows (columns of A) i0 .. i0 + m - 1. */
typedef struct {
    const pylstm_kernels *t;
    int m, k, n1, n2, i0;
    arr a, b1, b2, c1, c2;
    long lda, ldb1, ldb2, ldc1, ldc2;
} tn_call;

static void gemm_tn(const tn_call *g)
{
    if (g->a.dbl)
        g->t->gemm_tn_d(g->m, g->k, D(g->a) + g->i0, g->lda, D(g->b1), g->ldb1, g->n1,
                        D(g->c1) + g->i0 * g->ldc1, g->ldc1, D(g->b2), g->ldb2, g->n2,
                        D(g->c2) + g->i0 * g->ldc2, g->ldc2);
    else
        g->t->gemm_tn_f(g->m, g->k, F(g->a) + g->i0, g->lda, F(g->b1), g->ldb1, g->n1,
                        F(g->c1) + g->i0 * g->ldc1, g->ldc1, F(g->b2), g->ldb2, g->n2,
                        F(g->c2) + g->i0 * g->ldc2, g->ldc2);
}

static void gemm_tn_task(void *g) { gemm_tn(g); }

/* A k x m (lda = m + 2), B1 k x n1, B2 k x n2, C1 and C2 with a row more
 * than m and padded columns, all random. */
static tn_call tn_setup(const pylstm_kernels *t, int dbl, int m, int k, int n1, int n2)
{
    tn_call g = {t, m, k, n1, n2, 0, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0}, {0, 0, 0},
                 m + 2, n1 + 1, n2 + 3, n1 + 2, n2 + 4};
    double *x;
    x = rnd_vec((long)k * g.lda, 1), g.a = arr_new(dbl, (long)k * g.lda, x), free(x);
    x = rnd_vec((long)k * g.ldb1, 1), g.b1 = arr_new(dbl, (long)k * g.ldb1, x), free(x);
    x = rnd_vec((long)k * g.ldb2, 1), g.b2 = arr_new(dbl, (long)k * g.ldb2, x), free(x);
    x = rnd_vec((m + 1) * g.ldc1, 1), g.c1 = arr_new(dbl, (m + 1) * g.ldc1, x), free(x);
    x = rnd_vec((m + 1) * g.ldc2, 1), g.c2 = arr_new(dbl, (m + 1) * g.ldc2, x), free(x);
    return g;
}

static void tn_free(tn_call *g)
{
    free(g->a.p), free(g->b1.p), free(g->b2.p), free(g->c1.p), free(g->c2.p);
}

/* ---- the checks --------------------------------------------------------- */

/* gemm_packed over pylstm_pack (B as k x n and as the transpose of n x k):
 * odd shapes, fewer rows than a tile, row counts that end in 4-row tiles
 * (7, 8, 13, 16, 32 at MR 6), partial panels, k = 1, accumulate 0
 * and 1, strides wider than the matrices; nothing outside C's m x n changes. */
static void check_gemm_packed(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int shapes[][3] = {{1, 1, 1},   {3, 33, 1},   {5, 17, 7},    {7, 31, 19},
                                    {9, 32, 2},  {13, 65, 37}, {16, 64, 40},  {23, 100, 64},
                                    {2, 16, 300}, {8, 40, 9},    {32, 64, 20}};
    char what[40], ctx[80];
    begin();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int trans = 0; trans <= 1; trans++)
            for (int acc = 0; acc <= 1; acc++) {
                int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                int lda = k + 3, ldb = trans ? k + 2 : n + 2, ldc = n + 5;
                long nb = (long)(trans ? n : k) * ldb, nc = (long)(m + 1) * ldc;
                double *A = rnd_vec((long)m * lda, 1), *B = rnd_vec(nb, 1), *C0 = rnd_vec(nc, 1);
                arr a = arr_new(dbl, (long)m * lda, A), b = arr_new(dbl, nb, B);
                arr c = arr_new(dbl, nc, C0), bp = arr_new(dbl, packed_size(dbl, k, n), NULL);
                snprintf(ctx, sizeof ctx, "m=%d n=%d k=%d trans=%d acc=%d C", m, n, k, trans, acc);
                pack(b, ldb, trans, k, n, bp);
                gemm_packed(t, m, n, k, a, lda, 0, bp, 0, c, ldc, acc);
                for (int i = 0; i <= m; i++)
                    for (int j = 0; j < ldc; j++) {
                        long o = (long)i * ldc + j;
                        if (i == m || j >= n) {
                            kept(at(c, o), C0[o], ctx, o);
                            continue;
                        }
                        double ref = acc ? C0[o] : 0, mag = acc ? fabs(C0[o]) : 0;
                        for (int kk = 0; kk < k; kk++) {
                            double p = A[(long)i * lda + kk]
                                       * (trans ? B[(long)j * ldb + kk] : B[(long)kk * ldb + j]);
                            ref += p, mag += fabs(p);
                        }
                        close_to(at(c, o), ref, 8 * eps(dbl) * sqrt(k + 1.0) * mag, ctx, o);
                    }
                free(A), free(B), free(C0), free(a.p), free(b.p), free(c.p), free(bp.p);
            }
    snprintf(what, sizeof what, "gemm_packed_%s", tname(dbl));
    report(lv, what, NULL);
}

/* gemv_packed: y = (y +) x B over odd n (partial panels) and k of every
 * remainder modulo the kernel's interleaved partial sums. */
static void check_gemv_packed(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int ns[] = {1, 7, 16, 31, 33, 64, 100, 129};
    static const int ks[] = {1, 2, 3, 5, 6, 17, 64, 130};
    char what[40], ctx[80];
    begin();
    for (size_t in = 0; in < sizeof ns / sizeof ns[0]; in++)
        for (size_t ik = 0; ik < sizeof ks / sizeof ks[0]; ik++)
            for (int acc = 0; acc <= 1; acc++) {
                int n = ns[in], k = ks[ik], pad = 5;
                double *X = rnd_vec(k, 1), *B = rnd_vec((long)k * n, 1), *Y0 = rnd_vec(n + pad, 1);
                arr x = arr_new(dbl, k, X), b = arr_new(dbl, (long)k * n, B);
                arr y = arr_new(dbl, n + pad, Y0), bp = arr_new(dbl, packed_size(dbl, k, n), NULL);
                snprintf(ctx, sizeof ctx, "n=%d k=%d acc=%d y", n, k, acc);
                pack(b, n, 0, k, n, bp);
                if (dbl)
                    t->gemv_packed_d(n, k, D(x), D(bp), D(y), acc);
                else
                    t->gemv_packed_f(n, k, F(x), F(bp), F(y), acc);
                for (int j = 0; j < n + pad; j++) {
                    if (j >= n) {
                        kept(at(y, j), Y0[j], ctx, j);
                        continue;
                    }
                    double ref = acc ? Y0[j] : 0, mag = acc ? fabs(Y0[j]) : 0;
                    for (int kk = 0; kk < k; kk++) {
                        double p = X[kk] * B[(long)kk * n + j];
                        ref += p, mag += fabs(p);
                    }
                    close_to(at(y, j), ref, 8 * eps(dbl) * sqrt(k + 1.0) * mag, ctx, j);
                }
                free(X), free(B), free(Y0), free(x.p), free(b.p), free(y.p), free(bp.p);
            }
    snprintf(what, sizeof what, "gemv_packed_%s", tname(dbl));
    report(lv, what, NULL);
}

/* The reference of one C of gemm_tn: C = A^T B (B k x n, stride ldb). */
static void tn_expect(const tn_call *g, arr b, long ldb, int n, arr c, arr c0, long ldc,
                      const char *ctx)
{
    double e = eps(g->a.dbl) * 8 * sqrt(g->k + 1.0);
    for (long i = 0; i <= g->m; i++)
        for (long j = 0; j < ldc; j++) {
            long o = i * ldc + j;
            if (i == g->m || j >= n) {
                kept(at(c, o), at(c0, o), ctx, o);
                continue;
            }
            double ref = 0, mag = 0;
            for (long kk = 0; kk < g->k; kk++) {
                double p = at(g->a, kk * g->lda + i) * at(b, kk * ldb + j);
                ref += p, mag += fabs(p);
            }
            close_to(at(c, o), ref, e * mag, ctx, o);
        }
}

/* gemm_tn: both products of one call, odd m, n1 and n2 (some narrower than
 * a vector; the columns past the last whole vector go by vectors of rows,
 * four at a time from m = 100), and k of many blocks (the blocks' sums added
 * in order). */
static void check_gemm_tn(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int shapes[][4] = {{1, 1, 1, 1},      {5, 7, 3, 2},       {7, 33, 17, 1},
                                    {13, 40, 64, 9},   {37, 300, 5, 100},  {37, 3000, 29, 35},
                                    {6, 2000, 1, 3},   {100, 1500, 33, 31}};
    char what[40], ctx[80];
    begin();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        tn_call g = tn_setup(t, dbl, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3]);
        arr c1 = arr_copy(g.c1), c2 = arr_copy(g.c2);
        gemm_tn(&g);
        snprintf(ctx, sizeof ctx, "m=%d k=%d n1=%d n2=%d C1", g.m, g.k, g.n1, g.n2);
        tn_expect(&g, g.b1, g.ldb1, g.n1, g.c1, c1, g.ldc1, ctx);
        snprintf(ctx, sizeof ctx, "m=%d k=%d n1=%d n2=%d C2", g.m, g.k, g.n1, g.n2);
        tn_expect(&g, g.b2, g.ldb2, g.n2, g.c2, c2, g.ldc2, ctx);
        tn_free(&g), free(c1.p), free(c2.p);
    }
    snprintf(what, sizeof what, "gemm_tn_%s", tname(dbl));
    report(lv, what, NULL);
}

/* column_sums: out[j] = the sum of column j over the rows. */
static void check_column_sums(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int shapes[][2] = {{1, 1}, {7, 5}, {300, 33}, {1000, 70}};
    char what[40], ctx[80];
    begin();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], cols = shapes[s][1], lda = cols + 3, pad = 3;
        double *A = rnd_vec((long)rows * lda, 1), *O = rnd_vec(cols + pad, 1);
        arr a = arr_new(dbl, (long)rows * lda, A), out = arr_new(dbl, cols + pad, O);
        snprintf(ctx, sizeof ctx, "rows=%d cols=%d out", rows, cols);
        if (dbl)
            t->column_sums_d(D(a), rows, cols, lda, D(out));
        else
            t->column_sums_f(F(a), rows, cols, lda, F(out));
        for (int j = 0; j < cols + pad; j++) {
            if (j >= cols) {
                kept(at(out, j), O[j], ctx, j);
                continue;
            }
            double ref = 0, mag = 0;
            for (int r = 0; r < rows; r++)
                ref += A[(long)r * lda + j], mag += fabs(A[(long)r * lda + j]);
            close_to(at(out, j), ref, 8 * eps(dbl) * sqrt(rows + 1.0) * mag, ctx, j);
        }
        free(A), free(O), free(a.p), free(out.p);
    }
    snprintf(what, sizeof what, "column_sums_%s", tname(dbl));
    report(lv, what, NULL);
}

/* scatter_rows: out[idx[r]] += row r, in double, rows in order: the same bits as
 * that loop here; the columns past cols and the rows no index names kept. */
static void check_scatter_rows(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {300, 33, 9}, {1000, 70, 40}};
    char what[40], ctx[80];
    begin();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], cols = shapes[s][1], v = shapes[s][2];
        int lda = cols + 3, ldo = cols + 2;
        double *A = rnd_vec((long)rows * lda, 1), *O = rnd_vec((long)v * ldo + 1, 1);
        double *want = malloc(sizeof(double) * ((size_t)v * ldo + 1));
        int *idx = malloc(sizeof(int) * (size_t)rows);
        arr a = arr_new(dbl, (long)rows * lda, A);
        if (!want || !idx) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        memcpy(want, O, sizeof(double) * ((size_t)v * ldo + 1));
        for (int r = 0; r < rows; r++) {
            idx[r] = (r * 7 + r / 3) % (v > 1 ? v - 1 : 1);  /* v > 1: the last row unnamed */
            for (int j = 0; j < cols; j++)
                want[(long)idx[r] * ldo + j] += at(a, (long)r * lda + j);
        }
        double *out = malloc(sizeof(double) * ((size_t)v * ldo + 1));
        if (!out) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        memcpy(out, O, sizeof(double) * ((size_t)v * ldo + 1));
        if (dbl)
            t->scatter_rows_d(D(a), rows, cols, lda, idx, out, ldo);
        else
            t->scatter_rows_f(F(a), rows, cols, lda, idx, out, ldo);
        snprintf(ctx, sizeof ctx, "rows=%d cols=%d v=%d out", rows, cols, v);
        for (long i = 0; i < (long)v * ldo + 1; i++)
            if (out[i] != want[i])
                fail("%s: [%ld] = %.17g, want %.17g", ctx, i, out[i], want[i]);
        free(A), free(O), free(want), free(idx), free(out), free(a.p);
    }
    snprintf(what, sizeof what, "scatter_rows_%s", tname(dbl));
    report(lv, what, NULL);
}

/* softmax_xent: the loss sum_r w_r (log sum_j e^(z_rj - m_r) - (z_ry - m_r)) and
 * dz = w (softmax - onehot), against libm in double; row widths around the
 * vector length (whole vectors, a padded tail, fewer logits than a vector).
 * Then a NaN or infinite logit must make the loss NaN. */
static void check_softmax_xent(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int widths[] = {1, 3, 8, 17, 33, 102};
    enum { ROWS = 5 };
    char what[40], ctx[80];
    begin();
    for (size_t s = 0; s < sizeof widths / sizeof widths[0]; s++) {
        int cols = widths[s];
        long n = (long)ROWS * cols;
        double *Z = rnd_vec(n, 8), w[ROWS], loss_ref = 0, loss;
        int64_t y[ROWS];
        arr z = arr_new(dbl, n, Z), dz = arr_new(dbl, n, NULL);
        for (int r = 0; r < ROWS; r++)
            y[r] = (r * 7) % cols, w[r] = (r + 1) / 15.0;
        loss = dbl ? t->softmax_xent_d(D(z), ROWS, cols, y, w, D(dz))
                   : t->softmax_xent_f(F(z), ROWS, cols, y, w, F(dz));
        for (int r = 0; r < ROWS; r++) {
            double m = -INFINITY, sum = 0;
            for (int j = 0; j < cols; j++)
                m = fmax(m, at(z, (long)r * cols + j));
            for (int j = 0; j < cols; j++)
                sum += exp(at(z, (long)r * cols + j) - m);
            loss_ref += w[r] * (log(sum) - (at(z, (long)r * cols + y[r]) - m));
            snprintf(ctx, sizeof ctx, "cols=%d dz", cols);
            for (int j = 0; j < cols; j++) {
                double p = exp(at(z, (long)r * cols + j) - m) / sum;
                double want = w[r] * (p - (j == y[r]));
                close_to(at(dz, (long)r * cols + j), want, 8 * eps(dbl) * w[r], ctx,
                         (long)r * cols + j);
            }
        }
        snprintf(ctx, sizeof ctx, "cols=%d loss", cols);
        close_to(loss, loss_ref, 16 * eps(dbl) * (fabs(loss_ref) + 8), ctx, 0);
        static const double bad[] = {NAN, INFINITY, -INFINITY};
        for (int b = 0; b < 3; b++) {
            arr z2 = arr_copy(z);
            if (dbl)
                D(z2)[n - 1] = bad[b];
            else
                F(z2)[n - 1] = (float)bad[b];
            loss = dbl ? t->softmax_xent_d(D(z2), ROWS, cols, y, w, D(dz))
                       : t->softmax_xent_f(F(z2), ROWS, cols, y, w, F(dz));
            if (!isnan(loss))
                fail("cols=%d: a logit %g gave the loss %g, not NaN", cols, bad[b], loss);
            free(z2.p);
        }
        free(Z), free(z.p), free(dz.p);
    }
    snprintf(what, sizeof what, "softmax_xent_%s", tname(dbl));
    report(lv, what, NULL);
}

/* The cell's nonlinearities by libm, in the kernel's precision. */
static double sig_ref(double x, int dbl)
{
    return dbl ? 1 / (1 + exp(-x)) : 1.0f / (1.0f + expf(-(float)x));
}
static double tanh_ref(double x, int dbl) { return dbl ? tanh(x) : tanhf((float)x); }

/* The pre-activation of a gate as the kernel forms it: gp + bias in T. */
static double pre(double gp, double b, int dbl) { return dbl ? gp + b : (float)gp + (float)b; }

/* cell_forward against libm: the gates, c_t and h_t of n units whose four
 * gate blocks lie S apart (pre-activations from -8 to 8 and some extreme beyond
 * the clamps), keep 0 (nothing kept), 1 (gates, c_t and h_{t-1} kept) and 2
 * (kept by streaming stores where the address allows: calloc's 16-byte
 * alignment at least, so SSE2's always); nothing past unit n changes. */
static void check_cell_forward(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int shapes[][2] = {{1, 1}, {37, 41}, {64, 64}};
    char what[40], ctx[80];
    double tol = 16 * eps(dbl);
    begin();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int keep = 0; keep <= 2; keep++) {
            int n = shapes[s][0], S = shapes[s][1], pad = 3;
            long ng = 4L * S + pad, nu = n + pad;
            double *GP = rnd_vec(ng, 8), *BI = rnd_vec(ng, 1), *H = rnd_vec(nu, 1);
            double *C = rnd_vec(nu, 3), *J = rnd_vec(ng, 1);  /* J: junk in the outputs */
            static const double extreme[] = {30, -30, 100, -100, 1000, -1000, 1e30, -1e30};
            for (int q = 0; q < 8 && q < n; q++)
                GP[(q % 4) * S + q] = extreme[q];
            arr gp = arr_new(dbl, ng, GP), bias = arr_new(dbl, ng, BI), h = arr_new(dbl, nu, H);
            arr c = arr_new(dbl, nu, C), h_out = arr_new(dbl, nu, J), out = arr_new(dbl, nu, J);
            arr gk = arr_new(dbl, ng, J), ck = arr_new(dbl, nu, J), hk = arr_new(dbl, nu, J);
            if (dbl)
                t->cell_forward_d(D(gp), D(bias), D(h), D(h_out), D(c), D(out),
                                  keep ? D(gk) : NULL, keep ? D(ck) : NULL,
                                  keep ? D(hk) : NULL, keep, n, S);
            else
                t->cell_forward_f(F(gp), F(bias), F(h), F(h_out), F(c), F(out),
                                  keep ? F(gk) : NULL, keep ? F(ck) : NULL,
                                  keep ? F(hk) : NULL, keep, n, S);
            snprintf(ctx, sizeof ctx, "n=%d S=%d keep=%d", n, S, keep);
            for (long j = 0; j < nu; j++) {
                if (j >= n) {
                    kept(at(c, j), C[j], ctx, j), kept(at(h_out, j), J[j], ctx, j);
                    kept(at(out, j), J[j], ctx, j);
                    if (keep)
                        kept(at(ck, j), J[j], ctx, j), kept(at(hk, j), J[j], ctx, j);
                    continue;
                }
                double g[4];
                for (int q = 0; q < 4; q++) {
                    double x = pre(GP[q * S + j], BI[q * S + j], dbl);
                    g[q] = q == 2 ? tanh_ref(x, dbl) : sig_ref(x, dbl);
                    if (keep)
                        close_to(at(gk, q * S + j), g[q], tol, ctx, q * S + j);
                }
                double cn = g[1] * C[j] + g[0] * g[2], hn = g[3] * tanh_ref(cn, dbl);
                close_to(at(c, j), cn, tol * (1 + fabs(C[j])), ctx, j);
                close_to(at(h_out, j), hn, tol, ctx, j);
                if (at(out, j) != at(h_out, j))
                    fail("%s: out[%ld] != h_out", ctx, j);
                if (keep && (at(ck, j) != at(c, j) || at(hk, j) != H[j]))
                    fail("%s: c_keep or h_prev_keep [%ld] wrong", ctx, j);
            }
            for (long o = 0; keep && o < ng; o++)
                if (o % S >= n || o >= 4L * S)
                    kept(at(gk, o), J[o], ctx, o);
            free(GP), free(BI), free(H), free(C), free(J);
            free(gp.p), free(bias.p), free(h.p), free(c.p), free(h_out.p), free(out.p);
            free(gk.p), free(ck.p), free(hk.p);
        }
    snprintf(what, sizeof what, "cell_forward_%s", tname(dbl));
    report(lv, what, NULL);
}

/* cell_backward: the gate pre-activation gradients and dL/dc_{t-1} of one
 * BPTT step against the chain rule evaluated in double. */
static void check_cell_backward(const pylstm_kernels *t, const char *lv, int dbl)
{
    static const int shapes[][2] = {{1, 1}, {37, 41}, {64, 64}};
    char what[40], ctx[80];
    begin();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n = shapes[s][0], S = shapes[s][1], pad = 3;
        long ng = 4L * S + pad, nu = n + pad;
        double *G = rnd_vec(ng, 4), *CN = rnd_vec(nu, 3), *CP = rnd_vec(nu, 3);
        double *DH = rnd_vec(nu, 1), *DC = rnd_vec(nu, 1), *DO = rnd_vec(nu, 1);
        for (long o = 0; o < ng; o++)  /* activated gates: sigmoid, tanh for g */
            G[o] = (float)((o / S) % 4 == 2 ? tanh(G[o]) : 1 / (1 + exp(-G[o])));
        arr gp = arr_new(dbl, ng, G), cn = arr_new(dbl, nu, CN), cp = arr_new(dbl, nu, CP);
        arr dh = arr_new(dbl, nu, DH), dc = arr_new(dbl, nu, DC), dout = arr_new(dbl, nu, DO);
        if (dbl)
            t->cell_backward_d(D(gp), D(cn), D(cp), D(dh), D(dc), D(dout), n, S);
        else
            t->cell_backward_f(F(gp), F(cn), F(cp), F(dh), F(dc), F(dout), n, S);
        snprintf(ctx, sizeof ctx, "n=%d S=%d", n, S);
        for (long j = 0; j < nu; j++) {
            if (j >= n) {
                kept(at(dc, j), DC[j], ctx, j);
                continue;
            }
            double ig = G[j], fg = G[S + j], gg = G[2 * S + j], og = G[3 * S + j];
            double tc = tanh(CN[j]), dht = DH[j] + DO[j];
            double dct = DC[j] + dht * og * (1 - tc * tc);
            double want[4] = {dct * gg * ig * (1 - ig), dct * CP[j] * fg * (1 - fg),
                              dct * ig * (1 - gg * gg), dht * tc * og * (1 - og)};
            double mag = (fabs(DC[j]) + fabs(DH[j]) + fabs(DO[j])) * (1 + fabs(CP[j]));
            for (int q = 0; q < 4; q++)
                close_to(at(gp, q * S + j), want[q], 32 * eps(dbl) * mag, ctx, q * S + j);
            close_to(at(dc, j), dct * fg, 32 * eps(dbl) * mag, ctx, j);
        }
        for (long o = 0; o < ng; o++)
            if (o % S >= n || o >= 4L * S)
                kept(at(gp, o), G[o], ctx, o);
        free(G), free(CN), free(CP), free(DH), free(DC), free(DO);
        free(gp.p), free(cn.p), free(cp.p), free(dh.p), free(dc.p), free(dout.p);
    }
    snprintf(what, sizeof what, "cell_backward_%s", tname(dbl));
    report(lv, what, NULL);
}

/* The forward and then the backward cell over units 0 .. 36 (S = 41) in
 * one call, and in two calls split at unit 18 (the two-thread loop's split by
 * units): whether every output is the same bit for bit. */
static int cell_split_same(const pylstm_kernels *t, int dbl, int keep)
{
    enum { N = 37, S = 41, H0 = 18, NG = 4 * S };
    double *GP = rnd_vec(NG, 8), *BI = rnd_vec(NG, 1), *HC = rnd_vec(3L * N, 1);
    arr gp = arr_new(dbl, NG, GP), bias = arr_new(dbl, NG, BI), hc = arr_new(dbl, 3L * N, HC);
    arr o[2][6];  /* per run: gates (then their gradients), c, h_out, out, c_keep, h_keep */
    int same = 1;
    for (int run = 0; run < 2; run++) {
        o[run][0] = arr_new(dbl, NG, NULL), o[run][1] = arr_new(dbl, N, HC + N);
        for (int q = 2; q < 6; q++)
            o[run][q] = arr_new(dbl, N, NULL);
        for (int part = 0; part < 1 + run; part++) {
            int u0 = run && part ? H0 : 0, n = run ? (part ? N - H0 : H0) : N;
            arr *a = o[run];
            /* forward from h_in = hc[0 .. N), then backward with dh = hc[2N ..),
             * dc = c_t's copy, dout = h_in */
            if (dbl) {
                t->cell_forward_d(D(gp) + u0, D(bias) + u0, D(hc) + u0, D(a[2]) + u0,
                                  D(a[1]) + u0, D(a[3]) + u0, keep ? D(a[0]) + u0 : NULL,
                                  keep ? D(a[4]) + u0 : NULL, keep ? D(a[5]) + u0 : NULL,
                                  keep, n, S);
                if (keep)
                    t->cell_backward_d(D(a[0]) + u0, D(a[4]) + u0, D(hc) + N + u0,
                                       D(hc) + 2 * N + u0, D(a[1]) + u0, D(hc) + u0, n, S);
            } else {
                t->cell_forward_f(F(gp) + u0, F(bias) + u0, F(hc) + u0, F(a[2]) + u0,
                                  F(a[1]) + u0, F(a[3]) + u0, keep ? F(a[0]) + u0 : NULL,
                                  keep ? F(a[4]) + u0 : NULL, keep ? F(a[5]) + u0 : NULL,
                                  keep, n, S);
                if (keep)
                    t->cell_backward_f(F(a[0]) + u0, F(a[4]) + u0, F(hc) + N + u0,
                                       F(hc) + 2 * N + u0, F(a[1]) + u0, F(hc) + u0, n, S);
            }
        }
    }
    for (int q = 0; q < 6; q++) {
        same = same && same_bits(o[0][q], o[1][q]);
        free(o[0][q].p), free(o[1][q].p);
    }
    free(GP), free(BI), free(HC), free(gp.p), free(bias.p), free(hc.p);
    return same;
}

/* The rounding rule of _kernels.c: an element's value does not depend on the
 * block of rows (or of whole panels of columns) that a call covers. All rows
 * in one call, and in two calls split inside a tile (4, 6 or 8 rows; the
 * splits at rows 11 and 41 are inside one at every level, and move rows
 * between the vector and scalar paths of gemm_tn's last columns): bit for bit
 * the same, for gemm_packed (accumulating), gemm_tn (k of many blocks) and
 * the columns of column_sums; and the cell split by units. */
static void check_blocks(const pylstm_kernels *t, const char *lv, int dbl)
{
    char what[40];
    int m = 23, n = 100, k = 37, h = 11, lda = k + 1, ldc = n + 3;
    double *A = rnd_vec((long)m * lda, 1), *B = rnd_vec((long)k * n, 1);
    double *C0 = rnd_vec((long)m * ldc, 1);
    arr a = arr_new(dbl, (long)m * lda, A), b = arr_new(dbl, (long)k * n, B);
    arr bp = arr_new(dbl, packed_size(dbl, k, n), NULL);
    arr one = arr_new(dbl, (long)m * ldc, C0), rows = arr_copy(one), cols = arr_copy(one);
    begin();
    pack(b, n, 0, k, n, bp);
    gemm_packed(t, m, n, k, a, lda, 0, bp, 0, one, ldc, 1);
    gemm_packed(t, h, n, k, a, lda, 0, bp, 0, rows, ldc, 1);
    gemm_packed(t, m - h, n, k, a, lda, h, bp, 0, rows, ldc, 1);
    gemm_packed(t, m, 64, k, a, lda, 0, bp, 0, cols, ldc, 1);       /* whole panels */
    gemm_packed(t, m, n - 64, k, a, lda, 0, bp, 64, cols, ldc, 1);  /* the rest */
    if (!same_bits(one, rows))
        fail("gemm_packed: rows 0..%d and %d..%d apart differ from one call", h, h, m);
    if (!same_bits(one, cols))
        fail("gemm_packed: columns 0..64 and 64..%d apart differ from one call", n);
    free(A), free(B), free(C0), free(a.p), free(b.p), free(bp.p);
    free(one.p), free(rows.p), free(cols.p);

    tn_call g = tn_setup(t, dbl, 100, 1500, 33, 31), g2 = g;
    g2.c1 = arr_copy(g.c1), g2.c2 = arr_copy(g.c2);
    gemm_tn(&g);
    g2.m = 41, gemm_tn(&g2);
    g2.i0 = 41, g2.m = 100 - 41, gemm_tn(&g2);
    if (!same_bits(g.c1, g2.c1) || !same_bits(g.c2, g2.c2))
        fail("gemm_tn: rows 0..41 and 41..100 apart differ from one call");
    free(g2.c1.p), free(g2.c2.p), tn_free(&g);

    double *X = rnd_vec(300L * 70, 1);
    arr x = arr_new(dbl, 300L * 70, X), s1 = arr_new(dbl, 70, NULL), s2 = arr_new(dbl, 70, NULL);
    if (dbl) {
        t->column_sums_d(D(x), 300, 70, 70, D(s1));
        t->column_sums_d(D(x), 300, 33, 70, D(s2));
        t->column_sums_d(D(x) + 33, 300, 70 - 33, 70, D(s2) + 33);
    } else {
        t->column_sums_f(F(x), 300, 70, 70, F(s1));
        t->column_sums_f(F(x), 300, 33, 70, F(s2));
        t->column_sums_f(F(x) + 33, 300, 70 - 33, 70, F(s2) + 33);
    }
    if (!same_bits(s1, s2))
        fail("column_sums: columns 0..33 and 33..70 apart differ from one call");
    free(X), free(x.p), free(s1.p), free(s2.p);

    for (int keep = 0; keep <= 2; keep++)
        if (!cell_split_same(t, dbl, keep))
            fail("cell_forward (keep=%d) or cell_backward: units 0..18 and 18..37 apart "
                 "differ from one call", keep);
    snprintf(what, sizeof what, "split_calls_%s", tname(dbl));
    report(lv, what, "bit-identical");
}

#if PYLSTM_THREADS
/* The thread split of _parallel.h: the two halves of gemm_tn's rows on two
 * threads (pylstm_run_pair: the worker takes the second) and through
 * pylstm_run_both, bit for bit as one call on one thread. */
static void check_threads(const pylstm_kernels *t, const char *lv, int dbl)
{
    char what[40];
    tn_call g = tn_setup(t, dbl, 100, 1500, 33, 31), h0 = g, h1 = g;
    arr c1 = arr_copy(g.c1), c2 = arr_copy(g.c2);
    begin();
    gemm_tn(&g);
    for (int both = 0; both <= 1; both++) {
        h0.c1 = h1.c1 = arr_copy(c1), h0.c2 = h1.c2 = arr_copy(c2);
        h0.m = 41, h1.i0 = 41, h1.m = 100 - 41;
        if (both) {
            int used = pylstm_run_both(gemm_tn_task, &h0, &h1);
            if (used != 2)
                fail("pylstm_run_both ran on %d thread(s), not 2", used);
        } else if (pylstm_run_pair(gemm_tn_task, &h0, &h1) != 0) {
            fail("pylstm_run_pair could not start the worker");
        }
        if (!same_bits(g.c1, h0.c1) || !same_bits(g.c2, h0.c2))
            fail("%s: two threads' gemm_tn differs from one thread's",
                 both ? "pylstm_run_both" : "pylstm_run_pair");
        free(h0.c1.p), free(h0.c2.p);
    }
    tn_free(&g), free(c1.p), free(c2.p);
    snprintf(what, sizeof what, "two_threads_gemm_tn_%s", tname(dbl));
    report(lv, what, "bit-identical");
}

/* pylstm_barrier_wait between the two threads of pylstm_run_pair, ROUNDS
 * times: a baton (a plain variable) passes to the other thread at each
 * round, and after a round's barrier the shared counter holds both
 * threads' arrivals of that round (and at most one of the next). */
#define ROUNDS 2000
typedef struct {
    pylstm_barrier bar;
    pylstm_atomic arrivals;
    long baton;
} pingpong;
typedef struct {
    pingpong *pp;
    long me, bad;
} pingpong_arg;

static void pingpong_task(void *arg)
{
    pingpong_arg *a = arg;
    pingpong *pp = a->pp;
    for (long r = 0; r < ROUNDS; r++) {
        if (r % 2 == a->me) {
            a->bad += pp->baton != r;
            pp->baton = r + 1;
        }
        pylstm_fetch_add(&pp->arrivals, 1);
        pylstm_barrier_wait(&pp->bar);
        long seen = pylstm_load(&pp->arrivals);
        a->bad += seen < 2 * (r + 1) || seen > 2 * (r + 1) + 1;
    }
}

static void check_barrier(void)
{
    pingpong pp;
    pingpong_arg a0 = {&pp, 0, 0}, a1 = {&pp, 1, 0};
    pylstm_barrier_init(&pp.bar);
    pylstm_store(&pp.arrivals, 0);
    pp.baton = 0;
    begin();
    if (pylstm_run_pair(pingpong_task, &a0, &a1) != 0)
        fail("pylstm_run_pair could not start the worker");
    else if (a0.bad || a1.bad || pp.baton != ROUNDS || pylstm_load(&pp.arrivals) != 2 * ROUNDS)
        fail("%ld and %ld rounds wrong, baton %ld, arrivals %ld", a0.bad, a1.bad, pp.baton,
             (long)pylstm_load(&pp.arrivals));
    report("threads", "barrier_ping_pong", "2000 rounds, baton and counter right");
}
#endif

/* The dispatch of _kernels.h: selecting a level installs its table. */
static void check_table(int level)
{
    const pylstm_kernels *t = pylstm_simd_table(level);
    begin();
    if (pylstm_simd_select(level) != level || pylstm_k != t)
        fail("pylstm_simd_select(%d) chose level %d", level, pylstm_simd_level);
    if (strcmp(t->name, pylstm_simd_names[level]) != 0)
        fail("the table of %s is named %s", pylstm_simd_names[level], t->name);
    report(pylstm_simd_names[level], "table_and_dispatch", "selected");
}

int main(void)
{
    int levels = 0;
    for (int level = 0; level < PYLSTM_SIMD_LEVELS; level++) {
        const pylstm_kernels *t = pylstm_simd_table(level);
        const char *lv = pylstm_simd_names[level];
        if (t == NULL)
            continue;
        if (!pylstm_cpu_has(level)) {
            printf("skip %-8s this CPU lacks it\n", lv);
            continue;
        }
        levels++;
        check_table(level);
        for (int dbl = 0; dbl <= 1; dbl++) {
            check_gemm_packed(t, lv, dbl);
            check_gemv_packed(t, lv, dbl);
            check_gemm_tn(t, lv, dbl);
            check_column_sums(t, lv, dbl);
            check_scatter_rows(t, lv, dbl);
            check_softmax_xent(t, lv, dbl);
            check_cell_forward(t, lv, dbl);
            check_cell_backward(t, lv, dbl);
            check_blocks(t, lv, dbl);
#if PYLSTM_THREADS
            check_threads(t, lv, dbl);
#endif
        }
    }
#if PYLSTM_THREADS
    check_barrier();
#else
    printf("skip threads: PYLSTM_THREADS is 0 on this platform\n");
#endif
    if (levels == 0) {
        n_failed++;
        printf("FAIL no kernel table that this CPU runs is compiled in\n");
    }
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
