#!/usr/bin/env bash
# Copies this checkout to every worker of a TPU slice, installs Python 3.11
# and ilct_jax[tpu] into ~/venv there, then prints from every worker its
# hostname, Python and JAX versions and the TPU devices JAX sees.
# Idempotent: rerun it after changing code (only the changes cost time).
#
# Usage: NAME=ilct ZONE=us-central2-b [PROJECT=my-project] \
#          bash launch/tpu_setup.sh
#
# Why a separate Python: the TPU images (tpu-ubuntu2204-base, v2-alpha-*)
# ship Python 3.10, and jax 0.10 / flax 0.12 / orbax 0.12 need >= 3.11. The
# script installs uv (a static binary from PyPI, `pip install --user uv`)
# and runs `uv venv --python 3.11 ~/venv`, which downloads a standalone
# CPython 3.11 build into ~/.local/share/uv. Chosen over the deadsnakes PPA
# because it needs no sudo or apt (apt is often locked by unattended-upgrades
# on a fresh VM), behaves the same on every TPU image, and installs the
# packages much faster than pip.
#
# Layout on each worker: ~/ilct_jax (the code), ~/venv (Python 3.11 + deps),
# ~/ilct_logs (tpu_run.sh). Setup refuses to touch a worker while a run
# started by tpu_run.sh is alive there (stop it first).
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}"
cd "$(dirname "$0")/.."

opts=(--zone="$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  opts+=(--project="$PROJECT")
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
tar czf "$tmp/ilct_jax.tgz" --exclude=./.git --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=./runs --exclude=./.venv \
  --exclude=./ilct_logs .
gcloud compute tpus tpu-vm scp "$tmp/ilct_jax.tgz" "$NAME":ilct_jax.tgz \
  "${opts[@]}"

install="$(
  cat <<'EOF'
set -euo pipefail
for f in "$HOME"/ilct_logs/*.pid; do
  if [ -s "$f" ] && ps -o stat= -p "$(cat "$f")" 2>/dev/null | grep -qv "^Z"; then
    echo "$(hostname): a run is alive ($f); ACTION=stop it first" >&2
    exit 1
  fi
done
# The code: a fresh copy, so files deleted locally disappear here too.
rm -rf ~/ilct_jax.new && mkdir ~/ilct_jax.new
tar xzf ~/ilct_jax.tgz -C ~/ilct_jax.new
rm -rf ~/ilct_jax && mv ~/ilct_jax.new ~/ilct_jax
# uv, then a Python 3.11 venv (kept when it already has Python >= 3.11).
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv > /dev/null; then
  if python3 -m pip --version > /dev/null 2>&1; then
    python3 -m pip install -q --user uv
  else
    curl -LsSf https://astral.sh/uv/install.sh | sh
  fi
fi
if ! ~/venv/bin/python -c "import sys; sys.exit(sys.version_info < (3, 11))" 2> /dev/null; then
  rm -rf ~/venv
  uv venv --seed --python 3.11 ~/venv
fi
uv pip install -q --python ~/venv/bin/python -e "$HOME/ilct_jax[tpu]"
echo "$(hostname): installed into ~/venv"
EOF
)"

# Run on all workers at once after every install finished: on a multi-host
# slice jax.distributed.initialize() (as `--distributed` does) connects the
# workers, so device_count() is the slice's total and local_device_count()
# this worker's share.
check="$(
  cat <<'EOF'
cd ~/ilct_jax && timeout 300 ~/venv/bin/python - <<'PY'
import socket
import sys

import jax

jax.distributed.initialize()
d = jax.devices()
print(
  f"{socket.gethostname()}: python {sys.version.split()[0]}, jax",
  f"{jax.__version__}, process {jax.process_index()}/{jax.process_count()},",
  f"{jax.local_device_count()} local of {jax.device_count()} devices",
  f"({d[0].platform}, {d[0].device_kind})",
)
PY
EOF
)"

gcloud compute tpus tpu-vm ssh "$NAME" "${opts[@]}" --command="$install"
gcloud compute tpus tpu-vm ssh "$NAME" "${opts[@]}" --command="$check"
