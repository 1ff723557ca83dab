/*
 * kernels_portable.c: the CPU kernels in plain C11 (no intrinsics), for any target; on x86-64
 * the level tests force with _C._set_simd_level(0). See rms_norm.h, fused_rms_norm_qkv.h and
 * attention_prologue.h.
 */
#define MV_SUFFIX portable
#include "cpu/norm_row.h"
#include "cpu/rms_norm.h"
#include "cpu/fused_rms_norm_qkv.h"
#include "cpu/attention_prologue.h"
