/* vocabtrim native kernels: the internal interface shared by the sources.
 *
 * Every output of a matmul is a fixed sequence of operations on one weight row and one
 * activation row: integer dot products (exact, so any instruction set and any grouping
 * gives the same integer) and then a per-block float recipe that every path follows in
 * the same order (see kern_portable.c, the reference).  That is what makes the results
 * independent of the batch size L, the thread count and the instruction set. */
#ifndef VT_H
#define VT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define VT_API __attribute__((visibility("default")))

/* GGUF tensor types (ggml_type ids) the kernels read at their stored format. */
enum { VT_F32 = 0, VT_F16 = 1, VT_Q4_0 = 2, VT_Q4_1 = 3, VT_Q5_0 = 6, VT_Q5_1 = 7, VT_Q8_0 = 8, VT_Q4_K = 12,
       VT_Q5_K = 13, VT_Q6_K = 14, VT_BF16 = 30 };

/* Instruction-set paths, in order of preference. */
enum { VT_ISA_PORTABLE = 0, VT_ISA_AVX2 = 1, VT_ISA_AVXVNNI = 2, VT_ISA_AVX512VNNI = 3, VT_ISA_COUNT };

/* Error codes the Python side turns into one-line messages. */
enum { VT_OK = 0, VT_ETYPE = -1, VT_ESHAPE = -2, VT_ENOMEM = -3, VT_EISA = -4 };

#define QK_K 256
#define QK8_0 32

/* A Q4_K/Q5_K/Q6_K super-block unpacked (by the portable path; the SIMD paths unpack the
 * same integers into registers) into the form that defines the integer sums:
 * q: the 256 unsigned quants in element order; sx: the scale of each pair of elements
 * (its 16-element group's scale, so maddubs pairs then madd with sx gives scale x dot);
 * mn: per 16-element group, the integer that multiplies the group's activation sum
 * (Q4_K/Q5_K: the 6-bit min; Q6_K: 32 x scale, the -32 offset); d, dm: fp32 factors. */
typedef struct {
    uint8_t q[QK_K];
    int16_t sx[QK_K / 2];
    int16_t mn[QK_K / 16];
    float d, dm;
} vt_kblock;

/* One activation row's super-block quantized alone (Q8_K-style): int8 quants and the sums
 * of each 16 (for the mins); its fp32 scale is kept apart, so that the scales of a block's
 * rows are contiguous.  The quants are in element order for the portable path and in the
 * order the SIMD paths unpack weights to (kern_x86.h's order_k) for theirs: each table's
 * quantize_k writes what its dot_k reads.  A matmul lays blocks out block-major: row r's block b is
 * x[b * L + r], its scale d[b * L + r]. */
typedef struct {
    int8_t q[QK_K];
    int16_t bs[QK_K / 16];
    int16_t bs32[QK_K / 32]; /* bs in pairs summed: the Q4_K/Q5_K tiles' mins, two sub-blocks a vpdpwssd */
} __attribute__((aligned(64))) vt_xk;

/* One activation row's 32-block quantized alone (Q8_0-style, fp32 scale), with the sum of
 * its quants (Q4_1/Q5_1's minimum multiplies it; -16 x it turns the sum of u*x, u = w + 16
 * unsigned, into that of w*x) and the same as -16 x the sums of each 4 (the lanes of the
 * 256-bit integer dot, so that each lane is exact alone). */
typedef struct {
    int8_t q[QK8_0];
    int32_t ns16[8];
    int32_t sum;
    float d;
} vt_x8;

/* How a format's two integer sums become one float per block:
 * VT_MIN_SEP: v = d*S1 - dm*S2 (Q4_K, Q5_K: the mins have their own scale);
 * VT_MIN_INT: v = d*(S1 - S2)  (Q6_K: the -32 offset shares d, subtract exactly). */
enum { VT_MIN_SEP = 0, VT_MIN_INT = 1 };

/* Per instruction set kernels.  Each computes the outputs of its weight rows (one, a few, or
 * a tile's) against n (1..VT_ROWS) activation rows; a row's result depends on that row
 * only, never on n. */
#define VT_ROWS 8
#define VT_TILE 16 /* the most weight rows a tile interleaves (vt_kernels.tile) */
#define VT_ATT_HEADS 6 /* weighted value sums taken together (wsum's nh): a Qwen2 row's heads of a kv head */
#define VT_ATT_Q 6      /* queries scored together against each key block (scores' nq; AVX2: 12 sums in 16 registers) */
#define VT_KEYS 16      /* keys a block of the key cache holds, dims outer: [dim][key] */
#define VT_STREAM_ROWS 2 /* a drafter's steps: 1 token, or 2 after a round all accepted */
typedef struct {
    /* K-quants: nb raw blocks of `type` against n Q8_K-quantized rows, row r's block b at
     * x[b*stride + r] with scale dx[b*stride + r] (dx readable 3 floats past the last),
     * added to out[r]: the recipe's sum continues from it, so a row's blocks taken in
     * consecutive column chunks give the bits of one call */
    void (*dot_k)(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t stride, int n, int64_t nb,
                  float *out);
    /* K-quants, one activation row (L = 1, its blocks and scales contiguous) against nrows
     * consecutive weight rows of nb blocks from w: y[r], r < nrows (each as dot_k's) */
    void (*dot_k_rows1)(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t nb, int64_t nrows,
                        float *y);
    /* 32-element weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 raw blocks) against n (1..VT_ROWS)
     * Q8_0-quantized rows */
    void (*dot_q32)(int type, const uint8_t *w, const vt_x8 *const *x, int n, int64_t nb, float *out);
    /* 32-element weights, nx (1..VT_STREAM_ROWS) activation rows of nb blocks each, one after
     * the other from x, against nrows consecutive weight rows from w: y[l*ystride + r] for
     * row l, r < nrows (each as dot_q32's) */
    void (*dot_q32_stream)(int type, const uint8_t *w, const vt_x8 *x, int nx, int64_t nb, int64_t nrows, float *y,
                           int64_t ystride);
    /* F32/F16/BF16 weight row (raw) against 4 fp32 rows of n columns */
    void (*dot_f)(int type, const void *w, const float *const *x, int n, int64_t cols, float *out);
    /* Attention's scores: s[i*ss + p] = key p against query q[i], i < nq (1..VT_ATT_Q), p < np,
     * each summed over dims 0..n-1 in order (q[d]*k[d] rounded, then added): every key its
     * own lane, no reduction across lanes.  Keys in blocks of VT_KEYS, dims outer: key p's
     * dim d at kb[vt_key_at(p, d, n)] (the last block readable whole; lanes past np ignored) */
    void (*scores)(const float *kb, int64_t np, const float *const *q, int nq, int64_t n, float *s, int64_t ss);
    /* Attention's weighted values: o[i][d] = o[i][d] + e[i*es + p] * v[p*vs + d] for p = 0..np-1
     * in order, heads i < nh, d < n (elementwise: any width, any grouping of d) */
    void (*wsum)(float *const *o, int nh, const float *e, int64_t es, const float *v, int64_t vs, int64_t np, int64_t n);
    /* y[i] = vt_exp(x[i]), i < n (y may be x) */
    void (*exp_n)(const float *x, float *y, int64_t n);
    /* Attention's weights in place: e[p] = vt_exp(e[p]*scale - max), p < n, max the largest
     * e[p]*scale (v > m ? v : m); returns vt_sum8 of the weights */
    float (*softmax)(float *e, int64_t n, float scale);
    /* SwiGLU in place: g[i] = g[i] / (1 + vt_exp(-g[i])) * u[i], i < n */
    void (*swiglu)(float *g, const float *u, int64_t n);
    /* vt_quantize_k (max, multiplies, compares and the rounding trick are elementwise or
     * exact: every width gives its bits) */
    void (*quantize_k)(const float *x, int64_t cols, vt_xk *out, float *d, int64_t stride);
    /* vt_quantize_8_0, the same way */
    void (*quantize_8)(const float *x, int64_t cols, vt_x8 *out);
    /* nb K-quant blocks of `type` from src into the layout dot_k and dot_k_rows1 read (the
     * same size; dst may be src); NULL: they read the file's */
    void (*pack_k)(int type, const uint8_t *src, int64_t nb, uint8_t *dst);
    /* The types whose rows this path packs in tiles (bit 1 << type): a matrix's first
     * rows / tile * tile rows as tiles (pack_kt), the rest as pack_k's (K-quants) or raw */
    unsigned tiled;
    int tile; /* rows a tile holds (at most VT_TILE) */
    /* `tile` rows of nb blocks each (row after row, raw; not dst) into one tile (the same
     * size) */
    void (*pack_kt)(int type, const uint8_t *rows, int64_t nb, uint8_t *dst);
    /* One tile against n (1..VT_ROWS) rows as dot_k's x, dx, stride: y[l*ystride + j], the
     * tile's row j (each as dot_k's, from 0) */
    void (*dot_kt)(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t stride, int n, int64_t nb,
                   float *y, int64_t ystride);
    /* A 32-element type's tile against n (1..VT_ROWS) rows of nb blocks each, one after the
     * other from x: y[l*ystride + j] (each as dot_q32's) */
    void (*dot_q32t)(int type, const uint8_t *w, const vt_x8 *x, int n, int64_t nb, float *y, int64_t ystride);
} vt_kernels;

extern const vt_kernels vt_kernels_portable;
#if defined(__x86_64__) || defined(__i386__)
extern const vt_kernels vt_kernels_avx2, vt_kernels_avxvnni, vt_kernels_avx512vnni;
#endif

/* fp16/bf16 to fp32, exact (no rounding happens widening) */
static inline float vt_fp16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man) { /* subnormal: man x 2^-24, exact in fp32 */
        float f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    } else {
        bits = sign;
    }
    union { uint32_t u; float f; } v = {bits};
    return v.f;
}

static inline float vt_bf16(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* Element i of an F32/F16/BF16 row as fp32. */
static inline float vt_load_f(int type, const void *w, int64_t i) {
    if (type == VT_F16) return vt_fp16(((const uint16_t *)w)[i]);
    if (type == VT_BF16) return vt_bf16(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

/* exp(x), the engine's own (softmax and SiLU): no libm, so that every path, scalar or 8 and
 * 16 lanes wide, rounds the same steps (the build fuses nothing). Cephes' expf: x clamped
 * to [-87.34, 88.38] (NaN: to the low end), n = round(x log2 e) by the 1.5 x 2^23 trick,
 * r = x - n ln 2 in two parts, a degree-6 polynomial, times 2^n built in the exponent. */
#define VT_EXP_LO (-87.33654f)
#define VT_EXP_HI 88.37626f
#define VT_EXP_C {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, \
                  5.0000001201e-1f}
static inline float vt_exp(float x) {
    static const float c[6] = VT_EXP_C;
    const float magic = 12582912.0f;
    x = x > VT_EXP_LO ? x : VT_EXP_LO;
    x = x < VT_EXP_HI ? x : VT_EXP_HI;
    const float n = (x * 1.44269504088896341f + magic) - magic;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = c[0];
    for (int i = 1; i < 6; i++) p = p * r + c[i];
    p = (p * (r * r) + r) + 1.0f;
    union { uint32_t u; float f; } two = {(uint32_t)((int32_t)n + 127) << 23};
    return p * two.f;
}

/* vt_sum8's 8 running sums halved to one as dot_f's lanes are: s[k] + s[k + 4], then + 2, + 1. */
static inline float vt_fold8(float *s) {
    for (int h = 4; h; h /= 2)
        for (int k = 0; k < h; k++) s[k] = s[k] + s[k + h];
    return s[0];
}

/* The sum of e[0..n-1] (sq: of their squares) as 8 running sums (element p into sum p % 8,
 * in order), then vt_fold8: 8 independent chains, not one add waiting on the last (an
 * RMSNorm's 1536 squares 4.6k cycles in one chain). */
static inline float vt_sum8(const float *e, int64_t n, int sq) {
    float s[8] = {0};
    int64_t p = 0;
    for (; p + 8 <= n; p += 8)
        for (int k = 0; k < 8; k++) s[k] = s[k] + (sq ? e[p + k] * e[p + k] : e[p + k]);
    for (int k = 0; p < n; p++, k++) s[k] = s[k] + (sq ? e[p] * e[p] : e[p]);
    return vt_fold8(s);
}

/* Where the key cache's blocks (VT_KEYS keys, dims outer; scores' layout) keep key p's dim d
 * of a head of n dims: to_cache writes there, scores and vt_scores read there. */
static inline int64_t vt_key_at(int64_t p, int64_t d, int64_t n) {
    return p / VT_KEYS * VT_KEYS * n + d * VT_KEYS + p % VT_KEYS;
}

/* An activation block's 32-element sums from its 16-element ones (every path's quantize_k). */
static inline void vt_sums32(vt_xk *o) {
    for (int k = 0; k < QK_K / 32; k++) o->bs32[k] = (int16_t)(o->bs[2 * k] + o->bs[2 * k + 1]);
}

/* n bytes on a 64-byte boundary (free() releases them): the kernels' 512-bit loads of
 * caches and buffers each one cache line, not two (malloc's 16-byte alignment split most
 * of them: attention's value sums 27% slower at 2000 cached tokens, Zen 5). */
static inline void *vt_alloc(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64 + 64 * !n); }

static inline uint16_t vt_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Whether a 32-element type stores a minimum (value d*q + m, q unsigned: Q4_1, Q5_1). */
static inline int vt_has_min(int type) { return type == VT_Q4_1 || type == VT_Q5_1; }

/* A 32-element block as its quants q[32] in element order, the integers every path's
 * unpack produces: Q4_0: nibble - 8; Q5_0: nibble | fifth bit << 4, - 16; Q8_0: as stored
 * (value d*q); Q4_1: nibble; Q5_1: nibble | fifth bit << 4 (value d*q + m, *m set).
 * Returns the fp16 scale d (the first 2 bytes of each; m the next 2 of Q4_1/Q5_1). */
static inline float vt_unpack_32(int type, const uint8_t *blk, int8_t *q, float *m) {
    if (type == VT_Q8_0) {
        for (int i = 0; i < 32; i++) q[i] = (int8_t)blk[2 + i];
    } else {
        const int five = type == VT_Q5_0 || type == VT_Q5_1, lo = vt_has_min(type);
        const uint8_t *h = blk + (lo ? 4 : 2), *qs = h + (five ? 4 : 0);
        const uint32_t qh = five ? (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24
                                 : 0;
        const int off = lo ? 0 : five ? 16 : 8;
        for (int i = 0; i < 16; i++) {
            q[i] = (int8_t)(((qs[i] & 0x0F) | ((qh >> i) & 1) << 4) - off);
            q[i + 16] = (int8_t)(((qs[i] >> 4) | ((qh >> (i + 16)) & 1) << 4) - off);
        }
        if (lo) *m = vt_fp16(vt_rd16(blk + 2));
    }
    return vt_fp16(vt_rd16(blk));
}

/* Bytes per block and elements per block of a supported type; 0 when unsupported (inline:
 * a constant in a kernel whose type is). */
static inline int64_t vt_block_bytes(int type) {
    switch (type) {
    case VT_F32: return 4;
    case VT_F16: case VT_BF16: return 2;
    case VT_Q4_0: return 18;
    case VT_Q4_1: return 20;
    case VT_Q5_0: return 22;
    case VT_Q5_1: return 24;
    case VT_Q8_0: return 34;
    case VT_Q4_K: return 144;
    case VT_Q5_K: return 176;
    case VT_Q6_K: return 210;
    default: return 0;
    }
}

static inline int64_t vt_block_elems(int type) {
    switch (type) {
    case VT_F32: case VT_F16: case VT_BF16: return 1;
    case VT_Q4_0: case VT_Q4_1: case VT_Q5_0: case VT_Q5_1: case VT_Q8_0: return QK8_0;
    case VT_Q4_K: case VT_Q5_K: case VT_Q6_K: return QK_K;
    default: return 0;
    }
}

/* Quantize one row of cols floats, alone: K-quant blocks to out[b*stride] with scales
 * d[b*stride]; Q8_0 blocks to out[b]. */
void vt_quantize_k(const float *x, int64_t cols, vt_xk *out, float *d, int64_t stride);
void vt_quantize_8_0(const float *x, int64_t cols, vt_x8 *out);

/* The portable unpack: the integers every path's unpack must produce. */
void vt_unpack_k_portable(int type, const uint8_t *src, int64_t nb, vt_kblock *dst);

/* Thread pool: a job is `items` outputs (or groups of outputs), handed out `chunk` at a
 * time to whichever thread is free, the caller included: fn(ctx, i0, i1, ith) computes
 * items i0..i1-1 on thread ith (0..threads-1, for per-thread scratch).  A job of less than
 * VT_POOL_MIN_WORK (multiply-adds, roughly) runs on the caller alone, where waking the
 * others costs more than it saves.  Who computes an output never changes its bits. */
#define VT_POOL_MIN_WORK (1 << 16)
typedef struct vt_pool vt_pool;
typedef void (*vt_task)(void *ctx, int64_t i0, int64_t i1, int ith);
VT_API vt_pool *vt_pool_new(int nthreads);
VT_API void vt_pool_free(vt_pool *p);
VT_API int vt_pool_threads(const vt_pool *p);
void vt_pool_run(vt_pool *p, vt_task fn, void *ctx, int64_t items, int64_t chunk, int64_t work);

const vt_kernels *vt_kernels_for(int isa);

/* n elements (whole blocks) of raw `type` data as fp32. */
VT_API int vt_dequantize(int type, const void *src, int64_t n, float *dst);

typedef struct vt_model vt_model;

/* Whether path `isa` reads weights of `type` in a layout of its own (vt_pack). */
VT_API int vt_packs(int isa, int type);

/* A [rows, cols] matrix of raw `type` data into the layout path `isa` reads (a copy where it
 * reads the file's; dst may be src). */
VT_API int vt_pack(int isa, int type, const void *src, int64_t rows, int64_t cols, void *dst);

/* Path `isa`'s exp_n, softmax, swiglu, scores and wsum (for tests; VT_EISA where the CPU
 * lacks it). */
VT_API int vt_exp_n(int isa, const float *x, float *y, int64_t n);
VT_API int vt_softmax(int isa, float *e, int64_t n, float scale, float *sum);
VT_API int vt_swiglu(int isa, float *g, const float *u, int64_t n);
VT_API int vt_scores(int isa, const float *k, int64_t np, const float *const *q, int nq, int64_t n, float *s,
                     int64_t ss); /* k: [np][n] rows, put in blocks here */
VT_API int vt_wsum(int isa, float *const *o, int nh, const float *e, int64_t es, const float *v, int64_t vs,
                   int64_t np, int64_t n);

/* Y[L, rows] = X[L, cols] @ W[rows, cols]^T with W GGUF data of `type` as path `isa` reads
 * it (vt_pack). */
VT_API int vt_matmul(vt_pool *pool, int isa, int type, const void *w, int64_t rows, int64_t cols,
                     const float *x, int64_t L, float *y);

/* Several matmuls of one input X[L, cols] in one pool job (the input quantized once per
 * block kind; weights as path `isa` reads them): part i is Y_i[L, rows_i] = X @ W_i^T.  With swiglu (two parts of equal
 * rows: gate and up), the gate's Y becomes silu(gate) * up, elementwise. */
#define VT_MAX_PARTS 3
typedef struct {
    int type;
    const void *w;
    int64_t rows;
    float *y;
} vt_mm_part;
int vt_matmul_parts(vt_pool *pool, int isa, int64_t cols, const float *x, int64_t L, const vt_mm_part *part, int n,
                    int swiglu);

#endif
