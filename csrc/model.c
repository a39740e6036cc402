/* The forward of a Llama/Qwen2/Qwen3-architecture model over GGUF tensors, with the KV cache the
 * engine holds.  Every step works row by row (a token's RMSNorm, its matmul outputs, its
 * attention over keys 0..pos in order), so a position's logits are the same bits whether
 * it is scored alone or among any number of rows, after any crop, on any thread count. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vt.h"

#define VT_ATT_MAXQ 64 /* queries an attention item scores together: rows x query heads of a kv head */
#define VT_ATT_CHUNK 64 /* keys (values) of a pass over an item's queries: 32 KB of 128-dim values, L1 */

typedef struct {
    int type;
    const void *data;
    int64_t rows, cols;
} vt_tensor;

/* Tensor slots, per layer then global; Python maps GGUF names onto them. */
enum { T_ATTN_NORM, T_WQ, T_BQ, T_WK, T_BK, T_WV, T_BV, T_WO, T_FFN_NORM, T_GATE, T_UP, T_DOWN, T_QNORM, T_KNORM,
       T_LAYER_SLOTS }; /* T_QNORM, T_KNORM: Qwen3's per-head RMSNorm weights of q and k */
enum { T_TOK_EMBD, T_OUT_NORM, T_OUTPUT, T_GLOBAL_SLOTS };

struct vt_model {
    int n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx, rope_neox, isa;
    float eps, *inv_freq; /* rope: head_dim/2 frequencies */
    vt_tensor global[T_GLOBAL_SLOTS], *layer; /* [n_layer][T_LAYER_SLOTS] */
    void *kc_mem; /* calloc's block under kc: zero pages become resident only as keys are written */
    float *kc, *vc; /* a kv head's keys [n_ctx / VT_KEYS][head_dim][VT_KEYS] (scores' blocks), values
                     * [n_ctx][head_dim]; per layer, kv head after kv head: each one stream */
    int64_t ctx_keys; /* n_ctx rounded up to whole key blocks: a kv head's positions in the caches */
    vt_pool *pool;
};

/* head_dim: each head's width (n_embd / n_head in Llama and Qwen2, wider in Qwen3's small models). */
VT_API vt_model *vt_model_new(int n_layer, int n_embd, int n_head, int n_head_kv, int head_dim, int n_ff, int n_vocab,
                              int n_ctx, float eps, float rope_base, int rope_neox, vt_pool *pool, int isa) {
    if (n_layer < 1 || n_embd < 1 || n_head < 1 || n_head_kv < 1 || n_head % n_head_kv ||
        n_head / n_head_kv > VT_ATT_MAXQ || head_dim < 2 || head_dim % 2 || head_dim > 1024 ||
        n_ff < 1 || n_vocab < 1 || n_ctx < 1 || !pool || !vt_kernels_for(isa))
        return NULL;
    vt_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    *m = (vt_model){.n_layer = n_layer, .n_embd = n_embd, .n_head = n_head, .n_head_kv = n_head_kv,
                    .head_dim = head_dim, .n_ff = n_ff, .n_vocab = n_vocab, .n_ctx = n_ctx,
                    .rope_neox = rope_neox, .isa = isa, .eps = eps, .pool = pool};
    m->ctx_keys = (n_ctx + VT_KEYS - 1) / VT_KEYS * VT_KEYS;
    const size_t kv = (size_t)n_layer * (size_t)m->ctx_keys * (size_t)(n_head_kv * m->head_dim);
    m->layer = calloc((size_t)n_layer * T_LAYER_SLOTS, sizeof(vt_tensor));
    m->inv_freq = malloc(sizeof(float) * (size_t)(m->head_dim / 2));
    /* zeroed (a block's lanes past the last key are read, never used: defined) and 64-byte aligned */
    m->kc_mem = calloc(kv * sizeof(float) + 64, 1);
    m->kc = m->kc_mem ? (float *)(((uintptr_t)m->kc_mem + 63) & ~(uintptr_t)63) : NULL;
    m->vc = vt_alloc(kv * sizeof(float));
    if (!m->layer || !m->inv_freq || !m->kc || !m->vc) {
        free(m->layer), free(m->inv_freq), free(m->kc_mem), free(m->vc), free(m);
        return NULL;
    }
    for (int i = 0; i < m->head_dim / 2; i++) m->inv_freq[i] = (float)(1.0 / pow(rope_base, 2.0 * i / m->head_dim));
    return m;
}

VT_API void vt_model_free(vt_model *m) {
    if (!m) return;
    free(m->layer), free(m->inv_freq), free(m->kc_mem), free(m->vc), free(m);
}

/* Divide rope frequency i by f[i] (head_dim / 2 factors, each finite and > 0): the file's
 * rope_freqs.weight, Llama 3's long-context scaling as llama.cpp applies it. */
VT_API int vt_model_rope_factors(vt_model *m, const float *f) {
    for (int i = 0; i < m->head_dim / 2; i++)
        if (!(f[i] > 0.0f && f[i] <= FLT_MAX)) return VT_ESHAPE;
    for (int i = 0; i < m->head_dim / 2; i++) m->inv_freq[i] = m->inv_freq[i] / f[i];
    return VT_OK;
}

/* Point slot `slot` of layer `layer` (-1: the global slots) at a tensor. */
VT_API int vt_model_set(vt_model *m, int layer, int slot, int type, const void *data, int64_t rows, int64_t cols) {
    if (layer < -1 || layer >= m->n_layer || slot < 0 || slot >= (layer < 0 ? T_GLOBAL_SLOTS : T_LAYER_SLOTS))
        return VT_ESHAPE;
    if (!vt_block_elems(type)) return VT_ETYPE;
    (layer < 0 ? m->global : m->layer + (size_t)layer * T_LAYER_SLOTS)[slot] = (vt_tensor){type, data, rows, cols};
    return VT_OK;
}

/* Every slot the forward reads present, of the shape it needs; vectors are [1, n] F32. */
static int check_tensors(const vt_model *m) {
    const int64_t E = m->n_embd, hd = m->head_dim, qd = (int64_t)m->n_head * hd, kvd = (int64_t)m->n_head_kv * hd,
                  F = m->n_ff, V = m->n_vocab;
    /* rows, cols, required, vector */
    static const int8_t need[T_LAYER_SLOTS] = {1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0};
    const int64_t shape[T_LAYER_SLOTS][2] = {{1, E}, {qd, E}, {1, qd}, {kvd, E}, {1, kvd}, {kvd, E}, {1, kvd},
                                             {E, qd}, {1, E},  {F, E},  {F, E},  {E, F},   {1, hd}, {1, hd}};
    const int64_t gshape[T_GLOBAL_SLOTS][2] = {{V, E}, {1, E}, {V, E}};
    for (int l = -1; l < m->n_layer; l++)
        for (int s = 0; s < (l < 0 ? T_GLOBAL_SLOTS : T_LAYER_SLOTS); s++) {
            const vt_tensor *t = l < 0 ? &m->global[s] : &m->layer[(size_t)l * T_LAYER_SLOTS + s];
            const int64_t *want = l < 0 ? gshape[s] : shape[s];
            if (!t->data) {
                if (l < 0 ? s != T_OUTPUT : need[s]) return VT_ESHAPE;
                continue;
            }
            if (t->rows != want[0] || t->cols != want[1]) return VT_ESHAPE;
            if (want[0] == 1 && t->type != VT_F32) return VT_ETYPE;
        }
    return VT_OK;
}

VT_API int vt_model_check(const vt_model *m) { return check_tensors(m); }

static int mm(const vt_model *m, const vt_tensor *t, const float *x, int64_t L, float *y) {
    return vt_matmul(m->pool, m->isa, t->type, t->data, t->rows, t->cols, x, L, y);
}

static void add_bias(float *y, const vt_tensor *b, int64_t L, int64_t n) {
    if (!b->data) return;
    for (int64_t l = 0; l < L; l++)
        for (int64_t i = 0; i < n; i++) y[l * n + i] = y[l * n + i] + ((const float *)b->data)[i];
}

/* The rotation of position pos: cs[i], cs[half + i] = cos, sin of pos x frequency i. */
static void rope_angles(const vt_model *m, int pos, float *cs) {
    const int half = m->head_dim / 2;
    for (int i = 0; i < half; i++) {
        const float a = (float)pos * m->inv_freq[i];
        cs[i] = cosf(a), cs[half + i] = sinf(a);
    }
}

/* Rotate each head of row v (n_heads x head_dim) by the angles cs (rope_angles): NeoX's
 * halves as contiguous runs (the compiler's vectors), else the interleaved pairs. */
static void rope(const vt_model *m, float *v, int n_heads, const float *cs) {
    const int hd = m->head_dim, half = hd / 2;
    const float *c = cs, *s = cs + half;
    for (int h = 0; h < n_heads; h++) {
        float *p = v + h * hd;
        if (m->rope_neox) {
            float *a = p, *b = p + half;
            for (int i = 0; i < half; i++) {
                const float x0 = a[i], x1 = b[i];
                a[i] = x0 * c[i] - x1 * s[i], b[i] = x0 * s[i] + x1 * c[i];
            }
            continue;
        }
        for (int i = 0; i < half; i++) {
            const float x0 = p[2 * i], x1 = p[2 * i + 1];
            p[2 * i] = x0 * c[i] - x1 * s[i], p[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
    }
}

/* y = x / rms(x) * w, per row. */
static void rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y) {
    const float s = 1.0f / sqrtf(vt_sum8(x, n, 1) / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * s) * w[i];
}

/* Qwen3: each of n heads (rows of head_dim at v) RMS-normed in place by w, where the file has w. */
static void head_norm(const vt_model *m, const vt_tensor *w, float *v, int64_t n) {
    if (!w->data) return;
    for (int64_t i = 0; i < n; i++) rmsnorm(v + i * m->head_dim, w->data, m->head_dim, m->eps, v + i * m->head_dim);
}

typedef struct {
    const vt_model *m;
    const float *q; /* [T][n_head * hd] */
    float *out;     /* [T][n_head * hd] */
    float *scores;  /* [threads][VT_ATT_MAXQ][keys] */
    int64_t keys;   /* pos0 + T rounded up to whole key blocks */
    int T, pos0, layer, rows; /* an item: a kv head and up to `rows` consecutive rows */
} attn_job;

/* An item's rows and the query heads that share its kv head are scored together: each key
 * block and value chunk is read once for all of them (from L1 across them) instead of once
 * per row and head set.  Each query's scores are its own lanes (vt.h's recipe), its softmax
 * over keys 0..pos and its value sums in key order as alone: the bits of a row never depend
 * on the others. */
static void attn_task(void *vjob, int64_t i0, int64_t i1, int ith) {
    attn_job *j = vjob;
    const vt_model *m = j->m;
    const int hd = m->head_dim, kvd = m->n_head_kv * hd, group = m->n_head / m->n_head_kv;
    const float scale = 1.0f / sqrtf((float)hd);
    const vt_kernels *k = vt_kernels_for(m->isa);
    float *score = j->scores + (size_t)ith * VT_ATT_MAXQ * j->keys;
    const size_t head = (size_t)m->ctx_keys * hd; /* one kv head's part of a layer's cache */
    const float *kl = m->kc + (size_t)j->layer * m->ctx_keys * kvd, *vl = m->vc + (size_t)j->layer * m->ctx_keys * kvd;
    for (int64_t it = i0; it < i1; it++) {
        const int kh = (int)(it % m->n_head_kv), t0 = (int)(it / m->n_head_kv) * j->rows;
        const int nr = j->T - t0 < j->rows ? j->T - t0 : j->rows, nq = nr * group, np = j->pos0 + t0 + nr;
        const float *kb = kl + kh * head, *vb = vl + kh * head;
        const float *q[VT_ATT_MAXQ];
        float *o[VT_ATT_MAXQ], sum[VT_ATT_MAXQ];
        for (int i = 0; i < nq; i++) { /* query i: row t0 + i / group, head kh * group + i % group */
            const size_t at = (size_t)(t0 + i / group) * m->n_head * hd + (size_t)(kh * group + i % group) * hd;
            q[i] = j->q + at, o[i] = j->out + at;
            memset(o[i], 0, sizeof(float) * (size_t)hd);
        }
        for (int c = 0; c < np; c += VT_ATT_CHUNK) /* keys up to the last row's, for all rows */
            for (int i = 0; i < nq; i += VT_ATT_Q)
                k->scores(kb + (size_t)c * hd, np - c < VT_ATT_CHUNK ? np - c : VT_ATT_CHUNK, q + i,
                          nq - i < VT_ATT_Q ? nq - i : VT_ATT_Q, hd, score + i * j->keys + c, j->keys);
        for (int i = 0; i < nq; i++) { /* scaled, their max; the weights e = exp(score - max) in place, their sum */
            float *e = score + i * j->keys;
            const int n = j->pos0 + t0 + i / group + 1;
            sum[i] = k->softmax(e, n, scale);
        }
        for (int c = 0; c < np; c += VT_ATT_CHUNK)
            for (int i = 0, nh; i < nq; i += nh) { /* up to VT_ATT_HEADS of one row's heads at a time */
                const int n = j->pos0 + t0 + i / group + 1 - c, row_end = (i / group + 1) * group;
                nh = row_end - i < VT_ATT_HEADS ? row_end - i : VT_ATT_HEADS;
                if (n > 0)
                    k->wsum(o + i, nh, score + i * j->keys + c, j->keys, vb + (size_t)c * hd, hd,
                            n < VT_ATT_CHUNK ? n : VT_ATT_CHUNK, hd);
            }
        for (int i = 0; i < nq; i++)
            for (int d = 0; d < hd; d++) o[i][d] = o[i][d] / sum[i];
    }
}

/* The rows an attention item takes of T: items enough for every thread, at most VT_ATT_MAXQ
 * queries (which rows share an item never changes a row's bits). */
static int att_rows(const vt_model *m, int T) {
    const int spread = (vt_pool_threads(m->pool) + m->n_head_kv - 1) / m->n_head_kv,
              rows = (T + spread - 1) / spread, most = VT_ATT_MAXQ / (m->n_head / m->n_head_kv);
    return rows < most ? rows : most;
}

/* T new keys and values, rows of n_head_kv * head_dim, into layer l's caches at positions
 * pos0.. (each kv head's values one stream: cold 64-dim ones read 1.5x faster than as
 * every other half row, 128-dim ones up to 1.3x; C harness, Zen 5; keys in scores' blocks). */
static void to_cache(const vt_model *m, int l, int pos0, const float *keys, const float *values, int T) {
    const int hd = m->head_dim, kvd = m->n_head_kv * hd;
    for (int h = 0; h < m->n_head_kv; h++) {
        const size_t head = ((size_t)l * m->n_head_kv + h) * m->ctx_keys * hd;
        for (int t = 0; t < T; t++) {
            const int p = pos0 + t;
            const float *kr = keys + (size_t)t * kvd + (size_t)h * hd;
            for (int d = 0; d < hd; d++) m->kc[head + vt_key_at(p, d, hd)] = kr[d];
            memcpy(m->vc + head + (size_t)p * hd, values + (size_t)t * kvd + (size_t)h * hd, sizeof(float) * (size_t)hd);
        }
    }
}

/* Append T tokens at positions pos0.. (positions past pos0 are forgotten: a crop) and write
 * the last n_out (0..T) of them to out: their logits [n_out][n_vocab], or with `hidden`
 * their final normed hidden states [n_out][n_embd] (a drafter applies a head of its own). */
static int forward(vt_model *m, const int32_t *tokens, int T, int pos0, int n_out, float *out, int hidden) {
    if (T < 1 || pos0 < 0 || pos0 + T > m->n_ctx || n_out < 0 || n_out > T) return VT_ESHAPE;
    int rc = check_tensors(m);
    if (rc) return rc;
    const int E = m->n_embd, hd = m->head_dim, qd = m->n_head * hd, kvd = m->n_head_kv * hd, F = m->n_ff;
    const int64_t keys = (pos0 + T + VT_KEYS - 1) / VT_KEYS * VT_KEYS;
    const vt_tensor *emb = &m->global[T_TOK_EMBD], *head = m->global[T_OUTPUT].data ? &m->global[T_OUTPUT] : emb;
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= emb->rows) return VT_ESHAPE;
    float *x = vt_alloc(sizeof(float) * (size_t)T * E), *h = vt_alloc(sizeof(float) * (size_t)T * E),
          *q = vt_alloc(sizeof(float) * (size_t)T * qd), *att = vt_alloc(sizeof(float) * (size_t)T * qd),
          *g = vt_alloc(sizeof(float) * (size_t)T * F), *u = vt_alloc(sizeof(float) * (size_t)T * F),
          *scores = vt_alloc(sizeof(float) * (size_t)vt_pool_threads(m->pool) * VT_ATT_MAXQ * keys),
          *cs = vt_alloc(sizeof(float) * (size_t)T * hd), /* each row's rotation, once for all layers */
          *kl = vt_alloc(sizeof(float) * (size_t)T * kvd), *vl = vt_alloc(sizeof(float) * (size_t)T * kvd); /* new keys, values */
    rc = (x && h && q && att && g && u && scores && cs && kl && vl) ? VT_OK : VT_ENOMEM;
    for (int t = 0; t < T && !rc; t++) rope_angles(m, pos0 + t, cs + (size_t)t * hd);
    const int64_t row_bytes = E / vt_block_elems(emb->type) * vt_block_bytes(emb->type);
    for (int t = 0; t < T && !rc; t++)
        rc = vt_dequantize(emb->type, (const uint8_t *)emb->data + tokens[t] * row_bytes, E, x + (size_t)t * E);
    for (int l = 0; l < m->n_layer && !rc; l++) {
        const vt_tensor *w = m->layer + (size_t)l * T_LAYER_SLOTS;
        for (int t = 0; t < T; t++) rmsnorm(x + (size_t)t * E, w[T_ATTN_NORM].data, E, m->eps, h + (size_t)t * E);
        const vt_mm_part qkv[3] = {{w[T_WQ].type, w[T_WQ].data, qd, q}, {w[T_WK].type, w[T_WK].data, kvd, kl},
                                   {w[T_WV].type, w[T_WV].data, kvd, vl}};
        if ((rc = vt_matmul_parts(m->pool, m->isa, E, h, T, qkv, 3, 0))) break;
        add_bias(q, &w[T_BQ], T, qd), add_bias(kl, &w[T_BK], T, kvd), add_bias(vl, &w[T_BV], T, kvd);
        head_norm(m, &w[T_QNORM], q, (int64_t)T * m->n_head), head_norm(m, &w[T_KNORM], kl, (int64_t)T * m->n_head_kv);
        for (int t = 0; t < T; t++) {
            rope(m, q + (size_t)t * qd, m->n_head, cs + (size_t)t * hd);
            rope(m, kl + (size_t)t * kvd, m->n_head_kv, cs + (size_t)t * hd);
        }
        to_cache(m, l, pos0, kl, vl, T);
        /* past the last layer's keys and values only the n_out rows asked for go on: a prefill's
         * other rows would spend most of that layer's multiplies (93% in the default target) on
         * nothing read, and no kept row's bits can see them (every step is row by row) */
        const int skip = l == m->n_layer - 1 ? T - n_out : 0, R = T - skip, rows = att_rows(m, R);
        if (!R) break;
        float *xs = x + (size_t)skip * E;
        attn_job aj = {m, q + (size_t)skip * qd, att, scores, keys, R, pos0 + skip, l, rows};
        vt_pool_run(m->pool, attn_task, &aj, (int64_t)(R + rows - 1) / rows * m->n_head_kv, 1,
                    (int64_t)R * m->n_head * (pos0 + T) * hd);
        if ((rc = mm(m, &w[T_WO], att, R, h))) break;
        for (int64_t i = 0; i < (int64_t)R * E; i++) xs[i] = xs[i] + h[i];
        for (int t = 0; t < R; t++) rmsnorm(xs + (size_t)t * E, w[T_FFN_NORM].data, E, m->eps, h + (size_t)t * E);
        const vt_mm_part gu[2] = {{w[T_GATE].type, w[T_GATE].data, F, g}, {w[T_UP].type, w[T_UP].data, F, u}};
        if ((rc = vt_matmul_parts(m->pool, m->isa, E, h, R, gu, 2, 1))) break; /* g = silu(gate) * up */
        if ((rc = mm(m, &w[T_DOWN], g, R, h))) break;
        for (int64_t i = 0; i < (int64_t)R * E; i++) xs[i] = xs[i] + h[i];
    }
    if (!rc && n_out) {
        for (int t = T - n_out; t < T; t++)
            rmsnorm(x + (size_t)t * E, m->global[T_OUT_NORM].data, E, m->eps,
                    (hidden ? out : h) + (size_t)(t - (T - n_out)) * E);
        if (!hidden) rc = mm(m, head, h, n_out, out);
    }
    free(x), free(h), free(q), free(att), free(g), free(u), free(scores), free(cs), free(kl), free(vl);
    return rc;
}

VT_API int vt_model_forward(vt_model *m, const int32_t *tokens, int T, int pos0, int n_out, float *out) {
    return forward(m, tokens, T, pos0, n_out, out, 0);
}

VT_API int vt_model_hidden(vt_model *m, const int32_t *tokens, int T, int pos0, int n_out, float *out) {
    return forward(m, tokens, T, pos0, n_out, out, 1);
}
