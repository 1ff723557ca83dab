/*
 * portable_convert_check.c: the portable level's vector conversions (simd.h, GCC/Clang vector
 * extensions) against half_convert.h's scalar ones, bit for bit, over every input: all 2^16 fp16
 * and bf16 loads, all 2^32 float32 bit patterns stored as fp16 and bf16 (about 20 s). CI runs it
 * (scripts/static_analysis.sh); for another target, e.g. aarch64-linux-gnu-gcc ... -static, run
 * under qemu-aarch64 (session 67: 0 mismatches there too).
 *   cc -std=c11 -O2 -Icsrc scripts/portable_convert_check.c -o /tmp/pcc && /tmp/pcc
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cpu/simd.h"

#if VL != 4
#error "this check is for the portable level's 4-lane vectors"
#endif

int main(void)
{
    long bad = 0;
    for (uint32_t base = 0; base < 0x10000u; base += VL) {
        uint16_t h[VL];
        for (int j = 0; j < VL; j++)
            h[j] = (uint16_t)(base + (uint32_t)j);
        for (int dt = 0; dt < 2; dt++) {
            const mv_dtype t = dt ? MV_BFLOAT16 : MV_FLOAT16;
            const vf v = vf_load_dt(t, h);
            for (int j = 0; j < VL; j++) {
                const float want = dt ? mv_bf16_to_f32(h[j]) : mv_f16_to_f32(h[j]);
                if (mv_f32_bits(v[j]) != mv_f32_bits(want) && bad++ < 10)
                    printf("load %s %04x: %08x, want %08x\n", dt ? "bf16" : "fp16", h[j], mv_f32_bits(v[j]),
                           mv_f32_bits(want));
            }
        }
    }
    uint32_t bits = 0;
    do {
        float f[VL];
        for (int j = 0; j < VL; j++)
            f[j] = mv_f32_from_bits(bits + (uint32_t)j);
        vf v;
        memcpy(&v, f, sizeof v);
        for (int dt = 0; dt < 2; dt++) {
            uint16_t got[VL];
            vf_store_dt(dt ? MV_BFLOAT16 : MV_FLOAT16, got, v);
            for (int j = 0; j < VL; j++) {
                const uint16_t want = dt ? mv_f32_to_bf16(f[j]) : mv_f32_to_f16(f[j]);
                if (got[j] != want && bad++ < 20)
                    printf("store %s %08x: %04x, want %04x\n", dt ? "bf16" : "fp16", bits + (uint32_t)j, got[j],
                           want);
            }
        }
        bits += VL;
    } while (bits != 0);
    printf("%ld mismatches over 2^16 loads and 2^32 stores of each half type\n", bad);
    return bad != 0;
}
