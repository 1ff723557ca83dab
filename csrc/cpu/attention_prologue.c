/*
 * attention_prologue.c: the CPU twin of attention_prologue (minivllm_kernels.h): the QKV kernel
 * (mv_fused_rms_norm_qkv_cpu) into q and k, v (or scratch), then the epilogue over every
 * (token, head): + bias, per-head RMSNorm, RoPE, the store to q, k, v or the KV cache. The
 * epilogue works in float32 on the values the QKV kernel stored (rounded to the dtype) and
 * rounds once on its store; the GPU's epilogue kernel (cuda/attention_prologue.cu) computes the
 * same, in another summation order.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/half_convert.h"
#include "cpu/pool.h"
#include "minivllm_kernels.h"

/* float32 -> float8 e4m3fn, round to nearest even, saturating to +-448 as vLLM's cache writes do
   (__NV_SATFINITE: Inf too); NaN stays NaN. */
static uint8_t f32_to_e4m3(float v)
{
    const uint32_t bits = mv_f32_bits(v);
    const uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
    const uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)
        return (uint8_t)(sign | 0x7fu);
    const float a = mv_f32_from_bits(magnitude);
    if (a >= 448.0f)
        return (uint8_t)(sign | 0x7eu);
    if (a < 0x1p-6f) /* subnormal: a multiple of 2^-9 (8 of them being the least normal, 0x08) */
        return (uint8_t)(sign | (uint8_t)nearbyintf(a * 512.0f));
    /* normal: keep 3 mantissa bits, nearest even (a mantissa carry bumps the exponent) */
    const uint32_t rounded = magnitude + 0x7ffffu + ((magnitude >> 20) & 1u);
    const uint32_t exponent = (rounded >> 23) - 127u + 7u;
    return (uint8_t)(sign | (exponent << 3) | ((rounded >> 20) & 7u));
}

static int64_t load_index(mv_dtype dt, const void *base, int64_t i)
{
    if (dt == MV_INT32) {
        int32_t v;
        memcpy(&v, (const char *)base + i * 4, sizeof v);
        return v;
    }
    int64_t v;
    memcpy(&v, (const char *)base + i * 8, sizeof v);
    return v;
}

typedef struct {
    const mv_prologue_args *a;
    int64_t items, heads;
    float *scratch;       /* head_dim floats per thread */
    _Atomic int64_t next; /* the next item to claim (pool.h: work is claimed, not split) */
} epilogue_ctx;

/* One head of one token: t holds its head_dim values in float32. */
static void epilogue_item(const mv_prologue_args *a, int64_t m, int64_t h, float *t)
{
    const mv_qkv_args *qkv = &a->qkv;
    const mv_dtype dt = qkv->in.dtype;
    const int64_t D = a->head_dim, nq = a->num_heads, nkv = a->num_kv_heads;
    const int kind = h < nq ? 0 : h < nq + nkv ? 1 : 2; /* q, k, v */
    const int64_t head = kind == 0 ? h : kind == 1 ? h - nq : h - nq - nkv;
    void *row = kind == 0   ? (char *)qkv->q + (m * qkv->q_stride + head * D) * mv_dtype_size(dt)
                : kind == 1 ? (char *)qkv->k + (m * qkv->k_stride + head * D) * mv_dtype_size(dt)
                            : (char *)qkv->v + (m * qkv->v_stride + head * D) * mv_dtype_size(dt);
    for (int64_t d = 0; d < D; d++)
        t[d] = mv_load(dt, row, d);
    if (a->bias != NULL)
        for (int64_t d = 0; d < D; d++)
            t[d] += mv_load(dt, a->bias, h * D + d);
    const void *gamma = kind == 0 ? a->q_norm_weight : kind == 1 ? a->k_norm_weight : NULL;
    if (gamma != NULL) {
        float sum = 0.0f;
        for (int64_t d = 0; d < D; d++)
            sum += t[d] * t[d];
        const float rrms = 1.0f / sqrtf(sum / (float)D + a->qk_norm_eps);
        for (int64_t d = 0; d < D; d++)
            t[d] = mv_load(dt, gamma, d) * (t[d] * rrms);
    }
    if (a->positions != NULL && kind != 2) {
        const int64_t pos = load_index(a->positions_dtype, a->positions, m * a->positions_stride);
        const int64_t half = a->rotary_dim / 2;
        if (pos < 0 || pos >= a->max_position) {
            for (int64_t d = 0; d < D; d++)
                t[d] = NAN; /* never read outside the cos/sin cache (the binding refuses it) */
        } else {
            const int64_t base = pos * a->cos_sin_stride;
            for (int64_t i = 0; i < half; i++) {
                const float c = mv_load(a->cos_sin_dtype, a->cos_sin, base + i);
                const float s = mv_load(a->cos_sin_dtype, a->cos_sin, base + half + i);
                const int64_t i0 = a->rope_gptj ? 2 * i : i, i1 = a->rope_gptj ? 2 * i + 1 : i + half;
                const float x0 = t[i0], x1 = t[i1];
                t[i0] = x0 * c - x1 * s;
                t[i1] = x1 * c + x0 * s;
            }
        }
    }
    if (kind == 0 || a->k_cache == NULL) {
        void *out = kind == 0 && a->q_out != NULL
                        ? (char *)a->q_out + (m * a->q_out_stride + head * D) * mv_dtype_size(dt)
                        : row;
        for (int64_t d = 0; d < D; d++)
            mv_store(dt, out, d, t[d]);
        return;
    }
    const int64_t slot = load_index(a->slot_dtype, a->slot_mapping, m * a->slot_stride);
    if (slot < 0 || slot >= a->num_blocks * a->block_size)
        return; /* padding (negative), or beyond the cache (the binding refuses it) */
    const int64_t *s = kind == 1 ? a->k_cache_strides : a->v_cache_strides;
    char *cache = kind == 1 ? a->k_cache : a->v_cache;
    const int64_t at = (slot / a->block_size) * s[0] + (slot % a->block_size) * s[1] + head * s[2];
    if (a->cache_dtype == MV_FLOAT8_E4M3) {
        for (int64_t d = 0; d < D; d++)
            cache[at + d * s[3]] = (char)f32_to_e4m3(t[d] / a->kv_scale);
        return;
    }
    for (int64_t d = 0; d < D; d++)
        mv_store(dt, cache, at + d * s[3], t[d]);
}

static void epilogue_part(void *ctx_, int index, int count)
{
    (void)count;
    epilogue_ctx *ctx = ctx_;
    float *t = ctx->scratch + (int64_t)index * ctx->a->head_dim;
    const int64_t chunk = 64;
    for (;;) {
        const int64_t begin = atomic_fetch_add(&ctx->next, chunk);
        if (begin >= ctx->items)
            return;
        const int64_t end = begin + chunk < ctx->items ? begin + chunk : ctx->items;
        for (int64_t item = begin; item < end; item++)
            epilogue_item(ctx->a, item / ctx->heads, item % ctx->heads, t);
    }
}

int mv_attention_prologue_cpu(const mv_prologue_args *a)
{
    const int rc = mv_fused_rms_norm_qkv_cpu(&a->qkv);
    if (rc != MV_OK)
        return rc;
    const int touch_v = a->bias != NULL || a->k_cache != NULL;
    const int touch_qk = touch_v || a->positions != NULL || a->q_norm_weight != NULL ||
                         a->k_norm_weight != NULL;
    if (!touch_qk || a->qkv.in.rows == 0)
        return MV_OK;
    epilogue_ctx ctx = {.a = a};
    /* heads per token in item order: q, k, then v (left out when nothing changes it) */
    ctx.heads = a->num_heads + a->num_kv_heads + (touch_v ? a->num_kv_heads : 0);
    ctx.items = a->qkv.in.rows * ctx.heads;
    const int64_t work = ctx.items * a->head_dim;
    int want = mv_pool_threads();
    if (work < 65536)
        want = 1;
    ctx.scratch = malloc(sizeof(float) * (size_t)a->head_dim * (size_t)want);
    if (ctx.scratch == NULL)
        return MV_ERR_NOMEM;
    mv_pool_run(epilogue_part, &ctx, want);
    free(ctx.scratch);
    return MV_OK;
}
