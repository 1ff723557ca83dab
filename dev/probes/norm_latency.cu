/*
 * norm_latency.cu: what makes a short rms_norm call slow with PDL off? Times, per call, a CUDA
 * graph of back-to-back calls (each on its own x and out; bf16), of the library's kernel
 * (mv_rms_norm_cuda, PDL off and on) and of a minimal one-row-per-block kernel in variants that
 * add one feature of the library's kernel at a time: griddepcontrol at the start, runtime
 * divisions for the row/lane split, a large parameter struct, fewer threads with more vectors;
 * and one vector a thread, its sums taken through shared memory in the 32x4 layout's tree (mini_emul).
 *
 *   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Icsrc -Idev/probes -DMINIVLLM_HAVE_SM90A \
 *        dev/probes/norm_latency.cu csrc/cuda/rms_norm.cu csrc/cuda/device.cu -o /tmp/norm_latency
 *   /tmp/norm_latency            (or with any argument: 20 calls per graph, for ncu)
 */
#include "probe_common.cuh" /* CHECK, graph_us_per_call */

struct Big {
    long long pad[20];
};

/* One row per group of THREADS threads; VECS 16-byte vectors per thread. */
/* kExtra: 1 = a large block of code that never runs, placed between the loads and the sum (does
   the size of a kernel's code cost a short call?); 2 = the cross-warp shared-memory step even
   for one warp; 4 = __launch_bounds__(512) as the library's kernel */
template <int THREADS, int VECS, bool kWait, bool kDiv, bool kBig, int kExtra = 0>
__global__ void __launch_bounds__((kExtra & 4) ? 512 : THREADS) mini(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *out,
                                                int hidden, long long stride, float eps, int group, Big big) {
    __shared__ float red[32];
    if (kWait) {
        asm volatile("griddepcontrol.wait;\n" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    }
    long long row = blockIdx.x;
    int lane = threadIdx.x;
    if (kDiv) {
        const int g = threadIdx.x / group;
        lane = threadIdx.x % group;
        row = (long long)blockIdx.x * (blockDim.x / group) + g;
    }
    if (kBig && big.pad[7] == 12345) eps += 1.0f;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + row * stride);
    const uint4 *wr = reinterpret_cast<const uint4 *>(w);
    const int nvec = hidden / 8;
    uint4 v[VECS], wv[VECS];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
        const int idx = lane + i * THREADS;
        if (idx < nvec) {
            v[i] = xr[idx];
            wv[i] = wr[idx];
        }
    }
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
        const int idx = lane + i * THREADS;
        if (idx < nvec) {
            const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v[i]);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float f = __bfloat162float(h[j]);
                sum += f * f;
            }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (THREADS > 32 || (kExtra & 2)) {
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
        __syncthreads();
        sum = 0.f;
#pragma unroll
        for (int k = 0; k < THREADS / 32; ++k) sum += red[k];
    }
    const float rrms = rsqrtf(sum / (float)hidden + eps);
    uint4 *orow = reinterpret_cast<uint4 *>(out + row * stride);
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
        const int idx = lane + i * THREADS;
        if (idx < nvec) {
            const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v[i]);
            const __nv_bfloat16 *g = reinterpret_cast<const __nv_bfloat16 *>(&wv[i]);
            uint4 r;
            __nv_bfloat16 *o = reinterpret_cast<__nv_bfloat16 *>(&r);
#pragma unroll
            for (int j = 0; j < 8; ++j) o[j] = __float2bfloat16(__bfloat162float(g[j]) * (__bfloat162float(h[j]) * rrms));
            orow[idx] = r;
        }
    }
}


/* THREADS threads of one 16-byte vector each; each vector's sum of squares is formed alone, then
   the G threads of the narrower layout (G threads of THREADS / G vectors) add vectors t, t + G, ...
   in turn and reduce as the library does (a butterfly over G <= 32, or warp sums in order). Not
   the library's bits: its threads chain the squares of all their vectors in one running sum, so
   it would take per-vector sums there too for the two layouts to agree. */
template <int THREADS, int G>
__global__ void __launch_bounds__(THREADS) mini_emul(const __nv_bfloat16 *x, const __nv_bfloat16 *w, __nv_bfloat16 *out,
                                                     int hidden, long long stride, float eps, int group, Big big) {
    __shared__ float part[THREADS];
    __shared__ float red[32];
    const long long row = blockIdx.x;
    const int t = threadIdx.x;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + row * stride);
    const uint4 *wr = reinterpret_cast<const uint4 *>(w);
    const int nvec = hidden / 8;
    uint4 v = make_uint4(0, 0, 0, 0), wv = v;
    float p = 0.f;
    if (t < nvec) {
        v = xr[t];
        wv = wr[t];
        const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float f = __bfloat162float(h[j]);
            p += f * f;
        }
    }
    part[t] = p;
    __syncthreads();
    if (t < G) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < THREADS / G; ++i) s += part[t + i * G];
        if (G <= 32) {
#pragma unroll
            for (int o = G / 2; o > 0; o >>= 1) s += __shfl_xor_sync(G >= 32 ? 0xffffffffu : (1u << G) - 1, s, o);
            if (t == 0) red[0] = s;
        } else {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if ((t & 31) == 0) red[1 + (t >> 5)] = s;
        }
    }
    __syncthreads();
    float sum;
    if (G <= 32) {
        sum = red[0];
    } else {
        sum = 0.f;
#pragma unroll
        for (int k = 0; k < G / 32; ++k) sum += red[1 + k];
    }
    const float rrms = rsqrtf(sum / (float)hidden + eps);
    if (t < nvec) {
        const __nv_bfloat16 *h = reinterpret_cast<const __nv_bfloat16 *>(&v);
        const __nv_bfloat16 *g = reinterpret_cast<const __nv_bfloat16 *>(&wv);
        uint4 r;
        __nv_bfloat16 *o = reinterpret_cast<__nv_bfloat16 *>(&r);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = __float2bfloat16(__bfloat162float(g[j]) * (__bfloat162float(h[j]) * rrms));
        reinterpret_cast<uint4 *>(out + row * stride)[t] = r;
    }
}

struct Case {
    const char *name;
    int kind; /* 0: library pdl off, 1: library pdl on, 2: mini */
    void (*kernel)(const __nv_bfloat16 *, const __nv_bfloat16 *, __nv_bfloat16 *, int, long long, float, int, Big);
    int threads;
    bool pdl_attr;
};

/* The case's calls on the call sets xs[i] -> outs[i], one per call, as recorded into one graph. */
static void record_case(const Case &c, int rows, int hidden, int calls, std::vector<__nv_bfloat16 *> &xs,
                        std::vector<__nv_bfloat16 *> &outs, __nv_bfloat16 *w, cudaStream_t s) {
    for (int i = 0; i < calls; ++i) {
        if (c.kind < 2) {
            mv_rms_norm_args a = {};
            a.in.dtype = MV_BFLOAT16;
            a.in.rows = rows;
            a.in.hidden = hidden;
            a.in.eps = 1e-6f;
            a.in.x = xs[i];
            a.in.x_stride = hidden;
            a.in.norm_weight = w;
            a.out = outs[i];
            a.out_stride = hidden;
            mv_cuda_opts o = {};
            o.pdl = c.kind == 1 ? MV_PDL_ON : MV_PDL_OFF;
            CHECK((cudaError_t)mv_rms_norm_cuda(&a, &o, s));
        } else {
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = dim3(rows);
            cfg.blockDim = dim3(c.threads);
            cfg.stream = s;
            cudaLaunchAttribute attr[1] = {};
            attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
            attr[0].val.programmaticStreamSerializationAllowed = 1;
            cfg.attrs = attr;
            cfg.numAttrs = c.pdl_attr ? 1 : 0;
            Big big = {};
            CHECK(cudaLaunchKernelEx(&cfg, c.kernel, (const __nv_bfloat16 *)xs[i], (const __nv_bfloat16 *)w, outs[i],
                                     hidden, (long long)hidden, 1e-6f, c.threads, big));
        }
    }
}

int main(int argc, char **argv) {
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    /* "short": fewer calls, for ncu */
    const int calls = argc > 1 ? 20 : 2000;
    const int shapes[][2] = {{1, 1024}, {1, 4096}, {16, 4096}, {16, 1024}};
    for (auto &shape : shapes) {
        const int rows = shape[0], hidden = shape[1];
        std::vector<__nv_bfloat16 *> xs(calls), outs(calls);
        for (int i = 0; i < calls; ++i) {
            CHECK(cudaMalloc(&xs[i], (size_t)rows * hidden * 2));
            CHECK(cudaMalloc(&outs[i], (size_t)rows * hidden * 2));
            CHECK(cudaMemset(xs[i], 0x3f, (size_t)rows * hidden * 2));
        }
        __nv_bfloat16 *w;
        CHECK(cudaMalloc(&w, hidden * 2));
        CHECK(cudaMemset(w, 0x3f, hidden * 2));
        std::vector<Case> cases;
        cases.push_back({"library, PDL off", 0, nullptr, 0, false});
        cases.push_back({"library, PDL on", 1, nullptr, 0, true});
        if (hidden == 4096) {
            cases.push_back({"mini 256x2", 2, mini<256, 2, false, false, false>, 256, false});
            cases.push_back({"mini 256x2 +griddepcontrol", 2, mini<256, 2, true, false, false>, 256, false});
            cases.push_back({"mini 256x2 +div", 2, mini<256, 2, false, true, false>, 256, false});
            cases.push_back({"mini 256x2 +big param", 2, mini<256, 2, false, false, true>, 256, false});
            cases.push_back({"mini 128x4 (the library's layout)", 2, mini<128, 4, false, false, false>, 128, false});
            cases.push_back({"mini 512x1", 2, mini<512, 1, false, false, false>, 512, false});
            cases.push_back({"emul 512x1 in 128x4 order", 2, mini_emul<512, 128>, 512, false});
            cases.push_back({"mini 256x2 +griddepcontrol, PDL on", 2, mini<256, 2, true, false, false>, 256, true});
        } else {
            cases.push_back({"mini 128x1", 2, mini<128, 1, false, false, false>, 128, false});
            cases.push_back({"mini 128x1 +griddepcontrol", 2, mini<128, 1, true, false, false>, 128, false});
            cases.push_back({"mini 128x1 +div", 2, mini<128, 1, false, true, false>, 128, false});
            cases.push_back({"mini 128x1 +big param", 2, mini<128, 1, false, false, true>, 128, false});
            cases.push_back({"mini 32x4 (the library's layout)", 2, mini<32, 4, false, false, false>, 32, false});
            cases.push_back({"emul 128x1 in 32x4 order", 2, mini_emul<128, 32>, 128, false});
            cases.push_back({"mini 32x4 +dead code", 2, mini<32, 4, false, false, false, 1>, 32, false});
            cases.push_back({"mini 32x4 +smem step", 2, mini<32, 4, false, false, false, 2>, 32, false});
            cases.push_back({"mini 32x4 +launch_bounds(512)", 2, mini<32, 4, false, false, false, 4>, 32, false});
            cases.push_back({"mini 32x4 +all three", 2, mini<32, 4, true, true, true, 7>, 32, false});
            cases.push_back({"mini 128x1 +griddepcontrol, PDL on", 2, mini<128, 1, true, false, false>, 128, true});
        }
        for (int rep = 0; rep < 2; ++rep)
            for (auto &c : cases)
                std::printf("M=%-3d H=%-5d %-40s %6.3f us/call\n", rows, hidden, c.name,
                            graph_us_per_call(s, calls, [&](cudaStream_t st) {
                                record_case(c, rows, hidden, calls, xs, outs, w, st);
                            }));
        for (int i = 0; i < calls; ++i) {
            CHECK(cudaFree(xs[i]));
            CHECK(cudaFree(outs[i]));
        }
        CHECK(cudaFree(w));
    }
    return 0;
}
