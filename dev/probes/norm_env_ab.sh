#!/usr/bin/env bash
# A/B of the norm kernels on a GPU machine, builds carried (dev/probes/site_build.sh, carry_unpack.sh):
# bench_rms_norm of an old build and of a new one, the new one also under environment switches of an
# experiment build (each variant NAME=VAR=VALUE[,VAR=VALUE], its table column NAME), one table of them all with PDL on and
# off (norm_variants_table.py), Liger beside the new build. Optionally first norm_odd_check under
# compute-sanitizer and the GPU norm tests on the new build (AB_CHECK=1).
#   OUT=... [AB_OLD=/tmp/site_old] AB_NEW=/tmp/site_new AB_ODD=/tmp/norm_odd_check \
#     bash dev/probes/norm_env_ab.sh "1x1024 16x4096" "earlyw=MV_EXP_EARLYW=1 ..."
set -uo pipefail
shapes=$1; variants=${2:-}
out=${OUT:?}; repo=$PWD; export PYTHONUNBUFFERED=1
if [ "${AB_CHECK:-0}" = 1 ]; then
    # shellcheck source=dev/probes/norm_checks.sh
    . "$repo"/dev/probes/norm_checks.sh
    norm_sanitizers "$AB_ODD" "$out"
    norm_gpu_tests "$AB_NEW" "$out"
fi
run() { # name site extra-args [env assignments...]
    local name=$1 site=$2 extra=$3; shift 3
    local t0=$(date +%s)
    # shellcheck disable=SC2086
    env "$@" PYTHONPATH=$site timeout 200 python3 "$repo"/benchmarks/bench_rms_norm.py --dtypes ${AB_DTYPES:-bf16 fp32} \
        --shapes $shapes --hidden 4096 --rows 1 $extra --no-compile --no-plot --out /tmp/ab_res_$name > "$out/bench-$name.log" 2>&1
    echo "bench $name rc $? $(( $(date +%s) - t0 )) s"; cp /tmp/ab_res_$name/norm-*.json "$out/$name.json"
}
names="new"
run new "$AB_NEW:/tmp/wheels" ""
[ -z "${AB_OLD:-}" ] || { run old "$AB_OLD" --no-liger; names="old new"; }
for v in $variants; do
    name=${v%%=*}; assigns=${v#*=}
    run "$name" "$AB_NEW" --no-liger ${assigns//,/ }
    names="$names $name"
done
# shellcheck disable=SC2086
python3 "$repo"/dev/probes/norm_variants_table.py "$out" $names | tee "$out/table.txt"
# few files come back from a call: the JSONs and logs as one archive
(cd "$out" && tar -czf runs.tgz ./*.json ./*.log && rm -f ./*.json ./bench-*.log)
