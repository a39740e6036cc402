/* The x86 kernels, compiled once per instruction set by the kern_<isa>.c files, which set
 * the target options and define:
 *   VT_KERNELS  the name of the vt_kernels table
 *   VT_VNNI     0: AVX2 (maddubs + madd + add),
 *               1: AVX-VNNI (VEX vpdpwssd/vpdpbusd; 8-row tiles on 256-bit vectors),
 *               2: AVX512-VNNI (16-row tiles on 512-bit vectors; the other kernels
 *               EVEX-encoded 256-bit).
 *               The VNNI paths tile K-quants, Q4_0, Q5_0 and Q8_0 (pack_kt, dot_kt,
 *               dot_q32t), their K-quant rows past the tiles go through k_sums.
 * Each kernel follows kern_portable.c's float recipe lane by lane: the integer sums are
 * exact whatever the grouping, the float steps are the same multiplies and adds. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "vt.h"

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

/* A vector (AVX512: 16 lanes of 32 bits, else 8): VX(op) names the intrinsic of that width
 * and VXI(op) its bitwise ones (_si512/_si256); used by the tiles (a lane a weight row),
 * vt_exp's steps lane by lane (expv, exp_n) and the keys of the cache's 16-key blocks
 * (scores_kv). */
#if VT_VNNI == 2
#define VX(op) _mm512_##op
#define VXI(op) _mm512_##op##_si512
#define VX_AS_PS _mm512_castsi512_ps
#define VX_XOR(a, b) _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)))
#define VX_LOADI(p) _mm512_loadu_si512(p)
#define VX_PH(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p))) /* VX_LANES fp16 at p */
#define VX_DUP128 _mm512_broadcast_i32x4
#define VX_DPWSSD _mm512_dpwssd_epi32
#define VX_DPBUSD _mm512_dpbusd_epi32
typedef __m512 vx_f;
typedef __m512i vx_i;
enum { VX_LANES = 16 };
#else
#define VX(op) _mm256_##op
#define VXI(op) _mm256_##op##_si256
#define VX_AS_PS _mm256_castsi256_ps
#define VX_XOR _mm256_xor_ps
#define VX_LOADI(p) _mm256_loadu_si256((const __m256i *)(p))
#define VX_PH(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define VX_DUP128 _mm256_broadcastsi128_si256
#define VX_DPWSSD DPWSSD
#define VX_DPBUSD DPBUSD
typedef __m256 vx_f;
typedef __m256i vx_i;
enum { VX_LANES = 8 };
#endif

/* fp16 to fp32 with F16C (exact, as vt_fp16). */
static inline float fp16(const uint8_t *p) { return _cvtsh_ss(vt_rd16(p)); }

/* Sums of the 8 lanes of each of 4 vectors, as one vector of 4. */
static inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i g = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(g), _mm256_extracti128_si256(g, 1));
}

#define VT_INLINE static inline __attribute__((always_inline))

/* A kernel's copy specialized for n (1..VT_ROWS) rows: call(k) for k = n. */
#define BY_ROWS8(call)                                                                             \
    switch (n) {                                                                                   \
    case 1: call(1); break;                                                                        \
    case 2: call(2); break;                                                                        \
    case 3: call(3); break;                                                                        \
    case 4: call(4); break;                                                                        \
    case 5: call(5); break;                                                                        \
    case 6: call(6); break;                                                                        \
    case 7: call(7); break;                                                                        \
    default: call(8);                                                                              \
    }

/* How far ahead of a weight stream to prefetch, bytes: at L = 1 (memory-bound) the hardware
 * prefetcher alone leaves the stream ~15% slower (Zen 3; 2 KB ahead was not enough, 4-8 KB
 * the same).  The tiles prefetch into L2 (T1), not L1: into L1 the stream evicted the
 * activation words a tile broadcasts, and 8 activation rows against Q4_K weights streamed
 * from memory ran 1.8x the time they take from L2 (Zen 4: 12 matrices of 8960 x 1536, 2
 * threads, 7.9 -> 4.3 ms; Q6_K 10.4 -> 6.9; the target's V(8) 86 -> 48-51 ms). */
#define VT_PREFETCH 4096

/* A tile against n rows prefetches twice as far at up to 4 rows, where it waits on memory:
 * the target's V(2) 27.0-28.6 -> 23.7-24.8 ms, V(1) 26.2 -> 25.1, the Q4_0 drafter's step
 * 8.8-10.3 -> 7.9-9.2 (Zen 4, its fast-memory state, both in one process alternated; 12, 16
 * and 24 KB no better), and 6 KB past more rows, where the multiplies bind it (with the K
 * tiles' hints in parts, prefetch_part: against 4 KB, 5 pairs, V(8) median 43.72 -> 42.86
 * ms, V(16) 87.21 -> 85.90; 8 KB no better; with the hints in one burst 8 KB was slower). */
#define KT_AHEAD(n) ((n) <= 4 ? 2 * VT_PREFETCH : 3 * VT_PREFETCH / 2)

/* The parts a K-quant tile hints its next block in (prefetch_part; Q6_K twice as many): one
 * a sub-block at up to 4 rows, one every two past that.  At 1 and 2 rows against 4 parts
 * (Zen 4, slow-memory state, one process alternating, 49 and 38 rounds): V(1) median 30.8
 * -> 30.3 and 30.2 -> 29.9 ms, V(2) 31.7 -> 31.3 and 30.8 -> 30.5. */
#define KT_PARTS(n) ((n) <= 4 ? 8 : 4)

/* A hint for the `bytes` at `ahead` past p (past the end of the data a hint, not a fault):
 * into L2 (l2, the tiles) or L1 (the one- and two-row kernels). */
static inline void prefetch_ahead(const void *p, int bytes, int ahead, int l2) {
    for (int o = 0; o < bytes; o += 64) {
        if (l2) _mm_prefetch((const char *)p + ahead + o, _MM_HINT_T1);
        else _mm_prefetch((const char *)p + ahead + o, _MM_HINT_T0);
    }
}

/* How far ahead AVX512's tiles against one row also hint their weights into L1 (0: not): a
 * block or so, beside the L2 hints KT_AHEAD on.  One row's tile outruns its loads: work that
 * only slows it (a chain of imuls a sub-block) made V(1) faster too (docs/native.md, sixteenth
 * session; why, this guest has no counters to show).  Zen 4, the target's V(1) on one thread
 * 42.3 -> 39.0 ms, on two 24.4 -> 23.1 in the fast-memory state and 30.55 -> 30.25 in the
 * slow one (one process, alternating); 0.25 and 0.75 KB the same within 0.3 ms, the next
 * block's lines slower than none; libraries alternated, one thread: V(1) 42.0 -> 39.3, the
 * Q4_0 drafter's step 9.8 -> 9.5.  AVX2's tiles (half the bytes a block, twice the
 * instructions) got slower on one thread (39.4 -> 41.1), so not there; past one row the L1
 * holds the rows' activation words, which lines of weights would evict. */
#define KT_NEAR(n) (VT_VNNI == 2 && (n) == 1 ? 512 : 0)

/* The lines of the `bytes` at p in part `part` of `parts` (each line in one part), into L2
 * (l2) or L1.
 * A K-quant tile hints the block KT_AHEAD on in KT_PARTS parts (kt_hint; past 4 rows 4 of ~9
 * lines, Q6_K 8 of ~7: one every two sub-blocks or groups), not in one burst of 36 (53) lines
 * at the block's start.  Zen 4, the target, libraries alternated, 8 pairs each: a part per
 * sub-block against the burst,
 * V(8) 48.4-51.0 -> 45.1-48.4 ms, V(16) 94.9-99.8 -> 90.4-96.7, V(1) the same (forced AVX2:
 * V(8) 69-75 -> 68-72); these parts against that, V(16)'s median 93.6 -> 88.8, V(8) the
 * same; a part per quant vector (~1 line): slower. */
static inline void prefetch_part(const uint8_t *p, int bytes, int part, int parts, int l2) {
    for (int o = (bytes * part / parts + 63) & ~63; o < bytes * (part + 1) / parts; o += 64) {
        if (l2) _mm_prefetch((const char *)p + o, _MM_HINT_T1);
        else _mm_prefetch((const char *)p + o, _MM_HINT_T0);
    }
}

/* At step `step` of a tile block's `steps` (Q4_K/Q5_K's 8 sub-blocks, Q6_K's 16 groups), the
 * hint of its part of the block KT_AHEAD on, if a part starts there: KT_PARTS(n) parts a
 * block of 8 steps, as many per 8 steps of longer ones. */
VT_INLINE void kt_hint(const uint8_t *t, int bytes, int step, int steps, const int n) {
    const int parts = KT_PARTS(n) * steps / 8, every = steps / parts;
    if (step % every) return;
    prefetch_part(t + KT_AHEAD(n), bytes, step / every, parts, 1);
    if (KT_NEAR(n)) prefetch_part(t + KT_NEAR(n), bytes, step / every, parts, 0);
}

/* Q4_K/Q5_K: the 6-bit scales as 8 int16 in both 128-bit lanes, the mins doubled to one
 * per 16-element group.  Packed bytes s[0..11] (see kern_portable.c's vt_scale_min):
 * j < 4: sc = s[j] & 63, m = s[j+4] & 63; j >= 4: sc = s[j+4] & 15 | (s[j-4] >> 6) << 4,
 * m = s[j+4] >> 4 | (s[j] >> 6) << 4.  Bytes 0-7 of `v` become sc[0..7], 8-15 m[0..7]. */
VT_INLINE void scales_45(const uint8_t *blk, __m256i *sc, __m256i *mn) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)(blk + 4)); /* 12 bytes and 4 of the quants */
    const __m128i A = _mm_shuffle_epi8(raw, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i B = _mm_shuffle_epi8(raw, _mm_setr_epi8(0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 4, 5, 6, 7));
    const __m128i hi2 = _mm_and_si128(_mm_srli_epi16(B, 2), _mm_set1_epi8(0x30)); /* (b >> 6) << 4 */
    const __m128i m15 = _mm_set1_epi8(0x0F);
    const __m128i up = _mm_or_si128(_mm_blend_epi16(_mm_and_si128(A, m15), _mm_and_si128(_mm_srli_epi16(A, 4), m15), 0xC0), hi2);
    const __m128i v = _mm_blend_epi16(_mm_and_si128(A, _mm_set1_epi8(63)), up, 0xCC); /* words 2,3 and 6,7: j >= 4 */
    *sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(v));
    const __m128i m = _mm_cvtepu8_epi16(_mm_srli_si128(v, 8));
    *mn = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
}

/* Where the 32 bytes of half h's vector k sit in an activation block's 256 (XOFF), and
 * those of half h's pair p of weight vectors, as nibbles, in a packed block's 128 quant
 * bytes (POFF): the halves side by side, so that AVX512's 64-byte load holds vector k
 * (pair p) of both halves and all the vectors of a block share one vector of scales (the
 * 256-bit paths load each half's 32 bytes). */
#define XOFF(h, k) (64 * (k) + 32 * (h))
#define POFF(h, p) (64 * (p) + 32 * (h))

/* A block's 256 quants e (element order) in the order the SIMD paths keep activations in
 * and unpack weights to, as the 32-byte vectors XOFF(h, k) of o: by group, vector k holding
 * quants 4k..4k+3 of each 16-element group g at bytes 4g..4g+3, so that each 32-bit lane
 * (vpdpbusd's, and both words of vpmaddubsw's) sums one group, and a tile takes a group's
 * words by broadcast (kt_words). */
static inline void order_k(const uint8_t *e, uint8_t *o) {
    for (int k = 0; k < 4; k++)
        for (int g = 0; g < 16; g++) memcpy(o + 64 * k + 4 * g, e + 16 * g + 4 * k, 4);
}

/* Q4_K/Q5_K: the quants of sub-blocks 4h..4h+3 from their 64 bytes v0, v1 (nibbles: low
 * then high) and, Q5_K, bit 4h + k of qh[l] the fifth bit of element l of s[k]. */
VT_INLINE void unpack_45(int five, __m256i v0, __m256i v1, __m256i qh, int h, __m256i *s) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    s[0] = _mm256_and_si256(v0, m4), s[1] = _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4);
    s[2] = _mm256_and_si256(v1, m4), s[3] = _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4);
    for (int k = 0; five && k < 4; k++) {
        const __m256i bit = _mm256_set1_epi8((char)(1 << (4 * h + k)));
        s[k] = _mm256_or_si256(s[k], _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), _mm256_set1_epi8(16)));
    }
}

/* Q6_K: the quants of elements 128h.. as 4 vectors of 32 from their low nibbles A, B and
 * their high 2 bits H. */
VT_INLINE void unpack_6(__m256i A, __m256i B, __m256i H, __m256i *q) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    q[0] = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
    q[1] = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4), _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
}

/* The low nibbles of lo and of hi as one byte each (unpacking's inverse). */
static inline __m256i nibbles(__m256i lo, __m256i hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    return _mm256_or_si256(_mm256_and_si256(lo, m4), _mm256_slli_epi16(_mm256_and_si256(hi, m4), 4));
}

#define LOAD256(p) _mm256_loadu_si256((const __m256i *)(p))
#define STORE256(p, v) _mm256_storeu_si256((__m256i *)(p), v)

/* K-quant blocks as the kernels read them: the file's, but the quants stored so that
 * unpacking yields them in order_k's order, as the activations are: the reordering is
 * paid once at load instead of per block per dot.  Same bytes, same size. */
static void pack_k(int type, const uint8_t *src, int64_t nb, uint8_t *dst) {
    const int64_t bytes = vt_block_bytes(type);
    const int five = type == VT_Q5_K, qs = five ? 48 : 16; /* Q4_K/Q5_K: where the nibbles start */
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = src + b * bytes;
        uint8_t *o = dst + b * bytes;
        uint8_t e[QK_K] __attribute__((aligned(32))), ordered[QK_K];
        for (int h = 0; h < 2; h++) { /* both halves read before anything is written: in place allowed */
            __m256i q[4];
            if (type == VT_Q6_K) unpack_6(LOAD256(blk + 64 * h), LOAD256(blk + 64 * h + 32), LOAD256(blk + 128 + 32 * h), q);
            else unpack_45(five, LOAD256(blk + qs + 64 * h), LOAD256(blk + qs + 64 * h + 32), LOAD256(blk + 16), h, q);
            for (int k = 0; k < 4; k++) _mm256_store_si256((__m256i *)(e + 128 * h + 32 * k), q[k]);
        }
        order_k(e, ordered);
        __m256i W[2][4];
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++) W[h][k] = LOAD256(ordered + XOFF(h, k));
        memmove(o, blk, (size_t)bytes); /* scales and factors as they are */
        __m256i hb = _mm256_setzero_si256(); /* Q5_K: the fifth bits of both halves */
        for (int h = 0; h < 2; h++) {
            const __m256i *w = W[h];
            if (type == VT_Q6_K) { /* unpack_6's inverse (the pairs 0,1 and 2,3 as Q4_K's) */
                STORE256(o + POFF(h, 0), nibbles(w[0], w[1]));
                STORE256(o + POFF(h, 1), nibbles(w[2], w[3]));
                __m256i H = _mm256_setzero_si256();
                const __m256i three = _mm256_set1_epi8(3);
                for (int m = 0; m < 4; m++) /* bits 4-5 of vector m's quants at bits 2m, 2m+1 */
                    H = _mm256_or_si256(H, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(w[m], 4), three), 2 * m));
                STORE256(o + 128 + 32 * h, H);
                continue;
            }
            STORE256(o + qs + POFF(h, 0), nibbles(w[0], w[1])); /* unpack_45's inverse */
            STORE256(o + qs + POFF(h, 1), nibbles(w[2], w[3]));
            for (int k = 0; five && k < 4; k++) {
                const __m256i sixteen = _mm256_set1_epi8(16), bit = _mm256_set1_epi8((char)(1 << (4 * h + k)));
                hb = _mm256_or_si256(hb, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(w[k], sixteen), sixteen), bit));
            }
        }
        if (five) STORE256(o + 16, hb);
    }
}

/* The mins (or Q6_K's offsets) mn against a row's group sums: 8 lanes of S2. */
static inline __m256i mins(__m256i mn, const vt_xk *xb) {
    return _mm256_madd_epi16(mn, _mm256_load_si256((const __m256i *)xb->bs));
}

/* One block against n rows in vectors W[0..3] ordered by group (order_k): 32-bit lane g of
 * each holds group g's quants (Q4_K/Q5_K: sub-block g / 2), so Sv, the scale of each word,
 * is group w / 2's.  Q4_K on VNNI: vpdpbusd sums 16 products a lane (at most 16 x 15 x 127
 * < 2^15, so the lane is its own low word) and vpdpwssd scales it by Sv's even words (odd
 * words 0); otherwise 4 (Q6_K: 2) vpmaddubsw words summed as int16 (each word at most 4 x
 * 2 x 31 x 127, Q6_K 2 x 2 x 63 x 127 < 2^15), then vpmaddwd.  AVX512 takes both halves of
 * a block in one vector, the 256-bit paths half h in iteration h (lane g: group 8h + g, the
 * halves' sums added).  Each row's lanes are left for the caller to fold. */
#if VT_VNNI == 2
static const int16_t SV45[32] __attribute__((aligned(64))) = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                                              4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7};
static const int16_t SV6[32] __attribute__((aligned(64))) = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
                                                             8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15};
#else
/* Half h's byte shuffle of the 8 scales (int16, in both 128-bit lanes): lane g gets
 * sub-block 4h + g / 2's in both words. */
static const int8_t SV45[2][32] __attribute__((aligned(32))) = {
    {0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7},
    {8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11, 12, 13, 12, 13, 12, 13, 12, 13, 14, 15, 14, 15, 14, 15, 14, 15}};
#endif

/* The scale of each word for half h (AVX512: both): Q6_K from its 16 int8 scales S as
 * int16, Q4_K/Q5_K from scales_45's sc (Q4_K on VNNI: odd words 0). */
VT_INLINE vx_i k_scales(int type, __m256i S, int h) {
#if VT_VNNI == 2
    (void)h;
    if (type == VT_Q6_K) return _mm512_permutexvar_epi16(_mm512_load_si512(SV6), _mm512_castsi256_si512(S));
    if (type == VT_Q4_K) return _mm512_maskz_permutexvar_epi16(0x55555555u, _mm512_load_si512(SV45), _mm512_castsi256_si512(S));
    return _mm512_permutexvar_epi16(_mm512_load_si512(SV45), _mm512_castsi256_si512(S));
#else
    if (type == VT_Q6_K) /* groups 8h..8h+3 to the low 128 bits, 8h+4.. to the high, each word twice */
        return _mm256_shuffle_epi8(h ? _mm256_permute4x64_epi64(S, 0x32) : _mm256_permute4x64_epi64(S, 0x10),
                                   _mm256_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 0, 1, 0, 1, 2, 3, 2,
                                                    3, 4, 5, 4, 5, 6, 7, 6, 7));
    const __m256i v = _mm256_shuffle_epi8(S, _mm256_load_si256((const __m256i *)SV45[h]));
    return type == VT_Q4_K && VT_VNNI ? _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)) : v;
#endif
}

/* Q5_K: quant vector k of half h (AVX512: both) plus 16 where its fifth bit is set (bit
 * 4h + k of the 32 bytes qh at blk + 16: byte l the element at byte l of a half's vector). */
VT_INLINE vx_i k_fifth(vx_i w, const uint8_t *blk, int h, int k) {
#if VT_VNNI == 2
    (void)h;
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)));
    const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << k)), _mm256_set1_epi8((char)(16 << k)), 1);
    return _mm512_mask_add_epi8(w, _mm512_test_epi8_mask(qh, bit), w, _mm512_set1_epi8(16));
#else
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 16)), bit = _mm256_set1_epi8((char)(1 << (4 * h + k)));
    return _mm256_or_si256(w, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), _mm256_set1_epi8(16)));
#endif
}

#define PROD(k, r) VX(maddubs_epi16)(W[k], VX_LOADI(xb[r].q + XOFF(h, k)))
#define DP(acc, k, r) VX_DPBUSD(acc, W[k], VX_LOADI(xb[r].q + XOFF(h, k)))
/* acc + the words of p times Sv in pairs (vpmaddwd alone where acc is zero: the first half) */
#define SCALE(acc, p) (h ? VX_DPWSSD(acc, p, Sv) : VX(madd_epi16)(p, Sv))

/* s[r]: row r's scaled quant products in VX_LANES lanes (Q6_K: its offsets not yet subtracted). */
VT_INLINE void k_sums(int type, const uint8_t *blk, const vt_xk *xb, const int n, vx_i *s, __m256i *mnp, float *d,
                      float *dm) {
    const vx_i m4 = VX(set1_epi8)(0x0F);
    __m256i S, mn;
    if (type == VT_Q6_K) {
        S = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
        mn = _mm256_slli_epi16(S, 5); /* 32 x scale: the -32 offset */
        *d = *dm = fp16(blk + 208);
    } else {
        scales_45(blk, &S, &mn);
        *d = fp16(blk);
        *dm = fp16(blk + 2);
    }
    for (int h = 0; h < 16 / VX_LANES; h++) {
        const vx_i Sv = k_scales(type, S, h);
        vx_i W[4];
        if (type == VT_Q6_K) { /* [H0 | H1], pairs 0,1 and 2,3 */
            const vx_i H = VX_LOADI(blk + 128 + 32 * h), m30 = VX(set1_epi8)(0x30);
            const vx_i V0 = VX_LOADI(blk + POFF(h, 0)), V1 = VX_LOADI(blk + POFF(h, 1));
            W[0] = VXI(or)(VXI(and)(V0, m4), VXI(and)(VX(slli_epi16)(H, 4), m30));
            W[1] = VXI(or)(VXI(and)(VX(srli_epi16)(V0, 4), m4), VXI(and)(VX(slli_epi16)(H, 2), m30));
            W[2] = VXI(or)(VXI(and)(V1, m4), VXI(and)(H, m30));
            W[3] = VXI(or)(VXI(and)(VX(srli_epi16)(V1, 4), m4), VXI(and)(VX(srli_epi16)(H, 2), m30));
        } else {
            const uint8_t *qs = blk + (type == VT_Q5_K ? 48 : 16);
            const vx_i V0 = VX_LOADI(qs + POFF(h, 0)), V1 = VX_LOADI(qs + POFF(h, 1));
            W[0] = VXI(and)(V0, m4), W[1] = VXI(and)(VX(srli_epi16)(V0, 4), m4);
            W[2] = VXI(and)(V1, m4), W[3] = VXI(and)(VX(srli_epi16)(V1, 4), m4);
            for (int k = 0; type == VT_Q5_K && k < 4; k++) W[k] = k_fifth(W[k], blk, h, k);
        }
        for (int r = 0; r < n; r++) {
            s[r] = type == VT_Q6_K ? VX_DPWSSD(SCALE(s[r], VX(add_epi16)(PROD(0, r), PROD(1, r))),
                                               VX(add_epi16)(PROD(2, r), PROD(3, r)), Sv)
                   : type == VT_Q4_K && VT_VNNI ? SCALE(s[r], DP(DP(DP(DP(VXI(setzero)(), 0, r), 1, r), 2, r), 3, r))
                   : SCALE(s[r], VX(add_epi16)(VX(add_epi16)(PROD(0, r), PROD(1, r)), VX(add_epi16)(PROD(2, r), PROD(3, r))));
            __asm__("" : "+v"(s[r]));
        }
    }
    *mnp = mn;
}
#undef PROD
#undef DP
#undef SCALE

/* k_sums folded to 8 lanes (AVX512: lane j + lane j + 8). */
VT_INLINE void k_block(int type, const uint8_t *blk, const vt_xk *xb, const int n, __m256i *a, __m256i *mnp, float *d,
                       float *dm) {
    vx_i s[VT_ROWS];
    k_sums(type, blk, xb, n, s, mnp, d, dm);
    for (int r = 0; r < n; r++) {
#if VT_VNNI == 2
        a[r] = _mm256_add_epi32(_mm512_castsi512_si256(s[r]), _mm512_extracti64x4_epi64(s[r], 1));
#else
        a[r] = s[r];
#endif
        if (type == VT_Q6_K) a[r] = _mm256_sub_epi32(a[r], mins(*mnp, &xb[r])); /* S1 - S2, lane-wise */
    }
}

#if VT_VNNI == 2

/* The sums of the 16 lanes of each of v[0..7], as one vector (lane r: v[r]'s): rows8's
 * interleaves on 512 bits, then the 128-bit lanes added. */
static inline __m256i rows8_512(const __m512i *v) {
    __m512i e[4], f[2];
    for (int i = 0; i < 4; i++) /* each 128: rows 2i, 2i+1, 2i, 2i+1 */
        e[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++) /* each 128: rows 4i..4i+3 */
        f[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(e[2 * i], e[2 * i + 1]), _mm512_unpackhi_epi64(e[2 * i], e[2 * i + 1]));
    /* 128-bit lanes [f0 0+1, f1 0+1, ...] + [f0 2+3, f1 2+3, ...]: rows 0-3 and 4-7 */
    const __m512i g = _mm512_add_epi32(_mm512_shuffle_i64x2(f[0], f[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_i64x2(f[0], f[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i h = _mm512_add_epi32(g, _mm512_shuffle_i64x2(g, g, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castsi512_si256(_mm512_shuffle_i64x2(h, h, _MM_SHUFFLE(0, 0, 2, 0)));
}

/* S2 of rows 0..n-1 (0 past n) as one vector: the mins mn against 2 rows' group sums a
 * vector, reduced as rows8_512 does. */
static inline __m256i mins8_512(__m256i mn, const vt_xk *xb, const int n) {
    const __m512i m2 = _mm512_broadcast_i64x4(mn);
    __m512i t[4];
    for (int p = 0; p < 4; p++) { /* lanes 0-7: row 2p, 8-15: row 2p + 1 */
        const __m256i lo = 2 * p < n ? _mm256_load_si256((const __m256i *)xb[2 * p].bs) : _mm256_setzero_si256(),
                      hi = 2 * p + 1 < n ? _mm256_load_si256((const __m256i *)xb[2 * p + 1].bs) : _mm256_setzero_si256();
        t[p] = _mm512_madd_epi16(m2, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
    }
    /* each 128 of the low half: rows 0 2 0 2 | 4 6 4 6, of the high half: 1 3 1 3 | 5 7 5 7 */
    const __m512i e0 = _mm512_add_epi32(_mm512_unpacklo_epi32(t[0], t[1]), _mm512_unpackhi_epi32(t[0], t[1])),
                  e1 = _mm512_add_epi32(_mm512_unpacklo_epi32(t[2], t[3]), _mm512_unpackhi_epi32(t[2], t[3]));
    const __m512i f = _mm512_add_epi32(_mm512_unpacklo_epi64(e0, e1), _mm512_unpackhi_epi64(e0, e1)); /* 0 2 4 6 | 1 3 5 7 */
    const __m512i g = _mm512_add_epi32(f, _mm512_shuffle_i64x2(f, f, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0), g));
}
#endif

/* The sums of the 8 lanes of each of v[0..7], as one vector (lane r: v[r]'s), by
 * interleaving and adding (shuffles and adds: vphaddd would load the multiply pipe). */
static inline __m256i rows8(const __m256i *v) {
    __m256i e[4], f[2];
    for (int i = 0; i < 4; i++) /* rows 2i, 2i+1: lanes 0+1 and 2+3 of each 128 */
        e[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++) /* rows 4i..4i+3: each 128's sum */
        f[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(e[2 * i], e[2 * i + 1]), _mm256_unpackhi_epi64(e[2 * i], e[2 * i + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(f[0], f[1], 0x20), _mm256_permute2x128_si256(f[0], f[1], 0x31));
}

/* The float step of a block for 4 outputs (kern_portable.c's k_block_value, times dx); for
 * Q6_K, s1 is already S1 - S2 (k_block subtracts the mins lane-wise) and s2 is unused. */
static inline __m128 k_value4(int type, __m128i s1, __m128i s2, __m128 d, __m128 dm, __m128 dx) {
    const __m128 v = type == VT_Q6_K ? _mm_mul_ps(d, _mm_cvtepi32_ps(s1))
                                     : _mm_sub_ps(_mm_mul_ps(d, _mm_cvtepi32_ps(s1)), _mm_mul_ps(dm, _mm_cvtepi32_ps(s2)));
    return _mm_mul_ps(dx, v);
}

/* The fp16 values at p, p + stride, p + 2 stride and p + 3 stride as 4 floats (exact). */
static inline __m128 fp16x4(const uint8_t *p, int64_t stride) {
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)((uint64_t)vt_rd16(p) | (uint64_t)vt_rd16(p + stride) << 16 |
                                                      (uint64_t)vt_rd16(p + 2 * stride) << 32 |
                                                      (uint64_t)vt_rd16(p + 3 * stride) << 48)));
}

/* The fp16 factors d and dm of 4 blocks as vectors (exact, as fp16()). */
VT_INLINE void factors4(int type, const uint8_t *blk, int64_t bytes, __m128 *d, __m128 *dm) {
    if (type == VT_Q6_K) {
        *d = *dm = fp16x4(blk + 208, bytes);
    } else { /* d, dm: the first 4 bytes of each block */
        int32_t u[4];
        for (int i = 0; i < 4; i++) memcpy(&u[i], blk + i * bytes, 4);
        const __m256 f = _mm256_cvtph_ps(_mm_setr_epi32(u[0], u[1], u[2], u[3])); /* d0 dm0 d1 dm1 d2 dm2 d3 dm3 */
        const __m128 lo = _mm256_castps256_ps128(f), hi = _mm256_extractf128_ps(f, 1);
        *d = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
        *dm = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* One activation row (L = 1: its blocks and scales contiguous) against nrows weight rows
 * from w, y[r] their outputs.  The rows' blocks are one stream (row r's block b is block
 * r*nb + b): 4 blocks at a time have their integer sums reduced together and their float
 * steps computed in the lanes of one vector, then added to their rows' sums in order. */
VT_INLINE void rows1(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t nb, int64_t nrows,
                     float *y) {
    const int64_t bytes = vt_block_bytes(type), N = nb * nrows;
    uint8_t pad[4 * 210] __attribute__((aligned(32))); /* the last blocks, zero-padded to 4 */
    float acc = 0.0f;
    int64_t b = 0; /* the block index within its row of the next block */
    for (int64_t i = 0; i < N; i += 4) {
        const int k = N - i < 4 ? (int)(N - i) : 4;
        const uint8_t *blk = w + i * bytes;
        prefetch_ahead(blk, 4 * (int)bytes, VT_PREFETCH, 0);
        if (k < 4) {
            memset(pad, 0, sizeof pad);
            memcpy(pad, blk, (size_t)(k * bytes));
            blk = pad;
        }
        const int inrow = b + 4 <= nb; /* the 4 blocks in one row: the common case */
        int64_t bi[4];
        bi[0] = b;
        for (int j = 1; j < 4; j++) bi[j] = inrow ? b + j : bi[j - 1] + 1 == nb ? 0 : bi[j - 1] + 1;
        __m256i a[4], c[4];
        float dd;
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            a[j] = _mm256_setzero_si256();
            k_block(type, blk + j * bytes, x + bi[j], 1, &a[j], &c[j], &dd, &dd);
            if (type != VT_Q6_K) c[j] = mins(c[j], x + bi[j]); /* Q6_K: its offsets are in a[j] */
        }
        __m128 d, dm;
        factors4(type, blk, bytes, &d, &dm);
        const __m128 xs = inrow ? _mm_loadu_ps(dx + b) : _mm_setr_ps(dx[bi[0]], dx[bi[1]], dx[bi[2]], dx[bi[3]]);
        float t[4];
        const __m128i s2 = type == VT_Q6_K ? _mm_setzero_si128() : hsum4(c[0], c[1], c[2], c[3]);
        _mm_storeu_ps(t, k_value4(type, hsum4(a[0], a[1], a[2], a[3]), s2, d, dm, xs));
        if (k == 4 && b + 4 < nb) { /* no row ends here */
            acc = acc + t[0];
            acc = acc + t[1];
            acc = acc + t[2];
            acc = acc + t[3];
            b += 4;
            continue;
        }
        for (int j = 0; j < k; j++) {
            acc = acc + t[j];
            if (++b == nb) {
                *y++ = acc;
                acc = 0.0f;
                b = 0;
            }
        }
    }
}

static void dot_k_rows1(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t nb, int64_t nrows,
                        float *y) {
    if (type == VT_Q4_K) rows1(VT_Q4_K, w, x, dx, nb, nrows, y);
    else if (type == VT_Q5_K) rows1(VT_Q5_K, w, x, dx, nb, nrows, y);
    else rows1(VT_Q6_K, w, x, dx, nb, nrows, y);
}

/* One weight row against n (1..VT_ROWS) activation rows: the rows' integer sums reduced
 * together and their float steps computed in the lanes of one vector (4 rows: 128 bits). */
VT_INLINE void dot_k_n(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t stride, int64_t nb,
                       float *out, const int n) {
    const int64_t bytes = vt_block_bytes(type);
    float o[8] = {0};
    memcpy(o, out, sizeof(float) * (size_t)n); /* the sums so far (dot_k adds to out) */
    __m256 acc8 = _mm256_loadu_ps(o);
    __m128 acc4 = _mm_loadu_ps(o);
    for (int64_t b = 0; b < nb; b++) {
        __m256i a[VT_ROWS], c[VT_ROWS], mn;
        float d, dm;
        const vt_xk *xb = x + b * stride;
#if VT_VNNI == 2
        if (n > 4) { /* the rows' 16-lane sums and their mins reduced in 512 bits */
            __m512i s[VT_ROWS];
            for (int r = n; r < VT_ROWS; r++) s[r] = _mm512_setzero_si512();
            k_sums(type, w + b * bytes, xb, n, s, &mn, &d, &dm);
            const __m256i s1 = rows8_512(s), s2 = mins8_512(mn, xb, n);
            const __m256 v = type == VT_Q6_K ? _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_sub_epi32(s1, s2)))
                                             : _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s1)),
                                                             _mm256_mul_ps(_mm256_set1_ps(dm), _mm256_cvtepi32_ps(s2)));
            acc8 = _mm256_add_ps(acc8, _mm256_mul_ps(_mm256_loadu_ps(dx + b * stride), v));
            continue;
        }
#endif
        for (int r = 0; r < VT_ROWS; r++) a[r] = _mm256_setzero_si256();
        k_block(type, w + b * bytes, xb, n, a, &mn, &d, &dm);
        if (n > 4) { /* kern_portable.c's k_block_value times dx, 8 rows a vector (dx readable past row n) */
            const __m256 s1 = _mm256_cvtepi32_ps(rows8(a)), dv = _mm256_set1_ps(d);
            __m256 v = _mm256_mul_ps(dv, s1);
            if (type != VT_Q6_K) {
                for (int r = 0; r < VT_ROWS; r++) c[r] = r < n ? mins(mn, xb + r) : _mm256_setzero_si256();
                v = _mm256_sub_ps(v, _mm256_mul_ps(_mm256_set1_ps(dm), _mm256_cvtepi32_ps(rows8(c))));
            }
            acc8 = _mm256_add_ps(acc8, _mm256_mul_ps(_mm256_loadu_ps(dx + b * stride), v));
        } else {
            for (int r = 0; r < 4; r++) c[r] = r < n && type != VT_Q6_K ? mins(mn, xb + r) : _mm256_setzero_si256();
            const __m128i s2 = type == VT_Q6_K ? _mm_setzero_si128() : hsum4(c[0], c[1], c[2], c[3]);
            acc4 = _mm_add_ps(acc4, k_value4(type, hsum4(a[0], a[1], a[2], a[3]), s2, _mm_set1_ps(d), _mm_set1_ps(dm),
                                             _mm_loadu_ps(dx + b * stride)));
        }
    }
    if (n > 4) _mm256_storeu_ps(o, acc8);
    else _mm_storeu_ps(o, acc4);
    memcpy(out, o, sizeof(float) * (size_t)n);
}

/* Byte i: 16 where bit i of the 32 bits at m is set, else 0 (the fifth bits of 5-bit quants):
 * each mask byte spread over 8 lanes, each lane testing its own bit. */
static inline __m256i bits16(const uint8_t *m) {
    uint32_t b;
    memcpy(&b, m, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)b),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                                                2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
}

/* A 32-element block's quants as bytes: Q4_0/Q5_0 unsigned, u = w + 16 (Q4_0: nibble + 8;
 * Q5_0: nibble | fifth bit << 4), Q8_0 signed as stored (vt_unpack_32's integers w);
 * Q4_1/Q5_1 as vt_unpack_32's (unsigned). */
VT_INLINE __m256i unpack32(int type, const uint8_t *blk) {
    if (type == VT_Q8_0) return _mm256_loadu_si256((const __m256i *)(blk + 2));
    const int five = type == VT_Q5_0 || type == VT_Q5_1;
    const uint8_t *h = blk + (vt_has_min(type) ? 4 : 2);
    const __m128i raw = _mm_loadu_si128((const __m128i *)(h + (five ? 4 : 0)));
    /* elements 0-15: the low nibbles, 16-31: the high ones */
    const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
    if (type == VT_Q4_0) return _mm256_add_epi8(q, _mm256_set1_epi8(8));
    if (!five) return q;
    return _mm256_or_si256(q, bits16(h));
}

/* The 8 lane sums (4 elements each) of q*x for one block, exact: Q4_0/Q5_0 as u*x plus the
 * row's -16 x its lane sums; Q8_0 as |w| times x with w's sign (u8 x s8, the same
 * products); Q4_1/Q5_1 as q*x. aw: |w| for Q8_0 (shared by the rows), else u. */
VT_INLINE __m256i dot32(int type, __m256i u, __m256i aw, const vt_x8 *xb) {
    const __m256i xq = _mm256_loadu_si256((const __m256i *)xb->q);
    if (type == VT_Q8_0) return DPBUSD(_mm256_setzero_si256(), aw, _mm256_sign_epi8(xq, u));
    if (vt_has_min(type)) return DPBUSD(_mm256_setzero_si256(), u, xq);
    return DPBUSD(_mm256_loadu_si256((const __m256i *)xb->ns16), u, xq);
}

/* The float steps of 4 outputs at once (kern_portable.c's dot_q32, lane by lane): their
 * blocks' 8-lane sums s[0..3] folded to one exact S each (lane k: s[k]'s), t = dw*dx,
 * tm = m*dx and X the activation quant sums, each lane its own output's. */
VT_INLINE __m128 step32x4(int type, __m128 acc, __m128 t, __m128 tm, const __m256i *s, __m128i X) {
    const __m128 v = _mm_mul_ps(t, _mm_cvtepi32_ps(hsum4(s[0], s[1], s[2], s[3])));
    return vt_has_min(type) ? _mm_add_ps(acc, _mm_add_ps(v, _mm_mul_ps(tm, _mm_cvtepi32_ps(X)))) : _mm_add_ps(acc, v);
}

/* One weight row against n (1..4) activation rows, the rows in the lanes of one vector. */
VT_INLINE void dot_q32_n(int type, const uint8_t *w, const vt_x8 *const *x, int64_t nb, float *out, const int n) {
    const int64_t bytes = vt_block_bytes(type);
    __m128 acc = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + bytes * b;
        const __m256i u = unpack32(type, wb), aw = type == VT_Q8_0 ? _mm256_sign_epi8(u, u) : u;
        __m256i s[4];
        for (int r = 0; r < 4; r++) s[r] = r < n ? dot32(type, u, aw, &x[r][b]) : _mm256_setzero_si256();
        /* the rows' scales and quant sums (0 past n) */
        const __m128 d4 = _mm_setr_ps(x[0][b].d, n > 1 ? x[1][b].d : 0, n > 2 ? x[2][b].d : 0, n > 3 ? x[3][b].d : 0);
        const __m128i X4 = _mm_setr_epi32(x[0][b].sum, n > 1 ? x[1][b].sum : 0, n > 2 ? x[2][b].sum : 0, n > 3 ? x[3][b].sum : 0);
        acc = step32x4(type, acc, _mm_mul_ps(_mm_set1_ps(fp16(wb)), d4),
                       vt_has_min(type) ? _mm_mul_ps(_mm_set1_ps(fp16(wb + 2)), d4) : d4, s, X4);
    }
    float o[4];
    _mm_storeu_ps(o, acc);
    memcpy(out, o, sizeof(float) * (size_t)n);
}

/* N (1..2) activation rows against R (1..4) consecutive weight rows from w, block by block
 * in lockstep, the weight rows in the lanes of one vector per activation row; each x block
 * read once for all, and the rows' bytes prefetched as one stream VT_PREFETCH ahead (each
 * output as dot_q32_n's). */
VT_INLINE void q32_rows(int type, const uint8_t *w, const vt_x8 *x, int64_t nb, float *y, int64_t ystride, const int R,
                        const int N) {
    const int64_t bytes = vt_block_bytes(type), row_bytes = nb * bytes;
    __m128 acc[VT_STREAM_ROWS];
    for (int l = 0; l < N; l++) acc[l] = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        prefetch_ahead(w + b * R * bytes, R * (int)bytes, VT_PREFETCH, 0);
        __m256i u[4], aw[4], s[4];
        for (int j = 0; j < R; j++) {
            const uint8_t *wb = w + j * row_bytes + b * bytes;
            u[j] = unpack32(type, wb), aw[j] = type == VT_Q8_0 ? _mm256_sign_epi8(u[j], u[j]) : u[j];
        }
        /* the rows' fp16 scales (and minimums) in 4 lanes (R = 4: one conversion; lanes past R 0) */
        const uint8_t *wb = w + b * bytes;
        const __m128 dw = R == 4 ? fp16x4(wb, row_bytes) : _mm_set_ss(fp16(wb)),
                     m = !vt_has_min(type) ? dw : R == 4 ? fp16x4(wb + 2, row_bytes) : _mm_set_ss(fp16(wb + 2));
        for (int l = 0; l < N; l++) {
            const vt_x8 *xb = x + l * nb + b;
            for (int j = 0; j < 4; j++) s[j] = j < R ? dot32(type, u[j], aw[j], xb) : _mm256_setzero_si256();
            const __m128 dx = _mm_set1_ps(xb->d);
            acc[l] = step32x4(type, acc[l], _mm_mul_ps(dw, dx), _mm_mul_ps(m, dx), s, _mm_set1_epi32(xb->sum));
        }
    }
    for (int l = 0; l < N; l++) {
        float o[4];
        _mm_storeu_ps(o, acc[l]);
        memcpy(y + l * ystride, o, sizeof(float) * (size_t)R);
    }
}

/* K-quants in tiles of KT rows (AVX512 16, the 256-bit paths 8: a vector's lanes): a tile's
 * block b holds its rows' block b, lanes = rows, so that one multiply instruction takes 4
 * quants of each row against the same 4 activation quants (a 32-bit word of the row's
 * activation block, broadcast) and no sum ever crosses lanes: each row's S1 = sum of scale x
 * group dot and S2 = sum of min x group sums are the integers dot_k's are, its float step
 * the same.  A tile block, in units of KT bytes (a vector is 4 KT bytes, lane r = row r):
 *   Q4_K (144 KT): d at 0, dm at 2 (fp16, row r at 2r); the packed scale bytes 0-3, 4-7,
 *     8-11 as 3 vectors at 4; 32 vectors of nibbles at 16 (words kt_words gives: low, high);
 *   Q5_K (176 KT): as Q4_K, the nibbles at 48 and at 16 per nibble vector two masks of 4 KT
 *     bits of the fifth bits (low word's, high word's; bit 4r + i);
 *   Q6_K (210 KT): d at 0; the int8 scales 4v..4v+3 as vector v at 2 (4 vectors); 32
 *     vectors of low nibbles at 18 (low, high); 16 of high 2 bits at 146 (4 words: bits 2c).
 * Which activation words a vector holds follows order_k (kt_words).  Q4_0, Q5_0 and Q8_0
 * are tiled too (pack_q32t).  AVX2's tiles sum vpmaddubsw's words as int16 (KT_RUN): in a
 * kernel harness with the weights in L2 (Zen 5, L = 8) no faster than its dot_k (Q6_K
 * slower), but in the target, whose weights stream from memory, V(8) 70-76 -> 60 ms, and
 * tiling Q4_K alone 82-85: dot_k's rows in column chunks are many short streams. */
#define KT VX_LANES
#define KT_BYTES(type) (KT * vt_block_bytes(type))

/* The activation words (a block's 32-bit words in order_k's order) of quant vector v. */
static void kt_words(int type, int v, int *w) {
    /* order_k's word (k, g) = 16k + g: elements 16g + 4k.. */
    if (type != VT_Q6_K) w[0] = 16 * (v % 4) + 2 * (v / 4), w[1] = w[0] + 1; /* v = 4s + k: groups 2s, 2s + 1 */
    else if (v < 32) w[0] = 32 * (v % 2) + v / 2, w[1] = w[0] + 16; /* v = 2g + p: words (2p, g), (2p + 1, g) */
    else for (int c = 0; c < 4; c++) w[c] = 16 * c + v - 32;         /* group v - 32 */
}

/* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 tiles (a block: its KT rows' fp16 d at 0 and, Q4_1/Q5_1,
 * fp16 m at 2 KT (the head, H = 2 or 4 KT), then in units of 4 KT bytes vectors of 4-quant
 * words, lane r = row r, word k = elements 4k..4k+3): Q8_0 words 0..7 at H; Q4_0/Q4_1 at H
 * and Q5_0/Q5_1 at H + 4 KT vectors k = 0..3 of the raw nibble bytes 4k..4k+3 (low: word
 * k, high: word k + 4), the fifth bits at H as 8 masks of 4 KT bits (word k: bit 4r + i). */
static void pack_q32t(int type, const uint8_t *rows, int64_t nb, uint8_t *dst) {
    const int64_t bytes = vt_block_bytes(type), row_bytes = nb * bytes;
    const int head = vt_has_min(type) ? 4 : 2, five = type == VT_Q5_0 || type == VT_Q5_1; /* head: bytes a row */
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = dst + b * KT_BYTES(type);
        uint64_t mask[8] = {0};
        for (int r = 0; r < KT; r++) {
            const uint8_t *blk = rows + r * row_bytes + b * bytes;
            for (int f = 0; f < head; f += 2) memcpy(o + f * KT + 2 * r, blk + f, 2);
            if (type == VT_Q8_0) {
                for (int k = 0; k < 8; k++) memcpy(o + 2 * KT + 4 * KT * k + 4 * r, blk + 2 + 4 * k, 4);
                continue;
            }
            const int q = head + (five ? 4 : 0); /* the nibbles' offset, in the block and in KT units */
            for (int k = 0; k < 4; k++) memcpy(o + q * KT + 4 * KT * k + 4 * r, blk + q + 4 * k, 4);
            uint32_t qh;
            memcpy(&qh, blk + head, 4);
            for (int k = 0; five && k < 8; k++) mask[k] |= (uint64_t)(qh >> 4 * k & 15) << 4 * r;
        }
        for (int k = 0; five && k < 8; k++) memcpy(o + head * KT + KT / 2 * k, &mask[k], KT / 2); /* x86: little-endian */
    }
}

static void pack_kt(int type, const uint8_t *rows, int64_t nb, uint8_t *dst) {
    const int64_t bytes = vt_block_bytes(type), row_bytes = nb * bytes;
    if (vt_block_elems(type) == QK8_0) {
        pack_q32t(type, rows, nb, dst);
        return;
    }
    uint8_t id[QK_K] __attribute__((aligned(32))), ord[QK_K]; /* ord[p]: the element at activation position p */
    for (int i = 0; i < QK_K; i++) id[i] = (uint8_t)i;
    order_k(id, ord);
    const int six = type == VT_Q6_K, five = type == VT_Q5_K;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *o = dst + b * KT_BYTES(type);
        uint8_t e[KT][QK_K];
        for (int r = 0; r < KT; r++) {
            const uint8_t *blk = rows + r * row_bytes + b * bytes;
            vt_kblock k;
            vt_unpack_k_portable(type, blk, 1, &k);
            memcpy(e[r], k.q, QK_K);
            if (six) {
                memcpy(o + 2 * r, blk + 208, 2);
                for (int v = 0; v < 4; v++) memcpy(o + 2 * KT + 4 * KT * v + 4 * r, blk + 192 + 4 * v, 4);
                continue;
            }
            memcpy(o + 2 * r, blk, 2), memcpy(o + 2 * KT + 2 * r, blk + 2, 2);
            for (int w = 0; w < 3; w++) memcpy(o + 4 * KT + 4 * KT * w + 4 * r, blk + 4 + 4 * w, 4);
        }
        for (int v = 0; v < (six ? 48 : 32); v++) {
            int w[4] = {0};
            kt_words(type, v, w);
            uint8_t *ov = o + (v < 32 ? (six ? 18 : five ? 48 : 16) * KT + 4 * KT * v : 146 * KT + 4 * KT * (v - 32));
            for (int h = 0; five && h < 2; h++) { /* Q5_K: the fifth bits of word w[h], bit 4r + i */
                uint64_t m = 0;
                for (int r = 0; r < KT; r++)
                    for (int i = 0; i < 4; i++) m |= (uint64_t)(e[r][ord[4 * w[h] + i]] >> 4) << (4 * r + i);
                memcpy(o + 16 * KT + KT * v + KT / 2 * h, &m, KT / 2);
            }
            for (int r = 0; r < KT; r++)
                for (int i = 0; i < 4; i++) {
                    const uint8_t *q = e[r];
                    if (v >= 32) /* high 2 bits of 4 words */
                        ov[4 * r + i] = (uint8_t)(q[ord[4 * w[0] + i]] >> 4 | (q[ord[4 * w[1] + i]] >> 4) << 2 |
                                                  (q[ord[4 * w[2] + i]] >> 4) << 4 | (q[ord[4 * w[3] + i]] >> 4) << 6);
                    else
                        ov[4 * r + i] = (uint8_t)((q[ord[4 * w[0] + i]] & 15) | (q[ord[4 * w[1] + i]] & 15) << 4);
                }
        }
    }
}

/* The 4 bytes at p in every lane. */
static inline vx_i bcast4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return VX(set1_epi32)(v);
}

/* acc + w . the 4 bytes at p in every lane: VNNI, int32 lanes; AVX2, the int16 words of
 * vpmaddubsw (pairs of products) added as int16.  AVX512: vpdpbusd with an embedded
 * broadcast (GCC emits a separate vpbroadcastd for the intrinsic: Q6_K's loop measured 1.02
 * -> 0.92 ns per 256 weights per row at L = 8 with this, Q4_K's 0.85 -> 0.83); VEX has none. */
static inline vx_i dp_bcast(vx_i acc, vx_i w, const void *p) {
#if VT_VNNI == 2
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t *)p));
    return acc;
#elif VT_VNNI == 1
    return _mm256_dpbusd_avx_epi32(acc, w, bcast4(p));
#else
    return _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, bcast4(p)));
#endif
}

/* acc + dp_bcast's sums a times each lane's scale sc (< 2^15): VNNI's int32 lanes by
 * vpmulld, AVX2's two int16 words by vpmaddwd with sc in both. */
static inline vx_i kt_scaled(vx_i acc, vx_i a, vx_i sc) {
#if VT_VNNI
    return VX(add_epi32)(acc, VX(mullo_epi32)(a, sc));
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, _mm256_blend_epi16(sc, _mm256_slli_epi32(sc, 16), 0xAA)));
#endif
}

/* How many quant vectors' dp_bcast a lane may sum before kt_scaled, for b-bit quants:
 * VNNI's int32 any; AVX2's int16 words 8 of 4-bit quants' (8 x 2 x 15 x 127 < 2^15), 4 of
 * 5-bit, 2 of 6-bit. */
#define KT_RUN(b) (VT_VNNI ? 8 : 8 >> ((b) - 4))

/* v + 16 in each byte whose bit is set in the mask of 4 KT bits at m (bit i: byte i). */
static inline vx_i add16_where(vx_i v, const uint8_t *m) {
#if VT_VNNI == 2
    uint64_t b;
    memcpy(&b, m, 8);
    return _mm512_mask_add_epi8(v, _cvtu64_mask64(b), v, _mm512_set1_epi8(16));
#else
    return _mm256_or_si256(v, bits16(m)); /* the bytes are nibbles: or is add */
#endif
}

/* Scale (sc) or min (!sc) j of each lane's row from the packed-scale words of tile block t
 * (kern_portable.c's vt_scale_min, lane-wise). */
VT_INLINE vx_i kt_scale(const uint8_t *t, int j, int sc) {
    const vx_i m6 = VX(set1_epi32)(63), m4 = VX(set1_epi32)(15), m2 = VX(set1_epi32)(3);
    const vx_i W01 = VX_LOADI(t + (sc ? 4 : 8) * KT); /* bytes 0-3 (sc) or 4-7 (m) */
    if (j < 4) return VXI(and)(VX(srli_epi32)(W01, 8 * j), m6);
    const int q = 8 * (j - 4);
    const vx_i lo = VXI(and)(VX(srli_epi32)(VX_LOADI(t + 12 * KT), sc ? q : q + 4), m4);
    return VXI(or)(lo, VX(slli_epi32)(VXI(and)(VX(srli_epi32)(W01, q + 6), m2), 4));
}

/* Q4_K/Q5_K: quant vector v4 of tile block t as its low and high nibbles' quants (Q5_K's with
 * their fifth bits). */
VT_INLINE void q45_quants(const int five, const uint8_t *t, int v4, vx_i *lo, vx_i *hi) {
    const vx_i m4 = VX(set1_epi8)(0x0F), v = VX_LOADI(t + (five ? 48 : 16) * KT + 4 * KT * v4);
    *lo = VXI(and)(v, m4), *hi = VXI(and)(VX(srli_epi16)(v, 4), m4);
    if (five) *lo = add16_where(*lo, t + 16 * KT + KT * v4), *hi = add16_where(*hi, t + 16 * KT + KT * v4 + KT / 2);
}

/* AVX2's K-quant tiles row by row: each row's words against the m quant vectors u (vector j
 * against activation bytes base + 64 (j / per) + 4 (j % per)), its int16 sums scaled by sc
 * every `run` vectors into S1. */
VT_INLINE void kt_rows(const vx_i *u, int m, int per, int base, int run, vx_i sc, const vt_xk *xb, vx_i *S1,
                       const int n) {
    for (int i = 0; i < n; i++) {
        vx_i a = VXI(setzero)();
        for (int j = 0; j < m; j++) {
            a = dp_bcast(a, u[j], xb[i].q + base + 64 * (j / per) + 4 * (j % per));
            if ((j + 1) % run == 0) S1[i] = kt_scaled(S1[i], a, sc), a = VXI(setzero)();
        }
    }
}

/* Q4_K and Q5_K (five: its fifth bits as masks, two a nibble vector, at 16 KT): block t's
 * S1 (sub-block dots times their scales), then S2 (mins against the sub-blocks' sums, two
 * sub-blocks a vpdpwssd: half the multiplies of one a group, Q4_K at L = 8 0.83 -> 0.80 ns
 * per 256 weights per row, the kernel being bound by the multiply ports).  VNNI: each
 * sub-block's dots for all rows one quant vector at a time (n independent vpdpbusd chains,
 * and few live registers: Q4_K at L = 8 0.95 -> 0.81 ns against row by row, Zen 5, AVX512).
 * AVX2: a sub-block's 8 quant vectors unpacked once, then row by row, its int16 words scaled
 * every KT_RUN products (vpaddw's chain is short; rows side by side kept n accumulators
 * beside the n sums in 16 registers: Q4_K at L = 4 3.9 -> 3.5, Q5_K at L = 8 3.57 -> 3.27,
 * Zen 4). */
VT_INLINE void kt_sums45(const int five, const uint8_t *t, const vt_xk *xb, vx_i *S1, vx_i *S2, const int n) {
    for (int sb = 0; sb < 8; sb++) {
        kt_hint(t, KT_BYTES(five ? VT_Q5_K : VT_Q4_K), sb, 8, n);
        const vx_i sc = kt_scale(t, sb, 1);
        if (!VT_VNNI) {
            vx_i u[8];
            for (int k = 0; k < 4; k++) q45_quants(five, t, 4 * sb + k, &u[2 * k], &u[2 * k + 1]);
            kt_rows(u, 8, 2, 8 * sb, KT_RUN(five ? 5 : 4), sc, xb, S1, n);
            continue;
        }
        vx_i a[VT_ROWS];
        for (int i = 0; i < n; i++) a[i] = VXI(setzero)();
        for (int k = 0; k < 4; k++) {
            vx_i lo, hi;
            q45_quants(five, t, 4 * sb + k, &lo, &hi);
            for (int i = 0; i < n; i++) a[i] = dp_bcast(a[i], lo, xb[i].q + 8 * sb + 64 * k);
            for (int i = 0; i < n; i++) a[i] = dp_bcast(a[i], hi, xb[i].q + 8 * sb + 64 * k + 4);
        }
        for (int i = 0; i < n; i++) S1[i] = kt_scaled(S1[i], a[i], sc);
    }
    for (int sb = 0; sb < 8; sb += 2) { /* sub-blocks sb, sb + 1 in each lane's words */
        const vx_i mn2 = VXI(or)(kt_scale(t, sb, 0), VX(slli_epi32)(kt_scale(t, sb + 1, 0), 16));
        for (int i = 0; i < n; i++) S2[i] = VX_DPWSSD(S2[i], mn2, bcast4(xb[i].bs32 + sb));
    }
}

/* Q6_K: group g's int8 scale of each lane's row. */
static inline vx_i kt_scale6(const uint8_t *t, int g) {
    return VX(srai_epi32)(VX(slli_epi32)(VX_LOADI(t + 2 * KT + 4 * KT * (g / 4)), 24 - 8 * (g % 4)), 24);
}

/* Q6_K: a group's quant vector k: low nibbles of N0, N1 (k = 0, 2; high: 1, 3), bits 2k,
 * 2k + 1 of H. */
VT_INLINE vx_i q6_quants(vx_i N0, vx_i N1, vx_i H, int k) {
    const vx_i N = k < 2 ? N0 : N1, lo = VXI(and)(k % 2 ? VX(srli_epi16)(N, 4) : N, VX(set1_epi8)(0x0F));
    const vx_i hi = k == 0 ? VX(slli_epi16)(H, 4) : k == 1 ? VX(slli_epi16)(H, 2) : k == 2 ? H : VX(srli_epi16)(H, 2);
    return VXI(or)(lo, VXI(and)(hi, VX(set1_epi8)(0x30)));
}

/* Q6_K: per group g its 4 quant vectors' products, times its scale, then S2 = 32 x the
 * scales against the group sums, two groups a vpdpwssd.  VNNI: 4 vpdpbusd for all rows one
 * word at a time, scaled (vpmulld) after the words rather than in their loop (AVX512 0.96 ->
 * 0.90 ns per 256 weights per row at L = 8, Zen 5).  AVX2: as kt_sums45's, row by row,
 * every 2 words scaled (two passes of at most 4 rows before: L = 8 3.95 -> 3.45 ns, Zen 4). */
VT_INLINE void kt_sums6(const uint8_t *t, const vt_xk *xb, vx_i *S1, vx_i *S2, const int n) {
    for (int g = 0; g < 16; g++) {
        kt_hint(t, KT_BYTES(VT_Q6_K), g, 16, n);
        const vx_i N0 = VX_LOADI(t + 18 * KT + 8 * KT * g), N1 = VX_LOADI(t + 18 * KT + 8 * KT * g + 4 * KT),
                   H = VX_LOADI(t + 146 * KT + 4 * KT * g);
        if (!VT_VNNI) {
            vx_i q[4];
            for (int k = 0; k < 4; k++) q[k] = q6_quants(N0, N1, H, k);
            kt_rows(q, 4, 1, 4 * g, KT_RUN(6), kt_scale6(t, g), xb, S1, n);
            continue;
        }
        vx_i a[VT_ROWS];
        for (int i = 0; i < n; i++) a[i] = VXI(setzero)();
        for (int k = 0; k < 4; k++) {
            const vx_i q = q6_quants(N0, N1, H, k);
            for (int i = 0; i < n; i++) a[i] = dp_bcast(a[i], q, xb[i].q + 4 * g + 64 * k);
        }
        for (int i = 0; i < n; i++) S1[i] = kt_scaled(S1[i], a[i], kt_scale6(t, g));
    }
    /* bytes c, c + 1 of each 32-bit lane, each twice: c = 0 and c = 2 */
    const vx_i dup[2] = {VX_DUP128(_mm_setr_epi8(0, 0, 1, 1, 4, 4, 5, 5, 8, 8, 9, 9, 12, 12, 13, 13)),
                         VX_DUP128(_mm_setr_epi8(2, 2, 3, 3, 6, 6, 7, 7, 10, 10, 11, 11, 14, 14, 15, 15))};
    for (int g = 0; g < 16; g += 2) {
        const vx_i V = VX_LOADI(t + 2 * KT + 4 * KT * (g / 4));
        const vx_i sp = VX(slli_epi16)(VX(srai_epi16)(VX(shuffle_epi8)(V, dup[g % 4 / 2]), 8), 5);
        for (int i = 0; i < n; i++) S2[i] = VX_DPWSSD(S2[i], sp, bcast4(xb[i].bs + g));
    }
}

/* One K-quant tile against n rows: per block the type's S1, S2, then dot_k's float step
 * (k_block_value times dx), KT rows a vector. */
VT_INLINE void kt_k(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t stride, int64_t nb, float *y,
                    int64_t ystride, const int n) {
    vx_f acc[VT_ROWS];
    for (int i = 0; i < n; i++) acc[i] = VX(setzero_ps)();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *t = w + b * KT_BYTES(type);
        const vt_xk *xb = x + b * stride;
        vx_i S1[VT_ROWS], S2[VT_ROWS];
        for (int i = 0; i < n; i++) S1[i] = S2[i] = VXI(setzero)();
        if (type != VT_Q6_K) kt_sums45(type == VT_Q5_K, t, xb, S1, S2, n);
        else kt_sums6(t, xb, S1, S2, n);
        const vx_f d = VX_PH(t);
        for (int i = 0; i < n; i++) {
            const vx_f v = type == VT_Q6_K ? VX(mul_ps)(d, VX(cvtepi32_ps)(VX(sub_epi32)(S1[i], S2[i])))
                                           : VX(sub_ps)(VX(mul_ps)(d, VX(cvtepi32_ps)(S1[i])),
                                                        VX(mul_ps)(VX_PH(t + 2 * KT), VX(cvtepi32_ps)(S2[i])));
            acc[i] = VX(add_ps)(acc[i], VX(mul_ps)(VX(set1_ps)(dx[b * stride + i]), v));
        }
    }
    for (int i = 0; i < n; i++) VX(storeu_ps)(y + i * ystride, acc[i]);
}

static void dot_kt(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t stride, int n, int64_t nb,
                   float *y, int64_t ystride) {
#define CALL(k)                                                                                    \
    (type == VT_Q6_K   ? kt_k(VT_Q6_K, w, x, dx, stride, nb, y, ystride, k)                           \
     : type == VT_Q5_K ? kt_k(VT_Q5_K, w, x, dx, stride, nb, y, ystride, k)                           \
                       : kt_k(VT_Q4_K, w, x, dx, stride, nb, y, ystride, k))
    BY_ROWS8(CALL)
#undef CALL
}
/* acc + (dw*dx)*S, S a row's exact sums (dot_q32's float step, lane by lane). */
static inline vx_f q32_step(vx_f acc, vx_f dw, float dx, vx_i S) {
    return VX(add_ps)(acc, VX(mul_ps)(VX(mul_ps)(dw, VX(set1_ps)(dx)), VX(cvtepi32_ps)(S)));
}

/* With a minimum per block (Q4_1, Q5_1): acc + ((dw*dx)*S + (m*dx)*X), X the activation
 * block's quant sum. */
static inline vx_f q32_step_min(vx_f acc, vx_f dw, vx_f m, const vt_x8 *xb, vx_i S) {
    const vx_f dx = VX(set1_ps)(xb->d), X = VX(set1_ps)((float)xb->sum);
    return VX(add_ps)(acc, VX(add_ps)(VX(mul_ps)(VX(mul_ps)(dw, dx), VX(cvtepi32_ps)(S)), VX(mul_ps)(VX(mul_ps)(m, dx), X)));
}

/* A Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tile against n rows: per block each row's exact S, then
 * dot_q32's float step, KT rows a vector.  VNNI: 8 vpdpbusd of u = w + off (Q4_0/Q5_0 16;
 * Q8_0 128, its sign bit flipped; Q4_1/Q5_1 0: their quants are unsigned) by the row's
 * words, from -off x the block's quant sum.  AVX2: the 4- and 5-bit ones the same with 4
 * words' vpmaddubsw summed as int16, then widened by vpmaddwd (u < 32); Q8_0 as |w| by the
 * word with w's sign (each vpmaddubsw word at most 2 x 128 x 127, widened at once; u = w +
 * 128 would overflow), one word of all rows at a time. */
VT_INLINE void q32t(int type, const uint8_t *w, const vt_x8 *x, int64_t nb, float *y, int64_t ystride, const int n) {
    const vx_i m4 = VX(set1_epi8)(0x0F);
    const int min = vt_has_min(type), head = min ? 4 : 2, five = type == VT_Q5_0 || type == VT_Q5_1;
    const int off = type == VT_Q8_0 ? 128 : min ? 0 : 16;
    vx_f acc[VT_ROWS];
    for (int i = 0; i < n; i++) acc[i] = VX(setzero_ps)();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *t = w + b * KT_BYTES(type);
        prefetch_ahead(t, KT_BYTES(type), KT_AHEAD(n), 1);
        if (KT_NEAR(n)) prefetch_ahead(t, KT_BYTES(type), KT_NEAR(n), 0);
        const vx_f dw = VX_PH(t);
#if !VT_VNNI /* no 512-bit vpsignb */
        if (type == VT_Q8_0) {
            vx_i s[VT_ROWS];
            for (int i = 0; i < n; i++) s[i] = VXI(setzero)();
            for (int k = 0; k < 8; k++) {
                const vx_i v = VX_LOADI(t + 2 * KT + 4 * KT * k), av = VX(abs_epi8)(v);
                for (int i = 0; i < n; i++)
                    s[i] = VX(add_epi32)(s[i], VX(madd_epi16)(VX(maddubs_epi16)(av, VX(sign_epi8)(bcast4(x[i * nb + b].q + 4 * k), v)),
                                                              VX(set1_epi16)(1)));
            }
            for (int i = 0; i < n; i++) acc[i] = q32_step(acc[i], dw, x[i * nb + b].d, s[i]);
            continue;
        }
#endif
        vx_i u[8];
        if (type == VT_Q8_0) {
            for (int k = 0; k < 8; k++) u[k] = VXI(xor)(VX_LOADI(t + 2 * KT + 4 * KT * k), VX(set1_epi8)(-128));
        } else {
            for (int k = 0; k < 4; k++) {
                const vx_i v = VX_LOADI(t + (head + (five ? 4 : 0)) * KT + 4 * KT * k);
                u[k] = VXI(and)(v, m4), u[k + 4] = VXI(and)(VX(srli_epi16)(v, 4), m4);
            }
            for (int k = 0; k < 8; k++)
                u[k] = five ? add16_where(u[k], t + head * KT + KT / 2 * k)
                       : min ? u[k] : VX(add_epi8)(u[k], VX(set1_epi8)(8));
        }
        for (int i = 0; i < n; i++) {
            const vt_x8 *xb = x + i * nb + b;
            vx_i s = VX(set1_epi32)(-off * xb->sum), a = VXI(setzero)();
            for (int k = 0; k < 8; k++) {
                if (VT_VNNI) {
                    s = dp_bcast(s, u[k], xb->q + 4 * k);
                    continue;
                }
                a = dp_bcast(a, u[k], xb->q + 4 * k);
                if ((k + 1) % KT_RUN(5) == 0) s = VX(add_epi32)(s, VX(madd_epi16)(a, VX(set1_epi16)(1))), a = VXI(setzero)();
            }
            acc[i] = min ? q32_step_min(acc[i], dw, VX_PH(t + 2 * KT), xb, s) : q32_step(acc[i], dw, xb->d, s);
        }
    }
    for (int i = 0; i < n; i++) VX(storeu_ps)(y + i * ystride, acc[i]);
}

static void dot_q32t(int type, const uint8_t *w, const vt_x8 *x, int n, int64_t nb, float *y, int64_t ystride) {
#define CALL(k)                                                                  \
    (type == VT_Q8_0   ? q32t(VT_Q8_0, w, x, nb, y, ystride, k)                  \
     : type == VT_Q5_0 ? q32t(VT_Q5_0, w, x, nb, y, ystride, k)                  \
     : type == VT_Q5_1 ? q32t(VT_Q5_1, w, x, nb, y, ystride, k)                  \
     : type == VT_Q4_1 ? q32t(VT_Q4_1, w, x, nb, y, ystride, k)                  \
                       : q32t(VT_Q4_0, w, x, nb, y, ystride, k))
    BY_ROWS8(CALL)
#undef CALL
}
#define KT_TABLE 1u << VT_Q4_K | 1u << VT_Q5_K | 1u << VT_Q6_K | 1u << VT_Q4_0 | 1u << VT_Q4_1 | 1u << VT_Q5_0 | 1u << VT_Q5_1 | 1u << VT_Q8_0, KT, pack_kt, \
                 dot_kt, dot_q32t

/* 8 weights as fp32: F32, F16 (F16C, exact) or BF16 (a shift, exact). */
static inline __m256 load8(int type, const void *w, int64_t i) {
    if (type == VT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    if (type == VT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))), 16));
    return _mm256_loadu_ps((const float *)w + i);
}

/* acc[k] + acc[k+4], then +2, +1: the portable halving of 8 partial sums. */
static inline float reduce8(__m256 s) {
    const __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    const __m128 u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)));
}

/* acc[k] + acc[k+8], then +4, +2, +1: the portable tree. */
static inline float reduce16(__m256 lo, __m256 hi) { return reduce8(_mm256_add_ps(lo, hi)); }

VT_INLINE void dot_f_n(int type, const void *w, const float *const *x, int64_t n, float *out, const int rows) {
    __m256 lo[4], hi[4];
    for (int r = 0; r < rows; r++) lo[r] = hi[r] = _mm256_setzero_ps();
    const int64_t full = n / 16 * 16;
    for (int64_t i = 0; i < full; i += 16) {
        const __m256 w0 = load8(type, w, i), w1 = load8(type, w, i + 8);
        for (int r = 0; r < rows; r++) {
            lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(w0, _mm256_loadu_ps(x[r] + i)));
            hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(w1, _mm256_loadu_ps(x[r] + i + 8)));
        }
    }
    if (full < n) { /* the tail, zero-padded to 16 as in the portable recipe */
        float wt[16] = {0}, xt[16];
        for (int64_t k = full; k < n; k++) wt[k - full] = vt_load_f(type, w, k);
        const __m256 w0 = _mm256_loadu_ps(wt), w1 = _mm256_loadu_ps(wt + 8);
        for (int r = 0; r < rows; r++) {
            memset(xt, 0, sizeof xt);
            memcpy(xt, x[r] + full, (size_t)(n - full) * sizeof(float));
            lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(w0, _mm256_loadu_ps(xt)));
            hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(w1, _mm256_loadu_ps(xt + 8)));
        }
    }
    for (int r = 0; r < rows; r++) out[r] = reduce16(lo[r], hi[r]);
}

/* The entry points: n (1..VT_ROWS) picks a copy of the loop specialized for that many
 * rows; the Q8_0 and float loops take 4 rows at a time. */
/* Each 32-element type's kernel with its type a constant. */
#define BY_TYPE32(CALL)                                  \
    switch (type) {                                      \
    case VT_Q8_0: CALL(VT_Q8_0); break;                  \
    case VT_Q4_0: CALL(VT_Q4_0); break;                  \
    case VT_Q4_1: CALL(VT_Q4_1); break;                  \
    case VT_Q5_0: CALL(VT_Q5_0); break;                  \
    default: CALL(VT_Q5_1);                              \
    }

#define BY_ROWS4(call)                                    \
    for (int r0 = 0; r0 < n; r0 += 4) switch (n - r0) {   \
        case 1: call(1); break;                           \
        case 2: call(2); break;                           \
        case 3: call(3); break;                           \
        default: call(4); }

static void dot_k(int type, const uint8_t *w, const vt_xk *x, const float *dx, int64_t stride, int n, int64_t nb,
                  float *out) {
#define CALL(k)                                                                  \
    (type == VT_Q4_K   ? dot_k_n(VT_Q4_K, w, x, dx, stride, nb, out, k)           \
     : type == VT_Q5_K ? dot_k_n(VT_Q5_K, w, x, dx, stride, nb, out, k)           \
                       : dot_k_n(VT_Q6_K, w, x, dx, stride, nb, out, k))
    BY_ROWS8(CALL)
#undef CALL
}

static void dot_q32(int type, const uint8_t *w, const vt_x8 *const *x, int n, int64_t nb, float *out) {
#define ONE(T) dot_q32_n(T, w, x + r0, nb, out + r0, K)
#define CALL(k)                 \
    {                           \
        enum { K = k };         \
        BY_TYPE32(ONE)          \
    }
    BY_ROWS4(CALL)
#undef CALL
#undef ONE
}

static void dot_q32_stream(int type, const uint8_t *w, const vt_x8 *x, int nx, int64_t nb, int64_t nrows, float *y,
                           int64_t ystride) {
    const int64_t row_bytes = nb * vt_block_bytes(type);
    int64_t r = 0;
#define ROWS(T) q32_rows(T, w + r * row_bytes, x, nb, y + r, ystride, R, N)
#define RUN(r_, n_)                     \
    {                                   \
        enum { R = r_, N = n_ };        \
        BY_TYPE32(ROWS)                 \
    }
    if (nx == 1) {
        for (; r + 4 <= nrows; r += 4) RUN(4, 1)
        for (; r < nrows; r++) RUN(1, 1)
    } else {
        for (; r + 4 <= nrows; r += 4) RUN(4, 2)
        for (; r < nrows; r++) RUN(1, 2)
    }
#undef RUN
#undef ROWS
}

static void dot_f(int type, const void *w, const float *const *x, int n, int64_t cols, float *out) {
#define CALL(k) dot_f_n(type, w, x + r0, cols, out + r0, k)
    BY_ROWS4(CALL)
#undef CALL
}

/* wsum: nh heads' VW vectors of outputs held in registers over all positions (AVX512: up
 * to 6 heads x 4 x 16, else x 2 x 8): a Qwen2 row's 6 heads of a kv head in one pass over
 * the values instead of 4 + 2 (a pass of 2 heads ran 100 multiply-adds a ns against 128 for
 * 4 or 6; the model's value sums 9-13% faster at 2000 cached tokens, harness, Zen 5). */
#if VT_VNNI == 2
#define VW 4
#define VF 16
#define vec __m512
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vadd _mm512_add_ps
#define vmul _mm512_mul_ps
#define vbcast _mm512_set1_ps
#else
#define VW 2
#define VF 8
#define vec __m256
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vadd _mm256_add_ps
#define vmul _mm256_mul_ps
#define vbcast _mm256_set1_ps
#endif
VT_INLINE void wsum_n(float *const *o, const float *e, int64_t es, const float *v, int64_t vs, int64_t np, int64_t d0,
                      const int nh, const int vw) {
    vec acc[VT_ATT_HEADS][VW];
    for (int i = 0; i < nh; i++)
        for (int c = 0; c < vw; c++) acc[i][c] = vload(o[i] + d0 + VF * c);
    for (int64_t p = 0; p < np; p++) {
        vec vv[VW];
        for (int c = 0; c < vw; c++) vv[c] = vload(v + p * vs + d0 + VF * c);
        for (int i = 0; i < nh; i++) {
            const vec ev = vbcast(e[i * es + p]);
            for (int c = 0; c < vw; c++) acc[i][c] = vadd(acc[i][c], vmul(ev, vv[c]));
        }
    }
    for (int i = 0; i < nh; i++)
        for (int c = 0; c < vw; c++) vstore(o[i] + d0 + VF * c, acc[i][c]);
}

static void wsum(float *const *o, int nh, const float *e, int64_t es, const float *v, int64_t vs, int64_t np,
                 int64_t n) {
    int64_t d0 = 0;
#define HEADS(vw)                                                                  \
    switch (nh) {                                                                  \
    case 1: wsum_n(o, e, es, v, vs, np, d0, 1, vw); break;                         \
    case 2: wsum_n(o, e, es, v, vs, np, d0, 2, vw); break;                         \
    case 3: wsum_n(o, e, es, v, vs, np, d0, 3, vw); break;                         \
    case 4: wsum_n(o, e, es, v, vs, np, d0, 4, vw); break;                         \
    case 5: wsum_n(o, e, es, v, vs, np, d0, 5, vw); break;                         \
    default: wsum_n(o, e, es, v, vs, np, d0, 6, vw);                               \
    }
    for (; d0 + VF * VW <= n; d0 += VF * VW) HEADS(VW)
    for (; d0 + VF <= n; d0 += VF) HEADS(1) /* head sizes that are not a multiple of VF x VW */
#undef HEADS
    for (int64_t p = 0; p < np; p++) /* the tail, as the portable loop */
        for (int i = 0; i < nh; i++)
            for (int64_t d = d0; d < n; d++) o[i][d] = o[i][d] + e[i * es + p] * v[p * vs + d];
}
#undef VW
#undef VF
#undef vec
#undef vload
#undef vstore
#undef vadd
#undef vmul
#undef vbcast

static inline vx_f expv(vx_f x) {
    static const float c[6] = VT_EXP_C;
    const vx_f magic = VX(set1_ps)(12582912.0f);
    x = VX(max_ps)(x, VX(set1_ps)(VT_EXP_LO)); /* x > lo ? x : lo */
    x = VX(min_ps)(x, VX(set1_ps)(VT_EXP_HI)); /* x < hi ? x : hi */
    const vx_f n = VX(sub_ps)(VX(add_ps)(VX(mul_ps)(x, VX(set1_ps)(1.44269504088896341f)), magic), magic);
    const vx_f r = VX(sub_ps)(VX(sub_ps)(x, VX(mul_ps)(n, VX(set1_ps)(0.693359375f))),
                              VX(mul_ps)(n, VX(set1_ps)(-2.12194440e-4f)));
    vx_f p = VX(set1_ps)(c[0]);
    for (int i = 1; i < 6; i++) p = VX(add_ps)(VX(mul_ps)(p, r), VX(set1_ps)(c[i]));
    p = VX(add_ps)(VX(add_ps)(VX(mul_ps)(p, VX(mul_ps)(r, r)), r), VX(set1_ps)(1.0f));
    return VX(mul_ps)(p, VX_AS_PS(VX(slli_epi32)(VX(add_epi32)(VX(cvttps_epi32)(n), VX(set1_epi32)(127)), 23)));
}

static void exp_n(const float *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + VX_LANES <= n; i += VX_LANES) VX(storeu_ps)(y + i, expv(VX(loadu_ps)(x + i)));
    for (; i < n; i++) y[i] = vt_exp(x[i]);
}

/* vt_sum8's 8 running sums plus the 8 (or 16) weights w of elements p.. (p a multiple of 8). */
static inline __m256 sum8_add(__m256 s, vx_f w) {
#if VT_VNNI == 2
    return _mm256_add_ps(_mm256_add_ps(s, _mm512_castps512_ps256(w)), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1)));
#else
    return _mm256_add_ps(s, w);
#endif
}

/* The portable softmax in two passes instead of four: the scaled scores and their max (the
 * lanes' maxima, then theirs: exact), then each weight, stored and added to its running
 * sum; model.c's scalar passes took ~2.5 cycles an element (Zen 5). */
static float softmax(float *e, int64_t n, float scale) {
    const vx_f sv = VX(set1_ps)(scale);
    vx_f mv = VX(set1_ps)(-INFINITY);
    int64_t p = 0;
    for (; p + VX_LANES <= n; p += VX_LANES) {
        const vx_f v = VX(mul_ps)(VX(loadu_ps)(e + p), sv);
        VX(storeu_ps)(e + p, v);
        mv = VX(max_ps)(v, mv); /* v > m ? v : m */
    }
    float m[VX_LANES], mx = -INFINITY;
    VX(storeu_ps)(m, mv);
    for (; p < n; p++) {
        const float v = e[p] * scale;
        e[p] = v, mx = v > mx ? v : mx;
    }
    for (int k = 0; k < VX_LANES; k++) mx = m[k] > mx ? m[k] : mx;
    const vx_f mxv = VX(set1_ps)(mx);
    __m256 s8 = _mm256_setzero_ps();
    for (p = 0; p + VX_LANES <= n; p += VX_LANES) {
        const vx_f w = expv(VX(sub_ps)(VX(loadu_ps)(e + p), mxv));
        VX(storeu_ps)(e + p, w);
        s8 = sum8_add(s8, w);
    }
    float s[8];
    _mm256_storeu_ps(s, s8);
    for (; p < n; p++) { /* up to 15 left (AVX512): element p still into sum p % 8 */
        e[p] = vt_exp(e[p] - mx);
        s[p % 8] = s[p % 8] + e[p];
    }
    return vt_fold8(s);
}

/* The portable swiglu lane by lane. */
static void swiglu(float *g, const float *u, int64_t n) {
    const vx_f one = VX(set1_ps)(1.0f), sign = VX(set1_ps)(-0.0f);
    int64_t i = 0;
    for (; i + VX_LANES <= n; i += VX_LANES) {
        const vx_f x = VX(loadu_ps)(g + i);
        const vx_f e = expv(VX_XOR(x, sign));
        VX(storeu_ps)(g + i, VX(mul_ps)(VX(div_ps)(x, VX(add_ps)(one, e)), VX(loadu_ps)(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + vt_exp(-g[i])) * u[i];
}

/* Key vectors scores_kv takes at once: AVX512's 32 registers hold 4 x VT_ATT_Q sums (a
 * chunk's 64 keys in one pass: each query's dim broadcast once for 4 vectors, not 2; Zen 4,
 * one thread, 6 queries: 37-38 -> 42-44 multiply-adds a ns over 512 keys, 36 -> 40-43 over
 * 8192), the 256-bit paths' 16 hold 2 x VT_ATT_Q. */
#define SCORE_VECS (VT_VNNI == 2 ? 4 : 2)

/* Attention's scores (vt.h's recipe): nv (1..SCORE_VECS) vectors of keys against nq
 * (1..VT_ATT_Q) queries, each key vector's dim d loaded once for all of them and each
 * query's dim d broadcast once for all nv; a lane is one key's sum, never reduced across
 * lanes (the former kernel, dot_f's lane sums then a halving tree per key and query, spent
 * more on the tree than on the products: 2.7 ns a query and key at 3 queries, against 1.1
 * here at 6, Zen 5).  Key p0 + j of vector v's lane j ends in s[i*ss + p0 + v*VX_LANES + j]
 * while that is below np. */
VT_INLINE void scores_kv(const float *kb, int64_t p0, int64_t np, const float *const *q, const int nq, int64_t n,
                         float *s, int64_t ss, const int nv) {
    const float *k[SCORE_VECS];
    vx_f a[SCORE_VECS][VT_ATT_Q];
    for (int v = 0; v < nv; v++) {
        const int64_t p = p0 + v * VX_LANES;
        k[v] = kb + vt_key_at(p, 0, n);
        for (int i = 0; i < nq; i++) a[v][i] = VX(setzero_ps)();
    }
    for (int64_t d = 0; d < n; d++) {
        vx_f kv[SCORE_VECS];
        for (int v = 0; v < nv; v++) kv[v] = VX(loadu_ps)(k[v] + d * VT_KEYS);
        for (int i = 0; i < nq; i++) {
            const vx_f qd = VX(set1_ps)(q[i][d]);
            for (int v = 0; v < nv; v++) a[v][i] = VX(add_ps)(a[v][i], VX(mul_ps)(qd, kv[v]));
        }
    }
    for (int v = 0; v < nv; v++) {
        const int64_t p = p0 + v * VX_LANES;
        for (int i = 0; i < nq; i++) {
            if (p + VX_LANES <= np) {
                VX(storeu_ps)(s + i * ss + p, a[v][i]);
                continue;
            }
            float t[VX_LANES];
            VX(storeu_ps)(t, a[v][i]);
            for (int j = 0; p + j < np; j++) s[i * ss + p + j] = t[j];
        }
    }
}

static void scores(const float *kb, int64_t np, const float *const *q, int nq, int64_t n, float *s, int64_t ss) {
    for (int64_t p0 = 0; p0 < np; p0 += SCORE_VECS * VX_LANES) {
        const int64_t left = (np - p0 + VX_LANES - 1) / VX_LANES;
        const int nv = left < SCORE_VECS ? (int)left : SCORE_VECS;
#define CALL(v)                                                  \
    switch (nq) {                                                \
    case 1: scores_kv(kb, p0, np, q, 1, n, s, ss, v); break;     \
    case 2: scores_kv(kb, p0, np, q, 2, n, s, ss, v); break;     \
    case 3: scores_kv(kb, p0, np, q, 3, n, s, ss, v); break;     \
    case 4: scores_kv(kb, p0, np, q, 4, n, s, ss, v); break;     \
    case 5: scores_kv(kb, p0, np, q, 5, n, s, ss, v); break;     \
    default: scores_kv(kb, p0, np, q, 6, n, s, ss, v);           \
    }
        switch (nv) {
        case 1: CALL(1) break;
#if SCORE_VECS > 2
        case 3: CALL(3) break;
        case 4: CALL(4) break;
#endif
        default: CALL(2)
        }
#undef CALL
    }
}
#undef SCORE_VECS
#undef VX
#undef VX_AS_PS
#undef VX_XOR

/* kern_portable.c's quantize_block on n (a multiple of 32) values, 8 lanes at a time, its
 * comparisons kept (NaN: never the max, clamped to -127): the quants in element order to q,
 * the scale to d; returns 0 for a block of zeros (or with an inf), its quants then 0. */
static int quantize_block8(const float *x, int n, int8_t *q, float *d) {
    const __m256 sign = _mm256_set1_ps(-0.0f), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f),
                 magic = _mm256_set1_ps(12582912.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m); /* a > m ? a : m */
    float t[8], amax = 0.0f;
    _mm256_storeu_ps(t, m);
    for (int i = 0; i < 8; i++) amax = t[i] > amax ? t[i] : amax;
    if (!(amax > 0.0f) || isinf(amax)) {
        memset(q, 0, (size_t)n);
        *d = 0.0f;
        return 0;
    }
    const __m256 id = _mm256_set1_ps(127.0f / amax);
    for (int i = 0; i < n; i += 32) {
        __m256i v8[4];
        for (int k = 0; k < 4; k++) {
            const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * k), id);
            const __m256 c = _mm256_blendv_ps(lo, _mm256_blendv_ps(hi, v, _mm256_cmp_ps(v, hi, _CMP_LE_OQ)),
                                              _mm256_cmp_ps(v, lo, _CMP_GE_OQ));
            v8[k] = _mm256_cvttps_epi32(_mm256_sub_ps(_mm256_add_ps(c, magic), magic));
        }
        /* packs interleave the 128-bit lanes: dwords 0 4 1 5 2 6 3 7 back in order */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v8[0], v8[1]), _mm256_packs_epi32(v8[2], v8[3]));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
    *d = amax / 127.0f;
    return 1;
}

/* vt_quantize_8_0: each 32-block by quantize_block8, its sums of 4 by two multiplies by 1. */
static void quantize_8(const float *x, int64_t cols, vt_x8 *out) {
    for (int64_t b = 0; b < cols / QK8_0; b++) {
        vt_x8 *o = out + b;
        quantize_block8(x + b * QK8_0, QK8_0, o->q, &o->d);
        const __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), LOAD256(o->q)), _mm256_set1_epi16(1));
        STORE256(o->ns16, _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s4, 4)));
        const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
        const __m128i h2 = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4E));
        o->sum = _mm_cvtsi128_si32(_mm_add_epi32(h2, _mm_shuffle_epi32(h2, 0xB1)));
    }
}

/* vt_quantize_k: quantize_block8 on 256 values, then the quants in order_k's order and the
 * same group sums. */
static void quantize_k(const float *x, int64_t cols, vt_xk *out, float *d, int64_t stride) {
    for (int64_t b = 0; b < cols / QK_K; b++) {
        vt_xk *o = out + b * stride;
        int8_t q8[QK_K] __attribute__((aligned(32))); /* in element order */
        if (!quantize_block8(x + b * QK_K, QK_K, q8, d + b * stride)) {
            memset(o, 0, sizeof *o);
            continue;
        }
        order_k((const uint8_t *)q8, (uint8_t *)o->q); /* as the kernels unpack the weights */
        for (int k = 0; k < QK_K / 16; k++) {
            const __m128i s = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(q8 + 16 * k))),
                          s2 = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(q8 + 16 * k + 8)));
            const __m128i w = _mm_madd_epi16(_mm_add_epi16(s, s2), _mm_set1_epi16(1));
            const __m128i u = _mm_add_epi32(w, _mm_shuffle_epi32(w, 0x4E));
            o->bs[k] = (int16_t)_mm_cvtsi128_si32(_mm_add_epi32(u, _mm_shuffle_epi32(u, 0xB1)));
        }
        vt_sums32(o);
    }
}

const vt_kernels VT_KERNELS = {dot_k, dot_k_rows1, dot_q32, dot_q32_stream, dot_f, scores, wsum, exp_n, softmax, swiglu, quantize_k, quantize_8, pack_k, KT_TABLE};
