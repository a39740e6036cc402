/* A persistent thread pool.  Between jobs the workers spin for a while (a forward issues
 * hundreds of short jobs back to back, and a sleeping thread takes tens of microseconds or
 * a scheduler tick to wake), then sleep on a condition variable.  Jobs split output rows,
 * never a reduction: the thread count changes who computes an output, not how. */
#include <pthread.h>
#include <stdlib.h>

#include "vt.h"

#define SPIN 20000 /* pause iterations before sleeping: about a millisecond */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

struct vt_pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu, run_mu; /* run_mu: one job at a time, whatever calls in */
    pthread_cond_t start, done;
    vt_task fn;
    void *ctx;
    unsigned gen; /* bumped (under mu) per job; read atomically by spinning workers */
    int pending, quit;
};

typedef struct {
    vt_pool *p;
    int ith;
} worker_arg;

static void *worker(void *varg) {
    worker_arg a = *(worker_arg *)varg;
    free(varg);
    vt_pool *p = a.p;
    unsigned seen = 0;
    for (;;) {
        for (int i = 0; i < SPIN && __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen; i++) cpu_relax();
        pthread_mutex_lock(&p->mu);
        while (p->gen == seen && !p->quit) pthread_cond_wait(&p->start, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->gen;
        vt_task fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->mu);
        fn(ctx, a.ith, p->n);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
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
    pthread_cond_init(&p->done, NULL);
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
    p->quit = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; p->th && i < p->n; i++) pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p);
}

VT_API int vt_pool_threads(const vt_pool *p) { return p->n; }

void vt_pool_run(vt_pool *p, vt_task fn, void *ctx, int64_t work) {
    if (work < VT_POOL_MIN_WORK) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->run_mu);
    if (p->n > 1) {
        pthread_mutex_lock(&p->mu);
        p->fn = fn;
        p->ctx = ctx;
        __atomic_store_n(&p->pending, p->n - 1, __ATOMIC_RELAXED);
        __atomic_store_n(&p->gen, p->gen + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&p->start);
        pthread_mutex_unlock(&p->mu);
    }
    fn(ctx, 0, p->n);
    if (p->n > 1) {
        for (int i = 0; i < SPIN && __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE); i++) cpu_relax();
        pthread_mutex_lock(&p->mu);
        while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE)) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->run_mu);
}
