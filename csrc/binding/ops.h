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

#endif /* MINIVLLM_BINDING_OPS_H */
