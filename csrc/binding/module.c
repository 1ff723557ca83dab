/*
 * module.c: minivllm._C, the CPython binding's module: multi-phase initialization, its state,
 * the method table (each op's binding in its own file: ops.h) and the device queries. Every
 * argument is checked once, in C, for both devices (checks.c, call.c).
 */
#include "binding/ops.h" /* first: it includes Python.h, which must precede system headers */

#include "cpu/dispatch.h"
#include "cpu/pool.h"

#ifdef MINIVLLM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

/* ---- CPU kernels: threads and instruction-set level ----------------------------------------- */

static PyObject *py_get_num_threads(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(mv_pool_threads());
}

static PyObject *py_set_num_threads(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (!PyLong_Check(arg) || PyBool_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "n: expected an int, got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    int overflow = 0;
    const long n = PyLong_AsLongAndOverflow(arg, &overflow);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || n < 1 || n > 256) {
        PyErr_Format(PyExc_ValueError, "n: expected a thread count from 1 to 256, got %R", arg);
        return NULL;
    }
    return PyLong_FromLong(mv_pool_set_threads((int)n));
}

/* Private test hooks: the SIMD levels this CPU runs, and a cap on the one the kernels use. */
static PyObject *py_simd_levels(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    const int detected = mv_cpu_simd_detected();
    PyObject *names = PyTuple_New(detected + 1);
    for (int level = 0; names != NULL && level <= detected; level++) {
        PyObject *name = PyUnicode_FromString(mv_cpu_simd_name(level));
        if (name == NULL) {
            Py_CLEAR(names);
            break;
        }
        PyTuple_SET_ITEM(names, level, name);
    }
    return names;
}

static PyObject *py_simd_level(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(mv_cpu_simd_name(mv_cpu_simd_level()));
}

static PyObject *py_set_simd_level(PyObject *Py_UNUSED(module), PyObject *arg)
{
    const long level = PyLong_AsLong(arg);
    if (level == -1 && PyErr_Occurred())
        return NULL;
    if (level < 0 || level >= MV_SIMD_LEVELS) {
        PyErr_Format(PyExc_ValueError, "level: expected 0 to %d, got %ld", MV_SIMD_LEVELS - 1, level);
        return NULL;
    }
    return PyLong_FromLong(mv_cpu_set_simd_cap((int)level));
}

/* ---- device information -------------------------------------------------------------------- */

static PyObject *py_cuda_device_count(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
#ifdef MINIVLLM_WITH_CUDA
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* no driver or no device: not an error for this question */
        count = 0;
    }
    return PyLong_FromLong(count);
#else
    return PyLong_FromLong(0);
#endif
}

/* Private test hook: the current device's DRAM bandwidth as the QKV table reads it (GB/s). */
static PyObject *py_cuda_dram_gbps(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
#ifdef MINIVLLM_WITH_CUDA
    int gbps = 0;
    const int err = mv_cuda_dram_gbps(&gbps);
    if (err != 0) {
        cudaGetLastError();
        PyErr_Format(PyExc_RuntimeError, "_cuda_dram_gbps: %s", cudaGetErrorString((cudaError_t)err));
        return NULL;
    }
    return PyLong_FromLong(gbps);
#else
    return PyLong_FromLong(0);
#endif
}

static PyObject *py_torch_fast_path(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    const int usable = mv_torch_api_resolve(&mv_get_state(module)->torch);
    return usable < 0 ? NULL : PyBool_FromLong(usable);
}

/* Private test hook: read torch tensors and streams through torch's DLPack exchange table (True,
   the default where torch has one) or through its older Python entry points (False); returns
   whether the table is used now. */
static PyObject *py_torch_exchange(PyObject *module, PyObject *arg)
{
    mv_torch_api *api = &mv_get_state(module)->torch;
    if (arg != Py_None) {
        const int on = PyObject_IsTrue(arg);
        if (on < 0)
            return NULL;
        api->exchange_off = !on;
    }
    if (mv_torch_api_resolve(api) < 0)
        return NULL;
    return PyBool_FromLong(mv_torch_exchange(api) != NULL);
}

static PyMethodDef module_methods[] = {
    {"rms_norm", (PyCFunction)(void (*)(void))mv_py_rms_norm, METH_FASTCALL,
     "rms_norm(x, weight, eps, out, alloc, stream, pdl[, reference]) -> out (internal; use "
     "minivllm.rms_norm). reference=True runs the simple CUDA reference kernel (for tests)."},
    {"fused_add_rms_norm", (PyCFunction)(void (*)(void))mv_py_fused_add_rms_norm, METH_FASTCALL,
     "fused_add_rms_norm(x, residual, weight, eps, out, residual_out, alloc, stream, pdl[, "
     "reference]) -> (out, residual_out) (internal)"},
    {"fused_rms_norm_qkv", (PyCFunction)(void (*)(void))mv_py_fused_rms_norm_qkv, METH_FASTCALL,
     "fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, q, k, "
     "v, residual_out, alloc, stream, pdl, path) -> (q, k, v[, residual_out]) (internal; path: "
     "None or a GPU path name to force where it can take the call, for tests and benchmarks)"},
    {"attention_prologue", (PyCFunction)(void (*)(void))mv_py_attention_prologue, METH_FASTCALL,
     "attention_prologue(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, "
     "qkv_bias, q_norm_weight, k_norm_weight, qk_norm_eps, positions, cos_sin_cache, rope_style, "
     "k_cache, v_cache, slot_mapping, kv_scale, q, k, v, residual_out, alloc, stream, pdl, path) "
     "-> (q, k, v[, residual_out]), k and v None with a cache (internal; use "
     "minivllm.attention_prologue)"},
    {"torch_fast_path", py_torch_fast_path, METH_NOARGS,
     "True when torch is imported and minivllm can read its tensors, stream and allocator "
     "through torch._C (then the API passes TORCH_KIND for plain torch tensors, and "
     "minivllm.torch's ops TORCH_OP: nn.Linear weights, q, k, v as one packed tensor)."},
    {"_torch_exchange", py_torch_exchange, METH_O,
     "_torch_exchange(on) -> bool (private, for tests and benchmarks): read torch tensors through "
     "torch's DLPack exchange table when on and available, else through torch._C's Python entry "
     "points; returns whether the table is in use (on=None: only that)."},
    {"qkv_last_gpu_path", mv_py_qkv_last_gpu_path, METH_NOARGS,
     "Name of the kernel path the last fused_rms_norm_qkv GPU call of this thread ran (\"none\" "
     "before any): tests use it to round their reference as that path does."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "Threads the CPU kernels use (OMP_NUM_THREADS at first use, else the CPUs available)."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n) -> previous: threads the CPU kernels use from now on (1 to 256)."},
    {"_simd_levels", py_simd_levels, METH_NOARGS,
     "The CPU kernels' instruction-set levels this machine can run, lowest first (tests)."},
    {"_simd_level", py_simd_level, METH_NOARGS, "The level the CPU kernels use now (tests)."},
    {"_set_simd_level", py_set_simd_level, METH_O,
     "_set_simd_level(cap) -> previous cap: the CPU kernels use at most level cap (an index "
     "into _simd_levels(); tests force lower levels with it)."},
    {"_cuda_dram_gbps", py_cuda_dram_gbps, METH_NOARGS,
     "The current CUDA device's DRAM bandwidth in GB/s as the QKV dispatch table reads it (tests)."},
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS,
     "Number of CUDA devices the built-in CUDA runtime sees (0 without CUDA support)."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module)
{
    mv_state *st = mv_get_state(module);
    if (mv_import_names_init(&st->names) < 0)
        return -1;
    st->buffer_type = mv_buffer_type_create(module);
    if (st->buffer_type == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "Buffer", (PyObject *)st->buffer_type) < 0)
        return -1;
    st->torch_kind = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    st->torch_op = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    st->torch_linear = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    st->requires_grad = PyUnicode_InternFromString("requires_grad");
    if (st->torch_kind == NULL || st->torch_op == NULL || st->torch_linear == NULL ||
        st->requires_grad == NULL ||
        PyModule_AddObjectRef(module, "TORCH_KIND", st->torch_kind) < 0 ||
        PyModule_AddObjectRef(module, "TORCH_OP", st->torch_op) < 0 ||
        PyModule_AddObjectRef(module, "TORCH_LINEAR", st->torch_linear) < 0)
        return -1;
#ifdef MINIVLLM_WITH_CUDA
    const int cuda_built = 1;
    int runtime_version = 0;
    cudaRuntimeGetVersion(&runtime_version);
#else
    const int cuda_built = 0;
    const int runtime_version = 0;
#endif
    if (PyModule_AddObjectRef(module, "cuda_built", cuda_built ? Py_True : Py_False) < 0 ||
        PyModule_AddIntConstant(module, "cuda_runtime_version", runtime_version) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    mv_state *st = mv_get_state(module);
    Py_VISIT(st->buffer_type);
    Py_VISIT(st->torch_kind);
    Py_VISIT(st->torch_op);
    Py_VISIT(st->torch_linear);
    return mv_torch_api_traverse(&st->torch, visit, arg);
}

static int module_clear(PyObject *module)
{
    mv_state *st = mv_get_state(module);
    Py_CLEAR(st->buffer_type);
    Py_CLEAR(st->torch_kind);
    Py_CLEAR(st->torch_op);
    Py_CLEAR(st->torch_linear);
    Py_CLEAR(st->requires_grad);
    mv_torch_api_clear(&st->torch);
    mv_import_names_clear(&st->names);
    return 0;
}

static void module_free(void *module) { module_clear((PyObject *)module); }

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "minivllm._C",
    .m_doc = "minivllm kernels: RMSNorm, fused add + RMSNorm, fused RMSNorm + QKV (CPU and CUDA).",
    .m_size = sizeof(mv_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }

