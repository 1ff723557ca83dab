#!/usr/bin/env bash
# On the GPU machine: bench_rms_norm of several carried builds (dev/probes/site_build.sh, packed into
# build/carry and unpacked by carry_unpack.sh) on the same shapes, in alternating rounds, so that a
# build's lead can be told from the drift between processes; no peers (the grid gives those).
#   SITES="site_a site_b site_c" ROUNDS=2 AB_DTYPES=fp32 OUT=... bash dev/probes/norm_sites_ab.sh "4096x8191 600x8191"
# Each run's JSON goes to OUT/ROUND-SITE.json; then norm_sites_table.py prints the table.
set -u
shapes=$1; out=${OUT:?set OUT to a results folder}
for round in $(seq 1 "${ROUNDS:-2}"); do
    for s in ${SITES:?}; do
        t0=$(date +%s)
        # shellcheck disable=SC2086
        PYTHONPATH=/tmp/$s timeout 150 python3 benchmarks/bench_rms_norm.py --dtypes ${AB_DTYPES:-fp32} --shapes $shapes \
            --hidden 4096 --rows 1 --no-liger --no-compile --no-plot --out "/tmp/ab_$round-$s" > "$out/$round-$s.log" 2>&1
        echo "round $round $s rc $? $(( $(date +%s) - t0 )) s"; cp /tmp/ab_"$round-$s"/norm-*.json "$out/$round-$s.json"
    done
done
python3 dev/probes/norm_sites_table.py "$out" ${SITES} | tee "$out/table.txt"
