/*
 * pool.h: the CPU kernels' own worker threads (pool.c), in place of OpenMP.
 *
 * Why not OpenMP: GNU OpenMP is not fork-safe (a child of a process that used it hangs in its
 * first parallel region) and its idle threads spin (OMP_WAIT_POLICY), starving NumPy's BLAS on
 * a small machine. This pool's workers sleep on a condition variable between calls (no spinning
 * at all), a pthread_atfork handler gives the child of a fork a fresh, empty pool (its workers
 * are started again on its first parallel call), and one call runs at a time: a call that finds
 * the pool busy (another Python thread, the GIL being released) runs on its own thread instead.
 *
 * Thread count: OMP_NUM_THREADS when it is set to a positive number at the first call (the
 * variable users already set for NumPy's BLAS and PyTorch), else the number of CPUs this process
 * may run on; mv_pool_set_threads (minivllm.set_num_threads) overrides it.
 */
#ifndef MINIVLLM_CPU_POOL_H
#define MINIVLLM_CPU_POOL_H

#include <stdint.h>

/* fn(ctx, index, count) runs once for each index in [0, count). */
typedef void (*mv_pool_fn)(void *ctx, int index, int count);

/* Runs fn on up to `want` threads (the caller's included), returning when all are done; the
   count actually used is passed to every fn call. want <= 1 runs fn(ctx, 0, 1) on the caller.
   A worker that has not started its call by the time the caller's fn(ctx, 0, count) returns is
   left out (not waited for): fn must claim its work (any one call may end up doing all of it),
   never split it by index. */
void mv_pool_run(mv_pool_fn fn, void *ctx, int want);

/* The configured thread count (>= 1). */
int mv_pool_threads(void);
/* Sets it (n >= 1; larger than the CPU count is allowed). Returns the previous value. */
int mv_pool_set_threads(int n);

#endif /* MINIVLLM_CPU_POOL_H */
