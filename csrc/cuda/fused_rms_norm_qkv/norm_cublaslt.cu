/*
 * norm_cublaslt.cu: the norm + GEMM paths of qkv = rms_norm(x (+ residual)) . W^T, for every call
 * the one-kernel paths do not take (mostly M above a few dozen): the rms_norm kernel writes y into
 * stream-ordered scratch (and residual_out), then a GEMM multiplies y by W^T:
 * - cuBLASLt: in one GEMM straight into q, k and v where they are adjacent columns of one [M, N]
 *   buffer; otherwise one GEMM into scratch and a split copy where the product is small, one GEMM
 *   each where it is large. At large M the op is a GEMM, and cuBLASLt's tuned Hopper GEMMs are
 *   what a hand-written kernel would have to beat.
 * - our tensor-core GEMM (tile_gemm.cu), where libcublasLt cannot be loaded.
 *
 * cuBLASLt is loaded with dlopen on first use rather than linked: the module must import on
 * machines without the CUDA libraries (CPU users), and PyTorch/CuPy processes already have a
 * libcublasLt loaded, which dlopen by soname finds. Search order (mv_open_cuda_library): the
 * soname, then the building toolkit's library folder and /usr/local/cuda. A process whose only
 * cuBLASLt is another major version (a CUDA 12 PyTorch wheel beside this CUDA 13 build, say)
 * finds none and takes the tile GEMM.
 *
 * Scratch (y, plus cuBLASLt workspace) is allocated stream-ordered on the caller's stream (from a
 * pool of our own that keeps its memory; under capture, the default pool, so graphs get memory
 * nodes) and released with cudaFreeAsync after the GEMMs: no synchronization. This is the one
 * path that allocates on the device.
 */
#include <cstdint>
#include <cstring>
#include <mutex>

#include <cublasLt.h>

#include "cuda/common.cuh"
#include "cuda/fused_rms_norm_qkv/paths.h"

#define MINIVLLM_STR2(x) #x
#define MINIVLLM_STR(x) MINIVLLM_STR2(x)

namespace {

struct CublasLt {
    bool loaded = false;
    cublasLtHandle_t handle = nullptr;
    decltype(&cublasLtCreate) create;
    decltype(&cublasLtMatmulDescCreate) desc_create;
    decltype(&cublasLtMatmulDescDestroy) desc_destroy;
    decltype(&cublasLtMatmulDescSetAttribute) desc_set;
    decltype(&cublasLtMatrixLayoutCreate) layout_create;
    decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
    decltype(&cublasLtMatmulPreferenceCreate) pref_create;
    decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
    decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
    decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
    decltype(&cublasLtMatmul) matmul;
};

void *open_cublaslt() { return mv_open_cuda_library("libcublasLt.so." MINIVLLM_STR(CUBLAS_VER_MAJOR)); }

/* Loaded once per process (thread-safe static initialization); never unloaded. */
const CublasLt &cublaslt() {
    static const CublasLt lt = [] {
        CublasLt l;
        void *lib = open_cublaslt();
        if (!lib) return l;
        bool ok = mv_bind(lib, "cublasLtCreate", l.create) &&
                  mv_bind(lib, "cublasLtMatmulDescCreate", l.desc_create) &&
                  mv_bind(lib, "cublasLtMatmulDescDestroy", l.desc_destroy) &&
                  mv_bind(lib, "cublasLtMatmulDescSetAttribute", l.desc_set) &&
                  mv_bind(lib, "cublasLtMatrixLayoutCreate", l.layout_create) &&
                  mv_bind(lib, "cublasLtMatrixLayoutDestroy", l.layout_destroy) &&
                  mv_bind(lib, "cublasLtMatmulPreferenceCreate", l.pref_create) &&
                  mv_bind(lib, "cublasLtMatmulPreferenceDestroy", l.pref_destroy) &&
                  mv_bind(lib, "cublasLtMatmulPreferenceSetAttribute", l.pref_set) &&
                  mv_bind(lib, "cublasLtMatmulAlgoGetHeuristic", l.heuristic) &&
                  mv_bind(lib, "cublasLtMatmul", l.matmul);
        if (ok && l.create(&l.handle) == CUBLAS_STATUS_SUCCESS) l.loaded = true;
        return l;
    }();
    return lt;
}

constexpr size_t kWorkspaceBytes = 32u << 20; /* what cuBLAS asks for on Hopper */
/* Separate q, k, v outputs: one GEMM into scratch and a split copy up to this product size (where
   three GEMMs' launches cost more than the copy), one GEMM per output beyond it (docs/design.md). */
constexpr int64_t kSplitMaxBytes = 16ll << 20;

/* The heuristic query costs tens of microseconds; cache its answer per problem. */
struct AlgoKey {
    int dtype, trans_a;
    int64_t m, n, k, lda, ldb, ldd;
    unsigned align_a, align_b, align_d;
    bool operator==(const AlgoKey &o) const { return memcmp(this, &o, sizeof(*this)) == 0; }
};
struct AlgoEntry {
    AlgoKey key;
    cublasLtMatmulAlgo_t algo;
};
constexpr int kAlgoCacheSize = 64;
std::mutex algo_mutex;
AlgoEntry algo_cache[kAlgoCacheSize];
int algo_cache_used = 0, algo_cache_next = 0;

unsigned pointer_alignment(const void *p) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(p);
    unsigned a = 256;
    while (a > 1 && v % a) a >>= 1;
    return a;
}

/* D[n_out x M] (column-major view of the row-major M x n_out output, leading dim ldd) =
   op(A) . Y^T: A is the slice of W for these outputs. */
cublasStatus_t gemm(const CublasLt &lt, mv_dtype dtype, const void *a, bool trans_a, int64_t lda, const void *y,
                    int64_t rows, int64_t hidden, void *d, int64_t n_out, int64_t ldd, void *workspace,
                    cudaStream_t stream) {
    const cudaDataType_t type = dtype == MV_FLOAT32 ? CUDA_R_32F : dtype == MV_FLOAT16 ? CUDA_R_16F : CUDA_R_16BF;
    AlgoKey key;
    memset(&key, 0, sizeof(key));
    key.dtype = dtype;
    key.trans_a = trans_a;
    key.m = n_out;
    key.n = rows;
    key.k = hidden;
    key.lda = lda;
    key.ldb = hidden;
    key.ldd = ldd;
    key.align_a = pointer_alignment(a);
    key.align_b = pointer_alignment(y);
    key.align_d = pointer_alignment(d);

    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    cublasStatus_t st = lt.desc_create(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = CUBLAS_OP_N;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = lt.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a));
    if (st == CUBLAS_STATUS_SUCCESS)
        st = lt.desc_set(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b));
    /* A as stored: trans_a ? [hidden x n_out] : [n_out x hidden], column-major. */
    if (st == CUBLAS_STATUS_SUCCESS)
        st = lt.layout_create(&la, type, trans_a ? hidden : n_out, trans_a ? n_out : hidden, lda);
    if (st == CUBLAS_STATUS_SUCCESS) st = lt.layout_create(&lb, type, hidden, rows, hidden);
    if (st == CUBLAS_STATUS_SUCCESS) st = lt.layout_create(&ld, type, n_out, rows, ldd);

    cublasLtMatmulAlgo_t algo;
    bool found = false;
    if (st == CUBLAS_STATUS_SUCCESS) {
        std::lock_guard<std::mutex> lock(algo_mutex);
        for (int i = 0; i < algo_cache_used; ++i)
            if (algo_cache[i].key == key) {
                algo = algo_cache[i].algo;
                found = true;
                break;
            }
    }
    if (st == CUBLAS_STATUS_SUCCESS && !found) {
        st = lt.pref_create(&pref);
        const uint64_t ws = kWorkspaceBytes;
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt.pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
        const uint32_t aligns[3] = {key.align_a, key.align_b, key.align_d};
        const cublasLtMatmulPreferenceAttributes_t align_attrs[3] = {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 3 && st == CUBLAS_STATUS_SUCCESS; ++i)
            st = lt.pref_set(pref, align_attrs[i], &aligns[i], sizeof(aligns[i]));
        /* Split-K only with partial sums kept in float32: the in-place and output-type schemes
           add the partials in the output dtype, which for bf16 and a long K (H = 70000, six
           outputs) cost about 1% (tests: test_long_hidden_accumulates_in_float32). */
        const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
        if (st == CUBLAS_STATUS_SUCCESS)
            st = lt.pref_set(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reductions, sizeof(reductions));
        cublasLtMatmulHeuristicResult_t result;
        int count = 0;
        if (st == CUBLAS_STATUS_SUCCESS) st = lt.heuristic(lt.handle, desc, la, lb, ld, ld, pref, 1, &result, &count);
        if (st == CUBLAS_STATUS_SUCCESS && count < 1) st = CUBLAS_STATUS_NOT_SUPPORTED;
        if (st == CUBLAS_STATUS_SUCCESS) {
            algo = result.algo;
            std::lock_guard<std::mutex> lock(algo_mutex);
            algo_cache[algo_cache_next] = AlgoEntry{key, algo};
            algo_cache_next = (algo_cache_next + 1) % kAlgoCacheSize;
            if (algo_cache_used < kAlgoCacheSize) ++algo_cache_used;
        }
    }
    if (st == CUBLAS_STATUS_SUCCESS) {
        const float one = 1.0f, zero = 0.0f;
        st = lt.matmul(lt.handle, desc, &one, a, la, y, lb, &zero, d, ld, d, ld, &algo, workspace, kWorkspaceBytes,
                       stream);
    }
    if (pref) lt.pref_destroy(pref);
    if (ld) lt.layout_destroy(ld);
    if (lb) lt.layout_destroy(lb);
    if (la) lt.layout_destroy(la);
    if (desc) lt.desc_destroy(desc);
    return st;
}

/* Scratch comes from a memory pool of our own per device that keeps what it reserved: from the
   device's default pool, whose release threshold is 0, every eager call would map its 32 MiB
   afresh after each synchronization (a Llama-3-8B prefill layer then took ~1.5 ms instead of
   ~0.1 ms). Under stream capture the default pool is used, as graphs make their own memory nodes. */
std::mutex pool_mutex;
cudaMemPool_t pools[mv_max_cached_devices];
bool pool_tried[mv_max_cached_devices];

cudaMemPool_t scratch_pool(int device) {
    if (device < 0 || device >= mv_max_cached_devices) return nullptr;
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (!pool_tried[device]) {
        pool_tried[device] = true;
        cudaMemPoolProps props;
        memset(&props, 0, sizeof(props));
        props.allocType = cudaMemAllocationTypePinned;
        props.location.type = cudaMemLocationTypeDevice;
        props.location.id = device;
        cudaMemPool_t pool = nullptr;
        if (cudaMemPoolCreate(&pool, &props) == cudaSuccess) {
            uint64_t keep = UINT64_MAX;
            if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) == cudaSuccess)
                pools[device] = pool;
            else
                cudaMemPoolDestroy(pool);
        }
        (void)cudaGetLastError(); /* a pool we cannot make is not an error: the default pool serves */
    }
    return pools[device];
}

cudaError_t allocate_scratch(void **scratch, size_t bytes, cudaStream_t stream, int device) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t err = cudaStreamIsCapturing(stream, &capture);
    if (err != cudaSuccess) return err;
    cudaMemPool_t pool = capture == cudaStreamCaptureStatusNone ? scratch_pool(device) : nullptr;
    return pool ? cudaMallocFromPoolAsync(scratch, bytes, pool, stream) : cudaMallocAsync(scratch, bytes, stream);
}

/* q, k, v from one contiguous [M, N] product d (row stride N), kVec elements per access (16
   bytes where every row start and output slice is aligned for it, else 1); grid-stride over all
   pieces. The elements are copied, not converted. */
template <typename T, int kVec>
__global__ void split_qkv_kernel(const T *__restrict__ d, mv_qkv_args a) {
    struct alignas(sizeof(T) * kVec) Piece {
        T e[kVec];
    };
    const int64_t cols = a.q_cols + 2 * a.kv_cols;
    const int64_t pieces_per_row = cols / kVec;
    const int64_t pieces = a.in.rows * pieces_per_row;
    for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pieces;
         p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t m = p / pieces_per_row;
        const int64_t n = (p % pieces_per_row) * kVec;
        *reinterpret_cast<Piece *>(mv_qkv_output<T>(a, m, n)) = *reinterpret_cast<const Piece *>(d + m * cols + n);
    }
}

template <typename T>
cudaError_t launch_split(const mv_qkv_args *a, const void *d, cudaStream_t stream, int sms) {
    constexpr int kVec = 16 / sizeof(T);
    const int64_t elem = sizeof(T);
    const bool vec = a->q_cols % kVec == 0 && a->kv_cols % kVec == 0 && mv_aligned16(d, 0, elem) &&
                     mv_aligned16(a->q, a->q_stride, elem) && mv_aligned16(a->k, a->k_stride, elem) &&
                     mv_aligned16(a->v, a->v_stride, elem);
    const int64_t pieces = a->in.rows * ((a->q_cols + 2 * a->kv_cols) / (vec ? kVec : 1));
    constexpr int kThreads = 256;
    const int64_t wanted = (pieces + kThreads - 1) / kThreads;
    const int64_t most = static_cast<int64_t>(sms > 0 ? sms : 1) * 16;
    const unsigned blocks = static_cast<unsigned>(wanted < most ? wanted : most);
    /* No PDL: the copy reads the GEMM's result at its start. */
    return mv_launch(vec ? split_qkv_kernel<T, kVec> : split_qkv_kernel<T, 1>, dim3(blocks), dim3(kThreads), 0,
                     stream, false, static_cast<const T *>(d), *a);
}

int launch_split_any(const mv_qkv_args *a, const void *d, cudaStream_t stream, int sms) {
    MV_DISPATCH_DTYPE(a->in.dtype, T, return (int)launch_split<T>(a, d, stream, sms);)
    return (int)cudaErrorInvalidValue;
}

/* Which GEMM follows the norm kernel. */
struct NormGemmState {
    bool own_gemm; /* our tile GEMM (tile_gemm.cu) instead of cuBLASLt */
};

} // namespace

bool mv_qkv_cublaslt_plan(const mv_qkv_args &, const mv_cuda_device &, mv_qkv_plan *plan) {
    if (!cublaslt().loaded) return false;
    mv_plan_state<NormGemmState>(plan)->own_gemm = false;
    plan->writes_residual = true; /* the norm kernel writes it, in place or not */
    return true;
}

bool mv_qkv_tile_plan(const mv_qkv_args &a, const mv_cuda_device &dev, mv_qkv_plan *plan) {
    if (!mv_qkv_tile_gemm_supported(a, dev)) return false;
    mv_plan_state<NormGemmState>(plan)->own_gemm = true;
    plan->writes_residual = true;
    return true;
}

cudaError_t mv_qkv_norm_gemm_launch(const mv_qkv_args &args, const mv_qkv_plan &plan, const mv_cuda_device &device,
                                    cudaStream_t s) {
    const mv_qkv_args *a = &args;
    const mv_cuda_device *dev = &device;
    const bool own_gemm = mv_plan_state<NormGemmState>(plan).own_gemm;
    const CublasLt &lt = cublaslt();
    const int64_t rows = a->in.rows, hidden = a->in.hidden;
    const int64_t elem = mv_dtype_size(a->in.dtype);
    const int64_t cols = a->q_cols + 2 * a->kv_cols;
    char *q = static_cast<char *>(a->q), *k = static_cast<char *>(a->k), *v = static_cast<char *>(a->v);
    /* q, k, v adjacent in one [M, N] buffer (same row stride): one GEMM for all three. */
    const bool adjacent = a->q_stride == a->k_stride && a->k_stride == a->v_stride && a->q_stride >= cols &&
                          k == q + a->q_cols * elem && (a->kv_cols == 0 || v == k + a->kv_cols * elem);
    /* Otherwise (e.g. k and v written into a cache): one GEMM into scratch and a split copy where
       the product is small, three GEMMs where it is large. */
    const bool split = !own_gemm && !adjacent && a->kv_cols > 0 && rows * cols * elem <= kSplitMaxBytes;
    const size_t workspace_bytes = own_gemm ? 0 : kWorkspaceBytes; /* our GEMM writes q, k, v itself */
    const size_t y_bytes = (static_cast<size_t>(rows * hidden * elem) + 255) / 256 * 256;
    const size_t d_bytes = split ? (static_cast<size_t>(rows * cols * elem) + 255) / 256 * 256 : 0;
    /* Scratch: y, then d (the split case's product), then the workspace, each from a 256-byte
       boundary. */
    void *scratch = nullptr;
    cudaError_t err = allocate_scratch(&scratch, y_bytes + d_bytes + workspace_bytes, s, dev->device);
    if (err != cudaSuccess) return err;
    void *y = scratch;
    void *d = static_cast<char *>(scratch) + y_bytes;
    void *workspace = static_cast<char *>(scratch) + y_bytes + d_bytes;

    mv_rms_norm_args norm = {}; /* rows in one stride (inner_rows 0) */
    norm.in = a->in; /* also writes residual_out when there is a residual (in place allowed) */
    norm.out = y;
    norm.out_stride = hidden;
    const mv_cuda_opts norm_opts = {plan.pdl ? MV_PDL_ON : MV_PDL_OFF, MV_QKV_AUTO, 0};
    err = static_cast<cudaError_t>(mv_rms_norm_cuda(&norm, &norm_opts, s));

    if (err == cudaSuccess && own_gemm) {
        err = mv_qkv_tile_gemm_launch(y, *a, plan.pdl, *dev, s);
    } else if (err == cudaSuccess) {
        const bool trans_a = a->w_stride_k == 1; /* nn.Linear [N, H]: column-major H x N, use op T */
        const int64_t lda = trans_a ? a->w_stride_n : a->w_stride_k;
        const char *w = static_cast<const char *>(a->w);
        const int64_t w_row_step = (trans_a ? a->w_stride_n : 1) * elem; /* bytes per output feature */
        cublasStatus_t st;
        if (adjacent) {
            st = gemm(lt, a->in.dtype, w, trans_a, lda, y, rows, hidden, q, cols, a->q_stride, workspace, s);
        } else if (split) {
            st = gemm(lt, a->in.dtype, w, trans_a, lda, y, rows, hidden, d, cols, cols, workspace, s);
            if (st == CUBLAS_STATUS_SUCCESS) err = static_cast<cudaError_t>(launch_split_any(a, d, s, dev->sms));
        } else {
            st = gemm(lt, a->in.dtype, w, trans_a, lda, y, rows, hidden, q, a->q_cols, a->q_stride, workspace, s);
            if (st == CUBLAS_STATUS_SUCCESS && a->kv_cols > 0)
                st = gemm(lt, a->in.dtype, w + a->q_cols * w_row_step, trans_a, lda, y, rows, hidden, k, a->kv_cols,
                          a->k_stride, workspace, s);
            if (st == CUBLAS_STATUS_SUCCESS && a->kv_cols > 0)
                st = gemm(lt, a->in.dtype, w + (a->q_cols + a->kv_cols) * w_row_step, trans_a, lda, y, rows, hidden,
                          v, a->kv_cols, a->v_stride, workspace, s);
        }
        if (st != CUBLAS_STATUS_SUCCESS && err == cudaSuccess) err = cudaErrorUnknown;
    }
    const cudaError_t free_err = cudaFreeAsync(scratch, s);
    return err != cudaSuccess ? err : free_err;
}
