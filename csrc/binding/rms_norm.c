/*
 * rms_norm.c: the bindings of rms_norm and fused_add_rms_norm (kernels: cpu/rms_norm.c,
 * cuda/rms_norm.cu).
 */
#include "binding/call.h"
#include "binding/checks.h"

#include <string.h>

static int cpu_rms_norm(const void *a) { return mv_rms_norm_cpu(a); }
#ifdef MINIVLLM_WITH_CUDA
static int cuda_rms_norm(const void *a, const mv_cuda_opts *o, void *s) { return mv_rms_norm_cuda(a, o, s); }
static int cuda_rms_norm_reference(const void *a, const mv_cuda_opts *o, void *s)
{
    (void)o; /* the reference kernel has no PDL */
    return mv_rms_norm_cuda_reference(a, s);
}
#define CUDA_RMS_NORM(reference) ((reference) ? cuda_rms_norm_reference : cuda_rms_norm)
#else
#define CUDA_RMS_NORM(reference) NULL
#endif

/* The row arguments of a norm call (x, residual, out, residual_out) as they are checked: in one
   row stride or two, split alike (checks.h). */
typedef struct {
    mv_row_split split;
    mv_row_layout x, residual, out, residual_out;
} norm_rows;

/* What both norm ops start with: the call (alloc and stream at args[alloc_at], args[alloc_at + 1]),
   eps (args[eps_at]), pdl, weight_offset and jit (after the stream) and x (args[0], its rows into
   r->x, rows and hidden into a->in). Returns x, or NULL with the exception set. */
static mv_tensor *norm_start(mv_call *c, PyObject *module, PyObject *const *args, int eps_at,
                             int alloc_at, mv_rms_norm_args *a, norm_rows *r)
{
    if (mv_call_start(c, module, args[alloc_at], args[alloc_at + 1], args[0]) < 0 ||
        mv_parse_eps(args[eps_at], &a->in.eps) < 0 || mv_parse_pdl(args[alloc_at + 2], &c->opts.pdl) < 0 ||
        mv_parse_weight_offset(args[alloc_at + 3], &a->in.weight_offset) < 0 ||
        mv_parse_jit(args[alloc_at + 4], &c->opts.builtin_only) < 0)
        return NULL;
    mv_tensor *x = mv_call_import_first(c, args[0], "x");
    if (x == NULL || mv_check_hidden(x) < 0 || mv_split_rows(x, 0, &r->split, &r->x) < 0)
        return NULL;
    if (x->processor == MV_ON_CUDA && mv_check_element_aligned(x) < 0)
        return NULL;
    a->in.rows = r->x.rows;
    a->in.hidden = r->x.cols;
    return x;
}

/* The strides of every row argument once all are checked; a one-stride argument of a split call
   steps its own stride times inner_rows per outer row (what the kernels' row formula needs). */
static void norm_strides(const norm_rows *r, mv_rms_norm_args *a)
{
    const mv_row_split *split = &r->split;
    a->outer.inner_rows = split->inner_rows;
    a->in.x_stride = r->x.stride;
    a->outer.x = mv_split_outer_stride(split, &r->x);
    a->out_stride = r->out.stride;
    a->outer.out = mv_split_outer_stride(split, &r->out);
    if (a->in.residual != NULL) {
        a->in.residual_stride = r->residual.stride;
        a->outer.residual = mv_split_outer_stride(split, &r->residual);
        a->in.residual_out_stride = r->residual_out.stride;
        a->outer.residual_out = mv_split_outer_stride(split, &r->residual_out);
    }
}

/* ---- rms_norm(x, weight, eps, out, alloc, stream, pdl, weight_offset, jit[, reference]) -> out ---- */

PyObject *mv_py_rms_norm(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 && nargs != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "_C.rms_norm(x, weight, eps, out, alloc, stream, pdl, weight_offset, jit[, reference])");
        return NULL;
    }
    const int reference = nargs == 10 && PyObject_IsTrue(args[9]) == 1;
    (void)reference; /* only the CUDA path has a reference kernel */
    mv_call c = {0};
    PyObject *result = NULL, *out_obj = NULL;
    mv_rms_norm_args a;
    memset(&a, 0, sizeof(a));
    norm_rows r;
    memset(&r, 0, sizeof(r));
    mv_tensor *x = norm_start(&c, module, args, 2, 4, &a, &r);
    if (x == NULL)
        goto done;
    mv_tensor *w = mv_call_import(&c, args[1], "weight");
    if (w == NULL || mv_check_norm_weight(w, x, a.in.hidden, 1) < 0)
        goto done;
    const int first_output = c.count;
    /* When an output is the input it replaces (in-place form), messages name that input. */
    mv_tensor *out = mv_call_output(&c, args[3], args[3] == args[0] ? "x" : "out", x, x->ndim,
                                 x->shape, &out_obj);
    if (out == NULL || mv_split_rows(out, 1, &r.split, &r.out) < 0)
        goto done;
    const int alias_of[] = {0}; /* out may be x itself: in-place rms_norm */
    if (mv_check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    a.in.dtype = x->dtype;
    a.in.x = x->data;
    a.in.norm_weight = w->data;
    a.in.weight_float32 = w->dtype != x->dtype; /* checked: float32 beside 16-bit x */
    a.out = out->data;
    norm_strides(&r, &a);
    if (mv_call_launch("rms_norm", &c, x, &a, cpu_rms_norm, CUDA_RMS_NORM(reference)) < 0)
        goto done;
    result = Py_NewRef(out_obj);
done:
    Py_XDECREF(out_obj);
    mv_call_release(&c);
    return result;
}

/* ---- fused_add_rms_norm(x, residual, weight, eps, out, residual_out, alloc, stream, pdl,
 *      weight_offset, jit[, reference]) -> (out, residual_out) */

PyObject *mv_py_fused_add_rms_norm(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11 && nargs != 12) {
        PyErr_SetString(PyExc_TypeError,
                        "_C.fused_add_rms_norm(x, residual, weight, eps, out, residual_out, alloc, "
                        "stream, pdl, weight_offset, jit[, reference])");
        return NULL;
    }
    const int reference = nargs == 12 && PyObject_IsTrue(args[11]) == 1;
    (void)reference; /* only the CUDA path has a reference kernel */
    mv_call c = {0};
    PyObject *result = NULL, *out_obj = NULL, *res_obj = NULL;
    mv_rms_norm_args a;
    memset(&a, 0, sizeof(a));
    norm_rows r;
    memset(&r, 0, sizeof(r));
    mv_tensor *x = norm_start(&c, module, args, 3, 6, &a, &r);
    if (x == NULL)
        goto done;
    mv_tensor *residual = mv_call_import(&c, args[1], "residual");
    if (residual == NULL || mv_check_like(residual, x) < 0 ||
        mv_check_shape(residual, x->ndim, x->shape) < 0 ||
        mv_split_rows(residual, 0, &r.split, &r.residual) < 0)
        goto done;
    mv_tensor *w = mv_call_import(&c, args[2], "weight");
    if (w == NULL || mv_check_norm_weight(w, x, a.in.hidden, 1) < 0)
        goto done;
    const int first_output = c.count;
    mv_tensor *out = mv_call_output(&c, args[4], args[4] == args[0] ? "x" : "out", x, x->ndim,
                                 x->shape, &out_obj);
    if (out == NULL || mv_split_rows(out, 1, &r.split, &r.out) < 0)
        goto done;
    mv_tensor *res_out = mv_call_output(&c, args[5], args[5] == args[1] ? "residual" : "residual_out",
                                     x, x->ndim, x->shape, &res_obj);
    if (res_out == NULL || mv_split_rows(res_out, 1, &r.split, &r.residual_out) < 0)
        goto done;
    /* In-place form: out may be x itself and residual_out residual itself. */
    const int alias_of[] = {0, 1};
    if (mv_check_outputs_disjoint(&c, first_output, alias_of) < 0)
        goto done;
    a.in.dtype = x->dtype;
    a.in.x = x->data;
    a.in.residual = residual->data;
    a.in.residual_out = res_out->data;
    a.in.norm_weight = w->data;
    a.in.weight_float32 = w->dtype != x->dtype; /* checked: float32 beside 16-bit x */
    a.out = out->data;
    norm_strides(&r, &a);
    if (mv_call_launch("fused_add_rms_norm", &c, x, &a, cpu_rms_norm, CUDA_RMS_NORM(reference)) < 0)
        goto done;
    result = PyTuple_Pack(2, out_obj, res_obj);
done:
    Py_XDECREF(out_obj);
    Py_XDECREF(res_obj);
    mv_call_release(&c);
    return result;
}

