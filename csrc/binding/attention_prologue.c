/*
 * attention_prologue.c: the binding of minivllm.attention_prologue (kernels:
 * cpu/attention_prologue.c, cuda/attention_prologue.cu). Every argument is checked here, once,
 * for both devices; index values (positions, slot_mapping) are checked where the binding can
 * read them without synchronizing, on the CPU (on a GPU the kernels guard them: see
 * minivllm_kernels.h).
 */
#include "binding/call.h"
#include "binding/checks.h"
#include "binding/ops.h"

#include <float.h>
#include <math.h>
#include <string.h>

enum {
    A_X, A_NORM_WEIGHT, A_QKV_WEIGHT, A_NUM_HEADS, A_NUM_KV_HEADS, A_EPS, A_RESIDUAL, A_BIAS,
    A_Q_NORM, A_K_NORM, A_QK_EPS, A_POSITIONS, A_COS_SIN, A_ROPE_STYLE, A_K_CACHE, A_V_CACHE,
    A_SLOTS, A_KV_SCALE, A_Q, A_K, A_V, A_RESIDUAL_OUT, A_ALLOC, A_STREAM, A_PDL, A_PATH, A_COUNT
};

/* The longest head the GPU epilogue stages in shared memory (one warp's row of floats). */
#define MAX_HEAD_DIM 4096

static int cpu_prologue(const void *a) { return mv_attention_prologue_cpu(a); }
#ifdef MINIVLLM_WITH_CUDA
static int cuda_prologue(const void *a, const mv_cuda_opts *o, void *s)
{
    mv_qkv_path taken = MV_QKV_AUTO;
    const int rc = mv_attention_prologue_cuda(a, o, s, &taken);
    mv_set_qkv_last_gpu_path(taken);
    return rc;
}
#define CUDA_PROLOGUE cuda_prologue
#else
#define CUDA_PROLOGUE NULL
#endif

/* A float option: finite, > 0 (or >= 0 with allow_zero), finite as a float32 too. */
static int parse_float(PyObject *obj, const char *name, int allow_zero, float *out)
{
    const double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: expected a float, got %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!isfinite(v) || v > FLT_MAX || !(allow_zero ? v >= 0.0 : v > 0.0) ||
        (!allow_zero && (float)v == 0.0f)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a finite value %s 0, got %R", name,
                     allow_zero ? ">=" : ">", obj);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* One value per token (positions, slot_mapping): int32 or int64, on x's device, shaped like x's
   leading dimensions or flat [M], its elements one stride apart. */
static int token_vector(const mv_tensor *t, const mv_tensor *x, int64_t rows, int64_t *stride)
{
    char want[256], got[256];
    if (t->dtype != MV_INT32 && t->dtype != MV_INT64) {
        PyErr_Format(PyExc_TypeError, "%s: expected int32 or int64, got %s", t->name,
                     mv_dtype_name(t->dtype));
        return -1;
    }
    if (mv_check_device_matches(t, x) < 0 ||
        (t->processor == MV_ON_CUDA && mv_check_element_aligned(t) < 0))
        return -1;
    if (t->ndim < 0 || t->ndim > MV_MAX_DIMS || x->ndim > MV_MAX_DIMS) { /* the import caps it */
        PyErr_Format(PyExc_ValueError, "%s: too many dimensions (%d)", t->name, t->ndim);
        return -1;
    }
    int same = t->ndim == x->ndim - 1;
    for (int d = 0; same && d < t->ndim; d++)
        same = t->shape[d] == x->shape[d];
    if (!same && !(t->ndim == 1 && t->shape[0] == rows)) {
        mv_format_dims(want, sizeof(want), x->shape, x->ndim - 1);
        mv_format_dims(got, sizeof(got), t->shape, t->ndim);
        PyErr_Format(PyExc_ValueError,
                     "%s: expected one value per token, shape %s (hidden_states' leading "
                     "dimensions) or (%lld,), got %s", t->name, want, (long long)rows, got);
        return -1;
    }
    /* the dimensions of size > 1 must step as one index */
    int64_t step = 0, next = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] <= 1)
            continue;
        if (step == 0) {
            step = t->strides[d];
        } else if (t->strides[d] != next) {
            mv_format_dims(got, sizeof(got), t->strides, t->ndim);
            PyErr_Format(PyExc_ValueError,
                         "%s: its dimensions do not flatten to one stride (strides %s); pass a "
                         "contiguous copy", t->name, got);
            return -1;
        }
        next = t->strides[d] * t->shape[d];
    }
    *stride = step;
    return 0;
}

static int64_t read_index(const mv_tensor *t, int64_t i, int64_t stride)
{
    if (t->dtype == MV_INT32) {
        int32_t v;
        memcpy(&v, t->data + i * stride * 4, sizeof v);
        return v;
    }
    int64_t v;
    memcpy(&v, t->data + i * stride * 8, sizeof v);
    return v;
}

/* A KV cache: [num_blocks, block_size, num_kv_heads, head_dim], any strides, writable. */
static int check_cache(const mv_tensor *t, const mv_tensor *x, int64_t num_kv_heads,
                       int64_t head_dim)
{
    char got[256];
    if (t->dtype != x->dtype && t->dtype != MV_FLOAT8_E4M3) {
        PyErr_Format(PyExc_TypeError, "%s: dtype %s; expected hidden_states' dtype %s or "
                     "float8_e4m3fn", t->name, mv_dtype_name(t->dtype), mv_dtype_name(x->dtype));
        return -1;
    }
    if (mv_check_device_matches(t, x) < 0 ||
        (t->processor == MV_ON_CUDA && mv_check_element_aligned(t) < 0))
        return -1;
    if (t->ndim != 4 || t->shape[2] != num_kv_heads || t->shape[3] != head_dim) {
        mv_format_dims(got, sizeof(got), t->shape, t->ndim);
        PyErr_Format(PyExc_ValueError,
                     "%s: expected 4 dimensions [num_blocks, block_size, num_kv_heads=%lld, "
                     "head_dim=%lld] (vLLM's paged layout, or a Hugging Face static cache "
                     "[batch, heads, max_len, head_dim] as .permute(0, 2, 1, 3)), got shape %s",
                     t->name, (long long)num_kv_heads, (long long)head_dim, got);
        return -1;
    }
    if (t->readonly) {
        PyErr_Format(PyExc_ValueError, "%s: is read-only, but the op writes the cache", t->name);
        return -1;
    }
    return mv_check_writable(t);
}

/* On the CPU, where the values can be read: every value below limit (and >= 0 unless
   negatives are allowed: padding slots). */
static int check_cpu_indices(const mv_tensor *t, int64_t rows, int64_t stride, int allow_negative,
                             int64_t limit, const char *what)
{
    if (t->processor != MV_ON_CPU)
        return 0;
    for (int64_t m = 0; m < rows; m++) {
        const int64_t v = read_index(t, m, stride);
        if (v >= limit || (v < 0 && !allow_negative)) {
            PyErr_Format(PyExc_ValueError, "%s: value %lld at token %lld is outside %s: "
                         "expected %s%lld", t->name, (long long)v, (long long)m, what,
                         allow_negative ? "a negative value (skip) or below " : "0 to ",
                         (long long)(allow_negative ? limit : limit - 1));
            return -1;
        }
    }
    return 0;
}

static int parse_rope_style(PyObject *obj, int *gptj)
{
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "rope_style: expected \"neox\" or \"gptj\", got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (strcmp(s, "neox") != 0 && strcmp(s, "gptj") != 0) {
        PyErr_Format(PyExc_ValueError, "rope_style: expected \"neox\" or \"gptj\", got %R", obj);
        return -1;
    }
    *gptj = s[0] == 'g';
    return 0;
}

/* Both or neither of two optional arguments. */
static int paired(PyObject *const *args, int i, const char *a, int j, const char *b)
{
    if ((args[i] == Py_None) == (args[j] == Py_None))
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: given without %s; pass both or neither",
                 args[i] == Py_None ? b : a, args[i] == Py_None ? a : b);
    return -1;
}

/* q, k and v in one new scratch [..., heads + 2 kv heads, head_dim] for the QKV part, and the
   caller's q (given) as q_out; *q_obj receives a new reference to q. */
static int qkv_scratch(mv_call *c, const mv_tensor *x, PyObject *given_q, mv_prologue_args *p,
                       PyObject **q_obj)
{
    mv_qkv_args *a = &p->qkv;
    int64_t shape[MV_MAX_DIMS + 1], rows, cols, stride;
    if (x->ndim < 1 || x->ndim + 1 > MV_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "hidden_states: too many dimensions (%d)", x->ndim);
        return -1;
    }
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)(x->ndim - 1));
    shape[x->ndim] = p->head_dim;
    shape[x->ndim - 1] = p->num_heads + 2 * p->num_kv_heads;
    PyObject *scratch_obj = NULL;
    mv_tensor *scratch = mv_call_output(c, Py_None, "q, k, v scratch", x, x->ndim + 1, shape,
                                        &scratch_obj);
    Py_XDECREF(scratch_obj); /* the call holds the tensor until it is released */
    if (scratch == NULL || mv_as_rows(scratch, 2, &rows, &cols, &stride) < 0)
        return -1;
    shape[x->ndim - 1] = p->num_heads;
    mv_tensor *q = mv_call_output(c, given_q, "q", x, x->ndim + 1, shape, q_obj);
    if (q == NULL || mv_as_rows(q, 2, &rows, &cols, &p->q_out_stride) < 0)
        return -1;
    const size_t element = mv_dtype_size(x->dtype);
    a->q = scratch->data;
    a->k = scratch->data + a->q_cols * (int64_t)element;
    a->v = scratch->data + (a->q_cols + a->kv_cols) * (int64_t)element;
    a->q_stride = a->k_stride = a->v_stride = stride;
    p->q_out = q->data;
    return 0;
}

/* attention_prologue(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual,
   qkv_bias, q_norm_weight, k_norm_weight, qk_norm_eps, positions, cos_sin_cache, rope_style,
   k_cache, v_cache, slot_mapping, kv_scale, q, k, v, residual_out, alloc, stream, pdl, path)
   -> (q, k, v[, residual_out]); k and v are None with a cache. With alloc _C.TORCH_OP:
   (packed q, k, v as [..., heads, head_dim], residual_out or None); _C.TORCH_LINEAR returns as
   TORCH_KIND. */
PyObject *mv_py_attention_prologue(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != A_COUNT) {
        PyErr_SetString(PyExc_TypeError,
                        "_C.attention_prologue(x, norm_weight, qkv_weight, num_heads, num_kv_heads, "
                        "eps, residual, qkv_bias, q_norm_weight, k_norm_weight, qk_norm_eps, "
                        "positions, cos_sin_cache, rope_style, k_cache, v_cache, slot_mapping, "
                        "kv_scale, q, k, v, residual_out, alloc, stream, pdl, path)");
        return NULL;
    }
    mv_call c = {0};
    PyObject *result = NULL, *objs[3] = {NULL, NULL, NULL}, *res_obj = NULL;
    mv_prologue_args p;
    memset(&p, 0, sizeof(p));
    mv_qkv_args *a = &p.qkv;
    const int has_residual = args[A_RESIDUAL] != Py_None;
    const int has_cache = args[A_K_CACHE] != Py_None;
    if (mv_call_start(&c, module, args[A_ALLOC], args[A_STREAM], args[A_X]) < 0 ||
        mv_parse_positive_int(args[A_NUM_HEADS], "num_heads", &p.num_heads) < 0 ||
        mv_parse_positive_int(args[A_NUM_KV_HEADS], "num_kv_heads", &p.num_kv_heads) < 0 ||
        mv_parse_eps(args[A_EPS], &a->in.eps) < 0 || mv_parse_pdl(args[A_PDL], &c.opts.pdl) < 0 ||
        mv_parse_qkv_path(args[A_PATH], &c.opts.path) < 0 ||
        parse_rope_style(args[A_ROPE_STYLE], &p.rope_gptj) < 0 ||
        paired(args, A_POSITIONS, "positions", A_COS_SIN, "cos_sin_cache") < 0 ||
        paired(args, A_K_CACHE, "k_cache", A_V_CACHE, "v_cache") < 0 ||
        paired(args, A_K_CACHE, "k_cache", A_SLOTS, "slot_mapping") < 0)
        goto done;
    p.qk_norm_eps = a->in.eps;
    if (args[A_QK_EPS] != Py_None) {
        if (args[A_Q_NORM] == Py_None && args[A_K_NORM] == Py_None) {
            PyErr_SetString(PyExc_ValueError, "qk_norm_eps: given without q_norm_weight or "
                                              "k_norm_weight (it is their epsilon)");
            goto done;
        }
        if (parse_float(args[A_QK_EPS], "qk_norm_eps", 1, &p.qk_norm_eps) < 0)
            goto done;
    }

    /* ---- the QKV part's inputs, as fused_rms_norm_qkv takes them ---- */
    int64_t head_dim;
    mv_tensor *x = mv_qkv_import_inputs(&c, args, p.num_heads, p.num_kv_heads, a, &head_dim);
    if (x == NULL)
        goto done;
    const int64_t M = a->in.rows, n_out = a->q_cols + 2 * a->kv_cols;
    p.head_dim = head_dim;
    if (head_dim > MAX_HEAD_DIM) {
        PyErr_Format(PyExc_ValueError, "qkv_weight: gives head_dim %lld; attention_prologue "
                     "takes heads of at most %d features", (long long)head_dim, MAX_HEAD_DIM);
        goto done;
    }
    int residual_index = -1;
    if (has_residual) {
        residual_index = c.count;
        mv_tensor *residual = mv_call_import(&c, args[A_RESIDUAL], "residual");
        if (residual == NULL || mv_rows_like_x(residual, x, &a->in.residual_stride) < 0)
            goto done;
        a->in.residual = residual->data;
    }

    /* ---- the epilogue's inputs ---- */
    /* the 1-D weights: bias [N], the per-head norms' gammas [head_dim] */
    const struct {
        int arg;
        const char *name;
        int64_t length;
        const void **data;
    } vectors[] = {{A_BIAS, "qkv_bias", n_out, &p.bias},
                   {A_Q_NORM, "q_norm_weight", head_dim, &p.q_norm_weight},
                   {A_K_NORM, "k_norm_weight", head_dim, &p.k_norm_weight}};
    for (int i = 0; i < 3; i++) {
        if (args[vectors[i].arg] == Py_None)
            continue;
        mv_tensor *t = mv_call_import(&c, args[vectors[i].arg], vectors[i].name);
        if (t == NULL || mv_check_norm_weight(t, x, vectors[i].length, 0) < 0)
            goto done;
        *vectors[i].data = t->data;
    }
    if (args[A_POSITIONS] != Py_None) {
        mv_tensor *pos = mv_call_import_extra(&c, args[A_POSITIONS], "positions", MV_ACCEPT_INDEX);
        if (pos == NULL || token_vector(pos, x, M, &p.positions_stride) < 0)
            goto done;
        mv_tensor *cs = mv_call_import(&c, args[A_COS_SIN], "cos_sin_cache");
        if (cs == NULL)
            goto done;
        if (cs->dtype != MV_FLOAT32 && cs->dtype != x->dtype) {
            PyErr_Format(PyExc_TypeError, "cos_sin_cache: dtype %s; expected float32 or "
                         "hidden_states' dtype %s", mv_dtype_name(cs->dtype), mv_dtype_name(x->dtype));
            goto done;
        }
        if (mv_check_device_matches(cs, x) < 0 ||
            (cs->processor == MV_ON_CUDA && mv_check_element_aligned(cs) < 0))
            goto done;
        if (cs->ndim != 2) {
            PyErr_Format(PyExc_ValueError, "cos_sin_cache: expected 2 dimensions [max_position, "
                         "rotary_dim] (cos then sin, vLLM's layout), got %d", cs->ndim);
            goto done;
        }
        p.max_position = cs->shape[0];
        p.rotary_dim = cs->shape[1];
        if (p.rotary_dim % 2 != 0 || p.rotary_dim < 2 || p.rotary_dim > head_dim) {
            PyErr_Format(PyExc_ValueError, "cos_sin_cache: its last dimension is rotary_dim = %lld; "
                         "expected an even number from 2 to head_dim = %lld",
                         (long long)p.rotary_dim, (long long)head_dim);
            goto done;
        }
        if (cs->strides[1] != 1) {
            PyErr_Format(PyExc_ValueError, "cos_sin_cache: its last dimension must be contiguous "
                         "(stride 1), got stride %lld", (long long)cs->strides[1]);
            goto done;
        }
        if (check_cpu_indices(pos, M, p.positions_stride, 0, p.max_position,
                              "cos_sin_cache (its first dimension)") < 0)
            goto done;
        p.positions = pos->data;
        p.positions_dtype = pos->dtype;
        p.cos_sin = cs->data;
        p.cos_sin_dtype = cs->dtype;
        p.cos_sin_stride = p.max_position > 1 ? cs->strides[0] : 0;
    }
    mv_tensor *slots = NULL;
    if (has_cache) {
        slots = mv_call_import_extra(&c, args[A_SLOTS], "slot_mapping", MV_ACCEPT_INDEX);
        if (slots == NULL || token_vector(slots, x, M, &p.slot_stride) < 0)
            goto done;
        p.slot_mapping = slots->data;
        p.slot_dtype = slots->dtype;
    } else if (args[A_KV_SCALE] != Py_None) {
        PyErr_SetString(PyExc_ValueError, "kv_scale: given without k_cache / v_cache (it scales "
                                          "an FP8 cache)");
        goto done;
    }

    /* ---- outputs: the caches first, then q, k, v and the new residual ---- */
    const int first_output = c.count;
    if (has_cache) {
        mv_tensor *kc = mv_call_import_extra(&c, args[A_K_CACHE], "k_cache", MV_ACCEPT_FP8);
        if (kc == NULL || check_cache(kc, x, p.num_kv_heads, head_dim) < 0)
            goto done;
        mv_tensor *vc = mv_call_import_extra(&c, args[A_V_CACHE], "v_cache", MV_ACCEPT_FP8);
        if (vc == NULL || check_cache(vc, x, p.num_kv_heads, head_dim) < 0)
            goto done;
        if (vc->dtype != kc->dtype || vc->shape[0] != kc->shape[0] || vc->shape[1] != kc->shape[1]) {
            char ks[256], vs[256];
            mv_format_dims(ks, sizeof(ks), kc->shape, 4);
            mv_format_dims(vs, sizeof(vs), vc->shape, 4);
            PyErr_Format(PyExc_ValueError, "v_cache: %s of shape %s does not match k_cache's %s "
                         "of shape %s", mv_dtype_name(vc->dtype), vs, mv_dtype_name(kc->dtype), ks);
            goto done;
        }
        p.k_cache = kc->data;
        p.v_cache = vc->data;
        p.cache_dtype = kc->dtype;
        memcpy(p.k_cache_strides, kc->strides, sizeof(p.k_cache_strides));
        memcpy(p.v_cache_strides, vc->strides, sizeof(p.v_cache_strides));
        p.num_blocks = kc->shape[0];
        p.block_size = kc->shape[1];
        int64_t slots_total;
        if (__builtin_mul_overflow(p.num_blocks, p.block_size, &slots_total)) {
            PyErr_SetString(PyExc_ValueError, "k_cache: num_blocks * block_size overflows");
            goto done;
        }
        if (check_cpu_indices(slots, M, p.slot_stride, 1, slots_total,
                              "the cache (num_blocks * block_size slots)") < 0)
            goto done;
        p.kv_scale = 1.0f;
        if (args[A_KV_SCALE] != Py_None) {
            if (p.cache_dtype != MV_FLOAT8_E4M3) {
                PyErr_Format(PyExc_ValueError, "kv_scale: given for a %s cache; it scales an "
                             "FP8 (float8_e4m3fn) cache only", mv_dtype_name(p.cache_dtype));
                goto done;
            }
            if (parse_float(args[A_KV_SCALE], "kv_scale", 0, &p.kv_scale) < 0)
                goto done;
        }
    }
    /* with a cache, k and v are scratch: the caller's (out=) or new */
    if (has_cache && !c.torch_op && args[A_Q] != Py_None && args[A_K] == Py_None &&
        args[A_V] == Py_None) {
        /* q given, k and v not: one new scratch takes q, k and v side by side, as one GEMM
           writes them (separate ones cost the GEMM paths a split copy), and the epilogue stores
           q into the caller's q */
        if (qkv_scratch(&c, x, args[A_Q], &p, &objs[0]) < 0)
            goto done;
    } else if (mv_qkv_outputs(&c, x, args + A_Q, p.num_heads, p.num_kv_heads, head_dim,
                              has_cache, a, objs) < 0) {
        goto done;
    }
    int failed;
    mv_tensor *res_out = mv_qkv_residual_out(&c, x, args[A_RESIDUAL], args[A_RESIDUAL_OUT], a,
                                             &res_obj, &failed);
    if (failed)
        goto done;
    /* residual_out, the last output, may be residual itself (in place) */
    int alias_of[MAX_CALL_TENSORS];
    for (int i = 0; i < MAX_CALL_TENSORS; i++)
        alias_of[i] = -1;
    if (res_out != NULL)
        alias_of[c.count - 1 - first_output] = residual_index;
    if (mv_check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    if (mv_call_launch("attention_prologue", &c, x, &p, cpu_prologue, CUDA_PROLOGUE) < 0)
        goto done;
    if (c.torch_op) { /* (packed q, k, v, the new residual or None) */
        result = PyTuple_Pack(2, objs[0], has_residual ? res_obj : Py_None);
        goto done;
    }
    PyObject *k_ret = has_cache ? Py_None : objs[1], *v_ret = has_cache ? Py_None : objs[2];
    result = has_residual ? PyTuple_Pack(4, objs[0], k_ret, v_ret, res_obj)
                          : PyTuple_Pack(3, objs[0], k_ret, v_ret);
done:
    for (int i = 0; i < 3; i++)
        Py_XDECREF(objs[i]);
    Py_XDECREF(res_obj);
    mv_call_release(&c);
    return result;
}
