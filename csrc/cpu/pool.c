/*
 * pool.c: the CPU kernels' worker threads (see pool.h for the design).
 */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "cpu/pool.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#endif
#define MV_HAVE_PTHREADS 1
#endif

#define MAX_THREADS 256

static int cpu_count(void)
{
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
#ifdef MV_HAVE_PTHREADS
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n > 0)
        return n > MAX_THREADS ? MAX_THREADS : (int)n;
#endif
    return 1;
}

/* The default before set_num_threads: the CPUs this process may run on (the package applies
   OMP_NUM_THREADS through set_num_threads at import: minivllm/__init__.py). */
static int default_threads(void) { return cpu_count(); }

#ifdef MV_HAVE_PTHREADS

/* How long a worker polls for the next job after finishing one, and the caller for its workers,
   before sleeping on a condition variable. Waking a sleeping thread costs 10-50 us on a VM (the
   idle vCPU must be woken), more than a decode-size call; polling briefly (with pause) keeps
   back-to-back calls cheap (the gap between two calls from Python is a few us), and the bound
   keeps an idle process from taking a core from anything else for longer than this: at 50 us a
   worker polling on the core where NumPy's BLAS runs its next matmul held that matmul up
   (Qwen3-0.6B QKV and a 256^2 matmul alternating: 1.36x the sum, 1.14-1.17x at 5-10 us;
   dev/logs/cpu-pool-spin-amd-epyc-2c-2026-11-24.log). */
#define SPIN_NS 10000

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t work; /* workers wait here for a new generation */
    pthread_cond_t done; /* the caller waits here for the workers that joined its job */
    /* job serial << 16 | the job's thread count (the caller's included): one atomic word, so a
       worker never pairs one job's serial with another's count */
    atomic_uint_fast64_t generation;
    mv_pool_fn fn;
    void *ctx;
    /* job serial << 32 | CLOSED | workers that joined the job: a worker joins only while the
       serial is its job's and CLOSED is clear; the caller sets CLOSED when its own part is done */
    atomic_uint_fast64_t admission;
    atomic_int finished; /* workers of the current job done with it */
    int sleepers;       /* workers waiting on `work` (under lock) */
    int started;        /* worker threads alive (indices 1..started) */
} pool_state;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Polls until *value != old (returns 1) or SPIN_NS pass (returns 0). */
static int spin_until_changed_u64(atomic_uint_fast64_t *value, uint64_t old)
{
    const int64_t deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(value, memory_order_acquire) != old)
                return 1;
            cpu_relax();
        }
        if (now_ns() > deadline)
            return 0;
    }
}

static int spin_until_count(atomic_int *value, int count)
{
    const int64_t deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (atomic_load_explicit(value, memory_order_acquire) >= count)
                return 1;
            cpu_relax();
        }
        if (now_ns() > deadline)
            return 0;
    }
}

/* One call at a time holds `busy`; the atfork handlers hold it across fork, so no job is in
   flight while the child is made. */
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t config_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pool_state *pool;       /* guarded by busy */
static int configured_threads; /* guarded by config_lock; 0 = not yet read */

typedef struct {
    pool_state *pool;
    int index;
    uint64_t seen; /* the generation when it was made: jobs after it are its own */
} worker_arg;

#define ADMISSION_CLOSED ((uint64_t)1 << 31)
#define ADMISSION_COUNT (ADMISSION_CLOSED - 1)

/* Joins job `serial` unless it has moved on or its caller has closed it. A worker the OS has
   not run since the job was posted (a busy machine: NumPy's BLAS threads poll for tens of ms
   after each matmul) then leaves the whole job to the threads that are running, instead of the
   caller waiting for it to be scheduled; the jobs' work is claimed, not split by index. */
static int join_job(pool_state *p, uint64_t serial)
{
    uint64_t adm = atomic_load(&p->admission);
    for (;;) {
        if ((adm >> 32) != (serial & 0xffffffffu) || (adm & ADMISSION_CLOSED))
            return 0;
        if (atomic_compare_exchange_weak(&p->admission, &adm, adm + 1))
            return 1;
    }
}

static void *worker_main(void *arg_ptr)
{
    worker_arg arg = *(worker_arg *)arg_ptr;
    free(arg_ptr);
    pool_state *p = arg.pool;
    uint64_t seen = arg.seen;
    for (;;) {
        if (!spin_until_changed_u64(&p->generation, seen)) {
            pthread_mutex_lock(&p->lock);
            p->sleepers++;
            while (atomic_load(&p->generation) == seen)
                pthread_cond_wait(&p->work, &p->lock);
            p->sleepers--;
            pthread_mutex_unlock(&p->lock);
        }
        /* The job's fields were written before the generation was bumped (release/acquire),
           and are not rewritten until this worker has counted itself finished. */
        seen = atomic_load(&p->generation);
        const int count = (int)(seen & 0xffffu);
        if (arg.index >= count || !join_job(p, seen >> 16))
            continue;
        p->fn(p->ctx, arg.index, count);
        const int done = atomic_fetch_add(&p->finished, 1) + 1;
        const uint64_t adm = atomic_load(&p->admission);
        if ((adm & ADMISSION_CLOSED) && done == (int)(adm & ADMISSION_COUNT)) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
    return NULL;
}

static void atfork_prepare(void) { pthread_mutex_lock(&busy); }
static void atfork_parent(void) { pthread_mutex_unlock(&busy); }
static void atfork_child(void)
{
    /* The workers did not survive the fork. The old state is left allocated (its mutex and
       condition variables may hold state of threads that no longer exist; a few hundred bytes),
       and the child starts a fresh pool on its first parallel call. */
    pool = NULL;
    pthread_mutex_unlock(&busy);
    pthread_mutex_init(&config_lock, NULL);
}

static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Called with busy held: a pool with at least want - 1 workers, or fewer if threads cannot be
   made (then the job runs on what there is). */
static pool_state *pool_with_workers(int want)
{
    if (pool == NULL) {
        pool_state *p = calloc(1, sizeof *p);
        if (p == NULL)
            return NULL;
        if (pthread_mutex_init(&p->lock, NULL) != 0 || pthread_cond_init(&p->work, NULL) != 0 ||
            pthread_cond_init(&p->done, NULL) != 0) {
            free(p);
            return NULL;
        }
        pool = p;
    }
    pool_state *p = pool;
    while (p->started < want - 1) {
        worker_arg *arg = malloc(sizeof *arg);
        if (arg == NULL)
            break;
        arg->pool = p;
        arg->index = p->started + 1;
        arg->seen = atomic_load(&p->generation); /* only changed under busy, which we hold */
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t thread;
        const int rc = pthread_create(&thread, &attr, worker_main, arg);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            free(arg);
            break;
        }
        p->started++;
    }
    return p;
}

void mv_pool_run(mv_pool_fn fn, void *ctx, int want)
{
    if (want > MAX_THREADS)
        want = MAX_THREADS;
    if (want <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_once(&once, register_atfork);
    if (pthread_mutex_trylock(&busy) != 0) {
        /* Another thread's call holds the pool: run this one on the calling thread. */
        fn(ctx, 0, 1);
        return;
    }
    pool_state *p = pool_with_workers(want);
    const int count = p == NULL ? 1 : (p->started + 1 < want ? p->started + 1 : want);
    if (count <= 1) {
        pthread_mutex_unlock(&busy);
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->finished, 0);
    pthread_mutex_lock(&p->lock);
    const uint64_t serial = (atomic_load(&p->generation) >> 16) + 1;
    atomic_store(&p->admission, (serial & 0xffffffffu) << 32);
    atomic_store_explicit(&p->generation, serial << 16 | (uint64_t)count, memory_order_release);
    if (p->sleepers > 0)
        pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);

    fn(ctx, 0, count);

    /* no worker joins after this; wait for those that did */
    const int joined = (int)(atomic_fetch_or(&p->admission, ADMISSION_CLOSED) & ADMISSION_COUNT);
    if (!spin_until_count(&p->finished, joined)) {
        pthread_mutex_lock(&p->lock);
        while (atomic_load(&p->finished) < joined)
            pthread_cond_wait(&p->done, &p->lock);
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_unlock(&busy);
}

int mv_pool_threads(void)
{
    pthread_mutex_lock(&config_lock);
    if (configured_threads == 0)
        configured_threads = default_threads();
    const int n = configured_threads;
    pthread_mutex_unlock(&config_lock);
    return n;
}

int mv_pool_set_threads(int n)
{
    if (n < 1)
        n = 1;
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    pthread_mutex_lock(&config_lock);
    const int previous = configured_threads == 0 ? default_threads() : configured_threads;
    configured_threads = n;
    pthread_mutex_unlock(&config_lock);
    return previous;
}

#else /* no pthreads: everything runs on the calling thread */

static int configured_threads;

void mv_pool_run(mv_pool_fn fn, void *ctx, int want)
{
    (void)want;
    fn(ctx, 0, 1);
}

int mv_pool_threads(void) { return configured_threads ? configured_threads : default_threads(); }

int mv_pool_set_threads(int n)
{
    const int previous = mv_pool_threads();
    configured_threads = n < 1 ? 1 : n;
    return previous;
}

#endif
