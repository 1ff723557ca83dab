/*
 * buffer.h: minivllm.Buffer, memory minivllm owns and exports through DLPack. Results for
 * callers whose arrays cannot be allocated from here (JAX arrays, raw capsules) land in one,
 * and the caller's library imports it without a copy.
 */
#ifndef MINIVLLM_BUFFER_H
#define MINIVLLM_BUFFER_H

#include "binding/tensor_import.h"

PyTypeObject *mv_buffer_type_create(PyObject *module);

/* A new compact row-major buffer (C-contiguous). Returns NULL with an exception set. */
PyObject *mv_buffer_new(PyTypeObject *type, mv_dtype dtype, mv_processor processor,
                        int device_id, int ndim, const int64_t *shape);

/* Record the CUDA stream the buffer was last written on, so __dlpack__(stream=...) can order a
   consumer's stream after it. */
void mv_buffer_set_stream(PyObject *buffer, intptr_t stream);

#endif /* MINIVLLM_BUFFER_H */
