/*
 * norm_jit.cu: the lanes kernels' norms compiled at run time for the call's H (norm_jit.h); they take
 * every call of 16-byte vectors the lanes kernels would (rms_norm.cu: launch_vec, launch_lanes_jit),
 * and rows of at most 32 vectors at any M, several rows a block (jit_packed_rows).
 *
 * Why: a short call is a chain of dependent latencies from launch to store, and the library's
 * lanes kernels take H, G and the row strides at run time (0.12-0.13 us of the chain:
 * dev/logs/norm-short-calls-compiled-h-nvidia-h200-2026-11-29.log). With them compiled in it takes
 * 0.76-0.96x their time in chains of calls without PDL (0.84-0.92x with), level with or ahead of
 * torch.compile's kernel, which Inductor compiles for the shape (H200 bf16, 1-64 rows of H
 * 896-4096; dev/logs/norm-jit-nvidia-h200-2026-11-29.log, call 10). Its arithmetic and
 * summation order are the lanes kernels' (rms_norm.cu: vector_squares, lanes_row_sum, normalized),
 * so a row has the same bits whichever kernel ran it (batch invariance).
 *
 * NVRTC is loaded with dlopen when first needed (the build does not link it; mv_open_cuda_library's
 * search, as cuBLASLt's). Each form compiles once per context (13-80 ms on an H200 host, the
 * process's first about 0.2-0.4 s more) and its module stays loaded for the process. Loading a
 * module inside a stream capture is allowed (measured under torch.cuda.graph). Any failure leaves
 * the form to the library's own kernels.
 */
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "cuda/norm_jit.h"
#include "minivllm_kernels.h"

namespace {

/* NVRTC's entry points, by dlopen; ok false where the library or an entry point is missing. */
struct Nvrtc {
    bool ok;
    int (*create)(void **, const char *, const char *, int, const char *const *, const char *const *);
    int (*compile)(void *, int, const char *const *);
    int (*cubin_size)(void *, size_t *);
    int (*cubin)(void *, char *);
    int (*destroy)(void **);
};

Nvrtc load_nvrtc() {
    Nvrtc n = {};
    char soname[32];
    (void)snprintf(soname, sizeof soname, "libnvrtc.so.%d", CUDART_VERSION / 1000);
    void *lib = mv_open_cuda_library(soname);
    if (lib == nullptr) return n;
    n.ok = mv_bind(lib, "nvrtcCreateProgram", n.create) && mv_bind(lib, "nvrtcCompileProgram", n.compile) &&
           mv_bind(lib, "nvrtcGetCUBINSize", n.cubin_size) && mv_bind(lib, "nvrtcGetCUBIN", n.cubin) &&
           mv_bind(lib, "nvrtcDestroyProgram", n.destroy);
    return n;
}

const Nvrtc &nvrtc() {
    static const Nvrtc n = load_nvrtc();
    return n;
}

/* The driver's module entry points, through the runtime (minivllm does not link libcuda). */
struct ModuleApi {
    bool ok;
    CUresult (*ctx_current)(CUcontext *);
    CUresult (*load_data)(CUmodule *, const void *);
    CUresult (*get_function)(CUfunction *, CUmodule, const char *);
};

const ModuleApi &module_api() {
    static const ModuleApi api = [] {
        ModuleApi m = {};
        m.ctx_current = reinterpret_cast<CUresult (*)(CUcontext *)>(mv_driver_entry("cuCtxGetCurrent"));
        m.load_data = reinterpret_cast<CUresult (*)(CUmodule *, const void *)>(mv_driver_entry("cuModuleLoadData"));
        m.get_function = reinterpret_cast<CUresult (*)(CUfunction *, CUmodule, const char *)>(
            mv_driver_entry("cuModuleGetFunction"));
        m.ok = m.ctx_current != nullptr && m.load_data != nullptr && m.get_function != nullptr;
        return m;
    }();
    return api;
}

/* The kernel's body: the lanes kernels of rms_norm.cu for one form, H, G and the vector's elements
   as macros (T_KIND 0 float32, 1 fp16, 2 bf16; W32 gamma in float32 beside 16-bit rows). No headers:
   16-bit values move by shifts and cvt instructions. */
const char *const kBody = R"(
typedef unsigned int u32;
#define ELEMS (T_KIND == 0 ? 4 : 8)
#define VECS (H_ / ELEMS)
/* ROWS_ > 1: that many rows a block, P_ lanes each (a power of two, VECS <= P_ <= 32, so a row's
   lanes sit in one warp); else a row a block of whole warps */
#define THREADS (ROWS_ > 1 ? ROWS_ * P_ : (VECS + 31) / 32 * 32)

__device__ __forceinline__ float elem(const u32 *q, int j) {
#if T_KIND == 0
    return __uint_as_float(q[j]);
#elif T_KIND == 2
    return __uint_as_float((j & 1) ? (q[j >> 1] & 0xffff0000u) : (q[j >> 1] << 16));
#else
    const unsigned short h = (unsigned short)((j & 1) ? (q[j >> 1] >> 16) : (q[j >> 1] & 0xffffu));
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

/* v rounded to the rows' type, packed into q (round to nearest even) */
__device__ __forceinline__ void pack(const float *v, u32 *q) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
#if T_KIND == 0
        q[k] = __float_as_uint(v[k]);
#elif T_KIND == 2
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(q[k]) : "f"(v[2 * k + 1]), "f"(v[2 * k]));
#else
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(q[k]) : "f"(v[2 * k + 1]), "f"(v[2 * k]));
#endif
    }
}

__device__ __forceinline__ void load4(const uint4 *p, u32 *q) {
    const uint4 v = *p;
    q[0] = v.x;
    q[1] = v.y;
    q[2] = v.z;
    q[3] = v.w;
}

extern "C" __global__ void __launch_bounds__(THREADS)
norm_jit(const uint4 *x, uint4 *out, const uint4 *weight, const uint4 *residual, uint4 *residual_out, float eps,
         float weight_offset, int x_stride, int out_stride, int residual_stride, int residual_out_stride,
         long long rows) {
    __shared__ float parts[THREADS];
#if G_ > 32
    __shared__ float warp_sums[32];
#endif
#if ROWS_ > 1
    const int base = threadIdx.x & ~(P_ - 1); /* the row's first lane */
    const int u = threadIdx.x & (P_ - 1);     /* the thread's vector in its row */
    const long long row = (long long)blockIdx.x * ROWS_ + threadIdx.x / P_;
    const bool mine = u < VECS && row < rows;
#else
    const int base = 0;
    const int u = threadIdx.x;
    const bool mine = VECS == THREADS || u < VECS;
    const long long row = blockIdx.x;
#endif
#if CONTIGUOUS
    const long long xo = row * VECS, oo = xo;
#if RESIDUAL
    const long long ro = xo, roo = xo;
#endif
#else
    const long long xo = row * x_stride / ELEMS, oo = row * out_stride / ELEMS;
#if RESIDUAL
    const long long ro = row * residual_stride / ELEMS, roo = row * residual_out_stride / ELEMS;
#endif
#endif
#if PDL_
    if (mine) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(x + xo + u));
#if RESIDUAL
        asm volatile("prefetch.global.L2 [%0];" ::"l"(residual + ro + u));
#endif
    }
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
    u32 s[4] = {0u, 0u, 0u, 0u};
#if W32
    u32 w[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
#else
    u32 w[4] = {0u, 0u, 0u, 0u};
#endif
    float part = 0.0f;
    if (mine) {
        load4(x + xo + u, s);
#if W32
        load4(weight + 2 * u, w);
        load4(weight + 2 * u + 1, w + 4);
#else
        load4(weight + u, w);
#endif
#if RESIDUAL
        u32 r[4];
        load4(residual + ro + u, r);
        float sums[ELEMS];
#pragma unroll
        for (int j = 0; j < ELEMS; ++j) sums[j] = elem(s, j) + elem(r, j);
        pack(sums, s);
        residual_out[roo + u] = make_uint4(s[0], s[1], s[2], s[3]);
#endif
        const float v0 = elem(s, 0);
        float p = __fmul_rn(v0, v0);
#pragma unroll
        for (int j = 1; j < ELEMS; ++j) {
            const float v = elem(s, j);
            p = __fmaf_rn(v, v, p);
        }
        part = p;
    }
    parts[base + u] = part;
#if ROWS_ > 1
    __syncwarp();
#else
    __syncthreads();
#endif
    float total = 0.0f;
#if G_ <= 32
    {
        const int lane = u & (G_ - 1);
#pragma unroll
        for (int i = 0; i < 4; ++i)
            if (lane + i * G_ < VECS) total = __fadd_rn(total, parts[base + lane + i * G_]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            if (o < G_) total += __shfl_xor_sync(0xffffffffu, total, o);
    }
#else
    if (u < G_) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i)
            if (u + i * G_ < VECS) acc = __fadd_rn(acc, parts[u + i * G_]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if ((u & 31) == 0) warp_sums[u >> 5] = acc;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < G_ / 32; ++k) total += warp_sums[k];
#endif
    if (!mine) return;
    const float rrms = rsqrtf(total / (float)H_ + eps);
    float normed[ELEMS];
#pragma unroll
    for (int j = 0; j < ELEMS; ++j) {
#if W32
        float g = __uint_as_float(w[j]);
#else
        float g = elem(w, j);
#endif
#if OFFSET
        g = g + weight_offset;
#endif
        normed[j] = g * (elem(s, j) * rrms);
    }
    u32 o[4];
    pack(normed, o);
    out[oo + u] = make_uint4(o[0], o[1], o[2], o[3]);
}
)";

std::string source_of(const mv_norm_jit_form &f) {
    char defines[360];
    const int kind = f.dtype == MV_FLOAT32 ? 0 : f.dtype == MV_FLOAT16 ? 1 : 2;
    (void)snprintf(defines, sizeof defines,
                   "#define T_KIND %d\n#define W32 %d\n#define RESIDUAL %d\n#define OFFSET %d\n#define PDL_ %d\n"
                   "#define CONTIGUOUS %d\n#define H_ %d\n#define G_ %d\n#define ROWS_ %d\n#define P_ %d\n",
                   kind, f.weight_float32 && kind != 0 ? 1 : 0, f.residual ? 1 : 0, f.offset ? 1 : 0, f.pdl ? 1 : 0,
                   f.contiguous ? 1 : 0, f.hidden, f.group, f.rows_per_block > 1 ? f.rows_per_block : 1,
                   f.row_lanes > 0 ? f.row_lanes : 32);
    return std::string(defines) + kBody;
}

/* The module's function for this form, or null where NVRTC or the driver refused it. */
CUfunction compile_and_load(const mv_norm_jit_form &f, const mv_cuda_device &dev) {
    const Nvrtc &n = nvrtc();
    const std::string source = source_of(f);
    void *program = nullptr;
    if (n.create(&program, source.c_str(), "norm_jit.cu", 0, nullptr, nullptr) != 0) return nullptr;
    char arch[40];
    (void)snprintf(arch, sizeof arch, "--gpu-architecture=sm_%d%d", dev.major, dev.minor);
    const char *const options[] = {arch};
    CUfunction function = nullptr;
    size_t size = 0;
    if (n.compile(program, 1, options) == 0 && n.cubin_size(program, &size) == 0 && size > 0) {
        std::string cubin(size, '\0');
        CUmodule module = nullptr;
        if (n.cubin(program, &cubin[0]) == 0 && module_api().load_data(&module, cubin.data()) == CUDA_SUCCESS &&
            module_api().get_function(&function, module, "norm_jit") != CUDA_SUCCESS)
            function = nullptr;
    }
    (void)n.destroy(&program);
    return function;
}

struct Entry {
    CUcontext context;
    mv_norm_jit_form form;
    CUfunction function; /* null: this form failed once, the library's kernels take it */
};
constexpr int kCacheSize = 256; /* forms a process compiles; past it the library's kernels */
Entry cache[kCacheSize];
int cached = 0;
std::mutex cache_mutex;

/* forms are whole ints, zero-initialized by their builder: equal forms have equal bytes */
bool same_form(const mv_norm_jit_form &a, const mv_norm_jit_form &b) { return memcmp(&a, &b, sizeof a) == 0; }

} // namespace

CUfunction mv_norm_jit_function(const mv_norm_jit_form &form, const mv_cuda_device &dev) {
    if (!nvrtc().ok || !module_api().ok) return nullptr;
    CUcontext context = nullptr;
    if (module_api().ctx_current(&context) != CUDA_SUCCESS || context == nullptr) return nullptr;
    /* one lock for lookups and compilations: a thread that finds its form compiling waits for it */
    const std::lock_guard<std::mutex> lock(cache_mutex);
    for (int i = 0; i < cached; ++i)
        if (cache[i].context == context && same_form(cache[i].form, form)) return cache[i].function;
    if (cached == kCacheSize) return nullptr;
    const CUfunction function = compile_and_load(form, dev);
    cache[cached++] = Entry{context, form, function};
    return function;
}
