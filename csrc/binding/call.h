/*
 * call.h: one call of a minivllm op in the binding: its imported tensors and outputs, released on
 * a single path, the caller's stream and allocator (or torch's, read in C), and the launch on the
 * CPU or the GPU.
 */
#ifndef MINIVLLM_BINDING_CALL_H
#define MINIVLLM_BINDING_CALL_H

#include "binding/buffer.h" /* first: it includes Python.h, which must precede system headers */
#include "binding/tensor_import.h"

typedef struct {
    mv_import_names names;
    PyTypeObject *buffer_type;
    mv_torch_api torch;
    /* _C.TORCH_KIND: passed as `alloc` by the Python API when x is a plain torch tensor; the call
       then allocates with x.new_empty and runs on torch's current stream of x's device, both
       read here in C (the Python route costs tens of microseconds per call). */
    PyObject *torch_kind;
    /* _C.TORCH_OP: the torch kind in the convention of minivllm.torch's registered ops: qkv_weight
       in nn.Linear layout [N, H] only, and q, k, v returned as one packed [..., heads, head_dim]
       tensor (the schema's one result). */
    PyObject *torch_op;
    /* _C.TORCH_LINEAR: the torch kind with qkv_weight in nn.Linear layout [N, H] only, results as
       TORCH_KIND's (what minivllm.torch's entry points return when they skip the dispatcher). */
    PyObject *torch_linear;
    PyObject *requires_grad; /* "requires_grad" */
} mv_state;

static inline mv_state *mv_get_state(PyObject *module) { return (mv_state *)PyModule_GetState(module); }

/* ---- one call's tensors, released on a single path ----------------------------------------- */

enum { MAX_CALL_TENSORS = 20 };

typedef struct {
    mv_state *st;
    PyObject *stream; /* borrowed: the caller's CUDA stream (int) or None */
    PyObject *alloc;  /* borrowed: callable(shape) -> array, or None for a minivllm.Buffer */
    int torch_kind;   /* alloc was _C.TORCH_KIND, TORCH_OP or TORCH_LINEAR: see call_start */
    int torch_op;     /* alloc was _C.TORCH_OP (mv_state.torch_op): q, k, v returned packed */
    int linear_only;  /* alloc was _C.TORCH_OP or TORCH_LINEAR: qkv_weight is [N, H] */
    PyObject *like;   /* borrowed: x, which torch-kind outputs are allocated like */
    PyObject *torch_stream; /* owned: the stream read from torch, which `stream` then points to */
    mv_tensor tensors[MAX_CALL_TENSORS];
    /* Outputs minivllm allocated in this call: new memory, which can overlap no other array. */
    unsigned char fresh[MAX_CALL_TENSORS];
    int count;
    PyObject *outputs[MAX_CALL_TENSORS]; /* owned references to outputs we allocated */
    int output_count;
    mv_cuda_opts opts; /* the call's GPU options (pdl, path, builtin_only), parsed by the op */
} mv_call;

void mv_call_release(mv_call *c);
/* The caller's kind of array: `alloc` and `stream` as the Python API found them, or, when alloc
   is _C.TORCH_KIND, torch's, resolved in C from x (a plain torch.Tensor). */
int mv_call_start(mv_call *c, PyObject *module, PyObject *alloc, PyObject *stream, PyObject *x);
mv_tensor *mv_call_import(mv_call *c, PyObject *obj, const char *name);
/* The same, for an argument that may also have the dtypes in extra (MV_ACCEPT_*). */
mv_tensor *mv_call_import_extra(mv_call *c, PyObject *obj, const char *name, int extra);
/* x, the call's first array; for the torch kind it also fixes the stream. */
mv_tensor *mv_call_import_first(mv_call *c, PyObject *obj, const char *name);
/* An output: the one the caller gave (validated), or a new one from the caller's allocator. */
mv_tensor *mv_call_output(mv_call *c, PyObject *given, const char *name, const mv_tensor *like,
                          int ndim, const int64_t *shape, PyObject **obj_out);
/* q, k and v for the torch kind when none was given: views of one new buffer; with q_only,
   only q is made a Python object (k and v, a scratch, are held through it). */
int mv_call_torch_qkv_outputs(mv_call *c, const mv_tensor *x, int64_t num_heads,
                              int64_t num_kv_heads, int64_t head_dim, int q_only, mv_tensor **qkv,
                              PyObject **objs);
/* q, k and v for _C.TORCH_OP: one new [..., heads, head_dim] tensor, *base its data; *obj
   receives a new reference to it. */
int mv_call_torch_packed_output(mv_call *c, const mv_tensor *x, int64_t heads, int64_t head_dim,
                                char **base, PyObject **obj);
/* Outputs overlap no input and no other output, except the listed exact in-place aliases. */
int mv_check_outputs_disjoint(mv_call *c, int first_output, const int *alias_of);

typedef int (*mv_cpu_kernel)(const void *args);
typedef int (*mv_cuda_kernel)(const void *args, const mv_cuda_opts *opts, void *stream);
/* Runs the kernel for x's device: the CPU one without the GIL, the CUDA one on the call's stream
   with x's device current; a failure becomes a Python exception naming op. */
int mv_call_launch(const char *op, const mv_call *c, const mv_tensor *x, const void *args,
                   mv_cpu_kernel on_cpu, mv_cuda_kernel on_cuda);

#endif /* MINIVLLM_BINDING_CALL_H */
