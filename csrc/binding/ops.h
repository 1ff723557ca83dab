/*
 * ops.h: the _C functions each op's binding file defines, for module.c's method table.
 */
#ifndef MINIVLLM_BINDING_OPS_H
#define MINIVLLM_BINDING_OPS_H

#include "binding/call.h"

PyObject *mv_py_rms_norm(PyObject *module, PyObject *const *args, Py_ssize_t nargs);            /* rms_norm.c */
PyObject *mv_py_fused_add_rms_norm(PyObject *module, PyObject *const *args, Py_ssize_t nargs);  /* rms_norm.c */
PyObject *mv_py_fused_rms_norm_qkv(PyObject *module, PyObject *const *args, Py_ssize_t nargs);  /* fused_rms_norm_qkv.c */
PyObject *mv_py_qkv_last_gpu_path(PyObject *module, PyObject *ignored);                          /* fused_rms_norm_qkv.c */
PyObject *mv_py_attention_prologue(PyObject *module, PyObject *const *args, Py_ssize_t nargs);  /* attention_prologue.c */

/* Shared by the QKV bindings (fused_rms_norm_qkv.c): the `_path` option, the layout of
   qkv_weight ([N, H] or its .t() view), and the record qkv_last_gpu_path reports. */
int mv_parse_qkv_path(PyObject *obj, mv_qkv_path *path);
int mv_qkv_weight_layout(const mv_tensor *w, int64_t hidden, int linear_only, int64_t *n_out,
                         int64_t *stride_n, int64_t *stride_k);
void mv_set_qkv_last_gpu_path(mv_qkv_path taken);
/* The QKV part's arguments, as both QKV bindings take them (fused_rms_norm_qkv.c): objs are
   hidden_states, norm_weight, qkv_weight; given are q, k, v (None: new). */
mv_tensor *mv_qkv_import_inputs(mv_call *c, PyObject *const *objs, int64_t num_heads,
                                int64_t num_kv_heads, mv_qkv_args *a, int64_t *head_dim);
int mv_qkv_outputs(mv_call *c, const mv_tensor *x, PyObject *const *given, int64_t num_heads,
                   int64_t num_kv_heads, int64_t head_dim, int q_only, mv_qkv_args *a,
                   PyObject **objs);
mv_tensor *mv_qkv_residual_out(mv_call *c, const mv_tensor *x, PyObject *residual,
                               PyObject *residual_out, mv_qkv_args *a, PyObject **obj, int *failed);

#endif /* MINIVLLM_BINDING_OPS_H */
