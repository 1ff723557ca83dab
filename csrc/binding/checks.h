/*
 * checks.h: argument parsing and checks shared by the ops' bindings. Each failure sets a Python
 * exception that names the argument and what was expected, and returns -1.
 */
#ifndef MINIVLLM_BINDING_CHECKS_H
#define MINIVLLM_BINDING_CHECKS_H

#include "binding/tensor_import.h"

/* Same dtype and device as `ref`; on CUDA, element-aligned (the kernels' scalar loads). */
int mv_check_like(const mv_tensor *t, const mv_tensor *ref);
int mv_check_shape(const mv_tensor *t, int ndim, const int64_t *shape);
int mv_parse_eps(PyObject *obj, float *eps);
int mv_parse_positive_int(PyObject *obj, const char *name, int64_t *value);
/* pdl: None (the library's default), True or False. */
int mv_parse_pdl(PyObject *obj, int *pdl);
/* x: [..., H] with H >= 1, flattened to rows. */
int mv_hidden_rows(const mv_tensor *x, int64_t *rows, int64_t *hidden, int64_t *stride);
/* weight: [H], contiguous, on x's device, of x's dtype (or float32 with 16-bit x where
   allow_float32). */
int mv_check_norm_weight(const mv_tensor *w, const mv_tensor *x, int64_t hidden, int allow_float32);
/* weight_offset: a finite float (1 for Gemma's (1 + w) norm). */
int mv_parse_weight_offset(PyObject *obj, float *offset);
/* A tensor shaped exactly like x (residual), flattened the same way. */
int mv_rows_like_x(const mv_tensor *t, const mv_tensor *x, int64_t *stride);

#endif /* MINIVLLM_BINDING_CHECKS_H */
