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
/* The norm ops' jit argument: True or False (anything else: TypeError naming "jit"); *builtin_only
   is its negation, as mv_cuda_opts holds it. */
int mv_parse_jit(PyObject *obj, int *builtin_only);
/* x: [..., H] with H >= 1. */
int mv_check_hidden(const mv_tensor *x);
/* x: [..., H] with H >= 1, flattened to rows (one stride). */
int mv_hidden_rows(const mv_tensor *x, int64_t *rows, int64_t *hidden, int64_t *stride);
/* weight: [H], contiguous, on x's device, of x's dtype (or float32 with 16-bit x where
   allow_float32). */
int mv_check_norm_weight(const mv_tensor *w, const mv_tensor *x, int64_t hidden, int allow_float32);
/* weight_offset: a finite float (1 for Gemma's (1 + w) norm). */
int mv_parse_weight_offset(PyObject *obj, float *offset);
/* A tensor shaped exactly like x (residual), flattened the same way. */
int mv_rows_like_x(const mv_tensor *t, const mv_tensor *x, int64_t *stride);

/* The norm ops' row arguments (x, residual, out, residual_out), each shaped like x: rows in one
   stride or two (mv_row_layout), split alike where any is split. */
typedef struct {
    int64_t inner_rows;   /* rows per outer step; 0 while every argument so far has one stride */
    const char *split_by; /* the argument that set inner_rows, for messages */
} mv_row_split;

/* t's rows into *rows, checked against and added to the split; an output (is_output) must also
   keep its rows apart from each other. */
int mv_split_rows(const mv_tensor *t, int is_output, mv_row_split *split, mv_row_layout *rows);
/* The step between outer rows of t once every argument is in: its own where t is split, else
   inner_rows of its one stride; 0 where nothing is split. */
int64_t mv_split_outer_stride(const mv_row_split *split, const mv_row_layout *rows);

#endif /* MINIVLLM_BINDING_CHECKS_H */
