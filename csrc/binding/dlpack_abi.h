/*
 * dlpack_abi.h: the DLPack data structures minivllm consumes and produces, written from the
 * DLPack specification (v1.x, with the legacy pre-1.0 managed tensor). Only the layout matters:
 * these structs must match the C ABI every producer (NumPy, PyTorch, CuPy, JAX) uses.
 */
#ifndef MINIVLLM_DLPACK_ABI_H
#define MINIVLLM_DLPACK_ABI_H

#include <stdint.h>

/* Device types we meet (DLDeviceType). */
enum {
    MV_DL_CPU = 1,
    MV_DL_CUDA = 2,
    MV_DL_CUDA_HOST = 3, /* pinned host memory: CPU-addressable */
    MV_DL_CUDA_MANAGED = 13,
};

/* Type codes (DLDataTypeCode). */
enum {
    MV_DL_INT = 0,
    MV_DL_UINT = 1,
    MV_DL_FLOAT = 2,
    MV_DL_OPAQUE_HANDLE = 3,
    MV_DL_BFLOAT = 4,
    MV_DL_COMPLEX = 5,
    MV_DL_BOOL = 6,
    MV_DL_FLOAT8_E4M3FN = 10, /* DLPack 1.1 */
};

/* DLManagedTensorVersioned.flags bits. */
#define MV_DL_FLAG_READ_ONLY (UINT64_C(1) << 0)

typedef struct {
    int32_t device_type;
    int32_t device_id;
} mv_dl_device;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} mv_dl_dtype;

typedef struct {
    void *data;
    mv_dl_device device;
    int32_t ndim;
    mv_dl_dtype dtype;
    int64_t *shape;
    int64_t *strides; /* in elements; NULL means compact row-major */
    uint64_t byte_offset;
} mv_dl_tensor;

/* Legacy (pre-1.0) managed tensor: capsule name "dltensor". */
typedef struct mv_dl_managed_tensor {
    mv_dl_tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct mv_dl_managed_tensor *self);
} mv_dl_managed_tensor;

typedef struct {
    uint32_t major;
    uint32_t minor;
} mv_dl_version;

/* DLPack >= 1.0 managed tensor: capsule name "dltensor_versioned"; dl_tensor comes last. */
typedef struct mv_dl_managed_tensor_versioned {
    mv_dl_version version;
    void *manager_ctx;
    void (*deleter)(struct mv_dl_managed_tensor_versioned *self);
    uint64_t flags;
    mv_dl_tensor dl_tensor;
} mv_dl_managed_tensor_versioned;

/* The C exchange table a framework publishes as type(array).__dlpack_c_exchange_api__ (a capsule
   named "dlpack_exchange_api"; DLPack 1.3, PyTorch 2.10 and later): C entry points for what
   __dlpack__ does through Python. minivllm uses the non-owning export and the current stream. */
typedef struct mv_dl_exchange_api_header {
    mv_dl_version version;
    struct mv_dl_exchange_api_header *prev_api;
} mv_dl_exchange_api_header;

typedef struct {
    mv_dl_exchange_api_header header;
    int (*managed_tensor_allocator)(mv_dl_tensor *prototype, mv_dl_managed_tensor_versioned **out,
                                    void *error_ctx,
                                    void (*set_error)(void *error_ctx, const char *kind,
                                                      const char *message));
    int (*managed_tensor_from_py_object_no_sync)(void *py_object,
                                                 mv_dl_managed_tensor_versioned **out);
    int (*managed_tensor_to_py_object_no_sync)(mv_dl_managed_tensor_versioned *tensor,
                                               void **out_py_object);
    /* may be NULL; fills *out with the producer's own shape and strides, valid until return */
    int (*dltensor_from_py_object_no_sync)(void *py_object, mv_dl_tensor *out);
    int (*current_work_stream)(int32_t device_type, int32_t device_id, void **out_stream);
} mv_dl_exchange_api;

/* The version we speak: the struct layout above is that of every 1.x release. */
#define MV_DLPACK_MAJOR 1
#define MV_DLPACK_MINOR 1

#endif /* MINIVLLM_DLPACK_ABI_H */
