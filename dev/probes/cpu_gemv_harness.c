// cpu_gemv_harness.c: the CPU QKV kernel of several builds side by side in C, no Python (dev/probes/cpu_gemv_harness_build.sh links
// them): usage: ./h H N M threads calls_per_round rounds [dtype 0/1/2]; W at a 2 MiB boundary and a copy WOFF (default 16) bytes past a line, each variant timed on both in interleaved rounds (medians)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include "minivllm_kernels.h"
#include "cpu/pool.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef int (*fn_t)(const mv_qkv_args *);
#define X(n) int mv_fused_rms_norm_qkv_cpu_##n(const mv_qkv_args *);
VARIANTS
#undef X
#define X(n) {#n, mv_fused_rms_norm_qkv_cpu_##n},
static struct { const char *name; fn_t fn; } vs[] = { VARIANTS };
static int cmpd(const void *a, const void *b){ double x=*(double*)a, y=*(double*)b; return x<y?-1:x>y; }
int main(int argc, char **argv){
  int H = atoi(argv[1]), N = atoi(argv[2]), M = atoi(argv[3]), thr = atoi(argv[4]), calls = atoi(argv[5]), rounds = atoi(argv[6]);
  int dt = argc > 7 ? atoi(argv[7]) : MV_FLOAT32; size_t es = dt == MV_FLOAT32 ? 4 : 2;
  mv_pool_set_threads(thr);
  int nv = sizeof vs / sizeof vs[0];
  size_t wb = ((size_t)N*H*es + (2<<20) - 1) & ~(size_t)((2<<20)-1); char *W = aligned_alloc(2<<20, wb); if (getenv("HUGE")) madvise(W, wb, MADV_HUGEPAGE); float *x = malloc((size_t)M*H*4), *g = malloc(H*4), *out = malloc((size_t)M*N*4);
  for (size_t i = 0; i < (size_t)N*H*es/2; i++) ((uint16_t*)W)[i] = 0x3c00 ^ (i & 0x3ff);
  for (int i = 0; i < M*H; i++) x[i] = 1; for (int i = 0; i < H; i++) g[i] = 1;
  if (dt != MV_FLOAT32) { for (int i=0;i<M*H;i++) ((uint16_t*)x)[i]=0x3c00; for (int i=0;i<H;i++) ((uint16_t*)g)[i]=0x3c00; }
  mv_qkv_args a; memset(&a, 0, sizeof a);
  a.in.dtype = dt; a.in.rows = M; a.in.hidden = H; a.in.eps = 1e-6f; a.in.x = x; a.in.x_stride = H; a.in.norm_weight = g;
  int woff = getenv("WOFF") ? atoi(getenv("WOFF")) : 16; char *W2 = aligned_alloc(2<<20, wb + 4096); memcpy(W2 + woff, W, (size_t)N*H*es); a.w = W; a.w_stride_n = H; a.w_stride_k = 1; a.q_cols = N/2; a.kv_cols = N/4;
  a.q = out; a.q_stride = N/2; a.k = (char*)out + (size_t)M*N/2*es; a.k_stride = N/4; a.v = (char*)out + (size_t)M*3*N/4*es; a.v_stride = N/4;
  { FILE *f = fopen("/proc/self/smaps_rollup", "r"); char line[256]; while (fgets(line, sizeof line, f)) if (!strncmp(line, "AnonHuge", 8)) fputs(line, stdout); fclose(f); }
  double *t = calloc((size_t)nv * 2 * rounds, sizeof(double));
  const void *ws[2] = {W, W2 + woff};
  for (int v = 0; v < nv; v++) for (int r = 0; r < calls; r++) vs[v].fn(&a);
  for (int r = 0; r < rounds; r++) for (int o = 0; o < 2; o++) for (int v = 0; v < nv; v++) {
    a.w = ws[o];
    double t0 = now(); for (int c = 0; c < calls; c++) vs[v].fn(&a); t[(v*2+o)*rounds + r] = (now() - t0) / calls; }
  for (int o = 0; o < 2; o++) for (int v = 0; v < nv; v++) { double *tv = t + (v*2+o)*rounds; qsort(tv, rounds, sizeof(double), cmpd);
    printf("off %2d %-10s median %8.2f us  (q1 %8.2f, q3 %8.2f)  %6.1f GB/s\n", o ? woff : 0, vs[v].name, tv[rounds/2]*1e6, tv[rounds/4]*1e6, tv[3*rounds/4]*1e6, (double)N*H*es/tv[rounds/2]/1e9); }
}
