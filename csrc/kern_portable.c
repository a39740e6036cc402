/* The portable path: the reference every instruction-set path must equal bit for bit.
 *
 * The float recipe per output (one weight row against one activation row), which the
 * SIMD paths follow lane by lane with separate multiplies and adds (the build passes
 * -ffp-contract=off so the compiler fuses nothing):
 *   K-quants, per super-block b in order, S1 = sum sx*q*x and S2 = sum mn*bsum (int32):
 *     VT_MIN_SEP: v = d*(float)S1 - dm*(float)S2;  VT_MIN_INT: v = d*(float)(S1 - S2)
 *     acc = acc + dx*v
 *   Q4_0, Q5_0, Q8_0: per 32-block b in order, with t = dw*dx and S the block's sum of q*x
 *     (int32, q its quants from vt_unpack_32): acc = acc + t*(float)S.  (One sum a block,
 *     so that a path holding 16 weight rows in the lanes of a vector never sums across
 *     them; a 256-bit path folds each block's 8 lanes, exactly, as integers.)
 *   Q4_1, Q5_1 (value d*q + m): the same with the minimum's term, X the block's sum of the
 *     activation quants: acc = acc + (t*(float)S + (m*dx)*(float)X).
 *   F32/F16/BF16: 16 partial sums, acc[i%16] = acc[i%16] + w[i]*x[i] over i in order
 *     (the tail zero-padded to 16), then halved: acc[k] += acc[k+h] for h = 8, 4, 2, 1.
 * Integer sums are exact, so how a path groups them does not matter. */
#include <math.h>
#include <string.h>

#include "vt.h"

/* Symmetric 8-bit quantization of one block of n values: d = amax/127, q = round(x*127/amax),
 * rounding half to even by the 1.5 x 2^23 trick (no libm call, the same on every path).
 * NaN compares false everywhere below, so NaN or inf input gives defined (if useless) output. */
static float quantize_block(const float *x, int n, int8_t *q) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    if (!(amax > 0.0f) || isinf(amax)) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    const float id = 127.0f / amax, magic = 12582912.0f;
    for (int i = 0; i < n; i++) {
        float v = x[i] * id;
        v = v >= -127.0f ? (v <= 127.0f ? v : 127.0f) : -127.0f;
        q[i] = (int8_t)(int)((v + magic) - magic);
    }
    return amax / 127.0f;
}

void vt_quantize_k(const float *x, int64_t cols, vt_xk *out, float *d, int64_t stride) {
    for (int64_t b = 0; b < cols / QK_K; b++) {
        vt_xk *o = out + b * stride;
        d[b * stride] = quantize_block(x + b * QK_K, QK_K, o->q);
        for (int k = 0; k < QK_K / 16; k++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += o->q[16 * k + i];
            o->bs[k] = (int16_t)s;
        }
        vt_sums32(o);
    }
}

void vt_quantize_8_0(const float *x, int64_t cols, vt_x8 *out) {
    for (int64_t b = 0; b < cols / QK8_0; b++) {
        out[b].d = quantize_block(x + b * QK8_0, QK8_0, out[b].q);
        out[b].sum = 0;
        for (int k = 0; k < 8; k++) {
            const int sum = out[b].q[4 * k] + out[b].q[4 * k + 1] + out[b].q[4 * k + 2] + out[b].q[4 * k + 3];
            out[b].ns16[k] = -16 * sum;
            out[b].sum += sum;
        }
    }
}

/* Unpacking Q4_K/Q5_K/Q6_K super-blocks into vt_kblock (layouts: ggml-common.h, gguf
 * quants.py); the SIMD paths unpack with their own instructions to the same integers. */
/* Q4_K/Q5_K: the 6-bit scale and min of sub-block j (of 8) from the 12 packed bytes. */
static inline void vt_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Scales and mins of a Q4_K/Q5_K block: sub-blocks of 32 = two groups of 16. */
static inline void vt_unpack_scales_45(const uint8_t *blk, vt_kblock *o) {
    o->d = vt_fp16(vt_rd16(blk));
    o->dm = vt_fp16(vt_rd16(blk + 2));
    for (int j = 0; j < 8; j++) {
        int sc, m;
        vt_scale_min(j, blk + 4, &sc, &m);
        for (int p = 0; p < 16; p++) o->sx[16 * j + p] = (int16_t)sc;
        o->mn[2 * j] = o->mn[2 * j + 1] = (int16_t)m;
    }
}

static void vt_unpack_q4_k(const uint8_t *blk, vt_kblock *o) {
    const uint8_t *qs = blk + 16;
    vt_unpack_scales_45(blk, o);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            o->q[64 * g + l] = qs[32 * g + l] & 0xF;
            o->q[64 * g + 32 + l] = qs[32 * g + l] >> 4;
        }
}

static void vt_unpack_q5_k(const uint8_t *blk, vt_kblock *o) {
    const uint8_t *qh = blk + 16, *qs = blk + 48;
    vt_unpack_scales_45(blk, o);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++) {
            o->q[64 * g + l] = (uint8_t)((qs[32 * g + l] & 0xF) | (((qh[l] >> (2 * g)) & 1) << 4));
            o->q[64 * g + 32 + l] = (uint8_t)((qs[32 * g + l] >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4));
        }
}

static void vt_unpack_q6_k(const uint8_t *blk, vt_kblock *o) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *sc = (const int8_t *)(blk + 192);
    o->d = o->dm = vt_fp16(vt_rd16(blk + 208));
    for (int n = 0; n < 2; n++) {
        const uint8_t *l4 = ql + 64 * n, *h2 = qh + 32 * n;
        uint8_t *q = o->q + 128 * n;
        for (int l = 0; l < 32; l++) {
            q[l] = (uint8_t)((l4[l] & 0xF) | ((h2[l] & 3) << 4));
            q[l + 32] = (uint8_t)((l4[l + 32] & 0xF) | (((h2[l] >> 2) & 3) << 4));
            q[l + 64] = (uint8_t)((l4[l] >> 4) | (((h2[l] >> 4) & 3) << 4));
            q[l + 96] = (uint8_t)((l4[l + 32] >> 4) | (((h2[l] >> 6) & 3) << 4));
        }
    }
    for (int k = 0; k < 16; k++) {
        for (int p = 0; p < 8; p++) o->sx[8 * k + p] = sc[k];
        o->mn[k] = (int16_t)(32 * sc[k]);
    }
}

void vt_unpack_k_portable(int type, const uint8_t *src, int64_t nb, vt_kblock *dst) {
    const int64_t bytes = vt_block_bytes(type);
    void (*one)(const uint8_t *, vt_kblock *) =
        type == VT_Q4_K ? vt_unpack_q4_k : type == VT_Q5_K ? vt_unpack_q5_k : vt_unpack_q6_k;
    for (int64_t b = 0; b < nb; b++) one(src + b * bytes, dst + b);
}

/* The float step of one super-block (every path's k_value). */
static inline float k_block_value(const vt_kblock *w, int32_t s1, int32_t s2, int mode) {
    return mode == VT_MIN_INT ? w->d * (float)(s1 - s2) : w->d * (float)s1 - w->dm * (float)s2;
}

static void dot_k(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t stride, int n, int64_t nb,
                  float *out) {
    const int64_t bytes = vt_block_bytes(type);
    const int mode = type == VT_Q6_K ? VT_MIN_INT : VT_MIN_SEP;
    float acc[VT_ROWS];
    memcpy(acc, out, sizeof(float) * (size_t)n);
    for (int64_t b = 0; b < nb; b++) {
        vt_kblock k;
        vt_unpack_k_portable(type, w + b * bytes, 1, &k);
        for (int r = 0; r < n; r++) {
            const vt_xk *xb = x + b * stride + r;
            int32_t s1 = 0, s2 = 0;
            for (int p = 0; p < QK_K / 2; p++)
                s1 += k.sx[p] * (k.q[2 * p] * xb->q[2 * p] + k.q[2 * p + 1] * xb->q[2 * p + 1]);
            for (int g = 0; g < QK_K / 16; g++) s2 += k.mn[g] * xb->bs[g];
            acc[r] = acc[r] + dx[b * stride + r] * k_block_value(&k, s1, s2, mode);
        }
    }
    memcpy(out, acc, sizeof(float) * (size_t)n);
}

static void dot_k_rows1(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t nb, int64_t nrows,
                        float *y) {
    for (int64_t r = 0; r < nrows; r++) {
        y[r] = 0.0f;
        dot_k(type, w + r * nb * vt_block_bytes(type), x, dx, 1, 1, nb, y + r);
    }
}

static void dot_q32(int type, const uint8_t *w, const vt_x8 *const *x, int n, int64_t nb, float *out) {
    const int64_t bytes = vt_block_bytes(type);
    for (int r = 0; r < n; r++) {
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int8_t wq[QK8_0];
            float m = 0.0f;
            const float t = vt_unpack_32(type, w + bytes * b, wq, &m) * x[r][b].d, tm = m * x[r][b].d;
            int32_t s = 0;
            for (int i = 0; i < QK8_0; i++) s += wq[i] * x[r][b].q[i];
            acc = vt_has_min(type) ? acc + (t * (float)s + tm * (float)x[r][b].sum) : acc + t * (float)s;
        }
        out[r] = acc;
    }
}

static void dot_q32_stream(int type, const uint8_t *w, const vt_x8 *x, int nx, int64_t nb, int64_t nrows, float *y,
                           int64_t ystride) {
    for (int l = 0; l < nx; l++) {
        const vt_x8 *xl = x + l * nb;
        for (int64_t r = 0; r < nrows; r++)
            dot_q32(type, w + r * nb * vt_block_bytes(type), &xl, 1, nb, y + l * ystride + r);
    }
}

static void dot_f(int type, const void *w, const float *const *x, int rows, int64_t n, float *out) {
    for (int r = 0; r < rows; r++) {
        float acc[16] = {0};
        for (int64_t i = 0; i < n; i += 16)
            for (int k = 0; k < 16; k++) {
                const int in = i + k < n;
                const float wv = in ? vt_load_f(type, w, i + k) : 0.0f, xv = in ? x[r][i + k] : 0.0f;
                acc[k] = acc[k] + wv * xv;
            }
        for (int h = 8; h > 0; h >>= 1)
            for (int k = 0; k < h; k++) acc[k] = acc[k] + acc[k + h];
        out[r] = acc[0];
    }
}

static void scores(const float *kb, int64_t np, const float *const *q, int nq, int64_t n, float *s, int64_t ss) {
    for (int64_t p0 = 0; p0 < np; p0 += VT_KEYS) {
        const float *k = kb + vt_key_at(p0, 0, n);
        for (int i = 0; i < nq; i++) {
            float a[VT_KEYS] = {0};
            for (int64_t d = 0; d < n; d++)
                for (int l = 0; l < VT_KEYS; l++) a[l] = a[l] + q[i][d] * k[d * VT_KEYS + l];
            for (int l = 0; l < VT_KEYS && p0 + l < np; l++) s[i * ss + p0 + l] = a[l];
        }
    }
}

static void wsum(float *const *o, int nh, const float *e, int64_t es, const float *v, int64_t vs, int64_t np,
                 int64_t n) {
    for (int64_t p = 0; p < np; p++)
        for (int i = 0; i < nh; i++)
            for (int64_t d = 0; d < n; d++) o[i][d] = o[i][d] + e[i * es + p] * v[p * vs + d];
}

static void exp_n(const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = vt_exp(x[i]);
}

static float softmax(float *e, int64_t n, float scale) {
    float mx = -INFINITY;
    for (int64_t p = 0; p < n; p++) {
        const float v = e[p] * scale;
        e[p] = v, mx = v > mx ? v : mx; /* exact in any order (x86: a vector of running maxima) */
    }
    for (int64_t p = 0; p < n; p++) e[p] = vt_exp(e[p] - mx);
    return vt_sum8(e, n, 0);
}

static void swiglu(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + vt_exp(-g[i])) * u[i];
}

const vt_kernels vt_kernels_portable = {dot_k, dot_k_rows1, dot_q32, dot_q32_stream, dot_f, scores, wsum, exp_n, softmax, swiglu, vt_quantize_k, vt_quantize_8_0, NULL, 0, 0, NULL, NULL, NULL};

/* Dequantize n elements (whole blocks) of `type` to fp32, in the order and with the float
 * operations of ggml's dequantize_row_* (the tests hold it against gguf's quants.py). */
VT_API int vt_dequantize(int type, const void *src, int64_t n, float *dst) {
    const int64_t be = vt_block_elems(type), bb = vt_block_bytes(type);
    if (!be) return VT_ETYPE;
    if (n % be) return VT_ESHAPE;
    const uint8_t *s = src;
    if (be == 1) {
        for (int64_t i = 0; i < n; i++) dst[i] = vt_load_f(type, src, i);
        return VT_OK;
    }
    for (int64_t b = 0; b < n / be; b++, s += bb, dst += be) {
        if (be == QK8_0) {
            int8_t q[QK8_0];
            float m = 0.0f;
            const float d = vt_unpack_32(type, s, q, &m);
            for (int i = 0; i < QK8_0; i++) dst[i] = vt_has_min(type) ? (float)q[i] * d + m : (float)q[i] * d;
            continue;
        }
        vt_kblock k;
        vt_unpack_k_portable(type, s, 1, &k);
        for (int g = 0; g < QK_K / 16; g++) {
            if (type == VT_Q6_K) {
                const float ds = k.d * (float)k.sx[8 * g];
                for (int i = 16 * g; i < 16 * g + 16; i++) dst[i] = ds * (float)(k.q[i] - 32);
            } else {
                const float ds = k.d * (float)k.sx[8 * g], dm = k.dm * (float)k.mn[g];
                for (int i = 16 * g; i < 16 * g + 16; i++) dst[i] = ds * (float)k.q[i] - dm;
            }
        }
    }
    return VT_OK;
}
