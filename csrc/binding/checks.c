/*
 * checks.c: the argument checks the ops share (checks.h).
 */
#include "binding/checks.h"

#include <float.h>
#include <math.h>

/* Same dtype and device as `ref`; on CUDA, element-aligned (the kernels' scalar loads). */
int mv_check_like(const mv_tensor *t, const mv_tensor *ref)
{
    if (mv_check_dtype_matches(t, ref) < 0 || mv_check_device_matches(t, ref) < 0)
        return -1;
    if (t->processor == MV_ON_CUDA)
        return mv_check_element_aligned(t);
    return 0;
}

int mv_check_shape(const mv_tensor *t, int ndim, const int64_t *shape)
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

int mv_parse_eps(PyObject *obj, float *eps)
{
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "eps: expected a float, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    /* finite as a float32 too: 1e39 would become inf in the kernels */
    if (!(v >= 0.0) || !isfinite(v) || v > FLT_MAX) {
        PyErr_Format(PyExc_ValueError, "eps: expected a finite value >= 0, got %R", obj);
        return -1;
    }
    *eps = (float)v;
    return 0;
}

int mv_parse_positive_int(PyObject *obj, const char *name, int64_t *value)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected an int, got %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow) {
        PyErr_Format(PyExc_ValueError, "%s: expected a positive number of heads, got %R, which "
                     "does not fit a 64-bit integer", name, obj);
        return -1;
    }
    if (v <= 0 || v > (1LL << 31)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a positive number of heads, got %lld", name, v);
        return -1;
    }
    *value = v;
    return 0;
}

/* x: [..., H] with H >= 1. */
int mv_check_hidden(const mv_tensor *x)
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
    return 0;
}

/* x: [..., H] with H >= 1, flattened to rows. */
int mv_hidden_rows(const mv_tensor *x, int64_t *rows, int64_t *hidden, int64_t *stride)
{
    if (mv_check_hidden(x) < 0)
        return -1;
    return mv_as_rows(x, 1, rows, hidden, stride);
}

int mv_check_norm_weight(const mv_tensor *w, const mv_tensor *x, int64_t hidden, int allow_float32)
{
    /* float32 weights with 16-bit rows, where the op allows them (the norm ops: checkpoints such
       as Gemma's keep norm weights in float32) */
    const int mixed = allow_float32 && w->dtype == MV_FLOAT32 && x->dtype != MV_FLOAT32;
    if (mixed ? mv_check_device_matches(w, x) < 0 ||
                    (w->processor == MV_ON_CUDA && mv_check_element_aligned(w) < 0)
              : mv_check_like(w, x) < 0)
        return -1;
    if (w->ndim != 1) {
        PyErr_Format(PyExc_ValueError, "%s: expected 1 dimension [%lld], got %d dimensions",
                     w->name, (long long)hidden, w->ndim);
        return -1;
    }
    if (mv_check_shape(w, 1, &hidden) < 0)
        return -1;
    if (hidden > 1 && w->strides[0] != 1) {
        PyErr_Format(PyExc_ValueError, "%s: must be contiguous (stride 1), got stride %lld",
                     w->name, (long long)w->strides[0]);
        return -1;
    }
    return 0;
}

/* A tensor shaped exactly like x (residual), flattened the same way. */
int mv_rows_like_x(const mv_tensor *t, const mv_tensor *x, int64_t *stride)
{
    int64_t rows, cols;
    if (mv_check_like(t, x) < 0 || mv_check_shape(t, x->ndim, x->shape) < 0)
        return -1;
    return mv_as_rows(t, 1, &rows, &cols, stride);
}

/* |step| >= (count - 1) * |inner_step| + cols: the rows of one step of `step` end before the
   next step begins (0 where that sum overflows: no int64 step is past it). */
static int steps_past(int64_t step, int64_t count, int64_t inner_step, int64_t cols)
{
    const uint64_t s = step < 0 ? 0 - (uint64_t)step : (uint64_t)step;
    const uint64_t inner = inner_step < 0 ? 0 - (uint64_t)inner_step : (uint64_t)inner_step;
    uint64_t reach;
    if (__builtin_mul_overflow((uint64_t)(count - 1), inner, &reach) ||
        __builtin_add_overflow(reach, (uint64_t)cols, &reach))
        return 0;
    return s >= reach;
}

/* Two-stride rows that share no element: rows nested as [outer, inner] (each outer step past
   all of its inner rows, these a row apart) or as [inner, outer] (a transposed layout). Other
   interleavings are refused: whether their rows meet is not a cheap question. */
static int split_rows_apart(const mv_row_layout *r)
{
    const int64_t outer_count = r->rows / r->inner_rows;
    return (steps_past(r->stride, 2, 0, r->cols) &&
            steps_past(r->outer_stride, r->inner_rows, r->stride, r->cols)) ||
           (steps_past(r->outer_stride, 2, 0, r->cols) &&
            steps_past(r->stride, outer_count, r->outer_stride, r->cols));
}

int mv_split_rows(const mv_tensor *t, int is_output, mv_row_split *split, mv_row_layout *rows)
{
    if (mv_as_split_rows(t, rows) < 0)
        return -1;
    if (rows->inner_rows == 0)
        return 0;
    if (split->inner_rows != 0 && split->inner_rows != rows->inner_rows) {
        PyErr_Format(PyExc_ValueError,
                     "%s: its rows take their second stride every %lld rows, but %s's every %lld; "
                     "expected the same split into [outer, inner] rows, or rows in one stride",
                     t->name, (long long)rows->inner_rows, split->split_by,
                     (long long)split->inner_rows);
        return -1;
    }
    if (is_output && !split_rows_apart(rows)) {
        char shape[256], strides[256];
        mv_format_dims(shape, sizeof(shape), t->shape, t->ndim);
        mv_format_dims(strides, sizeof(strides), t->strides, t->ndim);
        PyErr_Format(PyExc_ValueError,
                     "%s: its rows (shape %s, strides %s) may overlap each other in memory; an "
                     "output needs one place per element, its two row strides nested (each step "
                     "past the rows inside it)", t->name, shape, strides);
        return -1;
    }
    split->inner_rows = rows->inner_rows;
    split->split_by = t->name;
    return 0;
}

int64_t mv_split_outer_stride(const mv_row_split *split, const mv_row_layout *rows)
{
    if (split->inner_rows == 0)
        return 0;
    /* in range: a one-stride argument of a split call has a row at inner_rows (rows >= 2x) */
    return rows->inner_rows != 0 ? rows->outer_stride : rows->stride * split->inner_rows;
}

int mv_parse_weight_offset(PyObject *obj, float *offset)
{
    const double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "weight_offset: expected a float, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!isfinite(v) || fabs(v) > FLT_MAX) {
        PyErr_Format(PyExc_ValueError, "weight_offset: expected a finite float32 value, got %R", obj);
        return -1;
    }
    *offset = (float)v;
    return 0;
}

int mv_parse_jit(PyObject *obj, int *builtin_only)
{
    if (!PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "jit: expected True or False, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    *builtin_only = obj == Py_False;
    return 0;
}

int mv_parse_pdl(PyObject *obj, int *pdl)
{
    if (obj == Py_None) {
        *pdl = MV_PDL_DEFAULT;
        return 0;
    }
    if (!PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "pdl: expected None, True or False, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *pdl = obj == Py_True ? MV_PDL_ON : MV_PDL_OFF;
    return 0;
}
