/*
 * bf16_convert_probe.c: every float32 bit pattern (2^32) through vcvtneps2bf16 against the exact
 * round to nearest even of half_convert.h (mv_f32_to_bf16), counting the lanes that differ by
 * class of input. Tells whether the instruction may replace the exact rounding and what to fix.
 * Then vdpbf16ps on two cases: a bf16 denormal times 1 (are denormal inputs taken as zero?), and
 * 1 + 2^-24 + 2^-24 per lane (one rounding per product, or one for the pair?).
 *   gcc -O2 -Icsrc -mavx512f -mavx512bf16 dev/probes/bf16_convert_probe.c -o /tmp/p && /tmp/p
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>

#include "cpu/half_convert.h"

int main(void)
{
    uint64_t diff_denormal = 0, diff_other = 0, denormal = 0;
    uint32_t first_other = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += 16) {
        __m512i bits = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)base),
                                        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                                          12, 13, 14, 15));
        uint16_t fast[16];
        _mm256_storeu_si256((__m256i *)fast, (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(bits)));
        for (int l = 0; l < 16; l++) {
            const uint32_t b = (uint32_t)base + (uint32_t)l;
            const int is_denormal = (b & 0x7f800000u) == 0 && (b & 0x7fffffu) != 0;
            denormal += is_denormal;
            if (fast[l] == mv_f32_to_bf16(mv_f32_from_bits(b)))
                continue;
            if (is_denormal) {
                diff_denormal++;
                if (fast[l] != (uint16_t)((b >> 16) & 0x8000u))
                    printf("denormal %08x -> %04x, not signed zero\n", b, fast[l]);
            } else if (diff_other++ == 0) {
                first_other = b;
            }
        }
    }
    printf("float32 denormal inputs: %llu, differing: %llu (all to signed zero unless listed)\n",
           (unsigned long long)denormal, (unsigned long long)diff_denormal);
    printf("other inputs differing: %llu (first %08x)\n", (unsigned long long)diff_other,
           first_other);
    /* lane 0: acc 0, pair (denormal 0x0001 * 1.0, 0 * 0); lane 1: acc 1.0, pair (2^-24 * 1,
       2^-24 * 1): exact 1 + 2^-23 (an ulp), added one product at a time 1.0 (each ties to even) */
    const __m512i a = _mm512_setr_epi32(0x00000001, 0x33803380, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        0, 0);
    const __m512i b = _mm512_setr_epi32(0x00003f80, 0x3f803f80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        0, 0);
    float out[16];
    _mm512_storeu_ps(out, _mm512_dpbf16_ps(_mm512_setr_ps(0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                          0, 0),
                                           (__m512bh)a, (__m512bh)b));
    printf("vdpbf16ps: 0 + denormal(2^-133) * 1 = %a; 1 + 2^-24 + 2^-24 = %a (exact 0x1.000002p+0)\n",
           out[0], out[1]);
    return 0;
}
