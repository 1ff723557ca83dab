/*
 * kernels_portable.c: the CPU kernels in plain C11 (no intrinsics), for any target; on x86-64
 * the level tests force with _C._set_simd_level(0). See kernels_impl.h.
 */
#define MV_SUFFIX portable
#include "cpu/kernels_impl.h"
