/* The small-batch matmul: Y[L, rows] = X[L, cols] @ W[rows, cols]^T, W raw GGUF data.
 * Each activation row is quantized alone; each weight row is read from memory once and
 * dotted with all L rows, VT_ROWS at a time (its blocks unpacked in registers each time,
 * from L1 after the first pass); threads take contiguous ranges of weight rows. */
#include <stdlib.h>
#include <string.h>

#include "vt.h"

static int cpu_has(int isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (isa) {
    case VT_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    case VT_ISA_AVXVNNI: return cpu_has(VT_ISA_AVX2) && __builtin_cpu_supports("avxvnni");
    case VT_ISA_AVX512VNNI:
        return cpu_has(VT_ISA_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    }
#endif
    return isa == VT_ISA_PORTABLE;
}

/* Whether this CPU runs instruction-set path `isa`. */
VT_API int vt_isa_supported(int isa) { return isa >= 0 && isa < VT_ISA_COUNT && cpu_has(isa); }

/* The best path this CPU runs. */
VT_API int vt_isa_best(void) {
    for (int isa = VT_ISA_COUNT - 1; isa > 0; isa--)
        if (cpu_has(isa)) return isa;
    return VT_ISA_PORTABLE;
}

const vt_kernels *vt_kernels_for(int isa) {
#if defined(__x86_64__) || defined(__i386__)
    static const vt_kernels *const table[VT_ISA_COUNT] = {&vt_kernels_portable, &vt_kernels_avx2,
                                                          &vt_kernels_avxvnni, &vt_kernels_avx512vnni};
    return vt_isa_supported(isa) ? table[isa] : NULL;
#else
    return isa == VT_ISA_PORTABLE ? &vt_kernels_portable : NULL;
#endif
}

typedef struct {
    const vt_kernels *k;
    int type;
    const uint8_t *w;
    int64_t rows, cols, L, row_bytes;
    const float *x;
    const void *xq; /* quantized rows: vt_xk blocks block-major, or vt_x8 blocks row after row */
    const float *xd; /* the vt_xk blocks' scales, block-major */
    float *y;
} mm_job;

static void mm_task(void *vjob, int ith, int nth) {
    mm_job *j = vjob;
    const int64_t r0 = j->rows * ith / nth, r1 = j->rows * (ith + 1) / nth;
    const int kq = j->type == VT_Q4_K || j->type == VT_Q5_K || j->type == VT_Q6_K;
    const int64_t nb = j->cols / vt_block_elems(j->type);
    /* Past VT_ROWS rows, weight rows go in groups of about 64 KB, each group dotted with one
     * chunk of activation rows after the other: a chunk stays in L2 across the group (a
     * prefill's 64 rows of 8960 columns, 590 KB, would otherwise stream from L3 per weight
     * row). The order of outputs changes, not how any is computed. */
    const int64_t group = j->L <= VT_ROWS ? 1 : 1 + (1 << 16) / j->row_bytes;
    float out[VT_ROWS];
    for (int64_t g = r0; g < r1; g += group)
        for (int64_t l0 = 0; l0 < j->L; l0 += VT_ROWS) {
            const int64_t m = j->L - l0 < VT_ROWS ? j->L - l0 : VT_ROWS;
            for (int64_t r = g; r < g + group && r < r1; r++) {
                const uint8_t *wr = j->w + r * j->row_bytes;
                if (kq) {
                    j->k->dot_k(j->type, wr, (const vt_xk *)j->xq + l0, j->xd + l0, j->L, (int)m, nb, out);
                } else if (j->type == VT_Q8_0) {
                    const vt_x8 *xs[VT_ROWS];
                    for (int i = 0; i < m; i++) xs[i] = (const vt_x8 *)j->xq + (l0 + i) * nb;
                    j->k->dot_q8_0(wr, xs, (int)m, nb, out);
                } else {
                    const float *xs[VT_ROWS];
                    for (int i = 0; i < m; i++) xs[i] = j->x + (l0 + i) * j->cols;
                    j->k->dot_f(j->type, wr, xs, (int)m, j->cols, out);
                }
                for (int i = 0; i < m; i++) j->y[(l0 + i) * j->rows + r] = out[i];
            }
        }
}

VT_API int vt_matmul(vt_pool *pool, int isa, int type, const void *w, int64_t rows, int64_t cols,
                     const float *x, int64_t L, float *y) {
    const int64_t be = vt_block_elems(type);
    if (!be) return VT_ETYPE;
    if (rows < 1 || cols < 1 || L < 1 || cols % be) return VT_ESHAPE;
    const vt_kernels *k = vt_kernels_for(isa);
    if (!k) return VT_EISA;
    mm_job j = {k, type, w, rows, cols, L, cols / be * vt_block_bytes(type), x, NULL, NULL, y};
    void *xq = NULL;
    float *xd = NULL;
    if (be == QK_K) {
        const int64_t nb = cols / QK_K;
        xq = aligned_alloc(32, (size_t)(L * nb) * sizeof(vt_xk));
        xd = calloc((size_t)(L * nb + 4), sizeof(float)); /* + 4: kernels load scales 4 rows at a time */
        if (!xq || !xd) {
            free(xq), free(xd);
            return VT_ENOMEM;
        }
        for (int64_t l = 0; l < L; l++) vt_quantize_k(x + l * cols, cols, (vt_xk *)xq + l, xd + l, L);
    } else if (be == QK8_0) {
        if (!(xq = malloc((size_t)(L * (cols / QK8_0)) * sizeof(vt_x8)))) return VT_ENOMEM;
        for (int64_t l = 0; l < L; l++) vt_quantize_8_0(x + l * cols, cols, (vt_x8 *)xq + l * (cols / QK8_0));
    }
    j.xq = xq;
    j.xd = xd;
    vt_pool_run(pool, mm_task, &j, rows * cols * L);
    free(xq), free(xd);
    return VT_OK;
}

/* Quantize L rows as the matmul does for a weight of `type` (for tests: q [L, cols] int8,
 * d [L, cols / block] fp32). */
VT_API int vt_quantize_rows(int type, const float *x, int64_t L, int64_t cols, int8_t *q, float *d) {
    const int64_t be = vt_block_elems(type);
    if (be != QK_K && be != QK8_0) return VT_ETYPE;
    if (cols < 1 || L < 1 || cols % be) return VT_ESHAPE;
    const int64_t nb = cols / be;
    for (int64_t l = 0; l < L; l++)
        for (int64_t b = 0; b < nb; b++) {
            if (be == QK_K) {
                vt_xk o;
                vt_quantize_k(x + l * cols + b * QK_K, QK_K, &o, d + l * nb + b, 1);
                memcpy(q + l * cols + b * QK_K, o.q, QK_K);
            } else {
                vt_x8 o;
                vt_quantize_8_0(x + l * cols + b * QK8_0, QK8_0, &o);
                memcpy(q + l * cols + b * QK8_0, o.q, QK8_0);
                d[l * nb + b] = o.d;
            }
        }
    return VT_OK;
}
