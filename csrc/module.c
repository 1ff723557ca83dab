/*
 * module.c: minivllm._C, the CPython binding. It imports every argument (tensor_import.c),
 * validates it, allocates missing outputs through the caller's allocator, and launches the CPU
 * or CUDA kernel (minivllm_kernels.h). All validation lives here, once, for both devices.
 */
#include "buffer.h" /* first: it includes Python.h, which must precede system headers */
#include "tensor_import.h"

#include <math.h>
#include <string.h>

#ifdef MINIVLLM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct {
    mv_import_names names;
    PyTypeObject *buffer_type;
    mv_torch_api torch;
    /* _C.TORCH_KIND: passed as `alloc` by the Python API when x is a plain torch tensor; the call
       then allocates with x.new_empty and runs on torch's current stream of x's device, both
       read here in C (the Python route costs tens of microseconds per call). */
    PyObject *torch_kind;
    PyObject *requires_grad; /* "requires_grad" */
} mv_state;

static inline mv_state *get_state(PyObject *module) { return (mv_state *)PyModule_GetState(module); }

/* ---- one call's tensors, released on a single path ----------------------------------------- */

enum { MAX_CALL_TENSORS = 12 };

typedef struct {
    mv_state *st;
    PyObject *stream; /* borrowed: the caller's CUDA stream (int) or None */
    PyObject *alloc;  /* borrowed: callable(shape) -> array, or None for a minivllm.Buffer */
    int torch_kind;   /* alloc was _C.TORCH_KIND: see call_start */
    PyObject *like;   /* borrowed: x, which torch-kind outputs are allocated like */
    PyObject *torch_stream; /* owned: the stream read from torch, which `stream` then points to */
    mv_tensor tensors[MAX_CALL_TENSORS];
    /* Outputs minivllm allocated in this call: new memory, which can overlap no other array. */
    unsigned char fresh[MAX_CALL_TENSORS];
    int count;
    PyObject *outputs[MAX_CALL_TENSORS]; /* owned references to outputs we allocated */
    int output_count;
} mv_call;

static void call_release(mv_call *c)
{
    for (int i = 0; i < c->count; i++)
        mv_tensor_release(&c->tensors[i]);
    for (int i = 0; i < c->output_count; i++)
        Py_CLEAR(c->outputs[i]);
    c->count = c->output_count = 0;
    Py_CLEAR(c->torch_stream);
}

/* The caller's kind of array: `alloc` and `stream` as the Python API found them, or, when alloc
   is _C.TORCH_KIND, torch's, resolved in C from x (a plain torch.Tensor). */
static int call_start(mv_call *c, PyObject *module, PyObject *alloc, PyObject *stream,
                      PyObject *x)
{
    c->st = get_state(module);
    if (alloc != c->st->torch_kind) {
        c->alloc = alloc;
        c->stream = stream;
        return 0;
    }
    const int usable = mv_torch_api_resolve(&c->st->torch);
    if (usable < 0)
        return -1;
    if (!usable || !mv_torch_is_plain_tensor(&c->st->torch, x)) {
        /* Only minivllm's own API passes TORCH_KIND, after checking both. */
        PyErr_Format(PyExc_TypeError,
                     "alloc: TORCH_KIND needs torch imported and x a torch.Tensor, got %.100s",
                     Py_TYPE(x)->tp_name);
        return -1;
    }
    c->torch_kind = 1;
    c->like = x;
    return 0;
}

static mv_tensor *call_import(mv_call *c, PyObject *obj, const char *name)
{
    mv_tensor *t = &c->tensors[c->count];
    const int rc = c->torch_kind && mv_torch_is_plain_tensor(&c->st->torch, obj)
                       ? mv_tensor_import_torch(&c->st->torch, obj, name, t)
                       : mv_tensor_import(&c->st->names, obj, name, c->stream, t);
    if (rc < 0) {
        mv_tensor_release(t); /* a capsule consumed before a failed check is still ours */
        return NULL;
    }
    c->count++;
    return t;
}

/* x, the call's first array. For the torch kind, it fixes the stream: torch's current stream of
   x's device (also when that is not the current device), read before any other argument is
   imported, since producers other than torch need it for __dlpack__(stream=...). */
static mv_tensor *call_import_first(mv_call *c, PyObject *obj, const char *name)
{
    mv_tensor *x = call_import(c, obj, name);
    if (x == NULL || !c->torch_kind || x->processor != MV_ON_CUDA)
        return x;
    if (c->st->torch.current_raw_stream == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s: is a CUDA tensor, but this torch has no _C._cuda_getCurrentRawStream",
                     name);
        return NULL;
    }
    PyObject *device = PyLong_FromLong(x->device_id);
    if (device == NULL)
        return NULL;
    c->torch_stream = PyObject_CallOneArg(c->st->torch.current_raw_stream, device);
    Py_DECREF(device);
    if (c->torch_stream == NULL)
        return NULL;
    if (!PyLong_Check(c->torch_stream)) {
        PyErr_Format(PyExc_TypeError, "%s: torch's current stream is %.100s, not an int", name,
                     Py_TYPE(c->torch_stream)->tp_name);
        return NULL;
    }
    c->stream = c->torch_stream;
    return x;
}

/* Same dtype and device as `ref`; on CUDA, element-aligned (the kernels' scalar loads). */
static int check_like(const mv_tensor *t, const mv_tensor *ref)
{
    if (mv_check_dtype_matches(t, ref) < 0 || mv_check_device_matches(t, ref) < 0)
        return -1;
    if (t->processor == MV_ON_CUDA)
        return mv_check_element_aligned(t);
    return 0;
}

static int check_shape(const mv_tensor *t, int ndim, const int64_t *shape)
{
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == shape[d];
    if (same)
        return 0;
    char want[256], got[256];
    mv_format_dims(want, sizeof(want), shape, ndim);
    mv_format_dims(got, sizeof(got), t->shape, t->ndim);
    PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", t->name, want, got);
    return -1;
}

static PyObject *dims_tuple(int ndim, const int64_t *dims)
{
    PyObject *tuple = PyTuple_New(ndim);
    for (int d = 0; tuple != NULL && d < ndim; d++) {
        PyObject *size = PyLong_FromLongLong(dims[d]);
        if (size == NULL)
            Py_CLEAR(tuple);
        else
            PyTuple_SET_ITEM(tuple, d, size);
    }
    return tuple;
}

/* Row-major strides (in elements) of a new array of this shape. */
static void compact_strides(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t step = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        strides[d] = step;
        step *= shape[d] > 1 ? shape[d] : 1;
    }
}

/* x.new_empty(shape): x's dtype and device, torch's caching allocator and, under CUDA graph
   capture, the graph's memory pool, as torch.empty would. */
static PyObject *torch_new_empty(mv_call *c, PyObject *shape_tuple)
{
    PyObject *method_args[2] = {c->like, shape_tuple};
    return PyObject_VectorcallMethod(c->st->torch.new_empty, method_args,
                                     2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static int torch_data_ptr(mv_call *c, PyObject *tensor, const char *name, char **data)
{
    PyObject *value = PyObject_CallMethodNoArgs(tensor, c->st->torch.data_ptr);
    void *pointer = value ? PyLong_AsVoidPtr(value) : NULL;
    Py_XDECREF(value);
    if (pointer == NULL && PyErr_Occurred()) {
        PyErr_Format(PyExc_RuntimeError, "%s: cannot read data_ptr() of the tensor torch allocated",
                     name);
        return -1;
    }
    *data = pointer;
    return 0;
}

/* Record a plain torch tensor this call just allocated, whose layout minivllm chose (compact, or
   a view into one compact block): its mv_tensor comes from that layout and `data`, for a
   fraction of what a DLPack export costs. */
static mv_tensor *call_adopt_torch_output(mv_call *c, PyObject *obj, const char *name,
                                          const mv_tensor *like, char *data, int ndim,
                                          const int64_t *shape, const int64_t *strides)
{
    mv_tensor *t = &c->tensors[c->count];
    if (mv_tensor_from_layout(t, name, obj, data, like->dtype, like->processor, like->device_id,
                              ndim, shape, strides) < 0) {
        mv_tensor_release(t);
        return NULL;
    }
    c->fresh[c->count++] = 1;
    return t;
}

/* An output: the one the caller gave (validated), or a new one from the caller's allocator
   (or a minivllm.Buffer). *result receives a new reference to the Python object. */
static mv_tensor *call_output(mv_call *c, PyObject *given, const char *name, const mv_tensor *like,
                              int ndim, const int64_t *shape, PyObject **result)
{
    PyObject *obj;
    if (given != NULL && given != Py_None) {
        if (c->torch_kind && mv_torch_is_plain_tensor(&c->st->torch, given)) {
            /* What torch's __dlpack__ refuses, minivllm too: it records no autograd, so writing
               into a tensor autograd tracks would silently break its gradients. */
            PyObject *flag = PyObject_GetAttr(given, c->st->requires_grad);
            const int tracked = flag ? PyObject_IsTrue(flag) : -1;
            Py_XDECREF(flag);
            if (tracked < 0)
                return NULL;
            if (tracked) {
                PyErr_Format(PyExc_ValueError,
                             "%s: requires grad, and minivllm records no autograd; pass an output "
                             "that does not require grad", name);
                return NULL;
            }
        }
        obj = Py_NewRef(given);
    } else if (c->torch_kind || (c->alloc != NULL && c->alloc != Py_None)) {
        PyObject *shape_tuple = dims_tuple(ndim, shape);
        if (shape_tuple == NULL)
            return NULL;
        obj = c->torch_kind ? torch_new_empty(c, shape_tuple)
                            : PyObject_CallOneArg(c->alloc, shape_tuple);
        Py_DECREF(shape_tuple);
        if (obj != NULL && c->torch_kind && mv_torch_is_plain_tensor(&c->st->torch, obj)) {
            c->outputs[c->output_count++] = obj;
            int64_t strides[MV_MAX_DIMS + 1];
            char *data;
            compact_strides(ndim, shape, strides);
            mv_tensor *t = torch_data_ptr(c, obj, name, &data) < 0
                               ? NULL
                               : call_adopt_torch_output(c, obj, name, like, data, ndim, shape,
                                                         strides);
            if (t != NULL)
                *result = Py_NewRef(obj);
            return t;
        }
    } else {
        obj = mv_buffer_new(c->st->buffer_type, like->dtype, like->processor, like->device_id, ndim,
                            shape);
        if (obj && like->processor == MV_ON_CUDA) {
            long long s = c->stream && c->stream != Py_None ? PyLong_AsLongLong(c->stream) : 0;
            mv_buffer_set_stream(obj, (intptr_t)s);
        }
    }
    if (obj == NULL)
        return NULL;
    c->outputs[c->output_count++] = obj;
    mv_tensor *t = call_import(c, obj, name);
    if (t == NULL || check_like(t, like) < 0 || check_shape(t, ndim, shape) < 0 ||
        mv_check_writable(t) < 0)
        return NULL;
    c->fresh[c->count - 1] = given == NULL || given == Py_None;
    *result = Py_NewRef(obj);
    return t;
}

/* q, k and v for the torch kind when none was given: views of one new [..., heads, head_dim]
   tensor split along the heads, as vLLM's qkv.split(...) gives them. One allocation instead of
   three saves a few microseconds per call, which at M = 1 is a large share of the call. Their
   rows are then N elements apart (contiguous when there is one row), the row strides the
   kernels take. objs receives new references to the three views. */
static int call_torch_qkv_outputs(mv_call *c, const mv_tensor *x, int64_t num_heads,
                                  int64_t num_kv_heads, int64_t head_dim, mv_tensor **qkv,
                                  PyObject **objs)
{
    static const char *const names[3] = {"q", "k", "v"};
    const int ndim = x->ndim + 1;
    int64_t shape[MV_MAX_DIMS + 1], strides[MV_MAX_DIMS + 1];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)(x->ndim - 1));
    shape[ndim - 2] = num_heads + 2 * num_kv_heads;
    shape[ndim - 1] = head_dim;
    compact_strides(ndim, shape, strides);
    const int64_t heads[3] = {num_heads, num_kv_heads, num_kv_heads};
    int rc = -1;
    PyObject *buffer = NULL, *sizes = NULL, *dim = NULL, *views = NULL;
    PyObject *shape_tuple = dims_tuple(ndim, shape);
    if (shape_tuple == NULL)
        goto done;
    buffer = torch_new_empty(c, shape_tuple);
    sizes = Py_BuildValue("[LLL]", (long long)heads[0], (long long)heads[1], (long long)heads[2]);
    dim = PyLong_FromLong(-2);
    if (buffer == NULL || sizes == NULL || dim == NULL)
        goto done;
    PyObject *split_args[3] = {buffer, sizes, dim};
    views = PyObject_VectorcallMethod(c->st->torch.split_with_sizes, split_args,
                                      3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (views == NULL)
        goto done;
    if (!PyTuple_Check(views) || PyTuple_GET_SIZE(views) != 3) {
        PyErr_SetString(PyExc_TypeError, "q: torch's split_with_sizes did not give 3 tensors");
        goto done;
    }
    char *base;
    if (torch_data_ptr(c, buffer, "q", &base) < 0)
        goto done;
    const int64_t element = (int64_t)mv_dtype_size(x->dtype);
    int64_t first_head = 0;
    for (int i = 0; i < 3; i++) {
        PyObject *view = PyTuple_GET_ITEM(views, i);
        if (!mv_torch_is_plain_tensor(&c->st->torch, view)) {
            PyErr_Format(PyExc_TypeError, "%s: torch's split_with_sizes gave a %.100s", names[i],
                         Py_TYPE(view)->tp_name);
            goto done;
        }
        shape[ndim - 2] = heads[i];
        qkv[i] = call_adopt_torch_output(c, view, names[i], x,
                                         base + first_head * head_dim * element, ndim, shape,
                                         strides);
        if (qkv[i] == NULL)
            goto done;
        objs[i] = Py_NewRef(view);
        first_head += heads[i];
    }
    rc = 0;
done:
    Py_XDECREF(shape_tuple);
    Py_XDECREF(buffer);
    Py_XDECREF(sizes);
    Py_XDECREF(dim);
    Py_XDECREF(views);
    return rc;
}

/* Outputs overlap no input and no other output, except the listed exact in-place aliases. */
static int check_outputs_disjoint(mv_call *c, int first_output, const int *alias_of)
{
    for (int o = first_output; o < c->count; o++) {
        for (int i = 0; i < c->count; i++) {
            if (i == o || (i > o && i >= first_output))
                continue; /* each pair of outputs once */
            if (c->fresh[o] || c->fresh[i])
                continue; /* new memory overlaps nothing (q, k, v may be views of one block) */
            const int allow = alias_of && alias_of[o - first_output] == i;
            if (mv_check_no_overlap(&c->tensors[o], &c->tensors[i], allow) < 0)
                return -1;
        }
    }
    return 0;
}

static int parse_eps(PyObject *obj, float *eps)
{
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "eps: expected a float, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!(v >= 0.0) || !isfinite(v)) {
        PyErr_Format(PyExc_ValueError, "eps: expected a finite value >= 0, got %R", obj);
        return -1;
    }
    *eps = (float)v;
    return 0;
}

static int parse_positive_int(PyObject *obj, const char *name, int64_t *value)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an int, got %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v <= 0 || v > (1LL << 31)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a positive number of heads, got %lld", name, v);
        return -1;
    }
    *value = v;
    return 0;
}

/* x: [..., H] with H >= 1, flattened to rows. */
static int hidden_rows(const mv_tensor *x, int64_t *rows, int64_t *hidden, int64_t *stride)
{
    if (x->ndim < 1) {
        PyErr_Format(PyExc_ValueError, "%s: expected at least 1 dimension [..., hidden], got 0",
                     x->name);
        return -1;
    }
    if (x->shape[x->ndim - 1] < 1) {
        PyErr_Format(PyExc_ValueError, "%s: the hidden (last) dimension has size 0; expected >= 1",
                     x->name);
        return -1;
    }
    return mv_as_rows(x, 1, rows, hidden, stride);
}

static int check_norm_weight(const mv_tensor *w, const mv_tensor *x, int64_t hidden)
{
    if (check_like(w, x) < 0)
        return -1;
    if (w->ndim != 1) {
        PyErr_Format(PyExc_ValueError, "%s: expected 1 dimension [%lld], got %d dimensions",
                     w->name, (long long)hidden, w->ndim);
        return -1;
    }
    if (check_shape(w, 1, &hidden) < 0)
        return -1;
    if (hidden > 1 && w->strides[0] != 1) {
        PyErr_Format(PyExc_ValueError, "%s: must be contiguous (stride 1), got stride %lld",
                     w->name, (long long)w->strides[0]);
        return -1;
    }
    return 0;
}

/* A tensor shaped exactly like x (residual), flattened the same way. */
static int rows_like_x(const mv_tensor *t, const mv_tensor *x, int64_t *stride)
{
    int64_t rows, cols;
    if (check_like(t, x) < 0 || check_shape(t, x->ndim, x->shape) < 0)
        return -1;
    return mv_as_rows(t, 1, &rows, &cols, stride);
}

/* ---- launching ----------------------------------------------------------------------------- */

typedef int (*cpu_kernel)(const void *args);
typedef int (*cuda_kernel)(const void *args, void *stream);

static int cpu_rms_norm(const void *a) { return mv_rms_norm_cpu(a); }
static int cpu_qkv(const void *a) { return mv_fused_rms_norm_qkv_cpu(a); }
#ifdef MINIVLLM_WITH_CUDA
static int cuda_rms_norm(const void *a, void *s) { return mv_rms_norm_cuda(a, s); }
static int cuda_rms_norm_reference(const void *a, void *s) { return mv_rms_norm_cuda_reference(a, s); }
static int cuda_qkv(const void *a, void *s) { return mv_fused_rms_norm_qkv_cuda(a, s); }
#endif

static int launch(const char *op, const mv_call *c, const mv_tensor *x, const void *args,
                  cpu_kernel on_cpu, cuda_kernel on_cuda)
{
    if (x->processor == MV_ON_CPU) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = on_cpu(args);
        Py_END_ALLOW_THREADS
        if (rc == MV_ERR_NOMEM) {
            PyErr_Format(PyExc_MemoryError, "%s: out of memory for CPU scratch space", op);
            return -1;
        }
        return 0;
    }
#ifdef MINIVLLM_WITH_CUDA
    long long s = 0;
    if (c->stream && c->stream != Py_None) {
        s = PyLong_AsLongLong(c->stream);
        if (s == -1 && PyErr_Occurred())
            return -1;
    }
    int previous = 0;
    cudaError_t err = cudaGetDevice(&previous);
    if (err == cudaSuccess && previous != x->device_id)
        err = cudaSetDevice(x->device_id);
    if (err == cudaSuccess)
        err = (cudaError_t)on_cuda(args, (void *)(intptr_t)s);
    if (previous != x->device_id)
        cudaSetDevice(previous);
    if (err != cudaSuccess) {
        PyErr_Format(PyExc_RuntimeError, "%s: CUDA error on cuda:%d: %s", op, x->device_id,
                     cudaGetErrorString(err));
        return -1;
    }
    return 0;
#else
    (void)c;
    (void)args;
    (void)on_cuda;
    PyErr_Format(PyExc_RuntimeError,
                 "%s: %s is on a CUDA device, but this minivllm was built without CUDA kernels "
                 "(no nvcc at build time, or MINIVLLM_CPU_ONLY=1)", op, x->name);
    return -1;
#endif
}

/* ---- rms_norm(x, weight, eps, out, alloc, stream) -> out ------------------------------------- */

static PyObject *py_rms_norm(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "_C.rms_norm(x, weight, eps, out, alloc, stream[, reference])");
        return NULL;
    }
    const int reference = nargs == 7 && PyObject_IsTrue(args[6]) == 1;
    (void)reference; /* only the CUDA path has a reference kernel */
    mv_call c = {0};
    PyObject *result = NULL, *out_obj = NULL;
    mv_rms_norm_args a;
    memset(&a, 0, sizeof(a));
    if (call_start(&c, module, args[4], args[5], args[0]) < 0 || parse_eps(args[2], &a.in.eps) < 0)
        goto done;
    mv_tensor *x = call_import_first(&c, args[0], "x");
    if (x == NULL || hidden_rows(x, &a.in.rows, &a.in.hidden, &a.in.x_stride) < 0)
        goto done;
    if (x->processor == MV_ON_CUDA && mv_check_element_aligned(x) < 0)
        goto done;
    mv_tensor *w = call_import(&c, args[1], "weight");
    if (w == NULL || check_norm_weight(w, x, a.in.hidden) < 0)
        goto done;
    const int first_output = c.count;
    /* When an output is the input it replaces (in-place form), messages name that input. */
    mv_tensor *out = call_output(&c, args[3], args[3] == args[0] ? "x" : "out", x, x->ndim,
                                 x->shape, &out_obj);
    int64_t rows, cols;
    if (out == NULL || mv_as_rows(out, 1, &rows, &cols, &a.out_stride) < 0)
        goto done;
    const int alias_of[] = {0}; /* out may be x itself: in-place rms_norm */
    if (check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    a.in.dtype = x->dtype;
    a.in.x = x->data;
    a.in.norm_weight = w->data;
    a.out = out->data;
    if (launch("rms_norm", &c, x, &a, cpu_rms_norm,
#ifdef MINIVLLM_WITH_CUDA
               reference ? cuda_rms_norm_reference : cuda_rms_norm
#else
               NULL
#endif
               ) < 0)
        goto done;
    result = Py_NewRef(out_obj);
done:
    Py_XDECREF(out_obj);
    call_release(&c);
    return result;
}

/* ---- fused_add_rms_norm(x, residual, weight, eps, out, residual_out, alloc, stream) ---------- */

static PyObject *py_fused_add_rms_norm(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 && nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "_C.fused_add_rms_norm(x, residual, weight, eps, out, residual_out, alloc, "
                        "stream[, reference])");
        return NULL;
    }
    const int reference = nargs == 9 && PyObject_IsTrue(args[8]) == 1;
    (void)reference; /* only the CUDA path has a reference kernel */
    mv_call c = {0};
    PyObject *result = NULL, *out_obj = NULL, *res_obj = NULL;
    mv_rms_norm_args a;
    memset(&a, 0, sizeof(a));
    int64_t rows, cols;
    if (call_start(&c, module, args[6], args[7], args[0]) < 0 || parse_eps(args[3], &a.in.eps) < 0)
        goto done;
    mv_tensor *x = call_import_first(&c, args[0], "x");
    if (x == NULL || hidden_rows(x, &a.in.rows, &a.in.hidden, &a.in.x_stride) < 0)
        goto done;
    if (x->processor == MV_ON_CUDA && mv_check_element_aligned(x) < 0)
        goto done;
    mv_tensor *residual = call_import(&c, args[1], "residual");
    if (residual == NULL || rows_like_x(residual, x, &a.in.residual_stride) < 0)
        goto done;
    mv_tensor *w = call_import(&c, args[2], "weight");
    if (w == NULL || check_norm_weight(w, x, a.in.hidden) < 0)
        goto done;
    const int first_output = c.count;
    mv_tensor *out = call_output(&c, args[4], args[4] == args[0] ? "x" : "out", x, x->ndim,
                                 x->shape, &out_obj);
    if (out == NULL || mv_as_rows(out, 1, &rows, &cols, &a.out_stride) < 0)
        goto done;
    mv_tensor *res_out = call_output(&c, args[5], args[5] == args[1] ? "residual" : "residual_out",
                                     x, x->ndim, x->shape, &res_obj);
    if (res_out == NULL || mv_as_rows(res_out, 1, &rows, &cols, &a.in.residual_out_stride) < 0)
        goto done;
    /* In-place form: out may be x itself and residual_out residual itself. */
    const int alias_of[] = {0, 1};
    if (check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    a.in.dtype = x->dtype;
    a.in.x = x->data;
    a.in.residual = residual->data;
    a.in.residual_out = res_out->data;
    a.in.norm_weight = w->data;
    a.out = out->data;
    if (launch("fused_add_rms_norm", &c, x, &a, cpu_rms_norm,
#ifdef MINIVLLM_WITH_CUDA
               reference ? cuda_rms_norm_reference : cuda_rms_norm
#else
               NULL
#endif
               ) < 0)
        goto done;
    result = PyTuple_Pack(2, out_obj, res_obj);
done:
    Py_XDECREF(out_obj);
    Py_XDECREF(res_obj);
    call_release(&c);
    return result;
}

/* ---- fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual,
 *                         q, k, v, residual_out, alloc, stream) -> (q, k, v[, residual_out]) --- */

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

static PyObject *py_fused_rms_norm_qkv(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError,
                        "_C.fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, "
                        "eps, residual, q, k, v, residual_out, alloc, stream)");
        return NULL;
    }
    mv_call c = {0};
    PyObject *result = NULL, *q_obj = NULL, *k_obj = NULL, *v_obj = NULL, *res_obj = NULL;
    mv_qkv_args a;
    memset(&a, 0, sizeof(a));
    int64_t num_heads, num_kv_heads, n_out, rows, cols;
    const int has_residual = args[6] != Py_None;
    if (call_start(&c, module, args[11], args[12], args[0]) < 0 ||
        parse_positive_int(args[3], "num_heads", &num_heads) < 0 ||
        parse_positive_int(args[4], "num_kv_heads", &num_kv_heads) < 0 ||
        parse_eps(args[5], &a.in.eps) < 0)
        goto done;
    mv_tensor *x = call_import_first(&c, args[0], "hidden_states");
    if (x == NULL || hidden_rows(x, &a.in.rows, &a.in.hidden, &a.in.x_stride) < 0)
        goto done;
    if (x->processor == MV_ON_CUDA && mv_check_element_aligned(x) < 0)
        goto done;
    mv_tensor *gamma = call_import(&c, args[1], "norm_weight");
    if (gamma == NULL || check_norm_weight(gamma, x, a.in.hidden) < 0)
        goto done;
    mv_tensor *w = call_import(&c, args[2], "qkv_weight");
    if (w == NULL || check_like(w, x) < 0 ||
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
        residual = call_import(&c, args[6], "residual");
        if (residual == NULL || rows_like_x(residual, x, &a.in.residual_stride) < 0)
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
        const int rc = call_torch_qkv_outputs(&c, x, num_heads, num_kv_heads, head_dim, qkv, objs);
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
        q = call_output(&c, args[7], "q", x, x->ndim + 1, shape, &q_obj);
        if (q == NULL)
            goto done;
        shape[x->ndim - 1] = num_kv_heads;
        k = call_output(&c, args[8], "k", x, x->ndim + 1, shape, &k_obj);
        if (k == NULL)
            goto done;
        v = call_output(&c, args[9], "v", x, x->ndim + 1, shape, &v_obj);
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
        res_out = call_output(&c, args[10], args[10] == args[6] ? "residual" : "residual_out", x,
                              x->ndim, x->shape, &res_obj);
        if (res_out == NULL || mv_as_rows(res_out, 1, &rows, &cols, &a.in.residual_out_stride) < 0)
            goto done;
    }
    /* residual_out may be residual itself (in-place); residual is tensor index 3. */
    const int alias_of[] = {-1, -1, -1, has_residual ? 3 : -1};
    if (check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    a.in.dtype = x->dtype;
    a.in.x = x->data;
    a.in.norm_weight = gamma->data;
    a.in.residual = residual ? residual->data : NULL;
    a.in.residual_out = res_out ? res_out->data : NULL;
    a.w = w->data;
    a.q_cols = num_heads * head_dim;
    a.kv_cols = num_kv_heads * head_dim;
    a.q = q->data;
    a.k = k->data;
    a.v = v->data;
    if (launch("fused_rms_norm_qkv", &c, x, &a, cpu_qkv,
#ifdef MINIVLLM_WITH_CUDA
               cuda_qkv
#else
               NULL
#endif
               ) < 0)
        goto done;
    result = has_residual ? PyTuple_Pack(4, q_obj, k_obj, v_obj, res_obj)
                          : PyTuple_Pack(3, q_obj, k_obj, v_obj);
done:
    Py_XDECREF(q_obj);
    Py_XDECREF(k_obj);
    Py_XDECREF(v_obj);
    Py_XDECREF(res_obj);
    call_release(&c);
    return result;
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

static PyObject *py_qkv_last_gpu_path(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
#ifdef MINIVLLM_WITH_CUDA
    return PyUnicode_FromString(mv_qkv_last_gpu_path());
#else
    return PyUnicode_FromString("none");
#endif
}

static PyObject *py_torch_fast_path(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    const int usable = mv_torch_api_resolve(&get_state(module)->torch);
    return usable < 0 ? NULL : PyBool_FromLong(usable);
}

static PyMethodDef module_methods[] = {
    {"rms_norm", (PyCFunction)(void (*)(void))py_rms_norm, METH_FASTCALL,
     "rms_norm(x, weight, eps, out, alloc, stream[, reference]) -> out (internal; use "
     "minivllm.rms_norm). reference=True runs the simple CUDA reference kernel (for tests)."},
    {"fused_add_rms_norm", (PyCFunction)(void (*)(void))py_fused_add_rms_norm, METH_FASTCALL,
     "fused_add_rms_norm(x, residual, weight, eps, out, residual_out, alloc, stream) -> "
     "(out, residual_out) (internal)"},
    {"fused_rms_norm_qkv", (PyCFunction)(void (*)(void))py_fused_rms_norm_qkv, METH_FASTCALL,
     "fused_rms_norm_qkv(x, norm_weight, qkv_weight, num_heads, num_kv_heads, eps, residual, q, k, "
     "v, residual_out, alloc, stream) -> (q, k, v[, residual_out]) (internal)"},
    {"torch_fast_path", py_torch_fast_path, METH_NOARGS,
     "True when torch is imported and minivllm can read its tensors, stream and allocator "
     "through torch._C (then the API passes TORCH_KIND for plain torch tensors)."},
    {"qkv_last_gpu_path", py_qkv_last_gpu_path, METH_NOARGS,
     "Name of the kernel path the last fused_rms_norm_qkv GPU call of this thread took (\"none\" "
     "before any): tests use it to round their reference as that path does."},
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS,
     "Number of CUDA devices the built-in CUDA runtime sees (0 without CUDA support)."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module)
{
    mv_state *st = get_state(module);
    if (mv_import_names_init(&st->names) < 0)
        return -1;
    st->buffer_type = mv_buffer_type_create(module);
    if (st->buffer_type == NULL)
        return -1;
    if (PyModule_AddObjectRef(module, "Buffer", (PyObject *)st->buffer_type) < 0)
        return -1;
    st->torch_kind = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    st->requires_grad = PyUnicode_InternFromString("requires_grad");
    if (st->torch_kind == NULL || st->requires_grad == NULL ||
        PyModule_AddObjectRef(module, "TORCH_KIND", st->torch_kind) < 0)
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
    mv_state *st = get_state(module);
    Py_VISIT(st->buffer_type);
    Py_VISIT(st->torch_kind);
    return mv_torch_api_traverse(&st->torch, visit, arg);
}

static int module_clear(PyObject *module)
{
    mv_state *st = get_state(module);
    Py_CLEAR(st->buffer_type);
    Py_CLEAR(st->torch_kind);
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
