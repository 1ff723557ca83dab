/*
 * fused_rms_norm_qkv.c: the binding of FusedRMSNormQKV.forward (kernels: cpu/fused_rms_norm_qkv.c,
 * cuda/fused_rms_norm_qkv/), and the name of the GPU path each call ran.
 */
#include "binding/call.h"
#include "binding/checks.h"
#include "binding/ops.h"

#include <string.h>

/* Path names, by mv_qkv_path: the private `_path` override and qkv_last_gpu_path use them. */
static const char *const path_names[MV_QKV_PATH_COUNT] = {
    [MV_QKV_AUTO] = "none",   [MV_QKV_DEFERRED] = "deferred", [MV_QKV_REGISTER] = "register",
    [MV_QKV_BULK] = "bulk",   [MV_QKV_WGMMA] = "wgmma",       [MV_QKV_CUBLASLT] = "cublaslt",
    [MV_QKV_TILE] = "tile",   [MV_QKV_GENERIC] = "generic",   [MV_QKV_ENGINE] = "engine",
    [MV_QKV_ENGINE_PROLOGUE] = "engine_prologue",
};

/* The path this thread's last GPU call ran. */
static _Thread_local mv_qkv_path last_gpu_path = MV_QKV_AUTO;

int mv_parse_qkv_path(PyObject *obj, mv_qkv_path *path)
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

void mv_set_qkv_last_gpu_path(mv_qkv_path taken) { last_gpu_path = taken; }

PyObject *mv_py_qkv_last_gpu_path(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(path_names[last_gpu_path]);
}

/* ---- fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual,
 *                         q, k, v, residual_out, alloc, stream, pdl, path) -> (q, k, v[, residual_out]);
 *      with alloc _C.TORCH_OP: packed or (packed, residual_out) */

/* Which of the two accepted layouts qkv_weight has, from its shape and strides; linear_only:
   the nn.Linear layout [N, H] whatever its strides (the torch ops' contract: a square weight
   whose rows are not contiguous is then still W, not W.T). */
int mv_qkv_weight_layout(const mv_tensor *w, int64_t hidden, int linear_only, int64_t *n_out,
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
    const int transposed = !linear_only &&
                           ((a == hidden && b != hidden) ||
                            (a == hidden && b == hidden && w->strides[0] == 1 && w->strides[1] != 1 && hidden > 1));
    if (!transposed && b != hidden) {
        mv_format_dims(shape, sizeof(shape), w->shape, 2);
        if (linear_only)
            PyErr_Format(PyExc_ValueError,
                         "%s: expected shape (N, %lld) (the nn.Linear weight [N, H]) for hidden "
                         "size %lld, got %s",
                         w->name, (long long)hidden, (long long)hidden, shape);
        else
            PyErr_Format(PyExc_ValueError,
                         "%s: expected shape (N, %lld) (the nn.Linear weight) or (%lld, N) (its "
                         ".t() view) for hidden size %lld, got %s",
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

/* hidden_states, norm_weight and qkv_weight, imported and checked: a->in (but eps and the
   residual) and a->w* filled, *head_dim from qkv_weight's N. Returns x, or NULL on error. */
mv_tensor *mv_qkv_import_inputs(mv_call *c, PyObject *const *objs, int64_t num_heads,
                                int64_t num_kv_heads, mv_qkv_args *a, int64_t *head_dim)
{
    int64_t n_out;
    mv_tensor *x = mv_call_import_first(c, objs[0], "hidden_states");
    if (x == NULL || mv_hidden_rows(x, &a->in.rows, &a->in.hidden, &a->in.x_stride) < 0)
        return NULL;
    if (x->processor == MV_ON_CUDA && mv_check_element_aligned(x) < 0)
        return NULL;
    mv_tensor *gamma = mv_call_import(c, objs[1], "norm_weight");
    if (gamma == NULL || mv_check_norm_weight(gamma, x, a->in.hidden, 0) < 0)
        return NULL;
    mv_tensor *w = mv_call_import(c, objs[2], "qkv_weight");
    if (w == NULL || mv_check_like(w, x) < 0 ||
        mv_qkv_weight_layout(w, a->in.hidden, c->linear_only, &n_out, &a->w_stride_n,
                             &a->w_stride_k) < 0)
        return NULL;
    const int64_t heads = num_heads + 2 * num_kv_heads;
    if (n_out % heads != 0) {
        PyErr_Format(PyExc_ValueError,
                     "qkv_weight: its %lld output features are not divisible by num_heads + 2 * "
                     "num_kv_heads = %lld",
                     (long long)n_out, (long long)heads);
        return NULL;
    }
    *head_dim = n_out / heads;
    a->in.dtype = x->dtype;
    a->in.x = x->data;
    a->in.norm_weight = gamma->data;
    a->w = w->data;
    a->q_cols = num_heads * *head_dim;
    a->kv_cols = num_kv_heads * *head_dim;
    return x;
}

/* q, k and v ([..., heads, head_dim] like x): the given ones, or new (for the torch kind, views
   of one buffer; for _C.TORCH_OP that one buffer, in objs[0], objs[1..2] left NULL); their data
   and row strides into a. objs[0..2] receive new references; q_only: the torch kind's new k and
   v are a scratch the caller does not return, and objs[1..2] may be left NULL. */
int mv_qkv_outputs(mv_call *c, const mv_tensor *x, PyObject *const *given, int64_t num_heads,
                   int64_t num_kv_heads, int64_t head_dim, int q_only, mv_qkv_args *a,
                   PyObject **objs)
{
    int64_t shape[MV_MAX_DIMS + 1], rows, cols;
    /* q, k and v have one dimension more than hidden_states (hidden_rows made sure it has one) */
    if (x->ndim < 1 || x->ndim + 1 > MV_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "hidden_states: too many dimensions (%d)", x->ndim);
        return -1;
    }
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)(x->ndim - 1));
    shape[x->ndim] = head_dim;
    mv_tensor *qkv[3];
    if (c->torch_op) {
        if (given[0] != Py_None || given[1] != Py_None || given[2] != Py_None) {
            PyErr_SetString(PyExc_ValueError, "q: TORCH_OP calls allocate q, k and v themselves; "
                                              "pass None");
            return -1;
        }
        const int64_t heads = num_heads + 2 * num_kv_heads;
        const int64_t element = (int64_t)mv_dtype_size(x->dtype);
        char *base;
        if (mv_call_torch_packed_output(c, x, heads, head_dim, &base, &objs[0]) < 0)
            return -1;
        a->q = base;
        a->k = base + a->q_cols * element;
        a->v = base + (a->q_cols + a->kv_cols) * element;
        a->q_stride = a->k_stride = a->v_stride = heads * head_dim;
        return 0;
    }
    if (c->torch_kind && given[0] == Py_None && given[1] == Py_None && given[2] == Py_None) {
        if (mv_call_torch_qkv_outputs(c, x, num_heads, num_kv_heads, head_dim, q_only, qkv,
                                      objs) < 0)
            return -1;
    } else {
        static const char *const names[3] = {"q", "k", "v"};
        for (int i = 0; i < 3; i++) {
            shape[x->ndim - 1] = i == 0 ? num_heads : num_kv_heads;
            qkv[i] = mv_call_output(c, given[i], names[i], x, x->ndim + 1, shape, &objs[i]);
            if (qkv[i] == NULL)
                return -1;
        }
    }
    if (mv_as_rows(qkv[0], 2, &rows, &cols, &a->q_stride) < 0 ||
        mv_as_rows(qkv[1], 2, &rows, &cols, &a->k_stride) < 0 ||
        mv_as_rows(qkv[2], 2, &rows, &cols, &a->v_stride) < 0)
        return -1;
    a->q = qkv[0]->data;
    a->k = qkv[1]->data;
    a->v = qkv[2]->data;
    return 0;
}

/* The new residual's place: residual_out (may be residual itself), or new; NULL, with no
   error, when there is no residual. *failed is set on an error. */
mv_tensor *mv_qkv_residual_out(mv_call *c, const mv_tensor *x, PyObject *residual,
                               PyObject *residual_out, mv_qkv_args *a, PyObject **obj, int *failed)
{
    int64_t rows, cols;
    *failed = 1;
    if (residual == Py_None && residual_out != Py_None) {
        /* there is no new residual to write: refusing beats leaving the caller's buffer stale */
        PyErr_SetString(PyExc_ValueError, "residual_out: given without residual=; the new residual "
                                          "(hidden_states + residual) exists only when residual is passed");
        return NULL;
    }
    mv_tensor *res_out = NULL;
    if (residual != Py_None) {
        res_out = mv_call_output(c, residual_out, residual_out == residual ? "residual" : "residual_out",
                                 x, x->ndim, x->shape, obj);
        if (res_out == NULL || mv_as_rows(res_out, 1, &rows, &cols, &a->in.residual_out_stride) < 0)
            return NULL;
        a->in.residual_out = res_out->data;
    }
    *failed = 0;
    return res_out;
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
    PyObject *result = NULL, *objs[3] = {NULL, NULL, NULL}, *res_obj = NULL;
    mv_qkv_args a;
    memset(&a, 0, sizeof(a));
    int64_t num_heads, num_kv_heads, head_dim;
    int failed;
    const int has_residual = args[6] != Py_None;
    if (mv_call_start(&c, module, args[11], args[12], args[0]) < 0 ||
        mv_parse_positive_int(args[3], "num_heads", &num_heads) < 0 ||
        mv_parse_positive_int(args[4], "num_kv_heads", &num_kv_heads) < 0 ||
        mv_parse_eps(args[5], &a.in.eps) < 0 || mv_parse_pdl(args[13], &c.opts.pdl) < 0 ||
        mv_parse_qkv_path(args[14], &c.opts.path) < 0)
        goto done;
    mv_tensor *x = mv_qkv_import_inputs(&c, args, num_heads, num_kv_heads, &a, &head_dim);
    if (x == NULL)
        goto done;
    if (has_residual) {
        mv_tensor *residual = mv_call_import(&c, args[6], "residual");
        if (residual == NULL || mv_rows_like_x(residual, x, &a.in.residual_stride) < 0)
            goto done;
        a.in.residual = residual->data;
    }
    const int first_output = c.count;
    if (mv_qkv_outputs(&c, x, args + 7, num_heads, num_kv_heads, head_dim, 0, &a, objs) < 0)
        goto done;
    mv_qkv_residual_out(&c, x, args[6], args[10], &a, &res_obj, &failed);
    if (failed)
        goto done;
    /* residual_out, the last output, may be residual itself (in place); residual is tensor
       index 3 */
    int alias_of[4] = {-1, -1, -1, -1};
    if (has_residual)
        alias_of[c.count - 1 - first_output] = 3;
    if (mv_check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    if (mv_call_launch("fused_rms_norm_qkv", &c, x, &a, cpu_qkv, CUDA_QKV) < 0)
        goto done;
    if (c.torch_op) /* the packed q, k, v [, the new residual] */
        result = has_residual ? PyTuple_Pack(2, objs[0], res_obj) : Py_NewRef(objs[0]);
    else
        result = has_residual ? PyTuple_Pack(4, objs[0], objs[1], objs[2], res_obj)
                              : PyTuple_Pack(3, objs[0], objs[1], objs[2]);
done:
    for (int i = 0; i < 3; i++)
        Py_XDECREF(objs[i]);
    Py_XDECREF(res_obj);
    mv_call_release(&c);
    return result;
}
