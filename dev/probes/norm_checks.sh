# Sourced by dev/probes/norm_ab.sh and norm_env_ab.sh: the norm kernels' correctness checks on a GPU machine.
#   norm_sanitizers ODD_CHECK OUT   norm_odd_check plain, then racecheck over its calls past one wave
#                                   of the staged kernel's blocks (the whole set runs past its time
#                                   there) and memcheck over all of them (AB_SAN_S: each one's limit, s)
#   norm_gpu_tests SITE OUT         the GPU norm tests on the build in SITE
norm_sanitizers() {
    local odd_check=$1 out=$2 san
    san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    {
        echo "== probe"; timeout 60 "$odd_check" 2>&1 | grep -v " 0 elements differ"
        echo "== racecheck"; timeout "${AB_SAN_S:-140}" "$san" --tool racecheck "$odd_check" long 2>&1 | grep -E "SUMMARY|check:"
        echo "== memcheck"; timeout "${AB_SAN_S:-150}" "$san" --tool memcheck "$odd_check" 2>&1 | grep -E "SUMMARY|check:"
    } 2>&1 | tee "$out/sanitizers.log"
}
norm_gpu_tests() {
    local site=$1 out=$2 repo t1
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); t1=$(date +%s)
    (cd /tmp && PYTHONPATH=$site timeout 200 python3 -m pytest -q -x -n 8 -p no:cacheprovider \
        "$repo"/tests/test_norm_kernels_cuda.py "$repo"/tests/test_batch_invariance.py "$repo"/tests/test_norm_views.py \
        "$repo"/tests/test_rms_norm.py "$repo"/tests/test_fused_add_rms_norm.py "$repo"/tests/test_norm_weights.py \
        -k "not cpu" > "$out/tests.log" 2>&1; echo "tests rc $? $(( $(date +%s) - t1 )) s"; tail -1 "$out/tests.log")
}
