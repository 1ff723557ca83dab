/*
 * call.c: the lifecycle of one op call (call.h): imports, outputs (given, from the caller's
 * allocator, minivllm.Buffer, or torch's caching allocator through the torch fast path), overlap
 * checks, and the launch.
 */
#include "binding/call.h"
#include "binding/checks.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifdef MINIVLLM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

void mv_call_release(mv_call *c)
{
    for (int i = 0; i < c->count; i++)
        mv_tensor_release(&c->tensors[i]);
    for (int i = 0; i < c->output_count; i++)
        Py_CLEAR(c->outputs[i]);
    c->count = c->output_count = 0;
    Py_CLEAR(c->torch_stream);
}

/* The caller's kind of array: `alloc` and `stream` as the Python API found them, or, when alloc
   is _C.TORCH_KIND (or TORCH_OP, TORCH_LINEAR), torch's, resolved in C from x (a plain
   torch.Tensor). */
int mv_call_start(mv_call *c, PyObject *module, PyObject *alloc, PyObject *stream,
                      PyObject *x)
{
    c->st = mv_get_state(module);
    c->torch_op = alloc == c->st->torch_op;
    c->linear_only = c->torch_op || alloc == c->st->torch_linear;
    if (alloc != c->st->torch_kind && !c->linear_only) {
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
                     "alloc: %s needs torch imported and x a torch.Tensor, got %.100s",
                     c->torch_op ? "TORCH_OP" : c->linear_only ? "TORCH_LINEAR" : "TORCH_KIND",
                     Py_TYPE(x)->tp_name);
        return -1;
    }
    c->torch_kind = 1;
    c->like = x;
    return 0;
}

mv_tensor *mv_call_import(mv_call *c, PyObject *obj, const char *name)
{
    return mv_call_import_extra(c, obj, name, 0);
}

mv_tensor *mv_call_import_extra(mv_call *c, PyObject *obj, const char *name, int extra)
{
    if (c->count >= MAX_CALL_TENSORS) {
        PyErr_Format(PyExc_RuntimeError, "%s: too many arrays in one call (internal limit %d)",
                     name, MAX_CALL_TENSORS);
        return NULL;
    }
    mv_tensor *t = &c->tensors[c->count];
    t->extra_dtypes = extra;
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
mv_tensor *mv_call_import_first(mv_call *c, PyObject *obj, const char *name)
{
    mv_tensor *x = mv_call_import(c, obj, name);
    if (x == NULL || !c->torch_kind || x->processor != MV_ON_CUDA)
        return x;
    const mv_dl_exchange_api *exchange = mv_torch_exchange(&c->st->torch);
    if (exchange != NULL) {
        void *stream = NULL;
        if (exchange->current_work_stream(MV_DL_CUDA, x->device_id, &stream) != 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_RuntimeError, "%s: torch did not give its current stream",
                             name);
            return NULL;
        }
        c->torch_stream = PyLong_FromVoidPtr(stream);
        if (c->torch_stream == NULL)
            return NULL;
        c->stream = c->torch_stream;
        return x;
    }
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

/* The exchange allocator's error report, as a Python exception (it runs with the GIL held). */
static void exchange_alloc_error(void *ctx, const char *kind, const char *message)
{
    PyErr_Format(strcmp(kind, "MemoryError") == 0 ? PyExc_MemoryError : PyExc_RuntimeError,
                 "%s: torch could not allocate it (%s: %s)", (const char *)ctx, kind, message);
}

/* A DLPack tensor's first element (NULL for an empty one without data: no offset applied). */
static char *dl_first(const mv_dl_tensor *t)
{
    return t->data ? (char *)t->data + t->byte_offset : NULL;
}

/* A new compact tensor of like's dtype and device (an activation dtype) from torch's exchange
   allocator (at::empty in C: the caching allocator and, under CUDA graph capture, the graph's
   pool), as the managed tensor it hands over; NULL with an exception on failure. */
static mv_dl_managed_tensor_versioned *exchange_alloc(const mv_dl_exchange_api *exchange,
                                                      const mv_tensor *like, const char *name,
                                                      int ndim, const int64_t *shape)
{
    int64_t dims[MV_MAX_DIMS + 1];
    memcpy(dims, shape, sizeof(int64_t) * (size_t)ndim);
    mv_dl_tensor prototype;
    memset(&prototype, 0, sizeof(prototype));
    prototype.device.device_type = like->processor == MV_ON_CUDA ? MV_DL_CUDA : MV_DL_CPU;
    prototype.device.device_id = like->processor == MV_ON_CUDA ? like->device_id : 0;
    prototype.ndim = ndim;
    prototype.dtype.code = like->dtype == MV_BFLOAT16 ? MV_DL_BFLOAT : MV_DL_FLOAT;
    prototype.dtype.bits = (uint8_t)(8 * mv_dtype_size(like->dtype));
    prototype.dtype.lanes = 1;
    prototype.shape = dims;
    mv_dl_managed_tensor_versioned *made = NULL;
    if (exchange->managed_tensor_allocator(&prototype, &made, (void *)name,
                                           exchange_alloc_error) != 0 || made == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "%s: torch could not allocate it", name);
        return NULL;
    }
    return made;
}

/* Whether torch's exchange table can allocate and wrap (torch >= 2.10, not switched off). */
static const mv_dl_exchange_api *exchange_allocator(mv_call *c)
{
    const mv_dl_exchange_api *exchange = mv_torch_exchange(&c->st->torch);
    return exchange != NULL && exchange->managed_tensor_allocator != NULL &&
                   exchange->managed_tensor_to_py_object_no_sync != NULL
               ? exchange
               : NULL;
}

/* A new compact torch tensor of x's dtype and device (an activation dtype), *data its first
   element: through torch's exchange table where it has one (without a Python call), else
   x.new_empty. */
static PyObject *torch_alloc(mv_call *c, const mv_tensor *like, const char *name, int ndim,
                             const int64_t *shape, char **data)
{
    const mv_dl_exchange_api *exchange = exchange_allocator(c);
    if (exchange != NULL) {
        mv_dl_managed_tensor_versioned *made = exchange_alloc(exchange, like, name, ndim, shape);
        if (made == NULL)
            return NULL;
        char *first = dl_first(&made->dl_tensor);
        void *obj = NULL;
        /* takes ownership of made, also on failure */
        if (exchange->managed_tensor_to_py_object_no_sync(made, &obj) != 0 || obj == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_RuntimeError, "%s: torch could not wrap the tensor it made",
                             name);
            return NULL;
        }
        *data = first;
        return (PyObject *)obj;
    }
    PyObject *shape_tuple = dims_tuple(ndim, shape);
    if (shape_tuple == NULL)
        return NULL;
    PyObject *obj = torch_new_empty(c, shape_tuple);
    Py_DECREF(shape_tuple);
    if (obj != NULL && torch_data_ptr(c, obj, name, data) < 0)
        Py_CLEAR(obj);
    return obj;
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
mv_tensor *mv_call_output(mv_call *c, PyObject *given, const char *name, const mv_tensor *like,
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
    } else if (c->torch_kind) {
        char *data;
        obj = torch_alloc(c, like, name, ndim, shape, &data);
        if (obj == NULL)
            return NULL;
        c->outputs[c->output_count++] = obj;
        if (!mv_torch_is_plain_tensor(&c->st->torch, obj)) {
            PyErr_Format(PyExc_TypeError, "%s: torch allocated a %.100s", name,
                         Py_TYPE(obj)->tp_name);
            return NULL;
        }
        int64_t strides[MV_MAX_DIMS + 1];
        compact_strides(ndim, shape, strides);
        mv_tensor *t = call_adopt_torch_output(c, obj, name, like, data, ndim, shape, strides);
        if (t != NULL)
            *result = Py_NewRef(obj);
        return t;
    } else if (c->alloc != NULL && c->alloc != Py_None) {
        PyObject *shape_tuple = dims_tuple(ndim, shape);
        if (shape_tuple == NULL)
            return NULL;
        obj = PyObject_CallOneArg(c->alloc, shape_tuple);
        Py_DECREF(shape_tuple);
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
    mv_tensor *t = mv_call_import(c, obj, name);
    if (t == NULL || mv_check_like(t, like) < 0 || mv_check_shape(t, ndim, shape) < 0 ||
        mv_check_writable(t) < 0)
        return NULL;
    c->fresh[c->count - 1] = given == NULL || given == Py_None;
    *result = Py_NewRef(obj);
    return t;
}

/* The layout of one new compact [..., heads, head_dim] tensor like x (its leading dimensions):
   shape and strides filled; returns its ndim (x->ndim + 1). */
static int qkv_block_layout(const mv_tensor *x, int64_t heads, int64_t head_dim, int64_t *shape,
                            int64_t *strides)
{
    const int ndim = x->ndim + 1;
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)(x->ndim - 1));
    shape[ndim - 2] = heads;
    shape[ndim - 1] = head_dim;
    compact_strides(ndim, shape, strides);
    return ndim;
}

/* ---- views of one new block as separate torch tensors, made without a torch call ----------- */

/* The block torch allocated (its managed tensor), shared by the views wrapped around it and
   released through torch's own deleter when the last of them goes. Deleters may run on any
   thread, with or without the GIL: the count is atomic and nothing here touches Python. */
typedef struct {
    atomic_long refs;
    mv_dl_managed_tensor_versioned *block;
} shared_block;

typedef struct {
    mv_dl_managed_tensor_versioned managed; /* first: the deleter receives its address */
    shared_block *shared;
    int64_t shape[MV_MAX_DIMS + 1];
    int64_t strides[MV_MAX_DIMS + 1];
} block_view;

static void shared_block_release(shared_block *s)
{
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        if (s->block->deleter)
            s->block->deleter(s->block);
        free(s);
    }
}

static void block_view_delete(mv_dl_managed_tensor_versioned *m)
{
    block_view *v = (block_view *)m;
    shared_block_release(v->shared);
    free(v);
}

/* A torch tensor over part of the block: its data at byte `offset`, shape and strides (in
   elements) as given. Its own storage starts there (torch's DLPack import makes one per
   tensor), and its deleter keeps the block until it goes. A new reference, or NULL. */
static PyObject *wrap_block_view(const mv_dl_exchange_api *exchange, shared_block *s,
                                 const char *name, int ndim, const int64_t *shape,
                                 const int64_t *strides, int64_t offset)
{
    block_view *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return PyErr_NoMemory();
    const mv_dl_tensor *whole = &s->block->dl_tensor;
    v->managed.version = s->block->version;
    v->managed.manager_ctx = v;
    v->managed.deleter = block_view_delete;
    v->managed.dl_tensor = *whole;
    char *first = dl_first(whole);
    v->managed.dl_tensor.data = first ? first + offset : NULL;
    v->managed.dl_tensor.byte_offset = 0;
    v->managed.dl_tensor.ndim = ndim;
    memcpy(v->shape, shape, sizeof(int64_t) * (size_t)ndim);
    memcpy(v->strides, strides, sizeof(int64_t) * (size_t)ndim);
    v->managed.dl_tensor.shape = v->shape;
    v->managed.dl_tensor.strides = v->strides;
    v->shared = s;
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    void *obj = NULL;
    /* takes ownership of v, also on failure */
    if (exchange->managed_tensor_to_py_object_no_sync(&v->managed, &obj) != 0 || obj == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "%s: torch could not wrap the tensor it made", name);
        return NULL;
    }
    return (PyObject *)obj;
}

/* q, k and v for the torch kind when none was given: views of one new [..., heads, head_dim]
   tensor split along the heads, as vLLM's qkv.split(...) gives them. One allocation instead of
   three saves a few microseconds per call, which at M = 1 is a large share of the call. Their
   rows are then N elements apart (contiguous when there is one row), the row strides the
   kernels take. With torch's exchange table the views are wrapped here (a split through torch
   costs a Python call, ~1 us); before it, torch's split_with_sizes makes them. objs receives
   new references (with q_only, q's alone: k and v, a scratch, are then held through q). */
int mv_call_torch_qkv_outputs(mv_call *c, const mv_tensor *x, int64_t num_heads,
                              int64_t num_kv_heads, int64_t head_dim, int q_only, mv_tensor **qkv,
                              PyObject **objs)
{
    static const char *const names[3] = {"q", "k", "v"};
    int64_t shape[MV_MAX_DIMS + 1], strides[MV_MAX_DIMS + 1];
    const int ndim = qkv_block_layout(x, num_heads + 2 * num_kv_heads, head_dim, shape, strides);
    const int64_t heads[3] = {num_heads, num_kv_heads, num_kv_heads};
    const int64_t element = (int64_t)mv_dtype_size(x->dtype);
    int rc = -1;
    PyObject *sizes = NULL, *dim = NULL, *views = NULL, *buffer = NULL;
    char *base;

    const mv_dl_exchange_api *exchange = exchange_allocator(c);
    if (exchange != NULL) {
        shared_block *s = calloc(1, sizeof(*s));
        if (s == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->block = exchange_alloc(exchange, x, "q", ndim, shape);
        if (s->block == NULL) {
            free(s);
            return -1;
        }
        atomic_init(&s->refs, 1); /* this function's, dropped at its end */
        base = dl_first(&s->block->dl_tensor);
        int64_t first_head = 0;
        for (int i = 0; i < 3; i++) {
            const int64_t offset = first_head * head_dim * element;
            shape[ndim - 2] = heads[i];
            first_head += heads[i];
            PyObject *owner = objs[0];
            if (i == 0 || !q_only) {
                objs[i] = wrap_block_view(exchange, s, names[i], ndim, shape, strides, offset);
                if (objs[i] == NULL)
                    break;
                owner = objs[i];
            }
            qkv[i] = call_adopt_torch_output(c, owner, names[i], x, base ? base + offset : NULL,
                                             ndim, shape, strides);
            if (qkv[i] == NULL)
                break;
            if (i == 2)
                rc = 0;
        }
        shared_block_release(s);
        return rc;
    }

    buffer = torch_alloc(c, x, "q", ndim, shape, &base);
    if (buffer == NULL)
        goto done;
    sizes = Py_BuildValue("[LLL]", (long long)heads[0], (long long)heads[1], (long long)heads[2]);
    dim = PyLong_FromLong(-2);
    if (sizes == NULL || dim == NULL)
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
        if (i == 0 || !q_only)
            objs[i] = Py_NewRef(view);
        first_head += heads[i];
    }
    rc = 0;
done:
    Py_XDECREF(buffer);
    Py_XDECREF(sizes);
    Py_XDECREF(dim);
    Py_XDECREF(views);
    return rc;
}

int mv_call_torch_packed_output(mv_call *c, const mv_tensor *x, int64_t heads, int64_t head_dim,
                                char **base, PyObject **obj)
{
    int64_t shape[MV_MAX_DIMS + 1], strides[MV_MAX_DIMS + 1];
    const int ndim = qkv_block_layout(x, heads, head_dim, shape, strides);
    PyObject *buffer = torch_alloc(c, x, "q", ndim, shape, base);
    if (buffer == NULL)
        return -1;
    c->outputs[c->output_count++] = buffer;
    if (call_adopt_torch_output(c, buffer, "q", x, *base, ndim, shape, strides) == NULL)
        return -1;
    *obj = Py_NewRef(buffer);
    return 0;
}

/* Outputs overlap no input and no other output, except the listed exact in-place aliases. */
int mv_check_outputs_disjoint(mv_call *c, int first_output, const int *alias_of)
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
/* ---- launching ----------------------------------------------------------------------------- */

int mv_call_launch(const char *op, const mv_call *c, const mv_tensor *x, const void *args,
                   mv_cpu_kernel on_cpu, mv_cuda_kernel on_cuda)
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
        err = (cudaError_t)on_cuda(args, &c->opts, (void *)(intptr_t)s);
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

