/* A stand-alone check of the kernel library, built by test_native.py with sanitizers (and
 * usable under valgrind): random blocks of every type, every path this CPU runs against
 * the portable one and every row alone against the batch, on 1 and 2 threads; a tiny
 * model's forward as its tokens one at a time.
 * Usage: driver [check | bench TYPE ROWS COLS L REPS [ISA]]; exit status 0 when all agree. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/vt.h"

VT_API int vt_isa_supported(int isa);
VT_API int vt_isa_best(void);
VT_API vt_model *vt_model_new(int n_layer, int n_embd, int n_head, int n_head_kv, int head_dim, int n_ff, int n_vocab,
                              int n_ctx, float eps, float rope_base, int rope_neox, vt_pool *pool, int isa);
VT_API void vt_model_free(vt_model *m);
VT_API int vt_model_set(vt_model *m, int layer, int slot, int type, const void *data, int64_t rows, int64_t cols);
VT_API int vt_model_forward(vt_model *m, const int32_t *tokens, int T, int pos0, int n_out, float *out);

static uint64_t rng = 88172645463325252ull;
static uint32_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)rng; }

static uint16_t to_fp16(float f) { /* small positive normal scales only */
    union { float f; uint32_t u; } v = {f};
    return (uint16_t)(((v.u >> 23) - 112) << 10 | ((v.u >> 13) & 0x3ff));
}

static void *random_weights(int type, int64_t rows, int64_t cols) {
    const int64_t per = vt_block_elems(type), bytes = vt_block_bytes(type), nb = rows * cols / per;
    uint8_t *w = malloc((size_t)(nb * bytes));
    for (int64_t i = 0; i < nb * bytes; i++) w[i] = (uint8_t)next();
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = w + b * bytes;
        uint16_t d = to_fp16(0.001f + (next() % 1000) * 1e-5f), dm = to_fp16(0.001f + (next() % 1000) * 1e-5f);
        if (type == VT_Q6_K) memcpy(blk + 208, &d, 2);
        else if (type == VT_Q4_K || type == VT_Q5_K || vt_has_min(type)) { memcpy(blk, &d, 2); memcpy(blk + 2, &dm, 2); }
        else if (type == VT_Q8_0 || type == VT_Q5_0 || type == VT_Q4_0) memcpy(blk, &d, 2);
        else if (type == VT_F32) ((float *)w)[b] = (float)((int)(next() % 2001) - 1000) * 1e-3f;
        else if (type == VT_F16 || type == VT_BF16) ((uint16_t *)w)[b] = (uint16_t)(0x3c00 ^ (next() & 0x83ff));
    }
    return w;
}

static float *random_rows(int64_t L, int64_t cols) {
    float *x = malloc((size_t)(L * cols) * sizeof(float));
    for (int64_t i = 0; i < L * cols; i++) x[i] = (float)((int)(next() % 20001) - 10000) * 1e-4f;
    return x;
}

static int check(void) {
    static const int types[] = {VT_Q4_K, VT_Q5_K, VT_Q6_K, VT_Q8_0, VT_Q5_0, VT_Q4_0, VT_Q5_1, VT_Q4_1, VT_F32, VT_F16, VT_BF16};
    vt_pool *one = vt_pool_new(1), *two = vt_pool_new(2);
    int bad = 0;
    for (size_t t = 0; t < sizeof types / sizeof *types * 2; t++) {
        /* each type with 3 blocks a row, then K-quants with 23 (rows in column chunks) */
        const int type = types[t % (sizeof types / sizeof *types)], lng = t >= sizeof types / sizeof *types;
        if (lng && vt_block_elems(type) != QK_K) continue;
        const int64_t rows = 13, cols = vt_block_elems(type) == 1 ? 45 : vt_block_elems(type) * (lng ? 23 : 3), L = 11;
        void *w = random_weights(type, rows, cols);
        float *x = random_rows(L, cols), *ref = malloc(sizeof(float) * (size_t)(L * rows)),
              *y = malloc(sizeof(float) * (size_t)(L * rows));
        for (int64_t l = 0; l < L; l++) bad |= vt_matmul(one, VT_ISA_PORTABLE, type, w, rows, cols, x + l * cols, 1, ref + l * rows);
        void *wp = malloc((size_t)(rows * cols / vt_block_elems(type) * vt_block_bytes(type)));
        for (int isa = 0; isa < VT_ISA_COUNT; isa++) {
            if (!vt_isa_supported(isa)) continue;
            bad |= vt_pack(isa, type, w, rows, cols, wp);
            for (int64_t n = 1; n <= L; n++)
                for (int p = 0; p < 2; p++) {
                    bad |= vt_matmul(p ? two : one, isa, type, wp, rows, cols, x, n, y);
                    if (memcmp(y, ref, sizeof(float) * (size_t)(n * rows))) {
                        fprintf(stderr, "type %d isa %d L %ld threads %d: differs\n", type, isa, (long)n, p + 1);
                        bad = 1;
                    }
                }
        }
        free(w), free(wp), free(x), free(ref), free(y);
    }
    vt_pool_free(one), vt_pool_free(two);
    /* exp and the attention's scores and weighted values: every path as the portable one */
    enum { N = 203, P = 29, D = 45 };
    float *x = random_rows(1, N), ye[N], yr[N], e[3 * P], o[3][D], r[3][D];
    for (int i = 0; i < N; i++) x[i] *= 9000.0f; /* -90..90 */
    for (int i = 0; i < 3 * P; i++) e[i] = x[i] * 1e-4f;
    float *v = random_rows(P, D), *op[3] = {o[0], o[1], o[2]}, *rp[3] = {r[0], r[1], r[2]};
    memset(r, 0, sizeof r);
    float *kq = random_rows(P + 3, 64), sr[3][P], sc[3][P];
    const float *qs[3] = {kq + P * 64, kq + (P + 1) * 64, kq + (P + 2) * 64};
    bad |= vt_exp_n(VT_ISA_PORTABLE, x, yr, N) | vt_wsum(VT_ISA_PORTABLE, rp, 3, e, P, v, D, P, D) |
           vt_scores(VT_ISA_PORTABLE, kq, P, qs, 3, 64, sr[0], P);
    for (int isa = 1; isa < VT_ISA_COUNT; isa++) {
        if (!vt_isa_supported(isa)) continue;
        memset(o, 0, sizeof o);
        bad |= vt_exp_n(isa, x, ye, N) | vt_wsum(isa, op, 3, e, P, v, D, P, D) | vt_scores(isa, kq, P, qs, 3, 64, sc[0], P);
        if (memcmp(ye, yr, sizeof ye) || memcmp(o, r, sizeof o) || memcmp(sc, sr, sizeof sc)) {
            fprintf(stderr, "isa %d: exp, scores or wsum differs\n", isa);
            bad = 1;
        }
    }
    free(x), free(v), free(kq);
    return bad;
}

/* A tiny model (Q4_K matrices, a Q6_K head, F32 vectors; a context that is not whole key
 * blocks) on every path and 1 and 4 threads (4: attention items of part of the rows): all
 * its tokens at once, then in two calls, each as the portable path's tokens one at a time. */
static int check_model(void) {
    enum { LAYERS = 2, E = 256, HEADS = 4, KV = 2, F = 512, V = 50, CTX = 70, T = 37, SLOTS = 12 };
    const int64_t shape[SLOTS][2] = {{1, E}, {E, E}, {1, E}, {KV * 64, E}, {1, KV * 64}, {KV * 64, E},
                                     {1, KV * 64}, {E, E}, {1, E}, {F, E}, {F, E}, {E, F}};
    void *w[LAYERS + 1][SLOTS], *packed[LAYERS + 1][SLOTS];
    int types[LAYERS + 1][SLOTS];
    int64_t rows[LAYERS + 1][SLOTS], cols[LAYERS + 1][SLOTS];
    for (int l = 0; l <= LAYERS; l++) /* layer LAYERS: the embedding, output norm and head */
        for (int s = 0; s < (l < LAYERS ? SLOTS : 3); s++) {
            const int64_t r = rows[l][s] = l < LAYERS ? shape[s][0] : s == 1 ? 1 : V;
            const int64_t c = cols[l][s] = l < LAYERS ? shape[s][1] : E;
            types[l][s] = r == 1 ? VT_F32 : l == LAYERS && s == 2 ? VT_Q6_K : VT_Q4_K;
            w[l][s] = r == 1 ? random_rows(1, c) : random_weights(types[l][s], r, c);
            packed[l][s] = malloc((size_t)(r * c / vt_block_elems(types[l][s]) * vt_block_bytes(types[l][s])));
        }
    int32_t tok[T];
    for (int t = 0; t < T; t++) tok[t] = (int32_t)(next() % V);
    float *ref = malloc(sizeof(float) * T * V), *out = malloc(sizeof(float) * T * V);
    int bad = 0;
    for (int isa = 0; isa < VT_ISA_COUNT; isa++) {
        if (!vt_isa_supported(isa)) continue;
        for (int threads = 1; threads <= 4; threads += 3) {
            vt_pool *pool = vt_pool_new(threads);
            vt_model *m = vt_model_new(LAYERS, E, HEADS, KV, E / HEADS, F, V, CTX, 1e-6f, 10000.0f, 1, pool, isa);
            for (int l = 0; l <= LAYERS; l++)
                for (int s = 0; s < (l < LAYERS ? SLOTS : 3); s++) {
                    const int pack = rows[l][s] > 1 && !(l == LAYERS && s == 0); /* the embedding is read by rows, raw */
                    if (pack) bad |= vt_pack(isa, types[l][s], w[l][s], rows[l][s], cols[l][s], packed[l][s]);
                    bad |= vt_model_set(m, l < LAYERS ? l : -1, s, types[l][s], pack ? packed[l][s] : w[l][s], rows[l][s],
                                        cols[l][s]);
                }
            if (isa == 0 && threads == 1)
                for (int t = 0; t < T; t++) bad |= vt_model_forward(m, tok + t, 1, t, 1, ref + t * V);
            for (int calls = 1; calls <= 2; calls++) { /* all at once, then the first 20 and the rest */
                const int first = calls == 1 ? T : 20;
                bad |= vt_model_forward(m, tok, first, 0, first, out);
                if (first < T) bad |= vt_model_forward(m, tok + first, T - first, first, T - first, out + first * V);
                if (memcmp(out, ref, sizeof(float) * T * V)) {
                    fprintf(stderr, "model: isa %d threads %d in %d calls differs\n", isa, threads, calls);
                    bad = 1;
                }
            }
            vt_model_free(m), vt_pool_free(pool);
        }
    }
    for (int l = 0; l <= LAYERS; l++)
        for (int s = 0; s < (l < LAYERS ? SLOTS : 3); s++) free(w[l][s]), free(packed[l][s]);
    free(ref), free(out);
    return bad;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "check")) return check() | check_model();
    if (!strcmp(argv[1], "bench") && argc >= 7) {
        const int type = atoi(argv[2]), reps = atoi(argv[6]), isa = argc > 7 ? atoi(argv[7]) : vt_isa_best();
        const int64_t rows = atol(argv[3]), cols = atol(argv[4]), L = atol(argv[5]);
        void *w = random_weights(type, rows, cols);
        float *x = random_rows(L, cols), *y = malloc(sizeof(float) * (size_t)(L * rows));
        vt_pool *pool = vt_pool_new(1);
        int rc = vt_pack(isa, type, w, rows, cols, w);
        for (int r = 0; r < reps; r++) rc |= vt_matmul(pool, isa, type, w, rows, cols, x, L, y);
        vt_pool_free(pool);
        return rc != 0;
    }
    fprintf(stderr, "usage: driver [check | bench TYPE ROWS COLS L REPS [ISA]]\n");
    return 2;
}
