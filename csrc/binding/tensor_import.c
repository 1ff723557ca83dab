/*
 * tensor_import.c: DLPack / __array_interface__ import and the argument checks shared by every op.
 */
#include "binding/tensor_import.h"

#include <string.h>

static const char VERSIONED_NAME[] = "dltensor_versioned";
static const char VERSIONED_USED_NAME[] = "used_dltensor_versioned";
static const char LEGACY_NAME[] = "dltensor";
static const char LEGACY_USED_NAME[] = "used_dltensor";

int mv_import_names_init(mv_import_names *n)
{
    memset(n, 0, sizeof(*n));
    n->dlpack = PyUnicode_InternFromString("__dlpack__");
    n->dlpack_device = PyUnicode_InternFromString("__dlpack_device__");
    n->array_interface = PyUnicode_InternFromString("__array_interface__");
    n->dtype = PyUnicode_InternFromString("dtype");
    n->name = PyUnicode_InternFromString("name");
    n->kwnames_stream_version = Py_BuildValue("(ss)", "stream", "max_version");
    n->kwnames_version = Py_BuildValue("(s)", "max_version");
    n->kwnames_stream = Py_BuildValue("(s)", "stream");
    n->max_version = Py_BuildValue("(ii)", MV_DLPACK_MAJOR, MV_DLPACK_MINOR);
    n->array_struct = PyUnicode_InternFromString("__array_struct__");
    if (!n->array_struct || !n->dlpack || !n->dlpack_device || !n->array_interface || !n->dtype || !n->name ||
        !n->kwnames_stream_version || !n->kwnames_version || !n->kwnames_stream ||
        !n->max_version) {
        mv_import_names_clear(n);
        return -1;
    }
    return 0;
}

void mv_import_names_clear(mv_import_names *n)
{
    Py_CLEAR(n->dlpack);
    Py_CLEAR(n->dlpack_device);
    Py_CLEAR(n->array_interface);
    Py_CLEAR(n->dtype);
    Py_CLEAR(n->name);
    Py_CLEAR(n->kwnames_stream_version);
    Py_CLEAR(n->kwnames_version);
    Py_CLEAR(n->kwnames_stream);
    Py_CLEAR(n->max_version);
    Py_CLEAR(n->array_struct);
    Py_CLEAR(n->bf16_dtype);
}

const char *mv_dtype_name(mv_dtype dt)
{
    switch (dt) {
    case MV_FLOAT32: return "float32";
    case MV_FLOAT16: return "float16";
    case MV_BFLOAT16: return "bfloat16";
    case MV_INT32: return "int32";
    case MV_INT64: return "int64";
    case MV_FLOAT8_E4M3: return "float8_e4m3fn";
    }
    return "?";
}

void mv_format_dims(char *buf, size_t size, const int64_t *dims, int ndim)
{
    /* Python's tuple spelling: "(2, 3)", "(5,)", "()". */
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < ndim && used < size; i++) {
        int wrote = snprintf(buf + used, size - used, "%s%lld", i ? ", " : "(", (long long)dims[i]);
        used += wrote > 0 ? (size_t)wrote : 0;
    }
    if (used < size)
        snprintf(buf + used, size - used, "%s", ndim == 0 ? "()" : ndim == 1 ? ",)" : ")");
}

/* 1 when obj has the attribute, 0 when it has not, -1 with an exception on other errors. */
static int has_attribute(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value) {
        Py_DECREF(value);
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* ---- filling an mv_tensor from a DLTensor ---------------------------------------------- */

static void describe_dl_dtype(char *buf, size_t size, mv_dl_dtype dt)
{
    const char *kind = "code";
    switch (dt.code) {
    case MV_DL_INT: kind = "int"; break;
    case MV_DL_UINT: kind = "uint"; break;
    case MV_DL_FLOAT: kind = "float"; break;
    case MV_DL_BFLOAT: kind = "bfloat"; break;
    case MV_DL_COMPLEX: kind = "complex"; break;
    case MV_DL_BOOL: snprintf(buf, size, "bool"); return;
    default: break;
    }
    if (dt.lanes != 1)
        snprintf(buf, size, "%s%u x%u", kind, (unsigned)dt.bits, (unsigned)dt.lanes);
    else
        snprintf(buf, size, "%s%u", kind, (unsigned)dt.bits);
}

static int unsupported_dtype(const char *name, const char *what)
{
    PyErr_Format(PyExc_TypeError,
                 "%s: unsupported dtype %s; expected float32, float16 or bfloat16", name, what);
    return -1;
}

/* The bytes the tensor spans, so overlap checks are exact for any strides (negative too). */
static int compute_extent(mv_tensor *t)
{
    const int64_t elem = (int64_t)mv_dtype_size(t->dtype);
    int64_t lo = 0, hi = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) {
            t->begin = t->end = (uintptr_t)t->data;
            return 0;
        }
    }
    for (int d = 0; d < t->ndim; d++) {
        int64_t span;
        if (__builtin_mul_overflow(t->shape[d] - 1, t->strides[d], &span) ||
            __builtin_mul_overflow(span, elem, &span) ||
            (span > 0 ? __builtin_add_overflow(hi, span, &hi)
                      : __builtin_add_overflow(lo, span, &lo))) {
            PyErr_Format(PyExc_ValueError, "%s: shape and strides overflow the address space",
                         t->name);
            return -1;
        }
    }
    t->begin = (uintptr_t)t->data + (uintptr_t)lo;
    t->end = (uintptr_t)t->data + (uintptr_t)hi + (uintptr_t)elem;
    return 0;
}

static int fill_from_dl(mv_tensor *t, const mv_dl_tensor *dl, int readonly)
{
    char what[64];
    if (dl->ndim < 0 || dl->ndim > MV_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: %d dimensions is more than minivllm supports (%d)",
                     t->name, (int)dl->ndim, MV_MAX_DIMS);
        return -1;
    }
    switch (dl->device.device_type) {
    case MV_DL_CPU:
    case MV_DL_CUDA_HOST:
        t->processor = MV_ON_CPU;
        t->device_id = 0;
        break;
    case MV_DL_CUDA:
    case MV_DL_CUDA_MANAGED:
        t->processor = MV_ON_CUDA;
        t->device_id = dl->device.device_id;
        break;
    default:
        PyErr_Format(PyExc_ValueError,
                     "%s: device type %d is not supported; expected the CPU or a CUDA device",
                     t->name, (int)dl->device.device_type);
        return -1;
    }
    if (dl->dtype.lanes == 1 && dl->dtype.code == MV_DL_FLOAT && dl->dtype.bits == 32)
        t->dtype = MV_FLOAT32;
    else if (dl->dtype.lanes == 1 && dl->dtype.code == MV_DL_FLOAT && dl->dtype.bits == 16)
        t->dtype = MV_FLOAT16;
    else if (dl->dtype.lanes == 1 && dl->dtype.code == MV_DL_BFLOAT && dl->dtype.bits == 16)
        t->dtype = MV_BFLOAT16;
    else if ((t->extra_dtypes & MV_ACCEPT_INDEX) && dl->dtype.lanes == 1 &&
             dl->dtype.code == MV_DL_INT && (dl->dtype.bits == 32 || dl->dtype.bits == 64))
        t->dtype = dl->dtype.bits == 32 ? MV_INT32 : MV_INT64;
    else if ((t->extra_dtypes & MV_ACCEPT_FP8) && dl->dtype.lanes == 1 &&
             dl->dtype.code == MV_DL_FLOAT8_E4M3FN && dl->dtype.bits == 8)
        t->dtype = MV_FLOAT8_E4M3;
    else {
        describe_dl_dtype(what, sizeof(what), dl->dtype);
        return unsupported_dtype(t->name, what);
    }
    t->ndim = (int)dl->ndim;
    int64_t compact = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        const int64_t size = dl->shape[d];
        if (size < 0) {
            PyErr_Format(PyExc_ValueError, "%s: negative size in dimension %d", t->name, d);
            return -1;
        }
        t->shape[d] = size;
        t->strides[d] = dl->strides ? dl->strides[d] : compact;
        if (__builtin_mul_overflow(compact, size ? size : 1, &compact)) {
            PyErr_Format(PyExc_ValueError, "%s: shape overflows", t->name);
            return -1;
        }
    }
    t->data = (char *)dl->data + dl->byte_offset;
    t->readonly = readonly;
    return compute_extent(t);
}

/* Take ownership of a DLPack capsule: rename it so nobody else consumes it, and keep the
   managed tensor until mv_tensor_release calls its deleter. */
static int consume_capsule(PyObject *capsule, mv_tensor *t)
{
    const char *cname = PyCapsule_GetName(capsule);
    if (cname == NULL && PyErr_Occurred())
        return -1;
    if (cname && strcmp(cname, VERSIONED_NAME) == 0) {
        mv_dl_managed_tensor_versioned *m = PyCapsule_GetPointer(capsule, VERSIONED_NAME);
        if (m == NULL)
            return -1;
        if (m->version.major != MV_DLPACK_MAJOR) {
            /* Not ours to consume: the capsule's own destructor frees it. */
            PyErr_Format(PyExc_BufferError,
                         "%s: DLPack capsule has version %u.%u; minivllm reads %d.x", t->name,
                         (unsigned)m->version.major, (unsigned)m->version.minor,
                         MV_DLPACK_MAJOR);
            return -1;
        }
        if (PyCapsule_SetName(capsule, VERSIONED_USED_NAME) < 0)
            return -1;
        t->versioned = m;
        return fill_from_dl(t, &m->dl_tensor, (m->flags & MV_DL_FLAG_READ_ONLY) != 0);
    }
    if (cname && strcmp(cname, LEGACY_NAME) == 0) {
        mv_dl_managed_tensor *m = PyCapsule_GetPointer(capsule, LEGACY_NAME);
        if (m == NULL)
            return -1;
        if (PyCapsule_SetName(capsule, LEGACY_USED_NAME) < 0)
            return -1;
        t->legacy = m;
        return fill_from_dl(t, &m->dl_tensor, 0);
    }
    if (cname && (strcmp(cname, VERSIONED_USED_NAME) == 0 || strcmp(cname, LEGACY_USED_NAME) == 0)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: this DLPack capsule was already consumed (a capsule can be used once)",
                     t->name);
        return -1;
    }
    PyErr_Format(PyExc_TypeError, "%s: a capsule named '%s' is not a DLPack capsule", t->name,
                 cname ? cname : "(null)");
    return -1;
}

/* What a producer returned (a new reference, released here): consumed when it is a capsule. */
static int consume_returned_capsule(PyObject *capsule, const char *producer, mv_tensor *t)
{
    if (!PyCapsule_CheckExact(capsule)) {
        PyErr_Format(PyExc_TypeError, "%s: %s returned %.100s, not a DLPack capsule", t->name,
                     producer, Py_TYPE(capsule)->tp_name);
        Py_DECREF(capsule);
        return -1;
    }
    const int rc = consume_capsule(capsule, t);
    Py_DECREF(capsule);
    return rc;
}

/* ---- __array_interface__ (NumPy arrays DLPack cannot carry, e.g. ml_dtypes.bfloat16) ---- */

static void rewrap_exception(PyObject *type, const char *name, const char *what);

static int import_array_interface(const mv_import_names *names, PyObject *obj, mv_tensor *t)
{
    int rc = -1;
    PyObject *dtype = NULL, *dtype_name = NULL;
    PyObject *iface = PyObject_GetAttr(obj, names->array_interface);
    if (iface == NULL)
        return -1;
    if (!PyDict_Check(iface)) {
        PyErr_Format(PyExc_TypeError, "%s: __array_interface__ is not a dict", t->name);
        goto done;
    }
    PyObject *typestr = PyDict_GetItemString(iface, "typestr");
    PyObject *shape = PyDict_GetItemString(iface, "shape");
    PyObject *data = PyDict_GetItemString(iface, "data");
    PyObject *strides = PyDict_GetItemString(iface, "strides");
    PyObject *mask = PyDict_GetItemString(iface, "mask");
    if (!typestr || !PyUnicode_Check(typestr) || !shape || !PyTuple_Check(shape) || !data ||
        !PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2 || (mask && mask != Py_None) ||
        (strides && strides != Py_None && !PyTuple_Check(strides))) {
        PyErr_Format(PyExc_TypeError,
                     "%s: unsupported __array_interface__ (expected version 3 with a (pointer, "
                     "read-only) data tuple and no mask)", t->name);
        goto done;
    }
    /* bfloat16 has no array-interface type code: NumPy reports it as raw 2-byte void, so
       the dtype's name tells it apart. */
    const char *ts = PyUnicode_AsUTF8(typestr);
    if (ts == NULL)
        goto done;
    dtype = PyObject_GetAttr(obj, names->dtype);
    if (dtype)
        dtype_name = PyObject_GetAttr(dtype, names->name);
    PyErr_Clear();
    const char *dn = dtype_name && PyUnicode_Check(dtype_name) ? PyUnicode_AsUTF8(dtype_name) : NULL;
    const int native = ts[0] == '<' || ts[0] == '|' || ts[0] == '=';
    if (ts[0] == '>') {
        PyErr_Format(PyExc_TypeError,
                     "%s: big-endian byte order ('%s') is not supported; the kernels read "
                     "little-endian (native) data: convert with a.astype(a.dtype.newbyteorder('='))",
                     t->name, ts);
        goto done;
    }
    if (dn && strcmp(dn, "bfloat16") == 0 && strcmp(ts + 1, "V2") == 0 && native) {
        t->dtype = MV_BFLOAT16;
        if (((mv_import_names *)names)->bf16_dtype == NULL && strcmp(Py_TYPE(obj)->tp_name, "numpy.ndarray") == 0)
            ((mv_import_names *)names)->bf16_dtype = Py_NewRef(dtype);
    }
    else if (native && strcmp(ts + 1, "f4") == 0)
        t->dtype = MV_FLOAT32;
    else if (native && strcmp(ts + 1, "f2") == 0)
        t->dtype = MV_FLOAT16;
    else if ((t->extra_dtypes & MV_ACCEPT_INDEX) && native && (strcmp(ts + 1, "i4") == 0 || strcmp(ts + 1, "i8") == 0))
        t->dtype = ts[2] == '4' ? MV_INT32 : MV_INT64;
    else if ((t->extra_dtypes & MV_ACCEPT_FP8) && dn && strcmp(dn, "float8_e4m3fn") == 0 && strcmp(ts + 1, "V1") == 0)
        t->dtype = MV_FLOAT8_E4M3;
    else {
        unsupported_dtype(t->name, dn ? dn : ts);
        goto done;
    }
    const Py_ssize_t ndim = PyTuple_GET_SIZE(shape);
    if (ndim > MV_MAX_DIMS || (strides && strides != Py_None && PyTuple_GET_SIZE(strides) != ndim)) {
        PyErr_Format(PyExc_ValueError, "%s: unsupported number of dimensions (%zd)", t->name, ndim);
        goto done;
    }
    const int64_t elem = (int64_t)mv_dtype_size(t->dtype);
    t->ndim = (int)ndim;
    int64_t compact = 1;
    for (Py_ssize_t d = ndim - 1; d >= 0; d--) {
        const long long size = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
        if (size == -1 && PyErr_Occurred()) {
            rewrap_exception(PyExc_ValueError, t->name, "shape does not fit a 64-bit integer");
            goto done;
        }
        long long stride_bytes = compact * elem;
        if (strides && strides != Py_None) {
            stride_bytes = PyLong_AsLongLong(PyTuple_GET_ITEM(strides, d));
            if (stride_bytes == -1 && PyErr_Occurred()) {
                rewrap_exception(PyExc_ValueError, t->name, "stride does not fit a 64-bit integer");
                goto done;
            }
        }
        if (size < 0 || stride_bytes % elem != 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s: stride of %lld bytes is not a multiple of the %lld-byte element",
                         t->name, stride_bytes, (long long)elem);
            goto done;
        }
        t->shape[d] = size;
        t->strides[d] = stride_bytes / elem;
        compact *= size ? size : 1;
    }
    void *ptr = PyLong_AsVoidPtr(PyTuple_GET_ITEM(data, 0));
    if (ptr == NULL && PyErr_Occurred())
        goto done;
    const int readonly = PyObject_IsTrue(PyTuple_GET_ITEM(data, 1));
    if (readonly < 0)
        goto done;
    t->data = ptr;
    t->readonly = readonly;
    t->processor = MV_ON_CPU;
    t->device_id = 0;
    if (compute_extent(t) < 0)
        goto done;
    Py_INCREF(obj);
    t->owner = obj;
    rc = 0;
done:
    Py_XDECREF(dtype_name);
    Py_XDECREF(dtype);
    Py_DECREF(iface);
    return rc;
}

/* ---- plain NumPy arrays: __array_struct__ ------------------------------------------------- */

/* The C form of the array interface (NumPy's PyArrayInterface, documented as part of the array
   interface protocol, version 3). */
typedef struct {
    int two;
    int nd;
    char typekind;
    int itemsize;
    int flags;
    Py_intptr_t *shape;
    Py_intptr_t *strides;
    void *data;
    PyObject *descr;
} mv_array_interface_struct;

enum { MV_NPY_ALIGNED = 0x100, MV_NPY_NOTSWAPPED = 0x200, MV_NPY_WRITEABLE = 0x400 };

/* A plain numpy.ndarray of float32, float16 or the bfloat16 dtype seen before, read through
   __array_struct__: one attribute read instead of __dlpack__'s capsule (and, for bfloat16, its
   refusal and the __array_interface__ dict), about 0.15 us an array, a third of a small CPU
   call's import. 1 when imported, 0 when obj is not one (the general path takes it and reports
   what is wrong), -1 on error. */
static int import_plain_ndarray(const mv_import_names *names, PyObject *obj, mv_tensor *t)
{
    if (strcmp(Py_TYPE(obj)->tp_name, "numpy.ndarray") != 0)
        return 0;
    PyObject *capsule = PyObject_GetAttr(obj, names->array_struct);
    if (capsule == NULL) {
        PyErr_Clear();
        return 0;
    }
    int rc = 0;
    const mv_array_interface_struct *s =
        PyCapsule_CheckExact(capsule) ? PyCapsule_GetPointer(capsule, NULL) : NULL;
    mv_dtype dtype = MV_FLOAT32;
    if (s == NULL) {
        PyErr_Clear();
    } else if (s->two == 2 && (s->flags & MV_NPY_NOTSWAPPED) && s->nd >= 0 &&
               s->nd <= MV_MAX_DIMS) {
        if (s->typekind == 'f' && (s->itemsize == 4 || s->itemsize == 2)) {
            dtype = s->itemsize == 4 ? MV_FLOAT32 : MV_FLOAT16;
            rc = 1;
        } else if (s->typekind == 'V' && s->itemsize == 2 && names->bf16_dtype != NULL) {
            /* bfloat16 is raw 2-byte void to the array interface: the dtype tells it apart */
            PyObject *dt = PyObject_GetAttr(obj, names->dtype);
            if (dt == NULL)
                PyErr_Clear();
            rc = dt != NULL && dt == names->bf16_dtype;
            dtype = MV_BFLOAT16;
            Py_XDECREF(dt);
        }
    }
    if (rc == 1) {
        const int64_t elem = s->itemsize;
        int64_t compact = 1;
        for (int d = s->nd - 1; d >= 0; d--) {
            const int64_t stride_bytes = s->strides ? (int64_t)s->strides[d] : compact * elem;
            if (stride_bytes % elem != 0) {
                rc = 0; /* strides of part of an element: the general path reports them */
                break;
            }
            t->shape[d] = (int64_t)s->shape[d];
            t->strides[d] = stride_bytes / elem;
            compact *= s->shape[d] ? (int64_t)s->shape[d] : 1;
        }
    }
    if (rc == 1) {
        t->ndim = s->nd;
        t->dtype = dtype;
        t->data = s->data;
        t->readonly = !(s->flags & MV_NPY_WRITEABLE);
        t->processor = MV_ON_CPU;
        t->device_id = 0;
        if (compute_extent(t) < 0)
            rc = -1;
        else
            t->owner = Py_NewRef(obj);
    }
    Py_DECREF(capsule);
    return rc;
}

/* ---- __dlpack__ ------------------------------------------------------------------------- */

/* Re-raise the pending exception as `type` with the argument's name, chaining the original. */
static void rewrap_exception(PyObject *type, const char *name, const char *what)
{
    /* Interrupts and memory errors pass through untouched. */
    if (!PyErr_ExceptionMatches(PyExc_Exception) || PyErr_ExceptionMatches(PyExc_MemoryError))
        return;
    PyObject *etype, *evalue, *etb;
    PyErr_Fetch(&etype, &evalue, &etb);
    PyErr_NormalizeException(&etype, &evalue, &etb);
    PyErr_Format(type, "%s: %s: %S", name, what, evalue ? evalue : Py_None);
    if (evalue) {
        PyObject *t2, *v2, *tb2;
        PyErr_Fetch(&t2, &v2, &tb2);
        PyErr_NormalizeException(&t2, &v2, &tb2);
        if (etb)
            PyException_SetTraceback(evalue, etb);
        PyException_SetCause(v2, evalue); /* steals evalue */
        evalue = NULL;
        PyErr_Restore(t2, v2, tb2);
    }
    Py_XDECREF(etype);
    Py_XDECREF(evalue);
    Py_XDECREF(etb);
}

/* (device_type, device_id) from __dlpack_device__; CPU when the object lacks the method. */
static int query_device(const mv_import_names *names, PyObject *obj, const char *name,
                        int *device_type)
{
    *device_type = MV_DL_CPU;
    PyObject *dev = PyObject_CallMethodNoArgs(obj, names->dlpack_device);
    if (dev == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            return 0;
        }
        rewrap_exception(PyExc_TypeError, name, "__dlpack_device__() failed");
        return -1;
    }
    int ok = PyTuple_Check(dev) && PyTuple_GET_SIZE(dev) == 2;
    long type = ok ? PyLong_AsLong(PyTuple_GET_ITEM(dev, 0)) : -1;
    Py_DECREF(dev);
    if (!ok || (type == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s: __dlpack_device__() must return a (device_type, device_id) tuple",
                     name);
        return -1;
    }
    *device_type = (int)type;
    return 0;
}

static PyObject *call_dlpack(const mv_import_names *names, PyObject *obj, const char *name,
                             PyObject *stream)
{
    int device_type;
    if (query_device(names, obj, name, &device_type) < 0)
        return NULL;
    /* CPU producers (NumPy) accept only stream=None, so the stream goes to CUDA ones only. */
    const int wants_stream = device_type == MV_DL_CUDA || device_type == MV_DL_CUDA_MANAGED;
    PyObject *stream_arg = NULL;
    if (wants_stream) {
        /* DLPack reserves 0; None and 1 both mean the legacy default stream. */
        if (stream == NULL || stream == Py_None) {
            stream_arg = PyLong_FromLong(1);
        } else {
            long long s = PyLong_AsLongLong(stream);
            if (s == -1 && PyErr_Occurred())
                return NULL;
            stream_arg = s == 0 ? PyLong_FromLong(1) : Py_NewRef(stream);
        }
        if (stream_arg == NULL)
            return NULL;
    }
    PyObject *args[3] = {obj, NULL, NULL};
    PyObject *capsule;
    if (wants_stream) {
        args[1] = stream_arg;
        args[2] = names->max_version;
        capsule = PyObject_VectorcallMethod(names->dlpack, args,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            names->kwnames_stream_version);
    } else {
        args[1] = names->max_version;
        capsule = PyObject_VectorcallMethod(names->dlpack, args,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            names->kwnames_version);
    }
    if (capsule == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
        /* A producer from before DLPack 1.0 does not know max_version: ask again without. */
        PyErr_Clear();
        args[1] = stream_arg;
        capsule = PyObject_VectorcallMethod(names->dlpack, args,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            wants_stream ? names->kwnames_stream : NULL);
    }
    Py_XDECREF(stream_arg);
    return capsule;
}

/* ---- torch tensors, through torch._C ---------------------------------------------------- */

/* A new reference to getattr(obj, dotted path), or NULL with no exception when something on
   the path is missing (a torch without that entry point). */
static PyObject *optional_attr_path(PyObject *obj, const char *path)
{
    char part[64];
    PyObject *current = Py_NewRef(obj);
    while (current != NULL && *path != '\0') {
        const size_t len = strcspn(path, ".");
        if (len >= sizeof(part)) {
            Py_DECREF(current);
            return NULL;
        }
        memcpy(part, path, len);
        part[len] = '\0';
        path += len + (path[len] == '.');
        PyObject *next = PyObject_GetAttrString(current, part);
        Py_DECREF(current);
        current = next;
    }
    if (current == NULL && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear();
    return current;
}

int mv_torch_api_resolve(mv_torch_api *api)
{
    if (api->resolved)
        return 1;
    PyObject *modules = PyImport_GetModuleDict(); /* borrowed */
    PyObject *torch = PyDict_GetItemString(modules, "torch"); /* borrowed */
    if (torch == NULL)
        return 0; /* the caller has not imported torch: nothing to look up */
    mv_torch_api found;
    memset(&found, 0, sizeof(found));
    PyObject *tensor_type = optional_attr_path(torch, "Tensor");
    PyObject *parameter_type = PyErr_Occurred() ? NULL : optional_attr_path(torch, "nn.Parameter");
    /* The versioned exporter (DLPack 1.x) when this torch has it, else the legacy one; both
       give a capsule consume_capsule reads, with the same deleter-once semantics. */
    if (!PyErr_Occurred())
        found.to_dlpack = optional_attr_path(torch, "_C._to_dlpack_versioned");
    if (found.to_dlpack == NULL && !PyErr_Occurred())
        found.to_dlpack = optional_attr_path(torch, "_C._to_dlpack");
    /* Absent from CPU-only builds of torch, which have no CUDA tensors to ask it about. */
    found.current_raw_stream =
        PyErr_Occurred() ? NULL : optional_attr_path(torch, "_C._cuda_getCurrentRawStream");
    if (!PyErr_Occurred()) {
        found.new_empty = PyUnicode_InternFromString("new_empty");
        found.split_with_sizes = PyUnicode_InternFromString("split_with_sizes");
        found.data_ptr = PyUnicode_InternFromString("data_ptr");
    }
    /* DLPack 1.x exchange table with the entry points used (else the Python calls above) */
    if (!PyErr_Occurred() && tensor_type != NULL) {
        PyObject *capsule = optional_attr_path(tensor_type, "__dlpack_c_exchange_api__");
        const mv_dl_exchange_api *table =
            capsule && PyCapsule_IsValid(capsule, "dlpack_exchange_api")
                ? PyCapsule_GetPointer(capsule, "dlpack_exchange_api")
                : NULL;
        if (table != NULL && table->header.version.major == MV_DLPACK_MAJOR &&
            table->header.version.minor >= 3 && table->dltensor_from_py_object_no_sync != NULL &&
            table->current_work_stream != NULL) {
            found.exchange = table;
            found.exchange_capsule = capsule;
        } else {
            Py_XDECREF(capsule);
        }
    }
    if (PyErr_Occurred()) {
        /* A torch still being imported, or broken: stay on the generic path this time. */
        PyErr_Clear();
    }
    const int usable = tensor_type && PyType_Check(tensor_type) && parameter_type &&
                       PyType_Check(parameter_type) && found.to_dlpack &&
                       PyCallable_Check(found.to_dlpack) && found.new_empty &&
                       found.split_with_sizes && found.data_ptr;
    if (!usable) {
        Py_XDECREF(tensor_type);
        Py_XDECREF(parameter_type);
        mv_torch_api_clear(&found);
        return 0;
    }
    found.tensor_type = (PyTypeObject *)tensor_type;
    found.parameter_type = (PyTypeObject *)parameter_type;
    found.exchange_off = api->exchange_off;
    found.resolved = 1;
    *api = found;
    return 1;
}

void mv_torch_api_clear(mv_torch_api *api)
{
    api->resolved = 0;
    Py_CLEAR(api->tensor_type);
    Py_CLEAR(api->parameter_type);
    Py_CLEAR(api->to_dlpack);
    Py_CLEAR(api->current_raw_stream);
    Py_CLEAR(api->new_empty);
    Py_CLEAR(api->split_with_sizes);
    Py_CLEAR(api->data_ptr);
    Py_CLEAR(api->exchange_capsule);
    api->exchange = NULL;
}

int mv_torch_api_traverse(mv_torch_api *api, visitproc visit, void *arg)
{
    Py_VISIT(api->tensor_type);
    Py_VISIT(api->parameter_type);
    Py_VISIT(api->to_dlpack);
    Py_VISIT(api->current_raw_stream);
    Py_VISIT(api->exchange_capsule);
    return 0;
}

int mv_tensor_import_torch(const mv_torch_api *api, PyObject *obj, const char *name,
                           mv_tensor *t)
{
    const int extra = t->extra_dtypes;
    memset(t, 0, sizeof(*t));
    t->extra_dtypes = extra;
    t->name = name;
    const mv_dl_exchange_api *exchange = mv_torch_exchange(api);
    if (exchange != NULL) {
        /* torch's own shape and strides, read before anything else runs; the tensor, held
           until release, keeps the data */
        mv_dl_tensor dl;
        if (exchange->dltensor_from_py_object_no_sync(obj, &dl) != 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_BufferError, "torch's DLPack exchange failed");
            rewrap_exception(PyExc_TypeError, name, "cannot read this torch tensor");
            return -1;
        }
        t->owner = Py_NewRef(obj);
        return fill_from_dl(t, &dl, 0);
    }
    PyObject *capsule = PyObject_CallOneArg(api->to_dlpack, obj);
    if (capsule == NULL) {
        /* Sparse layouts, meta or other devices: torch says what it cannot export. */
        rewrap_exception(PyExc_TypeError, name, "cannot read this torch tensor");
        return -1;
    }
    return consume_returned_capsule(capsule, "torch's DLPack exporter", t);
}

int mv_tensor_from_layout(mv_tensor *t, const char *name, PyObject *owner, void *data,
                          mv_dtype dtype, mv_processor processor, int device_id, int ndim,
                          const int64_t *shape, const int64_t *strides)
{
    memset(t, 0, sizeof(*t));
    t->name = name;
    t->data = data;
    t->processor = processor;
    t->device_id = device_id;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    memcpy(t->strides, strides, sizeof(int64_t) * (size_t)ndim);
    t->owner = Py_NewRef(owner);
    return compute_extent(t);
}

int mv_tensor_import(const mv_import_names *names, PyObject *obj, const char *name,
                     PyObject *stream, mv_tensor *t)
{
    const int extra = t->extra_dtypes;
    memset(t, 0, sizeof(*t));
    t->extra_dtypes = extra;
    t->name = name;
    if (PyCapsule_CheckExact(obj))
        return consume_capsule(obj, t);
    const int plain = import_plain_ndarray(names, obj, t);
    if (plain != 0)
        return plain < 0 ? -1 : 0;

    int has_dlpack = has_attribute(obj, names->dlpack);
    if (has_dlpack < 0)
        return -1;
    if (has_dlpack) {
        PyObject *capsule = call_dlpack(names, obj, name, stream);
        if (capsule == NULL) {
            if (PyErr_ExceptionMatches(PyExc_BufferError)) {
                /* NumPy refuses DLPack for dtypes it cannot describe there (bfloat16) and,
                   before 2.1, for read-only arrays; its array interface carries both. */
                PyObject *etype, *evalue, *etb;
                PyErr_Fetch(&etype, &evalue, &etb);
                int has_iface = has_attribute(obj, names->array_interface);
                if (has_iface != 0) {
                    Py_XDECREF(etype);
                    Py_XDECREF(evalue);
                    Py_XDECREF(etb);
                    return has_iface < 0 ? -1 : import_array_interface(names, obj, t);
                }
                PyErr_Restore(etype, evalue, etb);
                rewrap_exception(PyExc_BufferError, name, "__dlpack__() failed");
                return -1;
            }
            rewrap_exception(PyExc_TypeError, name, "__dlpack__() failed");
            return -1;
        }
        return consume_returned_capsule(capsule, "__dlpack__()", t);
    }
    int has_iface = has_attribute(obj, names->array_interface);
    if (has_iface < 0)
        return -1;
    if (has_iface)
        return import_array_interface(names, obj, t);
    PyErr_Format(PyExc_TypeError,
                 "%s: expected an array supporting DLPack (__dlpack__) or a DLPack capsule, got %.100s",
                 name, Py_TYPE(obj)->tp_name);
    return -1;
}

void mv_tensor_release(mv_tensor *t)
{
    /* Deleters may run Python code (a ctypes producer, say), which must not see our pending
       exception: park it while they run. */
    PyObject *etype, *evalue, *etb;
    PyErr_Fetch(&etype, &evalue, &etb);
    if (t->versioned) {
        if (t->versioned->deleter)
            t->versioned->deleter(t->versioned);
        t->versioned = NULL;
    }
    if (t->legacy) {
        if (t->legacy->deleter)
            t->legacy->deleter(t->legacy);
        t->legacy = NULL;
    }
    Py_CLEAR(t->owner);
    PyErr_Restore(etype, evalue, etb);
}

/* ---- checks ----------------------------------------------------------------------------- */

int mv_check_dtype_matches(const mv_tensor *t, const mv_tensor *ref)
{
    if (t->dtype == ref->dtype)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s: dtype %s does not match %s's dtype %s", t->name,
                 mv_dtype_name(t->dtype), ref->name, mv_dtype_name(ref->dtype));
    return -1;
}

static void describe_device(char *buf, size_t size, const mv_tensor *t)
{
    if (t->processor == MV_ON_CPU)
        snprintf(buf, size, "cpu");
    else
        snprintf(buf, size, "cuda:%d", t->device_id);
}

int mv_check_device_matches(const mv_tensor *t, const mv_tensor *ref)
{
    if (t->processor == ref->processor && t->device_id == ref->device_id)
        return 0;
    char a[32], b[32];
    describe_device(a, sizeof(a), t);
    describe_device(b, sizeof(b), ref);
    PyErr_Format(PyExc_ValueError, "%s: is on device %s, but %s is on device %s", t->name, a,
                 ref->name, b);
    return -1;
}

int mv_check_writable(const mv_tensor *t)
{
    if (t->readonly) {
        PyErr_Format(PyExc_ValueError, "%s: is read-only, but an output must be writable", t->name);
        return -1;
    }
    /* Elements sit at whole-element steps from data, so fewer bytes spanned than elements need
       means two elements share memory (a broadcast or self-overlapping view): the result would
       depend on the order the kernel's threads write in. For rows of contiguous columns with
       one row stride it is also the only way elements can share; rows in two strides (the norm
       ops) are checked apart where they are split (mv_split_rows). */
    int64_t count = 1;
    int too_many = 0; /* more elements than an int64 counts cannot have a place each */
    for (int d = 0; d < t->ndim; d++)
        too_many |= __builtin_mul_overflow(count, t->shape[d], &count);
    if (too_many ||
        (count > 0 && (uint64_t)(t->end - t->begin) / mv_dtype_size(t->dtype) < (uint64_t)count)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: its elements overlap each other in memory (a broadcast or "
                     "self-overlapping view); an output needs one place per element", t->name);
        return -1;
    }
    return 0;
}

static int same_layout(const mv_tensor *a, const mv_tensor *b)
{
    if (a->data != b->data || a->ndim != b->ndim || a->dtype != b->dtype)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d] || (a->shape[d] > 1 && a->strides[d] != b->strides[d]))
            return 0;
    return 1;
}

/* t as rows of contiguous bytes: every element lies in [data + i * row_stride,
   data + i * row_stride + row_bytes) for some row i >= 0. Returns 0 when its layout is not that
   (the trailing contiguous dimensions, then leading ones that step as one row index). */
static int row_form(const mv_tensor *t, int64_t *row_stride, int64_t *row_bytes)
{
    int64_t cols = 1, stride = 0;
    int d = t->ndim - 1;
    for (; d >= 0; d--) { /* the contiguous trailing block */
        if (t->shape[d] == 1)
            continue;
        if (t->strides[d] != cols)
            break;
        cols *= t->shape[d];
    }
    int64_t step = 0; /* what the next leading dimension's stride must be */
    for (; d >= 0; d--) {
        if (t->shape[d] == 1)
            continue;
        if (step == 0) {
            stride = t->strides[d];
            if (stride < cols)
                return 0;
        } else if (t->strides[d] != step) {
            return 0;
        }
        step = t->strides[d] * t->shape[d];
    }
    *row_stride = stride * mv_dtype_size(t->dtype);
    *row_bytes = cols * mv_dtype_size(t->dtype);
    return 1;
}

/* Rows with one row stride that sit side by side (q, k and v as column slices of one [M, N]
   buffer) share no element although their spans overlap. */
static int disjoint_rows(const mv_tensor *a, const mv_tensor *b)
{
    int64_t sa, ra, sb, rb;
    if (!row_form(a, &sa, &ra) || !row_form(b, &sb, &rb))
        return 0;
    if (sa == 0 && sb == 0) /* one row each: their byte ranges, as for any span */
        return 0;
    if (sa != sb && !(sa == 0 || sb == 0))
        return 0;
    const int64_t period = sa != 0 ? sa : sb;
    if (ra > period || rb > period)
        return 0;
    /* b's rows start at offset d within a's row period; disjoint if [0, ra) and [d, d + rb) do
       not meet modulo the period (b's row 0 may start before a's: the offset is taken mod). */
    const int64_t diff = (int64_t)((uintptr_t)b->data - (uintptr_t)a->data);
    const int64_t d = ((diff % period) + period) % period;
    return ra <= d && d + rb <= period;
}

int mv_check_no_overlap(const mv_tensor *out, const mv_tensor *other, int allow_alias)
{
    if (out->begin == out->end || other->begin == other->end)
        return 0;
    if (out->end <= other->begin || other->end <= out->begin)
        return 0;
    if (allow_alias && same_layout(out, other))
        return 0;
    if (disjoint_rows(out, other))
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: overlaps %s in memory%s", out->name, other->name,
                 allow_alias ? " (only the exact in-place form, the very same array, is allowed)"
                             : "");
    return -1;
}

int mv_check_element_aligned(const mv_tensor *t)
{
    if ((uintptr_t)t->data % (uintptr_t)mv_dtype_size(t->dtype) == 0)
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "%s: data pointer %p is not aligned to its %zu-byte element size", t->name,
                 (void *)t->data, (size_t)mv_dtype_size(t->dtype));
    return -1;
}

/* The rows of t (its last col_dims dimensions contiguous, the others the rows) in at most
   max_strides (1 or 2) row strides; refused with a message naming t past that. */
static int rows_layout(const mv_tensor *t, int col_dims, int max_strides, mv_row_layout *r)
{
    char shape[256], strides[256];
    /* The import caps ndim at MV_MAX_DIMS; callers ask for 1 or 2 column dimensions. */
    if (col_dims < 1 || t->ndim < 1 || t->ndim < col_dims || t->ndim > MV_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d to %d dimensions, got %d", t->name,
                     col_dims, MV_MAX_DIMS, t->ndim);
        return -1;
    }
    const int first_col = t->ndim - col_dims;
    int64_t n_cols = 1, n_rows = 1;
    r->inner_rows = r->outer_stride = 0;
    /* An empty tensor has no layout to check (producers give it arbitrary strides, often 0). */
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) {
            for (int c = first_col; c < t->ndim; c++)
                n_cols *= t->shape[c];
            for (int row = 0; row < first_col; row++)
                n_rows *= t->shape[row];
            r->rows = n_rows;
            r->cols = n_cols;
            r->stride = n_cols;
            return 0;
        }
    }
    for (int d = t->ndim - 1; d >= first_col; d--) {
        if (t->shape[d] != 1 && t->strides[d] != n_cols) {
            mv_format_dims(strides, sizeof(strides), t->strides, t->ndim);
            if (d == t->ndim - 1)
                PyErr_Format(PyExc_ValueError,
                             "%s: the last dimension must be contiguous (stride 1); got strides %s",
                             t->name, strides);
            else
                PyErr_Format(PyExc_ValueError,
                             "%s: the last %d dimensions must be contiguous together; got strides %s",
                             t->name, col_dims, strides);
            return -1;
        }
        n_cols *= t->shape[d];
    }
    /* Leading dimensions: walk outwards from the innermost one that has more than one row;
       each must step exactly over the ones inside it, except where a new stride starts (at
       most max_strides - 1 times). Size-1 dimensions carry no stride. */
    int64_t stride = n_cols, expected = 0;
    int found = 0, starts = 0, overflow = 0;
    for (int d = first_col - 1; d >= 0 && starts < max_strides; d--) {
        const int64_t inner = n_rows;
        if (__builtin_mul_overflow(n_rows, t->shape[d], &n_rows)) {
            PyErr_Format(PyExc_ValueError, "%s: too many rows", t->name);
            return -1;
        }
        if (t->shape[d] == 1)
            continue;
        if (!found) {
            found = 1;
            stride = t->strides[d];
        } else if (overflow || t->strides[d] != expected) {
            if (++starts == 1) { /* a second stride: rows = outer x inner */
                r->inner_rows = inner;
                r->outer_stride = t->strides[d];
            }
        }
        /* a step past the address space cannot be stepped over: a new stride must follow */
        overflow = __builtin_mul_overflow(t->strides[d], t->shape[d], &expected);
        starts += overflow && max_strides == 1; /* refused as before where one stride must do */
    }
    if (starts >= max_strides) {
        mv_format_dims(shape, sizeof(shape), t->shape, t->ndim);
        mv_format_dims(strides, sizeof(strides), t->strides, t->ndim);
        if (max_strides == 1)
            PyErr_Format(PyExc_ValueError,
                         "%s: the leading dimensions of shape %s with strides %s cannot be "
                         "flattened into rows with one stride; pass a contiguous copy",
                         t->name, shape, strides);
        else
            PyErr_Format(PyExc_ValueError,
                         "%s: the leading dimensions of shape %s with strides %s need more than "
                         "two row strides; expected at most two (e.g. [tokens, heads, head_dim] "
                         "with any token and head strides); pass a contiguous copy",
                         t->name, shape, strides);
        return -1;
    }
    r->rows = n_rows;
    r->cols = n_cols;
    r->stride = stride;
    return 0;
}

int mv_as_rows(const mv_tensor *t, int col_dims, int64_t *rows, int64_t *cols,
               int64_t *row_stride)
{
    mv_row_layout r;
    if (rows_layout(t, col_dims, 1, &r) < 0)
        return -1;
    *rows = r.rows;
    *cols = r.cols;
    *row_stride = r.stride;
    return 0;
}

int mv_as_split_rows(const mv_tensor *t, mv_row_layout *rows)
{
    return rows_layout(t, 1, 2, rows);
}
