/*
 * buffer.c: minivllm.Buffer, an owned array exported through DLPack (versioned and legacy).
 */
#include "binding/buffer.h"

#include <stdlib.h>
#include <string.h>

#ifdef MINIVLLM_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct {
    PyObject_HEAD
    void *data;
    mv_processor processor;
    int device_id;
    mv_dtype dtype;
    int ndim;
    int64_t shape[MV_MAX_DIMS];
    int64_t strides[MV_MAX_DIMS];
    intptr_t stream; /* CUDA stream of the last write (0 = legacy default) */
} mv_buffer;

/* What an exported capsule points to: the managed tensor plus nothing else; manager_ctx holds a
   strong reference to the Buffer, so the memory outlives every consumer. */
static void release_owner(void *ctx)
{
    /* Deleters may run on any thread, with or without the GIL. */
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_DECREF((PyObject *)ctx);
    PyGILState_Release(gil);
}

static void delete_versioned(mv_dl_managed_tensor_versioned *m)
{
    release_owner(m->manager_ctx);
    free(m);
}

static void delete_legacy(mv_dl_managed_tensor *m)
{
    release_owner(m->manager_ctx);
    free(m);
}

/* A capsule nobody consumed still owns its managed tensor. */
static void capsule_destructor_versioned(PyObject *capsule)
{
    if (PyCapsule_IsValid(capsule, "dltensor_versioned")) {
        mv_dl_managed_tensor_versioned *m = PyCapsule_GetPointer(capsule, "dltensor_versioned");
        if (m && m->deleter)
            m->deleter(m);
    }
}

static void capsule_destructor_legacy(PyObject *capsule)
{
    if (PyCapsule_IsValid(capsule, "dltensor")) {
        mv_dl_managed_tensor *m = PyCapsule_GetPointer(capsule, "dltensor");
        if (m && m->deleter)
            m->deleter(m);
    }
}

static mv_dl_tensor describe(mv_buffer *self)
{
    mv_dl_tensor t;
    memset(&t, 0, sizeof(t));
    t.data = self->data;
    t.device.device_type = self->processor == MV_ON_CUDA ? MV_DL_CUDA : MV_DL_CPU;
    t.device.device_id = self->processor == MV_ON_CUDA ? self->device_id : 0;
    t.ndim = self->ndim;
    t.dtype.code = self->dtype == MV_BFLOAT16 ? MV_DL_BFLOAT : MV_DL_FLOAT;
    t.dtype.bits = (uint8_t)(8 * mv_dtype_size(self->dtype));
    t.dtype.lanes = 1;
    t.shape = self->shape;
    t.strides = self->strides;
    t.byte_offset = 0;
    return t;
}

#ifdef MINIVLLM_WITH_CUDA
/* Make `consumer` wait for the work already queued on the buffer's stream. */
static int order_after_write(mv_buffer *self, intptr_t consumer)
{
    cudaStream_t producer = (cudaStream_t)self->stream;
    if (consumer == -1 || consumer == self->stream ||
        (consumer <= 1 && self->stream <= 1))
        return 0;
    int previous = 0;
    cudaEvent_t event = NULL;
    cudaError_t err = cudaGetDevice(&previous);
    if (err == cudaSuccess && previous != self->device_id)
        err = cudaSetDevice(self->device_id);
    if (err == cudaSuccess)
        err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    if (err == cudaSuccess)
        err = cudaEventRecord(event, producer);
    if (err == cudaSuccess)
        err = cudaStreamWaitEvent((cudaStream_t)consumer, event, 0);
    if (event)
        cudaEventDestroy(event);
    if (previous != self->device_id)
        cudaSetDevice(previous);
    if (err != cudaSuccess) {
        PyErr_Format(PyExc_BufferError, "Buffer.__dlpack__: CUDA error ordering streams: %s",
                     cudaGetErrorString(err));
        return -1;
    }
    return 0;
}
#endif

static PyObject *buffer_dlpack(PyObject *op, PyObject *args, PyObject *kwargs)
{
    mv_buffer *self = (mv_buffer *)op;
    static char *keywords[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:__dlpack__", keywords, &stream,
                                     &max_version, &dl_device, &copy))
        return NULL;
    if (copy != Py_None && PyObject_IsTrue(copy) == 1) {
        PyErr_SetString(PyExc_BufferError, "Buffer.__dlpack__: copy=True is not supported");
        return NULL;
    }
    if (dl_device != Py_None) {
        int type = -1, id = -1;
        if (!PyArg_ParseTuple(dl_device, "ii", &type, &id))
            return NULL;
        mv_dl_tensor own = describe(self);
        if (type != own.device.device_type || id != own.device.device_id) {
            PyErr_SetString(PyExc_BufferError,
                            "Buffer.__dlpack__: exporting to another device is not supported");
            return NULL;
        }
    }
    if (stream != Py_None && self->processor == MV_ON_CUDA) {
#ifdef MINIVLLM_WITH_CUDA
        long long s = PyLong_AsLongLong(stream);
        if (s == -1 && PyErr_Occurred())
            return NULL;
        if (order_after_write(self, (intptr_t)s) < 0)
            return NULL;
#endif
    }
    int versioned = 0;
    if (max_version != Py_None) {
        unsigned major = 0, minor = 0;
        if (!PyArg_ParseTuple(max_version, "II", &major, &minor))
            return NULL;
        versioned = major >= 1;
    }
    if (versioned) {
        mv_dl_managed_tensor_versioned *m = calloc(1, sizeof(*m));
        if (m == NULL)
            return PyErr_NoMemory();
        m->version.major = MV_DLPACK_MAJOR;
        m->version.minor = MV_DLPACK_MINOR;
        m->manager_ctx = Py_NewRef(op);
        m->deleter = delete_versioned;
        m->flags = 0;
        m->dl_tensor = describe(self);
        PyObject *capsule = PyCapsule_New(m, "dltensor_versioned", capsule_destructor_versioned);
        if (capsule == NULL)
            delete_versioned(m);
        return capsule;
    }
    mv_dl_managed_tensor *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return PyErr_NoMemory();
    m->manager_ctx = Py_NewRef(op);
    m->deleter = delete_legacy;
    m->dl_tensor = describe(self);
    PyObject *capsule = PyCapsule_New(m, "dltensor", capsule_destructor_legacy);
    if (capsule == NULL)
        delete_legacy(m);
    return capsule;
}

static PyObject *buffer_dlpack_device(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    mv_dl_tensor t = describe((mv_buffer *)op);
    return Py_BuildValue("(ii)", (int)t.device.device_type, (int)t.device.device_id);
}

static PyObject *buffer_get_shape(PyObject *op, void *Py_UNUSED(closure))
{
    mv_buffer *self = (mv_buffer *)op;
    PyObject *shape = PyTuple_New(self->ndim);
    for (int d = 0; shape && d < self->ndim; d++) {
        PyObject *size = PyLong_FromLongLong(self->shape[d]);
        if (size == NULL) {
            Py_CLEAR(shape);
            break;
        }
        PyTuple_SET_ITEM(shape, d, size);
    }
    return shape;
}

static PyObject *buffer_get_dtype(PyObject *op, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(mv_dtype_name(((mv_buffer *)op)->dtype));
}

static PyObject *buffer_get_device(PyObject *op, void *Py_UNUSED(closure))
{
    mv_buffer *self = (mv_buffer *)op;
    if (self->processor == MV_ON_CUDA)
        return PyUnicode_FromFormat("cuda:%d", self->device_id);
    return PyUnicode_FromString("cpu");
}

static PyObject *buffer_repr(PyObject *op)
{
    mv_buffer *self = (mv_buffer *)op;
    char shape[256];
    mv_format_dims(shape, sizeof(shape), self->shape, self->ndim);
    return PyUnicode_FromFormat("minivllm.Buffer(shape=%s, dtype=%s, device=%s)", shape,
                                mv_dtype_name(self->dtype),
                                self->processor == MV_ON_CUDA ? "cuda" : "cpu");
}

static void buffer_dealloc(PyObject *op)
{
    mv_buffer *self = (mv_buffer *)op;
    PyTypeObject *type = Py_TYPE(op);
    if (self->data) {
        if (self->processor == MV_ON_CUDA) {
#ifdef MINIVLLM_WITH_CUDA
            /* cudaFree waits for work still using the memory. */
            int previous = 0;
            if (cudaGetDevice(&previous) == cudaSuccess && previous != self->device_id)
                cudaSetDevice(self->device_id);
            cudaFree(self->data);
            if (previous != self->device_id)
                cudaSetDevice(previous);
#endif
        } else {
            free(self->data);
        }
    }
    type->tp_free(op);
    Py_DECREF(type);
}

static PyMethodDef buffer_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))buffer_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None)\n--\n\n"
     "Export as a DLPack capsule (versioned when max_version >= (1, 0))."},
    {"__dlpack_device__", buffer_dlpack_device, METH_NOARGS,
     "__dlpack_device__()\n--\n\n(device_type, device_id) as DLPack numbers them."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef buffer_getset[] = {
    {"shape", buffer_get_shape, NULL, "Shape as a tuple.", NULL},
    {"dtype", buffer_get_dtype, NULL, "'float32', 'float16' or 'bfloat16'.", NULL},
    {"device", buffer_get_device, NULL, "'cpu' or 'cuda:N'.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot buffer_slots[] = {
    {Py_tp_dealloc, buffer_dealloc},
    {Py_tp_repr, buffer_repr},
    {Py_tp_methods, buffer_methods},
    {Py_tp_getset, buffer_getset},
    {Py_tp_doc, "An array owned by minivllm, readable by any DLPack consumer "
                "(numpy.from_dlpack, torch.from_dlpack, jax.dlpack.from_dlpack, ...)."},
    {0, NULL},
};

static PyType_Spec buffer_spec = {
    .name = "minivllm.Buffer",
    .basicsize = sizeof(mv_buffer),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = buffer_slots,
};

PyTypeObject *mv_buffer_type_create(PyObject *module)
{
    return (PyTypeObject *)PyType_FromModuleAndSpec(module, &buffer_spec, NULL);
}

PyObject *mv_buffer_new(PyTypeObject *type, mv_dtype dtype, mv_processor processor,
                        int device_id, int ndim, const int64_t *shape)
{
    mv_buffer *self = (mv_buffer *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->processor = processor;
    self->device_id = device_id;
    self->dtype = dtype;
    self->ndim = ndim;
    size_t count = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        self->shape[d] = shape[d];
        self->strides[d] = (int64_t)count;
        if (__builtin_mul_overflow(count, (size_t)(shape[d] ? shape[d] : 1), &count)) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
    }
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0)
            count = 0;
    /* One byte at least, so an empty buffer still has a valid, unique pointer. */
    size_t bytes = count * (size_t)mv_dtype_size(dtype);
    bytes = bytes ? bytes : 1;
    if (processor == MV_ON_CUDA) {
#ifdef MINIVLLM_WITH_CUDA
        int previous = 0;
        cudaError_t err = cudaGetDevice(&previous);
        if (err == cudaSuccess && previous != device_id)
            err = cudaSetDevice(device_id);
        if (err == cudaSuccess)
            err = cudaMalloc(&self->data, bytes);
        if (previous != device_id)
            cudaSetDevice(previous);
        if (err != cudaSuccess) {
            self->data = NULL;
            Py_DECREF(self);
            PyErr_Format(PyExc_MemoryError, "minivllm: cudaMalloc of %zu bytes failed: %s", bytes,
                         cudaGetErrorString(err));
            return NULL;
        }
#else
        Py_DECREF(self);
        PyErr_SetString(PyExc_RuntimeError, "minivllm was built without CUDA support");
        return NULL;
#endif
    } else {
        /* 64-byte alignment keeps vector loads on every path. */
        self->data = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (self->data == NULL) {
            Py_DECREF(self);
            return PyErr_NoMemory();
        }
    }
    return (PyObject *)self;
}

void mv_buffer_set_stream(PyObject *buffer, intptr_t stream)
{
    ((mv_buffer *)buffer)->stream = stream;
}
