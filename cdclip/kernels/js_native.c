/*
 * Fused pairwise Jensen–Shannon kernel for x86-64 CPUs with AVX2 and FMA (float32).
 *
 * Built on first use by cdclip/kernels/_native.py (plain C, no Python or torch headers) and
 * called through ctypes, which releases the GIL, so several Python threads can share the work.
 *
 * For rows p_i of P (n, k) and q_j of Q (m, k) it writes
 *
 *     out[i, j] = clamp(u[i] + v[j] - 0.5 * sum_k s log s, 0, ln 2),   s = p_i + q_j,
 *
 * where u and v hold the per-row terms (0.5 * sum p log p + 0.5 * ln 2 * sum p), computed by
 * cdclip_js_row_terms_f32. Doing the add, the logarithm, the product and the reduction in registers is the point:
 * the eager torch kernel streams every block through memory four times (add, log, mul, sum).
 *
 * The last, partial register of a row is loaded with a mask: the missing lanes read as 0, give
 * s = 0 and add exactly 0 because s is clamped to the smallest normal float before the log
 * (0 * log(FLT_MIN) = 0), which is also how 0 log 0 = 0 is obtained for real zeros.
 */
#include <immintrin.h>
#include <stdint.h>

/* log(x) for x >= FLT_MIN (normal floats), 8 lanes.
 *
 * x = 2^e * f with f in [sqrt(1/2), sqrt(2)); log f = 2 atanh(t) with t = (f - 1) / (f + 1),
 * |t| <= 0.1716, and 2 atanh(t) = 2t (1 + t^2/3 + t^4/5 + t^6/7 + t^8/9 + ...). The first
 * omitted term is below 7e-10 in absolute value, under a float32 ulp of any log f, so the error is
 * that of the few roundings (about 2 ulp). e * ln 2 is added in two parts (hi + lo) so that large
 * exponents lose nothing to the rounding of ln 2 in float32. */
static inline __m256 log_avx2(__m256 x) {
    const __m256i exponent_mask = _mm256_set1_epi32(0x7f800000);
    const __m256i mantissa_one = _mm256_set1_epi32(0x3f800000);
    const __m256 sqrt2 = _mm256_set1_ps(1.41421356f);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 half = _mm256_set1_ps(0.5f);

    __m256i bits = _mm256_castps_si256(x);
    __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_and_si256(bits, exponent_mask), 23), _mm256_set1_epi32(127));
    __m256 f = _mm256_castsi256_ps(_mm256_or_si256(_mm256_andnot_si256(exponent_mask, bits), mantissa_one));
    /* f in [1, 2): move the upper part to [sqrt(1/2), 1) so that |t| stays small */
    __m256 big = _mm256_cmp_ps(f, sqrt2, _CMP_GT_OQ);
    f = _mm256_blendv_ps(f, _mm256_mul_ps(f, half), big);
    e = _mm256_sub_epi32(e, _mm256_castps_si256(big)); /* big lanes are all ones = -1 */

    __m256 t = _mm256_div_ps(_mm256_sub_ps(f, one), _mm256_add_ps(f, one));
    __m256 t2 = _mm256_mul_ps(t, t);
    __m256 series = _mm256_set1_ps(1.0f / 9.0f);
    series = _mm256_fmadd_ps(series, t2, _mm256_set1_ps(1.0f / 7.0f));
    series = _mm256_fmadd_ps(series, t2, _mm256_set1_ps(1.0f / 5.0f));
    series = _mm256_fmadd_ps(series, t2, _mm256_set1_ps(1.0f / 3.0f));
    series = _mm256_fmadd_ps(series, t2, one);
    __m256 log_f = _mm256_mul_ps(_mm256_add_ps(t, t), series);

    __m256 ef = _mm256_cvtepi32_ps(e);
    const __m256 ln2_hi = _mm256_set1_ps(0.693145752f); /* ln 2 with the last 11 mantissa bits zero */
    const __m256 ln2_lo = _mm256_set1_ps(1.42860677e-06f); /* ln 2 - ln2_hi */
    return _mm256_fmadd_ps(ef, ln2_hi, _mm256_fmadd_ps(ef, ln2_lo, log_f));
}

/* log(max(x, FLT_MIN)): finite at x = 0, so that 0 * log stays exactly 0 (0 log 0 = 0) */
static inline __m256 log_clamped(__m256 x) {
    return log_avx2(_mm256_max_ps(x, _mm256_set1_ps(1.17549435e-38f)));
}

/* acc + x log x, lane by lane */
static inline __m256 add_xlogx(__m256 acc, __m256 x) {
    return _mm256_fmadd_ps(x, log_clamped(x), acc);
}

static inline float horizontal_sum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* Lanes [0, rem) set: loads the last, partial register of a row (the other lanes read as 0, and
 * s = 0 adds exactly 0 after the clamp), so rows need no padding and no copy. */
static inline __m256i tail_mask(int64_t rem) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* sum_k s log s for two columns at once (two independent dependency chains keep the FMA and
 * divide units busy while one log waits on the previous step). body = k rounded down to 8. */
static inline void sum_slogs_pair(const float *p, const float *q0, const float *q1, int64_t k, int64_t body,
                                  __m256i tail, float *r0, float *r1) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t c = 0; c < body; c += 8) {
        __m256 pc = _mm256_loadu_ps(p + c);
        __m256 s0 = _mm256_add_ps(pc, _mm256_loadu_ps(q0 + c));
        __m256 s1 = _mm256_add_ps(pc, _mm256_loadu_ps(q1 + c));
        acc0 = add_xlogx(acc0, s0);
        acc1 = add_xlogx(acc1, s1);
    }
    if (body < k) {
        __m256 pc = _mm256_maskload_ps(p + body, tail);
        __m256 s0 = _mm256_add_ps(pc, _mm256_maskload_ps(q0 + body, tail));
        __m256 s1 = _mm256_add_ps(pc, _mm256_maskload_ps(q1 + body, tail));
        acc0 = add_xlogx(acc0, s0);
        acc1 = add_xlogx(acc1, s1);
    }
    *r0 = horizontal_sum(acc0);
    *r1 = horizontal_sum(acc1);
}

static inline float sum_slogs(const float *p, const float *q, int64_t k, int64_t body, __m256i tail) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < body; c += 8) {
        __m256 s = _mm256_add_ps(_mm256_loadu_ps(p + c), _mm256_loadu_ps(q + c));
        acc = add_xlogx(acc, s);
    }
    if (body < k) {
        __m256 s = _mm256_add_ps(_mm256_maskload_ps(p + body, tail), _mm256_maskload_ps(q + body, tail));
        acc = add_xlogx(acc, s);
    }
    return horizontal_sum(acc);
}

static inline float finish(float u, float v, float slogs) {
    const float ln2 = 0.693147181f;
    float js = u + v - 0.5f * slogs;
    return js < 0.0f ? 0.0f : (js > ln2 ? ln2 : js);
}

/* Columns per tile: a tile of Q rows (COLS * k floats) stays in L1 while a tile of P rows sweeps it. */
#define ROWS 16
#define COLS 32

/* The work is split into items = (batch, tile of ROWS rows); each caller thread takes the next item
 * from the shared counter until none is left, so threads finish together although the rows of the
 * symmetric case shrink from m to 1 columns. Items go in order, longest rows first.
 *
 *   p: (batch, n, k), q: (batch, m, k), u: (batch, n), v: (batch, m), out: (batch, n, m),
 *   all contiguous float32, any k. symmetric != 0 means q is p (n == m): only j > i
 *   is computed, mirrored into out[j, i], and the diagonal is set to exactly 0. */
void cdclip_pairwise_js_f32(const float *p, const float *q, const float *u, const float *v, float *out,
                            int64_t batch, int64_t n, int64_t m, int64_t k, int32_t symmetric,
                            int64_t *next_item) {
    const int64_t tiles = (n + ROWS - 1) / ROWS;
    const int64_t items = batch * tiles;
    for (;;) {
        int64_t item = __atomic_fetch_add(next_item, 1, __ATOMIC_RELAXED);
        if (item >= items) return;
        const int64_t body = k & ~(int64_t)7;
        const __m256i tail = tail_mask(k - body);
        const int64_t b = item / tiles;
        const int64_t row0 = (item % tiles) * ROWS;
        const int64_t row1 = row0 + ROWS < n ? row0 + ROWS : n;
        const float *pb = p + b * n * k, *qb = q + b * m * k, *ub = u + b * n, *vb = v + b * m;
        float *ob = out + b * n * m;
        for (int64_t col0 = symmetric ? row0 : 0; col0 < m; col0 += COLS) {
            const int64_t col1 = col0 + COLS < m ? col0 + COLS : m;
            for (int64_t i = row0; i < row1; ++i) {
                const float *pi = pb + i * k;
                int64_t j = col0;
                if (symmetric) {
                    if (j <= i) j = i + 1;
                    if (col0 <= i && i < col1) ob[i * m + i] = 0.0f;
                }
                for (; j + 1 < col1; j += 2) {
                    float r0, r1;
                    sum_slogs_pair(pi, qb + j * k, qb + (j + 1) * k, k, body, tail, &r0, &r1);
                    float a = finish(ub[i], vb[j], r0), c = finish(ub[i], vb[j + 1], r1);
                    ob[i * m + j] = a;
                    ob[i * m + j + 1] = c;
                    if (symmetric) {
                        ob[j * m + i] = a;
                        ob[(j + 1) * m + i] = c;
                    }
                }
                if (j < col1) {
                    float a = finish(ub[i], vb[j], sum_slogs(pi, qb + j * k, k, body, tail));
                    ob[i * m + j] = a;
                    if (symmetric) ob[j * m + i] = a;
                }
            }
        }
    }
}

/* The per-row terms u[r] = 0.5 * sum_k x log x + 0.5 * ln 2 * sum_k x of x: (rows, k), contiguous.
 * O(rows * k), one thread: computing them here keeps torch's own thread pool idle right before
 * the pairwise call (its OpenMP workers keep spinning for milliseconds after a parallel op and
 * would take the core a helper thread needs). */
void cdclip_js_row_terms_f32(const float *x, float *u, int64_t rows, int64_t k) {
    const int64_t body = k & ~(int64_t)7;
    const __m256i tail = tail_mask(k - body);
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * k;
        __m256 xlogx = _mm256_setzero_ps(), mass = _mm256_setzero_ps();
        for (int64_t c = 0; c < body; c += 8) {
            __m256 v = _mm256_loadu_ps(xr + c);
            xlogx = add_xlogx(xlogx, v);
            mass = _mm256_add_ps(mass, v);
        }
        if (body < k) {
            __m256 v = _mm256_maskload_ps(xr + body, tail);
            xlogx = add_xlogx(xlogx, v);
            mass = _mm256_add_ps(mass, v);
        }
        u[r] = 0.5f * horizontal_sum(xlogx) + 0.346573590f * horizontal_sum(mass); /* 0.5 ln 2 */
    }
}

/* out[i] = log(max(x[i], FLT_MIN)) with the kernel's own logarithm, len a multiple of 8. Exported so
 * that the tests can check the logarithm against a float64 one and the benchmark can time it. */
void cdclip_log_f32(const float *x, float *out, int64_t len) {
    for (int64_t i = 0; i < len; i += 8) {
        _mm256_storeu_ps(out + i, log_clamped(_mm256_loadu_ps(x + i)));
    }
}
