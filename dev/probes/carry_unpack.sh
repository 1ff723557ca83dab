# Sourced at the start of a device call that carries build/carry (made here by site_build.sh,
# `strip --strip-unneeded` on the .so, then `tar -czf build/carry/NAME.tgz -C build NAME`; probe
# binaries as `gzip -c BIN > build/carry/BIN.gz`): each NAME.tgz unpacked to /tmp/NAME,
# each X.gz to /tmp/X (executable), the wheels installed into /tmp/wheels; prints the GPU.
for f in build/carry/*.tgz; do [ -e "$f" ] && tar -xzf "$f" -C /tmp; done
for f in build/carry/*.gz; do [ -e "$f" ] && { gunzip -c "$f" > "/tmp/$(basename "${f%.gz}")"; chmod +x "/tmp/$(basename "${f%.gz}")"; }; done
ls build/carry/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wheels build/carry/*.whl
export PYTHONUNBUFFERED=1
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "# $GPU_NAME, $(date -u +%FT%TZ)"
