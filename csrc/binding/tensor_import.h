/*
 * tensor_import.h: turning Python arrays into validated raw views for the kernels.
 *
 * mv_tensor_import accepts any object with __dlpack__ / __dlpack_device__ (NumPy, PyTorch, CuPy,
 * JAX, minivllm.Buffer), a raw DLPack capsule (versioned or legacy), or a NumPy-style
 * __array_interface__ (the fallback for arrays DLPack cannot carry, such as ml_dtypes.bfloat16).
 * A consumed capsule is renamed to its "used_" name and its deleter runs exactly once, in
 * mv_tensor_release. Every failure sets a Python exception whose message starts with the
 * argument's name.
 */
#ifndef MINIVLLM_TENSOR_IMPORT_H
#define MINIVLLM_TENSOR_IMPORT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "binding/dlpack_abi.h"
#include "minivllm_kernels.h"

#define MV_MAX_DIMS 16

/* Where a tensor lives, after folding pinned host memory into the CPU and managed memory into
   its CUDA device: the kernels only care which processor reads it. */
typedef enum { MV_ON_CPU = 0, MV_ON_CUDA = 1 } mv_processor;

typedef struct {
    const char *name; /* the Python argument's name, for messages */
    char *data;       /* first element (byte_offset applied) */
    mv_processor processor;
    int device_id;
    mv_dtype dtype;
    /* Set by the caller before the import (kept through it): dtypes beyond the three float ones
       that this argument may have (MV_ACCEPT_*); 0 for every activation and weight. */
    int extra_dtypes;
    int readonly;
    int ndim;
    int64_t shape[MV_MAX_DIMS];
    int64_t strides[MV_MAX_DIMS]; /* in elements */
    uintptr_t begin, end;          /* bytes it spans; begin == end when it holds no element */
    /* What keeps the memory alive; exactly one is set once imported. */
    mv_dl_managed_tensor *legacy;
    mv_dl_managed_tensor_versioned *versioned;
    PyObject *owner;
} mv_tensor;

enum { MV_ACCEPT_INDEX = 1 /* int32, int64 */, MV_ACCEPT_FP8 = 2 /* float8_e4m3fn */ };

/* Interned names used on every call; created once per module. */
typedef struct {
    PyObject *dlpack;        /* "__dlpack__" */
    PyObject *dlpack_device; /* "__dlpack_device__" */
    PyObject *array_interface;
    PyObject *dtype;
    PyObject *name;
    PyObject *kwnames_stream_version; /* ("stream", "max_version") */
    PyObject *kwnames_version;        /* ("max_version",) */
    PyObject *kwnames_stream;         /* ("stream",) */
    PyObject *max_version;            /* (1, 1) */
    PyObject *array_struct;           /* "__array_struct__" */
    /* ml_dtypes' bfloat16 NumPy dtype once an array of it was seen (a strong reference), so
       later ones skip the DLPack attempt NumPy refuses and the __array_interface__ dict. */
    PyObject *bf16_dtype;
} mv_import_names;

int mv_import_names_init(mv_import_names *n);
void mv_import_names_clear(mv_import_names *n);

/* PyTorch's own C entry points, so torch tensors skip Tensor.__dlpack__, which is Python code
   (stream objects, events, attribute checks) and costs microseconds per argument. minivllm never
   imports torch: mv_torch_api_resolve looks it up in sys.modules once the caller has it. */
typedef struct {
    int resolved;                 /* 1 once looked up successfully */
    PyTypeObject *tensor_type;    /* torch.Tensor */
    PyTypeObject *parameter_type; /* torch.nn.Parameter (weights; torch function disabled) */
    PyObject *to_dlpack;          /* torch._C._to_dlpack_versioned, else torch._C._to_dlpack */
    PyObject *current_raw_stream; /* torch._C._cuda_getCurrentRawStream; NULL in CPU-only torch */
    PyObject *new_empty;          /* "new_empty": allocate like a tensor (its dtype and device) */
    PyObject *split_with_sizes;   /* "split_with_sizes": q, k, v as views of one allocation */
    PyObject *data_ptr;           /* "data_ptr": where a tensor we allocated starts */
    /* torch.Tensor.__dlpack_c_exchange_api__ (torch >= 2.10), NULL before: its non-owning
       export and current stream replace the _to_dlpack and _cuda_getCurrentRawStream calls
       (each a Python call, with a capsule and a managed tensor made per argument). The table
       lives as long as the process; the capsule is kept for form. exchange_off: a private test
       switch back to the older entry points. */
    const mv_dl_exchange_api *exchange;
    PyObject *exchange_capsule;
    int exchange_off;
} mv_torch_api;

/* The exchange table when it is there and not switched off. */
static inline const mv_dl_exchange_api *mv_torch_exchange(const mv_torch_api *api)
{
    return api->exchange_off ? NULL : api->exchange;
}

/* 1 when torch is imported and provides what the fast path needs, 0 when not (torch not
   imported yet, or too different a version), -1 with an exception on unexpected errors. */
int mv_torch_api_resolve(mv_torch_api *api);
void mv_torch_api_clear(mv_torch_api *api);
int mv_torch_api_traverse(mv_torch_api *api, visitproc visit, void *arg);

/* Exactly a torch.Tensor or nn.Parameter: subclasses may override export through
   __torch_function__, so they take the generic __dlpack__ path. */
static inline int mv_torch_is_plain_tensor(const mv_torch_api *api, PyObject *obj)
{
    return api->resolved &&
           (Py_TYPE(obj) == api->tensor_type || Py_TYPE(obj) == api->parameter_type);
}

/* Import a plain torch tensor through torch._C's exporter. The caller launches on torch's current
   stream of the tensor's device, where torch orders the tensor's pending work already, so no
   stream synchronization is needed (what __dlpack__(stream=current) would also conclude).
   requires_grad is ignored: minivllm only reads and writes the data, it records no autograd. */
int mv_tensor_import_torch(const mv_torch_api *api, PyObject *obj, const char *name,
                           mv_tensor *t);

/* An array minivllm allocated itself, whose layout it chose: filled from that layout and its data
   pointer, with no export. owner: the Python object keeping the memory (a new reference is
   taken). */
int mv_tensor_from_layout(mv_tensor *t, const char *name, PyObject *owner, void *data,
                          mv_dtype dtype, mv_processor processor, int device_id, int ndim,
                          const int64_t *shape, const int64_t *strides);

/* stream: the CUDA stream (an int) to hand to CUDA producers; NULL or None = legacy default. */
int mv_tensor_import(const mv_import_names *names, PyObject *obj, const char *name,
                     PyObject *stream, mv_tensor *t);
void mv_tensor_release(mv_tensor *t);

const char *mv_dtype_name(mv_dtype dt);

/* Checks; each returns 0 or -1 with an exception set. */
int mv_check_dtype_matches(const mv_tensor *t, const mv_tensor *ref);
int mv_check_device_matches(const mv_tensor *t, const mv_tensor *ref);
/* An output: writable, and no two of its elements share memory (exact for rows in one stride;
   two-stride rows also need mv_split_rows). */
int mv_check_writable(const mv_tensor *t);
/* Outputs may not overlap inputs (or each other). An exact alias (same data, shape and strides)
   is allowed only where allow_alias says the op supports that in-place form. */
int mv_check_no_overlap(const mv_tensor *out, const mv_tensor *other, int allow_alias);
/* Data pointer aligned to the element size (CUDA loads need it; CPU kernels do not). */
int mv_check_element_aligned(const mv_tensor *t);

/* View t as a row-major matrix: its last `col_dims` dimensions form the (contiguous) columns,
   the others are flattened into rows that must share one row stride. */
int mv_as_rows(const mv_tensor *t, int col_dims, int64_t *rows, int64_t *cols,
               int64_t *row_stride);

/* Rows whose leading dimensions need up to two strides (a per-head view [tokens, heads, D] of a
   packed QKV output): row r = o * inner_rows + i starts o * outer_stride + i * stride elements
   from data. inner_rows == 0: one stride covers every row (r * stride). */
typedef struct {
    int64_t rows, cols;
    int64_t stride;
    int64_t inner_rows;
    int64_t outer_stride;
} mv_row_layout;

/* t as rows of its (contiguous) last dimension whose leading dimensions need at most two
   strides; refused, naming t, where they need more. */
int mv_as_split_rows(const mv_tensor *t, mv_row_layout *rows);

/* For messages: "(2, 3)" of a shape or strides array. */
void mv_format_dims(char *buf, size_t size, const int64_t *dims, int ndim);

#endif /* MINIVLLM_TENSOR_IMPORT_H */
