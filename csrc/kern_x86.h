/* The x86 kernels, compiled once per instruction set by the kern_<isa>.c files, which set
 * the target options and define:
 *   VT_KERNELS  the name of the vt_kernels table
 *   VT_VNNI     0: AVX2 (maddubs + madd + add), 1: AVX-VNNI (VEX vpdpwssd/vpdpbusd),
 *               2: AVX512-VNNI (512-bit K-quant loop, EVEX 256-bit elsewhere)
 * Each kernel follows kern_portable.c's float recipe lane by lane: the integer sums are
 * exact whatever the grouping, the float steps are the same multiplies and adds. */
#include <immintrin.h>
#include <string.h>

#include "unpack.h"

#if VT_VNNI == 1
#define DPWSSD(acc, a, b) _mm256_dpwssd_avx_epi32(acc, a, b)
#define DPBUSD(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#elif VT_VNNI == 2
#define DPWSSD(acc, a, b) _mm256_dpwssd_epi32(acc, a, b)
#define DPBUSD(acc, a, b) _mm256_dpbusd_epi32(acc, a, b)
#else
#define DPWSSD(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
#define DPBUSD(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
#endif

/* Sums of the 8 lanes of each of 4 vectors, as one vector of 4. */
static inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i g = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
}

static inline __m128 dx4(const vt_xk *const x[4], int64_t b) {
    return _mm_setr_ps(x[0][b].d, x[1][b].d, x[2][b].d, x[3][b].d);
}

/* The float step of one super-block for 4 lanes (kern_portable.c's k_block_value). */
static inline __m128 k_value4(const vt_kblock *w, __m128i s1, __m128i s2, int mode) {
    if (mode == VT_MIN_INT) return _mm_mul_ps(_mm_set1_ps(w->d), _mm_cvtepi32_ps(_mm_sub_epi32(s1, s2)));
    return _mm_sub_ps(_mm_mul_ps(_mm_set1_ps(w->d), _mm_cvtepi32_ps(s1)),
                      _mm_mul_ps(_mm_set1_ps(w->dm), _mm_cvtepi32_ps(s2)));
}

/* S2 of 4 lanes: the mins against each row's 16-element sums. */
static inline __m128i k_mins4(const vt_kblock *w, const vt_xk *const x[4], int64_t b) {
    const __m256i mn = _mm256_load_si256((const __m256i *)w->mn);
    return hsum4(_mm256_madd_epi16(mn, _mm256_load_si256((const __m256i *)x[0][b].bs)),
                 _mm256_madd_epi16(mn, _mm256_load_si256((const __m256i *)x[1][b].bs)),
                 _mm256_madd_epi16(mn, _mm256_load_si256((const __m256i *)x[2][b].bs)),
                 _mm256_madd_epi16(mn, _mm256_load_si256((const __m256i *)x[3][b].bs)));
}

#if VT_VNNI == 2
static inline __m256i fold512(__m512i a) {
    return _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
}
#endif

static void dot_k(const vt_kblock *w, const vt_xk *const x[4], int64_t nb, int mode, float out[4]) {
    __m128 acc = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const vt_kblock *wb = w + b;
#if VT_VNNI == 2
        __m512i a[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
        for (int j = 0; j < QK_K; j += 64) {
            const __m512i q = _mm512_load_si512(wb->q + j), s = _mm512_load_si512(wb->sx + j / 2);
            for (int r = 0; r < 4; r++)
                a[r] = _mm512_dpwssd_epi32(a[r], _mm512_maddubs_epi16(q, _mm512_load_si512(x[r][b].q + j)), s);
        }
        const __m128i s1 = hsum4(fold512(a[0]), fold512(a[1]), fold512(a[2]), fold512(a[3]));
#else
        __m256i a[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int j = 0; j < QK_K; j += 32) {
            const __m256i q = _mm256_load_si256((const __m256i *)(wb->q + j));
            const __m256i s = _mm256_load_si256((const __m256i *)(wb->sx + j / 2));
            for (int r = 0; r < 4; r++)
                a[r] = DPWSSD(a[r], _mm256_maddubs_epi16(q, _mm256_load_si256((const __m256i *)(x[r][b].q + j))), s);
        }
        const __m128i s1 = hsum4(a[0], a[1], a[2], a[3]);
#endif
        acc = _mm_add_ps(acc, _mm_mul_ps(dx4(x, b), k_value4(wb, s1, k_mins4(wb, x, b), mode)));
    }
    _mm_storeu_ps(out, acc);
}

static void dot_q8_0(const uint8_t *w, const vt_x8 *const x[4], int64_t nb, float out[4]) {
    __m128 acc = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + 34 * b;
        const __m256i wq = _mm256_loadu_si256((const __m256i *)(wb + 2)), aw = _mm256_sign_epi8(wq, wq);
        __m256i p[4];
        for (int r = 0; r < 4; r++) /* |w| x (x with w's sign): u8 x s8, the same products */
            p[r] = DPBUSD(_mm256_setzero_si256(), aw, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[r][b].q), wq));
        const __m128 t = _mm_mul_ps(_mm_set1_ps(vt_fp16(vt_rd16(wb))),
                                    _mm_setr_ps(x[0][b].d, x[1][b].d, x[2][b].d, x[3][b].d));
        acc = _mm_add_ps(acc, _mm_mul_ps(t, _mm_cvtepi32_ps(hsum4(p[0], p[1], p[2], p[3]))));
    }
    _mm_storeu_ps(out, acc);
}

/* 8 weights as fp32: F32, F16 (F16C, exact) or BF16 (a shift, exact). */
static inline __m256 load8(int type, const void *w, int64_t i) {
    if (type == VT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    if (type == VT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))), 16));
    return _mm256_loadu_ps((const float *)w + i);
}

/* acc[k] + acc[k+8], then +4, +2, +1: the portable tree. */
static inline float reduce16(__m256 lo, __m256 hi) {
    const __m256 s = _mm256_add_ps(lo, hi);
    const __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    const __m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)));
}

static void dot_f(int type, const void *w, const float *const x[4], int64_t n, float out[4]) {
    __m256 lo[4], hi[4];
    for (int r = 0; r < 4; r++) lo[r] = hi[r] = _mm256_setzero_ps();
    const int64_t full = n / 16 * 16;
    for (int64_t i = 0; i < full; i += 16) {
        const __m256 w0 = load8(type, w, i), w1 = load8(type, w, i + 8);
        for (int r = 0; r < 4; r++) {
            lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(w0, _mm256_loadu_ps(x[r] + i)));
            hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(w1, _mm256_loadu_ps(x[r] + i + 8)));
        }
    }
    if (full < n) { /* the tail, zero-padded to 16 as in the portable recipe */
        float wt[16] = {0}, xt[16];
        for (int64_t k = full; k < n; k++) wt[k - full] = vt_load_f(type, w, k);
        const __m256 w0 = _mm256_loadu_ps(wt), w1 = _mm256_loadu_ps(wt + 8);
        for (int r = 0; r < 4; r++) {
            memset(xt, 0, sizeof xt);
            memcpy(xt, x[r] + full, (size_t)(n - full) * sizeof(float));
            lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(w0, _mm256_loadu_ps(xt)));
            hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(w1, _mm256_loadu_ps(xt + 8)));
        }
    }
    for (int r = 0; r < 4; r++) out[r] = reduce16(lo[r], hi[r]);
}

const vt_kernels VT_KERNELS = {dot_k, dot_q8_0, dot_f, vt_unpack_k_any};
