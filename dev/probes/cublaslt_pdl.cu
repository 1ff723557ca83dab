/*
 * cublaslt_pdl.cu: can cuBLASLt's GEMM start before the norm kernel in front of it has finished?
 *
 * The norm + cuBLASLt path (csrc/fused_rms_norm_qkv_gemm.cu) launches minivllm's rms_norm kernel
 * (with PDL: it lets the next kernel launch early) and then cublasLtMatmul on its output y. The
 * GEMM is launched by cuBLASLt, without our launch attributes, so under stream capture its edge
 * from the norm is an ordinary one: it starts only once the norm has finished and flushed. Yet
 * cuBLASLt's Hopper GEMM kernels (sm90_xmma_gemm_*) execute griddepcontrol.wait (SASS: ACQBULK)
 * before reading their operands, so a programmatic edge would be safe for them. This probe, for a
 * benchmark model at the given M:
 *   - captures, per layer, norm(x_l) -> y (one shared y) then D_l = W_l . y^T (the path's
 *     cuBLASLt query, probe_cublaslt.cuh), and prints the edges of the first layer's nodes
 *     (kernel names by cuFuncGetName, edge type and port);
 *   - captures the same with the edge into the GEMM turned programmatic
 *     (cudaStreamUpdateCaptureDependencies with cudaGraphDependencyTypeProgrammatic from
 *     cudaGraphKernelNodePortProgrammatic), checks every layer's output bit for bit against the
 *     ordinary graph's (outputs NaN-poisoned before; x distinct per layer and y shared, so a GEMM
 *     that read y before the norm finished would read the previous layer's rows), and
 *   - times both as bench_fused_rms_norm_qkv does (graph replay over >= 256 MiB of distinct weights, PROBE_CYCLES
 *     passes, median per call);
 *   for the heuristic's first PROBE_ALGOS (default 1: the path's choice; at most 16) answers.
 * Found on an H200 (cuBLASLt 13.1; dev/logs/cublaslt-pdl-nvidia-h200-2026-11-22.log): the
 * GEMMs it picks there are nvjet_sm90_* kernels, and with the programmatic edge most of them read y
 * before the norm has written it (wrong results), so the path cannot hand them an early start.
 *
 *   nvcc -std=c++17 -O3 --expt-relaxed-constexpr -Icsrc -gencode=arch=compute_90a,code=sm_90a \
 *        dev/probes/cublaslt_pdl.cu csrc/cuda/rms_norm.cu csrc/cuda/device.cu -lcublasLt -lcuda \
 *        -o cublaslt_pdl
 *   ./cublaslt_pdl 4096,32,8,128 32 64 128 256
 *
 * Not part of the library.
 */
#include <cuda.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "probe_cublaslt.cuh"

namespace {

struct Gemm {
    cublasLtHandle_t lt;
    QkvGemmDesc g;
    cublasLtMatmulAlgo_t algo;
    void *workspace;
};

void run_gemm(const Gemm &g, const void *w, const void *y, void *d, cudaStream_t s) {
    const float one = 1.0f, zero = 0.0f;
    CHECK_BLAS(cublasLtMatmul(g.lt, g.g.desc, &one, w, g.g.la, y, g.g.lb, &zero, d, g.g.ld, d, g.g.ld, &g.algo,
                              g.workspace, kPathWorkspaceBytes, s));
}

/* Turn the capture's current dependencies (the norm kernel) into programmatic edges. */
void make_programmatic(cudaStream_t s) {
    cudaStreamCaptureStatus status;
    const cudaGraphNode_t *deps = nullptr;
    const cudaGraphEdgeData *data = nullptr;
    size_t n = 0;
    CHECK(cudaStreamGetCaptureInfo(s, &status, nullptr, nullptr, &deps, &data, &n));
    std::vector<cudaGraphNode_t> nodes(deps, deps + n);
    std::vector<cudaGraphEdgeData> edges(n);
    for (size_t i = 0; i < n; ++i) {
        memset(&edges[i], 0, sizeof(edges[i]));
        cudaGraphNodeType type;
        CHECK(cudaGraphNodeGetType(nodes[i], &type));
        if (type == cudaGraphNodeTypeKernel) {
            edges[i].type = cudaGraphDependencyTypeProgrammatic;
            edges[i].from_port = cudaGraphKernelNodePortProgrammatic;
        }
    }
    CHECK(cudaStreamUpdateCaptureDependencies(s, nodes.data(), edges.data(), n, cudaStreamSetCaptureDependencies));
}

std::string node_name(cudaGraphNode_t node) {
    cudaGraphNodeType type;
    CHECK(cudaGraphNodeGetType(node, &type));
    if (type != cudaGraphNodeTypeKernel) return "node type " + std::to_string(static_cast<int>(type));
    CUDA_KERNEL_NODE_PARAMS p;
    if (cuGraphKernelNodeGetParams(reinterpret_cast<CUgraphNode>(node), &p) != CUDA_SUCCESS) return "kernel ?";
    const char *name = nullptr;
    if (p.func == nullptr || cuFuncGetName(&name, p.func) != CUDA_SUCCESS || name == nullptr) return "kernel ?";
    std::string s(name);
    return s.size() > 110 ? s.substr(0, 110) + "..." : s;
}

/* The GEMM's kernels in a captured layer: every kernel node but the norm's, names joined. */
std::string gemm_kernels(cudaGraph_t graph) {
    size_t n = 0;
    CHECK(cudaGraphGetNodes(graph, nullptr, &n));
    std::vector<cudaGraphNode_t> nodes(n);
    CHECK(cudaGraphGetNodes(graph, nodes.data(), &n));
    std::set<std::string> names;
    for (cudaGraphNode_t node : nodes) {
        const std::string name = node_name(node);
        if (name.find("rms_norm") == std::string::npos) names.insert(name.substr(0, 60));
    }
    std::string joined;
    for (const std::string &s : names) joined += (joined.empty() ? "" : " + ") + s;
    return joined;
}

void print_edges(cudaGraph_t graph) {
    size_t n = 0;
    CHECK(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &n));
    std::vector<cudaGraphNode_t> from(n), to(n);
    std::vector<cudaGraphEdgeData> data(n);
    CHECK(cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &n));
    std::set<std::string> seen;
    for (size_t i = 0; i < n; ++i) {
        const std::string line = node_name(from[i]) + " -> " + node_name(to[i]) + "  [type " +
                                 std::to_string(data[i].type) + ", port " + std::to_string(data[i].from_port) + "]";
        if (seen.insert(line).second) printf("    %s\n", line.c_str());
    }
}

} // namespace

int main(int argc, char **argv) {
    ProbeShape shape;
    if (probe_shape_from_args(argc, argv, &shape) != 0) return 2;
    const ProbeShape *sh = &shape;
    const int cycles = probe_env_int("PROBE_CYCLES", 4);
    const int max_algos = probe_env_int("PROBE_ALGOS", 1);
    CHECK(cudaFree(nullptr));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const int h = sh->h, n = sh->q + 2 * sh->kv;
    const size_t w_bytes = static_cast<size_t>(n) * h * 2;
    const int layers = static_cast<int>((static_cast<size_t>(256) << 20) / w_bytes + 1);
    int max_m = 0;
    for (int i = 2; i < argc; ++i) max_m = std::max(max_m, atoi(argv[i]));
    __nv_bfloat16 *w, *x, *y, *gamma, *out, *ref;
    void *workspace;
    CHECK(cudaMalloc(&w, w_bytes * layers));
    CHECK(cudaMalloc(&x, static_cast<size_t>(max_m) * h * 2 * layers));
    CHECK(cudaMalloc(&y, static_cast<size_t>(max_m) * h * 2));
    CHECK(cudaMalloc(&gamma, static_cast<size_t>(h) * 2));
    CHECK(cudaMalloc(&out, static_cast<size_t>(max_m) * n * 2 * layers));
    CHECK(cudaMalloc(&ref, static_cast<size_t>(max_m) * n * 2 * layers));
    CHECK(cudaMalloc(&workspace, kPathWorkspaceBytes));
    cublasLtHandle_t lt;
    CHECK_BLAS(cublasLtCreate(&lt));
    fill<<<1024, 256, 0, stream>>>(w, static_cast<int64_t>(w_bytes / 2) * layers, 1, 0.05f, 0.0f);
    fill<<<1024, 256, 0, stream>>>(x, static_cast<int64_t>(max_m) * h * layers, 2, 1.0f, 0.0f);
    fill<<<64, 256, 0, stream>>>(gamma, h, 3, 0.5f, 1.0f);
    CHECK(cudaGetLastError());
    printf("# %s, cuBLASLt %zu, %s, bf16, %d layers of %.1f MiB, %d passes per graph\n", prop.name,
           cublasLtGetVersion(), sh->name, layers, w_bytes / 1048576.0, cycles);
    printf("   M  # ordinary  programmatic   check   differ  GEMM kernels (algorithm # of the heuristic's answers)\n");

    for (int i = 2; i < argc; ++i) {
        const int m = atoi(argv[i]);
        Gemm g{lt, qkv_gemm_desc(m, n, h), {}, workspace};
        const std::vector<cublasLtMatmulHeuristicResult_t> algos = path_heuristic(lt, g.g, max_algos, true);
        auto record = [&](cudaStream_t s, bool programmatic, int passes) {
            for (int c = 0; c < passes; ++c)
                for (int l = 0; l < layers; ++l) {
                    mv_rms_norm_args a = {};
                    a.in.dtype = MV_BFLOAT16;
                    a.in.rows = m;
                    a.in.hidden = h;
                    a.in.eps = 1e-6f;
                    a.in.x = x + static_cast<size_t>(l) * max_m * h;
                    a.in.x_stride = h;
                    a.in.norm_weight = gamma;
                    a.out = y;
                    a.out_stride = h;
                    const mv_cuda_opts opts = {MV_PDL_ON, MV_QKV_AUTO};
                    CHECK(static_cast<cudaError_t>(mv_rms_norm_cuda(&a, &opts, s)));
                    if (programmatic) make_programmatic(s);
                    run_gemm(g, reinterpret_cast<const char *>(w) + w_bytes * l, y,
                             (programmatic ? out : ref) + static_cast<size_t>(l) * max_m * n, s);
                }
        };
        for (size_t ai = 0; ai < algos.size(); ++ai) {
            g.algo = algos[ai].algo;
            /* one pass of each, checked bit for bit; the edges printed for the first M's first algorithm */
            const size_t out_elems = static_cast<size_t>(max_m) * n * layers;
            CHECK(cudaMemsetAsync(ref, 0xff, out_elems * 2, stream)); /* 0xffff: a bf16 NaN */
            CHECK(cudaMemsetAsync(out, 0xff, out_elems * 2, stream));
            std::string kernels;
            for (int prog = 0; prog < 2; ++prog) {
                cudaGraph_t graph;
                cudaGraphExec_t exec;
                CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
                record(stream, prog != 0, 1);
                CHECK(cudaStreamEndCapture(stream, &graph));
                if (i == 2 && ai == 0) {
                    printf("  edges (%s):\n", prog ? "programmatic" : "ordinary");
                    print_edges(graph);
                }
                if (prog == 0) kernels = gemm_kernels(graph);
                CHECK(cudaGraphInstantiate(&exec, graph, 0));
                CHECK(cudaGraphLaunch(exec, stream));
                CHECK(cudaStreamSynchronize(stream));
                CHECK(cudaGraphExecDestroy(exec));
                CHECK(cudaGraphDestroy(graph));
            }
            std::vector<uint16_t> a(out_elems), b(out_elems);
            CHECK(cudaMemcpy(a.data(), ref, out_elems * 2, cudaMemcpyDeviceToHost));
            CHECK(cudaMemcpy(b.data(), out, out_elems * 2, cudaMemcpyDeviceToHost));
            size_t differ = 0, nan = 0;
            for (int l = 0; l < layers; ++l)
                for (size_t e = 0; e < static_cast<size_t>(m) * n; ++e) {
                    const size_t k = static_cast<size_t>(l) * max_m * n + e;
                    differ += a[k] != b[k];
                    nan += (a[k] & 0x7fff) > 0x7f80;
                }
            const double t_ord =
                graph_us_per_call(stream, cycles * layers, [&](cudaStream_t s) { record(s, false, cycles); });
            const double t_prog =
                graph_us_per_call(stream, cycles * layers, [&](cudaStream_t s) { record(s, true, cycles); });
            printf("%4d %2zu %8.2f  %12.2f   %-4s %9zu  %s\n", m, ai, t_ord, t_prog,
                   differ == 0 && nan == 0 ? "same" : "FAIL", differ, kernels.c_str());
            fflush(stdout);
        }
        destroy_qkv_gemm_desc(g.g);
    }
    return 0;
}
