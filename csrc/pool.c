/* A persistent thread pool that hands out a job's items in chunks.  A job is items
 * 0..n-1; whoever is free claims the next chunk (one atomic add), the caller included, so
 * a thread that the scheduler has taken away (this runs on shared machines) delays no one:
 * the others take its share, and a worker that wakes after the caller has claimed the last
 * chunk does not join at all.  Between jobs the workers spin for a while (a forward issues
 * a few hundred short jobs back to back, and a sleeping thread takes tens of microseconds
 * or a scheduler tick to wake), then sleep on a condition variable.  Items are outputs,
 * never parts of a reduction: who computes an output never changes its bits. */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "vt.h"

#define SPIN 20000 /* pause iterations before sleeping: about a millisecond */
#define OPEN 0x40000000 /* state: the job takes new workers; the low bits count those in it */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

struct vt_pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu, run_mu; /* run_mu: one job at a time, whatever calls in */
    pthread_cond_t start;
    /* the job: written by the caller while no worker is in it (state closed, count 0) */
    vt_task fn;
    void *ctx;
    int64_t items, chunk;
    int64_t next;   /* the next unclaimed item (atomic) */
    unsigned gen;   /* bumped per job (atomic); workers wait for it to change */
    int state;      /* OPEN | workers in the job (atomic) */
    int sleepers;   /* workers asleep or about to be (atomic) */
    int quit;
};

typedef struct {
    vt_pool *p;
    int ith;
} worker_arg;

/* Claim and run chunks until none is left. */
static void drain(vt_pool *p, vt_task fn, void *ctx, int ith) {
    const int64_t items = p->items, chunk = p->chunk;
    for (;;) {
        const int64_t i0 = __atomic_fetch_add(&p->next, chunk, __ATOMIC_RELAXED);
        if (i0 >= items) return;
        fn(ctx, i0, i0 + chunk < items ? i0 + chunk : items, ith);
    }
}

static void *worker(void *varg) {
    worker_arg a = *(worker_arg *)varg;
    free(varg);
    vt_pool *p = a.p;
    unsigned seen = 0;
    for (;;) {
        for (int i = 0; i < SPIN && __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen; i++) cpu_relax();
        if (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen) {
            pthread_mutex_lock(&p->mu);
            __atomic_add_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&p->gen, __ATOMIC_SEQ_CST) == seen && !p->quit) pthread_cond_wait(&p->start, &p->mu);
            __atomic_sub_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&p->mu);
        }
        if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE)) return NULL;
        seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
        /* join the job while it is open (it may already be a later one: harmless) */
        int s = __atomic_load_n(&p->state, __ATOMIC_RELAXED);
        while ((s & OPEN) && !__atomic_compare_exchange_n(&p->state, &s, s + 1, 1, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        }
        if (!(s & OPEN)) continue;
        drain(p, p->fn, p->ctx, a.ith);
        __atomic_sub_fetch(&p->state, 1, __ATOMIC_RELEASE);
    }
}

VT_API vt_pool *vt_pool_new(int nthreads) {
    if (nthreads < 1 || nthreads > 1024) return NULL;
    vt_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_cond_init(&p->start, NULL);
    p->th = calloc((size_t)nthreads, sizeof *p->th);
    for (int i = 1; p->th && i < nthreads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (a) *a = (worker_arg){p, i};
        if (!a || pthread_create(&p->th[i], NULL, worker, a)) {
            free(a);
            p->n = i; /* the threads started so far, so free joins exactly those */
            vt_pool_free(p);
            return NULL;
        }
    }
    if (!p->th) {
        vt_pool_free(p);
        return NULL;
    }
    return p;
}

VT_API void vt_pool_free(vt_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->quit, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; p->th && i < p->n; i++) pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    pthread_cond_destroy(&p->start);
    free(p);
}

VT_API int vt_pool_threads(const vt_pool *p) { return p->n; }

void vt_pool_run(vt_pool *p, vt_task fn, void *ctx, int64_t items, int64_t chunk, int64_t work) {
    if (items < 1) return;
    if (chunk < 1) chunk = 1;
    if (work < VT_POOL_MIN_WORK || p->n == 1 || chunk >= items) {
        fn(ctx, 0, items, 0);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    p->fn = fn;
    p->ctx = ctx;
    p->items = items;
    p->chunk = chunk;
    __atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->state, OPEN, __ATOMIC_RELEASE);
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST)) { /* else every worker is spinning: no call */
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->start);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, fn, ctx, 0);
    /* close the job, then wait for the workers in it to finish their last chunks */
    __atomic_fetch_and(&p->state, ~OPEN, __ATOMIC_ACQ_REL);
    for (int i = 0; __atomic_load_n(&p->state, __ATOMIC_ACQUIRE); i++) {
        if (i < SPIN) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&p->run_mu);
}
