#!/usr/bin/env bash
# One-shot accelerator check: installs what the machine's image lacks, then
# runs tools/device_check.py (checks on the device, then f32/bf16 speed).
#
# Usage (from anywhere): bash tools/device_check.sh [--small] [--batch=N]
#   --small   the tiny config instead of the paper's (CI runs this on CPU)
# Offline machines: put the missing wheels in .whl/ beside this repository's
# root (pip download ...); they are installed from there into /tmp/ilct_site.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in ott:ott-jax ml_collections:ml-collections clu:clu==0.0.12 \
  optax:optax flax:flax chex:chex orbax.checkpoint:orbax-checkpoint \
  etils.epath:etils[epath] scipy:scipy PIL:pillow; do
  module="${pair%%:*}"
  if ! python3 -c "import ${module}" 2>/dev/null; then
    missing+=("${pair#*:}")
  fi
done
if ((${#missing[@]})); then
  echo "device_check: installing ${missing[*]}"
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
      --target /tmp/ilct_site .whl/*.whl
    export PYTHONPATH="/tmp/ilct_site${PYTHONPATH:+:${PYTHONPATH}}"
  else
    python3 -m pip install -q "${missing[@]}"
  fi
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
exec python3 tools/device_check.py "$@"
