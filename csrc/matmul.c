/* The small-batch matmul: Y[L, rows] = X[L, cols] @ W[rows, cols]^T, W raw GGUF data.
 * Each activation row is quantized alone; each weight row is read from memory once and
 * dotted with all L rows, VT_ROWS at a time (its blocks unpacked in registers each time,
 * from L1 after the first pass); threads take contiguous ranges of weight rows. */
#include <math.h>
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
    int64_t cols, L, group;
    const float *x;
    const vt_xk *xk; /* the rows quantized for K-quant weights: blocks block-major */
    const float *xd; /* their scales, block-major */
    const vt_x8 *x8; /* the rows quantized for Q8_0 weights, row after row */
    int n, swiglu;
    vt_mm_part part[VT_MAX_PARTS];
} mm_job;

/* K-quant weight rows g..g+n-1 of part p against activation rows l0..l0+m-1, in column
 * chunks whose m rows' activation blocks stay in L1 (a weight row of 8960 columns has 35
 * blocks, 80 KB of 8 rows' activations): each output's blocks still summed in order. */
#define VT_ACT_L1 (24 << 10)
#define VT_K_ROWS 64
static void k_rows(const mm_job *j, const vt_mm_part *p, int64_t g, int64_t n, int64_t l0, int m) {
    const int64_t bytes = vt_block_bytes(p->type), nb = j->cols / QK_K, row_bytes = nb * bytes;
    int64_t cb = VT_ACT_L1 / (m * (int64_t)sizeof(vt_xk));
    cb = cb < 1 ? 1 : cb;
    float acc[VT_K_ROWS][VT_ROWS];
    for (int64_t s = 0; s < n; s += VT_K_ROWS) {
        const int64_t ns = n - s < VT_K_ROWS ? n - s : VT_K_ROWS;
        memset(acc, 0, sizeof acc);
        for (int64_t b0 = 0; b0 < nb; b0 += cb)
            for (int64_t r = 0; r < ns; r++)
                j->k->dot_k(p->type, (const uint8_t *)p->w + (g + s + r) * row_bytes + b0 * bytes, j->xk + b0 * j->L + l0,
                            j->xd + b0 * j->L + l0, j->L, m, nb - b0 < cb ? nb - b0 : cb, acc[r]);
        for (int64_t r = 0; r < ns; r++)
            for (int i = 0; i < m; i++) p->y[(l0 + i) * p->rows + g + s + r] = acc[r][i];
    }
}

/* Part p's rows r0.. in tiles (up to r1) against all L activation rows, tile by tile (a
 * tile that the range cuts computed whole, the range's rows kept); returns the first row
 * not in a tile or r1. */
static int64_t tile_rows(const mm_job *j, const vt_mm_part *p, int64_t r0, int64_t r1) {
    const int64_t be = vt_block_elems(p->type), nb = j->cols / be, row_bytes = nb * vt_block_bytes(p->type);
    const int64_t T = j->k->tile, end = p->rows / T * T;
    const int64_t t1 = r1 < end ? r1 : end;
    /* tiles in groups of about 64 KB, each against the activation chunks in turn (mm_rows) */
    const int64_t group = j->L <= VT_ROWS ? t1 : T * (1 + (1 << 16) / (T * row_bytes));
    float tmp[VT_ROWS * VT_TILE];
    for (int64_t g = r0 / T * T; g < t1; g += group)
        for (int64_t l0 = 0; l0 < j->L; l0 += VT_ROWS) {
            const int m = (int)(j->L - l0 < VT_ROWS ? j->L - l0 : VT_ROWS);
            for (int64_t t = g; t < g + group && t < t1; t += T) {
                const uint8_t *w = (const uint8_t *)p->w + t * row_bytes;
                float *y = p->y + l0 * p->rows + t;
                const int whole = t >= r0 && t + T <= t1;
                if (be == QK_K) j->k->dot_kt(p->type, w, j->xk + l0, j->xd + l0, j->L, m, nb, whole ? y : tmp, whole ? p->rows : T);
                else j->k->dot_q32t(p->type, w, j->x8 + l0 * nb, m, nb, whole ? y : tmp, whole ? p->rows : T);
                if (whole) continue;
                for (int i = 0; i < m; i++)
                    for (int64_t r = t < r0 ? r0 : t; r < t + T && r < t1; r++)
                        y[i * p->rows + r - t] = tmp[i * T + r - t];
            }
        }
    return t1;
}

/* Rows r0..r1-1 of part p against all L activation rows. */
static void mm_rows(const mm_job *j, const vt_mm_part *p, int64_t r0, int64_t r1) {
    const int64_t be = vt_block_elems(p->type), nb = j->cols / be, row_bytes = nb * vt_block_bytes(p->type);
    /* Past VT_ROWS rows, weight rows go in groups of about 64 KB, each group dotted with one
     * chunk of activation rows after the other: a chunk stays in L2 across the group (a
     * prefill's 64 rows of 8960 columns, 590 KB, would otherwise stream from L3 per weight
     * row). The order of outputs changes, not how any is computed. */
    if ((j->k->tiled >> p->type & 1) && r0 < p->rows / j->k->tile * j->k->tile) {
        const int64_t r = tile_rows(j, p, r0, r1); /* the rows in tiles; the rest below */
        if (r >= r1) return;
        r0 = r;
    }
    if (j->L == 1 && be == QK_K) { /* one activation row: the rows' blocks as one stream */
        j->k->dot_k_rows1(p->type, (const uint8_t *)p->w + r0 * row_bytes, j->xk, j->xd, nb, r1 - r0, p->y + r0);
        return;
    }
    if (j->L <= VT_STREAM_ROWS && be == QK8_0) {
        j->k->dot_q32_stream(p->type, (const uint8_t *)p->w + r0 * row_bytes, j->x8, (int)j->L, nb, r1 - r0, p->y + r0,
                             p->rows);
        return;
    }
    const int64_t group = j->L <= VT_ROWS ? r1 - r0 : 1 + (1 << 16) / row_bytes;
    float out[VT_ROWS];
    for (int64_t g = r0; g < r1; g += group)
        for (int64_t l0 = 0; l0 < j->L; l0 += VT_ROWS) {
            const int64_t m = j->L - l0 < VT_ROWS ? j->L - l0 : VT_ROWS, gn = (g + group < r1 ? g + group : r1) - g;
            if (be == QK_K) {
                k_rows(j, p, g, gn, l0, (int)m);
                continue;
            }
            for (int64_t r = g; r < g + gn; r++) {
                const uint8_t *wr = (const uint8_t *)p->w + r * row_bytes;
                if (be == QK8_0) {
                    const vt_x8 *xs[VT_ROWS];
                    for (int i = 0; i < m; i++) xs[i] = j->x8 + (l0 + i) * nb;
                    j->k->dot_q32(p->type, wr, xs, (int)m, nb, out);
                } else {
                    const float *xs[VT_ROWS];
                    for (int i = 0; i < m; i++) xs[i] = j->x + (l0 + i) * j->cols;
                    j->k->dot_f(p->type, wr, xs, (int)m, j->cols, out);
                }
                for (int i = 0; i < m; i++) p->y[(l0 + i) * p->rows + r] = out[i];
            }
        }
}

/* Items i0..i1-1: the parts' rows one after the other, or (swiglu) rows of both parts. */
static void mm_task(void *vjob, int64_t i0, int64_t i1, int ith) {
    (void)ith;
    const mm_job *j = vjob;
    if (j->swiglu) { /* gate rows, up rows, then a = silu(gate) * up, elementwise */
        const vt_mm_part *g = &j->part[0], *u = &j->part[1];
        mm_rows(j, g, i0, i1);
        mm_rows(j, u, i0, i1);
        for (int64_t l = 0; l < j->L; l++) j->k->swiglu(g->y + l * g->rows + i0, u->y + l * u->rows + i0, i1 - i0);
        return;
    }
    for (int i = 0, base = 0; i < j->n && i0 < i1; base += (int)j->part[i].rows, i++) {
        const int64_t lo = i0 - base, hi = i1 - base < j->part[i].rows ? i1 - base : j->part[i].rows;
        if (lo < hi) mm_rows(j, &j->part[i], lo, hi), i0 = base + hi;
    }
}

/* Rows i0..i1-1 of the activations quantized for the parts' weights (each row alone, into
 * its own blocks): a job of its own, so a prefill's 64 rows do not wait on one thread. */
static void quant_task(void *vjob, int64_t i0, int64_t i1, int ith) {
    (void)ith;
    const mm_job *j = vjob;
    for (int64_t l = i0; l < i1; l++) {
        if (j->xk) j->k->quantize_k(j->x + l * j->cols, j->cols, (vt_xk *)j->xk + l, (float *)j->xd + l, j->L);
        if (j->x8) j->k->quantize_8(j->x + l * j->cols, j->cols, (vt_x8 *)j->x8 + l * (j->cols / QK8_0));
    }
}

#define VT_SMALL_JOB (4 << 20) /* weights: below, a thread's share a chunk (vt_matmul_parts) */
int vt_matmul_parts(vt_pool *pool, int isa, int64_t cols, const float *x, int64_t L, const vt_mm_part *part, int n,
                    int swiglu) {
    if (cols < 1 || L < 1 || n < 1 || n > VT_MAX_PARTS || (swiglu && (n != 2 || part[0].rows != part[1].rows)))
        return VT_ESHAPE;
    const vt_kernels *k = vt_kernels_for(isa);
    if (!k) return VT_EISA;
    mm_job j = {.k = k, .cols = cols, .L = L, .x = x, .n = n, .swiglu = swiglu};
    int need_k = 0, need_8 = 0, tiled = 0;
    int64_t rows = 0, group = 1;
    for (int i = 0; i < n; i++) {
        const int64_t be = vt_block_elems(part[i].type);
        if (!be) return VT_ETYPE;
        if (part[i].rows < 1 || cols % be) return VT_ESHAPE;
        need_k |= be == QK_K, need_8 |= be == QK8_0, tiled |= (int)(k->tiled >> part[i].type & 1);
        rows += part[i].rows;
        const int64_t g = L <= VT_ROWS ? 1 : 1 + (1 << 16) / (cols / be * vt_block_bytes(part[i].type));
        group = g > group ? g : group;
        j.part[i] = part[i];
    }
    void *xk = NULL, *x8 = NULL;
    float *xd = NULL;
    if (need_k) {
        const int64_t nb = cols / QK_K;
        xk = vt_alloc((size_t)(L * nb) * sizeof(vt_xk));
        xd = calloc((size_t)(L * nb + 4), sizeof(float)); /* + 4: kernels load scales 4 rows at a time */
        if (!xk || !xd) {
            free(xk), free(xd);
            return VT_ENOMEM;
        }
    }
    if (need_8 && !(x8 = vt_alloc((size_t)(L * (cols / QK8_0)) * sizeof(vt_x8)))) {
        free(xk), free(xd);
        return VT_ENOMEM;
    }
    j.xk = xk, j.xd = xd, j.x8 = x8;
    if (need_k || need_8) vt_pool_run(pool, quant_task, &j, L, 1, L * cols * 16 * (need_k + need_8));
    const int64_t items = swiglu ? part[0].rows : rows;
    /* chunks of about a quarter of a thread's share, whole row groups (an eighth measured slower: each
     * chunk restarts a weight stream the hardware prefetches); a thread's whole share for a job
     * of under VT_SMALL_JOB weights, whose streams are short enough for each restart to show (q/k/v
     * and output matrices: the 0.5B drafter's 12-18% faster a step, the 1.5B target's 10-15% at
     * L = 8, Zen 5), at the price of a thread the scheduler takes away delaying its job */
    const int nth = vt_pool_threads(pool);
    int64_t chunk = rows * cols < VT_SMALL_JOB ? (items + nth - 1) / nth : items / (4 * nth);
    chunk = chunk < group ? group : chunk / group * group;
    if (tiled) chunk = (chunk + k->tile - 1) / k->tile * k->tile; /* whole tiles where parts are */
    vt_pool_run(pool, mm_task, &j, items, chunk, rows * cols * L);
    free(xk), free(xd), free(x8);
    return VT_OK;
}

VT_API int vt_packs(int isa, int type) {
    const vt_kernels *k = vt_kernels_for(isa);
    return k && ((k->pack_k && vt_block_elems(type) == QK_K) || (k->tiled >> type & 1));
}

VT_API int vt_pack(int isa, int type, const void *src, int64_t rows, int64_t cols, void *dst) {
    const int64_t be = vt_block_elems(type);
    if (!be) return VT_ETYPE;
    if (rows < 0 || cols < 0 || cols % be) return VT_ESHAPE;
    const vt_kernels *k = vt_kernels_for(isa);
    if (!k) return VT_EISA;
    const int64_t nb = cols / be, row_bytes = nb * vt_block_bytes(type);
    int64_t r = 0;
    if ((k->tiled >> type & 1) && rows >= k->tile) { /* each tile's rows copied first: dst may be src */
        uint8_t *tile = malloc((size_t)(k->tile * row_bytes));
        if (!tile) return VT_ENOMEM;
        for (; r + k->tile <= rows; r += k->tile) {
            memcpy(tile, (const uint8_t *)src + r * row_bytes, (size_t)(k->tile * row_bytes));
            k->pack_kt(type, tile, nb, (uint8_t *)dst + r * row_bytes);
        }
        free(tile);
    }
    if (k->pack_k && be == QK_K) /* rows past the tiles: pack_k's layout, or the file's */
        k->pack_k(type, (const uint8_t *)src + r * row_bytes, (rows - r) * nb, (uint8_t *)dst + r * row_bytes);
    else memmove((uint8_t *)dst + r * row_bytes, (const uint8_t *)src + r * row_bytes, (size_t)((rows - r) * row_bytes));
    return VT_OK;
}

VT_API int vt_matmul(vt_pool *pool, int isa, int type, const void *w, int64_t rows, int64_t cols,
                     const float *x, int64_t L, float *y) {
    if (!vt_block_elems(type)) return VT_ETYPE;
    if (rows < 1 || cols < 1 || L < 1 || cols % vt_block_elems(type)) return VT_ESHAPE;
    const vt_mm_part p = {type, w, rows, y};
    return vt_matmul_parts(pool, isa, cols, x, L, &p, 1, 0);
}

VT_API int vt_exp_n(int isa, const float *x, float *y, int64_t n) {
    const vt_kernels *k = vt_kernels_for(isa);
    if (!k) return VT_EISA;
    if (n < 0) return VT_ESHAPE;
    k->exp_n(x, y, n);
    return VT_OK;
}

VT_API int vt_softmax(int isa, float *e, int64_t n, float scale, float *sum) {
    const vt_kernels *k = vt_kernels_for(isa);
    if (!k) return VT_EISA;
    if (n < 1) return VT_ESHAPE;
    *sum = k->softmax(e, n, scale);
    return VT_OK;
}

VT_API int vt_swiglu(int isa, float *g, const float *u, int64_t n) {
    const vt_kernels *k = vt_kernels_for(isa);
    if (!k) return VT_EISA;
    if (n < 0) return VT_ESHAPE;
    k->swiglu(g, u, n);
    return VT_OK;
}

VT_API int vt_scores(int isa, const float *k, int64_t np, const float *const *q, int nq, int64_t n, float *s,
                     int64_t ss) {
    const vt_kernels *kt = vt_kernels_for(isa);
    if (!kt) return VT_EISA;
    if (nq < 1 || nq > VT_ATT_Q || np < 0 || n < 0) return VT_ESHAPE;
    const int64_t blocks = (np + VT_KEYS - 1) / VT_KEYS;
    float *kb = calloc((size_t)(blocks * VT_KEYS * n) + 1, sizeof(float));
    if (!kb) return VT_ENOMEM;
    for (int64_t p = 0; p < np; p++)
        for (int64_t d = 0; d < n; d++) kb[vt_key_at(p, d, n)] = k[p * n + d];
    kt->scores(kb, np, q, nq, n, s, ss);
    free(kb);
    return VT_OK;
}

VT_API int vt_wsum(int isa, float *const *o, int nh, const float *e, int64_t es, const float *v, int64_t vs,
                   int64_t np, int64_t n) {
    const vt_kernels *k = vt_kernels_for(isa);
    if (!k) return VT_EISA;
    if (nh < 1 || nh > VT_ATT_HEADS || np < 0 || n < 0) return VT_ESHAPE;
    k->wsum(o, nh, e, es, v, vs, np, n);
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
