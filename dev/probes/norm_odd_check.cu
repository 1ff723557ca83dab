// Norm kernels outside Python, for compute-sanitizer without a rebuild of the extension:
// rows of odd H off the 16-byte grid (one element in), and of even H on it, M = 600 (the staged kernel; float32 rows
// above 4096 elements rms_norm_virtual_kernel) against the
// same rows one at a time (8 of them; the in-place kernel): bits equal, and against a float64
// reference.
// nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -arch=sm_90 dev/probes/norm_odd_check.cu
//      csrc/cuda/rms_norm.cu csrc/cuda/device.cu -o /tmp/norm_odd_check
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "minivllm_kernels.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__);       \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static float to_f(const void *p, int bf16) {
    if (!bf16) return *(const float *)p;
    uint32_t u = (uint32_t)(*(const uint16_t *)p) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static void from_f(void *p, float f, int bf16) {
    if (!bf16) { *(float *)p = f; return; }
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    *(uint16_t *)p = (uint16_t)(u >> 16);
}

static int run(int bf16, int residual, int64_t H, int64_t off, int64_t M = 600, int pdl = MV_PDL_DEFAULT) {
    const size_t es = bf16 ? 2 : 4;
    const size_t n = off + M * H;
    std::vector<unsigned char> hx(n * es), hr(n * es), hw(H * es);
    srand(1 + bf16 + 2 * residual);
    for (size_t i = 0; i < n; ++i) {
        from_f(&hx[i * es], (float)rand() / RAND_MAX * 2 - 1, bf16);
        from_f(&hr[i * es], (float)rand() / RAND_MAX * 2 - 1, bf16);
    }
    for (int64_t i = 0; i < H; ++i) from_f(&hw[i * es], 0.5f + (float)rand() / RAND_MAX, bf16);
    void *x, *r, *w, *o1, *o2, *ro1, *ro2; /* exact sizes: memcheck sees a read past the end */
    CHECK(cudaMalloc(&x, n * es));
    CHECK(cudaMalloc(&r, n * es));
    CHECK(cudaMalloc(&w, H * es));
    CHECK(cudaMalloc(&o1, n * es));
    CHECK(cudaMalloc(&o2, n * es));
    CHECK(cudaMalloc(&ro1, n * es));
    CHECK(cudaMalloc(&ro2, n * es));
    CHECK(cudaMemcpy(x, hx.data(), n * es, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(r, hr.data(), n * es, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(w, hw.data(), H * es, cudaMemcpyHostToDevice));
    mv_cuda_opts opts = {pdl, MV_QKV_AUTO};
    auto args = [&](int64_t row0, int64_t rows, void *out, void *ro) {
        mv_rms_norm_args a;
        memset(&a, 0, sizeof a);
        a.in.dtype = bf16 ? MV_BFLOAT16 : MV_FLOAT32;
        a.in.rows = rows;
        a.in.hidden = H;
        a.in.eps = 1e-6f;
        a.in.x = (const char *)x + (off + row0 * H) * es;
        a.in.x_stride = H;
        if (residual) {
            a.in.residual = (const char *)r + (off + row0 * H) * es;
            a.in.residual_stride = H;
            a.in.residual_out = (char *)ro + (off + row0 * H) * es;
            a.in.residual_out_stride = H;
        }
        a.in.norm_weight = w;
        a.out = (char *)out + (off + row0 * H) * es;
        a.out_stride = H;
        return a;
    };
    mv_rms_norm_args all = args(0, M, o1, ro1);
    CHECK((cudaError_t)mv_rms_norm_cuda(&all, &opts, 0));
    const int64_t some[] = {0, 1, 2, 3, 7, M / 2, M - 2, M - 1}; /* every alignment of a row start */
    for (int64_t row : some) {
        mv_rms_norm_args one = args(row, 1, o2, ro2);
        CHECK((cudaError_t)mv_rms_norm_cuda(&one, &opts, 0));
    }
    CHECK(cudaDeviceSynchronize());
    std::vector<unsigned char> a1(n * es), a2(n * es), r1(n * es), r2(n * es);
    CHECK(cudaMemcpy(a1.data(), o1, n * es, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(a2.data(), o2, n * es, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(r1.data(), ro1, n * es, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(r2.data(), ro2, n * es, cudaMemcpyDeviceToHost));
    int64_t diff = 0;
    double worst = 0;
    for (int64_t row = 0; row < M; ++row) {
        double ss = 0;
        std::vector<double> s(H);
        for (int64_t j = 0; j < H; ++j) {
            const size_t at = (off + row * H + j) * es;
            float v = to_f(&hx[at], bf16);
            if (residual) {
                unsigned char t[4];
                from_f(t, v + to_f(&hr[at], bf16), bf16);
                v = to_f(t, bf16);
                if (memcmp(&r1[at], t, es) != 0) ++diff; /* the new residual: exact */
            }
            s[j] = v;
            ss += (double)v * v;
        }
        const double rr = 1 / sqrt(ss / H + 1e-6);
        for (int64_t j = 0; j < H; ++j) {
            const size_t at = (off + row * H + j) * es;
            bool alone = false;
            for (int64_t k : some) alone = alone || k == row;
            if (alone && (memcmp(&a1[at], &a2[at], es) != 0 || (residual && memcmp(&r1[at], &r2[at], es) != 0))) ++diff;
            const double ref = to_f(&hw[j * es], bf16) * s[j] * rr;
            const double e = fabs(to_f(&a1[at], bf16) - ref) / (fabs(ref) + 1e-3);
            if (e > worst) worst = e;
        }
    }
    printf("%s %s%s H = %lld, offset %lld: %lld elements differ (%lld rows at once against 8 of them one at a time, and the new "
           "residual against x + r rounded), worst relative error %.3g\n",
           bf16 ? "bf16" : "fp32", residual ? "fused add" : "rms_norm", pdl == MV_PDL_OFF ? " (PDL off)" : "", (long long)H, (long long)off, (long long)diff,
           (long long)M, worst);
    cudaFree(x); cudaFree(r); cudaFree(w); cudaFree(o1); cudaFree(o2); cudaFree(ro1); cudaFree(ro2);
    return diff != 0 || worst > (bf16 ? 1e-2 : 1e-5);
}

int main(int argc, char **argv) {
    /* argument "long": only the calls past one wave of the staged kernel's blocks (racecheck) */
    const bool long_only = argc > 1 && strcmp(argv[1], "long") == 0;
    int bad = 0;
    /* G (threads per row in place) of 2, 8, 16, 32, 128, 256 and 416 (13 warps) in single
       elements; 16-byte vectors above 4096, G = 416 at 12345 in bf16 (the 5 rows a block
       of 600 rows once took, one warp each, do not fit its shared memory with the residual);
       rows of more than 2048 such vectors, 8 a thread: float32 12345, bf16 24577; rows of more
       than 4096 (the fused add's long-row kernel): float32 24577, bf16 32769 */
    const int64_t hs[] = {9, 33, 121, 201, 999, 2047, 3327, 4095, 5119, 5125, 8191, 12345, 24577, 32769};
    for (int64_t h : hs)
        for (int bf16 = 0; bf16 < 2 && !long_only; ++bf16)
            for (int residual = 0; residual < 2; ++residual) bad += run(bf16, residual, h, 1);
    /* rows on the 16-byte grid: single rows take the short-call kernels (one vector a thread up to
       256 vectors, two up to 512: 2048, 3000 and 4096), 600 rows the general one; G of 2, 32,
       96, 128 and 160; rows of 8 vectors a thread at 16384 (float32) and 20000 (bf16); the
       fused add's long-row kernel at 20000 (float32) and 40000; rms_norm's 16 vectors a thread
       (rms_norm_wider_kernel) at float32 20000 and 32768 (its longest), bf16 40000 and 65536 */
    const int64_t even[] = {64, 1024, 2048, 3000, 4096, 5120, 8192, 16384, 20000, 32768, 40000, 65536};
    for (int64_t h : even)
        for (int bf16 = 0; bf16 < 2 && !long_only; ++bf16)
            for (int residual = 0; residual < 2; ++residual) bad += run(bf16, residual, h, 0);
    /* without PDL: the fused add's 600 rows take the lanes kernels past one wave (lanes_for_rows) */
    for (int64_t h : even)
        for (int bf16 = 0; bf16 < 2 && !long_only; ++bf16) bad += run(bf16, 1, h, 0, 600, MV_PDL_OFF);
    /* calls of many waves of blocks: G = 16 in single elements, and rows of 16-byte virtual
       vectors through shared memory (R = 128 real threads for G = 320 and 512); without PDL the
       fused add's rows of 16-byte vectors in the lanes kernels (one vector a thread: 1024; two:
       4096) */
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        bad += run(bf16, 1, 1024, 0, 5000, MV_PDL_OFF);
        bad += run(bf16, 1, 4096, 0, 1500, MV_PDL_OFF);
    }
    const int64_t long_calls[][2] = {{121, 36000}, {5119, 2000}, {5125, 2000}, {8191, 1200}};
    for (const auto &c : long_calls)
        for (int bf16 = 0; bf16 < 2; ++bf16)
            for (int residual = 0; residual < 2; ++residual) bad += run(bf16, residual, c[0], 1, c[1]);
    printf("norm_odd_check: %s\n", bad ? "FAILED" : "ok");
    return bad != 0;
}
