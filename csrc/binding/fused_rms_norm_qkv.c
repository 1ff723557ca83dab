/*
 * fused_rms_norm_qkv.c: the binding of FusedRMSNormQKV.forward (kernels: cpu/fused_rms_norm_qkv.c,
 * cuda/fused_rms_norm_qkv/), and the name of the GPU path each call ran.
 */
#include "binding/call.h"
#include "binding/checks.h"

#include <string.h>

/* Path names, by mv_qkv_path: the private `_path` override and qkv_last_gpu_path use them. */
static const char *const path_names[MV_QKV_PATH_COUNT] = {
    [MV_QKV_AUTO] = "none",   [MV_QKV_DEFERRED] = "deferred", [MV_QKV_REGISTER] = "register",
    [MV_QKV_BULK] = "bulk",   [MV_QKV_WGMMA] = "wgmma",       [MV_QKV_CUBLASLT] = "cublaslt",
    [MV_QKV_TILE] = "tile",   [MV_QKV_GENERIC] = "generic",
};

/* The path this thread's last GPU call ran. */
static _Thread_local mv_qkv_path last_gpu_path = MV_QKV_AUTO;

static int parse_path(PyObject *obj, mv_qkv_path *path)
{
    *path = MV_QKV_AUTO;
    if (obj == Py_None)
        return 0;
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "_path: expected None or a path name (str), got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *name = PyUnicode_AsUTF8(obj);
    if (name == NULL)
        return -1;
    for (int p = MV_QKV_AUTO + 1; p < MV_QKV_PATH_COUNT; p++)
        if (strcmp(name, path_names[p]) == 0) {
            *path = (mv_qkv_path)p;
            return 0;
        }
    PyErr_Format(PyExc_ValueError,
                 "_path: expected None or one of 'deferred', 'register', 'bulk', 'wgmma', "
                 "'cublaslt', 'tile', 'generic', got %R", obj);
    return -1;
}

static int cpu_qkv(const void *a) { return mv_fused_rms_norm_qkv_cpu(a); }
#ifdef MINIVLLM_WITH_CUDA
static int cuda_qkv(const void *a, const mv_cuda_opts *o, void *s)
{
    mv_qkv_path taken = MV_QKV_AUTO;
    const int rc = mv_fused_rms_norm_qkv_cuda(a, o, s, &taken);
    last_gpu_path = taken;
    return rc;
}
#define CUDA_QKV cuda_qkv
#else
#define CUDA_QKV NULL
#endif

PyObject *mv_py_qkv_last_gpu_path(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(path_names[last_gpu_path]);
}

/* ---- fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual,
 *                         q, k, v, residual_out, alloc, stream, pdl, path) -> (q, k, v[, residual_out]) */

/* Which of the two accepted layouts qkv_weight has, from its shape and strides. */
static int qkv_weight_layout(const mv_tensor *w, int64_t hidden, int64_t *n_out,
                             int64_t *stride_n, int64_t *stride_k)
{
    char shape[256], strides[256];
    if (w->ndim != 2) {
        PyErr_Format(PyExc_ValueError,
                     "%s: expected 2 dimensions ([N, %lld] as nn.Linear stores it, or its .t() "
                     "view [%lld, N]), got %d dimensions",
                     w->name, (long long)hidden, (long long)hidden, w->ndim);
        return -1;
    }
    const int64_t a = w->shape[0], b = w->shape[1];
    /* [H, N]: the transposed view. A square matrix is ambiguous by shape; the .t() view of a
       row-major weight is the one with stride 1 in its first dimension. */
    const int transposed = (a == hidden && b != hidden) ||
                           (a == hidden && b == hidden && w->strides[0] == 1 && w->strides[1] != 1 && hidden > 1);
    if (!transposed && b != hidden) {
        mv_format_dims(shape, sizeof(shape), w->shape, 2);
        PyErr_Format(PyExc_ValueError,
                     "%s: expected shape (N, %lld) (the nn.Linear weight) or (%lld, N) (its .t() "
                     "view) for hidden size %lld, got %s",
                     w->name, (long long)hidden, (long long)hidden, (long long)hidden, shape);
        return -1;
    }
    *n_out = transposed ? b : a;
    *stride_n = transposed ? w->strides[1] : w->strides[0];
    *stride_k = transposed ? w->strides[0] : w->strides[1];
    if (hidden == 1)
        *stride_k = 1;
    if (*n_out == 1)
        *stride_n = 1;
    if (*stride_k != 1 && *stride_n != 1) {
        mv_format_dims(strides, sizeof(strides), w->strides, 2);
        PyErr_Format(PyExc_ValueError,
                     "%s: one dimension must be contiguous (stride 1); got strides %s", w->name,
                     strides);
        return -1;
    }
    return 0;
}

PyObject *mv_py_fused_rms_norm_qkv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError,
                        "_C.fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, "
                        "eps, residual, q, k, v, residual_out, alloc, stream, pdl, path)");
        return NULL;
    }
    mv_call c = {0};
    PyObject *result = NULL, *q_obj = NULL, *k_obj = NULL, *v_obj = NULL, *res_obj = NULL;
    mv_qkv_args a;
    memset(&a, 0, sizeof(a));
    int64_t num_heads, num_kv_heads, n_out, rows, cols;
    const int has_residual = args[6] != Py_None;
    if (mv_call_start(&c, module, args[11], args[12], args[0]) < 0 ||
        mv_parse_positive_int(args[3], "num_heads", &num_heads) < 0 ||
        mv_parse_positive_int(args[4], "num_kv_heads", &num_kv_heads) < 0 ||
        mv_parse_eps(args[5], &a.in.eps) < 0 || mv_parse_pdl(args[13], &c.opts.pdl) < 0 ||
        parse_path(args[14], &c.opts.path) < 0)
        goto done;
    mv_tensor *x = mv_call_import_first(&c, args[0], "hidden_states");
    if (x == NULL || mv_hidden_rows(x, &a.in.rows, &a.in.hidden, &a.in.x_stride) < 0)
        goto done;
    if (x->processor == MV_ON_CUDA && mv_check_element_aligned(x) < 0)
        goto done;
    mv_tensor *gamma = mv_call_import(&c, args[1], "norm_weight");
    if (gamma == NULL || mv_check_norm_weight(gamma, x, a.in.hidden, 0) < 0)
        goto done;
    mv_tensor *w = mv_call_import(&c, args[2], "qkv_weight");
    if (w == NULL || mv_check_like(w, x) < 0 ||
        qkv_weight_layout(w, a.in.hidden, &n_out, &a.w_stride_n, &a.w_stride_k) < 0)
        goto done;
    const int64_t heads = num_heads + 2 * num_kv_heads;
    if (n_out % heads != 0) {
        PyErr_Format(PyExc_ValueError,
                     "qkv_weight: its %lld output features are not divisible by num_heads + 2 * "
                     "num_kv_heads = %lld",
                     (long long)n_out, (long long)heads);
        goto done;
    }
    const int64_t head_dim = n_out / heads;
    mv_tensor *residual = NULL;
    if (has_residual) {
        residual = mv_call_import(&c, args[6], "residual");
        if (residual == NULL || mv_rows_like_x(residual, x, &a.in.residual_stride) < 0)
            goto done;
    }
    const int first_output = c.count;
    int64_t shape[MV_MAX_DIMS + 1];
    /* q, k and v have one dimension more than hidden_states (hidden_rows made sure it has one) */
    if (x->ndim < 1 || x->ndim + 1 > MV_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "hidden_states: too many dimensions (%d)", x->ndim);
        goto done;
    }
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)(x->ndim - 1));
    shape[x->ndim] = head_dim;
    mv_tensor *q, *k, *v;
    if (c.torch_kind && args[7] == Py_None && args[8] == Py_None && args[9] == Py_None) {
        mv_tensor *qkv[3];
        PyObject *objs[3] = {NULL, NULL, NULL};
        const int rc = mv_call_torch_qkv_outputs(&c, x, num_heads, num_kv_heads, head_dim, qkv, objs);
        q_obj = objs[0];
        k_obj = objs[1];
        v_obj = objs[2];
        if (rc < 0)
            goto done;
        q = qkv[0];
        k = qkv[1];
        v = qkv[2];
    } else {
        shape[x->ndim - 1] = num_heads;
        q = mv_call_output(&c, args[7], "q", x, x->ndim + 1, shape, &q_obj);
        if (q == NULL)
            goto done;
        shape[x->ndim - 1] = num_kv_heads;
        k = mv_call_output(&c, args[8], "k", x, x->ndim + 1, shape, &k_obj);
        if (k == NULL)
            goto done;
        v = mv_call_output(&c, args[9], "v", x, x->ndim + 1, shape, &v_obj);
        if (v == NULL)
            goto done;
    }
    if (mv_as_rows(q, 2, &rows, &cols, &a.q_stride) < 0 ||
        mv_as_rows(k, 2, &rows, &cols, &a.k_stride) < 0 ||
        mv_as_rows(v, 2, &rows, &cols, &a.v_stride) < 0)
        goto done;
    mv_tensor *res_out = NULL;
    if (!has_residual && args[10] != Py_None) {
        /* there is no new residual to write: refusing beats leaving the caller's buffer stale */
        PyErr_SetString(PyExc_ValueError, "residual_out: given without residual=; the new residual "
                                          "(hidden_states + residual) exists only when residual is passed");
        goto done;
    }
    if (has_residual) {
        res_out = mv_call_output(&c, args[10], args[10] == args[6] ? "residual" : "residual_out", x,
                              x->ndim, x->shape, &res_obj);
        if (res_out == NULL || mv_as_rows(res_out, 1, &rows, &cols, &a.in.residual_out_stride) < 0)
            goto done;
    }
    /* residual_out may be residual itself (in-place); residual is tensor index 3. */
    const int alias_of[] = {-1, -1, -1, has_residual ? 3 : -1};
    if (mv_check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    a.in.dtype = x->dtype;
    a.in.x = x->data;
    a.in.norm_weight = gamma->data;
    a.in.weight_float32 = 0;
    a.in.weight_offset = 0.0f;
    a.in.residual = residual ? residual->data : NULL;
    a.in.residual_out = res_out ? res_out->data : NULL;
    a.w = w->data;
    a.q_cols = num_heads * head_dim;
    a.kv_cols = num_kv_heads * head_dim;
    a.q = q->data;
    a.k = k->data;
    a.v = v->data;
    if (mv_call_launch("fused_rms_norm_qkv", &c, x, &a, cpu_qkv, CUDA_QKV) < 0)
        goto done;
    result = has_residual ? PyTuple_Pack(4, q_obj, k_obj, v_obj, res_obj)
                          : PyTuple_Pack(3, q_obj, k_obj, v_obj);
done:
    Py_XDECREF(q_obj);
    Py_XDECREF(k_obj);
    Py_XDECREF(v_obj);
    Py_XDECREF(res_obj);
    mv_call_release(&c);
    return result;
}

