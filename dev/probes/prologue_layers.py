"""bench_attention_prologue's layers varied as the prologue probes ask (prologue_paths.py,
prologue_timeline.py)."""


def vary(layers, no_residual=False, shared_step_inputs=False, drop=()):
    """no_residual: calls without one (the Hugging Face patch's form); shared_step_inputs: every
    layer takes layer 0's positions and slot_mapping, as a model's layers share one decode step's;
    drop: parts of the epilogue left out ("rope", "qknorm", "cache": k and v returned)."""
    first = layers[0]
    for layer in layers:
        if shared_step_inputs:
            layer.positions, layer.slots = first.positions, first.slots
        if no_residual:
            layer.r = layer.res_out = None
        if "rope" in drop:
            layer.positions = layer.table = None
        if "qknorm" in drop:
            layer.qn = layer.kn = None
        if "cache" in drop:
            layer.k_cache = layer.v_cache = layer.slots = None


def each_shape(bp, names, ms, dtype):
    """(model, rows, new_layers) for each model name (or H,HEADS,KV_HEADS,HEAD_DIM: no bias or
    q/k norm) and row count; new_layers(n) makes n layers (bp: the bench_attention_prologue module,
    imported by the caller from benchmarks/)."""
    from minivllm.bench.models import find_model, parse_qkv_shape
    for name in names:
        model = parse_qkv_shape(name) if "," in name else find_model(name)
        bias, qk = bp.features_of(model)
        table = bp.cos_sin_table(model.head_dim, dtype, "cuda")
        for rows in ms:
            yield model, rows, (lambda n, rows=rows: [bp.Layer(model, rows, dtype, "cuda", bias, qk, table)
                                                      for _ in range(n)])
