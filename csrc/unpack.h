/* Unpacking Q4_K/Q5_K/Q6_K super-blocks into vt_kblock: integer work, exact, written once
 * in plain C and compiled into every instruction-set file (each file's target options let
 * the compiler vectorize it for that set).  Layouts: ggml-common.h / gguf quants.py. */
#include "vt.h"

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

static void vt_unpack_k_any(int type, const uint8_t *src, int64_t nb, vt_kblock *dst) {
    const int64_t bytes = vt_block_bytes(type);
    void (*one)(const uint8_t *, vt_kblock *) =
        type == VT_Q4_K ? vt_unpack_q4_k : type == VT_Q5_K ? vt_unpack_q5_k : vt_unpack_q6_k;
    for (int64_t b = 0; b < nb; b++) one(src + b * bytes, dst + b);
}
