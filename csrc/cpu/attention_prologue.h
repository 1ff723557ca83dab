/*
 * attention_prologue.h: the CPU twin of attention_prologue (minivllm_kernels.h): the QKV kernel
 * (fused_rms_norm_qkv.h) into q and k, v (or scratch), then the epilogue over every (token, head):
 * + bias, per-head RMSNorm, RoPE, the store to q, k, v or the KV cache. The epilogue works in
 * float32 on the values the QKV kernel stored (rounded to the dtype) and rounds once on its store;
 * the GPU's epilogue kernel (cuda/attention_prologue.cu) computes the same, in another summation
 * order. A head goes through in VL-wide vectors (simd.h), its last head_dim % VL elements, GPT-J's
 * adjacent pairs, FP8 stores and caches whose head_dim is not contiguous one element at a time.
 * Compiled once per SIMD level with the other ops (kernels_*.c, after norm_row.h); the sum of
 * squares of a head is summed in VL lanes, so its rounding differs between levels (tolerances:
 * docs/numerics.md).
 */

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

/* ---- a head's vector steps (count elements from src / into dst; t in float32) ------------------ */

MV_ALWAYS_INLINE void head_load(mv_dtype dt, const void *src, int64_t count, float *t)
{
    int64_t d = 0;
    for (; d + VL <= count; d += VL)
        vf_storeu(t + d, vf_load_dt(dt, at(src, dt, d)));
    for (; d < count; d++)
        t[d] = mv_load(dt, src, d);
}

MV_ALWAYS_INLINE void head_add(mv_dtype dt, const void *src, int64_t count, float *t)
{
    int64_t d = 0;
    for (; d + VL <= count; d += VL)
        vf_storeu(t + d, vf_add(vf_loadu(t + d), vf_load_dt(dt, at(src, dt, d))));
    for (; d < count; d++)
        t[d] += mv_load(dt, src, d);
}

/* t = gamma * (t * rrms), rrms of t's mean square */
MV_ALWAYS_INLINE void head_norm(mv_dtype dt, const void *gamma, int64_t count, float eps, float *t)
{
    vf lanes = vf_zero();
    int64_t d = 0;
    for (; d + VL <= count; d += VL) {
        const vf v = vf_loadu(t + d);
        lanes = vf_fma(v, v, lanes);
    }
    float sum = vf_hsum(lanes);
    for (; d < count; d++)
        sum += t[d] * t[d];
    const float rrms = 1.0f / sqrtf(sum / (float)count + eps);
    const vf r = vf_set1(rrms);
    for (d = 0; d + VL <= count; d += VL)
        vf_storeu(t + d, vf_mul(vf_load_dt(dt, at(gamma, dt, d)), vf_mul(vf_loadu(t + d), r)));
    for (; d < count; d++)
        t[d] = mv_load(dt, gamma, d) * (t[d] * rrms);
}

/* RoPE of the first rotary_dim elements of t with the position's cos/sin row cs (cos of the
   rotary_dim / 2 frequencies, then their sin) */
MV_ALWAYS_INLINE void head_rope(mv_dtype cs_dt, const void *cs, int64_t rotary_dim, int gptj, float *t)
{
    const int64_t half = rotary_dim / 2;
    int64_t i = 0;
    if (!gptj) { /* neox: element i with element i + half */
        for (; i + VL <= half; i += VL) {
            const vf c = vf_load_dt(cs_dt, at(cs, cs_dt, i)), s = vf_load_dt(cs_dt, at(cs, cs_dt, half + i));
            const vf x0 = vf_loadu(t + i), x1 = vf_loadu(t + half + i);
            vf_storeu(t + i, vf_sub(vf_mul(x0, c), vf_mul(x1, s)));
            vf_storeu(t + half + i, vf_add(vf_mul(x1, c), vf_mul(x0, s)));
        }
    }
    for (; i < half; i++) {
        const float c = mv_load(cs_dt, cs, i), s = mv_load(cs_dt, cs, half + i);
        const int64_t i0 = gptj ? 2 * i : i, i1 = gptj ? 2 * i + 1 : i + half;
        const float x0 = t[i0], x1 = t[i1];
        t[i0] = x0 * c - x1 * s;
        t[i1] = x1 * c + x0 * s;
    }
}

MV_ALWAYS_INLINE void head_store(mv_dtype dt, const float *t, int64_t count, void *dst)
{
    int64_t d = 0;
    for (; d + VL <= count; d += VL)
        vf_store_dt(dt, at_mut(dst, dt, d), vf_loadu(t + d));
    for (; d < count; d++)
        mv_store(dt, dst, d, t[d]);
}

/* One head of one token: t (head_dim floats) is the caller's scratch. */
static void epilogue_item(const mv_prologue_args *a, int64_t m, int64_t h, float *t)
{
    const mv_qkv_args *qkv = &a->qkv;
    const mv_dtype dt = qkv->in.dtype;
    const int64_t D = a->head_dim, nq = a->num_heads, nkv = a->num_kv_heads;
    const int kind = h < nq ? 0 : h < nq + nkv ? 1 : 2; /* q, k, v */
    const int64_t head = kind == 0 ? h : kind == 1 ? h - nq : h - nq - nkv;
    void *row = kind == 0   ? at_mut(qkv->q, dt, m * qkv->q_stride + head * D)
                : kind == 1 ? at_mut(qkv->k, dt, m * qkv->k_stride + head * D)
                            : at_mut(qkv->v, dt, m * qkv->v_stride + head * D);
    head_load(dt, row, D, t);
    if (a->bias != NULL)
        head_add(dt, at(a->bias, dt, h * D), D, t);
    const void *gamma = kind == 0 ? a->q_norm_weight : kind == 1 ? a->k_norm_weight : NULL;
    if (gamma != NULL)
        head_norm(dt, gamma, D, a->qk_norm_eps, t);
    if (a->positions != NULL && kind != 2) {
        const int64_t pos = load_index(a->positions_dtype, a->positions, m * a->positions_stride);
        if (pos < 0 || pos >= a->max_position) {
            for (int64_t d = 0; d < D; d++)
                t[d] = NAN; /* never read outside the cos/sin cache (the binding refuses it) */
        } else {
            head_rope(a->cos_sin_dtype, at(a->cos_sin, a->cos_sin_dtype, pos * a->cos_sin_stride),
                      a->rotary_dim, a->rope_gptj, t);
        }
    }
    if (kind == 0 || a->k_cache == NULL) {
        void *out = kind == 0 && a->q_out != NULL ? at_mut(a->q_out, dt, m * a->q_out_stride + head * D) : row;
        head_store(dt, t, D, out);
        return;
    }
    const int64_t slot = load_index(a->slot_dtype, a->slot_mapping, m * a->slot_stride);
    if (slot < 0 || slot >= a->num_blocks * a->block_size)
        return; /* padding (negative), or beyond the cache (the binding refuses it) */
    const int64_t *s = kind == 1 ? a->k_cache_strides : a->v_cache_strides;
    char *cache = kind == 1 ? a->k_cache : a->v_cache;
    const int64_t base = (slot / a->block_size) * s[0] + (slot % a->block_size) * s[1] + head * s[2];
    if (a->cache_dtype == MV_FLOAT8_E4M3) {
        for (int64_t d = 0; d < D; d++)
            cache[base + d * s[3]] = (char)f32_to_e4m3(t[d] / a->kv_scale);
    } else if (s[3] == 1) {
        head_store(dt, t, D, at_mut(cache, dt, base));
    } else {
        for (int64_t d = 0; d < D; d++)
            mv_store(dt, cache, base + d * s[3], t[d]);
    }
}

typedef struct {
    const mv_prologue_args *a;
    int64_t items, heads;
    float *scratch;       /* head_dim floats per thread */
    _Atomic int64_t next; /* the next item to claim */
} epilogue_job;

static void epilogue_task(void *ctx, int index, int count)
{
    (void)count;
    epilogue_job *job = ctx;
    float *t = job->scratch + (int64_t)index * job->a->head_dim;
    int64_t begin, end;
    while (claim(&job->next, 64, job->items, &begin, &end))
        for (int64_t item = begin; item < end; item++)
            epilogue_item(job->a, item / job->heads, item % job->heads, t);
}

int MV_NAME(mv_attention_prologue_cpu)(const mv_prologue_args *a)
{
    const int rc = MV_NAME(mv_fused_rms_norm_qkv_cpu)(&a->qkv);
    if (rc != MV_OK)
        return rc;
    const int touch_v = a->bias != NULL || a->k_cache != NULL;
    const int touch_qk = touch_v || a->positions != NULL || a->q_norm_weight != NULL ||
                         a->k_norm_weight != NULL;
    if (!touch_qk || a->qkv.in.rows == 0)
        return MV_OK;
    epilogue_job job = {.a = a};
    /* heads per token in item order: q, k, then v (left out when nothing changes it) */
    job.heads = a->num_heads + a->num_kv_heads + (touch_v ? a->num_kv_heads : 0);
    job.items = a->qkv.in.rows * job.heads;
    const int want = threads_for(job.items * a->head_dim, PARALLEL_MIN_ELEMENTS, job.items);
    job.scratch = malloc(sizeof(float) * (size_t)a->head_dim * (size_t)want);
    if (job.scratch == NULL)
        return MV_ERR_NOMEM;
    mv_pool_run(epilogue_task, &job, want);
    free(job.scratch);
    return MV_OK;
}
